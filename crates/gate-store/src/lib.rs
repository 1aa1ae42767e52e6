//! The control plane's store: organizations, API keys, resources, policies (with versions),
//! identities, groups, connectors and audit, on **SQLite** (the embedded default) or
//! **PostgreSQL** (for several control planes behind a load balancer).
//!
//! # One set of queries
//!
//! The store talks to both backends through sqlx's `Any` driver, so every query is written
//! once. That works because the schema and the SQL stay inside the subset both engines
//! agree on:
//!
//! - column types are `TEXT` and `BIGINT` only — `Any` maps nothing else portably (SQLite
//!   has no real BOOLEAN: `identities.disabled` is a 0/1 BIGINT);
//! - ids are UUIDv7 strings made by the application: no SERIAL/AUTOINCREMENT, no
//!   `last_insert_id`, and ids sort by creation time;
//! - every time is BIGINT unix **milliseconds** (UTC); the Rust types use `i64` ms too;
//! - JSON documents (`resources.spec`, audit events) and string lists (stages, targets,
//!   groups, SSH keys, resources served) are JSON in `TEXT`, (de)serialized by the store;
//! - placeholders are `$1, $2, …`, which PostgreSQL uses natively and SQLite (through sqlx)
//!   accepts as numbered parameters;
//! - upserts are `INSERT … ON CONFLICT … DO NOTHING`, writes return rows with `RETURNING`,
//!   pagination uses row-value comparisons `(a, b) < ($1, $2)` and uniqueness that must
//!   ignore retired rows uses partial indexes (`… WHERE revoked_at IS NULL`) — all of
//!   which SQLite ≥ 3.35 (bundled) and PostgreSQL ≥ 9.5 support;
//! - unique violations reach callers as [`StoreError::Conflict`] on both, through sqlx's
//!   backend-neutral `ErrorKind`.
//!
//! The one place the backends differ is how a write transaction starts: SQLite gets
//! `BEGIN IMMEDIATE` (take the write lock up front, waiting out the busy timeout, instead of
//! failing with `SQLITE_BUSY` when a read transaction later tries to write), PostgreSQL a
//! plain `BEGIN` and row locks; consistent snapshots use a SQLite read transaction and a
//! PostgreSQL `REPEATABLE READ` transaction.
//!
//! # Migrations
//!
//! The migrations in `crates/gate-store/migrations/` are compiled into the binary
//! (`include_str!`) and applied by [`Store::connect`] through sqlx's migrator (which keeps
//! `_sqlx_migrations` and, on PostgreSQL, takes an advisory lock so that control planes
//! starting together do not race). The same files serve both backends; no per-backend
//! file has been needed so far. For development, [`StoreOptions::migrations_path`] loads
//! them from a directory instead; checksums are over the SQL text, so a database migrated
//! from the directory and one migrated from the binary agree as long as the files do.
//!
//! # Schema
//!
//! | table | key | notes |
//! | --- | --- | --- |
//! | `orgs` | `id` | unique `name`; `revision` for config sync |
//! | `api_keys` | `(org_id, id)` | `secret_sha256` unique; name unique among unrevoked keys |
//! | `resources` | `(org_id, id)` | unique `(org_id, name)`; `spec` is JSON |
//! | `policies` | `(org_id, id)` | unique `(org_id, name)`; current version's content |
//! | `policy_versions` | `(org_id, policy_id, version)` | one row per content change |
//! | `identities` | `(org_id, id)` | unique `(org_id, name)`; `group_names` JSON list |
//! | `identity_groups` | `(org_id, id)` | unique `(org_id, name)` (GROUPS is a keyword) |
//! | `registration_tokens` | `(org_id, id)` | `secret_sha256` unique; single use |
//! | `connectors` | `(org_id, id)` | `secret_sha256` unique; name unique among registered |
//! | `audit_events` | `(org_id, id)` | event id = dedup key; indexed columns + full JSON |
//! | `access_requests` | `(org_id, id)` | JIT access requests and grants; guarded transitions |
//! | `approval_rules` | `org_id` | the org's approval rules as one JSON document |
//! | `webhook_endpoints` | `(org_id, id)` | signed-webhook receivers: URL, event filter, signing secrets (plain: needed to sign) |
//! | `webhook_deliveries` | `(org_id, id)` | one per (endpoint, event): the durable delivery queue and its history |
//! | `slack_messages` | `(org_id, access_request_id)` | where each request's Slack approval message is |
//!
//! # Isolation between orgs
//!
//! Every org-scoped method takes an [`OrgId`] and every statement filters on it; primary
//! keys lead with `org_id`, so a row of another org is simply not found
//! ([`StoreError::NotFound`]), never read, changed or deleted. The only lookups without an
//! org are the credential checks ([`Store::authenticate_api_key`],
//! [`Store::authenticate_connector`], [`Store::redeem_registration_token`]): a credential is
//! what tells the caller's org.
//!
//! # Secrets
//!
//! API keys (`gk_…`), registration tokens (`gr_…`) and connector credentials (`gc_…`) are 32
//! random bytes, base64url. They are returned once and stored only as SHA-256 hex, looked
//! up by digest and compared in full (constant time) before being accepted.
//!
//! The exception is webhook signing secrets (`whsec_…`): signing needs them in plain text,
//! so `webhook_endpoints` stores them as they are (see the `webhooks` module). They too are
//! returned only when created or rotated, never listed or logged.
//!
//! # Config revision
//!
//! `orgs.revision` is bumped in the same transaction as any change to resources, policies
//! (content or state), identities or groups, and any access-request transition (active
//! grants are part of the snapshot). Writers bump it *first*, which on PostgreSQL
//! row-locks the org and so serializes an org's config writes (no lost updates, no
//! deadlocks from differing lock orders). [`Store::snapshot`] reads the revision and the
//! config in one consistent snapshot.
//!
//! # Audit
//!
//! `audit_events` is append-only: [`Store::ingest_audit`] inserts with
//! `ON CONFLICT (org_id, id) DO NOTHING`, so a redelivered event counts as a duplicate, and
//! the only deletion is [`Store::purge_audit_before`] for retention. It has no foreign key
//! to `orgs`, so the record of an org outlives the org.

mod access;
mod api_keys;
mod audit;
mod config;
mod connectors;
mod error;

mod model;
mod orgs;
mod policies;
mod slack;
pub mod time;
mod webhooks;

pub use api_keys::API_KEY_PREFIX;
pub use connectors::{
    CONNECTOR_SECRET_PREFIX, DEFAULT_REGISTRATION_TTL, REGISTRATION_TOKEN_PREFIX,
};
pub use error::{RedeemError, Result, StoreError};
/// Shell-glob resource targeting, shared with the connector so both sides agree on what a
/// policy applies to.
pub use gate_core::glob::glob_match as target_matches;
pub use model::*;
pub use slack::SlackMessage;
pub use webhooks::{
    DeliveryOutcome, DeliveryStatus, WEBHOOK_SECRET_PREFIX, WebhookDelivery, WebhookEndpoint,
    WebhookEndpointInput, WebhookEndpointUpdate, WebhookSecrets,
};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor as _, Row as _, SqlStr};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// The migrations compiled into the binary: `(version, description, sql)`, mirroring the
/// `<version>_<description>.sql` files sqlx would read from the directory.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "access", include_str!("../migrations/0002_access.sql")),
    (
        3,
        "identity_tokens",
        include_str!("../migrations/0003_identity_tokens.sql"),
    ),
    (
        4,
        "webhooks",
        include_str!("../migrations/0004_webhooks.sql"),
    ),
    (5, "slack", include_str!("../migrations/0005_slack.sql")),
];

/// How to reach the database. `Debug` hides the URL's password, so options can be logged.
#[derive(Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to.db` (created if missing, with its directory), `sqlite::memory:`
    /// (tests; one connection), or `postgres://user:password@host:port/db`.
    pub url: String,
    /// Pool size. SQLite allows one writer at a time whatever this is; readers scale.
    pub max_open_conns: u32,
    /// Connections kept open while idle.
    pub min_conns: u32,
    /// How long a call waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// Development only: read migrations from this directory instead of the ones compiled
    /// into the binary.
    pub migrations_path: Option<PathBuf>,
}

impl StoreOptions {
    /// Options with defaults: 10 connections at most, none kept idle, 30 s acquire timeout,
    /// embedded migrations.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            max_open_conns: 10,
            min_conns: 0,
            acquire_timeout: Duration::from_secs(30),
            migrations_path: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_open_conns", &self.max_open_conns)
            .field("min_conns", &self.min_conns)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("migrations_path", &self.migrations_path)
            .finish()
    }
}

/// `scheme://user:***@host/…`: the URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a URL names, by scheme.
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::Invalid(format!(
                "unsupported database URL scheme {scheme:?} (expected sqlite:// or postgres://)"
            ))),
        }
    }
}

/// The store. Cheap to clone (a pool handle); share one per process.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// SQLite settings applied to every new connection. WAL lets readers run alongside the
/// writer; foreign keys are off by default in SQLite (sqlx turns them on, this makes it
/// explicit); the busy timeout makes a second writer wait instead of failing at once.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

impl Store {
    /// Connects, applies pending migrations, and returns the store.
    pub async fn connect(options: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&options.url)?;
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(options.max_open_conns.max(1))
            .min_connections(options.min_conns)
            .acquire_timeout(options.acquire_timeout);
        let url = match backend {
            Backend::Postgres => options.url.clone(),
            Backend::Sqlite => {
                let (url, in_memory) = prepare_sqlite_url(&options.url)?;
                if in_memory {
                    // Every `Any` connection parses the URL afresh and sqlx names each
                    // in-memory database uniquely, so only a single, never-closed connection
                    // sees one database.
                    pool_options = pool_options
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                }
                pool_options = pool_options.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(SQLITE_PRAGMAS).await?;
                        Ok(())
                    })
                });
                url
            }
        };
        let pool = pool_options.connect(&url).await?;
        let migrator = match &options.migrations_path {
            Some(dir) => Migrator::new(dir.clone()).await?,
            None => embedded_migrator(),
        };
        migrator.run(&pool).await?;
        tracing::info!(
            url = %redact_url(&options.url),
            ?backend,
            migrations = migrator.iter().count(),
            "store ready"
        );
        Ok(Store { pool, backend })
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool, for health checks. Prefer the typed methods for data.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection (waits for the ones in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction that will write. See the crate docs for why SQLite needs
    /// `BEGIN IMMEDIATE`.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Starts a read-only transaction whose statements all see one snapshot.
    pub(crate) async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }
}

fn embedded_migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Normalizes a `sqlite:` URL: creates the file's directory and asks for the file to be
/// created if missing (`mode=rwc`) unless the URL says otherwise. Returns the URL and
/// whether it is an in-memory database.
fn prepare_sqlite_url(url: &str) -> Result<(String, bool)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Invalid(format!("not a sqlite URL: {url:?}")))?;
    let (path, params) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(StoreError::Invalid("sqlite URL without a path".into()));
    }
    let in_memory = path == ":memory:" || params.is_some_and(|q| q.contains("mode=memory"));
    if in_memory {
        return Ok((url.to_string(), true));
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let url = match params {
        Some(q) if q.split('&').any(|kv| kv.starts_with("mode=")) => url.to_string(),
        Some(_) => format!("{url}&mode=rwc"),
        None => format!("{url}?mode=rwc"),
    };
    Ok((url, false))
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the per-domain modules.

/// Bumps the org's config revision inside `conn`'s transaction and returns the new value.
/// Also the org-existence check (and, on PostgreSQL, the per-org write lock) for config
/// writes, which is why writers call it first.
pub(crate) async fn bump_revision(conn: &mut AnyConnection, org: OrgId) -> Result<i64> {
    let rev: Option<i64> = sqlx::query_scalar(
        "UPDATE orgs SET revision = revision + 1 WHERE id = $1 RETURNING revision",
    )
    .bind(org.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    rev.ok_or_else(|| org_not_found(org))
}

/// Fails with NotFound unless the org exists.
pub(crate) async fn ensure_org(conn: &mut AnyConnection, org: OrgId) -> Result<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM orgs WHERE id = $1")
        .bind(org.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    found.map(|_| ()).ok_or_else(|| org_not_found(org))
}

pub(crate) fn org_not_found(org: OrgId) -> StoreError {
    StoreError::not_found(format!("org {org}"))
}

/// SHA-256 of a secret as lowercase hex: the only form in which secrets are stored.
pub(crate) fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a stored digest is the digest of `secret`, in constant time. The row was found
/// by an index lookup on the digest already; comparing the full digest again guards
/// against any lookup that is not byte-exact (collations, truncation).
pub(crate) fn digest_matches(stored_hex: &str, secret: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let presented = sha256_hex(secret);
    stored_hex.len() == presented.len()
        && bool::from(stored_hex.as_bytes().ct_eq(presented.as_bytes()))
}

/// A new secret: `prefix` + 32 random bytes (256 bits) in unpadded base64url.
pub(crate) fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Names are what people type and what show up in logs: non-empty, at most 200
/// characters, no surrounding whitespace, no control characters.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::Invalid(format!("{what} name is empty")));
    }
    if name.chars().count() > 200 {
        return Err(StoreError::Invalid(format!(
            "{what} name is longer than 200 characters"
        )));
    }
    if name.trim() != name {
        return Err(StoreError::Invalid(format!(
            "{what} name {name:?} has surrounding whitespace"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} name {name:?} has control characters"
        )));
    }
    Ok(())
}

/// Normalizes a string list (stages, targets, groups, SSH keys): trims entries, drops
/// empty and repeated ones, keeps the first occurrence's order — so equal lists compare
/// equal and a policy's version only moves on a real change.
pub(crate) fn clean_list(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let item = item.trim();
        if !item.is_empty() && !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("cannot encode JSON: {e}")))
}

/// Typed access to `Any` rows: every stored value is TEXT or BIGINT, decoded here into the
/// model's types, with a corrupt value reported instead of panicking.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn uuid(&self, col: &str) -> Result<Uuid>;
    fn org_id(&self, col: &str) -> Result<OrgId> {
        self.uuid(col).map(OrgId)
    }
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T>;
    fn parsed<T: std::str::FromStr<Err = String>>(&self, col: &str) -> Result<T>;
}

impl RowExt for AnyRow {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get::<String, _>(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i64, _>(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn uuid(&self, col: &str) -> Result<Uuid> {
        let s = self.text(col)?;
        Uuid::parse_str(&s)
            .map_err(|e| StoreError::Invalid(format!("stored {col} {s:?} is not a UUID: {e}")))
    }
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T> {
        let s = self.text(col)?;
        serde_json::from_str(&s)
            .map_err(|e| StoreError::Invalid(format!("stored {col} is not valid JSON: {e}")))
    }
    fn parsed<T: std::str::FromStr<Err = String>>(&self, col: &str) -> Result<T> {
        self.text(col)?.parse().map_err(StoreError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/gate.db");
        let (url, mem) = prepare_sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(!mem);
        assert!(url.ends_with("gate.db?mode=rwc"), "{url}");
        assert!(path.parent().unwrap().is_dir());
        let (url, _) = prepare_sqlite_url(&format!("sqlite://{}?mode=ro", path.display())).unwrap();
        assert!(url.ends_with("?mode=ro"));
        let (url, _) =
            prepare_sqlite_url(&format!("sqlite://{}?cache=shared", path.display())).unwrap();
        assert!(url.ends_with("?cache=shared&mode=rwc"));
        assert!(prepare_sqlite_url("sqlite::memory:").unwrap().1);
        assert!(prepare_sqlite_url("sqlite://").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/gate?sslmode=require"),
            "postgres://app:***@db:5432/gate?sslmode=require"
        );
        assert_eq!(redact_url("postgres://db/gate"), "postgres://db/gate");
        assert_eq!(redact_url("sqlite://data/gate.db"), "sqlite://data/gate.db");
        let opts = StoreOptions::new("postgres://app:hunter2@db/gate");
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn backends() {
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("postgres://u:p@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://h/db"),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn secrets() {
        let a = new_secret("gk_");
        let b = new_secret("gk_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(digest_matches(&sha256_hex(&a), &a));
        assert!(!digest_matches(&sha256_hex(&a), &b));
        assert!(!digest_matches("", &a));
    }

    #[test]
    fn names() {
        assert!(validate_name("x", "prod-db").is_ok());
        assert!(validate_name("x", "").is_err());
        assert!(validate_name("x", " a").is_err());
        assert!(validate_name("x", "a\nb").is_err());
        assert!(validate_name("x", &"a".repeat(201)).is_err());
    }

    #[test]
    fn embedded_migrations_match_the_directory() {
        // The override directory and the binary must agree, or a database migrated by one
        // would be refused by the other (sqlx checks checksums).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len());
        for (file, (version, description, sql)) in files.iter().zip(MIGRATIONS) {
            assert_eq!(file, &format!("{version:04}_{description}.sql"));
            assert_eq!(&std::fs::read_to_string(dir.join(file)).unwrap(), sql);
        }
    }
}
