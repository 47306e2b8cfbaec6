//! Account-level records: source defaults, permission overrides, the audit trail listing,
//! workflows and their runs.

use super::Store;
use chrono::{DateTime, Utc};
use contactier_runtime::convert::micros;
use contactier_runtime::sql::Sql;
use sqlx::AssertSqlSafe;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangeRow {
    pub id: String,
    pub contact_id: String,
    pub from_status: String,
    pub to_status: String,
    pub pending: bool,
    pub source_type: String,
    pub source_id: String,
    pub user_id: String,
    pub requested_at: i64,
    pub effective_at: i64,
    pub request_id: String,
}

/// A page of the trail: $1 account, ($2 time, $3 id) the entry it starts after, $4 rows, $5
/// the contact when `one_contact`. The kept entries and those of a date's mark are each read
/// newest first up to a page and merged, so the kept ones come from their (account, time, id)
/// index at the page's position: a page's worth of rows however long the trail. (SQLite reads
/// and sorts the whole union when the page is taken over `status_trail`.)
pub(crate) fn changes_query(one_contact: bool) -> String {
    let one = if one_contact { " AND contact_id = $5" } else { "" };
    let cols = "id, contact_id, from_status, to_status, pending, source_type, source_id, user_id, \
                requested_at, effective_at, request_id";
    let newest = |from: &str, part: &str, only_if: &str| {
        format!(
            "SELECT * FROM (SELECT {cols} FROM {from} WHERE account_id = $1 AND (requested_at, id) < ($2, $3){one}\
             {only_if} ORDER BY requested_at DESC, id DESC LIMIT $4) AS {part}"
        )
    };
    // Without a mark the marked entries are not looked for at all: PostgreSQL would otherwise
    // walk the account's pending index, which after a big date holds an entry for every
    // contact the date rewrote until the table is vacuumed (12 ms a page at a million).
    format!(
        "{} UNION ALL {} ORDER BY requested_at DESC, id DESC LIMIT $4",
        newest("status_changes", "kept", ""),
        newest("marked_trail", "marked", " AND EXISTS (SELECT 1 FROM update_marks WHERE account_id = $1)")
    )
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkflowRow {
    pub id: String,
    pub name: String,
    pub list_id: String,
    pub filter: Vec<u8>,
    /// "set_marketing" or "set_non_marketing".
    pub action: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RunRow {
    pub account_id: String,
    pub id: String,
    pub workflow_id: String,
    pub request_id: String,
    /// queued, retrying or succeeded.
    pub state: String,
    pub attempts: i64,
    pub last_error: String,
    pub changed: i64,
    pub created_at: i64,
    pub finished_at: i64,
    pub next_attempt_at: i64,
    /// The user who asked for the run; empty when a service did.
    pub requested_by: String,
}

const RUN_COLUMNS: &str = "account_id, id, workflow_id, request_id, state, attempts, last_error, changed, \
     created_at, finished_at, next_attempt_at, requested_by";

const SET_SOURCE_DEFAULT: &str = "INSERT INTO source_defaults (account_id, source_type, marketing) \
     VALUES ($1, $2, $3) ON CONFLICT (account_id, source_type) DO UPDATE SET marketing = excluded.marketing";

const OVERRIDES: &str = "SELECT user_id, may_set_marketing FROM user_permissions \
     WHERE account_id = $1 AND NOT may_set_marketing AND user_id > $2 ORDER BY user_id LIMIT $3";

const INSERT_WORKFLOW: &str = "INSERT INTO workflows (account_id, id, name, list_id, filter, action, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

const INSERT_RUN: &str = "INSERT INTO workflow_runs (account_id, id, workflow_id, request_id, state, \
     attempts, last_error, changed, created_at, finished_at, next_attempt_at, requested_by) \
     VALUES ($1, $2, $3, $4, 'queued', 0, '', 0, $5, 0, $5, $6)";

const SAVE_RUN: &str = "UPDATE workflow_runs SET state = $1, attempts = $2, last_error = $3, changed = $4, \
     finished_at = $5, next_attempt_at = $6 WHERE account_id = $7 AND id = $8";

impl Store {
    /// The account's own defaults: source type -> marketing.
    pub async fn source_defaults(&self, account: &str) -> Result<Vec<(String, bool)>, sqlx::Error> {
        let q =
            "SELECT source_type, marketing FROM source_defaults WHERE account_id = $1 ORDER BY source_type";
        self.db.fetch_all(Sql::new(q).bind(account)).await
    }

    pub async fn set_source_default(
        &self,
        account: &str,
        source_type: &str,
        marketing: bool,
    ) -> Result<(), sqlx::Error> {
        self.db.execute(Sql::new(SET_SOURCE_DEFAULT).bind(account).bind(source_type).bind(marketing)).await?;
        Ok(())
    }

    /// Users whose permission differs from the default, by user id after `after`.
    pub async fn permission_overrides(
        &self,
        account: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, sqlx::Error> {
        self.db.fetch_all(Sql::new(OVERRIDES).bind(account).bind(after).bind(limit)).await
    }

    /// The audit trail, newest first, optionally of one contact, before the (time, id) given.
    pub async fn changes(
        &self,
        account: &str,
        contact: Option<&str>,
        before: (i64, &str),
        limit: i64,
    ) -> Result<Vec<ChangeRow>, sqlx::Error> {
        let q = Sql::new(AssertSqlSafe(changes_query(contact.is_some())))
            .bind(account)
            .bind(before.0)
            .bind(before.1)
            .bind(limit);
        self.db.fetch_all(q.bind_all(contact)).await
    }

    pub async fn create_workflow(&self, account: &str, w: &WorkflowRow) -> Result<(), sqlx::Error> {
        let insert = Sql::new(INSERT_WORKFLOW)
            .bind(account)
            .bind(&w.id)
            .bind(&w.name)
            .bind(&w.list_id)
            .bind(&w.filter)
            .bind(&w.action)
            .bind(w.created_at);
        self.db.execute(insert).await?;
        Ok(())
    }

    pub async fn workflow_count(&self, account: &str) -> Result<i64, sqlx::Error> {
        self.db.scalar(Sql::new("SELECT COUNT(*) FROM workflows WHERE account_id = $1").bind(account)).await
    }

    pub async fn workflows(&self, account: &str, id: Option<&str>) -> Result<Vec<WorkflowRow>, sqlx::Error> {
        let q = format!(
            "SELECT id, name, list_id, filter, action, created_at FROM workflows WHERE account_id = $1{} \
             ORDER BY id",
            if id.is_some() { " AND id = $2" } else { "" }
        );
        self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind_all(id)).await
    }

    pub async fn delete_workflow(&self, account: &str, id: &str) -> Result<bool, sqlx::Error> {
        let q = "DELETE FROM workflows WHERE account_id = $1 AND id = $2";
        Ok(self.db.execute(Sql::new(q).bind(account).bind(id)).await? == 1)
    }

    /// Queues a run, or answers the one queued before under the same request id.
    pub async fn queue_run(&self, run: &RunRow) -> Result<RunRow, sqlx::Error> {
        if !run.request_id.is_empty()
            && let Some(earlier) = self.run_by(&run.account_id, "request_id", &run.request_id).await?
        {
            return Ok(earlier);
        }
        let insert = Sql::new(INSERT_RUN)
            .bind(&run.account_id)
            .bind(&run.id)
            .bind(&run.workflow_id)
            .bind(&run.request_id)
            .bind(run.created_at)
            .bind(&run.requested_by);
        self.db.execute(insert).await?;
        Ok(self.run_by(&run.account_id, "id", &run.id).await?.unwrap_or_default())
    }

    pub async fn run(&self, account: &str, id: &str) -> Result<Option<RunRow>, sqlx::Error> {
        self.run_by(account, "id", id).await
    }

    async fn run_by(&self, account: &str, column: &str, value: &str) -> Result<Option<RunRow>, sqlx::Error> {
        let q = format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE account_id = $1 AND {column} = $2");
        self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(value)).await
    }

    /// Runs due at `now`, oldest first.
    pub async fn due_runs(&self, now: DateTime<Utc>) -> Result<Vec<RunRow>, sqlx::Error> {
        let q = format!(
            "/* across accounts: workflow runs due */ SELECT {RUN_COLUMNS} FROM workflow_runs \
             WHERE state IN ('queued', 'retrying') \
             AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 100"
        );
        self.db.fetch_all(Sql::new(AssertSqlSafe(q)).bind(micros(now))).await
    }

    pub async fn next_run_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let q = "/* across accounts: when a workflow run is next due */ SELECT MIN(next_attempt_at) \
                 FROM workflow_runs WHERE state IN ('queued', 'retrying')";
        let at: Option<i64> = self.db.scalar(Sql::new(q)).await?;
        Ok(at.and_then(DateTime::from_timestamp_micros))
    }

    /// Saves a run's state after an attempt.
    pub async fn save_run(&self, r: &RunRow) -> Result<(), sqlx::Error> {
        let save = Sql::new(SAVE_RUN)
            .bind(&r.state)
            .bind(r.attempts)
            .bind(&r.last_error)
            .bind(r.changed)
            .bind(r.finished_at)
            .bind(r.next_attempt_at)
            .bind(&r.account_id)
            .bind(&r.id);
        self.db.execute(save).await?;
        Ok(())
    }
}
