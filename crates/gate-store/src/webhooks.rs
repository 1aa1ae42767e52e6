//! Signed webhooks: an org's endpoints (URL, event filter, signing secrets) and the durable
//! queue of deliveries the control plane's worker drains.
//!
//! # Secrets
//!
//! Unlike API keys, a webhook secret (`whsec_<base64 of 32 random bytes>`, the Standard
//! Webhooks format) is needed *in plain text* to sign each request, so it is stored as is.
//! It is returned at creation and at rotation only: [`WebhookEndpoint`] has no secret field,
//! and [`WebhookSecrets`] (the signing keys, for the delivery worker) never prints them. A
//! rotation keeps the replaced secret as `previous_secret` until its grace period ends;
//! while it lasts, requests carry both signatures.
//!
//! # The queue
//!
//! One `webhook_deliveries` row per (endpoint, event), unique, so publishing an event twice
//! queues it once. A delivery is `pending` until a receiver answers 2xx (`delivered`) or it
//! runs out of attempts (or the receiver answers 410 Gone): `dead`. A worker *claims* a due
//! delivery by moving its `next_attempt_at` to the end of a lease with a guarded `UPDATE`
//! (so of several control planes on one database exactly one sends it) and bumping
//! `attempts`; the result is recorded only if `attempts` is still the claimed value (a
//! worker whose lease ran out and whose delivery was re-claimed cannot overwrite the newer
//! attempt). A control plane that dies mid-attempt leaves the row pending: it is sent again
//! once the lease ends. Delivery is therefore at least once; receivers deduplicate on the
//! event id (`webhook-id`).
//!
//! The worker's reads ([`Store::due_webhook_deliveries`], [`Store::purge_webhook_deliveries`])
//! are the only queries here that span orgs: every later step names the org again.

use crate::time::now_ms;
use crate::{OrgId, Result, RowExt as _, Store, StoreError, ensure_org, to_json};
use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The prefix of every webhook signing secret (Standard Webhooks).
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
/// Endpoints per org.
pub const MAX_WEBHOOK_ENDPOINTS: i64 = 50;
/// Longest URL accepted.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Entries in an endpoint's event filter.
pub const MAX_WEBHOOK_EVENTS: usize = 64;
/// Longest description.
pub const MAX_WEBHOOK_DESCRIPTION_LEN: usize = 500;
/// Largest payload queued (the events Gate sends are a few KiB).
pub const MAX_WEBHOOK_PAYLOAD_LEN: usize = 256 * 1024;
/// Longest `last_error` kept.
pub const MAX_WEBHOOK_ERROR_LEN: usize = 500;
/// Most deliveries one list call returns.
pub const MAX_WEBHOOK_DELIVERY_LIST: u32 = 500;

/// A webhook endpoint, as every surface shows it: never with its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub org_id: OrgId,
    pub url: String,
    pub description: String,
    /// Event types (`access.approved`) or patterns (`session.*`, `*`) delivered here.
    pub events: Vec<String>,
    pub disabled: bool,
    /// Why it is disabled (an admin's change, or the receiver answered 410 Gone).
    pub disabled_reason: Option<String>,
    /// Until when the secret replaced by the last rotation still signs (unix ms); may be in
    /// the past. `None` when no previous secret is kept.
    pub previous_secret_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an endpoint is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointInput {
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event types or patterns; absent means every event (`["*"]`).
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// A partial update: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointUpdate {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// The keys an endpoint's requests are signed with: the current secret, and the previous
/// one while its grace period lasts. `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecrets {
    pub current: String,
    pub previous: Option<String>,
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Queued or being retried.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Out of attempts, or the receiver answered 410 Gone: dead-lettered until redelivered.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            other => Err(format!("unknown delivery status {other:?}")),
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event queued for one endpoint, with how its delivery went so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub org_id: OrgId,
    pub endpoint_id: Uuid,
    /// The `webhook-id` header of every attempt: the event's id.
    pub event_id: String,
    pub event_type: String,
    /// The request body exactly as signed and sent (serialized as the JSON it holds).
    #[serde(serialize_with = "as_json")]
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made (or in flight) since it was queued or last redelivered.
    pub attempts: i64,
    /// When a pending delivery is (next) due.
    pub next_attempt_at: i64,
    pub last_attempt_at: Option<i64>,
    /// The receiver's HTTP status of the last attempt (none when it did not answer).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

fn as_json<S: Serializer>(payload: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(payload),
    }
}

/// How one attempt ended, as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// A failure with attempts left: due again at `next_attempt_at`.
    Retry {
        status: Option<u16>,
        error: String,
        next_attempt_at: i64,
    },
    /// A failure with no attempts left (or 410 Gone): dead-lettered.
    Dead { status: Option<u16>, error: String },
}

macro_rules! endpoint_cols {
    () => {
        "id, org_id, url, description, events, disabled, disabled_reason, \
         previous_secret_expires_at, created_at, updated_at"
    };
}

macro_rules! delivery_cols {
    () => {
        "id, org_id, endpoint_id, event_id, event_type, payload, status, attempts, \
         next_attempt_at, last_attempt_at, last_status, last_error, created_at, delivered_at"
    };
}

fn endpoint_from_row(row: &AnyRow) -> Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        url: row.text("url")?,
        description: row.text("description")?,
        events: row.json("events")?,
        disabled: row.int("disabled")? != 0,
        disabled_reason: row.opt_text("disabled_reason")?,
        previous_secret_expires_at: row.opt_int("previous_secret_expires_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn delivery_from_row(row: &AnyRow) -> Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        endpoint_id: row.uuid("endpoint_id")?,
        event_id: row.text("event_id")?,
        event_type: row.text("event_type")?,
        payload: row.text("payload")?,
        status: row.parsed("status")?,
        attempts: row.int("attempts")?,
        next_attempt_at: row.int("next_attempt_at")?,
        last_attempt_at: row.opt_int("last_attempt_at")?,
        last_status: row.opt_int("last_status")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.int("created_at")?,
        delivered_at: row.opt_int("delivered_at")?,
    })
}

/// A new signing secret: `whsec_` + standard base64 of 32 random bytes.
fn new_webhook_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{WEBHOOK_SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn validate_url(url: &str) -> Result<()> {
    if url.is_empty() {
        return Err(StoreError::Invalid("webhook url is empty".into()));
    }
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return Err(StoreError::Invalid(format!(
            "webhook url is longer than {MAX_WEBHOOK_URL_LEN} bytes"
        )));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::Invalid(
            "webhook url has whitespace or control characters".into(),
        ));
    }
    Ok(())
}

fn validate_description(d: &str) -> Result<()> {
    if d.chars().count() > MAX_WEBHOOK_DESCRIPTION_LEN {
        return Err(StoreError::Invalid(format!(
            "webhook description is longer than {MAX_WEBHOOK_DESCRIPTION_LEN} characters"
        )));
    }
    Ok(())
}

/// The event filter, normalized (trimmed, deduplicated); at least one entry.
fn clean_events(events: &[String]) -> Result<Vec<String>> {
    let events = crate::clean_list(events);
    if events.is_empty() {
        return Err(StoreError::Invalid(
            "webhook events is empty: name event types, or \"*\" for all".into(),
        ));
    }
    if events.len() > MAX_WEBHOOK_EVENTS {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_WEBHOOK_EVENTS} webhook event filters"
        )));
    }
    if let Some(e) = events
        .iter()
        .find(|e| e.len() > 100 || e.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(format!(
            "webhook event filter {e:?} is not an event type"
        )));
    }
    Ok(events)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn endpoint_not_found(id: Uuid) -> StoreError {
    StoreError::not_found(format!("webhook endpoint {id}"))
}

fn delivery_not_found(id: Uuid) -> StoreError {
    StoreError::not_found(format!("webhook delivery {id}"))
}

impl Store {
    /// Creates an endpoint and returns it with its signing secret — the only time, with
    /// [`Store::rotate_webhook_secret`], that the secret leaves the store.
    pub async fn create_webhook_endpoint(
        &self,
        org: OrgId,
        input: &WebhookEndpointInput,
    ) -> Result<(WebhookEndpoint, String)> {
        validate_url(&input.url)?;
        validate_description(&input.description)?;
        let events = match &input.events {
            None => vec!["*".to_string()],
            Some(e) => clean_events(e)?,
        };
        let now = now_ms();
        let secret = new_webhook_secret();
        let endpoint = WebhookEndpoint {
            id: Uuid::now_v7(),
            org_id: org,
            url: input.url.clone(),
            description: input.description.clone(),
            events,
            disabled: false,
            disabled_reason: None,
            previous_secret_expires_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = $1")
            .bind(org.to_string())
            .fetch_one(&mut *tx)
            .await?;
        if n >= MAX_WEBHOOK_ENDPOINTS {
            return Err(StoreError::conflict(format!(
                "an organization has at most {MAX_WEBHOOK_ENDPOINTS} webhook endpoints"
            )));
        }
        sqlx::query(
            "INSERT INTO webhook_endpoints (org_id, id, url, description, events, disabled, \
             secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7)",
        )
        .bind(org.to_string())
        .bind(endpoint.id.to_string())
        .bind(&endpoint.url)
        .bind(&endpoint.description)
        .bind(to_json(&endpoint.events)?)
        .bind(&secret)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((endpoint, secret))
    }

    pub async fn get_webhook_endpoint(&self, org: OrgId, id: Uuid) -> Result<WebhookEndpoint> {
        get_endpoint(&mut *self.pool.acquire().await?, org, id).await
    }

    /// The org's endpoints, oldest first.
    pub async fn list_webhook_endpoints(&self, org: OrgId) -> Result<Vec<WebhookEndpoint>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            endpoint_cols!(),
            " FROM webhook_endpoints WHERE org_id = $1 ORDER BY created_at, id"
        ))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    /// Changes what `update` names. Enabling clears the disabled reason; disabling through
    /// this call records `disabled_reason`.
    pub async fn update_webhook_endpoint(
        &self,
        org: OrgId,
        id: Uuid,
        update: &WebhookEndpointUpdate,
        disabled_reason: &str,
    ) -> Result<WebhookEndpoint> {
        if let Some(url) = &update.url {
            validate_url(url)?;
        }
        if let Some(d) = &update.description {
            validate_description(d)?;
        }
        let events = update.events.as_deref().map(clean_events).transpose()?;
        let mut tx = self.begin_write().await?;
        let mut current = get_endpoint(&mut tx, org, id).await?;
        if let Some(url) = &update.url {
            current.url = url.clone();
        }
        if let Some(d) = &update.description {
            current.description = d.clone();
        }
        if let Some(e) = events {
            current.events = e;
        }
        match update.disabled {
            Some(true) if !current.disabled => {
                current.disabled = true;
                current.disabled_reason = Some(truncate(disabled_reason, MAX_WEBHOOK_ERROR_LEN));
            }
            Some(false) => {
                current.disabled = false;
                current.disabled_reason = None;
            }
            _ => {}
        }
        current.updated_at = now_ms();
        sqlx::query(
            "UPDATE webhook_endpoints SET url = $3, description = $4, events = $5, disabled = $6, \
             disabled_reason = $7, updated_at = $8 WHERE org_id = $1 AND id = $2",
        )
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(&current.url)
        .bind(&current.description)
        .bind(to_json(&current.events)?)
        .bind(i64::from(current.disabled))
        .bind(current.disabled_reason.clone())
        .bind(current.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(current)
    }

    /// Disables an endpoint with `reason` (the worker's answer to 410 Gone). Returns whether
    /// this call disabled it (false: it was disabled already).
    pub async fn disable_webhook_endpoint(
        &self,
        org: OrgId,
        id: Uuid,
        reason: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET disabled = 1, disabled_reason = $3, updated_at = $4 \
             WHERE org_id = $1 AND id = $2 AND disabled = 0",
        )
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(truncate(reason, MAX_WEBHOOK_ERROR_LEN))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes an endpoint and its deliveries.
    pub async fn delete_webhook_endpoint(&self, org: OrgId, id: Uuid) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE org_id = $1 AND endpoint_id = $2")
            .bind(org.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE org_id = $1 AND id = $2")
            .bind(org.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(endpoint_not_found(id));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the signing secret with a new one, returned here once. The replaced secret
    /// keeps signing (as the second signature) until `now + grace_ms`; with no grace it is
    /// dropped at once. A secret kept from an earlier rotation is dropped either way: at
    /// most two secrets sign.
    pub async fn rotate_webhook_secret(
        &self,
        org: OrgId,
        id: Uuid,
        grace_ms: i64,
    ) -> Result<(WebhookEndpoint, String)> {
        if grace_ms < 0 {
            return Err(StoreError::Invalid("grace period is negative".into()));
        }
        let now = now_ms();
        let secret = new_webhook_secret();
        let mut tx = self.begin_write().await?;
        let keep_previous = grace_ms > 0;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET \
             previous_secret = CASE WHEN $3 = 1 THEN secret ELSE NULL END, \
             previous_secret_expires_at = CASE WHEN $3 = 1 THEN $4 ELSE NULL END, \
             secret = $5, updated_at = $6 WHERE org_id = $1 AND id = $2",
        )
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(i64::from(keep_previous))
        .bind(now.saturating_add(grace_ms))
        .bind(&secret)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(endpoint_not_found(id));
        }
        let endpoint = get_endpoint(&mut tx, org, id).await?;
        tx.commit().await?;
        Ok((endpoint, secret))
    }

    /// What the worker needs to send to an endpoint at `now`: its URL, whether it is
    /// disabled, and the secrets that sign (the previous one only while its grace lasts).
    pub async fn webhook_target(
        &self,
        org: OrgId,
        id: Uuid,
        now: i64,
    ) -> Result<(String, bool, WebhookSecrets)> {
        let row = sqlx::query(
            "SELECT url, disabled, secret, previous_secret, previous_secret_expires_at \
             FROM webhook_endpoints WHERE org_id = $1 AND id = $2",
        )
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| endpoint_not_found(id))?;
        let previous = match (
            row.opt_text("previous_secret")?,
            row.opt_int("previous_secret_expires_at")?,
        ) {
            (Some(s), Some(until)) if until > now => Some(s),
            _ => None,
        };
        Ok((
            row.text("url")?,
            row.int("disabled")? != 0,
            WebhookSecrets {
                current: row.text("secret")?,
                previous,
            },
        ))
    }

    /// Queues one event for each of `endpoints` (ids of the org's endpoints), due at once.
    /// An (endpoint, event) pair already queued is skipped, so publishing twice queues once.
    /// Returns how many deliveries were queued now.
    pub async fn enqueue_webhook_deliveries(
        &self,
        org: OrgId,
        endpoints: &[Uuid],
        event_id: &str,
        event_type: &str,
        payload: &str,
    ) -> Result<u64> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        if payload.len() > MAX_WEBHOOK_PAYLOAD_LEN {
            return Err(StoreError::Invalid(format!(
                "webhook payload of {} bytes is larger than {MAX_WEBHOOK_PAYLOAD_LEN}",
                payload.len()
            )));
        }
        if event_id.is_empty() || event_id.len() > 200 {
            return Err(StoreError::Invalid(
                "webhook event id is empty or too long".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut queued = 0;
        for endpoint in endpoints {
            // Only into an endpoint of this org: the SELECT finds nothing otherwise.
            queued += sqlx::query(
                "INSERT INTO webhook_deliveries (org_id, id, endpoint_id, event_id, event_type, \
                 payload, status, attempts, next_attempt_at, created_at) \
                 SELECT $1, $2, id, $4, $5, $6, 'pending', 0, $7, $7 FROM webhook_endpoints \
                 WHERE org_id = $1 AND id = $3 \
                 ON CONFLICT (org_id, endpoint_id, event_id) DO NOTHING",
            )
            .bind(org.to_string())
            .bind(Uuid::now_v7().to_string())
            .bind(endpoint.to_string())
            .bind(event_id)
            .bind(event_type)
            .bind(payload)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Pending deliveries due at `now` on enabled endpoints, across orgs, earliest first, at
    /// most `limit`: `(org, delivery id, next_attempt_at)` for [`Store::claim_webhook_delivery`].
    pub async fn due_webhook_deliveries(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(OrgId, Uuid, i64)>> {
        self.due_webhook_deliveries_per_org(now, limit, limit).await
    }

    /// Like [`Store::due_webhook_deliveries`], with at most `per_org` deliveries of any one
    /// org (its earliest): one org's backlog cannot fill the list and hide the others'.
    pub async fn due_webhook_deliveries_per_org(
        &self,
        now: i64,
        limit: u32,
        per_org: u32,
    ) -> Result<Vec<(OrgId, Uuid, i64)>> {
        let rows = sqlx::query(
            "SELECT org_id, id, next_attempt_at FROM (\
             SELECT d.org_id AS org_id, d.id AS id, d.next_attempt_at AS next_attempt_at, \
             ROW_NUMBER() OVER (PARTITION BY d.org_id ORDER BY d.next_attempt_at, d.id) AS n \
             FROM webhook_deliveries d JOIN webhook_endpoints e \
             ON e.org_id = d.org_id AND e.id = d.endpoint_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND e.disabled = 0\
             ) due WHERE n <= $2 ORDER BY next_attempt_at, id LIMIT $3",
        )
        .bind(now)
        .bind(i64::from(per_org.max(1)))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.org_id("org_id")?,
                    r.uuid("id")?,
                    r.int("next_attempt_at")?,
                ))
            })
            .collect()
    }

    /// Claims a due delivery for one attempt: if it is still pending and still due at
    /// `due_at` (nobody claimed it since it was listed) and its endpoint is still enabled,
    /// counts the attempt and moves `next_attempt_at` to `lease_until`, when another worker
    /// may take it over should this one never report. Returns the claimed delivery, or
    /// `None` when another worker was faster, the endpoint was disabled, or it is gone.
    pub async fn claim_webhook_delivery(
        &self,
        org: OrgId,
        id: Uuid,
        due_at: i64,
        lease_until: i64,
    ) -> Result<Option<WebhookDelivery>> {
        let row = sqlx::query(concat!(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $4, \
             last_attempt_at = $5 WHERE org_id = $1 AND id = $2 AND status = 'pending' \
             AND next_attempt_at = $3 AND EXISTS (SELECT 1 FROM webhook_endpoints e \
             WHERE e.org_id = webhook_deliveries.org_id \
             AND e.id = webhook_deliveries.endpoint_id AND e.disabled = 0) RETURNING ",
            delivery_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(due_at)
        .bind(lease_until)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Records how the attempt `claimed` (as [`Store::claim_webhook_delivery`] returned it)
    /// ended. Ignored (returns `None`) unless the delivery is still in that claim — same
    /// attempt count, same lease: not recorded already, not re-claimed after the lease
    /// ended, not redelivered, not deleted with its endpoint.
    pub async fn record_webhook_attempt(
        &self,
        claimed: &WebhookDelivery,
        outcome: &DeliveryOutcome,
    ) -> Result<Option<WebhookDelivery>> {
        let now = now_ms();
        let (status, next, http_status, error, delivered_at) = match outcome {
            DeliveryOutcome::Delivered { status } => (
                DeliveryStatus::Delivered,
                now,
                Some(*status),
                None,
                Some(now),
            ),
            DeliveryOutcome::Retry {
                status,
                error,
                next_attempt_at,
            } => (
                DeliveryStatus::Pending,
                *next_attempt_at,
                *status,
                Some(truncate(error, MAX_WEBHOOK_ERROR_LEN)),
                None,
            ),
            DeliveryOutcome::Dead { status, error } => (
                DeliveryStatus::Dead,
                now,
                *status,
                Some(truncate(error, MAX_WEBHOOK_ERROR_LEN)),
                None,
            ),
        };
        let row = sqlx::query(concat!(
            "UPDATE webhook_deliveries SET status = $4, next_attempt_at = $5, last_status = $6, \
             last_error = $7, delivered_at = $8 WHERE org_id = $1 AND id = $2 \
             AND status = 'pending' AND attempts = $3 AND next_attempt_at = $9 RETURNING ",
            delivery_cols!()
        ))
        .bind(claimed.org_id.to_string())
        .bind(claimed.id.to_string())
        .bind(claimed.attempts)
        .bind(status.as_str())
        .bind(next)
        .bind(http_status.map(i64::from))
        .bind(error)
        .bind(delivered_at)
        .bind(claimed.next_attempt_at)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Gives back the claim `claimed` without an attempt made (its endpoint was disabled
    /// after the claim): the attempt is not counted, and the delivery is due again at
    /// `due_at` (not listed as due while its endpoint stays disabled). Its last status and
    /// error stay those of the last real attempt. Fenced like
    /// [`Store::record_webhook_attempt`]: `None` when the claim is no longer current.
    pub async fn release_webhook_delivery(
        &self,
        claimed: &WebhookDelivery,
        due_at: i64,
    ) -> Result<Option<WebhookDelivery>> {
        let row = sqlx::query(concat!(
            "UPDATE webhook_deliveries SET attempts = attempts - 1, next_attempt_at = $4 \
             WHERE org_id = $1 AND id = $2 AND status = 'pending' AND attempts = $3 \
             AND attempts > 0 AND next_attempt_at = $5 RETURNING ",
            delivery_cols!()
        ))
        .bind(claimed.org_id.to_string())
        .bind(claimed.id.to_string())
        .bind(claimed.attempts)
        .bind(due_at)
        .bind(claimed.next_attempt_at)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// An endpoint's deliveries, newest first, optionally only those in `status`; at most
    /// `limit` (capped at [`MAX_WEBHOOK_DELIVERY_LIST`]).
    pub async fn list_webhook_deliveries(
        &self,
        org: OrgId,
        endpoint: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        let mut conn = self.pool.acquire().await?;
        get_endpoint(&mut conn, org, endpoint).await?;
        let limit = i64::from(limit.clamp(1, MAX_WEBHOOK_DELIVERY_LIST));
        let rows = match status {
            Some(s) => {
                sqlx::query(concat!(
                    "SELECT ",
                    delivery_cols!(),
                    " FROM webhook_deliveries WHERE org_id = $1 AND endpoint_id = $2 \
                     AND status = $3 ORDER BY created_at DESC, id DESC LIMIT $4"
                ))
                .bind(org.to_string())
                .bind(endpoint.to_string())
                .bind(s.as_str())
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    delivery_cols!(),
                    " FROM webhook_deliveries WHERE org_id = $1 AND endpoint_id = $2 \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(org.to_string())
                .bind(endpoint.to_string())
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?
            }
        };
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn get_webhook_delivery(
        &self,
        org: OrgId,
        endpoint: Uuid,
        id: Uuid,
    ) -> Result<WebhookDelivery> {
        get_delivery(&mut *self.pool.acquire().await?, org, endpoint, id).await
    }

    /// Queues a dead (or delivered) delivery again, due now, with a fresh attempt count; it
    /// keeps its event id, so the receiver sees the same `webhook-id`. A pending delivery
    /// is refused (Conflict): it is being retried already.
    pub async fn redeliver_webhook_delivery(
        &self,
        org: OrgId,
        endpoint: Uuid,
        id: Uuid,
    ) -> Result<WebhookDelivery> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $4, \
             delivered_at = NULL WHERE org_id = $1 AND endpoint_id = $2 AND id = $3 \
             AND status IN ('dead', 'delivered') RETURNING ",
            delivery_cols!()
        ))
        .bind(org.to_string())
        .bind(endpoint.to_string())
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => {
                let d = delivery_from_row(&row)?;
                tx.commit().await?;
                Ok(d)
            }
            None => {
                let current = get_delivery(&mut tx, org, endpoint, id).await?;
                tx.rollback().await?;
                Err(StoreError::conflict(format!(
                    "webhook delivery {id} is {}: it is retried on its own schedule",
                    current.status
                )))
            }
        }
    }

    /// Deletes delivered deliveries older than `before_ms` (by delivery time), across orgs:
    /// the history's retention. Dead and pending ones stay. Returns how many went.
    pub async fn purge_webhook_deliveries(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status = 'delivered' AND delivered_at < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

async fn get_endpoint(conn: &mut AnyConnection, org: OrgId, id: Uuid) -> Result<WebhookEndpoint> {
    let row = sqlx::query(concat!(
        "SELECT ",
        endpoint_cols!(),
        " FROM webhook_endpoints WHERE org_id = $1 AND id = $2"
    ))
    .bind(org.to_string())
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref()
        .map(endpoint_from_row)
        .transpose()?
        .ok_or_else(|| endpoint_not_found(id))
}

async fn get_delivery(
    conn: &mut AnyConnection,
    org: OrgId,
    endpoint: Uuid,
    id: Uuid,
) -> Result<WebhookDelivery> {
    let row = sqlx::query(concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM webhook_deliveries WHERE org_id = $1 AND endpoint_id = $2 AND id = $3"
    ))
    .bind(org.to_string())
    .bind(endpoint.to_string())
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref()
        .map(delivery_from_row)
        .transpose()?
        .ok_or_else(|| delivery_not_found(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_standard_webhooks_shape() {
        let a = new_webhook_secret();
        let b = new_webhook_secret();
        assert_ne!(a, b);
        let key = a.strip_prefix(WEBHOOK_SECRET_PREFIX).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        let printed = format!(
            "{:?}",
            WebhookSecrets {
                current: a.clone(),
                previous: Some(b.clone())
            }
        );
        assert!(!printed.contains(key) && !printed.contains(&b));
    }

    #[tokio::test]
    async fn due_lists_are_fair_and_a_released_claim_costs_no_attempt_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let store = Store::connect(&crate::StoreOptions::new(url))
            .await
            .unwrap();
        fair_lists_and_released_claims(store).await;
    }

    #[tokio::test]
    async fn due_lists_are_fair_and_a_released_claim_costs_no_attempt_postgres() {
        let url = tokio::task::spawn_blocking(|| {
            let pg = gate_test_support::postgres::PgServer::shared();
            let db = format!("gate_store_wh_{}", Uuid::new_v4().simple());
            pg.superuser_psql(
                "postgres",
                &format!("CREATE DATABASE {db} OWNER {};", pg.app_user()),
            )
            .unwrap();
            format!(
                "postgres://{}:{}@{}:{}/{db}",
                pg.app_user(),
                pg.app_password(),
                pg.host(),
                pg.port()
            )
        })
        .await
        .unwrap();
        let mut options = crate::StoreOptions::new(url);
        options.max_open_conns = 5;
        fair_lists_and_released_claims(Store::connect(&options).await.unwrap()).await;
    }

    /// The worker's per-org listing, and a claim given back without an attempt.
    async fn fair_lists_and_released_claims(store: Store) {
        let busy = store.create_org("busy").await.unwrap().id;
        let quiet = store.create_org("quiet").await.unwrap().id;
        let input = |url: &str| WebhookEndpointInput {
            url: url.into(),
            description: String::new(),
            events: None,
        };
        let (b, _) = store
            .create_webhook_endpoint(busy, &input("https://b.example/"))
            .await
            .unwrap();
        let (q, _) = store
            .create_webhook_endpoint(quiet, &input("https://q.example/"))
            .await
            .unwrap();
        for i in 0..10 {
            let event = format!("evt_b{i}");
            store
                .enqueue_webhook_deliveries(busy, &[b.id], &event, "access.approved", "{}")
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store
            .enqueue_webhook_deliveries(quiet, &[q.id], "evt_q", "access.approved", "{}")
            .await
            .unwrap();
        let now = now_ms() + 1;

        // Earliest first, the busy org's backlog hides the quiet org's delivery…
        let plain = store.due_webhook_deliveries(now, 4).await.unwrap();
        assert_eq!(plain.len(), 4);
        assert!(plain.iter().all(|(org, _, _)| *org == busy));
        // …unless each org lists at most its share.
        let fair = store
            .due_webhook_deliveries_per_org(now, 4, 2)
            .await
            .unwrap();
        let count = |org| fair.iter().filter(|(o, _, _)| *o == org).count();
        assert_eq!((count(busy), count(quiet)), (2, 1), "{fair:?}");
        assert!(fair.windows(2).all(|w| w[0].2 <= w[1].2), "earliest first");

        // A claim given back (the endpoint was disabled meanwhile) costs no attempt, and
        // only the current claim can give it back or record an outcome.
        let (_, id, due_at) = *fair.iter().find(|(o, _, _)| *o == quiet).unwrap();
        let claimed = store
            .claim_webhook_delivery(quiet, id, due_at, now + 60_000)
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(claimed.attempts, 1);
        let released = store
            .release_webhook_delivery(&claimed, now)
            .await
            .unwrap()
            .expect("released");
        assert_eq!(released.attempts, 0);
        assert_eq!(released.status, DeliveryStatus::Pending);
        assert_eq!(released.next_attempt_at, now);
        assert!(
            store
                .release_webhook_delivery(&claimed, now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .record_webhook_attempt(&claimed, &DeliveryOutcome::Delivered { status: 200 })
                .await
                .unwrap()
                .is_none()
        );
        // A delivery of a disabled endpoint is not claimed (nor listed).
        assert!(
            store
                .disable_webhook_endpoint(quiet, q.id, "test")
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_webhook_delivery(quiet, id, now, now + 60_000)
                .await
                .unwrap()
                .is_none()
        );
        let due = store
            .due_webhook_deliveries_per_org(now, 100, 100)
            .await
            .unwrap();
        assert!(due.iter().all(|(org, _, _)| *org == busy));
        assert_eq!(due.len(), 10);
    }

    #[test]
    fn filters_and_errors_are_bounded() {
        assert_eq!(
            clean_events(&[" access.approved ".into(), "access.approved".into()]).unwrap(),
            ["access.approved"]
        );
        assert!(clean_events(&[]).is_err());
        assert!(clean_events(&["  ".into()]).is_err());
        assert!(validate_url("https://x.example/a b").is_err());
        assert!(validate_url(&"h".repeat(MAX_WEBHOOK_URL_LEN + 1)).is_err());
        let long = "é".repeat(400);
        let t = truncate(&long, 501);
        assert!(t.len() <= 501 + '…'.len_utf8());
        assert_eq!(truncate("short", 10), "short");
        assert!("pending".parse::<DeliveryStatus>().is_ok());
        assert!("gone".parse::<DeliveryStatus>().is_err());
    }
}
