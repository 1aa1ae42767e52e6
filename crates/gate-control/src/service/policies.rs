//! Policies: Rego with versions and a state (draft, dry_run, active). Read with readonly,
//! change with editor. Rego that does not compile for each of its stages is refused with
//! the compiler's message, on create, on update and again on activation, so nothing that
//! cannot compile ever reaches a connector.

use gate_core::{Decision, Stage};
use gate_policy::{PolicySet, PolicySource};
use gate_store::{Policy, PolicyInput, PolicyState, PolicyUpdate, PolicyVersion};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{record_change, store_error};
use crate::auth::Access;
use crate::error::{ServiceError, ServiceResult};
use crate::{Caller, Control};

/// A new policy, as both surfaces accept it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub stages: Vec<String>,
    #[serde(default)]
    pub targets: Vec<String>,
    /// `draft` when absent.
    #[serde(default)]
    pub state: Option<String>,
    pub rego: String,
}

/// Evaluate a stored policy, or Rego not saved yet, against an input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    #[serde(default)]
    pub policy_id: Option<Uuid>,
    #[serde(default)]
    pub rego: Option<String>,
    /// Required unless the stored policy has exactly one stage.
    #[serde(default)]
    pub stage: Option<String>,
    /// The policy input (`input.user`, `input.query`, ...): a JSON object.
    #[serde(default)]
    pub input: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationResult {
    /// What a connector would do. An evaluation error is a block, as on a connector
    /// (fail closed), with the error in `error`.
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn parse_state(s: &str) -> ServiceResult<PolicyState> {
    s.trim().parse().map_err(|_| {
        ServiceError::invalid(format!(
            "unknown policy state {s:?} (expected draft, dry_run or active)"
        ))
    })
}

/// Stage names as stored: the canonical rule names only, so connectors and the UI never
/// see aliases.
pub fn parse_stage(s: &str) -> ServiceResult<Stage> {
    match s.trim() {
        "session" => Ok(Stage::Session),
        "pre_request" => Ok(Stage::PreRequest),
        "post_request" => Ok(Stage::PostRequest),
        other => Err(ServiceError::invalid(format!(
            "unknown stage {other:?} (expected session, pre_request or post_request)"
        ))),
    }
}

fn parse_stages(stages: &[String]) -> ServiceResult<Vec<Stage>> {
    if stages.is_empty() {
        return Err(ServiceError::invalid("a policy needs at least one stage"));
    }
    let mut out: Vec<Stage> = Vec::with_capacity(stages.len());
    for s in stages {
        let stage = parse_stage(s)?;
        if out.contains(&stage) {
            return Err(ServiceError::invalid(format!(
                "stage {stage} is listed twice"
            )));
        }
        out.push(stage);
    }
    Ok(out)
}

fn validate_targets(targets: &[String]) -> ServiceResult<()> {
    for t in targets {
        if t.trim().is_empty() || t.trim() != t {
            return Err(ServiceError::invalid(format!(
                "target {t:?} must be a resource name or glob without surrounding spaces"
            )));
        }
    }
    Ok(())
}

/// Compiles `rego` for each stage, off the async workers (regorus compilation is CPU work).
/// The compiler's message is returned as is: it is what the author needs to fix the policy.
async fn compile_check(name: &str, rego: &str, stages: Vec<Stage>) -> ServiceResult<()> {
    let sources: Vec<PolicySource> = stages
        .into_iter()
        .map(|stage| PolicySource::new(name, rego, stage))
        .collect();
    tokio::task::spawn_blocking(move || PolicySet::compile(sources).map(|_| ()))
        .await
        .map_err(|_| ServiceError::Unavailable("policy compilation was interrupted".into()))?
        .map_err(|e| ServiceError::invalid(e.to_string()))
}

pub async fn create_policy(
    ctl: &Control,
    caller: &Caller,
    new: NewPolicy,
) -> ServiceResult<Policy> {
    let org = caller.require(Access::Write)?;
    let stages = parse_stages(&new.stages)?;
    validate_targets(&new.targets)?;
    let state = match new.state.as_deref() {
        None | Some("") => PolicyState::Draft,
        Some(s) => parse_state(s)?,
    };
    compile_check(&new.name, &new.rego, stages.clone()).await?;
    let input = PolicyInput {
        name: new.name,
        description: new.description,
        stages: stages.iter().map(|s| s.as_str().to_string()).collect(),
        targets: new.targets,
        state,
        rego: new.rego,
    };
    let p = ctl
        .store()
        .create_policy(org, &input, &caller.actor)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "policy.create",
        &p.id.to_string(),
        json!({"policy_id": p.id, "name": p.name, "version": p.version, "state": p.state}),
    )
    .await;
    ctl.notify_change();
    Ok(p)
}

pub async fn get_policy(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<Policy> {
    let org = caller.require(Access::Read)?;
    ctl.store().get_policy(org, id).await.map_err(store_error)
}

pub async fn list_policies(ctl: &Control, caller: &Caller) -> ServiceResult<Vec<Policy>> {
    let org = caller.require(Access::Read)?;
    ctl.store().list_policies(org).await.map_err(store_error)
}

pub async fn update_policy(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    mut update: PolicyUpdate,
) -> ServiceResult<Policy> {
    let org = caller.require(Access::Write)?;
    if let Some(stages) = &update.stages {
        let parsed = parse_stages(stages)?;
        update.stages = Some(parsed.iter().map(|s| s.as_str().to_string()).collect());
    }
    if let Some(targets) = &update.targets {
        validate_targets(targets)?;
    }
    if update.rego.is_some() || update.stages.is_some() {
        // What would be enforced after the update must compile: new text with the current
        // stages, or new stages with the current text.
        let current = ctl.store().get_policy(org, id).await.map_err(store_error)?;
        let rego = update.rego.as_deref().unwrap_or(&current.rego);
        let stages = parse_stages(update.stages.as_ref().unwrap_or(&current.stages))?;
        let name = update.name.as_deref().unwrap_or(&current.name);
        compile_check(name, rego, stages).await?;
    }
    let p = ctl
        .store()
        .update_policy(org, id, &update, &caller.actor)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "policy.update",
        &p.id.to_string(),
        json!({"policy_id": p.id, "name": p.name, "version": p.version}),
    )
    .await;
    ctl.notify_change();
    Ok(p)
}

pub async fn delete_policy(ctl: &Control, caller: &Caller, id: Uuid) -> ServiceResult<()> {
    let org = caller.require(Access::Write)?;
    ctl.store()
        .delete_policy(org, id)
        .await
        .map_err(store_error)?;
    record_change(
        ctl,
        caller,
        org,
        "policy.delete",
        &id.to_string(),
        json!({"policy_id": id}),
    )
    .await;
    ctl.notify_change();
    Ok(())
}

pub async fn list_policy_versions(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
) -> ServiceResult<Vec<PolicyVersion>> {
    let org = caller.require(Access::Read)?;
    // An unknown policy (or another org's) is "not found", not an empty history.
    ctl.store().get_policy(org, id).await.map_err(store_error)?;
    ctl.store()
        .list_policy_versions(org, id)
        .await
        .map_err(store_error)
}

/// Moves a policy between draft, dry_run and active. Enforcing states re-check that the
/// current text compiles.
pub async fn set_policy_state(
    ctl: &Control,
    caller: &Caller,
    id: Uuid,
    state: &str,
) -> ServiceResult<Policy> {
    let org = caller.require(Access::Write)?;
    let state = parse_state(state)?;
    if state != PolicyState::Draft {
        let current = ctl.store().get_policy(org, id).await.map_err(store_error)?;
        compile_check(&current.name, &current.rego, parse_stages(&current.stages)?).await?;
    }
    let p = ctl
        .store()
        .set_policy_state(org, id, state)
        .await
        .map_err(store_error)?;
    let action = match state {
        PolicyState::Draft => "policy.draft",
        PolicyState::DryRun => "policy.dry_run",
        PolicyState::Active => "policy.activate",
    };
    record_change(
        ctl,
        caller,
        org,
        action,
        &p.id.to_string(),
        json!({"policy_id": p.id, "name": p.name, "version": p.version}),
    )
    .await;
    ctl.notify_change();
    Ok(p)
}

/// Evaluates a policy against an input, as a connector would, without enforcing anything.
pub async fn simulate_policy(
    ctl: &Control,
    caller: &Caller,
    sim: Simulation,
) -> ServiceResult<SimulationResult> {
    let org = caller.require(Access::Read)?;
    if !sim.input.is_object() {
        return Err(ServiceError::invalid(
            "simulation input must be a JSON object",
        ));
    }
    let requested = sim
        .stage
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_stage)
        .transpose()?;
    let (name, rego, stage) = match (sim.policy_id, sim.rego) {
        (Some(_), Some(_)) => {
            return Err(ServiceError::invalid(
                "give either policy_id or rego, not both",
            ));
        }
        (None, None) => return Err(ServiceError::invalid("give policy_id or rego")),
        (None, Some(rego)) => {
            let stage =
                requested.ok_or_else(|| ServiceError::invalid("stage is required with rego"))?;
            ("simulation".to_string(), rego, stage)
        }
        (Some(id), None) => {
            let p = ctl.store().get_policy(org, id).await.map_err(store_error)?;
            let stages = parse_stages(&p.stages)?;
            let stage = match requested {
                Some(s) if stages.contains(&s) => s,
                Some(s) => {
                    return Err(ServiceError::invalid(format!(
                        "policy {} is not bound to the {s} stage",
                        p.name
                    )));
                }
                None if stages.len() == 1 => stages[0],
                None => {
                    return Err(ServiceError::invalid(
                        "the policy has several stages: name one",
                    ));
                }
            };
            (p.name, p.rego, stage)
        }
    };
    let input = sim.input;
    let outcome = tokio::task::spawn_blocking(move || {
        let set = PolicySet::compile(vec![PolicySource::new(name, rego, stage)])
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        Ok::<_, ServiceError>(set.evaluate(stage, &input))
    })
    .await
    .map_err(|_| ServiceError::Unavailable("policy evaluation was interrupted".into()))??;
    Ok(match outcome {
        Ok(decision) => SimulationResult {
            decision,
            error: None,
        },
        Err(e) => SimulationResult {
            decision: Decision::block(format!("policy error: {e}")),
            error: Some(e.to_string()),
        },
    })
}
