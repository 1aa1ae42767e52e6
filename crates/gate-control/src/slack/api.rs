//! A small Slack Web API client: the handful of methods approvals use.
//!
//! Every call is a POST to `{api_base_url}/{method}` with `Authorization: Bearer
//! <bot_token>`. Write methods (`chat.*`, `conversations.open`) send JSON; the `users.*`
//! read methods take form fields, as Slack documents for them. A response is
//! `{"ok": true, …}` or `{"ok": false, "error": "…"}`. Each [`ApiError`] says whether it is
//! worth retrying (network errors, timeouts, HTTP 429 with its `Retry-After`, 5xx, and
//! Slack's own transient errors) or not (everything else, e.g. `channel_not_found`), and
//! whether Slack may have carried the call out although it failed
//! ([`ApiError::maybe_done`]: a timeout or broken connection after the request was sent,
//! an unreadable answer), so the worker knows whether to try again — and whether a call
//! that is not idempotent (`chat.postMessage`) may be.
//!
//! The token is never logged: errors name the method and what went wrong, not the request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::SecretString;

/// Slack's answers are small; anything bigger than this is not an answer.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Slack `error` codes that mean "try again later", and whether Slack may have done
/// (part of) the call anyway: Slack documents that for `internal_error` and `fatal_error`
/// ("it's possible some aspect of the operation succeeded").
const TRANSIENT_ERRORS: [(&str, bool); 5] = [
    ("ratelimited", false),
    ("service_unavailable", false),
    ("request_timeout", false),
    ("internal_error", true),
    ("fatal_error", true),
];

/// A failed call: what went wrong, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub message: String,
    /// Network errors, timeouts, HTTP 429 and 5xx, Slack's transient errors.
    pub retryable: bool,
    /// Slack may have carried the call out: the request was sent and then the answer was
    /// lost (a timeout, a broken connection, an unreadable answer) or was an error that
    /// may follow partial success. Only `false` is safe to retry for a call that is not
    /// idempotent. `false` for connect errors (nothing sent), HTTP 429 and 5xx and the
    /// other transient `ok: false` answers.
    pub maybe_done: bool,
    /// How long Slack asked us to wait (HTTP 429 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Slack's `error` code of an `ok: false` answer.
    pub slack_error: Option<String>,
}

impl ApiError {
    /// Worth retrying; Slack did nothing.
    fn retryable(message: String) -> ApiError {
        ApiError {
            message,
            retryable: true,
            maybe_done: false,
            retry_after: None,
            slack_error: None,
        }
    }

    /// Worth retrying, but Slack may have done it already.
    fn ambiguous(message: String) -> ApiError {
        ApiError {
            maybe_done: true,
            ..ApiError::retryable(message)
        }
    }

    fn permanent(message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            retryable: false,
            maybe_done: false,
            retry_after: None,
            slack_error: None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A message as posted: where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

pub struct SlackApi {
    http: reqwest::Client,
    /// `api_base_url` without a trailing slash.
    base: String,
    /// Scheme, host and port of `api_base_url`: `response_url`s are accepted there too.
    base_origin: Option<reqwest::Url>,
    token: SecretString,
}

/// Whether `url` is somewhere Slack's `response_url`s point: `https://hooks.slack.com/…`,
/// or the same origin as the Web API (a test's fake Slack serves both).
fn allowed_response_url(url: &reqwest::Url, base: Option<&reqwest::Url>) -> bool {
    if url.scheme() == "https" && url.host_str() == Some("hooks.slack.com") {
        return true;
    }
    base.is_some_and(|b| {
        b.scheme() == url.scheme()
            && b.host_str() == url.host_str()
            && b.port_or_known_default() == url.port_or_known_default()
    })
}

impl SlackApi {
    pub fn new(base: &str, token: SecretString, timeout: Duration) -> anyhow::Result<SlackApi> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("gate-control/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("slack: cannot build the HTTP client: {e}"))?;
        let base = base.trim_end_matches('/').to_string();
        Ok(SlackApi {
            http,
            base_origin: reqwest::Url::parse(&base).ok(),
            base,
            token,
        })
    }

    /// Reads a response: status, size limit, JSON, `ok`.
    async fn answer(method: &str, response: reqwest::Response) -> ApiResult<Value> {
        let status = response.status();
        if status.as_u16() == 429 {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(ApiError {
                retry_after,
                ..ApiError::retryable(format!("{method}: rate limited (HTTP 429)"))
            });
        }
        if status.is_server_error() {
            return Err(ApiError::retryable(format!("{method}: HTTP {status}")));
        }
        if !status.is_success() {
            return Err(ApiError::permanent(format!("{method}: HTTP {status}")));
        }
        let body = read_limited(method, response).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::ambiguous(format!("{method}: the answer is not JSON")))?;
        if value.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(value);
        }
        let error = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error")
            .chars()
            .take(100)
            .collect::<String>();
        let transient = TRANSIENT_ERRORS.iter().find(|(code, _)| *code == error);
        Err(ApiError {
            message: format!("{method}: Slack answered {error}"),
            retryable: transient.is_some(),
            maybe_done: transient.is_some_and(|(_, maybe_done)| *maybe_done),
            retry_after: None,
            slack_error: Some(error),
        })
    }

    /// A failure to get an answer. Only a connect error (refused, unreachable, DNS, TLS,
    /// connect timeout) proves the request was not sent; after that — a timeout, a
    /// dropped connection, a broken body — Slack may have acted on it.
    fn transport(method: &str, e: reqwest::Error) -> ApiError {
        // Without the URL: it is ours, and the error is about getting there.
        let (builder, connect) = (e.is_builder(), e.is_connect());
        let message = format!("{method}: {}", e.without_url());
        if builder {
            ApiError::permanent(message)
        } else if connect {
            ApiError::retryable(message)
        } else {
            ApiError::ambiguous(message)
        }
    }

    /// A JSON method.
    pub async fn call(&self, method: &str, body: &Value) -> ApiResult<Value> {
        let response = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| Self::transport(method, e))?;
        Self::answer(method, response).await
    }

    /// A form method (the `users.*` readers).
    pub async fn call_form(&self, method: &str, fields: &[(&str, &str)]) -> ApiResult<Value> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let response = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| Self::transport(method, e))?;
        Self::answer(method, response).await
    }

    /// `chat.postMessage`; `message` holds `text` and `blocks`.
    pub async fn post_message(&self, channel: &str, message: &Value) -> ApiResult<Posted> {
        let mut body = message.clone();
        body["channel"] = json!(channel);
        body["unfurl_links"] = json!(false);
        let v = self.call("chat.postMessage", &body).await?;
        let channel = v
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or(channel)
            .to_string();
        let ts = v
            .get("ts")
            .and_then(Value::as_str)
            .filter(|ts| !ts.is_empty())
            .ok_or_else(|| ApiError::permanent("chat.postMessage: no ts in the answer"))?
            .to_string();
        Ok(Posted { channel, ts })
    }

    /// `chat.update`: replaces the message's text and blocks.
    pub async fn update_message(&self, at: &Posted, message: &Value) -> ApiResult<()> {
        let mut body = message.clone();
        body["channel"] = json!(at.channel);
        body["ts"] = json!(at.ts);
        self.call("chat.update", &body).await.map(|_| ())
    }

    /// `chat.postEphemeral`: a message only `user` sees in `channel`.
    pub async fn post_ephemeral(&self, channel: &str, user: &str, text: &str) -> ApiResult<()> {
        self.call(
            "chat.postEphemeral",
            &json!({"channel": channel, "user": user, "text": text}),
        )
        .await
        .map(|_| ())
    }

    /// The email of a user's profile (`users.info`), when Slack shows it (`users:read.email`).
    pub async fn user_email(&self, user: &str) -> ApiResult<Option<String>> {
        let v = self.call_form("users.info", &[("user", user)]).await?;
        Ok(v.pointer("/user/profile/email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string))
    }

    /// The user with this email (`users.lookupByEmail`); `None` when there is none.
    pub async fn lookup_by_email(&self, email: &str) -> ApiResult<Option<String>> {
        match self
            .call_form("users.lookupByEmail", &[("email", email)])
            .await
        {
            Ok(v) => Ok(v
                .pointer("/user/id")
                .and_then(Value::as_str)
                .map(str::to_string)),
            Err(e) if e.slack_error.as_deref() == Some("users_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `conversations.open`: the direct-message channel with `user`.
    pub async fn open_dm(&self, user: &str) -> ApiResult<String> {
        let v = self
            .call("conversations.open", &json!({"users": user}))
            .await?;
        v.pointer("/channel/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::permanent("conversations.open: no channel id"))
    }

    /// Posts to an interaction's `response_url` (no token: the URL is the credential).
    /// Only Slack's hooks host — or the Web API's own origin — is called.
    pub async fn respond(&self, response_url: &str, body: &Value) -> ApiResult<()> {
        let url = reqwest::Url::parse(response_url)
            .map_err(|_| ApiError::permanent("response_url is not a URL"))?;
        if !allowed_response_url(&url, self.base_origin.as_ref()) {
            return Err(ApiError::permanent(
                "response_url is not on hooks.slack.com",
            ));
        }
        let response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| Self::transport("response_url", e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 {
            Err(ApiError::retryable(format!("response_url: HTTP {status}")))
        } else {
            Err(ApiError::permanent(format!("response_url: HTTP {status}")))
        }
    }
}

async fn read_limited(method: &str, mut response: reqwest::Response) -> ApiResult<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(ApiError::permanent(format!(
                        "{method}: the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            // The status line came: the call was made.
            Err(e) => {
                return Err(ApiError::ambiguous(format!(
                    "{method}: reading the answer: {}",
                    e.without_url()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_urls_are_slack_or_the_api_origin() {
        let base = reqwest::Url::parse("http://127.0.0.1:4000/api").ok();
        let ok = |u: &str| allowed_response_url(&reqwest::Url::parse(u).unwrap(), base.as_ref());
        assert!(ok("https://hooks.slack.com/actions/T1/2/abc"));
        assert!(ok("http://127.0.0.1:4000/response/1"));
        assert!(!ok("http://hooks.slack.com/actions/T1/2/abc"));
        assert!(!ok("http://127.0.0.1:4001/response/1"));
        assert!(!ok("https://evil.example/hooks.slack.com"));
        assert!(!ok("https://hooks.slack.com.evil.example/x"));
    }

    /// A one-shot server on a free loopback port: reads a request, then answers `answer`
    /// (raw HTTP), or never answers when it is `None`.
    async fn server(answer: Option<&'static str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = socket.write_all(a.as_bytes()).await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            }
        });
        base
    }

    fn client(base: &str) -> SlackApi {
        SlackApi::new(
            base,
            SecretString("xoxb-test".to_string()),
            Duration::from_millis(500),
        )
        .unwrap()
    }

    fn json_answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn what_may_be_retried_for_a_post() {
        let message = json!({"text": "hi"});
        // Nothing listening: not sent, retryable.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/api", l.local_addr().unwrap())
        };
        let e = client(&closed)
            .post_message("C1", &message)
            .await
            .unwrap_err();
        assert!(e.retryable && !e.maybe_done, "{e:?}");
        // Sent, never answered: a timeout, which may have posted.
        let e = client(&server(None).await)
            .post_message("C1", &message)
            .await
            .unwrap_err();
        assert!(e.retryable && e.maybe_done, "{e:?}");
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        for (status, body, retryable, maybe_done) in [
            ("503 Service Unavailable", "{}", true, false),
            ("429 Too Many Requests", "{}", true, false),
            ("400 Bad Request", "{}", false, false),
            (
                "200 OK",
                r#"{"ok":false,"error":"ratelimited"}"#,
                true,
                false,
            ),
            (
                "200 OK",
                r#"{"ok":false,"error":"service_unavailable"}"#,
                true,
                false,
            ),
            (
                "200 OK",
                r#"{"ok":false,"error":"internal_error"}"#,
                true,
                true,
            ),
            (
                "200 OK",
                r#"{"ok":false,"error":"fatal_error"}"#,
                true,
                true,
            ),
            (
                "200 OK",
                r#"{"ok":false,"error":"channel_not_found"}"#,
                false,
                false,
            ),
            ("200 OK", "<html>", true, true),
        ] {
            let base = server(Some(leak(json_answer(status, body)))).await;
            let e = client(&base)
                .post_message("C1", &message)
                .await
                .unwrap_err();
            assert_eq!(
                (e.retryable, e.maybe_done),
                (retryable, maybe_done),
                "{status} {body}: {e:?}"
            );
        }
        let base = server(Some(leak(json_answer(
            "200 OK",
            r#"{"ok":true,"channel":"C1","ts":"1.2"}"#,
        ))))
        .await;
        assert_eq!(
            client(&base).post_message("C1", &message).await,
            Ok(Posted {
                channel: "C1".into(),
                ts: "1.2".into()
            })
        );
    }
}
