//! Marketing status of every contact, the live count, defaults, permissions and update dates (DESIGN.md section 2).

mod admin;
mod api;
mod convert;
mod events;
pub mod rules;
mod setting;
mod store;
mod targets;
mod update_dates;
mod workflows;

use contactier_proto::billing::v1 as bpb;
use contactier_proto::marketing_status::v1::{
    marketing_status_internal_service_server::MarketingStatusInternalServiceServer,
    marketing_status_service_server::MarketingStatusServiceServer,
};
use contactier_runtime::auth::{Access, Policy};
use contactier_runtime::db::Migrations;
use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::outbox::{Backoff, Delivered, Outbox, deliver_messages};
use contactier_runtime::server::ServiceSpec;
use contactier_runtime::work::OutboxFailures;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub const NAME: &str = "marketing-status";

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

pub const SERVICE: ServiceDef =
    ServiceDef { name: NAME, default_port: 50052, migrations: Some(&MIGRATIONS), build };

const API: &str = "contactier.marketing_status.v1.MarketingStatusService";
const INTERNAL: &str = "contactier.marketing_status.v1.MarketingStatusInternalService";

pub fn policy() -> Policy {
    Policy::new()
        .allow(
            API,
            Access::Read,
            &[
                "GetContactStatus",
                "BatchGetContactStatuses",
                "GetMarketingCount",
                "CheckEligibility",
                "GetUserPermission",
                "GetAccountSettings",
                "ListStatusChanges",
                "ListSourceDefaults",
                "ListUserPermissions",
                "GetWorkflow",
                "ListWorkflows",
                "GetWorkflowRun",
            ],
        )
        .allow(API, Access::Write, &["SetMarketingStatus", "RunWorkflow"])
        .allow(
            API,
            Access::Admin,
            &[
                "SetUserPermission",
                "EnableMarketingContacts",
                "UpdateSourceDefault",
                "CreateWorkflow",
                "DeleteWorkflow",
            ],
        )
        .internal(INTERNAL, &["ApplyContactEvents", "ExportContactStatusData"], &["contacts"])
        .internal(
            INTERNAL,
            &["ApplyUpdateDate", "ApplyUpdateDates", "SetAccountPlan", "SetAccountPlans"],
            &["billing"],
        )
}

fn build(env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async move {
        let store = store::Store::new(env.db.clone());
        let clock = env.platform.clock.clone();
        let relay_worker = clock.register_worker("marketing-status-relay");
        let relay = relay_worker.waker();
        let peer = env.platform.peer(NAME, &env.peers.billing_url)?;
        let deliver = deliver_messages(move |events: Vec<(String, bpb::CountChanged)>| {
            let peer = peer.clone();
            async move {
                let events = events.into_iter().map(|(_, e)| e).collect();
                let mut client =
                    bpb::billing_internal_service_client::BillingInternalServiceClient::new(peer.service());
                let r =
                    client.apply_count_events(bpb::ApplyCountEventsRequest { events }).await?.into_inner();
                // An event billing names as not applied waits, with why.
                let refused = r.refused.into_iter().map(|r| (r.event_id, r.status));
                Ok(Delivered::answered(r.acknowledged_event_ids, refused))
            }
        });
        let outbox = Outbox::new(env.db.clone(), store::BILLING_TOPIC);
        tokio::spawn(outbox.run(relay_worker, deliver, Backoff::default(), env.platform.shutdown.clone()));
        let contacts = targets::Contacts { peer: env.platform.peer(NAME, &env.peers.contacts_url)? };
        let workflow_worker = clock.register_worker(workflows::WORKER);
        let runner =
            workflows::Runner { store: store.clone(), contacts: contacts.clone(), relay: relay.clone() };
        let workflows = workflow_worker.waker();
        tokio::spawn(workflows::run(runner, workflow_worker, env.platform.shutdown.clone()));
        let rewrite_worker = clock.register_worker("marketing-status-rewrites");
        let update_dates_waker = rewrite_worker.waker();
        tokio::spawn(update_dates::run(store.clone(), rewrite_worker, env.platform.shutdown.clone()));
        let holds_worker = clock.register_worker("marketing-status-holds");
        store.on_hold(holds_worker.waker());
        tokio::spawn(setting::release_holds(
            store.clone(),
            relay.clone(),
            holds_worker,
            env.platform.shutdown.clone(),
        ));
        let api = api::Api {
            store: store.clone(),
            clock: clock.clone(),
            relay: relay.clone(),
            contacts,
            workflows,
        };
        let failing = vec![store.failing_work(), OutboxFailures::source(env.db.clone())];
        let internal =
            api::Internal { store, clock, relay, update_dates: update_dates_waker, held: Default::default() };
        let routes = Routes::new(MarketingStatusServiceServer::new(api))
            .add_service(MarketingStatusInternalServiceServer::new(internal));
        Ok(ServiceSpec {
            name: NAME,
            routes,
            policy: policy(),
            services: vec![API, INTERNAL],
            failing,
            db: Some(env.db.clone()),
        })
    })
}
