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
    pub statement: String,
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
