//! The update-date run's storage: which accounts have an update date due, a lease so one
//! replica processes it, and the transaction that records the period's count and, at a
//! renewal, the renewal invoice and the term's tier.

use super::invoices::{self, NewInvoice};
use super::states::{self, NewState};
use super::{NOTIFICATION_TOPIC, Store, SubscriptionRow, day, parse_day};
use crate::calendar;
use crate::charges;
use crate::error::{Error, Result};
use crate::model::{self, Counts, Invoice, InvoiceKind, Subscription, Upgrade};
use crate::price_book::PriceBook;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::convert::micros;
use contactier_runtime::db::Db;
use contactier_runtime::outbox::EventTx;
use contactier_runtime::sql::{Sql, Transaction, Tx};
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};

/// An account whose update date is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueUpdate {
    pub account_id: String,
    pub update_date: NaiveDate,
    pub attempts: i64,
    /// The date's processing instant, as scheduled.
    pub due_at: DateTime<Utc>,
}

/// What marketing-status answered when it applied the date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Contacts that became non-marketing.
    pub contacts: i64,
    pub marketing: i64,
    pub non_marketing: i64,
    pub version: i64,
}

/// What completing an update date did.
#[derive(Clone, Debug, Default)]
pub struct Completed {
    /// False when another run had completed it first.
    pub done_here: bool,
    pub renewal_invoice: Option<Invoice>,
    /// An upgrade in the new period, by a count that came after the date's instant.
    pub upgrade: Option<Upgrade>,
}

const DUE: &str = "/* across accounts: update dates due */ SELECT account_id, next_update_date, update_attempts, next_update_at FROM subscriptions \
     WHERE next_update_date <> '' AND next_update_at <= $1 AND lease_until <= $1 \
     ORDER BY next_update_at, account_id LIMIT $2";

/// When a date is next due after `$1`: the first date after it, or the earliest lease running
/// past it (a claim, or a failed date's pause before its retry; completing a date frees its
/// lease, to 0). A date due by then and free is the run's to take, not a time to wake for.
/// Each is the first entry of an index (`subscriptions_due`, `subscriptions_leased`): a scan of
/// every subscription took most of an instant of thousands of accounts, read once a batch.
const NEXT_DUE: &str = "/* across accounts: when an update date is next due */ SELECT \
     (SELECT MIN(next_update_at) FROM subscriptions WHERE next_update_date <> '' AND next_update_at > $1), \
     (SELECT MIN(lease_until) FROM subscriptions WHERE lease_until > 0 AND lease_until > $1 \
     AND next_update_date <> '')";

/// A failed date waits for its retry with no owner: the lease it had ends, so the run's
/// renewals (which keep its owner's claims alive) leave its retry time as it is.
const RETRY: &str = "UPDATE subscriptions SET lease_until = $1, update_attempts = update_attempts + 1, \
     update_error = $5, lease_owner = '' WHERE account_id = $2 AND next_update_date = $3 AND lease_owner = $4";

/// Columns of a batch's records (`x`): each account's update date, what completing it writes.
const COMPLETION: &[(&str, &str)] = &[
    ("acct", "text"),
    ("due", "text"),
    ("renewal", "boolean"),
    ("applied", "bigint"),
    ("count", "bigint"),
    ("version", "bigint"),
    ("old_tier", "bigint"),
    ("tier", "bigint"),
    ("next", "text"),
    ("next_at", "bigint"),
];

/// (account, date, attempts, processing instant in microseconds) as read.
type DueRow = (String, String, i64, i64);

fn due_update((account_id, d, attempts, at): DueRow) -> Result<DueUpdate> {
    let due_at = DateTime::from_timestamp_micros(at).unwrap_or_default();
    Ok(DueUpdate { account_id, update_date: parse_day(&d)?, attempts, due_at })
}

impl Store {
    /// Update dates due at `now` whose lease is free (or has run out), oldest first.
    pub async fn due_updates(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<DueUpdate>> {
        let rows: Vec<DueRow> = self.db.fetch_all(Sql::new(DUE).bind(micros(now)).bind(limit)).await?;
        rows.into_iter().map(due_update).collect()
    }

    /// When the next update date after `now` falls due (or a failed one is retried).
    pub async fn next_update_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let (waiting, later): (Option<i64>, Option<i64>) =
            self.db.fetch_one(Sql::new(NEXT_DUE).bind(micros(now))).await?;
        let at = waiting.into_iter().chain(later).min();
        Ok(at.and_then(DateTime::from_timestamp_micros))
    }

    /// Takes the lease until `until` on each of these accounts' update dates that is still due
    /// and free at `now`, in one statement; answers those taken (the others are another run's
    /// or were completed meanwhile).
    pub async fn claim_updates(
        &self,
        due: &[DueUpdate],
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<DueUpdate>> {
        if due.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<&str> = due.iter().map(|d| d.account_id.as_str()).collect();
        let ids = serde_json::to_string(&ids).expect("JSON of strings");
        let q = format!(
            "UPDATE subscriptions SET lease_owner = $1, lease_until = $2 WHERE {} \
             AND next_update_date <> '' AND next_update_at <= $4 AND lease_until <= $4 \
             RETURNING account_id, next_update_date, update_attempts, next_update_at",
            self.db.json_in("account_id", 3)
        );
        let claim = Sql::new(AssertSqlSafe(q)).bind(owner).bind(micros(until)).bind(ids).bind(micros(now));
        let rows: Vec<DueRow> = self.db.fetch_all(claim).await?;
        let mut claimed = rows.into_iter().map(due_update).collect::<Result<Vec<_>>>()?;
        // In the order they fell due, as read.
        claimed.sort_by_key(|c| due.iter().position(|d| d.account_id == c.account_id));
        Ok(claimed)
    }

    /// Keeps `owner`'s leases on these accounts' dates until `until`: those it claimed and
    /// has neither completed nor failed (both give the lease up), and no other owner's.
    pub async fn renew_updates(&self, accounts: &[String], owner: &str, until: DateTime<Utc>) -> Result<()> {
        if accounts.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(accounts).expect("JSON of strings");
        let q = format!(
            "UPDATE subscriptions SET lease_until = $2 WHERE {} AND lease_owner = $1 AND next_update_date <> ''",
            self.db.json_in("account_id", 3)
        );
        self.db.execute(Sql::new(AssertSqlSafe(q)).bind(owner).bind(micros(until)).bind(ids)).await?;
        Ok(())
    }

    /// Records a failed attempt and its error; the date is tried again at `retry_at`.
    pub async fn retry_update(
        &self,
        account: &str,
        date: NaiveDate,
        owner: &str,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        let retry =
            Sql::new(RETRY).bind(micros(retry_at)).bind(account).bind(day(date)).bind(owner).bind(error);
        self.db.execute(retry).await?;
        Ok(())
    }

    /// Completes an update date in one transaction: records the period's count; at a renewal
    /// issues the renewal invoice at the new term's tier (a requested lower tier if it holds the
    /// count) and applies that tier; moves the subscription to its next update date. A date
    /// completed before is left as it is.
    pub async fn complete_update(
        &self,
        account: &str,
        date: NaiveDate,
        applied: Applied,
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<Completed> {
        let done = self.complete_updates(&[(account.to_owned(), date, applied)], now, book).await?;
        Ok(done.into_iter().next().unwrap_or_default())
    }

    /// Completes several accounts' update dates in one transaction, each as
    /// [`Store::complete_update`] would: all or none (the caller then completes them one by one).
    pub async fn complete_updates(
        &self,
        dates: &[(String, NaiveDate, Applied)],
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<Vec<Completed>> {
        let _forget: Vec<_> = dates.iter().map(|(a, _, _)| self.usage_cache.forget_after(a)).collect();
        let mut tx = self.db.begin_write().await?;
        let mut seen = HashSet::new();
        let out = if dates.iter().all(|(a, _, _)| seen.insert(a.as_str())) {
            complete(&mut tx, &self.db, dates, now, book).await?
        } else {
            // An account twice: its dates one after another, each seeing the one before.
            let mut out = Vec::with_capacity(dates.len());
            for d in dates {
                out.extend(complete(&mut tx, &self.db, std::slice::from_ref(d), now, book).await?);
            }
            out
        };
        tx.commit().await?;
        Ok(out)
    }
}

/// Update dates' completion, in the caller's transaction, for accounts named once each: a
/// statement each for the subscriptions, the periods, the move to the next dates (with the
/// state versions), the days' tiers and the states' events, whatever the number of accounts;
/// a renewal's invoice is the account's own. A date no longer due is left as it is.
async fn complete(
    tx: &mut Transaction,
    db: &Db,
    dates: &[(String, NaiveDate, Applied)],
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Vec<Completed>> {
    let ids: Vec<&str> = dates.iter().map(|d| d.0.as_str()).collect();
    let q = format!(
        concat!("SELECT ", subscription_columns!(), " FROM subscriptions WHERE {}"),
        db.json_in("account_id", 1)
    );
    let ids = serde_json::to_string(&ids).expect("JSON of strings");
    let rows: Vec<SubscriptionRow> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(ids)).await?;
    let mut subs: HashMap<String, Subscription> = HashMap::new();
    for row in rows {
        let sub = row.into_model()?;
        subs.insert(sub.account_id.clone(), sub);
    }
    let mut out = Vec::with_capacity(dates.len());
    let mut records = Vec::new();
    let mut states: Vec<(&str, NewState<'static>)> = Vec::new();
    // Renewal invoices, by the index of their date's answer: issued together below.
    let mut renewals: Vec<(usize, NewInvoice)> = Vec::new();
    for (account, date, applied) in dates {
        let Some(sub) = subs.get(account).filter(|s| s.next_update_date == Some(*date)) else {
            out.push(Completed::default());
            continue;
        };
        let count =
            model::billed_count(sub.marketing_contacts_enabled, applied.marketing, applied.non_marketing);
        let renewal = calendar::is_renewal_date(sub.start_date, sub.term, *date);
        let mut tier = sub.tier;
        if renewal {
            let line;
            (tier, line) = charges::renewal(sub, book, *date, count)?;
            let inv = NewInvoice {
                account,
                source_key: format!("renewal:{}", day(*date)),
                kind: InvoiceKind::Renewal,
                currency: sub.currency.as_str(),
                term: (line.period_start, line.period_end),
                lines: vec![line],
            };
            renewals.push((out.len(), inv));
        }
        let next = calendar::next_update_date(sub.start_date, sub.term, *date);
        records.push(serde_json::json!({
            "acct": account, "due": day(*date), "renewal": renewal, "applied": applied.contacts,
            "count": count, "version": applied.version, "old_tier": sub.tier, "tier": tier,
            "next": day(next), "next_at": micros(sub.processing_at(book, next)),
        }));
        // A new period (and at a renewal a new term and tier) begins: its state, even when
        // the count did not move, re-arms the thresholds.
        let change = if renewal { npb::UsageChange::Renewal } else { npb::UsageChange::PeriodStart };
        states.push((account, NewState { period_start: *date, tier, count, change, upgrade: None }));
        out.push(Completed { done_here: true, renewal_invoice: None, upgrade: None });
    }
    // A renewal invoiced before (a date tried again) is not invoiced twice; the others are
    // issued with a statement each for their numbers, rows and notices, before the states'
    // events, so notification hears of an invoice before the period it opens.
    let keys: Vec<(&str, &str)> = renewals.iter().map(|(_, i)| (i.account, i.source_key.as_str())).collect();
    let invoiced = invoices::invoiced_many(tx, db, &keys).await?;
    let (at, invs): (Vec<usize>, Vec<NewInvoice>) = renewals
        .into_iter()
        .filter(|(_, i)| !invoiced.contains(&(i.account.to_owned(), i.source_key.clone())))
        .unzip();
    for (i, invoice) in at.into_iter().zip(invoices::issue_many(tx, db, invs, now).await?) {
        out[i].renewal_invoice = Some(invoice);
    }
    if records.is_empty() {
        return Ok(out);
    }
    let x = db.json_records(1, COMPLETION);
    let records = serde_json::Value::Array(records).to_string();
    // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT ... FROM as a join's.
    let periods = format!(
        "INSERT INTO update_periods (account_id, update_date, renewal, applied_contacts, period_count, \
         count_version, tier, processed_at) SELECT acct, due, renewal, applied, count, version, tier, $2 \
         FROM {x} WHERE true ON CONFLICT (account_id, update_date) DO NOTHING"
    );
    tx.execute(Sql::new(AssertSqlSafe(periods)).bind(&records).bind(micros(now))).await?;
    // Conditional on the tier read: an upgrade committed meanwhile makes the date run again
    // with the new tier rather than be overwritten. Each account's next state version with it.
    let move_on = format!(
        "UPDATE subscriptions SET tier = x.tier, \
         renewal_tier = CASE WHEN x.renewal THEN 0 ELSE subscriptions.renewal_tier END, \
         next_update_date = x.next, next_update_at = x.next_at, lease_owner = '', lease_until = 0, \
         update_attempts = 0, update_error = '', period_start = x.due, \
         state_version = subscriptions.state_version + 1 FROM {x} \
         WHERE subscriptions.account_id = x.acct AND subscriptions.next_update_date = x.due \
         AND subscriptions.tier = x.old_tier RETURNING account_id, state_version"
    );
    let moved: Vec<(String, i64)> = tx.fetch_all(Sql::new(AssertSqlSafe(move_on)).bind(&records)).await?;
    if moved.len() != states.len() {
        return Err(Error::Internal("subscription changed while its update date was completed".into()));
    }
    // From the date on, usage history shows the tier the renewal applied.
    let days = format!(
        "INSERT INTO usage_daily (account_id, day, max_count, last_count, tier) \
         SELECT acct, due, count, count, tier FROM {x} WHERE true \
         ON CONFLICT (account_id, day) DO UPDATE SET tier = excluded.tier"
    );
    tx.execute(Sql::new(AssertSqlSafe(days)).bind(&records)).await?;
    let versions: HashMap<String, i64> = moved.into_iter().collect();
    let events: Vec<(String, String, Vec<u8>)> = states
        .iter()
        .map(|(account, s)| {
            let (id, payload) = states::event(account, versions[*account], s, now);
            (id, (*account).to_owned(), payload)
        })
        .collect();
    tx.enqueue_many(NOTIFICATION_TOPIC, &events, now).await?;
    take_later_counts(tx, db, dates, &mut out, now, book).await?;
    Ok(out)
}

/// The counts kept after the dates' instants, before they were recorded (see
/// `CountOutcome::AfterUpdateDate`), applied in the periods just opened: each account's
/// latest, where newer than the count its date answered. One read for the set; an account
/// with such a count (rare: the date's record came late) is applied on its own.
async fn take_later_counts(
    tx: &mut Transaction,
    db: &Db,
    dates: &[(String, NaiveDate, Applied)],
    out: &mut [Completed],
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<()> {
    let done: Vec<&str> =
        dates.iter().zip(out.iter()).filter(|(_, c)| c.done_here).map(|(d, _)| d.0.as_str()).collect();
    let q = format!(
        "SELECT account_id, version, marketing, pending_non_marketing, non_marketing FROM account_counts WHERE {}",
        db.json_in("account_id", 1)
    );
    let done = serde_json::to_string(&done).expect("JSON of strings");
    let kept: Vec<(String, i64, i64, i64, i64)> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(done)).await?;
    for (account, version, marketing, pending_non_marketing, non_marketing) in kept {
        let Some(i) = dates.iter().position(|d| d.0 == account) else { continue };
        if version <= dates[i].2.version {
            continue;
        }
        let sub = super::subscription(tx, &account)
            .await?
            .ok_or_else(|| Error::Internal("subscription gone".into()))?;
        let c = Counts { version, marketing, pending_non_marketing, non_marketing };
        out[i].upgrade = super::take_count(tx, &sub, c, now, book).await?;
    }
    Ok(())
}

/// A store of its own whose `accounts` each have a monthly subscription with an update date
/// (15 May 2026) due at `at`, and the database it is in.
#[cfg(test)]
pub(crate) async fn store_with_dates_due(
    backend: contactier_runtime::db::Backend,
    accounts: &[&str],
    at: DateTime<Utc>,
) -> (contactier_runtime::testing::TestDb, Store) {
    let t = contactier_runtime::testing::TestDb::new(backend, "billing").await;
    t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
    let shutdown = contactier_runtime::Shutdown::new();
    let cache =
        contactier_runtime::read_cache::ReadCache::new(&t.db, std::time::Duration::ZERO, 1, shutdown).await;
    let store = Store::new(t.db.clone(), cache);
    for a in accounts {
        let q = "INSERT INTO subscriptions (account_id, edition, term, start_date, currency, subsidiary, \
             tier, marketing_contacts_enabled, created_at, next_update_date, next_update_at) \
             VALUES ($1, 'professional', 'monthly', '2026-04-20', 'EUR', 'eu', 2000, true, 0, '2026-05-15', $2)";
        t.db.execute(Sql::new(q).bind(*a).bind(micros(at))).await.unwrap();
    }
    (t, store)
}

#[cfg(test)]
mod tests {
    use super::store_with_dates_due;
    use contactier_runtime::db::Backend;
    use contactier_runtime::sql::Sql;
    use contactier_runtime::testing::TestDb;

    /// A replica renews only the claims it still works on: a date it failed keeps its retry
    /// time (renewing it would cut a backoff of minutes to the lease), and a date another
    /// replica took over keeps that replica's lease.
    #[tokio::test]
    async fn a_replica_renews_its_own_unfinished_claims_only() {
        use chrono::{TimeZone, Utc};
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let at = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
            let (t, store) = store_with_dates_due(backend, &["working", "failed", "taken"], at).await;
            let due = store.due_updates(at, 10).await.unwrap();
            let lease = at + crate::update_dates::LEASE;
            assert_eq!(store.claim_updates(&due, "me", at, lease).await.unwrap().len(), 3, "{backend:?}");
            let retry_at = at + chrono::Duration::minutes(15);
            store.retry_update("failed", due[0].update_date, "me", retry_at, "refused").await.unwrap();
            let other = at + chrono::Duration::seconds(45);
            let take =
                "UPDATE subscriptions SET lease_owner = 'other', lease_until = $1 WHERE account_id = 'taken'";
            t.db.execute(Sql::new(take).bind(other.timestamp_micros())).await.unwrap();

            let renewed = at + chrono::Duration::seconds(40);
            let all: Vec<String> = ["working", "failed", "taken"].map(String::from).into();
            store.renew_updates(&all, "me", renewed).await.unwrap();
            let read = "SELECT account_id, lease_until FROM subscriptions ORDER BY account_id";
            let leases: Vec<(String, i64)> = t.db.fetch_all(Sql::new(read)).await.unwrap();
            let want = [("failed", retry_at), ("taken", other), ("working", renewed)]
                .map(|(a, t)| (a.to_owned(), t.timestamp_micros()));
            assert_eq!(leases, want, "{backend:?}");
        }
    }

    /// Every column a usage read may show tells the caches when it changes; the lease's and a
    /// failed try's columns do not, so claiming an account does not take the notify queue lock.
    /// A column added to `subscriptions` fails here until it is placed on one side.
    #[tokio::test]
    async fn only_the_lease_columns_change_without_telling_the_caches() {
        let t = TestDb::new(Backend::Postgres, "billing").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let columns = "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'subscriptions'";
        let all: String = t.db.scalar(Sql::new(columns)).await.unwrap();
        let watched = "SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_trigger g \
             JOIN pg_attribute a ON a.attrelid = g.tgrelid AND a.attnum = ANY (g.tgattr) \
             WHERE g.tgname = 'subscriptions_usage_cache_update' \
             AND g.tgrelid = (current_schema() || '.subscriptions')::regclass";
        let watched: String = t.db.scalar(Sql::new(watched)).await.unwrap();
        let unwatched: Vec<&str> = all.split(',').filter(|c| !watched.split(',').any(|w| w == *c)).collect();
        // The key and the creation time are never updated.
        let quiet =
            ["account_id", "created_at", "lease_owner", "lease_until", "update_attempts", "update_error"];
        assert_eq!(unwatched, quiet);
    }
}
