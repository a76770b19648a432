//! Hedged requests (`--upstream-hedge-after`): a short bodiless GET over HTTP/1.1 that has
//! no response headers after the delay is sent once more, and the first answer wins. A
//! frozen HTTP/1.1 connection (which nothing can ping) no longer holds such a request
//! until its client gives up; a write is never sent twice; a slow server is sent one
//! duplicate per request at most.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Version;
use support::relay::Relay;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, client, within};

const TOKEN: &str = "hedge-token-7d21";

fn free_port() -> u16 {
    support::free_port_from(28000)
}

/// The proxy in front of an HTTPS server at `addr` (the fake's CA is `pki`'s), its admin
/// listener on, with `extra` flags. Returns the admin address too.
async fn proxy_to(addr: SocketAddr, pki: &Pki, extra: &[&str]) -> (World, Proxy, String) {
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let admin = format!("127.0.0.1:{}", free_port());
    let server = format!("--server=https://127.0.0.1:{}", addr.port());
    let ca = format!("--certificate-authority={}", world.ca_path().display());
    let token = format!("--token={TOKEN}");
    let admin_flag = format!("--admin-address={admin}");
    let mut args = vec!["--port=0", &server, &ca, &token, &admin_flag];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args, &[]).await;
    (world, proxy, admin)
}

async fn direct(extra: &[&str]) -> (FakeApi, World, Proxy, String) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], api.port()));
    let (world, proxy, admin) = proxy_to(addr, &pki, extra).await;
    (api, world, proxy, admin)
}

/// `kube_ambassador_upstream_hedges_total` by result, from `/metrics`.
async fn hedges(admin: &str) -> [u64; 4] {
    let resp = client::get(&format!("http://{admin}/metrics")).await;
    assert_eq!(resp.status, 200);
    let text = resp.text();
    ["won", "lost", "failed", "capped"].map(|result| {
        let series = format!("kube_ambassador_upstream_hedges_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series:?} in\n{text}"))
    })
}

fn count(api: &FakeApi, method: &str, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// Waits until the fake has logged `n` requests `method path` (past or future).
async fn wait_count(api: &FakeApi, method: &str, path: &str, n: usize) {
    within(&format!("{n} × {method} {path} at the fake"), async {
        while count(api, method, path) < n {
            api.wait_requests(api.requests().len() + 1).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_get_in_flight_on_a_frozen_http1_connection_succeeds_and_a_post_is_never_sent_twice() {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let relay = Relay::start(api.port()).await;
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], relay.port));
    // HTTP/1.1 only: nothing can ping these connections. The hedge delay is the default.
    let (_world, proxy, admin) = proxy_to(relay_addr, &pki, &["--upstream-http2=false"]).await;

    // A write and a read, both in flight (held at the fake) when every connection freezes.
    let post_url = proxy.url("/hold/write");
    let post =
        tokio::spawn(async move { client::try_send("POST", &post_url, &[], "{\"a\":1}").await });
    api.wait_held("write").await;
    let get_url = proxy.url("/hold/read");
    let get = tokio::spawn(async move { client::try_send("GET", &get_url, &[], "").await });
    api.wait_held("read").await;
    relay.freeze();
    // Both answered now, but no byte of either answer gets through the relay.
    api.release("read");
    api.release("write");

    let resp = tokio::time::timeout(Duration::from_secs(15), get)
        .await
        .expect("the GET answered within 15 s, not at its client's timeout")
        .expect("the GET's task")
        .expect("the GET");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["held"], "read");
    assert_eq!(count(&api, "GET", "/hold/read"), 2, "sent once more, once");
    // One more round trip: the POST, sent before the GET, would have been sent again by
    // now too. (It may meet a frozen connection itself, the readiness probe's idle one,
    // and be hedged in turn.)
    assert_eq!(client::get(&proxy.url("/version")).await.status, 200);
    assert_eq!(
        count(&api, "POST", "/hold/write"),
        1,
        "a write is never sent twice"
    );
    assert!(
        !post.is_finished(),
        "the POST still waits: it may have been processed"
    );
    let [won, lost, failed, capped] = hedges(&admin).await;
    assert!(won >= 1, "the GET's hedge won");
    assert_eq!((lost, failed, capped), (0, 0, 0));
    post.abort();
}

#[tokio::test]
async fn a_slow_server_is_sent_a_get_twice_at_most_and_the_client_gets_one_answer() {
    // The default policy: short requests over HTTP/1.1, the hedge over HTTP/2.
    let (api, _world, proxy, admin) = direct(&["--upstream-hedge-after=200ms"]).await;
    let resp = client::get(&proxy.url("/slow?ms=1500")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["slept_ms"], 1500);
    wait_count(&api, "GET", "/slow", 2).await;
    let seen = api.requests();
    let slow: Vec<_> = seen.iter().filter(|r| r.path == "/slow").collect();
    assert_eq!(slow.len(), 2, "the request and one hedge: {slow:?}");
    assert_eq!(slow[0].version, Version::HTTP_11);
    assert_eq!(
        slow[1].version,
        Version::HTTP_2,
        "the hedge went over the PING-checked HTTP/2 pool"
    );
    let [won, lost, failed, capped] = hedges(&admin).await;
    assert_eq!((won + lost, failed, capped), (1, 0, 0));
    // A second slow GET is hedged once more: one hedge per request, not per process.
    let resp = client::get(&proxy.url("/slow?ms=1000")).await;
    assert_eq!(resp.status, 200);
    wait_count(&api, "GET", "/slow", 4).await;
    assert_eq!(count(&api, "GET", "/slow"), 4);
}

#[tokio::test]
async fn hedge_after_zero_sends_nothing_twice() {
    let (api, _world, proxy, admin) = direct(&["--upstream-hedge-after=0"]).await;
    let resp = client::get(&proxy.url("/slow?ms=500")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // After the answer: one more request through, so that a hedge sent at once would
    // have been logged before it.
    assert_eq!(client::get(&proxy.url("/version")).await.status, 200);
    assert_eq!(count(&api, "GET", "/slow"), 1);
    assert_eq!(hedges(&admin).await, [0, 0, 0, 0]);
}
