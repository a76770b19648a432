//! Conditional requests on a static file (RFC 9110 §13), decided as Go's
//! `checkPreconditions` does. We send no `ETag`, so only `*` and dates can match.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

/// Go skips `Last-Modified` for an unknown or Unix-epoch time.
pub(super) fn set_last_modified(h: &mut HeaderMap, modified: Option<SystemTime>) {
    if let Some(t) = modified.filter(|t| *t > UNIX_EPOCH)
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// Go's `checkIfModifiedSince`: not modified if the time, to the second, is not after the
/// client's.
pub(super) fn modified_since(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    not_after(headers, header::IF_MODIFIED_SINCE, modified) == Some(true)
}

/// Whether the file's time, to the second, is not after the date in header `name`
/// (`If-Modified-Since`, `If-Unmodified-Since`); `None` if either is missing, the date
/// unreadable, or the file's time the epoch (Go's `isZeroTime`).
pub(super) fn not_after(
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
pub(super) enum Precondition<'a> {
    /// 412: `If-Match` or `If-Unmodified-Since` failed.
    Failed,
    /// 304: `If-None-Match: *`, or `If-Modified-Since` not before the file's time.
    NotModified,
    /// Serve the file, or the `Range` asked for when `If-Range` (if any) allows it.
    Serve { range: Option<&'a [u8]> },
}

pub(super) fn preconditions(headers: &HeaderMap, modified: Option<SystemTime>) -> Precondition<'_> {
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
pub(super) fn star_listed(mut v: &[u8]) -> bool {
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
pub(super) fn scan_etag(v: &[u8]) -> Option<&[u8]> {
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
pub(super) fn header_time(headers: &HeaderMap, name: header::HeaderName) -> Option<i64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(unix_secs)
}

/// Seconds since the epoch, rounded down (Go's `Truncate(time.Second)`, `Unix()`).
pub(super) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    }
}
