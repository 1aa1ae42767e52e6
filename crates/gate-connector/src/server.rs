//! Assembling the pipeline from the config and running listeners until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use gate_core::Protocol;
use gate_core::config::ConnectorConfig;
use gate_enforcement::Masker;
use gate_mysql::MysqlHandler;
use gate_pipeline::audit::JsonlFileSink;
use gate_pipeline::shards::SessionShards;
use gate_pipeline::{AuditLog, Authenticator, Metrics, Pipeline, PipelineParts};
use gate_policy::PolicySet;
use gate_postgres::PostgresHandler;
use gate_recording::Recordings;
use gate_ssh::SshHandler;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::control::{Composer, ControlPlane};
use crate::detect::{self, Detected};
use crate::health::{self, HealthState};

/// Audit events in flight before sessions wait for the writer.
const AUDIT_QUEUE: usize = 16 * 1024;
const REAP_INTERVAL: Duration = Duration::from_secs(30);

fn policy_refs(cfg: &ConnectorConfig) -> Vec<(std::path::PathBuf, gate_core::Stage)> {
    cfg.policies
        .iter()
        .map(|p| (p.path.clone(), p.stage))
        .collect()
}

/// Reads the configured policy files as sources (compiled together with synced ones).
fn read_policy_sources(cfg: &ConnectorConfig) -> anyhow::Result<Vec<gate_policy::PolicySource>> {
    policy_refs(cfg)
        .iter()
        .map(|(path, stage)| gate_policy::read_source(path, *stage).map_err(anyhow::Error::from))
        .collect()
}

/// Compiles the configured policies (for `check`).
pub fn check_policies(cfg: &ConnectorConfig) -> anyhow::Result<()> {
    PolicySet::load_files(&policy_refs(cfg))?;
    Ok(())
}

fn tls_acceptor(cfg: &ConnectorConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(tls) = cfg.tls.as_ref().filter(|t| t.enabled) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .with_context(|| format!("tls.cert_file {}", tls.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert_file {}", tls.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("tls.key_file {}", tls.key_file.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

fn masker(cfg: &ConnectorConfig) -> Masker {
    match &cfg.masking.hash_key {
        Some(k) => Masker::new(k.as_bytes()),
        None => {
            tracing::warn!(
                "masking.hash_key is not set: `hash` masks are stable only until restart"
            );
            let key: [u8; 32] = rand::random();
            Masker::new(&key)
        }
    }
}

pub async fn run(cfg: ConnectorConfig) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = tls_acceptor(&cfg)?;
    if tls.is_none() {
        tracing::warn!(
            "TLS is not configured: clients send their tokens in the clear; enable tls for anything but local testing"
        );
    }
    let policies = PolicySet::load_files(&policy_refs(&cfg)).context("policies")?;
    let (audit, audit_writer) = AuditLog::start_with_sync(
        JsonlFileSink::new(&cfg.audit.file)
            .with_context(|| format!("audit.file {}", cfg.audit.file.display()))?,
        AUDIT_QUEUE,
        cfg.audit.sync_interval,
    );
    let recordings = if cfg.recording.enabled {
        let r = Recordings::from_location(&cfg.recording_location()).context("recording")?;
        r.start();
        r
    } else {
        Recordings::disabled()
    };
    let index_events = announce_recordings(&recordings, &audit);
    let local_sources = read_policy_sources(&cfg)?;
    let pipeline = Pipeline::new(PipelineParts {
        auth: Authenticator::from_config(&cfg.auth)?,
        policies,
        audit: audit.clone(),
        recordings: recordings.clone(),
        metrics: Arc::new(Metrics::new()),
        masker: masker(&cfg),
        resources: cfg.resources.clone(),
    });
    // The control plane's last synced configuration applies before any listener opens.
    let control = match &cfg.control_plane {
        Some(cp_cfg) => {
            let composer = Composer::new(pipeline.clone(), local_sources, pipeline.authenticator());
            let cp = ControlPlane::new(
                cp_cfg.clone(),
                &cfg.data_dir,
                composer.clone(),
                pipeline.clone(),
                cfg.audit.file.clone(),
            )?;
            let task = tokio::spawn(cp.clone().run());
            Some((cp, composer, task))
        }
        None => None,
    };
    let handlers = Handlers {
        postgres: PostgresHandler::new(pipeline.clone(), tls.clone()),
        mysql: MysqlHandler::new(pipeline.clone(), tls),
        ssh: SshHandler::new(pipeline.clone(), &cfg.data_dir)?,
    };

    // Bind everything before reporting ready, so a port conflict fails start-up loudly.
    let shared: SocketAddr = cfg.listen_addr.parse().context("listen_addr")?;
    let mut listeners = vec![(
        TcpListener::bind(shared)
            .await
            .with_context(|| format!("listen_addr {shared}"))?,
        None,
    )];
    for r in &cfg.resources {
        if let Some(port) = r.listen_port {
            let addr = SocketAddr::new(shared.ip(), port);
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("resources[{}].listen_port {addr}", r.name))?;
            listeners.push((l, Some((Arc::<str>::from(r.name.as_str()), r.protocol))));
        }
    }
    let health_state = Arc::new(HealthState {
        pipeline: pipeline.clone(),
        ready: false.into(),
        admin_token: cfg
            .admin
            .as_ref()
            .and_then(|a| gate_core::secret::TokenDigest::from_hex(&a.token_sha256)),
    });
    let health_task = match &cfg.health_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("health_addr {addr}"))?;
            Some(tokio::spawn(health::serve(l, health_state.clone())))
        }
        None => None,
    };

    let threads = cfg.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let shards = Arc::new(
        SessionShards::start(threads, pipeline.metrics()).context("starting session threads")?,
    );
    let mut accept_loops = JoinSet::new();
    for (listener, dedicated) in listeners {
        tracing::info!(addr = %listener.local_addr()?, resource = dedicated.as_ref().map(|d| &*d.0), "listening");
        accept_loops.spawn(accept_loop(
            listener,
            dedicated,
            handlers.clone(),
            shards.clone(),
        ));
    }
    // Grants end on time even without news from the control plane: check every second.
    let grant_enforcer = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                pipeline.enforce_grants().await;
            }
        })
    };
    let reaper = {
        let handlers = handlers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tick.tick().await;
                handlers.postgres.reap_idle();
                handlers.mysql.reap_idle();
            }
        })
    };
    health_state.ready.store(true, Ordering::Relaxed);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "gate-connector ready");

    // Run until SIGTERM/SIGINT; SIGHUP reloads policies.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let reloaded = match &control {
                    Some((_, composer, _)) => read_policy_sources(&cfg)
                        .and_then(|sources| composer.reload_local(sources)),
                    None => PolicySet::load_files(&policy_refs(&cfg))
                        .map(|p| pipeline.replace_policies(p))
                        .map_err(anyhow::Error::from),
                };
                match reloaded {
                    Ok(()) => tracing::info!("policies reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "policy reload failed; keeping the previous policies"),
                }
            }
        }
    }

    // Graceful shutdown: stop accepting, let sessions drain, then end the rest and flush.
    tracing::info!(
        sessions = pipeline.live_sessions(),
        "shutting down: no new connections"
    );
    health_state.ready.store(false, Ordering::Relaxed);
    accept_loops.abort_all();
    reaper.abort();
    grant_enforcer.abort();
    let drain = cfg.shutdown.drain_timeout;
    if tokio::time::timeout(drain, pipeline.sessions_drained())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = pipeline.live_sessions(),
            ?drain,
            "drain deadline passed; ending sessions"
        );
        pipeline.begin_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), pipeline.sessions_drained()).await;
    }
    handlers.postgres.close_idle();
    handlers.mysql.close_idle();
    // The accept loops held the only other references. A session that outlived the drain
    // is dropped with its shard, and finishes (audit, recording) on this runtime.
    accept_loops.shutdown().await;
    match Arc::try_unwrap(shards) {
        Ok(shards) => shards.shutdown().await,
        Err(_) => tracing::warn!("session threads still referenced; leaving them to exit"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), pipeline.sessions_drained()).await;
    recordings.shutdown().await;
    index_events.drained(Duration::from_secs(5)).await;
    audit.close().await;
    drop(audit);
    drop(handlers);
    drop(pipeline);
    if let Some(h) = health_task {
        h.abort();
    }
    if tokio::time::timeout(Duration::from_secs(10), audit_writer.join())
        .await
        .is_err()
    {
        tracing::warn!("audit writer did not stop in time");
    }
    if let Some((cp, _, task)) = control {
        task.abort();
        // Everything is in the audit file now: ship what is left, then deregister.
        cp.shutdown().await;
    }
    tracing::info!("gate-connector stopped");
    Ok(())
}

/// The protocol handlers, shared by every listener.
#[derive(Clone)]
struct Handlers {
    postgres: Arc<PostgresHandler>,
    mysql: Arc<MysqlHandler>,
    ssh: Arc<SshHandler>,
}

/// Accepts connections and serves each on a session shard (see [`gate_pipeline::shards`]).
async fn accept_loop(
    listener: TcpListener,
    dedicated: Option<(Arc<str>, Protocol)>,
    handlers: Handlers,
    shards: Arc<SessionShards>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        let dedicated = dedicated.clone();
        shards.serve_connection(stream, move |stream| async move {
            match dedicated {
                Some((resource, Protocol::Postgres)) => {
                    handlers.postgres.serve(stream, peer, Some(resource)).await
                }
                Some((resource, Protocol::Mysql)) => {
                    handlers.mysql.serve(stream, peer, Some(resource)).await
                }
                Some((resource, Protocol::Ssh)) => {
                    handlers.ssh.serve(stream, peer, Some(resource)).await
                }
                Some((resource, protocol)) => {
                    tracing::warn!(%resource, %protocol, "protocol not served by this connector yet; closing");
                }
                None => dispatch(stream, peer, handlers).await,
            }
        });
    }
}

/// Shared listener: pick the handler by the first bytes; a client that stays silent is
/// waiting for a server greeting, which means MySQL when a MySQL resource exists.
async fn dispatch(stream: TcpStream, peer: SocketAddr, handlers: Handlers) {
    match detect::detect(&stream).await {
        Detected::Postgres => handlers.postgres.serve(stream, peer, None).await,
        Detected::Ssh if handlers.ssh.has_resources() => {
            handlers.ssh.serve(stream, peer, None).await
        }
        Detected::Silent if handlers.mysql.has_resources() => {
            handlers.mysql.serve(stream, peer, None).await
        }
        other => {
            tracing::debug!(%peer, detected = ?other, "unrecognised protocol on the shared listener; closing")
        }
    }
}

/// Every finalised recording becomes an audit event (`kind: recording`, the index in
/// `details`), so it reaches the control plane with the audit's at-least-once delivery.
fn announce_recordings(recordings: &Recordings, audit: &gate_pipeline::AuditLog) -> Arc<InFlight> {
    let in_flight = Arc::new(InFlight::default());
    let (audit, tracker) = (audit.clone(), in_flight.clone());
    recordings.on_finalized(move |index| {
        let Ok(details) = serde_json::to_value(&index) else {
            return;
        };
        let event = gate_core::AuditEvent {
            session_id: Some(index.session_id),
            identity: Some(Arc::new(index.user.clone())),
            resource: Some(index.resource.as_str().into()),
            protocol: Some(index.protocol.clone().into()),
            details,
            ..gate_core::AuditEvent::new(gate_core::AuditKind::Recording)
        };
        let (audit, tracker) = (audit.clone(), tracker.clone());
        tracker.count.fetch_add(1, Ordering::AcqRel);
        // The hook runs on the recording writer's I/O task: hand off, never wait there.
        tokio::spawn(async move {
            audit.emit(event).await;
            tracker.count.fetch_sub(1, Ordering::AcqRel);
            tracker.done.notify_waiters();
        });
    });
    in_flight
}

/// Recording announcements not yet handed to the audit log.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl InFlight {
    async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.done.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}
