//! Abuse from the client side, through the real binary: a client that never finishes its
//! headers (slowloris), idle keep-alive connections, too many connections, oversized
//! headers, and thousands of idle connections at once.

use crate::support;

use support::client;
use support::{FakeApi, Proxy, World, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "hardening-token";
const PODS: &str = "/api/v1/namespaces/default/pods";

async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    support::in_cluster_setup(TOKEN, extra_args).await
}

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    out
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_after_the_header_timeout() {
    let (_api, _world, proxy) = setup(&["--header-read-timeout=1s"]).await;
    let mut slow = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    slow.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // kubectl proxy would keep this connection open forever.
    within("the slow connection to be closed", read_to_close(&mut slow)).await;
    // The proxy still serves everyone else.
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected_after_the_header_timeout() {
    let (_api, _world, proxy) = setup(&["--header-read-timeout=1s"]).await;
    let mut silent = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    let closed = within(
        "the silent connection to be closed",
        read_to_close(&mut silent),
    )
    .await;
    assert!(closed.is_empty(), "{}", String::from_utf8_lossy(&closed));
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_watch_outlives_the_timeout() {
    let (api, _world, proxy) = setup(&["--header-read-timeout=1s"]).await;
    let mut watch = support::open_watch(
        &api,
        &proxy.url(&format!("{PODS}?watch=1&resourceVersion=1")),
    )
    .await;

    let mut idle = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    idle.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = within("the idle connection to be closed", read_to_close(&mut idle)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the request on it was answered before it idled out"
    );
    // The idle connection lived past the timeout, so the watch has too: it still works.
    api.send_watch_event("MODIFIED", "pod-0");
    let event = within("the event after the timeout", watch.next_json())
        .await
        .expect("the watch is still open");
    assert_eq!(event["type"], "MODIFIED");
}

#[tokio::test]
async fn connections_beyond_max_connections_get_a_clear_503_status() {
    let (_api, _world, proxy) = setup(&["--max-connections=2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy.socket_addr()).await.unwrap();
        c.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut third = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    let refusal = String::from_utf8_lossy(&read_to_close(&mut third).await).into_owned();
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("\"kind\":\"Status\""), "{refusal}");
    assert!(refusal.contains("--max-connections"), "{refusal}");

    // Once a held connection is gone, a new one is served again.
    drop(held.pop());
    let served = within("a connection to be accepted again", async {
        loop {
            if let Ok(resp) = client::try_send("GET", &proxy.url(PODS), &[], "").await
                && resp.status == 200
            {
                return resp;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(served.status, 200);
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_and_never_forwarded() {
    let (api, _world, proxy) = setup(&[]).await;
    let big = "x".repeat(2 << 20);
    let mut c = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    let head = format!("GET /echo/big HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    // The proxy may close before reading it all: ignore a write error.
    let _ = c.write_all(head.as_bytes()).await;
    let answer = String::from_utf8_lossy(&read_to_close(&mut c).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(api.requests().iter().all(|s| s.path != "/echo/big"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Raises this test process's own open-files limit (it holds the client ends).
fn raise_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_neither_crash_the_proxy_nor_grow_it_without_bound() {
    const N: usize = 10_000;
    if raise_limit(N as u64 + 1_000) < N as u64 + 500 {
        eprintln!("skipped: this machine's open-files hard limit is below {N}");
        return;
    }
    // Beyond the default --max-connections: what the proxy itself can bear.
    let (_api, _world, proxy) = setup(&["--header-read-timeout=60s", "--max-connections=0"]).await;
    let before = rss_kib(proxy.pid());
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(TcpStream::connect(proxy.socket_addr()).await.unwrap());
    }
    // Every connection is accepted and the proxy still serves.
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200);
    let during = rss_kib(proxy.pid());
    let per_conn = (during.saturating_sub(before)) as f64 * 1024.0 / N as f64;
    eprintln!(
        "{N} idle connections: RSS {before} KiB -> {during} KiB ({per_conn:.0} bytes per connection)"
    );
    assert!(
        during - before < 256 * 1024,
        "RSS grew by {} KiB for {N} idle connections",
        during - before
    );
    drop(conns);
    assert!(proxy.try_status().is_none(), "the proxy exited");
}

// ---------------------------------------------------------------------------------------
// Issue 14: an attacker's afternoon. Each test reproduces one finding through the binary.
// ---------------------------------------------------------------------------------------

/// An h2c ("HTTP/2 with prior knowledge") connection to the proxy, with its driver task.
struct H2c {
    send: h2::client::SendRequest<bytes::Bytes>,
    conn: tokio::task::JoinHandle<()>,
    max_streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for H2c {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// What an h2c answer amounts to: status and the body read to its end.
struct H2Answer {
    status: u16,
    body: Vec<u8>,
}

impl H2c {
    async fn connect(addr: std::net::SocketAddr) -> H2c {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, mut conn) = within("the h2c handshake", h2::client::handshake(tcp))
            .await
            .expect("h2c handshake with the proxy");
        let max_streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = max_streams.clone();
        let conn = tokio::spawn(async move {
            // Drives the connection; records the server's stream limit as SETTINGS arrive.
            std::future::poll_fn(|cx| {
                let polled = conn.poll_unpin_ready(cx);
                seen.store(
                    conn.max_concurrent_send_streams(),
                    std::sync::atomic::Ordering::Release,
                );
                polled
            })
            .await;
        });
        H2c {
            send,
            conn,
            max_streams,
        }
    }

    /// Sends a bodiless request; returns the response head's future result.
    async fn start(
        &mut self,
        method: &str,
        uri: &str,
    ) -> Result<h2::client::ResponseFuture, h2::Error> {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        let mut send = within("h2c capacity for a stream", self.send.clone().ready())
            .await
            .expect("the h2c connection accepts a stream");
        let (resp, _) = send.send_request(req, true)?;
        self.send = send;
        Ok(resp)
    }

    async fn get(&mut self, uri: &str) -> Result<H2Answer, h2::Error> {
        let resp = self.start("GET", uri).await?;
        read_answer(resp).await
    }
}

async fn read_answer(resp: h2::client::ResponseFuture) -> Result<H2Answer, h2::Error> {
    let resp = within("an h2c response", resp).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = within("an h2c body chunk", body.data()).await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(H2Answer { status, body: out })
}

/// `poll` for an h2 client connection, which is a future of `Result<(), h2::Error>`.
trait PollReady {
    fn poll_unpin_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()>;
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> PollReady
    for h2::client::Connection<T, bytes::Bytes>
{
    fn poll_unpin_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::pin::Pin::new(self).poll(cx).map(|_| ())
    }
}

use std::future::Future as _;

/// Finding 1: a request trailer with a connection-specific name (which HTTP/2 forbids,
/// RFC 9113 §8.2.2) once wedged the upstream HTTP/2 stream: h2 refused the trailers and
/// the request never ended, the client never got an answer. Now such fields are dropped
/// from trailers as Go's HTTP/2 code drops them, and the request is answered.
#[tokio::test]
async fn connection_specific_request_trailers_are_dropped_and_the_request_is_answered() {
    // Every request over HTTP/2 (by default a POST takes HTTP/1.1, see `upstream_h2.rs`).
    let (api, _world, proxy) = setup(&["--upstream-http2=true"]).await;
    let trailers = [
        "Transfer-Encoding: chunked",
        "Connection: close",
        "Upgrade: websocket",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: gzip",
    ];
    for (i, trailer) in trailers.iter().enumerate() {
        let request = format!(
            "POST /echo/trailer-{i} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailer}\r\nX-Checksum: 1\r\n\r\n"
        );
        let answer = within(
            &format!("an answer to a request with the trailer {trailer:?}"),
            client::raw(proxy.socket_addr(), request.as_bytes()),
        )
        .await;
        let resp = client::RawResp::parse(&answer);
        assert_eq!(resp.status, 200, "trailer {trailer:?}: {answer:.300}");
        assert_eq!(resp.json()["body_len"], 5, "trailer {trailer:?}");
        // The fake answers once the request body has ended: the upstream stream is over.
        let seen = api
            .wait_for_request(|s| s.path == format!("/echo/trailer-{i}"))
            .await;
        assert_eq!(
            seen.version,
            http::Version::HTTP_2,
            "over the HTTP/2 upstream"
        );
        assert!(seen.body_complete, "trailer {trailer:?}");
    }
    // And the proxy still serves.
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
}

/// Finding 2: userinfo in the request target made the host filter judge the wrong part
/// (`localhost:PORT@evil.com` was cut at its last `:` and passed as `localhost`). A
/// target or `:authority` with userinfo is now refused with 400, as Go refuses a Host
/// with userinfo, and never forwarded.
#[tokio::test]
async fn userinfo_in_the_request_target_or_authority_is_refused() {
    let (api, _world, proxy) = setup(&[]).await;
    let port = proxy.socket_addr().port();
    for (target, host) in [
        (
            format!("http://localhost:{port}@evil.com/version"),
            "evil.com",
        ),
        (
            format!("http://127.0.0.1:{port}@evil.com/version"),
            "evil.com",
        ),
        (
            format!("http://evil.com@localhost:{port}/version"),
            "localhost",
        ),
        (
            format!("http://user:pass@localhost:{port}/version"),
            "localhost",
        ),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = within(
            "an answer",
            client::raw(proxy.socket_addr(), request.as_bytes()),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{target}: {answer:.300}"
        );
    }
    let mut h2c = H2c::connect(proxy.socket_addr()).await;
    for authority in ["localhost:1@evil.com", "evil.com@localhost"] {
        let answer = h2c
            .get(&format!("http://{authority}/version"))
            .await
            .expect("an h2c answer");
        assert_eq!(answer.status, 400, ":authority {authority}");
    }
    // The same without userinfo is served, over both protocols.
    let ok = h2c
        .get(&format!("http://localhost:{port}/version"))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert!(
        api.requests()
            .iter()
            .filter(|s| s.path == "/version")
            .count()
            == 1,
        "only the request without userinfo reached the API server"
    );
}

/// Finding 3: the 301 for an unclean path once put `\` in `Location` as sent, and a
/// browser reads `/\evil.example/x` as `//evil.example/x`: another origin. Every byte a
/// URI may not hold is now percent-encoded in `Location` and in the body's link.
#[tokio::test]
async fn the_redirect_for_an_unclean_path_never_leaves_the_origin() {
    let (_api, _world, proxy) = setup(&[]).await;
    let answer = within(
        "the 301",
        client::raw(
            proxy.socket_addr(),
            b"GET /./\\evil.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    let resp = client::RawResp::parse(&answer);
    assert_eq!(resp.status, 301, "{answer}");
    assert_eq!(
        resp.header("location"),
        Some("/%5Cevil.example/x"),
        "{answer}"
    );
    assert_eq!(
        resp.body,
        "<a href=\"/%5Cevil.example/x\">Moved Permanently</a>.\n\n"
    );
    // A query's forbidden bytes too; its escapes as sent are kept.
    let answer = within(
        "the 301 with a query",
        client::raw(
            proxy.socket_addr(),
            b"GET //api/v1?a=\\x&b=%2F HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    let resp = client::RawResp::parse(&answer);
    assert_eq!(resp.status, 301, "{answer}");
    assert_eq!(
        resp.header("location"),
        Some("/api/v1?a=%5Cx&b=%2F"),
        "{answer}"
    );
}

/// Finding 4: kubectl's reject-paths use `.`, which does not match a newline, so
/// `…/pods/x%0a/exec` reached exec. No Kubernetes name holds a control character: a path
/// whose decoded form has one is refused with a 400 Status before the filter runs.
#[tokio::test]
async fn a_path_with_a_decoded_control_character_is_refused_before_the_filter() {
    let (api, _world, proxy) = setup(&[]).await;
    for path in [
        format!("{PODS}/x%0a/exec"),
        format!("{PODS}/x%0d%0a/attach"),
        format!("{PODS}/x%00"),
        format!("{PODS}/x%1b%5b31m"),
        format!("{PODS}/x%7f"),
        format!("{PODS}/x%c2%85/exec"),
    ] {
        let resp = client::get(&proxy.url(&path)).await;
        let message = support::status_message(&resp, 400, "BadRequest");
        assert!(message.contains("control character"), "{path}: {message}");
    }
    assert!(
        api.requests().iter().all(|s| !s.path.starts_with(PODS)),
        "a path with a control character reached the API server"
    );
    // A tab or newline in a query is the API server's to judge, as before.
    assert_eq!(
        client::get(&proxy.url(&format!("{PODS}?x=%0a")))
            .await
            .status,
        200
    );
}

/// Finding 5: the node proxy reaches the kubelet's exec endpoints
/// (`/api/v1/nodes/NAME/proxy/{run,exec,attach,portForward,cri}`); the default
/// `--reject-paths` now refuses them too. A user's own `--reject-paths` replaces the
/// defaults entirely, as kubectl's does.
#[tokio::test]
async fn the_default_filter_refuses_the_node_proxys_exec_endpoints() {
    let (api, _world, proxy) = setup(&[]).await;
    for endpoint in ["run", "exec", "attach", "portForward", "cri"] {
        let path = format!("/api/v1/nodes/node-1/proxy/{endpoint}/default/pod/c?command=id");
        let resp = client::get(&proxy.url(&path)).await;
        assert_eq!(resp.status, 403, "{path}");
        assert_eq!(resp.text(), "Forbidden\n");
        // Spelled with the node's port too.
        let path = format!("/api/v1/nodes/node-1:10250/proxy/{endpoint}/default/pod/c");
        assert_eq!(client::get(&proxy.url(&path)).await.status, 403, "{path}");
    }
    // The node proxy's other endpoints are not exec: they pass, as before.
    client::get(&proxy.url("/api/v1/nodes/node-1/proxy/metrics")).await;
    api.wait_for_request(|s| s.path == "/api/v1/nodes/node-1/proxy/metrics")
        .await;
    assert!(
        api.requests()
            .iter()
            .all(|s| !s.path.contains("/proxy/exec")),
        "a node exec reached the API server"
    );

    let (api, _world, own) = setup(&["--reject-paths=^/nothing"]).await;
    client::get(&own.url("/api/v1/nodes/node-1/proxy/exec/default/pod/c")).await;
    api.wait_for_request(|s| s.path == "/api/v1/nodes/node-1/proxy/exec/default/pod/c")
        .await;
}

/// Finding 6: a decoded `%0A` or a raw ESC from a request could start a forged log line or
/// drive the terminal. Every logged value is escaped, in both formats.
#[tokio::test]
async fn control_characters_from_a_request_never_reach_the_log_verbatim() {
    for format in ["--log-format=text", "--log-format=json"] {
        let (_api, _world, proxy) = setup(&[format, "-v=4", "--access-log"]).await;
        let forged = "FORGED level=ERROR the proxy leaked its token";
        let path = format!("{PODS}/x%0a{}%1b[2J/exec", forged.replace(' ', "%20"));
        // From another host, so that the filter refuses it and says so, whatever it
        // makes of the path.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
        let answer = within(
            "an answer",
            client::raw(proxy.socket_addr(), request.as_bytes()),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        // Then a request the filter rejects: its line comes after the first one's.
        let resp = client::get(&proxy.url(&format!("{PODS}/x/exec"))).await;
        assert_eq!(resp.status, 403);
        proxy.wait_stderr("x/exec").await;
        let stderr = proxy.stderr();
        assert!(
            !stderr.lines().any(|l| l.starts_with("FORGED")),
            "{format}: a request started a log line:\n{stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "{format}: a raw ESC reached the log:\n{stderr}"
        );
        if format.ends_with("json") {
            for line in stderr.lines().filter(|l| !l.is_empty()) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            }
        }
    }
}

/// Finding 7, per connection: an h2c client once got hyper's defaults (200 streams, a
/// 400 KiB send buffer and 1 MiB windows per stream), so one connection could pin
/// hundreds of MiB with unread responses. The proxy now announces a smaller budget.
#[tokio::test]
async fn an_h2c_connection_gets_a_bounded_stream_budget() {
    let (_api, _world, proxy) = setup(&[]).await;
    let mut h2c = H2c::connect(proxy.socket_addr()).await;
    assert_eq!(
        h2c.get("http://localhost/version").await.unwrap().status,
        200
    );
    let max = h2c.max_streams.load(std::sync::atomic::Ordering::Acquire);
    assert!(
        (1..=100).contains(&max),
        "the proxy allows {max} concurrent streams per h2c connection"
    );
}

/// Finding 7, all connections together: each h2c stream counts against
/// `--max-connections` like a connection of its own, so many streams over few
/// connections cannot exceed the budget either; a stream over it gets a 503 Status.
#[tokio::test]
async fn h2c_streams_count_against_max_connections() {
    let (api, _world, proxy) = setup(&["--max-connections=3"]).await;
    let mut h2c = H2c::connect(proxy.socket_addr()).await;
    // The connection is one, each stream one more.
    let a = h2c.start("GET", "http://localhost/hold/a").await.unwrap();
    api.wait_held("a").await;
    let b = h2c.start("GET", "http://localhost/hold/b").await.unwrap();
    api.wait_held("b").await;
    let over = h2c.get("http://localhost/version").await.unwrap();
    assert_eq!(over.status, 503);
    let body = String::from_utf8_lossy(&over.body);
    assert!(body.contains("--max-connections"), "{body}");
    // A stream that has ended gives its place back.
    api.release("a");
    assert_eq!(read_answer(a).await.unwrap().status, 200);
    let served = within("a stream to be served again", async {
        loop {
            if h2c.get("http://localhost/version").await.unwrap().status == 200 {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    served.await;
    api.release("b");
    assert_eq!(read_answer(b).await.unwrap().status, 200);
}

/// Not a check but the measurement behind finding 7 (run it by name with `--ignored
/// --nocapture`): one h2c connection opens as many 64 MiB responses as the proxy lets it
/// (up to 200) and reads none; the proxy's RSS is sampled until it stops growing. Being a
/// measurement it waits on time, which no test above does.
#[tokio::test]
#[ignore = "a measurement: prints the RSS an unread h2c connection pins"]
async fn measure_rss_of_one_h2c_connection_with_unread_responses() {
    let (_api, _world, proxy) = setup(&std::env::var("KA_ARGS").map_or(Vec::new(), |a| {
        a.split_whitespace()
            .map(|s| &*String::leak(s.to_owned()))
            .collect()
    }))
    .await;
    let before = rss_kib(proxy.pid());
    let tcp = TcpStream::connect(proxy.socket_addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut held = Vec::new();
    for _ in 0..200 {
        let ready = tokio::time::timeout(std::time::Duration::from_secs(1), send.clone().ready());
        let Ok(Ok(ready)) = ready.await else { break };
        send = ready;
        let req = http::Request::get(format!("http://localhost/bytes?n={}", 64 << 20))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        held.push(resp);
    }
    let mut last = 0;
    let mut stable = 0;
    let mut now = before;
    while stable < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        now = rss_kib(proxy.pid());
        stable = if now.abs_diff(last) < 512 {
            stable + 1
        } else {
            0
        };
        last = now;
    }
    eprintln!(
        "{} unread 64 MiB h2c responses on one connection: RSS {before} KiB -> {now} KiB (+{} MiB)",
        held.len(),
        (now - before) / 1024
    );
}
