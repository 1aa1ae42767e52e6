//! The read-only MCP endpoint: `POST /mcp`, Model Context Protocol over Streamable HTTP.
//!
//! An assistant (Claude, an IDE agent, …) connects here to look at an organization's
//! Gate setup: its resources, policies, connectors, access requests and audit log, and to
//! try a policy against an input. Nothing it can call changes anything.
//!
//! # Why by hand
//!
//! The protocol surface needed for tools only is small — `initialize`, `ping`,
//! `tools/list`, `tools/call` and a few notifications, JSON-RPC 2.0 in a POST body — and
//! writing it here keeps it inside the same axum router, the same [`Caller`] extraction and
//! the same metrics as `/api/v1`, with no second HTTP stack (rmcp's server transport has its
//! own session manager, host allow-list and SSE machinery we would have to configure around).
//!
//! # Transport
//!
//! - `POST /mcp` with one JSON-RPC message (or a batch, as the 2025-03-26 revision allowed).
//!   Requests are answered with `application/json` — the spec lets a server answer a client
//!   that accepts `application/json, text/event-stream` with plain JSON, and none of these
//!   tools streams. Notifications and client responses get `202 Accepted` with no body.
//! - `GET /mcp` and `DELETE /mcp` answer `405`: the server never sends unsolicited messages
//!   and keeps no sessions, so there is no stream to open and no session to end. It issues
//!   no `Mcp-Session-Id`; every request stands alone (stateless), authenticated by its own
//!   bearer key, so `tools/*` work even without a prior `initialize` on the same connection.
//! - Protocol versions 2024-11-05 through 2025-11-25 are accepted; `initialize` answers the
//!   client's version when it is one of them, the newest otherwise (the client then decides
//!   whether it can go on). A request carrying an unsupported `MCP-Protocol-Version` header
//!   is refused with `400`, except the negotiation calls themselves (`initialize`, and
//!   `server/discover`, which is answered "method not found" so newer clients fall back to
//!   `initialize`).
//! - A browser request from another origin (an `Origin` header that does not match `Host`)
//!   is refused, so a web page cannot drive the endpoint with a user's ambient access.
//!
//! # Auth and org scoping
//!
//! Exactly as `/api/v1`: `Authorization: Bearer` with the system key plus `X-Org-ID`, or an
//! org API key. Every role that can read (`readonly`, `editor`, `admin`, the system key) may
//! use the tools; `connector` keys and connector credentials may not. The check happens for
//! every POST, before the body is looked at: unauthenticated → `401` (with
//! `WWW-Authenticate: Bearer`), refused → `403`, each with a JSON-RPC error body. Each tool
//! then calls the same service function the HTTP and gRPC surfaces call, so the org
//! scoping and role rules cannot differ.
//!
//! # Errors
//!
//! Malformed JSON → `-32700`; not a JSON-RPC message → `-32600`; unknown method → `-32601`;
//! bad `params` or an unknown tool → `-32602`. A tool that ran but failed — bad arguments,
//! an unknown policy id, a store outage — is a normal result with `isError: true` and the
//! reason in its text, as MCP asks, so the model can read it and correct itself.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::auth::Access;
use crate::error::ServiceError;
use crate::service::{access_requests, audit, connectors, policies, resources};
use crate::{Caller, Control};

/// Protocol revisions this endpoint speaks, newest first. They differ in features this
/// server does not use (sampling, elicitation, tasks, …), so one implementation serves all.
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 4] =
    ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The name in `serverInfo`.
pub const SERVER_NAME: &str = "gate-control";

/// `query_audit` returns at most this many events per call: a tool result goes into a
/// model's context, where ten thousand events (the API's page limit) would not fit.
/// Larger reads page with `cursor`.
pub const MAX_AUDIT_LIMIT: u32 = 1000;

/// More messages than this in one batch are refused: each may run a policy evaluation,
/// and one HTTP request should not hold the server for long.
const MAX_BATCH: usize = 32;

// JSON-RPC 2.0 error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// Server-defined errors (the -32000..-32099 range) for refusals before dispatch.
const UNAUTHENTICATED: i64 = -32001;
const FORBIDDEN: i64 = -32003;
const SERVER_ERROR: i64 = -32000;

/// `/mcp` over the shared control state; merged next to `/api/v1` by the server.
pub fn router(ctl: Arc<Control>) -> Router {
    Router::new()
        .route(
            "/mcp",
            post(handle_post).get(not_allowed).delete(not_allowed),
        )
        .with_state(ctl)
}

async fn not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static("POST"))],
        axum::Json(rpc_error(
            Value::Null,
            SERVER_ERROR,
            "this MCP endpoint is stateless: only POST is supported (no SSE stream, no sessions)",
        )),
    )
        .into_response()
}

/// A JSON-RPC error response object.
fn rpc_error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn rpc_result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An HTTP-level refusal with a JSON-RPC error body (no id: the message was not read).
fn refuse(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    let mut response = (status, axum::Json(rpc_error(Value::Null, code, message))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gate-control\""),
        );
    }
    response
}

/// A service error met before dispatch (authentication, role, org header).
fn refuse_service(e: &ServiceError) -> Response {
    let code = match e {
        ServiceError::Unauthenticated(_) => UNAUTHENTICATED,
        ServiceError::PermissionDenied(_) => FORBIDDEN,
        ServiceError::InvalidArgument(_) => INVALID_REQUEST,
        _ => SERVER_ERROR,
    };
    refuse(e.http_status(), code, e.message())
}

/// `Origin` must name the same authority as `Host` when present (non-browser clients send
/// none). Bearer keys already keep other sites out in normal operation; this also covers
/// `--insecure`, where a request without a key acts as the system key.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| authority.trim_end_matches('/').eq_ignore_ascii_case(host))
}

/// The client must accept JSON (or anything); a client that only takes an event stream
/// cannot be served by this endpoint.
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
            || media == "*/*"
            || media.eq_ignore_ascii_case("application/*")
    })
}

/// Whether a message is one of the calls that negotiate the protocol version, which
/// cannot be refused for naming a version this server does not speak.
fn is_negotiation(message: &Value) -> bool {
    matches!(
        message.get("method").and_then(Value::as_str),
        Some("initialize" | "server/discover")
    )
}

async fn handle_post(
    State(ctl): State<Arc<Control>>,
    caller: Result<Caller, ServiceError>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "cross-origin requests to /mcp are not allowed",
        );
    }
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return refuse_service(&e),
    };
    // The connector role and connector credentials stop here; reading roles go on.
    if let Err(e) = caller.require(Access::Read) {
        return refuse_service(&e);
    }
    if !accepts_json(&headers) {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "this endpoint answers with application/json: include it in Accept",
        );
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                format!("parse error: {e}"),
            );
        }
    };
    let (messages, batch) = match parsed {
        Value::Array(items) if items.is_empty() => {
            return refuse(StatusCode::BAD_REQUEST, INVALID_REQUEST, "empty batch");
        }
        Value::Array(items) if items.len() > MAX_BATCH => {
            return refuse(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                format!("a batch may hold at most {MAX_BATCH} messages"),
            );
        }
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    let version = headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().unwrap_or("").trim().to_string());
    if let Some(v) = &version
        && !SUPPORTED_PROTOCOL_VERSIONS.contains(&v.as_str())
        && !messages.iter().all(is_negotiation)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            format!(
                "unsupported MCP-Protocol-Version {v:?} (supported: {})",
                SUPPORTED_PROTOCOL_VERSIONS.join(", ")
            ),
        );
    }
    let mut responses = Vec::new();
    for message in messages {
        if let Some(r) = handle_message(&ctl, &caller, message).await {
            responses.push(r);
        }
    }
    match (batch, responses.len()) {
        (_, 0) => StatusCode::ACCEPTED.into_response(),
        (false, _) => axum::Json(responses.swap_remove(0)).into_response(),
        (true, _) => axum::Json(Value::Array(responses)).into_response(),
    }
}

/// One JSON-RPC message → its response, or `None` for notifications and responses.
async fn handle_message(ctl: &Control, caller: &Caller, message: Value) -> Option<Value> {
    let Value::Object(mut obj) = message else {
        return Some(rpc_error(
            Value::Null,
            INVALID_REQUEST,
            "a JSON-RPC message must be an object",
        ));
    };
    // MCP forbids null ids; anything but a string or a number is not a request id.
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Some(rpc_error(
                Value::Null,
                INVALID_REQUEST,
                "id must be a string or a number",
            ));
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(rpc_error(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            return Some(rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "method must be a string",
            ));
        }
        // A response to a server request: this server sends none, so there is nothing to
        // match it with; it is accepted and dropped.
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            return None;
        }
        None => {
            return Some(rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "a request needs a method",
            ));
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return id.map(|id| rpc_error(id, INVALID_PARAMS, "params must be an object"));
        }
    };
    let Some(id) = id else {
        // Notifications (`notifications/initialized`, `notifications/cancelled`, …) need no
        // answer, and nothing here runs long enough to be worth cancelling.
        tracing::debug!(%method, actor = %caller.actor, "MCP notification");
        return None;
    };
    Some(match dispatch(ctl, caller, &method, params).await {
        Ok(result) => rpc_result(id, result),
        Err((code, message)) => rpc_error(id, code, message),
    })
}

async fn dispatch(
    ctl: &Control,
    caller: &Caller,
    method: &str,
    params: Map<String, Value>,
) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => initialize(&params),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": tool_list() })),
        "tools/call" => call_tool(ctl, caller, params).await,
        other => Err((METHOD_NOT_FOUND, format!("method not found: {other}"))),
    }
}

fn initialize(params: &Map<String, Value>) -> Result<Value, (i64, String)> {
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or((
            INVALID_PARAMS,
            "initialize needs params.protocolVersion".to_string(),
        ))?;
    let version = SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .unwrap_or(&SUPPORTED_PROTOCOL_VERSIONS[0]);
    Ok(json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {
            "name": SERVER_NAME,
            "title": "Gate control plane",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "instructions": "Read-only view of one Gate organization (the one your key belongs to, \
            or X-Org-ID with the system key): resources, policies, connectors, access requests \
            and the audit log, plus simulate_policy to see what a policy would decide for an \
            input. Nothing here changes anything.",
    }))
}

// --- tools -------------------------------------------------------------------------------

/// The tools, in the order `tools/list` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    ListResources,
    ListPolicies,
    ListConnectors,
    ListAccessRequests,
    QueryAudit,
    SimulatePolicy,
}

impl Tool {
    const ALL: [Tool; 6] = [
        Tool::ListResources,
        Tool::ListPolicies,
        Tool::ListConnectors,
        Tool::ListAccessRequests,
        Tool::QueryAudit,
        Tool::SimulatePolicy,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::ListResources => "list_resources",
            Tool::ListPolicies => "list_policies",
            Tool::ListConnectors => "list_connectors",
            Tool::ListAccessRequests => "list_access_requests",
            Tool::QueryAudit => "query_audit",
            Tool::SimulatePolicy => "simulate_policy",
        }
    }

    fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    fn title(self) -> &'static str {
        match self {
            Tool::ListResources => "List resources",
            Tool::ListPolicies => "List policies",
            Tool::ListConnectors => "List connectors",
            Tool::ListAccessRequests => "List access requests",
            Tool::QueryAudit => "Query the audit log",
            Tool::SimulatePolicy => "Simulate a policy",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Tool::ListResources => {
                "The organization's resources (databases, SSH hosts, …) that connectors \
                 guard: name, protocol, host, port, database and spec."
            }
            Tool::ListPolicies => {
                "The organization's Rego policies with their stages, resource targets \
                 (names or globs), state (draft, dry_run, active), version and text."
            }
            Tool::ListConnectors => {
                "The organization's registered connectors with their last heartbeat and \
                 status (connected, stale, disconnected)."
            }
            Tool::ListAccessRequests => {
                "Just-in-time access requests, newest first: requester, resource, reason, \
                 requested duration, scopes, status (pending, approved, denied, expired, \
                 cancelled, revoked), who decided and why, and when a grant expires."
            }
            Tool::QueryAudit => {
                "Audit events, newest first: policy decisions, sessions and admin changes. \
                 Filters are ANDed; pass next_cursor back as cursor for older events."
            }
            Tool::SimulatePolicy => {
                "Evaluate a stored policy (policy_id) or Rego text (rego) for one stage \
                 against an input, exactly as a connector would, without enforcing anything. \
                 Returns the decision (allow, block, mask, …); an evaluation error is a block \
                 (fail closed) with the error."
            }
        }
    }

    fn input_schema(self) -> Value {
        let no_args = json!({"type": "object", "properties": {}, "additionalProperties": false});
        match self {
            Tool::ListResources
            | Tool::ListPolicies
            | Tool::ListConnectors
            | Tool::ListAccessRequests => no_args,
            Tool::QueryAudit => {
                let time = |what: &str| {
                    json!({
                        "type": ["string", "integer"],
                        "description": format!(
                            "{what}: RFC 3339 time (2026-11-21T10:00:00Z) or unix milliseconds"
                        ),
                    })
                };
                let text = |what: &str| json!({"type": "string", "description": what});
                json!({
                    "type": "object",
                    "properties": {
                        "from": time("Events at or after this time"),
                        "to": time("Events before this time"),
                        "identity": text("Exact identity name (for admin changes: the actor)"),
                        "resource": text("Exact resource name"),
                        "action": text(
                            "Exact action, e.g. allow, block, mask, or an admin action such \
                             as policy.update"
                        ),
                        "kind": text(
                            "Exact event kind, e.g. policy_decision, session_start, admin_change"
                        ),
                        "session_id": text("Exact session id"),
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_AUDIT_LIMIT,
                            "description": format!(
                                "Events per call (default {}, at most {MAX_AUDIT_LIMIT})",
                                gate_store::AUDIT_DEFAULT_LIMIT
                            ),
                        },
                        "cursor": text("next_cursor from a previous call, for older events"),
                    },
                    "additionalProperties": false,
                })
            }
            Tool::SimulatePolicy => json!({
                "type": "object",
                "properties": {
                    "policy_id": {
                        "type": "string",
                        "format": "uuid",
                        "description": "A stored policy's id (give this or rego, not both)",
                    },
                    "rego": {
                        "type": "string",
                        "description": "Rego text to try without saving it (give this or policy_id)",
                    },
                    "stage": {
                        "type": "string",
                        "enum": ["session", "pre_request", "post_request"],
                        "description": "The rule to evaluate; required with rego, and with a \
                            stored policy bound to several stages",
                    },
                    "input": {
                        "type": "object",
                        "description": "The policy input as a connector builds it, e.g. \
                            {\"user\": {\"name\": \"alice\", \"groups\": [\"dev\"]}, \
                            \"resource\": {\"name\": \"prod-db\"}, \
                            \"query\": {\"type\": \"drop\", \"tables\": [\"users\"]}}",
                    },
                },
                "required": ["input"],
                "additionalProperties": false,
            }),
        }
    }
}

fn tool_list() -> Vec<Value> {
    Tool::ALL
        .iter()
        .map(|t| {
            json!({
                "name": t.name(),
                "title": t.title(),
                "description": t.description(),
                "inputSchema": t.input_schema(),
                "annotations": {
                    "title": t.title(),
                    "readOnlyHint": true,
                    "destructiveHint": false,
                    "idempotentHint": true,
                    "openWorldHint": false,
                },
            })
        })
        .collect()
}

/// Why a tool call failed, as the model reads it in an `isError` result.
struct ToolFailure(String);

impl From<ServiceError> for ToolFailure {
    fn from(e: ServiceError) -> Self {
        ToolFailure(format!("{}: {}", e.code(), e.message()))
    }
}

/// Arguments into `T`; a mismatch (wrong type, unknown field, missing field) is a tool
/// failure naming the problem, not a protocol error.
fn args<T: DeserializeOwned>(tool: Tool, arguments: Map<String, Value>) -> Result<T, ToolFailure> {
    serde_json::from_value(Value::Object(arguments))
        .map_err(|e| ToolFailure(format!("invalid arguments for {}: {e}", tool.name())))
}

/// No arguments at all: a typo'd filter must not silently return everything.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// A time bound as a model is likely to write it: text or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeArg {
    Millis(i64),
    Text(String),
}

impl TimeArg {
    fn into_string(self) -> String {
        match self {
            TimeArg::Millis(ms) => ms.to_string(),
            TimeArg::Text(s) => s,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryAuditArgs {
    #[serde(default)]
    from: Option<TimeArg>,
    #[serde(default)]
    to: Option<TimeArg>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn call_tool(
    ctl: &Control,
    caller: &Caller,
    mut params: Map<String, Value>,
) -> Result<Value, (i64, String)> {
    let name = match params.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => {
            return Err((
                INVALID_PARAMS,
                "tools/call needs params.name (a string)".to_string(),
            ));
        }
    };
    let tool = Tool::from_name(&name).ok_or_else(|| {
        (
            INVALID_PARAMS,
            format!(
                "unknown tool {name:?} (tools: {})",
                Tool::ALL.map(Tool::name).join(", ")
            ),
        )
    })?;
    tracing::debug!(tool = tool.name(), actor = %caller.actor, "MCP tool call");
    let outcome = match params.remove("arguments") {
        None | Some(Value::Null) => run_tool(ctl, caller, tool, Map::new()).await,
        Some(Value::Object(arguments)) => run_tool(ctl, caller, tool, arguments).await,
        Some(_) => Err(ToolFailure(format!(
            "invalid arguments for {}: arguments must be an object",
            tool.name()
        ))),
    };
    Ok(match outcome {
        Ok(value) => json!({
            "content": [{"type": "text", "text": value.to_string()}],
            "structuredContent": value,
            "isError": false,
        }),
        Err(ToolFailure(message)) => json!({
            "content": [{"type": "text", "text": message}],
            "isError": true,
        }),
    })
}

/// Runs one tool through the service layer. Every result is a JSON object (structured
/// content must be one).
async fn run_tool(
    ctl: &Control,
    caller: &Caller,
    tool: Tool,
    arguments: Map<String, Value>,
) -> Result<Value, ToolFailure> {
    let to_value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ToolFailure(format!("internal error: cannot render the result: {e}")))
    };
    match tool {
        Tool::ListResources => {
            let NoArgs {} = args(tool, arguments)?;
            let list = resources::list_resources(ctl, caller).await?;
            Ok(json!({ "resources": list }))
        }
        Tool::ListPolicies => {
            let NoArgs {} = args(tool, arguments)?;
            let list = policies::list_policies(ctl, caller).await?;
            Ok(json!({ "policies": list }))
        }
        Tool::ListConnectors => {
            let NoArgs {} = args(tool, arguments)?;
            let list = connectors::list_connectors(ctl, caller).await?;
            Ok(json!({ "connectors": list }))
        }
        Tool::ListAccessRequests => {
            let NoArgs {} = args(tool, arguments)?;
            let list =
                access_requests::list_access_requests(ctl, caller, Default::default()).await?;
            Ok(json!({ "access_requests": list }))
        }
        Tool::QueryAudit => {
            let a: QueryAuditArgs = args(tool, arguments)?;
            if let Some(limit) = a.limit
                && !(1..=MAX_AUDIT_LIMIT).contains(&limit)
            {
                return Err(ToolFailure(format!(
                    "invalid arguments for query_audit: limit must be 1-{MAX_AUDIT_LIMIT}"
                )));
            }
            let filter = audit::AuditFilter {
                from: a.from.map(TimeArg::into_string),
                to: a.to.map(TimeArg::into_string),
                identity: a.identity,
                resource: a.resource,
                action: a.action,
                kind: a.kind,
                session_id: a.session_id,
                limit: a.limit,
                cursor: a.cursor,
            };
            let page = audit::query_audit(ctl, caller, filter).await?;
            to_value(serde_json::to_value(page))
        }
        Tool::SimulatePolicy => {
            let sim: policies::Simulation = args(tool, arguments)?;
            let result = policies::simulate_policy(ctl, caller, sim).await?;
            to_value(serde_json::to_value(result))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin: not a browser");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn accept_needs_json_or_a_wildcard() {
        let mut h = HeaderMap::new();
        assert!(accepts_json(&h));
        for ok in [
            "application/json, text/event-stream",
            "text/event-stream;q=1, application/json;q=0.5",
            "*/*",
        ] {
            h.insert(header::ACCEPT, HeaderValue::from_static(ok));
            assert!(accepts_json(&h), "{ok}");
        }
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(!accepts_json(&h));
    }

    #[test]
    fn initialize_negotiates_the_version() {
        let params = |v: &str| {
            json!({"protocolVersion": v, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})
                .as_object()
                .cloned()
                .unwrap()
        };
        for v in SUPPORTED_PROTOCOL_VERSIONS {
            assert_eq!(initialize(&params(v)).unwrap()["protocolVersion"], v);
        }
        let newest = initialize(&params("2099-01-01")).unwrap();
        assert_eq!(newest["protocolVersion"], SUPPORTED_PROTOCOL_VERSIONS[0]);
        assert_eq!(newest["serverInfo"]["name"], SERVER_NAME);
        assert!(newest["capabilities"]["tools"].is_object());
        assert_eq!(initialize(&Map::new()).unwrap_err().0, INVALID_PARAMS);
    }

    #[test]
    fn every_tool_has_an_object_schema_and_a_unique_name() {
        let tools = tool_list();
        assert_eq!(tools.len(), Tool::ALL.len());
        let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Tool::ALL.len());
        for t in &tools {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert_eq!(t["annotations"]["readOnlyHint"], true);
        }
    }

    #[test]
    fn arguments_are_checked_strictly() {
        let bad = json!({"limt": 5}).as_object().cloned().unwrap();
        let Err(ToolFailure(message)) = args::<QueryAuditArgs>(Tool::QueryAudit, bad) else {
            panic!("a typo'd argument must be refused");
        };
        assert!(message.contains("limt"), "{message}");
        let times = json!({"from": 1000, "to": "2026-01-01T00:00:00Z"})
            .as_object()
            .cloned()
            .unwrap();
        let a: QueryAuditArgs = args(Tool::QueryAudit, times).ok().unwrap();
        assert_eq!(a.from.map(TimeArg::into_string).as_deref(), Some("1000"));
        assert!(args::<NoArgs>(Tool::ListResources, Map::new()).is_ok());
    }
}
