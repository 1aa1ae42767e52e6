//! Connections from the gateway to the upstream PostgreSQL, authenticated with the
//! resource's injected credentials (SCRAM-SHA-256, MD5 or cleartext).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use gate_core::config::ResourceConfig;
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::scram::ScramClient;
use crate::wire::{self, MsgWriter, PROTOCOL_3_0, Reader, WireError};

/// Upper bound for one upstream message the gateway buffers (a DataRow can be large).
pub const MAX_UPSTREAM_MESSAGE: usize = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream refused the gateway's credentials: {0}")]
    Auth(String),
    #[error("upstream error {code}: {message}")]
    Server { code: String, message: String },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection lost: {0}")]
    Wire(#[from] WireError),
}

/// An authenticated, idle upstream connection.
pub struct Upstream {
    pub stream: TcpStream,
    /// Bytes read from the upstream and not yet consumed.
    pub rbuf: BytesMut,
    /// ParameterStatus values reported at startup (server_version, encodings, …).
    pub params: Vec<(String, String)>,
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub addr: SocketAddr,
}

impl gate_pipeline::pool::Pooled for Upstream {
    fn rehome(self) -> std::io::Result<Upstream> {
        Ok(Upstream {
            stream: gate_pipeline::pool::rehome_tcp(self.stream)?,
            ..self
        })
    }

    /// Terminate (`X`, length 4).
    fn say_goodbye(&mut self) {
        gate_pipeline::pool::send_now(&self.stream, &[b'X', 0, 0, 0, 4]);
    }
}

impl Upstream {
    pub async fn connect(resource: &ResourceConfig) -> Result<Upstream, UpstreamError> {
        let target = format!("{}:{}", resource.host, resource.port);
        let connect_err = |source| UpstreamError::Connect {
            addr: target.clone(),
            source,
        };
        let stream =
            gate_pipeline::net::connect_upstream(&resource.host, resource.port, CONNECT_TIMEOUT)
                .await
                .map_err(connect_err)?;
        let addr = stream.peer_addr().map_err(connect_err)?;
        let mut up = Upstream {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            params: Vec::new(),
            backend_pid: 0,
            backend_secret: 0,
            addr,
        };
        tokio::time::timeout(CONNECT_TIMEOUT, up.startup(resource))
            .await
            .map_err(|_| UpstreamError::Protocol("startup timed out".into()))??;
        Ok(up)
    }

    async fn startup(&mut self, resource: &ResourceConfig) -> Result<(), UpstreamError> {
        let creds = &resource.credentials;
        let user = creds.username.as_str();
        let password = creds.password.as_deref().unwrap_or("");
        let mut out = BytesMut::new();
        let mut w = MsgWriter::begin_untagged(&mut out);
        w.i32(PROTOCOL_3_0);
        w.cstr(b"user").cstr(user.as_bytes());
        if let Some(db) = &resource.database {
            w.cstr(b"database").cstr(db.as_bytes());
        }
        w.cstr(b"client_encoding").cstr(b"UTF8");
        w.u8(0);
        w.finish();
        self.stream.write_all(&out).await.map_err(WireError::Io)?;

        let mut scram: Option<ScramClient> = None;
        loop {
            let f =
                wire::read_frame(&mut self.stream, &mut self.rbuf, MAX_UPSTREAM_MESSAGE).await?;
            let mut r = Reader::new(f.body());
            out.clear();
            match f.tag {
                b'R' => match r.i32()? {
                    0 => {}
                    3 => {
                        MsgWriter::begin(&mut out, b'p')
                            .cstr(password.as_bytes())
                            .finish();
                    }
                    5 => {
                        let salt = r.bytes(4)?;
                        let inner = hex::encode(Md5::digest(
                            [password.as_bytes(), user.as_bytes()].concat(),
                        ));
                        let outer = hex::encode(Md5::digest([inner.as_bytes(), salt].concat()));
                        MsgWriter::begin(&mut out, b'p')
                            .cstr(format!("md5{outer}").as_bytes())
                            .finish();
                    }
                    10 => {
                        let mut offers_scram = false;
                        while let Ok(m) = r.cstr() {
                            if m.is_empty() {
                                break;
                            }
                            offers_scram |= m == b"SCRAM-SHA-256";
                        }
                        if !offers_scram {
                            return Err(UpstreamError::Auth(
                                "upstream offers no SASL mechanism the gateway supports".into(),
                            ));
                        }
                        let c = ScramClient::new(password);
                        let first = c.client_first();
                        MsgWriter::begin(&mut out, b'p')
                            .cstr(b"SCRAM-SHA-256")
                            .i32(first.len() as i32)
                            .bytes(first.as_bytes())
                            .finish();
                        scram = Some(c);
                    }
                    11 => {
                        let c = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("SASL continue before start".into())
                        })?;
                        let server_first = std::str::from_utf8(r.remaining())
                            .map_err(|_| UpstreamError::Protocol("SASL data not UTF-8".into()))?;
                        let fin = c
                            .client_final(server_first)
                            .map_err(|e| UpstreamError::Auth(e.into()))?;
                        MsgWriter::begin(&mut out, b'p')
                            .bytes(fin.as_bytes())
                            .finish();
                    }
                    12 => {
                        let c = scram.as_ref().ok_or_else(|| {
                            UpstreamError::Protocol("SASL final before start".into())
                        })?;
                        let server_final = std::str::from_utf8(r.remaining())
                            .map_err(|_| UpstreamError::Protocol("SASL data not UTF-8".into()))?;
                        c.verify_server_final(server_final)
                            .map_err(|e| UpstreamError::Auth(e.into()))?;
                    }
                    other => {
                        return Err(UpstreamError::Auth(format!(
                            "upstream asks for unsupported authentication method {other}"
                        )));
                    }
                },
                b'S' => {
                    let k = String::from_utf8_lossy(r.cstr()?).into_owned();
                    let v = String::from_utf8_lossy(r.cstr()?).into_owned();
                    self.params.push((k, v));
                }
                b'K' => {
                    self.backend_pid = r.i32()?;
                    self.backend_secret = r.i32()?;
                }
                b'Z' => return Ok(()),
                b'E' => {
                    let e = wire::parse_error(f.body());
                    return Err(if e.code == "28P01" || e.code == "28000" {
                        UpstreamError::Auth(e.message.to_string())
                    } else {
                        UpstreamError::Server {
                            code: e.code.to_string(),
                            message: e.message.to_string(),
                        }
                    });
                }
                b'N' | b'v' => {}
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )));
                }
            }
            if !out.is_empty() {
                self.stream.write_all(&out).await.map_err(WireError::Io)?;
            }
        }
    }

    /// Runs one simple query to completion, discarding results. Used for session set-up
    /// (`set_config`) and reset (`DISCARD ALL`); returns the first error, if any.
    pub async fn run_quietly(
        &mut self,
        sql: &str,
    ) -> Result<Option<(String, String)>, UpstreamError> {
        let mut out = BytesMut::new();
        wire::put_query(&mut out, sql);
        self.stream.write_all(&out).await.map_err(WireError::Io)?;
        let mut first_error = None;
        loop {
            let f =
                wire::read_frame(&mut self.stream, &mut self.rbuf, MAX_UPSTREAM_MESSAGE).await?;
            match f.tag {
                b'E' if first_error.is_none() => {
                    let e = wire::parse_error(f.body());
                    first_error = Some((e.code.to_string(), e.message.to_string()));
                }
                b'Z' => return Ok(first_error),
                _ => {}
            }
        }
    }

    /// Resets session state so the connection can serve another user: roll back any open
    /// transaction, then `DISCARD ALL` (prepared statements, temp tables, settings, …).
    pub async fn reset(&mut self, tx_status: u8) -> Result<(), UpstreamError> {
        if tx_status != b'I'
            && let Some((code, message)) = self.run_quietly("ROLLBACK").await?
        {
            return Err(UpstreamError::Server { code, message });
        }
        match self.run_quietly("DISCARD ALL").await? {
            None => Ok(()),
            Some((code, message)) => Err(UpstreamError::Server { code, message }),
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

/// Sends a CancelRequest for `pid`/`secret` to the upstream at `addr`.
pub async fn send_cancel(addr: SocketAddr, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut out = BytesMut::new();
    MsgWriter::begin_untagged(&mut out)
        .i32(wire::CANCEL_REQUEST)
        .i32(pid)
        .i32(secret)
        .finish();
    s.write_all(&out).await?;
    s.shutdown().await.ok();
    Ok(())
}
