//! Contact records, properties, search, imports, merges, lists and GDPR (DESIGN.md section 3).

use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;

pub const NAME: &str = "contacts";

pub const SERVICE: ServiceDef = ServiceDef { name: NAME, default_port: 50051, migrations: None, build };

fn build(_env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async { Ok(ServiceSpec::bare(NAME)) })
}
