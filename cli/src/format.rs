//! The pieces of text and JSON output the resource modules build on:
//! aligned tables, message bodies (escaped for the terminal, base64 in JSON
//! when not UTF-8), durations, timestamps and plurals. All pure functions,
//! tested here.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

/// Columns padded to their widest cell; the last column is not padded.
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    table_aligned(rows, [false; N])
}

/// [`table`] with the columns marked in `right` aligned right (numbers).
pub(crate) fn table_aligned<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = widths[i];
            let sep = if i + 1 == N { "" } else { "  " };
            if right[i] {
                let _ = write!(out, "{cell:>width$}{sep}");
            } else if i + 1 == N {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}{sep}");
            }
        }
        out.push('\n');
    }
    out
}

/// The label column of message blocks (`receive`, `peek`): "receives" and one space.
pub(crate) const WIDTH: usize = 9;

/// A body for the terminal: continuation lines of a multi-line body start
/// with `indent` (to stay in the value column); other control characters
/// are escaped so they cannot upset the terminal.
pub(crate) fn body_text(body: &[u8], indent: &str) -> String {
    let mut text = String::new();
    for c in String::from_utf8_lossy(body).trim_end_matches('\n').chars() {
        match c {
            '\n' => {
                text.push('\n');
                text.push_str(indent);
            }
            '\t' => text.push(c),
            c if c.is_control() => text.extend(c.escape_debug()),
            c => text.push(c),
        }
    }
    text
}

pub(crate) fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Seconds as days, hours, minutes and seconds: "30s", "1h30m", "4d".
pub(crate) fn secs_short(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// Like [`secs_short`], with the exact seconds when they are not obvious:
/// "30s", "4d (345600s)" — flags take seconds.
pub(crate) fn secs_exact(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{} ({secs}s)", secs_short(secs))
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g.
/// "2025-01-02T03:04:05.678Z"; 0 (never) is "-".
pub(crate) fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Standard base64 with padding (RFC 4648), for non-UTF-8 bodies in JSON.
pub(crate) fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `value` (a JSON object) with the message body: `body` as UTF-8 (lossy),
/// and `body_base64` with the exact bytes when they are not valid UTF-8.
pub(crate) fn with_body(mut value: Value, body: &[u8]) -> Value {
    value["body"] = json!(String::from_utf8_lossy(body));
    if std::str::from_utf8(body).is_err() {
        value["body_base64"] = json!(base64(body));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_are_compact() {
        assert_eq!(secs_short(0), "0s");
        assert_eq!(secs_short(30), "30s");
        assert_eq!(secs_short(90), "1m30s");
        assert_eq!(secs_short(43_200), "12h");
        assert_eq!(secs_short(345_600), "4d");
        assert_eq!(secs_short(90_061), "1d1h1m1s");
        assert_eq!(secs_exact(30), "30s");
        assert_eq!(secs_exact(345_600), "4d (345600s)");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(1_735_787_045_678), "2025-01-02T03:04:05.678Z");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
