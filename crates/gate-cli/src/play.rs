//! `gate recordings play`: terminal recordings replay their output; query recordings replay
//! as a transcript, like watching the psql session over the user's shoulder.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use gate_core::Action;
use gate_recording::{EventCode, QueryLine, RecordLine, SessionLine, read_cast, read_recording};

use crate::table::{duration, sanitize};

/// How fast to replay.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Factor over real time (2 = twice as fast). Positive.
    pub speed: f64,
    /// Pauses longer than this (recording seconds) are cut to it.
    pub idle_limit: Option<f64>,
}

/// Replay clock: sleeps until each event's (scaled, idle-capped) time. It aims at absolute
/// targets from one origin, so the time spent writing does not add up into drift.
struct Clock {
    origin: Instant,
    /// Playback seconds elapsed at the last event.
    played: f64,
    /// Recording time of the last event.
    last: f64,
    pace: Pace,
}

impl Clock {
    fn new(pace: Pace) -> Clock {
        Clock {
            origin: Instant::now(),
            played: 0.0,
            last: 0.0,
            pace,
        }
    }

    fn wait_until(&mut self, t: f64) {
        let mut gap = (t - self.last).max(0.0);
        if let Some(limit) = self.pace.idle_limit {
            gap = gap.min(limit);
        }
        self.last = self.last.max(t);
        self.played += gap / self.pace.speed;
        // A bogus `t` (years) saturates instead of panicking; the user can interrupt.
        let target = Duration::try_from_secs_f64(self.played)
            .ok()
            .and_then(|d| self.origin.checked_add(d));
        if let Some(target) = target {
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
            }
        }
    }
}

/// Writes the output events of an asciicast recording with their timing. Input and resize
/// events are not shown: the output already echoes what matters, and the reader's terminal
/// keeps its own size.
pub fn terminal(out: &mut impl Write, content: &[u8], pace: Pace) -> anyhow::Result<()> {
    let (header, events) = read_cast(content)?;
    let mut clock = Clock::new(Pace {
        idle_limit: pace.idle_limit.or(header.idle_time_limit),
        ..pace
    });
    for event in events.iter().filter(|e| e.code == EventCode::Output) {
        clock.wait_until(event.time);
        out.write_all(event.data.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
    fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }
}

/// Replays a query recording as a timed transcript: the session header, then each statement
/// at its time with a `db=>` prompt and what Gate decided, then how the session ended.
pub fn queries(
    out: &mut impl Write,
    content: &[u8],
    pace: Pace,
    color: bool,
) -> anyhow::Result<()> {
    let lines = read_recording(content)?;
    let style = Style { color };
    let mut clock = Clock::new(pace);
    let mut prompt = String::from("=>");
    let mut ended = false;
    for line in &lines {
        match line {
            RecordLine::Session(session) => {
                prompt = session_header(out, session, &style)?;
            }
            RecordLine::Query(query) => {
                clock.wait_until(query.t);
                query_lines(out, query, &prompt, &style)?;
            }
            RecordLine::End(end) => {
                clock.wait_until(end.duration_s);
                ended = true;
                let counts = format!(
                    "{} {}, {} blocked, {} {}",
                    end.queries,
                    plural(end.queries, "query", "queries"),
                    end.blocked,
                    end.errors,
                    plural(end.errors, "error", "errors"),
                );
                // Every block above ends with a blank line already.
                writeln!(
                    out,
                    "{} {} after {} · {counts}",
                    style.bold("Ended"),
                    time(end.ended_at),
                    duration(Duration::try_from_secs_f64(end.duration_s).unwrap_or_default()),
                )?;
            }
        }
        out.flush()?;
    }
    if !ended {
        writeln!(
            out,
            "{}",
            style.dim("(no end line: the recording was cut short)")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Writes the session header; returns the prompt to use (`db=>`, like psql).
fn session_header(
    out: &mut impl Write,
    session: &SessionLine,
    style: &Style,
) -> std::io::Result<String> {
    let user = if session.user.name.is_empty() {
        &session.user.sub
    } else {
        &session.user.name
    };
    let mut details = vec![sanitize(&session.protocol)];
    if let Some(db) = &session.database {
        details.push(format!("database {}", sanitize(db)));
    }
    if let Some(addr) = &session.client_addr {
        details.push(format!("from {}", sanitize(addr)));
    }
    writeln!(
        out,
        "{} {}@{} ({})",
        style.bold("Session"),
        sanitize(user),
        sanitize(&session.resource),
        details.join(", ")
    )?;
    writeln!(
        out,
        "{} {}  {}",
        style.bold("Started"),
        time(session.started_at),
        style.dim(&format!("session {}", session.session_id))
    )?;
    writeln!(out)?;
    let db = session.database.as_deref().unwrap_or(&session.resource);
    Ok(format!("{}=>", sanitize(db)))
}

fn query_lines(
    out: &mut impl Write,
    query: &QueryLine,
    prompt: &str,
    style: &Style,
) -> std::io::Result<()> {
    let stamp = format!("[{}]", offset(query.t));
    // Continuation lines get psql's `->` prompt, aligned under the first.
    let continuation = format!("{}->", prompt.strip_suffix("=>").unwrap_or(prompt));
    let pad = " ".repeat(stamp.chars().count());
    for (i, part) in query.statement.lines().enumerate() {
        let text = sanitize(part);
        if i == 0 {
            writeln!(out, "{} {} {text}", style.dim(&stamp), style.bold(prompt))?;
        } else {
            writeln!(out, "{pad} {} {text}", style.bold(&continuation))?;
        }
    }
    if query.statement.is_empty() {
        writeln!(out, "{} {}", style.dim(&stamp), style.bold(prompt))?;
    }

    let decision = match query.action {
        Action::Allow => style.green("allowed"),
        Action::Block => style.red("BLOCKED"),
        Action::Mask => style.yellow("masked"),
        Action::Rewrite => style.yellow("rewritten"),
        Action::Filter => style.yellow("filtered"),
    };
    let mut parts = vec![match &query.reason {
        Some(reason) => format!("{decision}: {}", sanitize(reason)),
        None => decision,
    }];
    match &query.transfer {
        // A channel (SSH exec, subsystem, forward): what it moved and how it ended.
        Some(t) => {
            parts.push(format!(
                "{} bytes in, {} bytes out",
                t.bytes_in, t.bytes_out
            ));
            if let Some(status) = t.exit_status {
                parts.push(format!("exit status {status}"));
            }
        }
        None => parts.push(format!(
            "{} {}",
            query.rows,
            plural(query.rows, "row", "rows")
        )),
    }
    parts.push(format!("{:.1} ms", query.duration_ms));
    if let Some(error) = &query.error {
        parts.push(format!(
            "{} {}",
            style.red(&format!("error {}:", sanitize(&error.code))),
            sanitize(&error.message)
        ));
    }
    writeln!(out, "{pad}   {}", parts.join(" · "))?;
    writeln!(out)
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `MM:SS.ss` since the start (or `H:MM:SS` past an hour).
fn offset(t: f64) -> String {
    let t = if t.is_finite() { t.max(0.0) } else { 0.0 };
    if t < 3600.0 {
        let minutes = (t / 60.0).floor();
        format!("{:02}:{:05.2}", minutes as u64, t - minutes * 60.0)
    } else {
        let s = t as u64;
        format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_like_a_stopwatch() {
        assert_eq!(offset(0.0), "00:00.00");
        assert_eq!(offset(1.526), "00:01.53");
        assert_eq!(offset(75.0), "01:15.00");
        assert_eq!(offset(3725.0), "1:02:05");
        assert_eq!(offset(f64::NAN), "00:00.00");
    }

    #[test]
    fn idle_pauses_are_cut_and_speed_scales() {
        let mut clock = Clock::new(Pace {
            speed: 1000.0,
            idle_limit: Some(1.0),
        });
        clock.wait_until(0.5);
        clock.wait_until(1e9); // capped to 1 s, then scaled: 1 ms
        clock.wait_until(1e300); // absurd times do not panic
        assert!((clock.played - 0.0015 - 0.001).abs() < 1e-9);
        assert!(clock.origin.elapsed() < Duration::from_secs(5));
    }
}
