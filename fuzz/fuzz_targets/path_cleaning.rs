//! `clean_path` and `ApiPrefix::route` on arbitrary request paths.
//!
//! Input: the bytes as text (invalid UTF-8 replaced); everything after the first `?` is
//! the query. Properties:
//! - `clean_path` never panics, its output starts with `/`, has no empty segment (`//`)
//!   and no `.` or `..` segment, is idempotent, is never longer than its input plus the
//!   leading `/`, and ends in `/` exactly when the input did (or when it is `/`): Go's
//!   `cleanPath`.
//! - `route` never panics under several API and static prefixes, and its answer is
//!   consistent: only an unclean path (or a prefix named without its slash) is
//!   redirected, to the clean path with the query kept, and following that redirect never
//!   earns a second one; a forwarded `raw_path` is a suffix of a clean input that starts
//!   with `/`, and `decoded` is its percent-decoding.
#![no_main]

use kube_ambassador::proxy::router::{ApiPrefix, Route, clean_path, percent_decode};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static PREFIXES: LazyLock<Vec<ApiPrefix>> = LazyLock::new(|| {
    vec![
        ApiPrefix::new("/"),
        ApiPrefix::new("/api/"),
        ApiPrefix::new("/custom/"),
        // Named without its slash: `/custom` itself is redirected to `/custom/`.
        ApiPrefix::new("/custom"),
        ApiPrefix::new("/").with_www("/static/").unwrap(),
        ApiPrefix::new("/ui/api/").with_www("/ui").unwrap(),
        ApiPrefix::new("/custom/").with_www("/").unwrap(),
    ]
});

fn check_clean(p: &str) -> String {
    let c = clean_path(p);
    assert!(c.starts_with('/'), "clean({p:?}) = {c:?}: not rooted");
    assert!(!c.contains("//"), "clean({p:?}) = {c:?}: empty segment");
    for seg in c.split('/') {
        assert!(
            seg != "." && seg != "..",
            "clean({p:?}) = {c:?}: dot segment"
        );
    }
    assert!(c.len() <= p.len() + 1, "clean({p:?}) = {c:?}: grew");
    assert_eq!(
        c.ends_with('/'),
        p.ends_with('/') || c == "/",
        "clean({p:?}) = {c:?}: trailing slash"
    );
    let again = clean_path(&c);
    assert_eq!(again, c, "clean not idempotent on {p:?}");
    c.into_owned()
}

fn check_route(prefix: &ApiPrefix, path: &str, query: Option<&str>, clean: &str) {
    match prefix.route(path, query) {
        Route::Redirect(location) => {
            let (loc_path, loc_query) = match location.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (location.as_str(), None),
            };
            assert_eq!(loc_query, query, "{prefix:?} {path:?}: query not kept");
            assert!(
                loc_path == clean || loc_path.strip_suffix('/') == Some(clean),
                "{prefix:?} {path:?}: redirect to {location:?}, clean is {clean:?}"
            );
            if let Route::Redirect(second) = prefix.route(loc_path, loc_query) {
                panic!("{prefix:?} {path:?}: redirect to {location:?}, then to {second:?}");
            }
        }
        Route::Api { raw_path, decoded } => {
            assert_eq!(path, clean, "{prefix:?}: unclean {path:?} forwarded");
            assert!(
                raw_path.starts_with('/'),
                "{prefix:?} {path:?}: {raw_path:?}"
            );
            assert!(
                path.ends_with(raw_path),
                "{prefix:?} {path:?}: {raw_path:?}"
            );
            assert!(
                raw_path == path || raw_path.len() < path.len(),
                "{prefix:?} {path:?}: {raw_path:?}"
            );
            assert_eq!(
                percent_decode(raw_path).as_deref(),
                Some(&*decoded),
                "{prefix:?} {path:?}"
            );
        }
        Route::Static { .. } | Route::NotFound | Route::BadRequest => {
            assert_eq!(path, clean, "{prefix:?}: unclean {path:?} not redirected");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    let clean = check_clean(path);
    check_clean(&text);
    for prefix in PREFIXES.iter() {
        check_route(prefix, path, query, &clean);
    }
});
