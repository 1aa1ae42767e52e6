//! The control plane end to end, in-process: HTTP/gRPC parity on both store backends, the
//! RBAC matrix, org isolation, registration tokens, policy compilation, config watch,
//! audit intake and export, metrics, TLS and the `--insecure` rule.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use gate_control::StartOptions;
use gate_proto::v1 as pb;
use serde_json::{Value, json};

// --- parity ------------------------------------------------------------------------------

/// The same operations through HTTP and gRPC give the same results and the same errors.
async fn parity(backend: Backend) {
    let plane = Plane::start(backend).await;
    let mut grpc = plane.control();

    // Organizations: created on either surface, read back identically on the other.
    let org_http = plane.create_org("parity-http").await;
    let org_grpc = grpc
        .create_organization(req(
            pb::CreateOrganizationRequest {
                name: "parity-grpc".into(),
            },
            Some(SYSTEM_KEY),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let via_http = plane
        .ok(
            "GET",
            &format!("/api/v1/organizations/{}", org_grpc.id),
            SYSTEM_KEY,
            None,
            None,
        )
        .await;
    assert_eq!(via_http["name"], "parity-grpc");
    assert_eq!(via_http["created_at"].as_i64(), Some(org_grpc.created_at));

    let editor = plane.create_key(&org_http, "editor", "editor").await;
    let org = Some(org_http.as_str());

    // Resources: one created per surface, each read through both.
    let r1 = plane
        .ok(
            "POST",
            "/api/v1/resources",
            &editor,
            None,
            Some(resource_json("db-1")),
        )
        .await;
    let r2 = grpc
        .create_resource(req(
            pb::CreateResourceRequest {
                resource: Some(resource_pb("db-2")),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let r1_grpc = grpc
        .get_resource(req(
            pb::GetResourceRequest { id: s(&r1["id"]) },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resource_from_json(&r1), r1_grpc);
    let r2_http = plane
        .ok(
            "GET",
            &format!("/api/v1/resources/{}", r2.id),
            &editor,
            None,
            None,
        )
        .await;
    assert_eq!(resource_from_json(&r2_http), r2);
    // Created the same way, the two differ only in id, name and times.
    let normalize = |mut r: pb::Resource| {
        r.id.clear();
        r.name.clear();
        r.created_at = 0;
        r.updated_at = 0;
        r
    };
    assert_eq!(normalize(r1_grpc.clone()), normalize(r2.clone()));
    let list_http = plane
        .ok("GET", "/api/v1/resources", &editor, None, None)
        .await;
    let list_grpc = grpc
        .list_resources(req(pb::ListResourcesRequest {}, Some(&editor), None))
        .await
        .unwrap()
        .into_inner();
    let from_http: Vec<pb::Resource> = list_http["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(resource_from_json)
        .collect();
    assert_eq!(from_http, list_grpc.resources);
    assert_eq!(from_http.len(), 2);

    // Policies, versions and state.
    let p = plane
        .ok(
            "POST",
            "/api/v1/policies",
            &editor,
            None,
            Some(json!({"name": "no-drops", "stages": ["pre_request"], "targets": ["db-*"], "rego": GOOD_REGO})),
        )
        .await;
    assert_eq!(p["state"], "draft");
    assert_eq!(p["version"], 1);
    let p_grpc = grpc
        .update_policy(req(
            pb::UpdatePolicyRequest {
                id: s(&p["id"]),
                rego: Some(GOOD_REGO.replace("no drops", "no drops, really")),
                ..Default::default()
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p_grpc.version, 2);
    let p_http = plane
        .ok(
            "PUT",
            &format!("/api/v1/policies/{}/state", p_grpc.id),
            &editor,
            None,
            Some(json!({"state": "active"})),
        )
        .await;
    let p_grpc = grpc
        .get_policy(req(
            pb::GetPolicyRequest {
                id: p_grpc.id.clone(),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy_from_json(&p_http), p_grpc);
    assert_eq!(p_grpc.state, "active");
    let versions_http = plane
        .ok(
            "GET",
            &format!("/api/v1/policies/{}/versions", p_grpc.id),
            &editor,
            None,
            None,
        )
        .await;
    let versions_grpc = grpc
        .list_policy_versions(req(
            pb::ListPolicyVersionsRequest {
                policy_id: p_grpc.id.clone(),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions_grpc.len(), 2);
    assert_eq!(
        versions_http["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        versions_grpc.iter().map(|v| v.version).collect::<Vec<_>>()
    );

    // Simulation gives the same decision on both.
    let input = json!({"query": {"type": "drop", "statement": "DROP TABLE t"}});
    let sim_http = plane
        .ok(
            "POST",
            "/api/v1/policies/simulate",
            &editor,
            None,
            Some(json!({"policy_id": p_grpc.id, "input": input})),
        )
        .await;
    let sim_grpc = grpc
        .simulate_policy(req(
            pb::SimulatePolicyRequest {
                policy_id: p_grpc.id.clone(),
                input_json: input.to_string(),
                ..Default::default()
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sim_http["decision"]["action"], "block");
    assert_eq!(sim_grpc.action, "block");
    assert_eq!(sim_http["decision"]["reason"], sim_grpc.reason.as_str());
    let decision: Value = serde_json::from_str(&sim_grpc.decision_json).unwrap();
    assert_eq!(decision, sim_http["decision"]);

    // Identities and groups.
    let ident = json!({"name": "alice", "email": "alice@example.com", "groups": ["eng"],
        "token_sha256": "a".repeat(64)});
    let i_http = plane
        .ok("POST", "/api/v1/identities", &editor, None, Some(ident))
        .await;
    let i_grpc = grpc
        .get_identity(req(
            pb::GetIdentityRequest {
                id: s(&i_http["id"]),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(identity_from_json(&i_http), i_grpc);
    let g_grpc = grpc
        .create_group(req(
            pb::CreateGroupRequest {
                name: "eng".into(),
                description: "Engineering".into(),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let g_http = plane
        .ok(
            "GET",
            &format!("/api/v1/groups/{}", g_grpc.id),
            &editor,
            None,
            None,
        )
        .await;
    assert_eq!(group_from_json(&g_http), g_grpc);

    // Errors: the same failing operations fail the same way on both surfaces.
    let missing = uuid::Uuid::now_v7().to_string();
    let cases: Vec<(Result<Value, ApiError>, Result<(), ApiError>)> = vec![
        (
            plane
                .try_call(
                    "GET",
                    &format!("/api/v1/resources/{missing}"),
                    Some(&editor),
                    None,
                    None,
                )
                .await,
            grpc.get_resource(req(
                pb::GetResourceRequest {
                    id: missing.clone(),
                },
                Some(&editor),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "POST",
                    "/api/v1/resources",
                    Some(&editor),
                    None,
                    Some(resource_json("db-1")),
                )
                .await,
            grpc.create_resource(req(
                pb::CreateResourceRequest {
                    resource: Some(resource_pb("db-1")),
                },
                Some(&editor),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "GET",
                    "/api/v1/resources/not-an-id",
                    Some(&editor),
                    None,
                    None,
                )
                .await,
            grpc.get_resource(req(
                pb::GetResourceRequest {
                    id: "not-an-id".into(),
                },
                Some(&editor),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "POST",
                    "/api/v1/api-keys",
                    Some(&editor),
                    None,
                    Some(json!({"name": "k", "role": "admin"})),
                )
                .await,
            grpc.create_api_key(req(
                pb::CreateApiKeyRequest {
                    name: "k".into(),
                    role: "admin".into(),
                },
                Some(&editor),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "POST",
                    "/api/v1/api-keys",
                    Some(SYSTEM_KEY),
                    org,
                    Some(json!({"name": "k", "role": "superuser"})),
                )
                .await,
            grpc.create_api_key(req(
                pb::CreateApiKeyRequest {
                    name: "k".into(),
                    role: "superuser".into(),
                },
                Some(SYSTEM_KEY),
                org,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call("GET", "/api/v1/resources", None, None, None)
                .await,
            grpc.list_resources(req(pb::ListResourcesRequest {}, None, None))
                .await
                .map(|_| ())
                .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "GET",
                    "/api/v1/resources",
                    Some("gk_not-a-real-key"),
                    None,
                    None,
                )
                .await,
            grpc.list_resources(req(
                pb::ListResourcesRequest {},
                Some("gk_not-a-real-key"),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
        (
            plane
                .try_call("GET", "/api/v1/resources", Some(SYSTEM_KEY), None, None)
                .await,
            grpc.list_resources(req(pb::ListResourcesRequest {}, Some(SYSTEM_KEY), None))
                .await
                .map(|_| ())
                .map_err(grpc_err),
        ),
        (
            plane
                .try_call(
                    "POST",
                    "/api/v1/policies",
                    Some(&editor),
                    None,
                    Some(json!({"name": "bad", "stages": ["pre_request"], "rego": BAD_REGO})),
                )
                .await,
            grpc.create_policy(req(
                pb::CreatePolicyRequest {
                    name: "bad".into(),
                    stages: vec!["pre_request".into()],
                    rego: BAD_REGO.into(),
                    ..Default::default()
                },
                Some(&editor),
                None,
            ))
            .await
            .map(|_| ())
            .map_err(grpc_err),
        ),
    ];
    let expected = [
        "not_found",
        "conflict",
        "invalid_argument",
        "permission_denied",
        "invalid_argument",
        "unauthenticated",
        "unauthenticated",
        "invalid_argument",
        "invalid_argument",
    ];
    for (i, ((http, grpc), want)) in cases.into_iter().zip(expected).enumerate() {
        let http = http.expect_err("HTTP call should fail");
        let grpc = grpc.expect_err("gRPC call should fail");
        assert_eq!(http, grpc, "case {i}: HTTP and gRPC disagree");
        assert_eq!(http.code, want, "case {i}: {http:?}");
    }

    // Audit: admin changes were recorded; both surfaces page the same events.
    let audit_http = plane
        .ok(
            "GET",
            "/api/v1/audit?kind=admin_change&limit=3",
            &editor,
            None,
            None,
        )
        .await;
    let audit_grpc = grpc
        .query_audit(req(
            pb::QueryAuditRequest {
                query: Some(pb::AuditQuery {
                    kind: "admin_change".into(),
                    limit: 3,
                    ..Default::default()
                }),
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let events_http: Vec<pb::AuditRecord> = audit_http["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(audit_from_json)
        .collect();
    assert_eq!(events_http, audit_grpc.events);
    assert_eq!(events_http.len(), 3);
    assert_eq!(audit_http["next_cursor"], audit_grpc.next_cursor.as_str());
    let actions: Vec<String> = plane
        .ok(
            "GET",
            "/api/v1/audit?kind=admin_change&limit=100",
            &editor,
            None,
            None,
        )
        .await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["action"]))
        .collect();
    for a in [
        "resource.create",
        "policy.create",
        "policy.update",
        "policy.activate",
        "identity.create",
        "group.create",
        "api_key.create",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} not audited: {actions:?}"
        );
    }

    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_agree_on_sqlite() {
    parity(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_agree_on_postgres() {
    parity(Backend::Postgres).await;
}

// --- RBAC ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ListResources,
    CreateResource,
    ListPolicies,
    CreatePolicy,
    ListIdentities,
    CreateIdentity,
    ListGroups,
    CreateGroup,
    ListApiKeys,
    CreateApiKey,
    ListConnectors,
    CreateRegistrationToken,
    GetOrg,
    RenameOrg,
    QueryAudit,
    GetConfig,
}

impl Op {
    const ALL: [Op; 16] = [
        Op::ListResources,
        Op::CreateResource,
        Op::ListPolicies,
        Op::CreatePolicy,
        Op::ListIdentities,
        Op::CreateIdentity,
        Op::ListGroups,
        Op::CreateGroup,
        Op::ListApiKeys,
        Op::CreateApiKey,
        Op::ListConnectors,
        Op::CreateRegistrationToken,
        Op::GetOrg,
        Op::RenameOrg,
        Op::QueryAudit,
        Op::GetConfig,
    ];

    /// The least role that may do it (`connector` = only connector keys).
    fn needs(self) -> &'static str {
        match self {
            Op::ListResources
            | Op::ListPolicies
            | Op::ListIdentities
            | Op::ListGroups
            | Op::ListConnectors
            | Op::GetOrg
            | Op::QueryAudit => "readonly",
            Op::CreateResource | Op::CreatePolicy | Op::CreateIdentity | Op::CreateGroup => {
                "editor"
            }
            Op::ListApiKeys | Op::CreateApiKey | Op::CreateRegistrationToken | Op::RenameOrg => {
                "admin"
            }
            Op::GetConfig => "connector",
        }
    }

    fn allowed_for(self, role: &str) -> bool {
        let rank = |r: &str| match r {
            "readonly" => 1,
            "editor" => 2,
            "admin" => 3,
            _ => 0,
        };
        match self.needs() {
            "connector" => role == "connector",
            need => rank(role) >= rank(need),
        }
    }

    async fn http(self, plane: &Plane, key: &str, org: &str, n: usize) -> Result<(), ApiError> {
        let k = Some(key);
        let (m, path, body) = match self {
            Op::ListResources => ("GET", "/api/v1/resources".to_string(), None),
            Op::CreateResource => (
                "POST",
                "/api/v1/resources".to_string(),
                Some(resource_json(&format!("h-{n}"))),
            ),
            Op::ListPolicies => ("GET", "/api/v1/policies".to_string(), None),
            Op::CreatePolicy => (
                "POST",
                "/api/v1/policies".to_string(),
                Some(
                    json!({"name": format!("h-{n}"), "stages": ["pre_request"], "rego": GOOD_REGO}),
                ),
            ),
            Op::ListIdentities => ("GET", "/api/v1/identities".to_string(), None),
            Op::CreateIdentity => (
                "POST",
                "/api/v1/identities".to_string(),
                Some(json!({"name": format!("h-{n}")})),
            ),
            Op::ListGroups => ("GET", "/api/v1/groups".to_string(), None),
            Op::CreateGroup => (
                "POST",
                "/api/v1/groups".to_string(),
                Some(json!({"name": format!("h-{n}")})),
            ),
            Op::ListApiKeys => ("GET", "/api/v1/api-keys".to_string(), None),
            Op::CreateApiKey => (
                "POST",
                "/api/v1/api-keys".to_string(),
                Some(json!({"name": format!("h-{n}"), "role": "readonly"})),
            ),
            Op::ListConnectors => ("GET", "/api/v1/connectors".to_string(), None),
            Op::CreateRegistrationToken => (
                "POST",
                "/api/v1/registration-tokens".to_string(),
                Some(json!({"name": format!("h-{n}")})),
            ),
            Op::GetOrg => ("GET", format!("/api/v1/organizations/{org}"), None),
            Op::RenameOrg => (
                "PATCH",
                format!("/api/v1/organizations/{org}"),
                Some(json!({"name": format!("rbac-h-{n}")})),
            ),
            Op::QueryAudit => ("GET", "/api/v1/audit".to_string(), None),
            // The connector service is gRPC only: the HTTP twin is skipped.
            Op::GetConfig => {
                return Err(ApiError {
                    code: "skip".into(),
                    message: String::new(),
                });
            }
        };
        plane.try_call(m, &path, k, None, body).await.map(|_| ())
    }

    async fn grpc(self, plane: &Plane, key: &str, org: &str, n: usize) -> Result<(), ApiError> {
        let mut c = plane.control();
        let k = Some(key);
        let name = format!("g-{n}");
        let r = match self {
            Op::ListResources => c
                .list_resources(req(pb::ListResourcesRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreateResource => c
                .create_resource(req(
                    pb::CreateResourceRequest {
                        resource: Some(resource_pb(&name)),
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::ListPolicies => c
                .list_policies(req(pb::ListPoliciesRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreatePolicy => c
                .create_policy(req(
                    pb::CreatePolicyRequest {
                        name,
                        stages: vec!["pre_request".into()],
                        rego: GOOD_REGO.into(),
                        ..Default::default()
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::ListIdentities => c
                .list_identities(req(pb::ListIdentitiesRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreateIdentity => c
                .create_identity(req(
                    pb::CreateIdentityRequest {
                        identity: Some(pb::IdentityInput {
                            name,
                            ..Default::default()
                        }),
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::ListGroups => c
                .list_groups(req(pb::ListGroupsRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreateGroup => c
                .create_group(req(
                    pb::CreateGroupRequest {
                        name,
                        description: String::new(),
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::ListApiKeys => c
                .list_api_keys(req(pb::ListApiKeysRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreateApiKey => c
                .create_api_key(req(
                    pb::CreateApiKeyRequest {
                        name,
                        role: "readonly".into(),
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::ListConnectors => c
                .list_connectors(req(pb::ListConnectorsRequest {}, k, None))
                .await
                .map(|_| ()),
            Op::CreateRegistrationToken => c
                .create_registration_token(req(
                    pb::CreateRegistrationTokenRequest {
                        name,
                        ttl_seconds: 0,
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::GetOrg => c
                .get_organization(req(pb::GetOrganizationRequest { id: org.into() }, k, None))
                .await
                .map(|_| ()),
            Op::RenameOrg => c
                .update_organization(req(
                    pb::UpdateOrganizationRequest {
                        id: org.into(),
                        name: format!("rbac-{name}"),
                    },
                    k,
                    None,
                ))
                .await
                .map(|_| ()),
            Op::QueryAudit => c
                .query_audit(req(pb::QueryAuditRequest { query: None }, k, None))
                .await
                .map(|_| ()),
            Op::GetConfig => plane
                .connector()
                .get_config(req(pb::GetConfigRequest {}, k, None))
                .await
                .map(|_| ()),
        };
        r.map_err(grpc_err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_every_role_against_every_area() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = plane.create_org("rbac").await;
    let mut n = 0;
    let mut table = String::new();
    for role in ["readonly", "editor", "admin", "connector"] {
        let key = plane.create_key(&org, &format!("key-{role}"), role).await;
        for op in Op::ALL {
            n += 1;
            let want = op.allowed_for(role);
            let grpc = op.grpc(&plane, &key, &org, n).await;
            let http = op.http(&plane, &key, &org, n).await;
            table.push_str(&format!("{role:9} {op:?}: grpc={grpc:?} http={http:?}\n"));
            match &grpc {
                Ok(()) => assert!(want, "{role} may not {op:?} (gRPC allowed it)"),
                Err(e) => {
                    assert!(!want, "{role} may {op:?} but gRPC refused: {e:?}");
                    assert_eq!(e.code, "permission_denied", "{role} {op:?}: {e:?}");
                }
            }
            if op != Op::GetConfig {
                assert_eq!(
                    grpc.is_ok(),
                    http.is_ok(),
                    "{role} {op:?}: surfaces disagree\n{table}"
                );
                if let (Err(g), Err(h)) = (&grpc, &http) {
                    assert_eq!(g, h, "{role} {op:?}: different errors");
                }
            }
        }
    }
    // A revoked key stops working at once.
    let v = plane
        .ok(
            "POST",
            "/api/v1/api-keys",
            SYSTEM_KEY,
            Some(&org),
            Some(json!({"name": "short-lived", "role": "admin"})),
        )
        .await;
    let secret = s(&v["secret"]);
    let id = s(&v["api_key"]["id"]);
    plane
        .ok("GET", "/api/v1/resources", &secret, None, None)
        .await;
    plane
        .ok(
            "POST",
            &format!("/api/v1/api-keys/{id}/revoke"),
            SYSTEM_KEY,
            Some(&org),
            None,
        )
        .await;
    let e = plane
        .try_call("GET", "/api/v1/resources", Some(&secret), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "unauthenticated");
    // Organizations: only the system key creates and deletes them.
    let admin = plane.create_key(&org, "admin-2", "admin").await;
    let e = plane
        .try_call(
            "POST",
            "/api/v1/organizations",
            Some(&admin),
            None,
            Some(json!({"name": "x"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    plane.stop().await;
}

// --- org isolation -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_cannot_see_or_touch_each_other() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org_a = plane.create_org("org-a").await;
    let org_b = plane.create_org("org-b").await;
    let a = plane.create_key(&org_a, "a-admin", "admin").await;
    let b = plane.create_key(&org_b, "b-admin", "admin").await;
    let mut grpc = plane.control();

    let res = plane
        .ok(
            "POST",
            "/api/v1/resources",
            &a,
            None,
            Some(resource_json("secret-db")),
        )
        .await;
    let pol = plane
        .ok(
            "POST",
            "/api/v1/policies",
            &a,
            None,
            Some(json!({"name": "p", "stages": ["pre_request"], "rego": GOOD_REGO, "state": "active"})),
        )
        .await;
    let ident = plane
        .ok(
            "POST",
            "/api/v1/identities",
            &a,
            None,
            Some(json!({"name": "alice"})),
        )
        .await;
    let grp = plane
        .ok(
            "POST",
            "/api/v1/groups",
            &a,
            None,
            Some(json!({"name": "eng"})),
        )
        .await;
    let rid = s(&res["id"]);
    let pid = s(&pol["id"]);

    // B cannot read, change or delete A's objects by id, on either surface: "not found".
    for (path, what) in [
        (format!("/api/v1/resources/{rid}"), "resource"),
        (format!("/api/v1/policies/{pid}"), "policy"),
        (format!("/api/v1/policies/{pid}/versions"), "versions"),
        (
            format!("/api/v1/identities/{}", s(&ident["id"])),
            "identity",
        ),
        (format!("/api/v1/groups/{}", s(&grp["id"])), "group"),
        (format!("/api/v1/organizations/{org_a}"), "org"),
    ] {
        let e = plane
            .try_call("GET", &path, Some(&b), None, None)
            .await
            .unwrap_err();
        assert_eq!(e.code, "not_found", "{what}: {e:?}");
    }
    for (m, path, body) in [
        (
            "PUT",
            format!("/api/v1/resources/{rid}"),
            Some(resource_json("stolen")),
        ),
        ("DELETE", format!("/api/v1/resources/{rid}"), None),
        (
            "PATCH",
            format!("/api/v1/policies/{pid}"),
            Some(json!({"description": "x"})),
        ),
        (
            "PUT",
            format!("/api/v1/policies/{pid}/state"),
            Some(json!({"state": "draft"})),
        ),
        ("DELETE", format!("/api/v1/policies/{pid}"), None),
        (
            "PATCH",
            format!("/api/v1/organizations/{org_a}"),
            Some(json!({"name": "pwned"})),
        ),
    ] {
        let e = plane
            .try_call(m, &path, Some(&b), None, body)
            .await
            .unwrap_err();
        assert_eq!(e.code, "not_found", "{m} {path}: {e:?}");
    }
    let e = grpc
        .get_resource(req(
            pb::GetResourceRequest { id: rid.clone() },
            Some(&b),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = grpc
        .delete_policy(req(
            pb::DeletePolicyRequest { id: pid.clone() },
            Some(&b),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = grpc
        .simulate_policy(req(
            pb::SimulatePolicyRequest {
                policy_id: pid.clone(),
                input_json: "{}".into(),
                ..Default::default()
            },
            Some(&b),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Lists are scoped; naming the other org in the header is refused.
    let list = plane.ok("GET", "/api/v1/resources", &b, None, None).await;
    assert_eq!(list["resources"], json!([]));
    let orgs = grpc
        .list_organizations(req(pb::ListOrganizationsRequest {}, Some(&b), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(orgs.organizations.len(), 1);
    assert_eq!(orgs.organizations[0].id, org_b);
    let e = plane
        .try_call("GET", "/api/v1/resources", Some(&b), Some(&org_a), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    let e = grpc
        .list_resources(req(pb::ListResourcesRequest {}, Some(&b), Some(&org_a)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // The system key sees exactly the org it names.
    let list = plane
        .ok("GET", "/api/v1/resources", SYSTEM_KEY, Some(&org_b), None)
        .await;
    assert_eq!(list["resources"], json!([]));
    let list = plane
        .ok("GET", "/api/v1/resources", SYSTEM_KEY, Some(&org_a), None)
        .await;
    assert_eq!(list["resources"].as_array().unwrap().len(), 1);

    // Audit is scoped too: B's log holds nothing of A's changes.
    let audit_b = plane
        .ok("GET", "/api/v1/audit?limit=1000", &b, None, None)
        .await;
    for e in audit_b["events"].as_array().unwrap() {
        assert_eq!(s(&e["org_id"]), org_b);
        assert!(
            !e.to_string().contains(&rid),
            "B sees A's resource in audit: {e}"
        );
    }

    // A connector of B gets B's config only, and cannot ship into A.
    let conn_b = plane.create_key(&org_b, "b-conn", "connector").await;
    let mut cs = plane.connector();
    let snap = cs
        .get_config(req(pb::GetConfigRequest {}, Some(&conn_b), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.org_id, org_b);
    assert!(snap.resources.is_empty() && snap.policies.is_empty() && snap.identities.is_empty());
    let e = cs
        .get_config(req(pb::GetConfigRequest {}, Some(&conn_b), Some(&org_a)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // And A still has everything.
    let got = plane
        .ok("GET", &format!("/api/v1/resources/{rid}"), &a, None, None)
        .await;
    assert_eq!(got["name"], "secret-db");
    plane.stop().await;
}

// --- connectors ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_token_is_single_use_and_the_credential_works() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = plane.create_org("conn").await;
    let admin = plane.create_key(&org, "admin", "admin").await;
    let created = plane
        .ok(
            "POST",
            "/api/v1/registration-tokens",
            &admin,
            None,
            Some(json!({"name": "edge-1"})),
        )
        .await;
    let token = s(&created["secret"]);
    let ttl = created["token"]["expires_at"].as_i64().unwrap()
        - created["token"]["created_at"].as_i64().unwrap();
    assert_eq!(ttl, 3_600_000, "default lifetime is one hour");

    let mut cs = plane.connector();
    let reg = cs
        .register(req(
            pb::RegisterRequest {
                registration_token: token.clone(),
                version: "1.2.3".into(),
            },
            None,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.org_id, org);
    let again = cs
        .register(req(
            pb::RegisterRequest {
                registration_token: token.clone(),
                version: "1.2.3".into(),
            },
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated);
    assert!(
        again.message().contains("already used"),
        "{}",
        again.message()
    );
    let bogus = cs
        .register(req(
            pb::RegisterRequest {
                registration_token: "gr_nope".into(),
                version: "1".into(),
            },
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(bogus.code(), tonic::Code::Unauthenticated);
    // A withdrawn token cannot be used either.
    let withdrawn = plane
        .ok(
            "POST",
            "/api/v1/registration-tokens",
            &admin,
            None,
            Some(json!({"name": "edge-2", "ttl_seconds": 600})),
        )
        .await;
    plane
        .control()
        .delete_registration_token(req(
            pb::DeleteRegistrationTokenRequest {
                id: s(&withdrawn["token"]["id"]),
            },
            Some(&admin),
            None,
        ))
        .await
        .unwrap();
    let e = cs
        .register(req(
            pb::RegisterRequest {
                registration_token: s(&withdrawn["secret"]),
                version: "1".into(),
            },
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // The credential: heartbeat, config; the connector shows as connected.
    let cred = reg.credential.as_str();
    let hb = cs
        .heartbeat(req(
            pb::HeartbeatRequest {
                version: "1.2.3".into(),
                uptime_s: 5,
                active_sessions: 2,
                resources_served: vec!["db-1".into()],
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(hb.config_revision >= 0);
    let list = plane
        .ok("GET", "/api/v1/connectors", &admin, None, None)
        .await;
    let c = &list["connectors"][0];
    assert_eq!(c["name"], "edge-1");
    assert_eq!(c["status"], "connected");
    assert_eq!(c["active_sessions"], 2);
    let c_grpc = plane
        .control()
        .get_connector(req(
            pb::GetConnectorRequest {
                id: reg.connector_id.clone(),
            },
            Some(&admin),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c_grpc.status, "connected");
    assert_eq!(c_grpc.resources_served, vec!["db-1".to_string()]);
    // A connector credential cannot use the admin API.
    let e = plane
        .try_call("GET", "/api/v1/resources", Some(cred), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    // The token is listed as used.
    let tokens = plane
        .ok("GET", "/api/v1/registration-tokens", &admin, None, None)
        .await;
    assert!(tokens["tokens"][0]["used_at"].as_i64().is_some());

    // Audit shipping is deduplicated by event id.
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let batch: Vec<String> = ids[..3]
        .iter()
        .map(|id| audit_event(id, "alice", "allow"))
        .collect();
    let first = cs
        .ship_audit(req(
            pb::ShipAuditRequest {
                events_json: batch.clone(),
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.inserted, first.duplicates), (3, 0));
    let mut batch2 = batch.clone();
    batch2.push(audit_event(&ids[3], "bob", "block"));
    let second = cs
        .ship_audit(req(
            pb::ShipAuditRequest {
                events_json: batch2,
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.inserted, second.duplicates), (1, 3));
    let bad = cs
        .ship_audit(req(
            pb::ShipAuditRequest {
                events_json: vec!["{not json".into()],
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let shipped = plane
        .ok(
            "GET",
            "/api/v1/audit?kind=policy_decision",
            &admin,
            None,
            None,
        )
        .await;
    assert_eq!(shipped["events"].as_array().unwrap().len(), 4);
    assert_eq!(
        shipped["events"][0]["connector_id"],
        reg.connector_id.as_str()
    );
    let blocked = plane
        .ok(
            "GET",
            "/api/v1/audit?action=block&identity=bob",
            &admin,
            None,
            None,
        )
        .await;
    assert_eq!(blocked["events"].as_array().unwrap().len(), 1);

    // Exports: JSON Lines and CSV over HTTP; the gRPC stream carries the same bytes.
    let resp = plane
        .http
        .get(format!(
            "{}/api/v1/audit/export?format=csv&kind=policy_decision",
            plane.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("time,id,kind,identity"));
    let mut stream = plane
        .control()
        .export_audit(req(
            pb::ExportAuditRequest {
                query: Some(pb::AuditQuery {
                    kind: "policy_decision".into(),
                    ..Default::default()
                }),
                format: "csv".into(),
            },
            Some(&admin),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut grpc_csv = Vec::new();
    while let Some(chunk) = stream.next().await {
        grpc_csv.extend(chunk.unwrap().data);
    }
    assert_eq!(String::from_utf8(grpc_csv).unwrap(), csv);
    let jsonl = plane
        .http
        .get(format!(
            "{}/api/v1/audit/export?format=json&kind=policy_decision",
            plane.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids_exported: Vec<String> = jsonl
        .lines()
        .map(|l| s(&serde_json::from_str::<Value>(l).unwrap()["id"]))
        .collect();
    assert_eq!(ids_exported.len(), 4);
    for id in &ids {
        assert!(ids_exported.contains(id));
    }

    // A recording index registered twice is stored once.
    let index = pb::RecordingIndex {
        key: "2026/11/21/s1.jsonl".into(),
        session_id: "s1".into(),
        kind: "queries".into(),
        resource: "db-1".into(),
        size: 10,
        sha256: "b".repeat(64),
        ..Default::default()
    };
    let r1 = cs
        .register_recording(req(
            pb::RegisterRecordingRequest {
                recording: Some(index.clone()),
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let r2 = cs
        .register_recording(req(
            pb::RegisterRecordingRequest {
                recording: Some(index),
            },
            Some(cred),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r1.id, r2.id);
    let recs = plane
        .ok("GET", "/api/v1/audit?kind=recording", &admin, None, None)
        .await;
    assert_eq!(recs["events"].as_array().unwrap().len(), 1);

    // Deregistration on a clean shutdown: shown as disconnected at once, and the credential
    // still works, so the next start reconnects with a heartbeat.
    cs.deregister(req(pb::DeregisterRequest {}, Some(cred), None))
        .await
        .unwrap();
    let list = plane
        .ok("GET", "/api/v1/connectors", &admin, None, None)
        .await;
    assert_eq!(list["connectors"][0]["status"], "disconnected");
    cs.heartbeat(req(
        pb::HeartbeatRequest {
            version: "test".into(),
            ..Default::default()
        },
        Some(cred),
        None,
    ))
    .await
    .unwrap();
    let list = plane
        .ok("GET", "/api/v1/connectors", &admin, None, None)
        .await;
    assert_eq!(list["connectors"][0]["status"], "connected");

    // Retiring it (an admin's delete) revokes the credential.
    let id = list["connectors"][0]["id"].as_str().unwrap().to_string();
    plane
        .ok(
            "DELETE",
            &format!("/api/v1/connectors/{id}"),
            &admin,
            None,
            None,
        )
        .await;
    let e = cs
        .get_config(req(pb::GetConfigRequest {}, Some(cred), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_current_snapshot_then_every_change() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = plane.create_org("watch").await;
    let editor = plane.create_key(&org, "editor", "editor").await;
    let conn = plane.create_key(&org, "conn", "connector").await;
    plane
        .ok(
            "POST",
            "/api/v1/resources",
            &editor,
            None,
            Some(resource_json("db-1")),
        )
        .await;
    let mut stream = plane
        .connector()
        .watch(req(
            pb::WatchRequest { known_revision: 0 },
            Some(&conn),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 1);
    assert!(first.policies.is_empty());

    // A draft policy does not reach connectors; activating it does, within 2 s.
    let p = plane
        .ok(
            "POST",
            "/api/v1/policies",
            &editor,
            None,
            Some(json!({"name": "no-drops", "stages": ["pre_request"], "rego": GOOD_REGO})),
        )
        .await;
    let draft_snapshot = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a snapshot for the new revision")
        .unwrap()
        .unwrap();
    assert!(draft_snapshot.revision > first.revision);
    assert!(draft_snapshot.policies.is_empty(), "drafts are not shipped");
    let started = Instant::now();
    plane
        .ok(
            "PUT",
            &format!("/api/v1/policies/{}/state", s(&p["id"])),
            &editor,
            None,
            Some(json!({"state": "active"})),
        )
        .await;
    let active = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("the activation arrives within 2 s")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(active.policies.len(), 1);
    assert_eq!(active.policies[0].state, "active");
    assert_eq!(active.policies[0].rego, GOOD_REGO);
    eprintln!("policy activation reached the watch in {took:?}");
    plane.stop().await;
}

// --- policies ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_does_not_compile_is_refused_with_the_compiler_message() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = plane.create_org("pol").await;
    let editor = plane.create_key(&org, "editor", "editor").await;

    let e = plane
        .try_call(
            "POST",
            "/api/v1/policies",
            Some(&editor),
            None,
            Some(json!({"name": "bad", "stages": ["pre_request"], "rego": BAD_REGO})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    assert!(e.message.contains("compile error"), "{}", e.message);
    // A package without the stage's rule is refused too, naming the rule.
    let e = plane
        .try_call(
            "POST",
            "/api/v1/policies",
            Some(&editor),
            None,
            Some(json!({"name": "wrong-stage", "stages": ["session"], "rego": GOOD_REGO})),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("session"), "{}", e.message);
    // Unknown stages and states are refused before compiling.
    let e = plane
        .try_call(
            "POST",
            "/api/v1/policies",
            Some(&editor),
            None,
            Some(json!({"name": "x", "stages": ["sometimes"], "rego": GOOD_REGO})),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("unknown stage"), "{}", e.message);

    // A good draft cannot be updated into a broken one; its version stays.
    let p = plane
        .ok(
            "POST",
            "/api/v1/policies",
            &editor,
            None,
            Some(json!({"name": "good", "stages": ["pre_request"], "rego": GOOD_REGO})),
        )
        .await;
    let id = s(&p["id"]);
    let e = plane
        .try_call(
            "PATCH",
            &format!("/api/v1/policies/{id}"),
            Some(&editor),
            None,
            Some(json!({"rego": BAD_REGO})),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("compile error"), "{}", e.message);
    let e = plane
        .control()
        .update_policy(req(
            pb::UpdatePolicyRequest {
                id: id.clone(),
                rego: Some(BAD_REGO.into()),
                ..Default::default()
            },
            Some(&editor),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("compile error"));
    let p = plane
        .ok(
            "GET",
            &format!("/api/v1/policies/{id}"),
            &editor,
            None,
            None,
        )
        .await;
    assert_eq!(p["version"], 1);
    assert_eq!(p["rego"], GOOD_REGO);

    // Simulating draft Rego: allow for a SELECT, block for a DROP; broken Rego is refused.
    let sim = |query_type: &str| json!({"rego": GOOD_REGO, "stage": "pre_request", "input": {"query": {"type": query_type}}});
    let allow = plane
        .ok(
            "POST",
            "/api/v1/policies/simulate",
            &editor,
            None,
            Some(sim("select")),
        )
        .await;
    assert_eq!(allow["decision"]["action"], "allow");
    let block = plane
        .ok(
            "POST",
            "/api/v1/policies/simulate",
            &editor,
            None,
            Some(sim("drop")),
        )
        .await;
    assert_eq!(block["decision"]["action"], "block");
    assert_eq!(block["decision"]["reason"], "no drops");
    let e = plane
        .try_call(
            "POST",
            "/api/v1/policies/simulate",
            Some(&editor),
            None,
            Some(json!({"rego": BAD_REGO, "stage": "pre_request", "input": {}})),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("compile error"));
    // Simulation is a read: readonly keys may do it.
    let ro = plane.create_key(&org, "ro", "readonly").await;
    plane
        .ok(
            "POST",
            "/api/v1/policies/simulate",
            &ro,
            None,
            Some(sim("drop")),
        )
        .await;
    plane.stop().await;
}

// --- metrics, health, TLS ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_area_and_surface() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = plane.create_org("m").await;
    let key = plane.create_key(&org, "ro", "readonly").await;
    plane.ok("GET", "/api/v1/resources", &key, None, None).await;
    let _ = plane
        .control()
        .list_policies(req(pb::ListPoliciesRequest {}, Some(&key), None))
        .await
        .unwrap();
    let _ = plane
        .connector()
        .get_config(req(pb::GetConfigRequest {}, Some(&key), None))
        .await
        .unwrap_err();
    let text = plane
        .http
        .get(format!("{}/metrics", plane.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"gate_control_requests_total{area="resources",code="200",surface="http"} 1"#,
        r#"gate_control_requests_total{area="policies",code="0",surface="grpc"} 1"#,
        r#"gate_control_requests_total{area="connector",code="7",surface="grpc"} 1"#,
        "gate_control_request_duration_seconds_bucket",
        "gate_control_audit_ingest_backlog 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Unknown routes: JSON 404 on HTTP, Unimplemented on gRPC.
    let e = plane
        .try_call("GET", "/api/v1/nothing-here", Some(&key), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_found");
    let resp = plane
        .http
        .post(format!("{}/gate.v1.Nope/Nothing", plane.base))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("12"),
        "unknown gRPC methods are Unimplemented: {resp:?}"
    );
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http_and_grpc_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let certs = gate_test_support::certs::TestCerts::generate(&dir.path().join("certs")).unwrap();
    let dsn = format!("sqlite://{}", dir.path().join("c.db").display());
    let cfg = config(
        &dsn,
        SYSTEM_KEY,
        &format!(
            "tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
            certs.cert_path.display(),
            certs.key_path.display()
        ),
    );
    let running = gate_control::start(&cfg, StartOptions::default())
        .await
        .unwrap();
    let port = running.local_addr().port();
    let ca_pem = std::fs::read(&certs.ca_pem_path).unwrap();

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let health = gate_test_support::wait_until("TLS /health", Duration::from_secs(30), || {
        let http = http.clone();
        let url = format!("{base}/health");
        async move {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await
    .unwrap();
    assert_eq!(health.status(), 200);
    let whoami: Value = http
        .get(format!("{base}/api/v1/whoami"))
        .bearer_auth(SYSTEM_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["role"], "system");

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(base.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let who = gate_proto::v1::control_plane_service_client::ControlPlaneServiceClient::new(channel)
        .who_am_i(req(pb::WhoAmIRequest {}, Some(SYSTEM_KEY), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.role, "system");
    assert_eq!(who.actor, "system");
    running.shutdown().await;
}

// --- the system key ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_api_key_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!("sqlite://{}", dir.path().join("c.db").display());
    let cfg = config(&dsn, "", "");
    let err = gate_control::start(&cfg, StartOptions::default())
        .await
        .err()
        .expect("refuses to start without a key");
    assert!(format!("{err:#}").contains("--insecure"), "{err:#}");

    let plane = Plane::start_with(cfg, StartOptions { insecure: true }, dir).await;
    let who = plane.ok_anonymous("/api/v1/whoami").await;
    assert_eq!(who["role"], "system");
    let org = plane
        .call(
            "POST",
            "/api/v1/organizations",
            None,
            None,
            Some(json!({"name": "open"})),
        )
        .await;
    assert_eq!(org.0, 201);
    // Keys still authenticate as themselves: an org key is not promoted.
    let key = plane
        .create_key_anonymous(&s(&org.1["id"]), "ro", "readonly")
        .await;
    let e = plane
        .try_call(
            "POST",
            "/api/v1/api-keys",
            Some(&key),
            None,
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_an_empty_api_key_without_insecure() {
    let bin = tokio::task::spawn_blocking(|| gate_test_support::cargo_bin("gate-control"))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.yaml");
    std::fs::write(
        &config,
        format!(
            "listen_addr: \"127.0.0.1:{}\"\napi_key: \"${{TEST_EMPTY_KEY:-}}\"\ndatabase: {{dsn: \"sqlite://{}\"}}\nlogging: {{level: warn, format: text}}\n",
            gate_test_support::free_port(),
            dir.path().join("c.db").display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env_remove("GATE_INSECURE")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");

    // `check` validates without starting.
    let out = tokio::process::Command::new(&bin)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With --insecure it starts and answers without a key.
    let port = gate_test_support::free_port();
    std::fs::write(
        &config,
        format!(
            "listen_addr: \"127.0.0.1:{port}\"\napi_key: \"\"\ndatabase: {{dsn: \"sqlite://{}\"}}\nlogging: {{level: warn, format: text}}\n",
            dir.path().join("c.db").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env("GATE_INSECURE", "true")
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/whoami");
    let who: Value =
        gate_test_support::wait_until("gate-control --insecure", Duration::from_secs(60), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.json::<Value>().await.ok()
            }
        })
        .await
        .unwrap();
    assert_eq!(who["role"], "system");
    // SIGTERM ends it cleanly; the unauthenticated request was logged at warn.
    let pid = child.id().unwrap() as i32;
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unauthenticated request accepted"),
        "{stderr}"
    );
}
