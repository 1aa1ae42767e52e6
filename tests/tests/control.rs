//! Connector ↔ control plane, end to end: the real `gate-control` (SQLite store) and the
//! real `gate-connector` in front of the shared PostgreSQL, with tokio-postgres clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gate_test_support::control::{ControlPlane, SYNC_WAIT};
use gate_test_support::gateway::Gateway;
use gate_test_support::wait_until;
use serde_json::json;

/// An environment: a control plane with one org, and a connector registered to it.
struct Linked {
    cp: ControlPlane,
    org: String,
    env: Env,
    _cp_dir: tempfile::TempDir,
    /// Shared by the connector (writes) and the control plane (serves).
    recordings: tempfile::TempDir,
}

async fn linked(name: &str) -> Linked {
    linked_with(name, String::new()).await
}

/// [`linked`] with extra connector resources (YAML list items, indented by 2 spaces).
async fn linked_with(name: &str, extra_resources: String) -> Linked {
    let cp_dir = tempfile::tempdir().unwrap();
    let recordings = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(cp_dir.path(), Some(recordings.path()))
        .await
        .expect("control plane");
    let org = cp.create_org(name).await.unwrap();
    let token = cp.registration_token(&org, "edge-1").await.unwrap();
    let env = start(Opts {
        policy: Some(ALLOW_ALL.into()),
        extra: format!(
            "control_plane: {{url: \"{}\", registration_token: \"{token}\", sync_interval: 30s, heartbeat_interval: 1s}}\n",
            cp.url()
        ),
        recording: Some(format!(
            "recording: {{dir: \"{}\"}}",
            recordings.path().display()
        )),
        extra_resources,
        ..Opts::default()
    })
    .await;
    // Registered, and watching for changes.
    env.gw
        .wait_for_log("watching the control plane", SYNC_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- control plane ---\n{}", cp.log()));
    Linked {
        cp,
        org,
        env,
        _cp_dir: cp_dir,
        recordings,
    }
}

async fn restart_connector(env: &mut Env) {
    let yaml = std::fs::read_to_string(env.gw.config_path()).unwrap();
    env.gw.sigterm().unwrap();
    let status = env.gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", env.gw.log());
    env.gw = Gateway::builder(yaml, env.dir.path())
        .env("TEST_APP_DB_PASSWORD", &env.upstream_password)
        .start()
        .await
        .expect("connector restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_activated_in_the_control_plane_blocks_within_two_seconds() {
    let l = linked("sync").await;
    let c = l.env.connect_alice().await;
    c.simple_query("SELECT name FROM users").await.unwrap();

    // A policy for other resources only: no effect here.
    l.cp.ok(
        "POST",
        "/api/v1/policies",
        Some(&l.org),
        Some(json!({
            "name": "elsewhere",
            "stages": ["pre_request"],
            "targets": ["analytics-*"],
            "state": "active",
            "rego": "package formal.v2\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"not here\"}\n",
        })),
    )
    .await
    .unwrap();

    let started = Instant::now();
    l.cp.ok(
        "POST",
        "/api/v1/policies",
        Some(&l.org),
        Some(json!({
            "name": "no-users-table",
            "stages": ["pre_request"],
            "targets": ["primary-*"],
            "state": "active",
            "rego": "package formal.v2\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"users is off limits\"} if \"users\" in input.query.tables\n",
        })),
    )
    .await
    .unwrap();
    let err = loop {
        match c.simple_query("SELECT name FROM users").await {
            Err(e) => break e,
            Ok(_) if started.elapsed() > SYNC_WAIT => {
                panic!("the policy never took effect\n{}", l.env.gw.log())
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let took = started.elapsed();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501", "{err}");
    assert!(message.contains("users is off limits"), "{message}");
    assert!(
        took < Duration::from_secs(2),
        "a policy change took {took:?} to be enforced (target: under 2 s)"
    );
    eprintln!("policy change enforced after {took:?}");
    // Other statements still pass (the `elsewhere` policy does not target primary-db).
    c.simple_query("SELECT 1").await.unwrap();

    // A dry-run policy is evaluated and audited, never enforced.
    l.cp.ok(
        "POST",
        "/api/v1/policies",
        Some(&l.org),
        Some(json!({
            "name": "would-block-everything",
            "stages": ["pre_request"],
            "state": "dry_run",
            "rego": "package formal.v2\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"trial\"}\n",
        })),
    )
    .await
    .unwrap();
    // Each round runs the statement (which must pass: a dry run is not enforced) and then
    // looks for its dry-run audit event.
    wait_until("a dry-run decision in the audit log", SYNC_WAIT, || async {
        c.simple_query("SELECT 2")
            .await
            .expect("a dry run never blocks");
        l.env
            .audit_events()
            .iter()
            .any(|e| statement_is(e, "SELECT 2") && e["dry_run"] == true)
            .then_some(())
    })
    .await
    .unwrap();
}

fn statement_is(e: &serde_json::Value, s: &str) -> bool {
    e["statement"].as_str() == Some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_survives_a_control_plane_outage_and_a_connector_restart_exactly_once() {
    let mut l = linked("audit").await;
    // A synced policy the connector must keep enforcing while the control plane is away.
    l.cp.ok(
        "POST",
        "/api/v1/policies",
        Some(&l.org),
        Some(json!({
            "name": "no-drops",
            "stages": ["pre_request"],
            "state": "active",
            "rego": "package formal.v2\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"no drops (synced)\"} if input.query.type == \"drop\"\n",
        })),
    )
    .await
    .unwrap();
    l.env
        .gw
        .wait_for_log("applied configuration from the control plane", SYNC_WAIT)
        .await
        .unwrap();
    let c = l.env.connect_alice().await;
    wait_until("the synced policy blocks DROP", SYNC_WAIT, || async {
        c.simple_query("DROP TABLE IF EXISTS nothing_here")
            .await
            .err()
            .map(|_| ())
    })
    .await
    .unwrap();

    l.cp.kill();
    for i in 0..1000 {
        c.simple_query(&format!("SELECT {i} AS probe_outage"))
            .await
            .unwrap();
    }
    drop(c);
    restart_connector(&mut l.env).await;

    // Restarted while the control plane is down: the persisted snapshot still applies.
    let c = l.env.connect_alice().await;
    let err = c
        .simple_query("DROP TABLE IF EXISTS nothing_here")
        .await
        .unwrap_err();
    assert!(db_error(&err).1.contains("no drops (synced)"), "{err}");
    drop(c);

    // Forget what was shipped: everything is sent again, and the control plane must
    // store each event once (dedup by event id), whatever was delivered before the outage.
    let data = l.env.data_dir();
    std::fs::remove_file(data.join("control-plane/audit.offset")).ok();
    l.cp.start_again().await.unwrap();
    let count = || async {
        let v =
            l.cp.ok(
                "GET",
                "/api/v1/audit?kind=policy_decision&limit=10000",
                Some(&l.org),
                None,
            )
            .await
            .unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                let ev: serde_json::Value = e["event"].clone();
                let stmt = ev["statement"]
                    .as_str()
                    .or(e["statement"].as_str())
                    .unwrap_or("");
                stmt.ends_with("AS probe_outage")
            })
            .count()
    };
    wait_until(
        "1000 probe events at the control plane",
        SYNC_WAIT * 2,
        || async { (count().await >= 1000).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", l.env.gw.log()));
    // Wait until the whole local audit file has been shipped, then check nothing arrived
    // twice.
    wait_until("the audit file shipped to its end", SYNC_WAIT, || async {
        let shipped: u64 = std::fs::read_to_string(data.join("control-plane/audit.offset"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let len = std::fs::metadata(data.join("audit.jsonl")).ok()?.len();
        (shipped == len).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(count().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_sync_and_recordings_are_served_by_the_control_plane() {
    let l = linked("people").await;
    let _ = &l.recordings;
    // An identity that exists only in the control plane.
    const DANA_TOKEN: &str = "tok-dana-cp-8c7b6a5948372615a4b3c2d1e0f9a8b7";
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(DANA_TOKEN.as_bytes()))
    };
    l.cp.ok(
        "POST",
        "/api/v1/identities",
        Some(&l.org),
        Some(json!({"name": "dana", "email": "dana@example.com", "groups": ["analysts"], "token_sha256": digest})),
    )
    .await
    .unwrap();
    let conninfo = l.env.conninfo("dana", DANA_TOKEN, "primary-db");
    let c = wait_until(
        "dana can log in through the connector",
        SYNC_WAIT,
        || async { l.env.connect(&conninfo).await.ok() },
    )
    .await
    .unwrap();
    c.simple_query("SELECT name FROM users WHERE id = 1")
        .await
        .unwrap();
    drop(c);

    // Her session's recording reaches the control plane's index and is served from the store.
    let listed = wait_until(
        "dana's recording at the control plane",
        SYNC_WAIT,
        || async {
            let v =
                l.cp.ok("GET", "/api/v1/recordings", Some(&l.org), None)
                    .await
                    .ok()?;
            v["recordings"]
                .as_array()?
                .iter()
                .find(|r| r["user"]["name"] == "dana")
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", l.env.gw.log()));
    assert_eq!(listed["kind"], "queries");
    assert_eq!(listed["resource"], "primary-db");
    let id = listed["recording_id"].as_str().unwrap().to_string();

    // `gate recordings` against the control plane: list, play (the statement as sent) and a
    // download whose SHA-256 matches the index.
    let gate = tokio::task::spawn_blocking(|| gate_test_support::cargo_bin("gate"))
        .await
        .unwrap()
        .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&gate)
            .args([
                "--url",
                &l.cp.url(),
                "--token",
                l.cp.system_key(),
                "--org",
                &l.org,
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cli(&["recordings", "list"]).contains(&id));
    let played = cli(&["recordings", "play", &id, "--speed", "1000"]);
    assert!(
        played.contains("SELECT name FROM users WHERE id = 1"),
        "{played}"
    );
    let target = l.env.dir.path().join("dana.jsonl");
    cli(&[
        "recordings",
        "download",
        &id,
        "-o",
        target.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&target).unwrap();
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(listed["sha256"], sum.as_str());

    // Another org sees none of it.
    let other = l.cp.create_org("someone-else").await.unwrap();
    let v =
        l.cp.ok("GET", "/api/v1/recordings", Some(&other), None)
            .await
            .unwrap();
    assert_eq!(v["recordings"].as_array().unwrap().len(), 0);
    let (status, _) =
        l.cp.call(
            "GET",
            &format!("/api/v1/recordings/{id}/content"),
            Some(&other),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_to_the_control_plane_is_tls_verified() {
    use gate_test_support::certs::TestCerts;
    let cp_dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(cp_dir.path()).unwrap();
    // Set-up over plain HTTP (the harness's own client speaks no TLS), then the same store
    // is served with TLS.
    let plain = ControlPlane::start(cp_dir.path()).await.unwrap();
    let org = plain.create_org("tls").await.unwrap();
    let good = plain.registration_token(&org, "edge-good").await.unwrap();
    let bad = plain.registration_token(&org, "edge-bad").await.unwrap();
    drop(plain);
    let cp = ControlPlane::start_opts(cp_dir.path(), None, Some(&certs))
        .await
        .expect("control plane with TLS");

    // Trusting the control plane's CA: registers and watches over TLS.
    let env = start(Opts {
        policy: Some(ALLOW_ALL.into()),
        extra: format!(
            "control_plane: {{url: \"{}\", registration_token: \"{good}\", ca_file: \"{}\"}}\n",
            cp.url(),
            certs.ca_pem_path.display()
        ),
        ..Opts::default()
    })
    .await;
    env.gw
        .wait_for_log("watching the control plane", SYNC_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- control plane ---\n{}", cp.log()));

    // Trusting another CA: the handshake fails and nothing registers.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestCerts::generate(other_dir.path()).unwrap();
    let env2 = start(Opts {
        policy: Some(ALLOW_ALL.into()),
        extra: format!(
            "control_plane: {{url: \"{}\", registration_token: \"{bad}\", ca_file: \"{}\"}}\n",
            cp.url(),
            other.ca_pem_path.display()
        ),
        ..Opts::default()
    })
    .await;
    env2.gw
        .wait_for_log("control plane unreachable for registration", SYNC_WAIT)
        .await
        .unwrap();
    assert!(!env2.gw.log().contains("registered with the control plane"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_created_in_the_control_plane_is_served_by_the_connector() {
    let l = linked("resources").await;
    let pg = gate_test_support::postgres::PgServer::shared();
    // The password stays on the connector's host: `${TEST_APP_DB_PASSWORD}` is expanded
    // from the connector's environment, never stored in the control plane.
    let spec = json!({
        "credentials": {"username": pg.app_user(), "password": "${TEST_APP_DB_PASSWORD}"},
        "pool": {"max_connections": 5},
    });
    l.cp.ok(
        "POST",
        "/api/v1/resources",
        Some(&l.org),
        Some(json!({
            "name": "synced-db",
            "protocol": "postgres",
            "host": "127.0.0.1",
            "port": pg.port(),
            "database": "appdb",
            "spec": spec,
        })),
    )
    .await
    .unwrap();
    let conninfo = l.env.conninfo("alice", ALICE_TOKEN, "synced-db");
    let c = wait_until("synced-db is served", SYNC_WAIT, || async {
        l.env.connect(&conninfo).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", l.env.gw.log()));
    let rows = c.simple_query("SELECT count(*) FROM users").await.unwrap();
    assert!(!rows.is_empty());
    drop(c);

    // Deleted centrally: new sessions are refused.
    let listed =
        l.cp.ok("GET", "/api/v1/resources", Some(&l.org), None)
            .await
            .unwrap();
    let id = listed["resources"][0]["id"].as_str().unwrap().to_string();
    l.cp.ok(
        "DELETE",
        &format!("/api/v1/resources/{id}"),
        Some(&l.org),
        None,
    )
    .await
    .unwrap();
    wait_until("synced-db is gone", SYNC_WAIT, || async {
        l.env.connect(&conninfo).await.err().map(|_| ())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_in_time_grant_opens_a_resource_and_its_revocation_ends_live_sessions() {
    let l = linked("jit").await;
    let pg = gate_test_support::postgres::PgServer::shared();
    // A resource defined in the control plane that only grant holders may use.
    l.cp.ok(
        "POST",
        "/api/v1/resources",
        Some(&l.org),
        Some(json!({
            "name": "vault-db",
            "protocol": "postgres",
            "host": "127.0.0.1",
            "port": pg.port(),
            "database": "appdb",
            "spec": {
                "credentials": {"username": pg.app_user(), "password": "${TEST_APP_DB_PASSWORD}"},
                "require_access_grant": true,
            },
        })),
    )
    .await
    .unwrap();
    // alice (who logs in with the connector file's token) as the control plane knows her,
    // and olga, who approves for the dba group.
    l.cp.ok(
        "POST",
        "/api/v1/identities",
        Some(&l.org),
        Some(json!({"name": "alice", "email": "alice@example.com", "groups": ["engineering"]})),
    )
    .await
    .unwrap();
    l.cp.ok(
        "POST",
        "/api/v1/identities",
        Some(&l.org),
        Some(json!({"name": "olga", "groups": ["dba"]})),
    )
    .await
    .unwrap();
    l.cp.ok(
        "PUT",
        "/api/v1/approval-rules",
        Some(&l.org),
        Some(json!({"default_approver_groups": ["dba"]})),
    )
    .await
    .unwrap();
    let conninfo = l.env.conninfo("alice", ALICE_TOKEN, "vault-db");

    // No grant: refused, with how to ask for one.
    let err = wait_until(
        "the grant list reached the connector",
        SYNC_WAIT,
        || async {
            let e = l.env.connect(&conninfo).await.err()?;
            db_error(&e)
                .1
                .contains("needs an approved access grant")
                .then_some(e)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", l.env.gw.log()));
    assert!(
        db_error(&err)
            .1
            .contains("gate access request --resource vault-db"),
        "{err}"
    );

    let req = l
        .cp
        .ok(
            "POST",
            "/api/v1/access-requests",
            Some(&l.org),
            Some(json!({"requester": "alice", "resource": "vault-db", "reason": "incident 42", "requested_duration_s": 600})),
        )
        .await
        .unwrap();
    let id = req["id"].as_str().unwrap().to_string();
    // Self-approval is refused and changes nothing.
    let (status, _) =
        l.cp.call(
            "POST",
            &format!("/api/v1/access-requests/{id}/approve"),
            Some(&l.org),
            Some(json!({"approver": "alice"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    l.cp.ok(
        "POST",
        &format!("/api/v1/access-requests/{id}/approve"),
        Some(&l.org),
        Some(json!({"approver": "olga", "reason": "go ahead"})),
    )
    .await
    .unwrap();
    let c = wait_until("alice's grant reached the connector", SYNC_WAIT, || async {
        l.env.connect(&conninfo).await.ok()
    })
    .await
    .unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    // Revoked: the live session ends within 5 s with 57P01, and new ones are refused.
    let started = Instant::now();
    l.cp.ok(
        "POST",
        &format!("/api/v1/access-requests/{id}/revoke"),
        Some(&l.org),
        Some(json!({"approver": "olga", "reason": "incident closed"})),
    )
    .await
    .unwrap();
    let err = loop {
        match c.simple_query("SELECT 1").await {
            Err(e) => break e,
            Ok(_) if started.elapsed() > SYNC_WAIT => panic!("the session outlived its grant"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    let (code, message) = db_error(&err);
    assert!(
        code == "57P01" || err.is_closed(),
        "{code} {message} ({err})"
    );
    eprintln!("live session ended {took:?} after the revocation: {code} {message}");
    let err = l.env.connect(&conninfo).await.unwrap_err();
    assert!(
        db_error(&err).1.contains("needs an approved access grant"),
        "{err}"
    );
}
