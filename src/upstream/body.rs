//! What is sent to the API server: a client's request body, streamed, or none (a
//! bodiless request, a retry, a resumed watch), or the kept copy of a small body sent
//! again after the server refused it unprocessed (`h2pool`). Trailers pass without the
//! connection-specific fields HTTP/2 forbids (`headers::strip_trailers`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::proxy::headers;

/// hyper's error type for bodies and connectors.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request the API server is sent: always HTTP/1.1 in the head (the HTTP/2 pool sets
/// its own version), the target and headers as the proxy made them.
pub(crate) fn request(
    method: &Method,
    target: &Uri,
    headers: HeaderMap,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = target.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// Methods that can be sent twice without harm, with no body (RFC 9110 §9.2.2; Go's
/// transport retries these alone): the one rule every retry and hedge follows.
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A request body on its way to the API server.
#[derive(Debug, Default)]
pub enum RequestBody {
    /// The client's body, frame by frame as it arrives.
    Stream(Incoming),
    /// A whole body kept while it was first sent (at most `h2pool`'s
    /// `KEPT_BODY_LIMIT`), sent again. Boxed: rare, and inline it would enlarge every
    /// request's future (see `proxy`'s `future_size`).
    Kept(Box<KeptBody>),
    #[default]
    Empty,
}

/// A kept request body: its data, then its trailers. Its `Debug` shows sizes only: the
/// body may be a Secret being created.
pub struct KeptBody {
    pub data: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
}

impl std::fmt::Debug for KeptBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptBody")
            .field("data_len", &self.data.as_ref().map(Bytes::len))
            .field("trailers", &self.trailers.as_ref().map(HeaderMap::len))
            .finish()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Stream(inner) => {
                clean_trailers(Pin::new(inner).poll_frame(cx)).map_err(Into::into)
            }
            RequestBody::Kept(kept) => Poll::Ready(
                kept.data
                    .take()
                    .map(Frame::data)
                    .or_else(|| kept.trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(inner) => inner.is_end_stream(),
            RequestBody::Kept(kept) => kept.data.is_none() && kept.trailers.is_none(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(inner) => inner.size_hint(),
            RequestBody::Kept(kept) => {
                SizeHint::with_exact(kept.data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Strips connection-specific fields from a trailers frame; data frames pass untouched.
/// Both directions go through it (this body, and the proxy's response body).
#[inline]
pub(crate) fn clean_trailers<E>(
    mut polled: Poll<Option<Result<Frame<Bytes>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    if let Poll::Ready(Some(Ok(frame))) = &mut polled
        && let Some(trailers) = frame.trailers_mut()
    {
        headers::strip_trailers(trailers);
    }
    polled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_body_never_shows_its_bytes_in_debug() {
        let kept = RequestBody::Kept(Box::new(KeptBody {
            data: Some(Bytes::from_static(
                b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}",
            )),
            trailers: None,
        }));
        let shown = format!("{kept:?}");
        assert!(!shown.contains("aHVudGVyMg"), "{shown}");
        assert!(shown.contains("data_len"), "{shown}");
    }
}
