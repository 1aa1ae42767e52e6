//! `/health` (process up), `/ready` (listeners up, not draining) and `/metrics` (Prometheus),
//! plus the operator API when `admin.token_sha256` is configured:
//! - `GET /admin/sessions`: open sessions (JSON);
//! - `POST /admin/sessions/{id}/terminate` (optional JSON body `{"reason": "…"}`): ends a
//!   session; its user is told why where the protocol can say it.
//!
//! Admin requests need `Authorization: Bearer <token>`; the token is compared by its SHA-256
//! in constant time and never logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use gate_pipeline::Pipeline;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub struct HealthState {
    pub pipeline: Arc<Pipeline>,
    pub ready: AtomicBool,
    /// The operator token's digest; `None` disables `/admin`.
    pub admin_token: Option<gate_core::secret::TokenDigest>,
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

pub async fn serve(listener: TcpListener, state: Arc<HealthState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    state: Arc<HealthState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().starts_with("/admin/") {
        let (status, body) = admin(req, &state).await;
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("static response parts are valid"));
    }
    let (status, content_type, body) = match req.uri().path() {
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/ready" if state.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.pipeline.metrics().encode(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid"))
}

/// The operator API; `(status, JSON body)`.
async fn admin(req: Request<Incoming>, state: &HealthState) -> (StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use serde_json::json;
    let Some(digest) = &state.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": "the admin API is disabled (set admin.token_sha256)"}),
        );
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !digest.matches(presented) {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}),
        );
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (hyper::Method::GET, ["admin", "sessions"]) => {
            (StatusCode::OK, json!(state.pipeline.live_session_list()))
        }
        (hyper::Method::POST, ["admin", "sessions", id, "terminate"]) => {
            let Ok(id) = id.parse::<uuid::Uuid>() else {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "not a session id"}),
                );
            };
            let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"error": "body too large"}),
                    );
                }
            };
            let reason = if body.is_empty() {
                "ended by an administrator".to_string()
            } else {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => v["reason"]
                        .as_str()
                        .unwrap_or("ended by an administrator")
                        .to_string(),
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            json!({"error": format!("invalid JSON: {e}")}),
                        );
                    }
                }
            };
            if state
                .pipeline
                .terminate_session(id, &reason, "connector admin API")
                .await
            {
                (StatusCode::OK, json!({"terminated": id, "reason": reason}))
            } else {
                (
                    StatusCode::NOT_FOUND,
                    json!({"error": "no open session with this id"}),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}
