//! `server.redirect_http`: plain HTTP answered with `308 Permanent Redirect`
//! to the same path and query over https — on `server.public_url`'s host
//! when that is an https URL, otherwise on the host the client asked for
//! (its `Host`), at the TLS listener's port. It serves nothing else.

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// Where redirects go.
#[derive(Debug, Clone)]
struct Target {
    /// `scheme://authority` of an https `public_url`.
    base: Option<String>,
    /// The TLS listener's port, for redirects built from `Host`.
    port: u16,
}

/// The redirect listener's whole router.
pub fn router(public_url: Option<&str>, https_port: u16) -> Router {
    let base = public_url
        .filter(|url| url.starts_with("https://"))
        .and_then(|url| url.parse::<Uri>().ok())
        .and_then(|uri| Some(format!("https://{}", uri.authority()?)));
    let target = Target {
        base,
        port: https_port,
    };
    Router::new().fallback(move |request: Request| redirect(target.clone(), request))
}

async fn redirect(target: Target, request: Request) -> Response {
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let base = match target.base {
        Some(base) => base,
        None => match request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(hostname)
        {
            Some(host) if target.port == 443 => format!("https://{host}"),
            Some(host) => format!("https://{host}:{}", target.port),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "This address only redirects to https; send a Host header.\n",
                )
                    .into_response();
            }
        },
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("{base}{path}"))],
    )
        .into_response()
}

/// The host of a `Host` header without its port, if it is a plausible
/// DNS name or IP address (nothing that could bend the redirect elsewhere).
fn hostname(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        // An IPv6 literal: `[::1]` or `[::1]:80`.
        &host[..=host.find(']')?]
    } else {
        host.split(':').next()?
    };
    let plausible = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    plausible.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::hostname;

    #[test]
    fn the_host_loses_its_port_and_odd_hosts_are_refused() {
        assert_eq!(hostname("example.com:80"), Some("example.com"));
        assert_eq!(hostname("example.com"), Some("example.com"));
        assert_eq!(hostname("[::1]:8080"), Some("[::1]"));
        assert_eq!(hostname("evil.com/path"), None);
        assert_eq!(hostname("a@b"), None);
        assert_eq!(hostname(""), None);
    }
}
