//! What every Contactier service runs on.

pub mod append;
pub mod auth;
pub mod by_account;
pub use contactier_client::balance;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod conn;
pub mod convert;
pub mod db;
pub mod error;
pub use contactier_client::deadline;
pub mod host;
pub mod idempotency;
pub mod jwks;
pub mod limits;
pub mod malloc;
pub mod nodelay;
pub mod ops;
pub mod outbox;
pub mod paging;
pub mod panics;
pub mod prom;
pub mod read_cache;
pub mod request;
pub mod rich;
pub mod rpc_metrics;
pub mod server;
pub mod shutdown;
pub mod sql;
pub mod storage_failure;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod work;

pub use auth::{Access, Authenticator, Policy, Principal};
pub use clock::Clock;
pub use config::RuntimeArgs;
pub use db::{Backend, Db, Migrations};
pub use server::{ServeOptions, ServiceSpec};
pub use shutdown::Shutdown;
