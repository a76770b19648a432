//! The CPU cost per request of the Kubernetes-aware step: reading the request attributes
//! (`attributes::parse`), checking them against a `--policy`, and the per-resource metric
//! labels, on a mix of requests an operator or controller makes. A timing loop, run by
//! hand (not a test: its figures depend on the machine):
//!
//! ```text
//! cargo run --release --example k8s-aware-cost
//! ```
//!
//! Prints nanoseconds of this thread's CPU time (not wall time: a loaded machine would
//! inflate that) per request for each step and for all three together (the issue's
//! target: at most 1 µs for parsing and the policy check), the best of five runs.
//!
//! Instruction counts, which no load can move: run one step under callgrind with two
//! round counts and divide the difference by the requests between them:
//!
//! ```text
//! K8S_COST_ONLY=all K8S_COST_ROUNDS=1000  valgrind --tool=callgrind target/release/examples/k8s-aware-cost
//! K8S_COST_ONLY=all K8S_COST_ROUNDS=11000 valgrind --tool=callgrind target/release/examples/k8s-aware-cost
//! # (Ir of the second - Ir of the first) / (10,000 rounds x 10 requests)
//! ```

use std::hint::black_box;

use kube_ambassador::access::attributes::parse;
use kube_ambassador::access::policy::Policy;
use kube_ambassador::metrics::Metrics;

/// What the app sends: (method, decoded path, raw query).
const MIX: [(&str, &str, Option<&str>); 10] = [
    (
        "GET",
        "/api/v1/namespaces/team/pods",
        Some("limit=500&resourceVersion=0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/pods",
        Some("allowWatchBookmarks=true&resourceVersion=123&timeoutSeconds=420&watch=true"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/configmaps",
        Some("fieldSelector=metadata.name%3Dsettings&watch=1"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team/pods/web-7d9f-x2x/log",
        Some("container=app&follow=true"),
    ),
    (
        "PATCH",
        "/apis/apps/v1/namespaces/team/deployments/web/status",
        None,
    ),
    (
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/team/leases/controller",
        None,
    ),
    ("POST", "/api/v1/namespaces/team/events", None),
    (
        "GET",
        "/apis/example.com/v1/namespaces/team/widgets/w1",
        None,
    ),
    ("GET", "/version", None),
    ("DELETE", "/api/v1/namespaces/other/pods/p", None),
];

/// A policy of the usual size: a Role with a handful of rules and a ClusterRole.
const POLICY: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: app}
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["settings"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "deployments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
- apiGroups: ["example.com"]
  resources: ["widgets", "widgets/status"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: app-cluster}
rules:
- nonResourceURLs: ["/version", "/healthz", "/api", "/api/*", "/apis", "/apis/*"]
  verbs: ["get"]
"#;

/// This thread's CPU time, in nanoseconds.
fn cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Runs `f` (one round over the mix) `rounds` times, five times over; the best
/// nanoseconds of CPU per request.
fn measure(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = cpu_ns();
            for _ in 0..rounds {
                f();
            }
            (cpu_ns() - start) as f64 / (rounds * MIX.len()) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds: usize = std::env::var("K8S_COST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100_000);
    let only = std::env::var("K8S_COST_ONLY").ok();
    let policy = Policy::parse(POLICY, "team").expect("the example policy parses");
    let metrics = Metrics::default();
    // Warm up (and insert the resources the metrics keep).
    for (m, p, q) in MIX {
        let a = parse(m, p, q);
        black_box(policy.allows(&a));
        black_box(metrics.api_labels(&a));
    }

    let parsed: Vec<_> = MIX.iter().map(|(m, p, q)| parse(m, p, *q)).collect();
    let run = |step: &str| only.as_deref().is_none_or(|o| o == step);
    let mut parse_ns = f64::NAN;
    let mut policy_ns = f64::NAN;
    let mut labels_ns = f64::NAN;
    let mut all_ns = f64::NAN;
    if run("parse") {
        parse_ns = measure(rounds, || {
            for (m, p, q) in MIX {
                black_box(parse(black_box(m), black_box(p), black_box(q)));
            }
        });
    }
    if run("policy") {
        policy_ns = measure(rounds, || {
            for a in &parsed {
                black_box(policy.allows(black_box(a)));
            }
        });
    }
    if run("labels") {
        labels_ns = measure(rounds, || {
            for a in &parsed {
                black_box(metrics.api_labels(black_box(a)));
            }
        });
    }
    if run("all") {
        all_ns = measure(rounds, || {
            for (m, p, q) in MIX {
                let a = parse(black_box(m), black_box(p), black_box(q));
                black_box(policy.allows(&a));
                black_box(metrics.api_labels(&a));
            }
        });
    }

    let allowed = parsed.iter().filter(|a| policy.allows(a)).count();
    println!(
        "{} requests x {rounds} rounds, best of 5, CPU time ({allowed} of them allowed by the policy)",
        MIX.len()
    );
    println!("attributes::parse        {parse_ns:7.1} ns/request");
    println!("Policy::allows           {policy_ns:7.1} ns/request");
    println!("Metrics::api_labels      {labels_ns:7.1} ns/request");
    println!("all three, in one pass   {all_ns:7.1} ns/request");
}
