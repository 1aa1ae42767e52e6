//! Test harness: a real control plane started in-process on a free port (`127.0.0.1:0`),
//! over a temporary SQLite file or a fresh database on the shared test PostgreSQL, driven
//! through reqwest (HTTP) and the generated tonic clients (gRPC).

#![allow(dead_code)]

use std::time::Duration;

use gate_control::config::ControlConfig;
use gate_control::{Running, StartOptions};
use gate_proto::v1 as pb;
use gate_proto::v1::connector_service_client::ConnectorServiceClient;
use gate_proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use gate_test_support::postgres::PgServer;
use serde_json::{Value, json};
use tonic::transport::Channel;

pub const SYSTEM_KEY: &str = "test-system-key-0123456789";

/// A policy that compiles for `pre_request` and blocks DROP statements.
pub const GOOD_REGO: &str = r#"package test.drop
import rego.v1

default pre_request := {"action": "allow"}

pre_request := {"action": "block", "reason": "no drops"} if {
	input.query.type == "drop"
}
"#;

/// A policy with a syntax error the compiler reports with a line number.
pub const BAD_REGO: &str =
    "package test.bad\nimport rego.v1\n\npre_request := {\"action\": \"block\" if {\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Plane {
    pub running: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
    pub grpc_channel: Channel,
    _dir: tempfile::TempDir,
}

/// The outcome of one call, in a form both surfaces can be compared by: the HTTP error
/// code string (`not_found`, …) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// The HTTP error code the control plane uses for a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "conflict",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::Unavailable => "unavailable",
        _ => "other",
    }
}

pub fn grpc_err(s: tonic::Status) -> ApiError {
    ApiError {
        code: code_name(s.code()).to_string(),
        message: s.message().to_string(),
    }
}

/// A fresh database URL for `backend`.
pub async fn database_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("control.db").display()),
        Backend::Postgres => tokio::task::spawn_blocking(|| {
            let pg = PgServer::shared();
            let db = format!("control_{}", gate_test_support::random_hex());
            pg.superuser_psql(
                "postgres",
                &format!("CREATE DATABASE {db} OWNER {};", pg.app_user()),
            )
            .expect("create database");
            format!(
                "postgres://{}:{}@{}:{}/{db}",
                pg.app_user(),
                pg.app_password(),
                pg.host(),
                pg.port()
            )
        })
        .await
        .expect("postgres setup"),
    }
}

pub fn config(dsn: &str, api_key: &str, extra: &str) -> ControlConfig {
    let yaml = format!(
        "listen_addr: \"127.0.0.1:0\"\napi_key: \"{api_key}\"\ndatabase: {{dsn: \"{dsn}\", max_open_conns: 5, min_conns: 0}}\nlogging: {{level: warn, format: text}}\n{extra}"
    );
    ControlConfig::from_yaml_str(&yaml, &|_| None).expect("test config")
}

impl Plane {
    pub async fn start(backend: Backend) -> Plane {
        let dir = tempfile::tempdir().expect("tempdir");
        let dsn = database_url(backend, dir.path()).await;
        let cfg = config(&dsn, SYSTEM_KEY, "");
        Self::start_with(cfg, StartOptions::default(), dir).await
    }

    pub async fn start_with(
        cfg: ControlConfig,
        options: StartOptions,
        dir: tempfile::TempDir,
    ) -> Plane {
        let running = gate_control::start(&cfg, options)
            .await
            .expect("control plane starts");
        let addr = running.local_addr();
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        // Readiness: poll /health (no fixed sleeps).
        gate_test_support::wait_until("control plane /health", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{base}/health");
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await
        .expect("ready");
        let grpc_channel = Channel::from_shared(base.clone())
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connects");
        Plane {
            running: Some(running),
            base,
            http,
            grpc_channel,
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// One HTTP call: `(status, JSON body or Null)`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        org: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(o) = org {
            req = req.header("x-org-id", o);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// An HTTP call expected to succeed with a JSON body.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        key: &str,
        org: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, Some(key), org, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// An HTTP call as `Ok(body)` or the error it returned.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        org: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let (status, v) = self.call(method, path, key, org, body).await;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
        let expected_status = match code.as_str() {
            "not_found" => 404,
            "conflict" => 409,
            "invalid_argument" => 400,
            "permission_denied" => 403,
            "unauthenticated" => 401,
            "unavailable" => 503,
            _ => 0,
        };
        assert_eq!(status, expected_status, "{path}: status {status} for {v}");
        Err(ApiError {
            code,
            message: v["error"]["message"].as_str().unwrap_or("").to_string(),
        })
    }

    pub fn control(&self) -> ControlPlaneServiceClient<Channel> {
        ControlPlaneServiceClient::new(self.grpc_channel.clone())
    }

    pub fn connector(&self) -> ConnectorServiceClient<Channel> {
        ConnectorServiceClient::new(self.grpc_channel.clone())
    }

    /// A GET without any key (insecure mode), expected to succeed.
    pub async fn ok_anonymous(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None, None, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// Creates an API key without any key (insecure mode); returns the secret.
    pub async fn create_key_anonymous(&self, org: &str, name: &str, role: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                "/api/v1/api-keys",
                None,
                Some(org),
                Some(json!({ "name": name, "role": role })),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["secret"].as_str().expect("secret").to_string()
    }

    /// Creates an org through HTTP with the system key; returns its id.
    pub async fn create_org(&self, name: &str) -> String {
        let v = self
            .ok(
                "POST",
                "/api/v1/organizations",
                SYSTEM_KEY,
                None,
                Some(json!({ "name": name })),
            )
            .await;
        v["id"].as_str().expect("org id").to_string()
    }

    /// Creates an API key in `org` with the system key; returns the secret.
    pub async fn create_key(&self, org: &str, name: &str, role: &str) -> String {
        let v = self
            .ok(
                "POST",
                "/api/v1/api-keys",
                SYSTEM_KEY,
                Some(org),
                Some(json!({ "name": name, "role": role })),
            )
            .await;
        v["secret"].as_str().expect("secret").to_string()
    }
}

/// A gRPC request with the bearer key and optional org metadata.
pub fn req<T>(msg: T, key: Option<&str>, org: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().expect("metadata"),
        );
    }
    if let Some(o) = org {
        r.metadata_mut()
            .insert("x-org-id", o.parse().expect("metadata"));
    }
    r
}

/// A resource body (HTTP) and the same input as a proto message.
pub fn resource_json(name: &str) -> Value {
    json!({
        "name": name,
        "protocol": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "database": "appdb",
        "spec": {"pool": {"max_connections": 5}, "credentials": {"username": "app"}}
    })
}

pub fn resource_pb(name: &str) -> pb::ResourceInput {
    let v = resource_json(name);
    pb::ResourceInput {
        name: name.to_string(),
        protocol: "postgres".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        database: "appdb".into(),
        spec_json: v["spec"].to_string(),
    }
}

/// The HTTP JSON of a resource, as the proto message it should equal.
pub fn resource_from_json(v: &Value) -> pb::Resource {
    pb::Resource {
        id: s(&v["id"]),
        org_id: s(&v["org_id"]),
        name: s(&v["name"]),
        protocol: s(&v["protocol"]),
        host: s(&v["host"]),
        port: v["port"].as_u64().unwrap_or(0) as u32,
        database: s(&v["database"]),
        spec_json: v["spec"].to_string(),
        created_at: v["created_at"].as_i64().unwrap_or(0),
        updated_at: v["updated_at"].as_i64().unwrap_or(0),
    }
}

pub fn policy_from_json(v: &Value) -> pb::Policy {
    pb::Policy {
        id: s(&v["id"]),
        org_id: s(&v["org_id"]),
        name: s(&v["name"]),
        description: s(&v["description"]),
        stages: strings(&v["stages"]),
        targets: strings(&v["targets"]),
        state: s(&v["state"]),
        version: v["version"].as_i64().unwrap_or(0),
        rego: s(&v["rego"]),
        created_at: v["created_at"].as_i64().unwrap_or(0),
        updated_at: v["updated_at"].as_i64().unwrap_or(0),
    }
}

pub fn identity_from_json(v: &Value) -> pb::Identity {
    pb::Identity {
        id: s(&v["id"]),
        org_id: s(&v["org_id"]),
        name: s(&v["name"]),
        email: s(&v["email"]),
        groups: strings(&v["groups"]),
        ssh_public_keys: strings(&v["ssh_public_keys"]),
        token_sha256: s(&v["token_sha256"]),
        disabled: v["disabled"].as_bool().unwrap_or(false),
        created_at: v["created_at"].as_i64().unwrap_or(0),
        updated_at: v["updated_at"].as_i64().unwrap_or(0),
    }
}

pub fn group_from_json(v: &Value) -> pb::Group {
    pb::Group {
        id: s(&v["id"]),
        org_id: s(&v["org_id"]),
        name: s(&v["name"]),
        description: s(&v["description"]),
        created_at: v["created_at"].as_i64().unwrap_or(0),
    }
}

pub fn audit_from_json(v: &Value) -> pb::AuditRecord {
    pb::AuditRecord {
        id: s(&v["id"]),
        org_id: s(&v["org_id"]),
        time: v["time"].as_i64().unwrap_or(0),
        kind: s(&v["kind"]),
        identity: s(&v["identity"]),
        resource: s(&v["resource"]),
        action: s(&v["action"]),
        protocol: s(&v["protocol"]),
        session_id: s(&v["session_id"]),
        connector_id: s(&v["connector_id"]),
        received_at: v["received_at"].as_i64().unwrap_or(0),
        event_json: v["event"].to_string(),
    }
}

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// An audit event as gate-core writes them.
pub fn audit_event(id: &str, identity: &str, action: &str) -> String {
    json!({
        "id": id,
        "time": "2026-11-21T10:00:00.000000Z",
        "kind": "policy_decision",
        "identity": {"sub": identity, "name": identity},
        "resource": "db-1",
        "protocol": "postgres",
        "stage": "pre_request",
        "action": action,
        "statement": "SELECT 1",
    })
    .to_string()
}
