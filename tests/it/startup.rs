//! Start-up of the real binary: exactly one line on stdout (`Starting to serve on
//! ADDR`, with the real port for `--port=0`, bracketed for IPv6), kubectl's message and
//! exit status 1 for a port in use, exit status 1 with a message that says what to do when
//! there is no API server, no token file or an unknown flag, `--help`, and a start-up log
//! line on stderr naming the upstream, the CA source and the token source, never the token.

use crate::support;

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

/// The default service-account directory's line of the "no API server" message: the test
/// machine may itself be a pod.
fn default_sa_line() -> String {
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    if std::path::Path::new(token).exists() {
        format!(
            "  service account: {token} exists (but is used only in a pod, or with \
             --service-account-dir)\n"
        )
    } else {
        format!("  service account: {token} does not exist\n")
    }
}

const NO_SERVER_HEAD: &str = "error: no API server to proxy to. Looked for, in kubectl's order:\n";
const NO_SERVER_TAIL: &str = "  in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set \
     (not running in a pod?)\n";
const NO_SERVER_FIX: &str = "Pass --kubeconfig=FILE (or --context=NAME), run inside a pod, or pass \
     --server=https://HOST:PORT\n";

#[tokio::test]
async fn without_an_api_server_it_exits_1_listing_every_place_looked_in_kubectls_order() {
    let world = World::new();
    let home = world.base().display().to_string();
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--port=0"], &[("HOME", &home)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        format!(
            "{NO_SERVER_HEAD}  --kubeconfig: not given\n  $KUBECONFIG: not set\n  \
             ~/.kube/config: {home}/.kube/config does not exist\n{NO_SERVER_TAIL}{}{NO_SERVER_FIX}",
            default_sa_line()
        )
    );

    // $KUBECONFIG naming files that do not exist, and the home directory not read.
    let list = format!("{home}/a:{home}/b");
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--port=0"], &[("HOME", &home), ("KUBECONFIG", &list)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        format!(
            "{NO_SERVER_HEAD}  --kubeconfig: not given\n  $KUBECONFIG: set to {list}, but no \
             such file exists\n  ~/.kube/config: not read ($KUBECONFIG is set)\n\
             {NO_SERVER_TAIL}{}{NO_SERVER_FIX}",
            default_sa_line()
        )
    );
}

#[tokio::test]
async fn a_kubeconfig_without_current_context_says_so_and_suggests_context() {
    let world = World::new();
    let home = world.base().display().to_string();
    let yaml = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \
                'https://127.0.0.1:1', insecure-skip-tls-verify: true}\ncontexts:\n- name: \
                dev\n  context: {cluster: c}\n- name: prod\n  context: {cluster: c}\n";
    let file = world.kubeconfig_yaml(yaml);
    let file = file.display().to_string();
    // Named with --kubeconfig, and found as ~/.kube/config.
    let arg = format!("--kubeconfig={file}");
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&arg, "--port=0"], &[("HOME", &home)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        format!(
            "{NO_SERVER_HEAD}  --kubeconfig: {file} has no current-context; pass \
             --context=NAME (contexts: dev, prod)\n  $KUBECONFIG: not read (--kubeconfig \
             wins)\n  ~/.kube/config: not read (--kubeconfig wins)\n{NO_SERVER_TAIL}{}\
             {NO_SERVER_FIX}",
            default_sa_line()
        )
    );
    let dot_kube = world.base().join(".kube");
    std::fs::create_dir_all(&dot_kube).unwrap();
    let default = dot_kube.join("config");
    std::fs::write(&default, yaml).unwrap();
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--port=0"], &[("HOME", &home)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        format!(
            "{NO_SERVER_HEAD}  --kubeconfig: not given\n  $KUBECONFIG: not set\n  \
             ~/.kube/config: {} has no current-context; pass --context=NAME (contexts: dev, \
             prod)\n{NO_SERVER_TAIL}{}{NO_SERVER_FIX}",
            default.display(),
            default_sa_line()
        )
    );
}

#[tokio::test]
async fn flag_errors_are_reported_even_without_an_api_server() {
    let world = World::new();
    let home = world.base().display().to_string();
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&["--accept-hosts=(", "--port=0"], &[("HOME", &home)]).await;
    assert_exit_1(status, &stdout, &stderr);
    assert!(
        stderr.starts_with("error: invalid regular expression \"(\" in --accept-hosts: "),
        "{stderr}"
    );
    let (status, stdout, stderr) = Proxy::start_expect_failure(
        &["--address=no-such-host.invalid", "--port=0"],
        &[("HOME", &home)],
    )
    .await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        "error: invalid --address \"no-such-host.invalid\": not an IP address or a resolvable \
         host name\n"
    );
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

/// The long flags `--help` lists under `heading` (up to the next heading).
fn flags_under(help: &str, heading: &str) -> Vec<String> {
    let start = help
        .find(&format!("{heading}:\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?} in:\n{help}"));
    help[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .filter(|_| l.len() > 3 && &l[2..4] == ", ")
                .map_or(l, |_| &l[4..]);
            l.starts_with("--")
                .then(|| l.split([' ', '=', '[']).next().unwrap_or("").to_owned())
        })
        .collect()
}

#[tokio::test]
async fn help_wraps_to_the_terminal_and_lists_kubectls_global_flags() {
    let (status, stdout, _) = Proxy::start_expect_failure(&["--help"], &[("COLUMNS", "80")]).await;
    assert_eq!(status.code(), Some(0));
    let longest = stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(longest <= 80, "a line of {longest} columns in:\n{stdout}");
    assert_eq!(
        flags_under(
            &stdout,
            "kubectl global flags (accepted, no effect on a proxy)"
        ),
        [
            "--cache-dir",
            "--match-server-version",
            "--profile",
            "--profile-output",
            "--vmodule",
            "--log-flush-frequency",
            "--warnings-as-errors"
        ]
    );
    let kubeconfig = flags_under(&stdout, "Kubeconfig options (as kubectl's global flags)");
    for flag in [
        "--username",
        "--password",
        "--token",
        "--kubeconfig",
        "--context",
    ] {
        assert!(
            kubeconfig.iter().any(|f| f == flag),
            "{flag}: {kubeconfig:?}"
        );
    }
    let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("[default: /var/run/secrets/kubernetes.io/serviceaccount]"),
        "{stdout}"
    );
    // Every flag the help mentions exists.
    let all: Vec<String> = [
        "kubectl proxy options",
        "Kubeconfig options (as kubectl's global flags)",
        "kube-ambassador options",
        "kubectl global flags (accepted, no effect on a proxy)",
    ]
    .iter()
    .flat_map(|h| flags_under(&stdout, h))
    .chain(["--help".to_owned(), "--version".to_owned()])
    .collect();
    for word in stdout.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if word.starts_with("--") && word.len() > 2 {
            assert!(
                all.iter().any(|f| f == word),
                "--help names {word}, no such flag"
            );
        }
    }
}

#[tokio::test]
async fn kubectls_global_flags_are_accepted_and_named_once_in_the_log() {
    let (api, world) = api_and_world().await;
    let mut proxy = Proxy::in_cluster(
        &world,
        &api,
        &[
            "--cache-dir=/tmp/kube-cache",
            "--match-server-version",
            "--profile=none",
            "--profile-output=profile.pprof",
            "--vmodule=proxy=4",
            "--log-flush-frequency=5s",
            "--warnings-as-errors=false",
        ],
    )
    .await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    proxy.signal("INT");
    proxy.wait().await;
    let stderr = proxy.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("ignoring")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].ends_with(
            "ignoring --cache-dir=/tmp/kube-cache --match-server-version=true --profile=none \
             --profile-output=profile.pprof --vmodule=proxy=4 --log-flush-frequency=5s \
             --warnings-as-errors=false: kubectl's global flags with no effect on a proxy"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn username_and_password_are_sent_as_basic_auth_and_refused_beside_a_token() {
    let (api, world) = api_and_world().await;
    let server = format!("--server={}", api.url());
    let ca = format!("--certificate-authority={}", world.ca_path().display());
    let home = world.base().display().to_string();
    let mut proxy = Proxy::start(
        &[
            &server,
            &ca,
            "--username=admin",
            "--password=s3cret-pw",
            "--port=0",
        ],
        &[("HOME", &home)],
    )
    .await;
    client::get(&proxy.url("/echo/basic")).await;
    let seen = api.requests();
    let auth = seen
        .last()
        .and_then(|s| s.header("authorization"))
        .map(str::to_owned);
    // base64("admin:s3cret-pw")
    assert_eq!(auth.as_deref(), Some("Basic YWRtaW46czNjcmV0LXB3"));
    proxy.signal("INT");
    proxy.wait().await;
    assert!(
        proxy.stderr().contains("basic auth as \"admin\""),
        "{}",
        proxy.stderr()
    );
    assert!(!proxy.stderr().contains("s3cret-pw"), "{}", proxy.stderr());

    // As client-go's transport: basic auth and a bearer token together are an error.
    let (status, stdout, stderr) = Proxy::start_expect_failure(
        &[
            &server,
            &ca,
            "--username=admin",
            "--password=s3cret-pw",
            "--token=t0k",
            "--port=0",
        ],
        &[("HOME", &home)],
    )
    .await;
    assert_exit_1(status, &stdout, &stderr);
    assert_eq!(
        stderr,
        "error: username/password or bearer token may be set, but not both (basic auth from \
         --username/--password, a token from --token)\n"
    );
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
