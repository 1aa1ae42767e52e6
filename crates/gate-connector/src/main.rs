//! `gate-connector`: the data-plane binary. Reads `connector.yaml`, assembles the session
//! pipeline and the protocol handlers, and serves clients until SIGTERM.
//!
//! ```text
//! gate-connector --config configs/connector.yaml      # run
//! gate-connector check --config configs/connector.yaml  # validate, print every error
//! echo -n "$TOKEN" | gate-connector hash-token          # SHA-256 for auth.tokens[].token_sha256
//! ```

mod control;
mod detect;
mod health;
mod server;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gate_core::config::{ConnectorConfig, LogFormat};

#[derive(Parser)]
#[command(
    name = "gate-connector",
    version,
    about = "Gate connector: the access gateway's data plane"
)]
struct Cli {
    /// Config file (for running).
    #[arg(long, short, env = "GATE_CONNECTOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate a config file and print every problem with its path in the file.
    Check,
    /// Print the SHA-256 of a token read from standard input (for `auth.tokens[].token_sha256`).
    HashToken,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::HashToken => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("gate-connector: cannot read stdin: {e}");
                return ExitCode::from(2);
            }
            let token = token.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                eprintln!("gate-connector: empty token on stdin");
                return ExitCode::from(2);
            }
            println!("{}", gate_core::secret::sha256_hex(token));
            ExitCode::SUCCESS
        }
        Command::Check => match load(cli.config) {
            Ok((path, cfg)) => match server::check_policies(&cfg) {
                Ok(()) => {
                    println!(
                        "{}: ok ({} resources, {} token identities, {} policies)",
                        path.display(),
                        cfg.resources.len(),
                        cfg.auth.tokens.len(),
                        cfg.policies.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: policies: {e}", path.display());
                    ExitCode::from(1)
                }
            },
            Err(code) => code,
        },
        Command::Run => {
            let (_, cfg) = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            // The connector's own work (accepting, control-plane sync, recording writer,
            // health) runs on this thread; connections are served on the session threads
            // (`worker_threads`, gate_pipeline::shards) that `server::run` starts.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gate-connector: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(server::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "gate-connector failed");
                    eprintln!("gate-connector: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<(PathBuf, ConnectorConfig), ExitCode> {
    let Some(path) = path else {
        eprintln!("gate-connector: --config FILE is required");
        return Err(ExitCode::from(2));
    };
    match ConnectorConfig::load(&path) {
        Ok(cfg) => Ok((path, cfg)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {}", errors.errors.len(), path.display());
            Err(ExitCode::from(1))
        }
    }
}

fn init_logging(cfg: &ConnectorConfig) {
    // Dependencies' debug output (sqlparser logs every token) is noise and may echo query
    // text: keep them at warn unless GATE_LOG asks for them explicitly.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},sqlparser=warn,rustls=warn,regorus=warn,hyper=warn",
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
