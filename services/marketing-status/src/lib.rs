//! Marketing status of every contact, the live count, defaults, permissions and update dates (DESIGN.md section 2).

pub mod rules;

use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;

pub const NAME: &str = "marketing-status";

pub const SERVICE: ServiceDef = ServiceDef { name: NAME, default_port: 50052, migrations: None, build };

fn build(_env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async { Ok(ServiceSpec::bare(NAME)) })
}
