//! Requests known by verb and resource, through the real binary: the per-resource metrics
//! and access-log fields, the `--qps`/`--burst` budget, `--policy` and `--record-rbac`.

mod support;

use std::sync::atomic::{AtomicU16, Ordering};

use serde_json::Value;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World};

const TOKEN: &str = "k8s-aware-token";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// A port free a moment ago, below the ephemeral range (as tests/admin.rs picks them).
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (low, span) = (20_000u16, 12_000u16);
    let seed = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let port = low + (seed.wrapping_add(7919) + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// The fake API server, a service account in namespace `default`, and the proxy with an
/// admin listener and `extra_args`; returns the admin base URL too.
async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy, String) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let admin = format!("127.0.0.1:{}", free_port());
    let flag = format!("--admin-address={admin}");
    let mut args = vec![flag.as_str(), "--shutdown-delay=0s"];
    args.extend_from_slice(extra_args);
    let proxy = Proxy::in_cluster(&world, &api, &args).await;
    (api, world, proxy, format!("http://{admin}"))
}

async fn scrape(admin: &str) -> String {
    let resp = client::get(&format!("{admin}/metrics")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

/// The value of the series written exactly as `series`; `None` if absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Stops the proxy (SIGTERM, no delay) and returns its stderr.
async fn finish(mut proxy: Proxy) -> String {
    proxy.signal("TERM");
    let status = proxy.wait().await;
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    proxy.stderr()
}

#[tokio::test]
async fn api_requests_are_counted_by_verb_and_resource_and_never_by_path() {
    let (_api, _world, proxy, admin) = setup(&[]).await;
    for (method, path, code) in [
        ("GET", PODS.to_owned(), 200),
        ("GET", PODS.to_owned(), 200),
        ("GET", format!("{PODS}/pod-1"), 200),
        ("DELETE", format!("{PODS}/pod-2"), 200),
        ("GET", "/version".to_owned(), 200),
        (
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web".to_owned(),
            404,
        ),
        ("GET", format!("{PODS}/pod-1/log"), 404),
    ] {
        let resp = client::send(method, &proxy.url(&path), &[], "").await;
        assert_eq!(
            resp.status.as_u16(),
            code,
            "{method} {path}: {}",
            resp.text()
        );
    }
    let text = scrape(&admin).await;
    let series = |labels: &str| format!("kube_ambassador_api_requests_total{{{labels}}}");
    for (labels, want) in [
        (
            r#"verb="list",group="",resource="pods",subresource="",code="200""#,
            2.0,
        ),
        (
            r#"verb="get",group="",resource="pods",subresource="",code="200""#,
            1.0,
        ),
        (
            r#"verb="delete",group="",resource="pods",subresource="",code="200""#,
            1.0,
        ),
        (
            r#"verb="get",group="",resource="",subresource="",code="200""#,
            1.0,
        ),
        (
            r#"verb="get",group="apps",resource="deployments",subresource="",code="404""#,
            1.0,
        ),
        (
            r#"verb="get",group="",resource="pods",subresource="log",code="404""#,
            1.0,
        ),
    ] {
        assert_eq!(
            value(&text, &series(labels)),
            Some(want),
            "{labels}\n{text}"
        );
    }
    assert_eq!(
        value(
            &text,
            r#"kube_ambassador_api_request_duration_seconds_count{verb="list",group="",resource="pods"}"#
        ),
        Some(2.0),
        "{text}"
    );
    // Subresources share their resource's histogram.
    assert_eq!(
        value(
            &text,
            r#"kube_ambassador_api_request_duration_seconds_count{verb="get",group="",resource="pods"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("At most 100 distinct"),
        "the bound is in the help text"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("kube_ambassador_api_"))
    {
        assert!(
            !line.contains("/version") && !line.contains("pod-1"),
            "{line}"
        );
    }
    // No budget: no budget series.
    assert!(!text.contains("kube_ambassador_budget_tokens"), "{text}");
    finish(proxy).await;
}

#[tokio::test]
async fn the_access_log_names_verb_group_resource_subresource_namespace_and_name() {
    let (_api, _world, proxy, _admin) = setup(&["--access-log", "--log-format=json"]).await;
    client::get(&proxy.url(&format!("{PODS}/pod-1/log?follow=false"))).await;
    client::get(&proxy.url("/apis/apps/v1/deployments")).await;
    client::get(&proxy.url("/version")).await;
    let stderr = finish(proxy).await;
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "kube_ambassador::access")
        .collect();
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}: {lines:#?}"))
    };
    let fields = |l: &Value| {
        [
            "verb",
            "group",
            "resource",
            "subresource",
            "namespace",
            "name",
        ]
        .map(|k| {
            l[k].as_str()
                .unwrap_or_else(|| panic!("{k} in {l}"))
                .to_owned()
        })
    };
    assert_eq!(
        fields(find(&format!("{PODS}/pod-1/log"))),
        ["get", "", "pods", "log", "default", "pod-1"]
    );
    assert_eq!(
        fields(find("/apis/apps/v1/deployments")),
        ["list", "apps", "deployments", "", "", ""]
    );
    assert_eq!(fields(find("/version")), ["get", "", "", "", "", ""]);
}

#[tokio::test]
async fn over_budget_requests_get_429_with_retry_after_and_never_reach_the_api_server() {
    // One token per 100 s: the bucket cannot refill while the test runs.
    let (api, _world, proxy, admin) = setup(&["--qps=0.01", "--burst=2"]).await;
    let text = scrape(&admin).await;
    assert_eq!(
        value(&text, "kube_ambassador_budget_tokens"),
        Some(2.0),
        "{text}"
    );
    // A watch takes one token when it starts (and none while it streams).
    let _watch = support::open_watch(&api, &proxy.url(&format!("{PODS}?watch=1"))).await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200);
    api.clear_requests();

    let resp = client::get(&proxy.url(&format!("{PODS}/pod-1"))).await;
    let message = support::status_message(&resp, 429, "TooManyRequests");
    assert!(message.contains("get pods"), "{message}");
    assert!(message.contains("--qps"), "{message}");
    let retry: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((90..=100).contains(&retry), "Retry-After {retry}");
    assert_eq!(resp.json()["details"]["retryAfterSeconds"], retry);
    assert_eq!(resp.json()["code"], 429);
    // Non-resource requests are charged too.
    let resp = client::get(&proxy.url("/version")).await;
    assert_eq!(resp.status, 429);
    assert!(api.requests().is_empty(), "{:?}", api.requests().len());

    let text = scrape(&admin).await;
    assert_eq!(
        value(&text, "kube_ambassador_throttled_requests_total"),
        Some(2.0),
        "{text}"
    );
    let tokens = value(&text, "kube_ambassador_budget_tokens").expect("tokens gauge");
    assert!((0.0..0.1).contains(&tokens), "{tokens}");
    assert_eq!(
        value(
            &text,
            r#"kube_ambassador_api_requests_total{verb="get",group="",resource="pods",subresource="",code="429"}"#
        ),
        Some(1.0),
        "{text}"
    );
    finish(proxy).await;
}

#[tokio::test]
async fn a_burst_without_tokens_is_refused_at_start_up() {
    let (status, _out, err) =
        Proxy::start_expect_failure(&["--qps=5", "--burst=0", "--port=0"], &[]).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("--burst must be at least 1"), "{err}");
    let (status, _out, err) = Proxy::start_expect_failure(&["--qps=-1", "--port=0"], &[]).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("--qps"), "{err}");
}
