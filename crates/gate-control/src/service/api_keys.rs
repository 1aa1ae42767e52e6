//! Org API keys (admin). The secret is returned once, at creation.

use gate_store::{ApiKey, ApiKeyRole};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// A new key and its secret (shown once; only its SHA-256 is stored).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    pub secret: String,
}

pub fn parse_role(role: &str) -> ServiceResult<ApiKeyRole> {
    role.trim().parse().map_err(|_| {
        ServiceError::invalid(format!(
            "unknown role {role:?} (expected readonly, editor, admin or connector)"
        ))
    })
}

pub async fn create_api_key(
    ctl: &Control,
    caller: &Caller,
    name: &str,
    role: &str,
) -> ServiceResult<CreatedApiKey> {
    let org = caller.require(Access::Admin)?;
    let role = parse_role(role)?;
    let (api_key, secret) = ctl
        .store()
        .create_api_key(org, name, role)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "api_key.create",
        &api_key.id.to_string(),
        json!({"api_key_id": api_key.id, "name": api_key.name, "role": api_key.role}),
    )
    .await;
    Ok(CreatedApiKey { api_key, secret })
}

pub async fn list_api_keys(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<ApiKey>> {
    let org = caller.require(Access::Admin)?;
    ctl.store().list_api_keys(org).await.map_err(store_error)
}

pub async fn revoke_api_key(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<ApiKey> {
    let org = caller.require(Access::Admin)?;
    let key = ctl
        .store()
        .revoke_api_key(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "api_key.revoke",
        &key.id.to_string(),
        json!({"api_key_id": key.id, "name": key.name}),
    )
    .await;
    Ok(key)
}
