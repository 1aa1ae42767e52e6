//! `gate-policy`: check, evaluate and test Gate's Rego policies.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gate_core::Stage;
use gate_policy::testing;
use gate_policy::{EvalLimits, PolicySet, read_source};

#[derive(Parser)]
#[command(
    name = "gate-policy",
    version,
    about = "Check, evaluate and test Gate Rego policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile each policy file and list its package and stage rules.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate one policy for one stage and print the decision as JSON.
    Eval {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// session, pre_request (request) or post_request (response).
        #[arg(long, value_parser = parse_stage)]
        stage: Stage,
        /// Input JSON file, or `-` for standard input.
        #[arg(long)]
        input: PathBuf,
    },
    /// Run every rule named `test_*` in the given files (loaded together).
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::parse(s).ok_or_else(|| {
        format!(
            "unknown stage {s:?} (expected session, pre_request, post_request, request or response)"
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Check { files } => check(&files),
        Command::Eval {
            policy,
            stage,
            input,
        } => eval(&policy, stage, &input),
        Command::Test { files } => test(&files),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("error: {}: {e}", path.display()))
}

fn check(files: &[PathBuf]) -> bool {
    let mut ok = true;
    for file in files {
        let name = file.display().to_string();
        let result = read(file)
            .and_then(|text| testing::check(&name, &text).map_err(|e| format!("error: {e}")));
        match result {
            Ok(report) => {
                let rules = if report.stage_rules.is_empty() {
                    "none".to_string()
                } else {
                    report.stage_rules.join(", ")
                };
                let mut extra = String::new();
                if !report.tests.is_empty() {
                    extra.push_str(&format!("; tests: {}", report.tests.len()));
                }
                if let Some(reason) = &report.interpreter_reason {
                    extra.push_str(&format!("; runs on the interpreter: {reason}"));
                }
                println!(
                    "ok: {name} (package {}; rules: {rules}{extra})",
                    report.package
                );
            }
            Err(message) => {
                ok = false;
                eprintln!("{message}");
            }
        }
    }
    ok
}

fn eval(policy: &Path, stage: Stage, input: &Path) -> bool {
    let run = || -> Result<String, String> {
        let source = read_source(policy, stage).map_err(|e| format!("error: {e}"))?;
        let text = if input.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("error: reading input from stdin: {e}"))?;
            s
        } else {
            read(input)?
        };
        let input: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("error: input {} is not valid JSON: {e}", input.display()))?;
        let set = PolicySet::compile(vec![source]).map_err(|e| format!("error: {e}"))?;
        let decision = set
            .evaluate(stage, &input)
            .map_err(|e| format!("error: {e}"))?;
        serde_json::to_string_pretty(&decision).map_err(|e| format!("error: {e}"))
    };
    match run() {
        Ok(json) => {
            println!("{json}");
            true
        }
        Err(message) => {
            eprintln!("{message}");
            false
        }
    }
}

fn test(files: &[PathBuf]) -> bool {
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        match read(file) {
            Ok(text) => sources.push((file.display().to_string(), text)),
            Err(message) => {
                eprintln!("{message}");
                return false;
            }
        }
    }
    let outcomes = match testing::run_tests(&sources, EvalLimits::default()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    if outcomes.is_empty() {
        eprintln!("error: no test_* rules found");
        return false;
    }
    let mut failed = 0;
    for o in &outcomes {
        if o.passed {
            println!("PASS {} ({})", o.rule_path, o.file);
        } else {
            failed += 1;
            println!(
                "FAIL {} ({}): {}",
                o.rule_path,
                o.file,
                o.detail.as_deref().unwrap_or("failed")
            );
        }
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    failed == 0
}
