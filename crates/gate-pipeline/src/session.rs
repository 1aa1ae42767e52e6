//! One client session: identity, resource, recorder and counters, and the per-request hooks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gate_core::audit::AuditIdentity;
use gate_core::config::ResourceConfig;
use gate_core::{
    Action, AuditEvent, AuditKind, ColumnFacts, Decision, Identity, QueryFacts, QueryType,
    RequestFacts, Stage,
};
use gate_enforcement::{MaskPlan, Masker};
use gate_recording::{EntryError, QueryEntry, SessionHeader, SessionRecorder, SessionSummary};
use prometheus::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::{ClientInfo, Pipeline};

/// Why a session was refused at open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SessionDenied {
    pub reason: String,
}

/// What every policy input holds for the whole session: identity, resource and session.
/// Converted to the policy engine's form once, at open.
#[derive(Serialize)]
struct SessionInput<'a> {
    user: &'a Identity,
    resource: &'a ResourceFacts,
    session: &'a SessionFacts,
    /// Protocol facts known at open (`input.ssh` for SSH), under the protocol's own key.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a RequestFacts>,
}

/// What one request adds to the session's input.
#[derive(Serialize)]
struct RequestInput<'a, Q: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<Q>,
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'a [ColumnFacts]>,
}

/// The query as `post_request` sees it: the facts that shape a result (type and tables), not
/// the statement text. A plan is per result *shape*, so it can be cached per shape.
#[derive(Serialize)]
struct ShapeQuery<'a> {
    #[serde(rename = "type")]
    query_type: gate_core::QueryType,
    tables: &'a [String],
}

/// A per-session cache of what a handler derived from `post_request` for a result shape
/// (e.g. a mask plan plus the protocol's column types). Keyed by [`shape_key`]; emptied when
/// the policies change. Bounded: it forgets everything when it grows past its limit.
pub struct ShapeCache<T> {
    generation: u64,
    entries: HashMap<u64, T>,
}

const SHAPE_CACHE_LIMIT: usize = 256;

impl<T: Clone> ShapeCache<T> {
    pub fn new() -> Self {
        ShapeCache {
            generation: 0,
            entries: HashMap::new(),
        }
    }

    pub fn get(&mut self, session: &Session, key: u64) -> Option<T> {
        let generation = session.pipeline.policy_generation();
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
            return None;
        }
        self.entries.get(&key).cloned()
    }

    pub fn insert(&mut self, session: &Session, key: u64, value: T) {
        if self.entries.len() >= SHAPE_CACHE_LIMIT {
            self.entries.clear();
        }
        self.generation = session.pipeline.policy_generation();
        self.entries.insert(key, value);
    }
}

impl<T: Clone> Default for ShapeCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The cache key of a result shape: the protocol's raw shape description (a row description,
/// column definitions) plus the query facts `post_request` sees.
pub fn shape_key<'a>(shape: impl IntoIterator<Item = &'a [u8]>, facts: Option<&QueryFacts>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for part in shape {
        part.hash(&mut h);
    }
    if let Some(f) = facts {
        f.query_type.hash(&mut h);
        f.tables.hash(&mut h);
    }
    h.finish()
}

#[derive(Serialize)]
struct ResourceFacts {
    name: String,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
}

#[derive(Serialize)]
struct SessionFacts {
    id: Uuid,
    client_addr: String,
    tls: bool,
}

/// How a channel request (SSH exec, subsystem, forward) ended, for the recording.
#[derive(Debug, Clone, Default)]
pub struct ChannelOutcome {
    pub duration: Duration,
    /// Bytes from the client to the upstream.
    pub bytes_in: u64,
    /// Bytes from the upstream to the client (stdout and stderr).
    pub bytes_out: u64,
    pub exit_status: Option<u32>,
    /// Signal name without `SIG` (`TERM`, `KILL`) when the command was killed.
    pub exit_signal: Option<String>,
}

/// How a forwarded request ended, for the recording.
pub struct RequestOutcome {
    pub rows: u64,
    pub duration: Duration,
    /// `(code, message)` of an error the upstream returned.
    pub error: Option<(String, String)>,
}

/// An open session. Created by [`Pipeline::open_session`]; call [`Session::close`] at the end.
pub struct Session {
    pipeline: Arc<Pipeline>,
    pub id: Uuid,
    pub identity: Identity,
    pub resource: Arc<ResourceConfig>,
    client: ClientInfo,
    resource_facts: ResourceFacts,
    session_facts: SessionFacts,
    /// `user`, `resource` and `session`, converted once; `None` if that failed (then every
    /// evaluation denies).
    base_input: Option<gate_policy::PolicyInput>,
    recorder: Option<SessionRecorder>,
    started: Instant,
    queries: AtomicU64,
    blocked: AtomicU64,
    errors: AtomicU64,
    /// Per (stage, action) histograms, resolved once per session instead of per request.
    eval_histograms: [[OnceLock<Histogram>; 5]; 3],
    /// Per (stage, action) decision counters, resolved once per session likewise.
    decision_counters: [[OnceLock<prometheus::IntCounter>; 5]; 3],
    /// `pre_request` decisions reused for statements the policies cannot tell apart.
    decision_cache: std::sync::Mutex<DecisionCache>,
    request_histogram: Histogram,
    /// Set (with the reason) when an operator ends the session.
    termination: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// Would-be decisions of dry-run policies, audited by the hook that evaluated them.
    dry_runs: std::sync::Mutex<Vec<(Stage, gate_policy::DryRunOutcome)>>,
    closed: bool,
    audit_context: AuditContext,
}

/// What every audit event of a session repeats, built once and shared by its events.
#[derive(Clone)]
struct AuditContext {
    identity: Arc<AuditIdentity>,
    resource: Arc<str>,
    client_addr: Arc<str>,
}

impl AuditContext {
    fn new(identity: &Identity, resource: &ResourceConfig, client: &ClientInfo) -> Self {
        AuditContext {
            identity: Arc::new(AuditIdentity {
                sub: identity.sub.clone(),
                name: identity.name.clone(),
                email: identity.email.clone(),
            }),
            resource: resource.name.as_str().into(),
            client_addr: client.addr.to_string().into(),
        }
    }
}

fn stage_index(s: Stage) -> usize {
    match s {
        Stage::Session => 0,
        Stage::PreRequest => 1,
        Stage::PostRequest => 2,
    }
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Allow => 0,
        Action::Block => 1,
        Action::Rewrite => 2,
        Action::Mask => 3,
        Action::Filter => 4,
    }
}

impl Pipeline {
    /// Opens a session for an authenticated identity on a resource: evaluates the `session`
    /// policy (fail closed), audits the start and prepares the recording.
    pub async fn open_session(
        self: &Arc<Self>,
        client: ClientInfo,
        identity: Identity,
        resource: Arc<ResourceConfig>,
    ) -> Result<Session, SessionDenied> {
        self.open_session_with(client, identity, resource, None)
            .await
    }

    /// [`Pipeline::open_session`] with protocol facts known at open (e.g. `input.ssh`), which
    /// every evaluation of the session then sees.
    pub async fn open_session_with(
        self: &Arc<Self>,
        client: ClientInfo,
        identity: Identity,
        resource: Arc<ResourceConfig>,
        protocol_facts: Option<RequestFacts>,
    ) -> Result<Session, SessionDenied> {
        let protocol = client.protocol;
        let resource_name = resource.name.clone();
        let labels = [protocol.as_str(), resource_name.as_str()];
        let audit_context = AuditContext::new(&identity, &resource, &client);
        let mut session = Session {
            pipeline: self.clone(),
            id: Uuid::now_v7(),
            resource_facts: ResourceFacts {
                name: resource.name.clone(),
                protocol: protocol.as_str(),
                database: resource.database.clone(),
            },
            session_facts: SessionFacts {
                id: Uuid::nil(),
                client_addr: client.addr.to_string(),
                tls: client.tls,
            },
            base_input: None,
            recorder: None,
            identity,
            resource,
            client,
            started: Instant::now(),
            queries: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            eval_histograms: Default::default(),
            decision_counters: Default::default(),
            decision_cache: Default::default(),
            request_histogram: self.metrics.request_duration.with_label_values(&labels),
            termination: None,
            dry_runs: Default::default(),
            closed: true,
            audit_context,
        };
        session.session_facts.id = session.id;
        session.base_input = match gate_policy::PolicyInput::new(&SessionInput {
            user: &session.identity,
            resource: &session.resource_facts,
            session: &session.session_facts,
            protocol: protocol_facts.as_ref(),
        }) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the policy input; the session will deny every request");
                None
            }
        };

        // Just-in-time access comes first: no grant, no session (fail closed).
        if let Err(why) = self.check_grant(&session.identity.name, &session.resource) {
            session
                .audit_decision(Stage::Session, &Decision::block(why.clone()), None)
                .await;
            return Err(SessionDenied { reason: why });
        }
        let decision = session.evaluate(Stage::Session, None, None);
        session
            .audit_decision(Stage::Session, &decision, None)
            .await;
        if decision.is_block() {
            return Err(SessionDenied {
                reason: decision.block_reason().to_string(),
            });
        }

        session.recorder = Some(self.recordings.session(SessionHeader {
            session_id: session.id,
            protocol: protocol.to_string(),
            resource: session.resource.name.clone(),
            database: session.resource.database.clone(),
            user: session.audit_user(),
            client_addr: Some(session.client.addr.to_string()),
            started_at: SystemTime::now(),
        }));
        session.closed = false;
        session.termination = Some(self.register_live(crate::LiveSessionInfo {
            id: session.id,
            protocol: protocol.to_string(),
            resource: session.resource.name.clone(),
            user: session.identity.name.clone(),
            client_addr: session.client.addr.to_string(),
            started_at: SystemTime::now(),
        }));
        self.metrics
            .sessions_active
            .with_label_values(&labels)
            .inc();
        self.metrics.sessions_total.with_label_values(&labels).inc();
        self.live.count.fetch_add(1, Ordering::Relaxed);
        self.audit
            .emit(AuditEvent {
                session_id: Some(session.id),
                ..session.event(AuditKind::SessionStart)
            })
            .await;
        tracing::info!(session = %session.id, user = %session.identity.name, resource = %session.resource.name, client = %session.client.addr, "session opened");
        Ok(session)
    }
}

impl Session {
    pub fn masker(&self) -> &Masker {
        &self.pipeline.masker
    }

    /// Why an operator ended this session, once one did ([`Pipeline::terminate_session`]).
    pub fn termination_reason(&self) -> Option<String> {
        self.termination.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// Resolves with the reason when an operator ends this session.
    pub async fn terminated(&self) -> String {
        let Some(mut rx) = self.termination.clone() else {
            return std::future::pending().await;
        };
        let reason = rx
            .wait_for(|r| r.is_some())
            .await
            .ok()
            .and_then(|r| r.clone());
        match reason {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// `pre_request`: what to do with one request. Policy errors block (fail closed) with the
    /// reason; every decision is audited.
    pub async fn decide(&self, facts: &QueryFacts) -> Decision {
        if let Some(why) = self.outside_grant(|s| s.covers_query(facts)).await {
            return self.deny(facts, &why).await;
        }
        let decision = self.decide_cached(facts);
        if decision.is_block() {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.audit_decision(Stage::PreRequest, &decision, Some(facts))
            .await;
        decision
    }

    /// The `pre_request` decision for `facts`, evaluated or, when the policies read no
    /// more of the query than its type and tables, reused from an earlier statement of
    /// the session with the same type and tables ([`gate_policy::QueryDependence`]). Only
    /// successful evaluations are reused; a policy change empties the cache.
    fn decide_cached(&self, facts: &QueryFacts) -> Decision {
        let policies = self.pipeline.policies();
        let gate_policy::QueryDependence::Fields { query_type, tables } =
            policies.query_dependence()
        else {
            return self.evaluate(Stage::PreRequest, Some(facts), None);
        };
        // Targeted and dry-run policies are resolved per request (and dry runs audited).
        if policies.has_targeting() || !policies.has_stage(Stage::PreRequest) {
            return self.evaluate(Stage::PreRequest, Some(facts), None);
        }
        let key_type = query_type.then_some(facts.query_type);
        let key_tables: &[String] = if tables { &facts.tables } else { &[] };
        {
            let mut cache = self
                .decision_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !cache.is_for(&policies) {
                *cache = DecisionCache::for_policies(Arc::clone(&policies));
            }
            if let Some(d) = cache.get(key_type, key_tables) {
                return d;
            }
        }
        let (decision, ok) = self.evaluate_checked(Stage::PreRequest, Some(facts), None);
        if ok {
            self.decision_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(&policies, key_type, key_tables, &decision);
        }
        decision
    }

    /// Why a request is outside every active grant of a resource that needs one (`None`:
    /// covered, or the resource needs no grant). Grants may have been narrowed by scopes
    /// (`{"operation": "read"}`); the check is per request, so a grant approved or revoked
    /// mid-session counts from the next request on. When no grant is left at all the
    /// session is ended as the grant sweep would end it ([`Pipeline::enforce_grants`]),
    /// rather than left open refusing everything.
    async fn outside_grant(
        &self,
        covered: impl Fn(&gate_core::GrantScope) -> bool,
    ) -> Option<String> {
        let scopes = self
            .pipeline
            .grant_scopes(&self.identity.name, &self.resource)?;
        if scopes.iter().any(covered) {
            return None;
        }
        if scopes.is_empty() {
            let why = match self
                .pipeline
                .check_grant(&self.identity.name, &self.resource)
            {
                Err(why) => why,
                Ok(()) => format!("your access grant for {} has ended", self.resource.name),
            };
            let reason = format!("access grant ended: {why}");
            self.pipeline
                .terminate_session(self.id, &reason, "grant check")
                .await;
            return Some(reason);
        }
        let held: Vec<String> = scopes.iter().map(|s| s.describe()).collect();
        Some(format!(
            "your access grant for {} covers only: {}; request wider access with gate access request --resource {}",
            self.resource.name,
            held.join(", "),
            self.resource.name
        ))
    }

    /// A request the handler refuses by itself because it would bypass the gateway (a
    /// protocol feature Gate does not relay). Audited and counted like a policy block.
    pub async fn deny(&self, facts: &QueryFacts, reason: &str) -> Decision {
        let decision = Decision::block(reason);
        self.blocked.fetch_add(1, Ordering::Relaxed);
        self.audit_decision(Stage::PreRequest, &decision, Some(facts))
            .await;
        decision
    }

    /// `pre_request` for a protocol request that is not SQL (an SSH exec, subsystem or
    /// forwarding request): policy sees it under its protocol key (`input.ssh`). Errors
    /// block (fail closed); every decision is audited.
    pub async fn decide_request(&self, facts: &RequestFacts) -> Decision {
        let covered = |s: &gate_core::GrantScope| match facts {
            RequestFacts::Query(q) => s.covers_query(q),
            // Narrow scopes name database or MCP operations; none covers a shell.
            RequestFacts::Ssh(_) => s.is_everything(),
        };
        let decision = match self.outside_grant(covered).await {
            Some(why) => Decision::block(why),
            None => self.evaluate_input(Stage::PreRequest, |base| base.with(facts)),
        };
        if decision.is_block() {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.audit_decision_of(
            Stage::PreRequest,
            &decision,
            Some((facts.shared_statement(), facts.kind())),
        )
        .await;
        decision
    }

    /// Records one finished non-SQL request (an SSH exec, subsystem, forward) with what
    /// it moved. `rows` is left 0; the byte counts and exit status say what happened.
    pub async fn record_request(
        &self,
        facts: &RequestFacts,
        decision: &Decision,
        outcome: ChannelOutcome,
    ) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let failed = outcome.exit_status.is_some_and(|s| s != 0) || outcome.exit_signal.is_some();
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(recorder) = &self.recorder else {
            return;
        };
        recorder
            .record(QueryEntry {
                statement: facts.shared_statement(),
                query_type: facts.kind(),
                action: decision.action,
                reason: decision.reason.clone(),
                rows: 0,
                duration: outcome.duration,
                error: outcome.exit_signal.map(|signal| EntryError {
                    code: format!("SIG{signal}"),
                    message: "terminated by a signal".into(),
                }),
                transfer: Some(gate_recording::Transfer {
                    bytes_in: outcome.bytes_in,
                    bytes_out: outcome.bytes_out,
                    exit_status: outcome.exit_status,
                }),
            })
            .await;
    }

    /// Where the session's recordings go and who they are attributed to: for a
    /// protocol that writes more than one recording per session (SSH terminal recordings).
    pub fn recordings(&self) -> &gate_recording::Recordings {
        &self.pipeline.recordings
    }

    /// The identity as recordings and audit show it.
    pub fn audit_user(&self) -> AuditIdentity {
        (*self.audit_context.identity).clone()
    }

    /// `post_request`: the mask plan for one result shape. `Err(reason)` means the result must
    /// not reach the client (policy error, block, or a decision this path cannot apply).
    pub async fn plan_masks(
        &self,
        facts: Option<&QueryFacts>,
        columns: &[ColumnFacts],
    ) -> Result<MaskPlan, String> {
        if !self.pipeline.policies().has_stage(Stage::PostRequest) {
            return Ok(MaskPlan::empty());
        }
        let decision = self.evaluate(Stage::PostRequest, facts, Some(columns));
        if decision.action != Action::Allow {
            self.audit_decision(Stage::PostRequest, &decision, facts)
                .await;
        } else {
            self.audit_dry_runs(
                facts
                    .map(|f| (f.statement.clone(), f.query_type.as_str().into()))
                    .as_ref(),
            )
            .await;
        }
        match decision.action {
            Action::Allow => Ok(MaskPlan::empty()),
            Action::Mask => Ok(MaskPlan::build(
                &decision.masks,
                columns.iter().map(|c| c.name.as_str()),
            )),
            Action::Block => {
                self.blocked.fetch_add(1, Ordering::Relaxed);
                Err(decision.block_reason().to_string())
            }
            Action::Rewrite | Action::Filter => Err(format!(
                "post_request decision {:?} cannot be applied to this result; refused",
                decision.action.as_str()
            )),
        }
    }

    /// `post_request` for a result whose columns the gateway cannot see one by one (e.g. a
    /// `COPY … TO STDOUT` stream). Any mask the policy asks for cannot be applied there, so
    /// such a result is refused rather than passed on unmasked.
    pub async fn check_opaque_result(&self, facts: Option<&QueryFacts>) -> Result<(), String> {
        if !self.pipeline.policies().has_stage(Stage::PostRequest) {
            return Ok(());
        }
        let decision = self.evaluate(Stage::PostRequest, facts, Some(&[]));
        if decision.action == Action::Allow && decision.masks.is_empty() {
            self.audit_dry_runs(
                facts
                    .map(|f| (f.statement.clone(), f.query_type.as_str().into()))
                    .as_ref(),
            )
            .await;
            return Ok(());
        }
        let refusal = Decision {
            action: Action::Block,
            reason: Some(if decision.is_block() {
                decision.block_reason().to_string()
            } else {
                "this result cannot be masked column by column (COPY output); refused because \
                 the post_request policy asks for masking"
                    .to_string()
            }),
            ..Decision::default()
        };
        self.blocked.fetch_add(1, Ordering::Relaxed);
        self.audit_decision(Stage::PostRequest, &refusal, facts)
            .await;
        Err(refusal.reason.unwrap_or_default())
    }

    /// Records one finished request (statement, decision, rows, duration, error).
    pub async fn record(&self, facts: &QueryFacts, decision: &Decision, outcome: RequestOutcome) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if outcome.error.is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if decision.action != Action::Block {
            self.request_histogram
                .observe(outcome.duration.as_secs_f64());
        }
        let Some(recorder) = &self.recorder else {
            return;
        };
        recorder
            .record(QueryEntry {
                statement: facts.statement.clone(),
                query_type: facts.query_type.as_str().into(),
                action: decision.action,
                reason: decision.reason.clone(),
                rows: outcome.rows,
                duration: outcome.duration,
                error: outcome
                    .error
                    .map(|(code, message)| EntryError { code, message }),
                transfer: None,
            })
            .await;
    }

    /// Ends the session: audit, recording summary, metrics.
    pub async fn close(mut self, reason: &str) {
        self.finish(reason).await;
    }

    async fn finish(&mut self, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let labels = [self.client.protocol.as_str(), self.resource.name.as_str()];
        self.pipeline
            .metrics
            .sessions_active
            .with_label_values(&labels)
            .dec();
        if let Some(recorder) = self.recorder.take() {
            recorder
                .finish(SessionSummary {
                    queries: self.queries.load(Ordering::Relaxed),
                    blocked: self.blocked.load(Ordering::Relaxed),
                    errors: self.errors.load(Ordering::Relaxed),
                })
                .await;
        }
        self.pipeline
            .audit
            .emit(AuditEvent {
                session_id: Some(self.id),
                reason: Some(reason.to_string()),
                details: serde_json::json!({
                    "duration_s": self.started.elapsed().as_secs_f64(),
                    "queries": self.queries.load(Ordering::Relaxed),
                    "blocked": self.blocked.load(Ordering::Relaxed),
                    "errors": self.errors.load(Ordering::Relaxed),
                }),
                ..self.event(AuditKind::SessionEnd)
            })
            .await;
        tracing::info!(session = %self.id, queries = self.queries.load(Ordering::Relaxed), blocked = self.blocked.load(Ordering::Relaxed), reason, "session closed");
        self.pipeline.unregister_live(self.id);
        let live = &self.pipeline.live;
        live.count.fetch_sub(1, Ordering::Relaxed);
        live.changed.notify_waiters();
    }

    fn evaluate(
        &self,
        stage: Stage,
        query: Option<&QueryFacts>,
        columns: Option<&[ColumnFacts]>,
    ) -> Decision {
        self.evaluate_checked(stage, query, columns).0
    }

    /// Like [`Session::evaluate`], also telling whether the policies answered (`false`:
    /// the decision is the fail-closed block of an evaluation error).
    fn evaluate_checked(
        &self,
        stage: Stage,
        query: Option<&QueryFacts>,
        columns: Option<&[ColumnFacts]>,
    ) -> (Decision, bool) {
        self.evaluate_input_checked(stage, |base| {
            if stage == Stage::PostRequest {
                base.with(&RequestInput {
                    query: query.map(|q| ShapeQuery {
                        query_type: q.query_type,
                        tables: &q.tables,
                    }),
                    columns,
                })
            } else {
                base.with(&RequestInput { query, columns })
            }
        })
    }

    /// Evaluates `stage` on the session's input extended by `extend`. Errors deny.
    fn evaluate_input(
        &self,
        stage: Stage,
        extend: impl FnOnce(
            &gate_policy::PolicyInput,
        ) -> Result<gate_policy::PolicyInput, gate_policy::PolicyError>,
    ) -> Decision {
        self.evaluate_input_checked(stage, extend).0
    }

    fn evaluate_input_checked(
        &self,
        stage: Stage,
        extend: impl FnOnce(
            &gate_policy::PolicyInput,
        ) -> Result<gate_policy::PolicyInput, gate_policy::PolicyError>,
    ) -> (Decision, bool) {
        let policies = self.pipeline.policies();
        if !policies.has_stage(stage) {
            return (Decision::allow(), true);
        }
        let started = Instant::now();
        let input = match &self.base_input {
            Some(base) => extend(base),
            None => Err(gate_policy::PolicyError::Input {
                stage: Some(stage),
                message: "session facts could not be converted".into(),
            }),
        };
        let evaluated = input.and_then(|i| {
            if policies.has_targeting() {
                let e = policies.evaluate_for(stage, &self.resource.name, &i)?;
                if !e.dry_run.is_empty() {
                    self.dry_runs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(e.dry_run.into_iter().map(|d| (stage, d)));
                }
                Ok(e.decision)
            } else {
                policies.evaluate_input(stage, &i)
            }
        });
        let ok = evaluated.is_ok();
        let decision = match evaluated {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(session = %self.id, %stage, error = %e, "policy evaluation failed; denying");
                Decision::block(format!("denied: policy evaluation failed: {e}"))
            }
        };
        let h = &self.eval_histograms[stage_index(stage)][action_index(decision.action)];
        h.get_or_init(|| {
            self.pipeline.metrics.policy_eval.with_label_values(&[
                self.client.protocol.as_str(),
                self.resource.name.as_str(),
                stage.as_str(),
                decision.action.as_str(),
            ])
        })
        .observe(started.elapsed().as_secs_f64());
        (decision, ok)
    }

    async fn audit_decision(&self, stage: Stage, decision: &Decision, facts: Option<&QueryFacts>) {
        self.audit_decision_of(
            stage,
            decision,
            facts.map(|f| (f.statement.clone(), f.query_type.as_str().into())),
        )
        .await
    }

    /// Audits a decision on a request given as `(statement, kind)`.
    async fn audit_decision_of(
        &self,
        stage: Stage,
        decision: &Decision,
        request: Option<(Arc<str>, Cow<'static, str>)>,
    ) {
        self.audit_dry_runs(request.as_ref()).await;
        self.decision_counters[stage_index(stage)][action_index(decision.action)]
            .get_or_init(|| {
                self.pipeline.metrics.decisions.with_label_values(&[
                    self.client.protocol.as_str(),
                    self.resource.name.as_str(),
                    stage.as_str(),
                    decision.action.as_str(),
                ])
            })
            .inc();
        self.pipeline
            .audit
            .emit(AuditEvent {
                session_id: Some(self.id),
                stage: Some(stage),
                action: Some(decision.action),
                reason: decision.reason.clone(),
                statement: request.as_ref().map(|(statement, _)| statement.clone()),
                query_type: request.map(|(_, kind)| kind),
                dry_run: decision.dry_run,
                ..self.event(AuditKind::PolicyDecision)
            })
            .await;
    }

    /// Audits what dry-run policies would have decided (never enforced).
    async fn audit_dry_runs(&self, request: Option<&(Arc<str>, Cow<'static, str>)>) {
        let pending = {
            let mut d = self.dry_runs.lock().unwrap_or_else(|p| p.into_inner());
            if d.is_empty() {
                return;
            }
            std::mem::take(&mut *d)
        };
        for (stage, outcome) in pending {
            let (action, reason) = match &outcome.result {
                Ok(d) => (d.action, d.reason.clone()),
                Err(e) => (Action::Block, Some(format!("evaluation failed: {e}"))),
            };
            self.pipeline
                .audit
                .emit(AuditEvent {
                    session_id: Some(self.id),
                    stage: Some(stage),
                    action: Some(action),
                    reason: Some(match reason {
                        Some(r) => format!("dry run of {}: {r}", outcome.policy),
                        None => format!("dry run of {}", outcome.policy),
                    }),
                    statement: request.map(|(statement, _)| statement.clone()),
                    query_type: request.map(|(_, kind)| kind.clone()),
                    dry_run: true,
                    ..self.event(AuditKind::PolicyDecision)
                })
                .await;
        }
    }

    /// A new event of `kind` about this session's user, resource and client.
    fn event(&self, kind: AuditKind) -> AuditEvent {
        let c = &self.audit_context;
        AuditEvent {
            identity: Some(c.identity.clone()),
            resource: Some(c.resource.clone()),
            protocol: Some(self.client.protocol.as_str().into()),
            client_addr: Some(c.client_addr.clone()),
            ..AuditEvent::new(kind)
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed {
            // A handler that forgot close() (or panicked) must not lose the session end.
            let pipeline = self.pipeline.clone();
            let mut orphan = Session {
                pipeline,
                id: self.id,
                identity: self.identity.clone(),
                resource: self.resource.clone(),
                client: self.client.clone(),
                resource_facts: ResourceFacts {
                    name: String::new(),
                    protocol: self.resource_facts.protocol,
                    database: None,
                },
                session_facts: SessionFacts {
                    id: self.id,
                    client_addr: String::new(),
                    tls: false,
                },
                base_input: None,
                recorder: self.recorder.take(),
                started: self.started,
                queries: AtomicU64::new(self.queries.load(Ordering::Relaxed)),
                blocked: AtomicU64::new(self.blocked.load(Ordering::Relaxed)),
                errors: AtomicU64::new(self.errors.load(Ordering::Relaxed)),
                eval_histograms: Default::default(),
                decision_counters: Default::default(),
                decision_cache: Default::default(),
                request_histogram: self.request_histogram.clone(),
                termination: None,
                dry_runs: Default::default(),
                closed: false,
                audit_context: self.audit_context.clone(),
            };
            self.closed = true;
            let runtime = self
                .pipeline
                .background
                .clone()
                .or_else(|| tokio::runtime::Handle::try_current().ok());
            if let Some(rt) = runtime {
                rt.spawn(async move { orphan.finish("dropped").await });
            } else {
                orphan.closed = true;
            }
        }
    }
}

/// A session's reusable `pre_request` decisions, valid for one policy snapshot.
#[derive(Default)]
struct DecisionCache {
    /// The snapshot the entries were made with (held, so its address is not reused).
    policies: Option<Arc<gate_policy::PolicySet>>,
    /// (type if the policies read it, tables if they read them) → decision. A short list:
    /// a session uses a handful of statement shapes, and a lookup allocates nothing.
    entries: Vec<(Option<QueryType>, Vec<String>, Decision)>,
}

/// Entries kept per session; beyond that, decisions are evaluated afresh.
const DECISION_CACHE_ENTRIES: usize = 64;

impl DecisionCache {
    fn for_policies(policies: Arc<gate_policy::PolicySet>) -> DecisionCache {
        DecisionCache {
            policies: Some(policies),
            entries: Vec::new(),
        }
    }

    fn is_for(&self, policies: &Arc<gate_policy::PolicySet>) -> bool {
        self.policies
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, policies))
    }

    fn get(&self, query_type: Option<QueryType>, tables: &[String]) -> Option<Decision> {
        self.entries
            .iter()
            .find(|(t, tb, _)| *t == query_type && tb.as_slice() == tables)
            .map(|(_, _, d)| d.clone())
    }

    fn put(
        &mut self,
        policies: &Arc<gate_policy::PolicySet>,
        query_type: Option<QueryType>,
        tables: &[String],
        decision: &Decision,
    ) {
        if self.is_for(policies) && self.entries.len() < DECISION_CACHE_ENTRIES {
            self.entries
                .push((query_type, tables.to_vec(), decision.clone()));
        }
    }
}
