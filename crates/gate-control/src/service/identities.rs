//! Identities: read with readonly, change with editor.

use gate_store::{Identity, IdentityInput};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// A token digest must be the 64-hex-digit SHA-256 form connectors compare against: a
/// plaintext token pasted here by mistake would otherwise be stored and never match.
fn validate(input: &mut IdentityInput) -> ServiceResult<()> {
    if let Some(d) = &input.token_sha256 {
        let d = d.trim().to_ascii_lowercase();
        if d.is_empty() {
            input.token_sha256 = None;
        } else if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ServiceError::invalid(
                "token_sha256 must be the SHA-256 of the token as 64 hex digits",
            ));
        } else {
            input.token_sha256 = Some(d);
        }
    }
    if let Some(e) = &input.email
        && e.trim().is_empty()
    {
        input.email = None;
    }
    for k in &input.ssh_public_keys {
        if !k.trim_start().starts_with("ssh-") && !k.trim_start().starts_with("ecdsa-") {
            return Err(ServiceError::invalid(
                "ssh_public_keys must be OpenSSH public keys (`ssh-ed25519 AAAA… comment`)",
            ));
        }
    }
    Ok(())
}

pub async fn create_identity(
    ctl: &Control,
    caller: &Caller,
    mut input: IdentityInput,
) -> ServiceResult<Identity> {
    let org = caller.require(Access::Write)?;
    validate(&mut input)?;
    let i = ctl
        .store()
        .create_identity(org, &input)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "identity.create",
        &i.id.to_string(),
        json!({"identity_id": i.id, "name": i.name}),
    )
    .await;
    ctl.notify_change();
    Ok(i)
}

pub async fn get_identity(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<Identity> {
    let org = caller.require(Access::Read)?;
    ctl.store().get_identity(org, id).await.map_err(store_error)
}

pub async fn list_identities(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<Identity>> {
    let org = caller.require(Access::Read)?;
    ctl.store().list_identities(org).await.map_err(store_error)
}

pub async fn update_identity(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut input: IdentityInput,
) -> ServiceResult<Identity> {
    let org = caller.require(Access::Write)?;
    validate(&mut input)?;
    let i = ctl
        .store()
        .update_identity(org, id, &input)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "identity.update",
        &i.id.to_string(),
        json!({"identity_id": i.id, "name": i.name, "disabled": i.disabled}),
    )
    .await;
    ctl.notify_change();
    Ok(i)
}

pub async fn delete_identity(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<()> {
    let org = caller.require(Access::Write)?;
    ctl.store()
        .delete_identity(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "identity.delete",
        &id.to_string(),
        json!({"identity_id": id}),
    )
    .await;
    ctl.notify_change();
    Ok(())
}
