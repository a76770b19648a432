//! What went wrong on the way to the API server: the Status (code, reason, message) and
//! metric label for a failure, and whether a failed attempt may be sent again.

use http::StatusCode;

use crate::metrics::UpstreamErrorKind;
use crate::proxy::status::Reason;
use crate::upstream::h2pool::H2Error;

/// Maps a client error to a status, a Status reason, a metric label and a short cause.
pub(super) fn classify(
    err: &(dyn std::error::Error + 'static),
) -> (StatusCode, Reason, UpstreamErrorKind, String) {
    let mut cause: Option<String> = None;
    let mut io_kind = None;
    let mut tls = None;
    let mut parse = false;
    for e in chain(err) {
        // The client's body failed, not the API server: say so.
        // (`SendError` is transparent: its `source()` skips the `H2Error` it holds.)
        let h2 = match e.downcast_ref::<SendError>() {
            Some(SendError::Http2(h2)) => Some(h2),
            _ => e.downcast_ref::<H2Error>(),
        };
        if let Some(H2Error::RequestBody(cause)) = h2 {
            return (
                StatusCode::BAD_GATEWAY,
                Reason::InternalError,
                UpstreamErrorKind::Other,
                format!("the request body could not be sent: {cause}"),
            );
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls = Some(t.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            parse |= h.is_parse() || h.is_incomplete_message();
        }
        cause = Some(e.to_string());
    }
    let cause = cause.unwrap_or_else(|| err.to_string());
    if let Some(tls) = tls {
        return (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Tls,
            format!("TLS handshake failed: {tls}"),
        );
    }
    match io_kind {
        Some(std::io::ErrorKind::TimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            Reason::Timeout,
            UpstreamErrorKind::Timeout,
            format!("connection timed out ({cause})"),
        ),
        Some(std::io::ErrorKind::ConnectionRefused) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::ServiceUnavailable,
            UpstreamErrorKind::Refused,
            "connection refused".to_owned(),
        ),
        _ if parse => (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Malformed,
            format!("malformed response ({cause})"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Other,
            cause,
        ),
    }
}

/// How many times a replayable request is sent again after meeting a closed connection.
pub(super) const STALE_CONNECTION_RETRIES: usize = 3;

/// A failed attempt to get response headers from the API server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Http1(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Http2(#[from] H2Error),
}

/// The connection was established but closed or reset before a response arrived: what a
/// kept-alive HTTP/1.1 connection the server has just closed looks like. (The HTTP/2
/// pool sends again, itself, what was refused unprocessed or lost with its connection.)
pub(super) fn closed_connection(err: &SendError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let err: &(dyn std::error::Error + 'static) = match err {
        SendError::Http1(e) if e.is_connect() => return false,
        SendError::Http1(e) => e,
        SendError::Http2(_) => return false,
    };
    chain(err).iter().any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
                )
            })
    })
}

/// An error and its sources; an `io::Error`'s wrapped error is visited too (its own
/// `source()` skips it).
pub(super) fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_wrapped_tls_error_is_classified() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        // hyper-rustls wraps the handshake's io::Error in another one.
        let io = std::io::Error::other(io);
        let (code, _, kind, msg) = classify(&io);
        assert_eq!(kind, UpstreamErrorKind::Tls);
        assert_eq!(code, StatusCode::BAD_GATEWAY);
        assert!(msg.contains("TLS handshake failed"), "{msg}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(classify(&refused).2, UpstreamErrorKind::Refused);
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(classify(&timeout).1, Reason::Timeout);
    }
}
