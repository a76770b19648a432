//! The machinery of the side-by-side suite: a launcher for the real `kubectl proxy`, the
//! request description shared by both sides, sending it byte for byte, and the outcome
//! (response plus what the fake API server saw) that the cases compare.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::support::client;
use crate::support::{FakeApi, Seen, WAIT};

/// The header that tags every request, so each side's request can be found in the fake
/// API server's log. It is never part of a comparison.
pub const TAG: &str = "x-compat-case";

/// `kubectl` on PATH, or `None` after saying why the suite skips (a failure under `CI`).
pub fn kubectl() -> Option<PathBuf> {
    crate::support::kubectl("the kubectl compatibility suite")
}

/// Where a proxy listens.
#[derive(Debug, Clone)]
pub enum Addr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Addr {
    pub fn parse(s: &str) -> Option<Addr> {
        let s = s.trim();
        if let Ok(a) = s.parse() {
            return Some(Addr::Tcp(a));
        }
        s.starts_with('/').then(|| Addr::Unix(PathBuf::from(s)))
    }

    /// `127.0.0.1:PORT` (what `{addr}` stands for in a request), `localhost` on a socket.
    pub fn authority(&self) -> String {
        match self {
            Addr::Tcp(a) => a.to_string(),
            Addr::Unix(_) => "localhost".into(),
        }
    }
}

/// A running `kubectl proxy`, killed when dropped.
pub struct Kubectl {
    child: Mutex<Child>,
    pub addr: Addr,
    stderr: Arc<Mutex<String>>,
}

impl Kubectl {
    /// Runs `kubectl --kubeconfig=K proxy ARGS` with `HOME=home` and no `KUBECONFIG`,
    /// and waits for its `Starting to serve on ADDR` line.
    pub async fn start(kubectl: &Path, kubeconfig: &Path, home: &Path, args: &[String]) -> Kubectl {
        let mut cmd = Command::new(kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("proxy")
            .args(args)
            .env("HOME", home)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", kubectl.display()));
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .trim()
                    .strip_prefix("Starting to serve on ")
                    .and_then(Addr::parse)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let addr = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader thread collect what is left.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "kubectl proxy {args:?} did not start serving:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Kubectl {
            child: Mutex::new(child),
            addr,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM (the process is reaped on drop).
    pub fn terminate(&self) {
        let pid = self.child.lock().unwrap().id();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits (bounded) for the process to exit; `true` if it did.
    pub async fn exited_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.child.lock().unwrap().try_wait() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        // Not reaped yet (or reaped by `exited_within`, where kill just fails): the pid
        // is still ours.
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One request, as both proxies receive it. `{addr}` in the target or the Host header
/// stands for the proxy's own `127.0.0.1:PORT`.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub version: &'static str,
    /// `None`: no Host header at all.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sent as `Connection: Upgrade` + `Upgrade: …`; a 101 is then tested by echoing
    /// bytes through the tunnel.
    pub upgrade: Option<String>,
}

impl Req {
    pub fn new(method: &str, target: impl Into<String>) -> Req {
        Req {
            method: method.into(),
            target: target.into(),
            version: "HTTP/1.1",
            host: Some("{addr}".into()),
            headers: Vec::new(),
            body: Vec::new(),
            upgrade: None,
        }
    }

    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.into());
        self
    }

    pub fn no_host(mut self) -> Req {
        self.host = None;
        self
    }

    pub fn http10(mut self) -> Req {
        self.version = "HTTP/1.0";
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Req {
        self.body = body.to_vec();
        self
    }

    pub fn upgrade(mut self, protocol: &str) -> Req {
        self.upgrade = Some(protocol.into());
        self
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request's bytes, tagged with `tag`.
    fn bytes(&self, authority: &str, tag: &str) -> Vec<u8> {
        let fill = |s: &str| s.replace("{addr}", authority);
        let mut out = format!(
            "{} {} {}\r\n",
            self.method,
            fill(&self.target),
            self.version
        );
        if let Some(h) = &self.host {
            out += &format!("Host: {}\r\n", fill(h));
        }
        for (n, v) in &self.headers {
            out += &format!("{n}: {v}\r\n");
        }
        out += &format!("{TAG}: {tag}\r\n");
        if let Some(p) = &self.upgrade {
            out += &format!("Connection: Upgrade\r\nUpgrade: {p}\r\n");
        } else if !self.has_header("connection") {
            out += "Connection: close\r\n";
        }
        let chunked = self
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        if !chunked && (!self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT")) {
            out += &format!("Content-Length: {}\r\n", self.body.len());
        }
        out += "\r\n";
        let mut bytes = out.into_bytes();
        if chunked {
            if !self.body.is_empty() {
                bytes.extend_from_slice(format!("{:x}\r\n", self.body.len()).as_bytes());
                bytes.extend_from_slice(&self.body);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// What one proxy did with one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    /// Response headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the fake API server received, if the request got there.
    pub seen: Option<Seen>,
    /// For a 101: whether bytes written into the tunnel came back (the fake echoes).
    pub tunnel_echoed: Option<bool>,
    /// The connection failed (nothing listening any more).
    pub refused: bool,
}

impl Outcome {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn seen(&self) -> &Seen {
        self.seen
            .as_ref()
            .unwrap_or_else(|| panic!("the request did not reach the API server: {self:?}"))
    }
}

/// Sends `req` to the proxy at `addr` and collects the outcome.
pub async fn run(addr: &Addr, api: &FakeApi, tag: &str, req: &Req) -> Outcome {
    let bytes = req.bytes(&addr.authority(), tag);
    let (text, echoed, refused) = if req.upgrade.is_some() {
        let (text, echoed) = upgrade(connect(addr).await, &bytes, tag).await;
        (text, echoed, false)
    } else {
        match addr {
            // A request larger than the server reads: it answers and closes while the
            // rest is still being written, so the write may fail; read what came back.
            Addr::Tcp(a) if bytes.len() > 64 * 1024 => (oversized(*a, &bytes).await, None, false),
            Addr::Tcp(a) => match tokio::net::TcpStream::connect(a).await {
                // Connected once to learn whether anyone listens; `raw` connects again.
                Ok(_) => (client::raw(*a, &bytes).await, None, false),
                Err(_) => (String::new(), None, true),
            },
            Addr::Unix(p) => (client::raw_unix(p, &bytes).await, None, false),
        }
    };
    let seen = api
        .requests()
        .into_iter()
        .find(|s| s.header(TAG) == Some(tag));
    if refused {
        return Outcome {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            seen,
            tunnel_echoed: None,
            refused,
        };
    }
    let client::RawResp {
        status,
        headers,
        body,
        ..
    } = client::RawResp::parse(&text);
    Outcome {
        status,
        headers,
        body,
        seen,
        tunnel_echoed: echoed,
        refused,
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(addr: &Addr) -> Box<dyn Io> {
    match addr {
        Addr::Tcp(a) => Box::new(
            tokio::net::TcpStream::connect(a)
                .await
                .unwrap_or_else(|e| panic!("connect {a}: {e}")),
        ),
        Addr::Unix(p) => Box::new(
            tokio::net::UnixStream::connect(p)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", p.display())),
        ),
    }
}

/// Writes `request` (ignoring a failed write) and reads until the server closes.
async fn oversized(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    match tokio::time::timeout(WAIT, io).await {
        Ok(r) => r,
        Err(_) => panic!("oversized request to {addr}: no answer within {WAIT:?}"),
    }
}

/// Sends an upgrade request; on 101 writes a line into the tunnel and reads it back.
async fn upgrade(mut s: Box<dyn Io>, request: &[u8], tag: &str) -> (String, Option<bool>) {
    let io = async {
        s.write_all(request).await.expect("write upgrade request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return (String::from_utf8_lossy(&buf).into_owned(), None);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            // Read the rest of the response (until close or the framing says so).
            let mut rest = buf[end..].to_vec();
            loop {
                if body_complete(&head, &rest) {
                    break;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            let mut text = head;
            text.push_str(&String::from_utf8_lossy(&rest));
            return (text, None);
        }
        let ping = format!("ping {tag}\n");
        s.write_all(ping.as_bytes())
            .await
            .expect("write into tunnel");
        let mut got = buf[end..].to_vec();
        while got.len() < ping.len() {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        (head, Some(got == ping.as_bytes()))
    };
    match tokio::time::timeout(WAIT, io).await {
        Ok(r) => r,
        Err(_) => panic!("upgrade {tag}: no answer within {WAIT:?}"),
    }
}

fn body_complete(head: &str, body: &[u8]) -> bool {
    let lower = head.to_ascii_lowercase();
    let len = lower.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    if let Some(len) = len {
        return body.len() >= len;
    }
    if lower.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}
