//! One request's streams: its body piped into HTTP/2 with flow control (a copy kept
//! while it is small, for a refusal), and the response body read to END_STREAM (or reset
//! explicitly, a reset h2 does not count).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::conn::Slot;
use crate::upstream::body::{BoxError, KeptBody, RequestBody};

/// How long a complete body (all `Content-Length` bytes through) may wait for its
/// END_STREAM before the stream is reset after all. Go sends it as the handler returns.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The largest request body kept, as it is streamed, to be sent again should the server
/// refuse the stream unprocessed (REFUSED_STREAM, or above a GOAWAY's last-stream-id:
/// RFC 9113 §8.7 says such a request was not processed, so any method may be retried).
/// 64 KiB holds the API server's typical object (a Pod, a Deployment, a Lease: a few KiB;
/// a PATCH less) while bounding what each write in flight can hold here; it is also
/// about HTTP/2's default initial stream window (65,535 bytes, RFC 9113 §6.9.2), so a
/// body this small is usually all sent before the server's answer, a refusal included,
/// can arrive. A larger body keeps no copy at all (dropped the moment it passes the
/// bound), and its refusal stays an error.
pub(crate) const KEPT_BODY_LIMIT: usize = 64 * 1024;

/// Whether a body of this size may be kept (see [`KEPT_BODY_LIMIT`]).
pub(super) fn may_keep(hint: &SizeHint) -> bool {
    hint.lower() <= KEPT_BODY_LIMIT as u64
}

/// The copy of a request body being kept as it is streamed: `None` once it is known to
/// pass [`KEPT_BODY_LIMIT`]. Bytes are copied, not the chunks kept: a chunk shares the
/// buffer hyper read it into, which may be far larger than the chunk.
pub(super) struct Keeper(Option<(Vec<u8>, Option<HeaderMap>)>);

impl Keeper {
    pub(super) fn new(hint: &SizeHint) -> Keeper {
        Keeper(may_keep(hint).then(|| {
            let expected = hint.exact().unwrap_or(0).min(KEPT_BODY_LIMIT as u64);
            (Vec::with_capacity(expected as usize), None)
        }))
    }

    fn data(&mut self, chunk: &[u8]) {
        if let Some((kept, _)) = &mut self.0 {
            if kept.len() + chunk.len() > KEPT_BODY_LIMIT {
                // Past the bound: the copy goes now, not when the request ends.
                self.0 = None;
            } else {
                kept.extend_from_slice(chunk);
            }
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some((_, kept)) = &mut self.0 {
            *kept = Some(trailers.clone());
        }
    }

    /// The whole body, to be sent again; `None` if it did not fit.
    fn finish(self) -> Option<RequestBody> {
        let (data, trailers) = self.0?;
        Some(RequestBody::Kept(Box::new(KeptBody {
            data: (!data.is_empty()).then(|| Bytes::from(data)),
            trailers,
        })))
    }
}

/// How the body's pipe ended its sending, for the request to read when its response
/// fails (see `H2Pool::attempt`).
pub(super) enum Piped {
    /// All of it went out; the copy if it fitted.
    Sent(Option<RequestBody>),
    /// The client's body failed.
    Failed(BoxError),
    /// The stream stopped taking it (reset by the server, refused, connection gone):
    /// why, and the whole body if it fitted the copy (read to its end after the stream
    /// stopped).
    Stopped {
        cause: BoxError,
        kept: Option<RequestBody>,
    },
}

/// Where a body failed: the client's side, or the HTTP/2 stream's.
enum BodyError {
    Client(BoxError),
    Stream(BoxError),
}

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

/// Streams a request body into its HTTP/2 stream, with flow control, keeping a copy of
/// it while it fits [`KEPT_BODY_LIMIT`]. A body that fails, or trailers h2 refuses, reset
/// the stream: the response future then fails, and the caller answers with the cause
/// from `done` instead of waiting forever. A stream that stops taking the body (the
/// server reset or refused it) has the rest of a small body read into the copy, so that
/// a refused request can be sent again whole. Afterwards, waits for the response side to
/// ask for a reset (a client that left mid-response).
pub(super) async fn pipe(
    mut body: RequestBody,
    mut stream: h2::SendStream<Bytes>,
    mut cancel: oneshot::Receiver<()>,
    done: oneshot::Sender<Piped>,
) {
    let mut keeper = Keeper::new(&body.size_hint());
    // `None`: the response ended or was dropped while the body was still going (the
    // server answered early; RFC 9113 §8.1 lets a client stop sending then).
    let sent = tokio::select! {
        r = send_body(&mut body, &mut stream, &mut keeper) => Some(r),
        _ = &mut cancel => None,
    };
    let Some(sent) = sent else {
        stream.send_reset(h2::Reason::CANCEL);
        return;
    };
    match sent {
        Ok(()) => {
            let _ = done.send(Piped::Sent(keeper.finish()));
        }
        Err(BodyError::Client(e)) => {
            tracing::debug!("request body failed: {e}");
            stream.send_reset(h2::Reason::CANCEL);
            let _ = done.send(Piped::Failed(e));
            return;
        }
        Err(BodyError::Stream(cause)) => {
            tracing::debug!("the request stream stopped taking the body: {cause}");
            stream.send_reset(h2::Reason::CANCEL);
            // Read on only while the copy may still hold it all (a client that leaves
            // ends this too: `cancel`'s sender goes with the request).
            let kept = tokio::select! {
                kept = keep_rest(&mut body, keeper) => kept,
                _ = &mut cancel => None,
            };
            let _ = done.send(Piped::Stopped { cause, kept });
            return;
        }
    }
    drop(body);
    if cancel.await.is_ok() {
        stream.send_reset(h2::Reason::CANCEL);
    }
}

async fn send_body(
    body: &mut RequestBody,
    stream: &mut h2::SendStream<Bytes>,
    keeper: &mut Keeper,
) -> Result<(), BodyError> {
    let to_stream = |e: h2::Error| BodyError::Stream(e.into());
    loop {
        let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await else {
            stream.send_data(Bytes::new(), true).map_err(to_stream)?;
            return Ok(());
        };
        let frame = match frame.map_err(BodyError::Client)?.into_data() {
            Ok(mut data) => {
                keeper.data(&data);
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(granted) => granted.map_err(to_stream)?,
                        // h2 answers `None` once the stream is reset (`poll_capacity`
                        // in `proto/streams/send.rs`).
                        None => {
                            return Err(BodyError::Stream(
                                "the API server closed the request stream".into(),
                            ));
                        }
                    };
                    let chunk = data.split_to(granted.min(data.len()));
                    stream.send_data(chunk, false).map_err(to_stream)?;
                }
                continue;
            }
            Err(frame) => frame,
        };
        // Connection-specific fields are gone already (`RequestBody` strips them).
        if let Ok(trailers) = frame.into_trailers() {
            keeper.trailers(&trailers);
            stream.send_trailers(trailers).map_err(to_stream)?;
            return Ok(());
        }
    }
}

/// The rest of a body whose stream stopped, into `keeper`: the whole body if it fits
/// [`KEPT_BODY_LIMIT`] and the client's side does not fail, else `None` (at once if the
/// copy is gone already).
async fn keep_rest(body: &mut RequestBody, mut keeper: Keeper) -> Option<RequestBody> {
    while keeper.0.is_some() {
        let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await else {
            return keeper.finish();
        };
        match frame.ok()?.into_data() {
            Ok(data) => keeper.data(&data),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    keeper.trailers(&trailers);
                    return keeper.finish();
                }
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_bytes(body: RequestBody) -> (Vec<u8>, Option<HeaderMap>) {
        match body {
            RequestBody::Kept(kept) => (
                kept.data.map_or_else(Vec::new, |d| d.to_vec()),
                kept.trailers,
            ),
            other => panic!("not a kept body: {other:?}"),
        }
    }

    #[test]
    fn a_body_within_the_bound_is_kept_whole() {
        let mut k = Keeper::new(&SizeHint::new());
        k.data(b"hello, ");
        k.data(&[b'x'; KEPT_BODY_LIMIT - 7]);
        let mut t = HeaderMap::new();
        t.insert("x-trailer", http::HeaderValue::from_static("1"));
        k.trailers(&t);
        let (data, trailers) = kept_bytes(k.finish().expect("kept"));
        assert_eq!(data.len(), KEPT_BODY_LIMIT);
        assert!(data.starts_with(b"hello, "));
        assert_eq!(trailers, Some(t));
        let empty = Keeper::new(&SizeHint::with_exact(0))
            .finish()
            .expect("kept");
        assert!(empty.is_end_stream(), "an empty body is sent as none");
    }

    #[test]
    fn past_the_bound_the_copy_is_dropped_at_once() {
        let mut k = Keeper::new(&SizeHint::new());
        k.data(&[0; KEPT_BODY_LIMIT]);
        k.data(b"!");
        assert!(k.0.is_none(), "no memory held past the bound");
        k.data(b"more");
        assert!(k.finish().is_none());
        // A Content-Length past the bound keeps nothing from the start.
        let k = Keeper::new(&SizeHint::with_exact(KEPT_BODY_LIMIT as u64 + 1));
        assert!(k.0.is_none());
        assert!(!may_keep(&SizeHint::with_exact(KEPT_BODY_LIMIT as u64 + 1)));
        assert!(may_keep(&SizeHint::with_exact(KEPT_BODY_LIMIT as u64)));
    }
}
