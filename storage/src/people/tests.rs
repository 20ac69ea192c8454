use super::*;

fn session(account: u64, csrf: &str) -> SessionRecord {
    SessionRecord {
        account: AccountId::new(account),
        created_ms: 1_000,
        expires_ms: 10_000,
        csrf: csrf.into(),
        ip: "127.0.0.1".into(),
        user_agent: "test".into(),
        method: "email".into(),
    }
}

#[test]
fn sessions_are_stored_by_hash_and_revoked_one_or_all() {
    let store = Store::temporary().unwrap();
    let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    store.put_session(&a, &session(7, "x")).unwrap();
    store.put_session(&b, &session(7, "y")).unwrap();
    store.put_session(&c, &session(8, "z")).unwrap();
    assert_eq!(store.session(&a).unwrap(), Some(session(7, "x")));
    store.delete_session(&a).unwrap();
    assert_eq!(store.session(&a).unwrap(), None);
    // Deleting twice is fine.
    store.delete_session(&a).unwrap();
    assert_eq!(store.delete_sessions_of(AccountId::new(7)).unwrap(), 1);
    assert_eq!(store.session(&b).unwrap(), None);
    // Another account's session stays.
    assert_eq!(store.session(&c).unwrap(), Some(session(8, "z")));
}

fn code(email: &str, code: &str, expires_ms: u64) -> LoginCode {
    LoginCode {
        code_hash: login_code_hash(email, code),
        expires_ms,
        tries_left: 5,
        created_ms: 0,
    }
}

#[test]
fn a_right_code_is_consumed_and_only_for_its_email() {
    let store = Store::temporary().unwrap();
    store
        .put_login_code("Ann@Example.com ", &code("ann@example.com", "123456", 100))
        .unwrap();
    assert_eq!(
        store
            .check_login_code("bob@example.com", "123456", 50)
            .unwrap(),
        CodeCheck::Missing
    );
    assert_eq!(
        store
            .check_login_code("ANN@example.com", "123456", 50)
            .unwrap(),
        CodeCheck::Right
    );
    assert_eq!(
        store
            .check_login_code("ann@example.com", "123456", 50)
            .unwrap(),
        CodeCheck::Missing
    );
}

#[test]
fn wrong_codes_lock_after_five_and_a_new_code_replaces_the_old() {
    let store = Store::temporary().unwrap();
    let email = "ann@example.com";
    store
        .put_login_code(email, &code(email, "111111", 100))
        .unwrap();
    for left in (0..5).rev() {
        assert_eq!(
            store.check_login_code(email, "000000", 50).unwrap(),
            CodeCheck::Wrong { tries_left: left }
        );
    }
    // Void now, even for the right code.
    assert_eq!(
        store.check_login_code(email, "111111", 50).unwrap(),
        CodeCheck::Locked
    );
    store
        .put_login_code(email, &code(email, "222222", 100))
        .unwrap();
    assert_eq!(
        store.check_login_code(email, "111111", 50).unwrap(),
        CodeCheck::Wrong { tries_left: 4 }
    );
    assert_eq!(
        store.check_login_code(email, "222222", 50).unwrap(),
        CodeCheck::Right
    );
}

#[test]
fn an_expired_code_is_refused() {
    let store = Store::temporary().unwrap();
    let email = "ann@example.com";
    store
        .put_login_code(email, &code(email, "111111", 100))
        .unwrap();
    assert_eq!(
        store.check_login_code(email, "111111", 100).unwrap(),
        CodeCheck::Expired
    );
    assert!(store.login_code(email).unwrap().is_some());
}

#[test]
fn signins_list_newest_first_and_move_the_profile() {
    let store = Store::temporary().unwrap();
    let account = AccountId::new(3);
    assert_eq!(store.profile(account).unwrap(), Profile::default());
    for at_ms in [10, 20, 20, 30] {
        let signin = SignInRecord {
            at_ms,
            method: "email".into(),
            ip: "10.0.0.1".into(),
            user_agent: "ua".into(),
        };
        store.record_signin(account, &signin).unwrap();
    }
    let listed: Vec<u64> = store
        .signins(account, 3)
        .unwrap()
        .iter()
        .map(|s| s.at_ms)
        .collect();
    assert_eq!(listed, [30, 20, 20]);
    assert!(store.signins(AccountId::new(4), 10).unwrap().is_empty());
    let profile = store.profile(account).unwrap();
    assert_eq!(profile.first_signin_ms, Some(10));
    assert_eq!(profile.last_signin_ms, Some(30));
    assert_eq!(profile.time_zone, "UTC");
}

#[tokio::test]
async fn people_survive_reopening() {
    let dir = std::env::temp_dir().join(format!("tokun-people-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let account = AccountId::new(5);
    {
        let store = Store::open(&dir).unwrap();
        store.put_session(&[9; 32], &session(5, "t")).unwrap();
        let profile = Profile {
            display_name: "Ann".into(),
            time_zone: "Europe/Paris".into(),
            ..Profile::default()
        };
        store.put_profile(account, &profile).unwrap();
        store.flush_people().await.unwrap();
    }
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.session(&[9; 32]).unwrap(), Some(session(5, "t")));
    assert_eq!(store.profile(account).unwrap().display_name, "Ann");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn constant_time_eq_compares_whole_slices() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}
