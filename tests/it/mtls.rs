//! Client certificates (mutual TLS) through the real binary, against a fake API server
//! that requires one and names the certificate's CN: the kubeconfig's
//! `client-certificate`/`client-key` files (relative to the kubeconfig) and their `-data`
//! forms, the `--client-certificate`/`--client-key` flags winning over them, certificate
//! files re-read on change and presented by new connections, a caller's own
//! `Authorization` leaving the certificate in place, and half a pair refused at start-up.
//! Key material never reaches the proxy's stderr.

use crate::support;

use support::path_str;

use std::path::{Path, PathBuf};

use fake_apiserver::base64;
use support::client;
use support::{FakeApi, FakeApiOptions, Pki, Proxy, Resp, World, within};

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string to JSON")
}

/// A kubeconfig with one context for `api`, trusting `ca`; `user` holds the user's field
/// lines (four spaces in).
fn kubeconfig(world: &World, api: &FakeApi, ca: &Path, user: &str) -> PathBuf {
    let user = if user.is_empty() { "    {}\n" } else { user };
    world.kubeconfig_yaml(&format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: main\nclusters:\n- name: main\n  \
         cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: main\n  \
         user:\n{user}contexts:\n- name: main\n  context: {{cluster: main, user: main}}\n",
        q(api.url()),
        q(path_str(ca)),
    ))
}

/// A fake API server requiring client certificates signed by its CA (it accepts `tokens`
/// too, once a certificate is presented), a scratch directory and the CA file.
async fn setup(tokens: &[&str]) -> (FakeApi, Pki, World, PathBuf) {
    let pki = Pki::new();
    let api = FakeApi::start(
        FakeApiOptions::new(pki.clone())
            .tokens(tokens)
            .require_client_cert(true),
    )
    .await;
    let world = World::new();
    let ca = world.file("ca.crt", &pki.ca_pem());
    (api, pki, world, ca)
}

async fn start(world: &World, args: &[&str]) -> Proxy {
    let mut all = vec!["--port=0"];
    all.extend_from_slice(args);
    let home = path_str(world.base());
    Proxy::start(&all, &[("HOME", &home)]).await
}

fn kc_arg(path: &Path) -> String {
    format!("--kubeconfig={}", path.display())
}

/// The CN of the client certificate the fake API saw.
fn echoed_cn(resp: &Resp) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["client_cn"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned()
}

/// Fails if any line of key material from `keys` (PEM) or their base64 form reached the
/// proxy's stderr.
fn assert_no_key_material(proxy: &Proxy, keys: &[&str]) {
    let stderr = proxy.stderr();
    for key in keys {
        let lines = key
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16);
        let data = base64(key.as_bytes());
        for secret in lines.chain([data.as_str()]) {
            assert!(
                !stderr.contains(secret),
                "key material {secret:?} reached the proxy's stderr:\n{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn client_certificate_and_key_files_relative_to_the_kubeconfig_are_presented() {
    let (api, pki, world, ca) = setup(&[]).await;
    let (cert, key) = pki.client_cert("kubeconfig-file-user");
    let certs = world.base().join("conf/certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("client.crt"), &cert).unwrap();
    std::fs::write(certs.join("client.key"), &key).unwrap();
    let kc = world.base().join("conf/config");
    std::fs::rename(
        kubeconfig(
            &world,
            &api,
            &ca,
            "    client-certificate: certs/client.crt\n    client-key: certs/client.key\n",
        ),
        &kc,
    )
    .unwrap();
    let proxy = start(&world, &[&kc_arg(&kc)]).await;
    let resp = client::get(&proxy.url("/echo/files")).await;
    assert_eq!(echoed_cn(&resp), "kubeconfig-file-user");
    assert_eq!(resp.json()["token"], serde_json::Value::Null);
    assert_no_key_material(&proxy, &[&key]);

    // The control: without a certificate this API server lets nobody in.
    let bare = kubeconfig(&world, &api, &ca, "");
    let proxy = start(&world, &[&kc_arg(&bare)]).await;
    let resp = client::get(&proxy.url("/echo/no-cert")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "Status");
}

/// The user fields of a kubeconfig carrying a certificate and key inline (base64).
fn cert_data_user(cert: &[u8], key: &[u8]) -> String {
    format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        q(base64(cert)),
        q(base64(key))
    )
}

#[tokio::test]
async fn client_certificate_data_and_client_key_data_are_presented() {
    let (api, pki, world, ca) = setup(&[]).await;
    let (cert, key) = pki.client_cert("kubeconfig-data-user");
    let kc = kubeconfig(
        &world,
        &api,
        &ca,
        &cert_data_user(cert.as_bytes(), key.as_bytes()),
    );
    let proxy = start(&world, &[&kc_arg(&kc)]).await;
    let resp = client::get(&proxy.url("/echo/data")).await;
    assert_eq!(echoed_cn(&resp), "kubeconfig-data-user");
    assert_no_key_material(&proxy, &[&key]);
}

#[tokio::test]
async fn the_client_certificate_flags_win_over_the_kubeconfigs_pair() {
    let (api, pki, world, ca) = setup(&[]).await;
    let (kc_cert, kc_key) = pki.client_cert("from-kubeconfig");
    let (flag_cert, flag_key) = pki.client_cert("from-flags");
    let kc = kubeconfig(
        &world,
        &api,
        &ca,
        &cert_data_user(kc_cert.as_bytes(), kc_key.as_bytes()),
    );
    let cert_arg = format!(
        "--client-certificate={}",
        world.file("flag.crt", &flag_cert).display()
    );
    let key_arg = format!(
        "--client-key={}",
        world.file("flag.key", &flag_key).display()
    );
    let proxy = start(&world, &[&kc_arg(&kc), &cert_arg, &key_arg]).await;
    let resp = client::get(&proxy.url("/echo/flags")).await;
    assert_eq!(echoed_cn(&resp), "from-flags");
    assert_no_key_material(&proxy, &[&kc_key, &flag_key]);
}

#[tokio::test]
async fn changed_client_certificate_files_are_presented_by_the_next_new_connection() {
    let (api, pki, world, ca) = setup(&[]).await;
    let dir = world.base().join("identity");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (first_cert, first_key) = pki.client_cert("first-identity");
    std::fs::write(&cert_path, &first_cert).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let kc = kubeconfig(
        &world,
        &api,
        &ca,
        &format!(
            "    client-certificate: {}\n    client-key: {}\n",
            q(path_str(&cert_path)),
            q(path_str(&key_path))
        ),
    );
    let proxy = start(&world, &[&kc_arg(&kc)]).await;
    assert_eq!(
        echoed_cn(&client::get(&proxy.url("/echo/1")).await),
        "first-identity"
    );

    // Each file is replaced whole (written aside, renamed over), so a reload sees the old
    // or the new file, never half of one; a mismatched pair in between is refused.
    let (second_cert, second_key) = pki.client_cert("second-identity");
    std::fs::write(dir.join("tls.key.new"), &second_key).unwrap();
    std::fs::write(dir.join("tls.crt.new"), &second_cert).unwrap();
    std::fs::rename(dir.join("tls.key.new"), &key_path).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), &cert_path).unwrap();
    within(
        "the client certificate reload",
        proxy.wait_stderr("client certificate changed on disk"),
    )
    .await;
    // Open connections keep the identity they were made with; force a new one.
    api.close_connections();
    api.wait_open_connections(0).await;
    assert_eq!(
        echoed_cn(&client::get(&proxy.url("/echo/2")).await),
        "second-identity"
    );
    assert_no_key_material(&proxy, &[&first_key, &second_key]);
}

#[tokio::test]
async fn a_callers_own_authorization_replaces_the_token_but_the_certificate_is_still_presented() {
    const OURS: &str = "mtls-proxy-token-77";
    const CALLERS: &str = "mtls-caller-token-78";
    let (api, pki, world, ca) = setup(&[OURS, CALLERS]).await;
    let (cert, key) = pki.client_cert("proxy-identity");
    let kc = kubeconfig(
        &world,
        &api,
        &ca,
        &format!(
            "    token: {}\n    client-certificate: {}\n    client-key: {}\n",
            q(OURS),
            q(path_str(&world.file("c.crt", &cert))),
            q(path_str(&world.file("c.key", &key)))
        ),
    );
    let proxy = start(&world, &[&kc_arg(&kc)]).await;
    let resp = client::get(&proxy.url("/echo/ours")).await;
    assert_eq!(echoed_cn(&resp), "proxy-identity");
    assert_eq!(resp.json()["token"], OURS);

    let bearer = format!("Bearer {CALLERS}");
    let resp = client::get_with(
        &proxy.url("/echo/callers"),
        &[("Authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(echoed_cn(&resp), "proxy-identity");
    assert_eq!(resp.json()["token"], CALLERS);
    assert!(!proxy.stderr().contains(OURS), "{}", proxy.stderr());
    assert_no_key_material(&proxy, &[&key]);
}

#[tokio::test]
async fn half_a_client_certificate_pair_is_refused_at_start_up() {
    let (api, pki, world, ca) = setup(&[]).await;
    let (cert, key) = pki.client_cert("half");
    let cert_path = world.file("half.crt", &cert);
    let key_path = world.file("half.key", &key);
    let kc = kubeconfig(&world, &api, &ca, "");
    let home = path_str(world.base());
    let cert_only = format!("--client-certificate={}", cert_path.display());
    let key_only = format!("--client-key={}", key_path.display());
    for half in [&cert_only, &key_only] {
        let (status, stdout, stderr) =
            Proxy::start_expect_failure(&[&kc_arg(&kc), half, "--port=0"], &[("HOME", &home)])
                .await;
        assert_eq!(status.code(), Some(1), "{half}: {stderr}");
        assert_eq!(stdout, "");
        assert!(
            stderr.contains("--client-certificate") && stderr.contains("--client-key"),
            "{half}: {stderr}"
        );
    }

    let kc = kubeconfig(
        &world,
        &api,
        &ca,
        &format!("    client-certificate: {}\n", q(path_str(&cert_path))),
    );
    let (status, _, stderr) =
        Proxy::start_expect_failure(&[&kc_arg(&kc), "--port=0"], &[("HOME", &home)]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate and the key") && stderr.contains("\"main\""),
        "{stderr}"
    );
    assert!(api.requests().is_empty());
}
