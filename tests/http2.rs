//! Upstream HTTP/2 (`--upstream-http2`): requests are multiplexed over HTTP/2 where the
//! API server offers it, and never wait behind its concurrent-stream limit: when every
//! connection holds as many streams as the server allows, the proxy opens another.

mod support;

use bytes::Bytes;
use http::Version;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const TOKEN: &str = "http2-sa-token-7d3e";
const PODS: &str = "/api/v1/namespaces/default/pods";
const LIMIT: u32 = 8;
const WATCHES: usize = 20;

async fn setup(args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(
        FakeApiOptions::new(pki.clone())
            .tokens(&[TOKEN])
            .max_concurrent_streams(LIMIT),
    )
    .await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, args).await;
    (api, world, proxy)
}

#[tokio::test]
async fn no_request_waits_behind_the_servers_concurrent_stream_limit() {
    let (api, _world, proxy) = setup(&["--upstream-http2"]).await;
    let watch_url = proxy.url(&format!("{PODS}?watch=1&resourceVersion=1"));
    // Each watch holds one stream for as long as it runs: 20 of them need at least
    // three connections at 8 streams each. Any of them queued behind the limit would
    // never get its response head.
    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        let watch = client::get_stream(&watch_url, &[]).await;
        assert_eq!(watch.status, 200);
        watches.push(watch);
    }
    api.wait_open_watches(WATCHES).await;

    // GETs one after another, then a burst at once, while all 20 watches stay open.
    let pod = proxy.url(&format!("{PODS}/pod-0"));
    for i in 0..20 {
        let resp = within(
            &format!("GET {i} while {WATCHES} watches hold the streams"),
            client::try_send("GET", &pod, &[], Bytes::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {i}: {e}"));
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.text());
    }
    let burst = (0..24).map(|_| client::try_send("GET", &pod, &[], Bytes::new()));
    let answers = within(
        "a burst of 24 concurrent GETs while the watches are open",
        futures::future::join_all(burst),
    )
    .await;
    for (i, resp) in answers.into_iter().enumerate() {
        let resp = resp.unwrap_or_else(|e| panic!("burst GET {i}: {e}"));
        assert_eq!(resp.status, 200, "burst GET {i}: {}", resp.text());
    }
    assert_eq!(api.open_watches(), WATCHES, "every watch is still open");

    let h2 = api.h2_connections_total();
    assert!(
        h2 >= WATCHES.div_ceil(LIMIT as usize),
        "20 streams at 8 per connection need at least 3 HTTP/2 connections; the fake saw {h2}"
    );
    let requests = api.requests();
    assert!(
        requests.iter().all(|r| r.version == Version::HTTP_2),
        "every request went over HTTP/2: {:?}",
        requests.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    // Multiplexed: far fewer connections than the 64 requests sent.
    assert!(h2 <= 10, "{h2} HTTP/2 connections for 64 requests");
    drop(watches);
}

#[tokio::test]
async fn without_the_flag_requests_stay_on_http1() {
    // Explicitly off: the key suites are also run with KUBE_AMBASSADOR_UPSTREAM_HTTP2=true.
    let (api, _world, proxy) = setup(&["--upstream-http2=false"]).await;
    let resp = client::get(&proxy.url(&format!("{PODS}/pod-0"))).await;
    assert_eq!(resp.status, 200);
    assert_eq!(api.h2_connections_total(), 0);
    assert!(api.requests().iter().all(|r| r.version == Version::HTTP_11));
}

#[tokio::test]
async fn bodies_and_streamed_posts_go_over_http2() {
    let (api, _world, proxy) = setup(&["--upstream-http2"]).await;
    let body = Bytes::from(vec![b'x'; 300_000]);
    let resp = client::send("POST", &proxy.url(PODS), &[], body.clone()).await;
    assert!(resp.status.is_success() || resp.status.is_client_error());
    let seen = api.requests();
    let post = seen
        .iter()
        .find(|r| r.method == "POST")
        .expect("the POST reached the API server");
    assert_eq!(post.version, Version::HTTP_2);
    assert_eq!(post.body_len, body.len() as u64);
    assert!(
        post.header("host").is_none(),
        "HTTP/2 carries :authority, not Host"
    );
    assert!(post.authority.is_some());
}
