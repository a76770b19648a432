//! The part of a list's query that decides its verb and name, read as the API server
//! reads it: `url.ParseQuery`'s escapes, the `ListOptions` decoder's first values, and a
//! `fieldSelector` of `metadata.name=NAME` (apimachinery's `fields` parser: its terms,
//! operators and escapes).

use std::borrow::Cow;

use crate::proxy::router::hex;

/// What the verb and name of a list depend on in its query.
pub(super) struct ListQuery<'a> {
    pub(super) watch: bool,
    pub(super) name: Option<Cow<'a, str>>,
}

impl<'a> ListQuery<'a> {
    /// As `url.ParseQuery` then the `ListOptions` decoder read it: the first `watch` and
    /// `fieldSelector` values count; a pair with a bad escape or a `;` in its key is
    /// skipped. `watch` is true unless `0` or `false` (any case), including empty
    /// (apimachinery's `Convert_Slice_string_To_bool`).
    pub(super) fn parse(query: Option<&'a str>) -> Self {
        let mut watch = None;
        let mut selector = None;
        for pair in query.unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k.contains(';') {
                continue;
            }
            let Some(key) = query_unescape(k) else {
                continue;
            };
            let slot = match &*key {
                "watch" => &mut watch,
                "fieldSelector" => &mut selector,
                _ => continue,
            };
            if slot.is_none()
                && let Some(value) = query_unescape(v)
            {
                *slot = Some(value);
            }
        }
        let watch = watch.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        let name = selector.and_then(exact_name);
        ListQuery { watch, name }
    }
}

/// `fields.ParseSelector(s).RequiresExactMatch("metadata.name")`, then
/// `path.IsValidPathSegmentName`: the value of a `metadata.name=` or `metadata.name==`
/// term if the whole selector parses (a bad one gives no name, as in the API server).
fn exact_name(selector: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let mut found: Option<(usize, usize)> = None;
    let s: &str = &selector;
    for (start, end) in split_terms(s) {
        let term = &s[start..end];
        if term.is_empty() {
            continue;
        }
        let (lhs, op, rhs) = split_term(term)?;
        // The value must unescape (`\\`, `\,`, `\=`), or the selector is invalid.
        unescape_value(rhs)?;
        if found.is_none() && op != "!=" && lhs == "metadata.name" {
            let at = start + lhs.len() + op.len();
            found = Some((at, end));
        }
    }
    let (start, end) = found?;
    let name = match selector {
        Cow::Borrowed(b) => match unescape_value(&b[start..end])? {
            Cow::Borrowed(n) => Cow::Borrowed(n),
            Cow::Owned(n) => Cow::Owned(n),
        },
        Cow::Owned(o) => Cow::Owned(unescape_value(&o[start..end])?.into_owned()),
    };
    // `IsValidPathSegmentName`: not `.` or `..`, no `/` or `%`.
    let valid = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']);
    valid.then_some(name)
}

/// `fields.splitTerms`: byte ranges of the terms, split on `,` not escaped by `\`.
fn split_terms(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    let mut escaped = false;
    let mut done = false;
    let mut bytes = s.bytes().enumerate();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (i, b) in bytes.by_ref() {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b',' {
                let term = (start, i);
                start = i + 1;
                return Some(term);
            }
        }
        done = true;
        Some((start, s.len()))
    })
}

/// `fields.splitTerm`: the first `!=`, `==` or `=`.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let i = term.find(['!', '='])?;
    let rest = &term[i..];
    for op in ["!=", "==", "="] {
        if let Some(rhs) = rest.strip_prefix(op) {
            return Some((&term[..i], op, rhs));
        }
    }
    // A lone `!` is no operator: look further.
    let (lhs, op, rhs) = split_term(&term[i + 1..])?;
    Some((&term[..i + 1 + lhs.len()], op, rhs))
}

/// `fields.UnescapeValue`.
fn unescape_value(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['\\', ',', '=']) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return None;
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return None,
            c => out.push(c),
        }
    }
    (!in_slash).then_some(Cow::Owned(out))
}

/// Go's `url.QueryUnescape`: `%XX` and `+` as a space; `None` for a bad escape or a
/// result that is not UTF-8 (Go keeps the bytes; no key or name we look for has them).
fn query_unescape(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}
