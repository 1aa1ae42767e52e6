//! The JSON Lines schema of a query recording, shared by the writer and the reader.
//!
//! One object per line, tagged by `"type"`: a `session` header, then `query` lines in the
//! order they were recorded, then an `end` line. A recording without an `end` line was cut
//! short (the connector crashed; see [`crate::recover_incomplete`]).

use std::time::SystemTime;

use gate_core::Action;
use gate_core::audit::AuditIdentity;
use gate_core::time::serde_rfc3339;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::RecordingError;

/// The schema version written in every `session` line.
pub const FORMAT_VERSION: u32 = 1;

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RecordLine {
    Session(SessionLine),
    Query(QueryLine),
    End(EndLine),
}

/// The header: who connected to what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionLine {
    pub version: u32,
    pub session_id: Uuid,
    pub protocol: String,
    pub resource: String,
    /// Always written (possibly `null`) so every header has the same keys.
    #[serde(default)]
    pub database: Option<String>,
    pub user: AuditIdentity,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub started_at: SystemTime,
}

/// One request and what Gate did with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryLine {
    /// Seconds since the session started (monotonic clock), for replay pacing.
    pub t: f64,
    /// Wall-clock time the entry was recorded.
    #[serde(with = "serde_rfc3339")]
    pub time: SystemTime,
    pub statement: std::sync::Arc<str>,
    pub query_type: std::borrow::Cow<'static, str>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rows: u64,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EntryError>,
    /// What a channel-like request moved and how it ended (SSH exec, subsystem, forward).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// Bytes a channel-like request moved, and its exit status when it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Client to upstream.
    pub bytes_in: u64,
    /// Upstream to client.
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
}

/// An error the upstream (or Gate) returned for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryError {
    pub code: String,
    pub message: String,
}

/// The trailer: how the session ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndLine {
    #[serde(with = "serde_rfc3339")]
    pub ended_at: SystemTime,
    pub duration_s: f64,
    pub queries: u64,
    pub blocked: u64,
    pub errors: u64,
}

/// Serializes a `query` line, newline included: the same bytes as [`to_line`] for
/// `RecordLine::Query`, written field by field. It runs once per recorded statement, where
/// serde's path for an internally tagged enum (a map serializer wrapped around the struct)
/// was a measurable share of Gate's CPU. Strings with nothing to escape and the timestamp are
/// copied directly ([`gate_core::json`]); numbers and escapes still come from serde_json. A
/// test checks the bytes against serde's.
pub(crate) fn query_line(q: &QueryLine) -> Vec<u8> {
    use gate_core::json::{write_key_str as text, write_key_value as field};
    // Every field named: one added to `QueryLine` fails to compile here until it is written.
    let QueryLine {
        t,
        time,
        statement,
        query_type,
        action,
        reason,
        rows,
        duration_ms,
        error,
        transfer,
    } = q;
    let mut out = Vec::with_capacity(192 + statement.len());
    field(&mut out, b"{\"type\":\"query\",\"t\":", t);
    out.extend_from_slice(b",\"time\":");
    gate_core::time::write_json_rfc3339(&mut out, *time);
    text(&mut out, b",\"statement\":", statement);
    text(&mut out, b",\"query_type\":", query_type);
    field(&mut out, b",\"action\":", action);
    if let Some(reason) = reason {
        text(&mut out, b",\"reason\":", reason);
    }
    field(&mut out, b",\"rows\":", rows);
    field(&mut out, b",\"duration_ms\":", duration_ms);
    if let Some(error) = error {
        field(&mut out, b",\"error\":", error);
    }
    if let Some(t) = transfer {
        field(&mut out, b",\"bytes_in\":", &t.bytes_in);
        field(&mut out, b",\"bytes_out\":", &t.bytes_out);
        if let Some(status) = &t.exit_status {
            field(&mut out, b",\"exit_status\":", status);
        }
    }
    out.extend_from_slice(b"}\n");
    out
}

/// Serializes one line, newline included.
pub(crate) fn to_line(line: &RecordLine) -> Vec<u8> {
    // These types hold only strings, numbers and enums: serialization cannot fail.
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses a whole recording. Blank lines are skipped; any other line that does not parse is
/// an error naming its (1-based) line number. A missing `end` line is not an error: it is how
/// an interrupted recording looks.
pub fn read_recording(bytes: &[u8]) -> Result<Vec<RecordLine>, RecordingError> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|source| RecordingError::Parse {
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(statement: &str) -> QueryLine {
        QueryLine {
            t: 0.001766774,
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
            statement: statement.into(),
            query_type: "select".into(),
            action: Action::Allow,
            reason: None,
            rows: 1,
            duration_ms: 0.949236,
            error: None,
            transfer: None,
        }
    }

    #[test]
    fn query_lines_are_written_exactly_as_serde_writes_them() {
        let mut cases = Vec::new();
        for statement in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT 'it''s', \"Quoted\", E'\\n' -- tab\tand newline\n",
            "INSERT INTO t VALUES ('\u{7}\u{1f}', 'žluťoučký kůň 🐎')",
            "",
        ] {
            cases.push(line(statement));
        }
        let mut blocked = line("DROP TABLE users");
        blocked.query_type = "drop".into();
        blocked.action = Action::Block;
        blocked.reason = Some("dropping \"tables\" is not allowed".into());
        blocked.rows = 0;
        cases.push(blocked);
        let mut failed = line("SELECT 1/0");
        failed.error = Some(EntryError {
            code: "22012".into(),
            message: "division by zero".into(),
        });
        failed.duration_ms = f64::NAN;
        failed.t = 1e21;
        cases.push(failed);
        let mut exec = line("ls -la");
        exec.query_type = "exec".into();
        exec.rows = u64::MAX;
        exec.transfer = Some(Transfer {
            bytes_in: 0,
            bytes_out: 1 << 40,
            exit_status: Some(2),
        });
        cases.push(exec.clone());
        exec.transfer = Some(Transfer {
            bytes_in: 7,
            bytes_out: 9,
            exit_status: None,
        });
        cases.push(exec);
        for q in cases {
            let direct = query_line(&q);
            let via_serde = to_line(&RecordLine::Query(q.clone()));
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&via_serde)
            );
            // And it reads back (a NaN duration is written as null, as serde writes it).
            if q.duration_ms.is_finite() {
                let back = read_recording(&direct).unwrap();
                assert_eq!(back, vec![RecordLine::Query(q)]);
            }
        }
    }
}
