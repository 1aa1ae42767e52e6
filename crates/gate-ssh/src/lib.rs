//! The SSH protocol handler.
//!
//! Gate terminates the client's SSH connection (its own host key, kept in the data dir),
//! authenticates the user against Gate identities (registered public keys, or a token at a
//! keyboard-interactive prompt), and opens its own SSH connection to the upstream server
//! with the resource's credentials, after checking the upstream's pinned host key. Channels
//! are mirrored one to one; the client never learns the upstream's credentials.
//!
//! - [`connection`]: authentication, the pipeline session, channel and request handling.
//! - [`relay`]: the byte relays between a client channel and its upstream twin.
//! - [`upstream`]: Gate as an SSH client of the real server.
//! - [`keys`]: host keys and upstream credentials.
//!
//! User names: `identity%resource` on the shared listener (`ssh alice%prod-web@gate`);
//! on a resource's own `listen_port` the user name is just the identity.

pub mod connection;
pub mod keys;
pub mod relay;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gate_core::Protocol;
use gate_pipeline::{ClientInfo, Pipeline};
use russh::server;
use tokio::net::TcpStream;

use crate::connection::{Connection, EndState};
use crate::keys::{HostKeyPin, UpstreamCredential};
use crate::relay::Activity;

/// How often idle and duration limits are checked.
const LIMIT_CHECK: Duration = Duration::from_secs(1);

/// What Gate needs per SSH resource, prepared once at start-up.
pub(crate) struct ResourceSsh {
    pub pin: HostKeyPin,
    pub credential: UpstreamCredential,
    pub record_input: bool,
    pub idle_timeout: Option<Duration>,
    pub max_session_duration: Option<Duration>,
}

/// A resource definition and what was prepared for it.
type Prepared = (Arc<gate_core::config::ResourceConfig>, Arc<ResourceSsh>);

pub(crate) struct SshShared {
    pub pipeline: Arc<Pipeline>,
    /// Per resource: the definition it was prepared for, and what was prepared. Resources
    /// synced from the control plane are prepared on first use.
    resources: std::sync::Mutex<HashMap<String, Prepared>>,
    pub client_config: Arc<russh::client::Config>,
}

impl SshShared {
    /// What Gate needs to serve `r` (its host key pin and credentials), prepared once per
    /// definition. The error is a sentence for the user and the operator.
    pub(crate) fn prepare(
        &self,
        r: &Arc<gate_core::config::ResourceConfig>,
    ) -> Result<Arc<ResourceSsh>, String> {
        let mut cache = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((def, ssh)) = cache.get(&r.name)
            && Arc::ptr_eq(def, r)
        {
            return Ok(ssh.clone());
        }
        let ssh = Arc::new(ResourceSsh::prepare(r).map_err(|e| format!("{e:#}"))?);
        cache.insert(r.name.clone(), (r.clone(), ssh.clone()));
        Ok(ssh)
    }

    /// The prepared settings of a resource already in use (for limits).
    pub(crate) fn prepared(&self, name: &str) -> Option<Arc<ResourceSsh>> {
        let cache = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(name).map(|(_, ssh)| ssh.clone())
    }
}

impl ResourceSsh {
    fn prepare(r: &gate_core::config::ResourceConfig) -> anyhow::Result<ResourceSsh> {
        Ok(ResourceSsh {
            pin: HostKeyPin::from_resource(r)?,
            credential: UpstreamCredential::from_resource(r)?,
            record_input: r.recording.input,
            idle_timeout: r.idle_timeout,
            max_session_duration: r.max_session_duration,
        })
    }
}

/// Serves SSH connections for every `protocol: ssh` resource.
pub struct SshHandler {
    shared: Arc<SshShared>,
    server_config: Arc<server::Config>,
}

impl SshHandler {
    /// Loads the gateway host key (generating it on first start in `data_dir`) and every SSH
    /// resource's pin and credentials; any problem fails start-up with the resource named.
    pub fn new(
        pipeline: Arc<Pipeline>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<SshHandler>> {
        // The file's SSH resources are prepared now, so a bad key file fails start-up.
        let mut resources = HashMap::new();
        for r in pipeline
            .resources()
            .into_iter()
            .filter(|r| r.protocol == Protocol::Ssh)
        {
            let ssh = Arc::new(ResourceSsh::prepare(&r)?);
            resources.insert(r.name.clone(), (r, ssh));
        }
        // Always: an SSH resource may arrive later from the control plane.
        let host_key = Some(keys::load_or_create_host_key(data_dir).context("SSH")?);
        let server_config = server::Config {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-Gate_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            keys: host_key.into_iter().collect(),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            // Idle limits are per resource (below); keepalives find dead clients.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            max_auth_attempts: 6,
            ..Default::default()
        };
        Ok(Arc::new(SshHandler {
            shared: Arc::new(SshShared {
                pipeline,
                resources: std::sync::Mutex::new(resources),
                client_config: Arc::new(upstream::client_config()),
            }),
            server_config: Arc::new(server_config),
        }))
    }

    pub fn has_resources(&self) -> bool {
        self.shared
            .pipeline
            .resources()
            .iter()
            .any(|r| r.protocol == Protocol::Ssh)
    }

    /// Serves one client connection until it ends, a limit ends it, or shutdown.
    pub async fn serve(&self, stream: TcpStream, peer: SocketAddr, dedicated: Option<Arc<str>>) {
        let _ = stream.set_nodelay(true);
        let end = Arc::new(EndState::default());
        let activity = Activity::new();
        let conn = Connection::new(
            self.shared.clone(),
            peer,
            dedicated,
            end.clone(),
            activity.clone(),
        );
        let running = match server::run_stream(self.server_config.clone(), stream, conn).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "SSH handshake failed");
                return;
            }
        };
        let handle = running.handle();
        let pipeline = &self.shared.pipeline;
        let shutdown = pipeline.shutdown_signal();
        tokio::pin!(running, shutdown);
        let limits = self.limits(&end, &activity);
        tokio::pin!(limits);
        let (reason, ended) = tokio::select! {
            r = &mut running => (match r {
                Ok(()) => "client disconnected".to_string(),
                Err(e) => format!("connection error: {e}"),
            }, true),
            why = &mut limits => (why, false),
            _ = &mut shutdown => ("gateway shutting down".to_string(), false),
        };
        if !ended {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    format!("gate: {reason}"),
                    String::new(),
                )
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
        }
        tracing::debug!(%peer, reason, "SSH connection ended");
        let client = ClientInfo {
            addr: peer,
            protocol: Protocol::Ssh,
            tls: false,
        };
        end.finish(pipeline, &client, &reason).await;
    }

    /// Resolves with a reason when the session's idle timeout or maximum duration passes, or
    /// an operator terminates it (checked every [`LIMIT_CHECK`]).
    async fn limits(&self, end: &EndState, activity: &Activity) -> String {
        let opened = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(LIMIT_CHECK).await;
            let Some(session) = end.session() else {
                continue;
            };
            if let Some(why) = session.termination_reason() {
                return format!("session terminated by an operator: {why}");
            }
            let Some(r) = self.shared.prepared(&session.resource.name) else {
                continue;
            };
            if let Some(idle) = r.idle_timeout
                && activity.idle_for() >= idle
            {
                return format!("idle for {}; disconnected", humanize(idle));
            }
            if let Some(max) = r.max_session_duration
                && opened.elapsed() >= max
            {
                return format!(
                    "maximum session duration {} reached; disconnected",
                    humanize(max)
                );
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
