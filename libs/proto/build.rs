//! Compiles proto/ with protox (pure Rust, no system protoc), generates tonic code that decodes
//! through the checking codec, and writes the limit checks of every message and the table of
//! every method (what a client needs to know to retry one).

use prost::Message;
use std::path::PathBuf;

#[path = "build/checks.rs"]
mod checks;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "contactier/common/v1/common.proto",
        "contactier/common/v1/limits.proto",
        "contactier/contacts/v1/contacts.proto",
        "contactier/marketing_status/v1/marketing_status.proto",
        "contactier/billing/v1/billing.proto",
        "contactier/notification/v1/notification.proto",
        "contactier/ops/v1/ops.proto",
        // Not imported by any contract, but named by every refusal's details: served by
        // reflection so grpcurl and generated clients can read them.
        "google/rpc/error_details.proto",
    ];
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this set, so grpcurl can describe every service.
    std::fs::write(out.join("contactier_descriptor.bin"), fds.encode_to_vec())?;
    std::fs::write(out.join("checks.rs"), checks::generate(&compiler.descriptor_pool()))?;
    std::fs::write(out.join("methods.rs"), methods(&compiler.descriptor_pool()))?;
    // Maps as BTreeMap: a message then always encodes to the same bytes, so a request can be
    // known again by its digest.
    tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types::pb")
        .codec_path("crate::checks::Checked")
        .btree_map(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build");
    Ok(())
}

/// `pub const METHODS: &[Method]`, sorted by path: every RPC, whether it streams, and the field
/// number of its request's `request_id`, if it has one.
fn methods(pool: &prost_reflect::DescriptorPool) -> String {
    let mut rows: Vec<String> = pool
        .services()
        .filter(|s| s.package_name().starts_with("contactier."))
        .flat_map(|s| {
            s.methods()
                .map(|m| {
                    let request_id = match m.input().get_field_by_name("request_id") {
                        Some(f) if f.kind() == prost_reflect::Kind::String && !f.is_list() => {
                            format!("Some({})", f.number())
                        }
                        _ => "None".to_owned(),
                    };
                    format!(
                        "    Method {{ path: \"/{}/{}\", client_streaming: {}, server_streaming: {}, request_id: {request_id} }},\n",
                        s.full_name(),
                        m.name(),
                        m.is_client_streaming(),
                        m.is_server_streaming()
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    format!("pub const METHODS: &[Method] = &[\n{}];\n", rows.concat())
}
