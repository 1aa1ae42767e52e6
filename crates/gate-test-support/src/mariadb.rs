//! A throwaway MariaDB server for tests.
//!
//! [`MariaDbServer::start`] runs `mariadb-install-db` into a fresh temp dir, generates TLS
//! material ([`TestCerts`]), starts `mariadbd` in the foreground on a free loopback port with
//! its unix socket in that dir, and creates:
//!
//! | user     | hosts                             | authentication |
//! |----------|-----------------------------------|----------------|
//! | `root`   | `localhost` (unix socket)         | no password |
//! | `app`    | `%`, `127.0.0.1`, `localhost`     | `mysql_native_password` |
//! | `eduser` | `%`, `127.0.0.1`, `localhost`     | `ed25519` (only if the `auth_ed25519` plugin loads; see [`MariaDbServer::ed25519_available`]) |
//!
//! and database `appdb` with table
//! `users(id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(255), ssn VARCHAR(32))` holding
//! [`SAMPLE_USERS`] (the same rows as the PostgreSQL server's), and a stored procedure
//! `appdb.two_results()` that returns two result sets (`id, email` of every user, then
//! `n` = the number of users). `app` and `eduser` have `ALL` on `appdb.*`. Passwords are random
//! per server. The server serves both plain and TLS connections (`--ssl-cert`/`--ssl-key`/
//! `--ssl-ca`); clients verify it with [`MariaDbServer::ca_pem_path`].
//!
//! MariaDB refuses to run as root; when the tests run as root the server runs as the `mysql`
//! system user (created if missing). Data directories are removed when the server is dropped,
//! at process exit for [`MariaDbServer::shared`], and by a watchdog should the test process be
//! killed. Set `GATE_TEST_KEEP=1` to keep them.

use anyhow::{Context, anyhow, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::certs::TestCerts;
use crate::watchdog::Watchdog;
use crate::{Backoff, output_text};

pub use crate::postgres::SAMPLE_USERS;

/// The administrative user (unix socket only, no password).
pub const ROOT_USER: &str = "root";
/// The application database.
pub const APP_DB: &str = "appdb";
/// The application user, authenticated with `mysql_native_password`.
pub const APP_USER: &str = "app";
/// A user authenticated with `ed25519` (when the plugin is available).
pub const ED_USER: &str = "eduser";
/// A stored procedure in [`APP_DB`] that returns two result sets.
pub const TWO_RESULTS_PROC: &str = "two_results";

/// How long a `mariadb` client run may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `mariadbd` may take to accept connections after being started.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `mariadbd` may take to shut down after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running throwaway MariaDB server. See the module docs.
pub struct MariaDbServer {
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
    port: u16,
    mariadbd: PathBuf,
    run_as: Option<(u32, u32)>,
    certs: TestCerts,
    app_password: String,
    ed_password: String,
    ed25519: bool,
    child: Mutex<Option<Child>>,
    running: AtomicBool,
    cleaned: AtomicBool,
    watchdog: Mutex<Option<Watchdog>>,
}

impl std::fmt::Debug for MariaDbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDbServer")
            .field("port", &self.port)
            .field("data", &self.data)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl MariaDbServer {
    /// Starts a new server. Blocking (a few seconds).
    pub fn start() -> anyhow::Result<MariaDbServer> {
        let programs = programs()?;
        let run_as = crate::server_user("mysql", "/nonexistent", "/bin/false")?;
        let base = crate::tmp_base(run_as.is_some());
        let root = tempfile::Builder::new()
            .prefix("gate-maria-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?
            .keep();
        // From here on `Drop` (and, should we be killed, the watchdog) removes `root`.
        let pid_file = root.join("mariadbd.pid");
        let watchdog = Watchdog::spawn(
            r#"pidfile="$2"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  kill -TERM "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
[ "$3" = keep ] || rm -rf "$1""#,
            &[
                root.to_str().context("non-UTF-8 temp dir")?,
                pid_file.to_str().context("non-UTF-8 temp dir")?,
                if crate::keep_dirs() { "keep" } else { "remove" },
            ],
        )
        .ok();
        let mut server = MariaDbServer {
            data: root.join("data"),
            socket: root.join("mysql.sock"),
            log: root.join("error.log"),
            pid_file,
            port: 0,
            mariadbd: programs.mariadbd.clone(),
            run_as,
            // Replaced in init_and_start, once `root` is owned by the server's user.
            certs: TestCerts {
                ca_pem_path: root.join("tls/ca.pem"),
                cert_path: root.join("tls/server.pem"),
                key_path: root.join("tls/server.key"),
            },
            root,
            app_password: format!("app_{}", crate::random_hex()),
            ed_password: format!("ed_{}", crate::random_hex()),
            ed25519: false,
            child: Mutex::new(None),
            running: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
            watchdog: Mutex::new(watchdog),
        };
        server.init_and_start(&programs.install_db)?;
        Ok(server)
    }

    /// One server per test binary, started on first use and stopped at process exit.
    ///
    /// Tests that stop or reconfigure the server must start their own with
    /// [`MariaDbServer::start`] instead: the shared one is used by every test in the binary,
    /// concurrently.
    ///
    /// Panics (in every test that calls it) if the server cannot be started.
    pub fn shared() -> &'static MariaDbServer {
        static SHARED: OnceLock<Result<MariaDbServer, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            let _ = std::panic::catch_unwind(|| {
                if let Some(Ok(server)) = SHARED.get() {
                    server.cleanup();
                }
            });
        }
        let result = SHARED.get_or_init(|| {
            let started = MariaDbServer::start().map_err(|e| format!("{e:#}"));
            if started.is_ok() {
                // SAFETY: registering a plain `extern "C" fn()`; the test harness leaves through
                // `exit`, which runs it.
                unsafe {
                    libc::atexit(stop_shared);
                }
            }
            started
        });
        match result {
            Ok(server) => server,
            Err(e) => panic!("the shared MariaDB server failed to start: {e}"),
        }
    }

    fn init_and_start(&mut self, install_db: &Path) -> anyhow::Result<()> {
        self.certs = TestCerts::generate(&self.root.join("tls"))?;
        if let Some((uid, gid)) = self.run_as {
            for p in [
                self.root.clone(),
                self.root.join("tls"),
                self.certs.ca_pem_path.clone(),
                self.certs.cert_path.clone(),
                self.certs.key_path.clone(),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", p.display()))?;
            }
        }
        // Other users (a client under test running unprivileged) may read the CA.
        std::fs::set_permissions(
            &self.certs.ca_pem_path,
            std::fs::Permissions::from_mode(0o644),
        )?;

        let mut cmd = self.server_command(install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                // Passed on to `mariadbd --bootstrap`: keep the bootstrap small too.
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
            ]);
        let out = crate::run_with_timeout(cmd, None, START_TIMEOUT)
            .context("cannot run mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed ({}):\n{}",
                out.status,
                output_text(&out)
            );
        }

        let mut last_err = None;
        for _attempt in 0..8 {
            self.port = crate::free_port();
            match self.start_server() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let log = self.log();
                    let port_taken = log.contains("Address already in use")
                        || log.contains("Can't start server: Bind on TCP/IP port");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                    // Someone grabbed the port between free_port() and bind: try another.
                    let _ = std::fs::remove_file(&self.log);
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        self.bootstrap()
    }

    /// Spawns `mariadbd` and waits until it answers over the unix socket.
    fn start_server(&self) -> anyhow::Result<()> {
        let mut child_slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child_slot.is_some() {
            bail!("the server is already running");
        }
        let _ = std::fs::remove_file(&self.pid_file);
        // mariadbd redirects its stderr to --log-error once it has parsed its options; errors
        // before that (a bad option) go to the inherited stderr, which is the same file.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.log, Some(uid), Some(gid))?;
        }
        let mut cmd = self.server_command(&self.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-error={}", self.log.display()))
            .arg(format!("--pid-file={}", self.pid_file.display()))
            .arg(format!("--ssl-cert={}", self.certs.cert_path.display()))
            .arg(format!("--ssl-key={}", self.certs.key_path.display()))
            .arg(format!("--ssl-ca={}", self.certs.ca_pem_path.display()))
            .arg(format!("--tmpdir={}", self.root.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--skip-log-bin",
                "--max-connections=500",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--default-time-zone=+00:00",
                "--lc-messages=en_US",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the tests does not reach it directly;
            // clean-up (Drop, atexit, watchdog) stops it.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.mariadbd.display()))?;

        let deadline = Instant::now() + START_TIMEOUT;
        let mut backoff = Backoff::new();
        let mut last = String::from("not started");
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mariadbd exited during start-up ({status}):\n--- {} ---\n{}",
                    self.log.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            if self.socket.exists() {
                match self.root_sql_with_timeout("SELECT 1", Duration::from_secs(10)) {
                    Ok(_) => break,
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child, Duration::from_secs(10));
                bail!(
                    "mariadbd did not accept connections within {START_TIMEOUT:?} (last: {last})\
                     \n--- {} ---\n{}",
                    self.log.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            backoff.wait_blocking(deadline);
        }
        *child_slot = Some(child);
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn bootstrap(&mut self) -> anyhow::Result<()> {
        let rows: Vec<String> = SAMPLE_USERS
            .iter()
            .map(|(id, n, e, s)| format!("({id}, '{n}', '{e}', '{s}')"))
            .collect();
        let mut sql = format!(
            "CREATE DATABASE {APP_DB};\n\
             CREATE TABLE {APP_DB}.users (id INT PRIMARY KEY, name VARCHAR(64), \
             email VARCHAR(255), ssn VARCHAR(32));\n\
             INSERT INTO {APP_DB}.users (id, name, email, ssn) VALUES {rows};\n",
            rows = rows.join(", "),
        );
        for host in ["%", "127.0.0.1", "localhost"] {
            sql.push_str(&format!(
                "CREATE USER '{APP_USER}'@'{host}' IDENTIFIED VIA mysql_native_password \
                 USING PASSWORD('{pw}');\n\
                 GRANT ALL ON {APP_DB}.* TO '{APP_USER}'@'{host}';\n",
                pw = self.app_password,
            ));
        }
        sql.push_str(&format!(
            "DELIMITER //\n\
             CREATE PROCEDURE {APP_DB}.{TWO_RESULTS_PROC}()\n\
             BEGIN\n\
             \x20 SELECT id, email FROM users ORDER BY id;\n\
             \x20 SELECT COUNT(*) AS n FROM users;\n\
             END//\n\
             DELIMITER ;\n"
        ));
        self.root_sql_stdin(&sql)
            .context("creating appdb, its users and the procedure")?;

        // ed25519 is a plugin; a server built without it must not fail the whole set-up.
        if let Err(e) = self.root_sql("INSTALL SONAME 'auth_ed25519'") {
            eprintln!("gate-test-support: INSTALL SONAME 'auth_ed25519': {e:#}");
        }
        // Installed now, or already (a data directory from an install-db that loads it).
        self.ed25519 = self
            .root_sql(
                "SELECT PLUGIN_STATUS FROM information_schema.PLUGINS \
                 WHERE PLUGIN_NAME = 'ed25519'",
            )
            .is_ok_and(|s| s == "ACTIVE");
        if self.ed25519 {
            let mut sql = String::new();
            for host in ["%", "127.0.0.1", "localhost"] {
                sql.push_str(&format!(
                    "CREATE USER '{ED_USER}'@'{host}' IDENTIFIED VIA ed25519 \
                     USING PASSWORD('{pw}');\n\
                     GRANT ALL ON {APP_DB}.* TO '{ED_USER}'@'{host}';\n",
                    pw = self.ed_password,
                ));
            }
            if let Err(e) = self.root_sql_stdin(&sql) {
                eprintln!("gate-test-support: MariaDB ed25519 user not created: {e:#}");
                self.ed25519 = false;
            }
        }
        Ok(())
    }

    /// The TCP port (on 127.0.0.1). It stays the same across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The unix socket (`<tmp>/mysql.sock`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The error log (`<tmp>/error.log`).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The error log's contents (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The TLS material the server serves: its CA, certificate and key.
    pub fn certs(&self) -> &TestCerts {
        &self.certs
    }

    /// The CA that signed the server's certificate (for `localhost` and `127.0.0.1`).
    pub fn ca_pem_path(&self) -> &Path {
        &self.certs.ca_pem_path
    }

    pub fn app_user(&self) -> &'static str {
        APP_USER
    }
    pub fn app_password(&self) -> &str {
        &self.app_password
    }
    /// The ed25519 user. It exists only if [`ed25519_available`](Self::ed25519_available).
    pub fn ed_user(&self) -> &'static str {
        ED_USER
    }
    pub fn ed_password(&self) -> &str {
        &self.ed_password
    }
    /// Whether the `auth_ed25519` plugin loaded and [`ed_user`](Self::ed_user) exists.
    pub fn ed25519_available(&self) -> bool {
        self.ed25519
    }
    pub fn app_db(&self) -> &'static str {
        APP_DB
    }

    /// `SELECT VERSION()`, e.g. `10.11.6-MariaDB-0+deb12u1`.
    pub fn server_version(&self) -> anyhow::Result<String> {
        self.root_sql("SELECT VERSION()")
    }

    /// Runs `sql` with the `mariadb` client as root over the unix socket
    /// (`-N -B -e <sql>`: tab-separated rows, no column names). Several statements, and
    /// `DELIMITER`, work. Returns stdout trimmed; fails with the client's stderr.
    pub fn root_sql(&self, sql: &str) -> anyhow::Result<String> {
        self.root_sql_with_timeout(sql, CLIENT_TIMEOUT)
    }

    fn root_sql_with_timeout(&self, sql: &str, timeout: Duration) -> anyhow::Result<String> {
        let mut cmd = self.root_command();
        cmd.arg("-e").arg(sql);
        client_result(crate::run_with_timeout(cmd, None, timeout)?)
    }

    /// Like [`root_sql`](Self::root_sql) with the SQL on stdin (for long scripts).
    fn root_sql_stdin(&self, sql: &str) -> anyhow::Result<String> {
        let cmd = self.root_command();
        client_result(crate::run_with_timeout(cmd, Some(sql), CLIENT_TIMEOUT)?)
    }

    fn root_command(&self) -> Command {
        let mut cmd = mariadb_command();
        cmd.arg(format!("--socket={}", self.socket.display()))
            .args(["--protocol=SOCKET", "-u", ROOT_USER, "-N", "-B"])
            .arg("--connect-timeout=10");
        cmd
    }

    /// A `mariadb` client command for `user` over TCP to this server, database `db`, batch
    /// mode without column names (`-N -B`). With `tls` it requires TLS and verifies the
    /// server certificate against [`ca_pem_path`](Self::ca_pem_path) (host name `127.0.0.1`);
    /// without, TLS is off. Add `-e <sql>` (or stdin) and run.
    pub fn client_command(&self, user: &str, password: &str, db: &str, tls: bool) -> Command {
        let mut cmd = mariadb_command();
        cmd.args(["--protocol=TCP", "-h", "127.0.0.1", "-P"])
            .arg(self.port.to_string())
            .arg(format!("--user={user}"))
            .arg(format!("--password={password}"))
            .arg(format!("--database={db}"))
            .args(["-N", "-B", "--connect-timeout=10"]);
        if tls {
            cmd.arg("--ssl")
                .arg(format!("--ssl-ca={}", self.certs.ca_pem_path.display()))
                .arg("--ssl-verify-server-cert");
        } else {
            cmd.arg("--skip-ssl");
        }
        cmd
    }

    /// Runs `sql` through [`client_command`](Self::client_command) (`-e <sql>`). Returns
    /// stdout trimmed; fails with the client's stderr.
    pub fn sql_tcp(
        &self,
        user: &str,
        password: &str,
        db: &str,
        tls: bool,
        sql: &str,
    ) -> anyhow::Result<String> {
        client_result(self.sql_tcp_output(user, password, db, tls, sql)?)
    }

    /// Like [`sql_tcp`](Self::sql_tcp) but returns the raw output whatever the exit status,
    /// for tests that expect a failure.
    pub fn sql_tcp_output(
        &self,
        user: &str,
        password: &str,
        db: &str,
        tls: bool,
        sql: &str,
    ) -> anyhow::Result<Output> {
        let mut cmd = self.client_command(user, password, db, tls);
        cmd.arg("-e").arg(sql);
        crate::run_with_timeout(cmd, None, CLIENT_TIMEOUT)
    }

    /// Whether the server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the server cleanly (SIGTERM, then waits for it to exit; SIGKILL after 60 s).
    /// The data directory stays; [`start_again`](Self::start_again) brings it back.
    pub fn stop(&self) -> anyhow::Result<()> {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            // SAFETY: kill(2) on our child, not yet reaped (we hold its handle).
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            if !wait_child(&mut child, STOP_TIMEOUT) {
                kill_and_reap(&mut child, Duration::from_secs(10));
                self.running.store(false, Ordering::SeqCst);
                bail!("mariadbd did not stop within {STOP_TIMEOUT:?} after SIGTERM; killed");
            }
        }
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port, and waits until
    /// it accepts connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        if self.cleaned.load(Ordering::SeqCst) {
            bail!("the server was cleaned up");
        }
        self.start_server()
    }

    /// Kills the server and removes its directory. Idempotent.
    fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            if crate::keep_dirs() {
                // Leave a consistent data directory behind for debugging.
                // SAFETY: kill(2) on our unreaped child.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                if !wait_child(&mut child, STOP_TIMEOUT) {
                    kill_and_reap(&mut child, Duration::from_secs(10));
                }
            } else {
                kill_and_reap(&mut child, Duration::from_secs(10));
            }
        }
        self.running.store(false, Ordering::SeqCst);
        if !crate::keep_dirs() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.disarm();
        }
    }

    /// A command for a MariaDB server program, as the server's OS user, in the temp dir.
    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        clean_mysql_env(&mut cmd);
        cmd.current_dir(&self.root)
            .env("LC_ALL", "C")
            .env("HOME", &self.root);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("USER", "mysql");
        }
        cmd
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- MariaDB error log {} (last 30 lines) ---\n{}",
                self.log.display(),
                crate::tail(&self.log(), 30)
            );
        }
        self.cleanup();
    }
}

/// Polls `child` until it exits or `timeout` passes; whether it exited (and was reaped).
fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        backoff.wait_blocking(deadline);
    }
}

fn kill_and_reap(child: &mut Child, timeout: Duration) {
    let _ = child.kill();
    let _ = wait_child(child, timeout);
}

fn client_result(out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "mariadb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Drops the environment variables the MariaDB programs read (`MYSQL_HOST`, `MYSQL_PWD`,
/// `MYSQL_TCP_PORT`, `MYSQL_UNIX_PORT`, `MARIADB_HOME`, …).
fn clean_mysql_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("MYSQL") || k.starts_with("MARIADB"))
        {
            cmd.env_remove(k);
        }
    }
}

/// The `mariadb` client with `--no-defaults` (no option files) and a clean environment.
/// Add the connection and the rest.
pub fn mariadb_command() -> Command {
    let mut cmd = Command::new(mariadb_binary());
    clean_mysql_env(&mut cmd);
    cmd.arg("--no-defaults").env("LC_ALL", "C");
    cmd
}

struct Programs {
    mariadbd: PathBuf,
    install_db: PathBuf,
}

/// Where the server programs may be: `$GATE_MARIADB_BINDIR` only if set, else `PATH` and then
/// the usual `bin`/`sbin` directories (`mariadbd` is in `/usr/sbin`, often not on `PATH`).
fn search_dirs() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("GATE_MARIADB_BINDIR").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/local/mysql/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let dirs = search_dirs();
    names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()))
}

fn programs() -> anyhow::Result<Programs> {
    static PROGRAMS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let found = PROGRAMS.get_or_init(|| {
        let mariadbd = find_program(&["mariadbd", "mysqld"]);
        let install_db = find_program(&["mariadb-install-db", "mysql_install_db"]);
        match (mariadbd, install_db) {
            (Some(d), Some(i)) => Ok((d, i)),
            _ => Err(server_missing().to_string()),
        }
    });
    found
        .clone()
        .map(|(mariadbd, install_db)| Programs {
            mariadbd,
            install_db,
        })
        .map_err(anyhow::Error::msg)
}

fn server_missing() -> anyhow::Error {
    anyhow!(
        "MariaDB server programs (mariadbd, mariadb-install-db) not found; run \
         scripts/test-setup.sh (apt-get install mariadb-server mariadb-client) or set \
         GATE_MARIADB_BINDIR"
    )
}

/// Whether the MariaDB server programs are installed (so [`MariaDbServer::start`] can work).
pub fn mariadb_available() -> bool {
    programs().is_ok()
}

/// The `mariadb` client: from `$GATE_MARIADB_BINDIR` if set, else `mariadb` (or the older
/// name `mysql`) on `PATH` or in the usual directories; `mariadb` if none is found (so the
/// error comes from running it).
pub fn mariadb_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            find_program(&["mariadb", "mysql"]).unwrap_or_else(|| PathBuf::from("mariadb"))
        })
        .clone()
}

/// Whether `python3` can `import pymysql` (for tests driving PyMySQL). Checked once.
pub fn python_has_pymysql() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", "import pymysql"]);
        crate::run_with_timeout(cmd, None, Duration::from_secs(60))
            .is_ok_and(|o| o.status.success())
    })
}

/// The usual location of MariaDB Connector/J (Debian's `libmariadb-java`).
pub const MARIADB_JAVA_JAR: &str = "/usr/share/java/mariadb-java-client.jar";

/// MariaDB Connector/J, when it and a `java` to run it are installed: `$GATE_MARIADB_JAR` if
/// set, else [`MARIADB_JAVA_JAR`]. `None` means "skip the Java client tests".
pub fn mariadb_java_jar() -> Option<PathBuf> {
    let jar = std::env::var_os("GATE_MARIADB_JAR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MARIADB_JAVA_JAR));
    (jar.is_file() && crate::find_on_path("java").is_some()).then_some(jar)
}

/// The project's `tests/node` directory, when `mysql2` is installed in its `node_modules`
/// (by scripts/test-setup.sh) and `node` is on `PATH`. Run node scripts from there (or with
/// `NODE_PATH=<dir>/node_modules`) to `require('mysql2')`.
pub fn node_mysql2_dir() -> Option<PathBuf> {
    let dir = crate::workspace_root().join("tests").join("node");
    (dir.join("node_modules/mysql2/package.json").is_file()
        && crate::find_on_path("node").is_some())
    .then_some(dir)
}
