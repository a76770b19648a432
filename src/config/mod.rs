//! Resolving flags and the environment into one description of the upstream.
//!
//! Parsing only: nothing here opens a connection or knows about hyper. The result,
//! [`Upstream`], is fixed for the life of the process (the API server's origin can
//! never change at run time); what may change (token, CA) is named by its source and
//! loaded by `credentials` and `tls`.

mod in_cluster;

use std::path::PathBuf;

use http::uri::{Authority, Scheme};
use rustls_pki_types::ServerName;

use crate::cli::Cli;
use crate::credentials::TokenSource;
use crate::tls::CaSource;

pub use in_cluster::{DEFAULT_SERVICE_ACCOUNT_DIR, Environment};

/// The resolved upstream: where to connect, how to verify it, what to authenticate with.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    /// `host[:port]` as written in the server URL, which is what the `Host` header
    /// carries (as in Go's client); the connector fills in the scheme's default port.
    pub authority: Authority,
    /// The server URL's path without a trailing slash (`""` for most clusters).
    pub base_path: String,
    /// The name the server certificate must match (an IP is checked against IP SANs).
    pub server_name: ServerName<'static>,
    pub ca: Option<CaSource>,
    pub token: TokenSource,
}

impl Upstream {
    /// The origin for logs and error messages, e.g. `https://10.0.0.1:443`.
    pub fn origin(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Configuration that cannot work. Every message says what was looked for and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no API server to proxy to: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are \
         not set (not running in a pod?) and no --server was given; run inside a pod or pass \
         --server=https://HOST:PORT"
    )]
    NoServer,
    #[error(
        "incomplete in-cluster environment: {missing} is not set while {present} is; both \
         KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are needed"
    )]
    PartialEnvironment {
        missing: &'static str,
        present: &'static str,
    },
    #[error("invalid API server URL {url:?}: {reason}")]
    BadServer { url: String, reason: String },
    #[error("invalid --tls-server-name {0:?}")]
    BadServerName(String),
    #[error(
        "no CA to verify {origin}: pass --certificate-authority=FILE (in a pod, {sa_ca} is \
         used), or --insecure-skip-tls-verify to skip verification"
    )]
    NoCa { origin: String, sa_ca: String },
    #[error(
        "specifying a root certificates file with the insecure flag is not allowed \
         (--certificate-authority and --insecure-skip-tls-verify together)"
    )]
    CaWithInsecure,
    #[error(
        "no service-account token at {path}: mount the service account (automountServiceAccountToken \
         or a projected token volume), pass --service-account-dir=DIR, or --token"
    )]
    NoToken { path: PathBuf },
}

/// Resolves the upstream from flags and environment: flags win, then in-cluster values.
pub fn resolve(cli: &Cli, env: &Environment) -> Result<Upstream, ConfigError> {
    let in_cluster = env.in_cluster()?;
    let sa_dir = cli
        .service_account_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVICE_ACCOUNT_DIR));
    // The service-account files apply in a pod, or when the directory is named.
    let use_sa = in_cluster.is_some() || cli.service_account_dir.is_some();

    let url = match (&cli.server, &in_cluster) {
        (Some(server), _) => server.clone(),
        (None, Some(url)) => url.clone(),
        (None, None) => return Err(ConfigError::NoServer),
    };
    let (scheme, authority, base_path) = parse_server(&url)?;

    let server_name = match &cli.tls_server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|_| ConfigError::BadServerName(name.clone()))?,
        None => server_name_of(&authority).ok_or_else(|| ConfigError::BadServer {
            url: url.clone(),
            reason: "the host is not a valid DNS name or IP address".to_owned(),
        })?,
    };

    let https = scheme == Scheme::HTTPS;
    let ca = match (&cli.certificate_authority, cli.insecure_skip_tls_verify) {
        (Some(_), true) => return Err(ConfigError::CaWithInsecure),
        _ if !https => None,
        (_, true) => Some(CaSource::Insecure),
        (Some(path), false) => Some(CaSource::File(path.clone())),
        (None, false) if use_sa => Some(CaSource::File(sa_dir.join("ca.crt"))),
        (None, false) => {
            return Err(ConfigError::NoCa {
                origin: format!("{scheme}://{authority}"),
                sa_ca: sa_dir.join("ca.crt").display().to_string(),
            });
        }
    };

    let token = if !https {
        // Credentials are never sent in clear text.
        TokenSource::None
    } else if let Some(token) = &cli.token {
        TokenSource::Static(token.clone())
    } else if use_sa {
        let path = sa_dir.join("token");
        if !path.exists() {
            return Err(ConfigError::NoToken { path });
        }
        TokenSource::File(path)
    } else {
        TokenSource::None
    };

    Ok(Upstream {
        scheme,
        authority,
        base_path,
        server_name,
        ca,
        token,
    })
}

/// Splits a server URL into scheme, authority (default port filled in) and path.
fn parse_server(url: &str) -> Result<(Scheme, Authority, String), ConfigError> {
    let bad = |reason: &str| ConfigError::BadServer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad("no scheme: write https://HOST:PORT"))?;
    if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
        return Err(bad("the scheme must be https or http"));
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("user information in the URL is not supported"));
    }
    if auth.port().is_some() && auth.port_u16().is_none() {
        return Err(bad("invalid port"));
    }
    let authority = auth.clone();
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, base_path))
}

/// The certificate name for a host: an IP address or a DNS name.
fn server_name_of(authority: &Authority) -> Option<ServerName<'static>> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["kube-ambassador"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    fn pod() -> Environment {
        Environment {
            service_host: Some("10.96.0.1".into()),
            service_port: Some("443".into()),
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
        };
        let err = resolve(&cli(&[]), &half).unwrap_err().to_string();
        assert!(err.contains("KUBERNETES_SERVICE_PORT is not set"), "{err}");
        let err = resolve(&cli(&["--service-account-dir=/nonexistent/sa"]), &pod())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sa/token"), "{err}");
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
        assert!(matches!(up.token, TokenSource::Static(_)));
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
