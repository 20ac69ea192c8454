//! How sled 0.34's memory grows with what the ledger writer writes: the
//! trees and key shapes of one request (three ledger entries, a usage
//! record, the account index, a hold opened and closed, a balance update),
//! committed as the writer does (one multi-tree transaction per 25
//! requests, a flush per 50) with the store's options, and the process
//! RSS printed every 50,000 requests. No tokun code runs, so what grows is
//! sled's. Run with `cargo run --release -p tokun-storage --example
//! sled_rss -- [cache MiB, 16] [requests, 600000] [value divisor, 1]
//! [keep]`; with `keep`, the entries and usage of all but the newest
//! `keep` requests are removed as it goes (does pruning give memory back?);
//! benches/README.md ("soak") has the results.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a measurement: any failure aborts it, the numbers are its output"
)]

use sled::transaction::{ConflictableTransactionError, Transactional};

/// Requests per transaction; two transactions per flush.
const PER_TRANSACTION: u64 = 25;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    let cache_mib = arg(1, 16);
    let total = arg(2, 600_000);
    let divisor = usize::try_from(arg(3, 1)).unwrap().max(1);
    let keep = args.get(4).map(|a| a.parse::<u64>().unwrap());
    let dir = std::env::temp_dir().join(format!("sled-rss-{}", std::process::id()));
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(cache_mib << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let tree = |name: &str| db.open_tree(name).unwrap();
    let owned = [
        tree("entries"),
        tree("usage"),
        tree("account_entries"),
        tree("holds"),
        tree("balances"),
    ];
    let [
        entries_tree,
        usage_tree,
        index_tree,
        holds_tree,
        balances_tree,
    ] = &owned;
    let trees = (
        entries_tree,
        usage_tree,
        index_tree,
        holds_tree,
        balances_tree,
    );
    // Typical JSON sizes of a ledger entry, a usage record and an open hold.
    let entry = vec![b'e'; 260 / divisor];
    let usage = vec![b'u'; 420 / divisor];
    let hold = vec![b'h'; 200 / divisor];
    let (mut request, mut seq) = (0u64, 0u64);
    println!(
        "cache {cache_mib} MiB, values / {divisor}, keep {keep:?}, start RSS {} KiB",
        rss_kib()
    );
    while request < total {
        for _ in 0..2 {
            trees
                .transaction(|(e, u, a, h, b)| {
                    for i in 0..PER_TRANSACTION {
                        let (r, s) = (request + i, seq + i * 3);
                        for n in 0..3 {
                            e.insert(&(s + n).to_be_bytes(), entry.clone())?;
                        }
                        let mut usage_key = [0u8; 24];
                        usage_key[8..16].copy_from_slice(&r.to_be_bytes());
                        u.insert(&usage_key, usage.clone())?;
                        let mut index_key = [0u8; 16];
                        index_key[8..].copy_from_slice(&s.to_be_bytes());
                        a.insert(&index_key, &s.to_be_bytes())?;
                        h.insert(&r.to_be_bytes(), hold.clone())?;
                        h.remove(&r.to_be_bytes())?;
                        b.insert(&1u64.to_be_bytes(), &s.to_be_bytes())?;
                        if let Some(old) = keep.and_then(|keep| r.checked_sub(keep)) {
                            for n in 0..3 {
                                e.remove(&(old * 3 + n).to_be_bytes())?;
                            }
                            let mut old_usage = [0u8; 24];
                            old_usage[8..16].copy_from_slice(&old.to_be_bytes());
                            u.remove(&old_usage)?;
                            let mut old_index = [0u8; 16];
                            old_index[8..].copy_from_slice(&(old * 3).to_be_bytes());
                            a.remove(&old_index)?;
                        }
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .unwrap();
            seq += PER_TRANSACTION * 3;
            request += PER_TRANSACTION;
        }
        db.flush().unwrap();
        if request % 50_000 == 0 {
            println!(
                "{request:>8} requests: RSS {:>7} KiB, on disk {} MiB",
                rss_kib(),
                db.size_on_disk().unwrap() >> 20
            );
        }
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
