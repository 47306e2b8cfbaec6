//! Contact records, properties, search, imports, merges, lists and GDPR (DESIGN.md section 3).

mod api;
pub mod behaviour;
mod convert;
pub mod csv_records;
pub mod duplicates;
pub mod email;
pub mod engagements;
mod event_calls;
use contactier_runtime::error;
pub mod filter;
pub mod fuzzing;
pub mod import;
mod import_file;
mod import_slots;
pub mod lifecycle;
pub mod names;
pub mod properties;
mod record;
pub mod scoring;
mod store;
mod value_index;

use contactier_proto::contacts::v1::contacts_service_server::ContactsServiceServer;
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::auth::{Access, Policy};
use contactier_runtime::db::Migrations;
use contactier_runtime::host::{ServiceDef, ServiceEnv};
use contactier_runtime::outbox::{Backoff, Deliver, Outbox};
use contactier_runtime::server::ServiceSpec;
use futures::future::BoxFuture;
use prost::Message;
use sqlx::migrate::Migrator;
use std::collections::{HashMap, HashSet};
use tonic::service::Routes;

pub const NAME: &str = "contacts";

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

pub const SERVICE: ServiceDef =
    ServiceDef { name: NAME, default_port: 50051, migrations: Some(&MIGRATIONS), build };

const API: &str = "contactier.contacts.v1.ContactsService";

pub fn policy() -> Policy {
    Policy::new()
        .allow(
            API,
            Access::Read,
            &[
                "GetContact",
                "BatchGetContacts",
                "SearchContacts",
                "CountContacts",
                "GetProperty",
                "ListProperties",
                "GetImport",
                "ListImportErrors",
                "GetList",
                "ListLists",
                "ListListMembers",
                "ListContactMemberships",
                "GetConsent",
                "ListPropertyHistory",
                "GetEngagement",
                "ListEngagements",
                "ListContactEvents",
                "ListDuplicateCandidates",
                "GetLifecycleReport",
                "ListScoringRules",
                "GetScoringSettings",
            ],
        )
        .allow(
            API,
            Access::Write,
            &[
                "CreateContact",
                "UpdateContact",
                "DeleteContact",
                "BatchCreateContacts",
                "BatchUpdateContacts",
                "BatchDeleteContacts",
                "MergeContacts",
                "ImportContacts",
                "CreateList",
                "UpdateList",
                "DeleteList",
                "AddListMembers",
                "RemoveListMembers",
                "SetConsent",
                "CreateEngagement",
                "UpdateEngagement",
                "DeleteEngagement",
                "RecordContactEvents",
                "DismissDuplicate",
            ],
        )
        .allow(
            API,
            Access::Admin,
            &[
                "CreateProperty",
                "UpdateProperty",
                "DeleteProperty",
                "ExportContactData",
                "EraseContact",
                "AnonymizeContact",
                "CreateScoringRule",
                "DeleteScoringRule",
                "SetScoringSettings",
            ],
        )
}

async fn score_due_contacts(
    store: store::Store,
    worker: contactier_runtime::clock::Worker,
    shutdown: contactier_runtime::Shutdown,
) {
    let store = &store;
    worker
        .drive(shutdown, chrono::Duration::seconds(5), move |now| async move {
            let now = contactier_runtime::convert::micros(now);
            loop {
                let (done, next) = store.rescore_due(now, 500).await?;
                if done < 500 {
                    return Ok::<_, error::Error>(next.and_then(chrono::DateTime::from_timestamp_micros));
                }
            }
        })
        .await;
}

/// Writes the duplicate match keys of contacts from before keys were kept, a batch at a time,
/// until none is left; a failed batch is tried again a little later. Replicas may do it side by
/// side: writing a contact's keys twice gives the same keys.
async fn key_old_contacts(store: store::Store, shutdown: contactier_runtime::Shutdown) {
    let mut wait = std::time::Duration::from_millis(100);
    while !shutdown.is_triggered() {
        match store.key_unkeyed_contacts(500).await {
            Ok(0) => return,
            Ok(n) => tracing::debug!(contacts = n, "duplicate match keys written"),
            Err(e) => {
                tracing::warn!(error = %e, "writing duplicate match keys failed; trying again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.wait() => return,
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}

fn build(env: ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>> {
    Box::pin(async move {
        let store = store::Store::new(env.db.clone());
        tokio::spawn(key_old_contacts(store.clone(), env.platform.shutdown.clone()));
        let clock = env.platform.clock.clone();
        let relay_worker = clock.register_worker("contacts-relay");
        let relay = relay_worker.waker();
        let marketing_status = env.platform.peer(NAME, &env.peers.marketing_status_url)?;
        let peer = marketing_status.clone();
        // Each outbox entry is a batch of contact events; it is done when every one of them is
        // acknowledged.
        let deliver: Deliver = Box::new(move |entries| {
            let peer = peer.clone();
            Box::pin(async move {
                let mut client =
                    mpb::marketing_status_internal_service_client::MarketingStatusInternalServiceClient::new(
                        peer.service(),
                    );
                let mut done = contactier_runtime::outbox::Delivered::default();
                let sizes: Vec<(usize, usize)> =
                    entries.iter().map(|e| (e.payload.len(), event_calls::event_count(&e.payload))).collect();
                for call in event_calls::calls(&sizes) {
                    // Decoded a call at a time: an entry can hold a whole import batch.
                    let mut request = mpb::ApplyContactEventsRequest::default();
                    let mut of_entry = Vec::new();
                    for entry in &entries[call] {
                        let batch = mpb::ApplyContactEventsRequest::decode(entry.payload.as_slice())?;
                        let ids: Vec<String> = batch.events.iter().map(|e| e.event_id.clone()).collect();
                        if !ids.is_empty() {
                            request.batch_sizes.push(u32::try_from(ids.len())?);
                        }
                        of_entry.push((entry.event_id.clone(), ids));
                        request.events.extend(batch.events);
                    }
                    let answer = client.apply_contact_events(request).await?.into_inner();
                    let acked: HashSet<String> = answer.acknowledged_event_ids.into_iter().collect();
                    // An event marketing-status names as not applied fails its entry, with why.
                    let refused: HashMap<String, tonic::Status> = answer
                        .refused
                        .into_iter()
                        .map(|r| (r.event_id, contactier_runtime::rich::from_rpc_status(r.status)))
                        .collect();
                    for (entry, ids) in of_entry {
                        if ids.iter().all(|id| acked.contains(id)) {
                            done.acked.push(entry);
                        } else if let Some(why) = ids.iter().find_map(|id| refused.get(id)) {
                            done.refused.push((entry, why.clone()));
                        }
                    }
                }
                Ok(done)
            })
        });
        let outbox = Outbox::new(env.db.clone(), store::MARKETING_STATUS_TOPIC);
        tokio::spawn(outbox.run(relay_worker, deliver, Backoff::default(), env.platform.shutdown.clone()));
        let failing =
            vec![contactier_runtime::work::OutboxFailures::source(env.db.clone()), store.failing_work()];
        // Scores that change by themselves (an event leaving a rule's window) and every score
        // of an account whose rules changed, a batch at a time on the injected clock.
        let scoring_worker = clock.register_worker(store::SCORING_WORKER);
        let scoring = scoring_worker.waker();
        tokio::spawn(score_due_contacts(store.clone(), scoring_worker, env.platform.shutdown.clone()));
        let api = api::Api { store, clock, relay, marketing_status, scoring, imports: Default::default() };
        let routes = Routes::new(ContactsServiceServer::new(api));
        Ok(ServiceSpec {
            name: NAME,
            routes,
            policy: policy(),
            services: vec![API],
            failing,
            db: Some(env.db.clone()),
        })
    })
}
