//! The gRPC surface: `gate.v1.ControlPlaneService` and `gate.v1.ConnectorService`.
//!
//! Each method authenticates from the `authorization` / `x-org-id` metadata, converts the
//! message into service-layer arguments, calls the service function and converts back.
//! No rule lives here; [`ServiceError`](crate::ServiceError) becomes a `tonic::Status`
//! through one mapping (`error.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gate_proto::v1 as pb;
use gate_proto::v1::connector_service_server::{ConnectorService, ConnectorServiceServer};
use gate_proto::v1::control_plane_service_server::{
    ControlPlaneService, ControlPlaneServiceServer,
};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::ServiceError;
use crate::service::{
    access_requests, api_keys, audit, connector_api, connectors, groups, identities, orgs,
    parse_id, policies, resources,
};
use crate::{Caller, Control};

/// Largest gRPC message accepted (audit batches are the big ones).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Both services, as an axum router keyed by gRPC path (the server puts it behind the
/// `content-type: application/grpc` split).
pub fn router(ctl: Arc<Control>) -> axum::Router {
    let control = ControlPlaneServiceServer::new(ControlPlaneApi { ctl: ctl.clone() })
        .max_decoding_message_size(MAX_MESSAGE);
    let connector =
        ConnectorServiceServer::new(ConnectorApi { ctl }).max_decoding_message_size(MAX_MESSAGE);
    tonic::service::Routes::new(control)
        .add_service(connector)
        .into_axum_router()
}

fn metadata_str<'a, T>(req: &'a Request<T>, key: &str) -> Result<Option<&'a str>, Status> {
    match req.metadata().get(key) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Status::unauthenticated(format!("{key} metadata is not text"))),
    }
}

async fn caller<T>(ctl: &Control, req: &Request<T>) -> Result<Caller, Status> {
    let authorization = metadata_str(req, "authorization")?;
    let org = metadata_str(req, "x-org-id")?;
    let what = req
        .extensions()
        .get::<tonic::GrpcMethod>()
        .map(|m| format!("gRPC {}/{}", m.service(), m.method()))
        .unwrap_or_else(|| "gRPC".to_string());
    Ok(crate::auth::authenticate(ctl, authorization, org, &what).await?)
}

fn org_id(s: &str) -> Result<gate_store::OrgId, ServiceError> {
    s.trim()
        .parse()
        .map_err(|_| ServiceError::invalid("organization id is not a valid id"))
}

pub struct ControlPlaneApi {
    ctl: Arc<Control>,
}

#[tonic::async_trait]
impl ControlPlaneService for ControlPlaneApi {
    async fn create_access_request(
        &self,
        req: Request<pb::CreateAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let input = convert::access_request_input(req.into_inner())?;
        Ok(Response::new(convert::access_request(
            access_requests::create_access_request(&self.ctl, &c, input).await?,
        )))
    }

    async fn get_access_request(
        &self,
        req: Request<pb::GetAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("access request id", &req.get_ref().id)?;
        Ok(Response::new(convert::access_request(
            access_requests::get_access_request(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_access_requests(
        &self,
        req: Request<pb::ListAccessRequestsRequest>,
    ) -> Res<pb::ListAccessRequestsResponse> {
        let c = caller(&self.ctl, &req).await?;
        let filter = convert::access_filter(req.into_inner())?;
        let list = access_requests::list_access_requests(&self.ctl, &c, filter).await?;
        Ok(Response::new(pb::ListAccessRequestsResponse {
            access_requests: list.into_iter().map(convert::access_request).collect(),
        }))
    }

    async fn approve_access_request(
        &self,
        req: Request<pb::DecideAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let (id, d) = convert::decision(req.into_inner());
        let id = parse_id("access request id", &id)?;
        Ok(Response::new(convert::access_request(
            access_requests::approve_access_request(&self.ctl, &c, id, d).await?,
        )))
    }

    async fn deny_access_request(
        &self,
        req: Request<pb::DecideAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let (id, d) = convert::decision(req.into_inner());
        let id = parse_id("access request id", &id)?;
        Ok(Response::new(convert::access_request(
            access_requests::deny_access_request(&self.ctl, &c, id, d).await?,
        )))
    }

    async fn cancel_access_request(
        &self,
        req: Request<pb::DecideAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let (id, d) = convert::decision(req.into_inner());
        let id = parse_id("access request id", &id)?;
        Ok(Response::new(convert::access_request(
            access_requests::cancel_access_request(&self.ctl, &c, id, d).await?,
        )))
    }

    async fn revoke_access_request(
        &self,
        req: Request<pb::DecideAccessRequestRequest>,
    ) -> Res<pb::AccessRequest> {
        let c = caller(&self.ctl, &req).await?;
        let (id, d) = convert::decision(req.into_inner());
        let id = parse_id("access request id", &id)?;
        Ok(Response::new(convert::access_request(
            access_requests::revoke_access_request(&self.ctl, &c, id, d).await?,
        )))
    }

    async fn get_approval_rules(
        &self,
        req: Request<pb::GetApprovalRulesRequest>,
    ) -> Res<pb::ApprovalRules> {
        let c = caller(&self.ctl, &req).await?;
        let rules = access_requests::get_approval_rules(&self.ctl, &c).await?;
        Ok(Response::new(convert::approval_rules(&rules)))
    }

    async fn set_approval_rules(
        &self,
        req: Request<pb::SetApprovalRulesRequest>,
    ) -> Res<pb::ApprovalRules> {
        let c = caller(&self.ctl, &req).await?;
        let rules = convert::approval_rules_in(&req.get_ref().rules_json)?;
        let rules = access_requests::set_approval_rules(&self.ctl, &c, rules).await?;
        Ok(Response::new(convert::approval_rules(&rules)))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Res<pb::WhoAmIResponse> {
        let c = caller(&self.ctl, &req).await?;
        let w = orgs::whoami(&c);
        Ok(Response::new(pb::WhoAmIResponse {
            org_id: w.org_id.map(|o| o.to_string()).unwrap_or_default(),
            role: w.role,
            actor: w.actor,
        }))
    }

    async fn create_organization(
        &self,
        req: Request<pb::CreateOrganizationRequest>,
    ) -> Res<pb::Organization> {
        let c = caller(&self.ctl, &req).await?;
        let o = orgs::create_org(&self.ctl, &c, &req.get_ref().name).await?;
        Ok(Response::new(convert::org(o)))
    }

    async fn get_organization(
        &self,
        req: Request<pb::GetOrganizationRequest>,
    ) -> Res<pb::Organization> {
        let c = caller(&self.ctl, &req).await?;
        let id = org_id(&req.get_ref().id)?;
        Ok(Response::new(convert::org(
            orgs::get_org(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_organizations(
        &self,
        req: Request<pb::ListOrganizationsRequest>,
    ) -> Res<pb::ListOrganizationsResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = orgs::list_orgs(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: list.into_iter().map(convert::org).collect(),
        }))
    }

    async fn update_organization(
        &self,
        req: Request<pb::UpdateOrganizationRequest>,
    ) -> Res<pb::Organization> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        let id = org_id(&r.id)?;
        Ok(Response::new(convert::org(
            orgs::rename_org(&self.ctl, &c, id, &r.name).await?,
        )))
    }

    async fn delete_organization(&self, req: Request<pb::DeleteOrganizationRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = org_id(&req.get_ref().id)?;
        orgs::delete_org(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Res<pb::CreateApiKeyResponse> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        let created = api_keys::create_api_key(&self.ctl, &c, &r.name, &r.role).await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(convert::api_key(created.api_key)),
            secret: created.secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Res<pb::ListApiKeysResponse> {
        let c = caller(&self.ctl, &req).await?;
        let keys = api_keys::list_api_keys(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(convert::api_key).collect(),
        }))
    }

    async fn revoke_api_key(&self, req: Request<pb::RevokeApiKeyRequest>) -> Res<pb::ApiKey> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("api key id", &req.get_ref().id)?;
        Ok(Response::new(convert::api_key(
            api_keys::revoke_api_key(&self.ctl, &c, id).await?,
        )))
    }

    async fn create_resource(&self, req: Request<pb::CreateResourceRequest>) -> Res<pb::Resource> {
        let c = caller(&self.ctl, &req).await?;
        let input = convert::resource_input(req.into_inner().resource)?;
        Ok(Response::new(convert::resource(
            resources::create_resource(&self.ctl, &c, input).await?,
        )))
    }

    async fn get_resource(&self, req: Request<pb::GetResourceRequest>) -> Res<pb::Resource> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("resource id", &req.get_ref().id)?;
        Ok(Response::new(convert::resource(
            resources::get_resource(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_resources(
        &self,
        req: Request<pb::ListResourcesRequest>,
    ) -> Res<pb::ListResourcesResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = resources::list_resources(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListResourcesResponse {
            resources: list.into_iter().map(convert::resource).collect(),
        }))
    }

    async fn update_resource(&self, req: Request<pb::UpdateResourceRequest>) -> Res<pb::Resource> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let id = parse_id("resource id", &r.id)?;
        let input = convert::resource_input(r.resource)?;
        Ok(Response::new(convert::resource(
            resources::update_resource(&self.ctl, &c, id, input).await?,
        )))
    }

    async fn delete_resource(&self, req: Request<pb::DeleteResourceRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("resource id", &req.get_ref().id)?;
        resources::delete_resource(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn create_policy(&self, req: Request<pb::CreatePolicyRequest>) -> Res<pb::Policy> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let new = policies::NewPolicy {
            name: r.name,
            description: r.description,
            stages: r.stages,
            targets: r.targets,
            state: (!r.state.is_empty()).then_some(r.state),
            rego: r.rego,
        };
        Ok(Response::new(convert::policy(
            policies::create_policy(&self.ctl, &c, new).await?,
        )))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Res<pb::Policy> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("policy id", &req.get_ref().id)?;
        Ok(Response::new(convert::policy(
            policies::get_policy(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Res<pb::ListPoliciesResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = policies::list_policies(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: list.into_iter().map(convert::policy).collect(),
        }))
    }

    async fn update_policy(&self, req: Request<pb::UpdatePolicyRequest>) -> Res<pb::Policy> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let id = parse_id("policy id", &r.id)?;
        let update = convert::policy_update(r);
        Ok(Response::new(convert::policy(
            policies::update_policy(&self.ctl, &c, id, update).await?,
        )))
    }

    async fn delete_policy(&self, req: Request<pb::DeletePolicyRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("policy id", &req.get_ref().id)?;
        policies::delete_policy(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn list_policy_versions(
        &self,
        req: Request<pb::ListPolicyVersionsRequest>,
    ) -> Res<pb::ListPolicyVersionsResponse> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("policy id", &req.get_ref().policy_id)?;
        let versions = policies::list_policy_versions(&self.ctl, &c, id).await?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            versions: versions.into_iter().map(convert::policy_version).collect(),
        }))
    }

    async fn set_policy_state(&self, req: Request<pb::SetPolicyStateRequest>) -> Res<pb::Policy> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        let id = parse_id("policy id", &r.id)?;
        Ok(Response::new(convert::policy(
            policies::set_policy_state(&self.ctl, &c, id, &r.state).await?,
        )))
    }

    async fn simulate_policy(
        &self,
        req: Request<pb::SimulatePolicyRequest>,
    ) -> Res<pb::SimulatePolicyResponse> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let policy_id = if r.policy_id.is_empty() {
            None
        } else {
            Some(parse_id("policy id", &r.policy_id)?)
        };
        let input = if r.input_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&r.input_json)
                .map_err(|e| ServiceError::invalid(format!("input_json: invalid JSON: {e}")))?
        };
        let sim = policies::Simulation {
            policy_id,
            rego: (!r.rego.is_empty()).then_some(r.rego),
            stage: (!r.stage.is_empty()).then_some(r.stage),
            input,
        };
        let result = policies::simulate_policy(&self.ctl, &c, sim).await?;
        Ok(Response::new(pb::SimulatePolicyResponse {
            decision_json: serde_json::to_string(&result.decision).unwrap_or_default(),
            action: result.decision.action.as_str().to_string(),
            reason: result.decision.reason.clone().unwrap_or_default(),
            error: result.error.unwrap_or_default(),
        }))
    }

    async fn create_identity(&self, req: Request<pb::CreateIdentityRequest>) -> Res<pb::Identity> {
        let c = caller(&self.ctl, &req).await?;
        let input = convert::identity_input(req.into_inner().identity)?;
        Ok(Response::new(convert::identity(
            identities::create_identity(&self.ctl, &c, input).await?,
        )))
    }

    async fn get_identity(&self, req: Request<pb::GetIdentityRequest>) -> Res<pb::Identity> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("identity id", &req.get_ref().id)?;
        Ok(Response::new(convert::identity(
            identities::get_identity(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_identities(
        &self,
        req: Request<pb::ListIdentitiesRequest>,
    ) -> Res<pb::ListIdentitiesResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = identities::list_identities(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: list.into_iter().map(convert::identity).collect(),
        }))
    }

    async fn update_identity(&self, req: Request<pb::UpdateIdentityRequest>) -> Res<pb::Identity> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let id = parse_id("identity id", &r.id)?;
        let input = convert::identity_input(r.identity)?;
        Ok(Response::new(convert::identity(
            identities::update_identity(&self.ctl, &c, id, input).await?,
        )))
    }

    async fn delete_identity(&self, req: Request<pb::DeleteIdentityRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("identity id", &req.get_ref().id)?;
        identities::delete_identity(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn create_group(&self, req: Request<pb::CreateGroupRequest>) -> Res<pb::Group> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        Ok(Response::new(convert::group(
            groups::create_group(&self.ctl, &c, &r.name, &r.description).await?,
        )))
    }

    async fn get_group(&self, req: Request<pb::GetGroupRequest>) -> Res<pb::Group> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("group id", &req.get_ref().id)?;
        Ok(Response::new(convert::group(
            groups::get_group(&self.ctl, &c, id).await?,
        )))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Res<pb::ListGroupsResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = groups::list_groups(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: list.into_iter().map(convert::group).collect(),
        }))
    }

    async fn update_group(&self, req: Request<pb::UpdateGroupRequest>) -> Res<pb::Group> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        let id = parse_id("group id", &r.id)?;
        Ok(Response::new(convert::group(
            groups::update_group(
                &self.ctl,
                &c,
                id,
                r.name.as_deref(),
                r.description.as_deref(),
            )
            .await?,
        )))
    }

    async fn delete_group(&self, req: Request<pb::DeleteGroupRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("group id", &req.get_ref().id)?;
        groups::delete_group(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn list_connectors(
        &self,
        req: Request<pb::ListConnectorsRequest>,
    ) -> Res<pb::ListConnectorsResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = connectors::list_connectors(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListConnectorsResponse {
            connectors: list.into_iter().map(convert::connector).collect(),
        }))
    }

    async fn get_connector(&self, req: Request<pb::GetConnectorRequest>) -> Res<pb::Connector> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("connector id", &req.get_ref().id)?;
        Ok(Response::new(convert::connector(
            connectors::get_connector(&self.ctl, &c, id).await?,
        )))
    }

    async fn delete_connector(&self, req: Request<pb::DeleteConnectorRequest>) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("connector id", &req.get_ref().id)?;
        connectors::delete_connector(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn create_registration_token(
        &self,
        req: Request<pb::CreateRegistrationTokenRequest>,
    ) -> Res<pb::CreateRegistrationTokenResponse> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.get_ref();
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let created = connectors::create_registration_token(&self.ctl, &c, &r.name, ttl).await?;
        Ok(Response::new(pb::CreateRegistrationTokenResponse {
            token: Some(convert::registration_token(created.token)),
            secret: created.secret,
        }))
    }

    async fn list_registration_tokens(
        &self,
        req: Request<pb::ListRegistrationTokensRequest>,
    ) -> Res<pb::ListRegistrationTokensResponse> {
        let c = caller(&self.ctl, &req).await?;
        let list = connectors::list_registration_tokens(&self.ctl, &c).await?;
        Ok(Response::new(pb::ListRegistrationTokensResponse {
            tokens: list.into_iter().map(convert::registration_token).collect(),
        }))
    }

    async fn delete_registration_token(
        &self,
        req: Request<pb::DeleteRegistrationTokenRequest>,
    ) -> Res<()> {
        let c = caller(&self.ctl, &req).await?;
        let id = parse_id("registration token id", &req.get_ref().id)?;
        connectors::delete_registration_token(&self.ctl, &c, id).await?;
        Ok(Response::new(()))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Res<pb::QueryAuditResponse> {
        let c = caller(&self.ctl, &req).await?;
        let filter = convert::audit_filter(req.into_inner().query);
        let page = audit::query_audit(&self.ctl, &c, filter).await?;
        Ok(Response::new(pb::QueryAuditResponse {
            events: page.events.into_iter().map(convert::audit_record).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    type ExportAuditStream = BoxStream<pb::ExportAuditChunk>;

    async fn export_audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Res<Self::ExportAuditStream> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let format = audit::ExportFormat::parse(&r.format)?;
        let filter = convert::audit_filter(r.query);
        let stream = audit::export_audit(self.ctl.clone(), &c, filter, format).await?;
        let stream = stream.map(|chunk| {
            chunk
                .map(|data| pb::ExportAuditChunk {
                    data: data.to_vec(),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub struct ConnectorApi {
    ctl: Arc<Control>,
}

#[tonic::async_trait]
impl ConnectorService for ConnectorApi {
    /// Authenticated by the registration token in the request, not by a bearer.
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Res<pb::RegisterResponse> {
        let r = req.get_ref();
        let reg = connector_api::register(&self.ctl, &r.registration_token, &r.version).await?;
        Ok(Response::new(pb::RegisterResponse {
            connector_id: reg.connector_id.to_string(),
            org_id: reg.org_id.to_string(),
            credential: reg.credential,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatResponse> {
        let c = caller(&self.ctl, &req).await?;
        let r = req.into_inner();
        let hb = gate_store::Heartbeat {
            version: r.version,
            uptime_s: r.uptime_s,
            active_sessions: r.active_sessions,
            resources_served: r.resources_served,
        };
        let revision = connector_api::heartbeat(&self.ctl, &c, hb).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            config_revision: revision,
        }))
    }

    async fn get_config(&self, req: Request<pb::GetConfigRequest>) -> Res<pb::ConfigSnapshot> {
        let c = caller(&self.ctl, &req).await?;
        Ok(Response::new(convert::snapshot(
            connector_api::get_config(&self.ctl, &c).await?,
        )))
    }

    type WatchStream = BoxStream<pb::ConfigSnapshot>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        let c = caller(&self.ctl, &req).await?;
        let known = req.get_ref().known_revision;
        let stream = connector_api::watch_config(self.ctl.clone(), &c, known).await?;
        let stream = stream.map(|s| s.map(convert::snapshot).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ship_audit(&self, req: Request<pb::ShipAuditRequest>) -> Res<pb::ShipAuditResponse> {
        let c = caller(&self.ctl, &req).await?;
        let result = connector_api::ship_audit(&self.ctl, &c, &req.get_ref().events_json).await?;
        Ok(Response::new(pb::ShipAuditResponse {
            inserted: result.inserted,
            duplicates: result.duplicates,
        }))
    }

    async fn deregister(&self, req: Request<pb::DeregisterRequest>) -> Res<pb::DeregisterResponse> {
        let c = caller(&self.ctl, &req).await?;
        connector_api::deregister(&self.ctl, &c).await?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn register_recording(
        &self,
        req: Request<pb::RegisterRecordingRequest>,
    ) -> Res<pb::RegisterRecordingResponse> {
        let c = caller(&self.ctl, &req).await?;
        let index = convert::recording_index(req.into_inner().recording)?;
        let id = connector_api::register_recording(&self.ctl, &c, index).await?;
        Ok(Response::new(pb::RegisterRecordingResponse {
            id: id.to_string(),
        }))
    }
}
