use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gate_core::{Action, Decision, MaskRule, MaskStrategy, Stage};
use serde_json::{Value as Json, json};

use crate::testing;
use crate::{Backend, EvalLimits, Evaluator, PolicyError, PolicyOptions, PolicySet, PolicySource};

const EVALUATORS: [Evaluator; 2] = [Evaluator::Interpreter, Evaluator::Rvm];

fn backend_of(evaluator: Evaluator) -> Backend {
    match evaluator {
        Evaluator::Interpreter => Backend::Interpreter,
        Evaluator::Rvm => Backend::Rvm,
    }
}

fn with_limits(evaluator: Evaluator, limits: EvalLimits) -> PolicyOptions {
    PolicyOptions { limits, evaluator }
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/example.rego")
}

fn example_test_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/example_test.rego")
}

/// The example policy loaded for all three stages, as the sample config does.
fn example_set(evaluator: Evaluator) -> PolicySet {
    let path = example_path();
    let sources = Stage::ALL
        .iter()
        .map(|stage| crate::read_source(&path, *stage).unwrap())
        .collect();
    PolicySet::compile_with(sources, with_limits(evaluator, EvalLimits::default()))
        .expect("example policy compiles")
}

fn src(name: &str, stage: Stage, text: &str) -> PolicySource {
    PolicySource::new(name, text, stage)
}

fn one(evaluator: Evaluator, stage: Stage, text: &str) -> PolicySet {
    compile(evaluator, vec![src("test.rego", stage, text)]).expect("policy compiles")
}

fn compile(evaluator: Evaluator, sources: Vec<PolicySource>) -> Result<PolicySet, PolicyError> {
    PolicySet::compile_with(sources, with_limits(evaluator, EvalLimits::default()))
}

fn sql_input(kind: &str, statement: &str) -> Json {
    json!({
        "user": {"sub": "u-1", "name": "alice", "email": "alice@example.com", "groups": ["dev"]},
        "resource": {"name": "pg-main", "protocol": "postgres", "database": "app"},
        "session": {"id": "s-1", "client_addr": "127.0.0.1:5555"},
        "query": {"type": kind, "statement": statement, "tables": ["users"]},
    })
}

fn columns_input(cols: &[&str]) -> Json {
    let mut input = sql_input("select", "SELECT * FROM users");
    input["columns"] = cols.iter().map(|c| json!({"name": c})).collect();
    input
}

fn mask(column: &str, strategy: MaskStrategy) -> MaskRule {
    MaskRule {
        column: column.into(),
        strategy,
    }
}

#[test]
fn policy_set_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySet>();
    assert_send_sync::<Arc<PolicySet>>();
}

// ---------------------------------------------------------------------------------------
// compile errors

#[test]
fn syntax_error_names_the_file_and_the_reason() {
    for ev in EVALUATORS {
        let err = compile(
            ev,
            vec![src(
                "policies/broken.rego",
                Stage::PreRequest,
                "package x\nimport rego.v1\npre_request if {\n  input.a ==\n}\n",
            )],
        )
        .unwrap_err();
        assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("policies/broken.rego"), "{msg}");
        assert!(msg.contains("expecting expression"), "{msg}");
        assert!(msg.contains(":5:1"), "line/column kept: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
}

#[test]
fn semantic_error_surfaces_at_compile_time() {
    for ev in EVALUATORS {
        let err = compile(
            ev,
            vec![src(
                "unsafe.rego",
                Stage::PreRequest,
                "package x\nimport rego.v1\npre_request if { y == 1 }\n",
            )],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
        assert!(msg.contains("unsafe.rego"), "{msg}");
        assert!(msg.contains("`y` is unsafe"), "{msg}");
        assert!(msg.contains("near `pre_request if { y == 1 }`"), "{msg}");
    }
}

#[test]
fn missing_stage_rule_is_a_compile_error() {
    for ev in EVALUATORS {
        let err = compile(
            ev,
            vec![src(
                "nostage.rego",
                Stage::PostRequest,
                "package a.b\nimport rego.v1\npre_request := true\n",
            )],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nostage.rego"), "{msg}");
        assert!(
            msg.contains("data.a.b has no rule `post_request` (or `response`)"),
            "{msg}"
        );
    }
}

#[test]
fn io_error_names_the_path() {
    let err = PolicySet::load_files(&[(PathBuf::from("/nonexistent/p.rego"), Stage::Session)])
        .unwrap_err();
    assert!(matches!(err, PolicyError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/p.rego"), "{err}");
}

// ---------------------------------------------------------------------------------------
// the example policy

#[test]
fn example_policy_decisions() {
    for ev in EVALUATORS {
        let set = example_set(ev);
        assert!(set.policies().all(|p| p.backend == backend_of(ev)));
        assert!(set.policies().all(|p| p.package == "data.formal.v2"));

        let d = set
            .evaluate(Stage::Session, &sql_input("select", ""))
            .unwrap();
        assert_eq!(d, Decision::allow());

        let d = set
            .evaluate(Stage::PreRequest, &sql_input("drop", "DROP TABLE users"))
            .unwrap();
        assert_eq!(d.action, Action::Block);
        assert_eq!(
            d.block_reason(),
            "DROP statements are not allowed through Gate"
        );

        let d = set
            .evaluate(Stage::PreRequest, &sql_input("select", "SELECT 1"))
            .unwrap();
        assert_eq!(d, Decision::allow());

        let d = set
            .evaluate(
                Stage::PostRequest,
                &columns_input(&["id", "Email", "ssn", "name"]),
            )
            .unwrap();
        assert_eq!(d.action, Action::Mask);
        let mut masks = d.masks.clone();
        masks.sort_by(|a, b| a.column.cmp(&b.column));
        assert_eq!(
            masks,
            vec![
                mask("email", MaskStrategy::Partial),
                mask("ssn", MaskStrategy::Redact)
            ]
        );

        let d = set
            .evaluate(Stage::PostRequest, &columns_input(&["id", "email"]))
            .unwrap();
        assert_eq!(d.masks, vec![mask("email", MaskStrategy::Partial)]);

        let d = set
            .evaluate(Stage::PostRequest, &columns_input(&["id"]))
            .unwrap();
        assert_eq!(d, Decision::allow());
    }
}

#[test]
fn example_policy_tests_pass_and_a_broken_test_fails() {
    let read = |p: PathBuf| {
        (
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        )
    };
    let files = vec![read(example_path()), read(example_test_path())];
    let outcomes = testing::run_tests(&files, EvalLimits::default()).unwrap();
    assert!(outcomes.len() >= 4);
    for o in &outcomes {
        assert!(o.passed, "{} failed: {:?}", o.rule_path, o.detail);
    }

    let failing = vec![
        files[0].clone(),
        (
            "bad_test.rego".to_string(),
            "package t\nimport rego.v1\ntest_wrong if { data.formal.v2.pre_request.action == \"block\" with input as {\"query\": {\"type\": \"select\"}} }\ntest_right if { data.formal.v2.session.action == \"allow\" }\n".to_string(),
        ),
    ];
    let outcomes = testing::run_tests(&failing, EvalLimits::default()).unwrap();
    let wrong = outcomes
        .iter()
        .find(|o| o.rule_path == "data.t.test_wrong")
        .unwrap();
    assert!(!wrong.passed);
    let right = outcomes
        .iter()
        .find(|o| o.rule_path == "data.t.test_right")
        .unwrap();
    assert!(right.passed);
}

#[test]
fn check_reports_package_and_stage_rules() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let report = testing::check("example.rego", &text).unwrap();
    assert_eq!(report.package, "data.formal.v2");
    assert_eq!(
        report.stage_rules,
        vec!["session", "pre_request", "post_request"]
    );
    assert!(report.interpreter_reason.is_none());
    assert!(testing::check("bad.rego", "package x\nallow if {").is_err());
}

// ---------------------------------------------------------------------------------------
// rule names and result shapes

#[test]
fn alias_rules_request_and_response() {
    for ev in EVALUATORS {
        let text = r#"package gate.alias
    import rego.v1
    request := {"action": "block", "reason": "via alias"} if input.query.type == "delete"
    response := {"masks": [{"column": "card", "strategy": "hash"}]}
    "#;
        let set = compile(
            ev,
            vec![
                src("alias.rego", Stage::PreRequest, text),
                src("alias.rego", Stage::PostRequest, text),
            ],
        )
        .unwrap();
        assert!(!set.has_stage(Stage::Session));
        assert!(set.has_stage(Stage::PreRequest));
        let rules: Vec<_> = set.policies().map(|p| p.rule).collect();
        assert_eq!(rules, vec!["request", "response"]);

        let d = set
            .evaluate(Stage::PreRequest, &sql_input("delete", "DELETE FROM t"))
            .unwrap();
        assert_eq!(d.block_reason(), "via alias");
        let d = set
            .evaluate(Stage::PreRequest, &sql_input("select", "SELECT 1"))
            .unwrap();
        assert_eq!(d, Decision::allow(), "undefined alias rule = no opinion");

        // `action` omitted with masks → mask
        let d = set
            .evaluate(Stage::PostRequest, &columns_input(&["card"]))
            .unwrap();
        assert_eq!(d.action, Action::Mask);
        assert_eq!(d.masks, vec![mask("card", MaskStrategy::Hash)]);

        // A stage without policies allows.
        assert_eq!(
            set.evaluate(Stage::Session, &json!({})).unwrap(),
            Decision::allow()
        );
    }
}

#[test]
fn primary_rule_wins_over_alias() {
    for ev in EVALUATORS {
        let set = one(
            ev,
            Stage::PreRequest,
            "package p\nimport rego.v1\npre_request := false\nrequest := true\n",
        );
        assert_eq!(set.policies().next().unwrap().rule, "pre_request");
        assert!(
            set.evaluate(Stage::PreRequest, &json!({}))
                .unwrap()
                .is_block()
        );
    }
}

#[test]
fn boolean_and_undefined_results() {
    for ev in EVALUATORS {
        let text = "package b\nimport rego.v1\nsession if input.user.name == \"alice\"\n";
        let set = compile(ev, vec![src("bool.rego", Stage::Session, text)]).unwrap();
        // true → allow
        let d = set
            .evaluate(Stage::Session, &json!({"user": {"name": "alice"}}))
            .unwrap();
        assert_eq!(d, Decision::allow());
        // undefined (no default) → allow, no opinion
        let d = set
            .evaluate(Stage::Session, &json!({"user": {"name": "bob"}}))
            .unwrap();
        assert_eq!(d, Decision::allow());

        // false → block naming the policy
        let text = "package b\nimport rego.v1\ndefault session := false\nsession if input.user.name == \"alice\"\n";
        let set = compile(ev, vec![src("bool.rego", Stage::Session, text)]).unwrap();
        let d = set
            .evaluate(Stage::Session, &json!({"user": {"name": "bob"}}))
            .unwrap();
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.block_reason(), "denied by policy bool.rego");
        let d = set
            .evaluate(Stage::Session, &json!({"user": {"name": "alice"}}))
            .unwrap();
        assert_eq!(d, Decision::allow());
    }
}

#[test]
fn decision_objects_parse_fully() {
    for ev in EVALUATORS {
        let set = one(
            ev,
            Stage::PreRequest,
            r#"package d
    import rego.v1
    pre_request := {"action": "rewrite", "query": "SELECT 1 LIMIT 10", "reason": "capped", "filters": [{"column": "tenant", "equals": 7}], "extra": "ignored"}
    "#,
        );
        let d = set.evaluate(Stage::PreRequest, &json!({})).unwrap();
        assert_eq!(d.action, Action::Rewrite);
        assert_eq!(d.query.as_deref(), Some("SELECT 1 LIMIT 10"));
        assert_eq!(d.reason.as_deref(), Some("capped"));
        assert_eq!(d.filters, vec![json!({"column": "tenant", "equals": 7})]);

        let set = one(
            ev,
            Stage::PreRequest,
            "package d\nimport rego.v1\npre_request := {\"reason\": \"fine\"}\n",
        );
        let d = set.evaluate(Stage::PreRequest, &json!({})).unwrap();
        assert_eq!(d.action, Action::Allow, "action omitted, no masks → allow");
    }
}

#[test]
fn malformed_results_are_errors() {
    for ev in EVALUATORS {
        let cases = [
            (r#"{"action": "explode"}"#, "unknown action"),
            (
                r#"{"action": "mask", "masks": [{"column": "a", "strategy": "scramble"}]}"#,
                "unknown mask strategy",
            ),
            (r#"{"masks": [{"column": "a"}]}"#, "no `strategy`"),
            (r#"{"masks": "email"}"#, "`masks` must be an array"),
            (r#"{"action": 1}"#, "`action` must be a string"),
            (r#"{"action": "rewrite"}"#, "needs a `query`"),
            ("42", "expected an object or a boolean"),
            (r#""allow""#, "expected an object or a boolean"),
            ("[1, 2]", "expected an object or a boolean"),
        ];
        for (value, expected) in cases {
            let text = format!("package m\nimport rego.v1\npre_request := {value}\n");
            let set = compile(ev, vec![src("m.rego", Stage::PreRequest, &text)]).unwrap();
            let err = set.evaluate(Stage::PreRequest, &json!({})).unwrap_err();
            assert!(
                matches!(err, PolicyError::Malformed { .. }),
                "{value}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(expected) && msg.contains("m.rego"),
                "{value}: {msg}"
            );
        }
    }
}

/// Builtin errors make the expression undefined (OPA's default) on both evaluators.
#[test]
fn builtin_errors_are_undefined() {
    for ev in EVALUATORS {
        let set = one(
            ev,
            Stage::PreRequest,
            "package e\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": sprintf(\"%d\", [10 / input.n])}\n",
        );
        assert_eq!(set.policies().next().unwrap().backend, backend_of(ev));
        assert_eq!(
            set.evaluate(Stage::PreRequest, &json!({"n": 2}))
                .unwrap()
                .reason
                .as_deref(),
            Some("5")
        );
        assert_eq!(
            set.evaluate(Stage::PreRequest, &json!({"n": 0})).unwrap(),
            Decision::allow(),
            "{ev:?}"
        );
    }
}

/// Both evaluators agree on builtin failures and odd comparisons.
#[test]
fn evaluators_agree_on_edge_cases() {
    let cases = [
        ("pre_request := to_number(input.s) > 1", json!({"s": "abc"})),
        ("pre_request := input.s < 5", json!({"s": "abc"})),
        ("pre_request := input.missing.deeper == 1", json!({})),
        ("pre_request := count(input.s) > 1", json!({"s": 7})),
        ("pre_request := lower(input.s) == \"x\"", json!({"s": null})),
        (
            "pre_request := {\"reason\": concat(\",\", input.t)}",
            json!({"t": ["a", 1]}),
        ),
    ];
    for (rule, input) in cases {
        let text = format!("package e\nimport rego.v1\n{rule}\n");
        let outcomes: Vec<String> = EVALUATORS
            .iter()
            .map(|ev| {
                match one(*ev, Stage::PreRequest, &text).evaluate(Stage::PreRequest, &input) {
                    Ok(d) => format!("{:?}", d.action),
                    Err(PolicyError::Eval { .. }) => "error".to_string(),
                    Err(other) => format!("{other}"),
                }
            })
            .collect();
        assert_eq!(
            outcomes[0], outcomes[1],
            "{rule} with {input}: {outcomes:?}"
        );
    }
}

/// A complete rule whose definitions produce different values is an error in OPA and in
/// regorus' interpreter (Gate denies). regorus 0.14.1's RVM would make it undefined (allow),
/// so such policies are routed to the interpreter even when the RVM is requested.
#[test]
fn conflicting_rule_values_are_errors() {
    let text = "package e\nimport rego.v1\npre_request := {\"action\": \"allow\"} if input.a\npre_request := {\"action\": \"block\", \"reason\": \"b\"} if input.b\n";
    for ev in EVALUATORS {
        let set = one(ev, Stage::PreRequest, text);
        let info = set.policies().next().unwrap();
        assert_eq!(info.backend, Backend::Interpreter, "{ev:?}");
        if ev == Evaluator::Rvm {
            let reason = info.interpreter_reason.as_deref().unwrap();
            assert!(reason.contains("2 definitions"), "{reason}");
        }
        assert_eq!(
            set.evaluate(Stage::PreRequest, &json!({"a": true}))
                .unwrap(),
            Decision::allow()
        );
        assert!(
            set.evaluate(Stage::PreRequest, &json!({"b": true}))
                .unwrap()
                .is_block()
        );
        let err = set
            .evaluate(Stage::PreRequest, &json!({"a": true, "b": true}))
            .unwrap_err();
        assert!(matches!(err, PolicyError::Eval { .. }), "{err:?}");
        assert!(err.to_string().contains("conflicts"), "{err}");
    }
}

/// The same for a helper rule whose iterating body yields several values.
#[test]
fn rules_with_several_outputs_are_errors() {
    let text = r#"package e
import rego.v1
role := r if { some r in input.user.groups }
pre_request := {"action": "block", "reason": "guests may not write"} if role == "guest"
"#;
    for ev in EVALUATORS {
        let set = one(ev, Stage::PreRequest, text);
        assert_eq!(set.policies().next().unwrap().backend, Backend::Interpreter);
        let guest = json!({"user": {"groups": ["guest"]}});
        assert!(set.evaluate(Stage::PreRequest, &guest).unwrap().is_block());
        let both = json!({"user": {"groups": ["admin", "guest"]}});
        let err = set.evaluate(Stage::PreRequest, &both).unwrap_err();
        assert!(matches!(err, PolicyError::Eval { .. }), "{err:?}");
    }
}

#[test]
fn enumerating_rule_values_are_errors() {
    for ev in EVALUATORS {
        let set = one(
            ev,
            Stage::PreRequest,
            "package e\nimport rego.v1\npre_request := input.decisions[_]\n",
        );
        assert!(
            set.evaluate(Stage::PreRequest, &json!({"decisions": [false]}))
                .unwrap()
                .is_block()
        );
        let err = set
            .evaluate(Stage::PreRequest, &json!({"decisions": [true, false]}))
            .unwrap_err();
        assert!(matches!(err, PolicyError::Eval { .. }), "{ev:?}: {err:?}");
    }
}

#[test]
fn conflict_guard_keeps_safe_policies_on_the_rvm() {
    let rvm = [
        // constant value, iterating body
        "pre_request := {\"action\": \"block\"} if { some t in input.query.tables; t == \"secrets\" }",
        // several definitions of the same constant
        "pre_request := false if input.a\npre_request := false if input.b",
        // else chains are mutually exclusive
        "pre_request := 1 if input.a else := 2 if input.b",
        // non-constant value, no iteration; comprehensions collect
        "pre_request := {\"reason\": input.user.name, \"n\": count([t | some t in input.query.tables])}",
        // partial sets accumulate
        "deny contains t if { some t in input.query.tables }\npre_request := count(deny) == 0",
    ];
    for body in rvm {
        let set = one(
            Evaluator::Rvm,
            Stage::PreRequest,
            &format!("package g\nimport rego.v1\n{body}\n"),
        );
        let info = set.policies().next().unwrap();
        assert_eq!(
            info.backend,
            Backend::Rvm,
            "{body}: {:?}",
            info.interpreter_reason
        );
    }
    let interpreted = [
        "pre_request := {\"reason\": t} if { some t in input.query.tables }",
        "pre_request := {\"reason\": t} if { t := input.query.tables[_] }",
        "pre_request := 1 if input.a\npre_request := 2 if input.b",
        "obj[k] := 1 if { some k in input.query.tables }\npre_request := count(obj) > 0",
        "f(x) := y if { some y in x }\npre_request := f(input.t) == 1",
        "pre_request := input.decisions[_]",
        "pre_request := {\"reason\": input.reasons[_]} if input.a",
    ];
    for body in interpreted {
        let set = one(
            Evaluator::Rvm,
            Stage::PreRequest,
            &format!("package g\nimport rego.v1\n{body}\n"),
        );
        let info = set.policies().next().unwrap();
        assert_eq!(info.backend, Backend::Interpreter, "{body}");
    }
}

#[test]
fn sources_for_one_stage_combine() {
    for ev in EVALUATORS {
        let block = "package one\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"no writes\"} if input.query.type == \"insert\"\n";
        let mask_a = "package two\nimport rego.v1\npost_request := {\"masks\": [{\"column\": \"a\", \"strategy\": \"redact\"}]}\n";
        let mask_b = "package three\nimport rego.v1\npost_request := {\"action\": \"mask\", \"masks\": [{\"column\": \"b\", \"strategy\": \"email\"}]}\n";
        let allow = "package four\nimport rego.v1\npre_request := true\n";
        let set = compile(
            ev,
            vec![
                src("allow.rego", Stage::PreRequest, allow),
                src("block.rego", Stage::PreRequest, block),
                src("a.rego", Stage::PostRequest, mask_a),
                src("b.rego", Stage::PostRequest, mask_b),
            ],
        )
        .unwrap();
        let d = set
            .evaluate(Stage::PreRequest, &sql_input("insert", "INSERT"))
            .unwrap();
        assert_eq!(d.block_reason(), "no writes");
        let d = set
            .evaluate(Stage::PreRequest, &sql_input("select", "SELECT"))
            .unwrap();
        assert_eq!(d, Decision::allow());
        let d = set
            .evaluate(Stage::PostRequest, &columns_input(&["a", "b"]))
            .unwrap();
        assert_eq!(d.action, Action::Mask);
        assert_eq!(
            d.masks,
            vec![
                mask("a", MaskStrategy::Redact),
                mask("b", MaskStrategy::Email)
            ]
        );
    }
}

#[test]
fn one_failing_source_fails_the_stage() {
    for ev in EVALUATORS {
        let set = compile(
            ev,
            vec![
                src(
                    "ok.rego",
                    Stage::PreRequest,
                    "package ok\nimport rego.v1\npre_request := true\n",
                ),
                src(
                    "bad.rego",
                    Stage::PreRequest,
                    "package bad\nimport rego.v1\npre_request := 7\n",
                ),
            ],
        )
        .unwrap();
        let err = set.evaluate(Stage::PreRequest, &json!({})).unwrap_err();
        assert!(err.to_string().contains("bad.rego"), "{err}");
    }
}

#[test]
fn serde_structs_are_accepted_as_input() {
    for ev in EVALUATORS {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum QueryType {
            Drop,
        }
        #[derive(serde::Serialize)]
        struct Query<'a> {
            #[serde(rename = "type")]
            kind: QueryType,
            statement: &'a str,
            tables: Vec<String>,
        }
        #[derive(serde::Serialize)]
        struct Input<'a> {
            query: Option<Query<'a>>,
            columns: Option<Vec<String>>,
        }
        let set = example_set(ev);
        let input = Input {
            query: Some(Query {
                kind: QueryType::Drop,
                statement: "DROP TABLE t",
                tables: vec!["t".into()],
            }),
            columns: None,
        };
        assert!(set.evaluate(Stage::PreRequest, &input).unwrap().is_block());
    }
}

// ---------------------------------------------------------------------------------------
// limits

const RUNAWAY: &str = r#"package runaway
import rego.v1
pre_request if {
	n := count([x | some a in numbers.range(1, 5000); some b in numbers.range(1, 5000); x := a * b])
	n > 0
}
"#;

#[test]
fn runaway_policy_times_out() {
    let limits = EvalLimits {
        time: Duration::from_millis(20),
        max_instructions: usize::MAX,
        ..EvalLimits::default()
    };
    for ev in EVALUATORS {
        let set = PolicySet::compile_with(
            vec![src("runaway.rego", Stage::PreRequest, RUNAWAY)],
            with_limits(ev, limits),
        )
        .unwrap();
        let started = Instant::now();
        let err = set.evaluate(Stage::PreRequest, &json!({})).unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(err, PolicyError::Timeout { .. }),
            "{ev:?}: {err:?}"
        );
        assert!(err.to_string().contains("runaway.rego"), "{err}");
        assert!(err.to_string().contains("20ms"), "{err}");
        assert!(
            elapsed < Duration::from_secs(2),
            "{ev:?} stopped late: {elapsed:?}"
        );

        // The thread's evaluator is reusable after a timeout.
        let set2 = PolicySet::compile_with(
            vec![
                src("runaway.rego", Stage::PreRequest, RUNAWAY),
                src(
                    "ok.rego",
                    Stage::Session,
                    "package ok\nimport rego.v1\nsession := true\n",
                ),
            ],
            with_limits(ev, limits),
        )
        .unwrap();
        assert!(set2.evaluate(Stage::PreRequest, &json!({})).is_err());
        assert_eq!(
            set2.evaluate(Stage::Session, &json!({})).unwrap(),
            Decision::allow()
        );
        assert!(set2.evaluate(Stage::PreRequest, &json!({})).is_err());
    }
}

#[test]
fn runaway_policy_stops_with_default_limits() {
    for ev in EVALUATORS {
        let set = one(ev, Stage::PreRequest, RUNAWAY);
        let started = Instant::now();
        let err = set.evaluate(Stage::PreRequest, &json!({})).unwrap_err();
        assert!(matches!(err, PolicyError::Timeout { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn instruction_budget_is_enforced() {
    let limits = EvalLimits {
        time: Duration::from_secs(60),
        max_instructions: 10_000,
        ..EvalLimits::default()
    };
    let set = PolicySet::compile_with(
        vec![src("runaway.rego", Stage::PreRequest, RUNAWAY)],
        with_limits(Evaluator::Rvm, limits),
    )
    .unwrap();
    let err = set.evaluate(Stage::PreRequest, &json!({})).unwrap_err();
    assert!(matches!(err, PolicyError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("10000 instructions"), "{err}");
}

// ---------------------------------------------------------------------------------------
// RVM → interpreter fallback (policies the RVM compiler rejects, e.g. `with`)

const WITH_POLICY: &str = r#"package fallback
import rego.v1
is_admin if "admin" in input.user.groups
# `with` is not supported by the RVM compiler yet.
admins_may_drop if is_admin with input.user.groups as ["admin"]
pre_request := {"action": "block", "reason": "admins only"} if {
	admins_may_drop
	input.query.type == "drop"
	not is_admin
}
"#;

#[test]
fn rvm_falls_back_to_the_interpreter() {
    let set = compile(
        Evaluator::Rvm,
        vec![
            src("with.rego", Stage::PreRequest, WITH_POLICY),
            src(
                "plain.rego",
                Stage::Session,
                "package plain\nimport rego.v1\nsession := true\n",
            ),
        ],
    )
    .unwrap();
    let backends: Vec<_> = set.policies().map(|p| p.backend).collect();
    assert_eq!(backends, vec![Backend::Interpreter, Backend::Rvm]);
    let d = set
        .evaluate(Stage::PreRequest, &sql_input("drop", "DROP TABLE t"))
        .unwrap();
    assert_eq!(d.block_reason(), "admins only");
    let mut admin = sql_input("drop", "DROP TABLE t");
    admin["user"]["groups"] = json!(["admin"]);
    assert_eq!(
        set.evaluate(Stage::PreRequest, &admin).unwrap(),
        Decision::allow()
    );
    assert_eq!(
        set.evaluate(Stage::Session, &json!({})).unwrap(),
        Decision::allow()
    );
}

// ---------------------------------------------------------------------------------------
// concurrency and snapshots

#[test]
fn concurrent_evaluation_is_correct() {
    for ev in EVALUATORS {
        let set = Arc::new(example_set(ev));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let set = set.clone();
                std::thread::spawn(move || {
                    for i in 0..300 {
                        match (t + i) % 3 {
                            0 => {
                                let d = set
                                    .evaluate(Stage::PreRequest, &sql_input("drop", "DROP TABLE x"))
                                    .unwrap();
                                assert!(d.is_block());
                            }
                            1 => {
                                let d = set
                                    .evaluate(Stage::PreRequest, &sql_input("select", "SELECT 1"))
                                    .unwrap();
                                assert_eq!(d, Decision::allow());
                            }
                            _ => {
                                let d = set
                                    .evaluate(Stage::PostRequest, &columns_input(&["ssn"]))
                                    .unwrap();
                                assert_eq!(d.masks, vec![mask("ssn", MaskStrategy::Redact)]);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("evaluator thread panicked");
        }
    }
}

#[test]
fn snapshots_do_not_mix() {
    for ev in EVALUATORS {
        // Generation A blocks DROP; generation B (a "reload") blocks SELECT instead.
        let a = Arc::new(example_set(ev));
        let b = Arc::new(one(
            ev,
            Stage::PreRequest,
            "package formal.v2\nimport rego.v1\npre_request := {\"action\": \"block\", \"reason\": \"gen B\"} if input.query.type == \"select\"\n",
        ));
        let drop = sql_input("drop", "DROP TABLE x");
        let select = sql_input("select", "SELECT 1");
        // Same thread, interleaved: each set keeps its own per-thread VM.
        for _ in 0..3 {
            assert!(a.evaluate(Stage::PreRequest, &drop).unwrap().is_block());
            assert!(!b.evaluate(Stage::PreRequest, &drop).unwrap().is_block());
            assert!(!a.evaluate(Stage::PreRequest, &select).unwrap().is_block());
            assert_eq!(
                b.evaluate(Stage::PreRequest, &select)
                    .unwrap()
                    .block_reason(),
                "gen B"
            );
        }
        // Other threads, both generations at once; then the old one goes away mid-flight.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (a, b) = (a.clone(), b.clone());
                let (drop, select) = (drop.clone(), select.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if i % 2 == 0 {
                            assert!(a.evaluate(Stage::PreRequest, &drop).unwrap().is_block());
                            assert!(!a.evaluate(Stage::PreRequest, &select).unwrap().is_block());
                        } else {
                            assert!(!b.evaluate(Stage::PreRequest, &drop).unwrap().is_block());
                            assert!(b.evaluate(Stage::PreRequest, &select).unwrap().is_block());
                        }
                    }
                })
            })
            .collect();
        drop_arc(a);
        for h in handles {
            h.join().unwrap();
        }
        // A set created after another was dropped on this thread starts clean.
        let c = one(
            ev,
            Stage::PreRequest,
            "package formal.v2\nimport rego.v1\npre_request := false\n",
        );
        assert!(c.evaluate(Stage::PreRequest, &select).unwrap().is_block());
        assert!(!b.evaluate(Stage::PreRequest, &drop).unwrap().is_block());
    }
}

fn drop_arc(a: Arc<PolicySet>) {
    drop(a);
}

#[test]
fn empty_set_allows_everything() {
    let set = PolicySet::empty();
    for stage in Stage::ALL {
        assert!(!set.has_stage(stage));
        assert_eq!(set.evaluate(stage, &json!({})).unwrap(), Decision::allow());
    }
}

// ---------------------------------------------------------------------------------------
// performance: `cargo test -p gate-policy --release -- --nocapture eval_speed`

/// The request facts as the pipeline serializes them (struct fields, enum variants).
mod facts {
    #[derive(serde::Serialize)]
    pub struct User {
        pub sub: String,
        pub name: String,
        pub email: String,
        pub groups: Vec<String>,
    }
    #[derive(serde::Serialize)]
    pub struct Resource {
        pub name: String,
        pub protocol: String,
        pub database: String,
    }
    #[derive(serde::Serialize)]
    pub struct Session {
        pub id: String,
        pub client_addr: String,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum QueryType {
        Select,
    }
    #[derive(serde::Serialize)]
    pub struct Query {
        #[serde(rename = "type")]
        pub kind: QueryType,
        pub statement: String,
        pub tables: Vec<String>,
    }
    #[derive(serde::Serialize)]
    pub struct Input {
        pub user: User,
        pub resource: Resource,
        pub session: Session,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub query: Option<Query>,
    }

    pub fn sample() -> Input {
        Input {
            user: User {
                sub: "u-1".into(),
                name: "alice".into(),
                email: "alice@example.com".into(),
                groups: vec!["dev".into()],
            },
            resource: Resource {
                name: "pg-main".into(),
                protocol: "postgres".into(),
                database: "app".into(),
            },
            session: Session {
                id: "s-1".into(),
                client_addr: "127.0.0.1:5555".into(),
            },
            query: Some(Query {
                kind: QueryType::Select,
                statement: "SELECT id, email FROM users WHERE id = 1".into(),
                tables: vec!["users".into()],
            }),
        }
    }
}

#[test]
fn eval_speed() {
    let json_input = sql_input("select", "SELECT id, email FROM users WHERE id = 1");
    let pre = facts::sample();
    assert_eq!(
        crate::to_value(&pre).unwrap(),
        crate::to_value(&json_input).unwrap()
    );
    let post = columns_input(&["id", "email"]);
    let iterations = if cfg!(debug_assertions) {
        2_000
    } else {
        200_000
    };
    let measure = |f: &dyn Fn()| {
        for _ in 0..iterations / 10 {
            f();
        }
        let started = Instant::now();
        for _ in 0..iterations {
            f();
        }
        started.elapsed() / iterations
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let input_value = crate::PolicyInput::new(&pre).unwrap();
    let base = crate::PolicyInput::new(&facts::Input {
        query: None,
        ..facts::sample()
    })
    .unwrap();
    let query = facts::sample().query;
    #[derive(serde::Serialize)]
    struct PerRequest<'a> {
        query: &'a Option<facts::Query>,
    }
    let per_request = PerRequest { query: &query };
    assert_eq!(
        base.with(&per_request).unwrap().to_json(),
        input_value.to_json()
    );
    let convert = measure(&|| {
        drop(std::hint::black_box(
            crate::to_value(std::hint::black_box(&pre)).unwrap(),
        ));
    });
    let convert_json = measure(&|| {
        drop(std::hint::black_box(
            crate::to_value(std::hint::black_box(&json_input)).unwrap(),
        ));
    });
    println!(
        "gate-policy eval ({profile}): input conversion + drop: structs {convert:?}, \
         serde_json::Value {convert_json:?}"
    );
    for ev in EVALUATORS {
        let set = example_set(ev);
        let exec_only = measure(&|| {
            std::hint::black_box(set.evaluate_input(Stage::PreRequest, &input_value).unwrap());
        });
        let with_base = measure(&|| {
            let input = base.with(&per_request).unwrap();
            std::hint::black_box(set.evaluate_input(Stage::PreRequest, &input).unwrap());
        });
        let pre_total = measure(&|| {
            std::hint::black_box(set.evaluate(Stage::PreRequest, &pre).unwrap());
        });
        let post_total = measure(&|| {
            std::hint::black_box(set.evaluate(Stage::PostRequest, &post).unwrap());
        });
        println!(
            "gate-policy eval ({profile}, {ev:?}): pre_request {pre_total:?}/eval \
             (evaluation alone {exec_only:?}; with a per-session PolicyInput {with_base:?}); \
             post_request planning a mask {post_total:?}/eval"
        );
    }
}

#[test]
fn targeted_and_dry_run_policies() {
    let block_drop = r#"package formal.v2
import rego.v1
pre_request := {"action": "block", "reason": "no drops"} if input.query.type == "drop"
"#;
    let block_all = r#"package formal.v2
import rego.v1
pre_request := {"action": "block", "reason": "would block everything"}
"#;
    for evaluator in [Evaluator::Rvm, Evaluator::Interpreter] {
        let set = compile(
            evaluator,
            vec![
                src("prod.rego", Stage::PreRequest, block_drop)
                    .with_targets(vec!["prod-*".into(), "db-??".into()]),
                src("dry.rego", Stage::PreRequest, block_all).dry_run(true),
            ],
        )
        .unwrap();
        assert!(set.has_targeting());
        let input = crate::PolicyInput::new(&sql_input("drop", "DROP TABLE users")).unwrap();

        // Targeted: blocks on prod-main and db-01, not on dev-main.
        for (resource, blocked) in [("prod-main", true), ("db-01", true), ("dev-main", false)] {
            let e = set
                .evaluate_for(Stage::PreRequest, resource, &input)
                .unwrap();
            assert_eq!(e.decision.is_block(), blocked, "{resource}");
            // The dry-run policy is reported everywhere, never enforced.
            assert_eq!(e.dry_run.len(), 1);
            assert_eq!(e.dry_run[0].policy, "dry.rego");
            assert!(e.dry_run[0].result.as_ref().unwrap().is_block());
        }
        // Without a resource, dry-run policies are skipped, never enforced.
        let select = crate::PolicyInput::new(&sql_input("select", "SELECT 1")).unwrap();
        assert!(
            !set.evaluate_input(Stage::PreRequest, &select)
                .unwrap()
                .is_block()
        );
    }
}
