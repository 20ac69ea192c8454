//! The account actor: one per active account, the only writer of its balance.
//!
//! Reservations, extensions, settlements, releases and transfers are messages,
//! so concurrent requests on one account are serialized and no race can
//! overdraw it. Decisions are made in memory ([`book::AccountBook`]); the
//! entries they imply go to the ledger actor. Holds are sent without waiting
//! (batched with everything else); a settlement answers at once with an
//! [`Applied`] whose durability the caller awaits, and transfers answer only
//! once durable, by handing the caller's reply to the ledger's ack — the actor
//! itself never waits on a disk flush, so its mailbox keeps moving.

pub mod book;
mod email;
pub mod payment;
pub mod supervisor;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tokun_storage::Nanos;
use tokun_storage::Store;
use tokun_storage::WriteOp;
use tokun_storage::ledger::EntryKind;
use tokun_storage::{AccountId, HoldId};
use tokun_storage::{AccountRecord, UsageRecord};

pub use book::{AccountBook, AccountError, KeyLimit, Reservation, ReserveRequest, Settled};
pub use payment::{PaidSession, PaymentCommand, PaymentOutcome, StripeRefund};

use crate::ledger::LedgerHandle;

pub struct AccountActor;

pub struct AccountArgs {
    pub account: AccountId,
    pub store: Store,
    pub ledger: LedgerHandle,
    /// Stop after this long without messages and without open holds.
    pub idle_after: Duration,
    /// This account's previous actor crashed: wait for the ledger to flush
    /// what it sent before reloading the books.
    pub after_crash: bool,
}

/// Token usage to bill: prompt, cached prompt, completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: bool,
}

/// A snapshot of the account for the API.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub record: AccountRecord,
    pub balance: Nanos,
    pub held: Nanos,
    pub spendable: Nanos,
    pub open_holds: usize,
}

pub type Durably<T> = oneshot::Sender<Result<T, AccountError>>;

/// A decision the account actor has made in memory and handed to the
/// ledger: its value now, and the ledger's word once it is durable. The
/// actor's answer does not wait for the disk; whoever must not act before
/// the write is on disk (the `[DONE]` of a stream) awaits [`Applied::durable`].
#[derive(Debug)]
pub struct Applied<T> {
    value: T,
    durable: oneshot::Receiver<bool>,
}

impl<T> Applied<T> {
    /// What was decided (not yet known to be on disk).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The value, once the ledger has flushed the entries behind it.
    pub async fn durable(self, timeout: Duration) -> Result<T, AccountError> {
        match tokio::time::timeout(timeout, self.durable).await {
            Ok(Ok(true)) => Ok(self.value),
            _ => Err(AccountError::LedgerUnavailable),
        }
    }
}

pub enum AccountMsg {
    Reserve(
        ReserveRequest,
        RpcReplyPort<Result<Reservation, AccountError>>,
    ),
    Extend(HoldId, RpcReplyPort<Result<u64, AccountError>>),
    /// Replies as soon as the settlement is decided; its [`Applied`] says
    /// when the settlement (and the usage record) are durable.
    Settle {
        hold: HoldId,
        billed: Billed,
        usage: Option<Box<UsageRecord>>,
        reply: Durably<Applied<Settled>>,
    },
    /// Gives the hold back; with a usage record (a request no route
    /// answered), logs it at cost 0 in the same write.
    Release(HoldId, Option<Box<UsageRecord>>),
    /// Settles a hold left open by a crash; replies once durable.
    Recover {
        hold: HoldId,
        checkpoint: Option<(u64, u64)>,
        reply: Durably<Settled>,
    },
    Checkpoint {
        hold: HoldId,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// `Topup`, `Adjustment` or `Refund`; replies with the balance once durable.
    Transfer {
        kind: EntryKind,
        amount: Nanos,
        reference: String,
        reply: Durably<Nanos>,
    },
    SetDisabled(bool, Durably<AccountRecord>),
    /// Deleted by its owner at this time (ms): disabled for good, written
    /// through this actor so a later `SetDisabled` keeps the mark.
    MarkDeleted(u64, Durably<AccountRecord>),
    /// An operator's correction of the email (normalized); replies once
    /// durable (see `email`).
    SetEmail(String, Durably<AccountRecord>),
    View(RpcReplyPort<Result<AccountView, AccountError>>),
    IdleCheck,
    /// A Stripe payment event; replies once durable (see `payment`).
    Payment(PaymentCommand, Durably<PaymentOutcome>),
}

impl crate::instrument::ActorKind for AccountActor {
    const KIND: &'static str = "account";
}

impl crate::instrument::MessageKind for AccountMsg {
    fn kind(&self) -> &'static str {
        match self {
            AccountMsg::Reserve(..) => "reserve",
            AccountMsg::Extend(..) => "extend",
            AccountMsg::Settle { .. } => "settle",
            AccountMsg::Release(..) => "release",
            AccountMsg::Recover { .. } => "recover",
            AccountMsg::Checkpoint { .. } => "checkpoint",
            AccountMsg::Transfer { .. } => "transfer",
            AccountMsg::SetDisabled(..) => "set_disabled",
            AccountMsg::MarkDeleted(..) => "mark_deleted",
            AccountMsg::SetEmail(..) => "set_email",
            AccountMsg::View(_) => "view",
            AccountMsg::IdleCheck => "idle_check",
            AccountMsg::Payment(..) => "payment",
        }
    }
}

pub struct AccountState {
    record: AccountRecord,
    book: AccountBook,
    store: Store,
    ledger: LedgerHandle,
    idle_after: Duration,
    last_activity: tokio::time::Instant,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountState, ActorProcessingErr> {
        if args.after_crash {
            args.ledger.barrier().await?;
        }
        let record = args
            .store
            .account(args.account)?
            .ok_or_else(|| format!("unknown account {}", args.account))?;
        let mut book =
            AccountBook::new(args.account, record.floor, args.store.books(args.account)?);
        for hold in args
            .store
            .open_holds()?
            .into_iter()
            .filter(|h| h.account == args.account)
        {
            book.adopt_hold(
                hold.hold,
                hold.amount,
                hold.price,
                // Holds written before request ids were kept have none.
                hold.request_id.unwrap_or_default(),
            );
        }
        seed_key_spend(&args.store, args.account, &mut book)?;
        let tick = (args.idle_after / 2).max(Duration::from_millis(50));
        myself.send_interval(tick, || AccountMsg::IdleCheck);
        Ok(AccountState {
            record,
            book,
            store: args.store,
            ledger: args.ledger,
            idle_after: args.idle_after,
            last_activity: tokio::time::Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        message: AccountMsg,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, AccountMsg::IdleCheck) {
            state.last_activity = tokio::time::Instant::now();
        }
        let now = tokun_providers::clock::unix_ms();
        let holds_before = state.book.open_holds();
        state.dispatch(&myself, message, now).await;
        // One place keeps the open-holds gauge right, whatever the message did.
        let holds_after = state.book.open_holds();
        crate::metric::gauge_add(
            "tokun_holds_open",
            &[],
            holds_after as f64 - holds_before as f64,
        );
        Ok(())
    }
}

impl AccountState {
    async fn dispatch(&mut self, myself: &ActorRef<AccountMsg>, message: AccountMsg, now: u64) {
        let state = self;
        match message {
            // Handled to completion, durable write included: see `payment`.
            AccountMsg::Payment(command, reply) => {
                let _ = reply.send(state.payment(command, now).await);
            }
            AccountMsg::Reserve(request, reply) => {
                let result = state.reserve(&request, now);
                let _ = reply.send(result);
            }
            AccountMsg::Extend(hold, reply) => {
                let result = state.book.extend(hold, now).map(|(allowance, entry)| {
                    state.ledger.append_nowait(vec![WriteOp::Entry(entry)]);
                    allowance
                });
                let _ = reply.send(result);
            }
            AccountMsg::Settle {
                hold,
                billed,
                usage,
                reply,
            } => state.settle(hold, billed, usage, reply, now),
            AccountMsg::Release(hold, usage) => {
                if let Ok(entry) = state.book.release(hold, now) {
                    let mut ops = vec![WriteOp::Entry(entry)];
                    if let Some(mut usage) = usage {
                        // Nothing was charged: the log says so, whatever the caller set.
                        usage.cost = Nanos::ZERO;
                        ops.push(WriteOp::PutUsage(*usage));
                    }
                    state.ledger.append_nowait(ops);
                }
            }
            AccountMsg::Recover {
                hold,
                checkpoint,
                reply,
            } => match state.book.recover(hold, checkpoint, now) {
                Ok((settled, entries)) => {
                    let ops = entries.into_iter().map(WriteOp::Entry).collect();
                    state.durably(ops, reply, move || settled);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            AccountMsg::Checkpoint {
                hold,
                prompt_tokens,
                completion_tokens,
            } => {
                state.ledger.append_nowait(vec![WriteOp::Checkpoint {
                    hold,
                    prompt_tokens,
                    completion_tokens,
                }]);
            }
            AccountMsg::Transfer {
                kind,
                amount,
                reference,
                reply,
            } => state.transfer(kind, amount, &reference, reply, now),
            AccountMsg::SetDisabled(disabled, reply) => {
                state.record.disabled = disabled;
                state.write_record(reply);
            }
            AccountMsg::MarkDeleted(at_ms, reply) => {
                state.record.disabled = true;
                state.record.deleted_ms = Some(state.record.deleted_ms.unwrap_or(at_ms));
                state.write_record(reply);
            }
            AccountMsg::SetEmail(email, reply) => {
                let _ = reply.send(state.set_email(email).await);
            }
            AccountMsg::View(reply) => {
                let books = state.book.books();
                let _ = reply.send(Ok(AccountView {
                    record: state.record.clone(),
                    balance: books.balance,
                    held: books.held,
                    spendable: state.book.spendable(),
                    open_holds: state.book.open_holds(),
                }));
            }
            AccountMsg::IdleCheck => {
                if state.book.open_holds() == 0 && state.last_activity.elapsed() >= state.idle_after
                {
                    myself.stop(Some("idle".into()));
                }
            }
        }
    }

    fn reserve(&mut self, request: &ReserveRequest, now: u64) -> Result<Reservation, AccountError> {
        if self.record.disabled || self.record.deleted_ms.is_some() {
            return Err(AccountError::Disabled);
        }
        let hold = self
            .store
            .next_hold_id()
            .map_err(|_| AccountError::LedgerUnavailable)?;
        let (reservation, entry) = self.book.reserve(hold, request, now)?;
        let mut ops = vec![WriteOp::Entry(entry)];
        if let Some((prompt_tokens, completion_tokens)) = request.checkpoint {
            ops.push(WriteOp::Checkpoint {
                hold,
                prompt_tokens,
                completion_tokens,
            });
        }
        self.ledger.append_nowait(ops);
        Ok(reservation)
    }

    fn settle(
        &mut self,
        hold: HoldId,
        billed: Billed,
        usage: Option<Box<UsageRecord>>,
        reply: Durably<Applied<Settled>>,
        now: u64,
    ) {
        let tokens = (
            billed.prompt_tokens,
            billed.cached_tokens,
            billed.completion_tokens,
        );
        match self
            .book
            .settle(hold, tokens, billed.estimated, EntryKind::Settle, now)
        {
            Ok((settled, entries)) => {
                let mut ops: Vec<WriteOp> = entries.into_iter().map(WriteOp::Entry).collect();
                if let Some(mut usage) = usage {
                    usage.cost = settled.cost;
                    usage.estimated = billed.estimated;
                    ops.push(WriteOp::PutUsage(*usage));
                }
                let (ack, durable) = oneshot::channel();
                self.ledger.append_then(ops, move |result| {
                    let _ = ack.send(result.is_ok());
                });
                let _ = reply.send(Ok(Applied {
                    value: settled,
                    durable,
                }));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn transfer(
        &mut self,
        kind: EntryKind,
        amount: Nanos,
        reference: &str,
        reply: Durably<Nanos>,
        now: u64,
    ) {
        match self.book.transfer(kind, amount, reference, now) {
            Ok(entry) => {
                let balance = entry.balance_after;
                self.durably(vec![WriteOp::Entry(entry)], reply, move || balance);
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Writes the account's record as it now is; `reply` gets it once durable.
    fn write_record(&self, reply: Durably<AccountRecord>) {
        let record = self.record.clone();
        self.durably(
            vec![WriteOp::PutAccount(record.clone())],
            reply,
            move || record,
        );
    }

    /// Sends `ops` to the ledger; `reply` gets `value()` once they are durable.
    /// The actor does not wait: the ledger's ack answers the caller directly.
    fn durably<T: Send + 'static>(
        &self,
        ops: Vec<WriteOp>,
        reply: Durably<T>,
        value: impl FnOnce() -> T + Send + 'static,
    ) {
        self.ledger.append_then(ops, move |result| {
            let _ = reply.send(
                result
                    .map(|_| value())
                    .map_err(|_| AccountError::LedgerUnavailable),
            );
        });
    }
}

/// Keys with a spend limit need what they spent so far: summed from the
/// account's usage records (only when such a key exists).
fn seed_key_spend(
    store: &Store,
    account: AccountId,
    book: &mut AccountBook,
) -> Result<(), ActorProcessingErr> {
    let now = tokun_providers::clock::unix_ms();
    // Each limited key counts from the start of its current period.
    let limited: std::collections::HashMap<_, u64> = store
        .keys_for(account)?
        .into_iter()
        .filter(|k| k.spend_limit.is_some())
        .map(|k| (k.id, k.limit_reset.period_start_ms(now)))
        .collect();
    let Some(&earliest) = limited.values().min() else {
        return Ok(());
    };
    let mut spent = std::collections::HashMap::new();
    for record in store.usage_for(account, earliest, u64::MAX) {
        let record = record?;
        let Some(key) = record.key else { continue };
        if limited
            .get(&key)
            .is_some_and(|&start| record.at_ms >= start)
        {
            let total = spent.entry(key).or_insert(Nanos::ZERO);
            *total = total.saturating_add(record.cost);
        }
    }
    for (key, start) in limited {
        let total = spent.get(&key).copied().unwrap_or(Nanos::ZERO);
        book.set_key_spent(key, total, start);
    }
    Ok(())
}
