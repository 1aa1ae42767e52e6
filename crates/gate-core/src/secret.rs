//! Handling of caller secrets: tokens are only ever stored and compared as SHA-256 digests,
//! in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a token, as lowercase hex (the form stored in configs as `token_sha256`).
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A stored token digest. Comparing against a presented token hashes the token and compares
/// digests in constant time, so neither timing nor logs reveal anything about the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Parses the 64-hex-digit form; `None` if it is not exactly that.
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
        Some(TokenDigest(out))
    }

    pub fn of_token(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time check of a presented token against this digest.
    pub fn matches(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trip_and_constant_time_match() {
        let hex = sha256_hex("s3cret-token");
        assert_eq!(hex.len(), 64);
        let d = TokenDigest::from_hex(&hex).unwrap();
        assert!(d.matches("s3cret-token"));
        assert!(!d.matches("s3cret-tokeN"));
        assert!(!d.matches(""));
        assert_eq!(d, TokenDigest::of_token("s3cret-token"));
        assert!(TokenDigest::from_hex("abc").is_none());
        assert!(format!("{d:?}").find(&hex[..8]).is_none());
    }
}
