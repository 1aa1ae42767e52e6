//! The `slack:` section of `control.yaml`.
//!
//! ```yaml
//! slack:
//!   bot_token: "${SLACK_BOT_TOKEN}"            # xoxb-…
//!   signing_secret: "${SLACK_SIGNING_SECRET}"
//!   default_approval_channel: "C0123456789"
//!   org_approval_channels: {acme: "C0ACME"}    # org name or org id → channel
//!   resource_approval_channels: {prod-db: "C0PROD"}
//!   requester_mappings: {alice: "U0ALICE"}     # identity → Slack user id (DMs)
//!   approver_mappings: {U0BOB: bob}            # Slack user id → identity (clicks)
//!   user_mappings: {U0CAROL: carol}            # Slack user id → identity (clicks)
//! ```
//!
//! See `docs/slack-jit-approvals.md` for every key.

use std::collections::BTreeMap;
use std::time::Duration;

use gate_core::config::ConfigError;
use serde::{Deserialize, Deserializer};

use crate::config::SecretString;

/// Slack's Web API.
pub const DEFAULT_API_BASE_URL: &str = "https://slack.com/api";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// `false` turns the integration off without removing the section.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The bot token (`xoxb-…`) Web API calls are made with.
    #[serde(default)]
    pub bot_token: SecretString,
    /// The app's signing secret: interaction requests are accepted only when signed with it.
    #[serde(default)]
    pub signing_secret: SecretString,
    /// Where the Web API is (tests point it at a local fake).
    #[serde(default = "default_api_base_url")]
    pub api_base_url: String,
    /// Where requests go when neither their resource nor their org names a channel.
    #[serde(default)]
    pub default_approval_channel: Option<String>,
    /// Organization name (or id) → channel.
    #[serde(default)]
    pub org_approval_channels: BTreeMap<String, String>,
    /// Resource name → channel; wins over the org's channel and the default.
    #[serde(default)]
    pub resource_approval_channels: BTreeMap<String, String>,
    /// Identity name → Slack user id, for direct messages to requesters.
    #[serde(default)]
    pub requester_mappings: BTreeMap<String, String>,
    /// Slack user id → identity name of approvers; checked before `user_mappings`.
    #[serde(default)]
    pub approver_mappings: BTreeMap<String, String>,
    /// Slack user id → identity name (anyone who clicks).
    #[serde(default)]
    pub user_mappings: BTreeMap<String, String>,
    /// Map an unmapped clicker by the email of their Slack profile (`users.info`) to the
    /// identity with that email. On by default.
    #[serde(default = "yes")]
    pub match_email: bool,
    /// How long one Web API call may take.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// How many events may wait for the Slack worker; more are dropped (and logged).
    #[serde(default = "default_queue_size", deserialize_with = "number")]
    pub queue_size: u64,
    #[serde(default)]
    pub retry: SlackRetryConfig,
}

/// How a failed Web API call is retried: exponential backoff from `initial_backoff`,
/// doubling up to `max_backoff`, at most `max_attempts` tries in all. A `Retry-After`
/// from Slack (HTTP 429) replaces the computed wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackRetryConfig {
    #[serde(default = "default_max_attempts", deserialize_with = "number")]
    pub max_attempts: u64,
    #[serde(default = "default_initial_backoff", deserialize_with = "duration")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for SlackRetryConfig {
    fn default() -> Self {
        SlackRetryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_api_base_url() -> String {
    DEFAULT_API_BASE_URL.to_string()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue_size() -> u64 {
    1000
}
fn default_max_attempts() -> u64 {
    12
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(120)
}

/// Numbers may arrive as strings after `${ENV}` expansion.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}

/// A humantime duration (`500ms`, `10s`, `2m`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

/// Slack ids (users, channels) are short tokens without spaces.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl SlackConfig {
    /// Semantic checks, every problem reported with its path (`slack.…`).
    pub fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |path: String, message: String| {
            errors.push(ConfigError {
                path: format!("slack.{path}"),
                message,
            })
        };
        if !self.enabled {
            return;
        }
        if self.bot_token.expose().trim().is_empty() {
            err(
                "bot_token".into(),
                "required: the app's bot token (xoxb-…)".into(),
            );
        }
        if self.signing_secret.expose().trim().is_empty() {
            err(
                "signing_secret".into(),
                "required: the app's signing secret (Basic Information → App Credentials)".into(),
            );
        }
        match reqwest::Url::parse(&self.api_base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => err(
                "api_base_url".into(),
                "expected an http:// or https:// URL".into(),
            ),
            Err(e) => err("api_base_url".into(), format!("not a URL: {e}")),
        }
        if let Some(c) = &self.default_approval_channel
            && !is_token(c)
        {
            err(
                "default_approval_channel".into(),
                format!("{c:?} is not a channel id or name"),
            );
        }
        if self.default_approval_channel.is_none()
            && self.org_approval_channels.is_empty()
            && self.resource_approval_channels.is_empty()
        {
            err(
                "default_approval_channel".into(),
                "no approval channel: set default_approval_channel, org_approval_channels or \
                 resource_approval_channels"
                    .into(),
            );
        }
        for (section, map, key_is_user, value_is_user) in [
            (
                "org_approval_channels",
                &self.org_approval_channels,
                false,
                false,
            ),
            (
                "resource_approval_channels",
                &self.resource_approval_channels,
                false,
                false,
            ),
            ("requester_mappings", &self.requester_mappings, false, true),
            ("approver_mappings", &self.approver_mappings, true, false),
            ("user_mappings", &self.user_mappings, true, false),
        ] {
            for (key, value) in map {
                if key.trim().is_empty() {
                    err(section.to_string(), "a key is empty".into());
                    continue;
                }
                if key_is_user && !looks_like_user_id(key) {
                    err(
                        format!("{section}.{key}"),
                        "keys are Slack user ids (U… or W…)".into(),
                    );
                }
                if value_is_user && !looks_like_user_id(value) {
                    err(
                        format!("{section}.{key}"),
                        format!("{value:?} is not a Slack user id (U… or W…)"),
                    );
                } else if !is_token(value) {
                    err(
                        format!("{section}.{key}"),
                        format!("{value:?} is empty or has spaces"),
                    );
                }
            }
        }
        if self.request_timeout.is_zero() {
            err("request_timeout".into(), "must be greater than 0".into());
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            err("queue_size".into(), "must be between 1 and 1000000".into());
        }
        if !(1..=1000).contains(&self.retry.max_attempts) {
            err(
                "retry.max_attempts".into(),
                "must be between 1 and 1000".into(),
            );
        }
        if self.retry.initial_backoff.is_zero() {
            err(
                "retry.initial_backoff".into(),
                "must be greater than 0".into(),
            );
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            err(
                "retry.max_backoff".into(),
                "must not be shorter than retry.initial_backoff".into(),
            );
        }
    }
}

/// Whether `s` looks like a Slack user id: `U` or `W` followed by upper-case letters and
/// digits (`U0123ABCD`, `W012A3CDE`).
pub fn looks_like_user_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('U' | 'W'))
        && s.len() >= 3
        && s.len() <= 40
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> SlackConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_secrets() {
        let c = parse("bot_token: xoxb-1\nsigning_secret: s3cr3t\ndefault_approval_channel: C1\n");
        let mut errors = Vec::new();
        c.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(c.api_base_url, DEFAULT_API_BASE_URL);
        assert!(c.enabled && c.match_email);
        assert_eq!(c.queue_size, 1000);
        assert_eq!(c.retry.max_attempts, 12);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        let debug = format!("{c:?}");
        assert!(!debug.contains("xoxb-1") && !debug.contains("s3cr3t"));
    }

    #[test]
    fn every_problem_is_reported() {
        let c = parse(
            r#"
bot_token: ""
api_base_url: "ftp://x"
approver_mappings: {bob: U1BOB}
requester_mappings: {alice: "not a user"}
queue_size: "0"
retry: {max_attempts: 0, initial_backoff: 2s, max_backoff: 1s}
"#,
        );
        let mut errors = Vec::new();
        c.validate(&mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "slack.bot_token",
                "slack.signing_secret",
                "slack.api_base_url",
                "slack.default_approval_channel",
                "slack.requester_mappings.alice",
                "slack.approver_mappings.bob",
                "slack.queue_size",
                "slack.retry.max_attempts",
                "slack.retry.max_backoff",
            ]
        );
        assert!(yaml_serde::from_str::<SlackConfig>("bot_tokn: x\n").is_err());
    }

    #[test]
    fn in_control_yaml_with_env() {
        let env = |name: &str| match name {
            "SLACK_BOT_TOKEN" => Some("xoxb-from-env".to_string()),
            "SLACK_SIGNING_SECRET" => Some("secret-from-env".to_string()),
            "QUEUE" => Some("50".to_string()),
            _ => None,
        };
        let base = "listen_addr: \"127.0.0.1:0\"\ndatabase: {dsn: \"sqlite::memory:\"}\n";
        let c = crate::config::ControlConfig::from_yaml_str(
            &format!(
                "{base}slack:\n  bot_token: \"${{SLACK_BOT_TOKEN}}\"\n  signing_secret: \"${{SLACK_SIGNING_SECRET}}\"\n  default_approval_channel: C1\n  queue_size: ${{QUEUE}}\n  retry: {{initial_backoff: 250ms}}\n"
            ),
            &env,
        )
        .unwrap();
        let slack = c.slack.as_ref().unwrap();
        assert_eq!(slack.bot_token.expose(), "xoxb-from-env");
        assert_eq!(slack.signing_secret.expose(), "secret-from-env");
        assert_eq!(slack.queue_size, 50);
        assert_eq!(slack.retry.initial_backoff, Duration::from_millis(250));
        assert!(!format!("{c:?}").contains("from-env"));
        let errs = crate::config::ControlConfig::from_yaml_str(
            &format!("{base}slack: {{bot_token: x}}\n"),
            &env,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["slack.signing_secret", "slack.default_approval_channel"]
        );
        let errs = crate::config::ControlConfig::from_yaml_str(
            &format!("{base}slack: {{bot_token: x, nope: 1}}\n"),
            &env,
        )
        .unwrap_err();
        assert!(errs[0].path.starts_with("slack"), "{errs:?}");
        // Without the section there is no Slack.
        let c = crate::config::ControlConfig::from_yaml_str(base, &env).unwrap();
        assert!(c.slack.is_none());
    }

    #[test]
    fn user_ids() {
        assert!(looks_like_user_id("U0123ABCD"));
        assert!(looks_like_user_id("W012A3CDE"));
        assert!(!looks_like_user_id("alice"));
        assert!(!looks_like_user_id("U"));
        assert!(!looks_like_user_id("Ualice"));
        assert!(!looks_like_user_id("C0123ABCD"));
    }
}
