//! The upstream side: Gate as an SSH client of the real server, logging in with the
//! resource's credentials after checking the server's pinned host key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::Channel;
use russh::client;
use russh::client::ChannelOpenHandle;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::mpsc;

use crate::keys::{HostKeyPin, UpstreamCredential};

/// How long connecting, key exchange and login upstream may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A remote-forwarded connection the upstream opened towards us (`ssh -R`): the handler
/// opens the matching channel to the client and relays it.
pub struct ForwardedConnection {
    pub channel: Channel<client::Msg>,
    pub connected_address: String,
    pub connected_port: u32,
    pub originator_address: String,
    pub originator_port: u32,
}

/// The russh client handler for one upstream connection.
pub struct UpstreamHandler {
    host: String,
    port: u16,
    pin: HostKeyPin,
    /// Why the host key was refused, for the error the user sees.
    refusal: Arc<Mutex<Option<String>>>,
    /// Where `ssh -R` connections go; `None` until a remote forward was allowed.
    forwarded: Arc<Mutex<Option<mpsc::Sender<ForwardedConnection>>>>,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *lock(&self.refusal) =
                Some("the upstream presented a host certificate; pin its plain host key".into());
            return Ok(false);
        };
        match self.pin.check(&self.host, self.port, key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *lock(&self.refusal) = Some(why);
                Ok(false)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let tx = lock(&self.forwarded).clone();
        let Some(tx) = tx else {
            // We never asked for a remote forward: refuse what we did not request.
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let conn = ForwardedConnection {
            channel,
            connected_address: connected_address.to_string(),
            connected_port,
            originator_address: originator_address.to_string(),
            originator_port,
        };
        if tx.send(conn).await.is_err() {
            tracing::debug!("forwarded connection arrived after the session ended");
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A logged-in upstream connection.
pub struct Upstream {
    pub handle: client::Handle<UpstreamHandler>,
    forwarded: Arc<Mutex<Option<mpsc::Sender<ForwardedConnection>>>>,
}

impl Upstream {
    /// Connects, verifies the host key, logs in. The error is a sentence for the user.
    pub async fn connect(
        config: Arc<client::Config>,
        host: &str,
        port: u16,
        pin: &HostKeyPin,
        username: &str,
        credential: &UpstreamCredential,
    ) -> Result<Upstream, String> {
        let refusal = Arc::new(Mutex::new(None));
        let forwarded = Arc::new(Mutex::new(None));
        let handler = UpstreamHandler {
            host: host.to_string(),
            port,
            pin: pin.clone(),
            refusal: refusal.clone(),
            forwarded: forwarded.clone(),
        };
        let attempt = async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut handle = client::connect_stream(config, stream, handler)
                .await
                .map_err(|e| match lock(&refusal).take() {
                    Some(why) => why,
                    None => format!("SSH handshake with {host}:{port} failed: {e}"),
                })?;
            let result = match credential {
                UpstreamCredential::Key(key) => {
                    let hash = handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| format!("upstream login failed: {e}"))?
                        .flatten();
                    handle
                        .authenticate_publickey(
                            username,
                            PrivateKeyWithHashAlg::new(key.clone(), hash),
                        )
                        .await
                }
                UpstreamCredential::Password(p) => {
                    handle.authenticate_password(username, p.as_str()).await
                }
            }
            .map_err(|e| format!("upstream login failed: {e}"))?;
            if !result.success() {
                return Err(format!(
                    "the upstream refused Gate's credentials for {username}@{host}:{port}"
                ));
            }
            Ok(handle)
        };
        let handle = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| {
                format!("connecting to {host}:{port} timed out after {CONNECT_TIMEOUT:?}")
            })??;
        Ok(Upstream { handle, forwarded })
    }

    /// From now on connections the upstream forwards to us (`ssh -R`) go to `tx`.
    pub fn accept_forwarded(&self, tx: mpsc::Sender<ForwardedConnection>) {
        *lock(&self.forwarded) = Some(tx);
    }
}

/// The client config Gate uses upstream: keepalives so a dead upstream is noticed.
pub fn client_config() -> client::Config {
    client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}
