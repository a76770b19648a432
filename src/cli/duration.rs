//! The duration flags' values, parsed with Go's rules (kubectl's flags are Go's).

use std::time::Duration;

/// Parses a Go-style duration (`0`, `500ms`, `30s`, `1m30s`, `1.5h`) as kubectl accepts it
/// (Go's `time.ParseDuration`, which pflag's duration flags use). Hand-written: humantime,
/// the well-kept crate for durations, has a grammar of its own (integers only, its own
/// unit words, spaces between spans), so it would refuse `1.5h` that kubectl takes and
/// take `1 min` that kubectl refuses.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (examples: 0, 500ms, 30s, 1m30s)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_end..];
        total += Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
    }
    Ok(total)
}

/// A duration that must be above zero (`--upstream-ping-interval`, `--upstream-ping-timeout`):
/// zero would mean pinging without pause, or giving up on every ping before its answer
/// could arrive.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be above zero")),
        d => Ok(d),
    }
}

/// Parses `--request-timeout` as kubectl does (client-go's `ParseTimeout`): a whole
/// number of seconds, or a Go-style duration.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    parse_duration(s).map_err(|_| {
        format!(
            "invalid timeout {s:?}: a whole number of seconds, or a number with a unit (e.g. \
             1s, 2m, 3h)"
        )
    })
}
