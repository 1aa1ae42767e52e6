//! The read-only MCP endpoint, driven by the real rmcp client (Streamable HTTP with a
//! bearer key) where a well-behaved client is the point, and by raw HTTP JSON-RPC where
//! the point is what a broken or hostile client gets back.

mod common;

use std::collections::HashMap;

use common::*;
use gate_proto::v1 as pb;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

type McpClient = RunningService<RoleClient, ClientConfig>;

/// Connects the rmcp client to `/mcp` with `key` (and `X-Org-ID` when given).
async fn connect(
    plane: &Plane,
    key: Option<&str>,
    org: Option<&str>,
) -> Result<McpClient, rmcp::service::ClientInitializeError> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", plane.base));
    if let Some(k) = key {
        config = config.auth_header(k);
    }
    if let Some(o) = org {
        let mut headers = HashMap::new();
        headers.insert(
            reqwest::header::HeaderName::from_static("x-org-id"),
            reqwest::header::HeaderValue::from_str(o).expect("header"),
        );
        config = config.custom_headers(headers);
    }
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
}

async fn call(client: &McpClient, tool: &str, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// The JSON a successful tool call returned, checked in both forms (text and structured).
async fn call_ok(client: &McpClient, tool: &str, args: Value) -> Value {
    let result = call(client, tool, args).await;
    let text = &result.content[0].as_text().expect("text content").text;
    assert_ne!(result.is_error, Some(true), "{tool}: {text}");
    let parsed: Value = serde_json::from_str(text).expect("text content is JSON");
    assert_eq!(result.structured_content.as_ref(), Some(&parsed));
    parsed
}

/// The message of a tool call expected to fail with `isError: true`.
async fn call_err(client: &McpClient, tool: &str, args: Value) -> String {
    let result = call(client, tool, args).await;
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} should fail: {result:?}"
    );
    result.content[0].as_text().expect("text").text.clone()
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|x| s(&x["name"]))
        .collect();
    v.sort();
    v
}

/// One raw POST to `/mcp`: `(status, body as JSON or Null)`.
async fn raw(
    plane: &Plane,
    key: Option<&str>,
    org: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = plane
        .http
        .post(format!("{}/mcp", plane.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(o) = org {
        req = req.header("x-org-id", o);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("POST /mcp");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, value, headers)
}

/// A raw JSON-RPC request expected to get a 200 JSON-RPC answer.
async fn rpc(plane: &Plane, key: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let (status, v, _) = raw(plane, Some(key), None, &[], &body.to_string()).await;
    assert_eq!(status, 200, "{method}: {v}");
    assert_eq!(v["id"], 7, "{v}");
    v
}

struct Org {
    id: String,
    readonly: String,
    resource: String,
    policy_id: String,
}

/// An org with a resource, an active policy and a few audit events of its own.
async fn seed(plane: &Plane, name: &str) -> Org {
    let id = plane.create_org(name).await;
    let editor = plane.create_key(&id, "editor", "editor").await;
    let readonly = plane.create_key(&id, "reader", "readonly").await;
    let resource = format!("{name}-db");
    plane
        .ok(
            "POST",
            "/api/v1/resources",
            &editor,
            None,
            Some(resource_json(&resource)),
        )
        .await;
    let policy = plane
        .ok(
            "POST",
            "/api/v1/policies",
            &editor,
            None,
            Some(json!({
                "name": format!("{name}-no-drops"),
                "stages": ["pre_request"],
                "targets": [resource],
                "state": "active",
                "rego": GOOD_REGO,
            })),
        )
        .await;
    let org_id: gate_store::OrgId = id.parse().expect("org id");
    let events: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "id": uuid::Uuid::now_v7(),
                "time": "2026-11-21T10:00:00.000Z",
                "kind": "policy_decision",
                "identity": {"name": format!("{name}-user")},
                "resource": resource,
                "protocol": "postgres",
                "action": if i == 0 { "block" } else { "allow" },
                "statement": "SELECT 1",
            })
        })
        .collect();
    plane
        .running
        .as_ref()
        .expect("running")
        .control()
        .store()
        .ingest_audit(org_id, None, &events)
        .await
        .expect("ingest");
    Org {
        id,
        readonly,
        resource,
        policy_id: s(&policy["id"]),
    }
}

/// Registers a connector in `org` (through the real registration flow); returns its
/// credential.
async fn register_connector(plane: &Plane, org: &str, name: &str) -> String {
    let token = plane
        .ok(
            "POST",
            "/api/v1/registration-tokens",
            SYSTEM_KEY,
            Some(org),
            Some(json!({"name": name})),
        )
        .await;
    plane
        .connector()
        .register(req(
            pb::RegisterRequest {
                registration_token: s(&token["secret"]),
                version: "9.9.9".into(),
            },
            None,
            None,
        ))
        .await
        .expect("register")
        .into_inner()
        .credential
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_initializes_lists_tools_and_reads_its_own_org() {
    let plane = Plane::start(Backend::Sqlite).await;
    let a = seed(&plane, "alpha").await;
    let b = seed(&plane, "beta").await;
    register_connector(&plane, &a.id, "edge-alpha").await;

    let client = connect(&plane, Some(&a.readonly), None)
        .await
        .expect("initialize");
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("gate-control")
    );
    assert!(
        gate_control::mcp::SUPPORTED_PROTOCOL_VERSIONS.contains(&info.protocol_version.as_str()),
        "{:?}",
        info.protocol_version
    );
    assert!(info.capabilities.tools.is_some());

    let tools = client.list_all_tools().await.expect("tools/list");
    let mut tool_names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    tool_names.sort();
    assert_eq!(
        tool_names,
        [
            "list_access_requests",
            "list_connectors",
            "list_policies",
            "list_resources",
            "query_audit",
            "simulate_policy"
        ]
    );
    let simulate = tools.iter().find(|t| t.name == "simulate_policy").unwrap();
    assert_eq!(simulate.input_schema["type"], "object");
    assert_eq!(simulate.input_schema["required"], json!(["input"]));
    assert!(simulate.input_schema["properties"]["stage"]["enum"].is_array());
    let audit = tools.iter().find(|t| t.name == "query_audit").unwrap();
    for arg in [
        "from", "to", "identity", "resource", "action", "kind", "limit",
    ] {
        assert!(
            audit.input_schema["properties"].get(arg).is_some(),
            "query_audit schema lacks {arg}"
        );
    }

    let resources = call_ok(&client, "list_resources", json!({})).await;
    assert_eq!(names(&resources["resources"]), [a.resource.as_str()]);
    let policies = call_ok(&client, "list_policies", json!({})).await;
    assert_eq!(names(&policies["policies"]), ["alpha-no-drops"]);
    assert_eq!(policies["policies"][0]["state"], "active");
    let connectors = call_ok(&client, "list_connectors", json!({})).await;
    assert_eq!(names(&connectors["connectors"]), ["edge-alpha"]);
    let requests = call_ok(&client, "list_access_requests", json!({})).await;
    assert_eq!(requests["access_requests"], json!([]));

    let decisions = call_ok(
        &client,
        "query_audit",
        json!({"kind": "policy_decision", "limit": 10}),
    )
    .await;
    let events = decisions["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["resource"] == a.resource.as_str()));
    let blocks = call_ok(
        &client,
        "query_audit",
        json!({
            "action": "block",
            "identity": "alpha-user",
            "resource": a.resource,
            "from": "2026-11-21T00:00:00Z",
            "to": 1_900_000_000_000i64,
        }),
    )
    .await;
    assert_eq!(blocks["events"].as_array().unwrap().len(), 1);
    let paged = call_ok(
        &client,
        "query_audit",
        json!({"kind": "policy_decision", "limit": 2}),
    )
    .await;
    assert_eq!(paged["events"].as_array().unwrap().len(), 2);
    let rest = call_ok(
        &client,
        "query_audit",
        json!({"kind": "policy_decision", "limit": 2, "cursor": paged["next_cursor"]}),
    )
    .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    // Admin changes are in the audit too (the seeding created a resource and a policy).
    let changes = call_ok(&client, "query_audit", json!({"kind": "admin_change"})).await;
    assert!(
        changes["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "resource.create"),
        "{changes}"
    );
    client.cancel().await.expect("close");

    // The system key acts on the org named by X-Org-ID, and sees that org only.
    let system = connect(&plane, Some(SYSTEM_KEY), Some(&b.id))
        .await
        .expect("system key with X-Org-ID");
    let resources = call_ok(&system, "list_resources", json!({})).await;
    assert_eq!(names(&resources["resources"]), [b.resource.as_str()]);
    let connectors = call_ok(&system, "list_connectors", json!({})).await;
    assert_eq!(connectors["connectors"], json!([]));
    system.cancel().await.expect("close");

    // Every role that can read may use the tools.
    for role in ["editor", "admin"] {
        let key = plane.create_key(&a.id, &format!("mcp-{role}"), role).await;
        let c = connect(&plane, Some(&key), None)
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let r = call_ok(&c, "list_resources", json!({})).await;
        assert_eq!(names(&r["resources"]), [a.resource.as_str()], "{role}");
        c.cancel().await.expect("close");
    }
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_key_never_sees_another_orgs_data_through_mcp() {
    let plane = Plane::start(Backend::Sqlite).await;
    let a = seed(&plane, "alpha").await;
    let b = seed(&plane, "beta").await;
    register_connector(&plane, &b.id, "edge-beta").await;
    let client = connect(&plane, Some(&a.readonly), None)
        .await
        .expect("initialize");

    let resources = call_ok(&client, "list_resources", json!({})).await;
    assert!(!resources.to_string().contains(&b.resource));
    let policies = call_ok(&client, "list_policies", json!({})).await;
    assert!(!policies.to_string().contains(&b.policy_id));
    assert!(!policies.to_string().contains("beta-no-drops"));
    let connectors = call_ok(&client, "list_connectors", json!({})).await;
    assert_eq!(connectors["connectors"], json!([]));
    // Unfiltered, and filtered on the other org's names: nothing of beta's.
    let all = call_ok(&client, "query_audit", json!({"limit": 1000})).await;
    assert!(!all["events"].as_array().unwrap().is_empty());
    assert!(
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org_id"] == a.id.as_str()),
        "{all}"
    );
    assert!(!all.to_string().contains("beta"), "{all}");
    for filter in [
        json!({"resource": b.resource}),
        json!({"identity": "beta-user"}),
    ] {
        let none = call_ok(&client, "query_audit", filter.clone()).await;
        assert_eq!(none["events"], json!([]), "{filter}");
    }
    // The other org's policy does not exist from here: "not found", not its decision.
    let message = call_err(
        &client,
        "simulate_policy",
        json!({"policy_id": b.policy_id, "input": {"query": {"type": "drop"}}}),
    )
    .await;
    assert!(message.starts_with("not_found"), "{message}");
    client.cancel().await.expect("close");

    // Naming the other org does not help an org key.
    let (status, v, _) = raw(
        &plane,
        Some(&a.readonly),
        Some(&b.id),
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(
        connect(&plane, Some(&a.readonly), Some(&b.id))
            .await
            .is_err()
    );
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_connector_callers_are_refused() {
    let plane = Plane::start(Backend::Sqlite).await;
    let a = seed(&plane, "alpha").await;
    let connector_key = plane.create_key(&a.id, "conn", "connector").await;
    let credential = register_connector(&plane, &a.id, "edge").await;
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

    for body in [list, initialize] {
        // No key, a wrong key, a malformed header: 401 with a JSON-RPC error body.
        for (key, header) in [
            (None, None),
            (Some("gk_not-a-real-key"), None),
            (None, Some("Basic Zm9vOmJhcg==")),
        ] {
            let extra: Vec<(&str, &str)> =
                header.map(|h| ("authorization", h)).into_iter().collect();
            let (status, v, headers) = raw(&plane, key, None, &extra, body).await;
            assert_eq!(status, 401, "{key:?} {header:?}: {v}");
            assert_eq!(v["jsonrpc"], "2.0");
            assert_eq!(v["id"], Value::Null);
            assert_eq!(v["error"]["code"], -32001);
            assert!(
                headers
                    .get("www-authenticate")
                    .is_some_and(|h| h.to_str().unwrap().starts_with("Bearer")),
                "{headers:?}"
            );
        }
        // Connector keys and connector credentials are not readers.
        for key in [&connector_key, &credential] {
            let (status, v, _) = raw(&plane, Some(key), None, &[], body).await;
            assert_eq!(status, 403, "{v}");
            assert_eq!(v["error"]["code"], -32003);
            assert!(s(&v["error"]["message"]).contains("connector"), "{v}");
        }
        // The system key must name an org.
        let (status, v, _) = raw(&plane, Some(SYSTEM_KEY), None, &[], body).await;
        assert_eq!(status, 400, "{v}");
        assert!(s(&v["error"]["message"]).contains("X-Org-ID"), "{v}");
    }

    // The real client cannot even initialize without a reader's key.
    assert!(connect(&plane, None, None).await.is_err());
    assert!(connect(&plane, Some(&connector_key), None).await.is_err());
    assert!(connect(&plane, Some(&credential), None).await.is_err());
    // And nothing of the org leaked into those refusals.
    let (_, v, _) = raw(&plane, Some(&connector_key), None, &[], list).await;
    assert!(!v.to_string().contains(&a.resource));
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_policy_blocks_and_allows_like_a_connector() {
    let plane = Plane::start(Backend::Sqlite).await;
    let a = seed(&plane, "alpha").await;
    let client = connect(&plane, Some(&a.readonly), None)
        .await
        .expect("initialize");
    let drop = json!({"user": {"name": "alice"}, "query": {"type": "drop", "tables": ["users"]}});
    let select = json!({"user": {"name": "alice"}, "query": {"type": "select"}});

    // A stored policy, by id (its only stage is implied).
    let blocked = call_ok(
        &client,
        "simulate_policy",
        json!({"policy_id": a.policy_id, "input": drop}),
    )
    .await;
    assert_eq!(blocked["decision"]["action"], "block", "{blocked}");
    assert_eq!(blocked["decision"]["reason"], "no drops");
    let allowed = call_ok(
        &client,
        "simulate_policy",
        json!({"policy_id": a.policy_id, "stage": "pre_request", "input": select}),
    )
    .await;
    assert_eq!(allowed["decision"]["action"], "allow", "{allowed}");

    // Rego text not saved anywhere.
    let blocked = call_ok(
        &client,
        "simulate_policy",
        json!({"rego": GOOD_REGO, "stage": "pre_request", "input": drop}),
    )
    .await;
    assert_eq!(blocked["decision"]["action"], "block");
    let allowed = call_ok(
        &client,
        "simulate_policy",
        json!({"rego": GOOD_REGO, "stage": "pre_request", "input": select}),
    )
    .await;
    assert_eq!(allowed["decision"]["action"], "allow");

    // Bad arguments: a tool error the model can read, never a crash.
    let cases = [
        (
            json!({"rego": BAD_REGO, "stage": "pre_request", "input": {}}),
            "invalid_argument",
        ),
        (json!({"rego": GOOD_REGO, "input": {}}), "stage is required"),
        (
            json!({"rego": GOOD_REGO, "stage": "post_request", "input": []}),
            "must be a JSON object",
        ),
        (
            json!({"rego": GOOD_REGO, "stage": "sometimes", "input": {}}),
            "unknown stage",
        ),
        (
            json!({"policy_id": a.policy_id, "rego": GOOD_REGO, "input": {}}),
            "not both",
        ),
        (json!({"input": {}}), "give policy_id or rego"),
        (
            json!({"policy_id": "not-a-uuid", "input": {}}),
            "invalid arguments",
        ),
        (
            json!({"policy_id": uuid::Uuid::now_v7(), "input": {}}),
            "not_found",
        ),
        (
            json!({"rego": GOOD_REGO, "stage": "pre_request", "input": {}, "extra": 1}),
            "unknown field",
        ),
        (
            json!({"rego": 42, "stage": "pre_request", "input": {}}),
            "invalid arguments",
        ),
    ];
    for (args, expected) in cases {
        let message = call_err(&client, "simulate_policy", args.clone()).await;
        assert!(message.contains(expected), "{args}: {message}");
    }
    client.cancel().await.expect("close");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_rpc_errors_and_never_breaks_the_endpoint() {
    let plane = Plane::start(Backend::Sqlite).await;
    let a = seed(&plane, "alpha").await;
    let key = a.readonly.as_str();

    // Malformed JSON, and JSON that is not a JSON-RPC message.
    for body in ["{", "", "not json", "\u{0}\u{1}", "[1,"] {
        let (status, v, _) = raw(&plane, Some(key), None, &[], body).await;
        assert_eq!(status, 400, "{body:?}: {v}");
        assert_eq!(v["error"]["code"], -32700, "{body:?}");
    }
    for body in [
        "42",
        "\"hello\"",
        "null",
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
    ] {
        let (status, v, _) = raw(&plane, Some(key), None, &[], body).await;
        assert_eq!(status, 200, "{body}: {v}");
        assert_eq!(v["error"]["code"], -32600, "{body}: {v}");
    }
    let (status, v, _) = raw(&plane, Some(key), None, &[], "[]").await;
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32600)));

    // Unknown methods and malformed tools/call params; the request id is echoed.
    let v = rpc(&plane, key, "resources/list", json!({})).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    let v = rpc(&plane, key, "tools/delete_everything", json!({})).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    let v = rpc(&plane, key, "tools/call", json!({"name": "drop_tables"})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(s(&v["error"]["message"]).contains("unknown tool"), "{v}");
    let v = rpc(&plane, key, "tools/call", json!({})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = rpc(&plane, key, "tools/call", json!({"name": 5})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = rpc(&plane, key, "initialize", json!({})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let body = r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":[1,2]}"#;
    let (_, v, _) = raw(&plane, Some(key), None, &[], body).await;
    assert_eq!(
        (v["id"].as_str(), v["error"]["code"].as_i64()),
        (Some("x"), Some(-32602))
    );

    // Bad tool arguments are tool results with isError.
    let tool_error = |v: &Value| {
        assert_eq!(v["result"]["isError"], true, "{v}");
        s(&v["result"]["content"][0]["text"])
    };
    for (tool, args, expected) in [
        ("list_resources", json!({"verbose": true}), "unknown field"),
        ("list_resources", json!([1]), "must be an object"),
        ("list_resources", json!("x"), "must be an object"),
        ("query_audit", json!({"limit": 0}), "limit must be"),
        ("query_audit", json!({"limit": 5000}), "limit must be"),
        ("query_audit", json!({"limit": -1}), "invalid arguments"),
        ("query_audit", json!({"limit": "ten"}), "invalid arguments"),
        ("query_audit", json!({"from": "yesterday"}), "from must be"),
        (
            "query_audit",
            json!({"from": 2000, "to": 1000}),
            "from is after to",
        ),
        (
            "query_audit",
            json!({"from": {"a": 1}}),
            "invalid arguments",
        ),
        (
            "query_audit",
            json!({"cursor": "garbage"}),
            "invalid_argument",
        ),
        ("query_audit", json!({"resrouce": "x"}), "unknown field"),
        ("simulate_policy", json!({}), "input must be a JSON object"),
    ] {
        let v = rpc(
            &plane,
            key,
            "tools/call",
            json!({"name": tool, "arguments": args}),
        )
        .await;
        let message = tool_error(&v);
        assert!(message.contains(expected), "{tool} {args}: {message}");
    }
    // Absent or null arguments are no arguments.
    let v = rpc(
        &plane,
        key,
        "tools/call",
        json!({"name": "list_resources", "arguments": null}),
    )
    .await;
    assert_eq!(v["result"]["isError"], false, "{v}");

    // Notifications and client responses are accepted without a body.
    for body in [
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"nope"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
    ] {
        let (status, v, _) = raw(&plane, Some(key), None, &[], body).await;
        assert_eq!((status, &v), (202, &Value::Null), "{body}");
    }
    // A batch gets an array of the responses to its requests.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
    ]);
    let (status, v, _) = raw(&plane, Some(key), None, &[], &batch.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v[0]["result"], json!({}));
    assert_eq!(v[1]["error"]["code"], -32601);
    let huge = Value::Array(vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        100
    ]);
    let (status, _, _) = raw(&plane, Some(key), None, &[], &huge.to_string()).await;
    assert_eq!(status, 400);

    // Deeply nested JSON is refused by the parser, not by a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, v, _) = raw(&plane, Some(key), None, &[], &deep).await;
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32700)));

    // Transport rules: version header, origin, accept, methods.
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let (status, v, _) = raw(
        &plane,
        Some(key),
        None,
        &[("mcp-protocol-version", "1999-01-01")],
        ping,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        s(&v["error"]["message"]).contains("MCP-Protocol-Version"),
        "{v}"
    );
    let (status, _, _) = raw(
        &plane,
        Some(key),
        None,
        &[("mcp-protocol-version", "2025-06-18")],
        ping,
    )
    .await;
    assert_eq!(status, 200);
    // A newer client's discovery probe is answered "method not found" (so it falls back to
    // initialize), whatever version it names.
    let discover = r#"{"jsonrpc":"2.0","id":9,"method":"server/discover","params":{}}"#;
    let (status, v, _) = raw(
        &plane,
        Some(key),
        None,
        &[("mcp-protocol-version", "2026-07-28")],
        discover,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (200, Some(-32601), Some(9))
    );
    let (status, v, _) = raw(
        &plane,
        Some(key),
        None,
        &[("origin", "https://evil.example")],
        ping,
    )
    .await;
    assert_eq!(status, 403, "{v}");
    let same_origin = plane.base.clone();
    let (status, _, _) = raw(&plane, Some(key), None, &[("origin", &same_origin)], ping).await;
    assert_eq!(status, 200);
    let resp = plane
        .http
        .post(format!("{}/mcp", plane.base))
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 406);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let resp = plane
            .http
            .request(method.clone(), format!("{}/mcp", plane.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method}");
        assert_eq!(resp.headers()["allow"], "POST");
    }

    // After all that, the endpoint still works.
    let v = rpc(&plane, key, "tools/list", json!({})).await;
    assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(6));
    let v = rpc(&plane, key, "ping", json!({})).await;
    assert_eq!(v["result"], json!({}));
    // MCP calls are counted under their own metrics area.
    let (_, metrics) = plane.call("GET", "/metrics", None, None, None).await;
    assert!(
        s(&metrics).contains("area=\"mcp\""),
        "metrics lack the mcp area"
    );
    plane.stop().await;
}
