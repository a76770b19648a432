//! One HTTP/2 connection as the pool sees it: its shared state (streams in use, closed,
//! when bytes last arrived), the slot guard a request holds, the health task that pings
//! it, the reaper that closes it when idle, and the transport wrapper that notes reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::upstream::body::BoxError;

/// A connection with no stream for this long (checked at this period) is closed, as the
/// HTTP/1.1 pool closes its idle connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent over HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("cannot connect: {0}")]
    Connect(#[source] BoxError),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    #[error("no HTTP/2 handshake with the API server within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(transparent)]
    Request(#[from] h2::Error),
    #[error("the HTTP/2 connection was found dead (no answer to a PING within {0:?})")]
    Dead(Duration),
    #[error("the request body could not be sent: {0}")]
    RequestBody(#[source] BoxError),
    /// The dial this request waited for failed: its error, shared by every waiter.
    #[error("{0}")]
    Dial(#[source] Arc<H2Error>),
}

/// When the pool pings a connection (`--upstream-ping-interval`, `--upstream-ping-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// A connection silent this long is pinged (client-go's `ReadIdleTimeout`, 30 s).
    pub interval: Duration,
    /// A ping not answered within this declares the connection dead.
    pub timeout: Duration,
    /// A request still without response headers after this, on a connection silent as
    /// long, has the connection pinged at once. A quiet watch is normal; a request that
    /// waits for its headers on a connection that says nothing is how a black-holed
    /// connection shows (kubernetes/kubernetes#95981).
    pub suspect_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            suspect_after: Duration::from_secs(1),
        }
    }
}

pub(super) type Conns = ArcSwap<Vec<Arc<Conn>>>;

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) send: h2::client::SendRequest<Bytes>,
    pub(super) state: Arc<ConnState>,
}

/// One connection's state, shared by the pool, its requests and its tasks.
pub(super) struct ConnState {
    /// Reserved streams: requests on this connection that have not ended.
    pub(super) in_use: AtomicUsize,
    /// Streams ever reserved: unchanged over an idle period means unused.
    pub(super) opened: AtomicU64,
    /// GOAWAY received, closed or dead: no new streams.
    pub(super) closed: AtomicBool,
    /// The transport ended (EOF, error) or the connection was declared dead. Set before
    /// h2 fails the streams, so a GOAWAY error seen with this unset is a refusal of an
    /// unprocessed stream (above the GOAWAY's last-stream-id), not a connection loss.
    pub(super) transport_ended: AtomicBool,
    /// When bytes last arrived from the server, in ms since `epoch`.
    pub(super) last_read: AtomicU64,
    pub(super) epoch: Instant,
    /// Asks the health task for a PING now.
    pub(super) suspect: Notify,
    /// Tells the driver to drop the connection (declared dead).
    pub(super) kill: Notify,
}

impl ConnState {
    pub(super) fn new() -> ConnState {
        ConnState {
            in_use: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            transport_ended: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
            epoch: Instant::now(),
            suspect: Notify::new(),
            kill: Notify::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_read.load(Ordering::Relaxed)),
        )
    }
}

/// A reserved stream slot; released on drop, however the request ends.
pub(crate) struct Slot(pub(super) Arc<ConnState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    /// Reserves a stream slot if the connection is open and below the server's limit.
    pub(super) fn try_acquire(&self) -> Option<Slot> {
        if self.state.closed.load(Ordering::Acquire) {
            return None;
        }
        let limit = self.send.current_max_send_streams();
        self.state
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.state.opened.fetch_add(1, Ordering::Relaxed);
        Some(Slot(self.state.clone()))
    }
}

/// PINGs connection `id` when it has been silent for [`Health::interval`], or at once when
/// a request suspects it; no PONG within [`Health::timeout`] declares it dead: out of the
/// pool, and its streams failed (the requests without a body among them are sent again
/// on another connection, see [`H2Pool::send`]).
pub(super) async fn watch_health(
    id: u64,
    mut ping: h2::PingPong,
    state: std::sync::Weak<ConnState>,
    health: Health,
) {
    loop {
        let Some(s) = state.upgrade() else { return };
        // Until the transport ends: a connection closed to new streams (a GOAWAY, retired)
        // still carries the streams open on it, watches for as long as they run, and
        // must still be found dead when it dies.
        if s.transport_ended.load(Ordering::Acquire) {
            return;
        }
        let wait = health.interval.saturating_sub(s.silent_for());
        let asked = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = s.suspect.notified() => true,
        };
        if !asked && s.silent_for() < health.interval {
            continue;
        }
        match tokio::time::timeout(health.timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is gone already; the driver cleans up.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    conn = id,
                    "the API server did not answer an HTTP/2 PING within {:?}; closing the connection",
                    health.timeout
                );
                s.transport_ended.store(true, Ordering::Release);
                s.closed.store(true, Ordering::Release);
                s.kill.notify_one();
                return;
            }
        }
    }
}

/// Closes connection `id` once it has carried no stream for an [`IDLE_TIMEOUT`] period:
/// out of the list, its last `SendRequest` goes and h2 ends the connection.
pub(super) fn spawn_idle_reaper(
    id: u64,
    state: std::sync::Weak<ConnState>,
    conns: std::sync::Weak<Conns>,
) {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(IDLE_TIMEOUT).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            let opened = state.opened.load(Ordering::Relaxed);
            if state.in_use.load(Ordering::Acquire) == 0 && opened == last {
                tracing::debug!(conn = id, "closing idle HTTP/2 connection");
                state.closed.store(true, Ordering::Release);
                if let Some(conns) = conns.upgrade() {
                    remove(&conns, id);
                }
                return;
            }
            last = opened;
        }
    });
}

pub(super) fn remove(conns: &Conns, id: u64) {
    conns.rcu(|list| {
        list.iter()
            .filter(|c| c.id != id)
            .cloned()
            .collect::<Vec<_>>()
    });
}

/// The TLS stream under h2, noting when bytes last arrived and when the transport ended.
pub(super) struct Watched<T> {
    pub(super) io: T,
    pub(super) state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.state
                    .last_read
                    .store(this.state.now_ms(), Ordering::Relaxed);
            }
            Poll::Ready(_) => this.state.transport_ended.store(true, Ordering::Release),
            Poll::Pending => {}
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
