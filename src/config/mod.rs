//! Resolving flags and the environment into one description of the upstream.
//!
//! Parsing only: nothing here opens a connection or knows about hyper. The result,
//! [`Upstream`], is fixed for the life of the process (the API server's origin can
//! never change at run time); what may change (token, CA) is named by its source and
//! loaded by `credentials` and `tls`.

mod in_cluster;
pub(crate) mod kubeconfig;

use std::path::{Path, PathBuf};

use http::uri::{Authority, Scheme};
use rustls_pki_types::ServerName;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

use crate::credentials::{ExecSpec, Secret, TokenSource};
use crate::tls::{CaSource, ClientCertSource};

pub(crate) use in_cluster::{DEFAULT_SERVICE_ACCOUNT_DIR, Environment};

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

/// A kubeconfig context, with command-line overrides.
fn from_kubeconfig(flags: &Overrides, sel: kubeconfig::Selected) -> Result<Upstream, ConfigError> {
    let cluster = &sel.cluster;
    let user = &sel.user;
    let url = flags
        .server
        .clone()
        .or_else(|| cluster.server.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::NoServerInKubeconfig {
            cluster: sel.cluster_name.clone(),
            files: sel.files.clone(),
        })?;
    let ca_data = match &cluster.certificate_authority_data {
        Some(data) => Some(kubeconfig_data(data).ok_or_else(|| ConfigError::BadBase64 {
            field: "certificate-authority-data",
            name: sel.cluster_name.clone(),
        })?),
        None => None,
    };
    let ca = if let Some(path) = &flags.certificate_authority {
        if flags.insecure_skip_tls_verify {
            return Err(ConfigError::CaWithInsecure);
        }
        Some(CaSource::File(path.clone()))
    } else if flags.insecure_skip_tls_verify {
        Some(CaSource::Insecure)
    } else if cluster.insecure_skip_tls_verify {
        if ca_data.is_some() || cluster.certificate_authority.is_some() {
            return Err(ConfigError::CaWithInsecure);
        }
        Some(CaSource::Insecure)
    } else if let Some(pem) = &ca_data {
        // client-go: certificate-authority-data wins over certificate-authority.
        Some(CaSource::Pem(pem.clone()))
    } else {
        cluster.certificate_authority.clone().map(CaSource::File)
    };

    let client_cert = match client_cert_flags(flags)? {
        Some(flags) => Some(flags),
        None => kubeconfig_client_cert(&sel)?,
    };
    let user_name = sel.user_name.clone().unwrap_or_default();
    // client-go merges --username/--password over the kubeconfig user's (clientcmd
    // `getUserIdentificationPartialConfig`), and its transport refuses basic auth beside
    // a bearer token ("username/password or bearer token may be set, but not both",
    // client-go transport.New); so does the kubeconfig validation (`validateAuthInfo`).
    let token = if flags.username.is_some() || flags.password.is_some() {
        let token = if flags.token.is_some() {
            Some("--token".to_owned())
        } else if user.token_file.is_some() || user.token.is_some() {
            Some(format!("kubeconfig user {user_name:?}"))
        } else {
            None
        };
        if let Some(token) = token {
            return Err(ConfigError::BasicWithToken {
                basic: "--username/--password",
                token,
            });
        }
        TokenSource::Basic {
            username: flags
                .username
                .clone()
                .or_else(|| user.username.clone())
                .unwrap_or_default(),
            password: flags
                .password
                .clone()
                .or_else(|| user.password.clone())
                .unwrap_or_else(|| Secret::new("")),
        }
    } else if let Some(token) = &flags.token {
        TokenSource::Static(token.clone(), "--token")
    } else if let Some(path) = &user.token_file {
        TokenSource::File(path.clone())
    } else if let Some(token) = &user.token {
        TokenSource::Static(token.clone(), "kubeconfig token")
    } else if let Some(exec) = &user.exec {
        TokenSource::Exec(Box::new(exec_spec(
            flags,
            &sel,
            exec,
            &url,
            ca_data.as_deref(),
        )?))
    } else if let (Some(username), Some(password)) = (&user.username, &user.password) {
        TokenSource::Basic {
            username: username.clone(),
            password: password.clone(),
        }
    } else if let Some(provider) = &user.auth_provider {
        return Err(ConfigError::AuthProvider {
            user: user_name,
            provider: provider.name.clone(),
            replacement: auth_provider_replacement(&provider.name),
        });
    } else {
        TokenSource::None
    };
    let impersonate = Impersonation {
        user: flags
            .impersonate
            .clone()
            .or_else(|| user.impersonate.clone()),
        groups: if flags.impersonate_groups.is_empty() {
            user.impersonate_groups.clone().unwrap_or_default()
        } else {
            flags.impersonate_groups.clone()
        },
        uid: flags
            .impersonate_uid
            .clone()
            .or_else(|| user.impersonate_uid.clone()),
    };
    let proxy_url = match &cluster.proxy_url {
        Some(p) if !p.expose().is_empty() => Some(ProxyUrl(parse_proxy_url(p.expose())?)),
        _ => None,
    };
    finish(
        flags,
        Pieces {
            url,
            tls_server_name: cluster.tls_server_name.clone(),
            ca,
            client_cert,
            token,
            impersonate,
            proxy_url,
            disable_compression: cluster.disable_compression,
            description: format!(
                "kubeconfig {}, context {}, cluster {}, user {}",
                sel.files,
                sel.context.as_deref().unwrap_or("(none)"),
                sel.cluster_name,
                sel.user_name.as_deref().unwrap_or("(none)")
            ),
            missing_ca_hint: "the kubeconfig cluster's certificate-authority(-data)".to_owned(),
        },
    )
}

/// What the two sources agree on, before the checks that apply to both.
struct Pieces {
    url: String,
    tls_server_name: Option<String>,
    ca: Option<CaSource>,
    client_cert: Option<ClientCertSource>,
    token: TokenSource,
    impersonate: Impersonation,
    proxy_url: Option<ProxyUrl>,
    disable_compression: bool,
    description: String,
    missing_ca_hint: String,
}

fn finish(flags: &Overrides, p: Pieces) -> Result<Upstream, ConfigError> {
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
fn basic_flags(flags: &Overrides) -> Option<TokenSource> {
    (flags.username.is_some() || flags.password.is_some()).then(|| TokenSource::Basic {
        username: flags.username.clone().unwrap_or_default(),
        password: flags.password.clone().unwrap_or_else(|| Secret::new("")),
    })
}

/// `--client-certificate` and `--client-key`, which go together.
fn client_cert_flags(flags: &Overrides) -> Result<Option<ClientCertSource>, ConfigError> {
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

fn kubeconfig_client_cert(
    sel: &kubeconfig::Selected,
) -> Result<Option<ClientCertSource>, ConfigError> {
    let u = &sel.user;
    let origin = || {
        format!(
            "kubeconfig user {:?}",
            sel.user_name.as_deref().unwrap_or("")
        )
    };
    let cert = match (&u.client_certificate_data, &u.client_certificate) {
        (Some(data), _) => Some(Err(data)),
        (None, Some(path)) => Some(Ok(path)),
        (None, None) => None,
    };
    let key = match (&u.client_key_data, &u.client_key) {
        (Some(data), _) => Some(Err(data)),
        (None, Some(path)) => Some(Ok(path)),
        (None, None) => None,
    };
    let decode = |field: &'static str, data: &str| {
        kubeconfig_data(data).ok_or_else(|| ConfigError::BadBase64 {
            field,
            name: sel.user_name.clone().unwrap_or_default(),
        })
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(Ok(cert)), Some(Ok(key))) => Ok(Some(ClientCertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (Some(cert), Some(key)) => {
            let cert = match cert {
                Ok(path) => std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?,
                Err(data) => decode("client-certificate-data", data)?,
            };
            let key = match key {
                Ok(path) => std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?,
                Err(data) => decode("client-key-data", data.expose())?,
            };
            Ok(Some(ClientCertSource::Pem { cert, key }))
        }
        _ => Err(ConfigError::HalfClientCert { origin: origin() }),
    }
}

/// Builds the plugin invocation; refuses what cannot work in a proxy.
fn exec_spec(
    flags: &Overrides,
    sel: &kubeconfig::Selected,
    exec: &kubeconfig::ExecConfig,
    url: &str,
    ca_data: Option<&[u8]>,
) -> Result<ExecSpec, ConfigError> {
    let user = sel.user_name.clone().unwrap_or_default();
    let api_version = exec.api_version.clone().unwrap_or_default();
    if !matches!(
        api_version.as_str(),
        "client.authentication.k8s.io/v1" | "client.authentication.k8s.io/v1beta1"
    ) {
        return Err(ConfigError::ExecApiVersion {
            user,
            version: api_version,
        });
    }
    if exec.interactive_mode.as_deref() == Some("Always") {
        return Err(ConfigError::InteractiveExec {
            user,
            command: exec.command.clone(),
        });
    }
    let cluster = exec.provide_cluster_info.then(|| {
        let c = &sel.cluster;
        let ca = match (ca_data, &c.certificate_authority) {
            (Some(pem), _) => Some(pem.to_vec()),
            (None, Some(path)) => std::fs::read(path).ok(),
            (None, None) => None,
        };
        let mut info = serde_json::json!({ "server": url });
        let obj = &mut info;
        if let Some(name) = &c.tls_server_name {
            obj["tls-server-name"] = name.clone().into();
        }
        if c.insecure_skip_tls_verify {
            obj["insecure-skip-tls-verify"] = true.into();
        }
        if let Some(ca) = ca {
            obj["certificate-authority-data"] = STANDARD.encode(&ca).into();
        }
        if let Some(proxy) = c.proxy_url.as_ref().map(Secret::expose) {
            obj["proxy-url"] = proxy.into();
        }
        if c.disable_compression {
            obj["disable-compression"] = true.into();
        }
        let config = c
            .extensions
            .iter()
            .flatten()
            .find(|e| e.name == "client.authentication.k8s.io/exec")
            .and_then(|e| e.extension.clone());
        if let Some(config) = config {
            obj["config"] = config;
        }
        info
    });
    Ok(ExecSpec {
        command: exec.command.clone(),
        args: exec.args.clone().unwrap_or_default(),
        env: exec
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        api_version,
        install_hint: exec.install_hint.clone(),
        cluster,
        timeout: flags.exec_timeout,
    })
}

/// The exec plugin that replaced each in-tree auth provider (removed in kubectl 1.26).
fn auth_provider_replacement(name: &str) -> &'static str {
    match name {
        "gcp" => {
            "gke-gcloud-auth-plugin (https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl)"
        }
        "azure" => "kubelogin (https://azure.github.io/kubelogin/)",
        "oidc" => "an OIDC exec plugin such as kubelogin (kubectl oidc-login)",
        _ => "the exec credential plugin your provider documents",
    }
}

/// kubeconfig `proxy-url`: `http://` (CONNECT tunnel) or `socks5://`.
fn parse_proxy_url(url: &str) -> Result<http::Uri, ConfigError> {
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
fn redacted(url: &str) -> String {
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
fn parse_server(url: &str) -> Result<(Scheme, Authority, String), ConfigError> {
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
fn server_name_of(authority: &Authority) -> Option<ServerName<'static>> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// A kubeconfig `*-data` field, decoded as client-go does: Go's `encoding/json` reads a
/// `[]byte` with `base64.StdEncoding`, which takes the standard alphabet only, skips
/// `\r` and `\n` (wrapped data), and is not strict about the unused bits of the last
/// character (Go's `Encoding.Strict` is off by default).
fn kubeconfig_data(data: &str) -> Option<Vec<u8>> {
    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    let unwrapped: Vec<u8> = data
        .bytes()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    GO_STD.decode(unwrapped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_data_is_decoded_as_go_decodes_it() {
        assert_eq!(kubeconfig_data("Zm9v\nYmFy").unwrap(), b"foobar", "wrapped");
        assert_eq!(kubeconfig_data("Zm9vYg==").unwrap(), b"foob");
        // Go's StdEncoding: not strict about the last character's unused bits.
        assert_eq!(kubeconfig_data("Zh==").unwrap(), b"f");
        assert!(
            kubeconfig_data("-_8=").is_none(),
            "the URL-safe alphabet is not Go's"
        );
        assert!(
            kubeconfig_data("Zm9vYg").is_none(),
            "StdEncoding wants its padding"
        );
        assert!(
            kubeconfig_data("Zm9v YmFy").is_none(),
            "only CR and LF are skipped"
        );
        assert!(kubeconfig_data("Zg==Zg").is_none());
    }
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
