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
    /// Appends the event as one JSON line, newline included: the bytes `serde_json` writes
    /// for it, field by field. The audit log writes one per audited statement, where serde's
    /// generic path was a measurable share of Gate's CPU; a test checks the two agree.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        use crate::json::{write_key_str, write_key_value as value};
        fn uuid(out: &mut Vec<u8>, key: &[u8], id: &Uuid) {
            out.extend_from_slice(key);
            out.push(b'"');
            out.extend_from_slice(
                id.hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            );
            out.push(b'"');
        }
        fn text(out: &mut Vec<u8>, key: &[u8], s: Option<&str>) {
            if let Some(s) = s {
                write_key_str(out, key, s);
            }
        }
        // Every field named: one added to `AuditEvent` fails to compile here until written.
        let AuditEvent {
            id,
            time,
            kind,
            session_id,
            identity,
            presented_user,
            resource,
            protocol,
            client_addr,
            stage,
            action,
            reason,
            statement,
            query_type,
            dry_run,
            details,
        } = self;
        uuid(out, b"{\"id\":", id);
        out.extend_from_slice(b",\"time\":");
        crate::time::write_json_rfc3339(out, *time);
        value(out, b",\"kind\":", kind);
        if let Some(s) = session_id {
            uuid(out, b",\"session_id\":", s);
        }
        if let Some(i) = identity {
            let AuditIdentity { sub, name, email } = &**i;
            text(out, b",\"identity\":{\"sub\":", Some(sub));
            text(out, b",\"name\":", Some(name));
            text(out, b",\"email\":", email.as_deref());
            out.push(b'}');
        }
        text(out, b",\"presented_user\":", presented_user.as_deref());
        text(out, b",\"resource\":", resource.as_deref());
        text(out, b",\"protocol\":", protocol.as_deref());
        text(out, b",\"client_addr\":", client_addr.as_deref());
        if let Some(s) = stage {
            value(out, b",\"stage\":", s);
        }
        if let Some(a) = action {
            value(out, b",\"action\":", a);
        }
        text(out, b",\"reason\":", reason.as_deref());
        text(out, b",\"statement\":", statement.as_deref());
        text(out, b",\"query_type\":", query_type.as_deref());
        if *dry_run {
            out.extend_from_slice(b",\"dry_run\":true");
        }
        if !details.is_null() {
            value(out, b",\"details\":", details);
        }
        out.extend_from_slice(b"}\n");
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_lines_are_the_bytes_serde_json_writes() {
        let minimal = AuditEvent::new(AuditKind::AuthFailure);
        let full = AuditEvent {
            session_id: Some(Uuid::now_v7()),
            identity: Some(Arc::new(AuditIdentity {
                sub: "alice|\"1\"".into(),
                name: "Alice Ž.".into(),
                email: Some("alice@example.com".into()),
            })),
            presented_user: Some("al\\ice\n".into()),
            resource: Some("primary-db".into()),
            protocol: Some("postgres".into()),
            client_addr: Some("127.0.0.1:5000".into()),
            stage: Some(Stage::PreRequest),
            action: Some(Action::Block),
            reason: Some("dropping \"tables\"\tis not allowed".into()),
            statement: Some("DROP TABLE users; -- 🐎\u{1}".into()),
            query_type: Some("drop".into()),
            dry_run: true,
            details: serde_json::json!({"queries": 3, "nested": {"a": [1.5, null, "x\ny"]}}),
            ..AuditEvent::new(AuditKind::PolicyDecision)
        };
        let no_email = AuditEvent {
            identity: Some(Arc::new(AuditIdentity {
                sub: "bob".into(),
                name: "bob".into(),
                email: None,
            })),
            stage: Some(Stage::Session),
            action: Some(Action::Allow),
            ..AuditEvent::new(AuditKind::SessionStart)
        };
        for event in [minimal, full, no_email] {
            let mut direct = Vec::new();
            event.write_json_line(&mut direct);
            let mut expected = serde_json::to_vec(&event).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&expected)
            );
            let back: AuditEvent = serde_json::from_slice(&direct).unwrap();
            assert_eq!(back.id, event.id);
        }
    }
}
