//! The crash loop's checks: through the running server, and on the exported ledger.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the crash loop: it shares its imports and types"
)]

use super::*;

// ---------------------------------------------------------------------------
// Checks through the running server.

pub(super) async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// Right after a restart, before any load: recovery left nothing held,
/// verify is clean, and the request log has every finished request once at
/// its cost. Returns the last seq (the end of recovery) and each account's
/// request log (request id → cost).
pub(super) async fn check_running(
    ctx: &Ctx,
    base: &str,
) -> (u64, HashMap<AccountId, HashMap<String, i64>>) {
    let seen = lock(&ctx.seen).finished.clone();
    let mut logs = HashMap::new();
    for (client, account, transports) in [
        (&ctx.demo, &ctx.demo_account, &["sse", "ws", "unary"][..]),
        (&ctx.idem, &ctx.idem_account, &["idem"][..]),
    ] {
        let view = get_json(client, format!("{base}/v1/account")).await;
        assert_eq!(view["id"], account.as_str());
        assert_eq!(view["held_nanos"], 0, "recovery left money held: {view}");
        assert_eq!(view["open_holds"], 0, "recovery left holds open: {view}");
        let usage = get_json(client, format!("{base}/v1/usage?limit=100000")).await;
        let mut logged: HashMap<String, i64> = HashMap::new();
        for record in usage["data"].as_array().unwrap() {
            let id = record["request_id"].as_str().unwrap().to_owned();
            let cost = nanos(record["cost"].as_str().unwrap());
            assert!(
                logged.insert(id.clone(), cost).is_none(),
                "{id} logged twice"
            );
        }
        for (id, finished) in seen
            .iter()
            .filter(|(_, f)| transports.contains(&f.transport))
        {
            assert_eq!(
                logged.get(id),
                Some(&finished.cost),
                "request {id} ({finished:?}) in the request log once, at the cost its client saw"
            );
        }
        logs.insert(account.parse::<AccountId>().unwrap(), logged);
    }
    let report = ctx
        .plain
        .get(format!("{base}/admin/ledger/verify"))
        .bearer_auth(&ctx.admin_token)
        .send()
        .await
        .unwrap();
    let report: Value = report.json().await.unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["open_holds"], 0, "{report}");
    (report["entries"].as_u64().unwrap(), logs)
}

// ---------------------------------------------------------------------------
// Checks on the exported ledger.

/// The holds open at one kill, and where the ledger ended then and after recovery.
pub(super) struct Kill {
    pub(super) last_seq: u64,
    pub(super) open: HashSet<(AccountId, HoldId)>,
    /// Last seq once the next start recovered (before any load).
    pub(super) recovered_by: u64,
}

#[derive(Default)]
pub(super) struct HoldLife {
    pub(super) request_id: Option<String>,
    pub(super) amount: i64,
    pub(super) holds: u32,
    /// held − closed so far; 0 once closed.
    pub(super) remaining: i64,
    pub(super) settle: Vec<(u64, i64)>,
    pub(super) recovered: Vec<(u64, i64)>,
    pub(super) releases: u32,
    pub(super) closed_at: Option<u64>,
}

pub(super) struct Books {
    pub(super) accounts: HashMap<AccountId, (i64, i64)>,
    pub(super) holds: HashMap<(AccountId, HoldId), HoldLife>,
}

/// Everything an exported ledger must satisfy at any moment (`end`: also
/// with nothing running and nothing held). Returns its books.
pub(super) fn check_ledger(entries: &[LedgerEntry], ctx: &Ctx, kills: &[Kill], end: bool) -> Books {
    let seen = lock(&ctx.seen);
    let demo: AccountId = ctx.demo_account.parse().unwrap();
    let idem: AccountId = ctx.idem_account.parse().unwrap();
    // No entry lost, none written twice: seq is 1, 2, 3, …
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.seq,
            i as u64 + 1,
            "seq has a gap or a duplicate at {entry:?}"
        );
    }
    let mut books: HashMap<AccountId, (i64, i64)> = HashMap::new();
    let mut holds: HashMap<(AccountId, HoldId), HoldLife> = HashMap::new();
    let mut topups: HashMap<String, Vec<i64>> = HashMap::new();
    let mut adjustments: HashMap<String, Vec<i64>> = HashMap::new();
    for e in entries {
        let amount = e.amount.get();
        let (balance, held) = books.entry(e.account).or_default();
        match e.kind {
            EntryKind::Topup => *balance += amount,
            EntryKind::Adjustment => *balance += amount,
            EntryKind::Refund => *balance -= amount,
            EntryKind::Hold | EntryKind::Extend => *held += amount,
            EntryKind::Settle | EntryKind::Recovered => {
                *balance -= amount;
                *held -= amount;
            }
            EntryKind::Release => *held -= amount,
        }
        assert_eq!(
            (*balance, *held),
            (e.balance_after.get(), e.held_after.get()),
            "books after {e:?}"
        );
        let reference = e.reference.clone().unwrap_or_default();
        match e.kind {
            EntryKind::Topup => topups.entry(reference).or_default().push(amount),
            EntryKind::Adjustment => adjustments.entry(reference).or_default().push(amount),
            EntryKind::Refund => panic!("no refund was asked for: {e:?}"),
            _ => {}
        }
        if !e.kind.needs_hold() {
            continue;
        }
        let hold = e.hold.expect("a hold entry names its hold");
        let life = holds.entry((e.account, hold)).or_default();
        assert!(
            life.closed_at.is_none(),
            "entry after its hold closed: {e:?}"
        );
        if e.kind == EntryKind::Hold {
            life.holds += 1;
            life.amount = amount;
            life.request_id = e.request_id.clone();
        } else {
            assert_eq!(life.holds, 1, "{e:?} without its hold");
            assert_eq!(life.request_id, e.request_id, "{e:?} names another request");
        }
        match e.kind {
            EntryKind::Hold | EntryKind::Extend => life.remaining += amount,
            EntryKind::Settle => {
                life.remaining -= amount;
                life.settle.push((e.seq, amount));
            }
            EntryKind::Recovered => {
                life.remaining -= amount;
                life.recovered.push((e.seq, amount));
            }
            EntryKind::Release => {
                life.remaining -= amount;
                life.releases += 1;
            }
            _ => {}
        }
        assert!(life.remaining >= 0, "hold {hold} below zero at {e:?}");
        if life.remaining == 0 && e.kind != EntryKind::Hold && e.kind != EntryKind::Extend {
            life.closed_at = Some(e.seq);
        }
    }

    // Each hold opened once and closed at most once; one hold per request.
    let mut by_request: HashMap<&str, Vec<(AccountId, HoldId)>> = HashMap::new();
    for (key, life) in &holds {
        assert_eq!(life.holds, 1, "hold {key:?} opened {} times", life.holds);
        assert!(
            life.settle.len() + life.recovered.len() <= 1 && life.releases <= 1,
            "hold {key:?} closed more than once"
        );
        if end {
            assert!(
                life.closed_at.is_some(),
                "hold {key:?} still open at the end"
            );
        }
        let request = life
            .request_id
            .as_deref()
            .expect("a hold names its request");
        by_request.entry(request).or_default().push(*key);
    }
    for (request, keys) in &by_request {
        assert_eq!(keys.len(), 1, "request {request} opened {keys:?}");
    }

    // Every request a client saw finish: settled exactly once, at its cost.
    for (id, finished) in &seen.finished {
        let account = if finished.transport == "idem" {
            idem
        } else {
            demo
        };
        let key = by_request
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} ({finished:?}) finished but has no hold"))[0];
        assert_eq!(key.0, account, "{id} charged to the wrong account");
        let life = &holds[&key];
        assert!(life.recovered.is_empty(), "{id} finished, yet recovered");
        assert_eq!(
            life.settle.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![finished.cost],
            "{id} ({finished:?}) settled once at the cost its client saw"
        );
    }

    // Holds open at a kill: closed by the next start as `recovered`, and
    // nothing else closed that way.
    let mut expected_recovered: HashMap<(AccountId, HoldId), &Kill> = HashMap::new();
    for kill in kills {
        for key in &kill.open {
            expected_recovered.insert(*key, kill);
        }
    }
    for (key, life) in &holds {
        match (expected_recovered.get(key), life.recovered.first()) {
            (Some(kill), Some((seq, _))) => assert!(
                kill.last_seq < *seq && *seq <= kill.recovered_by,
                "hold {key:?} open at the kill ending at seq {} recovered at {seq}, \
                 not by the next start (≤ {})",
                kill.last_seq,
                kill.recovered_by
            ),
            (Some(_), None) => {
                panic!("hold {key:?} open at a kill was not recovered by the next start")
            }
            (None, Some((seq, _))) => {
                panic!("hold {key:?} recovered at {seq}, yet was not open at any kill")
            }
            _ => {}
        }
        if expected_recovered.contains_key(key) {
            assert!(
                life.settle.is_empty(),
                "hold {key:?} open at a kill, then settled"
            );
        }
    }
    // Between a kill and the end of the next start's recovery, only recovery wrote.
    for kill in kills {
        for e in &entries[kill.last_seq as usize..kill.recovered_by as usize] {
            let key = (
                e.account,
                e.hold.unwrap_or_else(|| panic!("recovery wrote {e:?}")),
            );
            assert!(
                kill.open.contains(&key)
                    && matches!(e.kind, EntryKind::Recovered | EntryKind::Release),
                "the start after the kill at seq {} wrote {e:?}",
                kill.last_seq
            );
        }
    }

    // Money in: the demo and signup credits, and one top-up per paid session.
    let mut paid_in: HashMap<AccountId, i64> = HashMap::new();
    for (reference, amounts) in &topups {
        match reference.as_str() {
            "demo credit" => assert_eq!(amounts, &vec![DEMO_CREDIT]),
            "signup credit" => assert_eq!(amounts, &vec![IDEM_CREDIT]),
            session => {
                let amount = seen
                    .sessions
                    .get(session)
                    .unwrap_or_else(|| panic!("top-up for an unknown session {session}"));
                assert_eq!(
                    amounts,
                    &vec![*amount],
                    "session {session} credited once, in full"
                );
            }
        }
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::Topup) {
        *paid_in.entry(e.account).or_default() += e.amount.get();
    }
    for (session, outcomes) in &seen.acked {
        assert_eq!(
            topups.get(session).map(Vec::len),
            Some(1),
            "session {session} answered 2xx ({outcomes:?}) is credited exactly once"
        );
        let credited = outcomes
            .iter()
            .filter(|o| o.as_deref() == Some("credited"))
            .count();
        assert!(
            credited <= 1,
            "session {session} answered `credited` {credited} times"
        );
        for outcome in outcomes.iter().flatten() {
            assert!(
                outcome == "credited" || outcome == "duplicate",
                "session {session}: {outcomes:?}"
            );
        }
        if outcomes.first().cloned().flatten().as_deref() == Some("duplicate") {
            assert!(
                seen.unanswered.contains(session),
                "session {session}'s first answer was `duplicate` with no earlier delivery"
            );
        }
    }
    // Adjustments: each one answered 200 exactly once; unanswered ones at most once.
    let mut adjusted = 0i64;
    for (reason, amounts) in &adjustments {
        let expected = seen
            .credits_ok
            .get(reason)
            .or_else(|| seen.credits_unknown.get(reason))
            .unwrap_or_else(|| panic!("adjustment nobody asked for: {reason}"));
        assert_eq!(amounts, &vec![*expected], "adjustment {reason}");
        adjusted += expected;
    }
    for (reason, amount) in &seen.credits_ok {
        assert!(
            adjustments.contains_key(reason),
            "adjustment {reason} ({amount}) answered 200, lost"
        );
    }
    // Balances, to the nano: money in ± adjustments − settlements.
    for (account, (balance, held)) in &books {
        let spent: i64 = holds
            .iter()
            .filter(|(key, _)| key.0 == *account)
            .flat_map(|(_, life)| life.settle.iter().chain(&life.recovered))
            .map(|s| s.1)
            .sum();
        let adjustments = if *account == demo { adjusted } else { 0 };
        assert_eq!(
            *balance,
            paid_in[account] + adjustments - spent,
            "balance of {account} = top-ups ± adjustments − settlements"
        );
        let open: i64 = holds
            .iter()
            .filter(|(key, _)| key.0 == *account)
            .map(|(_, life)| life.remaining)
            .sum();
        assert_eq!(*held, open, "held of {account} = its open holds");
        if end {
            assert_eq!(*held, 0, "{account} holds nothing at the end");
        }
    }
    let client_paid: i64 = DEMO_CREDIT + seen.acked.keys().map(|s| seen.sessions[s]).sum::<i64>();
    if end {
        assert!(seen.redeliver.is_empty());
        assert_eq!(
            paid_in[&demo], client_paid,
            "demo top-ups = what Stripe was told"
        );
    }
    Books {
        accounts: books,
        holds,
    }
}

/// Per idempotency key: how many attempts were charged (settled, or
/// recovered after a kill). A key's cost and its hold name it.
pub(super) fn idem_charges(ctx: &Ctx, books: &Books) -> (Vec<String>, Vec<String>) {
    let seen = lock(&ctx.seen);
    let idem: AccountId = ctx.idem_account.parse().unwrap();
    let by_cost: HashMap<i64, u64> = seen
        .idem
        .iter()
        .filter_map(|(k, state)| Some((state.cost?, *k)))
        .collect();
    assert_eq!(
        by_cost.len(),
        seen.idem.values().filter(|s| s.cost.is_some()).count(),
        "each key's cost names it"
    );
    let mut settled: HashMap<u64, u32> = HashMap::new();
    let mut hold_of: HashMap<i64, u64> = HashMap::new();
    // Settlements of keys a kill cut short after their settlement was durable:
    // charged once, their answer lost, so the client never learnt the cost.
    let mut cut_short_settled = 0;
    for life in books
        .holds
        .iter()
        .filter(|(k, _)| k.0 == idem)
        .map(|(_, l)| l)
    {
        if let Some((_, cost)) = life.settle.first() {
            let Some(key) = by_cost.get(cost) else {
                cut_short_settled += 1;
                continue;
            };
            *settled.entry(*key).or_default() += 1;
            hold_of.insert(life.amount, *key);
        }
    }
    let interrupted = seen.idem.values().filter(|s| s.interrupted).count();
    assert!(
        cut_short_settled <= interrupted,
        "{cut_short_settled} settlements of unanswered keys, only {interrupted} keys cut short"
    );
    let mut recovered: HashMap<u64, u32> = HashMap::new();
    let mut unattributed = 0;
    for life in books
        .holds
        .iter()
        .filter(|(k, _)| k.0 == idem)
        .map(|(_, l)| l)
    {
        if !life.recovered.is_empty() {
            match hold_of.get(&life.amount) {
                Some(key) => *recovered.entry(*key).or_default() += 1,
                None => unattributed += 1,
            }
        }
    }
    let mut twice = Vec::new();
    let mut after_recovery = Vec::new();
    for (key, state) in &seen.idem {
        let n = settled.get(key).copied().unwrap_or(0);
        let r = recovered.get(key).copied().unwrap_or(0);
        if state.body.is_some() {
            assert!(n >= 1, "idempotent key {key} answered but never settled");
        }
        if n > 1 {
            twice.push(format!(
                "key {key}: settled {n}× (answered by {:?}, {} attempts, {} replays)",
                state.fresh, state.attempts, state.replays
            ));
        }
        // A hold recovered and then settled again by a retry is a second
        // charge (a withheld answer's hold is recovered at zero, but its key
        // must still never run twice).
        if r > 0 && n > 0 {
            after_recovery.push(format!(
                "key {key}: {r} attempt(s) recovered, then settled {n}×"
            ));
        }
    }
    if unattributed > 0 {
        eprintln!(
            "crash_loop: idempotency: {unattributed} recovered hold(s) of keys a kill cut short (never run again)"
        );
    }
    (twice, after_recovery)
}
