//! The store's domain types.
//!
//! Every time is an `i64` of unix **milliseconds** (UTC), the same unit the schema stores,
//! so values round-trip without conversion and compare directly with SQL. Ids are UUIDv7
//! (time-ordered, so primary-key indexes stay append-mostly). Secrets never appear in these
//! types: only their SHA-256 digests are stored, and the plaintext is handed back once, at
//! creation, next to the record.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// An organization's id.
///
/// A distinct type (not a bare [`Uuid`]) so that `store.get_resource(org, id)` cannot be
/// called with the two ids swapped: every org-scoped method takes an `OrgId` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrgId(pub Uuid);

impl OrgId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        OrgId(Uuid::now_v7())
    }
}

impl Default for OrgId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrgId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(OrgId)
    }
}

impl From<Uuid> for OrgId {
    fn from(id: Uuid) -> Self {
        OrgId(id)
    }
}

/// A tenant. Everything else in the store belongs to exactly one org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub created_at: i64,
}

/// What an API key may do in the control plane's API. The store only records it; the
/// control plane enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyRole {
    Readonly,
    Editor,
    Admin,
    /// For automation acting as a connector (e.g. provisioning registration tokens).
    Connector,
}

impl ApiKeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyRole::Readonly => "readonly",
            ApiKeyRole::Editor => "editor",
            ApiKeyRole::Admin => "admin",
            ApiKeyRole::Connector => "connector",
        }
    }
}

impl FromStr for ApiKeyRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "readonly" => Ok(ApiKeyRole::Readonly),
            "editor" => Ok(ApiKeyRole::Editor),
            "admin" => Ok(ApiKeyRole::Admin),
            "connector" => Ok(ApiKeyRole::Connector),
            other => Err(format!("unknown API key role {other:?}")),
        }
    }
}

impl fmt::Display for ApiKeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key's record. The secret is not here: it is shown once by
/// [`Store::create_api_key`](crate::Store::create_api_key) and stored only as SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub role: ApiKeyRole,
    /// The first 8 characters of the secret, so people can tell their keys apart.
    pub prefix: String,
    pub created_at: i64,
    /// Updated by authentication at most once a minute (a write per request would turn
    /// every API call into a write transaction).
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What a resource is made of, for create and (full-replacement) update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceInput {
    pub name: String,
    /// `postgres`, `mysql`, `ssh`, …: opaque to the store.
    pub protocol: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub database: Option<String>,
    /// Everything else (credential references, listen port, pool settings, host key pins):
    /// opaque to the store, stored as JSON text.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// An upstream a connector serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub spec: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A policy's lifecycle. Only `dry_run` and `active` policies reach connectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyState {
    Draft,
    DryRun,
    Active,
}

impl PolicyState {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyState::Draft => "draft",
            PolicyState::DryRun => "dry_run",
            PolicyState::Active => "active",
        }
    }
}

impl FromStr for PolicyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft" => Ok(PolicyState::Draft),
            "dry_run" => Ok(PolicyState::DryRun),
            "active" => Ok(PolicyState::Active),
            other => Err(format!("unknown policy state {other:?}")),
        }
    }
}

impl fmt::Display for PolicyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `session`, `pre_request`, `post_request`: checked by the control plane, not here.
    pub stages: Vec<String>,
    /// Resource names or shell globs (see [`target_matches`](crate::target_matches));
    /// empty means every resource.
    #[serde(default)]
    pub targets: Vec<String>,
    pub state: PolicyState,
    pub rego: String,
}

/// A partial policy update: `None` leaves a field as it is. A change to `rego`, `stages`
/// or `targets` creates a new version; `name` and `description` do not (they do not
/// change what is enforced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    #[serde(default)]
    pub rego: Option<String>,
}

/// A policy at its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    pub stages: Vec<String>,
    pub targets: Vec<String>,
    pub state: PolicyState,
    /// Starts at 1; +1 for every change of `rego`, `stages` or `targets`.
    pub version: i64,
    pub rego: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Policy {
    /// Whether this policy targets `resource` (no targets = every resource).
    pub fn applies_to(&self, resource: &str) -> bool {
        self.targets.is_empty()
            || self
                .targets
                .iter()
                .any(|t| crate::target_matches(t, resource))
    }
}

/// One historical version of a policy's enforced content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub org_id: OrgId,
    pub policy_id: Uuid,
    pub version: i64,
    pub rego: String,
    pub stages: Vec<String>,
    pub targets: Vec<String>,
    /// The policy's state when this version was created (later state changes do not
    /// create versions; they are admin audit events).
    pub state: PolicyState,
    pub created_at: i64,
    pub created_by: String,
}

/// A person or agent, for create and (full-replacement) update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInput {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Group names. Not checked against [`Group`]s: groups may also come from an IdP.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub ssh_public_keys: Vec<String>,
    /// SHA-256 (64 lowercase hex characters) of the identity's Gate token, if it has one.
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub disabled: bool,
}

/// A person or agent that can connect through Gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub ssh_public_keys: Vec<String>,
    pub token_sha256: Option<String>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A named group. Membership is each identity's `groups` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

/// A one-time token a new connector trades for its own credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    pub id: Uuid,
    pub org_id: OrgId,
    /// The name the connector will get.
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A registered connector and what it last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connector {
    pub id: Uuid,
    pub org_id: OrgId,
    pub name: String,
    pub version: String,
    pub registered_at: i64,
    pub last_heartbeat_at: Option<i64>,
    pub uptime_s: i64,
    pub active_sessions: i64,
    pub resources_served: Vec<String>,
    pub deregistered_at: Option<i64>,
    /// When it last shut down cleanly (cleared by its next heartbeat).
    pub offline_at: Option<i64>,
}

/// A connector's reachability as seen from its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    /// Heard from less than [`CONNECTED_WITHIN_MS`] ago.
    Connected,
    /// Heard from less than [`STALE_WITHIN_MS`] ago.
    Stale,
    /// Silent for longer, or deregistered.
    Disconnected,
}

/// A heartbeat younger than this means "connected" (three missed 30 s heartbeats do not).
pub const CONNECTED_WITHIN_MS: i64 = 90_000;
/// A heartbeat younger than this (but not connected) means "stale".
pub const STALE_WITHIN_MS: i64 = 600_000;

impl Connector {
    /// The status at `now_ms`. A connector that never sent a heartbeat counts from its
    /// registration, so a freshly registered one shows as connected.
    pub fn status_at(&self, now_ms: i64) -> ConnectorStatus {
        if self.deregistered_at.is_some() || self.offline_at.is_some() {
            return ConnectorStatus::Disconnected;
        }
        let seen = self.last_heartbeat_at.unwrap_or(self.registered_at);
        let age = now_ms.saturating_sub(seen);
        if age < CONNECTED_WITHIN_MS {
            ConnectorStatus::Connected
        } else if age < STALE_WITHIN_MS {
            ConnectorStatus::Stale
        } else {
            ConnectorStatus::Disconnected
        }
    }
}

/// A connector with its computed status, as [`Store::list_connectors`](crate::Store::list_connectors)
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorInfo {
    #[serde(flatten)]
    pub connector: Connector,
    pub status: ConnectorStatus,
}

/// What a connector reports every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: String,
    pub uptime_s: i64,
    pub active_sessions: i64,
    pub resources_served: Vec<String>,
}

/// Everything a connector needs, at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub org_id: OrgId,
    pub revision: i64,
    pub resources: Vec<Resource>,
    /// `active` and `dry_run` policies only, with their rego.
    pub policies: Vec<Policy>,
    pub identities: Vec<Identity>,
    pub groups: Vec<Group>,
    /// Active grants: approved access requests that have not expired.
    pub grants: Vec<AccessRequest>,
}

/// The outcome of [`Store::ingest_audit`](crate::Store::ingest_audit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    /// Events stored now.
    pub inserted: u64,
    /// Events whose id was already stored (a redelivery), or repeated within the batch.
    pub duplicates: u64,
}

/// Filters for [`Store::query_audit`](crate::Store::query_audit) and
/// [`Store::count_audit`](crate::Store::count_audit). All filters are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Event time ≥ this (unix ms).
    #[serde(default)]
    pub from: Option<i64>,
    /// Event time < this (unix ms).
    #[serde(default)]
    pub to: Option<i64>,
    /// Exact `identity.name`.
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
    /// Page size: default [`AUDIT_DEFAULT_LIMIT`], at most [`AUDIT_MAX_LIMIT`].
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only records older than the one this cursor came from
    /// ([`AuditRecord::cursor`] of the last record of the previous page).
    #[serde(default)]
    pub before_cursor: Option<String>,
}

pub const AUDIT_DEFAULT_LIMIT: u32 = 100;
pub const AUDIT_MAX_LIMIT: u32 = 10_000;

/// A stored audit event: the indexed columns plus the event as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub org_id: OrgId,
    pub id: Uuid,
    /// The event's own `time`, unix ms.
    pub time: i64,
    pub kind: String,
    pub identity: Option<String>,
    pub resource: Option<String>,
    pub action: Option<String>,
    pub protocol: Option<String>,
    pub session_id: Option<String>,
    pub connector_id: Option<Uuid>,
    /// When the control plane stored it, unix ms.
    pub received_at: i64,
    pub event: serde_json::Value,
}

impl AuditRecord {
    /// The position of this record in the newest-first order, for
    /// [`AuditQuery::before_cursor`]. Opaque to callers; stable because (time, id) is
    /// unique and never changes.
    pub fn cursor(&self) -> String {
        format!("{}_{}", self.time, self.id)
    }
}

/// The `kind` of events written by [`Store::append_admin_event`](crate::Store::append_admin_event).
pub const ADMIN_CHANGE_KIND: &str = "admin_change";

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(registered_at: i64, heartbeat: Option<i64>) -> Connector {
        Connector {
            id: Uuid::nil(),
            org_id: OrgId(Uuid::nil()),
            name: "c".into(),
            version: "1".into(),
            registered_at,
            last_heartbeat_at: heartbeat,
            uptime_s: 0,
            active_sessions: 0,
            resources_served: vec![],
            deregistered_at: None,
            offline_at: None,
        }
    }

    #[test]
    fn connector_status_thresholds() {
        let c = connector(0, Some(1_000_000));
        assert_eq!(c.status_at(1_000_000), ConnectorStatus::Connected);
        assert_eq!(c.status_at(1_089_999), ConnectorStatus::Connected);
        assert_eq!(c.status_at(1_090_000), ConnectorStatus::Stale);
        assert_eq!(c.status_at(1_599_999), ConnectorStatus::Stale);
        assert_eq!(c.status_at(1_600_000), ConnectorStatus::Disconnected);
        // A clock behind the heartbeat is not "disconnected".
        assert_eq!(c.status_at(0), ConnectorStatus::Connected);
        // Never heartbeated: counts from registration.
        let fresh = connector(5_000, None);
        assert_eq!(fresh.status_at(6_000), ConnectorStatus::Connected);
        assert_eq!(
            fresh.status_at(5_000 + 700_000),
            ConnectorStatus::Disconnected
        );
        let gone = Connector {
            deregistered_at: Some(1_000_000),
            ..c
        };
        assert_eq!(gone.status_at(1_000_000), ConnectorStatus::Disconnected);
    }

    #[test]
    fn enums_serialize_as_the_api_spells_them() {
        assert_eq!(
            serde_json::to_value(PolicyState::DryRun).unwrap(),
            serde_json::json!("dry_run")
        );
        assert_eq!(
            serde_json::to_value(ApiKeyRole::Readonly).unwrap(),
            serde_json::json!("readonly")
        );
        for s in ["draft", "dry_run", "active"] {
            assert_eq!(s.parse::<PolicyState>().unwrap().as_str(), s);
        }
        for s in ["readonly", "editor", "admin", "connector"] {
            assert_eq!(s.parse::<ApiKeyRole>().unwrap().as_str(), s);
        }
        assert!("owner".parse::<ApiKeyRole>().is_err());
        let id = OrgId::new();
        assert_eq!(id.to_string().parse::<OrgId>().unwrap(), id);
    }
}

/// Where an access request stands. `pending` is the only state a decision applies to;
/// `approved` is a grant (until `expires_at`, or until revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    Revoked,
}

impl AccessStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessStatus::Pending => "pending",
            AccessStatus::Approved => "approved",
            AccessStatus::Denied => "denied",
            AccessStatus::Expired => "expired",
            AccessStatus::Cancelled => "cancelled",
            AccessStatus::Revoked => "revoked",
        }
    }
}

impl FromStr for AccessStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(AccessStatus::Pending),
            "approved" => Ok(AccessStatus::Approved),
            "denied" => Ok(AccessStatus::Denied),
            "expired" => Ok(AccessStatus::Expired),
            "cancelled" => Ok(AccessStatus::Cancelled),
            "revoked" => Ok(AccessStatus::Revoked),
            other => Err(format!("unknown access request status {other:?}")),
        }
    }
}

impl fmt::Display for AccessStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A just-in-time access request; once approved (and until it expires or is revoked), a
/// grant. Times are unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: Uuid,
    pub org_id: OrgId,
    /// The identity asking, by name.
    pub requester: String,
    /// The resource asked for, by name.
    pub resource: String,
    pub reason: String,
    /// How long the access should last once approved.
    pub requested_duration_s: i64,
    /// What the grant covers (`{}` = everything), e.g. `{"operation": "read"}`.
    pub scopes: serde_json::Value,
    pub status: AccessStatus,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// When the grant ends; set on approval.
    pub expires_at: Option<i64>,
    /// When the request expires if nobody decides it (the pending TTL).
    pub pending_expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

/// What [`Store::create_access_request`](crate::Store::create_access_request) needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequestInput {
    /// Empty means the caller, when the caller is a person signed in with their token.
    #[serde(default)]
    pub requester: String,
    pub resource: String,
    #[serde(default)]
    pub reason: String,
    pub requested_duration_s: i64,
    #[serde(default = "empty_object")]
    pub scopes: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Filters for [`Store::list_access_requests`](crate::Store::list_access_requests), ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequestFilter {
    pub requester: Option<String>,
    pub status: Option<AccessStatus>,
    pub resource: Option<String>,
}

/// The default pending TTL: a request nobody decides expires after an hour.
pub const DEFAULT_PENDING_TTL_S: i64 = 3600;

fn default_pending_ttl_s() -> i64 {
    DEFAULT_PENDING_TTL_S
}

/// Who may approve what, per org. A resource's own rule wins over the org defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRules {
    /// Groups whose members may approve requests for resources without their own rule.
    #[serde(default)]
    pub default_approver_groups: Vec<String>,
    /// The longest grant for resources without their own maximum (`None` = no limit).
    #[serde(default)]
    pub default_max_duration_s: Option<i64>,
    /// How long a request may stay pending before it expires (`pending_ttl_s`, distinct
    /// from any access duration). Default 1 h.
    #[serde(default = "default_pending_ttl_s")]
    pub pending_ttl_s: i64,
    /// Per resource name.
    #[serde(default)]
    pub resources: std::collections::BTreeMap<String, ResourceApprovalRule>,
}

impl Default for ApprovalRules {
    fn default() -> Self {
        ApprovalRules {
            default_approver_groups: Vec::new(),
            default_max_duration_s: None,
            pending_ttl_s: DEFAULT_PENDING_TTL_S,
            resources: Default::default(),
        }
    }
}

/// One resource's approval rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceApprovalRule {
    /// Groups whose members may approve; empty = the org's default approver groups.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// The longest grant for this resource.
    #[serde(default)]
    pub max_duration_s: Option<i64>,
}

impl ApprovalRules {
    /// The groups whose members may approve requests for `resource`.
    pub fn approver_groups(&self, resource: &str) -> &[String] {
        match self.resources.get(resource) {
            Some(r) if !r.approver_groups.is_empty() => &r.approver_groups,
            _ => &self.default_approver_groups,
        }
    }

    /// The longest grant for `resource`, if limited.
    pub fn max_duration_s(&self, resource: &str) -> Option<i64> {
        self.resources
            .get(resource)
            .and_then(|r| r.max_duration_s)
            .or(self.default_max_duration_s)
    }
}
