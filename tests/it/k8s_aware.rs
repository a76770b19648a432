//! Requests known by verb and resource, through the real binary: the per-resource metrics
//! and access-log fields, the `--qps`/`--burst` budget, `--policy` and `--record-rbac`.

use crate::support;

use serde_json::Value;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const TOKEN: &str = "k8s-aware-token";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn free_port() -> u16 {
    support::free_port_from(23000)
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

const POLICY: &str = r#"# The app reads pods in its namespace, and /version.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: app
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: app-cluster
rules:
- nonResourceURLs: ["/version", "/api", "/api/*"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  resourceNames: ["web"]
  verbs: ["get"]
"#;

/// A ConfigMap volume as the kubelet writes it: `policy.yaml -> ..data/policy.yaml`,
/// `..data -> ..<version>`, swapped by renaming a new `..data` over the old.
struct ConfigMapDir {
    dir: std::path::PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(world: &World, content: &str) -> ConfigMapDir {
        let dir = world.base().join("policy");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cm = ConfigMapDir { dir, version: 0 };
        cm.swap(content);
        std::os::unix::fs::symlink("..data/policy.yaml", cm.file()).unwrap();
        cm
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.join("policy.yaml")
    }

    fn swap(&mut self, content: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("policy.yaml"), content).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

async fn setup_policy(content: &str, extra: &[&str]) -> (FakeApi, World, Proxy, ConfigMapDir) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let cm = ConfigMapDir::new(&world, content);
    let flag = format!("--policy={}", cm.file().display());
    let mut args = vec![flag.as_str(), "--shutdown-delay=0s"];
    args.extend_from_slice(extra);
    let proxy = Proxy::in_cluster(&world, &api, &args).await;
    (api, world, proxy, cm)
}

#[tokio::test]
async fn the_policy_lets_through_only_what_a_rule_allows() {
    let (api, _world, proxy, cm) = setup_policy(POLICY, &[]).await;
    // The start-up log says what is enforced, and in which namespace Roles apply.
    within(
        "the start-up line about the policy",
        proxy.wait_stderr("rules=3 namespace=default"),
    )
    .await;
    assert!(
        proxy.stderr().contains("enforcing --policy"),
        "{}",
        proxy.stderr()
    );
    for (method, path, allowed) in [
        ("GET", PODS.to_owned(), true),
        ("GET", format!("{PODS}?watch=0"), true),
        ("GET", format!("{PODS}/pod-1"), true),
        ("DELETE", format!("{PODS}/pod-2"), true),
        ("POST", PODS.to_owned(), false),
        (
            "GET",
            "/api/v1/namespaces/kube-system/pods".to_owned(),
            false,
        ),
        ("GET", "/api/v1/pods".to_owned(), false),
        (
            "GET",
            "/api/v1/namespaces/default/secrets/s".to_owned(),
            false,
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/any/deployments/web".to_owned(),
            true,
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/any/deployments/db".to_owned(),
            false,
        ),
        ("GET", "/version".to_owned(), true),
        ("GET", "/api".to_owned(), true),
        ("GET", "/api/v1".to_owned(), true),
        ("GET", "/apis".to_owned(), false),
        ("POST", "/version".to_owned(), false),
        ("GET", "/healthz".to_owned(), false),
    ] {
        api.clear_requests();
        let resp = client::send(method, &proxy.url(&path), &[], "").await;
        let reached = !api.requests().is_empty();
        if allowed {
            assert_ne!(resp.status, 403, "{method} {path}: {}", resp.text());
            assert!(reached, "{method} {path} did not reach the API server");
        } else {
            let message = support::status_message(&resp, 403, "Forbidden");
            assert!(!reached, "{method} {path} reached the API server");
            assert!(
                message.contains(&cm.file().display().to_string()),
                "{message}"
            );
        }
    }
    // The Status is the API server's Forbidden: details {name, group, kind}, and a
    // message naming the verb, the resource and the namespace.
    let resp = client::get(&proxy.url("/apis/apps/v1/namespaces/any/deployments/db")).await;
    let status = resp.json();
    assert_eq!(
        status["details"],
        serde_json::json!({"name": "db", "group": "apps", "kind": "deployments"})
    );
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("deployments.apps \"db\" is forbidden: kube-ambassador --policy "),
        "{message}"
    );
    assert!(
        message.ends_with(
            "does not allow get on resource \"deployments\" in API group \"apps\" in the namespace \"any\""
        ),
        "{message}"
    );
    let resp = client::send("POST", &proxy.url("/version"), &[], "").await;
    let message = support::status_message(&resp, 403, "Forbidden");
    assert!(
        message.ends_with("does not allow post on path \"/version\""),
        "{message}"
    );
    // kubectl's filter still applies: exec is refused by --reject-paths before the policy.
    let resp = client::send("POST", &proxy.url(&format!("{PODS}/pod-1/exec")), &[], "").await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(), "Forbidden\n");
    finish(proxy).await;
}

#[tokio::test]
async fn the_policy_is_reloaded_when_its_configmap_changes_and_a_bad_one_keeps_the_last_good() {
    let (_api, _world, proxy, mut cm) = setup_policy(POLICY, &[]).await;
    let configmaps = "/api/v1/namespaces/default/configmaps";
    assert_eq!(client::get(&proxy.url(configmaps)).await.status, 403);
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    cm.swap(&POLICY.replace(r#"["pods", "pods/log"]"#, r#"["configmaps"]"#));
    within(
        "the new policy",
        proxy.wait_stderr("--policy changed on disk"),
    )
    .await;
    assert_ne!(client::get(&proxy.url(configmaps)).await.status, 403);
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 403);

    cm.swap("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: x}\nrules:\n- apiGroups: [\"\"]\n  verbs: [get]\n");
    within(
        "the error",
        proxy.wait_stderr("keeping the last good policy"),
    )
    .await;
    let stderr = proxy.stderr();
    assert!(
        stderr.contains(
            "line 5: document 1 (Role): resource rules must supply at least one resource"
        ),
        "{stderr}"
    );
    // Still the second policy.
    assert_ne!(client::get(&proxy.url(configmaps)).await.status, 403);
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 403);
    finish(proxy).await;
}

#[tokio::test]
async fn a_bad_policy_at_start_up_is_exit_1_with_file_line_and_reason() {
    let world = World::new();
    let file = world.file(
        "policy.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: a}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: get\n",
    );
    let flag = format!("--policy={}", file.display());
    let (status, _out, err) =
        Proxy::start_expect_failure(&[&flag, "--port=0", "--server=http://127.0.0.1:1"], &[]).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("invalid --policy {}", file.display())),
        "{err}"
    );
    assert!(err.contains("line 7"), "{err}");
    let missing = format!("--policy={}", world.base().join("nope.yaml").display());
    let (status, _out, err) =
        Proxy::start_expect_failure(&[&missing, "--port=0", "--server=http://127.0.0.1:1"], &[])
            .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot read --policy"), "{err}");
}

/// `kubernetes-validate` on PATH, or in the virtualenv `.ci/deploy-checks.sh` installs it
/// into; `None` (and the check is skipped, saying so) if neither has it.
fn kubernetes_validate() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubernetes-validate"))
            .find(|p| p.is_file())
    });
    let venv = || {
        let cache = std::env::var_os("DEPLOY_CHECKS_VENV")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache"))
                    })?;
                Some(base.join("kube-ambassador/deploy-checks-venv"))
            })?;
        Some(cache.join("bin/kubernetes-validate")).filter(|p| p.is_file())
    };
    on_path.or_else(venv)
}

#[tokio::test]
async fn record_rbac_then_enforce_it_with_policy_round_trip() {
    let (api, world, proxy, _admin) = setup(&[]).await;
    drop(proxy);
    let file = world.base().join("recorded-rbac.yaml");
    let flag = format!("--record-rbac={}", file.display());
    let proxy = Proxy::in_cluster(&world, &api, &[&flag, "--shutdown-delay=0s"]).await;
    // Written at start-up already: a valid, empty Role.
    let first = std::fs::read_to_string(&file).expect("written at start-up");
    assert!(first.contains("rules: []"), "{first}");

    let requests: Vec<(&str, String)> = vec![
        ("GET", PODS.to_owned()),
        ("GET", format!("{PODS}?watch=0")),
        ("GET", format!("{PODS}/pod-1")),
        ("DELETE", format!("{PODS}/pod-2")),
        ("GET", "/api/v1/namespaces/default/secrets/db".to_owned()),
        ("GET", "/api/v1/namespaces/other/pods".to_owned()),
        ("GET", "/api/v1/pods".to_owned()),
        ("GET", "/version".to_owned()),
        (
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web".to_owned(),
        ),
    ];
    for (method, path) in &requests {
        client::send(method, &proxy.url(path), &[], "").await;
    }
    let stderr = finish(proxy).await;
    assert!(
        stderr.contains("--record-rbac: recorded RBAC written"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        "kind: Role\nmetadata:\n  name: kube-ambassador-recorded\n  namespace: \"default\"\n",
        "- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"delete\", \"get\", \"list\"]\n",
        "# refused (403) by the API server: get\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n",
        "- apiGroups: [\"apps\"]\n  resources: [\"deployments\"]\n  verbs: [\"get\"]\n",
        "kind: ClusterRole\n",
        "# cluster-scoped, or across all namespaces\n# in namespaces other (a RoleBinding there can grant just those)\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"list\"]\n",
        "- nonResourceURLs: [\"/version\"]\n  verbs: [\"get\"]\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(
        !text.contains("pod-1") && !text.contains("db"),
        "no names recorded:\n{text}"
    );

    match kubernetes_validate() {
        Some(kv) => {
            let out = std::process::Command::new(&kv)
                .args(["--strict", "--kubernetes-version", "1.37.0"])
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            assert!(
                out.status.success(),
                "kubernetes-validate --strict:\n{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!(
            "SKIPPED: kubernetes-validate is not installed (.ci/deploy-checks.sh installs it); \
             the recorded file was not schema-checked"
        ),
    }
    // `kubectl apply --dry-run=client` needs a server for discovery, and the fake API
    // server has no RBAC group to discover: the apply step is --policy, below.

    // Enforce what was recorded: the same requests pass, anything else is refused.
    let policy = format!("--policy={}", file.display());
    let proxy = Proxy::in_cluster(&world, &api, &[&policy, "--shutdown-delay=0s"]).await;
    for (method, path) in &requests {
        let resp = client::send(method, &proxy.url(path), &[], "").await;
        let refused = resp.status == 403
            && resp.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("--policy"));
        assert!(
            !refused,
            "{method} {path} refused by the recorded policy: {}",
            resp.text()
        );
    }
    for (method, path) in [
        ("POST", PODS.to_owned()),
        ("GET", "/api/v1/namespaces/default/configmaps".to_owned()),
        ("GET", "/apis".to_owned()),
        ("DELETE", "/api/v1/namespaces/other/pods/p".to_owned()),
    ] {
        let resp = client::send(method, &proxy.url(&path), &[], "").await;
        support::status_message(&resp, 403, "Forbidden");
    }
    finish(proxy).await;
}

#[tokio::test]
async fn record_rbac_rewrites_the_file_while_running() {
    let (api, world, proxy, _admin) = setup(&[]).await;
    drop(proxy);
    let file = world.base().join("rbac.yaml");
    let flag = format!("--record-rbac={}", file.display());
    let proxy = Proxy::in_cluster(&world, &api, &[&flag, "--shutdown-delay=0s", "-v=4"]).await;
    client::get(&proxy.url("/version")).await;
    // The writer logs each write at debug level; the second one holds /version.
    within(
        "the periodic write",
        proxy.wait_stderr("--record-rbac written"),
    )
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("nonResourceURLs: [\"/version\"]"), "{text}");
    finish(proxy).await;
}

/// The policy `manifests/` ships in a ConfigMap is one `--policy` accepts, and allows
/// what the demo app does (list pods, /version) and nothing else.
#[test]
fn the_manifests_policy_configmap_is_a_valid_policy() {
    use kube_ambassador::access::attributes::parse;
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        data: std::collections::BTreeMap<String, String>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/policy-configmap.yaml"
    );
    let cm: ConfigMap = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let policy =
        kube_ambassador::access::policy::Policy::parse(&cm.data["policy.yaml"], "demo").unwrap();
    assert!(policy.allows(&parse("GET", "/api/v1/namespaces/demo/pods", None)));
    assert!(policy.allows(&parse("GET", "/version", None)));
    assert!(!policy.allows(&parse("GET", "/api/v1/namespaces/demo/secrets", None)));
    assert!(!policy.allows(&parse("GET", "/api/v1/namespaces/other/pods", None)));
}
