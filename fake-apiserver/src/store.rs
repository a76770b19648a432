//! The pods and their numbered event history: every change goes through [`apply_event`],
//! which updates the store, records the event for resumption, and sends it to the open
//! watches it concerns, all under the store lock (see the crate comment on watch
//! semantics).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::respond::status_json;
use crate::state::State;

/// Events the resumable watch history keeps; older ones are forgotten (410 to a watch from
/// before them).
pub const HISTORY_WINDOW: usize = 10_000;

#[derive(Clone)]
pub(crate) enum WatchMsg {
    /// An event in the namespace the receiving watch is on: `State::watchers` routes it
    /// only to that namespace's watches and to the all-namespaces ones.
    Event { name: String, line: Bytes },
    /// A BOOKMARK for the watches that asked for them (`allowWatchBookmarks=true`).
    Bookmark(Bytes),
    /// Ends every open watch stream cleanly (the server's side of a watch timeout).
    End,
}

pub(crate) struct PodStore {
    pub(crate) rv: u64,
    pub(crate) next_uid: u64,
    pub(crate) pods: BTreeMap<(String, String), Value>,
    pub(crate) history: History,
}

/// The numbered events a watch can resume from (see the module comment).
#[derive(Default)]
pub(crate) struct History {
    pub(crate) events: VecDeque<Recorded>,
    /// The resourceVersion at start: a watch from before it starts from now.
    pub(crate) start_rv: u64,
    /// Events up to this resourceVersion are forgotten (`start_rv` until some are).
    pub(crate) forgotten: u64,
}

pub(crate) struct Recorded {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) rv: u64,
    pub(crate) line: Bytes,
}

impl History {
    pub(crate) fn record(&mut self, ns: &str, name: &str, rv: u64, line: &Bytes) {
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
    pub(crate) fn replay(
        &self,
        rv: u64,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Result<VecDeque<Bytes>, u64> {
        // From before the fake's start (tests and benchmarks pass `1`): from now, however
        // many events have been forgotten since. (Checked first: once the window had
        // turned over, such a watch got 410 and every benchmark watch after the first ten
        // seconds of `bench/run.sh` saw no event.)
        if rv < self.start_rv {
            return Ok(VecDeque::new());
        }
        if rv < self.forgotten {
            return Err(self.forgotten);
        }
        Ok(self
            .events
            .iter()
            .filter(|e| e.rv > rv)
            .filter(|e| ns.is_none_or(|n| n == e.ns) && name.is_none_or(|n| n == e.name))
            .map(|e| e.line.clone())
            .collect())
    }
}

impl PodStore {
    pub(crate) fn new_pod(&mut self, ns: &str, name: &str) -> Value {
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

pub(crate) fn set_rv(pod: &mut Value, rv: u64) {
    pod["metadata"]["resourceVersion"] = Value::String(rv.to_string());
}

/// The pod store and every open watch see events through here (the test-facing API and
/// the create/delete handlers alike).
pub(crate) fn apply_event(state: &State, ns: &str, event_type: &str, name: &str) -> Value {
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
pub(crate) fn watch_keys(ns: &str) -> [Option<String>; 2] {
    [Some(ns.to_owned()), None]
}

pub(crate) fn watch_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch from before the start is "from now" even once the window has turned over;
    /// one from a forgotten resourceVersion since the start is 410; a recent one replays.
    #[test]
    fn a_watch_from_before_the_start_stays_from_now() {
        let mut h = History {
            start_rv: 1000,
            forgotten: 1000,
            ..History::default()
        };
        let line = Bytes::from_static(b"{}");
        let last = 1000 + HISTORY_WINDOW as u64 + 5;
        for rv in 1001..=last {
            h.record("ns", "p", rv, &line);
        }
        assert!(h.replay(1, None, None).is_ok_and(|e| e.is_empty()));
        assert_eq!(h.replay(1001, None, None).err(), Some(1005));
        assert_eq!(h.replay(last - 2, None, None).map(|e| e.len()), Ok(2));
    }
}
