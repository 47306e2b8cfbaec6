//! Marketing status storage, written once for SQLite and PostgreSQL. Every change updates the
//! contact, the account's counters (with a new version), the audit trail and the outbox event
//! for billing in one transaction.

use crate::rules::{self, CountDelta, Outcome, State, Status};
use chrono::{DateTime, Utc};
use contactier_domain::Edition;
use contactier_proto::billing::v1 as bpb;
use contactier_runtime::convert::micros;
use contactier_runtime::db::{BeginWrite, Db, placeholders};
use contactier_runtime::outbox::{EventTx, new_event_id};
use contactier_runtime::with_pool;
use prost::Message;
use std::collections::{HashMap, HashSet};

mod extras;
pub use extras::{ChangeRow, RunRow, WorkflowRow};
pub use status_requests::Part;

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

/// Adds `d` to the account's counters, bumps the version and queues the new count for billing.
/// Applies a count change and announces the new count to billing; see [`add_counts!`] and
/// [`announce_counts!`].
macro_rules! apply_delta {
    ($tx:expr, $account:expr, $d:expr, $now:expr) => {{
        let c = add_counts!($tx, $account, $d, $now);
        announce_counts!($tx, $account, c, $now);
        c
    }};
}

/// Adds a change to an account's counts and a version (each count its own, even when held);
/// evaluates to the new counts.
macro_rules! add_counts {
    ($tx:expr, $account:expr, $d:expr, $now:expr) => {{
        let d: CountDelta = $d;
        let c: Counts = sqlx::query_as(
            "INSERT INTO account_counts (account_id, marketing, pending, non_marketing, version, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5) \
             ON CONFLICT (account_id) DO UPDATE SET marketing = account_counts.marketing + excluded.marketing, \
             pending = account_counts.pending + excluded.pending, \
             non_marketing = account_counts.non_marketing + excluded.non_marketing, \
             version = account_counts.version + 1, updated_at = excluded.updated_at \
             RETURNING marketing, pending, non_marketing, version, updated_at",
        )
        .bind($account)
        .bind(d.marketing)
        .bind(d.pending)
        .bind(d.non_marketing)
        .bind(micros($now))
        .fetch_one(&mut *$tx)
        .await?;
        c
    }};
}

/// Puts an account's counts in the outbox for billing, and lifts a hold on them.
macro_rules! announce_counts {
    ($tx:expr, $account:expr, $c:expr, $now:expr) => {{
        let c: Counts = $c;
        let enabled: Option<bool> = sqlx::query_scalar(
            "SELECT marketing_contacts_enabled FROM account_settings WHERE account_id = $1",
        )
        .bind($account)
        .fetch_optional(&mut *$tx)
        .await?;
        let ev = bpb::CountChanged {
            event_id: new_event_id(),
            account_id: $account.to_owned(),
            version: c.version,
            marketing_count: c.marketing,
            pending_non_marketing: c.pending,
            non_marketing: c.non_marketing,
            observed_at: Some(prost_types::Timestamp { seconds: $now.timestamp(), nanos: 0 }),
            marketing_contacts_enabled: enabled.unwrap_or(true),
        };
        $tx.enqueue(&ev.event_id, BILLING_TOPIC, $account, &ev.encode_to_vec(), $now).await?;
        sqlx::query("DELETE FROM count_holds WHERE account_id = $1")
            .bind($account)
            .execute(&mut *$tx)
            .await?;
    }};
}

/// How long a bulk change may hold its account's count back from billing.
pub const HOLD_LIMIT: chrono::Duration = chrono::Duration::seconds(60);

/// Holds an account's counts back from billing while a bulk change goes on (from the first
/// part held).
macro_rules! hold_counts {
    ($tx:expr, $account:expr, $now:expr) => {{
        sqlx::query(
            "INSERT INTO count_holds (account_id, since) VALUES ($1, $2) ON CONFLICT (account_id) DO NOTHING",
        )
        .bind($account)
        .bind(micros($now))
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Writes one audit entry.
macro_rules! audit {
    ($tx:expr, $account:expr, $contact:expr, $from:expr, $to:expr, $actor:expr, $now:expr, $effective:expr) => {{
        let (from, to): (State, State) = ($from, $to);
        let actor: &Actor = $actor;
        sqlx::query(
            "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, pending, source_type, \
             source_id, user_id, requested_at, effective_at, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind($account)
        .bind(new_event_id())
        .bind($contact)
        .bind(status_str(from.status))
        .bind(status_str(to.status))
        .bind(to.until_next_update)
        .bind(&actor.source_type)
        .bind(&actor.source_id)
        .bind(&actor.user_id)
        .bind(micros($now))
        .bind(micros($effective))
        .bind(&actor.request_id)
        .execute(&mut *$tx)
        .await?;
    }};
}

mod update_dates;
use update_dates::{hold_mark, stamp_after};
mod status_requests;

const STATUS_COLUMNS: &str = "contact_id, marketing, pending, source_type, source_id, updated_at";

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

    /// Counts `n` new contacts; refreshes the statistics every [`STATISTICS_EVERY`].
    async fn added(&self, n: usize) -> Result<(), sqlx::Error> {
        use std::sync::atomic::Ordering;
        let before = self.added.fetch_add(n, Ordering::Relaxed);
        if before / STATISTICS_EVERY != (before + n) / STATISTICS_EVERY {
            with_pool!(&self.db, pool => sqlx::query("ANALYZE contact_status").execute(pool).await?.rows_affected());
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
        let stale: Vec<String> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT account_id FROM count_holds WHERE since <= $1 ORDER BY account_id",
        ).bind(cutoff).fetch_all(pool).await?);
        for account in &stale {
            with_pool!(&self.db, pool => {
                let mut tx = pool.begin_write().await?;
                // Only if still held: a finishing part may have announced it meanwhile.
                let held: Option<i64> = sqlx::query_scalar("SELECT since FROM count_holds WHERE account_id = $1")
                    .bind(account).fetch_optional(&mut *tx).await?;
                if held.is_some_and(|since| since <= cutoff) {
                    let c: Option<Counts> = sqlx::query_as(
                        "SELECT marketing, pending, non_marketing, version, updated_at FROM account_counts WHERE account_id = $1",
                    ).bind(account).fetch_optional(&mut *tx).await?;
                    announce_counts!(tx, account, c.unwrap_or_default(), now);
                    released += 1;
                }
                tx.commit().await?;
            });
        }
        let next: Option<i64> = with_pool!(&self.db, pool =>
            sqlx::query_scalar("SELECT MIN(since) FROM count_holds").fetch_one(pool).await?);
        let next = next.map(|since| DateTime::from_timestamp_micros(since).unwrap_or(now) + HOLD_LIMIT);
        Ok((released, next))
    }

    pub async fn counts(&self, account: &str) -> Result<Counts, sqlx::Error> {
        let c: Option<Counts> = with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT marketing, pending, non_marketing, version, updated_at FROM account_counts WHERE account_id = $1",
        ).bind(account).fetch_optional(pool).await?);
        Ok(c.unwrap_or_default())
    }

    pub async fn statuses(&self, account: &str, ids: &[String]) -> Result<Vec<StatusRow>, sqlx::Error> {
        let q = format!(
            "SELECT {STATUS_COLUMNS} FROM contact_status_now WHERE account_id = $1 AND {}",
            self.db.json_in("contact_id", 2)
        );
        let wanted = serde_json::to_string(ids).expect("strings");
        let rows: Vec<StatusRow> = with_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(account).bind(&wanted).fetch_all(pool).await?);
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
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT response, digest FROM status_requests WHERE account_id = $1 AND request_id = $2",
        ).bind(account).bind(request_id).fetch_optional(pool).await?))
    }

    /// Keeps the answer to a request id; the first one wins.
    pub async fn save_response(
        &self,
        account: &str,
        request_id: &str,
        digest: &str,
        response: &[u8],
    ) -> Result<(), sqlx::Error> {
        with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO status_requests (account_id, request_id, response, digest) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        ).bind(account).bind(request_id).bind(response).bind(digest).execute(pool).await?.rows_affected());
        Ok(())
    }

    pub async fn settings(&self, account: &str) -> Result<Settings, sqlx::Error> {
        let s: Option<SettingsRow> = with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT edition, marketing_contacts_enabled FROM account_settings WHERE account_id = $1",
        ).bind(account).fetch_optional(pool).await?);
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
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let before: Option<SettingsRow> = sqlx::query_as(
                "SELECT edition, marketing_contacts_enabled FROM account_settings WHERE account_id = $1",
            ).bind(account).fetch_optional(&mut *tx).await?;
            let before = before.map(Settings::from);
            let was_enabled = before.as_ref().is_none_or(|s| s.marketing_contacts_enabled);
            let after = Settings {
                edition: edition.or(before.as_ref().and_then(|s| s.edition)),
                // Turning it off only applies to an account billing has just made known.
                marketing_contacts_enabled: if before.is_some() && was_enabled { true } else { enabled },
            };
            sqlx::query(
                "INSERT INTO account_settings (account_id, edition, marketing_contacts_enabled, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (account_id) DO UPDATE SET edition = excluded.edition, \
                 marketing_contacts_enabled = excluded.marketing_contacts_enabled, updated_at = excluded.updated_at",
            )
            .bind(account).bind(after.edition.map_or("", Edition::as_str)).bind(after.marketing_contacts_enabled).bind(micros(now))
            .execute(&mut *tx).await?;
            if after.marketing_contacts_enabled != was_enabled {
                apply_delta!(tx, account, CountDelta::default(), now);
            }
            tx.commit().await?;
            Ok(after)
        })
    }

    pub async fn may_set_marketing(&self, account: &str, user: &str) -> Result<bool, sqlx::Error> {
        let p: Option<bool> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT may_set_marketing FROM user_permissions WHERE account_id = $1 AND user_id = $2",
        ).bind(account).bind(user).fetch_optional(pool).await?);
        Ok(p.unwrap_or(true))
    }

    pub async fn set_permission(&self, account: &str, user: &str, may: bool) -> Result<(), sqlx::Error> {
        with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO user_permissions (account_id, user_id, may_set_marketing) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, user_id) DO UPDATE SET may_set_marketing = excluded.may_set_marketing",
        ).bind(account).bind(user).bind(may).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// New contacts from one account's events, in one transaction with multi-row statements:
    /// events seen before are skipped, contacts known before are left as they are.
    pub async fn contacts_created(
        &self,
        account: &str,
        items: &[Created],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let at = micros(now);
        let (status_per, audit_per) = (self.db.rows_per_statement(7), self.db.rows_per_statement(12));
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let ids: Vec<String> = items.iter().map(|c| c.event_id.clone()).collect();
            let fresh: HashSet<String> = tx.receive_many(&ids, now).await?.into_iter().collect();
            let todo: Vec<&Created> = items.iter().filter(|c| fresh.contains(&c.event_id)).collect();
            let mut inserted: HashSet<String> = HashSet::new();
            for chunk in todo.chunks(status_per) {
                let sql = format!(
                    "INSERT INTO contact_status (account_id, contact_id, marketing, pending, source_type, source_id, updated_at) \
                     VALUES {} ON CONFLICT (account_id, contact_id) DO NOTHING RETURNING contact_id",
                    placeholders(chunk.len(), 7)
                );
                let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
                for c in chunk {
                    q = q.bind(account).bind(&c.contact_id).bind(c.initial.counts()).bind(false)
                        .bind(&c.actor.source_type).bind(&c.actor.source_id).bind(at);
                }
                let got: Vec<String> = q.fetch_all(&mut *tx).await?;
                inserted.extend(got);
            }
            let new: Vec<&&Created> = todo.iter().filter(|c| inserted.contains(&c.contact_id)).collect();
            for chunk in new.chunks(audit_per) {
                let sql = format!(
                    "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, pending, source_type, \
                     source_id, user_id, requested_at, effective_at, request_id) VALUES {}",
                    placeholders(chunk.len(), 12)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for c in chunk {
                    q = q.bind(account).bind(new_event_id()).bind(&c.contact_id).bind(status_str(Status::NonMarketing))
                        .bind(status_str(c.initial.status)).bind(false).bind(&c.actor.source_type).bind(&c.actor.source_id)
                        .bind(&c.actor.user_id).bind(at).bind(at).bind(&c.actor.request_id);
                }
                q.execute(&mut *tx).await?;
            }
            let marketing = new.iter().filter(|c| c.initial.counts()).count() as i64;
            let delta = CountDelta { marketing, pending: 0, non_marketing: new.len() as i64 - marketing };
            if !delta.is_zero() {
                apply_delta!(tx, account, delta, now);
            }
            tx.commit().await?;
        });
        self.added(items.len()).await
    }

    /// Removes contacts of one account in one transaction, each once per event id: their
    /// places in the count are free at once, and the count moves once for all of them.
    pub async fn contacts_deleted(
        &self,
        account: &str,
        items: &[Deleted],
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
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let ids: Vec<String> = items.iter().map(|d| d.event_id.clone()).collect();
            let fresh: std::collections::HashSet<String> = tx.receive_many(&ids, now).await?.into_iter().collect();
            let items: Vec<&Deleted> = items.iter().filter(|d| fresh.contains(&d.event_id)).collect();
            if items.is_empty() {
                tx.commit().await?;
                return Ok(());
            }
            let contacts = serde_json::to_string(&items.iter().map(|d| d.contact_id.as_str()).collect::<Vec<_>>())
                .expect("JSON of strings");
            // Their history keeps the update date that changed them.
            hold_mark!(self.db, tx, account, contacts.clone());
            let gone: Vec<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(delete.as_str()))
                .bind(account).bind(&contacts).fetch_all(&mut *tx).await?;
            let mut delta = CountDelta::default();
            for row in &gone {
                delta += CountDelta::removed(row.state());
            }
            if !gone.is_empty() {
                apply_delta!(tx, account, delta, now);
            }
            let erased = serde_json::to_string(
                &items.iter().filter(|d| d.erase).map(|d| d.contact_id.as_str()).collect::<Vec<_>>(),
            ).expect("JSON of strings");
            if items.iter().any(|d| d.erase) {
                // GDPR erasure: nothing about the contact is kept, not even its history.
                sqlx::query(sqlx::AssertSqlSafe(erase.as_str())).bind(account).bind(&erased).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
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
            "SELECT {STATUS_COLUMNS} FROM contact_status WHERE account_id = $1 AND contact_id IN ($2, $3){lock}"
        );
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            if !tx.receive(event_id, now).await? {
                return Ok(false);
            }
            let at = stamp_after(micros(now), hold_mark!(self.db, tx, account, serde_json::json!([primary, secondary]).to_string()));
            let rows: Vec<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
                .bind(account).bind(primary).bind(secondary).fetch_all(&mut *tx).await?;
            let find = |id: &str| rows.iter().find(|r| r.contact_id == id).cloned();
            if let (Some(p), Some(s)) = (find(primary), find(secondary)) {
                let (from, to) = (p.state(), rules::merged(p.state(), s.state()));
                let mut delta = CountDelta::removed(s.state());
                if to != from {
                    sqlx::query(
                        "UPDATE contact_status SET marketing = $1, pending = $2, source_type = 'MERGE', source_id = $3, updated_at = $4 \
                         WHERE account_id = $5 AND contact_id = $6",
                    )
                    .bind(to.counts()).bind(to.until_next_update).bind(secondary).bind(at).bind(account).bind(primary)
                    .execute(&mut *tx).await?;
                    let actor = Actor { source_type: "MERGE".into(), source_id: secondary.into(), user_id: String::new(), request_id: String::new() };
                    audit!(tx, account, primary, from, to, &actor, now, now);
                    delta += CountDelta::between(from, to);
                }
                sqlx::query("DELETE FROM contact_status WHERE account_id = $1 AND contact_id = $2")
                    .bind(account).bind(secondary).execute(&mut *tx).await?;
                // The secondary's history follows it into the primary's trail.
                sqlx::query("UPDATE status_changes SET contact_id = $3 WHERE account_id = $1 AND contact_id = $2")
                    .bind(account).bind(secondary).bind(primary).execute(&mut *tx).await?;
                if !delta.is_zero() {
                    apply_delta!(tx, account, delta, now);
                }
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// A contact's status and audit trail, for a GDPR export.
    pub async fn export(&self, account: &str, contact: &str) -> Result<serde_json::Value, sqlx::Error> {
        let status = self.statuses(account, &[contact.to_owned()]).await?.pop();
        let trail: Vec<(String, String, bool, String, String, i64, i64)> = with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT from_status, to_status, pending, source_type, source_id, requested_at, effective_at FROM status_trail \
             WHERE account_id = $1 AND contact_id = $2 ORDER BY requested_at, id",
        ).bind(account).bind(contact).fetch_all(pool).await?);
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
}

/// Workflow runs that failed and are retried.
struct Failing(Db);

impl contactier_runtime::work::FailingWork for Failing {
    fn failing(
        &self,
        limit: i64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<contactier_runtime::work::FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            let q = "SELECT 'marketing-status-workflows' AS worker, account_id, id AS item, attempts, last_error, \
                     next_attempt_at FROM workflow_runs WHERE state = 'retrying' ORDER BY account_id, id LIMIT $1";
            Ok(with_pool!(&self.0, pool => sqlx::query_as(q).bind(limit).fetch_all(pool).await?))
        })
    }
}

impl Store {
    /// Where operators find marketing-status's failing work.
    pub fn failing_work(&self) -> std::sync::Arc<dyn contactier_runtime::work::FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}
