//! The local side of the proxy through the real binary: static files (`--www`,
//! `--www-prefix`) served as kubectl's Go file server does and never filtered, a unix
//! socket (`--unix-socket`: mode 0700, no `X-Forwarded-For`, stale socket replaced,
//! anything else refused, removed at exit), the server URL's path
//! (`--append-server-path`, or a warning), and kubectl's API-prefix table with the mux's
//! redirect of a prefix named without its trailing slash.

use crate::support;

use support::{env_refs, in_cluster_env};

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, ProxyAddr, World};

const TOKEN: &str = "local-sa-token-5c21";
const PODS: &str = "/api/v1/namespaces/default/pods";

async fn api_and_world() -> (FakeApi, World) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    (api, world)
}

/// A site under `world`: `index.html`, `hello.txt`, `app.js`, `sub/index.html`, a
/// `secret` beside the site, and a symlink to it from inside.
fn site(world: &World) -> PathBuf {
    let dir = world.base().join("site");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("app.js"), "console.log(1)\n").unwrap();
    std::fs::write(dir.join("sub").join("index.html"), "<p>sub</p>\n").unwrap();
    std::fs::write(world.base().join("secret"), "do not serve\n").unwrap();
    std::os::unix::fs::symlink(world.base().join("secret"), dir.join("leak")).unwrap();
    dir
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn static_files_are_served_like_gos_file_server_and_the_api_still_works() {
    let (api, world) = api_and_world().await;
    let dir = site(&world);
    let proxy = Proxy::in_cluster(&world, &api, &[&arg("www", &dir)]).await;

    let resp = client::get(&proxy.url("/static/hello.txt")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello\n");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.header("content-length").as_deref(), Some("6"));
    assert!(resp.header("last-modified").is_some(), "{resp:?}");
    let resp = client::get(&proxy.url("/static/app.js")).await;
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );

    // A directory serves its index.html.
    let resp = client::get(&proxy.url("/static/")).await;
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "<h1>home</h1>\n".into())
    );
    let resp = client::get(&proxy.url("/static/sub/")).await;
    assert_eq!(resp.text(), "<p>sub</p>\n");

    // Go's redirects: the prefix root (mux), a directory without its slash and
    // index.html (file server, relative).
    for (target, location) in [
        ("/static", "/static/"),
        ("/static?x=1", "/static/?x=1"),
        ("/static/sub", "sub/"),
        ("/static/index.html", "./"),
        ("/static/sub/index.html", "./"),
        ("/static/hello.txt/", "../hello.txt"),
    ] {
        let resp = client::get(&proxy.url(target)).await;
        assert_eq!(resp.status, 301, "{target}: {resp:?}");
        assert_eq!(
            resp.header("location").as_deref(),
            Some(location),
            "{target}"
        );
    }

    // Missing, and anything that would leave the directory.
    for target in [
        "/static/missing.txt",
        "/static/%2e%2e/secret",
        "/static/sub/%2E%2E/%2e%2e/secret",
        "/static/leak",
    ] {
        let resp = client::get(&proxy.url(target)).await;
        assert_eq!(resp.status, 404, "{target}");
        assert_eq!(resp.text(), "404 page not found\n", "{target}");
    }
    // A literal `..` is cleaned by the mux first (301 inside the prefix, or out of it).
    let resp = client::get(&proxy.url("/static/sub/../hello.txt")).await;
    assert_eq!(resp.status, 301);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("/static/hello.txt")
    );

    let head = client::raw(
        proxy.socket_addr(),
        b"HEAD /static/hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 6\r\n"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head:?}"
    );

    let resp = client::send("POST", &proxy.url("/static/hello.txt"), &[], "x").await;
    assert_eq!(resp.status, 405);

    // None of that reached the API server; the API is still served beside it.
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(api.requests()[0].path, PODS);
}

#[tokio::test]
async fn the_filter_does_not_apply_to_static_files() {
    let (api, world) = api_and_world().await;
    let dir = site(&world);
    let proxy = Proxy::in_cluster(&world, &api, &[&arg("www", &dir)]).await;
    let evil = [("Host", "evil.com")];
    let resp = client::get_with(&proxy.url("/static/hello.txt"), &evil).await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "hello\n".into()));
    let resp = client::get_with(&proxy.url(PODS), &evil).await;
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (403, "Forbidden\n".into())
    );
}

#[tokio::test]
async fn a_large_static_file_arrives_intact() {
    let (api, world) = api_and_world().await;
    let dir = site(&world);
    let data = fake_apiserver::pattern_bytes(5 * 1024 * 1024 + 3);
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    let proxy = Proxy::in_cluster(&world, &api, &[&arg("www", &dir)]).await;
    let resp = client::get(&proxy.url("/static/big.bin")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        resp.header("content-length").as_deref(),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(resp.body.len(), data.len());
    assert!(resp.body == data, "the bytes differ");
}

#[tokio::test]
async fn the_longer_of_the_two_prefixes_wins() {
    let (api, world) = api_and_world().await;
    let dir = site(&world);
    // Static files at the root, the API below /custom/.
    let proxy = Proxy::in_cluster(
        &world,
        &api,
        &[&arg("www", &dir), "--www-prefix=/", "--api-prefix=/custom/"],
    )
    .await;
    let resp = client::get(&proxy.url("/hello.txt")).await;
    assert_eq!(resp.text(), "hello\n");
    let resp = client::get(&proxy.url("/")).await;
    assert_eq!(resp.text(), "<h1>home</h1>\n");
    let resp = client::get(&proxy.url(&format!("/custom{PODS}"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(api.requests()[0].path, PODS);
    let resp = client::get(&proxy.url("/custom")).await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location").as_deref(), Some("/custom/"));

    // A custom static prefix: what is not under it is the API's.
    api.clear_requests();
    let proxy = Proxy::in_cluster(&world, &api, &[&arg("www", &dir), "-P", "/ui"]).await;
    assert_eq!(
        client::get(&proxy.url("/ui/hello.txt")).await.text(),
        "hello\n"
    );
    let resp = client::get(&proxy.url("/static/hello.txt")).await;
    assert_eq!(api.requests()[0].path, "/static/hello.txt", "{resp:?}");
}

#[tokio::test]
async fn without_www_the_static_prefix_is_just_an_api_path() {
    let (api, world) = api_and_world().await;
    let proxy = Proxy::in_cluster(&world, &api, &["--www-prefix=/"]).await;
    client::get(&proxy.url("/static/x")).await;
    assert_eq!(api.requests()[0].path, "/static/x");
}

#[tokio::test]
async fn equal_www_and_api_prefixes_are_an_error_not_a_panic() {
    let (api, world) = api_and_world().await;
    let dir = site(&world);
    let env = in_cluster_env(&api, &world);
    let sa = arg("service-account-dir", &world.sa_dir());
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&sa, &arg("www", &dir), "-P", "/"], &env_refs(&env)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("error: --www-prefix and --api-prefix must differ (both are \"/\")"),
        "{stderr}"
    );
    let (status, _, stderr) = Proxy::start_expect_failure(
        &[
            &sa,
            &arg("www", &dir),
            "--www-prefix=/x",
            "--api-prefix=/x/",
        ],
        &env_refs(&env),
    )
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("(both are \"/x/\")"), "{stderr}");
}

/// Starts the proxy on a unix socket in `world` (no `--port`, which would conflict).
async fn on_socket(api: &FakeApi, world: &World, extra: &[&str]) -> (Proxy, PathBuf) {
    let path = world.base().join("proxy.sock");
    let mut all = vec![
        arg("service-account-dir", &world.sa_dir()),
        arg("unix-socket", &path),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    let env = in_cluster_env(api, world);
    let proxy = Proxy::start(&args(&all), &env_refs(&env)).await;
    (proxy, path)
}

#[tokio::test]
async fn a_unix_socket_is_private_has_no_forwarded_for_and_is_removed_at_exit() {
    let (api, world) = api_and_world().await;
    let (mut proxy, path) = on_socket(&api, &world, &["--disable-filter"]).await;
    assert_eq!(proxy.addr, ProxyAddr::Unix(path.clone()));
    // The address is parsed before the captured text is appended to.
    proxy.wait_stdout("\n").await;
    assert_eq!(
        proxy.stdout(),
        format!("Starting to serve on {}\n", path.display())
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "socket mode {mode:o}");

    let resp = client::send_unix(&path, "GET", PODS, &[], "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = client::send_unix(&path, "GET", "/echo/unix", &[], "").await;
    let seen = api.wait_for_request(|s| s.path == "/echo/unix").await;
    assert_eq!(seen.header("x-forwarded-for"), None, "{:?}", resp.json());
    assert_eq!(resp.json()["token"], TOKEN);
    let raw = client::raw_unix(
        &path,
        b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 "), "{raw}");

    // kubectl prints no XSRF warning for a socket: no web page can reach it.
    assert!(
        !proxy.stderr().contains("Request filter disabled"),
        "{}",
        proxy.stderr()
    );
    proxy.signal("INT");
    assert!(proxy.wait().await.success(), "{}", proxy.stderr());
    assert!(!path.exists(), "the socket file is left behind");
}

#[tokio::test]
async fn the_filter_still_guards_a_unix_socket() {
    let (api, world) = api_and_world().await;
    let (_proxy, path) = on_socket(&api, &world, &[]).await;
    let resp = client::send_unix(&path, "GET", PODS, &[("Host", "evil.com")], "").await;
    assert_eq!(resp.status, 403);
    let resp = client::send_unix(&path, "POST", &format!("{PODS}/x/exec"), &[], "").await;
    assert_eq!(resp.status, 403);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_anything_else_is_refused() {
    let (api, world) = api_and_world().await;
    let path = world.base().join("proxy.sock");
    // A socket left behind by a process that is gone (std leaves the file).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (proxy, same) = on_socket(&api, &world, &[]).await;
    assert_eq!(same, path);
    assert_eq!(
        client::send_unix(&path, "GET", PODS, &[], "").await.status,
        200
    );

    // A live socket is not stolen.
    let env = in_cluster_env(&api, &world);
    let sa = arg("service-account-dir", &world.sa_dir());
    let sock = arg("unix-socket", &path);
    let (status, _, stderr) = Proxy::start_expect_failure(&[&sa, &sock], &env_refs(&env)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: listen unix {}: bind: address already in use",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        client::send_unix(&path, "GET", PODS, &[], "").await.status,
        200,
        "the first proxy still serves"
    );
    drop(proxy);

    // Not a socket: never touched.
    let file = world.file("not-a-socket", "data\n");
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&sa, &arg("unix-socket", &file)], &env_refs(&env)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "error: listen unix {}: bind: address already in use (a regular file",
            file.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data\n");
}

#[tokio::test]
async fn unix_socket_and_a_port_together_are_kubectls_error() {
    let (api, world) = api_and_world().await;
    let env = in_cluster_env(&api, &world);
    let sa = arg("service-account-dir", &world.sa_dir());
    let sock = arg("unix-socket", &world.base().join("s.sock"));
    let (status, _, stderr) =
        Proxy::start_expect_failure(&[&sa, &sock, "--port=9000"], &env_refs(&env)).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("error: cannot set --unix-socket and --port at the same time"),
        "{stderr}"
    );
    assert!(!world.base().join("s.sock").exists());
    // kubectl compares with its default: an explicit --port=8001 is allowed.
    let path = world.base().join("p.sock");
    let all = [sa.clone(), arg("unix-socket", &path), "--port=8001".into()];
    let proxy = Proxy::start(&args(&all), &env_refs(&env)).await;
    assert_eq!(proxy.addr, ProxyAddr::Unix(path));
}

/// The proxy with `--server` set to the fake API with a path, the CA and token from the
/// service-account directory.
async fn with_server_path(api: &FakeApi, world: &World, extra: &[&str]) -> Proxy {
    let mut all = vec![
        arg("service-account-dir", &world.sa_dir()),
        format!("--server=https://127.0.0.1:{}/k8s/clusters/c1", api.port()),
        "--port=0".to_owned(),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    let env = [("HOME", world.base().to_str().unwrap())];
    Proxy::start(&args(&all), &env).await
}

#[tokio::test]
async fn a_server_path_is_only_appended_with_append_server_path() {
    let (api, world) = api_and_world().await;
    let proxy = with_server_path(&api, &world, &[]).await;
    proxy
        .wait_stderr(
            "Your kube context contains a server path /k8s/clusters/c1, use \
             --append-server-path to automatically append the path to each request",
        )
        .await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(api.requests()[0].uri, PODS);

    // kubectl's table: /custom/ + --append-server-path.
    api.clear_requests();
    let proxy = with_server_path(
        &api,
        &world,
        &["--append-server-path", "--api-prefix=/custom/"],
    )
    .await;
    client::get(&proxy.url("/custom/api/v1/pods?limit=1")).await;
    assert_eq!(
        api.requests()[0].uri,
        "/k8s/clusters/c1/api/v1/pods?limit=1"
    );
    assert!(
        !proxy
            .stderr()
            .contains("Your kube context contains a server path"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn kubectls_api_prefix_table() {
    let (api, world) = api_and_world().await;
    // (prefix, request, what the API server sees or None for the proxy's own 404)
    let table: [(&str, &str, Option<&str>); 7] = [
        ("/", "/metrics", Some("/metrics")),
        ("/", "/api/v1/pods/", Some("/api/v1/pods/")),
        ("/api/", "/metrics", None),
        ("/api/", "/api/v1/pods/", Some("/api/v1/pods/")),
        ("/custom/", "/metrics", None),
        ("/custom/", "/api/v1/pods/", None),
        ("/custom/", "/custom/api/v1/pods/", Some("/api/v1/pods/")),
    ];
    for (prefix, target, upstream) in table {
        api.clear_requests();
        let flag = format!("--api-prefix={prefix}");
        let proxy = Proxy::in_cluster(&world, &api, &[&flag]).await;
        let resp = client::get(&proxy.url(target)).await;
        match upstream {
            Some(path) => {
                let seen = api.requests();
                assert_eq!(seen.len(), 1, "{prefix} {target}: {resp:?}");
                assert_eq!(seen[0].uri, path, "{prefix} {target}");
            }
            None => {
                assert_eq!(resp.status, 404, "{prefix} {target}");
                assert_eq!(resp.text(), "404 page not found\n", "{prefix} {target}");
                assert!(api.requests().is_empty(), "{prefix} {target}");
            }
        }
    }
}

#[tokio::test]
async fn a_prefix_without_its_trailing_slash_is_redirected_like_the_mux() {
    let (api, world) = api_and_world().await;
    let proxy = Proxy::in_cluster(&world, &api, &["--api-prefix=/custom"]).await;
    for (target, location) in [
        ("/custom", "/custom/"),
        ("/custom?watch=1", "/custom/?watch=1"),
        ("/x/../custom", "/custom/"),
    ] {
        let resp = client::get(&proxy.url(target)).await;
        assert_eq!(resp.status, 301, "{target}: {resp:?}");
        assert_eq!(
            resp.header("location").as_deref(),
            Some(location),
            "{target}"
        );
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
    }
    client::get(&proxy.url("/custom/")).await;
    assert_eq!(api.requests()[0].uri, "/");
    let proxy = Proxy::in_cluster(&world, &api, &["--api-prefix=/api"]).await;
    let resp = client::get(&proxy.url("/api")).await;
    assert_eq!(resp.header("location").as_deref(), Some("/api/"));
}
