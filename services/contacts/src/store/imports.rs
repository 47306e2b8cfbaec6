//! Import records: progress counters, the final state, and the per-row error report.

use super::Store;
use crate::error::Result;
use contactier_runtime::sql::Sql;
use sqlx::AssertSqlSafe;
use std::time::Duration;

#[derive(sqlx::FromRow)]
struct Beating {
    #[sqlx(flatten)]
    import: ImportRow,
    heartbeat_at: i64,
}

/// What to do with an import asked for.
#[derive(Debug)]
pub enum Start {
    /// A new import, recorded; its owner's first beat.
    Fresh(i64),
    /// The same request id finished before: its summary is the answer.
    Finished(ImportRow),
    /// The same request id was cut off: go on from its counters.
    Resume(ImportRow),
    /// The same request id is running now.
    Busy,
    /// The request id was used for an import with another header.
    Reused,
}

/// Wall-clock microseconds: leases are about processes, not the business clock.
fn wall_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A beat after `last`: never the same value twice, so an owner's beats are told apart.
fn next_beat(last: i64) -> i64 {
    wall_micros().max(last + 1)
}

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
    /// Digest of the header the request id was first used with.
    pub request_digest: String,
    /// Digest of the file's bytes through the last saved row, and of the whole file once done.
    pub prefix_digest: String,
    pub file_digest: String,
    pub started_at: i64,
    pub finished_at: i64,
    /// The owner's last beat (wall-clock microseconds), as it wrote it: its writes go in only
    /// while the record still holds it, so an owner whose import was taken over (it stopped
    /// beating for a lease: a paused process) writes nothing more.
    #[sqlx(default)]
    pub heartbeat_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportErrorRow {
    pub row_number: i64,
    pub column_name: String,
    pub reason: String,
}

const IMPORT_COLUMNS: &str = "id, name, mode, state, rows_read, created, updated, skipped, failed, \
     request_id, request_digest, prefix_digest, file_digest, started_at, finished_at";

/// Only one retry takes an import over: the beat it saw must still be there.
const TAKE_OVER: &str = "UPDATE imports SET state = 'running', heartbeat_at = $1 \
     WHERE account_id = $2 AND id = $3 AND heartbeat_at = $4 AND state = $5";

/// Inserts nothing when a twin under the same request id recorded its import first.
const INSERT_IMPORT: &str = "INSERT INTO imports (account_id, id, name, mode, state, rows_read, created, \
     updated, skipped, failed, request_id, request_digest, started_at, finished_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0, 0, $6, $7, $8, 0, $9) ON CONFLICT DO NOTHING";

const SAVE_IMPORT: &str = "UPDATE imports SET state = $1, rows_read = $2, created = $3, updated = $4, \
     skipped = $5, failed = $6, finished_at = $7, heartbeat_at = $8, prefix_digest = $11, file_digest = $12 \
     WHERE account_id = $9 AND id = $10 AND heartbeat_at = $13";

const ERRORS_PAGE: &str = "SELECT row_number, column_name, reason FROM import_errors \
     WHERE account_id = $1 AND import_id = $2 AND (row_number, column_name) > ($3, $4) \
     ORDER BY row_number, column_name LIMIT $5";

impl Store {
    /// Records a new import, or settles what to do with the one made before under the same
    /// request id: answer it (completed), take it over (interrupted: failed, or running with an
    /// owner that stopped beating for longer than `lease`), or wait (running elsewhere).
    pub async fn start_import(&self, account: &str, i: &ImportRow, lease: Duration) -> Result<Start> {
        // Twice at most: a twin that records its import between the look and the insert is
        // found on the second look.
        for _ in 0..2 {
            if let Some(start) = self.try_start_import(account, i, lease).await? {
                return Ok(start);
            }
        }
        Ok(Start::Busy)
    }

    /// [`Store::start_import`] once; None when a twin under the same request id recorded its
    /// import first.
    async fn try_start_import(&self, account: &str, i: &ImportRow, lease: Duration) -> Result<Option<Start>> {
        let now = wall_micros();
        if !i.request_id.is_empty() {
            let q = format!(
                "SELECT {IMPORT_COLUMNS}, heartbeat_at FROM imports WHERE account_id = $1 AND request_id = $2"
            );
            let earlier: Option<Beating> =
                self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(&i.request_id)).await?;
            if let Some(Beating { import: earlier, heartbeat_at: beat }) = earlier {
                if !contactier_runtime::idempotency::same(&earlier.request_digest, &i.request_digest) {
                    return Ok(Some(Start::Reused));
                }
                let stale = beat < now - lease.as_micros() as i64;
                return Ok(Some(match earlier.state.as_str() {
                    "completed" => Start::Finished(earlier),
                    "running" if !stale => Start::Busy,
                    _ => {
                        let take = Sql::new(TAKE_OVER)
                            .bind(now)
                            .bind(account)
                            .bind(&earlier.id)
                            .bind(beat)
                            .bind(&earlier.state);
                        let took = self.db.execute(take).await?;
                        if took == 1 {
                            Start::Resume(ImportRow { state: "running".into(), heartbeat_at: now, ..earlier })
                        } else {
                            Start::Busy
                        }
                    }
                }));
            }
        }
        let insert = Sql::new(INSERT_IMPORT)
            .bind(account)
            .bind(&i.id)
            .bind(&i.name)
            .bind(&i.mode)
            .bind(&i.state)
            .bind(&i.request_id)
            .bind(&i.request_digest)
            .bind(i.started_at)
            .bind(now);
        Ok((self.db.execute(insert).await? == 1).then_some(Start::Fresh(now)))
    }

    /// Marks a running import as alive, if its owner still holds it (its beat `last`): the
    /// next beat, or None when another took the import over.
    pub async fn beat_import(&self, account: &str, id: &str, last: i64) -> Result<Option<i64>> {
        let now = next_beat(last);
        let q = "UPDATE imports SET heartbeat_at = $1 WHERE account_id = $2 AND id = $3 AND state = 'running' \
                 AND heartbeat_at = $4";
        let held = self.db.execute(Sql::new(q).bind(now).bind(account).bind(id).bind(last)).await?;
        Ok((held == 1).then_some(now))
    }

    /// Saves the counters and state, if the owner still holds the import (as
    /// [`Store::beat_import`]); false when another took it over, and nothing is saved.
    pub async fn save_import(&self, account: &str, i: &mut ImportRow) -> Result<bool> {
        let now = next_beat(i.heartbeat_at);
        let save = Sql::new(SAVE_IMPORT)
            .bind(&i.state)
            .bind(i.rows_read)
            .bind(i.created)
            .bind(i.updated)
            .bind(i.skipped)
            .bind(i.failed)
            .bind(i.finished_at)
            .bind(now)
            .bind(account)
            .bind(&i.id)
            .bind(&i.prefix_digest)
            .bind(&i.file_digest)
            .bind(i.heartbeat_at);
        let held = self.db.execute(save).await? == 1;
        if held {
            i.heartbeat_at = now;
        }
        Ok(held)
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
                "INSERT INTO import_errors (account_id, import_id, row_number, column_name, reason) \
                 VALUES {} \
                 ON CONFLICT DO NOTHING",
                contactier_runtime::db::placeholders(chunk.len(), 5)
            );
            let q = chunk.iter().fold(Sql::new(AssertSqlSafe(sql)), |q, e| {
                q.bind(account).bind(import).bind(e.row_number).bind(&e.column_name).bind(&e.reason)
            });
            self.db.execute(q).await?;
        }
        Ok(())
    }

    /// An import as a caller sees it. One left running by an owner that stopped marking it
    /// alive for longer than `lease` (its process killed) is failed by this read, at
    /// `finished_at`: nothing else would end it, and a retry under its request id takes it up as
    /// it takes up any failed import.
    pub async fn import_seen(
        &self,
        account: &str,
        id: &str,
        lease: Duration,
        finished_at: i64,
    ) -> Result<Option<ImportRow>> {
        let q =
            format!("SELECT {IMPORT_COLUMNS}, heartbeat_at FROM imports WHERE account_id = $1 AND id = $2");
        let found: Option<Beating> =
            self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(id)).await?;
        let Some(Beating { import, heartbeat_at: beat }) = found else { return Ok(None) };
        if import.state != "running" || beat >= wall_micros() - lease.as_micros() as i64 {
            return Ok(Some(import));
        }
        // Only while its beat is the one seen: an owner or a retry that marked it since keeps it.
        let end = "UPDATE imports SET state = 'failed', finished_at = $1 \
             WHERE account_id = $2 AND id = $3 AND state = 'running' AND heartbeat_at = $4";
        if self.db.execute(Sql::new(end).bind(finished_at).bind(account).bind(id).bind(beat)).await? == 1 {
            tracing::warn!(import = %id, "an import whose owner stopped is failed");
            return Ok(Some(ImportRow { state: "failed".into(), finished_at, ..import }));
        }
        self.import(account, id).await
    }

    pub async fn import(&self, account: &str, id: &str) -> Result<Option<ImportRow>> {
        let q = format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE account_id = $1 AND id = $2");
        Ok(self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(id)).await?)
    }

    /// Row errors in row order after (`row`, `column`).
    pub async fn import_errors(
        &self,
        account: &str,
        import: &str,
        after: (i64, &str),
        limit: i64,
    ) -> Result<Vec<ImportErrorRow>> {
        let page = Sql::new(ERRORS_PAGE).bind(account).bind(import).bind(after.0).bind(after.1).bind(limit);
        Ok(self.db.fetch_all(page).await?)
    }
}
