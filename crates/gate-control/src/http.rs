//! The HTTP surface: `/api/v1/*` (JSON), plus `/health` and `/metrics`.
//!
//! Handlers authenticate (the [`Caller`] extractor reads `Authorization: Bearer` and
//! `X-Org-ID`), call one service function and serialize its result; errors are
//! `{"error": {"code", "message"}}` with the status from `error.rs`. Bodies and query
//! strings that do not parse are `invalid_argument`, like everything else the caller got
//! wrong.
//!
//! | route | operation |
//! | --- | --- |
//! | `GET /api/v1/whoami` | who the key is |
//! | `GET, POST /api/v1/organizations`; `GET, PATCH, DELETE …/{id}` | organizations |
//! | `GET, POST /api/v1/api-keys`; `POST …/{id}/revoke` | API keys |
//! | `GET, POST /api/v1/resources`; `GET, PUT, DELETE …/{id}` | resources |
//! | `GET, POST /api/v1/policies`; `GET, PATCH, DELETE …/{id}`; `GET …/{id}/versions`; `PUT …/{id}/state`; `POST /api/v1/policies/simulate` | policies |
//! | `GET, POST /api/v1/identities`; `GET, PUT, DELETE …/{id}` | identities |
//! | `GET, POST /api/v1/groups`; `GET, PATCH, DELETE …/{id}` | groups |
//! | `GET /api/v1/connectors`; `GET, DELETE …/{id}` | connectors |
//! | `GET, POST /api/v1/registration-tokens`; `DELETE …/{id}` | registration tokens |
//! | `GET /api/v1/audit`; `GET /api/v1/audit/export?format=json\|csv` | audit |
//! | `GET, POST /api/v1/access-requests`; `GET …/{id}`; `POST …/{id}/approve\|deny\|cancel\|revoke` | access requests |
//! | `GET, PUT /api/v1/approval-rules` | approval rules |
//! | `GET, POST /api/v1/webhooks`; `GET, PATCH, DELETE …/{id}`; `POST …/{id}/rotate-secret`; `GET …/{id}/deliveries[/{delivery_id}]`; `POST …/{id}/deliveries/{delivery_id}/redeliver` | signed webhooks (`webhooks::http`) |
//!
//! Access requests name the acting identity in the body (`requester` on create,
//! `approver` on decisions — the requester on cancel): API keys are not identities yet, so
//! an editor key vouches for the identity it names. `GET /api/v1/access-requests` takes
//! `mine=<identity>`, `status=`, `resource=` and `to_approve=<identity>`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ServiceError, ServiceResult};
use crate::service::{
    access_requests, api_keys, audit, connectors, groups, identities, orgs, parse_id, policies,
    recordings, resources,
};
use crate::{Caller, Control};

type Ctl = State<Arc<Control>>;

/// `/health`, `/metrics` and `/api/v1`.
pub fn router(ctl: Arc<Control>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api())
        .with_state(ctl)
}

fn api() -> Router<Arc<Control>> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/organizations", get(list_orgs).post(create_org))
        .route(
            "/organizations/{id}",
            get(get_org).patch(rename_org).delete(delete_org),
        )
        .route("/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api-keys/{id}/revoke", post(revoke_api_key))
        .route("/resources", get(list_resources).post(create_resource))
        .route(
            "/resources/{id}",
            get(get_resource)
                .put(update_resource)
                .delete(delete_resource),
        )
        .route("/policies", get(list_policies).post(create_policy))
        .route("/policies/simulate", post(simulate_policy))
        .route(
            "/policies/{id}",
            get(get_policy).patch(update_policy).delete(delete_policy),
        )
        .route("/policies/{id}/versions", get(list_policy_versions))
        .route("/policies/{id}/state", put(set_policy_state))
        .route("/identities", get(list_identities).post(create_identity))
        .route(
            "/identities/{id}",
            get(get_identity)
                .put(update_identity)
                .delete(delete_identity),
        )
        .route("/groups", get(list_groups).post(create_group))
        .route(
            "/groups/{id}",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route("/connectors", get(list_connectors))
        .route(
            "/connectors/{id}",
            get(get_connector).delete(delete_connector),
        )
        .route(
            "/registration-tokens",
            get(list_registration_tokens).post(create_registration_token),
        )
        .route(
            "/registration-tokens/{id}",
            delete(delete_registration_token),
        )
        .route("/audit", get(query_audit))
        .route("/recordings", get(list_recordings))
        .route("/recordings/{id}", get(get_recording))
        .route("/recordings/{id}/content", get(recording_content))
        .route("/audit/export", get(export_audit))
        .route(
            "/access-requests",
            get(list_access_requests).post(create_access_request),
        )
        .route("/access-requests/{id}", get(get_access_request))
        .route("/access-requests/{id}/{verb}", post(decide_access_request))
        .route(
            "/approval-rules",
            get(get_approval_rules).put(set_approval_rules),
        )
        .merge(crate::webhooks::http::routes())
        .fallback(|| async { ServiceError::NotFound("no such API route".into()) })
}

async fn metrics(State(ctl): Ctl) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctl.metrics().encode(),
    )
        .into_response()
}

impl FromRequestParts<Arc<Control>> for Caller {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctl: &Arc<Control>,
    ) -> Result<Self, Self::Rejection> {
        let header_str = |name: &str| -> ServiceResult<Option<&str>> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(Some)
                    .map_err(|_| ServiceError::unauthenticated(format!("{name} is not text"))),
            }
        };
        let authorization = header_str("authorization")?;
        let org = header_str("x-org-id")?;
        let what = format!("HTTP {} {}", parts.method, parts.uri.path());
        crate::auth::authenticate(ctl, authorization, org, &what).await
    }
}

/// A JSON body whose rejection is an `invalid_argument` error like any other.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(|e| ServiceError::invalid(e.body_text()))
    }
}

/// A query string whose rejection is an `invalid_argument` error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| ServiceError::invalid(e.body_text()))
    }
}

fn ok<T: serde::Serialize>(v: T) -> Response {
    axum::Json(v).into_response()
}

fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn org_id(s: &str) -> ServiceResult<gate_store::OrgId> {
    s.trim()
        .parse()
        .map_err(|_| ServiceError::invalid("organization id is not a valid id"))
}

// --- organizations -----------------------------------------------------------------------

async fn whoami(caller: Caller) -> Response {
    ok(orgs::whoami(&caller))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

async fn create_org(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(b): ApiJson<NameBody>,
) -> ServiceResult<Response> {
    Ok(created(orgs::create_org(&ctl, &caller, &b.name).await?))
}

async fn list_orgs(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = orgs::list_orgs(&ctl, &caller).await?;
    Ok(ok(json!({ "organizations": list })))
}

async fn get_org(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    Ok(ok(orgs::get_org(&ctl, &caller, org_id(&id)?).await?))
}

async fn rename_org(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<NameBody>,
) -> ServiceResult<Response> {
    Ok(ok(
        orgs::rename_org(&ctl, &caller, org_id(&id)?, &b.name).await?
    ))
}

async fn delete_org(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    orgs::delete_org(&ctl, &caller, org_id(&id)?).await?;
    Ok(no_content())
}

// --- API keys ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApiKey {
    name: String,
    role: String,
}

async fn create_api_key(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(b): ApiJson<NewApiKey>,
) -> ServiceResult<Response> {
    Ok(created(
        api_keys::create_api_key(&ctl, &caller, &b.name, &b.role).await?,
    ))
}

async fn list_api_keys(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = api_keys::list_api_keys(&ctl, &caller).await?;
    Ok(ok(json!({ "api_keys": list })))
}

async fn revoke_api_key(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("api key id", &id)?;
    Ok(ok(api_keys::revoke_api_key(&ctl, &caller, id).await?))
}

// --- resources ---------------------------------------------------------------------------

async fn create_resource(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(input): ApiJson<gate_store::ResourceInput>,
) -> ServiceResult<Response> {
    Ok(created(
        resources::create_resource(&ctl, &caller, input).await?,
    ))
}

async fn list_resources(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = resources::list_resources(&ctl, &caller).await?;
    Ok(ok(json!({ "resources": list })))
}

async fn get_resource(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("resource id", &id)?;
    Ok(ok(resources::get_resource(&ctl, &caller, id).await?))
}

async fn update_resource(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<gate_store::ResourceInput>,
) -> ServiceResult<Response> {
    let id = parse_id("resource id", &id)?;
    Ok(ok(
        resources::update_resource(&ctl, &caller, id, input).await?
    ))
}

async fn delete_resource(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("resource id", &id)?;
    resources::delete_resource(&ctl, &caller, id).await?;
    Ok(no_content())
}

// --- policies ----------------------------------------------------------------------------

async fn create_policy(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(new): ApiJson<policies::NewPolicy>,
) -> ServiceResult<Response> {
    Ok(created(policies::create_policy(&ctl, &caller, new).await?))
}

async fn list_policies(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = policies::list_policies(&ctl, &caller).await?;
    Ok(ok(json!({ "policies": list })))
}

async fn get_policy(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("policy id", &id)?;
    Ok(ok(policies::get_policy(&ctl, &caller, id).await?))
}

/// Every field optional; unknown fields are refused so a typo (`regoo`) is not a silent
/// no-op update.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    stages: Option<Vec<String>>,
    #[serde(default)]
    targets: Option<Vec<String>>,
    #[serde(default)]
    rego: Option<String>,
}

async fn update_policy(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<PolicyPatch>,
) -> ServiceResult<Response> {
    let id = parse_id("policy id", &id)?;
    let update = gate_store::PolicyUpdate {
        name: p.name,
        description: p.description,
        stages: p.stages,
        targets: p.targets,
        rego: p.rego,
    };
    Ok(ok(policies::update_policy(&ctl, &caller, id, update).await?))
}

async fn delete_policy(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("policy id", &id)?;
    policies::delete_policy(&ctl, &caller, id).await?;
    Ok(no_content())
}

async fn list_policy_versions(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("policy id", &id)?;
    let versions = policies::list_policy_versions(&ctl, &caller, id).await?;
    Ok(ok(json!({ "versions": versions })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
}

async fn set_policy_state(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<StateBody>,
) -> ServiceResult<Response> {
    let id = parse_id("policy id", &id)?;
    Ok(ok(
        policies::set_policy_state(&ctl, &caller, id, &b.state).await?
    ))
}

async fn simulate_policy(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(sim): ApiJson<policies::Simulation>,
) -> ServiceResult<Response> {
    Ok(ok(policies::simulate_policy(&ctl, &caller, sim).await?))
}

// --- identities and groups ---------------------------------------------------------------

async fn create_identity(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(input): ApiJson<gate_store::IdentityInput>,
) -> ServiceResult<Response> {
    Ok(created(
        identities::create_identity(&ctl, &caller, input).await?,
    ))
}

async fn list_identities(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = identities::list_identities(&ctl, &caller).await?;
    Ok(ok(json!({ "identities": list })))
}

async fn get_identity(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("identity id", &id)?;
    Ok(ok(identities::get_identity(&ctl, &caller, id).await?))
}

async fn update_identity(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<gate_store::IdentityInput>,
) -> ServiceResult<Response> {
    let id = parse_id("identity id", &id)?;
    Ok(ok(
        identities::update_identity(&ctl, &caller, id, input).await?
    ))
}

async fn delete_identity(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("identity id", &id)?;
    identities::delete_identity(&ctl, &caller, id).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

async fn create_group(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(b): ApiJson<NewGroup>,
) -> ServiceResult<Response> {
    Ok(created(
        groups::create_group(&ctl, &caller, &b.name, &b.description).await?,
    ))
}

async fn list_groups(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = groups::list_groups(&ctl, &caller).await?;
    Ok(ok(json!({ "groups": list })))
}

async fn get_group(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("group id", &id)?;
    Ok(ok(groups::get_group(&ctl, &caller, id).await?))
}

async fn update_group(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<GroupPatch>,
) -> ServiceResult<Response> {
    let id = parse_id("group id", &id)?;
    Ok(ok(groups::update_group(
        &ctl,
        &caller,
        id,
        b.name.as_deref(),
        b.description.as_deref(),
    )
    .await?))
}

async fn delete_group(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("group id", &id)?;
    groups::delete_group(&ctl, &caller, id).await?;
    Ok(no_content())
}

// --- connectors --------------------------------------------------------------------------

async fn list_connectors(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = connectors::list_connectors(&ctl, &caller).await?;
    Ok(ok(json!({ "connectors": list })))
}

async fn get_connector(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("connector id", &id)?;
    Ok(ok(connectors::get_connector(&ctl, &caller, id).await?))
}

async fn delete_connector(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("connector id", &id)?;
    connectors::delete_connector(&ctl, &caller, id).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRegistrationToken {
    name: String,
    /// Lifetime in seconds; absent or 0 means the default (one hour).
    #[serde(default)]
    ttl_seconds: u64,
}

async fn create_registration_token(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(b): ApiJson<NewRegistrationToken>,
) -> ServiceResult<Response> {
    let ttl = (b.ttl_seconds > 0).then(|| Duration::from_secs(b.ttl_seconds));
    Ok(created(
        connectors::create_registration_token(&ctl, &caller, &b.name, ttl).await?,
    ))
}

async fn delete_registration_token(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("registration token id", &id)?;
    connectors::delete_registration_token(&ctl, &caller, id).await?;
    Ok(no_content())
}

async fn list_registration_tokens(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = connectors::list_registration_tokens(&ctl, &caller).await?;
    Ok(ok(json!({ "tokens": list })))
}

// --- audit -------------------------------------------------------------------------------

async fn query_audit(
    State(ctl): Ctl,
    caller: Caller,
    ApiQuery(filter): ApiQuery<audit::AuditFilter>,
) -> ServiceResult<Response> {
    Ok(ok(audit::query_audit(&ctl, &caller, filter).await?))
}

/// `format` is read on its own: serde's `flatten` would hand the filter's numbers to it as
/// strings and refuse them.
#[derive(Deserialize)]
struct ExportParams {
    #[serde(default)]
    format: String,
}

/// Streams the export; a failure after the first byte can only cut the body short (HTTP
/// has no way to change the status then), which clients see as an incomplete transfer.
async fn export_audit(
    State(ctl): Ctl,
    caller: Caller,
    ApiQuery(p): ApiQuery<ExportParams>,
    ApiQuery(filter): ApiQuery<audit::AuditFilter>,
) -> ServiceResult<Response> {
    let format = audit::ExportFormat::parse(&p.format)?;
    let stream = audit::export_audit(ctl.clone(), &caller, filter, format).await?;
    let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
    let ext = match format {
        audit::ExportFormat::Json => "jsonl",
        audit::ExportFormat::Csv => "csv",
    };
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"audit.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

async fn list_recordings(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    let list = recordings::list_recordings(&ctl, &caller).await?;
    Ok(ok(json!({ "recordings": list })))
}

async fn get_recording(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    Ok(ok(recordings::get_recording(&ctl, &caller, &id).await?))
}

/// The bytes as stored: asciicast v2 for terminals, JSON Lines for query sessions.
async fn recording_content(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let (info, bytes) = recordings::recording_content(&ctl, &caller, &id).await?;
    let (content_type, ext) = if info.index.kind == gate_recording::RecordingKind::Terminal {
        ("application/x-asciicast", "cast")
    } else {
        ("application/jsonl", "jsonl")
    };
    Ok(Response::builder()
        .status(axum::http::StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.{ext}\"", info.index.recording_id),
        )
        .header("x-content-sha256", info.index.sha256.clone())
        .body(axum::body::Body::from(bytes))
        .unwrap_or_else(|_| Response::new(axum::body::Body::empty())))
}

// --- access requests ---------------------------------------------------------------------

async fn create_access_request(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(input): ApiJson<gate_store::AccessRequestInput>,
) -> ServiceResult<Response> {
    Ok(created(
        access_requests::create_access_request(&ctl, &caller, input).await?,
    ))
}

async fn list_access_requests(
    State(ctl): Ctl,
    caller: Caller,
    ApiQuery(filter): ApiQuery<access_requests::ListFilter>,
) -> ServiceResult<Response> {
    let list = access_requests::list_access_requests(&ctl, &caller, filter).await?;
    Ok(ok(json!({ "access_requests": list })))
}

async fn get_access_request(
    State(ctl): Ctl,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Response> {
    let id = parse_id("access request id", &id)?;
    Ok(ok(
        access_requests::get_access_request(&ctl, &caller, id).await?
    ))
}

async fn decide_access_request(
    State(ctl): Ctl,
    caller: Caller,
    Path((id, verb)): Path<(String, String)>,
    ApiJson(d): ApiJson<access_requests::Decision>,
) -> ServiceResult<Response> {
    let id = parse_id("access request id", &id)?;
    let r = match verb.as_str() {
        "approve" => access_requests::approve_access_request(&ctl, &caller, id, d).await?,
        "deny" => access_requests::deny_access_request(&ctl, &caller, id, d).await?,
        "cancel" => access_requests::cancel_access_request(&ctl, &caller, id, d).await?,
        "revoke" => access_requests::revoke_access_request(&ctl, &caller, id, d).await?,
        _ => return Err(ServiceError::NotFound("no such API route".into())),
    };
    Ok(ok(r))
}

async fn get_approval_rules(State(ctl): Ctl, caller: Caller) -> ServiceResult<Response> {
    Ok(ok(access_requests::get_approval_rules(&ctl, &caller).await?))
}

async fn set_approval_rules(
    State(ctl): Ctl,
    caller: Caller,
    ApiJson(rules): ApiJson<gate_store::ApprovalRules>,
) -> ServiceResult<Response> {
    Ok(ok(access_requests::set_approval_rules(
        &ctl, &caller, rules,
    )
    .await?))
}
