//! The invoice run: the day after an upgrade, at the subsidiary's processing time, issues the
//! prorated invoice of that day's upgrades. Driven by the injected clock; safe to repeat and to
//! run on several replicas (each invoice has a unique source key, numbers are taken in the
//! issuing transaction). An account whose invoice fails is recorded with its error and tried
//! again with backoff; every other account's invoices are issued meanwhile.

use crate::price_book::PriceBook;
use crate::store::{Store, UpgradeDay};
use chrono::{DateTime, Days, NaiveDate, Utc};
use contactier_runtime::clock::{Worker, WorkerWaker};
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::work;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

pub const WORKER: &str = "billing-invoices";

/// Delay before an invoice that failed `attempts` times is tried again: 5 s doubling to 15 min.
pub fn retry_delay(attempts: i64) -> Duration {
    work::backoff(attempts, Duration::from_secs(5), Duration::from_secs(900))
}

/// Invoices issued side by side: each is its own transaction, numbered per account, and one
/// account's days are issued in order.
const PARALLEL: usize = 8;

/// Issues every invoice due at `now`; answers when the next one is due and how many were issued.
pub async fn run_once(
    store: &Store,
    book: &PriceBook,
    now: DateTime<Utc>,
) -> crate::error::Result<(Option<DateTime<Utc>>, u32)> {
    // One account's days in order (their numbers follow them); accounts side by side.
    let mut by_account: std::collections::BTreeMap<String, Vec<UpgradeDay>> = Default::default();
    for d in store.uninvoiced_upgrade_days().await? {
        by_account.entry(d.account_id.clone()).or_default().push(d);
    }
    let outcomes: Vec<crate::error::Result<(Option<DateTime<Utc>>, u32)>> =
        futures::stream::iter(by_account.into_values())
            .map(|days| invoice_account(store, book, days, now))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    let mut next: Option<DateTime<Utc>> = None;
    let mut issued = 0;
    for o in outcomes {
        let (at, n) = o?;
        issued += n;
        next = match (next, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok((next, issued))
}

/// Issues one account's due invoices, day by day.
async fn invoice_account(
    store: &Store,
    book: &PriceBook,
    days: Vec<UpgradeDay>,
    now: DateTime<Utc>,
) -> crate::error::Result<(Option<DateTime<Utc>>, u32)> {
    let mut next: Option<DateTime<Utc>> = None;
    let mut later = |at: DateTime<Utc>| next = Some(next.map_or(at, |n: DateTime<Utc>| n.min(at)));
    let mut issued = 0;
    for UpgradeDay { account_id: account, day, retry_at } in days {
        if let Some(at) = retry_at.filter(|at| *at > now) {
            later(at);
            continue;
        }
        match invoice(store, book, &account, day, now).await {
            Ok(Due::Issued) => issued += 1,
            Ok(Due::Later(at)) => later(at),
            Ok(Due::Nothing) => {}
            Err(e) => {
                let error = e.to_string();
                let attempts = store.invoice_failed(&account, day, &error, now, retry_delay).await?;
                work::record_failure(WORKER, &account, &format!("upgrade:{day}"), attempts, &error);
                later(
                    now + chrono::Duration::from_std(retry_delay(attempts)).unwrap_or(chrono::Duration::MAX),
                );
            }
        }
    }
    Ok((next, issued))
}

enum Due {
    Issued,
    Later(DateTime<Utc>),
    Nothing,
}

async fn invoice(
    store: &Store,
    book: &PriceBook,
    account: &str,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> crate::error::Result<Due> {
    let Some(sub) = store.subscription(account).await? else { return Ok(Due::Nothing) };
    let Some(following) = day.checked_add_days(Days::new(1)) else { return Ok(Due::Nothing) };
    let due = sub.processing_at(book, following);
    if due > now {
        return Ok(Due::Later(due));
    }
    Ok(match store.issue_upgrade_invoice(account, day, now, book).await? {
        Some(inv) => {
            tracing::info!(account = %account, invoice = %inv.id, number = inv.number, "upgrade invoice issued");
            Due::Issued
        }
        None => Due::Nothing,
    })
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
