//! The paths the fake serves once a request is authenticated: discovery (`/api`, `/apis`,
//! `/version`, `/api/v1`), probes, pods (list, watch, get, create, delete), the
//! diagnostic endpoints, and the Status a real server answers for the rest (400 to an
//! upgrade path without the upgrade, 405, RBAC's 403 for secrets, 404).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, header};
use serde_json::{Value, json};

use crate::RespBody;
use crate::diagnostics::{bytes_resp, echo};
use crate::respond::{json_resp, json_text_resp, pod_not_found, status, status_json, text_resp};
use crate::seen::Seen;
use crate::state::State;
use crate::store::apply_event;
use crate::watch::list_or_watch;

pub(crate) async fn route(
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
        // POST too, for a write that must never be sent twice.
        ["", "hold", id] if get || method == Method::POST => {
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
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
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

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
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

pub(crate) fn api_versions(state: &State) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{
            "clientCIDR": "0.0.0.0/0",
            "serverAddress": format!("127.0.0.1:{}", state.port.load(Ordering::Relaxed)),
        }],
    })
}

pub(crate) fn version() -> Value {
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

pub(crate) fn api_resources() -> Value {
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

pub(crate) fn create_pod(state: &Arc<State>, ns: &str, body: &[u8]) -> Response<RespBody> {
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

pub(crate) fn delete_pod(state: &Arc<State>, ns: &str, name: &str) -> Response<RespBody> {
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
