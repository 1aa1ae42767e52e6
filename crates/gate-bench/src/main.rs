//! `gate-bench`: the Rust half of `make bench` (scripts/bench.sh).
//!
//! ```text
//! gate-bench idle   --port 6432 --user alice --dbname bench --cert cert.pem --pid $GATE_PID
//! gate-bench report results.tsv
//! ```
//!
//! * `idle` opens many idle, authenticated PostgreSQL sessions through a TLS endpoint (Gate),
//!   reads the server's resident memory before and after, and times new logins while they
//!   are open.
//! * `report` summarises the pgbench runs that scripts/bench.sh recorded: medians per target
//!   and medians of per-round ratios.

mod idle;
mod report;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gate-bench",
    about = "Benchmark helpers for Gate (used by scripts/bench.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open idle authenticated sessions; measure server RSS per session and login latency.
    Idle(idle::IdleArgs),
    /// Summarise pgbench results (TSV: mode, clients, round, target, tps, latency_ms, failed).
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Idle(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(idle::run(args))),
        Command::Report(args) => report::run(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Targets missed: distinct from a failure to measure.
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("gate-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
