//! The measuring half of `bench/run.sh` (which runs wrk for the request-rate workloads):
//! what wrk cannot do, done with tokio + hyper, and the Markdown report.
//!
//! ```text
//! bench-client watches --url URL [--ca FILE --token T] [--n 1000] [--hold 20] [--pid PID] [--fake-pid PID]
//! bench-client get     --url URL [--ca FILE --token T] [--pid PID] [--fake-pid PID]
//! bench-client startup --url URL [--timeout 20] -- COMMAND [ARGS...]
//! bench-client report  RAW.tsv MACHINE.txt
//! ```
//!
//! `--url` is `http://…` (through a proxy) or `https://…` (straight to the fake API server,
//! trusting `--ca`, with `--token` as the bearer token). Every measurement prints
//! `key=value` lines on stdout for `run.sh` to record.
//!
//! - `watches` opens `--n` watches (one HTTP/1.1 connection each, at most 64 opening at a
//!   time), then holds them `--hold` seconds while the fake API server (`--tick-ms`) sends
//!   an event named `tick-<send time in µs>` every few ms; each event's latency is its
//!   arrival time minus that send time (both `CLOCK_REALTIME` on the same machine). A
//!   `{i}` in the URL becomes the watch's number (0..n), so that each watch can have a
//!   namespace of its own (the fake's `--spread`: events one at a time, each to one watch);
//!   without it, every watch sees every event (`--tick-ms`: one event to all at once). It
//!   samples the VmRSS of `--pid` during the hold and reads its CPU time around it.
//! - `get` reads one response (e.g. `/bytes?n=268435456`) to the end, discarding it,
//!   sampling the VmRSS of `--pid` every 2 ms.
//! - `startup` spawns the command and times from the spawn to the first `200` answered at
//!   `--url` (connection refused and non-200 are retried every 0.5 ms), then kills it.
//! - `report` turns the raw records into the Markdown tables (medians over rounds).

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

const USAGE: &str = "usage: bench-client watches|get|startup|report ... (see the source's header)";

#[derive(Clone)]
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    token: Option<String>,
}

impl Target {
    fn new(url: &str, ca: Option<&Path>, token: Option<String>) -> Result<Target> {
        let uri: Uri = url.parse()?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url}: not an http:// or https:// URL").into()),
        };
        let host = uri.host().ok_or("URL without a host")?.to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let ca = ca.ok_or("an https:// URL needs --ca")?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Target {
            uri,
            host,
            port,
            tls,
            token,
        })
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }

    /// One GET of the URL's path on a fresh HTTP/1.1 connection; the response with its
    /// body still streaming (the connection lives as long as the body).
    async fn get(&self, path: &str) -> Result<http::Response<Incoming>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let mut sender = match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        let mut req =
            Request::get(path).header(header::HOST, format!("{}:{}", self.host, self.port));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        Ok(sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?)
    }
}

// ---------------------------------------------------------------------------------------
// /proc

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `) `.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Open file descriptors of `pid` (sockets, mostly).
fn fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Value at quantile `q` (0..=1) of sorted `v` (nearest rank).
fn quantile<T: Copy>(v: &[T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

// ---------------------------------------------------------------------------------------
// Arguments

struct Args {
    flags: BTreeMap<String, String>,
    rest: Vec<String>,
    positional: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut flags = BTreeMap::new();
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        if a == "--" {
            rest = it.collect();
            break;
        }
        if let Some(flag) = a.strip_prefix("--") {
            match flag.split_once('=') {
                Some((k, v)) => flags.insert(k.to_owned(), v.to_owned()),
                None => {
                    let v = it.next().ok_or(format!("--{flag} needs a value"))?;
                    flags.insert(flag.to_owned(), v)
                }
            };
        } else {
            positional.push(a);
        }
    }
    Ok(Args {
        flags,
        rest,
        positional,
    })
}

impl Args {
    fn str(&self, k: &str) -> Option<&str> {
        self.flags.get(k).map(String::as_str)
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.flags.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{k}: bad number {v}").into()),
            None => Ok(default),
        }
    }
    fn pid(&self, k: &str) -> Result<Option<u32>> {
        self.flags
            .get(k)
            .map(|v| v.parse().map_err(|_| format!("--{k}: bad pid {v}").into()))
            .transpose()
    }
    fn target(&self) -> Result<Target> {
        Target::new(
            self.str("url").ok_or("--url is required")?,
            self.str("ca").map(Path::new),
            self.str("token").map(str::to_owned),
        )
    }
}

// ---------------------------------------------------------------------------------------
// watches

/// Reads one watch until `stop`; returns (send µs, receive µs) of every tick event.
async fn hold_watch(
    resp: http::Response<Incoming>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(u64, u64)> {
    let mut body = resp.into_body();
    let mut samples = Vec::with_capacity(512);
    let mut carry: Vec<u8> = Vec::new();
    const NEEDLE: &[u8] = b"\"name\":\"tick-";
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let recv = now_micros();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        carry.extend_from_slice(data);
        while let Some(nl) = carry.iter().position(|b| *b == b'\n') {
            let line = &carry[..nl];
            if let Some(at) = line.windows(NEEDLE.len()).position(|w| w == NEEDLE) {
                let digits = &line[at + NEEDLE.len()..];
                let end = digits
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(digits.len());
                if let Some(sent) = std::str::from_utf8(&digits[..end])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    samples.push((sent, recv));
                }
            }
            carry.drain(..=nl);
        }
    }
    samples
}

async fn cmd_watches(a: &Args) -> Result<()> {
    let target = a.target()?;
    let n: usize = a.num("n", 1000)?;
    let hold: f64 = a.num("hold", 20.0)?;
    let pid = a.pid("pid")?;
    let fake_pid = a.pid("fake-pid")?;
    let path = target.path().to_owned();

    let (stop_tx, stop_rx) = watch::channel(false);
    let opening = Arc::new(Semaphore::new(64));
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let all_open = Arc::new(tokio::sync::Notify::new());
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let spread = path.contains("{i}");
    for i in 0..n {
        let path = path.replace("{i}", &i.to_string());
        let (target, path, opening, opened, failed, all_open, stop) = (
            target.clone(),
            path.clone(),
            opening.clone(),
            opened.clone(),
            failed.clone(),
            all_open.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore open");
            let resp = match target.get(&path).await {
                Ok(r) if r.status() == StatusCode::OK => r,
                Ok(r) => {
                    failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status()));
                    all_open.notify_one();
                    return None;
                }
                Err(e) => {
                    failed.lock().unwrap().push(e.to_string());
                    all_open.notify_one();
                    return None;
                }
            };
            drop(permit);
            opened.fetch_add(1, Ordering::SeqCst);
            all_open.notify_one();
            Some(hold_watch(resp, stop).await)
        }));
    }
    // Wait until every watch has its response headers (or failed).
    while opened.load(Ordering::SeqCst) + failed.lock().unwrap().len() < n {
        tokio::select! {
            _ = all_open.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("watches did not open within 120 s".into());
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let n_open = opened.load(Ordering::SeqCst);

    // Hold: only ticks sent from now on count (a little margin for one in flight).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let window_start = now_micros();
    let cpu0 = pid.and_then(cpu_secs);
    let fake0 = fake_pid.and_then(cpu_secs);
    let rss_start = pid.and_then(rss_kib);
    let mut rss_max = rss_start.unwrap_or(0);
    let hold_start = Instant::now();
    while hold_start.elapsed().as_secs_f64() < hold {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(r) = pid.and_then(rss_kib) {
            rss_max = rss_max.max(r);
        }
    }
    let rss_end = pid.and_then(rss_kib);
    let fds_end = pid.and_then(fds);
    let window_end = now_micros();
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_secs);
    let fake1 = fake_pid.and_then(cpu_secs);
    // Events sent before the window's end may still be on their way: give them 300 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);

    let mut lat: Vec<u64> = Vec::new();
    let mut per_watch: Vec<usize> = Vec::new();
    let mut ticks = std::collections::BTreeSet::new();
    for t in tasks {
        let Some(samples) = t.await? else { continue };
        let mut count = 0;
        for (sent, recv) in samples {
            if sent >= window_start && sent < window_end {
                lat.push(recv.saturating_sub(sent));
                ticks.insert(sent);
                count += 1;
            }
        }
        per_watch.push(count);
    }
    lat.sort_unstable();
    let failed = failed.lock().unwrap().clone();

    println!("watches_requested={n}");
    println!("watches_open={n_open}");
    println!("watches_failed={}", failed.len());
    if let Some(e) = failed.first() {
        println!("first_failure={e:?}");
    }
    println!("open_secs={open_secs:.3}");
    println!("hold_secs={hold_secs:.3}");
    println!("ticks_seen={}", ticks.len());
    println!("events={}", lat.len());
    println!(
        "events_per_watch_min={}",
        per_watch.iter().min().unwrap_or(&0)
    );
    // Events that did not reach a watch that was open: every watch should see every tick
    // sent to all. (Spread, each tick has one watch: a lost one leaves no trace here, but
    // events_per_watch_min shows a watch that stopped receiving.)
    if !spread {
        let expected = ticks.len() * n_open;
        println!("events_missing={}", expected.saturating_sub(lat.len()));
    }
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        if let Some(v) = quantile(&lat, q) {
            println!("latency_{name}_us={v}");
        }
    }
    if let (Some(s), Some(e)) = (rss_start, rss_end) {
        println!("rss_start_kib={s}");
        println!("rss_end_kib={e}");
        println!("rss_max_kib={rss_max}");
    }
    if let Some(f) = fds_end {
        println!("fds={f}");
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        println!("cpu_secs={:.3}", c1 - c0);
    }
    if let (Some(c0), Some(c1)) = (fake0, fake1) {
        println!("fake_cpu_secs={:.3}", c1 - c0);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// get

async fn cmd_get(a: &Args) -> Result<()> {
    let target = a.target()?;
    let pid = a.pid("pid")?;
    let fake_pid = a.pid("fake-pid")?;
    let rss0 = pid.and_then(rss_kib);
    let cpu0 = pid.and_then(cpu_secs);
    let fake0 = fake_pid.and_then(cpu_secs);

    let (done_tx, mut done_rx) = watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut max = rss0.unwrap_or(0);
        loop {
            if let Some(r) = pid.and_then(rss_kib) {
                max = max.max(r);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = done_rx.wait_for(|d| *d) => break,
            }
        }
        if let Some(r) = pid.and_then(rss_kib) {
            max = max.max(r);
        }
        max
    });

    let t0 = Instant::now();
    let resp = target.get(target.path()).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            bytes += d.len() as u64;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let rss_max = sampler.await?;
    let cpu1 = pid.and_then(cpu_secs);
    let fake1 = fake_pid.and_then(cpu_secs);

    println!("status={}", status.as_u16());
    println!("bytes={bytes}");
    println!("secs={secs:.4}");
    println!("mib_per_s={:.1}", bytes as f64 / (1 << 20) as f64 / secs);
    if let Some(r0) = rss0 {
        println!("rss_before_kib={r0}");
        println!("rss_max_kib={rss_max}");
        println!("rss_growth_kib={}", rss_max.saturating_sub(r0));
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        println!("cpu_secs={:.3}", c1 - c0);
    }
    if let (Some(c0), Some(c1)) = (fake0, fake1) {
        println!("fake_cpu_secs={:.3}", c1 - c0);
    }
    if status != StatusCode::OK {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// startup

async fn cmd_startup(a: &Args) -> Result<()> {
    let target = a.target()?;
    let timeout = Duration::from_secs_f64(a.num("timeout", 20.0)?);
    let (prog, args) = a.rest.split_first().ok_or("startup: no command after --")?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut attempts = 0u64;
    let result = loop {
        attempts += 1;
        if let Ok(resp) = target.get(target.path()).await
            && resp.status() == StatusCode::OK
        {
            // Served means the whole body arrived.
            let ok = resp.into_body().collect().await.is_ok();
            if ok {
                break Ok(t0.elapsed());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("{prog} exited before serving: {status}"));
        }
        if t0.elapsed() > timeout {
            break Err(format!("{prog}: no 200 within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    let elapsed = result?;
    println!("startup_ms={:.2}", elapsed.as_secs_f64() * 1000.0);
    println!("attempts={attempts}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// report

/// In the report's column order. nginx (a minimal TLS reverse proxy, one worker) is the
/// reference for what any proxy hop costs on the machine, not a rival.
/// "pass-through" (examples/tcp-forward.rs) and "direct-h2" (h2load: HTTP/2 straight to
/// the fake, as a pod's client-go talks) run only in the wrk workloads.
#[rustfmt::skip]
const TARGETS: [Column; 6] = [
    Column { id: "direct", heading: "direct", short: "direct" },
    Column { id: "kube-ambassador", heading: "kube-ambassador", short: "kube-ambassador" },
    Column { id: "kubectl-proxy", heading: "kubectl proxy", short: "kubectl proxy" },
    Column { id: "nginx", heading: "nginx", short: "nginx" },
    Column { id: "pass-through", heading: "TCP pass-through", short: "pass-through" },
    Column { id: "direct-h2", heading: "direct HTTP/2 (h2load)", short: "direct HTTP/2" },
];

/// A target of the benchmark, as the results table names it.
struct Column {
    /// The target's name in the raw samples.
    id: &'static str,
    /// The heading of its value column.
    heading: &'static str,
    /// The heading of its "vs direct" column, before " vs direct".
    short: &'static str,
}

/// The targets kube-ambassador is divided by, as indexes into [`TARGETS`]: the other
/// proxies, and the direct HTTP/2 client (issue 13's target: ≥ 1.2× its req/s).
const KA_VS: [usize; 3] = [2, 3, 5];

/// How a row compares with direct.
#[derive(Clone, Copy, PartialEq)]
enum Vs {
    /// Throughput: ratio value / direct.
    Ratio,
    /// Latency: value − direct, added by the proxy.
    Added,
    /// No meaningful direct figure.
    None,
}

struct Row {
    label: &'static str,
    workload: &'static str,
    metric: &'static str,
    unit: &'static str,
    /// Multiply the raw median by this to get `unit`.
    scale: f64,
    better: &'static str,
    vs: Vs,
}

#[rustfmt::skip]
const ROWS: &[Row] = &[
    Row { label: "GET pod, 1 connection", workload: "get-c1", metric: "rps", unit: "req/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "GET pod, 16 connections", workload: "get-c16", metric: "rps", unit: "req/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "GET pod, 64 connections", workload: "get-c64", metric: "rps", unit: "req/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "LIST 500 pods, 1 connection", workload: "list500-c1", metric: "rps", unit: "req/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "LIST 500 pods, 16 connections", workload: "list500-c16", metric: "rps", unit: "req/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "GET pod, 1 connection: latency p50", workload: "get-c1", metric: "p50_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "GET pod, 64 connections: latency p99", workload: "get-c64", metric: "p99_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "LIST 500 pods, 1 connection: latency p50", workload: "list500-c1", metric: "p50_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "proxy CPU per GET (64 conns)", workload: "get-c64", metric: "proxy_cpu_us_per_req", unit: "µs", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "proxy CPU per LIST 500 (16 conns)", workload: "list500-c16", metric: "proxy_cpu_us_per_req", unit: "µs", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "256 MiB response: throughput", workload: "bytes256", metric: "mib_per_s", unit: "MiB/s", scale: 1.0, better: "↑", vs: Vs::Ratio },
    Row { label: "256 MiB response: proxy RSS growth", workload: "bytes256", metric: "rss_growth_kib", unit: "KiB", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "256 MiB response: proxy CPU", workload: "bytes256", metric: "cpu_secs", unit: "ms", scale: 1000.0, better: "↓", vs: Vs::None },
    Row { label: "idle RSS (fresh, after 1 request)", workload: "idle", metric: "rss_kib", unit: "MiB", scale: 1.0 / 1024.0, better: "↓", vs: Vs::None },
    Row { label: "idle RSS, `cargo build --release` (glibc shared)", workload: "idle-dynamic", metric: "rss_kib", unit: "MiB", scale: 1.0 / 1024.0, better: "↓", vs: Vs::None },
    Row { label: "RSS holding the watches", workload: "watches", metric: "rss_max_kib", unit: "MiB", scale: 1.0 / 1024.0, better: "↓", vs: Vs::None },
    Row { label: "watch event latency p50 (events one at a time, each to one watch)", workload: "watches", metric: "latency_p50_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "watch event latency p99", workload: "watches", metric: "latency_p99_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "open the watches", workload: "watches", metric: "open_secs", unit: "s", scale: 1.0, better: "↓", vs: Vs::Added },
    Row { label: "proxy CPU per watch event", workload: "watches", metric: "cpu_us_per_event", unit: "µs", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "fake API CPU per watch event", workload: "watches", metric: "fake_cpu_us_per_event", unit: "µs", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "proxy file descriptors holding the watches", workload: "watches", metric: "fds", unit: "fds", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "connections to the API server holding the watches (most seen, sampled every 2 s)", workload: "watches", metric: "upstream_conns", unit: "conns", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "fan-out (each event to all watches at once): latency p50", workload: "fanout", metric: "latency_p50_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "fan-out: latency p99", workload: "fanout", metric: "latency_p99_us", unit: "ms", scale: 0.001, better: "↓", vs: Vs::Added },
    Row { label: "fan-out: RSS holding the watches", workload: "fanout", metric: "rss_max_kib", unit: "MiB", scale: 1.0 / 1024.0, better: "↓", vs: Vs::None },
    Row { label: "fan-out: proxy CPU per event", workload: "fanout", metric: "cpu_us_per_event", unit: "µs", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "start-up to first 200", workload: "startup", metric: "startup_ms", unit: "ms", scale: 1.0, better: "↓", vs: Vs::None },
    Row { label: "RSS after the whole run (idle)", workload: "after", metric: "rss_kib", unit: "MiB", scale: 1.0 / 1024.0, better: "↓", vs: Vs::None },
];

/// The wrk workloads in the CPU table.
const LOAD_WORKLOADS: &[(&str, &str)] = &[
    ("get-c1", "GET pod, 1 conn"),
    ("get-c16", "GET pod, 16 conns"),
    ("get-c64", "GET pod, 64 conns"),
    ("list500-c1", "LIST 500 pods, 1 conn"),
    ("list500-c16", "LIST 500 pods, 16 conns"),
];

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Three significant digits, at most 2 decimals.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cmd_report(a: &Args) -> Result<()> {
    let raw = a.positional.first().ok_or("report RAW.tsv MACHINE.txt")?;
    let machine = a.positional.get(1).ok_or("report RAW.tsv MACHINE.txt")?;
    // round \t workload \t target \t metric \t value
    let mut data: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    for line in fs::read_to_string(raw)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 && f[0] == "note" {
            notes.push(format!("{}: {}", f[1], f[2]));
            continue;
        }
        if f.len() != 5 {
            continue;
        }
        if let Ok(v) = f[4].parse::<f64>() {
            data.entry((f[1].to_owned(), f[2].to_owned(), f[3].to_owned()))
                .or_default()
                .push(v);
        }
    }
    let get = |w: &str, t: &str, m: &str| -> Option<(f64, usize)> {
        let mut v = data
            .get(&(w.to_owned(), t.to_owned(), m.to_owned()))?
            .clone();
        let n = v.len();
        median(&mut v).map(|m| (m, n))
    };

    // Failures first (issue 13: "any failure is printed in the report's first lines"):
    // errors of the wrk and h2load runs, failed watches, missing events.
    let mut failures: Vec<String> = Vec::new();
    for ((w, t, m), v) in &data {
        let n: f64 = v.iter().sum();
        if n > 0.0 && matches!(m.as_str(), "errors" | "watches_failed" | "events_missing") {
            failures.push(format!("{w} via {t}: {n} {}", m.replace('_', " ")));
        }
    }
    let machine = fs::read_to_string(machine)?;
    let (title, rest) = machine.split_once('\n').unwrap_or((&machine, ""));
    let mut out = format!("{title}\n\n");
    if failures.is_empty() {
        out += "**Failed requests: 0 in every workload** (wrk's socket errors and non-2xx \
                responses, h2load's failed requests, failed watches, missing events).\n";
    } else {
        out += &format!(
            "**FAILURES: {}.** (The notes at the end say more.)\n",
            failures.join("; ")
        );
    }
    out += rest;
    out += "\n## Results (median over rounds)\n\n";
    let mut head: Vec<String> = ["workload", "unit", "better"].map(String::from).into();
    head.extend(TARGETS.iter().map(|t| t.heading.to_owned()));
    head.extend(
        TARGETS[1..]
            .iter()
            .map(|t| format!("{} vs direct", t.short)),
    );
    head.extend(KA_VS.map(|i| format!("kube-ambassador ÷ {}", TARGETS[i].heading)));
    out += &format!("| {} |\n", head.join(" | "));
    out += &format!("|---|---|---|{}\n", "--:|".repeat(head.len() - 3));
    for r in ROWS {
        let vals: Vec<Option<f64>> = TARGETS
            .iter()
            .map(|t| get(r.workload, t.id, r.metric).map(|(m, _)| m * r.scale))
            .collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let integral = matches!(r.unit, "KiB" | "fds" | "conns");
        let cell = |v: Option<f64>| {
            v.map(|v| if integral { format!("{v:.0}") } else { fmt(v) })
                .unwrap_or_else(|| "—".into())
        };
        let vs_direct = |v: Option<f64>| match (r.vs, v, vals[0]) {
            (Vs::Ratio, Some(v), Some(d)) if d > 0.0 => format!("{:.2}×", v / d),
            (Vs::Added, Some(v), Some(d)) => format!("{:+} {}", fmt(v - d), r.unit),
            _ => "—".into(),
        };
        // A ratio to a growth under 1 MiB would only compare allocator noise.
        let tiny = |v: f64| r.unit == "KiB" && v < 1024.0;
        // kube-ambassador ÷ another proxy.
        let ka_vs = |other: Option<f64>| -> String {
            match (vals[1], other) {
                (Some(k), Some(c)) if tiny(k) || tiny(c) => "— (< 1 MiB)".into(),
                (Some(k), Some(c)) if c > 0.0 => format!("{:.2}×", k / c),
                _ => "—".into(),
            }
        };
        let mut cells: Vec<String> = vec![r.label.into(), r.unit.into(), r.better.into()];
        cells.extend(vals.iter().map(|v| cell(*v)));
        cells.extend(vals[1..].iter().map(|v| vs_direct(*v)));
        cells.extend(KA_VS.map(|i| ka_vs(vals[i])));
        out += &format!("| {} |\n", cells.join(" | "));
    }
    if data.keys().any(|(_, t, _)| t == "nginx") {
        out += "\nnginx is a reference point, not a contender: a minimal TLS reverse proxy (one \
                worker process, keep-alive upstream connections, no buffering) in front of the \
                same fake API server. Every proxy hop adds sockets, copies and a second TLS \
                peer on the same CPUs, so read the proxies' ratios to direct against nginx's; \
                \"kube-ambassador ÷ nginx\" is how far kube-ambassador is from a mature C \
                proxy. Start-up is not measured for nginx.\n";
    }
    if data.keys().any(|(_, t, _)| t == "pass-through") {
        out += "\nThe TCP pass-through (`examples/tcp-forward.rs`, one thread) copies bytes between \
                the client's connection and one of its own to the fake API server: the client's \
                TLS session goes through it untouched, and it parses nothing. It is the cost of \
                the hop alone, a second pair of sockets and their wake-ups on the same CPUs, and \
                so the ceiling for a proxy that also terminates TLS and parses HTTP. It runs in \
                the wrk workloads only.\n";
    }

    out += "\n## Where the CPU went (median over rounds)\n\n";
    out += "Cores in use during each wrk run (CPU seconds ÷ wall seconds, from /proc; the \
            machine has `nproc` of them), and CPU per request. \"Other processes\" is whatever \
            else ran on the machine meanwhile (busy time in /proc/stat minus the three \
            processes measured). \"Fake API share\" is the fake server's part of the CPU the \
            three benchmark processes got: the higher it is, the more the fake, rather than the \
            proxy, sets the request rate. For nginx, the proxy is its one worker process; for the pass-through, the forwarder.\n\n";
    out += "| workload | target | req/s | wrk cores | fake API cores | proxy cores | other processes' cores | fake API share | fake API µs/req | proxy µs/req | wrk µs/req | errors |\n";
    out += "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    let mut fake_bound = Vec::new();
    for (w, label) in LOAD_WORKLOADS {
        for t in TARGETS.map(|t| t.id) {
            let g = |m: &str| get(w, t, m).map(|(v, _)| v);
            let Some(rps) = g("rps") else { continue };
            let c = |m: &str| g(m).map(fmt).unwrap_or_else(|| "—".into());
            // The fake API server's share of the CPU the benchmark's own processes got.
            let ours = ["wrk_cores", "fake_cores", "proxy_cores"]
                .iter()
                .filter_map(|m| g(m))
                .sum::<f64>();
            let share = g("fake_cores").filter(|_| ours > 0.0).map(|f| f / ours);
            if t == "direct" && share.is_some_and(|s| s >= 0.75) {
                fake_bound.push(format!(
                    "{label}: the fake API server took {:.0}% of the CPU the benchmark got when \
                     called directly; its own cost sets the ceiling, so the ratios to direct \
                     understate what the proxies cost (compare proxy µs/req instead)",
                    share.unwrap_or(0.0) * 100.0
                ));
            }
            let errors = data
                .get(&(w.to_string(), t.to_string(), "errors".to_string()))
                .map(|v| v.iter().sum::<f64>())
                .unwrap_or(0.0);
            out += &format!(
                "| {label} | {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(rps),
                c("wrk_cores"),
                c("fake_cores"),
                c("proxy_cores"),
                c("other_cores"),
                share
                    .map(|s| format!("{:.0}%", s * 100.0))
                    .unwrap_or_else(|| "—".into()),
                c("fake_cpu_us_per_req"),
                c("proxy_cpu_us_per_req"),
                c("wrk_cpu_us_per_req"),
                errors
            );
        }
    }
    if !fake_bound.is_empty() {
        out += "\n";
        for n in &fake_bound {
            out += &format!("- {n}.\n");
        }
    }
    out += "\n## Samples\n\n";
    let mut counts = Vec::new();
    for w in ["get-c1", "bytes256", "watches", "fanout", "startup"] {
        for t in TARGETS.map(|t| t.id) {
            let m = match w {
                "bytes256" => "mib_per_s",
                "watches" | "fanout" => "latency_p50_us",
                "startup" => "startup_ms",
                _ => "rps",
            };
            if let Some((_, n)) = get(w, t, m) {
                counts.push(format!("{w}/{t}: {n}"));
            }
        }
    }
    out += &format!(
        "Samples per median: {} (every wrk workload has as many as get-c1).\n",
        counts.join(", ")
    );
    if !notes.is_empty() {
        out += "\n## Notes from this run\n\n";
        for n in notes {
            out += &format!("- {n}\n");
        }
    }
    print!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let cmd = argv.remove(0);
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd.as_str() {
        "watches" => cmd_watches(&args).await,
        "get" => cmd_get(&args).await,
        "startup" => cmd_startup(&args).await,
        "report" => cmd_report(&args),
        _ => Err(USAGE.into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-client {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
