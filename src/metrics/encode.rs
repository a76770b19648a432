//! `/metrics` rendering: the atomic arrays read at scrape time into prometheus-client's
//! text encoding, family by family, in a fixed order.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::series::{API_RESOURCES, API_VERBS, ApiSeries, BUCKETS};
use super::{CODES, GAP_BUCKETS, HedgeResult, METHODS, Metrics, ResumeResult, UpstreamErrorKind};
use crate::credentials::unix_now;

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let encoder = &mut encoder;
        self.encode_requests(encoder)?;
        if let Some(api) = self.api.get() {
            self.encode_api_counters(api, encoder)?;
            self.encode_api_histograms(api, encoder)?;
        }
        self.encode_budget(encoder)?;
        self.encode_upstream(encoder)?;
        self.encode_reloads(encoder)?;
        self.encode_watches(encoder)?;
        self.encode_gauges(encoder)
    }
}

impl Metrics {
    /// Requests by method and code, and their duration.
    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "kube_ambassador_requests",
            "Requests answered, by method and HTTP status code.",
            None,
            MetricType::Counter,
        )?;
        for (mi, method) in METHODS.iter().enumerate() {
            for ci in 0..CODES {
                let n = load(&self.requests[mi * CODES + ci]);
                if n > 0 {
                    let code = (ci + 100).to_string();
                    let labels = [("method", *method), ("code", code.as_str())];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        histogram(
            encoder,
            "kube_ambassador_request_duration_seconds",
            "Time from receiving a request to sending its response headers.",
            &BUCKETS,
            &self.duration_buckets,
            load(&self.duration_sum_micros),
            load(&self.duration_count),
        )
    }

    /// `kube_ambassador_api_requests`: a counter per (verb, resource, code) seen.
    fn encode_api_counters(
        &self,
        api: &ApiSeries,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let help = format!(
            "API requests answered, by verb, API group, resource, subresource and HTTP status \
             code (the API server's request attributes). Non-resource requests (/version, \
             /apis, ...) have the lower-case method as verb and resource=\"\"; the path is \
             not a label. At most {API_RESOURCES} distinct (group, resource, subresource) are \
             kept, later ones count as resource=\"other\"."
        );
        let mut keys: Vec<(u32, usize)> = api.counter_keys.iter().map(|(i, k)| (*k, i)).collect();
        keys.sort_unstable();
        let mut family = encoder.encode_descriptor(
            "kube_ambassador_api_requests",
            &help,
            None,
            MetricType::Counter,
        )?;
        for (key, i) in keys {
            let key = key - 1;
            let (verb, slot, code) = (key >> 18, (key >> 9) & 0x1ff, key & 0x1ff);
            let (group, resource, subresource) = api.resource(slot as u16);
            let code = (code + 100).to_string();
            let labels = [
                ("verb", API_VERBS[verb as usize]),
                ("group", group),
                ("resource", resource),
                ("subresource", subresource),
                ("code", code.as_str()),
            ];
            ConstCounter::new(load(&api.counters[i])).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// `kube_ambassador_api_request_duration_seconds`: a histogram per (verb, group,
    /// resource); subresources share their resource's.
    fn encode_api_histograms(
        &self,
        api: &ApiSeries,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut keys: Vec<(u32, usize)> = api.histogram_keys.iter().map(|(i, k)| (*k, i)).collect();
        keys.sort_unstable();
        let mut family = encoder.encode_descriptor(
            "kube_ambassador_api_request_duration_seconds",
            &format!(
                "Time from receiving an API request to sending its response headers, by verb \
                 and resource (resource=\"other\" past {API_RESOURCES} distinct ones)."
            ),
            None,
            MetricType::Histogram,
        )?;
        // One series per (verb, group, resource): subresources share their resource's.
        type Merged<'a> = ((u32, &'a str, &'a str), [u64; BUCKETS.len() + 1], u64, u64);
        let mut merged: Vec<Merged<'_>> = Vec::new();
        for (key, i) in keys {
            let key = key - 1;
            let (verb, slot) = (key >> 9, key & 0x1ff);
            let (group, resource, _) = api.resource(slot as u16);
            let h = &api.histograms[i];
            let id = (verb, group, resource);
            let at = match merged.iter().position(|(k, ..)| *k == id) {
                Some(at) => at,
                None => {
                    merged.push((id, [0; BUCKETS.len() + 1], 0, 0));
                    merged.len() - 1
                }
            };
            let m = &mut merged[at];
            for (acc, b) in m.1.iter_mut().zip(&h.buckets) {
                *acc += load(b);
            }
            m.2 += load(&h.count);
            m.3 += load(&h.sum_micros);
        }
        for ((verb, group, resource), buckets, count, sum) in merged {
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .chain(std::iter::once(&f64::INFINITY))
                .zip(buckets)
                .map(|(b, c)| (*b, c))
                .collect();
            let labels = [
                ("verb", API_VERBS[verb as usize]),
                ("group", group),
                ("resource", resource),
            ];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum as f64 / 1e6, count, &buckets, None)?;
        }
        Ok(())
    }

    /// The `--qps`/`--burst` budget, when there is one.
    fn encode_budget(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(budget) = self.budget.get() else {
            return Ok(());
        };
        counter(
            encoder,
            "kube_ambassador_throttled_requests",
            "Requests refused with 429 by the --qps/--burst budget.",
            None,
            &[("", load(&self.throttled))],
        )?;
        gauge(
            encoder,
            "kube_ambassador_budget_tokens",
            "Tokens left in the --qps/--burst bucket (each request takes one).",
            budget.tokens(),
        )
    }

    /// Requests the API server did not answer, and hedges.
    fn encode_upstream(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let errors: Vec<(&str, u64)> = UpstreamErrorKind::ALL
            .iter()
            .map(|k| (k.as_str(), load(&self.upstream_errors[*k as usize])))
            .collect();
        counter(
            encoder,
            "kube_ambassador_upstream_errors",
            "Requests that got no answer from the API server, by cause.",
            Some("kind"),
            &errors,
        )?;
        let hedges: Vec<(&str, u64)> = HedgeResult::ALL
            .iter()
            .map(|r| (r.as_str(), load(&self.upstream_hedges[*r as usize])))
            .collect();
        counter(
            encoder,
            "kube_ambassador_upstream_hedges",
            "Short idempotent requests sent a second time for want of response headers after --upstream-hedge-after, by outcome: won (the second copy answered first), lost (the first did), failed (the second got no answer), capped (not sent: too many hedges in flight).",
            Some("result"),
            &hedges,
        )
    }

    /// Token and CA re-reads.
    fn encode_reloads(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let results = |a: &[AtomicU64; 2]| [("changed", load(&a[0])), ("failed", load(&a[1]))];
        counter(
            encoder,
            "kube_ambassador_token_reloads",
            "Token re-reads that changed the token, or failed (last good token kept).",
            Some("result"),
            &results(&self.token_reloads),
        )?;
        counter(
            encoder,
            "kube_ambassador_ca_reloads",
            "CA re-reads that changed the trust anchors, or failed (old CA kept).",
            Some("result"),
            &results(&self.ca_reloads),
        )
    }

    /// Watch resumes, and how long a resumed watch was without upstream.
    fn encode_watches(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let resumes: Vec<(&str, u64)> = ResumeResult::ALL
            .iter()
            .map(|r| (r.as_str(), load(&self.watch_resumes[*r as usize])))
            .collect();
        counter(
            encoder,
            "kube_ambassador_watch_resumes",
            "Watches whose upstream stream ended early, by outcome: resumed, expired (410, the client relists), gave_up.",
            Some("result"),
            &resumes,
        )?;
        histogram(
            encoder,
            "kube_ambassador_watch_resume_gap_seconds",
            "Time a resumed watch was without upstream: from the break to the new stream's headers.",
            &GAP_BUCKETS,
            &self.watch_gap_buckets,
            load(&self.watch_gap_sum_micros),
            load(&self.watch_gap_count),
        )
    }

    /// What is open now, and the current token's times.
    fn encode_gauges(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            encoder,
            "kube_ambassador_open_connections",
            "Client connections currently open.",
            self.open_connections.load(Ordering::Relaxed),
        )?;
        gauge(
            encoder,
            "kube_ambassador_active_watches",
            "Watches and followed logs currently streaming.",
            self.active_watches.load(Ordering::Relaxed),
        )?;
        gauge(
            encoder,
            "kube_ambassador_active_upgrades",
            "Upgraded connections (exec, attach, port-forward) currently open.",
            self.active_upgrades.load(Ordering::Relaxed),
        )?;
        gauge(
            encoder,
            "kube_ambassador_upstream_http2_connections",
            "HTTP/2 connections to the API server currently open (requests are multiplexed over them).",
            self.upstream_http2_connections.load(Ordering::Relaxed),
        )?;
        let expiry = self.token_expiry.load(Ordering::Relaxed);
        if expiry > 0 {
            gauge(
                encoder,
                "kube_ambassador_token_expiry_timestamp_seconds",
                "The current token's expiry (JWT exp claim, read without verification).",
                expiry,
            )?;
        }
        let issued = self.token_issued.load(Ordering::Relaxed);
        if issued > 0 {
            gauge(
                encoder,
                "kube_ambassador_token_age_seconds",
                "Seconds since the current token was issued (JWT iat) or first read.",
                unix_now() - issued,
            )?;
        }
        Ok(())
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A counter family: one series per `(value, count)`, labelled `label="value"`, or a
/// single unlabelled series when `label` is `None`.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: Option<&str>,
    series: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        let labels: Vec<(&str, &str)> = label.map(|l| (l, *value)).into_iter().collect();
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N: EncodeGaugeValue + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// An unlabelled histogram from its bucket counters (the last is `+Inf`); the encoder
/// accumulates the per-bucket counts itself.
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[AtomicU64],
    sum_micros: u64,
    count: u64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .chain(std::iter::once(&f64::INFINITY))
        .zip(counts)
        .map(|(b, c)| (*b, load(c)))
        .collect();
    let mut hist = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    hist.encode_histogram::<NoLabelSet>(sum_micros as f64 / 1e6, count, &buckets, None)
}
