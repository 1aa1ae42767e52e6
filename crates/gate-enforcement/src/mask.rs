//! Masking strategies for single values.
//!
//! Values arrive as the bytes of a text-format result field. They are usually UTF-8, but a
//! client may run in another encoding, so nothing here assumes it: strategies that keep part
//! of a value (`partial`, `email`) only do so on valid UTF-8 and redact anything else, since
//! cutting bytes of an unknown multi-byte encoding could produce garbage the client cannot
//! decode. Masked output is always ASCII or a verbatim slice of valid UTF-8 input.

use gate_core::MaskStrategy;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What `redact` writes: fixed, so the output says nothing about the input, not even its length.
pub const REDACTED: &[u8] = b"****";

/// Number of hex characters `hash` writes: 64 bits of the HMAC. Collisions need ~2^32
/// distinct values in one column, far beyond what a join or count over masked data relies on.
pub const HASH_HEX_LEN: usize = 16;

/// Applies masking strategies. Holds the key for `hash`, so equal values hash equally across
/// sessions and connectors that share the key, while nobody without the key can build a
/// lookup table (a plain SHA-256 of a phone number or e-mail is trivially reversible).
#[derive(Clone)]
pub struct Masker {
    /// HMAC state with the key already absorbed; cloned per value instead of re-keying.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Masker").finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker whose `hash` strategy is HMAC-SHA256 keyed with `hash_key`. Any key length
    /// works; use at least 32 random bytes, an empty or guessable key makes hashes reversible
    /// by brute force over likely values.
    pub fn new(hash_key: &[u8]) -> Masker {
        Masker {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(hash_key)
                .expect("HMAC accepts keys of any length"),
        }
    }

    /// Appends the masked form of one non-NULL text value to `out`. NULLs stay NULL: they are
    /// the caller's business, masking one would change the result's meaning.
    pub fn mask_into(&self, strategy: MaskStrategy, value: &[u8], out: &mut Vec<u8>) {
        match strategy {
            MaskStrategy::Redact => out.extend_from_slice(REDACTED),
            MaskStrategy::Partial => match std::str::from_utf8(value) {
                Ok(text) => partial_into(text, out),
                Err(_) => out.extend_from_slice(REDACTED),
            },
            MaskStrategy::Hash => self.hash_into(value, out),
            MaskStrategy::Email => match std::str::from_utf8(value) {
                Ok(text) => email_into(text, out),
                Err(_) => out.extend_from_slice(REDACTED),
            },
        }
    }

    /// Convenience form of [`Masker::mask_into`] that allocates the output.
    pub fn mask(&self, strategy: MaskStrategy, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len().max(HASH_HEX_LEN));
        self.mask_into(strategy, value, &mut out);
        out
    }

    /// `hash`: the first 8 bytes of HMAC-SHA256(key, value) as 16 lowercase hex characters.
    fn hash_into(&self, value: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.mac.clone();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        for byte in &tag[..HASH_HEX_LEN / 2] {
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        }
    }
}

/// `partial`: keeps `k = min(2, n / 6)` characters at each end of an `n`-character value and
/// replaces every other character with one `*`. So values under 6 characters are fully
/// masked (`abc` → `***`), 6–11 characters keep one at each end (`secret` → `s****t`), and
/// 12 or more keep two (`+1 555 123 4567` → `+1***********67`); at most a third of a value is
/// ever shown. Characters are Unicode scalar values, so a multi-byte character is kept or
/// masked whole. The output has as many characters as the input: hiding the length is what
/// `redact` is for.
fn partial_into(text: &str, out: &mut Vec<u8>) {
    let n = text.chars().count();
    let keep = (n / 6).min(2);
    if keep == 0 {
        out.resize(out.len() + n, b'*');
        return;
    }
    // Byte offsets of the end of the kept head and the start of the kept tail.
    let head_end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let tail_start = text.char_indices().nth_back(keep - 1).map_or(0, |(i, _)| i);
    out.extend_from_slice(&text.as_bytes()[..head_end]);
    out.resize(out.len() + (n - 2 * keep), b'*');
    out.extend_from_slice(&text.as_bytes()[tail_start..]);
}

/// `email`: `alice@example.com` → `a****@example.com`. Keeps the first character of the local
/// part and the domain; the rest of the local part becomes a fixed `****`, so its length is
/// not revealed. The local part ends at the *last* `@` (quoted local parts may contain `@`).
/// A value that is not shaped like an address (no `@`, empty local part or domain, or
/// whitespace) is masked with `partial` instead, so a wrongly targeted column still leaks
/// little.
fn email_into(text: &str, out: &mut Vec<u8>) {
    let address = text.rsplit_once('@').filter(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !text.contains(char::is_whitespace)
    });
    let Some((local, domain)) = address else {
        partial_into(text, out);
        return;
    };
    let first_len = local.chars().next().map_or(0, char::len_utf8);
    out.extend_from_slice(&local.as_bytes()[..first_len]);
    out.extend_from_slice(REDACTED);
    out.push(b'@');
    out.extend_from_slice(domain.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(strategy: MaskStrategy, value: &str) -> String {
        let out = Masker::new(b"test key").mask(strategy, value.as_bytes());
        String::from_utf8(out).expect("masked output is UTF-8")
    }

    #[test]
    fn redact_is_fixed_whatever_the_input() {
        for value in ["", "a", "a much longer secret value", "日本語"] {
            assert_eq!(m(MaskStrategy::Redact, value), "****");
        }
        let out = Masker::new(b"k").mask(MaskStrategy::Redact, b"\xff\xfe");
        assert_eq!(out, b"****");
    }

    #[test]
    fn partial_keeps_a_little_of_each_end() {
        let cases = [
            ("", ""),
            ("a", "*"),
            ("abcde", "*****"),
            ("secret", "s****t"),
            ("abcdefghijk", "a*********k"),
            ("abcdefghijkl", "ab********kl"),
            ("+1 555 123 4567", "+1***********67"),
        ];
        for (value, masked) in cases {
            assert_eq!(m(MaskStrategy::Partial, value), masked, "{value:?}");
        }
    }

    #[test]
    fn partial_never_splits_a_multibyte_character() {
        assert_eq!(m(MaskStrategy::Partial, "日本語"), "***");
        assert_eq!(m(MaskStrategy::Partial, "éàçüöß"), "é****ß");
        assert_eq!(m(MaskStrategy::Partial, "😀bcdefghijk😀"), "😀b********k😀");
        assert_eq!(m(MaskStrategy::Partial, "Straße-München"), "St**********en");
    }

    #[test]
    fn invalid_utf8_is_redacted_not_cut() {
        let masker = Masker::new(b"k");
        for strategy in [MaskStrategy::Partial, MaskStrategy::Email] {
            let out = masker.mask(strategy, b"caf\xe9 latin-1 bytes @x.org");
            assert_eq!(out, REDACTED);
        }
        // `hash` works on bytes and does not care.
        assert_eq!(masker.mask(MaskStrategy::Hash, b"\xff").len(), HASH_HEX_LEN);
    }

    #[test]
    fn hash_is_keyed_stable_short_hex() {
        let a = Masker::new(b"key one");
        let b = Masker::new(b"key two");
        let h = a.mask(MaskStrategy::Hash, b"alice@example.com");
        assert_eq!(h.len(), HASH_HEX_LEN);
        assert!(
            h.iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, a.mask(MaskStrategy::Hash, b"alice@example.com"));
        assert_eq!(h, a.clone().mask(MaskStrategy::Hash, b"alice@example.com"));
        assert_ne!(h, b.mask(MaskStrategy::Hash, b"alice@example.com"));
        assert_ne!(h, a.mask(MaskStrategy::Hash, b"alice@example.org"));
        assert_eq!(a.mask(MaskStrategy::Hash, b"").len(), HASH_HEX_LEN);
        assert_ne!(
            a.mask(MaskStrategy::Hash, b""),
            a.mask(MaskStrategy::Hash, b" ")
        );
    }

    #[test]
    fn hash_is_hmac_sha256_truncated() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let out = Masker::new(b"Jefe").mask(MaskStrategy::Hash, b"what do ya want for nothing?");
        assert_eq!(out, b"5bdcc146bf60754e");
    }

    #[test]
    fn hash_outputs_are_distinct_in_practice() {
        let masker = Masker::new(b"k");
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            assert!(seen.insert(masker.mask(MaskStrategy::Hash, i.to_string().as_bytes())));
        }
    }

    #[test]
    fn email_keeps_first_char_and_domain() {
        let cases = [
            ("alice@example.com", "a****@example.com"),
            ("a@b.c", "a****@b.c"),
            ("\"odd@local\"@example.com", "\"****@example.com"),
            ("élise@exämple.fr", "é****@exämple.fr"),
            // Not addresses: fall back to partial.
            ("not an email", "no********il"),
            ("@example.com", "@e********om"),
            ("alice@", "a****@"),
            ("", ""),
        ];
        for (value, masked) in cases {
            assert_eq!(m(MaskStrategy::Email, value), masked, "{value:?}");
        }
    }

    #[test]
    fn mask_into_appends_to_the_callers_buffer() {
        let masker = Masker::new(b"k");
        let mut out = b"prefix:".to_vec();
        masker.mask_into(MaskStrategy::Email, b"bob@example.com", &mut out);
        masker.mask_into(MaskStrategy::Redact, b"x", &mut out);
        assert_eq!(out, b"prefix:b****@example.com****");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", Masker::new(b"super secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
