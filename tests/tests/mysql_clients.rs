//! Real MySQL/MariaDB client libraries through the gateway, end to end: PyMySQL, MariaDB
//! Connector/J and node mysql2, each run as a subprocess against the real `gate-connector`
//! in front of a real MariaDB, over TLS with the gateway's certificate verified against the
//! test CA. Each client prints tab-separated lines (`TAG\tfield\t…`) that the test asserts on.
//!
//! The client runtimes are installed by scripts/test-setup.sh. A test skips (loudly, with
//! `SKIPPED: …` on stderr) only when its runtime is genuinely missing, and then still checks
//! that the gateway serves MySQL.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use gate_test_support::postgres::SAMPLE_USERS;
use mysql_async::prelude::*;

/// How long one client run may take before it counts as hung and is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

fn mariadb() -> Opts {
    Opts {
        upstream: Upstream::Mariadb,
        ..Opts::default()
    }
}

/// The environment every client script reads its connection from.
fn client_env(env: &Env, cmd: &mut tokio::process::Command) {
    cmd.env("GATE_PORT", env.port.to_string())
        .env("GATE_USER", "alice")
        .env("GATE_TOKEN", ALICE_TOKEN)
        .env("GATE_DB", "primary-db")
        .env("GATE_CA", &env.certs.ca_pem_path);
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a client to completion (killing it after [`CLIENT_TIMEOUT`]) and returns its stdout.
/// Fails with the client's output and the end of the gateway log if it hangs or fails.
async fn run_client(env: &Env, what: &str, mut cmd: tokio::process::Command) -> String {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(CLIENT_TIMEOUT, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}")),
        Err(_) => panic!(
            "{what}: no exit within {CLIENT_TIMEOUT:?} (hung; killed)\n\
             --- gateway log (last 60 lines) ---\n{}",
            tail(&env.gw.log(), 60)
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n\
         --- gateway log (last 60 lines) ---\n{}",
        out.status,
        tail(&env.gw.log(), 60)
    );
    if !stderr.trim().is_empty() {
        eprintln!("{what} stderr:\n{stderr}");
    }
    stdout
}

/// The fields after the tag of every line tagged `tag`.
fn tagged<'a>(out: &'a str, tag: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .filter_map(|l| {
            let mut fields = l.split('\t');
            (fields.next() == Some(tag)).then(|| fields.collect())
        })
        .collect()
}

/// The single line tagged `tag`.
fn one<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    let mut lines = tagged(out, tag);
    assert_eq!(lines.len(), 1, "exactly one {tag} line in:\n{out}");
    lines.remove(0)
}

/// `email` is the partial mask of `real`: same length, first and last two characters kept,
/// the rest starred.
fn assert_email_masked(email: &str, real: &str, out: &str) {
    assert_ne!(email, real, "email leaked unmasked:\n{out}");
    assert!(
        email.len() == real.len()
            && email.starts_with(&real[..2])
            && email.ends_with(&real[real.len() - 2..])
            && email[2..email.len() - 2].chars().all(|c| c == '*'),
        "email {email:?} is not the partial mask of {real:?}:\n{out}"
    );
}

/// `ssn` is redacted: nothing of the real value (no digit) is left.
fn assert_ssn_redacted(ssn: &str, out: &str) {
    assert!(
        !ssn.is_empty() && !ssn.chars().any(|c| c.is_ascii_digit()),
        "ssn {ssn:?} is not redacted:\n{out}"
    );
}

/// `row` = `[name, email, ssn]` of the sample user with id `id`, masked.
fn assert_user_row(id: i32, row: &[&str], out: &str) {
    let (_, name, email, _) = SAMPLE_USERS
        .iter()
        .find(|u| u.0 == id)
        .unwrap_or_else(|| panic!("no sample user {id}"));
    assert_eq!(row.len(), 3, "name, email, ssn: {row:?}\n{out}");
    assert_eq!(row[0], *name, "name is not masked:\n{out}");
    assert_email_masked(row[1], email, out);
    assert_ssn_redacted(row[2], out);
}

/// `rows` = every sample user as `[name, email, ssn]`, in id order, masked.
fn assert_all_users(rows: &[Vec<&str>], out: &str) {
    assert_eq!(rows.len(), SAMPLE_USERS.len(), "one line per user:\n{out}");
    for (row, user) in rows.iter().zip(SAMPLE_USERS) {
        assert_user_row(user.0, row, out);
    }
}

/// `[code, …, message]` of a blocked DROP.
fn assert_drop_blocked(fields: &[&str], out: &str) {
    assert_eq!(
        fields.first(),
        Some(&"1227"),
        "DROP refused with 1227:\n{out}"
    );
    assert!(
        fields
            .last()
            .is_some_and(|m| m.contains("DROP statements are not allowed")),
        "the policy's reason reaches the client:\n{out}"
    );
}

/// The `two_results()` procedure's result sets, as `SET\t<index>\t<fields…>` lines: set 0
/// is `id, email` of every user (emails masked), set 1 is the user count.
fn assert_two_results(out: &str, tag: &str) {
    let rows = tagged(out, tag);
    let set = |i: &str| -> Vec<Vec<&str>> {
        rows.iter()
            .filter(|r| r.first() == Some(&i))
            .map(|r| r[1..].to_vec())
            .collect()
    };
    let first = set("0");
    assert_eq!(first.len(), SAMPLE_USERS.len(), "first result set:\n{out}");
    for (row, (id, _, email, _)) in first.iter().zip(SAMPLE_USERS) {
        assert_eq!(row.len(), 2, "id, email:\n{out}");
        assert_eq!(row[0], id.to_string(), "{out}");
        assert_email_masked(row[1], email, out);
    }
    assert_eq!(
        set("1"),
        vec![vec![SAMPLE_USERS.len().to_string().as_str()]],
        "second result set:\n{out}"
    );
}

/// When a client runtime is missing: says so loudly and checks the gateway serves MySQL.
async fn skip(env: &Env, reason: &str) {
    eprintln!("SKIPPED: {reason} (run scripts/test-setup.sh to install it)");
    let ssl =
        mysql_async::SslOpts::default().with_root_certs(vec![env.certs.ca_pem_path.clone().into()]);
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(env.port)
        .user(Some("alice"))
        .pass(Some(ALICE_TOKEN))
        .db_name(Some("primary-db"))
        .ssl_opts(Some(ssl))
        .prefer_socket(false)
        .into();
    let mut c = mysql_async::Conn::new(opts)
        .await
        .expect("alice connects through the gateway");
    let email: Option<String> = c
        .query_first("SELECT email FROM users WHERE id = 1")
        .await
        .unwrap();
    assert_email_masked(&email.unwrap(), SAMPLE_USERS[0].2, "mysql_async");
}

const PYMYSQL_SCRIPT: &str = r#"
import os, sys, pymysql

def out(*fields):
    print(*fields, sep="\t", flush=True)

def cell(v):
    return "NULL" if v is None else str(v)

conn = pymysql.connect(
    host="127.0.0.1",
    port=int(os.environ["GATE_PORT"]),
    user=os.environ["GATE_USER"],
    password=os.environ["GATE_TOKEN"],
    database=os.environ["GATE_DB"],
    ssl_ca=os.environ["GATE_CA"],
    ssl_verify_cert=True,
    ssl_verify_identity=True,
    connect_timeout=10,
    read_timeout=60,
    write_timeout=60,
)
out("TLS", conn._sock.version() if hasattr(conn._sock, "version") else "none")
with conn.cursor() as cur:
    cur.execute("SELECT name, email, ssn FROM users ORDER BY id")
    for row in cur.fetchall():
        out("ROW", *map(cell, row))

    cur.execute("SELECT name, email, ssn FROM users WHERE id = %s", (2,))
    out("PARAM", *map(cell, cur.fetchone()))

    try:
        cur.execute("DROP TABLE users")
        out("DROP", "not refused")
    except pymysql.MySQLError as e:
        out("DROP_ERR", e.args[0], type(e).__name__, e.args[1] if len(e.args) > 1 else "")

    cur.execute("SELECT COUNT(*) FROM users")
    out("COUNT", cur.fetchone()[0])

    cur.execute("CALL two_results()")
    i = 0
    while True:
        if cur.description is not None:
            for row in cur.fetchall():
                out("SET", i, *map(cell, row))
        i += 1
        if not cur.nextset():
            break
    out("SETS", i)

    cur.execute("SELECT %s + 1", (41,))
    out("AFTER", cur.fetchone()[0])
conn.close()
out("DONE")
"#;

#[tokio::test]
async fn pymysql_masks_blocks_and_reads_two_result_sets() {
    let env = start(mariadb()).await;
    if !gate_test_support::mariadb::python_has_pymysql() {
        return skip(&env, "python3 cannot import pymysql").await;
    }
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PYMYSQL_SCRIPT]);
    client_env(&env, &mut cmd);
    let out = run_client(&env, "PyMySQL", cmd).await;
    println!("{out}");

    assert!(
        one(&out, "TLS")[0].starts_with("TLS"),
        "TLS is used:\n{out}"
    );
    assert_all_users(&tagged(&out, "ROW"), &out);
    assert_user_row(2, &one(&out, "PARAM"), &out);
    assert!(tagged(&out, "DROP").is_empty(), "DROP went through:\n{out}");
    assert_drop_blocked(&one(&out, "DROP_ERR"), &out);
    assert_eq!(
        one(&out, "COUNT"),
        vec!["3"],
        "the session stays usable:\n{out}"
    );
    assert_two_results(&out, "SET");
    assert_eq!(one(&out, "AFTER"), vec!["42"], "in sync after CALL:\n{out}");
    one(&out, "DONE");
}

/// mysql-connector-python: Oracle's driver, pure-Python mode, with server-side prepared
/// statements (binary rows) through `cursor(prepared=True)`.
const CONNECTOR_PYTHON_SCRIPT: &str = r#"
import os, mysql.connector

def out(*fields):
    print(*fields, sep="\t", flush=True)

def cell(v):
    if v is None:
        return "NULL"
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)

conn = mysql.connector.connect(
    host="127.0.0.1",
    port=int(os.environ["GATE_PORT"]),
    user=os.environ["GATE_USER"],
    password=os.environ["GATE_TOKEN"],
    database=os.environ["GATE_DB"],
    ssl_ca=os.environ["GATE_CA"],
    ssl_verify_cert=True,
    use_pure=True,
    connection_timeout=10,
)
cur = conn.cursor()
cur.execute("SELECT name, email, ssn FROM users ORDER BY id")
for row in cur.fetchall():
    out("ROW", *map(cell, row))

prep = conn.cursor(prepared=True)
for _ in range(20):
    prep.execute("SELECT name, email, ssn FROM users WHERE id = %s", (2,))
    row = prep.fetchone()
out("PARAM", *map(cell, row))

try:
    cur.execute("DROP TABLE users")
    out("DROP", "not refused")
except mysql.connector.Error as e:
    out("DROP_ERR", e.errno, e.sqlstate, e.msg)

cur.execute("SELECT COUNT(*) FROM users")
out("COUNT", cur.fetchone()[0])

cur.execute("SELECT 41 + 1")
out("AFTER", cur.fetchone()[0])
conn.close()
out("DONE")
"#;

#[tokio::test]
async fn mysql_connector_python_masks_prepares_and_blocks() {
    let env = start(mariadb()).await;
    let available = std::process::Command::new("python3")
        .args(["-c", "import mysql.connector"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        return skip(&env, "python3 cannot import mysql.connector").await;
    }
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", CONNECTOR_PYTHON_SCRIPT]);
    client_env(&env, &mut cmd);
    let out = run_client(&env, "mysql-connector-python", cmd).await;
    println!("{out}");
    assert_all_users(&tagged(&out, "ROW"), &out);
    assert_user_row(2, &one(&out, "PARAM"), &out);
    assert!(tagged(&out, "DROP").is_empty(), "DROP went through:\n{out}");
    let drop = one(&out, "DROP_ERR");
    assert_drop_blocked(&drop, &out);
    assert_eq!(drop.get(1), Some(&"42000"), "SQLSTATE 42000:\n{out}");
    assert_eq!(
        one(&out, "COUNT"),
        vec!["3"],
        "the session stays usable:\n{out}"
    );
    assert_eq!(one(&out, "AFTER"), vec!["42"]);
    one(&out, "DONE");
}

const JAVA_SOURCE: &str = r#"
import java.sql.*;

public class Main {
    static void out(Object... fields) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < fields.length; i++) {
            if (i > 0) b.append('\t');
            b.append(fields[i] == null ? "NULL" : fields[i].toString());
        }
        System.out.println(b);
        System.out.flush();
    }

    /** Prints every result of an executed statement as SET lines (tag, index, columns). */
    static int results(Statement s, boolean isResultSet, String tag) throws SQLException {
        int i = 0;
        while (true) {
            if (isResultSet) {
                try (ResultSet rs = s.getResultSet()) {
                    int n = rs.getMetaData().getColumnCount();
                    while (rs.next()) {
                        Object[] f = new Object[n + 2];
                        f[0] = tag;
                        f[1] = i;
                        for (int c = 1; c <= n; c++) f[c + 1] = rs.getString(c);
                        out(f);
                    }
                }
            } else if (s.getUpdateCount() == -1) {
                break;
            }
            i++;
            isResultSet = s.getMoreResults();
        }
        return i;
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:mariadb://127.0.0.1:" + System.getenv("GATE_PORT") + "/"
            + System.getenv("GATE_DB")
            + "?useSsl=true&serverSslCert=" + System.getenv("GATE_CA")
            + "&useServerPrepStmts=true&connectTimeout=10000&socketTimeout=60000";
        try (Connection c = DriverManager.getConnection(
                url, System.getenv("GATE_USER"), System.getenv("GATE_TOKEN"))) {
            out("DRIVER", c.getMetaData().getDriverName(), c.getMetaData().getDriverVersion());

            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT name, email, ssn FROM users ORDER BY id")) {
                while (rs.next()) out("ROW", rs.getString(1), rs.getString(2), rs.getString(3));
            }

            try (PreparedStatement ps =
                     c.prepareStatement("SELECT id, name, email, ssn FROM users WHERE id = ?")) {
                for (int i = 0; i < 50; i++) {
                    int id = 1 + i % 3;
                    ps.setInt(1, id);
                    try (ResultSet rs = ps.executeQuery()) {
                        int rows = 0;
                        while (rs.next()) {
                            rows++;
                            out("PREP", i, rs.getInt(1), rs.getString(2), rs.getString(3),
                                rs.getString(4));
                        }
                        if (rows != 1) out("PREP_ROWS", i, id, rows);
                    }
                }
                // Connector/J 2.7 silently falls back to client-side (text) statements when
                // the server cannot prepare one: the class says which kind ran.
                out("PREP_CLASS", ps.getClass().getSimpleName());
            }

            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE users");
                out("DROP", "not refused");
            } catch (SQLException e) {
                out("DROP_ERR", e.getErrorCode(), e.getSQLState(), e.getMessage());
            }
            try (PreparedStatement ps = c.prepareStatement("DROP TABLE users")) {
                ps.execute();
                out("DROP", "prepared, not refused");
            } catch (SQLException e) {
                out("PREP_DROP_ERR", e.getErrorCode(), e.getSQLState(), e.getMessage());
            }

            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT COUNT(*) FROM users")) {
                rs.next();
                out("COUNT", rs.getInt(1));
            }

            try (Statement s = c.createStatement()) {
                out("TEXT_SETS", results(s, s.execute("CALL two_results()"), "TEXT_SET"));
            }
            try (CallableStatement cs = c.prepareCall("{call two_results()}")) {
                out("CALL_SETS", results(cs, cs.execute(), "CALL_SET"));
            }

            try (PreparedStatement ps = c.prepareStatement("SELECT ? + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    out("AFTER", rs.getInt(1));
                }
            }
        }
        out("DONE");
    }
}
"#;

#[tokio::test]
async fn mariadb_connector_j_masks_prepares_blocks_and_calls() {
    let env = start(mariadb()).await;
    let Some(jar) = gate_test_support::mariadb::mariadb_java_jar() else {
        return skip(&env, "MariaDB Connector/J or java not installed").await;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("Main.java");
    std::fs::write(&src, JAVA_SOURCE).unwrap();
    let javac = which("javac");
    let mut cmd = tokio::process::Command::new("java");
    if let Some(javac) = javac {
        let mut compile = tokio::process::Command::new(javac);
        compile
            .arg("-cp")
            .arg(&jar)
            .arg("-d")
            .arg(dir.path())
            .arg(&src);
        run_client(&env, "javac", compile).await;
        let cp = std::env::join_paths([jar.as_path(), dir.path()]).unwrap();
        cmd.arg("-cp").arg(cp).arg("Main");
    } else {
        // Java 11+ runs a single source file directly.
        eprintln!("javac not found; running Main.java with the source launcher");
        cmd.arg("-cp").arg(&jar).arg(&src);
    }
    client_env(&env, &mut cmd);
    let out = run_client(&env, "MariaDB Connector/J", cmd).await;
    println!("{out}");

    assert_all_users(&tagged(&out, "ROW"), &out);
    let prep = tagged(&out, "PREP");
    assert_eq!(
        prep.len(),
        50,
        "50 prepared executions, one row each:\n{out}"
    );
    for (i, row) in prep.iter().enumerate() {
        let id = 1 + (i as i32) % 3;
        assert_eq!(row[..2], [i.to_string(), id.to_string()], "{out}");
        assert_user_row(id, &row[2..], &out);
    }
    assert_eq!(
        one(&out, "PREP_CLASS"),
        vec!["ServerSidePreparedStatement"],
        "server-side prepared statements (binary results):\n{out}"
    );
    assert!(tagged(&out, "DROP").is_empty(), "DROP went through:\n{out}");
    let drop = one(&out, "DROP_ERR");
    assert_eq!(drop[1], "42000", "SQLState:\n{out}");
    assert_drop_blocked(&drop, &out);
    assert_drop_blocked(&one(&out, "PREP_DROP_ERR"), &out);
    assert_eq!(
        one(&out, "COUNT"),
        vec!["3"],
        "the session stays usable:\n{out}"
    );
    assert_two_results(&out, "TEXT_SET");
    assert_two_results(&out, "CALL_SET");
    assert_eq!(one(&out, "AFTER"), vec!["42"], "in sync after CALL:\n{out}");
    one(&out, "DONE");
}

const NODE_SCRIPT: &str = r#"
const fs = require('fs');
const mysql = require('mysql2/promise');

const out = (...fields) => console.log(fields.map((f) => (f === null ? 'NULL' : String(f))).join('\t'));

(async () => {
  const c = await mysql.createConnection({
    host: '127.0.0.1',
    port: Number(process.env.GATE_PORT),
    user: process.env.GATE_USER,
    password: process.env.GATE_TOKEN,
    database: process.env.GATE_DB,
    ssl: { ca: fs.readFileSync(process.env.GATE_CA), rejectUnauthorized: true },
    multipleStatements: true,
    connectTimeout: 10000,
  });
  const stream = c.connection.stream;
  out('TLS', stream.encrypted ? stream.getProtocol() : 'none');

  const [rows] = await c.query('SELECT name, email, ssn FROM users ORDER BY id');
  for (const r of rows) out('ROW', r.name, r.email, r.ssn);

  for (let i = 0; i < 20; i++) {
    const id = 1 + (i % 3);
    const [r] = await c.execute('SELECT id, name, email, ssn FROM users WHERE id = ?', [id]);
    for (const x of r) out('EXEC', i, x.id, x.name, x.email, x.ssn);
  }

  try {
    await c.query('DROP TABLE users');
    out('DROP', 'not refused');
  } catch (e) {
    out('DROP_ERR', e.errno, e.sqlState, e.message);
  }
  try {
    await c.execute('DROP TABLE users');
    out('DROP', 'prepared, not refused');
  } catch (e) {
    out('EXEC_DROP_ERR', e.errno, e.sqlState, e.message);
  }

  const [[count]] = await c.query('SELECT COUNT(*) AS n FROM users');
  out('COUNT', count.n);

  const [multi] = await c.query('SELECT 1 AS a; SELECT email FROM users WHERE id = 2');
  out('MULTI', multi.length, multi[0][0].a, multi[1][0].email);

  const [sets] = await c.query('CALL two_results()');
  sets.forEach((set, i) => {
    if (Array.isArray(set)) for (const r of set) out('SET', i, ...Object.values(r));
  });

  const [[after]] = await c.execute('SELECT ? + 1 AS x', [41]);
  out('AFTER', after.x);
  await c.end();
  out('DONE');
})().catch((e) => {
  console.error('FATAL', e);
  process.exit(1);
});
"#;

#[tokio::test]
async fn node_mysql2_masks_text_and_binary_blocks_and_runs_multi_statements() {
    let env = start(mariadb()).await;
    let Some(dir) = gate_test_support::mariadb::node_mysql2_dir() else {
        return skip(&env, "node or tests/node/node_modules/mysql2 not installed").await;
    };
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["-e", NODE_SCRIPT])
        .current_dir(&dir)
        .env("NODE_PATH", dir.join("node_modules"));
    client_env(&env, &mut cmd);
    let out = run_client(&env, "node mysql2", cmd).await;
    println!("{out}");

    assert!(
        one(&out, "TLS")[0].starts_with("TLS"),
        "TLS is used:\n{out}"
    );
    assert_all_users(&tagged(&out, "ROW"), &out);
    let exec = tagged(&out, "EXEC");
    assert_eq!(
        exec.len(),
        20,
        "20 prepared executions, one row each:\n{out}"
    );
    for (i, row) in exec.iter().enumerate() {
        let id = 1 + (i as i32) % 3;
        assert_eq!(row[..2], [i.to_string(), id.to_string()], "{out}");
        assert_user_row(id, &row[2..], &out);
    }
    assert!(tagged(&out, "DROP").is_empty(), "DROP went through:\n{out}");
    let drop = one(&out, "DROP_ERR");
    assert_eq!(drop[1], "42000", "sqlState:\n{out}");
    assert_drop_blocked(&drop, &out);
    assert_drop_blocked(&one(&out, "EXEC_DROP_ERR"), &out);
    assert_eq!(
        one(&out, "COUNT"),
        vec!["3"],
        "the session stays usable:\n{out}"
    );
    let multi = one(&out, "MULTI");
    assert_eq!(
        multi[..2],
        ["2", "1"],
        "two statements, two results:\n{out}"
    );
    assert_email_masked(multi[2], SAMPLE_USERS[1].2, &out);
    assert_two_results(&out, "SET");
    assert_eq!(one(&out, "AFTER"), vec!["42"], "in sync after CALL:\n{out}");
    one(&out, "DONE");
}

/// `program` on `PATH`.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| Path::is_file(p))
}
