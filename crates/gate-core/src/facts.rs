//! Request facts: the protocol-neutral description of what a client asks for.
//!
//! Handlers build these from the wire; the pipeline hands them to policy as `input.*`.
//! Field names are part of the policy contract (`input.query.type`, `input.query.tables`, …),
//! so renaming one breaks users' policies.

use serde::{Deserialize, Serialize};

/// The statement class of a SQL request (`input.query.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryType {
    Select,
    Insert,
    Update,
    Delete,
    Drop,
    Create,
    Alter,
    Truncate,
    Grant,
    Copy,
    /// Parsed, but none of the above (SET, BEGIN, SHOW, …).
    Other,
    /// The parser could not read it; the raw text still goes through policy.
    Unknown,
}

impl QueryType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryType::Select => "select",
            QueryType::Insert => "insert",
            QueryType::Update => "update",
            QueryType::Delete => "delete",
            QueryType::Drop => "drop",
            QueryType::Create => "create",
            QueryType::Alter => "alter",
            QueryType::Truncate => "truncate",
            QueryType::Grant => "grant",
            QueryType::Copy => "copy",
            QueryType::Other => "other",
            QueryType::Unknown => "unknown",
        }
    }
}

/// One SQL statement as policy sees it (`input.query`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryFacts {
    #[serde(rename = "type")]
    pub query_type: QueryType,
    /// The statement text as the client sent it.
    pub statement: String,
    /// Tables the statement touches, as written (schema-qualified when the client qualified them).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// A result column as policy sees it in `post_request` (`input.columns[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFacts {
    pub name: String,
    /// Source table when the protocol tells it (MySQL column definitions do; Postgres gives an OID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Protocol type name or id, for information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

/// What a single request asks for. One variant per family of protocols; the pipeline
/// serializes the active variant under its own key (`input.query`, later `input.http`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestFacts {
    Query(QueryFacts),
}

impl RequestFacts {
    /// The text recorded and audited for this request.
    pub fn statement(&self) -> &str {
        match self {
            RequestFacts::Query(q) => &q.statement,
        }
    }
}
