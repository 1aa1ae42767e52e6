//! Session recordings, written through one background writer into an [`ObjectStore`] (a local
//! directory by default, or S3-compatible storage).
//!
//! # Two kinds of recordings
//!
//! - [`RecordingKind::Queries`]: a database session as JSON Lines (`.jsonl`): a `session`
//!   header, one `query` line per statement with Gate's decision, an `end` line (see
//!   [`RecordLine`]). Opened with [`Recordings::session`], fed by [`SessionRecorder::record`].
//! - [`RecordingKind::Terminal`]: one interactive terminal channel (SSH) as
//!   [asciicast v2](https://docs.asciinema.org/manual/asciicast/v2/) (`.cast`), playable
//!   with the stock `asciinema` tools. Opened with [`Recordings::terminal`], fed by
//!   [`TerminalRecorder::output`], [`TerminalRecorder::input`] (only when the header asks
//!   for input recording: keystrokes include passwords typed at prompts) and
//!   [`TerminalRecorder::resize`]. Terminal output is bytes, cut anywhere; a UTF-8
//!   character split between two chunks is carried over to the next chunk of the same
//!   stream, and bytes that are not UTF-8 become U+FFFD, so every event is valid JSON text.
//!
//! Both kinds share everything below: the writer only moves bytes (each recorder serializes
//! its lines itself) and knows the kind only for the trailer (`end` line or none) and the
//! file extension.
//!
//! # Shape
//!
//! [`Recordings`] owns ONE background writer task (spawned by [`Recordings::start`]) fed by
//! ONE bounded channel. Each recorded session gets a recorder: a shared, immutable header
//! plus a clone of the channel's sender, a few hundred bytes in all. The writer keeps no
//! state for a recording and the store holds nothing for it until its first line arrives,
//! so thousands of idle sessions cost next to nothing. When the channel is full, recording
//! a line waits: lines are never dropped to keep up.
//!
//! # Where the bytes go, and what a crash loses
//!
//! A recording lands at `<prefix>/<protocol>/<YYYY-MM-DD>/<recording_id>.<jsonl|cast>` (the
//! date is the session's start, UTC) once it finishes; for query recordings the recording
//! id is the session id. Objects cannot be appended to, so while a recording is open its
//! lines are checkpointed: every `flush_interval` (2 s by default), and whenever it has
//! buffered `segment_max_bytes`, the lines buffered since the last checkpoint are written
//! as a *segment* object `<key>.part-<NNNNNNNN>` with a plain `put` (atomic on every store,
//! any size). When the recording finishes, the writer concatenates its segments and the
//! remaining tail into the final object (one `put`, or a multipart upload above 8 MiB) and
//! deletes the segments.
//!
//! So a crash of the connector loses the lines of the last `flush_interval` (plus writes in
//! flight), and what was checkpointed stays readable in the segments.
//! [`recover_incomplete`] turns leftover segments into regular recordings (a query
//! recording then has no `end` line) with their index. Caveats, stated plainly:
//! - a recording that had nothing checkpointed at the time of the crash leaves no trace;
//! - a segment whose write failed (logged at `error`) is missing from the final object;
//! - the local store does not fsync, so an OS crash (not a process crash) can lose more.
//!
//! A query session that finishes without any entry is still written (header + `end`), and a
//! terminal channel without output is still written (header only): an access gateway records
//! every session that was opened.
//!
//! # The index sidecar
//!
//! Next to every finished recording the writer puts `<key>.meta.json`, a [`RecordingIndex`]:
//! ids, kind, protocol, resource, user, start and end, and the size and SHA-256 of exactly
//! the bytes stored (hashed while they are streamed, multipart included). Readers list
//! recordings from these sidecars only ([`list_recordings`], [`find_recording`]), fetch one
//! with [`read_content`] and check it with [`RecordingIndex::verify`]. A terminal recording's
//! index needs facts the asciicast header does not hold (session id, user, resource), so its
//! first checkpoint also writes them as `<key>.open.json`, which [`recover_incomplete`] uses
//! after a crash and the finished recording deletes. [`Recordings::on_finalized`] hands each
//! index to code that ships it elsewhere (a control plane).
//!
//! Only the fields of [`SessionHeader`], [`QueryEntry`] and [`TerminalHeader`] and the
//! terminal stream itself are ever written: no tokens, no passwords, no bind parameters.

mod cast;
mod format;
mod index;
mod terminal;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate_core::Action;
use gate_core::audit::AuditIdentity;
use gate_core::config::RecordingLocation;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use cast::{CAST_VERSION, CastEvent, CastHeader, EventCode, read_cast};
pub use format::{
    EndLine, EntryError, FORMAT_VERSION, QueryLine, RecordLine, SessionLine, Transfer,
    read_recording,
};
pub use index::{
    INDEX_SUFFIX, RecordingIndex, RecordingKind, find_recording, list_recordings, pick_recording,
    read_content, sha256_hex,
};
pub use terminal::{TerminalHeader, TerminalRecorder};
pub use writer::recover_incomplete;

use writer::{Msg, SessionMeta};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording store: {0}")]
    Store(#[from] object_store::Error),
    #[error("recording directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The URL itself is not repeated: it may carry credentials.
    #[error("invalid recording URL: {0}")]
    Url(String),
    #[error("recording line {line}: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
    /// A line of a recording that is JSON but not what the format says (asciicast).
    #[error("recording line {line}: {message}")]
    Format { line: usize, message: String },
    #[error("no recording matches {id:?}")]
    NotFound { id: String },
    #[error("{id:?} matches {} recordings ({}); give more characters of the id",
        candidates.len(), list_ids(candidates))]
    Ambiguous { id: String, candidates: Vec<Uuid> },
    /// The stored object does not match its index: truncated, or changed after the fact.
    #[error("recording {key} does not match its index: expected {expected}, got {actual}")]
    Integrity {
        key: String,
        expected: String,
        actual: String,
    },
}

fn list_ids(ids: &[Uuid]) -> String {
    const SHOWN: usize = 5;
    let mut out: Vec<String> = ids.iter().take(SHOWN).map(Uuid::to_string).collect();
    if ids.len() > SHOWN {
        out.push("...".into());
    }
    out.join(", ")
}

/// Called with the index of every finished recording; see [`Recordings::on_finalized`].
type FinalizedHook = Arc<dyn Fn(RecordingIndex) + Send + Sync>;

/// The hooks, shared with the writer so hooks added after [`Recordings::start`] count.
#[derive(Clone, Default)]
pub(crate) struct Hooks(Arc<RwLock<Vec<FinalizedHook>>>);

impl Hooks {
    pub(crate) fn notify(&self, index: &RecordingIndex) {
        let hooks: Vec<FinalizedHook> = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in hooks {
            hook(index.clone());
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|h| h.len()).unwrap_or_default();
        write!(f, "Hooks({n})")
    }
}

/// Tuning knobs; the defaults suit a connector.
#[derive(Debug, Clone)]
pub struct RecordingOptions {
    /// Capacity of the channel into the writer. When full, `record` waits (backpressure).
    pub channel_capacity: usize,
    /// How often buffered lines are checkpointed to the store: the most a crash loses.
    pub flush_interval: Duration,
    /// A session that buffers this much is checkpointed at once, bounding its memory.
    pub segment_max_bytes: usize,
    /// Store operations running at the same time. The writer stops taking entries when
    /// eight times this many are queued, so a slow store slows sessions instead of growing
    /// memory.
    pub max_concurrent_io: usize,
}

impl Default for RecordingOptions {
    fn default() -> Self {
        RecordingOptions {
            channel_capacity: 1024,
            flush_interval: Duration::from_secs(2),
            segment_max_bytes: 1024 * 1024,
            max_concurrent_io: 32,
        }
    }
}

/// The recorder of a connector. Cheap to clone; clones share the writer.
#[derive(Clone, Debug)]
pub struct Recordings {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    tx: mpsc::Sender<Msg>,
    /// Taken by the first `start`.
    unstarted: Mutex<Option<(mpsc::Receiver<Msg>, RecordingOptions)>>,
    hooks: Hooks,
}

impl Recordings {
    /// A recorder writing where the config says. `Dir` is created if missing. `Url` goes
    /// through `object_store::parse_url_opts` with every `AWS_*` environment variable as an
    /// option (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_REGION`, ...);
    /// its path is the key prefix. Call [`Recordings::start`] inside a runtime before use.
    pub fn from_location(loc: &RecordingLocation) -> Result<Recordings, RecordingError> {
        Self::from_location_with(loc, RecordingOptions::default())
    }

    pub fn from_location_with(
        loc: &RecordingLocation,
        options: RecordingOptions,
    ) -> Result<Recordings, RecordingError> {
        let (store, prefix) = store_for(loc, true)?;
        Ok(Self::with_store(store, prefix, options))
    }

    /// A recorder over any store, keys under `prefix`. Call [`Recordings::start`] before use.
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        options: RecordingOptions,
    ) -> Recordings {
        let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
        Recordings {
            inner: Some(Arc::new(Inner {
                store,
                prefix,
                tx,
                unstarted: Mutex::new(Some((rx, options))),
                hooks: Hooks::default(),
            })),
        }
    }

    /// A recorder over a fresh in-memory store (tests, and tools that read back at once).
    pub fn in_memory(options: RecordingOptions) -> Recordings {
        Self::with_store(Arc::new(InMemory::new()), Path::default(), options)
    }

    /// A recorder that records nothing; every call on it returns at once.
    pub fn disabled() -> Recordings {
        Recordings { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Spawns the writer task on the current tokio runtime. Idempotent; a no-op when
    /// disabled. Until it runs, entries queue in the channel and `record` waits once it is
    /// full. Panics outside a tokio runtime.
    pub fn start(&self) {
        let Some(inner) = &self.inner else { return };
        let taken = inner
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((rx, options)) = taken {
            tokio::spawn(writer::run(
                inner.store.clone(),
                rx,
                options,
                inner.hooks.clone(),
            ));
        }
    }

    /// Calls `f` with the index of every recording this recorder finishes, once its final
    /// object and `.meta.json` sidecar are stored. This is the seam for shipping indexes to
    /// a control plane without the writer knowing about one.
    ///
    /// `f` runs on the writer's I/O tasks: keep it short and non-blocking (hand the index to
    /// a channel with `try_send`, or spawn). Hooks added after [`Recordings::start`] apply to
    /// recordings finalised from then on. A no-op when disabled. Recordings restored by
    /// [`recover_incomplete`] do not go through hooks (it returns their keys instead).
    pub fn on_finalized(&self, f: impl Fn(RecordingIndex) + Send + Sync + 'static) {
        if let Some(inner) = &self.inner {
            inner
                .hooks
                .0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::new(f));
        }
    }

    /// Opens the recording of one session. Nothing is sent or stored until the first entry
    /// (or the finish).
    pub fn session(&self, header: SessionHeader) -> SessionRecorder {
        let started_at = clamp_time(header.started_at);
        let dir = self.dir_for(&header.protocol, started_at);
        let index = RecordingIndex {
            recording_id: header.session_id,
            session_id: header.session_id,
            kind: RecordingKind::Queries,
            protocol: header.protocol.clone(),
            resource: header.resource.clone(),
            user: header.user.clone(),
            title: None,
            command: None,
            started_at: index::micros(started_at),
            ended_at: index::micros(started_at),
            size: 0,
            sha256: String::new(),
            object_key: writer::object_key(&dir, header.session_id, RecordingKind::Queries)
                .to_string(),
        };
        let header_line = match &self.inner {
            Some(_) => format::to_line(&RecordLine::Session(SessionLine {
                version: FORMAT_VERSION,
                session_id: header.session_id,
                protocol: header.protocol,
                resource: header.resource,
                database: header.database,
                user: header.user,
                client_addr: header.client_addr,
                started_at,
            })),
            None => Vec::new(),
        };
        SessionRecorder {
            meta: Arc::new(SessionMeta {
                id: header.session_id,
                kind: RecordingKind::Queries,
                dir,
                header_line: header_line.into_boxed_slice(),
                start: monotonic_start(started_at),
                index,
            }),
            tx: self.sender(),
        }
    }

    /// `<prefix>/<protocol>/<YYYY-MM-DD of started_at>`.
    fn dir_for(&self, protocol: &str, started_at: SystemTime) -> Path {
        let prefix = match &self.inner {
            Some(inner) => inner.prefix.clone(),
            None => Path::default(),
        };
        let date = &gate_core::time::rfc3339(started_at)[..10];
        prefix.join(protocol).join(date)
    }

    fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.inner.as_ref().map(|i| i.tx.clone())
    }

    /// Checkpoints every open session now and waits until everything handed to the writer
    /// before this call — including finished sessions' final objects — is in the store.
    pub async fn flush(&self) {
        self.barrier(Msg::Flush).await
    }

    /// Finishes every open session (its `end` line carries the counts the writer saw) and
    /// waits until all recordings are in the store. Call it after the sessions have been
    /// closed: entries recorded later for a session it finished are discarded, while
    /// sessions that had recorded nothing yet are still written when they finish.
    pub async fn shutdown(&self) {
        self.barrier(Msg::Shutdown).await
    }

    async fn barrier(&self, msg: fn(oneshot::Sender<()>) -> Msg) {
        let Some(inner) = &self.inner else { return };
        self.start();
        let (ack, done) = oneshot::channel();
        if inner.tx.send(msg(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// The store and key prefix recordings go to (`None` when disabled).
    pub fn store(&self) -> Option<(Arc<dyn ObjectStore>, Path)> {
        self.inner
            .as_ref()
            .map(|i| (i.store.clone(), i.prefix.clone()))
    }
}

/// The store and key prefix a location names, for readers (the `gate` CLI): the same
/// resolution as [`Recordings::from_location`] (`AWS_*` environment variables for S3), except
/// that a missing directory is an error instead of being created.
pub fn open_store(loc: &RecordingLocation) -> Result<(Arc<dyn ObjectStore>, Path), RecordingError> {
    store_for(loc, false)
}

fn store_for(
    loc: &RecordingLocation,
    create: bool,
) -> Result<(Arc<dyn ObjectStore>, Path), RecordingError> {
    Ok(match loc {
        RecordingLocation::Dir(dir) => (Arc::new(local_store(dir, create)?), Path::default()),
        RecordingLocation::Url(raw) => {
            let url = url::Url::parse(raw).map_err(|e| RecordingError::Url(e.to_string()))?;
            if url.scheme() == "file" {
                let dir = url
                    .to_file_path()
                    .map_err(|()| RecordingError::Url("not a local file path".into()))?;
                (Arc::new(local_store(&dir, create)?), Path::default())
            } else {
                let aws_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
                let (store, prefix) = object_store::parse_url_opts(&url, aws_env)?;
                (Arc::from(store), prefix)
            }
        }
    })
}

fn local_store(dir: &std::path::Path, create: bool) -> Result<LocalFileSystem, RecordingError> {
    let dir_error = |source| RecordingError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if create {
        std::fs::create_dir_all(dir).map_err(dir_error)?;
    } else if !dir.is_dir() {
        return Err(dir_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such directory",
        )));
    }
    Ok(LocalFileSystem::new_with_prefix(dir)?)
}

/// The `Instant` that was `started_at`: replay offsets `t` count from the session's start,
/// on the monotonic clock.
fn monotonic_start(started_at: SystemTime) -> Instant {
    let since_start = SystemTime::now()
        .duration_since(started_at)
        .unwrap_or_default();
    let now = Instant::now();
    now.checked_sub(since_start).unwrap_or(now)
}

/// RFC 3339 formatting panics outside years 1970..=9999; a bogus clock must not.
fn clamp_time(t: SystemTime) -> SystemTime {
    let max = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    t.clamp(UNIX_EPOCH, max)
}

/// What the `session` line says. Credentials have no field here on purpose.
#[derive(Debug, Clone)]
pub struct SessionHeader {
    pub session_id: Uuid,
    pub protocol: String,
    pub resource: String,
    pub database: Option<String>,
    pub user: AuditIdentity,
    pub client_addr: Option<String>,
    pub started_at: SystemTime,
}

/// One request as the pipeline saw it.
#[derive(Debug, Clone)]
pub struct QueryEntry {
    pub statement: std::sync::Arc<str>,
    pub query_type: std::borrow::Cow<'static, str>,
    pub action: Action,
    pub reason: Option<String>,
    pub rows: u64,
    pub duration: Duration,
    pub error: Option<EntryError>,
    /// For channel-like requests (SSH exec, subsystem, port forward): bytes and exit status.
    pub transfer: Option<Transfer>,
}

/// The pipeline's counts for the `end` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub queries: u64,
    pub blocked: u64,
    pub errors: u64,
}

/// The recording of one session.
///
/// Dropping it without [`SessionRecorder::finish`] still finishes the recording; the `end`
/// line then carries the counts of the entries recorded. (From `Drop` the finish is sent with
/// `try_send`, or from a spawned task when the channel is full; with no runtime left it is
/// not sent and [`Recordings::shutdown`] finishes the session instead.)
#[derive(Debug)]
pub struct SessionRecorder {
    meta: Arc<SessionMeta>,
    /// `None` when disabled or once finished.
    tx: Option<mpsc::Sender<Msg>>,
}

impl SessionRecorder {
    /// Records one entry, waiting while the writer's channel is full.
    pub async fn record(&self, entry: QueryEntry) {
        let Some(tx) = &self.tx else { return };
        let blocked = entry.action == Action::Block;
        let error = entry.error.is_some();
        let line = format::query_line(&QueryLine {
            t: self.meta.start.elapsed().as_secs_f64(),
            time: SystemTime::now(),
            statement: entry.statement,
            query_type: entry.query_type,
            action: entry.action,
            reason: entry.reason,
            rows: entry.rows,
            duration_ms: entry.duration.as_secs_f64() * 1000.0,
            error: entry.error,
            transfer: entry.transfer,
        });
        let msg = Msg::Line {
            meta: self.meta.clone(),
            line,
            blocked,
            error,
        };
        if tx.send(msg).await.is_err() {
            tracing::debug!(session_id = %self.meta.id, "recording writer gone; entry not recorded");
        }
    }

    /// Writes the `end` line with the pipeline's counts and completes the recording in the
    /// background. Returns once the writer has the request, not when the object is stored
    /// (see [`Recordings::flush`]).
    pub async fn finish(mut self, summary: SessionSummary) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(self.finish_msg(Some(summary))).await;
        }
        // Only now: if this future is dropped mid-send, `Drop` still finishes the session.
        self.tx = None;
    }

    /// Where the recording lands, relative to the store root (prefix included).
    pub fn object_key(&self) -> String {
        self.meta.key().to_string()
    }

    pub fn session_id(&self) -> Uuid {
        self.meta.id
    }

    fn finish_msg(&self, summary: Option<SessionSummary>) -> Msg {
        Msg::Finish {
            meta: self.meta.clone(),
            summary,
            ended_at: SystemTime::now(),
            duration: self.meta.start.elapsed(),
        }
    }
}

impl Drop for SessionRecorder {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        send_from_drop(tx, vec![self.finish_msg(None)], self.meta.id);
    }
}

/// Sends `msgs` in order from a `Drop`, which cannot await: `try_send` while there is room,
/// the rest from a spawned task. With no runtime left they are not sent, and
/// [`Recordings::shutdown`] finishes the recording instead.
fn send_from_drop(tx: mpsc::Sender<Msg>, msgs: Vec<Msg>, id: Uuid) {
    let mut msgs = msgs.into_iter();
    while let Some(msg) = msgs.next() {
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            for msg in std::iter::once(msg).chain(msgs) {
                                if tx.send(msg).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                    Err(_) => tracing::warn!(
                        recording_id = %id,
                        "recorder dropped outside a runtime with a full channel; \
                         the recording is finished at shutdown"
                    ),
                }
                return;
            }
        }
    }
}
