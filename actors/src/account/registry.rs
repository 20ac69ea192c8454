//! Finding account actors: a supervisor that spawns them on first use and
//! notices when they stop, and a cheap-clone handle whose fast path is a map
//! lookup (no mailbox hop for an account that is already live).
//!
//! An account actor that crashed is not restarted eagerly: the next message
//! for that account spawns a fresh one, which first waits for the ledger to
//! flush what its previous life sent and then reloads its books from sled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::oneshot;
use tokun_storage::Nanos;
use tokun_storage::Store;
use tokun_storage::ledger::EntryKind;
use tokun_storage::{AccountId, HoldId};
use tokun_storage::{AccountRecord, UsageRecord};

use crate::instrument::{ActorKind, ActorStats, MessageKind, Metered};

use super::{
    AccountActor, AccountArgs, AccountError, AccountMsg, AccountView, Applied, Billed,
    PaymentCommand, PaymentOutcome, Reservation, ReserveRequest, Settled,
};
use crate::ledger::LedgerHandle;

/// How long a caller waits for an account actor's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A live account actor and its counters (senders note each message they queue).
type Live = (ActorRef<AccountMsg>, Arc<ActorStats>);
type LiveMap = Arc<Mutex<HashMap<AccountId, Live>>>;

fn lock(map: &LiveMap) -> MutexGuard<'_, HashMap<AccountId, Live>> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct AccountSupervisor;

pub enum AccountSupervisorMsg {
    Get(AccountId, RpcReplyPort<Result<Live, AccountError>>),
}

impl MessageKind for AccountSupervisorMsg {
    fn kind(&self) -> &'static str {
        "get"
    }
}

impl ActorKind for AccountSupervisor {
    const KIND: &'static str = "account_supervisor";
}

pub struct AccountSupervisorArgs {
    pub store: Store,
    pub ledger: LedgerHandle,
    pub idle_after: Duration,
    live: LiveMap,
}

pub struct AccountSupervisorState {
    args: AccountSupervisorArgs,
    /// Accounts whose actor crashed: their next actor waits for a ledger flush first.
    crashed: std::collections::HashSet<AccountId>,
    by_actor: HashMap<ractor::ActorId, AccountId>,
}

impl Actor for AccountSupervisor {
    type Msg = AccountSupervisorMsg;
    type State = AccountSupervisorState;
    type Arguments = AccountSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AccountSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(AccountSupervisorState {
            args,
            crashed: Default::default(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let AccountSupervisorMsg::Get(account, reply) = message;
        if let Some(live) = lock(&state.args.live).get(&account) {
            let _ = reply.send(Ok(live.clone()));
            return Ok(());
        }
        let args = AccountArgs {
            account,
            store: state.args.store.clone(),
            ledger: state.args.ledger.clone(),
            idle_after: state.args.idle_after,
            after_crash: state.crashed.remove(&account),
        };
        let result = match Metered::spawn(AccountActor, args, Some(myself.get_cell())).await {
            Ok((actor, stats)) => {
                stats.set_label(account.to_string());
                lock(&state.args.live).insert(account, (actor.clone(), stats.clone()));
                state.by_actor.insert(actor.get_id(), account);
                Ok((actor, stats))
            }
            Err(_) => Err(AccountError::UnknownAccount),
        };
        let _ = reply.send(result);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, crashed) = match &event {
            SupervisionEvent::ActorTerminated(cell, ..) => (cell, false),
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = %cell.get_id(), %error, "account actor crashed; it restarts on next use");
                (cell, true)
            }
            _ => return Ok(()),
        };
        if let Some(account) = state.by_actor.remove(&cell.get_id()) {
            let mut live = lock(&state.args.live);
            if live
                .get(&account)
                .is_some_and(|(a, _)| a.get_id() == cell.get_id())
            {
                live.remove(&account);
            }
            if crashed {
                state.crashed.insert(account);
            }
        }
        Ok(())
    }
}

/// Cheap-clone entry point to every account actor.
#[derive(Clone)]
pub struct AccountsHandle {
    supervisor: ActorRef<AccountSupervisorMsg>,
    supervisor_stats: Arc<ActorStats>,
    live: LiveMap,
}

impl AccountsHandle {
    pub async fn start(
        store: Store,
        ledger: LedgerHandle,
        idle_after: Duration,
    ) -> Result<Self, ractor::SpawnErr> {
        let live = LiveMap::default();
        let args = AccountSupervisorArgs {
            store,
            ledger,
            idle_after,
            live: live.clone(),
        };
        let (supervisor, stats) = Metered::spawn(AccountSupervisor, args, None).await?;
        Ok(Self {
            supervisor,
            supervisor_stats: stats,
            live,
        })
    }

    /// Stops every account actor and the supervisor (shutdown): they hold the
    /// store, which stays locked while any of them lives.
    pub async fn stop(&self) {
        let timeout = Some(Duration::from_secs(5));
        self.supervisor
            .get_cell()
            .stop_children_and_wait(Some("shutdown".into()), timeout)
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), timeout)
            .await;
        lock(&self.live).clear();
    }

    /// Number of live account actors.
    pub fn live(&self) -> usize {
        lock(&self.live).len()
    }

    /// The account's actor, noting one message about to be sent to it.
    async fn actor(&self, account: AccountId) -> Result<ActorRef<AccountMsg>, AccountError> {
        let found = lock(&self.live).get(&account).cloned();
        let (actor, stats) = match found {
            Some(live) => live,
            None => {
                self.supervisor_stats.note_sent();
                ractor::call_t!(
                    self.supervisor,
                    AccountSupervisorMsg::Get,
                    CALL_TIMEOUT.as_millis() as u64,
                    account
                )
                .map_err(|_| AccountError::LedgerUnavailable)??
            }
        };
        stats.note_sent();
        Ok(actor)
    }

    /// Sends a message built by `build`; if the actor stopped in between
    /// (idle), forgets it and tries once more with a fresh one.
    async fn call<T>(
        &self,
        account: AccountId,
        build: impl Fn(RpcReplyPort<Result<T, AccountError>>) -> AccountMsg,
    ) -> Result<T, AccountError>
    where
        T: Send + 'static,
    {
        for _ in 0..2 {
            let actor = self.actor(account).await?;
            match actor.call(&build, Some(CALL_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(result)) => return result,
                Ok(ractor::rpc::CallResult::Timeout) => {
                    return Err(AccountError::LedgerUnavailable);
                }
                _ => self.forget(account, &actor),
            }
        }
        Err(AccountError::LedgerUnavailable)
    }

    /// Like `call`, for messages that answer through a oneshot (once durable,
    /// or with an [`Applied`]).
    async fn call_durably<T>(
        &self,
        account: AccountId,
        build: impl Fn(oneshot::Sender<Result<T, AccountError>>) -> AccountMsg,
    ) -> Result<T, AccountError> {
        for _ in 0..2 {
            let actor = self.actor(account).await?;
            let (reply, answer) = oneshot::channel();
            if actor.send_message(build(reply)).is_err() {
                self.forget(account, &actor);
                continue;
            }
            match tokio::time::timeout(CALL_TIMEOUT, answer).await {
                Ok(Ok(result)) => return result,
                Ok(Err(_)) => self.forget(account, &actor),
                Err(_) => return Err(AccountError::LedgerUnavailable),
            }
        }
        Err(AccountError::LedgerUnavailable)
    }

    fn forget(&self, account: AccountId, actor: &ActorRef<AccountMsg>) {
        let mut live = lock(&self.live);
        if live
            .get(&account)
            .is_some_and(|(a, _)| a.get_id() == actor.get_id())
        {
            live.remove(&account);
        }
    }

    pub async fn reserve(
        &self,
        account: AccountId,
        request: ReserveRequest,
    ) -> Result<Reservation, AccountError> {
        self.call(account, |reply| AccountMsg::Reserve(request.clone(), reply))
            .await
    }

    pub async fn extend(&self, account: AccountId, hold: HoldId) -> Result<u64, AccountError> {
        self.call(account, |reply| AccountMsg::Extend(hold, reply))
            .await
    }

    /// Settles a hold; returns once the settlement is durable.
    pub async fn settle(
        &self,
        account: AccountId,
        hold: HoldId,
        billed: Billed,
        usage: Option<UsageRecord>,
    ) -> Result<Settled, AccountError> {
        self.settle_applied(account, hold, billed, usage)
            .await?
            .durable(CALL_TIMEOUT)
            .await
    }

    /// Settles a hold; returns as soon as the account actor has decided it
    /// (the balance is updated, the entries are on their way to the ledger).
    pub async fn settle_applied(
        &self,
        account: AccountId,
        hold: HoldId,
        billed: Billed,
        usage: Option<UsageRecord>,
    ) -> Result<Applied<Settled>, AccountError> {
        let usage = usage.map(Box::new);
        self.call_durably(account, |reply| AccountMsg::Settle {
            hold,
            billed,
            usage: usage.clone(),
            reply,
        })
        .await
    }

    pub async fn recover(
        &self,
        account: AccountId,
        hold: HoldId,
        checkpoint: Option<(u64, u64)>,
    ) -> Result<Settled, AccountError> {
        self.call_durably(account, |reply| AccountMsg::Recover {
            hold,
            checkpoint,
            reply,
        })
        .await
    }

    pub async fn release(&self, account: AccountId, hold: HoldId) {
        if let Ok(actor) = self.actor(account).await {
            let _ = actor.send_message(AccountMsg::Release(hold));
        }
    }

    pub async fn checkpoint(
        &self,
        account: AccountId,
        hold: HoldId,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) {
        if let Ok(actor) = self.actor(account).await {
            let _ = actor.send_message(AccountMsg::Checkpoint {
                hold,
                prompt_tokens,
                completion_tokens,
            });
        }
    }

    pub async fn transfer(
        &self,
        account: AccountId,
        kind: EntryKind,
        amount: Nanos,
        reference: &str,
    ) -> Result<Nanos, AccountError> {
        self.call_durably(account, |reply| AccountMsg::Transfer {
            kind,
            amount,
            reference: reference.to_owned(),
            reply,
        })
        .await
    }

    pub async fn set_disabled(
        &self,
        account: AccountId,
        disabled: bool,
    ) -> Result<AccountRecord, AccountError> {
        self.call_durably(account, |reply| AccountMsg::SetDisabled(disabled, reply))
            .await
    }

    /// Applies a Stripe payment event to the account, exactly once; answers
    /// once what it wrote is durable (see `account::payment`).
    pub async fn payment(
        &self,
        account: AccountId,
        command: PaymentCommand,
    ) -> Result<PaymentOutcome, AccountError> {
        self.call_durably(account, |reply| AccountMsg::Payment(command.clone(), reply))
            .await
    }

    pub async fn view(&self, account: AccountId) -> Result<AccountView, AccountError> {
        self.call(account, AccountMsg::View).await
    }
}
