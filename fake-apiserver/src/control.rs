//! What a test observes and drives on a running [`FakeApi`]: the request log, the gauges
//! (connections, watches, upgrades), watch events and bookmarks, the history's
//! compaction, and held requests.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::DEFAULT_NAMESPACE;
use crate::seen::Seen;
use crate::server::FakeApi;
use crate::state::gauge_wait;
use crate::store::{WatchMsg, apply_event, watch_keys, watch_line};
use crate::wait::within;

impl FakeApi {
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
    /// GOAWAYs sent because of [`FakeApiOptions::goaway_every`](crate::FakeApiOptions::goaway_every).
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
