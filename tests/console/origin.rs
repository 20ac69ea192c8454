//! The sign-in forms come before any session, so they carry no CSRF token;
//! a browser's `Origin` and `Sec-Fetch-Site` must say they were posted from
//! this site (no login CSRF), while clients that send neither still work.

use reqwest::StatusCode;

use crate::support::Harness;

async fn post(
    h: &Harness,
    path: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}{path}", h.base))
        .form(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn sign_in_forms_posted_from_another_site_are_refused() {
    let h = Harness::start(None).await;
    let host = h.base.trim_start_matches("http://").to_owned();
    let mut codes = h.server.watch_sign_in_codes();
    let email = [("email", "eve@example.com")];
    let code = [("email", "eve@example.com"), ("code", "123456")];
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        for (path, form) in [("/login", &email[..]), ("/login/code", &code[..])] {
            let response = post(&h, path, form, &headers).await;
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{path} {headers:?}"
            );
            let page = response.text().await.unwrap();
            assert!(page.contains("another site"), "{page}");
        }
    }
    assert!(
        codes.try_recv().is_err(),
        "no code was sent for a cross-site form"
    );

    // The same forms from this site, as a browser sends them, and from a
    // client that sends no such headers, work.
    let origin = format!("http://{host}");
    let same = [
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    let response = post(&h, "/login", &email, &same).await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = codes.recv().await.unwrap();
    let response = post(
        &h,
        "/login/code",
        &[("email", "eve@example.com"), ("code", &sent.code)],
        &same,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = post(&h, "/login", &[("email", "mallory@example.com")], &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
}
