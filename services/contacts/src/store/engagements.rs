//! The activity timeline's storage: engagements, and the contact's `last_activity_at` kept in
//! the same transaction as the engagements that decide it.

use super::{NewContact, Store, insert_contacts};
use crate::engagements::{Details, Engagement, Kind};
use crate::error::{Error, Result};
use contactier_runtime::sql::{Sql, Tx};

#[derive(sqlx::FromRow)]
struct EngagementRow {
    id: String,
    contact_id: String,
    occurred_at: i64,
    body: String,
    details: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

impl EngagementRow {
    fn into_model(self) -> Result<Engagement> {
        let details: Details = serde_json::from_str(&self.details)
            .map_err(|e| Error::Internal(format!("stored engagement details: {e}")))?;
        Ok(Engagement {
            id: self.id,
            contact_id: self.contact_id,
            occurred_at: self.occurred_at,
            body: self.body,
            details,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const COLUMNS: &str = "id, contact_id, occurred_at, body, details, created_by, created_at, updated_at";

const INSERT: &str = "INSERT INTO engagements (account_id, id, contact_id, kind, occurred_at, body, details, \
     created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const UPDATE: &str = "UPDATE engagements SET occurred_at = $1, body = $2, details = $3, updated_at = $4 \
     WHERE account_id = $5 AND id = $6";

/// The contact's `last_activity_at` from its engagements, after any of them changed.
const LAST_ACTIVITY: &str = "UPDATE contacts SET last_activity_at = COALESCE((SELECT MAX(occurred_at) \
     FROM engagements e WHERE e.account_id = $1 AND e.contact_id = $2), 0) \
     WHERE account_id = $1 AND id = $2";

/// Newest first by (occurred_at, id), of one kind or of all.
/// Engagements after the one whose body brings the page past $7 bytes are not read out.
const PAGE: &str = "SELECT id, contact_id, occurred_at, body, details, created_by, created_at, updated_at FROM \
     (SELECT id, contact_id, occurred_at, body, details, created_by, created_at, updated_at, \
     SUM(octet_length(body)) OVER (ORDER BY occurred_at DESC, id DESC) - octet_length(body) AS bytes_before \
     FROM engagements WHERE account_id = $1 AND contact_id = $2 AND ($3 = '' OR kind = $3) \
     AND (occurred_at, id) < ($4, $5) ORDER BY occurred_at DESC, id DESC LIMIT $6) p \
     WHERE p.bytes_before <= $7 ORDER BY occurred_at DESC, id DESC";

/// Whose timeline a new engagement goes on.
pub enum Subject {
    Id(String),
    /// By email key; the contact to create when none has it (None: it must exist).
    Email {
        key: String,
        create: Option<NewContact>,
    },
}

/// A call's answer to save with the engagement it logs, under its request id.
pub struct KeepLogged<'a> {
    pub request_id: &'a str,
    pub digest: &'a str,
    pub answer: &'a (dyn Fn(&Logged) -> Vec<u8> + Sync),
}

/// What logging an engagement did.
pub struct Logged {
    pub engagement: Engagement,
    pub contact_created: bool,
}

async fn engagement(tx: &mut impl Tx, account: &str, id: &str) -> Result<Option<Engagement>> {
    let q = format!("SELECT {COLUMNS} FROM engagements WHERE account_id = $1 AND id = $2");
    let row: Option<EngagementRow> =
        tx.fetch_optional(Sql::new(sqlx::AssertSqlSafe(q)).bind(account).bind(id)).await?;
    row.map(EngagementRow::into_model).transpose()
}

async fn touch(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    tx.execute(Sql::new(LAST_ACTIVITY).bind(account).bind(contact)).await?;
    Ok(())
}

/// Moves a contact's engagements to another (a merge keeps both timelines).
pub(super) async fn move_engagements(tx: &mut impl Tx, account: &str, from: &str, to: &str) -> Result<()> {
    let q = "UPDATE engagements SET contact_id = $3 WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(from).bind(to)).await?;
    touch(tx, account, to).await
}

impl Store {
    /// Logs an engagement on its contact's timeline, creating the contact first when the
    /// subject says so; answers it and whether the contact was made (None: a twin under the same
    /// request id logged first, and this call changed nothing). The contact's
    /// `last_activity_at` moves in the same transaction.
    pub async fn log_engagement(
        &self,
        account: &str,
        subject: Subject,
        mut e: Engagement,
        keep: Option<KeepLogged<'_>>,
    ) -> Result<Option<Logged>> {
        let now = chrono::DateTime::from_timestamp_micros(e.created_at).unwrap_or_default();
        let mut tx = self.begin_values_write(account).await?;
        let mut contact_created = false;
        e.contact_id = match subject {
            Subject::Id(id) => {
                let q = "SELECT id FROM contacts WHERE account_id = $1 AND id = $2";
                let found: Option<String> = tx.scalar_optional(Sql::new(q).bind(account).bind(&id)).await?;
                found.ok_or_else(|| Error::no_contact(&id))?
            }
            Subject::Email { key, create } => {
                let q = "SELECT id FROM contacts WHERE account_id = $1 AND email_key = $2";
                let found: Option<String> = tx.scalar_optional(Sql::new(q).bind(account).bind(&key)).await?;
                match (found, create) {
                    (Some(id), _) => id,
                    (None, Some(new)) => {
                        let mut made = insert_contacts(&mut tx, &self.db, account, &[new], now).await?;
                        contact_created = true;
                        made.pop().expect("one contact, one outcome")?.id
                    }
                    (None, None) => {
                        return Err(Error::NoneWith { kind: "contact", key: "email" });
                    }
                }
            }
        };
        let details = serde_json::to_string(&e.details).expect("JSON of plain values");
        let insert = Sql::new(INSERT)
            .bind(account)
            .bind(&e.id)
            .bind(&e.contact_id)
            .bind(e.details.kind().as_str())
            .bind(e.occurred_at)
            .bind(&e.body)
            .bind(details)
            .bind(&e.created_by)
            .bind(e.created_at)
            .bind(e.updated_at);
        tx.execute(insert).await?;
        touch(&mut tx, account, &e.contact_id).await?;
        let logged = Logged { engagement: e, contact_created };
        if let Some(k) = keep.filter(|k| !k.request_id.is_empty()) {
            let answer = (k.answer)(&logged);
            let named =
                [Ok(super::ContactRow { id: logged.engagement.contact_id.clone(), ..Default::default() })];
            if !super::keep_answer(&mut tx, account, k.request_id, k.digest, &answer, &named).await? {
                // A twin under the same request id logged first: this one changes nothing.
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(logged))
    }

    pub async fn engagement(&self, account: &str, id: &str) -> Result<Option<Engagement>> {
        engagement(&mut self.db.conn().await?, account, id).await
    }

    /// Changes an engagement with `change` (its kind and contact stay); NOT_FOUND when the
    /// account has none by that id. `change` may refuse it.
    pub async fn update_engagement(
        &self,
        account: &str,
        id: &str,
        updated_at: i64,
        change: impl FnOnce(Engagement) -> Result<Engagement>,
    ) -> Result<Engagement> {
        let mut tx = self.db.begin_write().await?;
        let before = engagement(&mut tx, account, id).await?;
        let before = before.ok_or_else(|| Error::NotFound(format!("engagement {id}")))?;
        let kind = before.details.kind();
        let mut after = change(before)?;
        if after.details.kind() != kind {
            return Err(Error::invalid("engagement.type", "an engagement keeps its type"));
        }
        after.updated_at = updated_at;
        let details = serde_json::to_string(&after.details).expect("JSON of plain values");
        let q = Sql::new(UPDATE)
            .bind(after.occurred_at)
            .bind(&after.body)
            .bind(details)
            .bind(after.updated_at)
            .bind(account)
            .bind(id);
        tx.execute(q).await?;
        touch(&mut tx, account, &after.contact_id).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Deletes an engagement; NOT_FOUND when the account has none by that id.
    pub async fn delete_engagement(&self, account: &str, id: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let gone = engagement(&mut tx, account, id).await?;
        let gone = gone.ok_or_else(|| Error::NotFound(format!("engagement {id}")))?;
        let q = "DELETE FROM engagements WHERE account_id = $1 AND id = $2";
        tx.execute(Sql::new(q).bind(account).bind(id)).await?;
        touch(&mut tx, account, &gone.contact_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A contact's engagements, newest first, of `kind` or of all, before the (time, id) given.
    pub async fn engagements(
        &self,
        account: &str,
        contact: &str,
        kind: Option<Kind>,
        before: Option<(i64, String)>,
        limit: i64,
        bytes: usize,
    ) -> Result<Vec<Engagement>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let kind = kind.map_or("", Kind::as_str);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let page =
            Sql::new(PAGE).bind(account).bind(contact).bind(kind).bind(at).bind(id).bind(limit).bind(bytes);
        let rows: Vec<EngagementRow> = self.db.fetch_all(page).await?;
        rows.into_iter().map(EngagementRow::into_model).collect()
    }
}
