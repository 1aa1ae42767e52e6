//! Signed webhooks: an org's endpoints and their deliveries.
//!
//! Endpoints are an admin matter (their secrets sign what Gate tells the outside world, and
//! their URLs decide where it goes): creating, changing, rotating, deleting and redelivering
//! need the admin role; reading needs readonly. A secret is returned by create and rotate
//! only, never by list or get. Every change is an admin audit event (`webhook.*`) naming
//! the endpoint and its URL without user info or query string.
//!
//! Delivery itself is [`crate::webhooks`]' business; this module queues nothing.

use std::time::Duration;

use gate_store::{
    DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEndpointInput, WebhookEndpointUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::events::EventKind;
use crate::webhooks::{filter_matches, redact_url};
use crate::{Caller, Control};

/// How long a replaced secret keeps signing when the rotation names no grace period.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest grace period a rotation may ask for.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Deliveries listed when the call names no limit.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 50;

/// An endpoint with its signing secret: what create and rotate return, once. `Debug`
/// does not print the secret.
#[derive(Clone, Serialize)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: shown now only. Receivers verify with it (Standard Webhooks).
    pub secret: String,
}

impl std::fmt::Debug for EndpointWithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointWithSecret")
            .field("endpoint", &self.endpoint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A rotation's options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the replaced secret keeps signing (`24h`, `30m`, `0s`); default 24h.
    #[serde(default)]
    pub grace_period: Option<String>,
}

/// Filters of a deliveries list call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFilter {
    #[serde(default)]
    pub status: Option<DeliveryStatus>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Receivers are HTTP(S) URLs with a host.
fn check_url(url: &str) -> ServiceResult<reqwest::Url> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| ServiceError::invalid(format!("webhook url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ServiceError::invalid(format!(
            "webhook url must be http:// or https://, not {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ServiceError::invalid("webhook url has no host"));
    }
    if url.trim() != url {
        return Err(ServiceError::invalid(
            "webhook url has surrounding whitespace",
        ));
    }
    Ok(parsed)
}

/// A URL fit to receive webhooks from this control plane: [`check_url`], and unless the
/// operator set `delivery.allow_private_targets`, a public address (see
/// [`crate::webhooks::target`]; each delivery attempt checks again).
async fn check_target(ctl: &Control, url: &str) -> ServiceResult<()> {
    let parsed = check_url(url)?;
    if crate::webhooks::target::allow_private(ctl) {
        return Ok(());
    }
    crate::webhooks::target::check_url_target(&parsed)
        .await
        .map_err(ServiceError::invalid)
}

/// Every filter entry must select at least one event type.
fn check_events(events: &[String]) -> ServiceResult<()> {
    for e in events {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        if !EventKind::ALL.iter().any(|k| filter_matches(e, *k)) {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(ServiceError::invalid(format!(
                "unknown webhook event type {e:?}: use one of {}, a prefix like \"access.*\", \
                 or \"*\"",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn audit_details(e: &WebhookEndpoint) -> serde_json::Value {
    json!({
        "endpoint_id": e.id,
        "url": redact_url(&e.url),
        "description": e.description,
        "events": e.events,
        "disabled": e.disabled,
    })
}

pub async fn create_webhook_endpoint(
    ctl: &Control,
    caller: &Caller,
    input: WebhookEndpointInput,
) -> ServiceResult<EndpointWithSecret> {
    let org = caller.require(Access::Admin)?;
    if let Some(events) = &input.events {
        check_events(events)?;
    }
    check_target(ctl, &input.url).await?;
    let (endpoint, secret) = ctl
        .store()
        .create_webhook_endpoint(org, &input)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "webhook.create",
        &endpoint.id.to_string(),
        audit_details(&endpoint),
    )
    .await;
    Ok(EndpointWithSecret { endpoint, secret })
}

pub async fn list_webhook_endpoints(
    ctl: &Control,
    caller: &Caller,
) -> ServiceResult<Vec<WebhookEndpoint>> {
    let org = caller.require(Access::Read)?;
    ctl.store()
        .list_webhook_endpoints(org)
        .await
        .map_err(store_error)
}

pub async fn get_webhook_endpoint(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<WebhookEndpoint> {
    let org = caller.require(Access::Read)?;
    ctl.store()
        .get_webhook_endpoint(org, id)
        .await
        .map_err(store_error)
}

/// Changes the URL, description, event filter or disabled flag. Nothing is queued for a
/// disabled endpoint, so enabling one sends only events from then on (and deliveries an
/// admin redelivers); deliveries that were pending when it was disabled resume.
pub async fn update_webhook_endpoint(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    update: WebhookEndpointUpdate,
) -> ServiceResult<WebhookEndpoint> {
    let org = caller.require(Access::Admin)?;
    if let Some(events) = &update.events {
        check_events(events)?;
    }
    if let Some(url) = &update.url {
        check_target(ctl, url).await?;
    }
    let reason = format!("disabled by {}", caller.actor);
    let endpoint = ctl
        .store()
        .update_webhook_endpoint(org, id, &update, &reason)
        .await
        .map_err(store_error)?;
    let mut details = audit_details(&endpoint);
    details["changed"] = json!({
        "url": update.url.is_some(),
        "description": update.description.is_some(),
        "events": update.events.is_some(),
        "disabled": update.disabled,
    });
    record_change(ctl, caller, org, "webhook.update", &id.to_string(), details).await;
    Ok(endpoint)
}

/// Deletes an endpoint with its deliveries (dead letters already written stay on disk).
pub async fn delete_webhook_endpoint(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<()> {
    let org = caller.require(Access::Admin)?;
    let endpoint = ctl
        .store()
        .get_webhook_endpoint(org, id)
        .await
        .map_err(store_error)?;
    ctl.store()
        .delete_webhook_endpoint(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "webhook.delete",
        &id.to_string(),
        audit_details(&endpoint),
    )
    .await;
    Ok(())
}

/// Parses a grace period: a humantime duration up to [`MAX_ROTATION_GRACE`].
pub fn parse_grace(grace: Option<&str>) -> ServiceResult<Duration> {
    let Some(text) = grace.map(str::trim).filter(|g| !g.is_empty()) else {
        return Ok(DEFAULT_ROTATION_GRACE);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| ServiceError::invalid(format!("grace_period {text:?}: {e}")))?;
    if d > MAX_ROTATION_GRACE {
        return Err(ServiceError::invalid("grace_period may be at most 30d"));
    }
    Ok(d)
}

/// Replaces the signing secret. The new one is returned (once) and signs from now on; the
/// old one signs too, as the second signature, until the grace period ends.
pub async fn rotate_webhook_secret(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    rotation: Rotation,
) -> ServiceResult<EndpointWithSecret> {
    let org = caller.require(Access::Admin)?;
    let grace = parse_grace(rotation.grace_period.as_deref())?;
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let (endpoint, secret) = ctl
        .store()
        .rotate_webhook_secret(org, id, grace_ms)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "webhook.rotate_secret",
        &id.to_string(),
        json!({
            "endpoint_id": id,
            "url": redact_url(&endpoint.url),
            "grace_period_s": grace.as_secs(),
            "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        }),
    )
    .await;
    Ok(EndpointWithSecret { endpoint, secret })
}

/// An endpoint's deliveries, newest first: pending, delivered and dead (dead-lettered).
pub async fn list_webhook_deliveries(
    ctl: &Control,
    caller: &Caller,
    endpoint: Uuid,
    filter: DeliveryFilter,
) -> ServiceResult<Vec<WebhookDelivery>> {
    let org = caller.require(Access::Read)?;
    ctl.store()
        .list_webhook_deliveries(
            org,
            endpoint,
            filter.status,
            filter.limit.unwrap_or(DEFAULT_DELIVERY_LIMIT),
        )
        .await
        .map_err(store_error)
}

pub async fn get_webhook_delivery(
    ctl: &Control,
    caller: &Caller,
    endpoint: Uuid,
    id: Uuid,
) -> ServiceResult<WebhookDelivery> {
    let org = caller.require(Access::Read)?;
    ctl.store()
        .get_webhook_delivery(org, endpoint, id)
        .await
        .map_err(store_error)
}

/// Sends a dead (or delivered) delivery again, with the same `webhook-id` and a fresh
/// timestamp and signature, through the whole retry schedule. Refused while the endpoint
/// is disabled (enable it first) or while the delivery is still pending.
pub async fn redeliver_webhook_delivery(
    ctl: &Control,
    caller: &Caller,
    endpoint: Uuid,
    id: Uuid,
) -> ServiceResult<WebhookDelivery> {
    let org = caller.require(Access::Admin)?;
    let ep = ctl
        .store()
        .get_webhook_endpoint(org, endpoint)
        .await
        .map_err(store_error)?;
    if ep.disabled {
        return Err(ServiceError::Conflict(format!(
            "webhook endpoint {endpoint} is disabled ({}): enable it first",
            ep.disabled_reason.as_deref().unwrap_or("no reason given")
        )));
    }
    let delivery = ctl
        .store()
        .redeliver_webhook_delivery(org, endpoint, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "webhook.redeliver",
        &id.to_string(),
        json!({
            "endpoint_id": endpoint,
            "delivery_id": id,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
        }),
    )
    .await;
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("https://hooks.example/gate").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x?token=1").is_ok());
        for bad in [
            "ftp://hooks.example/x",
            "file:///etc/passwd",
            "hooks.example/x",
            "",
            " https://hooks.example/x",
            "https://",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_filters_must_name_events() {
        let ok: Vec<String> = ["access.approved", "session.*", "*", "policy.blocked"]
            .map(String::from)
            .to_vec();
        assert!(check_events(&ok).is_ok());
        for bad in [
            "access.approve",
            "sessions.*",
            "access.*.x",
            "ACCESS.APPROVED",
        ] {
            assert!(check_events(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn grace_periods() {
        assert_eq!(parse_grace(None).unwrap(), DEFAULT_ROTATION_GRACE);
        assert_eq!(parse_grace(Some("")).unwrap(), DEFAULT_ROTATION_GRACE);
        assert_eq!(parse_grace(Some("0s")).unwrap(), Duration::ZERO);
        assert_eq!(parse_grace(Some("90m")).unwrap(), Duration::from_secs(5400));
        assert!(parse_grace(Some("31d")).is_err());
        assert!(parse_grace(Some("soon")).is_err());
    }
}
