use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gate_core::Action;
use gate_core::audit::AuditIdentity;
use gate_core::config::RecordingLocation;
use gate_recording::{
    EntryError, QueryEntry, RecordLine, RecordingError, RecordingIndex, RecordingKind,
    RecordingOptions, Recordings, SessionHeader, SessionSummary, read_recording,
    recover_incomplete, sha256_hex,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use uuid::Uuid;

fn header(protocol: &str, database: Option<&str>) -> SessionHeader {
    SessionHeader {
        session_id: Uuid::new_v4(),
        protocol: protocol.into(),
        resource: format!("{protocol}-main"),
        database: database.map(Into::into),
        user: AuditIdentity {
            sub: "u-1".into(),
            name: "alice".into(),
            email: Some("alice@example.com".into()),
        },
        client_addr: Some("10.0.0.7:51234".into()),
        started_at: SystemTime::now(),
    }
}

fn entry(statement: impl Into<std::sync::Arc<str>>) -> QueryEntry {
    QueryEntry {
        statement: statement.into(),
        query_type: "select".into(),
        action: Action::Allow,
        reason: None,
        rows: 3,
        duration: Duration::from_micros(1500),
        error: None,
        transfer: None,
    }
}

fn blocked(statement: &str) -> QueryEntry {
    QueryEntry {
        action: Action::Block,
        reason: Some("no deletes".into()),
        query_type: "delete".into(),
        rows: 0,
        ..entry(statement)
    }
}

fn failed(statement: &str) -> QueryEntry {
    QueryEntry {
        error: Some(EntryError {
            code: "42P01".into(),
            message: "relation does not exist".into(),
        }),
        rows: 0,
        ..entry(statement)
    }
}

fn fast_options() -> RecordingOptions {
    RecordingOptions {
        flush_interval: Duration::from_millis(20),
        ..RecordingOptions::default()
    }
}

async fn read_object(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let got = store.get(&Path::parse(key).unwrap()).await.unwrap();
    got.bytes().await.unwrap().to_vec()
}

async fn all_keys(store: &dyn ObjectStore) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(None)
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    keys.sort();
    keys
}

/// The keys a set of finished recordings occupy: each object and its index sidecar.
fn with_indexes<S: AsRef<str>>(keys: &[S]) -> Vec<String> {
    let mut all: Vec<String> = keys
        .iter()
        .flat_map(|k| [k.as_ref().to_string(), format!("{}.meta.json", k.as_ref())])
        .collect();
    all.sort();
    all
}

/// The index sidecar of `key`, checked against the object's bytes.
async fn index_of(store: &dyn ObjectStore, key: &str) -> RecordingIndex {
    let index: RecordingIndex =
        serde_json::from_slice(&read_object(store, &format!("{key}.meta.json")).await).unwrap();
    let content = read_object(store, key).await;
    assert_eq!(index.object_key, key);
    assert_eq!(index.size, content.len() as u64);
    assert_eq!(index.sha256, sha256_hex(&content));
    index.verify(&content).unwrap();
    index
}

fn statements(lines: &[RecordLine]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| match l {
            RecordLine::Query(q) => Some(q.statement.to_string()),
            _ => None,
        })
        .collect()
}

fn end_of(lines: &[RecordLine]) -> &gate_recording::EndLine {
    match lines.last() {
        Some(RecordLine::End(end)) => end,
        other => panic!("last line is not an end line: {other:?}"),
    }
}

#[tokio::test]
async fn local_dir_round_trip_keeps_order_of_interleaved_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nested/recordings");
    let rec = Recordings::from_location_with(&RecordingLocation::Dir(root.clone()), fast_options())
        .unwrap();
    assert!(root.is_dir(), "the directory is created");
    rec.start();

    let headers = [
        header("postgres", Some("app")),
        header("mysql", None),
        header("postgres", Some("billing")),
    ];
    let sessions: Vec<_> = headers.iter().map(|h| rec.session(h.clone())).collect();
    for round in 0..12 {
        for (s, session) in sessions.iter().enumerate() {
            let statement = format!("select {s}-{round}");
            let e = match round {
                4 => blocked(&statement),
                7 => failed(&statement),
                _ => entry(statement),
            };
            session.record(e).await;
        }
        if round == 3 || round == 8 {
            // Force checkpoints mid-session so the final object is assembled from segments.
            rec.flush().await;
        }
    }
    let keys: Vec<String> = sessions.iter().map(|s| s.object_key()).collect();
    for session in sessions {
        session
            .finish(SessionSummary {
                queries: 12,
                blocked: 1,
                errors: 1,
            })
            .await;
    }
    rec.flush().await;

    for (s, (h, key)) in headers.iter().zip(&keys).enumerate() {
        let date = &gate_core::time::rfc3339(h.started_at)[..10];
        assert_eq!(
            key,
            &format!("{}/{date}/{}.jsonl", h.protocol, h.session_id)
        );
        let bytes = std::fs::read(root.join(key)).unwrap();
        let lines = read_recording(&bytes).unwrap();
        assert_eq!(lines.len(), 14, "header + 12 queries + end");

        let RecordLine::Session(head) = &lines[0] else {
            panic!("first line is not the header: {:?}", lines[0])
        };
        assert_eq!(head.version, 1);
        assert_eq!(head.session_id, h.session_id);
        assert_eq!(head.protocol, h.protocol);
        assert_eq!(head.resource, h.resource);
        assert_eq!(head.database, h.database);
        assert_eq!(head.user, h.user);
        assert_eq!(head.client_addr, h.client_addr);
        let skew = h.started_at.duration_since(head.started_at).unwrap();
        assert!(skew < Duration::from_micros(1), "started_at kept to the µs");

        let expected: Vec<String> = (0..12).map(|r| format!("select {s}-{r}")).collect();
        assert_eq!(statements(&lines), expected);
        let queries: Vec<_> = lines[1..13]
            .iter()
            .map(|l| match l {
                RecordLine::Query(q) => q,
                other => panic!("not a query line: {other:?}"),
            })
            .collect();
        assert!(
            queries.windows(2).all(|w| w[0].t <= w[1].t),
            "t is monotonic"
        );
        assert_eq!(queries[4].action, Action::Block);
        assert_eq!(queries[4].reason.as_deref(), Some("no deletes"));
        assert_eq!(queries[7].error.as_ref().unwrap().code, "42P01");
        assert_eq!(queries[0].action, Action::Allow);
        assert_eq!(queries[0].rows, 3);
        assert!((queries[0].duration_ms - 1.5).abs() < 1e-9);

        let end = end_of(&lines);
        assert_eq!((end.queries, end.blocked, end.errors), (12, 1, 1));
        assert!(end.duration_s >= queries[11].t);

        // Schema details: optional query fields are omitted, header fields are always present.
        let text = String::from_utf8(bytes).unwrap();
        let raw: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(raw[0]["type"], "session");
        assert!(raw[0].as_object().unwrap().contains_key("database"));
        assert_eq!(raw[1]["type"], "query");
        assert!(!raw[1].as_object().unwrap().contains_key("reason"));
        assert!(!raw[1].as_object().unwrap().contains_key("error"));
        assert_eq!(raw[5]["action"], "block");
        assert_eq!(raw[13]["type"], "end");
    }
    if let RecordLine::Session(head) =
        &read_recording(&std::fs::read(root.join(&keys[1])).unwrap()).unwrap()[0]
    {
        assert_eq!(head.database, None);
    }

    // Checkpoint segments are gone once the recordings are complete; each has its index.
    let (store, _) = rec.store().unwrap();
    assert_eq!(all_keys(&*store).await, with_indexes(&keys));
    for (h, key) in headers.iter().zip(&keys) {
        let index = index_of(&*store, key).await;
        assert_eq!(index.kind, RecordingKind::Queries);
        assert_eq!(index.recording_id, h.session_id);
        assert_eq!(index.session_id, h.session_id);
        assert_eq!(index.protocol, h.protocol);
        assert_eq!(index.resource, h.resource);
        assert_eq!(index.user, h.user);
        assert_eq!(
            (index.title.as_deref(), index.command.as_deref()),
            (None, None)
        );
        assert!(index.ended_at >= index.started_at);
    }
}

#[tokio::test]
async fn session_without_entries_is_written_as_header_and_end_on_finish() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let session = rec.session(header("postgres", Some("app")));
    let key = session.object_key();
    rec.flush().await;
    assert!(
        all_keys(&*store).await.is_empty(),
        "nothing stored before finish"
    );

    session.finish(SessionSummary::default()).await;
    rec.flush().await;
    let lines = read_recording(&read_object(&*store, &key).await).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(matches!(lines[0], RecordLine::Session(_)));
    assert_eq!(end_of(&lines).queries, 0);
}

#[tokio::test]
async fn open_sessions_are_checkpointed_every_flush_interval() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let session = rec.session(header("postgres", None));
    let key = session.object_key();
    session.record(entry("select 1")).await;
    // No explicit flush: the 20 ms timer alone must put the line in the store.
    let segment = format!("{key}.part-00000001");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !all_keys(&*store).await.contains(&segment) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = read_recording(&read_object(&*store, &segment).await).unwrap();
    assert_eq!(statements(&lines), ["select 1"]);
    assert!(matches!(lines[0], RecordLine::Session(_)));
}

#[tokio::test]
async fn dropping_a_recorder_without_finish_completes_the_recording() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let session = rec.session(header("postgres", None));
    let key = session.object_key();
    session.record(entry("select 1")).await;
    session.record(blocked("delete from t")).await;
    session.record(failed("select * from nope")).await;
    drop(session);
    rec.flush().await;

    let lines = read_recording(&read_object(&*store, &key).await).unwrap();
    assert_eq!(
        statements(&lines),
        ["select 1", "delete from t", "select * from nope"]
    );
    let end = end_of(&lines);
    assert_eq!((end.queries, end.blocked, end.errors), (3, 1, 1));
}

#[tokio::test]
async fn shutdown_finishes_open_sessions() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let busy = rec.session(header("postgres", None));
    let idle = rec.session(header("mysql", None));
    busy.record(entry("select 1")).await;
    busy.record(blocked("drop table t")).await;

    rec.shutdown().await;
    let busy_key = busy.object_key();
    let lines = read_recording(&read_object(&*store, &busy_key).await).unwrap();
    assert_eq!(statements(&lines), ["select 1", "drop table t"]);
    let end = end_of(&lines);
    assert_eq!((end.queries, end.blocked, end.errors), (2, 1, 0));
    assert_eq!(
        all_keys(&*store).await,
        with_indexes(&[&busy_key]),
        "a session that recorded nothing has no object yet"
    );

    // Entries after shutdown cannot reopen (and truncate) a finished recording...
    busy.record(entry("select 2")).await;
    busy.finish(SessionSummary::default()).await;
    // ...while a session that had recorded nothing is still written when it finishes.
    let idle_key = idle.object_key();
    idle.finish(SessionSummary::default()).await;
    rec.flush().await;
    let again = read_recording(&read_object(&*store, &busy_key).await).unwrap();
    assert_eq!(again, lines);
    let idle_lines = read_recording(&read_object(&*store, &idle_key).await).unwrap();
    assert_eq!(idle_lines.len(), 2);
}

#[tokio::test]
async fn a_full_channel_makes_record_wait_and_loses_nothing() {
    let rec = Recordings::in_memory(RecordingOptions {
        channel_capacity: 1,
        segment_max_bytes: 256,
        max_concurrent_io: 1,
        ..fast_options()
    });
    let (store, _) = rec.store().unwrap();

    // Writer not started yet: the first entry fills the channel, the second must wait.
    let session = rec.session(header("postgres", None));
    let key = session.object_key();
    let producer = tokio::spawn(async move {
        for i in 0..300 {
            session.record(entry(format!("select {i}"))).await;
        }
        session
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !producer.is_finished(),
        "record waits while the channel is full"
    );

    // A recorder dropped while the channel is full still gets finished.
    let dropped = rec.session(header("mysql", None));
    let dropped_key = dropped.object_key();
    drop(dropped);

    rec.start();
    let session = producer.await.unwrap();

    // Many concurrent sessions through a one-slot channel and a one-at-a-time store.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let session = rec.session(header("postgres", None));
        tasks.push(tokio::spawn(async move {
            let key = session.object_key();
            for i in 0..100 {
                session.record(entry(format!("t{t} q{i}"))).await;
            }
            session
                .finish(SessionSummary {
                    queries: 100,
                    ..SessionSummary::default()
                })
                .await;
            (t, key)
        }));
    }
    drop(session);
    for task in tasks {
        let (t, key) = task.await.unwrap();
        rec.flush().await;
        let lines = read_recording(&read_object(&*store, &key).await).unwrap();
        let expected: Vec<String> = (0..100).map(|i| format!("t{t} q{i}")).collect();
        assert_eq!(statements(&lines), expected);
        assert_eq!(end_of(&lines).queries, 100);
    }
    rec.flush().await;
    let lines = read_recording(&read_object(&*store, &key).await).unwrap();
    let expected: Vec<String> = (0..300).map(|i| format!("select {i}")).collect();
    assert_eq!(statements(&lines), expected);
    assert_eq!(end_of(&lines).queries, 300);
    let dropped_lines = read_recording(&read_object(&*store, &dropped_key).await).unwrap();
    assert_eq!(dropped_lines.len(), 2, "header + end");
    assert!(
        all_keys(&*store)
            .await
            .iter()
            .all(|k| k.ends_with(".jsonl") || k.ends_with(".jsonl.meta.json")),
        "no segment left behind"
    );
}

#[tokio::test]
async fn disabled_records_nothing_and_never_blocks() {
    let rec = Recordings::disabled();
    assert!(!rec.is_enabled());
    assert!(rec.store().is_none());
    rec.start();
    let h = header("postgres", None);
    let session = rec.session(h.clone());
    let date = &gate_core::time::rfc3339(h.started_at)[..10];
    assert_eq!(
        session.object_key(),
        format!("postgres/{date}/{}.jsonl", h.session_id)
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        for i in 0..10_000 {
            session.record(entry(format!("select {i}"))).await;
        }
        session.finish(SessionSummary::default()).await;
        rec.flush().await;
        rec.shutdown().await;
    })
    .await
    .expect("a disabled recorder returns at once");
}

#[tokio::test]
async fn large_recordings_are_assembled_with_multipart_upload() {
    let rec = Recordings::in_memory(RecordingOptions::default());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let session = rec.session(header("postgres", None));
    let key = session.object_key();
    // 12 statements of 1 MiB: 12 checkpoints, 12 MiB in all, above the in-memory limit.
    let big: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "select '{}'",
                char::from(b'a' + i).to_string().repeat(1 << 20)
            )
        })
        .collect();
    for s in &big {
        session.record(entry(s.clone())).await;
    }
    session.finish(SessionSummary::default()).await;
    rec.flush().await;

    let lines = read_recording(&read_object(&*store, &key).await).unwrap();
    assert_eq!(statements(&lines), big);
    assert_eq!(end_of(&lines).queries, 0, "the pipeline's summary is used");
    assert_eq!(all_keys(&*store).await, with_indexes(&[&key]));
    // The digest was computed while streaming the multipart upload.
    let index = index_of(&*store, &key).await;
    assert!(index.size > 12 << 20);
}

#[test]
fn a_crash_keeps_checkpointed_lines_and_recover_incomplete_restores_them() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let prefix = Path::from("gate/recordings");
    let h = header("postgres", Some("app"));

    let crashed = tokio::runtime::Runtime::new().unwrap();
    let key = crashed.block_on(async {
        // No timed checkpoint during the test: only the explicit flush below checkpoints.
        let options = RecordingOptions {
            flush_interval: Duration::from_secs(3600),
            ..RecordingOptions::default()
        };
        let rec = Recordings::with_store(store.clone(), prefix.clone(), options);
        rec.start();
        let session = rec.session(h.clone());
        for i in 0..3 {
            session.record(entry(format!("select {i}"))).await;
        }
        rec.flush().await; // checkpointed
        session.record(entry("select lost")).await; // not yet
        let key = session.object_key();
        std::mem::forget(session);
        key
    });
    drop(crashed); // the writer dies with the runtime, like a killed process

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert!(key.starts_with("gate/recordings/postgres/"));
        let keys = all_keys(&*store).await;
        assert_eq!(keys, [format!("{key}.part-00000001")]);

        let recovered = recover_incomplete(&*store, &prefix).await.unwrap();
        assert_eq!(recovered, [Path::parse(&key).unwrap()]);
        let lines = read_recording(&read_object(&*store, &key).await).unwrap();
        assert!(matches!(&lines[0], RecordLine::Session(s) if s.session_id == h.session_id));
        assert_eq!(statements(&lines), ["select 0", "select 1", "select 2"]);
        assert!(
            !matches!(lines.last(), Some(RecordLine::End(_))),
            "an interrupted recording has no end line"
        );
        assert_eq!(all_keys(&*store).await, with_indexes(&[&key]));
        // The index is rebuilt from the header; the end is the last checkpointed line.
        let index = index_of(&*store, &key).await;
        assert_eq!(index.recording_id, h.session_id);
        assert_eq!(index.resource, h.resource);
        assert_eq!(index.user, h.user);
        assert!(index.ended_at >= index.started_at);
        assert!(
            recover_incomplete(&*store, &prefix)
                .await
                .unwrap()
                .is_empty()
        );
    });
}

#[tokio::test]
async fn urls_select_the_store_and_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("via-url");
    let url = format!("file://{}", dir.display());
    let rec = Recordings::from_location(&RecordingLocation::Url(url)).unwrap();
    rec.start();
    let session = rec.session(header("postgres", None));
    let key = session.object_key();
    session.finish(SessionSummary::default()).await;
    rec.flush().await;
    let lines = read_recording(&std::fs::read(dir.join(&key)).unwrap()).unwrap();
    assert_eq!(lines.len(), 2);

    let s3 = Recordings::from_location(&RecordingLocation::Url(
        "s3://bucket/gate/recordings".into(),
    ))
    .unwrap();
    let (store, prefix) = s3.store().unwrap();
    assert_eq!(prefix.as_ref(), "gate/recordings");
    assert!(store.to_string().contains("bucket"), "{store}");
    let key = s3.session(header("mysql", None)).object_key();
    assert!(key.starts_with("gate/recordings/mysql/"), "{key}");

    let bad = Recordings::from_location(&RecordingLocation::Url("not a url".into()));
    assert!(matches!(bad, Err(RecordingError::Url(_))));
}

#[test]
fn read_recording_reports_the_bad_line() {
    let text = b"{\"type\":\"end\",\"ended_at\":\"2026-01-01T00:00:00Z\",\"duration_s\":1.0,\"queries\":0,\"blocked\":0,\"errors\":0}\n\nnot json\n";
    match read_recording(text) {
        Err(RecordingError::Parse { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert_eq!(read_recording(&text[..text.len() - 9]).unwrap().len(), 1);
}
