//! The authenticated caller. Policies see it as `input.user`.

use serde::{Deserialize, Serialize};

/// Who is on the other end of a session, after authentication.
///
/// Serialized as `input.user.{sub,name,email,groups}` for every protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable subject: the token identity's name, or the JWT `sub`.
    pub sub: String,
    /// Display / login name (what the client typed as its user).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// How the caller proved who they are: `token`, `oidc` or `ssh_key`.
    pub auth_method: AuthMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Token,
    Oidc,
    /// A registered SSH public key (serialized `ssh_key`).
    #[serde(rename = "ssh_key")]
    SshKey,
}
