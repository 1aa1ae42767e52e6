//! `POST /integrations/slack/actions`: button clicks on approval messages.
//!
//! Slack sends `application/x-www-form-urlencoded` with one field, `payload`, holding the
//! interaction as JSON (`type: block_actions`). This route is not behind the API's bearer
//! keys: Slack authenticates by signing the request ([`super::signature`]), and that is
//! checked on the raw body — timestamp within five minutes, HMAC in constant time —
//! before anything is parsed. A refused signature is a `401` and nothing else happens.
//!
//! A verified click is acknowledged at once (Slack wants an answer within three seconds)
//! and processed in a task of its own:
//!
//! 1. The button's value names the org and the request; it is only used to find them.
//! 2. The clicker is mapped to an identity ([`Slack::clicker_identity`]); a clicker without
//!    one is told, privately, that they may not decide.
//! 3. The decision is the service's `approve_access_request` / `deny_access_request`, as
//!    that identity (actor `slack:<user id>`), so approver groups, self-approval and audit
//!    are exactly the API's. A refusal is told to the clicker alone (ephemeral, through the
//!    interaction's `response_url`, or `chat.postEphemeral`); nothing changes.
//! 4. The transition's event updates the message (who decided, when, no buttons) and
//!    notifies the requester, through the worker.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gate_store::OrgId;
use gate_store::time::now_ms;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::blocks::{self, APPROVE_ACTION, DENY_ACTION};
use super::{ACTIONS_PATH, Slack, signature};
use crate::error::ServiceError;
use crate::service::access_requests::{self, Decision};
use crate::{Caller, Principal};

/// Interaction payloads are a few kilobytes; nothing legitimate comes near this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The interactivity route over `slack`.
pub fn router(slack: Arc<Slack>) -> Router {
    Router::new()
        .route(ACTIONS_PATH, post(interaction))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(slack)
}

/// The parts of a `block_actions` payload used here; the rest is ignored.
#[derive(Debug, Deserialize)]
pub struct Payload {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub container: Option<Container>,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct Action {
    #[serde(default)]
    pub action_id: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub message_ts: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Channel {
    pub id: String,
}

/// A click on one of our buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub approve: bool,
    pub org: OrgId,
    pub request: Uuid,
    pub user: String,
    pub channel: Option<String>,
    pub message_ts: Option<String>,
    pub response_url: Option<String>,
}

/// Short Slack tokens (ids, timestamps) only; anything else is dropped.
fn token(s: Option<String>) -> Option<String> {
    s.filter(|s| {
        !s.is_empty() && s.len() <= 100 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// The `payload` form field of a verified body, parsed.
pub fn parse_body(body: &[u8]) -> Result<Payload, &'static str> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v)
        .ok_or("no payload field")?;
    serde_json::from_str(&payload).map_err(|_| "payload is not an interaction")
}

impl Click {
    /// The click a payload carries, when it is a `block_actions` on an Approve or Deny
    /// button of ours with a well-formed value.
    pub fn from_payload(p: Payload) -> Option<Click> {
        if p.kind != "block_actions" {
            return None;
        }
        let user = token(p.user.map(|u| u.id))?;
        let (approve, value) = p.actions.into_iter().find_map(|a| {
            let approve = match a.action_id.as_str() {
                APPROVE_ACTION => true,
                DENY_ACTION => false,
                _ => return None,
            };
            Some((approve, a.value?))
        })?;
        let (org, request) = blocks::parse_button_value(&value)?;
        let container = p.container;
        let channel = token(
            container
                .as_ref()
                .and_then(|c| c.channel_id.clone())
                .or(p.channel.map(|c| c.id)),
        );
        Some(Click {
            approve,
            org,
            request,
            user,
            channel,
            message_ts: token(container.and_then(|c| c.message_ts)),
            response_url: p.response_url.filter(|u| u.len() <= 2048),
        })
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn interaction(State(slack): State<Arc<Slack>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = signature::verify(
        slack.cfg.signing_secret.expose().as_bytes(),
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        &body,
        now_ms().div_euclid(1000),
    ) {
        tracing::warn!(error = %e, "slack: interaction refused");
        return (StatusCode::UNAUTHORIZED, "invalid Slack signature\n").into_response();
    }
    let payload = match parse_body(&body) {
        Ok(p) => p,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let kind = payload.kind.clone();
    let Some(click) = Click::from_payload(payload) else {
        tracing::debug!(kind, "slack: interaction ignored (not a Gate button)");
        return StatusCode::OK.into_response();
    };
    tokio::spawn(async move {
        let _permit = slack.clicks.clone().acquire_owned().await;
        slack.decide(click).await;
    });
    StatusCode::OK.into_response()
}

impl Slack {
    /// Processes a verified click.
    async fn decide(&self, click: Click) {
        let store = self.ctl.store();
        let request = match store.get_access_request(click.org, click.request).await {
            Ok(r) => r,
            Err(gate_store::StoreError::NotFound { .. }) => {
                return self
                    .tell(&click, "This access request no longer exists in Gate.")
                    .await;
            }
            Err(e) => {
                tracing::error!(request = %click.request, error = %e, "slack: cannot load the request");
                return self
                    .tell(&click, "Gate could not load this request; try again.")
                    .await;
            }
        };
        // The message clicked is this request's, whether or not its post was recorded.
        if let (Some(channel), Some(ts)) = (&click.channel, &click.message_ts)
            && let Err(e) = store
                .record_slack_message(click.org, request.id, channel, ts, now_ms())
                .await
        {
            tracing::warn!(request = %request.id, error = %e, "slack: cannot record the clicked message");
        }
        let identity = match self.clicker_identity(click.org, &click.user).await {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                tracing::warn!(user = %click.user, request = %request.id, "slack: click by a user mapped to no identity refused");
                return self
                    .tell(
                        &click,
                        "You are not allowed to decide this access request: your Slack \
                         account is not linked to a Gate identity.",
                    )
                    .await;
            }
            Err(message) => return self.tell(&click, &message).await,
        };
        let caller = Caller {
            org_id: Some(click.org),
            principal: Principal::System,
            actor: format!("slack:{}", click.user),
        };
        let verb = if click.approve { "approved" } else { "denied" };
        let decision = Decision {
            approver: identity.clone(),
            reason: format!("{verb} in Slack"),
        };
        let result = if click.approve {
            access_requests::approve_access_request(&self.ctl, &caller, request.id, decision).await
        } else {
            access_requests::deny_access_request(&self.ctl, &caller, request.id, decision).await
        };
        match result {
            Ok(_) => {
                tracing::info!(request = %request.id, identity, user = %click.user, "slack: access request {verb}");
            }
            Err(e) => {
                tracing::info!(request = %request.id, identity, user = %click.user, error = %e, "slack: decision refused");
                let text = match &e {
                    ServiceError::PermissionDenied(m) => {
                        format!("You are not allowed to decide this access request: {m}")
                    }
                    ServiceError::Conflict(m) => {
                        // Someone was quicker (or it expired): show the message as it is.
                        self.queue_refresh(click.org, request.id);
                        format!("This access request was not changed: {m}")
                    }
                    ServiceError::NotFound(_) => {
                        "This access request no longer exists in Gate.".to_string()
                    }
                    e => format!(
                        "Gate could not record your decision ({}); try again, or use \
                         `gate access`.",
                        e.message()
                    ),
                };
                self.tell(&click, &text).await;
            }
        }
    }

    /// Tells the clicker alone: through the interaction's `response_url`, or
    /// `chat.postEphemeral` when there is none (or it failed).
    async fn tell(&self, click: &Click, text: &str) {
        if let Some(url) = &click.response_url {
            let body = json!({
                "response_type": "ephemeral",
                "replace_original": false,
                "text": text,
            });
            match self.api.respond(url, &body).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "slack: response_url failed"),
            }
        }
        if let Some(channel) = &click.channel
            && let Err(e) = self.api.post_ephemeral(channel, &click.user, text).await
        {
            tracing::warn!(error = %e, "slack: chat.postEphemeral failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(payload: &serde_json::Value) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn clicks_from_payloads() {
        let org = OrgId::new();
        let id = Uuid::now_v7();
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U0BOB", "username": "bob", "name": "bob", "team_id": "T1"},
            "actions": [{"action_id": APPROVE_ACTION, "block_id": "b", "value": format!("{org}:{id}"),
                         "type": "button", "action_ts": "1.2"}],
            "container": {"type": "message", "message_ts": "17.01", "channel_id": "C1"},
            "channel": {"id": "C1", "name": "approvals"},
            "message": {"ts": "17.01"},
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
        });
        let click = Click::from_payload(parse_body(&body(&payload)).unwrap()).unwrap();
        assert_eq!(
            click,
            Click {
                approve: true,
                org,
                request: id,
                user: "U0BOB".into(),
                channel: Some("C1".into()),
                message_ts: Some("17.01".into()),
                response_url: Some("https://hooks.slack.com/actions/T1/1/x".into()),
            }
        );
        let mut other = payload.clone();
        other["actions"][0]["action_id"] = json!("something_else");
        assert!(Click::from_payload(parse_body(&body(&other)).unwrap()).is_none());
        let mut bad_value = payload.clone();
        bad_value["actions"][0]["value"] = json!("nope");
        assert!(Click::from_payload(parse_body(&body(&bad_value)).unwrap()).is_none());
        let mut no_user = payload.clone();
        no_user["user"] = json!({"id": ""});
        assert!(Click::from_payload(parse_body(&body(&no_user)).unwrap()).is_none());
        let mut view = payload;
        view["type"] = json!("view_submission");
        assert!(Click::from_payload(parse_body(&body(&view)).unwrap()).is_none());
        assert!(parse_body(b"payload=%7Bnot json").is_err());
        assert!(parse_body(b"other=1").is_err());
    }
}
