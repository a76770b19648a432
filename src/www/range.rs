//! The `Range` header of a static-file request (RFC 9110 §14), parsed with Go's
//! `parseRange` rules and quirks.

/// A byte range of a file (Go's `httpRange`). `len` may be 0: Go answers `bytes=-0`
/// with an empty 206, and so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ByteRange {
    pub(super) start: u64,
    pub(super) len: u64,
}

impl ByteRange {
    /// `bytes FIRST-LAST/SIZE`, computed as Go does (so an empty range reads `20-19`).
    pub(super) fn content_range(&self, size: u64) -> String {
        let last = i128::from(self.start) + i128::from(self.len) - 1;
        format!("bytes {}-{last}/{size}", self.start)
    }
}

/// Why a `Range` header gets a 416; the texts are Go's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RangeError {
    Invalid,
    /// Every range starts at or past the end of the file.
    NoOverlap,
}

impl RangeError {
    pub(super) fn text(self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range\n",
            RangeError::NoOverlap => "invalid range: failed to overlap\n",
        }
    }
}

/// Go's `parseRange` (RFC 9110 §14.1.2): `bytes=` and a comma-separated list of
/// `FIRST-LAST`, `FIRST-` and `-SUFFIX`, each clamped to the file. Numbers are Go's
/// `ParseInt` (a sign is allowed, then digits).
pub(super) fn parse_range(v: &[u8], size: u64) -> Result<Vec<ByteRange>, RangeError> {
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
