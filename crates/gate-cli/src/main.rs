//! `gate`: the command line for people using Gate: sign in to the control plane, ask for
//! and decide just-in-time access, and list, replay and download session recordings.
//!
//! ```text
//! gate login --url https://control.example.com:8080 --token $GATE_TOKEN
//! gate access request --resource primary-db --duration 1h --reason "incident 42" --wait
//! gate access list --to-approve
//! gate access approve 0190a1b2-… --reason "go ahead"
//! gate --store .data/recordings recordings list
//! gate recordings play 0190a1b2 --speed 2 --idle-limit 1   # with the stored login
//! ```
//!
//! Exit codes: see [`EXIT_CODES`] (and docs/cli.md).

mod access;
mod api;
mod config;
mod play;
mod source;
mod table;

use std::io::{BufRead, IsTerminal, Write, stdout};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gate_recording::RecordingKind;

use access::{Output, Verb, Which};
use api::{Client, Exit, Flags, Target, exit, is_broken_pipe};
use source::Source;

/// The help heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// The exit codes, as `gate --help` shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0    ok (for `access request --wait` and `access wait`: approved)
  1    error (network, control plane unavailable, a conflict, damaged recording, ...)
  2    usage (bad or missing flags; or the control plane refused the request as invalid, HTTP 400)
  3    not authenticated: not logged in, no token, or the token was refused (HTTP 401)
  4    permission denied (HTTP 403)
  5    not found (HTTP 404)
  6    `--wait` / `access wait`: the request was denied
  7    `--wait` / `access wait`: the request expired, was cancelled or was revoked
  8    `--wait` / `access wait`: --timeout reached (the request is still pending)
  130  `--wait` / `access wait`: Ctrl-C (the request is still pending)";

#[derive(Parser)]
#[command(
    name = "gate",
    version,
    about = "Gate: sign in, request and approve just-in-time access, replay session recordings",
    long_about = "Gate: sign in to the control plane (`gate login`), request and approve \
                  just-in-time access (`gate access`), list, replay and download session \
                  recordings (`gate recordings`).\n\n\
                  Commands that talk to the control plane use --url/--token/--org \
                  (or GATE_URL/GATE_TOKEN/GATE_ORG), else the login stored by `gate login` \
                  in $GATE_CONFIG_DIR/config.json, $XDG_CONFIG_HOME/gate/config.json or \
                  ~/.config/gate/config.json.",
    after_long_help = EXIT_CODES,
)]
struct Cli {
    /// Where recordings are stored: a directory, file:///path, or s3://bucket/prefix
    /// (S3 settings come from the AWS_* environment variables).
    #[arg(long, env = "GATE_RECORDINGS", global = true, value_name = "DIR|URL", help_heading = GLOBAL)]
    store: Option<String>,
    /// The control plane (`https://host:8080`). Default: the stored login.
    #[arg(long, env = "GATE_URL", global = true, value_name = "URL", help_heading = GLOBAL)]
    url: Option<String>,
    /// Your Gate token (or an API key). Default: the stored login's.
    #[arg(long, env = "GATE_TOKEN", global = true, hide_env_values = true, help_heading = GLOBAL)]
    token: Option<String>,
    /// With a system key: the organization to act on.
    #[arg(long, env = "GATE_ORG", global = true, help_heading = GLOBAL)]
    org: Option<String>,
    /// CA certificate(s) (PEM) to trust for a control plane with a private certificate.
    #[arg(long, env = "GATE_CA_FILE", global = true, value_name = "PEM", help_heading = GLOBAL)]
    ca_file: Option<PathBuf>,
    /// Colour in human-readable output (`auto`: only when stdout is a terminal and
    /// NO_COLOR is unset).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true, help_heading = GLOBAL)]
    color: ColorChoice,
    /// Output format for the login, whoami, access and `recordings list` commands (also
    /// accepted after the command).
    #[arg(long, short, value_enum, value_name = "FORMAT")]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

/// `--output table|json` on the commands that print control-plane objects.
#[derive(Args)]
struct OutputArg {
    /// `table` (human-readable, the default) or `json` (the control plane's objects, for
    /// scripts).
    #[arg(long, short, value_enum, global = true, value_name = "FORMAT")]
    output: Option<Output>,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in: check the token with the control plane and store it (mode 0600) for the
    /// other commands. Use your own Gate token (the one you connect to databases with).
    /// Without --token (or GATE_TOKEN) the token is read from the terminal or stdin.
    Login {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Forget the stored login.
    Logout,
    /// Show who the control plane takes you for.
    Whoami {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Just-in-time access: request, wait for, list and decide access requests.
    Access(AccessArgs),
    /// Session recordings: database query logs and terminal sessions.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
}

#[derive(Args)]
struct AccessArgs {
    /// With an API key (editor or above): the identity to act as (sent as requester or
    /// approver). Not needed with your own Gate token.
    #[arg(long = "as", global = true, env = "GATE_AS", value_name = "IDENTITY")]
    as_identity: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    #[command(subcommand)]
    command: AccessCommand,
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Ask for access to a resource for a while.
    Request {
        /// The resource, by name.
        #[arg(long)]
        resource: String,
        /// How long the access should last once approved: 1h, 30m, 90s, 1h30m.
        #[arg(long, value_parser = access::parse_duration)]
        duration: Duration,
        /// Why you need it (approvers see it).
        #[arg(long)]
        reason: String,
        /// Narrow the grant: KEY=VALUE, repeatable (operation=read; for MCP resources
        /// operation=tool target=deploy_*).
        #[arg(long = "scope", value_name = "KEY=VALUE", value_parser = access::parse_scope)]
        scopes: Vec<(String, String)>,
        /// Wait until the request is decided (exit 0 approved, 6 denied, 7 expired,
        /// cancelled or revoked, 8 --timeout reached, 130 Ctrl-C).
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting after this long (the request stays pending).
        #[arg(long, requires = "wait", value_parser = access::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Wait for a pending request to be decided (like `request --wait`: exit 0 approved,
    /// 6 denied, 7 expired, cancelled or revoked, 8 --timeout reached, 130 Ctrl-C).
    Wait {
        id: String,
        /// Stop waiting after this long.
        #[arg(long, value_parser = access::parse_duration)]
        timeout: Option<Duration>,
    },
    /// List access requests, newest first. Default: with your own token, your requests and
    /// those you may decide; with an API key, all of the organization's.
    List {
        /// Only your own requests.
        #[arg(long, group = "which")]
        mine: bool,
        /// Only pending requests you may decide.
        #[arg(long, group = "which")]
        to_approve: bool,
        /// Everything the credentials may see (the default).
        #[arg(long, group = "which")]
        all: bool,
        /// Only requests in this state.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only requests for this resource.
        #[arg(long)]
        resource: Option<String>,
    },
    /// Show one request.
    Get { id: String },
    /// Approve a pending request (approvers only; not your own).
    Approve {
        id: String,
        /// Why (recorded in the audit log and shown to the requester).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request (approvers only).
    Deny {
        id: String,
        /// Why (recorded in the audit log and shown to the requester).
        #[arg(long)]
        reason: Option<String>,
    },
    /// End an approved grant early (an approver, or the grantee).
    Revoke {
        id: String,
        /// Why (recorded in the audit log and shown to the requester).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw your own pending request.
    Cancel {
        id: String,
        /// Why (recorded in the audit log and shown to the requester).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// The states `--status` accepts.
#[derive(Clone, Copy, ValueEnum)]
enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    Revoked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::Revoked => "revoked",
        }
    }
}

#[derive(Subcommand)]
enum RecordingsCommand {
    /// List recordings, newest first.
    List {
        /// `table` or `json`.
        #[arg(long, short, value_enum, value_name = "FORMAT")]
        output: Option<Output>,
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
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gate: starting the runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(run(cli, color)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // `gate ... | head`
        Err(e) => {
            eprintln!("gate: {e:#}");
            if format!("{e:#}").contains("invalid peer certificate") {
                eprintln!(
                    "gate: hint: for a control plane with a private CA, pass --ca-file ca.pem \
                     (or set GATE_CA_FILE)"
                );
            }
            ExitCode::from(api::exit_code_of(&e))
        }
    }
}

/// Warnings from the library (a damaged index skipped while listing) go to stderr. The
/// HTTP and TLS stacks stay quiet: their failures reach the user as the command's error.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rustls=off,hyper_util=off,reqwest=off")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Cli {
    fn flags(&self) -> Flags {
        Flags {
            url: nonempty(&self.url),
            token: nonempty(&self.token),
            org: nonempty(&self.org),
            ca_file: self.ca_file.clone().filter(|p| !p.as_os_str().is_empty()),
        }
    }

    /// `--output` given after the command wins over one given before it.
    fn output(&self, after: &OutputArg) -> Output {
        after.output.or(self.output).unwrap_or(Output::Table)
    }
}

/// The stored login, if any (a damaged file is an error).
fn stored() -> anyhow::Result<Option<config::Config>> {
    config::load(&config::dir()?)
}

/// A client for the control plane from flags, environment and the stored login.
fn client(flags: &Flags) -> anyhow::Result<Client> {
    let stored = stored()?;
    let target = Target::resolve(flags, stored.as_ref())?;
    Client::new(&target)
}

async fn run(cli: Cli, color: bool) -> anyhow::Result<u8> {
    let flags = cli.flags();
    match &cli.command {
        Command::Login { output } => login(&flags, cli.output(output)).await,
        Command::Logout => {
            match config::remove(&config::dir()?)? {
                Some(path) => writeln!(stdout(), "Logged out: removed {}.", path.display())?,
                None => writeln!(stdout(), "Not logged in: nothing to remove.")?,
            }
            Ok(exit::OK)
        }
        Command::Whoami { output } => {
            let client = client(&flags)?;
            let (who, raw) = access::whoami(&client).await?;
            if cli.output(output) == Output::Json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&raw)?)?;
            } else {
                print_whoami(client.base(), &who)?;
            }
            Ok(exit::OK)
        }
        Command::Access(args) => {
            let ctx = access::Ctx {
                client: client(&flags)?,
                output: cli.output(&args.output),
                color,
                as_identity: nonempty(&args.as_identity),
            };
            access(&ctx, &args.command).await
        }
        Command::Recordings(command) => {
            let source = recordings_source(&cli, &flags)?;
            recordings(source, command, cli.output, color).await?;
            Ok(exit::OK)
        }
    }
}

async fn access(ctx: &access::Ctx, command: &AccessCommand) -> anyhow::Result<u8> {
    match command {
        AccessCommand::Request {
            resource,
            duration,
            reason,
            scopes,
            wait,
            timeout,
        } => {
            if reason.trim().is_empty() {
                return Err(Exit::usage("--reason must say why you need access").into());
            }
            ctx.request(access::NewRequest {
                resource: resource.clone(),
                duration: *duration,
                reason: reason.clone(),
                scopes: scopes.clone(),
                wait: *wait,
                timeout: *timeout,
            })
            .await
        }
        AccessCommand::Wait { id, timeout } => ctx.wait(id, *timeout).await,
        AccessCommand::List {
            mine,
            to_approve,
            all,
            status,
            resource,
        } => {
            let which = match (mine, to_approve, all) {
                (true, _, _) => Which::Mine,
                (_, true, _) => Which::ToApprove,
                (_, _, true) => Which::All,
                _ => Which::Default,
            };
            ctx.list(
                which,
                status.map(|s| s.as_str().to_string()),
                resource.clone(),
            )
            .await
        }
        AccessCommand::Get { id } => ctx.get(id).await,
        AccessCommand::Approve { id, reason } => {
            ctx.decide(Verb::Approve, id, reason.clone().unwrap_or_default())
                .await
        }
        AccessCommand::Deny { id, reason } => {
            ctx.decide(Verb::Deny, id, reason.clone().unwrap_or_default())
                .await
        }
        AccessCommand::Revoke { id, reason } => {
            ctx.decide(Verb::Revoke, id, reason.clone().unwrap_or_default())
                .await
        }
        AccessCommand::Cancel { id, reason } => {
            ctx.decide(Verb::Cancel, id, reason.clone().unwrap_or_default())
                .await
        }
    }
}

/// `gate login`: the URL from the flags (or the previous login), the token from the flags,
/// the terminal or stdin; checked with `whoami` before anything is stored.
async fn login(flags: &Flags, output: Output) -> anyhow::Result<u8> {
    let dir = config::dir()?;
    let previous = config::load(&dir).unwrap_or(None);
    let Some(url) = flags
        .url
        .clone()
        .or_else(|| previous.as_ref().map(|c| c.url.clone()))
    else {
        return Err(Exit::usage(
            "gate login needs the control plane: --url https://control-plane:8080 (or GATE_URL)",
        )
        .into());
    };
    let token = match &flags.token {
        Some(t) => t.clone(),
        None => read_token()?,
    };
    // Stored as an absolute path: later commands run from anywhere.
    let ca_file = match &flags.ca_file {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .with_context(|| format!("reading the CA file {}", p.display()))?,
        ),
        None => None,
    };
    let target = Target {
        url: url.trim_end_matches('/').to_string(),
        token,
        org: flags.org.clone(),
        ca_file,
    };
    let client = Client::new(&target)?;
    let (who, raw) = match access::whoami(&client).await {
        Ok(w) => w,
        Err(e) => {
            let code = api::exit_code_of(&e);
            return Err(Exit::new(code, format!("login failed: {e:#}")).into());
        }
    };
    let path = config::save(&dir, &target.to_config())?;
    if output == Output::Json {
        writeln!(stdout(), "{}", serde_json::to_string_pretty(&raw)?)?;
    } else {
        print_whoami(client.base(), &who)?;
        writeln!(stdout(), "Login saved to {}.", path.display())?;
        if who.role == "system" && who.org_id.is_none() {
            writeln!(
                stdout(),
                "Note: the system key acts on no organization until you pass --org."
            )?;
        }
    }
    Ok(exit::OK)
}

fn print_whoami(url: &str, who: &access::WhoAmI) -> std::io::Result<()> {
    let org = who.org_id.as_deref().unwrap_or("(none)");
    match who.identity() {
        Some(name) => writeln!(
            stdout(),
            "Signed in to {url} as {} ({}; role {}, org {org}).",
            table::sanitize(name),
            table::sanitize(&who.actor),
            table::sanitize(&who.role)
        ),
        None => writeln!(
            stdout(),
            "Signed in to {url} as {} (role {}, org {org}).",
            table::sanitize(&who.actor),
            table::sanitize(&who.role)
        ),
    }
}

/// The token for `gate login` without --token: typed at the terminal (not echoed), or the
/// first line of stdin.
fn read_token() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let token = if stdin.is_terminal() {
        eprint!("Gate token: ");
        std::io::stderr().flush()?;
        let echo = EchoOff::new();
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        drop(echo);
        eprintln!();
        read.context("reading the token")?;
        line
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the token from stdin")?;
        line
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Exit::not_logged_in(
            "no token: pass --token, set GATE_TOKEN, or type it at the prompt",
        )
        .into());
    }
    Ok(token)
}

/// Turns terminal echo off on stdin while it lives. A signal that ends the process at the
/// prompt (Ctrl-C, SIGQUIT, SIGTERM, SIGHUP) turns echo back on first: the shell would be
/// left not echoing otherwise.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<(libc::termios, Vec<(libc::c_int, libc::sigaction)>)>,
}

/// The terminal's attributes before [`EchoOff`], for the signal handler.
#[cfg(unix)]
static ECHO_ON: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

/// Restores the terminal, then dies of `sig` as if there were no handler. Only
/// async-signal-safe calls (tcsetattr, write, signal, raise).
#[cfg(unix)]
extern "C" fn restore_echo_and_die(sig: libc::c_int) {
    // SAFETY: see above; ECHO_ON is set before the handler is installed and never changes.
    unsafe {
        if let Some(t) = ECHO_ON.get() {
            libc::tcsetattr(0, libc::TCSANOW, t);
        }
        libc::write(2, b"\n".as_ptr().cast(), 1);
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

impl EchoOff {
    #[cfg(unix)]
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill in; failure
        // (not a terminal) leaves echo as it was. The sigaction structs are zeroed, then
        // filled in or by the kernel.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff { saved: None };
            }
            let saved = t;
            let _ = ECHO_ON.set(saved);
            let mut handlers = Vec::new();
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue; // ignored (nohup): stays ignored
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = restore_echo_and_die as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                    handlers.push((sig, old));
                }
            }
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            let mut echo = EchoOff {
                saved: Some((saved, handlers)),
            };
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                echo.restore_handlers();
                echo.saved = None;
            }
            echo
        }
    }

    #[cfg(unix)]
    fn restore_handlers(&self) {
        if let Some((_, handlers)) = &self.saved {
            for (sig, old) in handlers {
                // SAFETY: puts back the action read in `new`.
                unsafe {
                    libc::sigaction(*sig, old, std::ptr::null_mut());
                }
            }
        }
    }

    #[cfg(not(unix))]
    fn new() -> EchoOff {
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some((saved, _)) = &self.saved {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
            self.restore_handlers();
        }
    }
}

/// Where `gate recordings` reads from: --url (with the stored token for the same control
/// plane), else --store, else the stored login.
fn recordings_source(cli: &Cli, flags: &Flags) -> anyhow::Result<Source> {
    if flags.url.is_some() {
        return Ok(Source::control_plane(client(flags)?));
    }
    if let Some(store) = nonempty(&cli.store) {
        return Source::from_store_arg(&store);
    }
    match stored()? {
        Some(stored) => {
            let target = Target::resolve(flags, Some(&stored))?;
            Ok(Source::control_plane(Client::new(&target)?))
        }
        None => Err(Exit::usage(
            "no recordings source: run `gate login`, or pass --url http://control-plane:8080 \
             with --token, or --store DIR|URL (a directory, file:///path or s3://bucket/prefix); \
             or set GATE_URL/GATE_TOKEN or GATE_RECORDINGS",
        )
        .into()),
    }
}

async fn recordings(
    source: Source,
    command: &RecordingsCommand,
    top_output: Option<Output>,
    color: bool,
) -> anyhow::Result<()> {
    match command {
        RecordingsCommand::List { output } => {
            let all = source.list().await?;
            let mut out = std::io::stdout().lock();
            match output.or(top_output).unwrap_or(Output::Table) {
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
            let index = source.find(id).await?;
            let content = source.content(&index).await?;
            let pace = play::Pace {
                speed: *speed,
                idle_limit: *idle_limit,
            };
            let mut out = std::io::stdout().lock();
            match index.kind {
                RecordingKind::Terminal => play::terminal(&mut out, &content, pace)?,
                RecordingKind::Queries => play::queries(&mut out, &content, pace, color)?,
            }
        }
        RecordingsCommand::Download { id, output } => {
            let index = source.find(id).await?;
            let content = source.content(&index).await?;
            let path = output.clone().unwrap_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_and_as_are_accepted_before_and_after_the_command() {
        let cli = Cli::try_parse_from([
            "gate", "--output", "json", "access", "list", "--mine", "--as", "alice",
        ])
        .unwrap();
        let Command::Access(args) = &cli.command else {
            panic!("not access")
        };
        assert_eq!(cli.output(&args.output), Output::Json);
        assert_eq!(args.as_identity.as_deref(), Some("alice"));
        let cli = Cli::try_parse_from([
            "gate", "access", "--as", "bob", "approve", "X", "-o", "json", "--reason", "ok",
        ])
        .unwrap();
        let Command::Access(args) = &cli.command else {
            panic!("not access")
        };
        assert_eq!(cli.output(&args.output), Output::Json);
        // The recordings commands keep their own --output.
        let cli =
            Cli::try_parse_from(["gate", "recordings", "download", "X", "-o", "f.cast"]).unwrap();
        assert!(matches!(cli.command, Command::Recordings(_)));
        assert!(Cli::try_parse_from(["gate", "access", "list", "--mine", "--to-approve"]).is_err());
        assert!(
            Cli::try_parse_from([
                "gate",
                "access",
                "request",
                "--resource",
                "db",
                "--duration",
                "1h",
                "--reason",
                "r",
                "--timeout",
                "5m"
            ])
            .is_err(),
            "--timeout needs --wait"
        );
        let cli = Cli::try_parse_from([
            "gate",
            "access",
            "request",
            "--resource",
            "db",
            "--duration",
            "90m",
            "--reason",
            "r",
            "--scope",
            "operation=read",
            "--wait",
            "--timeout",
            "30s",
        ])
        .unwrap();
        let Command::Access(args) = cli.command else {
            panic!("not access")
        };
        let AccessCommand::Request {
            duration,
            scopes,
            timeout,
            ..
        } = args.command
        else {
            panic!("not request")
        };
        assert_eq!(duration, Duration::from_secs(5400));
        assert_eq!(scopes, vec![("operation".to_string(), "read".to_string())]);
        assert_eq!(timeout, Some(Duration::from_secs(30)));
    }
}
