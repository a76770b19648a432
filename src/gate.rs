//! The Kubernetes-aware step of the request path, between the kubectl filter and the
//! forward: each API request is read as the API server will read it (verb + resource,
//! `attributes`), counted by those labels, checked against `--policy`, charged to the
//! `--qps`/`--burst` budget and noted for `--record-rbac`. Everything here is atomics and
//! an `ArcSwap` load: no lock, no file read, no allocation once a resource has been seen
//! (but for the access log's owned copy of the attributes, when it is on).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::attributes::Attributes;
use crate::body::{ApiFields, ProxyBody};
use crate::budget::{self, Budget};
use crate::metrics::{ApiLabels, Metrics};
use crate::status::{self, Details, Reason};

pub struct Gate {
    metrics: Arc<Metrics>,
    budget: Option<Arc<Budget>>,
    access_log: bool,
}

/// What the gate learned about a request, for when its response is known.
#[derive(Debug, Default)]
pub struct Call {
    pub labels: Option<ApiLabels>,
    /// The attributes for the access log (only with `--access-log`).
    pub log: Option<ApiFields>,
}

impl Gate {
    pub fn new(metrics: Arc<Metrics>, budget: Option<Budget>, access_log: bool) -> Self {
        let budget = budget.map(Arc::new);
        if let Some(b) = &budget {
            metrics.set_budget(b.clone());
        }
        Gate {
            metrics,
            budget,
            access_log,
        }
    }

    /// Admits an API request the filter accepted, or answers it here.
    pub fn admit(&self, a: &Attributes<'_>, call: &mut Call) -> Option<Response<ProxyBody>> {
        call.labels = Some(self.metrics.api_labels(a));
        if self.access_log {
            call.log = Some(ApiFields::from(a));
        }
        if let Some(budget) = &self.budget {
            if let Err(wait) = budget.take() {
                self.metrics.throttled();
                return Some(too_many_requests(a, wait));
            }
        }
        None
    }

    /// The request was answered (by the API server or by us).
    pub fn answered(&self, call: &Call, code: u16, elapsed: Duration) {
        if let Some(labels) = call.labels {
            self.metrics.api_request(labels, code, elapsed);
        }
    }
}

/// The API server's own 429 (`apiserver`'s max-in-flight and APF filters): a Status with
/// reason TooManyRequests, `details.retryAfterSeconds` and a `Retry-After` header.
fn too_many_requests(a: &Attributes<'_>, wait: Duration) -> Response<ProxyBody> {
    let secs = budget::retry_after_secs(wait);
    let what = if a.resource_request {
        format!("{} {}", a.verb, a.rbac_resource())
    } else {
        format!("{} {}", a.verb, a.path)
    };
    let message = format!(
        "Too many requests, please try again later: {what} is over this pod's API budget \
         (kube-ambassador --qps/--burst)"
    );
    tracing::debug!("{message}");
    let mut resp = status::response_with_details(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::TooManyRequests,
        &message,
        &Details {
            retry_after_seconds: Some(secs),
            ..Details::default()
        },
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}
