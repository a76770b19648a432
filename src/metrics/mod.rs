//! Counters and gauges for `/metrics`, updated on the request path with plain atomics.
//!
//! prometheus-client's labelled `Family` takes a lock on every update; the request path
//! takes none, so the label space is fixed up front (method × status code, error kinds,
//! reload results) and stored in atomic arrays that a `Collector` renders at scrape time.

mod encode;
mod series;

pub(crate) use series::ApiLabels;
use series::{API_VERBS, ApiSeries, BUCKETS, NON_RESOURCE, OTHER_RESOURCE};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::Method;
use prometheus_client::registry::Registry;

use crate::access::attributes::Attributes;
use crate::access::budget::Budget;
use crate::access::intern::hash_parts;
use crate::credentials::{Reload, unix_now};
use crate::reload::ReloadObserver;

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const CODES: usize = 500; // 100..=599

/// Why a request got no answer from the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Refused,
    Timeout,
    Tls,
    Malformed,
    Other,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Refused,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Malformed,
        UpstreamErrorKind::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Refused => "refused",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Malformed => "malformed",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// How a watch's attempt to resume ended (`watch/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeResult {
    Resumed,
    /// 410: the position is too old; the client got the ERROR event and relists.
    Expired,
    GaveUp,
}

impl ResumeResult {
    const ALL: [ResumeResult; 3] = [
        ResumeResult::Resumed,
        ResumeResult::Expired,
        ResumeResult::GaveUp,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ResumeResult::Resumed => "resumed",
            ResumeResult::Expired => "expired",
            ResumeResult::GaveUp => "gave_up",
        }
    }
}

/// How a hedged request ended (`proxy/hedge.rs`, `--upstream-hedge-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeResult {
    /// The second copy's response headers came first.
    Won,
    /// The first copy answered first; the second was cancelled.
    Lost,
    /// The second copy got no answer (the first one's outcome stood).
    Failed,
    /// Not sent: the process already had its maximum of hedges in flight.
    Capped,
}

impl HedgeResult {
    const ALL: [HedgeResult; 4] = [
        HedgeResult::Won,
        HedgeResult::Lost,
        HedgeResult::Failed,
        HedgeResult::Capped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HedgeResult::Won => "won",
            HedgeResult::Lost => "lost",
            HedgeResult::Failed => "failed",
            HedgeResult::Capped => "capped",
        }
    }
}

/// Upper bounds of the watch-gap histogram, in seconds.
const GAP_BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// All metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: Box<[AtomicU64]>,
    /// Per-bucket (not cumulative) counts; the last slot is above the largest bound.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    upstream_errors: [AtomicU64; 5],
    /// Hedged requests by [`HedgeResult`].
    upstream_hedges: [AtomicU64; 4],
    open_connections: AtomicI64,
    active_watches: AtomicI64,
    active_upgrades: AtomicI64,
    upstream_http2_connections: AtomicI64,
    token_reloads: [AtomicU64; 2],
    ca_reloads: [AtomicU64; 2],
    /// Unix seconds of the token's `exp` claim, 0 if unknown.
    token_expiry: AtomicI64,
    /// Unix seconds when the current token was issued (`iat`) or first seen.
    token_issued: AtomicI64,
    /// Orders answers and failures: whichever happened last decides readiness.
    events: AtomicU64,
    last_answer_seq: AtomicU64,
    last_failure_seq: AtomicU64,
    /// Milliseconds since `started` of the last answer from the API server.
    last_answer_ms: AtomicU64,
    /// Watch resumes by [`ResumeResult`], and the time each resumed watch was without
    /// upstream (per-bucket counts, as `duration_buckets`).
    watch_resumes: [AtomicU64; 3],
    watch_gap_buckets: [AtomicU64; GAP_BUCKETS.len() + 1],
    watch_gap_count: AtomicU64,
    watch_gap_sum_micros: AtomicU64,
    api: OnceLock<ApiSeries>,
    /// Requests refused by `--qps`/`--burst`.
    throttled: AtomicU64,
    budget: OnceLock<Arc<Budget>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: (0..METHODS.len() * CODES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            duration_buckets: Default::default(),
            duration_count: AtomicU64::new(0),
            duration_sum_micros: AtomicU64::new(0),
            upstream_errors: Default::default(),
            upstream_hedges: Default::default(),
            open_connections: AtomicI64::new(0),
            active_watches: AtomicI64::new(0),
            active_upgrades: AtomicI64::new(0),
            upstream_http2_connections: AtomicI64::new(0),
            token_reloads: Default::default(),
            ca_reloads: Default::default(),
            token_expiry: AtomicI64::new(0),
            token_issued: AtomicI64::new(0),
            events: AtomicU64::new(0),
            last_answer_seq: AtomicU64::new(0),
            last_failure_seq: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            watch_resumes: Default::default(),
            watch_gap_buckets: Default::default(),
            watch_gap_count: AtomicU64::new(0),
            watch_gap_sum_micros: AtomicU64::new(0),
            api: OnceLock::new(),
            throttled: AtomicU64::new(0),
            budget: OnceLock::new(),
        }
    }
}

/// The gauges that count open things.
#[derive(Debug, Clone, Copy)]
pub enum Open {
    Connection,
    Watch,
    Upgrade,
    /// An HTTP/2 connection to the API server.
    UpstreamHttp2,
}

/// Counts one open thing until dropped.
pub struct GaugeGuard {
    metrics: Arc<Metrics>,
    which: Open,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.which)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn method_index(m: &Method) -> usize {
    METHODS[..7]
        .iter()
        .position(|name| *name == m.as_str())
        .unwrap_or(7)
}

impl Metrics {
    /// One answered request: its method, status and time to response headers.
    pub fn request(&self, method: &Method, code: u16, elapsed: Duration) {
        let code = usize::from(code).clamp(100, 599) - 100;
        self.requests[method_index(method) * CODES + code].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The labels an API request is counted under (a lookup; an insertion the first
    /// time a resource is seen).
    pub fn api_labels(&self, a: &Attributes<'_>) -> ApiLabels {
        let verb = API_VERBS[..API_VERBS.len() - 1]
            .iter()
            .position(|v| *v == a.verb)
            .unwrap_or(API_VERBS.len() - 1) as u8;
        if !a.resource_request {
            return ApiLabels {
                verb,
                resource: NON_RESOURCE,
            };
        }
        let series = self.api.get_or_init(ApiSeries::new);
        let hash = hash_parts(&[a.group, a.resource, a.subresource]);
        let resource = series
            .resources
            .index(
                hash,
                |(g, r, s)| **g == *a.group && **r == *a.resource && **s == *a.subresource,
                || (a.group.into(), a.resource.into(), a.subresource.into()),
            )
            .map_or(OTHER_RESOURCE, |i| i as u16 + 2);
        ApiLabels { verb, resource }
    }

    /// One answered API request, by verb and resource.
    pub fn api_request(&self, labels: ApiLabels, code: u16, elapsed: Duration) {
        let series = self.api.get_or_init(ApiSeries::new);
        let code = u32::from(code.clamp(100, 599) - 100);
        let pair = u32::from(labels.verb) << 9 | u32::from(labels.resource);
        let key = 1 + (pair << 9 | code);
        if let Some(i) = series.counter_keys.index(
            u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32,
            |k| *k == key,
            || key,
        ) {
            series.counters[i].fetch_add(1, Ordering::Relaxed);
        }
        let key = 1 + pair;
        if let Some(i) = series.histogram_keys.index(
            u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32,
            |k| *k == key,
            || key,
        ) {
            series.histograms[i].observe(elapsed);
        }
    }

    /// A request refused by the `--qps`/`--burst` budget.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Shows the budget's tokens on `/metrics`.
    pub fn set_budget(&self, budget: Arc<Budget>) {
        let _ = self.budget.set(budget);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        let seq = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_failure_seq.store(seq, Ordering::Relaxed);
    }

    /// A hedged request ended so (or was not sent, [`HedgeResult::Capped`]).
    pub fn hedge(&self, result: HedgeResult) {
        self.upstream_hedges[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The API server answered (any status).
    pub fn upstream_answered(&self) {
        self.last_answer_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let seq = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_answer_seq.store(seq, Ordering::Relaxed);
    }

    /// A watch's attempt to resume ended so.
    pub fn watch_resume(&self, result: ResumeResult) {
        self.watch_resumes[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A resumed watch was this long without upstream.
    pub fn watch_gap(&self, gap: Duration) {
        let secs = gap.as_secs_f64();
        let bucket = GAP_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(GAP_BUCKETS.len());
        self.watch_gap_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.watch_gap_count.fetch_add(1, Ordering::Relaxed);
        self.watch_gap_sum_micros
            .fetch_add(gap.as_micros() as u64, Ordering::Relaxed);
    }

    /// Time since the API server last answered, if it ever did and has not failed since.
    pub fn since_last_answer(&self) -> Option<Duration> {
        let ok = self.last_answer_seq.load(Ordering::Relaxed);
        if ok == 0 || self.last_failure_seq.load(Ordering::Relaxed) > ok {
            return None;
        }
        let at = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(at))
    }

    fn gauge(&self, which: Open) -> &AtomicI64 {
        match which {
            Open::Connection => &self.open_connections,
            Open::Watch => &self.active_watches,
            Open::Upgrade => &self.active_upgrades,
            Open::UpstreamHttp2 => &self.upstream_http2_connections,
        }
    }

    /// Counts a connection, watch or tunnel as open until the guard drops.
    pub fn open(self: &Arc<Self>, which: Open) -> GaugeGuard {
        self.gauge(which).fetch_add(1, Ordering::Relaxed);
        GaugeGuard {
            metrics: self.clone(),
            which,
        }
    }

    /// Records the current token's validity window (Unix seconds).
    pub fn token_times(&self, issued: Option<i64>, expiry: Option<i64>) {
        let now = unix_now();
        self.token_issued
            .store(issued.unwrap_or(now), Ordering::Relaxed);
        self.token_expiry
            .store(expiry.unwrap_or(0), Ordering::Relaxed);
    }

    /// A registry holding these metrics, for the admin endpoint.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry
    }
}

impl ReloadObserver for Metrics {
    fn token_reloaded(&self, outcome: Reload) {
        let i = usize::from(outcome == Reload::Failed);
        self.token_reloads[i].fetch_add(1, Ordering::Relaxed);
    }

    fn ca_reloaded(&self, ok: bool) {
        self.ca_reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    fn token_times(&self, issued: Option<i64>, expiry: Option<i64>) {
        Metrics::token_times(self, issued, expiry);
    }
}

#[cfg(test)]
mod tests {
    use super::series::API_RESOURCES;
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Arc::new(Metrics::default());
        m.request(&Method::GET, 200, Duration::from_millis(3));
        m.request(
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::from_secs(20),
        );
        m.upstream_error(UpstreamErrorKind::Tls);
        m.hedge(HedgeResult::Won);
        ReloadObserver::token_reloaded(&*m, Reload::Changed);
        let _w = m.open(Open::Watch);
        m.token_times(Some(unix_now() - 5), Some(2_000_000_000));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
        for want in [
            "kube_ambassador_requests_total{method=\"GET\",code=\"200\"} 1",
            "kube_ambassador_requests_total{method=\"other\",code=\"404\"} 1",
            "kube_ambassador_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "kube_ambassador_request_duration_seconds_count 2",
            "kube_ambassador_request_duration_seconds_bucket{le=\"10.0\"} 1",
            "kube_ambassador_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "kube_ambassador_upstream_errors_total{kind=\"tls\"} 1",
            "kube_ambassador_upstream_hedges_total{result=\"won\"} 1",
            "kube_ambassador_upstream_hedges_total{result=\"capped\"} 0",
            "kube_ambassador_token_reloads_total{result=\"changed\"} 1",
            "kube_ambassador_active_watches 1",
            "kube_ambassador_token_expiry_timestamp_seconds 2000000000",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert!(m.since_last_answer().is_none());
        m.upstream_answered();
        assert!(m.since_last_answer().is_some());
        m.upstream_error(UpstreamErrorKind::Refused);
        assert!(m.since_last_answer().is_none());
    }

    #[test]
    fn resources_past_the_bound_count_as_other() {
        let m = Arc::new(Metrics::default());
        let paths: Vec<String> = (0..API_RESOURCES + 5)
            .map(|i| format!("/apis/g{i}.example.com/v1/things"))
            .collect();
        for p in &paths {
            let a = crate::access::attributes::parse("GET", p, None);
            let l = m.api_labels(&a);
            m.api_request(l, 200, Duration::from_millis(1));
        }
        let a = crate::access::attributes::parse("GET", "/apis/g0.example.com/v1/things", None);
        m.api_request(m.api_labels(&a), 200, Duration::from_millis(1));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
        let other = r#"kube_ambassador_api_requests_total{verb="list",group="",resource="other",subresource="",code="200"} 5"#;
        assert!(out.contains(other), "{out}");
        let first = r#"kube_ambassador_api_requests_total{verb="list",group="g0.example.com",resource="things",subresource="",code="200"} 2"#;
        assert!(out.contains(first), "{out}");
        let kept = out
            .lines()
            .filter(|l| l.starts_with("kube_ambassador_api_requests_total{"))
            .count();
        assert_eq!(kept, API_RESOURCES + 1);
    }
}
