//! The responses the proxy makes itself: Kubernetes `Status` JSON for its failures, and
//! kubectl's exact plain-text answers where scripts may depend on them (403, 404, 301).
//!
//! kubectl proxy answers its own failures with `500 text/plain` and a Go error string;
//! clients such as client-go and kubectl understand a `metav1.Status` object far better
//! (they print its message and act on its reason and code), so every error the proxy
//! originates is one of these.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde::Serialize;

use crate::proxy::body::ProxyBody;

/// The `reason` field values we use (a subset of apimachinery's `StatusReason`,
/// k8s.io/apimachinery/pkg/apis/meta/v1/types.go), each with the code a client expects
/// beside it: the ones client-go's `NewGenericServerResponse`
/// (k8s.io/apimachinery/pkg/api/errors) derives from a bare status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// 503: nothing to answer with now, try again (connection refused, no credential,
    /// too many connections).
    ServiceUnavailable,
    /// 504: the upstream did not answer in time.
    Timeout,
    /// 400: the request itself is malformed.
    BadRequest,
    /// 500, and 502: `StatusReason` has no reason of its own for a bad gateway, and
    /// client-go maps every 5xx without one (502 included) to `InternalError`.
    InternalError,
    /// Refused by `--policy` (403).
    Forbidden,
    /// Over the `--qps`/`--burst` budget (429).
    TooManyRequests,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Timeout => "Timeout",
            Reason::BadRequest => "BadRequest",
            Reason::InternalError => "InternalError",
            Reason::Forbidden => "Forbidden",
            Reason::TooManyRequests => "TooManyRequests",
        }
    }
}

/// Renders a `Status` object as JSON.
pub(crate) fn body(code: StatusCode, reason: Reason, message: &str) -> String {
    body_with_details(code, reason, message, None)
}

/// A Status's `details` (apimachinery's `StatusDetails`): the fields we fill, each left
/// out when empty (`omitempty`), in the order the API server writes them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Details<'a> {
    pub name: &'a str,
    pub group: &'a str,
    /// The resource for a Forbidden error (`NewForbidden` puts it there).
    pub kind: &'a str,
    pub retry_after_seconds: Option<u64>,
}

/// apimachinery's `metav1.Status` as the API server writes it, fields in its order and
/// `details`' fields left out when empty (`omitempty`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: Metadata,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<DetailsJson<'a>>,
    code: u16,
}

#[derive(Serialize)]
struct Metadata {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailsJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    group: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

/// Renders a `Status` object with `details` as JSON, with a newline after it as Go's
/// `json.Encoder` writes.
pub(crate) fn body_with_details(
    code: StatusCode,
    reason: Reason,
    message: &str,
    details: Option<&Details<'_>>,
) -> String {
    let status = StatusJson {
        kind: "Status",
        api_version: "v1",
        metadata: Metadata {},
        status: "Failure",
        message,
        reason: reason.as_str(),
        details: details.map(|d| DetailsJson {
            name: d.name,
            group: d.group,
            kind: d.kind,
            retry_after_seconds: d.retry_after_seconds,
        }),
        code: code.as_u16(),
    };
    // Serialising borrowed strings and numbers cannot fail.
    let mut out = serde_json::to_string(&status).unwrap_or_default();
    out.push('\n');
    out
}

/// Builds a response carrying a `Status` body with `details`.
pub(crate) fn response_with_details<B: From<Bytes>>(
    code: StatusCode,
    reason: Reason,
    message: &str,
    details: &Details<'_>,
) -> Response<B> {
    let mut resp = response(code, reason, message);
    *resp.body_mut() = B::from(Bytes::from(body_with_details(
        code,
        reason,
        message,
        Some(details),
    )));
    resp
}

/// Builds a complete response carrying a `Status` body.
pub(crate) fn response<B: From<Bytes>>(
    code: StatusCode,
    reason: Reason,
    message: &str,
) -> Response<B> {
    let mut resp = Response::new(B::from(Bytes::from(body(code, reason, message))));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// A plain-text response as Go's `http.Error` writes it (kubectl's 403 and 404).
pub(crate) fn text<B: From<Bytes>>(code: StatusCode, body: impl Into<Bytes>) -> Response<B> {
    let mut resp = Response::new(B::from(body.into()));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// kubectl's answer to a filtered request.
pub(crate) fn forbidden<B: From<Bytes>>() -> Response<B> {
    text(StatusCode::FORBIDDEN, "Forbidden\n")
}

/// kubectl's answer outside the API prefix (Go's `http.NotFound`).
pub(crate) fn not_found<B: From<Bytes>>() -> Response<B> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Go's `http.Redirect` with 301, as `ServeMux` sends it for an unclean path: an HTML
/// body for GET, a content type for GET and HEAD, nothing more for other methods.
pub(crate) fn moved_permanently<B: From<Bytes>>(
    method: &http::Method,
    location: &str,
) -> Response<B> {
    let body = if method == http::Method::GET {
        let mut b = String::with_capacity(location.len() + 40);
        b.push_str("<a href=\"");
        html_escape_into(location, &mut b);
        b.push_str("\">Moved Permanently</a>.\n\n");
        Bytes::from(b)
    } else {
        Bytes::new()
    };
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    if method == http::Method::GET || method == http::Method::HEAD {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    resp
}

/// A discovery request from kubectl (client-go's aggregated discovery, 1.26+): `GET /api`
/// or `/apis` asking for `application/json;g=apidiscovery.k8s.io;...`
/// (k8s.io/client-go/discovery `AcceptV2`, `AcceptV2Beta1`). `path` is the decoded path
/// below the API prefix.
pub(crate) fn is_discovery(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    method == Method::GET
        && matches!(path.trim_end_matches('/'), "/api" | "/apis")
        && headers.get_all(header::ACCEPT).iter().any(|v| {
            v.to_str()
                .is_ok_and(|a| a.contains("g=apidiscovery.k8s.io"))
        })
}

/// Our own failure `Status` (a 5xx), rewritten for a discovery request as `502
/// text/plain` with the same message, as `kubectl proxy` answers (500 text/plain, its
/// `responder.Error`).
///
/// Why: the discovery client reads the body with `Result.Raw()`, which never decodes a
/// `Status`; the error is client-go's `newUnstructuredResponseError`
/// (k8s.io/client-go/rest/request.go), which keeps the body's text only when the
/// content type is `text/*`, and `NewGenericServerResponse` then drops even that for a
/// 503 ("the server is currently unable to handle the request") and a 504. For a 502 it
/// keeps it: kubectl prints `an error on the server ("<our message>") has prevented the
/// request from succeeding`. Typed clients never send this Accept, and keep the Status.
/// API server answers pass through untouched: only a body the proxy made is rewritten.
pub(crate) fn for_discovery(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let ours = resp.status().is_server_error()
        && resp.headers().get(header::CONTENT_TYPE)
            == Some(&HeaderValue::from_static("application/json"))
        && matches!(resp.body(), ProxyBody::Full(_));
    if !ours {
        return resp;
    }
    let (_, body) = resp.into_parts();
    let bytes = match body {
        ProxyBody::Full(Some(bytes)) => bytes,
        _ => Bytes::new(),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    text(StatusCode::BAD_GATEWAY, format!("{message}\n"))
}

/// Go's `html.EscapeString` (its five characters, its entities), for the links in the
/// redirect and listing bodies Go writes. Hand-written: no crate in the tree escapes
/// with Go's exact entities, and five `match` arms are less than a dependency.
pub(crate) fn html_escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_requests_are_kubectls_aggregated_discovery() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                 application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                 application/json",
            ),
        );
        assert!(is_discovery(&Method::GET, "/api", &h));
        assert!(is_discovery(&Method::GET, "/apis/", &h));
        assert!(!is_discovery(&Method::GET, "/api/v1", &h));
        assert!(!is_discovery(&Method::POST, "/apis", &h));
        let typed = HeaderMap::new();
        assert!(!is_discovery(&Method::GET, "/api", &typed));
    }

    #[test]
    fn status_is_kubernetes_shaped_json() {
        let b = body(
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            "error trying to reach \"x\"\n\u{1}",
        );
        assert_eq!(
            b,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"error trying to reach \\\"x\\\"\\n\\u0001\",\
             \"reason\":\"InternalError\",\"code\":502}\n"
        );
        let d = Details {
            name: "web",
            group: "apps",
            kind: "deployments",
            retry_after_seconds: None,
        };
        let b = body_with_details(StatusCode::FORBIDDEN, Reason::Forbidden, "no", Some(&d));
        assert!(
            b.ends_with(
                "\"reason\":\"Forbidden\",\"details\":{\"name\":\"web\",\"group\":\"apps\",\
                 \"kind\":\"deployments\"},\"code\":403}\n"
            ),
            "{b}"
        );
        let d = Details {
            retry_after_seconds: Some(2),
            ..Details::default()
        };
        let b = body_with_details(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::TooManyRequests,
            "x",
            Some(&d),
        );
        assert!(
            b.contains("\"details\":{\"retryAfterSeconds\":2},\"code\":429}"),
            "{b}"
        );
    }
}
