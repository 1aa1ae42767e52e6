//! The service layer: every operation of the control plane as a plain async function that
//! takes the shared [`Control`], an authenticated [`Caller`](crate::Caller) and typed
//! arguments, and returns a domain value or a [`ServiceError`].
//!
//! This is the only place where authorization and business rules live. The HTTP handlers
//! and the gRPC methods translate their wire formats into these calls and back, so the two
//! surfaces cannot drift apart: same checks, same order, same errors.
//!
//! Every successful admin change is appended to the org's audit log
//! ([`record_change`]); changes to what connectors enforce also wake config watchers
//! ([`Control::notify_change`]).

pub mod access_requests;
pub mod api_keys;
pub mod audit;
pub mod connector_api;
pub mod connectors;
pub mod groups;
pub mod identities;
pub mod orgs;
pub mod policies;
pub mod recordings;
pub mod resources;
pub mod webhooks;

use gate_store::{OrgId, StoreError};
use uuid::Uuid;

use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Maps a store failure to what the caller may learn. Database errors are logged here
/// (they can name tables or hosts) and reported only as "unavailable".
pub fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::NotFound { what } => ServiceError::NotFound(format!("{what} not found")),
        StoreError::Conflict { what } => ServiceError::Conflict(format!("conflict: {what}")),
        StoreError::Invalid(message) => ServiceError::InvalidArgument(message),
        StoreError::Migrate(e) => {
            tracing::error!(error = %e, "store migration error");
            ServiceError::Unavailable("the store is not available".into())
        }
        StoreError::Db(e) => {
            tracing::error!(error = %e, "store error");
            ServiceError::Unavailable("the store is not available".into())
        }
    }
}

/// Parses an id from a path or message field; a malformed id is the caller's mistake.
pub fn parse_id(what: &str, s: &str) -> ServiceResult<Uuid> {
    Uuid::parse_str(s.trim())
        .map_err(|_| ServiceError::invalid(format!("{what} is not a valid id")))
}

/// Appends an admin change to the org's audit log. `action` is `<area>.<verb>` (e.g.
/// `policy.activate`), `target` the id of the object changed; `details` adds its name and
/// the like, never a secret.
///
/// The change itself is already committed when this runs; should the audit write fail, the
/// caller still gets its result (undoing a committed change is not possible here), and the
/// failure is logged at error so an operator sees the gap.
pub async fn record_change(
    ctl: &Control,
    caller: &Caller,
    org: OrgId,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    if let Err(e) = ctl
        .store()
        .append_admin_event(org, &caller.actor, action, target, details)
        .await
    {
        tracing::error!(%org, action, actor = %caller.actor, error = %e, "admin change not audited");
    }
}
