//! The proxy's own failures through the real binary: an API server that is down, that
//! accepts TCP but never speaks, or that answers garbage gets a Kubernetes `Status` JSON
//! (503, 504, 502) naming the API server and the cause, never the token; the API server's
//! own error responses (404, 401) pass through unchanged.

use crate::support;

use std::net::SocketAddr;

use fake_apiserver::status_json;
use http::StatusCode;
use serde_json::Value;
use support::client::{self, AbortOnDrop, Resp};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "errors-sa-token-4c1d";
const PODS: &str = "/api/v1/namespaces/default/pods";
const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

async fn setup() -> (FakeApi, World, Proxy) {
    setup_with(&[]).await
}

async fn setup_with(args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, args).await;
    (api, world, proxy)
}

/// A proxy configured in-cluster against `addr`, which is not a fake API server.
async fn proxy_towards(world: &World, addr: SocketAddr, extra_args: &[&str]) -> Proxy {
    let sa = format!("--service-account-dir={}", world.sa_dir().display());
    let port = addr.port().to_string();
    let mut args = vec![sa.as_str(), "--port=0"];
    args.extend_from_slice(extra_args);
    Proxy::start(
        &args,
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await
}

/// Checks that `resp` is one of the proxy's own `Status` failures and returns the body.
fn assert_status(resp: &Resp, code: u16, reason: &str) -> Value {
    assert_eq!(resp.status.as_u16(), code, "{}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let status = resp.json();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["code"], code, "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    assert!(
        !resp.text().contains(TOKEN),
        "the token is in the body: {}",
        resp.text()
    );
    status
}

fn message(status: &Value) -> &str {
    status["message"].as_str().expect("message is a string")
}

#[tokio::test]
async fn an_api_server_that_is_down_gets_a_503_status_naming_it_and_the_next_request_after_it_is_back_succeeds()
 {
    let (api, _world, proxy) = setup().await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    api.stop().await;
    let resp = client::get(&proxy.url(PODS)).await;
    let status = assert_status(&resp, 503, "ServiceUnavailable");
    let msg = message(&status);
    assert!(
        msg.contains(&format!("https://127.0.0.1:{}", api.port())),
        "{msg}"
    );
    assert!(msg.contains("connection refused"), "{msg}");
    // A second failure looks the same (no pooled state turns it into something else).
    let again = client::get(&proxy.url("/echo/x")).await;
    assert_status(&again, 503, "ServiceUnavailable");

    api.restart().await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "PodList");
}

#[tokio::test]
async fn an_api_server_that_accepts_tcp_but_never_speaks_gets_a_504_timeout_status() {
    // Accepts connections and holds them open without a byte of TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = AbortOnDrop(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    }));
    let pki = Pki::new();
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = proxy_towards(&world, addr, &["--connect-timeout=1s"]).await;

    let resp = client::get(&proxy.url(PODS)).await;
    let status = assert_status(&resp, 504, "Timeout");
    let msg = message(&status);
    assert!(msg.contains(&format!("https://{addr}")), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
}

#[tokio::test]
async fn an_api_server_that_answers_garbage_gets_a_502_status() {
    // A plain-HTTP "API server" that reads the request head, answers garbage and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = AbortOnDrop(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(b"garbage\r\n\r\n").await;
                let _ = tcp.shutdown().await;
            });
        }
    }));
    let server = format!("--server=http://{addr}");
    let proxy = Proxy::start(&[&server, "--port=0"], &[]).await;

    let resp = client::get(&proxy.url(PODS)).await;
    let status = assert_status(&resp, 502, "InternalError");
    let msg = message(&status);
    assert!(msg.contains(&format!("http://{addr}")), "{msg}");
    assert!(msg.contains("malformed"), "{msg}");
}

#[tokio::test]
async fn the_api_servers_own_404_and_401_pass_through_unchanged() {
    let (api, _world, proxy) = setup().await;

    let resp = client::get(&proxy.url("/no/such/resource")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        resp.text(),
        status_json(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None
        )
    );

    let resp = client::get(&proxy.url(&format!("{PODS}/no-such-pod"))).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.json(),
        serde_json::from_str::<Value>(&status_json(
            404,
            "NotFound",
            "pods \"no-such-pod\" not found",
            Some(serde_json::json!({"name": "no-such-pod", "kind": "pods"})),
        ))
        .unwrap()
    );

    // The API server stops accepting the token; the one on disk is no newer, so the 401
    // is the answer.
    api.set_tokens(&["a-different-token"]);
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(resp.text(), UNAUTHORIZED);
    let seen = api.wait_for_request(|s| !s.authorized).await;
    assert_eq!(seen.token.as_deref(), Some(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_right_after_the_api_server_closed_its_kept_alive_connections_is_answered() {
    closed_connections_then_get(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_right_after_closed_connections_is_answered_over_http_1_1() {
    closed_connections_then_get(&["--upstream-http2=false"]).await;
}

async fn closed_connections_then_get(args: &'static [&'static str]) {
    // The API server closes idle connections (a restart, an idle timeout, a GOAWAY): the
    // proxy may take such a connection from its pool in the instant before it notices the
    // close. A request without a body is then sent again on another connection, as Go's
    // transport (and so kubectl proxy) does, instead of failing with 502. (Without that,
    // some of these hundred requests almost always fail; with it, none ever does.)
    let runs = (0..4).map(|_| {
        tokio::spawn(async move {
            let (api, _world, proxy) = setup_with(args).await;
            let mut failures = Vec::new();
            for i in 0..25 {
                let resp = client::get(&proxy.url(PODS)).await;
                if resp.status != 200 {
                    failures.push(format!("request {i}: {} {}", resp.status, resp.text()));
                }
                // Not awaited on purpose: the next request races with the close.
                api.close_connections();
            }
            failures
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let failures = run.await.unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
