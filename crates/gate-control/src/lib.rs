//! gate-control: the control plane. It holds resources, policies, identities, groups,
//! organizations, API keys and connectors in a store (SQLite or PostgreSQL), feeds each
//! connector its org's configuration, and receives their audit.
//!
//! Layout:
//! - [`service`]: the business rules, as plain async functions taking an authenticated
//!   [`Caller`] and typed arguments. Nothing else decides anything.
//! - [`http`] (axum, `/api/v1`) and [`grpc`] (tonic, `gate.v1.*`): thin adapters that
//!   authenticate, call a service function and render its result or [`ServiceError`].
//! - [`server`]: one listener for both, split by `content-type: application/grpc`, with
//!   optional TLS (ALPN `h2` + `http/1.1`), `/health` and `/metrics`.
//!
//! - [`mcp`]: the read-only MCP endpoint at `/mcp` (JSON-RPC over Streamable HTTP), always
//!   served next to `/api/v1`, calling the same service functions with the same keys.
//! - [`retention`]: the background job that purges audit older than `audit.retention`.
//! - [`events`]: what happened (access transitions, sessions, policy blocks), published to
//!   the integrations registered as [`events::EventSink`]s (webhooks, Slack).
//! - [`slack`]: Slack approvals — access requests posted with Approve/Deny buttons, clicks
//!   at `/integrations/slack/actions`, messages kept up to date, requesters notified.
//! - [`webhooks`]: signed webhooks (Standard Webhooks) — events queued durably per
//!   endpoint, sent by a background worker with retries, dead letters and redelivery.
//!
//! Other surfaces (the web UI) plug in as extra axum routes through
//! [`server::Surfaces::with_http_routes`], calling the same service functions.

pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod retention;
pub mod server;
pub mod service;
pub mod slack;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use gate_core::secret::TokenDigest;
use gate_store::Store;

pub use auth::{Access, Caller, Principal};
pub use error::{ServiceError, ServiceResult};
pub use server::{Running, StartOptions, Surfaces, start, start_with};

/// Shared state of a running control plane: the store, the system key, metrics and the
/// change notifications config watchers wait on. Cheap to share behind an `Arc`.
pub struct Control {
    store: Store,
    system_key: Option<TokenDigest>,
    insecure: bool,
    metrics: metrics::Metrics,
    /// Bumped after every change that alters some org's config snapshot, so `Watch` streams
    /// served by this process wake at once. Other control-plane processes on the same
    /// database are noticed by polling the org's revision every [`Control::watch_poll`].
    changes: tokio::sync::watch::Sender<u64>,
    /// Set when the process shuts down: long-lived streams end so connections can drain.
    shutdown: tokio::sync::watch::Sender<bool>,
    watch_poll: Duration,
    /// Where recordings are read from (`recording: {dir | url}`), set at start.
    recording_store: std::sync::OnceLock<(
        std::sync::Arc<dyn object_store::ObjectStore>,
        object_store::path::Path,
    )>,
    /// The integrations events are published to.
    sinks: events::Sinks,
    /// Published events wait here for the dispatcher ([`events::spawn_dispatch`]).
    events: events::Queue,
}

/// How `Control` is put together (see [`Control::new`]).
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The system key; empty disables it.
    pub system_key: String,
    /// Accept requests without a key as the system key (logged at warn, each time).
    pub insecure: bool,
    /// How often `Watch` re-reads the org's revision when nothing was signalled locally.
    pub watch_poll: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions {
            system_key: String::new(),
            insecure: false,
            watch_poll: Duration::from_secs(1),
        }
    }
}

impl Control {
    pub fn new(store: Store, options: ControlOptions) -> Arc<Control> {
        Arc::new(Control {
            store,
            system_key: auth::system_key_digest(&options.system_key),
            insecure: options.insecure,
            metrics: metrics::Metrics::new(),
            changes: tokio::sync::watch::Sender::new(0),
            shutdown: tokio::sync::watch::Sender::new(false),
            watch_poll: options.watch_poll,
            recording_store: std::sync::OnceLock::new(),
            sinks: events::Sinks::default(),
            events: events::Queue::new(),
        })
    }

    /// Registers an integration; it receives every event published from now on.
    pub fn add_event_sink(&self, sink: Arc<dyn events::EventSink>) {
        self.sinks.add(sink);
    }

    /// Queues `event` for the integrations. Synchronous on purpose: called right after the
    /// change it reports has committed, with no `.await` in between, so a caller that
    /// goes away (a client disconnecting cancels its request) cannot lose it. The
    /// dispatcher hands it to every sink in publication order.
    pub fn publish(&self, event: events::Event) {
        self.events.push(event);
    }

    /// Sets the recording store (once; later calls are ignored).
    pub fn set_recording_store(
        &self,
        store: (
            std::sync::Arc<dyn object_store::ObjectStore>,
            object_store::path::Path,
        ),
    ) {
        let _ = self.recording_store.set(store);
    }

    /// The recording store, when one is configured.
    pub fn recording_store(
        &self,
    ) -> Option<&(
        std::sync::Arc<dyn object_store::ObjectStore>,
        object_store::path::Path,
    )> {
        self.recording_store.get()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    pub(crate) fn system_key(&self) -> Option<&TokenDigest> {
        self.system_key.as_ref()
    }

    pub(crate) fn insecure(&self) -> bool {
        self.insecure
    }

    /// Wakes local config watchers: something in some org's snapshot changed.
    pub fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn subscribe_shutdown(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Ends long-lived streams (config watches) so the server can drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn watch_poll(&self) -> Duration {
        self.watch_poll
    }
}
