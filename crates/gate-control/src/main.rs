//! `gate-control`: the control-plane binary.
//!
//! ```text
//! gate-control --config configs/control.yaml            # run
//! gate-control check --config configs/control.yaml      # validate, print every error
//! gate-control --config … --insecure                    # allow an empty api_key (local only)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gate_control::config::ControlConfig;
use gate_core::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "gate-control",
    version,
    about = "Gate control plane: admin API (HTTP + gRPC), connector registration, config sync, audit"
)]
struct Cli {
    /// Config file.
    #[arg(long, short, env = "GATE_CONTROL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Start even though `api_key` is empty; requests without a key then act as the system
    /// key (each one is logged at warn). Never for production.
    #[arg(long, env = "GATE_INSECURE", global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate a config file and print every problem with its path in the file.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, cfg) = match load(cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(&cfg);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gate-control: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let options = gate_control::StartOptions {
                insecure: cli.insecure,
            };
            match runtime.block_on(run(cfg, options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "gate-control failed");
                    eprintln!("gate-control: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn run(cfg: ControlConfig, options: gate_control::StartOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let running = gate_control::start(&cfg, options).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

fn load(path: Option<PathBuf>) -> Result<(PathBuf, ControlConfig), ExitCode> {
    let Some(path) = path else {
        eprintln!("gate-control: --config FILE is required");
        return Err(ExitCode::from(2));
    };
    match ControlConfig::load(&path) {
        Ok(cfg) => Ok((path, cfg)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {}", errors.errors.len(), path.display());
            Err(ExitCode::from(1))
        }
    }
}

fn init_logging(cfg: &ControlConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},rustls=warn,regorus=warn,hyper=warn,h2=warn,sqlx=warn,tower=warn",
            cfg.logging.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
