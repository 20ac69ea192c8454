//! The access log's settings: `[access_log] enabled` and
//! `[server] trusted_proxies`, the peers whose `X-Forwarded-For` tokun
//! believes. Only the parsing and the address arithmetic live here; the
//! walk over `X-Forwarded-For` is `crate::access_log::client_ip`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::raw::RawAccessLog;
use super::{ConfigError, invalid};

/// `[access_log]`: one JSON line per HTTP request and WebSocket upgrade.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// Write `<data_dir>/access/access-YYYY-MM-DD.log` (default true).
    pub enabled: bool,
}

/// The proxies allowed to say who the client is. Empty (the default):
/// `X-Forwarded-For` is ignored and the socket's peer is the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

/// An address block: `10.0.0.0/8`, `::1/128`. Host bits are cleared, so
/// `10.1.2.3/8` means `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxies {
    /// Whether `ip` (IPv4-mapped IPv6 read as IPv4) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

impl IpNet {
    /// `a.b.c.d/n`, `v6/n`, or a bare address (one host).
    pub fn parse(text: &str) -> Option<IpNet> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return None;
        }
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix))),
        };
        Some(IpNet { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

pub(super) fn access_log_config(raw: RawAccessLog) -> AccessLogConfig {
    AccessLogConfig {
        enabled: raw.enabled.unwrap_or(true),
    }
}

pub(super) fn trusted_proxies(raw: Option<Vec<String>>) -> Result<TrustedProxies, ConfigError> {
    let mut networks = Vec::new();
    for (i, text) in raw.unwrap_or_default().iter().enumerate() {
        let net = IpNet::parse(text).ok_or_else(|| {
            invalid(
                format!("server.trusted_proxies[{i}]"),
                format!("`{text}` is not an IP address or a CIDR block like 10.0.0.0/8"),
            )
        })?;
        networks.push(net);
    }
    Ok(TrustedProxies { networks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_and_nothing_else() {
        let proxies = trusted_proxies(Some(vec![
            "10.1.2.3/8".into(),
            "192.168.0.7".into(),
            "fd00::/8".into(),
            "0.0.0.0/0".into(),
        ]))
        .unwrap();
        assert!(proxies.contains(ip("10.200.0.1")));
        assert!(proxies.contains(ip("192.168.0.7")));
        assert!(proxies.contains(ip("fd12::1")));
        assert!(!proxies.contains(ip("fe80::1")));
        // 0.0.0.0/0 is every IPv4 address, and IPv4-mapped IPv6 is IPv4.
        assert!(proxies.contains(ip("203.0.113.9")));
        assert!(proxies.contains(ip("::ffff:203.0.113.9")));
        let one = trusted_proxies(Some(vec!["127.0.0.1/32".into()])).unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(trusted_proxies(None).unwrap().is_empty());
    }

    #[test]
    fn a_bad_entry_names_its_index() {
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            let error = trusted_proxies(Some(vec!["::1".into(), bad.into()]))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("server.trusted_proxies[1]:"), "{error}");
        }
    }
}
