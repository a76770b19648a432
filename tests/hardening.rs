//! Abuse from the client side, through the real binary: a client that never finishes its
//! headers (slowloris), idle keep-alive connections, too many connections, oversized
//! headers, and thousands of idle connections at once.

mod support;

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
            if let Ok(resp) = client::try_send("GET", &proxy.url(PODS), &[], "").await {
                if resp.status == 200 {
                    return resp;
                }
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
    let (_api, _world, proxy) = setup(&["--header-read-timeout=60s"]).await;
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
