//! A fake Slack, for testing Slack approvals.
//!
//! **This is a mock.** No real Slack workspace is reachable from test machines, so this
//! in-process HTTP server (axum, on a free loopback port) stands in for the parts of Slack
//! the control plane talks to, and plays Slack's part in the other direction:
//!
//! - **Web API** at [`FakeSlack::api_base_url`] (`http://127.0.0.1:<port>/api`): the
//!   methods Gate calls — `chat.postMessage` (answers a channel and a fresh `ts`; a user id
//!   as the channel is a DM and answers `D…`), `chat.update` (the message must exist),
//!   `chat.postEphemeral`, `users.info` (profile email from the users added with
//!   [`FakeSlack::add_user`]), `users.lookupByEmail` (`users_not_found` otherwise),
//!   `conversations.open` (`D<user id without its first letter>`), and `auth.test`. JSON
//!   and form bodies are both accepted, as Slack does; every call is recorded ([`Call`])
//!   with its body as JSON (form fields become string members). A wrong bot token gets
//!   `invalid_auth`.
//! - **Outages**: [`FakeSlack::set_failure`] makes every Web API call fail with an HTTP
//!   status ([`Failure::Http`]) or `ok: false` ([`Failure::NotOk`]) until it is set back to
//!   [`Failure::None`]. Failed calls are recorded too (`failed: true`). [`Failure::Late`]
//!   is the other kind of trouble: every call is carried out (a message is posted) but
//!   answered only after a delay, so a caller with a shorter timeout sees a timeout for a
//!   call that did happen (recorded with `failed: false`).
//! - **Messages**: what `chat.postMessage` posted and `chat.update` changed, as the channel
//!   would show it now ([`FakeSlack::messages`], [`FakeSlack::wait_for_message`]).
//! - **`response_url`s**: each interaction gets a fresh one on this server
//!   (`http://127.0.0.1:<port>/response/<n>`); what is posted there is recorded
//!   ([`FakeSlack::responses`], [`FakeSlack::wait_for_response`]).
//! - **Interactions**: [`FakeSlack::click`] presses a button of a posted message and sends
//!   the `block_actions` interaction exactly as Slack does — `POST` with
//!   `application/x-www-form-urlencoded` body `payload=<url-encoded JSON>`, signed with
//!   `X-Slack-Request-Timestamp` and `X-Slack-Signature: v0=<hex HMAC-SHA256 of
//!   "v0:{ts}:{body}">` — and [`FakeSlack::click_signed`] does the same with a wrong
//!   signature, a stale or future timestamp, or no signature ([`Signing`]).
//!
//! Waiting is event-driven: every recorded change wakes the `wait_for_*` helpers, which
//! give up after their timeout; nothing sleeps for a fixed time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::HttpResponse;

/// The fake workspace's team id.
pub const TEAM_ID: &str = "T0FAKE";
/// The bot's own user id.
pub const BOT_USER_ID: &str = "U0GATEBOT";

/// How Web API calls fail while an outage is simulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Slack is up.
    None,
    /// Every call answers this HTTP status (e.g. 500, 503, 429).
    Http(u16),
    /// Every call answers `{"ok": false, "error": <this>}` (e.g. `internal_error`).
    NotOk(String),
    /// Every call is carried out as usual, but answered only after this long.
    Late(Duration),
}

/// How an interaction is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// As Slack does: now, with the signing secret.
    Valid,
    /// Now, but with another secret.
    BadSignature,
    /// Correctly signed, dated six minutes ago.
    Stale,
    /// Correctly signed, dated six minutes ahead.
    Future,
    /// No signature headers at all.
    Unsigned,
}

/// One Web API call as received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `users.info`, …
    pub method: String,
    /// The body as JSON (form fields as string members).
    pub body: Value,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// Whether the call was failed on purpose ([`FakeSlack::set_failure`]).
    pub failed: bool,
}

/// A message as the channel shows it now.
#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    /// `text` as last posted or updated.
    pub text: String,
    /// `blocks` as last posted or updated (`Null` when there were none).
    pub blocks: Value,
    /// How many times `chat.update` changed it.
    pub updates: usize,
}

impl Message {
    /// The text and blocks as one string, for `contains` checks.
    pub fn rendered(&self) -> String {
        format!("{}\n{}", self.text, self.blocks)
    }

    /// Whether the message still has a button with this `action_id`.
    pub fn has_button(&self, action_id: &str) -> bool {
        find_button(&self.blocks, action_id).is_some()
    }
}

/// Something posted to a `response_url`.
#[derive(Debug, Clone)]
pub struct ResponsePost {
    pub url: String,
    pub body: Value,
}

/// A user of the fake workspace.
#[derive(Debug, Clone)]
pub struct SlackUser {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
}

/// What a click got back from the control plane, and the `response_url` it carried.
#[derive(Debug, Clone)]
pub struct ClickResult {
    pub status: u16,
    pub body: String,
    pub response_url: String,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    messages: Vec<Message>,
    users: Vec<SlackUser>,
    responses: Vec<ResponsePost>,
    failure: Option<Failure>,
    next_ts: u64,
    next_response: u64,
}

struct Shared {
    token: String,
    inner: Mutex<Inner>,
    /// Bumped on every recorded change; waiters watch it.
    changed: tokio::sync::watch::Sender<u64>,
    base_secs: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The fake Slack server. Stopped when dropped.
pub struct FakeSlack {
    addr: SocketAddr,
    signing_secret: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Slack's request signature: `v0=` + hex HMAC-SHA256 over `v0:{timestamp}:{body}`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn find_button<'a>(blocks: &'a Value, action_id: &str) -> Option<(&'a Value, &'a Value)> {
    blocks.as_array()?.iter().find_map(|block| {
        block
            .get("elements")?
            .as_array()?
            .iter()
            .find(|e| e["type"] == "button" && e["action_id"] == action_id)
            .map(|button| (block, button))
    })
}

/// A request body as JSON: JSON as is, form fields as string members.
fn body_json(headers: &HeaderMap, body: &[u8]) -> Value {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !form && let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v;
    }
    let mut map = Map::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Value::Object(map)
}

fn user_json(u: &SlackUser) -> Value {
    json!({
        "id": u.id,
        "team_id": TEAM_ID,
        "name": u.name,
        "real_name": u.name,
        "is_bot": false,
        "profile": {
            "real_name": u.name,
            "display_name": u.name,
            "email": u.email,
        },
    })
}

fn not_ok(error: &str) -> Value {
    json!({"ok": false, "error": error})
}

async fn api(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let late = match shared.lock().failure {
        Some(Failure::Late(delay)) => Some(delay),
        _ => None,
    };
    let response = api_now(&shared, &method, &headers, &body);
    if let Some(delay) = late {
        tokio::time::sleep(delay).await;
    }
    response
}

/// A Web API call, carried out and answered at once.
fn api_now(shared: &Shared, method: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let body = body_json(headers, body);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut inner = shared.lock();
    let failure = inner
        .failure
        .clone()
        .filter(|f| matches!(f, Failure::Http(_) | Failure::NotOk(_)));
    inner.calls.push(Call {
        method: method.to_string(),
        body: body.clone(),
        authorization: authorization.clone(),
        failed: failure.is_some(),
    });
    let answer = match failure {
        Some(Failure::Http(status)) => {
            drop(inner);
            shared.bump();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, "fake Slack outage\n").into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            return response;
        }
        Some(Failure::NotOk(error)) => not_ok(&error),
        _ if authorization.as_deref() != Some(&format!("Bearer {}", shared.token)) => {
            not_ok("invalid_auth")
        }
        _ => answer(shared, &mut inner, method, &body),
    };
    drop(inner);
    shared.bump();
    axum::Json(answer).into_response()
}

fn str_field<'a>(body: &'a Value, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or("")
}

/// A DM channel id for a user id: `U123` → `D123`.
fn dm_channel(user: &str) -> String {
    format!("D{}", user.get(1..).unwrap_or(""))
}

fn answer(shared: &Shared, inner: &mut Inner, method: &str, body: &Value) -> Value {
    match method {
        "auth.test" => json!({"ok": true, "user_id": BOT_USER_ID, "team_id": TEAM_ID}),
        "chat.postMessage" => {
            let mut channel = str_field(body, "channel").to_string();
            if channel.is_empty() {
                return not_ok("channel_not_found");
            }
            if channel.starts_with('U') || channel.starts_with('W') {
                channel = dm_channel(&channel);
            }
            inner.next_ts += 1;
            let ts = format!("{}.{:06}", shared.base_secs, inner.next_ts);
            let message = Message {
                channel: channel.clone(),
                ts: ts.clone(),
                text: str_field(body, "text").to_string(),
                blocks: body.get("blocks").cloned().unwrap_or(Value::Null),
                updates: 0,
            };
            inner.messages.push(message);
            json!({"ok": true, "channel": channel, "ts": ts, "message": {
                "type": "message", "ts": ts, "text": str_field(body, "text"),
                "blocks": body.get("blocks"), "bot_id": "B0GATE", "user": BOT_USER_ID}})
        }
        "chat.update" => {
            let (channel, ts) = (str_field(body, "channel"), str_field(body, "ts"));
            let Some(m) = inner
                .messages
                .iter_mut()
                .find(|m| m.channel == channel && m.ts == ts)
            else {
                return not_ok("message_not_found");
            };
            if let Some(text) = body.get("text").and_then(Value::as_str) {
                m.text = text.to_string();
            }
            if let Some(blocks) = body.get("blocks") {
                m.blocks = blocks.clone();
            }
            m.updates += 1;
            json!({"ok": true, "channel": channel, "ts": ts, "text": m.text})
        }
        "chat.postEphemeral" => {
            if str_field(body, "channel").is_empty() || str_field(body, "user").is_empty() {
                return not_ok("channel_not_found");
            }
            inner.next_ts += 1;
            json!({"ok": true, "message_ts": format!("{}.{:06}", shared.base_secs, inner.next_ts)})
        }
        "users.info" => {
            let id = str_field(body, "user");
            match inner.users.iter().find(|u| u.id == id) {
                Some(u) => json!({"ok": true, "user": user_json(u)}),
                None => not_ok("user_not_found"),
            }
        }
        "users.lookupByEmail" => {
            let email = str_field(body, "email");
            match inner.users.iter().find(|u| {
                u.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
            }) {
                Some(u) => json!({"ok": true, "user": user_json(u)}),
                None => not_ok("users_not_found"),
            }
        }
        "conversations.open" => {
            let users = str_field(body, "users");
            match users.split(',').next().map(str::trim) {
                Some(u) if !u.is_empty() => {
                    json!({"ok": true, "channel": {"id": dm_channel(u)}})
                }
                _ => not_ok("users_list_not_supplied"),
            }
        }
        _ => not_ok("unknown_method"),
    }
}

async fn response_url(
    State(shared): State<Arc<Shared>>,
    Path(n): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = body_json(&headers, &body);
    let url = format!("/response/{n}");
    shared.lock().responses.push(ResponsePost { url, body });
    shared.bump();
    axum::Json(json!({"ok": true})).into_response()
}

impl FakeSlack {
    /// Starts the fake on a free loopback port. `bot_token` is what Web API calls must
    /// bear; `signing_secret` signs the interactions it sends.
    pub async fn start(bot_token: &str, signing_secret: &str) -> anyhow::Result<FakeSlack> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("fake Slack: bind")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: bot_token.to_string(),
            inner: Mutex::new(Inner::default()),
            changed: tokio::sync::watch::Sender::new(0),
            base_secs: now_secs(),
        });
        let app = Router::new()
            .route("/api/{method}", post(api))
            .route("/response/{n}", post(response_url))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeSlack {
            addr,
            signing_secret: signing_secret.to_string(),
            shared,
            task,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `slack.api_base_url` for the control plane.
    pub fn api_base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Adds a workspace user (`users.info`, `users.lookupByEmail`).
    pub fn add_user(&self, id: &str, name: &str, email: Option<&str>) {
        self.shared.lock().users.push(SlackUser {
            id: id.to_string(),
            name: name.to_string(),
            email: email.map(str::to_string),
        });
    }

    /// Starts or ends a simulated outage of the Web API.
    pub fn set_failure(&self, failure: Failure) {
        self.shared.lock().failure = Some(failure);
    }

    /// Every Web API call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The calls of one method.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Every message as its channel shows it now, in posting order (DMs included).
    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.clone()
    }

    /// Everything posted to `response_url`s.
    pub fn responses(&self) -> Vec<ResponsePost> {
        self.shared.lock().responses.clone()
    }

    /// Waits until `check` finds something in the fake's state.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Inner) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            if let Some(v) = check(&self.shared.lock()) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
                bail!(
                    "fake Slack: timed out after {timeout:?} waiting for {what}; calls so far: {:#?}",
                    self.calls()
                        .iter()
                        .map(|c| format!(
                            "{}{} {}",
                            c.method,
                            if c.failed { " (failed)" } else { "" },
                            c.body
                        ))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Waits for a (successful or failed) call of `method` whose body satisfies `check`.
    pub async fn wait_for_call(
        &self,
        method: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Call> {
        self.wait(&format!("a {method} call"), timeout, |inner| {
            inner
                .calls
                .iter()
                .find(|c| c.method == method && check(&c.body))
                .cloned()
        })
        .await
    }

    /// Waits until at least `count` calls of `method` satisfy `check` (e.g. `|c| c.failed`);
    /// returns them all.
    pub async fn wait_for_calls(
        &self,
        method: &str,
        count: usize,
        timeout: Duration,
        check: impl Fn(&Call) -> bool,
    ) -> anyhow::Result<Vec<Call>> {
        self.wait(&format!("{count} {method} calls"), timeout, |inner| {
            let found: Vec<Call> = inner
                .calls
                .iter()
                .filter(|c| c.method == method && check(c))
                .cloned()
                .collect();
            (found.len() >= count).then_some(found)
        })
        .await
    }

    /// Waits for a message (as it is now) that satisfies `check`.
    pub async fn wait_for_message(
        &self,
        timeout: Duration,
        check: impl Fn(&Message) -> bool,
    ) -> anyhow::Result<Message> {
        self.wait("a message", timeout, |inner| {
            inner.messages.iter().find(|m| check(m)).cloned()
        })
        .await
    }

    /// Waits for a post to the `response_url` `url` (as [`ClickResult::response_url`]).
    pub async fn wait_for_response(&self, url: &str, timeout: Duration) -> anyhow::Result<Value> {
        let path = url
            .find("/response/")
            .map(|i| url[i..].to_string())
            .unwrap_or_else(|| url.to_string());
        self.wait(&format!("a post to {url}"), timeout, |inner| {
            inner
                .responses
                .iter()
                .find(|r| r.url == path)
                .map(|r| r.body.clone())
        })
        .await
    }

    /// A fresh `response_url` on this server.
    pub fn new_response_url(&self) -> String {
        let mut inner = self.shared.lock();
        inner.next_response += 1;
        format!("http://{}/response/{}", self.addr, inner.next_response)
    }

    /// The `block_actions` payload Slack sends when `user_id` presses the button
    /// `action_id` of `message` (the message as it is now: a button no longer shown
    /// cannot be pressed).
    pub fn block_actions_payload(
        &self,
        user_id: &str,
        message: &Message,
        action_id: &str,
        response_url: &str,
    ) -> anyhow::Result<Value> {
        let current = self
            .messages()
            .into_iter()
            .find(|m| m.channel == message.channel && m.ts == message.ts)
            .context("fake Slack: no such message")?;
        let (block, button) = find_button(&current.blocks, action_id)
            .with_context(|| format!("fake Slack: the message has no {action_id:?} button"))?;
        let name = self
            .shared
            .lock()
            .users
            .iter()
            .find(|u| u.id == user_id)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| user_id.to_ascii_lowercase());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let action_ts = format!("{}.{:06}", now.as_secs(), now.subsec_micros());
        let mut action = json!({
            "action_id": action_id,
            "block_id": block["block_id"],
            "text": button["text"],
            "value": button["value"],
            "type": "button",
            "action_ts": action_ts,
        });
        if let Some(style) = button.get("style") {
            action["style"] = style.clone();
        }
        Ok(json!({
            "type": "block_actions",
            "user": {"id": user_id, "username": name, "name": name, "team_id": TEAM_ID},
            "api_app_id": "A0GATE",
            "token": "fake-verification-token",
            "container": {
                "type": "message",
                "message_ts": current.ts,
                "channel_id": current.channel,
                "is_ephemeral": false,
            },
            "trigger_id": format!("{}.{}.fake", now.as_secs(), now.subsec_nanos()),
            "team": {"id": TEAM_ID, "domain": "gate-fake"},
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": {"id": current.channel, "name": "approvals"},
            "message": {
                "type": "message",
                "subtype": "bot_message",
                "ts": current.ts,
                "text": current.text,
                "blocks": current.blocks,
                "bot_id": "B0GATE",
                "user": BOT_USER_ID,
            },
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [action],
        }))
    }

    /// Presses `action_id` on `message` as `user_id`, signed as Slack signs it, and sends
    /// the interaction to `actions_url` (`http://host:port/integrations/slack/actions`).
    pub async fn click(
        &self,
        actions_url: &str,
        user_id: &str,
        message: &Message,
        action_id: &str,
    ) -> anyhow::Result<ClickResult> {
        self.click_signed(actions_url, user_id, message, action_id, Signing::Valid)
            .await
    }

    /// Like [`FakeSlack::click`], signed as `signing` says.
    pub async fn click_signed(
        &self,
        actions_url: &str,
        user_id: &str,
        message: &Message,
        action_id: &str,
        signing: Signing,
    ) -> anyhow::Result<ClickResult> {
        let response_url = self.new_response_url();
        let payload = self.block_actions_payload(user_id, message, action_id, &response_url)?;
        let r = self
            .send_interaction(actions_url, &payload, signing)
            .await?;
        Ok(ClickResult {
            status: r.status,
            body: r.body,
            response_url,
        })
    }

    /// Sends any interaction payload to `actions_url` as Slack does: form-encoded
    /// `payload=<JSON>`, with the signature headers `signing` asks for.
    pub async fn send_interaction(
        &self,
        actions_url: &str,
        payload: &Value,
        signing: Signing,
    ) -> anyhow::Result<HttpResponse> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let now = now_secs();
        let (timestamp, secret) = match signing {
            Signing::Valid | Signing::Unsigned => (now, self.signing_secret.clone()),
            Signing::BadSignature => (now, format!("not-{}", self.signing_secret)),
            Signing::Stale => (now - 360, self.signing_secret.clone()),
            Signing::Future => (now + 360, self.signing_secret.clone()),
        };
        let timestamp = timestamp.to_string();
        let signature = sign(&secret, &timestamp, body.as_bytes());
        let rest = actions_url
            .strip_prefix("http://")
            .context("fake Slack: interactions are sent over plain http:// only")?;
        let (addr, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut headers = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", "Slackbot 1.0 (+https://api.slack.com/robots)"),
        ];
        if signing != Signing::Unsigned {
            headers.push(("X-Slack-Request-Timestamp", timestamp.as_str()));
            headers.push(("X-Slack-Signature", signature.as_str()));
        }
        crate::http_request(addr, "POST", path, &headers, body.as_bytes()).await
    }
}
