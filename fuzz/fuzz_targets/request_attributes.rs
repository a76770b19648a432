//! `attributes::parse` (the API server's `RequestInfo`) on what the router hands it.
//!
//! Input: `METHOD\nTARGET` (`TARGET` alone means `GET`). The target is parsed as the
//! listener parses it (`http::Uri`) and routed under the API prefixes `/` and `/custom/`;
//! an API route's decoded path and raw query are parsed into attributes. Properties:
//! - no panic;
//! - the attributes are consistent: a resource request has the prefix `api` or `apis`
//!   (with a group only for `apis`) and a verb from the API server's list or `""` (or,
//!   where Go's parser gives up, the lower-case method and no resource); a
//!   non-resource one has no group, resource or name and the lower-case method as verb;
//! - the decision is stable under percent-encoding that routing already normalises:
//!   the same request with letters, digits, `-`, `_` and `~` of its path below the API
//!   prefix and of its query escaped (`%61` for `a`; which ones is chosen by the input)
//!   routes to the same decoded path and gives the same attributes.
#![no_main]

use http::{Method, Uri};
use kube_ambassador::access::attributes::{Attributes, parse};
use kube_ambassador::proxy::router::{ApiPrefix, Route};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static PREFIXES: LazyLock<Vec<ApiPrefix>> =
    LazyLock::new(|| vec![ApiPrefix::new("/"), ApiPrefix::new("/custom/")]);

const VERBS: [&str; 11] = [
    "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
    "proxy", "", "",
];

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (b"GET", data),
    }
}

/// Escapes each unreserved, non-dot byte whose position's bit in `seed` is set (never
/// the two characters after a `%`: they belong to an escape already there).
fn escape_some(s: &str, seed: u64) -> String {
    let mut out = Vec::with_capacity(s.len() * 3);
    let mut in_escape = 0;
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~';
        if in_escape > 0 {
            in_escape -= 1;
            out.push(b);
        } else if b == b'%' {
            in_escape = 2;
            out.push(b);
        } else if plain && (seed >> (i % 64)) & 1 == 1 {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).expect("only ASCII was added to a str")
}

fn check(a: &Attributes<'_>, method: &Method) {
    if a.resource_request {
        assert!(
            a.api_prefix == "api" || a.api_prefix == "apis",
            "{a:?}: prefix"
        );
        assert!(a.api_prefix == "apis" || a.group.is_empty(), "{a:?}: group");
        // Or, where Go's parser gives up (a special verb with nothing after it), the
        // lower-case method it started from, with no resource read.
        let gave_up = a.resource.is_empty() && a.verb == method.as_str().to_ascii_lowercase();
        assert!(VERBS.contains(&&*a.verb) || gave_up, "{a:?}: verb");
    } else {
        assert!(a.group.is_empty() && a.resource.is_empty() && a.name.is_empty(), "{a:?}");
        assert_eq!(a.verb, method.as_str().to_ascii_lowercase(), "{a:?}: verb");
    }
}

fuzz_target!(|data: &[u8]| {
    let (method, target) = split(data);
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let seed = data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    for prefix in PREFIXES.iter() {
        let Route::Api { decoded, .. } = prefix.route(uri.path(), uri.query()) else {
            continue;
        };
        let a = parse(method.as_str(), &decoded, uri.query());
        check(&a, &method);

        // Below the API prefix only: the prefix is matched as written (kubectl's mux).
        let (head, tail) = uri.path().split_at(
            prefix
                .as_str()
                .len()
                .saturating_sub(1)
                .min(uri.path().len()),
        );
        let path = format!("{head}{}", escape_some(tail, seed));
        let query = uri.query().map(|q| escape_some(q, seed.rotate_left(17)));
        let again = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let Ok(uri2) = Uri::try_from(again.as_str()) else {
            panic!("escaping made {again:?} unparsable");
        };
        let Route::Api { decoded: decoded2, .. } = prefix.route(uri2.path(), uri2.query()) else {
            panic!("{again:?} routes elsewhere than {:?}", uri.path());
        };
        assert_eq!(decoded, decoded2, "{again:?}");
        let b = parse(method.as_str(), &decoded2, uri2.query());
        assert_eq!(a, b, "{} {uri} vs {again}", method);
    }
});
