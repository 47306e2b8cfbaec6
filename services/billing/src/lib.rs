//! Subscriptions, the update-date calendar, automatic tier upgrades and prorated invoices (DESIGN.md section 2).

mod api;
pub mod calendar;
pub mod charges;
mod convert;
use contactier_runtime::error;
pub mod history;
mod internal;
mod invoicer;
pub mod model;
pub mod price_book;
pub mod proration;
mod store;
pub mod tiers;
mod update_dates;

use contactier_proto::billing::v1::{
    billing_internal_service_server::BillingInternalServiceServer,
    billing_service_server::BillingServiceServer,
};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_proto::notification::v1 as npb;
use contactier_runtime::auth::{Access, Policy};
use contactier_runtime::db::Migrations;
use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::outbox::{Backoff, Outbox, deliver_messages};
use contactier_runtime::read_cache::ReadCache;
use contactier_runtime::server::ServiceSpec;
use contactier_runtime::work::OutboxFailures;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use std::sync::Arc;
use tonic::service::Routes;

pub const NAME: &str = "billing";
/// How long a replica's claim on an update date lasts unless it renews it.
pub use update_dates::LEASE as UPDATE_DATE_LEASE;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

pub const SERVICE: ServiceDef =
    ServiceDef { name: NAME, default_port: 50053, migrations: Some(&MIGRATIONS), build };

const API: &str = "contactier.billing.v1.BillingService";
/// Accounts whose usage one replica keeps in memory (a few hundred bytes each).
const USAGE_CACHE_ACCOUNTS: u64 = 100_000;
const INTERNAL: &str = "contactier.billing.v1.BillingInternalService";

pub fn policy() -> Policy {
    Policy::new()
        .allow(
            API,
            Access::Read,
            &[
                "GetSubscription",
                "ListPriceBook",
                "ListSubsidiaries",
                "GetUsage",
                "GetUsageHistory",
                "PreviewUpgrade",
                "ListUpgrades",
                "ListInvoices",
                "GetInvoice",
                "GetCalendar",
            ],
        )
        .allow(API, Access::Admin, &["CreateSubscription", "RequestRenewalTier", "CancelRenewalTier"])
        .internal(INTERNAL, &["ApplyCountEvents"], &["marketing-status"])
        .internal(INTERNAL, &["ExportAccountBillingData"], &["contacts"])
}

/// Plans one SetAccountPlans call carries (its limit in the proto).
const PLANS_PER_CALL: usize = 256;

/// The price book: CONTACTIER_PRICE_BOOK names a TOML file; the default one ships inside.
fn load_price_book() -> anyhow::Result<price_book::PriceBook> {
    match std::env::var("CONTACTIER_PRICE_BOOK") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
            Ok(price_book::PriceBook::parse(&text)?)
        }
        Err(_) => Ok(price_book::PriceBook::parse(price_book::DEFAULT)?),
    }
}

fn build(env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async move {
        let book = load_price_book()?;
        build_with(env, book).await
    })
}

/// Builds the service with a given price book, and starts its invoice run and its relay of
/// events to notification.
pub async fn build_with(env: ServiceEnv, book: price_book::PriceBook) -> anyhow::Result<ServiceSpec> {
    let book = Arc::new(book);
    let clock = env.platform.clock.clone();
    let shutdown = env.platform.shutdown.clone();
    let usage_cache =
        ReadCache::new(&env.db, env.platform.read_cache_ttl, USAGE_CACHE_ACCOUNTS, shutdown.clone()).await;
    let store = store::Store::new(env.db.clone(), usage_cache);

    let relay_worker = clock.register_worker("billing-relay");
    let relay = relay_worker.waker();
    let peer = env.platform.peer(NAME, &env.peers.notification_url)?;
    let deliver = deliver_messages(move |events: Vec<(String, npb::BillingEvent)>| {
        let peer = peer.clone();
        async move {
            let events = events.into_iter().map(|(_, e)| e).collect();
            let mut client =
                npb::notification_internal_service_client::NotificationInternalServiceClient::new(
                    peer.service(),
                );
            let r =
                client.apply_billing_events(npb::ApplyBillingEventsRequest { events }).await?.into_inner();
            // An event notification names as not applied waits, with why.
            let refused = r.refused.into_iter().map(|r| (r.event_id, r.status));
            Ok(contactier_runtime::outbox::Delivered::answered(r.acknowledged_event_ids, refused))
        }
    });
    let outbox = Outbox::new(env.db.clone(), store::NOTIFICATION_TOPIC);
    tokio::spawn(outbox.run(relay_worker, deliver, Backoff::default(), shutdown.clone()));

    // Account plans to marketing-status, which gates workflows by edition.
    let plan_worker = clock.register_worker("billing-plans");
    let ms = env.platform.peer(NAME, &env.peers.marketing_status_url)?;
    let plans_peer = ms.clone();
    let deliver_plans = deliver_messages(move |plans: Vec<(String, mpb::SetAccountPlanRequest)>| {
        let peer = plans_peer.clone();
        async move {
            let mut client =
                mpb::marketing_status_internal_service_client::MarketingStatusInternalServiceClient::new(
                    peer.service(),
                );
            let mut acknowledged = Vec::with_capacity(plans.len());
            for chunk in plans.chunks(PLANS_PER_CALL) {
                let request =
                    mpb::SetAccountPlansRequest { plans: chunk.iter().map(|(_, p)| p.clone()).collect() };
                match client.set_account_plans(request).await {
                    Ok(_) => {}
                    // A replica from before SetAccountPlans (during a rolling upgrade): one at a time.
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        for (_, plan) in chunk {
                            client.set_account_plan(plan.clone()).await?;
                        }
                    }
                    Err(s) => return Err(s.into()),
                }
                acknowledged.extend(chunk.iter().map(|(id, _)| id.clone()));
            }
            Ok(acknowledged)
        }
    });
    let plans = Outbox::new(env.db.clone(), store::MARKETING_STATUS_TOPIC);
    let plans_waker = plan_worker.waker();
    tokio::spawn(plans.run(plan_worker, deliver_plans, Backoff::default(), shutdown.clone()));

    let invoice_worker = clock.register_worker(invoicer::WORKER);
    let invoicer = invoice_worker.waker();
    tokio::spawn(invoicer::run(store.clone(), book.clone(), invoice_worker, relay.clone(), shutdown.clone()));

    let apply: update_dates::ApplyUpdates = Arc::new(move |dates| {
        let peer = ms.clone();
        Box::pin(async move {
            let mut client =
                mpb::marketing_status_internal_service_client::MarketingStatusInternalServiceClient::new(
                    peer.service(),
                );
            let dates: Vec<mpb::ApplyUpdateDateRequest> = dates
                .into_iter()
                .map(|(account_id, date, effective_at)| mpb::ApplyUpdateDateRequest {
                    account_id,
                    update_date: Some(convert::pb_date(date)),
                    effective_at: Some(contactier_runtime::convert::timestamp(effective_at)),
                })
                .collect();
            match client.apply_update_dates(mpb::ApplyUpdateDatesRequest { dates: dates.clone() }).await {
                Ok(r) => Ok(r.into_inner().results.into_iter().map(convert::applied_result).collect()),
                // A replica from before ApplyUpdateDates (during a rolling upgrade): one at a time.
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    let mut answers = Vec::with_capacity(dates.len());
                    for req in dates {
                        let answer = client.apply_update_date(req).await;
                        answers.push(answer.map(|r| convert::applied(r.into_inner())).map_err(Into::into));
                    }
                    Ok(answers)
                }
                Err(s) => Err(s.into()),
            }
        })
    });
    let update_worker = clock.register_worker(update_dates::WORKER);
    let update_dates_waker = update_worker.waker();
    let run = update_dates::UpdateDateRun {
        store: store.clone(),
        book: book.clone(),
        apply,
        owner: contactier_runtime::convert::new_id(),
        clock: clock.clone(),
        renew_every: update_dates::RENEW_EVERY,
        relay: relay.clone(),
    };
    tokio::spawn(update_dates::run(run, update_worker, shutdown));
    // A new subscription has a first update date to schedule, a plan to send and its first
    // usage state to announce.
    let on_subscribe = vec![update_dates_waker, plans_waker, relay.clone()];
    let api = api::Api { store: store.clone(), clock: clock.clone(), book: book.clone(), on_subscribe };
    let failing = vec![store.failing_work(), OutboxFailures::source(env.db.clone())];
    let internal = internal::Internal { store, clock, book, relay, invoicer, held: Default::default() };
    let routes =
        Routes::new(BillingServiceServer::new(api)).add_service(BillingInternalServiceServer::new(internal));
    Ok(ServiceSpec {
        name: NAME,
        routes,
        policy: policy(),
        services: vec![API, INTERNAL],
        failing,
        db: Some(env.db.clone()),
    })
}
