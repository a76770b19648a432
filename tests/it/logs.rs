//! Logging through the real binary: `--log-format=json` makes every stderr line a JSON
//! object with a level and a message; no log line, in either format and at any level,
//! ever carries the token (start-up, rotation, a 401, an upstream failure); `--access-log`
//! writes one line per request with method, path, status, bytes and duration; a JWT
//! token past 90% of its lifetime gets a warning that it has not been rotated.

use crate::support;

use support::fake_jwt;

use serde_json::Value;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const PODS: &str = "/api/v1/namespaces/default/pods";
/// Distinctive, so that any occurrence in the output is certainly a leak.
const TOKEN: &str = "Tk-4f2a9c-first-secret";
const ROTATED: &str = "Tk-77e0b1-second-secret";

async fn setup(token: &str, extra_args: &[&str], env: &[(&str, &str)]) -> (FakeApi, World, Proxy) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[token])).await;
    let world = World::with_sa(token, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster_with_env(&world, &api, extra_args, env).await;
    (api, world, proxy)
}

/// Stops the proxy cleanly (SIGTERM, `--shutdown-delay=0s` expected) and returns its
/// complete stderr.
async fn finish(mut proxy: Proxy) -> String {
    proxy.signal("TERM");
    let status = proxy.wait().await;
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    proxy.stderr()
}

/// Every stderr line parsed as JSON, failing on the first that is not an object with a
/// level and a message.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}"));
            assert!(v.is_object(), "not an object: {line}");
            let level = v["level"]
                .as_str()
                .unwrap_or_else(|| panic!("no level: {line}"));
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "{line}"
            );
            assert!(v["message"].is_string(), "no message: {line}");
            v
        })
        .collect()
}

/// Start-up, a request, a token rotation, a 401, an upstream failure and shutdown: every
/// kind of log line the proxy writes in ordinary life. Returns the complete stderr.
async fn eventful_life(extra_args: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["--shutdown-delay=0s", "--access-log"];
    args.extend_from_slice(extra_args);
    let (api, world, proxy) = setup(TOKEN, &args, env).await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    api.set_tokens(&[TOKEN, ROTATED]);
    world.rotate(Some(ROTATED), None);
    within(
        "the token reload",
        proxy.wait_stderr("token changed on disk"),
    )
    .await;
    assert_eq!(
        client::get(&proxy.url("/echo/rotated")).await.json()["token"],
        ROTATED
    );

    api.set_tokens(&[]);
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 401);

    api.stop().await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 503);
    let upgrade = client::upgrade(
        &proxy.url(&format!("{PODS}/p/portforward")),
        &[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(upgrade.status, 503);
    finish(proxy).await
}

fn assert_no_token(output: &str) {
    for token in [TOKEN, ROTATED] {
        assert!(
            !output.contains(token),
            "the token {token:?} reached the logs:\n{output}"
        );
    }
}

#[tokio::test]
async fn with_log_format_json_every_stderr_line_is_json_with_a_level_and_a_message() {
    let stderr = eventful_life(&["--log-format=json"], &[]).await;
    let lines = json_lines(&stderr);
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    // The run produced the lines it should have, each one JSON.
    for want in [
        "starting",
        "token changed on disk",
        "error trying to reach the API server",
        "shutting down",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(want)),
            "no {want:?} among {messages:#?}"
        );
    }
    let refused = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains("connection refused")
        })
        .expect("the upstream failure is logged");
    assert_eq!(refused["level"], "WARN");
    assert_no_token(&stderr);
}

#[tokio::test]
async fn no_log_line_ever_contains_the_token_in_text_or_json_even_at_trace_level() {
    for format in ["--log-format=text", "--log-format=json"] {
        // Everything every crate logs, not only the proxy's own lines.
        let stderr = eventful_life(&[format], &[("RUST_LOG", "trace")]).await;
        assert!(
            stderr.contains("token changed on disk"),
            "{format}: the run did not happen as planned:\n{stderr}"
        );
        assert_no_token(&stderr);
    }
    // And at the default level, as deployed (-v=0, no RUST_LOG).
    let (_api, world, proxy) = setup(
        TOKEN,
        &["--shutdown-delay=0s"],
        &[("RUST_LOG", "warn,kube_ambassador=info")],
    )
    .await;
    world.rotate(Some(ROTATED), None);
    within(
        "the token reload",
        proxy.wait_stderr("token changed on disk"),
    )
    .await;
    let stdout = proxy.stdout();
    let stderr = finish(proxy).await;
    assert_no_token(&stderr);
    assert_no_token(&stdout);
}

#[tokio::test]
async fn the_access_log_writes_one_line_per_request_with_method_path_status_bytes_and_duration() {
    let (_api, _world, proxy) = setup(
        TOKEN,
        &["--shutdown-delay=0s", "--access-log", "--log-format=json"],
        &[],
    )
    .await;
    let mut expected: Vec<(&str, String, u64, u64)> = Vec::new();
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200);
    expected.push(("GET", PODS.into(), 200, resp.body.len() as u64));
    let resp = client::get(&proxy.url("/bytes?n=100000")).await;
    assert_eq!(resp.body.len(), 100_000);
    expected.push(("GET", "/bytes".into(), 200, 100_000));
    let resp = client::send("POST", &proxy.url("/echo/post"), &[], "a body").await;
    assert_eq!(resp.status, 200);
    expected.push(("POST", "/echo/post".into(), 200, resp.body.len() as u64));
    let resp = client::get(&proxy.url("/no/such/thing")).await;
    assert_eq!(resp.status, 404);
    expected.push(("GET", "/no/such/thing".into(), 404, resp.body.len() as u64));
    // Refused by the filter: the proxy's own answer is logged too.
    let resp = client::send("POST", &proxy.url(&format!("{PODS}/p/exec")), &[], "").await;
    assert_eq!(resp.status, 403);
    expected.push((
        "POST",
        format!("{PODS}/p/exec"),
        403,
        resp.body.len() as u64,
    ));
    let resp = client::send("DELETE", &proxy.url(&format!("{PODS}/pod-1")), &[], "").await;
    assert_eq!(resp.status, 200);
    expected.push((
        "DELETE",
        format!("{PODS}/pod-1"),
        200,
        resp.body.len() as u64,
    ));

    let stderr = finish(proxy).await;
    let access: Vec<Value> = json_lines(&stderr)
        .into_iter()
        .filter(|l| l["target"] == "kube_ambassador::access")
        .collect();
    assert_eq!(access.len(), expected.len(), "{access:#?}");
    for (method, path, status, bytes) in &expected {
        let line = access
            .iter()
            .find(|l| l["method"] == *method && l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no access line for {method} {path}: {access:#?}"));
        assert_eq!(line["status"], *status, "{line}");
        let logged = line["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("bytes: {line}"));
        assert_eq!(logged, *bytes, "{line}");
        let duration = line["duration_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("duration: {line}"));
        assert!(duration >= 0.0, "{line}");
        assert!(line["upstream_ms"].is_number(), "{line}");
    }
    // The query string is not part of the logged path.
    assert!(!stderr.contains("n=100000"), "{stderr}");
}

#[tokio::test]
async fn without_access_log_requests_are_not_logged() {
    let (_api, _world, proxy) =
        setup(TOKEN, &["--shutdown-delay=0s", "--log-format=json"], &[]).await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    let stderr = finish(proxy).await;
    let access = json_lines(&stderr)
        .into_iter()
        .filter(|l| l["target"] == "kube_ambassador::access")
        .count();
    assert_eq!(access, 0, "{stderr}");
}

#[tokio::test]
async fn a_token_past_90_percent_of_its_lifetime_gets_a_warning_that_it_was_not_rotated() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // An hour-long token with 100 s left: 97% of its life is over.
    let token = fake_jwt(now - 3500, now + 100);
    let (_api, _world, proxy) =
        setup(&token, &["--shutdown-delay=0s", "--log-format=json"], &[]).await;
    // Stopped at once: the check is made as the proxy starts, not only at the first
    // periodic re-read ten seconds later.
    let stderr = finish(proxy).await;
    let warning = json_lines(&stderr)
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains("close to expiry and has not been rotated")
        })
        .unwrap_or_else(|| panic!("no expiry warning in:\n{stderr}"));
    assert_eq!(warning["level"], "WARN");
    let left = warning["expires_in_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("{warning}"));
    assert!((0..=100).contains(&left), "{warning}");
    assert!(!stderr.contains(&token), "the token reached the logs");
}
