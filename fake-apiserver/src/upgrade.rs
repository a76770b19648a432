//! Upgrades (exec, attach, port-forward, `/upgrade/...`): 101 Switching Protocols with the
//! WebSocket headers a client checks, then an echo of whatever the client sends, counted
//! as an open upgrade until it ends or the server closes connections.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::RespBody;
use crate::respond::full;
use crate::server::ConnInfo;
use crate::state::{State, gauge_inc};
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

pub(crate) fn upgrade(
    state: &Arc<State>,
    conn: Arc<ConnInfo>,
    req: &mut Request<Incoming>,
) -> Response<RespBody> {
    let upgrade = req.headers().get(header::UPGRADE).cloned().unwrap();
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, upgrade.clone());
    if upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        if let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) {
            resp = resp.header(
                header::SEC_WEBSOCKET_ACCEPT,
                websocket_accept(key.as_bytes()),
            );
        }
        let first_protocol = req
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|p| p.trim().to_owned());
        if let Some(p) = first_protocol {
            resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
    }

    let on_upgrade = hyper::upgrade::on(req);
    let guard = gauge_inc(state, |s| &s.upgrades);
    let mut close = state.close.subscribe();
    tokio::spawn(async move {
        // Holding `conn` keeps the connection counted while the echo runs.
        let _conn = conn;
        let _guard = guard;
        let echo = async {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        };
        tokio::select! {
            _ = close.changed() => {}
            _ = echo => {}
        }
    });
    resp.body(full(Bytes::new())).unwrap()
}

/// `Sec-WebSocket-Accept` per RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(&input))
}
