//! The connector's side of the control plane: registration, heartbeat, configuration sync and
//! audit shipping — and carrying on when the control plane is away.
//!
//! State kept in `data_dir/control-plane/` (all written atomically: temp file + rename):
//! - `credential.json` (mode 0600): the connector's own credential, from `Register`. The
//!   registration token is single use; the credential is what later starts use.
//! - `snapshot.pb`: the last configuration applied (protobuf `ConfigSnapshot`). Loaded before
//!   the listeners open, so a restart while the control plane is down still enforces the
//!   last synced policies and identities.
//! - `audit.offset`: how far into the local audit file (`audit.file`) has been shipped. The
//!   audit file itself is the durable buffer: events are shipped from it in order, the offset
//!   moves only after the control plane acknowledged a batch, and the control plane drops
//!   duplicates by event id — so nothing is lost and nothing is counted twice, whichever side
//!   goes down and whenever.
//!
//! Sync: a server-streaming `Watch` delivers a snapshot whenever the org's revision changes
//! (well under the 2 s target); a poll every `sync_interval` (plus jitter) and the revision in
//! each heartbeat reply catch anything a broken stream missed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gate_core::Stage;
use gate_core::config::ControlPlaneConfig;
use gate_pipeline::{Authenticator, IdentityEntry, Pipeline};
use gate_policy::{PolicySet, PolicySource};
use gate_proto::v1;
use gate_proto::v1::connector_service_client::ConnectorServiceClient;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint};

/// Events per `ShipAudit` call.
const SHIP_BATCH: usize = 500;
/// Most bytes read from the audit file per batch.
const SHIP_READ_MAX: usize = 4 * 1024 * 1024;
/// How often the shipper looks for new audit lines when it is caught up.
const SHIP_IDLE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// The connector's credential as kept on disk.
#[derive(Clone, Serialize, Deserialize)]
struct Credential {
    connector_id: String,
    org_id: String,
    credential: String,
}

/// Where synced configuration meets the local file's: the policy set in force is always
/// local sources + the control plane's, and identities are the file's plus the control
/// plane's (the file wins on a name clash).
pub struct Composer {
    pipeline: Arc<Pipeline>,
    local_policies: Mutex<Vec<PolicySource>>,
    base_auth: Arc<Authenticator>,
    /// The config file's resources; synced ones are added to these (the file wins).
    base_resources: Vec<gate_core::config::ResourceConfig>,
    remote: Mutex<Option<v1::ConfigSnapshot>>,
}

impl Composer {
    pub fn new(
        pipeline: Arc<Pipeline>,
        local_policies: Vec<PolicySource>,
        base_auth: Arc<Authenticator>,
    ) -> Arc<Composer> {
        let base_resources = pipeline
            .resources()
            .iter()
            .map(|r| r.as_ref().clone())
            .collect();
        Arc::new(Composer {
            pipeline,
            local_policies: Mutex::new(local_policies),
            base_auth,
            base_resources,
            remote: Mutex::new(None),
        })
    }

    /// The revision of the applied snapshot (0 for none).
    pub fn revision(&self) -> i64 {
        lock(&self.remote).as_ref().map_or(0, |s| s.revision)
    }

    /// New local policy sources (SIGHUP): recompiled together with the synced ones.
    pub fn reload_local(&self, sources: Vec<PolicySource>) -> anyhow::Result<()> {
        let remote = lock(&self.remote).clone();
        let set = compose_policies(&sources, remote.as_ref())?;
        *lock(&self.local_policies) = sources;
        self.pipeline.replace_policies(set);
        Ok(())
    }

    /// Applies a snapshot: policies first (a snapshot whose policies do not compile is
    /// refused as a whole and the previous configuration stays), then identities.
    pub fn apply(&self, snapshot: v1::ConfigSnapshot) -> anyhow::Result<()> {
        let local = lock(&self.local_policies).clone();
        let set = compose_policies(&local, Some(&snapshot))
            .context("synced policies do not compile; keeping the previous configuration")?;
        let entries: Vec<IdentityEntry> = snapshot
            .identities
            .iter()
            .filter(|i| !i.disabled)
            .map(|i| IdentityEntry {
                name: i.name.clone(),
                email: Some(i.email.clone()).filter(|e| !e.is_empty()),
                groups: i.groups.clone(),
                token_sha256: Some(i.token_sha256.clone()).filter(|t| !t.is_empty()),
                ssh_public_keys: i.ssh_public_keys.clone(),
            })
            .collect();
        let (auth, problems) = self.base_auth.with_identities(&entries);
        for p in problems {
            tracing::warn!(problem = %p, "synced identity skipped in part");
        }
        let mut resources = self.base_resources.clone();
        for r in &snapshot.resources {
            if resources.iter().any(|b| b.name == r.name) {
                tracing::warn!(resource = %r.name, "a synced resource has the name of one in the config file; the file's is kept");
                continue;
            }
            match resource_from_snapshot(r) {
                Ok(res) => resources.push(res),
                Err(e) => {
                    tracing::error!(resource = %r.name, error = %e, "synced resource skipped")
                }
            }
        }
        let grants = snapshot
            .grants
            .iter()
            .filter(|g| g.status == "approved")
            .filter_map(|g| {
                // A scope this connector cannot read would be honoured wrongly: such a
                // grant is left out (fail closed) and the reason logged.
                let scopes: serde_json::Value = if g.scopes_json.trim().is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&g.scopes_json).unwrap_or(serde_json::Value::Bool(false))
                };
                match gate_core::GrantScope::from_json(&scopes) {
                    Ok(scope) => Some(gate_pipeline::Grant {
                        identity: g.requester.clone(),
                        resource: g.resource.clone(),
                        expires_at_ms: g.expires_at,
                        scope,
                    }),
                    Err(e) => {
                        tracing::error!(grant = %g.id, error = %e, "grant with unreadable scopes ignored");
                        None
                    }
                }
            })
            .collect();
        self.pipeline.replace_policies(set);
        self.pipeline.replace_authenticator(auth);
        self.pipeline.replace_resources(resources);
        self.pipeline.set_grants(grants);
        tracing::info!(
            revision = snapshot.revision,
            policies = snapshot.policies.len(),
            identities = snapshot.identities.len(),
            "applied configuration from the control plane"
        );
        *lock(&self.remote) = Some(snapshot);
        Ok(())
    }
}

/// A resource from the control plane as the connector serves it. Its `spec_json` holds the
/// rest of a resource's config-file fields (credentials, pool, SSH host key pin, …);
/// `${VAR}` references in it are expanded from the connector's own environment, so
/// upstream secrets can stay on the connector's host. A synced resource is served on the
/// shared listener (`listen_port` needs a restart-time listener and is ignored).
fn resource_from_snapshot(r: &v1::Resource) -> anyhow::Result<gate_core::config::ResourceConfig> {
    let mut spec: serde_json::Value = if r.spec_json.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&r.spec_json).context("spec_json is not JSON")?
    };
    let Some(obj) = spec.as_object_mut() else {
        bail!("spec_json must be a JSON object");
    };
    if obj.remove("listen_port").is_some() {
        tracing::warn!(resource = %r.name, "listen_port of a synced resource is ignored; it is served on the shared listener");
    }
    obj.insert("name".into(), r.name.clone().into());
    obj.insert("protocol".into(), r.protocol.clone().into());
    obj.insert("host".into(), r.host.clone().into());
    obj.insert("port".into(), r.port.into());
    if !r.database.is_empty() {
        obj.insert("database".into(), r.database.clone().into());
    }
    let mut doc: yaml_serde::Value = yaml_serde::to_value(&spec)?;
    let errors = gate_core::config::expand_env_in(&mut doc, &|name| std::env::var(name).ok());
    if let Some(e) = errors.first() {
        bail!("{}: {}", e.path, e.message);
    }
    let res: gate_core::config::ResourceConfig = serde_path_to_error::deserialize(doc)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
    if matches!(
        res.protocol,
        gate_core::Protocol::Postgres | gate_core::Protocol::Mysql
    ) && res.database.is_none()
    {
        bail!("database is required for {} resources", res.protocol);
    }
    Ok(res)
}

fn compose_policies(
    local: &[PolicySource],
    remote: Option<&v1::ConfigSnapshot>,
) -> anyhow::Result<PolicySet> {
    let mut sources = local.to_vec();
    for p in remote.map(|s| s.policies.as_slice()).unwrap_or_default() {
        let dry_run = match p.state.as_str() {
            "active" => false,
            "dry_run" => true,
            _ => continue, // drafts are never sent, but never enforce one either
        };
        for stage in &p.stages {
            let Some(stage) = Stage::parse(stage) else {
                bail!("policy {}: unknown stage {stage:?}", p.name);
            };
            sources.push(
                PolicySource::new(
                    format!("control-plane:{}@v{}", p.name, p.version),
                    p.rego.clone(),
                    stage,
                )
                .with_targets(p.targets.clone())
                .dry_run(dry_run),
            );
        }
    }
    Ok(PolicySet::compile(sources)?)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connector's link to the control plane.
pub struct ControlPlane {
    cfg: ControlPlaneConfig,
    dir: PathBuf,
    composer: Arc<Composer>,
    pipeline: Arc<Pipeline>,
    audit_file: PathBuf,
    channel: Channel,
    credential: tokio::sync::RwLock<Option<Credential>>,
    started: Instant,
}

impl ControlPlane {
    /// Prepares the link and applies the persisted snapshot, if any (before the listeners
    /// open). Nothing here needs the control plane to be up.
    pub fn new(
        cfg: ControlPlaneConfig,
        data_dir: &Path,
        composer: Arc<Composer>,
        pipeline: Arc<Pipeline>,
        audit_file: PathBuf,
    ) -> anyhow::Result<Arc<ControlPlane>> {
        let dir = data_dir.join("control-plane");
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let channel = endpoint(&cfg)?.connect_lazy();
        let credential = match std::fs::read(dir.join("credential.json")) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Credential>(&bytes)
                    .context("control-plane/credential.json is corrupt")?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context("reading control-plane/credential.json"),
        };
        if credential.is_none() && cfg.registration_token.is_none() {
            bail!(
                "control_plane: no connector credential in {} and no registration_token: create a registration token in the control plane and set control_plane.registration_token",
                dir.display()
            );
        }
        match std::fs::read(dir.join("snapshot.pb")) {
            Ok(bytes) => match v1::ConfigSnapshot::decode(bytes.as_slice()) {
                Ok(snap) => {
                    let revision = snap.revision;
                    match composer.apply(snap) {
                        Ok(()) => tracing::info!(
                            revision,
                            "applied the last configuration synced from the control plane"
                        ),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "the persisted configuration does not apply")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "control-plane/snapshot.pb is corrupt; ignoring it")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("reading control-plane/snapshot.pb"),
        }
        Ok(Arc::new(ControlPlane {
            cfg,
            dir,
            composer,
            pipeline,
            audit_file,
            channel,
            credential: tokio::sync::RwLock::new(credential),
            started: Instant::now(),
        }))
    }

    /// Runs registration (when needed), then heartbeat, watch, poll and audit shipping until
    /// the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        while self.credential.read().await.is_none() {
            match self.register().await {
                Ok(()) => break,
                Err(RegisterError::Permanent(e)) => {
                    tracing::error!(error = %e, "registration with the control plane failed; running on the local configuration only");
                    return;
                }
                Err(RegisterError::Retry(e)) => {
                    tracing::warn!(error = %e, "control plane unreachable for registration; retrying");
                    backoff.wait().await;
                }
            }
        }
        let (kick_tx, kick_rx) = tokio::sync::watch::channel(0i64);
        tokio::join!(
            self.clone().heartbeat_loop(kick_tx),
            self.clone().watch_loop(),
            self.clone().poll_loop(kick_rx),
            self.clone().ship_loop(),
        );
    }

    fn client(
        &self,
        secret: &str,
    ) -> ConnectorServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>
    {
        ConnectorServiceClient::with_interceptor(
            self.channel.clone(),
            Bearer(format!("Bearer {secret}").parse().ok()),
        )
    }

    async fn authed(
        &self,
    ) -> Option<
        ConnectorServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>,
    > {
        let cred = self.credential.read().await;
        cred.as_ref().map(|c| self.client(&c.credential))
    }

    async fn register(&self) -> Result<(), RegisterError> {
        let Some(token) = self.cfg.registration_token.clone() else {
            return Err(RegisterError::Permanent(
                "no registration_token configured".into(),
            ));
        };
        let mut client = ConnectorServiceClient::new(self.channel.clone());
        let mut req = tonic::Request::new(v1::RegisterRequest {
            registration_token: token,
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        req.set_timeout(RPC_TIMEOUT);
        let resp = match client.register(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if is_transient(&s) => {
                return Err(RegisterError::Retry(s.message().to_string()));
            }
            Err(s) => {
                return Err(RegisterError::Permanent(format!(
                    "{:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
        };
        let cred = Credential {
            connector_id: resp.connector_id,
            org_id: resp.org_id,
            credential: resp.credential,
        };
        let bytes =
            serde_json::to_vec(&cred).map_err(|e| RegisterError::Permanent(e.to_string()))?;
        write_atomic_async(self.dir.join("credential.json"), bytes, true)
            .await
            .map_err(|e| {
                RegisterError::Permanent(format!("saving the connector credential: {e}"))
            })?;
        tracing::info!(connector_id = %cred.connector_id, org_id = %cred.org_id, "registered with the control plane");
        *self.credential.write().await = Some(cred);
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>, kick: tokio::sync::watch::Sender<i64>) {
        let mut tick =
            tokio::time::interval(self.cfg.heartbeat_interval.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            let Some(mut client) = self.authed().await else {
                return;
            };
            let mut req = tonic::Request::new(v1::HeartbeatRequest {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_s: self.started.elapsed().as_secs() as i64,
                active_sessions: self.pipeline.live_sessions() as i64,
                resources_served: self
                    .pipeline
                    .resources()
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            });
            req.set_timeout(RPC_TIMEOUT);
            match client.heartbeat(req).await {
                Ok(r) => {
                    let revision = r.into_inner().config_revision;
                    if revision > self.composer.revision() {
                        kick.send_replace(revision);
                    }
                }
                Err(s) => {
                    tracing::debug!(code = ?s.code(), error = %s.message(), "heartbeat failed")
                }
            }
        }
    }

    async fn watch_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            let Some(mut client) = self.authed().await else {
                return;
            };
            let req = v1::WatchRequest {
                known_revision: self.composer.revision(),
            };
            match client.watch(req).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    tracing::info!("watching the control plane for configuration changes");
                    loop {
                        match stream.message().await {
                            Ok(Some(snap)) => {
                                backoff.reset();
                                self.take(snap);
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::warn!(code = ?s.code(), error = %s.message(), "configuration watch ended");
                                break;
                            }
                        }
                    }
                }
                Err(s) => {
                    tracing::debug!(code = ?s.code(), error = %s.message(), "configuration watch failed")
                }
            }
            backoff.wait().await;
        }
    }

    /// Fallback sync: every `sync_interval` (+ jitter), or at once when a heartbeat reports
    /// a newer revision than the one applied.
    async fn poll_loop(self: Arc<Self>, mut kick: tokio::sync::watch::Receiver<i64>) {
        loop {
            let jitter_ms = self.cfg.sync_jitter.as_millis() as u64;
            let jitter = Duration::from_millis(if jitter_ms == 0 {
                0
            } else {
                rand::random::<u64>() % jitter_ms
            });
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.sync_interval + jitter) => {}
                r = kick.changed() => if r.is_err() { return },
            }
            let Some(mut client) = self.authed().await else {
                return;
            };
            let mut req = tonic::Request::new(v1::GetConfigRequest {});
            req.set_timeout(RPC_TIMEOUT);
            match client.get_config(req).await {
                Ok(r) => self.take(r.into_inner()),
                Err(s) => {
                    tracing::debug!(code = ?s.code(), error = %s.message(), "configuration poll failed")
                }
            }
        }
    }

    /// Applies and persists a snapshot newer than the one in force.
    fn take(&self, snap: v1::ConfigSnapshot) {
        if snap.revision <= self.composer.revision() {
            return;
        }
        let bytes = snap.encode_to_vec();
        match self.composer.apply(snap) {
            Ok(()) => {
                if let Err(e) = write_atomic(&self.dir.join("snapshot.pb"), &bytes, false) {
                    // (synchronous: rare, small, and ordered with the apply above)
                    tracing::error!(error = %e, "cannot persist the synced configuration");
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "synced configuration refused"),
        }
    }

    async fn ship_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            match self.ship_once().await {
                Ok(0) => tokio::time::sleep(SHIP_IDLE).await,
                Ok(_) => backoff.reset(),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "audit shipping failed; will retry");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Ships the next batch of audit lines; the number of events shipped.
    pub async fn ship_once(&self) -> anyhow::Result<usize> {
        let Some(mut client) = self.authed().await else {
            return Ok(0);
        };
        let offset_path = self.dir.join("audit.offset");
        let mut offset: u64 = match tokio::fs::read_to_string(&offset_path).await {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        let mut file = match tokio::fs::File::open(&self.audit_file).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).context("opening the audit file"),
        };
        let len = file.metadata().await?.len();
        if len < offset {
            // The file was replaced or truncated: start over (duplicates are dropped upstream).
            tracing::warn!(
                offset,
                len,
                "audit file is shorter than the shipped offset; reshipping from the start"
            );
            offset = 0;
        }
        if len == offset {
            return Ok(0);
        }
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let want = ((len - offset) as usize).min(SHIP_READ_MAX);
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).await?;
        let mut events = Vec::new();
        let mut consumed = 0usize;
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") || events.len() >= SHIP_BATCH {
                break; // a line still being written, or a full batch
            }
            consumed += line.len();
            let text = String::from_utf8_lossy(line).trim().to_string();
            if !text.is_empty() {
                events.push(text);
            }
        }
        if consumed == 0 {
            return Ok(0);
        }
        let n = events.len();
        if n > 0 {
            let mut req = tonic::Request::new(v1::ShipAuditRequest {
                events_json: events,
            });
            req.set_timeout(RPC_TIMEOUT);
            let resp = client
                .ship_audit(req)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            tracing::debug!(
                inserted = resp.inserted,
                duplicates = resp.duplicates,
                "audit shipped"
            );
        }
        let next = offset + consumed as u64;
        write_atomic_async(offset_path, next.to_string().into_bytes(), false)
            .await
            .context("saving the audit offset")?;
        Ok(n.max(1))
    }

    /// Clean shutdown: one last audit pass, then tell the control plane we are going.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = self.ship_once().await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        if let Some(mut client) = self.authed().await {
            let mut req = tonic::Request::new(v1::DeregisterRequest {});
            req.set_timeout(Duration::from_secs(3));
            match client.deregister(req).await {
                Ok(_) => tracing::info!("deregistered from the control plane"),
                Err(s) => {
                    tracing::info!(code = ?s.code(), error = %s.message(), "could not deregister (control plane unreachable?)")
                }
            }
        }
    }
}

enum RegisterError {
    Retry(String),
    Permanent(String),
}

fn is_transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}

/// The gRPC endpoint. `https://` verifies the control plane's certificate against
/// `ca_file` (self-signed setups) or the system's roots, with rustls.
fn endpoint(cfg: &ControlPlaneConfig) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(cfg.url.clone())
        .with_context(|| format!("control_plane.url {:?}", cfg.url))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if cfg.url.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match &cfg.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("control_plane.ca_file {}", path.display()))?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .context("control_plane: TLS settings")?;
    } else {
        tracing::warn!(url = %cfg.url, "the control plane link is not encrypted (http://); use https:// outside a trusted network");
    }
    Ok(endpoint)
}

/// Adds the connector's bearer credential to every request.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(250),
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(250);
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

/// [`write_atomic`] off the async runtime (it fsyncs).
async fn write_atomic_async(path: PathBuf, bytes: Vec<u8>, private: bool) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, private))
        .await
        .map_err(std::io::Error::other)?
}

/// Writes `bytes` to `path` through a temp file, fsync and rename, so a crash leaves the old
/// or the new content, never a torn one. `private`: mode 0600.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
