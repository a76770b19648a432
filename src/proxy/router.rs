//! Routing of one request target: path cleaning (kubectl's 301), the API prefix, the
//! static-file prefix (`--www-prefix`, only with `--www`), and the decoded path the
//! filter judges.
//!
//! kubectl proxy sits behind Go's `http.ServeMux`, which since Go 1.22 cleans the
//! *escaped* path (`//`, `/./`, `/../`) and answers an unclean one with a 301 to the
//! clean path; the filter then sees the percent-decoded path below the API prefix
//! (`http.StripPrefix` semantics). We reproduce that, with one fix: Go builds the
//! `Location` from the escaped path as if it were decoded, so `%2F` comes back as
//! `%252F` (a different resource); our `Location` keeps the escapes as sent.
//!
//! kubectl registers both prefixes as `ServeMux` subtree patterns, so we match as the mux
//! does: the longer prefix wins when both match, and a prefix named without its trailing
//! slash (`/custom`) is redirected to it (`/custom/`) with a 301.

use std::borrow::Cow;

/// Where a request target goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// 301 to this location (clean path, query kept).
    Redirect(String),
    /// Outside the API prefix: 404.
    NotFound,
    /// Under the static-file prefix: `path` is what follows it, percent-decoded (no
    /// leading slash, as `http.StripPrefix` leaves it).
    Static { path: Cow<'a, str> },
    /// A malformed percent-escape in the path: 400, as Go's URL parser refuses it.
    BadRequest,
    /// Forward: `raw_path` is what the upstream gets below its base path, byte for byte;
    /// `decoded` is what the filter judges.
    Api {
        raw_path: &'a str,
        decoded: Cow<'a, str>,
    },
}

/// The API prefix, normalised as kubectl does (a trailing `/` appended if missing), and
/// the static-file prefix when `--www` is set.
#[derive(Debug, Clone)]
pub struct ApiPrefix {
    prefix: String,
    /// kubectl does not strip a prefix that starts with `/api`: the API server's own
    /// paths begin with it.
    strip: bool,
    www: Option<String>,
}

/// kubectl registers both prefixes on one `ServeMux`, which panics on the duplicate; we
/// say why instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--www-prefix and --api-prefix must differ (both are {0:?})")]
pub struct SamePrefix(pub String);

/// A leading `/` (a mux pattern without one would name a host) and a trailing `/` (kubectl
/// appends it) ensured.
fn normalize(prefix: &str) -> String {
    let mut prefix = prefix.to_owned();
    if !prefix.starts_with('/') {
        prefix.insert(0, '/');
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

impl ApiPrefix {
    pub fn new(prefix: &str) -> Self {
        let prefix = normalize(prefix);
        let strip = !prefix.starts_with("/api");
        ApiPrefix {
            prefix,
            strip,
            www: None,
        }
    }

    /// Also routes `prefix` (`--www-prefix`, normalised like the API prefix) to static
    /// files. Call it only when `--www` is set, as kubectl registers it only then.
    pub fn with_www(mut self, prefix: &str) -> Result<Self, SamePrefix> {
        let www = normalize(prefix);
        if www == self.prefix {
            return Err(SamePrefix(www));
        }
        self.www = Some(www);
        Ok(self)
    }

    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// Routes a request path (the raw, still-escaped path of the request target).
    pub fn route<'a>(&self, raw_path: &'a str, query: Option<&str>) -> Route<'a> {
        let clean = clean_path(raw_path);
        // The Location is escaped as the upstream target is (`push_uri_escaped`): our
        // HTTP parser lets `\` through, and a browser reads `/\evil.example` as
        // `//evil.example`, another origin. kubectl's mux escapes it too (and its escapes
        // again: `/%255Cevil.example`).
        let with_query = |location: String| {
            let mut out = Vec::with_capacity(location.len() + query.map_or(0, |q| q.len() + 1));
            push_uri_escaped(&mut out, &location);
            if let Some(q) = query {
                out.push(b'?');
                push_uri_escaped(&mut out, q);
            }
            // Only ASCII bytes are left, so this never fails.
            Route::Redirect(String::from_utf8(out).unwrap_or_default())
        };
        // `ServeMux` tries this first, on the cleaned path: `/custom` (or `/./custom`)
        // goes straight to `/custom/`.
        let names_root = |p: &str| p.len() == clean.len() + 1 && p.starts_with(clean.as_ref());
        if !clean.ends_with('/')
            && (names_root(&self.prefix) || self.www.as_deref().is_some_and(names_root))
        {
            return with_query(format!("{clean}/"));
        }
        if clean != raw_path {
            return with_query(clean.into_owned());
        }
        let api = raw_path.starts_with(self.prefix.as_str());
        // Both prefixes end in `/`, so when both match one contains the other: the longer
        // (more specific) pattern wins, as in the mux.
        if let Some(www) = self.www.as_deref()
            && raw_path.starts_with(www)
            && !(api && self.prefix.len() > www.len())
        {
            return match percent_decode(&raw_path[www.len()..]) {
                Some(path) => Route::Static { path },
                None => Route::BadRequest,
            };
        }
        if !api {
            return Route::NotFound;
        }
        let raw_path = if self.strip {
            // `stripLeaveSlash`: what remains keeps (or regains) its leading slash. The
            // prefix ends in `/`, so that slash is the prefix's last byte.
            &raw_path[self.prefix.len() - 1..]
        } else {
            raw_path
        };
        match percent_decode(raw_path) {
            Some(decoded) => Route::Api { raw_path, decoded },
            None => Route::BadRequest,
        }
    }
}

/// Appends `s`, percent-encoding the bytes RFC 3986 allows nowhere in a URI (controls,
/// space, non-ASCII, `"<>\^`{|}`; our HTTP parser lets some of them through), as
/// kubectl's Go client sends them. Escapes already there are kept as they are. What
/// comes out is ASCII: a valid header value and a valid request target.
pub fn push_uri_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if uri_unsafe(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

/// A byte [`push_uri_escaped`] escapes. A `matches!` (range and bit tests), not a search
/// of a list of bytes: it runs on every byte of every request's path, and the search
/// cost 70 instructions a byte (`bench/cost.sh`, callgrind).
pub fn uri_unsafe(b: u8) -> bool {
    matches!(
        b,
        0..=b' ' | 0x7f..=0xff | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
    )
}

/// Go's `cleanPath`: `path.Clean` on a rooted path, keeping a trailing slash.
pub fn clean_path(p: &str) -> Cow<'_, str> {
    resolve_segments(p).0
}

/// [`clean_path`], and whether a `..` tried to climb above the root (which cleaning
/// clamps away, but which a server below a base path would follow out of it).
pub fn resolve_segments(p: &str) -> (Cow<'_, str>, bool) {
    if p.is_empty() {
        return (Cow::Borrowed("/"), false);
    }
    if p.starts_with('/') && is_clean(p) {
        return (Cow::Borrowed(p), false);
    }
    let mut out: Vec<&str> = Vec::new();
    let mut climbed = false;
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => climbed |= out.pop().is_none(),
            s => out.push(s),
        }
    }
    let mut cleaned = String::with_capacity(p.len() + 1);
    for seg in &out {
        cleaned.push('/');
        cleaned.push_str(seg);
    }
    // `path.Clean` drops a trailing slash; `cleanPath` puts back only one that was
    // literally there (`/a/b/.` cleans to `/a/b`, `/a/b/./` to `/a/b/`).
    if cleaned.is_empty() || p.ends_with('/') {
        cleaned.push('/');
    }
    (Cow::Owned(cleaned), climbed)
}

/// True when no segment is empty (but a trailing one), `.` or `..`.
fn is_clean(p: &str) -> bool {
    let body = &p[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return p.len() == 1;
    }
    // Split as bytes, not with `str::split`: this runs twice on every request (route,
    // filter), and the segments are only compared. (A hand-written loop over the bytes
    // counted 30% more instructions than this: `bench/cost.sh`.)
    body.as_bytes()
        .split(|&b| b == b'/')
        .all(|s| !matches!(s, b"" | b"." | b".."))
}

/// Decodes `%XX` escapes; `None` for a malformed one. Bytes that are not UTF-8 after
/// decoding are replaced (U+FFFD): the regexes work on text, and a replacement can
/// never make a rejected path look accepted.
///
/// Hand-written: Go's `url.PathUnescape`, whose verdict kubectl's filter follows, refuses
/// a malformed escape, while the `percent-encoding` crate passes one through as text, so
/// `%zz` would be judged as a path kubectl never sees.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    })
}

/// The value of a hexadecimal digit (either case).
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_matches_go() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/api//v1/pods", "/api/v1/pods"),
            ("/api/./v1/x", "/api/v1/x"),
            ("/api/v1/x/..", "/api/v1"),
            ("/api/v1/../../x/", "/x/"),
            ("/api/v1/../../../x", "/x"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b"),
            ("/a/b/./", "/a/b/"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/a%2e%2e/b", "/a%2e%2e/b"),
            ("/a/%2e%2e/b", "/a/%2e%2e/b"),
            ("a/b", "/a/b"),
            ("/...", "/..."),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn unclean_paths_redirect_with_query_and_escapes_kept() {
        let p = ApiPrefix::new("/");
        assert_eq!(
            p.route("/api//v1/pods%2Fexec", Some("a=%2F")),
            Route::Redirect("/api/v1/pods%2Fexec?a=%2F".into())
        );
        assert_eq!(
            p.route("/api/./v1", None),
            Route::Redirect("/api/v1".into())
        );
    }

    /// `/\host` is `//host` to a browser: another origin. Nothing a URI may not hold is
    /// left in a Location.
    #[test]
    fn redirect_locations_hold_only_uri_bytes() {
        let p = ApiPrefix::new("/");
        assert_eq!(
            p.route("/./\\evil.example/x", None),
            Route::Redirect("/%5Cevil.example/x".into())
        );
        assert_eq!(
            p.route("//a b/caf\u{e9}\"", Some("q=\\&r=%2F")),
            Route::Redirect("/a%20b/caf%C3%A9%22?q=%5C&r=%2F".into())
        );
        let custom = ApiPrefix::new("/c\\");
        assert_eq!(custom.route("/c\\", None), Route::Redirect("/c%5C/".into()));
    }

    #[test]
    fn decoded_path_is_what_the_filter_sees() {
        let p = ApiPrefix::new("/");
        match p.route("/api/v1/namespaces/d/pods/x%2Fexec", None) {
            Route::Api { raw_path, decoded } => {
                assert_eq!(raw_path, "/api/v1/namespaces/d/pods/x%2Fexec");
                assert_eq!(decoded, "/api/v1/namespaces/d/pods/x/exec");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.route("/api/v1/na%zzme", None), Route::BadRequest);
        assert_eq!(p.route("/api/v1/x%2", None), Route::BadRequest);
    }

    #[test]
    fn api_prefix_table_from_kubectl() {
        let root = ApiPrefix::new("/");
        let api = ApiPrefix::new("/api");
        let custom = ApiPrefix::new("/custom/");
        let raw = |r: Route<'_>| match r {
            Route::Api { raw_path, .. } => Some(raw_path.to_owned()),
            _ => None,
        };
        assert_eq!(api.as_str(), "/api/");
        assert_eq!(
            raw(root.route("/metrics", None)).as_deref(),
            Some("/metrics")
        );
        assert_eq!(
            raw(root.route("/api/v1/pods/", None)).as_deref(),
            Some("/api/v1/pods/")
        );
        assert_eq!(api.route("/metrics", None), Route::NotFound);
        assert_eq!(
            raw(api.route("/api/v1/pods/", None)).as_deref(),
            Some("/api/v1/pods/")
        );
        assert_eq!(custom.route("/metrics", None), Route::NotFound);
        assert_eq!(custom.route("/api/v1/pods/", None), Route::NotFound);
        assert_eq!(
            raw(custom.route("/custom/api/v1/pods/", None)).as_deref(),
            Some("/api/v1/pods/")
        );
    }

    #[test]
    fn a_prefix_without_its_slash_is_redirected_like_the_mux() {
        let custom = ApiPrefix::new("/custom");
        assert_eq!(
            custom.route("/custom", None),
            Route::Redirect("/custom/".into())
        );
        assert_eq!(
            custom.route("/custom", Some("watch=1")),
            Route::Redirect("/custom/?watch=1".into())
        );
        // One hop, not two: the mux redirects on the cleaned path.
        assert_eq!(
            custom.route("/x/../custom", None),
            Route::Redirect("/custom/".into())
        );
        assert_eq!(custom.route("/customer", None), Route::NotFound);
        let api = ApiPrefix::new("/api/");
        assert_eq!(api.route("/api", None), Route::Redirect("/api/".into()));
        let root = ApiPrefix::new("/");
        assert!(matches!(root.route("/", None), Route::Api { .. }));
        let www = ApiPrefix::new("/").with_www("/static").unwrap();
        assert_eq!(
            www.route("/static", None),
            Route::Redirect("/static/".into())
        );
    }

    #[test]
    fn static_prefix_is_the_longest_match_and_decoded() {
        let www = ApiPrefix::new("/").with_www("/static/").unwrap();
        let path = |r: Route<'_>| match r {
            Route::Static { path } => Some(path.into_owned()),
            _ => None,
        };
        assert_eq!(path(www.route("/static/", None)).as_deref(), Some(""));
        assert_eq!(
            path(www.route("/static/a%20b/c.txt", None)).as_deref(),
            Some("a b/c.txt")
        );
        assert_eq!(
            path(www.route("/static/%2e%2e/x", None)).as_deref(),
            Some("../x")
        );
        assert_eq!(www.route("/static/%zz", None), Route::BadRequest);
        assert!(matches!(www.route("/api/v1/pods", None), Route::Api { .. }));
        assert!(matches!(www.route("/staticx", None), Route::Api { .. }));

        // The API prefix is longer here: it wins below itself.
        let nested = ApiPrefix::new("/ui/api/").with_www("/ui/").unwrap();
        assert!(matches!(
            nested.route("/ui/api/v1/pods", None),
            Route::Api { .. }
        ));
        assert_eq!(
            path(nested.route("/ui/app.js", None)).as_deref(),
            Some("app.js")
        );
        assert_eq!(nested.route("/other", None), Route::NotFound);
        // And a static prefix of `/` takes everything the API prefix does not.
        let everything = ApiPrefix::new("/custom/").with_www("/").unwrap();
        assert_eq!(
            path(everything.route("/index.html", None)).as_deref(),
            Some("index.html")
        );
        assert!(matches!(
            everything.route("/custom/api", None),
            Route::Api { .. }
        ));
    }

    #[test]
    fn equal_prefixes_are_an_error() {
        let err = ApiPrefix::new("/").with_www("/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--www-prefix and --api-prefix must differ (both are \"/\")"
        );
        assert!(ApiPrefix::new("/x").with_www("x/").is_err());
        assert!(ApiPrefix::new("/").with_www("/static/").is_ok());
    }

    #[test]
    fn percent_decode_edge_cases() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/%41%6a").as_deref(), Some("/Aj"));
        assert_eq!(percent_decode("/%ff").as_deref(), Some("/\u{fffd}"));
        assert!(percent_decode("/%").is_none());
        assert!(percent_decode("/%g0").is_none());
    }
}
