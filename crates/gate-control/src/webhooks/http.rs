//! `/api/v1/webhooks`: thin HTTP adapters over [`crate::service::webhooks`], merged into
//! the API router by `http::api`.
//!
//! | route | operation |
//! | --- | --- |
//! | `GET, POST /api/v1/webhooks` | list endpoints; create one (returns its `secret` once) |
//! | `GET, PATCH, DELETE /api/v1/webhooks/{id}` | one endpoint; change `url`, `description`, `events`, `disabled`; delete |
//! | `POST /api/v1/webhooks/{id}/rotate-secret` | new secret (returned once); body `{"grace_period": "24h"}` optional |
//! | `GET /api/v1/webhooks/{id}/deliveries?status=pending\|delivered\|dead&limit=` | deliveries, newest first |
//! | `GET /api/v1/webhooks/{id}/deliveries/{delivery_id}` | one delivery |
//! | `POST /api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver` | send again (same `webhook-id`) |

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::error::{ServiceError, ServiceResult};
use crate::http::{ApiJson, ApiQuery};
use crate::service::parse_id;
use crate::service::webhooks as svc;
use crate::{Caller, Control};

type Ctl = State<Arc<Control>>;

/// The webhook routes, relative to `/api/v1`.
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", get(get_one).patch(update).delete(remove))
        .route("/webhooks/{id}/rotate-secret", post(rotate))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route("/webhooks/{id}/deliveries/{delivery}", get(delivery))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(redeliver),
        )
}

fn endpoint_id(s: &str) -> ServiceResult<uuid::Uuid> {
    parse_id("webhook endpoint id", s)
}

async fn create(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(input): ApiJson<gate_store::WebhookEndpointInput>,
) -> ServiceResult<Response> {
    let created = svc::create_webhook_endpoint(&ctl, &caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn list(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = svc::list_webhook_endpoints(&ctl, &caller).await?;
    Ok(axum::Json(json!({ "webhooks": list })).into_response())
}

async fn get_one(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    Ok(axum::Json(svc::get_webhook_endpoint(&ctl, &caller, id).await?).into_response())
}

async fn update(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(update): ApiJson<gate_store::WebhookEndpointUpdate>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    Ok(axum::Json(svc::update_webhook_endpoint(&ctl, &caller, id, update).await?).into_response())
}

async fn remove(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    svc::delete_webhook_endpoint(&ctl, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body is optional: an empty one rotates with the default grace period.
async fn rotate(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    let rotation: svc::Rotation = if body.iter().all(u8::is_ascii_whitespace) {
        svc::Rotation::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ServiceError::invalid(e.to_string()))?
    };
    Ok(axum::Json(svc::rotate_webhook_secret(&ctl, &caller, id, rotation).await?).into_response())
}

async fn deliveries(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(filter): ApiQuery<svc::DeliveryFilter>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    let list = svc::list_webhook_deliveries(&ctl, &caller, id, filter).await?;
    Ok(axum::Json(json!({ "deliveries": list })).into_response())
}

async fn delivery(
    State(ctl): Ctl,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    let delivery = parse_id("delivery id", &delivery)?;
    Ok(axum::Json(svc::get_webhook_delivery(&ctl, &caller, id, delivery).await?).into_response())
}

async fn redeliver(
    State(ctl): Ctl,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> ServiceResult<Response> {
    let id = endpoint_id(&id)?;
    let delivery = parse_id("delivery id", &delivery)?;
    let d = svc::redeliver_webhook_delivery(&ctl, &caller, id, delivery).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(d)).into_response())
}
