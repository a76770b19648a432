//! Small HTTP clients for the tests: plain HTTP/1.1 to the proxy (over TCP or a unix socket,
//! one connection per request so no pooling hides what the proxy does), a raw-bytes client
//! for byte-exact request lines, and HTTPS (HTTP/1.1 or HTTP/2) straight to the fake API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

use fake_apiserver::{WAIT, within};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// Any byte stream a request can go over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body parsed as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        json(self)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// The body of `resp` parsed as JSON.
pub fn json(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "response body is not JSON ({e}): status {} body {:?}",
            resp.status,
            resp.text()
        )
    })
}

/// Aborts a task when dropped (a per-request connection dies with its response).
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response whose body is read incrementally (watches, large downloads). Dropping it
/// closes its connection, which is how a test simulates a client going away.
#[derive(Debug)]
pub struct StreamResp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Incoming,
    /// Set when the body ended with an error rather than cleanly.
    pub error: Option<String>,
    buf: Vec<u8>,
    _conn: Option<AbortOnDrop>,
}

impl StreamResp {
    fn new(resp: Response<Incoming>, conn: Option<AbortOnDrop>) -> StreamResp {
        let (parts, body) = resp.into_parts();
        StreamResp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            error: None,
            buf: Vec::new(),
            _conn: conn,
        }
    }

    /// The next data frame as it arrived (so a test can see that events are not batched);
    /// `None` at the end of the body or on error (see `error`). Bytes already buffered by
    /// `next_line` come first.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.buf.is_empty() {
            return Some(Bytes::from(std::mem::take(&mut self.buf)));
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => {
                    self.error = Some(e.to_string());
                    return None;
                }
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        return Some(d);
                    }
                }
            }
        }
    }

    /// The next `\n`-terminated line, without the newline; `None` at the end (a final
    /// unterminated fragment is returned as a line).
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            match self.read_frame().await {
                Some(d) => self.buf.extend_from_slice(&d),
                None if self.buf.is_empty() => return None,
                None => {
                    return Some(String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into());
                }
            }
        }
    }

    /// The next line parsed as JSON (a watch event).
    pub async fn next_json(&mut self) -> Option<Value> {
        let line = self.next_line().await?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {line:?}")),
        )
    }

    /// Everything left in the body.
    pub async fn collect(mut self) -> Bytes {
        let mut out = std::mem::take(&mut self.buf);
        while let Some(d) = self.read_frame().await {
            out.extend_from_slice(&d);
        }
        Bytes::from(out)
    }
}

/// A response to an upgrade request: on `101`, `io` is the raw upgraded stream.
#[derive(Debug)]
pub struct Upgrade {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub io: Option<TokioIo<Upgraded>>,
    /// The body, when the upgrade was refused.
    pub body: Bytes,
}

fn full_body(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn box_body<B>(body: B) -> ReqBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

enum Target {
    Tcp(String),
    Unix(PathBuf),
}

async fn connect(target: &Target) -> Result<Box<dyn Io>, BoxError> {
    Ok(match target {
        Target::Tcp(authority) => {
            let s = TcpStream::connect(authority.as_str()).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
    })
}

/// Splits an `http://` URL into where to connect, the Host value and the origin-form target.
fn split_url(url: &str) -> (Target, String, String) {
    let uri: Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
    let authority = uri
        .authority()
        .unwrap_or_else(|| panic!("URL without authority: {url:?}"))
        .to_string();
    let target = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    (Target::Tcp(authority.clone()), authority, target)
}

fn build_request(
    method: &str,
    target: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Request<ReqBody> {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(target);
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if let (Some(h), false) = (host, has_host) {
        b = b.header(header::HOST, h);
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(body).expect("request")
}

/// Sends one request on a fresh HTTP/1.1 connection over `io`; the connection lives as
/// long as the returned guard.
async fn request_on(
    io: Box<dyn Io>,
    req: Request<ReqBody>,
) -> Result<(Response<Incoming>, AbortOnDrop), BoxError> {
    let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    let task = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    }));
    let resp = sender.send_request(req).await?;
    Ok((resp, task))
}

async fn collect(resp: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends a request to a plain-HTTP `url` on a new connection (a `Host` header is added
/// from the URL unless `headers` has one).
pub async fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, BoxError> {
    let (target, host, path) = split_url(url);
    let req = build_request(method, &path, Some(&host), headers, full_body(body));
    let (resp, _conn) = request_on(connect(&target).await?, req).await?;
    collect(resp).await
}

/// [`try_send`], failing the test on a connection error or after [`WAIT`].
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let what = format!("{method} {url}");
    within(&what, try_send(method, url, headers, body))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn get(url: &str) -> Resp {
    send("GET", url, &[], Bytes::new()).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    send("GET", url, headers, Bytes::new()).await
}

/// Sends a request with a streamed body and returns as soon as the response head arrives.
pub async fn try_send_stream<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Result<StreamResp, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (target, host, path) = split_url(url);
    let req = build_request(method, &path, Some(&host), headers, box_body(body));
    let (resp, conn) = request_on(connect(&target).await?, req).await?;
    Ok(StreamResp::new(resp, Some(conn)))
}

pub async fn send_stream<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> StreamResp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let what = format!("{method} {url} (response head)");
    within(&what, try_send_stream(method, url, headers, body))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A GET whose body is read incrementally (e.g. a watch).
pub async fn get_stream(url: &str, headers: &[(&str, &str)]) -> StreamResp {
    send_stream("GET", url, headers, Empty::<Bytes>::new()).await
}

/// Sends an upgrade request (the caller supplies `Connection`/`Upgrade` headers) and, on
/// `101`, returns the upgraded stream.
pub async fn upgrade(url: &str, headers: &[(&str, &str)]) -> Upgrade {
    let (target, host, path) = split_url(url);
    let req = build_request("GET", &path, Some(&host), headers, full_body(Bytes::new()));
    let io = within("connect", connect(&target))
        .await
        .unwrap_or_else(|e| panic!("connect for upgrade {url}: {e}"));
    let (resp, conn) = within("upgrade response", request_on(io, req))
        .await
        .unwrap_or_else(|e| panic!("upgrade {url}: {e}"));
    finish_upgrade(resp, conn).await
}

async fn finish_upgrade(resp: Response<Incoming>, conn: AbortOnDrop) -> Upgrade {
    let status = resp.status();
    let headers = resp.headers().clone();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = collect(resp).await.map(|r| r.body).unwrap_or_default();
        return Upgrade {
            status,
            headers,
            io: None,
            body,
        };
    }
    let upgraded = within("upgrade hand-off", hyper::upgrade::on(resp))
        .await
        .expect("upgrade hand-off");
    drop(conn);
    Upgrade {
        status,
        headers,
        io: Some(TokioIo::new(upgraded)),
        body: Bytes::new(),
    }
}

/// A request over a unix socket (`target` is the origin-form path and query; `Host` is
/// `localhost` unless given).
pub async fn send_unix(
    socket: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let what = format!("{method} {target} via {}", socket.display());
    let req = build_request(method, target, Some("localhost"), headers, full_body(body));
    within(&what, async {
        let io = connect(&Target::Unix(socket.to_path_buf())).await?;
        let (resp, _conn) = request_on(io, req).await?;
        collect(resp).await
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Writes `request` verbatim to `addr` and returns what comes back, up to the end of the
/// first complete response (by Content-Length, chunked framing, or a bodiless status) or
/// until the server closes. Lossy UTF-8.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    raw_on(Box::new(s), request, false).await
}

/// [`raw`] over a unix socket.
pub async fn raw_unix(socket: &Path, request: &[u8]) -> String {
    let s = UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    raw_on(Box::new(s), request, false).await
}

/// Like [`raw`] but reads until the server closes (for several pipelined responses).
pub async fn raw_until_close(addr: SocketAddr, request: &[u8]) -> String {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    raw_on(Box::new(s), request, true).await
}

async fn raw_on(mut io: Box<dyn Io>, request: &[u8], until_close: bool) -> String {
    io.write_all(request).await.expect("write raw request");
    let head_only = request.starts_with(b"HEAD ");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = async {
        loop {
            if !until_close && response_complete(&buf, head_only) {
                break;
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if tokio::time::timeout(WAIT, read).await.is_err() {
        panic!(
            "raw response incomplete after {WAIT:?}: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `buf` holds one complete HTTP/1.x response (interim 1xx responses other than
/// 101 are skipped).
fn response_complete(mut buf: &[u8], head_only: bool) -> bool {
    loop {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body = &buf[end + 4..];
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            buf = body;
            continue;
        }
        if code == 101 || code == 204 || code == 304 || head_only {
            return true;
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                (n.trim() == name).then(|| v.trim().to_owned())
            })
        };
        if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            return chunked_complete(body);
        }
        if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
            return body.len() >= len;
        }
        return false;
    }
}

fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(eol) = find(body, b"\r\n") else {
            return false;
        };
        let size_str = String::from_utf8_lossy(&body[..eol]);
        let Ok(size) = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
        else {
            return true; // malformed: nothing more to wait for
        };
        body = &body[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(body, b"\r\n") else {
                    return false;
                };
                if eol == 0 {
                    return true;
                }
                body = &body[eol + 2..];
            }
        }
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

/// A rustls client config trusting only `ca_pem`, optionally presenting a client
/// certificate, offering `alpn`.
pub fn tls_client_config(
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let mut cfg = match client_identity {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("client key PEM");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// An HTTPS client for talking to the fake API directly.
#[derive(Clone)]
pub struct Https {
    config: Arc<ClientConfig>,
    h2: bool,
}

impl Https {
    /// HTTP/1.1, trusting `ca_pem` only.
    pub fn new(ca_pem: &str) -> Https {
        Https {
            config: tls_client_config(ca_pem, None, &[b"http/1.1"]),
            h2: false,
        }
    }

    /// HTTP/2 (ALPN `h2`), trusting `ca_pem` only.
    pub fn new_h2(ca_pem: &str) -> Https {
        Https {
            config: tls_client_config(ca_pem, None, &[b"h2"]),
            h2: true,
        }
    }

    /// Presents a client certificate (HTTP/1.1).
    pub fn with_client_cert(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Https {
        Https {
            config: tls_client_config(ca_pem, Some((cert_pem, key_pem)), &[b"http/1.1"]),
            h2: false,
        }
    }

    /// Opens a connection to `base` (`https://host:port`) that can carry several requests.
    pub async fn connect(&self, base: &str) -> Result<HttpsConn, BoxError> {
        let uri: Uri = base.parse()?;
        let authority = uri.authority().ok_or("URL without authority")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())?;
        let tcp = TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        let io = TokioIo::new(tls);
        let (sender, task) = if self.h2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            (Sender::H2(s), tokio::spawn(async move { drop(conn.await) }))
        } else {
            let (s, conn) = http1::handshake(io).await?;
            (
                Sender::H1(s),
                tokio::spawn(async move { drop(conn.with_upgrades().await) }),
            )
        };
        Ok(HttpsConn {
            sender,
            authority: authority.to_string(),
            task: Some(task),
        })
    }

    /// One request on a new connection.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, BoxError> {
        let (base, path) = split_base(url);
        let mut conn = self.connect(&base).await?;
        conn.send(method, &path, headers, body).await
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Resp, BoxError> {
        self.send("GET", url, headers, Bytes::new()).await
    }

    /// One streamed request on a new connection (which closes when the response is dropped).
    pub async fn send_stream<B>(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: B,
    ) -> Result<StreamResp, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (base, path) = split_base(url);
        let mut conn = self.connect(&base).await?;
        let mut resp = conn.send_stream(method, &path, headers, body).await?;
        resp._conn = conn.task.take().map(AbortOnDrop);
        Ok(resp)
    }
}

fn split_base(url: &str) -> (String, String) {
    let uri: Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().expect("URL authority")
    );
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    (base, path)
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// An open HTTPS connection to the fake API.
pub struct HttpsConn {
    sender: Sender,
    authority: String,
    task: Option<JoinHandle<()>>,
}

impl HttpsConn {
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, BoxError> {
        Ok(match &mut self.sender {
            Sender::H1(s) => {
                let req = build_request(method, path, Some(&self.authority), headers, body);
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                // HTTP/2 carries the authority as a pseudo-header, from an absolute URI.
                let url = format!("https://{}{path}", self.authority);
                let req = build_request(method, &url, None, headers, body);
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, BoxError> {
        let resp = self.request(method, path, headers, full_body(body)).await?;
        collect(resp).await
    }

    pub async fn send_stream<B>(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: B,
    ) -> Result<StreamResp, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let resp = self.request(method, path, headers, box_body(body)).await?;
        Ok(StreamResp::new(resp, None))
    }

    /// Sends an upgrade request on this (HTTP/1.1) connection.
    pub async fn upgrade(&mut self, path: &str, headers: &[(&str, &str)]) -> Upgrade {
        let resp = self
            .request("GET", path, headers, full_body(Bytes::new()))
            .await
            .expect("upgrade request");
        let task = self.task.take().expect("connection task");
        finish_upgrade(resp, AbortOnDrop(task)).await
    }

    /// Waits until the server closes this connection.
    pub async fn closed(&mut self) {
        if let Some(task) = self.task.take() {
            within("the server to close the connection", task)
                .await
                .expect("connection task");
        }
    }
}

impl Drop for HttpsConn {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One HTTP/1.x response read raw (`raw`, `raw_unix`), taken apart: interim `1xx`
/// responses (but `101`) skipped, header names lowercased, a chunked body de-chunked.
/// Bodies in these tests are small and textual.
#[derive(Debug)]
pub struct RawResp {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResp {
    pub fn parse(mut text: &str) -> RawResp {
        while text.starts_with("HTTP/1.1 1") && !text.starts_with("HTTP/1.1 101") {
            match text.split_once("\r\n\r\n") {
                Some((_, rest)) => text = rest,
                None => break,
            }
        }
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        RawResp {
            status_line,
            status,
            headers,
            body,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// The data of a chunked body (RFC 9112 §7.1); stops at the last chunk or at anything
/// malformed, which then shows as a body mismatch.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
