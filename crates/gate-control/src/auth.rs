//! Who is calling: bearer keys → [`Caller`], and the role rules every service function
//! applies through [`Caller::require`].
//!
//! Three kinds of bearer are accepted, on HTTP (`Authorization`) and gRPC (`authorization`)
//! alike:
//! - the **system key** from `control.yaml` (compared by SHA-256 in constant time), acting on
//!   the org named by `X-Org-ID` / `x-org-id`;
//! - an **org API key** (looked up by its SHA-256 in the store), acting on its own org only,
//!   within its role;
//! - a **connector credential** (from `Register`), for the ConnectorService only;
//! - an **identity's Gate token** (the one people connect to resources with, stored as
//!   SHA-256 on the identity), acting as that person: it may file, list and decide access
//!   requests as itself (`gate login`), and nothing else.
//!
//! Keys are never logged: log lines name the actor (`api_key:<name>`), not the secret.

use gate_core::secret::TokenDigest;
use gate_store::{ApiKeyRole, OrgId};
use uuid::Uuid;

use crate::Control;
use crate::error::{ServiceError, ServiceResult};

/// What an authenticated caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The system key (or, with `--insecure`, a request without any key).
    System,
    /// An org API key.
    ApiKey { id: Uuid, role: ApiKeyRole },
    /// A registered connector, by its own credential.
    Connector { id: Uuid },
    /// A person, by their Gate token: acts as this identity on access requests only.
    Identity { id: Uuid, name: String },
}

/// An authenticated caller: the org it acts on, what it is, and a name for audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `None` only for the system key when no org was named.
    pub org_id: Option<OrgId>,
    pub principal: Principal,
    /// `system`, `api_key:<name>`, `connector:<name>` — never a secret.
    pub actor: String,
}

/// What an admin operation needs. Roles are ordered: readonly < editor < admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read anything in the org.
    Read,
    /// Change resources, policies, identities and groups.
    Write,
    /// Change API keys, connectors, registration tokens and org settings.
    Admin,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "readonly",
            Access::Write => "editor",
            Access::Admin => "admin",
        }
    }
}

impl Caller {
    pub fn is_system(&self) -> bool {
        self.principal == Principal::System
    }

    /// The role name shown by `WhoAmI`.
    pub fn role_name(&self) -> &'static str {
        match &self.principal {
            Principal::System => "system",
            Principal::ApiKey { role, .. } => role.as_str(),
            Principal::Connector { .. } => "connector",
            Principal::Identity { .. } => "identity",
        }
    }

    /// The identity this caller is, when it signed in with an identity's token.
    pub fn identity(&self) -> Option<&str> {
        match &self.principal {
            Principal::Identity { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Who acts in a just-in-time access operation, and on which org. A person (identity
    /// token) acts as themselves: a name given in the call must be theirs, and an empty one
    /// means them. A key (editor or above) or the system key vouches for the identity
    /// named in the call, which must not be empty.
    pub fn acting_identity(&self, named: &str) -> ServiceResult<(OrgId, String)> {
        let named = named.trim();
        if let Principal::Identity { name, .. } = &self.principal {
            if !named.is_empty() && named != name {
                return Err(ServiceError::denied(format!(
                    "signed in as {name:?}: you may not act as {named:?}"
                )));
            }
            return Ok((self.org()?, name.clone()));
        }
        let org = self.require(Access::Write)?;
        if named.is_empty() {
            return Err(ServiceError::invalid(
                "name the acting identity (requester or approver): a key is not a person",
            ));
        }
        Ok((org, named.to_string()))
    }

    /// The org this call acts on; the system key must name one.
    pub fn org(&self) -> ServiceResult<OrgId> {
        self.org_id.ok_or_else(|| {
            ServiceError::invalid("the system key must name an organization (X-Org-ID header)")
        })
    }

    /// Checks an admin-API operation against the caller's role and returns the org it acts
    /// on. Connectors (credentials and `connector` keys) may not use the admin API at all.
    pub fn require(&self, need: Access) -> ServiceResult<OrgId> {
        match &self.principal {
            Principal::System => {}
            Principal::ApiKey { role, .. } => {
                let have = match role {
                    ApiKeyRole::Readonly => Access::Read,
                    ApiKeyRole::Editor => Access::Write,
                    ApiKeyRole::Admin => Access::Admin,
                    ApiKeyRole::Connector => {
                        return Err(ServiceError::denied(
                            "a connector key may only use the connector service",
                        ));
                    }
                };
                if have < need {
                    return Err(ServiceError::denied(format!(
                        "this operation needs the {} role; the key has {}",
                        need.as_str(),
                        role.as_str()
                    )));
                }
            }
            Principal::Connector { .. } => {
                return Err(ServiceError::denied(
                    "a connector credential may only use the connector service",
                ));
            }
            Principal::Identity { .. } => {
                return Err(ServiceError::denied(
                    "a personal (identity) token may only request and decide access; \
                     the admin API needs an API key",
                ));
            }
        }
        self.org()
    }

    /// Operations only the system key may do (creating and deleting organizations).
    pub fn require_system(&self) -> ServiceResult<()> {
        if self.is_system() {
            Ok(())
        } else {
            Err(ServiceError::denied("this operation needs the system key"))
        }
    }

    /// ConnectorService calls: a connector credential or a `connector` key. Returns the org
    /// and, for a credential, the connector's id.
    pub fn require_connector(&self) -> ServiceResult<(OrgId, Option<Uuid>)> {
        match &self.principal {
            Principal::Connector { id } => Ok((self.org()?, Some(*id))),
            Principal::ApiKey {
                role: ApiKeyRole::Connector,
                ..
            } => Ok((self.org()?, None)),
            _ => Err(ServiceError::denied(
                "the connector service needs a connector credential or a connector key",
            )),
        }
    }
}

/// The `Bearer` token of an `Authorization` value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Turns the presented credential (and optional org header) into a [`Caller`].
/// `what` names the request for the insecure-mode warning (method and path).
pub async fn authenticate(
    ctl: &Control,
    authorization: Option<&str>,
    org_header: Option<&str>,
    what: &str,
) -> ServiceResult<Caller> {
    let org_header = org_header.map(str::trim).filter(|s| !s.is_empty());
    let token = match authorization {
        None => None,
        Some(v) => Some(bearer(v).ok_or_else(|| {
            ServiceError::unauthenticated("the authorization header must be `Bearer <key>`")
        })?),
    };
    let Some(token) = token else {
        if ctl.insecure() {
            tracing::warn!(
                request = %what,
                "unauthenticated request accepted as the system key (insecure mode)"
            );
            return system_caller(ctl, org_header, "anonymous").await;
        }
        return Err(ServiceError::unauthenticated(
            "missing bearer key (Authorization: Bearer <key>)",
        ));
    };
    if ctl.system_key().is_some_and(|d| d.matches(token)) {
        return system_caller(ctl, org_header, "system").await;
    }
    if let Some(key) = ctl
        .store()
        .authenticate_api_key(token)
        .await
        .map_err(crate::service::store_error)?
    {
        if let Some(h) = org_header
            && h != key.org_id.to_string()
        {
            return Err(ServiceError::denied(
                "an organization API key acts on its own organization only",
            ));
        }
        return Ok(Caller {
            org_id: Some(key.org_id),
            principal: Principal::ApiKey {
                id: key.id,
                role: key.role,
            },
            actor: format!("api_key:{}", key.name),
        });
    }
    if let Some(connector) = ctl
        .store()
        .authenticate_connector(token)
        .await
        .map_err(crate::service::store_error)?
    {
        return Ok(Caller {
            org_id: Some(connector.org_id),
            principal: Principal::Connector { id: connector.id },
            actor: format!("connector:{}", connector.name),
        });
    }
    if let Some(identity) = ctl
        .store()
        .authenticate_identity(token)
        .await
        .map_err(crate::service::store_error)?
    {
        if let Some(h) = org_header
            && h != identity.org_id.to_string()
        {
            return Err(ServiceError::denied(
                "an identity token acts on its own organization only",
            ));
        }
        return Ok(Caller {
            org_id: Some(identity.org_id),
            principal: Principal::Identity {
                id: identity.id,
                name: identity.name.clone(),
            },
            actor: format!("identity:{}", identity.name),
        });
    }
    Err(ServiceError::unauthenticated("invalid or revoked key"))
}

async fn system_caller(
    ctl: &Control,
    org_header: Option<&str>,
    actor: &str,
) -> ServiceResult<Caller> {
    let org_id = match org_header {
        None => None,
        Some(h) => {
            let id: OrgId = h
                .parse()
                .map_err(|_| ServiceError::invalid("X-Org-ID is not an organization id"))?;
            // An unknown org is refused here, once, rather than by every operation.
            ctl.store()
                .get_org(id)
                .await
                .map_err(crate::service::store_error)?;
            Some(id)
        }
    };
    Ok(Caller {
        org_id,
        principal: Principal::System,
        actor: actor.to_string(),
    })
}

/// The system key's digest, from the configured key (`None` when empty).
pub fn system_key_digest(key: &str) -> Option<TokenDigest> {
    (!key.is_empty()).then(|| TokenDigest::of_token(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(principal: Principal) -> Caller {
        Caller {
            org_id: Some(OrgId::new()),
            principal,
            actor: "t".into(),
        }
    }

    #[test]
    fn roles_are_ordered_and_connectors_are_kept_out() {
        let key = |role| {
            caller(Principal::ApiKey {
                id: Uuid::now_v7(),
                role,
            })
        };
        let ro = key(ApiKeyRole::Readonly);
        assert!(ro.require(Access::Read).is_ok());
        assert!(ro.require(Access::Write).is_err());
        let ed = key(ApiKeyRole::Editor);
        assert!(ed.require(Access::Write).is_ok());
        assert!(ed.require(Access::Admin).is_err());
        assert!(key(ApiKeyRole::Admin).require(Access::Admin).is_ok());
        let conn = key(ApiKeyRole::Connector);
        assert!(conn.require(Access::Read).is_err());
        assert!(conn.require_connector().is_ok());
        assert!(ro.require_connector().is_err());
        let cred = caller(Principal::Connector { id: Uuid::now_v7() });
        assert!(cred.require(Access::Read).is_err());
        assert!(cred.require_connector().unwrap().1.is_some());
        let sys = Caller {
            org_id: None,
            principal: Principal::System,
            actor: "system".into(),
        };
        assert!(
            sys.require(Access::Admin).is_err(),
            "system must name an org"
        );
        assert!(sys.require_system().is_ok());

        let person = caller(Principal::Identity {
            id: Uuid::now_v7(),
            name: "alice".into(),
        });
        assert!(person.require(Access::Read).is_err());
        assert!(person.require_connector().is_err());
        assert_eq!(person.acting_identity("").unwrap().1, "alice");
        assert_eq!(person.acting_identity("alice").unwrap().1, "alice");
        assert!(person.acting_identity("bob").is_err());
        assert!(
            ro.acting_identity("bob").is_err(),
            "readonly keys may not act"
        );
        assert_eq!(ed.acting_identity("bob").unwrap().1, "bob");
        assert!(ed.acting_identity(" ").is_err(), "a key must name someone");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
