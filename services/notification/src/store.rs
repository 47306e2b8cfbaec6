//! Storage of alerts, recipients and deliveries, written once for SQLite and PostgreSQL.

use crate::alerts::{self, Draft, Kind, Usage};
use crate::error::Result;
use crate::thresholds::Threshold;
use chrono::{DateTime, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::{BeginWrite, Db};
use contactier_runtime::outbox::EventTx;
use contactier_runtime::with_pool;

/// A validated billing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Usage(Usage),
    Upgraded { upgrade_id: String, from_tier: i64, to_tier: i64, marketing_count: i64, period_start: String },
    Invoice { invoice_id: String, number: i64, amount_minor: i64, currency: String },
}

/// A stored alert.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct AlertRow {
    pub account_id: String,
    pub sequence: i64,
    pub id: String,
    pub created_at: i64,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub alert: Draft,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RecipientRow {
    pub account_id: String,
    pub id: String,
    pub kind: String,
    pub address: String,
    pub secret: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub alert_id: String,
    pub recipient_id: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub at: i64,
    pub status_code: i32,
    pub error: String,
}

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD_LETTERED: &str = "dead_lettered";

const ALERT_COLUMNS: &str = "account_id, sequence, id, kind, marketing_count, tier, period_start, upgrade_id, \
     new_tier, invoice_id, amount_minor, currency, message, created_at";
const DELIVERY_COLUMNS: &str = "id, alert_id, recipient_id, state, attempts, next_attempt_at";

/// Inserts an alert with the account's next sequence; evaluates to the stored row.
macro_rules! insert_alert {
    ($conn:expr, $account:expr, $id:expr, $draft:expr, $now:expr) => {{
        let draft: &Draft = $draft;
        let sequence: i64 = sqlx::query_scalar(
            "INSERT INTO alert_sequences (account_id, last_sequence) VALUES ($1, 1) \
             ON CONFLICT (account_id) DO UPDATE SET last_sequence = alert_sequences.last_sequence + 1 \
             RETURNING last_sequence",
        )
        .bind($account)
        .fetch_one(&mut *$conn)
        .await?;
        let row = AlertRow {
            account_id: $account.to_owned(),
            sequence,
            id: $id.to_owned(),
            created_at: micros($now),
            alert: draft.clone(),
        };
        let a = &row.alert;
        sqlx::query(
            "INSERT INTO alerts (account_id, sequence, id, kind, marketing_count, tier, period_start, upgrade_id, \
             new_tier, invoice_id, amount_minor, currency, message, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&row.account_id)
        .bind(row.sequence)
        .bind(&row.id)
        .bind(&a.kind)
        .bind(a.marketing_count)
        .bind(a.tier)
        .bind(&a.period_start)
        .bind(&a.upgrade_id)
        .bind(a.new_tier)
        .bind(&a.invoice_id)
        .bind(a.amount_minor)
        .bind(&a.currency)
        .bind(&a.message)
        .bind(row.created_at)
        .execute(&mut *$conn)
        .await?;
        row
    }};
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Applies one event exactly once: records its id, the alerts it fires and a delivery per
    /// alert and recipient, all in one transaction. None if the event was applied before.
    pub async fn apply(
        &self,
        event_id: &str,
        account: &str,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<AlertRow>>> {
        let created = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            if !tx.receive(event_id, now).await? {
                return Ok(None);
            }
            let mut rows = Vec::new();
            match event {
                Event::Usage(usage) => {
                    let mut fired_by_tier = Vec::new();
                    for tier in [Some(usage.tier), usage.upgrade.as_ref().map(|u| u.1)].into_iter().flatten() {
                        let fired: Vec<String> = sqlx::query_scalar(
                            "SELECT threshold FROM fired_thresholds WHERE account_id = $1 AND tier = $2 AND period_start = $3",
                        )
                        .bind(account).bind(tier).bind(&usage.period_start)
                        .fetch_all(&mut *tx).await?;
                        let fired = fired.iter().filter_map(|k| match Kind::parse(k) {
                            Some(Kind::Threshold(t)) => Some(t),
                            _ => None,
                        }).collect::<Vec<Threshold>>();
                        fired_by_tier.push((tier, fired));
                    }
                    let lookup = |tier: i64| {
                        fired_by_tier.iter().find(|(t, _)| *t == tier).map(|(_, f)| f.clone()).unwrap_or_default()
                    };
                    for (tier, threshold, draft) in alerts::usage_alerts(usage, lookup) {
                        let id = new_id();
                        // The key makes a concurrent duplicate a no-op rather than a second alert.
                        let claimed = sqlx::query(
                            "INSERT INTO fired_thresholds (account_id, tier, period_start, threshold, alert_id) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        )
                        .bind(account).bind(tier).bind(&usage.period_start)
                        .bind(Kind::Threshold(threshold).as_str()).bind(&id)
                        .execute(&mut *tx).await?.rows_affected() == 1;
                        if claimed {
                            rows.push(insert_alert!(&mut *tx, account, &id, &draft, now));
                        }
                    }
                }
                Event::Upgraded { upgrade_id, from_tier, to_tier, marketing_count, period_start } => {
                    let draft = alerts::upgraded(upgrade_id, *from_tier, *to_tier, *marketing_count, period_start);
                    rows.push(insert_alert!(&mut *tx, account, &new_id(), &draft, now));
                }
                Event::Invoice { invoice_id, number, amount_minor, currency } => {
                    let draft = alerts::invoice(invoice_id, *number, *amount_minor, currency);
                    rows.push(insert_alert!(&mut *tx, account, &new_id(), &draft, now));
                }
            }
            let recipients: Vec<String> = sqlx::query_scalar("SELECT id FROM recipients WHERE account_id = $1")
                .bind(account).fetch_all(&mut *tx).await?;
            for alert in &rows {
                for r in &recipients {
                    sqlx::query(
                        "INSERT INTO deliveries (account_id, id, alert_id, recipient_id, state, attempts, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
                    )
                    .bind(account).bind(new_id()).bind(&alert.id).bind(r).bind(PENDING).bind(micros(now))
                    .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            rows
        });
        Ok(Some(created))
    }

    /// The account's alerts, newest first, before `before_sequence` when given.
    pub async fn list_alerts(
        &self,
        account: &str,
        before_sequence: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertRow>> {
        let q = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE account_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3"
        );
        let before = before_sequence.unwrap_or(i64::MAX);
        Ok(with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(account).bind(before).bind(limit).fetch_all(pool).await?))
    }

    /// The account's alerts after `after_sequence`, oldest first.
    pub async fn alerts_after(
        &self,
        account: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<AlertRow>> {
        let q = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE account_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
        );
        Ok(with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(account).bind(after_sequence).bind(limit).fetch_all(pool).await?))
    }

    /// The last alert sequence of each of `accounts` that has alerts.
    pub async fn last_sequences(
        &self,
        accounts: &[String],
    ) -> Result<std::collections::HashMap<String, i64>> {
        let q = format!(
            "SELECT account_id, last_sequence FROM alert_sequences WHERE {}",
            self.db.json_in("account_id", 1)
        );
        let keys = serde_json::to_string(accounts).expect("JSON of strings");
        let rows: Vec<(String, i64)> = with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(keys).fetch_all(pool).await?);
        Ok(rows.into_iter().collect())
    }

    pub async fn alert(&self, id: &str) -> Result<Option<AlertRow>> {
        let q = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1");
        Ok(with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(id).fetch_optional(pool).await?))
    }

    pub async fn create_recipient(
        &self,
        account: &str,
        kind: &str,
        address: &str,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<RecipientRow> {
        let row = RecipientRow {
            account_id: account.to_owned(),
            id: new_id(),
            kind: kind.to_owned(),
            address: address.to_owned(),
            secret: secret.to_owned(),
            created_at: micros(now),
        };
        with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO recipients (account_id, id, kind, address, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.account_id).bind(&row.id).bind(&row.kind).bind(&row.address).bind(&row.secret).bind(row.created_at)
        .execute(pool).await?.rows_affected());
        Ok(row)
    }

    pub async fn list_recipients(&self, account: &str) -> Result<Vec<RecipientRow>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT account_id, id, kind, address, secret, created_at FROM recipients WHERE account_id = $1 ORDER BY created_at, id",
        ).bind(account).fetch_all(pool).await?))
    }

    pub async fn recipient(&self, id: &str) -> Result<Option<RecipientRow>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT account_id, id, kind, address, secret, created_at FROM recipients WHERE id = $1",
        ).bind(id).fetch_optional(pool).await?))
    }

    /// Deletes a recipient of the account; false if it has none by that id.
    pub async fn delete_recipient(&self, account: &str, id: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => sqlx::query("DELETE FROM recipients WHERE account_id = $1 AND id = $2")
            .bind(account).bind(id).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Pending deliveries due at `now`, each claimed for `lease` so another replica's worker
    /// does not send it at the same time.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let q = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = $1 AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, id LIMIT $3"
        );
        let due: Vec<DeliveryRow> = with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(PENDING).bind(micros(now)).bind(limit).fetch_all(pool).await?);
        let mut claimed = Vec::with_capacity(due.len());
        for d in due {
            let n = with_pool!(&self.db, pool => sqlx::query(
                "UPDATE deliveries SET next_attempt_at = $1 WHERE id = $2 AND state = $3 AND next_attempt_at = $4",
            )
            .bind(micros(now + lease)).bind(&d.id).bind(PENDING).bind(d.next_attempt_at)
            .execute(pool).await?.rows_affected());
            if n == 1 {
                claimed.push(d);
            }
        }
        Ok(claimed)
    }

    /// Records an attempt and moves the delivery on: delivered, retried at `retry_at`, or
    /// dead-lettered when `retry_at` is None.
    pub async fn record_attempt(
        &self,
        delivery: &DeliveryRow,
        now: DateTime<Utc>,
        status_code: i32,
        error: &str,
        outcome: Outcome,
    ) -> Result<()> {
        let (state, next) = match outcome {
            Outcome::Delivered => (DELIVERED, now),
            Outcome::RetryAt(at) => (PENDING, at),
            Outcome::DeadLetter => (DEAD_LETTERED, now),
        };
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let attempt: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(attempt), 0) + 1 FROM delivery_attempts WHERE delivery_id = $1")
                .bind(&delivery.id).fetch_one(&mut *tx).await?;
            sqlx::query("INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, error) VALUES ($1, $2, $3, $4, $5)")
                .bind(&delivery.id).bind(attempt).bind(micros(now)).bind(status_code).bind(error)
                .execute(&mut *tx).await?;
            sqlx::query("UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2 WHERE id = $3")
                .bind(state).bind(micros(next)).bind(&delivery.id)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// When the next pending delivery is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let m: Option<i64> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = $1",
        ).bind(PENDING).fetch_one(pool).await?);
        Ok(m.and_then(DateTime::from_timestamp_micros))
    }

    /// Deliveries of the account, newest first, optionally of one alert or in one state.
    pub async fn list_deliveries(
        &self,
        account: &str,
        alert_id: Option<&str>,
        state: Option<&str>,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let q = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE account_id = $1 \
             AND ($2 = '' OR alert_id = $2) AND ($3 = '' OR state = $3) AND ($4 = '' OR id < $4) \
             ORDER BY id DESC LIMIT $5"
        );
        Ok(with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(account).bind(alert_id.unwrap_or("")).bind(state.unwrap_or("")).bind(after_id.unwrap_or(""))
            .bind(limit).fetch_all(pool).await?))
    }

    pub async fn attempts(&self, delivery_id: &str) -> Result<Vec<AttemptRow>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT at, status_code, error FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
        ).bind(delivery_id).fetch_all(pool).await?))
    }

    /// Puts a dead-lettered delivery of the account back in the queue with a fresh set of tries.
    pub async fn redrive(&self, account: &str, id: &str, now: DateTime<Utc>) -> Result<RedriveResult> {
        let n = with_pool!(&self.db, pool => sqlx::query(
            "UPDATE deliveries SET state = $1, attempts = 0, next_attempt_at = $2 WHERE account_id = $3 AND id = $4 AND state = $5",
        )
        .bind(PENDING).bind(micros(now)).bind(account).bind(id).bind(DEAD_LETTERED)
        .execute(pool).await?.rows_affected());
        if n == 1 {
            return Ok(RedriveResult::Requeued);
        }
        let exists: Option<String> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT state FROM deliveries WHERE account_id = $1 AND id = $2",
        ).bind(account).bind(id).fetch_optional(pool).await?);
        Ok(if exists.is_some() { RedriveResult::NotDeadLettered } else { RedriveResult::NotFound })
    }

    pub async fn delivery(&self, account: &str, id: &str) -> Result<Option<DeliveryRow>> {
        let q = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE account_id = $1 AND id = $2");
        Ok(with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(account).bind(id).fetch_optional(pool).await?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    DeadLetter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedriveResult {
    Requeued,
    NotDeadLettered,
    NotFound,
}

/// Deliveries that failed and are tried again.
struct Failing(Db);

impl contactier_runtime::work::FailingWork for Failing {
    fn failing(
        &self,
        limit: i64,
    ) -> futures::future::BoxFuture<
        '_,
        std::result::Result<Vec<contactier_runtime::work::FailingItem>, sqlx::Error>,
    > {
        Box::pin(async move {
            let q = "SELECT 'notification-delivery' AS worker, d.account_id, d.id AS item, \
                     CAST(d.attempts AS BIGINT) AS attempts, COALESCE((SELECT a.error FROM delivery_attempts a \
                     WHERE a.delivery_id = d.id ORDER BY a.attempt DESC LIMIT 1), '') AS last_error, d.next_attempt_at \
                     FROM deliveries d WHERE d.state = 'pending' AND d.attempts > 0 ORDER BY d.account_id, d.id LIMIT $1";
            Ok(with_pool!(&self.0, pool => sqlx::query_as(q).bind(limit).fetch_all(pool).await?))
        })
    }
}

impl Store {
    /// Where operators find notification's failing work.
    pub fn failing_work(&self) -> std::sync::Arc<dyn contactier_runtime::work::FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}
