//! The invoice run: the day after an upgrade, at the subsidiary's processing time, issues the
//! prorated invoice of that day's upgrades. Driven by the injected clock; safe to repeat and to
//! run on several replicas (each invoice has a unique source key, numbers are taken in the
//! issuing transaction).

use crate::price_book::PriceBook;
use crate::store::Store;
use chrono::{DateTime, Days, Utc};
use contactier_runtime::clock::{Worker, WorkerWaker};
use contactier_runtime::shutdown::Shutdown;
use std::sync::Arc;

/// Issues every invoice due at `now`; answers when the next one is due and how many were issued.
pub async fn run_once(
    store: &Store,
    book: &PriceBook,
    now: DateTime<Utc>,
) -> crate::error::Result<(Option<DateTime<Utc>>, u32)> {
    let mut next: Option<DateTime<Utc>> = None;
    let mut issued = 0;
    for (account, day) in store.uninvoiced_upgrade_days().await? {
        let Some(sub) = store.subscription(&account).await? else { continue };
        let Some(following) = day.checked_add_days(Days::new(1)) else { continue };
        let due = sub.processing_at(book, following);
        if due <= now {
            if let Some(inv) = store.issue_upgrade_invoice(&account, day, now, book).await? {
                tracing::info!(account = %account, invoice = %inv.id, number = inv.number, "upgrade invoice issued");
                issued += 1;
            }
        } else {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
    }
    Ok((next, issued))
}

pub async fn run(store: Store, book: Arc<PriceBook>, worker: Worker, relay: WorkerWaker, shutdown: Shutdown) {
    let (store, book, relay) = (&store, &book, &relay);
    worker
        .drive(shutdown, chrono::Duration::seconds(5), move |now| async move {
            let (next, issued) = run_once(store, book, now).await?;
            if issued > 0 {
                relay.wake();
            }
            Ok::<_, crate::error::Error>(next)
        })
        .await
}
