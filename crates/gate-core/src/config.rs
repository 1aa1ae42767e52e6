//! Connector configuration: YAML with `${ENV}` expansion, validated as a whole so that
//! `gate-connector check` can print every problem at once, each with its path in the file.
//!
//! Relative paths in the file (policies, certificates, data) are resolved against the working
//! directory the connector is started from, as the sample `configs/connector.yaml` expects
//! when run from the repository root.

use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Protocol;
use crate::decision::Stage;
use crate::secret::TokenDigest;

/// The whole `connector.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Shared listener; the protocol is recognised from the client's first bytes.
    pub listen_addr: String,
    /// `/health`, `/ready` and `/metrics`.
    #[serde(default)]
    pub health_addr: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub masking: MaskingConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The control plane this connector registers with and syncs from (optional: without it
    /// the connector runs from this file alone).
    #[serde(default)]
    pub control_plane: Option<ControlPlaneConfig>,
    /// The operator API on `health_addr` (`/admin/sessions`); off unless a token is set.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where the connector keeps state it must not lose across restarts (the SSH host key).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Threads serving connections (default: one per CPU). Each connection stays on one of
    /// them for its whole life; new connections go to the least busy.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// Where the control plane is and how to stay in sync with it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `http://host:port` or `https://host:port` (gRPC on the control plane's listener).
    pub url: String,
    /// Single-use token from the control plane; used once, on the first start. Afterwards
    /// the connector's own credential (kept in `data_dir`) is used and this may be removed.
    #[serde(default)]
    pub registration_token: Option<String>,
    /// PEM CA certificate(s) to verify the control plane's TLS certificate (self-signed
    /// setups); default: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Fallback poll interval when the watch stream is down.
    #[serde(default = "default_sync_interval", deserialize_with = "duration")]
    pub sync_interval: Duration,
    /// Up to this much random delay is added to each poll, so connectors spread out.
    #[serde(default = "default_sync_jitter", deserialize_with = "duration")]
    pub sync_jitter: Duration,
    #[serde(default = "default_heartbeat_interval", deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
}

impl fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("url", &self.url)
            .field(
                "registration_token",
                &self.registration_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .field("sync_interval", &self.sync_interval)
            .field("sync_jitter", &self.sync_jitter)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish()
    }
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_sync_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(30)
}

/// The connector's operator API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 (hex) of the bearer token operators present (`gate-connector hash-token`).
    pub token_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Standalone identities authenticated by a bearer token.
    #[serde(default)]
    pub tokens: Vec<TokenIdentityConfig>,
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIdentityConfig {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 of the token, hex. `gate-connector hash-token` prints it.
    pub token_sha256: String,
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`) for SSH resources.
    #[serde(default)]
    pub ssh_public_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Claim holding group names.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    #[serde(deserialize_with = "number")]
    pub port: u16,
    #[serde(default)]
    pub database: Option<String>,
    pub credentials: CredentialsConfig,
    /// Optional dedicated listener on which this resource is implied.
    #[serde(default, deserialize_with = "optional_number")]
    pub listen_port: Option<u16>,
    #[serde(default)]
    pub pool: PoolConfig,
    /// SSH: the upstream's host key, pinned as `SHA256:…` (what `ssh-keygen -lf` prints).
    #[serde(default)]
    pub host_key_fingerprint: Option<String>,
    /// SSH: an OpenSSH `known_hosts` file holding the upstream's key (alternative to the
    /// fingerprint). Either way an unpinned or changed key refuses the session.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// What to record beyond the defaults (SSH: keystrokes).
    #[serde(default)]
    pub recording: ResourceRecordingConfig,
    /// Ends a session after this long without traffic (SSH). Unset: no idle limit.
    #[serde(default, deserialize_with = "optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// Ends a session this long after it opened, whatever it is doing (SSH).
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_session_duration: Option<Duration>,
    /// Sessions need an active just-in-time grant from the control plane (`gate access
    /// request …`); without one, or when grants cannot be checked, they are refused.
    #[serde(default)]
    pub require_access_grant: bool,
}

/// Per-resource recording options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRecordingConfig {
    /// Record what the user types in interactive sessions (`[t, "i", data]` events). Off by
    /// default: keystrokes include passwords typed at prompts.
    #[serde(default)]
    pub input: bool,
}

/// Upstream credentials Gate injects; callers never see them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

impl fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_max_connections", deserialize_with = "number")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long a session waits for a free upstream connection before it is refused.
    #[serde(default = "default_acquire_timeout", deserialize_with = "duration")]
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            acquire_timeout: default_acquire_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub path: PathBuf,
    #[serde(deserialize_with = "stage")]
    pub stage: Stage,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Local directory (the default: `.data/recordings`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Object store URL instead of a directory: `s3://bucket/prefix`, `file:///path`.
    #[serde(default)]
    pub url: Option<String>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: true,
            dir: None,
            url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// How often written events are forced to disk (fdatasync). Events reach the file
    /// (the page cache) within milliseconds, so a crash of the gateway loses none; this
    /// bounds what a power loss or kernel crash can lose. `0s` syncs every batch, at a
    /// cost in throughput on slow disks.
    #[serde(default = "default_audit_sync_interval", deserialize_with = "duration")]
    pub sync_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: default_audit_file(),
            sync_interval: default_audit_sync_interval(),
        }
    }
}

fn default_audit_sync_interval() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Key for the `hash` strategy. Keep it stable to keep hashed values comparable across
    /// restarts; when unset a random key is made at start-up (stable for the process only).
    #[serde(default)]
    pub hash_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long live sessions may continue after SIGTERM before they are closed.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_max_connections() -> usize {
    20
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".data")
}
fn default_audit_file() -> PathBuf {
    PathBuf::from(".data/audit.jsonl")
}
fn default_log_level() -> String {
    "info".into()
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

use de::{duration, number, optional_duration, optional_number};

/// Field deserializers shared by Gate's config files (the connector's and the control
/// plane's), for `#[serde(deserialize_with = "…")]`.
pub mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    fn parse_duration<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
        humantime::parse_duration(s.trim()).map_err(|e| E::custom(format!("{s:?}: {e}")))
    }

    /// Durations are written the human way: `5m`, `30s`, `1h 30m`.
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?)
    }

    /// A list of durations: `[5s, 1m]`.
    pub fn duration_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse_duration(s))
            .collect()
    }

    /// An optional duration; an empty string (e.g. an empty `${VAR}`) means unset.
    pub fn optional_duration<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => parse_duration(s).map(Some),
        }
    }

    /// Numbers may be written plainly or come from `${VAR}` expansion, which yields a
    /// string.
    pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: std::str::FromStr + TryFrom<u64>,
    {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumOrStr {
            Num(u64),
            Str(String),
        }
        let bad =
            |shown: String| serde::de::Error::custom(format!("expected a number, got {shown}"));
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => T::try_from(n).map_err(|_| bad(n.to_string())),
            NumOrStr::Str(s) => s.trim().parse().map_err(|_| bad(format!("{s:?}"))),
        }
    }

    pub fn optional_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: std::str::FromStr + TryFrom<u64>,
    {
        number(d).map(Some)
    }
}

fn stage<'de, D: Deserializer<'de>>(d: D) -> Result<Stage, D::Error> {
    let s = String::deserialize(d)?;
    Stage::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown stage {s:?} (expected session, pre_request, post_request, request or response)"
        ))
    })
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path in the document, e.g. `resources[1].port`; empty for the whole file.
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}: {}", self.file.display(), e.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads a config file and parses it with `parse` (e.g. [`parse_yaml`] and validation),
/// from the process environment; every problem comes back with the file's name.
pub fn load_file<T>(
    path: &Path,
    parse: impl FnOnce(&str, &dyn Fn(&str) -> Option<String>) -> Result<T, Vec<ConfigError>>,
) -> Result<T, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&text, &|name| std::env::var(name).ok()).map_err(fail)
}

/// Parses YAML text into `T`, expanding `${VAR}` from `env` first, then checks it with
/// `validate`. Type errors name their path in the document (`resources[1].port`); every
/// expansion or validation problem is reported, not just the first.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    validate: impl FnOnce(&T) -> Vec<ConfigError>,
) -> Result<T, Vec<ConfigError>> {
    let mut doc: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            message: format!("invalid YAML: {e}"),
        }]
    })?;
    let errors = expand_env_in(&mut doc, env);
    if !errors.is_empty() {
        return Err(errors);
    }
    let config: T = serde_path_to_error::deserialize(doc).map_err(|e| {
        vec![ConfigError {
            path: e.path().to_string().trim_start_matches('.').to_string(),
            message: e.inner().to_string(),
        }]
    })?;
    let errors = validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

impl ConnectorConfig {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<ConnectorConfig, ConfigErrors> {
        load_file(path, Self::from_yaml_str)
    }

    /// Parses YAML text, expanding `${VAR}` from `env`. Collects every error it can.
    pub fn from_yaml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnectorConfig, Vec<ConfigError>> {
        parse_yaml(text, env, ConnectorConfig::validate)
    }

    /// Semantic checks beyond types: addresses, uniqueness, files that must exist.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });

        let listen_port = match self.listen_addr.parse::<SocketAddr>() {
            Ok(a) => Some(a.port()),
            Err(e) => {
                err("listen_addr".into(), format!("not a socket address: {e}"));
                None
            }
        };
        if let Some(h) = &self.health_addr
            && let Err(e) = h.parse::<SocketAddr>()
        {
            err("health_addr".into(), format!("not a socket address: {e}"));
        }
        if self.worker_threads == Some(0) {
            err("worker_threads".into(), "must be at least 1".into());
        }
        if let Some(tls) = &self.tls
            && tls.enabled
        {
            for (field, p) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !p.is_file() {
                    err(
                        format!("tls.{field}"),
                        format!("file not found: {}", p.display()),
                    );
                }
            }
        }

        if let Some(a) = &self.admin
            && TokenDigest::from_hex(&a.token_sha256).is_none()
        {
            err(
                "admin.token_sha256".into(),
                "must be 64 hex digits (use `gate-connector hash-token`)".into(),
            );
        }
        if let Some(cp) = &self.control_plane {
            if !(cp.url.starts_with("http://") || cp.url.starts_with("https://")) {
                err(
                    "control_plane.url".into(),
                    format!(
                        "expected http://host:port or https://host:port, got {:?}",
                        cp.url
                    ),
                );
            }
            if let Some(f) = &cp.ca_file
                && !f.is_file()
            {
                err(
                    "control_plane.ca_file".into(),
                    format!("file not found: {}", f.display()),
                );
            }
            // A pipe or device (`/dev/stdout`) takes audit events, but cannot be read back.
            if self.audit.file.exists() && !self.audit.file.is_file() {
                err(
                    "audit.file".into(),
                    format!(
                        "{} is not a regular file; with a control plane the connector ships \
                         audit events by reading this file back, so it must be one",
                        self.audit.file.display()
                    ),
                );
            }
        }
        if self.admin.is_some() && self.health_addr.is_none() {
            err(
                "admin".into(),
                "the admin API is served on health_addr; set health_addr".into(),
            );
        }

        let mut names = HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                err(format!("auth.tokens[{i}].name"), "must not be empty".into());
            }
            if !names.insert(t.name.as_str()) {
                err(
                    format!("auth.tokens[{i}].name"),
                    format!("duplicate identity {:?}", t.name),
                );
            }
            if TokenDigest::from_hex(&t.token_sha256).is_none() {
                err(
                    format!("auth.tokens[{i}].token_sha256"),
                    "must be 64 hex digits (use `gate-connector hash-token`)".into(),
                );
            }
        }
        if let Some(o) = &self.auth.oidc {
            if o.issuer.trim().is_empty() {
                err("auth.oidc.issuer".into(), "must not be empty".into());
            }
            if o.audience.trim().is_empty() {
                err("auth.oidc.audience".into(), "must not be empty".into());
            }
            match (&o.jwks_url, &o.jwks_file) {
                (None, None) => err("auth.oidc".into(), "set jwks_url or jwks_file".into()),
                (Some(_), Some(_)) => err(
                    "auth.oidc".into(),
                    "set only one of jwks_url and jwks_file".into(),
                ),
                (None, Some(f)) if !f.is_file() => err(
                    "auth.oidc.jwks_file".into(),
                    format!("file not found: {}", f.display()),
                ),
                _ => {}
            }
        }

        let mut resource_names = HashSet::new();
        let mut ports: HashSet<u16> = listen_port.into_iter().collect();
        for (i, r) in self.resources.iter().enumerate() {
            let at = |f: &str| format!("resources[{i}].{f}");
            if r.name.trim().is_empty() {
                err(at("name"), "must not be empty".into());
            }
            if !resource_names.insert(r.name.as_str()) {
                err(at("name"), format!("duplicate resource {:?}", r.name));
            }
            if r.port == 0 {
                err(at("port"), "must be 1-65535".into());
            }
            if r.host.trim().is_empty() {
                err(at("host"), "must not be empty".into());
            }
            if r.credentials.username.trim().is_empty() {
                err(at("credentials.username"), "must not be empty".into());
            }
            if matches!(r.protocol, Protocol::Postgres | Protocol::Mysql) && r.database.is_none() {
                err(
                    at("database"),
                    format!("required for {} resources", r.protocol),
                );
            }
            if let Some(p) = r.listen_port
                && !ports.insert(p)
            {
                err(
                    at("listen_port"),
                    format!("port {p} is already used by another listener"),
                );
            }
            if r.pool.max_connections == 0 {
                err(at("pool.max_connections"), "must be at least 1".into());
            }
            if r.name.contains('%') {
                err(
                    at("name"),
                    "must not contain '%' (it separates identity and resource in SSH user names)"
                        .into(),
                );
            }
            if r.protocol == Protocol::Ssh {
                let c = &r.credentials;
                match (&c.password, &c.private_key_file) {
                    (None, None) => err(
                        at("credentials"),
                        "set password or private_key_file for ssh resources".into(),
                    ),
                    (_, Some(f)) if !f.is_file() => err(
                        at("credentials.private_key_file"),
                        format!("file not found: {}", f.display()),
                    ),
                    _ => {}
                }
                match (&r.host_key_fingerprint, &r.known_hosts_file) {
                    (None, None) => err(
                        at("host_key_fingerprint"),
                        "ssh resources must pin the upstream host key: set host_key_fingerprint \
                         (SHA256:…, from `ssh-keygen -lf`) or known_hosts_file"
                            .into(),
                    ),
                    (Some(fp), _) if !fp.starts_with("SHA256:") || fp.len() < 20 => err(
                        at("host_key_fingerprint"),
                        format!(
                            "expected \"SHA256:<base64>\" as `ssh-keygen -lf` prints it, got {fp:?}"
                        ),
                    ),
                    (_, Some(f)) if !f.is_file() => err(
                        at("known_hosts_file"),
                        format!("file not found: {}", f.display()),
                    ),
                    _ => {}
                }
            } else if r.host_key_fingerprint.is_some() || r.known_hosts_file.is_some() {
                err(
                    at("host_key_fingerprint"),
                    format!(
                        "only ssh resources have a host key (this one is {})",
                        r.protocol
                    ),
                );
            }
        }

        for (i, p) in self.policies.iter().enumerate() {
            if !p.path.is_file() {
                err(
                    format!("policies[{i}].path"),
                    format!("file not found: {}", p.path.display()),
                );
            }
        }
        if self.recording.dir.is_some() && self.recording.url.is_some() {
            err("recording".into(), "set only one of dir and url".into());
        }
        errors
    }

    /// The recording destination: a URL, or the configured/default directory.
    pub fn recording_location(&self) -> RecordingLocation {
        match (&self.recording.url, &self.recording.dir) {
            (Some(url), _) => RecordingLocation::Url(url.clone()),
            (None, Some(dir)) => RecordingLocation::Dir(dir.clone()),
            (None, None) => RecordingLocation::Dir(PathBuf::from(".data/recordings")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingLocation {
    Dir(PathBuf),
    Url(String),
}

/// Expands `${VAR}` and `${VAR:-default}` in every string scalar of a YAML document (`$$`
/// is a literal `$`); one error per scalar that names an unset variable, with its path.
/// Shared by every Gate config file (connector and control plane).
pub fn expand_env_in(
    doc: &mut yaml_serde::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    expand_env(doc, &mut String::new(), env, &mut errors);
    errors
}

fn expand_env(
    v: &mut yaml_serde::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    use yaml_serde::Value;
    match v {
        Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(out) => *s = out,
            Err(message) => errors.push(ConfigError {
                path: path.clone(),
                message,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_env(&mut t.value, path, env, errors),
        _ => {}
    }
}

/// Expands one string; an unset variable without a default is an error naming it.
pub fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?}"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DB_USER" => Some("app".into()),
            "DB_PASSWORD" => Some("pw".into()),
            "PG_PORT" => Some("5432".into()),
            _ => None,
        }
    }

    const GOOD: &str = r#"
listen_addr: "127.0.0.1:6432"
auth:
  tokens:
    - {name: alice, email: alice@example.com, groups: [engineering], token_sha256: "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"}
resources:
  - name: primary-db
    protocol: postgres
    host: 127.0.0.1
    port: ${PG_PORT}
    database: appdb
    credentials: {username: "${DB_USER}", password: "${DB_PASSWORD}"}
    listen_port: 6433
    pool: {max_connections: 20, idle_timeout: "5m"}
logging: {level: info, format: json}
"#;

    #[test]
    fn parses_and_expands() {
        let c = ConnectorConfig::from_yaml_str(GOOD, &env).unwrap();
        assert_eq!(c.resources[0].credentials.username, "app");
        assert_eq!(c.resources[0].credentials.password.as_deref(), Some("pw"));
        assert_eq!(c.resources[0].pool.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.resources[0].port, 5432, "a number from ${{PG_PORT}}");
        assert_eq!(c.resources[0].listen_port, Some(6433));
        assert_eq!(c.resources[0].protocol, Protocol::Postgres);
        assert!(!format!("{:?}", c.resources[0].credentials).contains("pw\""));
    }

    #[test]
    fn unset_variable_is_named_with_its_path() {
        let text = GOOD.replace("${DB_PASSWORD}", "${NOPE_UNSET}");
        let errs = ConnectorConfig::from_yaml_str(&text, &env).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "resources[0].credentials.password");
        assert!(errs[0].message.contains("NOPE_UNSET"), "{:?}", errs[0]);
    }

    #[test]
    fn collects_every_semantic_error() {
        let text = GOOD
            .replace("port: ${PG_PORT}", "port: 0")
            .replace("listen_port: 6433", "listen_port: 6432")
            .replace("2bb80d537b", "zz");
        let errs = ConnectorConfig::from_yaml_str(&text, &env).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"resources[0].port"), "{paths:?}");
        assert!(paths.contains(&"resources[0].listen_port"), "{paths:?}");
        assert!(paths.contains(&"auth.tokens[0].token_sha256"), "{paths:?}");
    }

    #[test]
    fn worker_threads_default_to_the_cpus_and_zero_is_refused() {
        let c = ConnectorConfig::from_yaml_str(GOOD, &env).unwrap();
        assert_eq!(c.worker_threads, None);
        let one = format!("{GOOD}worker_threads: 1\n");
        let c = ConnectorConfig::from_yaml_str(&one, &env).unwrap();
        assert_eq!(c.worker_threads, Some(1));
        let zero = format!("{GOOD}worker_threads: 0\n");
        let errs = ConnectorConfig::from_yaml_str(&zero, &env).unwrap_err();
        assert_eq!(errs[0].path, "worker_threads", "{errs:?}");
    }

    #[test]
    fn an_audit_pipe_or_device_is_refused_only_with_a_control_plane() {
        let to_null = format!("{GOOD}audit: {{file: /dev/null}}\n");
        ConnectorConfig::from_yaml_str(&to_null, &env).expect("no control plane: fine");
        let shipped = format!("{to_null}control_plane: {{url: \"http://127.0.0.1:1\"}}\n");
        let errs = ConnectorConfig::from_yaml_str(&shipped, &env).unwrap_err();
        assert_eq!(errs[0].path, "audit.file", "{errs:?}");
        assert!(
            errs[0].message.contains("reading this file back"),
            "{errs:?}"
        );
    }

    #[test]
    fn type_errors_carry_their_path() {
        let text = GOOD.replace("protocol: postgres", "protocol: telnet");
        let errs = ConnectorConfig::from_yaml_str(&text, &env).unwrap_err();
        assert_eq!(errs[0].path, "resources[0].protocol", "{errs:?}");
    }

    #[test]
    fn expand_defaults_and_escapes() {
        assert_eq!(expand_str("a${UNSET_X:-d}b", &env).unwrap(), "adb");
        assert_eq!(expand_str("$$5 ${DB_USER}", &env).unwrap(), "$5 app");
        assert!(expand_str("${DB_USER", &env).is_err());
    }
}
