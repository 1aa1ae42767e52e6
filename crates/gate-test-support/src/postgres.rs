//! A throwaway PostgreSQL cluster for tests.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temp dir, starts the server on a free
//! loopback port with its unix socket in that dir, and creates:
//!
//! | role        | stored as | pg_hba method (TCP 127.0.0.1) |
//! |-------------|-----------|-------------------------------|
//! | `postgres`  | superuser, no password; unix socket only (`trust`) | — |
//! | `app`       | SCRAM     | `scram-sha-256` |
//! | `md5user`   | MD5       | `md5` |
//! | `clearuser` | SCRAM     | `password` (cleartext on the wire) |
//!
//! and database `appdb` (owned by `app`) with table
//! `users(id serial primary key, name text, email text, ssn text)` holding [`SAMPLE_USERS`];
//! `md5user` and `clearuser` get all privileges on it too. Passwords are random per server.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server runs as the
//! `postgres` system user (created if missing). Data directories are removed when the
//! server is dropped, at process exit for [`PgServer::shared`], and by a watchdog should the
//! test process be killed. Set `GATE_TEST_KEEP=1` to keep them.

use crate::{find_on_path, output_text, tmp_base};
use anyhow::{Context, anyhow, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::certs::TestCerts;
use crate::watchdog::Watchdog;

/// The bootstrap superuser (unix socket, `trust`).
pub const SUPERUSER: &str = "postgres";
/// The application database.
pub const APP_DB: &str = "appdb";
/// The owner of [`APP_DB`], authenticated with SCRAM-SHA-256.
pub const APP_USER: &str = "app";
/// A role whose password is stored as MD5 and that `pg_hba.conf` authenticates with `md5`.
pub const MD5_USER: &str = "md5user";
/// A role that `pg_hba.conf` authenticates with `password` (cleartext).
pub const CLEAR_USER: &str = "clearuser";
/// Rows of `appdb.users` as `(id, name, email, ssn)`.
pub const SAMPLE_USERS: [(i32, &str, &str, &str); 3] = [
    (1, "alice", "alice@example.com", "123-45-6789"),
    (2, "bob", "bob@example.com", "987-65-4321"),
    (3, "carol", "carol@example.com", "555-12-3456"),
];

/// Options for [`PgServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Serve TLS with this certificate (`ssl = on`); clients may then use `sslmode=require`.
    pub tls: Option<TestCerts>,
    /// Extra `postgresql.conf` lines, appended last (so they win), e.g. `"max_connections = 50"`.
    pub extra_conf: Vec<String>,
}

/// A running throwaway PostgreSQL server. See the module docs.
pub struct PgServer {
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    base_conf: String,
    options: PgOptions,
    app_password: String,
    md5_password: String,
    clear_password: String,
    running: AtomicBool,
    cleaned: AtomicBool,
    watchdog: Mutex<Option<Watchdog>>,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("data", &self.data)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// Starts a new server with the default options. Blocking (a few seconds).
    pub fn start() -> anyhow::Result<PgServer> {
        Self::start_with(PgOptions::default())
    }

    /// Starts a new server. Blocking (a few seconds).
    pub fn start_with(options: PgOptions) -> anyhow::Result<PgServer> {
        let bindir = pg_bindir()?;
        let run_as = postgres_user()?;
        let base = tmp_base(run_as.is_some());
        let root = tempfile::Builder::new()
            .prefix("gate-pg-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?
            .keep();
        // From here on `Drop` (and, should we be killed, the watchdog) removes `root`.
        let data = root.join("data");
        let watchdog = Watchdog::spawn(
            r#"pidfile="$2/postmaster.pid"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
fi
[ "$3" = keep ] || rm -rf "$1""#,
            &[
                root.to_str().context("non-UTF-8 temp dir")?,
                data.to_str().context("non-UTF-8 temp dir")?,
                if crate::keep_dirs() { "keep" } else { "remove" },
            ],
        )
        .ok();
        let mut server = PgServer {
            log: root.join("postgres.log"),
            root,
            data,
            port: 0,
            bindir,
            run_as,
            base_conf: String::new(),
            options,
            app_password: format!("app_{}", crate::random_hex()),
            md5_password: format!("md5_{}", crate::random_hex()),
            clear_password: format!("clear_{}", crate::random_hex()),
            running: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
            watchdog: Mutex::new(watchdog),
        };
        server.init_and_start()?;
        Ok(server)
    }

    /// One server per test binary, started on first use and stopped at process exit.
    ///
    /// Tests that stop or reconfigure the server must start their own with [`PgServer::start`]
    /// instead: the shared one is used by every test in the binary, concurrently.
    ///
    /// Panics (in every test that calls it) if the server cannot be started.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            let _ = std::panic::catch_unwind(|| {
                if let Some(Ok(server)) = SHARED.get() {
                    server.cleanup();
                }
            });
        }
        let result = SHARED.get_or_init(|| {
            let started = PgServer::start().map_err(|e| format!("{e:#}"));
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
            Err(e) => panic!("the shared PostgreSQL server failed to start: {e}"),
        }
    }

    fn init_and_start(&mut self) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.root, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", self.root.display()))?;
        }
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "--auth=trust",
                "--username",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed ({}):\n{}", out.status, output_text(&out));
        }
        self.base_conf = std::fs::read_to_string(self.data.join("postgresql.conf"))
            .context("read postgresql.conf")?;
        self.write_as_server(
            &self.data.join("pg_hba.conf"),
            "# written by gate-test-support\n\
             local all all trust\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all clearuser 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
            0o600,
        )?;
        if let Some(tls) = &self.options.tls {
            let cert = std::fs::read(&tls.cert_path).context("read TLS cert")?;
            let key = std::fs::read(&tls.key_path).context("read TLS key")?;
            self.write_as_server(&self.data.join("server.crt"), &cert, 0o644)?;
            self.write_as_server(&self.data.join("server.key"), &key, 0o600)?;
        }

        let mut last_err = None;
        for _attempt in 0..8 {
            self.port = crate::free_port();
            self.write_conf()?;
            match self.pg_ctl_start() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let log = self.log();
                    let port_taken = log.contains("Address already in use")
                        || log.contains("could not create any TCP/IP sockets");
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

    fn write_conf(&self) -> anyhow::Result<()> {
        let mut conf = self.base_conf.clone();
        conf.push_str(&format!(
            "\n# --- gate-test-support ---\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 300\n\
             shared_buffers = 32MB\n\
             logging_collector = off\n\
             log_connections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             lc_messages = 'C'\n\
             timezone = 'UTC'\n",
            port = self.port,
            sock = self.root.display(),
        ));
        if self.options.tls.is_some() {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for line in &self.options.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        self.write_as_server(&self.data.join("postgresql.conf"), &conf, 0o600)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed ({}):\n{}\n--- {} ---\n{}",
                out.status,
                output_text(&out),
                self.log.display(),
                crate::tail(&self.log(), 40)
            );
        }
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn bootstrap(&self) -> anyhow::Result<()> {
        let roles = format!(
            "SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {APP_USER} LOGIN PASSWORD '{app}';\n\
             CREATE ROLE {CLEAR_USER} LOGIN PASSWORD '{clear}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{md5}';\n\
             RESET password_encryption;\n\
             CREATE DATABASE {APP_DB} OWNER {APP_USER};\n",
            app = self.app_password,
            clear = self.clear_password,
            md5 = self.md5_password,
        );
        self.superuser_psql("postgres", &roles)
            .context("creating roles and database")?;
        let rows: Vec<String> = SAMPLE_USERS
            .iter()
            .map(|(_, n, e, s)| format!("('{n}', '{e}', '{s}')"))
            .collect();
        let schema = format!(
            "SET ROLE {APP_USER};\n\
             CREATE TABLE users (id serial PRIMARY KEY, name text, email text, ssn text);\n\
             INSERT INTO users (name, email, ssn) VALUES {rows};\n\
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {MD5_USER}, {CLEAR_USER};\n\
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {MD5_USER}, {CLEAR_USER};\n\
             RESET ROLE;\n\
             GRANT ALL ON SCHEMA public TO {MD5_USER}, {CLEAR_USER};\n",
            rows = rows.join(", "),
        );
        self.superuser_psql(APP_DB, &schema)
            .context("creating appdb.users")?;
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

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// `PGDATA`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The server log's contents (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The directory with `initdb`, `pg_ctl`, `postgres`, `psql`.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn app_user(&self) -> &'static str {
        APP_USER
    }
    pub fn app_password(&self) -> &str {
        &self.app_password
    }
    pub fn md5_user(&self) -> &'static str {
        MD5_USER
    }
    pub fn md5_password(&self) -> &str {
        &self.md5_password
    }
    pub fn clear_user(&self) -> &'static str {
        CLEAR_USER
    }
    pub fn clear_password(&self) -> &str {
        &self.clear_password
    }
    pub fn app_db(&self) -> &'static str {
        APP_DB
    }

    /// A libpq key/value connection string for TCP, e.g. for `psql` or tokio-postgres:
    /// `host=127.0.0.1 port=… user=… password=… dbname=… sslmode=disable`.
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} sslmode=disable connect_timeout=10",
            self.port
        )
    }

    /// [`conninfo`](Self::conninfo) for `app` on `appdb`.
    pub fn app_conninfo(&self) -> String {
        self.conninfo(APP_USER, &self.app_password, APP_DB)
    }

    /// Runs `sql` through `psql -X -A -t -q -v ON_ERROR_STOP=1` as the superuser over the unix
    /// socket, feeding it on stdin (so several statements, `CREATE DATABASE` included, work).
    /// Returns stdout without its trailing newline: one row per line, columns separated by `|`.
    /// Fails with psql's stderr.
    pub fn superuser_psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = psql_command();
        cmd.args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        run_with_stdin(cmd, sql)
    }

    /// Runs `sql` through `psql` over TCP as `user` (see [`psql`]).
    pub fn psql_tcp(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> anyhow::Result<String> {
        psql(&self.conninfo(user, password, db), sql)
    }

    /// Whether the server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are terminated, shutdown is clean).
    /// The data directory stays; [`start_again`](Self::start_again) brings it back.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server like a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run pg_ctl stop")?;
        if !out.status.success() && self.data.join("postmaster.pid").exists() {
            bail!(
                "pg_ctl stop failed ({}):\n{}",
                out.status,
                output_text(&out)
            );
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
        self.pg_ctl_start()
    }

    /// Stops the server (immediate) and removes its directory. Idempotent.
    fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.data.join("postmaster.pid").exists() && self.pg_ctl_stop("immediate").is_err() {
            // Last resort: SIGQUIT is PostgreSQL's immediate shutdown.
            if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                // SAFETY: plain kill(2).
                unsafe {
                    libc::kill(pid, libc::SIGQUIT);
                }
            }
        }
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

    /// A command for a PostgreSQL server program, as the server's OS user, in the temp dir.
    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        clean_pg_env(&mut cmd);
        cmd.current_dir(&self.root).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid)
                .gid(gid)
                .env("HOME", "/var/lib/postgresql")
                .env("USER", "postgres");
        }
        cmd
    }

    fn write_as_server(
        &self,
        path: &Path,
        contents: impl AsRef<[u8]>,
        mode: u32,
    ) -> anyhow::Result<()> {
        std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log {} (last 30 lines) ---\n{}",
                self.log.display(),
                crate::tail(&self.log(), 30)
            );
        }
        self.cleanup();
    }
}

/// The directory with PostgreSQL's programs: `$GATE_PG_BINDIR`, else `pg_config --bindir`
/// (when it holds `initdb`), else the highest `/usr/lib/postgresql/<version>/bin`, else the
/// directory of `initdb` on `PATH`.
pub fn pg_bindir() -> anyhow::Result<PathBuf> {
    static BINDIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINDIR
        .get_or_init(|| find_pg_bindir().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_pg_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("GATE_PG_BINDIR").filter(|v| !v.is_empty()) {
        let d = PathBuf::from(d);
        if !has_server(&d) {
            bail!("GATE_PG_BINDIR={} has no initdb/pg_ctl", d.display());
        }
        return Ok(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    if let Some(d) =
        find_on_path("initdb").and_then(|p| p.canonicalize().ok()?.parent().map(Path::to_path_buf))
        && has_server(&d)
    {
        return Ok(d);
    }
    Err(anyhow!(
        "PostgreSQL server programs (initdb, pg_ctl) not found; run scripts/test-setup.sh \
         (apt-get install postgresql) or set GATE_PG_BINDIR"
    ))
}

/// `psql` from the PostgreSQL bindir if there is one, else `psql` from `PATH`.
pub fn psql_binary() -> PathBuf {
    pg_bindir()
        .ok()
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("psql"))
        .unwrap_or_else(|| PathBuf::from("psql"))
}

/// `psql -X` with a clean environment: no inherited `PG*` variables, no `~/.pgpass`,
/// `PGCONNECT_TIMEOUT=10`. Add the connection and the rest.
pub fn psql_command() -> Command {
    let mut cmd = Command::new(psql_binary());
    clean_pg_env(&mut cmd);
    cmd.arg("-X")
        .env("PGPASSFILE", "/dev/null")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "gate-test-support")
        .env("LC_ALL", "C");
    cmd
}

/// Runs `sql` (on stdin) through `psql -X -A -t -q -v ON_ERROR_STOP=1 -d <conninfo>`.
/// Returns stdout without its trailing newline; fails with stderr if psql fails.
pub fn psql(conninfo: &str, sql: &str) -> anyhow::Result<String> {
    let mut cmd = psql_command();
    cmd.args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    run_with_stdin(cmd, sql)
}

/// Like [`psql`] but returns the raw output whatever the exit status, for tests that expect
/// a failure (a blocked query, a refused login) and want to look at stderr.
pub fn psql_output(conninfo: &str, sql: &str) -> anyhow::Result<Output> {
    let mut cmd = psql_command();
    cmd.args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    spawn_with_stdin(cmd, sql)
}

/// How long a `psql` run may take before it is killed (a hung query must not hang the tests).
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a psql command with `input` on stdin, within [`PSQL_TIMEOUT`].
fn spawn_with_stdin(cmd: Command, input: &str) -> anyhow::Result<Output> {
    crate::run_with_timeout(cmd, Some(input), PSQL_TIMEOUT)
}

fn run_with_stdin(cmd: Command, input: &str) -> anyhow::Result<String> {
    let out = spawn_with_stdin(cmd, input)?;
    if !out.status.success() {
        bail!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    while s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

fn clean_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(k);
        }
    }
}

/// `None` when not root (the server runs as us); else the `postgres` user's uid/gid,
/// creating the user if it does not exist.
fn postgres_user() -> anyhow::Result<Option<(u32, u32)>> {
    crate::server_user("postgres", "/var/lib/postgresql", "/bin/bash")
}
