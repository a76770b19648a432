//! The scanner of watch resume (`watch/`): splits a JSON watch stream into event lines
//! and reads each one's `type` and `object.metadata.resourceVersion`, stopping there. It
//! depends on nothing else in the crate, so `bench/watch-scan` measures it on its own.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// An event line longer than this is passed on as it comes and the watch is no longer
/// resumed (a Kubernetes object is at most ~1.5 MiB in etcd; 16 MiB leaves room).
pub(super) const MAX_LINE: usize = 16 << 20;

/// The kinds of watch event the scanner tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bookmark,
    Error,
    /// ADDED, MODIFIED, DELETED (or a type we do not know).
    Change,
}

/// Splits the stream into event lines and tracks the position.
#[derive(Default)]
pub(crate) struct Scanner {
    /// The current event's bytes, when it began in an earlier chunk.
    pub(super) partial: BytesMut,
    /// The last resourceVersion seen (valid when `sound`).
    pub(super) rv: String,
    /// `rv` is a position the stream can be resumed from.
    sound: bool,
    /// An ERROR event passed: the API server ends the stream after it, and so do we.
    terminal: bool,
    /// An event too long to hold: everything passes through and the watch is not resumed.
    opaque: bool,
    /// Events completed on the current upstream stream.
    pub(super) stream_lines: u64,
    pub(super) first_is_error: bool,
}

impl Scanner {
    /// `start_rv`: the position the stream starts from, if it is one (see `Plan`).
    pub(crate) fn new(start_rv: Option<&str>) -> Scanner {
        Scanner {
            sound: start_rv.is_some(),
            rv: start_rv.unwrap_or_default().to_owned(),
            ..Scanner::default()
        }
    }

    pub(crate) fn resumable(&self) -> bool {
        self.sound && !self.terminal && !self.opaque
    }

    pub(super) fn new_stream(&mut self) {
        self.stream_lines = 0;
        self.first_is_error = false;
    }

    /// Takes one upstream chunk; what the client gets goes to `out` (whole events, as
    /// slices of `data` where they are whole in it). `swallow`: drop BOOKMARK events.
    pub(crate) fn feed(&mut self, mut data: Bytes, swallow: bool, out: &mut VecDeque<Bytes>) {
        if self.opaque {
            out.push_back(data);
            return;
        }
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', &data) else {
                self.hold(&data, out);
                return;
            };
            self.partial.extend_from_slice(&data[..=i]);
            let line = self.partial.split().freeze();
            if self.line(&line, swallow) {
                out.push_back(line);
            }
            let _ = data.split_to(i + 1);
        }
        // Runs of kept events go out as one slice; a swallowed one splits the run.
        let (mut start, mut run) = (0, 0);
        while let Some(i) = memchr::memchr(b'\n', &data[start..]) {
            let end = start + i + 1;
            if !self.line(&data[start..end], swallow) {
                if run < start {
                    out.push_back(data.slice(run..start));
                }
                run = end;
            }
            start = end;
        }
        if run < start {
            out.push_back(data.slice(run..start));
        }
        if start < data.len() {
            self.hold(&data[start..], out);
        }
    }

    /// Keeps the start of an event until its newline arrives, or gives up on it.
    fn hold(&mut self, bytes: &[u8], out: &mut VecDeque<Bytes>) {
        if self.partial.len() + bytes.len() > MAX_LINE {
            tracing::warn!(
                "a watch event is longer than {MAX_LINE} bytes: passed on as it comes, and the watch will not be resumed"
            );
            self.opaque = true;
            if !self.partial.is_empty() {
                out.push_back(self.partial.split().freeze());
            }
            out.push_back(Bytes::copy_from_slice(bytes));
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// One complete event line; returns whether the client gets it.
    fn line(&mut self, line: &[u8], swallow: bool) -> bool {
        let (kind, rv) = parse_event(line);
        if self.stream_lines == 0 {
            self.first_is_error = kind == Some(Kind::Error);
        }
        self.stream_lines += 1;
        match (kind, rv) {
            (Some(Kind::Error), _) => {
                self.terminal = true;
                true
            }
            (Some(Kind::Bookmark), rv) => {
                if let Some(rv) = rv {
                    self.set_rv(rv);
                    self.sound = true;
                }
                !swallow
            }
            (_, Some(rv)) if self.sound => {
                self.set_rv(rv);
                true
            }
            (_, None) => {
                // An event we cannot place: resuming from the previous position could
                // send it twice, so wait for the next one we can.
                self.sound = false;
                true
            }
            _ => true,
        }
    }

    fn set_rv(&mut self, rv: &str) {
        self.rv.clear();
        self.rv.push_str(rv);
    }
}

/// The `type` and `object.metadata.resourceVersion` of one watch event line, reading only
/// as far as needed (Go writes `type` first and, for typed objects, `metadata` before the
/// rest with `resourceVersion` early in it; unstructured objects have sorted keys, so
/// `metadata` comes before `spec` and `status`).
fn parse_event(line: &[u8]) -> (Option<Kind>, Option<&str>) {
    if let Some(found) = parse_go_layout(line) {
        return found;
    }
    parse_general(line)
}

/// The general parser: serde_json, stopped (by an error) once both are known.
fn parse_general(line: &[u8]) -> (Option<Kind>, Option<&str>) {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(line);
    // An early stop is an error by design; what was found is kept either way.
    let _ = de::Deserializer::deserialize_map(&mut de, EventVisitor(&mut found));
    (found.kind, found.rv)
}

/// The layout Go's `encoding/json` writes for a watch event (`{"type":"…","object":{…`,
/// no spaces), walked without building anything: strings are skipped with memchr, only
/// the structural bytes between them are looked at, and the walk stops at
/// `object.metadata.resourceVersion`. About a fifth of the general parser's instructions
/// on a Pod event (`bench/watch-scan`). `None`: another layout, a string with an escape
/// where a name or version was expected, nesting deeper than 63, or a cut-off line: the
/// general parser decides.
fn parse_go_layout(line: &[u8]) -> Option<(Option<Kind>, Option<&str>)> {
    let rest = line.strip_prefix(br#"{"type":""#)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    let kind = match &rest[..end] {
        b"BOOKMARK" => Kind::Bookmark,
        b"ERROR" => return Some((Some(Kind::Error), None)),
        _ => Kind::Change,
    };
    let b = rest[end + 1..].strip_prefix(br#","object":{"#)?;
    // `depth` counts the containers open inside `object` (0: `object` itself); bit d of
    // `arrays` says whether the container at depth d is an array.
    let (mut depth, mut arrays, mut metadata) = (0u32, 0u64, None::<u32>);
    let mut key_next = true;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(b, i + 1)?;
                if !key_next {
                    i = end + 1;
                    continue;
                }
                let key = &b[i + 1..end];
                if b.get(end + 1) != Some(&b':') {
                    return None;
                }
                let value = end + 2;
                if depth == 0 && metadata.is_none() && key == b"metadata" {
                    if b.get(value) != Some(&b'{') {
                        return None;
                    }
                    depth = 1;
                    arrays &= !(1 << depth);
                    metadata = Some(depth);
                    i = value + 1;
                    continue;
                }
                if metadata == Some(depth) && key == b"resourceVersion" {
                    if b.get(value) != Some(&b'"') {
                        return None;
                    }
                    let end = string_end(b, value + 1)?;
                    let rv = &b[value + 1..end];
                    if rv.contains(&b'\\') {
                        return None;
                    }
                    return Some((Some(kind), Some(std::str::from_utf8(rv).ok()?)));
                }
                key_next = false;
                i = value;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth >= 64 {
                    return None;
                }
                if open == b'[' {
                    arrays |= 1 << depth;
                } else {
                    arrays &= !(1 << depth);
                }
                key_next = open == b'{';
                i += 1;
            }
            b'}' | b']' => {
                // The end of `object`, or of its metadata: no resourceVersion in it.
                if depth == 0 || metadata == Some(depth) {
                    return Some((Some(kind), None));
                }
                depth -= 1;
                key_next = false;
                i += 1;
            }
            b',' => {
                key_next = arrays & (1 << depth) == 0;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The index of the quote that closes the string whose content starts at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let j = at + memchr::memchr2(b'"', b'\\', b.get(at..)?)?;
        if b[j] == b'"' {
            return Some(j);
        }
        at = j + 2;
    }
}

#[derive(Default)]
struct Found<'de> {
    kind: Option<Kind>,
    rv: Option<&'de str>,
}

impl Found<'_> {
    fn done(&self) -> bool {
        matches!(self.kind, Some(Kind::Error)) || (self.kind.is_some() && self.rv.is_some())
    }
}

/// The error that stops parsing once everything needed is known.
fn stop<E: de::Error>() -> E {
    E::custom("")
}

struct EventVisitor<'f, 'de>(&'f mut Found<'de>);

impl<'de> Visitor<'de> for EventVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a watch event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "type" => {
                    self.0.kind = Some(match map.next_value::<&'de str>()? {
                        "BOOKMARK" => Kind::Bookmark,
                        "ERROR" => Kind::Error,
                        _ => Kind::Change,
                    });
                }
                "object" => map.next_value_seed(Object(&mut *self.0))?,
                _ => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
            if self.0.done() {
                return Err(stop());
            }
        }
        Ok(())
    }
}

/// `object`, then its `metadata`: both read the same way, one level apart.
struct Object<'f, 'de>(&'f mut Found<'de>);
struct Metadata<'f, 'de>(&'f mut Found<'de>);

impl<'de> DeserializeSeed<'de> for Object<'_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Object<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de str>()? {
            if key == "metadata" {
                map.next_value_seed(Metadata(&mut *self.0))?;
                if self.0.done() {
                    return Err(stop());
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Metadata<'_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Metadata<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("object metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de str>()? {
            if key == "resourceVersion" {
                self.0.rv = Some(map.next_value::<&'de str>()?);
                if self.0.done() {
                    return Err(stop());
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"d","uid":"u","resourceVersion":"1234","creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"containers":[]}}}"#;

    #[test]
    fn parses_type_and_resource_version_and_stops_early() {
        assert_eq!(
            parse_event(format!("{POD}\n").as_bytes()),
            (Some(Kind::Change), Some("1234"))
        );
        // Stops at the resourceVersion: what follows may even be cut off.
        let cut = &POD[..POD.find("creationTimestamp").unwrap()];
        assert_eq!(
            parse_event(cut.as_bytes()),
            (Some(Kind::Change), Some("1234"))
        );
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"77","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
        assert_eq!(parse_event(bookmark), (Some(Kind::Bookmark), Some("77")));
        let error = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","code":410}}"#;
        assert_eq!(parse_event(error).0, Some(Kind::Error));
        // Object before type (not Go's order) still works; nested resourceVersions do not count.
        let swapped = br#"{"object":{"kind":"Event","involvedObject":{"resourceVersion":"1"},"metadata":{"resourceVersion":"9"}},"type":"ADDED"}"#;
        assert_eq!(parse_event(swapped), (Some(Kind::Change), Some("9")));
        assert_eq!(parse_event(b"not json").0, None);
    }

    #[test]
    fn the_go_layout_walk_agrees_with_the_general_parser() {
        let lines: &[&[u8]] = &[
            POD.as_bytes(),
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"77","creationTimestamp":null}}}"#,
            br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#,
            // Unstructured (sorted keys): metadata after annotations-like noise, strings
            // holding quotes, braces and brackets, arrays of objects with `metadata` keys.
            br#"{"type":"ADDED","object":{"apiVersion":"x/v1","items":[{"metadata":{"resourceVersion":"1"}},"a\"{[",2],"kind":"X","metadata":{"annotations":{"k":"v}\"]"},"labels":{},"managedFields":[{"f":{"g":[1,{"h":"resourceVersion"}]}}],"name":"n","resourceVersion":"4242"},"spec":{}}}"#,
            // No resourceVersion in metadata, and a nested one that must not count.
            br#"{"type":"MODIFIED","object":{"kind":"Event","metadata":{"name":"e"},"involvedObject":{"resourceVersion":"1"}}}"#,
        ];
        for line in lines {
            let fast = parse_go_layout(line);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(line));
            assert_eq!(
                fast.unwrap(),
                parse_general(line),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            parse_go_layout(POD.as_bytes()),
            Some((Some(Kind::Change), Some("1234")))
        );
        // Other layouts and cut-off lines go to the general parser.
        assert_eq!(parse_go_layout(br#"{"object":{},"type":"ADDED"}"#), None);
        assert_eq!(
            parse_go_layout(br#"{ "type": "ADDED", "object": {}}"#),
            None
        );
        assert_eq!(parse_go_layout(&POD.as_bytes()[..90]), None);
    }

    fn collect(out: &mut VecDeque<Bytes>) -> Vec<u8> {
        out.drain(..).flat_map(|b| b.to_vec()).collect()
    }

    fn event(kind: &str, rv: u32) -> String {
        format!(
            r#"{{"type":"{kind}","object":{{"kind":"Pod","metadata":{{"name":"p{rv}","resourceVersion":"{rv}"}}}}}}"#
        ) + "\n"
    }

    #[test]
    fn whole_events_pass_as_the_same_bytes_and_split_ones_wait_for_their_newline() {
        let mut s = Scanner {
            sound: true,
            ..Scanner::default()
        };
        let mut out = VecDeque::new();
        let two = Bytes::from(event("ADDED", 5) + &event("MODIFIED", 6));
        s.feed(two.clone(), false, &mut out);
        assert_eq!(out.len(), 1, "two whole events go out as one slice");
        assert_eq!(out[0].as_ptr(), two.as_ptr(), "no copy");
        assert_eq!(s.rv, "6");
        out.clear();
        let third = event("DELETED", 7);
        let (a, b) = third.split_at(20);
        s.feed(Bytes::from(a.to_owned()), false, &mut out);
        assert!(out.is_empty(), "half an event is held");
        s.feed(Bytes::from(b.to_owned()), false, &mut out);
        assert_eq!(collect(&mut out), third.as_bytes());
        assert_eq!(s.rv, "7");
        assert!(s.resumable());
    }

    #[test]
    fn bookmarks_are_swallowed_only_when_asked_and_still_move_the_position() {
        let mut s = Scanner::default();
        let mut out = VecDeque::new();
        // Initial events give no position; the bookmark does.
        let chunk = event("ADDED", 50) + &event("BOOKMARK", 60) + &event("ADDED", 61);
        s.feed(Bytes::from(chunk.clone()), true, &mut out);
        assert_eq!(
            collect(&mut out),
            (event("ADDED", 50) + &event("ADDED", 61)).as_bytes()
        );
        assert!(s.resumable());
        assert_eq!(s.rv, "61");
        s.feed(Bytes::from(event("BOOKMARK", 62)), false, &mut out);
        assert_eq!(collect(&mut out), event("BOOKMARK", 62).as_bytes());
        assert_eq!(s.rv, "62");
    }

    #[test]
    fn an_error_event_or_an_unplaceable_one_stops_resuming() {
        let mut s = Scanner {
            sound: true,
            ..Scanner::default()
        };
        let mut out = VecDeque::new();
        s.feed(
            Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":{}}\n"),
            false,
            &mut out,
        );
        assert!(!s.resumable());
        s.feed(Bytes::from(event("BOOKMARK", 3)), false, &mut out);
        assert!(s.resumable());
        s.feed(
            Bytes::from_static(
                b"{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}\n",
            ),
            false,
            &mut out,
        );
        assert!(!s.resumable());
        assert_eq!(out.len(), 3, "all of them reach the client");
    }
}
