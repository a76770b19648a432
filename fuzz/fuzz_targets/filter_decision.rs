//! The whole filter decision, as the proxy makes it, against what the API server then
//! sees.
//!
//! Input: `METHOD\nHOST\nTARGET` (`TARGET` alone means `GET`, `Host: localhost`;
//! `METHOD\nTARGET` means `Host: localhost`). The target is parsed as the listener
//! parses it (`http::Uri`: origin-form, or absolute-form whose authority replaces
//! `Host`); an invalid method, target or Host is a 400 and ends the case, as do CONNECT
//! and `*`. Then, for every API prefix, every filter and every server base path:
//! route → decoded path → `Filter::accepts` (the decision), and the path and query the
//! upstream is sent (`proxy::upstream_path_and_query`, what `upstream_uri` uses).
//!
//! Property (always): no panic, and the filter judging the path *as the API server sees
//! it* reaches the same decision. ASSUMPTION: the API server (Go's `net/http` +
//! kube-apiserver's handler chain) percent-decodes the path (`url.URL.Path`) and does
//! NOT clean dot segments or empty segments; the part below the server's base path (with
//! `--append-server-path`) is what the filter rules are written against. The query is
//! forwarded unchanged.
//!
//! Property (`--features strict-upstream`): the same, for an upstream that also cleans
//! the *decoded* path (`/./`, `/../`, `//`; `clean_path`, so a trailing slash is kept),
//! as nginx normalises a URI after decoding it and Go's `ServeMux` before Go 1.22 cleaned
//! `URL.Path`: a gateway or mux between the proxy and the API server. Only bypasses fail it (accepted
//! here, rejected on the cleaned path, or a `..` that climbs out of the base path);
//! refusing something the cleaned path would allow is safe. This variant FINDS BYPASSES
//! (see README.md): it is kept behind a feature so the default target keeps exploring.
#![no_main]

use http::{Method, Uri};
use kube_ambassador::proxy::filter::{DEFAULT_REJECT_PATHS, Filter, FilterSpec};
use kube_ambassador::proxy::upstream_path_and_query;
use kube_ambassador::proxy::router::{ApiPrefix, Route, percent_decode};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static PREFIXES: LazyLock<Vec<ApiPrefix>> = LazyLock::new(|| {
    vec![
        ApiPrefix::new("/"),
        ApiPrefix::new("/api/"),
        ApiPrefix::new("/custom/"),
        ApiPrefix::new("/").with_www("/static/").unwrap(),
    ]
});

/// kubectl's defaults and a few rule sets people write.
static FILTERS: LazyLock<Vec<(&'static str, Filter)>> = LazyLock::new(|| {
    let specs: [(&str, FilterSpec<'static>); 4] = [
        ("kubectl defaults", FilterSpec::default()),
        (
            "read-only",
            FilterSpec {
                reject_methods: "^POST$,^PUT$,^PATCH$,^DELETE$",
                ..FilterSpec::default()
            },
        ),
        (
            "one namespace",
            FilterSpec {
                accept_paths: "^/api/v1/namespaces/default/,^/apis/apps/v1/namespaces/default/",
                accept_hosts: ".*",
                reject_paths: DEFAULT_REJECT_PATHS,
                ..FilterSpec::default()
            },
        ),
        (
            "anchored rejects",
            FilterSpec {
                accept_paths: "^/api/,^/apis/",
                reject_paths: "/exec$,/attach$,/portforward$,/proxy(/|$),^/api/v1/namespaces/[^/]+/secrets",
                ..FilterSpec::default()
            },
        ),
    ];
    specs
        .into_iter()
        .map(|(name, spec)| (name, Filter::new(&spec).unwrap()))
        .collect()
});

/// `""` is the default (no `--append-server-path`); the other is a Rancher-style base.
const BASES: [&str; 2] = ["", "/k8s/clusters/c-1"];

/// Go's `httpguts.ValidHostHeader`, which the proxy applies before anything else.
fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b)
}

fn parse(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let a = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => (b"GET", b"localhost", a),
        (Some(b), None) => (a, b"localhost", b),
        (Some(b), Some(c)) => (a, b, c),
    }
}

fuzz_target!(|data: &[u8]| {
    let (method, host, target) = parse(data);
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    if !host.iter().all(|&b| valid_host_byte(b)) {
        return;
    }
    if method == Method::CONNECT || uri.path() == "*" {
        return;
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => std::str::from_utf8(host).expect("checked bytes are ASCII"),
    };
    let query = uri.query();
    for prefix in PREFIXES.iter() {
        let Route::Api { raw_path, decoded } = prefix.route(uri.path(), query) else {
            continue;
        };
        for (name, filter) in FILTERS.iter() {
            let decision = filter.accepts(method.as_str(), &decoded, host);
            for base in BASES {
                let Some(pq) = upstream_path_and_query(base, raw_path, query) else {
                    // A 400: nothing reaches the API server.
                    continue;
                };
                let ctx = || {
                    format!(
                        "filter {name:?}, prefix {:?}, base {base:?}: {method} {:?} host {host:?} \
                         → decoded {decoded:?} (accepted: {decision}) → upstream {:?}",
                        prefix.as_str(),
                        uri.path(),
                        pq.as_str()
                    )
                };
                assert_eq!(pq.query(), query, "query changed; {}", ctx());
                // As the API server decodes it: escapes we kept are valid ones.
                let seen = percent_decode(pq.path())
                    .unwrap_or_else(|| panic!("upstream path does not decode; {}", ctx()));
                let below = seen
                    .strip_prefix(base)
                    .unwrap_or_else(|| panic!("base path lost; {}", ctx()));
                assert_eq!(
                    filter.accepts(method.as_str(), below, host),
                    decision,
                    "the API server sees another path than the filter judged; {}",
                    ctx()
                );
                #[cfg(feature = "strict-upstream")]
                if decision {
                    use kube_ambassador::proxy::router::clean_path;
                    let cleaned = clean_path(&seen);
                    let below = if base.is_empty() {
                        Some(&*cleaned)
                    } else {
                        cleaned
                            .strip_prefix(base)
                            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    };
                    let Some(below) = below else {
                        panic!(
                            "BYPASS (cleaning upstream): climbs out of the base path to {cleaned:?}; {}",
                            ctx()
                        );
                    };
                    // The empty remainder is the base itself: the API root.
                    let below = if below.is_empty() { "/" } else { below };
                    assert!(
                        filter.accepts(method.as_str(), below, host),
                        "BYPASS (cleaning upstream): accepted, but the cleaned path {below:?} \
                         is rejected; {}",
                        ctx()
                    );
                }
            }
        }
    }
});
