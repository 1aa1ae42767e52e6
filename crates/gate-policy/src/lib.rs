//! gate-policy: Rego policies (evaluated with regorus) for Gate's three policy stages.
//!
//! A [`PolicySet`] is an immutable, compiled snapshot of policy sources. Each
//! [`PolicySource`] is bound to one [`Stage`]; its package is read from the policy text, and the
//! stage rule `data.<package>.<stage.rule_name()>` (or the alias `request` / `response`) is
//! what gets evaluated. A source whose package has neither is a compile error. Several
//! sources for one stage combine with [`Decision::combine`]. Each source is compiled on its
//! own (no cross-file imports); policies use Rego v1 syntax (`import rego.v1` is accepted).
//!
//! Hot path: [`PolicySet::evaluate`] takes no lock. Each source is compiled once to regorus'
//! RVM bytecode (an `Arc<Program>`, shared); every thread that evaluates a set lazily creates
//! its own `RegoVM` per source, kept in per-set thread-local storage ([`thread_local`]), and
//! reuses it for every later call. Dropping the set frees all of them, so snapshots never mix.
//!
//! Sources run on regorus' tree-walking interpreter instead (one engine clone per thread,
//! cached the same way) when the RVM compiler rejects them (e.g. the `with` keyword) or when
//! a rule could produce conflicting values, which OPA reports as an error but the RVM in
//! regorus 0.14.1 does not (see `guard.rs`). [`Evaluator::Interpreter`] forces the
//! interpreter everywhere. Both evaluators treat builtin errors (e.g. division by zero) as
//! undefined, OPA's default.
//!
//! Runaway policies are stopped by regorus' cooperative execution timer (wall clock, checked
//! every few instructions) plus the RVM's instruction budget: see [`EvalLimits`]. Either
//! limit yields [`PolicyError::Timeout`].
//!
//! Result interpretation (per source):
//! - object → a [`Decision`] (`action` may be omitted: `mask` when `masks` is non-empty,
//!   `filter` when `filters` is non-empty, otherwise `allow`; `rewrite` needs a `query`);
//! - `true` → allow; `false` → block with reason `denied by policy <name>`;
//! - undefined (rule not satisfied, no default) → allow (no opinion);
//! - anything else, or an object that is not a valid decision → [`PolicyError::Malformed`].
//!
//! Every error means "deny": callers fail closed.

mod dependence;
mod guard;
pub mod testing;
mod to_value;

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gate_core::{Action, Decision, MaskRule, MaskStrategy, Stage};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::Program;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};
use thread_local::ThreadLocal;

pub use dependence::{QueryDependence, query_dependence};

pub use to_value::{ToValueError, to_value};

/// Why a policy could not be compiled or evaluated. Every variant means "deny".
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name}: compile error: {message}")]
    Compile { name: String, message: String },
    #[error("policy {name}: {stage} evaluation failed: {message}")]
    Eval {
        name: String,
        stage: Stage,
        message: String,
    },
    #[error("policy {name}: {stage} returned a malformed decision: {message}")]
    Malformed {
        name: String,
        stage: Stage,
        message: String,
    },
    #[error("policy {name}: {stage} evaluation exceeded its limit ({limit}): {message}")]
    Timeout {
        name: String,
        stage: Stage,
        /// The limit that was hit, human readable (e.g. `100ms`).
        limit: String,
        message: String,
    },
    #[error("policy input could not be converted: {message}")]
    Input {
        /// The stage being evaluated, when the conversion happened as part of one.
        stage: Option<Stage>,
        message: String,
    },
    #[error("policy {}: cannot read file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One policy file (or text) and the stage it is loaded for.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// Used in messages, e.g. the file path.
    pub name: String,
    pub text: String,
    pub stage: Stage,
    /// Resource names or shell globs this policy applies to; empty = every resource.
    pub targets: Vec<String>,
    /// Evaluated and its would-be decision reported, but never enforced.
    pub dry_run: bool,
}

impl PolicySource {
    pub fn new(name: impl Into<String>, text: impl Into<String>, stage: Stage) -> Self {
        PolicySource {
            name: name.into(),
            text: text.into(),
            stage,
            targets: Vec::new(),
            dry_run: false,
        }
    }

    /// Limits the policy to resources matching one of `targets` (names or globs).
    pub fn with_targets(mut self, targets: Vec<String>) -> Self {
        self.targets = targets;
        self
    }

    /// Makes the policy dry-run: evaluated and reported, not enforced.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a stage decided for a resource: the enforced decision, plus what each dry-run
/// policy would have decided (`Err` when it failed to evaluate).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    pub dry_run: Vec<DryRunOutcome>,
}

/// The would-be result of one dry-run policy.
#[derive(Debug, Clone)]
pub struct DryRunOutcome {
    pub policy: String,
    pub result: Result<Decision, String>,
}

/// Guards against runaway policies. Hitting either limit yields [`PolicyError::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    /// Wall-clock budget for one evaluation of one source (regorus' execution timer).
    pub time: Duration,
    /// How many VM instructions run between two clock reads.
    pub check_interval: NonZeroU32,
    /// RVM instruction budget for one evaluation of one source (a backstop that does not
    /// depend on the clock; the interpreter fallback has only the timer).
    pub max_instructions: usize,
}

impl EvalLimits {
    pub const DEFAULT_TIME: Duration = Duration::from_millis(100);
    /// Far above what a per-request policy needs (the example policy runs ~40 instructions),
    /// and below what runs in 100 ms, so an instruction-heavy loop stops on either limit.
    pub const DEFAULT_MAX_INSTRUCTIONS: usize = 5_000_000;

    fn timer(&self) -> ExecutionTimerConfig {
        ExecutionTimerConfig {
            limit: self.time,
            check_interval: self.check_interval,
        }
    }
}

impl Default for EvalLimits {
    fn default() -> Self {
        EvalLimits {
            time: Self::DEFAULT_TIME,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
            max_instructions: Self::DEFAULT_MAX_INSTRUCTIONS,
        }
    }
}

/// Which regorus evaluator a [`PolicySet`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Evaluator {
    /// RVM bytecode for every policy where that keeps OPA's meaning; the interpreter for
    /// policies the RVM compiler rejects (e.g. `with`) or that could produce conflicting
    /// rule values (which the RVM would not report as errors; see `guard.rs`).
    #[default]
    Rvm,
    /// regorus' tree-walking interpreter for every policy (about 4x slower).
    Interpreter,
}

/// Compile-time options of a [`PolicySet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyOptions {
    pub limits: EvalLimits,
    pub evaluator: Evaluator,
}

/// Which regorus evaluator runs a compiled source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// RVM bytecode (fast path).
    Rvm,
    /// Tree-walking interpreter: used when the RVM compiler rejects the policy.
    Interpreter,
}

/// What was compiled for one source.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub name: String,
    pub stage: Stage,
    /// Canonical package path, e.g. `data.formal.v2`.
    pub package: String,
    /// The rule evaluated for the stage: the primary name or its alias.
    pub rule: &'static str,
    pub backend: Backend,
    /// Why the interpreter runs this policy although the RVM was asked for.
    pub interpreter_reason: Option<String>,
    /// Resource names or globs it applies to (empty: all).
    pub targets: Vec<String>,
    pub dry_run: bool,
}

impl PolicyInfo {
    /// Full rule path, e.g. `data.formal.v2.pre_request`.
    pub fn rule_path(&self) -> String {
        format!("{}.{}", self.package, self.rule)
    }
}

enum Compiled {
    Rvm(Arc<Program>),
    /// Template engine, cloned once per evaluating thread (the lock is taken only then).
    Interpreter(Box<Mutex<Engine>>),
}

struct CompiledSource {
    info: PolicyInfo,
    rule_path: String,
    compiled: Compiled,
}

enum Runner {
    Vm(Box<RegoVM>),
    Engine(Box<Engine>),
}

/// An immutable, compiled snapshot of policies. `Send + Sync`; share it through an `Arc` and
/// swap the `Arc` to reload. Evaluation never takes a lock.
pub struct PolicySet {
    sources: Vec<CompiledSource>,
    /// Source indices per stage, in source order (indexed by [`stage_index`]).
    by_stage: [Vec<usize>; 3],
    limits: EvalLimits,
    /// What of `input.query` any of these policies can read (see [`QueryDependence`]).
    query_dependence: QueryDependence,
    /// Per-thread evaluators, one slot per source, created on first use.
    runners: ThreadLocal<RefCell<Vec<Option<Runner>>>>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field(
                "policies",
                &self.sources.iter().map(|s| &s.info).collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

const fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Session => 0,
        Stage::PreRequest => 1,
        Stage::PostRequest => 2,
    }
}

impl PolicySet {
    /// Compiles the sources with the default [`EvalLimits`].
    pub fn compile(sources: Vec<PolicySource>) -> Result<PolicySet, PolicyError> {
        Self::compile_with(sources, PolicyOptions::default())
    }

    pub fn compile_with(
        sources: Vec<PolicySource>,
        options: PolicyOptions,
    ) -> Result<PolicySet, PolicyError> {
        let limits = options.limits;
        let mut compiled = Vec::with_capacity(sources.len());
        let mut by_stage: [Vec<usize>; 3] = Default::default();
        let mut dependence = QueryDependence::none();
        for source in sources {
            dependence = dependence.and(query_dependence(&source.text));
            let c = compile_source(&source, &options)?;
            by_stage[stage_index(source.stage)].push(compiled.len());
            compiled.push(c);
        }
        Ok(PolicySet {
            sources: compiled,
            by_stage,
            limits,
            query_dependence: dependence,
            runners: ThreadLocal::new(),
        })
    }

    /// Reads and compiles policy files; each file is bound to the given stage.
    pub fn load_files(refs: &[(PathBuf, Stage)]) -> Result<PolicySet, PolicyError> {
        let mut sources = Vec::with_capacity(refs.len());
        for (path, stage) in refs {
            sources.push(read_source(path, *stage)?);
        }
        Self::compile(sources)
    }

    /// A set without policies: every stage allows.
    pub fn empty() -> PolicySet {
        PolicySet {
            sources: Vec::new(),
            by_stage: Default::default(),
            limits: EvalLimits::default(),
            query_dependence: QueryDependence::none(),
            runners: ThreadLocal::new(),
        }
    }

    /// What of `input.query` these policies can read: when it is only the type and the
    /// tables, a `pre_request` decision holds for every statement of that type on those
    /// tables within a session (the rest of the input is the session's).
    pub fn query_dependence(&self) -> QueryDependence {
        self.query_dependence
    }

    pub fn has_stage(&self, stage: Stage) -> bool {
        !self.by_stage[stage_index(stage)].is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn limits(&self) -> EvalLimits {
        self.limits
    }

    /// What was compiled, in source order.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyInfo> {
        self.sources.iter().map(|s| &s.info)
    }

    /// Evaluates every policy of `stage` against `input` and combines the decisions.
    /// A stage without policies allows. Any error means the caller must deny.
    pub fn evaluate<T: serde::Serialize + ?Sized>(
        &self,
        stage: Stage,
        input: &T,
    ) -> Result<Decision, PolicyError> {
        let indices = &self.by_stage[stage_index(stage)];
        if indices.is_empty() {
            return Ok(Decision::allow());
        }
        let input = to_value(input).map_err(|e| PolicyError::Input {
            stage: Some(stage),
            message: e.to_string(),
        })?;
        self.evaluate_converted(stage, &input)
    }

    /// Like [`PolicySet::evaluate`], for input converted ahead of time (see [`PolicyInput`]).
    pub fn evaluate_input(
        &self,
        stage: Stage,
        input: &PolicyInput,
    ) -> Result<Decision, PolicyError> {
        self.evaluate_converted(stage, &input.0)
    }

    /// Evaluates the policies of `stage` that target `resource`: the enforced ones are
    /// combined into the decision (any error is returned: the caller must deny); dry-run
    /// ones are evaluated too and reported, never enforced, and their errors never deny.
    pub fn evaluate_for(
        &self,
        stage: Stage,
        resource: &str,
        input: &PolicyInput,
    ) -> Result<Evaluation, PolicyError> {
        let all = &self.by_stage[stage_index(stage)];
        let applies =
            |i: &usize| gate_core::glob::targets_match(&self.sources[*i].info.targets, resource);
        let enforced: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !self.sources[*i].info.dry_run && applies(i))
            .collect();
        let dry: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| self.sources[*i].info.dry_run && applies(i))
            .collect();
        let decision = if enforced.is_empty() {
            Decision::allow()
        } else {
            self.with_runners(|this, runners| {
                this.evaluate_with(stage, &enforced, &input.0, runners)
            })?
        };
        let dry_run = dry
            .into_iter()
            .map(|i| DryRunOutcome {
                policy: self.sources[i].info.name.clone(),
                result: self
                    .with_runners(|this, runners| {
                        this.evaluate_with(stage, &[i], &input.0, runners)
                    })
                    .map_err(|e| e.to_string()),
            })
            .collect();
        Ok(Evaluation { decision, dry_run })
    }

    /// Whether any policy is dry-run or limited to some resources: callers that know the
    /// resource must then use [`PolicySet::evaluate_for`].
    pub fn has_targeting(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.info.dry_run || !s.info.targets.is_empty())
    }

    fn with_runners<R>(
        &self,
        f: impl FnOnce(&Self, &mut [Option<Runner>]) -> Result<R, PolicyError>,
    ) -> Result<R, PolicyError> {
        let cell = self.runners.get_or(|| RefCell::new(Vec::new()));
        match cell.try_borrow_mut() {
            Ok(mut runners) => {
                if runners.len() < self.sources.len() {
                    runners.resize_with(self.sources.len(), || None);
                }
                f(self, &mut runners)
            }
            Err(_) => {
                let mut scratch: Vec<Option<Runner>> = std::iter::repeat_with(|| None)
                    .take(self.sources.len())
                    .collect();
                f(self, &mut scratch)
            }
        }
    }

    /// Every enforced policy of the stage, whatever it targets; dry-run policies are skipped
    /// (they are never enforced). Callers that know the resource use `evaluate_for`.
    fn evaluate_converted(&self, stage: Stage, input: &Value) -> Result<Decision, PolicyError> {
        let all = &self.by_stage[stage_index(stage)];
        let filtered: Vec<usize>;
        let indices: &[usize] = if all.iter().any(|i| self.sources[*i].info.dry_run) {
            filtered = all
                .iter()
                .copied()
                .filter(|i| !self.sources[*i].info.dry_run)
                .collect();
            &filtered
        } else {
            all
        };
        if indices.is_empty() {
            return Ok(Decision::allow());
        }
        let cell = self.runners.get_or(|| RefCell::new(Vec::new()));
        match cell.try_borrow_mut() {
            Ok(mut runners) => {
                if runners.len() < self.sources.len() {
                    runners.resize_with(self.sources.len(), || None);
                }
                self.evaluate_with(stage, indices, input, &mut runners)
            }
            // Re-entrant use on this thread (cannot happen through regorus today): use
            // throwaway evaluators rather than fail.
            Err(_) => {
                let mut scratch: Vec<Option<Runner>> = std::iter::repeat_with(|| None)
                    .take(self.sources.len())
                    .collect();
                self.evaluate_with(stage, indices, input, &mut scratch)
            }
        }
    }

    fn evaluate_with(
        &self,
        stage: Stage,
        indices: &[usize],
        input: &Value,
        runners: &mut [Option<Runner>],
    ) -> Result<Decision, PolicyError> {
        let mut combined: Option<Decision> = None;
        for &i in indices {
            let source = &self.sources[i];
            let slot = &mut runners[i];
            if slot.is_none() {
                *slot = Some(self.new_runner(source)?);
            }
            let Some(runner) = slot.as_mut() else {
                unreachable!("runner slot was just filled")
            };
            let result = run(runner, source, stage, input, &self.limits)?;
            let decision = interpret(&source.info.name, stage, &result)?;
            combined = Some(match combined {
                None => decision,
                Some(prev) => prev.combine(decision),
            });
        }
        Ok(combined.unwrap_or_default())
    }

    fn new_runner(&self, source: &CompiledSource) -> Result<Runner, PolicyError> {
        match &source.compiled {
            Compiled::Rvm(program) => {
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                vm.set_data(Value::new_object())
                    .map_err(|e| PolicyError::Eval {
                        name: source.info.name.clone(),
                        stage: source.info.stage,
                        message: one_line(&e.to_string()),
                    })?;
                vm.set_max_instructions(self.limits.max_instructions);
                vm.set_execution_timer_config(Some(self.limits.timer()));
                Ok(Runner::Vm(Box::new(vm)))
            }
            Compiled::Interpreter(template) => {
                let engine = template
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                Ok(Runner::Engine(Box::new(engine)))
            }
        }
    }
}

fn run(
    runner: &mut Runner,
    source: &CompiledSource,
    stage: Stage,
    input: &Value,
    limits: &EvalLimits,
) -> Result<Value, PolicyError> {
    let name = &source.info.name;
    match runner {
        Runner::Vm(vm) => {
            vm.set_input(input.clone());
            let result = vm.execute_entry_point_by_index(0);
            // Do not keep the request's facts alive in the thread's VM.
            vm.set_input(Value::Null);
            result.map_err(|e| match e {
                VmError::TimeLimitExceeded { .. } => PolicyError::Timeout {
                    name: name.clone(),
                    stage,
                    limit: format!("{:?}", limits.time),
                    message: one_line(&e.to_string()),
                },
                VmError::InstructionLimitExceeded { .. } => PolicyError::Timeout {
                    name: name.clone(),
                    stage,
                    limit: format!("{} instructions", limits.max_instructions),
                    message: one_line(&e.to_string()),
                },
                other => PolicyError::Eval {
                    name: name.clone(),
                    stage,
                    message: one_line(&other.to_string()),
                },
            })
        }
        Runner::Engine(engine) => {
            engine.set_input(input.clone());
            let result = engine.eval_rule(source.rule_path.clone());
            engine.set_input(Value::Null);
            result.map_err(|e| {
                let timeout = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<LimitError>(),
                        Some(LimitError::TimeLimitExceeded { .. })
                    )
                });
                if timeout {
                    PolicyError::Timeout {
                        name: name.clone(),
                        stage,
                        limit: format!("{:?}", limits.time),
                        message: one_line(&e.to_string()),
                    }
                } else {
                    PolicyError::Eval {
                        name: name.clone(),
                        stage,
                        message: one_line(&e.to_string()),
                    }
                }
            })
        }
    }
}

/// Policy input converted once, to be evaluated many times or extended cheaply.
///
/// Converting the request facts is most of the cost of an evaluation on the RVM. Facts
/// that do not change during a session (`user`, `resource`, `session`) can be converted
/// once with [`PolicyInput::new`]; each request then adds its own top-level fields
/// (`query`, `columns`) with [`PolicyInput::with`], which shares the converted parts.
#[derive(Debug, Clone)]
pub struct PolicyInput(Value);

impl PolicyInput {
    /// Converts `facts`, which must serialize to an object (a struct or a map).
    pub fn new<T: serde::Serialize + ?Sized>(facts: &T) -> Result<PolicyInput, PolicyError> {
        let value = to_value(facts).map_err(|e| input_error(e.to_string()))?;
        match value {
            Value::Object(_) => Ok(PolicyInput(value)),
            other => Err(input_error(format!(
                "policy input must be an object, got {}",
                describe(&other)
            ))),
        }
    }

    /// A copy with the top-level fields of `extra` (which must serialize to an object)
    /// added or replaced. `None` fields serialize as `null`; skip them with
    /// `#[serde(skip_serializing_if = "Option::is_none")]` to leave them undefined.
    pub fn with<T: serde::Serialize + ?Sized>(
        &self,
        extra: &T,
    ) -> Result<PolicyInput, PolicyError> {
        let extra = PolicyInput::new(extra)?;
        let (Value::Object(base), Value::Object(extra)) = (&self.0, &extra.0) else {
            return Err(input_error("policy input must be an object".into()));
        };
        let mut merged: std::collections::BTreeMap<Value, Value> =
            base.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in extra.iter() {
            merged.insert(k.clone(), v.clone());
        }
        Ok(PolicyInput(Value::from(merged)))
    }

    /// The input as JSON (for logs and `gate-policy eval`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

fn input_error(message: String) -> PolicyError {
    PolicyError::Input {
        stage: None,
        message,
    }
}

/// Reads one policy file into a source bound to `stage`.
pub fn read_source(path: &Path, stage: Stage) -> Result<PolicySource, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(PolicySource::new(path.display().to_string(), text, stage))
}

/// Collapses a (possibly multi-line, source-annotated) regorus message into one line:
/// `file:line:col: message (near `code`)` for located errors, else the lines joined.
pub(crate) fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let location = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let error_at = lines.iter().position(|l| l.starts_with("error: "));
    if let (Some(location), Some(i)) = (location, error_at) {
        let mut out = format!("{location}: {}", &lines[i]["error: ".len()..]);
        for extra in &lines[i + 1..] {
            out.push_str("; ");
            out.push_str(extra.trim());
        }
        // The quoted source line looks like `12 |     code`.
        let code = lines.iter().find_map(|l| {
            let (num, code) = l.split_once(" | ")?;
            let num = num.trim();
            (!num.is_empty() && num.chars().all(|c| c.is_ascii_digit())).then_some(code.trim())
        });
        if let Some(code) = code.filter(|c| !c.is_empty()) {
            out.push_str(&format!(" (near `{}`)", truncate(code, 80)));
        }
        return out;
    }
    lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The parsed view of one policy module: package and top-level rule names.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// Canonical package path, e.g. `data.formal.v2`.
    pub package: String,
    /// Top-level rule names in declaration order, without duplicates (functions excluded).
    pub rules: Vec<String>,
    /// Why the module must not run on the RVM (it could produce conflicting values).
    pub rvm_risk: Option<String>,
}

impl ModuleInfo {
    pub fn has_rule(&self, rule: &str) -> bool {
        self.rules.iter().any(|r| r == rule)
    }

    /// The rule evaluated for `stage`: the primary name, else the alias, if declared.
    pub fn stage_rule(&self, stage: Stage) -> Option<&'static str> {
        if self.has_rule(stage.rule_name()) {
            return Some(stage.rule_name());
        }
        stage.alias_rule_name().filter(|alias| self.has_rule(alias))
    }
}

/// An interpreter configured like the RVM: builtin errors (e.g. division by zero) make the
/// expression undefined, as in OPA by default, instead of failing the evaluation. This keeps
/// a policy's meaning independent of which evaluator runs it.
pub(crate) fn new_engine(limits: &EvalLimits) -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(limits.timer());
    engine.set_strict_builtin_errors(false);
    engine
}

/// Parses one policy into a fresh engine (Rego v1 syntax; `import rego.v1` is accepted).
pub(crate) fn parse_module(
    engine: &mut Engine,
    name: &str,
    text: &str,
) -> Result<ModuleInfo, PolicyError> {
    let compile_err = |message: String| PolicyError::Compile {
        name: name.to_string(),
        message,
    };
    engine
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| compile_err(one_line(&e.to_string())))?;
    let modules = engine.get_modules();
    let module = modules
        .last()
        .ok_or_else(|| compile_err("no module was parsed".into()))?;
    let mut rules: Vec<String> = Vec::new();
    for rule in &module.policy {
        use regorus::unstable::{Expr, Rule, RuleHead};
        let head = match rule.as_ref() {
            Rule::Spec { head, .. } => match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                RuleHead::Func { .. } => continue,
            },
            Rule::Default { refr, args, .. } => {
                if !args.is_empty() {
                    continue;
                }
                refr
            }
        };
        // The rule's top-level name is the root of its head reference (`a` in `a.b.c := 1`).
        let mut expr: &Expr = head.as_ref();
        let root = loop {
            match expr {
                Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => expr = refr.as_ref(),
                Expr::Var {
                    value: Value::String(s),
                    ..
                } => break Some(s.to_string()),
                _ => break None,
            }
        };
        if let Some(root) = root
            && !rules.contains(&root)
        {
            rules.push(root);
        }
    }
    let rvm_risk = guard::rvm_conflict_risk(module);
    let components = engine
        .get_policy_package_components()
        .map_err(|e| compile_err(one_line(&e.to_string())))?;
    let components = components
        .last()
        .map(|p| p.components.clone())
        .unwrap_or_default();
    Ok(ModuleInfo {
        package: package_path(&components),
        rules,
        rvm_risk,
    })
}

/// `data.a.b`, with bracketed string components where a component is not an identifier.
fn package_path(components: &[String]) -> String {
    let mut path = String::from("data");
    for c in components {
        let ident = !c.is_empty()
            && !c.starts_with(|ch: char| ch.is_ascii_digit())
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if ident {
            path.push('.');
            path.push_str(c);
        } else {
            path.push('[');
            path.push_str(&serde_json::to_string(c).unwrap_or_default());
            path.push(']');
        }
    }
    path
}

fn compile_source(
    source: &PolicySource,
    options: &PolicyOptions,
) -> Result<CompiledSource, PolicyError> {
    let limits = &options.limits;
    let name = &source.name;
    let compile_err = |message: String| PolicyError::Compile {
        name: name.clone(),
        message,
    };
    let mut engine = new_engine(limits);
    let module = parse_module(&mut engine, name, &source.text)?;
    let stage = source.stage;
    let rule = module.stage_rule(stage).ok_or_else(|| {
        compile_err(match stage.alias_rule_name() {
            Some(alias) => format!(
                "package {} has no rule `{}` (or `{alias}`) for the {stage} stage",
                module.package,
                stage.rule_name()
            ),
            None => format!(
                "package {} has no rule `{}` for the {stage} stage",
                module.package,
                stage.rule_name()
            ),
        })
    })?;
    let rule_path = format!("{}.{rule}", module.package);
    // Full semantic analysis (unsafe variables, unknown functions, ...) happens here.
    let compiled = engine
        .compile_with_entrypoint(&rule_path.as_str().into())
        .map_err(|e| compile_err(one_line(&e.to_string())))?;
    let rvm = match options.evaluator {
        Evaluator::Interpreter => Err(None),
        Evaluator::Rvm => match &module.rvm_risk {
            Some(risk) => Err(Some(risk.clone())),
            None => Compiler::compile_from_policy(&compiled, &[rule_path.as_str()]).map_err(|e| {
                Some(format!(
                    "the RVM compiler rejects it: {}",
                    one_line(&e.to_string())
                ))
            }),
        },
    };
    let (compiled, backend, interpreter_reason) = match rvm {
        Ok(program) => (Compiled::Rvm(program), Backend::Rvm, None),
        Err(reason) => {
            if let Some(reason) = &reason {
                tracing::info!(policy = %name, %reason, "policy runs on the regorus interpreter");
            }
            (
                Compiled::Interpreter(Box::new(Mutex::new(engine))),
                Backend::Interpreter,
                reason,
            )
        }
    };
    Ok(CompiledSource {
        info: PolicyInfo {
            name: name.clone(),
            stage,
            package: module.package,
            rule,
            backend,
            interpreter_reason,
            targets: source.targets.clone(),
            dry_run: source.dry_run,
        },
        rule_path,
        compiled,
    })
}

/// Turns one stage rule's result into a decision (see the crate docs for the rules).
pub fn interpret(name: &str, stage: Stage, result: &Value) -> Result<Decision, PolicyError> {
    let malformed = |message: String| PolicyError::Malformed {
        name: name.to_string(),
        stage,
        message,
    };
    match result {
        Value::Undefined => Ok(Decision::allow()),
        Value::Bool(true) => Ok(Decision::allow()),
        Value::Bool(false) => Ok(Decision::block(format!("denied by policy {name}"))),
        Value::Object(_) => decision_from_value(result).map_err(malformed),
        other => Err(malformed(format!(
            "expected an object or a boolean, got {}",
            truncate(&other.to_string(), 200)
        ))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn describe(v: &Value) -> String {
    truncate(&v.to_string(), 120)
}

fn opt_string(field: &str, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.to_string())),
        other => Err(format!(
            "`{field}` must be a string, got {}",
            describe(other)
        )),
    }
}

fn parse_action(v: &Value) -> Result<Action, String> {
    const ALL: [Action; 5] = [
        Action::Allow,
        Action::Block,
        Action::Rewrite,
        Action::Mask,
        Action::Filter,
    ];
    match v {
        Value::String(s) => ALL
            .into_iter()
            .find(|a| a.as_str() == s.as_ref())
            .ok_or_else(|| {
                format!("unknown action {s:?} (expected allow, block, rewrite, mask or filter)")
            }),
        other => Err(format!(
            "`action` must be a string, got {}",
            describe(other)
        )),
    }
}

fn parse_strategy(v: &Value) -> Result<MaskStrategy, String> {
    const ALL: [MaskStrategy; 4] = [
        MaskStrategy::Redact,
        MaskStrategy::Partial,
        MaskStrategy::Hash,
        MaskStrategy::Email,
    ];
    match v {
        Value::String(s) => ALL
            .into_iter()
            .find(|a| a.as_str() == s.as_ref())
            .ok_or_else(|| {
                format!("unknown mask strategy {s:?} (expected redact, partial, hash or email)")
            }),
        other => Err(format!(
            "mask `strategy` must be a string, got {}",
            describe(other)
        )),
    }
}

fn parse_mask(v: &Value) -> Result<MaskRule, String> {
    let Value::Object(obj) = v else {
        return Err(format!(
            "each mask must be an object with `column` and `strategy`, got {}",
            describe(v)
        ));
    };
    let mut column = None;
    let mut strategy = None;
    for (k, val) in obj.iter() {
        match k {
            Value::String(k) if k.as_ref() == "column" => match val {
                Value::String(s) => column = Some(s.to_string()),
                other => {
                    return Err(format!(
                        "mask `column` must be a string, got {}",
                        describe(other)
                    ));
                }
            },
            Value::String(k) if k.as_ref() == "strategy" => strategy = Some(parse_strategy(val)?),
            _ => {}
        }
    }
    match (column, strategy) {
        (Some(column), Some(strategy)) => Ok(MaskRule { column, strategy }),
        (None, _) => Err(format!("mask {} has no `column`", describe(v))),
        (_, None) => Err(format!("mask {} has no `strategy`", describe(v))),
    }
}

/// Items of an array or set (policies often build masks with set comprehensions).
fn items<'a>(field: &str, v: &'a Value) -> Result<Vec<&'a Value>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a.iter().collect()),
        Value::Set(s) => Ok(s.iter().collect()),
        other => Err(format!(
            "`{field}` must be an array, got {}",
            describe(other)
        )),
    }
}

/// Converts a decision object. Mirrors `Decision`'s serde shape (unknown keys are ignored),
/// without a detour through JSON.
fn decision_from_value(v: &Value) -> Result<Decision, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", describe(v)));
    };
    let mut d = Decision::default();
    let mut action = None;
    for (k, val) in obj.iter() {
        let Value::String(key) = k else { continue };
        match key.as_ref() {
            "action" => action = Some(parse_action(val)?),
            "reason" => d.reason = opt_string("reason", val)?,
            "query" => d.query = opt_string("query", val)?,
            "masks" => {
                d.masks = items("masks", val)?
                    .into_iter()
                    .map(parse_mask)
                    .collect::<Result<_, _>>()?;
            }
            "filters" => {
                d.filters = items("filters", val)?
                    .into_iter()
                    .map(|f| serde_json::to_value(f).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
            }
            "dry_run" => match val {
                Value::Bool(b) => d.dry_run = *b,
                Value::Null => {}
                other => {
                    return Err(format!(
                        "`dry_run` must be a boolean, got {}",
                        describe(other)
                    ));
                }
            },
            _ => {}
        }
    }
    d.action = match action {
        Some(a) => a,
        None if !d.masks.is_empty() => Action::Mask,
        None if !d.filters.is_empty() => Action::Filter,
        None => Action::Allow,
    };
    if d.action == Action::Rewrite && d.query.is_none() {
        return Err("`rewrite` needs a `query` (the replacement request)".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
