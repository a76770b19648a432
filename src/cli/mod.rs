//! Command-line flags: kubectl proxy's, the kubeconfig overrides kubectl accepts, and
//! kube-ambassador's own (service-account directory, shutdown timing).
//!
//! Flag names, defaults and help texts follow `kubectl proxy --help` so that scripts and
//! muscle memory carry over.

mod duration;
mod inject;

pub use duration::{parse_duration, parse_positive_duration, parse_timeout};
pub use inject::{Command, InjectArgs};

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config;
use crate::credentials::Secret;
use crate::proxy::filter;

/// kubectl proxy's port; `--unix-socket` may only be combined with this one.
pub const DEFAULT_PORT: u16 = 8001;

/// Help headings: kubectl proxy's own flags, the kubeconfig flags kubectl accepts
/// everywhere, and ours.
const PROXY: &str = "kubectl proxy options";
const KUBECONFIG: &str = "Kubeconfig options (as kubectl's global flags)";
const OURS: &str = "kube-ambassador options";
/// kubectl's global flags that mean nothing to a proxy: accepted so that scripts written
/// for `kubectl proxy` run unchanged, and named once in the log (see [`Cli::ignored`]).
const GLOBAL: &str = "kubectl global flags (accepted, no effect on a proxy)";

/// Serve the Kubernetes API on a local port, with TLS and credentials handled for you.
#[derive(Parser, Clone)]
#[command(
    name = "kube-ambassador",
    version,
    max_term_width = 100,
    about = "Creates a proxy server or application-level gateway between localhost and the \
             Kubernetes API server.",
    long_about = "Creates a proxy server or application-level gateway between localhost and \
                  the Kubernetes API server. It forwards every request to the API server over \
                  TLS, verifying it with the configured CA and authenticating with the \
                  service-account token (re-read as soon as the kubelet rotates it).\n\n\
                  A drop-in replacement for `kubectl proxy`: same flags, same filter, same \
                  start-up line.",
    after_help = "Examples:
  # In a pod (sidecar): in-cluster configuration, token re-read on rotation
  kube-ambassador --admin-address=0.0.0.0:8002

  # On a workstation: the current kubeconfig context, like `kubectl proxy`
  kube-ambassador

  # Serve the API on a random port, and static files from ./www under /static/
  kube-ambassador --port=0 --www=./www

  # Serve the API under /k8s-api/ and refuse writes
  kube-ambassador --api-prefix=/k8s-api --reject-methods='POST,PUT,PATCH,DELETE'"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Without a subcommand it is the proxy, with kubectl proxy's flags, so that scripts
    /// calling `kubectl proxy FLAGS` work unchanged.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The port on which to run the proxy. Set to 0 to pick a random port.
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT, help_heading = PROXY)]
    pub port: u16,

    /// The IP address on which to serve on (`::1` and `[::1]` both work for IPv6).
    #[arg(long, default_value = "127.0.0.1", help_heading = PROXY)]
    pub address: String,

    /// Regular expression for hosts that the proxy should accept.
    #[arg(long, default_value = filter::DEFAULT_ACCEPT_HOSTS, help_heading = PROXY)]
    pub accept_hosts: String,

    /// Regular expression for paths that the proxy should accept.
    #[arg(long, default_value = filter::DEFAULT_ACCEPT_PATHS, help_heading = PROXY)]
    pub accept_paths: String,

    /// Regular expression for paths that the proxy should reject. Paths specified here
    /// will be rejected even accepted by --accept-paths. The default is kubectl's
    /// (`^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach`) plus the node proxy's exec
    /// endpoints (`^/api/.*/nodes/.*/proxy/(run|exec|attach|portForward|cri)`); a value
    /// given here replaces it whole.
    // The default is spelled out above, not in clap's `[default: …]`, which cannot wrap.
    #[arg(
        long,
        default_value = filter::DEFAULT_REJECT_PATHS,
        hide_default_value = true,
        help_heading = PROXY
    )]
    pub reject_paths: String,

    /// Regular expression for HTTP methods that the proxy should reject (example
    /// --reject-methods='POST,PUT,PATCH').
    #[arg(long, default_value = filter::DEFAULT_REJECT_METHODS, help_heading = PROXY)]
    pub reject_methods: String,

    /// If true, disable request filtering in the proxy. This is dangerous, and can leave
    /// you vulnerable to XSRF attacks, when used with an accessible port.
    #[arg(long, help_heading = PROXY)]
    pub disable_filter: bool,

    /// Prefix to serve the proxied API under.
    #[arg(long, default_value = "/", help_heading = PROXY)]
    pub api_prefix: String,

    /// Also serve static files from the given directory under the specified prefix.
    #[arg(short = 'w', long, value_name = "DIR", help_heading = PROXY)]
    pub www: Option<PathBuf>,

    /// Prefix to serve static files under, if static file directory is specified.
    #[arg(short = 'P', long, default_value = "/static/", help_heading = PROXY)]
    pub www_prefix: String,

    /// Unix socket on which to run the proxy.
    #[arg(short = 'u', long, value_name = "PATH", help_heading = PROXY)]
    pub unix_socket: Option<PathBuf>,

    /// If true, enables automatic path appending of the kube context server path to each
    /// request.
    #[arg(long, help_heading = PROXY)]
    pub append_server_path: bool,

    /// keepalive specifies the keep-alive period for an active network connection to the
    /// API server. 0 means client-go's 30 s, which kubectl proxy's API requests use
    /// whatever this flag says.
    #[arg(long, default_value = "0s", value_parser = parse_duration, help_heading = PROXY)]
    pub keepalive: Duration,

    /// The address and port of the Kubernetes API server.
    #[arg(short = 's', long, help_heading = KUBECONFIG)]
    pub server: Option<String>,

    /// Bearer token for authentication to the API server. Read once and never renewed:
    /// a kubeconfig user's `tokenFile`, or the service account (--service-account-dir),
    /// is re-read when it changes.
    #[arg(long, help_heading = KUBECONFIG)]
    pub token: Option<Secret>,

    /// Path to a cert file for the certificate authority.
    #[arg(long, help_heading = KUBECONFIG)]
    pub certificate_authority: Option<PathBuf>,

    /// Server name to use for server certificate validation. If it is not provided, the
    /// hostname used to contact the server is used.
    #[arg(long, help_heading = KUBECONFIG)]
    pub tls_server_name: Option<String>,

    /// If true, the server's certificate will not be checked for validity. This will make
    /// your HTTPS connections insecure.
    #[arg(long, help_heading = KUBECONFIG)]
    pub insecure_skip_tls_verify: bool,

    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, value_name = "FILE", help_heading = KUBECONFIG)]
    pub kubeconfig: Option<PathBuf>,

    /// The name of the kubeconfig context to use.
    #[arg(long, help_heading = KUBECONFIG)]
    pub context: Option<String>,

    /// The name of the kubeconfig cluster to use.
    #[arg(long, help_heading = KUBECONFIG)]
    pub cluster: Option<String>,

    /// The name of the kubeconfig user to use.
    #[arg(long, help_heading = KUBECONFIG)]
    pub user: Option<String>,

    /// Path to a client certificate file for TLS.
    #[arg(long, value_name = "FILE", help_heading = KUBECONFIG)]
    pub client_certificate: Option<PathBuf>,

    /// Path to a client key file for TLS.
    #[arg(long, value_name = "FILE", help_heading = KUBECONFIG)]
    pub client_key: Option<PathBuf>,

    /// Username for basic authentication to the API server (kubectl's --username; it
    /// replaces the kubeconfig user's, and cannot be combined with a bearer token).
    #[arg(long, help_heading = KUBECONFIG)]
    pub username: Option<String>,

    /// Password for basic authentication to the API server (kubectl's --password).
    #[arg(long, help_heading = KUBECONFIG)]
    pub password: Option<Secret>,

    /// Username to impersonate for the operation. User could be a regular user or a
    /// service account in a namespace.
    #[arg(long = "as", value_name = "USER", help_heading = KUBECONFIG)]
    pub impersonate: Option<String>,

    /// Group to impersonate for the operation, this flag can be repeated to specify
    /// multiple groups.
    #[arg(long = "as-group", value_name = "GROUP", help_heading = KUBECONFIG)]
    pub impersonate_groups: Vec<String>,

    /// UID to impersonate for the operation.
    #[arg(long = "as-uid", value_name = "UID", help_heading = KUBECONFIG)]
    pub impersonate_uid: Option<String>,

    /// The length of time to wait for the API server's response headers before giving
    /// up on a request (a watch, once started, is never cut). A number without a unit is
    /// seconds, as in kubectl (e.g. 1s, 2m, 3h). Zero means no timeout.
    #[arg(long, default_value = "0", value_parser = parse_timeout, help_heading = KUBECONFIG)]
    pub request_timeout: Duration,

    /// If true, ask the API server for uncompressed responses.
    #[arg(long, help_heading = KUBECONFIG)]
    pub disable_compression: bool,

    /// How long an exec credential plugin may run before it is stopped and the request
    /// fails with an error.
    #[arg(long, default_value = "30s", value_parser = parse_duration, help_heading = OURS)]
    pub exec_timeout: Duration,

    /// Directory holding the pod's service-account `token`, `ca.crt` and `namespace`
    /// (used in a pod, with KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT). Naming
    /// it asks for in-cluster mode: only an explicit --kubeconfig is read then.
    /// [default: /var/run/secrets/kubernetes.io/serviceaccount]
    #[arg(long, value_name = "DIR", help_heading = OURS)]
    pub service_account_dir: Option<PathBuf>,

    /// How long to wait for a TCP connection to the API server.
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = OURS)]
    pub connect_timeout: Duration,

    /// Which requests go to the API server over HTTP/2 (offered in ALPN as `h2,
    /// http/1.1`). `auto`: long-running ones (watches, `follow=true` logs) share a few
    /// HTTP/2 connections, a new one opened whenever the others are at the server's
    /// concurrent-stream limit; short ones use kept-alive HTTP/1.1 connections, which the
    /// API server's Go stack answers with less work (measured: see the README). `true`:
    /// every request over HTTP/2, as kubectl does. `false`: HTTP/1.1 only, one connection
    /// per concurrent request. Upgrades always get a fresh HTTP/1.1 connection, and a
    /// server that declines HTTP/2 gets HTTP/1.1.
    #[arg(
        long,
        env = "KUBE_AMBASSADOR_UPSTREAM_HTTP2",
        default_value = "auto",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "auto|true|false",
        value_parser = parse_http2,
        help_heading = OURS
    )]
    pub upstream_http2: UpstreamHttp2,

    /// Ping an HTTP/2 connection to the API server that has been silent this long
    /// (client-go's 30 s); a request waiting for its response headers on a connection
    /// silent for a second has it pinged at once. An idle HTTP/1.1 connection, which
    /// cannot be pinged, is closed after this long instead of being reused.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, help_heading = OURS)]
    pub upstream_ping_interval: Duration,

    /// A ping not answered within this closes the connection as dead: new requests go to
    /// a fresh one, and the requests without a body that were waiting on it are sent
    /// again there.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration, help_heading = OURS)]
    pub upstream_ping_timeout: Duration,

    /// A short GET, HEAD, OPTIONS or TRACE without a body, sent over HTTP/1.1 and still
    /// without response headers after this, is sent once more (a hedged request: over HTTP/2 when
    /// the server speaks it, else on a fresh connection) and the first answer wins. An
    /// HTTP/1.1 connection cannot be pinged, and a frozen one looks like a slow server.
    /// At most one hedge per attempt and 16 in flight in the process, so a slow API
    /// server is never sent more than 16 duplicates at a time; watches are never hedged.
    /// 0 disables it.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = OURS)]
    pub upstream_hedge_after: Duration,

    /// Resume a JSON watch whose upstream stream ends early (API server restart, GOAWAY,
    /// dead connection, the server's own watch timeout): re-watch from the last
    /// resourceVersion seen and keep writing to the same response, so the client sees one
    /// stream. `--watch-resume=false`: the stream ends with its upstream, as in kubectl.
    #[arg(
        long,
        env = "KUBE_AMBASSADOR_WATCH_RESUME",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        help_heading = OURS
    )]
    pub watch_resume: bool,

    /// After SIGTERM, keep serving this long before stopping (the app container gets its
    /// SIGTERM at the same moment and may still call the API). SIGINT skips it.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = OURS)]
    pub shutdown_delay: Duration,

    /// After the delay, how long in-flight requests and tunnels may take to finish.
    #[arg(long, default_value = "20s", value_parser = parse_duration, help_heading = OURS)]
    pub shutdown_grace: Duration,

    /// Refuse client connections beyond this many open ones with a 503 Status (0: no
    /// limit). Each open watch holds one connection, and each stream of an h2c
    /// connection counts as one more. The default leaves a sidecar's app room for
    /// thousands of watches (about 10 KiB each) while bounding what it can make the
    /// proxy hold: a response nobody reads pins over a MiB.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS, value_name = "N", help_heading = OURS)]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open (never applies to a running watch or tunnel).
    #[arg(long, default_value = "30s", value_parser = parse_duration, help_heading = OURS)]
    pub header_read_timeout: Duration,

    /// Threads serving requests. 1 (the default) runs everything on one thread: a sidecar
    /// rarely has more than a core, and one thread costs 15–25% less CPU per request
    /// (no wake-ups across threads). 0: one per CPU.
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = OURS)]
    pub worker_threads: usize,

    /// Serve /healthz, /readyz and /metrics on this HOST:PORT (off unless set; it never
    /// proxies). Example: --admin-address=0.0.0.0:8002.
    #[arg(long, value_name = "HOST:PORT", help_heading = OURS)]
    pub admin_address: Option<String>,

    /// Log format on stderr: text or json.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = OURS)]
    pub log_format: LogFormat,

    /// Log one line per request: method, path, status, duration, bytes, upstream time.
    #[arg(long, help_heading = OURS)]
    pub access_log: bool,

    // Kubernetes-aware (issue 17): budget, policy, recording.
    /// Requests per second this pod may send to the API server (client-go's token bucket,
    /// over all requests; a watch or followed log takes one token when it starts). Over
    /// budget a request is answered at once with 429 and Retry-After, which client-go
    /// honours. 0 (the default): no budget.
    #[arg(long, default_value_t = 0.0, value_name = "QPS", help_heading = OURS)]
    pub qps: f64,

    /// Requests allowed at once above --qps (the bucket's size; full at start-up).
    #[arg(long, default_value_t = 10, value_name = "N", help_heading = OURS)]
    pub burst: u32,

    /// Let a request through only if a rule of FILE allows it (Role and ClusterRole
    /// documents, multi-document YAML or a List, as `kubectl apply` takes them; RBAC's
    /// matching). Refused requests get a 403 Status and never reach the API server. A
    /// Role applies in the pod's namespace (--namespace); the file is re-read when it
    /// changes, a bad one keeping the last good policy.
    #[arg(long, value_name = "FILE", help_heading = OURS)]
    pub policy: Option<PathBuf>,

    /// Record what the app asks for as RBAC in FILE, kept up to date (atomically, at most
    /// every 2 s, and at exit): a Role for the pod's namespace, a ClusterRole for the rest
    /// (cluster-scoped resources, other namespaces, non-resource URLs), one rule per
    /// resource with its verbs; requests refused with 403 are included and marked.
    #[arg(long, value_name = "FILE", help_heading = OURS)]
    pub record_rbac: Option<PathBuf>,

    /// The pod's namespace, where --policy Roles apply and --record-rbac's Role is
    /// written (default: the service account's `namespace` file, else `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE", help_heading = KUBECONFIG)]
    pub namespace: Option<String>,

    /// Number for the log level verbosity (0: info; 4: debug; 6 and more: trace).
    #[arg(short = 'v', long = "v", default_value_t = 0, value_name = "LEVEL", help_heading = KUBECONFIG)]
    pub verbosity: u8,

    // kubectl's global flags with no meaning for a proxy (kubectl's
    // staging/src/k8s.io/kubectl/pkg/cmd/cmd.go and component-base/logs): accepted with
    // kubectl's value syntax, then ignored and named once at start-up.
    /// Default cache directory (kubectl's discovery and HTTP cache; a proxy keeps none).
    #[arg(long, value_name = "DIR", help_heading = GLOBAL)]
    pub cache_dir: Option<String>,

    /// Require server version to match client version.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = GLOBAL)]
    pub match_server_version: Option<bool>,

    /// Name of profile to capture (kubectl's Go profiler).
    #[arg(long, value_name = "NAME", help_heading = GLOBAL)]
    pub profile: Option<String>,

    /// Name of the file to write the profile to.
    #[arg(long, value_name = "FILE", help_heading = GLOBAL)]
    pub profile_output: Option<String>,

    /// Comma-separated list of pattern=N settings for file-filtered logging (klog; use
    /// RUST_LOG here).
    #[arg(long, value_name = "PATTERN=N", help_heading = GLOBAL)]
    pub vmodule: Option<String>,

    /// Maximum number of seconds between log flushes (klog; every line is written at once
    /// here).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    pub log_flush_frequency: Option<Duration>,

    /// Treat warnings received from the server as errors (a proxy passes them on to its
    /// client in the `Warning` header).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = GLOBAL)]
    pub warnings_as_errors: Option<bool>,
}

impl Cli {
    /// The kubectl global flags given that have no effect here, as `--flag=value`, for the
    /// one start-up log line that says so.
    pub fn ignored(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        add("cache-dir", self.cache_dir.clone());
        add(
            "match-server-version",
            self.match_server_version.map(|b| b.to_string()),
        );
        add("profile", self.profile.clone());
        add("profile-output", self.profile_output.clone());
        add("vmodule", self.vmodule.clone());
        add(
            "log-flush-frequency",
            self.log_flush_frequency.map(|d| format!("{d:?}")),
        );
        add(
            "warnings-as-errors",
            self.warnings_as_errors.map(|b| b.to_string()),
        );
        out
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--upstream-http2`: which requests go over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttp2 {
    /// Long-running requests only.
    Auto,
    /// Every request.
    Always,
    /// None.
    Never,
}

fn parse_http2(s: &str) -> Result<UpstreamHttp2, String> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(UpstreamHttp2::Auto),
        "true" | "1" | "yes" | "on" => Ok(UpstreamHttp2::Always),
        "false" | "0" | "no" | "off" => Ok(UpstreamHttp2::Never),
        _ => Err(format!("{s:?} is not one of auto, true, false")),
    }
}

impl Cli {
    /// The flags [`config::resolve`] reads, as the plain struct it takes.
    pub fn overrides(&self) -> config::Overrides {
        config::Overrides {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
            service_account_dir: self.service_account_dir.clone(),
            server: self.server.clone(),
            certificate_authority: self.certificate_authority.clone(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            tls_server_name: self.tls_server_name.clone(),
            token: self.token.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            client_certificate: self.client_certificate.clone(),
            client_key: self.client_key.clone(),
            impersonate: self.impersonate.clone(),
            impersonate_groups: self.impersonate_groups.clone(),
            impersonate_uid: self.impersonate_uid.clone(),
            disable_compression: self.disable_compression,
            exec_timeout: self.exec_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "s", "5x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_timeout_without_a_unit_is_seconds_as_in_kubectl() {
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "-1", "5x", "s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubectls_short_flags() {
        let cli = Cli::try_parse_from([
            "kube-ambassador",
            "-w",
            "/srv/www",
            "-P",
            "/ui/",
            "-u",
            "/run/proxy.sock",
            "--append-server-path",
        ])
        .unwrap();
        assert_eq!(cli.www, Some(PathBuf::from("/srv/www")));
        assert_eq!(cli.www_prefix, "/ui/");
        assert_eq!(cli.unix_socket, Some(PathBuf::from("/run/proxy.sock")));
        assert!(cli.append_server_path);
    }

    #[test]
    fn defaults_are_kubectls() {
        let cli = Cli::try_parse_from(["kube-ambassador"]).unwrap();
        assert_eq!(cli.port, 8001);
        assert_eq!(cli.address, "127.0.0.1");
        assert_eq!(cli.api_prefix, "/");
        assert_eq!(cli.reject_methods, "^$");
        assert!(!cli.disable_filter);
        assert_eq!(cli.www, None);
        assert_eq!(cli.www_prefix, "/static/");
        assert_eq!(cli.unix_socket, None);
        assert!(!cli.append_server_path);
    }
}
