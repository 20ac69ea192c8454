//! Payments through real account actors, a real ledger actor and writer on
//! a temporary store: duplicates at once credit once, a submission the
//! writer refuses leaves the books as the store has them, refunds clamp to
//! the floor and count once per refund state.

use std::time::Duration;

use tokun_storage::{
    AccountId, AccountRecord, Nanos, PaymentRecord, PaymentStatus, Store, WriteOp, WriterConfig,
};

use super::*;
use crate::{AccountsHandle, LedgerHandle};

const ACCOUNT: AccountId = AccountId::new(1);

async fn start() -> (Store, LedgerHandle, AccountsHandle) {
    let store = Store::temporary().unwrap();
    let ledger = LedgerHandle::start(store.clone(), WriterConfig::default())
        .await
        .unwrap();
    let accounts = AccountsHandle::start(store.clone(), ledger.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let account = AccountRecord {
        id: ACCOUNT,
        email: "payer@example.com".into(),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    };
    ledger
        .append(vec![WriteOp::PutAccount(account)])
        .await
        .unwrap();
    (store, ledger, accounts)
}

fn paid(session: &str, event: &str, amount: i64) -> PaymentCommand {
    PaymentCommand::Credit(PaidSession {
        session: session.into(),
        event: event.into(),
        amount: Nanos::new(amount),
        currency: "usd".into(),
        payment_intent: Some(format!("pi_{session}")),
    })
}

fn refund(session: &str, event: &str, total: i64) -> PaymentCommand {
    PaymentCommand::Refund(StripeRefund {
        session: session.into(),
        event: event.into(),
        charge: format!("ch_{session}"),
        refunded_total: Nanos::new(total),
    })
}

async fn balance(accounts: &AccountsHandle) -> Nanos {
    accounts.view(ACCOUNT).await.unwrap().balance
}

#[tokio::test]
async fn duplicates_at_once_credit_once() {
    let (store, _ledger, accounts) = start().await;
    let calls = (0..5).map(|i| {
        // Two event ids for the same session, each delivered more than once.
        let event = if i % 2 == 0 { "evt_a" } else { "evt_b" };
        accounts.payment(ACCOUNT, paid("cs_1", event, 700))
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let credited = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PaymentOutcome::Credited { .. })))
        .count();
    assert_eq!(credited, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(balance(&accounts).await, Nanos::new(700));
    assert_eq!(store.books(ACCOUNT).unwrap().balance, Nanos::new(700));
    let payment = store.payment("cs_1").unwrap().unwrap();
    assert_eq!(payment.status, PaymentStatus::Paid);
    assert!(store.verify().unwrap().is_clean());
}

#[tokio::test]
async fn a_refused_credit_leaves_the_books_as_the_store_has_them() {
    let (store, ledger, accounts) = start().await;
    for i in 0..20 {
        let (session, event) = (format!("cs_{i}"), format!("evt_{i}"));
        let open = PaymentRecord::open(&session, ACCOUNT, Nanos::new(100), "usd", 1);
        ledger
            .append(vec![WriteOp::PutPayment(open)])
            .await
            .unwrap();
        // The same event id marked by someone else just before: the actor's
        // check may or may not see it yet; if not, the writer refuses.
        ledger.append_nowait(vec![WriteOp::MarkProcessed {
            key: event.clone(),
            at_ms: 1,
        }]);
        let outcome = accounts.payment(ACCOUNT, paid(&session, &event, 100)).await;
        assert!(
            matches!(
                outcome,
                Ok(PaymentOutcome::Duplicate) | Err(AccountError::LedgerUnavailable)
            ),
            "{outcome:?}"
        );
        assert_eq!(balance(&accounts).await, Nanos::ZERO);
    }
    // The book still agrees with the ledger: the next credit is written.
    let outcome = accounts
        .payment(ACCOUNT, paid("cs_ok", "evt_ok", 250))
        .await;
    assert!(
        matches!(outcome, Ok(PaymentOutcome::Credited { .. })),
        "{outcome:?}"
    );
    assert_eq!(store.books(ACCOUNT).unwrap().balance, Nanos::new(250));
    assert!(store.verify().unwrap().is_clean());
}

#[tokio::test]
async fn refunds_clamp_to_the_floor_and_count_once() {
    let (store, _ledger, accounts) = start().await;
    accounts
        .payment(ACCOUNT, paid("cs_r", "evt_p", 1_000))
        .await
        .unwrap();
    let debit = accounts
        .transfer(ACCOUNT, EntryKind::Adjustment, Nanos::new(-700), "spent")
        .await;
    assert_eq!(debit, Ok(Nanos::new(300)));
    let first = accounts
        .payment(ACCOUNT, refund("cs_r", "evt_r1", 200))
        .await;
    assert!(
        matches!(first, Ok(PaymentOutcome::Refunded { debited, .. }) if debited == Nanos::new(200))
    );
    let again = accounts
        .payment(ACCOUNT, refund("cs_r", "evt_r2", 200))
        .await;
    assert_eq!(again, Ok(PaymentOutcome::Duplicate));
    // The rest of the refund is more than the account has: it ends at 0.
    let full = accounts
        .payment(ACCOUNT, refund("cs_r", "evt_r3", 5_000))
        .await;
    assert!(
        matches!(full, Ok(PaymentOutcome::Refunded { debited, .. }) if debited == Nanos::new(100))
    );
    assert_eq!(balance(&accounts).await, Nanos::ZERO);
    let payment = store.payment("cs_r").unwrap().unwrap();
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(payment.refunded_amount, Nanos::new(1_000));
    assert_eq!(payment.debited_amount, Nanos::new(300));
    let late = accounts
        .payment(ACCOUNT, paid("cs_r", "evt_p2", 1_000))
        .await;
    assert_eq!(late, Ok(PaymentOutcome::Duplicate));
    let unknown = accounts
        .payment(ACCOUNT, refund("cs_none", "evt_x", 10))
        .await;
    assert!(matches!(unknown, Ok(PaymentOutcome::Ignored { .. })));
    assert!(store.verify().unwrap().is_clean());
}
