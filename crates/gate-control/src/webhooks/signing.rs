//! Standard Webhooks signatures.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; the signature is
//! HMAC-SHA256 over it with the secret's key (the base64-decoded part after `whsec_`),
//! base64-encoded and versioned: `v1,<base64>`. During a rotation's grace period the
//! `webhook-signature` header carries one signature per secret, space-separated, the
//! current secret's first; a receiver accepts the request if any one verifies.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use gate_store::{WEBHOOK_SECRET_PREFIX, WebhookSecrets};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Standard base64 that accepts the key with or without padding, as the reference
/// libraries do.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret that cannot sign: not `whsec_<base64>`, or empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the webhook secret is not whsec_<base64>")]
pub struct BadSecret;

/// The HMAC key of a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret
        .strip_prefix(WEBHOOK_SECRET_PREFIX)
        .ok_or(BadSecret)?;
    let key = LENIENT_BASE64.decode(encoded).map_err(|_| BadSecret)?;
    if key.is_empty() {
        return Err(BadSecret);
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// The `webhook-signature` header value: the current secret's signature, then the previous
/// secret's while it is still valid, space-separated.
pub fn signature_header(
    secrets: &WebhookSecrets,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, BadSecret> {
    let mut header = sign(&secret_key(&secrets.current)?, id, timestamp, body);
    if let Some(previous) = &secrets.previous {
        header.push(' ');
        header.push_str(&sign(&secret_key(previous)?, id, timestamp, body));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference libraries'
    /// tests), cross-checked with the Python `standardwebhooks` package:
    /// `Webhook(secret).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)`.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specification_example() {
        let key = secret_key(SPEC_SECRET).unwrap();
        assert_eq!(
            sign(&key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        // Any change to id, timestamp or body changes the signature.
        assert_ne!(
            sign(&key, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        assert_ne!(
            sign(&key, "msg_other", SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        assert_ne!(
            sign(&key, SPEC_ID, SPEC_TIMESTAMP, br#"{"test": 2432232315}"#),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn signs_a_gate_event_like_the_python_library() {
        // python: Webhook("whsec_plJ3nmyCDGBKInavdOK15jsl").sign("evt_0192aaaa",
        //   datetime.fromtimestamp(1700000000, tz=timezone.utc), '{"type":"access.approved"}')
        let key = secret_key("whsec_plJ3nmyCDGBKInavdOK15jsl").unwrap();
        assert_eq!(
            sign(
                &key,
                "evt_0192aaaa",
                1_700_000_000,
                br#"{"type":"access.approved"}"#
            ),
            "v1,+B9OsLU657SYl2QH/U+oTLMVqvnNfWLs8ZG/oJjZ+VU="
        );
    }

    #[test]
    fn two_secrets_sign_twice_current_first() {
        let previous = "whsec_plJ3nmyCDGBKInavdOK15jsl".to_string();
        let secrets = WebhookSecrets {
            current: SPEC_SECRET.to_string(),
            previous: Some(previous.clone()),
        };
        let header =
            signature_header(&secrets, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert_eq!(
            parts[1],
            sign(
                &secret_key(&previous).unwrap(),
                SPEC_ID,
                SPEC_TIMESTAMP,
                SPEC_BODY.as_bytes()
            )
        );
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
        let one = WebhookSecrets {
            current: SPEC_SECRET.to_string(),
            previous: None,
        };
        assert_eq!(
            signature_header(&one, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()).unwrap(),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(
            secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(BadSecret)
        );
        assert_eq!(secret_key("whsec_"), Err(BadSecret));
        assert_eq!(secret_key("whsec_not base64!"), Err(BadSecret));
        // Padded and unpadded encodings of one key agree.
        assert_eq!(
            secret_key("whsec_AAECAw==").unwrap(),
            secret_key("whsec_AAECAw").unwrap()
        );
        let broken = WebhookSecrets {
            current: SPEC_SECRET.to_string(),
            previous: Some("whsec_!!".to_string()),
        };
        assert!(signature_header(&broken, "i", 1, b"{}").is_err());
    }
}
