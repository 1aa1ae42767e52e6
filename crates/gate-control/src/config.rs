//! `control.yaml`: YAML with `${ENV}` expansion, validated as a whole so every problem is
//! reported at once with its path in the file — the same conventions as the connector's
//! config; loading and expansion are gate-core's ([`gate_core::config::parse_yaml`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_core::config::de::{duration, duration_list, number, optional_duration};
use gate_core::config::{ConfigError, ConfigErrors, LoggingConfig, TlsConfig};
use serde::Deserialize;

/// The whole `control.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The one listener for HTTP (`/health`, `/metrics`, `/api/v1`) and gRPC.
    pub listen_addr: String,
    /// The system key, which may act on any organization. Empty refuses to start unless the
    /// control plane runs with `--insecure`.
    #[serde(default)]
    pub api_key: SecretString,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Serve HTTP and gRPC over TLS (ALPN `h2` and `http/1.1`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Slack approvals for access requests (see `docs/slack-jit-approvals.md`).
    #[serde(default)]
    pub slack: Option<crate::slack::SlackConfig>,
}

/// A secret read from the config. `Debug` never prints it, so a logged config is safe.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (embedded default) or `postgres://user:pw@host/db`.
    pub dsn: SecretString,
    #[serde(default = "default_max_open_conns", deserialize_with = "number")]
    pub max_open_conns: u32,
    #[serde(default = "default_min_conns", deserialize_with = "number")]
    pub min_conns: u32,
    /// Read migrations from this directory instead of the ones embedded in the binary
    /// (development only).
    #[serde(default)]
    pub migrations_path: Option<PathBuf>,
}

/// Where recordings live: a local directory or an object-store URL (not both).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Webhook deliveries that exhausted their retries are written here.
    #[serde(default = "default_dead_letter_dir")]
    pub dead_letter_dir: PathBuf,
    /// Waits between a failed webhook attempt and the next one (`[5s, 5m, …]`): one attempt
    /// at once, then one more per entry; after the last the delivery is dead-lettered.
    #[serde(default = "default_retry_schedule", deserialize_with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// How long one webhook request may take (connect to last body byte).
    #[serde(default = "default_delivery_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How often the delivery worker looks for due deliveries when nothing woke it (new
    /// events wake it at once; retries and redeliveries wait for this).
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Webhook requests in flight at once, over all endpoints.
    #[serde(default = "default_max_concurrency", deserialize_with = "number")]
    pub max_concurrency: u32,
    /// Webhook requests in flight at once for one organization (per control plane), so an
    /// org whose receivers hang cannot take every slot and delay everyone else's.
    #[serde(
        default = "default_max_concurrency_per_org",
        deserialize_with = "number"
    )]
    pub max_concurrency_per_org: u32,
    /// Let webhook endpoints point at loopback, private (RFC 1918, `fc00::/7`), link-local
    /// (`169.254.0.0/16` — cloud metadata —, `fe80::/10`) and other non-public addresses,
    /// and `localhost`. Off by default: endpoints are set by org admins, who must not make
    /// the control plane call internal services. Off also means webhook requests ignore
    /// proxy environment variables (through a proxy the address cannot be checked).
    #[serde(default)]
    pub allow_private_targets: bool,
    /// How long delivered deliveries stay listed (dead ones stay until redelivered or
    /// their endpoint is deleted).
    #[serde(default = "default_delivered_retention", deserialize_with = "duration")]
    pub delivered_retention: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            dead_letter_dir: default_dead_letter_dir(),
            retry_schedule: default_retry_schedule(),
            timeout: default_delivery_timeout(),
            poll_interval: default_poll_interval(),
            max_concurrency: default_max_concurrency(),
            max_concurrency_per_org: default_max_concurrency_per_org(),
            allow_private_targets: false,
            delivered_retention: default_delivered_retention(),
        }
    }
}

/// The Standard Webhooks reference schedule (Svix's): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// 10 h — eight attempts over about 28 hours.
fn default_retry_schedule() -> Vec<Duration> {
    [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_concurrency() -> u32 {
    16
}
fn default_max_concurrency_per_org() -> u32 {
    4
}
fn default_delivered_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Most entries in `delivery.retry_schedule`.
pub const MAX_RETRY_SCHEDULE: usize = 20;

impl DeliveryConfig {
    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |path: &str, message: &str| {
            errors.push(ConfigError {
                path: format!("delivery.{path}"),
                message: message.to_string(),
            })
        };
        if self.retry_schedule.len() > MAX_RETRY_SCHEDULE {
            err(
                "retry_schedule",
                &format!("at most {MAX_RETRY_SCHEDULE} retries"),
            );
        }
        if self
            .retry_schedule
            .iter()
            .any(|d| *d > Duration::from_secs(7 * 24 * 3600))
        {
            err("retry_schedule", "a wait may be at most 7d");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            err("timeout", "must be between 1ms and 5m");
        }
        if self.poll_interval.is_zero() || self.poll_interval > Duration::from_secs(3600) {
            err("poll_interval", "must be between 1ms and 1h");
        }
        if !(1..=1024).contains(&self.max_concurrency) {
            err("max_concurrency", "must be between 1 and 1024");
        }
        if !(1..=1024).contains(&self.max_concurrency_per_org) {
            err("max_concurrency_per_org", "must be between 1 and 1024");
        }
        if self.delivered_retention < Duration::from_secs(60) {
            err("delivered_retention", "must be at least 1m");
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Events older than this are purged by the retention job (e.g. `90d`); unset keeps
    /// everything.
    #[serde(default, deserialize_with = "optional_duration")]
    pub retention: Option<Duration>,
    /// How often the retention job runs (default [`DEFAULT_PURGE_INTERVAL`]). Operators
    /// rarely need it; tests set it short to see a purge without waiting an hour.
    #[serde(default, deserialize_with = "optional_duration")]
    pub purge_interval: Option<Duration>,
}

/// The retention job runs hourly: a day's retention is honoured within the hour, and the
/// delete (indexed by time) stays small each time.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

impl AuditConfig {
    /// The retention job's period.
    pub fn purge_interval(&self) -> Duration {
        self.purge_interval.unwrap_or(DEFAULT_PURGE_INTERVAL)
    }
}

fn default_max_open_conns() -> u32 {
    25
}
fn default_min_conns() -> u32 {
    5
}
fn default_dead_letter_dir() -> PathBuf {
    PathBuf::from(".data/control-deadletters")
}

impl ControlConfig {
    /// Where recordings are read from, if configured.
    pub fn recording_location(&self) -> Option<gate_core::config::RecordingLocation> {
        match (&self.recording.url, &self.recording.dir) {
            (Some(url), _) => Some(gate_core::config::RecordingLocation::Url(url.clone())),
            (None, Some(dir)) => Some(gate_core::config::RecordingLocation::Dir(dir.clone())),
            (None, None) => None,
        }
    }

    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<ControlConfig, ConfigErrors> {
        gate_core::config::load_file(path, Self::from_yaml_str)
    }

    /// Parses YAML text, expanding `${VAR}` from `env`. Collects every error it can.
    pub fn from_yaml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ControlConfig, Vec<ConfigError>> {
        gate_core::config::parse_yaml(text, env, ControlConfig::validate)
    }

    /// Semantic checks beyond types.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_string(),
                message,
            })
        };
        if let Err(e) = self.listen_addr.parse::<SocketAddr>() {
            err("listen_addr", format!("not a socket address: {e}"));
        }
        let dsn = self.database.dsn.expose();
        if !(dsn.starts_with("sqlite:")
            || dsn.starts_with("postgres://")
            || dsn.starts_with("postgresql://"))
        {
            // Never echo the DSN: it may hold a password.
            err(
                "database.dsn",
                "expected sqlite://… or postgres://…".to_string(),
            );
        }
        if self.database.max_open_conns == 0 {
            err("database.max_open_conns", "must be at least 1".to_string());
        }
        if self.database.min_conns > self.database.max_open_conns {
            err(
                "database.min_conns",
                "must not exceed database.max_open_conns".to_string(),
            );
        }
        if let Some(p) = &self.database.migrations_path
            && !p.is_dir()
        {
            err(
                "database.migrations_path",
                format!("not a directory: {}", p.display()),
            );
        }
        if self.recording.dir.is_some() && self.recording.url.is_some() {
            err("recording", "set only one of dir and url".to_string());
        }
        if let Some(tls) = self.tls.as_ref().filter(|t| t.enabled) {
            for (path, file) in [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if !file.is_file() {
                    err(path, format!("file not found: {}", file.display()));
                }
            }
        }
        if let Some(r) = self.audit.retention
            && r < Duration::from_secs(3600)
        {
            err(
                "audit.retention",
                "must be at least 1h (it deletes audit events)".to_string(),
            );
        }
        if self.audit.purge_interval.is_some_and(|i| i.is_zero()) {
            err("audit.purge_interval", "must be greater than 0".to_string());
        }
        self.delivery.validate(&mut errors);
        if let Some(slack) = &self.slack {
            slack.validate(&mut errors);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GATE_API_KEY" => Some("k3y".into()),
            "CONNS" => Some("7".into()),
            _ => None,
        }
    }

    #[test]
    fn sample_shape_parses_with_env_and_defaults() {
        let c = ControlConfig::from_yaml_str(
            r#"
listen_addr: "127.0.0.1:8080"
api_key: "${GATE_API_KEY}"
database:
  dsn: "sqlite://.data/control.db"
  max_open_conns: ${CONNS}
recording: {dir: .data/recordings}
delivery: {dead_letter_dir: .data/dl}
logging: {level: info, format: json}
audit: {retention: 90d}
"#,
            &env,
        )
        .unwrap();
        assert_eq!(c.api_key.expose(), "k3y");
        assert_eq!(c.database.max_open_conns, 7);
        assert_eq!(c.database.min_conns, 5);
        assert_eq!(c.audit.retention, Some(Duration::from_secs(90 * 24 * 3600)));
        assert_eq!(c.audit.purge_interval(), DEFAULT_PURGE_INTERVAL);
        assert!(!format!("{c:?}").contains("k3y"));
    }

    #[test]
    fn delivery_settings_parse_and_are_checked() {
        let base = "listen_addr: \"127.0.0.1:0\"\ndatabase: {dsn: \"sqlite::memory:\"}\n";
        let c = ControlConfig::from_yaml_str(base, &env).unwrap();
        assert_eq!(c.delivery.retry_schedule.len(), 7);
        assert_eq!(c.delivery.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(c.delivery.timeout, Duration::from_secs(10));
        assert_eq!(c.delivery.max_concurrency_per_org, 4);
        assert!(!c.delivery.allow_private_targets);
        let c = ControlConfig::from_yaml_str(
            &format!(
                "{base}delivery: {{retry_schedule: [100ms, 2s], timeout: 3s, poll_interval: 50ms, max_concurrency: 2, max_concurrency_per_org: 1, allow_private_targets: true}}\n"
            ),
            &env,
        )
        .unwrap();
        assert_eq!(
            c.delivery.retry_schedule,
            [Duration::from_millis(100), Duration::from_secs(2)]
        );
        assert_eq!(c.delivery.poll_interval, Duration::from_millis(50));
        assert_eq!(c.delivery.max_concurrency, 2);
        assert_eq!(c.delivery.max_concurrency_per_org, 1);
        assert!(c.delivery.allow_private_targets);
        let errs = ControlConfig::from_yaml_str(
            &format!(
                "{base}delivery: {{timeout: 0s, max_concurrency: 0, max_concurrency_per_org: 0}}\n"
            ),
            &env,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "delivery.timeout",
                "delivery.max_concurrency",
                "delivery.max_concurrency_per_org"
            ]
        );
        let errs = ControlConfig::from_yaml_str(
            &format!("{base}delivery: {{retry_schedule: [5s, soon]}}\n"),
            &env,
        )
        .unwrap_err();
        assert!(errs[0].message.contains("soon"), "{errs:?}");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = ControlConfig::from_yaml_str(
            "listen_addr: nope\ndatabase: {dsn: \"mysql://x\", max_open_conns: 1, min_conns: 2}\nrecording: {dir: a, url: b}\n",
            &env,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen_addr",
                "database.dsn",
                "database.min_conns",
                "recording"
            ]
        );
        let errs = ControlConfig::from_yaml_str(
            "listen_addr: \"${UNSET_VAR}\"\ndatabase: {dsn: \"sqlite::memory:\"}\n",
            &env,
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "listen_addr");
        assert!(errs[0].message.contains("UNSET_VAR"));
    }
}
