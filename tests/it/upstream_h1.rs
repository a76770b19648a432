//! The HTTP/1.1 pool's health, where HTTP/2's PING is not available: every API server
//! connection has TCP keep-alive (client-go's 30 s unless `--keepalive` says otherwise,
//! as kubectl proxy's API requests have it), and a connection idle past
//! `--upstream-ping-interval` is closed rather than reused.

use crate::support;

use support::client;

const TOKEN: &str = "h1-health-token-51c8";

/// The kernel's view of the proxy's connections to the API server at `api_port`
/// (`/proc/net/tcp` and `tcp6`, remote port `api_port`, state ESTABLISHED): for each, its
/// timer kind (`tr`: 2 is the keep-alive timer, 0 none) and when it fires, in clock ticks
/// (`USER_HZ`, 100 a second). The proxy is another process, so the socket is read from
/// the kernel, not from anything the proxy reports.
fn established_to(api_port: u16) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st), Some(timer)) = (f.get(2), f.get(3), f.get(5)) else {
                continue;
            };
            let port = rem
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port != Some(api_port) || *st != "01" {
                continue;
            }
            let (tr, when) = timer.split_once(':').expect("tr:tm->when");
            found.push((
                u32::from_str_radix(tr, 16).expect("timer kind"),
                u64::from_str_radix(when, 16).expect("timer ticks"),
            ));
        }
    }
    found
}

/// Asserts that every connection the proxy (with `extra` flags) holds to the API server
/// after one request has its keep-alive timer armed, due within `secs`.
async fn assert_keepalive_within(extra: &[&str], secs: u64) {
    let (api, _world, proxy) = support::in_cluster_setup(TOKEN, extra).await;
    let resp = client::get(&proxy.url("/api/v1/namespaces/default/pods")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let conns = established_to(api.port());
    assert!(
        !conns.is_empty(),
        "no connection to the API server in /proc/net/tcp"
    );
    for (kind, ticks) in conns {
        assert_eq!(kind, 2, "no keep-alive timer on the proxy's connection");
        assert!(
            ticks <= secs * 100,
            "keep-alive fires in {ticks} ticks, over {secs} s"
        );
    }
}

#[tokio::test]
async fn every_api_server_connection_has_tcp_keepalive_by_default() {
    // `--keepalive` left at 0, kubectl's default: client-go's 30 s, not off.
    assert_keepalive_within(&["--upstream-http2=false"], 30).await;
}

#[tokio::test]
async fn keepalive_sets_the_period() {
    assert_keepalive_within(&["--upstream-http2=false", "--keepalive=7s"], 7).await;
}

#[tokio::test]
async fn an_idle_connection_past_the_bound_is_closed_not_reused() {
    let (api, _world, proxy) = support::in_cluster_setup(
        TOKEN,
        &["--upstream-http2=false", "--upstream-ping-interval=200ms"],
    )
    .await;
    let url = proxy.url("/api/v1/namespaces/default/pods");
    assert_eq!(client::get(&url).await.status, 200);
    // Waited for, not slept: the pool closes the idle connection itself. A pool that kept
    // it would leave this waiting until `within`'s deadline fails the test.
    api.wait_open_connections(0).await;
    assert_eq!(client::get(&url).await.status, 200);
    assert_eq!(api.open_connections(), 1);
}

#[tokio::test]
async fn a_zero_ping_interval_or_timeout_is_refused_at_start() {
    for flag in ["--upstream-ping-interval=0", "--upstream-ping-timeout=0s"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-ambassador"))
            .arg(flag)
            .output()
            .expect("run kube-ambassador");
        assert!(!out.status.success(), "{flag} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must be above zero"), "{flag}: {err}");
    }
}
