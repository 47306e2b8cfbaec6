//! Compiles proto/ with protox (pure Rust, no system protoc) and generates tonic code.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "contactier/common/v1/common.proto",
        "contactier/contacts/v1/contacts.proto",
        "contactier/marketing_status/v1/marketing_status.proto",
        "contactier/billing/v1/billing.proto",
        "contactier/notification/v1/notification.proto",
        "contactier/ops/v1/ops.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    // Reflection serves this set, so grpcurl can describe every service.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("contactier_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
