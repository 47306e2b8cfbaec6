//! The Contactier gRPC contracts, generated from `proto/`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Encoded `FileDescriptorSet` of every Contactier proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/contactier_descriptor.bin"));

pub mod checks;

/// One RPC of the contracts, as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// `/package.Service/Method`, as on the wire.
    pub path: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
    /// The field number of the request's `request_id` (a key that makes a resent request
    /// answer what the first did), for the requests that have one.
    pub request_id: Option<u32>,
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// The method at `path`, if it is one of the contracts'.
pub fn method(path: &str) -> Option<&'static Method> {
    METHODS.binary_search_by(|m| m.path.cmp(path)).ok().map(|i| &METHODS[i])
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("contactier.common.v1");
    }
}
pub mod contacts {
    pub mod v1 {
        tonic::include_proto!("contactier.contacts.v1");
    }
}
pub mod marketing_status {
    pub mod v1 {
        tonic::include_proto!("contactier.marketing_status.v1");
    }
}
pub mod billing {
    pub mod v1 {
        tonic::include_proto!("contactier.billing.v1");
    }
}
pub mod notification {
    pub mod v1 {
        tonic::include_proto!("contactier.notification.v1");
    }
}
pub mod ops {
    pub mod v1 {
        tonic::include_proto!("contactier.ops.v1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_path_with_what_it_streams_and_its_request_id() {
        assert!(METHODS.len() > 50);
        for m in METHODS {
            assert_eq!(method(m.path), Some(m));
        }
        let import = method("/contactier.contacts.v1.ContactsService/ImportContacts").unwrap();
        assert!(import.client_streaming && import.server_streaming);
        let watch = method("/contactier.notification.v1.NotificationService/WatchAlerts").unwrap();
        assert!(watch.server_streaming && !watch.client_streaming);
        let set =
            method("/contactier.marketing_status.v1.MarketingStatusService/SetMarketingStatus").unwrap();
        assert_eq!(set.request_id, Some(1));
        assert_eq!(method("/contactier.billing.v1.BillingService/GetUsage").unwrap().request_id, None);
        assert_eq!(method("/contactier.billing.v1.BillingService/Nope"), None);
    }

    #[test]
    fn the_descriptor_set_has_the_error_details_every_refusal_carries() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let details = set
            .file
            .iter()
            .find(|f| f.name() == "google/rpc/error_details.proto")
            .expect("error_details.proto");
        let names: Vec<&str> = details.message_type.iter().map(|m| m.name()).collect();
        for wanted in ["ErrorInfo", "RetryInfo", "BadRequest", "ResourceInfo", "PreconditionFailure"] {
            assert!(names.contains(&wanted), "{wanted} in {names:?}");
        }
    }
}
