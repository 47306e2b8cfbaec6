//! What lifecycle reports read: stage changes from the property history, the stages held now,
//! and when contacts were made.

use super::Store;
use crate::error::Result;
use crate::lifecycle::Change;
use crate::value_index;
use contactier_runtime::sql::Sql;
use sqlx::AssertSqlSafe;

const STAGE: &str = "lifecycle_stage";

/// Stage changes up to an instant, in time order (the history's index by name and time).
const CHANGES: &str = "SELECT contact_id, value, changed_at FROM property_history \
     WHERE account_id = $1 AND name = $2 AND changed_at < $3 ORDER BY changed_at, id";

const CREATED: &str = "SELECT source_type, created_at FROM contacts \
     WHERE account_id = $1 AND created_at >= $2 AND created_at < $3";

impl Store {
    /// Every change of the lifecycle stage before `until`, in time order.
    pub async fn stage_changes(&self, account: &str, until: i64) -> Result<Vec<Change>> {
        let rows: Vec<(String, String, i64)> =
            self.db.fetch_all(Sql::new(CHANGES).bind(account).bind(STAGE).bind(until)).await?;
        Ok(rows.into_iter().map(|(contact, stage, at)| Change { contact, stage, at }).collect())
    }

    /// Contacts per stage now; contacts with none under ''.
    pub async fn stages_now(&self, account: &str) -> Result<Vec<(String, i64)>> {
        // Stages are built-in options, all short: read from the short values' index alone.
        let current = format!(
            "SELECT value, COUNT(*) FROM contact_values WHERE account_id = $1 AND name = $2 AND {} \
             GROUP BY value ORDER BY value",
            value_index::short("value")
        );
        let mut counts: Vec<(String, i64)> =
            self.db.fetch_all(Sql::new(AssertSqlSafe(current)).bind(account).bind(STAGE)).await?;
        let staged: i64 = counts.iter().map(|(_, n)| n).sum();
        let none = self.total(account).await? - staged;
        if none > 0 {
            counts.insert(0, (String::new(), none));
        }
        Ok(counts)
    }

    /// (source type, created at) of the contacts made in `[from, until)`.
    pub async fn created_between(&self, account: &str, from: i64, until: i64) -> Result<Vec<(String, i64)>> {
        Ok(self.db.fetch_all(Sql::new(CREATED).bind(account).bind(from).bind(until)).await?)
    }
}
