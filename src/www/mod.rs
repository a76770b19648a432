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
//! - a file is streamed with `Content-Type` (by extension), `Content-Length`,
//!   `Last-Modified` and `Accept-Ranges: bytes`;
//! - conditional requests are decided in the order of Go's `checkPreconditions` (RFC 9110
//!   §13.2.2): `If-Match`/`If-Unmodified-Since` (412), then `If-None-Match`/
//!   `If-Modified-Since` (304); we send no `ETag`, so only `*` and dates can match;
//! - `Range` (with `If-Range`) gets one range as a 206 with `Content-Range`, several as
//!   `multipart/byteranges`, and none that overlaps the file a 416, with Go's
//!   parsing and its quirks (`bytes=-0` is an empty 206; a list asking for more than the
//!   file holds is ignored; an empty file ignores the header);
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
//! `application/octet-stream` (Go sniffs the content).
//!
//! All file-system work runs on tokio's blocking pool; only requests under the prefix
//! ever get here, and only when `--www` is set.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, Metadata};
use std::io::{self, SeekFrom};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use crate::proxy::body::ProxyBody;
use crate::proxy::status;

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
            tracing::debug!(
                path = %crate::logging::Escaped(&upath),
                "static file: refused a path leaving the directory"
            );
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
                let range = match preconditions(headers, modified) {
                    Precondition::Failed => {
                        let mut resp = empty(StatusCode::PRECONDITION_FAILED);
                        set_last_modified(resp.headers_mut(), modified);
                        return resp;
                    }
                    Precondition::NotModified => return not_modified_response(modified),
                    Precondition::Serve { range } => range,
                };
                // A directory's index is typed by its own name, not the directory's.
                let ctype = content_type(if index { INDEX } else { &upath });
                serve_file(file, meta.len(), ctype, modified, range, head)
            }
            Found::Listing { modified, entries } => {
                // Go's `serveFile` checks only `If-Modified-Since` for a listing, and
                // answers before it sets `Last-Modified`.
                if modified_since(headers, modified) {
                    return empty(StatusCode::NOT_MODIFIED);
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
/// client's.
fn modified_since(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    not_after(headers, header::IF_MODIFIED_SINCE, modified) == Some(true)
}

/// Whether the file's time, to the second, is not after the date in header `name`
/// (`If-Modified-Since`, `If-Unmodified-Since`); `None` if either is missing, the date
/// unreadable, or the file's time the epoch (Go's `isZeroTime`).
fn not_after(
    headers: &HeaderMap,
    name: header::HeaderName,
    modified: Option<SystemTime>,
) -> Option<bool> {
    let modified = modified.filter(|t| *t != UNIX_EPOCH)?;
    Some(unix_secs(modified) <= header_time(headers, name)?)
}

/// What the conditional headers decide, in the order of Go's `checkPreconditions` (RFC
/// 9110 §13.2.2). We send no `ETag`, so an entity tag in a condition never matches; only
/// `*` and dates can.
enum Precondition<'a> {
    /// 412: `If-Match` or `If-Unmodified-Since` failed.
    Failed,
    /// 304: `If-None-Match: *`, or `If-Modified-Since` not before the file's time.
    NotModified,
    /// Serve the file, or the `Range` asked for when `If-Range` (if any) allows it.
    Serve { range: Option<&'a [u8]> },
}

fn preconditions(headers: &HeaderMap, modified: Option<SystemTime>) -> Precondition<'_> {
    let value = |name| {
        headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
    };
    let must_match = match value(header::IF_MATCH) {
        Some(v) => Some(star_listed(v)),
        None => not_after(headers, header::IF_UNMODIFIED_SINCE, modified),
    };
    if must_match == Some(false) {
        return Precondition::Failed;
    }
    match value(header::IF_NONE_MATCH) {
        Some(v) if star_listed(v) => return Precondition::NotModified,
        Some(_) => {}
        None if modified_since(headers, modified) => return Precondition::NotModified,
        None => {}
    }
    let range = value(header::RANGE).filter(|_| match value(header::IF_RANGE) {
        None => true,
        // An entity tag: never ours. A date: the file's, to the second (golang/go#8367).
        Some(v) => {
            scan_etag(v).is_none()
                && modified
                    .is_some_and(|m| header_time(headers, header::IF_RANGE) == Some(unix_secs(m)))
        }
    });
    Precondition::Serve { range }
}

/// Whether a list of entity tags (`If-Match`, `If-None-Match`) reaches a `*` before its
/// end or before something that is not an entity tag, as Go's scan does.
fn star_listed(mut v: &[u8]) -> bool {
    loop {
        v = v.trim_ascii();
        match v.first() {
            None => return false,
            Some(b',') => v = &v[1..],
            Some(b'*') => return true,
            Some(_) => match scan_etag(v) {
                Some(rest) => v = rest,
                None => return false,
            },
        }
    }
}

/// Go's `scanETag`: a `"…"` or `W/"…"` entity tag at the start of `v` (RFC 9110 §8.8.3),
/// and what follows it.
fn scan_etag(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let start = if v.starts_with(b"W/") { 2 } else { 0 };
    if v.len() < start + 2 || v[start] != b'"' {
        return None;
    }
    for (i, &c) in v.iter().enumerate().skip(start + 1) {
        match c {
            b'"' => return Some(&v[i + 1..]),
            0x21 | 0x23..=0x7e | 0x80..=0xff => {}
            _ => return None,
        }
    }
    None
}

/// A date header in any of HTTP's three formats, in seconds since the epoch.
fn header_time(headers: &HeaderMap, name: header::HeaderName) -> Option<i64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(unix_secs)
}

/// Seconds since the epoch, rounded down (Go's `Truncate(time.Second)`, `Unix()`).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    }
}

/// A byte range of a file (Go's `httpRange`). `len` may be 0: Go answers `bytes=-0`
/// with an empty 206, and so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteRange {
    start: u64,
    len: u64,
}

impl ByteRange {
    /// `bytes FIRST-LAST/SIZE`, computed as Go does (so an empty range reads `20-19`).
    fn content_range(&self, size: u64) -> String {
        let last = i128::from(self.start) + i128::from(self.len) - 1;
        format!("bytes {}-{last}/{size}", self.start)
    }
}

/// Why a `Range` header gets a 416; the texts are Go's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeError {
    Invalid,
    /// Every range starts at or past the end of the file.
    NoOverlap,
}

impl RangeError {
    fn text(self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range\n",
            RangeError::NoOverlap => "invalid range: failed to overlap\n",
        }
    }
}

/// Go's `parseRange` (RFC 9110 §14.1.2): `bytes=` and a comma-separated list of
/// `FIRST-LAST`, `FIRST-` and `-SUFFIX`, each clamped to the file. Numbers are Go's
/// `ParseInt` (a sign is allowed, then digits).
fn parse_range(v: &[u8], size: u64) -> Result<Vec<ByteRange>, RangeError> {
    let invalid = RangeError::Invalid;
    let v = std::str::from_utf8(v).map_err(|_| invalid)?;
    let list = v.strip_prefix("bytes=").ok_or(invalid)?;
    let number = |s: &str| s.parse::<i64>().ok().and_then(|n| u64::try_from(n).ok());
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in list.split(',') {
        let spec = spec.trim_ascii();
        if spec.is_empty() {
            continue;
        }
        let (first, last) = spec.split_once('-').ok_or(invalid)?;
        let (first, last) = (first.trim_ascii(), last.trim_ascii());
        if first.is_empty() {
            if last.starts_with('-') {
                return Err(invalid);
            }
            let suffix = number(last).ok_or(invalid)?.min(size);
            ranges.push(ByteRange {
                start: size - suffix,
                len: suffix,
            });
            continue;
        }
        let start = number(first).ok_or(invalid)?;
        if start >= size {
            no_overlap = true;
            continue;
        }
        let len = if last.is_empty() {
            size - start
        } else {
            let end = last.parse::<i64>().map_err(|_| invalid)?;
            let end = u64::try_from(end)
                .ok()
                .filter(|e| *e >= start)
                .ok_or(invalid)?;
            end.min(size - 1) - start + 1
        };
        ranges.push(ByteRange { start, len });
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    Ok(ranges)
}

/// Go's `serveContent` from the `Range` on: the whole file (200), one range (206 with
/// `Content-Range`), or several (206, `multipart/byteranges`). A `Range` that asks for
/// more bytes in all than the file has is ignored, as Go does (many overlapping ranges
/// would otherwise make a small file a large response).
fn serve_file(
    file: File,
    size: u64,
    ctype: &'static str,
    modified: Option<SystemTime>,
    range: Option<&[u8]>,
    head: bool,
) -> Response<ProxyBody> {
    let mut ranges = match range.map(|r| parse_range(r, size)) {
        None => Vec::new(),
        Some(Ok(ranges)) => ranges,
        // An empty file ignores the Range: some clients send one with every request.
        Some(Err(RangeError::NoOverlap)) if size == 0 => Vec::new(),
        Some(Err(e)) => {
            let mut resp = status::text(StatusCode::RANGE_NOT_SATISFIABLE, e.text());
            if e == RangeError::NoOverlap {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            return resp;
        }
    };
    let total = ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.len));
    if total.is_none_or(|t| t > size) {
        ranges.clear();
    }
    // Several ranges need a boundary. With no randomness for one, the whole file: a
    // server may ignore a Range (RFC 9110 §14.2).
    let framing = match ranges.len() {
        0 | 1 => None,
        _ => Framing::new(ctype, size),
    };
    if framing.is_none() && ranges.len() > 1 {
        ranges.clear();
    }
    let mut h = HeaderMap::new();
    let code = match ranges.as_slice() {
        [] => {
            ranges.push(ByteRange {
                start: 0,
                len: size,
            });
            StatusCode::OK
        }
        [one] => {
            if let Ok(v) = HeaderValue::from_str(&one.content_range(size)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            StatusCode::PARTIAL_CONTENT
        }
        _ => StatusCode::PARTIAL_CONTENT,
    };
    let ctype = match &framing {
        Some(f) => HeaderValue::from_str(&format!("multipart/byteranges; boundary={}", f.boundary)),
        None => Ok(HeaderValue::from_static(ctype)),
    };
    if let Ok(v) = ctype {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let body = FileBody::new(file, ranges, framing);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.remaining()));
    set_last_modified(&mut h, modified);
    let mut resp = Response::new(if head {
        ProxyBody::empty()
    } else {
        ProxyBody::File(Box::new(body))
    });
    *resp.status_mut() = code;
    *resp.headers_mut() = h;
    resp
}

/// The `multipart/byteranges` framing of several ranges (RFC 9110 §14.6), as Go's
/// `mime/multipart` writes it: each part's head names its range and the file's type.
struct Framing {
    boundary: String,
    ctype: &'static str,
    size: u64,
}

impl Framing {
    /// A boundary of 30 random bytes in hex, as Go makes it; `None` if the system has
    /// no randomness to give.
    fn new(ctype: &'static str, size: u64) -> Option<Framing> {
        let mut raw = [0u8; 30];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut raw)
            .ok()?;
        let mut boundary = String::with_capacity(2 * raw.len());
        for b in raw {
            let _ = write!(boundary, "{b:02x}");
        }
        Some(Framing {
            boundary,
            ctype,
            size,
        })
    }

    /// A part's head (the first part's has no leading CRLF).
    fn head(&self, first: bool, range: &ByteRange) -> String {
        format!(
            "{}--{}\r\nContent-Range: {}\r\nContent-Type: {}\r\n\r\n",
            if first { "" } else { "\r\n" },
            self.boundary,
            range.content_range(self.size),
            self.ctype
        )
    }

    fn close(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The bytes the framing adds around `ranges` (heads are made again when sent, so
    /// none is kept: a long list of ranges costs no memory per part).
    fn overhead(&self, ranges: &[ByteRange]) -> u64 {
        let heads: usize = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| self.head(i == 0, r).len())
            .sum();
        (heads + self.close().len()) as u64
    }
}

/// A file's bytes as a body, read chunk by chunk as the client takes them (never whole
/// into memory), ending after the length announced in `Content-Length`: the whole file,
/// one range of it, or several in their multipart framing.
pub struct FileBody {
    file: tokio::fs::File,
    /// The file's cursor: a range that starts elsewhere is sought first.
    pos: u64,
    seeking: bool,
    /// The ranges still to send; the front one may be partly sent.
    ranges: VecDeque<ByteRange>,
    /// With several ranges: a part's head is due before each range, and the closing
    /// boundary after the last.
    framing: Option<Framing>,
    head_due: bool,
    first: bool,
    remaining: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    fn new(file: File, ranges: Vec<ByteRange>, framing: Option<Framing>) -> FileBody {
        let data = ranges.iter().fold(0u64, |sum, r| sum.saturating_add(r.len));
        let framed = framing.as_ref().map_or(0, |f| f.overhead(&ranges));
        let largest = ranges.iter().map(|r| r.len).max().unwrap_or(0);
        let chunk = usize::try_from(largest).map_or(CHUNK, |l| l.min(CHUNK));
        FileBody {
            file: tokio::fs::File::from_std(file),
            pos: 0,
            seeking: false,
            ranges: ranges.into(),
            head_due: framing.is_some(),
            framing,
            first: true,
            remaining: data.saturating_add(framed),
            buf: vec![0; chunk].into_boxed_slice(),
        }
    }

    /// The bytes still to be sent.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn data(&mut self, text: String) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.remaining = self.remaining.saturating_sub(text.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
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
        loop {
            if this.head_due {
                this.head_due = false;
                let text = match (&this.framing, this.ranges.front()) {
                    (Some(f), Some(range)) => f.head(std::mem::take(&mut this.first), range),
                    (Some(f), None) => f.close(),
                    (None, _) => continue,
                };
                return this.data(text);
            }
            let Some(range) = this.ranges.front_mut() else {
                return Poll::Ready(None);
            };
            if range.len == 0 {
                this.ranges.pop_front();
                this.head_due = this.framing.is_some();
                continue;
            }
            if this.pos != range.start {
                let mut file = Pin::new(&mut this.file);
                if !this.seeking {
                    if let Err(e) = file.as_mut().start_seek(SeekFrom::Start(range.start)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.seeking = true;
                }
                match file.poll_complete(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(at)) if at != range.start => {
                        return Poll::Ready(Some(Err(io::Error::other(format!(
                            "seeking to {} ended at {at}",
                            range.start
                        )))));
                    }
                    Poll::Ready(Ok(at)) => {
                        this.seeking = false;
                        this.pos = at;
                    }
                }
            }
            let want = usize::try_from(range.len).map_or(this.buf.len(), |r| r.min(this.buf.len()));
            let mut buf = ReadBuf::new(&mut this.buf[..want]);
            return match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
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
                    let n = data.len() as u64;
                    this.pos += n;
                    range.start += n;
                    range.len -= n;
                    this.remaining = this.remaining.saturating_sub(n);
                    if range.len == 0 {
                        this.ranges.pop_front();
                        this.head_due = this.framing.is_some();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
            };
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

    /// GET `path` (with `query`, and request `headers`): status, headers, whole body.
    async fn request(
        w: &Www,
        path: &str,
        query: Option<&str>,
        headers: &[(header::HeaderName, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        for (name, value) in headers {
            h.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        let resp = w.serve(&Method::GET, &h, path, query).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn get(w: &Www, path: &str, query: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
        request(w, path, query, &[]).await
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

    async fn get_with(
        w: &Www,
        path: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        request(w, path, None, headers).await
    }

    #[test]
    fn ranges_parse_as_go_parses_them() {
        let r = |start, len| ByteRange { start, len };
        let ok = |v: &str, size| parse_range(v.as_bytes(), size);
        let invalid = Err(RangeError::Invalid);
        assert_eq!(ok("bytes=0-4", 10), Ok(vec![r(0, 5)]));
        assert_eq!(ok("bytes=2-", 10), Ok(vec![r(2, 8)]));
        assert_eq!(ok("bytes=-3", 10), Ok(vec![r(7, 3)]));
        assert_eq!(ok("bytes=-30", 10), Ok(vec![r(0, 10)]));
        assert_eq!(ok("bytes=-0", 10), Ok(vec![r(10, 0)]));
        assert_eq!(ok("bytes=5-99", 10), Ok(vec![r(5, 5)]));
        assert_eq!(ok("bytes= +1 - 2 ,, 9-", 10), Ok(vec![r(1, 2), r(9, 1)]));
        assert_eq!(ok("bytes=3-4,0-1", 10), Ok(vec![r(3, 2), r(0, 2)]));
        // Nothing listed: no range at all, so the whole file.
        assert_eq!(ok("bytes=", 10), Ok(vec![]));
        // Ranges past the end are dropped; all of them past it is the 416 case.
        assert_eq!(ok("bytes=10-,0-0", 10), Ok(vec![r(0, 1)]));
        assert_eq!(ok("bytes=10-", 10), Err(RangeError::NoOverlap));
        assert_eq!(ok("bytes=0-0", 0), Err(RangeError::NoOverlap));
        for bad in [
            "bytes 0-1",
            "Bytes=0-1",
            "bytes=1",
            "bytes=4-1",
            "bytes=--1",
            "bytes=-",
            "bytes=-1-",
            "bytes=a-1",
            "bytes=1-b",
            "bytes=-1-2",
            "bytes=0x1-2",
            "bytes=1_0-2",
            "bytes=99999999999999999999-",
            "bytes=1--2",
        ] {
            assert_eq!(ok(bad, 10), invalid, "{bad}");
        }
        assert_eq!(parse_range(b"bytes=0-\xff", 10), invalid);
        assert_eq!(r(0, 0).content_range(0), "bytes 0--1/0");
        assert_eq!(r(2, 3).content_range(10), "bytes 2-4/10");
    }

    #[test]
    fn entity_tag_lists_as_go_scans_them() {
        assert!(star_listed(b"*"));
        assert!(star_listed(b" \"a\", W/\"b\" ,*"));
        assert!(!star_listed(b"\"a\""));
        assert!(!star_listed(b"a, *"), "stops at what is not an entity tag");
        assert!(!star_listed(b"\"a"));
        assert!(!star_listed(b""));
        assert_eq!(scan_etag(b"W/\"x\" rest"), Some(&b" rest"[..]));
        assert_eq!(scan_etag(b"\"\""), Some(&b""[..]));
        assert_eq!(scan_etag(b"\"a b\""), None);
        assert_eq!(scan_etag(b"W/x"), None);
    }

    #[tokio::test]
    async fn one_range_is_a_206_with_content_range() {
        let (_dir, w) = www();
        let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=1-3")]).await;
        assert_eq!(code, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, "ell");
        assert_eq!(h[header::CONTENT_RANGE], "bytes 1-3/6");
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");

        let (code, h, body) = get_with(&w, "hello.txt", &[]).await;
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");

        let mut range = HeaderMap::new();
        range.insert(header::RANGE, HeaderValue::from_static("bytes=-2"));
        let resp = w.serve(&Method::HEAD, &range, "hello.txt", None).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2");
        assert!(resp.body().is_end_stream());
    }

    #[tokio::test]
    async fn unsatisfiable_ranges_are_416_in_gos_words() {
        let (_dir, w) = www();
        let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=6-")]).await;
        assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(body, "invalid range: failed to overlap\n");
        assert_eq!(h[header::CONTENT_RANGE], "bytes */6");
        let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "lines=1-2")]).await;
        assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(body, "invalid range\n");
        assert!(!h.contains_key(header::CONTENT_RANGE));
        // More bytes asked for than the file has: ignored.
        let (code, _, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=0-,1-")]).await;
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
    }

    #[tokio::test]
    async fn several_ranges_are_multipart_and_may_go_backwards_across_chunks() {
        let (dir, w) = www();
        let data: Vec<u8> = (0..CHUNK * 3).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("www").join("big.bin"), &data).unwrap();
        let (a, b) = (CHUNK as u64 + 5, 2 * CHUNK as u64 + 100);
        let spec = format!("bytes={a}-{b}, 0-9, -3");
        let (code, h, body) = get_with(&w, "big.bin", &[(header::RANGE, &spec)]).await;
        assert_eq!(code, StatusCode::PARTIAL_CONTENT);
        let ctype = h[header::CONTENT_TYPE].to_str().unwrap();
        let boundary = ctype
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        assert_eq!(boundary.len(), 60);
        assert!(boundary.bytes().all(|c| c.is_ascii_hexdigit()));
        let size = data.len();
        let part = |lead: &str, first: usize, last: usize| {
            let mut p = format!(
                "{lead}--{boundary}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            p.extend_from_slice(&data[first..=last]);
            p
        };
        let mut want = part("", a as usize, b as usize);
        want.extend(part("\r\n", 0, 9));
        want.extend(part("\r\n", size - 3, size - 1));
        want.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
        assert_eq!(h[header::CONTENT_LENGTH], want.len().to_string().as_str());
        assert_eq!(body.len(), want.len());
        assert!(body == want, "the multipart body differs");
    }

    #[tokio::test]
    async fn conditions_follow_gos_order() {
        let (_dir, w) = www();
        let (_, h, _) = get_with(&w, "hello.txt", &[]).await;
        let modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
        let past = "Sun, 06 Nov 1994 08:49:37 GMT";
        let future = "Fri, 01 Jan 2100 00:00:00 GMT";
        let m = modified.as_str();
        let cases: Vec<(Vec<(header::HeaderName, &str)>, StatusCode)> = vec![
            (vec![(header::IF_MATCH, "*")], StatusCode::OK),
            (
                vec![(header::IF_MATCH, "\"v\"")],
                StatusCode::PRECONDITION_FAILED,
            ),
            (vec![(header::IF_MATCH, "")], StatusCode::OK),
            (
                vec![(header::IF_UNMODIFIED_SINCE, past)],
                StatusCode::PRECONDITION_FAILED,
            ),
            (vec![(header::IF_UNMODIFIED_SINCE, m)], StatusCode::OK),
            // If-Match decides alone when it is there.
            (
                vec![(header::IF_MATCH, "*"), (header::IF_UNMODIFIED_SINCE, past)],
                StatusCode::OK,
            ),
            (vec![(header::IF_NONE_MATCH, "*")], StatusCode::NOT_MODIFIED),
            (
                vec![
                    (header::IF_NONE_MATCH, "\"v\""),
                    (header::IF_MODIFIED_SINCE, future),
                ],
                StatusCode::OK,
            ),
            (
                vec![(header::IF_MODIFIED_SINCE, m)],
                StatusCode::NOT_MODIFIED,
            ),
            // If-Range: the file's own date keeps the range; anything else drops it.
            (
                vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, m)],
                StatusCode::PARTIAL_CONTENT,
            ),
            (
                vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, past)],
                StatusCode::OK,
            ),
            (
                vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, "\"v\"")],
                StatusCode::OK,
            ),
            (
                vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, "soon")],
                StatusCode::OK,
            ),
        ];
        for (headers, want) in cases {
            let (got, _, _) = get_with(&w, "hello.txt", &headers).await;
            assert_eq!(got, want, "{headers:?}");
        }
        let (code, h, body) = get_with(&w, "hello.txt", &[(header::IF_MATCH, "\"v\"")]).await;
        assert_eq!(code, StatusCode::PRECONDITION_FAILED);
        assert!(body.is_empty());
        assert_eq!(h[header::LAST_MODIFIED], m);
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
