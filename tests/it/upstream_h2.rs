//! The HTTP/2 upstream against a server that frames like Go's `net/http` (END_STREAM in a
//! DATA frame of its own, GOAWAY after a response, REFUSED_STREAM): no request fails
//! because of framing, nothing a client does makes the proxy GOAWAY its own connection,
//! what was refused unprocessed is sent again, a dead connection is found in seconds, and
//! the protocol is chosen per request (`--upstream-http2=auto`).

use crate::support;

use support::relay::Relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Version;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, client, load, within};
use tokio::net::TcpListener;

const TOKEN: &str = "upstream-h2-token-51c0";
const PODS: &str = "/api/v1/namespaces/default/pods";
/// Requests of each kind driven through one upstream connection: past h2's 1,024
/// locally-reset streams, where a stream reset per response used to end in GOAWAY.
const MANY: usize = 5_000;

async fn setup(opts: FakeApiOptions, args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = opts.pki.clone();
    let api = FakeApi::start(opts.tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, args).await;
    (api, world, proxy)
}

#[tokio::test]
async fn lists_whose_end_stream_comes_in_a_frame_of_its_own_never_fail_nor_reset() {
    let (api, _world, proxy) = setup(
        FakeApiOptions::new(Pki::new()).pods(20),
        &["--upstream-http2=true"],
    )
    .await;
    let failed = load::get_many(&proxy.url(PODS), MANY, |resp| {
        resp.status == 200 && resp.json()["items"].as_array().map(Vec::len) == Some(20)
    })
    .await;
    assert_eq!(failed, 0, "LISTs failed");
    assert_eq!(
        api.h2_connections_total(),
        1,
        "one upstream connection throughout"
    );
    assert_eq!(
        api.abandoned_responses(),
        0,
        "a complete response was reset instead of read to END_STREAM"
    );
    load::assert_no_reset_limit(&proxy);
}

#[tokio::test]
async fn clients_leaving_mid_response_never_make_the_proxy_goaway_its_connection() {
    let (api, _world, proxy) =
        setup(FakeApiOptions::new(Pki::new()), &["--upstream-http2=true"]).await;
    // A watch from resourceVersion 0 starts with an ADDED event per pod and then stays
    // open: each client reads the first event and leaves, mid-response.
    let url = proxy.url(&format!("{PODS}?watch=1&resourceVersion=0"));
    let failed = load::watch_and_leave_many(&url, MANY).await;
    assert_eq!(failed, 0, "watches failed");
    within(
        "every abandoned watch to end upstream",
        api.wait_open_watches(0),
    )
    .await;
    let resp = client::get(&proxy.url(&format!("{PODS}/pod-0"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        api.h2_connections_total(),
        1,
        "the same connection throughout"
    );
    load::assert_no_reset_limit(&proxy);
}

#[tokio::test]
async fn a_goaway_after_every_fiftieth_response_fails_no_request() {
    let (api, _world, proxy) = setup(
        FakeApiOptions::new(Pki::new()).goaway_every(50),
        &["--upstream-http2=true"],
    )
    .await;
    let url = proxy.url(&format!("{PODS}/pod-0"));
    let failed = load::get_many(&url, 2_000, |resp| resp.status == 200).await;
    assert_eq!(failed, 0, "requests failed across GOAWAYs");
    assert!(api.goaways_sent() >= 10, "{}", api.goaways_sent());
    assert!(api.h2_connections_total() > 1);
}

#[tokio::test]
async fn by_default_short_requests_take_http1_and_watches_http2() {
    let (api, _world, proxy) = setup(FakeApiOptions::new(Pki::new()), &[]).await;
    let resp = client::get(&proxy.url(&format!("{PODS}/pod-0"))).await;
    assert_eq!(resp.status, 200);
    let _watch = support::open_watch(
        &api,
        &proxy.url(&format!("{PODS}?watch=1&resourceVersion=5")),
    )
    .await;
    let seen = api.requests();
    let get = seen.iter().find(|r| r.query.is_none()).expect("the GET");
    let watch = seen.iter().find(|r| r.query.is_some()).expect("the watch");
    assert_eq!(get.version, Version::HTTP_11);
    assert_eq!(watch.version, Version::HTTP_2);
}

// ---- a minimal HTTP/2 server that refuses streams, for the retry rules ----

/// Answers every stream 200 with the method's name followed by the request body it read,
/// but resets the first `refuse` streams with REFUSED_STREAM (RFC 9113 §8.7: "not
/// processed") without reading them. Counts the streams it saw.
struct Refuser {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
}

impl Refuser {
    async fn start(pki: &Pki, refuse: usize) -> Refuser {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(pki.server_cert_chain(), pki.server_key())
        .expect("cert");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        if n < refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        // Answered from a task of its own: the body arrives through the
                        // connection, which this loop must keep polling.
                        tokio::spawn(async move {
                            let (parts, mut body) = req.into_parts();
                            let mut answer = parts.method.to_string().into_bytes();
                            while let Some(Ok(data)) = body.data().await {
                                let _ = body.flow_control().release_capacity(data.len());
                                answer.extend_from_slice(&data);
                            }
                            let resp = http::Response::builder().status(200).body(()).unwrap();
                            if let Ok(mut out) = respond.send_response(resp, false) {
                                let _ = out.send_data(Bytes::from(answer), true);
                            }
                        });
                    }
                });
            }
        });
        Refuser { addr, seen }
    }
}

/// The proxy in front of an HTTPS server at `addr` whose CA is `pki`'s, every request
/// over HTTP/2, with `extra` flags.
async fn proxy_to(addr: SocketAddr, pki: &Pki, extra: &[&str]) -> (World, Proxy) {
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let server = format!("--server=https://127.0.0.1:{}", addr.port());
    let ca = format!("--certificate-authority={}", world.ca_path().display());
    let token = format!("--token={TOKEN}");
    let mut args = vec!["--port=0", &server, &ca, &token, "--upstream-http2=true"];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args, &[]).await;
    (world, proxy)
}

async fn refuser_proxy(refuse: usize) -> (Refuser, World, Proxy) {
    let pki = Pki::new();
    let refuser = Refuser::start(&pki, refuse).await;
    let (world, proxy) = proxy_to(refuser.addr, &pki, &[]).await;
    (refuser, world, proxy)
}

#[tokio::test]
async fn a_refused_bodiless_request_is_sent_again_whatever_its_method() {
    let (refuser, _world, proxy) = refuser_proxy(1).await;
    let resp = client::send("DELETE", &proxy.url(&format!("{PODS}/pod-0")), &[], "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "DELETE");
    assert_eq!(
        refuser.seen.load(Ordering::SeqCst),
        2,
        "refused once, then sent again"
    );
}

/// The bound on a kept request body (`h2pool/stream.rs`, `KEPT_BODY_LIMIT`).
const KEPT_BODY_LIMIT: usize = 64 * 1024;

/// `n` bytes of a pattern that shows any byte lost, doubled or moved.
fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_refused_request_with_a_small_body_is_sent_again_with_the_same_bytes() {
    for (len, what) in [(14, "one frame"), (KEPT_BODY_LIMIT, "exactly the bound")] {
        let (refuser, _world, proxy) = refuser_proxy(1).await;
        let body = body_of(len);
        let resp = client::send("POST", &proxy.url(PODS), &[], body.clone()).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        let mut want = b"POST".to_vec();
        want.extend_from_slice(&body);
        assert!(
            resp.body[..] == want[..],
            "{what}: the second attempt got other bytes"
        );
        assert_eq!(
            refuser.seen.load(Ordering::SeqCst),
            2,
            "{what}: refused once, then sent again"
        );
    }
}

#[tokio::test]
async fn a_refused_streamed_body_without_a_length_is_sent_again_whole() {
    let (refuser, _world, proxy) = refuser_proxy(1).await;
    // Chunked, in three parts: no Content-Length, so the copy is kept as it streams.
    let req = "PUT /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: localhost\r\n\
               Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
               5\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = within(
        "the answer",
        client::raw_until_close(proxy.socket_addr(), req.as_bytes()),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("PUThello, world"), "{answer}");
    assert_eq!(refuser.seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_request_with_a_body_past_the_bound_is_not_sent_again() {
    let (refuser, _world, proxy) = refuser_proxy(1).await;
    let resp = client::send("POST", &proxy.url(PODS), &[], body_of(KEPT_BODY_LIMIT + 1)).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "Status");
    assert_eq!(
        refuser.seen.load(Ordering::SeqCst),
        1,
        "a body past the bound is never kept, so never sent twice"
    );
}

#[tokio::test]
async fn a_frozen_connection_is_found_dead_and_the_request_goes_to_a_fresh_one() {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let relay = Relay::start(api.port()).await;
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], relay.port));
    let (_world, proxy) = proxy_to(relay_addr, &pki, &["--upstream-ping-timeout=2s"]).await;
    let url = proxy.url(&format!("{PODS}/pod-0"));
    assert_eq!(client::get(&url).await.status, 200);
    assert_eq!(api.h2_connections_total(), 1);
    relay.freeze();
    // Waits for its headers, has the silent connection pinged, gets no PONG, and is sent
    // again on a new connection: well within the wait bound, not the 45 s of a
    // 30 s + 15 s keep-alive.
    let resp = client::get(&url).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(api.h2_connections_total(), 2, "a fresh connection");
    proxy.wait_stderr("did not answer an HTTP/2 PING").await;
}

#[tokio::test]
async fn a_request_body_that_fails_resets_the_stream_and_gets_a_502() {
    let (api, _world, proxy) =
        setup(FakeApiOptions::new(Pki::new()), &["--upstream-http2=true"]).await;
    // A chunk size that is not hex: the client's body fails after 5 bytes.
    let req = "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\nZZ\r\n";
    let answer = within(
        "the answer",
        client::raw_until_close(proxy.socket_addr(), req.as_bytes()),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("request body"), "{answer}");
    // The upstream stream ended (reset), not left open: the fake saw 5 bytes and a
    // body that did not complete.
    api.wait_for_request(|r| r.method == "POST" && r.body_len == 5 && !r.body_complete)
        .await;
}
