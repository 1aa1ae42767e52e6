//! Audit: every session start/end, auth failure and policy decision becomes an
//! [`AuditEvent`] that reaches a sink — never dropped.
//!
//! Sessions hand events to an [`AuditLog`] through a bounded channel; one background writer
//! drains it in batches into an [`AuditSink`]. A full channel makes the session wait
//! (backpressure) instead of losing events; a failing sink is retried until it recovers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_core::AuditEvent;
use tokio::sync::{mpsc, oneshot};

/// Where audit events end up. Implementations run on a dedicated thread, so they may block.
pub trait AuditSink: Send + 'static {
    /// Writes a batch. On error the same batch is offered again later.
    fn write_batch(&mut self, events: &[AuditEvent]) -> std::io::Result<()>;

    /// Forces what was written to stable storage. The writer calls it at most every
    /// sync interval, before answering a flush, and at close.
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends events as JSON Lines to a file; [`AuditSink::sync`] is an fdatasync.
///
/// The path may also name a pipe or a character device (`/dev/stdout` for a container's log
/// collector): events are written to it the same way, and there is nothing to sync, since
/// whoever reads the other end owns their durability.
pub struct JsonlFileSink {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Whether the open file is a regular file, the only kind fdatasync applies to (it
    /// fails with EINVAL on a pipe or a terminal, and retrying that would stall every
    /// session behind the audit log).
    syncable: bool,
    buf: Vec<u8>,
}

impl JsonlFileSink {
    pub fn new(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut sink = JsonlFileSink {
            path: path.to_path_buf(),
            file: None,
            syncable: true,
            buf: Vec::with_capacity(64 * 1024),
        };
        sink.open()?;
        Ok(sink)
    }

    fn open(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.syncable = file.metadata()?.file_type().is_file();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

impl AuditSink for JsonlFileSink {
    fn write_batch(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        self.buf.clear();
        for e in events {
            e.write_json_line(&mut self.buf);
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.open().and_then(|f| f.write_all(&buf));
        self.buf = buf;
        if result.is_err() {
            // Reopen next time (the file may have been rotated or the disk remounted).
            self.file = None;
        }
        result
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.open()?;
        if !self.syncable {
            return Ok(());
        }
        let result = self.open().and_then(|f| f.sync_data());
        if result.is_err() {
            self.file = None;
        }
        result
    }
}

/// Collects events in memory; for tests.
#[derive(Clone, Default)]
pub struct MemorySink(pub std::sync::Arc<std::sync::Mutex<Vec<AuditEvent>>>);

impl AuditSink for MemorySink {
    fn write_batch(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        self.0.lock().expect("poisoned").extend_from_slice(events);
        Ok(())
    }
}

// Events travel unboxed: a box per event would be allocated by a session's thread and
// freed by the writer's, once per audited statement.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
    /// Write everything before this, then stop (shutdown, whoever still holds a handle).
    Close,
}

/// Handle sessions use to emit events. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

const BATCH: usize = 512;
/// After writing a batch the writer rests this long before looking again, so a busy gateway
/// does not wake it (a context switch) for every single event: events queue meanwhile and go
/// out together. Bounds how long an event waits before it is on disk.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

impl AuditLog {
    /// Starts the background writer thread for `sink`, syncing every batch.
    /// `capacity` bounds the events in flight.
    pub fn start(sink: impl AuditSink, capacity: usize) -> (AuditLog, AuditWriter) {
        Self::start_with_sync(sink, capacity, Duration::ZERO)
    }

    /// Like [`AuditLog::start`], forcing written events to disk at most every
    /// `sync_interval` (and whenever a flush or close asks for it).
    pub fn start_with_sync(
        sink: impl AuditSink,
        capacity: usize,
        sync_interval: Duration,
    ) -> (AuditLog, AuditWriter) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("gate-audit".into())
            .spawn(move || writer_loop(sink, rx, sync_interval))
            .expect("spawn audit writer thread");
        (
            AuditLog { tx },
            AuditWriter {
                thread: Some(thread),
            },
        )
    }

    /// Queues an event; waits when the writer is behind. Never drops the event while the
    /// writer runs; once the writer has stopped (shutdown) the event is logged instead.
    pub async fn emit(&self, event: AuditEvent) {
        if let Err(mpsc::error::SendError(Msg::Event(e))) = self.tx.send(Msg::Event(event)).await {
            tracing::error!(event = ?e, "audit writer stopped; event written to the log only");
        }
    }

    /// Writes everything emitted so far and stops the writer, even while other handles
    /// exist (shutdown). Events emitted afterwards are logged, not written.
    pub async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }

    /// Waits until every event emitted before this call has been written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Owns the writer thread; [`AuditWriter::join`] waits for it after every [`AuditLog`] is gone.
pub struct AuditWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Waits (off the async runtime) for the writer to drain everything and stop.
    pub async fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Retries `op` with backoff until it succeeds: an audit event is never given up on.
fn until_ok(what: &str, pending: usize, mut op: impl FnMut() -> std::io::Result<()>) {
    let mut backoff = Duration::from_millis(50);
    while let Err(e) = op() {
        tracing::error!(error = %e, pending, "audit sink {what} failed; retrying");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn writer_loop(mut sink: impl AuditSink, mut rx: mpsc::Receiver<Msg>, sync_interval: Duration) {
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    let mut closing = false;
    // When written events last reached the disk, and whether some since have not.
    let mut synced_at = std::time::Instant::now();
    let mut unsynced = false;
    loop {
        let first = if unsynced {
            // Something awaits its sync: keep looking for events, and sync when due even
            // if none come.
            match rx.try_recv() {
                Ok(msg) => msg,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if synced_at.elapsed() >= sync_interval {
                        until_ok("sync", 0, || sink.sync());
                        synced_at = std::time::Instant::now();
                        unsynced = false;
                    } else {
                        std::thread::sleep(BATCH_WINDOW);
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    until_ok("sync", 0, || sink.sync());
                    return;
                }
            }
        } else {
            match rx.blocking_recv() {
                Some(msg) => msg,
                None => return,
            }
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(done) => waiters.push(done),
                Msg::Close => closing = true,
            }
            if batch.len() < BATCH && !closing {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            until_ok("write", batch.len(), || sink.write_batch(&batch));
            batch.clear();
            unsynced = true;
        }
        if unsynced && (closing || !waiters.is_empty() || synced_at.elapsed() >= sync_interval) {
            until_ok("sync", 0, || sink.sync());
            synced_at = std::time::Instant::now();
            unsynced = false;
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if closing {
            return;
        }
        std::thread::sleep(BATCH_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::AuditKind;
    use uuid::Uuid;

    struct FlakySink {
        fail_first: usize,
        inner: MemorySink,
    }

    impl AuditSink for FlakySink {
        fn write_batch(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err(std::io::Error::other("disk full"));
            }
            self.inner.write_batch(events)
        }
    }

    #[tokio::test]
    async fn nothing_is_lost_under_backpressure_and_sink_errors() {
        let mem = MemorySink::default();
        let (log, writer) = AuditLog::start(
            FlakySink {
                fail_first: 2,
                inner: mem.clone(),
            },
            4,
        );
        let mut ids = Vec::new();
        for _ in 0..2000 {
            let e = AuditEvent::new(AuditKind::PolicyDecision);
            ids.push(e.id);
            log.emit(e).await;
        }
        log.flush().await;
        let got: Vec<_> = mem.0.lock().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(got, ids);
        drop(log);
        writer.join().await;
    }

    /// Counts writes and syncs, and how many events were written when each sync happened.
    #[derive(Clone, Default)]
    struct SyncCounter(std::sync::Arc<std::sync::Mutex<(usize, Vec<usize>)>>);

    impl AuditSink for SyncCounter {
        fn write_batch(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
            self.0.lock().unwrap().0 += events.len();
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            let mut g = self.0.lock().unwrap();
            let written = g.0;
            g.1.push(written);
            Ok(())
        }
    }

    #[tokio::test]
    async fn syncs_are_spaced_but_never_skipped() {
        let sink = SyncCounter::default();
        let (log, writer) = AuditLog::start_with_sync(sink.clone(), 64, Duration::from_millis(300));
        // A burst: written in several batches, synced far fewer times.
        for _ in 0..50 {
            log.emit(AuditEvent::new(AuditKind::PolicyDecision)).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // With no further events, the last ones still reach the disk within the interval.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (written, syncs) = sink.0.lock().unwrap().clone();
            if written == 50 && syncs.last() == Some(&50) {
                assert!(
                    syncs.len() <= 3,
                    "synced {} times for one burst",
                    syncs.len()
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never synced: {syncs:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A flush means on disk: it syncs at once.
        log.emit(AuditEvent::new(AuditKind::SessionEnd)).await;
        log.flush().await;
        assert_eq!(sink.0.lock().unwrap().1.last(), Some(&51));
        drop(log);
        writer.join().await;
    }

    #[tokio::test]
    async fn close_stops_the_writer_while_handles_remain() {
        let mem = MemorySink::default();
        let (log, writer) = AuditLog::start(mem.clone(), 8);
        let other_handle = log.clone();
        log.emit(AuditEvent::new(AuditKind::SessionEnd)).await;
        log.close().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), writer.join())
            .await
            .expect("writer stops on close although a handle is alive");
        assert_eq!(
            mem.0.lock().unwrap().len(),
            1,
            "events before close are written"
        );
        drop(other_handle);
    }

    #[tokio::test]
    async fn file_sink_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let (log, writer) = AuditLog::start(JsonlFileSink::new(&path).unwrap(), 16);
        for _ in 0..3 {
            log.emit(AuditEvent::new(AuditKind::SessionStart)).await;
        }
        drop(log);
        writer.join().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<AuditEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.kind == AuditKind::SessionStart));
    }

    #[tokio::test]
    async fn a_pipe_or_device_takes_events_and_is_never_synced() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        // `audit.file: /dev/stdout` under a container's log collector is a pipe, on which
        // fdatasync fails (EINVAL): retrying it would hold every session behind the log.
        let (mut reader, pipe_writer) = std::io::pipe().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", pipe_writer.as_raw_fd()));
        let (log, writer) = AuditLog::start(JsonlFileSink::new(&path).unwrap(), 16);
        drop(pipe_writer); // the sink opened its own descriptor
        let mut ids = Vec::new();
        for _ in 0..3 {
            let e = AuditEvent::new(AuditKind::PolicyDecision);
            ids.push(e.id);
            log.emit(e).await;
        }
        tokio::time::timeout(Duration::from_secs(10), log.flush())
            .await
            .expect("a flush (write and sync) completes on a pipe");
        drop(log);
        tokio::time::timeout(Duration::from_secs(10), writer.join())
            .await
            .expect("the writer stops");
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let got: Vec<Uuid> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id)
            .collect();
        assert_eq!(got, ids);

        let mut null = JsonlFileSink::new(Path::new("/dev/null")).unwrap();
        null.write_batch(&[AuditEvent::new(AuditKind::SessionStart)])
            .unwrap();
        null.sync().expect("nothing to sync on a character device");
    }
}
