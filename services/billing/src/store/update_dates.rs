//! The update-date run's storage: which accounts have an update date due, a lease so one
//! replica processes it, and the transaction that records the period's count and, at a
//! renewal, the renewal invoice and the term's tier.

use super::invoices::{InvoiceTx, NewInvoice};
use super::states::{NewState, StateTx};
use super::{Store, day, parse_day};
use crate::calendar;
use crate::charges;
use crate::error::{Error, Result};
use crate::model::{self, Invoice, InvoiceKind};
use crate::price_book::PriceBook;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::convert::micros;
use contactier_runtime::db::BeginWrite;
use contactier_runtime::with_pool;

/// An account whose update date is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueUpdate {
    pub account_id: String,
    pub update_date: NaiveDate,
    pub attempts: i64,
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
}

impl Store {
    /// Update dates due at `now` whose lease is free (or has run out), oldest first.
    pub async fn due_updates(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<DueUpdate>> {
        let rows: Vec<(String, String, i64)> = with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT account_id, next_update_date, update_attempts FROM subscriptions \
             WHERE next_update_date <> '' AND next_update_at <= $1 AND lease_until <= $1 \
             ORDER BY next_update_at, account_id LIMIT $2",
        ).bind(micros(now)).bind(limit).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(account_id, d, attempts)| {
                Ok(DueUpdate { account_id, update_date: parse_day(&d)?, attempts })
            })
            .collect()
    }

    /// When the next update date falls due (or a failed one is retried).
    pub async fn next_update_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until > next_update_at THEN lease_until ELSE next_update_at END) \
             FROM subscriptions WHERE next_update_date <> ''",
        ).fetch_one(pool).await?);
        Ok(at.and_then(DateTime::from_timestamp_micros))
    }

    /// Takes the lease on an account's update date until `until`; false when another run holds
    /// it or the date was completed meanwhile.
    pub async fn claim_update(
        &self,
        account: &str,
        date: NaiveDate,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let n = with_pool!(&self.db, pool => sqlx::query(
            "UPDATE subscriptions SET lease_owner = $1, lease_until = $2 \
             WHERE account_id = $3 AND next_update_date = $4 AND lease_until <= $5",
        ).bind(owner).bind(micros(until)).bind(account).bind(day(date)).bind(micros(now))
        .execute(pool).await?.rows_affected());
        Ok(n == 1)
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
        with_pool!(&self.db, pool => sqlx::query(
            "UPDATE subscriptions SET lease_until = $1, update_attempts = update_attempts + 1, update_error = $5 \
             WHERE account_id = $2 AND next_update_date = $3 AND lease_owner = $4",
        ).bind(micros(retry_at)).bind(account).bind(day(date)).bind(owner).bind(error).execute(pool).await?.rows_affected());
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
        let _forget = self.usage_cache.forget_after(account);
        let done = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let q = concat!(
                "SELECT ", subscription_columns!(), " FROM subscriptions WHERE account_id = $1 AND next_update_date = $2"
            );
            let row: Option<super::SubscriptionRow> = sqlx::query_as(q)
                .bind(account).bind(day(date)).fetch_optional(&mut *tx).await?;
            let Some(sub) = row.map(super::SubscriptionRow::into_model).transpose()? else {
                return Ok(Completed::default());
            };
            let count = model::billed_count(sub.marketing_contacts_enabled, applied.marketing, applied.non_marketing);
            let renewal = calendar::is_renewal_date(sub.start_date, sub.term, date);
            let mut tier = sub.tier;
            let mut invoice = None;
            if renewal {
                let line;
                (tier, line) = charges::renewal(&sub, book, date, count)?;
                let source_key = format!("renewal:{}", day(date));
                if !tx.invoiced(account, &source_key).await? {
                    let inv = NewInvoice {
                        account,
                        source_key,
                        kind: InvoiceKind::Renewal,
                        currency: sub.currency.as_str(),
                        term: (line.period_start, line.period_end),
                        lines: vec![line],
                    };
                    invoice = Some(tx.issue(inv, now).await?);
                }
            }
            sqlx::query(
                "INSERT INTO update_periods (account_id, update_date, renewal, applied_contacts, period_count, count_version, tier, processed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account_id, update_date) DO NOTHING",
            )
            .bind(account).bind(day(date)).bind(renewal).bind(applied.contacts).bind(count).bind(applied.version)
            .bind(tier).bind(micros(now)).execute(&mut *tx).await?;
            let next = calendar::next_update_date(sub.start_date, sub.term, date);
            // Conditional on the tier read above: an upgrade committed meanwhile makes this run
            // again with the new tier rather than be overwritten.
            let moved = sqlx::query(
                "UPDATE subscriptions SET tier = $1, renewal_tier = CASE WHEN $2 THEN 0 ELSE renewal_tier END, \
                 next_update_date = $3, next_update_at = $4, lease_owner = '', lease_until = 0, update_attempts = 0, update_error = '', \
                 period_start = $8 WHERE account_id = $5 AND next_update_date = $6 AND tier = $7",
            )
            .bind(tier).bind(renewal).bind(day(next)).bind(micros(sub.processing_at(book, next)))
            .bind(account).bind(day(date)).bind(sub.tier).bind(day(date)).execute(&mut *tx).await?.rows_affected();
            if moved != 1 {
                return Err(Error::Internal("subscription changed while its update date was completed".into()));
            }
            // From this date on, usage history shows the tier the renewal applied.
            sqlx::query(
                "INSERT INTO usage_daily (account_id, day, max_count, last_count, tier) VALUES ($1, $2, $3, $3, $4) \
                 ON CONFLICT (account_id, day) DO UPDATE SET tier = excluded.tier",
            )
            .bind(account).bind(day(date)).bind(count).bind(tier)
            .execute(&mut *tx).await?;
            // A new period (and at a renewal a new term and tier) begins: its state, even when
            // the count did not move, re-arms the thresholds.
            let change = if renewal { npb::UsageChange::Renewal } else { npb::UsageChange::PeriodStart };
            let state = NewState { period_start: date, tier, count, change, upgrade: None };
            tx.publish_state(account, state, now).await?;
            tx.commit().await?;
            Completed { done_here: true, renewal_invoice: invoice }
        });
        Ok(done)
    }
}
