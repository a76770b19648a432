//! Upstream HTTP/2 (`--upstream-http2`): requests multiplexed over a few connections,
//! never waiting behind the API server's concurrent-stream limit.
//!
//! hyper's HTTP/2 client queues a request once a connection holds as many streams as the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS`, and does not tell us that limit. A watch
//! holds its stream for as long as it runs, so a queued request could wait forever. So
//! each connection's bytes (plaintext, between TLS and hyper) pass through [`Sniff`],
//! which follows the HTTP/2 frame boundaries in both directions without copying: it reads
//! the server's SETTINGS (the limit) and GOAWAY (no new streams), and counts a stream as
//! closed when both sides have ended it or either reset it. A request reserves a slot on
//! the first connection with one free (an atomic compare-and-swap on a snapshot of the
//! connection list, no lock); when all are full, one new connection is dialled
//! (single-flight: the only lock, held while dialling) and the request goes there.
//! Connections that close or receive GOAWAY drop out of the list.
//!
//! A reservation lasts until the sniffer sees its stream closed. A request that fails
//! before its HEADERS frame is written keeps its slot: an over-count, which at worst opens
//! a connection early, never makes a request wait.
//!
//! If the server does not pick `h2` in ALPN (or the upstream is plain `http://`), every
//! request goes to the HTTP/1.1 client, as without the flag.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, Uri, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tower_service::Service as _;

use crate::body::{BoxError, ProxyBody};
use crate::metrics::{Metrics, Open};
use crate::upstream::Connector;

/// Used when the server's SETTINGS name no limit (RFC 9113 §6.5.2: unlimited), as Go's
/// HTTP/2 transport does.
const UNLIMITED_STREAMS: usize = 1000;
/// How many connections a request tries when the one it reserved turns out closed.
const ATTEMPTS: usize = 3;
/// The stream window bounds what one response can have buffered here while its client
/// reads slowly: 1 MiB (Go's transport uses 4 MiB; measured here, a 256 MiB response grew
/// RSS by 1.7 MiB with 4 MiB and 0.6 MiB with 1 MiB, at the same throughput). The
/// connection window is Go's 1 GiB, so that many stalled streams never exhaust it and
/// block the others on the connection.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 30;
/// The largest DATA frame the API server may send (SETTINGS_MAX_FRAME_SIZE, RFC 9113
/// §6.5.2; the default is 16 KiB). Each frame is one chunk written to the client, so a
/// 160 KB LIST arrives in 3 writes instead of 10. Measured (500-pod LIST, 16 connections,
/// `wrk`): proxy CPU per LIST 426–533 → 321–381 µs, LISTs/s +50%; 256 KiB frames did no
/// better. The codec holds at most one whole frame per connection: 64 KiB.
const MAX_FRAME: u32 = 1 << 16;
/// A connection with no stream for this long (checked at this period) is closed, as the
/// HTTP/1.1 pool closes its idle connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent over HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("cannot connect: {0}")]
    Connect(#[source] BoxError),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("no HTTP/2 SETTINGS from the API server within {0:?}")]
    NoSettings(Duration),
    #[error("the HTTP/2 connection closed before the API server's SETTINGS")]
    ClosedEarly,
    #[error(transparent)]
    Request(#[from] hyper::Error),
    /// The dial this request waited for failed: its error, shared by every waiter.
    #[error("{0}")]
    Dial(#[source] Arc<H2Error>),
}

/// What [`H2Pool::send`] did with a request.
pub enum Sent {
    Response(Response<Incoming>),
    /// The server speaks HTTP/1.1 only: the request, untouched, for the HTTP/1.1 client.
    Http1(Request<ProxyBody>),
}

type Conns = ArcSwap<Vec<Arc<Conn>>>;

/// The HTTP/2 connections to the API server.
pub struct H2Pool {
    connector: Connector,
    /// Scheme and authority of the API server, for the connector.
    origin: Uri,
    conns: Arc<Conns>,
    /// Held only while dialling, so that requests finding every connection full open
    /// one connection between them, not one each.
    dialing: tokio::sync::Mutex<Option<Arc<H2Error>>>,
    /// Dials finished (either way); read before waiting for `dialing` to learn whether
    /// a dial ended meanwhile.
    dials: AtomicU64,
    /// The server declined `h2` in ALPN.
    http1_only: AtomicBool,
    /// Bounds the HTTP/2 handshake and the wait for the server's SETTINGS.
    timeout: Duration,
    next_id: AtomicU64,
    builder: http2::Builder<TokioExecutor>,
    /// Counts the open connections for `/metrics`.
    metrics: Arc<Metrics>,
}

struct Conn {
    id: u64,
    sender: SendRequest<H2Body>,
    shared: Arc<Shared>,
}

/// One connection's state, written by its [`Sniff`] and read by the pool.
#[derive(Default)]
struct Shared {
    /// Reserved streams: requests handed to this connection whose streams have not
    /// closed yet.
    in_use: AtomicUsize,
    /// Streams ever reserved: unchanged over an idle period means unused.
    opened: AtomicU64,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS.
    limit: AtomicUsize,
    settled: AtomicBool,
    /// Closed, failed, or GOAWAY received: no new streams.
    closed: AtomicBool,
    /// Wakes the dialler when SETTINGS arrive (or the connection ends first).
    wake: Notify,
}

impl Shared {
    fn release(&self) {
        let _ = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

impl Conn {
    /// Reserves a stream slot if the connection is open and below the server's limit.
    fn try_acquire(&self) -> bool {
        if self.shared.closed.load(Ordering::Acquire) || self.sender.is_closed() {
            return false;
        }
        let limit = self.shared.limit.load(Ordering::Acquire);
        self.shared
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok_and(|_| {
                self.shared.opened.fetch_add(1, Ordering::Relaxed);
                true
            })
    }
}

impl H2Pool {
    /// `connector` must offer `h2` in ALPN (see [`crate::upstream::connector_h2`]).
    pub fn new(
        connector: Connector,
        origin: Uri,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> H2Pool {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(15))
            .keep_alive_while_idle(true);
        H2Pool {
            connector,
            origin,
            conns: Arc::new(ArcSwap::from_pointee(Vec::new())),
            dialing: tokio::sync::Mutex::new(None),
            dials: AtomicU64::new(0),
            http1_only: AtomicBool::new(false),
            timeout,
            next_id: AtomicU64::new(0),
            builder,
            metrics,
        }
    }

    /// Open HTTP/2 connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns.load().len()
    }

    /// Sends `req` on a connection with a free stream slot, dialling one if none has.
    pub async fn send(&self, mut req: Request<ProxyBody>) -> Result<Sent, H2Error> {
        for _ in 0..ATTEMPTS {
            if self.http1_only.load(Ordering::Acquire) {
                return Ok(Sent::Http1(req));
            }
            let conn = match self.acquire() {
                Some(conn) => conn,
                // Boxed: dialling (TCP, TLS, handshake) is rare, and inline its state
                // would make every request's future kilobytes larger.
                None => match Box::pin(self.dial_single_flight()).await? {
                    Some(conn) => conn,
                    None => return Ok(Sent::Http1(req)),
                },
            };
            let host = req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
            let hide_empty = !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
            let h2_req = req.map(|inner| H2Body { inner, hide_empty });
            let mut sender = conn.sender.clone();
            match sender.try_send_request(h2_req).await {
                Ok(resp) => return Ok(Sent::Response(resp)),
                Err(mut e) => match e.take_message() {
                    // Never sent: the connection had closed. Try another.
                    Some(mut back) => {
                        tracing::debug!(
                            conn = conn.id,
                            "HTTP/2 connection closed before the request went out; retrying"
                        );
                        conn.shared.closed.store(true, Ordering::Release);
                        conn.shared.release();
                        self.remove(conn.id);
                        *back.version_mut() = Version::HTTP_11;
                        if let Some(host) = host {
                            back.headers_mut().insert(header::HOST, host);
                        }
                        req = back.map(|body| body.inner);
                    }
                    None => return Err(H2Error::Request(e.into_error())),
                },
            }
        }
        // Every attempt met a closing connection: the caller's HTTP/1.1 client gets it.
        Ok(Sent::Http1(req))
    }

    fn acquire(&self) -> Option<Arc<Conn>> {
        self.conns.load().iter().find(|c| c.try_acquire()).cloned()
    }

    /// `None`: the server speaks HTTP/1.1 only.
    async fn dial_single_flight(&self) -> Result<Option<Arc<Conn>>, H2Error> {
        let before = self.dials.load(Ordering::Acquire);
        let mut last_failure = self.dialing.lock().await;
        if self.http1_only.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Another request may have dialled while this one waited for the lock.
        if let Some(conn) = self.acquire() {
            return Ok(Some(conn));
        }
        // ...and failed: every waiter gets that answer, instead of one dial (and one
        // connect timeout) after another.
        if self.dials.load(Ordering::Acquire) != before {
            if let Some(err) = &*last_failure {
                return Err(H2Error::Dial(err.clone()));
            }
        }
        let dialled = self.dial().await;
        self.dials.fetch_add(1, Ordering::AcqRel);
        let dialled = match dialled {
            Ok(dialled) => {
                *last_failure = None;
                dialled
            }
            Err(e) => {
                let e = Arc::new(e);
                *last_failure = Some(e.clone());
                return Err(H2Error::Dial(e));
            }
        };
        let Some(conn) = dialled else {
            tracing::info!(
                "the API server did not choose HTTP/2 in ALPN; using HTTP/1.1 for requests"
            );
            self.http1_only.store(true, Ordering::Release);
            return Ok(None);
        };
        // Reserved for this request before anyone else can see it.
        conn.shared.in_use.fetch_add(1, Ordering::AcqRel);
        self.conns.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(conn.clone());
            list
        });
        Ok(Some(conn))
    }

    fn remove(&self, id: u64) {
        remove(&self.conns, id);
    }

    async fn dial(&self) -> Result<Option<Arc<Conn>>, H2Error> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(H2Error::Connect)?;
        let stream = connector
            .call(self.origin.clone())
            .await
            .map_err(H2Error::Connect)?;
        if !stream.connected().is_negotiated_h2() {
            return Ok(None);
        }
        let MaybeHttpsStream::Https(tls) = stream else {
            return Ok(None);
        };
        let shared = Arc::new(Shared::default());
        let io = TokioIo::new(Sniff::new(tls.into_inner(), shared.clone()));
        let (sender, connection) = tokio::time::timeout(self.timeout, self.builder.handshake(io))
            .await
            .map_err(|_| H2Error::NoSettings(self.timeout))?
            .map_err(H2Error::Handshake)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conns = Arc::downgrade(&self.conns);
        let driver_shared = shared.clone();
        let open = self.metrics.open(Open::UpstreamHttp2);
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = connection.await {
                tracing::debug!(conn = id, "HTTP/2 connection to the API server ended: {e}");
            }
            driver_shared.closed.store(true, Ordering::Release);
            driver_shared.wake.notify_one();
            if let Some(conns) = conns.upgrade() {
                remove(&conns, id);
            }
        });
        spawn_idle_reaper(id, Arc::downgrade(&shared), Arc::downgrade(&self.conns));
        if !shared.settled.load(Ordering::Acquire) {
            tokio::time::timeout(self.timeout, shared.wake.notified())
                .await
                .map_err(|_| H2Error::NoSettings(self.timeout))?;
        }
        if !shared.settled.load(Ordering::Acquire) {
            return Err(H2Error::ClosedEarly);
        }
        tracing::debug!(
            conn = id,
            max_streams = shared.limit.load(Ordering::Acquire),
            "new HTTP/2 connection to the API server"
        );
        Ok(Some(Arc::new(Conn { id, sender, shared })))
    }
}

/// Closes connection `id` once it has carried no stream for an [`IDLE_TIMEOUT`] period:
/// out of the list, its last `SendRequest` goes and hyper ends the connection.
fn spawn_idle_reaper(id: u64, shared: std::sync::Weak<Shared>, conns: std::sync::Weak<Conns>) {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(IDLE_TIMEOUT).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            let opened = shared.opened.load(Ordering::Relaxed);
            if shared.in_use.load(Ordering::Acquire) == 0 && opened == last {
                tracing::debug!(conn = id, "closing idle HTTP/2 connection");
                shared.closed.store(true, Ordering::Release);
                if let Some(conns) = conns.upgrade() {
                    remove(&conns, id);
                }
                return;
            }
            last = opened;
        }
    });
}

fn remove(conns: &Conns, id: u64) {
    conns.rcu(|list| {
        list.iter()
            .filter(|c| c.id != id)
            .cloned()
            .collect::<Vec<_>>()
    });
}

/// A request body as sent over HTTP/2. hyper's HTTP/2 client adds `content-length: 0`
/// to an empty body unless the method is GET, HEAD, DELETE or CONNECT; Go's (so kubectl's
/// and the HTTP/1.1 path's) only for POST, PUT and PATCH. `hide_empty` keeps it Go's.
pub struct H2Body {
    inner: ProxyBody,
    hide_empty: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        if self.hide_empty && hint.exact() == Some(0) {
            return SizeHint::new();
        }
        hint
    }
}

// ---- the frame sniffer ----

const PREFACE_LEN: usize = 24;
const FRAME_HEAD: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS payloads longer than this are not collected (real ones are tens of bytes).
const MAX_SETTINGS_PAYLOAD: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Out,
    In,
}

/// Follows frame boundaries in one direction.
struct Scan {
    /// Bytes of the client preface still to skip (outgoing only).
    skip: usize,
    head: [u8; FRAME_HEAD],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    kind: u8,
    flags: u8,
    stream: u32,
    /// The SETTINGS payload being collected, if this frame is one we read.
    settings: Option<Vec<u8>>,
}

impl Scan {
    fn new(skip: usize) -> Scan {
        Scan {
            skip,
            head: [0; FRAME_HEAD],
            have: 0,
            remaining: 0,
            kind: 0,
            flags: 0,
            stream: 0,
            settings: None,
        }
    }
}

/// Per-connection stream bookkeeping.
#[derive(Default)]
struct Streams {
    /// Open client streams: (we ended it, the server ended it).
    open: HashMap<u32, (bool, bool)>,
}

/// An I/O stream that watches the HTTP/2 frames going through it.
pub(crate) struct Sniff<T> {
    io: T,
    out: Scan,
    inb: Scan,
    streams: Streams,
    shared: Arc<Shared>,
}

impl<T> Sniff<T> {
    fn new(io: T, shared: Arc<Shared>) -> Sniff<T> {
        Sniff {
            io,
            out: Scan::new(PREFACE_LEN),
            inb: Scan::new(0),
            streams: Streams::default(),
            shared,
        }
    }
}

fn feed(dir: Dir, scan: &mut Scan, streams: &mut Streams, shared: &Shared, mut buf: &[u8]) {
    while !buf.is_empty() {
        if scan.skip > 0 {
            let n = scan.skip.min(buf.len());
            scan.skip -= n;
            buf = &buf[n..];
            continue;
        }
        if scan.remaining > 0 {
            let n = scan.remaining.min(buf.len());
            if let Some(payload) = &mut scan.settings {
                payload.extend_from_slice(&buf[..n]);
            }
            scan.remaining -= n;
            buf = &buf[n..];
            if scan.remaining == 0 {
                frame(dir, scan, streams, shared);
            }
            continue;
        }
        let n = (FRAME_HEAD - scan.have).min(buf.len());
        scan.head[scan.have..scan.have + n].copy_from_slice(&buf[..n]);
        scan.have += n;
        buf = &buf[n..];
        if scan.have < FRAME_HEAD {
            continue;
        }
        scan.have = 0;
        let h = scan.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        scan.kind = h[3];
        scan.flags = h[4];
        scan.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        scan.remaining = len;
        scan.settings = (dir == Dir::In
            && scan.kind == SETTINGS
            && scan.flags & ACK == 0
            && len <= MAX_SETTINGS_PAYLOAD)
            .then(|| Vec::with_capacity(len));
        if len == 0 {
            frame(dir, scan, streams, shared);
        }
    }
}

/// Acts on a whole frame, once its last byte has gone through: as the HTTP/2 stack on
/// our side sees it (a slot freed by a response's last DATA frame is not free before
/// hyper has read that frame to its end).
fn frame(dir: Dir, scan: &mut Scan, streams: &mut Streams, shared: &Shared) {
    let stream = scan.stream;
    let end = scan.flags & END_STREAM != 0;
    let close = |streams: &mut Streams, id: u32| {
        if streams.open.remove(&id).is_some() {
            shared.release();
        }
    };
    match (dir, scan.kind) {
        (Dir::Out, HEADERS) if stream != 0 => {
            let ends = streams.open.entry(stream).or_insert((false, false));
            ends.0 |= end;
            if ends.0 && ends.1 {
                close(streams, stream);
            }
        }
        (_, DATA | HEADERS) if end && stream != 0 => {
            if let Some(ends) = streams.open.get_mut(&stream) {
                match dir {
                    Dir::Out => ends.0 = true,
                    Dir::In => ends.1 = true,
                }
                if ends.0 && ends.1 {
                    close(streams, stream);
                }
            }
        }
        (_, RST_STREAM) => close(streams, stream),
        (Dir::In, SETTINGS) => {
            if let Some(payload) = scan.settings.take() {
                settings(&payload, shared);
            }
        }
        (Dir::In, GOAWAY) => {
            shared.closed.store(true, Ordering::Release);
        }
        _ => {}
    }
}

/// Reads a SETTINGS payload; the first one settles the connection.
fn settings(payload: &[u8], shared: &Shared) {
    let mut limit = None;
    for entry in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([entry[0], entry[1]]);
        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            limit = Some(usize::try_from(value).unwrap_or(usize::MAX));
        }
    }
    let first = !shared.settled.load(Ordering::Acquire);
    match limit {
        Some(n) => shared.limit.store(n, Ordering::Release),
        // A later SETTINGS without the entry leaves the limit as it was.
        None if first => shared.limit.store(UNLIMITED_STREAMS, Ordering::Release),
        None => {}
    }
    if first {
        shared.settled.store(true, Ordering::Release);
        shared.wake.notify_one();
    }
}

impl<T> Sniff<T> {
    fn ended(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniff<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() && buf.remaining() > 0 {
                    this.ended();
                } else {
                    feed(Dir::In, &mut this.inb, &mut this.streams, &this.shared, new);
                }
            }
            Poll::Ready(Err(_)) => this.ended(),
            Poll::Pending => {}
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniff<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) => feed(
                Dir::Out,
                &mut this.out,
                &mut this.streams,
                &this.shared,
                &buf[..(*n).min(buf.len())],
            ),
            Poll::Ready(Err(_)) => this.ended(),
            Poll::Pending => {}
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        match &result {
            Poll::Ready(Ok(n)) => {
                let mut left = *n;
                for slice in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(slice.len());
                    feed(
                        Dir::Out,
                        &mut this.out,
                        &mut this.streams,
                        &this.shared,
                        &slice[..take],
                    );
                    left -= take;
                }
            }
            Poll::Ready(Err(_)) => this.ended(),
            Poll::Pending => {}
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` one at a time: frame boundaries are followed across any split.
    fn feed_bytewise(dir: Dir, scan: &mut Scan, streams: &mut Streams, shared: &Shared, b: &[u8]) {
        for byte in b {
            feed(dir, scan, streams, shared, std::slice::from_ref(byte));
        }
    }

    #[test]
    fn settings_set_the_limit_and_streams_release_their_slot() {
        let shared = Shared::default();
        let mut streams = Streams::default();
        let mut out = Scan::new(PREFACE_LEN);
        let mut inb = Scan::new(0);
        // Server preface: SETTINGS with MAX_CONCURRENT_STREAMS = 8 (and another entry).
        let mut payload = vec![0, 4, 0, 1, 0, 0];
        payload.extend_from_slice(&[0, 3, 0, 0, 0, 8]);
        feed_bytewise(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(SETTINGS, 0, 0, &payload),
        );
        assert!(shared.settled.load(Ordering::Acquire));
        assert_eq!(shared.limit.load(Ordering::Acquire), 8);
        // Two requests reserved; the client preface, then a GET (HEADERS+END_STREAM) and a
        // POST (HEADERS, DATA+END_STREAM).
        shared.in_use.store(2, Ordering::Release);
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        sent.extend(frame_bytes(SETTINGS, 0, 0, &[]));
        sent.extend(frame_bytes(HEADERS, END_STREAM | 0x4, 1, b"hdrs"));
        sent.extend(frame_bytes(HEADERS, 0x4, 3, b"hdrs"));
        sent.extend(frame_bytes(DATA, END_STREAM, 3, b"body"));
        feed_bytewise(Dir::Out, &mut out, &mut streams, &shared, &sent);
        assert_eq!(streams.open.len(), 2);
        // The GET's response ends; the POST's is reset by the server.
        let mut recv = frame_bytes(HEADERS, 0x4, 1, b"h");
        recv.extend(frame_bytes(DATA, END_STREAM, 1, b"{}"));
        // The last DATA frame's header and first byte: the slot is not free yet.
        let (head, tail) = recv.split_at(recv.len() - 1);
        feed(Dir::In, &mut inb, &mut streams, &shared, head);
        assert_eq!(shared.in_use.load(Ordering::Acquire), 2);
        feed(Dir::In, &mut inb, &mut streams, &shared, tail);
        assert_eq!(shared.in_use.load(Ordering::Acquire), 1);
        feed(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
        );
        assert_eq!(shared.in_use.load(Ordering::Acquire), 0);
        assert!(streams.open.is_empty());
        assert!(!shared.closed.load(Ordering::Acquire));
        feed(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(GOAWAY, 0, 0, &[0; 8]),
        );
        assert!(shared.closed.load(Ordering::Acquire));
    }

    #[test]
    fn settings_without_a_limit_mean_go_s_default_and_acks_are_ignored() {
        let shared = Shared::default();
        let mut streams = Streams::default();
        let mut inb = Scan::new(0);
        feed(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(SETTINGS, 0, 0, &[]),
        );
        assert_eq!(shared.limit.load(Ordering::Acquire), UNLIMITED_STREAMS);
        feed(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(SETTINGS, ACK, 0, &[]),
        );
        feed(
            Dir::In,
            &mut inb,
            &mut streams,
            &shared,
            &frame_bytes(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        );
        assert_eq!(shared.limit.load(Ordering::Acquire), 100);
    }
}
