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
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub const WORKER: &str = "billing-invoices";

/// Delay before an invoice that failed `attempts` times is tried again: 5 s doubling to 15 min.
pub fn retry_delay(attempts: i64) -> Duration {
    work::backoff(attempts, Duration::from_secs(5), Duration::from_secs(900))
}

/// Transactions issuing invoices side by side.
const PARALLEL: usize = 8;
/// Invoices of different accounts issued in one transaction.
const CHUNK: usize = 16;

/// Issues every invoice due at `now`; answers when the next one is due and how many were issued.
pub async fn run_once(
    store: &Store,
    book: &PriceBook,
    now: DateTime<Utc>,
) -> crate::error::Result<(Option<DateTime<Utc>>, u32)> {
    // An account's days in order (their numbers follow them): its first due day in the first
    // round, its second in the next; the accounts of a round side by side.
    let mut by_account: BTreeMap<String, VecDeque<UpgradeDay>> = BTreeMap::new();
    for d in store.uninvoiced_upgrade_days().await? {
        by_account.entry(d.account_id.clone()).or_default().push_back(d);
    }
    let mut next = Next(None);
    let mut issued = 0;
    loop {
        let round: Vec<UpgradeDay> = by_account.values_mut().filter_map(VecDeque::pop_front).collect();
        if round.is_empty() {
            break;
        }
        issued += invoice_round(store, book, round, now, &mut next).await?;
    }
    Ok((next.0, issued))
}

/// The earliest of the times something is due later.
struct Next(Option<DateTime<Utc>>);

impl Next {
    fn at(&mut self, at: DateTime<Utc>) {
        self.0 = Some(self.0.map_or(at, |n| n.min(at)));
    }
}

/// Issues the due invoices of a round (at most one day an account), [`CHUNK`] to a transaction.
async fn invoice_round(
    store: &Store,
    book: &PriceBook,
    round: Vec<UpgradeDay>,
    now: DateTime<Utc>,
    next: &mut Next,
) -> crate::error::Result<u32> {
    let mut due = Vec::with_capacity(round.len());
    let mut waiting = Vec::with_capacity(round.len());
    for d in round {
        match d.retry_at.filter(|at| *at > now) {
            Some(at) => next.at(at),
            None => waiting.push(d),
        }
    }
    for ids in waiting.chunks(1_000) {
        let accounts: Vec<&str> = ids.iter().map(|d| d.account_id.as_str()).collect();
        let subs = store.subscriptions(&accounts).await?;
        for d in ids {
            let Some(sub) = subs.get(&d.account_id) else { continue };
            let Some(following) = d.day.checked_add_days(Days::new(1)) else { continue };
            // A subscription that cannot be read fails its invoice, which records why.
            let Ok(sub) = sub else {
                due.push((d.account_id.clone(), d.day));
                continue;
            };
            let at = sub.processing_at(book, following);
            if at > now {
                next.at(at);
            } else {
                due.push((d.account_id.clone(), d.day));
            }
        }
    }
    let chunks: Vec<Vec<(String, NaiveDate)>> = due.chunks(CHUNK).map(<[_]>::to_vec).collect();
    let outcomes: Vec<crate::error::Result<(u32, Option<DateTime<Utc>>)>> = futures::stream::iter(chunks)
        .map(|chunk| invoice_chunk(store, book, chunk, now))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut issued = 0;
    for o in outcomes {
        let (n, retry) = o?;
        issued += n;
        if let Some(at) = retry {
            next.at(at);
        }
    }
    Ok(issued)
}

/// Issues a chunk of due invoices in one transaction, or one by one when that fails (one
/// account's failure is recorded and retried with backoff; the others are issued meanwhile).
/// Answers how many were issued and, after a failure, when to try again.
async fn invoice_chunk(
    store: &Store,
    book: &PriceBook,
    chunk: Vec<(String, NaiveDate)>,
    now: DateTime<Utc>,
) -> crate::error::Result<(u32, Option<DateTime<Utc>>)> {
    if let Ok(invoices) = store.issue_upgrade_invoices(&chunk, now, book).await {
        for ((account, _), inv) in chunk.iter().zip(&invoices) {
            if let Some(inv) = inv {
                tracing::info!(account = %account, invoice = %inv.id, number = inv.number, "upgrade invoice issued");
            }
        }
        return Ok((invoices.iter().flatten().count() as u32, None));
    }
    let mut next = Next(None);
    let mut issued = 0;
    for (account, day) in chunk {
        match store.issue_upgrade_invoice(&account, day, now, book).await {
            Ok(Some(inv)) => {
                tracing::info!(account = %account, invoice = %inv.id, number = inv.number, "upgrade invoice issued");
                issued += 1;
            }
            Ok(None) => {}
            Err(e) => {
                let error = e.to_string();
                let attempts = store.invoice_failed(&account, day, &error, now, retry_delay).await?;
                work::record_failure(WORKER, &account, &format!("upgrade:{day}"), attempts, &error);
                next.at(
                    now + chrono::Duration::from_std(retry_delay(attempts)).unwrap_or(chrono::Duration::MAX)
                );
            }
        }
    }
    Ok((issued, next.0))
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
        .await;
}
