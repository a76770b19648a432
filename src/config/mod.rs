//! Resolving flags and the environment into one description of the upstream.
//!
//! Parsing only: nothing here opens a connection or knows about hyper. The result,
//! [`Upstream`], is fixed for the life of the process (the API server's origin can
//! never change at run time); what may change (token, CA) is named by its source and
//! loaded by `credentials` and `tls`.

mod from_kubeconfig;
mod in_cluster;
pub(crate) mod kubeconfig;
mod upstream;

use std::path::{Path, PathBuf};

use crate::credentials::TokenSource;
use crate::tls::CaSource;

use from_kubeconfig::from_kubeconfig;
pub(crate) use in_cluster::{DEFAULT_SERVICE_ACCOUNT_DIR, Environment};
pub(crate) use upstream::{ConfigError, Impersonation, Overrides, Upstream};
use upstream::{Pieces, basic_flags, client_cert_flags, finish};

/// Resolves the upstream: a kubeconfig if there is one to use (as kubectl), else the
/// in-cluster environment; flags given on the command line win over both.
///
/// `--service-account-dir` asks for in-cluster mode explicitly: then only an explicit
/// `--kubeconfig` is read, never `KUBECONFIG` or `~/.kube/config`.
pub(crate) fn resolve(flags: &Overrides, env: &Environment) -> Result<Upstream, ConfigError> {
    // Why a kubeconfig that was read selects nothing, for the "no API server" message.
    let mut unselected = None;
    if flags.kubeconfig.is_some() || flags.service_account_dir.is_none() {
        let home = if flags.service_account_dir.is_some() {
            None
        } else {
            env.home.as_deref()
        };
        let kubeconfig_env = if flags.service_account_dir.is_some() {
            None
        } else {
            env.kubeconfig.as_deref()
        };
        if let Some(loaded) = kubeconfig::load(flags.kubeconfig.as_deref(), kubeconfig_env, home)? {
            let choice = kubeconfig::Choice {
                context: flags.context.as_deref(),
                cluster: flags.cluster.as_deref(),
                user: flags.user.as_deref(),
            };
            if let Some(selected) = loaded.select(choice)? {
                return from_kubeconfig(flags, selected);
            }
            unselected = Some(loaded.no_current_context());
        }
    }
    // As kubectl: a context asked for by name must exist, even when no kubeconfig was
    // found (a loaded one has been checked by `select`); it is never silently ignored.
    if let Some(name) = &flags.context {
        return Err(kubeconfig::KubeconfigError::NoContext {
            name: name.clone(),
            files: "(no kubeconfig file was found)".to_owned(),
        }
        .into());
    }
    from_in_cluster(flags, env, unselected)
}

/// The "no API server" message's lines: every place kubectl's loading rules
/// (client-go `clientcmd.ClientConfigLoadingRules`: `--kubeconfig`, else `$KUBECONFIG`,
/// else `~/.kube/config`; then `rest.InClusterConfig`) look, and what was missing there.
fn looked_for(
    flags: &Overrides,
    env: &Environment,
    unselected: Option<String>,
    sa_dir: &Path,
) -> String {
    let mut lines = Vec::new();
    let mut unselected = unselected;
    let mut no_context = |lines: &mut Vec<String>, label: &str, otherwise: String| {
        let text = unselected.take().unwrap_or(otherwise);
        lines.push(format!("{label}: {text}"));
    };
    let in_cluster_only = flags.service_account_dir.is_some();
    match &flags.kubeconfig {
        Some(path) => no_context(&mut lines, "--kubeconfig", format!("{}", path.display())),
        None => lines.push("--kubeconfig: not given".to_owned()),
    }
    let skipped = |why: &str| format!("not read ({why})");
    let kubeconfig_env = env.kubeconfig.as_deref().filter(|v| !v.is_empty());
    if flags.kubeconfig.is_some() {
        lines.push(format!("$KUBECONFIG: {}", skipped("--kubeconfig wins")));
        lines.push(format!("~/.kube/config: {}", skipped("--kubeconfig wins")));
    } else if in_cluster_only {
        let why = "--service-account-dir asks for in-cluster mode";
        lines.push(format!("$KUBECONFIG: {}", skipped(why)));
        lines.push(format!("~/.kube/config: {}", skipped(why)));
    } else {
        match kubeconfig_env {
            None => lines.push("$KUBECONFIG: not set".to_owned()),
            Some(list) => {
                let files: Vec<PathBuf> = std::env::split_paths(list)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect();
                if files.iter().any(|p| p.exists()) {
                    no_context(&mut lines, "$KUBECONFIG", String::new());
                } else {
                    let names: Vec<String> =
                        files.iter().map(|p| p.display().to_string()).collect();
                    lines.push(format!(
                        "$KUBECONFIG: set to {}, but no such file exists",
                        names.join(":")
                    ));
                }
            }
        }
        if kubeconfig_env.is_some() {
            lines.push(format!("~/.kube/config: {}", skipped("$KUBECONFIG is set")));
        } else {
            match &env.home {
                None => lines.push("~/.kube/config: HOME is not set".to_owned()),
                Some(home) => {
                    let path = home.join(".kube").join("config");
                    if path.exists() {
                        no_context(&mut lines, "~/.kube/config", String::new());
                    } else {
                        lines.push(format!("~/.kube/config: {} does not exist", path.display()));
                    }
                }
            }
        }
    }
    lines.push(
        "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not \
         running in a pod?)"
            .to_owned(),
    );
    let token = sa_dir.join("token");
    lines.push(format!(
        "service account: {} {}",
        token.display(),
        if token.exists() {
            "exists (but is used only in a pod, or with --service-account-dir)"
        } else {
            "does not exist"
        }
    ));
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

/// A pod's service account (or `--server` with flags only).
fn from_in_cluster(
    flags: &Overrides,
    env: &Environment,
    unselected: Option<String>,
) -> Result<Upstream, ConfigError> {
    let in_cluster = env.in_cluster()?;
    let sa_dir = flags
        .service_account_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVICE_ACCOUNT_DIR));
    // The service-account files apply in a pod, or when the directory is named.
    let use_sa = in_cluster.is_some() || flags.service_account_dir.is_some();

    let url = match (&flags.server, &in_cluster) {
        (Some(server), _) => server.clone(),
        (None, Some(url)) => url.clone(),
        (None, None) => {
            return Err(ConfigError::NoServer {
                looked: looked_for(flags, env, unselected, &sa_dir),
            });
        }
    };
    let ca = match (&flags.certificate_authority, flags.insecure_skip_tls_verify) {
        (Some(_), true) => return Err(ConfigError::CaWithInsecure),
        (_, true) => Some(CaSource::Insecure),
        (Some(path), false) => Some(CaSource::File(path.clone())),
        (None, false) if use_sa => Some(CaSource::File(sa_dir.join("ca.crt"))),
        (None, false) => None,
    };
    let token = if let Some(basic) = basic_flags(flags) {
        if flags.token.is_some() {
            return Err(ConfigError::BasicWithToken {
                basic: "--username/--password",
                token: "--token".to_owned(),
            });
        }
        // The flags name the credential; the pod's own service account is only the
        // default, so it is not a conflict.
        basic
    } else if let Some(token) = &flags.token {
        TokenSource::Static(token.clone(), "--token")
    } else if use_sa {
        let path = sa_dir.join("token");
        if !path.exists() {
            return Err(ConfigError::NoToken { path });
        }
        TokenSource::File(path)
    } else {
        TokenSource::None
    };
    finish(
        flags,
        Pieces {
            url,
            tls_server_name: None,
            ca,
            client_cert: client_cert_flags(flags)?,
            token,
            impersonate: Impersonation::default(),
            proxy_url: None,
            disable_compression: false,
            description: if in_cluster.is_some() && flags.server.is_none() {
                format!("in-cluster, service account {}", sa_dir.display())
            } else {
                "command-line flags".to_owned()
            },
            missing_ca_hint: sa_dir.join("ca.crt").display().to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::ProxyUrl;
    use rustls_pki_types::ServerName;

    use clap::Parser;

    fn cli(args: &[&str]) -> Overrides {
        let mut all = vec!["kube-ambassador"];
        all.extend_from_slice(args);
        crate::cli::Cli::try_parse_from(all).unwrap().overrides()
    }

    fn pod() -> Environment {
        Environment {
            service_host: Some("10.96.0.1".into()),
            service_port: Some("443".into()),
            ..Environment::default()
        }
    }

    #[test]
    fn in_cluster_defaults() {
        let dir = std::env::temp_dir().join(format!("ka-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "t").unwrap();
        let arg = format!("--service-account-dir={}", dir.display());
        let up = resolve(&cli(&[&arg]), &pod()).unwrap();
        assert_eq!(up.origin(), "https://10.96.0.1:443");
        assert_eq!(up.ca, Some(CaSource::File(dir.join("ca.crt"))));
        assert_eq!(up.token, TokenSource::File(dir.join("token")));
        assert!(matches!(up.server_name, ServerName::IpAddress(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ipv6_service_host_is_bracketed() {
        let env = Environment {
            service_host: Some("fd00::1".into()),
            service_port: Some("6443".into()),
            ..Environment::default()
        };
        assert_eq!(
            env.in_cluster().unwrap().as_deref(),
            Some("https://[fd00::1]:6443")
        );
        let up = resolve(&cli(&["--token=x", "--insecure-skip-tls-verify"]), &env).unwrap();
        assert_eq!(up.authority.as_str(), "[fd00::1]:6443");
        assert!(matches!(up.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn nothing_usable_says_what_to_do() {
        let none = Environment::default();
        let err = resolve(&cli(&[]), &none).unwrap_err().to_string();
        assert!(
            err.contains("KUBERNETES_SERVICE_HOST") && err.contains("--server"),
            "{err}"
        );
        let err = resolve(&cli(&["--server=https://h:1"]), &none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--certificate-authority"), "{err}");
        let half = Environment {
            service_host: Some("h".into()),
            service_port: None,
            ..Environment::default()
        };
        let err = resolve(&cli(&[]), &half).unwrap_err().to_string();
        assert!(err.contains("KUBERNETES_SERVICE_PORT is not set"), "{err}");
        let err = resolve(&cli(&["--service-account-dir=/nonexistent/sa"]), &pod())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sa/token"), "{err}");
    }

    #[test]
    fn a_proxy_url_password_never_prints() {
        let p = ProxyUrl("http://user:pr0xypw@proxy.example:3128".parse().unwrap());
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("pr0xypw") && dbg.contains("proxy.example"),
            "{dbg}"
        );
    }

    #[test]
    fn plain_http_never_carries_credentials() {
        let up = resolve(
            &cli(&["--server=http://127.0.0.1:8080/k8s/", "--token=secret"]),
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(up.token, TokenSource::None);
        assert_eq!(up.ca, None);
        assert_eq!(up.base_path, "/k8s");
        assert_eq!(up.authority.as_str(), "127.0.0.1:8080");
    }

    #[test]
    fn flags_override_and_conflicts() {
        let up = resolve(
            &cli(&[
                "--server=https://example.test",
                "--token=abc",
                "--certificate-authority=/ca.pem",
                "--tls-server-name=kubernetes.default.svc",
            ]),
            &pod(),
        )
        .unwrap();
        assert_eq!(up.authority.as_str(), "example.test");
        assert_eq!(up.ca, Some(CaSource::File("/ca.pem".into())));
        assert!(matches!(up.token, TokenSource::Static(_, "--token")));
        assert!(matches!(up.server_name, ServerName::DnsName(_)));
        let err = resolve(
            &cli(&[
                "--certificate-authority=/x",
                "--insecure-skip-tls-verify",
                "--token=a",
            ]),
            &pod(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::CaWithInsecure));
        for bad in ["ftp://h", "h:443", "https://u:p@h", "https://h/?q=1"] {
            let arg = format!("--server={bad}");
            assert!(
                resolve(&cli(&[&arg, "--insecure-skip-tls-verify"]), &pod()).is_err(),
                "{bad}"
            );
        }
    }
}
