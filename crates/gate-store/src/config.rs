//! The config connectors sync: resources, identities and groups (policies live in
//! `policies.rs`), the org's revision and the snapshot.

use crate::policies::list_enforced_policies;
use crate::time::now_ms;
use crate::{
    ConfigSnapshot, Group, Identity, IdentityInput, OrgId, Resource, ResourceInput, Result,
    RowExt as _, Store, StoreError, bump_revision, clean_list, org_not_found, to_json,
    validate_name,
};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use uuid::Uuid;

macro_rules! resource_cols {
    () => {
        "id, org_id, name, protocol, host, port, database_name, spec, created_at, updated_at"
    };
}

macro_rules! identity_cols {
    () => {
        "id, org_id, name, email, group_names, ssh_public_keys, token_sha256, disabled, \
         created_at, updated_at"
    };
}

macro_rules! group_cols {
    () => {
        "id, org_id, name, description, created_at"
    };
}

fn resource_from_row(row: &AnyRow) -> Result<Resource> {
    let port = row.int("port")?;
    Ok(Resource {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        protocol: row.text("protocol")?,
        host: row.text("host")?,
        port: u16::try_from(port)
            .map_err(|_| StoreError::Invalid(format!("stored port {port} is out of range")))?,
        database: row.opt_text("database_name")?,
        spec: row.json("spec")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn identity_from_row(row: &AnyRow) -> Result<Identity> {
    Ok(Identity {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        email: row.opt_text("email")?,
        groups: row.json("group_names")?,
        ssh_public_keys: row.json("ssh_public_keys")?,
        token_sha256: row.opt_text("token_sha256")?,
        disabled: row.int("disabled")? != 0,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn group_from_row(row: &AnyRow) -> Result<Group> {
    Ok(Group {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        created_at: row.int("created_at")?,
    })
}

fn validate_resource(input: &ResourceInput) -> Result<()> {
    validate_name("resource", &input.name)?;
    if input.protocol.trim().is_empty() {
        return Err(StoreError::Invalid("resource protocol is empty".into()));
    }
    Ok(())
}

fn validate_identity(input: &IdentityInput) -> Result<()> {
    validate_name("identity", &input.name)?;
    if let Some(t) = &input.token_sha256
        && !(t.len() == 64 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(StoreError::Invalid(
            "token_sha256 must be 64 lowercase hex characters (a SHA-256 digest)".into(),
        ));
    }
    Ok(())
}

/// Which row a by-id-or-name call addresses. Names are unique per org, so both identify
/// at most one row.
#[derive(Clone, Copy)]
pub(crate) enum Key<'a> {
    Id(Uuid),
    Name(&'a str),
}

impl Key<'_> {
    pub(crate) fn column(self) -> &'static str {
        match self {
            Key::Id(_) => "id",
            Key::Name(_) => "name",
        }
    }
    pub(crate) fn value(self) -> String {
        match self {
            Key::Id(id) => id.to_string(),
            Key::Name(n) => n.to_string(),
        }
    }
    pub(crate) fn describe(self, what: &str) -> String {
        match self {
            Key::Id(id) => format!("{what} {id}"),
            Key::Name(n) => format!("{what} {n:?}"),
        }
    }
}

impl Store {
    // ---------------------------------------------------------------- resources

    pub async fn create_resource(&self, org: OrgId, input: &ResourceInput) -> Result<Resource> {
        validate_resource(input)?;
        let now = now_ms();
        let resource = Resource {
            id: Uuid::now_v7(),
            org_id: org,
            name: input.name.clone(),
            protocol: input.protocol.clone(),
            host: input.host.clone(),
            port: input.port,
            database: input.database.clone(),
            spec: input.spec.clone(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        sqlx::query(concat!(
            "INSERT INTO resources (",
            resource_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(resource.id.to_string())
        .bind(org.to_string())
        .bind(&resource.name)
        .bind(&resource.protocol)
        .bind(&resource.host)
        .bind(i64::from(resource.port))
        .bind(resource.database.clone())
        .bind(to_json(&resource.spec)?)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "resource named {:?} exists",
            input.name
        )))?;
        tx.commit().await?;
        Ok(resource)
    }

    pub async fn get_resource(&self, org: OrgId, id: Uuid) -> Result<Resource> {
        self.get_resource_by(org, Key::Id(id)).await
    }

    pub async fn get_resource_by_name(&self, org: OrgId, name: &str) -> Result<Resource> {
        self.get_resource_by(org, Key::Name(name)).await
    }

    async fn get_resource_by(&self, org: OrgId, key: Key<'_>) -> Result<Resource> {
        let sql = match key {
            Key::Id(_) => concat!(
                "SELECT ",
                resource_cols!(),
                " FROM resources WHERE org_id = $1 AND id = $2"
            ),
            Key::Name(_) => concat!(
                "SELECT ",
                resource_cols!(),
                " FROM resources WHERE org_id = $1 AND name = $2"
            ),
        };
        let row = sqlx::query(sql)
            .bind(org.to_string())
            .bind(key.value())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(resource_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(key.describe("resource")))
    }

    /// The org's resources, by name.
    pub async fn list_resources(&self, org: OrgId) -> Result<Vec<Resource>> {
        list_resources(&mut *self.pool.acquire().await?, org).await
    }

    /// Replaces a resource's fields (all of them: this is a PUT).
    pub async fn update_resource(
        &self,
        org: OrgId,
        id: Uuid,
        input: &ResourceInput,
    ) -> Result<Resource> {
        self.update_resource_by(org, Key::Id(id), input).await
    }

    pub async fn update_resource_by_name(
        &self,
        org: OrgId,
        name: &str,
        input: &ResourceInput,
    ) -> Result<Resource> {
        self.update_resource_by(org, Key::Name(name), input).await
    }

    async fn update_resource_by(
        &self,
        org: OrgId,
        key: Key<'_>,
        input: &ResourceInput,
    ) -> Result<Resource> {
        validate_resource(input)?;
        let sql = match key {
            Key::Id(_) => concat!(
                "UPDATE resources SET name = $3, protocol = $4, host = $5, port = $6, \
                 database_name = $7, spec = $8, updated_at = $9 \
                 WHERE org_id = $1 AND id = $2 RETURNING ",
                resource_cols!()
            ),
            Key::Name(_) => concat!(
                "UPDATE resources SET name = $3, protocol = $4, host = $5, port = $6, \
                 database_name = $7, spec = $8, updated_at = $9 \
                 WHERE org_id = $1 AND name = $2 RETURNING ",
                resource_cols!()
            ),
        };
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(sql)
            .bind(org.to_string())
            .bind(key.value())
            .bind(&input.name)
            .bind(&input.protocol)
            .bind(&input.host)
            .bind(i64::from(input.port))
            .bind(input.database.clone())
            .bind(to_json(&input.spec)?)
            .bind(now_ms())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::unique(format!(
                "resource named {:?} exists",
                input.name
            )))?;
        let resource = row
            .as_ref()
            .map(resource_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(key.describe("resource")))?;
        tx.commit().await?;
        Ok(resource)
    }

    pub async fn delete_resource(&self, org: OrgId, id: Uuid) -> Result<()> {
        self.delete_config_row(org, "resources", Key::Id(id), "resource")
            .await
    }

    pub async fn delete_resource_by_name(&self, org: OrgId, name: &str) -> Result<()> {
        self.delete_config_row(org, "resources", Key::Name(name), "resource")
            .await
    }

    /// Deletes one row of a config table (bumping the revision), NotFound if there is none.
    /// `table` is always a literal from this crate.
    pub(crate) async fn delete_config_row(
        &self,
        org: OrgId,
        table: &'static str,
        key: Key<'_>,
        what: &str,
    ) -> Result<()> {
        let sql = format!(
            "DELETE FROM {table} WHERE org_id = $1 AND {} = $2",
            key.column()
        );
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(org.to_string())
            .bind(key.value())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(key.describe(what)));
        }
        tx.commit().await?;
        Ok(())
    }

    // --------------------------------------------------------------- identities

    pub async fn create_identity(&self, org: OrgId, input: &IdentityInput) -> Result<Identity> {
        validate_identity(input)?;
        let now = now_ms();
        let identity = Identity {
            id: Uuid::now_v7(),
            org_id: org,
            name: input.name.clone(),
            email: input.email.clone(),
            groups: clean_list(&input.groups),
            ssh_public_keys: clean_list(&input.ssh_public_keys),
            token_sha256: input.token_sha256.clone(),
            disabled: input.disabled,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        sqlx::query(concat!(
            "INSERT INTO identities (",
            identity_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(identity.id.to_string())
        .bind(org.to_string())
        .bind(&identity.name)
        .bind(identity.email.clone())
        .bind(to_json(&identity.groups)?)
        .bind(to_json(&identity.ssh_public_keys)?)
        .bind(identity.token_sha256.clone())
        .bind(i64::from(identity.disabled))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "identity named {:?} exists",
            input.name
        )))?;
        tx.commit().await?;
        Ok(identity)
    }

    pub async fn get_identity(&self, org: OrgId, id: Uuid) -> Result<Identity> {
        self.get_identity_by(org, Key::Id(id)).await
    }

    pub async fn get_identity_by_name(&self, org: OrgId, name: &str) -> Result<Identity> {
        self.get_identity_by(org, Key::Name(name)).await
    }

    /// The enabled identity whose Gate token is `token`, in whichever org it is: the token
    /// people connect with also signs them in to the control plane (`gate login`). Found
    /// by the token's SHA-256, compared again in constant time. A digest that two
    /// identities share (possible only with a hand-set `token_sha256`) signs in nobody.
    pub async fn authenticate_identity(&self, token: &str) -> Result<Option<Identity>> {
        let digest = crate::sha256_hex(token);
        let rows = sqlx::query(concat!(
            "SELECT ",
            identity_cols!(),
            " FROM identities WHERE token_sha256 = $1 LIMIT 2"
        ))
        .bind(&digest)
        .fetch_all(&self.pool)
        .await?;
        let [row] = rows.as_slice() else {
            return Ok(None);
        };
        let identity = identity_from_row(row)?;
        let matches = identity
            .token_sha256
            .as_deref()
            .is_some_and(|d| crate::digest_matches(d, token));
        Ok((matches && !identity.disabled).then_some(identity))
    }

    async fn get_identity_by(&self, org: OrgId, key: Key<'_>) -> Result<Identity> {
        let sql = match key {
            Key::Id(_) => concat!(
                "SELECT ",
                identity_cols!(),
                " FROM identities WHERE org_id = $1 AND id = $2"
            ),
            Key::Name(_) => concat!(
                "SELECT ",
                identity_cols!(),
                " FROM identities WHERE org_id = $1 AND name = $2"
            ),
        };
        let row = sqlx::query(sql)
            .bind(org.to_string())
            .bind(key.value())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(identity_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(key.describe("identity")))
    }

    /// The org's identities, by name.
    pub async fn list_identities(&self, org: OrgId) -> Result<Vec<Identity>> {
        list_identities(&mut *self.pool.acquire().await?, org).await
    }

    /// Replaces an identity's fields (all of them: this is a PUT).
    pub async fn update_identity(
        &self,
        org: OrgId,
        id: Uuid,
        input: &IdentityInput,
    ) -> Result<Identity> {
        validate_identity(input)?;
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(concat!(
            "UPDATE identities SET name = $3, email = $4, group_names = $5, \
             ssh_public_keys = $6, token_sha256 = $7, disabled = $8, updated_at = $9 \
             WHERE org_id = $1 AND id = $2 RETURNING ",
            identity_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(&input.name)
        .bind(input.email.clone())
        .bind(to_json(&clean_list(&input.groups))?)
        .bind(to_json(&clean_list(&input.ssh_public_keys))?)
        .bind(input.token_sha256.clone())
        .bind(i64::from(input.disabled))
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::unique(format!(
            "identity named {:?} exists",
            input.name
        )))?;
        let identity = row
            .as_ref()
            .map(identity_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("identity {id}")))?;
        tx.commit().await?;
        Ok(identity)
    }

    pub async fn delete_identity(&self, org: OrgId, id: Uuid) -> Result<()> {
        self.delete_config_row(org, "identities", Key::Id(id), "identity")
            .await
    }

    // ------------------------------------------------------------------- groups

    pub async fn create_group(&self, org: OrgId, name: &str, description: &str) -> Result<Group> {
        validate_name("group", name)?;
        let group = Group {
            id: Uuid::now_v7(),
            org_id: org,
            name: name.to_string(),
            description: description.to_string(),
            created_at: now_ms(),
        };
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        sqlx::query(concat!(
            "INSERT INTO identity_groups (",
            group_cols!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(group.id.to_string())
        .bind(org.to_string())
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.created_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::unique(format!("group named {name:?} exists")))?;
        tx.commit().await?;
        Ok(group)
    }

    pub async fn get_group(&self, org: OrgId, id: Uuid) -> Result<Group> {
        self.get_group_by(&mut *self.pool.acquire().await?, org, Key::Id(id))
            .await
    }

    pub async fn get_group_by_name(&self, org: OrgId, name: &str) -> Result<Group> {
        self.get_group_by(&mut *self.pool.acquire().await?, org, Key::Name(name))
            .await
    }

    async fn get_group_by(
        &self,
        conn: &mut AnyConnection,
        org: OrgId,
        key: Key<'_>,
    ) -> Result<Group> {
        let sql = match key {
            Key::Id(_) => concat!(
                "SELECT ",
                group_cols!(),
                " FROM identity_groups WHERE org_id = $1 AND id = $2"
            ),
            Key::Name(_) => concat!(
                "SELECT ",
                group_cols!(),
                " FROM identity_groups WHERE org_id = $1 AND name = $2"
            ),
        };
        let row = sqlx::query(sql)
            .bind(org.to_string())
            .bind(key.value())
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref()
            .map(group_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(key.describe("group")))
    }

    /// The org's groups, by name.
    pub async fn list_groups(&self, org: OrgId) -> Result<Vec<Group>> {
        list_groups(&mut *self.pool.acquire().await?, org).await
    }

    /// Renames and/or redescribes a group. A rename is carried into every member's
    /// `groups` list in the same transaction.
    pub async fn update_group(
        &self,
        org: OrgId,
        id: Uuid,
        name: &str,
        description: &str,
    ) -> Result<Group> {
        validate_name("group", name)?;
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let old = self.get_group_by(&mut tx, org, Key::Id(id)).await?;
        let row = sqlx::query(concat!(
            "UPDATE identity_groups SET name = $3, description = $4 \
             WHERE org_id = $1 AND id = $2 RETURNING ",
            group_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(name)
        .bind(description)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::unique(format!("group named {name:?} exists")))?;
        let group = row
            .as_ref()
            .map(group_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found(format!("group {id}")))?;
        if old.name != group.name {
            rewrite_memberships(&mut tx, org, &old.name, Some(&group.name)).await?;
        }
        tx.commit().await?;
        Ok(group)
    }

    /// Deletes a group and removes it from every identity's `groups`, in one transaction.
    pub async fn delete_group(&self, org: OrgId, id: Uuid) -> Result<()> {
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let group = self.get_group_by(&mut tx, org, Key::Id(id)).await?;
        sqlx::query("DELETE FROM identity_groups WHERE org_id = $1 AND id = $2")
            .bind(org.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        rewrite_memberships(&mut tx, org, &group.name, None).await?;
        tx.commit().await?;
        Ok(())
    }

    // ----------------------------------------------------------- revision, sync

    /// The org's config revision: increases with every change a connector must see.
    pub async fn revision(&self, org: OrgId) -> Result<i64> {
        let rev: Option<i64> = sqlx::query_scalar("SELECT revision FROM orgs WHERE id = $1")
            .bind(org.to_string())
            .fetch_optional(&self.pool)
            .await?;
        rev.ok_or_else(|| org_not_found(org))
    }

    /// Everything a connector enforces, read in one consistent snapshot with the revision
    /// it belongs to.
    pub async fn snapshot(&self, org: OrgId) -> Result<ConfigSnapshot> {
        let mut tx = self.begin_snapshot().await?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM orgs WHERE id = $1")
            .bind(org.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| org_not_found(org))?;
        let resources = list_resources(&mut tx, org).await?;
        let policies = list_enforced_policies(&mut tx, org).await?;
        let identities = list_identities(&mut tx, org).await?;
        let groups = list_groups(&mut tx, org).await?;
        let grants = crate::access::active_grants(&mut tx, org, now_ms()).await?;
        tx.commit().await?;
        Ok(ConfigSnapshot {
            org_id: org,
            revision,
            resources,
            policies,
            identities,
            groups,
            grants,
        })
    }
}

async fn list_resources(conn: &mut AnyConnection, org: OrgId) -> Result<Vec<Resource>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        resource_cols!(),
        " FROM resources WHERE org_id = $1 ORDER BY name"
    ))
    .bind(org.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(resource_from_row).collect()
}

async fn list_identities(conn: &mut AnyConnection, org: OrgId) -> Result<Vec<Identity>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        identity_cols!(),
        " FROM identities WHERE org_id = $1 ORDER BY name"
    ))
    .bind(org.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(identity_from_row).collect()
}

async fn list_groups(conn: &mut AnyConnection, org: OrgId) -> Result<Vec<Group>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        group_cols!(),
        " FROM identity_groups WHERE org_id = $1 ORDER BY name"
    ))
    .bind(org.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(group_from_row).collect()
}

/// Replaces (or, with `to = None`, removes) group `from` in every identity of the org.
/// Group lists are JSON text, so this reads the lists and rewrites the ones that change;
/// the caller's transaction makes it atomic with the group change.
async fn rewrite_memberships(
    conn: &mut AnyConnection,
    org: OrgId,
    from: &str,
    to: Option<&str>,
) -> Result<()> {
    let rows = sqlx::query("SELECT id, group_names FROM identities WHERE org_id = $1")
        .bind(org.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let now = now_ms();
    for row in rows {
        let groups: Vec<String> = row.json("group_names")?;
        if !groups.iter().any(|g| g == from) {
            continue;
        }
        let renamed: Vec<String> = groups
            .iter()
            .filter_map(|g| {
                if g == from {
                    to.map(str::to_string)
                } else {
                    Some(g.clone())
                }
            })
            .collect();
        sqlx::query(
            "UPDATE identities SET group_names = $3, updated_at = $4 WHERE org_id = $1 AND id = $2",
        )
        .bind(org.to_string())
        .bind(row.text("id")?)
        .bind(to_json(&clean_list(&renamed))?)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
