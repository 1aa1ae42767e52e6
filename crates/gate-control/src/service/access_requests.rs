//! Just-in-time access: a person asks for a resource for a while, an approver grants (or
//! denies) it, the grant expires or is revoked.
//!
//! Who acts is a person. Signed in with their own Gate token (`gate login`), they act as
//! themselves; an editor (or admin) key, or the system key, may instead vouch for an
//! identity named in the call — the requester of a new request, the approver of a
//! decision, the requester who cancels ([`Caller::acting_identity`]). The approval rules
//! decide whether that identity may decide: its groups (from the identities table) must
//! meet the resource's approver groups (or the org's default ones), and nobody approves
//! their own request. Every transition is an admin audit event with who and why.
//!
//! Transitions change what connectors enforce (active grants are in the config snapshot),
//! so each one wakes config watchers, and each is published as an [`Event`] to the
//! integrations (Slack, webhooks). [`spawn_expiry`] runs the expiry sweep.

use std::sync::Arc;
use std::time::Duration;

use gate_store::time::now_ms;
use gate_store::{
    AccessRequest, AccessRequestFilter, AccessRequestInput, AccessStatus, ApprovalRules, OrgId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::events::{Event, EventKind};
use crate::{Caller, Control};

/// The actor named in expiry events.
pub const EXPIRY_ACTOR: &str = "access-expiry";
/// How often the expiry sweep runs.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(2);

/// Filters of a list call. `mine` and `to_approve` name identities.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// Requests filed by this identity.
    #[serde(default)]
    pub mine: Option<String>,
    #[serde(default)]
    pub status: Option<AccessStatus>,
    #[serde(default)]
    pub resource: Option<String>,
    /// Pending requests this identity may decide (not its own).
    #[serde(default)]
    pub to_approve: Option<String>,
}

/// Who acts on a request and why. For `cancel`, `approver` names the requester
/// (`identity` and `requester` are accepted as aliases).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Empty means the caller, when the caller is a person signed in with their token.
    #[serde(default, alias = "identity", alias = "requester")]
    pub approver: String,
    #[serde(default)]
    pub reason: String,
}

fn event(r: &AccessRequest) -> serde_json::Value {
    json!({
        "access_request_id": r.id,
        "requester": r.requester,
        "resource": r.resource,
        "reason": r.reason,
        "requested_duration_s": r.requested_duration_s,
        "scopes": r.scopes,
        "status": r.status,
        "decided_by": r.decided_by,
        "decision_reason": r.decision_reason,
        "expires_at": r.expires_at,
        "revoked_by": r.revoked_by,
        "revoke_reason": r.revoke_reason,
    })
}

async fn rules(ctl: &Control, org: OrgId) -> ServiceResult<ApprovalRules> {
    ctl.store()
        .get_approval_rules(org)
        .await
        .map_err(store_error)
}

/// Whether `identity` may decide requests for `resource` under `rules`: an enabled
/// identity in one of the resource's approver groups.
async fn may_approve(
    ctl: &Control,
    org: OrgId,
    rules: &ApprovalRules,
    identity: &str,
    resource: &str,
) -> ServiceResult<bool> {
    let groups = rules.approver_groups(resource);
    if groups.is_empty() {
        return Ok(false);
    }
    let who = match ctl.store().get_identity_by_name(org, identity).await {
        Ok(i) => i,
        Err(gate_store::StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(store_error(e)),
    };
    Ok(!who.disabled && who.groups.iter().any(|g| groups.contains(g)))
}

async fn require_approver(
    ctl: &Control,
    org: OrgId,
    rules: &ApprovalRules,
    request: &AccessRequest,
    approver: &str,
) -> ServiceResult<()> {
    if approver == request.requester {
        return Err(ServiceError::denied(
            "self-approval is not allowed: another approver must decide this request",
        ));
    }
    if !may_approve(ctl, org, rules, approver, &request.resource).await? {
        return Err(ServiceError::denied(format!(
            "identity {approver:?} may not decide access requests for resource {:?} \
             (not in an approver group)",
            request.resource
        )));
    }
    Ok(())
}

/// Publishes what happened to `r` to the integrations (synchronously: see
/// [`Control::publish`]).
fn publish(ctl: &Control, org: OrgId, kind: EventKind, r: &AccessRequest) {
    ctl.publish(Event::access(kind, org, r, None));
}

/// Files a request for the acting identity (which must exist and be enabled) on an
/// existing resource.
pub async fn create_access_request(
    ctl: &Control,
    caller: &Caller,
    mut input: AccessRequestInput,
) -> ServiceResult<AccessRequest> {
    let (org, requester) = caller.acting_identity(&input.requester)?;
    input.requester = requester;
    gate_core::GrantScope::from_json(&input.scopes)
        .map_err(|e| ServiceError::invalid(format!("scopes: {e}")))?;
    let requester = ctl
        .store()
        .get_identity_by_name(org, &input.requester)
        .await
        .map_err(store_error)?;
    if requester.disabled {
        return Err(ServiceError::denied(format!(
            "identity {:?} is disabled",
            requester.name
        )));
    }
    ctl.store()
        .get_resource_by_name(org, &input.resource)
        .await
        .map_err(store_error)?;
    let rules = rules(ctl, org).await?;
    let r = ctl
        .store()
        .create_access_request(org, &input, rules.pending_ttl_s, now_ms())
        .await
        .map_err(store_error)?;
    publish(ctl, org, EventKind::AccessRequested, &r);
    record_change(
        ctl,
        caller,
        org,
        "access_request.create",
        &r.id.to_string(),
        event(&r),
    )
    .await;
    Ok(r)
}

/// One request. A person sees their own requests and those they may decide; keys need
/// readonly.
pub async fn get_access_request(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<AccessRequest> {
    let Some(me) = caller.identity() else {
        let org = caller.require(Access::Read)?;
        return load(ctl, org, id).await;
    };
    let org = caller.org()?;
    let r = load(ctl, org, id).await?;
    let rules = rules(ctl, org).await?;
    if r.requester == me || may_approve(ctl, org, &rules, me, &r.resource).await? {
        Ok(r)
    } else {
        // Not "forbidden": whether someone else's request exists is not theirs to learn.
        Err(ServiceError::NotFound("access request not found".into()))
    }
}

/// The org's requests, newest first, narrowed by `filter`. Keys need readonly. A person
/// may ask only about themselves (`mine`, `to_approve`); with neither filter they get their
/// own requests and every request they may decide.
pub async fn list_access_requests(
    ctl: &Control,
    caller: &Caller,
    mut filter: ListFilter,
) -> ServiceResult<Vec<AccessRequest>> {
    let mut mine_or_decidable = None;
    let org = match caller.identity() {
        None => caller.require(Access::Read)?,
        Some(me) => {
            for named in [&filter.mine, &filter.to_approve].into_iter().flatten() {
                if named != me {
                    return Err(ServiceError::denied(format!(
                        "signed in as {me:?}: you may list only your own requests and those \
                         you may decide"
                    )));
                }
            }
            if filter.mine.is_none() && filter.to_approve.is_none() {
                mine_or_decidable = Some(me.to_string());
            }
            caller.org()?
        }
    };
    if let Some(me) = mine_or_decidable {
        filter.mine = None;
        let list = list_unchecked(ctl, org, &filter).await?;
        let rules = rules(ctl, org).await?;
        let mut out = Vec::new();
        for r in list {
            if r.requester == me || may_approve(ctl, org, &rules, &me, &r.resource).await? {
                out.push(r);
            }
        }
        return Ok(out);
    }
    list_unchecked(ctl, org, &filter).await
}

async fn list_unchecked(
    ctl: &Control,
    org: OrgId,
    filter: &ListFilter,
) -> ServiceResult<Vec<AccessRequest>> {
    let store_filter = AccessRequestFilter {
        requester: filter.mine.clone(),
        status: if filter.to_approve.is_some() {
            Some(AccessStatus::Pending)
        } else {
            filter.status
        },
        resource: filter.resource.clone(),
    };
    if filter.to_approve.is_some() && filter.status.is_some_and(|s| s != AccessStatus::Pending) {
        return Ok(Vec::new());
    }
    let list = ctl
        .store()
        .list_access_requests(org, &store_filter)
        .await
        .map_err(store_error)?;
    let Some(approver) = filter.to_approve.clone() else {
        return Ok(list);
    };
    let rules = rules(ctl, org).await?;
    let mut out = Vec::new();
    for r in list {
        if r.requester != approver && may_approve(ctl, org, &rules, &approver, &r.resource).await? {
            out.push(r);
        }
    }
    Ok(out)
}

async fn load(ctl: &Control, org: OrgId, id: Uuid) -> ServiceResult<AccessRequest> {
    ctl.store()
        .get_access_request(org, id)
        .await
        .map_err(store_error)
}

async fn transitioned(
    ctl: &Control,
    caller: &Caller,
    org: OrgId,
    kind: EventKind,
    r: AccessRequest,
    d: &Decision,
) -> AccessRequest {
    let mut details = event(&r);
    details["by"] = json!(d.approver);
    details["why"] = json!(d.reason);
    let action = match kind {
        EventKind::AccessApproved => "access_request.approve",
        EventKind::AccessDenied => "access_request.deny",
        EventKind::AccessCancelled => "access_request.cancel",
        EventKind::AccessRevoked => "access_request.revoke",
        _ => "access_request.update",
    };
    // Before the first `.await`: the transition has committed (see [`Control::publish`]).
    ctl.notify_change();
    publish(ctl, org, kind, &r);
    record_change(ctl, caller, org, action, &r.id.to_string(), details).await;
    r
}

/// The org and the acting identity of a decision, which becomes `d.approver`.
fn acting(caller: &Caller, d: &mut Decision) -> ServiceResult<OrgId> {
    let (org, who) = caller.acting_identity(&d.approver)?;
    d.approver = who;
    Ok(org)
}

/// Approves a pending request: the approver must be in an approver group for the
/// resource and not the requester; the grant lasts the requested duration, capped by the
/// resource's maximum.
pub async fn approve_access_request(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut d: Decision,
) -> ServiceResult<AccessRequest> {
    let org = acting(caller, &mut d)?;
    let request = load(ctl, org, id).await?;
    let rules = rules(ctl, org).await?;
    require_approver(ctl, org, &rules, &request, &d.approver).await?;
    let r = ctl
        .store()
        .approve_access_request(
            org,
            id,
            &d.approver,
            &d.reason,
            now_ms(),
            rules.max_duration_s(&request.resource),
        )
        .await
        .map_err(store_error)?;
    Ok(transitioned(ctl, caller, org, EventKind::AccessApproved, r, &d).await)
}

/// Denies a pending request; same approver rules as approving.
pub async fn deny_access_request(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut d: Decision,
) -> ServiceResult<AccessRequest> {
    let org = acting(caller, &mut d)?;
    let request = load(ctl, org, id).await?;
    let rules = rules(ctl, org).await?;
    require_approver(ctl, org, &rules, &request, &d.approver).await?;
    let r = ctl
        .store()
        .deny_access_request(org, id, &d.approver, &d.reason, now_ms())
        .await
        .map_err(store_error)?;
    Ok(transitioned(ctl, caller, org, EventKind::AccessDenied, r, &d).await)
}

/// Cancels a pending request; `d.approver` must be its requester.
pub async fn cancel_access_request(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut d: Decision,
) -> ServiceResult<AccessRequest> {
    let org = acting(caller, &mut d)?;
    let request = load(ctl, org, id).await?;
    if request.requester != d.approver {
        return Err(ServiceError::denied(
            "only the requester may cancel an access request",
        ));
    }
    let r = ctl
        .store()
        .cancel_access_request(org, id, &d.approver, &d.reason, now_ms())
        .await
        .map_err(store_error)?;
    Ok(transitioned(ctl, caller, org, EventKind::AccessCancelled, r, &d).await)
}

/// Revokes an active grant: an approver for the resource or the grantee may.
pub async fn revoke_access_request(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut d: Decision,
) -> ServiceResult<AccessRequest> {
    let org = acting(caller, &mut d)?;
    let request = load(ctl, org, id).await?;
    let rules = rules(ctl, org).await?;
    if request.requester != d.approver
        && !may_approve(ctl, org, &rules, &d.approver, &request.resource).await?
    {
        return Err(ServiceError::denied(format!(
            "identity {:?} may not revoke grants for resource {:?} (not in an approver group)",
            d.approver, request.resource
        )));
    }
    let r = ctl
        .store()
        .revoke_access_request(org, id, &d.approver, &d.reason, now_ms())
        .await
        .map_err(store_error)?;
    Ok(transitioned(ctl, caller, org, EventKind::AccessRevoked, r, &d).await)
}

pub async fn get_approval_rules(ctl: &Control, caller: &Caller) -> ServiceResult<ApprovalRules> {
    let org = caller.require(Access::Read)?;
    rules(ctl, org).await
}

/// Replaces the org's approval rules. Deciding who may grant access is an admin matter.
pub async fn set_approval_rules(
    ctl: &Control,
    caller: &Caller,
    rules: ApprovalRules,
) -> ServiceResult<ApprovalRules> {
    let org = caller.require(Access::Admin)?;
    ctl.store()
        .set_approval_rules(org, &rules)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "approval_rules.update",
        "approval_rules",
        serde_json::to_value(&rules).unwrap_or_default(),
    )
    .await;
    Ok(rules)
}

/// One expiry sweep over every org at `now`: expires pending requests past their pending
/// TTL and grants past `expires_at`, audits each (actor [`EXPIRY_ACTOR`]) and wakes
/// watchers if anything changed. Returns how many requests expired.
pub async fn expire_once(ctl: &Control, now: i64) -> usize {
    let orgs = match ctl.store().list_orgs().await {
        Ok(orgs) => orgs,
        Err(e) => {
            tracing::error!(error = %e, "access expiry: cannot list organizations");
            return 0;
        }
    };
    let mut total = 0;
    for org in orgs {
        let ids = match ctl.store().expire_due_access_requests(org.id, now).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(org = %org.id, error = %e, "access expiry failed");
                continue;
            }
        };
        for id in &ids {
            let request = ctl.store().get_access_request(org.id, *id).await.ok();
            let details = match &request {
                Some(r) => event(r),
                None => json!({"access_request_id": id, "status": "expired"}),
            };
            if let Err(e) = ctl
                .store()
                .append_admin_event(
                    org.id,
                    EXPIRY_ACTOR,
                    "access_request.expire",
                    &id.to_string(),
                    details,
                )
                .await
            {
                tracing::error!(org = %org.id, %id, error = %e, "access expiry not audited");
            }
            if let Some(r) = &request {
                publish(ctl, org.id, EventKind::AccessExpired, r);
            }
        }
        total += ids.len();
    }
    if total > 0 {
        ctl.notify_change();
    }
    total
}

/// Starts the expiry sweep (every [`EXPIRY_INTERVAL`]); it ends at shutdown.
pub fn spawn_expiry(ctl: Arc<Control>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut shutdown = ctl.subscribe_shutdown();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            expire_once(&ctl, now_ms()).await;
        }
    })
}
