//! Audit events: the append-only record of who did what, and what Gate decided.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;

use crate::decision::{Action, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    SessionStart,
    SessionEnd,
    AuthFailure,
    PolicyDecision,
    /// An operator ended a live session (`reason` says who and why).
    SessionTerminated,
    /// A recording was finalised; `details` is its index (id, object key, size, SHA-256).
    /// Shipped to the control plane like any event, which lists recordings from these.
    Recording,
}

/// Who an event is about. Never contains a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditIdentity {
    pub sub: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// One audit event. `id` is unique (UUIDv7, time-ordered) so a receiver can deduplicate
/// at-least-once deliveries.
///
/// What stays the same for a whole session (identity, resource, client address) is shared
/// (`Arc`), and names Gate knows in advance (protocol, query type) are borrowed, so the event
/// audited for each statement costs no copies of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    #[serde(with = "crate::time::serde_rfc3339")]
    pub time: SystemTime,
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Arc<AuditIdentity>>,
    /// The user name the client presented (useful on auth failures, where no identity exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request text (statement), for policy decisions. Bind parameters are never included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_type: Option<Cow<'static, str>>,
    /// `true` when the decision came from a dry-run policy and was not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Free-form extra facts (session summary counters, error details).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new event of `kind`, stamped now with a fresh id; fill the rest with struct update.
    pub fn new(kind: AuditKind) -> Self {
        AuditEvent {
            id: Uuid::now_v7(),
            time: SystemTime::now(),
            kind,
            session_id: None,
            identity: None,
            presented_user: None,
            resource: None,
            protocol: None,
            client_addr: None,
            stage: None,
            action: None,
            reason: None,
            statement: None,
            query_type: None,
            dry_run: false,
            details: serde_json::Value::Null,
        }
    }
}
