//! Lead scoring's storage: the account's rules and threshold, and working a contact's score
//! out again inside the transaction that changed what it depends on (its values, its events,
//! its consent), with the MQL promotion it brings. Contacts whose score changes by itself (an
//! event leaving a rule's window) or whose rules changed are due, and the scoring worker takes
//! them a batch at a time.

use super::history::{self, Entry, Origin};
use super::{Store, json};
use crate::error::{Error, Result};
use crate::scoring::{self, Criterion, Event, Facts, Rule};
use contactier_runtime::convert::new_id;
use contactier_runtime::db::{Db, json_batches, placeholders};
use contactier_runtime::sql::{Sql, Transaction, Tx};
use contactier_runtime::work::{FailingItem, FailingWork};
use futures::future::BoxFuture;
use sqlx::AssertSqlSafe;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const DAY_MICROS: i64 = 86_400_000_000;

/// A stored rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRow {
    pub id: String,
    pub name: String,
    pub points: i64,
    pub criterion: Criterion,
    pub created_at: i64,
}

const RULES: &str =
    "SELECT id, name, points, criterion, created_at FROM scoring_rules WHERE account_id = $1 ORDER BY id";

const DUE: &str = "/* across accounts: scores due */ SELECT account_id, id FROM contacts WHERE score_due_at > 0 AND score_due_at <= $1 \
     ORDER BY score_due_at LIMIT $2";

/// Every contact of the account becomes due: rules changed.
/// The worker that works out due scores, as operators see it.
pub const WORKER: &str = "contacts-scoring";

/// The wait before an account's scores are tried again: a second, doubling up to an hour.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(3600);

const SCORING_FAILED: &str = "INSERT INTO scoring_failures (account_id, attempts, last_error, next_attempt_at) \
     VALUES ($1, 1, $2, 0) ON CONFLICT (account_id) \
     DO UPDATE SET attempts = scoring_failures.attempts + 1, last_error = $2 RETURNING attempts";

const SCORING_RETRY_AT: &str = "UPDATE scoring_failures SET next_attempt_at = $2 WHERE account_id = $1";

/// The account's contacts due by now wait for the retry.
const PUT_OFF: &str =
    "UPDATE contacts SET score_due_at = $3 WHERE account_id = $1 AND score_due_at > 0 AND score_due_at <= $2";

const SCORING_RECOVERED: &str = "DELETE FROM scoring_failures WHERE account_id = $1";

const FAILING: &str = "/* across accounts: failing work for operators */ SELECT 'contacts-scoring' AS worker, \
     account_id, 'scores' AS item, attempts, last_error, next_attempt_at FROM scoring_failures \
     WHERE $2 = '' OR account_id = $2 ORDER BY account_id LIMIT $1";

const ALL_DUE: &str = "UPDATE contacts SET score_due_at = 1 WHERE account_id = $1";

pub(super) async fn rules(tx: &mut impl Tx, account: &str) -> Result<Vec<RuleRow>> {
    let rows: Vec<(String, String, i64, String, i64)> = tx.fetch_all(Sql::new(RULES).bind(account)).await?;
    rows.into_iter()
        .map(|(id, name, points, criterion, created_at)| {
            let criterion = serde_json::from_str(&criterion)
                .map_err(|e| Error::Internal(format!("stored scoring criterion: {e}")))?;
            Ok(RuleRow { id, name, points, criterion, created_at })
        })
        .collect()
}

async fn threshold(tx: &mut impl Tx, account: &str) -> Result<i64> {
    let q = "SELECT mql_threshold FROM scoring_settings WHERE account_id = $1";
    Ok(tx.scalar_optional(Sql::new(q).bind(account)).await?.unwrap_or(0))
}

/// Whether the account scores at all: a rule, or scores left from rules removed since.
pub(super) async fn scores_anything(tx: &mut impl Tx, account: &str) -> Result<bool> {
    let q = "SELECT EXISTS (SELECT 1 FROM scoring_rules WHERE account_id = $1)";
    Ok(tx.scalar(Sql::new(q).bind(account)).await?)
}

/// Takes the account's scoring lock for the transaction: working scores out and changing the
/// rules take turns, so a score worked out from rules a change replaced cannot overwrite the
/// change's mark that every contact is due.
async fn lock_scoring(tx: &mut impl Tx, account: &str) -> Result<()> {
    let q = "INSERT INTO scoring_settings (account_id, mql_threshold) VALUES ($1, 0) \
             ON CONFLICT (account_id) DO UPDATE SET mql_threshold = scoring_settings.mql_threshold";
    tx.execute(Sql::new(q).bind(account)).await?;
    Ok(())
}

impl Store {
    /// Begins a transaction that writes contacts' values. In an account that scores, it takes
    /// the scoring lock first, as the scoring worker and rule changes do: every writer then
    /// holds the account before its contacts, so none waits for another in a circle, and a
    /// score worked out from values read cannot overwrite values written meanwhile.
    pub(super) async fn begin_values_write(&self, account: &str) -> Result<Transaction> {
        let mut tx = self.begin_owned_write().await?;
        let q = "SELECT EXISTS (SELECT 1 FROM scoring_settings WHERE account_id = $1)";
        if tx.scalar::<bool>(Sql::new(q).bind(account)).await? {
            lock_scoring(&mut tx, account).await?;
        }
        Ok(tx)
    }
}

/// What scoring reads of a contact.
#[derive(sqlx::FromRow)]
struct Scoring {
    id: String,
    properties: String,
    score_due_at: i64,
    /// Whether its score reached the threshold when last worked out (NULL: rows from before
    /// this was kept, taken from the stored score against today's threshold).
    score_reached: Option<bool>,
}

/// An account's scoring as a transaction holding its scoring lock sees it.
pub(super) struct Scorer {
    rules: Vec<Rule>,
    threshold: i64,
    /// The longest behaviour window, if any rule counts behaviour.
    window: Option<i64>,
}

/// A score and the promotion it brings, as changes to a contact's values (the value after,
/// '' when cleared), and when it is next due (0: never by itself).
pub(super) struct Worked {
    pub changes: Vec<(&'static str, String)>,
    pub due: i64,
    /// Whether the score reaches the threshold: kept, so the next score promotes only when it
    /// comes to reach it.
    pub reached: bool,
}

impl Scorer {
    /// Takes the account's scoring lock and reads its rules and threshold.
    pub(super) async fn load(tx: &mut impl Tx, account: &str) -> Result<Scorer> {
        lock_scoring(tx, account).await?;
        let rows = rules(tx, account).await?;
        let rules: Vec<Rule> =
            rows.into_iter().map(|r| Rule { id: r.id, points: r.points, criterion: r.criterion }).collect();
        let threshold = threshold(tx, account).await?;
        let window = rules
            .iter()
            .filter_map(|r| match &r.criterion {
                Criterion::Behaviour { window_days, .. } => Some(window_days * DAY_MICROS),
                _ => None,
            })
            .max();
        Ok(Scorer { rules, threshold, window })
    }

    pub(super) fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Works a contact's score out from its values, events in the window and consent;
    /// `reached_before` is what the last score's [`Worked::reached`] was (None: not kept).
    pub(super) fn work(
        &self,
        values: &BTreeMap<String, String>,
        events: &[Event],
        unsubscribed: bool,
        now: i64,
        reached_before: Option<bool>,
    ) -> Worked {
        let rules = &self.rules;
        let facts = |values| Facts { values, events, unsubscribed, now };
        let mut scored = scoring::score(rules, &facts(values));
        let stage = values.get("lifecycle_stage").map(String::as_str);
        let reached_before = reached_before.unwrap_or_else(|| {
            let stored = values.get(scoring::PROPERTY).and_then(|v| v.parse::<i64>().ok());
            stored.is_some_and(|s| scoring::reaches(s, self.threshold))
        });
        let promoted = scoring::promoted(stage, scored.score, self.threshold, reached_before)
            .filter(|_| !rules.is_empty());
        if let Some(mql) = promoted {
            // A rule may count the stage itself: the score is the one of the contact as promoted.
            // Promotion only moves forward from before MQL, so once is enough.
            let mut as_promoted = values.clone();
            as_promoted.insert("lifecycle_stage".to_owned(), mql.to_owned());
            scored = scoring::score(rules, &facts(&as_promoted));
        }
        // No rules: no score (one left from rules removed since is cleared).
        let score = (!rules.is_empty()).then(|| scored.score.to_string());
        let mut changes: Vec<(&'static str, String)> = Vec::new();
        if values.get(scoring::PROPERTY) != score.as_ref() {
            changes.push((scoring::PROPERTY, score.unwrap_or_default()));
        }
        if let Some(mql) = promoted {
            changes.push(("lifecycle_stage", mql.to_owned()));
        }
        let reached = !rules.is_empty() && scoring::reaches(scored.score, self.threshold);
        Worked { changes, due: scored.due_at.unwrap_or(0), reached }
    }
}

/// The number a value of `name` is kept with beside its text, for range filters.
pub(super) fn num_of(name: &str, value: &str) -> Option<f64> {
    (name == scoring::PROPERTY).then(|| value.parse::<f64>().ok()).flatten()
}

/// What scoring writes into history.
pub(super) fn origin() -> Origin {
    Origin { source_type: "SYSTEM".into(), source_id: "lead-scoring".into(), user_id: String::new() }
}

/// Works the scores of `contacts` out again at `now` (epoch microseconds): writes a changed
/// score (and the MQL stage it brings) with its history, and when each is next due; answers
/// the contacts it saved with their values as saved (JSON). A few statements for a whole
/// set of contacts, whatever its size.
pub(super) async fn rescore(
    tx: &mut impl Tx,
    db: &Db,
    account: &str,
    contacts: &[String],
    now: i64,
) -> Result<HashMap<String, String>> {
    let scorer = Scorer::load(tx, account).await?;
    let ids = serde_json::to_string(contacts).expect("JSON of strings");
    let q = format!(
        "SELECT id, properties, score_due_at, score_reached FROM contacts WHERE account_id = $1 AND {}",
        db.json_in("id", 2)
    );
    let found: Vec<Scoring> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(&ids)).await?;
    let mut events: HashMap<String, Vec<Event>> = HashMap::new();
    if let Some(w) = scorer.window {
        let q = format!(
            "SELECT contact_id, kind, form_id, email_id, url, occurred_at FROM contact_events \
             WHERE account_id = $1 AND {} AND occurred_at > $3",
            db.json_in("contact_id", 2)
        );
        // Events ahead of now too (at most a day ahead): they say when the contact is due.
        let q = Sql::new(AssertSqlSafe(q)).bind(account).bind(&ids).bind(now - w);
        let rows: Vec<(String, String, String, String, String, i64)> = tx.fetch_all(q).await?;
        for (contact, kind, form_id, email_id, url, at) in rows {
            events.entry(contact).or_default().push(Event { kind, form_id, email_id, url, at });
        }
    }
    let q = format!(
        "SELECT contact_id, unsubscribed_from_all FROM consents WHERE account_id = $1 AND {}",
        db.json_in("contact_id", 2)
    );
    let consents: Vec<(String, bool)> =
        tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(&ids)).await?;
    let unsubscribed: HashSet<String> = consents.into_iter().filter(|c| c.1).map(|c| c.0).collect();

    let mut due_only: Vec<serde_json::Value> = Vec::new();
    let mut saved: HashMap<String, String> = HashMap::new();
    let mut saves: Vec<serde_json::Value> = Vec::new();
    // (contact, property, value after; '' when cleared)
    let mut changes: Vec<(String, &str, String)> = Vec::new();
    for c in found {
        let mut values: BTreeMap<String, String> = serde_json::from_str(&c.properties).unwrap_or_default();
        let events = events.get(&c.id).map_or(&[][..], Vec::as_slice);
        let Worked { changes: changed, due, reached } =
            scorer.work(&values, events, unsubscribed.contains(&c.id), now, c.score_reached);
        if changed.is_empty() {
            if due != c.score_due_at || c.score_reached != Some(reached) {
                due_only.push(serde_json::json!({ "id": c.id, "due": due, "reached": reached }));
            }
            continue;
        }
        for (name, value) in changed {
            if value.is_empty() {
                values.remove(name);
            } else {
                values.insert(name.to_owned(), value.clone());
            }
            changes.push((c.id.clone(), name, value));
        }
        let properties = json(&values);
        saves.push(
            serde_json::json!({ "id": c.id, "properties": properties, "due": due, "reached": reached }),
        );
        saved.insert(c.id, properties);
    }
    if !due_only.is_empty() {
        let (records, matched) =
            db.update_records("contacts", 2, &[("id", "text"), ("due", "bigint"), ("reached", "boolean")]);
        let q = format!(
            "UPDATE contacts SET score_due_at = x.due, score_reached = x.reached FROM {records} WHERE {matched}"
        );
        for records in json_batches(due_only) {
            tx.execute(Sql::new(AssertSqlSafe(q.clone())).bind(account).bind(records)).await?;
        }
    }
    if saves.is_empty() {
        return Ok(saved);
    }
    let (records, matched) = db.update_records(
        "contacts",
        2,
        &[("id", "text"), ("properties", "text"), ("due", "bigint"), ("reached", "boolean")],
    );
    let q = format!(
        "UPDATE contacts SET properties = x.properties, score_due_at = x.due, score_reached = x.reached, \
         version = contacts.version + 1, updated_at = $3 FROM {records} WHERE {matched}"
    );
    // Whole contacts, up to 1 MiB each: a statement per batch of them.
    for records in json_batches(saves) {
        tx.execute(Sql::new(AssertSqlSafe(q.clone())).bind(account).bind(records).bind(now)).await?;
    }
    for name in [scoring::PROPERTY, "lifecycle_stage"] {
        let of: Vec<&str> = changes.iter().filter(|c| c.1 == name).map(|c| c.0.as_str()).collect();
        if of.is_empty() {
            continue;
        }
        let q = format!(
            "DELETE FROM contact_values WHERE account_id = $1 AND name = $2 AND {}",
            db.json_in("contact_id", 3)
        );
        let of = serde_json::to_string(&of).expect("JSON of strings");
        tx.execute(Sql::new(AssertSqlSafe(q)).bind(account).bind(name).bind(of)).await?;
    }
    let set: Vec<&(String, &str, String)> = changes.iter().filter(|c| !c.2.is_empty()).collect();
    for chunk in set.chunks(db.rows_per_statement(5)) {
        let q = format!(
            "INSERT INTO contact_values (account_id, contact_id, name, value, num) VALUES {}",
            placeholders(chunk.len(), 5)
        );
        let q = chunk.iter().fold(Sql::new(AssertSqlSafe(q)), |q, (id, name, value)| {
            q.bind(account).bind(id).bind(*name).bind(value).bind(num_of(name, value))
        });
        tx.execute(q).await?;
    }
    let origin = origin();
    let entries: Vec<Entry> =
        changes.iter().map(|(id, name, value)| Entry { contact: id, name, value, origin: &origin }).collect();
    history::record(tx, account, &entries, now).await?;
    Ok(saved)
}

/// A new rule's checks, naming the field at fault.
pub fn check_rule(name: &str, points: i64, criterion: &Criterion) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("rule.name", "required"));
    }
    if points == 0 || points.abs() > scoring::MAX_POINTS {
        return Err(Error::invalid("rule.points", format!("-{0} to {0}, not 0", scoring::MAX_POINTS)));
    }
    if let Criterion::Behaviour { window_days, .. } = criterion
        && !(1..=scoring::MAX_WINDOW_DAYS).contains(window_days)
    {
        return Err(Error::invalid(
            "rule.behaviour.window_days",
            format!("1 to {}", scoring::MAX_WINDOW_DAYS),
        ));
    }
    Ok(())
}

impl Store {
    pub async fn scoring_rules(&self, account: &str) -> Result<Vec<RuleRow>> {
        rules(&mut self.db.conn().await?, account).await
    }

    pub async fn mql_threshold(&self, account: &str) -> Result<i64> {
        threshold(&mut self.db.conn().await?, account).await
    }

    /// Adds a rule (FAILED_PRECONDITION past `max`); every contact of the account becomes due.
    pub async fn create_scoring_rule(
        &self,
        account: &str,
        name: &str,
        points: i64,
        criterion: &Criterion,
        now: i64,
        max: i64,
    ) -> Result<RuleRow> {
        let mut tx = self.db.begin_write().await?;
        lock_scoring(&mut tx, account).await?;
        // The property was looked up before this transaction: a deletion since would leave
        // the rule counting a property no contact has. Its definition is held until commit,
        // so a deletion waits for the rule and then sees it.
        if let Criterion::Property { property, .. } = criterion
            && !crate::properties::is_standard(property)
        {
            let lock = if matches!(self.db, Db::Postgres(_)) { " FOR UPDATE" } else { "" };
            let q =
                format!("SELECT name FROM property_definitions WHERE account_id = $1 AND name = $2{lock}");
            let q = Sql::new(AssertSqlSafe(q)).bind(account).bind(property);
            if tx.scalar_optional::<String>(q).await?.is_none() {
                return Err(Error::invalid("rule.property.property", "no such property"));
            }
        }
        let q = "SELECT COUNT(*) FROM scoring_rules WHERE account_id = $1";
        let have: i64 = tx.scalar(Sql::new(q).bind(account)).await?;
        if have >= max {
            return Err(Error::quota_reached("scoring rules", max));
        }
        let row = RuleRow {
            id: new_id(),
            name: name.to_owned(),
            points,
            criterion: criterion.clone(),
            created_at: now,
        };
        let stored = serde_json::to_string(&row.criterion).expect("JSON of plain values");
        let q = "INSERT INTO scoring_rules (account_id, id, name, points, criterion, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)";
        tx.execute(
            Sql::new(q).bind(account).bind(&row.id).bind(&row.name).bind(points).bind(stored).bind(now),
        )
        .await?;
        tx.execute(Sql::new(ALL_DUE).bind(account)).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes a rule; NOT_FOUND when the account has none by that id.
    pub async fn delete_scoring_rule(&self, account: &str, id: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        lock_scoring(&mut tx, account).await?;
        let q = "DELETE FROM scoring_rules WHERE account_id = $1 AND id = $2";
        if tx.execute(Sql::new(q).bind(account).bind(id)).await? == 0 {
            return Err(Error::NotFound(format!("scoring rule {id}")));
        }
        tx.execute(Sql::new(ALL_DUE).bind(account)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets the score that makes a lead an MQL (0: none); every contact becomes due.
    pub async fn set_mql_threshold(&self, account: &str, threshold: i64) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let q = "INSERT INTO scoring_settings (account_id, mql_threshold) VALUES ($1, $2) \
                 ON CONFLICT (account_id) DO UPDATE SET mql_threshold = excluded.mql_threshold";
        tx.execute(Sql::new(q).bind(account).bind(threshold)).await?;
        tx.execute(Sql::new(ALL_DUE).bind(account)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Works out the scores of up to `limit` due contacts, oldest due first, each account's in
    /// one transaction; answers how many, and when the next is due. An account that fails is
    /// recorded and its due contacts put off with backoff, so the others' go on meanwhile; the
    /// pass stops only when even that record cannot be written.
    pub async fn rescore_due(&self, now: i64, limit: i64) -> Result<(usize, Option<i64>)> {
        let due: Vec<(String, String)> = self.db.fetch_all(Sql::new(DUE).bind(now).bind(limit)).await?;
        let mut by_account: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (account, id) in &due {
            by_account.entry(account.clone()).or_default().push(id.clone());
        }
        for (account, ids) in &by_account {
            if let Err(e) = self.rescore_account(account, ids, now).await {
                let error = e.to_string();
                let attempts = self.scoring_failed(account, &error, now).await?;
                contactier_runtime::work::record_failure(WORKER, account, "scores", attempts, &error);
            }
        }
        let q = "/* across accounts: when a score is next due */ SELECT MIN(score_due_at) FROM contacts \
                 WHERE score_due_at > $1";
        let next: Option<i64> = self.db.scalar(Sql::new(AssertSqlSafe(q)).bind(now)).await?;
        Ok((due.len(), next))
    }

    async fn rescore_account(&self, account: &str, ids: &[String], now: i64) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        rescore(&mut tx, &self.db, account, ids, now).await?;
        tx.execute(Sql::new(SCORING_RECOVERED).bind(account)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed attempt at the account's scores and puts its due contacts off until the
    /// next one; answers the attempts so far.
    async fn scoring_failed(&self, account: &str, error: &str, now: i64) -> Result<i64> {
        let mut tx = self.db.begin_write().await?;
        let attempts: i64 = tx.scalar(Sql::new(SCORING_FAILED).bind(account).bind(error)).await?;
        let wait = contactier_runtime::work::backoff(attempts, RETRY_FIRST, RETRY_MAX);
        let at = now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX));
        tx.execute(Sql::new(SCORING_RETRY_AT).bind(account).bind(at)).await?;
        tx.execute(Sql::new(PUT_OFF).bind(account).bind(now).bind(at)).await?;
        tx.commit().await?;
        Ok(attempts)
    }

    /// Where operators find the accounts whose scores keep failing.
    pub fn failing_work(&self) -> std::sync::Arc<dyn FailingWork> {
        std::sync::Arc::new(Failing(self.db.clone()))
    }
}

/// Accounts whose scores failed and are not worked out yet.
struct Failing(Db);

impl FailingWork for Failing {
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, std::result::Result<Vec<FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            self.0.fetch_all(Sql::new(FAILING).bind(limit).bind(account.unwrap_or_default())).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewContact;
    use chrono::TimeZone;
    use contactier_runtime::db::Backend;
    use contactier_runtime::testing::TestDb;

    const ACCOUNT: &str = "acct-s";

    /// Rules changed, and the process stopped before its worker ran: a new process on the same
    /// database scores every contact, and the duplicate keys of contacts from before keys were
    /// kept get written, from what the tables hold.
    async fn due_work_goes_on_in_a_new_process(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap();
        let before = Store::new(t.db.clone());
        let news: Vec<NewContact> = (0..3)
            .map(|i| NewContact::by_user(&format!("c{i}@gmail.com"), &[("job_title", "CTO")]))
            .collect();
        before.create_contacts(ACCOUNT, news, now, None).await.unwrap();
        let title = Criterion::Property {
            property: "job_title".into(),
            operator: scoring::Operator::Eq,
            value: "cto".into(),
        };
        before.create_scoring_rule(ACCOUNT, "CTO", 7, &title, micros_of(now), 100).await.unwrap();
        // As a version before keys were kept left them.
        t.db.execute(Sql::new(
            "/* test: contacts from before keys */ UPDATE contacts SET match_keys_version = 0",
        ))
        .await
        .unwrap();
        t.db.execute(Sql::new("/* test: contacts from before keys */ DELETE FROM contact_match_keys"))
            .await
            .unwrap();
        drop(before);

        let after = Store::new(t.db.clone());
        let (scored, next) = after.rescore_due(micros_of(now), 500).await.unwrap();
        assert_eq!((scored, next), (3, None), "{backend:?}");
        let scores: Vec<(String,)> =
            t.db.fetch_all(Sql::new(
                "/* test: every score */ SELECT value FROM contact_values WHERE name = 'lead_score'",
            ))
            .await
            .unwrap();
        assert_eq!(scores, vec![("7".to_owned(),); 3], "{backend:?}");
        assert_eq!(after.rescore_due(micros_of(now), 500).await.unwrap().0, 0, "{backend:?}: each once");
        assert_eq!(after.key_unkeyed_contacts(2).await.unwrap(), 2, "{backend:?}");
        assert_eq!(after.key_unkeyed_contacts(2).await.unwrap(), 1, "{backend:?}");
        assert_eq!(after.key_unkeyed_contacts(2).await.unwrap(), 0, "{backend:?}");
        let keys: i64 =
            t.db.scalar(Sql::new("/* test: every key */ SELECT COUNT(*) FROM contact_match_keys"))
                .await
                .unwrap();
        assert_eq!(keys, 3, "{backend:?}: a mailbox key each");
    }

    /// One account whose scores cannot be saved (a trigger refuses them here) holds up no other
    /// account's: it is recorded for operators and tried again with backoff, and scored once
    /// it can be.
    async fn a_failing_account_holds_up_no_other(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap();
        let store = Store::new(t.db.clone());
        let title = Criterion::Property {
            property: "job_title".into(),
            operator: scoring::Operator::Eq,
            value: "cto".into(),
        };
        for account in ["acct-bad", "acct-good"] {
            let news: Vec<NewContact> = (0..2)
                .map(|i| NewContact::by_user(&format!("c{i}@example.com"), &[("job_title", "CTO")]))
                .collect();
            store.create_contacts(account, news, now, None).await.unwrap();
            store.create_scoring_rule(account, "CTO", 7, &title, micros_of(now), 100).await.unwrap();
        }
        let refuse: &[&'static str] = match backend {
            Backend::Postgres => &[
                "/* test: refuse one account's scores */ CREATE FUNCTION refuse_scores() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$",
                "/* test: refuse one account's scores */ CREATE TRIGGER refuse_scores BEFORE UPDATE OF properties \
                 ON contacts FOR EACH ROW WHEN (NEW.account_id = 'acct-bad') EXECUTE FUNCTION refuse_scores()",
            ],
            Backend::Sqlite => {
                &["/* test: refuse one account's scores */ CREATE TRIGGER refuse_scores BEFORE UPDATE \
                 OF properties ON contacts WHEN NEW.account_id = 'acct-bad' \
                 BEGIN SELECT RAISE(ABORT, 'refused by test'); END"]
            }
        };
        for q in refuse {
            t.db.execute(Sql::new(AssertSqlSafe(*q))).await.unwrap();
        }
        let scores = |account: &'static str| {
            let db = t.db.clone();
            async move {
                let q = Sql::new(
                    "/* test: scores */ SELECT value FROM contact_values WHERE account_id = $1 \
                     AND name = 'lead_score'",
                )
                .bind(account);
                db.fetch_all::<(String,)>(q).await.unwrap().into_iter().map(|r| r.0).collect::<Vec<_>>()
            }
        };
        let at = |seconds: i64| micros_of(now) + seconds * 1_000_000;

        let (seen, next) = store.rescore_due(at(0), 500).await.unwrap();
        assert_eq!(
            (seen, next),
            (4, Some(at(1))),
            "{backend:?}: the failing account is tried again in a second"
        );
        assert_eq!(scores("acct-good").await, ["7", "7"], "{backend:?}: the other account is scored");
        assert!(scores("acct-bad").await.is_empty(), "{backend:?}");
        let failing = store.failing_work().failing(None, 100).await.unwrap();
        assert_eq!(failing.len(), 1, "{backend:?}: {failing:?}");
        let f = &failing[0];
        assert_eq!(
            (f.worker.as_str(), f.account_id.as_str(), f.attempts),
            (WORKER, "acct-bad", 1),
            "{backend:?}"
        );
        assert!(f.last_error.contains("refused by test"), "{backend:?}: {}", f.last_error);
        assert_eq!(f.next_attempt_at, at(1), "{backend:?}");

        assert_eq!(
            store.rescore_due(at(0), 500).await.unwrap().0,
            0,
            "{backend:?}: not again before its time"
        );
        let (seen, next) = store.rescore_due(at(1), 500).await.unwrap();
        assert_eq!((seen, next), (2, Some(at(3))), "{backend:?}: the wait doubles");
        assert_eq!(store.failing_work().failing(None, 100).await.unwrap()[0].attempts, 2, "{backend:?}");

        let accept = match backend {
            Backend::Postgres => "/* test: accept the scores again */ DROP TRIGGER refuse_scores ON contacts",
            Backend::Sqlite => "/* test: accept the scores again */ DROP TRIGGER refuse_scores",
        };
        t.db.execute(Sql::new(accept)).await.unwrap();
        assert_eq!(store.rescore_due(at(3), 500).await.unwrap(), (2, None), "{backend:?}");
        assert_eq!(scores("acct-bad").await, ["7", "7"], "{backend:?}: scored once it can be");
        assert!(
            store.failing_work().failing(None, 100).await.unwrap().is_empty(),
            "{backend:?}: no longer failing"
        );
    }

    /// A rule for a property that was there when the request was checked but deleted since
    /// is refused, and a property a rule counts is not deleted, in whichever order they come.
    async fn a_rule_and_the_deletion_of_its_property_do_not_both_pass(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap();
        let store = Store::new(t.db.clone());
        let racy = crate::properties::Definition {
            name: "racy".into(),
            label: "Racy".into(),
            ptype: crate::properties::PropertyType::SingleLineText,
            options: Vec::new(),
            standard: false,
            description: String::new(),
        };
        let rule = Criterion::Property {
            property: "racy".into(),
            operator: scoring::Operator::Eq,
            value: "x".into(),
        };
        // Deleted after the request's check, before the rule's transaction.
        store.create_property(ACCOUNT, &racy, now, 1_000).await.unwrap();
        store.delete_property(ACCOUNT, "racy").await.unwrap();
        let err =
            store.create_scoring_rule(ACCOUNT, "racy", 5, &rule, micros_of(now), 100).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field, .. } if field == "rule.property.property"),
            "{backend:?}: {err:?}"
        );
        assert!(store.scoring_rules(ACCOUNT).await.unwrap().is_empty(), "{backend:?}: no rule");
        // The other order: the rule stands, the deletion is refused.
        store.create_property(ACCOUNT, &racy, now, 1_000).await.unwrap();
        store.create_scoring_rule(ACCOUNT, "racy", 5, &rule, micros_of(now), 100).await.unwrap();
        let err = store.delete_property(ACCOUNT, "racy").await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{backend:?}: {err:?}");
        assert!(store.catalog(ACCOUNT).await.unwrap().get("racy").is_some(), "{backend:?}: still there");
        // At once, over and over: never both.
        for i in 0..10 {
            let name = format!("racy{i}");
            store
                .create_property(
                    ACCOUNT,
                    &crate::properties::Definition { name: name.clone(), ..racy.clone() },
                    now,
                    1_000,
                )
                .await
                .unwrap();
            let rule = Criterion::Property {
                property: name.clone(),
                operator: scoring::Operator::Eq,
                value: "x".into(),
            };
            let (made, gone) = tokio::join!(
                store.create_scoring_rule(ACCOUNT, &name, 5, &rule, micros_of(now), 100),
                store.delete_property(ACCOUNT, &name)
            );
            assert!(made.is_ok() != gone.is_ok(), "{backend:?}: one of them: {made:?} {gone:?}");
        }
    }

    fn micros_of(t: chrono::DateTime<chrono::Utc>) -> i64 {
        t.timestamp_micros()
    }

    contactier_runtime::backend_tests!(
        due_work_goes_on_in_a_new_process,
        a_failing_account_holds_up_no_other,
        a_rule_and_the_deletion_of_its_property_do_not_both_pass
    );
}
