//! Where the CLI reads recordings from.
//!
//! Today that is the object store connectors write to, opened with the same resolution they
//! use (`gate_recording::open_store`). The control plane will serve the same data over HTTP
//! (`GET /api/v1/recordings`, `/api/v1/recordings/{id}`, `/api/v1/recordings/{id}/content`);
//! its client becomes a second variant of [`Source`] behind a `--url` flag, with the same
//! three methods, and nothing else in the CLI changes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use gate_core::config::RecordingLocation;
use gate_recording::RecordingIndex;
use object_store::ObjectStore;
use object_store::path::Path;

pub enum Source {
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    },
}

impl Source {
    /// `--store`: anything with a scheme (`file://`, `s3://`) is a URL, else a directory.
    pub fn from_store_arg(raw: &str) -> anyhow::Result<Source> {
        let location = if raw.contains("://") {
            RecordingLocation::Url(raw.to_string())
        } else {
            RecordingLocation::Dir(PathBuf::from(raw))
        };
        let (store, prefix) =
            gate_recording::open_store(&location).context("opening the recordings store")?;
        Ok(Source::Store { store, prefix })
    }

    /// Every recording's index, newest first.
    pub async fn list(&self) -> anyhow::Result<Vec<RecordingIndex>> {
        match self {
            Source::Store { store, prefix } => {
                Ok(gate_recording::list_recordings(&**store, prefix).await?)
            }
        }
    }

    /// The recording with this id or unique id prefix.
    pub async fn find(&self, id: &str) -> anyhow::Result<RecordingIndex> {
        match self {
            Source::Store { store, prefix } => {
                Ok(gate_recording::find_recording(&**store, prefix, id).await?)
            }
        }
    }

    /// The recording's bytes, checked against the size and digest in its index: a
    /// truncated or altered recording is an error, not something to replay or hand on.
    pub async fn content(&self, index: &RecordingIndex) -> anyhow::Result<Bytes> {
        let content = match self {
            Source::Store { store, .. } => gate_recording::read_content(&**store, index)
                .await
                .with_context(|| format!("reading {}", index.object_key))?,
        };
        index.verify(&content)?;
        Ok(content)
    }
}
