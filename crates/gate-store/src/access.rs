//! Just-in-time access: access requests, the grants they become, and the org's approval
//! rules.
//!
//! Every state change is one `UPDATE … WHERE status = '<from>'` in a write transaction that
//! bumps the org's revision first (active grants are part of the config snapshot). The
//! status guard in SQL is what makes concurrent decisions safe: of an approve and a deny
//! racing on one pending request, exactly one updates a row; the other finds none and gets
//! [`StoreError::Conflict`] naming the state the request is in now.

use crate::time::now_ms;
use crate::{
    AccessRequest, AccessRequestFilter, AccessRequestInput, AccessStatus, ApprovalRules, OrgId,
    Result, RowExt as _, Store, StoreError, bump_revision, ensure_org, to_json, validate_name,
};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use uuid::Uuid;

macro_rules! access_cols {
    () => {
        "id, org_id, requester, resource, reason, requested_duration_s, scopes, status, \
         created_at, decided_at, decided_by, decision_reason, expires_at, pending_expires_at, \
         revoked_at, revoked_by, revoke_reason"
    };
}

/// What `expire_due` transitions: `$1` the org, `$2` now.
macro_rules! due {
    () => {
        "org_id = $1 AND ((status = 'pending' AND pending_expires_at <= $2) \
         OR (status = 'approved' AND expires_at <= $2))"
    };
}

fn access_from_row(row: &AnyRow) -> Result<AccessRequest> {
    Ok(AccessRequest {
        id: row.uuid("id")?,
        org_id: row.org_id("org_id")?,
        requester: row.text("requester")?,
        resource: row.text("resource")?,
        reason: row.text("reason")?,
        requested_duration_s: row.int("requested_duration_s")?,
        scopes: row.json("scopes")?,
        status: row.parsed("status")?,
        created_at: row.int("created_at")?,
        decided_at: row.opt_int("decided_at")?,
        decided_by: row.opt_text("decided_by")?,
        decision_reason: row.opt_text("decision_reason")?,
        expires_at: row.opt_int("expires_at")?,
        pending_expires_at: row.int("pending_expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        revoked_by: row.opt_text("revoked_by")?,
        revoke_reason: row.opt_text("revoke_reason")?,
    })
}

/// The longest duration anyone may ask for (a year), so `now + duration` cannot overflow.
const MAX_DURATION_S: i64 = 366 * 86_400;

fn validate_duration(what: &str, s: i64) -> Result<()> {
    if s <= 0 || s > MAX_DURATION_S {
        return Err(StoreError::Invalid(format!(
            "{what} must be between 1 second and 366 days, not {s} s"
        )));
    }
    Ok(())
}

fn validate_rules(rules: &ApprovalRules) -> Result<()> {
    validate_duration("pending_ttl_s", rules.pending_ttl_s)?;
    if let Some(m) = rules.default_max_duration_s {
        validate_duration("default_max_duration_s", m)?;
    }
    for (name, rule) in &rules.resources {
        validate_name("resource", name)?;
        if let Some(m) = rule.max_duration_s {
            validate_duration(&format!("max_duration_s of {name:?}"), m)?;
        }
    }
    Ok(())
}

impl Store {
    /// Files a pending access request that expires, undecided, at `now + pending_ttl_s`.
    /// Does not change the revision: a pending request grants nothing.
    pub async fn create_access_request(
        &self,
        org: OrgId,
        input: &AccessRequestInput,
        pending_ttl_s: i64,
        now: i64,
    ) -> Result<AccessRequest> {
        validate_name("identity", &input.requester)?;
        validate_name("resource", &input.resource)?;
        validate_duration("requested_duration_s", input.requested_duration_s)?;
        validate_duration("pending_ttl_s", pending_ttl_s)?;
        if !input.scopes.is_object() {
            return Err(StoreError::Invalid("scopes must be a JSON object".into()));
        }
        let request = AccessRequest {
            id: Uuid::now_v7(),
            org_id: org,
            requester: input.requester.clone(),
            resource: input.resource.clone(),
            reason: input.reason.clone(),
            requested_duration_s: input.requested_duration_s,
            scopes: input.scopes.clone(),
            status: AccessStatus::Pending,
            created_at: now,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            expires_at: None,
            pending_expires_at: now + pending_ttl_s * 1000,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        };
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        sqlx::query(
            "INSERT INTO access_requests (org_id, id, requester, resource, reason, \
             requested_duration_s, scopes, status, created_at, pending_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9)",
        )
        .bind(org.to_string())
        .bind(request.id.to_string())
        .bind(&request.requester)
        .bind(&request.resource)
        .bind(&request.reason)
        .bind(request.requested_duration_s)
        .bind(to_json(&request.scopes)?)
        .bind(request.created_at)
        .bind(request.pending_expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(request)
    }

    pub async fn get_access_request(&self, org: OrgId, id: Uuid) -> Result<AccessRequest> {
        get(&mut *self.pool.acquire().await?, org, id).await
    }

    /// The org's access requests matching `filter`, newest first.
    pub async fn list_access_requests(
        &self,
        org: OrgId,
        filter: &AccessRequestFilter,
    ) -> Result<Vec<AccessRequest>> {
        let mut sql = String::from(concat!(
            "SELECT ",
            access_cols!(),
            " FROM access_requests WHERE org_id = $1"
        ));
        let mut args: Vec<String> = Vec::new();
        for (col, value) in [
            ("requester", filter.requester.clone()),
            ("status", filter.status.map(|s| s.as_str().to_string())),
            ("resource", filter.resource.clone()),
        ] {
            if let Some(v) = value {
                args.push(v);
                sql.push_str(&format!(" AND {col} = ${}", args.len() + 1));
            }
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        // Only fixed column names and placeholder numbers are interpolated.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org.to_string());
        for a in args {
            query = query.bind(a);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(access_from_row).collect()
    }

    /// Approves a pending request: the grant runs from `now` for the requested duration,
    /// capped at `max_duration_s` when given. Refused (Conflict) when the request is not
    /// pending any more or `approver` is its requester.
    pub async fn approve_access_request(
        &self,
        org: OrgId,
        id: Uuid,
        approver: &str,
        reason: &str,
        now: i64,
        max_duration_s: Option<i64>,
    ) -> Result<AccessRequest> {
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(concat!(
            "UPDATE access_requests SET status = 'approved', decided_at = $3, decided_by = $4, \
             decision_reason = $5, \
             expires_at = $3 + 1000 * (CASE WHEN $6 > 0 AND requested_duration_s > $6 \
             THEN $6 ELSE requested_duration_s END) \
             WHERE org_id = $1 AND id = $2 AND status = 'pending' AND requester <> $4 RETURNING ",
            access_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(now)
        .bind(approver)
        .bind(reason)
        .bind(max_duration_s.unwrap_or(0))
        .fetch_optional(&mut *tx)
        .await?;
        finish(tx, org, id, row, "approve", Some(approver)).await
    }

    /// Denies a pending request.
    pub async fn deny_access_request(
        &self,
        org: OrgId,
        id: Uuid,
        approver: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest> {
        self.decide(org, id, "denied", approver, reason, now).await
    }

    /// Cancels a pending request; only its requester may.
    pub async fn cancel_access_request(
        &self,
        org: OrgId,
        id: Uuid,
        requester: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest> {
        // The requester of a request never changes, so checking it before the guarded
        // update is race-free.
        let current = self.get_access_request(org, id).await?;
        if current.requester != requester {
            return Err(StoreError::conflict(format!(
                "access request {id} can only be cancelled by its requester"
            )));
        }
        self.decide(org, id, "cancelled", requester, reason, now)
            .await
    }

    async fn decide(
        &self,
        org: OrgId,
        id: Uuid,
        to: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest> {
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(concat!(
            "UPDATE access_requests SET status = $3, decided_at = $4, decided_by = $5, \
             decision_reason = $6 WHERE org_id = $1 AND id = $2 AND status = 'pending' \
             RETURNING ",
            access_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(to)
        .bind(now)
        .bind(by)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        finish(tx, org, id, row, to, None).await
    }

    /// Revokes an active grant (approved and not yet expired at `now`).
    pub async fn revoke_access_request(
        &self,
        org: OrgId,
        id: Uuid,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest> {
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let row = sqlx::query(concat!(
            "UPDATE access_requests SET status = 'revoked', revoked_at = $3, revoked_by = $4, \
             revoke_reason = $5 WHERE org_id = $1 AND id = $2 AND status = 'approved' \
             AND expires_at > $3 RETURNING ",
            access_cols!()
        ))
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(now)
        .bind(by)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        finish(tx, org, id, row, "revoke", None).await
    }

    /// Expires what is due at `now`: pending requests past `pending_expires_at` and grants
    /// past `expires_at`. Returns the ids that changed; bumps the revision only if any did.
    pub async fn expire_due_access_requests(&self, org: OrgId, now: i64) -> Result<Vec<Uuid>> {
        // A cheap read first, so an idle org is not write-locked every few seconds.
        let due: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM access_requests WHERE ",
            due!()
        ))
        .bind(org.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if due == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        bump_revision(&mut tx, org).await?;
        let ids: Vec<String> = sqlx::query_scalar(concat!(
            "UPDATE access_requests SET status = 'expired', \
             decided_at = COALESCE(decided_at, $2) WHERE ",
            due!(),
            " RETURNING id"
        ))
        .bind(org.to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            // Another process expired them first: leave the revision alone.
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        tx.commit().await?;
        let mut out = ids
            .iter()
            .map(|s| {
                Uuid::parse_str(s).map_err(|e| StoreError::Invalid(format!("stored id {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }

    /// Grants in force at `now`: approved and not expired.
    pub async fn active_grants(&self, org: OrgId, now: i64) -> Result<Vec<AccessRequest>> {
        active_grants(&mut *self.pool.acquire().await?, org, now).await
    }

    /// The org's approval rules (defaults when never set).
    pub async fn get_approval_rules(&self, org: OrgId) -> Result<ApprovalRules> {
        let mut conn = self.pool.acquire().await?;
        ensure_org(&mut conn, org).await?;
        let rules: Option<String> =
            sqlx::query_scalar("SELECT rules FROM approval_rules WHERE org_id = $1")
                .bind(org.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        match rules {
            None => Ok(ApprovalRules::default()),
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| StoreError::Invalid(format!("stored approval rules: {e}"))),
        }
    }

    /// Replaces the org's approval rules.
    pub async fn set_approval_rules(&self, org: OrgId, rules: &ApprovalRules) -> Result<()> {
        validate_rules(rules)?;
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        sqlx::query(
            "INSERT INTO approval_rules (org_id, rules, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id) DO UPDATE SET rules = excluded.rules, \
             updated_at = excluded.updated_at",
        )
        .bind(org.to_string())
        .bind(to_json(rules)?)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn get(conn: &mut AnyConnection, org: OrgId, id: Uuid) -> Result<AccessRequest> {
    let row = sqlx::query(concat!(
        "SELECT ",
        access_cols!(),
        " FROM access_requests WHERE org_id = $1 AND id = $2"
    ))
    .bind(org.to_string())
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref()
        .map(access_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::not_found(format!("access request {id}")))
}

/// Commits a transition that updated `row`, or explains (and rolls back) why none was.
async fn finish(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    org: OrgId,
    id: Uuid,
    row: Option<AnyRow>,
    verb: &str,
    approver: Option<&str>,
) -> Result<AccessRequest> {
    match row {
        Some(row) => {
            let request = access_from_row(&row)?;
            tx.commit().await?;
            Ok(request)
        }
        None => {
            let current = get(&mut tx, org, id).await?;
            tx.rollback().await?;
            if approver.is_some_and(|a| a == current.requester)
                && current.status == AccessStatus::Pending
            {
                return Err(StoreError::conflict(format!(
                    "access request {id}: self-approval is not allowed"
                )));
            }
            Err(StoreError::conflict(format!(
                "access request {id} is {}; cannot {verb}",
                current.status
            )))
        }
    }
}

pub(crate) async fn active_grants(
    conn: &mut AnyConnection,
    org: OrgId,
    now: i64,
) -> Result<Vec<AccessRequest>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        access_cols!(),
        " FROM access_requests WHERE org_id = $1 AND status = 'approved' AND expires_at > $2 \
         ORDER BY created_at, id"
    ))
    .bind(org.to_string())
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(access_from_row).collect()
}
