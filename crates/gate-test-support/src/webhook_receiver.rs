//! A webhook receiver that verifies signatures with an independent implementation: the
//! Python [`standardwebhooks`](https://pypi.org/project/standardwebhooks/) package, the
//! reference library of the Standard Webhooks specification.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use gate_test_support::webhook_receiver::WebhookReceiver;
//! let rx = WebhookReceiver::start().await?; // waits until it answers
//! // … create an endpoint with url rx.url("/hook"), get its secret …
//! rx.set_secrets(&["whsec_…"]).await?;
//! rx.fail_next(503, 2).await?; // the next two requests get 503
//! let seen = rx
//!     .wait_for("two verified deliveries", std::time::Duration::from_secs(30), |reqs| {
//!         reqs.iter().filter(|r| r.verified()).count() >= 2
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The receiver is a small `http.server` script (written to a temp dir) run by a Python
//! that has the package: `$GATE_WEBHOOKS_PYTHON` if set, else
//! `<workspace>/.data/webhooks-venv/bin/python` (where `scripts/test-setup.sh` installs
//! it), else `python3` on `PATH` if it can import `standardwebhooks`. It binds a free
//! loopback port itself (no race for the port) and tells it through a file.
//!
//! Every request to any path but `/_ctl/…` is a delivery: the receiver verifies it with
//! `standardwebhooks.Webhook(secret).verify(body, headers)` once per configured secret,
//! records one JSON line ([`ReceivedRequest`]) with which secrets verified, and answers
//! 204 when one did, 401 when none did — or, while told to fail, the status it was told,
//! whatever the signature. Control requests (`POST /_ctl/config`) set the secrets and the
//! failure mode; `GET /_ctl/health` is the readiness check.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{Backoff, DEFAULT_TIMEOUT};

const SCRIPT: &str = r#"
import json, os, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from standardwebhooks.webhooks import Webhook

port_file, log_path = sys.argv[1], sys.argv[2]
state = {"secrets": [], "fail_status": 0, "fail_count": 0}
lock = threading.Lock()
MAX_BODY = 1 << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n)

    def do_GET(self):
        if self.path == "/_ctl/health":
            self.reply(200, b'{"ok": true}')
        else:
            self.reply(404)

    def do_POST(self):
        try:
            body = self.body()
        except Exception:
            self.close_connection = True
            return self.reply(413)
        if self.path == "/_ctl/config":
            with lock:
                state.update(json.loads(body))
            return self.reply(200, b"{}")
        headers = {k.lower(): v for (k, v) in self.headers.items()}
        with lock:
            secrets = list(state["secrets"])
            forced = 0
            if state["fail_status"] and state["fail_count"] != 0:
                forced = int(state["fail_status"])
                if state["fail_count"] > 0:
                    state["fail_count"] -= 1
        verified, errors, payload = [], [], None
        for secret in secrets:
            try:
                payload = Webhook(secret).verify(body, headers)
                verified.append(True)
                errors.append(None)
            except Exception as e:
                verified.append(False)
                errors.append(f"{type(e).__name__}: {e}")
        status = forced or (204 if any(verified) else 401)
        record = {
            "path": self.path,
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "signatures": len((headers.get("webhook-signature") or "").split()),
            "content_type": headers.get("content-type"),
            "verified": verified,
            "errors": errors,
            "payload": payload,
            "answered": status,
        }
        with lock:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        self.reply(status)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// One request the receiver got (a delivery attempt).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedRequest {
    pub path: String,
    /// The `webhook-id` header.
    pub webhook_id: Option<String>,
    /// The `webhook-timestamp` header.
    pub webhook_timestamp: Option<String>,
    /// How many signatures `webhook-signature` carried.
    pub signatures: usize,
    pub content_type: Option<String>,
    /// Per configured secret (in the order given to [`WebhookReceiver::set_secrets`]),
    /// whether `standardwebhooks` verified the request with it.
    pub verified_with: Vec<bool>,
    /// Per secret, why verification failed (`None` where it passed).
    pub errors: Vec<Option<String>>,
    /// The parsed body, when some secret verified it.
    pub payload: Option<Value>,
    /// The status the receiver answered.
    pub answered: u16,
}

impl ReceivedRequest {
    /// Verified with at least one configured secret.
    pub fn verified(&self) -> bool {
        self.verified_with.iter().any(|v| *v)
    }

    /// Verified, and answered 2xx: a delivery Gate counts as delivered.
    pub fn accepted(&self) -> bool {
        self.verified() && (200..300).contains(&self.answered)
    }

    /// The payload's `type`.
    pub fn event_type(&self) -> Option<&str> {
        self.payload.as_ref()?.get("type")?.as_str()
    }

    fn from_json(v: &Value) -> ReceivedRequest {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        ReceivedRequest {
            path: s("path").unwrap_or_default(),
            webhook_id: s("webhook_id"),
            webhook_timestamp: s("webhook_timestamp"),
            signatures: v.get("signatures").and_then(Value::as_u64).unwrap_or(0) as usize,
            content_type: s("content_type"),
            verified_with: v
                .get("verified")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|b| b.as_bool().unwrap_or(false)).collect())
                .unwrap_or_default(),
            errors: v
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|e| e.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            payload: v.get("payload").filter(|p| !p.is_null()).cloned(),
            answered: v.get("answered").and_then(Value::as_u64).unwrap_or(0) as u16,
        }
    }
}

/// A running receiver. See the module docs.
#[derive(Debug)]
pub struct WebhookReceiver {
    child: Child,
    port: u16,
    dir: Option<tempfile::TempDir>,
    requests_log: PathBuf,
    output_log: PathBuf,
    watchdog: Option<Watchdog>,
}

impl WebhookReceiver {
    /// Starts the receiver and waits until it answers.
    pub async fn start() -> anyhow::Result<WebhookReceiver> {
        let python = tokio::task::spawn_blocking(python)
            .await
            .context("python lookup task")??;
        let base = crate::tmp_base(false);
        let dir = tempfile::Builder::new()
            .prefix("gate-webhooks-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?;
        let script = dir.path().join("receiver.py");
        std::fs::write(&script, SCRIPT).context("write receiver.py")?;
        let port_file = dir.path().join("port");
        let requests_log = dir.path().join("requests.jsonl");
        let output_log = dir.path().join("receiver.log");
        let out = std::fs::File::create(&output_log).context("create receiver.log")?;
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(&port_file)
            .arg(&requests_log)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .current_dir(dir.path())
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let watchdog = Watchdog::spawn(
            r#"kill -KILL -"$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null"#,
            &[&child.id().to_string()],
        )
        .ok();
        let mut rx = WebhookReceiver {
            child,
            port: 0,
            dir: Some(dir),
            requests_log,
            output_log,
            watchdog,
        };
        rx.wait_ready(&port_file, DEFAULT_TIMEOUT).await?;
        Ok(rx)
    }

    async fn wait_ready(&mut self, port_file: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the webhook receiver exited ({status}) before answering\n--- {} ---\n{}",
                    self.output_log.display(),
                    crate::tail(&self.output(), 40)
                );
            }
            if self.port == 0
                && let Ok(text) = std::fs::read_to_string(port_file)
            {
                self.port = text.trim().parse().unwrap_or(0);
            }
            let last = if self.port == 0 {
                "no port yet".to_string()
            } else {
                match crate::http_get(&self.addr(), "/_ctl/health").await {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => format!("health: {}", r.status),
                    Err(e) => format!("{e:#}"),
                }
            };
            if Instant::now() >= deadline {
                bail!(
                    "the webhook receiver is not answering after {timeout:?} ({last})\n--- {} ---\n{}",
                    self.output_log.display(),
                    crate::tail(&self.output(), 40)
                );
            }
            backoff.wait_async(deadline).await;
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`: an endpoint URL for Gate.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    async fn configure(&self, config: Value) -> anyhow::Result<()> {
        let body = config.to_string();
        let r = crate::http_request(
            &self.addr(),
            "POST",
            "/_ctl/config",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await?;
        if r.status != 200 {
            bail!("configuring the webhook receiver: {} {}", r.status, r.body);
        }
        Ok(())
    }

    /// The secrets (`whsec_…`) each request is verified with, each on its own.
    pub async fn set_secrets(&self, secrets: &[&str]) -> anyhow::Result<()> {
        self.configure(json!({ "secrets": secrets })).await
    }

    /// Answer the next `count` requests with `status` (`count < 0`: every request until
    /// [`WebhookReceiver::recover`]).
    pub async fn fail_next(&self, status: u16, count: i64) -> anyhow::Result<()> {
        self.configure(json!({ "fail_status": status, "fail_count": count }))
            .await
    }

    /// Answer normally again.
    pub async fn recover(&self) -> anyhow::Result<()> {
        self.configure(json!({ "fail_status": 0, "fail_count": 0 }))
            .await
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        let text = std::fs::read_to_string(&self.requests_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| ReceivedRequest::from_json(&v))
            .collect()
    }

    /// Polls [`WebhookReceiver::requests`] until `done` holds, for at most `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ReceivedRequest]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedRequest>> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return Ok(requests);
            }
            if Instant::now() >= deadline {
                bail!(
                    "webhook receiver: {what}: not within {timeout:?}; received:\n{}",
                    requests
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the receiver process printed (Python errors).
    pub fn output(&self) -> String {
        std::fs::read(&self.output_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- webhook receiver output {} (last 40 lines) ---\n{}",
                self.output_log.display(),
                crate::tail(&self.output(), 40)
            );
        }
        crate::kill_process_group(&mut self.child);
        if let Some(mut w) = self.watchdog.take() {
            w.disarm();
        }
        crate::keep_dir_if_asked(&mut self.dir);
    }
}

/// A Python that can `import standardwebhooks` (see the module docs).
pub fn python() -> anyhow::Result<PathBuf> {
    let can_import = |p: &Path| {
        Command::new(p)
            .args(["-c", "import standardwebhooks.webhooks"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Some(p) = std::env::var_os("GATE_WEBHOOKS_PYTHON").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !can_import(&p) {
            bail!(
                "GATE_WEBHOOKS_PYTHON={} cannot import standardwebhooks",
                p.display()
            );
        }
        return Ok(p);
    }
    let venv = crate::workspace_root().join(".data/webhooks-venv/bin/python");
    if venv.is_file() && can_import(&venv) {
        return Ok(venv);
    }
    if let Some(p) = crate::find_on_path("python3")
        && can_import(&p)
    {
        return Ok(p);
    }
    bail!(
        "no Python with the standardwebhooks package (the independent signature check of the \
         webhook tests); run scripts/test-setup.sh, or `pip install standardwebhooks`, or set \
         GATE_WEBHOOKS_PYTHON"
    )
}
