//! Organizations.

use crate::{Org, Result, time::now_ms};
use crate::{OrgId, RowExt as _, Store, StoreError, bump_revision, org_not_found, validate_name};
use sqlx::any::AnyRow;

fn org_from_row(row: &AnyRow) -> Result<Org> {
    Ok(Org {
        id: row.org_id("id")?,
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}

/// What keeps an org from being deleted: live config, live credentials and registered
/// connectors. Revoked keys, deregistered connectors and registration tokens are history
/// that goes with the org; audit stays (it has no foreign key, see the crate docs).
const ORG_CONTENTS: &[(&str, &str)] = &[
    (
        "resources",
        "SELECT COUNT(*) FROM resources WHERE org_id = $1",
    ),
    (
        "policies",
        "SELECT COUNT(*) FROM policies WHERE org_id = $1",
    ),
    (
        "identities",
        "SELECT COUNT(*) FROM identities WHERE org_id = $1",
    ),
    (
        "groups",
        "SELECT COUNT(*) FROM identity_groups WHERE org_id = $1",
    ),
    (
        "API keys",
        "SELECT COUNT(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL",
    ),
    (
        "connectors",
        "SELECT COUNT(*) FROM connectors WHERE org_id = $1 AND deregistered_at IS NULL",
    ),
    (
        "webhook endpoints",
        "SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = $1",
    ),
];

impl Store {
    /// Creates an org. Names are unique across the store.
    pub async fn create_org(&self, name: &str) -> Result<Org> {
        validate_name("org", name)?;
        let org = Org {
            id: OrgId::new(),
            name: name.to_string(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO orgs (id, name, revision, created_at) VALUES ($1, $2, 0, $3)")
            .bind(org.id.to_string())
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.pool)
            .await
            .map_err(StoreError::unique(format!("org named {name:?} exists")))?;
        Ok(org)
    }

    /// Every org, by name.
    pub async fn list_orgs(&self) -> Result<Vec<Org>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM orgs ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(org_from_row).collect()
    }

    pub async fn get_org(&self, org: OrgId) -> Result<Org> {
        let row = sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = $1")
            .bind(org.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(org_from_row)
            .transpose()?
            .ok_or_else(|| org_not_found(org))
    }

    pub async fn get_org_by_name(&self, name: &str) -> Result<Org> {
        let row = sqlx::query("SELECT id, name, created_at FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(org_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("org {name:?}")))
    }

    pub async fn rename_org(&self, org: OrgId, name: &str) -> Result<Org> {
        validate_name("org", name)?;
        let row =
            sqlx::query("UPDATE orgs SET name = $2 WHERE id = $1 RETURNING id, name, created_at")
                .bind(org.to_string())
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::unique(format!("org named {name:?} exists")))?;
        row.as_ref()
            .map(org_from_row)
            .transpose()?
            .ok_or_else(|| org_not_found(org))
    }

    /// Deletes an org that holds nothing live (see `ORG_CONTENTS`); otherwise
    /// [`StoreError::Conflict`] says what is left. Its audit events are kept.
    pub async fn delete_org(&self, org: OrgId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Bumping the revision locks the org row (PostgreSQL), so config writers wait for
        // this check-then-delete instead of slipping a row in between.
        bump_revision(&mut tx, org).await?;
        let mut left = Vec::new();
        for (what, sql) in ORG_CONTENTS {
            let n: i64 = sqlx::query_scalar(*sql)
                .bind(org.to_string())
                .fetch_one(&mut *tx)
                .await?;
            if n > 0 {
                left.push(format!("{n} {what}"));
            }
        }
        if !left.is_empty() {
            return Err(StoreError::conflict(format!(
                "org {org} is not empty: {}",
                left.join(", ")
            )));
        }
        for sql in [
            "DELETE FROM registration_tokens WHERE org_id = $1",
            "DELETE FROM connectors WHERE org_id = $1",
            "DELETE FROM api_keys WHERE org_id = $1",
            "DELETE FROM orgs WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(org.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
