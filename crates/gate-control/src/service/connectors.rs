//! Connectors and registration tokens, as admins see them. Listing connectors needs
//! readonly; tokens and removing connectors need admin.

use std::time::Duration;

use gate_store::time::now_ms;
use gate_store::{ConnectorInfo, RegistrationToken};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Registration tokens live an hour unless asked otherwise: long enough to start a
/// connector, short enough that a leaked one is soon worthless.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a registration token may be given.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A new registration token and its secret (shown once).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedRegistrationToken {
    pub token: RegistrationToken,
    pub secret: String,
}

pub async fn list_connectors(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<ConnectorInfo>> {
    let org = caller.require(Access::Read)?;
    ctl.store()
        .list_connectors(org, now_ms())
        .await
        .map_err(store_error)
}

pub async fn get_connector(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<ConnectorInfo> {
    let org = caller.require(Access::Read)?;
    let connector = ctl
        .store()
        .get_connector(org, id)
        .await
        .map_err(store_error)?;
    let status = connector.status_at(now_ms());
    Ok(ConnectorInfo { connector, status })
}

/// Deregisters a connector: its credential stops working at once.
pub async fn delete_connector(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<()> {
    let org = caller.require(Access::Admin)?;
    ctl.store()
        .deregister_connector(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "connector.delete",
        &id.to_string(),
        json!({"connector_id": id}),
    )
    .await;
    Ok(())
}

pub async fn create_registration_token(
    ctl: &Control,
    caller: &Caller,
    name: &str,
    ttl: Option<Duration>,
) -> ServiceResult<CreatedRegistrationToken> {
    let org = caller.require(Access::Admin)?;
    let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TOKEN_TTL);
    if ttl > MAX_TOKEN_TTL {
        return Err(ServiceError::invalid(format!(
            "ttl may be at most {} seconds",
            MAX_TOKEN_TTL.as_secs()
        )));
    }
    let (token, secret) = ctl
        .store()
        .create_registration_token(org, name, ttl)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "registration_token.create",
        &token.id.to_string(),
        json!({"token_id": token.id, "name": token.name, "expires_at": token.expires_at}),
    )
    .await;
    Ok(CreatedRegistrationToken { token, secret })
}

/// Withdraws a registration token (used or not); a leaked one is then worthless.
pub async fn delete_registration_token(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<()> {
    let org = caller.require(Access::Admin)?;
    ctl.store()
        .delete_registration_token(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "registration_token.delete",
        &id.to_string(),
        json!({"token_id": id}),
    )
    .await;
    Ok(())
}

pub async fn list_registration_tokens(
    ctl: &Control,
    caller: &Caller,
) -> ServiceResult<Vec<RegistrationToken>> {
    let org = caller.require(Access::Admin)?;
    ctl.store()
        .list_registration_tokens(org)
        .await
        .map_err(store_error)
}
