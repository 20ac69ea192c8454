use serde_json::json;

use super::*;

fn body(key: u64, at_ms: u64, prompt: &str) -> DebugBody {
    DebugBody {
        request_id: format!("req-{key}-{at_ms}"),
        at_ms,
        account: AccountId::new(key / 10),
        key: KeyId::new(key),
        model: "echo-mini".into(),
        transport: "http".into(),
        status: 200,
        request: json!({"messages": [{"role": "user", "content": prompt}]}),
        response: json!({"choices": []}),
    }
}

fn prompts(page: &DebugPage) -> Vec<String> {
    page.rows
        .iter()
        .map(|row| {
            row.body.request["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn ids_print_and_parse_back_exactly() {
    let id = DebugBodyId {
        at_ms: 1_700_000_000_123,
        unique: 7,
    };
    assert_eq!(id.to_string(), "dbg_1700000000123_7");
    assert_eq!("dbg_1700000000123_7".parse::<DebugBodyId>().unwrap(), id);
    for bad in [
        "",
        "dbg_",
        "dbg_1",
        "dbg_01_2",
        "dbg_1_",
        "key_1_2",
        "dbg_1_2_3",
        "dbg_-1_2",
    ] {
        assert!(bad.parse::<DebugBodyId>().is_err(), "{bad}");
    }
}

#[test]
fn a_keys_bodies_page_newest_first_and_no_other_keys() {
    let store = Store::temporary().unwrap();
    for at in 1..=5 {
        store
            .put_debug_body(&body(21, at * 1000, &format!("p{at}")))
            .unwrap();
        store.put_debug_body(&body(22, at * 1000, "other")).unwrap();
    }
    let first = store.debug_bodies_of_key(KeyId::new(21), None, 2).unwrap();
    assert_eq!(prompts(&first), ["p5", "p4"]);
    assert!(first.has_more);
    let next = first.rows.last().unwrap().id;
    let second = store
        .debug_bodies_of_key(KeyId::new(21), Some(next), 2)
        .unwrap();
    assert_eq!(prompts(&second), ["p3", "p2"]);
    let last = store
        .debug_bodies_of_key(KeyId::new(21), Some(second.rows[1].id), 2)
        .unwrap();
    assert_eq!(prompts(&last), ["p1"]);
    assert!(!last.has_more);
    let none = store.debug_bodies_of_key(KeyId::new(23), None, 10).unwrap();
    assert!(none.rows.is_empty() && !none.has_more);
    assert!(store.has_debug_bodies(KeyId::new(21)).unwrap());
    assert!(!store.has_debug_bodies(KeyId::new(23)).unwrap());
    // The last key id there can be still reads its own range.
    store.put_debug_body(&body(u64::MAX, 9, "max")).unwrap();
    let max = store
        .debug_bodies_of_key(KeyId::new(u64::MAX), None, 10)
        .unwrap();
    assert_eq!(prompts(&max), ["max"]);
}

#[test]
fn deleting_a_keys_bodies_leaves_the_others_and_their_expiry() {
    let store = Store::temporary().unwrap();
    for at in 1..=3 {
        store.put_debug_body(&body(31, at, "mine")).unwrap();
        store.put_debug_body(&body(32, at, "theirs")).unwrap();
    }
    assert_eq!(store.delete_debug_bodies_of_key(KeyId::new(31)).unwrap(), 3);
    assert_eq!(store.delete_debug_bodies_of_key(KeyId::new(31)).unwrap(), 0);
    assert!(!store.has_debug_bodies(KeyId::new(31)).unwrap());
    // Their index rows went with them: only the other key's three are left to expire.
    assert_eq!(store.trees.debug_by_time.len(), 3);
    assert_eq!(store.purge_debug_bodies_before(u64::MAX, 100).unwrap(), 3);
    assert!(!store.has_debug_bodies(KeyId::new(32)).unwrap());
}

#[test]
fn the_purge_takes_only_what_is_older_than_the_cutoff_in_small_batches() {
    let store = Store::temporary().unwrap();
    let day = 86_400_000;
    for n in 0..10 {
        store.put_debug_body(&body(41, n * day, "old")).unwrap();
    }
    store.put_debug_body(&body(41, 20 * day, "new")).unwrap();
    // A row a crash left without its body is purged too.
    store
        .trees
        .debug_by_time
        .insert(usage_key(day / 2, 41, 999), &[])
        .unwrap();
    let cutoff = 10 * day;
    assert_eq!(store.purge_debug_bodies_before(cutoff, 4).unwrap(), 4);
    assert_eq!(store.purge_debug_bodies_before(cutoff, 4).unwrap(), 4);
    assert_eq!(store.purge_debug_bodies_before(cutoff, 4).unwrap(), 3);
    assert_eq!(store.purge_debug_bodies_before(cutoff, 4).unwrap(), 0);
    let left = store
        .debug_bodies_of_key(KeyId::new(41), None, 100)
        .unwrap();
    assert_eq!(prompts(&left), ["new"]);
    assert_eq!(store.trees.debug_by_time.len(), 1);
}

#[test]
fn an_accounts_bodies_batch_through_its_keys_and_only_its_keys() {
    use crate::records::{KeyRecord, LimitReset};
    let store = Store::temporary().unwrap();
    let account = AccountId::new(5);
    for (id, owner) in [(51u64, 5u64), (52, 5), (61, 6)] {
        let record = KeyRecord {
            id: KeyId::new(id),
            account: AccountId::new(owner),
            prefix: "sk-tokun-abc".into(),
            name: "k".into(),
            created_ms: 0,
            last_used_ms: None,
            revoked_ms: None,
            spend_limit: None,
            rpm_limit: None,
            allowed_models: Vec::new(),
            debug: true,
            limit_reset: LimitReset::Total,
            expires_ms: None,
        };
        let hash = [u8::try_from(id).unwrap(); 32];
        store
            .trees
            .keys
            .insert(hash, encode("key", &record).unwrap())
            .unwrap();
        let mut account_key = AccountId::new(owner).to_key().to_vec();
        account_key.extend_from_slice(&record.id.to_key());
        store.trees.account_keys.insert(account_key, &hash).unwrap();
        for at in 1..=3 {
            store
                .put_debug_body(&body(id, at, &format!("{id}-{at}")))
                .unwrap();
        }
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let batch = store
            .debug_bodies_of_account(account, cursor.as_ref(), 2)
            .unwrap();
        assert!(batch.rows.len() <= 2);
        seen.extend(batch.rows.iter().map(|r| r.body.request_id.clone()));
        match batch.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = [51, 52]
        .iter()
        .flat_map(|key| (1..=3).map(move |at| format!("req-{key}-{at}")))
        .collect();
    assert_eq!(seen, expected);
    // Another account's cursor reads nothing here.
    let theirs = BatchCursor(
        body_key(
            KeyId::new(61),
            DebugBodyId {
                at_ms: 1,
                unique: 0,
            },
        )
        .to_vec(),
    );
    let batch = store
        .debug_bodies_of_account(account, Some(&theirs), 10)
        .unwrap();
    assert!(batch.rows.is_empty() && batch.next.is_none());
}
