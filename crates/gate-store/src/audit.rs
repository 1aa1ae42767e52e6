//! The audit trail: ingestion with deduplication, queries with cursor paging, retention.

use crate::time::{format_rfc3339_ms, now_ms, parse_rfc3339_ms};
use crate::{
    ADMIN_CHANGE_KIND, AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, AuditQuery, AuditRecord, IngestResult,
    OrgId, Result, RowExt as _, Store, StoreError, ensure_org, to_json,
};
use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe};
use uuid::Uuid;

const AUDIT_COLS: &str = "org_id, id, time_ms, kind, identity, resource, action, protocol, \
                          session_id, connector_id, received_at, event";
const AUDIT_COL_COUNT: usize = 12;
/// Rows per multi-row INSERT: 12 parameters each stays far below SQLite's 32766 and
/// PostgreSQL's 65535 parameter limits.
const INSERT_CHUNK: usize = 200;

fn record_from_row(row: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        org_id: row.org_id("org_id")?,
        id: row.uuid("id")?,
        time: row.int("time_ms")?,
        kind: row.text("kind")?,
        identity: row.opt_text("identity")?,
        resource: row.opt_text("resource")?,
        action: row.opt_text("action")?,
        protocol: row.opt_text("protocol")?,
        session_id: row.opt_text("session_id")?,
        connector_id: row
            .opt_text("connector_id")?
            .map(|s| {
                Uuid::parse_str(&s).map_err(|e| {
                    StoreError::Invalid(format!("stored connector_id {s:?} is not a UUID: {e}"))
                })
            })
            .transpose()?,
        received_at: row.int("received_at")?,
        event: row.json("event")?,
    })
}

/// One event's row, extracted and checked before anything is written.
struct AuditRow {
    id: Uuid,
    time_ms: i64,
    kind: String,
    identity: Option<String>,
    resource: Option<String>,
    action: Option<String>,
    protocol: Option<String>,
    session_id: Option<String>,
    event: String,
}

/// An optional string field: absent or null is `None`, a string is kept, anything else is
/// refused (a number where a name belongs is a sender bug worth hearing about).
fn opt_str(event: &Value, path: &[&str], index: usize) -> Result<Option<String>> {
    let mut v = event;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return Ok(None),
        }
    }
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(StoreError::Invalid(format!(
            "event {index}: `{}` is not a string",
            path.join(".")
        ))),
    }
}

fn audit_row(event: &Value, index: usize) -> Result<AuditRow> {
    if !event.is_object() {
        return Err(StoreError::Invalid(format!(
            "event {index} is not a JSON object"
        )));
    }
    let id = opt_str(event, &["id"], index)?
        .and_then(|s| Uuid::parse_str(&s).ok())
        .ok_or_else(|| StoreError::Invalid(format!("event {index}: `id` is not a UUID")))?;
    let time_ms = opt_str(event, &["time"], index)?
        .and_then(|s| parse_rfc3339_ms(&s))
        .ok_or_else(|| {
            StoreError::Invalid(format!("event {index}: `time` is not an RFC 3339 time"))
        })?;
    let kind = opt_str(event, &["kind"], index)?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| StoreError::Invalid(format!("event {index}: `kind` is missing")))?;
    Ok(AuditRow {
        id,
        time_ms,
        kind,
        identity: opt_str(event, &["identity", "name"], index)?,
        resource: opt_str(event, &["resource"], index)?,
        action: opt_str(event, &["action"], index)?,
        protocol: opt_str(event, &["protocol"], index)?,
        session_id: opt_str(event, &["session_id"], index)?,
        event: to_json(event)?,
    })
}

/// Inserts rows, skipping ids the org already has; returns the ids that were new.
async fn insert_rows(
    conn: &mut AnyConnection,
    org: OrgId,
    connector_id: Option<Uuid>,
    rows: &[AuditRow],
) -> Result<Vec<Uuid>> {
    let received_at = now_ms();
    let mut inserted = Vec::new();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = format!("INSERT INTO audit_events ({AUDIT_COLS}) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..AUDIT_COL_COUNT {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i * AUDIT_COL_COUNT + c + 1));
            }
            sql.push(')');
        }
        // Duplicates (redeliveries, or repeats inside the batch) are skipped by the
        // primary key, not by a prior SELECT: that is race-free under concurrency.
        sql.push_str(" ON CONFLICT (org_id, id) DO NOTHING RETURNING id");
        // The SQL is built from constants and placeholder numbers only.
        // Keep prepared statements for the shapes that recur (full chunks, single events),
        // not for every odd tail size, so the per-connection statement cache stays useful.
        let mut query = sqlx::query::<Any>(AssertSqlSafe(sql))
            .persistent(chunk.len() == INSERT_CHUNK || chunk.len() == 1);
        for row in chunk {
            query = query
                .bind(org.to_string())
                .bind(row.id.to_string())
                .bind(row.time_ms)
                .bind(row.kind.clone())
                .bind(row.identity.clone())
                .bind(row.resource.clone())
                .bind(row.action.clone())
                .bind(row.protocol.clone())
                .bind(row.session_id.clone())
                .bind(connector_id.map(|c| c.to_string()))
                .bind(received_at)
                .bind(row.event.clone());
        }
        let ids: Vec<String> = query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.text("id"))
            .collect::<Result<_>>()?;
        for id in ids {
            inserted.push(
                Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Invalid(format!("stored id {id:?}: {e}")))?,
            );
        }
    }
    Ok(inserted)
}

/// A bind value for the dynamically filtered queries.
enum Param {
    Text(String),
    Int(i64),
}

/// `WHERE …` for a query's filters (and, with `with_cursor`, its cursor), plus the values
/// to bind in order. Only fixed column names and placeholder numbers enter the SQL.
fn where_clause(org: OrgId, q: &AuditQuery, with_cursor: bool) -> Result<(String, Vec<Param>)> {
    let mut sql = String::from("WHERE org_id = $1");
    let mut params = vec![Param::Text(org.to_string())];
    let mut add = |cond: &str, params_for: Vec<Param>, sql: &mut String| {
        let mut cond = cond.to_string();
        for (i, p) in params_for.into_iter().enumerate() {
            params.push(p);
            cond = cond.replace(&format!("?{i}"), &format!("${}", params.len()));
        }
        sql.push_str(" AND ");
        sql.push_str(&cond);
    };
    if let Some(from) = q.from {
        add("time_ms >= ?0", vec![Param::Int(from)], &mut sql);
    }
    if let Some(to) = q.to {
        add("time_ms < ?0", vec![Param::Int(to)], &mut sql);
    }
    for (col, value) in [
        ("identity", &q.identity),
        ("resource", &q.resource),
        ("action", &q.action),
        ("kind", &q.kind),
        ("session_id", &q.session_id),
    ] {
        if let Some(v) = value {
            add(
                &format!("{col} = ?0"),
                vec![Param::Text(v.clone())],
                &mut sql,
            );
        }
    }
    if with_cursor && let Some(cursor) = &q.before_cursor {
        let (time, id) = parse_cursor(cursor)?;
        add(
            "(time_ms, id) < (?0, ?1)",
            vec![Param::Int(time), Param::Text(id.to_string())],
            &mut sql,
        );
    }
    Ok((sql, params))
}

fn parse_cursor(cursor: &str) -> Result<(i64, Uuid)> {
    let bad = || StoreError::Invalid(format!("bad audit cursor {cursor:?}"));
    let (time, id) = cursor.split_once('_').ok_or_else(bad)?;
    Ok((
        time.parse().map_err(|_| bad())?,
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    params: Vec<Param>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for p in params {
        query = match p {
            Param::Text(s) => query.bind(s),
            Param::Int(i) => query.bind(i),
        };
    }
    query
}

impl Store {
    /// Stores a batch of events shipped by a connector (or `None` for the control plane
    /// itself), skipping any whose `id` the org already has, so at-least-once delivery
    /// never stores or counts an event twice.
    ///
    /// Each event must be a JSON object with a UUID `id`, an RFC 3339 `time` and a `kind`;
    /// `identity.name`, `resource`, `action`, `protocol` and `session_id` are indexed when
    /// present; the whole event is kept as received. The batch is checked before anything
    /// is written and written in one transaction: a malformed event refuses the batch
    /// ([`StoreError::Invalid`] names it), it never half-lands.
    pub async fn ingest_audit(
        &self,
        org: OrgId,
        connector_id: Option<Uuid>,
        events: &[Value],
    ) -> Result<IngestResult> {
        self.ingest_audit_new_ids(org, connector_id, events)
            .await
            .map(|(result, _)| result)
    }

    /// [`Store::ingest_audit`], also returning the ids of the events stored now (not the
    /// duplicates), for acting on each event once however often it is shipped.
    pub async fn ingest_audit_new_ids(
        &self,
        org: OrgId,
        connector_id: Option<Uuid>,
        events: &[Value],
    ) -> Result<(IngestResult, Vec<Uuid>)> {
        let rows = events
            .iter()
            .enumerate()
            .map(|(i, e)| audit_row(e, i))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.begin_write().await?;
        ensure_org(&mut tx, org).await?;
        if let Some(connector) = connector_id {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM connectors WHERE org_id = $1 AND id = $2")
                    .bind(org.to_string())
                    .bind(connector.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::not_found(format!("connector {connector}")));
            }
        }
        let new_ids = insert_rows(&mut tx, org, connector_id, &rows).await?;
        tx.commit().await?;
        let inserted = new_ids.len() as u64;
        Ok((
            IngestResult {
                inserted,
                duplicates: (rows.len() as u64).saturating_sub(inserted),
            },
            new_ids,
        ))
    }

    /// Records an administrative change (`kind = "admin_change"`) in the audit trail:
    /// `actor` (indexed as the identity) did `action` (e.g. `policy.update`) to `target`,
    /// with free-form `details`. Does not require the org to exist any more, so an org's
    /// own deletion can be recorded.
    pub async fn append_admin_event(
        &self,
        org: OrgId,
        actor: &str,
        action: &str,
        target: &str,
        details: Value,
    ) -> Result<AuditRecord> {
        let id = Uuid::now_v7();
        let event = serde_json::json!({
            "id": id,
            "time": format_rfc3339_ms(now_ms()),
            "kind": ADMIN_CHANGE_KIND,
            "identity": { "name": actor },
            "action": action,
            "target": target,
            "details": details,
        });
        let row = audit_row(&event, 0)?;
        let mut conn = self.pool.acquire().await?;
        insert_rows(&mut conn, org, None, std::slice::from_ref(&row)).await?;
        let record = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLS} FROM audit_events WHERE org_id = $1 AND id = $2"
        )))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
        record_from_row(&record)
    }

    /// Events matching `query`, newest first (by event time, then id). For the next page,
    /// pass the last record's [`AuditRecord::cursor`] as `before_cursor`: (time, id) is
    /// unique and immutable, so pages neither repeat nor skip records, even while new
    /// events arrive.
    pub async fn query_audit(&self, org: OrgId, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let limit = query
            .limit
            .unwrap_or(AUDIT_DEFAULT_LIMIT)
            .clamp(1, AUDIT_MAX_LIMIT);
        let (filter, mut params) = where_clause(org, query, true)?;
        params.push(Param::Int(i64::from(limit)));
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM audit_events {filter} \
             ORDER BY time_ms DESC, id DESC LIMIT ${}",
            params.len()
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// How many events match `query`'s filters (its `limit` and cursor are ignored).
    pub async fn count_audit(&self, org: OrgId, query: &AuditQuery) -> Result<i64> {
        let (filter, params) = where_clause(org, query, false)?;
        let sql = format!("SELECT COUNT(*) AS n FROM audit_events {filter}");
        let row = bind_all(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_one(&self.pool)
            .await?;
        row.int("n")
    }

    /// Deletes the org's events older than `cutoff_ms` (event time) and returns how many.
    /// The retention job's only tool: there is no other way to change or remove audit.
    pub async fn purge_audit_before(&self, org: OrgId, cutoff_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit_events WHERE org_id = $1 AND time_ms < $2")
            .bind(org.to_string())
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_indexed_fields() {
        let e = json!({
            "id": "0190f0e0-0000-7000-8000-000000000001",
            "time": "2026-01-02T03:04:05.678901Z",
            "kind": "policy_decision",
            "identity": {"sub": "u1", "name": "alice"},
            "resource": "prod-db",
            "action": "block",
            "protocol": "postgres",
            "session_id": "0190f0e0-0000-7000-8000-0000000000aa",
            "statement": "DROP TABLE users"
        });
        let row = audit_row(&e, 0).unwrap();
        assert_eq!(row.identity.as_deref(), Some("alice"));
        assert_eq!(row.action.as_deref(), Some("block"));
        assert_eq!(row.time_ms % 1000, 678);
        assert!(
            audit_row(
                &json!({"id": "x", "time": "2026-01-02T03:04:05Z", "kind": "k"}),
                3
            )
            .is_err_and(|e| e.to_string().contains("event 3"))
        );
        assert!(audit_row(&json!([1]), 0).is_err());
        let mut bad = e.clone();
        bad["resource"] = json!(7);
        assert!(audit_row(&bad, 0).is_err());
        let mut no_time = e;
        no_time["time"] = json!("yesterday");
        assert!(audit_row(&no_time, 0).is_err());
    }

    #[test]
    fn cursors() {
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&format!("123_{id}")).unwrap(), (123, id));
        assert!(parse_cursor("123").is_err());
        assert!(parse_cursor("x_y").is_err());
    }

    #[test]
    fn where_clause_numbers_parameters() {
        let q = AuditQuery {
            from: Some(1),
            identity: Some("alice".into()),
            before_cursor: Some(format!("5_{}", Uuid::nil())),
            ..Default::default()
        };
        let (sql, params) = where_clause(OrgId(Uuid::nil()), &q, true).unwrap();
        assert_eq!(
            sql,
            "WHERE org_id = $1 AND time_ms >= $2 AND identity = $3 AND (time_ms, id) < ($4, $5)"
        );
        assert_eq!(params.len(), 5);
        let (sql, _) = where_clause(OrgId(Uuid::nil()), &q, false).unwrap();
        assert!(!sql.contains("$4"));
    }
}
