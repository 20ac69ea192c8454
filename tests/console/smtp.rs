//! With `[auth.smtp]` configured, sign-in codes go out by SMTP through
//! lettre's real client, to the testkit's sink, and never into the log:
//! the code is read from the message the sink received.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use tokun_testkit::smtp::SmtpSink;

use super::Browser;
use crate::support::Harness;

/// The 6-digit code in a received message's subject and body.
fn code_in(data: &str) -> String {
    let subject = data
        .lines()
        .find_map(|line| line.strip_prefix("Subject: "))
        .expect("a subject");
    let code: String = subject.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{subject}");
    assert!(data.contains(&format!("Your tokun sign-in code is {code}.")));
    code
}

#[tokio::test]
async fn a_code_sent_by_smtp_signs_in() {
    let sink = SmtpSink::start().await.unwrap();
    let config = format!(
        "[auth.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"tokun <no-reply@tokun.test>\"\n",
        sink.port()
    );
    let h = Harness::start(Some(&config)).await;
    let anonymous = Browser::new(&h);
    let response = anonymous
        .post("/login", &[("email", "Ada@Example.com")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let message = sink
        .wait_for("ada@example.com", Duration::from_secs(10))
        .await
        .expect("the code arrives by SMTP");
    assert_eq!(message.from, "no-reply@tokun.test");
    assert!(
        message.data.contains("To: ada@example.com"),
        "{}",
        message.data
    );
    let code = code_in(&message.data);

    let response = anonymous
        .post(
            "/login/code",
            &[("email", "ada@example.com"), ("code", &code)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/");

    // A second code voids the first: only the newest signs in.
    let again = Browser::new(&h);
    let _ = again.post("/login", &[("email", "ada@example.com")]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.messages().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "a second message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newest = code_in(&sink.messages()[1].data);
    if newest != code {
        let refused = again
            .post(
                "/login/code",
                &[("email", "ada@example.com"), ("code", &code)],
            )
            .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    let response = again
        .post(
            "/login/code",
            &[("email", "ada@example.com"), ("code", &newest)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}
