//! Kubeconfig through the real binary, as kubectl loads it: `--kubeconfig`, else the
//! `KUBECONFIG` list merged (the first file to define a name or `current-context` wins,
//! missing files skipped), else `~/.kube/config`, else in-cluster; `--context`,
//! `--cluster`, `--user` choose; `--server`, `--token`, `--certificate-authority`,
//! `--insecure-skip-tls-verify`, `--tls-server-name` override; relative paths are
//! relative to their file. Cluster settings (`certificate-authority-data`,
//! `insecure-skip-tls-verify`, `tls-server-name`, a server path, `disable-compression`),
//! user settings (`token`, `tokenFile` re-read on change, `username`/`password`,
//! impersonation) and the flags `--as*`, `--disable-compression`, `--request-timeout`.
//! Every test checks that no secret reaches the proxy's stderr.

use crate::support;

use support::{assert_no_secrets, echoed_token, path_str, status_message};

use std::path::{Path, PathBuf};

use fake_apiserver::base64;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, Resp, World, within};

const PODS: &str = "/api/v1/namespaces/default/pods";

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string to JSON")
}

/// One `key: "value"` line of a cluster or user entry.
fn field(key: &str, value: impl AsRef<str>) -> String {
    format!("    {key}: {}\n", q(value))
}

/// A kubeconfig with one cluster, user and context, all named `main`, and `main` current.
/// `cluster` and `user` are field lines (see [`field`]).
fn single(server: &str, cluster: &str, user: &str) -> String {
    let user = if user.is_empty() { "    {}\n" } else { user };
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: main\nclusters:\n- name: main\n  cluster:\n\
         {}{cluster}users:\n- name: main\n  user:\n{user}contexts:\n- name: main\n  context:\n    \
         cluster: main\n    user: main\n",
        field("server", server)
    )
}

/// Writes `content` at `path`, creating its directory.
fn write(path: &Path, content: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    std::fs::write(path, content).expect("write file");
    path.to_owned()
}

/// A fake API server accepting `tokens`, and its PKI.
async fn start_api(tokens: &[&str]) -> (FakeApi, Pki) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(tokens)).await;
    (api, pki)
}

/// Starts the proxy on a free port with a scratch `HOME` (no developer kubeconfig can leak
/// in; `KUBECONFIG` and the in-cluster variables are cleared unless `env` sets them).
async fn start(home: &World, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let home = path_str(home.base());
    let mut all_args = vec!["--port=0"];
    all_args.extend_from_slice(args);
    let mut all_env = vec![("HOME", home.as_str())];
    all_env.extend_from_slice(env);
    Proxy::start(&all_args, &all_env).await
}

/// `--kubeconfig=PATH`.
fn kc_arg(path: &Path) -> String {
    format!("--kubeconfig={}", path.display())
}

/// All values of header `name` that the fake API's `/echo` reports.
fn echoed_header(resp: &Resp, name: &str) -> Vec<String> {
    assert_eq!(resp.status, 200, "{}", resp.text());
    support::echoed_headers(&resp.json(), name)
}

// ---------------------------------------------------------------------------------------
// Loading rules

const T_ONE: &str = "kc-token-one-5c1e";
const T_TWO: &str = "kc-token-two-8d2f";

/// Two fake API servers with the same CA, and three kubeconfig files for a `KUBECONFIG`
/// list `one:missing:two:three`:
/// - `one` (in `dir-one/`): cluster `shared` → api1 (CA `ca.crt` next to it), user `u1`
///   with `T_ONE`, context `c1`; no current-context.
/// - `two` (in `dir-two/`): cluster `shared` → api2, cluster `only-two` → api2, user `u2`
///   with `tokenFile: token` (next to it), contexts `c2` (shared, u2) and `c2own`
///   (only-two, u2); current-context `c2`.
/// - `three`: current-context `c1` (too late to count).
struct Merged {
    api1: FakeApi,
    api2: FakeApi,
    home: World,
    list: String,
}

async fn merged() -> Merged {
    let pki = Pki::new();
    let api1 = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[T_ONE, T_TWO])).await;
    let api2 = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[T_ONE, T_TWO])).await;
    let home = World::new();
    let base = home.base().to_owned();
    let one_dir = base.join("dir-one");
    let two_dir = base.join("dir-two");
    write(&one_dir.join("ca.crt"), &pki.ca_pem());
    write(&two_dir.join("ca.crt"), &pki.ca_pem());
    write(&two_dir.join("token"), &format!("{T_TWO}\n"));
    let one = write(
        &one_dir.join("one"),
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: shared\n  cluster:\n{}{}\
             users:\n- name: u1\n  user:\n{}\
             contexts:\n- name: c1\n  context: {{cluster: shared, user: u1}}\n",
            field("server", api1.url()),
            field("certificate-authority", "ca.crt"),
            field("token", T_ONE),
        ),
    );
    let two = write(
        &two_dir.join("two"),
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c2\nclusters:\n\
             - name: shared\n  cluster:\n{}{}\
             - name: only-two\n  cluster:\n{}{}\
             users:\n- name: u2\n  user:\n{}\
             contexts:\n- name: c2\n  context: {{cluster: shared, user: u2}}\n\
             - name: c2own\n  context: {{cluster: only-two, user: u2}}\n",
            field("server", api2.url()),
            field("certificate-authority", "ca.crt"),
            field("server", api2.url()),
            field("certificate-authority", "ca.crt"),
            field("tokenFile", "token"),
        ),
    );
    let three = write(
        &base.join("three"),
        "apiVersion: v1\nkind: Config\ncurrent-context: c1\n",
    );
    let list = std::env::join_paths([one, base.join("missing"), two, three])
        .expect("join paths")
        .to_string_lossy()
        .into_owned();
    Merged {
        api1,
        api2,
        home,
        list,
    }
}

#[tokio::test]
async fn a_kubeconfig_list_merges_with_the_first_definition_of_a_name_and_of_current_context_winning()
 {
    let m = merged().await;
    let proxy = start(&m.home, &[], &[("KUBECONFIG", &m.list)]).await;
    let resp = client::get(&proxy.url("/echo/merged")).await;
    // current-context `c2` (the first file to set one is `two`; `three`'s `c1` loses), and
    // its cluster `shared` is the first file's: api1, with the second file's user.
    assert_eq!(echoed_token(&resp), T_TWO);
    assert_eq!(m.api1.requests().len(), 1);
    assert!(
        m.api2.requests().is_empty(),
        "the second file's `shared` won"
    );
    assert_no_secrets(&proxy, &[T_ONE, T_TWO]);
}

#[tokio::test]
async fn the_context_flag_chooses_a_context_and_cluster_defined_only_in_the_second_file() {
    let m = merged().await;
    let proxy = start(&m.home, &["--context=c2own"], &[("KUBECONFIG", &m.list)]).await;
    let resp = client::get(&proxy.url("/echo/c2own")).await;
    assert_eq!(echoed_token(&resp), T_TWO);
    assert_eq!(m.api2.requests().len(), 1);
    assert!(m.api1.requests().is_empty());

    let proxy = start(&m.home, &["--context=c1"], &[("KUBECONFIG", &m.list)]).await;
    let resp = client::get(&proxy.url("/echo/c1")).await;
    assert_eq!(echoed_token(&resp), T_ONE);
    assert_eq!(m.api1.requests().len(), 1);
    assert_no_secrets(&proxy, &[T_ONE, T_TWO]);
}

#[tokio::test]
async fn relative_certificate_authority_and_token_file_paths_are_relative_to_the_kubeconfig_file() {
    const TOKEN: &str = "kc-relative-token-13ab";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let conf = home.base().join("conf");
    write(&conf.join("certs/ca.crt"), &pki.ca_pem());
    write(&conf.join("secrets/token"), TOKEN);
    let kc = write(
        &conf.join("config"),
        &single(
            &api.url(),
            &field("certificate-authority", "certs/ca.crt"),
            &field("tokenFile", "secrets/token"),
        ),
    );
    // The test's working directory is the crate root, where neither path exists.
    assert!(!Path::new("certs/ca.crt").exists() && !Path::new("secrets/token").exists());
    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    let resp = client::get(&proxy.url("/echo/relative")).await;
    assert_eq!(echoed_token(&resp), TOKEN);
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_context_cluster_or_user_that_does_not_exist_is_an_exit_1_naming_it() {
    let (api, pki) = start_api(&[]).await;
    let home = World::new();
    let ca = home.file("ca.crt", &pki.ca_pem());
    let kc = home.kubeconfig_yaml(&single(
        &api.url(),
        &field("certificate-authority", path_str(&ca)),
        &field("token", "kc-unused-token"),
    ));
    let kc = kc_arg(&kc);
    let home_env = path_str(home.base());
    for (flag, name) in [
        ("--context", "no-such-context"),
        ("--cluster", "no-such-cluster"),
        ("--user", "no-such-user"),
    ] {
        let arg = format!("{flag}={name}");
        let (status, stdout, stderr) =
            Proxy::start_expect_failure(&[&kc, &arg, "--port=0"], &[("HOME", &home_env)]).await;
        assert_eq!(status.code(), Some(1), "{flag}: {stderr}");
        assert_eq!(stdout, "", "{flag}");
        assert!(
            stderr.contains(&format!("{} \"{name}\" not found", &flag[2..])),
            "{flag}: {stderr}"
        );
        assert!(!stderr.contains("kc-unused-token"), "{stderr}");
    }
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn a_context_asked_for_when_there_is_no_kubeconfig_at_all_is_an_exit_1_naming_it() {
    // kubectl refuses an unknown --context even in a pod, rather than ignoring it.
    let (api, pki) = start_api(&["kc-unused-token"]).await;
    let home = World::new();
    let ca = format!(
        "--certificate-authority={}",
        home.file("ca.crt", &pki.ca_pem()).display()
    );
    let port = api.port().to_string();
    let home_env = path_str(home.base());
    let (status, stdout, stderr) = Proxy::start_expect_failure(
        &["--context=prod", &ca, "--token=kc-unused-token", "--port=0"],
        &[
            ("HOME", &home_env),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("context \"prod\" not found"), "{stderr}");
    assert!(!stderr.contains("kc-unused-token"), "{stderr}");
}

#[tokio::test]
async fn a_server_url_with_credentials_is_refused_without_printing_them() {
    let (api, pki) = start_api(&[]).await;
    let home = World::new();
    let kc = home.kubeconfig_yaml(&single(
        &format!("https://admin:kc-s3rv3r-pw@127.0.0.1:{}", api.port()),
        &field(
            "certificate-authority",
            path_str(&home.file("ca.crt", &pki.ca_pem())),
        ),
        "",
    ));
    let home_env = path_str(home.base());
    let (status, _, stderr) =
        Proxy::start_expect_failure(&[&kc_arg(&kc), "--port=0"], &[("HOME", &home_env)]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", api.port())),
        "{stderr}"
    );
    assert!(!stderr.contains("kc-s3rv3r-pw"), "{stderr}");
}

#[tokio::test]
async fn with_no_flags_the_current_context_of_home_kube_config_is_used_even_inside_a_pod() {
    const TOKEN: &str = "kc-home-token-77aa";
    let (api, pki) = start_api(&[TOKEN]).await;
    let (in_cluster, _) = start_api(&[TOKEN]).await;
    let home = World::new();
    let kube = home.base().join(".kube");
    write(&kube.join("ca.crt"), &pki.ca_pem());
    write(
        &kube.join("config"),
        &single(
            &api.url(),
            &field("certificate-authority", "ca.crt"),
            &field("token", TOKEN),
        ),
    );
    let port = in_cluster.port().to_string();
    let proxy = start(
        &home,
        &[],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    let resp = client::get(&proxy.url("/echo/home")).await;
    assert_eq!(echoed_token(&resp), TOKEN);
    assert!(
        in_cluster.requests().is_empty(),
        "a kubeconfig wins over in-cluster"
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn kubeconfig_flag_wins_over_the_kubeconfig_variable_which_wins_over_home() {
    const T_FLAG: &str = "kc-flag-file-token";
    const T_ENV: &str = "kc-env-file-token";
    const T_HOME: &str = "kc-home-file-token";
    let (api, pki) = start_api(&[T_FLAG, T_ENV, T_HOME]).await;
    // Only ~/.kube/config points here.
    let home_api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[T_HOME])).await;
    let home = World::new();
    let ca = path_str(&home.file("ca.crt", &pki.ca_pem()));
    let cluster = field("certificate-authority", &ca);
    let flag_file = home.kubeconfig_yaml(&single(&api.url(), &cluster, &field("token", T_FLAG)));
    let env_file = home.kubeconfig_yaml(&single(&api.url(), &cluster, &field("token", T_ENV)));
    write(
        &home.base().join(".kube/config"),
        &single(&home_api.url(), &cluster, &field("token", T_HOME)),
    );
    let env_file = path_str(&env_file);

    let proxy = start(&home, &[&kc_arg(&flag_file)], &[("KUBECONFIG", &env_file)]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/a")).await),
        T_FLAG
    );
    let proxy = start(&home, &[], &[("KUBECONFIG", &env_file)]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/b")).await),
        T_ENV
    );
    assert!(home_api.requests().is_empty());
    let proxy = start(&home, &[], &[]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/c")).await),
        T_HOME
    );
    assert_eq!(home_api.requests().len(), 1);

    // A KUBECONFIG whose files are all missing is an empty configuration: ~/.kube/config
    // is not consulted (client-go), so only the flags and the pod's environment are left.
    let missing = path_str(&home.base().join("missing-kubeconfig"));
    let port = api.port().to_string();
    let ca_flag = format!("--certificate-authority={ca}");
    let token_flag = format!("--token={T_FLAG}");
    let proxy = start(
        &home,
        &[&ca_flag, &token_flag],
        &[
            ("KUBECONFIG", &missing),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    let resp = client::get(&proxy.url("/echo/d")).await;
    assert_eq!(echoed_token(&resp), T_FLAG);
    assert_eq!(home_api.requests().len(), 1, "~/.kube/config was used");
    assert_no_secrets(&proxy, &[T_FLAG, T_ENV, T_HOME]);
}

#[tokio::test]
async fn a_kubeconfig_without_a_current_context_falls_back_to_the_in_cluster_environment() {
    const TOKEN: &str = "kc-fallback-token-e4";
    let (api, pki) = start_api(&[TOKEN]).await;
    let (unused, _) = start_api(&[TOKEN]).await;
    let home = World::new();
    let ca = path_str(&home.file("ca.crt", &pki.ca_pem()));
    // Names a cluster, but no context is current and none is chosen.
    write(
        &home.base().join(".kube/config"),
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n{}{}",
            field("server", unused.url()),
            field("certificate-authority", &ca)
        ),
    );
    let port = api.port().to_string();
    let ca_flag = format!("--certificate-authority={ca}");
    let token_flag = format!("--token={TOKEN}");
    let proxy = start(
        &home,
        &[&ca_flag, &token_flag],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    let resp = client::get(&proxy.url("/echo/fallback")).await;
    assert_eq!(echoed_token(&resp), TOKEN);
    assert!(unused.requests().is_empty());
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn cluster_and_user_flags_pick_entries_other_than_the_current_contexts() {
    const T_A: &str = "kc-user-a-token";
    const T_B: &str = "kc-user-b-token";
    let (api_a, pki) = start_api(&[T_A, T_B]).await;
    let api_b = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[T_A, T_B])).await;
    let home = World::new();
    let ca = path_str(&home.file("ca.crt", &pki.ca_pem()));
    let kc = home.kubeconfig_yaml(&format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n\
         - name: ca\n  cluster:\n{}{}- name: cb\n  cluster:\n{}{}\
         users:\n- name: ua\n  user:\n{}- name: ub\n  user:\n{}\
         contexts:\n- name: a\n  context: {{cluster: ca, user: ua}}\n",
        field("server", api_a.url()),
        field("certificate-authority", &ca),
        field("server", api_b.url()),
        field("certificate-authority", &ca),
        field("token", T_A),
        field("token", T_B),
    ));
    let proxy = start(&home, &[&kc_arg(&kc), "--cluster=cb", "--user=ub"], &[]).await;
    let resp = client::get(&proxy.url("/echo/picked")).await;
    assert_eq!(echoed_token(&resp), T_B);
    assert_eq!(api_b.requests().len(), 1);
    assert!(api_a.requests().is_empty());
    assert_no_secrets(&proxy, &[T_A, T_B]);
}

// ---------------------------------------------------------------------------------------
// Command-line overrides

#[tokio::test]
async fn server_token_and_certificate_authority_flags_win_over_the_kubeconfig_even_over_token_file()
{
    const T_FILE: &str = "kc-token-from-file-19";
    const T_FLAG: &str = "kc-token-from-flag-20";
    let (api, pki) = start_api(&[T_FILE, T_FLAG]).await;
    let (elsewhere, _) = start_api(&[T_FILE, T_FLAG]).await;
    let home = World::new();
    let wrong_ca = home.file("wrong-ca.crt", &Pki::new().ca_pem());
    let right_ca = home.file("ca.crt", &pki.ca_pem());
    let token_file = home.file("token", T_FILE);
    let kc = home.kubeconfig_yaml(&single(
        &elsewhere.url(),
        &field("certificate-authority", path_str(&wrong_ca)),
        &field("tokenFile", path_str(&token_file)),
    ));
    let server = format!("--server={}", api.url());
    let token = format!("--token={T_FLAG}");
    let ca = format!("--certificate-authority={}", right_ca.display());
    let proxy = start(&home, &[&kc_arg(&kc), &server, &token, &ca], &[]).await;
    let resp = client::get(&proxy.url("/echo/flags")).await;
    assert_eq!(echoed_token(&resp), T_FLAG);
    assert!(elsewhere.requests().is_empty());
    assert_no_secrets(&proxy, &[T_FILE, T_FLAG]);
}

#[tokio::test]
async fn insecure_skip_tls_verify_in_the_kubeconfig_or_as_a_flag_accepts_a_server_of_an_unknown_ca()
{
    const TOKEN: &str = "kc-insecure-token-31";
    let (api, _pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    // Trusting another CA fails the handshake: the control.
    let other = home.file("other-ca.crt", &Pki::new().ca_pem());
    let trusting_other = home.kubeconfig_yaml(&single(
        &api.url(),
        &field("certificate-authority", path_str(&other)),
        &field("token", TOKEN),
    ));
    let proxy = start(&home, &[&kc_arg(&trusting_other)], &[]).await;
    let resp = client::get(&proxy.url("/echo/x")).await;
    let message = status_message(&resp, 502, "InternalError");
    assert!(message.contains("TLS"), "{message}");
    assert!(api.requests().is_empty());
    drop(proxy);

    let insecure = home.kubeconfig_yaml(&single(
        &api.url(),
        "    insecure-skip-tls-verify: true\n",
        &field("token", TOKEN),
    ));
    let proxy = start(&home, &[&kc_arg(&insecure)], &[]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/y")).await),
        TOKEN
    );

    let proxy = start(
        &home,
        &[&kc_arg(&trusting_other), "--insecure-skip-tls-verify"],
        &[],
    )
    .await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/z")).await),
        TOKEN
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn certificate_authority_data_in_the_kubeconfig_is_trusted() {
    const TOKEN: &str = "kc-ca-data-token-42";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let kc = home.kubeconfig_yaml(&single(
        &api.url(),
        &field(
            "certificate-authority-data",
            base64(pki.ca_pem().as_bytes()),
        ),
        &field("token", TOKEN),
    ));
    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/ca-data")).await),
        TOKEN
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn tls_server_name_verifies_the_certificate_against_that_name_instead_of_the_host() {
    const TOKEN: &str = "kc-sni-token-55";
    // The certificate names only the in-cluster service, not 127.0.0.1.
    let pki = Pki::with_sans(&["kubernetes.default.svc"]);
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let home = World::new();
    let ca = field(
        "certificate-authority",
        path_str(&home.file("ca.crt", &pki.ca_pem())),
    );
    let token = field("token", TOKEN);

    let plain = home.kubeconfig_yaml(&single(&api.url(), &ca, &token));
    let proxy = start(&home, &[&kc_arg(&plain)], &[]).await;
    let message = status_message(
        &client::get(&proxy.url("/echo/x")).await,
        502,
        "InternalError",
    );
    assert!(message.contains("TLS"), "{message}");
    drop(proxy);

    let named = home.kubeconfig_yaml(&single(
        &api.url(),
        &format!("{ca}{}", field("tls-server-name", "kubernetes.default.svc")),
        &token,
    ));
    let proxy = start(&home, &[&kc_arg(&named)], &[]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/y")).await),
        TOKEN
    );
    drop(proxy);

    let misnamed = home.kubeconfig_yaml(&single(
        &api.url(),
        &format!("{ca}{}", field("tls-server-name", "wrong.example")),
        &token,
    ));
    let proxy = start(
        &home,
        &[
            &kc_arg(&misnamed),
            "--tls-server-name=kubernetes.default.svc",
        ],
        &[],
    )
    .await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/z")).await),
        TOKEN
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

/// Whether the binary knows `flag` (another engineer may still be adding it).
fn binary_has_flag(flag: &str) -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-ambassador"))
        .arg("--help")
        .output()
        .expect("run --help");
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

#[tokio::test]
async fn a_server_path_is_prepended_to_every_request_only_with_append_server_path() {
    if !binary_has_flag("--append-server-path") {
        println!("skipping: the binary has no --append-server-path yet");
        return;
    }
    const TOKEN: &str = "kc-path-token-66";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let ca = path_str(&home.file("ca.crt", &pki.ca_pem()));
    // The fake answers anything under /echo/ with what it saw.
    let server = format!("{}/echo/k8s/clusters/c1", api.url());
    let kc = home.kubeconfig_yaml(&single(
        &server,
        &field("certificate-authority", &ca),
        &field("token", TOKEN),
    ));
    let proxy = start(&home, &[&kc_arg(&kc), "--append-server-path"], &[]).await;
    let resp = client::get(&proxy.url("/api/v1/pods?limit=1")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["uri"],
        "/echo/k8s/clusters/c1/api/v1/pods?limit=1"
    );
    drop(proxy);

    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    let resp = client::get(&proxy.url("/echo/plain")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["uri"], "/echo/plain");
    assert!(
        proxy.stderr().contains("/echo/k8s/clusters/c1")
            && proxy.stderr().contains("--append-server-path"),
        "kubectl warns about an unused server path:\n{}",
        proxy.stderr()
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn disable_compression_in_the_kubeconfig_or_as_a_flag_keeps_accept_encoding_from_the_api_server()
 {
    const TOKEN: &str = "kc-gzip-token-71";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let ca = field(
        "certificate-authority",
        path_str(&home.file("ca.crt", &pki.ca_pem())),
    );
    let token = field("token", TOKEN);
    let gzip = [("Accept-Encoding", "gzip")];

    let normal = home.kubeconfig_yaml(&single(&api.url(), &ca, &token));
    let proxy = start(&home, &[&kc_arg(&normal)], &[]).await;
    let resp = client::get_with(&proxy.url("/echo/normal"), &gzip).await;
    assert_eq!(echoed_header(&resp, "accept-encoding"), ["gzip"]);

    let proxy = start(&home, &[&kc_arg(&normal), "--disable-compression"], &[]).await;
    let resp = client::get_with(&proxy.url("/echo/flag"), &gzip).await;
    assert_eq!(
        echoed_header(&resp, "accept-encoding"),
        Vec::<String>::new()
    );

    let disabled = home.kubeconfig_yaml(&single(
        &api.url(),
        &format!("{ca}    disable-compression: true\n"),
        &token,
    ));
    let proxy = start(&home, &[&kc_arg(&disabled)], &[]).await;
    let resp = client::get_with(&proxy.url("/echo/kubeconfig"), &gzip).await;
    assert_eq!(
        echoed_header(&resp, "accept-encoding"),
        Vec::<String>::new()
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

// ---------------------------------------------------------------------------------------
// Users

#[tokio::test]
async fn a_token_file_is_reread_when_it_changes_and_the_next_request_carries_the_new_token() {
    const FIRST: &str = "kc-token-file-first-81";
    const SECOND: &str = "kc-token-file-second-82";
    // Both stay valid, so only the reload (not a 401 retry) can bring the second one.
    let (api, pki) = start_api(&[FIRST, SECOND]).await;
    let home = World::new();
    let ca = path_str(&home.file("ca.crt", &pki.ca_pem()));
    let token_file = write(&home.base().join("tokens/token"), &format!("{FIRST}\n"));
    let kc = home.kubeconfig_yaml(&single(
        &api.url(),
        &field("certificate-authority", &ca),
        &field("tokenFile", path_str(&token_file)),
    ));
    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/1")).await),
        FIRST
    );

    std::fs::write(&token_file, format!("{SECOND}\n")).expect("rewrite token file");
    within(
        "the token reload",
        proxy.wait_stderr("token changed on disk"),
    )
    .await;
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/2")).await),
        SECOND
    );
    assert_no_secrets(&proxy, &[FIRST, SECOND]);
}

#[tokio::test]
async fn username_and_password_are_sent_as_basic_authentication() {
    const PASSWORD: &str = "kc-pa55w0rd-93";
    let (api, pki) = start_api(&[]).await;
    let home = World::new();
    let kc = home.kubeconfig_yaml(&single(
        &api.url(),
        &field(
            "certificate-authority",
            path_str(&home.file("ca.crt", &pki.ca_pem())),
        ),
        &format!(
            "{}{}",
            field("username", "admin"),
            field("password", PASSWORD)
        ),
    ));
    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    // `/public/…` is served without authentication, so Basic (unknown to the fake) is
    // reported rather than refused.
    let resp = client::get(&proxy.url("/public/echo/basic")).await;
    let expected = format!("Basic {}", base64(format!("admin:{PASSWORD}").as_bytes()));
    assert_eq!(echoed_header(&resp, "authorization"), [expected.as_str()]);
    assert_no_secrets(&proxy, &[PASSWORD, &expected[6..]]);
}

/// A kubeconfig whose user impersonates `alice` in `devs` and `ops`, uid `1234`.
fn impersonating_kubeconfig(home: &World, api: &FakeApi, pki: &Pki, token: &str) -> PathBuf {
    home.kubeconfig_yaml(&single(
        &api.url(),
        &field(
            "certificate-authority",
            path_str(&home.file("ca.crt", &pki.ca_pem())),
        ),
        &format!(
            "{}{}    as-groups: [\"devs\", \"ops\"]\n{}",
            field("token", token),
            field("as", "alice"),
            field("as-uid", "1234"),
        ),
    ))
}

#[tokio::test]
async fn the_kubeconfig_users_as_as_groups_and_as_uid_become_impersonate_headers() {
    const TOKEN: &str = "kc-impersonation-token-a1";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let kc = impersonating_kubeconfig(&home, &api, &pki, TOKEN);
    let proxy = start(&home, &[&kc_arg(&kc)], &[]).await;
    let resp = client::get(&proxy.url("/echo/as")).await;
    assert_eq!(echoed_header(&resp, "impersonate-user"), ["alice"]);
    assert_eq!(echoed_header(&resp, "impersonate-group"), ["devs", "ops"]);
    assert_eq!(echoed_header(&resp, "impersonate-uid"), ["1234"]);
    assert_eq!(echoed_token(&resp), TOKEN);
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn the_as_flags_override_the_kubeconfig_with_one_impersonate_group_header_per_group() {
    const TOKEN: &str = "kc-impersonation-token-a2";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let kc = impersonating_kubeconfig(&home, &api, &pki, TOKEN);
    let proxy = start(
        &home,
        &[
            &kc_arg(&kc),
            "--as=bob",
            "--as-group=qa",
            "--as-group=system:authenticated",
            "--as-uid=42",
        ],
        &[],
    )
    .await;
    let resp = client::get(&proxy.url("/echo/as-flags")).await;
    assert_eq!(echoed_header(&resp, "impersonate-user"), ["bob"]);
    assert_eq!(
        echoed_header(&resp, "impersonate-group"),
        ["qa", "system:authenticated"]
    );
    assert_eq!(echoed_header(&resp, "impersonate-uid"), ["42"]);

    // Flags alone, without a kubeconfig user to start from.
    let port = api.port().to_string();
    let ca = format!(
        "--certificate-authority={}",
        home.base().join("ca.crt").display()
    );
    let token = format!("--token={TOKEN}");
    let proxy = start(
        &home,
        &[&ca, &token, "--as=carol", "--as-group=g1", "--as-group=g2"],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    )
    .await;
    let resp = client::get(&proxy.url("/echo/as-only-flags")).await;
    assert_eq!(echoed_header(&resp, "impersonate-user"), ["carol"]);
    assert_eq!(echoed_header(&resp, "impersonate-group"), ["g1", "g2"]);
    assert_eq!(
        echoed_header(&resp, "impersonate-uid"),
        Vec::<String>::new()
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_callers_own_impersonate_user_disables_the_configured_impersonation() {
    const TOKEN: &str = "kc-impersonation-token-a3";
    let (api, pki) = start_api(&[TOKEN]).await;
    let home = World::new();
    let kc = impersonating_kubeconfig(&home, &api, &pki, TOKEN);
    let proxy = start(&home, &[&kc_arg(&kc), "--as-group=flag-group"], &[]).await;
    let resp = client::get_with(&proxy.url("/echo/own"), &[("Impersonate-User", "dave")]).await;
    assert_eq!(echoed_header(&resp, "impersonate-user"), ["dave"]);
    assert_eq!(
        echoed_header(&resp, "impersonate-group"),
        Vec::<String>::new()
    );
    assert_eq!(
        echoed_header(&resp, "impersonate-uid"),
        Vec::<String>::new()
    );
    // The credentials are still added.
    assert_eq!(echoed_token(&resp), TOKEN);
    assert_no_secrets(&proxy, &[TOKEN]);
}

// ---------------------------------------------------------------------------------------
// --request-timeout

/// The proxy with `--request-timeout={timeout}`, for a fake API accepting `token`.
async fn timeout_proxy(token: &str, timeout: &str) -> (FakeApi, World, Proxy) {
    let (api, pki) = start_api(&[token]).await;
    let home = World::new();
    let kc = home.kubeconfig_yaml(&single(
        &api.url(),
        &field(
            "certificate-authority",
            path_str(&home.file("ca.crt", &pki.ca_pem())),
        ),
        &field("token", token),
    ));
    let flag = format!("--request-timeout={timeout}");
    let proxy = start(&home, &[&kc_arg(&kc), &flag], &[]).await;
    (api, home, proxy)
}

#[tokio::test]
async fn request_timeout_answers_504_timeout_when_the_api_server_sends_no_headers_in_time() {
    const TOKEN: &str = "kc-timeout-token-b1";
    let (api, _home, proxy) = timeout_proxy(TOKEN, "1s").await;
    let resp = client::get(&proxy.url("/hold/never")).await;
    let message = status_message(&resp, 504, "Timeout");
    assert!(
        message.contains(&format!("127.0.0.1:{}", api.port())),
        "{message}"
    );
    assert!(message.contains("--request-timeout"), "{message}");
    api.release("never");
    // A prompt answer is not affected.
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_request_timeout_without_a_unit_is_in_seconds_as_in_kubectl() {
    const TOKEN: &str = "kc-timeout-token-b3";
    // client-go's ParseTimeout: `--request-timeout=1` is one second.
    let (api, _home, proxy) = timeout_proxy(TOKEN, "1").await;
    let resp = client::get(&proxy.url("/hold/seconds")).await;
    let message = status_message(&resp, 504, "Timeout");
    assert!(message.contains("within 1s"), "{message}");
    api.release("seconds");
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn request_timeout_does_not_cut_a_watch_whose_headers_arrived() {
    const TOKEN: &str = "kc-timeout-token-b2";
    let (api, _home, proxy) = timeout_proxy(TOKEN, "1s").await;
    // A resourceVersion other than 0: only events sent from now on.
    let mut watch = support::open_watch(
        &api,
        &proxy.url(&format!("{PODS}?watch=1&resourceVersion=1003")),
    )
    .await;
    // This one times out after the 1 s limit, so the watch is now older than that.
    let held = client::get(&proxy.url("/hold/meanwhile")).await;
    status_message(&held, 504, "Timeout");
    api.release("meanwhile");

    api.send_watch_event("ADDED", "after-the-timeout");
    let event = within("the watch event", watch.next_json())
        .await
        .expect("the watch is still open");
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "after-the-timeout");
    assert_eq!(api.open_watches(), 1);
    assert_no_secrets(&proxy, &[TOKEN]);
}
