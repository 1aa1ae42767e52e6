//! One listener, three surfaces: HTTP (`/health`, `/metrics`, `/api/v1`, `/mcp`), gRPC
//! (`gate.v1.*`) and, through [`Surfaces::with_http_routes`], whatever else is added later
//! (the web UI).
//!
//! Every connection is served by hyper's auto builder (HTTP/1.1, or HTTP/2 by prior
//! knowledge or ALPN), and every request is dispatched by its `content-type`: anything
//! starting with `application/grpc` goes to the tonic services, the rest to the axum
//! router. Splitting on the content type rather than on paths means a gRPC client that
//! calls an unknown method gets a gRPC `Unimplemented`, and an HTTP client never sees gRPC
//! framing. With `tls` configured the listener speaks TLS (rustls) with ALPN `h2` and
//! `http/1.1`; gRPC clients negotiate `h2`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::config::ControlConfig;
use crate::metrics::area_of;
use crate::{Control, ControlOptions};

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open requests before closing connections anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The routers behind the listener.
#[derive(Clone)]
pub struct Surfaces {
    http: Router,
    grpc: Router,
}

impl Surfaces {
    /// The HTTP API and both gRPC services over `ctl`.
    pub fn new(ctl: Arc<Control>) -> Surfaces {
        Surfaces {
            http: crate::http::router(ctl.clone()),
            grpc: crate::grpc::router(ctl),
        }
    }

    /// Adds HTTP routes (e.g. `/mcp`, the UI at `/`) next to the built-in ones.
    pub fn with_http_routes(mut self, routes: Router) -> Surfaces {
        self.http = self.http.merge(routes);
        self
    }

    fn is_grpc(req: &Request<Incoming>) -> bool {
        req.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    }

    /// Routes one request and records its area, surface, code and latency.
    async fn dispatch(
        &self,
        ctl: &Control,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let area = area_of(req.uri().path());
        let grpc = Self::is_grpc(&req);
        let req = req.map(Body::new);
        let router = if grpc { &self.grpc } else { &self.http };
        let response = match router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if area != "system" {
            // A unary gRPC error is a trailers-only response: its status is in the headers.
            // Successful calls carry `grpc-status: 0` in trailers, which are not seen here.
            let code = if grpc {
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string()
            } else {
                response.status().as_u16().to_string()
            };
            let surface = if grpc { "grpc" } else { "http" };
            ctl.metrics()
                .observe(area, surface, &code, start.elapsed().as_secs_f64());
        }
        Ok(response)
    }
}

/// How the control plane is started (besides its config file).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Allow an empty `api_key`: requests without a key then act as the system key, each
    /// one logged at warn. For local experiments only.
    pub insecure: bool,
}

/// A running control plane. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    addr: SocketAddr,
    ctl: Arc<Control>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The audit retention job, when `audit.retention` is set.
    retention: Option<JoinHandle<()>>,
    /// The access-request expiry sweep.
    access_expiry: JoinHandle<()>,
    /// The signed-webhook delivery worker.
    webhooks: JoinHandle<()>,
    /// The Slack approvals worker, when `slack` is configured.
    slack: Option<JoinHandle<()>>,
    /// Hands published events to the integrations.
    events: crate::events::Dispatch,
}

impl Running {
    /// The bound address (useful with `listen_addr: 127.0.0.1:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.ctl
    }

    /// Stops accepting, ends config watches and the retention job, drains open requests
    /// (up to a timeout) and closes the store.
    pub async fn shutdown(self) {
        self.ctl.begin_shutdown();
        self.stop.send_replace(true);
        let _ = self.task.await;
        // A purge in progress finishes first: the store must not close under it.
        let _ = self.access_expiry.await;
        // Nothing publishes any more: what is queued reaches the integrations (webhook
        // deliveries are stored, and sent after the next start if the worker has stopped).
        self.events.finish().await;
        // Webhook attempts in flight finish (or are abandoned after a short drain).
        let _ = self.webhooks.await;
        if let Some(slack) = self.slack {
            let _ = slack.await;
        }
        if let Some(retention) = self.retention {
            let _ = retention.await;
        }
        self.ctl.store().close().await;
    }

    /// Waits until the server stops by itself (it only does on shutdown).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Refuses an empty system key unless running insecure.
pub fn check_api_key(cfg: &ControlConfig, options: &StartOptions) -> anyhow::Result<()> {
    if cfg.api_key.is_empty() && !options.insecure {
        anyhow::bail!(
            "api_key is empty: set it (e.g. api_key: \"${{GATE_API_KEY}}\"), or run with --insecure \
             (GATE_INSECURE=true) to accept unauthenticated requests"
        );
    }
    if cfg.api_key.is_empty() {
        tracing::warn!(
            "running INSECURE: requests without a key act as the system key; every such request is logged"
        );
    }
    Ok(())
}

fn tls_acceptor(cfg: &ControlConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(tls) = cfg.tls.as_ref().filter(|t| t.enabled) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .with_context(|| format!("tls.cert_file {}", tls.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert_file {}", tls.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("tls.key_file {}", tls.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Connects the store (applying migrations), binds the listener and serves until
/// [`Running::shutdown`].
pub async fn start(cfg: &ControlConfig, options: StartOptions) -> anyhow::Result<Running> {
    start_with(cfg, options, |_| Router::new()).await
}

/// Like [`start`], with extra HTTP routes built over the shared [`Control`].
pub async fn start_with(
    cfg: &ControlConfig,
    options: StartOptions,
    extra_routes: impl FnOnce(Arc<Control>) -> Router,
) -> anyhow::Result<Running> {
    check_api_key(cfg, &options)?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = tls_acceptor(cfg)?;
    let store_options = gate_store::StoreOptions {
        url: cfg.database.dsn.expose().to_string(),
        max_open_conns: cfg.database.max_open_conns,
        min_conns: cfg.database.min_conns,
        migrations_path: cfg.database.migrations_path.clone(),
        ..gate_store::StoreOptions::new(String::new())
    };
    // The DSN may hold a password: errors name the backend, never the URL.
    let store = gate_store::Store::connect(&store_options)
        .await
        .context("cannot open the database (database.dsn)")?;
    let ctl = Control::new(
        store,
        ControlOptions {
            system_key: cfg.api_key.expose().to_string(),
            insecure: options.insecure,
            ..ControlOptions::default()
        },
    );
    if let Some(location) = cfg.recording_location() {
        match gate_recording::open_store(&location) {
            Ok(store) => ctl.set_recording_store(store),
            Err(e) => {
                tracing::error!(error = %e, "recording store unavailable; /api/v1/recordings/{{id}}/content will fail")
            }
        }
    }
    // Before the listener: an event published by the first request is queued already.
    let webhooks = crate::webhooks::start(ctl.clone(), &cfg.delivery)?;
    // Slack authenticates its requests by signature: its route is not behind the API keys.
    let slack = crate::slack::start(ctl.clone(), cfg.slack.as_ref())?;
    let surfaces = Surfaces::new(ctl.clone())
        .with_http_routes(crate::mcp::router(ctl.clone()))
        .with_http_routes(slack.routes)
        .with_http_routes(extra_routes(ctl.clone()));
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        backend = ?ctl.store().backend(),
        "gate-control listening (HTTP /api/v1, gRPC gate.v1)"
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(listener, tls, surfaces, ctl.clone(), stop_rx));
    let retention = cfg.audit.retention.map(|retention| {
        crate::retention::spawn(ctl.clone(), retention, cfg.audit.purge_interval())
    });
    let access_expiry = crate::service::access_requests::spawn_expiry(ctl.clone());
    let events = crate::events::spawn_dispatch(ctl.clone());
    Ok(Running {
        addr,
        ctl,
        stop,
        task,
        retention,
        access_expiry,
        webhooks,
        slack: slack.worker,
        events,
    })
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    surfaces: Surfaces,
    ctl: Arc<Control>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let surfaces = surfaces.clone();
        let ctl = ctl.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let surfaces = surfaces.clone();
                let ctl = ctl.clone();
                async move { surfaces.dispatch(&ctl, req).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: connections still open after the drain timeout");
    }
}
