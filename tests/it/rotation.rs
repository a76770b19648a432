//! Token and CA rotation through the real binary: the kubelet's atomic writer swaps
//! `..data`, and requests never see a stale credential.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const PODS: &str = "/api/v1/namespaces/default/pods";

async fn setup(token: &str) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[token])).await;
    let world = World::with_sa(token, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, &[]).await;
    (api, world, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_during_a_request_loop_loses_no_request_when_the_old_token_dies_at_once() {
    let (api, world, proxy) = setup("token-0").await;
    let url = proxy.url(PODS);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, stop, done) = (url.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = client::get(&url).await;
                if resp.status != 200 {
                    failures.push(format!("{} {}", resp.status, resp.text()));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    for i in 1..=5 {
        let old = format!("token-{}", i - 1);
        let token = format!("token-{i}");
        // A new token is valid from the moment it is issued; the kubelet then publishes
        // it, and here the API server refuses the old one at once.
        api.set_tokens(&[&old, &token]);
        world.rotate(Some(&token), None);
        api.set_tokens(&[&token]);
        // Let the loop run on the new token for a while before the next rotation.
        let seen = api.requests().len();
        within("requests with the new token", async {
            api.wait_for_request(|s| s.token.as_deref() == Some(token.as_str()))
                .await;
            api.wait_requests(seen + 40).await;
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(done.load(Ordering::Relaxed) >= 150);
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        !proxy.stderr().contains("token-"),
        "a token reached the logs:\n{}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn a_401_with_a_newer_token_on_disk_is_retried_invisibly() {
    // The token file is a symlink into a directory nobody watches, so only the 401 path
    // can notice that it changed.
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&["old"])).await;
    let world = World::with_sa("unused", &pki.ca_pem(), "default");
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("token");
    std::fs::write(&real, "old\n").unwrap();
    let sa = world.base().join("sa-linked");
    std::fs::create_dir(&sa).unwrap();
    std::os::unix::fs::symlink(&real, sa.join("token")).unwrap();
    std::fs::copy(world.ca_path(), sa.join("ca.crt")).unwrap();
    let sa_arg = format!("--service-account-dir={}", sa.display());
    let port = api.port().to_string();
    let proxy = Proxy::start(
        &[&sa_arg, "--port=0"],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    std::fs::write(&real, "new\n").unwrap();
    api.set_tokens(&["new"]);
    api.clear_requests();
    let resp = client::get(&proxy.url("/echo/after-rotation")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["token"], "new");
    let seen: Vec<_> = api.requests().into_iter().map(|s| s.token).collect();
    assert_eq!(seen, [Some("old".to_owned()), Some("new".to_owned())]);

    // A request with a body is not replayed: the client sees the 401.
    std::fs::write(&real, "newer\n").unwrap();
    api.set_tokens(&["newest"]);
    let resp = client::send("POST", &proxy.url("/echo/with-body"), &[], "payload").await;
    assert_eq!(resp.status, 401);
}

#[tokio::test]
async fn a_failed_read_keeps_the_last_good_token() {
    let (api, world, proxy) = setup("good").await;
    world.rotate(Some("   \n"), None);
    within(
        "the empty-token warning",
        proxy.wait_stderr("keeping the last good token"),
    )
    .await;
    let resp = client::get(&proxy.url("/echo/x")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["token"], "good");
    drop(api);
}

#[tokio::test]
async fn ca_rotation_is_used_by_new_connections_and_an_untrusted_server_never_gets_the_token() {
    let (api, world, proxy) = setup("tok").await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    // The API server now presents a certificate from a CA the proxy does not trust.
    let next = Pki::new();
    api.set_pki(next.clone());
    api.close_connections();
    api.clear_requests();
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let status = resp.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 502);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{}", api.port())),
        "{message}"
    );
    assert!(message.contains("TLS"), "{message}\n{}", proxy.stderr());
    assert!(!resp.text().contains("tok\""), "token in the body");
    assert!(
        api.requests().is_empty(),
        "a request reached an untrusted server"
    );

    // The kubelet publishes the new CA; new connections verify with it.
    world.rotate(None, Some(&next.ca_pem()));
    within("the CA reload", proxy.wait_stderr("CA changed on disk")).await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Measures how long after the `..data` swap the first request carries the new token.
/// Not a pass/fail timing test: run with
/// `cargo test --release --test it rotation::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints figures"]
async fn measure_token_pickup_delay() {
    let (api, world, proxy) = setup("t0").await;
    api.set_tokens(&[]);
    let url = proxy.url("/public/echo");
    let mut delays = Vec::new();
    for i in 1..=50 {
        let token = format!("t{i}");
        let swapped = Instant::now();
        world.rotate(Some(&token), None);
        let mut stale = 0;
        loop {
            let resp = client::get(&url).await;
            if resp.json()["token"] == token.as_str() {
                break;
            }
            stale += 1;
        }
        delays.push((swapped.elapsed(), stale));
    }
    let mut d: Vec<Duration> = delays.iter().map(|(d, _)| *d).collect();
    d.sort();
    let stale: usize = delays.iter().map(|(_, s)| s).sum();
    println!(
        "token pick-up after ..data swap (incl. one request): p50 {:?}, p90 {:?}, max {:?}; \
         requests that still carried the old token: {stale} of {}",
        d[d.len() / 2],
        d[d.len() * 9 / 10],
        d[d.len() - 1],
        stale + delays.len()
    );
}

/// The lines of the proxy's stderr that explain a 401 on its own credential.
fn hints(proxy: &Proxy) -> Vec<String> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("refused the proxy's credential"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_401_on_the_proxys_credential_is_explained_once_per_credential_never_with_the_token() {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&["accepted-token"])).await;
    let stale = support::fake_jwt(1_000, 4_600);
    let world = World::with_sa(&stale, &pki.ca_pem(), "default");
    let mut proxy = Proxy::in_cluster(&world, &api, &[]).await;
    for _ in 0..3 {
        assert_eq!(client::get(&proxy.url(PODS)).await.status, 401);
    }
    let first = hints(&proxy);
    assert_eq!(first.len(), 1, "{}", proxy.stderr());
    let token_path = world.token_path().display().to_string();
    assert!(
        first[0].contains(&format!(
            "(401 Unauthorized): file {token_path}; its JWT exp is Thu, 01 Jan 1970 01:16:40 GMT \
             (expired "
        )) && first[0].contains("the file has not changed since start-up"),
        "{}",
        first[0]
    );

    // A new credential that is refused too gets its own line, saying it rotated.
    let next = support::fake_jwt(2_000, 5_600);
    world.rotate(Some(&next), None);
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 401);
    proxy.wait_stderr("renewed 1 time(s) since start-up").await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 401);
    let all = hints(&proxy);
    assert_eq!(all.len(), 2, "{}", proxy.stderr());
    assert!(all[1].contains("01:33:20 GMT"), "{}", all[1]);
    proxy.signal("INT");
    proxy.wait().await;
    support::assert_no_secrets(&proxy, &[&stale, &next]);
}
