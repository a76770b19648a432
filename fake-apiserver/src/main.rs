//! Runs the integration tests' fake Kubernetes API server standalone, with a kubelet-style
//! service-account directory, so kube-ambassador can be tried without a cluster:
//!
//! ```text
//! cargo run -p fake-apiserver -- --dir /tmp/ka-demo [--port N] [--pods N]
//!     [--tick-ms N] [--spread N] [--quiet] [--end-stream-pause]
//! ```
//!
//! It prints the `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` to export, the
//! service-account directory to pass as `--service-account-dir` and a kubeconfig
//! (`DIR/kubeconfig`, for kube-ambassador or `kubectl`) trusting its CA with its token, logs each request it receives to stderr, and
//! serves until Ctrl-C (or SIGTERM).
//!
//! For benchmarks (`bench/run.sh`): `--pods N` serves `pod-0`..`pod-{N-1}` in `default`
//! (3 by default); `--quiet` logs nothing per request and keeps the in-memory request log
//! from growing without bound; `--tick-ms N` sends, every N ms, a watch event for a pod
//! named `tick-<microseconds since the Unix epoch when it was sent>` in the namespace
//! `bench-ticks` to every watch on that namespace, so a client can tell each event's
//! latency from its name. The event is a `DELETED` of a pod that is not stored, so ticks
//! leave the pod store (and every list) unchanged; none is sent while nobody watches.
//! `--spread N` sends such an event every millisecond to one of the namespaces
//! `bench-spread-0`..`bench-spread-{N-1}` in turn: with one watch on each, every watch
//! gets an event every N ms and no two arrive at once, so the latency measured is a hop's,
//! not a queue's (`--tick-ms` sends each event to all its watches at the same instant).
//!
//! The tests' 1 ms pause before END_STREAM (`FakeApiOptions::end_stream_pause`, which says
//! why a benchmark cannot have it) is off here unless `--end-stream-pause` asks for it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_apiserver::{FakeApi, FakeApiOptions, Pki, World};

const TOKEN: &str = "demo-token";
const USAGE: &str = "usage: fake-apiserver --dir DIR [--port N] [--pods N] [--tick-ms N] [--spread N] [--quiet] [--end-stream-pause]";
/// The namespace `--tick-ms` events are sent in.
const TICK_NAMESPACE: &str = "bench-ticks";
/// The prefix of the namespaces `--spread` sends in.
const SPREAD_NAMESPACE: &str = "bench-spread";

/// The time an event is sent, as its name carries it.
fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

struct Args {
    dir: PathBuf,
    port: u16,
    pods: Option<usize>,
    tick_ms: u64,
    spread: u64,
    quiet: bool,
    end_stream_pause: bool,
}

/// Every `period_ms`, a tick event in the next of `namespaces`, in turn (never if either
/// is zero or empty); none while nobody watches that namespace.
async fn ticks(api: &FakeApi, period_ms: u64, namespaces: Vec<String>) {
    if period_ms == 0 || namespaces.is_empty() {
        return std::future::pending().await;
    }
    let mut every = tokio::time::interval(Duration::from_millis(period_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for ns in namespaces.iter().cycle() {
        every.tick().await;
        if api.watched(ns) {
            api.send_watch_event_in(ns, "DELETED", &format!("tick-{}", now_micros()));
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut port = 0;
    let mut pods = None;
    let mut tick_ms = 0;
    let mut spread = 0;
    let mut quiet = false;
    let mut end_stream_pause = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--port" => {
                let v = value()?;
                port = v.parse().map_err(|_| format!("--port: not a port: {v}"))?;
            }
            "--pods" => {
                let v = value()?;
                pods = Some(v.parse().map_err(|_| format!("--pods: not a count: {v}"))?);
            }
            "--tick-ms" => {
                let v = value()?;
                tick_ms = v
                    .parse()
                    .map_err(|_| format!("--tick-ms: not a number of milliseconds: {v}"))?;
            }
            "--spread" => {
                let v = value()?;
                spread = v
                    .parse()
                    .map_err(|_| format!("--spread: not a count of namespaces: {v}"))?;
            }
            "--quiet" => quiet = true,
            "--end-stream-pause" => end_stream_pause = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("--dir is required")?,
        port,
        pods,
        tick_ms,
        spread,
        quiet,
        end_stream_pause,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-apiserver: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("fake-apiserver: create {}: {e}", args.dir.display());
        return ExitCode::FAILURE;
    }

    let pki = Pki::new();
    let world = World::at(&args.dir);
    world.write(TOKEN, &pki.ca_pem(), "default");
    let mut opts = FakeApiOptions::new(pki)
        .tokens(&[TOKEN])
        .port(args.port)
        .end_stream_pause(args.end_stream_pause);
    if let Some(n) = args.pods {
        opts = opts.pods(n);
    }
    let api = FakeApi::start(opts).await;
    // Always DIR/kubeconfig, so that the README's recipe can name it.
    let kubeconfig = args.dir.join("kubeconfig");
    let written = world.kubeconfig(&api.url(), &world.ca_path(), TOKEN);
    if let Err(e) = std::fs::rename(&written, &kubeconfig) {
        eprintln!("fake-apiserver: write {}: {e}", kubeconfig.display());
        return ExitCode::FAILURE;
    }

    println!("KUBERNETES_SERVICE_HOST=127.0.0.1");
    println!("KUBERNETES_SERVICE_PORT={}", api.port());
    println!("SERVICE_ACCOUNT_DIR={}", world.sa_dir().display());
    println!("KUBECONFIG={}", kubeconfig.display());
    eprintln!(
        "fake-apiserver: serving {} (token {TOKEN:?}); try:\n  \
         KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={} \
         kube-ambassador --service-account-dir={}\n\
         Ctrl-C to stop.",
        api.url(),
        api.port(),
        world.sa_dir().display()
    );

    // Log requests as they arrive; each wait returns once the log has grown. Quiet: only
    // empty the log now and then, so a long benchmark does not grow it without bound.
    let log = async {
        if args.quiet {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                api.clear_requests();
            }
        }
        let mut n = 0;
        loop {
            let seen = api.wait_requests_forever(n + 1).await;
            for s in &seen[n.min(seen.len())..] {
                let who = if s.authorized { "ok" } else { "unauthorized" };
                eprintln!("{} {} {:?} ({who})", s.method, s.uri, s.version);
            }
            n = seen.len();
        }
    };
    let fan_out = ticks(&api, args.tick_ms, vec![TICK_NAMESPACE.to_owned()]);
    let spread = ticks(
        &api,
        1,
        (0..args.spread)
            .map(|i| format!("{SPREAD_NAMESPACE}-{i}"))
            .collect(),
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-apiserver: SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = log => {}
        _ = fan_out => {}
        _ = spread => {}
    }
    api.stop().await;
    ExitCode::SUCCESS
}
