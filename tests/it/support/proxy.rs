//! Launches the real `kube-ambassador` binary for end-to-end tests: a hermetic environment,
//! the `Starting to serve on ADDR` line awaited and parsed, stdout/stderr captured in the
//! background, and signals and exit status for shutdown tests.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use fake_apiserver::{FakeApi, WAIT, World, within};

const BIN: &str = env!("CARGO_BIN_EXE_kube-ambassador");
const SERVE_PREFIX: &str = "Starting to serve on ";
/// Variables that would let the binary find a real cluster: removed unless a test sets them.
const HERMETIC: &[&str] = &[
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBECONFIG",
];

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ProxyAddr {
    fn parse(s: &str) -> Option<ProxyAddr> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(ProxyAddr::Tcp(a));
        }
        // kubectl prints unix sockets as a bare path.
        let path = s.strip_prefix("unix:").unwrap_or(s);
        path.starts_with('/')
            .then(|| ProxyAddr::Unix(PathBuf::from(path)))
    }
}

/// Output captured from one stream of the child, with change signals so tests can await a
/// log line (or the end of the stream) instead of sleeping.
#[derive(Clone)]
struct Captured {
    text: Arc<Mutex<String>>,
    changed: watch::Sender<u64>,
    eof: watch::Sender<bool>,
}

impl Captured {
    fn new() -> Captured {
        Captured {
            text: Arc::new(Mutex::new(String::new())),
            changed: watch::Sender::new(0),
            eof: watch::Sender::new(false),
        }
    }

    fn get(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    async fn wait_contains(&self, needle: &str, what: &str) {
        let mut rx = self.changed.subscribe();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                rx.borrow_and_update();
                if self.text.lock().unwrap().contains(needle) {
                    return;
                }
                // The sender lives in `self`, so this only ever waits for the next line.
                let _ = rx.changed().await;
            }
        })
        .await;
        if found.is_err() {
            panic!(
                "{what} never contained {needle:?} within {WAIT:?}; it was:\n{}",
                self.get()
            );
        }
    }

    /// Waits (bounded) until the stream hit end-of-file, so the captured text is complete.
    async fn wait_eof(&self, limit: Duration) {
        let mut rx = self.eof.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|e| *e)).await;
    }
}

/// Reads `stream` line by line on a thread (tokio's `process` feature is not enabled in
/// this crate, so the child is a `std::process::Child`), appending to `captured` and
/// calling `on_line` for each line.
fn spawn_reader(
    stream: impl Read + Send + 'static,
    captured: Captured,
    mut on_line: impl FnMut(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            on_line(text.trim_end_matches(['\n', '\r']));
            captured.text.lock().unwrap().push_str(&text);
            captured.changed.send_modify(|n| *n += 1);
        }
        captured.eof.send_replace(true);
    });
}

/// A child process whose exit is awaited by a thread, so async code can wait for it and
/// `Drop` can kill it (the equivalent of tokio's `kill_on_drop`).
struct Spawned {
    pid: u32,
    status: watch::Sender<Option<ExitStatus>>,
    stdout: Captured,
    stderr: Captured,
}

impl Spawned {
    fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
        on_stdout_line: impl FnMut(&str) + Send + 'static,
    ) -> Spawned {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in HERMETIC {
            cmd.env_remove(var);
        }
        let given = |k: &str| env.iter().any(|(n, _)| *n == k);
        if !given("RUST_LOG") {
            cmd.env("RUST_LOG", "kube_ambassador=debug");
        }
        // Plain log lines, so tests can match on them.
        if !given("NO_COLOR") {
            cmd.env("NO_COLOR", "1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let stdout = Captured::new();
        let stderr = Captured::new();
        spawn_reader(child.stdout.take().unwrap(), stdout.clone(), on_stdout_line);
        spawn_reader(child.stderr.take().unwrap(), stderr.clone(), |_| {});
        let pid = child.id();
        let status = watch::Sender::new(None);
        let tx = status.clone();
        std::thread::spawn(move || {
            let st = child.wait().expect("wait for child");
            tx.send_replace(Some(st));
        });
        Spawned {
            pid,
            status,
            stdout,
            stderr,
        }
    }

    fn exited(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    /// Waits up to `limit` for the exit, then (bounded) for the output to be complete.
    async fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let mut rx = self.status.subscribe();
        let st = tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .ok()?
            .expect("status sender lives in self")
            .unwrap();
        self.stdout.wait_eof(limit).await;
        self.stderr.wait_eof(limit).await;
        Some(st)
    }

    fn kill(&self, sig: &str) -> bool {
        std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Only while the waiter has not reaped it, so the pid cannot have been reused.
        if self.exited().is_none() {
            self.kill("KILL");
        }
    }
}

/// A running proxy process (killed when dropped).
pub struct Proxy {
    proc: Spawned,
    pub addr: ProxyAddr,
}

impl Proxy {
    /// Spawns the binary and waits for `Starting to serve on ADDR` on stdout (failing the
    /// test with the captured output if it exits first or takes longer than [`WAIT`]).
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let (addr_tx, addr_rx) = oneshot::channel();
        let mut addr_tx = Some(addr_tx);
        let proc = Spawned::spawn(args, env, move |line| {
            let addr = line
                .trim()
                .strip_prefix(SERVE_PREFIX)
                .and_then(ProxyAddr::parse);
            if let Some(addr) = addr
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
        });
        match tokio::time::timeout(WAIT, addr_rx).await {
            Ok(Ok(addr)) => Proxy { proc, addr },
            // stdout closed without the line: the process is exiting.
            Ok(Err(_)) => {
                let status = proc.wait_exit(Duration::from_secs(10)).await;
                panic!(
                    "kube-ambassador {args:?} exited ({status:?}) before serving\n--- stdout:\n{}--- stderr:\n{}",
                    proc.stdout.get(),
                    proc.stderr.get()
                );
            }
            Err(_) => panic!(
                "kube-ambassador {args:?} did not print {SERVE_PREFIX:?} within {WAIT:?}\n--- stdout:\n{}--- stderr:\n{}",
                proc.stdout.get(),
                proc.stderr.get()
            ),
        }
    }

    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST/PORT` pointing at `api`,
    /// `--service-account-dir` at the world's, `--port=0`, then `extra_args`.
    pub async fn in_cluster(world: &World, api: &FakeApi, extra_args: &[&str]) -> Proxy {
        Self::in_cluster_with_env(world, api, extra_args, &[]).await
    }

    /// [`Proxy::in_cluster`] with extra environment variables.
    pub async fn in_cluster_with_env(
        world: &World,
        api: &FakeApi,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Proxy {
        let sa = format!("--service-account-dir={}", world.sa_dir().display());
        let port = api.port().to_string();
        let mut args = vec![sa.as_str(), "--port=0"];
        args.extend_from_slice(extra_args);
        let mut env = vec![
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", port.as_str()),
        ];
        env.extend_from_slice(extra_env);
        Proxy::start(&args, &env).await
    }

    /// Runs the binary expecting it to exit without serving; returns its status, stdout and
    /// stderr. Fails the test if it is still running after [`WAIT`] (it is then killed).
    pub async fn start_expect_failure(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (ExitStatus, String, String) {
        let proc = Spawned::spawn(args, env, |_| {});
        let status = within(
            &format!("kube-ambassador {args:?} to exit"),
            proc.wait_exit(WAIT),
        )
        .await;
        let Some(status) = status else {
            panic!(
                "kube-ambassador {args:?} still running after {WAIT:?}\n--- stdout:\n{}--- stderr:\n{}",
                proc.stdout.get(),
                proc.stderr.get()
            );
        };
        (status, proc.stdout.get(), proc.stderr.get())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The TCP address (panics for a unix socket).
    pub fn socket_addr(&self) -> SocketAddr {
        match &self.addr {
            ProxyAddr::Tcp(a) => *a,
            ProxyAddr::Unix(p) => panic!("proxy listens on unix socket {}", p.display()),
        }
    }

    /// `http://ADDR/path` (TCP only).
    pub fn url(&self, path: &str) -> String {
        let sep = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{sep}{path}", self.socket_addr())
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`...) with kill(1).
    pub fn signal(&self, sig: &str) {
        assert!(
            self.proc.exited().is_none(),
            "signal {sig}: process already exited"
        );
        assert!(self.proc.kill(sig), "kill -{sig} {} failed", self.proc.pid);
    }

    /// Waits (up to [`WAIT`]) for the process to exit; its output is then complete.
    pub async fn wait(&mut self) -> ExitStatus {
        match self.proc.wait_exit(WAIT).await {
            Some(s) => s,
            None => panic!(
                "kube-ambassador (pid {}) still running after {WAIT:?}\n--- stderr:\n{}",
                self.proc.pid,
                self.stderr()
            ),
        }
    }

    /// The exit status if the process has exited (without waiting).
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.proc.exited()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr.get()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout.get()
    }

    /// Waits until stderr contains `needle` (e.g. a log line announcing a reload).
    pub async fn wait_stderr(&self, needle: &str) {
        self.proc.stderr.wait_contains(needle, "stderr").await
    }

    /// Waits until stdout contains `needle`.
    pub async fn wait_stdout(&self, needle: &str) {
        self.proc.stdout.wait_contains(needle, "stdout").await
    }
}
