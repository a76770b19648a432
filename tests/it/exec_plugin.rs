//! Exec credential plugins (`client.authentication.k8s.io/v1` and `v1beta1`) through the
//! real binary, with small `/bin/sh` plugins written by each test: a token or a client
//! certificate from the plugin reaches the API server; the plugin gets the kubeconfig's
//! args and env and `KUBERNETES_EXEC_INFO` (with the cluster when `provideClusterInfo`);
//! its result is cached until `expirationTimestamp` (less a renewal margin), renewed after
//! a 401, and never fetched twice at once; a stuck plugin is stopped (504 Timeout), a
//! failing one is explained (its stderr and `installHint`); `interactiveMode: Always` and
//! the removed `auth-provider`s are refused at start-up. Tokens and keys never reach the
//! proxy's stderr.

use crate::support;

use support::{assert_no_secrets, echoed_token, path_str, status_message};

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use fake_apiserver::base64;
use serde_json::{Value, json};
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};

const V1: &str = "client.authentication.k8s.io/v1";
const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";
/// Far enough ahead to be cached for the whole test.
const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

/// A single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes an executable `/bin/sh` script at `path` whose body can use `$D`, the
/// directory the test keeps the plugin's files in (counter, dumps, credentials).
fn write_plugin(path: &Path, dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create plugin dir");
    let script = format!("#!/bin/sh\nD={}\n{body}", sh_quote(&path_str(dir)));
    std::fs::write(path, script).expect("write plugin");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    path.to_owned()
}

/// Counts runs (one line each in `$D/count`) and dumps what the plugin was given.
const RECORD: &str = r#"echo run >> "$D/count"
printf '%s\n' "$@" > "$D/args"
printf '%s' "$KUBERNETES_EXEC_INFO" > "$D/exec-info"
printf '%s' "$PLUGIN_GREETING" > "$D/env"
"#;

/// How many times the plugin ran.
fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("count")).map_or(0, |s| s.lines().count())
}

/// An `ExecCredential` as a plugin prints it.
fn credential(
    api_version: &str,
    token: Option<&str>,
    cert: Option<(&str, &str)>,
    expiry: Option<&str>,
) -> String {
    let mut status = json!({});
    if let Some(t) = token {
        status["token"] = t.into();
    }
    if let Some((cert, key)) = cert {
        status["clientCertificateData"] = cert.into();
        status["clientKeyData"] = key.into();
    }
    if let Some(e) = expiry {
        status["expirationTimestamp"] = e.into();
    }
    json!({"apiVersion": api_version, "kind": "ExecCredential", "status": status}).to_string()
}

/// RFC 3339 (UTC, seconds) for a Unix time.
fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A kubeconfig (JSON is YAML) with one context: `cluster` is merged into a cluster that
/// has `server` and the CA file, `user` is the user entry.
fn kubeconfig(world: &World, server: &str, ca: &Path, cluster: Value, user: Value) -> PathBuf {
    let mut c = json!({"server": server, "certificate-authority": path_str(ca)});
    for (k, v) in cluster.as_object().expect("cluster object") {
        c[k] = v.clone();
    }
    world.kubeconfig_yaml(
        &json!({
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "main",
            "clusters": [{"name": "main", "cluster": c}],
            "users": [{"name": "plugin-user", "user": user}],
            "contexts": [{"name": "main", "context": {"cluster": "main", "user": "plugin-user"}}],
        })
        .to_string(),
    )
}

/// An `exec` user section running `command`.
fn exec_user(api_version: &str, command: &Path, extra: Value) -> Value {
    let mut exec = json!({"apiVersion": api_version, "command": path_str(command)});
    for (k, v) in extra.as_object().expect("exec extra object") {
        exec[k] = v.clone();
    }
    json!({ "exec": exec })
}

/// A fake API server, a scratch directory and its CA file.
/// A kubeconfig for `api` whose user runs `plugin` (exec API v1, `extra` fields added).
fn v1_exec_kubeconfig(
    world: &World,
    api: &FakeApi,
    ca: &Path,
    plugin: &Path,
    extra: Value,
) -> PathBuf {
    kubeconfig(
        world,
        &api.url(),
        ca,
        json!({}),
        exec_user(V1, plugin, extra),
    )
}

async fn setup(opts: FakeApiOptions) -> (FakeApi, World, PathBuf) {
    let pem = opts.pki.ca_pem();
    let api = FakeApi::start(opts).await;
    let world = World::new();
    let ca = world.file("ca.crt", &pem);
    (api, world, ca)
}

/// The proxy on a free port for `kubeconfig`, with a scratch `HOME`.
async fn start(world: &World, kubeconfig: &Path, extra: &[&str]) -> Proxy {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let mut args = vec![kc.as_str(), "--port=0"];
    args.extend_from_slice(extra);
    let home = path_str(world.base());
    Proxy::start(&args, &[("HOME", &home)]).await
}

/// The key material of a PEM private key (its base64 lines).
fn key_lines(key_pem: &str) -> Vec<&str> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect()
}

#[tokio::test]
async fn a_v1_plugin_token_is_sent_with_the_kubeconfigs_args_and_env_and_cached_until_expiry() {
    const TOKEN: &str = "exec-v1-token-0a1b";
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new()).tokens(&[TOKEN])).await;
    let dir = world.base().to_owned();
    world.file(
        "cred.json",
        &credential(V1, Some(TOKEN), None, Some(FAR_FUTURE)),
    );
    let plugin = write_plugin(
        &dir.join("plugin"),
        &dir,
        &format!("{RECORD}cat \"$D/cred.json\"\n"),
    );
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        json!({}),
        exec_user(
            V1,
            &plugin,
            json!({
                "args": ["--first", "two words"],
                "env": [{"name": "PLUGIN_GREETING", "value": "hello world"}],
                "interactiveMode": "Never",
            }),
        ),
    );
    let proxy = start(&world, &kc, &[]).await;
    assert_eq!(runs(&dir), 0, "the plugin runs at the first request");
    for i in 0..3 {
        let resp = client::get(&proxy.url(&format!("/echo/{i}"))).await;
        assert_eq!(echoed_token(&resp), TOKEN);
    }
    assert_eq!(runs(&dir), 1, "the credential is cached until it expires");

    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    assert_eq!(args.lines().collect::<Vec<_>>(), ["--first", "two words"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("env")).unwrap(),
        "hello world"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exec-info")).unwrap())
            .expect("KUBERNETES_EXEC_INFO is JSON");
    assert_eq!(info["apiVersion"], V1, "{info}");
    assert_eq!(info["kind"], "ExecCredential", "{info}");
    assert_eq!(info["spec"]["interactive"], false, "{info}");
    assert!(
        info["spec"].get("cluster").is_none(),
        "no cluster without provideClusterInfo: {info}"
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_v1beta1_plugin_relative_to_its_kubeconfig_gets_the_cluster_with_provide_cluster_info() {
    const TOKEN: &str = "exec-v1beta1-token-2c3d";
    let pki = Pki::new();
    let (api, world, ca) = setup(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let dir = world.base().to_owned();
    world.file("cred.json", &credential(V1BETA1, Some(TOKEN), None, None));
    write_plugin(
        &dir.join("bin/plugin"),
        &dir,
        &format!("{RECORD}cat \"$D/cred.json\"\n"),
    );
    // A command with a slash is relative to the kubeconfig's directory (the test runs
    // in the crate root, where ./bin/plugin does not exist).
    assert!(!Path::new("./bin/plugin").exists());
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        json!({"extensions": [{
            "name": "client.authentication.k8s.io/exec",
            "extension": {"audience": "fake-audience"},
        }]}),
        exec_user(
            V1BETA1,
            Path::new("./bin/plugin"),
            json!({"provideClusterInfo": true}),
        ),
    );
    let proxy = start(&world, &kc, &[]).await;
    let resp = client::get(&proxy.url("/echo/beta")).await;
    assert_eq!(echoed_token(&resp), TOKEN);
    assert_eq!(runs(&dir), 1);

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exec-info")).unwrap())
            .expect("KUBERNETES_EXEC_INFO is JSON");
    assert_eq!(info["apiVersion"], V1BETA1, "{info}");
    let cluster = &info["spec"]["cluster"];
    assert_eq!(cluster["server"], api.url(), "{info}");
    assert_eq!(
        cluster["certificate-authority-data"],
        base64(pki.ca_pem().as_bytes()),
        "{info}"
    );
    assert_eq!(cluster["config"]["audience"], "fake-audience", "{info}");
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_client_certificate_from_the_plugin_is_presented_to_an_api_server_that_requires_one() {
    let pki = Pki::new();
    let (cert, key) = pki.client_cert("exec-cert-user");
    let (api, world, ca) = setup(FakeApiOptions::new(pki.clone()).require_client_cert(true)).await;
    let dir = world.base().to_owned();
    world.file(
        "cred.json",
        &credential(V1, None, Some((&cert, &key)), Some(FAR_FUTURE)),
    );
    let plugin = write_plugin(
        &dir.join("plugin"),
        &dir,
        &format!("{RECORD}cat \"$D/cred.json\"\n"),
    );
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({}));
    let proxy = start(&world, &kc, &[]).await;
    for i in 0..2 {
        let resp = client::get(&proxy.url(&format!("/echo/cert-{i}"))).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["client_cn"], "exec-cert-user");
        assert_eq!(resp.json()["token"], Value::Null);
    }
    assert_eq!(runs(&dir), 1);
    assert_no_secrets(&proxy, &key_lines(&key));
}

#[tokio::test]
async fn a_credential_expiring_within_the_renewal_margin_is_renewed_for_every_request() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    api.set_tokens(&["exec-exp-1", "exec-exp-2", "exec-exp-3"]);
    let dir = world.base().to_owned();
    // Five seconds ahead: inside the proxy's ten-second renewal margin from the start,
    // so each request finds the credential stale, whenever it runs.
    let expiry = rfc3339(unix_now() + 5);
    let plugin = write_plugin(
        &dir.join("plugin"),
        &dir,
        &format!(
            "{RECORD}n=$(wc -l < \"$D/count\" | tr -d ' ')\n\
             printf '{{\"apiVersion\":\"{V1}\",\"kind\":\"ExecCredential\",\
             \"status\":{{\"token\":\"exec-exp-%s\",\"expirationTimestamp\":\"{expiry}\"}}}}' \"$n\"\n"
        ),
    );
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({}));
    let proxy = start(&world, &kc, &[]).await;
    for i in 1..=3 {
        let resp = client::get(&proxy.url(&format!("/echo/{i}"))).await;
        assert_eq!(echoed_token(&resp), format!("exec-exp-{i}"));
        assert_eq!(runs(&dir), i);
    }
    assert_no_secrets(&proxy, &["exec-exp-"]);
}

#[tokio::test]
async fn after_a_401_the_plugin_runs_again_and_the_request_is_retried_with_the_new_token() {
    const REFUSED: &str = "exec-token-refused-4e";
    const ACCEPTED: &str = "exec-token-accepted-5f";
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new()).tokens(&[ACCEPTED])).await;
    let dir = world.base().to_owned();
    world.file("first.json", &credential(V1, Some(REFUSED), None, None));
    world.file("later.json", &credential(V1, Some(ACCEPTED), None, None));
    let plugin = write_plugin(
        &dir.join("plugin"),
        &dir,
        &format!(
            "{RECORD}if [ \"$(wc -l < \"$D/count\" | tr -d ' ')\" = 1 ]; then \
             cat \"$D/first.json\"; else cat \"$D/later.json\"; fi\n"
        ),
    );
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({}));
    let proxy = start(&world, &kc, &[]).await;
    let resp = client::get(&proxy.url("/echo/renewed")).await;
    assert_eq!(echoed_token(&resp), ACCEPTED);
    let seen: Vec<_> = api.requests().into_iter().map(|s| s.token).collect();
    assert_eq!(
        seen,
        [Some(REFUSED.to_owned()), Some(ACCEPTED.to_owned())],
        "the API server saw the refused token, then the renewed one"
    );
    assert_eq!(runs(&dir), 2);
    // The renewed credential is cached.
    assert_eq!(
        echoed_token(&client::get(&proxy.url("/echo/again")).await),
        ACCEPTED
    );
    assert_eq!(runs(&dir), 2);
    assert_no_secrets(&proxy, &[REFUSED, ACCEPTED]);
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(ok.success(), "mkfifo {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_run_the_plugin_once() {
    const TOKEN: &str = "exec-once-token-6a";
    const N: usize = 6;
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new()).tokens(&[TOKEN])).await;
    let dir = world.base().to_owned();
    world.file("cred.json", &credential(V1, Some(TOKEN), None, None));
    mkfifo(&dir.join("started"));
    mkfifo(&dir.join("go"));
    // The plugin says it started (blocking until the test listens), then waits for the
    // test's go-ahead: every request arrives while it runs.
    let plugin = write_plugin(
        &dir.join("plugin"),
        &dir,
        &format!(
            "{RECORD}echo started > \"$D/started\"\nread _go < \"$D/go\"\ncat \"$D/cred.json\"\n"
        ),
    );
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({}));
    let proxy = start(&world, &kc, &["--exec-timeout=10s"]).await;
    let requests: Vec<_> = (0..N)
        .map(|i| {
            let url = proxy.url(&format!("/echo/concurrent-{i}"));
            tokio::spawn(async move { client::get(&url).await })
        })
        .collect();

    let started = dir.join("started");
    within(
        "the plugin to start",
        tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            std::fs::File::open(started)
                .and_then(|mut f| f.read_to_string(&mut s))
                .expect("read the started fifo");
            s
        }),
    )
    .await
    .expect("join");
    let go = dir.join("go");
    within(
        "the plugin to take the go-ahead",
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(go)
                .expect("open the go fifo");
            f.write_all(b"go\n").expect("write go");
        }),
    )
    .await
    .expect("join");

    for r in requests {
        let resp = r.await.expect("request task");
        assert_eq!(echoed_token(&resp), TOKEN);
    }
    assert_eq!(runs(&dir), 1, "the plugin ran more than once");
    assert_eq!(api.requests().len(), N);
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn a_plugin_that_does_not_finish_within_exec_timeout_is_stopped_and_the_request_gets_a_504() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    let dir = world.base().to_owned();
    // `exec`, so that stopping the plugin stops the sleep too.
    let plugin = write_plugin(
        &dir.join("stuck-plugin"),
        &dir,
        &format!("{RECORD}exec sleep 600\n"),
    );
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({}));
    let proxy = start(&world, &kc, &["--exec-timeout=1s"]).await;
    let resp = client::get(&proxy.url("/echo/stuck")).await;
    let message = status_message(&resp, 504, "Timeout");
    assert!(message.contains(&path_str(&plugin)), "{message}");
    assert!(message.contains("did not finish"), "{message}");
    assert!(api.requests().is_empty());
    // Not remembered as a failure: the next request tries again.
    let resp = client::get(&proxy.url("/echo/stuck-again")).await;
    status_message(&resp, 504, "Timeout");
    assert_eq!(runs(&dir), 2);
}

#[tokio::test]
async fn a_failing_plugin_is_explained_with_its_stderr_and_the_install_hint() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    let dir = world.base().to_owned();
    let plugin = write_plugin(
        &dir.join("failing-plugin"),
        &dir,
        &format!(
            "{RECORD}echo 'error: not logged in, run acme-login first' >&2\n\
             echo 'not-a-credential-on-stdout'\nexit 1\n"
        ),
    );
    const HINT: &str = "Install acme-auth: https://acme.example/install";
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &plugin, json!({"installHint": HINT}));
    let proxy = start(&world, &kc, &[]).await;
    let resp = client::get(&proxy.url("/echo/failing")).await;
    let message = status_message(&resp, 503, "ServiceUnavailable");
    assert!(message.contains(&path_str(&plugin)), "{message}");
    assert!(
        message.contains("error: not logged in, run acme-login first"),
        "{message}"
    );
    assert!(message.contains(HINT), "{message}");
    assert!(
        !message.contains("not-a-credential-on-stdout"),
        "stdout may hold a credential: {message}"
    );
    assert!(api.requests().is_empty());

    // A plugin that is not installed: the hint says how to get it.
    let missing = dir.join("not-installed-plugin");
    let kc = v1_exec_kubeconfig(&world, &api, &ca, &missing, json!({"installHint": HINT}));
    let proxy = start(&world, &kc, &[]).await;
    let resp = client::get(&proxy.url("/echo/missing")).await;
    let message = status_message(&resp, 503, "ServiceUnavailable");
    assert!(message.contains(&path_str(&missing)), "{message}");
    assert!(message.contains(HINT), "{message}");
}

/// Runs the binary with `kubeconfig`, expecting exit status 1; returns stderr.
async fn start_expect_exit_1(world: &World, kubeconfig: &Path) -> String {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let home = path_str(world.base());
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&kc, "--port=0"], &[("HOME", &home)]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "", "nothing on stdout on failure");
    stderr
}

#[tokio::test]
async fn interactive_mode_always_is_refused_at_start_up_with_a_clear_message() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    let dir = world.base().to_owned();
    let plugin = write_plugin(&dir.join("interactive-plugin"), &dir, RECORD);
    let kc = v1_exec_kubeconfig(
        &world,
        &api,
        &ca,
        &plugin,
        json!({"interactiveMode": "Always"}),
    );
    let stderr = start_expect_exit_1(&world, &kc).await;
    assert!(stderr.contains("interactiveMode: Always"), "{stderr}");
    assert!(stderr.contains("plugin-user"), "{stderr}");
    assert!(stderr.contains(&path_str(&plugin)), "{stderr}");
    assert_eq!(runs(&dir), 0);
}

#[tokio::test]
async fn an_unsupported_exec_api_version_is_refused_at_start_up() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    let dir = world.base().to_owned();
    let plugin = write_plugin(&dir.join("old-plugin"), &dir, RECORD);
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        json!({}),
        exec_user("client.authentication.k8s.io/v1alpha1", &plugin, json!({})),
    );
    let stderr = start_expect_exit_1(&world, &kc).await;
    assert!(
        stderr.contains("client.authentication.k8s.io/v1alpha1"),
        "{stderr}"
    );
    assert!(stderr.contains(V1) && stderr.contains(V1BETA1), "{stderr}");
}

#[tokio::test]
async fn a_gcp_auth_provider_is_refused_at_start_up_naming_its_replacement_plugin() {
    let (api, world, ca) = setup(FakeApiOptions::new(Pki::new())).await;
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        json!({}),
        json!({"auth-provider": {"name": "gcp", "config": {"access-token": "ya29.secret-gcp"}}}),
    );
    let stderr = start_expect_exit_1(&world, &kc).await;
    assert!(stderr.contains("\"gcp\""), "{stderr}");
    assert!(stderr.contains("gke-gcloud-auth-plugin"), "{stderr}");
    assert!(!stderr.contains("ya29.secret-gcp"), "{stderr}");
}
