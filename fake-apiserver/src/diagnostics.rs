//! The endpoints that report or produce exactly known bytes: `/echo` (what arrived),
//! `/bytes` (a deterministic pattern, chunked or with a length) and `/stream-echo` (the
//! request body streamed back while it is hashed into the request log).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::respond::json_resp;
use crate::seen::Seen;
use crate::state::State;
use crate::{BoxError, RespBody};
use hex::encode as hex;

/// Chunk size of `/bytes`.
pub const BYTES_CHUNK: usize = 64 * 1024;

/// The deterministic content of `/bytes`: byte `i` is `i % 251` (a prime, so the pattern
/// never lines up with power-of-two chunk boundaries and a misplaced chunk shows).
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    pattern_at(0, n)
}

pub(crate) fn pattern_at(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

pub(crate) fn echo(seen: &Seen) -> Response<RespBody> {
    json_resp(
        200,
        json!({
            "method": seen.method,
            "uri": seen.uri,
            "authority": seen.authority,
            "version": format!("{:?}", seen.version),
            "headers": seen.headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>(),
            "token": seen.token,
            "client_cn": seen.client_cn,
            "body_len": seen.body_len,
            "body_sha256": seen.body_sha256,
        }),
    )
}

pub(crate) fn bytes_resp(n: usize, chunked: bool) -> Response<RespBody> {
    let stream = futures::stream::unfold(0usize, move |off| async move {
        (off < n).then(|| {
            let len = BYTES_CHUNK.min(n - off);
            (Frame::data(Bytes::from(pattern_at(off, len))), off + len)
        })
    })
    .map(Ok::<_, BoxError>);
    let mut b = Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if !chunked {
        b = b.header(header::CONTENT_LENGTH, n);
    }
    b.body(StreamBody::new(stream).boxed_unsync()).unwrap()
}

pub(crate) fn stream_echo(
    state: Arc<State>,
    idx: usize,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let tap = Tap {
        inner: req.into_body(),
        hasher: Sha256::new(),
        len: 0,
        state,
        idx,
        done: false,
        ended: false,
    };
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .body(tap.boxed_unsync())
        .unwrap()
}

/// Passes a request body through as a response body while hashing it, and records the
/// totals in the request log when it ends (or is dropped half-way).
pub(crate) struct Tap {
    inner: Incoming,
    hasher: Sha256,
    len: u64,
    state: Arc<State>,
    idx: usize,
    done: bool,
    ended: bool,
}

impl Tap {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let sha = hex(std::mem::take(&mut self.hasher).finalize());
            self.state.finish_body(self.idx, self.len, sha, self.ended);
        }
    }
}

impl Body for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.hasher.update(d);
                    this.len += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.ended = true;
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // hyper may never poll a body that was empty from the start.
        self.ended |= self.inner.is_end_stream();
        self.finish();
    }
}
