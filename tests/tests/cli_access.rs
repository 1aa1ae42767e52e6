//! `gate login` and `gate access` as people use them: the real `gate` binary against the
//! real `gate-control` (SQLite store), each person with their own config directory and
//! their own Gate token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gate_test_support::control::ControlPlane;
use serde_json::{Value, json};

/// An id no request has (a valid UUID v7).
const UNKNOWN_ID: &str = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";

struct Env {
    cp: ControlPlane,
    org: String,
    dir: tempfile::TempDir,
    gate: PathBuf,
    /// Requester (group engineering).
    alice: String,
    /// Approver (group dba).
    bob: String,
    /// An editor API key, which acts for people named with `--as`.
    editor_key: String,
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// A control plane with one org: alice (engineering), bob (dba, the approver group), the
/// resource `primary-db`, approval rules and an editor key.
async fn setup(name: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await.unwrap();
    let org = cp.create_org(name).await.unwrap();
    let alice = format!("tok-alice-{}", gate_test_support::random_hex());
    let bob = format!("tok-bob-{}", gate_test_support::random_hex());
    for (who, group, token) in [("alice", "engineering", &alice), ("bob", "dba", &bob)] {
        cp.ok(
            "POST",
            "/api/v1/identities",
            Some(&org),
            Some(json!({"name": who, "groups": [group], "token_sha256": sha256_hex(token)})),
        )
        .await
        .unwrap();
    }
    cp.ok(
        "PUT",
        "/api/v1/approval-rules",
        Some(&org),
        Some(json!({
            "default_approver_groups": ["dba"],
            "default_max_duration_s": 7200,
            "pending_ttl_s": 3600,
            "resources": {},
        })),
    )
    .await
    .unwrap();
    cp.ok(
        "POST",
        "/api/v1/resources",
        Some(&org),
        Some(json!({
            "name": "primary-db",
            "protocol": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "database": "appdb",
            "spec": {"require_access_grant": true},
        })),
    )
    .await
    .unwrap();
    let key = cp
        .ok(
            "POST",
            "/api/v1/api-keys",
            Some(&org),
            Some(json!({"name": "ci", "role": "editor"})),
        )
        .await
        .unwrap();
    let editor_key = key["secret"].as_str().expect("secret").to_string();
    let gate = tokio::task::spawn_blocking(|| gate_test_support::cargo_bin("gate"))
        .await
        .unwrap()
        .expect("gate binary");
    Env {
        cp,
        org,
        dir,
        gate,
        alice,
        bob,
        editor_key,
    }
}

impl Env {
    /// A person's config directory (not created: `gate login` creates it).
    fn home(&self, who: &str) -> PathBuf {
        self.dir.path().join(format!("{who}-config"))
    }

    /// `gate` with `who`'s config directory and none of the developer's settings.
    fn cmd(&self, who: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.gate);
        cmd.env("GATE_CONFIG_DIR", self.home(who))
            .env("NO_COLOR", "1")
            .env_remove("GATE_URL")
            .env_remove("GATE_TOKEN")
            .env_remove("GATE_ORG")
            .env_remove("GATE_CA_FILE")
            .env_remove("GATE_AS")
            .env_remove("GATE_RECORDINGS")
            .stdin(Stdio::null())
            .args(args);
        cmd
    }

    fn run(&self, who: &str, args: &[&str]) -> Run {
        Run::of(self.cmd(who, args).output().expect("gate runs"), args, self)
    }

    /// `gate login` for `who` with `token`.
    fn login(&self, who: &str, token: &str) -> Run {
        self.run(who, &["login", "--url", &self.cp.url(), "--token", token])
    }

    /// A request's JSON as `who` sees it.
    fn get(&self, who: &str, id: &str) -> Value {
        self.run(who, &["access", "get", id, "--output", "json"])
            .ok()
            .json()
    }

    /// Polls (as bob) until `n` requests wait for bob's decision; their JSON.
    fn wait_to_approve(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self
                .run(
                    "bob",
                    &["--output", "json", "access", "list", "--to-approve"],
                )
                .ok()
                .json();
            let list = list.as_array().expect("an array").clone();
            if list.len() >= n {
                return list;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no request to approve appeared: {list:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn secrets(&self) -> [&str; 3] {
        [&self.alice, &self.bob, &self.editor_key]
    }
}

/// One finished `gate` run.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output, args: &[&str], env: &Env) -> Run {
        let run = Run {
            what: format!("gate {}", args.join(" ")),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // No output ever shows a token.
        for secret in env.secrets() {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{} printed a token",
                run.what
            );
        }
        run
    }

    fn ok(self) -> Run {
        self.code(0)
    }

    #[track_caller]
    fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", self.what, self.stdout))
    }
}

/// Waits for a background `gate` (at most `limit`).
fn finish(mut child: Child, limit: Duration, env: &Env, what: &[&str]) -> Run {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gate {what:?} still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Run::of(child.wait_with_output().unwrap(), what, env)
}

fn spawn(env: &Env, who: &str, args: &[&str]) -> Child {
    env.cmd(who, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gate starts")
}

/// Starts a waiting `gate`, sends it SIGINT (Ctrl-C) once it says it is waiting, and
/// returns how it ended.
#[cfg(unix)]
fn interrupted(env: &Env, who: &str, args: &[&str]) -> Run {
    use std::io::{BufRead, BufReader, Read};
    let mut child = spawn(env, who, args);
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).unwrap();
        s
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut err = Vec::new();
    let start = Instant::now();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        err.extend_from_slice(line.as_bytes());
        if line.contains("waiting for an approver") {
            break;
        }
        assert!(
            n > 0 && start.elapsed() < Duration::from_secs(30),
            "gate {args:?} did not start waiting:\n{}",
            String::from_utf8_lossy(&err)
        );
    }
    // SAFETY: signals the child started above.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    stderr.read_to_end(&mut err).unwrap();
    let status = child.wait().unwrap();
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err,
    };
    Run::of(output, args, env)
}

/// Unix milliseconds as RFC 3339 UTC to the second (what the CLI prints).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_private_login_that_logout_removes() {
    let env = setup("cli-login").await;
    let url = env.cp.url();

    // Not logged in: exit 3, saying how to log in.
    let r = env.run("alice", &["access", "list"]).code(3);
    assert!(r.stderr.contains("not logged in"), "{}", r.stderr);
    assert!(r.stderr.contains("gate login"), "{}", r.stderr);
    env.run("alice", &["whoami"]).code(3);

    // A token the control plane does not know: exit 3 with its message; nothing stored.
    let r = env.login("alice", "tok-nobody-knows-this").code(3);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    assert!(r.stderr.contains("invalid or revoked key"), "{}", r.stderr);
    assert!(!env.home("alice").join("config.json").exists());

    // Alice's own token: who she is, stored privately.
    let r = env.login("alice", &env.alice).ok();
    assert!(r.stdout.contains("as alice"), "{}", r.stdout);
    assert!(r.stdout.contains("identity:alice"), "{}", r.stdout);
    assert!(r.stdout.contains("role identity"), "{}", r.stdout);
    assert!(r.stdout.contains(&env.org), "{}", r.stdout);
    let file = env.home("alice").join("config.json");
    #[cfg(unix)]
    {
        assert_eq!(
            format!("{:o}", mode(&env.home("alice"))),
            "700",
            "directory"
        );
        assert_eq!(format!("{:o}", mode(&file)), "600", "config file");
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["url"], url.as_str());
    assert_eq!(stored["token"], env.alice.as_str());

    // Later commands use the stored login.
    let who = env
        .run("alice", &["whoami", "--output", "json"])
        .ok()
        .json();
    assert_eq!(who["actor"], "identity:alice");
    assert_eq!(who["role"], "identity");
    assert_eq!(who["org_id"], env.org.as_str());
    let r = env.run("alice", &["whoami"]).ok();
    assert!(r.stdout.contains("alice"), "{}", r.stdout);

    // Flags and environment override the stored login (here: bob's token for one call).
    let who = env
        .run(
            "alice",
            &["whoami", "-o", "json", "--token", env.bob.as_str()],
        )
        .ok()
        .json();
    assert_eq!(who["actor"], "identity:bob");
    let out = env
        .cmd("nobody", &["--output", "json", "whoami"])
        .env("GATE_URL", &url)
        .env("GATE_TOKEN", &env.bob)
        .output()
        .unwrap();
    let r = Run::of(out, &["whoami (env)"], &env).ok();
    assert_eq!(r.json()["actor"], "identity:bob");
    // The stored token is never sent to another control plane.
    let r = env
        .run("alice", &["whoami", "--url", "http://127.0.0.1:1"])
        .code(3);
    assert!(r.stderr.contains("not logged in"), "{}", r.stderr);

    // The token can come from stdin instead of the command line.
    let mut child = env
        .cmd("bob", &["login", "--url", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", env.bob).unwrap();
    }
    let r = finish(child, Duration::from_secs(30), &env, &["login (stdin)"]).ok();
    assert!(r.stdout.contains("identity:bob"), "{}", r.stdout);

    // An existing config directory is used as it is (like $HOME: never chmod-ed); one
    // others may write to is refused, untouched.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let home = env.dir.path().join("home-like");
        std::fs::create_dir(&home).unwrap();
        set(&home, 0o755);
        let args = [
            "login",
            "--url",
            url.as_str(),
            "--token",
            env.alice.as_str(),
        ];
        let out = env
            .cmd("alice", &args)
            .env("GATE_CONFIG_DIR", &home)
            .output()
            .unwrap();
        Run::of(out, &["login (existing dir)"], &env).ok();
        assert_eq!(format!("{:o}", mode(&home)), "755");
        assert_eq!(format!("{:o}", mode(&home.join("config.json"))), "600");
        let shared = env.dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        set(&shared, 0o777);
        let out = env
            .cmd("alice", &args)
            .env("GATE_CONFIG_DIR", &shared)
            .output()
            .unwrap();
        let r = Run::of(out, &["login (shared dir)"], &env).code(1);
        assert!(r.stderr.contains("others may write"), "{}", r.stderr);
        assert_eq!(format!("{:o}", mode(&shared)), "777");
        assert!(!shared.join("config.json").exists());
    }

    // Logout removes the login; then nothing works until the next login.
    let r = env.run("alice", &["logout"]).ok();
    assert!(r.stdout.contains("Logged out"), "{}", r.stdout);
    assert!(!file.exists());
    env.run("alice", &["access", "list"]).code(3);
    env.run("alice", &["logout"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_approved_by_another_person_and_revoked() {
    let env = setup("cli-approve").await;
    env.login("alice", &env.alice).ok();
    env.login("bob", &env.bob).ok();

    // Alice asks and waits; stdout is not a terminal, so progress goes to stderr as lines.
    let args = [
        "access",
        "request",
        "--resource",
        "primary-db",
        "--duration",
        "1h",
        "--reason",
        "incident 42",
        "--scope",
        "operation=read",
        "--wait",
        "--timeout",
        "2m",
    ];
    let waiting = spawn(&env, "alice", &args);

    // Bob sees it among those he may decide; alice does not (it is her own).
    let list = env.wait_to_approve(1);
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["requester"], "alice");
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["requested_duration_s"], 3600);
    assert_eq!(list[0]["scopes"], json!({"operation": "read"}));
    assert_eq!(list[0]["reason"], "incident 42");
    let table = env.run("bob", &["access", "list", "--to-approve"]).ok();
    assert!(
        table.stdout.contains(&id)
            && table.stdout.contains("pending")
            && table.stdout.contains("alice"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.starts_with("ID "), "{}", table.stdout);
    let mine = env
        .run("alice", &["access", "list", "--to-approve", "-o", "json"])
        .ok()
        .json();
    assert_eq!(mine, json!([]), "alice may not decide her own request");
    let mine = env
        .run("alice", &["access", "list", "--mine", "-o", "json"])
        .ok()
        .json();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["id"], id.as_str());
    let pending = env
        .run(
            "bob",
            &["access", "list", "--status", "pending", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    let none = env
        .run(
            "bob",
            &["access", "list", "--resource", "other-db", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(none, json!([]));

    // Approving her own request: 403 with the server's message, exit 4.
    let r = env
        .run("alice", &["access", "approve", &id, "--reason", "me"])
        .code(4);
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(
        r.stderr.contains("self-approval is not allowed"),
        "{}",
        r.stderr
    );
    assert_eq!(env.get("alice", &id)["status"], "pending");

    // Bob approves; alice's wait ends with 0 and says until when.
    let r = env
        .run("bob", &["access", "approve", &id, "--reason", "go ahead"])
        .ok();
    assert!(
        r.stdout.contains(&format!(
            "Approved request {id}: alice may use primary-db until"
        )),
        "{}",
        r.stdout
    );
    let done = finish(waiting, Duration::from_secs(30), &env, &args).ok();
    let granted = env.get("alice", &id);
    assert_eq!(granted["status"], "approved");
    assert_eq!(granted["decided_by"], "bob");
    let expires_at = granted["expires_at"].as_i64().unwrap();
    let decided_at = granted["decided_at"].as_i64().unwrap();
    assert_eq!(expires_at - decided_at, 3_600_000);
    assert!(done.stdout.contains(&id), "{}", done.stdout);
    assert!(
        done.stdout.contains("Approved by bob: go ahead"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains(&format!(
            "Access to primary-db until {}",
            rfc3339(expires_at)
        )),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("(expires in 59m)"), "{}", done.stdout);
    assert!(
        done.stdout.contains("your grant lasts until"),
        "{}",
        done.stdout
    );
    assert!(
        done.stderr.contains("waiting for an approver"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stdout.contains('\r'),
        "no spinner when stdout is not a terminal"
    );

    // Human-readable details.
    let r = env.run("bob", &["access", "get", &id]).ok();
    for want in [
        "approved",
        "alice",
        "primary-db",
        "operation=read",
        "Expires",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }

    // Unknown and malformed ids.
    let r = env.run("alice", &["access", "get", UNKNOWN_ID]).code(5);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    env.run("bob", &["access", "approve", UNKNOWN_ID]).code(5);
    env.run("bob", &["access", "get", "not-an-id"]).code(2);

    // Bob revokes; waiting on it now ends at once with 7.
    let r = env
        .run(
            "bob",
            &["access", "revoke", &id, "--reason", "incident closed"],
        )
        .ok();
    assert!(
        r.stdout.contains("alice's access to primary-db has ended"),
        "{}",
        r.stdout
    );
    let revoked = env.get("alice", &id);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], "bob");
    assert_eq!(revoked["revoke_reason"], "incident closed");
    let r = env.run("alice", &["access", "wait", &id]).code(7);
    assert!(r.stdout.contains("Revoked by bob"), "{}", r.stdout);
    // A decided request cannot be approved again.
    env.run("bob", &["access", "approve", &id]).code(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_timeouts_cancellations_and_api_keys() {
    let env = setup("cli-deny").await;
    env.login("alice", &env.alice).ok();
    env.login("bob", &env.bob).ok();

    // Denied while waiting: exit 6, and with --output json the final object on stdout.
    let args = [
        "access",
        "request",
        "--resource",
        "primary-db",
        "--duration",
        "30m",
        "--reason",
        "curious",
        "--wait",
        "--timeout",
        "2m",
        "--output",
        "json",
    ];
    let waiting = spawn(&env, "alice", &args);
    let id = env.wait_to_approve(1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run("bob", &["access", "deny", &id, "--reason", "not now"])
        .ok();
    let done = finish(waiting, Duration::from_secs(30), &env, &args).code(6);
    let last = done.json();
    assert_eq!(last["id"], id.as_str());
    assert_eq!(last["status"], "denied");
    assert_eq!(last["decision_reason"], "not now");

    // Without --wait: the new request as JSON; waiting on it gives up after --timeout (8).
    let created = env
        .run(
            "alice",
            &[
                "--output",
                "json",
                "access",
                "request",
                "--resource",
                "primary-db",
                "--duration",
                "90s",
                "--reason",
                "deploy",
            ],
        )
        .ok()
        .json();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["requested_duration_s"], 90);
    assert_eq!(created["requester"], "alice");
    let id = created["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let r = env
        .run("alice", &["access", "wait", &id, "--timeout", "2s"])
        .code(8);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(r.stderr.contains("still pending"), "{}", r.stderr);
    // Ctrl-C stops waiting the same way: exit 130, the pending request on stdout.
    #[cfg(unix)]
    {
        let args = ["access", "wait", &id, "-o", "json"];
        let r = interrupted(&env, "alice", &args).code(130);
        assert_eq!(r.json()["status"], "pending");
        assert!(r.stderr.contains("stopped waiting"), "{}", r.stderr);
    }
    // Only the requester may cancel; then waiting ends with 7.
    let r = env.run("bob", &["access", "cancel", &id]).code(4);
    assert!(r.stderr.contains("only the requester"), "{}", r.stderr);
    env.run("alice", &["access", "cancel", &id, "--reason", "done"])
        .ok();
    env.run("alice", &["access", "wait", &id]).code(7);

    // Human-readable output of a request without --wait.
    let r = env
        .run(
            "alice",
            &[
                "access",
                "request",
                "--resource",
                "primary-db",
                "--duration",
                "1h",
                "--reason",
                "table view",
            ],
        )
        .ok();
    assert!(r.stdout.contains("is pending"), "{}", r.stdout);
    assert!(r.stdout.contains("gate access wait"), "{}", r.stdout);
    // Usage mistakes are caught before anything is sent.
    env.run(
        "alice",
        &[
            "access",
            "request",
            "--resource",
            "primary-db",
            "--duration",
            "soon",
            "--reason",
            "x",
        ],
    )
    .code(2);
    // An unknown resource is the server's 404.
    let r = env
        .run(
            "alice",
            &[
                "access",
                "request",
                "--resource",
                "no-such-db",
                "--duration",
                "1h",
                "--reason",
                "x",
            ],
        )
        .code(5);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);

    // An editor key acts for the person named with --as (no login: environment only).
    let url = env.cp.url();
    let key = |args: &[&str]| {
        let out = env
            .cmd("ci", args)
            .env("GATE_URL", &url)
            .env("GATE_TOKEN", &env.editor_key)
            .output()
            .unwrap();
        Run::of(out, args, &env)
    };
    let r = key(&[
        "access",
        "request",
        "--resource",
        "primary-db",
        "--duration",
        "1h",
        "--reason",
        "nobody",
    ])
    .code(2);
    assert!(r.stderr.contains("400"), "{}", r.stderr);
    let created = key(&[
        "access",
        "--as",
        "alice",
        "request",
        "--resource",
        "primary-db",
        "--duration",
        "1h",
        "--reason",
        "on behalf",
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(created["requester"], "alice");
    let id = created["id"].as_str().unwrap().to_string();
    let r = key(&["access", "list", "--mine"]).code(2);
    assert!(r.stderr.contains("--as"), "{}", r.stderr);
    let mine = key(&["access", "list", "--mine", "--as", "alice", "-o", "json"])
        .ok()
        .json();
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{mine}"
    );
    // The key may not make alice approve her own request, but may act for bob.
    key(&["access", "approve", &id, "--as", "alice"]).code(4);
    let approved = key(&["access", "approve", &id, "--as", "bob", "-o", "json"])
        .ok()
        .json();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "bob");
    // And alice, signed in as herself, may not act as bob.
    let r = env
        .run("alice", &["access", "revoke", &id, "--as", "bob"])
        .code(4);
    assert!(r.stderr.contains("may not act as"), "{}", r.stderr);
    // The grantee may end her own grant.
    env.run("alice", &["access", "revoke", &id]).ok();
    assert_eq!(env.get("alice", &id)["status"], "revoked");
}
