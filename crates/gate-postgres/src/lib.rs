//! PostgreSQL through the gateway.
//!
//! [`PostgresHandler::serve`] takes a client connection through startup (SSLRequest → TLS,
//! cleartext password over TLS to learn the caller's token, CancelRequest), opens a pipeline
//! session, and then relays ([`relay`]) between the client and an upstream connection from
//! the resource's pool, authenticated with injected credentials ([`upstream`]).
//!
//! Upstream connections are assigned lazily — at the client's first request — as pgbouncer
//! does in session mode, so thousands of idle authenticated clients cost no upstream
//! connections. The startup parameters a client sees are the upstream's (learned from the
//! first connection to the resource) overlaid with the client's own; on assignment the
//! client's settings are applied to the upstream with `set_config`.

mod relay;
pub mod rowmask;
pub mod scram;
pub mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gate_core::Protocol;
use gate_core::config::ResourceConfig;
use gate_pipeline::net::ClientStream;
use gate_pipeline::{ClientInfo, Pipeline, Pool, PoolError, PooledConn, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::relay::{Relay, RelayEnd};
use crate::upstream::{Upstream, UpstreamError};
use crate::wire::MsgWriter;

/// A client must finish startup and authentication within this time.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Startup parameters that describe the connection rather than session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Serves PostgreSQL clients for every `protocol: postgres` resource.
pub struct PostgresHandler {
    pipeline: Arc<Pipeline>,
    tls: Option<TlsAcceptor>,
    /// Per resource: the definition a pool was built for, and the pool. Built on first use,
    /// rebuilt when the definition changes (a resource synced from the control plane).
    pools: Mutex<HashMap<String, PoolFor>>,
    /// Upstream ParameterStatus values per resource, learned from its first connection.
    server_params: Mutex<HashMap<String, ServerParams>>,
    cancels: Mutex<HashMap<i32, CancelTarget>>,
}

/// A pool and the resource definition it was built for.
type PoolFor = (Arc<ResourceConfig>, Pool<Upstream>);

/// `(name, value)` pairs a server reports with ParameterStatus at startup.
type ServerParams = Arc<Vec<(String, String)>>;

struct CancelTarget {
    secret: i32,
    upstream: Option<(SocketAddr, i32, i32)>,
}

/// What the startup phase produced.
struct Login {
    client: ClientStream,
    buf: BytesMut,
    tls: bool,
    params: Vec<(String, String)>,
}

/// Sends a FATAL error and closes: the way PostgreSQL refuses a connection.
async fn refuse(client: &mut ClientStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::put_error(&mut out, "FATAL", code, message);
    let _ = client.write_all(&out).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

impl PostgresHandler {
    pub fn new(pipeline: Arc<Pipeline>, tls: Option<TlsAcceptor>) -> Arc<PostgresHandler> {
        Arc::new(PostgresHandler {
            pipeline,
            tls,
            pools: Mutex::new(HashMap::new()),
            server_params: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
        })
    }

    /// Closes idle upstream connections past their idle timeout, and forgets pools of
    /// resources that are gone.
    pub fn reap_idle(&self) {
        let current = self.pipeline.resources();
        let mut pools = self.pools.lock().expect("pools");
        pools.retain(|name, (def, pool)| {
            let live = current.iter().any(|r| Arc::ptr_eq(r, def));
            if !live {
                tracing::info!(resource = %name, "resource removed or changed; closing its idle upstream connections");
                pool.close_idle();
            }
            live
        });
        for (_, p) in pools.values() {
            p.reap_idle();
        }
    }

    /// Closes every idle upstream connection (shutdown).
    pub fn close_idle(&self) {
        for (_, p) in self.pools.lock().expect("pools").values() {
            p.close_idle();
        }
    }

    /// The pool for this definition of the resource (a new one when it changed).
    fn pool_for(&self, resource: &Arc<ResourceConfig>) -> Pool<Upstream> {
        let mut pools = self.pools.lock().expect("pools");
        match pools.get(&resource.name) {
            Some((def, pool)) if Arc::ptr_eq(def, resource) => pool.clone(),
            _ => {
                let pool = Pool::new(&resource.name, &resource.pool, self.pipeline.metrics());
                if let Some((_, old)) =
                    pools.insert(resource.name.clone(), (resource.clone(), pool.clone()))
                {
                    old.close_idle();
                }
                pool
            }
        }
    }

    /// Serves one client connection to the end. `implied_resource` is set on a resource's
    /// dedicated listener; on the shared listener the `database` parameter names it.
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        implied_resource: Option<Arc<str>>,
    ) {
        stream.set_nodelay(true).ok();
        let login = match tokio::time::timeout(STARTUP_TIMEOUT, self.startup(stream)).await {
            Ok(Some(login)) => login,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(%peer, "client did not finish startup in time");
                return;
            }
        };
        self.login(login, peer, implied_resource).await;
    }

    /// SSLRequest / GSSENCRequest / CancelRequest / StartupMessage. `None`: nothing more to do.
    async fn startup(&self, stream: TcpStream) -> Option<Login> {
        let mut client = ClientStream::Plain(stream);
        let mut buf = BytesMut::with_capacity(1024);
        let mut tls = false;
        loop {
            let body = match wire::read_startup_packet(&mut client, &mut buf).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "bad startup packet; closing");
                    return None;
                }
            };
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            match code {
                wire::SSL_REQUEST if !tls => {
                    // Bytes sent after SSLRequest but before the handshake would be read
                    // as if they came over TLS: refuse them (CVE-2021-23214 class).
                    if !buf.is_empty() {
                        return None;
                    }
                    let Some(acceptor) = &self.tls else {
                        client.write_all(b"N").await.ok()?;
                        continue;
                    };
                    client.write_all(b"S").await.ok()?;
                    client = match client.upgrade(acceptor, BytesMut::new()).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return None;
                        }
                    };
                    tls = true;
                }
                wire::GSSENC_REQUEST if !tls => {
                    client.write_all(b"N").await.ok()?;
                }
                wire::CANCEL_REQUEST if body.len() == 12 => {
                    let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    let secret = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                    self.cancel(pid, secret).await;
                    return None;
                }
                c if c >> 16 == 3 => {
                    let params = match wire::parse_startup_params(&body[4..]) {
                        Ok(p) => p,
                        Err(_) => {
                            refuse(&mut client, "08P01", "invalid startup packet layout").await;
                            return None;
                        }
                    };
                    let minor = c & 0xffff;
                    let unknown_options: Vec<&str> = params
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.as_str())
                        .collect();
                    if minor > 0 || !unknown_options.is_empty() {
                        // Offer protocol 3.0 and decline protocol options, as servers do.
                        let mut out = BytesMut::new();
                        let mut w = MsgWriter::begin(&mut out, b'v');
                        w.i32(wire::PROTOCOL_3_0).i32(unknown_options.len() as i32);
                        for o in &unknown_options {
                            w.cstr(o.as_bytes());
                        }
                        w.finish();
                        client.write_all(&out).await.ok()?;
                        client.flush().await.ok()?;
                    }
                    let params = params
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with("_pq_."))
                        .collect();
                    return Some(Login {
                        client,
                        buf,
                        tls,
                        params,
                    });
                }
                _ => {
                    refuse(
                        &mut client,
                        "0A000",
                        &format!(
                            "unsupported frontend protocol {}.{}",
                            code >> 16,
                            code & 0xffff
                        ),
                    )
                    .await;
                    return None;
                }
            }
        }
    }

    async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let cancels = self.cancels.lock().expect("cancel map");
            cancels.get(&pid).and_then(|t| {
                // Constant-time comparison: the secret is the only thing guarding cancels.
                let ok = (t.secret ^ secret) == 0;
                if ok { t.upstream } else { None }
            })
        };
        if let Some((addr, upid, usecret)) = target
            && let Err(e) = upstream::send_cancel(addr, upid, usecret).await
        {
            tracing::warn!(error = %e, "forwarding cancel request failed");
        }
    }

    async fn login(
        self: Arc<Self>,
        login: Login,
        peer: SocketAddr,
        implied_resource: Option<Arc<str>>,
    ) {
        let Login {
            mut client,
            mut buf,
            tls,
            params,
        } = login;
        let info = ClientInfo {
            addr: peer,
            protocol: Protocol::Postgres,
            tls,
        };
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(user) = param("user").filter(|u| !u.is_empty()).map(str::to_string) else {
            refuse(
                &mut client,
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
            .await;
            return;
        };
        if param("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
            refuse(
                &mut client,
                "42501",
                "replication connections are not allowed through Gate",
            )
            .await;
            return;
        }
        let resource_name = match &implied_resource {
            Some(r) => r.to_string(),
            None => param("database").unwrap_or(&user).to_string(),
        };
        if self.tls.is_some() && !tls {
            self.pipeline
                .audit_refused(
                    &info,
                    Some(&user),
                    "TLS required but the client did not use it",
                )
                .await;
            refuse(
                &mut client,
                "28000",
                "Gate requires TLS for password authentication: connect with sslmode=require",
            )
            .await;
            return;
        }

        // Ask for the token in cleartext (protected by TLS).
        let mut out = BytesMut::new();
        wire::put_auth_request(&mut out, 3);
        if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
            return;
        }
        let password = match wire::read_frame(&mut client, &mut buf, wire::MAX_STARTUP_LEN).await {
            Ok(f) if f.tag == b'p' => match wire::Reader::new(f.body()).cstr_utf8() {
                Ok(p) => p.to_string(),
                Err(_) => {
                    refuse(&mut client, "08P01", "invalid password packet").await;
                    return;
                }
            },
            Ok(_) => {
                refuse(&mut client, "08P01", "expected password response").await;
                return;
            }
            Err(_) => return, // client hung up at the password prompt (psql does this once)
        };

        let identity = match self
            .pipeline
            .authenticate(&info, Some(&resource_name), &user, &password)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                refuse(&mut client, "28P01", &e.to_string()).await;
                return;
            }
        };
        drop(password);
        let Some(resource) = self
            .pipeline
            .resolve_resource(&info, &user, &resource_name)
            .await
        else {
            refuse(&mut client, "3D000", &format!("database \"{resource_name}\" does not exist (no PostgreSQL resource of that name in Gate)")).await;
            return;
        };
        let session = match self
            .pipeline
            .open_session(info, identity, resource.clone())
            .await
        {
            Ok(s) => s,
            Err(denied) => {
                refuse(&mut client, "42501", &denied.reason).await;
                return;
            }
        };

        let settings: Vec<(String, String)> = session_settings(&params);
        // The first session for a resource connects eagerly to learn the server's parameters.
        let mut upstream = None;
        let known = self
            .server_params
            .lock()
            .expect("params")
            .get(&resource.name)
            .cloned();
        let server_params = match known {
            Some(p) => p,
            None => match self.assign_upstream(&resource, &settings).await {
                Ok(u) => {
                    let p = Arc::new(u.get().params.clone());
                    self.server_params
                        .lock()
                        .expect("params")
                        .insert(resource.name.clone(), p.clone());
                    upstream = Some(u);
                    p
                }
                Err(message) => {
                    refuse(&mut client, "08006", &message).await;
                    session.close("upstream unavailable").await;
                    return;
                }
            },
        };

        let (pid, secret) = self.register_cancel(upstream.as_ref());
        out.clear();
        wire::put_auth_request(&mut out, 0);
        for (k, v) in server_params.iter() {
            let v = settings
                .iter()
                .find(|(ck, _)| ck.eq_ignore_ascii_case(k))
                .map(|(_, cv)| cv)
                .unwrap_or(v);
            wire::put_parameter_status(&mut out, k, v);
        }
        wire::put_backend_key(&mut out, pid, secret);
        wire::put_ready(&mut out, b'I');
        let reason = if client.write_all(&out).await.is_ok() && client.flush().await.is_ok() {
            self.run_session(&session, client, buf, upstream, &resource, &settings, pid)
                .await
        } else {
            "client went away"
        };
        self.cancels.lock().expect("cancel map").remove(&pid);
        session.close(reason).await;
    }

    /// A pooled upstream with the client's settings applied, or a client-facing message.
    async fn assign_upstream(
        &self,
        resource: &Arc<ResourceConfig>,
        settings: &[(String, String)],
    ) -> Result<PooledConn<Upstream>, String> {
        let pool = self.pool_for(resource);
        let mut conn = pool
            .acquire(|| Upstream::connect(resource), |u| u.idle_and_open())
            .await
            .map_err(|e| match e {
                PoolError::Exhausted { .. } => format!("Gate: {e}"),
                PoolError::Connect(e) => {
                    tracing::warn!(resource = %resource.name, error = %e, "upstream connection failed");
                    match e {
                        UpstreamError::Auth(_) => format!("Gate could not log in to upstream \"{}\" with its configured credentials", resource.name),
                        other => format!("Gate could not reach upstream \"{}\": {other}", resource.name),
                    }
                }
            })?;
        if !settings.is_empty() {
            let sql = set_config_sql(settings);
            match conn.get_mut().run_quietly(&sql).await {
                Ok(None) => {}
                Ok(Some((_, message))) => {
                    if conn.get_mut().reset(b'I').await.is_ok() {
                        conn.release();
                    }
                    return Err(format!("invalid startup setting: {message}"));
                }
                Err(e) => return Err(format!("upstream \"{}\" failed: {e}", resource.name)),
            }
        }
        Ok(conn)
    }

    fn register_cancel(&self, upstream: Option<&PooledConn<Upstream>>) -> (i32, i32) {
        let mut cancels = self.cancels.lock().expect("cancel map");
        loop {
            let (pid, secret): (i32, i32) = (rand::random::<i32>() & 0x7fff_ffff, rand::random());
            if pid != 0 && !cancels.contains_key(&pid) {
                let upstream = upstream.map(|u| {
                    let u = u.get();
                    (u.addr, u.backend_pid, u.backend_secret)
                });
                cancels.insert(pid, CancelTarget { secret, upstream });
                return (pid, secret);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_session(
        &self,
        session: &Session,
        mut client: ClientStream,
        mut buf: BytesMut,
        upstream: Option<PooledConn<Upstream>>,
        resource: &Arc<ResourceConfig>,
        settings: &[(String, String)],
        pid: i32,
    ) -> &'static str {
        // Ends the session from outside: gateway shutdown, or an operator's termination.
        let pipeline_shutdown = self.pipeline.shutdown_signal();
        let shutdown = async move {
            tokio::select! {
                _ = pipeline_shutdown => ("Gate is shutting down".to_string(), "gateway shutdown"),
                why = session.terminated() => (why, "terminated by an operator"),
            }
        };
        tokio::pin!(shutdown);
        let mut upstream = match upstream {
            Some(u) => u,
            None => {
                // Wait for the first request before taking an upstream connection.
                loop {
                    match wire::peek_complete_frame(&buf, relay::MAX_CLIENT_MESSAGE) {
                        Ok(Some(b'X')) => return "client terminated",
                        Ok(Some(_)) => break,
                        Ok(None) => {}
                        Err(_) => {
                            refuse(&mut client, "08P01", "invalid message").await;
                            return "protocol violation";
                        }
                    }
                    tokio::select! {
                        r = client.read_buf(&mut buf) => match r {
                            Ok(0) | Err(_) => return "client went away",
                            Ok(_) => {}
                        },
                        (why, end) = &mut shutdown => {
                            refuse(&mut client, "57P01", &format!("terminating connection: {why}")).await;
                            return end;
                        }
                    }
                }
                match self.assign_upstream(resource, settings).await {
                    Ok(u) => {
                        if let Some(t) = self.cancels.lock().expect("cancel map").get_mut(&pid) {
                            t.upstream =
                                Some((u.get().addr, u.get().backend_pid, u.get().backend_secret));
                        }
                        u
                    }
                    Err(message) => {
                        refuse(&mut client, "08006", &message).await;
                        return "upstream unavailable";
                    }
                }
            }
        };

        let relay = Relay::new(session);
        let (end, shut_down) = {
            let Upstream { stream, rbuf, .. } = upstream.get_mut();
            let (mut ur, mut uw) = stream.split();
            let (mut cr, mut cw) = tokio::io::split(&mut client);
            tokio::select! {
                e = relay.client_to_upstream(&mut cr, &mut uw, &mut buf) => (e, None),
                e = relay.upstream_to_client(&mut ur, &mut cw, rbuf) => (e, None),
                ended = &mut shutdown => (RelayEnd::ClientGone, Some(ended)),
            }
        };
        let reason = if let Some((why, end)) = &shut_down {
            refuse(
                &mut client,
                "57P01",
                &format!("terminating connection: {why}"),
            )
            .await;
            *end
        } else {
            match &end {
                RelayEnd::ClientGone => "client disconnected",
                RelayEnd::ClientError(e) => {
                    tracing::info!(session = %session.id, error = %e, "client protocol violation");
                    refuse(
                        &mut client,
                        "08P01",
                        &format!("invalid message from client: {e}"),
                    )
                    .await;
                    "client protocol violation"
                }
                RelayEnd::UpstreamGone(e) => {
                    tracing::warn!(session = %session.id, error = %e, "upstream connection ended");
                    refuse(
                        &mut client,
                        "08006",
                        &format!("Gate lost the upstream connection: {e}"),
                    )
                    .await;
                    "upstream connection lost"
                }
            }
        };
        // Reuse the upstream only if it is quiet and can be reset; otherwise close it.
        if matches!(end, RelayEnd::ClientGone)
            && shut_down.is_none()
            && let Some(tx) = relay.upstream_reusable()
        {
            drop(relay);
            if matches!(
                tokio::time::timeout(RESET_TIMEOUT, upstream.get_mut().reset(tx)).await,
                Ok(Ok(()))
            ) {
                upstream.release();
            }
        }
        reason
    }
}

/// The client's startup parameters that are session settings (applied upstream).
/// `options` carrying `-c name=value` (or `--name=value`) contributes its settings too.
fn session_settings(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
        .cloned()
        .collect();
    if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
        let mut words = options.split_whitespace();
        while let Some(w) = words.next() {
            let kv = match w {
                "-c" => words.next(),
                w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
            };
            if let Some((k, v)) = kv.and_then(|kv| kv.split_once('=')) {
                out.push((k.replace('-', "_"), v.to_string()));
            }
        }
    }
    out.retain(|(k, _)| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    });
    out
}

/// `SELECT set_config('name', 'value', false), …` with every literal escaped.
fn set_config_sql(settings: &[(String, String)]) -> String {
    fn lit(s: &str) -> String {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    }
    let calls: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("set_config({}, {}, false)", lit(k), lit(v)))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_params_and_options() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let s = session_settings(&[
            p("user", "alice"),
            p("database", "db"),
            p("application_name", "psql"),
            p(
                "options",
                "-c search_path=app --statement-timeout=5s -cwork_mem=4MB",
            ),
            p("bad name;", "x"),
        ]);
        assert_eq!(
            s,
            vec![
                p("application_name", "psql"),
                p("search_path", "app"),
                p("statement_timeout", "5s"),
                p("work_mem", "4MB"),
            ]
        );
        assert_eq!(
            set_config_sql(&[p("application_name", "o'k\\")]),
            "SELECT set_config(E'application_name', E'o''k\\\\', false)"
        );
    }
}
