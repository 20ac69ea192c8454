//! The frame of every console page: the document head, the header with its
//! navigation and sign-out button, a skip link and `<main>`; the console's
//! error pages (404, 403, 500 …) in the same frame; and the one stylesheet.
//! Pages build their body with maud, which escapes every interpolation.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Signed;
use crate::error::ErrorKind;

/// The stylesheet, compiled in; served at `/assets/console.css`.
const STYLESHEET: &str = include_str!("assets/console.css");

/// Where the stylesheet is served. Its query changes with the file's size,
/// so a changed stylesheet is a new URL and the long cache never serves a
/// stale one.
fn stylesheet_href() -> String {
    format!("/assets/console.css?v={}", STYLESHEET.len())
}

/// The navigation, in order: (label, path).
const NAV: [(&str, &str); 6] = [
    ("Dashboard", "/"),
    ("Activity", "/activity"),
    ("Keys", "/keys"),
    ("Billing", "/billing"),
    ("Playground", "/playground"),
    ("Account", "/account"),
];

/// A whole page. `title` names the page (the nav item of the same name is
/// marked current); `who` is the signed-in person, `None` on sign-in pages.
pub fn page(title: &str, who: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · tokun" }
                link rel="stylesheet" href=(stylesheet_href());
                link rel="icon" type="image/svg+xml" href="/assets/favicon.svg";
            }
            body {
                a.skip href="#main" { "Skip to main content" }
                header.site {
                    div.bar {
                        a.brand href="/" { "tokun" }
                        @if let Some(who) = who {
                            nav.main aria-label="Main" {
                                ul {
                                    @for (label, href) in NAV {
                                        li {
                                            a href=(href) aria-current=[(label == title).then_some("page")] { (label) }
                                        }
                                    }
                                }
                            }
                            form.signout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(who.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// A console page answering with `status`.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error page in the console's style: the status, a message in plain
/// words, and a way on. Never a stack trace.
pub fn error_page(status: StatusCode, message: &str, who: Option<&Signed>) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Page not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        status if status.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    let body = html! {
        h1 { (title) }
        p { (message) }
        p.muted { "Error " (status.as_u16()) "." }
        p {
            @if who.is_some() { a href="/" { "Go to your dashboard" } }
            @else { a href="/login" { "Sign in" } }
        }
    };
    let mut response = respond(status, page(title, who, body));
    response.extensions_mut().insert(ErrorKind("console"));
    response
}

/// `GET /assets/console.css`: cached for a year (the URL carries a version).
pub async fn stylesheet() -> Response {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

/// The icon, a token-shaped mark, so browsers stop asking for `/favicon.ico`.
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\"><circle cx=\"16\" cy=\"16\" r=\"14\" fill=\"#1d4ed8\"/><text x=\"16\" y=\"22\" font-family=\"sans-serif\" font-size=\"17\" font-weight=\"700\" text-anchor=\"middle\" fill=\"#fff\">t</text></svg>";

/// `/assets/favicon.svg`.
pub async fn favicon() -> Response {
    asset(FAVICON, "image/svg+xml")
}

/// A compiled-in file, cached for a year (its URL changes when it does).
pub fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

/// A form field with its label, hint and error beside it, GOV.UK style.
pub struct Field<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub hint: Option<&'a str>,
    pub kind: &'a str,
    pub value: &'a str,
    pub error: Option<&'a str>,
    /// Extra attributes, as maud cannot splice arbitrary ones.
    pub autocomplete: &'a str,
    pub inputmode: Option<&'a str>,
    pub class: Option<&'a str>,
}

impl Field<'_> {
    pub fn render(&self) -> Markup {
        let hint_id = format!("{}-hint", self.name);
        let error_id = format!("{}-error", self.name);
        let described = match (self.hint.is_some(), self.error.is_some()) {
            (true, true) => Some(format!("{hint_id} {error_id}")),
            (true, false) => Some(hint_id.clone()),
            (false, true) => Some(error_id.clone()),
            (false, false) => None,
        };
        html! {
            div.field.field-error[self.error.is_some()] {
                label for=(self.name) { (self.label) }
                @if let Some(hint) = self.hint { span.hint id=(hint_id) { (hint) } }
                @if let Some(error) = self.error {
                    span.message id=(error_id) { span.visually-hidden { "Error: " } (error) }
                }
                input id=(self.name) name=(self.name) type=(self.kind) value=(self.value)
                    autocomplete=(self.autocomplete) inputmode=[self.inputmode] class=[self.class]
                    aria-describedby=[described] aria-invalid=[self.error.map(|_| "true")];
            }
        }
    }
}

/// The error summary at the top of a form: each error linking to its field.
pub fn error_summary<'a>(errors: impl IntoIterator<Item = (&'a str, &'a str)>) -> Markup {
    let errors: Vec<(&str, &str)> = errors.into_iter().collect();
    html! {
        @if !errors.is_empty() {
            div.error-summary role="alert" tabindex="-1" {
                h2 { "There is a problem" }
                ul {
                    @for (field, message) in &errors {
                        li { a href=(format!("#{field}")) { (message) } }
                    }
                }
            }
        }
    }
}
