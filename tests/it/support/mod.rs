//! Shared test-support library for the integration tests: a launcher for the real binary,
//! a small HTTP client, load and relay helpers, and the fake Kubernetes API server's
//! pieces re-exported from the `fake-apiserver` crate (certificates, the server, a
//! kubelet-style service-account directory).
//!

pub mod client;
pub mod load;
pub mod proxy;
pub mod relay;

// Re-exports for convenience.
pub use client::Resp;
pub use fake_apiserver::{FakeApi, FakeApiOptions, Pki, Seen, WAIT, World, hex, within};
pub use proxy::{Proxy, ProxyAddr};

/// Lowercase hex SHA-256 of `data` (what `/echo` reports as `body_sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(sha2::Sha256::digest(data))
}

/// Writes `msg` into an upgraded stream and reads back exactly as many bytes (the fake
/// API echoes).
pub async fn round_trip(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    msg: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    within("an echo through the tunnel", async {
        io.write_all(msg).await.expect("write into the tunnel");
        io.flush().await.expect("flush the tunnel");
        let mut back = vec![0u8; msg.len()];
        io.read_exact(&mut back)
            .await
            .expect("read from the tunnel");
        back
    })
    .await
}

/// GETs `url` (a watch through the proxy) and waits until the fake API server holds it
/// open: an event sent from then on reaches it.
pub async fn open_watch(api: &FakeApi, url: &str) -> client::StreamResp {
    let watch = client::get_stream(url, &[]).await;
    assert_eq!(watch.status, 200, "watch {url}");
    within("the watch to open upstream", api.wait_open_watches(1)).await;
    watch
}

/// A path as a `String`, for building flags and environment values.
pub fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Fails the test if any of `secrets` reached the proxy's stderr.
pub fn assert_no_secrets(proxy: &Proxy, secrets: &[&str]) {
    let stderr = proxy.stderr();
    for s in secrets {
        assert!(
            !stderr.contains(s),
            "secret {s:?} reached the proxy's stderr:\n{stderr}"
        );
    }
}

/// All values of header `name` in an `/echo` answer (its `headers` is `[[name, value]...]`).
pub fn echoed_headers(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo has headers")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|pair| pair[1].as_str().expect("header value").to_owned())
        .collect()
}

/// A Status error from the proxy: checks the code and reason, returns the message.
pub fn status_message(resp: &Resp, code: u16, reason: &str) -> String {
    assert_eq!(resp.status.as_u16(), code, "{}", resp.text());
    let status = resp.json();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    status["message"].as_str().unwrap_or("").to_owned()
}

/// The token the fake API's `/echo` saw, after checking the request got through.
pub fn echoed_token(resp: &Resp) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["token"].as_str().unwrap_or("").to_owned()
}

/// The in-cluster environment for `api`, with a scratch `HOME` (in `world`) so no
/// kubeconfig of the developer's can be found.
pub fn in_cluster_env(api: &FakeApi, world: &World) -> Vec<(String, String)> {
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()),
        ("HOME".into(), world.base().display().to_string()),
    ]
}

/// Borrows an owned environment list the way [`Proxy::start`] takes it.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A JWT-shaped token (`header.payload.signature`, base64url) with these `iat` and `exp`,
/// as a projected service-account token looks; the signature is not real.
pub fn fake_jwt(iat: i64, exp: i64) -> String {
    let b64url = |s: &str| {
        fake_apiserver::base64(s.as_bytes())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    format!(
        "{}.{}.{}",
        b64url(r#"{"alg":"RS256","kid":"test"}"#),
        b64url(&format!(
            r#"{{"aud":["https://kubernetes.default.svc"],"exp":{exp},"iat":{iat},"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:default:app"}}"#
        )),
        b64url("not-a-real-signature")
    )
}

/// The usual start: a fake API server accepting `token`, a kubelet-style service account
/// holding it, and the proxy in cluster mode with `extra_args`.
pub async fn in_cluster_setup(token: &str, extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[token])).await;
    let world = World::with_sa(token, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, extra_args).await;
    (api, world, proxy)
}

/// `kubectl` on PATH for the tests that run it; `None` after saying why such a test
/// skips. Under `CI` (set to anything but `false`/`0`) a missing kubectl fails the test
/// instead, so a CI summary can never count skipped kubectl tests as passed.
pub fn kubectl(what: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "{what} needs kubectl, which is not installed (not found on PATH), and CI is set: \
             install kubectl (see .ci/run) or unset CI to skip"
        );
        eprintln!("skipping {what}: kubectl is not installed (not found on PATH)");
    }
    found
}

/// A port that was free a moment ago, taken from `low` up to the kernel's ephemeral range,
/// so that no `bind(:0)` or outgoing connection of a test running alongside can take it
/// meanwhile (`--admin-address` has no `:0` that could be read back). Each module passes
/// its own `low` (they were separate binaries once); one counter serves them all in this
/// process, and the starting point differs per process, should several test runs share
/// the machine.
pub fn free_port_from(low: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(low).max(1);
    // A different starting point per test process, then consecutive candidates.
    let seed = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let port = low + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {}", low + span);
}
