//! Update dates. Applying one is a single transaction: a mark naming the pending contacts it
//! covers, and the new counts. The covered contacts read as non-marketing at once through the
//! views `contact_status_now` and `status_trail`; their rows and audit entries are rewritten
//! afterwards, a chunk at a time ([`Store::rewrite`]), into exactly what the views showed.
//! Writers of a covered contact rewrite it first ([`hold_mark`]).

use super::{Counts, Store, apply_delta};
use crate::rules::CountDelta;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::{Db, placeholders};
use contactier_runtime::sql::{Sql, Tx};
use futures::StreamExt;
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

/// Contacts rewritten per transaction.
pub const UPDATE_CHUNK: i64 = 10_000;

/// PostgreSQL advisory lock class of an account's mark: shared by status writers, exclusive
/// while a date is applied, so the count taken under it and the rows writers change agree.
pub const MARK_LOCK: i32 = 7301;

/// How long a rewrite chunk waits for a row a writer holds (PostgreSQL).
const LOCK_WAIT: &str = "SET LOCAL lock_timeout = '200ms'";
/// PostgreSQL's code for a lock wait that ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The contacts a cutoff covers, as a FROM clause: `$1` the account, `$2` the cutoff.
const PENDING_UP_TO: &str = "FROM contact_status WHERE account_id = $1 AND pending AND updated_at <= $2";

/// Rows `s` covered by their account's mark `m`; `$1` is the account.
const COVERED: &str =
    "m.account_id = s.account_id AND s.account_id = $1 AND s.pending AND s.updated_at <= m.cutoff";

const REWRITE: &str = "UPDATE contact_status AS s SET marketing = FALSE, pending = FALSE, \
     source_type = 'SYSTEM', source_id = m.update_date, updated_at = m.applied_at \
     FROM update_marks AS m WHERE";

const AUDIT: &str = "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, \
     pending, source_type, source_id, user_id, requested_at, effective_at, request_id) \
     SELECT account_id, audit_prefix || contact_id, contact_id, 'marketing', 'non_marketing', FALSE, \
     'SYSTEM', update_date, '', applied_at, effective_at, ''";

const COVERED_COLUMNS: &str =
    "s.account_id, s.contact_id, m.audit_prefix, m.update_date, m.applied_at, m.effective_at";

/// The statements that rewrite the covered rows among those matching `which` (an SQL
/// condition on `s`, with parameters from `$2`) and write their audit entries; the last one's
/// row count is how many were rewritten. The entries are what `status_trail` showed for them.
/// With `lock_first` (PostgreSQL), every row matching `which` is locked first, in key order, as
/// status writers lock theirs, so a writer holds all its rows before it rewrites any.
pub(super) fn rewrite_statements(db: &Db, which: &str, lock_first: bool) -> Vec<String> {
    match db {
        // One statement: only rows the update changed are audited, so a writer racing the
        // rewrite of the same contact cannot get it audited twice.
        Db::Postgres(_) if lock_first => vec![format!(
            "WITH locked AS (SELECT s.contact_id FROM contact_status AS s \
             WHERE s.account_id = $1 AND {which} ORDER BY s.contact_id FOR UPDATE), \
             changed AS ({REWRITE} {COVERED} AND s.contact_id IN (SELECT contact_id FROM locked) \
             RETURNING {COVERED_COLUMNS}) {AUDIT} FROM changed"
        )],
        Db::Postgres(_) => vec![format!(
            "WITH changed AS ({REWRITE} {COVERED} AND {which} RETURNING {COVERED_COLUMNS}) \
             {AUDIT} FROM changed"
        )],
        // SQLite: write transactions take turns, so nothing races between the two.
        Db::Sqlite(_) => vec![
            format!(
                "{AUDIT} FROM (SELECT {COVERED_COLUMNS} FROM contact_status AS s, update_marks AS m \
                 WHERE {COVERED} AND {which})"
            ),
            format!("{REWRITE} {COVERED} AND {which}"),
        ],
    }
}

/// Runs [`rewrite_statements`] in `tx` with the account and the condition's parameters;
/// answers how many contacts were rewritten.
async fn rewrite_rows(
    tx: &mut impl Tx,
    statements: &[String],
    account: &str,
    params: &[&str],
) -> Result<i64, sqlx::Error> {
    let mut n = 0;
    for s in statements {
        let q = Sql::new(AssertSqlSafe(s.as_str())).bind(account).bind_all(params.iter().copied());
        n = tx.execute(q).await?;
    }
    Ok(n as i64)
}

/// In a status writer's transaction: holds the account's mark (PostgreSQL: shared lock) and
/// rewrites the named contacts (a JSON array) it covers, so the writer reads and changes
/// stored rows as they are in effect. Answers the mark's cutoff: the writer's times must come
/// after it, or a contact it sets pending would read as covered without being counted.
pub(super) async fn hold_mark(
    db: &Db,
    tx: &mut impl Tx,
    account: &str,
    ids: &str,
) -> Result<Option<i64>, sqlx::Error> {
    if let Db::Postgres(_) = db {
        let lock = "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))";
        tx.execute(Sql::new(lock).bind(MARK_LOCK).bind(account)).await?;
    }
    let cutoff: Option<i64> = tx.scalar_optional(Sql::new(MARK_CUTOFF).bind(account)).await?;
    if cutoff.is_some() {
        let statements = rewrite_statements(db, &db.json_in("s.contact_id", 2), true);
        rewrite_rows(tx, &statements, account, &[ids]).await?;
    }
    Ok(cutoff)
}

const MARK_CUTOFF: &str = "SELECT cutoff FROM update_marks WHERE account_id = $1";

const INSERT_MARK: &str = "INSERT INTO update_marks (account_id, update_date, effective_at, applied_at, \
     cutoff, audit_prefix) VALUES ($1, $2, $3, $4, $5, $6)";

/// The time a writer stamps: its own, or just after the mark's cutoff if that is later.
pub fn stamp_after(at: i64, cutoff: Option<i64>) -> i64 {
    cutoff.map_or(at, |c| at.max(c + 1))
}

/// The contacts a date covers: pending, and set so at or before this instant. A contact set
/// pending after the processing instant waits for the next date; so does one set pending
/// after the date was applied (when applied before its effective instant).
pub fn cutoff(effective_at: i64, applied_at: i64) -> i64 {
    effective_at.min(applied_at)
}

enum Marked {
    Applied(AppliedDate),
    AlreadyApplied(AppliedDate),
    /// An earlier date's contacts are not all rewritten yet.
    EarlierPending,
}

/// What applying a date answers: the first time, and the same again every time after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedDate {
    /// Contacts it made non-marketing.
    pub applied: i64,
    /// Applied before this call: nothing changed.
    pub already_applied: bool,
    /// The account's count just after it was applied; None for a date applied by a release
    /// that did not keep it.
    pub counts: Option<Counts>,
}

#[cfg(test)]
impl AppliedDate {
    /// The contacts this call made non-marketing, None if it was applied before.
    pub fn newly(&self) -> Option<i64> {
        Some(self.applied).filter(|_| !self.already_applied)
    }
}

/// An update date to apply: the account's, effective at its processing instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateToApply {
    pub account: String,
    pub date: NaiveDate,
    pub effective_at: DateTime<Utc>,
}

/// The marks of accounts' dates inside `tx`, accounts each named once, `order` sorting them; a
/// date writes nothing unless it answers Applied. A statement for the batch where one each
/// would do the same (locks, applied dates, earlier marks, pending counts, the applied
/// record), one each only for accounts with contacts to mark or an earlier mark.
async fn mark_set(
    tx: &mut impl Tx,
    db: &Db,
    dates: &[DateToApply],
    order: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<(usize, Marked)>, sqlx::Error> {
    let at = micros(now);
    let days: Vec<String> = dates.iter().map(|d| d.date.format("%Y-%m-%d").to_string()).collect();
    let accounts: Vec<&str> = order.iter().map(|&i| dates[i].account.as_str()).collect();
    let named = serde_json::to_string(&accounts).expect("JSON of strings");
    if let Db::Postgres(_) = db {
        // In the order the sort gave, bytewise as Rust's.
        let q = "SELECT count(pg_advisory_xact_lock($1, hashtext(a))) FROM \
                 (SELECT a FROM jsonb_array_elements_text($2::jsonb) AS a ORDER BY a COLLATE \"C\") AS x";
        tx.fetch_all::<(i64,)>(Sql::new(q).bind(MARK_LOCK).bind(&named)).await?;
    }
    // Looked up by key, each account and each of the batch's days (a join of the JSON pairs was
    // planned as a hash join over the whole table while it was young, which an instant of
    // thousands of accounts reads once a batch); the pairs asked for are kept.
    let asked_days: Vec<&str> = order.iter().map(|&i| days[i].as_str()).collect();
    let asked_days = serde_json::to_string(&asked_days).expect("JSON of strings");
    let q = format!(
        "SELECT account_id, update_date, applied, marketing, pending, non_marketing, version, counted_at \
         FROM applied_update_dates WHERE {} AND {}",
        db.json_in("account_id", 1),
        db.json_in("update_date", 2)
    );
    let day_of: HashMap<&str, &str> =
        order.iter().map(|&i| (dates[i].account.as_str(), days[i].as_str())).collect();
    let applied: HashMap<String, AppliedDate> = tx
        .fetch_all::<AppliedRow>(Sql::new(AssertSqlSafe(q)).bind(&named).bind(asked_days))
        .await?
        .into_iter()
        .filter(|r| day_of.get(r.0.as_str()) == Some(&r.1.as_str()))
        .map(kept_answer)
        .collect();
    let q = format!("SELECT account_id, cutoff FROM update_marks WHERE {}", db.json_in("account_id", 1));
    let earlier: HashMap<String, i64> =
        tx.fetch_all::<(String, i64)>(Sql::new(AssertSqlSafe(q)).bind(&named)).await?.into_iter().collect();

    let mut marked: Vec<(usize, Marked)> = Vec::with_capacity(order.len());
    let mut to_apply: Vec<usize> = Vec::with_capacity(order.len());
    for &i in order {
        let account = dates[i].account.as_str();
        // applied = -1: begun and not finished (kept by earlier versions, chunk by chunk).
        if let Some(a) = applied.get(account).filter(|a| a.applied >= 0) {
            marked.push((i, Marked::AlreadyApplied(*a)));
            continue;
        }
        if let Some(&cutoff) = earlier.get(account) {
            let left = format!("SELECT EXISTS (SELECT 1 {PENDING_UP_TO})");
            let left: bool = tx.scalar(Sql::new(AssertSqlSafe(left)).bind(account).bind(cutoff)).await?;
            if left {
                marked.push((i, Marked::EarlierPending));
                continue;
            }
            tx.execute(Sql::new("DELETE FROM update_marks WHERE account_id = $1").bind(account)).await?;
        }
        to_apply.push(i);
    }
    if to_apply.is_empty() {
        return Ok(marked);
    }
    let cutoffs: Vec<i64> = dates.iter().map(|d| cutoff(micros(d.effective_at), at)).collect();
    let asked: Vec<serde_json::Value> = to_apply
        .iter()
        .map(|&i| serde_json::json!({ "account_id": dates[i].account, "cutoff": cutoffs[i] }))
        .collect();
    // Each account's own count, by its own index.
    let q = format!(
        "SELECT x.account_id, (SELECT count(*) FROM contact_status AS s WHERE s.account_id = x.account_id \
         AND s.pending AND s.updated_at <= x.cutoff) FROM {}",
        db.json_records(1, &[("account_id", "text"), ("cutoff", "bigint")])
    );
    let asked = serde_json::Value::Array(asked).to_string();
    let pending: HashMap<String, i64> =
        tx.fetch_all::<(String, i64)>(Sql::new(AssertSqlSafe(q)).bind(asked)).await?.into_iter().collect();
    for &i in &to_apply {
        let d = &dates[i];
        let n = pending.get(&d.account).copied().unwrap_or(0);
        if n > 0 {
            let mark = Sql::new(INSERT_MARK)
                .bind(&d.account)
                .bind(&days[i])
                .bind(micros(d.effective_at))
                .bind(at)
                .bind(cutoffs[i])
                .bind(format!("{}:", new_id()));
            tx.execute(mark).await?;
            let delta = CountDelta { marketing: -n, pending: -n, non_marketing: n };
            apply_delta(tx, &d.account, delta, now).await?;
        }
    }
    // The counts the dates leave, kept with them as their answer.
    let named: Vec<&str> = to_apply.iter().map(|&i| dates[i].account.as_str()).collect();
    let q = format!(
        "SELECT account_id, marketing, pending, non_marketing, version, updated_at FROM account_counts WHERE {}",
        db.json_in("account_id", 1)
    );
    let named = serde_json::to_string(&named).expect("JSON of strings");
    let counts: HashMap<String, Counts> = tx
        .fetch_all::<(String, i64, i64, i64, i64, i64)>(Sql::new(AssertSqlSafe(q)).bind(named))
        .await?
        .into_iter()
        .map(|(a, marketing, pending, non_marketing, version, updated_at)| {
            (a, Counts { marketing, pending, non_marketing, version, updated_at })
        })
        .collect();
    let mut recorded: HashMap<String, i64> = HashMap::new();
    for chunk in to_apply.chunks(db.rows_per_statement(10)) {
        let q = format!(
            "INSERT INTO applied_update_dates (account_id, update_date, applied, applied_at, changed, \
             marketing, pending, non_marketing, version, counted_at) \
             VALUES {} ON CONFLICT (account_id, update_date) DO UPDATE \
             SET applied = applied_update_dates.changed + excluded.changed, \
             changed = applied_update_dates.changed + excluded.changed, marketing = excluded.marketing, \
             pending = excluded.pending, non_marketing = excluded.non_marketing, version = excluded.version, \
             counted_at = excluded.counted_at RETURNING account_id, applied",
            placeholders(chunk.len(), 10)
        );
        let q = chunk.iter().fold(Sql::new(AssertSqlSafe(q)), |q, &i| {
            let n = pending.get(&dates[i].account).copied().unwrap_or(0);
            let c = counts.get(&dates[i].account).copied().unwrap_or_default();
            q.bind(&dates[i].account)
                .bind(&days[i])
                .bind(n)
                .bind(at)
                .bind(n)
                .bind(c.marketing)
                .bind(c.pending)
                .bind(c.non_marketing)
                .bind(c.version)
                .bind(c.updated_at)
        });
        recorded.extend(tx.fetch_all::<(String, i64)>(q).await?);
    }
    for i in to_apply {
        let applied = recorded.get(&dates[i].account).copied().unwrap_or(0);
        let counts = Some(counts.get(&dates[i].account).copied().unwrap_or_default());
        marked.push((i, Marked::Applied(AppliedDate { applied, already_applied: false, counts })));
    }
    Ok(marked)
}

/// An applied date as stored: (account, date, applied, marketing, pending, non-marketing,
/// version, counted at); the counts NULL when kept by a release that did not keep them.
type AppliedRow = (String, String, i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// The answer a date applied before gives again.
fn kept_answer((account, _, applied, m, p, n, v, at): AppliedRow) -> (String, AppliedDate) {
    let counts = match (m, p, n, v, at) {
        (Some(marketing), Some(pending), Some(non_marketing), Some(version), Some(updated_at)) => {
            Some(Counts { marketing, pending, non_marketing, version, updated_at })
        }
        _ => None,
    };
    (account, AppliedDate { applied, already_applied: true, counts })
}

impl Store {
    /// Every contact pending at `effective_at` becomes non-marketing, once per (account, update
    /// date): in effect when this returns, rewritten in the background ([`Store::rewrite`]).
    /// Answers how many changed and the count it left, the same when asked again.
    pub async fn apply_update_date(
        &self,
        account: &str,
        date: NaiveDate,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<AppliedDate, sqlx::Error> {
        let d = DateToApply { account: account.to_owned(), date, effective_at };
        loop {
            match self.mark(&d, now).await? {
                Marked::Applied(a) | Marked::AlreadyApplied(a) => return Ok(a),
                // Its contacts would be counted again under this date's mark.
                Marked::EarlierPending => {
                    self.rewrite(account).await?;
                }
            }
        }
    }

    /// [`Store::apply_update_date`] for many accounts: the marks of all of them in one
    /// transaction (a commit each made every account wait for its own flush of the log), each
    /// on its own where that is not possible (an earlier date still to rewrite, a batch that
    /// failed). Answers in the order given.
    pub async fn apply_update_dates(
        &self,
        dates: &[DateToApply],
        now: DateTime<Utc>,
    ) -> Vec<Result<AppliedDate, sqlx::Error>> {
        let mut out: Vec<Option<Result<AppliedDate, sqlx::Error>>> = dates.iter().map(|_| None).collect();
        if let Ok(marked) = self.mark_all(dates, now).await {
            for (i, m) in marked {
                out[i] = match m {
                    Marked::Applied(a) | Marked::AlreadyApplied(a) => Some(Ok(a)),
                    Marked::EarlierPending => None,
                };
            }
        }
        let mut answers = Vec::with_capacity(dates.len());
        for (d, done) in dates.iter().zip(out) {
            answers.push(match done {
                Some(r) => r,
                None => self.apply_update_date(&d.account, d.date, d.effective_at, now).await,
            });
        }
        answers
    }

    /// The marks of `dates` in one transaction, accounts in order so that two batches never
    /// wait for each other's locks in a circle. An account with an earlier date still to
    /// rewrite is left out unchanged (answered EarlierPending).
    async fn mark_all(
        &self,
        dates: &[DateToApply],
        now: DateTime<Utc>,
    ) -> Result<Vec<(usize, Marked)>, sqlx::Error> {
        let mut order: Vec<usize> = (0..dates.len()).collect();
        order.sort_by(|a, b| dates[*a].account.cmp(&dates[*b].account));
        let twice = order.windows(2).any(|w| dates[w[0]].account == dates[w[1]].account);
        let mut tx = self.db.begin_write().await?;
        let marked = if twice {
            // An account's second date sees what its first did, as one call each would.
            let mut marked = Vec::with_capacity(dates.len());
            for i in order {
                let one = mark_set(&mut tx, &self.db, std::slice::from_ref(&dates[i]), &[0], now).await?;
                marked.extend(one.into_iter().map(|(_, m)| (i, m)));
            }
            marked
        } else {
            mark_set(&mut tx, &self.db, dates, &order, now).await?
        };
        tx.commit().await?;
        Ok(marked)
    }

    async fn mark(&self, d: &DateToApply, now: DateTime<Utc>) -> Result<Marked, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let marked = mark_set(&mut tx, &self.db, std::slice::from_ref(d), &[0], now).await?;
        let (_, marked) = marked.into_iter().next().expect("one date, one mark");
        if let Marked::Applied(_) = marked {
            tx.commit().await?;
        }
        Ok(marked)
    }

    /// Accounts with contacts still to be rewritten.
    pub async fn marked_accounts(&self) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> =
            self.db.fetch_all(Sql::new(
                "/* across accounts: dates still rewriting contacts */ SELECT account_id FROM update_marks ORDER BY account_id",
            )).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Rewrites the contacts the account's mark covers, a chunk at a time, then drops the mark.
    /// Safe beside writers and another rewrite of the same account (a rewritten row is no longer
    /// covered). Answers how many this call rewrote.
    pub async fn rewrite(&self, account: &str) -> Result<i64, sqlx::Error> {
        // Statistics of a table that grew fast may still say it is small, and the planner
        // would then sort every pending contact for each chunk instead of walking the key. Only
        // a mark of more than one chunk is worth it: ANALYZE reads a sample of the whole table,
        // and an instant shared by many accounts would pay for it once per account.
        let mut analyzed = false;
        // The chunks share no rows: on PostgreSQL two run side by side, as one connection
        // keeps one core busy. SQLite writes one transaction at a time.
        let side_by_side = match self.db {
            Db::Postgres(_) => 2,
            Db::Sqlite(_) => 1,
        };
        // Not locked first: locking every row before rewriting it costs half as much again. A
        // chunk's rows are then locked in the order the plan visits them, which may not be key
        // order, so a chunk waits at most LOCK_WAIT for a writer's row and is tried again on the
        // next pass: a writer and a chunk never wait for each other in a circle.
        let statements = rewrite_statements(&self.db, "s.contact_id > $2 AND s.contact_id <= $3", false);
        let mut total = 0;
        loop {
            let q = "SELECT cutoff, audit_prefix FROM update_marks WHERE account_id = $1";
            let mark: Option<(i64, String)> = self.db.fetch_optional(Sql::new(q).bind(account)).await?;
            let Some((cutoff, prefix)) = mark else { return Ok(total) };
            let mut ends = self.chunk_ends(account, cutoff).await?;
            if ends.len() > 1 && !analyzed {
                self.db.execute(Sql::new("ANALYZE contact_status")).await?;
                analyzed = true;
                ends = self.chunk_ends(account, cutoff).await?;
            }
            let starts = std::iter::once(String::new()).chain(ends.iter().cloned());
            let mut chunks = futures::stream::iter(starts.zip(ends.iter().cloned()))
                .map(|(after, end)| {
                    let statements = &statements;
                    async move {
                        let chunk = async {
                            let mut tx = self.db.begin_write().await?;
                            if let Db::Postgres(_) = self.db {
                                tx.execute(Sql::new(LOCK_WAIT)).await?;
                            }
                            let n = rewrite_rows(&mut tx, statements, account, &[&after, &end]).await?;
                            tx.commit().await?;
                            Ok::<_, sqlx::Error>(n)
                        };
                        match chunk.await {
                            Err(sqlx::Error::Database(e))
                                if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
                            {
                                Ok(0)
                            }
                            other => other,
                        }
                    }
                })
                .buffer_unordered(side_by_side);
            let mut pass = 0;
            while let Some(n) = chunks.next().await {
                pass += n?;
            }
            total += pass;
            // Dropped once nothing it covers is left; a writer may still be rewriting a
            // contact, and then the next pass finds it.
            let drop = format!(
                "DELETE FROM update_marks WHERE account_id = $1 AND audit_prefix = $3 \
                 AND NOT EXISTS (SELECT 1 {PENDING_UP_TO})"
            );
            let drop = Sql::new(AssertSqlSafe(drop)).bind(account).bind(cutoff).bind(&prefix);
            let dropped = self.db.execute(drop).await?;
            if dropped == 1 {
                tracing::info!(account, rewritten = total, "update date rewritten");
            } else if pass == 0 {
                // What is left is being rewritten by a writer right now.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// The last key of every [`UPDATE_CHUNK`] contacts pending at or before `cutoff`, in key
    /// order, and the last pending key: one walk of the pending index.
    async fn chunk_ends(&self, account: &str, cutoff: i64) -> Result<Vec<String>, sqlx::Error> {
        let every = format!(
            "SELECT contact_id FROM (SELECT contact_id, row_number() OVER (ORDER BY contact_id) AS n \
             {PENDING_UP_TO}) p WHERE n % {UPDATE_CHUNK} = 0 ORDER BY contact_id"
        );
        let last = format!("SELECT MAX(contact_id) {PENDING_UP_TO}");
        let ends: Vec<(String,)> =
            self.db.fetch_all(Sql::new(AssertSqlSafe(every)).bind(account).bind(cutoff)).await?;
        let mut ends: Vec<String> = ends.into_iter().map(|r| r.0).collect();
        let last: Option<String> =
            self.db.scalar(Sql::new(AssertSqlSafe(last)).bind(account).bind(cutoff)).await?;
        if let Some(last) = last.filter(|l| ends.last() != Some(l)) {
            ends.push(last);
        }
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{State, Status};
    use crate::store::{Actor, ChangeRow, Created, Part, StatusRow};
    use chrono::TimeZone;
    use contactier_runtime::db::Backend;
    use contactier_runtime::testing::TestDb;

    #[test]
    fn a_date_covers_contacts_set_pending_up_to_its_instant_or_its_application() {
        // Applied after its processing instant: what was pending at the instant.
        assert_eq!(cutoff(1_000, 5_000), 1_000);
        // Applied early: only what was pending when applied; later requests wait.
        assert_eq!(cutoff(9_000, 5_000), 5_000);
    }

    #[test]
    fn writers_stamp_after_the_cutoff() {
        assert_eq!(stamp_after(100, None), 100);
        assert_eq!(stamp_after(100, Some(50)), 100);
        // A clock behind the date's instant would make a new pending request read as covered.
        assert_eq!(stamp_after(100, Some(100)), 101);
        assert_eq!(stamp_after(100, Some(400)), 401);
    }

    const ACCOUNT: &str = "acct-u";

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, day, hour, 0, 0).unwrap()
    }

    fn user() -> Actor {
        Actor {
            source_type: "USER".into(),
            source_id: "u1".into(),
            user_id: "u1".into(),
            request_id: String::new(),
        }
    }

    async fn store(backend: contactier_runtime::db::Backend) -> (Store, TestDb) {
        let t = TestDb::new(backend, "marketing-status").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        (Store::new(t.db.clone()), t)
    }

    /// `n` marketing contacts c0.. created on 1 May.
    async fn contacts(s: &Store, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let items = ids
            .iter()
            .map(|id| Created {
                event_id: format!("ev-{id}"),
                contact_id: id.clone(),
                initial: State { status: Status::Marketing, until_next_update: false },
                actor: user(),
            })
            .collect::<Vec<_>>();
        s.contacts_created(ACCOUNT, &items, &[], at(1, 8)).await.unwrap();
        ids
    }

    async fn set(s: &Store, ids: &[String], status: Status, now: DateTime<Utc>) {
        s.set_status(ACCOUNT, ids, status, &user(), now, Part::WHOLE).await.unwrap();
    }

    async fn trail(s: &Store) -> Vec<ChangeRow> {
        s.changes(ACCOUNT, None, (i64::MAX, ""), 1_000).await.unwrap()
    }

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 6, day).unwrap()
    }

    async fn an_applied_date_is_in_effect_at_once_and_the_rewrite_stores_what_it_showed(backend: Backend) {
        let (s, _t) = store(backend).await;
        let ids = contacts(&s, 5).await;
        set(&s, &ids[..4], Status::NonMarketing, at(15, 9)).await;
        let applied = s
            .apply_update_date(
                ACCOUNT,
                date(1),
                Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 5).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(applied.newly(), Some(4), "{backend:?}");
        let c = s.counts(ACCOUNT).await.unwrap();
        assert_eq!((c.marketing, c.pending, c.non_marketing), (1, 0, 4), "{backend:?}");
        let now: Vec<StatusRow> = s.statuses(ACCOUNT, &ids).await.unwrap();
        for r in &now[..4] {
            assert!(!r.marketing && !r.pending, "{backend:?}: {r:?}");
            assert_eq!(
                (r.source_type.as_str(), r.source_id.as_str()),
                ("SYSTEM", "2026-06-01"),
                "{backend:?}"
            );
        }
        assert!(now[4].marketing && !now[4].pending, "{backend:?}");
        let export = s.export(ACCOUNT, "c0").await.unwrap();
        let steps: Vec<(&str, &str, bool)> = export["status_changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["source_type"].as_str().unwrap(),
                    c["to"].as_str().unwrap(),
                    c["pending"].as_bool().unwrap(),
                )
            })
            .collect();
        let expected =
            [("USER", "marketing", false), ("USER", "marketing", true), ("SYSTEM", "non_marketing", false)];
        assert_eq!(steps, expected, "{backend:?}: created, asked non-marketing, then the update date");
        // A writer of a covered contact sees it non-marketing; its history keeps the date.
        set(&s, &ids[1..2], Status::Marketing, Utc.with_ymd_and_hms(2026, 6, 2, 9, 0, 0).unwrap()).await;
        let c1: Vec<(String, String)> = s
            .changes(ACCOUNT, Some("c1"), (i64::MAX, ""), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.source_type, c.to_status))
            .collect();
        assert_eq!(
            c1[..2],
            [("USER".into(), "marketing".into()), ("SYSTEM".into(), "non_marketing".into())],
            "{backend:?}"
        );
        let gone = crate::store::Deleted { event_id: "ev-del".into(), contact_id: "c2".into(), erase: false };
        s.contacts_deleted(ACCOUNT, &[gone], &[], Utc.with_ymd_and_hms(2026, 6, 2, 10, 0, 0).unwrap())
            .await
            .unwrap();
        let c = s.counts(ACCOUNT).await.unwrap();
        assert_eq!((c.marketing, c.pending, c.non_marketing), (2, 0, 2), "{backend:?}");
        // Asked again: nothing changes, and the answer is the first one, counts and all.
        let again = s.apply_update_date(ACCOUNT, date(1), at(1, 4), at(1, 4)).await.unwrap();
        assert_eq!(again.newly(), None, "{backend:?}");
        assert_eq!((again.applied, again.counts), (applied.applied, applied.counts), "{backend:?}");

        let (before, shown) = (trail(&s).await, s.statuses(ACCOUNT, &ids).await.unwrap());
        assert_eq!(before.iter().filter(|c| c.source_type == "SYSTEM").count(), 4, "{backend:?}: {before:?}");
        assert_eq!(s.marked_accounts().await.unwrap(), [ACCOUNT], "{backend:?}");
        assert_eq!(s.rewrite(ACCOUNT).await.unwrap(), 2, "{backend:?}: c0 and c3 were left");
        assert!(s.marked_accounts().await.unwrap().is_empty(), "{backend:?}");
        assert_eq!(trail(&s).await, before, "{backend:?}");
        assert_eq!(s.statuses(ACCOUNT, &ids).await.unwrap(), shown, "{backend:?}");
        assert_eq!(s.counts(ACCOUNT).await.unwrap(), c, "{backend:?}");
        assert_eq!(s.rewrite(ACCOUNT).await.unwrap(), 0, "{backend:?}");
    }

    async fn a_batch_applies_each_date_once_and_rewrites_an_earlier_one_first(backend: Backend) {
        let (s, _t) = store(backend).await;
        let ids = contacts(&s, 3).await;
        set(&s, &ids[..2], Status::NonMarketing, at(15, 9)).await;
        let june = Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap();
        let july = Utc.with_ymd_and_hms(2026, 7, 1, 4, 0, 0).unwrap();
        let d = |account: &str, at: DateTime<Utc>| DateToApply {
            account: account.into(),
            date: at.date_naive(),
            effective_at: at,
        };
        let first = s.apply_update_dates(&[d("acct-z", june), d(ACCOUNT, june)], june).await;
        let first: Vec<_> = first.into_iter().map(|a| a.unwrap().newly()).collect();
        assert_eq!(first, [Some(0), Some(2)], "{backend:?}: in the order asked");
        set(&s, &ids[2..], Status::NonMarketing, Utc.with_ymd_and_hms(2026, 6, 10, 9, 0, 0).unwrap()).await;
        // June's contacts are not rewritten yet: July's date rewrites them first, on its own;
        // named twice, it is applied once.
        let batch = [d(ACCOUNT, july), d("acct-z", july), d(ACCOUNT, july), d(ACCOUNT, june)];
        let second: Vec<_> =
            s.apply_update_dates(&batch, july).await.into_iter().map(|a| a.unwrap().newly()).collect();
        assert_eq!(second, [Some(1), Some(0), None, None], "{backend:?}");
        let c = s.counts(ACCOUNT).await.unwrap();
        assert_eq!((c.marketing, c.pending, c.non_marketing), (0, 0, 3), "{backend:?}");
        // Each account once: acct-z's July is applied already, and ACCOUNT's July contact is
        // still to rewrite, so August rewrites it first, on its own, then counts nothing.
        let aug = Utc.with_ymd_and_hms(2026, 8, 1, 4, 0, 0).unwrap();
        let third: Vec<_> = s
            .apply_update_dates(&[d("acct-z", july), d(ACCOUNT, aug)], aug)
            .await
            .into_iter()
            .map(|a| a.unwrap().newly())
            .collect();
        assert_eq!(third, [None, Some(0)], "{backend:?}");
        assert!(s.marked_accounts().await.unwrap().is_empty(), "{backend:?}: July's mark rewritten");
        assert_eq!(s.counts(ACCOUNT).await.unwrap(), c, "{backend:?}: nothing counted twice");
    }

    async fn a_later_date_waits_until_the_earlier_one_is_rewritten(backend: Backend) {
        let (s, _t) = store(backend).await;
        let ids = contacts(&s, 3).await;
        set(&s, &ids[..2], Status::NonMarketing, at(15, 9)).await;
        let first = s
            .apply_update_date(
                ACCOUNT,
                date(1),
                Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(first.newly(), Some(2), "{backend:?}");
        set(&s, &ids[2..], Status::NonMarketing, Utc.with_ymd_and_hms(2026, 6, 10, 9, 0, 0).unwrap()).await;
        let july = Utc.with_ymd_and_hms(2026, 7, 1, 4, 0, 0).unwrap();
        let second = s
            .apply_update_date(ACCOUNT, NaiveDate::from_ymd_opt(2026, 7, 1).unwrap(), july, july)
            .await
            .unwrap();
        assert_eq!(second.newly(), Some(1), "{backend:?}: only the contact set pending since");
        let c = s.counts(ACCOUNT).await.unwrap();
        assert_eq!((c.marketing, c.pending, c.non_marketing), (0, 0, 3), "{backend:?}");
        s.rewrite(ACCOUNT).await.unwrap();
        let by_date: Vec<String> = trail(&s)
            .await
            .into_iter()
            .filter(|c| c.source_type == "SYSTEM")
            .map(|c| format!("{} {}", c.contact_id, c.source_id))
            .collect();
        assert_eq!(by_date, ["c2 2026-07-01", "c1 2026-06-01", "c0 2026-06-01"], "{backend:?}");
    }

    #[tokio::test]
    async fn a_rewrite_held_up_by_a_writer_tries_again_until_it_is_done() {
        let (s, t) = store(contactier_runtime::db::Backend::Postgres).await;
        let ids = contacts(&s, 3).await;
        set(&s, &ids, Status::NonMarketing, at(15, 9)).await;
        let june = Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap();
        assert_eq!(s.apply_update_date(ACCOUNT, date(1), june, june).await.unwrap().newly(), Some(3));
        let Db::Postgres(pool) = &t.db else { unreachable!() };
        // Another transaction holds one covered contact's row for longer than a chunk waits.
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM contact_status WHERE account_id = $1 AND contact_id = 'c1' FOR UPDATE")
            .bind(ACCOUNT)
            .execute(&mut *holder)
            .await
            .unwrap();
        let rewrite = tokio::spawn({
            let s = s.clone();
            async move { s.rewrite(ACCOUNT).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert!(!rewrite.is_finished(), "the rewrite waits for the held row");
        assert_eq!(s.marked_accounts().await.unwrap(), [ACCOUNT]);
        holder.commit().await.unwrap();
        assert_eq!(rewrite.await.unwrap().unwrap(), 3, "every covered contact rewritten, once");
        assert!(s.marked_accounts().await.unwrap().is_empty());
        assert_eq!(trail(&s).await.iter().filter(|c| c.source_type == "SYSTEM").count(), 3);
    }

    /// A page of the trail, the first or one deep in it, reads about a page of entries however
    /// long the account's trail is, with entries still coming from a date's mark beside them.
    async fn a_page_of_the_trail_reads_a_page_not_the_whole_trail(backend: Backend) {
        let (s, t) = store(backend).await;
        let ids = contacts(&s, 1_000).await;
        for day in 2..12 {
            set(&s, &ids, Status::NonMarketing, at(day, 9)).await;
            set(&s, &ids, Status::Marketing, at(day, 10)).await;
        }
        set(&s, &ids[..50], Status::NonMarketing, at(25, 9)).await;
        let date_at = Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap();
        s.apply_update_date(ACCOUNT, date(1), date_at, date_at).await.unwrap();
        run(&t, "ANALYZE").await;
        let all = s.changes(ACCOUNT, None, (i64::MAX, ""), 100_000).await.unwrap();
        assert_eq!(all.len(), 1_000 + 20_000 + 50 + 50, "{backend:?}");
        assert_eq!(all[0].source_type, "SYSTEM", "{backend:?}: the mark's entries are the newest");
        let deep = &all[all.len() / 2];
        for (which, before) in [("first", (i64::MAX, "")), ("deep", (deep.requested_at, deep.id.as_str()))] {
            let page = |how: &str| {
                let q = format!("{how} {}", crate::store::extras::changes_query(false));
                Sql::new(AssertSqlSafe(q)).bind(ACCOUNT).bind(before.0).bind(before.1).bind(100)
            };
            let got = s.changes(ACCOUNT, None, before, 100).await.unwrap();
            let from = all.iter().position(|c| (c.requested_at, c.id.as_str()) < before).unwrap();
            assert_eq!(got, all[from..from + 100], "{backend:?}: the {which} page");
            match &t.db {
                Db::Postgres(_) => {
                    let plan = postgres_plan(&t.db, page("EXPLAIN (ANALYZE, FORMAT JSON)")).await;
                    let read = rows_read(&plan, "status_changes");
                    assert!(read <= 2 * 100 + 50, "{backend:?}: the {which} page read {read} audit entries");
                }
                Db::Sqlite(_) => {
                    let plan = sqlite_plan(&t.db, page("EXPLAIN QUERY PLAN")).await;
                    // The kept entries are searched from the page's position in the index's
                    // order: no sort of their own, and no other read of the table.
                    let by_index = "SEARCH status_changes USING INDEX status_changes_by_time \
                                    (account_id=? AND (requested_at,id)<(?,?))";
                    let search = plan.iter().find(|s| s.2 == by_index);
                    let search = search.unwrap_or_else(|| panic!("{backend:?}: the {which} page: {plan:?}"));
                    let sorted = plan.iter().any(|s| s.1 == search.1 && s.2.contains("TEMP B-TREE"));
                    let tables = plan.iter().filter(|s| s.2.contains(" status_changes ")).count();
                    assert!(!sorted && tables == 1, "{backend:?}: the {which} page: {plan:?}");
                }
            }
        }
        // Once the date's contacts are rewritten, a page does not look for marked entries: the
        // pending index still holds an entry for each rewritten contact until a vacuum.
        assert_eq!(s.rewrite(ACCOUNT).await.unwrap(), 50, "{backend:?}");
        run(&t, "ANALYZE").await;
        let got = s.changes(ACCOUNT, None, (i64::MAX, ""), 100).await.unwrap();
        assert_eq!(got, all[..100], "{backend:?}: the same page, the entries now kept");
        if let Db::Postgres(_) = &t.db {
            let q = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", crate::store::extras::changes_query(false));
            let q = Sql::new(AssertSqlSafe(q)).bind(ACCOUNT).bind(i64::MAX).bind("").bind(100);
            let plan = postgres_plan(&t.db, q).await;
            assert_eq!(scans_run(&plan, "contact_status"), 0, "{backend:?}: {plan}");
        }
        // Nor is it compiled (JIT) however costly the planner thinks it: at four million
        // entries its estimate passed `jit_above_cost`, and compiling took 15-17 ms a page for a
        // read of 0.3 ms. Here every statement is made to pass it.
        if let Db::Postgres(pool) = &t.db {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL jit_above_cost = 0").execute(&mut *tx).await.unwrap();
            let q = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", crate::store::extras::changes_query(false));
            let plan: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(q))
                .bind(ACCOUNT)
                .bind(i64::MAX)
                .bind("")
                .bind(100_i32)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert!(plan[0].get("JIT").is_none(), "{backend:?}: the page was compiled: {plan}");
        }
    }

    /// PostgreSQL's account of running a statement (`EXPLAIN ANALYZE` in JSON): its top node.
    async fn postgres_plan(db: &Db, q: Sql) -> serde_json::Value {
        let plan: serde_json::Value = db.scalar(q).await.unwrap();
        plan[0]["Plan"].clone()
    }

    /// The rows of `table` a run read, kept or filtered out, by every node that scanned it.
    fn rows_read(node: &serde_json::Value, table: &str) -> i64 {
        let own = if node["Relation Name"].as_str() == Some(table) {
            node["Actual Rows"].as_i64().unwrap_or(0) * node["Actual Loops"].as_i64().unwrap_or(1)
                + node["Rows Removed by Filter"].as_i64().unwrap_or(0)
        } else {
            0
        };
        own + node["Plans"].as_array().map_or(0, |p| p.iter().map(|n| rows_read(n, table)).sum())
    }

    /// The times nodes scanning `table` ran.
    fn scans_run(node: &serde_json::Value, table: &str) -> i64 {
        let own = if node["Relation Name"].as_str() == Some(table) {
            node["Actual Loops"].as_i64().unwrap_or(0)
        } else {
            0
        };
        own + node["Plans"].as_array().map_or(0, |p| p.iter().map(|n| scans_run(n, table)).sum())
    }

    /// SQLite's plan of a statement (`EXPLAIN QUERY PLAN`): each step's id, parent and detail.
    async fn sqlite_plan(db: &Db, q: Sql) -> Vec<(i64, i64, String)> {
        let rows: Vec<(i64, i64, i64, String)> = db.fetch_all(q).await.unwrap();
        rows.into_iter().map(|r| (r.0, r.1, r.3)).collect()
    }

    /// A store whose schema stops at migration `version`, as an older release left it.
    async fn store_at(backend: contactier_runtime::db::Backend, version: i64) -> (Store, TestDb) {
        let t = TestDb::new(backend, "marketing-status").await;
        t.db.migrate_service(None).await.unwrap();
        let m = crate::SERVICE.migrations.unwrap();
        match &t.db {
            Db::Sqlite(pool) => m.sqlite.run_to(version, pool).await.unwrap(),
            Db::Postgres(pool) => m.postgres.run_to(version, pool).await.unwrap(),
        }
        // Today's writers hold bulk counts in a table of a later version and keep a date's
        // counts in columns of a later version, unrelated to the upgrade under test; they
        // stand in until the migrations that create them.
        run(&t, include_str!("../../migrations/sqlite/0009_count_holds.sql")).await;
        run(&t, include_str!("../../migrations/sqlite/0012_applied_counts.sql")).await;
        (Store::new(t.db.clone()), t)
    }

    async fn drop_stand_ins(t: &TestDb) {
        run(t, "DROP TABLE count_holds").await;
        for c in ["marketing", "pending", "non_marketing", "version", "counted_at"] {
            run(t, &format!("ALTER TABLE applied_update_dates DROP COLUMN {c}")).await;
        }
    }

    async fn run(t: &TestDb, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match &t.db {
            Db::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop).unwrap(),
            Db::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop).unwrap(),
        }
    }

    async fn upgrading_to_the_audit_key_keeps_the_trail_and_a_date_still_to_rewrite(backend: Backend) {
        let (s, t) = store_at(backend, 5).await;
        let ids = contacts(&s, 4).await;
        set(&s, &ids[..3], Status::NonMarketing, at(15, 9)).await;
        let (date_at, now) = (
            Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 5).unwrap(),
        );
        s.apply_update_date(ACCOUNT, date(1), date_at, now).await.unwrap();
        // The trail as that release read it: its view, newest first.
        let q = "SELECT id, contact_id, from_status, to_status, pending, source_type, source_id, user_id, \
                 requested_at, effective_at, request_id FROM status_trail WHERE account_id = $1 \
                 ORDER BY requested_at DESC, id DESC";
        let before: Vec<ChangeRow> = t.db.fetch_all(Sql::new(q).bind(ACCOUNT)).await.unwrap();
        assert_eq!(before.len(), 4 + 3 + 3, "{backend:?}: created, set pending, the date");

        drop_stand_ins(&t).await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        assert_eq!(trail(&s).await, before, "{backend:?}");
        assert_eq!(s.rewrite(ACCOUNT).await.unwrap(), 3, "{backend:?}");
        assert_eq!(trail(&s).await, before, "{backend:?}");
        // Writers go on as before: a change after the upgrade is audited once.
        set(&s, &ids[..1], Status::Marketing, at(20, 9)).await;
        assert_eq!(trail(&s).await.len(), before.len() + 1, "{backend:?}");
    }

    contactier_runtime::backend_tests!(
        an_applied_date_is_in_effect_at_once_and_the_rewrite_stores_what_it_showed,
        a_later_date_waits_until_the_earlier_one_is_rewritten,
        a_batch_applies_each_date_once_and_rewrites_an_earlier_one_first,
        upgrading_to_the_audit_key_keeps_the_trail_and_a_date_still_to_rewrite,
        a_page_of_the_trail_reads_a_page_not_the_whole_trail,
    );
}
