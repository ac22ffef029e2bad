//! Request and response header rewriting: hop-by-hop removal (RFC 9110 §7.6.1), the forwarding
//! headers, and the correlation id.

use std::net::SocketAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header carrying the correlation id across the platform.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The incoming correlation id when it is a sane token (visible ASCII, at most 128 bytes),
/// else a fresh random UUID.
pub fn correlation_id_of(headers: &HeaderMap) -> HeaderValue {
    let incoming = headers.get(&CORRELATION_ID).map(|v| v.as_bytes().trim_ascii());
    match incoming {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic) => {
            HeaderValue::from_bytes(id).expect("visible ASCII is a valid header value")
        }
        _ => fresh_correlation_id(),
    }
}

/// A random (version 4) UUID from a per-thread generator seeded once from the OS: a correlation
/// id must be unique, not unpredictable, and asking the OS for randomness on every request
/// (`Uuid::new_v4`) is a system call per request.
fn fresh_correlation_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    // splitmix64: two outputs make the 128 random bits.
    let next = |state: &Cell<u64>| {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (hi, lo) = STATE.with(|state| (next(state), next(state)));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_le_bytes());
    bytes[8..].copy_from_slice(&lo.to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(uuid.hyphenated().encode_lower(&mut text).as_bytes())
        .expect("a UUID is a valid header value")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and adds the forwarding headers. `X-Real-IP`
/// and `X-Forwarded-Proto` set by a proxy in front (nginx on loopback) are trusted and kept;
/// from any other peer they are replaced, so a client cannot spoof its address.
pub fn prepare_request_headers(headers: &mut HeaderMap, peer: Option<SocketAddr>, correlation_id: &HeaderValue) {
    strip_hop_by_hop(headers);
    let trusted_front = peer.is_some_and(|p| p.ip().is_loopback());
    if let Some(peer) = peer {
        let ip = ip_header_value(peer.ip());
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.trim().is_empty() => {
                HeaderValue::from_str(&format!("{existing}, {}", peer.ip())).ok()
            }
            _ => Some(ip.clone()),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if !(trusted_front && headers.contains_key(&X_REAL_IP)) {
            headers.insert(X_REAL_IP.clone(), ip);
        }
    }
    if !(trusted_front && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    // The upstream sees its own authority in Host (set by the client from the URI); the name the
    // client used travels in X-Forwarded-Host.
    if let Some(host) = headers.remove(header::HOST) {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    headers.insert(CORRELATION_ID.clone(), correlation_id.clone());
}

/// An IP address as a header value; loopback (nginx in front, every local client) is a constant.
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    static V4_LOOPBACK: HeaderValue = HeaderValue::from_static("127.0.0.1");
    if ip == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        return V4_LOOPBACK.clone();
    }
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// Drops `Connection` and every header it names, plus the fixed hop-by-hop set and `Proxy-*`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (a handful) is cheaper than
    // a hashed removal of every hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [&KEEP_ALIVE, &header::TE, &header::TRAILER, &header::TRANSFER_ENCODING, &header::UPGRADE] {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy_headers: Vec<HeaderName> =
            headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
}

/// Whether `name` is hop-by-hop by itself (the names a `Connection` header lists are not
/// known until it is read; it is hop-by-hop itself, so it counts).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str().starts_with("proxy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["authorization", "content-type"]);
    }

    #[test]
    fn forwarding_headers_append_the_peer_and_keep_a_trusted_fronts_real_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-real-ip", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(header::HOST, HeaderValue::from_static("localhost"));
        prepare_request_headers(&mut h, Some("127.0.0.1:5555".parse().unwrap()), &HeaderValue::from_static("cid-1"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost");
        assert_eq!(h["x-correlation-id"], "cid-1");
        assert!(h.get(header::HOST).is_none());
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address_or_scheme() {
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare_request_headers(&mut h, Some("198.51.100.7:4000".parse().unwrap()), &HeaderValue::from_static("c"));
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    }

    #[test]
    fn a_malformed_correlation_id_is_replaced_by_a_uuid() {
        let mut h = HeaderMap::new();
        h.insert("x-correlation-id", HeaderValue::from_static("abc-123"));
        assert_eq!(correlation_id_of(&h), "abc-123");
        h.insert("x-correlation-id", HeaderValue::from_static("has space"));
        let fresh = correlation_id_of(&h);
        let uuid = uuid::Uuid::parse_str(fresh.to_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(correlation_id_of(&h), fresh, "two fresh ids must differ");
    }
}
