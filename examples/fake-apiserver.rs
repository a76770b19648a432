//! Runs the integration tests' fake Kubernetes API server standalone, with a kubelet-style
//! service-account directory, so kube-ambassador can be tried without a cluster:
//!
//! ```text
//! cargo run --example fake-apiserver -- --dir /tmp/ka-demo [--port N]
//! ```
//!
//! It prints the `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` to export and the
//! service-account directory to pass as `--service-account-dir`, logs each request it
//! receives to stderr, and serves until Ctrl-C.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;

use support::{FakeApi, FakeApiOptions, Pki, World};

const TOKEN: &str = "demo-token";
const USAGE: &str = "usage: fake-apiserver --dir DIR [--port N]";

struct Args {
    dir: PathBuf,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut port = 0;
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
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("--dir is required")?,
        port,
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
    let api = FakeApi::start(FakeApiOptions::new(pki).tokens(&[TOKEN]).port(args.port)).await;

    println!("KUBERNETES_SERVICE_HOST=127.0.0.1");
    println!("KUBERNETES_SERVICE_PORT={}", api.port());
    println!("SERVICE_ACCOUNT_DIR={}", world.sa_dir().display());
    eprintln!(
        "fake-apiserver: serving {} (token {TOKEN:?}); try:\n  \
         KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={} \
         kube-ambassador --service-account-dir={}\n\
         Ctrl-C to stop.",
        api.url(),
        api.port(),
        world.sa_dir().display()
    );

    // Log requests as they arrive; each wait returns once the log has grown.
    let log = async {
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
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = log => {}
    }
    api.stop().await;
    ExitCode::SUCCESS
}
