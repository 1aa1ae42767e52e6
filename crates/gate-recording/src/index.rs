//! The index sidecar of a recording (`<key>.meta.json`) and the read side built on it.
//!
//! Listing a store of recordings must not mean downloading every recording: the writer puts
//! a small JSON object next to each finished recording with who/what/when, the size and the
//! SHA-256 of the stored bytes. Readers (the `gate` CLI, later the control plane) list only
//! those sidecars, and can check a downloaded recording against its digest.

use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use gate_core::audit::AuditIdentity;
use gate_core::time::serde_rfc3339;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::RecordingError;

/// Suffix of the index sidecar, appended to the recording's key.
pub const INDEX_SUFFIX: &str = ".meta.json";

/// Sidecars fetched at once by [`list_recordings`] (latency hiding on S3).
const LIST_CONCURRENCY: usize = 16;

/// What a recording holds, which decides its format and file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingKind {
    /// The statements of a database session, as JSON Lines (`.jsonl`, see [`crate::RecordLine`]).
    Queries,
    /// A terminal session, as asciicast v2 (`.cast`, see [`crate::read_cast`]).
    Terminal,
}

impl RecordingKind {
    /// The file extension of the recording object, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            RecordingKind::Queries => "jsonl",
            RecordingKind::Terminal => "cast",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingKind::Queries => "queries",
            RecordingKind::Terminal => "terminal",
        }
    }

    /// The kind a recording key names, from its extension.
    pub fn of_key(key: &str) -> Option<RecordingKind> {
        [RecordingKind::Queries, RecordingKind::Terminal]
            .into_iter()
            .find(|kind| {
                key.strip_suffix(kind.extension())
                    .is_some_and(|rest| rest.ends_with('.'))
            })
    }
}

impl std::fmt::Display for RecordingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The index of one finished recording, stored as `<object_key>.meta.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordingIndex {
    /// Unique per recording. For a query recording it is the session id; a terminal session
    /// can have several recordings (one per channel).
    pub recording_id: Uuid,
    pub session_id: Uuid,
    pub kind: RecordingKind,
    pub protocol: String,
    pub resource: String,
    pub user: AuditIdentity,
    /// The terminal title (`user@resource`); `None` for query recordings.
    pub title: Option<String>,
    /// The command of a non-interactive terminal session.
    pub command: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "serde_rfc3339")]
    pub ended_at: SystemTime,
    /// Bytes of the stored recording object.
    pub size: u64,
    /// SHA-256 of exactly the stored bytes, lowercase hex.
    pub sha256: String,
    /// Key of the recording object relative to the store root (prefix included). When read
    /// back through [`list_recordings`] it is where the object is now, next to its sidecar.
    pub object_key: String,
}

impl RecordingIndex {
    /// The key of this recording's sidecar.
    pub fn index_key(&self) -> String {
        format!("{}{INDEX_SUFFIX}", self.object_key)
    }

    /// How long the recording lasted (zero for a bogus clock).
    pub fn duration(&self) -> std::time::Duration {
        self.ended_at
            .duration_since(self.started_at)
            .unwrap_or_default()
    }

    /// Checks downloaded content against the size and digest the writer stored, so a
    /// truncated download or a tampered object is noticed.
    pub fn verify(&self, content: &[u8]) -> Result<(), RecordingError> {
        let actual = sha256_hex(content);
        if content.len() as u64 == self.size && actual == self.sha256 {
            Ok(())
        } else {
            Err(RecordingError::Integrity {
                key: self.object_key.clone(),
                expected: format!("{} bytes, sha256 {}", self.size, self.sha256),
                actual: format!("{} bytes, sha256 {actual}", content.len()),
            })
        }
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        // Strings, numbers, a UUID and timestamps: serialization cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// `t` cut to whole microseconds, the precision of the sidecar's timestamps, so the index a
/// hook receives equals the one read back from the store.
pub(crate) fn micros(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64),
        Err(_) => t,
    }
}

/// Lowercase hex SHA-256 of `bytes`, as in [`RecordingIndex::sha256`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every recording index under `prefix`, newest first (by start, then id).
///
/// A sidecar that does not parse is skipped with a warning rather than failing the whole
/// listing: one damaged object must not hide every other recording. Store errors fail.
pub async fn list_recordings(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<RecordingIndex>, RecordingError> {
    let listing: Vec<Path> = store
        .list((!prefix.as_ref().is_empty()).then_some(prefix))
        .try_filter_map(|meta| async move {
            Ok(is_index_key(meta.location.as_ref()).then_some(meta.location))
        })
        .try_collect()
        .await?;
    let mut found: Vec<RecordingIndex> = futures_util::stream::iter(listing)
        .map(|path| read_index(store, path))
        .buffer_unordered(LIST_CONCURRENCY)
        .try_filter_map(|index| async move { Ok(index) })
        .try_collect()
        .await?;
    found.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then(a.recording_id.cmp(&b.recording_id))
    });
    Ok(found)
}

/// The recording whose id is `id_or_prefix`, or starts with it (with or without hyphens,
/// any case), so people can type the first few characters of an id like with git.
pub async fn find_recording(
    store: &dyn ObjectStore,
    prefix: &Path,
    id_or_prefix: &str,
) -> Result<RecordingIndex, RecordingError> {
    let all = list_recordings(store, prefix).await?;
    pick_recording(all, id_or_prefix)
}

/// The matching part of [`find_recording`], over an already listed set.
pub fn pick_recording(
    all: Vec<RecordingIndex>,
    id_or_prefix: &str,
) -> Result<RecordingIndex, RecordingError> {
    let wanted = id_or_prefix.trim().to_ascii_lowercase();
    let not_found = || RecordingError::NotFound {
        id: id_or_prefix.to_string(),
    };
    if wanted.is_empty() {
        return Err(not_found());
    }
    let mut matches: Vec<RecordingIndex> = all
        .into_iter()
        .filter(|index| {
            let id = index.recording_id;
            id.hyphenated().to_string().starts_with(&wanted)
                || id.simple().to_string().starts_with(&wanted)
        })
        .collect();
    // The same id twice (a sidecar copied under another prefix) is still one recording.
    matches.dedup_by_key(|index| index.recording_id);
    let first = matches.first().map(|index| index.recording_id);
    if matches
        .iter()
        .any(|index| Some(index.recording_id) != first)
    {
        let mut candidates: Vec<Uuid> = matches.iter().map(|i| i.recording_id).collect();
        candidates.sort();
        candidates.dedup();
        return Err(RecordingError::Ambiguous {
            id: id_or_prefix.to_string(),
            candidates,
        });
    }
    matches.into_iter().next().ok_or_else(not_found)
}

/// The stored bytes of a recording (not verified: see [`RecordingIndex::verify`]).
pub async fn read_content(
    store: &dyn ObjectStore,
    index: &RecordingIndex,
) -> Result<Bytes, RecordingError> {
    let key = Path::parse(&index.object_key).map_err(object_store::Error::from)?;
    Ok(store.get(&key).await?.bytes().await?)
}

fn is_index_key(key: &str) -> bool {
    key.strip_suffix(INDEX_SUFFIX)
        .and_then(RecordingKind::of_key)
        .is_some()
}

/// One sidecar; `None` (logged) when it vanished since the listing or does not parse.
async fn read_index(
    store: &dyn ObjectStore,
    path: Path,
) -> Result<Option<RecordingIndex>, RecordingError> {
    let bytes = match store.get(&path).await {
        Ok(found) => found.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_slice::<RecordingIndex>(&bytes) {
        Ok(mut index) => {
            if let Some(key) = path.as_ref().strip_suffix(INDEX_SUFFIX) {
                index.object_key = key.to_string();
            }
            Ok(Some(index))
        }
        Err(e) => {
            tracing::warn!(key = %path, error = %e, "skipping a recording index that does not parse");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn index(id: &str, started: u64) -> RecordingIndex {
        RecordingIndex {
            recording_id: id.parse().expect("a uuid"),
            session_id: Uuid::nil(),
            kind: RecordingKind::Terminal,
            protocol: "ssh".into(),
            resource: "host".into(),
            user: AuditIdentity {
                sub: "u".into(),
                name: "alice".into(),
                email: None,
            },
            title: Some("alice@host".into()),
            command: None,
            started_at: UNIX_EPOCH + Duration::from_secs(started),
            ended_at: UNIX_EPOCH + Duration::from_secs(started + 5),
            size: 3,
            sha256: sha256_hex(b"abc"),
            object_key: format!("ssh/1970-01-01/{id}.cast"),
        }
    }

    #[test]
    fn kinds_come_from_extensions() {
        assert_eq!(
            RecordingKind::of_key("a/b.cast"),
            Some(RecordingKind::Terminal)
        );
        assert_eq!(
            RecordingKind::of_key("a/b.jsonl"),
            Some(RecordingKind::Queries)
        );
        assert_eq!(RecordingKind::of_key("a/bcast"), None);
        assert_eq!(RecordingKind::of_key("a/b.cast.meta.json"), None);
        assert!(is_index_key("a/b.cast.meta.json"));
        assert!(!is_index_key("a/b.meta.json"));
        assert_eq!(
            serde_json::to_string(&RecordingKind::Queries).unwrap(),
            "\"queries\""
        );
    }

    #[test]
    fn ids_match_by_unique_prefix() {
        let a = index("0190aaaa-0000-7000-8000-000000000001", 1);
        let b = index("0190aaab-0000-7000-8000-000000000002", 2);
        let all = vec![a.clone(), b.clone()];
        assert_eq!(pick_recording(all.clone(), "0190aaaa").unwrap(), a);
        assert_eq!(pick_recording(all.clone(), " 0190AAAB ").unwrap(), b);
        assert_eq!(
            pick_recording(all.clone(), "0190aaab00007000").unwrap(),
            b,
            "the simple form works too"
        );
        assert_eq!(
            pick_recording(all.clone(), &a.recording_id.to_string()).unwrap(),
            a
        );
        match pick_recording(all.clone(), "0190aaa") {
            Err(RecordingError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, [a.recording_id, b.recording_id])
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        assert!(matches!(
            pick_recording(all.clone(), "ffff"),
            Err(RecordingError::NotFound { .. })
        ));
        assert!(matches!(
            pick_recording(all, ""),
            Err(RecordingError::NotFound { .. })
        ));
    }

    #[test]
    fn verify_checks_size_and_digest() {
        let i = index("0190aaaa-0000-7000-8000-000000000001", 1);
        i.verify(b"abc").unwrap();
        assert!(matches!(
            i.verify(b"abd"),
            Err(RecordingError::Integrity { .. })
        ));
        let round: RecordingIndex = serde_json::from_slice(&i.to_json()).unwrap();
        assert_eq!(round, i);
    }
}
