//! Upgrades through the real binary: SPDY/3.1 and WebSocket port-forward tunnels get `101`
//! and carry bytes both ways; exec and attach are refused by the default filter and never
//! reach the API server; an upstream refusal (403, 401) is relayed as is; closing the
//! client's side closes the tunnel to the API server.

use crate::support;

use fake_apiserver::status_json;
use http::StatusCode;
use support::client::{self, Upgrade};
use support::{FakeApi, Proxy, World, round_trip, sha256_hex, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "upgrade-sa-token";
const PORTFORWARD: &str = "/api/v1/namespaces/default/pods/p/portforward";
const EXEC: &str = "/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true";
const ATTACH: &str = "/api/v1/namespaces/default/pods/p/attach?stdin=true";
const SPDY: [(&str, &str); 2] = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")];
/// The key and accept value of RFC 6455 §1.3's example handshake.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    support::in_cluster_setup(TOKEN, extra_args).await
}

fn websocket_headers() -> [(&'static str, &'static str); 5] {
    [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", WS_KEY),
        ("sec-websocket-protocol", "v4.channel.k8s.io"),
    ]
}

/// Several rounds of different sizes, then a large transfer written and read concurrently
/// (so that neither side's buffers can fill and stall it).
async fn echo_both_ways(up: Upgrade) {
    let mut io = up.io.expect("upgraded stream");
    for (round, size) in [1usize, 7, 300, 4096, 65_537].into_iter().enumerate() {
        let msg: Vec<u8> = (0..size).map(|i| (i * 31 + round) as u8).collect();
        assert_eq!(round_trip(&mut io, &msg).await, msg, "round {round}");
    }
    let big: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(io);
    let expected = sha256_hex(&big);
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.expect("write the large payload");
        w
    });
    let mut back = vec![0u8; 2 * 1024 * 1024];
    within("the large payload to come back", r.read_exact(&mut back))
        .await
        .expect("read the large payload");
    writer.await.unwrap();
    assert_eq!(sha256_hex(&back), expected);
}

#[tokio::test]
async fn a_spdy_port_forward_upgrade_gets_101_and_echoes_bytes_both_ways() {
    let (api, _world, proxy) = setup(&[]).await;
    let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", up.body);
    assert_eq!(
        up.headers.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"SPDY/3.1"[..])
    );
    let seen = api
        .wait_for_request(|s| s.path.ends_with("/portforward"))
        .await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    assert_eq!(seen.header("upgrade"), Some("SPDY/3.1"));
    assert!(
        seen.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{:?}",
        seen.headers
    );
    api.wait_open_upgrades(1).await;
    echo_both_ways(up).await;
}

#[tokio::test]
async fn a_websocket_port_forward_upgrade_gets_101_with_the_accept_key_and_echoes_bytes() {
    let (api, _world, proxy) = setup(&[]).await;
    let up = client::upgrade(&proxy.url(PORTFORWARD), &websocket_headers()).await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", up.body);
    let header = |n: &str| {
        up.headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    assert_eq!(header("sec-websocket-accept").as_deref(), Some(WS_ACCEPT));
    assert_eq!(
        header("sec-websocket-protocol").as_deref(),
        Some("v4.channel.k8s.io")
    );
    assert!(
        header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{:?}",
        up.headers
    );
    let seen = api
        .wait_for_request(|s| s.path.ends_with("/portforward"))
        .await;
    assert_eq!(seen.header("sec-websocket-key"), Some(WS_KEY));
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    echo_both_ways(up).await;
}

#[tokio::test]
async fn exec_and_attach_upgrades_are_refused_by_the_default_filter_and_never_reach_the_api_server()
{
    let (api, _world, proxy) = setup(&[]).await;
    for path in [EXEC, ATTACH] {
        for headers in [&SPDY[..], &websocket_headers()[..]] {
            let up = client::upgrade(&proxy.url(path), headers).await;
            assert_eq!(up.status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(&up.body[..], b"Forbidden\n", "{path}");
            assert!(up.io.is_none());
        }
        // The same paths without an upgrade are refused too.
        let resp = client::send("POST", &proxy.url(path), &[], "").await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{path}");
    }
    // A request the filter lets through, as a marker: nothing arrived before it.
    assert_eq!(client::get(&proxy.url("/version")).await.status, 200);
    let paths: Vec<String> = api.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/version"]);
    assert_eq!(api.open_upgrades(), 0);
}

#[tokio::test]
async fn with_empty_reject_paths_an_exec_upgrade_works_and_carries_the_service_account_token() {
    let (api, _world, proxy) = setup(&["--reject-paths="]).await;
    let up = client::upgrade(&proxy.url(EXEC), &SPDY).await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", up.body);
    let seen = api.wait_for_request(|s| s.path.ends_with("/exec")).await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    assert!(seen.authorized);
    assert_eq!(seen.query.as_deref(), Some("command=sh&stdin=true"));
    let mut io = up.io.expect("upgraded stream");
    assert_eq!(round_trip(&mut io, b"echo hello\n").await, b"echo hello\n");
}

#[tokio::test]
async fn an_upstream_403_to_an_upgrade_is_relayed_as_is() {
    let (api, _world, proxy) = setup(&[]).await;
    let up = client::upgrade(&proxy.url("/upgrade-refused"), &SPDY).await;
    assert_eq!(up.status, StatusCode::FORBIDDEN);
    assert!(up.io.is_none());
    assert_eq!(
        up.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        String::from_utf8_lossy(&up.body),
        status_json(403, "Forbidden", "upgrade refused by the fake API", None)
    );
    // It came from the API server, with the token, not from the proxy's filter.
    let seen = api.wait_for_request(|s| s.path == "/upgrade-refused").await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
}

#[tokio::test]
async fn closing_the_client_side_closes_the_tunnel_to_the_api_server() {
    let (api, _world, proxy) = setup(&[]).await;
    let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
    let mut io = up.io.expect("upgraded stream");
    assert_eq!(round_trip(&mut io, b"ping").await, b"ping");
    api.wait_open_upgrades(1).await;
    drop(io);
    api.wait_open_upgrades(0).await;

    // A half-close travels through too: the API server's echo ends and the client reads
    // the end of the stream after the last bytes.
    let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
    let mut io = up.io.expect("upgraded stream");
    io.write_all(b"last words").await.unwrap();
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the tunnel to end", io.read_to_end(&mut rest))
        .await
        .expect("read to the end of the tunnel");
    assert_eq!(rest, b"last words");
    api.wait_open_upgrades(0).await;
}

#[tokio::test]
async fn an_upgrade_with_a_token_the_api_server_refuses_gets_its_401_relayed() {
    let (api, _world, proxy) = setup(&[]).await;
    api.set_tokens(&["some-other-token"]);
    let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
    assert_eq!(up.status, StatusCode::UNAUTHORIZED);
    assert!(up.io.is_none());
    assert_eq!(String::from_utf8_lossy(&up.body), UNAUTHORIZED);
    let seen = api
        .wait_for_request(|s| s.path.ends_with("/portforward"))
        .await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
    assert!(!seen.authorized);
    assert_eq!(api.open_upgrades(), 0);
    // Nothing lingers: a later upgrade with a good token works.
    api.set_tokens(&[TOKEN]);
    let up = client::upgrade(&proxy.url(PORTFORWARD), &SPDY).await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
}
