//! Upstream HTTP/2: requests multiplexed over a few connections, never waiting behind the
//! API server's concurrent-stream limit, never resetting a stream the server completed.
//!
//! Built on the `h2` crate directly rather than hyper's HTTP/2 client, because this pool
//! needs four things hyper does not expose:
//! - the server's `SETTINGS_MAX_CONCURRENT_STREAMS` (`current_max_send_streams`), so a
//!   request goes to a connection with a free stream or to a new one, instead of queueing
//!   behind watches that hold their streams for hours;
//! - the end of a response body on its own terms. Go's server often sends END_STREAM in an
//!   empty DATA frame after the body (`../shared/reference/go-apiserver.md`); hyper's
//!   HTTP/1.1 server drops a body once its `Content-Length` is written, and a dropped
//!   hyper/h2 stream is reset (RST_STREAM CANCEL). Under load those resets outnumber h2's
//!   memory of reset streams (`max_concurrent_reset_streams`); the END_STREAM frame then
//!   arrives for a forgotten stream, h2 answers STREAM_CLOSED and counts it as a library
//!   error, and past `max_local_error_reset_streams` (1,024) it sends GOAWAY
//!   ENHANCE_YOUR_CALM and fails every stream on the connection (h2 0.4
//!   `proto/streams/streams.rs`, `recv_data` / `reset_on_recv_stream_err`). Here
//!   [`RecvBody`] reads to END_STREAM when the body is complete, and resets explicitly
//!   (a user reset, which h2 does not count) when a client leaves mid-body;
//! - the request body's failures: a body that errors (or whose trailers h2 refuses) resets
//!   the stream and answers the caller, where hyper's pipe only logged it and left the
//!   stream open forever;
//! - PING on demand: a request that has waited for response headers on a connection that
//!   has been silent makes the pool ping it at once ([`Health`]).
//!
//! A request reserves a slot on the first connection with one free (a compare-and-swap on
//! a snapshot of the connection list, no lock); the slot is a guard released when the
//! request ends however it ends (failed, cancelled, body finished or dropped). When all are
//! full, one new connection is dialled (single-flight: the only lock, held while
//! dialling). Connections that close, go away or are declared dead drop out of the list;
//! an idle one is closed after [`IDLE_TIMEOUT`].
//!
//! If the server does not pick `h2` in ALPN (or the upstream is plain `http://`), every
//! request goes to the HTTP/1.1 client.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Body;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection as _;
use tokio::sync::oneshot;
use tower_service::Service as _;

use super::body::{RequestBody, idempotent, request};
use super::connector::Connector;
use crate::metrics::{Metrics, Open};

mod conn;
mod stream;

use conn::{Conn, ConnState, Conns, Slot, Watched, remove, spawn_idle_reaper, watch_health};
pub(crate) use conn::{H2Error, Health};
pub(crate) use stream::RecvBody;
use stream::{Piped, Reset, may_keep, pipe};

/// Streams assumed until the server's SETTINGS arrive: RFC 9113 §6.5.2 recommends a server
/// allow at least 100, and Go's transport starts with the same figure.
const INITIAL_MAX_STREAMS: usize = 100;
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
/// better.
const MAX_FRAME: u32 = 1 << 16;
/// Response headers larger than this are refused (Go's server limits request headers to
/// 1 MiB; API server responses carry a few hundred bytes).
const MAX_HEADER_LIST: u32 = 1 << 20;
/// Reset streams h2 remembers (to ignore the frames still in flight for them) before it
/// forgets the oldest; a frame for a forgotten stream costs a counted library reset. Each
/// costs a few hundred bytes for [`RESET_MEMORY`] at most.
const MAX_RESET_STREAMS: usize = 1024;
const RESET_MEMORY: Duration = Duration::from_secs(10);
/// What [`H2Pool::send`] did with a request.
pub enum Sent {
    Response(Response<RecvBody>),
    /// The server speaks HTTP/1.1 only: the request, untouched, for the HTTP/1.1 client.
    Http1(Request<RequestBody>),
}

/// The HTTP/2 connections to the API server.
pub struct H2Pool {
    connector: Connector,
    /// Scheme and authority of the API server, for the connector.
    origin: http::Uri,
    conns: Arc<Conns>,
    /// Held only while dialling, so that requests finding every connection full open
    /// one connection between them, not one each.
    dialing: tokio::sync::Mutex<Option<Arc<H2Error>>>,
    /// Dials finished (either way); read before waiting for `dialing` to learn whether
    /// a dial ended meanwhile.
    dials: AtomicU64,
    /// The server declined `h2` in ALPN.
    http1_only: AtomicBool,
    /// Bounds the HTTP/2 handshake.
    timeout: Duration,
    health: Health,
    next_id: AtomicU64,
    builder: h2::client::Builder,
    /// Counts the open connections for `/metrics`.
    metrics: Arc<Metrics>,
}

/// Why one attempt failed, and what may be tried next.
enum Failed {
    /// The connection would take no new stream: the request, untouched, for another.
    NotSent(Box<Request<RequestBody>>),
    /// Refused unprocessed by the server: safe to send anywhere, whatever the method,
    /// with this body (none, untouched, or the kept copy); `None` if the body could not
    /// be kept (past `stream::KEPT_BODY_LIMIT`).
    Refused(H2Error, Option<RequestBody>),
    /// Lost with its connection before response headers.
    Lost(H2Error),
    Final(H2Error),
}

impl H2Pool {
    /// `connector` must offer `h2` in ALPN (see [`crate::upstream::connector_h2`]).
    pub fn new(
        connector: Connector,
        origin: http::Uri,
        timeout: Duration,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> H2Pool {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .max_concurrent_reset_streams(MAX_RESET_STREAMS)
            .reset_stream_duration(RESET_MEMORY)
            // The peer is the one API server this process was configured with, verified
            // by TLS; the resets h2 would count are ones our own clients cause by leaving.
            // No client, however it behaves, may make us GOAWAY the shared connection.
            .max_local_error_reset_streams(None)
            .enable_push(false);
        H2Pool {
            connector,
            origin,
            conns: Arc::new(ArcSwap::from_pointee(Vec::new())),
            dialing: tokio::sync::Mutex::new(None),
            dials: AtomicU64::new(0),
            http1_only: AtomicBool::new(false),
            timeout,
            health,
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
    /// A request the server refused unprocessed (REFUSED_STREAM, or above a GOAWAY's
    /// last-stream-id: RFC 9113 §8.7) goes to another connection whatever its method,
    /// its body too if it was small enough to be kept (`stream::KEPT_BODY_LIMIT`); one
    /// lost with its connection before response headers is sent again once if it is
    /// idempotent and has no body. Nothing else is retried.
    ///
    /// `replay` holds the headers of a bodiless request (the caller's one copy): what it
    /// takes to send it again. A request with a small body has its headers copied here
    /// (the body's copy is kept by its pipe); any other is sent once.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        replay: Option<&HeaderMap>,
    ) -> Result<Sent, H2Error> {
        let bodiless = req.body().is_end_stream();
        let replay = replay.filter(|_| bodiless);
        let mut lost_retry = replay.is_some() && idempotent(req.method());
        let owned = (!bodiless && may_keep(&req.body().size_hint())).then(|| req.headers().clone());
        let replay = replay.or(owned.as_ref());
        let mut last = None;
        for _ in 0..ATTEMPTS {
            if self.http1_only.load(Ordering::Acquire) {
                return Ok(Sent::Http1(req));
            }
            let (conn, slot) = match self.acquire() {
                Some(found) => found,
                // Boxed: dialling (TCP, TLS, handshake) is rare, and inline its state
                // would make every request's future kilobytes larger.
                None => match Box::pin(self.dial_single_flight()).await? {
                    Some(found) => found,
                    None => return Ok(Sent::Http1(req)),
                },
            };
            // What another attempt would need: method and URI (cheap, shared buffers) and
            // the headers, copied only if that attempt happens. A body comes back from
            // the attempt when it was kept.
            let copy = replay.map(|headers| (req.method().clone(), req.uri().clone(), headers));
            let again = match self.attempt(&conn, slot, req, copy.is_some()).await {
                Ok(resp) => return Ok(Sent::Response(resp)),
                Err(Failed::NotSent(back)) => *back,
                Err(Failed::Refused(e, body)) => match copy.zip(body) {
                    Some((copy, body)) => {
                        tracing::debug!(
                            conn = conn.id,
                            "request refused unprocessed ({e}); trying another connection"
                        );
                        last = Some(e);
                        request(&copy.0, &copy.1, copy.2.clone(), body)
                    }
                    None => return Err(e),
                },
                Err(Failed::Lost(e)) => match copy.filter(|_| lost_retry) {
                    Some(copy) => {
                        tracing::debug!(
                            conn = conn.id,
                            "connection lost before the response ({e}); sending again"
                        );
                        lost_retry = false;
                        last = Some(e);
                        request(&copy.0, &copy.1, copy.2.clone(), RequestBody::Empty)
                    }
                    None => return Err(e),
                },
                Err(Failed::Final(e)) => return Err(e),
            };
            self.retire(&conn);
            req = again;
        }
        match last {
            Some(e) => Err(e),
            // Every attempt met a closing connection: the HTTP/1.1 client gets it.
            None => Ok(Sent::Http1(req)),
        }
    }

    /// One try on `conn`; `replayable`: the request could be sent again if refused (its
    /// headers are kept, and its body is none or small enough to be).
    async fn attempt(
        &self,
        conn: &Conn,
        slot: Slot,
        req: Request<RequestBody>,
        replayable: bool,
    ) -> Result<Response<RecvBody>, Failed> {
        let mut send = conn.send.clone();
        // Waits for h2's own pending-open slot (one stream being opened at a time per
        // handle); at the stream limit we never get here, see `try_acquire`. An error
        // here (GOAWAY received, connection closed) leaves the request unsent.
        if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
            return Err(Failed::NotSent(Box::new(req)));
        }
        let (parts, body) = req.into_parts();
        let end = body.is_end_stream();
        let mut head = Request::from_parts(parts, ());
        prepare_head(&mut head, end);
        let (response, stream) = match send.send_request(head, end) {
            Ok(sent) => sent,
            // Nothing was sent: the body is untouched.
            Err(e) => return Err(Failed::Refused(e.into(), Some(body))),
        };
        let (reset, piped) = if end {
            (Reset::Direct(stream), None)
        } else {
            let (cancel_tx, cancel_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            tokio::spawn(pipe(body, stream, cancel_rx, done_tx));
            (Reset::Pipe(Some(cancel_tx)), Some(done_rx))
        };
        match self.await_headers(&conn.state, response).await {
            Ok(resp) => {
                let (parts, recv) = resp.into_parts();
                let remaining = content_length(&parts.headers);
                let body = RecvBody::new(recv, reset, slot, remaining);
                Ok(Response::from_parts(parts, body))
            }
            Err(e) => {
                let ended = conn.state.transport_ended.load(Ordering::Acquire);
                let refused = e.is_remote()
                    && (e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away() && !ended);
                // A refused request may go again with its body: the pipe's word on it is
                // awaited (it reads the rest of a small body into its copy, bounded by
                // `stream::KEPT_BODY_LIMIT`; a reset wakes it if it waits for window).
                // Otherwise only a failure it has already reported is read.
                let piped = match piped {
                    None => Some(Piped::Sent(Some(RequestBody::Empty))),
                    Some(rx) if refused && replayable => rx.await.ok(),
                    Some(mut rx) => rx.try_recv().ok(),
                };
                let kept = match piped {
                    Some(Piped::Failed(cause)) => {
                        return Err(Failed::Final(H2Error::RequestBody(cause)));
                    }
                    Some(Piped::Stopped { cause, .. }) if !refused => {
                        return Err(Failed::Final(H2Error::RequestBody(cause)));
                    }
                    Some(Piped::Sent(kept) | Piped::Stopped { kept, .. }) => kept,
                    None => None,
                };
                Err(if refused {
                    Failed::Refused(e.into(), kept)
                } else if ended || e.is_io() {
                    Failed::Lost(e.into())
                } else {
                    Failed::Final(e.into())
                })
            }
        }
    }

    /// Awaits response headers; past [`Health::suspect_after`] on a connection silent as
    /// long, asks for a PING so that a dead connection is found in seconds.
    async fn await_headers(
        &self,
        state: &ConnState,
        mut response: h2::client::ResponseFuture,
    ) -> Result<Response<h2::RecvStream>, h2::Error> {
        let suspect_after = self.health.suspect_after;
        tokio::select! {
            biased;
            r = &mut response => return r,
            () = tokio::time::sleep(suspect_after) => {}
        }
        if state.silent_for() >= suspect_after {
            state.suspect.notify_one();
        }
        response.await
    }

    fn acquire(&self) -> Option<(Arc<Conn>, Slot)> {
        self.conns
            .load()
            .iter()
            .find_map(|c| Some((c.clone(), c.try_acquire()?)))
    }

    /// Takes `conn` out of the pool: no new streams; those open finish.
    fn retire(&self, conn: &Conn) {
        conn.state.closed.store(true, Ordering::Release);
        remove(&self.conns, conn.id);
    }

    /// `None`: the server speaks HTTP/1.1 only.
    async fn dial_single_flight(&self) -> Result<Option<(Arc<Conn>, Slot)>, H2Error> {
        let before = self.dials.load(Ordering::Acquire);
        let mut last_failure = self.dialing.lock().await;
        if self.http1_only.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Another request may have dialled while this one waited for the lock.
        if let Some(found) = self.acquire() {
            return Ok(Some(found));
        }
        // ...and failed: every waiter gets that answer, instead of one dial (and one
        // connect timeout) after another.
        if self.dials.load(Ordering::Acquire) != before
            && let Some(err) = &*last_failure
        {
            return Err(H2Error::Dial(err.clone()));
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
        conn.state.in_use.fetch_add(1, Ordering::AcqRel);
        conn.state.opened.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(conn.state.clone());
        self.conns.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(conn.clone());
            list
        });
        Ok(Some((conn, slot)))
    }

    async fn dial(&self) -> Result<Option<Arc<Conn>>, H2Error> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
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
        let state = Arc::new(ConnState::new());
        let io = Watched {
            io: tls.into_inner(),
            state: state.clone(),
        };
        let (send, mut connection) =
            tokio::time::timeout(self.timeout, self.builder.handshake::<_, Bytes>(io))
                .await
                .map_err(|_| H2Error::HandshakeTimeout(self.timeout))?
                .map_err(H2Error::Handshake)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ping = connection.ping_pong();
        let conns = Arc::downgrade(&self.conns);
        let driver_state = state.clone();
        let open = self.metrics.open(Open::UpstreamHttp2);
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                r = &mut connection => if let Err(e) = r {
                    tracing::debug!(conn = id, "HTTP/2 connection to the API server ended: {e}");
                },
                () = driver_state.kill.notified() => {}
            }
            driver_state.transport_ended.store(true, Ordering::Release);
            driver_state.closed.store(true, Ordering::Release);
            if let Some(conns) = conns.upgrade() {
                remove(&conns, id);
            }
            // Dropping the connection fails the streams still open on it.
            drop(connection);
        });
        if let Some(ping) = ping {
            tokio::spawn(watch_health(id, ping, Arc::downgrade(&state), self.health));
        }
        spawn_idle_reaper(id, Arc::downgrade(&state), Arc::downgrade(&self.conns));
        tracing::debug!(conn = id, "new HTTP/2 connection to the API server");
        Ok(Some(Arc::new(Conn { id, send, state })))
    }
}

/// The request head as HTTP/2 carries it: no `Host` (`:authority` comes from the URI),
/// and `content-length: 0` on an empty POST, PUT or PATCH as Go's transport (so kubectl
/// and our HTTP/1.1 path) sends it.
fn prepare_head(head: &mut Request<()>, empty: bool) {
    head.headers_mut().remove(header::HOST);
    *head.version_mut() = Version::HTTP_2;
    if empty
        && matches!(*head.method(), Method::POST | Method::PUT | Method::PATCH)
        && !head.headers().contains_key(header::CONTENT_LENGTH)
    {
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
