//! Log set-up, and the escaping that keeps a request from writing into the log.
//!
//! A request can carry control characters into a logged value: a decoded `%0A` in a
//! path, a raw byte in a header an error message quotes. Written verbatim, a newline
//! starts a forged log line and an ESC sequence drives the terminal of whoever reads the
//! log. So every control character is written escaped (`\n`, `\u{1b}`), in both
//! formats: in text, for every field and message of every event ([`EscapingFields`]); in
//! JSON, serde already escapes them inside strings, and the request-derived values are
//! also passed through [`Escaped`] so that a JSON consumer that decodes them does not get
//! them back raw either.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// A value from a request, displayed with its control characters escaped (as Rust's
/// `char::escape_debug` spells them). Allocates nothing: it escapes while writing, and
/// only when the line is logged at all.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

fn write_escaped(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let mut rest = s;
    while let Some(i) = rest.find(char::is_control) {
        out.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        for e in c.escape_debug() {
            out.write_char(e)?;
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// The text format's fields, as tracing-subscriber's [`DefaultFields`] writes them, with
/// every control character escaped: the message, `%` (Display) values and error
/// messages are otherwise written raw.
#[derive(Debug, Default)]
pub struct EscapingFields(DefaultFields);

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Formatted aside first (one buffer per logged line, never on a silent one), then
        // copied escaped.
        let mut buf = String::new();
        self.0.format_fields(Writer::new(&mut buf), fields)?;
        write_escaped(&mut writer, &buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let shown = Escaped("/a\nFORGED \u{1b}[2J\r\t\u{7f}\u{85}/caf\u{e9}").to_string();
        assert_eq!(
            shown,
            "/a\\nFORGED \\u{1b}[2J\\r\\t\\u{7f}\\u{85}/caf\u{e9}"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn text_fields_are_escaped_whatever_the_value_kind() {
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }

        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapingFields::default())
            .finish();
        let raw = "x\nFORGED \u{1b}[31m";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(path = %raw, quoted = raw, "message {raw}");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(!out.contains('\u{1b}'), "{out:?}");
        // (tracing-subscriber itself writes an ESC in a message as `\x1b`, since 0.3.20.)
        assert!(out.contains("message x\\nFORGED \\"), "{out:?}");
        assert!(out.contains(" path=x\\nFORGED \\u{1b}[31m "), "{out:?}");
    }
}
