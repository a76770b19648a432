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
//! own after the body (every other response after a pause: the handler task yields
//! first), `Content-Length` is sent when the size is known, `MaxConcurrentStreams` is Go's
//! 250 unless set, and `goaway_every` makes the server GOAWAY a connection after every
//! n-th response on it, as kube-apiserver's `--goaway-chance` does.
//!
//! Authentication: a valid bearer token, or (with `require_client_cert`) any client
//! certificate the CA signed. `/public/<rest>` serves `/<rest>` without authentication, and
//! `/healthz`, `/livez`, `/readyz` are public as on a cluster allowing anonymous probes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::Pki;
use super::{hex, within};

/// The error type of response bodies (a streamed request body can fail mid-way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// The namespace pods live in unless a test says otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Events the resumable watch history keeps; older ones are forgotten (410 to a watch from
/// before them).
pub const HISTORY_WINDOW: usize = 10_000;
/// Chunk size of `/bytes`.
pub const BYTES_CHUNK: usize = 64 * 1024;

/// How to start a [`FakeApi`].
#[derive(Debug, Clone)]
pub struct FakeApiOptions {
    pub pki: Pki,
    /// Bearer tokens accepted at start.
    pub tokens: Vec<String>,
    /// Pods `pod-0`..`pod-{n-1}` in `default` at start.
    pub pods: usize,
    /// Demand a client certificate signed by `pki`'s CA; a connection that has one is
    /// authenticated without a token (like the real API server's x509 authenticator).
    pub require_client_cert: bool,
    /// 0 picks a free port.
    pub port: u16,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS to advertise; `None`: Go's default, 250.
    pub max_concurrent_streams: Option<u32>,
    /// GOAWAY an HTTP/2 connection after every n-th response on it (`--goaway-chance`,
    /// made deterministic).
    pub goaway_every: Option<usize>,
    /// Offer only `http/1.1` in ALPN and speak only HTTP/1.1, like a server (or a
    /// TLS-terminating load balancer in front of one) without HTTP/2. Off by default: `h2`
    /// and `http/1.1` are offered, in that order.
    pub http1_only: bool,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        FakeApiOptions {
            pki: Pki::new(),
            tokens: Vec::new(),
            pods: 3,
            require_client_cert: false,
            port: 0,
            max_concurrent_streams: None,
            goaway_every: None,
            http1_only: false,
        }
    }
}

impl FakeApiOptions {
    pub fn new(pki: Pki) -> Self {
        FakeApiOptions {
            pki,
            ..Default::default()
        }
    }
    pub fn tokens(mut self, tokens: &[&str]) -> Self {
        self.tokens = tokens.iter().map(|t| t.to_string()).collect();
        self
    }
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = Some(n);
        self
    }
    /// See [`FakeApiOptions::http1_only`].
    pub fn goaway_every(mut self, n: usize) -> Self {
        self.goaway_every = Some(n);
        self
    }

    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }
}

/// One request as the fake API server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request-target exactly as received (raw path and query; for HTTP/2 the `:path`).
    pub uri: String,
    /// The path part of `uri`.
    pub path: String,
    pub query: Option<String>,
    /// `:authority` (HTTP/2) or the absolute-form authority, if any.
    pub authority: Option<String>,
    /// In order received (grouped by name, as `http::HeaderMap` keeps them), lowercase names.
    pub headers: Vec<(String, String)>,
    /// The bearer token presented, valid or not.
    pub token: Option<String>,
    /// CN of the client certificate, if one from [`Pki::client_cert`] was presented.
    pub client_cn: Option<String>,
    /// Whether the request was authenticated (token, client cert, or public path).
    pub authorized: bool,
    /// The TLS cipher suite of the connection it came on, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub tls_suite: Option<String>,
    pub version: Version,
    pub body_len: u64,
    pub body_sha256: String,
    /// False while a streamed body (`/stream-echo`) is still being read.
    pub body_complete: bool,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The deterministic content of `/bytes`: byte `i` is `i % 251` (a prime, so the pattern
/// never lines up with power-of-two chunk boundaries and a misplaced chunk shows).
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    pattern_at(0, n)
}

fn pattern_at(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// A gauge whose changes can be awaited.
struct Gauge(watch::Sender<usize>);

struct GaugeGuard(Arc<State>, fn(&State) -> &Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).0.send_modify(|n| *n -= 1);
    }
}

fn gauge_inc(state: &Arc<State>, which: fn(&State) -> &Gauge) -> GaugeGuard {
    which(state).0.send_modify(|n| *n += 1);
    GaugeGuard(state.clone(), which)
}

async fn gauge_wait(g: &Gauge, what: &str, n: usize) {
    let mut rx = g.0.subscribe();
    within(&format!("{what} == {n} (now {})", *rx.borrow()), async {
        rx.wait_for(|v| *v == n)
            .await
            .expect("gauge sender lives in state");
    })
    .await;
}

#[derive(Clone)]
enum WatchMsg {
    /// An event in the namespace the receiving watch is on: `State::watchers` routes it
    /// only to that namespace's watches and to the all-namespaces ones.
    Event { name: String, line: Bytes },
    /// A BOOKMARK for the watches that asked for them (`allowWatchBookmarks=true`).
    Bookmark(Bytes),
    /// Ends every open watch stream cleanly (the server's side of a watch timeout).
    End,
}

struct PodStore {
    rv: u64,
    next_uid: u64,
    pods: BTreeMap<(String, String), Value>,
    history: History,
}

/// The numbered events a watch can resume from (see the module comment).
#[derive(Default)]
struct History {
    events: VecDeque<Recorded>,
    /// The resourceVersion at start: a watch from before it starts from now.
    start_rv: u64,
    /// Events up to this resourceVersion are forgotten (`start_rv` until some are).
    forgotten: u64,
}

struct Recorded {
    ns: String,
    name: String,
    rv: u64,
    line: Bytes,
}

impl History {
    fn record(&mut self, ns: &str, name: &str, rv: u64, line: &Bytes) {
        if self.events.len() == HISTORY_WINDOW {
            if let Some(old) = self.events.pop_front() {
                self.forgotten = old.rv;
            }
        }
        self.events.push_back(Recorded {
            ns: ns.to_owned(),
            name: name.to_owned(),
            rv,
            line: line.clone(),
        });
    }

    /// What a watch from `rv` gets first: the kept events after it, or `Err` (too old).
    fn replay(
        &self,
        rv: u64,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Result<VecDeque<Bytes>, u64> {
        if rv < self.forgotten && self.forgotten > self.start_rv {
            return Err(self.forgotten);
        }
        Ok(self
            .events
            .iter()
            .filter(|e| rv >= self.start_rv && e.rv > rv)
            .filter(|e| ns.is_none_or(|n| n == e.ns) && name.is_none_or(|n| n == e.name))
            .map(|e| e.line.clone())
            .collect())
    }
}

impl PodStore {
    fn new_pod(&mut self, ns: &str, name: &str) -> Value {
        self.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": uid,
                "resourceVersion": self.rv.to_string(),
                "creationTimestamp": "2026-11-27T07:00:00Z",
                "labels": {"app": "demo"},
            },
            "spec": {"containers": [{"name": "main", "image": "registry.example/demo:1"}]},
            "status": {"phase": "Running"},
        })
    }
}

fn set_rv(pod: &mut Value, rv: u64) {
    pod["metadata"]["resourceVersion"] = Value::String(rv.to_string());
}

struct State {
    port: AtomicU16,
    require_client_cert: bool,
    max_concurrent_streams: Option<u32>,
    goaway_every: Option<usize>,
    http1_only: bool,
    /// GOAWAYs sent because of `goaway_every`.
    goaways_sent: std::sync::atomic::AtomicUsize,
    /// Responses whose body was dropped before its end: the client reset the stream (or
    /// closed the connection) mid-response.
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections that negotiated HTTP/2, ever.
    h2_connections: std::sync::atomic::AtomicUsize,
    tokens: RwLock<HashSet<String>>,
    pki: RwLock<Pki>,
    tls: RwLock<Arc<ServerConfig>>,
    log: Mutex<Vec<Seen>>,
    /// Bumped on every log change so waiters re-check.
    log_gen: watch::Sender<u64>,
    /// Bumped to close every open connection.
    close: watch::Sender<u64>,
    /// Bumped to shut every open connection down gracefully (HTTP/2: GOAWAY).
    goaway: watch::Sender<u64>,
    connections: Gauge,
    watches: Gauge,
    upgrades: Gauge,
    store: Mutex<PodStore>,
    /// Open watches by the namespace they watch (`None`: all namespaces), each with its
    /// own unbounded queue: an event wakes only the watches it concerns (the benchmark
    /// holds 1,000 watches on 1,000 namespaces), and none is ever dropped.
    watchers: Mutex<HashMap<Option<String>, Vec<mpsc::UnboundedSender<WatchMsg>>>>,
    held: watch::Sender<HashSet<String>>,
    released: watch::Sender<HashSet<String>>,
}

impl State {
    fn token_ok(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| self.tokens.read().unwrap().contains(t))
    }

    fn record(&self, seen: Seen) -> usize {
        let idx = {
            let mut log = self.log.lock().unwrap();
            log.push(seen);
            log.len() - 1
        };
        self.log_gen.send_modify(|g| *g += 1);
        idx
    }

    fn finish_body(&self, idx: usize, len: u64, sha: String, complete: bool) {
        if let Some(s) = self.log.lock().unwrap().get_mut(idx) {
            s.body_len = len;
            s.body_sha256 = sha;
            s.body_complete = complete;
        }
        self.log_gen.send_modify(|g| *g += 1);
    }
}

/// Built per `Pki` and swapped whole by `set_pki` (each handshake takes the current one):
/// unlike a certificate resolver alone, this also moves the client-cert verifier to the new CA.
fn tls_config(pki: &Pki, require_client_cert: bool, http1_only: bool) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der()).expect("add CA to roots");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(pki.server_cert_chain(), pki.server_key())
        .expect("server cert");
    cfg.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

/// A running (or stopped, restartable) fake API server. Dropping it stops it.
pub struct FakeApi {
    state: Arc<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FakeApi {
    /// Starts listening on `127.0.0.1:{opts.port}`.
    pub async fn start(opts: FakeApiOptions) -> FakeApi {
        let mut store = PodStore {
            rv: 1000,
            next_uid: 0,
            pods: BTreeMap::new(),
            history: History::default(),
        };
        for i in 0..opts.pods {
            let name = format!("pod-{i}");
            store.rv += 1;
            let pod = store.new_pod(DEFAULT_NAMESPACE, &name);
            store.pods.insert((DEFAULT_NAMESPACE.into(), name), pod);
        }
        store.history.start_rv = store.rv;
        store.history.forgotten = store.rv;
        let state = Arc::new(State {
            port: AtomicU16::new(opts.port),
            require_client_cert: opts.require_client_cert,
            max_concurrent_streams: opts.max_concurrent_streams,
            goaway_every: opts.goaway_every,
            http1_only: opts.http1_only,
            goaways_sent: std::sync::atomic::AtomicUsize::new(0),
            abandoned: Arc::default(),
            h2_connections: std::sync::atomic::AtomicUsize::new(0),
            tokens: RwLock::new(opts.tokens.into_iter().collect()),
            tls: RwLock::new(tls_config(
                &opts.pki,
                opts.require_client_cert,
                opts.http1_only,
            )),
            pki: RwLock::new(opts.pki),
            log: Mutex::new(Vec::new()),
            log_gen: watch::Sender::new(0),
            close: watch::Sender::new(0),
            goaway: watch::Sender::new(0),
            connections: Gauge(watch::Sender::new(0)),
            watches: Gauge(watch::Sender::new(0)),
            upgrades: Gauge(watch::Sender::new(0)),
            store: Mutex::new(store),
            watchers: Mutex::new(HashMap::new()),
            held: watch::Sender::new(HashSet::new()),
            released: watch::Sender::new(HashSet::new()),
        });
        let api = FakeApi {
            state,
            accept: Mutex::new(None),
        };
        api.listen().await;
        api
    }

    async fn listen(&self) {
        let port = self.state.port.load(Ordering::Relaxed);
        // After a stop, the port is free for anyone on the machine: a test's bind(:0)
        // or another test process may hold it for a while. A restart waits for it.
        let listener = within(&format!("port {port} to be free again"), async {
            loop {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => {
                        return other
                            .unwrap_or_else(|e| panic!("fake API: bind 127.0.0.1:{port}: {e}"));
                    }
                }
            }
        })
        .await;
        self.state
            .port
            .store(listener.local_addr().unwrap().port(), Ordering::Relaxed);
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                // Counted and subscribed to the close signal before the task exists, so a
                // `stop()` racing with this accept still closes it.
                let guard = gauge_inc(&state, |s| &s.connections);
                let close = state.close.subscribe();
                let goaway = state.goaway.subscribe();
                tokio::spawn(serve_connection(state.clone(), tcp, guard, close, goaway));
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    pub fn port(&self) -> u16 {
        self.state.port.load(Ordering::Relaxed)
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// The PKI currently served.
    pub fn pki(&self) -> Pki {
        self.state.pki.read().unwrap().clone()
    }

    /// Replaces the set of accepted bearer tokens (checked per request, so this applies to
    /// requests on already open connections too).
    pub fn set_tokens(&self, tokens: &[&str]) {
        *self.state.tokens.write().unwrap() = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// New TLS handshakes use `pki` (server certificate, and client CA when client certs are
    /// required). Open connections keep theirs: see [`FakeApi::close_connections`].
    pub fn set_pki(&self, pki: Pki) {
        *self.state.tls.write().unwrap() =
            tls_config(&pki, self.state.require_client_cert, self.state.http1_only);
        *self.state.pki.write().unwrap() = pki;
    }

    /// Shuts every open connection down gracefully, as an API server does with
    /// `--goaway-chance` or when it stops: over HTTP/2 a GOAWAY, after which the streams
    /// already open (watches too) go on and new ones must use another connection.
    pub fn goaway(&self) {
        self.state.goaway.send_modify(|g| *g += 1);
    }

    /// Abruptly closes every open client connection (including upgraded ones and any
    /// in-progress watch), so clients must reconnect.
    pub fn close_connections(&self) {
        self.state.close.send_modify(|g| *g += 1);
    }

    /// Stops listening and closes every connection; returns once they are all gone.
    pub async fn stop(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // Awaiting the aborted task guarantees the listener is dropped (port free).
            let _ = task.await;
        }
        self.close_connections();
        self.wait_open_connections(0).await;
    }

    /// Listens again on the same port after [`FakeApi::stop`].
    pub async fn restart(&self) {
        assert!(!self.is_running(), "restart: fake API is still running");
        self.listen().await;
    }

    pub fn is_running(&self) -> bool {
        self.accept.lock().unwrap().is_some()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
        self.state.log_gen.send_modify(|g| *g += 1);
    }

    /// The first logged request (past or future) matching `pred`.
    pub async fn wait_for_request(&self, pred: impl Fn(&Seen) -> bool) -> Seen {
        let mut rx = self.state.log_gen.subscribe();
        within("a matching request at the fake API", async {
            loop {
                rx.borrow_and_update();
                if let Some(s) = self.state.log.lock().unwrap().iter().find(|s| pred(s)) {
                    return s.clone();
                }
                rx.changed().await.expect("log_gen sender lives in state");
            }
        })
        .await
    }

    /// Waits until at least `n` requests were logged; returns the whole log.
    pub async fn wait_requests(&self, n: usize) -> Vec<Seen> {
        within(
            &format!("{n} requests at the fake API"),
            self.wait_requests_forever(n),
        )
        .await
    }

    /// [`FakeApi::wait_requests`] without a time limit (for the standalone example).
    pub async fn wait_requests_forever(&self, n: usize) -> Vec<Seen> {
        let mut rx = self.state.log_gen.subscribe();
        loop {
            rx.borrow_and_update();
            let log = self.requests();
            if log.len() >= n {
                return log;
            }
            rx.changed().await.expect("log_gen sender lives in state");
        }
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        *self.state.watches.0.borrow()
    }

    pub async fn wait_open_watches(&self, n: usize) {
        gauge_wait(&self.state.watches, "open watches", n).await
    }

    /// Connections that negotiated HTTP/2 in ALPN since start (closed ones included).
    /// GOAWAYs sent because of [`FakeApiOptions::goaway_every`].
    pub fn goaways_sent(&self) -> usize {
        self.state.goaways_sent.load(Ordering::Relaxed)
    }

    /// Responses the client abandoned mid-body (a reset stream, a closed connection).
    pub fn abandoned_responses(&self) -> usize {
        self.state.abandoned.load(Ordering::Relaxed)
    }

    pub fn h2_connections_total(&self) -> usize {
        self.state.h2_connections.load(Ordering::Relaxed)
    }

    /// Client connections currently open (an upgraded connection counts until its echo ends).
    pub fn open_connections(&self) -> usize {
        *self.state.connections.0.borrow()
    }

    pub async fn wait_open_connections(&self, n: usize) {
        gauge_wait(&self.state.connections, "open connections", n).await
    }

    /// Upgraded (101) connections currently echoing.
    pub fn open_upgrades(&self) -> usize {
        *self.state.upgrades.0.borrow()
    }

    pub async fn wait_open_upgrades(&self, n: usize) {
        gauge_wait(&self.state.upgrades, "open upgrades", n).await
    }

    /// Sends a watch event for pod `name` in `default` to every open watch; see
    /// [`FakeApi::send_watch_event_in`].
    pub fn send_watch_event(&self, event_type: &str, name: &str) -> Value {
        self.send_watch_event_in(DEFAULT_NAMESPACE, event_type, name)
    }

    /// Applies an event to the pod store and sends it to the watches on `ns` and on all
    /// namespaces: `ADDED` creates (or replaces) the pod, `MODIFIED` bumps its
    /// resourceVersion (creating it if missing), `DELETED` removes it, `BOOKMARK` carries
    /// only the current resourceVersion, `ERROR` carries a 410 Expired Status (what makes
    /// `kube`'s watcher re-list). Returns the event's object.
    /// Only watches open at the time receive it: await [`FakeApi::wait_open_watches`] first.
    pub fn send_watch_event_in(&self, ns: &str, event_type: &str, name: &str) -> Value {
        apply_event(&self.state, ns, event_type, name)
    }

    /// Whether a watch on `ns` (or on all namespaces) is open: the benchmark's event
    /// generators skip namespaces nobody watches.
    pub fn watched(&self, ns: &str) -> bool {
        let watchers = self.state.watchers.lock().unwrap();
        watch_keys(ns).iter().any(|key| {
            watchers
                .get(key)
                .is_some_and(|list| list.iter().any(|tx| !tx.is_closed()))
        })
    }

    /// Ends every open watch stream cleanly (as the real server does at `timeoutSeconds`).
    pub fn end_watches(&self) {
        let _store = self.state.store.lock().unwrap();
        for list in self.state.watchers.lock().unwrap().values_mut() {
            list.retain(|tx| tx.send(WatchMsg::End).is_ok());
        }
    }

    // --- Resumable watch history (watch-resume tests) ---

    /// Sends a BOOKMARK with the current resourceVersion to the watches on `ns` (and on
    /// all namespaces) that asked for bookmarks; returns that resourceVersion.
    pub fn send_bookmark_in(&self, ns: &str) -> u64 {
        let store = self.state.store.lock().unwrap();
        let rv = store.rv;
        let line = watch_line(
            "BOOKMARK",
            &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}),
        );
        let mut watchers = self.state.watchers.lock().unwrap();
        for key in watch_keys(ns) {
            if let Some(list) = watchers.get_mut(&key) {
                list.retain(|tx| tx.send(WatchMsg::Bookmark(line.clone())).is_ok());
            }
        }
        rv
    }

    /// The current resourceVersion (that of the last event).
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().unwrap().rv
    }

    /// Forgets every event so far, as etcd's compaction does: a watch from an older
    /// resourceVersion gets the 410 `ERROR` event.
    pub fn compact(&self) {
        let mut store = self.state.store.lock().unwrap();
        store.history.forgotten = store.rv;
        store.history.events.clear();
    }

    /// Names of the pods in `ns`, sorted.
    pub fn pod_names(&self, ns: &str) -> Vec<String> {
        let store = self.state.store.lock().unwrap();
        store
            .pods
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Lets `GET /hold/{id}` answer (now, or as soon as it arrives).
    pub fn release(&self, id: &str) {
        self.state.released.send_modify(|s| {
            s.insert(id.to_owned());
        });
    }

    /// Waits until a `GET /hold/{id}` has arrived (it then stays pending until released).
    pub async fn wait_held(&self, id: &str) {
        let mut rx = self.state.held.subscribe();
        within(&format!("request /hold/{id} to arrive"), async {
            rx.wait_for(|s| s.contains(id)).await.expect("held sender");
        })
        .await
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.close_connections();
    }
}

/// The pod store and every open watch see events through here (the test-facing API and
/// the create/delete handlers alike).
fn apply_event(state: &State, ns: &str, event_type: &str, name: &str) -> Value {
    let mut store = state.store.lock().unwrap();
    let key = (ns.to_owned(), name.to_owned());
    let object = match event_type {
        "ADDED" => {
            store.rv += 1;
            let pod = store.new_pod(ns, name);
            store.pods.insert(key, pod.clone());
            pod
        }
        "MODIFIED" => {
            store.rv += 1;
            let rv = store.rv;
            let mut pod = match store.pods.get(&key) {
                Some(p) => p.clone(),
                None => store.new_pod(ns, name),
            };
            set_rv(&mut pod, rv);
            pod["metadata"]["annotations"] = json!({"fake-api/modified-at": rv.to_string()});
            store.pods.insert(key, pod.clone());
            pod
        }
        "DELETED" => {
            store.rv += 1;
            let rv = store.rv;
            let mut pod = match store.pods.remove(&key) {
                Some(p) => p,
                None => store.new_pod(ns, name),
            };
            set_rv(&mut pod, rv);
            pod
        }
        "BOOKMARK" => json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": store.rv.to_string()},
        }),
        "ERROR" => serde_json::from_str(&status_json(
            410,
            "Expired",
            "too old resource version",
            None,
        ))
        .expect("status JSON"),
        other => panic!("unknown watch event type {other}"),
    };
    let line = watch_line(event_type, &object);
    if matches!(event_type, "ADDED" | "MODIFIED" | "DELETED") {
        let rv = store.rv;
        store.history.record(ns, name, rv, &line);
    }
    // Sent under the store lock so a watch starting concurrently either sees the pod in
    // its initial snapshot or receives this event, never neither nor both.
    let msg = WatchMsg::Event {
        name: name.to_owned(),
        line,
    };
    let mut watchers = state.watchers.lock().unwrap();
    for key in watch_keys(ns) {
        if let Some(list) = watchers.get_mut(&key) {
            list.retain(|tx| tx.send(msg.clone()).is_ok());
        }
    }
    object
}

/// The keys of `State::watchers` whose watches see an event in `ns`: that namespace's,
/// and all namespaces'.
fn watch_keys(ns: &str) -> [Option<String>; 2] {
    [Some(ns.to_owned()), None]
}

fn watch_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// Per-connection facts the handler needs.
struct ConnInfo {
    client_cn: Option<String>,
    tls_suite: Option<String>,
    has_client_cert: bool,
    // Keeps the connection counted while any clone lives (an upgrade task holds one).
    _guard: GaugeGuard,
}

async fn serve_connection(
    state: Arc<State>,
    tcp: tokio::net::TcpStream,
    guard: GaugeGuard,
    mut close: watch::Receiver<u64>,
    mut goaway: watch::Receiver<u64>,
) {
    let acceptor = TlsAcceptor::from(state.tls.read().unwrap().clone());
    let serve = async {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let client_cn = cert
            .as_deref()
            .and_then(|c| state.pki.read().unwrap().client_cn(c));
        let tls_suite = tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(str::to_owned);
        let conn = Arc::new(ConnInfo {
            client_cn,
            tls_suite,
            has_client_cert: cert.is_some(),
            _guard: guard,
        });
        let svc_state = state.clone();
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            state.h2_connections.fetch_add(1, Ordering::Relaxed);
        }
        // Per connection: responses served (for `goaway_every`) and the GOAWAY trigger.
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conn_goaway = Arc::new(tokio::sync::Notify::new());
        let trigger = conn_goaway.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let state = svc_state.clone();
            let conn = conn.clone();
            let served = served.clone();
            let trigger = trigger.clone();
            async move {
                let h2 = req.version() == Version::HTTP_2;
                let resp = handle(state.clone(), conn, req).await?;
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                if h2 && state.goaway_every.is_some_and(|every| n % every == 0) {
                    state.goaways_sent.fetch_add(1, Ordering::Relaxed);
                    trigger.notify_one();
                }
                let pause = n % 2 == 0;
                // HTTP/1.1 bodies of known length are dropped once written, by design.
                let abandoned = h2.then(|| state.abandoned.clone());
                Ok::<_, Infallible>(resp.map(|body| go_framing(body, pause, abandoned)))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        if state.http1_only {
            // No HTTP/2 by prior knowledge either: a preface is a malformed HTTP/1.1 request.
            builder = builder.http1_only();
        }
        builder
            .http2()
            .max_concurrent_streams(state.max_concurrent_streams.unwrap_or(GO_MAX_STREAMS));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = goaway.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            () = conn_goaway.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    };
    tokio::select! {
        _ = close.changed() => {}
        _ = serve => {}
    }
}

/// Go's `http2.Server` default `MaxConcurrentStreams`.
const GO_MAX_STREAMS: u32 = 250;

/// A response body framed as Go's HTTP/2 server frames it: the last data frame does not
/// carry END_STREAM; an empty DATA frame does, after the body (with `pause`, after the
/// serving task has yielded once, as when Go's handler returns after its last flush).
fn go_framing(
    body: RespBody,
    pause: bool,
    abandoned: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> RespBody {
    // A handler that writes nothing: Go puts END_STREAM on the HEADERS frame.
    if body.is_end_stream() {
        return body;
    }
    UnsyncBoxBody::new(GoFraming {
        inner: body,
        pause,
        timer: None,
        ended: false,
        abandoned,
    })
}

struct GoFraming {
    inner: RespBody,
    /// Pause before END_STREAM; the timer is made once the body is through.
    pause: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
    abandoned: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// How long END_STREAM waits after the body when it pauses: longer than the proxy takes to
/// write the body's end to its client, as Go's handler returning after its last flush
/// can be (against Go, the reset LISTs had END_STREAM one read after the body).
const END_STREAM_PAUSE: Duration = Duration::from_millis(1);

impl Drop for GoFraming {
    fn drop(&mut self) {
        if let (false, Some(n)) = (self.ended, &self.abandoned) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Body for GoFraming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.inner.is_end_stream() && this.pause {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(END_STREAM_PAUSE)));
            ready!(timer.as_mut().poll(cx));
            this.pause = false;
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    /// Never known before the end: so hyper sends END_STREAM on a frame of its own.
    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(header::UPGRADE)
}

fn is_upgrade_path(path: &str) -> bool {
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
fn effective_path(path: &str) -> (&str, bool) {
    if let Some(rest) = path.strip_prefix("/public") {
        if rest.starts_with('/') {
            return (rest, true);
        }
    }
    let public = matches!(path, "/healthz" | "/livez" | "/readyz");
    (path, public)
}

fn raw_target<B>(req: &Request<B>) -> String {
    if req.version() == Version::HTTP_2 {
        req.uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    } else {
        req.uri().to_string()
    }
}

fn seen_of<B>(req: &Request<B>, conn: &ConnInfo, token: Option<String>, authorized: bool) -> Seen {
    Seen {
        method: req.method().to_string(),
        uri: raw_target(req),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        authority: req.uri().authority().map(|a| a.to_string()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        token,
        client_cn: conn.client_cn.clone(),
        authorized,
        tls_suite: conn.tls_suite.clone(),
        version: req.version(),
        body_len: 0,
        body_sha256: hex(&Sha256::digest(b"")),
        body_complete: true,
    }
}

async fn handle(
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
        body_sha256: hex(&hasher.finalize()),
        body_complete: complete,
        ..seen
    };
    state.record(seen.clone());

    if !authorized {
        return Ok(unauthorized());
    }
    Ok(route(&state, &parts, &path, &seen, body).await)
}

async fn route(
    state: &Arc<State>,
    req: &http::request::Parts,
    path: &str,
    seen: &Seen,
    body: Bytes,
) -> Response<RespBody> {
    let method = req.method.clone();
    let query = Query::parse(req.uri.query());
    let q = |k: &str| query.get(k);
    let get = method == Method::GET;
    let segs: Vec<&str> = path.split('/').collect();

    if path == "/echo" || path.starts_with("/echo/") {
        return echo(seen);
    }
    match segs.as_slice() {
        ["", "api"] if get => json_resp(200, api_versions(state)),
        ["", "apis"] if get => json_resp(
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        ["", "version"] if get => json_resp(200, version()),
        ["", "api", "v1"] if get => json_resp(200, api_resources()),
        ["", "healthz" | "livez" | "readyz"] if get => text_resp(200, "ok"),
        ["", "api", "v1", "pods"] if get => list_or_watch(state, None, &query),
        ["", "api", "v1", "namespaces", ns, "pods"] if get => {
            list_or_watch(state, Some(ns), &query)
        }
        ["", "api", "v1", "namespaces", ns, "pods"] if method == Method::POST => {
            create_pod(state, ns, &body)
        }
        ["", "api", "v1", "namespaces", ns, "pods", name] if get => {
            let store = state.store.lock().unwrap();
            match store.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => json_resp(200, p.clone()),
                None => pod_not_found(name),
            }
        }
        ["", "api", "v1", "namespaces", ns, "pods", name] if method == Method::DELETE => {
            delete_pod(state, ns, name)
        }
        [
            "",
            "api",
            "v1",
            "namespaces",
            _,
            "pods",
            _,
            "exec" | "attach" | "portforward",
        ]
        | ["", "upgrade", ..] => status(400, "BadRequest", "Upgrade request required"),
        ["", "bytes"] if get => {
            let n = q("n").and_then(|v| v.parse().ok()).unwrap_or(0usize);
            bytes_resp(n, q("chunked").is_some())
        }
        ["", "slow"] if get => {
            let ms = q("ms").and_then(|v| v.parse().ok()).unwrap_or(0u64);
            // The server being slow is the point here, not test synchronisation.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_resp(200, json!({"slept_ms": ms}))
        }
        ["", "hold", id] if get => {
            let id = id.to_string();
            let mut released = state.released.subscribe();
            state.held.send_modify(|s| {
                s.insert(id.clone());
            });
            let _ = released.wait_for(|s| s.contains(&id)).await;
            json_resp(200, json!({"held": id}))
        }
        ["", "redirect"] if get => {
            let mut r = json_resp(
                302,
                json!({"redirect": "https://example.invalid/elsewhere"}),
            );
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_static("https://example.invalid/elsewhere"),
            );
            r
        }
        [
            "",
            "api" | "apis" | "version" | "healthz" | "livez" | "readyz" | "bytes" | "slow"
            | "redirect" | "stream-echo",
        ]
        | ["", "api", "v1"]
        | ["", "api", "v1", "pods"]
        | ["", "api", "v1", "namespaces", _, "pods"]
        | ["", "api", "v1", "namespaces", _, "pods", _]
        | ["", "hold", _] => status(
            405,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource ({method})"),
        ),
        // What RBAC refuses the test service account (--record-rbac marks it).
        ["", "api", "v1", "namespaces", _, "secrets", ..] => status(
            403,
            "Forbidden",
            "secrets is forbidden: User \"system:serviceaccount:default:app\" cannot get resource \"secrets\"",
        ),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// Decoded query parameters, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn json_resp(code: u16, value: Value) -> Response<RespBody> {
    json_text_resp(code, serde_json::to_string(&value).unwrap())
}

fn json_text_resp(code: u16, text: String) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .unwrap()
}

fn text_resp(code: u16, text: &'static str) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .unwrap()
}

/// A `metav1.Status` failure body with the real server's field order.
pub fn status_json(code: u16, reason: &str, message: &str, details: Option<Value>) -> String {
    let details = details
        .map(|d| format!(r#","details":{d}"#))
        .unwrap_or_default();
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":"{reason}"{details},"code":{code}}}"#,
        serde_json::to_string(message).unwrap()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    json_text_resp(code, status_json(code, reason, message, None))
}

fn unauthorized() -> Response<RespBody> {
    status(401, "Unauthorized", "Unauthorized")
}

fn pod_not_found(name: &str) -> Response<RespBody> {
    json_text_resp(
        404,
        status_json(
            404,
            "NotFound",
            &format!("pods \"{name}\" not found"),
            Some(json!({"name": name, "kind": "pods"})),
        ),
    )
}

fn api_versions(state: &State) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{
            "clientCIDR": "0.0.0.0/0",
            "serverAddress": format!("127.0.0.1:{}", state.port.load(Ordering::Relaxed)),
        }],
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0",
        "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T17:59:15Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["create", "delete", "get", "list", "watch"],
                "shortNames": ["po"],
                "categories": ["all"],
            },
            {"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
            {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
        ],
    })
}

fn name_filter(q: &Query) -> Option<String> {
    let selector = q.get("fieldSelector")?;
    selector.split(',').find_map(|term| {
        term.strip_prefix("metadata.name=")
            .or_else(|| term.strip_prefix("metadata.name=="))
            .map(str::to_owned)
    })
}

fn list_or_watch(state: &Arc<State>, ns: Option<&str>, q: &Query) -> Response<RespBody> {
    let name = name_filter(q);
    let matches = |pod_ns: &str, pod_name: &str| {
        ns.is_none_or(|n| n == pod_ns) && name.as_deref().is_none_or(|n| n == pod_name)
    };
    let store = state.store.lock().unwrap();
    let items: Vec<Value> = store
        .pods
        .iter()
        .filter(|((pns, pname), _)| matches(pns, pname))
        .map(|(_, p)| p.clone())
        .collect();

    if matches!(q.get("watch"), Some("1" | "true")) {
        // Subscribed under the store lock: see send_watch_event_in.
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut watchers = state.watchers.lock().unwrap();
            let list = watchers.entry(ns.map(str::to_owned)).or_default();
            list.retain(|tx| !tx.is_closed());
            list.push(tx);
        }
        let initial: VecDeque<Bytes> = match q.get("resourceVersion") {
            None | Some("" | "0") => items.iter().map(|p| watch_line("ADDED", p)).collect(),
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => match store.history.replay(rv, ns, name.as_deref()) {
                    Ok(events) => events,
                    Err(forgotten) => {
                        drop(store);
                        return too_old(rv, forgotten);
                    }
                },
                Err(_) => VecDeque::new(),
            },
        };
        drop(store);
        let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok());
        let ws = WatchStream {
            rx,
            initial,
            bookmarks: matches!(q.get("allowWatchBookmarks"), Some("true" | "1")),
            deadline: timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s)),
            name,
            _guard: gauge_inc(state, |s| &s.watches),
        };
        let stream = futures::stream::unfold(ws, WatchStream::next).map(Ok::<_, BoxError>);
        return Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap();
    }

    let limit = q
        .get("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let items: Vec<Value> = match limit {
        Some(l) => items.into_iter().take(l).collect(),
        None => items,
    };
    json_resp(
        200,
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    )
}

/// The state of one watch response body. Dropping it (stream ended, or hyper dropped the
/// body because the client went away) decrements the open-watches gauge.
struct WatchStream {
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    initial: VecDeque<Bytes>,
    /// `allowWatchBookmarks=true`: gets [`WatchMsg::Bookmark`]s.
    bookmarks: bool,
    deadline: Option<tokio::time::Instant>,
    /// `fieldSelector=metadata.name=…`: the namespace needs no filter here, the queue
    /// only ever receives the watched namespace's events.
    name: Option<String>,
    _guard: GaugeGuard,
}

impl WatchStream {
    async fn next(mut self) -> Option<(Frame<Bytes>, Self)> {
        if let Some(line) = self.initial.pop_front() {
            return Some((Frame::data(line), self));
        }
        loop {
            let msg = match self.deadline {
                Some(d) => tokio::time::timeout_at(d, self.rx.recv()).await.ok()?,
                None => self.rx.recv().await,
            };
            match msg {
                Some(WatchMsg::Event { name, line }) => {
                    if self.name.as_deref().is_none_or(|n| n == name) {
                        return Some((Frame::data(line), self));
                    }
                }
                Some(WatchMsg::Bookmark(line)) => {
                    if self.bookmarks {
                        return Some((Frame::data(line), self));
                    }
                }
                Some(WatchMsg::End) | None => return None,
            }
        }
    }
}

/// A watch from a forgotten resourceVersion, as the API server answers it: 200, one
/// `ERROR` event with a 410 Expired Status, the end (`apiserver/pkg/storage/cacher`).
fn too_old(rv: u64, forgotten: u64) -> Response<RespBody> {
    let status: Value = serde_json::from_str(&status_json(
        410,
        "Expired",
        &format!("too old resource version: {rv} ({forgotten})"),
        None,
    ))
    .expect("status JSON");
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(watch_line("ERROR", &status)))
        .unwrap()
}

fn create_pod(state: &Arc<State>, ns: &str, body: &[u8]) -> Response<RespBody> {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "request body is not a JSON object");
    };
    let Some(name) = obj["metadata"]["name"].as_str() else {
        return status(422, "Invalid", "metadata.name: Required value");
    };
    if state
        .store
        .lock()
        .unwrap()
        .pods
        .contains_key(&(ns.to_owned(), name.to_owned()))
    {
        return json_text_resp(
            409,
            status_json(
                409,
                "AlreadyExists",
                &format!("pods \"{name}\" already exists"),
                Some(json!({"name": name, "kind": "pods"})),
            ),
        );
    }
    // Stored as the fake's canonical pod (the request's spec is not kept).
    let pod = apply_event(state, ns, "ADDED", name);
    json_resp(201, pod)
}

fn delete_pod(state: &Arc<State>, ns: &str, name: &str) -> Response<RespBody> {
    if !state
        .store
        .lock()
        .unwrap()
        .pods
        .contains_key(&(ns.to_owned(), name.to_owned()))
    {
        return pod_not_found(name);
    }
    let pod = apply_event(state, ns, "DELETED", name);
    json_resp(200, pod)
}

fn echo(seen: &Seen) -> Response<RespBody> {
    json_resp(
        200,
        json!({
            "method": seen.method,
            "uri": seen.uri,
            "authority": seen.authority,
            "version": format!("{:?}", seen.version),
            "headers": seen.headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>(),
            "token": seen.token,
            "client_cn": seen.client_cn,
            "body_len": seen.body_len,
            "body_sha256": seen.body_sha256,
        }),
    )
}

fn bytes_resp(n: usize, chunked: bool) -> Response<RespBody> {
    let stream = futures::stream::unfold(0usize, move |off| async move {
        (off < n).then(|| {
            let len = BYTES_CHUNK.min(n - off);
            (Frame::data(Bytes::from(pattern_at(off, len))), off + len)
        })
    })
    .map(Ok::<_, BoxError>);
    let mut b = Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if !chunked {
        b = b.header(header::CONTENT_LENGTH, n);
    }
    b.body(StreamBody::new(stream).boxed_unsync()).unwrap()
}

fn stream_echo(state: Arc<State>, idx: usize, req: Request<Incoming>) -> Response<RespBody> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let tap = Tap {
        inner: req.into_body(),
        hasher: Sha256::new(),
        len: 0,
        state,
        idx,
        done: false,
        ended: false,
    };
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .body(tap.boxed_unsync())
        .unwrap()
}

/// Passes a request body through as a response body while hashing it, and records the
/// totals in the request log when it ends (or is dropped half-way).
struct Tap {
    inner: Incoming,
    hasher: Sha256,
    len: u64,
    state: Arc<State>,
    idx: usize,
    done: bool,
    ended: bool,
}

impl Tap {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let sha = hex(&std::mem::take(&mut self.hasher).finalize());
            self.state.finish_body(self.idx, self.len, sha, self.ended);
        }
    }
}

impl Body for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.hasher.update(d);
                    this.len += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.ended = true;
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // hyper may never poll a body that was empty from the start.
        self.ended |= self.inner.is_end_stream();
        self.finish();
    }
}

fn upgrade(
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
    base64(&sha1(&input))
}

/// SHA-1, only for the WebSocket handshake (no sha1 crate among the dependencies).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
