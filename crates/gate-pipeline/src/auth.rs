//! Authentication: turns a presented (user name, secret) pair into an [`Identity`].
//!
//! Two kinds of secret are accepted wherever a protocol lets the client send a password:
//! - a Gate token, stored only as its SHA-256 and compared in constant time;
//! - an OIDC ID/access token (a JWT signed RS256/ES256), verified against a JWKS.
//!
//! The secret must belong to the user the client named: a valid token of another identity is
//! refused exactly like a wrong one, so a leaked token cannot be used under another name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gate_core::Identity;
use gate_core::config::{AuthConfig, OidcConfig};
use gate_core::identity::AuthMethod;
use gate_core::secret::TokenDigest;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a credential was refused. The `Display` form is safe to show to the client: it never
/// says whether the user exists or which part of the secret was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Rejected(String),
    /// The identity provider's keys could not be loaded: deny, and say it is not the user's fault.
    #[error("cannot verify token right now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A detail for logs and audit (never contains the secret).
    pub fn detail(&self) -> &'static str {
        match self {
            AuthError::Rejected(_) => "rejected",
            AuthError::Unavailable(_) => "identity provider unavailable",
        }
    }
}

#[derive(Clone)]
struct TokenIdentity {
    /// `None`: the identity cannot log in with a token (keys only).
    digest: Option<TokenDigest>,
    identity: Identity,
    /// The base64 key blobs of the identity's registered OpenSSH public keys.
    ssh_keys: Vec<String>,
}

/// Verifies credentials against the configured token identities and OIDC provider.
pub struct Authenticator {
    tokens: HashMap<String, TokenIdentity>,
    /// Shared across rebuilds so the JWKS cache survives an identity sync.
    oidc: Option<Arc<Oidc>>,
}

/// An identity from elsewhere than the config file (the control plane).
#[derive(Debug, Clone)]
pub struct IdentityEntry {
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// SHA-256 (hex) of the identity's token; `None` for key-only identities.
    pub token_sha256: Option<String>,
    pub ssh_public_keys: Vec<String>,
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Authenticator> {
        let mut tokens = HashMap::new();
        for t in &cfg.tokens {
            let digest =
                Some(TokenDigest::from_hex(&t.token_sha256).ok_or_else(|| {
                    anyhow::anyhow!("auth.tokens: bad token_sha256 for {}", t.name)
                })?);
            tokens.insert(
                t.name.clone(),
                TokenIdentity {
                    digest,
                    identity: Identity {
                        sub: t.name.clone(),
                        name: t.name.clone(),
                        email: t.email.clone(),
                        groups: t.groups.clone(),
                        auth_method: AuthMethod::Token,
                    },
                    ssh_keys: t
                        .ssh_public_keys
                        .iter()
                        .map(|line| {
                            ssh_key_blob(line).map(str::to_string).ok_or_else(|| {
                                anyhow::anyhow!(
                                    "auth.tokens: {}: ssh_public_keys entry is not an OpenSSH public key line (\"ssh-ed25519 AAAA… comment\")",
                                    t.name
                                )
                            })
                        })
                        .collect::<anyhow::Result<_>>()?,
                },
            );
        }
        let oidc = cfg.oidc.as_ref().map(Oidc::new).transpose()?.map(Arc::new);
        Ok(Authenticator { tokens, oidc })
    }

    /// This authenticator plus `extra` identities. A name already defined here keeps its
    /// definition (the config file wins); an entry with malformed data is skipped and
    /// reported in the returned list of problems.
    pub fn with_identities(&self, extra: &[IdentityEntry]) -> (Authenticator, Vec<String>) {
        let mut tokens = self.tokens.clone();
        let mut problems = Vec::new();
        for e in extra {
            if tokens.contains_key(&e.name) {
                continue;
            }
            let digest = match e.token_sha256.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => match TokenDigest::from_hex(h) {
                    Some(d) => Some(d),
                    None => {
                        problems.push(format!(
                            "identity {}: token_sha256 is not 64 hex digits",
                            e.name
                        ));
                        continue;
                    }
                },
            };
            let mut ssh_keys = Vec::new();
            for line in &e.ssh_public_keys {
                match ssh_key_blob(line) {
                    Some(b) => ssh_keys.push(b.to_string()),
                    None => problems.push(format!(
                        "identity {}: an SSH public key is malformed",
                        e.name
                    )),
                }
            }
            tokens.insert(
                e.name.clone(),
                TokenIdentity {
                    digest,
                    identity: Identity {
                        sub: e.name.clone(),
                        name: e.name.clone(),
                        email: e.email.clone(),
                        groups: e.groups.clone(),
                        auth_method: AuthMethod::Token,
                    },
                    ssh_keys,
                },
            );
        }
        (
            Authenticator {
                tokens,
                oidc: self.oidc.clone(),
            },
            problems,
        )
    }

    /// Checks `secret` for the user named `user`.
    pub async fn authenticate(&self, user: &str, secret: &str) -> Result<Identity, AuthError> {
        if let Some(oidc) = &self.oidc
            && looks_like_jwt(secret)
        {
            return oidc.verify(user, secret).await;
        }
        match self.tokens.get(user) {
            Some(TokenIdentity {
                digest: Some(digest),
                identity,
                ..
            }) if digest.matches(secret) => Ok(identity.clone()),
            Some(_) => Err(AuthError::Rejected(user.to_string())),
            None => {
                // Hash anyway, so timing does not tell which names exist.
                std::hint::black_box(TokenDigest::of_token(secret));
                Err(AuthError::Rejected(user.to_string()))
            }
        }
    }
}

impl Authenticator {
    /// Whether `user` has registered the SSH public key whose base64 blob is `key_blob`
    /// (the second field of an OpenSSH public key line). Public keys are not secrets, so a
    /// plain comparison is fine. A key is accepted only for the identity that registered it.
    pub fn authenticate_ssh_key(&self, user: &str, key_blob: &str) -> Result<Identity, AuthError> {
        match self.tokens.get(user) {
            Some(t) if t.ssh_keys.iter().any(|k| k == key_blob) => {
                let mut identity = t.identity.clone();
                identity.auth_method = AuthMethod::SshKey;
                Ok(identity)
            }
            _ => Err(AuthError::Rejected(user.to_string())),
        }
    }
}

/// The key blob (base64) of an OpenSSH public key line `type blob [comment]`.
pub fn ssh_key_blob(line: &str) -> Option<&str> {
    let mut fields = line.split_whitespace();
    let kind = fields.next()?;
    let blob = fields.next()?;
    let plausible =
        (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            && blob.len() >= 16
            && blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    plausible.then_some(blob)
}

fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// OIDC verification: a JWKS from a file (read once) or a URL (fetched lazily, refreshed when
/// a token names an unknown key id, at most once per [`JWKS_MIN_REFRESH`]).
struct Oidc {
    issuer: String,
    audience: String,
    groups_claim: String,
    source: JwksSource,
    keys: ArcSwap<JwkSet>,
    fetched_at: tokio::sync::Mutex<Option<Instant>>,
}

enum JwksSource {
    File,
    Url(String, reqwest::Client),
}

const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Oidc {
    fn new(cfg: &OidcConfig) -> anyhow::Result<Oidc> {
        let (source, keys) = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("auth.oidc.jwks_file {}: {e}", f.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("auth.oidc.jwks_file {}: {e}", f.display()))?;
                (JwksSource::File, set)
            }
            (None, Some(url)) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()?;
                (
                    JwksSource::Url(url.clone(), client),
                    JwkSet { keys: vec![] },
                )
            }
            (None, None) => anyhow::bail!("auth.oidc: set jwks_url or jwks_file"),
        };
        Ok(Oidc {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            groups_claim: cfg.groups_claim.clone(),
            source,
            keys: ArcSwap::from_pointee(keys),
            fetched_at: tokio::sync::Mutex::new(None),
        })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let find = |set: &JwkSet| -> Option<DecodingKey> {
            let jwk = match kid {
                Some(k) => set.find(k)?,
                None if set.keys.len() == 1 => &set.keys[0],
                None => return None,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        if let Some(k) = find(&self.keys.load()) {
            return Ok(k);
        }
        if let JwksSource::Url(url, client) = &self.source {
            let mut fetched = self.fetched_at.lock().await;
            let due = fetched.is_none_or(|t| t.elapsed() >= JWKS_MIN_REFRESH);
            if due {
                *fetched = Some(Instant::now());
                let set: JwkSet = async {
                    client
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await
                }
                .await
                .map_err(|e: reqwest::Error| {
                    tracing::warn!(error = %e, "fetching OIDC JWKS failed");
                    AuthError::Unavailable("identity provider keys unavailable".into())
                })?;
                self.keys.store(Arc::new(set));
                if let Some(k) = find(&self.keys.load()) {
                    return Ok(k);
                }
            }
        }
        Err(AuthError::Rejected(String::new()))
    }

    async fn verify(&self, user: &str, token: &str) -> Result<Identity, AuthError> {
        let reject = || AuthError::Rejected(user.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| reject())?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(reject());
        }
        let key = self
            .key_for(header.kid.as_deref())
            .await
            .map_err(|e| match e {
                AuthError::Rejected(_) => reject(),
                other => other,
            })?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|_| reject())?;
        let c = data.claims;
        // The token must belong to the user the client named.
        let named = [
            Some(&c.sub),
            c.email.as_ref(),
            c.preferred_username.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|n| n == user);
        if !named {
            return Err(reject());
        }
        let groups = match c.rest.get(&self.groups_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => vec![],
        };
        Ok(Identity {
            name: c
                .preferred_username
                .clone()
                .or_else(|| c.name.clone())
                .unwrap_or_else(|| user.to_string()),
            sub: c.sub,
            email: c.email,
            groups,
            auth_method: AuthMethod::Oidc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::config::TokenIdentityConfig;

    fn auth() -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            tokens: vec![
                TokenIdentityConfig {
                    name: "alice".into(),
                    email: Some("alice@example.com".into()),
                    groups: vec!["engineering".into()],
                    token_sha256: gate_core::secret::sha256_hex("tok-alice"),
                    ssh_public_keys: vec![],
                },
                TokenIdentityConfig {
                    name: "bob".into(),
                    email: None,
                    groups: vec![],
                    token_sha256: gate_core::secret::sha256_hex("tok-bob"),
                    ssh_public_keys: vec![],
                },
            ],
            oidc: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn token_must_belong_to_the_named_user() {
        let a = auth();
        let id = a.authenticate("alice", "tok-alice").await.unwrap();
        assert_eq!(id.groups, vec!["engineering".to_string()]);
        assert!(a.authenticate("alice", "tok-bob").await.is_err());
        assert!(a.authenticate("alice", "wrong").await.is_err());
        assert!(a.authenticate("carol", "tok-alice").await.is_err());
        let msg = a.authenticate("bob", "x").await.unwrap_err().to_string();
        assert!(msg.contains("bob") && !msg.contains("x\""), "{msg}");
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.sig-_"));
        assert!(!looks_like_jwt("plain-token"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
    }
}
