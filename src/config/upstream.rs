//! Where the API server is and how to authenticate to it (`Upstream`), the flags that
//! override it (`Overrides`), and the checks both sources share before it is final.

use std::path::PathBuf;

use http::uri::{Authority, Scheme};
use rustls_pki_types::ServerName;

use super::kubeconfig;
use crate::credentials::{Secret, TokenSource};
use crate::tls::{CaSource, ClientCertSource};

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
    pub client_cert: Option<ClientCertSource>,
    pub impersonate: Impersonation,
    /// kubeconfig `proxy-url`: reach the API server through this proxy.
    pub proxy_url: Option<ProxyUrl>,
    /// Ask the API server for uncompressed responses.
    pub disable_compression: bool,
    /// Where this came from, for the start-up log line.
    pub source: String,
}

/// The kubeconfig's `proxy-url`. Its `Debug` hides a password in the URL (the proxy's
/// credentials are as secret as the API server's).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(pub http::Uri);

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({})", redacted(&self.0.to_string()))
    }
}

/// `--as`, `--as-group`, `--as-uid` (or the kubeconfig's `as`, `as-groups`, `as-uid`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
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
    /// `looked`: one line per place looked at, in kubectl's order, saying what was missing.
    #[error(
        "no API server to proxy to. Looked for, in kubectl's order:\n{looked}\
         Pass --kubeconfig=FILE (or --context=NAME), run inside a pod, or pass \
         --server=https://HOST:PORT"
    )]
    NoServer { looked: String },
    #[error(
        "username/password or bearer token may be set, but not both (basic auth from \
         {basic}, a token from {token})"
    )]
    BasicWithToken { basic: &'static str, token: String },
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
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error("the kubeconfig cluster {cluster:?} has no server (in {files}); pass --server")]
    NoServerInKubeconfig { cluster: String, files: String },
    #[error("invalid base64 in {field} of {name:?}")]
    BadBase64 { field: &'static str, name: String },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a client certificate needs both the certificate and the key ({origin})")]
    HalfClientCert { origin: String },
    #[error(
        "the kubeconfig user {user:?} uses the auth-provider {provider:?}, which was removed \
         from kubectl in 1.26 and is not supported; use the exec plugin that replaces it: {replacement}"
    )]
    AuthProvider {
        user: String,
        provider: String,
        replacement: &'static str,
    },
    #[error(
        "the exec plugin {command:?} of kubeconfig user {user:?} has interactiveMode: Always, \
         which cannot work in a proxy (it has no terminal to ask on); use a plugin mode that \
         needs no input (interactiveMode: IfAvailable or Never), or log in beforehand"
    )]
    InteractiveExec { user: String, command: String },
    #[error(
        "the exec plugin of kubeconfig user {user:?} has apiVersion {version:?}; supported: \
         client.authentication.k8s.io/v1 and client.authentication.k8s.io/v1beta1"
    )]
    ExecApiVersion { user: String, version: String },
    #[error("invalid proxy-url {url:?}: {reason}")]
    BadProxyUrl { url: String, reason: String },
    #[error(
        "no service-account token at {path}: mount the service account (automountServiceAccountToken \
         or a projected token volume), pass --service-account-dir=DIR, or --token"
    )]
    NoToken { path: PathBuf },
}

/// The flags that choose or override where the API server is and how to authenticate
/// (kubectl's `--kubeconfig`, `--context`, `--server`, `--token`, ...). A plain struct: this
/// module turns it and the environment into an [`Upstream`] and knows nothing of the
/// command line (`cli` builds it).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub cluster: Option<String>,
    pub user: Option<String>,
    pub service_account_dir: Option<PathBuf>,
    pub server: Option<String>,
    pub certificate_authority: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
    pub tls_server_name: Option<String>,
    pub token: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub impersonate: Option<String>,
    pub impersonate_groups: Vec<String>,
    pub impersonate_uid: Option<String>,
    pub disable_compression: bool,
    pub exec_timeout: std::time::Duration,
}

/// What the two sources agree on, before the checks that apply to both.
pub(super) struct Pieces {
    pub(super) url: String,
    pub(super) tls_server_name: Option<String>,
    pub(super) ca: Option<CaSource>,
    pub(super) client_cert: Option<ClientCertSource>,
    pub(super) token: TokenSource,
    pub(super) impersonate: Impersonation,
    pub(super) proxy_url: Option<ProxyUrl>,
    pub(super) disable_compression: bool,
    pub(super) description: String,
    pub(super) missing_ca_hint: String,
}

pub(super) fn finish(flags: &Overrides, p: Pieces) -> Result<Upstream, ConfigError> {
    let (scheme, authority, base_path) = parse_server(&p.url)?;
    let name = flags.tls_server_name.clone().or(p.tls_server_name);
    let server_name = match name.filter(|n| !n.is_empty()) {
        Some(name) => {
            ServerName::try_from(name.clone()).map_err(|_| ConfigError::BadServerName(name))?
        }
        None => server_name_of(&authority).ok_or_else(|| ConfigError::BadServer {
            url: redacted(&p.url),
            reason: "the host is not a valid DNS name or IP address".to_owned(),
        })?,
    };
    let https = scheme == Scheme::HTTPS;
    if https && p.ca.is_none() {
        return Err(ConfigError::NoCa {
            origin: format!("{scheme}://{authority}"),
            sa_ca: p.missing_ca_hint,
        });
    }
    let mut impersonate = p.impersonate;
    if let Some(user) = &flags.impersonate {
        impersonate.user = Some(user.clone());
    }
    if !flags.impersonate_groups.is_empty() {
        impersonate.groups = flags.impersonate_groups.clone();
    }
    if let Some(uid) = &flags.impersonate_uid {
        impersonate.uid = Some(uid.clone());
    }
    Ok(Upstream {
        scheme,
        authority,
        base_path,
        server_name,
        // Credentials are never sent in clear text, and plain http has no TLS to set up.
        ca: if https { p.ca } else { None },
        token: if https { p.token } else { TokenSource::None },
        client_cert: if https { p.client_cert } else { None },
        impersonate,
        proxy_url: p.proxy_url,
        disable_compression: p.disable_compression || flags.disable_compression,
        source: p.description,
    })
}

/// `--username`/`--password` given on the command line, as basic auth. client-go's
/// `HasBasicAuth` counts either one alone; a missing one is empty.
pub(super) fn basic_flags(flags: &Overrides) -> Option<TokenSource> {
    (flags.username.is_some() || flags.password.is_some()).then(|| TokenSource::Basic {
        username: flags.username.clone().unwrap_or_default(),
        password: flags.password.clone().unwrap_or_else(|| Secret::new("")),
    })
}

/// `--client-certificate` and `--client-key`, which go together.
pub(super) fn client_cert_flags(
    flags: &Overrides,
) -> Result<Option<ClientCertSource>, ConfigError> {
    match (&flags.client_certificate, &flags.client_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ClientCertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        _ => Err(ConfigError::HalfClientCert {
            origin: "--client-certificate and --client-key".to_owned(),
        }),
    }
}

/// kubeconfig `proxy-url`: `http://` (CONNECT tunnel) or `socks5://`.
pub(super) fn parse_proxy_url(url: &str) -> Result<http::Uri, ConfigError> {
    let bad = |reason: &str| ConfigError::BadProxyUrl {
        url: redacted(url),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "socks5" | "socks5h") => {}
        Some("https") => {
            return Err(bad(
                "https proxies are not supported; use http:// or socks5://",
            ));
        }
        _ => return Err(bad("the scheme must be http or socks5")),
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// A URL for messages: a password in it becomes `xxxxx` (as Go's `URL.Redacted`), and a
/// user part without a password, which may be a token, is masked whole.
pub(super) fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:xxxxx@{host}{tail}"),
            None => format!("{scheme}xxxxx@{host}{tail}"),
        },
        None => url.to_owned(),
    }
}

/// Splits a server URL into scheme, authority (default port filled in) and path.
pub(super) fn parse_server(url: &str) -> Result<(Scheme, Authority, String), ConfigError> {
    let bad = |reason: &str| ConfigError::BadServer {
        url: redacted(url),
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
pub(super) fn server_name_of(authority: &Authority) -> Option<ServerName<'static>> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}
