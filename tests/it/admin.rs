//! The admin listener (`--admin-address`) through the real binary: `/healthz`, `/readyz`
//! following whether the API server answers, no proxying on the admin port (and no admin
//! endpoints on the proxy port), and `/metrics` in Prometheus text whose every series moves
//! when it should: requests, durations, upstream errors, open connections, watches and
//! tunnels, token and CA reloads, the token's expiry.

use crate::support;

use support::fake_jwt;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::client::{self, AbortOnDrop};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "admin-sa-token";
const PODS: &str = "/api/v1/namespaces/default/pods";
const GET_200: &str = r#"kube_ambassador_requests_total{method="GET",code="200"}"#;
const DURATION_COUNT: &str = "kube_ambassador_request_duration_seconds_count";
const REFUSED: &str = r#"kube_ambassador_upstream_errors_total{kind="refused"}"#;
const WATCHES: &str = "kube_ambassador_active_watches";
const UPGRADES: &str = "kube_ambassador_active_upgrades";
const CONNECTIONS: &str = "kube_ambassador_open_connections";
const UPSTREAM_H2: &str = "kube_ambassador_upstream_http2_connections";
const TOKEN_CHANGED: &str = r#"kube_ambassador_token_reloads_total{result="changed"}"#;
const CA_CHANGED: &str = r#"kube_ambassador_ca_reloads_total{result="changed"}"#;
const EXPIRY: &str = "kube_ambassador_token_expiry_timestamp_seconds";

fn free_port() -> u16 {
    support::free_port_from(20000)
}

/// The fake API server, a world and a proxy with an admin listener; returns the admin
/// base URL too.
async fn setup_with(token: &str, extra_args: &[&str]) -> (FakeApi, World, Proxy, String) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[token])).await;
    let world = World::with_sa(token, &pki.ca_pem(), "default");
    let admin = format!("127.0.0.1:{}", free_port());
    let flag = format!("--admin-address={admin}");
    let mut args = vec![flag.as_str()];
    args.extend_from_slice(extra_args);
    let proxy = Proxy::in_cluster(&world, &api, &args).await;
    (api, world, proxy, format!("http://{admin}"))
}

async fn setup() -> (FakeApi, World, Proxy, String) {
    setup_with(TOKEN, &[]).await
}

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    async fn get(admin: &str) -> Scrape {
        let resp = client::get(&format!("{admin}/metrics")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        Scrape(resp.text())
    }

    /// The value of the series written exactly as `series` (name and labels); `None` if
    /// it is absent.
    fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            let v = rest.split_whitespace().next()?;
            Some(v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")))
        })
    }

    /// Like [`Scrape::value`], absent counting as 0 (label sets only appear once used).
    fn count(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }
}

/// Re-scrapes until `pred` holds for the value of `series` (absent = 0). The proxy has no
/// change notification for its metrics, so this re-checks the condition; callers first
/// await the event that makes it true, and the pause only paces the retries.
async fn wait_metric(admin: &str, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let mut last = None;
    let found = tokio::time::timeout(support::WAIT, async {
        loop {
            let v = Scrape::get(admin).await.count(series);
            if pred(v) {
                return v;
            }
            last = Some(v);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{series} never matched; last value {last:?}"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn healthz_answers_200_ok() {
    let (_api, _world, _proxy, admin) = setup().await;
    let resp = client::get(&format!("{admin}/healthz")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "ok\n");
    // Anything else is not found, and nothing but GET and HEAD is allowed.
    let resp = client::get(&format!("{admin}/nothing-here")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = client::send("POST", &format!("{admin}/healthz"), &[], "").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn readyz_follows_whether_the_api_server_answers() {
    let (api, _world, proxy, admin) = setup().await;
    let readyz = format!("{admin}/readyz");
    // The admin listener probes the API server once at start; that answer must not land
    // after the failure below.
    api.wait_for_request(|s| s.path == "/version").await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    let resp = client::get(&readyz).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    api.stop().await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 503);
    let resp = client::get(&readyz).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.text().contains("not answering"), "{}", resp.text());
    // The liveness probe does not care: restarting the proxy would not help.
    assert_eq!(
        client::get(&format!("{admin}/healthz")).await.status,
        StatusCode::OK
    );

    api.restart().await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    let resp = client::get(&readyz).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

#[tokio::test]
async fn the_admin_port_never_proxies_and_the_proxy_ports_healthz_is_the_api_servers() {
    let (api, _world, proxy, admin) = setup().await;
    let paths = [PODS, "/api", "/echo/via-admin", "/public/echo/via-admin"];
    for path in paths {
        let resp = client::get(&format!("{admin}{path}")).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.text(), "not found\n", "{path}");
    }

    let resp = client::get(&proxy.url("/healthz")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "ok", "not the fake API server's answer");
    let seen = api.wait_for_request(|s| s.path == "/healthz").await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    let resp = client::get(&proxy.url("/metrics")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "{}", resp.text());
    api.wait_for_request(|s| s.path == "/metrics").await;
    // Nothing asked on the admin port reached the API server. (It does see the admin
    // listener's own readiness probe of `/version`, which is not a proxied request.)
    let reached: Vec<String> = api.requests().into_iter().map(|s| s.path).collect();
    for path in paths {
        assert!(
            !reached.iter().any(|p| p == path),
            "{path} was proxied: {reached:?}"
        );
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests_and_their_durations() {
    let (_api, _world, proxy, admin) = setup().await;
    let resp = client::get(&format!("{admin}/metrics")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text();
    for want in [
        "# TYPE kube_ambassador_requests counter",
        "# TYPE kube_ambassador_request_duration_seconds histogram",
        "# TYPE kube_ambassador_upstream_errors counter",
        "# TYPE kube_ambassador_active_watches gauge",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");

    let before = Scrape::get(&admin).await;
    for _ in 0..3 {
        assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    }
    assert_eq!(client::get(&proxy.url("/nothing")).await.status, 404);
    let after = Scrape::get(&admin).await;
    assert_eq!(after.count(GET_200), before.count(GET_200) + 3.0);
    assert_eq!(
        after.count(r#"kube_ambassador_requests_total{method="GET",code="404"}"#),
        before.count(r#"kube_ambassador_requests_total{method="GET",code="404"}"#) + 1.0
    );
    assert_eq!(
        after.count(DURATION_COUNT),
        before.count(DURATION_COUNT) + 4.0
    );
    let le_inf = r#"kube_ambassador_request_duration_seconds_bucket{le="+Inf"}"#;
    assert_eq!(after.count(le_inf), after.count(DURATION_COUNT));
    // Scrapes of the admin port are not proxied requests.
    assert_eq!(
        Scrape::get(&admin).await.count(DURATION_COUNT),
        after.count(DURATION_COUNT)
    );
}

#[tokio::test]
async fn metrics_count_upstream_errors_by_kind_when_the_api_server_is_down() {
    let (api, _world, proxy, admin) = setup().await;
    // The admin listener's start-up probe of the API server is over before it goes down,
    // so the only failures counted below are the two requests'.
    api.wait_for_request(|s| s.path == "/version").await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    assert_eq!(Scrape::get(&admin).await.count(REFUSED), 0.0);
    api.stop().await;
    for _ in 0..2 {
        let resp = client::get(&proxy.url(PODS)).await;
        assert_eq!(resp.status, 503, "{}", resp.text());
    }
    let scrape = Scrape::get(&admin).await;
    assert_eq!(scrape.count(REFUSED), 2.0);
    assert_eq!(
        scrape.count(r#"kube_ambassador_requests_total{method="GET",code="503"}"#),
        2.0
    );
    assert_eq!(
        scrape.count(r#"kube_ambassador_upstream_errors_total{kind="timeout"}"#),
        0.0
    );
}

#[tokio::test]
async fn the_active_watches_gauge_is_1_while_a_watch_is_open_and_0_after_it_closes() {
    let (api, _world, proxy, admin) = setup().await;
    assert_eq!(Scrape::get(&admin).await.count(WATCHES), 0.0);
    let mut watch = client::get_stream(&proxy.url(&format!("{PODS}?watch=1")), &[]).await;
    assert_eq!(watch.status, 200);
    within("the first watch event", watch.next_json())
        .await
        .expect("an ADDED event");
    assert_eq!(Scrape::get(&admin).await.value(WATCHES), Some(1.0));
    // A plain list is not a watch.
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    assert_eq!(Scrape::get(&admin).await.value(WATCHES), Some(1.0));

    drop(watch);
    api.wait_open_watches(0).await;
    wait_metric(&admin, WATCHES, |v| v == 0.0).await;
}

#[tokio::test]
async fn the_upstream_http2_gauge_follows_the_connections_to_the_api_server() {
    let (api, _world, proxy, admin) = setup_with(TOKEN, &["--upstream-http2=true"]).await;
    for _ in 0..3 {
        assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    }
    assert_eq!(api.h2_connections_total(), 1, "three GETs, one connection");
    assert_eq!(Scrape::get(&admin).await.value(UPSTREAM_H2), Some(1.0));

    // The API server drops it: the gauge falls to 0, and the next request opens another.
    api.close_connections();
    wait_metric(&admin, UPSTREAM_H2, |v| v == 0.0).await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    assert_eq!(api.h2_connections_total(), 2);
    assert_eq!(Scrape::get(&admin).await.value(UPSTREAM_H2), Some(1.0));
}

#[tokio::test]
async fn the_active_upgrades_gauge_is_1_while_a_tunnel_is_open_and_0_after_it_closes() {
    let (api, _world, proxy, admin) = setup().await;
    let up = client::upgrade(
        &proxy.url(&format!("{PODS}/p/portforward")),
        &[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
    let mut io = up.io.expect("upgraded stream");
    io.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within("the echo", io.read_exact(&mut back)).await.unwrap();
    assert_eq!(Scrape::get(&admin).await.value(UPGRADES), Some(1.0));

    drop(io);
    api.wait_open_upgrades(0).await;
    wait_metric(&admin, UPGRADES, |v| v == 0.0).await;
}

#[tokio::test]
async fn the_open_connections_gauge_counts_a_keep_alive_connection_until_it_closes() {
    let (_api, _world, proxy, admin) = setup().await;
    assert_eq!(Scrape::get(&admin).await.value(CONNECTIONS), Some(0.0));

    let tcp = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    let (mut sender, conn) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(tcp)))
        .await
        .unwrap();
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    for _ in 0..2 {
        let req = http::Request::get(PODS)
            .header("host", proxy.socket_addr().to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = within("a request on the kept-alive connection", async {
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            status
        })
        .await;
        assert_eq!(resp, StatusCode::OK);
        assert_eq!(Scrape::get(&admin).await.value(CONNECTIONS), Some(1.0));
    }

    drop(sender);
    drop(conn);
    wait_metric(&admin, CONNECTIONS, |v| v == 0.0).await;
}

#[tokio::test]
async fn the_token_reloads_counter_moves_when_the_kubelet_rotates_the_token() {
    let (api, world, proxy, admin) = setup().await;
    assert_eq!(Scrape::get(&admin).await.count(TOKEN_CHANGED), 0.0);
    api.set_tokens(&[TOKEN, "admin-sa-token-2"]);
    world.rotate(Some("admin-sa-token-2"), None);
    proxy.wait_stderr("token changed on disk").await;
    wait_metric(&admin, TOKEN_CHANGED, |v| v == 1.0).await;
    let resp = client::get(&proxy.url("/echo/after")).await;
    assert_eq!(resp.json()["token"], "admin-sa-token-2");
    assert_eq!(
        Scrape::get(&admin)
            .await
            .count(r#"kube_ambassador_token_reloads_total{result="failed"}"#),
        0.0
    );
}

#[tokio::test]
async fn the_ca_reloads_counter_moves_when_the_ca_is_rotated() {
    let (_api, world, proxy, admin) = setup().await;
    assert_eq!(Scrape::get(&admin).await.count(CA_CHANGED), 0.0);
    world.rotate(None, Some(&Pki::new().ca_pem()));
    proxy.wait_stderr("CA changed on disk").await;
    wait_metric(&admin, CA_CHANGED, |v| v == 1.0).await;
    assert_eq!(Scrape::get(&admin).await.count(TOKEN_CHANGED), 0.0);
}

#[tokio::test]
async fn the_token_expiry_gauge_is_the_exp_claim_of_a_jwt_token_and_follows_a_rotation() {
    let now = unix_now();
    let first = fake_jwt(now - 60, now + 3600);
    let (api, world, proxy, admin) = setup_with(&first, &[]).await;
    assert_eq!(
        Scrape::get(&admin).await.value(EXPIRY),
        Some((now + 3600) as f64)
    );

    let second = fake_jwt(now, now + 7200);
    api.set_tokens(&[&first, &second]);
    world.rotate(Some(&second), None);
    proxy.wait_stderr("token changed on disk").await;
    wait_metric(&admin, EXPIRY, |v| v == (now + 7200) as f64).await;
    assert_eq!(
        client::get(&proxy.url("/echo/x")).await.json()["token"],
        second.as_str()
    );
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_has_no_expiry_gauge() {
    let (_api, _world, _proxy, admin) = setup().await;
    let scrape = Scrape::get(&admin).await;
    assert_eq!(scrape.value(EXPIRY), None, "{}", scrape.0);
    assert!(scrape.value(GET_200).is_none());
}

/// The admin listener binds every interface in the manifests, so a client there that
/// never finishes its headers must not hold a connection for ever (issue 15).
#[tokio::test]
async fn an_admin_client_that_never_finishes_its_headers_is_disconnected() {
    let (_api, _world, _proxy, admin) = setup_with(TOKEN, &["--header-read-timeout=1s"]).await;
    let addr = admin.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(
        "the slow admin connection to be closed",
        slow.read_to_end(&mut rest),
    )
    .await
    .ok();
    let resp = client::get(&format!("{admin}/healthz")).await;
    assert_eq!(resp.status, 200, "the admin listener still serves others");
}

/// `--max-connections` holds on the admin listener too, with the same clear 503.
#[tokio::test]
async fn admin_connections_beyond_max_connections_get_a_503_status() {
    let (_api, _world, _proxy, admin) = setup_with(TOKEN, &["--max-connections=1"]).await;
    let addr = admin.trim_start_matches("http://");
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 12];
    held.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut refusal = Vec::new();
    within("the refusal", second.read_to_end(&mut refusal))
        .await
        .unwrap();
    let refusal = String::from_utf8_lossy(&refusal);
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("--max-connections"), "{refusal}");
}
