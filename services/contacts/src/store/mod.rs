//! Contact storage, written once for SQLite and PostgreSQL. Every write changes the contact, its
//! searchable values, the account's total and the outbox event for marketing-status in one
//! transaction.

use crate::duplicates as duplicates_rules;
use crate::email::Email;
use crate::error::{Error, Result};
use crate::properties::{Catalog, Definition, PropertyOption, PropertyType, Value};
use crate::value_index;
use chrono::{DateTime, Utc};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::Db;
use contactier_runtime::outbox::{EventTx, new_event_id};
use contactier_runtime::paging::PAGE_BYTES;
use contactier_runtime::sql::{Rows, Sql, Tx};
use prost::Message;
use sqlx::AssertSqlSafe;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

mod behaviour;
mod consent;
mod duplicates;
mod engagements;
mod history;
mod imports;
mod lists;
mod reports;
mod scoring;
pub use scoring::WORKER as SCORING_WORKER;
mod search;

pub use behaviour::{NewEvent, Recorded, StoredEvent};
pub use consent::ConsentRow;
pub use duplicates::Candidate;
pub use engagements::{KeepLogged, Logged, Subject};
pub use history::{EMAIL, HistoryRow, Origin};
pub use imports::{Beat, ImportErrorRow, ImportRow, Owner, Start, TAKEN_OVER};
pub use lists::ListRow;
pub use scoring::{RuleRow, check_rule};
pub use search::{Cursor, SortKey};

/// Outbox topic of the contact events for marketing-status (ApplyContactEventsRequest payloads).
pub const MARKETING_STATUS_TOPIC: &str = "marketing-status";

/// A stored contact.
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ContactRow {
    pub id: String,
    pub email: String,
    pub properties: String,
    pub version: i64,
    pub source_type: String,
    pub source_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the latest engagement happened; 0 for none.
    pub last_activity_at: i64,
    #[sqlx(flatten)]
    pub visits: VisitColumns,
}

/// A contact's visits as its columns keep them (0 and '' before the first).
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct VisitColumns {
    pub visits: i64,
    pub first_visit_at: i64,
    pub last_visit_at: i64,
    pub last_view_at: i64,
    pub original_source: String,
    pub latest_source: String,
}

impl ContactRow {
    pub fn values(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.properties).unwrap_or_default()
    }
}

/// Refuses an answer of `contacts` (more than one) holding `bytes` of values past
/// [`PAGE_BYTES`], a page's bytes: a search page holds at most this much.
pub fn answer_fits(field: &str, contacts: usize, bytes: usize) -> Result<()> {
    if contacts > 1 && bytes > PAGE_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "these contacts hold more than {} MiB of values, more than one answer carries; ask for fewer at a time",
                PAGE_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

pub(crate) const CONTACT_COLUMNS: &str = "c.id, c.email, c.properties, c.version, c.source_type, \
     c.source_id, c.created_at, c.updated_at, c.last_activity_at, c.visits, c.first_visit_at, \
     c.last_visit_at, c.last_view_at, c.original_source, c.latest_source";

/// Saves an answer under its request id, with the contacts it names (an erasure forgets it);
/// the first one saved stays.
const KEEP_ANSWER: &str = "INSERT INTO request_answers (account_id, request_id, answer, digest, contact_ids) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// Saves a call's answer in the transaction of the write it answers; false when a twin under
/// the same request id saved first (the caller then rolls back and answers the twin's).
pub(super) async fn keep_answer(
    tx: &mut impl Tx,
    account: &str,
    request_id: &str,
    digest: &str,
    answer: &[u8],
    contacts: &[Result<ContactRow>],
) -> Result<bool> {
    let ids: Vec<&str> = contacts.iter().filter_map(|c| c.as_ref().ok().map(|r| r.id.as_str())).collect();
    let ids = serde_json::to_string(&ids).expect("JSON of strings");
    let q = Sql::new(KEEP_ANSWER).bind(account).bind(request_id).bind(answer).bind(digest).bind(ids);
    Ok(tx.execute(q).await? == 1)
}

/// Forgets the answers kept under request ids that name a contact (they hold what it was).
pub(super) async fn forget_answers(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    let q = "DELETE FROM request_answers WHERE account_id = $1 AND contact_ids LIKE $2";
    tx.execute(Sql::new(q).bind(account).bind(format!("%\"{contact}\"%"))).await?;
    Ok(())
}

/// A call's answer to save with the write it answers: the encoded answer made from the
/// write's outcomes, or None when there is none to save (the call fails).
pub struct KeepAnswer<'a> {
    pub request_id: &'a str,
    /// Of the request the id stands for; see [`contactier_runtime::idempotency`].
    pub digest: &'a str,
    pub answer: &'a EncodeAnswer<'a>,
}

pub type EncodeAnswer<'a> = dyn Fn(&[Result<ContactRow>]) -> Option<Vec<u8>> + Sync + 'a;

/// A contact to create.
#[derive(Clone, Debug)]
pub struct NewContact {
    pub email: Email,
    pub values: BTreeMap<String, Value>,
    pub source_type: String,
    pub source_id: String,
    /// The number of the import file's row that creates it (0: not an import's). A resumed
    /// import tells by it the contacts written before its cut from those of earlier rows.
    pub source_row: i64,
    /// MarketingStatus the creator asks for; 0 for the source's default.
    pub requested_status: i32,
    pub user_id: String,
}

#[cfg(test)]
impl NewContact {
    /// A contact a person creates with `email` and text `values`, for the store's tests.
    pub fn by_user(email: &str, values: &[(&str, &str)]) -> Self {
        NewContact {
            email: crate::email::parse(email).expect("a test's email"),
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value { text: (*v).into(), num: None }))
                .collect(),
            source_type: "USER".into(),
            source_id: String::new(),
            source_row: 0,
            requested_status: 0,
            user_id: "u".into(),
        }
    }
}

/// A change to one contact: values to set (None clears), a new email, the version expected.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub id: String,
    pub values: BTreeMap<String, Option<Value>>,
    pub email: Option<Email>,
    pub expected_version: i64,
}

pub(crate) fn contact_event(
    account: &str,
    now: DateTime<Utc>,
    payload: mpb::contact_event::Payload,
) -> mpb::ContactEvent {
    mpb::ContactEvent {
        event_id: new_event_id(),
        account_id: account.to_owned(),
        occurred_at: Some(contactier_runtime::convert::timestamp(now)),
        payload: Some(payload),
    }
}

const INSERT_VALUE: &str =
    "INSERT INTO contact_values (account_id, contact_id, name, value, num) VALUES ($1, $2, $3, $4, $5)";

const ADD_TOTAL: &str = "INSERT INTO contact_totals (account_id, total) VALUES ($1, $2) \
     ON CONFLICT (account_id) DO UPDATE SET total = contact_totals.total + excluded.total";

/// Replaces a contact's searchable values with `values`.
async fn write_values(
    tx: &mut impl Tx,
    account: &str,
    id: &str,
    values: &BTreeMap<String, Value>,
) -> Result<()> {
    let clear = "DELETE FROM contact_values WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(clear).bind(account).bind(id)).await?;
    for (name, v) in values {
        tx.execute(Sql::new(INSERT_VALUE).bind(account).bind(id).bind(name).bind(&v.text).bind(v.num))
            .await?;
    }
    Ok(())
}

/// Queues events for marketing-status as one outbox entry.
async fn send_events(
    tx: &mut impl Tx,
    account: &str,
    events: Vec<mpb::ContactEvent>,
    now: DateTime<Utc>,
) -> Result<()> {
    if !events.is_empty() {
        let batch = mpb::ApplyContactEventsRequest { events, batch_sizes: vec![] };
        tx.enqueue(&new_event_id(), MARKETING_STATUS_TOPIC, account, &batch.encode_to_vec(), now).await?;
    }
    Ok(())
}

/// Adds `delta` to the account's total.
async fn add_total(tx: &mut impl Tx, account: &str, delta: i64) -> Result<()> {
    if delta != 0 {
        tx.execute(Sql::new(ADD_TOTAL).bind(account).bind(delta)).await?;
    }
    Ok(())
}

/// Removes contacts with everything attached to them; answers the rows removed.
async fn remove_contacts(tx: &mut impl Tx, account: &str, ids: &[String]) -> Result<Vec<ContactRow>> {
    let mut gone: Vec<ContactRow> = Vec::new();
    let q = format!(
        "DELETE FROM contacts WHERE account_id = $1 AND id = $2 RETURNING {}",
        CONTACT_COLUMNS.replace("c.", "")
    );
    for id in ids {
        let row: Option<ContactRow> =
            tx.fetch_optional(Sql::new(AssertSqlSafe(q.as_str())).bind(account).bind(id)).await?;
        if let Some(row) = row {
            let tables = [
                "contact_values",
                "list_members",
                "consents",
                "property_history",
                "engagements",
                "contact_events",
            ];
            for table in tables {
                let q = format!("DELETE FROM {table} WHERE account_id = $1 AND contact_id = $2");
                tx.execute(Sql::new(AssertSqlSafe(q)).bind(account).bind(id)).await?;
            }
            duplicates::forget_keys(tx, account, id).await?;
            forget_answers(tx, account, id).await?;
            gone.push(row);
        }
    }
    add_total(tx, account, -(gone.len() as i64)).await?;
    Ok(gone)
}

/// Reads the contacts a write will change, locked, in id order so that two writes naming the
/// same contacts take turns rather than wait on each other in a circle. On PostgreSQL a plain
/// read in the transaction would let a concurrent write commit between the read and the
/// update, and one of the two would be lost; SQLite's write transaction already holds the
/// database's only write lock.
async fn locked_contacts(
    tx: &mut impl Tx,
    db: &Db,
    account: &str,
    ids: &[&str],
) -> Result<HashMap<String, ContactRow>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let lock = if matches!(db, Db::Postgres(_)) { " FOR UPDATE" } else { "" };
    let q = format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND {} ORDER BY c.id{lock}",
        db.json_in("c.id", 2)
    );
    let ids = serde_json::to_string(&ids).expect("JSON of strings");
    let rows: Vec<ContactRow> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(ids)).await?;
    Ok(rows.into_iter().map(|r| (r.id.clone(), r)).collect())
}

/// A contact by id, inside a transaction or not.
async fn contact(tx: &mut impl Tx, account: &str, id: &str) -> Result<Option<ContactRow>> {
    Ok(tx.fetch_optional(Sql::new(CONTACT_BY_ID).bind(account).bind(id)).await?)
}

const CONTACT_BY_ID: &str = "SELECT id, email, properties, version, source_type, source_id, created_at, \
     updated_at, last_activity_at, visits, first_visit_at, last_visit_at, last_view_at, original_source, \
     latest_source FROM contacts WHERE account_id = $1 AND id = $2";

/// The columns of a property definition, in the order [`DefinitionRow`] and the tuples read
/// from [`Store::contact_with_catalog`]'s JSON take them.
macro_rules! definition_columns {
    () => {
        "name, label, type, options, description"
    };
}

// After the column macros it reads.
mod single;

pub use single::ContactKey;

#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    single: Arc<single::Reads>,
    /// How long a search (its page, its count) may read: [`search::SEARCH_TIME`].
    search_time: std::time::Duration,
    /// The import whose owner writes with this store ([`Store::owned_by`]).
    owner: Option<Arc<imports::Owner>>,
}

fn json(values: &BTreeMap<String, String>) -> String {
    serde_json::to_string(values).expect("JSON of strings")
}

#[derive(sqlx::FromRow)]
struct DefinitionRow {
    name: String,
    label: String,
    r#type: String,
    options: String,
    description: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredOption {
    value: String,
    label: String,
}

impl DefinitionRow {
    fn into_definition(self) -> Result<Definition> {
        let options: Vec<StoredOption> = serde_json::from_str(&self.options)
            .map_err(|e| Error::Internal(format!("stored options: {e}")))?;
        Ok(Definition {
            ptype: PropertyType::parse(&self.r#type)
                .ok_or_else(|| Error::Internal("stored property type".into()))?,
            name: self.name,
            label: self.label,
            options: options.into_iter().map(|o| PropertyOption { value: o.value, label: o.label }).collect(),
            standard: false,
            description: self.description,
        })
    }
}

fn options_json(d: &Definition) -> String {
    let o: Vec<StoredOption> =
        d.options.iter().map(|o| StoredOption { value: o.value.clone(), label: o.label.clone() }).collect();
    serde_json::to_string(&o).expect("JSON of strings")
}

impl Store {
    /// Needs a Tokio runtime: single reads are shared by a task of their own.
    pub fn new(db: Db) -> Self {
        Self {
            single: Arc::new(single::reads(db.clone())),
            db,
            search_time: search::SEARCH_TIME,
            owner: None,
        }
    }

    /// The store with searches bounded by `time` rather than [`search::SEARCH_TIME`].
    pub fn with_search_time(self, time: std::time::Duration) -> Self {
        Self { search_time: time, ..self }
    }

    // ---- property definitions ----

    pub async fn custom_definitions(&self, account: &str) -> Result<Vec<Definition>> {
        let rows: Vec<DefinitionRow> = self.db.fetch_all(Sql::new(DEFINITIONS).bind(account)).await?;
        rows.into_iter().map(DefinitionRow::into_definition).collect()
    }

    pub async fn catalog(&self, account: &str) -> Result<Catalog> {
        Ok(Catalog::new(self.custom_definitions(account).await?))
    }

    /// Adds a custom property; FAILED_PRECONDITION when the account has `max` already.
    pub async fn create_property(
        &self,
        account: &str,
        d: &Definition,
        now: DateTime<Utc>,
        max: i64,
    ) -> Result<()> {
        let count = "SELECT COUNT(*) FROM property_definitions WHERE account_id = $1";
        let have: i64 = self.db.scalar(Sql::new(count).bind(account)).await?;
        if have >= max {
            return Err(Error::quota_reached("custom properties", max));
        }
        let insert = Sql::new(INSERT_DEFINITION)
            .bind(account)
            .bind(&d.name)
            .bind(&d.label)
            .bind(d.ptype.as_str())
            .bind(options_json(d))
            .bind(&d.description)
            .bind(micros(now));
        if self.db.execute(insert).await? == 0 {
            return Err(Error::AlreadyExists(format!("property {} exists", d.name)));
        }
        Ok(())
    }

    /// Changes label, description and options; the type stays.
    pub async fn update_property(&self, account: &str, d: &Definition) -> Result<()> {
        let mut tx = self.begin_values_write(account).await?;
        let update = Sql::new(UPDATE_DEFINITION)
            .bind(&d.label)
            .bind(options_json(d))
            .bind(&d.description)
            .bind(account)
            .bind(&d.name);
        if tx.execute(update).await? == 0 {
            return Err(Error::NotFound(format!("property {}", d.name)));
        }
        // An option a rule counts stays: the rule would count a value no contact can be given
        // and no search can name. Read after the update, as a deletion reads them.
        let rules = if d.ptype == PropertyType::Enumeration {
            scoring::rules(&mut tx, account).await?
        } else {
            Vec::new()
        };
        if let Some(r) = rules.iter().find(|r| {
            matches!(&r.criterion, crate::scoring::Criterion::Property { property, value, .. }
                if property == &d.name && !value.is_empty() && !d.options.iter().any(|o| &o.value == value))
        }) {
            return Err(Error::FailedPrecondition(format!(
                "scoring rule {} ({:?}) counts an option of {} this leaves out: delete the rule first",
                r.id, r.name, d.name
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a custom property and every value of it.
    pub async fn delete_property(&self, account: &str, name: &str) -> Result<()> {
        let mut tx = self.begin_values_write(account).await?;
        let q = "DELETE FROM property_definitions WHERE account_id = $1 AND name = $2";
        if tx.execute(Sql::new(q).bind(account).bind(name)).await? == 0 {
            return Err(Error::NotFound(format!("property {name}")));
        }
        // A rule left counting a property no contact shows would score what nobody can see.
        // Read after the definition is deleted: a rule being made for it holds the definition
        // until it commits, so it is seen here (and the deletion rolled back).
        let rules = scoring::rules(&mut tx, account).await?;
        if let Some(r) = rules.iter().find(|r| {
            matches!(&r.criterion, crate::scoring::Criterion::Property { property, .. } if property == name)
        }) {
            return Err(Error::FailedPrecondition(format!(
                "scoring rule {} ({:?}) counts {name}: delete the rule first",
                r.id, r.name
            )));
        }
        // Its values go from the contacts as well, so a property made again under the name
        // starts empty.
        let forget = match self.db {
            Db::Postgres(_) => "UPDATE contacts SET properties = (properties::jsonb - $2)::text",
            Db::Sqlite(_) => "UPDATE contacts SET properties = json_remove(properties, '$.' || $2)",
        };
        let all = value_index::either_side("value", "TRUE");
        let forget = format!(
            "{forget} WHERE account_id = $1 AND id IN \
             (SELECT contact_id FROM contact_values WHERE account_id = $1 AND name = $2 AND {all})"
        );
        tx.execute(Sql::new(AssertSqlSafe(forget)).bind(account).bind(name)).await?;
        let q = format!("DELETE FROM contact_values WHERE account_id = $1 AND name = $2 AND {all}");
        tx.execute(Sql::new(AssertSqlSafe(q)).bind(account).bind(name)).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- idempotency ----

    /// The answer kept under a request id, with the digest of the request it answered.
    pub async fn answer(&self, account: &str, request_id: &str) -> Result<Option<(Vec<u8>, String)>> {
        let q = "SELECT answer, digest FROM request_answers WHERE account_id = $1 AND request_id = $2";
        Ok(self.db.fetch_optional(Sql::new(q).bind(account).bind(request_id)).await?)
    }

    pub async fn keep_answer(
        &self,
        account: &str,
        request_id: &str,
        digest: &str,
        answer: &[u8],
    ) -> Result<()> {
        self.db
            .execute(
                Sql::new(KEEP_ANSWER).bind(account).bind(request_id).bind(answer).bind(digest).bind("[]"),
            )
            .await?;
        Ok(())
    }

    // ---- contacts ----

    /// Creates contacts in one transaction with multi-row inserts; each gets its own outcome
    /// (ALREADY_EXISTS for an email the account has, including one earlier in the same batch).
    /// `keep` saves the call's answer, made from the outcomes, under its request id in the same
    /// transaction: a failure between the two would have a retry create nothing and answer
    /// ALREADY_EXISTS for every contact the first try created.
    pub async fn create_contacts(
        &self,
        account: &str,
        contacts: Vec<NewContact>,
        now: DateTime<Utc>,
        keep: Option<KeepAnswer<'_>>,
    ) -> Result<Option<Vec<Result<ContactRow>>>> {
        let mut tx = self.begin_values_write(account).await?;
        let outcomes = insert_contacts(&mut tx, &self.db, account, &contacts, now).await?;
        if let Some(KeepAnswer { request_id, digest, answer }) = keep.filter(|k| !k.request_id.is_empty())
            && let Some(bytes) = answer(&outcomes)
            && !keep_answer(&mut tx, account, request_id, digest, &bytes, &outcomes).await?
        {
            // A twin under the same request id saved its answer first: this one changes nothing.
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(outcomes))
    }

    /// The contacts with these ids, in the order first asked (unknown ids left out), read a chunk of
    /// ids per statement. Refused (INVALID_ARGUMENT `ids`) when more than one is asked for and
    /// their values pass what one answer carries, [`PAGE_BYTES`]; rows past that are
    /// not read out.
    pub async fn contacts(&self, account: &str, ids: &[String]) -> Result<Vec<ContactRow>> {
        let mut found: HashMap<String, ContactRow> = HashMap::with_capacity(ids.len());
        let mut bytes = 0usize;
        for chunk in ids.chunks(self.db.rows_per_statement(1) - 1) {
            let left = PAGE_BYTES.saturating_sub(bytes);
            let q = format!(
                "SELECT * FROM (SELECT {CONTACT_COLUMNS}, SUM(octet_length(c.properties)) OVER (ORDER BY c.id) \
                 - octet_length(c.properties) AS bytes_before FROM contacts c WHERE c.account_id = $1 \
                 AND c.id IN ({})) p WHERE p.bytes_before <= {left}",
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ")
            );
            let rows: Vec<ContactRow> =
                self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind_all(chunk)).await?;
            bytes = rows.iter().fold(bytes, |b, r| b.saturating_add(r.properties.len()));
            found.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
            answer_fits("ids", found.len(), bytes)?;
        }
        // Each contact once, however often its id was named.
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    pub async fn contact_by_email(&self, account: &str, key: &str) -> Result<Option<ContactRow>> {
        let q =
            format!("SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.email_key = $2");
        Ok(self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(key)).await?)
    }

    /// Applies changes in one transaction, each with its own outcome: NOT_FOUND, ABORTED when
    /// the contact moved past the expected version, ALREADY_EXISTS for a taken email. `now` is
    /// read once the contacts are locked, so a contact's changes are timed in the order they
    /// commit and its newest history entry is the value it holds.
    pub async fn update_contacts(
        &self,
        account: &str,
        changes: Vec<Change>,
        origin: &Origin,
        now: impl FnOnce() -> DateTime<Utc>,
    ) -> Result<Vec<Result<ContactRow>>> {
        let mut tx = self.begin_values_write(account).await?;
        let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        let mut current = locked_contacts(&mut tx, &self.db, account, &ids).await?;
        let now = now();
        let mut out = Vec::with_capacity(changes.len());
        for ch in changes {
            // A contact named again in the batch is changed from what the earlier change left.
            let row = current.remove(&ch.id);
            let outcome = update_contact(&mut tx, account, row, ch, origin, now).await?;
            if let Ok(updated) = &outcome {
                current.insert(updated.id.clone(), updated.clone());
            }
            out.push(outcome);
        }
        let out = rescored(&mut tx, &self.db, account, out, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Deletes contacts (erase: a GDPR erasure, which marketing-status honours by also removing
    /// the audit trail). Answers the ids deleted and those not found.
    pub async fn delete_contacts(
        &self,
        account: &str,
        ids: &[String],
        erase: bool,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut tx = self.db.begin_write().await?;
        let gone = remove_contacts(&mut tx, account, ids).await?;
        let events = gone
            .iter()
            .map(|r| {
                let deleted = mpb::ContactDeleted { contact_id: r.id.clone(), erase };
                contact_event(account, now, mpb::contact_event::Payload::Deleted(deleted))
            })
            .collect();
        send_events(&mut tx, account, events, now).await?;
        tx.commit().await?;
        let deleted: Vec<String> = gone.into_iter().map(|r| r.id).collect();
        let not_found = ids.iter().filter(|id| !deleted.contains(id)).cloned().collect();
        Ok((deleted, not_found))
    }

    /// Merges `secondary` into `primary`: the primary's non-empty values win, the secondary's
    /// fill the gaps, and `choices` names the side whose value a property takes; its list
    /// memberships, history, timeline and behaviour move over, and it disappears. marketing-status makes
    /// the result marketing if either was.
    pub async fn merge(
        &self,
        account: &str,
        (primary, secondary): (&str, &str),
        choices: &BTreeMap<String, duplicates_rules::Side>,
        catalog: &Catalog,
        user: &str,
        now: impl FnOnce() -> DateTime<Utc>,
    ) -> Result<ContactRow> {
        let mut tx = self.begin_values_write(account).await?;
        let mut both = locked_contacts(&mut tx, &self.db, account, &[primary, secondary]).await?;
        // Read once both are locked, as in update_contacts.
        let now = now();
        let p = both.remove(primary).ok_or_else(|| Error::no_contact(primary))?;
        let s = both.remove(secondary).ok_or_else(|| Error::no_contact(secondary))?;
        let s_values = s.values();
        let values = duplicates_rules::merge_values(&p.values(), &s_values, choices);
        // Values of properties deleted since are dropped; the rest are stored normalised already.
        let typed: BTreeMap<String, Value> = values
            .iter()
            .filter_map(|(k, v)| {
                catalog.get(k).and_then(|d| crate::properties::normalize(d, v).ok()).map(|v| (k.clone(), v))
            })
            .collect();
        let shown: BTreeMap<String, String> =
            typed.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
        let before = p.values();
        let before_len = p.properties.len();
        let merged =
            ContactRow { properties: json(&shown), version: p.version + 1, updated_at: micros(now), ..p };
        // The secondary's values fill the primary's gaps: together they may pass what one
        // contact holds.
        if merged.properties.len() > before_len
            && let Err(why) = crate::properties::check_total(&merged.properties)
        {
            return Err(Error::FailedPrecondition(format!(
                "merged, {why}: clear values of either contact first, or choose the primary's"
            )));
        }
        let update = Sql::new(SET_PROPERTIES)
            .bind(&merged.properties)
            .bind(merged.version)
            .bind(merged.updated_at)
            .bind(account)
            .bind(primary);
        tx.execute(update).await?;
        write_values(&mut tx, account, primary, &typed).await?;
        duplicates::write_keys(&mut tx, account, primary, &duplicates::email_key(&merged), &shown).await?;
        // The primary's own history and the secondary's go on together; the values the merge
        // changed are its own entries.
        history::move_history(&mut tx, account, secondary, primary).await?;
        engagements::move_engagements(&mut tx, account, secondary, primary).await?;
        behaviour::move_events(&mut tx, account, secondary, primary).await?;
        let origin =
            Origin { source_type: "MERGE".into(), source_id: secondary.into(), user_id: user.into() };
        // The merged values are the latest of the joined history: a merge entry for each the
        // merge changed, or whose latest entry came from the secondary with another value.
        let mut names: std::collections::BTreeSet<String> =
            changed_values(&before, &shown).into_iter().map(|(n, _)| n.to_owned()).collect();
        names.extend(s_values.keys().cloned());
        names.insert(EMAIL.to_owned());
        // Worked out again below, from all the merged contact holds.
        names.retain(|n| !crate::properties::CALCULATED.contains(&n.as_str()));
        let mut wanted: Vec<(String, String)> = Vec::new();
        for name in names {
            let value = if name == EMAIL {
                merged.email.clone()
            } else {
                shown.get(&name).cloned().unwrap_or_default()
            };
            let latest = history::latest(&mut tx, account, primary, &name).await?;
            if latest.unwrap_or_default() != value {
                wanted.push((name, value));
            }
        }
        let entries: Vec<history::Entry> = wanted
            .iter()
            .map(|(name, value)| history::Entry { contact: primary, name, value, origin: &origin })
            .collect();
        history::record(&mut tx, account, &entries, micros(now)).await?;
        consent::merge(&mut tx, account, primary, secondary).await?;
        // Memberships move over; the primary's own ones stay.
        tx.execute(Sql::new(MOVE_MEMBERSHIPS).bind(account).bind(secondary).bind(primary)).await?;
        remove_contacts(&mut tx, account, &[secondary.to_owned()]).await?;
        let merged_event =
            mpb::ContactsMerged { primary_id: primary.to_owned(), secondary_id: secondary.to_owned() };
        let ev = contact_event(account, now, mpb::contact_event::Payload::Merged(merged_event));
        send_events(&mut tx, account, vec![ev], now).await?;
        // Its score from all it now holds; and the contact as it now is (timeline, visits).
        if scoring::scores_anything(&mut tx, account).await? {
            scoring::rescore(&mut tx, &self.db, account, &[primary.to_owned()], micros(now)).await?;
        }
        let merged = contact(&mut tx, account, primary).await?.unwrap_or(merged);
        tx.commit().await?;
        Ok(merged)
    }

    /// Replaces a contact's email and values with placeholders, keeping it (and its status)
    /// for counts and reports.
    pub async fn anonymize(&self, account: &str, id: &str, now: DateTime<Utc>) -> Result<ContactRow> {
        let placeholder = format!("anonymized-{id}@anonymized.invalid");
        let change = Change {
            id: id.to_owned(),
            email: Some(Email { address: placeholder.clone(), key: placeholder }),
            ..Change::default()
        };
        let current = contact(&mut self.db.conn().await?, account, id).await?;
        let current = current.ok_or_else(|| Error::no_contact(id))?;
        let cleared = current.values().into_keys().map(|k| (k, None)).collect();
        let origin = Origin { source_type: "SYSTEM".into(), ..Origin::default() };
        let changes = vec![Change { values: cleared, ..change }];
        let mut out = self.update_contacts(account, changes, &origin, || now).await?;
        // Nothing of what it held is kept: not its consent, not its values' history.
        let mut tx = self.db.begin_write().await?;
        let q = "DELETE FROM consents WHERE account_id = $1 AND contact_id = $2";
        tx.execute(Sql::new(q).bind(account).bind(id)).await?;
        history::forget(&mut tx, account, id).await?;
        forget_answers(&mut tx, account, id).await?;
        // Its timeline's notes, emails and meetings hold what it said and did.
        let q = "DELETE FROM engagements WHERE account_id = $1 AND contact_id = $2";
        tx.execute(Sql::new(q).bind(account).bind(id)).await?;
        let q = "UPDATE contacts SET last_activity_at = 0 WHERE account_id = $1 AND id = $2";
        tx.execute(Sql::new(q).bind(account).bind(id)).await?;
        behaviour::forget_events(&mut tx, account, id).await?;
        tx.commit().await?;
        // As it is now: without the timeline's time and the visits it no longer has.
        let anonymized = out.pop().expect("one change, one outcome")?;
        Ok(contact(&mut self.db.conn().await?, account, id).await?.unwrap_or(anonymized))
    }

    /// Asks marketing-status, through the outbox, to make existing contacts marketing on behalf
    /// of `user` (an import's "set as marketing" for the contacts it updated).
    pub async fn request_marketing(
        &self,
        account: &str,
        ids: &[String],
        source_id: &str,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let events = ids
            .chunks(10_000)
            .map(|chunk| {
                contact_event(
                    account,
                    now,
                    mpb::contact_event::Payload::MarketingRequested(mpb::MarketingRequested {
                        contact_ids: chunk.to_vec(),
                        source: Some(contactier_proto::common::v1::Source {
                            r#type: contactier_proto::common::v1::SourceType::Import as i32,
                            id: source_id.to_owned(),
                        }),
                        user_id: user.to_owned(),
                    }),
                )
            })
            .collect();
        let mut tx = self.begin_owned_write().await?;
        send_events(&mut tx, account, events, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the planner's statistics of the contact tables.
    pub async fn refresh_statistics(&self) -> Result<()> {
        self.db.execute(Sql::new("ANALYZE contacts")).await?;
        self.db.execute(Sql::new("ANALYZE contact_values")).await?;
        Ok(())
    }

    pub async fn total(&self, account: &str) -> Result<i64> {
        let q = "SELECT total FROM contact_totals WHERE account_id = $1";
        let t: Option<i64> = self.db.scalar_optional(Sql::new(q).bind(account)).await?;
        Ok(t.unwrap_or(0))
    }
}

/// Creates contacts inside a transaction: the rows, their values and history, the account's
/// total and the events for marketing-status; each with its own outcome.
/// The columns a new contact is written with.
const NEW_CONTACT_COLUMNS: [&str; 14] = [
    "account_id",
    "id",
    "email",
    "email_key",
    "properties",
    "version",
    "source_type",
    "source_id",
    "created_at",
    "updated_at",
    "match_keys_version",
    "score_due_at",
    "score_reached",
    "source_row",
];

pub(crate) async fn insert_contacts(
    tx: &mut impl Tx,
    db: &Db,
    account: &str,
    contacts: &[NewContact],
    now: DateTime<Utc>,
) -> Result<Vec<Result<ContactRow>>> {
    let at = micros(now);
    // Scored before they are written, from their values alone (a new contact has no events
    // or consent yet): the rows go in as scored, with nothing to read back.
    let scorer = match scoring::scores_anything(tx, account).await? {
        true => Some(scoring::Scorer::load(tx, account).await?).filter(scoring::Scorer::has_rules),
        false => None,
    };
    let rows: Vec<(ContactRow, &NewContact, scoring::Worked)> = contacts
        .iter()
        .map(|c| {
            let mut shown: BTreeMap<String, String> =
                c.values.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
            let worked = match &scorer {
                Some(s) => s.work(&shown, &[], false, at, Some(false)),
                None => scoring::Worked { changes: Vec::new(), due: 0, reached: false },
            };
            for (name, value) in &worked.changes {
                shown.insert((*name).to_owned(), value.clone());
            }
            let row = ContactRow {
                id: new_id(),
                email: c.email.address.clone(),
                properties: json(&shown),
                version: 1,
                source_type: c.source_type.clone(),
                source_id: c.source_id.clone(),
                created_at: at,
                updated_at: at,
                last_activity_at: 0,
                visits: VisitColumns::default(),
            };
            (row, c, worked)
        })
        .collect();
    let mut fresh = Rows::with_capacity(NEW_CONTACT_COLUMNS.len(), rows.len());
    // Written in the order of their addresses: two writers of the same addresses (two imports
    // of one file in different orders) then wait on each other's keys in one order, never in a
    // cycle (a deadlock, which failed one of them).
    let mut by_address: Vec<&(ContactRow, &NewContact, scoring::Worked)> = rows.iter().collect();
    by_address.sort_by(|a, b| a.1.email.key.cmp(&b.1.email.key));
    for (row, c, worked) in by_address {
        fresh.push([
            account.into(),
            (&row.id).into(),
            (&row.email).into(),
            (&c.email.key).into(),
            (&row.properties).into(),
            1i64.into(),
            (&row.source_type).into(),
            (&row.source_id).into(),
            at.into(),
            at.into(),
            1i64.into(),
            worked.due.into(),
            worked.reached.into(),
            c.source_row.into(),
        ]);
    }
    // A contact whose email is taken by now is left as it is.
    let inserted: HashSet<String> = tx
        .append_new("contacts", &NEW_CONTACT_COLUMNS, &fresh, "(account_id, email_key)", "id")
        .await?
        .into_iter()
        .collect();
    let values: Vec<(&str, &str, &str, Option<f64>)> = rows
        .iter()
        .filter(|(row, ..)| inserted.contains(&row.id))
        .flat_map(|(row, c, worked)| {
            let given = c
                .values
                .iter()
                .filter(|(name, _)| !worked.changes.iter().any(|(n, _)| n == name))
                .map(move |(name, v)| (row.id.as_str(), name.as_str(), v.text.as_str(), v.num));
            let scored = worked.changes.iter().map(move |(name, value)| {
                (row.id.as_str(), *name, value.as_str(), scoring::num_of(name, value))
            });
            given.chain(scored)
        })
        .collect();
    let mut appended = Rows::with_capacity(5, values.len());
    for (id, name, text, num) in &values {
        appended.push([account.into(), (*id).into(), (*name).into(), (*text).into(), (*num).into()]);
    }
    tx.append("contact_values", &["account_id", "contact_id", "name", "value", "num"], &appended).await?;
    let origins: Vec<Origin> = rows
        .iter()
        .map(|(_, c, _)| Origin {
            source_type: c.source_type.clone(),
            source_id: c.source_id.clone(),
            user_id: c.user_id.clone(),
        })
        .collect();
    let scored_by = scoring::origin();
    let entries: Vec<history::Entry> = rows
        .iter()
        .zip(&origins)
        .filter(|((row, ..), _)| inserted.contains(&row.id))
        .flat_map(|((row, c, worked), origin)| {
            let email = history::Entry { contact: &row.id, name: EMAIL, value: &row.email, origin };
            let values = c.values.iter().map(move |(name, v)| history::Entry {
                contact: &row.id,
                name,
                value: &v.text,
                origin,
            });
            let scored = worked.changes.iter().map(|(name, value)| history::Entry {
                contact: &row.id,
                name,
                value,
                origin: &scored_by,
            });
            std::iter::once(email).chain(values).chain(scored)
        })
        .collect();
    history::record(tx, account, &entries, at).await?;
    // Their match keys for duplicate candidates, a few statements for many.
    let keys: Vec<(&str, duplicates_rules::Reason, String)> = rows
        .iter()
        .filter(|(row, ..)| inserted.contains(&row.id))
        .flat_map(|(row, c, _)| {
            let shown = c.values.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
            duplicates_rules::keys(&c.email.key, &shown)
                .into_iter()
                .map(move |(r, k)| (row.id.as_str(), r, k))
        })
        .collect();
    let mut matches = Rows::with_capacity(4, keys.len());
    for (id, reason, key) in &keys {
        matches.push([account.into(), (*id).into(), reason.as_str().into(), key.into()]);
    }
    tx.append("contact_match_keys", &["account_id", "contact_id", "reason", "match_key"], &matches).await?;
    let events: Vec<mpb::ContactEvent> = rows
        .iter()
        .filter(|(row, ..)| inserted.contains(&row.id))
        .map(|(row, c, _)| created_event(account, now, row, c))
        .collect();
    add_total(tx, account, events.len() as i64).await?;
    send_events(tx, account, events, now).await?;
    // The contacts already there, in one read, so each refusal can name the one to go to.
    let taken: Vec<&str> = rows
        .iter()
        .filter(|(row, ..)| !inserted.contains(&row.id))
        .map(|(_, c, _)| c.email.key.as_str())
        .collect();
    let there: HashMap<String, String> = if taken.is_empty() {
        HashMap::new()
    } else {
        let sql = format!(
            "SELECT email_key, id FROM contacts WHERE account_id = $1 AND {}",
            db.json_in("email_key", 2)
        );
        let taken = serde_json::to_string(&taken).expect("JSON of strings");
        let found: Vec<(String, String)> =
            tx.fetch_all(Sql::new(AssertSqlSafe(sql)).bind(account).bind(taken)).await?;
        found.into_iter().collect()
    };
    Ok(rows
        .iter()
        .map(|(row, c, _)| {
            if inserted.contains(&row.id) {
                Ok(row.clone())
            } else {
                Err(Error::EmailTaken(there.get(&c.email.key).cloned()))
            }
        })
        .collect())
}

/// Works out the scores of the contacts written (when the account scores at all) and answers
/// them as they now are.
async fn rescored(
    tx: &mut impl Tx,
    db: &Db,
    account: &str,
    outcomes: Vec<Result<ContactRow>>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<ContactRow>>> {
    let ids: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().ok().map(|r| r.id.clone())).collect();
    if ids.is_empty() || !scoring::scores_anything(tx, account).await? {
        return Ok(outcomes);
    }
    let at = micros(now);
    let saved = scoring::rescore(tx, db, account, &ids, at).await?;
    // A contact changed twice in the batch is answered as it ends up, each time.
    let mut seen = HashSet::new();
    let twice: Vec<&String> = ids.iter().filter(|id| !seen.insert(*id)).collect();
    let mut ended: HashMap<String, ContactRow> = HashMap::new();
    if !twice.is_empty() {
        let q = format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND {}",
            db.json_in("c.id", 2)
        );
        let twice = serde_json::to_string(&twice).expect("JSON of strings");
        let rows: Vec<ContactRow> =
            tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(twice)).await?;
        ended.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.map(|mut r| {
                if let Some(row) = ended.get(&r.id) {
                    return row.clone();
                }
                if let Some(properties) = saved.get(&r.id) {
                    r.properties = properties.clone();
                    r.version += 1;
                    r.updated_at = at;
                }
                r
            })
        })
        .collect())
}

/// The event of a new contact for marketing-status.
fn created_event(account: &str, now: DateTime<Utc>, row: &ContactRow, c: &NewContact) -> mpb::ContactEvent {
    use contactier_proto::common::v1::Source;
    let source = Source {
        r#type: contactier_runtime::convert::source_type(&c.source_type) as i32,
        id: c.source_id.clone(),
    };
    let created = mpb::ContactCreated {
        contact_id: row.id.clone(),
        source: Some(source),
        requested_status: c.requested_status,
        user_id: c.user_id.clone(),
    };
    contact_event(account, now, mpb::contact_event::Payload::Created(created))
}

/// The values of `after` that differ from `before`, with '' for those cleared.
fn changed_values<'a>(
    before: &'a BTreeMap<String, String>,
    after: &'a BTreeMap<String, String>,
) -> Vec<(&'a str, &'a str)> {
    let set = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, v)| (k.as_str(), v.as_str()));
    let cleared = before.keys().filter(|k| !after.contains_key(*k)).map(|k| (k.as_str(), ""));
    set.chain(cleared).collect()
}

/// One change of [`Store::update_contacts`], with its outcome.
async fn update_contact(
    tx: &mut impl Tx,
    account: &str,
    row: Option<ContactRow>,
    ch: Change,
    origin: &Origin,
    now: DateTime<Utc>,
) -> Result<Result<ContactRow>> {
    let Some(row) = row else {
        return Ok(Err(Error::no_contact(&ch.id)));
    };
    if ch.expected_version != 0 && ch.expected_version != row.version {
        let why = format!("contact {} is at version {}, not {}", ch.id, row.version, ch.expected_version);
        return Ok(Err(Error::Aborted(why)));
    }
    if let Some(e) = &ch.email {
        let q = "SELECT id FROM contacts WHERE account_id = $1 AND email_key = $2 AND id <> $3";
        let taken: Option<String> =
            tx.scalar_optional(Sql::new(q).bind(account).bind(&e.key).bind(&ch.id)).await?;
        if taken.is_some() {
            return Ok(Err(Error::EmailTaken(taken)));
        }
    }
    let mut shown = row.values();
    for (name, v) in &ch.values {
        match v {
            Some(v) => shown.insert(name.clone(), v.text.clone()),
            None => shown.remove(name),
        };
    }
    let email = ch.email.as_ref().map_or(row.email.clone(), |e| e.address.clone());
    if shown == row.values() && email == row.email {
        // Nothing changes: the version stays, so no other writer is sent ABORTED for it.
        return Ok(Ok(row));
    }
    let properties = json(&shown);
    if properties.len() > row.properties.len()
        && let Err(why) = crate::properties::check_total(&properties)
    {
        return Ok(Err(Error::invalid("properties", why)));
    }
    let key = ch.email.as_ref().map_or(row.email.to_lowercase(), |e| e.key.clone());
    let before = row.values();
    let mut entries: Vec<history::Entry> = changed_values(&before, &shown)
        .into_iter()
        .map(|(name, value)| history::Entry { contact: &ch.id, name, value, origin })
        .collect();
    if email != row.email {
        entries.push(history::Entry { contact: &ch.id, name: EMAIL, value: &email, origin });
    }
    history::record(tx, account, &entries, micros(now)).await?;
    let updated = ContactRow { email, properties, version: row.version + 1, updated_at: micros(now), ..row };
    let update = Sql::new(UPDATE_CONTACT)
        .bind(&updated.email)
        .bind(&key)
        .bind(&updated.properties)
        .bind(updated.version)
        .bind(updated.updated_at)
        .bind(account)
        .bind(&ch.id);
    tx.execute(update).await?;
    duplicates::write_keys(tx, account, &ch.id, &key, &shown).await?;
    for (name, v) in &ch.values {
        let q = "DELETE FROM contact_values WHERE account_id = $1 AND contact_id = $2 AND name = $3";
        tx.execute(Sql::new(q).bind(account).bind(&ch.id).bind(name)).await?;
        if let Some(v) = v {
            tx.execute(
                Sql::new(INSERT_VALUE).bind(account).bind(&ch.id).bind(name).bind(&v.text).bind(v.num),
            )
            .await?;
        }
    }
    Ok(Ok(updated))
}

const DEFINITIONS: &str = concat!(
    "SELECT ",
    definition_columns!(),
    " FROM property_definitions WHERE account_id = $1 ORDER BY name"
);

const INSERT_DEFINITION: &str = "INSERT INTO property_definitions (account_id, name, label, type, options, \
     description, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, name) DO NOTHING";

const UPDATE_DEFINITION: &str = "UPDATE property_definitions SET label = $1, options = $2, description = $3 \
     WHERE account_id = $4 AND name = $5";

const SET_PROPERTIES: &str =
    "UPDATE contacts SET properties = $1, version = $2, updated_at = $3 WHERE account_id = $4 AND id = $5";

const UPDATE_CONTACT: &str = "UPDATE contacts SET email = $1, email_key = $2, properties = $3, version = $4, \
     updated_at = $5 WHERE account_id = $6 AND id = $7";

const MOVE_MEMBERSHIPS: &str = "INSERT INTO list_members (account_id, list_id, contact_id, added_at) \
     SELECT account_id, list_id, $3, added_at FROM list_members WHERE account_id = $1 AND contact_id = $2 \
     ON CONFLICT DO NOTHING";

/// Binds filter values in order.
pub(crate) fn bind_filter(q: Sql, binds: &[crate::filter::Bind]) -> Sql {
    binds.iter().fold(q, |q, b| match b {
        crate::filter::Bind::Text(s) => q.bind(s.as_str()),
        crate::filter::Bind::Num(n) => q.bind(*n),
        crate::filter::Bind::Int(i) => q.bind(*i),
    })
}
