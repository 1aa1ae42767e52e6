//! The `slack:` section of `control.yaml`.
//!
//! ```yaml
//! slack:
//!   bot_token: "${SLACK_BOT_TOKEN}"            # xoxb-…
//!   signing_secret: "${SLACK_SIGNING_SECRET}"
//!   default_approval_channel: "C0123456789"
//!   org_approval_channels: {acme: "C0ACME"}    # org name or org id → channel
//!   resource_approval_channels: {prod-db: "C0PROD"}
//!   requester_mappings: {acme/alice: "U0ALICE"}  # org/identity → Slack user id (DMs)
//!   user_mappings: {U0BOB: acme/bob}             # Slack user id → org/identity (clicks)
//! ```
//!
//! See `docs/slack-jit-approvals.md` for every key.
//!
//! # Mappings are per organization
//!
//! Requests of every org may land in the same channel, so a mapping between a Slack user
//! and an identity *name* must say which org's identity it means: identities are always
//! written `<org>/<identity>`, where `<org>` is the org's id (a UUID, matching that org
//! only) or its name (anything else). It applies in that org and nowhere else; a plain
//! `bob` is refused when the configuration is checked. The text is split at the first
//! `/`, so an org whose name has a `/` is written by id.

use std::collections::BTreeMap;
use std::time::Duration;

use gate_core::config::ConfigError;
use gate_core::config::de::{duration, number};
use gate_store::OrgId;
use serde::Deserialize;
use uuid::Uuid;

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
    /// `<org>/<identity>` → Slack user id, for direct messages to requesters.
    #[serde(default)]
    pub requester_mappings: BTreeMap<String, String>,
    /// Slack user id → `<org>/<identity>` (or a list of them, one per org), for clicks.
    #[serde(default)]
    pub user_mappings: BTreeMap<String, Identities>,
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

/// One `<org>/<identity>`, or a list of them (a Slack user who decides in several orgs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Identities {
    One(String),
    Many(Vec<String>),
}

impl Identities {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let list: &[String] = match self {
            Identities::One(one) => std::slice::from_ref(one),
            Identities::Many(many) => many,
        };
        list.iter().map(String::as_str)
    }
}

/// `<org>/<identity>` split at the first `/`, when both parts are there.
pub fn split_qualified(s: &str) -> Option<(&str, &str)> {
    let (org, identity) = s.split_once('/')?;
    (!org.trim().is_empty() && !identity.trim().is_empty()).then_some((org, identity))
}

/// Whether the `<org>` part of a mapping means `org`: a UUID is matched against the org's
/// id only, anything else against its name only (so an org named like another org's id
/// cannot borrow its mappings).
pub fn names_org(qualifier: &str, org: OrgId, org_name: Option<&str>) -> bool {
    match Uuid::parse_str(qualifier) {
        Ok(id) => id == org.0,
        Err(_) => org_name == Some(qualifier),
    }
}

/// A mapping's `<org>/<identity>`, checked: both parts there, and the identity a name the
/// store accepts (no surrounding whitespace, no control characters, at most 200
/// characters).
fn check_qualified(value: &str) -> Result<(&str, &str), String> {
    let Some((org, identity)) = split_qualified(value) else {
        let example = if value.contains('/') {
            "bob"
        } else {
            value.trim()
        };
        return Err(format!(
            "{value:?} does not say which organization's identity it is: write \
             \"<org name or id>/<identity>\", e.g. \"acme/{example}\" (requests of every \
             org may reach the same channel, so a mapping applies in its own org only)"
        ));
    };
    if org.trim() != org {
        return Err(format!(
            "the organization {org:?} has surrounding whitespace"
        ));
    }
    let problem = if identity.trim() != identity {
        "has surrounding whitespace"
    } else if identity.chars().any(char::is_control) {
        "has control characters"
    } else if identity.chars().count() > 200 {
        "is longer than 200 characters"
    } else {
        return Ok((org, identity));
    };
    Err(format!("the identity {identity:?} {problem}"))
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
        for (section, map) in [
            ("org_approval_channels", &self.org_approval_channels),
            (
                "resource_approval_channels",
                &self.resource_approval_channels,
            ),
        ] {
            for (key, value) in map {
                if key.trim().is_empty() {
                    err(section.to_string(), "a key is empty".into());
                } else if !is_token(value) {
                    err(
                        format!("{section}.{key}"),
                        format!("{value:?} is empty or has spaces"),
                    );
                }
            }
        }
        for (key, user) in &self.requester_mappings {
            let path = format!("requester_mappings.{key}");
            if let Err(problem) = check_qualified(key) {
                err(path.clone(), problem);
            }
            if !looks_like_user_id(user) {
                err(path, format!("{user:?} is not a Slack user id (U… or W…)"));
            }
        }
        for (user, identities) in &self.user_mappings {
            let path = format!("user_mappings.{user}");
            if !looks_like_user_id(user) {
                err(path.clone(), "keys are Slack user ids (U… or W…)".into());
            }
            if identities.iter().next().is_none() {
                err(path.clone(), "no identity".into());
            }
            let mut orgs: Vec<&str> = Vec::new();
            for value in identities.iter() {
                match check_qualified(value) {
                    Err(problem) => err(path.clone(), problem),
                    Ok((org, _)) if orgs.contains(&org) => err(
                        path.clone(),
                        format!("maps the user twice in organization {org:?}"),
                    ),
                    Ok((org, _)) => orgs.push(org),
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

/// Two mappings of the same Slack user (or identity) in one org that disagree: one by the
/// org's name, one by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

impl SlackConfig {
    /// The identity of `org` that Slack user `user` is, by `user_mappings`: only
    /// mappings qualified with this org's id or name count.
    pub fn mapped_identity(
        &self,
        user: &str,
        org: OrgId,
        org_name: Option<&str>,
    ) -> Result<Option<&str>, Ambiguous> {
        let Some(identities) = self.user_mappings.get(user) else {
            return Ok(None);
        };
        one(identities
            .iter()
            .filter_map(split_qualified)
            .filter(|(q, _)| names_org(q, org, org_name))
            .map(|(_, identity)| identity))
    }

    /// The Slack user that identity `identity` of `org` is, by `requester_mappings`:
    /// only keys qualified with this org's id or name count.
    pub fn mapped_requester(
        &self,
        identity: &str,
        org: OrgId,
        org_name: Option<&str>,
    ) -> Result<Option<&str>, Ambiguous> {
        one(self
            .requester_mappings
            .iter()
            .filter(|(key, _)| {
                split_qualified(key)
                    .is_some_and(|(q, i)| i == identity && names_org(q, org, org_name))
            })
            .map(|(_, user)| user.as_str()))
    }
}

/// The one value found (repeats of the same value are one), or [`Ambiguous`].
fn one<'a>(mut found: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, Ambiguous> {
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if found.any(|other| other != first) {
        return Err(Ambiguous);
    }
    Ok(Some(first))
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
user_mappings: {bob: acme/bob, U0CAROL: carol, U0DAN: [acme/dan, acme/daniel], U0EVE: [acme/ eve]}
requester_mappings: {alice: "not a user", acme/bob: U0BOB}
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
                "slack.requester_mappings.alice",
                "slack.user_mappings.U0CAROL",
                "slack.user_mappings.U0DAN",
                "slack.user_mappings.U0EVE",
                "slack.user_mappings.bob",
                "slack.queue_size",
                "slack.retry.max_attempts",
                "slack.retry.max_backoff",
            ]
        );
        let carol = errors
            .iter()
            .find(|e| e.path == "slack.user_mappings.U0CAROL")
            .unwrap();
        assert!(
            carol.message.contains("\"acme/carol\"") && carol.message.contains("organization"),
            "{carol:?}"
        );
        assert!(yaml_serde::from_str::<SlackConfig>("bot_tokn: x\n").is_err());
        // approver_mappings is gone: user_mappings does what it did.
        assert!(
            yaml_serde::from_str::<SlackConfig>("approver_mappings: {U0BOB: acme/bob}\n").is_err()
        );
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
    fn mappings_apply_in_their_own_org_only() {
        let acme = OrgId::new();
        let globex = OrgId::new();
        let c = parse(&format!(
            r#"
bot_token: x
signing_secret: y
default_approval_channel: C1
user_mappings:
  U0BOB: acme/bob
  U0OPS: [acme/ops, "{globex}/operator", a/b/c]
  U0TWO: [acme/one, "{acme}/two"]
  U0SAME: [acme/same, "{acme}/same"]
requester_mappings:
  acme/alice: U0ALICE
  "{globex}/alice": U0OTHER
  acme/team/alice: U0SLASH
"#
        ));
        let mut errors = Vec::new();
        c.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let acme_name = Some("acme");
        let globex_name = Some("globex");
        assert_eq!(c.mapped_identity("U0BOB", acme, acme_name), Ok(Some("bob")));
        // Not in another org, even one that has a "bob".
        assert_eq!(c.mapped_identity("U0BOB", globex, globex_name), Ok(None));
        // An org named like acme's id does not get acme's id-qualified mappings.
        let acme_id = acme.to_string();
        assert_eq!(
            c.mapped_identity("U0TWO", OrgId::new(), Some(&acme_id)),
            Ok(None)
        );
        assert_eq!(c.mapped_identity("U0OPS", acme, acme_name), Ok(Some("ops")));
        assert_eq!(
            c.mapped_identity("U0OPS", globex, globex_name),
            Ok(Some("operator"))
        );
        assert_eq!(
            c.mapped_identity("U0OPS", globex, None),
            Ok(Some("operator"))
        );
        assert_eq!(
            c.mapped_identity("U0OPS", OrgId::new(), Some("a")),
            Ok(Some("b/c"))
        );
        assert_eq!(c.mapped_identity("U0BOB", acme, None), Ok(None));
        // By name and by id in the same org, disagreeing: refused; agreeing: fine.
        assert_eq!(c.mapped_identity("U0TWO", acme, acme_name), Err(Ambiguous));
        assert_eq!(c.mapped_identity("U0TWO", acme, None), Ok(Some("two")));
        assert_eq!(
            c.mapped_identity("U0SAME", acme, acme_name),
            Ok(Some("same"))
        );
        assert_eq!(c.mapped_identity("U0NOBODY", acme, acme_name), Ok(None));

        assert_eq!(
            c.mapped_requester("alice", acme, acme_name),
            Ok(Some("U0ALICE"))
        );
        assert_eq!(
            c.mapped_requester("alice", globex, globex_name),
            Ok(Some("U0OTHER"))
        );
        assert_eq!(
            c.mapped_requester("alice", OrgId::new(), Some("initech")),
            Ok(None)
        );
        assert_eq!(
            c.mapped_requester("team/alice", acme, acme_name),
            Ok(Some("U0SLASH"))
        );
        assert_eq!(c.mapped_requester("bob", acme, acme_name), Ok(None));
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
