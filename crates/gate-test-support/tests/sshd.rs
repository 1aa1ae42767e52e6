//! The throwaway OpenSSH server, driven directly with the real clients: commands and a pty
//! over ssh, scp both ways (SFTP and legacy protocol), sftp, password login, refused keys,
//! stop/start again, and a rotated host key refused by the old known_hosts.

use gate_test_support::sshd::{self, ClientKey, ScpMode, SshServer};
use std::path::Path;
use std::process::Output;

/// The server needs root (sshd switches to the test user); the tests run as root in CI.
fn skip() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: SshServer needs root");
        return true;
    }
    false
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha256sum(path: &Path) -> String {
    let mut cmd = std::process::Command::new("sha256sum");
    cmd.arg(path);
    let out = sshd::run_ok(cmd).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn runs_commands_as_the_test_user() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let mut cmd = server.ssh_command();
    cmd.arg("echo hello; whoami; pwd");
    let out = sshd::run_ok(cmd).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hello", sshd::USER, &server.home().display().to_string()]
    );
    // Same instance every time, and the accessors agree with each other.
    assert_eq!(SshServer::shared().port(), server.port());
    assert_eq!(server.addr().port(), server.port());
    assert_eq!(server.user(), sshd::USER);
    assert!(
        server
            .log()
            .contains("Accepted publickey for gate-ssh-test"),
        "{}",
        server.log()
    );
    assert!(server.host_key_fingerprint().starts_with("SHA256:"));
    assert!(
        server
            .host_public_key_line()
            .starts_with("ssh-ed25519 AAAA")
    );
    assert!(
        server
            .known_hosts_line()
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", server.port())),
        "{}",
        server.known_hosts_line()
    );
    let kh = std::fs::read_to_string(server.known_hosts_file()).unwrap();
    assert_eq!(kh.trim(), server.known_hosts_line());
    // What a client learns on the wire is the same key.
    let scanned = sshd::ssh_keyscan(server.port()).unwrap();
    assert_eq!(scanned, server.known_hosts_line());
    // The upstream key is root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.upstream_key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    assert!(server.work_dir().starts_with(server.home()));
}

#[test]
fn allocates_a_pty_with_tt() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let mut cmd = server.ssh_command();
    cmd.args(["-tt", "stty size; tty"]);
    let out = sshd::run_ok(cmd).unwrap();
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let size: Vec<&str> = lines[0].split(' ').collect();
    assert!(
        size.len() == 2 && size.iter().all(|n| n.parse::<u32>().is_ok()),
        "stty size printed {:?}",
        lines[0]
    );
    assert!(lines[1].starts_with("/dev/pts/"), "{out:?}");
}

#[test]
fn accepts_gate_test_environment_variables() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let mut cmd = server.ssh_command();
    cmd.args(["-o", "SendEnv=GATE_TEST_HELLO", "echo \"$GATE_TEST_HELLO\""])
        .env("GATE_TEST_HELLO", "from-the-client");
    assert_eq!(sshd::run_ok(cmd).unwrap(), "from-the-client\n");
}

fn scp_both_ways(mode: ScpMode) {
    let server = SshServer::shared();
    let local = tempfile::tempdir().unwrap();
    let upload = local.path().join("upload.bin");
    let mut data = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .unwrap();
    std::fs::write(&upload, &data).unwrap();
    let remote = server.work_dir().join(format!("scp-{mode:?}.bin"));

    let mut cmd = server.scp_command(mode);
    // -v: scp says how it reaches the other side.
    cmd.arg("-v").arg(&upload).arg(sshd::scp_remote(&remote));
    let out = sshd::run_client(cmd, None).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let how = stderr(&out)
        .lines()
        .find(|l| l.starts_with("Executing: program"))
        .unwrap_or_default()
        .to_string();
    match mode {
        // The legacy protocol runs `scp -t <path>` as a remote command…
        ScpMode::Legacy => assert!(how.contains("command scp -v -t"), "{}", stderr(&out)),
        // … the SFTP one asks for the sftp subsystem.
        ScpMode::Sftp => assert!(how.ends_with("command sftp"), "{}", stderr(&out)),
    }
    // The file landed in the user's home, owned by the user, with the same contents.
    let mut cmd = server.ssh_command();
    cmd.arg(format!(
        "stat -c '%U %s' {r} && sha256sum {r}",
        r = remote.display()
    ));
    let out = sshd::run_ok(cmd).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("gate-ssh-test 1048576"), "{out}");
    let remote_sum = lines.next().unwrap().split_whitespace().next().unwrap();
    assert_eq!(remote_sum, sha256sum(&upload));

    let download = local.path().join("download.bin");
    let mut cmd = server.scp_command(mode);
    cmd.arg(sshd::scp_remote(&remote)).arg(&download);
    sshd::run_ok(cmd).unwrap();
    assert_eq!(sha256sum(&download), sha256sum(&upload));
    assert!(std::fs::read(&download).unwrap() == data);
}

#[test]
fn scp_copies_a_megabyte_both_ways_over_sftp() {
    if skip() {
        return;
    }
    scp_both_ways(ScpMode::Sftp);
}

#[test]
fn scp_copies_a_megabyte_both_ways_with_the_legacy_protocol() {
    if skip() {
        return;
    }
    scp_both_ways(ScpMode::Legacy);
}

#[test]
fn sftp_lists_a_directory() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let dir = server.work_dir().join("sftp-ls");
    let mut cmd = server.ssh_command();
    cmd.arg(format!(
        "mkdir -p {d} && echo hi > {d}/listed.txt",
        d = dir.display()
    ));
    sshd::run_ok(cmd).unwrap();
    let local = tempfile::tempdir().unwrap();
    let batch = local.path().join("batch");
    std::fs::write(&batch, format!("cd {}\nls -1\npwd\n", dir.display())).unwrap();
    let out = sshd::run_ok(server.sftp_command(&batch)).unwrap();
    assert!(out.lines().any(|l| l.trim() == "listed.txt"), "{out}");
    assert!(out.contains(&dir.display().to_string()), "{out}");
    assert!(
        server.log().contains("subsystem 'sftp'"),
        "{}",
        server.log()
    );
}

#[test]
fn refuses_a_key_it_does_not_know_and_accepts_one_authorized_later() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let local = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(local.path()).unwrap();
    assert!(key.public_line.starts_with("ssh-ed25519 AAAA"));
    assert!(key.fingerprint().unwrap().starts_with("SHA256:"));
    let command = |key: &Path| {
        let mut cmd = sshd::ssh_command(
            server.port(),
            server.user(),
            key,
            &server.known_hosts_file(),
        );
        cmd.arg("echo in");
        sshd::run_client(cmd, None).unwrap()
    };
    let out = command(&key.private);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    server.authorize_key(&key.public_line).unwrap();
    let out = command(&key.private);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
}

#[test]
fn logs_in_with_the_password_and_refuses_a_wrong_one() {
    if skip() {
        return;
    }
    let server = SshServer::shared();
    let local = tempfile::tempdir().unwrap();
    assert!(!server.password().is_empty());
    let mut cmd = sshd::ssh_password_command(
        server.port(),
        server.user(),
        server.password(),
        &server.known_hosts_file(),
        local.path(),
    )
    .unwrap();
    cmd.arg("whoami");
    assert_eq!(sshd::run_ok(cmd).unwrap(), "gate-ssh-test\n");

    let mut cmd = sshd::ssh_password_command(
        server.port(),
        server.user(),
        "not-the-password",
        &server.known_hosts_file(),
        local.path(),
    )
    .unwrap();
    cmd.arg("whoami");
    let out = sshd::run_client(cmd, None).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stops_starts_again_and_a_rotated_host_key_is_refused() {
    if skip() {
        return;
    }
    let server = SshServer::start().unwrap();
    let port = server.port();
    let old_fingerprint = server.host_key_fingerprint();
    let old_known_hosts = server.known_hosts_file();
    let echo = |known_hosts: &Path| {
        let mut cmd = sshd::ssh_command(port, server.user(), server.upstream_key(), known_hosts);
        cmd.arg("echo up");
        sshd::run_client(cmd, None).unwrap()
    };
    assert!(echo(&old_known_hosts).status.success());

    // A session running when the server stops is ended with it.
    let sessions = || server.log().matches("Starting session: command").count();
    let before = sessions();
    let mut long = server.ssh_command();
    long.arg("sleep 600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut long = long.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sessions() == before {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop().unwrap();
    assert!(!server.is_running());
    let status = long.wait().unwrap();
    assert!(!status.success());
    let out = echo(&old_known_hosts);
    assert!(!out.status.success());

    server.start_again().unwrap();
    assert_eq!(server.port(), port);
    assert!(echo(&old_known_hosts).status.success());

    let new_fingerprint = server.rotate_host_key().unwrap();
    assert_ne!(new_fingerprint, old_fingerprint);
    assert_eq!(server.host_key_fingerprint(), new_fingerprint);
    assert_eq!(server.port(), port);
    assert_ne!(server.known_hosts_file(), old_known_hosts);
    let out = echo(&old_known_hosts);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    let out = echo(&server.known_hosts_file());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sshd::ssh_keyscan(port).unwrap(), server.known_hosts_line());

    // Dropping removes the server's directories.
    let (dir, work) = (server.dir().to_path_buf(), server.work_dir().to_path_buf());
    drop(server);
    if std::env::var_os("GATE_TEST_KEEP").is_none() {
        assert!(!dir.exists() && !work.exists());
    }
}

#[test]
fn two_servers_share_the_user_and_its_password() {
    if skip() {
        return;
    }
    let a = SshServer::shared();
    let b = SshServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.password(), b.password());
    assert_eq!(a.home(), b.home());
    assert_ne!(a.work_dir(), b.work_dir());
    assert_ne!(a.host_key_fingerprint(), b.host_key_fingerprint());
    // Each server authorizes only its own upstream key.
    let mut cmd = sshd::ssh_command(b.port(), b.user(), a.upstream_key(), &b.known_hosts_file());
    cmd.arg("true");
    let out = sshd::run_client(cmd, None).unwrap();
    assert!(!out.status.success());
    let mut cmd = b.ssh_command();
    cmd.arg("true");
    sshd::run_ok(cmd).unwrap();
}

#[test]
fn stop_never_leaves_a_session_behind() {
    if skip() {
        return;
    }
    // Stop at different moments of a client's log-in and session: whatever was under way, the
    // client must be cut off (a session orphaned by the stop would keep it connected).
    let server = SshServer::start().unwrap();
    for delay_ms in [0u64, 30, 80, 150, 250, 400] {
        let mut cmd = server.ssh_command();
        cmd.arg("sleep 600")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut client = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        server.stop().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = client.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = client.kill();
                let _ = client.wait();
                panic!("the client was still connected 30 s after stop() (delay {delay_ms} ms)");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!status.success(), "delay {delay_ms} ms");
        server.start_again().unwrap();
    }
}
