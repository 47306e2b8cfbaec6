//! The Contactier gRPC contracts, generated from `proto/`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Encoded `FileDescriptorSet` of every Contactier proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/contactier_descriptor.bin"));

pub mod checks;

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
