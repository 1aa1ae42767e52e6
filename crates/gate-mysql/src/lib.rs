//! MySQL and MariaDB through the gateway.
//!
//! [`MysqlHandler::serve`] greets the client with the upstream's own server version and
//! capabilities (drivers branch on them), upgrades to TLS on the client's SSLRequest, learns
//! the caller's token over TLS — `caching_sha2_password` full authentication, or an
//! AuthSwitch to `mysql_clear_password` for clients that start with another plugin — and opens
//! a pipeline session. Commands are then relayed one at a time ([`relay`]) to an upstream
//! connection taken lazily from a pool keyed by the capabilities the client asked for, so the
//! upstream speaks exactly the dialect (EOF vs. OK terminators, multi-statements, session
//! tracking) the client expects and nothing has to be translated.

pub mod packet;
mod relay;
pub mod rows;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gate_core::Protocol;
use gate_core::config::ResourceConfig;
use gate_pipeline::net::ClientStream;
use gate_pipeline::{ClientInfo, Pipeline, Pool, PoolError, PooledConn};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::packet::{Packet, PacketError};
use crate::upstream::{ServerInfo, Upstream, UpstreamError};

const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest client packet accepted before login; after login the relay's limit applies.
const MAX_LOGIN_PACKET: usize = 64 * 1024;

/// Serves MySQL clients for every `protocol: mysql` resource.
pub struct MysqlHandler {
    pipeline: Arc<Pipeline>,
    tls: Option<TlsAcceptor>,
    /// Greeting facts per resource, learned from the upstream once.
    server_info: Mutex<HashMap<String, Arc<ServerInfo>>>,
    /// Pools per (resource, capabilities, collation): a pooled connection always speaks the
    /// dialect its next client negotiated.
    pools: Mutex<HashMap<(String, u32, u8), Pool<Upstream>>>,
}

/// A connection in the login phase: the stream, its read buffer and the next sequence id.
struct Conn {
    stream: ClientStream,
    buf: BytesMut,
    seq: u8,
}

impl Conn {
    async fn read(&mut self) -> Result<Packet, PacketError> {
        let p = packet::read_packet(&mut self.stream, &mut self.buf, MAX_LOGIN_PACKET).await?;
        self.seq = p.seq.wrapping_add(p.chunks);
        Ok(p)
    }

    async fn write(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        packet::put_packet(&mut out, &mut self.seq, payload);
        self.stream.write_all(&out).await?;
        // With TLS, records can stay buffered in rustls until flushed.
        self.stream.flush().await
    }

    /// Sends an ERR packet and closes: how a server refuses a login.
    async fn refuse(&mut self, code: u16, state: &str, message: &str) {
        let _ = self.write(&packet::err_payload(code, state, message)).await;
        let _ = self.stream.shutdown().await;
    }
}

/// What the client asked for at login, kept for assigning upstream connections.
pub(crate) struct ClientCaps {
    pub caps: CapabilityFlags,
    pub collation: u8,
}

impl MysqlHandler {
    pub fn new(pipeline: Arc<Pipeline>, tls: Option<TlsAcceptor>) -> Arc<MysqlHandler> {
        Arc::new(MysqlHandler {
            pipeline,
            tls,
            server_info: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any MySQL resource is configured (the shared listener greets as MySQL then).
    pub fn has_resources(&self) -> bool {
        self.pipeline
            .resources()
            .iter()
            .any(|r| r.protocol == Protocol::Mysql)
    }

    pub fn reap_idle(&self) {
        for p in self.pools.lock().expect("pools").values() {
            p.reap_idle();
        }
    }

    pub fn close_idle(&self) {
        for p in self.pools.lock().expect("pools").values() {
            p.close_idle();
        }
    }

    /// The greeting facts for a connection: those of its dedicated resource, or on the shared
    /// listener those of the first MySQL resource (in configuration order) that answers.
    async fn greeting_info(&self, implied: Option<&str>) -> Result<Arc<ServerInfo>, String> {
        let candidates: Vec<Arc<ResourceConfig>> = match implied {
            Some(name) => self.pipeline.resource(name).into_iter().collect(),
            None => self
                .pipeline
                .resources()
                .into_iter()
                .filter(|r| r.protocol == Protocol::Mysql)
                .collect(),
        };
        if candidates.is_empty() {
            return Err("no MySQL resource is configured in Gate".into());
        }
        {
            let known = self.server_info.lock().expect("info");
            if let Some(info) = candidates.iter().find_map(|r| known.get(&r.name)) {
                return Ok(info.clone());
            }
        }
        let mut last_error = String::new();
        for r in &candidates {
            match upstream::probe(r).await {
                Ok(info) => {
                    let info = Arc::new(info);
                    self.server_info
                        .lock()
                        .expect("info")
                        .insert(r.name.clone(), info.clone());
                    return Ok(info);
                }
                Err(e) => {
                    tracing::warn!(resource = %r.name, error = %e, "upstream unreachable at greeting");
                    last_error = format!("Gate could not reach upstream \"{}\": {e}", r.name);
                }
            }
        }
        Err(last_error)
    }

    /// Serves one client connection to the end.
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        implied_resource: Option<Arc<str>>,
    ) {
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            stream: ClientStream::Plain(stream),
            buf: BytesMut::with_capacity(1024),
            seq: 0,
        };
        let login = tokio::time::timeout(
            LOGIN_TIMEOUT,
            self.login(&mut conn, peer, implied_resource.as_deref()),
        )
        .await;
        let Ok(Some(login)) = login else { return };
        let Login {
            session,
            resource,
            caps,
        } = login;
        let reason = relay::run(&self, &session, conn.stream, conn.buf, &resource, &caps).await;
        session.close(reason).await;
    }

    async fn login(
        &self,
        conn: &mut Conn,
        peer: SocketAddr,
        implied: Option<&str>,
    ) -> Option<Login> {
        let info = match self.greeting_info(implied).await {
            Ok(i) => i,
            Err(message) => {
                conn.refuse(2003, "HY000", &message).await;
                return None;
            }
        };

        // Greeting: the upstream's version and capabilities, our own nonce.
        let mut caps = upstream::relayable(info.capabilities)
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            // Announce a MySQL (not MariaDB-extended) server: MariaDB-only extensions are off.
            | CapabilityFlags::CLIENT_LONG_PASSWORD;
        if self.tls.is_some() {
            caps |= CapabilityFlags::CLIENT_SSL;
        }
        let nonce = new_nonce();
        // Servers send the second part NUL-terminated (13 bytes); clients count on it.
        let mut scramble_2 = nonce[8..].to_vec();
        scramble_2.push(0);
        let connection_id = rand::random::<u32>() & 0x7fff_ffff;
        let greeting = HandshakePacket::new(
            10,
            info.version.as_slice(),
            connection_id,
            nonce[..8].try_into().expect("8 bytes"),
            Some(scramble_2.as_slice()),
            caps,
            info.collation,
            mysql_common::constants::StatusFlags::from_bits_truncate(info.status),
            Some(&b"caching_sha2_password"[..]),
        );
        let mut payload = Vec::new();
        greeting.serialize(&mut payload);
        conn.seq = 0;
        conn.write(&payload).await.ok()?;

        // SSLRequest, then the HandshakeResponse (over TLS).
        let mut p = conn.read().await.ok()?;
        let mut tls = false;
        if p.payload.len() == 32 {
            let req_caps = CapabilityFlags::from_bits_truncate(u32::from_le_bytes(
                p.payload[..4].try_into().ok()?,
            ));
            if req_caps.contains(CapabilityFlags::CLIENT_SSL) {
                let acceptor = self.tls.as_ref()?;
                let prefix = std::mem::take(&mut conn.buf);
                let plain = std::mem::replace(&mut conn.stream, ClientStream::Upgrading);
                conn.stream = match plain.upgrade(acceptor, prefix).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return None;
                    }
                };
                tls = true;
                p = conn.read().await.ok()?;
            }
        }
        let client = ClientInfo {
            addr: peer,
            protocol: Protocol::Mysql,
            tls,
        };
        // The response means what the client's capabilities allow *and* the greeting
        // offered: clients set bits the server did not offer (e.g. CLIENT_CONNECT_ATTRS) and
        // then, rightly, leave those fields out. Parse with the intersection.
        let mut payload = p.payload;
        if payload.len() >= 4 {
            let offered =
                u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) & caps.bits();
            payload[..4].copy_from_slice(&offered.to_le_bytes());
        }
        let response = match ParseBuf(&payload).parse::<HandshakeResponse>(()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, len = payload.len(), "unparseable handshake response");
                conn.refuse(1043, "08S01", "Bad handshake").await;
                return None;
            }
        };
        let user = String::from_utf8_lossy(response.user()).into_owned();
        let client_caps = response.capabilities();
        let collation = response.collation();
        let db = response
            .db_name()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .filter(|d| !d.is_empty());
        let resource_name = match implied {
            Some(r) => r.to_string(),
            None => match &db {
                Some(d) => d.clone(),
                None => {
                    conn.refuse(
                        1046,
                        "3D000",
                        "No database selected: name the Gate resource as the database",
                    )
                    .await;
                    return None;
                }
            },
        };
        if self.tls.is_some() && !tls {
            self.pipeline
                .audit_refused(
                    &client,
                    Some(&user),
                    "TLS required but the client did not use it",
                )
                .await;
            conn.refuse(1045, "28000", "Gate requires TLS: the token is never accepted in the clear (connect with --ssl / sslMode=REQUIRED)").await;
            return None;
        }

        // Learn the token in cleartext (over TLS).
        let plugin = response
            .auth_plugin()
            .map(|p| p.as_bytes().to_vec())
            .unwrap_or_default();
        let token = match plugin.as_slice() {
            b"mysql_clear_password" => cstr(response.scramble_buf()),
            // Over TLS, full authentication hands us the password; without TLS (only possible
            // when none is configured) the client would ask for an RSA key we do not offer.
            b"caching_sha2_password" if tls => {
                // "Perform full authentication": the client sends the password itself.
                conn.write(&[0x01, 0x04]).await.ok()?;
                let p = conn.read().await.ok()?;
                if p.payload.len() == 1 && p.payload[0] == 0x02 {
                    // The client asks for the RSA key because it thinks the link is insecure.
                    conn.refuse(
                        1045,
                        "28000",
                        "Gate does not offer RSA key exchange; connect with TLS",
                    )
                    .await;
                    return None;
                }
                cstr(&p.payload)
            }
            // Any other plugin: switch to caching_sha2_password, which every current driver
            // speaks without extra flags (many refuse mysql_clear_password unless told to),
            // then ask for full authentication as above. Without TLS (only possible when none
            // is configured) switch to mysql_clear_password instead.
            _ => {
                let mut sw = vec![0xfe];
                if tls {
                    sw.extend_from_slice(b"caching_sha2_password\0");
                    sw.extend_from_slice(&new_nonce());
                    sw.push(0);
                    conn.write(&sw).await.ok()?;
                    conn.read().await.ok()?; // the scramble, useless to us
                    conn.write(&[0x01, 0x04]).await.ok()?;
                } else {
                    sw.extend_from_slice(b"mysql_clear_password\0");
                    conn.write(&sw).await.ok()?;
                }
                let p = conn.read().await.ok()?;
                cstr(&p.payload)
            }
        };

        let identity = match self
            .pipeline
            .authenticate(&client, Some(&resource_name), &user, &token)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                conn.refuse(
                    1045,
                    "28000",
                    &format!("Access denied for user '{user}': {e}"),
                )
                .await;
                return None;
            }
        };
        drop(token);
        let Some(resource) = self
            .pipeline
            .resolve_resource(&client, &user, &resource_name)
            .await
        else {
            conn.refuse(
                1049,
                "42000",
                &format!(
                    "Unknown database '{resource_name}' (no MySQL resource of that name in Gate)"
                ),
            )
            .await;
            return None;
        };
        let session = match self
            .pipeline
            .open_session(client, identity, resource.clone())
            .await
        {
            Ok(s) => s,
            Err(denied) => {
                conn.refuse(1045, "28000", &denied.reason).await;
                return None;
            }
        };
        conn.write(&packet::ok_payload(0x0002)).await.ok()?;
        Some(Login {
            session,
            resource,
            caps: ClientCaps {
                caps: client_caps & caps,
                collation,
            },
        })
    }

    /// A pooled upstream connection speaking the client's dialect, or a client-facing message.
    pub(crate) async fn assign_upstream(
        &self,
        resource: &ResourceConfig,
        caps: &ClientCaps,
    ) -> Result<PooledConn<Upstream>, String> {
        let relay_caps = upstream::relayable(caps.caps);
        let key = (resource.name.clone(), relay_caps.bits(), caps.collation);
        let pool = {
            let mut pools = self.pools.lock().expect("pools");
            pools
                .entry(key)
                .or_insert_with(|| {
                    Pool::new(&resource.name, &resource.pool, self.pipeline.metrics())
                })
                .clone()
        };
        pool.acquire(
            || Upstream::connect(resource, relay_caps, caps.collation),
            |u| u.idle_and_open(),
        )
        .await
        .map_err(|e| match e {
            PoolError::Exhausted { .. } => format!("Gate: {e}"),
            PoolError::Connect(e) => {
                tracing::warn!(resource = %resource.name, error = %e, "upstream connection failed");
                match e {
                    UpstreamError::Auth(_) => format!(
                        "Gate could not log in to upstream \"{}\" with its configured credentials",
                        resource.name
                    ),
                    other => format!(
                        "Gate could not reach upstream \"{}\": {other}",
                        resource.name
                    ),
                }
            }
        })
    }
}

struct Login {
    session: gate_pipeline::Session,
    resource: Arc<ResourceConfig>,
    caps: ClientCaps,
}

/// 20 printable random bytes: an authentication nonce.
fn new_nonce() -> [u8; 20] {
    std::array::from_fn(|_| rand::random::<u8>() % 94 + 33)
}

/// The bytes before the first NUL (clients terminate passwords with one).
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"tok\0rest"), "tok");
        assert_eq!(cstr(b"tok"), "tok");
        assert_eq!(cstr(b""), "");
    }
}
