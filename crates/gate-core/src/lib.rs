//! Shared vocabulary of Gate: who is calling ([`Identity`]), what they reach
//! ([`config::ResourceConfig`]), what they ask for ([`facts`]), what policy says about it
//! ([`Decision`]) and what gets written down ([`AuditEvent`]).
//!
//! Everything here is protocol-neutral and cheap to depend on: no networking, no Rego,
//! no SQL parser. Every other crate depends on this one; this one depends on no Gate crate.

pub mod audit;
pub mod config;
pub mod decision;
pub mod facts;
pub mod glob;
pub mod grant;
pub mod identity;
pub mod json;
pub mod secret;
pub mod time;

pub use audit::{AuditEvent, AuditKind};
pub use decision::{Action, Decision, MaskRule, MaskStrategy, Stage};
pub use facts::{ColumnFacts, QueryFacts, QueryType, RequestFacts, SshFacts};
pub use grant::GrantScope;
pub use identity::Identity;

/// The protocols Gate speaks. The string form is what configs and policies use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    Mongodb,
    Ssh,
    Http,
    Mcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Mongodb => "mongodb",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Mcp => "mcp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
