//! Real Kubernetes clients through the real binary, with no credentials of their own: the
//! `kube` crate (list, get, create, delete, watch) and `kubectl` (`get --raw`, `get pods`)
//! pointed at `http://PROXY_ADDR` talk to the API server as the pod's service account.
//! The kubectl tests print why they skip where kubectl is not installed.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use serde_json::Value;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const TOKEN: &str = "clients-sa-token-93de";

async fn setup() -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, &[]).await;
    (api, world, proxy)
}

/// A `kube` client for `http://PROXY_ADDR`, with no authentication at all.
fn kube_client(proxy: &Proxy) -> Client {
    let url = format!("http://{}", proxy.socket_addr());
    let config = Config::new(url.parse().expect("proxy URL"));
    Client::try_from(config).expect("kube client")
}

fn names(pods: impl IntoIterator<Item = Pod>) -> Vec<String> {
    pods.into_iter()
        .map(|p| p.metadata.name.expect("pod name"))
        .collect()
}

#[tokio::test]
async fn the_kube_crate_lists_gets_creates_and_deletes_pods_through_the_proxy() {
    let (api, _world, proxy) = setup().await;
    let pods: Api<Pod> = Api::namespaced(kube_client(&proxy), "default");

    let list = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(names(list.items), ["pod-0", "pod-1", "pod-2"]);
    // The client sent no credentials; the proxy added the service account's.
    let seen = api
        .wait_for_request(|s| s.path == "/api/v1/namespaces/default/pods")
        .await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));

    let pod = pods.get("pod-1").await.expect("get pod-1");
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));

    let mut new = Pod::default();
    new.metadata.name = Some("made-by-kube".into());
    let created = pods
        .create(&PostParams::default(), &new)
        .await
        .expect("create");
    assert_eq!(created.metadata.name.as_deref(), Some("made-by-kube"));
    assert!(
        api.pod_names("default")
            .contains(&"made-by-kube".to_owned())
    );

    pods.delete("made-by-kube", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api.pod_names("default"), ["pod-0", "pod-1", "pod-2"]);

    let err = pods.get("no-such-pod").await.expect_err("a missing pod");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 404, "{status:?}"),
        other => panic!("expected the API server's 404, got {other:?}"),
    }
}

#[tokio::test]
async fn the_kube_crate_receives_watch_events_through_the_proxy() {
    let (api, _world, proxy) = setup().await;
    let pods: Api<Pod> = Api::namespaced(kube_client(&proxy), "default");
    let stream = within(
        "the watch to open",
        pods.watch(&WatchParams::default(), "0"),
    )
    .await
    .expect("watch");
    let mut stream = stream.boxed();
    // resourceVersion "0": first an ADDED per existing pod.
    let mut initial = Vec::new();
    for _ in 0..3 {
        match within("an initial event", stream.next()).await {
            Some(Ok(WatchEvent::Added(pod))) => initial.push(pod),
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    assert_eq!(names(initial), ["pod-0", "pod-1", "pod-2"]);

    api.wait_open_watches(1).await;
    let sent = api.send_watch_event("MODIFIED", "pod-1");
    match within("the MODIFIED event", stream.next()).await {
        Some(Ok(WatchEvent::Modified(pod))) => {
            assert_eq!(pod.metadata.name.as_deref(), Some("pod-1"));
            assert_eq!(
                pod.metadata.resource_version.as_deref(),
                sent["metadata"]["resourceVersion"].as_str()
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let sent = api.send_watch_event("DELETED", "pod-2");
    match within("the DELETED event", stream.next()).await {
        Some(Ok(WatchEvent::Deleted(pod))) => {
            assert_eq!(pod.metadata.name.as_deref(), Some("pod-2"));
            assert_eq!(
                pod.metadata.resource_version.as_deref(),
                sent["metadata"]["resourceVersion"].as_str()
            );
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
}

/// kubectl on PATH, or `None` after saying why the test skips (a failure under `CI`).
fn kubectl() -> Option<PathBuf> {
    support::kubectl("this kubectl client test")
}

/// Runs kubectl against `http://PROXY_ADDR` with an empty kubeconfig and a scratch home, so
/// nothing of the developer's configuration (or cache) is used.
async fn run_kubectl(kubectl: &Path, world: &World, proxy: &Proxy, args: &[&str]) -> Output {
    let kubeconfig = world.file("empty-kubeconfig", "");
    let home = world.base().join("home");
    std::fs::create_dir_all(&home).expect("scratch home");
    let mut cmd = Command::new(kubectl);
    cmd.arg(format!("--server=http://{}", proxy.socket_addr()))
        .arg("--request-timeout=20s")
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    let what = format!("kubectl {args:?}");
    let out = within(
        &what,
        tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl")),
    )
    .await
    .expect("kubectl thread");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn kubectl_get_raw_through_the_proxy_returns_the_pod_list() {
    let Some(kubectl) = kubectl() else { return };
    let (api, world, proxy) = setup().await;
    let out = run_kubectl(
        &kubectl,
        &world,
        &proxy,
        &["get", "--raw", "/api/v1/namespaces/default/pods"],
    )
    .await;
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl printed JSON");
    assert_eq!(list["kind"], "PodList");
    let listed: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(listed, ["pod-0", "pod-1", "pod-2"]);
    let seen = api
        .wait_for_request(|s| s.path == "/api/v1/namespaces/default/pods")
        .await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    assert!(
        seen.header("user-agent")
            .is_some_and(|ua| ua.starts_with("kubectl")),
        "kubectl's own User-Agent is kept: {seen:?}"
    );
}

#[tokio::test]
async fn kubectl_get_pods_through_the_proxy_lists_the_pods_by_name() {
    let Some(kubectl) = kubectl() else { return };
    let (_api, world, proxy) = setup().await;
    let out = run_kubectl(
        &kubectl,
        &world,
        &proxy,
        &["get", "pods", "-n", "default", "-o", "name"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pod/pod-0\npod/pod-1\npod/pod-2\n"
    );
}
