//! Upstream HTTP/2 (`--upstream-http2`): requests are multiplexed over HTTP/2 where the
//! API server offers it, and never wait behind its concurrent-stream limit: when every
//! connection holds as many streams as the server allows, the proxy opens another. Where
//! the API server does not pick `h2` in ALPN, everything (upgrades too) goes over HTTP/1.1.

use crate::support;

use bytes::Bytes;
use http::{StatusCode, Version};
use serde_json::json;
use support::client::{self, Https};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, round_trip, sha256_hex, within};

const TOKEN: &str = "http2-sa-token-7d3e";
const PODS: &str = "/api/v1/namespaces/default/pods";
const LIMIT: u32 = 8;
const WATCHES: usize = 20;
const PORTFORWARD: &str = "/api/v1/namespaces/default/pods/p/portforward";
const SPDY: [(&str, &str); 2] = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")];

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

/// The proxy with `args` in front of a fake API server that offers only `http/1.1` in ALPN.
async fn setup_http1_only(args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(
        FakeApiOptions::new(pki.clone())
            .tokens(&[TOKEN])
            .http1_only(),
    )
    .await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, args).await;
    (api, world, proxy)
}

/// Every request the fake saw, as `(method, version)`.
fn versions(api: &FakeApi) -> Vec<(String, Version)> {
    api.requests()
        .into_iter()
        .map(|s| (s.method, s.version))
        .collect()
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
async fn with_upstream_http2_false_requests_stay_on_http1() {
    // HTTP/2 is the default (every other suite runs with it); this is the opt-out.
    let (api, _world, proxy) = setup(&["--upstream-http2=false"]).await;
    let resp = client::get(&proxy.url(&format!("{PODS}/pod-0"))).await;
    assert_eq!(resp.status, 200);
    assert_eq!(api.h2_connections_total(), 0);
    assert!(api.requests().iter().all(|r| r.version == Version::HTTP_11));
}

#[tokio::test]
async fn after_a_goaway_open_watches_go_on_and_new_requests_take_a_new_connection() {
    // An API server with --goaway-chance, or one that is stopping, sends GOAWAY: the
    // streams it already has go on; new ones must use another connection.
    let (api, _world, proxy) = setup(&["--upstream-http2=true"]).await;
    let watch_url = proxy.url(&format!("{PODS}?watch=1&resourceVersion=1"));
    let mut watch = support::open_watch(&api, &watch_url).await;
    let before = api.h2_connections_total();
    assert_eq!(before, 1, "the watch and nothing else");

    api.goaway();
    // No request is lost meanwhile, whether it reaches the old connection before its
    // GOAWAY or not; the pool stops using that connection once it sees the GOAWAY.
    let mut gets = 0;
    within("a GET over a connection opened after the GOAWAY", async {
        while api.h2_connections_total() == before {
            let resp = client::get(&proxy.url(&format!("{PODS}/pod-0"))).await;
            assert_eq!(resp.status, 200, "GET {gets}: {}", resp.text());
            gets += 1;
        }
    })
    .await;

    // The watch opened before the GOAWAY still gets events, on the old connection.
    api.send_watch_event("ADDED", "after-goaway");
    let event = within("the watch event after the GOAWAY", watch.next_line())
        .await
        .expect("the watch went on");
    assert!(event.contains("after-goaway"), "{event}");
    assert!(api.requests().iter().all(|r| r.version == Version::HTTP_2));
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

#[tokio::test]
async fn the_http1_only_fake_api_declines_h2() {
    // What the fallback tests below rely on: a client offering only `h2` is turned away,
    // one offering `http/1.1` is served over HTTP/1.1.
    let (api, _world, _proxy) = setup_http1_only(&[]).await;
    let ca = api.pki().ca_pem();
    let auth = format!("Bearer {TOKEN}");
    let url = format!("{}/echo", api.url());
    let h2 = within(
        "an h2-only client",
        Https::new_h2(&ca).get(&url, &[("authorization", &auth)]),
    )
    .await;
    assert!(h2.is_err(), "h2 was accepted: {:?}", h2.map(|r| r.version));
    let resp = within(
        "an HTTP/1.1 client",
        Https::new(&ca).get(&url, &[("authorization", &auth)]),
    )
    .await
    .expect("HTTP/1.1 request to the fake");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.version, Version::HTTP_11);
    assert_eq!(resp.json()["version"], "HTTP/1.1");
    assert_eq!(api.h2_connections_total(), 0);
}

#[tokio::test]
async fn when_the_server_declines_h2_gets_a_watch_and_a_post_go_over_http1() {
    let (api, _world, proxy) = setup_http1_only(&["--upstream-http2"]).await;
    let pod = proxy.url(&format!("{PODS}/pod-0"));

    // A burst first, while the proxy does not yet know the server declines h2: every one
    // of them must end up on HTTP/1.1, whichever of them dialled.
    let burst = (0..8).map(|_| client::try_send("GET", &pod, &[], Bytes::new()));
    let answers = within(
        "a first burst of 8 concurrent GETs",
        futures::future::join_all(burst),
    )
    .await;
    for (i, resp) in answers.into_iter().enumerate() {
        let resp = resp.unwrap_or_else(|e| panic!("burst GET {i}: {e}"));
        assert_eq!(resp.status, 200, "burst GET {i}: {}", resp.text());
        assert_eq!(resp.json()["metadata"]["name"], "pod-0");
    }

    // A watch, streamed: it sees the pod the POST below creates.
    let mut watch = support::open_watch(
        &api,
        &proxy.url(&format!("{PODS}?watch=1&resourceVersion=1")),
    )
    .await;

    let list = client::get(&proxy.url(PODS)).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["items"].as_array().map(Vec::len), Some(3));

    let body = serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "over-http1"},
        "spec": {"containers": [{"name": "main", "image": "registry.example/demo:1"}]},
    }))
    .unwrap();
    let created = client::send(
        "POST",
        &proxy.url(PODS),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["metadata"]["name"], "over-http1");
    let event = within("the ADDED event on the watch", watch.next_json())
        .await
        .expect("the watch ended early");
    assert_eq!(event["type"], "ADDED", "{event}");
    assert_eq!(event["object"]["metadata"]["name"], "over-http1", "{event}");

    let seen = api.requests();
    let post = seen
        .iter()
        .find(|s| s.method == "POST")
        .expect("the POST reached the API server");
    assert_eq!(post.body_len, body.len() as u64);
    assert_eq!(post.body_sha256, sha256_hex(&body));
    assert!(post.body_complete);
    assert!(
        post.header("host").is_some(),
        "HTTP/1.1 carries Host: {:?}",
        post.headers
    );
    let watched = seen
        .iter()
        .find(|s| s.query.as_deref().is_some_and(|q| q.contains("watch=1")))
        .expect("the watch reached the API server");
    assert_eq!(watched.version, Version::HTTP_11);
    // 8 GETs, the watch, the list and the POST: each exactly once, all over HTTP/1.1.
    assert_eq!(seen.len(), 11, "{:?}", versions(&api));
    assert!(
        seen.iter()
            .all(|s| s.version == Version::HTTP_11 && s.token.as_deref() == Some(TOKEN)),
        "{:?}",
        versions(&api)
    );
    assert_eq!(api.h2_connections_total(), 0);
    assert_eq!(api.open_watches(), 1, "the watch is still open");
}

#[tokio::test]
async fn when_the_server_declines_h2_an_upgrade_still_works() {
    let (api, _world, proxy) = setup_http1_only(&["--upstream-http2"]).await;
    // Once as the very first request, once after a GET has taught the proxy the server
    // speaks HTTP/1.1 only.
    for round in 0..2 {
        if round == 1 {
            let resp = client::get(&proxy.url(&format!("{PODS}/pod-1"))).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
        assert_eq!(
            up.status,
            StatusCode::SWITCHING_PROTOCOLS,
            "round {round}: {:?}",
            up.body
        );
        assert_eq!(
            up.headers.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"SPDY/3.1"[..])
        );
        let mut io = up.io.expect("upgraded stream");
        api.wait_open_upgrades(1).await;
        let msg: Vec<u8> = (0..70_000).map(|i| (i * 7 + round) as u8).collect();
        assert_eq!(round_trip(&mut io, &msg).await, msg, "round {round}");
        drop(io);
        api.wait_open_upgrades(0).await;
    }
    let upgrades: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|s| s.path == PORTFORWARD)
        .collect();
    assert_eq!(upgrades.len(), 2);
    for s in &upgrades {
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(s.token.as_deref(), Some(TOKEN));
        assert_eq!(s.header("upgrade"), Some("SPDY/3.1"));
    }
    assert!(
        api.requests().iter().all(|s| s.version == Version::HTTP_11),
        "{:?}",
        versions(&api)
    );
    assert_eq!(api.h2_connections_total(), 0);
}

/// Sizes of the chunks of a `Transfer-Encoding: chunked` HTTP/1.1 response.
fn chunk_sizes(response: &[u8]) -> Vec<usize> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut sizes = Vec::new();
    let mut at = head_end;
    loop {
        let line_end = at
            + response[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a chunk-size line");
        let size = usize::from_str_radix(std::str::from_utf8(&response[at..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return sizes;
        }
        sizes.push(size);
        at = line_end + 2 + size + 2;
    }
}

#[tokio::test]
async fn large_responses_come_in_frames_of_up_to_64_kib() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The fake's /bytes?chunked yields 64 KiB pieces; with HTTP/2's default 16 KiB frame
    // limit each would arrive (and be written to the client) as four.
    let (_api, _world, proxy) = setup(&["--upstream-http2=true"]).await;
    let n = 200_000;
    let mut s = tokio::net::TcpStream::connect(proxy.socket_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /bytes?n={n}&chunked=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("the response", s.read_to_end(&mut response))
        .await
        .unwrap();
    let sizes = chunk_sizes(&response);
    assert_eq!(sizes.iter().sum::<usize>(), n);
    assert_eq!(sizes.iter().max(), Some(&65_536), "{sizes:?}");
}
