//! Just-in-time access end to end, with every part real except Slack (a fake that records
//! Web API calls and signs interaction payloads as Slack does — no real Slack is reachable
//! from here): the `gate` CLI asks for access, the request is posted to the resource's
//! approval channel, forged and unauthorized clicks change nothing, a mapped approver's
//! signed click grants access, `psql` through the connector works, a CLI revocation ends the
//! live `psql` session within 5 s and new ones are refused with how to ask again. A read-only
//! grant lets reads through and blocks writes. A webhook receiver verifying signatures with
//! the `standardwebhooks` package sees each event exactly once, through a receiver outage.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use gate_test_support::control::{ControlPlane, SYNC_WAIT};
use gate_test_support::slack::{FakeSlack, Message, Signing};
use gate_test_support::wait_until;
use gate_test_support::webhook_receiver::WebhookReceiver;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SLACK_TOKEN: &str = "xoxb-e2e-token";
const SLACK_SECRET: &str = "e2e-signing-secret";
const OLGA_TOKEN: &str = "tok-olga-5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
const APPROVE: &str = "gate_access_approve";
const WAIT: Duration = Duration::from_secs(30);

struct World {
    cp: ControlPlane,
    org: String,
    env: Env,
    slack: FakeSlack,
    hooks: WebhookReceiver,
    gate: PathBuf,
    dir: tempfile::TempDir,
}

impl World {
    /// `gate` as `who` (own config directory, none of the developer's settings).
    fn gate(&self, who: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.gate);
        cmd.env(
            "GATE_CONFIG_DIR",
            self.dir.path().join(format!("{who}-config")),
        )
        .env("NO_COLOR", "1")
        .env_remove("GATE_URL")
        .env_remove("GATE_TOKEN")
        .env_remove("GATE_ORG")
        .env_remove("GATE_AS")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .args(args);
        cmd
    }

    /// Runs `gate` as `who`; panics unless it exits `code`. Returns stdout.
    async fn gate_ok(&self, who: &str, args: &[&str], code: i32) -> String {
        let out = self.gate(who, args).output().await.expect("gate runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "gate {} as {who}\nstdout: {stdout}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn actions_url(&self) -> String {
        format!("{}/integrations/slack/actions", self.cp.url())
    }

    /// The request's status as the control plane has it.
    async fn status(&self, id: &str) -> String {
        let r = self
            .cp
            .ok(
                "GET",
                &format!("/api/v1/access-requests/{id}"),
                Some(&self.org),
                None,
            )
            .await
            .unwrap();
        r["status"].as_str().unwrap().to_string()
    }

    fn vault(&self) -> String {
        self.env.conninfo("alice", ALICE_TOKEN, "vault-db")
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let slack = FakeSlack::start(SLACK_TOKEN, SLACK_SECRET).await.unwrap();
    slack.add_user("U0OLGA", "olga", Some("olga@example.com"));
    slack.add_user("U0ALICE", "alice", Some("alice@example.com"));
    slack.add_user("U0MAL", "mallory", None);
    slack.add_user("U0STRANGER", "stranger", Some("nobody@example.com"));
    let hooks = WebhookReceiver::start().await.unwrap();
    let control_yaml = format!(
        r#"slack:
  bot_token: "{SLACK_TOKEN}"
  signing_secret: "{SLACK_SECRET}"
  api_base_url: "{}"
  default_approval_channel: CDEFAULT
  resource_approval_channels: {{vault-db: CVAULT}}
  user_mappings: {{U0OLGA: jit-e2e/olga, U0ALICE: jit-e2e/alice, U0MAL: jit-e2e/mallory}}
  requester_mappings: {{jit-e2e/alice: U0ALICE}}
  retry: {{initial_backoff: 50ms, max_backoff: 500ms}}
delivery: {{dead_letter_dir: "{}", retry_schedule: [200ms, 400ms, 800ms, 1s, 1s], timeout: 3s, poll_interval: 100ms, allow_private_targets: true}}
"#,
        slack.api_base_url(),
        dir.path().join("dead-letters").display()
    );
    let cp = ControlPlane::start_custom(&dir.path().join("cp"), None, None, &control_yaml)
        .await
        .expect("control plane");
    let org = cp.create_org("jit-e2e").await.unwrap();
    let pg = gate_test_support::postgres::PgServer::shared();
    let setup: [(&str, &str, Value); 6] = [
        (
            "POST",
            "/api/v1/identities",
            json!({"name": "alice", "email": "alice@example.com", "groups": ["engineering"], "token_sha256": sha(ALICE_TOKEN)}),
        ),
        (
            "POST",
            "/api/v1/identities",
            json!({"name": "olga", "email": "olga@example.com", "groups": ["dba"], "token_sha256": sha(OLGA_TOKEN)}),
        ),
        (
            "POST",
            "/api/v1/identities",
            json!({"name": "mallory", "groups": ["engineering"]}),
        ),
        (
            "PUT",
            "/api/v1/approval-rules",
            json!({"default_approver_groups": ["dba"], "default_max_duration_s": 3600}),
        ),
        (
            "POST",
            "/api/v1/resources",
            json!({
                "name": "vault-db",
                "protocol": "postgres",
                "host": "127.0.0.1",
                "port": pg.port(),
                "database": "appdb",
                "spec": {
                    "credentials": {"username": pg.app_user(), "password": "${TEST_APP_DB_PASSWORD}"},
                    "require_access_grant": true,
                },
            }),
        ),
        (
            "POST",
            "/api/v1/webhooks",
            json!({"url": hooks.url("/gate"), "events": ["access.*", "session.*"]}),
        ),
    ];
    let mut secret = String::new();
    for (method, path, body) in setup {
        let r = cp.ok(method, path, Some(&org), Some(body)).await.unwrap();
        if path == "/api/v1/webhooks" {
            secret = r["secret"].as_str().expect("webhook secret").to_string();
        }
    }
    hooks.set_secrets(&[&secret]).await.unwrap();
    let token = cp.registration_token(&org, "edge-1").await.unwrap();
    let env = start(Opts {
        policy: Some(ALLOW_ALL.into()),
        extra: format!(
            "control_plane: {{url: \"{}\", registration_token: \"{token}\", sync_interval: 30s, heartbeat_interval: 1s}}\n",
            cp.url()
        ),
        ..Opts::default()
    })
    .await;
    env.gw
        .wait_for_log("watching the control plane", SYNC_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- control plane ---\n{}", cp.log()));
    let gate = tokio::task::spawn_blocking(|| gate_test_support::cargo_bin("gate"))
        .await
        .unwrap()
        .expect("gate binary");
    World {
        cp,
        org,
        env,
        slack,
        hooks,
        gate,
        dir,
    }
}

/// A live interactive `psql` through the gateway, fed statements on stdin.
struct LivePsql {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl LivePsql {
    async fn start(conninfo: &str) -> LivePsql {
        let mut child = tokio::process::Command::new(gate_test_support::psql_binary())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", conninfo])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("psql starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        LivePsql {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends a statement and waits for its one-line answer.
    async fn query(&mut self, sql: &str) -> String {
        self.stdin
            .write_all(format!("{sql}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("psql answers")
            .unwrap()
            .expect("a line")
    }
}

/// Waits for the one message posted for a new request in `channel` with its buttons.
async fn approval_message(slack: &FakeSlack, channel: &str, id: &str) -> Message {
    slack
        .wait_for_message(WAIT, |m| {
            m.channel == channel && m.has_button(APPROVE) && m.blocks.to_string().contains(id)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nmessages: {:#?}", slack.messages()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_request_approved_in_slack_opens_psql_until_the_grant_is_revoked() {
    let w = world().await;
    w.gate_ok(
        "alice",
        &["login", "--url", &w.cp.url(), "--token", ALICE_TOKEN],
        0,
    )
    .await;
    w.gate_ok(
        "olga",
        &["login", "--url", &w.cp.url(), "--token", OLGA_TOKEN],
        0,
    )
    .await;

    // Without a grant psql is refused, and told how to ask.
    let (ok, _, err) = w.env.psql(&w.vault(), &["-c", "SELECT 1"]).await;
    assert!(!ok);
    assert!(
        err.contains("gate access request --resource vault-db"),
        "{err}"
    );

    // The receiver is down for the first deliveries: they are retried.
    w.hooks.fail_next(503, 2).await.unwrap();

    // alice asks from the terminal and waits for the decision.
    let waiting = w
        .gate(
            "alice",
            &[
                "--output",
                "json",
                "access",
                "request",
                "--resource",
                "vault-db",
                "--duration",
                "10m",
                "--reason",
                "incident 42",
                "--wait",
                "--timeout",
                "2m",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gate access request starts");
    let pending = wait_until("alice's request is filed", WAIT, || async {
        let list =
            w.cp.ok(
                "GET",
                "/api/v1/access-requests?status=pending",
                Some(&w.org),
                None,
            )
            .await
            .ok()?;
        list["access_requests"].as_array()?.first().cloned()
    })
    .await
    .unwrap();
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(pending["requester"], "alice");

    // Posted to the resource's approval channel.
    let message = approval_message(&w.slack, "CVAULT", &id).await;
    assert!(message.rendered().contains("incident 42"), "{message:?}");

    // Forged, stale, self-approving and unknown clicks change nothing.
    let url = w.actions_url();
    for signing in [Signing::BadSignature, Signing::Stale] {
        let r = w
            .slack
            .click_signed(&url, "U0OLGA", &message, APPROVE, signing)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{signing:?}: {}", r.body);
    }
    for clicker in ["U0ALICE", "U0STRANGER", "U0MAL"] {
        let r = w
            .slack
            .click(&url, clicker, &message, APPROVE)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{clicker}: {}", r.body);
        let reply = w
            .slack
            .wait_for_response(&r.response_url, WAIT)
            .await
            .unwrap();
        assert_eq!(reply["response_type"], "ephemeral", "{clicker}: {reply}");
    }
    assert_eq!(w.status(&id).await, "pending");

    // olga approves in Slack; alice's waiting CLI sees it and exits 0.
    let r = w
        .slack
        .click(&url, "U0OLGA", &message, APPROVE)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let out = tokio::time::timeout(WAIT, waiting.wait_with_output())
        .await
        .expect("the waiting CLI returns")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decided: Value = serde_json::from_str(stdout.trim()).expect("JSON from --output json");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], "olga");
    // The message shows the outcome instead of the buttons.
    w.slack
        .wait_for_message(WAIT, |m| m.ts == message.ts && !m.has_button(APPROVE))
        .await
        .unwrap();

    // psql works while the grant lasts.
    let mut live = wait_until("the grant reached the connector", SYNC_WAIT, || async {
        let mut p = LivePsql::start(&w.vault()).await;
        let line = tokio::time::timeout(Duration::from_secs(10), p.query("SELECT 'live-1';"))
            .await
            .ok()?;
        (line == "live-1").then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.env.gw.log()));

    // olga revokes from her terminal: the live session ends within 5 s.
    let revoked_at = Instant::now();
    w.gate_ok(
        "olga",
        &["access", "revoke", &id, "--reason", "incident closed"],
        0,
    )
    .await;
    let status = loop {
        if let Some(status) = live.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "the psql session outlived its grant"
        );
        let _ = live.stdin.write_all(b"SELECT 'tick';\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = revoked_at.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = live.child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(!status.success());
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    assert!(stderr.contains("access grant ended"), "{stderr}");
    eprintln!("live psql ended {took:?} after the revocation: {stderr}");
    let (ok, _, err) = w.env.psql(&w.vault(), &["-c", "SELECT 1"]).await;
    assert!(!ok);
    assert!(
        err.contains("gate access request --resource vault-db"),
        "{err}"
    );

    // A read-only grant: reads pass, writes are blocked with the reason.
    let out = w
        .gate_ok(
            "alice",
            &[
                "--output",
                "json",
                "access",
                "request",
                "--resource",
                "vault-db",
                "--duration",
                "5m",
                "--reason",
                "look only",
                "--scope",
                "operation=read",
            ],
            0,
        )
        .await;
    let read_id = serde_json::from_str::<Value>(out.trim()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    approval_message(&w.slack, "CVAULT", &read_id).await;
    w.gate_ok("olga", &["access", "approve", &read_id], 0).await;
    let mut reader = wait_until(
        "the read grant reached the connector",
        SYNC_WAIT,
        || async {
            let mut p = LivePsql::start(&w.vault()).await;
            let line = tokio::time::timeout(Duration::from_secs(10), p.query("SELECT 'read-ok';"))
                .await
                .ok()?;
            (line == "read-ok").then_some(p)
        },
    )
    .await
    .unwrap();
    reader
        .stdin
        .write_all(b"CREATE TABLE jit_should_not_exist (x int);\n")
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, reader.child.wait())
        .await
        .expect("psql stops on the blocked write")
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut e) = reader.child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(stderr.contains("covers only: read"), "{stderr}");

    // Webhooks: every access event exactly once, signed, through the outage.
    let expected = [
        ("access.requested", 2),
        ("access.approved", 2),
        ("access.revoked", 1),
    ];
    let got = w
        .hooks
        .wait_for("access events", WAIT, |reqs| {
            let counts = accepted_counts(reqs);
            expected
                .iter()
                .all(|(t, n)| counts.get(*t).copied().unwrap_or(0) >= *n)
                && counts.get("session.started").copied().unwrap_or(0) >= 1
        })
        .await
        .unwrap();
    assert!(
        got.iter().all(|r| r.verified()),
        "a delivery failed verification: {got:#?}"
    );
    assert!(
        got.iter().filter(|r| r.answered == 503).count() == 2,
        "the outage was seen: {got:#?}"
    );
    let counts = accepted_counts(&got);
    for (t, n) in expected {
        assert_eq!(counts.get(t).copied(), Some(n), "{t}: {counts:?}");
    }
    let mut ids: Vec<&str> = got
        .iter()
        .filter(|r| r.accepted())
        .filter_map(|r| r.webhook_id.as_deref())
        .collect();
    let accepted = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), accepted, "an event was accepted twice");
}

/// Accepted (verified, answered 2xx) deliveries per event type.
fn accepted_counts(
    reqs: &[gate_test_support::webhook_receiver::ReceivedRequest],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in reqs.iter().filter(|r| r.accepted()) {
        if let Some(t) = r.event_type() {
            *counts.entry(t.to_string()).or_insert(0) += 1;
        }
    }
    counts
}
