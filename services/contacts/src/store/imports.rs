//! Import records: progress counters, the final state, and the per-row error report.

use super::Store;
use crate::error::Result;
use contactier_runtime::with_pool;

#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportRow {
    pub id: String,
    pub name: String,
    pub mode: String,
    /// running, completed or failed.
    pub state: String,
    pub rows_read: i64,
    pub created: i64,
    pub updated: i64,
    pub skipped: i64,
    pub failed: i64,
    pub request_id: String,
    pub started_at: i64,
    pub finished_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportErrorRow {
    pub row_number: i64,
    pub column_name: String,
    pub reason: String,
}

const IMPORT_COLUMNS: &str = "id, name, mode, state, rows_read, created, updated, skipped, failed, request_id, started_at, finished_at";

impl Store {
    /// Records a new import, or answers the one made before under the same request id.
    pub async fn start_import(&self, account: &str, i: &ImportRow) -> Result<Option<ImportRow>> {
        if !i.request_id.is_empty() {
            let q = format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE account_id = $1 AND request_id = $2");
            let earlier: Option<ImportRow> = with_pool!(&self.db, pool =>
                sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(&i.request_id).fetch_optional(pool).await?);
            if earlier.is_some() {
                return Ok(earlier);
            }
        }
        with_pool!(&self.db, pool => sqlx::query(
            "INSERT INTO imports (account_id, id, name, mode, state, rows_read, created, updated, skipped, failed, request_id, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0, 0, $6, $7, 0)",
        ).bind(account).bind(&i.id).bind(&i.name).bind(&i.mode).bind(&i.state).bind(&i.request_id).bind(i.started_at)
        .execute(pool).await?.rows_affected());
        Ok(None)
    }

    /// Saves the counters and state.
    pub async fn save_import(&self, account: &str, i: &ImportRow) -> Result<()> {
        with_pool!(&self.db, pool => sqlx::query(
            "UPDATE imports SET state = $1, rows_read = $2, created = $3, updated = $4, skipped = $5, failed = $6, finished_at = $7 \
             WHERE account_id = $8 AND id = $9",
        ).bind(&i.state).bind(i.rows_read).bind(i.created).bind(i.updated).bind(i.skipped).bind(i.failed).bind(i.finished_at)
        .bind(account).bind(&i.id).execute(pool).await?.rows_affected());
        Ok(())
    }

    pub async fn add_import_errors(
        &self,
        account: &str,
        import: &str,
        errors: &[ImportErrorRow],
    ) -> Result<()> {
        if errors.is_empty() {
            return Ok(());
        }
        // Multi-row inserts, a few hundred rows a statement.
        for chunk in errors.chunks(self.db.rows_per_statement(5)) {
            let sql = format!(
                "INSERT INTO import_errors (account_id, import_id, row_number, column_name, reason) VALUES {} ON CONFLICT DO NOTHING",
                contactier_runtime::db::placeholders(chunk.len(), 5)
            );
            with_pool!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for e in chunk {
                    q = q.bind(account).bind(import).bind(e.row_number).bind(&e.column_name).bind(&e.reason);
                }
                q.execute(pool).await?.rows_affected()
            });
        }
        Ok(())
    }

    pub async fn import(&self, account: &str, id: &str) -> Result<Option<ImportRow>> {
        let q = format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE account_id = $1 AND id = $2");
        Ok(with_pool!(&self.db, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(q.as_str())).bind(account).bind(id).fetch_optional(pool).await?))
    }

    /// Row errors in row order after (`row`, `column`).
    pub async fn import_errors(
        &self,
        account: &str,
        import: &str,
        after: (i64, &str),
        limit: i64,
    ) -> Result<Vec<ImportErrorRow>> {
        Ok(with_pool!(&self.db, pool => sqlx::query_as(
            "SELECT row_number, column_name, reason FROM import_errors WHERE account_id = $1 AND import_id = $2 \
             AND (row_number > $3 OR (row_number = $3 AND column_name > $4)) ORDER BY row_number, column_name LIMIT $5",
        ).bind(account).bind(import).bind(after.0).bind(after.1).bind(limit).fetch_all(pool).await?))
    }
}
