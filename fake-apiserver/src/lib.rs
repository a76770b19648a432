//! A fake Kubernetes API server over TLS (HTTP/1.1 with upgrades, and HTTP/2), just real
//! enough for kubectl, the `kube` crate and the proxy's tests: bearer-token auth with
//! rotation, pods list/get/watch, discovery, and diagnostic endpoints (`/echo`,
//! `/stream-echo`, `/bytes`, `/hold`, upgrades...) that report exactly what arrived.
//!
//! Everything a test needs to synchronise on (a request arrived, a watch opened or closed, a
//! connection went away) is observable through `tokio::sync::watch` channels, so tests await
//! events instead of sleeping.
//!
//! Watch semantics chosen here: a watch without `resourceVersion` (or with `"0"`) first gets a
//! synthetic `ADDED` event per existing pod, like the real server; with any other
//! `resourceVersion` it gets only events sent after it opened. `timeoutSeconds` ends the
//! stream; `allowWatchBookmarks` is accepted (bookmarks are only sent on demand: a BOOKMARK
//! from `send_watch_event` goes to every watch, one from [`FakeApi::send_bookmark_in`] only
//! to those that asked).
//!
//! Resumable history (watch-resume tests): every ADDED/MODIFIED/DELETED event is numbered
//! (its resourceVersion) and kept, up to [`HISTORY_WINDOW`] events. A watch from
//! `resourceVersion=R` first replays the kept events after R of its namespace (and name
//! filter), then gets new ones, as a real watch cache does. An R older than what was
//! forgotten ([`FakeApi::compact`], or the window) gets HTTP 200 with one `ERROR` event
//! carrying a 410 `Expired` Status, then the end. An R from before the fake's own start
//! (tests pass `1`) means "from now", as it always did here.
//!
//! Framing, as Go's `net/http` HTTP/2 server (every real API server) does it, since a fake
//! that frames like our own stack hides the bugs that meet Go
//! (`../shared/reference/go-apiserver.md`): END_STREAM comes in an empty DATA frame of its
//! own after the body (every other response after a 1 ms pause, unless
//! `end_stream_pause` is off, as in the binary), `Content-Length` is sent when the size
//! is known, `MaxConcurrentStreams` is Go's 250 unless set, and `goaway_every` makes the server GOAWAY a connection after every
//! n-th response on it, as kube-apiserver's `--goaway-chance` does.
//!
//! Authentication: a valid bearer token, or (with `require_client_cert`) any client
//! certificate the CA signed. `/public/<rest>` serves `/<rest>` without authentication, and
//! `/healthz`, `/livez`, `/readyz` are public as on a cluster allowing anonymous probes.
//!
//! kube-ambassador's integration tests and its benchmark use this as a library; the
//! binary (`src/main.rs`, `cargo run -p fake-apiserver -- --dir DIR`) serves it standalone
//! for the README's "Try it without a cluster" recipe and for `bench/run.sh`.
//!
//! The modules, in the order a request meets them:
//!
//! - [`options`]: how to start one ([`FakeApiOptions`]).
//! - `server`: the listener, TLS, per-connection serving, start/stop/restart.
//! - `framing`: response bodies framed as Go's HTTP/2 server frames them.
//! - `handler`: authentication, the request log entry (a [`Seen`], `seen`), and the
//!   dispatch to upgrades, streamed echoes or the routes.
//! - `routes`: the API paths (discovery, pods) and the diagnostic ones.
//! - `watch`: lists and watches, resumable from the history.
//! - `diagnostics`: `/echo`, `/bytes`, `/stream-echo`.
//! - `upgrade`: 101 Switching Protocols and the echo behind it.
//! - `respond`: response builders, and Status bodies with the real server's field order.
//! - `state`, `store`: what the server knows (tokens, the request log, gauges a test
//!   can await) and the pods with their numbered event history.
//! - `control`: what a test observes and drives ([`FakeApi`]'s methods beyond
//!   start/stop).
//! - [`pki`], [`world`]: the certificates it serves, and the kubelet-style
//!   service-account directory a client is pointed at.
//! - `wait`: bounded waits ([`within`]). SHA-1, base64 and hex come from their crates.

mod control;
mod diagnostics;
mod framing;
mod handler;
pub mod options;
pub mod pki;
mod respond;
mod routes;
mod seen;
mod server;
mod state;
mod store;
mod upgrade;
mod wait;
mod watch;
pub mod world;

pub use diagnostics::{BYTES_CHUNK, pattern_bytes};
pub use hex::encode as hex;

/// Standard base64 with padding, as kubeconfig `*-data` fields and Basic auth carry it.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}
pub use options::FakeApiOptions;
pub use pki::Pki;
pub use respond::status_json;
pub use seen::Seen;
pub use server::FakeApi;
pub use store::HISTORY_WINDOW;
pub use upgrade::websocket_accept;
pub use wait::{WAIT, within};
pub use world::World;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// The error type of response bodies (a streamed request body can fail mid-way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the fake sends.
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// The namespace pods live in unless a test says otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";
