//! Test support for Gate's end-to-end tests: real upstream servers on free ports, TLS
//! material, and the real `gate-connector` binary, all started by the tests themselves.
//!
//! - [`free_port`], [`wait_for_port`], [`http_get`], [`http_request`]: small networking
//!   helpers.
//! - [`postgres::PgServer`]: a throwaway PostgreSQL cluster (`initdb` into a temp dir).
//! - [`mariadb::MariaDbServer`]: a throwaway MariaDB server (`mariadb-install-db` into a
//!   temp dir), serving TLS too.
//! - [`certs::TestCerts`]: a CA and a `localhost`/`127.0.0.1` server certificate.
//! - [`s3::S3Server`]: a local S3-compatible server (moto) for object-store recordings.
//! - [`webhook_receiver::WebhookReceiver`]: a webhook receiver that verifies Standard
//!   Webhooks signatures with the Python reference library, and can be told to fail.
//! - [`slack::FakeSlack`]: a fake Slack Web API (a mock: no real Slack is reachable) that
//!   records calls and sends signed button clicks, for Slack approvals.
//! - [`sshd::SshServer`]: a throwaway OpenSSH server (`sshd` on a free port, logging in the
//!   `gate-ssh-test` user), and blocking `ssh`/`scp`/`sftp` client helpers.
//! - [`control::ControlPlane`]: the `gate-control` binary with a SQLite store, restartable.
//! - [`gateway::Gateway`]: the `gate-connector` binary, started with a YAML config and
//!   stopped when dropped.
//! - [`cargo_bin`]: the path of a workspace binary, built on demand.
//!
//! Everything here waits for readiness by polling with backoff under generous timeouts;
//! nothing sleeps for a fixed time. Child processes are cleaned up on `Drop`, at process
//! exit (`atexit`), and — should the test process be killed outright — by a small watchdog
//! process that notices the test process is gone.
//!
//! Environment knobs:
//! - `GATE_CONNECTOR_BIN` (generally `GATE_<NAME>_BIN`): use this binary instead of
//!   `<target>/<profile>/<name>`.
//! - `GATE_TEST_SKIP_BUILD=1`: do not run `cargo build` before locating a binary.
//! - `GATE_PG_BINDIR`: directory holding `initdb`, `pg_ctl`, `postgres`, `psql`.
//! - `GATE_MARIADB_BINDIR`: directory holding `mariadbd` (or `mysqld`), `mariadb-install-db`
//!   and the `mariadb` client (default: `PATH`, then `/usr/sbin` and friends).
//! - `GATE_MOTO_SERVER`: the `moto_server` program to run for [`s3::S3Server`] (default:
//!   `.data/moto-venv/bin/moto_server` in the workspace, then `PATH`, then
//!   `python3 -m moto.server`).
//! - `GATE_SSHD`: the `sshd` to run for [`sshd::SshServer`] (default: `PATH`, then `/usr/sbin`).
//! - `GATE_ASCIINEMA`: the `asciinema` (2.x) program [`sshd::asciinema_binary`] names (default:
//!   `.data/asciinema-venv/bin/asciinema` in the workspace, then `PATH`).
//! - `GATE_WEBHOOKS_PYTHON`: a Python with the `standardwebhooks` package for
//!   [`webhook_receiver::WebhookReceiver`] (default: `.data/webhooks-venv/bin/python` in the
//!   workspace, then `python3` on `PATH`).
//! - `GATE_TEST_TMPDIR`: where throwaway servers put their data (default: the system temp dir).
//! - `GATE_TEST_KEEP=1`: keep throwaway data directories after the tests, for debugging.

pub mod certs;
pub mod control;
pub mod gateway;
pub mod mariadb;
pub mod postgres;
pub mod s3;
pub mod slack;
pub mod sshd;
mod watchdog;
pub mod webhook_receiver;

use anyhow::{Context, bail};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::ToSocketAddrs;

pub use postgres::psql_binary;

/// A generous default for "wait until it is up": slow CI machines and cold caches included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0` and releases the socket. A port is never handed out twice by one
/// process, so two calls in a row always give two different ports.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 after 1000 tries");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// Polls until a TCP connection to `addr` succeeds, with backoff, for at most `timeout`.
pub async fn wait_for_port<A>(addr: A, timeout: Duration) -> anyhow::Result<()>
where
    A: ToSocketAddrs + Clone + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(addr.clone()),
        )
        .await;
        let err = match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "{addr:?} did not accept a TCP connection within {timeout:?} (last error: {err})"
            );
        }
        backoff.wait_async(deadline).await;
    }
}

/// A response from [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines as sent, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, lossily decoded.
    pub body: String,
    /// The body as received (after de-chunking).
    pub body_bytes: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 `GET` (with `Connection: close`), for health, readiness and metrics
/// endpoints. Handles `Content-Length`, chunked and read-to-close bodies. 10 s timeout.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], &[]).await
}

/// A minimal HTTP/1.1 request of any method (with `Connection: close`), with extra header
/// lines and a body (`Content-Length` is sent for every method but `GET` and `HEAD`, or when
/// there is a body). Responses are read as by [`http_get`]. 10 s timeout.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(
        Duration::from_secs(10),
        http_request_inner(addr, method, path, headers, body),
    )
    .await
    .with_context(|| format!("{method} http://{addr}{path} timed out"))?
    .with_context(|| format!("{method} http://{addr}{path}"))
}

async fn http_request_inner(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).context("non-UTF-8 HTTP headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_bytes: body,
    })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_str = std::str::from_utf8(&data[..eol])?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).context("bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/gate-test-support has two ancestors")
        .to_path_buf()
}

/// The path of a binary built from this workspace, e.g. `cargo_bin("gate-connector")`.
///
/// `GATE_<NAME>_BIN` (name upper-cased, `-` → `_`; `GATE_CONNECTOR_BIN` for
/// `gate-connector`) overrides the lookup. Otherwise the binary is
/// `<target dir>/<profile>/<name>`, found from the running test executable
/// (`…/target/debug/deps/<test>` → `…/target/debug`).
///
/// When run under cargo (`CARGO` is set) and `GATE_TEST_SKIP_BUILD` is not, the first call for
/// a binary in a process runs `cargo build --bin <name>` from the workspace root, for the same
/// profile and target dir, so a plain `cargo test` never runs a stale or missing binary. After
/// `make test` that build is a no-op. This blocks; from async code call it via
/// `spawn_blocking` (as `Gateway` does).
pub fn cargo_bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!(
        "GATE_{}_BIN",
        name.trim_start_matches("gate-").to_uppercase()
    )
    .replace('-', "_");
    if let Some(p) = std::env::var_os(&var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{var}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let profile_dir = profile_dir()?;
    ensure_bin_built(&profile_dir, name)?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it with `cargo build --bin {name}` or set {var}",
            path.display()
        );
    }
    Ok(path)
}

/// `<target dir>/<profile>` of the running executable.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("executable has no parent dir")?;
    // target/debug/deps/<test>, target/debug/examples/<example>, target/debug/<bin>
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir = dir.parent().context("deps dir has no parent")?;
    }
    Ok(dir.to_path_buf())
}

/// Runs `cargo build --bin <name>` once per process (per binary). From the workspace root a
/// `--bin` build compiles only what that binary needs, with the features `cargo build
/// --workspace` would pick, so it is a no-op after `make test`'s own build.
fn ensure_bin_built(profile_dir: &Path, name: &str) -> anyhow::Result<()> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let skip = std::env::var_os("GATE_TEST_SKIP_BUILD").is_some_and(|v| !v.is_empty() && v != "0");
    let Some(cargo) = std::env::var_os("CARGO").filter(|_| !skip) else {
        return Ok(());
    };
    // Held while building, so concurrent tests wait for one build instead of racing.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(result) = built.get(name) {
        return result.clone().map_err(anyhow::Error::msg);
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "--bin", name])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("gate-test-support: cargo build --bin {name} ({profile})");
    let result = match cmd.output() {
        Err(e) => Err(format!("cannot run {}: {e}", Path::new(&cargo).display())),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`cargo build --bin {name}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    };
    built.insert(name.to_string(), result.clone());
    result.map_err(anyhow::Error::msg)
}

/// Exponential backoff for polling loops: 10 ms, growing ×1.5 up to 250 ms.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(250);

    pub fn new() -> Self {
        Backoff {
            next: Duration::from_millis(10),
        }
    }

    fn step(&mut self, deadline: Instant) -> Duration {
        let d = self
            .next
            .min(deadline.saturating_duration_since(Instant::now()));
        self.next = (self.next * 3 / 2).min(Self::MAX);
        d
    }

    /// Sleeps for the next interval, never past `deadline`.
    pub async fn wait_async(&mut self, deadline: Instant) {
        tokio::time::sleep(self.step(deadline)).await;
    }

    /// Blocking variant, for `Drop` and other sync code.
    pub fn wait_blocking(&mut self, deadline: Instant) {
        std::thread::sleep(self.step(deadline));
    }
}

/// Polls `check` with backoff until it returns `Some`, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        backoff.wait_async(deadline).await;
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `GATE_TEST_KEEP` asks to keep throwaway directories.
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("GATE_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Kills a helper started as the leader of its own process group, with everything it
/// started, and reaps it; nothing to do when it has already exited.
pub(crate) fn kill_process_group(child: &mut std::process::Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Keeps a throwaway directory (and says where) when `GATE_TEST_KEEP` asks for it;
/// otherwise dropping it removes it.
pub(crate) fn keep_dir_if_asked(dir: &mut Option<tempfile::TempDir>) {
    if keep_dirs()
        && let Some(dir) = dir.take()
    {
        eprintln!("gate-test-support: keeping {}", dir.keep().display());
    }
}

/// 16 random bytes as hex, from the OS.
pub fn random_hex() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `program` in a directory of `PATH`, if it is there.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs `cmd` with `input` on stdin (none: `/dev/null`), collecting stdout and stderr, and kills
/// it if it has not finished after `timeout`. Feeding stdin and draining the output happen on
/// their own threads, so neither large inputs nor large outputs can deadlock.
pub(crate) fn run_with_timeout(
    mut cmd: Command,
    input: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => {
            let input = input.to_owned();
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            }))
        }
        _ => None,
    };
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("stdout")?));
    let stderr = drain(Box::new(child.stderr.take().context("stderr")?));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status?,
        Err(_) => {
            // SAFETY: kill(2) on our child, which the waiting thread has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = rx.recv();
            bail!("{program} did not finish within {timeout:?}; killed");
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// stdout followed by stderr, lossily decoded.
pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where throwaway servers create their directories: `GATE_TEST_TMPDIR` or the system temp
/// dir. When the server runs as another user every ancestor must be searchable by others, and
/// unix socket paths are limited to 107 bytes; if either would fail, `/tmp`.
pub(crate) fn tmp_base(other_user: bool) -> PathBuf {
    let base = std::env::var_os("GATE_TEST_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let searchable = |p: &Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    // <base>/gate-xxxxx-XXXXXX/<socket name of up to 20 bytes>
    if base.as_os_str().len() > 70 || (other_user && !searchable(&base)) {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// `None` when not root (servers run as us); else the uid/gid of the system user `name`,
/// creating it (`useradd --system`, with `home` and `shell`) if it does not exist.
pub(crate) fn server_user(
    name: &str,
    home: &str,
    shell: &str,
) -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ids) = lookup_user(name) {
        return Ok(Some(ids));
    }
    let mut cmd = Command::new("useradd");
    cmd.args(["--system", "--home-dir", home, "--shell", shell]);
    if group_exists(name) {
        cmd.args(["--gid", name]);
    } else {
        cmd.arg("--user-group");
    }
    let out = cmd.arg(name).output().context("cannot run useradd")?;
    // Another process may have created it at the same time; look again either way.
    lookup_user(name).map(Some).ok_or_else(|| {
        anyhow::anyhow!(
            "running as root and there is no `{name}` user; useradd failed ({}): {}",
            out.status,
            output_text(&out)
        )
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r with a zeroed passwd and a buffer we own; result checked for null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    }
}

fn group_exists(name: &str) -> bool {
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    // SAFETY: as in lookup_user.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        rc == 0 && !result.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello-extra",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse_http_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
    }

    #[tokio::test]
    async fn waits_for_a_port_that_opens_later() {
        let port = free_port();
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let _ = l.accept().await;
        });
        wait_for_port(("127.0.0.1", port), Duration::from_secs(30))
            .await
            .unwrap();
        opener.await.unwrap();
    }

    #[tokio::test]
    async fn wait_for_port_times_out() {
        let port = free_port();
        let err = wait_for_port(("127.0.0.1", port), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not accept"), "{err}");
    }

    #[test]
    fn profile_dir_is_target_debug() {
        let d = profile_dir().unwrap();
        assert!(d.join("deps").is_dir(), "{}", d.display());
    }
}
