//! Contact storage, written once for SQLite and PostgreSQL. Every write changes the contact, its
//! searchable values, the account's total and the outbox event for marketing-status in one
//! transaction.

use crate::email::Email;
use crate::error::{Error, Result};
use crate::properties::{Catalog, Definition, PropertyOption, PropertyType, Value};
use chrono::{DateTime, Utc};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::{BeginWrite, Db, placeholders};
use contactier_runtime::outbox::{EventTx, new_event_id};
use contactier_runtime::with_pool;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

mod consent;
mod imports;
mod lists;
mod search;

pub use consent::ConsentRow;
pub use imports::{ImportErrorRow, ImportRow, Start};
pub use lists::ListRow;
pub use search::{Cursor, SortKey};

/// Outbox topic of the contact events for marketing-status (ApplyContactEventsRequest payloads).
pub const MARKETING_STATUS_TOPIC: &str = "marketing-status";

/// A stored contact.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ContactRow {
    pub id: String,
    pub email: String,
    pub properties: String,
    pub version: i64,
    pub source_type: String,
    pub source_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ContactRow {
    pub fn values(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.properties).unwrap_or_default()
    }
}

pub(crate) const CONTACT_COLUMNS: &str =
    "c.id, c.email, c.properties, c.version, c.source_type, c.source_id, c.created_at, c.updated_at";

/// Saves an answer under its request id; the first one saved stays.
const KEEP_ANSWER: &str = "INSERT INTO request_answers (account_id, request_id, answer, digest) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

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
    /// MarketingStatus the creator asks for; 0 for the source's default.
    pub requested_status: i32,
    pub user_id: String,
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
        occurred_at: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
        payload: Some(payload),
    }
}

/// Replaces a contact's searchable values with `values`.
macro_rules! write_values {
    ($tx:expr, $account:expr, $id:expr, $values:expr) => {{
        let values: &BTreeMap<String, Value> = $values;
        sqlx::query("DELETE FROM contact_values WHERE account_id = $1 AND contact_id = $2")
            .bind($account)
            .bind($id)
            .execute(&mut *$tx)
            .await?;
        for (name, v) in values {
            sqlx::query(
                "INSERT INTO contact_values (account_id, contact_id, name, value, num) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind($account)
            .bind($id)
            .bind(name)
            .bind(&v.text)
            .bind(v.num)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// Queues events for marketing-status as one outbox entry.
macro_rules! send_events {
    ($tx:expr, $account:expr, $events:expr, $now:expr) => {{
        let events: Vec<mpb::ContactEvent> = $events;
        if !events.is_empty() {
            let batch = mpb::ApplyContactEventsRequest { events };
            $tx.enqueue(&new_event_id(), MARKETING_STATUS_TOPIC, $account, &batch.encode_to_vec(), $now)
                .await?;
        }
    }};
}

/// Adds `delta` to the account's total.
macro_rules! add_total {
    ($tx:expr, $account:expr, $delta:expr) => {{
        let delta: i64 = $delta;
        if delta != 0 {
            sqlx::query(
                "INSERT INTO contact_totals (account_id, total) VALUES ($1, $2) \
                 ON CONFLICT (account_id) DO UPDATE SET total = contact_totals.total + excluded.total",
            )
            .bind($account)
            .bind(delta)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// Removes contacts with everything attached to them; answers the rows removed.
macro_rules! remove_contacts {
    ($tx:expr, $account:expr, $ids:expr) => {{
        let ids: &[String] = $ids;
        let mut gone: Vec<ContactRow> = Vec::new();
        let q = format!(
            "DELETE FROM contacts WHERE account_id = $1 AND id = $2 RETURNING {}",
            CONTACT_COLUMNS.replace("c.", "")
        );
        for id in ids {
            let row: Option<ContactRow> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
                .bind($account)
                .bind(id)
                .fetch_optional(&mut *$tx)
                .await?;
            if let Some(row) = row {
                for table in ["contact_values", "list_members", "consents"] {
                    let q = format!("DELETE FROM {table} WHERE account_id = $1 AND contact_id = $2");
                    sqlx::query(sqlx::AssertSqlSafe(q)).bind($account).bind(id).execute(&mut *$tx).await?;
                }
                gone.push(row);
            }
        }
        add_total!($tx, $account, -(gone.len() as i64));
        gone
    }};
}

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
        Self { single: Arc::new(single::reads(db.clone())), db }
    }

    // ---- property definitions ----

    pub async fn custom_definitions(&self, account: &str) -> Result<Vec<Definition>> {
        let rows: Vec<DefinitionRow> = with_pool!(&self.db, pool => sqlx::query_as(concat!(
            "SELECT ", definition_columns!(), " FROM property_definitions WHERE account_id = $1 ORDER BY name",
        )).bind(account).fetch_all(pool).await?);
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
        let have: i64 = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM property_definitions WHERE account_id = $1",
        ).bind(account).fetch_one(pool).await?);
        if have >= max {
            return Err(Error::quota_reached("custom properties", max));
        }
        let n = with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO property_definitions (account_id, name, label, type, options, description, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, name) DO NOTHING",
        ).bind(account).bind(&d.name).bind(&d.label).bind(d.ptype.as_str()).bind(options_json(d)).bind(&d.description)
        .bind(micros(now)).execute(pool).await?.rows_affected());
        if n == 0 {
            return Err(Error::AlreadyExists(format!("property {} exists", d.name)));
        }
        Ok(())
    }

    /// Changes label, description and options; the type stays.
    pub async fn update_property(&self, account: &str, d: &Definition) -> Result<()> {
        let n = with_pool!(&self.db, pool => sqlx::query(
            "UPDATE property_definitions SET label = $1, options = $2, description = $3 WHERE account_id = $4 AND name = $5",
        ).bind(&d.label).bind(options_json(d)).bind(&d.description).bind(account).bind(&d.name).execute(pool).await?.rows_affected());
        if n == 0 {
            return Err(Error::NotFound(format!("property {}", d.name)));
        }
        Ok(())
    }

    /// Deletes a custom property and every value of it.
    pub async fn delete_property(&self, account: &str, name: &str) -> Result<()> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("DELETE FROM property_definitions WHERE account_id = $1 AND name = $2")
                .bind(account).bind(name).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(Error::NotFound(format!("property {name}")));
            }
            sqlx::query("DELETE FROM contact_values WHERE account_id = $1 AND name = $2")
                .bind(account).bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    // ---- idempotency ----

    /// The answer kept under a request id, with the digest of the request it answered.
    pub async fn answer(&self, account: &str, request_id: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT answer, digest FROM request_answers WHERE account_id = $1 AND request_id = $2",
        ).bind(account).bind(request_id).fetch_optional(pool).await?))
    }

    pub async fn keep_answer(
        &self,
        account: &str,
        request_id: &str,
        digest: &str,
        answer: &[u8],
    ) -> Result<()> {
        with_pool!(&self.db, pool => sqlx::query(KEEP_ANSWER)
            .bind(account).bind(request_id).bind(answer).bind(digest).execute(pool).await?.rows_affected());
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
    ) -> Result<Vec<Result<ContactRow>>> {
        let at = micros(now);
        let rows: Vec<(ContactRow, &NewContact)> = contacts
            .iter()
            .map(|c| {
                let shown: BTreeMap<String, String> =
                    c.values.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
                let row = ContactRow {
                    id: new_id(),
                    email: c.email.address.clone(),
                    properties: json(&shown),
                    version: 1,
                    source_type: c.source_type.clone(),
                    source_id: c.source_id.clone(),
                    created_at: at,
                    updated_at: at,
                };
                (row, c)
            })
            .collect();
        let (contacts_per, values_per) = (self.db.rows_per_statement(10), self.db.rows_per_statement(5));
        let outcomes = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let mut inserted: HashSet<String> = HashSet::with_capacity(rows.len());
            for chunk in rows.chunks(contacts_per) {
                let sql = format!(
                    "INSERT INTO contacts (account_id, id, email, email_key, properties, version, source_type, source_id, created_at, updated_at) \
                     VALUES {} ON CONFLICT (account_id, email_key) DO NOTHING RETURNING id",
                    placeholders(chunk.len(), 10)
                );
                let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
                for (row, c) in chunk {
                    q = q.bind(account).bind(&row.id).bind(&row.email).bind(&c.email.key).bind(&row.properties).bind(1i64)
                        .bind(&row.source_type).bind(&row.source_id).bind(at).bind(at);
                }
                let ids: Vec<String> = q.fetch_all(&mut *tx).await?;
                inserted.extend(ids);
            }
            let values: Vec<(&str, &str, &Value)> = rows
                .iter()
                .filter(|(row, _)| inserted.contains(&row.id))
                .flat_map(|(row, c)| c.values.iter().map(move |(name, v)| (row.id.as_str(), name.as_str(), v)))
                .collect();
            for chunk in values.chunks(values_per) {
                let sql = format!(
                    "INSERT INTO contact_values (account_id, contact_id, name, value, num) VALUES {}",
                    placeholders(chunk.len(), 5)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, name, v) in chunk {
                    q = q.bind(account).bind(*id).bind(*name).bind(&v.text).bind(v.num);
                }
                q.execute(&mut *tx).await?;
            }
            let events: Vec<mpb::ContactEvent> = rows
                .iter()
                .filter(|(row, _)| inserted.contains(&row.id))
                .map(|(row, c)| {
                    let source = contactier_proto::common::v1::Source {
                        r#type: contactier_proto::common::v1::SourceType::from_str_name(&format!("SOURCE_TYPE_{}", c.source_type))
                            .unwrap_or_default() as i32,
                        id: c.source_id.clone(),
                    };
                    contact_event(account, now, mpb::contact_event::Payload::Created(mpb::ContactCreated {
                        contact_id: row.id.clone(),
                        source: Some(source),
                        requested_status: c.requested_status,
                        user_id: c.user_id.clone(),
                    }))
                })
                .collect();
            add_total!(tx, account, events.len() as i64);
            send_events!(tx, account, events, now);
            // The contacts already there, in one read, so each refusal can name the one to go to.
            let taken: Vec<&str> = rows.iter().filter(|(row, _)| !inserted.contains(&row.id)).map(|(_, c)| c.email.key.as_str()).collect();
            let there: HashMap<String, String> = if taken.is_empty() {
                HashMap::new()
            } else {
                let sql = format!("SELECT email_key, id FROM contacts WHERE account_id = $1 AND {}", self.db.json_in("email_key", 2));
                sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql))
                    .bind(account).bind(serde_json::to_string(&taken).expect("JSON of strings")).fetch_all(&mut *tx).await?.into_iter().collect()
            };
            let outcomes: Vec<Result<ContactRow>> = rows
                .iter()
                .map(|(row, c)| {
                    if inserted.contains(&row.id) {
                        Ok(row.clone())
                    } else {
                        Err(Error::EmailTaken(there.get(&c.email.key).cloned()))
                    }
                })
                .collect();
            if let Some(KeepAnswer { request_id, digest, answer }) = keep.filter(|k| !k.request_id.is_empty())
                && let Some(bytes) = answer(&outcomes)
            {
                sqlx::query(KEEP_ANSWER).bind(account).bind(request_id).bind(bytes).bind(digest).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            outcomes
        });
        Ok(outcomes)
    }

    /// The contacts with these ids, in the order asked (unknown ids left out), read a chunk of
    /// ids per statement.
    pub async fn contacts(&self, account: &str, ids: &[String]) -> Result<Vec<ContactRow>> {
        let mut found: HashMap<String, ContactRow> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(self.db.rows_per_statement(1) - 1) {
            let q = format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id IN ({})",
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ")
            );
            let rows: Vec<ContactRow> = with_pool!(&self.db, pool => {
                let mut read = sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(account);
                for id in chunk {
                    read = read.bind(id);
                }
                read.fetch_all(pool).await?
            });
            found.extend(rows.into_iter().map(|r| (r.id.clone(), r)));
        }
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    pub async fn contact_by_email(&self, account: &str, key: &str) -> Result<Option<ContactRow>> {
        let q =
            format!("SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.email_key = $2");
        Ok(with_pool!(&self.db, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(key).fetch_optional(pool).await?))
    }

    /// Applies changes in one transaction, each with its own outcome: NOT_FOUND, ABORTED when
    /// the contact moved past the expected version, ALREADY_EXISTS for a taken email.
    pub async fn update_contacts(
        &self,
        account: &str,
        changes: Vec<Change>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<ContactRow>>> {
        let q = format!("SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id = $2");
        let out = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let mut out = Vec::with_capacity(changes.len());
            for ch in changes {
                let row: Option<ContactRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(&ch.id).fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    out.push(Err(Error::no_contact(&ch.id)));
                    continue;
                };
                if ch.expected_version != 0 && ch.expected_version != row.version {
                    out.push(Err(Error::Aborted(format!(
                        "contact {} is at version {}, not {}", ch.id, row.version, ch.expected_version
                    ))));
                    continue;
                }
                if let Some(e) = &ch.email {
                    let taken: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM contacts WHERE account_id = $1 AND email_key = $2 AND id <> $3",
                    ).bind(account).bind(&e.key).bind(&ch.id).fetch_optional(&mut *tx).await?;
                    if taken.is_some() {
                        out.push(Err(Error::EmailTaken(taken)));
                        continue;
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
                    out.push(Ok(row));
                    continue;
                }
                let key = ch.email.as_ref().map_or(row.email.to_lowercase(), |e| e.key.clone());
                let updated = ContactRow {
                    email,
                    properties: json(&shown),
                    version: row.version + 1,
                    updated_at: micros(now),
                    ..row
                };
                sqlx::query(
                    "UPDATE contacts SET email = $1, email_key = $2, properties = $3, version = $4, updated_at = $5 \
                     WHERE account_id = $6 AND id = $7",
                )
                .bind(&updated.email).bind(&key).bind(&updated.properties).bind(updated.version).bind(updated.updated_at)
                .bind(account).bind(&ch.id).execute(&mut *tx).await?;
                for (name, v) in &ch.values {
                    sqlx::query("DELETE FROM contact_values WHERE account_id = $1 AND contact_id = $2 AND name = $3")
                        .bind(account).bind(&ch.id).bind(name).execute(&mut *tx).await?;
                    if let Some(v) = v {
                        sqlx::query(
                            "INSERT INTO contact_values (account_id, contact_id, name, value, num) VALUES ($1, $2, $3, $4, $5)",
                        ).bind(account).bind(&ch.id).bind(name).bind(&v.text).bind(v.num).execute(&mut *tx).await?;
                    }
                }
                out.push(Ok(updated));
            }
            tx.commit().await?;
            out
        });
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
        let gone = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let gone = remove_contacts!(tx, account, ids);
            let events = gone
                .iter()
                .map(|r| contact_event(account, now, mpb::contact_event::Payload::Deleted(mpb::ContactDeleted {
                    contact_id: r.id.clone(),
                    erase,
                })))
                .collect();
            send_events!(tx, account, events, now);
            tx.commit().await?;
            gone
        });
        let deleted: Vec<String> = gone.into_iter().map(|r| r.id).collect();
        let not_found = ids.iter().filter(|id| !deleted.contains(id)).cloned().collect();
        Ok((deleted, not_found))
    }

    /// Merges `secondary` into `primary`: the primary's non-empty values win, the secondary's
    /// fill the gaps, its list memberships move over, and it disappears. marketing-status makes
    /// the result marketing if either was.
    pub async fn merge(
        &self,
        account: &str,
        primary: &str,
        secondary: &str,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) -> Result<ContactRow> {
        let q = format!("SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id = $2");
        let merged = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let p: Option<ContactRow> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(primary).fetch_optional(&mut *tx).await?;
            let s: Option<ContactRow> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(secondary).fetch_optional(&mut *tx).await?;
            let p = p.ok_or_else(|| Error::no_contact(primary))?;
            let s = s.ok_or_else(|| Error::no_contact(secondary))?;
            let mut values = s.values();
            values.extend(p.values().into_iter().filter(|(_, v)| !v.is_empty()));
            // Values of properties deleted since are dropped; the rest are stored normalised already.
            let typed: BTreeMap<String, Value> = values
                .iter()
                .filter_map(|(k, v)| catalog.get(k).and_then(|d| crate::properties::normalize(d, v).ok()).map(|v| (k.clone(), v)))
                .collect();
            let shown: BTreeMap<String, String> = typed.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
            let merged = ContactRow { properties: json(&shown), version: p.version + 1, updated_at: micros(now), ..p };
            sqlx::query("UPDATE contacts SET properties = $1, version = $2, updated_at = $3 WHERE account_id = $4 AND id = $5")
                .bind(&merged.properties).bind(merged.version).bind(merged.updated_at).bind(account).bind(primary)
                .execute(&mut *tx).await?;
            write_values!(tx, account, primary, &typed);
            // Memberships move over; the primary's own ones stay.
            sqlx::query(
                "INSERT INTO list_members (account_id, list_id, contact_id, added_at) \
                 SELECT account_id, list_id, $3, added_at FROM list_members WHERE account_id = $1 AND contact_id = $2 \
                 ON CONFLICT DO NOTHING",
            ).bind(account).bind(secondary).bind(primary).execute(&mut *tx).await?;
            remove_contacts!(tx, account, &[secondary.to_owned()]);
            let ev = contact_event(account, now, mpb::contact_event::Payload::Merged(mpb::ContactsMerged {
                primary_id: primary.to_owned(),
                secondary_id: secondary.to_owned(),
            }));
            send_events!(tx, account, vec![ev], now);
            tx.commit().await?;
            merged
        });
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
        let q = format!("SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id = $2");
        let current: Option<ContactRow> = with_pool!(&self.db, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(id).fetch_optional(pool).await?);
        let current = current.ok_or_else(|| Error::no_contact(id))?;
        let cleared = current.values().into_keys().map(|k| (k, None)).collect();
        let mut out = self.update_contacts(account, vec![Change { values: cleared, ..change }], now).await?;
        with_pool!(&self.db, pool => sqlx::query("DELETE FROM consents WHERE account_id = $1 AND contact_id = $2")
            .bind(account).bind(id).execute(pool).await?.rows_affected());
        out.pop().expect("one change, one outcome")
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
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            send_events!(tx, account, events, now);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Refreshes the planner's statistics of the contact tables.
    pub async fn refresh_statistics(&self) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query("ANALYZE contacts").execute(pool).await?;
            sqlx::query("ANALYZE contact_values").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn total(&self, account: &str) -> Result<i64> {
        let t: Option<i64> = with_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT total FROM contact_totals WHERE account_id = $1",
        ).bind(account).fetch_optional(pool).await?);
        Ok(t.unwrap_or(0))
    }
}

/// Binds filter values in order, on either backend.
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                crate::filter::Bind::Text(s) => q.bind(s.clone()),
                crate::filter::Bind::Num(n) => q.bind(*n),
                crate::filter::Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}
pub(crate) use bind_all;
