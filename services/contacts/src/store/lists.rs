//! Lists: static ones hold explicit members; active ones keep a filter that is evaluated live.

use super::Store;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use contactier_runtime::convert::micros;
use contactier_runtime::sql::{Sql, Tx};
use sqlx::AssertSqlSafe;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ListRow {
    pub id: String,
    pub name: String,
    /// "static" or "active".
    pub r#type: String,
    /// The encoded ContactFilter of an active list.
    pub filter: Vec<u8>,
    pub created_at: i64,
}

const LIST_COLUMNS: &str = "id, name, type, filter, created_at";

const INSERT_LIST: &str = "INSERT INTO lists (account_id, id, name, name_key, type, filter, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Rows of the version before the key have none: their LOWER(name) stands for it.
const NAMED: &str = "SELECT id FROM lists WHERE account_id = $1 AND id <> $3 \
     AND (name_key = $2 OR (name_key IS NULL AND LOWER(name) = $2)) LIMIT 1";

const ADD_MEMBER: &str = "INSERT INTO list_members (account_id, list_id, contact_id, added_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

const MEMBERS: &str = "SELECT contact_id FROM list_members WHERE account_id = $1 AND list_id = $2 \
     AND contact_id > $3 ORDER BY contact_id LIMIT $4";

fn column(rows: Vec<(String,)>) -> Vec<String> {
    rows.into_iter().map(|r| r.0).collect()
}

impl Store {
    /// Adds a list; FAILED_PRECONDITION when the account has `max` already.
    pub async fn create_list(&self, account: &str, list: &ListRow, max: i64) -> Result<()> {
        let have: i64 = self
            .db
            .scalar(Sql::new("SELECT COUNT(*) FROM lists WHERE account_id = $1").bind(account))
            .await?;
        if have >= max {
            return Err(crate::error::Error::quota_reached("lists", max));
        }
        self.name_free(account, &list.name, &list.id).await?;
        let key = crate::names::list_name_key(&list.name);
        let insert = Sql::new(INSERT_LIST)
            .bind(account)
            .bind(&list.id)
            .bind(&list.name)
            .bind(&key)
            .bind(&list.r#type)
            .bind(&list.filter)
            .bind(list.created_at);
        let written = self.db.execute(insert).await;
        self.unless_name_taken(account, &list.name, &list.id, written).await.map(drop)
    }

    pub async fn list(&self, account: &str, id: &str) -> Result<ListRow> {
        let q = format!("SELECT {LIST_COLUMNS} FROM lists WHERE account_id = $1 AND id = $2");
        let row: Option<ListRow> =
            self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(id)).await?;
        row.ok_or_else(|| Error::NotFound(format!("list {id}")))
    }

    /// Lists in id order after `after`.
    pub async fn lists(&self, account: &str, after: &str, limit: i64) -> Result<Vec<ListRow>> {
        let q = format!(
            "SELECT {LIST_COLUMNS} FROM lists WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        Ok(self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(after).bind(limit)).await?)
    }

    /// ALREADY_EXISTS (naming the list) when another list of the account has `name`, without
    /// regard to case or Unicode form: a name finds one list.
    pub async fn name_free(&self, account: &str, name: &str, id: &str) -> Result<()> {
        let key = crate::names::list_name_key(name);
        let taken: Option<String> =
            self.db.scalar_optional(Sql::new(NAMED).bind(account).bind(&key).bind(id)).await?;
        match taken {
            Some(other) => Err(Error::Exists {
                kind: "list",
                id: other,
                message: format!("name: another list is named {name:?}"),
            }),
            None => Ok(()),
        }
    }

    /// A write that lost a race for a name (the unique index refused it) is ALREADY_EXISTS
    /// naming the list that won, as the check before it would have said.
    async fn unless_name_taken<T>(
        &self,
        account: &str,
        name: &str,
        id: &str,
        written: std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        match written {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                self.name_free(account, name, id).await?;
                Err(Error::Exists {
                    kind: "list",
                    id: String::new(),
                    message: format!("name: another list is named {name:?}"),
                })
            }
            other => Ok(other?),
        }
    }

    pub async fn update_list(&self, account: &str, id: &str, name: &str, filter: &[u8]) -> Result<()> {
        self.name_free(account, name, id).await?;
        let key = crate::names::list_name_key(name);
        let q = "UPDATE lists SET name = $1, name_key = $2, filter = $3 WHERE account_id = $4 AND id = $5";
        let written =
            self.db.execute(Sql::new(q).bind(name).bind(&key).bind(filter).bind(account).bind(id)).await;
        let n = self.unless_name_taken(account, name, id, written).await?;
        if n == 0 {
            return Err(Error::NotFound(format!("list {id}")));
        }
        Ok(())
    }

    pub async fn delete_list(&self, account: &str, id: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let q = "DELETE FROM lists WHERE account_id = $1 AND id = $2";
        if tx.execute(Sql::new(q).bind(account).bind(id)).await? == 0 {
            return Err(Error::NotFound(format!("list {id}")));
        }
        let q = "DELETE FROM list_members WHERE account_id = $1 AND list_id = $2";
        tx.execute(Sql::new(q).bind(account).bind(id)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds existing contacts to a static list; answers how many were added and the ids that
    /// name no contact.
    pub async fn add_members(
        &self,
        account: &str,
        list: &str,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(i64, Vec<String>)> {
        let mut tx = self.db.begin_write().await?;
        let (mut added, mut missing) = (0, Vec::new());
        for id in ids {
            let q = "SELECT id FROM contacts WHERE account_id = $1 AND id = $2";
            let known: Option<String> = tx.scalar_optional(Sql::new(q).bind(account).bind(id)).await?;
            if known.is_none() {
                missing.push(id.clone());
                continue;
            }
            let add = Sql::new(ADD_MEMBER).bind(account).bind(list).bind(id).bind(micros(now));
            added += tx.execute(add).await? as i64;
        }
        tx.commit().await?;
        Ok((added, missing))
    }

    pub async fn remove_members(&self, account: &str, list: &str, ids: &[String]) -> Result<i64> {
        let mut removed = 0;
        for id in ids {
            let q = "DELETE FROM list_members WHERE account_id = $1 AND list_id = $2 AND contact_id = $3";
            removed += self.db.execute(Sql::new(q).bind(account).bind(list).bind(id)).await? as i64;
        }
        Ok(removed)
    }

    /// Members of a static list in id order after `after`.
    pub async fn members(&self, account: &str, list: &str, after: &str, limit: i64) -> Result<Vec<String>> {
        let page = Sql::new(MEMBERS).bind(account).bind(list).bind(after).bind(limit);
        Ok(column(self.db.fetch_all(page).await?))
    }

    pub async fn member_count(&self, account: &str, list: &str) -> Result<i64> {
        let q = "SELECT COUNT(*) FROM list_members WHERE account_id = $1 AND list_id = $2";
        Ok(self.db.scalar(Sql::new(q).bind(account).bind(list)).await?)
    }
}

impl Store {
    /// Static lists a contact belongs to.
    pub async fn lists_of(&self, account: &str, contact: &str) -> Result<Vec<String>> {
        let q = "SELECT list_id FROM list_members WHERE account_id = $1 AND contact_id = $2 ORDER BY list_id";
        Ok(column(self.db.fetch_all(Sql::new(q).bind(account).bind(contact)).await?))
    }

    /// Ids of the contacts with these email keys.
    pub async fn ids_by_email(
        &self,
        account: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let found = self.email_ids(account, keys, None).await?;
        Ok(found.into_iter().map(|(key, (id, _))| (key, id)).collect())
    }

    /// Of these email keys, those of contacts the import `import` created, by key: each
    /// contact's id and the number of the file's row that created it.
    pub async fn created_by_import(
        &self,
        account: &str,
        import: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, (String, i64)>> {
        self.email_ids(account, keys, Some(import)).await
    }

    /// Ids and creating rows by email key, a chunk of keys per statement; only an import's
    /// creations with `import`.
    async fn email_ids(
        &self,
        account: &str,
        keys: &[String],
        import: Option<&str>,
    ) -> Result<std::collections::HashMap<String, (String, i64)>> {
        let (only, first) = match import {
            Some(_) => (" AND source_type = 'IMPORT' AND source_id = $2", 3),
            None => ("", 2),
        };
        let mut out = std::collections::HashMap::new();
        for chunk in keys.chunks(self.db.rows_per_statement(1) - (first - 1)) {
            let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + first)).collect();
            let sql = format!(
                "SELECT email_key, id, source_row FROM contacts WHERE account_id = $1{only} AND email_key IN ({})",
                params.join(", ")
            );
            let q = Sql::new(AssertSqlSafe(sql)).bind(account).bind_all(import).bind_all(chunk);
            let rows: Vec<(String, String, i64)> = self.db.fetch_all(q).await?;
            out.extend(rows.into_iter().map(|(key, id, row)| (key, (id, row))));
        }
        Ok(out)
    }
}
