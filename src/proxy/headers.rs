//! Header rewriting between client and API server: hop-by-hop removal (in headers and
//! in trailers) and `X-Forwarded-For`.
//!
//! Hop-by-hop headers describe one connection and must not be forwarded (RFC 9110
//! §7.6.1): the fixed list below (the one Go's `httputil.ReverseProxy`, and so kubectl,
//! removes) plus every header the `Connection` header names. `TE: trailers` is the one
//! exception: it says the *client* accepts trailers, and the API server may use them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are always connection-specific.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True if any `Connection` header lists the `upgrade` token (any case).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    list_tokens(headers, &header::CONNECTION)
}

/// The comma-separated tokens of every value of `name`, trimmed, from the raw bytes: a
/// value with a non-ASCII byte (obs-text) still names its other tokens, as in Go.
fn list_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers; keeps `TE: trailers` if the client offered it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none of them: one look at each name present
    // costs less than the nine lookups below (`bench/cost.sh`), and a header named by
    // `Connection` is only removed when there is a `Connection`, which is in the list.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Names listed in Connection first, while Connection is still there.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let trailers = list_tokens(headers, &header::TE).any(|t| {
        t.split(|&b| b == b';')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes connection-specific fields from trailers (a chunked HTTP/1.1 body's trailer
/// section, or an HTTP/2 trailing HEADERS frame), in both directions.
///
/// RFC 9113 §8.2.2 forbids `Connection`, `Proxy-Connection`, `Keep-Alive`,
/// `Transfer-Encoding`, `Upgrade` and a `TE` other than `trailers` in any HTTP/2 field
/// section, trailers included, and the h2 crate refuses to send such trailers
/// (`UserError::MalformedHeaders`); hyper's body pipe then only logs it, and the
/// stream is left without an end. Go never sends them: x/net/http2's `encodeHeaders`
/// (`httpcommon.EncodeHeaders`) skips exactly those names, and its server's
/// `encodeHeaders` (write.go), which writes trailers too, skips a `transfer-encoding`.
/// HTTP/1.1 trailers have no business carrying them either (RFC 9110 §6.5.1: no field
/// that controls the connection or the framing), so the rule is the same both ways: the
/// header table above, and the names a trailer `Connection` lists, go.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
}

/// Appends the client's address to `X-Forwarded-For`, folding earlier values into one
/// header as Go's reverse proxy does (`prior, client`).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    append_forwarded(headers, &forwarded_for(client));
}

/// A client's address as `X-Forwarded-For` carries it (an IPv4-mapped IPv6 address as
/// IPv4, as Go's `net.IP.String` writes it). The server formats it once per connection.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    let ip = client.to_canonical().to_string();
    // An address's text is ASCII digits, dots, colons and hex: always a valid value.
    HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`append_forwarded_for`] with the address already formatted ([`forwarded_for`]).
pub fn append_forwarded(headers: &mut HeaderMap, client: &HeaderValue) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let mut prior: Vec<&[u8]> = headers.get_all(&XFF).iter().map(|v| v.as_bytes()).collect();
    if prior.is_empty() {
        headers.insert(XFF, client.clone());
        return;
    }
    prior.push(client.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&prior.join(&b", "[..])) {
        headers.insert(XFF, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip, trailers;q=1"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "application/json"),
            ("authorization", "Bearer mine"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "authorization", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    /// Found by `fuzz/` (header_rewriting): a value with a non-ASCII byte (obs-text, which
    /// hyper accepts) still names its other tokens, as in Go's reverse proxy.
    #[test]
    fn tokens_are_read_from_values_with_non_ascii_bytes() {
        let mut h = HeaderMap::new();
        let raw = |b: &[u8]| HeaderValue::from_bytes(b).unwrap();
        h.append(header::CONNECTION, raw(b"X-Secret-Hop, \xff"));
        h.append("x-secret-hop", raw(b"1"));
        h.append(header::TE, raw(b"trailers, \xfe"));
        h.append(header::ACCEPT, raw(b"*/*"));
        assert!(is_upgrade(&{
            let mut u = HeaderMap::new();
            u.append(header::CONNECTION, raw(b"Upgrade, caf\xc3\xa9"));
            u
        }));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    /// The fields HTTP/2 forbids in any field section never stay in trailers (the h2 crate
    /// refuses the whole trailer block if one is there); the others stay.
    #[test]
    fn connection_specific_trailers_go() {
        let mut t = map(&[
            ("transfer-encoding", "chunked"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
        ]);
        strip_trailers(&mut t);
        let mut names: Vec<_> = t.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["grpc-status", "x-checksum"]);
        // `TE: trailers` is the one value HTTP/2 allows; it may stay.
        let mut t = map(&[("te", "trailers")]);
        strip_trailers(&mut t);
        assert_eq!(t["te"], "trailers");
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_detection_is_token_based() {
        assert!(is_upgrade(&map(&[("connection", "keep-alive, Upgrade")])));
        assert!(is_upgrade(&map(&[("connection", "UPGRADE")])));
        assert!(!is_upgrade(&map(&[("connection", "upgraded")])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut h, "::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1, ::1");
    }
}
