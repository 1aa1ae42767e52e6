//! API keys for the control plane's HTTP and gRPC APIs.

use crate::time::now_ms;
use crate::{
    ApiKey, ApiKeyRole, OrgId, Result, RowExt as _, Store, StoreError, digest_matches, ensure_org,
    new_secret, sha256_hex, validate_name,
};
use sqlx::any::AnyRow;
use uuid::Uuid;

/// Prefix of every API key secret, so a leaked one is recognizable (secret scanners, logs).
pub const API_KEY_PREFIX: &str = "gk_";

/// `last_used_at` is refreshed only when older than this, so authentication is a read in
/// the common case.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

macro_rules! api_key_cols {
    () => {
        "id, org_id, name, role, prefix, created_at, last_used_at, revoked_at"
    };
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        role: row.parsed("role")?,
        prefix: row.text("prefix")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

impl Store {
    /// Creates an API key and returns it with its secret — the only time the secret is
    /// visible: the store keeps its SHA-256 only. Names are unique among an org's
    /// unrevoked keys.
    pub async fn create_api_key(
        &self,
        org: OrgId,
        name: &str,
        role: ApiKeyRole,
    ) -> Result<(ApiKey, String)> {
        validate_name("API key", name)?;
        let secret = new_secret(API_KEY_PREFIX);
        let key = ApiKey {
            id: Uuid::now_v7(),
            org_id: org,
            name: name.to_string(),
            role,
            prefix: secret.chars().take(8).collect(),
            created_at: now_ms(),
            last_used_at: None,
            revoked_at: None,
        };
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        sqlx::query(
            "INSERT INTO api_keys (org_id, id, name, role, prefix, secret_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(org.to_string())
        .bind(key.id.to_string())
        .bind(&key.name)
        .bind(role.as_str())
        .bind(&key.prefix)
        .bind(sha256_hex(&secret))
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!("API key named {name:?} exists")))?;
        tx.commit().await?;
        Ok((key, secret))
    }

    /// The key `secret` belongs to, if it is a live key. Looks the key up by the secret's
    /// SHA-256, compares the full digest, refuses revoked keys and refreshes
    /// `last_used_at` (at most once a minute).
    pub async fn authenticate_api_key(&self, secret: &str) -> Result<Option<ApiKey>> {
        if !secret.starts_with(API_KEY_PREFIX) {
            return Ok(None);
        }
        let digest = sha256_hex(secret);
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            ", secret_sha256 FROM api_keys WHERE secret_sha256 = $1"
        ))
        .bind(&digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if !digest_matches(&row.text("secret_sha256")?, secret) {
            return Ok(None);
        }
        let mut key = api_key_from_row(&row)?;
        if key.revoked_at.is_some() {
            return Ok(None);
        }
        let now = now_ms();
        if key
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS)
        {
            // The condition is repeated in SQL so concurrent authentications write once.
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $3 WHERE org_id = $1 AND id = $2 \
                 AND (last_used_at IS NULL OR last_used_at <= $4)",
            )
            .bind(key.org_id.to_string())
            .bind(key.id.to_string())
            .bind(now)
            .bind(now - LAST_USED_GRANULARITY_MS)
            .execute(&self.pool)
            .await?;
            key.last_used_at = Some(now);
        }
        Ok(Some(key))
    }

    /// Revokes a key (idempotent: revoking a revoked key keeps the first revocation time).
    pub async fn revoke_api_key(&self, org: OrgId, id: Uuid) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE org_id = $1 AND id = $2 RETURNING ",
            api_key_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(api_key_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("API key {id}")))
    }

    pub async fn get_api_key(&self, org: OrgId, id: Uuid) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE org_id = $1 AND id = $2"
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(api_key_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("API key {id}")))
    }

    /// The org's keys, revoked ones included, oldest first.
    pub async fn list_api_keys(&self, org: OrgId) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE org_id = $1 ORDER BY created_at, id"
        ))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }
}
