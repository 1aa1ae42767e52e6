//! SCRAM-SHA-256 client (RFC 5802 / 7677), as PostgreSQL speaks it, for authenticating the
//! gateway to the upstream with injected credentials. No channel binding (the upstream link
//! is plain TCP), so the GS2 header is `n,,`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes), which is all SCRAM needs.
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

pub struct ScramClient {
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        let nonce_bytes: [u8; 18] = rand::random();
        let client_nonce = B64.encode(nonce_bytes);
        ScramClient {
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            expected_server_signature: None,
        }
    }

    /// The client-first-message (sent in SASLInitialResponse).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Consumes server-first-message, returns client-final-message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, &'static str> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(v),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("SCRAM: server-first-message without nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("SCRAM: server nonce does not extend the client nonce");
        }
        let salt = B64
            .decode(salt.ok_or("SCRAM: server-first-message without salt")?)
            .map_err(|_| "SCRAM: salt is not base64")?;
        let iterations = iterations
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or("SCRAM: bad iteration count")?;

        let salted = pbkdf2(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, &[b"Server Key"]);
        self.expected_server_signature = Some(hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message: the upstream must prove it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), &'static str> {
        let v = server_final
            .strip_prefix("v=")
            .ok_or("SCRAM: server-final-message without verifier")?;
        let got = B64.decode(v).map_err(|_| "SCRAM: verifier is not base64")?;
        let expected = self
            .expected_server_signature
            .ok_or("SCRAM: final message before continue")?;
        if subtle_eq(&got, &expected) {
            Ok(())
        } else {
            Err("SCRAM: upstream server signature does not match")
        }
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 test vector (user "user", password "pencil").
    #[test]
    fn rfc7677_vector() {
        let mut c = ScramClient::new("pencil");
        c.client_nonce = "rOprNGfwEbeRWgbNEkqO".into();
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(c.verify_server_final("v=AAAA").is_err());
    }
}
