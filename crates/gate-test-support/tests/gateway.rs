//! `Gateway` against a stand-in binary (examples/fake_connector.rs): readiness, log,
//! SIGTERM, start-up failure, kill on drop.

use gate_test_support::gateway::Gateway;
use gate_test_support::{free_addr, http_get};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The fake connector example, built if this test was run without examples.
fn fake_connector() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("fake_connector");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "gate-test-support",
                "--example",
                "fake_connector",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

fn config() -> (String, String, String) {
    let listen = free_addr().to_string();
    let health = free_addr().to_string();
    let yaml = format!("listen_addr: \"{listen}\"\nhealth_addr: \"{health}\"\n");
    (yaml, listen, health)
}

#[tokio::test]
async fn starts_waits_for_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, listen, health) = config();
    let mut gw = Gateway::builder(&yaml, dir.path())
        .binary(fake_connector())
        .start()
        .await
        .unwrap();
    assert_eq!(gw.health_addr(), Some(health.as_str()));
    assert_eq!(gw.listen_addr(), Some(listen.as_str()));
    assert_eq!(http_get(&health, "/ready").await.unwrap().status, 200);
    assert_eq!(gw.http_get("/health").await.unwrap().body, "ok");
    assert_eq!(gw.http_get("/nope").await.unwrap().status, 404);
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), yaml);
    assert_eq!(gw.workdir(), dir.path().canonicalize().unwrap());
    let log = gw
        .wait_for_log("listening on", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(log.contains("connector.yaml"), "{log}");

    gw.sigterm().unwrap();
    let status = gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(gw.log().contains("SIGTERM received"));
    assert!(
        gw.sigterm().is_err(),
        "signalling an exited process must fail"
    );
}

#[tokio::test]
async fn health_addr_comes_from_builder_env() {
    let dir = tempfile::tempdir().unwrap();
    let (_, listen, _) = config();
    let health = free_addr().to_string();
    let yaml = format!("listen_addr: \"{listen}\"\nhealth_addr: \"${{TEST_HEALTH_ADDR}}\"\n");
    // The fake does not expand variables; write the expanded address, but check that the
    // builder's env is what `Gateway` used to find it.
    let expanded = yaml.replace("${TEST_HEALTH_ADDR}", &health);
    let gw = Gateway::builder(&expanded, dir.path())
        .binary(fake_connector())
        .env("TEST_HEALTH_ADDR", &health)
        .start()
        .await
        .unwrap();
    assert_eq!(gw.health_addr(), Some(health.as_str()));
}

#[tokio::test]
async fn start_up_failure_is_reported_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, _, _) = config();
    let err = Gateway::builder(&yaml, dir.path())
        .binary(fake_connector())
        .env("FAKE_EXIT_CODE", "3")
        .start()
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exited") && msg.contains("failing on purpose"),
        "{msg}"
    );

    let mut gw = Gateway::builder(&yaml, dir.path())
        .binary(fake_connector())
        .env("FAKE_EXIT_CODE", "3")
        .spawn()
        .await
        .unwrap();
    let status = gw.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(status.code(), Some(3));
}

#[tokio::test]
async fn drop_stops_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, listen, _) = config();
    let gw = Gateway::builder(&yaml, dir.path())
        .binary(fake_connector())
        .start()
        .await
        .unwrap();
    let pid = gw.pid() as i32;
    drop(gw);
    // Reaped by Drop: the pid no longer names our child.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("fake_connector"));
    assert!(!alive, "pid {pid} still running");
    assert!(std::net::TcpStream::connect(&listen).is_err());
}
