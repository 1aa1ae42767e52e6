//! The real `gate-connector` binary, started with a YAML config in a work directory.
//!
//! ```no_run
//! # async fn demo(yaml: &str, dir: &std::path::Path) -> anyhow::Result<()> {
//! use gate_test_support::gateway::Gateway;
//! let gw = Gateway::start(yaml, dir).await?; // waits for GET /ready == 200
//! // … connect to gw.listen_addr() …
//! # Ok(()) }
//! ```
//!
//! The config is written to `<workdir>/connector.yaml` and the process runs as
//! `gate-connector --config <workdir>/connector.yaml` with `<workdir>` as its working directory
//! (so relative paths in the config, like `.data/audit.jsonl`, land there), stdout and stderr
//! appended to `<workdir>/gateway.log`. Readiness is `GET http://<health_addr>/ready` returning
//! 200, `health_addr` being read from the YAML (with `${VAR}`/`${VAR:-default}` expanded from
//! the builder's and the process's environment); without a `health_addr`, readiness is the
//! `listen_addr` accepting TCP connections. Dropping a [`Gateway`] sends SIGTERM, then SIGKILL
//! after a grace period; if the test panicked the log's tail is printed.

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{Backoff, DEFAULT_TIMEOUT, HttpResponse};

/// How long `Drop` waits after SIGTERM before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// How a [`Gateway`] is started. Made by [`Gateway::builder`].
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    config_yaml: String,
    workdir: PathBuf,
    binary: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    env: Vec<(OsString, Option<OsString>)>,
    health_addr: Option<String>,
    ready_timeout: Duration,
}

impl GatewayBuilder {
    /// Runs this binary instead of the workspace's `gate-connector` (see [`crate::cargo_bin`]).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Replaces the arguments (default: `--config {config}`). `{config}` in an argument is
    /// replaced by the config file's path.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets an environment variable for the process (also used to expand `health_addr`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Where to probe `/ready`, instead of the config's `health_addr`.
    pub fn health_addr(mut self, addr: impl Into<String>) -> Self {
        self.health_addr = Some(addr.into());
        self
    }

    /// How long [`start`](Self::start) waits for readiness (default 60 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Spawns the process and waits until it is ready. Fails, with the log's tail, if it
    /// exits first or is not ready in time.
    pub async fn start(self) -> anyhow::Result<Gateway> {
        let timeout = self.ready_timeout;
        let mut gw = self.spawn().await?;
        gw.wait_ready(timeout).await?;
        Ok(gw)
    }

    /// Spawns the process without waiting for readiness (for tests of start-up failures:
    /// follow with [`Gateway::wait_exit`]).
    pub async fn spawn(self) -> anyhow::Result<Gateway> {
        let binary = match self.binary.clone() {
            Some(b) => b,
            None => tokio::task::spawn_blocking(|| crate::cargo_bin("gate-connector"))
                .await
                .context("cargo_bin task")??,
        };
        std::fs::create_dir_all(&self.workdir)
            .with_context(|| format!("create {}", self.workdir.display()))?;
        let workdir = self
            .workdir
            .canonicalize()
            .with_context(|| format!("canonicalize {}", self.workdir.display()))?;
        let config_path = workdir.join("connector.yaml");
        std::fs::write(&config_path, &self.config_yaml)
            .with_context(|| format!("write {}", config_path.display()))?;
        let log_path = workdir.join("gateway.log");

        let env_lookup = |name: &str| -> Option<String> {
            for (k, v) in self.env.iter().rev() {
                if k.to_str() == Some(name) {
                    return v.as_ref().and_then(|v| v.to_str()).map(str::to_string);
                }
            }
            std::env::var(name).ok()
        };
        let (yaml_health, yaml_listen) = addrs_from_yaml(&self.config_yaml, &env_lookup);
        let health_addr = self.health_addr.clone().or(yaml_health);

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let args: Vec<OsString> = match &self.args {
            Some(args) => args
                .iter()
                .map(|a| match a.to_str() {
                    Some(s) if s.contains("{config}") => {
                        OsString::from(s.replace("{config}", &config_path.to_string_lossy()))
                    }
                    _ => a.clone(),
                })
                .collect(),
            None => vec!["--config".into(), config_path.clone().into_os_string()],
        };
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let watchdog =
            Watchdog::spawn(r#"kill -KILL "$1" 2>/dev/null"#, &[&child.id().to_string()]).ok();
        Ok(Gateway {
            child,
            binary,
            workdir,
            config_path,
            log_path,
            health_addr,
            listen_addr: yaml_listen,
            exit_status: None,
            watchdog,
        })
    }
}

/// A running `gate-connector` process. See the module docs.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    binary: PathBuf,
    workdir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    health_addr: Option<String>,
    listen_addr: Option<String>,
    exit_status: Option<ExitStatus>,
    watchdog: Option<Watchdog>,
}

impl Gateway {
    /// A builder for `config_yaml` run in `workdir` (created if missing).
    pub fn builder(config_yaml: impl Into<String>, workdir: impl AsRef<Path>) -> GatewayBuilder {
        GatewayBuilder {
            config_yaml: config_yaml.into(),
            workdir: workdir.as_ref().to_path_buf(),
            binary: None,
            args: None,
            env: Vec::new(),
            health_addr: None,
            ready_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Writes the config, starts `gate-connector --config <workdir>/connector.yaml` and waits
    /// until `GET /ready` on the config's `health_addr` returns 200.
    pub async fn start(config_yaml: &str, workdir: &Path) -> anyhow::Result<Gateway> {
        Self::builder(config_yaml, workdir).start().await
    }

    /// Polls readiness (see the module docs) until `timeout`, failing early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        let mut last: String;
        loop {
            if let Some(status) = self.try_exit_status() {
                bail!(
                    "{} exited ({status}) before becoming ready\n--- {} ---\n{}",
                    self.binary.display(),
                    self.log_path.display(),
                    crate::tail(&self.log(), 60)
                );
            }
            match (&self.health_addr, &self.listen_addr) {
                (Some(h), _) => match crate::http_get(h, "/ready").await {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => last = format!("GET /ready: {} {}", r.status, r.body.trim()),
                    Err(e) => last = format!("{e:#}"),
                },
                (None, Some(l)) => match tokio::net::TcpStream::connect(l.as_str()).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("connect {l}: {e}"),
                },
                (None, None) => bail!("the config has neither health_addr nor listen_addr"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "gateway not ready after {timeout:?} ({last})\n--- {} ---\n{}",
                    self.log_path.display(),
                    crate::tail(&self.log(), 60)
                );
            }
            backoff.wait_async(deadline).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The canonical work directory (the process's cwd).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns the whole log.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        crate::wait_until(
            &format!("{needle:?} in the gateway log"),
            timeout,
            || async {
                let log = self.log();
                log.contains(needle).then_some(log)
            },
        )
        .await
        .with_context(|| {
            format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                crate::tail(&self.log(), 60)
            )
        })
    }

    /// The health listener's address (from the config or the builder).
    pub fn health_addr(&self) -> Option<&str> {
        self.health_addr.as_deref()
    }

    /// The config's `listen_addr`, expanded.
    pub fn listen_addr(&self) -> Option<&str> {
        self.listen_addr.as_deref()
    }

    /// `GET http://<health_addr><path>`, e.g. `/metrics`.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let addr = self.health_addr.as_deref().context("no health_addr")?;
        crate::http_get(addr, path).await
    }

    /// Sends a signal (`libc::SIGHUP`, …) unless the process has already been reaped.
    pub fn signal(&mut self, sig: i32) -> anyhow::Result<()> {
        if self.try_exit_status().is_some() {
            bail!("the gateway has already exited");
        }
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.try_exit_status() {
            return Ok(s);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.exit_status = Some(status);
        Ok(status)
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    /// Waits for the process to exit, for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if let Some(s) = self.try_exit_status() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "gateway (pid {}) still running after {timeout:?}\n--- {} ---\n{}",
                    self.pid(),
                    self.log_path.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            backoff.wait_async(deadline).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log {} (last 60 lines) ---\n{}",
                self.log_path.display(),
                crate::tail(&self.log(), 60)
            );
        }
        if self.try_exit_status().is_none() {
            let _ = self.sigterm();
            let deadline = Instant::now() + DROP_GRACE;
            let mut backoff = Backoff::new();
            while self.try_exit_status().is_none() && Instant::now() < deadline {
                backoff.wait_blocking(deadline);
            }
            if self.try_exit_status().is_none() {
                let _ = self.kill();
            }
        }
        if let Some(mut w) = self.watchdog.take() {
            w.disarm();
        }
    }
}

/// `(health_addr, listen_addr)` from the YAML, with `${VAR}` expanded by `env`.
fn addrs_from_yaml(
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<String>, Option<String>) {
    let Ok(doc) = yaml_serde::from_str::<yaml_serde::Value>(yaml) else {
        return (None, None);
    };
    let get = |key: &str| {
        doc.get(key)
            .and_then(|v| v.as_str())
            .and_then(|s| expand(s, env))
    };
    (get("health_addr"), get("listen_addr"))
}

/// `${VAR}`, `${VAR:-default}` and `$$`, as the connector expands them. `None` if a variable
/// without default is unset.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}')?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            out.push_str(&env(name).or(default.map(str::to_string))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addrs_from_yaml_with_env() {
        let env = |n: &str| (n == "H").then(|| "127.0.0.1:9".to_string());
        let (h, l) = addrs_from_yaml(
            "listen_addr: \"${L:-127.0.0.1:1}\"\nhealth_addr: \"${H}\"\n",
            &env,
        );
        assert_eq!(h.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(l.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(expand("a$$b${NOPE}", &env), None);
        assert_eq!(expand("a$$b", &env).as_deref(), Some("a$b"));
    }
}
