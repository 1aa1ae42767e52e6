//! Audit retention: a control plane started with a short purge interval deletes events
//! older than the retention, keeps newer ones, and audits each purge.

mod common;

use std::time::Duration;

use common::*;
use gate_control::StartOptions;
use gate_store::time::{format_rfc3339_ms, now_ms};
use gate_store::{AuditQuery, OrgId};
use serde_json::{Value, json};

const HOUR_MS: i64 = 3_600_000;

fn event(resource: &str, time_ms: i64) -> Value {
    json!({
        "id": uuid::Uuid::now_v7(),
        "time": format_rfc3339_ms(time_ms),
        "kind": "policy_decision",
        "identity": {"name": "alice"},
        "resource": resource,
        "protocol": "postgres",
        "action": "allow",
    })
}

async fn count(plane: &Plane, org: OrgId, query: AuditQuery) -> i64 {
    plane
        .running
        .as_ref()
        .unwrap()
        .control()
        .store()
        .count_audit(org, &query)
        .await
        .expect("count")
}

fn purges() -> AuditQuery {
    AuditQuery {
        action: Some("audit.purge".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_purged_recent_ones_stay_and_the_purge_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = database_url(Backend::Sqlite, dir.path()).await;
    // The shortest retention the config accepts (1h), and a purge every 200 ms.
    let cfg = config(
        &dsn,
        SYSTEM_KEY,
        "audit: {retention: 1h, purge_interval: 200ms}\n",
    );
    assert_eq!(cfg.audit.purge_interval(), Duration::from_millis(200));
    let plane = Plane::start_with(cfg, StartOptions::default(), dir).await;
    let store = plane.running.as_ref().unwrap().control().store().clone();

    let now = now_ms();
    let mut orgs = Vec::new();
    for (name, old) in [("alpha", 3), ("beta", 1)] {
        let id: OrgId = plane.create_org(name).await.parse().unwrap();
        let mut events: Vec<Value> = (0..old)
            .map(|i| event("old-db", now - 2 * HOUR_MS - i * 24 * HOUR_MS))
            .collect();
        events.push(event("old-db", now - 400 * 24 * HOUR_MS));
        events.push(event("recent-db", now - HOUR_MS / 2));
        events.push(event("recent-db", now - 1000));
        store.ingest_audit(id, None, &events).await.expect("ingest");
        orgs.push((id, old + 1));
    }

    let old = || AuditQuery {
        resource: Some("old-db".into()),
        ..Default::default()
    };
    let recent = || AuditQuery {
        resource: Some("recent-db".into()),
        ..Default::default()
    };
    gate_test_support::wait_until("old events purged", Duration::from_secs(30), || {
        let plane = &plane;
        let orgs = orgs.clone();
        async move {
            for (org, _) in orgs {
                if count(plane, org, old()).await > 0 || count(plane, org, purges()).await == 0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
    .expect("the retention job purges old events");

    for (org, deleted) in &orgs {
        assert_eq!(count(&plane, *org, recent()).await, 2, "recent events stay");
        // The org's creation (an admin change, seconds old) stays too.
        let creations = AuditQuery {
            action: Some("organization.create".into()),
            ..Default::default()
        };
        assert_eq!(count(&plane, *org, creations).await, 1);
        let purge = store.query_audit(*org, &purges()).await.unwrap();
        assert_eq!(
            purge.len(),
            1,
            "one purge event per purge that deleted something"
        );
        let p = &purge[0];
        assert_eq!(p.kind, "admin_change");
        assert_eq!(p.identity.as_deref(), Some("retention"));
        let details = &p.event["details"];
        assert_eq!(details["deleted"], *deleted, "{details}");
        let cutoff = details["cutoff_ms"].as_i64().unwrap();
        assert!(
            (now - HOUR_MS..=now_ms() - HOUR_MS).contains(&cutoff),
            "cutoff {cutoff} is not now - 1h"
        );
        assert_eq!(s(&details["cutoff"]), format_rfc3339_ms(cutoff));
        assert_eq!(details["retention_s"], 3600);
    }

    // Later runs find nothing more to delete and record nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (org, _) in &orgs {
        assert_eq!(count(&plane, *org, purges()).await, 1);
    }
    // The purge is visible through the API like any admin change.
    let (alpha, _) = orgs[0];
    let page = plane
        .ok(
            "GET",
            "/api/v1/audit?action=audit.purge",
            SYSTEM_KEY,
            Some(&alpha.to_string()),
            None,
        )
        .await;
    assert_eq!(page["events"][0]["event"]["details"]["deleted"], 4);
    // Shutdown stops the job (it would otherwise outlive the store it uses).
    tokio::time::timeout(Duration::from_secs(20), plane.stop())
        .await
        .expect("shutdown with retention running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retention_nothing_is_ever_purged() {
    let plane = Plane::start(Backend::Sqlite).await;
    let org: OrgId = plane.create_org("keep").await.parse().unwrap();
    let store = plane.running.as_ref().unwrap().control().store().clone();
    store
        .ingest_audit(org, None, &[event("old-db", 0)])
        .await
        .expect("ingest");
    // The job itself, run by hand with a retention, is what would delete it…
    let purged = gate_control::retention::purge_once(
        plane.running.as_ref().unwrap().control(),
        Duration::from_secs(3600),
        now_ms(),
    )
    .await;
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0].deleted, 1);
    // …but a plane without `audit.retention` never starts it.
    store
        .ingest_audit(org, None, &[event("old-db", 0)])
        .await
        .expect("ingest");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = AuditQuery {
        resource: Some("old-db".into()),
        ..Default::default()
    };
    assert_eq!(count(&plane, org, old).await, 1);
    plane.stop().await;
}

#[test]
fn purge_interval_must_be_positive() {
    let errs = gate_control::config::ControlConfig::from_yaml_str(
        "listen_addr: \"127.0.0.1:0\"\ndatabase: {dsn: \"sqlite::memory:\"}\naudit: {retention: 90d, purge_interval: 0s}\n",
        &|_| None,
    )
    .unwrap_err();
    assert_eq!(errs[0].path, "audit.purge_interval");
}
