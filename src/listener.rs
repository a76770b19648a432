//! The client-facing side: bind, accept, serve each connection with hyper (HTTP/1.1 with
//! upgrades, or HTTP/2 prior-knowledge "h2c"), and drain on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Open;
use crate::proxy::{Peer, Proxy};
use crate::shutdown::Shutdown;

/// How long a client may take to send a request's headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binding failed; the message is kubectl's (`listen tcp ADDR: bind: …`).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listen tcp {addr}: bind: {reason}")]
    Bind { addr: String, reason: String },
    #[error("invalid --address {0:?}: not an IP address or a resolvable host name")]
    Address(String),
}

/// Resolves `--address` (`127.0.0.1`, `::1`, `[::1]`, `localhost`) and binds.
pub async fn bind(address: &str, port: u16) -> Result<TcpListener, ListenError> {
    let host = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ListenError::Address(address.to_owned()))?,
    };
    TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError::Bind {
            addr: addr.to_string(),
            reason: go_errno_text(&e),
        })
}

/// Go spells socket errors in lower case without the errno; scripts grep for it.
fn go_errno_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        AddrInUse => "address already in use".to_owned(),
        AddrNotAvailable => "cannot assign requested address".to_owned(),
        PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Accepts until shutdown starts, then lets each connection finish gracefully.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: Shutdown) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.stopping() => break,
        };
        tokio::spawn(connection(
            stream,
            Peer::Tcp(remote.ip()),
            proxy.clone(),
            builder.clone(),
            shutdown.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: Peer,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: Shutdown,
) {
    let _guard = shutdown.guard();
    let _open = proxy.metrics.open(Open::Connection);
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| proxy.clone().handle(req, peer));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.stopping() => {
            // Finish the request in flight, then close; idle keep-alives close now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("client connection ended: {e}");
    }
}
