//! The request path: route, filter, rewrite, forward, stream back.
//!
//! Everything here runs per request and is kept free of file I/O, locks and copies of
//! bodies: the credentials are an atomic load, bodies are passed through frame by frame.

pub(crate) mod body;
pub mod filter;
pub mod headers;
pub mod router;
pub(crate) mod status;
mod upgrade;

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};

use crate::access::gate::{Call, Gate};
use crate::config::Upstream;
use crate::credentials::Credentials;
use crate::logging::Escaped;
use crate::metrics::{Metrics, Open, UpstreamErrorKind};
use crate::proxy::body::{AccessLog, ProxyBody, Tracked};
use crate::proxy::filter::Filter;
use crate::proxy::router::{ApiPrefix, Route};
use crate::shutdown::Shutdown;
use crate::upstream::h2pool::{H2Error, H2Pool, Sent};
use crate::upstream::{Connector, UpstreamClient};
use crate::upstream::{RequestBody, UpstreamBody};
use crate::watch::Rewatch;
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
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(IpAddr),
    /// A unix socket: no address to put in `X-Forwarded-For`.
    Unix,
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
                ProxyBody::Tracked(t) => t.log = Some(log),
                ProxyBody::Response(_) => {
                    let ProxyBody::Response(inner) = std::mem::replace(body, ProxyBody::empty())
                    else {
                        unreachable!("matched above")
                    };
                    *body = ProxyBody::Tracked(Box::new(Tracked {
                        inner,
                        stop: None,
                        watch: None,
                        log: Some(log),
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
        if let Some(refused) = host_error(&req) {
            return refused;
        }
        // `OPTIONS *` asks about the server itself: Go's server (so kubectl) answers it.
        if req.method() == Method::OPTIONS && req.uri() == "*" {
            let mut resp = Response::new(ProxyBody::empty());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return resp;
        }
        if req.method() == Method::CONNECT || req.uri().path() == "*" {
            return status::response(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                "CONNECT and asterisk-form requests are not proxied",
            );
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
        if let Some(filter) = &self.filter {
            if let Some(c) = crate::proxy::filter::control_character(&decoded) {
                tracing::debug!(
                    method = %req.method(),
                    path = %Escaped(&decoded),
                    "refused a path with a control character"
                );
                return status::response(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    &format!(
                        "the decoded path holds a control character (U+{:04X}), which no \
                         Kubernetes name can hold",
                        u32::from(c)
                    ),
                );
            }
            // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
            let host = match uri.authority() {
                Some(a) => crate::proxy::filter::host_and_port(a),
                None => req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(""),
            };
            if !filter.accepts(req.method().as_str(), &decoded, host) {
                tracing::debug!(
                    method = %req.method(),
                    path = %Escaped(&decoded),
                    host = %Escaped(host),
                    "filter rejected request"
                );
                return status::forbidden();
            }
        }
        // As the API server will read it: metrics labels, --policy, --qps, --record-rbac.
        let attrs = crate::access::attributes::parse(req.method().as_str(), &decoded, uri.query());
        if let Some(answer) = self.gate.admit(&attrs, call) {
            return answer;
        }
        let target = match self.upstream_uri(raw_path, uri.query()) {
            Some(t) => t,
            None => {
                return status::response(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    "the request target cannot be forwarded",
                );
            }
        };
        let long_lived = is_watch(&decoded, uri.query());
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

    /// Fixed origin + the client's path and query, byte for byte (but for bytes no URI
    /// may contain, see [`push_path`]); the server URL's path goes first only with
    /// `--append-server-path` (kubectl's rule: without it, that path only earns a warning
    /// at start-up).
    fn upstream_uri(&self, raw_path: &str, query: Option<&str>) -> Option<Uri> {
        let base = if self.append_server_path {
            self.upstream.base_path.as_str()
        } else {
            ""
        };
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(upstream_path_and_query(base, raw_path, query)?)
            .build()
            .ok()
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
        self.rewrite_request_headers(&mut headers, peer, auth);
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

    /// Rewrites the request headers for the upstream. Returns the credential it added.
    pub(crate) fn rewrite_request_headers(
        &self,
        headers: &mut HeaderMap,
        peer: Peer,
        auth: Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        headers::strip_hop_by_hop(headers);
        headers.insert(header::HOST, self.host.clone());
        if let Peer::Tcp(ip) = peer {
            headers::append_forwarded_for(headers, ip);
        }
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        if self.disable_compression {
            headers.remove(header::ACCEPT_ENCODING);
        }
        // A caller's own Impersonate-User replaces --as and --as-group, as in kubectl.
        if !self.impersonate.is_empty() && !headers.contains_key(IMPERSONATE_USER) {
            for (name, value) in &self.impersonate {
                headers.append(name, value.clone());
            }
        }
        // A caller's own Authorization wins, as in kubectl.
        if headers.contains_key(header::AUTHORIZATION) {
            return None;
        }
        let auth = auth?;
        headers.insert(header::AUTHORIZATION, auth.clone());
        Some(auth)
    }

    /// The credential for a request that carries none of its own: the cached one, after
    /// running the exec plugin if needed. `Err` is the response to give instead.
    pub(crate) async fn credential_for(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, Response<ProxyBody>> {
        if headers.contains_key(header::AUTHORIZATION) {
            return Ok(None);
        }
        self.creds.for_request().await.map_err(|e| {
            let timeout = matches!(e, crate::credentials::ExecError::Timeout { .. });
            let message = format!(
                "cannot get credentials for the API server at {}: {e}",
                self.upstream.origin()
            );
            tracing::warn!("{message}");
            if timeout {
                status::response(StatusCode::GATEWAY_TIMEOUT, Reason::Timeout, &message)
            } else {
                status::response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::ServiceUnavailable,
                    &message,
                )
            }
        })
    }

    /// Sends to the API server within `--request-timeout` (time to response headers);
    /// `Err` is the Status response to give instead.
    pub(crate) async fn send(
        &self,
        req: Request<RequestBody>,
        replay: Option<&HeaderMap>,
        long_lived: bool,
    ) -> Result<Response<UpstreamBody>, Response<ProxyBody>> {
        let attempt = self.request_replaying(req, replay, long_lived);
        let result = if self.request_timeout.is_zero() {
            attempt.await
        } else {
            match tokio::time::timeout(self.request_timeout, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    self.metrics.upstream_error(UpstreamErrorKind::Timeout);
                    let message = format!(
                        "the API server at {} did not answer within {:?} (--request-timeout)",
                        self.upstream.origin(),
                        self.request_timeout
                    );
                    tracing::warn!("{message}");
                    return Err(status::response(
                        StatusCode::GATEWAY_TIMEOUT,
                        Reason::Timeout,
                        &message,
                    ));
                }
            }
        };
        match result {
            Ok(resp) => {
                self.metrics.upstream_answered();
                Ok(resp)
            }
            Err(e) => Err(self.upstream_error(&e)),
        }
    }

    /// Sends `req`; a replayable one (no body, idempotent method: `replay` holds its
    /// headers) that meets a kept-alive connection the API server had already closed is
    /// sent again, as Go's transport (and so kubectl proxy) does: the pool can hand out
    /// such a connection in the instant before it notices the close. Each failed attempt
    /// drops one dead connection.
    async fn request_replaying(
        &self,
        req: Request<RequestBody>,
        replay: Option<&HeaderMap>,
        long_lived: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let again = replay
            .filter(|_| idempotent(req.method()))
            .map(|headers| (req.method().clone(), req.uri().clone(), headers));
        let mut result = self.dispatch(req, replay, long_lived).await;
        if let Some((method, uri, headers)) = again {
            for _ in 0..STALE_CONNECTION_RETRIES {
                match &result {
                    Err(e) if closed_connection(e) => {
                        tracing::debug!(
                            "kept-alive connection closed by the API server ({e}); sending again"
                        );
                        let req = build(&method, &uri, headers.clone(), RequestBody::Empty);
                        result = self.dispatch(req, Some(headers), long_lived).await;
                    }
                    _ => break,
                }
            }
        }
        result
    }

    /// One attempt: over HTTP/2 when enabled for this kind of request and the server
    /// speaks it, else HTTP/1.1. (The HTTP/2 pool retries what it safely can itself, from
    /// `replay`: the headers of a bodiless request, the one copy the caller keeps.)
    pub(crate) async fn dispatch(
        &self,
        req: Request<RequestBody>,
        replay: Option<&HeaderMap>,
        long_lived: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let req = match &self.h2 {
            // Boxed: the HTTP/2 attempt's state (its retry copy, timers, reset handle)
            // would otherwise enlarge every request's future, the short HTTP/1.1 ones
            // included (see `future_size`).
            Some(pool) if long_lived || self.h2_policy == Http2Policy::Always => {
                match Box::pin(pool.send(req, replay)).await? {
                    Sent::Response(resp) => return Ok(resp.map(UpstreamBody::Http2)),
                    Sent::Http1(req) => req,
                }
            }
            _ => req,
        };
        Ok(self.client.request(req).await?.map(UpstreamBody::Http1))
    }

    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        mut target: Uri,
        peer: Peer,
        long_lived: bool,
        resume: bool,
    ) -> Response<ProxyBody> {
        let arrived = tokio::time::Instant::now();
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let auth = match self.credential_for(&headers).await {
            Ok(auth) => auth,
            Err(resp) => return resp,
        };
        let sent = self.rewrite_request_headers(&mut headers, peer, auth);
        let ours = sent.is_some();
        // A request without a body can be sent again: after a 401 if a newer credential
        // shows up, after the API server refused it unprocessed (any method, HTTP/2), and
        // (idempotent ones) after meeting a connection that had closed. One header-map
        // copy serves all three; no body is ever kept.
        let renewable = sent.is_some() && self.creds.can_change();
        let replay = body.is_end_stream().then(|| headers.clone());
        let method = parts.method;
        // `--watch-resume`: what a re-watch needs; the first request may ask for bookmarks.
        let mut plan = resume
            .then(|| crate::watch::Plan::new(&target, &headers, sent.is_some(), arrived))
            .flatten();
        if let Some(first) = plan.as_mut().and_then(crate::watch::Plan::first_target) {
            target = first;
        }
        let upstream_req = build(&method, &target, headers, RequestBody::Stream(body));
        let sent_at = Instant::now();
        let mut resp = match self.send(upstream_req, replay.as_ref(), long_lived).await {
            Ok(resp) => resp,
            Err(resp) => return resp,
        };
        if resp.status() == StatusCode::UNAUTHORIZED
            && renewable
            && let (Some(sent), Some(mut headers)) = (sent, replay)
            && let Some(newer) = Box::pin(self.creds.refresh_after_unauthorized(&sent)).await
        {
            tracing::info!("API server refused the credential; retrying with the renewed one");
            headers.insert(header::AUTHORIZATION, newer);
            let retry = build(&method, &target, headers.clone(), RequestBody::Empty);
            resp = match Box::pin(self.send(retry, Some(&headers), long_lived)).await {
                Ok(resp) => resp,
                Err(resp) => return resp,
            };
        }
        if ours && resp.status() == StatusCode::UNAUTHORIZED {
            self.creds.unauthorized();
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        // Our side speaks its own protocol version, whatever the upstream spoke.
        parts.version = Version::default();
        parts.extensions.insert(UpstreamTime(sent_at.elapsed()));
        let body = if long_lived {
            let inner = match plan {
                Some(plan) if crate::watch::resumable_response(parts.status, &parts.headers) => {
                    UpstreamBody::Resumed(Box::pin(crate::watch::Resuming::new(
                        self.clone() as Arc<dyn Rewatch>,
                        plan,
                        body,
                    )))
                }
                _ => body,
            };
            ProxyBody::Tracked(Box::new(Tracked {
                inner,
                stop: Some(self.shutdown.watches_end()),
                watch: Some(self.metrics.open(Open::Watch)),
                log: None,
            }))
        } else {
            ProxyBody::Response(body)
        };
        Response::from_parts(parts, body)
    }

    /// Asks the API server for `/version` (readable by everyone) to learn whether it is
    /// answering; the outcome lands in the metrics that `/readyz` reads.
    pub async fn probe(&self) {
        let Some(target) = self.upstream_uri("/version", None) else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        if let Some(auth) = self.creds.for_request().await.ok().flatten() {
            headers.insert(header::AUTHORIZATION, auth);
        }
        let req = build(&Method::GET, &target, headers, RequestBody::Empty);
        // Over the connections requests use (HTTP/2 where the server speaks it).
        match self.dispatch(req, None, false).await {
            Ok(_) => self.metrics.upstream_answered(),
            Err(e) => {
                let (_, _, kind, what) = classify(&e);
                self.metrics.upstream_error(kind);
                tracing::debug!("readiness probe of the API server failed: {what}");
            }
        }
    }

    /// A Status response for a failure to get an answer from the API server.
    pub(crate) fn upstream_error(
        &self,
        err: &(dyn std::error::Error + 'static),
    ) -> Response<ProxyBody> {
        tracing::debug!("upstream error chain: {err:?}");
        let (code, reason, kind, what) = classify(err);
        self.metrics.upstream_error(kind);
        let message = format!(
            "error trying to reach the API server at {}: {what}",
            self.upstream.origin()
        );
        tracing::warn!("{message}");
        status::response(code, reason, &message)
    }
}

/// The path and query the API server is sent: `base` (the server URL's path, or `""`),
/// then `raw_path` (the escaped path below the API prefix) and `query`, byte for byte but
/// for bytes no URI may hold (see [`push_path`]). `None` if that is no valid request
/// target. Pure, so `fuzz/` checks it against the filter's decision.
pub fn upstream_path_and_query(
    base: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Option<PathAndQuery> {
    let mut pq = Vec::with_capacity(base.len() + raw_path.len() + query.map_or(0, |q| q.len() + 1));
    push_path(&mut pq, base);
    push_path(&mut pq, raw_path);
    if let Some(q) = query {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).ok()
}

/// Appends a path, percent-encoding the bytes RFC 3986 allows nowhere in a URI (see
/// [`crate::proxy::router::push_uri_escaped`], which the 301's Location uses too).
fn push_path(out: &mut Vec<u8>, path: &str) {
    crate::proxy::router::push_uri_escaped(out, path);
}

/// RFC 9112 §3.2, enforced as Go's server (and so kubectl) does before any handler runs:
/// an HTTP/1.1 request without `Host` (CONNECT aside), a request with more than one, or
/// one whose value has a byte no host can contain, gets a 400 and goes nowhere.
///
/// Userinfo (`user@`) in an absolute-form target or an h2c `:authority` gets the same
/// 400: Go refuses it in `Host` (`httpguts.ValidHostHeader` has no `@`), RFC 9110 §4.2.4
/// deprecates it in http URIs, and a proxy that judged `localhost:8001@evil.com` by its
/// text would see `localhost`.
fn host_error<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some(bad_request(
            "400 Bad Request: userinfo in the request target",
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let body = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => "400 Bad Request",
        (None, _) if req.version() == Version::HTTP_11 && req.method() != Method::CONNECT => {
            "400 Bad Request: missing required Host header"
        }
        (Some(h), None) if !h.as_bytes().iter().all(|&b| valid_host_byte(b)) => {
            "400 Bad Request: malformed Host header"
        }
        _ => return None,
    };
    Some(bad_request(body))
}

/// Go's `httpguts.ValidHostHeader`, byte by byte.
fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b)
}

/// A 400 as Go's server writes it for a request it cannot parse: plain text, and the
/// connection closed.
fn bad_request(body: &'static str) -> Response<ProxyBody> {
    let mut resp = status::text(StatusCode::BAD_REQUEST, body);
    let h = resp.headers_mut();
    h.remove(header::X_CONTENT_TYPE_OPTIONS);
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

impl Rewatch for Proxy {
    fn rewatch(
        self: Arc<Self>,
        target: Uri,
        mut headers: HeaderMap,
        ours_auth: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, String>> + Send>> {
        Box::pin(async move {
            if ours_auth {
                match self.credential_for(&headers).await {
                    Ok(Some(auth)) => {
                        headers.insert(header::AUTHORIZATION, auth);
                    }
                    Ok(None) => {}
                    Err(resp) => return Err(format!("no credentials ({})", resp.status())),
                }
            }
            let req = build(&Method::GET, &target, headers.clone(), RequestBody::Empty);
            self.send(req, Some(&headers), true)
                .await
                .map_err(|resp| format!("no answer ({})", resp.status()))
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

pub(crate) fn build(
    method: &Method,
    target: &Uri,
    headers: HeaderMap,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = target.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// A watch or a followed log: a response that only ends when the server or client ends it.
fn is_watch(path: &str, query: Option<&str>) -> bool {
    let truthy = |key: &str| {
        query.is_some_and(|q| {
            q.split('&').any(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                k == key && (v == "true" || v == "1")
            })
        })
    };
    truthy("watch")
        || truthy("follow")
        || path.split('/').nth(3) == Some("watch")
        || path.split('/').nth(4) == Some("watch")
}

/// Maps a client error to a status, a Status reason, a metric label and a short cause.
fn classify(
    err: &(dyn std::error::Error + 'static),
) -> (StatusCode, Reason, UpstreamErrorKind, String) {
    let mut cause: Option<String> = None;
    let mut io_kind = None;
    let mut tls = None;
    let mut parse = false;
    for e in chain(err) {
        // The client's body failed, not the API server: say so.
        // (`SendError` is transparent: its `source()` skips the `H2Error` it holds.)
        let h2 = match e.downcast_ref::<SendError>() {
            Some(SendError::Http2(h2)) => Some(h2),
            _ => e.downcast_ref::<H2Error>(),
        };
        if let Some(H2Error::RequestBody(cause)) = h2 {
            return (
                StatusCode::BAD_GATEWAY,
                Reason::InternalError,
                UpstreamErrorKind::Other,
                format!("the request body could not be sent: {cause}"),
            );
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls = Some(t.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            parse |= h.is_parse() || h.is_incomplete_message();
        }
        cause = Some(e.to_string());
    }
    let cause = cause.unwrap_or_else(|| err.to_string());
    if let Some(tls) = tls {
        return (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Tls,
            format!("TLS handshake failed: {tls}"),
        );
    }
    match io_kind {
        Some(std::io::ErrorKind::TimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            Reason::Timeout,
            UpstreamErrorKind::Timeout,
            format!("connection timed out ({cause})"),
        ),
        Some(std::io::ErrorKind::ConnectionRefused) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::ServiceUnavailable,
            UpstreamErrorKind::Refused,
            "connection refused".to_owned(),
        ),
        _ if parse => (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Malformed,
            format!("malformed response ({cause})"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            UpstreamErrorKind::Other,
            cause,
        ),
    }
}

/// How many times a replayable request is sent again after meeting a closed connection.
const STALE_CONNECTION_RETRIES: usize = 3;

/// Methods that can be sent twice without harm (with no body: Go's rule).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A failed attempt to get response headers from the API server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Http1(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Http2(#[from] H2Error),
}

/// The connection was established but closed or reset before a response arrived: what a
/// kept-alive HTTP/1.1 connection the server has just closed looks like. (The HTTP/2
/// pool sends again, itself, what was refused unprocessed or lost with its connection.)
fn closed_connection(err: &SendError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let err: &(dyn std::error::Error + 'static) = match err {
        SendError::Http1(e) if e.is_connect() => return false,
        SendError::Http1(e) => e,
        SendError::Http2(_) => return false,
    };
    chain(err).iter().any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
                )
            })
    })
}

/// An error and its sources; an `io::Error`'s wrapped error is visited too (its own
/// `source()` skips it).
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_no_uri_may_hold_are_escaped_in_the_path() {
        let escaped = |p: &str| {
            let mut out = Vec::new();
            push_path(&mut out, p);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            escaped("/a%2Fb/c;d=e/[f]!'()*$&+,:@~"),
            "/a%2Fb/c;d=e/[f]!'()*$&+,:@~"
        );
        assert_eq!(
            escaped("/caf\u{e9}/a|b/{c}^\"\\"),
            "/caf%C3%A9/a%7Cb/%7Bc%7D%5E%22%5C"
        );
    }

    #[test]
    fn host_header_checks_are_gos() {
        let req = |version: Version, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri("/api");
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        let refused = |r: &Request<()>| host_error(r).map(|resp| resp.status());
        assert_eq!(refused(&req(Version::HTTP_11, &["localhost:8001"])), None);
        assert_eq!(refused(&req(Version::HTTP_11, &["[::1]:8001"])), None);
        // Empty is allowed (and the filter refuses it).
        assert_eq!(refused(&req(Version::HTTP_11, &[""])), None);
        assert_eq!(refused(&req(Version::HTTP_10, &[])), None);
        assert_eq!(refused(&req(Version::HTTP_2, &[])), None);
        let absolute = |target: &str| {
            Request::builder()
                .uri(target)
                .header(header::HOST, "localhost")
                .body(())
                .unwrap()
        };
        for target in [
            "http://localhost:8001@evil.com/version",
            "http://evil.com@localhost:8001/",
            "http://u:p@localhost/",
        ] {
            assert_eq!(
                refused(&absolute(target)),
                Some(StatusCode::BAD_REQUEST),
                "{target}"
            );
        }
        assert_eq!(refused(&absolute("http://localhost:8001/version")), None);
        for bad in [
            &[][..],
            &["a", "b"],
            &["local host"],
            &["localhost/x"],
            &["u@localhost"],
        ] {
            assert_eq!(
                refused(&req(Version::HTTP_11, bad)),
                Some(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn watch_detection() {
        assert!(is_watch("/api/v1/pods", Some("watch=true")));
        assert!(is_watch("/api/v1/pods", Some("limit=1&watch=1")));
        assert!(is_watch(
            "/api/v1/namespaces/d/pods/p/log",
            Some("follow=true")
        ));
        assert!(is_watch("/api/v1/watch/pods", None));
        assert!(is_watch("/apis/apps/v1/watch/deployments", None));
        assert!(!is_watch("/api/v1/pods", Some("watch=false")));
        assert!(!is_watch("/api/v1/pods", Some("nowatch=true")));
        assert!(!is_watch("/api/v1/pods", None));
    }

    #[test]
    fn io_wrapped_tls_error_is_classified() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        // hyper-rustls wraps the handshake's io::Error in another one.
        let io = std::io::Error::other(io);
        let (code, _, kind, msg) = classify(&io);
        assert_eq!(kind, UpstreamErrorKind::Tls);
        assert_eq!(code, StatusCode::BAD_GATEWAY);
        assert!(msg.contains("TLS handshake failed"), "{msg}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(classify(&refused).2, UpstreamErrorKind::Refused);
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(classify(&timeout).1, Reason::Timeout);
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
