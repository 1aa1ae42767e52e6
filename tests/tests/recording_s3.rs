//! Session recordings in S3-compatible storage, end to end: the real `gate-connector` with
//! `recording: {url: "s3://…"}` writes through `object_store`'s S3 client to a local server.
//!
//! No real S3 is reachable from the test machines, so a local `moto_server` (moto, a
//! documented in-memory mock of the S3 API; `scripts/test-setup.sh` installs it) stands in
//! for it: see `gate_test_support::s3`. The gateway finds it the way it would find any
//! S3-compatible store, through `AWS_*` environment variables.

mod common;

use std::time::Duration;

use common::*;
use gate_test_support::postgres::SAMPLE_USERS;
use gate_test_support::s3::{self, S3Server};

const BUCKET: &str = "gate-recordings";
/// moto checks no credentials; a distinctive secret lets the tests see that it never leaks.
const S3_SECRET: &str = "s3-secret-9c4e1a7f2b6d";

/// Recordings to `s3://<bucket>/sessions` on `s3`. `AmazonS3ConfigKey` reads these names
/// (lower-cased): `aws_endpoint_url`, `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_region`, and `aws_allow_http` (the endpoint is plain HTTP).
fn s3_opts(s3: &S3Server, bucket: &str) -> Opts {
    Opts {
        recording: Some(format!("recording: {{url: \"s3://{bucket}/sessions\"}}")),
        env: vec![
            ("AWS_ENDPOINT_URL".into(), s3.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET.into()),
            ("AWS_REGION".into(), s3::REGION.into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ],
        ..Opts::default()
    }
}

/// The id of the only session so far, from the audit log.
async fn session_id(env: &Env) -> String {
    let events = env
        .wait_audit("session start", |e| e["kind"] == "session_start")
        .await;
    events
        .iter()
        .find(|e| e["kind"] == "session_start")
        .and_then(|e| e["session_id"].as_str())
        .expect("session_start has a session_id")
        .to_string()
}

fn parse_jsonl(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

#[tokio::test]
async fn recordings_land_in_the_bucket_with_statements_decisions_and_no_secrets() {
    let s3 = S3Server::start().await.expect("moto_server starts");
    s3.create_bucket(BUCKET).await.unwrap();
    let env = start(s3_opts(&s3, BUCKET)).await;

    let c = env.connect_alice().await;
    let rows = c
        .simple_query("SELECT email FROM users WHERE id = 1")
        .await
        .unwrap();
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    );
    let err = c.simple_query("DROP TABLE users").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");
    let sid = session_id(&env).await;

    // While the session is open its lines are checkpointed as segment objects (every 2 s):
    // wait for one, so the final object is assembled from segments read back from S3.
    let segment = format!("{sid}.jsonl.part-");
    gate_test_support::wait_until(
        "a checkpoint segment in S3",
        Duration::from_secs(20),
        || {
            let s3 = &s3;
            let segment = &segment;
            async move {
                let keys = s3.list_objects(BUCKET).await.ok()?;
                keys.iter()
                    .any(|k| k.contains(segment.as_str()))
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n--- gateway log ---\n{}", env.gw.log()));

    c.simple_query("SELECT count(*) FROM users").await.unwrap();
    drop(c);

    // The finished recording: sessions/postgres/<YYYY-MM-DD>/<session id>.jsonl, with its
    // `end` line.
    let suffix = format!("/{sid}.jsonl");
    let (key, bytes) =
        gate_test_support::wait_until("the recording in S3", Duration::from_secs(30), || {
            let s3 = &s3;
            let suffix = &suffix;
            async move {
                let keys = s3.list_objects(BUCKET).await.ok()?;
                let key = keys.into_iter().find(|k| {
                    k.starts_with("sessions/postgres/") && k.ends_with(suffix.as_str())
                })?;
                let bytes = s3.get_object(BUCKET, &key).await.ok()?;
                String::from_utf8_lossy(&bytes)
                    .contains(r#""type":"end""#)
                    .then_some((key, bytes))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n--- gateway log ---\n{}", env.gw.log()));

    let lines = parse_jsonl(&bytes);
    let header = &lines[0];
    assert_eq!(header["type"], "session", "{lines:#?}");
    assert_eq!(header["session_id"], sid.as_str());
    assert_eq!(header["protocol"], "postgres");
    assert_eq!(header["resource"], "primary-db");
    assert_eq!(header["user"]["name"], "alice");
    let date = header["started_at"].as_str().unwrap()[..10].to_string();
    assert_eq!(key, format!("sessions/postgres/{date}/{sid}.jsonl"));

    let queries: Vec<_> = lines.iter().filter(|l| l["type"] == "query").collect();
    let statements: Vec<_> = queries.iter().map(|q| q["statement"].clone()).collect();
    assert_eq!(
        statements,
        [
            "SELECT email FROM users WHERE id = 1",
            "DROP TABLE users",
            "SELECT count(*) FROM users"
        ],
        "{lines:#?}"
    );
    assert_eq!(queries[0]["action"], "allow");
    assert_eq!(queries[0]["rows"], 1);
    assert_eq!(queries[1]["action"], "block");
    assert_eq!(queries[2]["rows"], 1);
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end", "{lines:#?}");
    assert_eq!(end["queries"], 3);
    assert_eq!(end["blocked"], 1);

    // Recordings hold statements, row counts and decisions: no results, no secrets.
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(ALICE_TOKEN), "token in the recording");
    assert!(
        !text.contains(&env.upstream_password),
        "upstream password in the recording"
    );
    for (_, _, _, ssn) in SAMPLE_USERS {
        assert!(!text.contains(ssn), "result value {ssn} in the recording");
    }

    // The segments were deleted once assembled, and nothing went to a local directory.
    gate_test_support::wait_until("the segments deleted", Duration::from_secs(20), || {
        let s3 = &s3;
        let segment = &segment;
        async move {
            let keys = s3.list_objects(BUCKET).await.ok()?;
            (!keys.iter().any(|k| k.contains(segment.as_str()))).then_some(())
        }
    })
    .await
    .unwrap();
    assert!(files_under(&env.data_dir().join("recordings")).is_empty());
    assert!(!text.contains(S3_SECRET), "S3 secret in the recording");
    let log = env.gw.log();
    assert!(!log.contains(ALICE_TOKEN), "token in the gateway log");
    assert!(!log.contains(S3_SECRET), "S3 secret in the gateway log");
    for failure in [
        "recording checkpoint failed",
        "could not complete the recording",
    ] {
        assert!(
            !log.contains(failure),
            "{failure:?} in the gateway log:\n{log}"
        );
    }
}

/// Recording failures must not break sessions: `gate-recording` does every store operation
/// in its own task, off the session's path; a failed checkpoint is retried twice (logged at
/// `warn`), then its lines are given up ("recording checkpoint failed; these lines are lost",
/// at `error`), and a final object that cannot be written is logged at `error` too ("could
/// not complete the recording"). A bucket that does not exist is such a failure (S3 answers
/// `NoSuchBucket`).
#[tokio::test]
async fn a_missing_bucket_is_logged_and_sessions_keep_working() {
    let s3 = S3Server::start().await.expect("moto_server starts");
    // The store is only built at start-up, not contacted: the gateway starts and is ready.
    let env = start(s3_opts(&s3, "gate-no-such-bucket")).await;

    let c = env.connect_alice().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let err = c.simple_query("DROP TABLE users").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");

    // The checkpoint of the open session fails (every 2 s); the session does not notice.
    env.gw
        .wait_for_log("recording checkpoint failed", Duration::from_secs(20))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    drop(c);

    // The checkpointed lines are given up, and the recording fails to complete; both logged.
    let log = env
        .gw
        .wait_for_log("could not complete the recording", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(log.contains("these lines are lost"), "{log}");
    assert!(
        s3.list_objects("gate-no-such-bucket").await.is_err(),
        "the bucket must still not exist"
    );

    // The gateway stays ready and serves new sessions.
    let ready = env.gw.http_get("/ready").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let c = env.connect_alice().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    drop(c);
    gate_test_support::wait_until("two session ends", Duration::from_secs(20), || async {
        let ends = env
            .audit_events()
            .iter()
            .filter(|e| e["kind"] == "session_end")
            .count();
        (ends >= 2).then_some(())
    })
    .await
    .unwrap();
    let log = env.gw.log();
    assert!(!log.contains(ALICE_TOKEN), "token in the gateway log");
    assert!(!log.contains(S3_SECRET), "S3 secret in the gateway log");
}
