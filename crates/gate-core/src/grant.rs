//! What a just-in-time grant covers.
//!
//! An access request may carry scopes that narrow the grant it becomes: `{}` covers
//! everything on the resource; `{"operation": "read"}` only reading statements on a
//! database; `{"operation": "tool", "target": "customer_lookup"}` one MCP tool (and
//! `resource` / `prompt` likewise), which also narrows what the MCP listings return.
//! Targets are glob patterns (`customer_*`). A person may hold several grants on one
//! resource; each request is allowed when any of them covers it.

use serde_json::Value;

use crate::facts::QueryType;
use crate::glob::glob_match;

/// One grant's scope. `None` fields cover everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantScope {
    /// `read`, `tool`, `resource` or `prompt`; `None` = any operation.
    pub operation: Option<String>,
    /// A glob over the tool/resource/prompt name; `None` = any.
    pub target: Option<String>,
}

/// The operations a scope may name.
pub const SCOPE_OPERATIONS: [&str; 4] = ["read", "tool", "resource", "prompt"];

impl GrantScope {
    /// The scope of `{}` (everything).
    pub fn everything() -> GrantScope {
        GrantScope::default()
    }

    /// Reads a scopes object as the control plane stores it. Unknown keys or operations
    /// are refused: a scope that was meant to narrow access must never widen it by being
    /// misread.
    pub fn from_json(v: &Value) -> Result<GrantScope, String> {
        let obj = match v {
            Value::Null => return Ok(GrantScope::everything()),
            Value::Object(o) => o,
            _ => return Err("scopes must be a JSON object".into()),
        };
        let mut scope = GrantScope::default();
        for (key, value) in obj {
            let text = value
                .as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("scopes.{key} must be a non-empty string"))?;
            match key.as_str() {
                "operation" => {
                    if !SCOPE_OPERATIONS.contains(&text) {
                        return Err(format!(
                            "scopes.operation {text:?} is not one of {}",
                            SCOPE_OPERATIONS.join(", ")
                        ));
                    }
                    scope.operation = Some(text.to_string());
                }
                "target" => scope.target = Some(text.to_string()),
                other => return Err(format!("unknown scope key {other:?}")),
            }
        }
        if scope.target.is_some() && scope.operation.as_deref().is_none_or(|op| op == "read") {
            return Err("scopes.target needs operation tool, resource or prompt".into());
        }
        Ok(scope)
    }

    pub fn is_everything(&self) -> bool {
        self.operation.is_none() && self.target.is_none()
    }

    /// Whether this scope covers a SQL statement of type `t`. A `read` scope covers
    /// `select` and statements that are neither reads nor writes of data (`SET`, `BEGIN`,
    /// `SHOW`, `EXPLAIN`: class `other`); anything that writes, changes schema, copies or
    /// could not be parsed is outside it. MCP-only scopes cover no SQL.
    pub fn covers_query(&self, t: QueryType) -> bool {
        match self.operation.as_deref() {
            None => true,
            Some("read") => matches!(t, QueryType::Select | QueryType::Other),
            Some(_) => false,
        }
    }

    /// Whether this scope covers an MCP item: `kind` is `tool`, `resource` or `prompt`.
    pub fn covers_item(&self, kind: &str, name: &str) -> bool {
        match self.operation.as_deref() {
            None => true,
            Some(op) if op == kind => self.target.as_deref().is_none_or(|t| glob_match(t, name)),
            Some(_) => false,
        }
    }

    /// A short description for messages: `everything`, `read`, `tool customer_*`.
    pub fn describe(&self) -> String {
        match (&self.operation, &self.target) {
            (None, _) => "everything".into(),
            (Some(op), None) => op.clone(),
            (Some(op), Some(t)) => format!("{op} {t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parsing_refuses_what_it_cannot_honour() {
        assert!(GrantScope::from_json(&json!({})).unwrap().is_everything());
        assert!(GrantScope::from_json(&Value::Null).unwrap().is_everything());
        let read = GrantScope::from_json(&json!({"operation": "read"})).unwrap();
        assert_eq!(read.operation.as_deref(), Some("read"));
        assert!(GrantScope::from_json(&json!({"operation": "write"})).is_err());
        assert!(GrantScope::from_json(&json!({"operation": "read", "tables": "x"})).is_err());
        assert!(GrantScope::from_json(&json!({"operation": 1})).is_err());
        assert!(GrantScope::from_json(&json!({"target": "x"})).is_err());
        assert!(GrantScope::from_json(&json!({"operation": "read", "target": "x"})).is_err());
        assert!(GrantScope::from_json(&json!(["read"])).is_err());
    }

    #[test]
    fn read_covers_reads_only() {
        let read = GrantScope::from_json(&json!({"operation": "read"})).unwrap();
        assert!(read.covers_query(QueryType::Select));
        assert!(read.covers_query(QueryType::Other));
        for t in [
            QueryType::Insert,
            QueryType::Update,
            QueryType::Delete,
            QueryType::Drop,
            QueryType::Copy,
            QueryType::Unknown,
        ] {
            assert!(!read.covers_query(t), "{t:?}");
        }
        assert!(GrantScope::everything().covers_query(QueryType::Drop));
    }

    #[test]
    fn mcp_scopes_match_kind_and_target() {
        let tool =
            GrantScope::from_json(&json!({"operation": "tool", "target": "customer_*"})).unwrap();
        assert!(tool.covers_item("tool", "customer_lookup"));
        assert!(!tool.covers_item("tool", "delete_customer"));
        assert!(!tool.covers_item("prompt", "customer_lookup"));
        assert!(!tool.covers_query(QueryType::Select));
        let any_tool = GrantScope::from_json(&json!({"operation": "tool"})).unwrap();
        assert!(any_tool.covers_item("tool", "anything"));
        assert_eq!(tool.describe(), "tool customer_*");
    }
}
