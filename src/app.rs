//! The `run` wiring: flags in, every part built and connected along the request's path,
//! served until a signal, then shut down in order (watches ended, connections drained,
//! the recorded Role written).

use std::io::Write as _;
use std::sync::Arc;

use crate::access::{budget, gate, policy, record};
use crate::cli::Cli;
use crate::config::{ConfigError, Environment};
use crate::credentials::{Credentials, CredentialsError};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::filter::{Filter, FilterSpec, PatternError};
use crate::proxy::router::{ApiPrefix, SamePrefix};
use crate::server::ListenError;
use crate::server::{self as listener, admin};
use crate::shutdown::Signal;
use crate::tls::{CaSource, Tls, TlsError};
use crate::upstream::ConnectOptions;
use crate::upstream::h2pool;
use crate::www::Www;
use crate::{cli, config, memory, proxy, reload, shutdown, upstream};

/// Why the proxy could not start. Each message names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Filter(#[from] PatternError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot write the start-up line to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("cannot set --unix-socket and --port at the same time")]
    UnixSocketWithPort,
    #[error(transparent)]
    SamePrefix(#[from] SamePrefix),
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

/// What the flags alone decide, checked before anything else is read: a typo in one is
/// reported even on a machine with no API server configured (whose error would
/// otherwise hide it).
struct Checked {
    budget: Option<budget::Budget>,
    policy: Option<Arc<policy::PolicyFile>>,
    recorder: Option<Arc<record::Recorder>>,
    prefix: ApiPrefix,
    www: Option<Www>,
    filter: Option<Filter>,
    pod_namespace: String,
}

/// Runs the proxy until a signal stops it. Returns `Ok` after a clean shutdown.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let checked = check_flags(&cli).await?;
    let (upstream, tls, creds) = connect_settings(&cli)?;
    let metrics = Arc::new(Metrics::default());
    let (trigger, shutdown) = shutdown::channel();
    let open_files = listener::raise_open_files_limit();
    memory::spawn_trim();

    let listener = match &cli.unix_socket {
        Some(path) => listener::bind_unix(path).await?,
        None => listener::bind(&cli.address, cli.port).await?.into(),
    };
    let local = listener.local()?;
    announce(&upstream, &local, open_files);
    let admin = match &cli.admin_address {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };

    let times = creds.token_times();
    metrics.token_times(times.issued, times.expiry);
    let reload = start_reload(&checked, &creds, &tls, &metrics);
    let recorder = checked.recorder.clone();
    let proxy = build_proxy(&cli, checked, upstream, &tls, creds, metrics, &shutdown);
    if let Some(admin) = admin {
        if let Ok(addr) = admin.local_addr() {
            tracing::info!("admin endpoints on http://{addr} (/healthz, /readyz, /metrics)");
        }
        admin::spawn(admin, proxy.clone(), shutdown.clone(), serve_options(&cli));
    }
    let record_writer = recorder.clone().map(record::spawn_writer);
    let server = tokio::spawn(listener::serve(
        listener,
        proxy,
        shutdown,
        serve_options(&cli),
    ));

    // Handlers in place before the line below: a script may signal as soon as it reads it.
    let signals = shutdown::Signals::new();
    // Start-up's scratch memory (config, regexes, TLS set-up) goes back before serving.
    memory::trim();
    // Scripts wait for exactly this line on stdout.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Starting to serve on {local}").map_err(RunError::Stdout)?;
        out.flush().map_err(RunError::Stdout)?;
    }

    drain(&cli, signals, &trigger, server).await;
    for task in [reload, record_writer].into_iter().flatten() {
        task.abort();
    }
    if let Some(rec) = &recorder {
        // What the last requests added; the file is complete when the proxy exits.
        match rec.write_if_changed() {
            Ok(_) => {
                tracing::info!(file = %rec.path().display(), "--record-rbac: recorded RBAC written")
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where the API server is and what to present to it: the configuration resolved (with
/// kubectl's warnings about it), the TLS settings and the credentials loaded.
fn connect_settings(cli: &Cli) -> Result<(config::Upstream, Arc<Tls>, Arc<Credentials>), RunError> {
    let upstream = config::resolve(&cli.overrides(), &Environment::from_process())?;
    let ignored = cli.ignored();
    if !ignored.is_empty() {
        tracing::info!(
            "ignoring {}: kubectl's global flags with no effect on a proxy",
            ignored.join(" ")
        );
    }
    if !cli.append_server_path && !upstream.base_path.is_empty() {
        tracing::warn!(
            "Your kube context contains a server path {}, use --append-server-path to \
             automatically append the path to each request",
            upstream.base_path
        );
    }
    let tls = Tls::new(
        upstream.ca.clone().unwrap_or(CaSource::Insecure),
        upstream.client_cert.clone(),
    )?;
    let creds = Credentials::load(upstream.token.clone(), Some(tls.clone()))?;
    // Like kubectl, no warning for a unix socket: no web page can reach it.
    if cli.disable_filter && cli.unix_socket.is_none() {
        tracing::warn!(
            "Request filter disabled, your proxy is vulnerable to XSRF attacks, please be cautious"
        );
    }
    Ok((upstream, tls, creds))
}

/// The start-up log line: what was resolved, from where, and where we listen.
fn announce(upstream: &config::Upstream, local: &str, open_files: Option<u64>) {
    tracing::info!(
        upstream = %upstream.origin(),
        config = %upstream.source,
        ca = %upstream.ca.as_ref().map_or_else(|| "none (plain http)".to_owned(), CaSource::describe),
        token = %upstream.token.describe(),
        listen = %local,
        open_files = ?open_files,
        "kube-ambassador {} starting",
        env!("CARGO_PKG_VERSION"),
    );
    if upstream.scheme == http::uri::Scheme::HTTP {
        tracing::warn!("the API server URL is plain http: no credentials will be sent");
    }
}

/// The task that re-reads the token, the CA and `--policy` when their files change.
fn start_reload(
    checked: &Checked,
    creds: &Arc<Credentials>,
    tls: &Arc<Tls>,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut watched: Vec<Arc<dyn reload::Watched>> = Vec::new();
    if let Some(p) = &checked.policy {
        let rules = p.rules();
        tracing::info!(policy = %p.path().display(), rules, namespace = %checked.pod_namespace, "enforcing --policy");
        if rules == 0 {
            tracing::warn!(
                "--policy {} has no rules: every API request is refused",
                p.path().display()
            );
        }
        watched.push(p.clone());
    }
    reload::spawn(creds.clone(), Some(tls.clone()), metrics.clone(), watched)
}

/// The proxy with everything it holds: both upstream pools, the gate, the filter.
fn build_proxy(
    cli: &Cli,
    checked: Checked,
    upstream: config::Upstream,
    tls: &Tls,
    creds: Arc<Credentials>,
    metrics: Arc<Metrics>,
    shutdown: &shutdown::Shutdown,
) -> Arc<Proxy> {
    let opts = ConnectOptions {
        connect_timeout: cli.connect_timeout,
        keepalive: ConnectOptions::keepalive_or_default(cli.keepalive),
    };
    let connector = upstream::connector(&upstream, tls, &opts);
    let client = upstream::client(connector.clone(), cli.upstream_ping_interval);
    let h2 = http2_pool(cli, &upstream, tls, &opts, &metrics);
    Arc::new(Proxy::new(proxy::Parts {
        upstream,
        client,
        h2,
        h2_policy: match cli.upstream_http2 {
            cli::UpstreamHttp2::Always => proxy::Http2Policy::Always,
            _ => proxy::Http2Policy::LongRunning,
        },
        connector,
        creds,
        filter: checked.filter,
        prefix: checked.prefix,
        www: checked.www,
        append_server_path: cli.append_server_path,
        shutdown: shutdown.clone(),
        gate: gate::Gate::new(gate::GateParts {
            metrics: metrics.clone(),
            budget: checked.budget,
            policy: checked.policy,
            recorder: checked.recorder,
            access_log: cli.access_log,
        }),
        metrics,
        access_log: cli.access_log,
        request_timeout: cli.request_timeout,
        watch_resume: cli.watch_resume,
        hedge_after: cli.upstream_hedge_after,
    }))
}

/// kubectl's own checks on its flags, then ours: nothing else needs to be read.
async fn check_flags(cli: &Cli) -> Result<Checked, RunError> {
    if cli.unix_socket.is_some() && cli.port != cli::DEFAULT_PORT {
        return Err(RunError::UnixSocketWithPort);
    }
    let budget = budget::Budget::new(cli.qps, cli.burst)?;
    let pod_namespace = {
        let sa_dir = cli
            .service_account_dir
            .clone()
            .unwrap_or_else(|| config::DEFAULT_SERVICE_ACCOUNT_DIR.into());
        gate::pod_namespace(cli.namespace.as_deref(), &sa_dir)
    };
    let policy = match &cli.policy {
        Some(path) => Some(Arc::new(policy::PolicyFile::load(path, &pod_namespace)?)),
        None => None,
    };
    let recorder = cli
        .record_rbac
        .as_deref()
        .map(|path| Arc::new(record::Recorder::new(path, &pod_namespace)));
    if let Some(rec) = &recorder {
        // At start-up: an unwritable FILE is found now, not at exit.
        rec.write_if_changed()?;
    }
    let (prefix, www) = match &cli.www {
        Some(dir) => (
            ApiPrefix::new(&cli.api_prefix).with_www(&cli.www_prefix)?,
            Some(Www::new(dir.clone())),
        ),
        None => (ApiPrefix::new(&cli.api_prefix), None),
    };
    let filter = if cli.disable_filter {
        None
    } else {
        Some(Filter::new(&FilterSpec {
            accept_hosts: &cli.accept_hosts,
            accept_paths: &cli.accept_paths,
            reject_paths: &cli.reject_paths,
            reject_methods: &cli.reject_methods,
        })?)
    };
    if cli.unix_socket.is_none() {
        listener::socket_addr(&cli.address, cli.port).await?;
    }
    Ok(Checked {
        budget,
        policy,
        recorder,
        prefix,
        www,
        filter,
        pod_namespace,
    })
}

/// The HTTP/2 pool, unless `--upstream-http2=false` or the upstream is plain `http://`
/// (HTTP/2 needs TLS for ALPN).
fn http2_pool(
    cli: &Cli,
    upstream: &config::Upstream,
    tls: &Tls,
    opts: &ConnectOptions,
    metrics: &Arc<Metrics>,
) -> Option<h2pool::H2Pool> {
    if cli.upstream_http2 == cli::UpstreamHttp2::Never
        || upstream.scheme != http::uri::Scheme::HTTPS
    {
        return None;
    }
    let origin = http::Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query("/")
        .build()
        .ok()?;
    Some(h2pool::H2Pool::new(
        upstream::connector_h2(upstream, tls, opts),
        origin,
        cli.connect_timeout,
        h2pool::Health {
            interval: cli.upstream_ping_interval,
            timeout: cli.upstream_ping_timeout,
            ..h2pool::Health::default()
        },
        metrics.clone(),
    ))
}

/// The limits both listeners apply to their clients.
fn serve_options(cli: &Cli) -> listener::ServeOptions {
    listener::ServeOptions {
        header_read_timeout: cli.header_read_timeout,
        max_connections: cli.max_connections,
    }
}

/// Waits for a signal, then drains: `--shutdown-delay` still serving (SIGTERM only),
/// then no new connections, watches ended, and up to `--shutdown-grace` for the rest.
/// A second signal exits at once.
async fn drain(
    cli: &Cli,
    mut signals: shutdown::Signals,
    trigger: &shutdown::Trigger,
    server: tokio::task::JoinHandle<()>,
) {
    let first = signals.recv().await;
    tokio::spawn(async move {
        let second = signals.recv().await;
        tracing::warn!("second signal ({second:?}): exiting now");
        std::process::exit(130);
    });
    if first == Signal::Terminate && !cli.shutdown_delay.is_zero() {
        tracing::info!(
            "SIGTERM: still serving for {:?} while the app stops",
            cli.shutdown_delay
        );
        tokio::time::sleep(cli.shutdown_delay).await;
    }
    tracing::info!("shutting down: no new connections; ending watches");
    trigger.stop();
    let _ = server.await;
    if tokio::time::timeout(cli.shutdown_grace, trigger.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open = trigger.active(),
            "grace period of {:?} over; closing what is still open",
            cli.shutdown_grace
        );
    }
}
