//! Generated certificates parse, chain to the CA, and work for a real TLS handshake.

use gate_test_support::certs::TestCerts;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};
use std::sync::Arc;

#[test]
fn files_parse_and_chain_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(&dir.path().join("tls")).unwrap();
    for p in [&certs.ca_pem_path, &certs.cert_path, &certs.key_path] {
        assert!(p.is_file(), "{}", p.display());
    }
    let ca = std::fs::read_to_string(&certs.ca_pem_path).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let key = std::fs::read_to_string(&certs.key_path).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&certs.key_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let chain = certs.cert_chain().unwrap();
    assert_eq!(chain.len(), 1);
    certs.key_der().unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(certs.root_store().unwrap()),
        provider,
    )
    .build()
    .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let wrong = verifier.verify_server_cert(
        &chain[0],
        &[],
        &ServerName::try_from("example.com").unwrap(),
        &[],
        UnixTime::now(),
    );
    assert!(wrong.is_err());

    // A different CA does not vouch for this certificate.
    let other = TestCerts::generate(&dir.path().join("other")).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(other.root_store().unwrap()),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    assert!(
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
    );
}

#[test]
fn tls_handshake_with_generated_configs() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_config = Arc::new(certs.server_config().unwrap());
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server_config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").unwrap();
        tls.flush().unwrap();
    });

    let conn = rustls::ClientConnection::new(
        Arc::new(certs.client_config().unwrap()),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    server.join().unwrap();
}
