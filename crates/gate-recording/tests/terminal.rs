//! Terminal recordings (asciicast v2), their index sidecars and the read side.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gate_core::audit::AuditIdentity;
use gate_core::config::RecordingLocation;
use gate_recording::{
    CastEvent, EventCode, QueryEntry, RecordingError, RecordingIndex, RecordingKind,
    RecordingOptions, Recordings, SessionHeader, SessionSummary, TerminalHeader, find_recording,
    list_recordings, read_cast, read_content, recover_incomplete, sha256_hex,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use uuid::Uuid;

fn alice() -> AuditIdentity {
    AuditIdentity {
        sub: "u-1".into(),
        name: "alice".into(),
        email: Some("alice@example.com".into()),
    }
}

fn terminal_header(record_input: bool) -> TerminalHeader {
    TerminalHeader {
        recording_id: Uuid::now_v7(),
        session_id: Uuid::now_v7(),
        protocol: "ssh".into(),
        resource: "bastion".into(),
        user: alice(),
        width: 120,
        height: 40,
        command: None,
        title: "alice@bastion".into(),
        env: vec![
            ("TERM".into(), "xterm-256color".into()),
            ("SHELL".into(), "/bin/bash".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "do-not-record".into()),
        ],
        record_input,
        started_at: SystemTime::now(),
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

fn outputs(events: &[CastEvent]) -> String {
    events
        .iter()
        .filter(|e| e.code == EventCode::Output)
        .map(|e| e.data.as_str())
        .collect()
}

#[tokio::test]
async fn terminal_round_trip_writes_asciicast_v2_and_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    // Only explicit flushes checkpoint here, so the segment count below is exact.
    let options = RecordingOptions {
        flush_interval: Duration::from_secs(3600),
        ..RecordingOptions::default()
    };
    let rec =
        Recordings::from_location_with(&RecordingLocation::Dir(tmp.path().to_path_buf()), options)
            .unwrap();
    rec.start();
    let (store, prefix) = rec.store().unwrap();
    let h = terminal_header(true);
    let term = rec.terminal(h.clone());
    let key = term.object_key();
    let date = &gate_core::time::rfc3339(h.started_at)[..10];
    assert_eq!(key, format!("ssh/{date}/{}.cast", h.recording_id));
    assert_eq!(term.recording_id(), h.recording_id);

    // "→ 世界" cut in the middle of both multibyte characters, across a checkpoint.
    let text = "prompt$ ls\r\n\x1b[1;34mdir\x1b[0m → 世界\r\n";
    let bytes = text.as_bytes();
    let arrow = text.find('→').unwrap() + 1;
    let world = text.find('世').unwrap() + 2;
    term.output(&bytes[..arrow]).await;
    term.input(b"l").await;
    term.input(b"s\r").await;
    rec.flush().await;
    let segment = format!("{key}.part-00000001");
    let stub = format!("{key}.open.json");
    let mut open = vec![segment, stub];
    open.sort();
    assert_eq!(all_keys(&*store).await, open);
    term.output(&bytes[arrow..world]).await;
    term.resize(100, 30).await;
    term.output(&bytes[world..]).await;
    term.output(b"bad \xff byte").await;
    term.finish().await;
    rec.flush().await;

    assert_eq!(
        all_keys(&*store).await,
        [key.clone(), format!("{key}.meta.json")],
        "segments and stub deleted"
    );
    let content = std::fs::read(tmp.path().join(&key)).unwrap();
    let (header, events) = read_cast(&content).unwrap();
    assert_eq!((header.version, header.width, header.height), (2, 120, 40));
    assert_eq!(header.title.as_deref(), Some("alice@bastion"));
    assert_eq!(header.command, None);
    let started = h.started_at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(header.timestamp, Some(started.as_secs()));
    assert_eq!(
        header.env.keys().collect::<Vec<_>>(),
        ["SHELL", "TERM"],
        "only TERM and SHELL"
    );
    assert_eq!(outputs(&events), format!("{text}bad \u{fffd} byte"));
    let inputs: String = events
        .iter()
        .filter(|e| e.code == EventCode::Input)
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(inputs, "ls\r");
    assert!(
        events
            .iter()
            .any(|e| e.code == EventCode::Resize && e.data == "100x30")
    );
    assert!(events.windows(2).all(|w| w[0].time <= w[1].time));

    // The raw header: asciicast's keys, nothing of the environment but TERM and SHELL.
    let first_line = content.split(|b| *b == b'\n').next().unwrap();
    let raw: serde_json::Value = serde_json::from_slice(first_line).unwrap();
    assert_eq!(raw["version"], 2);
    assert!(raw.get("command").is_none());
    assert!(!String::from_utf8_lossy(&content).contains("do-not-record"));

    let index: RecordingIndex =
        serde_json::from_slice(&read_object(&*store, &format!("{key}.meta.json")).await).unwrap();
    assert_eq!(index.kind, RecordingKind::Terminal);
    assert_eq!(index.recording_id, h.recording_id);
    assert_eq!(index.session_id, h.session_id);
    assert_eq!(index.title.as_deref(), Some("alice@bastion"));
    assert_eq!(index.size, content.len() as u64);
    assert_eq!(index.sha256, sha256_hex(&content));
    assert_eq!(index.object_key, key);

    // The read side finds it by a prefix of its id and returns the same bytes.
    let found = find_recording(&*store, &prefix, &h.recording_id.to_string()[..13])
        .await
        .unwrap();
    assert_eq!(found, index);
    let got = read_content(&*store, &found).await.unwrap();
    found.verify(&got).unwrap();

    // The stock player shows the output.
    asciinema_cat_shows(&tmp.path().join(&key), &["dir", "→ 世界"]);
}

/// `asciinema cat FILE` prints every output event; skipped when asciinema is not installed.
fn asciinema_cat_shows(file: &std::path::Path, expected: &[&str]) {
    let run = std::process::Command::new("asciinema")
        .arg("cat")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("asciinema is not on PATH: skipping the player check");
            return;
        }
        Err(e) => panic!("running asciinema: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "asciinema cat failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for text in expected {
        assert!(stdout.contains(text), "{text:?} not in {stdout:?}");
    }
}

#[tokio::test]
async fn input_is_not_recorded_unless_asked_and_commands_are_in_the_header() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, _) = rec.store().unwrap();
    let h = TerminalHeader {
        command: Some("uptime".into()),
        env: vec![],
        ..terminal_header(false)
    };
    let term = rec.terminal(h);
    let key = term.object_key();
    term.input(b"secret password\r").await;
    term.output(b" 10:00:00 up 3 days\r\n").await;
    term.finish().await;
    rec.flush().await;
    let content = read_object(&*store, &key).await;
    assert!(!String::from_utf8_lossy(&content).contains("secret"));
    let (header, events) = read_cast(&content).unwrap();
    assert_eq!(header.command.as_deref(), Some("uptime"));
    assert!(header.env.is_empty());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, EventCode::Output);
}

#[tokio::test]
async fn a_dropped_recorder_is_finished_and_a_dangling_character_kept_as_replacement() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, prefix) = rec.store().unwrap();
    let silent = rec.terminal(terminal_header(false));
    let silent_key = silent.object_key();
    drop(silent);
    let term = rec.terminal(terminal_header(false));
    let key = term.object_key();
    term.output("ok ".as_bytes()).await;
    term.output(&"€".as_bytes()[..2]).await;
    drop(term);
    rec.flush().await;

    let (_, events) = read_cast(&read_object(&*store, &key).await).unwrap();
    assert_eq!(outputs(&events), "ok \u{fffd}");
    let (header, events) = read_cast(&read_object(&*store, &silent_key).await).unwrap();
    assert_eq!(header.width, 120);
    assert!(
        events.is_empty(),
        "a channel without output is a header only"
    );
    assert_eq!(list_recordings(&*store, &prefix).await.unwrap().len(), 2);
}

#[tokio::test]
async fn hooks_and_listings_cover_both_kinds_newest_first() {
    let rec = Recordings::in_memory(fast_options());
    let seen: Arc<Mutex<Vec<RecordingIndex>>> = Arc::default();
    let sink = seen.clone();
    rec.on_finalized(move |index| sink.lock().unwrap().push(index));
    rec.start();
    let (store, prefix) = rec.store().unwrap();

    let now = SystemTime::now();
    let older = TerminalHeader {
        started_at: now - Duration::from_secs(60),
        ..terminal_header(false)
    };
    let term = rec.terminal(older.clone());
    term.output(b"hello\r\n").await;
    term.finish().await;
    let session_id = Uuid::now_v7();
    let session = rec.session(SessionHeader {
        session_id,
        protocol: "postgres".into(),
        resource: "db".into(),
        database: Some("app".into()),
        user: alice(),
        client_addr: None,
        started_at: now,
    });
    session
        .record(QueryEntry {
            statement: "select 1".into(),
            query_type: "select".into(),
            action: gate_core::Action::Allow,
            reason: None,
            rows: 1,
            duration: Duration::from_millis(1),
            error: None,
            transfer: None,
        })
        .await;
    session.finish(SessionSummary::default()).await;
    rec.flush().await;

    let listed = list_recordings(&*store, &prefix).await.unwrap();
    let ids: Vec<Uuid> = listed.iter().map(|i| i.recording_id).collect();
    assert_eq!(ids, [session_id, older.recording_id], "newest first");
    assert_eq!(listed[0].kind, RecordingKind::Queries);
    assert_eq!(listed[1].kind, RecordingKind::Terminal);
    for index in &listed {
        let content = read_content(&*store, index).await.unwrap();
        index.verify(&content).unwrap();
    }
    let mut hooked = seen.lock().unwrap().clone();
    hooked.sort_by_key(|i| std::cmp::Reverse(i.started_at));
    assert_eq!(hooked, listed, "the hook saw exactly what was indexed");

    // A damaged sidecar is skipped, not fatal; unknown ids are clear errors.
    store
        .put(
            &Path::from("ssh/2020-01-01/00000000-0000-0000-0000-000000000000.cast.meta.json"),
            b"{not json".to_vec().into(),
        )
        .await
        .unwrap();
    assert_eq!(list_recordings(&*store, &prefix).await.unwrap(), listed);
    let err = find_recording(&*store, &prefix, "ffffffff")
        .await
        .unwrap_err();
    assert!(matches!(err, RecordingError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("ffffffff"));
}

#[test]
fn a_crashed_terminal_recording_is_recovered_with_its_index() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let prefix = Path::from("gate");
    let h = terminal_header(false);

    let crashed = tokio::runtime::Runtime::new().unwrap();
    let key = crashed.block_on(async {
        let options = RecordingOptions {
            flush_interval: Duration::from_secs(3600),
            ..RecordingOptions::default()
        };
        let rec = Recordings::with_store(store.clone(), prefix.clone(), options);
        rec.start();
        let term = rec.terminal(h.clone());
        term.output(b"checkpointed\r\n").await;
        rec.flush().await;
        term.output(b"lost\r\n").await;
        let key = term.object_key();
        std::mem::forget(term);
        key
    });
    drop(crashed);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let recovered = recover_incomplete(&*store, &prefix).await.unwrap();
        assert_eq!(recovered, [Path::parse(&key).unwrap()]);
        assert_eq!(
            all_keys(&*store).await,
            [key.clone(), format!("{key}.meta.json")]
        );
        let content = read_object(&*store, &key).await;
        let (_, events) = read_cast(&content).unwrap();
        assert_eq!(outputs(&events), "checkpointed\r\n");
        let listed = list_recordings(&*store, &prefix).await.unwrap();
        assert_eq!(listed.len(), 1);
        let index = &listed[0];
        assert_eq!(index.recording_id, h.recording_id);
        assert_eq!(index.session_id, h.session_id);
        assert_eq!(index.user, h.user);
        assert_eq!(index.kind, RecordingKind::Terminal);
        index.verify(&content).unwrap();
        assert!(index.ended_at >= index.started_at);
    });
}

#[tokio::test]
async fn recover_incomplete_rebuilds_missing_indexes_of_stored_recordings() {
    let rec = Recordings::in_memory(fast_options());
    rec.start();
    let (store, prefix) = rec.store().unwrap();
    let session_id = Uuid::now_v7();
    let session = rec.session(SessionHeader {
        session_id,
        protocol: "mysql".into(),
        resource: "db".into(),
        database: None,
        user: alice(),
        client_addr: None,
        started_at: SystemTime::now(),
    });
    let key = session.object_key();
    session.finish(SessionSummary::default()).await;
    rec.flush().await;
    let original = list_recordings(&*store, &prefix).await.unwrap();
    assert_eq!(original.len(), 1);

    // As if the index write had failed, or the recording predates indexes.
    let index_key = Path::parse(format!("{key}.meta.json")).unwrap();
    store.delete(&index_key).await.unwrap();
    assert!(list_recordings(&*store, &prefix).await.unwrap().is_empty());
    let assembled = recover_incomplete(&*store, &prefix).await.unwrap();
    assert!(assembled.is_empty(), "nothing was assembled");
    let rebuilt = list_recordings(&*store, &prefix).await.unwrap();
    assert_eq!(rebuilt, original, "the end line gives the same end time");
}
