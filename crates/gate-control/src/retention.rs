//! Audit retention: the only thing that ever removes audit events.
//!
//! With `audit: {retention: 90d}` a background task deletes, for every organization, the
//! events whose own `time` is older than now − retention ([`Store::purge_audit_before`]),
//! shortly after start and then every `audit.purge_interval` (an hour by default). Each
//! purge that deleted something is itself an admin event in that org's log (actor
//! `retention`, action `audit.purge`, with the cutoff and the count), so the log shows
//! where its own history was cut, and why; that event is new, so the purge never removes
//! its own record.
//!
//! Several control-plane processes on one database may all run the job: a purge that
//! finds nothing to delete records nothing, so they do not fill the log with duplicates.
//!
//! [`Store::purge_audit_before`]: gate_store::Store::purge_audit_before

use std::sync::Arc;
use std::time::Duration;

use gate_store::OrgId;
use gate_store::time::{format_rfc3339_ms, now_ms};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::Control;

/// The actor named in purge events.
pub const ACTOR: &str = "retention";
/// The action of purge events.
pub const ACTION: &str = "audit.purge";

/// The first purge waits this long after start (or one interval, if shorter), so a
/// restarting control plane serves requests before it starts a possibly large delete.
const FIRST_RUN_DELAY: Duration = Duration::from_secs(10);

/// One org's share of a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub org: OrgId,
    pub deleted: u64,
}

/// Starts the job; it ends when the control plane shuts down ([`Control::begin_shutdown`]).
pub fn spawn(ctl: Arc<Control>, retention: Duration, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut shutdown = ctl.subscribe_shutdown();
        let mut wait = interval.min(FIRST_RUN_DELAY);
        tracing::info!(
            retention_s = retention.as_secs(),
            interval = %humantime::format_duration(interval),
            "audit retention enabled"
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A closed channel (control dropped) ends the job too.
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            purge_once(&ctl, retention, now_ms()).await;
            wait = interval;
        }
    })
}

/// Purges every org's events older than `now_ms − retention` and audits each purge that
/// deleted something. A failure for one org is logged and the others still run: a job
/// that gave up at the first error would let the rest grow unbounded.
pub async fn purge_once(ctl: &Control, retention: Duration, now_ms: i64) -> Vec<Purged> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(retention_ms);
    let orgs = match ctl.store().list_orgs().await {
        Ok(orgs) => orgs,
        Err(e) => {
            tracing::error!(error = %e, "audit retention: cannot list organizations");
            return Vec::new();
        }
    };
    let mut purged = Vec::new();
    for org in orgs {
        let deleted = match ctl.store().purge_audit_before(org.id, cutoff).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(org = %org.id, error = %e, "audit retention: purge failed");
                continue;
            }
        };
        if deleted == 0 {
            continue;
        }
        tracing::info!(org = %org.id, deleted, cutoff = %format_rfc3339_ms(cutoff), "audit retention: purged");
        let details = json!({
            "cutoff": format_rfc3339_ms(cutoff),
            "cutoff_ms": cutoff,
            "deleted": deleted,
            // Seconds, not humantime text: 90d would read "2months 29days 13h…".
            "retention_s": retention.as_secs(),
        });
        if let Err(e) = ctl
            .store()
            .append_admin_event(org.id, ACTOR, ACTION, "audit", details)
            .await
        {
            tracing::error!(org = %org.id, deleted, error = %e, "audit retention: purge not audited");
        }
        purged.push(Purged {
            org: org.id,
            deleted,
        });
    }
    purged
}
