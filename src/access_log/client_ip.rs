//! Who the client is: the socket's peer, unless that peer is a trusted
//! proxy (`[server] trusted_proxies`), in which case `X-Forwarded-For` is
//! read from the right — the end each proxy appends to — skipping trusted
//! proxies; the first address that is not one is the client. Anyone can
//! write that header, so an untrusted peer's is ignored entirely.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::config::TrustedProxies;

/// The client's address as the access log records it. When every hop is
/// trusted, the leftmost is the client; an entry that is not an address
/// (`unknown`, garbage) ends the walk at the last trusted hop, since nothing
/// to its left can be believed.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several headers are one list, in order (RFC 9110 §5.3).
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(list) = value.to_str() else {
            return Some(client);
        };
        for entry in list.rsplit(',') {
            let Some(hop) = parse_hop(entry.trim()) else {
                return Some(client);
            };
            client = hop;
            if !trusted.contains(hop) {
                return Some(hop);
            }
        }
    }
    Some(client)
}

/// `203.0.113.7`, `2001:db8::1`, and the forms some proxies write with a
/// port: `203.0.113.7:4711`, `[2001:db8::1]:4711`, `[2001:db8::1]`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}
