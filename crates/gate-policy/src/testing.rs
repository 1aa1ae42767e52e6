//! Support for the `gate-policy` tool: checking policies and running `test_*` rules.

use gate_core::Stage;
use regorus::Value;

use crate::{EvalLimits, ModuleInfo, PolicyError, new_engine, one_line, parse_module};
use regorus::languages::rego::compiler::Compiler;

/// What `gate-policy check` reports for one file.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub name: String,
    /// Canonical package path, e.g. `data.formal.v2`.
    pub package: String,
    /// Stage rules found (primary names or aliases), in stage order.
    pub stage_rules: Vec<&'static str>,
    /// Why the policy runs on the (slower) interpreter instead of the RVM, if it does.
    pub interpreter_reason: Option<String>,
    /// `test_*` rules in the file.
    pub tests: Vec<String>,
}

/// Parses and fully compiles one policy (semantic analysis, and the RVM compile of each stage
/// rule present), without binding it to a stage.
pub fn check(name: &str, text: &str) -> Result<CheckReport, PolicyError> {
    let compile_err = |message: String| PolicyError::Compile {
        name: name.to_string(),
        message,
    };
    let mut engine = new_engine(&EvalLimits::default());
    let module: ModuleInfo = parse_module(&mut engine, name, text)?;
    let stage_rules: Vec<&'static str> = Stage::ALL
        .iter()
        .filter_map(|s| module.stage_rule(*s))
        .collect();
    let mut interpreter_reason = module.rvm_risk.clone();
    if stage_rules.is_empty() {
        // Still run the semantic checks, through any rule the module has.
        if let Some(rule) = module.rules.first() {
            let path = format!("{}.{rule}", module.package);
            engine
                .compile_with_entrypoint(&path.as_str().into())
                .map_err(|e| compile_err(one_line(&e.to_string())))?;
        }
    }
    for rule in &stage_rules {
        let path = format!("{}.{rule}", module.package);
        let compiled = engine
            .compile_with_entrypoint(&path.as_str().into())
            .map_err(|e| compile_err(one_line(&e.to_string())))?;
        if interpreter_reason.is_none()
            && let Err(e) = Compiler::compile_from_policy(&compiled, &[path.as_str()])
        {
            interpreter_reason = Some(format!(
                "the RVM compiler rejects `{rule}`: {}",
                one_line(&e.to_string())
            ));
        }
    }
    let tests = module
        .rules
        .iter()
        .filter(|r| r.starts_with("test_"))
        .cloned()
        .collect();
    Ok(CheckReport {
        name: name.to_string(),
        package: module.package,
        stage_rules,
        interpreter_reason,
        tests,
    })
}

/// The outcome of one `test_*` rule.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub file: String,
    /// e.g. `data.formal.v2_test.test_drop_is_blocked`
    pub rule_path: String,
    pub passed: bool,
    /// Why it failed (its value, or the evaluation error).
    pub detail: Option<String>,
}

/// Loads all files into one engine (so tests can refer to the policies under test, e.g.
/// `data.formal.v2.pre_request with input as {...}`) and evaluates every rule named
/// `test_*`. A test passes when its value is `true`; undefined, `false`, any other value or
/// an error fails it. Compile errors are returned as `Err`.
pub fn run_tests(
    files: &[(String, String)],
    limits: EvalLimits,
) -> Result<Vec<TestOutcome>, PolicyError> {
    let mut engine = new_engine(&limits);
    let mut tests = Vec::new();
    for (name, text) in files {
        let module = parse_module(&mut engine, name, text)?;
        for rule in module.rules.iter().filter(|r| r.starts_with("test_")) {
            tests.push((name.clone(), format!("{}.{rule}", module.package)));
        }
    }
    // Semantic analysis of all modules at once (unsafe variables, unknown functions, ...).
    if let Some((_, first)) = tests.first() {
        engine
            .compile_with_entrypoint(&first.as_str().into())
            .map_err(|e| PolicyError::Compile {
                name: files
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: one_line(&e.to_string()),
            })?;
    }
    let mut outcomes = Vec::with_capacity(tests.len());
    for (file, rule_path) in tests {
        let (passed, detail) = match engine.eval_rule(rule_path.clone()) {
            Ok(Value::Bool(true)) => (true, None),
            Ok(Value::Undefined) => (false, Some("undefined".to_string())),
            Ok(other) => (false, Some(format!("evaluated to {other}"))),
            Err(e) => (false, Some(one_line(&e.to_string()))),
        };
        outcomes.push(TestOutcome {
            file,
            rule_path,
            passed,
            detail,
        });
    }
    Ok(outcomes)
}
