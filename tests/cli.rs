//! The operator subcommands on a real store: accounts, keys, ledger.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::path::Path;

fn tokun(args: &[&str], data: &Path) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run tokun");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn accounts_keys_and_ledger_from_the_command_line() {
    let data = support::temp_dir("cli");
    let (ok, out, err) = tokun(
        &[
            "accounts",
            "create",
            "cli@example.com",
            "--credit-usd",
            "12.50",
        ],
        &data,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("acct_"), "{out}");
    assert!(out.contains("sk-tokun-"));
    let account = out.split_whitespace().next().unwrap().to_owned();

    let (ok, _, err) = tokun(&["accounts", "create", "cli@example.com"], &data);
    assert!(
        !ok && err.contains("exists"),
        "duplicate email refused: {err}"
    );

    let (ok, out, _) = tokun(
        &[
            "accounts",
            "credit",
            &account,
            "--amount-usd",
            "-2.5",
            "--reason",
            "correction",
        ],
        &data,
    );
    assert!(ok);
    assert!(out.contains("balance $10.00"), "{out}");
    let (ok, _, err) = tokun(
        &[
            "accounts",
            "credit",
            &account,
            "--amount-usd",
            "-100",
            "--reason",
            "too much",
        ],
        &data,
    );
    assert!(!ok, "a debit below the floor is refused: {err}");
    let (ok, _, err) = tokun(
        &[
            "accounts",
            "credit",
            "acct_999",
            "--amount-usd",
            "1",
            "--reason",
            "x",
        ],
        &data,
    );
    assert!(!ok && err.contains("no account"), "{err}");

    let (ok, out, _) = tokun(&["accounts", "list", "--search", "cli@"], &data);
    assert!(
        ok && out.contains("cli@example.com") && out.contains("$10.00"),
        "{out}"
    );

    let (ok, out, _) = tokun(&["keys", "create", &account, "--name", "deploy"], &data);
    assert!(ok && out.contains("sk-tokun-"), "{out}");
    let key = out.split_whitespace().next().unwrap().to_owned();
    let (ok, out, _) = tokun(&["keys", "revoke", &key], &data);
    assert!(ok && out.contains("revoked"), "{out}");

    let (ok, out, err) = tokun(&["ledger", "verify"], &data);
    assert!(ok, "{out}{err}");
    assert!(out.contains("entries 2"), "topup + adjustment: {out}");
    let (ok, out, _) = tokun(&["ledger", "export"], &data);
    assert!(ok);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["topup", "adjustment"]);
}
