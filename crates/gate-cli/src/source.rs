//! Where the CLI reads recordings from.
//!
//! Either the object store connectors write to, opened with the same resolution they use
//! (`gate_recording::open_store`), or the control plane over HTTP (`--url`:
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

pub enum Source {
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    },
    ControlPlane {
        http: reqwest::Client,
        base: String,
        token: String,
        org: Option<String>,
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

    /// `--url`: the control plane's HTTP API with a bearer key.
    pub fn control_plane(url: &str, token: &str, org: Option<String>) -> anyhow::Result<Source> {
        if token.is_empty() {
            anyhow::bail!("--url needs an API key: pass --token or set GATE_TOKEN");
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("HTTP client")?;
        Ok(Source::ControlPlane {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            org,
        })
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
                let listing: Listing = self.get_json("/api/v1/recordings").await?;
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
                self.get_json(&format!("/api/v1/recordings/{}", encode(id)))
                    .await
            }
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let Source::ControlPlane {
            http,
            base,
            token,
            org,
        } = self
        else {
            anyhow::bail!("not a control-plane source");
        };
        let mut req = http.get(format!("{base}{path}")).bearer_auth(token);
        if let Some(org) = org {
            req = req.header("x-org-id", org);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("contacting the control plane at {base}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // The API's errors are `{"error": {"code", "message"}}`.
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        anyhow::bail!("the control plane said {}: {message}", status.as_u16())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get(path)
            .await?
            .json()
            .await
            .context("unexpected answer from the control plane")
    }

    /// The recording's bytes, checked against the size and digest in its index: a
    /// truncated or altered recording is an error, not something to replay or hand on.
    pub async fn content(&self, index: &RecordingIndex) -> anyhow::Result<Bytes> {
        let content = match self {
            Source::Store { store, .. } => gate_recording::read_content(&**store, index)
                .await
                .with_context(|| format!("reading {}", index.object_key))?,
            Source::ControlPlane { .. } => self
                .get(&format!(
                    "/api/v1/recordings/{}/content",
                    index.recording_id
                ))
                .await?
                .bytes()
                .await
                .context("downloading the recording")?,
        };
        index.verify(&content)?;
        Ok(content)
    }
}

/// Path-segment encoding for a user-typed id (only unreserved characters pass).
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
