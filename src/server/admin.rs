//! The admin listener (`--admin-address`): `/healthz`, `/readyz` and `/metrics`, for the
//! kubelet's probes and Prometheus. It never proxies: port 8001's `/healthz` belongs to
//! the API server.
//!
//! Readiness needs the API server to have answered recently, but a probe must not cost
//! the API server a request: a background task asks `/version` only when no proxied
//! request has been answered for a while, so the load is bounded whatever the probe rate.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::credentials::{Credentials, TokenSource};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::body::ProxyBody;
use crate::server::{Accepted, Listener, ServeOptions, accept_loop};
use crate::shutdown::Shutdown;

/// The API server counts as up if it answered within this window.
pub(crate) const READY_WINDOW: Duration = Duration::from_secs(30);
/// With no answer for this long, the background task asks the API server itself.
const PROBE_AFTER: Duration = Duration::from_secs(10);

struct Admin {
    metrics: Arc<Metrics>,
    registry: Registry,
    creds: Arc<Credentials>,
}

/// Binds the admin address.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener, crate::server::ListenError> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| crate::server::ListenError::Address(addr.to_owned()))?;
    crate::server::bind(host, port).await
}

/// Streams an HTTP/2 admin client may open at once: a probe or a scrape needs one.
const ADMIN_STREAMS: u32 = 16;

/// Serves the admin endpoints and keeps the readiness signal fresh. The listener often
/// binds every interface (the manifests' `0.0.0.0:8081`), so it has the main listener's
/// limits: `--header-read-timeout` and `--max-connections` (counted on its own).
pub(crate) fn spawn(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    options: ServeOptions,
) {
    let admin = Arc::new(Admin {
        metrics: proxy.metrics.clone(),
        registry: proxy.metrics.registry(),
        creds: proxy.creds.clone(),
    });
    tokio::spawn(prober(proxy, shutdown.clone()));
    let header_timeout =
        (!options.header_read_timeout.is_zero()).then_some(options.header_read_timeout);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().max_concurrent_streams(ADMIN_STREAMS);
    let builder = Arc::new(builder);
    let open = Arc::new(AtomicUsize::new(0));
    let listener = Listener::from(listener);
    tokio::spawn(async move {
        let max = options.max_connections;
        accept_loop(
            &listener,
            &shutdown,
            &open,
            max,
            "admin accept",
            |accepted, counted| {
                let (admin, builder) = (admin.clone(), builder.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    let service = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.serve(&req)) }
                    });
                    // The admin listener binds TCP only.
                    let Accepted::Tcp(stream, _) = accepted else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            },
        )
        .await;
    });
}

async fn prober(proxy: Arc<Proxy>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(PROBE_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.stopping() => return,
        }
        let fresh = proxy
            .metrics
            .since_last_answer()
            .is_some_and(|d| d < PROBE_AFTER);
        if !fresh {
            proxy.probe().await;
        }
    }
}

impl Admin {
    fn serve(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/healthz" | "/livez" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => self.metrics(),
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn readyz(&self) -> Response<ProxyBody> {
        let has_credentials =
            *self.creds.source() == TokenSource::None || self.creds.header().is_some();
        if !has_credentials {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no credentials loaded\n");
        }
        match self.metrics.since_last_answer() {
            Some(d) if d <= READY_WINDOW => plain(StatusCode::OK, "ok\n"),
            Some(_) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the API server has not answered recently\n",
            ),
            None => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the API server is not answering\n",
            ),
        }
    }

    fn metrics(&self) -> Response<ProxyBody> {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
        let mut resp = Response::new(ProxyBody::full(Bytes::from(out)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }
}

fn plain(code: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
