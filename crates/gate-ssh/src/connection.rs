//! One client connection: SSH authentication against Gate identities, the pipeline
//! session, the upstream login, and every channel and request the client opens.
//!
//! Order of events:
//! 1. The client authenticates with a registered public key, or a Gate token typed at a
//!    keyboard-interactive (or password) prompt. The user name says who and where:
//!    `identity%resource` on the shared listener, just `identity` on a resource's own port.
//! 2. Once authenticated, the pipeline opens the session (`session` policy with
//!    `input.ssh`), and Gate logs in upstream with the resource's credentials after
//!    checking the upstream's pinned host key.
//! 3. Each channel is mirrored upstream. Requests (pty, env, shell, exec, subsystem) are
//!    forwarded in order and the upstream's reply is passed back; exec/subsystem/shell and
//!    port forwards go through `pre_request` first.
//!
//! A refusal after authentication (session policy, unknown resource, upstream down) cannot
//! be told through SSH authentication itself, so the client is let in and every shell or
//! command it asks for gets the reason on stderr and exit status 1; then the connection is
//! closed with the reason as the disconnect message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gate_core::config::ResourceConfig;
use gate_core::{Decision, Identity, Protocol, RequestFacts, SshFacts};
use gate_pipeline::{ChannelOutcome, ClientInfo, Pipeline, Session};
use gate_recording::{TerminalHeader, TerminalRecorder};
use russh::server::{self, Auth, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, Pty, Sig};
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use crate::relay::{self, Activity, ChannelStats};
use crate::upstream::{ForwardedConnection, Upstream};
use crate::{ResourceSsh, SshShared};

/// How long a forwarded request may wait for the upstream's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The separator between identity and resource in the SSH user name.
pub const USER_SEPARATOR: char = '%';

/// Per-connection state; russh calls its methods from the connection's task.
pub struct Connection {
    shared: Arc<SshShared>,
    client: ClientInfo,
    /// The resource of a dedicated listener.
    dedicated: Option<Arc<str>>,
    /// The name as the client sent it, once it authenticated.
    login_user: String,
    identity: Option<(Identity, Arc<ResourceConfig>)>,
    state: State,
    channels: HashMap<ChannelId, Arc<ChannelCtl>>,
    activity: Arc<Activity>,
    forwarded_tx: Option<mpsc::Sender<ForwardedConnection>>,
    /// What must be closed when the connection ends; shared with [`crate::SshHandler`],
    /// which outlives this handler (russh drops it when the connection ends).
    end: Arc<EndState>,
}

/// What is left to close when a connection ends.
#[derive(Default)]
pub(crate) struct EndState {
    session: std::sync::Mutex<Option<Arc<Session>>>,
    upstream: std::sync::Mutex<Option<Arc<Upstream>>>,
    /// Per-channel tasks; each holds the session until its channel is recorded.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set when the client never authenticated after trying: audit it once.
    failed_login: std::sync::Mutex<Option<String>>,
}

impl EndState {
    fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open session, for termination watchdogs.
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        Self::lock(&self.session).clone()
    }

    /// Ends everything: the upstream, the channels' records, the pipeline session.
    pub(crate) async fn finish(&self, pipeline: &Pipeline, client: &ClientInfo, reason: &str) {
        let upstream = Self::lock(&self.upstream).take();
        if let Some(up) = upstream {
            let _ = up
                .handle
                .disconnect(Disconnect::ByApplication, "session ended", "")
                .await;
        }
        let tasks = std::mem::take(&mut *Self::lock(&self.tasks));
        for t in tasks {
            // The upstream is gone, so relays end promptly; bound it anyway.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let session = Self::lock(&self.session).take();
        if let Some(session) = session {
            match Arc::try_unwrap(session) {
                Ok(session) => session.close(reason).await,
                Err(_) => {
                    tracing::warn!("SSH session still referenced at close; it closes when released")
                }
            }
        }
        let failed = Self::lock(&self.failed_login).take();
        if let Some(user) = failed {
            pipeline
                .audit_refused(
                    client,
                    Some(&user),
                    "SSH authentication failed (no accepted key or token)",
                )
                .await;
        }
    }
}

enum State {
    /// Not authenticated yet.
    Connecting,
    /// Authenticated but refused: why (shown on stderr of every channel, then disconnect).
    Refused(String),
    Open(Box<Live>),
}

struct Live {
    session: Arc<Session>,
    upstream: Arc<Upstream>,
    resource: Arc<ResourceSsh>,
}

/// One client session channel and its upstream twin.
struct ChannelCtl {
    upstream: Arc<russh::ChannelWriteHalf<russh::client::Msg>>,
    replies: Mutex<mpsc::Receiver<bool>>,
    stats: Arc<ChannelStats>,
    recorder: Arc<Mutex<Option<TerminalRecorder>>>,
    /// Set by pty-req: `(TERM, cols, rows)`.
    pty: std::sync::Mutex<Option<(String, u32, u32)>>,
    /// The request that started the channel and its decision, for the channel's record.
    started: std::sync::Mutex<Option<(RequestFacts, Decision, Instant)>>,
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<SshShared>,
        peer: SocketAddr,
        dedicated: Option<Arc<str>>,
        end: Arc<EndState>,
        activity: Arc<Activity>,
    ) -> Connection {
        Connection {
            shared,
            client: ClientInfo {
                addr: peer,
                protocol: Protocol::Ssh,
                tls: false,
            },
            dedicated,
            login_user: String::new(),
            identity: None,
            state: State::Connecting,
            channels: HashMap::new(),
            activity,
            forwarded_tx: None,
            end,
        }
    }

    fn pipeline(&self) -> &Arc<Pipeline> {
        &self.shared.pipeline
    }

    /// `(identity, resource)` from the SSH user name.
    fn split_user<'a>(&'a self, user: &'a str) -> Option<(&'a str, &'a str)> {
        match (user.rsplit_once(USER_SEPARATOR), &self.dedicated) {
            (Some((id, res)), Some(d)) if res == &**d => Some((id, res)),
            (Some(_), Some(_)) => None,
            (None, Some(d)) => Some((user, d)),
            (Some((id, res)), None) if !id.is_empty() && !res.is_empty() => Some((id, res)),
            _ => None,
        }
    }

    fn ssh_facts(&self, channel: &str, command: Option<String>) -> SshFacts {
        let (resource, upstream_user) = match &self.identity {
            Some((_, r)) => (r.name.clone(), r.credentials.username.clone()),
            None => (String::new(), String::new()),
        };
        SshFacts {
            user: self.login_user.clone(),
            upstream_user,
            resource,
            client_addr: self.client.addr.to_string(),
            channel: channel.to_string(),
            command,
        }
    }

    /// Accepts an authenticated identity for a resource (the session opens right after, in
    /// `auth_succeeded`, where a refusal can still be explained to the user).
    fn admit(&mut self, user: &str, identity: Identity, resource: &str) {
        self.login_user = user.to_string();
        match self.pipeline().resource(resource) {
            Some(r) if r.protocol == Protocol::Ssh => {
                self.identity = Some((identity, r.clone()));
            }
            _ => {
                self.identity = None;
                self.state = State::Refused(format!(
                    "unknown SSH resource {resource:?} (connect as identity{USER_SEPARATOR}resource)"
                ));
            }
        }
    }

    async fn open(&mut self) {
        let Some((identity, resource)) = self.identity.clone() else {
            if let State::Refused(reason) = &self.state {
                self.pipeline()
                    .audit_refused(&self.client, Some(&self.login_user), reason)
                    .await;
            }
            return;
        };
        let ssh = match self.shared.prepare(&resource) {
            Ok(ssh) => ssh,
            Err(why) => {
                tracing::error!(resource = %resource.name, error = %why, "SSH resource cannot be served");
                self.state = State::Refused(format!(
                    "resource {} is misconfigured on this gateway; tell its operator",
                    resource.name
                ));
                return;
            }
        };
        let facts = RequestFacts::Ssh(self.ssh_facts("session", None));
        let session = match self
            .pipeline()
            .open_session_with(self.client.clone(), identity, resource.clone(), Some(facts))
            .await
        {
            Ok(s) => s,
            Err(denied) => {
                self.state = State::Refused(format!("access denied: {}", denied.reason));
                return;
            }
        };
        match Upstream::connect(
            self.shared.client_config.clone(),
            &resource.host,
            resource.port,
            &ssh.pin,
            &resource.credentials.username,
            &ssh.credential,
        )
        .await
        {
            Ok(upstream) => {
                let (session, upstream) = (Arc::new(session), Arc::new(upstream));
                *EndState::lock(&self.end.session) = Some(session.clone());
                *EndState::lock(&self.end.upstream) = Some(upstream.clone());
                self.state = State::Open(Box::new(Live {
                    session,
                    upstream,
                    resource: ssh,
                }));
            }
            Err(why) => {
                tracing::warn!(session = %session.id, resource = %resource.name, error = %why, "upstream SSH connection failed");
                let reason = format!("upstream {} unavailable: {why}", resource.name);
                session.close(&reason).await;
                self.state = State::Refused(reason);
            }
        }
    }

    fn live(&self) -> Option<&Live> {
        match &self.state {
            State::Open(live) => Some(live),
            _ => None,
        }
    }

    fn refusal(&self) -> Option<&str> {
        match &self.state {
            State::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Tells the client why on the channel's stderr, exit status 1, closes the channel.
    fn refuse_on_channel(session: &mut server::Session, channel: ChannelId, why: &str) {
        let _ = session.channel_success(channel);
        let _ = session.extended_data(channel, 1, format!("gate: {why}\r\n").into_bytes());
        let _ = session.exit_status_request(channel, 1);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }

    /// Forwards a request upstream (by `send`) and passes the upstream's reply back.
    async fn forward_request<F, Fut>(
        &self,
        channel: ChannelId,
        session: &mut server::Session,
        send: F,
    ) where
        F: FnOnce(Arc<russh::ChannelWriteHalf<russh::client::Msg>>) -> Fut,
        Fut: std::future::Future<Output = Result<(), russh::Error>>,
    {
        let Some(ctl) = self.channels.get(&channel).cloned() else {
            let _ = session.channel_failure(channel);
            return;
        };
        let ok = match send(ctl.upstream.clone()).await {
            Ok(()) => {
                let mut replies = ctl.replies.lock().await;
                matches!(
                    tokio::time::timeout(REPLY_TIMEOUT, replies.recv()).await,
                    Ok(Some(true))
                )
            }
            Err(_) => false,
        };
        let _ = if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        };
    }

    /// Runs `pre_request` for a channel's starting request. `false`: refused (the client
    /// has been told).
    async fn admit_request(
        &self,
        channel: ChannelId,
        kind: &str,
        command: Option<String>,
        session: &mut server::Session,
    ) -> bool {
        if let Some(why) = self.refusal() {
            Self::refuse_on_channel(session, channel, why);
            return false;
        }
        let (Some(live), Some(ctl)) = (self.live(), self.channels.get(&channel)) else {
            let _ = session.channel_failure(channel);
            return false;
        };
        let facts = RequestFacts::Ssh(self.ssh_facts(kind, command));
        let decision = live.session.decide_request(&facts).await;
        if decision.is_block() {
            let why = format!("blocked by policy: {}", decision.block_reason());
            live.session
                .record_request(&facts, &decision, ChannelOutcome::default())
                .await;
            Self::refuse_on_channel(session, channel, &why);
            let _ = ctl.upstream.close().await;
            return false;
        }
        *ctl.started.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((facts, decision, Instant::now()));
        true
    }

    /// Starts the asciicast recording of an interactive channel.
    async fn start_terminal_recording(&self, channel: ChannelId, command: Option<String>) {
        let (Some(live), Some(ctl)) = (self.live(), self.channels.get(&channel)) else {
            return;
        };
        let Some((term, cols, rows)) = ctl.pty.lock().unwrap_or_else(|e| e.into_inner()).clone()
        else {
            return; // no PTY: not a terminal session (exec output is counted, not recorded)
        };
        let session = &live.session;
        let recorder = session.recordings().terminal(TerminalHeader {
            recording_id: Uuid::now_v7(),
            session_id: session.id,
            protocol: Protocol::Ssh.to_string(),
            resource: session.resource.name.clone(),
            user: session.audit_user(),
            width: cols,
            height: rows,
            command,
            title: format!("{}@{}", session.identity.name, session.resource.name),
            env: vec![("TERM".into(), term)],
            record_input: live.resource.record_input,
            started_at: SystemTime::now(),
        });
        *ctl.recorder.lock().await = Some(recorder);
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(methods()),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some((identity, _)) = self.split_user(user) else {
            self.note_failure(user);
            return Ok(reject());
        };
        let blob = public_key_blob(offer.public_key);
        let known = self
            .pipeline()
            .authenticate_ssh_key(identity, &blob)
            .is_ok();
        if known {
            Ok(Auth::Accept)
        } else {
            // Clients offer every key they have; one audit event per connection that never
            // gets in is enough (see `EndState::finish`).
            self.note_failure(user);
            Ok(reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some((name, resource)) = self.split_user(user) else {
            self.note_failure(user);
            return Ok(reject());
        };
        let blob = public_key_blob(key.public_key);
        match self.pipeline().authenticate_ssh_key(name, &blob) {
            Ok(identity) => {
                let resource = resource.to_string();
                self.admit(user, identity, &resource);
                self.note_success();
                Ok(Auth::Accept)
            }
            Err(_) => {
                self.note_failure(user);
                Ok(reject())
            }
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some((name, _)) = self.split_user(user) else {
            self.note_failure(user);
            return Ok(reject());
        };
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: "Gate".into(),
                instructions: "".into(),
                prompts: vec![(format!("Gate token for {name}: ").into(), false)].into(),
            });
        };
        let token = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.check_token(user, &token).await
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.check_token(user, password).await
    }

    async fn auth_succeeded(&mut self, _session: &mut server::Session) -> Result<(), Self::Error> {
        self.activity.touch();
        self.open().await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if self.refusal().is_some() {
            // Accepted only to say why on stderr when the client asks for a shell/command.
            reply.accept().await;
            // Nothing is relayed on a refused session's channel: `admit_request` answers its
            // shell/exec/subsystem request with the refusal.
            return Ok(());
        }
        let Some((pipeline_session, upstream)) =
            self.live().map(|l| (l.session.clone(), l.upstream.clone()))
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let upstream = match upstream.handle.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(session = %pipeline_session.id, error = %e, "upstream refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let (client_read, client_write) = channel.split();
        let (up_read, up_write) = upstream.split();
        let up_write = Arc::new(up_write);
        let (reply_tx, reply_rx) = mpsc::channel(16);
        let ctl = Arc::new(ChannelCtl {
            upstream: up_write.clone(),
            replies: Mutex::new(reply_rx),
            stats: ChannelStats::new(),
            recorder: Arc::new(Mutex::new(None)),
            pty: std::sync::Mutex::new(None),
            started: std::sync::Mutex::new(None),
        });
        let id = client_write.id();
        self.channels.insert(id, ctl.clone());
        let c2u = tokio::spawn(relay::client_to_upstream(
            client_read,
            up_write,
            ctl.stats.clone(),
            self.activity.clone(),
            ctl.recorder.clone(),
        ));
        let u2c = tokio::spawn(relay::upstream_to_client(
            up_read,
            Arc::new(client_write),
            session.handle(),
            ctl.stats.clone(),
            self.activity.clone(),
            ctl.recorder.clone(),
            reply_tx,
        ));
        let task = tokio::spawn(async move {
            let _ = u2c.await;
            let _ = c2u.await;
            finish_channel(&ctl, &pipeline_session).await;
        });
        EndState::lock(&self.end.tasks).push(task);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let target = format!("{host_to_connect}:{port_to_connect}");
        let facts = RequestFacts::Ssh(self.ssh_facts("direct-tcpip", Some(target.clone())));
        let decision = live.session.decide_request(&facts).await;
        if decision.is_block() {
            live.session
                .record_request(&facts, &decision, ChannelOutcome::default())
                .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let upstream = match live
            .upstream
            .handle
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(session = %live.session.id, %target, error = %e, "upstream refused a direct-tcpip channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        spawn_forward(
            live.session.clone(),
            facts,
            decision,
            channel,
            upstream,
            self.activity.clone(),
        );
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        let Some(live) = self.live() else {
            return Ok(false);
        };
        let facts =
            RequestFacts::Ssh(self.ssh_facts("tcpip-forward", Some(format!("{address}:{port}"))));
        let decision = live.session.decide_request(&facts).await;
        if decision.is_block() {
            live.session
                .record_request(&facts, &decision, ChannelOutcome::default())
                .await;
            return Ok(false);
        }
        let bound = match live.upstream.handle.tcpip_forward(address, *port).await {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(session = %live.session.id, address, port = *port, error = %e, "upstream refused a remote forward");
                return Ok(false);
            }
        };
        if *port == 0 {
            *port = bound;
        }
        // Connections the upstream forwards back are opened towards the client here.
        if self.forwarded_tx.is_none() {
            let (tx, mut rx) = mpsc::channel::<ForwardedConnection>(16);
            live.upstream.accept_forwarded(tx.clone());
            let handle = session.handle();
            let pipeline_session = live.session.clone();
            let activity = self.activity.clone();
            let base = self.ssh_facts("forwarded-tcpip", None);
            tokio::spawn(async move {
                while let Some(conn) = rx.recv().await {
                    let to_client = match handle
                        .channel_open_forwarded_tcpip(
                            conn.connected_address.clone(),
                            conn.connected_port,
                            conn.originator_address.clone(),
                            conn.originator_port,
                        )
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::info!(error = %e, "client refused a forwarded connection");
                            let _ = conn.channel.close().await;
                            continue;
                        }
                    };
                    let facts = RequestFacts::Ssh(SshFacts {
                        command: Some(format!(
                            "{}:{} from {}:{}",
                            conn.connected_address,
                            conn.connected_port,
                            conn.originator_address,
                            conn.originator_port
                        )),
                        ..base.clone()
                    });
                    spawn_forward(
                        pipeline_session.clone(),
                        facts,
                        Decision::allow(),
                        to_client,
                        conn.channel,
                        activity.clone(),
                    );
                }
            });
            live.session
                .record_request(&facts, &decision, ChannelOutcome::default())
                .await;
            self.forwarded_tx = Some(tx);
            return Ok(true);
        }
        live.session
            .record_request(&facts, &decision, ChannelOutcome::default())
            .await;
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        let Some(live) = self.live() else {
            return Ok(false);
        };
        Ok(live
            .upstream
            .handle
            .cancel_tcpip_forward(address, port)
            .await
            .is_ok())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctl) = self.channels.get(&channel) {
            *ctl.pty.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((term.to_string(), col_width, row_height));
        } else {
            // A refused session: pretend the PTY is fine; the shell request says why.
            let _ = session.channel_success(channel);
            return Ok(());
        }
        let term = term.to_string();
        let modes = modes.to_vec();
        self.forward_request(channel, session, |up| async move {
            up.request_pty(
                true, &term, col_width, row_height, pix_width, pix_height, &modes,
            )
            .await
        })
        .await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.channels.contains_key(&channel) {
            let _ = session.channel_failure(channel);
            return Ok(());
        }
        let (name, value) = (name.to_string(), value.to_string());
        self.forward_request(channel, session, |up| async move {
            up.set_env(true, name, value).await
        })
        .await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, "shell", None, session).await {
            return self.after_refusal(session);
        }
        self.start_terminal_recording(channel, None).await;
        self.forward_request(channel, session, |up| async move {
            up.request_shell(true).await
        })
        .await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        if !self
            .admit_request(channel, "exec", Some(command.clone()), session)
            .await
        {
            return self.after_refusal(session);
        }
        self.start_terminal_recording(channel, Some(command)).await;
        let data = data.to_vec();
        self.forward_request(
            channel,
            session,
            |up| async move { up.exec(true, data).await },
        )
        .await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self
            .admit_request(channel, "subsystem", Some(name.to_string()), session)
            .await
        {
            return self.after_refusal(session);
        }
        let name = name.to_string();
        self.forward_request(channel, session, |up| async move {
            up.request_subsystem(true, name).await
        })
        .await;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctl) = self.channels.get(&channel) {
            if let Some(rec) = ctl.recorder.lock().await.as_ref() {
                rec.resize(col_width, row_height).await;
            }
            let _ = ctl
                .upstream
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctl) = self.channels.get(&channel) {
            let _ = ctl.upstream.signal(signal).await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        // Agent forwarding would hand the upstream the user's keys: off.
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

impl Connection {
    async fn check_token(&mut self, user: &str, token: &str) -> Result<Auth, russh::Error> {
        let Some((name, resource)) = self.split_user(user) else {
            self.note_failure(user);
            return Ok(reject());
        };
        let (name, resource) = (name.to_string(), resource.to_string());
        match self
            .pipeline()
            .authenticate(&self.client, Some(&resource), &name, token)
            .await
        {
            Ok(identity) => {
                self.admit(user, identity, &resource);
                self.note_success();
                Ok(Auth::Accept)
            }
            // `Pipeline::authenticate` audited this failure.
            Err(_) => Ok(reject()),
        }
    }

    /// A refused session ends once the client has been told why on its channel.
    fn after_refusal(&mut self, session: &mut server::Session) -> Result<(), russh::Error> {
        if let Some(why) = self.refusal().map(str::to_string) {
            session.disconnect(Disconnect::ByApplication, &format!("gate: {why}"), "")?;
        }
        Ok(())
    }

    fn note_failure(&mut self, user: &str) {
        *EndState::lock(&self.end.failed_login) = Some(user.to_string());
    }

    fn note_success(&mut self) {
        *EndState::lock(&self.end.failed_login) = None;
    }
}

/// Records the channel's request with what it moved, and finishes its terminal recording.
async fn finish_channel(ctl: &ChannelCtl, session: &Session) {
    if let Some(rec) = ctl.recorder.lock().await.take() {
        rec.finish().await;
    }
    let started = ctl.started.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((facts, decision, at)) = started {
        let stats = &ctl.stats;
        let exit_signal = stats
            .exit_signal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        session
            .record_request(
                &facts,
                &decision,
                ChannelOutcome {
                    duration: at.elapsed(),
                    bytes_in: stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_out: stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                    exit_status: stats.exit_status(),
                    exit_signal,
                },
            )
            .await;
    }
}

/// Relays a forwarded TCP connection and records it (who, to where, bytes) when it ends.
fn spawn_forward<A, B>(
    session: Arc<Session>,
    facts: RequestFacts,
    decision: Decision,
    a: Channel<A>,
    b: Channel<B>,
    activity: Arc<Activity>,
) where
    A: From<(ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
    B: From<(ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let started = Instant::now();
        let (a_read, a_write) = a.split();
        let (b_read, b_write) = b.split();
        let a_to_b = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let b_to_a = Arc::new(std::sync::atomic::AtomicU64::new(0));
        relay::relay_forward(
            a_read,
            a_write,
            b_read,
            b_write,
            a_to_b.clone(),
            b_to_a.clone(),
            activity,
        )
        .await;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        session
            .record_request(
                &facts,
                &decision,
                ChannelOutcome {
                    duration: started.elapsed(),
                    bytes_in: load(&a_to_b),
                    bytes_out: load(&b_to_a),
                    exit_status: None,
                    exit_signal: None,
                },
            )
            .await;
        tracing::info!(session = %session.id, target = facts.statement(), bytes_in = load(&a_to_b), bytes_out = load(&b_to_a), "forwarded connection closed");
    });
}

fn methods() -> MethodSet {
    MethodSet::from(
        &[
            MethodKind::PublicKey,
            MethodKind::KeyboardInteractive,
            MethodKind::Password,
        ][..],
    )
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(methods()),
        partial_success: false,
    }
}

/// The base64 blob of a public key, as in an OpenSSH public key line.
fn public_key_blob(key: &russh::keys::PublicKey) -> String {
    key.to_openssh()
        .ok()
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default()
}
