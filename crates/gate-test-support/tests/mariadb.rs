//! The throwaway MariaDB server: start, query, authenticate (plain and TLS), run the
//! two-result-set procedure, stop and start again.

use gate_test_support::mariadb::{self, MariaDbServer, SAMPLE_USERS};

fn expected_users() -> Vec<String> {
    SAMPLE_USERS
        .iter()
        .map(|(id, n, e, s)| format!("{id}\t{n}\t{e}\t{s}"))
        .collect()
}

#[test]
fn shared_server_serves_appdb_users() {
    let db = MariaDbServer::shared();
    let rows = db
        .root_sql("SELECT id, name, email, ssn FROM appdb.users ORDER BY id")
        .unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expected_users());
    // Same instance every time.
    assert_eq!(MariaDbServer::shared().port(), db.port());
    assert_eq!(db.addr().port(), db.port());
    assert!(db.socket().exists(), "{}", db.socket().display());
    assert!(mariadb::mariadb_binary().is_file());
    assert!(db.server_version().unwrap().contains("MariaDB"));
    assert!(db.log().contains("ready for connections"), "{}", db.log());
}

#[test]
fn root_sql_reports_errors() {
    let db = MariaDbServer::shared();
    let err = db
        .root_sql("SELECT * FROM appdb.no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[test]
fn app_logs_in_over_tcp_with_and_without_tls() {
    let db = MariaDbServer::shared();
    let (user, pw) = (db.app_user(), db.app_password());
    let tls = db
        .sql_tcp(
            user,
            pw,
            "appdb",
            true,
            "SELECT CURRENT_USER(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'Ssl_cipher'",
        )
        .unwrap();
    assert_eq!(tls, "app@127.0.0.1\t1");
    let plain = db
        .sql_tcp(
            user,
            pw,
            "appdb",
            false,
            "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'Ssl_cipher'",
        )
        .unwrap();
    assert_eq!(plain, "");
    let rows = db
        .sql_tcp(
            user,
            pw,
            "appdb",
            true,
            "SELECT id, name, email, ssn FROM users ORDER BY id",
        )
        .unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expected_users());
    // Stored with mysql_native_password.
    let plugin = db
        .root_sql("SELECT DISTINCT plugin FROM mysql.user WHERE user = 'app'")
        .unwrap();
    assert_eq!(plugin, "mysql_native_password");

    // A wrong password is refused.
    let out = db
        .sql_tcp_output(user, "wrong", "appdb", false, "SELECT 1")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Access denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_verification_uses_the_servers_ca() {
    let db = MariaDbServer::shared();
    // A different CA: the server certificate does not verify.
    let dir = tempfile::tempdir().unwrap();
    let other = gate_test_support::certs::TestCerts::generate(dir.path()).unwrap();
    let mut cmd = db.client_command(db.app_user(), db.app_password(), "appdb", false);
    cmd.args(["--ssl", "--ssl-verify-server-cert"])
        .arg(format!("--ssl-ca={}", other.ca_pem_path.display()))
        .args(["-e", "SELECT 1"]);
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "TLS with a foreign CA succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(db.ca_pem_path().is_file());
}

#[test]
fn ed25519_user_logs_in_when_available() {
    let db = MariaDbServer::shared();
    if !db.ed25519_available() {
        eprintln!("ed25519 not available; skipping");
        return;
    }
    let out = db
        .sql_tcp(
            db.ed_user(),
            db.ed_password(),
            "appdb",
            true,
            "SELECT CURRENT_USER(), COUNT(*) FROM users",
        )
        .unwrap();
    assert_eq!(out, "eduser@127.0.0.1\t3");
    let plugin = db
        .root_sql("SELECT DISTINCT plugin FROM mysql.user WHERE user = 'eduser'")
        .unwrap();
    assert_eq!(plugin, "ed25519");
    assert!(
        db.sql_tcp(db.ed_user(), "wrong", "appdb", false, "SELECT 1")
            .is_err()
    );
}

#[test]
fn procedure_returns_two_result_sets() {
    let db = MariaDbServer::shared();
    // With column names (-N off is not needed: the second set's header tells them apart).
    let mut cmd = db.client_command(db.app_user(), db.app_password(), "appdb", true);
    cmd.args(["--column-names", "-e", "CALL two_results()"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let mut expected = vec!["id\temail".to_string()];
    expected.extend(
        SAMPLE_USERS
            .iter()
            .map(|(id, _, e, _)| format!("{id}\t{e}")),
    );
    expected.push("n".into());
    expected.push(SAMPLE_USERS.len().to_string());
    assert_eq!(lines, expected);
}

#[test]
fn helpers_for_other_clients() {
    // Whatever the machine has, these must not panic; after scripts/test-setup.sh they are all
    // present.
    let _ = mariadb::python_has_pymysql();
    if let Some(jar) = mariadb::mariadb_java_jar() {
        assert!(jar.is_file());
    }
    if let Some(dir) = mariadb::node_mysql2_dir() {
        assert!(dir.join("node_modules/mysql2").is_dir());
    }
    assert!(mariadb::mariadb_available());
}

#[test]
fn stop_and_start_again_on_the_same_port() {
    let db = MariaDbServer::start().unwrap();
    let port = db.port();
    assert!(db.is_running());
    assert_eq!(db.root_sql("SELECT 1").unwrap(), "1");

    db.stop().unwrap();
    assert!(!db.is_running());
    assert!(std::net::TcpStream::connect(db.addr()).is_err());
    assert!(
        db.sql_tcp(db.app_user(), db.app_password(), "appdb", false, "SELECT 1")
            .is_err()
    );

    db.start_again().unwrap();
    assert!(db.is_running());
    assert_eq!(db.port(), port);
    assert_eq!(
        db.sql_tcp(
            db.app_user(),
            db.app_password(),
            "appdb",
            true,
            "SELECT COUNT(*) FROM users"
        )
        .unwrap(),
        "3"
    );
    // Data written before a stop survives it.
    db.root_sql("INSERT INTO appdb.users VALUES (4, 'dave', 'dave@example.com', '000-00-0000')")
        .unwrap();
    db.stop().unwrap();
    db.start_again().unwrap();
    assert_eq!(
        db.root_sql("SELECT name FROM appdb.users WHERE id = 4")
            .unwrap(),
        "dave"
    );

    let root = db.data_dir().parent().unwrap().to_path_buf();
    assert!(db.log_file().is_file());
    drop(db);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
