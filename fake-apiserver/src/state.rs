//! The server's shared state: configuration fixed at start, what can change under a
//! running server (tokens, PKI), the request log, and the gauges and signals tests await
//! (`tokio::sync::watch` channels, so nobody sleeps).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex, RwLock};

use rustls::ServerConfig;
use tokio::sync::{mpsc, watch};

use crate::pki::Pki;
use crate::seen::Seen;
use crate::store::{PodStore, WatchMsg};
use crate::wait::within;

/// A gauge whose changes can be awaited.
pub(crate) struct Gauge(pub(crate) watch::Sender<usize>);

pub(crate) struct GaugeGuard(Arc<State>, fn(&State) -> &Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).0.send_modify(|n| *n -= 1);
    }
}

pub(crate) fn gauge_inc(state: &Arc<State>, which: fn(&State) -> &Gauge) -> GaugeGuard {
    which(state).0.send_modify(|n| *n += 1);
    GaugeGuard(state.clone(), which)
}

pub(crate) async fn gauge_wait(g: &Gauge, what: &str, n: usize) {
    let mut rx = g.0.subscribe();
    within(&format!("{what} == {n} (now {})", *rx.borrow()), async {
        rx.wait_for(|v| *v == n)
            .await
            .expect("gauge sender lives in state");
    })
    .await;
}

pub(crate) struct State {
    pub(crate) port: AtomicU16,
    pub(crate) require_client_cert: bool,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) goaway_every: Option<usize>,
    pub(crate) http1_only: bool,
    /// [`FakeApiOptions::end_stream_pause`](crate::FakeApiOptions::end_stream_pause).
    pub(crate) end_stream_pause: bool,
    /// GOAWAYs sent because of `goaway_every`.
    pub(crate) goaways_sent: std::sync::atomic::AtomicUsize,
    /// Responses whose body was dropped before its end: the client reset the stream (or
    /// closed the connection) mid-response.
    pub(crate) abandoned: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections that negotiated HTTP/2, ever.
    pub(crate) h2_connections: std::sync::atomic::AtomicUsize,
    pub(crate) tokens: RwLock<HashSet<String>>,
    pub(crate) pki: RwLock<Pki>,
    pub(crate) tls: RwLock<Arc<ServerConfig>>,
    pub(crate) log: Mutex<Vec<Seen>>,
    /// Bumped on every log change so waiters re-check.
    pub(crate) log_gen: watch::Sender<u64>,
    /// Bumped to close every open connection.
    pub(crate) close: watch::Sender<u64>,
    /// Bumped to shut every open connection down gracefully (HTTP/2: GOAWAY).
    pub(crate) goaway: watch::Sender<u64>,
    pub(crate) connections: Gauge,
    pub(crate) watches: Gauge,
    pub(crate) upgrades: Gauge,
    pub(crate) store: Mutex<PodStore>,
    /// Open watches by the namespace they watch (`None`: all namespaces), each with its
    /// own unbounded queue: an event wakes only the watches it concerns (the benchmark
    /// holds 1,000 watches on 1,000 namespaces), and none is ever dropped.
    pub(crate) watchers: Mutex<HashMap<Option<String>, Vec<mpsc::UnboundedSender<WatchMsg>>>>,
    pub(crate) held: watch::Sender<HashSet<String>>,
    pub(crate) released: watch::Sender<HashSet<String>>,
}

impl State {
    pub(crate) fn token_ok(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| self.tokens.read().unwrap().contains(t))
    }

    pub(crate) fn record(&self, seen: Seen) -> usize {
        let idx = {
            let mut log = self.log.lock().unwrap();
            log.push(seen);
            log.len() - 1
        };
        self.log_gen.send_modify(|g| *g += 1);
        idx
    }

    pub(crate) fn finish_body(&self, idx: usize, len: u64, sha: String, complete: bool) {
        if let Some(s) = self.log.lock().unwrap().get_mut(idx) {
            s.body_len = len;
            s.body_sha256 = sha;
            s.body_complete = complete;
        }
        self.log_gen.send_modify(|g| *g += 1);
    }
}
