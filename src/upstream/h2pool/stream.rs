//! One request's streams: its body piped into HTTP/2 with flow control, and the
//! response body read to END_STREAM (or reset explicitly, a reset h2 does not count).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::conn::Slot;
use crate::upstream::body::{BoxError, RequestBody};

/// How long a complete body (all `Content-Length` bytes through) may wait for its
/// END_STREAM before the stream is reset after all. Go sends it as the handler returns.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How a response that is dropped before its end resets its stream: a user reset, which
/// h2 does not count against the connection (see the module comment).
pub(super) enum Reset {
    /// Bodiless request: the send half is ours.
    Direct(h2::SendStream<Bytes>),
    /// The body's pipe task holds the send half; this asks it to reset.
    Pipe(Option<oneshot::Sender<()>>),
}

impl Reset {
    fn cancel(&mut self) {
        match self {
            Reset::Direct(s) => s.send_reset(h2::Reason::CANCEL),
            Reset::Pipe(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// Streams a request body into its HTTP/2 stream, with flow control. A body that fails,
/// or trailers h2 refuses, reset the stream: the response future then fails, and the
/// caller answers with `failed`'s cause instead of waiting forever. Afterwards, waits for
/// the response side to ask for a reset (a client that left mid-response).
pub(super) async fn pipe(
    mut body: RequestBody,
    mut stream: h2::SendStream<Bytes>,
    mut cancel: oneshot::Receiver<()>,
    failed: oneshot::Sender<BoxError>,
) {
    // `None`: the response ended or was dropped while the body was still going (the
    // server answered early; RFC 9113 §8.1 lets a client stop sending then).
    let sent = tokio::select! {
        r = send_body(&mut body, &mut stream) => Some(r),
        _ = &mut cancel => None,
    };
    let Some(sent) = sent else {
        stream.send_reset(h2::Reason::CANCEL);
        return;
    };
    if let Err(e) = sent {
        tracing::debug!("request body failed: {e}");
        stream.send_reset(h2::Reason::CANCEL);
        let _ = failed.send(e);
        return;
    }
    drop(body);
    if cancel.await.is_ok() {
        stream.send_reset(h2::Reason::CANCEL);
    }
}

pub(super) async fn send_body(
    body: &mut RequestBody,
    stream: &mut h2::SendStream<Bytes>,
) -> Result<(), BoxError> {
    loop {
        let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await else {
            stream.send_data(Bytes::new(), true)?;
            return Ok(());
        };
        let frame = match frame?.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(granted) => granted?,
                        None => return Err("the API server closed the request stream".into()),
                    };
                    let chunk = data.split_to(granted.min(data.len()));
                    stream.send_data(chunk, false)?;
                }
                continue;
            }
            Err(frame) => frame,
        };
        // Connection-specific fields are gone already (`RequestBody` strips them).
        if let Ok(trailers) = frame.into_trailers() {
            stream.send_trailers(trailers)?;
            return Ok(());
        }
    }
}

struct Inner {
    recv: h2::RecvStream,
    reset: Option<Reset>,
    _slot: Slot,
}

/// A response body from HTTP/2: read to END_STREAM, and reset explicitly if dropped before.
pub struct RecvBody {
    inner: Option<Inner>,
    /// `Content-Length` bytes still to come.
    remaining: Option<u64>,
    data_done: bool,
    done: bool,
    /// A chunk found while looking for END_STREAM (see `peek_end`).
    early: Option<Bytes>,
}

impl RecvBody {
    /// The response body of a stream whose slot it holds; `remaining` is the response's
    /// `Content-Length`, if any.
    pub(super) fn new(
        recv: h2::RecvStream,
        reset: Reset,
        slot: Slot,
        remaining: Option<u64>,
    ) -> RecvBody {
        RecvBody {
            inner: Some(Inner {
                recv,
                reset: Some(reset),
                _slot: slot,
            }),
            remaining,
            data_done: false,
            done: false,
            early: None,
        }
    }

    /// After the last `Content-Length` byte: if END_STREAM is already here, say so, so
    /// that the HTTP/1.1 side ends the response with the body (instead of dropping it).
    fn peek_end(&mut self, cx: &mut Context<'_>) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        match inner.recv.poll_data(cx) {
            Poll::Ready(None) => self.data_done = true,
            Poll::Ready(Some(Ok(data))) => {
                let _ = inner.recv.flow_control().release_capacity(data.len());
                if !data.is_empty() {
                    self.early = Some(data);
                }
                return;
            }
            _ => return,
        }
        if let Poll::Ready(Ok(None)) = inner.recv.poll_trailers(cx) {
            self.done = true;
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(data) = this.early.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(inner.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = inner.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = this.remaining.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                        if *left == 0 {
                            this.peek_end(cx);
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(inner.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            // `ProxyBody` strips connection-specific fields from them on the way out.
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.early.is_none()
            && (self.done || self.inner.as_ref().is_none_or(|i| i.recv.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n + self.early.as_ref().map_or(0, |b| b.len() as u64)),
            None => SizeHint::new(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if self.done || inner.recv.is_end_stream() {
            return;
        }
        // Every byte the server promised is through; only END_STREAM is missing. Read on
        // to it rather than reset a stream the server has completed. (No runtime: the
        // process is ending, and a reset is as good.)
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some(0), Ok(runtime)) = (self.remaining, runtime) {
            runtime.spawn(async move {
                let drained = tokio::time::timeout(DRAIN_LIMIT, async {
                    while let Some(data) = inner.recv.data().await {
                        let Ok(data) = data else { return false };
                        let _ = inner.recv.flow_control().release_capacity(data.len());
                    }
                    inner.recv.trailers().await.is_ok()
                })
                .await;
                if !matches!(drained, Ok(true))
                    && let Some(reset) = inner.reset.as_mut()
                {
                    reset.cancel();
                }
            });
            return;
        }
        if let Some(reset) = inner.reset.as_mut() {
            reset.cancel();
        }
    }
}
