//! The real `gate-control` binary for end-to-end tests: a SQLite store in a temp dir, a
//! system API key, a free port; stop and start again on the same port and store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{DEFAULT_TIMEOUT, HttpResponse, free_port, http_request, random_hex, wait_until};

/// A running (or stopped) control plane. Killed when dropped.
pub struct ControlPlane {
    dir: PathBuf,
    addr: String,
    system_key: String,
    binary: PathBuf,
    child: Option<Child>,
    tls: bool,
}

impl ControlPlane {
    /// Starts `gate-control` with its store in `dir` (created if missing).
    pub async fn start(dir: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_with(dir, None).await
    }

    /// Like [`ControlPlane::start`], reading recordings from `recordings` (the directory the
    /// connectors write to).
    pub async fn start_with(dir: &Path, recordings: Option<&Path>) -> anyhow::Result<ControlPlane> {
        Self::start_opts(dir, recordings, None).await
    }

    /// Like [`ControlPlane::start_with`], serving HTTPS/gRPC over TLS with `tls` when given
    /// (the test harness itself still talks to it through [`ControlPlane::call`] only when
    /// TLS is off; with TLS, drive it through a connector).
    pub async fn start_opts(
        dir: &Path,
        recordings: Option<&Path>,
        tls: Option<&crate::certs::TestCerts>,
    ) -> anyhow::Result<ControlPlane> {
        Self::start_custom(dir, recordings, tls, "").await
    }

    /// Like [`ControlPlane::start_opts`], with `extra_yaml` appended to `control.yaml`
    /// (top-level sections such as `slack:` or `delivery:`; it must end with a newline).
    pub async fn start_custom(
        dir: &Path,
        recordings: Option<&Path>,
        tls: Option<&crate::certs::TestCerts>,
        extra_yaml: &str,
    ) -> anyhow::Result<ControlPlane> {
        std::fs::create_dir_all(dir)?;
        let binary = tokio::task::spawn_blocking(|| crate::cargo_bin("gate-control")).await??;
        let addr = format!("127.0.0.1:{}", free_port());
        let system_key = format!("sys-{}", random_hex());
        let yaml = format!(
            "listen_addr: \"{addr}\"\napi_key: \"{system_key}\"\ndatabase: {{dsn: \"sqlite://{}/control.db\", max_open_conns: 5, min_conns: 1}}\nlogging: {{level: info, format: text}}\n{}",
            dir.display(),
            recordings
                .map(|r| format!("recording: {{dir: \"{}\"}}\n", r.display()))
                .unwrap_or_default()
        ) + &tls
            .map(|t| {
                format!(
                    "tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
                    t.cert_path.display(),
                    t.key_path.display()
                )
            })
            .unwrap_or_default()
            + extra_yaml;
        std::fs::write(dir.join("control.yaml"), yaml)?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            addr,
            system_key,
            binary,
            child: None,
            tls: tls.is_some(),
        };
        cp.start_again().await?;
        Ok(cp)
    }

    /// Starts the process again (same port, same store) and waits for `/health`.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the control plane is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("control.log"))?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(self.dir.join("control.yaml"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let addr = self.addr.clone();
        if self.tls {
            return crate::wait_for_port(addr.as_str(), DEFAULT_TIMEOUT)
                .await
                .with_context(|| format!("gate-control did not come up; log:\n{}", self.log()));
        }
        wait_until("gate-control /health", DEFAULT_TIMEOUT, || {
            let addr = addr.clone();
            async move {
                http_request(&addr, "GET", "/health", &[], &[])
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            }
        })
        .await
        .with_context(|| format!("gate-control did not come up; log:\n{}", self.log()))?;
        Ok(())
    }

    /// Kills the process (SIGKILL: a crash, nothing flushed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `host:port` of its single listener (HTTP and gRPC).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The system key (tests act as the operator).
    pub fn system_key(&self) -> &str {
        &self.system_key
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    /// An HTTP call with the system key acting on `org` (when given).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        org: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let auth = format!("Bearer {}", self.system_key);
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(org) = org {
            headers.push(("x-org-id", org));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let r: HttpResponse =
            http_request(&self.addr, method, path, &headers, body.as_bytes()).await?;
        let v = if r.body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()))
        };
        Ok((r.status, v))
    }

    /// Like [`ControlPlane::call`], failing unless the status is 2xx.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        org: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, org, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Creates an organization; its id.
    pub async fn create_org(&self, name: &str) -> anyhow::Result<String> {
        let v = self
            .ok(
                "POST",
                "/api/v1/organizations",
                None,
                Some(serde_json::json!({"name": name})),
            )
            .await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no id in {v}"))
    }

    /// A single-use registration token for a connector called `name`; its secret.
    pub async fn registration_token(&self, org: &str, name: &str) -> anyhow::Result<String> {
        let v = self
            .ok(
                "POST",
                "/api/v1/registration-tokens",
                Some(org),
                Some(serde_json::json!({"name": name})),
            )
            .await?;
        v["secret"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no secret in {v}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long tests wait for the connector to see a change (well above the 2 s target, which
/// tests measure and assert separately).
pub const SYNC_WAIT: Duration = Duration::from_secs(30);
