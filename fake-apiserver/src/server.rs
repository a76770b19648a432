//! The listener and the connections: binding (and rebinding after a stop), TLS with the
//! current PKI, per-connection serving over HTTP/1.1 with upgrades or HTTP/2 with Go's
//! stream limit, GOAWAY on demand or every n-th response, and closing everything on stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::DEFAULT_NAMESPACE;
use crate::framing::{GO_MAX_STREAMS, go_framing};
use crate::handler::handle;
use crate::options::FakeApiOptions;
use crate::pki::Pki;
use crate::state::{Gauge, GaugeGuard, State, gauge_inc};
use crate::store::{History, PodStore};
use crate::wait::within;

/// Built per `Pki` and swapped whole by `set_pki` (each handshake takes the current one):
/// unlike a certificate resolver alone, this also moves the client-cert verifier to the new CA.
pub(crate) fn tls_config(
    pki: &Pki,
    require_client_cert: bool,
    http1_only: bool,
) -> Arc<ServerConfig> {
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
    pub(crate) state: Arc<State>,
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
            end_stream_pause: opts.end_stream_pause,
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
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.close_connections();
    }
}

/// Per-connection facts the handler needs.
pub(crate) struct ConnInfo {
    pub(crate) client_cn: Option<String>,
    pub(crate) tls_suite: Option<String>,
    pub(crate) has_client_cert: bool,
    // Keeps the connection counted while any clone lives (an upgrade task holds one).
    pub(crate) _guard: GaugeGuard,
}

pub(crate) async fn serve_connection(
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
                let pause = state.end_stream_pause && n % 2 == 0;
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
