//! Connections from the gateway to the upstream MySQL/MariaDB, logged in with the resource's
//! injected credentials (`mysql_native_password`, `caching_sha2_password` fast path).

use std::time::Duration;

use bytes::BytesMut;
use gate_core::config::ResourceConfig;
use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::packet::{self, PacketError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_UPSTREAM_PACKET: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream refused the gateway's credentials: {0}")]
    Auth(String),
    #[error("upstream error {code} ({state}): {message}")]
    Server {
        code: u16,
        state: String,
        message: String,
    },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection lost: {0}")]
    Packet(#[from] PacketError),
}

/// What the upstream announced in its greeting: the gateway repeats it to clients, because
/// drivers branch on the server version and capabilities.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: Vec<u8>,
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub status: u16,
}

/// An authenticated, idle upstream connection.
pub struct Upstream {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub capabilities: CapabilityFlags,
    pub connection_id: u32,
}

async fn tcp(resource: &ResourceConfig) -> Result<TcpStream, UpstreamError> {
    gate_pipeline::net::connect_upstream(&resource.host, resource.port, CONNECT_TIMEOUT)
        .await
        .map_err(|source| UpstreamError::Connect {
            addr: format!("{}:{}", resource.host, resource.port),
            source,
        })
}

fn parse_greeting(payload: &[u8]) -> Result<HandshakePacket<'_>, UpstreamError> {
    if payload.first() == Some(&0xff) {
        let (code, state, message) = packet::parse_err(payload);
        return Err(UpstreamError::Server {
            code,
            state,
            message,
        });
    }
    ParseBuf(payload)
        .parse::<HandshakePacket>(())
        .map_err(|e| UpstreamError::Protocol(format!("bad greeting: {e}")))
}

/// Reads the upstream's greeting and hangs up: enough to greet clients truthfully.
pub async fn probe(resource: &ResourceConfig) -> Result<ServerInfo, UpstreamError> {
    let mut s = tcp(resource).await?;
    let mut buf = BytesMut::new();
    let p = tokio::time::timeout(
        CONNECT_TIMEOUT,
        packet::read_packet(&mut s, &mut buf, 1 << 16),
    )
    .await
    .map_err(|_| UpstreamError::Protocol("no greeting".into()))??;
    let g = parse_greeting(&p.payload)?;
    Ok(ServerInfo {
        version: g.server_version_ref().to_vec(),
        capabilities: g.capabilities(),
        collation: g.default_collation(),
        status: g.status_flags().bits(),
    })
}

/// Capabilities the gateway can relay faithfully upstream: no compression, no TLS on the
/// upstream link, and never LOCAL INFILE (the server must not read the client's files).
pub fn relayable(caps: CapabilityFlags) -> CapabilityFlags {
    let never = CapabilityFlags::CLIENT_COMPRESS
        | CapabilityFlags::CLIENT_SSL
        | CapabilityFlags::CLIENT_LOCAL_FILES
        | CapabilityFlags::CLIENT_ZSTD_COMPRESSION_ALGORITHM
        | CapabilityFlags::CLIENT_QUERY_ATTRIBUTES
        | CapabilityFlags::CLIENT_OPTIONAL_RESULTSET_METADATA
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_SSL_VERIFY_SERVER_CERT
        | CapabilityFlags::CLIENT_REMEMBER_OPTIONS
        | CapabilityFlags::CLIENT_PROGRESS_OBSOLETE
        | CapabilityFlags::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS;
    caps - never
}

impl gate_pipeline::pool::Pooled for Upstream {
    fn rehome(self) -> std::io::Result<Upstream> {
        Ok(Upstream {
            stream: gate_pipeline::pool::rehome_tcp(self.stream)?,
            ..self
        })
    }

    /// COM_QUIT: a one-byte packet (length 1, sequence 0). The server closes its side
    /// without counting the connection in `Aborted_clients`.
    fn say_goodbye(&mut self) {
        gate_pipeline::pool::send_now(&self.stream, &[1, 0, 0, 0, 0x01]);
    }
}

impl Upstream {
    /// Connects and logs in with `caps` (already intersected with the server's and the
    /// client's) and `collation`.
    pub async fn connect(
        resource: &ResourceConfig,
        caps: CapabilityFlags,
        collation: u8,
    ) -> Result<Upstream, UpstreamError> {
        let stream = tcp(resource).await?;
        let mut up = Upstream {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            capabilities: caps,
            connection_id: 0,
        };
        tokio::time::timeout(CONNECT_TIMEOUT, up.login(resource, caps, collation))
            .await
            .map_err(|_| UpstreamError::Protocol("login timed out".into()))??;
        Ok(up)
    }

    async fn read(&mut self) -> Result<packet::Packet, UpstreamError> {
        Ok(packet::read_packet(&mut self.stream, &mut self.rbuf, MAX_UPSTREAM_PACKET).await?)
    }

    async fn write(&mut self, seq: &mut u8, payload: &[u8]) -> Result<(), UpstreamError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        packet::put_packet(&mut out, seq, payload);
        self.stream.write_all(&out).await.map_err(PacketError::Io)?;
        Ok(())
    }

    async fn login(
        &mut self,
        resource: &ResourceConfig,
        caps: CapabilityFlags,
        collation: u8,
    ) -> Result<(), UpstreamError> {
        let creds = &resource.credentials;
        let password = creds.password.as_deref().unwrap_or("").as_bytes();
        let greeting = self.read().await?;
        let g = parse_greeting(&greeting.payload)?;
        self.connection_id = g.connection_id();
        let server_caps = g.capabilities();
        let mut nonce = g.nonce();
        let plugin_name = g
            .auth_plugin_name_ref()
            .unwrap_or(b"mysql_native_password")
            .to_vec();
        let version = g.server_version_parsed().unwrap_or((5, 5, 5));

        let mut caps = (caps & server_caps)
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_LONG_PASSWORD;
        caps -= CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_LOCAL_FILES;
        if resource.database.is_some() {
            caps |= CapabilityFlags::CLIENT_CONNECT_WITH_DB;
        } else {
            caps -= CapabilityFlags::CLIENT_CONNECT_WITH_DB;
        }
        self.capabilities = caps;

        let mut plugin = plugin_name.clone();
        let response = scramble(&plugin, &nonce, password)?;
        let hr = HandshakeResponse::new(
            Some(response.as_slice()),
            version,
            Some(creds.username.as_bytes()),
            resource.database.as_deref().map(str::as_bytes),
            Some(AuthPlugin::from_bytes(&plugin)),
            caps,
            None,
            16 * 1024 * 1024,
        );
        let mut payload = Vec::new();
        hr.serialize(&mut payload);
        // HandshakeResponse has no collation setter: it is byte 8 of the payload.
        if payload.len() > 8 {
            payload[8] = collation;
        }
        let mut seq = greeting.seq.wrapping_add(1);
        self.write(&mut seq, &payload).await?;

        loop {
            let p = self.read().await?;
            seq = p.seq.wrapping_add(1);
            match p.payload.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => {
                    let (code, state, message) = packet::parse_err(&p.payload);
                    return Err(if code == 1045 || state == "28000" {
                        UpstreamError::Auth(message)
                    } else {
                        UpstreamError::Server {
                            code,
                            state,
                            message,
                        }
                    });
                }
                Some(0xfe) => {
                    let sw = ParseBuf(&p.payload)
                        .parse::<AuthSwitchRequest>(())
                        .map_err(|e| UpstreamError::Protocol(format!("bad auth switch: {e}")))?;
                    plugin = sw.auth_plugin().as_bytes().to_vec();
                    nonce = sw.plugin_data().to_vec();
                    // Native and caching_sha2 nonces are 20 bytes plus a NUL; ed25519's are
                    // 32 raw bytes that may themselves end in zero.
                    let expected = if plugin == b"client_ed25519" { 32 } else { 20 };
                    if nonce.len() == expected + 1 && nonce.last() == Some(&0) {
                        nonce.pop();
                    }
                    let resp = scramble(&plugin, &nonce, password)?;
                    self.write(&mut seq, &resp).await?;
                }
                Some(0x01) => match p.payload.get(1) {
                    // caching_sha2_password: 3 = fast auth succeeded, 4 = full auth needed.
                    Some(3) => {}
                    Some(4) => {
                        return Err(UpstreamError::Auth(
                            "upstream asks for caching_sha2_password full authentication, which \
                             needs TLS or RSA on the upstream link; log in once directly to prime \
                             the server's cache, or use mysql_native_password for the gateway's account"
                                .into(),
                        ));
                    }
                    _ => return Err(UpstreamError::Protocol("unexpected auth data".into())),
                },
                _ => {
                    return Err(UpstreamError::Protocol(
                        "unexpected packet during login".into(),
                    ));
                }
            }
        }
    }

    /// Resets session state (COM_RESET_CONNECTION) so the connection can serve another user.
    pub async fn reset(&mut self) -> Result<(), UpstreamError> {
        let mut seq = 0;
        self.write(&mut seq, &[0x1f]).await?;
        let p = self.read().await?;
        match p.payload.first() {
            Some(0x00) => Ok(()),
            _ => {
                let (code, state, message) = packet::parse_err(&p.payload);
                Err(UpstreamError::Server {
                    code,
                    state,
                    message,
                })
            }
        }
    }

    /// True when nothing arrived on the idle connection and it is still open.
    pub fn idle_and_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

fn scramble(plugin: &[u8], nonce: &[u8], password: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    match plugin {
        b"mysql_native_password" => Ok(scramble_native(nonce, password)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        b"caching_sha2_password" => {
            let nonce: &[u8; 20] = nonce
                .get(..20)
                .and_then(|n| n.try_into().ok())
                .ok_or_else(|| UpstreamError::Protocol("short caching_sha2 nonce".into()))?;
            Ok(scramble_sha256(nonce, password)
                .map(|s| s.to_vec())
                .unwrap_or_default())
        }
        b"client_ed25519" => {
            use mysql_common::auth::plugins::client_ed25519::ClientEd25519;
            use mysql_common::auth::plugins::{ChallengeResponsePlugin, Response};
            match ClientEd25519::default().run(PasswordContext(password), nonce) {
                Ok(Response::Last { packet: Some(p) }) | Ok(Response::Next { packet: Some(p) }) => {
                    Ok(p)
                }
                Ok(_) => Ok(Vec::new()),
                Err(e) => Err(UpstreamError::Auth(format!("client_ed25519: {e}"))),
            }
        }
        other => Err(UpstreamError::Auth(format!(
            "upstream asks for authentication plugin {:?}, which the gateway does not support for upstream logins",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// What mysql_common's challenge/response plugins need to know: only the password here.
struct PasswordContext<'a>(&'a [u8]);

impl mysql_common::auth::plugins::Context for PasswordContext<'_> {
    fn pass(&self) -> &[u8] {
        self.0
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        false
    }
    fn scramble(&self) -> &[u8] {
        &[]
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}
