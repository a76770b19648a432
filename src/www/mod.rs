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

mod body;
mod conditional;
mod lookup;
mod range;
#[cfg(test)]
mod tests;

pub(crate) use body::FileBody;
use body::Framing;
use conditional::{Precondition, modified_since, preconditions, set_last_modified};
use lookup::{Found, INDEX, relative};
use range::{ByteRange, RangeError, parse_range};

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::PathBuf;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::proxy::body::ProxyBody;
use crate::proxy::status;

/// The static file server, built once from `--www`.
#[derive(Debug, Clone)]
pub struct Www {
    root: PathBuf,
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
        let found = tokio::task::spawn_blocking(move || lookup::lookup(&root, &rel, slash)).await;
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
            if e == RangeError::NoOverlap
                && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
            {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
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
