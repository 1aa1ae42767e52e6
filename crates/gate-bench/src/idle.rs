//! Idle sessions: memory per session and login latency under load.
//!
//! 1. a few warm-up logins (closed again), then the server's VmRSS ("before");
//! 2. `--sessions` logins over TLS (real PostgreSQL wire login: startup, TLS, password,
//!    ReadyForQuery), `--concurrency` at a time, kept open and idle;
//! 3. after `--settle-ms`, VmRSS again ("open"): (open - before) / sessions = KiB per session;
//! 4. while they are open, `--probes` new logins one after another, each timed from the TCP
//!    connect until the client is ready (ReadyForQuery), then the first query on it (timed
//!    too, for information: it is where a lazy upstream is attached) and close;
//! 5. check the idle sessions are still alive (and that a sample of them answers a query),
//!    close everything, and read VmRSS once more.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    user: String,
    /// Database name (for Gate: the resource name).
    #[arg(long)]
    dbname: String,
    /// Password (for Gate: the token).
    #[arg(long, env = "GATE_BENCH_PASSWORD", hide_env_values = true)]
    password: String,
    /// PEM file with the server's (self-signed) certificate; it is pinned.
    #[arg(long)]
    cert: PathBuf,
    /// Pid of the server whose resident memory is measured (/proc/<pid>/status VmRSS).
    #[arg(long)]
    pid: u32,
    /// Idle sessions to open and hold.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Logins opened at the same time while filling up.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// New logins timed (one after another) while the idle sessions are open.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Idle sessions that run one query at the end, to show they are live sessions.
    #[arg(long, default_value_t = 20)]
    sample_queries: usize,
    /// Pause before each memory reading, milliseconds.
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
    /// Per-login timeout, seconds.
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
    /// Target: resident memory per idle session, KiB.
    #[arg(long, default_value_t = 64.0)]
    target_kib: f64,
    /// Target: login latency (median and max of the probes), milliseconds.
    #[arg(long, default_value_t = 50.0)]
    target_login_ms: f64,
}

struct Session {
    client: Client,
    conn: JoinHandle<()>,
}

async fn login(
    cfg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<Session, tokio_postgres::Error> {
    let (client, connection) = cfg.connect(tls.clone()).await?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Session { client, conn })
}

async fn close(s: Session) {
    drop(s.client); // sends Terminate; the connection task then ends
    let _ = tokio::time::timeout(Duration::from_secs(10), s.conn).await;
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is the server running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

pub async fn run(args: IdleArgs) -> anyhow::Result<bool> {
    let tls = MakeRustlsConnect::new(crate::tls::pinned_client_config(&args.cert)?);
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&args.host)
        .port(args.port)
        .user(&args.user)
        .password(&args.password)
        .dbname(&args.dbname)
        .application_name("gate-bench")
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(args.connect_timeout));
    let settle = Duration::from_millis(args.settle_ms);

    println!(
        "idle sessions through {}:{} (TLS, password login as {:?} to {:?}); server pid {}",
        args.host, args.port, args.user, args.dbname, args.pid
    );

    // 1. Warm-up (one-time allocations: TLS state, caches, thread-local pools) and baseline.
    for _ in 0..8 {
        let s = login(&cfg, &tls).await.context("warm-up login failed")?;
        s.client
            .simple_query("SELECT 1")
            .await
            .context("warm-up query failed")?;
        close(s).await;
    }
    tokio::time::sleep(settle).await;
    let rss_before = rss_kib(args.pid)?;
    let fds_before = open_fds(args.pid);

    // 2. Open the idle sessions.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let permits = permits.clone();
        let cfg = cfg.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore closed");
            let t = Instant::now();
            login(&cfg, &tls).await.map(|s| (s, t.elapsed()))
        }));
    }
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut fill_login_ms = Vec::with_capacity(args.sessions);
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0usize;
    for t in tasks {
        match t.await {
            Ok(Ok((s, d))) => {
                sessions.push(s);
                fill_login_ms.push(ms(d));
            }
            Ok(Err(e)) => {
                failed += 1;
                let msg = format!("{e:#}");
                if errors.len() < 5 && !errors.contains(&msg) {
                    errors.push(msg);
                }
            }
            Err(e) => {
                failed += 1;
                errors.push(format!("task: {e}"));
            }
        }
    }
    let fill_time = started.elapsed();
    let opened = sessions.len();
    println!(
        "  opened          {opened}/{} in {:.1} s ({:.0} logins/s, {} at a time; login median {:.1} ms, max {:.1} ms), failed {failed}",
        args.sessions,
        fill_time.as_secs_f64(),
        opened as f64 / fill_time.as_secs_f64(),
        args.concurrency,
        median(&fill_login_ms),
        fill_login_ms.iter().copied().fold(0.0, f64::max),
    );
    for e in &errors {
        println!("  login error:    {e}");
    }
    anyhow::ensure!(opened > 0, "no session could be opened");

    // 3. Memory with the sessions open.
    tokio::time::sleep(settle).await;
    let rss_open = rss_kib(args.pid)?;
    let fds_open = open_fds(args.pid);
    let per_session_kib = (rss_open as f64 - rss_before as f64) / opened as f64;

    // 4. New logins while they are open.
    let mut login_ms = Vec::with_capacity(args.probes);
    let mut first_query_ms = Vec::with_capacity(args.probes);
    let mut probe_failures = 0usize;
    for _ in 0..args.probes {
        let t = Instant::now();
        match login(&cfg, &tls).await {
            Ok(s) => {
                login_ms.push(ms(t.elapsed()));
                let q = Instant::now();
                match s.client.simple_query("SELECT 1").await {
                    Ok(_) => first_query_ms.push(ms(q.elapsed())),
                    Err(e) => {
                        probe_failures += 1;
                        println!("  probe query error: {e:#}");
                    }
                }
                close(s).await;
            }
            Err(e) => {
                probe_failures += 1;
                println!("  probe login error: {e:#}");
            }
        }
    }
    let login_median = median(&login_ms);
    let login_max = login_ms.iter().copied().fold(f64::NAN, f64::max);

    // 5. Still alive? A sample answers a query (this attaches upstreams; it comes last).
    let alive = sessions.iter().filter(|s| !s.client.is_closed()).count();
    let step = (opened / args.sample_queries.max(1)).max(1);
    let mut sample_ok = 0usize;
    let mut sample_n = 0usize;
    for s in sessions.iter().step_by(step).take(args.sample_queries) {
        sample_n += 1;
        match s.client.simple_query("SELECT 1").await {
            Ok(_) => sample_ok += 1,
            Err(e) => println!("  sample query error: {e:#}"),
        }
    }
    let closing = Instant::now();
    let mut closers = Vec::with_capacity(sessions.len());
    for s in sessions {
        closers.push(tokio::spawn(close(s)));
    }
    for c in closers {
        let _ = c.await;
    }
    let close_time = closing.elapsed();
    tokio::time::sleep(settle).await;
    let rss_closed = rss_kib(args.pid)?;

    let fmt_fds = |f: Option<usize>| f.map_or("?".to_string(), |n| n.to_string());
    println!(
        "  gateway RSS     before {:.1} MiB, with {opened} idle sessions {:.1} MiB (+{:.1} MiB), after closing {:.1} MiB",
        mib(rss_before),
        mib(rss_open),
        mib(rss_open.saturating_sub(rss_before)),
        mib(rss_closed)
    );
    println!(
        "  gateway fds     before {}, open {}; threads {}",
        fmt_fds(fds_before),
        fmt_fds(fds_open),
        threads(args.pid).map_or("?".to_string(), |n| n.to_string())
    );
    println!(
        "  still alive     {alive}/{opened} idle sessions; sample query ok {sample_ok}/{sample_n}; closed all in {:.1} s",
        close_time.as_secs_f64()
    );
    let mem_ok = failed == 0 && per_session_kib <= args.target_kib;
    println!(
        "  memory/session  {per_session_kib:.1} KiB            target <= {} KiB  {}",
        args.target_kib,
        verdict(mem_ok)
    );
    let login_ok = probe_failures == 0
        && !login_ms.is_empty()
        && login_median < args.target_login_ms
        && login_max < args.target_login_ms;
    println!(
        "  new login       median {login_median:.1} ms, max {login_max:.1} ms ({} logins while {opened} idle)  target < {} ms  {}",
        login_ms.len(),
        args.target_login_ms,
        verdict(login_ok)
    );
    if !first_query_ms.is_empty() {
        println!(
            "  first query     median {:.1} ms, max {:.1} ms after those logins (informational: upstream attached lazily)",
            median(&first_query_ms),
            first_query_ms.iter().copied().fold(0.0, f64::max)
        );
    }
    let live_ok = alive == opened && sample_ok == sample_n;
    if !live_ok {
        println!("  WARNING: some idle sessions died or did not answer");
    }
    Ok(mem_ok && login_ok && live_ok)
}
