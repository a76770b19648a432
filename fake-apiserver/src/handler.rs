//! One request, from its arrival: authentication (token, client certificate, public
//! paths), its entry in the request log (body read and hashed first, except for streamed
//! echoes and upgrades), then the upgrade, the streamed echo or the routes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::RespBody;
use crate::diagnostics::stream_echo;
use crate::respond::{status, unauthorized};
use crate::routes::route;
use crate::seen::{Seen, seen_of};
use crate::server::ConnInfo;
use crate::state::State;
use crate::upgrade::upgrade;
use hex::encode as hex;

pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(header::UPGRADE)
}

pub(crate) fn is_upgrade_path(path: &str) -> bool {
    if path.starts_with("/upgrade/") || path == "/upgrade-refused" {
        return true;
    }
    let segs: Vec<&str> = path.split('/').collect();
    matches!(
        segs.as_slice(),
        [
            "",
            "api",
            "v1",
            "namespaces",
            _,
            "pods",
            _,
            "exec" | "attach" | "portforward"
        ]
    )
}

/// The public prefix strips to the real route; `/healthz`-style probes are public as on a
/// real API server that allows anonymous health checks.
pub(crate) fn effective_path(path: &str) -> (&str, bool) {
    if let Some(rest) = path.strip_prefix("/public") {
        if rest.starts_with('/') {
            return (rest, true);
        }
    }
    let public = matches!(path, "/healthz" | "/livez" | "/readyz");
    (path, public)
}

pub(crate) async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let full_path = req.uri().path().to_owned();
    let (path, public) = effective_path(&full_path);
    let path = path.to_owned();
    let token = bearer(req.headers());
    let authorized = public
        || (state.require_client_cert && conn.has_client_cert)
        || state.token_ok(token.as_deref());

    if is_upgrade_path(&path) && (is_upgrade_request(&req) || path == "/upgrade-refused") {
        state.record(seen_of(&req, &conn, token, authorized));
        if path == "/upgrade-refused" {
            return Ok(status(403, "Forbidden", "upgrade refused by the fake API"));
        }
        if !authorized {
            return Ok(unauthorized());
        }
        return Ok(upgrade(&state, conn, &mut req));
    }

    if path == "/stream-echo" && matches!(*req.method(), Method::POST | Method::PUT) && authorized {
        let idx = state.record(Seen {
            body_complete: false,
            ..seen_of(&req, &conn, token, authorized)
        });
        return Ok(stream_echo(state, idx, req));
    }

    let seen = seen_of(&req, &conn, token, authorized);
    let (parts, mut body) = req.into_parts();
    // A body the client abandons half-way is recorded as what did arrive.
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    hasher.update(d);
                    buf.extend_from_slice(d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let body = Bytes::from(buf);
    let seen = Seen {
        body_len: body.len() as u64,
        body_sha256: hex(hasher.finalize()),
        body_complete: complete,
        ..seen
    };
    state.record(seen.clone());

    if !authorized {
        return Ok(unauthorized());
    }
    Ok(route(&state, &parts, &path, &seen, body).await)
}
