//! Terminal recordings: one interactive channel (an SSH shell or command) as asciicast v2,
//! through the same writer as query recordings.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gate_core::audit::AuditIdentity;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::cast::{self, CAST_VERSION, CastHeader, Utf8Carry};
use crate::index::{self, RecordingIndex, RecordingKind};
use crate::writer::{self, Msg, SessionMeta};
use crate::{Recordings, clamp_time, monotonic_start, send_from_drop};

/// The environment variables a terminal header may carry. Anything else in a session's
/// environment can hold secrets (tokens in `*_TOKEN`, `AWS_*`), so it is never written.
const ENV_KEPT: [&str; 2] = ["TERM", "SHELL"];

/// What a terminal recording's header and index say.
#[derive(Debug, Clone)]
pub struct TerminalHeader {
    /// Unique per recorded channel.
    pub recording_id: Uuid,
    /// The gateway session the channel belongs to.
    pub session_id: Uuid,
    /// `"ssh"`.
    pub protocol: String,
    pub resource: String,
    pub user: AuditIdentity,
    pub width: u32,
    pub height: u32,
    /// `None` for an interactive shell.
    pub command: Option<String>,
    /// `"user@resource"`.
    pub title: String,
    /// Only `TERM` and `SHELL` are written; other entries are ignored.
    pub env: Vec<(String, String)>,
    /// Whether [`TerminalRecorder::input`] records anything. Off by default in handlers:
    /// keystrokes include passwords typed at prompts, which the output never echoes.
    pub record_input: bool,
    pub started_at: SystemTime,
}

impl Recordings {
    /// Opens the recording of one terminal channel. Nothing is sent or stored until the
    /// first event (or the finish).
    pub fn terminal(&self, header: TerminalHeader) -> TerminalRecorder {
        let started_at = clamp_time(header.started_at);
        let kind = RecordingKind::Terminal;
        let dir = self.dir_for(&header.protocol, started_at);
        let header_line = match &self.inner {
            Some(_) => cast::header_line(&CastHeader {
                version: CAST_VERSION,
                width: header.width,
                height: header.height,
                timestamp: started_at
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs()),
                duration: None,
                idle_time_limit: None,
                command: header.command.clone(),
                title: Some(header.title.clone()),
                env: header
                    .env
                    .into_iter()
                    .filter(|(k, _)| ENV_KEPT.contains(&k.as_str()))
                    .collect(),
            }),
            None => Vec::new(),
        };
        let index = RecordingIndex {
            recording_id: header.recording_id,
            session_id: header.session_id,
            kind,
            protocol: header.protocol,
            resource: header.resource,
            user: header.user,
            title: Some(header.title),
            command: header.command,
            started_at: index::micros(started_at),
            ended_at: index::micros(started_at),
            size: 0,
            sha256: String::new(),
            object_key: writer::object_key(&dir, header.recording_id, kind).to_string(),
        };
        TerminalRecorder {
            meta: Arc::new(SessionMeta {
                id: header.recording_id,
                kind,
                dir,
                header_line: header_line.into_boxed_slice(),
                start: monotonic_start(started_at),
                index,
            }),
            tx: self.sender(),
            record_input: header.record_input,
            streams: tokio::sync::Mutex::new(Streams::default()),
        }
    }
}

/// The recording of one terminal channel.
///
/// Each event is timestamped and serialized here, so the writer only moves bytes. Dropping
/// the recorder without [`TerminalRecorder::finish`] still finishes the recording, like
/// [`crate::SessionRecorder`].
#[derive(Debug)]
pub struct TerminalRecorder {
    meta: Arc<SessionMeta>,
    /// `None` when disabled or once finished.
    tx: Option<mpsc::Sender<Msg>>,
    record_input: bool,
    /// The UTF-8 carry of each stream. Held while an event is timed *and* sent, so events
    /// reach the writer in time order even when output and input come from different tasks.
    streams: tokio::sync::Mutex<Streams>,
}

#[derive(Debug, Default)]
struct Streams {
    output: Utf8Carry,
    input: Utf8Carry,
}

#[derive(Clone, Copy)]
enum Stream {
    Output,
    Input,
}

impl TerminalRecorder {
    /// Records bytes the terminal displayed (`"o"`), waiting while the writer is behind.
    pub async fn output(&self, data: &[u8]) {
        self.event(Stream::Output, data).await
    }

    /// Records bytes the user typed (`"i"`), only when the header asked for input recording;
    /// otherwise a no-op.
    pub async fn input(&self, data: &[u8]) {
        if self.record_input {
            self.event(Stream::Input, data).await
        }
    }

    /// Records a terminal size change (`"r"`, `"COLSxROWS"`).
    pub async fn resize(&self, cols: u32, rows: u32) {
        let Some(tx) = &self.tx else { return };
        let _order = self.streams.lock().await;
        let line = cast::event_line(self.elapsed(), "r", &format!("{cols}x{rows}"));
        self.send(tx, line).await;
    }

    /// Completes the recording in the background. A character left incomplete at the end
    /// of a stream is written as U+FFFD. Returns once the writer has the request, not when
    /// the object is stored (see [`Recordings::flush`]).
    pub async fn finish(mut self) {
        if let Some(tx) = self.tx.clone() {
            for msg in self.closing_msgs() {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        }
        // Only now: if this future is dropped mid-send, `Drop` still finishes the recording.
        self.tx = None;
    }

    /// Where the recording lands, relative to the store root (prefix included).
    pub fn object_key(&self) -> String {
        self.meta.key().to_string()
    }

    pub fn recording_id(&self) -> Uuid {
        self.meta.id
    }

    pub fn session_id(&self) -> Uuid {
        self.meta.index.session_id
    }

    fn elapsed(&self) -> f64 {
        self.meta.start.elapsed().as_secs_f64()
    }

    async fn event(&self, stream: Stream, data: &[u8]) {
        let Some(tx) = &self.tx else { return };
        if data.is_empty() {
            return;
        }
        let mut streams = self.streams.lock().await;
        let (carry, code) = match stream {
            Stream::Output => (&mut streams.output, "o"),
            Stream::Input => (&mut streams.input, "i"),
        };
        let text = carry.decode(data);
        if text.is_empty() {
            return; // only the start of a character so far
        }
        let line = cast::event_line(self.elapsed(), code, &text);
        self.send(tx, line).await;
    }

    async fn send(&self, tx: &mpsc::Sender<Msg>, line: Vec<u8>) {
        let msg = Msg::Line {
            meta: self.meta.clone(),
            line,
            blocked: false,
            error: false,
        };
        if tx.send(msg).await.is_err() {
            tracing::debug!(recording_id = %self.meta.id, "recording writer gone; event not recorded");
        }
    }

    /// The dangling carries, then the finish.
    fn closing_msgs(&mut self) -> Vec<Msg> {
        let t = self.elapsed();
        let streams = self.streams.get_mut();
        let mut msgs: Vec<Msg> = [
            (streams.output.finish(), "o"),
            (streams.input.finish(), "i"),
        ]
        .into_iter()
        .filter_map(|(text, code)| Some(cast::event_line(t, code, &text?)))
        .map(|line| Msg::Line {
            meta: self.meta.clone(),
            line,
            blocked: false,
            error: false,
        })
        .collect();
        msgs.push(Msg::Finish {
            meta: self.meta.clone(),
            summary: None,
            ended_at: SystemTime::now(),
            duration: self.meta.start.elapsed(),
        });
        msgs
    }
}

impl Drop for TerminalRecorder {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let msgs = self.closing_msgs();
        send_from_drop(tx, msgs, self.meta.id);
    }
}
