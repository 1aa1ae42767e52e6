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
    /// The statement text as the client sent it. Shared: the audit event and the recording
    /// of every execution refer to this text rather than copying it.
    pub statement: std::sync::Arc<str>,
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
    Ssh(SshFacts),
}

impl RequestFacts {
    /// The text recorded and audited for this request.
    pub fn statement(&self) -> &str {
        match self {
            RequestFacts::Query(q) => &q.statement,
            RequestFacts::Ssh(s) => s.command.as_deref().unwrap_or(s.channel.as_str()),
        }
    }

    /// [`RequestFacts::statement`] as shared text for the audit event and the recording
    /// (a SQL statement's own text, not a copy).
    pub fn shared_statement(&self) -> std::sync::Arc<str> {
        match self {
            RequestFacts::Query(q) => q.statement.clone(),
            RequestFacts::Ssh(_) => self.statement().into(),
        }
    }

    /// The request's kind for audit and recordings (`select`, `exec`, `subsystem`, …);
    /// borrowed where the kind is one Gate names itself.
    pub fn kind(&self) -> std::borrow::Cow<'static, str> {
        match self {
            RequestFacts::Query(q) => q.query_type.as_str().into(),
            RequestFacts::Ssh(s) => s.channel.clone().into(),
        }
    }
}

/// An SSH session or channel request as policy sees it (`input.ssh`).
///
/// At the `session` stage only the connection fields are set; each `pre_request` adds the
/// channel and, for exec/subsystem/forwarding, what it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshFacts {
    /// The SSH user name as the client sent it (`alice%prod-web`, or `alice` on a
    /// resource's own listener).
    pub user: String,
    /// The account Gate logs in as upstream.
    pub upstream_user: String,
    pub resource: String,
    pub client_addr: String,
    /// `session` at open; then `shell`, `exec`, `subsystem`, `direct-tcpip`,
    /// `tcpip-forward`, `x11`.
    pub channel: String,
    /// The exec command line, the subsystem name, or `host:port` for forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}
