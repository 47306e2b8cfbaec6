//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! where the key is the base64 part of a `whsec_` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

const PREFIX: &str = "whsec_";

/// A new random secret in the Standard Webhooks format.
pub fn new_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The key of a `whsec_` secret, or None when it is not one.
pub fn key(secret: &str) -> Option<Vec<u8>> {
    let k = STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    (k.len() >= 16).then_some(k)
}

/// The `webhook-signature` header value for a message.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key(secret)?).ok()?;
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_generated_and_checked() {
        let s = new_secret();
        assert!(key(&s).is_some());
        assert_ne!(s, new_secret());
        for bad in ["", "whsec_", "whsec_!!!", "secret", "whsec_c2hvcnQ="] {
            assert!(key(bad).is_none(), "{bad:?}");
        }
    }
}
