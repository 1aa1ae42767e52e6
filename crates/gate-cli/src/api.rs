//! Talking to the control plane: where and as whom (flags and environment over the stored
//! login), one HTTP client, and the API's errors with the exit codes scripts see.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::config::Config;

/// Exit codes (documented in `gate --help` and docs/cli.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNAUTHENTICATED: u8 = 3;
    pub const FORBIDDEN: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const DENIED: u8 = 6;
    pub const ENDED: u8 = 7;
    pub const TIMED_OUT: u8 = 8;
    /// Ctrl-C while waiting (128 + SIGINT, as a shell reports a process Ctrl-C ended).
    pub const INTERRUPTED: u8 = 130;
}

/// An error that ends the command with a particular exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }

    pub fn not_logged_in(message: impl Into<String>) -> Exit {
        Exit::new(exit::UNAUTHENTICATED, message)
    }

    pub fn usage(message: impl Into<String>) -> Exit {
        Exit::new(exit::USAGE, message)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A refusal from the control plane: its HTTP status and its own message, verbatim.
#[derive(Debug)]
pub struct ApiError {
    pub status: reqwest::StatusCode,
    /// The `message` of the API's `{"error": {"code", "message"}}`.
    pub message: String,
}

impl ApiError {
    /// The exit code for this refusal.
    pub fn exit_code(&self) -> u8 {
        match self.status.as_u16() {
            401 => exit::UNAUTHENTICATED,
            403 => exit::FORBIDDEN,
            404 => exit::NOT_FOUND,
            400 => exit::USAGE,
            _ => exit::ERROR,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{}: {}", self.status, self.message)
        }
    }
}

impl std::error::Error for ApiError {}

/// The exit code of an error: the first [`Exit`], [`ApiError`] or missing recording in its
/// chain, else 1.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(x) = cause.downcast_ref::<Exit>() {
            return x.code;
        }
        if let Some(a) = cause.downcast_ref::<ApiError>() {
            return a.exit_code();
        }
        if let Some(gate_recording::RecordingError::NotFound { .. }) = cause.downcast_ref() {
            return exit::NOT_FOUND;
        }
    }
    exit::ERROR
}

/// Whether `e` comes from writing to a pipe whose reader has gone (`gate … | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The connection flags (`--url`, `--token`, `--org`, `--ca-file`, or `GATE_*`), empty
/// values treated as absent.
#[derive(Clone, Default)]
pub struct Flags {
    pub url: Option<String>,
    pub token: Option<String>,
    pub org: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Where and as whom to call the control plane.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub token: String,
    pub org: Option<String>,
    pub ca_file: Option<PathBuf>,
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl Target {
    /// Flags (and their environment variables) override the stored login field by field.
    /// The stored token (with its org and CA) is never sent to a control plane other than
    /// the one it was stored for, and the stored org goes only with the stored token.
    pub fn resolve(flags: &Flags, stored: Option<&Config>) -> Result<Target, Exit> {
        let stored =
            stored.filter(|c| flags.url.as_deref().is_none_or(|url| same_url(url, &c.url)));
        let Some(url) = flags.url.clone().or_else(|| stored.map(|c| c.url.clone())) else {
            return Err(Exit::not_logged_in(
                "not logged in: run `gate login --url https://control-plane:8080 --token …`, \
                 or pass --url and --token (GATE_URL, GATE_TOKEN)",
            ));
        };
        let (token, org) = match (&flags.token, stored) {
            (Some(token), _) => (token.clone(), flags.org.clone()),
            (None, Some(c)) => (c.token.clone(), flags.org.clone().or(c.org.clone())),
            (None, None) => {
                return Err(Exit::not_logged_in(format!(
                    "not logged in to {url}: pass --token (or GATE_TOKEN), or run `gate login`"
                )));
            }
        };
        let ca_file = flags
            .ca_file
            .clone()
            .or_else(|| stored.and_then(|c| c.ca_file.clone()));
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            token,
            org,
            ca_file,
        })
    }

    pub fn to_config(&self) -> Config {
        Config {
            url: self.url.clone(),
            token: self.token.clone(),
            org: self.org.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// An HTTP client for one control plane and one bearer key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    org: Option<String>,
}

impl Client {
    pub fn new(target: &Target) -> anyhow::Result<Client> {
        if !(target.url.starts_with("http://") || target.url.starts_with("https://")) {
            return Err(Exit::usage(format!(
                "the control plane URL must start with http:// or https:// (got {:?})",
                target.url
            ))
            .into());
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = &target.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", path.display());
            }
            builder = builder.tls_certs_only(certs);
        }
        Ok(Client {
            http: builder.build().context("HTTP client")?,
            base: target.url.clone(),
            token: target.token.clone(),
            org: target.org.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .with_context(|| format!("{:?} is not a valid URL", self.base))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let mut req = req.bearer_auth(&self.token);
        if let Some(org) = &self.org {
            req = req.header("x-org-id", org);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("contacting the control plane at {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(api_error(status, &text).into())
    }

    /// `GET path?query`, the raw response (2xx only).
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        self.send(self.http.get(self.url(path, query)?)).await
    }

    /// `GET path?query` as JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.get(path, query)
            .await?
            .json()
            .await
            .context("unexpected answer from the control plane")
    }

    /// `POST path` with a JSON body, the answer as JSON.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(self.url(path, &[])?).json(body))
            .await?
            .json()
            .await
            .context("unexpected answer from the control plane")
    }
}

/// The API's `{"error": {"code", "message"}}`, or whatever else the body says.
fn api_error(status: reqwest::StatusCode, body: &str) -> ApiError {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let message = parsed["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            // Not the API's shape (a proxy in between?): short text is shown as is.
            let text = body.trim();
            if text.len() > 500 || text.starts_with('<') {
                String::new()
            } else {
                text.to_string()
            }
        });
    ApiError { status, message }
}

/// Path-segment encoding for a user-typed id (only unreserved characters pass).
pub fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Config {
        Config {
            url: "https://cp.example.com:8080".into(),
            token: "stored-token".into(),
            org: Some("org-1".into()),
            ca_file: Some("/ca.pem".into()),
        }
    }

    #[test]
    fn flags_override_the_stored_login() {
        let t = Target::resolve(&Flags::default(), Some(&stored())).unwrap();
        assert_eq!(t.url, "https://cp.example.com:8080");
        assert_eq!(t.token, "stored-token");
        assert_eq!(t.org.as_deref(), Some("org-1"));
        assert_eq!(t.ca_file, Some(PathBuf::from("/ca.pem")));

        // Another token: the stored org does not come along.
        let flags = Flags {
            token: Some("other".into()),
            ..Flags::default()
        };
        let t = Target::resolve(&flags, Some(&stored())).unwrap();
        assert_eq!((t.token.as_str(), t.org), ("other", None));

        // The same control plane (trailing slash aside) keeps the stored token.
        let flags = Flags {
            url: Some("https://cp.example.com:8080/".into()),
            org: Some("org-2".into()),
            ..Flags::default()
        };
        let t = Target::resolve(&flags, Some(&stored())).unwrap();
        assert_eq!(t.token, "stored-token");
        assert_eq!(t.org.as_deref(), Some("org-2"));

        // Another control plane never gets the stored token.
        let flags = Flags {
            url: Some("https://elsewhere.example.com".into()),
            ..Flags::default()
        };
        let err = Target::resolve(&flags, Some(&stored())).err().unwrap();
        assert_eq!(err.code, exit::UNAUTHENTICATED);
        assert!(err.message.contains("elsewhere"), "{err}");

        let err = Target::resolve(&Flags::default(), None).err().unwrap();
        assert_eq!(err.code, exit::UNAUTHENTICATED);
        assert!(err.message.contains("gate login"), "{err}");
    }

    #[test]
    fn errors_keep_the_servers_message_and_map_to_exit_codes() {
        let e = api_error(
            reqwest::StatusCode::FORBIDDEN,
            r#"{"error": {"code": "permission_denied", "message": "self-approval is not allowed"}}"#,
        );
        assert_eq!(e.to_string(), "403 Forbidden: self-approval is not allowed");
        assert_eq!(e.exit_code(), exit::FORBIDDEN);
        let wrapped = anyhow::Error::from(e).context("approving");
        assert_eq!(exit_code_of(&wrapped), exit::FORBIDDEN);

        let e = api_error(reqwest::StatusCode::BAD_GATEWAY, "");
        assert_eq!(e.to_string(), "502 Bad Gateway");
        assert_eq!(e.exit_code(), exit::ERROR);
        assert_eq!(
            api_error(reqwest::StatusCode::UNAUTHORIZED, "{}").exit_code(),
            exit::UNAUTHENTICATED
        );
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, "no").exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(
            exit_code_of(&anyhow::anyhow!("connection refused")),
            exit::ERROR
        );
    }

    #[test]
    fn ids_are_path_encoded() {
        assert_eq!(encode("0190-ab_c.~"), "0190-ab_c.~");
        assert_eq!(encode("a/../b c"), "a%2F..%2Fb%20c");
    }
}
