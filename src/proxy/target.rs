//! The request the API server is sent, built from the client's: its target (path and
//! query, escaped where no URI may hold a byte), the checks Go's server makes before any
//! handler (Host, userinfo), and whether it is long-running (a watch, a followed log).

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};

use crate::proxy::body::ProxyBody;
use crate::proxy::status::{self, Reason};

/// The path and query the API server is sent: `base` (the server URL's path, or `""`),
/// then `raw_path` (the escaped path below the API prefix) and `query`, byte for byte but
/// for bytes no URI may hold (see [`push_path`]). `None` if that is no valid request
/// target. Pure, so `fuzz/` checks it against the filter's decision.
pub fn upstream_path_and_query(
    base: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Option<PathAndQuery> {
    let mut pq = Vec::with_capacity(base.len() + raw_path.len() + query.map_or(0, |q| q.len() + 1));
    push_path(&mut pq, base);
    push_path(&mut pq, raw_path);
    if let Some(q) = query {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).ok()
}

/// The upstream path and query for a request whose target is `client`: the client's own
/// bytes handed on (a reference count) when they are exactly what would be built, else
/// built ([`upstream_path_and_query`]).
///
/// Never shared for a long-lived request: its target lives as long as the watch, and the
/// client's bytes are a slice of hyper's read buffer for that connection, which would
/// then stay allocated beside the next one hyper takes (1,000 watches: +3.6 MiB private,
/// `bench/watch-memory.sh`).
pub(super) fn path_and_query_for(
    client: &http::Uri,
    base: &str,
    raw_path: &str,
    long_lived: bool,
) -> Option<PathAndQuery> {
    let shared = if long_lived {
        None
    } else {
        client_path_and_query(client, base, raw_path)
    };
    shared.or_else(|| upstream_path_and_query(base, raw_path, client.query()))
}

/// The client's own path and query when it is exactly what [`upstream_path_and_query`]
/// would build from it: no base path, nothing stripped from the path, no byte to escape.
/// Handing it on saves building and validating a copy on every request.
fn client_path_and_query(client: &http::Uri, base: &str, raw_path: &str) -> Option<PathAndQuery> {
    let pq = client.path_and_query()?;
    let unchanged = base.is_empty()
        && pq.as_str().starts_with('/')
        && raw_path.len() == pq.path().len()
        && !raw_path.bytes().any(crate::proxy::router::uri_unsafe);
    unchanged.then(|| pq.clone())
}

/// Appends a path, percent-encoding the bytes RFC 3986 allows nowhere in a URI (see
/// [`crate::proxy::router::push_uri_escaped`], which the 301's Location uses too).
pub(super) fn push_path(out: &mut Vec<u8>, path: &str) {
    crate::proxy::router::push_uri_escaped(out, path);
}

/// What Go's server answers before any handler runs (so kubectl does too): a bad `Host`
/// or userinfo (400, [`host_error`]), `OPTIONS *` (200, about the server itself), and
/// CONNECT or another asterisk-form request (400: never proxied).
pub(super) fn before_handler<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    if let Some(refused) = host_error(req) {
        return Some(refused);
    }
    if req.method() == Method::OPTIONS && req.uri() == "*" {
        let mut resp = Response::new(ProxyBody::empty());
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return Some(resp);
    }
    if req.method() == Method::CONNECT || req.uri().path() == "*" {
        return Some(status::response(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            "CONNECT and asterisk-form requests are not proxied",
        ));
    }
    None
}

/// RFC 9112 §3.2, enforced as Go's server (and so kubectl) does before any handler runs:
/// an HTTP/1.1 request without `Host` (CONNECT aside), a request with more than one, or
/// one whose value has a byte no host can contain, gets a 400 and goes nowhere.
///
/// Userinfo (`user@`) in an absolute-form target or an h2c `:authority` gets the same
/// 400: Go refuses it in `Host` (`httpguts.ValidHostHeader` has no `@`), RFC 9110 §4.2.4
/// deprecates it in http URIs, and a proxy that judged `localhost:8001@evil.com` by its
/// text would see `localhost`.
pub(super) fn host_error<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some(bad_request(
            "400 Bad Request: userinfo in the request target",
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let body = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => "400 Bad Request",
        (None, _) if req.version() == Version::HTTP_11 && req.method() != Method::CONNECT => {
            "400 Bad Request: missing required Host header"
        }
        (Some(h), None) if !h.as_bytes().iter().all(|&b| valid_host_byte(b)) => {
            "400 Bad Request: malformed Host header"
        }
        _ => return None,
    };
    Some(bad_request(body))
}

/// Go's `httpguts.ValidHostHeader`, byte by byte.
pub(super) fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b)
}

/// A 400 as Go's server writes it for a request it cannot parse: plain text, and the
/// connection closed.
pub(super) fn bad_request(body: &'static str) -> Response<ProxyBody> {
    let mut resp = status::text(StatusCode::BAD_REQUEST, body);
    let h = resp.headers_mut();
    h.remove(header::X_CONTENT_TYPE_OPTIONS);
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A watch or a followed log: a response that only ends when the server or client ends it.
pub(super) fn is_watch(path: &str, query: Option<&str>) -> bool {
    let truthy = |key: &str| {
        query.is_some_and(|q| {
            q.split('&').any(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                k == key && (v == "true" || v == "1")
            })
        })
    };
    // `/api/v1/watch/…` or `/apis/GROUP/VERSION/watch/…`: the fourth or fifth segment.
    // Split as bytes: `str::split` searched for each `/` with a set-up of its own.
    let mut segments = path.as_bytes().split(|&b| b == b'/').skip(3);
    truthy("watch")
        || truthy("follow")
        || segments.next() == Some(b"watch")
        || segments.next() == Some(b"watch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_no_uri_may_hold_are_escaped_in_the_path() {
        let escaped = |p: &str| {
            let mut out = Vec::new();
            push_path(&mut out, p);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            escaped("/a%2Fb/c;d=e/[f]!'()*$&+,:@~"),
            "/a%2Fb/c;d=e/[f]!'()*$&+,:@~"
        );
        assert_eq!(
            escaped("/caf\u{e9}/a|b/{c}^\"\\"),
            "/caf%C3%A9/a%7Cb/%7Bc%7D%5E%22%5C"
        );
    }

    #[test]
    fn host_header_checks_are_gos() {
        let req = |version: Version, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri("/api");
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        let refused = |r: &Request<()>| host_error(r).map(|resp| resp.status());
        assert_eq!(refused(&req(Version::HTTP_11, &["localhost:8001"])), None);
        assert_eq!(refused(&req(Version::HTTP_11, &["[::1]:8001"])), None);
        // Empty is allowed (and the filter refuses it).
        assert_eq!(refused(&req(Version::HTTP_11, &[""])), None);
        assert_eq!(refused(&req(Version::HTTP_10, &[])), None);
        assert_eq!(refused(&req(Version::HTTP_2, &[])), None);
        let absolute = |target: &str| {
            Request::builder()
                .uri(target)
                .header(header::HOST, "localhost")
                .body(())
                .unwrap()
        };
        for target in [
            "http://localhost:8001@evil.com/version",
            "http://evil.com@localhost:8001/",
            "http://u:p@localhost/",
        ] {
            assert_eq!(
                refused(&absolute(target)),
                Some(StatusCode::BAD_REQUEST),
                "{target}"
            );
        }
        assert_eq!(refused(&absolute("http://localhost:8001/version")), None);
        for bad in [
            &[][..],
            &["a", "b"],
            &["local host"],
            &["localhost/x"],
            &["u@localhost"],
        ] {
            assert_eq!(
                refused(&req(Version::HTTP_11, bad)),
                Some(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
    }

    /// The client's target is handed on only when building one would give the same bytes.
    #[test]
    fn the_clients_target_is_reused_only_when_unchanged() {
        let built = |base: &str, target: &str, strip: usize| {
            let uri: http::Uri = target.parse().unwrap();
            let raw_path = &uri.path()[strip..];
            let reused = client_path_and_query(&uri, base, raw_path);
            let built = upstream_path_and_query(base, raw_path, uri.query());
            (
                reused.map(|p| p.as_str().to_owned()),
                built.map(|p| p.as_str().to_owned()),
            )
        };
        for target in [
            "/api/v1/namespaces/d/pods/p",
            "/api/v1/pods?watch=1&labelSelector=a%3Db",
            "/api/v1/namespaces/d/pods/a%2Fb",
            "/",
            "/api?",
            "http://localhost:8001/api/v1/pods?limit=5",
            "http://localhost:8001",
        ] {
            let (reused, built) = built("", target, 0);
            assert!(reused.is_some(), "{target}");
            assert_eq!(reused, built, "{target}");
        }
        // Escaped when built, so not reused: a byte no URI may hold (the HTTP parser lets
        // `{`, `|`, `"` through), a base path, a stripped prefix, a query without a path.
        for (base, target, strip) in [
            ("", "/api/v1/pods/{x}", 0),
            ("", "/api/v1/pods/a|b", 0),
            ("/base", "/api/v1/pods", 0),
            ("", "/proxy/api/v1/pods", 6),
            ("", "http://localhost:8001?x=1", 0),
        ] {
            let (reused, built) = built(base, target, strip);
            assert_eq!(reused, None, "{base} {target}");
            assert!(built.is_some(), "{target}");
        }
    }

    /// A short request's target shares the client's bytes; a watch's is a copy of its own.
    #[test]
    fn only_short_requests_share_the_clients_bytes() {
        let uri: http::Uri = "/api/v1/namespaces/d/pods?watch=1".parse().unwrap();
        let client = uri.path_and_query().unwrap().as_str().as_ptr();
        let short = path_and_query_for(&uri, "", uri.path(), false).unwrap();
        let watch = path_and_query_for(&uri, "", uri.path(), true).unwrap();
        assert_eq!(short.as_str(), watch.as_str());
        assert_eq!(short.as_str().as_ptr(), client);
        assert_ne!(watch.as_str().as_ptr(), client);
    }

    #[test]
    fn watch_detection() {
        assert!(is_watch("/api/v1/pods", Some("watch=true")));
        assert!(is_watch("/api/v1/pods", Some("limit=1&watch=1")));
        assert!(is_watch(
            "/api/v1/namespaces/d/pods/p/log",
            Some("follow=true")
        ));
        assert!(is_watch("/api/v1/watch/pods", None));
        assert!(is_watch("/apis/apps/v1/watch/deployments", None));
        assert!(!is_watch("/api/v1/pods", Some("watch=false")));
        assert!(!is_watch("/api/v1/pods", Some("nowatch=true")));
        assert!(!is_watch("/api/v1/pods", None));
    }
}
