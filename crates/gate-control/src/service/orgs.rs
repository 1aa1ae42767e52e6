//! Organizations. Creating and deleting one needs the system key; an org key sees and (as
//! admin) renames only its own org.

use gate_store::{Org, OrgId};
use serde_json::json;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Who the caller is, as `WhoAmI` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WhoAmI {
    pub org_id: Option<OrgId>,
    pub role: String,
    pub actor: String,
}

pub fn whoami(caller: &Caller) -> WhoAmI {
    WhoAmI {
        org_id: caller.org_id,
        role: caller.role_name().to_string(),
        actor: caller.actor.clone(),
    }
}

pub async fn create_org(ctl: &Control, caller: &Caller, name: &str) -> ServiceResult<Org> {
    caller.require_system()?;
    let org = ctl.store().create_org(name).await.map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org.id,
        "organization.create",
        &org.id.to_string(),
        json!({"org_id": org.id, "name": org.name}),
    )
    .await;
    Ok(org)
}

/// The system key may read any org; an org key only its own (another org is "not found",
/// exactly as if it did not exist).
pub async fn get_org(ctl: &Control, caller: &Caller, id: OrgId) -> ServiceResult<Org> {
    if !caller.is_system() {
        let own = caller.require(Access::Read)?;
        if own != id {
            return Err(ServiceError::not_found(&format!("org {id}")));
        }
    }
    ctl.store().get_org(id).await.map_err(store_error)
}

/// Every org for the system key; the caller's own org otherwise.
pub async fn list_orgs(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<Org>> {
    if caller.is_system() {
        return ctl.store().list_orgs().await.map_err(store_error);
    }
    let own = caller.require(Access::Read)?;
    Ok(vec![ctl.store().get_org(own).await.map_err(store_error)?])
}

pub async fn rename_org(
    ctl: &Control,
    caller: &Caller,
    id: OrgId,
    name: &str,
) -> ServiceResult<Org> {
    if !caller.is_system() {
        let own = caller.require(Access::Admin)?;
        if own != id {
            return Err(ServiceError::not_found(&format!("org {id}")));
        }
    }
    let org = ctl
        .store()
        .rename_org(id, name)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org.id,
        "organization.rename",
        &org.id.to_string(),
        json!({"org_id": org.id, "name": org.name}),
    )
    .await;
    Ok(org)
}

pub async fn delete_org(ctl: &Control, caller: &Caller, id: OrgId) -> ServiceResult<()> {
    caller.require_system()?;
    ctl.store().delete_org(id).await.map_err(store_error)?;
    // The audit log outlives the org (it has no foreign key), so the deletion is recorded
    // in the deleted org's own log.
    record_change(
        ctl,
        caller,
        id,
        "organization.delete",
        &id.to_string(),
        json!({"org_id": id}),
    )
    .await;
    ctl.notify_change();
    Ok(())
}
