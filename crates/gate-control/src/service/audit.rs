//! The audit log, read side: query with filters and export as JSON Lines or CSV. There is
//! deliberately no function that edits or deletes an event.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use gate_store::{AUDIT_MAX_LIMIT, AuditQuery, AuditRecord};
use serde::{Deserialize, Serialize};

use super::store_error;
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Audit filters as both surfaces take them (HTTP query string, gRPC `AuditQuery`). Time
/// bounds are unix milliseconds or RFC 3339 text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuditFilter {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    /// Pass back as `cursor` for the next (older) page; absent at the end.
    pub next_cursor: Option<String>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// JSON Lines: one stored event per line, as received.
    Json,
    /// One row per event with the indexed columns and the event as JSON in the last one.
    Csv,
}

impl ExportFormat {
    pub fn parse(s: &str) -> ServiceResult<ExportFormat> {
        match s.trim() {
            "" | "json" | "jsonl" => Ok(ExportFormat::Json),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(ServiceError::invalid(format!(
                "unknown export format {other:?} (expected json or csv)"
            ))),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Json => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn parse_time(field: &str, s: &str) -> ServiceResult<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    gate_store::time::parse_rfc3339_ms(s).ok_or_else(|| {
        ServiceError::invalid(format!(
            "{field} must be unix milliseconds or an RFC 3339 time"
        ))
    })
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl AuditFilter {
    fn to_query(&self) -> ServiceResult<AuditQuery> {
        let from = non_empty(&self.from)
            .map(|s| parse_time("from", &s))
            .transpose()?;
        let to = non_empty(&self.to)
            .map(|s| parse_time("to", &s))
            .transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(ServiceError::invalid("from is after to"));
        }
        Ok(AuditQuery {
            from,
            to,
            identity: non_empty(&self.identity),
            resource: non_empty(&self.resource),
            action: non_empty(&self.action),
            kind: non_empty(&self.kind),
            session_id: non_empty(&self.session_id),
            limit: self.limit.filter(|l| *l > 0),
            before_cursor: non_empty(&self.cursor),
        })
    }
}

pub async fn query_audit(
    ctl: &Control,
    caller: &Caller,
    filter: AuditFilter,
) -> ServiceResult<AuditPage> {
    let org = caller.require(Access::Read)?;
    let query = filter.to_query()?;
    let limit = query
        .limit
        .unwrap_or(gate_store::AUDIT_DEFAULT_LIMIT)
        .min(AUDIT_MAX_LIMIT) as usize;
    let events = ctl
        .store()
        .query_audit(org, &query)
        .await
        .map_err(store_error)?;
    let next_cursor = (events.len() >= limit)
        .then(|| events.last().map(AuditRecord::cursor))
        .flatten();
    Ok(AuditPage {
        events,
        next_cursor,
    })
}

/// CSV header of [`ExportFormat::Csv`].
pub const CSV_HEADER: &str =
    "time,id,kind,identity,resource,action,protocol,session_id,connector_id,event\n";

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn render(format: ExportFormat, records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        match format {
            ExportFormat::Json => {
                out.push_str(&r.event.to_string());
                out.push('\n');
            }
            ExportFormat::Csv => {
                let connector = r.connector_id.map(|c| c.to_string()).unwrap_or_default();
                let time = gate_store::time::format_rfc3339_ms(r.time);
                let id = r.id.to_string();
                let event = r.event.to_string();
                let fields: [&str; 10] = [
                    &time,
                    &id,
                    &r.kind,
                    r.identity.as_deref().unwrap_or(""),
                    r.resource.as_deref().unwrap_or(""),
                    r.action.as_deref().unwrap_or(""),
                    r.protocol.as_deref().unwrap_or(""),
                    r.session_id.as_deref().unwrap_or(""),
                    &connector,
                    &event,
                ];
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    csv_field(&mut out, f);
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Every matching event (`limit` and `cursor` are ignored), page by page from the store so
/// memory stays bounded however large the log is. Authorization and filter errors are
/// returned before anything is streamed; a store failure mid-way ends the stream with it.
pub async fn export_audit(
    ctl: Arc<Control>,
    caller: &Caller,
    filter: AuditFilter,
    format: ExportFormat,
) -> ServiceResult<impl Stream<Item = ServiceResult<Bytes>> + Send + 'static> {
    let org = caller.require(Access::Read)?;
    let mut query = filter.to_query()?;
    query.limit = Some(AUDIT_MAX_LIMIT.min(1000));
    query.before_cursor = None;
    let page_size = query.limit.unwrap_or(1000) as usize;
    struct State {
        ctl: Arc<Control>,
        query: AuditQuery,
        header: bool,
        done: bool,
    }
    let state = State {
        ctl,
        query,
        header: format == ExportFormat::Csv,
        done: false,
    };
    Ok(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            if st.header {
                st.header = false;
                return Some((Ok(Bytes::from_static(CSV_HEADER.as_bytes())), st));
            }
            if st.done {
                return None;
            }
            match st.ctl.store().query_audit(org, &st.query).await {
                Err(e) => {
                    st.done = true;
                    Some((Err(store_error(e)), st))
                }
                Ok(records) if records.is_empty() => None,
                Ok(records) => {
                    if records.len() < page_size {
                        st.done = true;
                    }
                    st.query.before_cursor = records.last().map(AuditRecord::cursor);
                    Some((Ok(Bytes::from(render(format, &records))), st))
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut s = String::new();
        csv_field(&mut s, "plain");
        s.push(',');
        csv_field(&mut s, "a,b \"c\"\nd");
        assert_eq!(s, "plain,\"a,b \"\"c\"\"\nd\"");
    }

    #[test]
    fn time_bounds_accept_ms_and_rfc3339() {
        let f = AuditFilter {
            from: Some("1000".into()),
            to: Some("1970-01-01T00:00:02Z".into()),
            ..Default::default()
        };
        let q = f.to_query().unwrap();
        assert_eq!((q.from, q.to), (Some(1000), Some(2000)));
        let bad = AuditFilter {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(matches!(
            bad.to_query(),
            Err(ServiceError::InvalidArgument(_))
        ));
    }
}
