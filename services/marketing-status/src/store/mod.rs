//! Marketing status storage, written once for SQLite and PostgreSQL. Every change updates the
//! contact, the account's counters (with a new version), the audit trail and the outbox event
//! for billing in one transaction.

use crate::rules::{self, CountDelta, Outcome, State, Status};
use chrono::{DateTime, Utc};
use contactier_domain::Edition;
use contactier_proto::billing::v1 as bpb;
use contactier_runtime::convert::micros;
use contactier_runtime::db::{Db, placeholders};
use contactier_runtime::outbox::{EventTx, new_event_id};
use contactier_runtime::sql::{Rows, Sql, Transaction, Tx};
use contactier_runtime::work::{FailingItem, FailingWork};
use prost::Message;
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};

mod extras;
pub use extras::{ChangeRow, RunRow, WorkflowRow};
pub use status_requests::Part;
pub use update_dates::{AppliedDate, DateToApply};

/// Outbox topic of the count events for billing.
pub const BILLING_TOPIC: &str = "billing";

pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Marketing => "marketing",
        Status::NonMarketing => "non_marketing",
    }
}

fn state(marketing: bool, pending: bool) -> State {
    State {
        status: if marketing { Status::Marketing } else { Status::NonMarketing },
        until_next_update: pending,
    }
}

/// A contact's stored status.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusRow {
    pub contact_id: String,
    pub marketing: bool,
    pub pending: bool,
    pub source_type: String,
    pub source_id: String,
    pub updated_at: i64,
}

impl StatusRow {
    pub fn state(&self) -> State {
        state(self.marketing, self.pending)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    pub marketing: i64,
    pub pending: i64,
    pub non_marketing: i64,
    pub version: i64,
    pub updated_at: i64,
}

/// An account's plan as billing last told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// None until billing has told it.
    pub edition: Option<Edition>,
    pub marketing_contacts_enabled: bool,
}

#[derive(sqlx::FromRow)]
struct SettingsRow {
    /// '': not told yet.
    edition: String,
    marketing_contacts_enabled: bool,
}

impl Settings {
    /// The settings after billing tells a plan (`edition` None: the feature turned on by the
    /// account). The switch, once on, stays on; turning it off only applies to an account
    /// billing has just made known.
    pub fn told(before: Option<&Settings>, edition: Option<Edition>, enabled: bool) -> Settings {
        Settings {
            edition: edition.or(before.and_then(|s| s.edition)),
            marketing_contacts_enabled: before.map_or(enabled, |s| s.marketing_contacts_enabled || enabled),
        }
    }
}

/// An account's plan as billing tells it.
pub struct Plan {
    pub account: String,
    pub edition: Option<Edition>,
    pub enabled: bool,
}

impl From<SettingsRow> for Settings {
    fn from(r: SettingsRow) -> Self {
        Settings {
            edition: Edition::parse(&r.edition),
            marketing_contacts_enabled: r.marketing_contacts_enabled,
        }
    }
}

/// Outcome per contact of a status request; None when the contact is unknown.
pub type Outcomes = Vec<(String, Option<Outcome>)>;

/// Saving a request's answer with its changes.
pub struct Keep<'a> {
    pub request_id: &'a str,
    /// Of the request the id stands for; see [`contactier_runtime::idempotency`].
    pub digest: &'a str,
    pub answer: &'a (dyn Fn(&Outcomes, &Counts) -> Vec<u8> + Sync),
}

pub enum SetOutcome {
    Done(Outcomes, Counts),
    /// The request id had been answered; its first answer.
    /// A twin under the same request id saved first: its answer, and its request's digest.
    Replayed(Vec<u8>, String),
}

/// A new contact to record: its event, initial state and origin.
#[derive(Clone, Debug)]
pub struct Created {
    pub event_id: String,
    pub contact_id: String,
    pub initial: State,
    pub actor: Actor,
}

/// A contact the contacts service deleted (erased, for GDPR).
#[derive(Clone, Debug)]
pub struct Deleted {
    pub event_id: String,
    pub contact_id: String,
    pub erase: bool,
}

/// Who asked for a change, and through what.
#[derive(Clone, Debug)]
pub struct Actor {
    pub source_type: String,
    pub source_id: String,
    pub user_id: String,
    pub request_id: String,
}

const ADD_COUNTS: &str = "INSERT INTO account_counts (account_id, marketing, pending, non_marketing, \
     version, updated_at) VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (account_id) DO UPDATE SET \
     marketing = account_counts.marketing + excluded.marketing, \
     pending = account_counts.pending + excluded.pending, \
     non_marketing = account_counts.non_marketing + excluded.non_marketing, \
     version = account_counts.version + 1, updated_at = excluded.updated_at \
     RETURNING marketing, pending, non_marketing, version, updated_at";

const COUNTS: &str = "SELECT marketing, pending, non_marketing, version, updated_at FROM account_counts \
     WHERE account_id = $1";

const AUDIT_COLUMNS: [&str; 12] = [
    "account_id",
    "id",
    "contact_id",
    "from_status",
    "to_status",
    "pending",
    "source_type",
    "source_id",
    "user_id",
    "requested_at",
    "effective_at",
    "request_id",
];

const INSERT_AUDIT: &str = "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, \
     pending, source_type, source_id, user_id, requested_at, effective_at, request_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Adds a change to an account's counts and a version (each count its own, even when held);
/// answers the new counts.
async fn add_counts(
    tx: &mut impl Tx,
    account: &str,
    d: CountDelta,
    now: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    let q = Sql::new(ADD_COUNTS).bind(account).bind(d.marketing).bind(d.pending).bind(d.non_marketing);
    tx.fetch_one(q.bind(micros(now))).await
}

/// Puts an account's counts in the outbox for billing, and lifts a hold on them.
async fn announce_counts(
    tx: &mut impl Tx,
    account: &str,
    c: Counts,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let q = "SELECT marketing_contacts_enabled FROM account_settings WHERE account_id = $1";
    let enabled: Option<bool> = tx.scalar_optional(Sql::new(q).bind(account)).await?;
    let ev = bpb::CountChanged {
        event_id: new_event_id(),
        account_id: account.to_owned(),
        version: c.version,
        marketing_count: c.marketing,
        pending_non_marketing: c.pending,
        non_marketing: c.non_marketing,
        observed_at: Some(contactier_runtime::convert::timestamp(now)),
        marketing_contacts_enabled: enabled.unwrap_or(true),
    };
    tx.enqueue(&ev.event_id, BILLING_TOPIC, account, &ev.encode_to_vec(), now).await?;
    tx.execute(Sql::new("DELETE FROM count_holds WHERE account_id = $1").bind(account)).await?;
    Ok(())
}

/// Adds `d` to the account's counters with a new version and announces the count to billing.
async fn apply_delta(
    tx: &mut impl Tx,
    account: &str,
    d: CountDelta,
    now: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    let c = add_counts(tx, account, d, now).await?;
    announce_counts(tx, account, c, now).await?;
    Ok(c)
}

/// `items` split where the sender's batches end (`ends` ascending, the last at `items.len()`;
/// none: one batch).
fn batches<'a, T>(items: &'a [T], ends: &[usize]) -> impl Iterator<Item = &'a [T]> + use<'a, T> {
    let ends = if ends.is_empty() { vec![items.len()] } else { ends.to_vec() };
    let starts = std::iter::once(0).chain(ends.clone());
    starts.zip(ends).map(move |(a, b)| {
        let a = a.min(items.len());
        &items[a..b.min(items.len()).max(a)]
    })
}

async fn counts(tx: &mut impl Tx, account: &str) -> Result<Counts, sqlx::Error> {
    Ok(tx.fetch_optional(Sql::new(COUNTS).bind(account)).await?.unwrap_or_default())
}

/// How long a bulk change may hold its account's count back from billing.
pub const HOLD_LIMIT: chrono::Duration = chrono::Duration::seconds(60);

/// Holds an account's counts back from billing while a bulk change goes on (from the first
/// part held).
async fn hold_counts(tx: &mut impl Tx, account: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let q = "INSERT INTO count_holds (account_id, since) VALUES ($1, $2) ON CONFLICT (account_id) DO NOTHING";
    tx.execute(Sql::new(q).bind(account).bind(micros(now))).await?;
    Ok(())
}

/// Since when the account's count is held back, if it is.
async fn held_since(tx: &mut impl Tx, account: &str) -> Result<Option<i64>, sqlx::Error> {
    tx.scalar_optional(Sql::new("SELECT since FROM count_holds WHERE account_id = $1").bind(account)).await
}

/// One audit entry: a contact's change from `from` to `to`, requested at `now`.
struct Audit<'a> {
    contact: &'a str,
    from: State,
    to: State,
    actor: &'a Actor,
    now: DateTime<Utc>,
    effective: DateTime<Utc>,
}

async fn audit(tx: &mut impl Tx, account: &str, a: Audit<'_>) -> Result<(), sqlx::Error> {
    let q = Sql::new(INSERT_AUDIT)
        .bind(account)
        .bind(new_event_id())
        .bind(a.contact)
        .bind(status_str(a.from.status))
        .bind(status_str(a.to.status))
        .bind(a.to.until_next_update)
        .bind(&a.actor.source_type)
        .bind(&a.actor.source_id)
        .bind(&a.actor.user_id)
        .bind(micros(a.now))
        .bind(micros(a.effective))
        .bind(&a.actor.request_id);
    tx.execute(q).await?;
    Ok(())
}

mod update_dates;
use update_dates::{hold_mark, stamp_after};
mod status_requests;

const STATUS_COLUMNS: &str = "contact_id, marketing, pending, source_type, source_id, updated_at";

const SAVED_RESPONSE: &str =
    "SELECT response, digest FROM status_requests WHERE account_id = $1 AND request_id = $2";
const SAVE_RESPONSE: &str = "INSERT INTO status_requests (account_id, request_id, response, digest) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const SETTINGS: &str =
    "SELECT edition, marketing_contacts_enabled FROM account_settings WHERE account_id = $1";
const SAVE_SETTINGS: &str =
    "INSERT INTO account_settings (account_id, edition, marketing_contacts_enabled, updated_at)";
/// The rule of [`Settings::told`] again, against the row as it is when written: a plan told by
/// another replica meanwhile is not undone.
const SETTINGS_MERGE: &str = "ON CONFLICT (account_id) DO UPDATE SET \
     edition = COALESCE(NULLIF(excluded.edition, ''), account_settings.edition), \
     marketing_contacts_enabled = account_settings.marketing_contacts_enabled \
     OR excluded.marketing_contacts_enabled, updated_at = excluded.updated_at";
const SET_PERMISSION: &str = "INSERT INTO user_permissions (account_id, user_id, may_set_marketing) \
     VALUES ($1, $2, $3) ON CONFLICT (account_id, user_id) DO UPDATE SET \
     may_set_marketing = excluded.may_set_marketing";
const MERGED: &str = "UPDATE contact_status SET marketing = $1, pending = $2, source_type = 'MERGE', \
     source_id = $3, updated_at = $4 WHERE account_id = $5 AND contact_id = $6";
const EXPORT_TRAIL: &str = "SELECT from_status, to_status, pending, source_type, source_id, requested_at, \
     effective_at FROM status_trail WHERE account_id = $1 AND contact_id = $2 ORDER BY requested_at, id";

#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Contacts added since the planner's statistics were last refreshed by this process.
    added: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The worker that announces abandoned held counts, told when a count is held.
    holds: std::sync::Arc<std::sync::OnceLock<contactier_runtime::clock::WorkerWaker>>,
}

/// Contacts added between refreshes of the statistics of `contact_status`. Statistics that have
/// not seen an account's contacts make the planner scan the account for each id it looks up.
const STATISTICS_EVERY: usize = 10_000;

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db, added: Default::default(), holds: Default::default() }
    }

    /// Names the worker to tell when a count is held (see [`Store::release_stale_holds`]).
    pub fn on_hold(&self, worker: contactier_runtime::clock::WorkerWaker) {
        let _ = self.holds.set(worker);
    }

    fn held(&self) {
        if let Some(w) = self.holds.get() {
            w.wake();
        }
    }

    /// A transaction that will write, for work spanning several of the calls below.
    pub async fn begin_write(&self) -> Result<Transaction, sqlx::Error> {
        self.db.begin_write().await
    }

    /// Counts contacts added, and has the database take the statuses' statistics again every
    /// [`STATISTICS_EVERY`] of them.
    pub async fn added(&self, n: usize) -> Result<(), sqlx::Error> {
        use std::sync::atomic::Ordering;
        let before = self.added.fetch_add(n, Ordering::Relaxed);
        if before / STATISTICS_EVERY != (before + n) / STATISTICS_EVERY {
            self.db.execute(Sql::new("ANALYZE contact_status")).await?;
        }
        Ok(())
    }

    /// Announces the counts of bulk changes whose caller never finished them (held longer than
    /// [`HOLD_LIMIT`]); answers how many it announced and when the next hold runs out.
    pub async fn release_stale_holds(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(usize, Option<DateTime<Utc>>), sqlx::Error> {
        let mut released = 0;
        let cutoff = micros(now - HOLD_LIMIT);
        let q = "/* across accounts: counts held too long */ SELECT account_id FROM count_holds \
                 WHERE since <= $1 ORDER BY account_id";
        let stale: Vec<(String,)> = self.db.fetch_all(Sql::new(q).bind(cutoff)).await?;
        for (account,) in &stale {
            let mut tx = self.db.begin_write().await?;
            // Only if still held: a finishing part may have announced it meanwhile.
            if held_since(&mut tx, account).await?.is_some_and(|since| since <= cutoff) {
                let c = counts(&mut tx, account).await?;
                announce_counts(&mut tx, account, c, now).await?;
                released += 1;
            }
            tx.commit().await?;
        }
        let next: Option<i64> = self
            .db
            .scalar(Sql::new(
                "/* across accounts: when a held count is next due */ SELECT MIN(since) FROM count_holds",
            ))
            .await?;
        let next = next.map(|since| DateTime::from_timestamp_micros(since).unwrap_or(now) + HOLD_LIMIT);
        Ok((released, next))
    }

    pub async fn counts(&self, account: &str) -> Result<Counts, sqlx::Error> {
        counts(&mut self.db.conn().await?, account).await
    }

    pub async fn statuses(&self, account: &str, ids: &[String]) -> Result<Vec<StatusRow>, sqlx::Error> {
        let q = format!(
            "SELECT {STATUS_COLUMNS} FROM contact_status_now WHERE account_id = $1 AND {}",
            self.db.json_in("contact_id", 2)
        );
        let wanted = serde_json::to_string(ids).expect("strings");
        let rows: Vec<StatusRow> =
            self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(&wanted)).await?;
        let found: HashMap<String, StatusRow> = rows.into_iter().map(|r| (r.contact_id.clone(), r)).collect();
        // In the order asked; unknown ids left out.
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    /// The answer first given to a request id, if any, with the digest of that request.
    pub async fn saved_response(
        &self,
        account: &str,
        request_id: &str,
    ) -> Result<Option<(Vec<u8>, String)>, sqlx::Error> {
        self.db.fetch_optional(Sql::new(SAVED_RESPONSE).bind(account).bind(request_id)).await
    }

    /// Keeps the answer to a request id; the first one wins.
    pub async fn save_response(
        &self,
        account: &str,
        request_id: &str,
        digest: &str,
        response: &[u8],
    ) -> Result<(), sqlx::Error> {
        let q = Sql::new(SAVE_RESPONSE).bind(account).bind(request_id).bind(response).bind(digest);
        self.db.execute(q).await?;
        Ok(())
    }

    pub async fn settings(&self, account: &str) -> Result<Settings, sqlx::Error> {
        let s: Option<SettingsRow> = self.db.fetch_optional(Sql::new(SETTINGS).bind(account)).await?;
        Ok(s.map_or(Settings { edition: None, marketing_contacts_enabled: true }, Settings::from))
    }

    /// Records the account's edition and feature switch (from billing) or, with `edition` None,
    /// turns the feature on. Once on it stays on. When the switch changes, the count gets a new
    /// version so billing learns how to bill it.
    pub async fn set_settings(
        &self,
        account: &str,
        edition: Option<Edition>,
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Settings, sqlx::Error> {
        let plan = Plan { account: account.to_owned(), edition, enabled };
        let mut after = self.set_plans(std::slice::from_ref(&plan), now).await?;
        Ok(after.pop().expect("one plan, one answer"))
    }

    /// [`Store::set_settings`] for many plans in one transaction, in the order given (an
    /// account named twice sees its first plan applied before its second): each plan's
    /// settings after it.
    pub async fn set_plans(&self, plans: &[Plan], now: DateTime<Utc>) -> Result<Vec<Settings>, sqlx::Error> {
        let mut accounts: Vec<&str> = plans.iter().map(|p| p.account.as_str()).collect();
        accounts.sort_unstable();
        accounts.dedup();
        let mut tx = self.db.begin_write().await?;
        let q = format!(
            "SELECT account_id, edition, marketing_contacts_enabled FROM account_settings WHERE {}",
            self.db.json_in("account_id", 1)
        );
        let wanted = serde_json::to_string(&accounts).expect("strings");
        let rows: Vec<(String, String, bool)> =
            tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(&wanted)).await?;
        let before: HashMap<String, Settings> = rows
            .into_iter()
            .map(|(a, edition, enabled)| {
                (a, SettingsRow { edition, marketing_contacts_enabled: enabled }.into())
            })
            .collect();
        let mut state = before.clone();
        let mut answers = Vec::with_capacity(plans.len());
        for p in plans {
            let after = Settings::told(state.get(&p.account), p.edition, p.enabled);
            state.insert(p.account.clone(), after.clone());
            answers.push(after);
        }
        // One row an account (a statement may not touch a row twice), its state after its last plan.
        let at = micros(now);
        for chunk in accounts.chunks(self.db.rows_per_statement(4)) {
            let sql = format!("{SAVE_SETTINGS} VALUES {} {SETTINGS_MERGE}", placeholders(chunk.len(), 4));
            let q = chunk.iter().fold(Sql::new(AssertSqlSafe(sql)), |q, a| {
                let s = &state[*a];
                q.bind(*a)
                    .bind(s.edition.map_or("", Edition::as_str))
                    .bind(s.marketing_contacts_enabled)
                    .bind(at)
            });
            tx.execute(q).await?;
        }
        for a in accounts {
            let was_enabled = before.get(a).is_none_or(|s| s.marketing_contacts_enabled);
            if state[a].marketing_contacts_enabled != was_enabled {
                apply_delta(&mut tx, a, CountDelta::default(), now).await?;
            }
        }
        tx.commit().await?;
        Ok(answers)
    }

    pub async fn may_set_marketing(&self, account: &str, user: &str) -> Result<bool, sqlx::Error> {
        let q = "SELECT may_set_marketing FROM user_permissions WHERE account_id = $1 AND user_id = $2";
        let p: Option<bool> = self.db.scalar_optional(Sql::new(q).bind(account).bind(user)).await?;
        Ok(p.unwrap_or(true))
    }

    pub async fn set_permission(&self, account: &str, user: &str, may: bool) -> Result<(), sqlx::Error> {
        self.db.execute(Sql::new(SET_PERMISSION).bind(account).bind(user).bind(may)).await?;
        Ok(())
    }

    /// [`Store::contacts_created_in`] in a transaction of its own.
    #[cfg(test)]
    pub async fn contacts_created(
        &self,
        account: &str,
        items: &[Created],
        ends: &[usize],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        self.contacts_created_in(&mut tx, account, items, ends, now).await?;
        tx.commit().await?;
        self.added(items.len()).await
    }

    /// New contacts from one account's events, with multi-row statements, in the caller's
    /// transaction (it commits, then calls [`Store::added`]): events seen before are skipped,
    /// contacts known before are left as they are. The count moves once for each of the
    /// sender's batches, which end at `ends` (ascending, the last at `items.len()`; none: one
    /// batch).
    pub async fn contacts_created_in(
        &self,
        tx: &mut Transaction,
        account: &str,
        items: &[Created],
        ends: &[usize],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let at = micros(now);
        let ids: Vec<(String, String)> =
            items.iter().map(|c| (account.to_owned(), c.event_id.clone())).collect();
        let fresh: HashSet<String> = tx.receive_many(&ids, now).await?.into_iter().collect();
        let todo: Vec<&Created> = items.iter().filter(|c| fresh.contains(&c.event_id)).collect();
        let mut statuses = Rows::with_capacity(7, todo.len());
        for c in &todo {
            statuses.push([
                account.into(),
                (&c.contact_id).into(),
                c.initial.counts().into(),
                false.into(),
                (&c.actor.source_type).into(),
                (&c.actor.source_id).into(),
                at.into(),
            ]);
        }
        let columns =
            ["account_id", "contact_id", "marketing", "pending", "source_type", "source_id", "updated_at"];
        // A contact known already is left as it is.
        let inserted: HashSet<String> = tx
            .append_new("contact_status", &columns, &statuses, "(account_id, contact_id)", "contact_id")
            .await?
            .into_iter()
            .collect();
        let new: Vec<&&Created> = todo.iter().filter(|c| inserted.contains(&c.contact_id)).collect();
        let ids: Vec<String> = new.iter().map(|_| new_event_id()).collect();
        let mut audit = Rows::with_capacity(AUDIT_COLUMNS.len(), new.len());
        for (c, id) in new.iter().zip(&ids) {
            audit.push([
                account.into(),
                id.into(),
                (&c.contact_id).into(),
                status_str(Status::NonMarketing).into(),
                status_str(c.initial.status).into(),
                false.into(),
                (&c.actor.source_type).into(),
                (&c.actor.source_id).into(),
                (&c.actor.user_id).into(),
                at.into(),
                at.into(),
                (&c.actor.request_id).into(),
            ]);
        }
        tx.append("status_changes", &AUDIT_COLUMNS, &audit).await?;
        // Each contact added counts in the first batch naming it.
        let mut added: HashSet<&str> = HashSet::new();
        for batch in batches(items, ends) {
            let mut delta = CountDelta::default();
            for c in batch {
                if fresh.contains(&c.event_id)
                    && inserted.contains(&c.contact_id)
                    && added.insert(c.contact_id.as_str())
                {
                    delta += CountDelta::added(c.initial);
                }
            }
            if !delta.is_zero() {
                apply_delta(tx, account, delta, now).await?;
            }
        }
        Ok(())
    }

    /// [`Store::contacts_deleted_in`] in a transaction of its own.
    #[cfg(test)]
    pub async fn contacts_deleted(
        &self,
        account: &str,
        items: &[Deleted],
        ends: &[usize],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        self.contacts_deleted_in(&mut tx, account, items, ends, now).await?;
        tx.commit().await
    }

    /// Removes contacts of one account in the caller's transaction (it commits), each once per
    /// event id: their places in the count are free at once; the count moves once for each of
    /// the sender's batches (`ends`, as for creations) that removed something.
    pub async fn contacts_deleted_in(
        &self,
        tx: &mut Transaction,
        account: &str,
        items: &[Deleted],
        ends: &[usize],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let delete = format!(
            "DELETE FROM contact_status WHERE account_id = $1 AND {} RETURNING {STATUS_COLUMNS}",
            self.db.json_in("contact_id", 2)
        );
        let erase = format!(
            "DELETE FROM status_changes WHERE account_id = $1 AND {}",
            self.db.json_in("contact_id", 2)
        );
        let ids: Vec<(String, String)> =
            items.iter().map(|d| (account.to_owned(), d.event_id.clone())).collect();
        let fresh: HashSet<String> = tx.receive_many(&ids, now).await?.into_iter().collect();
        let all = items;
        let items: Vec<&Deleted> = items.iter().filter(|d| fresh.contains(&d.event_id)).collect();
        if items.is_empty() {
            return Ok(());
        }
        let named: Vec<&str> = items.iter().map(|d| d.contact_id.as_str()).collect();
        let contacts = serde_json::to_string(&named).expect("JSON of strings");
        // Their history keeps the update date that changed them.
        hold_mark(&self.db, tx, account, &contacts).await?;
        let gone: Vec<StatusRow> =
            tx.fetch_all(Sql::new(AssertSqlSafe(delete)).bind(account).bind(&contacts)).await?;
        // Each contact removed counts in the first batch naming it.
        let mut batch_of: HashMap<&str, usize> = HashMap::new();
        for (b, batch) in batches(all, ends).enumerate() {
            for d in batch.iter().filter(|d| fresh.contains(&d.event_id)) {
                batch_of.entry(d.contact_id.as_str()).or_insert(b);
            }
        }
        let mut deltas: std::collections::BTreeMap<usize, CountDelta> = Default::default();
        for row in &gone {
            let b = batch_of.get(row.contact_id.as_str()).copied().unwrap_or_default();
            *deltas.entry(b).or_default() += CountDelta::removed(row.state());
        }
        for delta in deltas.into_values() {
            apply_delta(tx, account, delta, now).await?;
        }
        let erased: Vec<&str> = items.iter().filter(|d| d.erase).map(|d| d.contact_id.as_str()).collect();
        if !erased.is_empty() {
            // GDPR erasure: nothing about the contact is kept, not even its history.
            let erased = serde_json::to_string(&erased).expect("JSON of strings");
            tx.execute(Sql::new(AssertSqlSafe(erase)).bind(account).bind(&erased)).await?;
        }
        Ok(())
    }

    /// Merges `secondary` into `primary` once per event id: the result is marketing if either
    /// was; the secondary's place is freed. False if seen before.
    pub async fn contacts_merged(
        &self,
        event_id: &str,
        account: &str,
        primary: &str,
        secondary: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        // Both rows locked (PostgreSQL) in key order, as status changes lock theirs.
        let lock = match self.db {
            Db::Postgres(_) => " ORDER BY contact_id FOR UPDATE",
            Db::Sqlite(_) => "",
        };
        let q = format!(
            "SELECT {STATUS_COLUMNS} FROM contact_status WHERE account_id = $1 AND contact_id IN ($2, \
             $3){lock}"
        );
        let mut tx = self.db.begin_write().await?;
        if !tx.receive(account, event_id, now).await? {
            return Ok(false);
        }
        let both = serde_json::json!([primary, secondary]).to_string();
        let at = stamp_after(micros(now), hold_mark(&self.db, &mut tx, account, &both).await?);
        let rows: Vec<StatusRow> =
            tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(primary).bind(secondary)).await?;
        let find = |id: &str| rows.iter().find(|r| r.contact_id == id).cloned();
        if let (Some(p), Some(s)) = (find(primary), find(secondary)) {
            let (from, to) = (p.state(), rules::merged(p.state(), s.state()));
            let mut delta = CountDelta::removed(s.state());
            if to != from {
                let merged = Sql::new(MERGED)
                    .bind(to.counts())
                    .bind(to.until_next_update)
                    .bind(secondary)
                    .bind(at)
                    .bind(account)
                    .bind(primary);
                tx.execute(merged).await?;
                let actor = Actor {
                    source_type: "MERGE".into(),
                    source_id: secondary.into(),
                    user_id: String::new(),
                    request_id: String::new(),
                };
                audit(
                    &mut tx,
                    account,
                    Audit { contact: primary, from, to, actor: &actor, now, effective: now },
                )
                .await?;
                delta += CountDelta::between(from, to);
            }
            let remove = "DELETE FROM contact_status WHERE account_id = $1 AND contact_id = $2";
            tx.execute(Sql::new(remove).bind(account).bind(secondary)).await?;
            // The secondary's history follows it into the primary's trail.
            let follow =
                "UPDATE status_changes SET contact_id = $3 WHERE account_id = $1 AND contact_id = $2";
            tx.execute(Sql::new(follow).bind(account).bind(secondary).bind(primary)).await?;
            if !delta.is_zero() {
                apply_delta(&mut tx, account, delta, now).await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A contact's status and audit trail, for a GDPR export.
    pub async fn export(&self, account: &str, contact: &str) -> Result<serde_json::Value, sqlx::Error> {
        let status = self.statuses(account, &[contact.to_owned()]).await?.pop();
        let trail: Vec<(String, String, bool, String, String, i64, i64)> =
            self.db.fetch_all(Sql::new(EXPORT_TRAIL).bind(account).bind(contact)).await?;
        Ok(serde_json::json!({
            "contact_id": contact,
            "status": status.map(|s| serde_json::json!({
                "marketing": s.marketing,
                "marketable_until_next_update": s.pending,
                "source_type": s.source_type,
                "source_id": s.source_id,
                "updated_at_micros": s.updated_at,
            })),
            "status_changes": trail.into_iter().map(|(from, to, pending, st, sid, req, eff)| serde_json::json!({
                "from": from, "to": to, "pending": pending, "source_type": st, "source_id": sid,
                "requested_at_micros": req, "effective_at_micros": eff,
            })).collect::<Vec<_>>(),
        }))
    }

    /// Where operators find marketing-status's failing work.
    pub fn failing_work(&self) -> std::sync::Arc<dyn FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}

/// Workflow runs that failed and are retried.
struct Failing(Db);

const FAILING: &str = "/* across accounts: failing work for operators */ \
     SELECT 'marketing-status-workflows' AS worker, account_id, id AS item, attempts, \
     last_error, next_attempt_at FROM workflow_runs WHERE state = 'retrying' AND ($2 = '' OR account_id = $2) \
     ORDER BY account_id, id LIMIT $1";

impl FailingWork for Failing {
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> futures::future::BoxFuture<'a, Result<Vec<FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            self.0.fetch_all(Sql::new(FAILING).bind(limit).bind(account.unwrap_or_default())).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Edition, Settings};

    fn s(edition: Option<Edition>, enabled: bool) -> Settings {
        Settings { edition, marketing_contacts_enabled: enabled }
    }

    #[test]
    fn a_new_account_takes_the_plan_as_told() {
        assert_eq!(Settings::told(None, Some(Edition::Starter), false), s(Some(Edition::Starter), false));
        assert_eq!(Settings::told(None, None, true), s(None, true));
    }

    #[test]
    fn the_switch_once_on_stays_on_and_the_edition_is_kept_when_not_told() {
        let on = s(Some(Edition::Professional), true);
        assert_eq!(
            Settings::told(Some(&on), Some(Edition::Enterprise), false),
            s(Some(Edition::Enterprise), true)
        );
        assert_eq!(Settings::told(Some(&on), None, false), on);
        let off = s(Some(Edition::Starter), false);
        assert_eq!(Settings::told(Some(&off), None, false), off);
        assert_eq!(Settings::told(Some(&off), None, true), s(Some(Edition::Starter), true));
    }
}
