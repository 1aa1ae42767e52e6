//! Where the CLI reads recordings from.
//!
//! Either the object store connectors write to, opened with the same resolution they use
//! (`gate_recording::open_store`), or the control plane over HTTP (`--url` or `gate login`:
//! `GET /api/v1/recordings`, `/api/v1/recordings/{id}`, `/api/v1/recordings/{id}/content`),
//! which serves the recordings of the caller's org. Either way the content is checked
//! against the index's SHA-256 before anything is played or written.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use gate_core::config::RecordingLocation;
use gate_recording::RecordingIndex;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::api::{Client, encode};

pub enum Source {
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    },
    ControlPlane(Client),
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

    /// The control plane's HTTP API (`--url` or the stored login).
    pub fn control_plane(client: Client) -> Source {
        Source::ControlPlane(client)
    }

    /// Every recording's index, newest first.
    pub async fn list(&self) -> anyhow::Result<Vec<RecordingIndex>> {
        match self {
            Source::Store { store, prefix } => {
                Ok(gate_recording::list_recordings(&**store, prefix).await?)
            }
            Source::ControlPlane { .. } => {
                #[derive(serde::Deserialize)]
                struct Listing {
                    recordings: Vec<RecordingIndex>,
                }
                let listing: Listing = self.client()?.get_json("/api/v1/recordings", &[]).await?;
                Ok(listing.recordings)
            }
        }
    }

    /// The recording with this id or unique id prefix.
    pub async fn find(&self, id: &str) -> anyhow::Result<RecordingIndex> {
        match self {
            Source::Store { store, prefix } => {
                Ok(gate_recording::find_recording(&**store, prefix, id).await?)
            }
            Source::ControlPlane { .. } => {
                self.client()?
                    .get_json(&format!("/api/v1/recordings/{}", encode(id)), &[])
                    .await
            }
        }
    }

    fn client(&self) -> anyhow::Result<&Client> {
        match self {
            Source::ControlPlane(client) => Ok(client),
            Source::Store { .. } => anyhow::bail!("not a control-plane source"),
        }
    }

    /// The recording's bytes, checked against the size and digest in its index: a
    /// truncated or altered recording is an error, not something to replay or hand on.
    pub async fn content(&self, index: &RecordingIndex) -> anyhow::Result<Bytes> {
        let content = match self {
            Source::Store { store, .. } => gate_recording::read_content(&**store, index)
                .await
                .with_context(|| format!("reading {}", index.object_key))?,
            Source::ControlPlane(client) => client
                .get(
                    &format!("/api/v1/recordings/{}/content", index.recording_id),
                    &[],
                )
                .await?
                .bytes()
                .await
                .context("downloading the recording")?,
        };
        index.verify(&content)?;
        Ok(content)
    }
}
