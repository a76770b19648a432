//! The request path: route, filter, rewrite, forward, stream back.
//!
//! Everything here runs per request and is kept free of file I/O, locks and copies of
//! bodies: the credentials are an atomic load, bodies are passed through frame by frame.

pub(crate) mod body;
mod errors;
pub mod filter;
mod forward;
pub mod headers;
mod hedge;
pub mod router;
pub(crate) mod status;
mod target;

pub use target::upstream_path_and_query;
use target::{bad_request, before_handler, is_watch};
mod upgrade;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::access::gate::{Call, Gate};
use crate::config::Upstream;
use crate::credentials::Credentials;
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::proxy::body::{AccessLog, ProxyBody, Tracked};
use crate::proxy::filter::Filter;
use crate::proxy::router::{ApiPrefix, Route};
use crate::shutdown::Shutdown;
use crate::upstream::h2pool::H2Pool;
use crate::upstream::{Connector, UpstreamClient};
use crate::www::Www;
use status::Reason;

/// Everything a request needs, built once.
pub struct Proxy {
    pub(crate) upstream: Upstream,
    pub(crate) client: UpstreamClient,
    /// `--upstream-http2`: tried first for the requests [`Http2Policy`] sends there; the
    /// HTTP/1.1 client if the server declines.
    pub(crate) h2: Option<H2Pool>,
    h2_policy: Http2Policy,
    pub(crate) connector: Connector,
    pub(crate) creds: Arc<Credentials>,
    pub(crate) filter: Option<Filter>,
    pub(crate) prefix: ApiPrefix,
    pub(crate) shutdown: Shutdown,
    pub(crate) metrics: Arc<Metrics>,
    /// Verb-and-resource metrics, `--policy`, `--qps`/`--burst`, `--record-rbac`.
    gate: Gate,
    /// Static files (`--www`); `None` keeps every request free of file I/O.
    www: Option<Www>,
    /// `--append-server-path`: put the server URL's path before each request's.
    append_server_path: bool,
    access_log: bool,
    request_timeout: Duration,
    pub(crate) watch_resume: bool,
    /// `--upstream-hedge-after`: short idempotent HTTP/1.1 requests sent once more when
    /// their response headers are late (`hedge.rs`).
    hedge: hedge::Hedge,
    disable_compression: bool,
    /// `Impersonate-*` headers from `--as`, `--as-group`, `--as-uid`.
    impersonate: Vec<(HeaderName, HeaderValue)>,
    host: HeaderValue,
    user_agent: HeaderValue,
}

/// Which requests go over HTTP/2 (`--upstream-http2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2Policy {
    /// Long-running requests (watches, followed logs) over HTTP/2, where they share a few
    /// connections; short ones over kept-alive HTTP/1.1 connections, which Go's server
    /// answers with less work per request (see the README's "HTTP/2 or HTTP/1.1").
    LongRunning,
    /// Every request over HTTP/2, as kubectl does.
    Always,
}

/// Where a request came from.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP client's address, formatted once per connection for `X-Forwarded-For`
    /// ([`Peer::tcp`]) rather than on every request.
    Tcp(HeaderValue),
    /// A unix socket: no address to put in `X-Forwarded-For`.
    Unix,
}

impl Peer {
    pub fn tcp(ip: IpAddr) -> Peer {
        Peer::Tcp(headers::forwarded_for(ip))
    }
}

const IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
const IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");
const IMPERSONATE_UID: HeaderName = HeaderName::from_static("impersonate-uid");

/// How long the API server took to send response headers; carried in the response's
/// extensions to the access log.
#[derive(Debug, Clone, Copy)]
struct UpstreamTime(Duration);

/// The parts [`Proxy`] is assembled from.
pub struct Parts {
    pub upstream: Upstream,
    pub client: UpstreamClient,
    pub h2: Option<H2Pool>,
    pub h2_policy: Http2Policy,
    pub connector: Connector,
    pub creds: Arc<Credentials>,
    pub filter: Option<Filter>,
    pub prefix: ApiPrefix,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub gate: Gate,
    pub www: Option<Www>,
    pub append_server_path: bool,
    pub access_log: bool,
    pub request_timeout: Duration,
    /// `--watch-resume`: JSON watches survive the end of their upstream stream.
    pub watch_resume: bool,
    /// `--upstream-hedge-after` (zero: no hedging).
    pub hedge_after: Duration,
}

impl Proxy {
    pub fn new(p: Parts) -> Self {
        let host = HeaderValue::from_str(p.upstream.authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let imp = &p.upstream.impersonate;
        let impersonate = imp
            .user
            .iter()
            .map(|u| (IMPERSONATE_USER, u))
            .chain(imp.groups.iter().map(|g| (IMPERSONATE_GROUP, g)))
            .chain(imp.uid.iter().map(|u| (IMPERSONATE_UID, u)))
            .filter_map(|(name, value)| Some((name, HeaderValue::from_str(value).ok()?)))
            .collect();
        let disable_compression = p.upstream.disable_compression;
        Proxy {
            upstream: p.upstream,
            client: p.client,
            h2: p.h2,
            h2_policy: p.h2_policy,
            connector: p.connector,
            creds: p.creds,
            filter: p.filter,
            prefix: p.prefix,
            shutdown: p.shutdown,
            metrics: p.metrics,
            gate: p.gate,
            www: p.www,
            append_server_path: p.append_server_path,
            access_log: p.access_log,
            request_timeout: p.request_timeout,
            watch_resume: p.watch_resume,
            hedge: hedge::Hedge::new(p.hedge_after),
            disable_compression,
            impersonate,
            host,
            user_agent: HeaderValue::from_static(concat!(
                "kube-ambassador/",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }

    /// Serves one request. Never fails: every error becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = self.access_log.then(|| req.uri().path().to_owned());
        let mut call = Call::default();
        let mut resp = self.serve(req, peer, &mut call).await;
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        self.metrics.request(&method, status, elapsed);
        self.gate.answered(&call, status, elapsed);
        if let Some(path) = path {
            let upstream = resp
                .extensions()
                .get::<UpstreamTime>()
                .map_or(Duration::ZERO, |t| t.0);
            let mut log = AccessLog {
                method,
                path,
                status,
                start,
                upstream,
                bytes: 0,
                api: call.log.unwrap_or_default(),
            };
            let body = resp.body_mut();
            match body {
                ProxyBody::Tracked(t) => t.log = Some(Box::new(log)),
                ProxyBody::Response(_) => {
                    let ProxyBody::Response(inner) = std::mem::replace(body, ProxyBody::empty())
                    else {
                        unreachable!("matched above")
                    };
                    *body = ProxyBody::Tracked(Box::new(Tracked {
                        inner,
                        stop: None,
                        watch: None,
                        log: Some(Box::new(log)),
                    }));
                }
                ProxyBody::Full(bytes) => {
                    log.bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
                }
                ProxyBody::File(file) => log.bytes = file.remaining(),
            }
        }
        Ok(resp)
    }

    async fn serve(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        call: &mut Call,
    ) -> Response<ProxyBody> {
        if let Some(answer) = before_handler(&req) {
            return answer;
        }
        let uri = req.uri().clone();
        let (raw_path, decoded) = match self.prefix.route(uri.path(), uri.query()) {
            Route::Api { raw_path, decoded } => (raw_path, decoded),
            Route::Redirect(location) => {
                return status::moved_permanently(req.method(), &location);
            }
            Route::NotFound => return status::not_found(),
            // The filter guards the API only, as in kubectl.
            Route::Static { path } => {
                return match &self.www {
                    Some(www) => {
                        Box::pin(www.serve(req.method(), req.headers(), &path, uri.query())).await
                    }
                    None => status::not_found(),
                };
            }
            Route::BadRequest => return bad_request("400 Bad Request"),
        };
        if let Some(refused) = self.refused_by_filter(&req, &decoded) {
            return refused;
        }
        // As the API server will read it: metrics labels, --policy, --qps, --record-rbac.
        let attrs = crate::access::attributes::parse(req.method().as_str(), &decoded, uri.query());
        if let Some(answer) = self.gate.admit(&attrs, call) {
            return answer;
        }
        let long_lived = is_watch(&decoded, uri.query());
        let target = match self.upstream_uri(&uri, raw_path, long_lived) {
            Some(t) => t,
            None => {
                return status::response(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    "the request target cannot be forwarded",
                );
            }
        };
        let resume = long_lived
            && self.watch_resume
            && crate::watch::is_watch_request(&decoded, uri.query());
        if headers::is_upgrade(req.headers()) {
            // Boxed, like the static-file branch: rare paths whose state would
            // otherwise enlarge every request's future.
            return Box::pin(self.upgrade(req, target, peer)).await;
        }
        let discovery = status::is_discovery(req.method(), &decoded, req.headers());
        let resp = self.forward(req, target, peer, long_lived, resume).await;
        if discovery {
            return status::for_discovery(resp);
        }
        resp
    }

    /// The filter's verdict (kubectl's rules on method, decoded path and host): `Some`
    /// answer when the request is refused. A decoded control character is refused first.
    fn refused_by_filter(
        &self,
        req: &Request<Incoming>,
        decoded: &str,
    ) -> Option<Response<ProxyBody>> {
        let filter = self.filter.as_ref()?;
        if let Some(c) = crate::proxy::filter::control_character(decoded) {
            tracing::debug!(
                method = %req.method(),
                path = %Escaped(decoded),
                "refused a path with a control character"
            );
            return Some(status::response(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                &format!(
                    "the decoded path holds a control character (U+{:04X}), which no \
                     Kubernetes name can hold",
                    u32::from(c)
                ),
            ));
        }
        // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
        let host = match req.uri().authority() {
            Some(a) => crate::proxy::filter::host_and_port(a),
            None => req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        if !filter.accepts(req.method().as_str(), decoded, host) {
            tracing::debug!(
                method = %req.method(),
                path = %Escaped(decoded),
                host = %Escaped(host),
                "filter rejected request"
            );
            return Some(status::forbidden());
        }
        None
    }

    /// Fixed origin + the client's path and query, byte for byte (but for bytes no URI
    /// may contain, see [`push_path`]); the server URL's path goes first only with
    /// `--append-server-path` (kubectl's rule: without it, that path only earns a warning
    /// at start-up).
    ///
    /// `long_lived`: the client's bytes are never shared ([`target::path_and_query_for`]).
    fn upstream_uri(&self, client: &Uri, raw_path: &str, long_lived: bool) -> Option<Uri> {
        let base = if self.append_server_path {
            self.upstream.base_path.as_str()
        } else {
            ""
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.upstream.scheme.clone());
        parts.authority = Some(self.upstream.authority.clone());
        parts.path_and_query = Some(target::path_and_query_for(
            client, base, raw_path, long_lived,
        )?);
        Uri::from_parts(parts).ok()
    }
    /// An upgrade (exec, attach, port-forward): the client's headers rewritten as for any
    /// request, then a tunnel of its own (`upgrade`).
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        target: Uri,
        peer: Peer,
    ) -> Response<ProxyBody> {
        // Take the client side's upgrade future before the request is taken apart.
        let client_side = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers.clone();
        let auth = match self.credential_for(&headers).await {
            Ok(auth) => auth,
            Err(resp) => return resp,
        };
        self.rewrite_request_headers(&mut headers, &peer, auth);
        let upstream_req = upgrade::upstream_request(parts, headers, body, &target);
        let tunnel = upgrade::Tunnel {
            connector: &self.connector,
            metrics: &self.metrics,
            shutdown: &self.shutdown,
            origin: self.upstream.origin(),
        };
        upgrade::forward(tunnel, client_side, upstream_req, target)
            .await
            .unwrap_or_else(|e| self.upstream_error(&*e))
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    fn size_of_future<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's future is one allocation (the listener boxes it) sized for its largest
    /// state, whichever path the request takes: with a dial (TCP, TLS, HTTP/2 handshake)
    /// or an exec plugin run inlined it was 12.5 KiB, and hyper held that much on every
    /// client connection. Rare paths are boxed where they run so that it stays small.
    #[test]
    fn a_requests_future_stays_small() {
        let size = size_of_future(Proxy::handle);
        assert!(size <= 6 * 1024, "Proxy::handle's future is {size} bytes");
    }
}
