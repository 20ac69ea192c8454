use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, |name| {
        (name == "TEST_KEY").then(|| "sk-from-env".to_string())
    })
}

#[test]
fn the_builtin_default_serves_echo() {
    let config = Config::default();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.data_dir, PathBuf::from("./data"));
    assert_eq!(config.server.max_body_bytes, 4 * 1024 * 1024);
    assert!(config.models.iter().any(|m| m.id == "echo-mini"));
    assert!(
        config
            .providers
            .iter()
            .all(|p| p.kind == ProviderKind::Echo)
    );
    assert_eq!(config.billing.demo_credit, Nanos::new(5_000_000_000));
}

#[test]
fn the_example_file_is_valid_and_documents_every_key() {
    let text = include_str!("../../tokun.example.toml");
    let config = Config::parse(text, |_| Some("x".into())).expect("example parses");
    assert_eq!(config.models.len(), 2);
    let price = config.model("gpt-4o-mini").unwrap().price;
    assert_eq!(price.input(), Nanos::new(150_000_000));
    assert_eq!(price.cached_input(), Nanos::new(75_000_000));
    // Every raw field name appears in the example.
    for key in [
        "listen",
        "data_dir",
        "max_body_bytes",
        "admin_token",
        "public_url",
        "shutdown_grace_secs",
        "trusted_proxies",
        "header_read_timeout_secs",
        "idle_timeout_secs",
        "redirect_http",
        "cert_file",
        "key_file",
        "public",
        "level",
        "format",
        "name",
        "kind",
        "base_url",
        "api_key",
        "connect_timeout_ms",
        "first_byte_timeout_ms",
        "idle_timeout_ms",
        "total_timeout_ms",
        "delay_ms",
        "reply_tokens",
        "rpm",
        "tpm",
        "max_concurrency",
        "max_wait_ms",
        "breaker_failures",
        "breaker_cooldown_secs",
        "candidates",
        "policy",
        "context_window",
        "cached_input",
        "routes",
        "enabled",
        "demo_credit_usd",
        "signup_credit_usd",
        "hold_increment_tokens",
        "max_batch",
        "max_batch_delay_us",
        "max_unflushed_us",
        "cache_mib",
        "realtime_url",
        "max_completions",
        "max_frame_bytes",
        "max_messages_per_sec",
        "ping_interval_ms",
        "pong_timeout_ms",
        "stall_timeout_ms",
        "ticket_ttl_secs",
        "url",
        "schema",
        "snapshot_interval_secs",
        "secret_key",
        "webhook_secret",
        "api_base",
        "currency",
        "min_topup_usd",
        "max_topup_usd",
        "success_url",
        "cancel_url",
        "session_days",
        "admin_emails",
        "host",
        "port",
        "username",
        "password",
        "from",
        "tls",
    ] {
        assert!(
            text.contains(&format!("{key} =")) || text.contains(&format!("{key} = ")),
            "{key} undocumented"
        );
    }
}

#[test]
fn unknown_fields_are_errors_naming_the_path() {
    let error = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("server") && error.contains("lisen"),
        "{error}"
    );
    let error = parse("[[providers]]\nname = \"a\"\nkind = \"echo\"\ncolour = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("providers[0]") && error.contains("colour"),
        "{error}"
    );
}

#[test]
fn wrong_values_name_the_field() {
    let error = parse("[server]\nlisten = \"nope\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("server.listen"), "{error}");
    let error = parse("[[providers]]\nname = \"a\"\nkind = \"bard\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("providers[0].kind"), "{error}");
    let models = "[[providers]]\nname = \"a\"\nkind = \"echo\"\n[[models]]\nid = \"m\"\nprice = { input = 1.0, output = 1.0 }\nroutes = [{ provider = \"b\" }]\n";
    let error = parse(models).unwrap_err().to_string();
    assert!(error.starts_with("models[0].routes[0].provider"), "{error}");
    let negative = "[[providers]]\nname = \"a\"\nkind = \"echo\"\n[[models]]\nid = \"m\"\nprice = { input = -1.0, output = 1.0 }\nroutes = [{ provider = \"a\" }]\n";
    assert!(
        parse(negative)
            .unwrap_err()
            .to_string()
            .starts_with("models[0].price.input")
    );
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let text = "[[providers]]\nname = \"o\"\nkind = \"openai\"\napi_key = \"${TEST_KEY}\"\n[[models]]\nid = \"m\"\nprice = { input = 1.0, output = 1.0 }\nroutes = [{ provider = \"o\" }]\n";
    let config = parse(text).unwrap();
    let key = config.providers[0].api_key.as_ref().unwrap();
    assert_eq!(key.expose(), "sk-from-env");
    assert!(!format!("{config:?}").contains("sk-from-env"));
    let missing = text.replace("TEST_KEY", "MISSING_KEY");
    let error = parse(&missing).unwrap_err().to_string();
    assert!(
        error.contains("providers[0].api_key") && error.contains("MISSING_KEY"),
        "{error}"
    );
}

#[test]
fn websocket_limits_and_realtime_urls_are_checked() {
    let config = Config::default();
    assert_eq!(config.websocket.max_completions.get(), 100);
    assert_eq!(config.websocket.ticket_ttl, Duration::from_secs(60));
    let error = parse("[websocket]\nmax_completions = 0\n")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("websocket.max_completions"), "{error}");
    let error = parse("[websocket]\nping_interval_ms = 0\n")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("websocket.ping_interval_ms"), "{error}");
    let text = "[[providers]]\nname = \"o\"\nkind = \"openai\"\nrealtime_url = \"https://x\"\n";
    let error = parse(text).unwrap_err().to_string();
    assert!(error.starts_with("providers[0].realtime_url"), "{error}");
}

#[test]
fn postgres_snapshots_are_optional_and_checked() {
    assert!(parse("").unwrap().postgres.is_none());
    let text = "[postgres]\nurl = \"postgres://tokun:${TEST_KEY}@db:5433/ledger\"\n";
    let postgres = parse(text).unwrap().postgres.unwrap();
    assert_eq!(postgres.schema, "public");
    assert_eq!(postgres.snapshot_interval, Duration::from_secs(60));
    assert!(postgres.url.expose().contains("sk-from-env"));
    assert!(!format!("{postgres:?}").contains("sk-from-env"));
    assert_eq!(postgres.target().unwrap().shown(), "tokun@db:5433/ledger");
    let bad = [
        ("schema = \"Bad-Name\"", "postgres.schema"),
        (
            "snapshot_interval_secs = 0",
            "postgres.snapshot_interval_secs",
        ),
        ("colour = 1", "postgres.colour"),
    ];
    for (line, field) in bad {
        let err = parse(&format!("{text}{line}\n")).unwrap_err().to_string();
        assert!(err.contains(field), "{line}: {err}");
    }
    let err = parse("[postgres]\nurl = \"postgres://u:hunter2@h:nope/db\"\n").unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("postgres.url") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn stripe_is_optional_and_checked() {
    assert!(parse("").unwrap().stripe.is_none());
    let text = "[server]\npublic_url = \"https://gw.example.com/\"\n[stripe]\nsecret_key = \"${TEST_KEY}\"\nwebhook_secret = \"whsec_1\"\n";
    let stripe = parse(text).unwrap().stripe.unwrap();
    assert_eq!(stripe.secret_key.expose(), "sk-from-env");
    assert!(!format!("{stripe:?}").contains("sk-from-env"));
    assert!(!format!("{stripe:?}").contains("whsec_1"));
    assert_eq!(stripe.api_base, "https://api.stripe.com/");
    assert_eq!(stripe.currency, "usd");
    assert_eq!(stripe.min_topup, Nanos::new(5_000_000_000));
    assert_eq!(stripe.max_topup, Nanos::new(1_000_000_000_000));
    assert!(
        stripe
            .success_url
            .starts_with("https://gw.example.com/?topup=success&session_id={CHECKOUT_SESSION_ID}")
    );
    let keys = "[stripe]\nsecret_key = \"sk\"\nwebhook_secret = \"wh\"\n";
    let bad: [(&str, &str); 9] = [
        ("[stripe]\nsecret_key = \"sk\"\n", "stripe.webhook_secret"),
        ("[stripe]\nwebhook_secret = \"wh\"\n", "stripe.secret_key"),
        (
            &format!("{keys}api_base = \"ftp://x\"\n"),
            "stripe.api_base",
        ),
        (&format!("{keys}currency = \"eur\"\n"), "stripe.currency"),
        (
            &format!("{keys}min_topup_usd = 0.25\n"),
            "stripe.min_topup_usd",
        ),
        (
            &format!("{keys}min_topup_usd = 5.005\n"),
            "stripe.min_topup_usd",
        ),
        (
            &format!("{keys}max_topup_usd = 1.0\n"),
            "stripe.max_topup_usd",
        ),
        (
            &format!("{keys}success_url = \"nope\"\n"),
            "stripe.success_url",
        ),
        (&format!("{keys}colour = 1\n"), "colour"),
    ];
    for (text, field) in bad {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.contains(field), "{text}: {error}");
    }
    let missing = parse("[stripe]\nsecret_key = \"${NOPE}\"\nwebhook_secret = \"wh\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("stripe.secret_key") && missing.contains("NOPE"),
        "{missing}"
    );
}

#[test]
fn ledger_cache_and_unflushed_window_are_configurable_and_bounded() {
    let defaults = parse("").unwrap().ledger;
    assert_eq!(defaults.cache_bytes, 16 * 1024 * 1024);
    assert_eq!(defaults.max_unflushed, Duration::from_millis(5));
    let set = parse("[ledger]\ncache_mib = 64\nmax_unflushed_us = 0\n")
        .unwrap()
        .ledger;
    assert_eq!(set.cache_bytes, 64 * 1024 * 1024);
    assert_eq!(set.max_unflushed, Duration::ZERO);
    // The window is capped at 1 s (see `LedgerConfig::max_unflushed`).
    let capped = parse("[ledger]\nmax_unflushed_us = 600000000\n")
        .unwrap()
        .ledger;
    assert_eq!(capped.max_unflushed, Duration::from_secs(1));
}

#[test]
fn auth_sessions_and_smtp_are_optional_and_checked() {
    let config = parse("").unwrap();
    assert_eq!(config.auth.session, Duration::from_secs(14 * 86_400));
    assert!(config.auth.smtp.is_none());
    let text = "[auth]\nsession_days = 2\nadmin_emails = [\" Ops@Example.com\"]\n[auth.smtp]\nhost = \"smtp.example.com\"\nusername = \"u\"\npassword = \"${TEST_KEY}\"\nfrom = \"tokun <no-reply@example.com>\"\n";
    let auth = parse(text).unwrap().auth;
    assert_eq!(auth.session, Duration::from_secs(2 * 86_400));
    assert_eq!(auth.admin_emails, ["ops@example.com"]);
    let smtp = auth.smtp.unwrap();
    assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::StartTls));
    assert_eq!(
        smtp.password.as_ref().map(Secret::expose),
        Some("sk-from-env")
    );
    assert!(!format!("{smtp:?}").contains("sk-from-env"));
    let tls = parse("[auth.smtp]\nhost = \"h\"\nfrom = \"a@b.c\"\ntls = \"tls\"\n").unwrap();
    assert_eq!(tls.auth.smtp.unwrap().port, 465);
    for (text, field) in [
        ("[auth]\nsession_days = 0\n", "auth.session_days"),
        (
            "[auth]\nadmin_emails = [\"nope\"]\n",
            "auth.admin_emails[0]",
        ),
        (
            "[auth.smtp]\nhost = \"h\"\nfrom = \"a@b.c\"\ntls = \"ssl\"\n",
            "auth.smtp.tls",
        ),
        (
            "[auth.smtp]\nhost = \"h\"\nfrom = \"not an address\"\n",
            "auth.smtp.from",
        ),
        (
            "[auth.smtp]\nhost = \"\"\nfrom = \"a@b.c\"\n",
            "auth.smtp.host",
        ),
        (
            "[auth.smtp]\nhost = \"h\"\nfrom = \"a@b.c\"\npassword = \"p\"\n",
            "auth.smtp.username",
        ),
        (
            "[server]\npublic_url = \"gw.example.com\"\n",
            "server.public_url",
        ),
    ] {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.starts_with(field), "{text}: {error}");
    }
}

#[test]
fn the_ledger_is_kept_seven_years_unless_configured() {
    const YEAR: u64 = 365 * 24 * 3600;
    let default = Config::default();
    assert_eq!(default.retention.ledger.as_secs(), 7 * YEAR);
    let ten = parse("[retention]\nledger_years = 10\n").unwrap();
    assert_eq!(ten.retention.ledger.as_secs(), 10 * YEAR);
    let error = parse("[retention]\nledger_years = 0\n").unwrap_err();
    assert!(
        error.to_string().contains("retention.ledger_years"),
        "{error}"
    );
}
