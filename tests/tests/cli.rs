//! The command-line tools as an operator uses them: `gate-connector check` / `hash-token`
//! and `gate-policy check` / `eval`.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin(name: &str) -> std::path::PathBuf {
    gate_test_support::cargo_bin(name).expect("binary built")
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hash_token_prints_the_sha256_of_stdin() {
    let mut child = Command::new(bin("gate-connector"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // SHA-256("abc"): the trailing newline of `echo` is not part of the token.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn check_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        r#"
listen_addr: "127.0.0.1:6432"
auth:
  tokens:
    - {name: alice, token_sha256: "nothex"}
resources:
  - {name: db, protocol: postgres, host: h, port: 0, database: d, credentials: {username: u, password: "${GATE_TEST_SURELY_UNSET:-x}"}, listen_port: 6432}
policies:
  - {path: /nonexistent.rego, stage: pre_request}
"#,
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(bin("gate-connector"))
        .args(["check", "--config"])
        .arg(&cfg));
    assert!(!ok);
    for path in [
        "auth.tokens[0].token_sha256",
        "resources[0].port",
        "resources[0].listen_port",
        "policies[0].path",
    ] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }

    let unset = dir.path().join("unset.yaml");
    std::fs::write(&unset, "listen_addr: \"${GATE_TEST_SURELY_UNSET}\"\n").unwrap();
    let (ok, _, err) = run(Command::new(bin("gate-connector"))
        .args(["check", "--config"])
        .arg(&unset));
    assert!(!ok);
    assert!(
        err.contains("GATE_TEST_SURELY_UNSET") && err.contains("listen_addr"),
        "{err}"
    );

    let repo = gate_test_support::workspace_root();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "listen_addr: \"127.0.0.1:6432\"\npolicies:\n  - {{path: \"{}\", stage: pre_request}}\n",
            repo.join("policies/example.rego").display()
        ),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(bin("gate-connector"))
        .args(["check", "--config"])
        .arg(&good));
    assert!(ok, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn gate_policy_checks_and_evaluates() {
    let repo = gate_test_support::workspace_root();
    let example = repo.join("policies/example.rego");
    let (ok, out, err) = run(Command::new(bin("gate-policy")).arg("check").arg(&example));
    assert!(ok, "{err}");
    assert!(out.contains("formal.v2"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"user":{"sub":"alice","name":"alice","groups":[]},"query":{"type":"drop","statement":"DROP TABLE users","tables":["users"]}}"#,
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(bin("gate-policy"))
        .args(["eval", "--stage", "pre_request", "--policy"])
        .arg(&example)
        .arg("--input")
        .arg(&input));
    assert!(ok, "{err}");
    let decision: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decision["action"], "block");

    let broken = dir.path().join("broken.rego");
    std::fs::write(&broken, "package x\npre_request := {\n").unwrap();
    let (ok, out, err) = run(Command::new(bin("gate-policy")).arg("check").arg(&broken));
    assert!(!ok);
    assert!(format!("{out}{err}").contains("broken.rego"), "{out}{err}");
}
