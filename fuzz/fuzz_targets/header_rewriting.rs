//! `strip_hop_by_hop` then `append_forwarded_for` (the order the proxy uses) on
//! arbitrary header lists.
//!
//! Input: lines (`\n`, a trailing `\r` dropped). The first line is the client's address
//! if it parses as one (else the client is 192.0.2.7 and the line is a header); every
//! other line is `name: value`, split at the first `:`, the value trimmed of spaces and
//! tabs as an HTTP parser does. A name or value `http` refuses is skipped.
//!
//! Properties: no panic (`is_upgrade` included); afterwards no hop-by-hop header remains:
//! neither the fixed list nor any header named by a token of any `Connection` header of
//! the input (tokens taken from the raw bytes, as Go's reverse proxy does: a value with a
//! non-ASCII byte still names its other tokens); `te` is absent or exactly `trailers`,
//! and present only if the client offered `trailers` (and did not name `te` in
//! `Connection`); every other header keeps all its values, in order (the order between
//! *different* names is not significant, RFC 9110 §5.3, and `HeaderMap` does not keep
//! it); nothing else appears; `X-Forwarded-For` is then one value, the prior values that
//! survived joined with `, ` and ending with the client's canonical address.
//!
//! Trailers: a line `--trailers--` ends the header section; the lines after it are a
//! trailer section (a chunked body's, or an HTTP/2 trailing HEADERS frame), given to
//! `strip_trailers`. Properties: no panic; what is left is a field section the h2 crate
//! sends (its `check_headers`: no `connection`, `transfer-encoding`, `upgrade`,
//! `keep-alive` or `proxy-connection`, and `te` only as `trailers`; else the whole
//! trailer block is refused and the stream left without an end); and every field that is
//! not hop-by-hop (by the same rules as headers) keeps all its values, in order.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use kube_ambassador::proxy::headers::{
    append_forwarded_for, is_upgrade, strip_hop_by_hop, strip_trailers,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

const FIXED: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Splits the input at its `--trailers--` line, if any: (headers, trailers).
fn sections(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    const MARK: &[u8] = b"\n--trailers--";
    match data.windows(MARK.len()).position(|w| w == MARK) {
        Some(i) => (&data[..i], Some(&data[i + MARK.len()..])),
        None => (data, None),
    }
}

fn fields<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<(HeaderName, HeaderValue)> {
    lines
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(trim_ows(&line[colon + 1..])).ok()?;
            Some((name, value))
        })
        .collect()
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// `strip_trailers` leaves a section h2 sends, and every end-to-end field as it was.
fn check_trailers(input: &[(HeaderName, HeaderValue)]) {
    let mut t = HeaderMap::new();
    for (name, value) in input {
        t.append(name, value.clone());
    }
    strip_trailers(&mut t);
    // h2 0.4 `proto::streams::send::Send::check_headers`, the rule it refuses trailers by.
    for name in [
        "connection",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(
            !t.contains_key(name),
            "trailer {name} kept: {input:?} → {t:?}"
        );
    }
    if let Some(te) = t.get(http::header::TE) {
        assert_eq!(te, "trailers", "trailer te kept: {input:?} → {t:?}");
    }
    let named: HashSet<HeaderName> = input
        .iter()
        .filter(|(n, _)| n == http::header::CONNECTION)
        .flat_map(|(_, v)| tokens(v))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for (name, _) in input {
        if FIXED.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        let want: Vec<&[u8]> = input
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
            .collect();
        assert_eq!(
            values(&t, name),
            want,
            "trailer {name} changed: {input:?} → {t:?}"
        );
    }
}

fn parse(data: &[u8]) -> (IpAddr, Vec<(HeaderName, HeaderValue)>) {
    let mut lines = lines(data).peekable();
    let client = lines
        .peek()
        .and_then(|l| std::str::from_utf8(l).ok()?.parse::<IpAddr>().ok());
    if client.is_some() {
        lines.next();
    }
    let headers = fields(lines);
    (
        client.unwrap_or(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        headers,
    )
}

fn values<'a>(h: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

fuzz_target!(|data: &[u8]| {
    let (data, trailers) = sections(data);
    if let Some(trailers) = trailers {
        check_trailers(&fields(lines(trailers)));
    }
    let (client, input) = parse(data);
    let mut h = HeaderMap::new();
    for (name, value) in &input {
        h.append(name, value.clone());
    }
    let _ = is_upgrade(&h);

    let named: HashSet<HeaderName> = input
        .iter()
        .filter(|(n, _)| n == http::header::CONNECTION)
        .flat_map(|(_, v)| tokens(v))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    let offered_trailers = !named.contains(&http::header::TE)
        && input
            .iter()
            .filter(|(n, _)| n == http::header::TE)
            .flat_map(|(_, v)| tokens(v))
            .any(|t| {
                let param = t.split(|&b| b == b';').next().unwrap_or_default();
                trim_ows(param).eq_ignore_ascii_case(b"trailers")
            });
    let hop = |n: &HeaderName| FIXED.contains(&n.as_str()) || named.contains(n);

    strip_hop_by_hop(&mut h);

    for name in FIXED.iter().filter(|&&n| n != "te") {
        assert!(!h.contains_key(*name), "{name} kept: {input:?} → {h:?}");
    }
    for name in &named {
        if name != http::header::TE {
            assert!(
                !h.contains_key(name),
                "{name} (in Connection) kept: {input:?} → {h:?}"
            );
        }
    }
    let te = values(&h, &http::header::TE);
    assert!(
        te.is_empty() || te == [b"trailers"],
        "te is {te:?}: {input:?}"
    );
    assert_eq!(
        !te.is_empty(),
        offered_trailers,
        "te: trailers kept or dropped wrongly: {input:?} → {h:?}"
    );

    let mut end_to_end: Vec<&HeaderName> = Vec::new();
    for (name, _) in &input {
        if !hop(name) && !end_to_end.contains(&name) {
            end_to_end.push(name);
        }
    }
    for name in &end_to_end {
        let want: Vec<&[u8]> = input
            .iter()
            .filter(|(n, _)| n == *name)
            .map(|(_, v)| v.as_bytes())
            .collect();
        assert_eq!(values(&h, name), want, "{name} changed: {input:?} → {h:?}");
    }
    let kept = h.keys_len() - usize::from(!te.is_empty());
    assert_eq!(
        kept,
        end_to_end.len(),
        "headers appeared: {input:?} → {h:?}"
    );

    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<Vec<u8>> = values(&h, &xff).into_iter().map(<[u8]>::to_vec).collect();
    let before = h.clone();
    append_forwarded_for(&mut h, client);
    let ip = client.to_canonical().to_string();
    let mut want = prior.join(&b", "[..]);
    if !prior.is_empty() {
        want.extend_from_slice(b", ");
    }
    want.extend_from_slice(ip.as_bytes());
    assert_eq!(
        values(&h, &xff),
        [&want[..]],
        "X-Forwarded-For for {client}: {input:?}"
    );
    assert!(want.ends_with(ip.as_bytes()));
    for (name, _) in before.iter().filter(|(n, _)| **n != xff) {
        assert_eq!(
            values(&h, name),
            values(&before, name),
            "{name} touched by XFF"
        );
    }
    assert_eq!(
        h.keys_len(),
        before.keys_len() + usize::from(prior.is_empty())
    );
});
