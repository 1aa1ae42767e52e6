//! What a policy says about a session, a request or a result.

use serde::{Deserialize, Serialize};

/// The three points where policy is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Once, when a session opens (after authentication).
    Session,
    /// Before each request is forwarded (query, command, tool call).
    PreRequest,
    /// Once per result shape (e.g. a row description), to plan masking and filtering.
    PostRequest,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Session, Stage::PreRequest, Stage::PostRequest];

    /// The Rego rule name evaluated for this stage.
    pub fn rule_name(self) -> &'static str {
        match self {
            Stage::Session => "session",
            Stage::PreRequest => "pre_request",
            Stage::PostRequest => "post_request",
        }
    }

    /// Accepted alias rule names (`request` / `response`), checked when the primary is absent.
    pub fn alias_rule_name(self) -> Option<&'static str> {
        match self {
            Stage::Session => None,
            Stage::PreRequest => Some("request"),
            Stage::PostRequest => Some("response"),
        }
    }

    /// Parses a stage name as written in configs: the rule names and their aliases.
    pub fn parse(s: &str) -> Option<Stage> {
        match s {
            "session" => Some(Stage::Session),
            "pre_request" | "request" => Some(Stage::PreRequest),
            "post_request" | "response" => Some(Stage::PostRequest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.rule_name()
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Block,
    Rewrite,
    Mask,
    Filter,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
            Action::Rewrite => "rewrite",
            Action::Mask => "mask",
            Action::Filter => "filter",
        }
    }
}

/// How a masked value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    /// Replace the whole value.
    Redact,
    /// Keep a little of each end, hide the middle.
    Partial,
    /// Keyed, stable hash: equal inputs give equal outputs, so joins and counts still work.
    Hash,
    /// Keep the domain and the first character of the local part.
    Email,
}

impl MaskStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MaskStrategy::Redact => "redact",
            MaskStrategy::Partial => "partial",
            MaskStrategy::Hash => "hash",
            MaskStrategy::Email => "email",
        }
    }
}

/// One column to mask, by (case-insensitive) column name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskRule {
    pub column: String,
    pub strategy: MaskStrategy,
}

/// A policy decision, as returned by a stage rule and combined across policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Decision {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Replacement request text for `rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<MaskRule>,
    /// Row/document filters for `filter`; their shape is protocol-specific.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
    /// Set when the decision came from a `dry_run` policy: audited, not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Decision {
    pub fn allow() -> Self {
        Decision::default()
    }

    pub fn block(reason: impl Into<String>) -> Self {
        Decision {
            action: Action::Block,
            reason: Some(reason.into()),
            ..Decision::default()
        }
    }

    pub fn is_block(&self) -> bool {
        self.action == Action::Block
    }

    /// The reason shown to a client whose request was blocked.
    pub fn block_reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("blocked by policy")
    }

    /// Combines two decisions for the same stage, most restrictive first:
    /// block beats rewrite beats mask/filter beats allow; masks and filters accumulate.
    pub fn combine(self, other: Decision) -> Decision {
        fn rank(a: Action) -> u8 {
            match a {
                Action::Block => 4,
                Action::Rewrite => 3,
                Action::Mask | Action::Filter => 2,
                Action::Allow => 1,
            }
        }
        let (mut winner, loser) = if rank(other.action) > rank(self.action) {
            (other, self)
        } else {
            (self, other)
        };
        if winner.action != Action::Block {
            winner.masks.extend(loser.masks);
            winner.filters.extend(loser.filters);
            if winner.action == Action::Allow && !winner.masks.is_empty() {
                winner.action = Action::Mask;
            }
        }
        winner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(col: &str) -> Decision {
        Decision {
            action: Action::Mask,
            masks: vec![MaskRule {
                column: col.into(),
                strategy: MaskStrategy::Redact,
            }],
            ..Decision::default()
        }
    }

    #[test]
    fn combine_is_most_restrictive_and_accumulates_masks() {
        let d = Decision::allow().combine(mask("a")).combine(mask("b"));
        assert_eq!(d.action, Action::Mask);
        assert_eq!(d.masks.len(), 2);
        let d = d.combine(Decision::block("no"));
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.block_reason(), "no");
        let d = Decision::block("first").combine(Decision::block("second"));
        assert_eq!(d.block_reason(), "first");
    }

    #[test]
    fn stage_names_and_aliases() {
        assert_eq!(Stage::parse("request"), Some(Stage::PreRequest));
        assert_eq!(Stage::parse("response"), Some(Stage::PostRequest));
        assert_eq!(Stage::parse("bogus"), None);
        assert_eq!(Stage::PostRequest.alias_rule_name(), Some("response"));
    }

    #[test]
    fn decision_parses_from_policy_json() {
        let d: Decision = serde_json::from_str(
            r#"{"action":"mask","masks":[{"column":"email","strategy":"partial"}]}"#,
        )
        .unwrap();
        assert_eq!(d.masks[0].strategy, MaskStrategy::Partial);
        assert!(serde_json::from_str::<Decision>(r#"{"action":"explode"}"#).is_err());
    }
}
