//! Keys: the gateway's own host key, the upstream's pinned host key, and the credentials
//! Gate logs in with upstream.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use gate_core::config::ResourceConfig;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey, ssh_key};

/// File name of the gateway's host key inside the connector's data dir.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Loads the gateway's host key from `data_dir`, generating (and saving, mode 0600) a new
/// Ed25519 key on first start, so clients see the same key across restarts.
pub fn load_or_create_host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("gateway SSH host key {}", path.display()));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("data_dir {}", data_dir.display()))?;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("generating the gateway SSH host key")?;
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .context("encoding the gateway SSH host key")?;
    write_private(&path, pem.as_bytes())
        .with_context(|| format!("writing gateway SSH host key {}", path.display()))?;
    let public = key.public_key().to_openssh().unwrap_or_default();
    std::fs::write(path.with_extension("pub"), format!("{public}\n"))
        .with_context(|| format!("writing {}.pub", path.display()))?;
    tracing::info!(
        path = %path.display(),
        fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
        "generated the gateway's SSH host key"
    );
    Ok(key)
}

/// Creates `path` with mode 0600 (failing if it exists: never overwrite a host key).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// How the upstream's host key is pinned. There is no trust-on-first-use: a resource
/// without a pin does not pass config validation, and a key that does not match refuses
/// the session.
#[derive(Debug, Clone)]
pub enum HostKeyPin {
    /// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
    Fingerprint(String),
    /// An OpenSSH `known_hosts` file with a line for `[host]:port` (or `host` on port 22).
    KnownHosts(PathBuf),
}

impl HostKeyPin {
    pub fn from_resource(r: &ResourceConfig) -> anyhow::Result<HostKeyPin> {
        match (&r.host_key_fingerprint, &r.known_hosts_file) {
            (Some(fp), _) => Ok(HostKeyPin::Fingerprint(fp.trim().to_string())),
            (None, Some(file)) => Ok(HostKeyPin::KnownHosts(file.clone())),
            (None, None) => bail!(
                "resource {}: the upstream host key is not pinned (host_key_fingerprint or known_hosts_file)",
                r.name
            ),
        }
    }

    /// `Ok(())` when `key` is the pinned key; otherwise why not, in words for the operator
    /// and the user.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), String> {
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        match self {
            HostKeyPin::Fingerprint(pinned) if *pinned == seen => Ok(()),
            HostKeyPin::Fingerprint(pinned) => Err(format!(
                "upstream host key {seen} does not match the pinned {pinned}: refusing to connect \
                 (the server was re-keyed, or someone is in between; update host_key_fingerprint \
                 only after checking the new key)"
            )),
            HostKeyPin::KnownHosts(file) => {
                match russh::keys::check_known_hosts_path(host, port, key, file) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "upstream host key {seen} for [{host}]:{port} is not in {}: refusing to connect",
                        file.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                        "upstream host key for [{host}]:{port} CHANGED (now {seen}; {} line {line} \
                         has another): refusing to connect",
                        file.display()
                    )),
                    Err(e) => Err(format!(
                        "cannot check the upstream host key against {}: {e}",
                        file.display()
                    )),
                }
            }
        }
    }
}

/// What Gate presents upstream. Loaded once at start-up, so a bad key file fails the
/// connector's start, not a user's session.
#[derive(Clone)]
pub enum UpstreamCredential {
    Key(Arc<PrivateKey>),
    Password(String),
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredential::Key(k) => write!(f, "Key({})", k.algorithm()),
            UpstreamCredential::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

impl UpstreamCredential {
    pub fn from_resource(r: &ResourceConfig) -> anyhow::Result<UpstreamCredential> {
        let c = &r.credentials;
        if let Some(path) = &c.private_key_file {
            let key = russh::keys::load_secret_key(path, None).with_context(|| {
                format!(
                    "resources[{}].credentials.private_key_file {} (an unencrypted OpenSSH private key)",
                    r.name,
                    path.display()
                )
            })?;
            return Ok(UpstreamCredential::Key(Arc::new(key)));
        }
        match &c.password {
            Some(p) => Ok(UpstreamCredential::Password(p.clone())),
            None => bail!(
                "resource {}: set credentials.private_key_file or credentials.password",
                r.name
            ),
        }
    }
}
