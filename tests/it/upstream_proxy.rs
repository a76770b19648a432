//! The kubeconfig cluster's `proxy-url` through the real binary: the API server is
//! reached through an HTTP CONNECT tunnel (`http://`) or a SOCKS5 proxy (`socks5://`),
//! each a tiny proxy written here that records what it was asked for and splices bytes.
//! Requests, watches and upgrades all take the tunnel, which carries TLS end to end (the
//! proxy in between never sees the token); a host name goes to the proxy unresolved;
//! credentials in the URL become proxy authentication and never reach the logs; a
//! refused tunnel is a Status error; an `https://` proxy is refused at start-up.

use crate::support;

use support::{assert_no_secrets, path_str};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fake_apiserver::base64;
use support::client::{self, AbortOnDrop};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "upstream-proxy-token-c0ffee";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// What a test proxy was asked for.
#[derive(Default)]
struct Log {
    /// `host:port` of every tunnel requested, in order.
    targets: Vec<String>,
    /// The head of each CONNECT request (HTTP proxy only).
    heads: Vec<String>,
    /// `(user, password)` of each SOCKS5 username/password authentication.
    socks_auth: Vec<(String, String)>,
    /// Every byte the proxy carried from the client to the API server.
    upstream_bytes: Vec<u8>,
}

/// A tiny forward proxy on 127.0.0.1 (HTTP CONNECT or SOCKS5), stopped on drop.
struct TestProxy {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    _task: AbortOnDrop,
}

impl TestProxy {
    fn targets(&self) -> Vec<String> {
        self.log.lock().unwrap().targets.clone()
    }

    fn heads(&self) -> Vec<String> {
        self.log.lock().unwrap().heads.clone()
    }

    fn carried_upstream(&self) -> Vec<u8> {
        self.log.lock().unwrap().upstream_bytes.clone()
    }
}

#[derive(Clone)]
enum Kind {
    /// HTTP CONNECT; `Some(header value)`: answer 407 unless `Proxy-Authorization` is it.
    Connect(Option<String>),
    /// HTTP CONNECT answered with this status, no tunnel.
    Refuse(u16),
    /// SOCKS5; with `true`, only username/password authentication is offered.
    Socks5 { auth: bool },
}

async fn start_proxy(kind: Kind) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let shared = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let log = shared.clone();
            let kind = kind.clone();
            tokio::spawn(async move {
                let _ = match kind {
                    Kind::Connect(auth) => serve_connect(conn, log, auth.as_deref(), None).await,
                    Kind::Refuse(code) => serve_connect(conn, log, None, Some(code)).await,
                    Kind::Socks5 { auth } => serve_socks5(conn, log, auth).await,
                };
            });
        }
    });
    TestProxy {
        addr,
        log,
        _task: AbortOnDrop(task),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connect(
    mut conn: TcpStream,
    log: Arc<Mutex<Log>>,
    auth: Option<&str>,
    refuse: Option<u16>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("")
        .to_owned();
    {
        let mut log = log.lock().unwrap();
        log.targets.push(target.clone());
        log.heads.push(head.clone());
    }
    if let Some(code) = refuse {
        let resp = format!("HTTP/1.1 {code} Refused\r\nContent-Length: 0\r\n\r\n");
        return conn.write_all(resp.as_bytes()).await;
    }
    if let Some(expected) = auth {
        let given = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_owned())
        });
        if given.as_deref() != Some(expected) {
            return conn
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
        }
    }
    let mut upstream = TcpStream::connect(target.as_str()).await?;
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    upstream.write_all(&rest).await?;
    log.lock().unwrap().upstream_bytes.extend_from_slice(&rest);
    splice(conn, upstream, log).await
}

async fn serve_socks5(
    mut conn: TcpStream,
    log: Arc<Mutex<Log>>,
    require_auth: bool,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    conn.read_exact(&mut methods).await?;
    let wanted = if require_auth { 2 } else { 0 };
    if head[0] != 5 || !methods.contains(&wanted) {
        return conn.write_all(&[5, 0xff]).await;
    }
    conn.write_all(&[5, wanted]).await?;
    if require_auth {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD.
        let mut ver_len = [0u8; 2];
        conn.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; usize::from(ver_len[1])];
        conn.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        conn.read_exact(&mut plen).await?;
        let mut pass = vec![0u8; usize::from(plen[0])];
        conn.read_exact(&mut pass).await?;
        log.lock().unwrap().socks_auth.push((
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&pass).into_owned(),
        ));
        conn.write_all(&[1, 0]).await?;
    }
    // VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut req = [0u8; 4];
    conn.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            conn.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            conn.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            conn.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            conn.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return conn.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await,
    };
    let mut port = [0u8; 2];
    conn.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    log.lock().unwrap().targets.push(target.clone());
    if req[1] != 1 {
        return conn.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    }
    let upstream = TcpStream::connect(target.as_str()).await?;
    conn.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    splice(conn, upstream, log).await
}

/// Copies both ways until either side is done, logging what goes upstream.
async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    log: Arc<Mutex<Log>>,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return uw.shutdown().await;
            }
            log.lock()
                .unwrap()
                .upstream_bytes
                .extend_from_slice(&buf[..n]);
            uw.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        tokio::io::copy(&mut ur, &mut cw).await?;
        cw.shutdown().await
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

// ---------------------------------------------------------------------------------------

/// A kubeconfig (JSON is YAML) for `server` through `proxy_url`, trusting `ca`.
fn kubeconfig(world: &World, server: &str, ca: &Path, proxy_url: &str) -> PathBuf {
    world.kubeconfig_yaml(
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "main",
            "clusters": [{"name": "main", "cluster": {
                "server": server,
                "certificate-authority": path_str(ca),
                "proxy-url": proxy_url,
            }}],
            "users": [{"name": "main", "user": {"token": TOKEN}}],
            "contexts": [{"name": "main", "context": {"cluster": "main", "user": "main"}}],
        })
        .to_string(),
    )
}

async fn setup() -> (FakeApi, World, PathBuf) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::new();
    let ca = world.file("ca.crt", &pki.ca_pem());
    (api, world, ca)
}

async fn start(world: &World, kubeconfig: &Path) -> Proxy {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let home = path_str(world.base());
    Proxy::start(&[&kc, "--port=0"], &[("HOME", &home)]).await
}

/// Requests through the proxy reach the API server with the token, which the proxy in
/// between never sees (TLS end to end).
async fn assert_requests_get_through(proxy: &Proxy, via: &TestProxy) {
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "PodList");
    let resp = client::get(&proxy.url("/echo/through")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["token"], TOKEN);
    let carried = via.carried_upstream();
    assert!(!carried.is_empty(), "nothing went through the proxy");
    assert!(
        find(&carried, TOKEN.as_bytes()).is_none() && find(&carried, b"/echo/through").is_none(),
        "the proxy in between saw plain text"
    );
}

#[tokio::test]
async fn requests_reach_the_api_server_through_an_http_connect_proxy_url() {
    let (api, world, ca) = setup().await;
    let via = start_proxy(Kind::Connect(None)).await;
    let kc = kubeconfig(&world, &api.url(), &ca, &format!("http://{}", via.addr));
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &via).await;
    let target = format!("127.0.0.1:{}", api.port());
    let targets = via.targets();
    assert!(!targets.is_empty());
    assert!(targets.iter().all(|t| *t == target), "{targets:?}");
    let head = &via.heads()[0];
    assert!(
        head.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")),
        "{head:?}"
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn requests_reach_the_api_server_through_a_socks5_proxy_url() {
    let (api, world, ca) = setup().await;
    let via = start_proxy(Kind::Socks5 { auth: false }).await;
    let kc = kubeconfig(&world, &api.url(), &ca, &format!("socks5://{}", via.addr));
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &via).await;
    let targets = via.targets();
    assert!(!targets.is_empty());
    assert!(
        targets
            .iter()
            .all(|t| *t == format!("127.0.0.1:{}", api.port())),
        "{targets:?}"
    );
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn proxy_url_credentials_become_proxy_authentication_and_never_reach_the_logs() {
    const PASSWORD: &str = "pr0xy-s3cret-9";
    let (api, world, ca) = setup().await;

    let expected = format!(
        "Basic {}",
        base64(format!("proxyuser:{PASSWORD}").as_bytes())
    );
    let via = start_proxy(Kind::Connect(Some(expected.clone()))).await;
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        &format!("http://proxyuser:{PASSWORD}@{}", via.addr),
    );
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &via).await;
    assert!(
        via.heads().iter().all(|h| h
            .lines()
            .any(|l| l == format!("Proxy-Authorization: {expected}"))),
        "{:?}",
        via.heads()
    );
    assert_no_secrets(&proxy, &[PASSWORD, &expected[6..], TOKEN]);

    let socks = start_proxy(Kind::Socks5 { auth: true }).await;
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        &format!("socks5://proxyuser:{PASSWORD}@{}", socks.addr),
    );
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &socks).await;
    let auths = socks.log.lock().unwrap().socks_auth.clone();
    assert!(!auths.is_empty());
    assert!(
        auths.iter().all(|(u, p)| u == "proxyuser" && p == PASSWORD),
        "{auths:?}"
    );
    assert_no_secrets(&proxy, &[PASSWORD, TOKEN]);
}

#[tokio::test]
async fn a_host_name_in_the_server_url_is_handed_to_the_proxy_unresolved() {
    let (api, world, ca) = setup().await;
    // The fake's certificate names `localhost` too.
    let server = format!("https://localhost:{}", api.port());
    let target = format!("localhost:{}", api.port());

    let via = start_proxy(Kind::Connect(None)).await;
    let kc = kubeconfig(&world, &server, &ca, &format!("http://{}", via.addr));
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &via).await;
    assert!(
        via.targets().iter().all(|t| *t == target),
        "{:?}",
        via.targets()
    );

    let socks = start_proxy(Kind::Socks5 { auth: false }).await;
    let kc = kubeconfig(&world, &server, &ca, &format!("socks5://{}", socks.addr));
    let proxy = start(&world, &kc).await;
    assert_requests_get_through(&proxy, &socks).await;
    assert!(
        socks.targets().iter().all(|t| *t == target),
        "{:?}",
        socks.targets()
    );
}

#[tokio::test]
async fn watches_and_upgrades_take_the_tunnel_too() {
    let (api, world, ca) = setup().await;
    let via = start_proxy(Kind::Connect(None)).await;
    let kc = kubeconfig(&world, &api.url(), &ca, &format!("http://{}", via.addr));
    let proxy = start(&world, &kc).await;

    let mut watch = support::open_watch(
        &api,
        &proxy.url(&format!("{PODS}?watch=1&resourceVersion=1003")),
    )
    .await;
    api.send_watch_event("ADDED", "through-the-tunnel");
    let event = within("the watch event", watch.next_json())
        .await
        .expect("an event");
    assert_eq!(event["object"]["metadata"]["name"], "through-the-tunnel");
    let tunnels_after_watch = via.targets().len();
    assert!(tunnels_after_watch >= 1);

    let up = client::upgrade(
        &proxy.url("/api/v1/namespaces/default/pods/p/portforward"),
        &[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(up.status, 101, "{:?}", up.body);
    let mut io = up.io.expect("upgraded stream");
    assert_eq!(
        echo(&mut io, b"ping through the tunnel").await,
        b"ping through the tunnel"
    );
    // The upgrade has a connection of its own: one more tunnel.
    assert_eq!(via.targets().len(), tunnels_after_watch + 1);
    assert_no_secrets(&proxy, &[TOKEN]);
}

async fn echo(io: &mut (impl AsyncRead + AsyncWrite + Unpin), msg: &[u8]) -> Vec<u8> {
    within("an echo through the upgrade", async {
        io.write_all(msg).await.expect("write");
        io.flush().await.expect("flush");
        let mut back = vec![0u8; msg.len()];
        io.read_exact(&mut back).await.expect("read");
        back
    })
    .await
}

#[tokio::test]
async fn a_tunnel_the_proxy_refuses_is_a_502_status_naming_the_api_server() {
    let (api, world, ca) = setup().await;
    let via = start_proxy(Kind::Refuse(403)).await;
    let kc = kubeconfig(&world, &api.url(), &ca, &format!("http://{}", via.addr));
    let proxy = start(&world, &kc).await;
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    let status = resp.json();
    assert_eq!(status["kind"], "Status");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("127.0.0.1:{}", api.port())),
        "{message}"
    );
    assert_eq!(via.targets().len(), 1);
    assert!(api.requests().is_empty());
    assert_no_secrets(&proxy, &[TOKEN]);
}

#[tokio::test]
async fn an_https_proxy_url_is_refused_at_start_up_without_printing_its_password() {
    let (api, world, ca) = setup().await;
    let kc = kubeconfig(
        &world,
        &api.url(),
        &ca,
        "https://proxyuser:pr0xy-pw-11@proxy.example:3128",
    );
    let arg = format!("--kubeconfig={}", kc.display());
    let home = path_str(world.base());
    let (status, stdout, stderr) =
        Proxy::start_expect_failure(&[&arg, "--port=0"], &[("HOME", &home)]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("proxy.example:3128") && stderr.contains("http:// or socks5://"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pr0xy-pw-11"),
        "a password reached stderr: {stderr}"
    );
}
