//! A throwaway OpenSSH server for tests, and blocking helpers for the OpenSSH clients.
//!
//! [`SshServer::start`] generates an ed25519 host key in a fresh temp dir, writes an
//! `sshd_config` there and runs `sshd -D -e -f <config>` in the foreground on a free loopback
//! port, logging to `<tmp>/sshd.log`. It waits until a TCP connection reads a banner starting
//! with `SSH-2.0-`.
//!
//! | setting | value |
//! |---|---|
//! | listen | `127.0.0.1:<free port>` only |
//! | authentication | public key (`AuthorizedKeysFile <tmp>/authorized_keys/%u`, `StrictModes no`) and password (`UsePAM no`: checked against `/etc/shadow`); no keyboard-interactive; `PermitRootLogin no` |
//! | forwarding | TCP and agent forwarding allowed, no X11 |
//! | environment | `AcceptEnv LANG LC_* GATE_TEST_*`, `PermitUserEnvironment no` |
//! | sftp | `/usr/lib/openssh/sftp-server` if it exists, else `internal-sftp` |
//! | limits | `MaxStartups 100:30:200`, `MaxSessions 50` |
//! | logging | `LogLevel VERBOSE`, to the log file |
//!
//! The login user is the system user [`USER`] (`gate-ssh-test`), with a real, writable home
//! ([`USER_HOME`] unless it exists with another one) and `/bin/bash`; it is created with
//! `useradd` when missing. Every server generates its own **upstream key**
//! ([`SshServer::upstream_key`]: what a gateway resource's `private_key_file` points to) and
//! authorizes it for that user. The user's **password** is shared by every server on the
//! machine (it is one account): it is random, kept in the root-only file [`PASSWORD_FILE`]
//! (created once, with `O_EXCL`, and read by every later starter), and set with `chpasswd`
//! only when `/etc/shadow` does not hold the hash set last time — so test processes running
//! in parallel agree on it. The set-up is serialized across processes with `flock` on a lock
//! file next to it. Each server also gets a private directory in the user's home
//! ([`SshServer::work_dir`]) for files tests copy there; it is removed with the server.
//!
//! `sshd` must run as root to log users in, so [`SshServer::start`] fails when not root (see
//! [`sshd_available`]). It creates the privilege separation directory `/run/sshd` (0755) if
//! missing, and the `sshd` privilege separation user too.
//!
//! Clean-up is the same as for the other servers: the server (its listener, every connection
//! and the sessions they run) is stopped on `Drop`, at process exit for
//! [`SshServer::shared`], and by a watchdog should the test process be killed; its directories
//! are removed unless `GATE_TEST_KEEP=1`.
//!
//! The client helpers ([`ssh_command`], [`scp_command`], [`sftp_command`],
//! [`ssh_password_command`]) build `std::process::Command`s with hermetic options (no config
//! files, only the given key, strict host key checking against the given `known_hosts`); run
//! them with [`run_client`] / [`run_ok`], which kill a client that hangs.
//!
//! ```no_run
//! use gate_test_support::sshd::{self, SshServer};
//! let server = SshServer::shared();
//! let mut cmd = server.ssh_command(); // upstream key, known_hosts for the server's host key
//! cmd.arg("echo hello");
//! assert_eq!(sshd::run_ok(cmd).unwrap(), "hello\n");
//! ```

use anyhow::{Context, anyhow, bail};
use std::ffi::CString;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{Backoff, DEFAULT_TIMEOUT, output_text};

/// The system user the server logs clients in as.
pub const USER: &str = "gate-ssh-test";
/// The home of [`USER`] when this module creates it.
pub const USER_HOME: &str = "/var/lib/gate-ssh-test";
/// Where [`USER`]'s password is kept (root only, mode 0600).
pub const PASSWORD_FILE: &str = "/var/lib/gate-ssh-test/.gate-test-password";
/// The `/etc/shadow` hash the password was last set to (to know when to set it again).
const SHADOW_MARK_FILE: &str = "/var/lib/gate-ssh-test/.gate-test-password.shadow";
/// Serializes the user set-up across processes (`flock`).
const LOCK_FILE: &str = "/var/lib/gate-ssh-test/.gate-test-lock";
/// The directory of the three files above.
const STATE_DIR: &str = "/var/lib/gate-ssh-test";
/// sshd's privilege separation directory (Debian's build).
const PRIVSEP_DIR: &str = "/run/sshd";
/// The host every helper connects to.
pub const HOST: &str = "127.0.0.1";

/// How long a client run ([`run_client`], [`run_ok`]) may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `stop` waits for the killed connections of `sshd` to be gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a key generation or `chpasswd` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// A host key generation: each [`SshServer::rotate_host_key`] makes a new one, in new files,
/// so paths handed out earlier keep describing the old key.
#[derive(Debug, Clone)]
struct HostKey {
    private: PathBuf,
    public_line: String,
    fingerprint: String,
    known_hosts: PathBuf,
}

/// The test user, as set up for this process.
#[derive(Debug, Clone)]
struct TestUser {
    uid: u32,
    gid: u32,
    home: PathBuf,
    password: String,
}

/// A running throwaway `sshd`. See the module docs.
pub struct SshServer {
    root: PathBuf,
    port: u16,
    sshd: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
    user: TestUser,
    work_dir: PathBuf,
    upstream_key: ClientKey,
    host_key: Mutex<(u32, HostKey)>,
    child: Mutex<Option<Child>>,
    running: AtomicBool,
    cleaned: AtomicBool,
    watchdog: Mutex<Option<Watchdog>>,
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshServer")
            .field("port", &self.port)
            .field("root", &self.root)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl SshServer {
    /// Starts a new server. Blocking (well under a second once the user exists); from async
    /// code call it through `spawn_blocking`.
    pub fn start() -> anyhow::Result<SshServer> {
        if !is_root() {
            bail!(
                "SshServer needs root: sshd must switch to the `{USER}` user to log it in \
                 (the tests run as root in CI)"
            );
        }
        let sshd = sshd_binary()?;
        let user = ensure_test_user()?;
        ensure_privsep()?;

        let base = crate::tmp_base(true);
        let root = tempfile::Builder::new()
            .prefix("gate-sshd-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?
            .keep();
        // sshd reads authorized_keys as the user: every ancestor must be searchable by it.
        set_mode(&root, 0o755)?;
        let work_dir = user.home.join(
            root.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("gate-sshd"),
        );
        // From here on `Drop` (and, should we be killed, the watchdog) removes both.
        let pid_file = root.join("sshd.pid");
        let watchdog = Watchdog::spawn(
            WATCHDOG_SCRIPT,
            &[
                root.to_str().context("non-UTF-8 temp dir")?,
                pid_file.to_str().context("non-UTF-8 temp dir")?,
                if crate::keep_dirs() { "keep" } else { "remove" },
                work_dir.to_str().context("non-UTF-8 home dir")?,
            ],
        )
        .ok();
        let mut server = SshServer {
            config: root.join("sshd_config"),
            log: root.join("sshd.log"),
            pid_file,
            port: 0,
            sshd,
            work_dir,
            // Replaced in init_and_start.
            upstream_key: ClientKey {
                private: root.join("upstream_ed25519"),
                public_line: String::new(),
            },
            host_key: Mutex::new((
                0,
                HostKey {
                    private: PathBuf::new(),
                    public_line: String::new(),
                    fingerprint: String::new(),
                    known_hosts: PathBuf::new(),
                },
            )),
            root,
            user,
            child: Mutex::new(None),
            running: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
            watchdog: Mutex::new(watchdog),
        };
        server.init_and_start()?;
        Ok(server)
    }

    /// One server per test binary, started on first use and stopped at process exit.
    ///
    /// Tests that stop the server or rotate its host key must start their own with
    /// [`SshServer::start`]: the shared one is used by every test in the binary, concurrently.
    ///
    /// Panics (in every test that calls it) if the server cannot be started.
    pub fn shared() -> &'static SshServer {
        static SHARED: OnceLock<Result<SshServer, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            let _ = std::panic::catch_unwind(|| {
                if let Some(Ok(server)) = SHARED.get() {
                    server.cleanup();
                }
            });
        }
        let result = SHARED.get_or_init(|| {
            let started = SshServer::start().map_err(|e| format!("{e:#}"));
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
            Err(e) => panic!("the shared sshd failed to start: {e}"),
        }
    }

    fn init_and_start(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir(&self.work_dir)
            .with_context(|| format!("mkdir {}", self.work_dir.display()))?;
        std::os::unix::fs::chown(&self.work_dir, Some(self.user.uid), Some(self.user.gid))
            .with_context(|| format!("chown {}", self.work_dir.display()))?;
        set_mode(&self.work_dir, 0o755)?;

        self.upstream_key = ClientKey::generate_at(&self.root.join("upstream_ed25519"))?;
        let keys_dir = self.root.join("authorized_keys");
        std::fs::create_dir(&keys_dir).with_context(|| format!("mkdir {}", keys_dir.display()))?;
        set_mode(&keys_dir, 0o755)?;
        self.authorize_key(&self.upstream_key.public_line.clone())?;
        self.new_host_key()?;

        let mut last_err = None;
        for _attempt in 0..8 {
            self.port = crate::free_port();
            match self.start_server() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let port_taken = self.log().contains("Address already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                    // Someone grabbed the port between free_port() and bind: try another.
                    let _ = std::fs::remove_file(&self.log);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("sshd did not start")))
    }

    /// Generates the next host key (`ssh_host_ed25519_key.<n>`) and its `known_hosts.<n>`.
    /// The known_hosts file needs the port, so it is written by `start_server`.
    fn new_host_key(&self) -> anyhow::Result<()> {
        let mut slot = self.host_key.lock().unwrap_or_else(|e| e.into_inner());
        let generation = slot.0 + 1;
        let private = self.root.join(format!("ssh_host_ed25519_key.{generation}"));
        generate_key(&private, "gate-test-host-key")?;
        let pub_path = public_path(&private);
        let public_line = read_public_line(&pub_path)?;
        let fingerprint = key_fingerprint(&pub_path)?;
        *slot = (
            generation,
            HostKey {
                private,
                public_line,
                fingerprint,
                known_hosts: self.root.join(format!("known_hosts.{generation}")),
            },
        );
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let host_key = self
            .host_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        let sftp = if Path::new("/usr/lib/openssh/sftp-server").is_file() {
            "/usr/lib/openssh/sftp-server"
        } else {
            "internal-sftp"
        };
        let mut config = format!(
            "# Written by gate-test-support (sshd.rs) for one test server.\n\
             Port {port}\n\
             ListenAddress 127.0.0.1\n\
             AddressFamily inet\n\
             HostKey {host_key}\n\
             PidFile {pid_file}\n\
             AuthorizedKeysFile {root}/authorized_keys/%u\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin no\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             X11Forwarding no\n\
             PermitUserEnvironment no\n\
             AcceptEnv LANG LC_* GATE_TEST_*\n\
             Subsystem sftp {sftp}\n\
             LogLevel VERBOSE\n\
             MaxStartups 100:30:200\n\
             MaxSessions 50\n\
             PrintMotd no\n\
             PrintLastLog no\n",
            port = self.port,
            host_key = host_key.private.display(),
            pid_file = self.pid_file.display(),
            root = self.root.display(),
        );
        // OpenSSH 9.8 started penalizing sources that fail to authenticate; tests do that on
        // purpose, over and over, from 127.0.0.1.
        if sshd_version(&self.sshd).is_some_and(|v| v >= (9, 8)) {
            config.push_str("PerSourcePenalties no\n");
        }
        std::fs::write(&self.config, config)
            .with_context(|| format!("write {}", self.config.display()))?;
        write_known_hosts(&host_key.known_hosts, self.port, &host_key.public_line)
    }

    /// Writes the config, spawns `sshd` and waits until it sends its banner.
    fn start_server(&self) -> anyhow::Result<()> {
        let mut child_slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child_slot.is_some() {
            bail!("the server is already running");
        }
        self.write_config()?;
        let _ = std::fs::remove_file(&self.pid_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        set_mode(&self.log, 0o644)?;
        let mut cmd = Command::new(&self.sshd);
        // sshd re-executes itself for every connection: it needs its absolute path, which
        // `sshd_binary` guarantees.
        cmd.args(["-D", "-e", "-f"])
            .arg(&self.config)
            .env("LC_ALL", "C")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the tests does not reach it directly;
            // clean-up (Drop, atexit, watchdog) stops it.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.sshd.display()))?;

        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sshd exited during start-up ({status}):\n--- {} ---\n{}",
                    self.log.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            let last = match read_banner(self.addr()) {
                Ok(banner) if banner.starts_with("SSH-2.0-") => break,
                Ok(banner) => format!("unexpected banner {banner:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                kill_tree(&mut child);
                bail!(
                    "sshd did not send its banner within {DEFAULT_TIMEOUT:?} (last: {last})\
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

    /// The TCP port (on 127.0.0.1). It stays the same across [`stop`](Self::stop),
    /// [`start_again`](Self::start_again) and [`rotate_host_key`](Self::rotate_host_key).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The current host key's fingerprint, `SHA256:<base64>` (as `ssh-keygen -lf` prints it).
    pub fn host_key_fingerprint(&self) -> String {
        self.current_host_key().fingerprint
    }

    /// The current host key's public line, `ssh-ed25519 AAAA… gate-test-host-key`.
    pub fn host_public_key_line(&self) -> String {
        self.current_host_key().public_line
    }

    /// The current host key's private key file.
    pub fn host_key_path(&self) -> PathBuf {
        self.current_host_key().private
    }

    /// `[127.0.0.1]:<port> ssh-ed25519 AAAA…` for the current host key.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(self.port, &self.current_host_key().public_line)
    }

    /// A `known_hosts` file holding [`known_hosts_line`](Self::known_hosts_line). Every host
    /// key has its own file: one taken before [`rotate_host_key`](Self::rotate_host_key)
    /// still names the old key.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.current_host_key().known_hosts
    }

    fn current_host_key(&self) -> HostKey {
        self.host_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The login user, [`USER`].
    pub fn user(&self) -> &'static str {
        USER
    }

    /// The login user's password (see the module docs: one per machine, not per server).
    pub fn password(&self) -> &str {
        &self.user.password
    }

    /// The private key authorized for [`user`](Self::user) (ed25519, no passphrase, root-only
    /// 0600): what a gateway resource's `private_key_file` points to.
    pub fn upstream_key(&self) -> &Path {
        &self.upstream_key.private
    }

    /// The upstream key pair, with its public line.
    pub fn upstream_client_key(&self) -> &ClientKey {
        &self.upstream_key
    }

    /// The login user's home directory (shared by every server on the machine).
    pub fn home(&self) -> &Path {
        &self.user.home
    }

    /// A directory of this server's own in [`home`](Self::home), owned by the user: put the
    /// files a test copies there, so that parallel tests never collide. Removed with the
    /// server.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The server's temp dir (config, keys, log).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The log file (`<tmp>/sshd.log`: sshd's stderr at `LogLevel VERBOSE`).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The log's contents (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Authorizes one more public key (an OpenSSH public key line) for [`user`](Self::user).
    pub fn authorize_key(&self, public_line: &str) -> anyhow::Result<()> {
        let path = self.root.join("authorized_keys").join(USER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(f, "{}", public_line.trim()).with_context(|| format!("write {}", path.display()))
    }

    /// [`ssh_command`] as [`user`](Self::user) with the [`upstream_key`](Self::upstream_key)
    /// and the current [`known_hosts_file`](Self::known_hosts_file). Append the remote command.
    pub fn ssh_command(&self) -> Command {
        ssh_command(
            self.port,
            USER,
            &self.upstream_key.private,
            &self.known_hosts_file(),
        )
    }

    /// [`scp_command`] with the same identity as [`ssh_command`](Self::ssh_command). Remote
    /// paths are [`scp_remote`]`(path)`.
    pub fn scp_command(&self, mode: ScpMode) -> Command {
        scp_command(
            self.port,
            USER,
            &self.upstream_key.private,
            &self.known_hosts_file(),
            mode,
        )
    }

    /// [`sftp_command`] with the same identity as [`ssh_command`](Self::ssh_command).
    pub fn sftp_command(&self, batch: &Path) -> Command {
        sftp_command(
            self.port,
            USER,
            &self.upstream_key.private,
            &self.known_hosts_file(),
            batch,
        )
    }

    /// Whether the server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the server: the listener, every connection and the sessions they run, at once
    /// (frozen, then SIGKILL: clients see their connection drop, as if the server crashed).
    /// The directory stays; [`start_again`](Self::start_again) brings the server back.
    pub fn stop(&self) -> anyhow::Result<()> {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.running.store(false, Ordering::SeqCst);
        if let Some(mut child) = child {
            stop_tree(&mut child);
        }
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port with the same
    /// host key, and waits until it sends its banner.
    pub fn start_again(&self) -> anyhow::Result<()> {
        if self.cleaned.load(Ordering::SeqCst) {
            bail!("the server was cleaned up");
        }
        self.start_server()
    }

    /// Replaces the host key with a newly generated one and restarts the server on the same
    /// port (its connections are dropped). Returns the new fingerprint. Paths from
    /// [`known_hosts_file`](Self::known_hosts_file) taken before still name the old key, so a
    /// client using one must refuse the server now.
    pub fn rotate_host_key(&self) -> anyhow::Result<String> {
        if self.cleaned.load(Ordering::SeqCst) {
            bail!("the server was cleaned up");
        }
        self.stop()?;
        self.new_host_key()?;
        self.start_server()?;
        Ok(self.host_key_fingerprint())
    }

    /// Stops the server and removes its directories. Idempotent.
    fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.stop();
        if !crate::keep_dirs() {
            let _ = std::fs::remove_dir_all(&self.root);
            let _ = std::fs::remove_dir_all(&self.work_dir);
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
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sshd log {} (last 30 lines) ---\n{}",
                self.log.display(),
                crate::tail(&self.log(), 30)
            );
        }
        self.cleanup();
    }
}

/// The watchdog's clean-up: `$1` temp dir, `$2` pid file, `$3` keep/remove, `$4` work dir.
/// Like `stop_tree`: freezes the listener and (three passes) its descendants, then SIGKILLs
/// them all.
const WATCHDOG_SCRIPT: &str = r#"pidfile="$2"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  case "$pid" in ''|*[!0-9]*) pid="" ;; esac
fi
if [ -n "$pid" ]; then
  kill -STOP "$pid" 2>/dev/null
  sleep 0.1
  all=" "
  for _ in 1 2 3; do
    level="$pid"
    while [ -n "$level" ]; do
      next=""
      for d in /proc/[0-9]*; do
        pp=$(sed -n 's/^PPid:[[:space:]]*//p' "$d/status" 2>/dev/null)
        for p in $level; do
          [ "$pp" = "$p" ] && next="$next ${d#/proc/}"
        done
      done
      for p in $next; do
        case "$all" in *" $p "*) ;; *) kill -STOP "$p" 2>/dev/null; all="$all$p " ;; esac
      done
      level="$next"
    done
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  for p in $all; do kill -KILL "$p" 2>/dev/null; done
fi
[ "$3" = keep ] || rm -rf "$1" "$4""#;

// --- clients -------------------------------------------------------------------------------

/// An ed25519 key pair without a passphrase, made with `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The private key file (mode 0600); the public one is next to it, with `.pub`.
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA… <comment>`.
    pub public_line: String,
}

impl ClientKey {
    /// Generates a key pair in `dir` (which must exist), under a fresh random file name.
    pub fn generate(dir: &Path) -> anyhow::Result<ClientKey> {
        let name = format!("client_ed25519_{}", &crate::random_hex()[..12]);
        ClientKey::generate_at(&dir.join(name))
    }

    /// Generates a key pair at `path` and `path.pub` (replacing files there).
    pub fn generate_at(path: &Path) -> anyhow::Result<ClientKey> {
        generate_key(path, "gate-test-client")?;
        Ok(ClientKey {
            private: path.to_path_buf(),
            public_line: read_public_line(&public_path(path))?,
        })
    }

    /// The public key file (`<private>.pub`).
    pub fn public_path(&self) -> PathBuf {
        public_path(&self.private)
    }

    /// The key's fingerprint, `SHA256:<base64>`.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        key_fingerprint(&self.public_path())
    }
}

/// How `scp` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScpMode {
    /// OpenSSH ≥ 9's default: the SFTP protocol (the `sftp` subsystem).
    #[default]
    Sftp,
    /// The legacy SCP protocol (`scp -O`): `scp -t`/`scp -f` run as a remote command.
    Legacy,
}

/// Options every helper passes: no config files, only `key`, no agent keys, strict host key
/// checking against `known_hosts` only, no prompts, errors only.
fn common_options(cmd: &mut Command, key: &Path, known_hosts: &Path) {
    cmd.args(["-F", "none", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "BatchMode=yes"]);
    host_options(cmd, known_hosts);
}

fn host_options(cmd: &mut Command, known_hosts: &Path) {
    cmd.args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "UpdateHostKeys=no"])
        .args(["-o", "ConnectTimeout=20"])
        .args(["-o", "LogLevel=ERROR"]);
}

/// `ssh -F none -p PORT -i KEY -o IdentitiesOnly=yes -o BatchMode=yes
/// -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KNOWN_HOSTS -o GlobalKnownHostsFile=/dev/null
/// -o UpdateHostKeys=no -o ConnectTimeout=20 -o LogLevel=ERROR -l USER 127.0.0.1`.
///
/// Append the remote command. ssh also reads options after the host, up to the first
/// non-option, so `.args(["-tt", "stty size"])` or `.args(["-o", "SendEnv=X", "env"])` work.
pub fn ssh_command(port: u16, user: &str, key: &Path, known_hosts: &Path) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-p").arg(port.to_string());
    common_options(&mut cmd, key, known_hosts);
    cmd.arg("-l").arg(user).arg(HOST);
    cmd
}

/// `scp -q -F none -P PORT -i KEY -o User=USER …` (the options of [`ssh_command`]), plus `-O`
/// for [`ScpMode::Legacy`]. Append the source and target; remote paths are
/// [`scp_remote`]`(path)` (`127.0.0.1:path`, relative to the user's home unless absolute).
pub fn scp_command(
    port: u16,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    mode: ScpMode,
) -> Command {
    let mut cmd = Command::new("scp");
    cmd.arg("-q");
    if mode == ScpMode::Legacy {
        cmd.arg("-O");
    }
    cmd.arg("-P").arg(port.to_string());
    common_options(&mut cmd, key, known_hosts);
    cmd.arg("-o").arg(format!("User={user}"));
    cmd
}

/// `127.0.0.1:<path>`, a remote path for [`scp_command`].
pub fn scp_remote(path: impl AsRef<Path>) -> String {
    format!("{HOST}:{}", path.as_ref().display())
}

/// `sftp -F none -P PORT -i KEY … -b BATCH -o User=USER 127.0.0.1`: runs the commands in the
/// file `batch` (`-` reads them from stdin) and stops at the first that fails.
pub fn sftp_command(
    port: u16,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    batch: &Path,
) -> Command {
    let mut cmd = Command::new("sftp");
    cmd.arg("-P").arg(port.to_string());
    common_options(&mut cmd, key, known_hosts);
    cmd.arg("-o")
        .arg(format!("User={user}"))
        .arg("-b")
        .arg(batch)
        .arg(HOST);
    cmd
}

/// An `ssh` that logs in with a password: like [`ssh_command`] but with only password
/// authentication (one attempt), the password supplied through `SSH_ASKPASS`
/// (`SSH_ASKPASS_REQUIRE=force`, OpenSSH ≥ 8.4) by a tiny script written into `askpass_dir`
/// that prints `$GATE_TEST_SSH_PASSWORD`. Append the remote command.
pub fn ssh_password_command(
    port: u16,
    user: &str,
    password: &str,
    known_hosts: &Path,
    askpass_dir: &Path,
) -> anyhow::Result<Command> {
    let askpass = write_askpass(askpass_dir)?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-p")
        .arg(port.to_string())
        .args(["-F", "none"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "BatchMode=no"]);
    host_options(&mut cmd, known_hosts);
    cmd.arg("-l")
        .arg(user)
        .arg(HOST)
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("GATE_TEST_SSH_PASSWORD", password)
        .env_remove("SSH_AUTH_SOCK");
    Ok(cmd)
}

/// `<dir>/gate-askpass`: prints `$GATE_TEST_SSH_PASSWORD`. Written once (atomically: a
/// running copy is never rewritten under its feet).
fn write_askpass(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("gate-askpass");
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".gate-askpass.{}", crate::random_hex()));
    std::fs::write(
        &tmp,
        "#!/bin/sh\nprintf '%s\\n' \"$GATE_TEST_SSH_PASSWORD\"\n",
    )
    .with_context(|| format!("write {}", tmp.display()))?;
    set_mode(&tmp, 0o755)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(path)
}

/// `[127.0.0.1]:<port> <type> <base64>` (`127.0.0.1 <type> <base64>` for port 22): the
/// `known_hosts` line for a host key, from its public key line (the comment is dropped).
pub fn known_hosts_line(port: u16, public_key_line: &str) -> String {
    let key: Vec<&str> = public_key_line.split_whitespace().take(2).collect();
    let host = if port == 22 {
        HOST.to_string()
    } else {
        format!("[{HOST}]:{port}")
    };
    format!("{host} {}", key.join(" "))
}

/// Writes a `known_hosts` file with the single [`known_hosts_line`] for `public_key_line` on
/// `port` (replacing the file).
pub fn write_known_hosts(path: &Path, port: u16, public_key_line: &str) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!("{}\n", known_hosts_line(port, public_key_line)),
    )
    .with_context(|| format!("write {}", path.display()))?;
    set_mode(path, 0o644)
}

/// `ssh-keyscan -p PORT -t ed25519 127.0.0.1`: the server's ed25519 host key, as a
/// `known_hosts` line. (Trust on first use: for tests and benchmarks only.)
pub fn ssh_keyscan(port: u16) -> anyhow::Result<String> {
    let mut cmd = Command::new(find_program("ssh-keyscan").context("ssh-keyscan not found")?);
    cmd.args(["-T", "10", "-t", "ed25519", "-p"])
        .arg(port.to_string())
        .arg(HOST);
    let out = crate::run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string());
    line.with_context(|| {
        format!(
            "ssh-keyscan found no ed25519 host key on port {port} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The fingerprint of a public key file, `SHA256:<base64>` (from `ssh-keygen -lf`).
pub fn key_fingerprint(public_key_file: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new(ssh_keygen()?);
    cmd.arg("-lf").arg(public_key_file);
    let out = crate::run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -lf {} failed ({}): {}",
            public_key_file.display(),
            out.status,
            output_text(&out).trim()
        );
    }
    // `256 SHA256:… comment (ED25519)`
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_string)
        .with_context(|| format!("unexpected ssh-keygen -lf output: {}", output_text(&out)))
}

/// Runs a client command (stdin: `input`, or `/dev/null`), collecting its output; kills it
/// after [`CLIENT_TIMEOUT`]. The exit status is the caller's to judge.
pub fn run_client(cmd: Command, input: Option<&str>) -> anyhow::Result<Output> {
    crate::run_with_timeout(cmd, input, CLIENT_TIMEOUT)
}

/// Like [`run_client`] with another timeout.
pub fn run_client_with_timeout(
    cmd: Command,
    input: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    crate::run_with_timeout(cmd, input, timeout)
}

/// Runs a client command (stdin `/dev/null`) and returns its stdout; fails with the exit
/// status and stderr when it does not exit 0.
pub fn run_ok(cmd: Command) -> anyhow::Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = run_client(cmd, None)?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether [`SshServer::start`] can work here: running as root, with `sshd` and `ssh-keygen`
/// installed.
pub fn sshd_available() -> bool {
    is_root() && sshd_binary().is_ok() && ssh_keygen().is_ok()
}

/// asciinema 2.x (for checking recordings with a real player): `$GATE_ASCIINEMA` if set,
/// else `<workspace>/.data/asciinema-venv/bin/asciinema` (where `scripts/test-setup.sh`
/// installs it for an externally managed python3), else `asciinema` on `PATH`.
pub fn asciinema_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATE_ASCIINEMA").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let venv = crate::workspace_root().join(".data/asciinema-venv/bin/asciinema");
    if venv.is_file() {
        return Some(venv);
    }
    crate::find_on_path("asciinema")
}

// --- programs ------------------------------------------------------------------------------

/// `program` on `PATH` or in the sbin/bin directories (`sshd` lives in `/usr/sbin`).
fn find_program(program: &str) -> Option<PathBuf> {
    crate::find_on_path(program).or_else(|| {
        [
            "/usr/sbin",
            "/usr/local/sbin",
            "/sbin",
            "/usr/bin",
            "/usr/local/bin",
        ]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
    })
}

/// The absolute path of `sshd`: `$GATE_SSHD` if set, else as [`find_program`].
fn sshd_binary() -> anyhow::Result<PathBuf> {
    static SSHD: OnceLock<Option<PathBuf>> = OnceLock::new();
    SSHD.get_or_init(|| {
        let p = match std::env::var_os("GATE_SSHD").filter(|v| !v.is_empty()) {
            Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
            None => find_program("sshd"),
        };
        p.and_then(|p| std::path::absolute(p).ok())
    })
    .clone()
    .ok_or_else(|| {
        anyhow!(
            "sshd not found; run scripts/test-setup.sh (apt-get install openssh-server \
             openssh-client) or set GATE_SSHD"
        )
    })
}

fn ssh_keygen() -> anyhow::Result<PathBuf> {
    find_program("ssh-keygen").ok_or_else(|| {
        anyhow!("ssh-keygen not found; run scripts/test-setup.sh (apt-get install openssh-client)")
    })
}

/// `(major, minor)` of `sshd -V` (`OpenSSH_9.2p1 …`).
fn sshd_version(sshd: &Path) -> Option<(u32, u32)> {
    let mut cmd = Command::new(sshd);
    cmd.arg("-V");
    let out = crate::run_with_timeout(cmd, None, TOOL_TIMEOUT).ok()?;
    let text = output_text(&out);
    let v = text.split("OpenSSH_").nth(1)?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `ssh-keygen -q -t ed25519 -N '' -C comment -f path` (any old files there are replaced).
fn generate_key(path: &Path, comment: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(public_path(path));
    let mut cmd = Command::new(ssh_keygen()?);
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    let out = crate::run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "ssh-keygen for {} failed ({}): {}",
            path.display(),
            out.status,
            output_text(&out).trim()
        );
    }
    Ok(())
}

fn public_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

fn read_public_line(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let line = text.trim();
    if line.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(line.to_string())
}

// --- the test user and the system set-up ---------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `/run/sshd` (0755, root) and the `sshd` privilege separation user.
fn ensure_privsep() -> anyhow::Result<()> {
    let dir = Path::new(PRIVSEP_DIR);
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {PRIVSEP_DIR}"))?;
        set_mode(dir, 0o755)?;
    }
    crate::server_user("sshd", PRIVSEP_DIR, "/usr/sbin/nologin")?;
    Ok(())
}

/// An exclusive `flock` on a file, released when dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &str) -> anyhow::Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock(f));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("flock {path}"));
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in acquire; closing the file would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Creates (or checks) [`USER`], its home and its password. See the module docs.
fn ensure_test_user() -> anyhow::Result<TestUser> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("mkdir {STATE_DIR}"))?;
    let _flock = FileLock::acquire(LOCK_FILE)?;

    crate::server_user(USER, USER_HOME, "/bin/bash")?
        .context("creating the test user needs root")?;
    let mut entry = passwd_entry(USER).with_context(|| format!("no passwd entry for {USER}"))?;
    let shell_ok = Path::new(&entry.shell).is_file()
        && !entry.shell.ends_with("nologin")
        && !entry.shell.ends_with("false");
    if !shell_ok {
        let mut cmd = Command::new("usermod");
        cmd.args(["--shell", "/bin/bash", USER]);
        let out = crate::run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "usermod --shell /bin/bash {USER} failed: {}",
                output_text(&out)
            );
        }
        entry = passwd_entry(USER).with_context(|| format!("no passwd entry for {USER}"))?;
    }
    let home = PathBuf::from(&entry.home);
    if home == Path::new(USER_HOME) {
        // Ours to fix: the user owns its home (useradd --system does not create it).
        std::fs::create_dir_all(&home).with_context(|| format!("mkdir {}", home.display()))?;
        let meta = std::fs::metadata(&home)?;
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != entry.uid {
            std::os::unix::fs::chown(&home, Some(entry.uid), Some(entry.gid))
                .with_context(|| format!("chown {}", home.display()))?;
        }
        set_mode(&home, 0o755)?;
    } else {
        use std::os::unix::fs::MetadataExt;
        let owned = std::fs::metadata(&home).is_ok_and(|m| m.is_dir() && m.uid() == entry.uid);
        if !owned {
            bail!(
                "the {USER} user's home is {} and it is not a directory the user owns; give it \
                 a real home: usermod --home {USER_HOME} {USER}",
                home.display()
            );
        }
    }

    let password = shared_password()?;
    let shadow = shadow_hash(USER)?;
    let mark = std::fs::read_to_string(SHADOW_MARK_FILE).unwrap_or_default();
    if shadow.is_empty()
        || shadow.starts_with('!')
        || shadow.starts_with('*')
        || shadow != mark.trim()
    {
        let mut cmd = Command::new("chpasswd");
        cmd.env("LC_ALL", "C");
        let out = crate::run_with_timeout(cmd, Some(&format!("{USER}:{password}\n")), TOOL_TIMEOUT)
            .context("cannot run chpasswd")?;
        if !out.status.success() {
            bail!(
                "chpasswd for {USER} failed ({}): {}",
                out.status,
                output_text(&out)
            );
        }
        let hash = shadow_hash(USER)?;
        write_private(SHADOW_MARK_FILE, &hash)?;
    }
    Ok(TestUser {
        uid: entry.uid,
        gid: entry.gid,
        home,
        password,
    })
}

/// The password in [`PASSWORD_FILE`], creating the file (0600) with a random one if there is
/// none. Created beside and hard-linked into place, so the file appears with its contents
/// or not at all, and exactly one creator wins (`link` fails if the name exists, like
/// `O_EXCL`); everyone then reads the winner's.
fn shared_password() -> anyhow::Result<String> {
    let read = || -> Option<String> {
        std::fs::read_to_string(PASSWORD_FILE)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(pw) = read() {
        return Ok(pw);
    }
    let tmp = format!("{PASSWORD_FILE}.{}", crate::random_hex());
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {tmp}"))?;
        writeln!(f, "gate-ssh-{}", crate::random_hex())?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, PASSWORD_FILE);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("link {PASSWORD_FILE}")),
    }
    read().with_context(|| format!("{PASSWORD_FILE} is empty"))
}

/// Writes a root-only file atomically (temp file + rename).
fn write_private(path: &str, contents: &str) -> anyhow::Result<()> {
    let tmp = format!("{path}.{}", crate::random_hex());
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {tmp}"))?;
        writeln!(f, "{contents}")?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename {tmp} to {path}"))
}

/// The password hash field of `user` in `/etc/shadow` (empty if there is none).
fn shadow_hash(user: &str) -> anyhow::Result<String> {
    let shadow = std::fs::read_to_string("/etc/shadow").context("read /etc/shadow")?;
    Ok(shadow
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(user)).then(|| fields.next().unwrap_or("").to_string())
        })
        .unwrap_or_default())
}

struct PasswdEntry {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn passwd_entry(name: &str) -> Option<PasswdEntry> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r with a zeroed passwd and a buffer we own; result checked for null,
    // and the strings it points to (inside `buf`) copied before `buf` goes away.
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
        if rc != 0 || result.is_null() {
            return None;
        }
        let s = |p: *const libc::c_char| {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Some(PasswdEntry {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: s(pwd.pw_dir),
            shell: s(pwd.pw_shell),
        })
    }
}

// --- processes -----------------------------------------------------------------------------

/// Connects and reads the first line the server sends (5 s timeouts).
fn read_banner(addr: SocketAddr) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 256 {
        match stream.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => buf.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// Every descendant of `pid` (children first level first), from `/proc`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                });
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut level = vec![pid];
    while !level.is_empty() {
        let next: Vec<i32> = parent_of
            .iter()
            .filter(|(p, pp)| level.contains(pp) && !out.contains(p) && *p != pid)
            .map(|(p, _)| *p)
            .collect();
        out.extend(&next);
        level = next;
    }
    out
}

/// The state letter of `pid` in `/proc/<pid>/stat` (`None`: gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// SIGSTOP, then waits (up to 2 s) until the process has really stopped: `kill` only makes
/// the signal pending, and a process running on another CPU may still finish a `fork`.
fn freeze(pid: i32) {
    // SAFETY: kill(2) on a process of the server's tree (see stop_tree).
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut backoff = Backoff::new();
    while Instant::now() < deadline {
        match proc_state(pid) {
            None | Some('T' | 't' | 'Z' | 'X') => return,
            Some(_) => backoff.wait_blocking(deadline),
        }
    }
}

/// Stops `sshd` and everything under it, without a window for anything to escape:
/// freezes the listener (no new connections), then freezes its descendants (connection
/// monitors, privilege-separated children, sessions) level by level until a scan finds no
/// new process, so none of them can fork any more; then SIGKILLs them all — a stopped
/// server drops its clients like a crashed one.
///
/// Nothing may run again between the scan and the kill. A connection process that got
/// SIGTERM could still finish a `fork` and leave an orphaned session holding the client's
/// TCP connection open; and a listener let go on SIGTERM first accepts whatever connection
/// queued up while it was frozen, forking a child no scan saw.
fn stop_tree(child: &mut Child) {
    let pid = child.id() as i32;
    freeze(pid);
    let mut frozen: Vec<i32> = Vec::new();
    loop {
        let new: Vec<i32> = descendants(pid)
            .into_iter()
            .filter(|p| !frozen.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for &p in &new {
            freeze(p);
        }
        frozen.extend(new);
    }
    // SAFETY: kill(2) on our child (not yet reaped: we hold its handle) and on its
    // descendants, all stopped: none of them has exited, so none of their pids was reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        for &p in &frozen {
            libc::kill(p, libc::SIGKILL);
        }
    }
    let _ = child.wait();
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut backoff = Backoff::new();
    while frozen.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        backoff.wait_blocking(deadline);
    }
}

/// SIGKILL for a server that never came up (it has no connections).
fn kill_tree(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk some comment";
        assert_eq!(
            known_hosts_line(2222, line),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk"
        );
        assert_eq!(
            known_hosts_line(22, line),
            "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk"
        );
    }

    #[test]
    fn scp_remote_paths() {
        assert_eq!(scp_remote("/tmp/x"), "127.0.0.1:/tmp/x");
        assert_eq!(scp_remote("rel"), "127.0.0.1:rel");
    }

    #[test]
    fn descendants_of_a_process() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while Instant::now() < deadline {
            found = descendants(child.id() as i32);
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(found.len() >= 2, "{found:?}");
        stop_tree(&mut child);
        assert!(!found.iter().any(|&p| alive(p)), "{found:?}");
    }
}
