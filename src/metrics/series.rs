//! The fixed-size series: the duration histogram's buckets, and the per-verb-and-resource
//! API series (interned label sets, counters and histograms in atomic arrays), made on
//! the first API request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::access::intern::Interner;

/// Upper bounds of the duration histogram, in seconds.
pub(super) const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Verbs the per-resource series name (the API server's, then the lower-case methods of
/// non-resource requests); anything else is `other`.
pub(super) const API_VERBS: [&str; 14] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    "post",
    "put",
    "head",
    "options",
    "other",
];
/// Distinct (group, resource, subresource) label sets kept; later ones count as
/// `resource="other"` (CRDs can be many; a label set never goes away once seen).
pub(crate) const API_RESOURCES: usize = 100;
/// Distinct (verb, resource, code) counters, and (verb, resource) histograms, kept.
pub(super) const API_COUNTERS: usize = 2048;
pub(super) const API_HISTOGRAMS: usize = 256;
/// Resource slots before the interned ones: non-resource requests, then `other`.
pub(super) const NON_RESOURCE: u16 = 0;
pub(super) const OTHER_RESOURCE: u16 = 1;

/// The labels of one API request, resolved once on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLabels {
    pub(super) verb: u8,
    pub(super) resource: u16,
}

/// The per-verb-and-resource series, made on the first API request (the proxy's idle
/// memory does not pay for them).
#[derive(Debug)]
pub(super) struct ApiSeries {
    pub(super) resources: Interner<(Box<str>, Box<str>, Box<str>)>,
    pub(super) counter_keys: Interner<u32>,
    pub(super) counters: Box<[AtomicU64]>,
    pub(super) histogram_keys: Interner<u32>,
    pub(super) histograms: Box<[Histogram]>,
}

#[derive(Debug, Default)]
pub(super) struct Histogram {
    pub(super) buckets: [AtomicU64; BUCKETS.len() + 1],
    pub(super) count: AtomicU64,
    pub(super) sum_micros: AtomicU64,
}

impl Histogram {
    pub(super) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

impl ApiSeries {
    pub(super) fn new() -> Self {
        let counter_keys = Interner::new(API_COUNTERS);
        let histogram_keys = Interner::new(API_HISTOGRAMS);
        ApiSeries {
            resources: Interner::new(API_RESOURCES),
            counters: (0..counter_keys.capacity())
                .map(|_| AtomicU64::new(0))
                .collect(),
            counter_keys,
            histograms: (0..histogram_keys.capacity())
                .map(|_| Histogram::default())
                .collect(),
            histogram_keys,
        }
    }

    /// (group, resource, subresource) of a resource slot.
    pub(super) fn resource(&self, slot: u16) -> (&str, &str, &str) {
        match slot {
            NON_RESOURCE => ("", "", ""),
            OTHER_RESOURCE => ("", "other", ""),
            n => self
                .resources
                .get(usize::from(n - 2))
                .map_or(("", "other", ""), |(g, r, s)| (g, r, s)),
        }
    }
}
