//! The meter against real account actors, a real ledger and a temporary
//! store: hold sizes, a dropped meter giving its hold back (so the account
//! actor idles out), and registry errors that say what went wrong.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use tokun_storage::{
    AccountId, AccountRecord, EntryKind, KeyId, Nanos, Price, Store, WriteOp, WriterConfig,
};

use super::*;
use crate::LedgerHandle;

const ACCOUNT: AccountId = AccountId::new(1);

fn tariff() -> Tariff {
    Tariff {
        price: Price::per_million(
            Nanos::new(1_000_000_000),
            Nanos::new(2_000_000_000),
            Nanos::ZERO,
        )
        .unwrap(),
        context_window: 1_000,
    }
}

fn payer() -> Payer {
    Payer {
        account: ACCOUNT,
        key: KeyId::new(1),
        key_limit: None,
    }
}

const POLICY: HoldPolicy = HoldPolicy {
    increment_tokens: 256,
};

/// A funded account behind account actors that idle out after `idle`.
async fn start(idle: Duration) -> (Store, AccountsHandle) {
    let store = Store::temporary().unwrap();
    let ledger = LedgerHandle::start(store.clone(), WriterConfig::default())
        .await
        .unwrap();
    let accounts = AccountsHandle::start(store.clone(), ledger.clone(), idle)
        .await
        .unwrap();
    let record = AccountRecord {
        id: ACCOUNT,
        email: "meter@example.com".into(),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    };
    ledger
        .append(vec![WriteOp::PutAccount(record)])
        .await
        .unwrap();
    accounts
        .transfer(ACCOUNT, EntryKind::Topup, Nanos::new(5_000_000_000), "seed")
        .await
        .unwrap();
    (store, accounts)
}

async fn open(accounts: &AccountsHandle, output: Output) -> Meter {
    Meter::open(
        accounts,
        Some(payer()),
        "req_1",
        POLICY,
        (tariff(), 100, output),
        Transport::Http,
    )
    .await
    .unwrap()
}

#[test]
fn streams_hold_one_increment_and_whole_answers_all_at_once() {
    let streamed = Output {
        requested: None,
        streamed: true,
        withheld: false,
    };
    assert_eq!(POLICY.size(tariff(), 100, streamed), (256, 900));
    let whole = Output {
        requested: Some(50),
        streamed: false,
        withheld: false,
    };
    assert_eq!(POLICY.size(tariff(), 100, whole), (50, 50));
    // A prompt that fills the window still leaves one output token to hold.
    let over = Output {
        requested: None,
        streamed: false,
        withheld: false,
    };
    assert_eq!(POLICY.size(tariff(), 5_000, over), (1, 1));
}

#[tokio::test]
async fn a_dropped_meter_gives_its_hold_back_and_the_actor_idles_out() {
    let (store, accounts) = start(Duration::from_millis(50)).await;
    let meter = open(
        &accounts,
        Output {
            requested: None,
            streamed: true,
            withheld: false,
        },
    )
    .await;
    let view = accounts.view(ACCOUNT).await.unwrap();
    assert_eq!(view.open_holds, 1);
    assert!(view.held > Nanos::ZERO);
    drop(meter);
    tokio::time::timeout(Duration::from_secs(10), async {
        while accounts.live() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The actor reloads from the store: the release was written.
    let view = accounts.view(ACCOUNT).await.unwrap();
    assert_eq!((view.open_holds, view.held), (0, Nanos::ZERO));
    assert_eq!(view.balance, Nanos::new(5_000_000_000));
    assert!(store.open_holds().unwrap().is_empty());
}

#[tokio::test]
async fn a_settled_or_released_meter_closes_its_hold_once() {
    let (_store, accounts) = start(Duration::from_secs(60)).await;
    let whole = Output {
        requested: Some(10),
        streamed: false,
        withheld: false,
    };
    let mut meter = open(&accounts, whole).await;
    assert_eq!(meter.output_cap(whole, tariff(), 100), Some(10));
    let record = MeterRecord {
        request_id: "req_1".into(),
        model: "m".into(),
        served_model: None,
        provider: None,
        route: None,
        usage: Usage::new(100, 10),
        source: UsageSource::Exact,
        outcome: RequestOutcome::Completed,
        error_kind: None,
        latency_ms: 1,
        ttft_ms: None,
    };
    let settled = meter.settle(record).await.unwrap();
    // 100 × $1/M + 10 × $2/M = $0.00012.
    assert_eq!(settled.cost, Nanos::new(120_000));
    meter.release();
    drop(meter);
    let mut released = open(&accounts, whole).await;
    released.release();
    drop(released);
    let view = accounts.view(ACCOUNT).await.unwrap();
    assert_eq!((view.open_holds, view.held), (0, Nanos::ZERO));
    assert_eq!(view.balance, Nanos::new(5_000_000_000 - 120_000));
}

#[tokio::test]
async fn an_account_the_store_does_not_have_is_unknown_not_unavailable() {
    let (_store, accounts) = start(Duration::from_secs(60)).await;
    let stranger = Payer {
        account: AccountId::new(99),
        ..payer()
    };
    let whole = Output {
        requested: Some(10),
        streamed: false,
        withheld: false,
    };
    let refused = Meter::open(
        &accounts,
        Some(stranger),
        "req_2",
        POLICY,
        (tariff(), 100, whole),
        Transport::Http,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, AccountError::UnknownAccount),
        "{refused:?}"
    );
    let nobody = Meter::open(
        &accounts,
        None,
        "req_3",
        POLICY,
        (tariff(), 100, whole),
        Transport::Ws,
    )
    .await
    .unwrap();
    assert!(matches!(nobody, Meter::Log));
}

#[tokio::test]
async fn a_request_no_route_answered_is_logged_with_its_status_at_no_cost() {
    let (store, accounts) = start(Duration::from_secs(60)).await;
    let whole = Output {
        requested: Some(10),
        streamed: false,
        withheld: true,
    };
    let mut meter = open(&accounts, whole).await;
    let record = MeterRecord {
        request_id: "req_failed".into(),
        model: "m".into(),
        served_model: None,
        provider: None,
        route: None,
        usage: Usage::new(0, 0),
        source: UsageSource::Exact,
        outcome: RequestOutcome::Interrupted,
        error_kind: Some("status"),
        latency_ms: 7,
        ttft_ms: None,
    };
    meter.release_failed(&record, 502);
    // Closed once: neither a second release nor the drop writes again.
    meter.release();
    drop(meter);
    // A durable write after the release, through the same account actor
    // and ledger, makes the release durable too.
    accounts
        .transfer(ACCOUNT, EntryKind::Topup, Nanos::new(1), "after")
        .await
        .unwrap();
    let view = accounts.view(ACCOUNT).await.unwrap();
    assert_eq!((view.open_holds, view.held), (0, Nanos::ZERO));
    assert_eq!(view.balance, Nanos::new(5_000_000_001));
    let logged: Vec<UsageRecord> = store
        .usage_for(ACCOUNT, 0, u64::MAX)
        .map(Result::unwrap)
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    let failed = &logged[0];
    assert_eq!(failed.request_id, "req_failed");
    assert_eq!((failed.status, failed.cost), (502, Nanos::ZERO));
    assert_eq!(failed.error_kind.as_deref(), Some("status"));
    assert_eq!((failed.prompt_tokens, failed.cached_tokens), (0, 0));
    assert_eq!((failed.route, failed.key), (None, Some(KeyId::new(1))));
    assert!(store.verify().unwrap().is_clean());
}

#[tokio::test]
async fn a_settled_request_logs_its_cached_tokens_and_route() {
    let (store, accounts) = start(Duration::from_secs(60)).await;
    let whole = Output {
        requested: Some(10),
        streamed: false,
        withheld: false,
    };
    let mut meter = open(&accounts, whole).await;
    let mut usage = Usage::new(100, 10);
    usage.prompt_tokens_details =
        Some(tokun_providers::types::PromptTokensDetails { cached_tokens: 64 });
    let record = MeterRecord {
        request_id: "req_cached".into(),
        model: "m".into(),
        served_model: Some("upstream-m".into()),
        provider: Some("second".into()),
        route: Some(1),
        usage,
        source: UsageSource::Exact,
        outcome: RequestOutcome::Completed,
        error_kind: None,
        latency_ms: 3,
        ttft_ms: Some(1),
    };
    meter.settle(record).await.unwrap();
    let logged: Vec<UsageRecord> = store
        .usage_for(ACCOUNT, 0, u64::MAX)
        .map(Result::unwrap)
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(
        (logged[0].cached_tokens, logged[0].route, logged[0].status),
        (64, Some(1), 200)
    );
    assert_eq!(logged[0].provider, "second");
}
