//! Slack approvals against a fake Slack (`gate_test_support::slack::FakeSlack`, a mock: no
//! real Slack is reachable from tests), with a real control plane in-process: requests
//! posted to the right channel, signed clicks deciding them through the service rules,
//! forged/stale/unauthorized clicks changing nothing, messages kept up to date whoever
//! decides, requesters told by DM, mappings confined to their own org, and Slack outages
//! retried without blocking anything — nor posting twice.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gate_control::config::ControlConfig;
use gate_control::slack::blocks::{APPROVE_ACTION, DENY_ACTION};
use gate_control::{Running, StartOptions};
use gate_store::OrgId;
use gate_store::time::format_rfc3339_ms;
use gate_test_support::slack::{Failure, FakeSlack, Message, Signing};
use serde_json::{Value, json};

const TOKEN: &str = "xoxb-test-token";
const SECRET: &str = "test-signing-secret";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    plane: Plane,
    slack: FakeSlack,
    acme: Org,
    globex: Org,
}

struct Org {
    id: String,
    editor: String,
    reader: String,
}

fn slack_yaml(slack: &FakeSlack, extra: &str) -> String {
    format!(
        r#"slack:
  bot_token: "{TOKEN}"
  signing_secret: "{SECRET}"
  api_base_url: "{}"
  default_approval_channel: CDEFAULT
  org_approval_channels: {{acme: CACME}}
  resource_approval_channels: {{prod-db: CPROD}}
  user_mappings: {{U0BOB: acme/bob, U0MAL: acme/mallory, U0ALICE: acme/alice}}
  requester_mappings: {{acme/alice: U0ALICE, acme/mallory: U0MAL}}
  retry: {{max_attempts: 1000, initial_backoff: 20ms, max_backoff: 200ms}}
{extra}"#,
        slack.api_base_url()
    )
}

async fn org(plane: &Plane, name: &str, resources: &[&str], rules: Value) -> Org {
    let id = plane.create_org(name).await;
    let editor = plane.create_key(&id, "ed", "editor").await;
    let reader = plane.create_key(&id, "ro", "readonly").await;
    let admin = plane.create_key(&id, "ad", "admin").await;
    for (who, groups, email) in [
        ("alice", json!(["dev"]), Some("alice@example.com")),
        ("bob", json!(["sre"]), None),
        ("carol", json!(["sre"]), Some("Carol@Example.com")),
        ("dave", json!(["dev"]), Some("dave@example.com")),
        ("mallory", json!(["dev"]), None),
    ] {
        plane
            .ok(
                "POST",
                "/api/v1/identities",
                &editor,
                Some(&id),
                Some(json!({"name": who, "groups": groups, "email": email})),
            )
            .await;
    }
    for r in resources {
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
    plane
        .ok(
            "PUT",
            "/api/v1/approval-rules",
            &admin,
            Some(&id),
            Some(rules),
        )
        .await;
    Org { id, editor, reader }
}

fn rules() -> Value {
    json!({"default_approver_groups": ["sre"]})
}

async fn start_with(extra: &str, acme_rules: Value) -> Env {
    let slack = FakeSlack::start(TOKEN, SECRET).await.expect("fake Slack");
    // carol is mapped by her Slack profile's email; dave is found by email for DMs.
    slack.add_user("U0CAROL", "carol", Some("carol@example.com"));
    slack.add_user("U0DAVE", "dave", Some("DAVE@example.com"));
    slack.add_user("U0ALICE", "alice", Some("alice@example.com"));
    slack.add_user("U0BOB", "bob", None);
    slack.add_user("U0MAL", "mallory", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = database_url(Backend::Sqlite, dir.path()).await;
    let cfg: ControlConfig = config(&dsn, SYSTEM_KEY, &slack_yaml(&slack, extra));
    assert!(cfg.slack.is_some());
    let plane = Plane::start_with(cfg, StartOptions::default(), dir).await;
    let acme = org(&plane, "acme", &["prod-db", "staging-db"], acme_rules).await;
    let globex = org(&plane, "globex", &["analytics"], rules()).await;
    Env {
        plane,
        slack,
        acme,
        globex,
    }
}

async fn start() -> Env {
    start_with("", rules()).await
}

impl Env {
    fn actions_url(&self) -> String {
        format!("{}/integrations/slack/actions", self.plane.base)
    }

    fn running(&self) -> &Running {
        self.plane.running.as_ref().expect("running")
    }

    async fn request(&self, org: &Org, requester: &str, resource: &str) -> String {
        let started = Instant::now();
        let (status, v) = self
            .plane
            .call(
                "POST",
                "/api/v1/access-requests",
                Some(&org.editor),
                Some(&org.id),
                Some(json!({
                    "requester": requester,
                    "resource": resource,
                    "reason": "incident <!channel> 42",
                    "requested_duration_s": 3600,
                    "scopes": {"operation": "read"},
                })),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        // Filing a request never waits for Slack.
        assert!(started.elapsed() < Duration::from_secs(3), "{started:?}");
        v["id"].as_str().expect("id").to_string()
    }

    async fn get(&self, org: &Org, id: &str) -> Value {
        self.plane
            .ok(
                "GET",
                &format!("/api/v1/access-requests/{id}"),
                &org.reader,
                Some(&org.id),
                None,
            )
            .await
    }

    async fn act(&self, org: &Org, id: &str, verb: &str, who: &str) -> Value {
        self.plane
            .ok(
                "POST",
                &format!("/api/v1/access-requests/{id}/{verb}"),
                &org.editor,
                Some(&org.id),
                Some(json!({"approver": who, "reason": format!("{verb} via API")})),
            )
            .await
    }

    /// The approval message of request `id` (found by its button value or its footer).
    async fn message_of(&self, id: &str) -> Message {
        self.slack
            .wait_for_message(WAIT, |m| {
                !m.channel.starts_with('D') && m.rendered().contains(id)
            })
            .await
            .expect("approval message posted")
    }

    /// Waits until the approval message of `id` shows `what` and has no buttons.
    async fn wait_decided(&self, id: &str, what: &str) -> Message {
        self.slack
            .wait_for_message(WAIT, |m| {
                !m.channel.starts_with('D')
                    && m.rendered().contains(id)
                    && m.rendered().contains(what)
                    && !m.has_button(APPROVE_ACTION)
                    && !m.has_button(DENY_ACTION)
            })
            .await
            .unwrap_or_else(|e| panic!("message of {id} never showed {what:?}: {e:#}"))
    }

    /// Waits for a direct message in `channel` containing `what`.
    async fn wait_dm(&self, channel: &str, what: &str) -> Message {
        self.slack
            .wait_for_message(WAIT, |m| {
                m.channel == channel && m.rendered().contains(what)
            })
            .await
            .unwrap_or_else(|e| panic!("no DM in {channel} with {what:?}: {e:#}"))
    }

    async fn admin_events(&self, org: &Org) -> Vec<Value> {
        let v = self
            .plane
            .ok(
                "GET",
                "/api/v1/audit?kind=admin_change&limit=500",
                &org.reader,
                Some(&org.id),
                None,
            )
            .await;
        v["events"].as_array().expect("events").clone()
    }
}

/// The fallback text of Slack's date token for unix ms: `2026-11-21 10:04:05 UTC`.
fn utc(ms: i64) -> String {
    format!("{} UTC", &format_rfc3339_ms(ms)[..19].replace('T', " "))
}

fn button_value(m: &Message, action: &str) -> String {
    m.blocks
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == action)
        .map(|e| e["value"].as_str().unwrap().to_string())
        .expect("button")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_posted_to_the_channel_by_precedence() {
    let env = start().await;
    // Resource channel, then the org's channel (by name), then the default.
    let prod = env.request(&env.acme, "alice", "prod-db").await;
    let staging = env.request(&env.acme, "alice", "staging-db").await;
    let analytics = env.request(&env.globex, "alice", "analytics").await;
    for (id, channel, org) in [
        (&prod, "CPROD", &env.acme),
        (&staging, "CACME", &env.acme),
        (&analytics, "CDEFAULT", &env.globex),
    ] {
        let m = env.message_of(id).await;
        assert_eq!(m.channel, channel, "{id}");
        assert!(m.has_button(APPROVE_ACTION) && m.has_button(DENY_ACTION));
        for action in [APPROVE_ACTION, DENY_ACTION] {
            assert_eq!(button_value(&m, action), format!("{}:{id}", org.id));
        }
        let text = m.rendered();
        assert!(text.contains("*alice* requests access"), "{text}");
        // People's text is escaped: no @channel from a reason.
        assert!(text.contains("&lt;!channel&gt;") && !text.contains("<!channel>"));
        // The message is remembered for later updates (just after it was posted).
        let store = env.running().control().store().clone();
        let (org_id, request_id) = (org.id.parse::<OrgId>().unwrap(), id.parse().unwrap());
        let stored = gate_test_support::wait_until("message recorded", WAIT, || {
            let store = store.clone();
            async move {
                store
                    .get_slack_message(org_id, request_id)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await
        .unwrap();
        assert_eq!(
            (stored.channel, stored.ts),
            (m.channel.clone(), m.ts.clone())
        );
    }
    let posts = env.slack.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 3);
    for call in &posts {
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer xoxb-test-token")
        );
    }
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_in_slack_updates_the_message_and_tells_the_requester() {
    let env = start().await;
    let id = env.request(&env.acme, "alice", "prod-db").await;
    let m = env.message_of(&id).await;
    let click = env
        .slack
        .click(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION)
        .await
        .unwrap();
    assert_eq!(click.status, 200, "{}", click.body);

    let decided = env.wait_decided(&id, "*Approved* by *bob*").await;
    assert_eq!(
        (decided.channel.as_str(), decided.ts.as_str()),
        ("CPROD", m.ts.as_str())
    );
    let r = env.get(&env.acme, &id).await;
    assert_eq!(r["status"], "approved");
    assert_eq!(r["decided_by"], "bob");
    assert_eq!(r["decision_reason"], "approved in Slack");
    // Who and when: the decision time as the message's date fallback.
    let when = utc(r["decided_at"].as_i64().expect("decided_at"));
    assert!(
        decided.rendered().contains(&when),
        "{when} in {}",
        decided.rendered()
    );
    let update = env
        .slack
        .wait_for_call("chat.update", WAIT, |b| b["ts"] == m.ts.as_str())
        .await
        .unwrap();
    assert_eq!(update.body["channel"], "CPROD");

    // alice is mapped (requester_mappings) → conversations.open, then the DM.
    env.slack
        .wait_for_call("conversations.open", WAIT, |b| b["users"] == "U0ALICE")
        .await
        .unwrap();
    let dm = env.wait_dm("D0ALICE", "*approved* by *bob*").await;
    assert!(dm.rendered().contains("prod-db"));

    // Audited as the service audits any decision, with Slack as the actor.
    let events = env.admin_events(&env.acme).await;
    let approve = events
        .iter()
        .find(|e| e["action"] == "access_request.approve")
        .expect("approval audited");
    assert_eq!(approve["identity"], "slack:U0BOB");
    assert_eq!(approve["event"]["details"]["by"], "bob");
    // No refusal was told to anyone.
    assert!(env.slack.responses().is_empty());
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_in_slack_by_profile_email() {
    let env = start().await;
    // dave has no requester mapping: found by users.lookupByEmail with his identity's email.
    let id = env.request(&env.acme, "dave", "staging-db").await;
    let m = env.message_of(&id).await;
    assert_eq!(m.channel, "CACME");
    // carol has no mapping: users.info gives her profile email, which is her identity's.
    let click = env
        .slack
        .click(&env.actions_url(), "U0CAROL", &m, DENY_ACTION)
        .await
        .unwrap();
    assert_eq!(click.status, 200);
    env.slack
        .wait_for_call("users.info", WAIT, |b| b["user"] == "U0CAROL")
        .await
        .unwrap();
    env.wait_decided(&id, "*Denied* by *carol*").await;
    let r = env.get(&env.acme, &id).await;
    assert_eq!(r["status"], "denied");
    assert_eq!(r["decided_by"], "carol");
    assert_eq!(r["decision_reason"], "denied in Slack");
    env.slack
        .wait_for_call("users.lookupByEmail", WAIT, |b| {
            b["email"] == "dave@example.com"
        })
        .await
        .unwrap();
    env.wait_dm("D0DAVE", "*denied* by *carol*").await;
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_unsigned_clicks_change_nothing() {
    let env = start().await;
    let id = env.request(&env.acme, "alice", "prod-db").await;
    let m = env.message_of(&id).await;
    for signing in [
        Signing::BadSignature,
        Signing::Stale,
        Signing::Future,
        Signing::Unsigned,
    ] {
        let click = env
            .slack
            .click_signed(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION, signing)
            .await
            .unwrap();
        assert_eq!(click.status, 401, "{signing:?}: {}", click.body);
    }
    // A signed request that is not an interaction at all.
    let r = env
        .slack
        .send_interaction(&env.actions_url(), &json!("nope"), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // An oversized body is refused before anything else.
    let big = vec![b'a'; 100 * 1024];
    let addr = env.plane.base.trim_start_matches("http://").to_string();
    let r = gate_test_support::http_request(
        &addr,
        "POST",
        "/integrations/slack/actions",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &big,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);

    // Nothing happened: still pending, the message untouched, nobody looked up.
    assert_eq!(env.get(&env.acme, &id).await["status"], "pending");
    assert!(env.slack.calls_to("chat.update").is_empty());
    assert!(env.slack.calls_to("users.info").is_empty());
    assert!(env.slack.responses().is_empty());
    let now = env
        .slack
        .messages()
        .into_iter()
        .find(|x| x.ts == m.ts)
        .unwrap();
    assert_eq!(now.updates, 0);
    assert!(now.has_button(APPROVE_ACTION));

    // The same click, signed properly, works.
    let click = env
        .slack
        .click(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION)
        .await
        .unwrap();
    assert_eq!(click.status, 200);
    env.wait_decided(&id, "*Approved* by *bob*").await;
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clickers_are_told_privately_and_nothing_changes() {
    let env = start().await;
    // bob is an approver, but this is his own request.
    let id = env.request(&env.acme, "bob", "prod-db").await;
    let m = env.message_of(&id).await;

    let refused = |who: &'static str, action: &'static str, expect: &'static str| {
        let env = &env;
        let m = m.clone();
        async move {
            let click = env
                .slack
                .click(&env.actions_url(), who, &m, action)
                .await
                .unwrap();
            assert_eq!(click.status, 200, "{who}");
            let told = env
                .slack
                .wait_for_response(&click.response_url, WAIT)
                .await
                .unwrap();
            assert_eq!(told["response_type"], "ephemeral", "{who}: {told}");
            assert_eq!(told["replace_original"], false);
            let text = told["text"].as_str().unwrap();
            assert!(text.contains("not allowed"), "{who}: {text}");
            assert!(text.contains(expect), "{who}: {text}");
        }
    };
    // Self-approval (either button), an unknown Slack user, and mapped identities that
    // are in no approver group.
    refused("U0BOB", APPROVE_ACTION, "self-approval").await;
    refused("U0BOB", DENY_ACTION, "self-approval").await;
    refused("U0NOBODY", APPROVE_ACTION, "not linked").await;
    refused("U0MAL", APPROVE_ACTION, "approver group").await;
    refused("U0ALICE", DENY_ACTION, "approver group").await;
    // Without a response_url, the refusal is a chat.postEphemeral to the clicker.
    let mut payload = env
        .slack
        .block_actions_payload("U0NOBODY", &m, APPROVE_ACTION, "")
        .unwrap();
    payload.as_object_mut().unwrap().remove("response_url");
    let r = env
        .slack
        .send_interaction(&env.actions_url(), &payload, Signing::Valid)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let ephemeral = env
        .slack
        .wait_for_call("chat.postEphemeral", WAIT, |b| b["user"] == "U0NOBODY")
        .await
        .unwrap();
    assert_eq!(ephemeral.body["channel"], "CPROD");
    assert!(
        ephemeral.body["text"]
            .as_str()
            .unwrap()
            .contains("not linked")
    );

    assert_eq!(env.get(&env.acme, &id).await["status"], "pending");
    assert!(env.slack.calls_to("chat.update").is_empty());
    let now = env
        .slack
        .messages()
        .into_iter()
        .find(|x| x.ts == m.ts)
        .unwrap();
    assert_eq!(now.updates, 0);
    assert!(now.has_button(APPROVE_ACTION));
    assert!(
        !env.admin_events(&env.acme).await.iter().any(
            |e| e["action"] == "access_request.approve" || e["action"] == "access_request.deny"
        )
    );

    // carol may; a click on the stale message afterwards is told it changed nothing and
    // gets the message refreshed.
    let late = env
        .slack
        .block_actions_payload("U0CAROL", &m, DENY_ACTION, &env.slack.new_response_url())
        .unwrap();
    env.slack
        .click(&env.actions_url(), "U0CAROL", &m, APPROVE_ACTION)
        .await
        .unwrap();
    env.wait_decided(&id, "*Approved* by *carol*").await;
    let updates_before = env
        .slack
        .calls_to("chat.update")
        .iter()
        .filter(|c| !c.failed)
        .count();
    let r = env
        .slack
        .send_interaction(&env.actions_url(), &late, Signing::Valid)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let told = env
        .slack
        .wait_for_response(late["response_url"].as_str().unwrap(), WAIT)
        .await
        .unwrap();
    assert!(
        told["text"].as_str().unwrap().contains("not changed"),
        "{told}"
    );
    env.slack
        .wait_for_calls("chat.update", updates_before + 1, WAIT, |c| !c.failed)
        .await
        .unwrap();
    assert_eq!(env.get(&env.acme, &id).await["status"], "approved");
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_elsewhere_update_the_message() {
    let env = start().await;
    // Approved through the API, then revoked: the message follows, alice is told twice.
    let id = env.request(&env.acme, "alice", "prod-db").await;
    env.message_of(&id).await;
    env.act(&env.acme, &id, "approve", "bob").await;
    env.wait_decided(&id, "*Approved* by *bob*").await;
    env.wait_dm("D0ALICE", "*approved* by *bob*").await;
    env.act(&env.acme, &id, "revoke", "carol").await;
    env.wait_decided(&id, "*Revoked* by *carol*").await;
    env.wait_dm("D0ALICE", "*revoked* by *carol*").await;

    // Denied through the API.
    let denied = env.request(&env.acme, "alice", "staging-db").await;
    env.message_of(&denied).await;
    env.act(&env.acme, &denied, "deny", "carol").await;
    env.wait_decided(&denied, "*Denied* by *carol*").await;

    // Cancelled by the requester: the message says so (no DM for one's own cancel).
    let cancelled = env.request(&env.acme, "alice", "staging-db").await;
    env.message_of(&cancelled).await;
    env.act(&env.acme, &cancelled, "cancel", "alice").await;
    env.wait_decided(&cancelled, "*Cancelled* by *alice*").await;
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_update_the_message() {
    // A pending TTL of one second: the expiry sweep (every 2 s) expires it.
    let env = start_with(
        "",
        json!({"default_approver_groups": ["sre"], "pending_ttl_s": 1}),
    )
    .await;
    let id = env.request(&env.acme, "alice", "prod-db").await;
    env.wait_decided(&id, "*Expired* without a decision").await;
    assert_eq!(env.get(&env.acme, &id).await["status"], "expired");
    env.wait_dm("D0ALICE", "*expired* without a decision").await;
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_outage_delays_messages_and_blocks_nothing() {
    let env = start().await;
    env.slack.set_failure(Failure::Http(500));
    let id = env.request(&env.acme, "alice", "prod-db").await;
    // Tried, failed, tried again.
    env.slack
        .wait_for_calls("chat.postMessage", 2, WAIT, |c| c.failed)
        .await
        .unwrap();
    // Slack answering `ok: false` with a transient error is retried too.
    env.slack
        .set_failure(Failure::NotOk("service_unavailable".into()));
    let before = env.slack.calls_to("chat.postMessage").len();
    let calls = env
        .slack
        .wait_for_calls("chat.postMessage", before + 2, WAIT, |c| c.failed)
        .await
        .unwrap();
    assert!(calls.iter().all(|c| c.body["channel"] == "CPROD"));
    assert!(env.slack.messages().is_empty());

    // Meanwhile the request is decided through the API.
    let r = env.act(&env.acme, &id, "approve", "bob").await;
    assert_eq!(r["status"], "approved");

    // Slack is back: the message arrives, showing the decision (not a stale "pending").
    env.slack.set_failure(Failure::None);
    let m = env.wait_decided(&id, "*Approved* by *bob*").await;
    assert_eq!(m.channel, "CPROD");
    env.wait_dm("D0ALICE", "*approved* by *bob*").await;
    // Exactly one approval message was posted for the request.
    let posted: Vec<_> = env
        .slack
        .messages()
        .into_iter()
        .filter(|m| !m.channel.starts_with('D') && m.rendered().contains(&id))
        .collect();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_do_not_cross_organizations() {
    let env = start().await;
    // U0BOB is mapped to acme/bob. globex has an approver named bob too, and its
    // requests land in the shared default channel, where U0BOB can click.
    let id = env.request(&env.globex, "alice", "analytics").await;
    let m = env.message_of(&id).await;
    assert_eq!(m.channel, "CDEFAULT");
    let click = env
        .slack
        .click(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION)
        .await
        .unwrap();
    assert_eq!(click.status, 200);
    let told = env
        .slack
        .wait_for_response(&click.response_url, WAIT)
        .await
        .unwrap();
    assert_eq!(told["response_type"], "ephemeral", "{told}");
    let text = told["text"].as_str().unwrap();
    assert!(
        text.contains("not allowed") && text.contains("not linked"),
        "{text}"
    );
    // Nothing changed in globex.
    assert_eq!(env.get(&env.globex, &id).await["status"], "pending");
    assert!(env.slack.calls_to("chat.update").is_empty());
    assert!(
        !env.admin_events(&env.globex)
            .await
            .iter()
            .any(
                |e| e["action"] == "access_request.approve" || e["action"] == "access_request.deny"
            )
    );
    // globex decides in its own way; U0BOB still approves acme's requests as acme's bob.
    env.act(&env.globex, &id, "deny", "carol").await;
    env.wait_decided(&id, "*Denied* by *carol*").await;
    let acme = env.request(&env.acme, "alice", "staging-db").await;
    let m = env.message_of(&acme).await;
    env.slack
        .click(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION)
        .await
        .unwrap();
    env.wait_decided(&acme, "*Approved* by *bob*").await;

    // requester_mappings too: acme/mallory is U0MAL, globex's mallory is nobody in Slack
    // (no email): her denial is not DMed to U0MAL; acme's mallory's is.
    let theirs = env.request(&env.globex, "mallory", "analytics").await;
    env.message_of(&theirs).await;
    env.act(&env.globex, &theirs, "deny", "carol").await;
    env.wait_decided(&theirs, "*Denied* by *carol*").await;
    let ours = env.request(&env.acme, "mallory", "staging-db").await;
    env.message_of(&ours).await;
    env.act(&env.acme, &ours, "deny", "carol").await;
    // Events are handled in order: once acme's DM is there, globex's was dealt with.
    env.wait_dm("D0MAL", &ours).await;
    let to_mal: Vec<_> = env
        .slack
        .messages()
        .into_iter()
        .filter(|m| m.channel == "D0MAL")
        .collect();
    assert_eq!(to_mal.len(), 1, "{to_mal:#?}");
    assert!(!to_mal[0].rendered().contains(&theirs));
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_times_out_is_not_posted_twice() {
    // Slack posts, but answers after the control plane gave up waiting.
    let env = start_with("  request_timeout: 1s\n", rules()).await;
    env.slack.set_failure(Failure::Late(Duration::from_secs(3)));
    let id = env.request(&env.acme, "alice", "prod-db").await;
    let m = env.message_of(&id).await;
    env.slack.set_failure(Failure::None);
    // The worker handles one job at a time: once the next request is posted, the first
    // post was given up (or, wrongly, retried).
    let next = env.request(&env.acme, "alice", "staging-db").await;
    env.message_of(&next).await;
    let posts: Vec<_> = env
        .slack
        .calls_to("chat.postMessage")
        .into_iter()
        .filter(|c| c.body.to_string().contains(&id))
        .collect();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let store = env.running().control().store().clone();
    let (org, request) = (env.acme.id.parse::<OrgId>().unwrap(), id.parse().unwrap());
    assert!(
        store
            .get_slack_message(org, request)
            .await
            .unwrap()
            .is_none()
    );
    // The message posted without Gate knowing still works, and a click links it.
    env.slack
        .click(&env.actions_url(), "U0BOB", &m, APPROVE_ACTION)
        .await
        .unwrap();
    let decided = env.wait_decided(&id, "*Approved* by *bob*").await;
    assert_eq!(decided.ts, m.ts);
    assert_eq!(
        store
            .get_slack_message(org, request)
            .await
            .unwrap()
            .map(|s| s.ts),
        Some(m.ts.clone())
    );
    env.plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_slack_the_route_does_not_exist() {
    let plane = Plane::start(Backend::Sqlite).await;
    let (status, _) = plane
        .call("POST", "/integrations/slack/actions", None, None, None)
        .await;
    assert_eq!(status, 404);
    plane.stop().await;
}
