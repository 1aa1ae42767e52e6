//! The single background writer: owns every open recording, checkpoints them as segment
//! objects and assembles each into its final object when the session finishes.
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
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::format::{self, EndLine, RecordLine};
use crate::{RecordingError, RecordingOptions, SessionSummary};

/// Above this size a finished recording is uploaded as multipart (5 MiB parts) instead of
/// being concatenated in memory.
const IN_MEMORY_ASSEMBLY_MAX: u64 = 8 * 1024 * 1024;
/// Segments fetched ahead while assembling (latency hiding on S3).
const READ_AHEAD: usize = 8;
/// Multipart parts uploading at once per assembly.
const PART_CONCURRENCY: usize = 4;
/// Retries of a failed checkpoint write before its lines are given up.
const SEGMENT_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

/// Immutable facts about a session, shared by its recorder and every message it sends.
#[derive(Debug)]
pub(crate) struct SessionMeta {
    pub id: Uuid,
    /// `<prefix>/<protocol>/<date>`: the final object and its segments live here.
    pub dir: Path,
    /// The serialized `session` line; written only once the session is first recorded.
    pub header_line: Box<[u8]>,
    /// Monotonic start, for `t` and `duration_s`.
    pub start: Instant,
}

impl SessionMeta {
    pub fn key(&self) -> Path {
        self.dir.clone().join(format!("{}.jsonl", self.id))
    }

    fn segment(&self, seq: u32) -> Path {
        self.dir
            .clone()
            .join(format!("{}.jsonl.part-{seq:08}", self.id))
    }
}

/// A segment object name: `<key>.part-<8 digits>`; returns the final key and the number.
fn split_segment(path: &Path) -> Option<(&str, u32)> {
    let (key, seq) = path.as_ref().rsplit_once(".part-")?;
    let valid =
        key.ends_with(".jsonl") && seq.len() == 8 && seq.bytes().all(|b| b.is_ascii_digit());
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
) {
    let mut tick = tokio::time::interval(options.flush_interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_queued = options.max_concurrent_io.max(1) * 8;
    let mut w = Writer {
        store,
        permits: Arc::new(Semaphore::new(options.max_concurrent_io.max(1))),
        options,
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
            msg = rx.recv(), if w.io.len() < max_queued => match msg {
                Some(Msg::Line { meta, line, blocked, error }) => w.line(meta, line, blocked, error),
                Some(Msg::Finish { meta, summary, ended_at, duration }) => {
                    if !w.closed.remove(&meta.id) {
                        w.finish(meta, summary, ended_at, duration);
                    }
                }
                Some(Msg::Flush(ack)) => {
                    w.checkpoint_dirty();
                    w.add_barrier(ack);
                }
                Some(Msg::Shutdown(ack)) => {
                    w.finish_all();
                    w.add_barrier(ack);
                }
                None => {
                    // Every sender is gone: nothing more can arrive.
                    w.finish_all();
                    while let Some(done) = w.io.join_next_with_id().await {
                        w.io_done(done);
                    }
                    return;
                }
            },
        }
    }
}

impl Writer {
    fn line(&mut self, meta: Arc<SessionMeta>, line: Vec<u8>, blocked: bool, error: bool) {
        if self.closed.contains(&meta.id) {
            tracing::debug!(session_id = %meta.id, "entry after shutdown finished the recording; discarded");
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
        st.segments += 1;
        st.inflight += 1;
        let path = st.meta.segment(st.segments);
        let store = self.store.clone();
        let permits = self.permits.clone();
        let handle = self.io.spawn(async move {
            let _permit = permits.acquire_owned().await;
            put_segment(&*store, &path, Bytes::from(data), id).await;
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
        let segments: Vec<Path> = (1..=st.segments).map(|s| st.meta.segment(s)).collect();
        let tail = Bytes::from(st.pending);
        let total = st.bytes;
        let store = self.store.clone();
        let permits = self.permits.clone();
        let handle = self.io.spawn(async move {
            let _permit = permits.acquire_owned().await;
            match assemble(&*store, &key, &segments, tail, total).await {
                Ok(()) => delete_all(&*store, segments).await,
                Err(e) => tracing::error!(
                    session_id = %id, key = %key, error = %e,
                    "could not complete the recording; its segments are kept for recover_incomplete"
                ),
            }
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
            meta,
            dirty: false,
            segments: 0,
            inflight: 0,
            counts: SessionSummary::default(),
            finish_ticket: None,
        }
    }
}

async fn put_segment(store: &dyn ObjectStore, path: &Path, data: Bytes, session: Uuid) {
    let mut delays = SEGMENT_RETRY_DELAYS.iter();
    loop {
        match store.put(path, data.clone().into()).await {
            Ok(_) => return,
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(session_id = %session, path = %path, error = %e, "recording checkpoint failed; retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    tracing::error!(session_id = %session, path = %path, error = %e, "recording checkpoint failed; these lines are lost");
                    return;
                }
            },
        }
    }
}

/// Writes `key` as the concatenation of `segments` (in order) and `tail`. A missing segment
/// is logged and skipped (its write had failed); any other read error aborts, leaving the
/// segments in place.
async fn assemble(
    store: &dyn ObjectStore,
    key: &Path,
    segments: &[Path],
    tail: Bytes,
    total: u64,
) -> Result<(), object_store::Error> {
    if segments.is_empty() {
        store.put(key, tail.into()).await?;
        return Ok(());
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
        store.put(key, all.into_iter().collect()).await?;
        return Ok(());
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
            Ok(bytes) => bytes.into_iter().for_each(|b| upload.put(b)),
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e);
            }
        }
    }
    upload.put(tail);
    upload.finish().await?;
    Ok(())
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
/// (header and the checkpointed entries, no `end` line), deletes the segments, and returns
/// the keys it wrote. Segments of recordings that were completed but not cleaned up are just
/// deleted.
///
/// Run it only while no connector writes under `prefix` (for instance at startup of the one
/// connector using a local directory): the segments of a live session look exactly like
/// those of a crashed one.
pub async fn recover_incomplete(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<Path>, RecordingError> {
    let mut found: BTreeMap<String, Vec<(u32, Path, u64)>> = BTreeMap::new();
    let mut listing = store.list((!prefix.as_ref().is_empty()).then_some(prefix));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if let Some((key, seq)) = split_segment(&meta.location) {
            let key = key.to_string();
            found
                .entry(key)
                .or_default()
                .push((seq, meta.location, meta.size));
        }
    }
    let mut recovered = Vec::new();
    for (key, mut parts) in found {
        parts.sort_by_key(|(seq, _, _)| *seq);
        let key = Path::parse(&key).map_err(object_store::Error::from)?;
        let total = parts.iter().map(|(_, _, size)| size).sum();
        let segments: Vec<Path> = parts.into_iter().map(|(_, path, _)| path).collect();
        match store.head(&key).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                assemble(store, &key, &segments, Bytes::new(), total).await?;
                recovered.push(key);
            }
            Err(e) => return Err(e.into()),
        }
        delete_all(store, segments).await;
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let meta = SessionMeta {
            id: Uuid::nil(),
            dir: Path::from("rec/postgres/2026-01-02"),
            header_line: Box::new([]),
            start: Instant::now(),
        };
        let seg = meta.segment(42);
        let (key, seq) = split_segment(&seg).expect("a segment name");
        assert_eq!(key, meta.key().as_ref());
        assert_eq!(seq, 42);
        assert_eq!(split_segment(&meta.key()), None);
        assert_eq!(split_segment(&Path::from("a/b.jsonl.part-12")), None);
        assert_eq!(split_segment(&Path::from("a/b.txt.part-00000001")), None);
    }
}
