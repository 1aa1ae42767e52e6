//! Conversions between the store's domain types and the gRPC messages of `gate.v1`.
//!
//! Field names and units are the same on both sides (times are unix milliseconds, lists
//! are lists), so the HTTP API (which serializes the domain types) and the gRPC API show
//! the same values. Free-form JSON travels as text in proto and is parsed here, with the
//! same error a malformed HTTP body would get.

use gate_proto::v1 as pb;
use gate_store as st;

use crate::error::{ServiceError, ServiceResult};
use crate::service::connector_api::RecordingIndex;

fn opt_ms(v: Option<i64>) -> i64 {
    v.unwrap_or(0)
}

/// Parses a JSON object field; empty text is `{}`.
pub fn json_object(field: &str, text: &str) -> ServiceResult<serde_json::Value> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ServiceError::invalid(format!("{field}: invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ServiceError::invalid(format!(
            "{field} must be a JSON object"
        )));
    }
    Ok(v)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn org(o: st::Org) -> pb::Organization {
    pb::Organization {
        id: o.id.to_string(),
        name: o.name,
        created_at: o.created_at,
    }
}

pub fn api_key(k: st::ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.to_string(),
        org_id: k.org_id.to_string(),
        name: k.name,
        role: k.role.as_str().to_string(),
        prefix: k.prefix,
        created_at: k.created_at,
        last_used_at: opt_ms(k.last_used_at),
        revoked_at: opt_ms(k.revoked_at),
    }
}

pub fn resource(r: st::Resource) -> pb::Resource {
    pb::Resource {
        id: r.id.to_string(),
        org_id: r.org_id.to_string(),
        name: r.name,
        protocol: r.protocol,
        host: r.host,
        port: u32::from(r.port),
        database: r.database.unwrap_or_default(),
        spec_json: r.spec.to_string(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub fn resource_input(r: Option<pb::ResourceInput>) -> ServiceResult<st::ResourceInput> {
    let r = r.ok_or_else(|| ServiceError::invalid("resource is required"))?;
    let port = u16::try_from(r.port)
        .map_err(|_| ServiceError::invalid("resource port must be 1-65535"))?;
    Ok(st::ResourceInput {
        name: r.name,
        protocol: r.protocol,
        host: r.host,
        port,
        database: non_empty(r.database),
        spec: json_object("spec_json", &r.spec_json)?,
    })
}

pub fn policy(p: st::Policy) -> pb::Policy {
    pb::Policy {
        id: p.id.to_string(),
        org_id: p.org_id.to_string(),
        name: p.name,
        description: p.description,
        stages: p.stages,
        targets: p.targets,
        state: p.state.as_str().to_string(),
        version: p.version,
        rego: p.rego,
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

pub fn policy_version(v: st::PolicyVersion) -> pb::PolicyVersion {
    pb::PolicyVersion {
        policy_id: v.policy_id.to_string(),
        version: v.version,
        rego: v.rego,
        stages: v.stages,
        targets: v.targets,
        state: v.state.as_str().to_string(),
        created_at: v.created_at,
        created_by: v.created_by,
    }
}

pub fn policy_update(r: pb::UpdatePolicyRequest) -> st::PolicyUpdate {
    st::PolicyUpdate {
        name: r.name,
        description: r.description,
        stages: r.set_stages.then_some(r.stages),
        targets: r.set_targets.then_some(r.targets),
        rego: r.rego,
    }
}

pub fn identity(i: st::Identity) -> pb::Identity {
    pb::Identity {
        id: i.id.to_string(),
        org_id: i.org_id.to_string(),
        name: i.name,
        email: i.email.unwrap_or_default(),
        groups: i.groups,
        ssh_public_keys: i.ssh_public_keys,
        token_sha256: i.token_sha256.unwrap_or_default(),
        disabled: i.disabled,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

pub fn identity_input(i: Option<pb::IdentityInput>) -> ServiceResult<st::IdentityInput> {
    let i = i.ok_or_else(|| ServiceError::invalid("identity is required"))?;
    Ok(st::IdentityInput {
        name: i.name,
        email: non_empty(i.email),
        groups: i.groups,
        ssh_public_keys: i.ssh_public_keys,
        token_sha256: non_empty(i.token_sha256),
        disabled: i.disabled,
    })
}

pub fn group(g: st::Group) -> pb::Group {
    pb::Group {
        id: g.id.to_string(),
        org_id: g.org_id.to_string(),
        name: g.name,
        description: g.description,
        created_at: g.created_at,
    }
}

pub fn connector(c: st::ConnectorInfo) -> pb::Connector {
    let st::ConnectorInfo { connector, status } = c;
    let status = match status {
        st::ConnectorStatus::Connected => "connected",
        st::ConnectorStatus::Stale => "stale",
        st::ConnectorStatus::Disconnected => "disconnected",
    };
    pb::Connector {
        id: connector.id.to_string(),
        org_id: connector.org_id.to_string(),
        name: connector.name,
        version: connector.version,
        status: status.to_string(),
        registered_at: connector.registered_at,
        last_heartbeat_at: opt_ms(connector.last_heartbeat_at),
        uptime_s: connector.uptime_s,
        active_sessions: connector.active_sessions,
        resources_served: connector.resources_served,
        deregistered_at: opt_ms(connector.deregistered_at),
    }
}

pub fn registration_token(t: st::RegistrationToken) -> pb::RegistrationToken {
    pb::RegistrationToken {
        id: t.id.to_string(),
        org_id: t.org_id.to_string(),
        name: t.name,
        created_at: t.created_at,
        expires_at: t.expires_at,
        used_at: opt_ms(t.used_at),
    }
}

pub fn snapshot(s: st::ConfigSnapshot) -> pb::ConfigSnapshot {
    pb::ConfigSnapshot {
        org_id: s.org_id.to_string(),
        revision: s.revision,
        resources: s.resources.into_iter().map(resource).collect(),
        policies: s.policies.into_iter().map(policy).collect(),
        identities: s.identities.into_iter().map(identity).collect(),
        groups: s.groups.into_iter().map(group).collect(),
        grants: s.grants.into_iter().map(access_request).collect(),
    }
}

pub fn audit_record(r: st::AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        id: r.id.to_string(),
        org_id: r.org_id.to_string(),
        time: r.time,
        kind: r.kind,
        identity: r.identity.unwrap_or_default(),
        resource: r.resource.unwrap_or_default(),
        action: r.action.unwrap_or_default(),
        protocol: r.protocol.unwrap_or_default(),
        session_id: r.session_id.unwrap_or_default(),
        connector_id: r.connector_id.map(|c| c.to_string()).unwrap_or_default(),
        received_at: r.received_at,
        event_json: r.event.to_string(),
    }
}

pub fn audit_filter(q: Option<pb::AuditQuery>) -> crate::service::audit::AuditFilter {
    let q = q.unwrap_or_default();
    crate::service::audit::AuditFilter {
        from: non_empty(q.from),
        to: non_empty(q.to),
        identity: non_empty(q.identity),
        resource: non_empty(q.resource),
        action: non_empty(q.action),
        kind: non_empty(q.kind),
        session_id: non_empty(q.session_id),
        limit: (q.limit > 0).then_some(q.limit),
        cursor: non_empty(q.cursor),
    }
}

pub fn recording_index(r: Option<pb::RecordingIndex>) -> ServiceResult<RecordingIndex> {
    let r = r.ok_or_else(|| ServiceError::invalid("recording is required"))?;
    Ok(RecordingIndex {
        key: r.key,
        session_id: r.session_id,
        kind: r.kind,
        resource: r.resource,
        protocol: r.protocol,
        identity: r.identity,
        started_at: r.started_at,
        ended_at: r.ended_at,
        size: r.size,
        sha256: r.sha256,
    })
}

pub fn access_request(r: st::AccessRequest) -> pb::AccessRequest {
    pb::AccessRequest {
        id: r.id.to_string(),
        org_id: r.org_id.to_string(),
        requester: r.requester,
        resource: r.resource,
        reason: r.reason,
        requested_duration_s: r.requested_duration_s,
        status: r.status.to_string(),
        decided_by: r.decided_by.unwrap_or_default(),
        decided_at: opt_ms(r.decided_at),
        created_at: r.created_at,
        scopes_json: r.scopes.to_string(),
        decision_reason: r.decision_reason.unwrap_or_default(),
        expires_at: opt_ms(r.expires_at),
        pending_expires_at: r.pending_expires_at,
        revoked_at: opt_ms(r.revoked_at),
        revoked_by: r.revoked_by.unwrap_or_default(),
        revoke_reason: r.revoke_reason.unwrap_or_default(),
    }
}

pub fn access_request_input(
    m: pb::CreateAccessRequestRequest,
) -> ServiceResult<st::AccessRequestInput> {
    Ok(st::AccessRequestInput {
        scopes: json_object("scopes_json", &m.scopes_json)?,
        requester: m.requester,
        resource: m.resource,
        reason: m.reason,
        requested_duration_s: m.requested_duration_s,
    })
}

pub fn access_filter(
    m: pb::ListAccessRequestsRequest,
) -> ServiceResult<crate::service::access_requests::ListFilter> {
    Ok(crate::service::access_requests::ListFilter {
        mine: non_empty(m.mine),
        status: non_empty(m.status)
            .map(|s| s.parse::<st::AccessStatus>())
            .transpose()
            .map_err(ServiceError::invalid)?,
        resource: non_empty(m.resource),
        to_approve: non_empty(m.to_approve),
    })
}

pub fn decision(
    m: pb::DecideAccessRequestRequest,
) -> (String, crate::service::access_requests::Decision) {
    (
        m.id,
        crate::service::access_requests::Decision {
            approver: m.approver,
            reason: m.reason,
        },
    )
}

pub fn approval_rules_in(text: &str) -> ServiceResult<st::ApprovalRules> {
    serde_json::from_str(text).map_err(|e| ServiceError::invalid(format!("rules_json: {e}")))
}

pub fn approval_rules(r: &st::ApprovalRules) -> pb::ApprovalRules {
    pb::ApprovalRules {
        rules_json: serde_json::to_string(r).unwrap_or_default(),
    }
}
