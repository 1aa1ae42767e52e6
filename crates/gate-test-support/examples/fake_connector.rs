//! A stand-in for `gate-connector`, used by this crate's own tests of `Gateway`: reads
//! `--config <file>`, listens on `listen_addr`, serves `/ready` and `/health` on
//! `health_addr`, and exits 0 on SIGTERM. `FAKE_EXIT_CODE=<n>` makes it fail at start-up.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .ok_or_else(|| anyhow::anyhow!("usage: fake_connector --config <file>"))?;
    eprintln!("fake connector starting with {config}");
    if let Ok(code) = std::env::var("FAKE_EXIT_CODE") {
        eprintln!("failing on purpose");
        std::process::exit(code.parse()?);
    }
    let doc: yaml_serde::Value = yaml_serde::from_str(&std::fs::read_to_string(config)?)?;
    let addr = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let listen = TcpListener::bind(addr("listen_addr").unwrap_or("127.0.0.1:0".into())).await?;
    let health = TcpListener::bind(addr("health_addr").unwrap_or("127.0.0.1:0".into())).await?;
    // Become "ready" a little later, as a real connector would after loading policies.
    let ready_at = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut term = signal(SignalKind::terminate())?;
    eprintln!("listening on {}", listen.local_addr()?);
    loop {
        tokio::select! {
            _ = term.recv() => {
                eprintln!("SIGTERM received, shutting down");
                return Ok(());
            }
            conn = listen.accept() => { drop(conn?); }
            conn = health.accept() => {
                let (mut s, _) = conn?;
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await?;
                let req = String::from_utf8_lossy(&buf[..n]);
                let ready = tokio::time::Instant::now() >= ready_at;
                let (status, body) = if req.starts_with("GET /ready ") && !ready {
                    ("503 Service Unavailable", "starting")
                } else if req.starts_with("GET /ready ") || req.starts_with("GET /health ") {
                    ("200 OK", "ok")
                } else {
                    ("404 Not Found", "not found")
                };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                s.write_all(resp.as_bytes()).await?;
            }
        }
    }
}
