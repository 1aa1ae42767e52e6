//! What connectors call (gate.v1.ConnectorService): register with a single-use token,
//! heartbeat, fetch or watch their org's configuration, ship audit, register recordings,
//! deregister.
//!
//! Callers are connector credentials, or org keys with role `connector` for the calls that
//! do not need to know *which* connector is calling (config and audit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gate_store::{ConfigSnapshot, Heartbeat, IngestResult, OrgId, RedeemError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::error::{ServiceError, ServiceResult};
use crate::events::{Event, EventKind};
use crate::{Caller, Control};

/// Largest audit batch accepted in one call; connectors send smaller ones.
pub const MAX_AUDIT_BATCH: usize = 10_000;
/// How often a watch re-checks that its connector is still registered.
const REVALIDATE_EVERY: Duration = Duration::from_secs(30);

/// What a connector gets for its registration token.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub connector_id: Uuid,
    pub org_id: OrgId,
    /// The connector's own bearer credential, shown once.
    pub credential: String,
}

/// Where a finished recording is and how to verify it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingIndex {
    pub key: String,
    pub session_id: String,
    pub kind: String,
    pub resource: String,
    pub protocol: String,
    pub identity: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub size: u64,
    pub sha256: String,
}

/// Redeems a registration token. Unknown, expired and used tokens are all "unauthenticated"
/// with the reason: the token was the credential and it is not valid.
pub async fn register(ctl: &Control, token: &str, version: &str) -> ServiceResult<Registered> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ServiceError::unauthenticated(
            "registration token is required",
        ));
    }
    let (connector, credential) = ctl
        .store()
        .redeem_registration_token(token, version)
        .await
        .map_err(|e| match e {
            RedeemError::Store(e) => store_error(e),
            other => ServiceError::unauthenticated(other.to_string()),
        })?;
    let caller = Caller {
        org_id: Some(connector.org_id),
        principal: crate::Principal::Connector { id: connector.id },
        actor: format!("connector:{}", connector.name),
    };
    record_change(
        ctl,
        &caller,
        connector.org_id,
        "connector.register",
        &connector.id.to_string(),
        json!({"connector_id": connector.id, "name": connector.name, "version": version}),
    )
    .await;
    Ok(Registered {
        connector_id: connector.id,
        org_id: connector.org_id,
        credential,
    })
}

fn own_connector(caller: &Caller) -> ServiceResult<(OrgId, Uuid)> {
    match caller.require_connector()? {
        (org, Some(id)) => Ok((org, id)),
        (_, None) => Err(ServiceError::denied(
            "this call needs a connector credential (from Register), not an API key",
        )),
    }
}

/// Records liveness and load; returns the org's current config revision so a connector
/// that missed a watch update knows to fetch.
pub async fn heartbeat(ctl: &Control, caller: &Caller, hb: Heartbeat) -> ServiceResult<i64> {
    let (org, id) = own_connector(caller)?;
    ctl.store()
        .heartbeat(org, id, &hb)
        .await
        .map_err(store_error)?;
    ctl.store().revision(org).await.map_err(store_error)
}

pub async fn get_config(ctl: &Control, caller: &Caller) -> ServiceResult<ConfigSnapshot> {
    let (org, _) = caller.require_connector()?;
    ctl.store().snapshot(org).await.map_err(store_error)
}

/// The current snapshot, then a new one whenever the org's revision changes: at once for
/// changes made through this process, within [`Control::watch_poll`] for changes made
/// through another control plane on the same database. The stream ends when the client
/// goes away, the process shuts down, or the connector is deregistered (with
/// `Unauthenticated`). `known_revision` is the revision the connector already holds; the
/// first snapshot is sent regardless, so a reconnecting connector always resynchronizes.
pub async fn watch_config(
    ctl: Arc<Control>,
    caller: &Caller,
    known_revision: i64,
) -> ServiceResult<ReceiverStream<ServiceResult<ConfigSnapshot>>> {
    let (org, connector) = caller.require_connector()?;
    let first = ctl.store().snapshot(org).await.map_err(store_error)?;
    tracing::debug!(%org, known_revision, revision = first.revision, "config watch started");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut last = first.revision;
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut changes = ctl.subscribe_changes();
        let mut shutdown = ctl.subscribe_shutdown();
        let mut tick = tokio::time::interval(ctl.watch_poll());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut validated = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            if let Some(id) = connector
                && validated.elapsed() >= REVALIDATE_EVERY
            {
                validated = Instant::now();
                let gone = match ctl.store().get_connector(org, id).await {
                    Ok(c) => c.deregistered_at.is_some(),
                    Err(gate_store::StoreError::NotFound { .. }) => true,
                    Err(_) => false,
                };
                if gone {
                    let _ = tx
                        .send(Err(ServiceError::unauthenticated(
                            "connector was deregistered",
                        )))
                        .await;
                    return;
                }
            }
            match ctl.store().revision(org).await {
                Ok(rev) if rev == last => {}
                Ok(_) => match ctl.store().snapshot(org).await {
                    Ok(s) => {
                        last = s.revision;
                        if tx.send(Ok(s)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(store_error(e))).await;
                        return;
                    }
                },
                // A store hiccup: keep the stream and try again at the next tick.
                Err(e) => tracing::warn!(%org, error = %e, "config watch: revision check failed"),
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Stores a batch of audit events (JSON objects with an `id`), at-least-once: an event
/// shipped again counts as a duplicate, not twice. A malformed event refuses the whole
/// batch, so a connector never believes a partly stored batch was delivered.
pub async fn ship_audit(
    ctl: &Control,
    caller: &Caller,
    events: &[String],
) -> ServiceResult<IngestResult> {
    let (org, connector) = caller.require_connector()?;
    if events.len() > MAX_AUDIT_BATCH {
        return Err(ServiceError::invalid(format!(
            "at most {MAX_AUDIT_BATCH} events per batch"
        )));
    }
    let mut parsed = Vec::with_capacity(events.len());
    for (i, text) in events.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ServiceError::invalid(format!("event {i}: not JSON: {e}")))?;
        if !v.get("id").is_some_and(|id| id.is_string()) {
            return Err(ServiceError::invalid(format!(
                "event {i}: an object with a string `id` is required"
            )));
        }
        parsed.push(v);
    }
    let n = parsed.len() as i64;
    ctl.metrics().audit_backlog.add(n);
    let result = ctl
        .store()
        .ingest_audit_new_ids(org, connector, &parsed)
        .await;
    ctl.metrics().audit_backlog.sub(n);
    let (result, new_ids) = result.map_err(store_error)?;
    ctl.metrics()
        .audit_ingested(result.inserted, result.duplicates);
    // Sessions and blocks become events once: only for events stored now, not duplicates.
    if !new_ids.is_empty() {
        let new_ids: std::collections::HashSet<Uuid> = new_ids.into_iter().collect();
        for event in &parsed {
            let is_new = event
                .get("id")
                .and_then(|id| id.as_str())
                .and_then(|id| Uuid::parse_str(id).ok())
                .is_some_and(|id| new_ids.contains(&id));
            if is_new && let Some(e) = audit_to_event(org, connector, event) {
                ctl.publish(e);
            }
        }
    }
    Ok(result)
}

/// The integration event an audit event stands for, if any: `session_start` →
/// `session.started`, `session_end` → `session.ended`, an enforced `policy_decision` that
/// blocked → `policy.blocked`. The data is compact and secret-free: who, where, from
/// where, why — not the statement (it may hold literals; it stays in the audit log, found
/// by `audit_event_id`).
pub fn audit_to_event(
    org: OrgId,
    connector: Option<Uuid>,
    event: &serde_json::Value,
) -> Option<Event> {
    let text = |key: &str| event.get(key).and_then(|v| v.as_str());
    let kind = match text("kind")? {
        "session_start" => EventKind::SessionStarted,
        "session_end" => EventKind::SessionEnded,
        "policy_decision"
            if text("action") == Some("block")
                && !event
                    .get("dry_run")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false) =>
        {
            EventKind::PolicyBlocked
        }
        _ => return None,
    };
    let identity = event.get("identity");
    let field = |v: Option<&serde_json::Value>, key: &str| {
        v.and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut data = json!({
        "org_id": org,
        "audit_event_id": text("id"),
        "session_id": text("session_id"),
        "identity": field(identity, "name"),
        "subject": field(identity, "sub"),
        "resource": text("resource"),
        "protocol": text("protocol"),
        "client_addr": text("client_addr"),
        "connector_id": connector,
        "time": text("time"),
    });
    if let Some(email) = field(identity, "email") {
        data["email"] = json!(email);
    }
    match kind {
        EventKind::SessionEnded => {
            data["reason"] = json!(text("reason"));
            // The session's counters (queries, blocked, errors …): numbers only.
            if let Some(details) = event.get("details").and_then(|d| d.as_object()) {
                let summary: serde_json::Map<String, serde_json::Value> = details
                    .iter()
                    .filter(|(_, v)| v.is_number())
                    .take(32)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                data["summary"] = serde_json::Value::Object(summary);
            }
        }
        EventKind::PolicyBlocked => {
            data["stage"] = json!(text("stage"));
            data["reason"] = json!(text("reason"));
            data["query_type"] = json!(text("query_type"));
        }
        _ => {}
    }
    let mut e = Event::new(org, kind, data);
    if let Some(at) = text("time").and_then(gate_store::time::parse_rfc3339_ms) {
        e.at_ms = at;
    }
    Some(e)
}

/// A clean shutdown: the connector shows as disconnected at once. Its credential keeps
/// working, so the next start reconnects without a new registration token; retiring a
/// connector for good is an admin's `DELETE /connectors/{id}`.
pub async fn deregister(ctl: &Control, caller: &Caller) -> ServiceResult<()> {
    let (org, id) = own_connector(caller)?;
    ctl.store()
        .mark_connector_offline(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "connector.deregister",
        &id.to_string(),
        json!({"connector_id": id}),
    )
    .await;
    Ok(())
}

/// Records where a finished recording is. The index is kept in the org's append-only audit
/// log as a `recording` event whose id is derived from the connector and the object key,
/// so a retried registration is a duplicate rather than a second entry.
pub async fn register_recording(
    ctl: &Control,
    caller: &Caller,
    index: RecordingIndex,
) -> ServiceResult<Uuid> {
    let (org, id) = own_connector(caller)?;
    if index.key.trim().is_empty() {
        return Err(ServiceError::invalid("recording key is required"));
    }
    if !index.sha256.is_empty()
        && (index.sha256.len() != 64 || !index.sha256.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ServiceError::invalid(
            "recording sha256 must be 64 hex digits",
        ));
    }
    let digest = Sha256::digest(format!("{org}/{id}/{}", index.key).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let event_id = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    let mut event = json!({
        "id": event_id,
        "time": gate_store::time::format_rfc3339_ms(gate_store::time::now_ms()),
        "kind": "recording",
        "resource": index.resource,
        "protocol": index.protocol,
        "details": {
            "key": index.key,
            "kind": index.kind,
            "size": index.size,
            "sha256": index.sha256,
            "started_at": index.started_at,
            "ended_at": index.ended_at,
        },
    });
    if !index.session_id.is_empty() {
        event["session_id"] = json!(index.session_id);
    }
    if !index.identity.is_empty() {
        event["identity"] = json!({"sub": index.identity, "name": index.identity});
    }
    ctl.store()
        .ingest_audit(org, Some(id), &[event])
        .await
        .map_err(store_error)?;
    Ok(event_id)
}
