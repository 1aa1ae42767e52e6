//! Just-in-time access over HTTP: request → approve by an approver → the grant is in the
//! connector snapshot; self-approval and non-approvers refused; deny, cancel, revoke and
//! expiry (by the background sweep); every transition audited.

mod common;

use std::time::Duration;

use common::*;
use gate_store::OrgId;
use serde_json::{Value, json};

struct Org {
    id: String,
    editor: String,
    reader: String,
    admin: String,
}

async fn setup(plane: &Plane, rules: Value) -> Org {
    let id = plane.create_org("acme").await;
    let editor = plane.create_key(&id, "ed", "editor").await;
    let reader = plane.create_key(&id, "ro", "readonly").await;
    let admin = plane.create_key(&id, "ad", "admin").await;
    for (name, groups) in [
        ("alice", json!(["dev"])),
        ("bob", json!(["sre"])),
        ("carol", json!(["dba", "dev"])),
        ("mallory", json!(["dev"])),
    ] {
        plane
            .ok(
                "POST",
                "/api/v1/identities",
                &editor,
                Some(&id),
                Some(json!({"name": name, "groups": groups})),
            )
            .await;
    }
    for r in ["prod-db", "staging-db"] {
        plane
            .ok(
                "POST",
                "/api/v1/resources",
                &editor,
                Some(&id),
                Some(resource_json(r)),
            )
            .await;
    }
    // Editors may not change approval rules; admins may.
    let err = plane
        .try_call(
            "PUT",
            "/api/v1/approval-rules",
            Some(&editor),
            Some(&id),
            Some(rules.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    let got = plane
        .ok(
            "PUT",
            "/api/v1/approval-rules",
            &admin,
            Some(&id),
            Some(rules),
        )
        .await;
    assert_eq!(
        plane
            .ok("GET", "/api/v1/approval-rules", &reader, Some(&id), None)
            .await,
        got
    );
    Org {
        id,
        editor,
        reader,
        admin,
    }
}

fn default_rules() -> Value {
    json!({
        "default_approver_groups": ["sre"],
        "resources": {"prod-db": {"approver_groups": ["sre", "dba"], "max_duration_s": 1800}}
    })
}

async fn request(plane: &Plane, org: &Org, requester: &str, resource: &str, dur: i64) -> Value {
    let (status, v) = plane
        .call(
            "POST",
            "/api/v1/access-requests",
            Some(&org.editor),
            Some(&org.id),
            Some(json!({
                "requester": requester,
                "resource": resource,
                "reason": "incident 42",
                "requested_duration_s": dur,
                "scopes": {"operation": "read"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn act(
    plane: &Plane,
    org: &Org,
    id: &Value,
    verb: &str,
    who: &str,
    why: &str,
) -> Result<Value, ApiError> {
    plane
        .try_call(
            "POST",
            &format!("/api/v1/access-requests/{}/{verb}", id.as_str().unwrap()),
            Some(&org.editor),
            Some(&org.id),
            Some(json!({"approver": who, "reason": why})),
        )
        .await
}

async fn snapshot_grants(plane: &Plane, org: &Org) -> Vec<String> {
    let org_id: OrgId = org.id.parse().unwrap();
    plane
        .running
        .as_ref()
        .unwrap()
        .control()
        .store()
        .snapshot(org_id)
        .await
        .unwrap()
        .grants
        .iter()
        .map(|g| g.id.to_string())
        .collect()
}

async fn revision(plane: &Plane, org: &Org) -> i64 {
    let org_id: OrgId = org.id.parse().unwrap();
    plane
        .running
        .as_ref()
        .unwrap()
        .control()
        .store()
        .revision(org_id)
        .await
        .unwrap()
}

async fn audit_actions(plane: &Plane, org: &Org) -> Vec<(String, Value)> {
    let v = plane
        .ok(
            "GET",
            "/api/v1/audit?kind=admin_change&limit=500",
            &org.reader,
            Some(&org.id),
            None,
        )
        .await;
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("access_request."))
        })
        .map(|e| (e["action"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

async fn flow(backend: Backend) {
    let plane = Plane::start(backend).await;
    let org = setup(&plane, default_rules()).await;

    // Create: unknown identity or resource refused; readonly keys cannot request.
    let err = plane
        .try_call(
            "POST",
            "/api/v1/access-requests",
            Some(&org.reader),
            Some(&org.id),
            Some(json!({"requester": "alice", "resource": "prod-db", "requested_duration_s": 60})),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    for (who, what) in [("nobody", "prod-db"), ("alice", "no-such-db")] {
        let err = plane
            .try_call(
                "POST",
                "/api/v1/access-requests",
                Some(&org.editor),
                Some(&org.id),
                Some(json!({"requester": who, "resource": what, "requested_duration_s": 60})),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, "not_found", "{who}/{what}");
    }

    let rev0 = revision(&plane, &org).await;
    let a = request(&plane, &org, "alice", "prod-db", 3600).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(a["scopes"], json!({"operation": "read"}));
    let id = &a["id"];

    // Self-approval and non-approvers are refused; nothing changes.
    let err = act(&plane, &org, id, "approve", "alice", "me")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    assert!(err.message.contains("self-approval"), "{}", err.message);
    let err = act(&plane, &org, id, "approve", "mallory", "ok")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    let err = act(&plane, &org, id, "deny", "mallory", "no")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    let err = act(&plane, &org, id, "approve", "ghost", "ok")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    assert_eq!(revision(&plane, &org).await, rev0);

    // Lists: mine, to approve.
    let list = |q: &'static str| {
        let plane = &plane;
        let org = &org;
        async move {
            plane
                .ok(
                    "GET",
                    &format!("/api/v1/access-requests{q}"),
                    &org.reader,
                    Some(&org.id),
                    None,
                )
                .await["access_requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("?mine=alice").await, vec![id.clone()]);
    assert!(list("?mine=bob").await.is_empty());
    assert_eq!(list("?to_approve=bob").await, vec![id.clone()]);
    assert_eq!(list("?to_approve=carol").await, vec![id.clone()]);
    assert!(list("?to_approve=alice").await.is_empty(), "not their own");
    assert!(list("?to_approve=mallory").await.is_empty());
    assert!(list("?status=approved").await.is_empty());

    // Approve by an approver: capped at the resource's max, active in the snapshot.
    let approved = act(&plane, &org, id, "approve", "carol", "on call")
        .await
        .unwrap();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "carol");
    assert_eq!(approved["decision_reason"], "on call");
    let decided = approved["decided_at"].as_i64().unwrap();
    assert_eq!(
        approved["expires_at"].as_i64().unwrap(),
        decided + 1_800_000
    );
    assert_eq!(revision(&plane, &org).await, rev0 + 1);
    assert_eq!(
        snapshot_grants(&plane, &org).await,
        vec![id.as_str().unwrap()]
    );
    assert_eq!(list("?status=approved").await, vec![id.clone()]);
    let got = plane
        .ok(
            "GET",
            &format!("/api/v1/access-requests/{}", id.as_str().unwrap()),
            &org.reader,
            Some(&org.id),
            None,
        )
        .await;
    assert_eq!(got, approved);
    // Decided: a second decision conflicts.
    let err = act(&plane, &org, id, "deny", "bob", "late")
        .await
        .unwrap_err();
    assert_eq!(err.code, "conflict");

    // Revoke: not by a non-approver; by an approver.
    let err = act(&plane, &org, id, "revoke", "mallory", "x")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    let revoked = act(&plane, &org, id, "revoke", "bob", "incident over")
        .await
        .unwrap();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], "bob");
    assert!(snapshot_grants(&plane, &org).await.is_empty());

    // Deny (staging-db uses the org's default approver group: sre only).
    let b = request(&plane, &org, "alice", "staging-db", 600).await;
    let err = act(&plane, &org, &b["id"], "deny", "carol", "no")
        .await
        .unwrap_err();
    assert_eq!(
        err.code, "permission_denied",
        "dba does not approve staging"
    );
    let denied = act(&plane, &org, &b["id"], "deny", "bob", "use staging-ro")
        .await
        .unwrap();
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["decision_reason"], "use staging-ro");

    // Cancel: only the requester.
    let c = request(&plane, &org, "alice", "prod-db", 600).await;
    let err = act(&plane, &org, &c["id"], "cancel", "bob", "")
        .await
        .unwrap_err();
    assert_eq!(err.code, "permission_denied");
    let cancelled = act(&plane, &org, &c["id"], "cancel", "alice", "solved")
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let err = act(&plane, &org, &c["id"], "approve", "bob", "")
        .await
        .unwrap_err();
    assert_eq!(err.code, "conflict");

    // Bad input.
    let err = act(&plane, &org, &json!("not-an-id"), "approve", "bob", "")
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_argument");
    let err = act(&plane, &org, &c["id"], "frobnicate", "bob", "")
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_found");

    // Every transition was audited with who and why.
    let audited = audit_actions(&plane, &org).await;
    let actions: Vec<&str> = audited.iter().map(|(a, _)| a.as_str()).collect();
    for expected in [
        "access_request.create",
        "access_request.approve",
        "access_request.revoke",
        "access_request.deny",
        "access_request.cancel",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let (_, approve) = audited
        .iter()
        .find(|(a, _)| a == "access_request.approve")
        .unwrap();
    let text = approve.to_string();
    assert!(text.contains("carol") && text.contains("on call"), "{text}");

    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_requests_flow_on_sqlite() {
    flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_requests_flow_on_postgres() {
    flow(Backend::Postgres).await;
}

/// The background sweep expires undecided requests after the pending TTL and grants after
/// their duration, audits it and drops the grant from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_and_grants_expire() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org = setup(
        &plane,
        json!({"default_approver_groups": ["sre"], "pending_ttl_s": 1}),
    )
    .await;
    let pending = request(&plane, &org, "alice", "prod-db", 600).await;
    let granted = request(&plane, &org, "alice", "staging-db", 1).await;
    act(&plane, &org, &granted["id"], "approve", "bob", "quick look")
        .await
        .unwrap();
    assert_eq!(snapshot_grants(&plane, &org).await.len(), 1);

    for r in [&pending, &granted] {
        let path = format!("/api/v1/access-requests/{}", r["id"].as_str().unwrap());
        gate_test_support::wait_until("expired", Duration::from_secs(20), || {
            let plane = &plane;
            let org = &org;
            let path = path.clone();
            async move {
                let v = plane
                    .ok("GET", &path, &org.reader, Some(&org.id), None)
                    .await;
                (v["status"] == "expired").then_some(())
            }
        })
        .await
        .unwrap();
    }
    assert!(snapshot_grants(&plane, &org).await.is_empty());
    let err = act(&plane, &org, &pending["id"], "approve", "bob", "late")
        .await
        .unwrap_err();
    assert_eq!(err.code, "conflict");
    let expiries: Vec<Value> = audit_actions(&plane, &org)
        .await
        .into_iter()
        .filter(|(a, _)| a == "access_request.expire")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(expiries.len(), 2, "{expiries:?}");
    assert!(
        expiries
            .iter()
            .all(|e| e.to_string().contains("access-expiry"))
    );
    let _ = &org.admin;
    plane.stop().await;
}

/// The gRPC surface calls the same service functions: same rules, same errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_offers_the_same_operations() {
    use gate_proto::v1 as pb;
    let plane = Plane::start(Backend::Sqlite).await;
    let org = setup(&plane, default_rules()).await;
    let mut client = plane.control();
    let ed = Some(org.editor.as_str());
    let o = Some(org.id.as_str());

    let rules = client
        .get_approval_rules(req(pb::GetApprovalRulesRequest {}, ed, o))
        .await
        .unwrap()
        .into_inner();
    let rules: Value = serde_json::from_str(&rules.rules_json).unwrap();
    assert_eq!(rules["default_approver_groups"], json!(["sre"]));
    let err = client
        .set_approval_rules(req(
            pb::SetApprovalRulesRequest {
                rules_json: "{}".into(),
            },
            ed,
            o,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let r = client
        .create_access_request(req(
            pb::CreateAccessRequestRequest {
                requester: "alice".into(),
                resource: "prod-db".into(),
                reason: "debug".into(),
                requested_duration_s: 600,
                scopes_json: r#"{"operation":"tool","target":"customer_lookup"}"#.into(),
            },
            ed,
            o,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "pending");
    assert_eq!(r.requester, "alice");
    let decide = |approver: &str| pb::DecideAccessRequestRequest {
        id: r.id.clone(),
        approver: approver.into(),
        reason: "why".into(),
    };
    let err = client
        .approve_access_request(req(decide("alice"), ed, o))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let listed = client
        .list_access_requests(req(
            pb::ListAccessRequestsRequest {
                to_approve: "bob".into(),
                ..Default::default()
            },
            ed,
            o,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.access_requests.len(), 1);
    let approved = client
        .approve_access_request(req(decide("bob"), ed, o))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.status, "approved");
    assert_eq!(approved.expires_at, approved.decided_at + 600_000);
    // HTTP shows the same request.
    let http = plane
        .ok(
            "GET",
            &format!("/api/v1/access-requests/{}", r.id),
            &org.reader,
            o,
            None,
        )
        .await;
    assert_eq!(http["status"], "approved");
    assert_eq!(http["expires_at"], approved.expires_at);
    assert_eq!(
        http["scopes"],
        json!({"operation": "tool", "target": "customer_lookup"})
    );
    let got = client
        .get_access_request(req(pb::GetAccessRequestRequest { id: r.id.clone() }, ed, o))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, approved);
    let revoked = client
        .revoke_access_request(req(decide("bob"), ed, o))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, "revoked");
    let err = client
        .cancel_access_request(req(decide("alice"), ed, o))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "conflict: {err:?}");
    let err = client
        .deny_access_request(req(
            pb::DecideAccessRequestRequest {
                id: "nope".into(),
                approver: "bob".into(),
                reason: String::new(),
            },
            ed,
            o,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    plane.stop().await;
}
