//! Request ids. A retry under the same id is answered with the first answer and changes
//! nothing; a different request under an id already used (another call, another caller, other
//! content) is refused, so a client's mistake is never answered with another request's result.
//! Requests are told apart by a digest of the call, the caller and the request's encoding with
//! the id left out (maps encode in key order, so the same request always has the same digest).

use sha2::{Digest, Sha256};

/// A request's idempotency key: its request id and the digest of what it asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub digest: String,
}

impl Key {
    /// The key of a request of `call` (the RPC) by `caller`; `without_id` makes the request
    /// with its id cleared, and is only called when there is an id.
    pub fn of<M: prost::Message>(id: &str, call: &str, caller: &str, without_id: impl FnOnce() -> M) -> Self {
        let digest = if id.is_empty() { String::new() } else { self::digest(call, caller, &without_id()) };
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

/// The digest of a request of `call` by `caller` whose request id has been cleared.
pub fn digest<M: prost::Message>(call: &str, caller: &str, request_without_id: &M) -> String {
    let mut hasher = Sha256::new();
    for part in [call.as_bytes(), caller.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(request_without_id.encode_to_vec());
    crate::convert::hex(&hasher.finalize())
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
        let d = |m: &pb::CreateContactRequest| digest("CreateContact", "u1", m);
        assert_eq!(d(&a), d(&same_in_another_order));
        assert_ne!(d(&a), d(&other));
        assert_ne!(d(&a), digest("BatchCreateContacts", "u1", &a), "another call");
        assert_ne!(d(&a), digest("CreateContact", "u2", &a), "another caller");
        assert_eq!(d(&a).len(), 64);
        assert!(same("", &d(&a)) && same(&d(&a), &d(&a)) && !same(&d(&other), &d(&a)));
    }
}
