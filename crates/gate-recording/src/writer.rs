//! The single background writer: owns every open recording, checkpoints them as segment
//! objects and assembles each into its final object (plus its index sidecar) when the
//! recording finishes. It handles query and terminal recordings alike: recorders send
//! ready-made lines, and the kind only decides the file extension and the trailer.
//!
//! The writer itself never awaits the store: every store operation runs in its own task (at
//! most `max_concurrent_io` at once), so one slow upload does not stall other sessions.
//! Completions come back through a `JoinSet`; *tickets* number the operations so that
//! `flush`/`shutdown` can wait for exactly the work that was requested before them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::cast;
use crate::format::{self, EndLine, RecordLine};
use crate::index::{self, INDEX_SUFFIX, RecordingIndex, RecordingKind};
use crate::{Hooks, RecordingError, RecordingOptions, SessionSummary};

/// Above this size a finished recording is uploaded as multipart (5 MiB parts) instead of
/// being concatenated in memory.
const IN_MEMORY_ASSEMBLY_MAX: u64 = 8 * 1024 * 1024;
/// Segments fetched ahead while assembling (latency hiding on S3).
const READ_AHEAD: usize = 8;
/// Multipart parts uploading at once per assembly.
const PART_CONCURRENCY: usize = 4;
/// Messages taken per wake-up before other work (store completions, ticks) gets a turn.
const DRAIN_MAX: usize = 1024;
/// After a wake-up the writer waits this long before taking messages again, so that under
/// load messages are picked up in batches rather than one wake-up each.
const COALESCE: Duration = Duration::from_millis(2);
/// Retries of a failed checkpoint write before its lines are given up.
const SEGMENT_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Suffix of the index stub a terminal recording writes with its first checkpoint.
const STUB_SUFFIX: &str = ".open.json";
/// Longest first or last line `recover_incomplete` keeps to rebuild an index.
const RECOVER_LINE_MAX: usize = 1024 * 1024;

/// Immutable facts about a recording, shared by its recorder and every message it sends.
#[derive(Debug)]
pub(crate) struct SessionMeta {
    /// The recording id (the session id for query recordings).
    pub id: Uuid,
    pub kind: RecordingKind,
    /// `<prefix>/<protocol>/<date>`: the final object and its segments live here.
    pub dir: Path,
    /// The serialized header line; written only once the recording gets its first line.
    pub header_line: Box<[u8]>,
    /// Monotonic start, for `t` and `duration_s`.
    pub start: Instant,
    /// The index as known at the start; the writer fills in end, size and digest.
    pub index: RecordingIndex,
}

pub(crate) fn object_key(dir: &Path, id: Uuid, kind: RecordingKind) -> Path {
    dir.clone().join(format!("{id}.{}", kind.extension()))
}

impl SessionMeta {
    pub fn key(&self) -> Path {
        object_key(&self.dir, self.id, self.kind)
    }

    /// `<key><suffix>`, next to the final object.
    fn sibling(&self, suffix: &str) -> Path {
        let name = format!("{}.{}{suffix}", self.id, self.kind.extension());
        self.dir.clone().join(name)
    }

    fn segment(&self, seq: u32) -> Path {
        self.sibling(&format!(".part-{seq:08}"))
    }

    fn index_key(&self) -> Path {
        self.sibling(INDEX_SUFFIX)
    }

    /// Where the index stub goes, for the kinds whose content alone cannot rebuild the
    /// index: an asciicast header has no session id, user or resource.
    fn stub(&self) -> Option<Path> {
        (self.kind == RecordingKind::Terminal).then(|| self.sibling(STUB_SUFFIX))
    }
}

/// A segment object name: `<key>.part-<8 digits>`; returns the final key and the number.
fn split_segment(path: &Path) -> Option<(&str, u32)> {
    let (key, seq) = path.as_ref().rsplit_once(".part-")?;
    let valid = RecordingKind::of_key(key).is_some()
        && seq.len() == 8
        && seq.bytes().all(|b| b.is_ascii_digit());
    Some((key, seq.parse().ok().filter(|_| valid)?))
}

pub(crate) enum Msg {
    Line {
        meta: Arc<SessionMeta>,
        line: Vec<u8>,
        blocked: bool,
        error: bool,
    },
    Finish {
        meta: Arc<SessionMeta>,
        /// `None` when the recorder was dropped: the writer's own counts are used.
        summary: Option<SessionSummary>,
        ended_at: SystemTime,
        duration: Duration,
    },
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A session that has recorded something and is not yet handed to its final assembly.
struct SessionState {
    meta: Arc<SessionMeta>,
    /// Lines since the last checkpoint. Emptied (capacity freed) by every checkpoint, so an
    /// idle session holds no buffer.
    pending: Vec<u8>,
    /// Size of the last checkpointed segment: a session that comes back to life gets a
    /// buffer of that size at once, instead of growing one by doubling (a copy each time)
    /// through every checkpoint interval.
    last_segment: usize,
    /// Whether the session is in `Writer::dirty`.
    dirty: bool,
    /// Segments created so far, numbered from 1.
    segments: u32,
    /// Segment writes not yet completed; the final assembly waits for them.
    inflight: u32,
    /// Bytes of the whole recording so far.
    bytes: u64,
    counts: SessionSummary,
    /// Set once finished: the ticket its final assembly will complete.
    finish_ticket: Option<u64>,
    /// When the recording finished, for its index.
    ended_at: Option<SystemTime>,
}

enum JobKind {
    Segment,
    Finalize,
}

struct Job {
    ticket: u64,
    session: Uuid,
    kind: JobKind,
}

struct Writer {
    store: Arc<dyn ObjectStore>,
    options: RecordingOptions,
    hooks: Hooks,
    sessions: HashMap<Uuid, SessionState>,
    /// Sessions with lines since the last tick.
    dirty: Vec<Uuid>,
    /// Sessions finished by `shutdown` whose recorders still exist: their later entries are
    /// discarded instead of starting a second, truncated recording over the finished one.
    closed: HashSet<Uuid>,
    io: JoinSet<()>,
    jobs: HashMap<Id, Job>,
    permits: Arc<Semaphore>,
    next_ticket: u64,
    outstanding: BTreeSet<u64>,
    /// `flush`/`shutdown` callers: released once every ticket below theirs is done.
    barriers: Vec<(u64, oneshot::Sender<()>)>,
}

pub(crate) async fn run(
    store: Arc<dyn ObjectStore>,
    mut rx: mpsc::Receiver<Msg>,
    options: RecordingOptions,
    hooks: Hooks,
) {
    let every = options.flush_interval.max(Duration::from_millis(1));
    // The first checkpoint is one interval away (`interval` would fire at once, splitting
    // the first lines of a recording into a segment of their own for no gain).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_queued = options.max_concurrent_io.max(1) * 8;
    let mut w = Writer {
        store,
        permits: Arc::new(Semaphore::new(options.max_concurrent_io.max(1))),
        options,
        hooks,
        sessions: HashMap::new(),
        dirty: Vec::new(),
        closed: HashSet::new(),
        io: JoinSet::new(),
        jobs: HashMap::new(),
        next_ticket: 0,
        outstanding: BTreeSet::new(),
        barriers: Vec::new(),
    };
    loop {
        tokio::select! {
            Some(done) = w.io.join_next_with_id(), if !w.io.is_empty() => w.io_done(done),
            _ = tick.tick() => w.checkpoint_dirty(),
            // Not taking messages while too much store work is queued is what turns a slow
            // store into backpressure on the sessions.
            msg = rx.recv(), if w.io.len() < max_queued => {
                let mut next = msg;
                let mut taken = 0;
                loop {
                    let Some(msg) = next else {
                        // Every sender is gone: nothing more can arrive.
                        w.finish_all();
                        while let Some(done) = w.io.join_next_with_id().await {
                            w.io_done(done);
                        }
                        return;
                    };
                    w.handle(msg);
                    taken += 1;
                    if taken >= DRAIN_MAX || w.io.len() >= max_queued {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                }
                // Let entries accumulate for a moment instead of being woken for each one:
                // under load a recorded request then costs a channel push, not a task
                // wake-up (and often a thread wake-up) per request.
                tokio::time::sleep(COALESCE).await;
            }
        }
    }
}

impl Writer {
    /// Applies one message. Every kind goes through here, whether it came from a blocking
    /// receive or from draining the channel.
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line {
                meta,
                line,
                blocked,
                error,
            } => self.line(meta, line, blocked, error),
            Msg::Finish {
                meta,
                summary,
                ended_at,
                duration,
            } => {
                if !self.closed.remove(&meta.id) {
                    self.finish(meta, summary, ended_at, duration);
                }
            }
            Msg::Flush(ack) => {
                self.checkpoint_dirty();
                self.add_barrier(ack);
            }
            Msg::Shutdown(ack) => {
                self.finish_all();
                self.add_barrier(ack);
            }
        }
    }

    fn line(&mut self, meta: Arc<SessionMeta>, line: Vec<u8>, blocked: bool, error: bool) {
        if self.closed.contains(&meta.id) {
            tracing::debug!(recording_id = %meta.id, "entry after shutdown finished the recording; discarded");
            return;
        }
        let id = meta.id;
        let st = self
            .sessions
            .entry(id)
            .or_insert_with(|| SessionState::new(meta));
        if st.finish_ticket.is_some() {
            return; // unreachable through the API: `finish` consumes the recorder
        }
        st.bytes += line.len() as u64;
        if st.pending.capacity() == 0 {
            st.pending.reserve(st.last_segment.max(line.len()));
        }
        st.pending.extend_from_slice(&line);
        st.counts.queries += 1;
        st.counts.blocked += u64::from(blocked);
        st.counts.errors += u64::from(error);
        if !st.dirty {
            st.dirty = true;
            self.dirty.push(id);
        }
        if st.pending.len() >= self.options.segment_max_bytes {
            self.spawn_segment(id);
        }
    }

    fn finish(
        &mut self,
        meta: Arc<SessionMeta>,
        summary: Option<SessionSummary>,
        ended_at: SystemTime,
        duration: Duration,
    ) {
        let id = meta.id;
        // A session that never recorded anything still gets header + end.
        let st = self
            .sessions
            .entry(id)
            .or_insert_with(|| SessionState::new(meta));
        if st.finish_ticket.is_some() {
            return;
        }
        if st.meta.kind == RecordingKind::Queries {
            let summary = summary.unwrap_or(st.counts);
            let end = format::to_line(&RecordLine::End(EndLine {
                ended_at,
                duration_s: duration.as_secs_f64(),
                queries: summary.queries,
                blocked: summary.blocked,
                errors: summary.errors,
            }));
            st.bytes += end.len() as u64;
            st.pending.extend_from_slice(&end);
        }
        // asciicast has no trailer: a terminal recording ends with its last event.
        st.ended_at = Some(ended_at);
        let ready = st.inflight == 0;
        let ticket = self.ticket();
        if let Some(st) = self.sessions.get_mut(&id) {
            st.finish_ticket = Some(ticket);
        }
        if ready {
            self.spawn_finalize(id);
        }
    }

    /// Finishes every open session with the writer's own counts (graceful shutdown).
    fn finish_all(&mut self) {
        let open: Vec<Arc<SessionMeta>> = self
            .sessions
            .values()
            .filter(|st| st.finish_ticket.is_none())
            .map(|st| st.meta.clone())
            .collect();
        for meta in open {
            self.closed.insert(meta.id);
            let duration = meta.start.elapsed();
            self.finish(meta, None, SystemTime::now(), duration);
        }
    }

    fn checkpoint_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(st) = self.sessions.get_mut(&id) else {
                continue;
            };
            st.dirty = false;
            if st.finish_ticket.is_none() && !st.pending.is_empty() {
                self.spawn_segment(id);
            }
        }
    }

    fn ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.outstanding.insert(t);
        t
    }

    fn spawn_segment(&mut self, id: Uuid) {
        let ticket = self.ticket();
        let Some(st) = self.sessions.get_mut(&id) else {
            return;
        };
        let data = std::mem::take(&mut st.pending);
        st.last_segment = data.len().min(self.options.segment_max_bytes);
        st.segments += 1;
        st.inflight += 1;
        let path = st.meta.segment(st.segments);
        // The stub goes before the first segment, so segments never exist without it.
        let stub = match st.meta.stub() {
            Some(stub) if st.segments == 1 => Some((stub, Bytes::from(st.meta.index.to_json()))),
            _ => None,
        };
        let store = self.store.clone();
        let permits = self.permits.clone();
        let handle = self.io.spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Some((stub, json)) = stub {
                put_retrying(&*store, &stub, json, id, Put::Stub).await;
            }
            put_retrying(&*store, &path, Bytes::from(data), id, Put::Segment).await;
        });
        self.jobs.insert(
            handle.id(),
            Job {
                ticket,
                session: id,
                kind: JobKind::Segment,
            },
        );
    }

    fn spawn_finalize(&mut self, id: Uuid) {
        let Some(st) = self.sessions.remove(&id) else {
            return;
        };
        let Some(ticket) = st.finish_ticket else {
            return;
        };
        let key = st.meta.key();
        let index_key = st.meta.index_key();
        let mut leftovers: Vec<Path> = (1..=st.segments).map(|s| st.meta.segment(s)).collect();
        let segment_count = leftovers.len();
        if segment_count > 0 {
            leftovers.extend(st.meta.stub());
        }
        let mut index = st.meta.index.clone();
        index.ended_at = index::micros(st.ended_at.unwrap_or_else(SystemTime::now));
        let tail = Bytes::from(st.pending);
        let total = st.bytes;
        let store = self.store.clone();
        let permits = self.permits.clone();
        let hooks = self.hooks.clone();
        let handle = self.io.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let segments = &leftovers[..segment_count];
            let digest = match assemble(&*store, &key, segments, tail, total).await {
                Ok(digest) => digest,
                Err(e) => {
                    tracing::error!(
                        recording_id = %id, key = %key, error = %e,
                        "could not complete the recording; its segments are kept for recover_incomplete"
                    );
                    return;
                }
            };
            index.size = digest.size;
            index.sha256 = digest.sha256;
            let json = Bytes::from(index.to_json());
            if put_retrying(&*store, &index_key, json, id, Put::Index).await {
                delete_all(&*store, leftovers).await;
            } else {
                // `recover_incomplete` rebuilds the index of a stored recording that has none
                // (a terminal one from its stub, kept here with the segments).
                tracing::error!(
                    recording_id = %id, key = %key,
                    "the recording is stored without its index; recover_incomplete can rebuild it"
                );
            }
            hooks.notify(&index);
        });
        self.jobs.insert(
            handle.id(),
            Job {
                ticket,
                session: id,
                kind: JobKind::Finalize,
            },
        );
    }

    fn io_done(&mut self, done: Result<(Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                tracing::error!(error = %e, "recording store task failed");
                e.id()
            }
        };
        if let Some(job) = self.jobs.remove(&id) {
            self.outstanding.remove(&job.ticket);
            if let JobKind::Segment = job.kind
                && let Some(st) = self.sessions.get_mut(&job.session)
            {
                st.inflight -= 1;
                if st.inflight == 0 && st.finish_ticket.is_some() {
                    self.spawn_finalize(job.session);
                }
            }
        }
        self.release_barriers();
    }

    fn add_barrier(&mut self, ack: oneshot::Sender<()>) {
        self.barriers.push((self.next_ticket, ack));
        self.release_barriers();
    }

    fn release_barriers(&mut self) {
        let oldest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let (done, waiting) = std::mem::take(&mut self.barriers)
            .into_iter()
            .partition(|(ticket, _)| *ticket <= oldest);
        self.barriers = waiting;
        for (_, ack) in done {
            let _ = ack.send(());
        }
    }
}

impl SessionState {
    fn new(meta: Arc<SessionMeta>) -> Self {
        let pending = meta.header_line.to_vec();
        SessionState {
            bytes: pending.len() as u64,
            pending,
            last_segment: 0,
            meta,
            dirty: false,
            segments: 0,
            inflight: 0,
            counts: SessionSummary::default(),
            finish_ticket: None,
            ended_at: None,
        }
    }
}

/// A `put` retried a couple of times; `what` names it in the log. Returns whether it landed.
async fn put_retrying(
    store: &dyn ObjectStore,
    path: &Path,
    data: Bytes,
    recording: Uuid,
    what: Put,
) -> bool {
    let (what, consequence) = match what {
        Put::Segment => ("recording checkpoint", "these lines are lost"),
        Put::Stub => (
            "recording index stub",
            "a crash would leave this recording without an index",
        ),
        Put::Index => ("recording index", "given up"),
    };
    let mut delays = SEGMENT_RETRY_DELAYS.iter();
    loop {
        match store.put(path, data.clone().into()).await {
            Ok(_) => return true,
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(recording_id = %recording, path = %path, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    tracing::error!(recording_id = %recording, path = %path, error = %e, "{what} failed; {consequence}");
                    return false;
                }
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Put {
    Segment,
    Stub,
    Index,
}

/// Size and SHA-256 of what was stored, computed from the very bytes handed to the store.
struct Digest256 {
    size: u64,
    sha256: String,
}

#[derive(Default)]
struct Hashing {
    hasher: Sha256,
    size: u64,
}

impl Hashing {
    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> Digest256 {
        Digest256 {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// Writes `key` as the concatenation of `segments` (in order) and `tail`, hashing exactly
/// the bytes handed to the store. A missing segment is logged and skipped (its write had
/// failed); any other read error aborts, leaving the segments in place.
async fn assemble(
    store: &dyn ObjectStore,
    key: &Path,
    segments: &[Path],
    tail: Bytes,
    total: u64,
) -> Result<Digest256, object_store::Error> {
    let mut hashing = Hashing::default();
    if segments.is_empty() {
        hashing.update(&tail);
        store.put(key, tail.into()).await?;
        return Ok(hashing.finish());
    }
    let mut parts = stream::iter(segments.iter().cloned())
        .map(|path| read_segment(store, path))
        .buffered(READ_AHEAD);
    if total <= IN_MEMORY_ASSEMBLY_MAX {
        let mut all = Vec::with_capacity(segments.len() + 1);
        while let Some(part) = parts.next().await {
            all.extend(part?);
        }
        all.push(tail);
        all.iter().for_each(|b| hashing.update(b));
        store.put(key, all.into_iter().collect()).await?;
        return Ok(hashing.finish());
    }
    let mut upload = WriteMultipart::new(store.put_multipart(key).await?);
    while let Some(part) = parts.next().await {
        let step = match part {
            Ok(bytes) => upload
                .wait_for_capacity(PART_CONCURRENCY)
                .await
                .map(|()| bytes),
            Err(e) => Err(e),
        };
        match step {
            Ok(bytes) => bytes.into_iter().for_each(|b| {
                hashing.update(&b);
                upload.put(b)
            }),
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e);
            }
        }
    }
    hashing.update(&tail);
    upload.put(tail);
    upload.finish().await?;
    Ok(hashing.finish())
}

async fn read_segment(
    store: &dyn ObjectStore,
    path: Path,
) -> Result<Option<Bytes>, object_store::Error> {
    match store.get(&path).await {
        Ok(found) => found.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => {
            tracing::error!(path = %path, "recording segment missing; its lines are lost");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn delete_all(store: &dyn ObjectStore, paths: Vec<Path>) {
    if paths.is_empty() {
        return;
    }
    let mut deleted = store.delete_stream(stream::iter(paths.into_iter().map(Ok)).boxed());
    while let Some(result) = deleted.next().await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not delete a recording segment");
        }
    }
}

/// Turns the segments a crashed connector left under `prefix` into regular recordings
/// (header and the checkpointed lines; a query recording has no `end` line), writes their
/// index sidecars, deletes the segments, and returns the keys it assembled. Segments of
/// recordings that were completed but not cleaned up are just deleted.
///
/// It also writes the missing `.meta.json` of any recording that has none (an index write
/// that failed, or recordings made before indexes existed), reading each such recording
/// once. A terminal recording's index needs its `.open.json` stub; without one it is left
/// unindexed (logged).
///
/// Run it only while no connector writes under `prefix` (for instance at startup of the one
/// connector using a local directory): the segments of a live session look exactly like
/// those of a crashed one.
pub async fn recover_incomplete(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<Path>, RecordingError> {
    let mut found: BTreeMap<String, Leftovers> = BTreeMap::new();
    let mut listing = store.list((!prefix.as_ref().is_empty()).then_some(prefix));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let name = meta.location.as_ref();
        let recording = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|key| RecordingKind::of_key(key).is_some())
                .map(str::to_string)
        };
        if let Some((key, seq)) = split_segment(&meta.location) {
            let key = key.to_string();
            let entry = found.entry(key).or_default();
            entry.segments.push((seq, meta.location, meta.size));
        } else if let Some(key) = recording(STUB_SUFFIX) {
            found.entry(key).or_default().stub = Some(meta.location);
        } else if let Some(key) = recording(INDEX_SUFFIX) {
            found.entry(key).or_default().indexed = true;
        } else if let Some(key) = recording("") {
            found.entry(key).or_default().stored = true;
        }
    }
    let mut recovered = Vec::new();
    for (key, mut left) in found {
        left.segments.sort_by_key(|(seq, _, _)| *seq);
        let key = Path::parse(&key).map_err(object_store::Error::from)?;
        let total = left.segments.iter().map(|(_, _, size)| size).sum();
        let mut leftovers: Vec<Path> = left.segments.into_iter().map(|(_, p, _)| p).collect();
        if !left.stored && !leftovers.is_empty() {
            assemble(store, &key, &leftovers, Bytes::new(), total).await?;
            left.stored = true;
            recovered.push(key.clone());
        }
        if left.stored && !left.indexed {
            write_recovered_index(store, &key, left.stub.as_ref()).await?;
        }
        // A stub without segments or object is from a crash between the two writes.
        leftovers.extend(left.stub);
        delete_all(store, leftovers).await;
    }
    Ok(recovered)
}

/// What a listing shows about one recording key.
#[derive(Default)]
struct Leftovers {
    segments: Vec<(u32, Path, u64)>,
    stub: Option<Path>,
    stored: bool,
    indexed: bool,
}

/// Rebuilds the index of a stored recording from its content (and stub), and stores it.
/// A recording it cannot make sense of is logged and left without index: recovery goes on
/// with the others.
async fn write_recovered_index(
    store: &dyn ObjectStore,
    key: &Path,
    stub: Option<&Path>,
) -> Result<(), RecordingError> {
    let Some(kind) = RecordingKind::of_key(key.as_ref()) else {
        return Ok(());
    };
    let mut scan = Scan::default();
    let mut content = store.get(key).await?.into_stream();
    while let Some(chunk) = content.next().await {
        scan.feed(&chunk?);
    }
    let (digest, first, last) = scan.finish();
    let base = match kind {
        RecordingKind::Queries => index_from_session_line(&first),
        RecordingKind::Terminal => match stub {
            Some(stub) => {
                let bytes = store.get(stub).await?.bytes().await?;
                serde_json::from_slice::<RecordingIndex>(&bytes).ok()
            }
            None => None,
        },
    };
    let Some(mut index) = base else {
        tracing::warn!(key = %key, "cannot rebuild the index of this recording; it stays unlisted");
        return Ok(());
    };
    index.ended_at = index::micros(recovered_end(kind, index.started_at, &last));
    index.size = digest.size;
    index.sha256 = digest.sha256;
    index.object_key = key.to_string();
    let index_key =
        Path::parse(format!("{key}{INDEX_SUFFIX}")).map_err(object_store::Error::from)?;
    store.put(&index_key, index.to_json().into()).await?;
    Ok(())
}

fn index_from_session_line(line: &[u8]) -> Option<RecordingIndex> {
    let RecordLine::Session(head) = serde_json::from_slice(line).ok()? else {
        return None;
    };
    Some(RecordingIndex {
        recording_id: head.session_id,
        session_id: head.session_id,
        kind: RecordingKind::Queries,
        protocol: head.protocol,
        resource: head.resource,
        user: head.user,
        title: None,
        command: None,
        started_at: head.started_at,
        ended_at: head.started_at,
        size: 0,
        sha256: String::new(),
        object_key: String::new(),
    })
}

/// The end of a recovered recording: its `end` line, else its last line's offset.
fn recovered_end(kind: RecordingKind, started_at: SystemTime, last: &[u8]) -> SystemTime {
    let offset = match kind {
        RecordingKind::Queries => match serde_json::from_slice(last) {
            Ok(RecordLine::End(end)) => return end.ended_at,
            Ok(RecordLine::Query(q)) => Some(q.t),
            _ => None,
        },
        RecordingKind::Terminal => cast::event_time(last),
    };
    offset
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .and_then(|t| started_at.checked_add(t))
        .unwrap_or(started_at)
}

/// Streams over a recording once: digest, first and last non-blank lines.
#[derive(Default)]
struct Scan {
    hashing: Hashing,
    first: Option<Vec<u8>>,
    last: Vec<u8>,
    current: Vec<u8>,
    /// The current line is longer than `RECOVER_LINE_MAX` and is not kept.
    overflow: bool,
}

impl Scan {
    fn feed(&mut self, mut chunk: &[u8]) {
        self.hashing.update(chunk);
        while let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
            self.push(&chunk[..pos]);
            self.end_line();
            chunk = &chunk[pos + 1..];
        }
        self.push(chunk);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.current.len() + bytes.len() <= RECOVER_LINE_MAX {
            self.current.extend_from_slice(bytes);
        } else {
            self.overflow = true;
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.current);
        let overflow = std::mem::take(&mut self.overflow);
        if line.trim_ascii().is_empty() && !overflow {
            return;
        }
        let line = if overflow { Vec::new() } else { line };
        if self.first.is_none() {
            self.first = Some(line.clone());
        }
        self.last = line;
    }

    fn finish(mut self) -> (Digest256, Vec<u8>, Vec<u8>) {
        self.end_line();
        let first = self.first.unwrap_or_default();
        (self.hashing.finish(), first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: RecordingKind) -> SessionMeta {
        let dir = Path::from("rec/postgres/2026-01-02");
        SessionMeta {
            id: Uuid::nil(),
            kind,
            header_line: Box::new([]),
            start: Instant::now(),
            index: RecordingIndex {
                recording_id: Uuid::nil(),
                session_id: Uuid::nil(),
                kind,
                protocol: "postgres".into(),
                resource: "db".into(),
                user: gate_core::audit::AuditIdentity {
                    sub: "u".into(),
                    name: "alice".into(),
                    email: None,
                },
                title: None,
                command: None,
                started_at: SystemTime::UNIX_EPOCH,
                ended_at: SystemTime::UNIX_EPOCH,
                size: 0,
                sha256: String::new(),
                object_key: object_key(&dir, Uuid::nil(), kind).to_string(),
            },
            dir,
        }
    }

    #[test]
    fn segment_names_round_trip() {
        for kind in [RecordingKind::Queries, RecordingKind::Terminal] {
            let meta = meta(kind);
            let seg = meta.segment(42);
            let (key, seq) = split_segment(&seg).expect("a segment name");
            assert_eq!(key, meta.key().as_ref());
            assert_eq!(key, meta.index.object_key);
            assert!(key.ends_with(kind.extension()));
            assert_eq!(seq, 42);
            assert_eq!(split_segment(&meta.key()), None);
            assert_eq!(meta.index_key().as_ref(), format!("{key}.meta.json"));
        }
        assert_eq!(meta(RecordingKind::Queries).stub(), None);
        assert_eq!(
            meta(RecordingKind::Terminal).stub().unwrap().as_ref(),
            "rec/postgres/2026-01-02/00000000-0000-0000-0000-000000000000.cast.open.json"
        );
        assert_eq!(split_segment(&Path::from("a/b.jsonl.part-12")), None);
        assert_eq!(split_segment(&Path::from("a/b.txt.part-00000001")), None);
        assert_eq!(
            split_segment(&Path::from("a/b.cast.part-00000001")),
            Some(("a/b.cast", 1))
        );
    }

    #[test]
    fn scan_keeps_first_and_last_lines_across_chunks() {
        let text = b"first line\n\nmiddle\nlast one\n\n";
        for split in 0..text.len() {
            let mut scan = Scan::default();
            scan.feed(&text[..split]);
            scan.feed(&text[split..]);
            let (digest, first, last) = scan.finish();
            assert_eq!(first, b"first line");
            assert_eq!(last, b"last one");
            assert_eq!(digest.size, text.len() as u64);
            assert_eq!(digest.sha256, crate::sha256_hex(text));
        }
        let mut scan = Scan::default();
        scan.feed(b"no newline at the end");
        let (_, first, last) = scan.finish();
        assert_eq!(
            (first.as_slice(), last.as_slice()),
            (&b"no newline at the end"[..], &b"no newline at the end"[..])
        );
    }
}
