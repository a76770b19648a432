//! Static files for `--www DIR` under `--www-prefix`: what kubectl serves with Go's
//! `http.StripPrefix(prefix, http.FileServer(http.Dir(dir)))`.
//!
//! The router has already matched the prefix, cleaned the path (a literal `..` never gets
//! here: it is answered with a 301) and percent-decoded what follows the prefix. From
//! there we follow `net/http/fs.go`'s `serveFile`:
//!
//! - a path ending in `/index.html` is redirected to `./` (relative, as Go's
//!   `localRedirect` does, so it works under any prefix);
//! - a directory named without its trailing slash gets a 301 to `NAME/`, a file named
//!   with one a 301 to `../NAME`;
//! - a directory serves its `index.html`, or else Go's minimal HTML listing;
//! - a file is streamed with `Content-Type` (by extension), `Content-Length` and
//!   `Last-Modified`, and `If-Modified-Since` gets a 304;
//! - a missing file is `404 page not found`, an unreadable one `403 Forbidden`.
//!
//! Where we part from Go, deliberately: nothing outside the directory is ever served.
//! Go clamps an encoded `%2e%2e` at the root and follows any symlink; we answer 404 to a
//! decoded `..` segment, and to a file whose real path (all symlinks resolved) is outside
//! the directory's real path. Symlinks that stay inside are followed, so a ConfigMap
//! volume (`index.html -> ..data/index.html`) works. The check is made on the file
//! actually opened (its device and inode must be those of the resolved path), so a
//! symlink swapped in between cannot slip a file from elsewhere through. Only regular
//! files and directories are served (a FIFO would block a thread). Methods other than
//! GET and HEAD get 405 (Go serves the file for any method), unknown extensions are
//! `application/octet-stream` (Go sniffs the content), and Range requests are not
//! supported (the whole file is sent, so `Accept-Ranges` is not advertised).
//!
//! All file-system work runs on tokio's blocking pool; only requests under the prefix
//! ever get here, and only when `--www` is set.

use std::fmt::Write as _;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::body::ProxyBody;
use crate::status;

/// The page a directory serves, and the name redirected to `./`.
const INDEX: &str = "index.html";
/// How much of a file is read per body frame.
const CHUNK: usize = 64 * 1024;

/// The static file server, built once from `--www`.
#[derive(Debug, Clone)]
pub struct Www {
    root: PathBuf,
}

/// Why a file was not served. Each carries the path that failed; the client only sees
/// the status (the path is for the debug log).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: resolves outside the --www directory {}", path.display(), root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{}: changed while it was being opened", path.display())]
    Changed { path: PathBuf },
    #[error("{}: neither a regular file nor a directory", path.display())]
    Special { path: PathBuf },
}

impl ServeError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> ServeError + '_ {
        move |source| ServeError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Go's `toHTTPError`: missing is 404, forbidden 403, anything else 500. What we
    /// refuse on purpose looks missing, so it reveals nothing.
    fn response(&self) -> Response<ProxyBody> {
        match self {
            ServeError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                status::text(StatusCode::FORBIDDEN, "403 Forbidden\n")
            }
            ServeError::Io { source, .. } if !is_missing(source) => {
                tracing::warn!("static file: {self}");
                status::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error\n",
                )
            }
            _ => status::not_found(),
        }
    }
}

/// Errors Go's `http.Dir` reports as "does not exist" (`mapOpenError` turns a file used
/// as a directory into that too).
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::ELOOP))
}

/// What a path turned out to be.
enum Found {
    /// A directory named without its trailing slash.
    AddSlash,
    /// A file named with a trailing slash.
    DropSlash,
    File {
        file: File,
        meta: Metadata,
        /// The directory's `index.html`, served for the directory.
        index: bool,
    },
    Listing {
        modified: Option<SystemTime>,
        entries: Vec<(String, bool)>,
    },
}

impl Www {
    /// kubectl only warns about a bad directory (every request is then a 404); so do we,
    /// and keep looking at each request, in case it appears later.
    pub fn new(root: PathBuf) -> Www {
        match fs::metadata(&root) {
            Err(e) => tracing::warn!(
                "Failed to stat static file directory {}: {e}",
                root.display()
            ),
            Ok(m) if !m.is_dir() => tracing::warn!(
                "Static file directory {} is not a directory",
                root.display()
            ),
            Ok(_) => {}
        }
        Www { root }
    }

    /// Serves `path`: the percent-decoded request path after the prefix (no leading
    /// slash, as `http.StripPrefix` leaves it). `query` is kept on redirects.
    pub async fn serve(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
    ) -> Response<ProxyBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut resp = status::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        // `http.FileServer` puts the leading slash back.
        let upath = format!("/{path}");
        if upath.ends_with("/index.html") {
            return local_redirect("./", query);
        }
        let Some(rel) = relative(&upath) else {
            tracing::debug!(path = %upath, "static file: refused a path leaving the directory");
            return status::not_found();
        };
        let root = self.root.clone();
        let slash = upath.ends_with('/');
        let found = tokio::task::spawn_blocking(move || lookup(&root, &rel, slash)).await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!("static file: {e}");
                return e.response();
            }
            Err(e) => {
                tracing::warn!("static file: the lookup task failed: {e}");
                return status::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error\n",
                );
            }
        };
        let head = method == Method::HEAD;
        match found {
            Found::AddSlash => local_redirect(&format!("{}/", escape(base(&upath))), query),
            Found::DropSlash => local_redirect(&format!("../{}", escape(base(&upath))), query),
            Found::File { file, meta, index } => {
                let modified = meta.modified().ok();
                if not_modified(headers, modified) {
                    return not_modified_response(modified);
                }
                let len = meta.len();
                let body = if head {
                    ProxyBody::empty()
                } else {
                    ProxyBody::File(Box::new(FileBody::new(file, len)))
                };
                let mut resp = Response::new(body);
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    // A directory's index is typed by its own name, not the directory's.
                    HeaderValue::from_static(content_type(if index { INDEX } else { &upath })),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                set_last_modified(h, modified);
                resp
            }
            Found::Listing { modified, entries } => {
                if not_modified(headers, modified) {
                    return not_modified_response(modified);
                }
                let html = listing(&entries);
                let len = html.len();
                let body = if head {
                    ProxyBody::empty()
                } else {
                    ProxyBody::full(html)
                };
                let mut resp = Response::new(body);
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                set_last_modified(h, modified);
                resp
            }
        }
    }
}

/// The path below the root, from the decoded URL path: empty and `.` segments dropped
/// (Go's `path.Clean`), `None` for a `..` segment or a NUL byte. Go would clamp `..` at
/// the root; such a path only arrives percent-encoded (the router 301s a literal one),
/// so we refuse it rather than guess what was meant.
fn relative(upath: &str) -> Option<PathBuf> {
    if upath.contains('\0') {
        return None;
    }
    let mut rel = PathBuf::new();
    for seg in upath.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => rel.push(s),
        }
    }
    Some(rel)
}

/// The blocking part: resolve, open, check, and for a directory find its index or list it.
fn lookup(root: &Path, rel: &Path, slash: bool) -> Result<Found, ServeError> {
    // Resolved per request: the directory may be a symlink that is swapped (a ConfigMap
    // volume's `..data`), or appear after start-up.
    let root = fs::canonicalize(root).map_err(ServeError::io(root))?;
    let (file, meta, real) = open_beneath(&root, rel)?;
    if meta.is_file() {
        return Ok(if slash {
            Found::DropSlash
        } else {
            Found::File {
                file,
                meta,
                index: false,
            }
        });
    }
    if !slash {
        return Ok(Found::AddSlash);
    }
    // Go falls back to the listing whatever kept the index from being opened.
    if let Ok((file, meta, _)) = open_beneath(&root, &rel.join(INDEX)) {
        if meta.is_file() {
            return Ok(Found::File {
                file,
                meta,
                index: true,
            });
        }
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(&real).map_err(ServeError::io(&real))? {
        let entry = entry.map_err(ServeError::io(&real))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        entries.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    // The listing was read by path: make sure that path still is the directory we
    // checked, so a swapped symlink cannot list a directory elsewhere.
    same_file(&real, &meta)?;
    entries.sort();
    Ok(Found::Listing {
        modified: meta.modified().ok(),
        entries,
    })
}

/// Opens `root/rel` and proves that what was opened lies inside `root` (both real
/// paths): the real path must be below `root`, and still name the very file opened.
/// Returns the file, its metadata and its real path.
fn open_beneath(root: &Path, rel: &Path) -> Result<(File, Metadata, PathBuf), ServeError> {
    let full = root.join(rel);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It has
    // no effect on reading a regular file.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&full)
        .map_err(ServeError::io(&full))?;
    let meta = file.metadata().map_err(ServeError::io(&full))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(ServeError::Special { path: full });
    }
    let real = fs::canonicalize(&full).map_err(ServeError::io(&full))?;
    if !real.starts_with(root) {
        return Err(ServeError::Outside {
            path: full,
            root: root.to_owned(),
        });
    }
    same_file(&real, &meta)?;
    Ok((file, meta, real))
}

/// Fails unless `path` (symlink-free) names the file `meta` was taken from.
fn same_file(path: &Path, meta: &Metadata) -> Result<(), ServeError> {
    let now = fs::metadata(path).map_err(ServeError::io(path))?;
    if now.dev() == meta.dev() && now.ino() == meta.ino() {
        Ok(())
    } else {
        Err(ServeError::Changed {
            path: path.to_owned(),
        })
    }
}

/// Go's `localRedirect`: a relative `Location`, the query kept, no body.
fn local_redirect(location: &str, query: Option<&str>) -> Response<ProxyBody> {
    let mut location = location.to_owned();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = empty(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Go's `writeNotModified`: no body, but the `Last-Modified` that was checked.
fn not_modified_response(modified: Option<SystemTime>) -> Response<ProxyBody> {
    let mut resp = empty(StatusCode::NOT_MODIFIED);
    set_last_modified(resp.headers_mut(), modified);
    resp
}

fn empty(code: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = code;
    resp
}

/// Go's `path.Base` of a URL path: the last non-empty segment (`""` for the root).
fn base(upath: &str) -> &str {
    upath.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Percent-escapes a decoded path as Go's `url.URL.EscapedPath` does, so a name with
/// `?`, `#`, a space or non-ASCII bytes stays one path in a `Location` or a link.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'~'
                    | b'$'
                    | b'&'
                    | b'+'
                    | b','
                    | b'/'
                    | b':'
                    | b';'
                    | b'='
                    | b'@'
            );
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Go's `dirList`: names sorted, a slash after directories, links escaped.
fn listing(entries: &[(String, bool)]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n",
    );
    for (name, is_dir) in entries {
        let name = if *is_dir {
            format!("{name}/")
        } else {
            name.clone()
        };
        let mut href = escape(&name);
        // A colon in the first segment would read as a URL scheme.
        if name.split('/').next().is_some_and(|s| s.contains(':')) {
            href.insert_str(0, "./");
        }
        out.push_str("<a href=\"");
        status::html_escape_into(&href, &mut out);
        out.push_str("\">");
        status::html_escape_into(&name, &mut out);
        out.push_str("</a>\n");
    }
    out.push_str("</pre>\n");
    out
}

/// `Content-Type` by extension: Go's built-in table plus a few common web types; any
/// other extension is `application/octet-stream`.
fn content_type(upath: &str) -> &'static str {
    let name = base(upath);
    let ext = match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "text" => "text/plain; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "yaml" | "yml" => "application/yaml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/vnd.microsoft.icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Go skips `Last-Modified` for an unknown or Unix-epoch time.
fn set_last_modified(h: &mut HeaderMap, modified: Option<SystemTime>) {
    if let Some(t) = modified.filter(|t| *t > UNIX_EPOCH) {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
}

/// Go's `checkIfModifiedSince`: not modified if the time, to the second, is not after the
/// client's. An `If-None-Match` takes precedence (we set no ETag, so it never matches).
fn not_modified(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let Some(modified) = modified.filter(|t| *t > UNIX_EPOCH) else {
        return false;
    };
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(modified) <= secs(since)
}

/// A file's bytes as a body, read chunk by chunk as the client takes them (never whole
/// into memory), ending after the length announced in `Content-Length`.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    fn new(file: File, len: u64) -> FileBody {
        let chunk = usize::try_from(len).map_or(CHUNK, |l| l.min(CHUNK));
        FileBody {
            file: tokio::fs::File::from_std(file),
            remaining: len,
            buf: vec![0; chunk].into_boxed_slice(),
        }
    }

    /// The bytes still to be sent.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want =
            usize::try_from(this.remaining).map_or(this.buf.len(), |r| r.min(this.buf.len()));
        let mut buf = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            // The file shrank after its length was sent: end with an error, so the
            // client sees a truncated response rather than a short "complete" one.
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while being sent",
                ))))
            }
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(buf.filled());
                this.remaining -= data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn www() -> (tempfile::TempDir, Www) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("hello.txt"), "hello\n").unwrap();
        fs::write(root.join("app.js"), "x()").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub").join("index.html"), "<p>sub</p>").unwrap();
        fs::create_dir(root.join("list")).unwrap();
        fs::write(root.join("list").join("b a?.txt"), "").unwrap();
        fs::create_dir(root.join("list").join("dir")).unwrap();
        fs::write(dir.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("inside")).unwrap();
        (dir, Www::new(root))
    }

    async fn get(w: &Www, path: &str, query: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = w.serve(&Method::GET, &HeaderMap::new(), path, query).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn files_redirects_and_refusals_follow_go() {
        let (_dir, w) = www();
        let (code, h, body) = get(&w, "hello.txt", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "hello\n");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::CONTENT_LENGTH], "6");
        assert!(h.contains_key(header::LAST_MODIFIED));
        let (_, h, _) = get(&w, "app.js", None).await;
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");

        let (code, h, body) = get(&w, "sub/", None).await;
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"<p>sub</p>"[..]));
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let redirects = [
            ("sub", None, "sub/"),
            ("sub", Some("a=1"), "sub/?a=1"),
            ("sub/index.html", None, "./"),
            ("index.html", None, "./"),
            ("hello.txt/", None, "../hello.txt"),
        ];
        for (path, query, location) in redirects {
            let (code, h, _) = get(&w, path, query).await;
            assert_eq!(code, StatusCode::MOVED_PERMANENTLY, "{path}");
            assert_eq!(h[header::LOCATION], location, "{path}");
        }
        for path in [
            "missing",
            "hello.txt/x",
            "../secret",
            "sub/../../secret",
            "escape",
            "a\0b",
        ] {
            let (code, _, body) = get(&w, path, None).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body, "404 page not found\n");
        }
        let (code, _, body) = get(&w, "inside", None).await;
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
    }

    #[tokio::test]
    async fn a_directory_without_index_is_listed_like_go() {
        let (_dir, w) = www();
        let (code, h, body) = get(&w, "list/", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(
            body,
            "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n\
             <a href=\"b%20a%3F.txt\">b a?.txt</a>\n<a href=\"dir/\">dir/</a>\n</pre>\n"
        );
    }

    #[tokio::test]
    async fn head_conditional_and_other_methods() {
        let (_dir, w) = www();
        let resp = w
            .serve(&Method::HEAD, &HeaderMap::new(), "hello.txt", None)
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "6");
        assert!(resp.body().is_end_stream());

        let (_, h, _) = get(&w, "hello.txt", None).await;
        let mut cond = HeaderMap::new();
        cond.insert(header::IF_MODIFIED_SINCE, h[header::LAST_MODIFIED].clone());
        let resp = w.serve(&Method::GET, &cond, "hello.txt", None).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            resp.headers()[header::LAST_MODIFIED],
            h[header::LAST_MODIFIED]
        );
        cond.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let resp = w.serve(&Method::GET, &cond, "hello.txt", None).await;
        assert_eq!(resp.status(), StatusCode::OK);

        let resp = w
            .serve(&Method::POST, &HeaderMap::new(), "hello.txt", None)
            .await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn a_large_file_is_streamed_in_chunks() {
        let (dir, w) = www();
        let data: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("www").join("big.bin"), &data).unwrap();
        let resp = w
            .serve(&Method::GET, &HeaderMap::new(), "big.bin", None)
            .await;
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/octet-stream"
        );
        let mut body = resp.into_body();
        let mut frames = 0;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                assert!(d.len() <= CHUNK);
                got.extend_from_slice(d);
                frames += 1;
            }
        }
        assert!(frames >= 4, "{frames} frames");
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn special_files_are_not_served() {
        let (dir, w) = www();
        let fifo = dir.path().join("www").join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfifo is not available");
            return;
        }
        let (code, _, _) = get(&w, "fifo", None).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[test]
    fn helpers() {
        assert_eq!(relative("/a/./b//c/"), Some(PathBuf::from("a/b/c")));
        assert_eq!(relative("/"), Some(PathBuf::new()));
        assert_eq!(relative("/a/../b"), None);
        assert_eq!(base("/a/b/"), "b");
        assert_eq!(base("/"), "");
        assert_eq!(escape("a b#?%/ü"), "a%20b%23%3F%25/%C3%BC");
        assert_eq!(content_type("/x/Y.PNG"), "image/png");
        assert_eq!(content_type("/x/README"), "application/octet-stream");
        assert_eq!(content_type("/x.unknown"), "application/octet-stream");
    }
}
