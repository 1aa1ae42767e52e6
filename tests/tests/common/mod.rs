//! Shared set-up for the end-to-end tests: a real PostgreSQL (one per test binary), a real
//! `gate-connector` process per test, and clients connecting through it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_test_support::certs::TestCerts;
use gate_test_support::gateway::Gateway;
use gate_test_support::postgres::PgServer;
use tempfile::TempDir;

/// A policy under which every statement passes, at all three stages; decisions are still
/// made (and audited) because a policy exists for each stage.
pub const ALLOW_ALL: &str = r#"
package formal.v2
import rego.v1
session := {"action": "allow"}
pre_request := {"action": "allow"}
post_request := {"action": "allow"}
"#;

pub const ALICE_TOKEN: &str = "tok-alice-7f3c9a1e5b2d4c6e8a0b1c2d3e4f5a6b";
pub const BOB_TOKEN: &str = "tok-bob-1a2b3c4d5e6f708192a3b4c5d6e7f801";

/// A running gateway in front of the shared PostgreSQL.
pub struct Env {
    pub gw: Gateway,
    pub dir: TempDir,
    pub certs: TestCerts,
    pub port: u16,
    /// The upstream's password for the `app` account, which must never leak.
    pub upstream_password: String,
}

/// Which real server `primary-db` (and `TEST_APP_DB_PASSWORD`) refers to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Postgres,
    Mariadb,
}

pub struct Opts {
    /// Rego text for all three stages; `None` = the repository's policies/example.rego.
    pub policy: Option<String>,
    /// Extra resources (YAML list items, indented by 2 spaces).
    pub extra_resources: String,
    pub tls: bool,
    /// Extra top-level YAML.
    pub extra: String,
    /// `auth.oidc` as a YAML flow mapping.
    pub oidc: Option<String>,
    pub upstream: Upstream,
    /// The whole `recording:` line (e.g. `recording: {url: "s3://bucket/prefix"}`);
    /// `None` = `recording: {dir: .data/recordings}`.
    pub recording: Option<String>,
    /// Extra environment variables for the gateway process.
    pub env: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            policy: None,
            extra_resources: String::new(),
            tls: true,
            extra: String::new(),
            oidc: None,
            upstream: Upstream::Postgres,
            recording: None,
            env: Vec::new(),
        }
    }
}

pub fn repo_root() -> PathBuf {
    gate_test_support::workspace_root()
}

pub fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub async fn start(opts: Opts) -> Env {
    try_start(opts).await.expect("gateway starts")
}

pub async fn try_start(opts: Opts) -> anyhow::Result<Env> {
    let (protocol, upstream_port, app_user, app_password) = match opts.upstream {
        Upstream::Postgres => {
            let pg = PgServer::shared();
            (
                "postgres",
                pg.port(),
                pg.app_user().to_string(),
                pg.app_password().to_string(),
            )
        }
        Upstream::Mariadb => {
            let db = gate_test_support::mariadb::MariaDbServer::shared();
            (
                "mysql",
                db.port(),
                db.app_user().to_string(),
                db.app_password().to_string(),
            )
        }
    };
    let dir = tempfile::tempdir()?;
    let certs = TestCerts::generate(dir.path())?;
    let port = gate_test_support::free_port();
    let health = gate_test_support::free_port();
    let policy_path = match &opts.policy {
        Some(text) => {
            let p = dir.path().join("policy.rego");
            std::fs::write(&p, text)?;
            p
        }
        None => repo_root().join("policies/example.rego"),
    };
    let tls = if opts.tls {
        format!(
            "tls: {{enabled: true, cert_file: \"{}\", key_file: \"{}\"}}",
            certs.cert_path.display(),
            certs.key_path.display()
        )
    } else {
        String::new()
    };
    let yaml = format!(
        r#"
listen_addr: "127.0.0.1:{port}"
health_addr: "127.0.0.1:{health}"
{tls}
auth:
  tokens:
    - {{name: alice, email: alice@example.com, groups: [engineering], token_sha256: "{alice}"}}
    - {{name: bob, email: bob@example.com, groups: [support], token_sha256: "{bob}"}}
{oidc}
resources:
  - name: primary-db
    protocol: {protocol}
    host: 127.0.0.1
    port: {upstream_port}
    database: appdb
    credentials: {{username: "{app_user}", password: "${{TEST_APP_DB_PASSWORD}}"}}
    pool: {{max_connections: 10, idle_timeout: "5m", acquire_timeout: "10s"}}
{extra_resources}
policies:
  - {{path: "{policy}", stage: session}}
  - {{path: "{policy}", stage: pre_request}}
  - {{path: "{policy}", stage: post_request}}
{recording}
audit: {{file: .data/audit.jsonl}}
logging: {{level: debug, format: json}}
masking: {{hash_key: "test-hash-key"}}
shutdown: {{drain_timeout: "3s"}}
{extra}
"#,
        alice = sha(ALICE_TOKEN),
        bob = sha(BOB_TOKEN),
        extra_resources = opts.extra_resources,
        policy = policy_path.display(),
        extra = opts.extra,
        recording = opts
            .recording
            .unwrap_or_else(|| "recording: {dir: .data/recordings}".to_string()),
        oidc = opts
            .oidc
            .map(|o| format!("  oidc: {o}"))
            .unwrap_or_default(),
    );
    let mut builder = Gateway::builder(yaml, dir.path()).env("TEST_APP_DB_PASSWORD", &app_password);
    for (k, v) in &opts.env {
        builder = builder.env(k, v);
    }
    let gw = builder.start().await?;
    Ok(Env {
        gw,
        dir,
        certs,
        port,
        upstream_password: app_password,
    })
}

impl Env {
    pub fn conninfo(&self, user: &str, token: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname={db} sslmode=require connect_timeout=10",
            self.port
        )
    }

    pub fn alice(&self) -> String {
        self.conninfo("alice", ALICE_TOKEN, "primary-db")
    }

    /// tokio-postgres over TLS, verifying the gateway's certificate against the test CA.
    pub async fn connect(
        &self,
        conninfo: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = self.certs.client_config().expect("client tls config");
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
        let (client, connection) = tokio_postgres::connect(conninfo, tls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn connect_alice(&self) -> tokio_postgres::Client {
        self.connect(&self.alice()).await.expect("alice connects")
    }

    pub fn tls_connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        tokio_postgres_rustls::MakeRustlsConnect::new(
            self.certs.client_config().expect("tls config"),
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(".data")
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.data_dir().join("audit.jsonl"))
    }

    /// Waits until the audit log holds an event matching `pred` (the writer is asynchronous).
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        gate_test_support::wait_until(what, Duration::from_secs(20), || async {
            let events = self.audit_events();
            events.iter().any(&pred).then_some(events)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\naudit: {:#?}", self.audit_events()))
    }

    /// Runs the real `psql` through the gateway; returns (status ok, stdout, stderr).
    pub async fn psql(&self, conninfo: &str, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(gate_test_support::psql_binary())
            .arg("-X")
            .arg(conninfo)
            .args(args)
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .await
            .expect("psql runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn metrics(&self) -> String {
        self.gw.http_get("/metrics").await.expect("metrics").body
    }
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => ("".into(), e.to_string()),
    }
}
