//! Drives the real `gate` binary against a directory store written by gate-recording.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use gate_core::Action;
use gate_core::audit::AuditIdentity;
use gate_core::config::RecordingLocation;
use gate_recording::{
    EntryError, QueryEntry, RecordingIndex, RecordingKind, RecordingOptions, Recordings,
    SessionHeader, SessionSummary, TerminalHeader, list_recordings,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const TERMINAL_OUTPUT: &str = "hello from bastion → ünïcode\r\n";

struct Fixture {
    dir: tempfile::TempDir,
    terminal: RecordingIndex,
    queries: RecordingIndex,
}

impl Fixture {
    fn store(&self) -> &Path {
        self.dir.path()
    }
}

fn alice() -> AuditIdentity {
    AuditIdentity {
        sub: "u-1".into(),
        name: "alice".into(),
        email: None,
    }
}

fn entry(statement: &str, action: Action) -> QueryEntry {
    QueryEntry {
        statement: statement.into(),
        query_type: "select".into(),
        action,
        reason: None,
        rows: 2,
        duration: Duration::from_micros(1500),
        error: None,
        transfer: None,
    }
}

/// A store with one terminal recording and one query recording, written by the real writer.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (terminal, queries) = rt.block_on(async {
        let rec = Recordings::from_location_with(
            &RecordingLocation::Dir(dir.path().to_path_buf()),
            RecordingOptions::default(),
        )
        .unwrap();
        rec.start();
        let now = SystemTime::now();

        let term = rec.terminal(TerminalHeader {
            recording_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            protocol: "ssh".into(),
            resource: "bastion".into(),
            user: alice(),
            width: 80,
            height: 24,
            command: None,
            title: "alice@bastion".into(),
            env: vec![("TERM".into(), "xterm".into())],
            record_input: false,
            started_at: now - Duration::from_secs(30),
        });
        let bytes = TERMINAL_OUTPUT.as_bytes();
        // Split inside "→" on purpose.
        let cut = TERMINAL_OUTPUT.find('→').unwrap() + 1;
        term.output(b"$ ").await;
        term.output(&bytes[..cut]).await;
        term.resize(100, 30).await;
        term.output(&bytes[cut..]).await;
        term.finish().await;

        let session = rec.session(SessionHeader {
            session_id: Uuid::now_v7(),
            protocol: "postgres".into(),
            resource: "primary-db".into(),
            database: Some("app".into()),
            user: alice(),
            client_addr: Some("10.0.0.7:51234".into()),
            started_at: now,
        });
        session
            .record(entry(
                "SELECT email FROM users\nWHERE id = 1",
                Action::Allow,
            ))
            .await;
        session
            .record(QueryEntry {
                reason: Some("no drops".into()),
                rows: 0,
                ..entry("DROP TABLE users", Action::Block)
            })
            .await;
        session
            .record(entry("SELECT ssn FROM users", Action::Mask))
            .await;
        session
            .record(QueryEntry {
                error: Some(EntryError {
                    code: "42P01".into(),
                    message: "relation \"nope\" does not exist".into(),
                }),
                rows: 0,
                ..entry("SELECT * FROM nope", Action::Allow)
            })
            .await;
        session
            .finish(SessionSummary {
                queries: 4,
                blocked: 1,
                errors: 1,
            })
            .await;
        rec.flush().await;

        let (store, prefix) = rec.store().unwrap();
        let all = list_recordings(&*store, &prefix).await.unwrap();
        assert_eq!(all.len(), 2);
        let pick = |kind| all.iter().find(|i| i.kind == kind).unwrap().clone();
        (pick(RecordingKind::Terminal), pick(RecordingKind::Queries))
    });
    Fixture {
        dir,
        terminal,
        queries,
    }
}

/// Runs `gate` with `--store` (when given) and no inherited GATE_RECORDINGS.
/// A config directory that does not exist (so holds no login).
fn no_login_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gate-cli-test-no-login-{}", std::process::id()))
}

fn gate(store: Option<&Path>, args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gate"));
    // Never the developer's own login: a config directory with nothing in it.
    cmd.env_remove("GATE_RECORDINGS")
        .env_remove("GATE_URL")
        .env_remove("GATE_TOKEN")
        .env_remove("GATE_ORG")
        .env("GATE_CONFIG_DIR", no_login_dir())
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    if let Some(store) = store {
        cmd.arg("--store").arg(store);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args).output().expect("running gate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "gate failed ({:?}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn list_shows_a_table_and_json() {
    let f = fixture();
    let out = ok(gate(Some(f.store()), &["recordings", "list"], None));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for column in [
        "ID", "KIND", "PROTOCOL", "USER", "RESOURCE", "STARTED", "DURATION", "SIZE",
    ] {
        assert!(lines[0].contains(column), "{column} missing: {}", lines[0]);
    }
    // Newest first: the query session started after the terminal one.
    assert!(lines[1].starts_with(&f.queries.recording_id.to_string()));
    assert!(lines[2].starts_with(&f.terminal.recording_id.to_string()));
    for (line, kind, protocol, resource) in [
        (lines[1], "queries", "postgres", "primary-db"),
        (lines[2], "terminal", "ssh", "bastion"),
    ] {
        for word in [kind, protocol, resource, "alice"] {
            assert!(line.split_whitespace().any(|w| w == word), "{word}: {line}");
        }
    }
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    // The environment variable works like --store.
    let out = Command::new(env!("CARGO_BIN_EXE_gate"))
        .env("GATE_RECORDINGS", f.store())
        .args(["recordings", "list", "--output", "json"])
        .output()
        .unwrap();
    let listed: Vec<RecordingIndex> = serde_json::from_slice(&ok(out).stdout).unwrap();
    assert_eq!(listed, [f.queries.clone(), f.terminal.clone()]);

    // A file:// URL names the same store.
    let url = format!("file://{}", f.store().display());
    let out = ok(gate(
        None,
        &["--store", &url, "recordings", "list", "-o", "json"],
        None,
    ));
    let listed: Vec<RecordingIndex> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
}

#[test]
fn download_writes_the_exact_bytes_of_the_index() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (
        f.terminal.recording_id.to_string(),
        f.queries.recording_id.to_string(),
    );
    // UUIDv7s made in the same millisecond share a long prefix: take the shortest unique one.
    let unique = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count() + 1;
    for index in [&f.terminal, &f.queries] {
        // By a unique prefix of the id, into the current directory by default.
        let id = index.recording_id.to_string();
        ok(gate(
            Some(f.store()),
            &["recordings", "download", &id[..unique]],
            Some(work.path()),
        ));
        let name = format!("{id}.{}", index.kind.extension());
        let bytes = std::fs::read(work.path().join(&name)).unwrap();
        assert_eq!(bytes.len() as u64, index.size);
        assert_eq!(sha256_hex(&bytes), index.sha256);
        assert_eq!(
            bytes,
            std::fs::read(f.store().join(&index.object_key)).unwrap()
        );

        // `-o -` writes to stdout.
        let out = ok(gate(
            Some(f.store()),
            &["recordings", "download", &id, "-o", "-"],
            None,
        ));
        assert_eq!(out.stdout, bytes);
    }

    // `-o FILE`, and the downloaded cast plays with the stock player.
    let cast = work.path().join("session.cast");
    let id = f.terminal.recording_id.to_string();
    ok(gate(
        Some(f.store()),
        &["recordings", "download", &id, "-o", cast.to_str().unwrap()],
        None,
    ));
    match Command::new("asciinema")
        .arg("cat")
        .arg(&cast)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(stdout(&out).contains(TERMINAL_OUTPUT), "{}", stdout(&out));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("asciinema is not on PATH: skipping the player check");
        }
        Err(e) => panic!("running asciinema: {e}"),
    }
}

#[test]
fn play_replays_terminal_output_and_query_transcripts() {
    let f = fixture();
    let id = f.terminal.recording_id.to_string();
    let out = ok(gate(
        Some(f.store()),
        &[
            "recordings",
            "play",
            &id,
            "--speed",
            "1000",
            "--idle-limit",
            "1",
        ],
        None,
    ));
    assert_eq!(stdout(&out), format!("$ {TERMINAL_OUTPUT}"));

    let id = f.queries.recording_id.to_string();
    let out = ok(gate(
        Some(f.store()),
        &["recordings", "play", &id, "--speed", "1000"],
        None,
    ));
    let text = stdout(&out);
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    let expected_in_order = [
        "Session alice@primary-db (postgres, database app, from 10.0.0.7:51234)",
        "Started ",
        "app=> SELECT email FROM users",
        "app-> WHERE id = 1",
        "allowed · 2 rows · 1.5 ms",
        "app=> DROP TABLE users",
        "BLOCKED: no drops · 0 rows",
        "app=> SELECT ssn FROM users",
        "masked · 2 rows",
        "app=> SELECT * FROM nope",
        "error 42P01: relation \"nope\" does not exist",
        "Ended ",
        "4 queries, 1 blocked, 1 error",
    ];
    let mut rest = text.as_str();
    for expected in expected_in_order {
        let at = rest
            .find(expected)
            .unwrap_or_else(|| panic!("{expected:?} not found in order in:\n{text}"));
        rest = &rest[at + expected.len()..];
    }

    // `--color always` forces ANSI colours even into a pipe.
    let out = ok(gate(
        Some(f.store()),
        &[
            "--color",
            "always",
            "recordings",
            "play",
            &id,
            "--speed",
            "1000",
        ],
        None,
    ));
    assert!(stdout(&out).contains("\x1b["));
}

#[test]
fn errors_have_exit_codes_and_say_what_is_wrong() {
    let f = fixture();
    let out = gate(
        Some(f.store()),
        &["recordings", "play", "ffffffff-0000"],
        None,
    );
    assert_eq!(out.status.code(), Some(5), "not found");
    assert!(
        stderr(&out).contains("no recording matches \"ffffffff-0000\""),
        "{}",
        stderr(&out)
    );

    let out = gate(Some(f.store()), &["recordings", "download", "nope"], None);
    assert_eq!(out.status.code(), Some(5), "not found");

    // A store that does not exist is a runtime error, not created on the fly.
    let missing = f.store().join("missing");
    let out = gate(Some(&missing), &["recordings", "list"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
    assert!(!missing.exists());

    // A recording changed after the fact is refused.
    let path = f.store().join(&f.terminal.object_key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"[99.0, \"o\", \"injected\"]\n");
    std::fs::write(&path, bytes).unwrap();
    let id = f.terminal.recording_id.to_string();
    let out = gate(Some(f.store()), &["recordings", "play", &id], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match its index"),
        "{}",
        stderr(&out)
    );

    // Usage errors: no source, missing argument, bad speed.
    let out = gate(None, &["recordings", "list"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));
    assert!(stderr(&out).contains("GATE_RECORDINGS"), "{}", stderr(&out));
    let out = gate(Some(f.store()), &["recordings", "play"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = gate(
        Some(f.store()),
        &["recordings", "play", "x", "--speed", "0"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}
