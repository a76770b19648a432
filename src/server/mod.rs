//! The client-facing side: bind (TCP, or a unix socket with `--unix-socket`), accept,
//! serve each connection with hyper (HTTP/1.1 with upgrades, or HTTP/2 prior-knowledge
//! "h2c"), and drain on shutdown. Both kinds of listener share one accept loop and one
//! connection path; only the peer differs (a unix client has no address for
//! `X-Forwarded-For`).

pub(crate) mod admin;
mod bind;

pub(crate) use bind::{
    Accepted, ListenError, Listener, bind, bind_unix, raise_open_files_limit, socket_addr,
};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

use crate::metrics::Open;
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::{Peer, Proxy};
use crate::shutdown::Shutdown;

/// How long a client may take to send a request's headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `--max-connections`' default. Each watch holds a connection and costs about 10 KiB,
/// so 2,048 leave room for the 1,000 watches of the benchmark twice over in a few tens
/// of MiB; but a connection (or h2c stream) whose reader stops reading pins more than a
/// MiB (the API server stream's 1 MiB window, and our send buffer: 64 KiB on an h2c
/// stream, up to hyper's 400 KiB on an HTTP/1.1 connection), and without a limit an app's
/// bug could pin memory and descriptors without bound.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// The h2c budget of one client connection. hyper's defaults (200 streams, 1 MiB
/// windows, 400 KiB send buffer per stream) let one connection pin about 1.4 MiB per
/// unread response, 270 MiB in all. RFC 9113 §6.5.2 recommends allowing at least 100
/// streams; a send buffer of 64 KiB (one of the API server's DATA frames) keeps a
/// response flowing without a reserve per stream. Request bodies get 256 KiB per stream
/// and 1 MiB per connection (all streams together) of window.
const H2C_MAX_STREAMS: u32 = 100;
const H2C_SEND_BUFFER: usize = 64 * 1024;
const H2C_STREAM_WINDOW: u32 = 256 * 1024;
const H2C_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// How long a client may take to send a request's headers, including the wait for
    /// the next request on an idle keep-alive connection (slowloris guard; kubectl has
    /// none). Never applies while a response — a watch — or a tunnel is running.
    pub header_read_timeout: Duration,
    /// Refuse connections beyond this many open ones, each h2c stream counting as one
    /// more (0: no limit).
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Accepts until shutdown starts, then lets each connection finish gracefully. The
/// listener is dropped on return, which removes a unix socket's file.
pub(crate) async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    options: ServeOptions,
) {
    let header_timeout =
        (!options.header_read_timeout.is_zero()).then_some(options.header_read_timeout);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    auto.http2()
        .max_concurrent_streams(H2C_MAX_STREAMS)
        .max_send_buf_size(H2C_SEND_BUFFER)
        .initial_stream_window_size(H2C_STREAM_WINDOW)
        .initial_connection_window_size(H2C_CONNECTION_WINDOW);
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let open = Arc::new(AtomicUsize::new(0));
    let builder = Arc::new(Builders {
        auto,
        http1,
        header_timeout,
        budget: Budget {
            open: open.clone(),
            max: options.max_connections,
        },
    });
    accept_loop(
        &listener,
        &shutdown,
        &open,
        options.max_connections,
        "accept",
        |accepted, counted| {
            let (proxy, builder, shutdown) = (proxy.clone(), builder.clone(), shutdown.clone());
            match accepted {
                Accepted::Tcp(stream, ip) => tokio::spawn(connection(
                    stream,
                    Peer::tcp(ip),
                    proxy,
                    builder,
                    shutdown,
                    counted,
                )),
                Accepted::Unix(stream) => tokio::spawn(connection(
                    stream,
                    Peer::Unix,
                    proxy,
                    builder,
                    shutdown,
                    counted,
                )),
            };
        },
    )
    .await;
}

/// The accept loop both listeners run, until shutdown starts: a connection within `max`
/// open ones (`--max-connections`; 0: no limit) goes to `serve` with its place counted in
/// `open`; one past it gets [`refuse`]'s 503. An accept error (EMFILE and friends) backs
/// off briefly instead of spinning; `what` names the listener in its warning.
pub(crate) async fn accept_loop(
    listener: &Listener,
    shutdown: &Shutdown,
    open: &Arc<AtomicUsize>,
    max: usize,
    what: &str,
    mut serve: impl FnMut(Accepted, Counted),
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("{what} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.stopping() => return,
        };
        if max > 0 && open.load(Ordering::Acquire) >= max {
            tokio::spawn(refuse(accepted, max));
            continue;
        }
        serve(accepted, Counted::new(open));
    }
}

/// How client connections are served.
struct Builders {
    /// HTTP/1.1 or HTTP/2 ("h2c", prior knowledge), told apart by the first bytes.
    auto: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 alone, for a connection whose first bytes already rule HTTP/2 out.
    http1: http1::Builder,
    header_timeout: Option<Duration>,
    /// `--max-connections`, which h2c streams count against too.
    budget: Budget,
}

/// What all client connections may hold together: `max` open connections, each h2c
/// stream counting as one more, since each in-flight response may pin as much memory as
/// an HTTP/1.1 connection's (see [`DEFAULT_MAX_CONNECTIONS`]). Without this, streams over
/// a few connections would escape the limit.
struct Budget {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl Budget {
    /// A place for one more h2c stream, held until its response body is done; `Err` when
    /// the budget is spent. No limit, nothing to hold.
    fn stream(&self) -> Result<Option<Counted>, usize> {
        if self.max == 0 {
            return Ok(None);
        }
        if self.open.load(Ordering::Acquire) >= self.max {
            return Err(self.max);
        }
        Ok(Some(Counted::new(&self.open)))
    }
}

/// A response body holding its h2c stream's place in the [`Budget`] until hyper drops
/// it, that is, until the stream is done or reset.
struct Budgeted {
    body: ProxyBody,
    _place: Option<Counted>,
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The answer to an h2c stream over the budget: a 503 Status on that stream alone; the
/// connection and its other streams go on.
fn over_budget(max: usize) -> Response<Budgeted> {
    let message = format!(
        "kube-ambassador is serving its maximum of {max} connections and h2c streams \
         (--max-connections); retry later"
    );
    tracing::warn!("{message}");
    let mut resp: Response<ProxyBody> = crate::proxy::status::response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        crate::proxy::status::Reason::ServiceUnavailable,
        &message,
    );
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp.map(|body| Budgeted { body, _place: None })
}

/// Which server a connection goes to.
enum Server {
    /// Its first bytes cannot begin HTTP/2's preface: hyper's HTTP/1 server takes it.
    Http1,
    /// The general server, which tells HTTP/1.1 from h2c itself.
    Detect,
}

/// A client connection's stream.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Looks at the client's first bytes without consuming them to choose the [`Server`].
    /// `None` closes the connection: nothing arrived within the header read timeout
    /// (slowloris).
    ///
    /// Why not always the general path: it reads the first 24 bytes on their own to tell
    /// the protocols apart, and hyper, reading the rest of the request after them, grows
    /// its read buffer from 8 to 16 KiB, which a watch then holds for its lifetime. Served
    /// directly, 1,000 watches hold about 3 MiB less.
    async fn server(&self, header_timeout: Option<Duration>) -> Option<Server>;
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl ClientStream for TcpStream {
    async fn server(&self, header_timeout: Option<Duration>) -> Option<Server> {
        let mut first = [0u8; H2_PREFACE.len()];
        let peeked = match header_timeout {
            Some(limit) => tokio::time::timeout(limit, self.peek(&mut first))
                .await
                .ok()?,
            None => self.peek(&mut first).await,
        };
        Some(match peeked {
            Ok(n) if n > 0 && !H2_PREFACE.starts_with(&first[..n]) => Server::Http1,
            // A possible preface, or end of stream or an error: the general path tells,
            // or ends the connection as it always has.
            _ => Server::Detect,
        })
    }
}

/// tokio's unix stream cannot peek; its few clients take the general path.
impl ClientStream for UnixStream {
    async fn server(&self, _: Option<Duration>) -> Option<Server> {
        Some(Server::Detect)
    }
}

/// Counts one open connection until dropped.
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection over `--max-connections` with a 503 Status and closes it; a
/// client that does not read gets at most a second of our time.
async fn refuse(accepted: Accepted, max: usize) {
    let message = format!(
        "kube-ambassador is serving its maximum of {max} connections (--max-connections; each h2c stream counts as one more); retry later"
    );
    tracing::warn!("{message}");
    let body = crate::proxy::status::body(
        http::StatusCode::SERVICE_UNAVAILABLE,
        crate::proxy::status::Reason::ServiceUnavailable,
        &message,
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        match accepted {
            Accepted::Tcp(mut s, _) => {
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            }
            Accepted::Unix(mut s) => {
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

async fn connection<S>(
    stream: S,
    peer: Peer,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    shutdown: Shutdown,
    _counted: Counted,
) where
    S: ClientStream,
{
    let _guard = shutdown.guard();
    let _open = proxy.metrics.open(Open::Connection);
    let server = tokio::select! {
        server = stream.server(builders.header_timeout) => server,
        () = shutdown.stopping() => None,
    };
    let Some(server) = server else {
        return;
    };
    let io = TokioIo::new(stream);
    match server {
        Server::Http1 => {
            // Boxed per request: hyper keeps the service future's slot allocated for the
            // whole connection, so an unboxed one would hold its full size (kilobytes) on
            // every open connection, watches included; a box is freed as soon as the
            // response head is out.
            let service = service_fn(move |req| Box::pin(proxy.clone().handle(req, peer.clone())));
            // Pinned here and lent to drive: moved into it, the connection (hyper's
            // dispatcher, about 700 bytes) would have a slot in this future and another
            // in drive's, both kept in every connection's task for its lifetime.
            let conn = std::pin::pin!(builders.http1.serve_connection(io, service).with_upgrades());
            drive(conn, &shutdown, |c| c.graceful_shutdown()).await;
        }
        Server::Detect => {
            // Each h2c stream takes a place in the budget for as long as its response
            // runs; HTTP/1.1 (a unix-socket client) holds only its connection's.
            let b = builders.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let place = if req.version() == http::Version::HTTP_2 {
                    b.budget.stream()
                } else {
                    Ok(None)
                };
                let (proxy, peer) = (proxy.clone(), peer.clone());
                Box::pin(async move {
                    let place = match place {
                        Ok(place) => place,
                        Err(max) => return Ok(over_budget(max)),
                    };
                    let resp = proxy.handle(req, peer).await?;
                    Ok::<_, std::convert::Infallible>(resp.map(|body| Budgeted {
                        body,
                        _place: place,
                    }))
                })
            });
            // Boxed: h2c and unix-socket clients are few, and inline this branch's state
            // would make every connection's task as large as it (about a kilobyte more).
            let mut conn = Box::pin(builders.auto.serve_connection_with_upgrades(io, service));
            drive(conn.as_mut(), &shutdown, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Runs a connection to its end; when shutdown starts, the request in flight finishes
/// and the connection closes (an idle keep-alive one closes at once).
/// It borrows the connection, pinned by the caller, so that its own future holds a
/// pointer rather than a second copy of the connection.
async fn drive<C, E>(mut conn: Pin<&mut C>, shutdown: &Shutdown, graceful: impl FnOnce(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.stopping() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("client connection ended: {e}");
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    fn size_of_future<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every client connection's task holds this future for the connection's lifetime (a
    /// watch's included), so its size is paid per connection: 1,720 bytes when drive took
    /// the hyper connection by value, since it then had a slot here and one in drive's
    /// state.
    #[test]
    fn a_connections_future_stays_small() {
        let size = size_of_future(connection::<TcpStream>);
        assert!(size < 1200, "connection's future is {size} bytes");
    }
}
