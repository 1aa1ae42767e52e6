//! Events: what happened, told to the integrations that act on it.
//!
//! The service layer publishes an [`Event`] after every access-request transition (and
//! the connector audit intake publishes session and policy-block events). Integrations —
//! signed webhooks, Slack approvals — register as [`EventSink`]s on the [`Control`] at
//! start.
//!
//! Publishing is a synchronous push onto a queue, done right after the change commits:
//! no `.await` separates the two, so a request cancelled by its client disconnecting
//! cannot commit a change and lose its event. One dispatcher task ([`spawn_dispatch`])
//! hands events to the sinks in publication order; a sink's `accept` only *takes* the
//! event (persists it for delivery, or queues it), and network calls happen later in the
//! sink's own tasks, so a slow or absent receiver never slows anything down.
//!
//! The event's `data` is the payload integrations send: the same object for a webhook
//! body and for anything else that renders the event, built once here.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use gate_store::time::{format_rfc3339_ms, now_ms};
use gate_store::{AccessRequest, AccessStatus, OrgId};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Control;

/// What happened. The names are the webhook event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    AccessRequested,
    AccessApproved,
    AccessDenied,
    AccessExpired,
    AccessRevoked,
    AccessCancelled,
    SessionStarted,
    SessionEnded,
    PolicyBlocked,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::AccessRequested,
        EventKind::AccessApproved,
        EventKind::AccessDenied,
        EventKind::AccessExpired,
        EventKind::AccessRevoked,
        EventKind::AccessCancelled,
        EventKind::SessionStarted,
        EventKind::SessionEnded,
        EventKind::PolicyBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AccessRequested => "access.requested",
            EventKind::AccessApproved => "access.approved",
            EventKind::AccessDenied => "access.denied",
            EventKind::AccessExpired => "access.expired",
            EventKind::AccessRevoked => "access.revoked",
            EventKind::AccessCancelled => "access.cancelled",
            EventKind::SessionStarted => "session.started",
            EventKind::SessionEnded => "session.ended",
            EventKind::PolicyBlocked => "policy.blocked",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether this is about an access request (its `data` describes the request).
    pub fn is_access(self) -> bool {
        self.as_str().starts_with("access.")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened in an org.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique per event (`evt_<uuid v7>`): receivers deduplicate on it, so a redelivery
    /// carries the same id.
    pub id: String,
    pub org_id: OrgId,
    pub kind: EventKind,
    /// When it happened, unix milliseconds.
    pub at_ms: i64,
    /// The payload's `data` object.
    pub data: Value,
    /// For access events, the request as it is after the transition.
    pub access_request: Option<AccessRequest>,
}

impl Event {
    /// An event with a fresh id, happening now.
    pub fn new(org_id: OrgId, kind: EventKind, data: Value) -> Event {
        Event {
            id: format!("evt_{}", Uuid::now_v7().simple()),
            org_id,
            kind,
            at_ms: now_ms(),
            data,
            access_request: None,
        }
    }

    /// An access-request transition. `resource_id` is the resource's id when it still
    /// exists (requests name resources, which may have been deleted since).
    pub fn access(
        kind: EventKind,
        org_id: OrgId,
        r: &AccessRequest,
        resource_id: Option<Uuid>,
    ) -> Event {
        let mut event = Event::new(org_id, kind, access_data(org_id, r, resource_id));
        event.access_request = Some(r.clone());
        event
    }

    /// The whole payload: `{type, timestamp, data}` (the Standard Webhooks shape).
    pub fn payload(&self) -> Value {
        json!({
            "type": self.kind.as_str(),
            "timestamp": format_rfc3339_ms(self.at_ms),
            "data": self.data,
        })
    }
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(format_rfc3339_ms(ms)))
}

/// The `data` of an access event. Who decided is named by the decision's own word
/// (`approved_by`, `denied_by`, …) so receivers need not interpret `status` first.
fn access_data(org_id: OrgId, r: &AccessRequest, resource_id: Option<Uuid>) -> Value {
    let mut data = json!({
        "id": r.id,
        "org_id": org_id,
        "requester": r.requester,
        "subject": r.requester,
        "resource": r.resource,
        "resource_id": resource_id,
        "reason": r.reason,
        "duration_s": r.requested_duration_s,
        "status": r.status,
        "scopes": r.scopes,
        "created_at": time(Some(r.created_at)),
        "pending_expires_at": time(Some(r.pending_expires_at)),
    });
    let decided = |data: &mut Value, by_key: &str| {
        data[by_key] = json!(r.decided_by);
        data["decided_at"] = time(r.decided_at);
        if let Some(reason) = &r.decision_reason {
            data["decision_reason"] = json!(reason);
        }
    };
    match r.status {
        AccessStatus::Pending => {}
        AccessStatus::Approved => {
            decided(&mut data, "approved_by");
            data["expires_at"] = time(r.expires_at);
        }
        AccessStatus::Denied => decided(&mut data, "denied_by"),
        AccessStatus::Cancelled => decided(&mut data, "cancelled_by"),
        AccessStatus::Expired => {
            data["expired_at"] = time(r.decided_at.or(r.expires_at));
            if let Some(by) = &r.decided_by {
                data["approved_by"] = json!(by);
                data["expires_at"] = time(r.expires_at);
            }
        }
        AccessStatus::Revoked => {
            data["approved_by"] = json!(r.decided_by);
            data["expires_at"] = time(r.expires_at);
            data["revoked_by"] = json!(r.revoked_by);
            data["revoked_at"] = time(r.revoked_at);
            if let Some(reason) = &r.revoke_reason {
                data["revoke_reason"] = json!(reason);
            }
        }
    }
    data
}

/// Something that acts on events: webhooks, Slack. `accept` takes the event — persisting
/// or queueing it — and returns; delivery happens in the sink's own tasks.
pub trait EventSink: Send + Sync + 'static {
    /// For logs.
    fn name(&self) -> &'static str;

    fn accept<'a>(&'a self, ctl: &'a Control, event: &'a Arc<Event>) -> BoxFuture<'a, ()>;
}

/// Events published and not yet dispatched.
///
/// Unbounded, deliberately: each event stands for a change already committed to the store
/// (an API call or an audit batch), so the producers are throttled by the database, and a
/// full queue could only lose an event or make a committed change wait on integrations.
/// The dispatcher's work per event is one store write at most.
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<Event>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn push(&self, event: Event) {
        // The receiver lives as long as the `Control`; a send fails only after the
        // dispatcher has ended (shutdown), when there is nobody left to deliver to.
        if let Err(e) = self.tx.send(event) {
            tracing::warn!(event = %e.0.id, kind = %e.0.kind, "event published after shutdown; not dispatched");
        }
    }

    fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The running dispatcher (see [`spawn_dispatch`]).
pub struct Dispatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Dispatch {
    /// Dispatches what is queued, refuses anything published later, and returns when
    /// done. Call it once nothing publishes any more (listener and background jobs
    /// stopped) and before the store closes.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the dispatcher: it hands each published event to every registered sink, in
/// publication order, until [`Dispatch::finish`]. Only the first call per `Control` gets
/// the queue; a second one dispatches nothing.
pub fn spawn_dispatch(ctl: Arc<Control>) -> Dispatch {
    let rx = ctl.events.take_receiver();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let Some(mut rx) = rx else { return };
        loop {
            let event = tokio::select! {
                biased;
                event = rx.recv() => match event {
                    Some(e) => e,
                    None => return,
                },
                _ = &mut stopped => {
                    rx.close();
                    while let Some(event) = rx.recv().await {
                        dispatch(&ctl, event).await;
                    }
                    return;
                }
            };
            dispatch(&ctl, event).await;
        }
    });
    Dispatch { stop, task }
}

async fn dispatch(ctl: &Control, mut event: Event) {
    enrich(ctl, &mut event).await;
    let event = Arc::new(event);
    for sink in ctl.sinks.all() {
        sink.accept(ctl, &event).await;
    }
}

/// Fills in what the publisher could not know without an `.await`: the id of the resource
/// an access request names (resources are named in requests and may be gone since).
async fn enrich(ctl: &Control, event: &mut Event) {
    if !event.kind.is_access() || !event.data["resource_id"].is_null() {
        return;
    }
    let Some(name) = event.data["resource"].as_str() else {
        return;
    };
    if let Ok(resource) = ctl.store().get_resource_by_name(event.org_id, name).await {
        event.data["resource_id"] = json!(resource.id);
    }
}

/// The registered sinks, in registration order.
#[derive(Default)]
pub(crate) struct Sinks(std::sync::RwLock<Vec<Arc<dyn EventSink>>>);

impl Sinks {
    pub(crate) fn add(&self, sink: Arc<dyn EventSink>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).push(sink);
    }

    pub(crate) fn all(&self) -> Vec<Arc<dyn EventSink>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: AccessStatus) -> AccessRequest {
        AccessRequest {
            id: Uuid::now_v7(),
            org_id: OrgId::new(),
            requester: "alice".into(),
            resource: "primary-db".into(),
            reason: "incident 42".into(),
            requested_duration_s: 3600,
            scopes: json!({"operation": "read"}),
            status,
            created_at: 1_700_000_000_000,
            decided_at: Some(1_700_000_060_000),
            decided_by: Some("bob".into()),
            decision_reason: Some("ok".into()),
            expires_at: Some(1_700_003_660_000),
            pending_expires_at: 1_700_003_600_000,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("access.nope"), None);
        assert!(EventKind::AccessRevoked.is_access());
        assert!(!EventKind::SessionStarted.is_access());
    }

    #[test]
    fn access_payloads_name_the_decider_by_role() {
        let org = OrgId::new();
        let approved = Event::access(
            EventKind::AccessApproved,
            org,
            &request(AccessStatus::Approved),
            None,
        );
        assert!(approved.id.starts_with("evt_"));
        let data = &approved.data;
        assert_eq!(data["approved_by"], "bob");
        assert_eq!(data["expires_at"], "2023-11-14T23:14:20.000000Z");
        assert_eq!(data["duration_s"], 3600);
        assert_eq!(data["scopes"]["operation"], "read");
        assert!(data.get("denied_by").is_none());
        let denied = Event::access(
            EventKind::AccessDenied,
            org,
            &request(AccessStatus::Denied),
            None,
        );
        assert_eq!(denied.data["denied_by"], "bob");
        assert!(denied.data.get("approved_by").is_none());
        assert!(denied.data.get("expires_at").is_none());
        let payload = approved.payload();
        assert_eq!(payload["type"], "access.approved");
        assert_eq!(payload["data"]["requester"], "alice");
    }
}
