//! Connector registration, credentials and heartbeats.

use crate::time::now_ms;
use crate::{
    Connector, ConnectorInfo, Heartbeat, OrgId, RedeemError, RegistrationToken, Result,
    RowExt as _, Store, StoreError, digest_matches, ensure_org, new_secret, sha256_hex, to_json,
    validate_name,
};
use sqlx::any::AnyRow;
use std::time::Duration;
use uuid::Uuid;

/// Prefix of registration token secrets.
pub const REGISTRATION_TOKEN_PREFIX: &str = "gr_";
/// Prefix of connector credentials.
pub const CONNECTOR_SECRET_PREFIX: &str = "gc_";
/// How long a registration token lives unless the caller says otherwise.
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(3600);

macro_rules! token_cols {
    () => {
        "id, org_id, name, created_at, expires_at, used_at"
    };
}

macro_rules! connector_cols {
    () => {
        "id, org_id, name, version, registered_at, last_heartbeat_at, uptime_s, \
         active_sessions, resources_served, deregistered_at, offline_at"
    };
}

fn token_from_row(row: &AnyRow) -> Result<RegistrationToken> {
    Ok(RegistrationToken {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        used_at: row.opt_int("used_at")?,
    })
}

fn connector_from_row(row: &AnyRow) -> Result<Connector> {
    Ok(Connector {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        version: row.text("version")?,
        registered_at: row.int("registered_at")?,
        last_heartbeat_at: row.opt_int("last_heartbeat_at")?,
        uptime_s: row.int("uptime_s")?,
        active_sessions: row.int("active_sessions")?,
        resources_served: row.json("resources_served")?,
        deregistered_at: row.opt_int("deregistered_at")?,
        offline_at: row.opt_int("offline_at")?,
    })
}

impl Store {
    /// Issues a single-use registration token for a connector to be called `name`,
    /// valid for `ttl` (see [`DEFAULT_REGISTRATION_TTL`]). Returns the record and the
    /// secret; the store keeps the secret's SHA-256 only.
    pub async fn create_registration_token(
        &self,
        org: OrgId,
        name: &str,
        ttl: Duration,
    ) -> Result<(RegistrationToken, String)> {
        validate_name("connector", name)?;
        let ttl_ms = i64::try_from(ttl.as_millis())
            .map_err(|_| StoreError::Invalid("registration token TTL is too long".into()))?;
        let secret = new_secret(REGISTRATION_TOKEN_PREFIX);
        let now = now_ms();
        let token = RegistrationToken {
            id: Uuid::now_v7(),
            org_id: org,
            name: name.to_string(),
            created_at: now,
            expires_at: now.saturating_add(ttl_ms),
            used_at: None,
        };
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        sqlx::query(
            "INSERT INTO registration_tokens \
             (org_id, id, name, secret_sha256, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(org.to_string())
        .bind(token.id.to_string())
        .bind(&token.name)
        .bind(sha256_hex(&secret))
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((token, secret))
    }

    /// The org's registration tokens (used and expired ones included), newest first.
    pub async fn list_registration_tokens(&self, org: OrgId) -> Result<Vec<RegistrationToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM registration_tokens WHERE org_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Withdraws a token before it is used.
    pub async fn delete_registration_token(&self, org: OrgId, id: Uuid) -> Result<()> {
        let done = sqlx::query("DELETE FROM registration_tokens WHERE org_id = $1 AND id = $2")
            .bind(org.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(format!("registration token {id}")));
        }
        Ok(())
    }

    /// Trades a registration token for a new connector and its credential.
    ///
    /// Marking the token used is one conditional `UPDATE … WHERE used_at IS NULL AND
    /// expires_at > now`, in the same transaction as the connector's insert: of two
    /// concurrent redemptions exactly one gets the row (PostgreSQL re-checks the condition
    /// after the row lock; SQLite serializes writers), and the other sees `AlreadyUsed`.
    /// If the connector cannot be created (a registered connector already has the name),
    /// the token stays unused.
    pub async fn redeem_registration_token(
        &self,
        secret: &str,
        version: &str,
    ) -> Result<(Connector, String), RedeemError> {
        if !secret.starts_with(REGISTRATION_TOKEN_PREFIX) {
            return Err(RedeemError::Unknown);
        }
        let digest = sha256_hex(secret);
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query(
            "UPDATE registration_tokens SET used_at = $2 \
             WHERE secret_sha256 = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING org_id, name, secret_sha256",
        )
        .bind(&digest)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(claimed) = claimed else {
            let state = sqlx::query(
                "SELECT used_at, expires_at, secret_sha256 FROM registration_tokens \
                 WHERE secret_sha256 = $1",
            )
            .bind(&digest)
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match state {
                Some(row) if digest_matches(&row.text("secret_sha256")?, secret) => {
                    if row.opt_int("used_at")?.is_some() {
                        RedeemError::AlreadyUsed
                    } else {
                        RedeemError::Expired
                    }
                }
                _ => RedeemError::Unknown,
            });
        };
        if !digest_matches(&claimed.text("secret_sha256")?, secret) {
            return Err(RedeemError::Unknown);
        }
        let org = claimed.org_id("org_id")?;
        let connector_secret = new_secret(CONNECTOR_SECRET_PREFIX);
        let connector = Connector {
            id: Uuid::now_v7(),
            org_id: org,
            name: claimed.text("name")?,
            version: version.to_string(),
            registered_at: now,
            last_heartbeat_at: None,
            uptime_s: 0,
            active_sessions: 0,
            resources_served: Vec::new(),
            deregistered_at: None,
            offline_at: None,
        };
        sqlx::query(
            "INSERT INTO connectors (org_id, id, name, version, secret_sha256, registered_at, \
             uptime_s, active_sessions, resources_served) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, 0, '[]')",
        )
        .bind(org.to_string())
        .bind(connector.id.to_string())
        .bind(&connector.name)
        .bind(&connector.version)
        .bind(sha256_hex(&connector_secret))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "a registered connector is named {:?}",
            connector.name
        )))?;
        tx.commit().await?;
        Ok((connector, connector_secret))
    }

    /// The registered (not deregistered) connector `secret` belongs to.
    pub async fn authenticate_connector(&self, secret: &str) -> Result<Option<Connector>> {
        if !secret.starts_with(CONNECTOR_SECRET_PREFIX) {
            return Ok(None);
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            connector_cols!(),
            ", secret_sha256 FROM connectors WHERE secret_sha256 = $1"
        ))
        .bind(sha256_hex(secret))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if !digest_matches(&row.text("secret_sha256")?, secret) {
            return Ok(None);
        }
        let connector = connector_from_row(&row)?;
        Ok(connector.deregistered_at.is_none().then_some(connector))
    }

    /// Records a heartbeat (at the store's clock). NotFound for an unknown or
    /// deregistered connector, so a deregistered one learns it must register again.
    pub async fn heartbeat(
        &self,
        org: OrgId,
        connector_id: Uuid,
        heartbeat: &Heartbeat,
    ) -> Result<Connector> {
        let row = sqlx::query(concat!(
            "UPDATE connectors SET version = $3, last_heartbeat_at = $4, uptime_s = $5, \
             active_sessions = $6, resources_served = $7, offline_at = NULL \
             WHERE org_id = $1 AND id = $2 AND deregistered_at IS NULL RETURNING ",
            connector_cols!()
        ))
        .bind(org.to_string())
        .bind(connector_id.to_string())
        .bind(&heartbeat.version)
        .bind(now_ms())
        .bind(heartbeat.uptime_s)
        .bind(heartbeat.active_sessions)
        .bind(to_json(&heartbeat.resources_served)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(connector_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("connector {connector_id}")))
    }

    /// Notes a clean shutdown: the connector shows as disconnected at once instead of going
    /// stale first, and keeps its credential — its next start heartbeats and is connected
    /// again. (To retire a connector for good, see [`Store::deregister_connector`].)
    pub async fn mark_connector_offline(
        &self,
        org: OrgId,
        connector_id: Uuid,
    ) -> Result<Connector> {
        let row = sqlx::query(concat!(
            "UPDATE connectors SET offline_at = $3 \
             WHERE org_id = $1 AND id = $2 AND deregistered_at IS NULL RETURNING ",
            connector_cols!()
        ))
        .bind(org.to_string())
        .bind(connector_id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(connector_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("connector {connector_id}")))
    }

    /// Retires a connector: its credential stops working and its name is free again.
    /// Idempotent.
    pub async fn deregister_connector(&self, org: OrgId, connector_id: Uuid) -> Result<Connector> {
        let row = sqlx::query(concat!(
            "UPDATE connectors SET deregistered_at = COALESCE(deregistered_at, $3) \
             WHERE org_id = $1 AND id = $2 RETURNING ",
            connector_cols!()
        ))
        .bind(org.to_string())
        .bind(connector_id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(connector_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("connector {connector_id}")))
    }

    pub async fn get_connector(&self, org: OrgId, connector_id: Uuid) -> Result<Connector> {
        let row = sqlx::query(concat!(
            "SELECT ",
            connector_cols!(),
            " FROM connectors WHERE org_id = $1 AND id = $2"
        ))
        .bind(org.to_string())
        .bind(connector_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(connector_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("connector {connector_id}")))
    }

    /// The org's connectors (deregistered ones included) with their status at `now_ms`
    /// (a parameter so callers and tests control the clock), by name then registration.
    pub async fn list_connectors(&self, org: OrgId, now_ms: i64) -> Result<Vec<ConnectorInfo>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            connector_cols!(),
            " FROM connectors WHERE org_id = $1 ORDER BY name, registered_at, id"
        ))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let connector = connector_from_row(row)?;
                let status = connector.status_at(now_ms);
                Ok(ConnectorInfo { connector, status })
            })
            .collect()
    }
}
