//! Human-readable formatting: the `list` table and the small formats it uses.

use std::io::Write;
use std::time::Duration;

use gate_recording::RecordingIndex;

const HEADERS: [&str; 8] = [
    "ID", "KIND", "PROTOCOL", "USER", "RESOURCE", "STARTED", "DURATION", "SIZE",
];

/// The `list` table: one row per recording, columns padded to their widest cell.
pub fn write_list(
    out: &mut impl Write,
    all: &[RecordingIndex],
    color: bool,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = all.iter().map(row).collect();
    // Sizes read best right-aligned.
    write_table(out, &HEADERS, &rows, color, true)
}

/// A table: a bold header line (when `color`), then one line per row, columns padded to
/// their widest cell. The last column is right-aligned when `right_align_last`; no line has
/// trailing padding.
pub fn write_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
    color: bool,
    right_align_last: bool,
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let (bold, reset) = if color {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    write!(out, "{bold}")?;
    write_row(out, &header, &widths, right_align_last)?;
    write!(out, "{reset}")?;
    writeln!(out)?;
    for row in rows {
        write_row(out, row, &widths, right_align_last)?;
        writeln!(out)?;
    }
    Ok(())
}

fn row(index: &RecordingIndex) -> Vec<String> {
    let user = if index.user.name.is_empty() {
        &index.user.sub
    } else {
        &index.user.name
    };
    vec![
        index.recording_id.to_string(),
        index.kind.to_string(),
        sanitize(&index.protocol),
        sanitize(user),
        sanitize(&index.resource),
        humantime::format_rfc3339_seconds(index.started_at).to_string(),
        duration(index.duration()),
        size(index.size),
    ]
}

fn write_row(
    out: &mut impl Write,
    cells: &[String],
    widths: &[usize],
    right_align_last: bool,
) -> std::io::Result<()> {
    let last = cells.len().saturating_sub(1);
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        match (i == last, right_align_last) {
            (true, true) => write!(out, "{cell:>width$}")?,
            (true, false) => write!(out, "{cell}")?,
            (false, _) => write!(out, "{cell:<width$}  ")?,
        }
    }
    Ok(())
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, ...
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `0.4s`, `12.0s`, `3m05s`, `2h07m`: precise when short, compact when long.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// A Unix time in milliseconds as RFC 3339 UTC, to the second.
pub fn timestamp_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How far `ms` is from `now_ms`, both Unix milliseconds: `in 59m`, `3m ago`, `now`.
pub fn relative_ms(ms: i64, now_ms: i64) -> String {
    let delta = ms - now_ms;
    let span = approx(Duration::from_millis(delta.unsigned_abs()));
    if delta.unsigned_abs() < 1000 {
        "now".to_string()
    } else if delta > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A duration to one or two units: `45s`, `59m`, `1h05m`, `2d03h`.
pub fn approx(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m:02}m", s / 3600),
        },
        _ => match (s % 86400) / 3600 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d{h:02}h", s / 86400),
        },
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Recorded strings come from clients and upstreams: control characters are shown escaped
/// so a recording cannot drive the reader's terminal (a query recording is not a terminal
/// stream; only `play` of a terminal recording writes raw output, on purpose).
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_are_compact() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn times_are_absolute_and_relative() {
        assert_eq!(timestamp_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        let now = 1_700_000_000_000;
        assert_eq!(relative_ms(now + 59 * 60_000 + 30_000, now), "in 59m");
        assert_eq!(relative_ms(now - 3 * 60_000, now), "3m ago");
        assert_eq!(relative_ms(now + 300, now), "now");
        assert_eq!(relative_ms(now + 3_900_000, now), "in 1h05m");
        assert_eq!(approx(Duration::from_secs(7200)), "2h");
        assert_eq!(approx(Duration::from_secs(45)), "45s");
        assert_eq!(approx(Duration::from_secs(2 * 86400 + 3 * 3600)), "2d03h");
    }

    #[test]
    fn tables_pad_columns_without_trailing_spaces() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a".to_string(), "long cell".to_string(), "x".to_string()],
            vec!["bbb".to_string(), "c".to_string(), "yy".to_string()],
        ];
        write_table(&mut out, &["K", "V", "END"], &rows, false, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "K    V          END\na    long cell  x\nbbb  c          yy\n"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain é"), "plain é");
        assert_eq!(sanitize("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
