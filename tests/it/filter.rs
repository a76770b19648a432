//! The request filter through the real binary: kubectl's default outcome table (plus the
//! deliberate `[::1]` fix), `--reject-methods` and an empty `--reject-paths`, kubectl's
//! exact 403, percent-encoded paths judged decoded, unclean paths answered with kubectl's
//! 301 (escapes kept as sent), a malformed escape refused with 400, `--disable-filter`
//! with kubectl's warning, and the API prefix. A refused request never reaches the API
//! server.

use crate::support;

use support::client::RawResp as Raw;

use support::client;
use support::{FakeApi, Proxy, World};

const TOKEN: &str = "filter-sa-token-0b3f";
const P: &str = "/api/v1/namespaces/default/pods";

async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    support::in_cluster_setup(TOKEN, extra_args).await
}

/// Sends `METHOD target` with `Host: host` (and an empty body) on a fresh connection.
async fn request(proxy: &Proxy, method: &str, target: &str, host: &str) -> Raw {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Raw::parse(&client::raw(proxy.socket_addr(), req.as_bytes()).await)
}

/// kubectl's refusal, exactly.
fn assert_forbidden(resp: &Raw, what: &str) {
    assert_eq!(
        resp.status_line, "HTTP/1.1 403 Forbidden",
        "{what}: {resp:?}"
    );
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{what}"
    );
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(resp.body, "Forbidden\n", "{what}");
}

/// Runs `cases` (method, target, host, accepted?) one by one: an accepted request must
/// reach the API server exactly as sent, a rejected one must get kubectl's 403 and reach
/// nothing.
async fn check_table(api: &FakeApi, proxy: &Proxy, cases: &[(&str, String, &str, bool)]) {
    for (method, target, host, accepted) in cases {
        let what = format!("{method} {target} (Host: {host})");
        api.clear_requests();
        let resp = request(proxy, method, target, host).await;
        let seen = api.requests();
        if *accepted {
            assert_ne!(resp.status, 403, "{what} was refused");
            assert_eq!(seen.len(), 1, "{what}: {seen:?}");
            assert_eq!(seen[0].method, *method, "{what}");
            assert_eq!(seen[0].uri, *target, "{what}");
        } else {
            assert_forbidden(&resp, &what);
            assert!(seen.is_empty(), "{what} reached the API server: {seen:?}");
        }
    }
}

#[tokio::test]
async fn the_default_filter_decides_kubectls_outcome_table() {
    let (api, _world, proxy) = setup(&[]).await;
    let p = |rest: &str| format!("{P}{rest}");
    let cases: &[(&str, String, &str, bool)] = &[
        // kubectl's table has `GET ""`; on the wire the empty path is `/`.
        ("GET", "/".into(), "127.0.0.1", true),
        ("GET", "/api/v1/pods".into(), "127.0.0.1", true),
        ("GET", "/api/v1/pods".into(), "localhost", true),
        ("GET", p("/foo"), "127.0.0.1", true),
        ("GET", p("/attachfoo"), "localhost", true),
        ("GET", p("/execfoo"), "localhost", true),
        ("GET", "/ui".into(), "localhost", true),
        ("POST", "/api/v1/pods".into(), "localhost", true),
        ("PUT", p("/somepod"), "localhost", true),
        ("PATCH", p("/somepod"), "localhost", true),
        ("GET", p("/foo/exec"), "127.0.0.1", false),
        ("GET", p("/foo/attach"), "127.0.0.1", false),
        ("POST", p("/somepod/exec"), "localhost", false),
        ("GET", "/api/v1/pods".into(), "evil.com", false),
        ("GET", "/api/v1/pods".into(), "localhost.evil.com", false),
        ("GET", "/api/v1/pods".into(), "127a0b0c1", false),
        // The port is not part of what is matched.
        ("GET", "/api/v1/pods".into(), "localhost:8001", true),
        ("GET", "/api/v1/pods".into(), "127.0.0.1:8001", true),
        ("GET", "/api/v1/pods".into(), "evil.com:8001", false),
        // Deliberate difference 1: kubectl refuses its own default `^\[::1\]$`.
        ("GET", "/api/v1/pods".into(), "[::1]:8001", true),
        ("GET", "/api/v1/pods".into(), "[::1]", true),
        // Matching is case-sensitive, as in kubectl.
        ("GET", "/api/v1/pods".into(), "LOCALHOST", false),
    ];
    check_table(&api, &proxy, cases).await;
}

#[tokio::test]
async fn reject_methods_refuses_the_listed_methods_and_nothing_else() {
    let (api, _world, proxy) = setup(&["--reject-methods=POST,PUT,PATCH"]).await;
    let somepod = format!("{P}/somepod");
    let cases: &[(&str, String, &str, bool)] = &[
        ("POST", "/api/v1/pods".into(), "localhost", false),
        ("PUT", somepod.clone(), "localhost", false),
        ("PATCH", somepod.clone(), "localhost", false),
        ("GET", somepod.clone(), "localhost", true),
        ("DELETE", somepod.clone(), "localhost", true),
    ];
    check_table(&api, &proxy, cases).await;
}

#[tokio::test]
async fn an_empty_reject_paths_lets_exec_and_attach_through() {
    let (api, _world, proxy) = setup(&["--reject-paths="]).await;
    let cases: &[(&str, String, &str, bool)] = &[
        ("POST", format!("{P}/somepod/exec"), "localhost", true),
        ("GET", format!("{P}/foo/attach"), "127.0.0.1", true),
        // The host check still applies.
        ("POST", format!("{P}/somepod/exec"), "evil.com", false),
    ];
    check_table(&api, &proxy, cases).await;
}

#[tokio::test]
async fn a_percent_encoded_exec_path_is_refused_like_the_plain_one() {
    let (api, _world, proxy) = setup(&[]).await;
    for target in [
        format!("{P}/x%2Fexec"),
        format!("{P}/x%2fattach"),
        format!("{P}/x/%65xec"),
        format!("{P}%2Fx%2Fexec"),
    ] {
        let resp = request(&proxy, "GET", &target, "localhost").await;
        assert_forbidden(&resp, &target);
    }
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[tokio::test]
async fn unclean_paths_are_redirected_to_the_clean_path_with_query_and_escapes_kept() {
    let (api, _world, proxy) = setup(&[]).await;
    let cases = [
        ("/api//v1/pods%2Fexec?a=%2F", "/api/v1/pods%2Fexec?a=%2F"),
        ("/api/./v1/namespaces", "/api/v1/namespaces"),
        ("/api/v1/../v1/pods?watch=1", "/api/v1/pods?watch=1"),
        ("//api/v1/pods/", "/api/v1/pods/"),
        // Cleaning comes before the filter, as in kubectl: `.` cannot hide `exec`, and the
        // redirect target is then refused on its own merits.
        (
            "/api/v1/namespaces/default/pods/x/./exec",
            "/api/v1/namespaces/default/pods/x/exec",
        ),
    ];
    for (target, clean) in cases {
        let resp = request(&proxy, "GET", target, "localhost").await;
        assert_eq!(
            resp.status_line, "HTTP/1.1 301 Moved Permanently",
            "{target}"
        );
        assert_eq!(resp.header("location"), Some(clean), "{target}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{target}"
        );
        assert_eq!(
            resp.body,
            format!("<a href=\"{clean}\">Moved Permanently</a>.\n\n"),
            "{target}"
        );
    }
    // Other methods get the bare redirect, as from Go's http.Redirect.
    let resp = request(&proxy, "POST", "/api//v1/pods", "localhost").await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/api/v1/pods"));
    assert_eq!(resp.body, "");
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    let resp = request(
        &proxy,
        "GET",
        "/api/v1/namespaces/default/pods/x/exec",
        "localhost",
    )
    .await;
    assert_forbidden(&resp, "the clean exec path");
}

#[tokio::test]
async fn a_malformed_percent_escape_in_the_path_is_a_400() {
    let (api, _world, proxy) = setup(&[]).await;
    for target in [format!("{P}/na%zzme"), format!("{P}/x%2")] {
        let resp = request(&proxy, "GET", &target, "localhost").await;
        assert_eq!(resp.status, 400, "{target}: {resp:?}");
    }
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[tokio::test]
async fn disable_filter_accepts_exec_and_any_host_and_warns_like_kubectl() {
    let (api, _world, proxy) = setup(&["--disable-filter"]).await;
    let cases: &[(&str, String, &str, bool)] = &[
        ("POST", format!("{P}/somepod/exec"), "localhost", true),
        ("GET", format!("{P}/foo/attach"), "evil.com", true),
        ("GET", "/api/v1/pods".into(), "localhost.evil.com", true),
    ];
    check_table(&api, &proxy, cases).await;
    proxy
        .wait_stderr(
            "Request filter disabled, your proxy is vulnerable to XSRF attacks, please be cautious",
        )
        .await;
}

#[tokio::test]
async fn the_default_filter_prints_no_xsrf_warning() {
    let (_api, _world, mut proxy) = setup(&[]).await;
    proxy.signal("INT");
    proxy.wait().await;
    assert!(
        !proxy.stderr().contains("Request filter disabled"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn the_api_prefix_is_stripped_before_the_filter_and_anything_outside_it_is_a_404() {
    let (api, _world, proxy) = setup(&["--api-prefix=/custom"]).await;
    let resp = request(&proxy, "GET", "/custom/api/v1/pods/?limit=1", "localhost").await;
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "the API server's answer: {resp:?}"
    );
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/api/v1/pods/?limit=1");

    api.clear_requests();
    for target in ["/api/v1/pods/", "/metrics", "/customer/api"] {
        let resp = request(&proxy, "GET", target, "localhost").await;
        assert_eq!(resp.status_line, "HTTP/1.1 404 Not Found", "{target}");
        assert_eq!(resp.body, "404 page not found\n", "{target}");
    }
    let resp = request(&proxy, "GET", &format!("/custom{P}/x/exec"), "localhost").await;
    assert_forbidden(&resp, "exec below the prefix");
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    // A prefix starting with `/api` is not stripped.
    let (api, _world, proxy) = setup(&["--api-prefix=/api"]).await;
    let resp = request(&proxy, "GET", "/api/v1/pods/", "localhost").await;
    assert_ne!(resp.status, 403, "{resp:?}");
    assert_eq!(api.requests()[0].uri, "/api/v1/pods/");
    let resp = request(&proxy, "GET", "/metrics", "localhost").await;
    assert_eq!(resp.body, "404 page not found\n");
    assert_eq!(api.requests().len(), 1);
}
