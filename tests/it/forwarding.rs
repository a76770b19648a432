//! Forwarding through the real binary: every method reaches the API server unchanged,
//! the request target goes byte for byte, `Host` is rewritten to the API server,
//! hop-by-hop headers are dropped and end-to-end headers kept, `X-Forwarded-For` is
//! appended, a `User-Agent` is added only when missing, the caller's `Authorization` wins
//! over the service-account token, responses (redirects included) come back unchanged,
//! and no request target, `Host` header or `CONNECT` can send a request — or the token —
//! anywhere but the configured API server. A plain-`http://` API server never gets a token.

use crate::support;

use support::client::RawResp as Raw;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use bytes::Bytes;
use fake_apiserver::pattern_bytes;
use serde_json::Value;
use support::client::{self, AbortOnDrop};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, echoed_headers, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "forwarding-sa-token-7e2a";
const CALLER_TOKEN: &str = "caller-own-token-51c9";

async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN, CALLER_TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, extra_args).await;
    (api, world, proxy)
}

/// Sends `request` verbatim to the proxy and parses the one response.
async fn raw(proxy: &Proxy, request: &str) -> Raw {
    Raw::parse(&client::raw(proxy.socket_addr(), request.as_bytes()).await)
}

#[tokio::test]
async fn every_method_reaches_the_api_server_with_the_same_method_and_body() {
    let (api, _world, proxy) = setup(&[]).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
        let path = format!("/echo/method-{}", method.to_ascii_lowercase());
        let body = format!("body of a {method}");
        let resp = client::send(method, &proxy.url(&path), &[], body.clone()).await;
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        let seen = api.wait_for_request(|s| s.path == path).await;
        assert_eq!(seen.method, method);
        assert_eq!(seen.body_len, body.len() as u64, "{method}");
        assert_eq!(seen.body_sha256, support::sha256_hex(body.as_bytes()));
        if method == "HEAD" {
            assert!(resp.body.is_empty(), "a HEAD answer has no body");
        } else {
            assert_eq!(resp.json()["method"], method);
        }
    }
    assert_eq!(api.requests().len(), 7, "one upstream request per request");
}

#[tokio::test]
async fn the_api_server_is_offered_aes_128_first_as_kubectl_does() {
    // The fake, like rustls servers by default, takes the client's first suite it supports.
    for args in [&[][..], &["--upstream-http2=false"][..]] {
        let (api, _world, proxy) = setup(args).await;
        let resp = client::get(&proxy.url("/api/v1/namespaces/default/pods")).await;
        assert_eq!(resp.status, 200, "{args:?}");
        let seen = api
            .wait_for_request(|s| s.path == "/api/v1/namespaces/default/pods")
            .await;
        assert_eq!(
            seen.tls_suite.as_deref(),
            Some("TLS13_AES_128_GCM_SHA256"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn path_and_query_are_forwarded_byte_for_byte_with_percent_encoding_kept() {
    let (_api, _world, proxy) = setup(&[]).await;
    let target = "/echo/a%20b/c%2Fd?x=%2F&y=a+b&z";
    let resp = client::get(&proxy.url(target)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["uri"], target);

    // Escapes that decode to unreserved characters, a lower-case escape, an empty key, a
    // `;` and a malformed escape in the query (only the path is decoded, for the filter)
    // stay exactly as sent, too.
    let target = "/echo/%41%7e~/%c3%a9?q=%41&%7E=&=v&a=1;b=2&bad=%zz&&";
    let resp = raw(
        &proxy,
        &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["uri"], target);
}

/// The host the API server saw, as `[value]`: `:authority` over HTTP/2 (which then carries
/// no `Host`, RFC 9113 §8.3.1), `Host` over HTTP/1.1 (origin-form: no authority).
fn upstream_host(echo: &Value) -> Vec<String> {
    if echo["version"] == "HTTP/2.0" {
        assert!(
            echoed_headers(echo, "host").is_empty(),
            "Host beside :authority: {echo}"
        );
        vec![echo["authority"].as_str().expect("authority").to_owned()]
    } else {
        assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
        assert_eq!(
            echo["authority"],
            Value::Null,
            "origin-form upstream: {echo}"
        );
        echoed_headers(echo, "host")
    }
}

async fn host_is_rewritten(args: &[&str], version: &str) {
    let (api, _world, proxy) = setup(args).await;
    let resp = client::get_with(&proxy.url("/echo/host"), &[("host", "localhost:8001")]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.json();
    assert_eq!(echo["version"], version, "{echo}");
    assert_eq!(
        upstream_host(&echo),
        [format!("127.0.0.1:{}", api.port())],
        "{echo}"
    );
}

#[tokio::test]
async fn host_is_rewritten_to_the_api_servers_address() {
    host_is_rewritten(&["--upstream-http2=true"], "HTTP/2.0").await;
}

#[tokio::test]
async fn host_is_rewritten_to_the_api_servers_address_over_http_1_1() {
    host_is_rewritten(&["--upstream-http2=false"], "HTTP/1.1").await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_headers_kept() {
    let (_api, _world, proxy) = setup(&[]).await;
    let resp = raw(
        &proxy,
        "GET /echo/hop HTTP/1.1\r\n\
         Host: localhost\r\n\
         Connection: keep-alive, X-Hop-Named\r\n\
         X-Hop-Named: named in Connection\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: websocket\r\n\
         X-End-To-End: kept\r\n\
         Accept: application/json\r\n\
         Cache-Control: no-cache\r\n\
         \r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.json();
    for gone in [
        "connection",
        "x-hop-named",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            echoed_headers(&echo, gone).is_empty(),
            "{gone} was forwarded: {echo}"
        );
    }
    assert_eq!(
        echoed_headers(&echo, "te"),
        ["trailers"],
        "TE: trailers is kept"
    );
    assert_eq!(echoed_headers(&echo, "x-end-to-end"), ["kept"]);
    assert_eq!(echoed_headers(&echo, "accept"), ["application/json"]);
    assert_eq!(echoed_headers(&echo, "cache-control"), ["no-cache"]);

    // TE without `trailers` is dropped altogether.
    let resp = raw(
        &proxy,
        "GET /echo/te HTTP/1.1\r\nHost: localhost\r\nTE: gzip, deflate\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        echoed_headers(&resp.json(), "te").is_empty(),
        "{:?}",
        resp.body
    );
}

#[tokio::test]
async fn x_forwarded_for_gets_the_client_address_appended() {
    let (_api, _world, proxy) = setup(&[]).await;
    let resp = client::get(&proxy.url("/echo/xff")).await;
    assert_eq!(
        echoed_headers(&resp.json(), "x-forwarded-for"),
        ["127.0.0.1"]
    );

    let resp = client::get_with(&proxy.url("/echo/xff"), &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(
        echoed_headers(&resp.json(), "x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"]
    );
    // No other forwarding headers are invented.
    let echo = resp.json();
    assert!(
        echoed_headers(&echo, "x-forwarded-host").is_empty(),
        "{echo}"
    );
    assert!(
        echoed_headers(&echo, "x-forwarded-proto").is_empty(),
        "{echo}"
    );
}

#[tokio::test]
async fn a_user_agent_is_added_only_when_the_client_sent_none() {
    let (_api, _world, proxy) = setup(&[]).await;
    let resp = client::get(&proxy.url("/echo/ua")).await;
    let agents = echoed_headers(&resp.json(), "user-agent");
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(agents[0].starts_with("kube-ambassador/"), "{agents:?}");

    let resp = client::get_with(
        &proxy.url("/echo/ua"),
        &[("user-agent", "my-app/1.2 (linux)")],
    )
    .await;
    assert_eq!(
        echoed_headers(&resp.json(), "user-agent"),
        ["my-app/1.2 (linux)"]
    );
}

#[tokio::test]
async fn the_callers_own_authorization_header_wins_over_the_service_account_token() {
    let (api, _world, proxy) = setup(&[]).await;
    let bearer = format!("Bearer {CALLER_TOKEN}");
    let resp = client::get_with(&proxy.url("/echo/mine"), &[("authorization", &bearer)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.json();
    assert_eq!(echo["token"], CALLER_TOKEN);
    assert_eq!(echoed_headers(&echo, "authorization"), [bearer]);
    assert!(!resp.text().contains(TOKEN), "the SA token went upstream");

    // A caller's credential the API server refuses is refused, not replaced.
    let resp = client::get_with(
        &proxy.url("/echo/bad"),
        &[("authorization", "Bearer not-a-valid-token")],
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let seen = api.wait_for_request(|s| s.path == "/echo/bad").await;
    assert_eq!(
        seen.header_all("authorization"),
        ["Bearer not-a-valid-token"]
    );
}

#[tokio::test]
async fn the_service_account_token_is_sent_when_the_caller_sends_none() {
    let (_api, _world, proxy) = setup(&[]).await;
    let resp = client::get(&proxy.url("/echo/sa")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.json();
    assert_eq!(echo["token"], TOKEN);
    assert_eq!(
        echoed_headers(&echo, "authorization"),
        [format!("Bearer {TOKEN}")]
    );
}

#[tokio::test]
async fn a_redirect_from_the_api_server_is_passed_back_unchanged_and_not_followed() {
    let (api, _world, proxy) = setup(&[]).await;
    let resp = client::get(&proxy.url("/redirect")).await;
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("https://example.invalid/elsewhere")
    );
    assert_eq!(
        resp.json()["redirect"],
        "https://example.invalid/elsewhere",
        "the body is the API server's"
    );
    let paths: Vec<String> = api.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(paths, ["/redirect"]);
}

#[tokio::test]
async fn an_absolute_form_target_is_judged_by_its_authority_and_refused_by_the_default_filter() {
    let (api, _world, proxy) = setup(&[]).await;
    let resp = raw(
        &proxy,
        "GET http://evil.example/echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.body, "Forbidden\n");
    // The same origin-form request with that Host is accepted: only the authority differs.
    let ok = raw(
        &proxy,
        "GET /echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let uris: Vec<String> = api.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        ["/echo/x"],
        "only the origin-form request went upstream"
    );
}

#[tokio::test]
async fn an_absolute_form_target_only_ever_reaches_the_api_server_even_when_every_host_is_accepted()
{
    let (api, _world, proxy) = setup(&["--accept-hosts=.*"]).await;
    // A listener standing in for "somewhere else": it must never see a connection.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_addr = trap.local_addr().unwrap();

    for authority in ["evil.example".to_owned(), trap_addr.to_string()] {
        let resp = raw(
            &proxy,
            &format!(
                "GET http://{authority}/echo/abs?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(resp.status, 200, "{authority}: {resp:?}");
        let echo = resp.json();
        assert_eq!(echo["uri"], "/echo/abs?q=1", "origin-form upstream");
        assert_eq!(echo["token"], TOKEN);
        assert_eq!(upstream_host(&echo), [format!("127.0.0.1:{}", api.port())]);
    }
    assert_eq!(api.requests().len(), 2);
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the request target's authority was dialled: {other:?}"),
    }
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_and_never_reaches_the_api_server() {
    let (api, _world, proxy) = setup(&[]).await;
    let resp = client::get_with(&proxy.url("/echo/x"), &[("host", "evil.com")]).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(), "Forbidden\n");
    let resp = client::get_with(&proxy.url("/echo/x"), &[("host", "evil.com:8001")]).await;
    assert_eq!(resp.status, 403);
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[tokio::test]
async fn a_connect_request_is_refused_and_opens_no_tunnel() {
    let (api, _world, proxy) = setup(&["--disable-filter"]).await;
    let api_addr = api.addr();
    let before = api.open_connections();
    let resp = raw(
        &proxy,
        &format!("CONNECT {api_addr} HTTP/1.1\r\nHost: {api_addr}\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(
        api.open_connections(),
        before,
        "the proxy dialled the API server for a tunnel"
    );
    assert!(api.requests().is_empty());
}

/// A plain-HTTP "API server" that records the head of each request and answers `ok`.
async fn plain_http_recorder() -> (SocketAddr, mpsc::UnboundedReceiver<String>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = AbortOnDrop(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tcp.read(&mut byte).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => head.push(byte[0]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    }));
    (addr, rx, task)
}

#[tokio::test]
async fn a_plain_http_api_server_never_receives_a_token() {
    let (addr, mut heads, _server) = plain_http_recorder().await;
    // A token flag *and* a service-account directory: neither may go out in clear text.
    let pki = Pki::new();
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    let server = format!("--server=http://{addr}");
    let sa = format!("--service-account-dir={}", world.sa_dir().display());
    let proxy = Proxy::start(&[&server, &sa, "--token=flag-token-9d1e", "--port=0"], &[]).await;

    let resp = client::get(&proxy.url("/api/v1/namespaces/default/pods")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "ok");
    let head = within("the request at the plain-HTTP server", heads.recv())
        .await
        .expect("a request head");
    assert!(
        head.starts_with("GET /api/v1/namespaces/default/pods HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("authorization"), "{head}");
    assert!(
        !head.contains(TOKEN) && !head.contains("flag-token-9d1e"),
        "{head}"
    );
    assert!(lower.contains(&format!("host: {addr}\r\n")), "{head}");
    proxy.wait_stderr("no credentials will be sent").await;
}

/// Writes `request` and reads until the server closes the connection.
fn raw_bytes_until_close(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading until close: {e} (after {} bytes)", out.len()));
    out
}

#[tokio::test]
async fn an_http_1_0_client_gets_an_unchunked_response_while_the_api_server_sees_http_1_1() {
    // The API server's answer is chunked over HTTP/1.1.
    http_1_0_client_gets_an_unchunked_response(&["--upstream-http2=false"], http::Version::HTTP_11)
        .await;
}

#[tokio::test]
async fn an_http_1_0_client_gets_an_unchunked_response_of_unknown_length_over_http_2() {
    // Over HTTP/2 the answer has no length either: DATA frames until END_STREAM.
    http_1_0_client_gets_an_unchunked_response(&["--upstream-http2=true"], http::Version::HTTP_2)
        .await;
}

async fn http_1_0_client_gets_an_unchunked_response(args: &[&str], upstream: http::Version) {
    let (api, _world, proxy) = setup(args).await;
    let n = 300_001;
    let addr = proxy.socket_addr();
    // The API server answers chunked; an HTTP/1.0 client cannot read chunked framing.
    let out = tokio::task::spawn_blocking(move || {
        raw_bytes_until_close(
            addr,
            format!("GET /bytes?n={n}&chunked=1 HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes(),
        )
    })
    .await
    .unwrap();
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let body = Bytes::copy_from_slice(&out[end + 4..]);
    assert_eq!(body.len(), n, "{head}");
    assert!(
        body == pattern_bytes(n),
        "the body differs from the pattern"
    );
    let seen = api.wait_for_request(|s| s.path == "/bytes").await;
    assert_eq!(seen.version, upstream);
}

/// The listener tells the protocols apart by the client's first bytes: HTTP/2 with prior
/// knowledge ("h2c") and HTTP/1.1 both work, including a request whose first segment is
/// only the start of the HTTP/2 preface, "P" (a `POST`, `PUT` or `PATCH` could begin so).
#[tokio::test]
async fn http2_prior_knowledge_and_http1_clients_are_both_served() {
    let (api, _world, proxy) = setup(&["--upstream-http2=true"]).await;
    let addr = proxy.socket_addr();

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake with the proxy");
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    for _ in 0..2 {
        let req = http::Request::get(format!("http://{addr}/api/v1/namespaces/default/pods"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = within("an h2c GET", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        let list: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        assert_eq!(list["kind"], "PodList", "{list}");
    }

    // A POST sent as "P", then the rest: the first bytes match the preface's "P".
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let body = r#"{"kind":"Pod","metadata":{"name":"split-post"}}"#;
    let rest = format!(
        "OST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(b"P").await.unwrap();
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("the split POST's answer", stream.read_to_end(&mut out))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 201"), "{out:.300}");
    let seen = api
        .wait_for_request(|s| s.method == "POST" && s.path == "/api/v1/namespaces/default/pods")
        .await;
    assert_eq!(seen.version, http::Version::HTTP_2);
}
