//! Hedged requests (`--upstream-hedge-after`): a short, bodiless, idempotent request sent
//! over the HTTP/1.1 pool that has no response headers after a delay is sent once more,
//! and the first response headers to arrive win.
//!
//! Why: an HTTP/1.1 connection cannot be pinged, and a frozen one (sockets open, nothing
//! moves: a black-holed path, a half-dead NAT entry, a stalled load balancer) looks exactly
//! like a slow server. The HTTP/2 pool finds such a connection dead with a PING in seconds
//! (`h2pool`); on HTTP/1.1 the soak (`bench/soak.md`) saw 20 GETs and LISTs wait for the
//! client's 30 s timeout. Go's transport (so client-go and kubectl proxy) has nothing for
//! this on HTTP/1.1: its only health check is HTTP/2's `ReadIdleTimeout` PING. The answer
//! here is Dean and Barroso's hedged request ("The Tail at Scale", CACM 56(2), 2013):
//! send a second copy after a delay well past the usual latency, use whichever answers
//! first, cancel the other.
//!
//! The second copy goes where a frozen connection cannot hold it: over the HTTP/2 pool
//! when it is enabled and the server speaks h2 (its connections are PING-checked, and a
//! dead one's bodiless idempotent requests are sent again there), otherwise on a fresh
//! HTTP/1.1 connection of its own (not one from the pool, which may be frozen too), dialled
//! as upgrades dial (`upgrade.rs`).
//!
//! Bounded duplicate load: only GET, HEAD, OPTIONS and TRACE without a body (RFC 9110
//! §9.2.2: sending them twice has the effect of sending them once), never a watch or a followed
//! log (a quiet one is normal), one hedge per attempt (an attempt is only ever retried
//! after it failed, so a request never has more than two copies in flight), and at most
//! [`MAX_IN_FLIGHT`] hedges in flight in the whole process: past that, no hedge, so a slow
//! API server is sent at most that many duplicates at a time, however many requests wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri};
use hyper_util::client::legacy::ResponseFuture;

use super::errors::SendError;
use crate::metrics::{HedgeResult, Metrics};
use crate::upstream::h2pool::{H2Pool, Sent};
use crate::upstream::{
    BoxError, Connector, RequestBody, UpstreamBody, dial_http1, idempotent, origin_form, request,
};

/// Hedges in flight in the process at most (a hedge is in flight from its sending to the
/// first response headers of either copy). 16 is the HTTP/1.1 pool's usual concurrency
/// for one sidecar's app, and a small fraction of the API server's default
/// `--max-requests-inflight` (400): a frozen path's requests are saved, a merely slow
/// server is not sent more than 16 extra requests at any time.
pub(crate) const MAX_IN_FLIGHT: usize = 16;

/// The hedging policy and its process-wide count of hedges in flight.
#[derive(Debug)]
pub(crate) struct Hedge {
    /// `--upstream-hedge-after`; zero disables hedging.
    after: Duration,
    in_flight: AtomicUsize,
}

/// One hedge in flight; released on drop, however the race ends.
struct Permit<'a>(&'a AtomicUsize);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What sending the second copy needs from the proxy (borrowed, so that this module does
/// not depend on it).
pub(crate) struct Upstreams<'a> {
    pub connector: &'a Connector,
    pub h2: Option<&'a H2Pool>,
    pub metrics: &'a Metrics,
}

impl Hedge {
    pub(crate) fn new(after: Duration) -> Hedge {
        Hedge {
            after,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// How long a request waits for its response headers before it is hedged.
    pub(crate) fn after(&self) -> Duration {
        self.after
    }

    /// Whether a request may be hedged: hedging is on, and the request is a bodiless
    /// idempotent one (GET, HEAD, OPTIONS, TRACE) that is not long-running.
    pub(crate) fn applies(&self, method: &Method, bodiless: bool, long_lived: bool) -> bool {
        !self.after.is_zero() && bodiless && !long_lived && idempotent(method)
    }

    fn permit(&self) -> Option<Permit<'_>> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .ok()?;
        Some(Permit(&self.in_flight))
    }
}

/// Races `first` (sent over the HTTP/1.1 pool, still without response headers after
/// [`Hedge::after`]) against a second copy of the request built from `method`, `uri` and
/// `headers`. The first response headers win and the other copy is dropped: a dropped
/// HTTP/1.1 request closes its connection (hyper's client dispatcher closes a connection
/// whose response is no longer wanted, `proto/h1/dispatch.rs` `poll_read_head`), so a
/// frozen connection leaves the pool with it; a dropped HTTP/2 request resets its stream.
/// An attempt that fails leaves the race to the other; if both fail, the first's error is
/// the answer, as without a hedge.
pub(crate) async fn race(
    hedge: &Hedge,
    up: Upstreams<'_>,
    mut first: ResponseFuture,
    (method, uri, headers): (Method, Uri, &HeaderMap),
) -> Result<Response<UpstreamBody>, SendError> {
    let Some(_permit) = hedge.permit() else {
        up.metrics.hedge(HedgeResult::Capped);
        return Ok(first.await?.map(UpstreamBody::Http1));
    };
    tracing::debug!(
        %method,
        path = %uri.path(),
        "no response headers after {:?} (--upstream-hedge-after); sending the request once more",
        hedge.after
    );
    let second = send_again(&up, method, uri, headers);
    tokio::pin!(second);
    tokio::select! {
        biased;
        r = &mut first => match r {
            Ok(resp) => {
                up.metrics.hedge(HedgeResult::Lost);
                Ok(resp.map(UpstreamBody::Http1))
            }
            Err(e) => match second.await {
                Ok(resp) => {
                    up.metrics.hedge(HedgeResult::Won);
                    Ok(resp)
                }
                Err(again) => {
                    up.metrics.hedge(HedgeResult::Failed);
                    tracing::debug!("the hedged request failed too: {again}");
                    Err(e.into())
                }
            },
        },
        r = &mut second => match r {
            Ok(resp) => {
                up.metrics.hedge(HedgeResult::Won);
                Ok(resp)
            }
            Err(again) => {
                up.metrics.hedge(HedgeResult::Failed);
                tracing::debug!("the hedged request failed: {again}; still waiting for the first");
                Ok(first.await?.map(UpstreamBody::Http1))
            }
        },
    }
}

/// The second copy: over the HTTP/2 pool if there is one and the server speaks h2, else
/// on a fresh HTTP/1.1 connection.
async fn send_again(
    up: &Upstreams<'_>,
    method: Method,
    uri: Uri,
    headers: &HeaderMap,
) -> Result<Response<UpstreamBody>, BoxError> {
    let req = request(&method, &uri, headers.clone(), RequestBody::Empty);
    let req = match up.h2 {
        Some(pool) => match pool.send(req, Some(headers)).await? {
            Sent::Response(resp) => return Ok(resp.map(UpstreamBody::Http2)),
            Sent::Http1(req) => req,
        },
        None => req,
    };
    fresh_http1(up.connector, req).await
}

/// Sends `req` on a new HTTP/1.1 connection used for it alone: it closes when the
/// response ends (or is dropped), and never joins the pool.
async fn fresh_http1(
    connector: &Connector,
    mut req: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, BoxError> {
    let (mut sender, conn) = dial_http1(connector, req.uri().clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("hedged HTTP/1.1 connection ended: {e}");
        }
    });
    *req.uri_mut() = origin_form(req.uri());
    let resp = sender.send_request(req).await?;
    Ok(resp.map(UpstreamBody::Http1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_bodiless_safe_requests_are_hedged() {
        let h = Hedge::new(Duration::from_secs(5));
        assert!(h.applies(&Method::GET, true, false));
        assert!(h.applies(&Method::HEAD, true, false));
        assert!(h.applies(&Method::OPTIONS, true, false));
        assert!(!h.applies(&Method::GET, false, false), "a body");
        assert!(!h.applies(&Method::GET, true, true), "a watch");
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!h.applies(&m, true, false), "{m}");
        }
        assert!(!Hedge::new(Duration::ZERO).applies(&Method::GET, true, false));
    }

    #[test]
    fn hedges_in_flight_are_capped_and_released() {
        let h = Hedge::new(Duration::from_secs(5));
        let permits: Vec<_> = (0..MAX_IN_FLIGHT).map_while(|_| h.permit()).collect();
        assert_eq!(permits.len(), MAX_IN_FLIGHT);
        assert!(h.permit().is_none(), "past the cap, no hedge");
        drop(permits);
        assert!(h.permit().is_some());
        assert_eq!(h.in_flight.load(Ordering::Acquire), 0);
    }
}
