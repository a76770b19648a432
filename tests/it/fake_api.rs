//! Self-tests of the test-support library: the fake API server, the PKI and the
//! service-account world behave as the proxy's integration tests assume.

use crate::support;

use std::fs;

use bytes::Bytes;
use fake_apiserver::{pattern_bytes, websocket_accept};
use futures::StreamExt;
use http::{StatusCode, Version};
use http_body_util::StreamBody;
use hyper::body::Frame;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use support::client::{self, Https};
use support::{FakeApi, FakeApiOptions, Pki, World, sha256_hex, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

async fn api_with(tokens: &[&str]) -> FakeApi {
    FakeApi::start(FakeApiOptions::default().tokens(tokens)).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn tokens_are_checked_per_request_and_can_be_rotated() {
    let api = api_with(&["t1"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let pods = format!("{}/api/v1/namespaces/default/pods", api.url());
    let (b1, b2) = (bearer("t1"), bearer("t2"));

    // One connection across the rotation: tokens are checked per request, not per connection.
    let mut conn = https.connect(&api.url()).await.unwrap();
    let path = "/api/v1/namespaces/default/pods";
    let r = conn
        .send("GET", path, &[("authorization", &b1)], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let list = r.json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(list["items"][0]["metadata"]["name"], "pod-0");

    let r = https.get(&pods, &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.text(), UNAUTHORIZED);
    let r = https.get(&pods, &[("authorization", &b2)]).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    api.set_tokens(&["t2"]);
    let r = conn
        .send("GET", path, &[("authorization", &b2)], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = conn
        .send("GET", path, &[("authorization", &b1)], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Public paths need no token.
    let r = https
        .get(&format!("{}/public/echo/x", api.url()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let log = api.requests();
    let tokens: Vec<Option<&str>> = log.iter().map(|s| s.token.as_deref()).collect();
    assert_eq!(
        tokens,
        [Some("t1"), None, Some("t2"), Some("t2"), Some("t1"), None]
    );
    let authorized: Vec<bool> = log.iter().map(|s| s.authorized).collect();
    assert_eq!(authorized, [true, false, false, true, false, true]);
}

#[tokio::test]
async fn discovery_and_pod_endpoints() {
    let api = api_with(&["t"]).await;
    let https = Https::new_h2(&api.pki().ca_pem());
    let auth = bearer("t");
    let get = |p: &str| {
        let url = format!("{}{p}", api.url());
        let https = https.clone();
        let auth = auth.clone();
        async move { https.get(&url, &[("authorization", &auth)]).await.unwrap() }
    };

    let r = get("/api").await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(
        r.json()["serverAddressByClientCIDRs"][0]["serverAddress"],
        format!("127.0.0.1:{}", api.port())
    );
    assert_eq!(get("/version").await.json()["gitVersion"], "v1.32.0");
    assert_eq!(get("/apis").await.json()["kind"], "APIGroupList");
    assert_eq!(get("/api/v1").await.json()["resources"][0]["name"], "pods");
    assert_eq!(
        get("/api/v1/pods?limit=2").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let r = get("/api/v1/namespaces/default/pods/pod-1").await;
    assert_eq!(r.json()["metadata"]["name"], "pod-1");
    let r = get("/api/v1/namespaces/default/pods/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["reason"], "NotFound");
    let r = get("/no/such/thing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["reason"], "NotFound");
    let r = get("/redirect").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.invalid/elsewhere")
    );
}

#[tokio::test]
async fn watch_events_arrive_one_by_one_and_close_is_tracked() {
    let api = api_with(&["t"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let auth = bearer("t");

    // Without a resourceVersion the existing pods come first, as synthetic ADDED events.
    let url = format!("{}/api/v1/namespaces/default/pods?watch=1", api.url());
    let mut w = https
        .send_stream(
            "GET",
            &url,
            &[("authorization", &auth)],
            http_body_util::Empty::<Bytes>::new(),
        )
        .await
        .unwrap();
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(w.headers["transfer-encoding"], "chunked");
    for i in 0..3 {
        let ev = w.next_json().await.unwrap();
        assert_eq!(ev["type"], "ADDED");
        assert_eq!(ev["object"]["metadata"]["name"], format!("pod-{i}"));
    }
    api.wait_open_watches(1).await;
    drop(w);
    api.wait_open_watches(0).await;

    // From a resourceVersion: only new events, each its own chunk.
    let url = format!(
        "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion=1003&allowWatchBookmarks=true",
        api.url()
    );
    let mut w = https
        .send_stream(
            "GET",
            &url,
            &[("authorization", &auth)],
            http_body_util::Empty::<Bytes>::new(),
        )
        .await
        .unwrap();
    api.wait_open_watches(1).await;
    for (ty, name) in [
        ("ADDED", "pod-x"),
        ("MODIFIED", "pod-x"),
        ("DELETED", "pod-0"),
    ] {
        api.send_watch_event(ty, name);
        let chunk = within("a watch chunk", w.next_chunk()).await.unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        let ev: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ev["type"], ty);
        assert_eq!(ev["object"]["metadata"]["name"], name);
    }
    // Other namespaces are filtered out; the store followed the events.
    api.send_watch_event_in("other", "ADDED", "elsewhere");
    api.send_watch_event("ADDED", "pod-y");
    assert_eq!(
        w.next_json().await.unwrap()["object"]["metadata"]["name"],
        "pod-y"
    );
    assert_eq!(
        api.pod_names("default"),
        ["pod-1", "pod-2", "pod-x", "pod-y"]
    );

    // The server ending the watch ends the body cleanly.
    api.end_watches();
    assert!(w.next_chunk().await.is_none());
    assert!(w.error.is_none());
    api.wait_open_watches(0).await;
}

#[tokio::test]
async fn closing_connections_ends_http2_watches() {
    let api = api_with(&["t"]).await;
    let https = Https::new_h2(&api.pki().ca_pem());
    let url = format!("{}/api/v1/pods?watch=1&resourceVersion=5", api.url());
    let mut w = https
        .send_stream(
            "GET",
            &url,
            &[("authorization", &bearer("t"))],
            http_body_util::Empty::<Bytes>::new(),
        )
        .await
        .unwrap();
    assert_eq!(w.version, Version::HTTP_2);
    api.wait_open_watches(1).await;
    assert_eq!(api.open_connections(), 1);
    api.close_connections();
    api.wait_open_watches(0).await;
    api.wait_open_connections(0).await;
    assert!(w.next_chunk().await.is_none());
}

#[tokio::test]
async fn echo_reports_what_arrived() {
    let api = api_with(&["t"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let body = Bytes::from_static(b"hello, echo");
    let target = "/echo/a%2Fb//../c?x=1&y=%20&z";
    let r = https
        .send(
            "PATCH",
            &format!("{}{target}", api.url()),
            &[
                ("authorization", "Bearer t"),
                ("X-Custom", "one"),
                ("x-custom", "two"),
            ],
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let e = r.json();
    assert_eq!(e["method"], "PATCH");
    assert_eq!(e["uri"], target);
    assert_eq!(e["version"], "HTTP/1.1");
    assert_eq!(e["token"], "t");
    assert_eq!(e["body_len"], body.len());
    assert_eq!(e["body_sha256"], sha256_hex(&body));
    let headers = e["headers"].as_array().unwrap();
    let custom: Vec<&Value> = headers.iter().filter(|h| h[0] == "x-custom").collect();
    assert_eq!(
        custom,
        [&json!(["x-custom", "one"]), &json!(["x-custom", "two"])]
    );

    let seen = api.wait_for_request(|s| s.path.starts_with("/echo/")).await;
    assert_eq!(seen.uri, target);
    assert_eq!(seen.header_all("x-custom"), ["one", "two"]);
    assert_eq!(seen.body_sha256, sha256_hex(&body));
}

#[tokio::test]
async fn streaming_endpoints() {
    let api = api_with(&["t"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let auth = bearer("t");

    let r = https
        .get(
            &format!("{}/bytes?n=200000", api.url()),
            &[("authorization", &auth)],
        )
        .await
        .unwrap();
    assert_eq!(r.body.len(), 200_000);
    assert_eq!(r.body.as_ref(), pattern_bytes(200_000).as_slice());

    // 4 MiB through /stream-echo in 64 KiB frames.
    let data = Bytes::from(pattern_bytes(4 << 20));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let resp = https
        .send_stream(
            "POST",
            &format!("{}/stream-echo", api.url()),
            &[("authorization", &auth)],
            StreamBody::new(futures::stream::iter(frames)),
        )
        .await
        .unwrap();
    let back = resp.collect().await;
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    let seen = api
        .wait_for_request(|s| s.path == "/stream-echo" && s.body_complete)
        .await;
    assert_eq!(seen.body_len, data.len() as u64);
    assert_eq!(seen.body_sha256, sha256_hex(&data));

    // /hold answers only once released.
    let url = format!("{}/hold/a", api.url());
    let held = tokio::spawn({
        let https = https.clone();
        let auth = auth.clone();
        async move { https.get(&url, &[("authorization", &auth)]).await.unwrap() }
    });
    api.wait_held("a").await;
    assert!(!held.is_finished());
    api.release("a");
    assert_eq!(held.await.unwrap().json()["held"], "a");
}

#[tokio::test]
async fn new_pki_and_closed_connections_break_clients_of_the_old_ca() {
    let api = api_with(&["t"]).await;
    let old = api.pki();
    let old_client = Https::new(&old.ca_pem());
    let mut conn = old_client.connect(&api.url()).await.unwrap();
    let r = conn
        .send("GET", "/api", &[("authorization", "Bearer t")], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let new = Pki::new();
    assert!(!new.same_ca(&old));
    api.set_pki(new.clone());
    api.close_connections();
    conn.closed().await;
    api.wait_open_connections(0).await;

    let err = old_client
        .get(&format!("{}/api", api.url()), &[])
        .await
        .expect_err("old CA must not trust the new certificate");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let r = Https::new(&new.ca_pem())
        .get(
            &format!("{}/api", api.url()),
            &[("authorization", "Bearer t")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port() {
    let api = api_with(&["t"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let url = format!("{}/version", api.url());
    let port = api.port();
    assert!(
        https
            .get(&url, &[("authorization", "Bearer t")])
            .await
            .is_ok()
    );
    api.stop().await;
    assert!(https.get(&url, &[]).await.is_err());
    api.restart().await;
    assert_eq!(api.port(), port);
    let r = https
        .get(&url, &[("authorization", "Bearer t")])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn client_certificates_authenticate_when_required() {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).require_client_cert(true)).await;
    let url = format!("{}/echo/me", api.url());

    assert!(Https::new(&pki.ca_pem()).get(&url, &[]).await.is_err());

    let (cert, key) = pki.client_cert("alice");
    let r = Https::with_client_cert(&pki.ca_pem(), &cert, &key)
        .get(&url, &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["client_cn"], "alice");

    // A certificate from another CA is refused at the handshake.
    let (cert, key) = Pki::new().client_cert("mallory");
    assert!(
        Https::with_client_cert(&pki.ca_pem(), &cert, &key)
            .get(&url, &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn upgrades_echo_bytes() {
    assert_eq!(
        websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let api = api_with(&["t"]).await;
    let https = Https::new(&api.pki().ca_pem());
    let ws = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        (
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io",
        ),
    ];

    let mut conn = https.connect(&api.url()).await.unwrap();
    let mut headers = ws.to_vec();
    headers.push(("authorization", "Bearer t"));
    let up = conn
        .upgrade(
            "/api/v1/namespaces/default/pods/pod-0/exec?command=sh",
            &headers,
        )
        .await;
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        up.headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(up.headers["sec-websocket-protocol"], "v5.channel.k8s.io");
    let mut io = up.io.unwrap();
    api.wait_open_upgrades(1).await;
    for msg in [&b"hello"[..], b"\x00\x01binary\xff"] {
        io.write_all(msg).await.unwrap();
        let mut back = vec![0; msg.len()];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(io);
    api.wait_open_upgrades(0).await;

    let mut conn = https.connect(&api.url()).await.unwrap();
    let up = conn.upgrade("/upgrade/x", &ws).await;
    assert_eq!(up.status, StatusCode::UNAUTHORIZED);
    assert_eq!(std::str::from_utf8(&up.body).unwrap(), UNAUTHORIZED);

    let mut conn = https.connect(&api.url()).await.unwrap();
    let up = conn
        .upgrade(
            "/upgrade-refused",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "SPDY/3.1"),
                ("authorization", "Bearer t"),
            ],
        )
        .await;
    assert_eq!(up.status, StatusCode::FORBIDDEN);
    let status: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 403);
}

#[test]
fn world_rotation_swaps_data_atomically() {
    let world = World::with_sa("token-1", "CA-1", "ns1");
    let sa = world.sa_dir();
    assert_eq!(fs::read_to_string(world.token_path()).unwrap(), "token-1");
    assert_eq!(fs::read_to_string(world.namespace_path()).unwrap(), "ns1");
    assert_eq!(
        fs::read_link(sa.join("token")).unwrap().to_str(),
        Some("..data/token")
    );
    let first = world.data_target();
    assert_eq!(world.timestamp_dirs(), std::slice::from_ref(&first));
    assert!(first.starts_with("..2026_11_27_07_00_00."));

    // A reader holding the old file keeps its content across the swap.
    let held = fs::File::open(world.token_path()).unwrap();
    world.rotate(Some("token-2"), None);
    let second = world.data_target();
    assert_ne!(first, second);
    assert_eq!(world.timestamp_dirs(), std::slice::from_ref(&second));
    assert!(!sa.join(&first).exists());
    assert!(!sa.join("..data_tmp").exists());
    assert_eq!(fs::read_to_string(world.token_path()).unwrap(), "token-2");
    assert_eq!(fs::read_to_string(world.ca_path()).unwrap(), "CA-1");
    assert_eq!(fs::read_to_string(world.namespace_path()).unwrap(), "ns1");
    assert_eq!(std::io::read_to_string(held).unwrap(), "token-1");

    world.rotate(None, Some("CA-2"));
    assert_eq!(fs::read_to_string(world.token_path()).unwrap(), "token-2");
    assert_eq!(fs::read_to_string(world.ca_path()).unwrap(), "CA-2");
    assert_eq!(world.timestamp_dirs().len(), 1);
}

/// The `kube` crate, pointed at the fake through a kubeconfig from `World`, can list and
/// watch pods: the fake's JSON is real enough.
#[tokio::test]
async fn kube_client_lists_and_watches_pods() {
    let api = api_with(&["kube-token"]).await;
    let world = World::new();
    let ca = world.file("ca.crt", &api.pki().ca_pem());
    let kc = world.kubeconfig(&api.url(), &ca, "kube-token");
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kc).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client);

    let list = pods.list(&ListParams::default().limit(2)).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["pod-0", "pod-1"]);
    let rv = list.metadata.resource_version.clone().unwrap();
    assert_eq!(
        pods.get("pod-2").await.unwrap().metadata.name.as_deref(),
        Some("pod-2")
    );

    let mut stream = pods
        .watch(&WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed();
    api.wait_open_watches(1).await;
    api.send_watch_event("ADDED", "from-kube");
    match within("a kube watch event", stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("from-kube")),
        other => panic!("unexpected event {other:?}"),
    }
    api.send_watch_event("ERROR", "ignored");
    match within("a kube watch error", stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("unexpected event {other:?}"),
    }

    let seen = api
        .wait_for_request(|s| s.query.as_deref().is_some_and(|q| q.contains("watch=true")))
        .await;
    assert_eq!(seen.token.as_deref(), Some("kube-token"));
}

#[tokio::test]
async fn raw_client_reads_one_full_response() {
    // The plain-HTTP clients normally talk to the proxy; a tiny local hyper server stands
    // in for it here so their framing logic is checked on its own.
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let chunked = req.uri().path() == "/chunked";
                    let body =
                        http_body_util::StreamBody::new(futures::stream::iter(["a", "bc"].map(
                            |s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s))),
                        )));
                    let mut resp =
                        http::Response::builder().header("x-target", req.uri().to_string());
                    if !chunked {
                        resp = resp.header("content-length", "3");
                    }
                    Ok::<_, std::convert::Infallible>(resp.body(body).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let r = client::raw(addr, b"GET /x/../y?q HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("x-target: /x/../y?q\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nabc"), "{r}");
    let r = client::raw(addr, b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(r.ends_with("1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"), "{r}");

    let r = client::get(&format!("http://{addr}/plain")).await;
    assert_eq!(r.body.as_ref(), b"abc");
    let mut s = client::get_stream(&format!("http://{addr}/chunked"), &[]).await;
    assert_eq!(s.next_chunk().await.unwrap().as_ref(), b"a");
    assert_eq!(s.next_chunk().await.unwrap().as_ref(), b"bc");
    assert!(s.next_chunk().await.is_none());
}
