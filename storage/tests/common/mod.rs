//! Test support: `Sim`, a model of a correct account actor that turns random
//! actions into only the ledger submissions such an actor would make, and a
//! temporary directory that cleans up after itself.

#![allow(dead_code, reason = "each test binary uses a different part")]
#![expect(
    clippy::unwrap_used,
    reason = "test support: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokun_storage::{
    AccountId, AccountRecord, Books, EntryKind, HoldId, KeyId, KeyRecord, Nanos, NewEntry, Price,
    UsageRecord, WriteOp, apply, apply_within_floor,
};

/// What a client, Stripe or an operator might cause. Numbers are raw
/// randomness; `Sim::act` turns them into what a correct actor would allow.
#[derive(Clone, Debug)]
pub enum Action {
    Credit { account: usize, amount: i64 },
    OperatorCredit { account: usize, amount: i64 },
    OperatorDebit { account: usize, amount: i64 },
    Refund { account: usize, amount: i64 },
    Reserve { account: usize, amount: i64 },
    Extend { pick: usize, amount: i64 },
    Settle { pick: usize, fraction: u8 },
    SettlePart { pick: usize, fraction: u8 },
    Recover { pick: usize, fraction: u8 },
    Release { pick: usize },
}

pub struct SimAccount {
    pub id: AccountId,
    pub floor: Nanos,
    pub books: Books,
}

pub struct SimHold {
    pub hold: HoldId,
    pub account: usize,
    pub reserved: i128,
    pub taken: i128,
}

/// The model: books per account, open holds, and closed holds' totals.
pub struct Sim {
    pub accounts: Vec<SimAccount>,
    pub open: Vec<SimHold>,
    pub closed: Vec<SimHold>,
    /// Settled and recovered amounts: what `verify` reports as revenue.
    pub revenue: i128,
    next_hold: u64,
    now_ms: u64,
}

pub const PRICE_INPUT: i64 = 150_000_000;

impl Sim {
    /// Three accounts: two prepaid, one with a credit line of 1,000,000 nanos.
    pub fn new() -> Sim {
        let floors = [0, -1_000_000, 0];
        let accounts = floors
            .iter()
            .enumerate()
            .map(|(i, floor)| SimAccount {
                id: AccountId::new(i as u64 + 1),
                floor: Nanos::new(*floor),
                books: Books::ZERO,
            })
            .collect();
        Sim {
            accounts,
            open: Vec::new(),
            closed: Vec::new(),
            revenue: 0,
            next_hold: 1,
            now_ms: 1_000,
        }
    }

    pub fn account_records(&self) -> Vec<WriteOp> {
        self.accounts
            .iter()
            .map(|a| {
                WriteOp::PutAccount(AccountRecord {
                    id: a.id,
                    email: format!("{}@example.com", a.id),
                    created_ms: 1,
                    disabled: false,
                    floor: a.floor,
                    deleted_ms: None,
                })
            })
            .collect()
    }

    pub fn price() -> Price {
        Price::per_million(
            Nanos::new(PRICE_INPUT),
            Nanos::new(600_000_000),
            Nanos::new(75_000_000),
        )
        .unwrap()
    }

    /// The submission a correct actor makes for `action`, if it allows it.
    pub fn act(&mut self, action: &Action) -> Option<Vec<WriteOp>> {
        self.now_ms += 1;
        let n = self.accounts.len();
        match *action {
            Action::Credit { account, amount } => {
                Some(vec![self.money(account % n, EntryKind::Topup, amount)])
            }
            Action::OperatorCredit { account, amount } => {
                Some(vec![self.money(account % n, EntryKind::Adjustment, amount)])
            }
            Action::OperatorDebit { account, amount } => {
                let amount = amount.min(self.headroom(account % n)?);
                Some(vec![self.money(
                    account % n,
                    EntryKind::Adjustment,
                    -amount,
                )])
            }
            Action::Refund { account, amount } => {
                let amount = amount.min(self.headroom(account % n)?);
                Some(vec![self.money(account % n, EntryKind::Refund, amount)])
            }
            Action::Reserve { account, amount } => self.reserve(account % n, amount),
            Action::Extend { pick, amount } => {
                let index = self.pick(pick)?;
                let amount = amount.min(self.headroom(self.open[index].account)?);
                Some(vec![self.on_hold(index, EntryKind::Extend, amount)])
            }
            Action::Settle { pick, fraction } => self.close(pick, EntryKind::Settle, fraction),
            Action::Recover { pick, fraction } => self.close(pick, EntryKind::Recovered, fraction),
            Action::Release { pick } => self.close(pick, EntryKind::Release, 0),
            Action::SettlePart { pick, fraction } => {
                let index = self.pick(pick)?;
                let remaining = self.open[index].remaining();
                let part = (remaining * i128::from(fraction) / 256) as i64;
                (part < remaining as i64)
                    .then(|| vec![self.on_hold(index, EntryKind::Settle, part)])
            }
        }
    }

    /// The invariants a correct actor keeps, checked on the model.
    pub fn check(&self) {
        for (i, account) in self.accounts.iter().enumerate() {
            assert!(
                account.books.available() >= account.floor,
                "{} below its floor",
                account.id
            );
            let open: i128 = self
                .open
                .iter()
                .filter(|h| h.account == i)
                .map(SimHold::remaining)
                .sum();
            assert_eq!(
                open,
                i128::from(account.books.held.get()),
                "{} held",
                account.id
            );
        }
        for hold in &self.closed {
            assert_eq!(hold.reserved, hold.taken, "{} not conserved", hold.hold);
        }
    }

    /// Spendable room above the floor, if any.
    fn headroom(&self, account: usize) -> Option<i64> {
        let a = &self.accounts[account];
        let room = a.books.available().get().checked_sub(a.floor.get())?;
        (room > 0).then_some(room)
    }

    fn pick(&self, pick: usize) -> Option<usize> {
        (!self.open.is_empty()).then(|| pick % self.open.len())
    }

    fn reserve(&mut self, account: usize, amount: i64) -> Option<Vec<WriteOp>> {
        let amount = amount.min(self.headroom(account)?);
        let hold = HoldId::new(self.next_hold);
        self.next_hold += 1;
        let entry = self
            .entry(account, EntryKind::Hold, amount)
            .with_hold(hold)
            .with_price(Sim::price());
        self.open.push(SimHold {
            hold,
            account,
            reserved: i128::from(amount),
            taken: 0,
        });
        Some(vec![WriteOp::Entry(
            entry.with_request_id(format!("req-{}", hold.get())),
        )])
    }

    /// Closes a hold the way the account actor should: `Release` hands all
    /// of it back; `Settle`/`Recovered` take `fraction`/255 of what remains
    /// and release the rest. The settle closes the hold when it takes
    /// everything (even a zero hold), else the release does.
    fn close(&mut self, pick: usize, kind: EntryKind, fraction: u8) -> Option<Vec<WriteOp>> {
        let index = self.pick(pick)?;
        let remaining = self.open[index].remaining() as i64;
        let cost = if kind == EntryKind::Release {
            remaining
        } else {
            (i128::from(remaining) * i128::from(fraction) / 255) as i64
        };
        let rest = remaining - cost;
        let mut ops = vec![self.on_hold(index, kind, cost)];
        if rest > 0 {
            ops.push(self.on_hold(index, EntryKind::Release, rest));
        }
        let closed = self.open.swap_remove(index);
        assert_eq!(closed.remaining(), 0);
        self.closed.push(closed);
        Some(ops)
    }

    fn on_hold(&mut self, index: usize, kind: EntryKind, amount: i64) -> WriteOp {
        let hold = &mut self.open[index];
        match kind {
            EntryKind::Extend => hold.reserved += i128::from(amount),
            _ => hold.taken += i128::from(amount),
        }
        if matches!(kind, EntryKind::Settle | EntryKind::Recovered) {
            self.revenue += i128::from(amount);
        }
        let (account, id) = (hold.account, hold.hold);
        WriteOp::Entry(self.entry(account, kind, amount).with_hold(id))
    }

    fn money(&mut self, account: usize, kind: EntryKind, amount: i64) -> WriteOp {
        WriteOp::Entry(self.entry(account, kind, amount).with_reference("test"))
    }

    /// Moves the model's books with an independent i128 computation and
    /// checks `apply`/`apply_within_floor` agree with it.
    fn entry(&mut self, account: usize, kind: EntryKind, amount: i64) -> NewEntry {
        let a = &mut self.accounts[account];
        let (balance, held) = (
            i128::from(a.books.balance.get()),
            i128::from(a.books.held.get()),
        );
        let x = i128::from(amount);
        let (balance, held) = match kind {
            EntryKind::Topup | EntryKind::Adjustment => (balance + x, held),
            EntryKind::Refund => (balance - x, held),
            EntryKind::Hold | EntryKind::Extend => (balance, held + x),
            EntryKind::Settle | EntryKind::Recovered => (balance - x, held - x),
            EntryKind::Release => (balance, held - x),
        };
        let expected = Books {
            balance: Nanos::new(balance as i64),
            held: Nanos::new(held as i64),
        };
        let after = apply_within_floor(a.books, kind, Nanos::new(amount), a.floor).unwrap();
        assert_eq!(after, expected, "{kind:?} {amount}");
        assert_eq!(apply(a.books, kind, Nanos::new(amount)), Ok(after));
        a.books = after;
        NewEntry::new(self.now_ms, a.id, kind, Nanos::new(amount), after)
    }
}

impl SimHold {
    pub fn remaining(&self) -> i128 {
        self.reserved - self.taken
    }
}

pub fn account(id: u64, email: &str) -> AccountRecord {
    AccountRecord {
        id: AccountId::new(id),
        email: email.into(),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    }
}

pub fn key(id: u64, account: u64, secret: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId::new(id),
        account: AccountId::new(account),
        prefix: KeyRecord::prefix_of(secret),
        name: format!("key {id}"),
        created_ms: 1,
        last_used_ms: None,
        revoked_ms: None,
        spend_limit: None,
        rpm_limit: Some(60),
        allowed_models: vec![],
        debug: false,
        limit_reset: Default::default(),
        expires_ms: None,
    }
}

pub fn usage(account: u64, at_ms: u64, request: &str) -> UsageRecord {
    UsageRecord {
        request_id: request.into(),
        at_ms,
        account: AccountId::new(account),
        key: Some(KeyId::new(1)),
        model: "gpt-4o-mini".into(),
        served_model: "gpt-4o-mini".into(),
        provider: "echo".into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost: Nanos::new(4_500),
        estimated: false,
        status: 200,
        transport: "sse".into(),
        latency_ms: 3,
        ttft_ms: Some(1),
        error_kind: None,
        cached_tokens: 0,
        route: None,
    }
}

pub fn books(balance: i64, held: i64) -> Books {
    Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "tokun-storage-{tag}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
