//! The client's IP address behind the platform's proxies: one rule for every service and the
//! gateway, so a client cannot choose the address recorded for it.
//!
//! # The rule
//! The TCP peer is the only address nobody can forge. When the peer is a trusted proxy
//! ([`TrustedProxies`], `TRUSTED_PROXIES`, default the loopback addresses nginx and the gateway
//! use), the address it received the request from is the last `X-Forwarded-For` entry; that
//! one is believed only if it is itself trusted, and so on: the list is walked **from the
//! right**, skipping trusted proxies, and the first untrusted address is the client. Everything
//! to its left was written by the client and is never read. A request without
//! `X-Forwarded-For` from a trusted peer may name the client in `X-Real-IP` instead. When every
//! hop is trusted (a local client), the leftmost trusted hop is the client.
//!
//! nginx at the edge replaces any client `X-Forwarded-For` with `$remote_addr`, and the gateway
//! replaces it when its peer is not a trusted proxy ([`forwarded_for_from`]), so the list a
//! service receives holds only addresses the proxies wrote.

use std::{
    net::{IpAddr, SocketAddr},
    sync::OnceLock,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{request::Parts, HeaderMap},
};
use ipnet::IpNet;
use mfe_core::env::{self, EnvError};

/// The variable listing the proxies whose forwarding headers are believed.
pub const TRUSTED_PROXIES_VAR: &str = "TRUSTED_PROXIES";

/// Addresses and networks (`127.0.0.1`, `10.0.0.0/8`, `::1`) whose `X-Forwarded-For` and
/// `X-Real-IP` are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl Default for TrustedProxies {
    /// The loopback addresses: nginx and the gateway on this machine.
    fn default() -> Self {
        Self::parse(env::var(TRUSTED_PROXIES_VAR).default).expect("the default trusted proxies parse")
    }
}

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDR networks; `none` trusts no proxy.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim().eq_ignore_ascii_case("none") {
            return Ok(Self { nets: Vec::new() });
        }
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{item}` is not an IP address or CIDR network"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    /// `TRUSTED_PROXIES` from the environment (its default when unset).
    pub fn from_env() -> Result<Self, EnvError> {
        let raw = env::get(TRUSTED_PROXIES_VAR);
        Self::parse(&raw).map_err(|why| {
            EnvError::new(
                TRUSTED_PROXIES_VAR,
                &raw,
                format!("a comma-separated list of IP addresses or CIDR networks, or `none` ({why})"),
            )
        })
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The process's trusted proxies: `TRUSTED_PROXIES`, read once. Services check it at start-up
/// ([`crate::config::ServiceConfig::from_env`]), so an invalid value never gets here; should it,
/// the loopback default applies (trusting less, never more).
pub fn trusted_proxies() -> &'static TrustedProxies {
    static TRUSTED: OnceLock<TrustedProxies> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        TrustedProxies::from_env().unwrap_or_else(|e| {
            tracing::error!(error = %e, "ignoring TRUSTED_PROXIES; trusting the loopback addresses only");
            TrustedProxies::default()
        })
    })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse().ok()))
        .map(canonical)
}

/// The client's address of a request from `peer` with `headers` (see the module's rule);
/// `None` only when the peer is unknown.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted.contains(peer) {
        return Some(peer);
    }
    // The nearest trusted hop so far: the answer when every hop is trusted, or when the next one
    // to the left is not an address (a trusted proxy writes only addresses, so a client wrote it).
    // Walked without allocating: the gateway runs this for every proxied request.
    let mut nearest = peer;
    let mut any = false;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { return Some(nearest) };
        for entry in text.rsplit(',').filter(|e| !e.trim().is_empty()) {
            any = true;
            let Some(hop) = parse_hop(entry) else { return Some(nearest) };
            if !trusted.contains(hop) {
                return Some(hop);
            }
            nearest = hop;
        }
    }
    if !any {
        let real_ip = headers.get("x-real-ip").and_then(|v| v.to_str().ok()).and_then(parse_hop);
        return Some(real_ip.unwrap_or(peer));
    }
    Some(nearest)
}

/// The `X-Forwarded-For` a proxy passes on for a request from `peer`: the list it received plus
/// the peer when the peer is a trusted proxy, else the peer alone (a client's own list is
/// dropped, not extended).
pub fn forwarded_for_from(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> String {
    use std::fmt::Write;
    let peer = canonical(peer);
    let mut list = String::new();
    if trusted.contains(peer) {
        for received in headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()) {
            let received = received.trim();
            if !received.is_empty() {
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(received);
            }
        }
    }
    if !list.is_empty() {
        list.push_str(", ");
    }
    let _ = write!(list, "{peer}");
    list
}

/// The client's address of a request ([`client_ip`] with the process's [`trusted_proxies`]
/// and the peer of the connection); `None` when the server did not record the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    pub fn of(parts: &Parts) -> Self {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        ClientIp(client_ip(peer, &parts.headers, trusted_proxies()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp::of(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn loopback() -> TrustedProxies {
        TrustedProxies::parse("127.0.0.1, ::1").unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(client_ip(Some(ip("198.51.100.7")), &h, &loopback()), Some(ip("198.51.100.7")));
    }

    #[test]
    fn the_list_is_walked_from_the_right_and_the_clients_own_entries_are_never_read() {
        // The client forged 6.6.6.6; nginx appended the client's address; the gateway appended nginx.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 127.0.0.1")]);
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &h, &loopback()), Some(ip("203.0.113.9")));
        // Two header lines are one list.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9:5555")]);
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &h, &loopback()), Some(ip("203.0.113.9")));
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_trusted_hop_is_the_client() {
        let h = headers(&[("x-forwarded-for", "127.0.0.1, 127.0.0.1")]);
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &h, &loopback()), Some(ip("127.0.0.1")));
        // Garbage left of a trusted hop was written by the client: the trusted hop is the answer.
        let h = headers(&[("x-forwarded-for", "not-an-ip, ::1")]);
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &h, &loopback()), Some(ip("::1")));
    }

    #[test]
    fn x_real_ip_counts_only_from_a_trusted_peer_without_a_forwarded_list() {
        let h = headers(&[("x-real-ip", "203.0.113.9")]);
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &h, &loopback()), Some(ip("203.0.113.9")));
        assert_eq!(client_ip(Some(ip("10.1.1.1")), &h, &loopback()), Some(ip("10.1.1.1")));
        assert_eq!(client_ip(Some(ip("127.0.0.1")), &HeaderMap::new(), &loopback()), Some(ip("127.0.0.1")));
        assert_eq!(client_ip(None, &h, &loopback()), None);
    }

    #[test]
    fn networks_and_mapped_addresses_are_trusted_as_configured() {
        let trusted = TrustedProxies::parse("10.0.0.0/8,127.0.0.1").unwrap();
        assert!(trusted.contains(ip("10.200.3.4")) && trusted.contains(ip("::ffff:127.0.0.1")));
        assert!(!trusted.contains(ip("127.0.0.2")) && !trusted.contains(ip("11.0.0.1")));
        let h = headers(&[("x-forwarded-for", "192.0.2.1, 10.0.0.5")]);
        assert_eq!(client_ip(Some(ip("10.0.0.6")), &h, &trusted), Some(ip("192.0.2.1")));
        assert!(TrustedProxies::parse("none").unwrap().nets.is_empty());
        let err = TrustedProxies::parse("127.0.0.1, localhost").unwrap_err();
        assert!(err.contains("`localhost` is not an IP address"), "{err}");
        assert_eq!(TrustedProxies::default(), loopback());
    }

    #[test]
    fn a_proxy_extends_a_trusted_peers_list_and_replaces_an_untrusted_peers() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(forwarded_for_from(ip("127.0.0.1"), &h, &loopback()), "203.0.113.9, 127.0.0.1");
        assert_eq!(forwarded_for_from(ip("127.0.0.2"), &h, &loopback()), "127.0.0.2");
        assert_eq!(forwarded_for_from(ip("127.0.0.1"), &HeaderMap::new(), &loopback()), "127.0.0.1");
    }
}
