//! PostgreSQL through the gateway, end to end: a real PostgreSQL upstream, the real
//! `gate-connector` binary, and real clients (tokio-postgres over TLS, and `psql`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn example() -> Opts {
    Opts::default()
}

#[tokio::test]
async fn select_is_masked_in_simple_extended_and_binary_results() {
    let env = start(example()).await;
    let c = env.connect_alice().await;

    // Simple protocol (text format).
    let rows = c
        .simple_query("SELECT id, name, email, ssn FROM users ORDER BY id")
        .await
        .unwrap();
    let rows: Vec<_> = rows
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 3);
    let email = rows[0].get("email").unwrap();
    assert_ne!(email, "alice@example.com", "email must be masked");
    assert!(
        email.starts_with("al") && email.contains('*'),
        "partial mask: {email}"
    );
    assert_eq!(
        rows[0].get("name"),
        Some("alice"),
        "unmasked column untouched"
    );
    let ssn = rows[0].get("ssn").unwrap();
    assert!(!ssn.contains("6789"), "ssn redacted: {ssn}");

    // Extended protocol: tokio-postgres asks for binary results.
    let rows = c
        .query("SELECT name, email, ssn FROM users WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    let email: String = rows[0].get("email");
    let ssn: Option<String> = rows[0].get("ssn");
    assert_ne!(email, "alice@example.com");
    assert!(email.contains('*'));
    assert!(!ssn.unwrap_or_default().contains("6789"));
    let name: String = rows[0].get("name");
    assert_eq!(name, "alice");

    // Aliased column: the mask follows the result column name the policy sees.
    let rows = c
        .query("SELECT email AS contact FROM users WHERE id = 1", &[])
        .await
        .unwrap();
    let contact: String = rows[0].get(0);
    assert_eq!(
        contact, "alice@example.com",
        "example policy masks by result column name"
    );
}

#[tokio::test]
async fn drop_is_blocked_with_42501_and_the_session_stays_usable() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    let err = c.simple_query("DROP TABLE users").await.unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "42501", "{err}");
    assert!(msg.contains("DROP statements are not allowed"), "{msg}");

    // Extended protocol too.
    let err = c
        .query("DROP TABLE IF EXISTS users", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");

    // Same session keeps working, and the table is still there.
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // In a transaction a block aborts it like any error would.
    c.simple_query("BEGIN").await.unwrap();
    assert!(c.simple_query("DROP TABLE users").await.is_err());
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02", "transaction is aborted: {err}");
    c.simple_query("ROLLBACK").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    let events = env
        .wait_audit("the blocked DROP in the audit log", |e| {
            e["action"] == "block" && e["statement"] == "DROP TABLE users"
        })
        .await;
    assert!(events.iter().any(|e| e["kind"] == "session_start"));
}

#[tokio::test]
async fn psql_binary_selects_masks_and_is_blocked() {
    let env = start(example()).await;
    let (ok, out, err) = env
        .psql(
            &env.alice(),
            &[
                "-A",
                "-t",
                "-c",
                "SELECT name, email, ssn FROM users WHERE id = 2",
            ],
        )
        .await;
    assert!(ok, "psql failed: {err}");
    let line = out.trim();
    assert!(line.starts_with("bob|"), "{line}");
    assert!(!line.contains("bob@example.com"), "{line}");
    assert!(!line.contains("987-65"), "{line}");

    let (ok, _, err) = env.psql(&env.alice(), &["-c", "DROP TABLE users"]).await;
    assert!(!ok);
    assert!(err.contains("DROP statements are not allowed"), "{err}");

    // Several statements in one simple query, the second one blocked: nothing runs.
    let (ok, _, err) = env
        .psql(
            &env.alice(),
            &["-c", "CREATE TEMP TABLE t(x int); DROP TABLE t"],
        )
        .await;
    assert!(!ok && err.contains("not allowed"), "{err}");
}

#[tokio::test]
async fn prepared_statements_are_reused_many_times() {
    let env = start(example()).await;
    let mut c = env.connect_alice().await;
    let stmt = c
        .prepare("SELECT email, $1::int + id AS n FROM users WHERE id = $2")
        .await
        .unwrap();
    for i in 0..200i32 {
        let id = 1 + (i % 3);
        let row = c.query_one(&stmt, &[&i, &id]).await.unwrap();
        let n: i32 = row.get(1);
        assert_eq!(n, i + id);
        let email: String = row.get(0);
        assert!(email.contains('*'), "masked on reuse {i}: {email}");
    }
    // A portal read in chunks (Execute with a row limit, PortalSuspended) inside a transaction.
    let tx = c.transaction().await.unwrap();
    let big = tx
        .prepare("SELECT g, 'x' || g AS email FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let portal = tx.bind(&big, &[]).await.unwrap();
    let mut seen = 0;
    loop {
        let rows = tx.query_portal(&portal, 300).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let e: String = r.get(1);
            assert!(e.contains('*') || e.len() <= 4, "masked: {e}");
        }
        seen += rows.len();
    }
    assert_eq!(seen, 1000);
    tx.commit().await.unwrap();
}

/// The unnamed statement and portal (`query_typed`: Parse "" / Bind "" / Execute in one
/// flight, as libpq's PQexecParams, JDBC before its prepare threshold and pgbench -M extended
/// send them): the same text again and again is decided, masked and recorded every time,
/// and stays apart from a named statement of the same session.
#[tokio::test]
async fn unnamed_statements_sent_again_are_decided_and_masked_every_time() {
    use tokio_postgres::types::Type;
    let env = start(example()).await;
    let c = env.connect_alice().await;
    let named = c
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    let sql = "SELECT email, ssn FROM users WHERE id = $1";
    for i in 0..60usize {
        let (id, real_name, real_email, real_ssn) =
            gate_test_support::postgres::SAMPLE_USERS[i % 3];
        let rows = c.query_typed(sql, &[(&id, Type::INT4)]).await.unwrap();
        let email: String = rows[0].get(0);
        let ssn: Option<String> = rows[0].get(1);
        assert!(
            email != real_email && email.contains('*'),
            "masked on round {i}: {email}"
        );
        assert_ne!(ssn.as_deref(), Some(real_ssn), "round {i}");
        // The named statement is untouched by the unnamed one replacing itself.
        let name: String = c.query_one(&named, &[&id]).await.unwrap().get(0);
        assert_eq!(name, real_name, "round {i}");
    }
    // A blocked unnamed statement, then the same allowed text as before.
    let err = c.query_typed("DROP TABLE users", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");
    let rows = c.query_typed(sql, &[(&1i32, Type::INT4)]).await.unwrap();
    let email: String = rows[0].get(0);
    assert!(email.contains('*'), "{email}");
}

#[tokio::test]
async fn large_result_streams_through() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    let rows = c
        .query(
            "SELECT g, repeat('y', 100) FROM generate_series(1, 200000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 200_000);
    let last: i32 = rows[199_999].get(0);
    assert_eq!(last, 200_000);
}

#[tokio::test]
async fn copy_in_and_out_work_and_unmaskable_copy_is_refused() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    c.simple_query("CREATE TEMP TABLE items(id int, label text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY items FROM STDIN").await.unwrap();
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\titem {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 1000);

    let stream = c
        .copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.starts_with("0\titem 0\n"));

    // COPY of a table with masked columns cannot be masked column by column: refused.
    let err = match c.copy_out("COPY users TO STDOUT").await {
        Ok(stream) => {
            pin_mut!(stream);
            let mut got = Vec::new();
            let mut err = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => got.extend_from_slice(&b),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(
                !String::from_utf8_lossy(&got).contains("@example.com"),
                "leaked: {got:?}"
            );
            err.expect("COPY users TO STDOUT must fail")
        }
        Err(e) => e,
    };
    assert_eq!(db_error(&err).0, "42501", "{err}");
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn cancel_request_reaches_the_upstream() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    let token = c.cancel_token();
    let tls = env.tls_connector();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tls).await
    });
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(db_error(&err).0, "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller.await.unwrap().unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn wrong_token_or_another_users_token_is_refused_with_28p01() {
    // The resource points at a listener we watch: a refused login must never reach it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: trap-db, protocol: postgres, host: 127.0.0.1, port: {trap_port}, database: appdb, credentials: {{username: app, password: x}}}}\n"
        ),
        ..example()
    })
    .await;
    for (user, token, db) in [
        ("alice", "not-the-token", "trap-db"),
        ("alice", BOB_TOKEN, "trap-db"),
        ("mallory", ALICE_TOKEN, "trap-db"),
        ("alice", "", "trap-db"),
    ] {
        let err = env
            .connect(&env.conninfo(user, token, db))
            .await
            .expect_err("refused");
        let (code, msg) = db_error(&err);
        assert_eq!(code, "28P01", "{user}/{token}: {err}");
        assert!(msg.contains("password authentication failed"), "{msg}");
        assert!(
            !msg.contains(token) || token.is_empty(),
            "never echo the secret"
        );
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), trap.accept()).await;
    assert!(
        accepted.is_err(),
        "nothing may reach the upstream on a failed login"
    );

    let events = env
        .wait_audit("auth failures", |e| e["kind"] == "auth_failure")
        .await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("not-the-token") && !text.contains(BOB_TOKEN));
}

#[tokio::test]
async fn unknown_resource_and_missing_tls_are_refused_clearly() {
    let env = start(example()).await;
    let err = env
        .connect(&env.conninfo("alice", ALICE_TOKEN, "nope"))
        .await
        .err()
        .unwrap();
    assert_eq!(db_error(&err).0, "3D000", "{err}");

    // Without TLS the token would cross the wire in the clear: refused before it is asked.
    let (ok, _, err) = env
        .psql(
            &format!("host=127.0.0.1 port={} user=alice dbname=primary-db password={ALICE_TOKEN} sslmode=disable", env.port),
            &["-c", "SELECT 1"],
        )
        .await;
    assert!(!ok);
    assert!(err.contains("requires TLS"), "{err}");
}

#[tokio::test]
async fn upstream_down_gives_a_clear_error() {
    let closed = gate_test_support::free_port();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: down-db, protocol: postgres, host: 127.0.0.1, port: {closed}, database: appdb, credentials: {{username: app, password: x}}}}\n"
        ),
        ..example()
    })
    .await;
    let err = env
        .connect(&env.conninfo("alice", ALICE_TOKEN, "down-db"))
        .await
        .err()
        .unwrap();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08006", "{err}");
    assert!(
        msg.contains("could not reach upstream") && msg.contains("down-db"),
        "{msg}"
    );
    // The gateway is still serving.
    env.connect_alice()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_and_truncated_startup_packets_do_not_hurt_the_process() {
    let env = start(example()).await;
    let addr = format!("127.0.0.1:{}", env.port);
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0, 0, 0, 3, 0, 3, 0, 0],             // length below minimum
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], // absurd length
        vec![0, 0, 0, 40, 0, 3, 0, 0, b'u', b's'], // truncated startup
        vec![0, 0, 0, 16, 0, 9, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], // unknown protocol version
        vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0xde, 0xad], // SSLRequest + bytes before the handshake
        (0..=255u8).cycle().take(5000).collect(),
    ];
    for p in payloads {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(&p).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok(),
            "gateway closes the connection for {:?}",
            &p[..p.len().min(8)]
        );
    }
    // Garbage after login: an invalid message length mid-session.
    let c = env.connect_alice().await;
    c.simple_query("SELECT 1").await.unwrap();
    let c2 = env.connect_alice().await;
    let n: i64 = c2
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    assert!(env.gw.http_get("/health").await.unwrap().status == 200);
}

#[tokio::test]
async fn a_policy_that_errors_or_answers_nonsense_denies() {
    let env = start(Opts {
        policy: Some(
            r#"package gate.broken
import rego.v1
session := true
post_request := true
pre_request := {"action": "explode"} if { input.query.type == "select" }
pre_request := {"action": "allow"} if { input.query.type != "select" }
"#
            .into(),
        ),
        ..example()
    })
    .await;
    let c = env.connect_alice().await;
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "42501", "{err}");
    assert!(msg.contains("policy"), "{msg}");
    // Non-select statements still pass: the session itself is fine.
    c.simple_query("SET application_name = 'x'").await.unwrap();
}

#[tokio::test]
async fn session_policy_and_rewrite_decisions_apply() {
    let env = start(Opts {
        policy: Some(
            r#"package gate.custom
import rego.v1
default session := {"action": "allow"}
session := {"action": "block", "reason": "support staff may not open database sessions"} if {
    "support" in input.user.groups
}
default pre_request := {"action": "allow"}
pre_request := {"action": "rewrite", "query": "SELECT 'rewritten' AS v"} if {
    input.query.statement == "SELECT 'original' AS v"
}
post_request := true
"#
            .into(),
        ),
        ..example()
    })
    .await;
    let err = env
        .connect(&env.conninfo("bob", BOB_TOKEN, "primary-db"))
        .await
        .err()
        .unwrap();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "42501", "{err}");
    assert!(msg.contains("support staff"), "{msg}");

    let c = env.connect_alice().await;
    let row = c.query_one("SELECT 'original' AS v", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "rewritten");
    let msgs = c.simple_query("SELECT 'original' AS v").await.unwrap();
    let v = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(v.as_deref(), Some("rewritten"));
}

#[tokio::test]
async fn upstream_md5_and_cleartext_authentication() {
    let pg = gate_test_support::postgres::PgServer::shared();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: md5-db, protocol: postgres, host: 127.0.0.1, port: {p}, database: appdb, credentials: {{username: {mu}, password: \"{mp}\"}}}}\n  - {{name: clear-db, protocol: postgres, host: 127.0.0.1, port: {p}, database: appdb, credentials: {{username: {cu}, password: \"{cp}\"}}}}\n  - {{name: badcred-db, protocol: postgres, host: 127.0.0.1, port: {p}, database: appdb, credentials: {{username: app, password: wrong}}}}\n",
            p = pg.port(),
            mu = pg.md5_user(),
            mp = pg.md5_password(),
            cu = pg.clear_user(),
            cp = pg.clear_password(),
        ),
        ..example()
    })
    .await;
    for db in ["md5-db", "clear-db"] {
        let c = env
            .connect(&env.conninfo("alice", ALICE_TOKEN, db))
            .await
            .unwrap();
        let user: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            user == pg.md5_user() || user == pg.clear_user(),
            "{db}: {user}"
        );
    }
    let err = env
        .connect(&env.conninfo("alice", ALICE_TOKEN, "badcred-db"))
        .await
        .err()
        .unwrap();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08006");
    assert!(
        msg.contains("configured credentials") && !msg.contains("wrong"),
        "{msg}"
    );
}

#[tokio::test]
async fn session_settings_reach_the_upstream_and_do_not_leak_between_sessions() {
    let env = start(example()).await;
    let conn = format!(
        "{} application_name=gate-test options='-c search_path=pg_catalog'",
        env.alice()
    );
    let c = env.connect(&conn).await.unwrap();
    let app: String = c
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "gate-test");
    let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "pg_catalog");
    c.simple_query("SET work_mem = '7MB'; PREPARE leaky AS SELECT 1")
        .await
        .unwrap();
    drop(c);

    // The next session may get the same pooled upstream: none of that state may remain.
    for _ in 0..3 {
        let c = env.connect_alice().await;
        let wm: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_ne!(wm, "7MB");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaky'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn recording_and_audit_hold_what_happened_and_no_secrets() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    c.simple_query("SELECT email FROM users WHERE id = 1")
        .await
        .unwrap();
    let _ = c.simple_query("DROP TABLE users").await;
    let _ = c.simple_query("SELECT * FROM no_such_table").await;
    drop(c);

    let events = env
        .wait_audit("session end", |e| e["kind"] == "session_end")
        .await;
    let started = events
        .iter()
        .find(|e| e["kind"] == "session_start")
        .unwrap();
    let sid = started["session_id"].as_str().unwrap().to_string();
    assert_eq!(started["identity"]["name"], "alice");
    assert_eq!(started["resource"], "primary-db");
    assert!(events.iter().any(|e| e["kind"] == "policy_decision"
        && e["statement"] == "SELECT email FROM users WHERE id = 1"
        && e["action"] == "allow"));
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    // The recording of that session.
    let rec = gate_test_support::wait_until("recording", Duration::from_secs(20), || async {
        files_under(&env.data_dir().join("recordings"))
            .into_iter()
            .find(|p| {
                p.to_string_lossy().contains(&sid)
                    && std::fs::read_to_string(p)
                        .map(|t| t.contains("\"end\""))
                        .unwrap_or(false)
            })
    })
    .await
    .unwrap();
    let lines = read_jsonl(&rec);
    assert_eq!(lines[0]["type"], "session");
    let queries: Vec<_> = lines.iter().filter(|l| l["type"] == "query").collect();
    assert_eq!(queries.len(), 3, "{lines:#?}");
    assert_eq!(queries[0]["rows"], 1);
    assert_eq!(queries[1]["action"], "block");
    assert_eq!(queries[2]["error"]["code"], "42P01");
    assert_eq!(lines.last().unwrap()["type"], "end");

    // No secret anywhere the gateway writes.
    let mut everything = std::fs::read_to_string(env.data_dir().join("audit.jsonl")).unwrap();
    for f in files_under(&env.data_dir()) {
        everything.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    everything.push_str(&env.gw.log());
    assert!(!everything.contains(ALICE_TOKEN), "token leaked");
    assert!(
        !everything.contains(&env.upstream_password),
        "upstream password leaked"
    );
}

#[tokio::test]
async fn metrics_expose_pool_policy_and_request_latency() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    c.simple_query("SELECT 1").await.unwrap();
    let m = env.metrics().await;
    for name in [
        "gate_connpool_active_connections",
        "gate_connpool_waiters",
        "gate_connpool_wait_duration_seconds",
        "gate_connpool_exhausted_total",
        "gate_policy_evaluation_duration_seconds",
        "gate_request_duration_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    assert!(
        m.contains(r#"gate_connpool_active_connections{resource="primary-db"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"stage="pre_request""#));
    // The open client connection is counted on the session thread serving it.
    let on_threads: i64 = m
        .lines()
        .filter(|l| l.starts_with("gate_thread_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum();
    assert!(on_threads >= 1, "{m}");
}

#[tokio::test]
async fn pool_exhaustion_is_reported_and_sessions_wait_their_turn() {
    let pg = gate_test_support::postgres::PgServer::shared();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: tiny-db, protocol: postgres, host: 127.0.0.1, port: {}, database: appdb, credentials: {{username: app, password: \"${{TEST_APP_DB_PASSWORD}}\"}}, pool: {{max_connections: 1, acquire_timeout: \"1s\"}}}}\n",
            pg.port()
        ),
        ..example()
    })
    .await;
    let conn = env.conninfo("alice", ALICE_TOKEN, "tiny-db");
    let a = env.connect(&conn).await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    // Logging in needs no upstream connection; the first query does, and the pool is empty.
    let b = env.connect(&conn).await.unwrap();
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.to_string().contains("exhausted") || db_error(&err).1.contains("exhausted"),
        "{err}"
    );
    let m = env.metrics().await;
    assert!(
        m.contains(r#"gate_connpool_exhausted_total{resource="tiny-db"} 1"#),
        "{m}"
    );
    drop(a);
    // Once the first session ends its connection returns to the pool.
    gate_test_support::wait_until("pooled connection", Duration::from_secs(10), || async {
        let c = env.connect(&conn).await.ok()?;
        c.simple_query("SELECT 1").await.ok().map(|_| ())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sigterm_drains_and_flushes_audit() {
    let mut env = start(example()).await;
    let c = env.connect_alice().await;
    c.simple_query("SELECT 1").await.unwrap();
    env.gw.sigterm().unwrap();
    // New connections are refused once the listener is closed.
    gate_test_support::wait_until("listener closed", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", env.port))
            .await
            .err()
            .map(|_| ())
    })
    .await
    .unwrap();
    // The live session ends at the drain deadline (3 s in this config) with 57P01.
    let err = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(e) = c.simple_query("SELECT 1").await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("session ended by shutdown");
    assert!(
        err.to_string().contains("shutting down") || db_error(&err).0 == "57P01" || err.is_closed(),
        "{err}"
    );
    let status = env.gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", env.gw.log());
    let events = env.audit_events();
    assert!(
        events.iter().any(|e| e["kind"] == "session_end"),
        "{events:#?}"
    );
}

#[tokio::test]
async fn oidc_jwt_authenticates_the_named_user() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let keydir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = keydir.path().join("jwks.json");
    let set = jsonwebtoken::jwk::JwkSet { keys: vec![jwk] };
    std::fs::write(&jwks, serde_json::to_string(&set).unwrap()).unwrap();
    let env = start(Opts {
        oidc: Some(format!(
            "{{issuer: \"https://idp.test\", audience: gate, jwks_file: \"{}\"}}",
            jwks.display()
        )),
        ..example()
    })
    .await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = |claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &enc).unwrap()
    };
    let good = jwt(
        serde_json::json!({"sub": "u-123", "email": "carol@example.com",
        "iss": "https://idp.test", "aud": "gate", "exp": now + 600, "groups": ["engineering"]}),
    );
    let c = env
        .connect(&env.conninfo("carol@example.com", &good, "primary-db"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    // Someone else's token, a wrong audience, an expired token: all 28P01.
    let wrong_aud = jwt(
        serde_json::json!({"sub": "u-123", "email": "carol@example.com",
        "iss": "https://idp.test", "aud": "other", "exp": now + 600}),
    );
    let expired = jwt(
        serde_json::json!({"sub": "u-123", "email": "carol@example.com",
        "iss": "https://idp.test", "aud": "gate", "exp": now - 3600}),
    );
    for (user, token) in [
        ("dave@example.com", &good),
        ("carol@example.com", &wrong_aud),
        ("carol@example.com", &expired),
    ] {
        let err = env
            .connect(&env.conninfo(user, token, "primary-db"))
            .await
            .err()
            .unwrap();
        assert_eq!(db_error(&err).0, "28P01", "{user}: {err}");
    }
    let events = env
        .wait_audit("OIDC session start", |e| {
            e["kind"] == "session_start" && e["identity"]["sub"] == "u-123"
        })
        .await;
    assert!(events.iter().any(|e| e["kind"] == "auth_failure"));
}

#[tokio::test]
async fn pipelined_requests_with_a_block_in_the_middle_keep_their_order() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    // tokio-postgres pipelines concurrent requests on one connection.
    let (a, b, d) = tokio::join!(
        c.query("SELECT 1::int AS x", &[]),
        c.query("DROP TABLE users", &[]),
        c.query("SELECT email FROM users WHERE id = 3", &[]),
    );
    assert_eq!(a.unwrap()[0].get::<_, i32>(0), 1);
    assert_eq!(db_error(&b.unwrap_err()).0, "42501");
    let email: String = d.unwrap()[0].get(0);
    assert!(email.starts_with("ca") && email.contains('*'), "{email}");
}

#[tokio::test]
async fn errors_mid_stream_notices_and_notifications_pass_through() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    // Rows, then a division by zero: the client sees the server's error and can go on.
    let err = c
        .simple_query("SELECT 10 / (5 - g) FROM generate_series(1, 10) g")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "22012", "{err}");
    c.simple_query("SELECT 1").await.unwrap();

    let (ok, out, err) = env
        .psql(
            &env.alice(),
            &[
                "-c",
                "LISTEN gate_channel",
                "-c",
                "NOTIFY gate_channel, 'hello through gate'",
                "-c",
                "DO $$ BEGIN RAISE NOTICE 'notice through gate'; END $$",
            ],
        )
        .await;
    assert!(ok, "{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("hello through gate"),
        "notification relayed: {all}"
    );
    assert!(all.contains("notice through gate"), "notice relayed: {all}");
}

#[tokio::test]
async fn psql_copy_from_stdin_and_to_stdout() {
    let env = start(example()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tsv");
    std::fs::write(&input, "1\tone\n2\ttwo\n3\tthree\n").unwrap();
    let script = format!(
        "CREATE TEMP TABLE t(id int, label text);\n\\copy t FROM '{}'\nSELECT count(*) FROM t;\n\\copy (SELECT label FROM t ORDER BY id) TO STDOUT\n",
        input.display()
    );
    let script_path = dir.path().join("s.sql");
    std::fs::write(&script_path, script).unwrap();
    let (ok, out, err) = env
        .psql(
            &env.alice(),
            &[
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                script_path.to_str().unwrap(),
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("3\n") && out.contains("one\ntwo\nthree"),
        "{out}"
    );
}

#[tokio::test]
async fn a_failing_copy_in_leaves_the_session_in_step() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    c.simple_query("CREATE TEMP TABLE nums(n int)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY nums FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\nnot-a-number\n3\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(db_error(&err).0, "22P02", "{err}");
    // Every later answer still lands on the right request, masks included.
    for _ in 0..3 {
        let email: String = c
            .query_one("SELECT email FROM users WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert!(email.contains('*'), "{email}");
        let n: i64 = c
            .query_one("SELECT count(*) FROM nums", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn a_dedicated_listen_port_implies_the_resource() {
    let pg = gate_test_support::postgres::PgServer::shared();
    let dedicated = gate_test_support::free_port();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: reporting, protocol: postgres, host: 127.0.0.1, port: {}, database: appdb, credentials: {{username: app, password: \"${{TEST_APP_DB_PASSWORD}}\"}}, listen_port: {dedicated}}}\n",
            pg.port()
        ),
        ..example()
    })
    .await;
    // Whatever dbname the client names, the dedicated port serves its own resource.
    let conn = format!(
        "host=127.0.0.1 port={dedicated} user=alice password={ALICE_TOKEN} dbname=whatever sslmode=require"
    );
    let c = env.connect(&conn).await.unwrap();
    let email: String = c
        .query_one("SELECT email FROM users WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        email.contains('*'),
        "same policy on the dedicated port: {email}"
    );
    drop(c);
    let events = env
        .wait_audit("session on the dedicated port", |e| {
            e["kind"] == "session_start" && e["resource"] == "reporting"
        })
        .await;
    assert!(!events.is_empty());
}

#[tokio::test]
async fn oidc_keys_are_fetched_from_a_jwks_url() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("url-key".into());
    let body = serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap();
    // A minimal identity-provider stand-in serving the JWKS document over HTTP.
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = idp.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = idp.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let env = start(Opts {
        oidc: Some(format!(
            "{{issuer: \"https://idp.test\", audience: gate, jwks_url: \"http://{idp_addr}/jwks\"}}"
        )),
        ..example()
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("url-key".into());
    let jwt = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "erin", "iss": "https://idp.test", "aud": "gate", "exp": now + 600}),
        &enc,
    )
    .unwrap();
    for _ in 0..3 {
        let c = env
            .connect(&env.conninfo("erin", &jwt, "primary-db"))
            .await
            .unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "keys are cached after the first fetch"
    );
}

#[tokio::test]
async fn a_policy_reload_reaches_live_sessions_and_their_cached_plans() {
    let lenient = r#"package gate.reload
import rego.v1
session := true
pre_request := true
post_request := true
"#;
    let mut env = start(Opts {
        policy: Some(lenient.into()),
        ..example()
    })
    .await;
    let c = env.connect_alice().await;
    let email = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    let q = "SELECT email FROM users WHERE id = 1";
    assert_eq!(email(c.simple_query(q).await.unwrap()), "alice@example.com");
    assert_eq!(
        email(c.simple_query(q).await.unwrap()),
        "alice@example.com",
        "cached plan"
    );

    // Swap in the masking policy and reload: the same session now gets masked results.
    let strict = std::fs::read_to_string(repo_root().join("policies/example.rego")).unwrap();
    std::fs::write(env.dir.path().join("policy.rego"), strict).unwrap();
    env.gw.signal(libc::SIGHUP).unwrap();
    gate_test_support::wait_until(
        "reloaded policy applies",
        Duration::from_secs(20),
        || async {
            let e = email(c.simple_query(q).await.ok()?);
            e.contains('*').then_some(())
        },
    )
    .await
    .unwrap();
    let err = c.simple_query("DROP TABLE users").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
}

#[tokio::test]
async fn a_deeply_nested_query_cannot_take_the_gateway_down() {
    let env = start(example()).await;
    let c = env.connect_alice().await;
    // 40,000 chained operators once overflowed the parser's stack and aborted the process.
    let deep = format!("SELECT 1{}", "+1".repeat(40_000));
    let _ = c.simple_query(&deep).await; // PostgreSQL may refuse it (stack depth); either way
    let other = env.connect_alice().await; // the gateway is still serving everyone.
    let n: i64 = other
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    assert_eq!(env.gw.http_get("/health").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_vanishing_mid_result_does_not_poison_the_pool() {
    let env = start(example()).await;
    {
        let c = env.connect_alice().await;
        // Start streaming a large result, then drop the client in the middle of it.
        let stream = c
            .query_raw(
                "SELECT g, repeat('z', 200) FROM generate_series(1, 500000) g",
                Vec::<i32>::new(),
            )
            .await
            .unwrap();
        futures_util::pin_mut!(stream);
        for _ in 0..10 {
            stream.next().await.unwrap().unwrap();
        }
    }
    // The half-read upstream connection must be closed, not handed to the next session.
    gate_test_support::wait_until(
        "the abandoned upstream is released",
        Duration::from_secs(30),
        || async {
            let m = env.metrics().await;
            m.contains(r#"gate_connpool_active_connections{resource="primary-db"} 0"#)
                .then_some(())
        },
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let c = env.connect_alice().await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 3, "a clean connection answers the next session");
    }
    let events = env
        .wait_audit("the abandoned session ended", |e| {
            e["kind"] == "session_end"
        })
        .await;
    assert!(!events.is_empty());
}

#[tokio::test]
async fn an_operator_ends_a_live_session_with_57p01() {
    const ADMIN_TOKEN: &str = "tok-admin-pg-0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()))
    };
    let env = start(Opts {
        extra: format!("admin: {{token_sha256: \"{digest}\"}}\n"),
        ..example()
    })
    .await;
    let c = env.connect_alice().await;
    c.simple_query("SELECT 1").await.unwrap();
    let health = env.gw.health_addr().expect("health addr").to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let list = gate_test_support::http_request(
        &health,
        "GET",
        "/admin/sessions",
        &[("authorization", &auth)],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(list.status, 200, "{}", list.body);
    let sessions: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    let id = sessions[0]["id"]
        .as_str()
        .expect("one live session")
        .to_string();
    assert_eq!(sessions[0]["user"], "alice");
    let c = std::sync::Arc::new(c);
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) }
    });
    let r = gate_test_support::http_request(
        &health,
        "POST",
        &format!("/admin/sessions/{id}/terminate"),
        &[("authorization", &auth)],
        br#"{"reason": "credentials rotated"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The client learns why, with admin_shutdown's SQLSTATE, and the session is closed.
    let err = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("session ended by the operator")
        .unwrap()
        .expect_err("the query is cut short");
    let (code, message) = db_error(&err);
    assert_eq!(code, "57P01", "{err}");
    assert!(message.contains("credentials rotated"), "{message}");
    env.wait_audit("session_terminated", |e| e["kind"] == "session_terminated")
        .await;
    // An id no session has is a 404, not a crash. (Not the ended session's own id: it
    // leaves the registry when its close completes, which may be a moment after the client
    // got the error.)
    let r = gate_test_support::http_request(
        &health,
        "POST",
        "/admin/sessions/00000000-0000-7000-8000-000000000000/terminate",
        &[("authorization", &auth)],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

/// The count of `pre_request` evaluations in the gateway's `/metrics`.
fn pre_request_evaluations(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gate_policy_evaluation_duration_seconds_count")
                && l.contains("stage=\"pre_request\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn decisions_are_reused_only_when_the_policy_cannot_tell_statements_apart() {
    // The example policy reads the query's type and tables, never its text: the first
    // `SELECT … FROM users` is evaluated, the other 29 reuse its decision — each is still
    // audited — and a DROP (another type) is evaluated and blocked.
    let env = start(example()).await;
    let c = env.connect_alice().await;
    let before = pre_request_evaluations(&env.metrics().await);
    for i in 0..30 {
        c.simple_query(&format!("SELECT id FROM users WHERE id = {i}"))
            .await
            .unwrap();
    }
    let err = c.simple_query("DROP TABLE users").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");
    let after = pre_request_evaluations(&env.metrics().await);
    assert_eq!(after - before, 2, "one evaluation per (type, tables)");
    env.wait_audit("all 30 SELECTs audited", |_| {
        env.audit_events()
            .iter()
            .filter(|e| {
                e["stage"] == "pre_request"
                    && e["statement"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("SELECT id FROM users WHERE id ="))
            })
            .count()
            == 30
    })
    .await;

    // A policy that reads the statement text is evaluated for every statement.
    let env = start(Opts {
        policy: Some(
            r#"
package formal.v2
import rego.v1
session := {"action": "allow"}
default pre_request := {"action": "allow"}
pre_request := {"action": "block", "reason": "no 7s"} if contains(input.query.statement, "= 7")
post_request := {"action": "allow"}
"#
            .into(),
        ),
        ..Opts::default()
    })
    .await;
    let c = env.connect_alice().await;
    let before = pre_request_evaluations(&env.metrics().await);
    for i in 0..10 {
        let r = c
            .simple_query(&format!("SELECT id FROM users WHERE id = {i}"))
            .await;
        assert_eq!(r.is_err(), i == 7, "statement {i}: {r:?}");
    }
    let after = pre_request_evaluations(&env.metrics().await);
    assert_eq!(after - before, 10);
}

/// When Gate closes a pooled upstream connection (here at shutdown) it sends Terminate
/// first, so PostgreSQL ends that backend as a normal disconnect instead of counting it in
/// `sessions_abandoned` ("connection to the client was lost").
#[tokio::test]
async fn upstream_connections_gate_closes_end_normally() {
    let pg = gate_test_support::postgres::PgServer::shared();
    // A database of its own, so other tests' sessions do not move its counters.
    pg.superuser_psql(
        "postgres",
        "DROP DATABASE IF EXISTS goodbye;\nCREATE DATABASE goodbye;\n",
    )
    .unwrap();
    let mut env = start(Opts {
        extra_resources: format!(
            "  - {{name: goodbye-db, protocol: postgres, host: 127.0.0.1, port: {}, database: goodbye, credentials: {{username: app, password: \"${{TEST_APP_DB_PASSWORD}}\"}}}}\n",
            pg.port()
        ),
        ..example()
    })
    .await;
    let c = env
        .connect(&env.conninfo("alice", ALICE_TOKEN, "goodbye-db"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    // The session ends; its upstream connection is reset and kept in the pool, and closed
    // by the pool at shutdown.
    drop(c);
    env.wait_audit("the session ended", |e| e["kind"] == "session_end")
        .await;
    env.gw.sigterm().unwrap();
    let status = env.gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
    // Backends report how their session ended as they exit.
    let stats = "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = 'goodbye'), \
                 sessions, sessions_abandoned FROM pg_stat_database WHERE datname = 'goodbye'";
    let (sessions, abandoned) = gate_test_support::wait_until(
        "the upstream backend exited and reported",
        Duration::from_secs(20),
        || async {
            let row = pg.superuser_psql("postgres", stats).ok()?;
            let n: Vec<i64> = row
                .trim()
                .split('|')
                .filter_map(|v| v.parse().ok())
                .collect();
            let [live, sessions, abandoned] = n[..] else {
                return None;
            };
            (live == 0 && sessions >= 1).then_some((sessions, abandoned))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        abandoned, 0,
        "{abandoned} of {sessions} upstream sessions ended without Terminate"
    );
}
