//! Storage of alerts, recipients and deliveries, written once for SQLite and PostgreSQL.

use crate::alerts::{self, Draft, Kind};
use crate::error::Result;
use crate::thresholds::{Armed, Pending, State, Upgrade};
use chrono::{DateTime, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::Db;
use contactier_runtime::outbox::EventTx;
use contactier_runtime::sql::{Sql, Transaction, Tx};
use contactier_runtime::work::{FailingItem, FailingWork};
use sqlx::AssertSqlSafe;

/// A validated billing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    State(State),
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

/// A usage state waiting to be evaluated.
#[derive(sqlx::FromRow)]
struct StateRow {
    version: i64,
    period_start: String,
    tier: i64,
    marketing_count: i64,
    upgrade_id: String,
    from_tier: i64,
    received_at: i64,
}

/// A waiting usage state with its account.
#[derive(sqlx::FromRow)]
struct AccountStateRow {
    account_id: String,
    #[sqlx(flatten)]
    state: StateRow,
}

impl StateRow {
    fn into_state(self) -> State {
        State {
            version: self.version,
            period_start: self.period_start,
            tier: self.tier,
            count: self.marketing_count,
            upgrade: (!self.upgrade_id.is_empty())
                .then_some(Upgrade { id: self.upgrade_id, from_tier: self.from_tier }),
        }
    }
}

/// How long a missing usage state may hold up the ones after it.
const STATE_GAP: chrono::Duration = chrono::Duration::hours(1);

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
    pub account_id: String,
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

/// One delivery of the account, inside a transaction or not.
async fn delivery(tx: &mut impl Tx, account: &str, id: &str) -> Result<Option<DeliveryRow>> {
    let q = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE account_id = $1 AND id = $2");
    Ok(tx.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(id)).await?)
}

const ATTEMPTS: &str = "SELECT at, status_code, error FROM delivery_attempts \
                        WHERE account_id = $1 AND delivery_id = $2 ORDER BY attempt";
const ALERT_IDS: &str = "SELECT alert_id FROM delivery_alerts WHERE account_id = $1 AND delivery_id = $2 \
                         ORDER BY position";

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD_LETTERED: &str = "dead_lettered";

const ALERT_COLUMNS: &str = "account_id, sequence, id, kind, marketing_count, tier, period_start, \
     upgrade_id, new_tier, invoice_id, amount_minor, currency, message, used_basis_points, state_version, \
     created_at";
const DELIVERY_COLUMNS: &str = "account_id, id, alert_id, recipient_id, state, attempts, next_attempt_at";

const NEXT_SEQUENCE: &str = "INSERT INTO alert_sequences (account_id, last_sequence) VALUES ($1, 1) \
     ON CONFLICT (account_id) DO UPDATE SET last_sequence = alert_sequences.last_sequence + 1 \
     RETURNING last_sequence";

const INSERT_ALERT: &str = "INSERT INTO alerts (account_id, sequence, id, kind, marketing_count, tier, \
     period_start, upgrade_id, new_tier, invoice_id, amount_minor, currency, message, used_basis_points, \
     state_version, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

const RECIPIENT_IDS: &str = "SELECT id FROM recipients WHERE account_id = $1 ORDER BY id";

const OPEN_DIGEST: &str = "SELECT id FROM deliveries WHERE account_id = $1 AND recipient_id = $2 \
     AND state = $3 AND open_until > $4 ORDER BY created_at DESC LIMIT 1";

const KEEP_OPEN: &str =
    "UPDATE deliveries SET open_until = open_until WHERE account_id = $3 AND id = $1 AND open_until > $2";

const INSERT_DELIVERY: &str = "INSERT INTO deliveries (account_id, id, alert_id, recipient_id, state, \
     attempts, next_attempt_at, created_at, open_until) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)";

const NEXT_POSITION: &str = "SELECT CAST(COALESCE(MAX(position) + 1, 0) AS INTEGER) FROM delivery_alerts \
     WHERE account_id = $2 AND delivery_id = $1";

const INSERT_DELIVERY_ALERT: &str =
    "INSERT INTO delivery_alerts (account_id, delivery_id, position, alert_id) VALUES ($4, $1, $2, $3)";

/// The key makes a duplicate a no-op rather than a second alert.
const CLAIM_THRESHOLD: &str = "INSERT INTO fired_thresholds (account_id, tier, period_start, threshold, \
     alert_id) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// Inserts an alert with the account's next sequence; answers the stored row.
async fn insert_alert(
    tx: &mut impl Tx,
    account: &str,
    id: &str,
    draft: &Draft,
    now: DateTime<Utc>,
) -> Result<AlertRow> {
    let sequence: i64 = tx.scalar(Sql::new(NEXT_SEQUENCE).bind(account)).await?;
    let row = AlertRow {
        account_id: account.to_owned(),
        sequence,
        id: id.to_owned(),
        created_at: micros(now),
        alert: draft.clone(),
    };
    let a = &row.alert;
    metrics::counter!("contactier_alerts_total", "kind" => a.kind.clone()).increment(1);
    let insert = Sql::new(INSERT_ALERT)
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
        .bind(a.used_basis_points)
        .bind(a.state_version)
        .bind(row.created_at);
    tx.execute(insert).await?;
    Ok(row)
}

/// Deliveries of new alerts to the account's webhook and email recipients, inside the
/// transaction that makes the alerts. Alerts that fire within `window` of a delivery's first go
/// with it as one digest, in order; a window of 0 sends each alert on its own.
async fn deliver(
    tx: &mut impl Tx,
    account: &str,
    alerts: &[AlertRow],
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<()> {
    let recipients: Vec<(String,)> = tx.fetch_all(Sql::new(RECIPIENT_IDS).bind(account)).await?;
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
    let groups: Vec<&[AlertRow]> = if window.is_zero() { alerts.chunks(1).collect() } else { vec![alerts] };
    for (r,) in &recipients {
        for group in &groups {
            let open: Option<String> = if window.is_zero() {
                None
            } else {
                let q = Sql::new(OPEN_DIGEST).bind(account).bind(r).bind(PENDING).bind(micros(now));
                tx.scalar_optional(q).await?
            };
            // Still open once locked: the worker seals a digest as it takes it.
            let open = match open {
                Some(id) => {
                    let kept =
                        tx.execute(Sql::new(KEEP_OPEN).bind(&id).bind(micros(now)).bind(account)).await?;
                    (kept == 1).then_some(id)
                }
                None => None,
            };
            let id = if let Some(id) = open {
                id
            } else {
                let id = new_id();
                let send_at = micros(now + window);
                let open_until = if window.is_zero() { 0 } else { send_at };
                let insert = Sql::new(INSERT_DELIVERY)
                    .bind(account)
                    .bind(&id)
                    .bind(&group[0].id)
                    .bind(r)
                    .bind(PENDING)
                    .bind(send_at)
                    .bind(micros(now))
                    .bind(open_until);
                tx.execute(insert).await?;
                id
            };
            let first: i32 = tx.scalar(Sql::new(NEXT_POSITION).bind(&id).bind(account)).await?;
            for (i, alert) in group.iter().enumerate() {
                let q = Sql::new(INSERT_DELIVERY_ALERT)
                    .bind(&id)
                    .bind(first + i as i32)
                    .bind(&alert.id)
                    .bind(account);
                tx.execute(q).await?;
            }
        }
    }
    Ok(())
}

/// Evaluates the account's waiting states (those after `armed`, in version order) that follow
/// on without a gap, and writes the alerts they fire; answers those and what is armed after.
async fn evaluate_waiting(
    tx: &mut impl Tx,
    account: &str,
    mut armed: Armed,
    waiting: Vec<StateRow>,
    now: DateTime<Utc>,
) -> Result<(Vec<AlertRow>, Armed)> {
    // A gap no state has filled for an hour is stepped over rather than holding the account's
    // alerts for ever.
    if let Some(first) = waiting.first()
        && first.version > armed.version + 1
        && first.received_at < micros(now - STATE_GAP)
    {
        tracing::warn!(
            account,
            from = armed.version,
            to = first.version,
            "usage states missing; evaluating on from the next one"
        );
        armed.version = first.version - 1;
    }
    let mut pending = Pending { states: waiting.into_iter().map(|r| (r.version, r.into_state())).collect() };
    let (done, next) = pending.evaluate(armed);
    let mut rows = Vec::new();
    for (state, fires) in done {
        for fire in fires {
            let draft = alerts::threshold(&fire, &state);
            let id = new_id();
            let claim = Sql::new(CLAIM_THRESHOLD)
                .bind(account)
                .bind(fire.tier)
                .bind(&state.period_start)
                .bind(Kind::Threshold(fire.threshold).as_str())
                .bind(&id);
            if tx.execute(claim).await? == 1 {
                rows.push(insert_alert(tx, account, &id, &draft, now).await?);
            }
        }
    }
    Ok((rows, next))
}

/// Applies a run of usage states of distinct accounts, each once: records it and evaluates it
/// with every state received before it that it completes, in version order. A statement each
/// for the run (ids, states, what is armed, the waiting states, the new armed,
/// the states done with) instead of seven a state; an account whose states fire alerts writes
/// them and their deliveries on its own.
async fn apply_states(
    tx: &mut Transaction,
    db: &Db,
    run: &[(String, String, State)],
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<Vec<Option<Vec<AlertRow>>>> {
    let fresh = fresh_of(tx, run, now).await?;
    let news: Vec<&(String, String, State)> = run.iter().filter(|(id, _, _)| fresh.contains(id)).collect();
    let mut out: std::collections::HashMap<&str, Vec<AlertRow>> = std::collections::HashMap::new();
    if !news.is_empty() {
        let records: Vec<serde_json::Value> = news
            .iter()
            .map(|(_, account, st)| {
                let up = st.upgrade.as_ref();
                serde_json::json!({
                    "acct": account, "version": st.version, "period_start": st.period_start,
                    "tier": st.tier, "count": st.count, "upgrade_id": up.map_or("", |u| u.id.as_str()),
                    "from_tier": up.map_or(0, |u| u.from_tier),
                })
            })
            .collect();
        let x = db.json_records(
            1,
            &[
                ("acct", "text"),
                ("version", "bigint"),
                ("period_start", "text"),
                ("tier", "bigint"),
                ("count", "bigint"),
                ("upgrade_id", "text"),
                ("from_tier", "bigint"),
            ],
        );
        // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT ... FROM as a join's.
        let q = format!(
            "INSERT INTO usage_states (account_id, version, period_start, tier, marketing_count, upgrade_id, \
             from_tier, received_at) SELECT acct, version, period_start, tier, count, upgrade_id, from_tier, $2 \
             FROM {x} WHERE true ON CONFLICT (account_id, version) DO NOTHING"
        );
        let records = serde_json::Value::Array(records).to_string();
        tx.execute(Sql::new(AssertSqlSafe(q)).bind(records).bind(micros(now))).await?;

        let accounts: Vec<&str> = news.iter().map(|(_, a, _)| a.as_str()).collect();
        let accounts = serde_json::to_string(&accounts).expect("JSON of strings");
        let q = format!(
            "SELECT account_id, version, period_start, tier, high FROM usage_evaluated WHERE {}",
            db.json_in("account_id", 1)
        );
        let armed: Vec<(String, i64, String, i64, i64)> =
            tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&accounts)).await?;
        let mut armed: std::collections::HashMap<String, Armed> = armed
            .into_iter()
            .map(|(a, version, period_start, tier, high)| (a, Armed { version, period_start, tier, high }))
            .collect();
        // Every state kept for these accounts: those not yet evaluated, as states are forgotten
        // once they are.
        let q = format!(
            "SELECT account_id, version, period_start, tier, marketing_count, upgrade_id, from_tier, \
             received_at FROM usage_states WHERE {} ORDER BY account_id, version",
            db.json_in("account_id", 1)
        );
        let kept: Vec<AccountStateRow> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&accounts)).await?;
        let mut waiting: std::collections::HashMap<String, Vec<StateRow>> = std::collections::HashMap::new();
        for k in kept {
            waiting.entry(k.account_id).or_default().push(k.state);
        }
        let mut saves = Vec::with_capacity(news.len());
        for (_, account, _) in &news {
            let before = armed.remove(account.as_str()).unwrap_or_default();
            let after: Vec<StateRow> = waiting
                .remove(account.as_str())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.version > before.version)
                .collect();
            let (rows, next) = evaluate_waiting(tx, account, before, after, now).await?;
            if !rows.is_empty() {
                deliver(tx, account, &rows, now, window).await?;
            }
            saves.push(serde_json::json!({
                "acct": account, "version": next.version, "period_start": next.period_start,
                "tier": next.tier, "high": next.high,
            }));
            out.insert(account.as_str(), rows);
        }
        let x = db.json_records(
            1,
            &[
                ("acct", "text"),
                ("version", "bigint"),
                ("period_start", "text"),
                ("tier", "bigint"),
                ("high", "bigint"),
            ],
        );
        let saves = serde_json::Value::Array(saves).to_string();
        let q = format!(
            "INSERT INTO usage_evaluated (account_id, version, period_start, tier, high) \
             SELECT acct, version, period_start, tier, high FROM {x} WHERE true \
             ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, \
             period_start = excluded.period_start, tier = excluded.tier, high = excluded.high"
        );
        tx.execute(Sql::new(AssertSqlSafe(q)).bind(&saves)).await?;
        let q = format!(
            "DELETE FROM usage_states WHERE {} AND version <= \
             (SELECT x.version FROM {x} WHERE x.acct = usage_states.account_id)",
            db.json_in("account_id", 2)
        );
        tx.execute(Sql::new(AssertSqlSafe(q)).bind(&saves).bind(&accounts)).await?;
    }
    Ok(run.iter().map(|(_, account, _)| out.remove(account.as_str())).collect())
}

/// Applies one event once, as [`apply_states`] does a state.
async fn apply_in(
    tx: &mut Transaction,
    db: &Db,
    event_id: &str,
    account: &str,
    event: &Event,
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<Option<Vec<AlertRow>>> {
    let answers = if let Event::State(state) = event {
        let run = [(event_id.to_owned(), account.to_owned(), state.clone())];
        apply_states(tx, db, &run, now, window).await?
    } else {
        let run = [(event_id.to_owned(), account.to_owned(), event.clone())];
        apply_notices(tx, db, &run, now, window).await?
    };
    Ok(answers.into_iter().next().flatten())
}

/// Records the ids of a run of (event id, account, _) as received: the ones not received before.
async fn fresh_of<T>(
    tx: &mut Transaction,
    run: &[(String, String, T)],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let ids: Vec<(String, String)> =
        run.iter().map(|(id, account, _)| (account.clone(), id.clone())).collect();
    Ok(tx.receive_many(&ids, now).await?.into_iter().collect())
}

/// The one alert an upgrade or an invoice fires (None for a usage state).
fn notice(event: &Event) -> Option<Draft> {
    match event {
        Event::State(_) => None,
        Event::Upgraded { upgrade_id, from_tier, to_tier, marketing_count, period_start } => {
            Some(alerts::upgraded(upgrade_id, *from_tier, *to_tier, *marketing_count, period_start))
        }
        Event::Invoice { invoice_id, number, amount_minor, currency } => {
            Some(alerts::invoice(invoice_id, *number, *amount_minor, currency))
        }
    }
}

/// Applies a run of upgrades and invoices of distinct accounts, each once: records it and its
/// alert under the account's next sequence, with a statement each for the run (ids, sequences,
/// alerts, which accounts have recipients); an account with recipients writes its deliveries on
/// its own. An instant renews thousands of accounts at once, an invoice each.
async fn apply_notices(
    tx: &mut Transaction,
    db: &Db,
    run: &[(String, String, Event)],
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<Vec<Option<Vec<AlertRow>>>> {
    let fresh = fresh_of(tx, run, now).await?;
    let news: Vec<(&str, &str, Draft)> = run
        .iter()
        .filter(|(id, _, _)| fresh.contains(id))
        .filter_map(|(id, account, e)| notice(e).map(|d| (id.as_str(), account.as_str(), d)))
        .collect();
    let mut out: std::collections::HashMap<&str, Vec<AlertRow>> = std::collections::HashMap::new();
    if !news.is_empty() {
        // Accounts in order, so two transactions take the sequences' locks in one order.
        let mut accounts: Vec<&str> = news.iter().map(|n| n.1).collect();
        accounts.sort_unstable();
        let named = serde_json::to_string(&accounts).expect("JSON of strings");
        let x = db.json_records(1, &[("acct", "text")]);
        let records: Vec<serde_json::Value> =
            accounts.iter().map(|a| serde_json::json!({ "acct": a })).collect();
        // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT ... FROM as a join's.
        let q = format!(
            "INSERT INTO alert_sequences (account_id, last_sequence) SELECT acct, 1 FROM {x} WHERE true \
             ON CONFLICT (account_id) DO UPDATE SET last_sequence = alert_sequences.last_sequence + 1 \
             RETURNING account_id, last_sequence"
        );
        let q = Sql::new(AssertSqlSafe(q)).bind(serde_json::Value::Array(records).to_string());
        let sequences: std::collections::HashMap<String, i64> =
            tx.fetch_all::<(String, i64)>(q).await?.into_iter().collect();
        let rows: Vec<AlertRow> = news
            .iter()
            .map(|(_, account, draft)| AlertRow {
                account_id: (*account).to_owned(),
                sequence: sequences[*account],
                id: new_id(),
                created_at: micros(now),
                alert: draft.clone(),
            })
            .collect();
        insert_alerts(tx, db, &rows).await?;
        let q = format!("SELECT DISTINCT account_id FROM recipients WHERE {}", db.json_in("account_id", 1));
        let told: std::collections::HashSet<String> = tx
            .fetch_all::<(String,)>(Sql::new(AssertSqlSafe(q)).bind(&named))
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect();
        for ((id, account, _), row) in news.iter().zip(rows) {
            let rows = vec![row];
            if told.contains(*account) {
                deliver(tx, account, &rows, now, window).await?;
            }
            out.insert(id, rows);
        }
    }
    Ok(run.iter().map(|(id, _, _)| out.remove(id.as_str())).collect())
}

/// Writes alerts with one statement.
async fn insert_alerts(tx: &mut impl Tx, db: &Db, rows: &[AlertRow]) -> Result<()> {
    let records: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let a = &r.alert;
            metrics::counter!("contactier_alerts_total", "kind" => a.kind.clone()).increment(1);
            serde_json::json!({
                "acct": r.account_id, "sequence": r.sequence, "id": r.id, "kind": a.kind,
                "marketing_count": a.marketing_count, "tier": a.tier, "period_start": a.period_start,
                "upgrade_id": a.upgrade_id, "new_tier": a.new_tier, "invoice_id": a.invoice_id,
                "amount_minor": a.amount_minor, "currency": a.currency, "message": a.message,
                "used_basis_points": a.used_basis_points, "state_version": a.state_version,
                "created_at": r.created_at,
            })
        })
        .collect();
    let x = db.json_records(
        1,
        &[
            ("acct", "text"),
            ("sequence", "bigint"),
            ("id", "text"),
            ("kind", "text"),
            ("marketing_count", "bigint"),
            ("tier", "bigint"),
            ("period_start", "text"),
            ("upgrade_id", "text"),
            ("new_tier", "bigint"),
            ("invoice_id", "text"),
            ("amount_minor", "bigint"),
            ("currency", "text"),
            ("message", "text"),
            ("used_basis_points", "bigint"),
            ("state_version", "bigint"),
            ("created_at", "bigint"),
        ],
    );
    let q = format!(
        "INSERT INTO alerts (account_id, sequence, id, kind, marketing_count, tier, period_start, upgrade_id, \
         new_tier, invoice_id, amount_minor, currency, message, used_basis_points, state_version, created_at) \
         SELECT acct, sequence, id, kind, marketing_count, tier, period_start, upgrade_id, new_tier, invoice_id, \
         amount_minor, currency, message, used_basis_points, state_version, created_at FROM {x}"
    );
    tx.execute(Sql::new(AssertSqlSafe(q)).bind(serde_json::Value::Array(records).to_string())).await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Applies one event exactly once: records its id, the alerts it fires and their deliveries,
    /// all in one transaction. A usage state is evaluated with every state received before it
    /// that it completes, in version order. None if the event was applied before.
    pub async fn apply(
        &self,
        event_id: &str,
        account: &str,
        event: &Event,
        now: DateTime<Utc>,
        window: std::time::Duration,
    ) -> Result<Option<Vec<AlertRow>>> {
        let mut tx = self.db.begin_write().await?;
        let rows = apply_in(&mut tx, &self.db, event_id, account, event, now, window).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Applies a delivery's events in order, in one transaction (a commit each made every event
    /// wait for its own flush of the log); each as [`Store::apply`] would.
    pub async fn apply_all(
        &self,
        events: &[(String, String, Event)],
        now: DateTime<Utc>,
        window: std::time::Duration,
    ) -> Result<Vec<Option<Vec<AlertRow>>>> {
        let mut tx = self.db.begin_write().await?;
        let mut out = Vec::with_capacity(events.len());
        let mut rest = events;
        while let Some((event_id, account, event)) = rest.first() {
            // A run of usage states, an account once in it, goes together; so does a run of
            // upgrades and invoices; anything else alone.
            let mut accounts = std::collections::HashSet::new();
            let run: Vec<(String, String, State)> = rest
                .iter()
                .map_while(|(id, account, e)| match e {
                    Event::State(st) if accounts.insert(account.as_str()) => {
                        Some((id.clone(), account.clone(), st.clone()))
                    }
                    _ => None,
                })
                .collect();
            let mut accounts = std::collections::HashSet::new();
            let notices: Vec<(String, String, Event)> = rest
                .iter()
                .take_while(|(_, account, e)| notice(e).is_some() && accounts.insert(account.as_str()))
                .cloned()
                .collect();
            if !run.is_empty() {
                out.extend(apply_states(&mut tx, &self.db, &run, now, window).await?);
                rest = &rest[run.len()..];
            } else if !notices.is_empty() {
                out.extend(apply_notices(&mut tx, &self.db, &notices, now, window).await?);
                rest = &rest[notices.len()..];
            } else {
                out.push(apply_in(&mut tx, &self.db, event_id, account, event, now, window).await?);
                rest = &rest[1..];
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The account's alerts, newest first, before `before_sequence` when given.
    pub async fn list_alerts(
        &self,
        account: &str,
        before_sequence: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertRow>> {
        let q = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE account_id = $1 AND sequence < $2 \
             ORDER BY sequence DESC LIMIT $3"
        );
        let before = before_sequence.unwrap_or(i64::MAX);
        Ok(self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(before).bind(limit)).await?)
    }

    /// The account's alerts after `after_sequence`, oldest first.
    pub async fn alerts_after(
        &self,
        account: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<AlertRow>> {
        let q = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE account_id = $1 AND sequence > $2 \
             ORDER BY sequence LIMIT $3"
        );
        Ok(self
            .db
            .fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(after_sequence).bind(limit))
            .await?)
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
        let rows: Vec<(String, i64)> = self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(keys)).await?;
        Ok(rows.into_iter().collect())
    }

    /// The alerts a delivery carries, in the order they fired.
    pub async fn delivery_alerts(&self, account: &str, delivery_id: &str) -> Result<Vec<AlertRow>> {
        let columns =
            ALERT_COLUMNS.split(", ").map(|c| format!("a.{}", c.trim())).collect::<Vec<_>>().join(", ");
        let q = format!(
            "SELECT {columns} FROM delivery_alerts d \
             JOIN alerts a ON a.account_id = d.account_id AND a.id = d.alert_id \
             WHERE d.account_id = $2 AND d.delivery_id = $1 ORDER BY d.position"
        );
        Ok(self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(delivery_id).bind(account)).await?)
    }

    /// The ids of the alerts a delivery carries, in order.
    pub async fn delivery_alert_ids(&self, account: &str, delivery_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            self.db.fetch_all(Sql::new(ALERT_IDS).bind(account).bind(delivery_id)).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
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
        let q = "INSERT INTO recipients (account_id, id, kind, address, secret, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)";
        let insert = Sql::new(q)
            .bind(&row.account_id)
            .bind(&row.id)
            .bind(&row.kind)
            .bind(&row.address)
            .bind(&row.secret)
            .bind(row.created_at);
        self.db.execute(insert).await?;
        Ok(row)
    }

    /// How many recipients the account has.
    pub async fn recipient_count(&self, account: &str) -> Result<i64> {
        let q = "SELECT COUNT(*) FROM recipients WHERE account_id = $1";
        Ok(self.db.scalar(Sql::new(q).bind(account)).await?)
    }

    pub async fn list_recipients(&self, account: &str) -> Result<Vec<RecipientRow>> {
        let q = "SELECT account_id, id, kind, address, secret, created_at FROM recipients \
                 WHERE account_id = $1 ORDER BY created_at, id";
        Ok(self.db.fetch_all(Sql::new(q).bind(account)).await?)
    }

    pub async fn recipient(&self, account: &str, id: &str) -> Result<Option<RecipientRow>> {
        let q = "SELECT account_id, id, kind, address, secret, created_at FROM recipients \
                 WHERE account_id = $1 AND id = $2";
        Ok(self.db.fetch_optional(Sql::new(q).bind(account).bind(id)).await?)
    }

    /// Deletes a recipient of the account; false if it has none by that id.
    pub async fn delete_recipient(&self, account: &str, id: &str) -> Result<bool> {
        let q = "DELETE FROM recipients WHERE account_id = $1 AND id = $2";
        Ok(self.db.execute(Sql::new(q).bind(account).bind(id)).await? == 1)
    }

    /// Pending deliveries due at `now`, each claimed for `lease` so another replica's worker
    /// does not send it at the same time.
    /// At most `per_account` of an account, and none of the accounts in `busy` (those that have
    /// as many in flight already): one account's many or slow receivers never crowd out another's.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: i64,
        per_account: i64,
        busy: &[String],
    ) -> Result<Vec<DeliveryRow>> {
        let q = format!(
            "/* across accounts: deliveries due */ SELECT {DELIVERY_COLUMNS} FROM (SELECT \
             {DELIVERY_COLUMNS}, ROW_NUMBER() OVER \
             (PARTITION BY account_id ORDER BY next_attempt_at, id) AS n FROM deliveries \
             WHERE state = $1 AND next_attempt_at <= $2 AND NOT ({})) d \
             WHERE n <= $4 ORDER BY next_attempt_at, id LIMIT $3",
            self.db.json_in("account_id", 5)
        );
        let busy = serde_json::to_string(busy).expect("JSON of strings");
        let due = Sql::new(AssertSqlSafe(q))
            .bind(PENDING)
            .bind(micros(now))
            .bind(limit)
            .bind(per_account)
            .bind(&busy);
        let due: Vec<DeliveryRow> = self.db.fetch_all(due).await?;
        // Taken, a digest takes no more alerts.
        let take = "UPDATE deliveries SET next_attempt_at = $1, open_until = 0 \
                    WHERE account_id = $5 AND id = $2 AND state = $3 AND next_attempt_at = $4";
        let mut claimed = Vec::with_capacity(due.len());
        for d in due {
            let q = Sql::new(take)
                .bind(micros(now + lease))
                .bind(&d.id)
                .bind(PENDING)
                .bind(d.next_attempt_at)
                .bind(&d.account_id);
            if self.db.execute(q).await? == 1 {
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
        (error, cause): (&str, &str),
        outcome: Outcome,
    ) -> Result<()> {
        let (state, next) = match outcome {
            Outcome::Delivered => (DELIVERED, now),
            Outcome::RetryAt(at) => (PENDING, at),
            Outcome::DeadLetter => (DEAD_LETTERED, now),
        };
        let next_attempt = "SELECT COALESCE(MAX(attempt), 0) + 1 FROM delivery_attempts \
                            WHERE account_id = $2 AND delivery_id = $1";
        let insert = "INSERT INTO delivery_attempts (account_id, delivery_id, attempt, at, status_code, \
                      error, cause) VALUES ($7, $1, $2, $3, $4, $5, $6)";
        let update = "UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2 \
                      WHERE account_id = $4 AND id = $3";
        let mut tx = self.db.begin_write().await?;
        let attempt: i32 =
            tx.scalar(Sql::new(next_attempt).bind(&delivery.id).bind(&delivery.account_id)).await?;
        let attempt = Sql::new(insert)
            .bind(&delivery.id)
            .bind(attempt)
            .bind(micros(now))
            .bind(status_code)
            .bind(error)
            .bind(cause)
            .bind(&delivery.account_id);
        tx.execute(attempt).await?;
        let update =
            Sql::new(update).bind(state).bind(micros(next)).bind(&delivery.id).bind(&delivery.account_id);
        tx.execute(update).await?;
        tx.commit().await?;
        Ok(())
    }

    /// When the next pending delivery is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let q = "/* across accounts: when a delivery is next due */ SELECT MIN(next_attempt_at) FROM deliveries WHERE state = $1";
        let m: Option<i64> = self.db.scalar(Sql::new(q).bind(PENDING)).await?;
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
             AND ($2 = '' OR id IN (SELECT delivery_id FROM delivery_alerts \
             WHERE account_id = $1 AND alert_id = $2)) \
             AND ($3 = '' OR state = $3) AND ($4 = '' OR id < $4) \
             ORDER BY id DESC LIMIT $5"
        );
        let page = Sql::new(AssertSqlSafe(q))
            .bind(account)
            .bind(alert_id.unwrap_or(""))
            .bind(state.unwrap_or(""))
            .bind(after_id.unwrap_or(""))
            .bind(limit);
        Ok(self.db.fetch_all(page).await?)
    }

    pub async fn attempts(&self, account: &str, delivery_id: &str) -> Result<Vec<AttemptRow>> {
        Ok(self.db.fetch_all(Sql::new(ATTEMPTS).bind(account).bind(delivery_id)).await?)
    }

    /// Puts a dead-lettered delivery of the account back in the queue with a fresh set of tries.
    /// The delivery is read back in the same transaction: the worker may deliver it the moment
    /// it commits, and the caller is answered with what it requeued.
    pub async fn redrive(&self, account: &str, id: &str, now: DateTime<Utc>) -> Result<RedriveResult> {
        let requeue = "UPDATE deliveries SET state = $1, attempts = 0, next_attempt_at = $2 \
                       WHERE account_id = $3 AND id = $4 AND state = $5 \
                       AND recipient_id IN (SELECT id FROM recipients WHERE account_id = $3)";
        let q = Sql::new(requeue).bind(PENDING).bind(micros(now)).bind(account).bind(id).bind(DEAD_LETTERED);
        let mut tx = self.db.begin_write().await?;
        if tx.execute(q).await? == 1 {
            let row = delivery(&mut tx, account, id)
                .await?
                .ok_or_else(|| crate::error::Error::not_found("delivery"))?;
            let attempts = tx.fetch_all(Sql::new(ATTEMPTS).bind(account).bind(id)).await?;
            let alerts: Vec<(String,)> = tx.fetch_all(Sql::new(ALERT_IDS).bind(account).bind(id)).await?;
            tx.commit().await?;
            let alert_ids = alerts.into_iter().map(|r| r.0).collect();
            return Ok(RedriveResult::Requeued(Box::new((row, attempts, alert_ids))));
        }
        tx.rollback().await?;
        let why = "SELECT state, EXISTS (SELECT 1 FROM recipients r \
                   WHERE r.account_id = d.account_id AND r.id = d.recipient_id) \
                   FROM deliveries d WHERE d.account_id = $1 AND d.id = $2";
        let found: Option<(String, bool)> =
            self.db.fetch_optional(Sql::new(why).bind(account).bind(id)).await?;
        Ok(match found {
            None => RedriveResult::NotFound,
            Some((_, false)) => RedriveResult::RecipientDeleted,
            Some(_) => RedriveResult::NotDeadLettered,
        })
    }

    pub async fn delivery(&self, account: &str, id: &str) -> Result<Option<DeliveryRow>> {
        delivery(&mut self.db.conn().await?, account, id).await
    }

    /// Where operators find notification's failing work.
    pub fn failing_work(&self) -> std::sync::Arc<dyn FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    DeadLetter,
}

#[derive(Debug)]
pub enum RedriveResult {
    /// The delivery as requeued, its attempts so far and its alerts.
    Requeued(Box<(DeliveryRow, Vec<AttemptRow>, Vec<String>)>),
    NotDeadLettered,
    /// Its recipient is gone: there is nowhere to send it.
    RecipientDeleted,
    NotFound,
}

/// Deliveries that failed and are tried again.
struct Failing(Db);

const FAILING: &str = "/* across accounts: failing work for operators */ \
     SELECT 'notification-delivery' AS worker, d.account_id, d.id AS item, \
     CAST(d.attempts AS BIGINT) AS attempts, COALESCE((SELECT CASE WHEN a.cause = '' THEN a.error \
     ELSE a.cause END FROM delivery_attempts a WHERE a.account_id = d.account_id \
     AND a.delivery_id = d.id ORDER BY a.attempt DESC \
     LIMIT 1), '') AS last_error, d.next_attempt_at FROM deliveries d \
     WHERE d.state = 'pending' AND d.attempts > 0 AND ($2 = '' OR d.account_id = $2) \
     ORDER BY d.account_id, d.id LIMIT $1";

impl FailingWork for Failing {
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> futures::future::BoxFuture<'a, std::result::Result<Vec<FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            self.0.fetch_all(Sql::new(FAILING).bind(limit).bind(account.unwrap_or_default())).await
        })
    }
}

#[cfg(test)]
mod tests {
    //! A database kept by the version before a delivery's parts carried its account.
    use super::*;
    use contactier_runtime::db::{Backend, Migrations};
    use contactier_runtime::testing::{TestDb, migrations_up_to};

    /// The service's migrations up to `version`, as the version before applied them.
    fn up_to(version: i64) -> &'static Migrations {
        migrations_up_to(crate::SERVICE.migrations.expect("migrations"), version)
    }

    async fn rows_from_before_keep_their_delivery(backend: Backend) {
        let t = TestDb::new(backend, "notification").await;
        t.db.migrate_service(Some(up_to(4))).await.unwrap();
        for q in [
            "/* test: as the version before */ INSERT INTO recipients (account_id, id, kind, address, secret, created_at) \
             VALUES ('acct-old', 'rcp-1', 'webhook', 'https://example.invalid/hook', 's', 0)",
            "/* test: as the version before */ INSERT INTO alerts (account_id, sequence, id, kind, marketing_count, tier, period_start, \
             upgrade_id, new_tier, invoice_id, amount_minor, currency, message, created_at) \
             VALUES ('acct-old', 1, 'alr-1', 'usage_75', 750, 1000, '2026-01-01', '', 0, '', 0, '', 'm', 0)",
            "/* test: as the version before */ INSERT INTO deliveries (account_id, id, alert_id, recipient_id, state, attempts, \
             next_attempt_at, created_at) VALUES ('acct-old', 'dlv-1', 'alr-1', 'rcp-1', 'pending', 1, 0, 0)",
            "/* test: as the version before */ INSERT INTO delivery_alerts (delivery_id, position, alert_id) \
             VALUES ('dlv-1', 0, 'alr-1')",
            "/* test: as the version before */ INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, error) \
             VALUES ('dlv-1', 1, 0, 500, 'refused')",
        ] {
            t.db.execute(Sql::new(q)).await.unwrap();
        }
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let mut expected = vec!["alr-1".to_owned()];
        if backend == Backend::Postgres {
            // A replica from before, still running through the rollout, writes no account.
            let q = "/* test: as a replica from before */ INSERT INTO delivery_alerts (delivery_id, position, \
                     alert_id) VALUES ('dlv-1', 1, 'alr-1')";
            t.db.execute(Sql::new(q)).await.unwrap();
            expected.push("alr-1".to_owned());
        }
        let store = Store::new(t.db.clone());
        assert_eq!(store.delivery_alert_ids("acct-old", "dlv-1").await.unwrap(), expected, "{backend:?}");
        assert_eq!(store.delivery_alerts("acct-old", "dlv-1").await.unwrap().len(), expected.len());
        assert_eq!(store.attempts("acct-old", "dlv-1").await.unwrap().len(), 1, "{backend:?}");
        // Another account sees none of it.
        assert!(store.delivery_alert_ids("acct-other", "dlv-1").await.unwrap().is_empty());
        assert!(store.attempts("acct-other", "dlv-1").await.unwrap().is_empty());
    }

    contactier_runtime::backend_tests!(rows_from_before_keep_their_delivery);
}
