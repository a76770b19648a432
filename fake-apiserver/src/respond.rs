//! Building responses: full bodies, JSON, text, and `metav1.Status` failures with the real
//! server's field order (clients and the proxy's tests compare them byte for byte).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::RespBody;

pub(crate) fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(crate) fn json_resp(code: u16, value: Value) -> Response<RespBody> {
    json_text_resp(code, serde_json::to_string(&value).unwrap())
}

pub(crate) fn json_text_resp(code: u16, text: String) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .unwrap()
}

pub(crate) fn text_resp(code: u16, text: &'static str) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .unwrap()
}

/// A `metav1.Status` failure body with the real server's field order.
pub fn status_json(code: u16, reason: &str, message: &str, details: Option<Value>) -> String {
    let details = details
        .map(|d| format!(r#","details":{d}"#))
        .unwrap_or_default();
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":"{reason}"{details},"code":{code}}}"#,
        serde_json::to_string(message).unwrap()
    )
}

pub(crate) fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    json_text_resp(code, status_json(code, reason, message, None))
}

pub(crate) fn unauthorized() -> Response<RespBody> {
    status(401, "Unauthorized", "Unauthorized")
}

pub(crate) fn pod_not_found(name: &str) -> Response<RespBody> {
    json_text_resp(
        404,
        status_json(
            404,
            "NotFound",
            &format!("pods \"{name}\" not found"),
            Some(json!({"name": name, "kind": "pods"})),
        ),
    )
}
