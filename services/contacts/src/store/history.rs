//! Property history: every change of a contact's values (and of its email), kept in the
//! transaction that makes it, with where it came from and who made it.

use super::Store;
use crate::error::Result;
use contactier_runtime::convert::new_id;
use contactier_runtime::db::Db;
use contactier_runtime::sql::{Rows, Sql, Tx};
use sqlx::AssertSqlSafe;

/// Who made a change and through what: a source type (`USER`, `IMPORT`, `INTEGRATION`,
/// `WORKFLOW`, `MERGE`, `SYSTEM`, ...), the source's id and the user, if a person.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub source_type: String,
    pub source_id: String,
    pub user_id: String,
}

/// One change to record: a property of a contact and its value after ('' when cleared).
pub(super) struct Entry<'a> {
    pub contact: &'a str,
    pub name: &'a str,
    pub value: &'a str,
    pub origin: &'a Origin,
}

/// The name history keeps the email under, beside the properties.
pub const EMAIL: &str = "email";

/// A kept change.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryRow {
    pub id: String,
    pub name: String,
    pub value: String,
    pub source_type: String,
    pub source_id: String,
    pub user_id: String,
    pub changed_at: i64,
}

const COLUMNS: [&str; 9] =
    ["account_id", "contact_id", "name", "id", "value", "source_type", "source_id", "user_id", "changed_at"];

/// Newest first by (time, id), of one property or of all; entries after the one whose value
/// brings the page past $7 bytes are not read out.
const PAGE: &str = "SELECT id, name, value, source_type, source_id, user_id, changed_at FROM \
     (SELECT id, name, value, source_type, source_id, user_id, changed_at, \
     SUM(octet_length(value)) OVER (ORDER BY changed_at DESC, id DESC) - octet_length(value) AS bytes_before \
     FROM property_history WHERE account_id = $1 AND contact_id = $2 AND ($3 = '' OR name = $3) \
     AND (changed_at, id) < ($4, $5) ORDER BY changed_at DESC, id DESC LIMIT $6) p \
     WHERE p.bytes_before <= $7 ORDER BY changed_at DESC, id DESC";

/// Records changes made at `at`, appended in bulk.
pub(super) async fn record(tx: &mut impl Tx, account: &str, entries: &[Entry<'_>], at: i64) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = entries.iter().map(|_| new_id()).collect();
    let mut rows = Rows::with_capacity(9, entries.len());
    for (e, id) in entries.iter().zip(&ids) {
        rows.push([
            account.into(),
            e.contact.into(),
            e.name.into(),
            id.into(),
            e.value.into(),
            (&e.origin.source_type).into(),
            (&e.origin.source_id).into(),
            (&e.origin.user_id).into(),
            at.into(),
        ]);
    }
    tx.append("property_history", &COLUMNS, &rows).await?;
    Ok(())
}

/// The value the latest change of a contact's property left, if it has changed.
pub(super) async fn latest(
    tx: &mut impl Tx,
    account: &str,
    contact: &str,
    name: &str,
) -> Result<Option<String>> {
    let q = "SELECT value FROM property_history WHERE account_id = $1 AND contact_id = $2 AND name = $3 \
             ORDER BY changed_at DESC, id DESC LIMIT 1";
    Ok(tx.scalar_optional(Sql::new(q).bind(account).bind(contact).bind(name)).await?)
}

/// Gives the history of `from` to `to` (a merge keeps both contacts' histories).
pub(super) async fn move_history(tx: &mut impl Tx, account: &str, from: &str, to: &str) -> Result<()> {
    let q = "UPDATE property_history SET contact_id = $3 WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(from).bind(to)).await?;
    Ok(())
}

/// Forgets every change of a contact (erasure, anonymisation).
pub(super) async fn forget(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    let q = "DELETE FROM property_history WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    Ok(())
}

impl Store {
    /// The contact whose history holds `email_key` as a past address, if one does.
    pub async fn contact_that_had_email(&self, account: &str, email_key: &str) -> Result<Option<String>> {
        // Addresses are kept as given; SQLite's LOWER folds ASCII letters only.
        let (same, key) = match self.db {
            Db::Postgres(_) => ("LOWER(value) = $3", email_key.to_owned()),
            Db::Sqlite(_) => ("value REGEXP $3", format!("(?i)^{}$", regex::escape(email_key))),
        };
        let q = format!(
            "SELECT contact_id FROM property_history WHERE account_id = $1 AND name = $2 \
             AND {same} ORDER BY changed_at DESC LIMIT 1"
        );
        Ok(self.db.scalar_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(EMAIL).bind(key)).await?)
    }

    /// A contact's changes of `name` (every property when empty), newest first, before the
    /// (time, id) given.
    pub async fn property_history(
        &self,
        account: &str,
        contact: &str,
        name: &str,
        before: Option<(i64, String)>,
        limit: i64,
        bytes: usize,
    ) -> Result<Vec<HistoryRow>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let page =
            Sql::new(PAGE).bind(account).bind(contact).bind(name).bind(at).bind(id).bind(limit).bind(bytes);
        Ok(self.db.fetch_all(page).await?)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{NewContact, Store};
    use contactier_runtime::db::Backend;
    use contactier_runtime::sql::Sql;
    use contactier_runtime::testing::TestDb;

    const ACCOUNT: &str = "acct-history";

    /// Values holding what would end a cell or a row of a bulk write (tabs, line breaks,
    /// backslashes, COPY's own marks for "no value" and "end of data") come back as written, in
    /// the contact, its stored values and its history, on both backends.
    async fn awkward_values_are_kept_as_written(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let store = Store::new(t.db.clone());
        let awkward = [
            "tab\there",
            "line\nbreak",
            "back\\slash",
            "\\N",
            "\\.",
            "carriage\rreturn",
            "é 🦀 \"quoted\"",
            "a\\tb",
        ];
        let contacts: Vec<NewContact> = awkward
            .iter()
            .enumerate()
            .map(|(i, v)| {
                NewContact::by_user(&format!("c{i}@example.com"), &[("firstname", v), ("lastname", "x")])
            })
            .collect();
        let made = store.create_contacts(ACCOUNT, contacts, chrono::Utc::now(), None).await.unwrap().unwrap();
        for (outcome, written) in made.into_iter().zip(awkward) {
            let c = outcome.unwrap();
            let read = store.contacts(ACCOUNT, std::slice::from_ref(&c.id)).await.unwrap().remove(0);
            assert_eq!(
                read.values().get("firstname").map(String::as_str),
                Some(written),
                "{backend:?}: the contact"
            );
            let q = "SELECT value FROM contact_values WHERE account_id = $1 AND contact_id = $2 AND name = 'firstname'";
            let stored: String = t.db.scalar(Sql::new(q).bind(ACCOUNT).bind(&c.id)).await.unwrap();
            assert_eq!(stored, written, "{backend:?}: its stored value");
            let history =
                store.property_history(ACCOUNT, &c.id, "firstname", None, 10, usize::MAX).await.unwrap();
            let values: Vec<&str> = history.iter().map(|h| h.value.as_str()).collect();
            assert_eq!(values, [written], "{backend:?}: its history");
        }
    }

    contactier_runtime::backend_tests!(awkward_values_are_kept_as_written);
}
