//! `gate access …`: just-in-time access requests against the control plane
//! (`/api/v1/access-requests`).
//!
//! Signed in with their own Gate token, a person acts as themselves and the server fills in
//! the requester or approver. With an API key (editor or above) the CLI names the person
//! with `--as`, sent as `requester` / `approver`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Client, Exit, encode, exit, is_broken_pipe};
use crate::table::{approx, now_ms, relative_ms, sanitize, timestamp_ms, write_table};

/// How often `--wait` asks for the request's state.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the spinner moves.
const FRAME_EVERY: Duration = Duration::from_millis(100);

/// How results are shown.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Output {
    /// Human-readable tables and sentences.
    Table,
    /// The control plane's JSON objects, one document per command.
    Json,
}

/// What `GET /api/v1/whoami` says.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct WhoAmI {
    #[serde(default)]
    pub org_id: Option<String>,
    pub role: String,
    pub actor: String,
}

impl WhoAmI {
    /// The identity's name when the token is a person's (`identity:<name>`).
    pub fn identity(&self) -> Option<&str> {
        self.actor.strip_prefix("identity:")
    }
}

pub async fn whoami(client: &Client) -> anyhow::Result<(WhoAmI, Value)> {
    let raw: Value = client.get_json("/api/v1/whoami", &[]).await?;
    let who = serde_json::from_value(raw.clone()).context("unexpected whoami answer")?;
    Ok((who, raw))
}

/// The fields of an access request the CLI shows (the JSON output is the server's object,
/// untouched).
#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    pub id: String,
    pub requester: String,
    pub resource: String,
    #[serde(default)]
    pub reason: String,
    pub requested_duration_s: i64,
    #[serde(default)]
    pub scopes: Value,
    pub status: String,
    pub created_at: i64,
    #[serde(default)]
    pub decided_at: Option<i64>,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decision_reason: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub pending_expires_at: i64,
    #[serde(default)]
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub revoked_by: Option<String>,
    #[serde(default)]
    pub revoke_reason: Option<String>,
}

fn parse(raw: &Value) -> anyhow::Result<Request> {
    Request::deserialize(raw).context("unexpected access request from the control plane")
}

/// `--duration 1h`, `--timeout 30m`: humantime (`90s`, `1h30m`, `2days`), whole seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 1h, 30m or 90s ({e})"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{raw:?}: use whole seconds"));
    }
    if d.is_zero() {
        return Err(format!("{raw:?}: the duration must be positive"));
    }
    Ok(d)
}

/// `--scope operation=read`: one key and its value.
pub fn parse_scope(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("{raw:?} is not KEY=VALUE (e.g. operation=read)")),
    }
}

/// The scopes object of a request body; a key given twice is a mistake, not an override.
pub fn scopes_object(scopes: &[(String, String)]) -> Result<Value, Exit> {
    let mut obj = serde_json::Map::new();
    for (k, v) in scopes {
        if obj.insert(k.clone(), Value::String(v.clone())).is_some() {
            return Err(Exit::usage(format!("--scope {k}=… given twice")));
        }
    }
    Ok(Value::Object(obj))
}

/// Everything an access command needs.
pub struct Ctx {
    pub client: Client,
    pub output: Output,
    pub color: bool,
    /// `--as`: the identity an API key acts for.
    pub as_identity: Option<String>,
}

/// Which requests `list` shows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Which {
    /// The server's default: for a person, their own requests and those they may decide;
    /// for a key, all of the org's.
    Default,
    Mine,
    ToApprove,
    All,
}

/// What a decision does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verb {
    Approve,
    Deny,
    Revoke,
    Cancel,
}

impl Verb {
    fn path(self) -> &'static str {
        match self {
            Verb::Approve => "approve",
            Verb::Deny => "deny",
            Verb::Revoke => "revoke",
            Verb::Cancel => "cancel",
        }
    }
}

/// `request`'s arguments.
pub struct NewRequest {
    pub resource: String,
    pub duration: Duration,
    pub reason: String,
    pub scopes: Vec<(String, String)>,
    pub wait: bool,
    pub timeout: Option<Duration>,
}

impl Ctx {
    fn print_json(&self, v: &Value) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }

    /// The identity this command acts as: `--as`, or the person the token belongs to.
    async fn my_name(&self, what: &str) -> anyhow::Result<String> {
        if let Some(name) = &self.as_identity {
            return Ok(name.clone());
        }
        let (who, _) = whoami(&self.client).await?;
        match who.identity() {
            Some(name) => Ok(name.to_string()),
            None => Err(Exit::usage(format!(
                "{what} needs to know who you are: signed in with a key ({}), name the \
                 identity with --as <identity>",
                who.actor
            ))
            .into()),
        }
    }

    pub async fn request(&self, new: NewRequest) -> anyhow::Result<u8> {
        let mut body = json!({
            "resource": new.resource,
            "reason": new.reason,
            "requested_duration_s": new.duration.as_secs(),
            "scopes": scopes_object(&new.scopes)?,
        });
        if let Some(name) = &self.as_identity {
            body["requester"] = json!(name);
        }
        let raw: Value = self
            .client
            .post_json("/api/v1/access-requests", &body)
            .await?;
        let r = parse(&raw)?;
        if !new.wait {
            if self.output == Output::Json {
                self.print_json(&raw)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "Requested {} on {} for {}: request {} is {}.",
                    if r.scopes.as_object().is_some_and(|o| !o.is_empty()) {
                        format!("access ({})", scopes_text(&r.scopes))
                    } else {
                        "access".to_string()
                    },
                    sanitize(&r.resource),
                    humantime::format_duration(Duration::from_secs(
                        r.requested_duration_s.max(0) as u64
                    )),
                    r.id,
                    r.status
                )?;
                if r.status == "pending" {
                    writeln!(
                        out,
                        "An approver has until {} ({}) to decide. Follow it with: gate access wait {}",
                        timestamp_ms(r.pending_expires_at),
                        relative_ms(r.pending_expires_at, now_ms()),
                        r.id
                    )?;
                }
            }
            return Ok(exit::OK);
        }
        if self.output == Output::Table {
            // A reader gone already does not stop the wait (nor change its exit code).
            let _ = writeln!(
                std::io::stdout(),
                "Requested access to {} for {}: request {}.",
                sanitize(&r.resource),
                humantime::format_duration(Duration::from_secs(
                    r.requested_duration_s.max(0) as u64
                )),
                r.id
            );
        } else {
            eprintln!("request {} is {}", r.id, r.status);
        }
        self.wait_for(raw, new.timeout).await
    }

    /// `gate access wait ID`.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> anyhow::Result<u8> {
        let raw = self.get_raw(id).await?;
        self.wait_for(raw, timeout).await
    }

    async fn get_raw(&self, id: &str) -> anyhow::Result<Value> {
        self.client
            .get_json(&format!("/api/v1/access-requests/{}", encode(id)), &[])
            .await
    }

    /// Polls until the request is decided (or ends otherwise), shows the outcome and
    /// returns its exit code. Ctrl-C or `timeout` stop waiting with the request still
    /// pending (exit 130 or 8; with `--output json` the pending request is printed).
    async fn wait_for(&self, mut raw: Value, timeout: Option<Duration>) -> anyhow::Result<u8> {
        // From here on Ctrl-C stops waiting instead of killing the process, also while a
        // poll hangs on an unresponsive control plane.
        let mut interrupt = Interrupt::new();
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let mut r = parse(&raw)?;
        let id = r.id.clone();
        let mut progress = Progress::new(
            self.output == Output::Table && std::io::stdout().is_terminal(),
            self.color,
        );
        let mut next_poll = Instant::now() + POLL_EVERY;
        let mut trouble: Option<String> = None;
        while r.status == "pending" {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                progress.clear();
                let printed = self.print_pending(&raw);
                eprintln!(
                    "gate: gave up waiting after {}: request {id} is still pending (`gate access \
                     wait {id}` keeps waiting, `gate access cancel {id}` withdraws it)",
                    humantime::format_duration(timeout.unwrap_or_default())
                );
                return keep_code(printed, exit::TIMED_OUT);
            }
            progress.show(&r, started.elapsed(), trouble.as_deref());
            let mut wake = if progress.spinner {
                now + FRAME_EVERY
            } else {
                next_poll
            };
            wake = wake.min(next_poll);
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::select! {
                _ = interrupt.recv() => return self.stop_waiting(&mut progress, &raw, &id),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() < next_poll {
                continue;
            }
            next_poll = Instant::now() + POLL_EVERY;
            let polled = tokio::select! {
                _ = interrupt.recv() => return self.stop_waiting(&mut progress, &raw, &id),
                polled = self.get_raw(&id) => polled,
            };
            match polled {
                Ok(v) => {
                    raw = v;
                    r = parse(&raw)?;
                    trouble = None;
                }
                Err(e) if is_fatal(&e) => {
                    progress.clear();
                    return Err(e);
                }
                // The control plane restarting or a network blip: keep asking.
                Err(e) => trouble = Some(format!("{e:#}")),
            }
        }
        progress.clear();
        let code = outcome_code(&r.status);
        if self.output == Output::Json {
            return keep_code(self.print_json(&raw), code);
        }
        let hint = if r.status == "approved" {
            self.protocol_of(&r.resource).await
        } else {
            None
        };
        let mut out = std::io::stdout().lock();
        let printed = write_outcome(&mut out, &r, hint.as_deref(), now_ms())
            .and_then(|()| out.flush())
            .map_err(anyhow::Error::from);
        keep_code(printed, code)
    }

    /// With `--output json`, the request as it is when waiting stops.
    fn print_pending(&self, raw: &Value) -> anyhow::Result<()> {
        if self.output == Output::Json {
            self.print_json(raw)
        } else {
            Ok(())
        }
    }

    /// Ctrl-C while waiting: the request stays pending.
    fn stop_waiting(&self, progress: &mut Progress, raw: &Value, id: &str) -> anyhow::Result<u8> {
        progress.clear();
        let printed = self.print_pending(raw);
        eprintln!(
            "gate: stopped waiting: request {id} is still pending (`gate access wait {id}` \
             resumes, `gate access cancel {id}` withdraws it)"
        );
        keep_code(printed, exit::INTERRUPTED)
    }

    /// The resource's protocol, when the credentials may read resources (keys may; a
    /// person's token may not, and then the hint stays generic).
    async fn protocol_of(&self, resource: &str) -> Option<String> {
        let list: Value = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.get_json("/api/v1/resources", &[]),
        )
        .await
        .ok()?
        .ok()?;
        list["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == resource)
            .and_then(|r| r["protocol"].as_str())
            .map(str::to_string)
    }

    pub async fn list(
        &self,
        which: Which,
        status: Option<String>,
        resource: Option<String>,
    ) -> anyhow::Result<u8> {
        let mut query: Vec<(&str, String)> = Vec::new();
        match which {
            Which::Mine => query.push(("mine", self.my_name("--mine").await?)),
            Which::ToApprove => query.push(("to_approve", self.my_name("--to-approve").await?)),
            Which::Default | Which::All => {}
        }
        if let Some(s) = status {
            query.push(("status", s));
        }
        if let Some(r) = resource {
            query.push(("resource", r));
        }
        let body: Value = self
            .client
            .get_json("/api/v1/access-requests", &query)
            .await?;
        let list = body["access_requests"]
            .as_array()
            .cloned()
            .context("unexpected answer from the control plane: no access_requests")?;
        if self.output == Output::Json {
            return self.print_json(&Value::Array(list)).map(|()| exit::OK);
        }
        let mut out = std::io::stdout().lock();
        if list.is_empty() {
            writeln!(out, "No access requests.")?;
            return Ok(exit::OK);
        }
        let now = now_ms();
        let rows = list
            .iter()
            .map(|raw| parse(raw).map(|r| list_row(&r, now)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        write_table(&mut out, &LIST_HEADERS, &rows, self.color, false)?;
        out.flush()?;
        Ok(exit::OK)
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<u8> {
        let raw = self.get_raw(id).await?;
        if self.output == Output::Json {
            self.print_json(&raw)?;
        } else {
            let mut out = std::io::stdout().lock();
            write_details(&mut out, &parse(&raw)?, now_ms())?;
            out.flush()?;
        }
        Ok(exit::OK)
    }

    pub async fn decide(&self, verb: Verb, id: &str, reason: String) -> anyhow::Result<u8> {
        let mut body = json!({ "reason": reason });
        if let Some(name) = &self.as_identity {
            body["approver"] = json!(name);
        }
        let raw: Value = self
            .client
            .post_json(
                &format!("/api/v1/access-requests/{}/{}", encode(id), verb.path()),
                &body,
            )
            .await?;
        if self.output == Output::Json {
            self.print_json(&raw)?;
            return Ok(exit::OK);
        }
        let r = parse(&raw)?;
        let (requester, resource) = (sanitize(&r.requester), sanitize(&r.resource));
        let now = now_ms();
        let id = &r.id;
        let line = match verb {
            Verb::Approve => match r.expires_at {
                Some(t) => format!(
                    "Approved request {id}: {requester} may use {resource} until {} ({}).",
                    timestamp_ms(t),
                    expires_text(t, now)
                ),
                None => format!("Approved request {id}: {requester} may use {resource}."),
            },
            Verb::Deny => format!("Denied request {id}: {requester} may not use {resource}."),
            Verb::Revoke => {
                format!("Revoked request {id}: {requester}'s access to {resource} has ended.")
            }
            Verb::Cancel => format!("Cancelled request {id} for {resource}."),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(exit::OK)
    }
}

/// The exit code of a wait, even when its output could not be written because the reader
/// went away (`gate access wait ID | head -1`): a denial must not turn into exit 0. Other
/// write errors are errors.
fn keep_code(printed: anyhow::Result<()>, code: u8) -> anyhow::Result<u8> {
    match printed {
        Err(e) if !is_broken_pipe(&e) => Err(e),
        _ => Ok(code),
    }
}

/// Ctrl-C (SIGINT), caught from the moment this is made until the process ends.
struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    fn new() -> Interrupt {
        Interrupt {
            // Registered now, not when first awaited: a Ctrl-C in between is not lost. If
            // it cannot be registered, Ctrl-C keeps its default effect (exit by SIGINT).
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on Ctrl-C.
    async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(s) => {
                if s.recv().await.is_some() {
                    return;
                }
                std::future::pending::<()>().await
            }
            None => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

/// Errors that waiting longer will not fix: the caller's (4xx), except a timeout or rate
/// limit.
fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::api::ApiError>()
            .is_some_and(|a| a.status.is_client_error() && !matches!(a.status.as_u16(), 408 | 429))
            || c.downcast_ref::<Exit>().is_some()
    })
}

/// The exit code of a request's final state.
pub fn outcome_code(status: &str) -> u8 {
    match status {
        "approved" => exit::OK,
        "denied" => exit::DENIED,
        "expired" | "cancelled" | "revoked" => exit::ENDED,
        _ => exit::ERROR,
    }
}

fn expires_text(t: i64, now: i64) -> String {
    if t > now {
        format!("expires {}", relative_ms(t, now))
    } else {
        format!("expired {}", relative_ms(t, now))
    }
}

/// `operation=read, target=…` (or `everything`).
fn scopes_text(scopes: &Value) -> String {
    match scopes.as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{}={}", sanitize(k), sanitize(s)),
                None => format!("{}={}", sanitize(k), v),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "everything".to_string(),
    }
}

fn by(who: &Option<String>, why: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(w) = who.as_deref().filter(|w| !w.is_empty()) {
        s.push_str(&format!(" by {}", sanitize(w)));
    }
    if let Some(r) = why.as_deref().filter(|r| !r.is_empty()) {
        s.push_str(&format!(": {}", sanitize(r)));
    }
    s
}

/// What `--wait` prints once the request is no longer pending.
pub fn write_outcome(
    out: &mut impl Write,
    r: &Request,
    protocol: Option<&str>,
    now: i64,
) -> std::io::Result<()> {
    let resource = sanitize(&r.resource);
    match r.status.as_str() {
        "approved" => {
            writeln!(out, "Approved{}.", by(&r.decided_by, &r.decision_reason))?;
            match r.expires_at {
                Some(t) => {
                    writeln!(
                        out,
                        "Access to {resource} until {} ({}).",
                        timestamp_ms(t),
                        expires_text(t, now)
                    )?;
                    writeln!(
                        out,
                        "Connect through Gate as usual: your grant lasts until {}.",
                        timestamp_ms(t)
                    )?;
                }
                None => writeln!(out, "Connect to {resource} through Gate as usual.")?,
            }
            if let Some(hint) = protocol.and_then(|p| connect_hint(p, &r.requester, &r.resource)) {
                writeln!(out, "  {hint}")?;
            }
        }
        "denied" => writeln!(
            out,
            "Denied{}. Request {} for {resource} is closed.",
            by(&r.decided_by, &r.decision_reason),
            r.id
        )?,
        "expired" => writeln!(
            out,
            "Expired: nobody decided request {} for {resource} by {}.",
            r.id,
            timestamp_ms(r.pending_expires_at)
        )?,
        "cancelled" => writeln!(
            out,
            "Cancelled{}. Request {} for {resource} is closed.",
            by(&r.decided_by, &r.decision_reason),
            r.id
        )?,
        "revoked" => writeln!(
            out,
            "Revoked{}. Request {} for {resource} is closed.",
            by(&r.revoked_by, &r.revoke_reason),
            r.id
        )?,
        other => writeln!(out, "Request {} is {}.", r.id, sanitize(other))?,
    }
    Ok(())
}

/// How to connect, by protocol. The CLI does not know the gateway's address.
fn connect_hint(protocol: &str, user: &str, resource: &str) -> Option<String> {
    let (user, resource) = (sanitize(user), sanitize(resource));
    Some(match protocol {
        "postgres" => format!(
            "psql \"host=<gateway> port=<port> dbname={resource} user={user} sslmode=require\"   \
             (password: your Gate token)"
        ),
        "mysql" => format!(
            "mysql -h <gateway> -P <port> -u {user} -p --ssl-mode=REQUIRED {resource}   \
             (password: your Gate token)"
        ),
        "ssh" => format!("ssh -p <port> {user}%{resource}@<gateway>"),
        _ => return None,
    })
}

const LIST_HEADERS: [&str; 8] = [
    "ID",
    "STATUS",
    "REQUESTER",
    "RESOURCE",
    "DURATION",
    "CREATED",
    "EXPIRES",
    "REASON",
];

fn list_row(r: &Request, now: i64) -> Vec<String> {
    let expires = match r.status.as_str() {
        "pending" => format!("{} if undecided", relative_ms(r.pending_expires_at, now)),
        "approved" => r
            .expires_at
            .map(|t| relative_ms(t, now))
            .unwrap_or_else(|| "-".into()),
        _ => "-".into(),
    };
    vec![
        r.id.clone(),
        sanitize(&r.status),
        sanitize(&r.requester),
        sanitize(&r.resource),
        approx(Duration::from_secs(r.requested_duration_s.max(0) as u64)),
        relative_ms(r.created_at, now),
        expires,
        truncate(&sanitize(&r.reason), 40),
    ]
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `gate access get`: one field a line.
pub fn write_details(out: &mut impl Write, r: &Request, now: i64) -> std::io::Result<()> {
    let at = |t: i64| format!("{} ({})", timestamp_ms(t), relative_ms(t, now));
    let mut lines: Vec<(&str, String)> = vec![
        ("ID", r.id.clone()),
        ("Status", sanitize(&r.status)),
        ("Requester", sanitize(&r.requester)),
        ("Resource", sanitize(&r.resource)),
        (
            "Duration",
            humantime::format_duration(Duration::from_secs(r.requested_duration_s.max(0) as u64))
                .to_string(),
        ),
        ("Scopes", scopes_text(&r.scopes)),
        ("Reason", sanitize(&r.reason)),
        ("Created", at(r.created_at)),
    ];
    if r.status == "pending" {
        lines.push(("Decide by", at(r.pending_expires_at)));
    }
    if let Some(t) = r.decided_at {
        let verb = match r.status.as_str() {
            "cancelled" => "Cancelled",
            "denied" => "Denied",
            "expired" => "Expired",
            _ => "Approved",
        };
        lines.push((
            verb,
            format!("{}{}", at(t), by(&r.decided_by, &r.decision_reason)),
        ));
    }
    if let Some(t) = r.expires_at {
        lines.push(("Expires", at(t)));
    }
    if let Some(t) = r.revoked_at {
        lines.push((
            "Revoked",
            format!("{}{}", at(t), by(&r.revoked_by, &r.revoke_reason)),
        ));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in lines {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

/// The `--wait` display: a spinner redrawn in place on a terminal, plain lines on stderr
/// otherwise (one when waiting starts, one a minute, one on trouble).
struct Progress {
    spinner: bool,
    color: bool,
    frame: usize,
    drawn: bool,
    last_line: Option<Instant>,
    last_trouble: Option<String>,
}

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    fn new(spinner: bool, color: bool) -> Progress {
        Progress {
            spinner,
            color,
            frame: 0,
            drawn: false,
            last_line: None,
            last_trouble: None,
        }
    }

    fn show(&mut self, r: &Request, waited: Duration, trouble: Option<&str>) {
        let now = now_ms();
        let expires = relative_ms(r.pending_expires_at, now);
        if self.spinner {
            // Short enough not to wrap: a wrapped line cannot be redrawn in place.
            let frame = FRAMES[self.frame % FRAMES.len()];
            self.frame += 1;
            let (dim, reset) = if self.color {
                ("\x1b[2m", "\x1b[0m")
            } else {
                ("", "")
            };
            let trouble = if trouble.is_some() {
                format!(" {dim}[control plane not answering, retrying]{reset}")
            } else {
                String::new()
            };
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "\r\x1b[2K{frame} waiting for an approver ({}; the request expires {expires} if \
                 undecided){trouble}",
                approx(waited)
            );
            let _ = out.flush();
            self.drawn = true;
            return;
        }
        if let Some(t) = trouble
            && self.last_trouble.as_deref() != Some(t)
        {
            eprintln!("gate: control plane not answering, retrying: {t}");
        }
        self.last_trouble = trouble.map(str::to_string);
        if self
            .last_line
            .is_none_or(|l| l.elapsed() >= Duration::from_secs(60))
        {
            eprintln!(
                "waiting for an approver: request {} is {} on {} ({} so far; expires {expires} if \
                 undecided)",
                r.id,
                r.status,
                sanitize(&r.resource),
                approx(waited),
            );
            self.last_line = Some(Instant::now());
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_humantime_in_whole_seconds() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2days"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(
            parse_duration("1500ms")
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(parse_duration("3600").is_err(), "a unit is needed");
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1h").is_err());
    }

    #[test]
    fn scopes_are_key_value_pairs() {
        assert_eq!(
            parse_scope("operation=read"),
            Ok(("operation".into(), "read".into()))
        );
        assert_eq!(
            parse_scope("target = tools/* "),
            Ok(("target".into(), "tools/*".into()))
        );
        assert!(parse_scope("operation").is_err());
        assert!(parse_scope("=read").is_err());
        assert!(parse_scope("operation=").is_err());
        let pairs = vec![
            ("operation".to_string(), "tool".to_string()),
            ("target".to_string(), "deploy_*".to_string()),
        ];
        assert_eq!(
            scopes_object(&pairs).unwrap(),
            json!({"operation": "tool", "target": "deploy_*"})
        );
        assert_eq!(scopes_object(&[]).unwrap(), json!({}));
        let twice = vec![
            ("operation".to_string(), "read".to_string()),
            ("operation".to_string(), "tool".to_string()),
        ];
        assert_eq!(scopes_object(&twice).unwrap_err().code, exit::USAGE);
    }

    #[test]
    fn a_reader_gone_does_not_change_the_outcome_of_a_wait() {
        let gone = || {
            Err(anyhow::Error::from(std::io::Error::from(
                std::io::ErrorKind::BrokenPipe,
            )))
        };
        assert_eq!(keep_code(gone(), exit::DENIED).unwrap(), exit::DENIED);
        assert_eq!(keep_code(Ok(()), exit::TIMED_OUT).unwrap(), exit::TIMED_OUT);
        let full = Err(anyhow::Error::from(std::io::Error::other("disk full")));
        assert!(keep_code(full, exit::OK).is_err());
    }

    #[test]
    fn final_states_map_to_exit_codes() {
        assert_eq!(outcome_code("approved"), 0);
        assert_eq!(outcome_code("denied"), 6);
        for s in ["expired", "cancelled", "revoked"] {
            assert_eq!(outcome_code(s), 7);
        }
    }

    fn sample(status: &str) -> Request {
        let now: i64 = 1_700_000_000_000;
        parse(&json!({
            "id": "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee",
            "org_id": "o",
            "requester": "alice",
            "resource": "primary-db",
            "reason": "incident 42",
            "requested_duration_s": 3600,
            "scopes": {"operation": "read"},
            "status": status,
            "created_at": now - 60_000,
            "decided_at": now,
            "decided_by": "bob",
            "decision_reason": "go ahead",
            "expires_at": now + 3_540_000,
            "pending_expires_at": now + 3_540_000,
            "revoked_at": null,
            "revoked_by": null,
            "revoke_reason": null,
        }))
        .unwrap()
    }

    #[test]
    fn an_approval_says_until_when_and_how_to_connect() {
        let now = 1_700_000_000_000;
        let mut out = Vec::new();
        write_outcome(&mut out, &sample("approved"), Some("postgres"), now).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Approved by bob: go ahead."), "{text}");
        assert!(
            text.contains("until 2023-11-14T23:12:20Z (expires in 59m)"),
            "{text}"
        );
        assert!(text.contains("dbname=primary-db user=alice"), "{text}");

        let mut out = Vec::new();
        write_details(&mut out, &sample("approved"), now).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Scopes     operation=read"), "{text}");
        assert!(
            text.contains("Created    2023-11-14T22:12:20Z (1m ago)"),
            "{text}"
        );
        assert!(text.contains("Approved   2023-11-14T22:13:20Z (now) by bob: go ahead"));
    }
}
