//! The throwaway PostgreSQL server: start, query, authenticate, stop and start again.

use gate_test_support::postgres::{self, PgOptions, PgServer, SAMPLE_USERS};
use gate_test_support::{certs::TestCerts, psql_binary};

#[test]
fn shared_server_serves_appdb_users() {
    let pg = PgServer::shared();
    let rows = pg
        .superuser_psql(
            "appdb",
            "SELECT id, name, email, ssn FROM users ORDER BY id",
        )
        .unwrap();
    let expected: Vec<String> = SAMPLE_USERS
        .iter()
        .map(|(id, n, e, s)| format!("{id}|{n}|{e}|{s}"))
        .collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expected);
    // Same instance every time.
    assert_eq!(PgServer::shared().port(), pg.port());
    assert!(psql_binary().ends_with("psql"));
}

#[test]
fn superuser_psql_reports_errors() {
    let pg = PgServer::shared();
    let err = pg
        .superuser_psql("appdb", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[test]
fn every_role_authenticates_over_tcp_with_its_method() {
    let pg = PgServer::shared();
    for (user, password) in [
        (pg.app_user(), pg.app_password()),
        (pg.md5_user(), pg.md5_password()),
        (pg.clear_user(), pg.clear_password()),
    ] {
        let out = pg
            .psql_tcp(
                user,
                password,
                "appdb",
                "SELECT current_user, count(*) FROM users",
            )
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(out, format!("{user}|3"));
        // A wrong password is refused: the method really checks it.
        let out = postgres::psql_output(&pg.conninfo(user, "wrong", "appdb"), "SELECT 1").unwrap();
        assert!(
            !out.status.success(),
            "{user} logged in with a wrong password"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // md5user's password is stored as MD5, the others as SCRAM.
    let stored = pg
        .superuser_psql(
            "postgres",
            "SELECT rolname, left(rolpassword, 13) FROM pg_authid \
             WHERE rolname IN ('app', 'md5user', 'clearuser') ORDER BY rolname",
        )
        .unwrap();
    let stored: Vec<&str> = stored.lines().collect();
    assert_eq!(stored[0], "app|SCRAM-SHA-256");
    assert_eq!(stored[1], "clearuser|SCRAM-SHA-256");
    assert!(stored[2].starts_with("md5user|md5"), "{stored:?}");
    // The log shows which method each role went through.
    let log = pg.log();
    assert!(
        log.contains("user=md5user") && log.contains("method=md5"),
        "{log}"
    );
    assert!(log.contains("method=password"), "{log}");
    assert!(log.contains("method=scram-sha-256"), "{log}");
}

#[test]
fn app_owns_appdb_and_others_can_write() {
    let pg = PgServer::shared();
    let owner = pg
        .superuser_psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'",
        )
        .unwrap();
    assert_eq!(owner, "app");
    let out = pg
        .psql_tcp(
            pg.md5_user(),
            pg.md5_password(),
            "appdb",
            "BEGIN; INSERT INTO users (name) VALUES ('tmp') RETURNING name; ROLLBACK;",
        )
        .unwrap();
    assert_eq!(out, "tmp");
}

#[test]
fn stop_and_start_again_on_the_same_port() {
    let pg = PgServer::start().unwrap();
    let port = pg.port();
    assert!(pg.is_running());
    assert_eq!(pg.superuser_psql("appdb", "SELECT 1").unwrap(), "1");

    pg.stop().unwrap();
    assert!(!pg.is_running());
    assert!(std::net::TcpStream::connect(pg.addr()).is_err());
    assert!(
        pg.psql_tcp(pg.app_user(), pg.app_password(), "appdb", "SELECT 1")
            .is_err()
    );

    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql_tcp(
            pg.app_user(),
            pg.app_password(),
            "appdb",
            "SELECT count(*) FROM users"
        )
        .unwrap(),
        "3"
    );

    pg.stop_immediate().unwrap();
    pg.start_again().unwrap();
    assert_eq!(pg.superuser_psql("appdb", "SELECT 2").unwrap(), "2");

    let root = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(pg.log_file().is_file());
    drop(pg);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn serves_tls_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let pg = PgServer::start_with(PgOptions {
        tls: Some(certs.clone()),
        extra_conf: vec!["max_connections = 50".into()],
    })
    .unwrap();
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=app password={} dbname=appdb \
         sslmode=verify-full sslrootcert={}",
        pg.port(),
        pg.app_password(),
        certs.ca_pem_path.display()
    );
    let out = postgres::psql(
        &conninfo,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(out, "t");
    assert_eq!(
        pg.superuser_psql("postgres", "SHOW max_connections")
            .unwrap(),
        "50"
    );
}
