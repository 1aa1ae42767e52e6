//! Slack approvals for just-in-time access requests.
//!
//! With a `slack:` section in `control.yaml` (see [`SlackConfig`] and
//! `docs/slack-jit-approvals.md`):
//!
//! - every new access request is posted with **Approve** and **Deny** buttons
//!   (`chat.postMessage`) to the first channel configured for it: the resource's
//!   (`resource_approval_channels`), the org's (`org_approval_channels`, by name or id),
//!   or `default_approval_channel`. Where it was posted is kept in the store
//!   (`slack_messages`).
//! - a click arrives at `POST /integrations/slack/actions` ([`actions`]): its signature is
//!   checked before anything is parsed, the clicker is mapped to an identity of the
//!   request's org (`user_mappings`, whose values name their org, or their Slack
//!   profile's email), and the decision goes through the same service function as the
//!   API's, which enforces the approver groups and refuses self-approval. Refusals are told to the clicker alone
//!   (an ephemeral message); nothing changes.
//! - every later transition — decided in Slack or elsewhere, expired, cancelled, revoked —
//!   re-renders the posted message (`chat.update`), so Slack never shows a stale
//!   "pending"; the requester gets a direct message when their request is approved,
//!   denied, expires or is revoked.
//!
//! # Never in the way
//!
//! The event sink only queues (a bounded queue; a full queue drops the event with a log
//! line). One worker task makes the Web API calls, in event order, retrying failures with
//! exponential backoff (`retry:`), so an outage delays messages but never blocks an API
//! call, and a request can always be decided through the API or the CLI. The worker ends
//! at shutdown. `chat.postMessage` is not idempotent: it is retried only when Slack surely
//! did not post (see [`Calls`]), so a timeout never makes a second approval message.

pub mod actions;
pub mod api;
pub mod blocks;
pub mod config;
pub mod signature;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::future::BoxFuture;
use gate_store::time::now_ms;
use gate_store::{AccessRequest, OrgId};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use config::SlackConfig;

use crate::Control;
use crate::events::{Event, EventKind, EventSink};
use api::{ApiResult, Posted, SlackApi};

/// The interactivity endpoint (Slack app → Interactivity & Shortcuts → Request URL).
pub const ACTIONS_PATH: &str = "/integrations/slack/actions";

/// The longest wait a `Retry-After` may impose on one call.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How many clicks are processed at once; more wait their turn.
const CONCURRENT_CLICKS: usize = 32;

/// Whether a Web API call may be repeated after any retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calls {
    /// Reads, `chat.update`, `conversations.open`: doing it twice is doing it once.
    Idempotent,
    /// `chat.postMessage`: doing it twice posts twice. Retried only after failures that
    /// show Slack did nothing (no connection, HTTP 429 or 5xx, `ratelimited`,
    /// `service_unavailable`, `request_timeout`) — not after a timeout or a lost
    /// connection once the request was sent, an unreadable answer, or Slack's
    /// `internal_error`/`fatal_error` (which Slack says may have partly succeeded).
    Posting,
}

/// What the worker does.
enum Job {
    /// An access transition: post, update, notify.
    Event(Arc<Event>),
    /// Re-render a request's message (after a click on an already-decided request).
    Refresh { org: OrgId, id: Uuid },
}

/// The running integration, shared by the worker and the interactivity route.
pub struct Slack {
    ctl: Arc<Control>,
    cfg: SlackConfig,
    api: SlackApi,
    jobs: mpsc::Sender<Job>,
    clicks: Arc<Semaphore>,
}

/// What [`start`] returns for the server to wire in.
pub struct Started {
    /// The interactivity route (empty when Slack is not configured).
    pub routes: Router,
    /// The worker, which ends at shutdown.
    pub worker: Option<JoinHandle<()>>,
}

/// Starts the integration when `cfg` is set and enabled: registers the event sink, spawns
/// the worker and returns the interactivity route.
pub fn start(ctl: Arc<Control>, cfg: Option<&SlackConfig>) -> anyhow::Result<Started> {
    let Some(cfg) = cfg.filter(|c| c.enabled) else {
        return Ok(Started {
            routes: Router::new(),
            worker: None,
        });
    };
    let api = SlackApi::new(
        &cfg.api_base_url,
        cfg.bot_token.clone(),
        cfg.request_timeout,
    )?;
    let capacity = usize::try_from(cfg.queue_size).unwrap_or(1000).max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let slack = Arc::new(Slack {
        ctl: ctl.clone(),
        cfg: cfg.clone(),
        api,
        jobs: tx.clone(),
        clicks: Arc::new(Semaphore::new(CONCURRENT_CLICKS)),
    });
    ctl.add_event_sink(Arc::new(SlackSink { jobs: tx }));
    let worker = tokio::spawn(run(slack.clone(), rx));
    tracing::info!(
        api = %cfg.api_base_url,
        path = ACTIONS_PATH,
        "Slack approvals on"
    );
    Ok(Started {
        routes: actions::router(slack),
        worker: Some(worker),
    })
}

/// The channel a new request for `resource` is posted to: the resource's channel, else the
/// org's (by name, then by id), else the default.
pub fn approval_channel<'a>(
    cfg: &'a SlackConfig,
    org: OrgId,
    org_name: Option<&str>,
    resource: &str,
) -> Option<&'a str> {
    cfg.resource_approval_channels
        .get(resource)
        .or_else(|| org_name.and_then(|n| cfg.org_approval_channels.get(n)))
        .or_else(|| cfg.org_approval_channels.get(&org.to_string()))
        .or(cfg.default_approval_channel.as_ref())
        .map(String::as_str)
}

/// Takes access events into the worker's queue, never waiting for it.
struct SlackSink {
    jobs: mpsc::Sender<Job>,
}

impl EventSink for SlackSink {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn accept<'a>(&'a self, _ctl: &'a Control, event: &'a Arc<Event>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !event.kind.is_access() || event.access_request.is_none() {
                return;
            }
            match self.jobs.try_send(Job::Event(event.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                    event = %event.id,
                    kind = %event.kind,
                    "slack: queue full, event not sent to Slack"
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        })
    }
}

/// The worker: one job at a time, in order, until shutdown.
async fn run(slack: Arc<Slack>, mut rx: mpsc::Receiver<Job>) {
    let mut shutdown = slack.ctl.subscribe_shutdown();
    loop {
        let job = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        // A job retrying through an outage is abandoned at shutdown.
        tokio::select! {
            _ = slack.handle(job) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    if !rx.is_empty() {
        tracing::warn!(
            left = rx.len(),
            "slack: shutting down with events not sent to Slack"
        );
    }
}

impl Slack {
    async fn handle(&self, job: Job) {
        match job {
            Job::Event(event) => self.handle_event(&event).await,
            Job::Refresh { org, id } => {
                if let Ok(r) = self.ctl.store().get_access_request(org, id).await {
                    self.refresh(org, &r).await;
                }
            }
        }
    }

    async fn handle_event(&self, event: &Event) {
        let Some(at_transition) = &event.access_request else {
            return;
        };
        let org = event.org_id;
        // The request as it is now (a later transition may have happened already): the
        // message shows the latest state; the requester's notice the transition's.
        let current = self
            .ctl
            .store()
            .get_access_request(org, at_transition.id)
            .await
            .unwrap_or_else(|_| at_transition.clone());
        match event.kind {
            EventKind::AccessRequested => self.post(org, &current).await,
            EventKind::AccessApproved
            | EventKind::AccessDenied
            | EventKind::AccessExpired
            | EventKind::AccessRevoked => {
                self.refresh(org, &current).await;
                self.notify_requester(org, at_transition).await;
            }
            EventKind::AccessCancelled => self.refresh(org, &current).await,
            _ => {}
        }
    }

    async fn org_name(&self, org: OrgId) -> String {
        match self.ctl.store().get_org(org).await {
            Ok(o) => o.name,
            Err(_) => org.to_string(),
        }
    }

    /// Calls Slack until it answers, the error is permanent, or the attempts run out.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        request: Uuid,
        calls: Calls,
        mut call: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let retry = &self.cfg.retry;
        let mut backoff = retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let e = match call().await {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            if !e.retryable {
                tracing::error!(%request, error = %e, "slack: {what} failed; not retrying");
                return None;
            }
            if calls == Calls::Posting && e.maybe_done {
                tracing::error!(
                    %request,
                    error = %e,
                    attempts = attempt,
                    "slack: {what} failed after the request reached Slack, which may have \
                     posted anyway; giving up without retrying, so as not to post twice"
                );
                return None;
            }
            if attempt >= retry.max_attempts {
                tracing::error!(%request, error = %e, attempts = attempt, "slack: {what} failed; giving up");
                return None;
            }
            let wait = e.retry_after.unwrap_or(backoff).min(MAX_RETRY_AFTER);
            tracing::warn!(%request, error = %e, attempt, retry_in = ?wait, "slack: {what} failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(retry.max_backoff);
            attempt += 1;
        }
    }

    /// Posts a new request to its approval channel and remembers where.
    async fn post(&self, org: OrgId, r: &AccessRequest) {
        match self.ctl.store().get_slack_message(org, r.id).await {
            Ok(Some(_)) => return self.refresh(org, r).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(request = %r.id, error = %e, "slack: cannot read the message record")
            }
        }
        let org_name = self.org_name(org).await;
        let Some(channel) = approval_channel(&self.cfg, org, Some(&org_name), &r.resource) else {
            tracing::debug!(request = %r.id, resource = %r.resource, "slack: no approval channel for this request");
            return;
        };
        let message = blocks::request_message(org, &org_name, r);
        let Some(posted) = self
            .retry("chat.postMessage", r.id, Calls::Posting, || {
                self.api.post_message(channel, &message)
            })
            .await
        else {
            return;
        };
        tracing::info!(request = %r.id, channel = %posted.channel, ts = %posted.ts, "slack: access request posted");
        match self
            .ctl
            .store()
            .record_slack_message(org, r.id, &posted.channel, &posted.ts, now_ms())
            .await
        {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(request = %r.id, error = %e, "slack: cannot record the posted message; it will not be updated")
            }
        }
        // Decided while the post was being retried: the decision's own update may have
        // found no message yet, so bring the one just posted up to date.
        if let Ok(now) = self.ctl.store().get_access_request(org, r.id).await
            && now.status != r.status
        {
            self.refresh(org, &now).await;
        }
    }

    /// Re-renders the request's message, when it was posted.
    async fn refresh(&self, org: OrgId, r: &AccessRequest) {
        let at = match self.ctl.store().get_slack_message(org, r.id).await {
            Ok(Some(m)) => Posted {
                channel: m.channel,
                ts: m.ts,
            },
            Ok(None) => return,
            Err(e) => {
                tracing::error!(request = %r.id, error = %e, "slack: cannot read the message record");
                return;
            }
        };
        let org_name = self.org_name(org).await;
        let message = blocks::request_message(org, &org_name, r);
        if self
            .retry("chat.update", r.id, Calls::Idempotent, || {
                self.api.update_message(&at, &message)
            })
            .await
            .is_some()
        {
            tracing::info!(request = %r.id, status = %r.status.as_str(), "slack: message updated");
        }
    }

    /// Tells the requester by direct message what became of their request.
    async fn notify_requester(&self, org: OrgId, r: &AccessRequest) {
        let Some(message) = blocks::requester_notice(r) else {
            return;
        };
        let Some(user) = self.requester_user(org, r).await else {
            tracing::debug!(request = %r.id, requester = %r.requester, "slack: requester not found in Slack; no direct message");
            return;
        };
        let Some(channel) = self
            .retry("conversations.open", r.id, Calls::Idempotent, || {
                self.api.open_dm(&user)
            })
            .await
        else {
            return;
        };
        self.retry("chat.postMessage (DM)", r.id, Calls::Posting, || {
            self.api.post_message(&channel, &message)
        })
        .await;
    }

    /// The requester's Slack user id: `requester_mappings` (keys of this org only), a
    /// Slack user id as the requester, or `users.lookupByEmail` with the identity's email
    /// (or the requester, when it is an email).
    async fn requester_user(&self, org: OrgId, r: &AccessRequest) -> Option<String> {
        let org_name = self.ctl.store().get_org(org).await.ok().map(|o| o.name);
        match self
            .cfg
            .mapped_requester(&r.requester, org, org_name.as_deref())
        {
            Ok(Some(id)) => return Some(id.to_string()),
            Ok(None) => {}
            Err(config::Ambiguous) => {
                tracing::warn!(request = %r.id, requester = %r.requester, "slack: requester_mappings maps the requester to different Slack users by org name and by org id; no direct message");
                return None;
            }
        }
        if config::looks_like_user_id(&r.requester) {
            return Some(r.requester.clone());
        }
        let email = match self
            .ctl
            .store()
            .get_identity_by_name(org, &r.requester)
            .await
        {
            Ok(identity) => identity.email.filter(|e| !e.trim().is_empty()),
            Err(_) => None,
        }
        .or_else(|| r.requester.contains('@').then(|| r.requester.clone()))?;
        self.retry("users.lookupByEmail", r.id, Calls::Idempotent, || {
            self.api.lookup_by_email(email.trim())
        })
        .await
        .flatten()
    }

    /// The identity a Slack user acts as in `org`: their `user_mappings` entry for this
    /// org (by its name or id; an entry for another org never counts), or the one enabled
    /// identity of `org` whose email is the user's Slack profile email.
    pub(crate) async fn clicker_identity(
        &self,
        org: OrgId,
        user: &str,
    ) -> Result<Option<String>, String> {
        let org_name = match self.ctl.store().get_org(org).await {
            Ok(o) => o.name,
            Err(e) => {
                tracing::warn!(%org, error = %e, "slack: cannot load the organization");
                return Err(
                    "Gate could not look up this request's organization; try again.".into(),
                );
            }
        };
        match self.cfg.mapped_identity(user, org, Some(&org_name)) {
            Ok(Some(name)) => return Ok(Some(name.to_string())),
            Ok(None) => {}
            Err(config::Ambiguous) => {
                tracing::warn!(user, %org, "slack: user_mappings maps the clicker to different identities by org name and by org id");
                return Err(
                    "You are not allowed to decide this access request: your Slack \
                            account is mapped to more than one Gate identity in this \
                            organization (slack.user_mappings)."
                        .into(),
                );
            }
        }
        if !self.cfg.match_email {
            return Ok(None);
        }
        let email = match self.api.user_email(user).await {
            Ok(Some(email)) => email,
            Ok(None) => return Ok(None),
            Err(e) if e.slack_error.as_deref() == Some("user_not_found") => return Ok(None),
            Err(e) => {
                tracing::warn!(user, error = %e, "slack: users.info failed");
                return Err("Gate could not read your Slack profile; try again".into());
            }
        };
        let identities = self
            .ctl
            .store()
            .list_identities(org)
            .await
            .map_err(|_| "Gate could not look up identities; try again".to_string())?;
        let mut matching = identities.into_iter().filter(|i| {
            !i.disabled
                && i.email
                    .as_deref()
                    .is_some_and(|e| e.trim().eq_ignore_ascii_case(&email))
        });
        match (matching.next(), matching.next()) {
            (Some(one), None) => Ok(Some(one.name)),
            (Some(_), Some(_)) => {
                tracing::warn!(user, "slack: several identities share the clicker's email");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Asks the worker to re-render a request's message.
    pub(crate) fn queue_refresh(&self, org: OrgId, id: Uuid) {
        let _ = self.jobs.try_send(Job::Refresh { org, id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> SlackConfig {
        yaml_serde::from_str(&format!("bot_token: x\nsigning_secret: y\n{yaml}")).unwrap()
    }

    #[test]
    fn channel_precedence() {
        let org = OrgId::new();
        let c = cfg(&format!(
            "default_approval_channel: CDEF\n\
             org_approval_channels: {{acme: CACME, \"{org}\": CBYID}}\n\
             resource_approval_channels: {{prod-db: CPROD}}\n"
        ));
        // Resource first, for any org.
        assert_eq!(
            approval_channel(&c, org, Some("acme"), "prod-db"),
            Some("CPROD")
        );
        assert_eq!(
            approval_channel(&c, OrgId::new(), Some("other"), "prod-db"),
            Some("CPROD")
        );
        // Then the org by name, then by id.
        assert_eq!(
            approval_channel(&c, org, Some("acme"), "staging-db"),
            Some("CACME")
        );
        assert_eq!(
            approval_channel(&c, org, Some("renamed"), "staging-db"),
            Some("CBYID")
        );
        // Then the default.
        assert_eq!(
            approval_channel(&c, OrgId::new(), Some("other"), "staging-db"),
            Some("CDEF")
        );
        let c = cfg("org_approval_channels: {acme: CACME}\n");
        assert_eq!(approval_channel(&c, OrgId::new(), Some("other"), "x"), None);
    }
}
