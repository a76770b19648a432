//! Upgrades (`Connection: upgrade`): exec, attach and port-forward over SPDY/3.1 or
//! WebSocket.
//!
//! The proxy speaks neither protocol: it opens a fresh HTTP/1.1 connection (ALPN
//! `http/1.1`; an upgrade cannot ride an HTTP/2 stream), sends the request with the same
//! credentials, passes a `101` back and then copies bytes both ways until either side
//! closes. An upstream 4xx/5xx is relayed as is; any other answer is kubectl's
//! `invalid upgrade response` error.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower_service::Service as _;

use crate::proxy::body::ProxyBody;
use crate::proxy::status::{self, Reason};
use crate::proxy::{Peer, Proxy};
use crate::upstream::{RequestBody, UpstreamBody};

pub async fn forward(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    target: Uri,
    peer: Peer,
) -> Response<ProxyBody> {
    // Take the client side's upgrade future before the request is taken apart.
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    let mut headers = parts.headers;
    let auth = match proxy.credential_for(&headers).await {
        Ok(auth) => auth,
        Err(resp) => return resp,
    };
    proxy.rewrite_request_headers(&mut headers, peer, auth);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(p) = protocol {
        headers.insert(header::UPGRADE, p);
    }
    let mut upstream_req = Request::new(RequestBody::Stream(body));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.headers_mut() = headers;
    // HTTP/1.1 on the wire wants the origin form; the connector wants the full URI.
    *upstream_req.uri_mut() = match target.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };

    let mut connector = proxy.connector.clone();
    let io = match connector.call(target).await {
        Ok(io) => io,
        Err(e) => return proxy.upstream_error(&*e),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
    {
        Ok(pair) => pair,
        Err(e) => return proxy.upstream_error(&e),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream upgrade connection ended: {e}");
        }
    });
    let mut resp = match sender.send_request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => return proxy.upstream_error(&e),
    };
    proxy.metrics.upstream_answered();

    match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let guard = proxy.shutdown.guard();
            let active = proxy.metrics.open(crate::metrics::Open::Upgrade);
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
                proxy.upstream.origin(),
                code.as_u16()
            ),
        ),
    }
}
