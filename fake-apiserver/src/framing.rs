//! Response bodies framed as Go's `net/http` HTTP/2 server frames them (see the crate
//! comment for why): END_STREAM in an empty DATA frame of its own, every other response
//! after a pause, and a count of the bodies the client abandoned.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::{BoxError, RespBody};

/// Go's `http2.Server` default `MaxConcurrentStreams`.
pub(crate) const GO_MAX_STREAMS: u32 = 250;

/// A response body framed as Go's HTTP/2 server frames it: the last data frame does not
/// carry END_STREAM; an empty DATA frame does, after the body (with `pause`, after the
/// serving task has yielded once, as when Go's handler returns after its last flush).
pub(crate) fn go_framing(
    body: RespBody,
    pause: bool,
    abandoned: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> RespBody {
    // A handler that writes nothing: Go puts END_STREAM on the HEADERS frame.
    if body.is_end_stream() {
        return body;
    }
    UnsyncBoxBody::new(GoFraming {
        inner: body,
        pause,
        timer: None,
        ended: false,
        abandoned,
    })
}

pub(crate) struct GoFraming {
    inner: RespBody,
    /// Pause before END_STREAM; the timer is made once the body is through.
    pause: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
    abandoned: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// How long END_STREAM waits after the body when it pauses: longer than the proxy takes to
/// write the body's end to its client, as Go's handler returning after its last flush
/// can be (against Go, the reset LISTs had END_STREAM one read after the body).
pub(crate) const END_STREAM_PAUSE: Duration = Duration::from_millis(1);

impl Drop for GoFraming {
    fn drop(&mut self) {
        if let (false, Some(n)) = (self.ended, &self.abandoned) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Body for GoFraming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.inner.is_end_stream() && this.pause {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(END_STREAM_PAUSE)));
            ready!(timer.as_mut().poll(cx));
            this.pause = false;
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    /// Never known before the end: so hyper sends END_STREAM on a frame of its own.
    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
