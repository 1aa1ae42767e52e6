//! Signed webhooks, per [Standard Webhooks](https://www.standardwebhooks.com/): every event
//! published on the [`Control`] is queued (durably, in the store) for each enabled endpoint
//! of its org whose filter matches, and a background worker POSTs it, signed, retrying with
//! backoff, until the receiver answers 2xx — or dead-letters it.
//!
//! - [`signing`]: the signature (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`),
//!   with both secrets during a rotation's grace period.
//! - [`WebhookSink`]: the [`EventSink`]; its `accept` is one store write per event, then it
//!   wakes the worker.
//! - [`worker`]: claims due deliveries, sends them (bounded concurrency overall and per
//!   org, a timeout per request), records each attempt, disables an endpoint that answers
//!   410 Gone and writes dead deliveries to `delivery.dead_letter_dir` (owner-only files).
//! - [`target`]: where webhooks may go — public addresses only unless
//!   `delivery.allow_private_targets`, checked at create/update and again at connect time.
//! - [`http`]: the `/api/v1/webhooks` routes over [`crate::service::webhooks`].
//!
//! The request body is the event's payload (`{type, timestamp, data}`), serialized once
//! when the event is queued and sent byte for byte on every attempt; `webhook-id` is the
//! event's id on every attempt and redelivery, so receivers deduplicate on it.
//!
//! Secrets and URLs (which may carry credentials) are never logged: log lines name the
//! endpoint and delivery ids. See `docs/webhook-signatures.md`.

pub mod http;
pub mod signing;
pub mod target;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Control;
use crate::config::DeliveryConfig;
use crate::events::{Event, EventKind, EventSink};

/// Whether an endpoint's filter entry selects `kind`: `*` selects every event, `<prefix>.*`
/// every event whose type starts with `<prefix>.`, anything else the one type it names.
pub fn filter_matches(filter: &str, kind: EventKind) -> bool {
    let name = kind.as_str();
    if filter == "*" {
        return true;
    }
    match filter.strip_suffix(".*") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => filter == name,
    }
}

/// Whether an endpoint with `filters` wants `kind`.
pub fn wants(filters: &[String], kind: EventKind) -> bool {
    filters.iter().any(|f| filter_matches(f, kind))
}

/// The wait before the attempt after `attempts_made` failed ones, or `None` when the
/// schedule is exhausted (the delivery is dead). `attempts_made` counts the attempt that
/// just failed: the first failure (1) waits `schedule[0]`.
pub fn retry_after(schedule: &[Duration], attempts_made: i64) -> Option<Duration> {
    let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
    schedule.get(index).copied()
}

/// A URL fit for logs and audit: scheme, host, port and path — no user info, no query (both
/// may carry a receiver's credentials).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut out = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
            if let Some(port) = u.port() {
                out.push_str(&format!(":{port}"));
            }
            out.push_str(u.path());
            if u.query().is_some() {
                out.push_str("?…");
            }
            out
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

/// The [`EventSink`] of webhooks: queues each event for the endpoints that want it.
pub struct WebhookSink {
    wake: Arc<Notify>,
}

/// How often `accept` tries to queue an event before giving up (and logging it).
const ENQUEUE_TRIES: u32 = 3;

impl WebhookSink {
    async fn enqueue(&self, ctl: &Control, event: &Event) {
        let org = event.org_id;
        for attempt in 1..=ENQUEUE_TRIES {
            let result = async {
                let endpoints = ctl.store().list_webhook_endpoints(org).await?;
                let ids: Vec<Uuid> = endpoints
                    .iter()
                    .filter(|e| !e.disabled && wants(&e.events, event.kind))
                    .map(|e| e.id)
                    .collect();
                if ids.is_empty() {
                    return Ok(0);
                }
                let body = event.payload().to_string();
                ctl.store()
                    .enqueue_webhook_deliveries(org, &ids, &event.id, event.kind.as_str(), &body)
                    .await
            }
            .await;
            match result {
                Ok(0) => return,
                Ok(queued) => {
                    tracing::debug!(%org, event = %event.id, kind = %event.kind, queued, "webhook deliveries queued");
                    self.wake.notify_one();
                    return;
                }
                Err(gate_store::StoreError::Invalid(e)) => {
                    tracing::error!(%org, event = %event.id, kind = %event.kind, error = %e, "webhook event refused");
                    return;
                }
                Err(e) if attempt < ENQUEUE_TRIES => {
                    tracing::warn!(%org, event = %event.id, attempt, error = %e, "cannot queue webhook deliveries; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::error!(%org, event = %event.id, kind = %event.kind, error = %e, "webhook deliveries NOT queued: the store failed");
                }
            }
        }
    }
}

impl EventSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn accept<'a>(&'a self, ctl: &'a Control, event: &'a Arc<Event>) -> BoxFuture<'a, ()> {
        Box::pin(self.enqueue(ctl, event))
    }
}

/// Registers the webhook sink on `ctl` and starts the delivery worker, which stops at
/// shutdown (after the attempts in flight finish, or a short drain time).
pub fn start(ctl: Arc<Control>, cfg: &DeliveryConfig) -> anyhow::Result<JoinHandle<()>> {
    target::set_allow_private(&ctl, cfg.allow_private_targets);
    if cfg.allow_private_targets {
        tracing::warn!(
            "delivery.allow_private_targets is on: org admins may point webhooks at loopback, private and link-local addresses"
        );
    }
    let wake = Arc::new(Notify::new());
    let worker = worker::Worker::new(ctl.clone(), cfg.clone(), wake.clone())?;
    ctl.add_event_sink(Arc::new(WebhookSink { wake }));
    Ok(tokio::spawn(worker.run()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_by_name_and_prefix() {
        assert!(filter_matches("*", EventKind::PolicyBlocked));
        assert!(filter_matches("access.*", EventKind::AccessApproved));
        assert!(!filter_matches("access.*", EventKind::SessionStarted));
        assert!(filter_matches("session.*", EventKind::SessionEnded));
        assert!(filter_matches("access.denied", EventKind::AccessDenied));
        assert!(!filter_matches("access.denied", EventKind::AccessApproved));
        // A prefix matches whole segments only.
        assert!(!filter_matches("acc.*", EventKind::AccessApproved));
        assert!(!filter_matches("access", EventKind::AccessApproved));
        let filters = vec!["access.approved".to_string(), "policy.*".to_string()];
        assert!(wants(&filters, EventKind::PolicyBlocked));
        assert!(!wants(&filters, EventKind::AccessCancelled));
    }

    #[test]
    fn backoff_follows_the_schedule_then_stops() {
        let schedule = [
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
        ];
        assert_eq!(retry_after(&schedule, 1), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(&schedule, 2), Some(Duration::from_secs(300)));
        assert_eq!(retry_after(&schedule, 3), Some(Duration::from_secs(1800)));
        // Four attempts made (one plus three retries): dead.
        assert_eq!(retry_after(&schedule, 4), None);
        assert_eq!(retry_after(&schedule, 0), None);
        assert_eq!(retry_after(&schedule, -1), None);
        assert_eq!(retry_after(&[], 1), None);
        // The default schedule: eight attempts over about 28 hours.
        let default = crate::config::DeliveryConfig::default().retry_schedule;
        let total: Duration = (1..=8).filter_map(|n| retry_after(&default, n)).sum();
        assert_eq!(
            total,
            Duration::from_secs(5 + 300 + 1800 + 7200 + 18_000 + 72_000)
        );
        assert_eq!(retry_after(&default, 8), None);
    }

    #[test]
    fn urls_lose_credentials_in_logs() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example:8443/in/gate?token=abc"),
            "https://hooks.example:8443/in/gate?…"
        );
        assert_eq!(redact_url("http://127.0.0.1/x"), "http://127.0.0.1/x");
        assert_eq!(redact_url("not a url"), "<invalid url>");
    }
}
