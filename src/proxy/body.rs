//! The body of every response the proxy gives, and the access-log line written when it
//! ends.
//!
//! Bodies are streamed frame by frame: an upstream chunk is handed to the client as soon
//! as it arrives (no flush interval, unlike kubectl's 200 ms), and hyper's poll-based
//! bodies give backpressure for free: a slow reader stops us reading from the other side.
//!
//! Trailers pass through too, without the connection-specific fields HTTP/2 forbids
//! ([`headers::strip_trailers`]): a frame with one would make h2 refuse it and leave the
//! stream without an end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::GaugeGuard;
use crate::upstream::UpstreamBody;
use crate::upstream::body::clean_trailers;
use crate::www::FileBody;

pub(crate) use crate::upstream::body::BoxError;

/// A response body: the API server's, a small body made by the proxy, a tracked response
/// stream, or a static file (`--www`). (What goes upstream is a `RequestBody`.)
pub enum ProxyBody {
    Response(UpstreamBody),
    Full(Option<Bytes>),
    Tracked(Box<Tracked>),
    File(Box<FileBody>),
}

/// A response stream with extras: it may end at shutdown (a watch), count as an active
/// watch, and write an access-log line when it is done.
pub struct Tracked {
    pub inner: UpstreamBody,
    /// When this resolves the stream ends cleanly, so a watch client sees a normal end
    /// and re-establishes the watch elsewhere.
    pub stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    pub watch: Option<GaugeGuard>,
    /// Boxed: the line's fields are ~230 bytes that every watch would otherwise hold
    /// for its whole life with `--access-log` off (see the size test below).
    pub log: Option<Box<AccessLog>>,
}

/// One access-log line, written when the response body is finished or dropped.
pub struct AccessLog {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub start: Instant,
    pub upstream: Duration,
    pub bytes: u64,
    /// The request's API attributes (all empty outside the API, e.g. static files).
    pub api: ApiFields,
}

/// A request's API attributes as the access log shows them (owned: the line is written
/// when the body ends).
#[derive(Debug, Default, Clone)]
pub struct ApiFields {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl From<&crate::access::attributes::Attributes<'_>> for ApiFields {
    fn from(a: &crate::access::attributes::Attributes<'_>) -> Self {
        ApiFields {
            verb: a.verb.clone().into_owned(),
            group: a.group.to_owned(),
            resource: a.resource.to_owned(),
            subresource: a.subresource.to_owned(),
            namespace: a.namespace.to_owned(),
            name: a.name.clone().into_owned(),
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        tracing::info!(
            target: "kube_ambassador::access",
            method = %self.method,
            path = %crate::logging::Escaped(&self.path),
            verb = %self.api.verb,
            group = %self.api.group,
            resource = %self.api.resource,
            subresource = %self.api.subresource,
            namespace = %crate::logging::Escaped(&self.api.namespace),
            name = %crate::logging::Escaped(&self.api.name),
            status = self.status,
            duration_ms = self.start.elapsed().as_secs_f64() * 1e3,
            upstream_ms = self.upstream.as_secs_f64() * 1e3,
            bytes = self.bytes,
            "request"
        );
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::full(bytes)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Response(inner) => clean_trailers(Pin::new(inner).poll_frame(cx)),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Tracked(t) => {
                if let Some(stop) = t.stop.as_mut()
                    && stop.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                let polled = clean_trailers(Pin::new(&mut t.inner).poll_frame(cx));
                if let (Poll::Ready(Some(Ok(frame))), Some(log)) = (&polled, t.log.as_mut())
                    && let Some(data) = frame.data_ref()
                {
                    log.bytes += data.len() as u64;
                }
                polled
            }
            ProxyBody::File(f) => Pin::new(f.as_mut()).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Response(inner) => inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Tracked(t) => t.inner.is_end_stream(),
            ProxyBody::File(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Response(inner) => inner.size_hint(),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // A stream that may end early has no exact size; otherwise pass it on.
            ProxyBody::Tracked(t) if t.stop.is_some() => SizeHint::new(),
            ProxyBody::Tracked(t) => t.inner.size_hint(),
            ProxyBody::File(f) => f.size_hint(),
        }
    }
}

#[cfg(test)]
mod size {
    /// Every watch holds one `Tracked` for as long as it runs; with the access-log
    /// fields inline it was 384 bytes.
    #[test]
    fn a_tracked_stream_stays_small() {
        let size = std::mem::size_of::<crate::proxy::body::Tracked>();
        assert!(size < 160, "Tracked is {size} bytes");
    }
}
