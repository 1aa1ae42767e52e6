//! Access requests (just-in-time access: a person asks for a resource, an approver grants
//! it for a while). They do not exist yet — the JIT access issue adds the store tables,
//! the approval flow and the real element type. Until then this area answers reads with an
//! empty list, so surfaces that already show it (the MCP `list_access_requests` tool) keep
//! their shape and their role check when the feature lands.

use crate::auth::Access;
use crate::error::ServiceResult;
use crate::{Caller, Control};

/// What surfaces say next to the empty list, so nobody mistakes it for "no pending requests".
pub const NOT_IMPLEMENTED_NOTE: &str = "Access requests are not implemented in Gate yet (they \
    come with just-in-time access); this list is always empty for now.";

/// The org's access requests: always empty until JIT access exists. Needs readonly, like
/// every other read, so the answer never depends on whether the feature exists.
pub async fn list_access_requests(
    _ctl: &Control,
    caller: &Caller,
) -> ServiceResult<Vec<serde_json::Value>> {
    caller.require(Access::Read)?;
    Ok(Vec::new())
}
