//! Resources: read with readonly, change with editor.

use gate_store::{Resource, ResourceInput};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Checks what the store treats as opaque but connectors rely on.
fn validate(input: &ResourceInput) -> ServiceResult<()> {
    const PROTOCOLS: [&str; 6] = ["postgres", "mysql", "mongodb", "ssh", "http", "mcp"];
    if !PROTOCOLS.contains(&input.protocol.as_str()) {
        return Err(ServiceError::invalid(format!(
            "unknown protocol {:?} (expected one of {})",
            input.protocol,
            PROTOCOLS.join(", ")
        )));
    }
    if input.host.trim().is_empty() {
        return Err(ServiceError::invalid("resource host is empty"));
    }
    if input.port == 0 {
        return Err(ServiceError::invalid("resource port must be 1-65535"));
    }
    if !(input.spec.is_object() || input.spec.is_null()) {
        return Err(ServiceError::invalid("resource spec must be a JSON object"));
    }
    Ok(())
}

pub async fn create_resource(
    ctl: &Control,
    caller: &Caller,
    input: ResourceInput,
) -> ServiceResult<Resource> {
    let org = caller.require(Access::Write)?;
    validate(&input)?;
    let r = ctl
        .store()
        .create_resource(org, &input)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "resource.create",
        &r.id.to_string(),
        json!({"resource_id": r.id, "name": r.name}),
    )
    .await;
    ctl.notify_change();
    Ok(r)
}

pub async fn get_resource(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<Resource> {
    let org = caller.require(Access::Read)?;
    ctl.store().get_resource(org, id).await.map_err(store_error)
}

pub async fn list_resources(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<Resource>> {
    let org = caller.require(Access::Read)?;
    ctl.store().list_resources(org).await.map_err(store_error)
}

pub async fn update_resource(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    input: ResourceInput,
) -> ServiceResult<Resource> {
    let org = caller.require(Access::Write)?;
    validate(&input)?;
    let r = ctl
        .store()
        .update_resource(org, id, &input)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "resource.update",
        &r.id.to_string(),
        json!({"resource_id": r.id, "name": r.name}),
    )
    .await;
    ctl.notify_change();
    Ok(r)
}

pub async fn delete_resource(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<()> {
    let org = caller.require(Access::Write)?;
    ctl.store()
        .delete_resource(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "resource.delete",
        &id.to_string(),
        json!({"resource_id": id}),
    )
    .await;
    ctl.notify_change();
    Ok(())
}
