//! Forwarding, the part of [`Proxy`] that talks to the API server: the request's headers
//! rewritten (credentials, impersonation, `X-Forwarded-For`), sent within
//! `--request-timeout` over the protocol the policy picks, retried where that is safe (a
//! stale HTTP/1.1 connection, a 401 with a fresh token, a hedge), and failures turned
//! into Status responses. `mod.rs` routes and judges the request first.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};

use super::errors::{STALE_CONNECTION_RETRIES, SendError, classify, closed_connection};
use super::status::Reason;
use super::{Http2Policy, IMPERSONATE_USER, Peer, Proxy, UpstreamTime, headers, hedge, status};
use crate::metrics::{Metrics, Open, UpstreamErrorKind};
use crate::proxy::body::{ProxyBody, Tracked};
use crate::upstream::h2pool::Sent;
use crate::upstream::{RequestBody, UpstreamBody, idempotent, request};
use crate::watch::Rewatch;

impl Proxy {
    /// Rewrites the request headers for the upstream. Returns the credential it added.
    pub(crate) fn rewrite_request_headers(
        &self,
        headers: &mut HeaderMap,
        peer: &Peer,
        auth: Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        headers::strip_hop_by_hop(headers);
        headers.insert(header::HOST, self.host.clone());
        if let Peer::Tcp(client) = peer {
            headers::append_forwarded(headers, client);
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
    pub(super) async fn request_replaying(
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
                        let req = request(&method, &uri, headers.clone(), RequestBody::Empty);
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
    /// `replay`: the headers of a bodiless request, the one copy the caller keeps.) A
    /// short bodiless GET, HEAD, OPTIONS or TRACE over HTTP/1.1 still without response
    /// headers after `--upstream-hedge-after` is sent once more, and the first answer wins
    /// (`hedge.rs`: an HTTP/1.1 connection cannot be pinged, and a frozen one looks slow).
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
        let hedged = replay
            .filter(|_| {
                self.hedge
                    .applies(req.method(), req.body().is_end_stream(), long_lived)
            })
            .map(|headers| (req.method().clone(), req.uri().clone(), headers));
        let mut first = self.client.request(req);
        let Some(copy) = hedged else {
            return Ok(first.await?.map(UpstreamBody::Http1));
        };
        tokio::select! {
            biased;
            r = &mut first => return Ok(r?.map(UpstreamBody::Http1)),
            () = tokio::time::sleep(self.hedge.after()) => {}
        }
        // Boxed: rare, and its state (a second request, a dial) would otherwise enlarge
        // every request's future.
        let upstreams = hedge::Upstreams {
            connector: &self.connector,
            h2: self.h2.as_ref(),
            metrics: &self.metrics,
        };
        Box::pin(hedge::race(&self.hedge, upstreams, first, copy)).await
    }

    pub(super) async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        mut target: Uri,
        peer: Peer,
        long_lived: bool,
        resume: bool,
    ) -> Response<ProxyBody> {
        // Clock reads only for what needs them: a resumable watch, the access log.
        let arrived = resume.then(tokio::time::Instant::now);
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let auth = match self.credential_for(&headers).await {
            Ok(auth) => auth,
            Err(resp) => return resp,
        };
        let sent = self.rewrite_request_headers(&mut headers, &peer, auth);
        let ours = sent.is_some();
        // A request without a body can be sent again: after a 401 if a newer credential
        // shows up, after the API server refused it unprocessed (any method, HTTP/2), and
        // (idempotent ones) after meeting a connection that had closed or being late
        // over HTTP/1.1 (a hedge). One header-map copy serves them all. (A refused HTTP/2
        // request with a small body is sent again too: the pool keeps that copy itself.)
        let renewable = sent.is_some() && self.creds.can_change();
        let replay = body.is_end_stream().then(|| headers.clone());
        let method = parts.method;
        // `--watch-resume`: what a re-watch needs; the first request may ask for bookmarks.
        let mut plan = arrived.and_then(|arrived| {
            crate::watch::Plan::new(&target, &headers, sent.is_some(), arrived)
        });
        if let Some(first) = plan.as_mut().and_then(crate::watch::Plan::first_target) {
            target = first;
        }
        let upstream_req = request(&method, &target, headers, RequestBody::Stream(body));
        let sent_at = self.access_log.then(Instant::now);
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
            let retry = request(&method, &target, headers.clone(), RequestBody::Empty);
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
        // An extension is a map allocated for it: only when the access log will read it.
        if let Some(sent_at) = sent_at {
            parts.extensions.insert(UpstreamTime(sent_at.elapsed()));
        }
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
        let Some(target) = self.upstream_uri(&Uri::from_static("/version"), "/version", false)
        else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        if let Some(auth) = self.creds.for_request().await.ok().flatten() {
            headers.insert(header::AUTHORIZATION, auth);
        }
        let req = request(&Method::GET, &target, headers, RequestBody::Empty);
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
            let req = request(&Method::GET, &target, headers.clone(), RequestBody::Empty);
            self.send(req, Some(&headers), true)
                .await
                .map_err(|resp| format!("no answer ({})", resp.status()))
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
