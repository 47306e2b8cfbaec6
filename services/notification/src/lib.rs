//! Threshold alerts and their delivery (DESIGN.md section 2, notifications).

pub mod thresholds;

use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;

pub const NAME: &str = "notification";

pub const SERVICE: ServiceDef = ServiceDef { name: NAME, default_port: 50054, migrations: None, build };

fn build(_env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async { Ok(ServiceSpec::bare(NAME)) })
}
