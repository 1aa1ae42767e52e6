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
    let rows: Vec<[String; 8]> = all.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = HEADERS.map(String::from);
    let (bold, reset) = if color {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    write!(out, "{bold}")?;
    write_row(out, &header, &widths)?;
    write!(out, "{reset}")?;
    writeln!(out)?;
    for row in &rows {
        write_row(out, row, &widths)?;
        writeln!(out)?;
    }
    Ok(())
}

fn row(index: &RecordingIndex) -> [String; 8] {
    let user = if index.user.name.is_empty() {
        &index.user.sub
    } else {
        &index.user.name
    };
    [
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
    cells: &[String; 8],
    widths: &[usize; 8],
) -> std::io::Result<()> {
    let last = cells.len() - 1;
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i == last {
            // Sizes read best right-aligned; no trailing padding after them.
            write!(out, "{cell:>width$}")?;
        } else {
            write!(out, "{cell:<width$}  ")?;
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
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain é"), "plain é");
        assert_eq!(sanitize("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
