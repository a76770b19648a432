//! Connections to the API server: TCP (directly, or through `--proxy-url`'s HTTP CONNECT
//! or SOCKS5 tunnel), then TLS with the configured CA and server name, with one deadline
//! for connect and handshake together. The URI handed to it is always built from the
//! fixed upstream origin (see `proxy`), so nothing a caller sends can make it dial
//! anywhere else.

use base64::Engine as _;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::body::{BoxError, RequestBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};

use crate::config::Upstream;
use crate::tls::Tls;

/// hyper-rustls over TCP, with one deadline for TCP connect *and* TLS handshake: a
/// server that accepts TCP but never completes the handshake must not hang a request.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<Dial>,
    timeout: Duration,
}

/// How TCP reaches the API server: directly, or through the kubeconfig's `proxy-url`
/// (an HTTP CONNECT tunnel or SOCKS5, as client-go supports).
#[derive(Clone)]
pub(crate) enum Dial {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
    Socks(SocksV5<HttpConnector>),
}

impl Dial {
    fn new(tcp: HttpConnector, proxy: Option<&Uri>) -> Dial {
        let Some(proxy) = proxy else {
            return Dial::Direct(tcp);
        };
        // Credentials in the proxy URL become proxy authentication, never part of the
        // address we dial.
        let (userinfo, hostport) = match proxy.authority().map(|a| a.as_str()) {
            Some(a) => match a.rsplit_once('@') {
                Some((user, host)) => (Some(user.to_owned()), host.to_owned()),
                None => (None, a.to_owned()),
            },
            None => (None, String::new()),
        };
        let scheme = proxy.scheme_str().unwrap_or("http");
        let dst: Uri = format!(
            "{}://{hostport}",
            if scheme == "http" { "http" } else { "socks5" }
        )
        .parse()
        .unwrap_or_else(|_| proxy.clone());
        let creds = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => (user.to_owned(), pass.to_owned()),
            None => (u, String::new()),
        });
        if scheme == "http" {
            let mut tunnel = Tunnel::new(dst, tcp);
            if let Some((user, pass)) = creds {
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{pass}").as_bytes());
                if let Ok(mut v) = http::HeaderValue::try_from(format!("Basic {basic}")) {
                    v.set_sensitive(true);
                    tunnel = tunnel.with_auth(v);
                }
            }
            Dial::Tunnel(tunnel)
        } else {
            // The proxy resolves the API server's name, as Go's SOCKS5 dialer has it do.
            let mut socks = SocksV5::new(dst, tcp).local_dns(false);
            if let Some((user, pass)) = creds {
                socks = socks.with_auth(user, pass);
            }
            Dial::Socks(socks)
        }
    }
}

type Tcp = TokioIo<TcpStream>;

impl Service<Uri> for Dial {
    type Response = Tcp;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Tcp, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Dial::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Dial::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
            Dial::Socks(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Dial::Direct(c) => {
                let f = c.call(uri);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Dial::Tunnel(c) => {
                let f = c.call(uri);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Dial::Socks(c) => {
                let f = c.call(uri);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
        }
    }
}

pub(crate) type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS connection within {limit:?}"),
                )
                .into()),
            }
        })
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub connect_timeout: Duration,
    /// TCP keep-alive period: idle time before the first probe and between probes.
    pub keepalive: Duration,
}

impl ConnectOptions {
    /// The keep-alive period when `--keepalive` is 0: client-go's dialer's 30 s
    /// (`transport/cache.go`, `net.Dialer{KeepAlive: 30 * time.Second}`), which kubectl
    /// proxy's API requests always use (its `--keepalive` reaches only its upgrade
    /// transport, `makeUpgradeTransport` in kubectl's `pkg/proxy/proxy_server.go`).
    pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

    /// `--keepalive`, with 0 meaning [`Self::DEFAULT_KEEPALIVE`]: an API server
    /// connection always has TCP keep-alive, so a peer that vanished without a FIN
    /// (a node gone, a NAT entry dropped) is found by the kernel, and the pool stops
    /// offering that connection.
    pub(crate) fn keepalive_or_default(flag: Duration) -> Duration {
        if flag.is_zero() {
            Self::DEFAULT_KEEPALIVE
        } else {
            flag
        }
    }
}

/// The connector, shared by the pooled client and by upgrades (which need a fresh one).
/// For a plain `http://` upstream the TLS settings are present but never used.
pub(crate) fn connector(upstream: &Upstream, tls: &Tls, opts: &ConnectOptions) -> Connector {
    build_connector(upstream, tls, opts, false)
}

/// The same connector offering `h2, http/1.1` in ALPN, for the HTTP/2 pool
/// (`--upstream-http2`, see `h2pool`).
pub(crate) fn connector_h2(upstream: &Upstream, tls: &Tls, opts: &ConnectOptions) -> Connector {
    build_connector(upstream, tls, opts, true)
}

fn build_connector(upstream: &Upstream, tls: &Tls, opts: &ConnectOptions, h2: bool) -> Connector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    // The whole connect, handshake included, is bounded by `Connector`.
    tcp.set_connect_timeout(None);
    // Go's dialer sets the same period for both (Go's `net.Dialer.KeepAlive`); the probe
    // count stays the kernel's (9 on Linux, as Go leaves it).
    tcp.set_keepalive(Some(opts.keepalive));
    tcp.set_keepalive_interval(Some(opts.keepalive));
    let builder =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls.client_config()).clone());
    let builder = if upstream.scheme == http::uri::Scheme::HTTPS {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    let builder = builder
        .with_server_name_resolver(FixedServerNameResolver::new(upstream.server_name.clone()))
        .enable_http1();
    let dial = Dial::new(tcp, upstream.proxy_url.as_ref().map(|p| &p.0));
    let inner = if h2 {
        builder.enable_http2().wrap_connector(dial)
    } else {
        builder.wrap_connector(dial)
    };
    Connector {
        inner,
        timeout: opts.connect_timeout,
    }
}

/// A connection of its own to `target` over HTTP/1.1, outside the pool (an upgrade, a
/// hedge): its sender, and the connection for the caller to drive, with upgrades or
/// without. Requests on it take the origin form ([`origin_form`]).
pub(crate) async fn dial_http1(
    connector: &Connector,
    target: Uri,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<RequestBody>,
        hyper::client::conn::http1::Connection<Stream, RequestBody>,
    ),
    BoxError,
> {
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let io = connector.call(target).await?;
    Ok(hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await?)
}

/// The origin form HTTP/1.1 puts on the wire (`/path?query`, RFC 9112 §3.2.1); the
/// connector is handed the full URI.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}
