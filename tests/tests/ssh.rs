//! SSH through the gateway, end to end: a real OpenSSH `sshd` upstream (started by the
//! tests on a free port with its own config and keys), the real `gate-connector`, and the
//! real `ssh`/`scp`/`sftp` clients (plus russh as a programmatic client for PTY control).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use gate_test_support::gateway::Gateway;
use gate_test_support::sshd::{self, ClientKey, ScpMode, SshServer};
use gate_test_support::{DEFAULT_TIMEOUT, free_port, wait_until};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const ALICE_TOKEN: &str = "tok-alice-ssh-5d1c0e7a9b3f42d8a6c1e0f9b8a7d6c5";
const BOB_TOKEN: &str = "tok-bob-ssh-0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// Blocks destructive commands and port forwarding (unless the user is `carol`), and
/// refuses SSH sessions to `bob`.
const POLICY: &str = r#"
package formal.v2

import rego.v1

default session := {"action": "allow"}

session := {"action": "block", "reason": "bob may not log in to servers"} if {
	input.ssh.user != ""
	input.user.name == "bob"
}

default pre_request := {"action": "allow"}

pre_request := {"action": "block", "reason": "destructive commands are not allowed"} if {
	input.ssh.channel == "exec"
	contains(input.ssh.command, "rm -rf")
}

pre_request := {"action": "block", "reason": "port forwarding is not allowed"} if {
	input.ssh.channel in {"direct-tcpip", "tcpip-forward"}
	input.user.name != "carol"
}
"#;

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A gateway in front of one sshd, with alice (key + token), bob (key, refused by policy)
/// and carol (key, may forward ports).
struct Env {
    gw: Gateway,
    dir: TempDir,
    /// The gateway's shared listener port.
    port: u16,
    /// `prod-web`'s own listener.
    web_port: u16,
    alice: ClientKey,
    bob: ClientKey,
    carol: ClientKey,
    /// known_hosts with the gateway's host key for both ports.
    known_hosts: PathBuf,
}

struct EnvOpts<'a> {
    server: &'a SshServer,
    /// Extra lines for the prod-web resource (indented by 4 spaces).
    resource_extra: &'a str,
    /// Extra resources (YAML list items, indented by 2 spaces).
    extra_resources: String,
    /// Extra top-level YAML.
    extra: &'a str,
}

async fn start_env(opts: EnvOpts<'_>) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let alice = ClientKey::generate(&keys).expect("alice key");
    let bob = ClientKey::generate(&keys).expect("bob key");
    let carol = ClientKey::generate(&keys).expect("carol key");
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    let port = free_port();
    let web_port = free_port();
    let health = free_port();
    let s = opts.server;
    let yaml = format!(
        r#"listen_addr: "127.0.0.1:{port}"
health_addr: "127.0.0.1:{health}"
data_dir: gate-data
auth:
  tokens:
    - {{name: alice, email: alice@example.com, groups: [engineering], token_sha256: "{alice_tok}", ssh_public_keys: ["{alice_pub}"]}}
    - {{name: bob, token_sha256: "{bob_tok}", ssh_public_keys: ["{bob_pub}"]}}
    - {{name: carol, token_sha256: "{bob_tok2}", ssh_public_keys: ["{carol_pub}"]}}
resources:
  - name: prod-web
    protocol: ssh
    host: 127.0.0.1
    port: {sshd_port}
    credentials: {{username: {user}, private_key_file: "{key}"}}
    host_key_fingerprint: "{fp}"
    listen_port: {web_port}
{extra}
{extra_resources}
policies:
  - {{path: policy.rego, stage: session}}
  - {{path: policy.rego, stage: pre_request}}
recording: {{dir: recordings}}
audit: {{file: audit.jsonl}}
logging: {{level: "info,gate_ssh=debug", format: text}}
{extra_top}
"#,
        alice_tok = sha256_hex(ALICE_TOKEN),
        bob_tok = sha256_hex(BOB_TOKEN),
        bob_tok2 = sha256_hex("tok-carol-ssh-unused-0000000000000000"),
        alice_pub = alice.public_line,
        bob_pub = bob.public_line,
        carol_pub = carol.public_line,
        sshd_port = s.port(),
        user = s.user(),
        key = s.upstream_key().display(),
        fp = s.host_key_fingerprint(),
        extra = opts.resource_extra,
        extra_resources = opts.extra_resources,
        extra_top = opts.extra,
    );
    let gw = Gateway::start(&yaml, dir.path())
        .await
        .expect("gateway starts");
    let host_pub = std::fs::read_to_string(dir.path().join("gate-data/ssh_host_ed25519_key.pub"))
        .expect("the gateway wrote its host key on first start");
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "{}\n{}\n",
            sshd::known_hosts_line(port, &host_pub),
            sshd::known_hosts_line(web_port, &host_pub)
        ),
    )
    .unwrap();
    Env {
        gw,
        dir,
        port,
        web_port,
        alice,
        bob,
        carol,
        known_hosts,
    }
}

impl Env {
    /// `ssh` through the shared listener as `user%prod-web` with `key`.
    fn ssh(&self, user: &str, key: &ClientKey) -> Command {
        sshd::ssh_command(
            self.port,
            &format!("{user}%prod-web"),
            &key.private,
            &self.known_hosts,
        )
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn audit_until(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(what, DEFAULT_TIMEOUT, || {
            let found = self.audit().into_iter().find(&pred);
            async move { found }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- gateway log ---\n{}", self.gw.log()))
    }

    fn recordings_dir(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }
}

/// Runs a client command off the async runtime, with a generous timeout.
async fn run(cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        sshd::run_client_with_timeout(cmd, None, Duration::from_secs(120)).expect("client ran")
    })
    .await
    .expect("join")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shared_server() -> &'static SshServer {
    SshServer::shared()
}

async fn env_default() -> Env {
    let server = tokio::task::spawn_blocking(shared_server).await.unwrap();
    start_env(EnvOpts {
        server,
        resource_extra: "",
        extra_resources: String::new(),
        extra: "",
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_upstream_as_the_injected_user_and_keeps_the_exit_status() {
    let env = env_default().await;
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.arg("echo hello from $(whoami); exit 7");
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.gw.log()
    );
    assert_eq!(
        text(&out.stdout).trim(),
        format!("hello from {}", shared_server().user())
    );

    // The same through prod-web's own listener, where the user name is just the identity.
    let mut cmd = sshd::ssh_command(env.web_port, "alice", &env.alice.private, &env.known_hosts);
    cmd.arg("echo dedicated");
    let out = run(cmd).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "dedicated");

    // The exec is audited with its command line and recorded with its exit status.
    let ev = env
        .audit_until("the exec decision in the audit log", |e| {
            e["statement"].as_str() == Some("echo hello from $(whoami); exit 7")
        })
        .await;
    assert_eq!(ev["action"], "allow");
    assert_eq!(ev["identity"]["name"], "alice");
    assert_eq!(ev["resource"], "prod-web");

    // The session recording holds the command line, its exit status and byte counts.
    let rec_dir = env.recordings_dir();
    let line = wait_until("the exec in the session recording", DEFAULT_TIMEOUT, || {
        let found = find_files(&rec_dir, ".jsonl")
            .into_iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .find(|l| l["statement"] == "echo hello from $(whoami); exit 7");
        async move { found }
    })
    .await
    .unwrap();
    assert_eq!(line["query_type"], "exec");
    assert_eq!(line["exit_status"], 7, "{line}");
    assert_eq!(
        line["bytes_out"].as_u64(),
        Some(format!("hello from {}\n", shared_server().user()).len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_exit_signals_pass_through() {
    let env = env_default().await;
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.args([
        "-o",
        "SetEnv=GATE_TEST_GREETING=hi-there",
        "echo $GATE_TEST_GREETING",
    ]);
    let out = run(cmd).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hi-there");

    let mut client = russh_client::connect(env.port, "alice%prod-web", &env.alice.private)
        .await
        .expect("russh connect");
    let (status, signal) = client.exec("kill -KILL $$").await;
    assert_eq!((status, signal.as_deref()), (None, Some("KILL")));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_command_gets_a_message_on_stderr_and_exit_status_1() {
    let env = env_default().await;
    let marker = env.dir.path().join("must-survive");
    std::fs::write(&marker, "x").unwrap();
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.arg(format!("rm -rf {}", marker.display()));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("blocked by policy: destructive commands are not allowed"),
        "stderr: {stderr}"
    );
    assert!(marker.exists(), "the blocked command must not run upstream");
    let ev = env
        .audit_until("the block in the audit log", |e| {
            e["action"] == "block"
                && e["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("rm -rf"))
        })
        .await;
    assert_eq!(ev["reason"], "destructive commands are not allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_policy_refusal_is_explained_to_the_user() {
    let env = env_default().await;
    let mut cmd = env.ssh("bob", &env.bob);
    cmd.arg("echo should-not-run");
    let out = run(cmd).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("should-not-run"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("access denied: bob may not log in to servers"),
        "stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_and_wrong_resource_are_refused() {
    let env = env_default().await;
    let stranger = ClientKey::generate(env.dir.path()).unwrap();
    let mut cmd = env.ssh("alice", &stranger);
    cmd.arg("true");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "stderr: {}",
        text(&out.stderr)
    );
    // alice's key does not log in as bob.
    let mut cmd = env.ssh("bob", &env.alice);
    cmd.arg("true");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(255));
    // A resource that does not exist: told so once authenticated.
    let mut cmd = sshd::ssh_command(
        env.port,
        "alice%no-such-host",
        &env.alice.private,
        &env.known_hosts,
    );
    cmd.arg("true");
    let out = run(cmd).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("unknown SSH resource"),
        "stderr: {}",
        text(&out.stderr)
    );
    env.audit_until("the failed key login in the audit log", |e| {
        e["kind"] == "auth_failure" && e["presented_user"] == "alice%prod-web"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_at_a_keyboard_interactive_prompt_logs_in() {
    let env = env_default().await;
    let askpass_dir = env.dir.path().join("askpass");
    std::fs::create_dir_all(&askpass_dir).unwrap();
    let mut cmd = sshd::ssh_password_command(
        env.port,
        "alice%prod-web",
        ALICE_TOKEN,
        &env.known_hosts,
        &askpass_dir,
    )
    .unwrap();
    cmd.args(["-o", "PreferredAuthentications=keyboard-interactive"]);
    cmd.arg("echo token-ok");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.gw.log()
    );
    assert_eq!(text(&out.stdout).trim(), "token-ok");

    let mut cmd = sshd::ssh_password_command(
        env.port,
        "alice%prod-web",
        "not-the-token",
        &env.known_hosts,
        &askpass_dir,
    )
    .unwrap();
    cmd.args(["-o", "PreferredAuthentications=keyboard-interactive"]);
    cmd.arg("echo nope");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("nope"));
}

fn write_random_file(path: &Path, size: usize) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n;
    }
    f.flush().unwrap();
    hex::encode(h.finalize())
}

fn file_sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_50_mb_both_ways_in_both_protocols() {
    let env = env_default().await;
    let server = shared_server();
    let local = env.dir.path().join("up.bin");
    let sum = write_random_file(&local, 50 * 1024 * 1024);
    for mode in [ScpMode::Sftp, ScpMode::Legacy] {
        let remote_name = format!("gate-scp-{}-{:?}.bin", std::process::id(), mode);
        let mut up = sshd::scp_command(
            env.port,
            "alice%prod-web",
            &env.alice.private,
            &env.known_hosts,
            mode,
        );
        up.arg(&local).arg(sshd::scp_remote(&remote_name));
        let out = run(up).await;
        assert!(
            out.status.success(),
            "{mode:?} upload: {}\n{}",
            text(&out.stderr),
            env.gw.log()
        );
        assert_eq!(
            file_sha256(&server.home().join(&remote_name)),
            sum,
            "{mode:?} upload"
        );

        let back = env.dir.path().join(format!("down-{mode:?}.bin"));
        let mut down = sshd::scp_command(
            env.port,
            "alice%prod-web",
            &env.alice.private,
            &env.known_hosts,
            mode,
        );
        down.arg(sshd::scp_remote(&remote_name)).arg(&back);
        let out = run(down).await;
        assert!(
            out.status.success(),
            "{mode:?} download: {}",
            text(&out.stderr)
        );
        assert_eq!(file_sha256(&back), sum, "{mode:?} download");
        let _ = std::fs::remove_file(server.home().join(&remote_name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_ls_put_get() {
    let env = env_default().await;
    let name = format!("gate-sftp-{}.txt", std::process::id());
    let local = env.dir.path().join("sftp-up.txt");
    std::fs::write(&local, "through the gateway\n").unwrap();
    let back = env.dir.path().join("sftp-down.txt");
    let batch = env.dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {name}\nls -1\nget {name} {}\nrm {name}\n",
            local.display(),
            back.display()
        ),
    )
    .unwrap();
    let cmd = sshd::sftp_command(
        env.port,
        "alice%prod-web",
        &env.alice.private,
        &env.known_hosts,
        &batch,
    );
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "sftp: {}\n{}",
        text(&out.stderr),
        env.gw.log()
    );
    assert!(
        text(&out.stdout).contains(&name),
        "ls output: {}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "through the gateway\n"
    );
    env.audit_until("the sftp subsystem decision", |e| {
        e["statement"] == "sftp" && e["query_type"] == "subsystem"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forwarding_is_denied_unless_policy_allows_it_and_audited_when_allowed() {
    let env = env_default().await;
    let target = format!("127.0.0.1:{}", shared_server().port());
    // `ssh -W` asks for a direct-tcpip channel to the target.
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.args(["-W", &target]);
    let out = run(cmd).await;
    assert_ne!(out.status.code(), Some(0));
    // With LogLevel=ERROR ssh says only this; the reason is in the audit log.
    assert!(
        text(&out.stderr).contains("stdio forwarding failed")
            || text(&out.stderr).contains("administratively prohibited"),
        "stderr: {}",
        text(&out.stderr)
    );
    env.audit_until("the denied forward", |e| {
        e["action"] == "block"
            && e["query_type"] == "direct-tcpip"
            && e["reason"] == "port forwarding is not allowed"
    })
    .await;

    // carol may: the forwarded stream reaches sshd, whose banner comes back.
    let mut cmd = env.ssh("carol", &env.carol);
    cmd.args(["-W", &target]);
    let out = tokio::task::spawn_blocking(move || {
        sshd::run_client_with_timeout(cmd, Some("SSH-2.0-gate-test\r\n"), Duration::from_secs(60))
            .expect("ssh -W ran")
    })
    .await
    .unwrap();
    assert!(
        text(&out.stdout).starts_with("SSH-2.0-OpenSSH"),
        "stdout: {} stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    env.audit_until("the allowed forward", |e| {
        e["action"] == "allow" && e["query_type"] == "direct-tcpip" && e["statement"] == target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_upstream_host_key_and_upstream_down_are_refused_clearly() {
    // Its own sshd: the host key rotates.
    let server = tokio::task::spawn_blocking(|| SshServer::start().expect("sshd"))
        .await
        .unwrap();
    let dead_port = free_port();
    let env = start_env(EnvOpts {
        server: &server,
        resource_extra: "",
        extra_resources: format!(
            "  - name: down-web\n    protocol: ssh\n    host: 127.0.0.1\n    port: {dead_port}\n    credentials: {{username: x, password: y}}\n    host_key_fingerprint: \"{}\"\n",
            server.host_key_fingerprint()
        ),
        extra: "",
    })
    .await;
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.arg("echo before");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "before rotation: {}",
        text(&out.stderr)
    );

    tokio::task::block_in_place(|| server.rotate_host_key().expect("rotate"));
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.arg("echo after");
    let out = run(cmd).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("after"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("does not match the pinned"),
        "stderr: {stderr}"
    );

    let mut cmd = sshd::ssh_command(
        env.port,
        "alice%down-web",
        &env.alice.private,
        &env.known_hosts,
    );
    cmd.arg("true");
    let out = run(cmd).await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("upstream down-web unavailable") && stderr.contains("cannot reach"),
        "stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_follows_window_changes_and_replays_with_asciinema() {
    let env = env_default().await;
    let mut client = russh_client::connect(env.port, "alice%prod-web", &env.alice.private)
        .await
        .unwrap_or_else(|e| panic!("russh connect: {e}\n{}", env.gw.log()));
    let mut shell = client.shell(80, 24).await.expect("shell");
    shell.send("stty size; echo MARK-ONE\n").await;
    let seen = shell.read_until("MARK-ONE\r\n").await;
    assert!(seen.contains("24 80"), "first stty size: {seen:?}");
    shell.resize(100, 40).await;
    shell.send("stty size; echo MARK-TWO\n").await;
    let seen = shell.read_until("MARK-TWO\r\n").await;
    assert!(seen.contains("40 100"), "after window change: {seen:?}");
    shell.send("exit 3\n").await;
    let status = shell.exit_status().await;
    assert_eq!(status, Some(3));
    drop(shell);
    client.close().await;

    // The .cast: written when the channel closes; replays with the stock asciinema player.
    let rec_dir = env.recordings_dir();
    let cast = wait_until("the .cast recording", DEFAULT_TIMEOUT, || {
        let found = find_files(&rec_dir, ".cast").into_iter().next();
        async move { found }
    })
    .await
    .unwrap();
    let content = std::fs::read_to_string(&cast).unwrap();
    let header: serde_json::Value = serde_json::from_str(content.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 80);
    assert_eq!(header["height"], 24);
    assert_eq!(header["title"], "alice@prod-web");
    assert!(
        content.contains(r#""r","100x40""#),
        "resize event: {content}"
    );
    let Some(asciinema) = sshd::asciinema_binary() else {
        panic!("asciinema is not installed: run scripts/test-setup.sh");
    };
    let out = Command::new(asciinema)
        .arg("cat")
        .arg(&cast)
        .output()
        .unwrap();
    assert!(out.status.success(), "asciinema cat: {}", text(&out.stderr));
    let played = text(&out.stdout);
    assert!(
        played.contains("MARK-ONE") && played.contains("40 100"),
        "played: {played}"
    );

    // `gate recordings` finds it by id, checks its SHA-256 and replays it.
    let gate = tokio::task::spawn_blocking(|| gate_test_support::cargo_bin("gate"))
        .await
        .unwrap()
        .expect("gate binary");
    let list = Command::new(&gate)
        .args(["recordings", "list", "--output", "json", "--store"])
        .arg(&rec_dir)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "gate recordings list: {}",
        text(&list.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let terminal = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "terminal")
        .expect("the terminal recording is listed");
    assert_eq!(terminal["title"], "alice@prod-web");
    assert_eq!(terminal["protocol"], "ssh");
    let id = terminal["recording_id"].as_str().unwrap();
    let play = Command::new(&gate)
        .args(["recordings", "play", id, "--speed", "1000", "--store"])
        .arg(&rec_dir)
        .output()
        .unwrap();
    assert!(
        play.status.success(),
        "gate recordings play: {}",
        text(&play.stderr)
    );
    assert!(
        text(&play.stdout).contains("MARK-TWO"),
        "{}",
        text(&play.stdout)
    );
}

fn find_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find_files(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_ended_with_a_message() {
    let server = tokio::task::spawn_blocking(shared_server).await.unwrap();
    let env = start_env(EnvOpts {
        server,
        resource_extra: "    idle_timeout: 2s",
        extra_resources: String::new(),
        extra: "",
    })
    .await;
    let mut cmd = env.ssh("alice", &env.alice);
    cmd.args(["-o", "LogLevel=INFO", "sleep 30"]);
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "not ended by the idle timeout"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("idle for 2s"),
        "stderr: {}",
        text(&out.stderr)
    );
}

/// A small russh client for PTY control the `ssh` binary does not offer programmatically.
mod russh_client {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use russh::client;
    use russh::keys::PrivateKeyWithHashAlg;
    use russh::{ChannelMsg, Disconnect};

    struct AcceptAny;

    impl client::Handler for AcceptAny {
        type Error = russh::Error;
        // The gateway's key is pinned by the `ssh` tests; this client checks behaviour.
        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    pub struct Client(client::Handle<AcceptAny>);

    pub async fn connect(port: u16, user: &str, key: &Path) -> anyhow::Result<Client> {
        let key = russh::keys::load_secret_key(key, None)?;
        let mut handle = client::connect(
            Arc::new(client::Config::default()),
            ("127.0.0.1", port),
            AcceptAny,
        )
        .await?;
        let ok = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await?;
        anyhow::ensure!(ok.success(), "public key refused");
        Ok(Client(handle))
    }

    impl Client {
        pub async fn shell(&mut self, cols: u32, rows: u32) -> anyhow::Result<Shell> {
            let ch = self.0.channel_open_session().await?;
            ch.request_pty(true, "xterm", cols, rows, 0, 0, &[]).await?;
            ch.request_shell(true).await?;
            Ok(Shell {
                ch,
                seen: String::new(),
                exit: None,
            })
        }

        /// Runs `command` without a PTY; its exit status and exit signal.
        pub async fn exec(&mut self, command: &str) -> (Option<u32>, Option<String>) {
            let mut ch = self.0.channel_open_session().await.expect("channel");
            ch.exec(true, command).await.expect("exec");
            let (mut status, mut signal) = (None, None);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline, ch.wait()).await {
                    Ok(Some(ChannelMsg::ExitStatus { exit_status })) => status = Some(exit_status),
                    Ok(Some(ChannelMsg::ExitSignal { signal_name, .. })) => {
                        signal = Some(format!("{signal_name:?}"))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            (status, signal)
        }

        pub async fn close(self) {
            let _ = self.0.disconnect(Disconnect::ByApplication, "", "").await;
        }
    }

    pub struct Shell {
        ch: russh::Channel<client::Msg>,
        seen: String,
        exit: Option<u32>,
    }

    impl Shell {
        pub async fn send(&mut self, s: &str) {
            self.ch.data(s.as_bytes()).await.expect("send");
        }

        pub async fn resize(&mut self, cols: u32, rows: u32) {
            self.ch
                .window_change(cols, rows, 0, 0)
                .await
                .expect("resize");
        }

        /// Output up to and including `needle` (as printed, not as echoed: the echo of the
        /// command line has `echo ` before it, so callers pick needles the echo lacks).
        pub async fn read_until(&mut self, needle: &str) -> String {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(i) = find_output(&self.seen, needle) {
                    let end = i + needle.len();
                    let out = self.seen[..end].to_string();
                    self.seen.drain(..end);
                    return out;
                }
                match tokio::time::timeout_at(deadline, self.ch.wait()).await {
                    Ok(Some(ChannelMsg::Data { data })) => {
                        self.seen.push_str(&String::from_utf8_lossy(&data))
                    }
                    Ok(Some(ChannelMsg::ExitStatus { exit_status })) => {
                        self.exit = Some(exit_status)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("channel closed before {needle:?}; seen {:?}", self.seen),
                    Err(_) => panic!("timed out waiting for {needle:?}; seen {:?}", self.seen),
                }
            }
        }

        pub async fn exit_status(&mut self) -> Option<u32> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while self.exit.is_none() {
                match tokio::time::timeout_at(deadline, self.ch.wait()).await {
                    Ok(Some(ChannelMsg::ExitStatus { exit_status })) => {
                        self.exit = Some(exit_status)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            self.exit
        }
    }

    /// Where `needle` appears NOT preceded by `echo ` (the typed command's echo).
    fn find_output(hay: &str, needle: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = hay[from..].find(needle) {
            let at = from + i;
            if !hay[..at].ends_with("echo ") {
                return Some(at);
            }
            from = at + needle.len();
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ends_a_live_session_by_id() {
    const ADMIN_TOKEN: &str = "tok-admin-ssh-1f2e3d4c5b6a79881726354433221100";
    let server = tokio::task::spawn_blocking(shared_server).await.unwrap();
    let extra = format!("admin: {{token_sha256: \"{}\"}}", sha256_hex(ADMIN_TOKEN));
    let env = start_env(EnvOpts {
        server,
        resource_extra: "",
        extra_resources: String::new(),
        extra: &extra,
    })
    .await;
    let health = env.gw.health_addr().expect("health addr").to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");

    let mut cmd = env.ssh("alice", &env.alice);
    cmd.args(["-o", "LogLevel=INFO", "sleep 60"]);
    let started = std::time::Instant::now();
    let ssh = tokio::spawn(run(cmd));

    let id = wait_until(
        "alice's session in /admin/sessions",
        DEFAULT_TIMEOUT,
        || {
            let (health, auth) = (health.clone(), auth.clone());
            async move {
                let r = gate_test_support::http_request(
                    &health,
                    "GET",
                    "/admin/sessions",
                    &[("authorization", &auth)],
                    &[],
                )
                .await
                .ok()?;
                let list: serde_json::Value = serde_json::from_str(&r.body).ok()?;
                list.as_array()?
                    .iter()
                    .find(|s| s["user"] == "alice" && s["protocol"] == "ssh")
                    .and_then(|s| s["id"].as_str().map(str::to_string))
            }
        },
    )
    .await
    .unwrap();

    // The wrong token changes nothing.
    let r = gate_test_support::http_request(
        &health,
        "POST",
        &format!("/admin/sessions/{id}/terminate"),
        &[("authorization", "Bearer not-the-token")],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    let r = gate_test_support::http_request(
        &health,
        "POST",
        &format!("/admin/sessions/{id}/terminate"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"reason": "maintenance window"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let out = ssh.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the session was not ended promptly"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("maintenance window"),
        "stderr: {}",
        text(&out.stderr)
    );
    let ev = env
        .audit_until("the termination in the audit log", |e| {
            e["kind"] == "session_terminated"
        })
        .await;
    assert_eq!(ev["session_id"], id.as_str());
}
