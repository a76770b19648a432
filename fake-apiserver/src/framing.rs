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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// The poll after a one-frame body's data, where END_STREAM comes: `Some(true)` if the
    /// body ended there, `Some(false)` for anything else, `None` if it is not ready.
    fn end_after_data(pause: bool) -> Option<bool> {
        let inner: RespBody = Full::new(Bytes::from_static(b"{}"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut body = go_framing(inner, pause, None);
        let mut cx = Context::from_waker(Waker::noop());
        let data = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(data, Poll::Ready(Some(Ok(ref f))) if f.is_data()));
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(frame) => Some(frame.is_none()),
            Poll::Pending => None,
        }
    }

    // The timer cannot fire inside one synchronous poll (tokio's driver fires timers only
    // when it runs), so "not ready yet" here is certain, whatever the machine's speed.
    #[tokio::test]
    async fn end_stream_is_held_back_only_when_the_body_pauses() {
        assert_eq!(
            end_after_data(true),
            None,
            "a pausing body waits before its end"
        );
        assert_eq!(
            end_after_data(false),
            Some(true),
            "without the pause it ends at once"
        );
    }
}
