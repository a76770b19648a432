//! The Kubernetes-aware step of the request path, between the kubectl filter and the
//! forward: each API request is read as the API server will read it (verb + resource,
//! `attributes`), counted by those labels, checked against `--policy`, charged to the
//! `--qps`/`--burst` budget and noted for `--record-rbac`. Everything here is atomics and
//! an `ArcSwap` load: no lock, no file read, no allocation once a resource has been seen
//! (but for the access log's owned copy of the attributes, when it is on).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::access::attributes::Attributes;
use crate::access::budget::{self, Budget};
use crate::access::policy::PolicyFile;
use crate::access::record::{Recorder, Refusal};
use crate::metrics::{ApiLabels, Metrics};
use crate::proxy::body::{ApiFields, ProxyBody};
use crate::proxy::status::{self, Details, Reason};

pub struct Gate {
    metrics: Arc<Metrics>,
    budget: Option<Arc<Budget>>,
    policy: Option<Arc<PolicyFile>>,
    recorder: Option<Arc<Recorder>>,
    access_log: bool,
}

/// What a [`Gate`] is built from.
pub struct GateParts {
    pub metrics: Arc<Metrics>,
    pub budget: Option<Budget>,
    pub policy: Option<Arc<PolicyFile>>,
    pub recorder: Option<Arc<Recorder>>,
    pub access_log: bool,
}

/// What the gate learned about a request, for when its response is known.
#[derive(Debug, Default)]
pub struct Call {
    pub labels: Option<ApiLabels>,
    /// The attributes for the access log (only with `--access-log`).
    pub log: Option<ApiFields>,
    /// Its `--record-rbac` entry.
    pub recorded: Option<usize>,
    /// Refused by `--policy` (a 403 of ours, not the API server's).
    pub refused_locally: bool,
}

impl Gate {
    pub fn new(p: GateParts) -> Self {
        let budget = p.budget.map(Arc::new);
        if let Some(b) = &budget {
            p.metrics.set_budget(b.clone());
        }
        Gate {
            metrics: p.metrics,
            budget,
            policy: p.policy,
            recorder: p.recorder,
            access_log: p.access_log,
        }
    }

    /// Admits an API request the filter accepted, or answers it here.
    pub fn admit(&self, a: &Attributes<'_>, call: &mut Call) -> Option<Response<ProxyBody>> {
        call.labels = Some(self.metrics.api_labels(a));
        if self.access_log {
            call.log = Some(ApiFields::from(a));
        }
        if let Some(rec) = &self.recorder {
            call.recorded = rec.note(a);
        }
        // The policy first: a refused request costs no budget.
        if let Some(policy) = &self.policy
            && !policy.allows(a)
        {
            call.refused_locally = true;
            if let (Some(rec), Some(entry)) = (&self.recorder, call.recorded) {
                rec.refused(entry, Refusal::Policy);
            }
            return Some(forbidden(a, policy.path()));
        }
        if let Some(budget) = &self.budget
            && let Err(wait) = budget.take()
        {
            self.metrics.throttled();
            return Some(too_many_requests(a, wait));
        }
        None
    }

    /// The request was answered (by the API server or by us).
    pub fn answered(&self, call: &Call, code: u16, elapsed: Duration) {
        if let Some(labels) = call.labels {
            self.metrics.api_request(labels, code, elapsed);
        }
        if code == 403
            && !call.refused_locally
            && let (Some(rec), Some(entry)) = (&self.recorder, call.recorded)
        {
            rec.refused(entry, Refusal::ApiServer);
        }
    }
}

/// The pod's namespace: `--namespace`, else the service account's `namespace` file (as
/// client-go's in-cluster loader reads it), else `default`.
pub(crate) fn pod_namespace(flag: Option<&str>, service_account_dir: &Path) -> String {
    if let Some(ns) = flag.filter(|n| !n.is_empty()) {
        return ns.to_owned();
    }
    std::fs::read_to_string(service_account_dir.join("namespace"))
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The API server's Forbidden (apiserver `responsewriters.Forbidden` →
/// `apierrors.NewForbidden`): `details` {name, group, kind = the resource}, and a message
/// `<resource>[.group] ["name"] is forbidden: ...` naming verb, resource, namespace and
/// the policy file that refused it.
fn forbidden(a: &Attributes<'_>, policy: &Path) -> Response<ProxyBody> {
    let file = policy.display();
    let message = if a.resource_request {
        let qualified = if a.group.is_empty() {
            a.resource.to_owned()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        let subject = if a.name.is_empty() {
            format!("{qualified} is forbidden")
        } else {
            format!("{qualified} {:?} is forbidden", a.name)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        format!(
            "{subject}: kube-ambassador --policy {file} does not allow {} on resource {:?} in \
             API group {:?} {scope}",
            a.verb,
            a.rbac_resource(),
            a.group
        )
    } else {
        format!(
            "forbidden: kube-ambassador --policy {file} does not allow {} on path {:?}",
            a.verb, a.path
        )
    };
    tracing::debug!("{message}");
    status::response_with_details(
        StatusCode::FORBIDDEN,
        Reason::Forbidden,
        &message,
        &Details {
            name: &a.name,
            group: a.group,
            kind: a.resource,
            retry_after_seconds: None,
        },
    )
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
