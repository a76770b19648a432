//! Start-up of the real binary: exactly one line on stdout (`Starting to serve on
//! ADDR`, with the real port for `--port=0`, bracketed for IPv6), kubectl's message and
//! exit status 1 for a port in use, exit status 1 with a message that says what to do when
//! there is no API server, no token file or an unknown flag, `--help`, and a start-up log
//! line on stderr naming the upstream, the CA source and the token source, never the token.

mod support;

use support::{env_refs, in_cluster_env};

use std::process::ExitStatus;

use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World};

const TOKEN: &str = "startup-sa-token-d07b";
const PODS: &str = "/api/v1/namespaces/default/pods";

async fn api_and_world() -> (FakeApi, World) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::with_sa(TOKEN, &pki.ca_pem(), "default");
    (api, world)
}

fn sa_arg(world: &World) -> String {
    format!("--service-account-dir={}", world.sa_dir().display())
}

fn assert_exit_1(status: ExitStatus, stdout: &str, stderr: &str) {
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "", "nothing may go to stdout on failure");
}

#[tokio::test]
async fn exactly_one_line_goes_to_stdout_and_it_names_the_real_port() {
    let (api, world) = api_and_world().await;
    let mut proxy = Proxy::in_cluster(&world, &api, &[]).await;
    let addr = proxy.socket_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "--port=0 must print the port chosen");
    // It serves on exactly that address.
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    proxy.signal("INT");
    let status = proxy.wait().await;
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    assert_eq!(
        proxy.stdout(),
        format!("Starting to serve on 127.0.0.1:{}\n", addr.port()),
        "stdout must hold the start-up line and nothing else"
    );
}

#[tokio::test]
async fn every_worker_thread_setting_serves_gets_watches_and_exits_cleanly() {
    // 1 is tokio's current-thread runtime, 0 and 2 its multi-thread one.
    for threads in [
        "--worker-threads=1",
        "--worker-threads=0",
        "--worker-threads=2",
    ] {
        let (api, world) = api_and_world().await;
        let mut proxy = Proxy::in_cluster(&world, &api, &[threads]).await;
        let mut watch = support::open_watch(
            &api,
            &proxy.url(&format!("{PODS}?watch=1&resourceVersion=1")),
        )
        .await;
        let url = proxy.url(PODS);
        let gets = (0..8).map(|_| client::get(&url));
        for resp in futures::future::join_all(gets).await {
            assert_eq!(resp.status, 200, "{threads}: {}", resp.text());
        }
        api.send_watch_event("ADDED", "threads");
        let event = support::within("the watch event", watch.next_line()).await;
        let event = event.unwrap_or_else(|| panic!("{threads}: the watch ended"));
        assert!(event.contains("threads"), "{threads}: {event}");
        proxy.signal("INT");
        let status = proxy.wait().await;
        assert!(
            status.success(),
            "{threads}: {status:?}\n{}",
            proxy.stderr()
        );
    }
}

#[tokio::test]
async fn an_ipv6_address_with_or_without_brackets_is_printed_bracketed_and_served() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let (api, world) = api_and_world().await;
    for address in ["--address=::1", "--address=[::1]"] {
        let proxy = Proxy::in_cluster(&world, &api, &[address]).await;
        let addr = proxy.socket_addr();
        assert!(
            addr.ip().is_loopback() && addr.is_ipv6(),
            "{address}: {addr}"
        );
        proxy
            .wait_stdout(&format!("Starting to serve on [::1]:{}\n", addr.port()))
            .await;
        assert_eq!(proxy.stdout().lines().count(), 1, "{address}");
        // The client's Host is `[::1]:PORT`, which the default filter accepts.
        let resp = client::get(&proxy.url(PODS)).await;
        assert_eq!(resp.status, 200, "{address}: {}", resp.text());
        assert_eq!(resp.json()["kind"], "PodList");
    }
}

#[tokio::test]
async fn a_port_in_use_fails_with_kubectls_message_and_exit_status_1() {
    let (api, world) = api_and_world().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let sa = sa_arg(&world);
    let port_arg = format!("--port={port}");
    let env = in_cluster_env(&api, &world);
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&sa, &port_arg], &env_refs(&env)).await;
    assert_exit_1(status, &stdout, &stderr);
    assert!(
        stderr.contains(&format!(
            "error: listen tcp 127.0.0.1:{port}: bind: address already in use"
        )),
        "{stderr}"
    );
    drop(busy);
}

#[tokio::test]
async fn without_an_api_server_it_exits_1_naming_the_in_cluster_variables_and_server() {
    let world = World::new();
    let home = world.base().display().to_string();
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--port=0"], &[("HOME", &home)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert!(stderr.contains("KUBERNETES_SERVICE_HOST"), "{stderr}");
    assert!(stderr.contains("--server"), "{stderr}");
}

#[tokio::test]
async fn a_missing_token_file_exits_1_naming_its_path() {
    let (api, _) = api_and_world().await;
    let world = World::new();
    std::fs::write(world.ca_path(), api.pki().ca_pem()).unwrap();
    let sa = sa_arg(&world);
    let env = in_cluster_env(&api, &world);
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&sa, "--port=0"], &env_refs(&env)).await;
    assert_exit_1(status, &stdout, &stderr);
    let path = world.token_path().display().to_string();
    assert!(stderr.contains(&path), "{stderr}");
}

#[tokio::test]
async fn an_unknown_flag_exits_1_naming_it() {
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--no-such-flag", "--port=0"], &[]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[tokio::test]
async fn help_exits_0_and_lists_the_filter_flags() {
    let (status, stdout, _stderr) = Proxy::start_expect_failure(&["--help"], &[]).await;
    assert_eq!(status.code(), Some(0));
    for flag in [
        "--accept-hosts",
        "--reject-paths",
        "--disable-filter",
        "--port",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
    assert!(!stdout.contains("Starting to serve"), "{stdout}");
}

/// The stderr line announcing the start (the one naming the upstream).
async fn startup_line(proxy: &Proxy, upstream: &str) -> String {
    proxy.wait_stderr(upstream).await;
    proxy
        .stderr()
        .lines()
        .find(|l| l.contains(upstream))
        .expect("a line naming the upstream")
        .to_owned()
}

#[tokio::test]
async fn the_startup_log_names_upstream_ca_and_token_file_but_never_the_token() {
    let (api, world) = api_and_world().await;
    let mut proxy = Proxy::in_cluster_with_env(&world, &api, &[], &[("RUST_LOG", "trace")]).await;
    let upstream = format!("https://127.0.0.1:{}", api.port());
    let line = startup_line(&proxy, &upstream).await;
    let ca = world.ca_path().display().to_string();
    let token = world.token_path().display().to_string();
    assert!(line.contains(&ca), "the CA source is not named: {line}");
    assert!(
        line.contains(&token),
        "the token source is not named: {line}"
    );

    // Not at start-up, not while forwarding, not at shutdown, even at trace level.
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    proxy.signal("INT");
    proxy.wait().await;
    let all = format!("{}{}", proxy.stdout(), proxy.stderr());
    assert!(!all.contains(TOKEN), "the token reached the output:\n{all}");
}

#[tokio::test]
async fn the_startup_log_names_a_token_flag_as_its_source_but_never_its_value() {
    let (api, world) = api_and_world().await;
    let server = format!("--server={}", api.url());
    let ca = format!("--certificate-authority={}", world.ca_path().display());
    let token = format!("--token={TOKEN}");
    let home = world.base().display().to_string();
    let mut proxy = Proxy::start(&[&server, &ca, &token, "--port=0"], &[("HOME", &home)]).await;
    let line = startup_line(&proxy, &api.url()).await;
    assert!(
        line.contains("--token"),
        "the token source is not named: {line}"
    );
    assert!(
        line.contains(&world.ca_path().display().to_string()),
        "the CA source is not named: {line}"
    );

    let resp = client::get(&proxy.url("/echo/startup")).await;
    assert_eq!(resp.json()["token"], TOKEN, "the flag's token is used");
    proxy.signal("INT");
    proxy.wait().await;
    let all = format!("{}{}", proxy.stdout(), proxy.stderr());
    assert!(!all.contains(TOKEN), "the token reached the output:\n{all}");
}
