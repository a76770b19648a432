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
    truthy("watch")
        || truthy("follow")
        || path.split('/').nth(3) == Some("watch")
        || path.split('/').nth(4) == Some("watch")
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
