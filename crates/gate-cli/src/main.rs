//! `gate`: the command line for people using Gate. Today: session recordings.
//!
//! ```text
//! gate --store .data/recordings recordings list
//! gate --store s3://bucket/gate recordings play 0190a1b2 --speed 2 --idle-limit 1
//! gate recordings download 0190a1b2 -o session.cast      # with GATE_RECORDINGS set
//! ```
//!
//! Exit codes: 0 ok, 1 runtime error (not found, store error, damaged recording), 2 usage.

mod play;
mod source;
mod table;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gate_recording::RecordingKind;

use source::Source;

#[derive(Parser)]
#[command(
    name = "gate",
    version,
    about = "Gate: list, replay and download session recordings"
)]
struct Cli {
    /// Where recordings are stored: a directory, file:///path, or s3://bucket/prefix
    /// (S3 settings come from the AWS_* environment variables).
    #[arg(long, env = "GATE_RECORDINGS", global = true, value_name = "DIR|URL")]
    store: Option<String>,
    /// The control plane to read recordings from instead (`http://host:8080`); it serves
    /// the recordings of the org the token belongs to.
    #[arg(long, env = "GATE_URL", global = true, value_name = "URL")]
    url: Option<String>,
    /// API key for `--url` (any role that can read).
    #[arg(long, env = "GATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// With a system key: the organization to act on.
    #[arg(long, env = "GATE_ORG", global = true)]
    org: Option<String>,
    /// Colour in human-readable output (`auto`: only when stdout is a terminal and
    /// NO_COLOR is unset).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Session recordings: database query logs and terminal sessions.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
}

#[derive(Subcommand)]
enum RecordingsCommand {
    /// List recordings, newest first.
    List {
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Replay a recording in the terminal with its original timing.
    Play {
        /// Recording id, or a unique prefix of it.
        id: String,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
        speed: f64,
        /// Cut pauses longer than this many seconds down to it.
        #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
        idle_limit: Option<f64>,
    },
    /// Save a recording's file (`.cast` for terminal sessions, `.jsonl` for query logs),
    /// after checking it against the SHA-256 in its index.
    Download {
        /// Recording id, or a unique prefix of it.
        id: String,
        /// Where to write (`-` for standard output). Default: `<id>.cast` or `<id>.jsonl`
        /// in the current directory.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

fn positive_seconds(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{raw:?} is not a positive number")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let source = match (nonempty(&cli.url), nonempty(&cli.store)) {
        (Some(url), _) => SourceArg::ControlPlane {
            url,
            token: nonempty(&cli.token).unwrap_or_default(),
            org: nonempty(&cli.org),
        },
        (None, Some(store)) => SourceArg::Store(store),
        (None, None) => {
            eprintln!(
                "gate: no recordings source: pass --url http://control-plane:8080 with --token, or \
                 --store DIR|URL (a directory, file:///path or s3://bucket/prefix); or set \
                 GATE_URL/GATE_TOKEN or GATE_RECORDINGS"
            );
            return ExitCode::from(2);
        }
    };
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    match run(source, cli.command, color) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // `gate ... | head`
        Err(e) => {
            eprintln!("gate: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Warnings from the library (a damaged index skipped while listing) go to stderr.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where to read from, as given on the command line.
enum SourceArg {
    Store(String),
    ControlPlane {
        url: String,
        token: String,
        org: Option<String>,
    },
}

fn run(source: SourceArg, command: Command, color: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let source = match source {
        SourceArg::Store(store) => Source::from_store_arg(&store)?,
        SourceArg::ControlPlane { url, token, org } => Source::control_plane(&url, &token, org)?,
    };
    let Command::Recordings(command) = command;
    match command {
        RecordingsCommand::List { output } => {
            let all = rt.block_on(source.list())?;
            let mut out = std::io::stdout().lock();
            match output {
                Output::Json => {
                    serde_json::to_writer_pretty(&mut out, &all)?;
                    writeln!(out)?;
                }
                Output::Table => table::write_list(&mut out, &all, color)?,
            }
            out.flush()?;
        }
        RecordingsCommand::Play {
            id,
            speed,
            idle_limit,
        } => {
            let index = rt.block_on(source.find(&id))?;
            let content = rt.block_on(source.content(&index))?;
            let pace = play::Pace { speed, idle_limit };
            let mut out = std::io::stdout().lock();
            match index.kind {
                RecordingKind::Terminal => play::terminal(&mut out, &content, pace)?,
                RecordingKind::Queries => play::queries(&mut out, &content, pace, color)?,
            }
        }
        RecordingsCommand::Download { id, output } => {
            let index = rt.block_on(source.find(&id))?;
            let content = rt.block_on(source.content(&index))?;
            let path = output.unwrap_or_else(|| {
                PathBuf::from(format!("{}.{}", index.recording_id, index.kind.extension()))
            });
            if path.as_os_str() == "-" {
                let mut out = std::io::stdout().lock();
                out.write_all(&content)?;
                out.flush()?;
            } else {
                std::fs::write(&path, &content)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "saved {} ({}, sha256 {})",
                    path.display(),
                    table::size(index.size),
                    index.sha256
                );
            }
        }
    }
    Ok(())
}
