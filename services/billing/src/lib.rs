//! Subscriptions, the update-date calendar, automatic tier upgrades and prorated invoices (DESIGN.md section 2).

pub mod calendar;
pub mod price_book;
pub mod proration;
pub mod tiers;

use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;

pub const NAME: &str = "billing";

pub const SERVICE: ServiceDef = ServiceDef { name: NAME, default_port: 50053, migrations: None, build };

fn build(_env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async { Ok(ServiceSpec::bare(NAME)) })
}
