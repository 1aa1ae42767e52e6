//! The session pipeline: everything that is the same for every protocol.
//!
//! A protocol handler decodes the wire and calls, in order:
//! 1. [`Pipeline::authenticate`] — the presented credential becomes an [`Identity`];
//! 2. [`Pipeline::open_session`] — `session` policy, audit, recording; gives a [`Session`];
//! 3. per request, [`Session::decide`] — `pre_request` policy: allow, block or rewrite;
//! 4. per result shape, [`Session::plan_masks`] — `post_request` policy → a
//!    [`gate_enforcement::MaskPlan`] the handler applies to every row without asking again;
//! 5. [`Session::record`] after each request, and [`Session::close`] at the end.
//!
//! The handler never evaluates Rego, writes audit or touches recordings itself. Policy is read
//! from an atomically swapped snapshot, so a reload never blocks the hot path.

pub mod audit;
pub mod auth;
pub mod metrics;
pub mod net;
pub mod pool;
mod session;
pub mod shards;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use gate_core::config::ResourceConfig;
use gate_core::{AuditEvent, AuditKind, GrantScope, Identity, Protocol};
use gate_enforcement::Masker;
use gate_policy::PolicySet;
use gate_recording::Recordings;
use tokio::sync::{Notify, watch};

pub use audit::{AuditLog, AuditSink};
pub use auth::{AuthError, Authenticator, IdentityEntry};
pub use metrics::Metrics;
pub use pool::{Pool, PoolError, PooledConn};
pub use session::{ChannelOutcome, RequestOutcome, Session, SessionDenied, ShapeCache, shape_key};

/// Everything a handler needs, shared by all sessions of all protocols.
pub struct Pipeline {
    auth: ArcSwap<Authenticator>,
    policies: ArcSwap<PolicySet>,
    /// Bumped on every policy swap, so caches of policy results know they are stale.
    policy_generation: std::sync::atomic::AtomicU64,
    audit: AuditLog,
    recordings: Recordings,
    metrics: Arc<Metrics>,
    masker: Masker,
    /// Swapped whole when the control plane changes resources; sessions keep the
    /// `Arc<ResourceConfig>` they opened with.
    resources: ArcSwap<ResourceSet>,
    /// Active just-in-time grants; `None` until the control plane has sent any.
    grants: ArcSwap<Option<GrantSet>>,
    live: LiveSessions,
    shutdown: watch::Sender<bool>,
    /// The runtime the pipeline was built on (the connector's own, which outlives every
    /// session shard): where a session dropped without `close` finishes its audit and
    /// recording, even when its shard is already gone.
    background: Option<tokio::runtime::Handle>,
}

/// The parts a pipeline is built from (the connector assembles them from its config).
pub struct PipelineParts {
    pub auth: Authenticator,
    pub policies: PolicySet,
    pub audit: AuditLog,
    pub recordings: Recordings,
    pub metrics: Arc<Metrics>,
    pub masker: Masker,
    pub resources: Vec<ResourceConfig>,
}

/// Facts about the client connection, known before authentication.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub tls: bool,
}

impl Pipeline {
    pub fn new(parts: PipelineParts) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            auth: ArcSwap::from_pointee(parts.auth),
            policies: ArcSwap::from_pointee(parts.policies),
            policy_generation: std::sync::atomic::AtomicU64::new(0),
            audit: parts.audit,
            recordings: parts.recordings,
            metrics: parts.metrics,
            masker: parts.masker,
            resources: ArcSwap::from_pointee(ResourceSet::new(parts.resources)),
            grants: ArcSwap::from_pointee(None),
            live: LiveSessions::default(),
            shutdown: watch::channel(false).0,
            background: tokio::runtime::Handle::try_current().ok(),
        })
    }

    pub fn resource(&self, name: &str) -> Option<Arc<ResourceConfig>> {
        self.resources.load().by_name.get(name).cloned()
    }

    /// Every resource, in configuration order.
    pub fn resources(&self) -> Vec<Arc<ResourceConfig>> {
        self.resources.load().ordered.clone()
    }

    /// Swaps in the active grants (from the control plane). Live sessions that lost their
    /// grant are ended by the next [`Pipeline::enforce_grants`] (the connector runs it every
    /// second).
    pub fn set_grants(&self, grants: Vec<Grant>) {
        let mut by_key: HashMap<(String, String), Vec<(i64, GrantScope)>> = HashMap::new();
        for g in grants {
            by_key
                .entry((g.identity, g.resource))
                .or_default()
                .push((g.expires_at_ms, g.scope));
        }
        self.grants.store(Arc::new(Some(GrantSet { by_key })));
    }

    /// The scopes of `identity`'s active grants on `resource`, when the resource needs a
    /// grant (`None`: it does not, nothing is narrowed). Empty when no grant is active.
    pub fn grant_scopes(
        &self,
        identity: &str,
        resource: &ResourceConfig,
    ) -> Option<Vec<GrantScope>> {
        if !resource.require_access_grant {
            return None;
        }
        let now = now_ms();
        let grants = self.grants.load();
        let scopes = grants
            .as_ref()
            .as_ref()
            .and_then(|set| {
                set.by_key
                    .get(&(identity.to_string(), resource.name.clone()))
            })
            .map(|list| {
                list.iter()
                    .filter(|(expires, _)| *expires > now)
                    .map(|(_, scope)| scope.clone())
                    .collect()
            })
            .unwrap_or_default();
        Some(scopes)
    }

    /// Whether `identity` may use `resource` now: `Ok` when the resource needs no grant or
    /// a grant is active; otherwise the sentence to show the user (fail closed when grants
    /// were never received).
    pub fn check_grant(&self, identity: &str, resource: &ResourceConfig) -> Result<(), String> {
        if !resource.require_access_grant {
            return Ok(());
        }
        let how = format!(
            "request one with: gate access request --resource {} --duration 1h --reason \"…\"",
            resource.name
        );
        match self.grants.load().as_ref() {
            None => Err(format!(
                "access to {} needs a just-in-time grant, and grants cannot be checked right now (no grant list from the control plane yet); {how}",
                resource.name
            )),
            Some(set) => match set
                .by_key
                .get(&(identity.to_string(), resource.name.clone()))
                .map(|list| list.iter().map(|(expires, _)| *expires).max().unwrap_or(0))
            {
                Some(expires) if expires > now_ms() => Ok(()),
                Some(_) => Err(format!(
                    "your access grant for {} has expired; {how}",
                    resource.name
                )),
                None => Err(format!(
                    "access to {} needs an approved access grant; {how}",
                    resource.name
                )),
            },
        }
    }

    /// Ends live sessions whose grant is gone or past its end. Cheap when no resource
    /// needs grants; the connector calls it every second so expiry is enforced on time.
    pub async fn enforce_grants(&self) {
        if !self
            .resources
            .load()
            .ordered
            .iter()
            .any(|r| r.require_access_grant)
        {
            return;
        }
        let ending: Vec<(uuid::Uuid, String)> = {
            let live = self.live.lock();
            live.values()
                .filter_map(|e| {
                    let r = self.resource(&e.info.resource)?;
                    self.check_grant(&e.info.user, &r)
                        .err()
                        .map(|why| (e.info.id, why))
                })
                .collect()
        };
        for (id, why) in ending {
            let reason = format!("access grant ended: {why}");
            self.terminate_session(id, &reason, "grant check").await;
        }
    }

    /// Swaps in a new set of resources (the file's plus the control plane's). A resource
    /// whose definition did not change keeps its `Arc`, so handlers' per-resource state
    /// (pools, keys) built for it stays valid; a changed one gets a new `Arc`.
    pub fn replace_resources(&self, resources: Vec<ResourceConfig>) {
        let old = self.resources.load_full();
        let reused: Vec<Arc<ResourceConfig>> = resources
            .into_iter()
            .map(|r| match old.by_name.get(&r.name) {
                Some(prev) if same_definition(prev, &r) => prev.clone(),
                _ => Arc::new(r),
            })
            .collect();
        self.resources
            .store(Arc::new(ResourceSet::from_arcs(reused)));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn recordings(&self) -> &Recordings {
        &self.recordings
    }

    /// Swaps in a new policy snapshot; sessions see it from their next request on.
    pub fn replace_policies(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
        self.policy_generation.fetch_add(1, Ordering::Release);
    }

    /// Swaps in new identities (e.g. synced from the control plane); sessions already open
    /// keep the identity they authenticated with.
    pub fn replace_authenticator(&self, auth: Authenticator) {
        self.auth.store(Arc::new(auth));
    }

    /// The identities in force (to derive an updated set from).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.auth.load_full()
    }

    /// Changes whenever the policies are replaced.
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation.load(Ordering::Acquire)
    }

    pub(crate) fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policies.load()
    }

    /// Checks a credential. Failures are audited (without the secret) and counted.
    pub async fn authenticate(
        &self,
        client: &ClientInfo,
        resource: Option<&str>,
        user: &str,
        secret: &str,
    ) -> Result<Identity, AuthError> {
        let auth = self.auth.load_full();
        match auth.authenticate(user, secret).await {
            Ok(id) => Ok(id),
            Err(e) => {
                self.metrics
                    .auth_failures
                    .with_label_values(&[client.protocol.as_str()])
                    .inc();
                tracing::warn!(user, resource, client = %client.addr, reason = e.detail(), "authentication failed");
                self.audit
                    .emit(AuditEvent {
                        presented_user: Some(user.to_string()),
                        resource: resource.map(Into::into),
                        protocol: Some(client.protocol.as_str().into()),
                        client_addr: Some(client.addr.to_string().into()),
                        reason: Some(e.detail().to_string()),
                        ..AuditEvent::new(AuditKind::AuthFailure)
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// Checks an SSH public key (its base64 blob) for `user`. Unlike passwords, a client may
    /// offer several keys in turn, so a miss is NOT audited here; the handler audits the
    /// connection once if it never authenticates ([`Pipeline::audit_refused`]).
    pub fn authenticate_ssh_key(&self, user: &str, key_blob: &str) -> Result<Identity, AuthError> {
        self.auth.load().authenticate_ssh_key(user, key_blob)
    }

    /// Audits a refused connection attempt that never reached authentication
    /// (unknown resource, protocol violation before login, …).
    pub async fn audit_refused(&self, client: &ClientInfo, user: Option<&str>, reason: &str) {
        self.audit
            .emit(AuditEvent {
                presented_user: user.map(str::to_string),
                protocol: Some(client.protocol.as_str().into()),
                client_addr: Some(client.addr.to_string().into()),
                reason: Some(reason.to_string()),
                ..AuditEvent::new(AuditKind::AuthFailure)
            })
            .await;
    }

    /// The resource a client named, if it exists and speaks the client's protocol. A miss is
    /// audited (after authentication, so names are not revealed to strangers).
    pub async fn resolve_resource(
        &self,
        client: &ClientInfo,
        user: &str,
        name: &str,
    ) -> Option<Arc<ResourceConfig>> {
        let found = self
            .resource(name)
            .filter(|r| r.protocol == client.protocol);
        if found.is_none() {
            self.audit_refused(client, Some(user), "unknown resource")
                .await;
        }
        found
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Number of open sessions.
    pub fn live_sessions(&self) -> usize {
        self.live.count.load(Ordering::Relaxed)
    }

    /// Waits until no session is open.
    pub async fn sessions_drained(&self) {
        loop {
            let notified = self.live.changed.notified();
            if self.live_sessions() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Open sessions, oldest first.
    pub fn live_session_list(&self) -> Vec<LiveSessionInfo> {
        let mut list: Vec<_> = self.live.lock().values().map(|e| e.info.clone()).collect();
        list.sort_by_key(|i| i.started_at);
        list
    }

    /// Asks the session `id` to end with `reason` (shown to its user where the protocol
    /// can). Handlers notice within a second or two. `false` when no such session is open.
    pub async fn terminate_session(&self, id: uuid::Uuid, reason: &str, by: &str) -> bool {
        let info = {
            let live = self.live.lock();
            let Some(entry) = live.get(&id) else {
                return false;
            };
            entry.terminate.send_replace(Some(reason.to_string()));
            entry.info.clone()
        };
        tracing::info!(session = %id, by, reason, "session terminated by an operator");
        self.audit
            .emit(AuditEvent {
                session_id: Some(id),
                resource: Some(info.resource.into()),
                protocol: Some(info.protocol.into()),
                client_addr: Some(info.client_addr.into()),
                presented_user: Some(info.user),
                reason: Some(format!("terminated by {by}: {reason}")),
                ..AuditEvent::new(AuditKind::SessionTerminated)
            })
            .await;
        true
    }

    pub(crate) fn register_live(&self, info: LiveSessionInfo) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        self.live.lock().insert(
            info.id,
            LiveEntry {
                info,
                terminate: tx,
            },
        );
        rx
    }

    pub(crate) fn unregister_live(&self, id: uuid::Uuid) {
        self.live.lock().remove(&id);
    }

    /// Tells every session to end (after the drain deadline).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves when [`Pipeline::begin_shutdown`] was called; sessions select on it.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// An active just-in-time grant.
#[derive(Debug, Clone)]
pub struct Grant {
    pub identity: String,
    pub resource: String,
    /// When it ends, unix milliseconds.
    pub expires_at_ms: i64,
    /// What it covers.
    pub scope: GrantScope,
}

struct GrantSet {
    /// (identity, resource) → each grant's end and scope (a person may hold several).
    by_key: HashMap<(String, String), Vec<(i64, GrantScope)>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The resources in force: by name, and in configuration order.
pub struct ResourceSet {
    by_name: HashMap<String, Arc<ResourceConfig>>,
    ordered: Vec<Arc<ResourceConfig>>,
}

impl ResourceSet {
    fn new(resources: Vec<ResourceConfig>) -> ResourceSet {
        Self::from_arcs(resources.into_iter().map(Arc::new).collect())
    }

    fn from_arcs(ordered: Vec<Arc<ResourceConfig>>) -> ResourceSet {
        ResourceSet {
            by_name: ordered
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            ordered,
        }
    }
}

/// Whether two definitions are the same (their `Debug` forms, which cover every field;
/// the password, which `Debug` redacts, is compared on its own).
fn same_definition(a: &ResourceConfig, b: &ResourceConfig) -> bool {
    format!("{a:?}") == format!("{b:?}") && a.credentials.password == b.credentials.password
}

#[derive(Default)]
struct LiveSessions {
    count: AtomicUsize,
    changed: Notify,
    /// Open sessions by id, with the switch that ends them.
    registry: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, LiveEntry>>,
}

struct LiveEntry {
    info: LiveSessionInfo,
    terminate: watch::Sender<Option<String>>,
}

/// An open session as operators see it (`GET /admin/sessions`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSessionInfo {
    pub id: uuid::Uuid,
    pub protocol: String,
    pub resource: String,
    pub user: String,
    pub client_addr: String,
    #[serde(with = "gate_core::time::serde_rfc3339")]
    pub started_at: std::time::SystemTime,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<uuid::Uuid, LiveEntry>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}
