//! MySQL/MariaDB through the gateway, end to end: a real MariaDB upstream, the real
//! `gate-connector` binary, and real clients (mysql_async over TLS, the `mariadb` CLI,
//! PyMySQL, MariaDB Connector/J and node mysql2 where installed). The same
//! `policies/example.rego` as the PostgreSQL tests blocks and masks here.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mariadb() -> Opts {
    Opts {
        upstream: Upstream::Mariadb,
        ..Opts::default()
    }
}

fn server() -> &'static gate_test_support::mariadb::MariaDbServer {
    gate_test_support::mariadb::MariaDbServer::shared()
}

impl Env {
    fn my_opts(&self, user: &str, token: &str, db: &str) -> mysql_async::Opts {
        let ssl = mysql_async::SslOpts::default()
            .with_root_certs(vec![self.certs.ca_pem_path.clone().into()]);
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(token))
            .db_name(Some(db))
            .ssl_opts(Some(ssl))
            .prefer_socket(false)
            .into()
    }

    async fn my_alice(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.my_opts("alice", ALICE_TOKEN, "primary-db"))
            .await
            .expect("alice connects through the gateway")
    }
}

fn my_error(e: &mysql_async::Error) -> (u16, String, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.state.clone(), s.message.clone()),
        other => (0, String::new(), other.to_string()),
    }
}

#[tokio::test]
async fn select_over_tls_is_masked_in_text_and_binary_results() {
    let env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    // Text protocol.
    let rows: Vec<(i32, String, String, String)> = c
        .query("SELECT id, name, email, ssn FROM users ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].1, "alice");
    assert!(
        rows[0].2.starts_with("al") && rows[0].2.contains('*'),
        "{}",
        rows[0].2
    );
    assert!(!rows[0].3.contains("6789"), "{}", rows[0].3);
    // Binary protocol (prepared statement), executed many times.
    let stmt = c
        .prep("SELECT name, email, ssn FROM users WHERE id = ?")
        .await
        .unwrap();
    for i in 0..100 {
        let id = 1 + (i % 3);
        let row: Option<(String, String, Option<String>)> =
            c.exec_first(&stmt, (id,)).await.unwrap();
        let (name, email, ssn) = row.unwrap();
        assert!(!name.is_empty());
        assert!(email.contains('*'), "binary email masked: {email}");
        assert!(
            !ssn.unwrap_or_default().contains('-'),
            "binary ssn redacted"
        );
    }
    // An alias does not hide a masked column.
    let contact: Option<String> = c
        .query_first("SELECT email AS contact FROM users WHERE id = 1")
        .await
        .unwrap();
    assert!(
        contact.unwrap().contains('*'),
        "alias maps to the original column"
    );
}

#[tokio::test]
async fn drop_is_blocked_with_42000_and_the_session_stays_usable() {
    let env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    let err = c.query_drop("DROP TABLE users").await.unwrap_err();
    let (code, state, msg) = my_error(&err);
    assert_eq!((code, state.as_str()), (1227, "42000"), "{err}");
    assert!(msg.contains("DROP statements are not allowed"), "{msg}");
    let err = c.prep("DROP TABLE users").await.unwrap_err();
    assert_eq!(my_error(&err).0, 1227);
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM users").await.unwrap();
    assert_eq!(n, Some(3));
}

#[tokio::test]
async fn multi_statements_procedures_and_large_results() {
    let env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    // Two statements in one COM_QUERY.
    let mut result = c
        .query_iter("SELECT 1 AS a; SELECT email FROM users WHERE id = 2")
        .await
        .unwrap();
    let first: Vec<i64> = result.collect().await.unwrap();
    assert_eq!(first, vec![1]);
    let second: Vec<String> = result.collect().await.unwrap();
    assert!(second[0].contains('*'), "{second:?}");
    drop(result);
    // A stored procedure with two result sets.
    let mut result = c.query_iter("CALL two_results()").await.unwrap();
    let emails: Vec<(i32, String)> = result.collect().await.unwrap();
    assert_eq!(emails.len(), 3);
    assert!(emails.iter().all(|(_, e)| e.contains('*')), "{emails:?}");
    let count: Vec<i64> = result.collect().await.unwrap();
    assert_eq!(count, vec![3]);
    drop(result);
    // A large result, streamed.
    let rows: Vec<(i64, String)> = c
        .query("SELECT seq, REPEAT('y', 100) FROM seq_1_to_100000")
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[99_999].0, 100_000);
}

#[tokio::test]
async fn bypasses_are_refused_load_data_local_and_change_user() {
    let env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    c.query_drop("CREATE TEMPORARY TABLE t (x INT)")
        .await
        .unwrap();
    let err = c
        .query_drop("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t")
        .await
        .unwrap_err();
    let (code, _, msg) = my_error(&err);
    assert_eq!(code, 1227, "{err}");
    assert!(
        msg.contains("LOAD DATA LOCAL INFILE is not allowed"),
        "{msg}"
    );
    let err = c
        .change_user(mysql_async::ChangeUserOpts::default().with_user(Some("root".into())))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("COM_CHANGE_USER") || my_error(&err).0 == 1227,
        "{err}"
    );
    let env_events = env
        .wait_audit("refusals audited", |e| {
            e["action"] == "block"
                && e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("LOAD DATA LOCAL")
        })
        .await;
    assert!(!env_events.is_empty());
}

#[tokio::test]
async fn wrong_token_missing_tls_unknown_resource_and_upstream_down() {
    let closed = gate_test_support::free_port();
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: down-db, protocol: mysql, host: 127.0.0.1, port: {closed}, database: appdb, credentials: {{username: app, password: x}}}}\n"
        ),
        ..mariadb()
    })
    .await;
    for (user, token) in [
        ("alice", "wrong"),
        ("alice", BOB_TOKEN),
        ("nobody", ALICE_TOKEN),
    ] {
        let err = mysql_async::Conn::new(env.my_opts(user, token, "primary-db"))
            .await
            .unwrap_err();
        assert_eq!(my_error(&err).0, 1045, "{user}: {err}");
    }
    let err = mysql_async::Conn::new(env.my_opts("alice", ALICE_TOKEN, "nope"))
        .await
        .unwrap_err();
    assert_eq!(my_error(&err).0, 1049, "{err}");
    // No TLS: the token is never accepted in the clear.
    let plain: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(env.port)
        .user(Some("alice"))
        .pass(Some(ALICE_TOKEN))
        .db_name(Some("primary-db"))
        .prefer_socket(false)
        .into();
    let err = mysql_async::Conn::new(plain).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // Upstream down: the gateway reaches the upstream at the first command (mysql_async sends
    // some while connecting), and says clearly why it failed.
    let err = match mysql_async::Conn::new(env.my_opts("alice", ALICE_TOKEN, "down-db")).await {
        Ok(mut c) => c.query_drop("SELECT 1").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("could not reach upstream"),
        "{err}"
    );
    let mut ok = env.my_alice().await;
    ok.query_drop("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn garbage_packets_do_not_hurt_the_process() {
    let env = start(mariadb()).await;
    let addr = format!("127.0.0.1:{}", env.port);
    for payload in [
        vec![0xff, 0xff, 0xff, 0x01, 0x00],
        vec![0x05, 0x00, 0x00, 0x01, 0x01],
        (0..=255u8).cycle().take(3000).collect::<Vec<u8>>(),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Wait for the greeting (a silent client is greeted as MySQL), then send garbage.
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).await.unwrap();
        let _ = s.write_all(&payload).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "gateway closes the connection");
    }
    let mut c = env.my_alice().await;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM users").await.unwrap();
    assert_eq!(n, Some(3));
}

#[tokio::test]
async fn mariadb_cli_connects_without_special_flags() {
    let env = start(mariadb()).await;
    let out = tokio::process::Command::new(gate_test_support::mariadb::mariadb_binary())
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &env.port.to_string(),
            "-u",
            "alice",
        ])
        .arg(format!("-p{ALICE_TOKEN}"))
        .arg(format!("--ssl-ca={}", env.certs.ca_pem_path.display()))
        .args([
            "-N",
            "-B",
            "-e",
            "SELECT name, email, ssn FROM users WHERE id = 2",
            "primary-db",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("bob\t")
            && !stdout.contains("bob@example.com")
            && !stdout.contains("987-65"),
        "{stdout}"
    );
}

#[tokio::test]
async fn recording_audit_and_metrics_match_the_postgres_ones() {
    let env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    let _: Vec<String> = c
        .query("SELECT email FROM users WHERE id = 1")
        .await
        .unwrap();
    let _ = c.query_drop("DROP TABLE users").await;
    drop(c);
    let events = env
        .wait_audit("mysql session end", |e| e["kind"] == "session_end")
        .await;
    let start_ev = events
        .iter()
        .find(|e| e["kind"] == "session_start")
        .unwrap();
    assert_eq!(start_ev["protocol"], "mysql");
    let sid = start_ev["session_id"].as_str().unwrap().to_string();
    let rec = gate_test_support::wait_until("mysql recording", Duration::from_secs(20), || async {
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
    let queries: Vec<_> = lines.iter().filter(|l| l["type"] == "query").collect();
    assert!(
        queries
            .iter()
            .any(|q| q["statement"] == "SELECT email FROM users WHERE id = 1" && q["rows"] == 1),
        "{lines:#?}"
    );
    assert!(queries.iter().any(|q| q["action"] == "block"));
    let m = env.metrics().await;
    assert!(m.contains(r#"protocol="mysql""#), "{m}");
    let mut everything = std::fs::read_to_string(env.data_dir().join("audit.jsonl")).unwrap();
    everything.push_str(&std::fs::read_to_string(&rec).unwrap());
    everything.push_str(&env.gw.log());
    assert!(!everything.contains(ALICE_TOKEN) && !everything.contains(&env.upstream_password));
}

#[tokio::test]
async fn upstream_ed25519_account() {
    let db = server();
    if !db.ed25519_available() {
        panic!(
            "MariaDB's auth_ed25519 plugin is not available; scripts/test-setup.sh installs a server that has it"
        );
    }
    let env = start(Opts {
        extra_resources: format!(
            "  - {{name: ed-db, protocol: mysql, host: 127.0.0.1, port: {}, database: appdb, credentials: {{username: {}, password: \"{}\"}}}}\n",
            db.port(),
            db.ed_user(),
            db.ed_password()
        ),
        ..mariadb()
    })
    .await;
    let mut c = mysql_async::Conn::new(env.my_opts("alice", ALICE_TOKEN, "ed-db"))
        .await
        .unwrap();
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(
        user.unwrap().starts_with(db.ed_user()),
        "logged in upstream as the ed25519 account"
    );
}

/// When Gate closes a pooled upstream connection (here at shutdown) it says COM_QUIT first,
/// so MariaDB does not count and log it as an aborted client (`Aborted_clients`, the
/// "Aborted connection" warning), which DBAs watch.
#[tokio::test]
async fn upstream_connections_gate_closes_are_not_aborted_clients() {
    let mut env = start(mariadb()).await;
    let mut c = env.my_alice().await;
    let id: u64 = c
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .expect("a connection id");
    // The session ends; its upstream connection is reset and kept in the pool, and closed
    // by the pool at shutdown.
    c.disconnect().await.unwrap();
    env.gw.sigterm().unwrap();
    let status = env.gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
    let gone = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}");
    gate_test_support::wait_until(
        "the upstream connection left MariaDB",
        Duration::from_secs(20),
        || async { (server().root_sql(&gone).ok()?.trim() == "0").then_some(()) },
    )
    .await
    .unwrap();
    let log = server().log();
    assert!(
        !log.contains(&format!("Aborted connection {id} to db")),
        "MariaDB logged Gate's upstream connection {id} as aborted:\n{log}"
    );
}
