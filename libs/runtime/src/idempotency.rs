//! Request ids. A retry under the same id is answered with the first answer and changes
//! nothing; a different request under an id already used is refused, so a client's mistake is
//! never answered with another request's result. Requests are told apart by a digest of their
//! encoding with the id left out (maps encode in key order, so the same request always has the
//! same digest).

use sha2::{Digest, Sha256};
use std::fmt::Write;

/// A request's idempotency key: its request id and the digest of what it asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub digest: String,
}

impl Key {
    /// `without_id` makes the request with its id cleared; it is only called when there is an id.
    pub fn of<M: prost::Message>(id: &str, without_id: impl FnOnce() -> M) -> Self {
        let digest = if id.is_empty() { String::new() } else { self::digest(&without_id()) };
        Self { id: id.to_owned(), digest }
    }

    /// No key: work that is not a client's request.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_none(&self) -> bool {
        self.id.is_empty()
    }
}

/// The digest of a request whose request id has been cleared.
pub fn digest<M: prost::Message>(request_without_id: &M) -> String {
    let hash = Sha256::digest(request_without_id.encode_to_vec());
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether a request with `digest` is the one saved with `stored`. Requests saved before
/// digests were kept (`stored` empty) are taken as the same.
pub fn same(stored: &str, digest: &str) -> bool {
    stored.is_empty() || stored == digest
}

/// The refusal of a request id reused for a different request.
pub fn reused() -> tonic::Status {
    tonic::Status::already_exists(
        "request_id: already used for a different request; a retry must send the same request",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use contactier_proto::contacts::v1 as pb;

    #[test]
    fn the_same_request_has_the_same_digest_and_another_does_not() {
        let input = |props: &[(&str, &str)]| pb::ContactInput {
            email: "a@example.com".into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let a = pb::CreateContactRequest {
            contact: Some(input(&[("a", "1"), ("b", "2"), ("c", "3")])),
            request_id: String::new(),
        };
        let same_in_another_order = pb::CreateContactRequest {
            contact: Some(input(&[("c", "3"), ("a", "1"), ("b", "2")])),
            request_id: String::new(),
        };
        let other =
            pb::CreateContactRequest { contact: Some(input(&[("a", "1")])), request_id: String::new() };
        assert_eq!(digest(&a), digest(&same_in_another_order));
        assert_ne!(digest(&a), digest(&other));
        assert_eq!(digest(&a).len(), 64);
        assert!(
            same("", &digest(&a)) && same(&digest(&a), &digest(&a)) && !same(&digest(&other), &digest(&a))
        );
    }
}
