//! Recordings as the control plane serves them (`/api/v1/recordings`).
//!
//! Connectors announce every finalised recording as an audit event of kind `recording`
//! (its index in `details`), shipped with the audit's at-least-once delivery; so the org's
//! audit log is the org-scoped index, and the bytes are read from the recording store the
//! control plane is configured with (`recording: {dir | url}`, the one connectors write
//! to). Content is checked against the index's SHA-256 and size before it is served.

use bytes::Bytes;
use gate_recording::RecordingIndex;
use gate_store::{AuditQuery, AuditRecord};
use serde::Serialize;

use super::store_error;
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// Most recording events scanned per listing.
const SCAN_LIMIT: u32 = 10_000;

/// One recording: the index the connector announced (the same shape as the
/// `.meta.json` sidecar next to the object) and the connector that shipped it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    #[serde(flatten)]
    pub index: RecordingIndex,
    pub connector_id: Option<String>,
}

impl RecordingInfo {
    fn from_record(r: &AuditRecord) -> Option<RecordingInfo> {
        let details = r.event.get("details")?.clone();
        let index: RecordingIndex = serde_json::from_value(details).ok()?;
        Some(RecordingInfo {
            index,
            connector_id: r.connector_id.map(|c| c.to_string()),
        })
    }
}

/// The org's recordings, newest first.
pub async fn list_recordings(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<RecordingInfo>> {
    let org = caller.require(Access::Read)?;
    let query = AuditQuery {
        kind: Some("recording".into()),
        limit: Some(SCAN_LIMIT),
        ..AuditQuery::default()
    };
    let records = ctl
        .store()
        .query_audit(org, &query)
        .await
        .map_err(store_error)?;
    let mut seen = std::collections::HashSet::new();
    Ok(records
        .iter()
        .filter_map(RecordingInfo::from_record)
        .filter(|r| seen.insert(r.index.recording_id))
        .collect())
}

/// One recording by id (or a unique id prefix).
pub async fn get_recording(
    ctl: &Control,
    caller: &Caller,
    id: &str,
) -> ServiceResult<RecordingInfo> {
    let wanted = id.trim().to_ascii_lowercase();
    if wanted.is_empty() {
        return Err(ServiceError::invalid("recording id is required"));
    }
    let mut found: Vec<RecordingInfo> = list_recordings(ctl, caller)
        .await?
        .into_iter()
        .filter(|r| {
            let id = r.index.recording_id.to_string();
            id.starts_with(&wanted) || id.replace('-', "").starts_with(&wanted)
        })
        .collect();
    match found.len() {
        0 => Err(ServiceError::not_found(&format!("recording {id}"))),
        1 => Ok(found.remove(0)),
        n => Err(ServiceError::invalid(format!(
            "recording id prefix {id:?} matches {n} recordings; give more of it"
        ))),
    }
}

/// The recording's bytes, checked against its SHA-256 and size.
pub async fn recording_content(
    ctl: &Control,
    caller: &Caller,
    id: &str,
) -> ServiceResult<(RecordingInfo, Bytes)> {
    let info = get_recording(ctl, caller, id).await?;
    let Some((store, _prefix)) = ctl.recording_store() else {
        return Err(ServiceError::Unavailable(
            "this control plane has no recording store configured (recording: {dir | url})".into(),
        ));
    };
    let path = object_store::path::Path::from(info.index.object_key.as_str());
    let bytes = match object_store::ObjectStoreExt::get(store.as_ref(), &path).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    }
    .map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            ServiceError::not_found(&format!("recording content {}", info.index.object_key))
        }
        other => {
            tracing::error!(error = %other, key = %info.index.object_key, "recording store read failed");
            ServiceError::Unavailable("the recording store could not be read".into())
        }
    })?;
    if let Err(e) = info.index.verify(&bytes) {
        tracing::error!(key = %info.index.object_key, error = %e, "recording content does not match its index");
        return Err(ServiceError::Unavailable(format!(
            "recording {} does not match its SHA-256; refusing to serve it",
            info.index.recording_id
        )));
    }
    Ok((info, bytes))
}
