//! The update-date run: at each account's processing instant, asks marketing-status to apply
//! the update date (retried with backoff until it answers), then records the period's count and,
//! at a renewal, invoices the new term. Driven by the injected clock. Replicas share the work
//! through a lease in the database; marketing-status applies a date once however often asked,
//! and completing it is conditional on the date still being due, so nothing happens twice.

use crate::price_book::PriceBook;
use crate::store::{Applied, Completed, DueUpdate, Store};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_runtime::clock::{Clock, Worker, WorkerWaker};
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::work;
use futures::StreamExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// An update date to apply: the account, the date and its processing instant.
pub type DateToApply = (String, NaiveDate, DateTime<Utc>);

/// Asks marketing-status to apply update dates, each effective at its instant: an answer a
/// date, in order, or Err when the call as a whole failed.
pub type ApplyUpdates = Arc<
    dyn Fn(Vec<DateToApply>) -> BoxFuture<'static, anyhow::Result<Vec<anyhow::Result<Applied>>>>
        + Send
        + Sync,
>;

/// How long a claimed date is reserved for the replica processing it, on the service's clock.
/// The replica renews it every [`RENEW_EVERY`] while it works, so one that dies leaves its
/// claimed dates to the others within this (at 5 minutes a killed replica's batch of 256
/// accounts waited that long, seen from outside, while the rest of the instant took 2 s).
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a replica renews the leases of the dates it is working on (real time).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Chunks of accounts processed at once.
const PARALLEL: usize = 8;
pub const WORKER: &str = "billing-update-dates";
/// When a run met an account it could not process or record, the next run is at most this far.
const RETRY_UNRECORDED: chrono::Duration = chrono::Duration::seconds(5);
const BATCH: i64 = 256;
/// A processed date: what marketing-status answered and what completing it did, or why not.
type Outcome = (DueUpdate, anyhow::Result<(Applied, Completed)>);
/// Dates applied in one call to marketing-status and completed in one transaction.
const CHUNK: usize = 32;

/// Delay before retry `attempt` (0-based): 5 s doubling, at most 15 min.
pub fn retry_delay(attempt: i64) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.clamp(0, 20));
    Duration::from_secs(secs.min(900))
}

pub struct UpdateDateRun {
    pub store: Store,
    pub book: Arc<PriceBook>,
    pub apply: ApplyUpdates,
    /// This replica's lease owner name.
    pub owner: String,
    /// The clock leases are renewed by.
    pub clock: Clock,
    /// How often the leases of dates being worked on are renewed: [`RENEW_EVERY`].
    pub renew_every: Duration,
    /// Pokes the relay when a date has been processed (its usage state, any renewal invoice).
    pub relay: WorkerWaker,
}

impl UpdateDateRun {
    /// Processes every update date due at `now`; answers when the next one falls due.
    pub async fn run_once(&self, now: DateTime<Utc>) -> crate::error::Result<Option<DateTime<Utc>>> {
        // Accounts tried in this run: one whose failure could not even be recorded stays due,
        // and is left for the next run rather than tried again at once.
        let mut tried = std::collections::HashSet::new();
        // Tried and still due: the only ones a read finds again (a processed date moved on, a
        // failed one waits for its retry, another run's is leased), so each read is a batch
        // more than these, not more than everything tried before.
        let mut unrecorded = 0;
        loop {
            let due: Vec<DueUpdate> = self
                .store
                .due_updates(now, BATCH + unrecorded as i64)
                .await?
                .into_iter()
                .filter(|d| !tried.contains(&d.account_id))
                .collect();
            if due.is_empty() {
                break;
            }
            tried.extend(due.iter().map(|d| d.account_id.clone()));
            // One statement claims the batch: a commit per account made each wait for its own
            // flush of the log.
            let claimed = self.store.claim_updates(&due, &self.owner, now, now + LEASE).await?;
            let accounts: Vec<String> = claimed.iter().map(|d| d.account_id.clone()).collect();
            // Not claimed: another run's, leased, so not read again.
            unrecorded += self.holding(&accounts, self.process(claimed, now)).await;
        }
        let next = self.store.next_update_due(now).await?;
        // A date whose failure could not even be recorded is tried again after a pause.
        let retry = now + RETRY_UNRECORDED;
        Ok(if unrecorded > 0 { Some(next.map_or(retry, |n| n.min(retry))) } else { next })
    }

    /// Runs `work` while keeping this replica's leases on `accounts`' dates, renewed every
    /// `renew_every` (a slow marketing-status must not hand live work to another replica).
    /// Stopped between renewals, never in the middle of one's statement.
    async fn holding<T>(&self, accounts: &[String], work: impl Future<Output = T>) -> T {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let renew = async {
            let start = tokio::time::Instant::now() + self.renew_every;
            let mut every = tokio::time::interval_at(start, self.renew_every);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = every.tick() => {}
                }
                let until = self.clock.now() + LEASE;
                if let Err(e) = self.store.renew_updates(accounts, &self.owner, until).await {
                    tracing::warn!(error = %e, "renewing the leases of update dates being processed failed");
                }
            }
        };
        let work = async {
            let out = work.await;
            drop(stop);
            out
        };
        tokio::join!(work, renew).0
    }

    /// Processes claimed dates [`CHUNK`] at a time, chunks side by side: a chunk is applied at
    /// marketing-status in one call, and its applied dates are completed in one transaction (a
    /// call and a commit each made every account wait for its own round trip and flush of the
    /// log). A date that fails is recorded and tried again later; answers how many failures
    /// could not even be recorded (those dates stay due).
    async fn process(&self, claimed: Vec<DueUpdate>, now: DateTime<Utc>) -> usize {
        let chunks: Vec<Vec<DueUpdate>> = claimed.chunks(CHUNK).map(<[DueUpdate]>::to_vec).collect();
        let outcomes: Vec<Vec<Outcome>> = futures::stream::iter(chunks)
            .map(|chunk| self.apply_and_complete(chunk, now))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let outcomes = outcomes.into_iter().flatten();
        let mut unrecorded = 0;
        for (d, outcome) in outcomes {
            match outcome {
                Ok((applied, done)) => {
                    if let Some(inv) = &done.renewal_invoice {
                        tracing::info!(account = %d.account_id, invoice = %inv.id, number = inv.number, "renewal invoice issued");
                    }
                    if let Some(u) = &done.upgrade {
                        metrics::counter!("contactier_upgrades_total").increment(1);
                        tracing::info!(account = %d.account_id, from = u.from_tier, to = u.to_tier, "upgraded by a count that came after the update date");
                    }
                    if done.done_here {
                        // The date's usage state is in the outbox: send it now, at the date's instant.
                        self.relay.wake();
                        tracing::info!(account = %d.account_id, date = %d.update_date, applied = applied.contacts, "update date processed");
                    }
                }
                Err(e) => {
                    // One account's failure is its own: logged and recorded, never the run's.
                    let error = format!("{e:#}");
                    work::record_failure(
                        WORKER,
                        &d.account_id,
                        &d.update_date.to_string(),
                        d.attempts + 1,
                        &error,
                    );
                    let retry_at =
                        now + chrono::Duration::from_std(retry_delay(d.attempts)).expect("small delay");
                    let retry =
                        self.store.retry_update(&d.account_id, d.update_date, &self.owner, retry_at, &error);
                    if let Err(e) = retry.await {
                        work::record_failure(
                            WORKER,
                            &d.account_id,
                            &d.update_date.to_string(),
                            d.attempts + 1,
                            &e.to_string(),
                        );
                        unrecorded += 1;
                    }
                }
            }
        }
        unrecorded
    }

    /// Applies a chunk of dates at marketing-status, each effective at its processing instant
    /// as scheduled, and completes those it applied.
    async fn apply_and_complete(&self, chunk: Vec<DueUpdate>, now: DateTime<Utc>) -> Vec<Outcome> {
        let asked = chunk.iter().map(|d| (d.account_id.clone(), d.update_date, d.due_at)).collect();
        let answers: Vec<anyhow::Result<Applied>> = match (self.apply)(asked).await {
            Ok(answers) if answers.len() == chunk.len() => answers,
            Ok(answers) => {
                let e = format!("marketing-status answered {} of {} dates", answers.len(), chunk.len());
                chunk.iter().map(|_| Err(anyhow::anyhow!("{e}"))).collect()
            }
            Err(e) => chunk.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect(),
        };
        let mut outcomes = Vec::with_capacity(chunk.len());
        let mut applied = Vec::with_capacity(chunk.len());
        for (d, answer) in chunk.into_iter().zip(answers) {
            match answer {
                Ok(a) => applied.push((d, a)),
                Err(e) => outcomes.push((d, Err(e))),
            }
        }
        outcomes.extend(self.complete(applied, now).await);
        outcomes
    }

    /// Completes applied dates in one transaction, or one by one when that fails.
    async fn complete(&self, chunk: Vec<(DueUpdate, Applied)>, now: DateTime<Utc>) -> Vec<Outcome> {
        if chunk.is_empty() {
            return vec![];
        }
        let dates: Vec<(String, NaiveDate, Applied)> =
            chunk.iter().map(|(d, a)| (d.account_id.clone(), d.update_date, *a)).collect();
        if let Ok(completed) = self.store.complete_updates(&dates, now, &self.book).await {
            return chunk.into_iter().zip(completed).map(|((d, a), c)| (d, Ok((a, c)))).collect();
        }
        let mut out = Vec::with_capacity(chunk.len());
        for (d, a) in chunk {
            let c = self.store.complete_update(&d.account_id, d.update_date, a, now, &self.book).await;
            out.push((d, c.map(|c| (a, c)).map_err(anyhow::Error::from)));
        }
        out
    }
}

pub async fn run(run: UpdateDateRun, worker: Worker, shutdown: Shutdown) {
    let s = &run;
    worker.drive(shutdown, chrono::Duration::seconds(5), move |now| s.run_once(now)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use contactier_runtime::db::Backend;
    use contactier_runtime::sql::Sql;

    /// A replica keeps the lease of a date while marketing-status is slow to answer for it,
    /// by the clock's time then, so no other replica takes live work over.
    #[tokio::test]
    async fn a_run_renews_the_lease_of_dates_it_is_still_working_on() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let at = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
            let (t, store) = crate::store::store_with_dates_due(backend, &["slow"], at).await;
            let (answer, answered) = tokio::sync::oneshot::channel::<()>();
            let answered = Arc::new(tokio::sync::Mutex::new(Some(answered)));
            let apply: ApplyUpdates = Arc::new(move |dates| {
                let answered = answered.clone();
                Box::pin(async move {
                    let _ = answered.lock().await.take().expect("asked once").await;
                    Ok(dates.iter().map(|_| Err(anyhow::anyhow!("marketing-status went away"))).collect())
                })
            });
            let clock = Clock::manual(at);
            let run = UpdateDateRun {
                store,
                book: Arc::new(PriceBook::parse(crate::price_book::DEFAULT).unwrap()),
                apply,
                owner: "me".into(),
                clock: clock.clone(),
                renew_every: Duration::from_millis(20),
                relay: Clock::manual(at).register_worker("relay").waker(),
            };
            let lease = || async {
                let read = "SELECT lease_owner, lease_until FROM subscriptions WHERE account_id = 'slow'";
                let (owner, until): (String, i64) = t.db.fetch_one(Sql::new(read)).await.unwrap();
                (owner, DateTime::from_timestamp_micros(until).unwrap())
            };
            let running = run.run_once(at);
            let watching = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(lease().await, ("me".into(), at + LEASE), "{backend:?}: claimed");
                // The call is still out when the clock has moved on by more than a lease.
                let later = at + chrono::Duration::minutes(2);
                clock.advance_to(later).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(lease().await, ("me".into(), later + LEASE), "{backend:?}: renewed");
                answer.send(()).unwrap();
            };
            let (ran, ()) = tokio::join!(running, watching);
            ran.unwrap();
            // Failed: no one's lease, the retry 5 s after the run's time.
            let retry = at + chrono::Duration::seconds(5);
            assert_eq!(lease().await, (String::new(), retry), "{backend:?}: given up when the work ended");
        }
    }
    #[test]
    fn retries_back_off_to_a_ceiling() {
        let secs: Vec<u64> = (0..10).map(|a| super::retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 640, 900, 900]);
        assert_eq!(super::retry_delay(10_000).as_secs(), 900);
    }
}
