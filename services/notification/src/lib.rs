//! Threshold alerts and their delivery (DESIGN.md section 2, notifications): usage, upgrade
//! and invoice events from billing become alerts once each; alerts go to the in-app feed and
//! its watch stream, and to signed webhooks and email with retries and dead letters.

mod alerts;
mod api;
mod convert;
mod delivery;
use contactier_runtime::error;
mod internal;
mod signing;
mod store;
pub mod targets;
pub mod thresholds;
pub mod watch;

pub use delivery::DeliveryArgs;

use contactier_proto::notification::v1::{
    notification_internal_service_server::NotificationInternalServiceServer,
    notification_service_server::NotificationServiceServer,
};
use contactier_runtime::auth::{Access, Policy};
use contactier_runtime::db::Migrations;
use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub const NAME: &str = "notification";

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

pub const SERVICE: ServiceDef =
    ServiceDef { name: NAME, default_port: 50054, migrations: Some(&MIGRATIONS), build };

const API: &str = "contactier.notification.v1.NotificationService";
const INTERNAL: &str = "contactier.notification.v1.NotificationInternalService";

pub fn policy() -> Policy {
    Policy::new()
        .allow(
            API,
            Access::Read,
            &["ListRecipients", "ListAlerts", "WatchAlerts", "ListDeliveries", "ListDeadLetters"],
        )
        .allow(API, Access::Write, &["RedriveDeadLetter"])
        .allow(API, Access::Admin, &["CreateRecipient", "DeleteRecipient"])
        .internal(INTERNAL, &["ApplyBillingEvents"], &["billing"])
}

fn build(env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async move {
        use clap::Parser;
        // Delivery settings come from the environment, so the command line stays the same
        // for every service.
        #[derive(Parser)]
        struct Env {
            #[command(flatten)]
            delivery: DeliveryArgs,
        }
        build_with(env, Env::try_parse_from([NAME])?.delivery).await
    })
}

/// Builds the service with explicit delivery settings, and starts its delivery worker.
pub async fn build_with(env: ServiceEnv, args: DeliveryArgs) -> anyhow::Result<ServiceSpec> {
    let store = store::Store::new(env.db.clone());
    let clock = env.platform.clock.clone();
    let worker = clock.register_worker(delivery::WORKER);
    let waker = worker.waker();
    let sender = delivery::Sender::new(&args)?;
    let allowed = args.allowed();
    let digest_window = std::time::Duration::from_millis(args.digest_window_ms);
    let watchers = watch::Watchers::new(args.watch_limits());
    tokio::spawn(delivery::run(store.clone(), worker, sender, args, env.platform.shutdown.clone()));
    tokio::spawn(watchers.clone().poll(store.clone(), env.platform.shutdown.clone()));
    let api = api::Api {
        store: store.clone(),
        clock: clock.clone(),
        watchers: watchers.clone(),
        shutdown: env.platform.shutdown.clone(),
        delivery: waker.clone(),
        allowed,
    };
    let failing = vec![store.failing_work()];
    let internal = internal::Internal {
        store,
        clock,
        watchers,
        delivery: waker,
        digest_window,
        held: Default::default(),
    };
    let routes = Routes::new(NotificationServiceServer::new(api))
        .add_service(NotificationInternalServiceServer::new(internal));
    Ok(ServiceSpec {
        name: NAME,
        routes,
        policy: policy(),
        services: vec![API, INTERNAL],
        failing,
        db: Some(env.db.clone()),
    })
}
