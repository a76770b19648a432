//! What a watch request is, and how to ask for it again: the position to resume from
//! (`resourceVersion`), the client's query kept but for what resuming must change
//! (`resourceVersion`, `timeoutSeconds`, bookmarks, `sendInitialEvents`), and which
//! upstream answers are resumable JSON watch streams.

use std::time::Duration;

use http::{HeaderMap, StatusCode, Uri, header};
use tokio::time::Instant;

/// Whether a request is a watch (not a followed log): `watch=1|true`, or the legacy
/// `/api/v1/watch/…` and `/apis/GROUP/VERSION/watch/…` paths. `path` is decoded and below
/// the API prefix.
pub(crate) fn is_watch_request(path: &str, query: Option<&str>) -> bool {
    query_get(query, "watch").is_some_and(truthy)
        || path.split('/').nth(3) == Some("watch")
        || path.split('/').nth(4) == Some("watch")
}

pub(super) fn truthy(v: &str) -> bool {
    v == "true" || v == "1"
}

/// The first value of `key` in a raw query (as Go's `url.Values.Get`). The keys this
/// module reads never need unescaping, nor do their values.
pub(super) fn query_get<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// What a resume needs from the original request, captured when it was forwarded.
pub(crate) struct Plan {
    /// The upstream target as the client asked for it (before any parameter of ours).
    pub(super) target: Uri,
    /// The upstream request's headers, without a credential the proxy added: a resume
    /// gets the current one.
    pub(super) headers: HeaderMap,
    pub(super) ours_auth: bool,
    /// `timeoutSeconds`, measured from the client's request.
    pub(super) deadline: Option<Instant>,
    pub(super) client_bookmarks: bool,
    /// The current upstream request carries `allowWatchBookmarks=true` because we added it.
    pub(super) added_bookmarks: bool,
    /// `sendInitialEvents=true`: a resume asks for `false` (the client has them).
    pub(super) initial_events: bool,
    /// Where the stream stands, if known from the start (an explicit resourceVersion).
    pub(super) start_rv: Option<String>,
}

impl Plan {
    /// `target` is the upstream request's; `headers` its headers after rewriting;
    /// `ours_auth` whether the proxy added the `Authorization` in them. `None` if the
    /// watch cannot be resumed (a protobuf or CBOR stream was asked for).
    pub(crate) fn new(
        target: &Uri,
        headers: &HeaderMap,
        ours_auth: bool,
        arrived: Instant,
    ) -> Option<Plan> {
        // Only JSON streams are read; a client that prefers protobuf (client-go's default
        // for built-in types when configured) gets its stream passed through.
        let mut accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if accept.any(|a| a.contains("protobuf") || a.contains("cbor")) {
            return None;
        }
        let query = target.query();
        let rv = query_get(query, "resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0");
        let initial_events = query_get(query, "sendInitialEvents").is_some_and(truthy);
        let client_bookmarks = query_get(query, "allowWatchBookmarks").is_some_and(truthy);
        let deadline = query_get(query, "timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(|s| arrived + Duration::from_secs(s));
        let mut headers = headers.clone();
        if ours_auth {
            headers.remove(header::AUTHORIZATION);
        }
        Some(Plan {
            target: target.clone(),
            headers,
            ours_auth,
            deadline,
            client_bookmarks,
            added_bookmarks: false,
            initial_events,
            // With initial events (no resourceVersion, "0", or sendInitialEvents) the
            // events' resourceVersions are the objects' own, in no order: only a BOOKMARK
            // (sent after the initial events, `apiserver/pkg/storage/cacher/
            // cache_watcher.go`) gives a position to resume from.
            start_rv: rv.filter(|_| !initial_events).map(str::to_owned),
        })
    }

    /// The target of the first upstream request: the client's, with
    /// `allowWatchBookmarks=true` when the stream starts with initial events and the
    /// client did not ask for bookmarks (a BOOKMARK is then the only resumable position;
    /// the proxy swallows them).
    pub(crate) fn first_target(&mut self) -> Option<Uri> {
        if self.start_rv.is_some() || self.client_bookmarks {
            return None;
        }
        let query = match self.target.query() {
            Some(q) => format!("{q}&allowWatchBookmarks=true"),
            None => "allowWatchBookmarks=true".to_owned(),
        };
        let uri = with_query(&self.target, &query)?;
        self.added_bookmarks = true;
        Some(uri)
    }

    /// The query of a resume from `rv`: the client's, with `resourceVersion`,
    /// `allowWatchBookmarks=true`, the time left of `timeoutSeconds`, and
    /// `sendInitialEvents=false` if it was `true`; everything else (selectors,
    /// `resourceVersionMatch`, …) kept as sent.
    pub(super) fn resume_query(&self, rv: &str, now: Instant) -> String {
        let mut q = String::new();
        for kv in self.target.query().unwrap_or("").split('&') {
            let k = kv.split_once('=').map_or(kv, |(k, _)| k);
            if kv.is_empty()
                || matches!(
                    k,
                    "resourceVersion"
                        | "allowWatchBookmarks"
                        | "timeoutSeconds"
                        | "sendInitialEvents"
                )
            {
                continue;
            }
            q.push_str(kv);
            q.push('&');
        }
        q.push_str("resourceVersion=");
        q.push_str(rv);
        q.push_str("&allowWatchBookmarks=true");
        if let Some(deadline) = self.deadline {
            // Rounded up: the local timer ends the stream at the deadline itself.
            let left = deadline.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            q.push_str(&format!("&timeoutSeconds={}", secs.max(1)));
        }
        if self.initial_events {
            q.push_str("&sendInitialEvents=false");
        }
        q
    }
}

pub(super) fn with_query(uri: &Uri, query: &str) -> Option<Uri> {
    let pq = format!("{}?{query}", uri.path());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Whether an upstream response is a JSON watch stream that can be resumed.
pub(crate) fn resumable_response(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK && is_json(headers)
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn resume_query_keeps_the_clients_parameters_and_sets_ours() {
        let uri: Uri = "https://api:6443/api/v1/namespaces/d/pods?watch=1&labelSelector=app%3Dx&resourceVersion=5&timeoutSeconds=30&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
            .parse()
            .unwrap();
        let now = Instant::now();
        let plan = Plan::new(&uri, &HeaderMap::new(), false, now).unwrap();
        assert!(plan.start_rv.is_none(), "initial events: no position yet");
        let q = plan.resume_query("99", now + Duration::from_millis(10_500));
        assert_eq!(
            q,
            "watch=1&labelSelector=app%3Dx&resourceVersionMatch=NotOlderThan&resourceVersion=99&allowWatchBookmarks=true&timeoutSeconds=20&sendInitialEvents=false"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf;stream=watch"),
        );
        assert!(Plan::new(&uri, &headers, false, now).is_none());
    }

    #[test]
    fn first_request_asks_for_bookmarks_only_when_it_needs_a_position() {
        let now = Instant::now();
        let plan = |u: &str| Plan::new(&u.parse().unwrap(), &HeaderMap::new(), false, now).unwrap();
        assert_eq!(
            plan("https://a/api/v1/pods?watch=1&resourceVersion=7").first_target(),
            None
        );
        assert_eq!(
            plan("https://a/api/v1/pods?watch=1")
                .first_target()
                .unwrap()
                .to_string(),
            "https://a/api/v1/pods?watch=1&allowWatchBookmarks=true"
        );
        assert_eq!(
            plan("https://a/api/v1/watch/pods")
                .first_target()
                .unwrap()
                .to_string(),
            "https://a/api/v1/watch/pods?allowWatchBookmarks=true"
        );
    }

    #[test]
    fn watch_requests_are_told_from_followed_logs() {
        assert!(is_watch_request("/api/v1/pods", Some("watch=true")));
        assert!(is_watch_request("/api/v1/watch/pods", None));
        assert!(is_watch_request("/apis/apps/v1/watch/deployments", None));
        assert!(!is_watch_request(
            "/api/v1/namespaces/d/pods/p/log",
            Some("follow=true")
        ));
    }
}
