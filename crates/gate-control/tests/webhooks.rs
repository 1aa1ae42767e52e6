//! Signed webhooks end to end: a real control plane (in process, SQLite) sends to a receiver
//! that verifies every request with the Python `standardwebhooks` package — the Standard
//! Webhooks reference library, not Gate's code (`gate_test_support::webhook_receiver`).
//!
//! Covered: the management API (roles, validation, secrets shown once), access events
//! delivered exactly once and filtered, retries through an outage, dead letters and their
//! redelivery under the same `webhook-id`, 410 disabling the endpoint, secret rotation with
//! its grace period, session and policy-block events from shipped audit (once, however
//! often a batch is shipped), deliveries surviving a control-plane restart, private
//! targets refused by default (at create and at delivery), owner-only dead letters, and
//! one org's hanging receivers not taking every delivery slot.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gate_control::StartOptions;
use gate_proto::v1 as pb;
use gate_test_support::webhook_receiver::{ReceivedRequest, WebhookReceiver};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Org {
    id: String,
    admin: String,
    editor: String,
    reader: String,
}

/// The tests' usual `delivery:` settings besides the retries: the receivers listen on
/// 127.0.0.1, a private address.
const SETTINGS: &str = "timeout: 3s, max_concurrency: 4, allow_private_targets: true";

/// The `delivery:` section: quick retries and polls so the tests do not wait.
fn delivery_yaml(dead_letters: &Path, retries: &str, settings: &str) -> String {
    format!(
        "delivery: {{dead_letter_dir: \"{}\", retry_schedule: [{retries}], \
         poll_interval: 50ms, {settings}}}\n",
        dead_letters.display()
    )
}

async fn start_plane(db_dir: &Path, dead_letters: &Path) -> Plane {
    start_plane_with(db_dir, dead_letters, "100ms, 100ms, 100ms").await
}

async fn start_plane_with(db_dir: &Path, dead_letters: &Path, retries: &str) -> Plane {
    start_plane_custom(db_dir, &delivery_yaml(dead_letters, retries, SETTINGS)).await
}

async fn start_plane_custom(db_dir: &Path, delivery: &str) -> Plane {
    let dsn = database_url(Backend::Sqlite, db_dir).await;
    let cfg = config(&dsn, SYSTEM_KEY, delivery);
    Plane::start_with(
        cfg,
        StartOptions::default(),
        tempfile::tempdir().expect("tempdir"),
    )
    .await
}

async fn setup(plane: &Plane, name: &str) -> Org {
    let id = plane.create_org(name).await;
    let org = Org {
        admin: plane.create_key(&id, "ad", "admin").await,
        editor: plane.create_key(&id, "ed", "editor").await,
        reader: plane.create_key(&id, "ro", "readonly").await,
        id,
    };
    for (who, groups) in [("alice", json!(["dev"])), ("bob", json!(["sre"]))] {
        plane
            .ok(
                "POST",
                "/api/v1/identities",
                &org.editor,
                Some(&org.id),
                Some(json!({"name": who, "groups": groups})),
            )
            .await;
    }
    plane
        .ok(
            "POST",
            "/api/v1/resources",
            &org.editor,
            Some(&org.id),
            Some(resource_json("prod-db")),
        )
        .await;
    plane
        .ok(
            "PUT",
            "/api/v1/approval-rules",
            &org.admin,
            Some(&org.id),
            Some(json!({"default_approver_groups": ["sre"]})),
        )
        .await;
    org
}

/// Creates an endpoint; returns its id and secret.
async fn endpoint(plane: &Plane, org: &Org, url: &str, events: Value) -> (String, String) {
    let (status, v) = plane
        .call(
            "POST",
            "/api/v1/webhooks",
            Some(&org.admin),
            Some(&org.id),
            Some(json!({"url": url, "description": "test", "events": events})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (v["id"].as_str().expect("id").to_string(), secret)
}

async fn request(plane: &Plane, org: &Org, requester: &str) -> String {
    let v = plane
        .ok(
            "POST",
            "/api/v1/access-requests",
            &org.editor,
            Some(&org.id),
            Some(json!({
                "requester": requester,
                "resource": "prod-db",
                "reason": "incident 42",
                "requested_duration_s": 600,
                "scopes": {"operation": "read"},
            })),
        )
        .await;
    v["id"].as_str().expect("request id").to_string()
}

async fn act(plane: &Plane, org: &Org, id: &str, verb: &str, who: &str) {
    plane
        .ok(
            "POST",
            &format!("/api/v1/access-requests/{id}/{verb}"),
            &org.editor,
            Some(&org.id),
            Some(json!({"approver": who, "reason": format!("{verb} by {who}")})),
        )
        .await;
}

async fn deliveries(plane: &Plane, org: &Org, endpoint: &str, query: &str) -> Vec<Value> {
    let v = plane
        .ok(
            "GET",
            &format!("/api/v1/webhooks/{endpoint}/deliveries{query}"),
            &org.reader,
            Some(&org.id),
            None,
        )
        .await;
    v["deliveries"].as_array().expect("deliveries").clone()
}

/// Polls the deliveries list until `done` holds.
async fn wait_deliveries(
    plane: &Plane,
    org: &Org,
    endpoint: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = deliveries(plane, org, endpoint, "?limit=500").await;
        if done(&list) {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_delivered(list: &[Value], n: usize) -> bool {
    list.len() == n && list.iter().all(|d| d["status"] == "delivered")
}

/// Requests the receiver accepted (verified, 2xx), by `webhook-id`.
fn accepted_by_id(requests: &[ReceivedRequest]) -> HashMap<String, Vec<ReceivedRequest>> {
    let mut out: HashMap<String, Vec<ReceivedRequest>> = HashMap::new();
    for r in requests.iter().filter(|r| r.accepted()) {
        out.entry(r.webhook_id.clone().unwrap_or_default())
            .or_default()
            .push(r.clone());
    }
    out
}

/// A dead letter's text, once written: the worker writes it just after recording the
/// delivery dead.
async fn wait_file(path: &Path) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} not written within {WAIT:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A file's permission bits (`None` where there are none to check).
fn mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).expect("metadata");
        Some(meta.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

async fn audit_actions(plane: &Plane, org: &Org) -> Vec<Value> {
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
                .is_some_and(|a| a.starts_with("webhook."))
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_events_are_signed_filtered_and_delivered_exactly_once() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let plane = start_plane(db.path(), dl.path()).await;
    let org = setup(&plane, "acme").await;
    let other = setup(&plane, "other").await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let rx_cancel = WebhookReceiver::start().await.expect("receiver");

    // Management: admin only for writes, readonly may read; URLs and event names checked.
    let body = json!({"url": rx.url("/hook"), "events": ["access.approved"]});
    for key in [&org.reader, &org.editor] {
        let e = plane
            .try_call(
                "POST",
                "/api/v1/webhooks",
                Some(key),
                Some(&org.id),
                Some(body.clone()),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "permission_denied");
    }
    for (bad, why) in [
        (json!({"url": "ftp://hooks.example/x"}), "http"),
        (json!({"url": "not a url"}), "URL"),
        (
            json!({"url": rx.url("/hook"), "events": ["access.aproved"]}),
            "unknown webhook event type",
        ),
        (json!({"url": rx.url("/hook"), "events": []}), "empty"),
        (
            json!({"url": rx.url("/hook"), "secret": "whsec_x"}),
            "unknown field",
        ),
    ] {
        let e = plane
            .try_call(
                "POST",
                "/api/v1/webhooks",
                Some(&org.admin),
                Some(&org.id),
                Some(bad.clone()),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_argument", "{bad}");
        assert!(e.message.contains(why), "{bad}: {}", e.message);
    }

    let (ep, secret) = endpoint(
        &plane,
        &org,
        &rx.url("/hook"),
        json!([
            "access.requested",
            "access.approved",
            "access.denied",
            "access.revoked"
        ]),
    )
    .await;
    let (ep_cancel, secret_cancel) = endpoint(
        &plane,
        &org,
        &rx_cancel.url("/cancelled"),
        json!(["access.cancelled"]),
    )
    .await;
    rx.set_secrets(&[&secret]).await.unwrap();
    rx_cancel.set_secrets(&[&secret_cancel]).await.unwrap();

    // Secrets are shown once: never by list or get.
    let key_part = &secret["whsec_".len()..];
    let listed = plane
        .ok("GET", "/api/v1/webhooks", &org.reader, Some(&org.id), None)
        .await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(key_part), "{listed}");
    let one = plane
        .ok(
            "GET",
            &format!("/api/v1/webhooks/{ep}"),
            &org.reader,
            Some(&org.id),
            None,
        )
        .await;
    assert!(one.get("secret").is_none(), "{one}");
    assert_eq!(one["events"].as_array().unwrap().len(), 4);
    assert_eq!(one["disabled"], false);
    // Another org does not see it.
    let e = plane
        .try_call(
            "GET",
            &format!("/api/v1/webhooks/{ep}"),
            Some(&other.admin),
            Some(&other.id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_found");
    let e = plane
        .try_call(
            "GET",
            &format!("/api/v1/webhooks/{ep}/deliveries"),
            Some(&other.admin),
            Some(&other.id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_found");

    // The access flow: requested → approved → revoked; requested → denied; requested →
    // cancelled (not in this endpoint's filter). Another org's events never arrive here.
    let a = request(&plane, &org, "alice").await;
    act(&plane, &org, &a, "approve", "bob").await;
    act(&plane, &org, &a, "revoke", "bob").await;
    let b = request(&plane, &org, "alice").await;
    act(&plane, &org, &b, "deny", "bob").await;
    let c = request(&plane, &org, "alice").await;
    act(&plane, &org, &c, "cancel", "alice").await;
    let _elsewhere = request(&plane, &other, "alice").await;

    // Each event is queued right after its change commits: six deliveries, whatever
    // state each is in by now.
    let queued = wait_deliveries(&plane, &org, &ep, "six queued", |l| l.len() >= 6).await;
    let mut types: Vec<&str> = queued
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "access.approved",
            "access.denied",
            "access.requested",
            "access.requested",
            "access.requested",
            "access.revoked"
        ]
    );
    let list = wait_deliveries(&plane, &org, &ep, "six delivered", |l| all_delivered(l, 6)).await;

    // The receiver verified each with the Python reference library and saw each exactly
    // once, under the event's id.
    let requests = rx.requests();
    assert!(
        requests.iter().all(|r| r.verified()),
        "every request verifies: {requests:#?}"
    );
    assert!(requests.iter().all(|r| r.signatures == 1));
    assert!(
        requests
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/json"))
    );
    let by_id = accepted_by_id(&requests);
    assert_eq!(by_id.len(), 6, "{requests:#?}");
    assert!(
        by_id.values().all(|v| v.len() == 1),
        "exactly once: {by_id:#?}"
    );
    for d in &list {
        let id = d["event_id"].as_str().unwrap();
        assert!(id.starts_with("evt_"), "{id}");
        let seen = &by_id[id][0];
        assert_eq!(seen.event_type(), d["event_type"].as_str());
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["last_status"], 204);
        assert_eq!(seen.payload.as_ref().unwrap(), &d["payload"]);
    }
    let payload_of = |kind: &str, request_id: &str| -> Value {
        requests
            .iter()
            .filter_map(|r| r.payload.clone())
            .find(|p| p["type"] == kind && p["data"]["id"] == request_id)
            .unwrap_or_else(|| panic!("{kind} of {request_id} not received"))
    };
    let approved = payload_of("access.approved", &a);
    let data = &approved["data"];
    assert_eq!(data["org_id"], org.id.as_str());
    assert_eq!(data["requester"], "alice");
    assert_eq!(data["resource"], "prod-db");
    assert!(data["resource_id"].is_string(), "{data}");
    assert_eq!(data["reason"], "incident 42");
    assert_eq!(data["duration_s"], 600);
    assert_eq!(data["status"], "approved");
    assert_eq!(data["scopes"]["operation"], "read");
    assert_eq!(data["approved_by"], "bob");
    assert!(
        data["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(approved["timestamp"].is_string());
    let denied = payload_of("access.denied", &b);
    assert_eq!(denied["data"]["denied_by"], "bob");
    assert!(denied["data"].get("approved_by").is_none());
    let revoked = payload_of("access.revoked", &a);
    assert_eq!(revoked["data"]["revoked_by"], "bob");

    // The cancellation went to the endpoint that asked for it, once, and nowhere else.
    let got = rx_cancel
        .wait_for("access.cancelled", WAIT, |r| {
            r.iter().filter(|r| r.accepted()).count() == 1
        })
        .await
        .unwrap();
    assert_eq!(got[0].event_type(), Some("access.cancelled"));
    assert_eq!(got[0].payload.as_ref().unwrap()["data"]["id"], c.as_str());
    assert!(
        !requests
            .iter()
            .any(|r| r.event_type() == Some("access.cancelled"))
    );
    assert_eq!(deliveries(&plane, &org, &ep_cancel, "").await.len(), 1);

    // Changes are audited, without the secret.
    let audit = audit_actions(&plane, &org).await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "webhook.create")
            .count(),
        2
    );
    assert!(!Value::Array(audit.clone()).to_string().contains(key_part));

    // Update the filter, then delete: deliveries go with the endpoint.
    let updated = plane
        .ok(
            "PATCH",
            &format!("/api/v1/webhooks/{ep}"),
            &org.admin,
            Some(&org.id),
            Some(json!({"events": ["policy.*"]})),
        )
        .await;
    assert_eq!(updated["events"], json!(["policy.*"]));
    let before = rx.requests().len();
    let d = request(&plane, &org, "alice").await;
    assert_eq!(deliveries(&plane, &org, &ep, "").await.len(), 6, "{d}");
    let e = plane
        .try_call(
            "DELETE",
            &format!("/api/v1/webhooks/{ep}"),
            Some(&org.reader),
            Some(&org.id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    let (status, _) = plane
        .call(
            "DELETE",
            &format!("/api/v1/webhooks/{ep}"),
            Some(&org.admin),
            Some(&org.id),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let e = plane
        .try_call(
            "GET",
            &format!("/api/v1/webhooks/{ep}/deliveries"),
            Some(&org.reader),
            Some(&org.id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_found");
    assert_eq!(rx.requests().len(), before);
    let audit = audit_actions(&plane, &org).await;
    for action in ["webhook.update", "webhook.delete"] {
        assert!(audit.iter().any(|e| e["action"] == action), "{action}");
    }
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_retries_dead_letters_redelivery_and_gone() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let plane = start_plane(db.path(), dl.path()).await;
    let org = setup(&plane, "acme").await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let (ep, secret) = endpoint(&plane, &org, &rx.url("/hook"), json!(["access.requested"])).await;
    rx.set_secrets(&[&secret]).await.unwrap();

    // A short outage: two 503s, then the third attempt lands.
    rx.fail_next(503, 2).await.unwrap();
    request(&plane, &org, "alice").await;
    let list = wait_deliveries(&plane, &org, &ep, "delivered after retries", |l| {
        all_delivered(l, 1)
    })
    .await;
    let first = &list[0];
    assert_eq!(first["attempts"], 3);
    let id = first["event_id"].as_str().unwrap().to_string();
    let attempts: Vec<ReceivedRequest> = rx
        .requests()
        .into_iter()
        .filter(|r| r.webhook_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(
        attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503, 503, 204],
        "{attempts:#?}"
    );
    assert!(
        attempts.iter().all(|r| r.verified()),
        "each attempt is signed"
    );

    // A long outage: out of retries (1 + 3 attempts) → dead, dead letter written.
    rx.fail_next(503, -1).await.unwrap();
    request(&plane, &org, "alice").await;
    let list = wait_deliveries(&plane, &org, &ep, "dead", |l| {
        l.iter().any(|d| d["status"] == "dead")
    })
    .await;
    let dead = list.iter().find(|d| d["status"] == "dead").unwrap().clone();
    assert_eq!(dead["attempts"], 4);
    assert_eq!(dead["last_status"], 503);
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503") && e.contains("no retries left")),
        "{dead}"
    );
    let dead_id = dead["id"].as_str().unwrap().to_string();
    let dead_event = dead["event_id"].as_str().unwrap().to_string();
    let letter: PathBuf = dl.path().join(&org.id).join(format!("{dead_id}.json"));
    let text = wait_file(&letter).await;
    // It holds identities and payloads: owner-only, like the directory Gate made for it.
    assert_eq!(mode(&letter), Some(0o600));
    assert_eq!(mode(letter.parent().unwrap()), Some(0o700));
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["event_id"], dead_event.as_str());
    assert_eq!(record["endpoint_id"], ep.as_str());
    assert_eq!(record["attempts"], 4);
    assert_eq!(record["payload"]["type"], "access.requested");
    assert!(!text.contains(&secret["whsec_".len()..]));
    let listed_dead = deliveries(&plane, &org, &ep, "?status=dead").await;
    assert_eq!(listed_dead.len(), 1);
    assert_eq!(listed_dead[0]["id"], dead_id.as_str());
    let failed: Vec<ReceivedRequest> = rx
        .requests()
        .into_iter()
        .filter(|r| r.webhook_id.as_deref() == Some(dead_event.as_str()))
        .collect();
    assert_eq!(failed.len(), 4);
    assert!(failed.iter().all(|r| r.answered == 503 && r.verified()));

    // The receiver is back: redeliver through the API (admin only) → the same webhook-id,
    // fresh timestamp and signature, seen exactly once.
    rx.recover().await.unwrap();
    let path = format!("/api/v1/webhooks/{ep}/deliveries/{dead_id}/redeliver");
    let e = plane
        .try_call("POST", &path, Some(&org.reader), Some(&org.id), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    let (status, v) = plane
        .call("POST", &path, Some(&org.admin), Some(&org.id), None)
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "pending");
    wait_deliveries(&plane, &org, &ep, "redelivered", |l| all_delivered(l, 2)).await;
    let again: Vec<ReceivedRequest> = rx
        .requests()
        .into_iter()
        .filter(|r| r.webhook_id.as_deref() == Some(dead_event.as_str()))
        .collect();
    assert_eq!(again.len(), 5);
    let accepted: Vec<&ReceivedRequest> = again.iter().filter(|r| r.accepted()).collect();
    assert_eq!(accepted.len(), 1, "exactly once overall: {again:#?}");
    let ts =
        |r: &ReceivedRequest| -> i64 { r.webhook_timestamp.as_deref().unwrap().parse().unwrap() };
    assert!(ts(accepted[0]) >= ts(&failed[3]));
    // The dead letter goes once redelivered (just after the delivery is recorded).
    let deadline = std::time::Instant::now() + WAIT;
    while letter.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead letter stays after a redelivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = audit_actions(&plane, &org).await;
    assert!(audit.iter().any(|e| e["action"] == "webhook.redeliver"));

    // 410 Gone: no retries, the endpoint is disabled (and that audited), nothing more queued.
    rx.fail_next(410, -1).await.unwrap();
    request(&plane, &org, "alice").await;
    let deadline = std::time::Instant::now() + WAIT;
    let disabled = loop {
        let v = plane
            .ok(
                "GET",
                &format!("/api/v1/webhooks/{ep}"),
                &org.reader,
                Some(&org.id),
                None,
            )
            .await;
        if v["disabled"] == true {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "not disabled: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{disabled}"
    );
    let list = wait_deliveries(&plane, &org, &ep, "gone", |l| {
        l.iter()
            .any(|d| d["status"] == "dead" && d["last_status"] == 410)
    })
    .await;
    let gone = list.iter().find(|d| d["last_status"] == 410).unwrap();
    assert_eq!(gone["attempts"], 1);
    let gone_id = gone["id"].as_str().unwrap().to_string();
    let gone_event = gone["event_id"].as_str().unwrap();
    assert_eq!(
        rx.requests()
            .iter()
            .filter(|r| r.webhook_id.as_deref() == Some(gone_event))
            .count(),
        1
    );
    let audit = audit_actions(&plane, &org).await;
    let disable = audit
        .iter()
        .find(|e| e["action"] == "webhook.disable")
        .expect("webhook.disable audited");
    assert_eq!(disable["identity"], "webhook-delivery");
    let count = list.len();
    request(&plane, &org, "alice").await;
    assert_eq!(deliveries(&plane, &org, &ep, "").await.len(), count);
    let e = plane
        .try_call(
            "POST",
            &format!("/api/v1/webhooks/{ep}/deliveries/{gone_id}/redeliver"),
            Some(&org.admin),
            Some(&org.id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "conflict");
    assert!(e.message.contains("disabled"), "{}", e.message);

    // Enabled again (by an admin), the dead one can be redelivered.
    rx.recover().await.unwrap();
    let enabled = plane
        .ok(
            "PATCH",
            &format!("/api/v1/webhooks/{ep}"),
            &org.admin,
            Some(&org.id),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(enabled["disabled"], false);
    assert!(enabled["disabled_reason"].is_null());
    plane
        .ok(
            "POST",
            &format!("/api/v1/webhooks/{ep}/deliveries/{gone_id}/redeliver"),
            &org.admin,
            Some(&org.id),
            None,
        )
        .await;
    wait_deliveries(&plane, &org, &ep, "gone one redelivered", |l| {
        l.iter()
            .any(|d| d["id"] == gone_id.as_str() && d["status"] == "delivered")
    })
    .await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_valid_for_the_grace_period() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let plane = start_plane(db.path(), dl.path()).await;
    let org = setup(&plane, "acme").await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let (ep, s1) = endpoint(&plane, &org, &rx.url("/hook"), json!(["access.*"])).await;

    let event_verified_with = |secrets: Vec<String>| {
        let plane = &plane;
        let org = &org;
        let rx = &rx;
        async move {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            rx.set_secrets(&refs).await.unwrap();
            let before = rx.requests().len();
            request(plane, org, "alice").await;
            let got = rx
                .wait_for("one more request", WAIT, |r| r.len() > before)
                .await
                .unwrap();
            got[before].clone()
        }
    };

    let r = event_verified_with(vec![s1.clone()]).await;
    assert_eq!(r.verified_with, [true]);
    assert_eq!(r.signatures, 1);

    // Rotate (default grace, 24h): the new secret is returned once; both sign meanwhile,
    // so a receiver still on the old secret verifies, and one on the new secret does too.
    let path = format!("/api/v1/webhooks/{ep}/rotate-secret");
    let e = plane
        .try_call("POST", &path, Some(&org.reader), Some(&org.id), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "permission_denied");
    let e = plane
        .try_call(
            "POST",
            &path,
            Some(&org.admin),
            Some(&org.id),
            Some(json!({"grace_period": "later"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    let rotated = plane
        .ok("POST", &path, &org.admin, Some(&org.id), None)
        .await;
    let s2 = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(s2, s1);
    let grace_end = rotated["previous_secret_expires_at"].as_i64().unwrap();
    let now = gate_store::time::now_ms();
    assert!(
        (now + 23 * 3_600_000..=now + 24 * 3_600_000).contains(&grace_end),
        "{rotated}"
    );
    let shown = plane
        .ok(
            "GET",
            &format!("/api/v1/webhooks/{ep}"),
            &org.reader,
            Some(&org.id),
            None,
        )
        .await;
    assert!(shown.get("secret").is_none());
    let r = event_verified_with(vec![s1.clone(), s2.clone()]).await;
    assert_eq!(r.signatures, 2);
    assert_eq!(r.verified_with, [true, true], "{r:#?}");

    // Rotate without grace: the old secret stops signing at once.
    let rotated = plane
        .ok(
            "POST",
            &path,
            &org.admin,
            Some(&org.id),
            Some(json!({"grace_period": "0s"})),
        )
        .await;
    let s3 = rotated["secret"].as_str().unwrap().to_string();
    assert!(rotated["previous_secret_expires_at"].is_null());
    let r = event_verified_with(vec![s2.clone(), s3.clone()]).await;
    assert_eq!(r.signatures, 1);
    assert_eq!(r.verified_with, [false, true], "{r:#?}");
    assert!(
        r.errors[0]
            .as_deref()
            .is_some_and(|e| e.contains("No matching signature")),
        "{r:#?}"
    );
    let audit = audit_actions(&plane, &org).await;
    let rotations: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "webhook.rotate_secret")
        .collect();
    assert_eq!(rotations.len(), 2);
    let text = serde_json::to_string(&audit).unwrap();
    for s in [&s1, &s2, &s3] {
        assert!(!text.contains(&s["whsec_".len()..]));
    }
    plane.stop().await;
}

fn audit_line(id: &str, kind: &str, action: Option<&str>, dry_run: bool) -> String {
    let mut e = json!({
        "id": id,
        "time": "2026-11-21T10:00:00.000000Z",
        "kind": kind,
        "session_id": "0190f0e0-0000-7000-8000-0000000000aa",
        "identity": {"sub": "u-alice", "name": "alice", "email": "alice@example.com"},
        "resource": "db-1",
        "protocol": "postgres",
        "client_addr": "10.1.2.3:50000",
    });
    if let Some(action) = action {
        e["stage"] = json!("pre_request");
        e["action"] = json!(action);
        e["reason"] = json!("no drops");
        e["statement"] = json!("DROP TABLE secret_things");
        e["query_type"] = json!("drop");
    }
    if dry_run {
        e["dry_run"] = json!(true);
    }
    if kind == "session_end" {
        e["reason"] = json!("client closed");
        e["details"] = json!({"queries": 3, "blocked": 1, "errors": 0, "note": "text is dropped"});
    }
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_policy_block_events_from_shipped_audit_arrive_once() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let plane = start_plane(db.path(), dl.path()).await;
    let org = setup(&plane, "acme").await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let (ep, secret) = endpoint(
        &plane,
        &org,
        &rx.url("/hook"),
        json!(["session.*", "policy.blocked"]),
    )
    .await;
    rx.set_secrets(&[&secret]).await.unwrap();
    let connector_key = plane.create_key(&org.id, "edge", "connector").await;

    let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let batch = vec![
        audit_line(&ids[0], "session_start", None, false),
        audit_line(&ids[1], "policy_decision", Some("allow"), false),
        audit_line(&ids[2], "policy_decision", Some("block"), false),
        // A dry run's would-be block is not enforced: no event.
        audit_line(&ids[3], "policy_decision", Some("block"), true),
        audit_line(&ids[4], "session_end", None, false),
    ];
    let mut cs = plane.connector();
    for round in 0..2 {
        let shipped = cs
            .ship_audit(req(
                pb::ShipAuditRequest {
                    events_json: batch.clone(),
                },
                Some(&connector_key),
                None,
            ))
            .await
            .expect("ship audit")
            .into_inner();
        let expected = if round == 0 { (5, 0) } else { (0, 5) };
        assert_eq!((shipped.inserted, shipped.duplicates), expected);
        // Three events, however often the batch is shipped.
        wait_deliveries(&plane, &org, &ep, "three queued", |l| l.len() >= 3).await;
        assert_eq!(deliveries(&plane, &org, &ep, "").await.len(), 3);
    }
    wait_deliveries(&plane, &org, &ep, "three delivered", |l| {
        all_delivered(l, 3)
    })
    .await;
    let requests = rx.requests();
    let by_id = accepted_by_id(&requests);
    assert_eq!(by_id.len(), 3, "{requests:#?}");
    assert!(by_id.values().all(|v| v.len() == 1));
    let types: HashSet<&str> = requests.iter().filter_map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        HashSet::from(["session.started", "policy.blocked", "session.ended"])
    );
    let payload = |kind: &str| {
        requests
            .iter()
            .find(|r| r.event_type() == Some(kind))
            .and_then(|r| r.payload.clone())
            .unwrap()
    };
    let started = payload("session.started");
    assert_eq!(started["timestamp"], "2026-11-21T10:00:00.000000Z");
    let data = &started["data"];
    assert_eq!(data["session_id"], "0190f0e0-0000-7000-8000-0000000000aa");
    assert_eq!(data["identity"], "alice");
    assert_eq!(data["subject"], "u-alice");
    assert_eq!(data["email"], "alice@example.com");
    assert_eq!(data["resource"], "db-1");
    assert_eq!(data["protocol"], "postgres");
    assert_eq!(data["client_addr"], "10.1.2.3:50000");
    assert_eq!(data["audit_event_id"], ids[0].as_str());
    assert_eq!(data["org_id"], org.id.as_str());
    let blocked = payload("policy.blocked");
    let data = &blocked["data"];
    assert_eq!(data["audit_event_id"], ids[2].as_str());
    assert_eq!(data["reason"], "no drops");
    assert_eq!(data["stage"], "pre_request");
    assert_eq!(data["query_type"], "drop");
    assert!(
        !blocked.to_string().contains("secret_things"),
        "the statement is not sent: {blocked}"
    );
    let ended = payload("session.ended");
    assert_eq!(ended["data"]["reason"], "client closed");
    assert_eq!(
        ended["data"]["summary"],
        json!({"queries": 3, "blocked": 1, "errors": 0})
    );
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_delivery_survives_a_control_plane_restart() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    // The retry comes 5 s after a failure: long enough to stop the control plane with the
    // delivery still pending.
    let plane = start_plane_with(db.path(), dl.path(), "5s").await;
    let org = setup(&plane, "acme").await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let (ep, secret) = endpoint(&plane, &org, &rx.url("/hook"), json!(["access.requested"])).await;
    rx.set_secrets(&[&secret]).await.unwrap();
    // The first attempt fails; the control plane stops before the retry is due.
    rx.fail_next(503, 1).await.unwrap();
    request(&plane, &org, "alice").await;
    rx.wait_for("the first attempt", WAIT, |r| !r.is_empty())
        .await
        .unwrap();
    plane.stop().await;
    let pending = rx.requests();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].answered, 503);
    // A restart on the same database: the delivery is still queued and goes out.
    let plane = start_plane_with(db.path(), dl.path(), "5s").await;
    let list = wait_deliveries(&plane, &org, &ep, "delivered after restart", |l| {
        all_delivered(l, 1)
    })
    .await;
    let id = list[0]["event_id"].as_str().unwrap();
    let by_id = accepted_by_id(&rx.requests());
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[id].len(), 1);
    assert_eq!(pending[0].webhook_id.as_deref(), Some(id));
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_at_create_and_at_delivery() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    // Created by Gate: owner-only, like the files in it.
    let letters = dl.path().join("letters");
    let rx = WebhookReceiver::start().await.expect("receiver");
    let by_name = format!("http://localhost:{}/hook", rx.port());

    // With private targets allowed (as in the other tests), endpoints on 127.0.0.1 and
    // localhost are created…
    let plane = start_plane_custom(
        db.path(),
        &delivery_yaml(&letters, "100ms, 100ms", SETTINGS),
    )
    .await;
    let org = setup(&plane, "acme").await;
    let events = json!(["access.requested"]);
    let (literal, _) = endpoint(&plane, &org, &rx.url("/hook"), events.clone()).await;
    let (named, _) = endpoint(&plane, &org, &by_name, events).await;
    plane.stop().await;

    // …and with the default they are refused, at create and update…
    let plane = start_plane_custom(
        db.path(),
        &delivery_yaml(&letters, "100ms, 100ms", "timeout: 3s"),
    )
    .await;
    for url in [
        rx.url("/hook"),
        by_name.clone(),
        "http://LocalHost./x".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]:9/x".into(),
        "http://[fd00::1]/x".into(),
        "https://10.1.2.3/x".into(),
        "http://0/x".into(),
    ] {
        let e = plane
            .try_call(
                "POST",
                "/api/v1/webhooks",
                Some(&org.admin),
                Some(&org.id),
                Some(json!({ "url": url })),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_argument", "{url}");
        assert!(
            e.message.contains("delivery.allow_private_targets"),
            "{url}: {}",
            e.message
        );
    }
    let e = plane
        .try_call(
            "PATCH",
            &format!("/api/v1/webhooks/{literal}"),
            Some(&org.admin),
            Some(&org.id),
            Some(json!({"url": "http://127.0.0.2/x"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    assert!(e.message.contains("allow_private_targets"), "{}", e.message);

    // …and at delivery, which is what counts for URLs stored earlier, and names that
    // resolve elsewhere since: every attempt fails as "not allowed", saying nothing more,
    // and the receiver sees none.
    request(&plane, &org, "alice").await;
    for ep in [&literal, &named] {
        let list = wait_deliveries(&plane, &org, ep, "refused until dead", |l| {
            l.len() == 1 && l[0]["status"] == "dead"
        })
        .await;
        let dead = &list[0];
        let error = dead["last_error"].as_str().unwrap();
        assert!(error.starts_with("target address not allowed"), "{dead}");
        assert!(
            !error.contains("127.0.0.1") && !error.contains("localhost"),
            "{dead}"
        );
        assert!(dead["last_status"].is_null(), "{dead}");
        assert_eq!(dead["attempts"], 3);
        let letter = letters
            .join(&org.id)
            .join(format!("{}.json", dead["id"].as_str().unwrap()));
        wait_file(&letter).await;
        assert_eq!(mode(&letter), Some(0o600));
    }
    assert_eq!(mode(&letters), Some(0o700));
    assert_eq!(mode(&letters.join(&org.id)), Some(0o700));
    assert!(rx.requests().is_empty(), "{:#?}", rx.requests());
    plane.stop().await;
}

/// A receiver that accepts connections and never answers: `(url, connections accepted)`.
/// The connections stay open until the task is aborted.
async fn black_hole() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (format!("http://{addr}/hook"), accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_with_hanging_receivers_cannot_take_every_slot() {
    let db = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    // Two requests in flight at most, one per org; a hanging receiver holds its slot for
    // the whole timeout.
    let plane = start_plane_custom(
        db.path(),
        &delivery_yaml(
            dl.path(),
            "10s",
            "timeout: 6s, max_concurrency: 2, max_concurrency_per_org: 1, \
             allow_private_targets: true",
        ),
    )
    .await;
    let slow = setup(&plane, "slow").await;
    let other = setup(&plane, "other").await;
    let (hole, accepted, hole_task) = black_hole().await;
    endpoint(&plane, &slow, &hole, json!(["access.requested"])).await;
    let rx = WebhookReceiver::start().await.expect("receiver");
    let (ep, secret) = endpoint(
        &plane,
        &other,
        &rx.url("/hook"),
        json!(["access.requested"]),
    )
    .await;
    rx.set_secrets(&[&secret]).await.unwrap();

    // Three deliveries of the slow org are due before the other org's one.
    for _ in 0..3 {
        request(&plane, &slow, "alice").await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt reached the black hole"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    request(&plane, &other, "alice").await;
    wait_deliveries(
        &plane,
        &other,
        &ep,
        "delivered beside the hanging org",
        |l| all_delivered(l, 1),
    )
    .await;
    // Without the per-org cap the slow org would hold both slots until its timeout (6 s).
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "waited {waited:?} behind the slow org"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the slow org has one request in flight at a time"
    );
    // Closing the hanging connections ends the attempts: the shutdown need not wait.
    hole_task.abort();
    plane.stop().await;
}
