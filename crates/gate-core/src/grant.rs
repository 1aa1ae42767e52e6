//! What a just-in-time grant covers.
//!
//! An access request may carry scopes that narrow the grant it becomes: `{}` covers
//! everything on the resource; `{"operation": "read"}` only reading statements on a
//! database; `{"operation": "tool", "target": "customer_lookup"}` one MCP tool (and
//! `resource` / `prompt` likewise), which also narrows what the MCP listings return.
//! Targets are glob patterns (`customer_*`). A person may hold several grants on one
//! resource; each request is allowed when any of them covers it.

use serde_json::Value;

use crate::facts::{QueryFacts, QueryType};
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

    /// Whether this scope covers a SQL statement. A `read` scope covers `select` and, of
    /// the statements in class `other`, only those known not to change anything:
    /// transaction control, `SHOW`, `SET`/`RESET` of settings (not of the role or session
    /// authorization), `EXPLAIN` without `ANALYZE`, cursor `FETCH`/`CLOSE`, `DEALLOCATE`,
    /// and MySQL's `USE`/`DESCRIBE`. `CALL`, `EXECUTE`, `LOCK`, `DO` and anything that
    /// writes, changes schema, copies or could not be parsed are outside it.
    ///
    /// A `SELECT` can still call a function with side effects (`setval`, `dblink_exec`);
    /// for a hard guarantee, pair read grants with a read-only database role. MCP-only
    /// scopes cover no SQL.
    pub fn covers_query(&self, facts: &QueryFacts) -> bool {
        match self.operation.as_deref() {
            None => true,
            Some("read") => match facts.query_type {
                QueryType::Select => true,
                QueryType::Other => changes_nothing(&facts.statement),
                _ => false,
            },
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

/// The first words of a statement, upper-cased, after leading comments and parentheses.
fn leading_words(statement: &str, n: usize) -> Vec<String> {
    let mut rest = statement;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Whether a statement of class `other` is one that changes no data, schema, role or
/// lock (see [`GrantScope::covers_query`]). Unknown means no.
fn changes_nothing(statement: &str) -> bool {
    let words = leading_words(statement, 4);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
        | "SHOW" | "FETCH" | "CLOSE" | "DEALLOCATE" | "USE" | "DESCRIBE" | "DESC" => true,
        "SET" | "RESET" => {
            // `SET [SESSION|LOCAL] ROLE …`, `SET SESSION AUTHORIZATION …`, `RESET ROLE`,
            // `RESET ALL` (which resets the role too) change who the session acts as;
            // MySQL's `SET GLOBAL`/`PERSIST` (and `@@global.x`) change the whole server.
            let target = match word(1) {
                "SESSION" | "LOCAL" => word(2),
                other => other,
            };
            !matches!(
                target,
                "ROLE"
                    | "AUTHORIZATION"
                    | "ALL"
                    | "SESSION"
                    | "GLOBAL"
                    | "PERSIST"
                    | "PERSIST_ONLY"
            )
        }
        "EXPLAIN" => {
            // EXPLAIN ANALYZE runs the statement.
            let upper = statement.to_ascii_uppercase();
            !upper.contains("ANALYZE") && !upper.contains("ANALYSE")
        }
        _ => false,
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

    fn q(t: QueryType, statement: &str) -> QueryFacts {
        QueryFacts {
            query_type: t,
            statement: statement.into(),
            tables: Vec::new(),
        }
    }

    #[test]
    fn read_covers_reads_only() {
        let read = GrantScope::from_json(&json!({"operation": "read"})).unwrap();
        assert!(read.covers_query(&q(QueryType::Select, "SELECT 1")));
        for t in [
            QueryType::Insert,
            QueryType::Update,
            QueryType::Delete,
            QueryType::Drop,
            QueryType::Copy,
            QueryType::Unknown,
        ] {
            assert!(!read.covers_query(&q(t, "whatever")), "{t:?}");
        }
        assert!(GrantScope::everything().covers_query(&q(QueryType::Drop, "DROP TABLE t")));
    }

    #[test]
    fn read_covers_only_the_harmless_other_statements() {
        let read = GrantScope::from_json(&json!({"operation": "read"})).unwrap();
        for ok in [
            "BEGIN",
            "start transaction read only",
            "COMMIT",
            "rollback",
            "SAVEPOINT a",
            "SHOW search_path",
            "SET statement_timeout = 0",
            "set local work_mem = '64MB'",
            "SET NAMES utf8mb4",
            "RESET statement_timeout",
            "EXPLAIN SELECT 1",
            "  /* hint */ -- note\n SHOW ALL",
            "FETCH 10 FROM c",
            "DEALLOCATE p1",
            "USE appdb",
            "DESCRIBE users",
        ] {
            assert!(read.covers_query(&q(QueryType::Other, ok)), "{ok}");
        }
        for refused in [
            "CALL archive_everything()",
            "EXECUTE p1",
            "LOCK TABLE users",
            "DO $$ BEGIN DELETE FROM users; END $$",
            "SET ROLE admin",
            "SET SESSION ROLE admin",
            "set local role admin",
            "SET SESSION AUTHORIZATION postgres",
            "SET GLOBAL max_connections = 1",
            "SET @@global.read_only = 0",
            "SET PERSIST x = 1",
            "RESET ROLE",
            "RESET ALL",
            "EXPLAIN ANALYZE DELETE FROM users",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
            "VACUUM users",
            "LISTEN x",
            "",
            "/* unterminated",
        ] {
            assert!(
                !read.covers_query(&q(QueryType::Other, refused)),
                "{refused}"
            );
        }
    }

    #[test]
    fn mcp_scopes_match_kind_and_target() {
        let tool =
            GrantScope::from_json(&json!({"operation": "tool", "target": "customer_*"})).unwrap();
        assert!(tool.covers_item("tool", "customer_lookup"));
        assert!(!tool.covers_item("tool", "delete_customer"));
        assert!(!tool.covers_item("prompt", "customer_lookup"));
        assert!(!tool.covers_query(&q(QueryType::Select, "SELECT 1")));
        let any_tool = GrantScope::from_json(&json!({"operation": "tool"})).unwrap();
        assert!(any_tool.covers_item("tool", "anything"));
        assert_eq!(tool.describe(), "tool customer_*");
    }
}
