//! The delivery worker: drains the store's webhook queue.
//!
//! Each round lists due deliveries (pending, `next_attempt_at` reached, endpoint enabled),
//! claims each with a lease (so several control planes on one database never send one
//! attempt twice, and a control plane that dies mid-attempt leaves it to be sent again
//! when the lease ends) and sends it in its own task, at most `delivery.max_concurrency`
//! at once and at most `delivery.max_concurrency_per_org` for one org: due deliveries of an
//! org at its cap wait for a later round, so an org whose receivers hang cannot take every
//! slot. (The store lists at most that many per org, earliest first, so the rest of the
//! queue is seen however long one org's backlog is.) A round runs when an event was queued
//! (the sink wakes the worker), when an attempt finishes, and every
//! `delivery.poll_interval` (retries and redeliveries come due that way).
//!
//! Unless `delivery.allow_private_targets`, requests go to public addresses only
//! ([`super::target`]): names are resolved by [`super::target::PublicOnlyResolver`] and IP
//! literals checked before sending; a refused attempt fails with "target address not
//! allowed" and is retried like any connection failure.
//!
//! An attempt ends in one of:
//! - 2xx: delivered;
//! - 410 Gone: the endpoint is disabled (audited as `webhook.disable` by
//!   [`WORKER_ACTOR`]) and the delivery is dead;
//! - anything else, a timeout or a connection failure: retried after the next wait of
//!   `delivery.retry_schedule`, or dead when the schedule is exhausted.
//!
//! A dead delivery stays in the store (listed with `status=dead`, redeliverable) and is
//! written to `delivery.dead_letter_dir/<org>/<delivery>.json` for operators — directories
//! created `0700`, files `0600`: they hold identities, emails and client addresses; the file
//! is removed when a redelivery succeeds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate_store::time::{format_rfc3339_ms, now_ms};
use gate_store::{DeliveryOutcome, DeliveryStatus, OrgId, StoreError, WebhookDelivery};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{redact_url, retry_after, signing, target};
use crate::Control;
use crate::config::DeliveryConfig;

/// The actor named in audit events the worker writes (an endpoint disabled by 410).
pub const WORKER_ACTOR: &str = "webhook-delivery";
/// How long past the request timeout a claimed attempt may take before another worker may
/// take the delivery over.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// How long shutdown waits for attempts in flight before abandoning them (they stay
/// claimed and are sent again when their lease ends).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often delivered deliveries past `delivery.delivered_retention` are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How much of a receiver's response body is read (then dropped): enough to reuse the
/// connection for small answers, never an unbounded read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The running worker's state.
pub struct Worker {
    ctl: Arc<Control>,
    cfg: Arc<DeliveryConfig>,
    client: reqwest::Client,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    /// Attempts in flight per org (entries go when they reach zero).
    in_flight: Arc<Mutex<HashMap<OrgId, u32>>>,
}

/// One org's slot of [`Worker::in_flight`], given back when the attempt ends (however).
struct OrgSlot {
    in_flight: Arc<Mutex<HashMap<OrgId, u32>>>,
    org: OrgId,
}

impl OrgSlot {
    /// Takes a slot for `org` unless it has `cap` in flight already.
    fn take(in_flight: &Arc<Mutex<HashMap<OrgId, u32>>>, org: OrgId, cap: u32) -> Option<OrgSlot> {
        let mut map = in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(org).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(OrgSlot {
            in_flight: in_flight.clone(),
            org,
        })
    }
}

impl Drop for OrgSlot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.org);
            }
        }
    }
}

impl Worker {
    pub fn new(
        ctl: Arc<Control>,
        cfg: DeliveryConfig,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Worker> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // A redirect is not a delivery: the receiver must answer 2xx itself.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Gate-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_targets {
            // Connect only to public addresses, whatever a name resolves to when sending;
            // directly, since through a proxy the address connected to cannot be checked.
            builder = builder.dns_resolver(target::PublicOnlyResolver).no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))?;
        let permits = Arc::new(Semaphore::new(cfg.max_concurrency.max(1) as usize));
        Ok(Worker {
            ctl,
            cfg: Arc::new(cfg),
            client,
            wake,
            permits,
            in_flight: Arc::default(),
        })
    }

    /// Runs until shutdown, then lets the attempts in flight finish (up to a short limit).
    pub async fn run(self) {
        let mut shutdown = self.ctl.subscribe_shutdown();
        let mut tasks = JoinSet::new();
        let mut next_purge = Instant::now() + Duration::from_secs(60);
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            self.round(&mut tasks).await;
            if Instant::now() >= next_purge {
                next_purge = Instant::now() + PURGE_EVERY;
                self.purge().await;
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(DRAIN_LIMIT.min(self.cfg.timeout), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(
                in_flight = tasks.len(),
                "shutdown: webhook attempts still in flight are abandoned; they are sent again after a restart"
            );
            tasks.shutdown().await;
        }
    }

    /// Claims and starts as many due deliveries as there are free permits, at most
    /// `max_concurrency_per_org` in flight per org.
    async fn round(&self, tasks: &mut JoinSet<()>) {
        if self.permits.available_permits() == 0 {
            return;
        }
        let now = now_ms();
        let per_org = self.cfg.max_concurrency_per_org.max(1);
        // At most `per_org` rows per org: an org with `k` in flight makes at most `k` of
        // them unusable, so `max_concurrency` rows (free permits + all in flight) hold
        // enough usable ones to fill every free permit when the queue has them.
        let due = match self
            .ctl
            .store()
            .due_webhook_deliveries_per_org(now, self.cfg.max_concurrency.max(1), per_org)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "webhook worker: cannot read the delivery queue");
                return;
            }
        };
        let lease =
            i64::try_from((self.cfg.timeout + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
        for (org, id, due_at) in due {
            let Some(slot) = OrgSlot::take(&self.in_flight, org, per_org) else {
                // The org is at its cap: this one waits for a later round.
                continue;
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            match self
                .ctl
                .store()
                .claim_webhook_delivery(org, id, due_at, now.saturating_add(lease))
                .await
            {
                Ok(Some(delivery)) => {
                    let attempt = Attempt {
                        ctl: self.ctl.clone(),
                        cfg: self.cfg.clone(),
                        client: self.client.clone(),
                    };
                    tasks.spawn(attempt.run(delivery, permit, slot));
                }
                // Another worker claimed it first, or it went with its endpoint.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(%org, delivery = %id, error = %e, "webhook worker: cannot claim a delivery");
                }
            }
        }
    }

    async fn purge(&self) {
        let keep = i64::try_from(self.cfg.delivered_retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .ctl
            .store()
            .purge_webhook_deliveries(now_ms().saturating_sub(keep))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "old delivered webhook deliveries purged"),
            Err(e) => tracing::error!(error = %e, "cannot purge old webhook deliveries"),
        }
    }
}

/// One attempt of one delivery.
struct Attempt {
    ctl: Arc<Control>,
    cfg: Arc<DeliveryConfig>,
    client: reqwest::Client,
}

/// What the receiver did.
enum Answer {
    Status(u16),
    Failed(String),
}

impl Attempt {
    async fn run(self, delivery: WebhookDelivery, _permit: OwnedSemaphorePermit, _slot: OrgSlot) {
        let org = delivery.org_id;
        let now = now_ms();
        let (url, disabled, secrets) = match self
            .ctl
            .store()
            .webhook_target(org, delivery.endpoint_id, now)
            .await
        {
            Ok(target) => target,
            // Deleted with its endpoint since it was claimed.
            Err(StoreError::NotFound { .. }) => return,
            Err(e) => {
                // Left claimed: it is tried again when the lease ends.
                tracing::error!(%org, delivery = %delivery.id, error = %e, "webhook attempt: cannot read the endpoint");
                return;
            }
        };
        if disabled {
            // Disabled just after it was claimed: nothing is sent, and the claim is given
            // back without counting an attempt. It stays pending, not due while the
            // endpoint is disabled.
            match self
                .ctl
                .store()
                .release_webhook_delivery(&delivery, now)
                .await
            {
                Ok(_) => {
                    tracing::debug!(%org, delivery = %delivery.id, "webhook endpoint disabled since the delivery was claimed; not sent")
                }
                Err(e) => {
                    tracing::error!(%org, delivery = %delivery.id, error = %e, "cannot give back a webhook delivery claim; it is retried when its lease ends")
                }
            }
            return;
        }
        let timestamp = now.div_euclid(1000);
        let outcome = match signing::signature_header(
            &secrets,
            &delivery.event_id,
            timestamp,
            delivery.payload.as_bytes(),
        ) {
            Err(e) => DeliveryOutcome::Dead {
                status: None,
                error: format!("{e}: rotate the endpoint's secret, then redeliver"),
            },
            Ok(signature) => {
                let answer = self.send(&url, &delivery, timestamp, signature).await;
                self.judge(&delivery, answer)
            }
        };
        let gone = matches!(
            outcome,
            DeliveryOutcome::Dead {
                status: Some(410),
                ..
            }
        );
        let recorded = match self
            .ctl
            .store()
            .record_webhook_attempt(&delivery, &outcome)
            .await
        {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::debug!(%org, delivery = %delivery.id, "webhook attempt outcome not recorded: the delivery moved on");
                return;
            }
            Err(e) => {
                tracing::error!(%org, delivery = %delivery.id, error = %e, "cannot record a webhook attempt; it is retried when its lease ends");
                return;
            }
        };
        match recorded.status {
            DeliveryStatus::Delivered => {
                tracing::debug!(%org, endpoint = %recorded.endpoint_id, delivery = %recorded.id, event = %recorded.event_id, attempts = recorded.attempts, "webhook delivered");
                remove_dead_letter(&self.cfg.dead_letter_dir, &recorded).await;
            }
            DeliveryStatus::Pending => {
                tracing::info!(%org, endpoint = %recorded.endpoint_id, delivery = %recorded.id, attempts = recorded.attempts, status = ?recorded.last_status, error = recorded.last_error.as_deref().unwrap_or(""), "webhook attempt failed; will retry");
            }
            DeliveryStatus::Dead => {
                tracing::warn!(%org, endpoint = %recorded.endpoint_id, delivery = %recorded.id, event = %recorded.event_id, attempts = recorded.attempts, status = ?recorded.last_status, error = recorded.last_error.as_deref().unwrap_or(""), "webhook delivery dead-lettered");
                write_dead_letter(&self.cfg.dead_letter_dir, &recorded).await;
            }
        }
        if gone {
            self.disable_gone(&recorded, &url).await;
        }
    }

    async fn send(
        &self,
        url: &str,
        delivery: &WebhookDelivery,
        timestamp: i64,
        signature: String,
    ) -> Answer {
        if !self.cfg.allow_private_targets
            && reqwest::Url::parse(url)
                .ok()
                .as_ref()
                .and_then(target::literal_ip)
                .is_some_and(|ip| !target::is_public(ip))
        {
            // Names go through the client's resolver; an IP literal is never resolved.
            return Answer::Failed(target::NOT_ALLOWED.to_string());
        }
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone());
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read a little of the body so a keep-alive connection can be reused; the
                // overall timeout bounds this too.
                let mut read = 0;
                while read < MAX_RESPONSE_BODY {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Answer::Status(status)
            }
            Err(e) => Answer::Failed(describe(&e, self.cfg.timeout)),
        }
    }

    /// The outcome of an answer to the attempt `delivery.attempts`.
    fn judge(&self, delivery: &WebhookDelivery, answer: Answer) -> DeliveryOutcome {
        let (status, error) = match answer {
            Answer::Status(s) if (200..300).contains(&s) => {
                return DeliveryOutcome::Delivered { status: s };
            }
            Answer::Status(410) => {
                return DeliveryOutcome::Dead {
                    status: Some(410),
                    error: "the receiver answered 410 Gone: endpoint disabled".into(),
                };
            }
            Answer::Status(s) => (Some(s), format!("the receiver answered HTTP {s}")),
            Answer::Failed(e) => (None, e),
        };
        match retry_after(&self.cfg.retry_schedule, delivery.attempts) {
            Some(wait) => DeliveryOutcome::Retry {
                status,
                error,
                next_attempt_at: now_ms()
                    .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            },
            None => DeliveryOutcome::Dead {
                status,
                error: format!("{error} (attempt {}, no retries left)", delivery.attempts),
            },
        }
    }

    /// 410 Gone: the receiver says the endpoint is no more. Disable it and audit that.
    async fn disable_gone(&self, delivery: &WebhookDelivery, url: &str) {
        let org = delivery.org_id;
        let reason = "the receiver answered 410 Gone";
        match self
            .ctl
            .store()
            .disable_webhook_endpoint(org, delivery.endpoint_id, reason)
            .await
        {
            Ok(true) => {
                tracing::warn!(%org, endpoint = %delivery.endpoint_id, "webhook endpoint disabled: the receiver answered 410 Gone");
                let details = json!({
                    "endpoint_id": delivery.endpoint_id,
                    "url": redact_url(url),
                    "reason": reason,
                    "delivery_id": delivery.id,
                    "event_id": delivery.event_id,
                });
                if let Err(e) = self
                    .ctl
                    .store()
                    .append_admin_event(
                        org,
                        WORKER_ACTOR,
                        "webhook.disable",
                        &delivery.endpoint_id.to_string(),
                        details,
                    )
                    .await
                {
                    tracing::error!(%org, endpoint = %delivery.endpoint_id, error = %e, "webhook endpoint disabled but not audited");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(%org, endpoint = %delivery.endpoint_id, error = %e, "cannot disable a webhook endpoint that answered 410 Gone");
            }
        }
    }
}

/// Why a request failed, without its URL (which may carry credentials) — and, for a
/// refused address, without anything about what it resolved to.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if target::is_not_allowed(e) {
        return target::NOT_ALLOWED.to_string();
    }
    if e.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut out = what.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `<dir>/<org>/<delivery>.json`.
pub fn dead_letter_path(dir: &Path, delivery: &WebhookDelivery) -> PathBuf {
    dir.join(delivery.org_id.to_string())
        .join(format!("{}.json", delivery.id))
}

/// Writes a dead delivery's file (atomically: a temp file renamed into place, synced). No
/// secret is in it: the payload, the ids, and how the attempts went.
async fn write_dead_letter(dir: &Path, delivery: &WebhookDelivery) {
    let path = dead_letter_path(dir, delivery);
    let record = json!({
        "delivery_id": delivery.id,
        "org_id": delivery.org_id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": format_rfc3339_ms(delivery.created_at),
        "dead_at": format_rfc3339_ms(now_ms()),
        "payload": serde_json::from_str::<serde_json::Value>(&delivery.payload)
            .unwrap_or_else(|_| serde_json::Value::String(delivery.payload.clone())),
        "redeliver": format!(
            "POST /api/v1/webhooks/{}/deliveries/{}/redeliver",
            delivery.endpoint_id, delivery.id
        ),
    });
    let text = match serde_json::to_vec_pretty(&record) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(delivery = %delivery.id, error = %e, "cannot encode a dead letter");
            return;
        }
    };
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        use std::io::Write as _;
        let parent = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        create_private_dir(&parent)?;
        let tmp = path.with_extension("json.tmp");
        // Left over from a crash: it may have other permissions; a fresh one is created.
        if let Err(e) = std::fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e);
        }
        let mut file = private_file(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(path)
    })
    .await;
    match result {
        Ok(Ok(path)) => {
            tracing::info!(delivery = %delivery.id, path = %path.display(), "dead letter written")
        }
        Ok(Err(e)) => {
            tracing::error!(delivery = %delivery.id, dir = %dir.display(), error = %e, "cannot write a dead letter (the delivery stays listed as dead)")
        }
        Err(e) => tracing::error!(delivery = %delivery.id, error = %e, "dead letter task failed"),
    }
}

/// Creates `dir` and any missing parents owner-only (`0700`). The org directory (the last
/// component, Gate's own) is made `0700` even if it existed; parents that existed keep
/// the operator's permissions.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(0o700);
        builder.create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Creates `path` (which must not exist) for writing, owner read/write only (`0600`).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Removes a delivery's dead letter, if it has one (after a successful redelivery).
async fn remove_dead_letter(dir: &Path, delivery: &WebhookDelivery) {
    let path = dead_letter_path(dir, delivery);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {
            tracing::info!(delivery = %delivery.id, "redelivered: dead letter removed")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(delivery = %delivery.id, path = %path.display(), error = %e, "cannot remove a redelivered dead letter")
        }
    }
}
