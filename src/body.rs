//! The one body type that flows through the proxy, in both directions.
//!
//! Bodies are streamed frame by frame: an upstream chunk is handed to the client as soon
//! as it arrives (no flush interval, unlike kubectl's 200 ms), and hyper's poll-based
//! bodies give backpressure for free: a slow reader stops us reading from the other side.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body, a small body made by the proxy, or a watch that ends at shutdown.
pub enum ProxyBody {
    Stream(Incoming),
    Full(Option<Bytes>),
    /// A long-lived stream (a watch) that ends cleanly when `stop` resolves, so the
    /// client sees a normal end of the watch and re-establishes it elsewhere.
    Until {
        inner: Incoming,
        stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
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

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        ProxyBody::Stream(body)
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
            ProxyBody::Stream(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Until { inner, stop } => {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Pin::new(inner).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(inner) => inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Until { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(inner) => inner.size_hint(),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // It may end early: no bound holds.
            ProxyBody::Until { .. } => SizeHint::new(),
        }
    }
}
