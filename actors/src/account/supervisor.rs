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
    /// A message nobody awaits (a release, a checkpoint) for an account whose
    /// actor is not live: spawned if need be, then handed over.
    Forward(AccountId, AccountMsg),
}

impl MessageKind for AccountSupervisorMsg {
    fn kind(&self) -> &'static str {
        match self {
            AccountSupervisorMsg::Get(..) => "get",
            AccountSupervisorMsg::Forward(..) => "forward",
        }
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
        match message {
            AccountSupervisorMsg::Get(account, reply) => {
                let _ = reply.send(state.live_actor(&myself, account).await);
            }
            AccountSupervisorMsg::Forward(account, message) => {
                match state.live_actor(&myself, account).await {
                    Ok((actor, stats)) => {
                        stats.note_sent();
                        let _ = actor.send_message(message);
                    }
                    Err(error) => {
                        tracing::error!(%account, %error, "a message for this account was dropped; its hold is recovered at restart");
                    }
                }
            }
        }
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

impl AccountSupervisorState {
    /// The account's live actor, spawned if need be. An account the store
    /// does not have is `UnknownAccount`; a store that cannot be read is
    /// `LedgerUnavailable`; an actor that fails to start is `ActorFailed`.
    async fn live_actor(
        &mut self,
        myself: &ActorRef<AccountSupervisorMsg>,
        account: AccountId,
    ) -> Result<Live, AccountError> {
        if let Some(live) = lock(&self.args.live).get(&account) {
            return Ok(live.clone());
        }
        match self.args.store.account(account) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(AccountError::UnknownAccount),
            Err(error) => {
                tracing::error!(%account, %error, "cannot read the account from the store");
                return Err(AccountError::LedgerUnavailable);
            }
        }
        let args = AccountArgs {
            account,
            store: self.args.store.clone(),
            ledger: self.args.ledger.clone(),
            idle_after: self.args.idle_after,
            after_crash: self.crashed.remove(&account),
        };
        match Metered::spawn(AccountActor, args, Some(myself.get_cell())).await {
            Ok((actor, stats)) => {
                stats.set_label(account.to_string());
                lock(&self.args.live).insert(account, (actor.clone(), stats.clone()));
                self.by_actor.insert(actor.get_id(), account);
                Ok((actor, stats))
            }
            Err(error) => {
                tracing::error!(%account, %error, "the account actor failed to start");
                Err(AccountError::ActorFailed)
            }
        }
    }
}

/// Cheap-clone entry point to every account actor.
#[derive(Clone)]
pub struct AccountsHandle {
    supervisor: ActorRef<AccountSupervisorMsg>,
    supervisor_stats: Arc<ActorStats>,
    live: LiveMap,
    /// Asked before a hold is placed: no new spending while it cannot write.
    ledger: LedgerHandle,
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
            ledger: ledger.clone(),
            idle_after,
            live: live.clone(),
        };
        let (supervisor, stats) = Metered::spawn(AccountSupervisor, args, None).await?;
        Ok(Self {
            supervisor,
            supervisor_stats: stats,
            live,
            ledger,
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
                .map_err(|error| match error {
                    ractor::RactorErr::Timeout => AccountError::Busy,
                    _ => AccountError::ActorFailed,
                })??
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
                Ok(ractor::rpc::CallResult::Timeout) => return Err(AccountError::Busy),
                _ => self.forget(account, &actor),
            }
        }
        Err(AccountError::ActorFailed)
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
                Err(_) => return Err(AccountError::Busy),
            }
        }
        Err(AccountError::ActorFailed)
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

    /// Places a hold; refused while the ledger is not writable.
    pub async fn reserve(
        &self,
        account: AccountId,
        request: ReserveRequest,
    ) -> Result<Reservation, AccountError> {
        if !self.ledger.is_healthy() {
            return Err(AccountError::LedgerUnavailable);
        }
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

    /// Gives a hold back. Sent, never awaited: callable from `Drop`.
    pub fn release_nowait(&self, account: AccountId, hold: HoldId) {
        self.send_nowait(account, AccountMsg::Release(hold, None));
    }

    /// Gives a hold back and logs its request (a failure: cost 0) in the
    /// same ledger write as the `Release`. Sent, never awaited.
    pub fn release_logged_nowait(&self, account: AccountId, hold: HoldId, usage: UsageRecord) {
        self.send_nowait(account, AccountMsg::Release(hold, Some(Box::new(usage))));
    }

    /// Records a hold's usage so far for crash recovery. Sent, never awaited.
    pub fn checkpoint_nowait(
        &self,
        account: AccountId,
        hold: HoldId,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) {
        let message = AccountMsg::Checkpoint {
            hold,
            prompt_tokens,
            completion_tokens,
        };
        self.send_nowait(account, message);
    }

    /// To the live actor directly, else through the supervisor, which starts
    /// one (an actor stopping between the lookup and the send is the rare case
    /// the supervisor's path also covers).
    fn send_nowait(&self, account: AccountId, message: AccountMsg) {
        let live = lock(&self.live).get(&account).cloned();
        let message = match live {
            Some((actor, stats)) => match actor.send_message(message) {
                Ok(()) => {
                    stats.note_sent();
                    return;
                }
                Err(ractor::MessagingErr::SendErr(message)) => {
                    self.forget(account, &actor);
                    message
                }
                Err(_) => return,
            },
            None => message,
        };
        self.supervisor_stats.note_sent();
        if self
            .supervisor
            .send_message(AccountSupervisorMsg::Forward(account, message))
            .is_err()
        {
            tracing::error!(%account, "the account supervisor is gone; the message is dropped");
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

    /// Marks the account deleted by its owner at `at_ms` (and disabled for
    /// good); the actor keeps the mark, so a later `set_disabled` cannot
    /// undo it.
    pub async fn mark_deleted(
        &self,
        account: AccountId,
        at_ms: u64,
    ) -> Result<AccountRecord, AccountError> {
        self.call_durably(account, |reply| AccountMsg::MarkDeleted(at_ms, reply))
            .await
    }

    /// Corrects the account's email (normalized by the caller); answers
    /// once the record is durable, `LedgerUnavailable` if the writer
    /// refused it (the email belongs to another account) or failed.
    pub async fn set_email(
        &self,
        account: AccountId,
        email: &str,
    ) -> Result<AccountRecord, AccountError> {
        self.call_durably(account, |reply| {
            AccountMsg::SetEmail(email.to_owned(), reply)
        })
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
