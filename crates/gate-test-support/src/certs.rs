//! TLS material for tests: a CA and a server certificate for `localhost` and `127.0.0.1`
//! signed by it, written as PEM files.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// PEM files written by [`TestCerts::generate`].
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate (`ca.pem`): what clients trust (`sslrootcert=…`).
    pub ca_pem_path: PathBuf,
    /// The server certificate (`server.pem`), for `localhost` and `127.0.0.1`.
    pub cert_path: PathBuf,
    /// The server's private key (`server.key`, PKCS#8, mode 0600).
    pub key_path: PathBuf,
}

impl TestCerts {
    /// Creates `dir` if needed and writes `ca.pem`, `server.pem` and `server.key` into it.
    /// Keys are ECDSA P-256; validity is 2020-01-01 to 2049-12-31.
    pub fn generate(dir: &Path) -> anyhow::Result<TestCerts> {
        Self::generate_for(dir, &["localhost", "127.0.0.1"])
    }

    /// Like [`generate`](Self::generate) with other subject alternative names (DNS names or
    /// IP addresses).
    pub fn generate_for(dir: &Path, names: &[&str]) -> anyhow::Result<TestCerts> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;

        let ca_key = KeyPair::generate().context("generate CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Gate Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = date_time_ymd(2020, 1, 1);
        ca_params.not_after = date_time_ymd(2049, 12, 31);
        let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;

        let server_key = KeyPair::generate().context("generate server key")?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).context("server names")?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2049, 12, 31);
        let issuer = Issuer::new(ca_params, ca_key);
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .context("sign server certificate")?;

        let certs = TestCerts {
            ca_pem_path: dir.join("ca.pem"),
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
        };
        std::fs::write(&certs.ca_pem_path, ca_cert.pem())?;
        std::fs::write(&certs.cert_path, server_cert.pem())?;
        write_private(&certs.key_path, server_key.serialize_pem().as_bytes())?;
        Ok(certs)
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> anyhow::Result<CertificateDer<'static>> {
        CertificateDer::from_pem_file(&self.ca_pem_path)
            .with_context(|| format!("parse {}", self.ca_pem_path.display()))
    }

    /// The server certificate chain (just the leaf), DER.
    pub fn cert_chain(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(&self.cert_path)
            .with_context(|| format!("open {}", self.cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parse {}", self.cert_path.display()))
    }

    /// The server private key, DER.
    pub fn key_der(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(&self.key_path)
            .with_context(|| format!("parse {}", self.key_path.display()))
    }

    /// A root store holding only the test CA.
    pub fn root_store(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()?).context("add CA to root store")?;
        Ok(roots)
    }

    /// A rustls client config (aws-lc-rs provider) that trusts only the test CA, e.g. for
    /// `tokio_postgres_rustls::MakeRustlsConnect::new(certs.client_config()?)`.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth())
    }

    /// A rustls server config (aws-lc-rs provider) serving the test server certificate.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain()?, self.key_der()?)?)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}
