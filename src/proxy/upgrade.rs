//! Upgrades (`Connection: upgrade`): exec, attach and port-forward over SPDY/3.1 or
//! WebSocket.
//!
//! The proxy speaks neither protocol: it opens a fresh HTTP/1.1 connection (ALPN
//! `http/1.1`; an upgrade cannot ride an HTTP/2 stream), sends the request with the same
//! credentials, passes a `101` back and then copies bytes both ways until either side
//! closes. An upstream 4xx/5xx is relayed as is; any other answer is kubectl's
//! `invalid upgrade response` error.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;
use crate::proxy::body::ProxyBody;
use crate::proxy::status::{self, Reason};
use crate::shutdown::Shutdown;
use crate::upstream::{BoxError, Connector, RequestBody, UpstreamBody, dial_http1, origin_form};

/// What a tunnel needs from the proxy (borrowed, so this module does not depend on it).
pub(crate) struct Tunnel<'a> {
    pub connector: &'a Connector,
    pub metrics: &'a Arc<Metrics>,
    pub shutdown: &'a Shutdown,
    /// The API server's origin, for the error message.
    pub origin: String,
}

/// The request's headers as the proxy rewrote them (credentials, forwarding fields),
/// with the upgrade asked for again: `Connection` is hop-by-hop, so the rewrite took it.
pub(crate) fn upstream_request(
    parts: http::request::Parts,
    mut headers: http::HeaderMap,
    body: Incoming,
    target: &Uri,
) -> Request<RequestBody> {
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(p) = protocol {
        headers.insert(header::UPGRADE, p);
    }
    let mut upstream_req = Request::new(RequestBody::Stream(body));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.headers_mut() = headers;
    *upstream_req.uri_mut() = origin_form(target);
    upstream_req
}

/// Sends the upgrade on a fresh connection and, on a `101`, joins the two sides. `Err`
/// is a failure to reach the API server, for the proxy to answer as it answers any.
pub(crate) async fn forward(
    tunnel: Tunnel<'_>,
    client_side: OnUpgrade,
    upstream_req: Request<RequestBody>,
    target: Uri,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut sender, conn) = dial_http1(tunnel.connector, target).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream upgrade connection ended: {e}");
        }
    });
    let mut resp = sender.send_request(upstream_req).await?;
    tunnel.metrics.upstream_answered();

    Ok(match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let guard = tunnel.shutdown.guard();
            let active = tunnel.metrics.open(crate::metrics::Open::Upgrade);
            tokio::spawn(async move {
                let _guards = (guard, active);
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            Ok((up, down)) => {
                                tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed")
                            }
                            Err(e) => tracing::debug!("tunnel ended: {e}"),
                        }
                    }
                    Err(e) => tracing::debug!("upgrade did not complete: {e}"),
                }
            });
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, ProxyBody::empty())
        }
        code if code.as_u16() >= 400 => {
            let (mut parts, body) = resp.into_parts();
            parts.version = http::Version::default();
            Response::from_parts(parts, ProxyBody::Response(UpstreamBody::Http1(body)))
        }
        code => status::response(
            StatusCode::BAD_GATEWAY,
            Reason::InternalError,
            &format!(
                "invalid upgrade response from the API server at {}: status code {}",
                tunnel.origin,
                code.as_u16()
            ),
        ),
    })
}
