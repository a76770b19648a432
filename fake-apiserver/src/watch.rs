//! Lists and watches of pods: the name filter, `limit`, the initial ADDED events or the
//! replay from a resourceVersion, the 410 for a forgotten one, bookmarks on request, and
//! `timeoutSeconds`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::respond::{full, json_resp, status_json};
use crate::routes::Query;
use crate::state::{GaugeGuard, State, gauge_inc};
use crate::store::{WatchMsg, watch_line};
use crate::{BoxError, RespBody};

pub(crate) fn name_filter(q: &Query) -> Option<String> {
    let selector = q.get("fieldSelector")?;
    selector.split(',').find_map(|term| {
        term.strip_prefix("metadata.name=")
            .or_else(|| term.strip_prefix("metadata.name=="))
            .map(str::to_owned)
    })
}

pub(crate) fn list_or_watch(state: &Arc<State>, ns: Option<&str>, q: &Query) -> Response<RespBody> {
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
pub(crate) struct WatchStream {
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
pub(crate) fn too_old(rv: u64, forgotten: u64) -> Response<RespBody> {
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
