//! A local S3-compatible server for tests of object-store recordings.
//!
//! No real S3 is reachable from the test machines, so this runs [moto]'s standalone server
//! (`moto_server`, from `pip install 'moto[server]'`; `scripts/test-setup.sh` installs it): a
//! documented, in-memory mock of the S3 REST API that the `object_store` crate talks to like
//! it would to AWS. It stands in for S3 only; it is not a production store.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use gate_test_support::s3::S3Server;
//! let s3 = S3Server::start().await?; // waits until it answers HTTP
//! s3.create_bucket("gate-recordings").await?;
//! // … point a client at s3.endpoint() (path-style, plain HTTP, any credentials) …
//! let keys = s3.list_objects("gate-recordings").await?;
//! # Ok(()) }
//! ```
//!
//! The server listens on a free loopback port and keeps everything in memory; it is killed
//! when the [`S3Server`] is dropped (and by a watchdog should the test process be killed).
//! The helpers here speak plain HTTP with a dummy SigV4 `Authorization` header: moto does not
//! check signatures, but it treats a request without that header as anonymous and answers
//! `403` to anonymous reads of private objects (which is what `object_store` writes).
//!
//! The program is `GATE_MOTO_SERVER` if set, else `<workspace>/.data/moto-venv/bin/moto_server`
//! (where `scripts/test-setup.sh` installs moto when python3 is an externally managed system
//! Python), else `moto_server` on `PATH`, else `python3 -m moto.server` if python3 has moto
//! (a `pip install --user` whose `bin` is not on `PATH`).
//!
//! [moto]: https://docs.getmoto.org/en/latest/docs/server_mode.html

use anyhow::{Context, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{Backoff, DEFAULT_TIMEOUT, HttpResponse};

/// The region the helpers (and, by convention, clients in tests) use.
pub const REGION: &str = "us-east-1";

/// A dummy SigV4 header: moto reads the region from it and does not verify the signature.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=test/20000101/us-east-1/s3/aws4_request, \
     SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000";

/// A running `moto_server`. See the module docs.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    /// Holds `moto.log` (the server's stdout and stderr).
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
    watchdog: Option<Watchdog>,
}

impl S3Server {
    /// Starts `moto_server` on a free loopback port and waits until it answers HTTP.
    pub async fn start() -> anyhow::Result<S3Server> {
        let program = tokio::task::spawn_blocking(moto_server)
            .await
            .context("moto_server lookup task")??;
        let base = crate::tmp_base(false);
        let dir = tempfile::Builder::new()
            .prefix("gate-s3-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?;
        let log = dir.path().join("moto.log");
        let mut last_err = None;
        for _attempt in 0..8 {
            let port = crate::free_port();
            let mut server = S3Server::spawn(&program, port, &log)?;
            match server.wait_ready(DEFAULT_TIMEOUT).await {
                Ok(()) => {
                    server.dir = Some(dir);
                    return Ok(server);
                }
                Err(e) => {
                    let port_taken = server.log().contains("Address already in use");
                    drop(server);
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                    // Someone grabbed the port between free_port() and bind: try another.
                    let _ = std::fs::remove_file(&log);
                }
            }
        }
        if crate::keep_dirs() {
            let _ = dir.keep();
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("moto_server did not start")))
    }

    fn spawn(program: &MotoCommand, port: u16, log: &Path) -> anyhow::Result<S3Server> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = Command::new(&program.program);
        cmd.args(&program.args)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .current_dir("/")
            // Its own process group, so that `Drop` (and the watchdog) also get any helper
            // process a wrapper script (a pyenv shim, say) might leave around.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", program.program.display()))?;
        let dir = log.parent().and_then(Path::to_str).unwrap_or_default();
        let watchdog = Watchdog::spawn(
            // `-PID`: the process group (dash's `kill` takes no `--`).
            r#"kill -KILL -"$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null
[ "$3" = keep ] || [ -z "$2" ] || rm -rf "$2""#,
            &[
                &child.id().to_string(),
                dir,
                if crate::keep_dirs() { "keep" } else { "remove" },
            ],
        )
        .ok();
        Ok(S3Server {
            child,
            port,
            dir: None,
            log: log.to_path_buf(),
            watchdog,
        })
    }

    /// Polls `GET /` (moto's ListBuckets) until it answers, failing early if the process exits.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        let addr = self.addr();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto_server exited ({status}) before answering on {addr}\n--- {} ---\n{}",
                    self.log.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            let last = match self.request("GET", "/", &[]).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("GET /: {} {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "moto_server not answering on {addr} after {timeout:?} ({last})\n--- {} ---\n{}",
                    self.log.display(),
                    crate::tail(&self.log(), 40)
                );
            }
            backoff.wait_async(deadline).await;
        }
    }

    /// `http://127.0.0.1:<port>`: the endpoint for clients (path-style requests, plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the server wrote so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    async fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<HttpResponse> {
        crate::http_request(
            &self.addr(),
            method,
            path,
            &[("Authorization", AUTHORIZATION)],
            body,
        )
        .await
    }

    /// Creates a bucket (`PUT /<name>`) in [`REGION`]. Names follow S3's rules: 3 to 63
    /// characters, lower case.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let r = self
            .request("PUT", &format!("/{}", encode(name, false)), &[])
            .await?;
        if r.status != 200 {
            bail!("create bucket {name}: {} {}", r.status, r.body.trim());
        }
        Ok(())
    }

    /// Every key in `bucket`, in S3's (lexicographic) order. Follows continuation tokens.
    pub async fn list_objects(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{}?list-type=2", encode(bucket, false));
            if let Some(t) = &token {
                path.push_str("&continuation-token=");
                path.push_str(&encode(t, false));
            }
            let r = self.request("GET", &path, &[]).await?;
            if r.status != 200 {
                bail!("list bucket {bucket}: {} {}", r.status, r.body.trim());
            }
            keys.extend(xml_values(&r.body, "Key"));
            let truncated = xml_values(&r.body, "IsTruncated")
                .first()
                .is_some_and(|v| v == "true");
            token = xml_values(&r.body, "NextContinuationToken")
                .into_iter()
                .next();
            if !truncated || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// The content of one object.
    pub async fn get_object(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let path = format!("/{}/{}", encode(bucket, false), encode(key, true));
        let r = self.request("GET", &path, &[]).await?;
        if r.status != 200 {
            bail!("get {bucket}/{key}: {} {}", r.status, r.body.trim());
        }
        Ok(r.body_bytes)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- moto_server log {} (last 40 lines) ---\n{}",
                self.log.display(),
                crate::tail(&self.log(), 40)
            );
        }
        // An in-memory mock: nothing to shut down gracefully.
        crate::kill_process_group(&mut self.child);
        if let Some(mut w) = self.watchdog.take() {
            w.disarm();
        }
        crate::keep_dir_if_asked(&mut self.dir);
    }
}

/// How to run moto's server: a program and the arguments before `-H … -p …`.
#[derive(Debug)]
struct MotoCommand {
    program: PathBuf,
    args: Vec<&'static str>,
}

/// The `moto_server` program (see the module docs).
fn moto_server() -> anyhow::Result<MotoCommand> {
    let plain = |program: PathBuf| MotoCommand {
        program,
        args: Vec::new(),
    };
    if let Some(p) = std::env::var_os("GATE_MOTO_SERVER").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("GATE_MOTO_SERVER={} does not exist", p.display());
        }
        return Ok(plain(p));
    }
    let venv = crate::workspace_root().join(".data/moto-venv/bin/moto_server");
    if venv.is_file() {
        return Ok(plain(venv));
    }
    if let Some(p) = crate::find_on_path("moto_server") {
        return Ok(plain(p));
    }
    if let Some(python) = crate::find_on_path("python3") {
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_moto {
            return Ok(MotoCommand {
                program: python,
                args: vec!["-m", "moto.server"],
            });
        }
    }
    bail!(
        "moto_server not found (the local S3 stand-in for the recording tests); run \
         scripts/test-setup.sh, or `python3 -m pip install 'moto[server]'`, or set GATE_MOTO_SERVER"
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` if `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<tag>…</tag>` element in `xml`, entities decoded. Enough for S3's
/// flat list responses.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_responses_and_encodes_keys() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a/b&amp;c.jsonl</Key>\
                   </Contents><Contents><Key>d</Key></Contents>\
                   <NextContinuationToken>t+1</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), ["a/b&c.jsonl", "d"]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["true"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), ["t+1"]);
        assert_eq!(encode("a/b c+d.jsonl", true), "a/b%20c%2Bd.jsonl");
        assert_eq!(encode("t+1/x", false), "t%2B1%2Fx");
    }
}
