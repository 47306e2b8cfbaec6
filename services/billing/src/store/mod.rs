//! Billing's storage, written once for SQLite and PostgreSQL.

use crate::calendar;
use crate::charges;
use crate::convert::{self, billing_event};
use crate::error::{Error, Result};
use crate::history;
use crate::model::{self, Counts, Invoice, InvoiceKind, Subscription, Upgrade, Usage};
use crate::price_book::{Edition, PriceBook};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_domain::Currency;
use contactier_proto::notification::v1 as npb;
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::Db;
use contactier_runtime::outbox::EventTx;
use contactier_runtime::read_cache::ReadCache;
use contactier_runtime::sql::{Sql, Tx};
use contactier_runtime::work::{FailingItem, FailingWork};
use invoices::NewInvoice;
use prost::Message;
use sqlx::AssertSqlSafe;
use states::NewState;
use std::collections::HashMap;

/// The columns of a subscription, in [`SubscriptionRow`]'s order; a macro so that statements
/// built from it are constants.
macro_rules! subscription_columns {
    () => {
        "account_id, edition, term, start_date, currency, subsidiary, tier, renewal_tier, \
         marketing_contacts_enabled, created_at, next_update_date, period_start"
    };
}

mod invoices;
mod states;
mod update_dates;

#[cfg(test)]
pub(crate) use update_dates::store_with_dates_due;
pub use update_dates::{Applied, Completed, DueUpdate};

/// Outbox topic of the events for the notification service.
pub const NOTIFICATION_TOPIC: &str = "notification";
/// Outbox topic of the account plans for marketing-status (SetAccountPlanRequest payloads).
pub const MARKETING_STATUS_TOPIC: &str = "marketing-status";

fn day(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn parse_day(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| Error::Internal(format!("stored date {s:?}")))
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    account_id: String,
    edition: String,
    term: String,
    start_date: String,
    currency: String,
    subsidiary: String,
    tier: i64,
    /// 0: none asked.
    renewal_tier: i64,
    marketing_contacts_enabled: bool,
    created_at: i64,
    next_update_date: String,
    period_start: String,
}

impl SubscriptionRow {
    fn into_model(self) -> Result<Subscription> {
        let bad = |what: &str| Error::Internal(format!("stored subscription has a bad {what}"));
        Ok(Subscription {
            edition: Edition::parse(&self.edition).ok_or_else(|| bad("edition"))?,
            term: model::parse_term(&self.term).ok_or_else(|| bad("term"))?,
            start_date: parse_day(&self.start_date)?,
            currency: Currency::parse(&self.currency).map_err(|_| bad("currency"))?,
            account_id: self.account_id,
            subsidiary: self.subsidiary,
            tier: self.tier,
            renewal_tier: Some(self.renewal_tier).filter(|t| *t > 0),
            marketing_contacts_enabled: self.marketing_contacts_enabled,
            created_at: self.created_at,
            next_update_date: if self.next_update_date.is_empty() {
                None
            } else {
                Some(parse_day(&self.next_update_date)?)
            },
            period_start: if self.period_start.is_empty() {
                None
            } else {
                Some(parse_day(&self.period_start)?)
            },
        })
    }
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    #[sqlx(flatten)]
    subscription: SubscriptionRow,
    #[sqlx(flatten)]
    counts: Counts,
    period_count: i64,
}

/// An account's subscription; read inside several write transactions too.
const SUBSCRIPTION_BY_ACCOUNT: &str =
    concat!("SELECT ", subscription_columns!(), " FROM subscriptions WHERE account_id = $1");

/// A count's marketing-contacts flag set on the subscription, read back as it is then.
const SET_ENABLED: &str = concat!(
    "UPDATE subscriptions SET marketing_contacts_enabled = $1 WHERE account_id = $2 RETURNING ",
    subscription_columns!()
);

/// The subscription, the latest count and the last processed period's count of `$1`. The join
/// is on `USING (account_id)`, so the subscription's columns need no table prefix.
const USAGE_QUERY: &str = concat!(
    "SELECT ",
    subscription_columns!(),
    ", COALESCE(c.version, 0) AS version, COALESCE(c.marketing, 0) AS marketing, \
     COALESCE(c.pending_non_marketing, 0) AS pending_non_marketing, \
     COALESCE(c.non_marketing, 0) AS non_marketing, \
     COALESCE((SELECT p.period_count FROM update_periods p WHERE p.account_id = s.account_id \
     ORDER BY p.update_date DESC LIMIT 1), 0) AS period_count \
     FROM subscriptions s LEFT JOIN account_counts c USING (account_id) WHERE s.account_id = $1"
);

const COUNTS: &str = "SELECT version, marketing, pending_non_marketing, non_marketing \
     FROM account_counts WHERE account_id = $1";

const INSERT_SUBSCRIPTION: &str = "INSERT INTO subscriptions (account_id, edition, term, start_date, \
     currency, subsidiary, tier, renewal_tier, marketing_contacts_enabled, created_at, next_update_date, \
     next_update_at, period_start) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, $12) \
     ON CONFLICT (account_id) DO NOTHING";

const INSERT_FIRST_PERIOD: &str = "INSERT INTO update_periods (account_id, update_date, renewal, \
     applied_contacts, period_count, count_version, tier, processed_at, first_period) \
     VALUES ($1, $2, FALSE, 0, $3, $4, $5, $6, TRUE) ON CONFLICT (account_id, update_date) DO NOTHING";

/// The first day of usage, at the tier subscribed to (or renewed to: the tier wins).
const SET_DAY_TIER: &str = "INSERT INTO usage_daily (account_id, day, max_count, last_count, tier) \
     VALUES ($1, $2, $3, $3, $4) ON CONFLICT (account_id, day) DO UPDATE SET tier = excluded.tier";

/// Keeps a count unless the one held is newer: conditional on the version, so a stale count
/// never overwrites a newer one, even when two deliveries race.
const KEEP_COUNT: &str = "INSERT INTO account_counts (account_id, version, marketing, \
     pending_non_marketing, non_marketing, observed_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, marketing = excluded.marketing, \
     pending_non_marketing = excluded.pending_non_marketing, non_marketing = excluded.non_marketing, \
     observed_at = excluded.observed_at WHERE account_counts.version < excluded.version";

/// The first period has no update date to fix its count: it is billed for the most contacts
/// it held.
const RAISE_FIRST_PERIOD: &str = "UPDATE update_periods SET period_count = $1, count_version = $2 \
     WHERE account_id = $3 AND update_date = $4 AND first_period AND period_count < $1";

/// Raise only: a concurrent upgrade to a higher tier wins.
const RAISE_TIER: &str = "UPDATE subscriptions SET tier = $1 WHERE account_id = $2 AND tier < $1";

const INSERT_UPGRADE: &str = "INSERT INTO upgrades (account_id, id, from_tier, to_tier, marketing_count, \
     count_version, upgraded_at, effective_date, invoice_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '')";

/// The day's usage: its last count, the highest, and the tier at its end.
const RECORD_DAY: &str = "INSERT INTO usage_daily (account_id, day, max_count, last_count, tier) \
     VALUES ($1, $2, $3, $3, $4) ON CONFLICT (account_id, day) DO UPDATE SET \
     last_count = excluded.last_count, tier = excluded.tier, max_count = CASE \
     WHEN excluded.max_count > usage_daily.max_count THEN excluded.max_count \
     ELSE usage_daily.max_count END";

const UNINVOICED_DAYS: &str = "/* across accounts: upgrades to invoice */ SELECT DISTINCT u.account_id, u.effective_date, f.next_attempt_at \
     FROM upgrades u LEFT JOIN invoice_failures f \
     ON f.account_id = u.account_id AND f.effective_date = u.effective_date \
     WHERE u.invoice_id = '' ORDER BY u.account_id, u.effective_date";

const INVOICE_FAILED: &str = "INSERT INTO invoice_failures (account_id, effective_date, attempts, \
     last_error, next_attempt_at) VALUES ($1, $2, 1, $3, 0) ON CONFLICT (account_id, effective_date) \
     DO UPDATE SET attempts = invoice_failures.attempts + 1, last_error = $3 RETURNING attempts";

const INVOICE_RETRY_AT: &str = "UPDATE invoice_failures SET next_attempt_at = $1 \
     WHERE account_id = $2 AND effective_date = $3";

/// Newest first by (time, id): several upgrades of one instant page without a gap.
const UPGRADES_PAGE: &str = "SELECT id, from_tier, to_tier, marketing_count, count_version, upgraded_at, \
     effective_date, invoice_id FROM upgrades WHERE account_id = $1 \
     AND (upgraded_at, id) < ($2, $3) ORDER BY upgraded_at DESC, id DESC LIMIT $4";

const INVOICES_PAGE: &str = "SELECT id, number, kind, total_minor, currency, term_start, term_end, lines, \
     issued_at FROM invoices WHERE account_id = $1 AND number < $2 ORDER BY number DESC LIMIT $3";

const INVOICE_BY_ID: &str = "SELECT id, number, kind, total_minor, currency, term_start, term_end, lines, \
     issued_at FROM invoices WHERE account_id = $1 AND id = $2";

const DAY_BEFORE: &str = "SELECT day, max_count, last_count, tier FROM usage_daily \
     WHERE account_id = $1 AND day < $2 ORDER BY day DESC LIMIT 1";

const DAYS: &str = "SELECT day, max_count, last_count, tier FROM usage_daily \
     WHERE account_id = $1 AND day >= $2 AND day <= $3 ORDER BY day";

const FIRST_DAY: &str = "SELECT day, tier FROM usage_daily WHERE account_id = $1 ORDER BY day LIMIT 1";

const FIRST_UPGRADE: &str = "SELECT effective_date, from_tier FROM upgrades WHERE account_id = $1 \
     ORDER BY upgraded_at, id LIMIT 1";

const FAILING_INVOICES: &str = "/* across accounts: failing work for operators */ SELECT 'billing-invoices' AS worker, account_id, \
     'upgrade:' || effective_date AS item, attempts, last_error, next_attempt_at \
     FROM invoice_failures WHERE $2 = '' OR account_id = $2 ORDER BY account_id LIMIT $1";

const FAILING_UPDATES: &str = "/* across accounts: failing work for operators */ SELECT 'billing-update-dates' AS worker, account_id, next_update_date AS \
     item, \
     update_attempts AS attempts, update_error AS last_error, lease_until AS next_attempt_at \
     FROM subscriptions WHERE update_attempts > 0 AND ($2 = '' OR account_id = $2) ORDER BY account_id LIMIT $1";

/// One count, a step of its own inside the caller's transaction (see [`Store::apply_counts`]).
/// `fresh`: whether its event was not seen before.
async fn apply_count(
    tx: &mut contactier_runtime::sql::Transaction,
    e: &CountEvent,
    fresh: bool,
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<CountOutcome> {
    let c = e.counts;
    let account = e.account_id.as_str();
    if !fresh {
        return Ok(CountOutcome::Seen);
    }
    let keep = Sql::new(KEEP_COUNT)
        .bind(account)
        .bind(c.version)
        .bind(c.marketing)
        .bind(c.pending_non_marketing)
        .bind(c.non_marketing)
        .bind(micros(now));
    if tx.execute(keep).await? != 1 {
        return Ok(CountOutcome::Stale);
    }
    // The flag set and the subscription read back in one statement (a step is a few).
    let row: Option<SubscriptionRow> =
        tx.fetch_optional(Sql::new(SET_ENABLED).bind(e.marketing_contacts_enabled).bind(account)).await?;
    let Some(sub) = row.map(SubscriptionRow::into_model).transpose()? else {
        return Ok(CountOutcome::NoSubscription);
    };
    if sub.awaits_update(book, now) {
        // Applied with the date (update_dates::complete): the period the date opens is priced
        // on the count at the date, and this count is an upgrade within it. Taken now, it would
        // raise the old period's tier, and the renewal would charge that tier for the new term
        // as well as the upgrade.
        return Ok(CountOutcome::AfterUpdateDate);
    }
    Ok(CountOutcome::Applied { upgrade: take_count(tx, &sub, c, now, book).await? })
}

/// The account's subscription, inside a transaction or not.
async fn subscription(tx: &mut impl Tx, account: &str) -> Result<Option<Subscription>> {
    let row: Option<SubscriptionRow> =
        tx.fetch_optional(Sql::new(SUBSCRIPTION_BY_ACCOUNT).bind(account)).await?;
    row.map(SubscriptionRow::into_model).transpose()
}

/// Applies a kept count to the account's current period, inside `tx`: an upgrade at once when
/// it exceeds the tier (never down), the day's usage, and the usage (and upgrade) events for
/// notification.
pub(crate) async fn take_count(
    tx: &mut contactier_runtime::sql::Transaction,
    sub: &Subscription,
    c: Counts,
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Option<Upgrade>> {
    let account = sub.account_id.as_str();
    let count = model::billed_count(sub.marketing_contacts_enabled, c.marketing, c.non_marketing);
    let today = sub.today(book, now);
    let period_start = sub.current_period(book, now);
    let raise =
        Sql::new(RAISE_FIRST_PERIOD).bind(count).bind(c.version).bind(account).bind(day(period_start));
    tx.execute(raise).await?;
    let shape = &book.edition(sub.edition).map_err(Error::internal)?.shape;
    if count > shape.max_tier {
        tracing::warn!(account, "count above the largest tier; staying at the largest");
    }
    let mut upgrade = None;
    if let Some(to) = charges::upgrade_tier(sub, book, count)?
        && tx.execute(Sql::new(RAISE_TIER).bind(to).bind(account)).await? == 1
    {
        let u = Upgrade {
            id: new_id(),
            from_tier: sub.tier,
            to_tier: to,
            marketing_count: count,
            count_version: c.version,
            upgraded_at: micros(now),
            effective_date: today,
            invoice_id: None,
        };
        let insert = Sql::new(INSERT_UPGRADE)
            .bind(account)
            .bind(&u.id)
            .bind(u.from_tier)
            .bind(u.to_tier)
            .bind(u.marketing_count)
            .bind(u.count_version)
            .bind(u.upgraded_at)
            .bind(day(u.effective_date));
        tx.execute(insert).await?;
        upgrade = Some(u);
    }
    let tier_now = upgrade.as_ref().map_or(sub.tier, |u| u.to_tier);
    tx.execute(Sql::new(RECORD_DAY).bind(account).bind(day(today)).bind(count).bind(tier_now)).await?;
    let state = NewState {
        period_start,
        tier: tier_now,
        count,
        change: if upgrade.is_some() { npb::UsageChange::Upgrade } else { npb::UsageChange::Count },
        upgrade: upgrade.as_ref().map(|u| (u.id.as_str(), u.from_tier)),
    };
    states::publish(tx, account, state, now).await?;
    if let Some(u) = &upgrade {
        let ev = billing_event(account, now, convert::upgraded(u, period_start));
        tx.enqueue(&ev.event_id, NOTIFICATION_TOPIC, account, &ev.encode_to_vec(), now).await?;
    }
    Ok(upgrade)
}

/// The prorated invoices of a day's upgrades of each of several distinct accounts, issued
/// inside `tx`: for each, one line from the tier before the day's first upgrade to the tier
/// after its last; None, having written nothing, when it was issued before or there is nothing
/// to charge. A statement each for what was invoiced, the days' upgrades, the subscriptions,
/// the invoices (numbers, rows, notices), the upgrades marked and the failures forgotten,
/// however many accounts.
async fn upgrade_invoices(
    tx: &mut impl Tx,
    db: &Db,
    days: &[(String, NaiveDate)],
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<Vec<Option<Invoice>>> {
    let accounts: Vec<&str> = days.iter().map(|(a, _)| a.as_str()).collect();
    let accounts = serde_json::to_string(&accounts).expect("JSON of strings");
    let keys: Vec<String> = days.iter().map(|(_, d)| format!("upgrade:{}", day(*d))).collect();
    let q = format!(
        "SELECT account_id, source_key FROM invoices WHERE {} AND {}",
        db.json_in("account_id", 1),
        db.json_in("source_key", 2)
    );
    let keys = serde_json::to_string(&keys).expect("JSON of strings");
    let invoiced: std::collections::HashSet<(String, String)> =
        tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&accounts).bind(keys)).await?.into_iter().collect();
    // Every uninvoiced upgrade of these accounts (a few each), the day's picked out below.
    let q = format!(
        "SELECT account_id, id, from_tier, to_tier, marketing_count, count_version, upgraded_at, \
         effective_date, invoice_id FROM upgrades WHERE {} AND invoice_id = '' \
         ORDER BY account_id, upgraded_at, id",
        db.json_in("account_id", 1)
    );
    let rows: Vec<AccountUpgradeRow> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&accounts)).await?;
    let mut ups: HashMap<(String, String), Vec<UpgradeRow>> = HashMap::new();
    for r in rows {
        ups.entry((r.account_id, r.upgrade.effective_date.clone())).or_default().push(r.upgrade);
    }
    let q = format!(
        concat!("SELECT ", subscription_columns!(), " FROM subscriptions WHERE {}"),
        db.json_in("account_id", 1)
    );
    let subs: Vec<SubscriptionRow> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&accounts)).await?;
    let subs: HashMap<String, Subscription> =
        subs.into_iter().map(|s| Ok((s.account_id.clone(), s.into_model()?))).collect::<Result<_>>()?;
    let mut news = Vec::new();
    let mut which = Vec::new();
    for (i, (account, upgrade_day)) in days.iter().enumerate() {
        let source_key = format!("upgrade:{}", day(*upgrade_day));
        if invoiced.contains(&(account.clone(), source_key.clone())) {
            continue;
        }
        let Some(ups) = ups.get(&(account.clone(), day(*upgrade_day))) else { continue };
        let (Some(first), Some(last)) = (ups.first(), ups.last()) else { continue };
        let sub = subs.get(account).ok_or_else(|| Error::not_found("subscription"))?;
        let count = ups.iter().map(|u| u.marketing_count).max().unwrap_or_default();
        let line = charges::upgrade_line(sub, book, (first.from_tier, last.to_tier), *upgrade_day, count)?;
        news.push(NewInvoice {
            account,
            source_key,
            kind: InvoiceKind::Upgrade,
            currency: sub.currency.as_str(),
            term: calendar::term_containing(sub.start_date, sub.term, *upgrade_day),
            lines: vec![line],
        });
        which.push(i);
    }
    let invoices = invoices::issue_many(tx, db, news, now).await?;
    let mut out: Vec<Option<Invoice>> = days.iter().map(|_| None).collect();
    if invoices.is_empty() {
        return Ok(out);
    }
    let marks: Vec<serde_json::Value> = which
        .iter()
        .zip(&invoices)
        .map(|(&i, inv)| serde_json::json!({ "acct": days[i].0, "day": day(days[i].1), "id": inv.id }))
        .collect();
    let marks = serde_json::Value::Array(marks).to_string();
    let x = db.json_records(1, &[("acct", "text"), ("day", "text"), ("id", "text")]);
    let marked: Vec<&str> = which.iter().map(|&i| days[i].0.as_str()).collect();
    let marked = serde_json::to_string(&marked).expect("JSON of strings");
    // Each account's day picked out of the records by a lookup, the rows by the account's key.
    let q = format!(
        "UPDATE upgrades SET invoice_id = (SELECT x.id FROM {x} WHERE x.acct = upgrades.account_id) \
         WHERE {} AND invoice_id = '' \
         AND effective_date = (SELECT x.day FROM {x} WHERE x.acct = upgrades.account_id)",
        db.json_in("account_id", 2)
    );
    tx.execute(Sql::new(AssertSqlSafe(q)).bind(&marks).bind(&marked)).await?;
    let q = format!(
        "DELETE FROM invoice_failures WHERE {} \
         AND effective_date = (SELECT x.day FROM {x} WHERE x.acct = invoice_failures.account_id)",
        db.json_in("account_id", 2)
    );
    tx.execute(Sql::new(AssertSqlSafe(q)).bind(&marks).bind(&marked)).await?;
    for (i, inv) in which.into_iter().zip(invoices) {
        out[i] = Some(inv);
    }
    Ok(out)
}

/// An upgrade with its account.
#[derive(sqlx::FromRow)]
struct AccountUpgradeRow {
    account_id: String,
    #[sqlx(flatten)]
    upgrade: UpgradeRow,
}

async fn counts(tx: &mut impl Tx, account: &str) -> Result<Counts> {
    Ok(tx.fetch_optional(Sql::new(COUNTS).bind(account)).await?.unwrap_or_default())
}

/// An account's business day with upgrades to invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeDay {
    pub account_id: String,
    pub day: NaiveDate,
    /// When its invoice is tried again after a failure; None when it has not failed.
    pub retry_at: Option<DateTime<Utc>>,
}

/// A count reported by marketing-status.
#[derive(Clone, Debug)]
pub struct CountEvent {
    pub event_id: String,
    pub account_id: String,
    /// marketing-status owns the feature switch; the subscription follows it.
    pub marketing_contacts_enabled: bool,
    pub counts: Counts,
}

/// What applying a count did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountOutcome {
    /// Applied before; acknowledged again.
    Seen,
    /// Older than the count held; ignored.
    Stale,
    /// Kept; the account has no subscription yet.
    NoSubscription,
    /// Kept; an upgrade when the count exceeded the tier.
    Applied { upgrade: Option<Upgrade> },
    /// Kept; the account's update date is past its instant and not recorded yet, so the count
    /// belongs to the period that date opens. It is applied when the date is recorded.
    AfterUpdateDate,
}

#[derive(sqlx::FromRow)]
struct UpgradeRow {
    id: String,
    from_tier: i64,
    to_tier: i64,
    marketing_count: i64,
    count_version: i64,
    upgraded_at: i64,
    effective_date: String,
    /// '': not invoiced yet.
    invoice_id: String,
}

impl UpgradeRow {
    fn into_model(self) -> Result<Upgrade> {
        Ok(Upgrade {
            effective_date: parse_day(&self.effective_date)?,
            invoice_id: Some(self.invoice_id).filter(|i| !i.is_empty()),
            id: self.id,
            from_tier: self.from_tier,
            to_tier: self.to_tier,
            marketing_count: self.marketing_count,
            count_version: self.count_version,
            upgraded_at: self.upgraded_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: String,
    number: i64,
    kind: String,
    total_minor: i64,
    currency: String,
    term_start: String,
    term_end: String,
    /// The lines as JSON.
    lines: String,
    issued_at: i64,
}

impl InvoiceRow {
    fn into_model(self) -> Result<Invoice> {
        Ok(Invoice {
            kind: InvoiceKind::parse(&self.kind)
                .ok_or_else(|| Error::Internal(format!("stored invoice kind {:?}", self.kind)))?,
            term_start: parse_day(&self.term_start)?,
            term_end: parse_day(&self.term_end)?,
            lines: serde_json::from_str(&self.lines)
                .map_err(|e| Error::Internal(format!("stored invoice lines: {e}")))?,
            id: self.id,
            number: self.number,
            total_minor: self.total_minor,
            currency: self.currency,
            issued_at: self.issued_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UsageDayRow {
    day: String,
    max_count: i64,
    last_count: i64,
    tier: i64,
}

impl UsageDayRow {
    fn into_model(self) -> Result<history::Day> {
        Ok(history::Day {
            date: parse_day(&self.day)?,
            max_count: self.max_count,
            last_count: self.last_count,
            tier: self.tier,
        })
    }
}

#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Usage by account (None: no subscription). Every write below that changes what it holds
    /// forgets the account after committing.
    usage_cache: ReadCache<Option<Usage>>,
}

impl Store {
    pub fn new(db: Db, usage_cache: ReadCache<Option<Usage>>) -> Self {
        Self { db, usage_cache }
    }

    /// Creates the account's subscription, first to be processed on `first_update`; AlreadyExists
    /// if it has one. Tells marketing-status the account's plan through the outbox.
    pub async fn create_subscription(
        &self,
        s: &Subscription,
        first_update: (NaiveDate, DateTime<Utc>),
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<()> {
        let period_start = s.current_period(book, now);
        let plan = convert::account_plan(s);
        let account = s.account_id.as_str();
        let _forget = self.usage_cache.forget_after(account);
        let mut tx = self.db.begin_write().await?;
        let insert = Sql::new(INSERT_SUBSCRIPTION)
            .bind(account)
            .bind(s.edition.as_str())
            .bind(model::term_str(s.term))
            .bind(day(s.start_date))
            .bind(s.currency.as_str())
            .bind(&s.subsidiary)
            .bind(s.tier)
            .bind(s.marketing_contacts_enabled)
            .bind(s.created_at)
            .bind(day(first_update.0))
            .bind(micros(first_update.1))
            .bind(day(period_start));
        if tx.execute(insert).await? == 0 {
            return Err(Error::AlreadyExists("the account already has a subscription".into()));
        }
        tx.enqueue(&new_id(), MARKETING_STATUS_TOPIC, account, &plan.encode_to_vec(), now).await?;
        // The first period starts with the count known now; a higher one later raises it.
        let c = counts(&mut tx, account).await?;
        let count = model::billed_count(s.marketing_contacts_enabled, c.marketing, c.non_marketing);
        let period = Sql::new(INSERT_FIRST_PERIOD)
            .bind(account)
            .bind(day(period_start))
            .bind(count)
            .bind(c.version)
            .bind(s.tier)
            .bind(micros(now));
        tx.execute(period).await?;
        // Usage history starts on the day of subscribing, at the tier subscribed to.
        let first_day =
            Sql::new(SET_DAY_TIER).bind(account).bind(day(s.today(book, now))).bind(count).bind(s.tier);
        tx.execute(first_day).await?;
        let state =
            NewState { period_start, tier: s.tier, count, change: npb::UsageChange::Count, upgrade: None };
        states::publish(&mut tx, account, state, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn subscription(&self, account: &str) -> Result<Option<Subscription>> {
        subscription(&mut self.db.conn().await?, account).await
    }

    /// What a usage answer is made of, read in one statement (0 for the period's count before
    /// the first), or from the cache.
    pub async fn usage(&self, account: &str) -> Result<Option<Usage>> {
        self.usage_cache
            .get_or_load(account, || async {
                let row: Option<UsageRow> =
                    self.db.fetch_optional(Sql::new(USAGE_QUERY).bind(account)).await?;
                row.map(|r| {
                    let subscription = r.subscription.into_model()?;
                    Ok(Usage { subscription, counts: r.counts, period_count: r.period_count })
                })
                .transpose()
            })
            .await
    }

    pub async fn counts(&self, account: &str) -> Result<Counts> {
        counts(&mut self.db.conn().await?, account).await
    }

    /// Sets (or with None clears) the tier asked for the next renewal.
    pub async fn set_renewal_tier(&self, account: &str, tier: Option<i64>) -> Result<()> {
        let _forget = self.usage_cache.forget_after(account);
        let sql = "UPDATE subscriptions SET renewal_tier = $1 WHERE account_id = $2";
        self.db.execute(Sql::new(sql).bind(tier.unwrap_or(0)).bind(account)).await?;
        Ok(())
    }

    /// Applies counts of one account in one transaction, each as its own step and in the order
    /// given: keeps each unless older than the one held, upgrades the tier at once when the count
    /// exceeds it (never down), records the day's usage and queues the usage (and upgrade)
    /// events for notification. A backlog of an account's counts (every change it made while
    /// marketing-status could not take them) is one commit, not one each, so the accounts
    /// behind it do not wait a commit per step.
    pub async fn apply_counts(
        &self,
        account: &str,
        events: &[CountEvent],
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<Vec<CountOutcome>> {
        let _forget = self.usage_cache.forget_after(account);
        let mut tx = self.db.begin_write().await?;
        // Every event of the call marked received in one statement; one named twice is seen
        // the second time.
        let ids: Vec<(String, String)> =
            events.iter().map(|e| (account.to_owned(), e.event_id.clone())).collect();
        let mut fresh: std::collections::HashSet<String> =
            tx.receive_many(&ids, now).await?.into_iter().collect();
        let mut outcomes = Vec::with_capacity(events.len());
        for e in events {
            debug_assert_eq!(e.account_id, account);
            let first = fresh.remove(&e.event_id);
            outcomes.push(apply_count(&mut tx, e, first, now, book).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Business days of accounts with upgrades not invoiced yet.
    pub async fn uninvoiced_upgrade_days(&self) -> Result<Vec<UpgradeDay>> {
        let rows: Vec<(String, String, Option<i64>)> = self.db.fetch_all(Sql::new(UNINVOICED_DAYS)).await?;
        rows.into_iter()
            .map(|(account_id, d, retry_at)| {
                let retry_at = retry_at.and_then(DateTime::from_timestamp_micros);
                Ok(UpgradeDay { account_id, day: parse_day(&d)?, retry_at })
            })
            .collect()
    }

    /// Records that the invoice of an account's upgrade day failed; answers its attempts so far.
    /// It is tried again at `retry(attempts)` from `now`.
    pub async fn invoice_failed(
        &self,
        account: &str,
        upgrade_day: NaiveDate,
        error: &str,
        now: DateTime<Utc>,
        retry: impl Fn(i64) -> std::time::Duration,
    ) -> Result<i64> {
        let failed = Sql::new(INVOICE_FAILED).bind(account).bind(day(upgrade_day)).bind(error);
        let attempts: i64 = self.db.scalar(failed).await?;
        let at = now + chrono::Duration::from_std(retry(attempts)).unwrap_or(chrono::Duration::MAX);
        let retry_at = Sql::new(INVOICE_RETRY_AT).bind(micros(at)).bind(account).bind(day(upgrade_day));
        self.db.execute(retry_at).await?;
        Ok(attempts)
    }

    /// Issues the prorated invoice of one account's upgrades on one day, exactly once: one
    /// line from the tier before the day's first upgrade to the tier after its last. None when
    /// it was issued before (or there is nothing to charge).
    pub async fn issue_upgrade_invoice(
        &self,
        account: &str,
        upgrade_day: NaiveDate,
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<Option<Invoice>> {
        let mut tx = self.db.begin_write().await?;
        let day = [(account.to_owned(), upgrade_day)];
        let inv = upgrade_invoices(&mut tx, &self.db, &day, now, book).await?.pop().flatten();
        if inv.is_some() {
            tx.commit().await?;
        }
        Ok(inv)
    }

    /// [`Store::issue_upgrade_invoice`] for several accounts' days in one transaction (a commit
    /// each made every invoice wait for its own flush of the log), invoice counters taken in
    /// account order so that two runs never wait for each other in a circle. Answers in the order given; Err when the
    /// transaction failed and nothing was issued (the caller then issues them one by one).
    pub async fn issue_upgrade_invoices(
        &self,
        days: &[(String, NaiveDate)],
        now: DateTime<Utc>,
        book: &PriceBook,
    ) -> Result<Vec<Option<Invoice>>> {
        let mut tx = self.db.begin_write().await?;
        let mut seen = std::collections::HashSet::new();
        let issued = if days.iter().all(|(a, _)| seen.insert(a.as_str())) {
            upgrade_invoices(&mut tx, &self.db, days, now, book).await?
        } else {
            // An account's days one after another, in order: their numbers follow them.
            let mut order: Vec<usize> = (0..days.len()).collect();
            order.sort_by(|a, b| days[*a].cmp(&days[*b]));
            let mut issued: Vec<Option<Invoice>> = days.iter().map(|_| None).collect();
            for i in order {
                let one = std::slice::from_ref(&days[i]);
                issued[i] = upgrade_invoices(&mut tx, &self.db, one, now, book).await?.pop().flatten();
            }
            issued
        };
        tx.commit().await?;
        Ok(issued)
    }

    /// The subscriptions of these accounts, in one statement, by account: each Err when its
    /// row cannot be read as a subscription (the others are read all the same).
    pub async fn subscriptions(&self, accounts: &[&str]) -> Result<HashMap<String, Result<Subscription>>> {
        if accounts.is_empty() {
            return Ok(HashMap::new());
        }
        let q = format!(
            concat!("SELECT ", subscription_columns!(), " FROM subscriptions WHERE {}"),
            self.db.json_in("account_id", 1)
        );
        let ids = serde_json::to_string(accounts).expect("JSON of strings");
        let rows: Vec<SubscriptionRow> = self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(ids)).await?;
        Ok(rows.into_iter().map(|r| (r.account_id.clone(), r.into_model())).collect())
    }

    pub async fn upgrades(
        &self,
        account: &str,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<Upgrade>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let page = Sql::new(UPGRADES_PAGE).bind(account).bind(at).bind(id).bind(limit);
        let rows: Vec<UpgradeRow> = self.db.fetch_all(page).await?;
        rows.into_iter().map(UpgradeRow::into_model).collect()
    }

    pub async fn invoices(
        &self,
        account: &str,
        before_number: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Invoice>> {
        let page = Sql::new(INVOICES_PAGE).bind(account).bind(before_number.unwrap_or(i64::MAX)).bind(limit);
        let rows: Vec<InvoiceRow> = self.db.fetch_all(page).await?;
        rows.into_iter().map(InvoiceRow::into_model).collect()
    }

    pub async fn invoice(&self, account: &str, id: &str) -> Result<Option<Invoice>> {
        let row: Option<InvoiceRow> =
            self.db.fetch_optional(Sql::new(INVOICE_BY_ID).bind(account).bind(id)).await?;
        row.map(InvoiceRow::into_model).transpose()
    }

    /// The last day of usage recorded before `day`, if any.
    pub async fn usage_day_before(&self, account: &str, before: NaiveDate) -> Result<Option<history::Day>> {
        let row: Option<UsageDayRow> =
            self.db.fetch_optional(Sql::new(DAY_BEFORE).bind(account).bind(day(before))).await?;
        row.map(UsageDayRow::into_model).transpose()
    }

    /// The tier a subscription began with: before its first upgrade if that came on its first
    /// day of usage (or before usage was kept from the first day), else the first day's tier
    /// (a renewal may have changed the subscription's since), else its tier.
    pub async fn first_tier(&self, account: &str) -> Result<Option<i64>> {
        let first_day: Option<(String, i64)> =
            self.db.fetch_optional(Sql::new(FIRST_DAY).bind(account)).await?;
        let first_upgrade: Option<(String, i64)> =
            self.db.fetch_optional(Sql::new(FIRST_UPGRADE).bind(account)).await?;
        Ok(match (first_day, first_upgrade) {
            (Some((day, _)), Some((upgraded, from))) if upgraded <= day => Some(from),
            (Some((_, tier)), _) => Some(tier),
            (None, Some((_, from))) => Some(from),
            (None, None) => self.subscription(account).await?.map(|s| s.tier),
        })
    }

    pub async fn usage_days(
        &self,
        account: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<history::Day>> {
        let rows: Vec<UsageDayRow> =
            self.db.fetch_all(Sql::new(DAYS).bind(account).bind(day(from)).bind(day(to))).await?;
        rows.into_iter().map(UsageDayRow::into_model).collect()
    }

    /// Where operators find billing's failing work.
    pub fn failing_work(&self) -> std::sync::Arc<dyn FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}

/// Billing's items that failed and are not done: upgrade invoices and update dates.
struct Failing(Db);

impl FailingWork for Failing {
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> futures::future::BoxFuture<'a, std::result::Result<Vec<FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            let account = account.unwrap_or_default();
            let mut items: Vec<FailingItem> =
                self.0.fetch_all(Sql::new(FAILING_INVOICES).bind(limit).bind(account)).await?;
            items.extend(
                self.0.fetch_all::<FailingItem>(Sql::new(FAILING_UPDATES).bind(limit).bind(account)).await?,
            );
            Ok(items)
        })
    }
}
