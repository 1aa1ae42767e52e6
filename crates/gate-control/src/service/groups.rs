//! Groups: read with readonly, change with editor.

use gate_store::Group;
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::ServiceResult;
use crate::{Caller, Control};

pub async fn create_group(
    ctl: &Control,
    caller: &Caller,
    name: &str,
    description: &str,
) -> ServiceResult<Group> {
    let org = caller.require(Access::Write)?;
    let g = ctl
        .store()
        .create_group(org, name, description)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "group.create",
        &g.id.to_string(),
        json!({"group_id": g.id, "name": g.name}),
    )
    .await;
    ctl.notify_change();
    Ok(g)
}

pub async fn get_group(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<Group> {
    let org = caller.require(Access::Read)?;
    ctl.store().get_group(org, id).await.map_err(store_error)
}

pub async fn list_groups(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<Group>> {
    let org = caller.require(Access::Read)?;
    ctl.store().list_groups(org).await.map_err(store_error)
}

/// `None` keeps a field as it is.
pub async fn update_group(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    name: Option<&str>,
    description: Option<&str>,
) -> ServiceResult<Group> {
    let org = caller.require(Access::Write)?;
    let current = ctl.store().get_group(org, id).await.map_err(store_error)?;
    let name = name.unwrap_or(&current.name);
    let description = description.unwrap_or(&current.description);
    let g = ctl
        .store()
        .update_group(org, id, name, description)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "group.update",
        &g.id.to_string(),
        json!({"group_id": g.id, "name": g.name}),
    )
    .await;
    ctl.notify_change();
    Ok(g)
}

pub async fn delete_group(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<()> {
    let org = caller.require(Access::Write)?;
    ctl.store()
        .delete_group(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "group.delete",
        &id.to_string(),
        json!({"group_id": id}),
    )
    .await;
    ctl.notify_change();
    Ok(())
}
