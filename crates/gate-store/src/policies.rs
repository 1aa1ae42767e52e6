//! Policies and their version history.

use crate::config::Key;
use crate::time::now_ms;
use crate::{
    OrgId, Policy, PolicyInput, PolicyState, PolicyUpdate, PolicyVersion, Result, RowExt as _,
    Store, StoreError, bump_revision, clean_list, to_json, validate_name,
};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use uuid::Uuid;

macro_rules! policy_cols {
    () => {
        "id, org_id, name, description, stages, targets, state, version, rego, created_at, \
         updated_at"
    };
}

macro_rules! version_cols {
    () => {
        "org_id, policy_id, version, rego, stages, targets, state, created_at, created_by"
    };
}

pub(crate) fn policy_from_row(row: &AnyRow) -> Result<Policy> {
    Ok(Policy {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        stages: row.json("stages")?,
        targets: row.json("targets")?,
        state: row.parsed("state")?,
        version: row.int("version")?,
        rego: row.text("rego")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        org_id: row.org_id("org_id")?,
        policy_id: row.uuid("policy_id")?,
        version: row.int("version")?,
        rego: row.text("rego")?,
        stages: row.json("stages")?,
        targets: row.json("targets")?,
        state: row.parsed("state")?,
        created_at: row.int("created_at")?,
        created_by: row.text("created_by")?,
    })
}

fn validate_rego(rego: &str) -> Result<()> {
    if rego.trim().is_empty() {
        return Err(StoreError::Invalid("policy rego is empty".into()));
    }
    Ok(())
}

/// Policies connectors enforce (`active`) or evaluate without enforcing (`dry_run`).
pub(crate) async fn list_enforced_policies(
    conn: &mut AnyConnection,
    org: OrgId,
) -> Result<Vec<Policy>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        policy_cols!(),
        " FROM policies WHERE org_id = $1 AND state IN ('active', 'dry_run') ORDER BY name"
    ))
    .bind(org.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(policy_from_row).collect()
}

async fn get_policy_in(conn: &mut AnyConnection, org: OrgId, key: Key<'_>) -> Result<Policy> {
    let sql = match key {
        Key::Id(_) => concat!(
            "SELECT ",
            policy_cols!(),
            " FROM policies WHERE org_id = $1 AND id = $2"
        ),
        Key::Name(_) => concat!(
            "SELECT ",
            policy_cols!(),
            " FROM policies WHERE org_id = $1 AND name = $2"
        ),
    };
    let row = sqlx::query(sql)
        .bind(org.to_string())
        .bind(key.value())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref()
        .map(policy_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::not_found(key.describe("policy")))
}

async fn insert_version(conn: &mut AnyConnection, policy: &Policy, created_by: &str) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO policy_versions (",
        version_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(policy.org_id.to_string())
    .bind(policy.id.to_string())
    .bind(policy.version)
    .bind(&policy.rego)
    .bind(to_json(&policy.stages)?)
    .bind(to_json(&policy.targets)?)
    .bind(policy.state.as_str())
    .bind(policy.updated_at)
    .bind(created_by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Creates a policy at version 1 (recorded in its history as created by `actor`).
    /// The rego is stored as given: compiling it is the control plane's job.
    pub async fn create_policy(
        &self,
        org: OrgId,
        input: &PolicyInput,
        actor: &str,
    ) -> Result<Policy> {
        validate_name("policy", &input.name)?;
        validate_rego(&input.rego)?;
        let now = now_ms();
        let policy = Policy {
            id: Uuid::now_v7(),
            org_id: org,
            name: input.name.clone(),
            description: input.description.clone(),
            stages: clean_list(&input.stages),
            targets: clean_list(&input.targets),
            state: input.state,
            version: 1,
            rego: input.rego.clone(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        sqlx::query(concat!(
            "INSERT INTO policies (",
            policy_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(policy.id.to_string())
        .bind(org.to_string())
        .bind(&policy.name)
        .bind(&policy.description)
        .bind(to_json(&policy.stages)?)
        .bind(to_json(&policy.targets)?)
        .bind(policy.state.as_str())
        .bind(policy.version)
        .bind(&policy.rego)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "policy named {:?} exists",
            input.name
        )))?;
        insert_version(&mut tx, &policy, actor).await?;
        tx.commit().await?;
        Ok(policy)
    }

    pub async fn get_policy(&self, org: OrgId, id: Uuid) -> Result<Policy> {
        get_policy_in(&mut *self.pool.acquire().await?, org, Key::Id(id)).await
    }

    pub async fn get_policy_by_name(&self, org: OrgId, name: &str) -> Result<Policy> {
        get_policy_in(&mut *self.pool.acquire().await?, org, Key::Name(name)).await
    }

    /// All of the org's policies, every state, by name.
    pub async fn list_policies(&self, org: OrgId) -> Result<Vec<Policy>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            policy_cols!(),
            " FROM policies WHERE org_id = $1 ORDER BY name"
        ))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    /// Applies a partial update. If `rego`, `stages` or `targets` change, the version goes
    /// up by one and the new content is recorded in the history as created by `actor`. An
    /// update that changes nothing writes nothing (and does not bump the revision).
    pub async fn update_policy(
        &self,
        org: OrgId,
        id: Uuid,
        update: &PolicyUpdate,
        actor: &str,
    ) -> Result<Policy> {
        if let Some(name) = &update.name {
            validate_name("policy", name)?;
        }
        if let Some(rego) = &update.rego {
            validate_rego(rego)?;
        }
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let current = get_policy_in(&mut tx, org, Key::Id(id)).await?;
        let mut next = current.clone();
        if let Some(name) = &update.name {
            next.name = name.clone();
        }
        if let Some(description) = &update.description {
            next.description = description.clone();
        }
        if let Some(stages) = &update.stages {
            next.stages = clean_list(stages);
        }
        if let Some(targets) = &update.targets {
            next.targets = clean_list(targets);
        }
        if let Some(rego) = &update.rego {
            next.rego = rego.clone();
        }
        if next == current {
            // Dropping the transaction rolls the revision bump back.
            return Ok(current);
        }
        let content_changed = next.rego != current.rego
            || next.stages != current.stages
            || next.targets != current.targets;
        if content_changed {
            next.version += 1;
        }
        next.updated_at = now_ms().max(current.updated_at);
        sqlx::query(
            "UPDATE policies SET name = $3, description = $4, stages = $5, targets = $6, \
             version = $7, rego = $8, updated_at = $9 WHERE org_id = $1 AND id = $2",
        )
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(&next.name)
        .bind(&next.description)
        .bind(to_json(&next.stages)?)
        .bind(to_json(&next.targets)?)
        .bind(next.version)
        .bind(&next.rego)
        .bind(next.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "policy named {:?} exists",
            next.name
        )))?;
        if content_changed {
            insert_version(&mut tx, &next, actor).await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    /// Moves a policy between `draft`, `dry_run` and `active`. Not a new version (the
    /// enforced content is unchanged) but a new revision (connectors must pick it up).
    pub async fn set_policy_state(
        &self,
        org: OrgId,
        id: Uuid,
        state: PolicyState,
    ) -> Result<Policy> {
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(concat!(
            "UPDATE policies SET state = $3, updated_at = $4 WHERE org_id = $1 AND id = $2 \
             RETURNING ",
            policy_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(state.as_str())
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let policy = row
            .as_ref()
            .map(policy_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("policy {id}")))?;
        tx.commit().await?;
        Ok(policy)
    }

    /// Deletes a policy and its history.
    pub async fn delete_policy(&self, org: OrgId, id: Uuid) -> Result<()> {
        self.delete_config_row(org, "policies", Key::Id(id), "policy")
            .await
    }

    /// A policy's versions, newest first. NotFound if the policy does not exist in `org`.
    pub async fn list_policy_versions(
        &self,
        org: OrgId,
        policy_id: Uuid,
    ) -> Result<Vec<PolicyVersion>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            version_cols!(),
            " FROM policy_versions WHERE org_id = $1 AND policy_id = $2 ORDER BY version DESC"
        ))
        .bind(org.to_string())
        .bind(policy_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            // Every policy has at least version 1, so no rows means no such policy.
            return Err(StoreError::not_found(format!("policy {policy_id}")));
        }
        rows.iter().map(version_from_row).collect()
    }

    pub async fn get_policy_version(
        &self,
        org: OrgId,
        policy_id: Uuid,
        version: i64,
    ) -> Result<PolicyVersion> {
        let row = sqlx::query(concat!(
            "SELECT ",
            version_cols!(),
            " FROM policy_versions WHERE org_id = $1 AND policy_id = $2 AND version = $3"
        ))
        .bind(org.to_string())
        .bind(policy_id.to_string())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(version_from_row)
            .transpose()?
            .ok_or_else(|| {
                StoreError::not_found(format!("version {version} of policy {policy_id}"))
            })
    }
}
