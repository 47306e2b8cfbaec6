//! Import records: progress counters, the final state, and the per-row error report.

use super::Store;
use crate::error::{Error, Result};
use contactier_runtime::db::Db;
use contactier_runtime::sql::{Sql, Transaction, Tx};
use sqlx::AssertSqlSafe;
use std::time::Duration;

/// What to do with an import asked for.
#[derive(Debug)]
pub enum Start {
    /// A new import, recorded with its owner's token and first beat.
    Fresh(ImportRow),
    /// The same request id finished before: its summary is the answer.
    Finished(ImportRow),
    /// The same request id was cut off: go on from its counters.
    Resume(ImportRow),
    /// The same request id is running now: that import's id, when known.
    Busy(Option<String>),
    /// The request id was used for that import, with another header.
    Reused(String),
}

/// Wall-clock microseconds: leases are about processes, not the business clock.
fn wall_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A beat after `last`: never the same value twice, so an owner's beats are told apart.
fn next_beat(last: i64) -> i64 {
    wall_micros().max(last + 1)
}

/// Whether an owner's last beat is older than its lease at `now`.
fn stale(beat: i64, now: i64, lease: Duration) -> bool {
    beat < now - lease.as_micros() as i64
}

/// The seed of imports' batch locks (PostgreSQL advisory locks, one 64-bit key an import): each
/// batch write holds its import's shared, a takeover exclusively. 64 bits, so two imports running
/// at once never share a lock (with 32, a takeover of one could end the other's batch).
const BATCH_LOCK: i64 = 7401;

/// The text of an import's batch lock key, hashed with [`BATCH_LOCK`] by the statements.
fn batch_key(account: &str, import: &str) -> String {
    format!("{account}/{import}")
}

/// The token of an import's owner: new with each start and each takeover.
fn new_owner() -> String {
    contactier_runtime::convert::new_id()
}

/// An import's owner, as the transactions writing its batches prove: each holds the import's
/// batch lock and finds the owner's token still on the record, or writes nothing. A takeover
/// waits for the batches being written (ending those of an owner stalled inside one), so no
/// batch of the owner it replaced goes in after it.
#[derive(Clone, Debug)]
pub struct Owner {
    pub account: String,
    pub import: String,
    pub token: String,
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
    /// The owner's last beat (wall-clock microseconds), as it wrote it: its beats and saves go
    /// in only while the record still holds it (or the beat it tried last, whose answer was
    /// lost), so an owner whose import was taken over (it stopped beating for a lease: a paused
    /// process) writes nothing more.
    #[sqlx(default)]
    pub heartbeat_at: i64,
    /// The owner's token ([`Owner`]).
    #[sqlx(default)]
    pub owner: String,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportErrorRow {
    pub row_number: i64,
    pub column_name: String,
    pub reason: String,
}

const IMPORT_COLUMNS: &str = "id, name, mode, state, rows_read, created, updated, skipped, failed, \
     request_id, request_digest, prefix_digest, file_digest, started_at, finished_at, heartbeat_at, owner";

/// Only one retry takes an import over: the beat it saw must still be there.
const TAKE_OVER: &str = "UPDATE imports SET state = 'running', heartbeat_at = $1, owner = $6 \
     WHERE account_id = $2 AND id = $3 AND heartbeat_at = $4 AND state = $5";

/// Inserts nothing when a twin under the same request id recorded its import first.
const INSERT_IMPORT: &str = "INSERT INTO imports (account_id, id, name, mode, state, rows_read, created, \
     updated, skipped, failed, request_id, request_digest, started_at, finished_at, heartbeat_at, owner) \
     VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0, 0, $6, $7, $8, 0, $9, $10) ON CONFLICT DO NOTHING";

/// Goes in while the owner holds the import: its token, and a beat from its last that went in
/// to the last it tried (one whose answer was lost may have gone in). Its beats only grow.
const SAVE_IMPORT: &str = "UPDATE imports SET state = $1, rows_read = $2, created = $3, updated = $4, \
     skipped = $5, failed = $6, finished_at = $7, heartbeat_at = $8, prefix_digest = $9, file_digest = $10 \
     WHERE account_id = $11 AND id = $12 AND owner = $13 AND heartbeat_at BETWEEN $14 AND $15";

/// As [`SAVE_IMPORT`], and only while running: an import failed as stalled is not beaten alive.
const BEAT_IMPORT: &str = "UPDATE imports SET heartbeat_at = $1 \
     WHERE account_id = $2 AND id = $3 AND owner = $4 AND heartbeat_at BETWEEN $5 AND $6 AND state = 'running'";

/// The owner's token on a running import, read inside a batch's transaction.
const OWNED: &str =
    "SELECT COUNT(*) FROM imports WHERE account_id = $1 AND id = $2 AND owner = $3 AND state = 'running'";

const ERRORS_PAGE: &str = "SELECT row_number, column_name, reason FROM import_errors \
     WHERE account_id = $1 AND import_id = $2 AND (row_number, column_name) > ($3, $4) \
     ORDER BY row_number, column_name LIMIT $5";

/// What an owner's beats and saves are conditioned on: the beat that went in last, and the
/// one tried last (the same, unless a beat's answer was lost after it may have gone in).
#[derive(Clone, Copy, Debug)]
pub struct Beat {
    last: i64,
    tried: i64,
}

impl Beat {
    pub fn new(at: i64) -> Self {
        Self { last: at, tried: at }
    }

    fn next(self) -> i64 {
        next_beat(self.last.max(self.tried))
    }
}

/// Said to an owner that no longer holds its import.
pub const TAKEN_OVER: &str = "a resend under the request id took this import over, or it was failed as stalled; nothing more was written";

/// In a transaction writing an import's batch: holds the import's batch lock (PostgreSQL) and
/// checks that `owner` still holds the import; ABORTED, writing nothing, when not.
pub(super) async fn hold(db: &Db, tx: &mut impl Tx, owner: &Owner) -> Result<()> {
    let key = batch_key(&owner.account, &owner.import);
    if let Db::Postgres(_) = db {
        // Before the read: a takeover committed while this waited is then seen.
        let lock = "SELECT pg_advisory_xact_lock_shared(hashtextextended($2, $1))";
        tx.execute(Sql::new(lock).bind(BATCH_LOCK).bind(&key)).await?;
    }
    let q = Sql::new(OWNED).bind(&owner.account).bind(&owner.import).bind(&owner.token);
    if tx.scalar::<i64>(q).await? == 0 {
        return Err(Error::Aborted(TAKEN_OVER.into()));
    }
    Ok(())
}

/// In a transaction that takes an import from its owner (a takeover, or failing it as stalled):
/// waits for the owner's batches being written, so none goes in after it. On PostgreSQL one held
/// open is ended: its owner has not beaten for a lease, so it is stalled inside it (a paused
/// process), holding the batch's contacts from every other writer until it resumes.
async fn seize(db: &Db, tx: &mut impl Tx, account: &str, import: &str) -> Result<()> {
    let Db::Postgres(_) = db else { return Ok(()) };
    let key = batch_key(account, import);
    let free = "SELECT pg_try_advisory_xact_lock(hashtextextended($2, $1))";
    if tx.scalar::<bool>(Sql::new(free).bind(BATCH_LOCK).bind(&key)).await? {
        return Ok(());
    }
    let end = "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND (classid, objid, objsubid) = (SELECT ((k >> 32) & 4294967295)::oid, (k & 4294967295)::oid, 1 \
         FROM (SELECT hashtextextended($2, $1) AS k) h)";
    let ended: i64 = tx.scalar(Sql::new(end).bind(BATCH_LOCK).bind(&key)).await?;
    tracing::warn!(import = %import, sessions = ended, "a stalled owner's batch is ended");
    let wait = "SELECT pg_advisory_xact_lock(hashtextextended($2, $1))";
    tx.execute(Sql::new(wait).bind(BATCH_LOCK).bind(&key)).await?;
    Ok(())
}

impl Store {
    /// A write transaction; in a store an import's owner writes with ([`Store::owned_by`]),
    /// one that holds the import ([`hold`]).
    pub(super) async fn begin_owned_write(&self) -> Result<Transaction> {
        let mut tx = self.db.begin_write().await?;
        if let Some(owner) = &self.owner {
            hold(&self.db, &mut tx, owner).await?;
        }
        Ok(tx)
    }

    /// This store, writing as an import's owner: each write transaction holds the import.
    pub fn owned_by(&self, owner: Owner) -> Store {
        Store { owner: Some(std::sync::Arc::new(owner)), ..self.clone() }
    }

    /// Runs `q`, which takes `import` from its owner, in a transaction that has first seized it
    /// ([`seize`]): the rows `q` changed.
    async fn seized(&self, account: &str, import: &str, q: Sql) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        seize(&self.db, &mut tx, account, import).await?;
        let changed = tx.execute(q).await?;
        tx.commit().await?;
        Ok(changed)
    }

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
        Ok(Start::Busy(None))
    }

    /// [`Store::start_import`] once; None when a twin under the same request id recorded its
    /// import first.
    async fn try_start_import(&self, account: &str, i: &ImportRow, lease: Duration) -> Result<Option<Start>> {
        let now = wall_micros();
        if !i.request_id.is_empty() {
            let q = format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE account_id = $1 AND request_id = $2");
            let earlier: Option<ImportRow> =
                self.db.fetch_optional(Sql::new(AssertSqlSafe(q)).bind(account).bind(&i.request_id)).await?;
            if let Some(earlier) = earlier {
                if !contactier_runtime::idempotency::same(&earlier.request_digest, &i.request_digest) {
                    return Ok(Some(Start::Reused(earlier.id)));
                }
                return Ok(Some(match earlier.state.as_str() {
                    "completed" => Start::Finished(earlier),
                    "running" if !stale(earlier.heartbeat_at, now, lease) => Start::Busy(Some(earlier.id)),
                    _ => match self.take_over(account, &earlier, now).await? {
                        Some(owner) => Start::Resume(ImportRow {
                            state: "running".into(),
                            heartbeat_at: now,
                            owner,
                            ..earlier
                        }),
                        None => Start::Busy(Some(earlier.id)),
                    },
                }));
            }
        }
        let owner = new_owner();
        let insert = Sql::new(INSERT_IMPORT)
            .bind(account)
            .bind(&i.id)
            .bind(&i.name)
            .bind(&i.mode)
            .bind(&i.state)
            .bind(&i.request_id)
            .bind(&i.request_digest)
            .bind(i.started_at)
            .bind(now)
            .bind(&owner);
        let fresh = ImportRow { heartbeat_at: now, owner, ..i.clone() };
        Ok((self.db.execute(insert).await? == 1).then_some(Start::Fresh(fresh)))
    }

    /// Takes over an import (failed, or its owner stalled) as it was read, if no other did
    /// since: its new owner's token. A batch of the owner it replaces that is being written is
    /// waited for; on PostgreSQL one held open (its owner stalled inside it, holding the
    /// batch's contacts from every other writer) is ended.
    async fn take_over(&self, account: &str, earlier: &ImportRow, now: i64) -> Result<Option<String>> {
        let owner = new_owner();
        let take = Sql::new(TAKE_OVER)
            .bind(now)
            .bind(account)
            .bind(&earlier.id)
            .bind(earlier.heartbeat_at)
            .bind(&earlier.state)
            .bind(&owner);
        let took = self.seized(account, &earlier.id, take).await? == 1;
        Ok(took.then_some(owner))
    }

    /// Marks a running import as alive, if `owner` still holds it: false when another took it
    /// over or it was failed as stalled.
    pub async fn beat_import(&self, owner: &Owner, beat: &mut Beat) -> Result<bool> {
        let now = beat.next();
        self.as_owner(Sql::new(BEAT_IMPORT).bind(now), owner, beat, now).await
    }

    /// Saves the counters and state, if `owner` still holds the import (as
    /// [`Store::beat_import`], running or not); false when another took it over, and nothing
    /// is saved.
    pub async fn save_import(&self, owner: &Owner, beat: &mut Beat, i: &ImportRow) -> Result<bool> {
        let now = beat.next();
        let save = Sql::new(SAVE_IMPORT)
            .bind(&i.state)
            .bind(i.rows_read)
            .bind(i.created)
            .bind(i.updated)
            .bind(i.skipped)
            .bind(i.failed)
            .bind(i.finished_at)
            .bind(now)
            .bind(&i.prefix_digest)
            .bind(&i.file_digest);
        self.as_owner(save, owner, beat, now).await
    }

    /// Runs a beat or save `q`, its hold's parameters bound last (account, import, token, and
    /// the beats from the last that went in to the last tried), with `now` its new beat. An
    /// error leaves `now` tried: it may have gone in.
    async fn as_owner(&self, q: Sql, owner: &Owner, beat: &mut Beat, now: i64) -> Result<bool> {
        let q =
            q.bind(&owner.account).bind(&owner.import).bind(&owner.token).bind(beat.last).bind(beat.tried);
        beat.tried = now;
        let held = self.db.execute(q).await? == 1;
        if held {
            *beat = Beat::new(now);
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
        let mut tx = self.begin_owned_write().await?;
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
            tx.execute(q).await?;
        }
        tx.commit().await?;
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
        let Some(import) = self.import(account, id).await? else { return Ok(None) };
        if import.state != "running" || !stale(import.heartbeat_at, wall_micros(), lease) {
            return Ok(Some(import));
        }
        // Only while its beat is the one seen: an owner or a retry that marked it since keeps it.
        let end = "UPDATE imports SET state = 'failed', finished_at = $1 \
             WHERE account_id = $2 AND id = $3 AND state = 'running' AND heartbeat_at = $4";
        let end = Sql::new(end).bind(finished_at).bind(account).bind(id).bind(import.heartbeat_at);
        if self.seized(account, id, end).await? == 1 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use contactier_runtime::db::Backend;
    use contactier_runtime::testing::TestDb;

    const ACCOUNT: &str = "acct-imports";

    fn asked(request_id: &str) -> ImportRow {
        ImportRow {
            id: contactier_runtime::convert::new_id(),
            name: "fair".into(),
            mode: "create".into(),
            state: "running".into(),
            request_id: request_id.into(),
            request_digest: "digest".into(),
            ..ImportRow::default()
        }
    }

    fn owner_of(i: &ImportRow) -> Owner {
        Owner { account: ACCOUNT.into(), import: i.id.clone(), token: i.owner.clone() }
    }

    /// An owner's beat whose answer was lost (it may have gone in) does not cost it its import;
    /// once a resend took the import over, the replaced owner's beats, saves and batch writes
    /// go in nowhere, and the new owner's do.
    async fn a_replaced_owner_writes_nothing_and_a_lost_beat_is_kept(backend: Backend) {
        let t = TestDb::new(backend, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let store = Store::new(t.db.clone());
        let lease = Duration::from_secs(10);
        let Start::Fresh(first) = store.start_import(ACCOUNT, &asked("r-1"), lease).await.unwrap() else {
            panic!("{backend:?}: not a fresh import")
        };
        let old = owner_of(&first);
        let mut beat = Beat::new(first.heartbeat_at);
        let before = beat;
        assert!(store.beat_import(&old, &mut beat).await.unwrap(), "{backend:?}");
        // The owner knows only that it tried this beat.
        let mut unsure = Beat { tried: beat.last, ..before };
        assert!(
            store.beat_import(&old, &mut unsure).await.unwrap(),
            "{backend:?}: a beat that went in unseen"
        );
        let mut beat = unsure;

        let stale =
            Sql::new("UPDATE imports SET heartbeat_at = heartbeat_at - 60000000 WHERE account_id = $1");
        t.db.execute(stale.bind(ACCOUNT)).await.unwrap();
        let Start::Resume(taken) = store.start_import(ACCOUNT, &asked("r-1"), lease).await.unwrap() else {
            panic!("{backend:?}: the resend did not take the import over")
        };
        assert_ne!(taken.owner, old.token, "{backend:?}");
        let new = owner_of(&taken);
        let row = ImportErrorRow { row_number: 1, column_name: "email".into(), reason: "bad".into() };

        assert!(!store.beat_import(&old, &mut beat).await.unwrap(), "{backend:?}: the replaced owner's beat");
        let saved = ImportRow { rows_read: 99, ..first.clone() };
        assert!(!store.save_import(&old, &mut beat, &saved).await.unwrap(), "{backend:?}: its save");
        let refused =
            store.owned_by(old).add_import_errors(ACCOUNT, &first.id, std::slice::from_ref(&row)).await;
        assert!(matches!(refused, Err(Error::Aborted(_))), "{backend:?}: its batch: {refused:?}");
        assert!(
            store.import_errors(ACCOUNT, &first.id, (0, ""), 10).await.unwrap().is_empty(),
            "{backend:?}"
        );

        let mut beat = Beat::new(taken.heartbeat_at);
        assert!(store.beat_import(&new, &mut beat).await.unwrap(), "{backend:?}: the new owner's beat");
        store.owned_by(new).add_import_errors(ACCOUNT, &first.id, std::slice::from_ref(&row)).await.unwrap();
        assert_eq!(store.import_errors(ACCOUNT, &first.id, (0, ""), 10).await.unwrap(), [row], "{backend:?}");
        assert_eq!(store.import(ACCOUNT, &first.id).await.unwrap().unwrap().rows_read, 0, "{backend:?}");
    }

    contactier_runtime::backend_tests!(a_replaced_owner_writes_nothing_and_a_lost_beat_is_kept);

    /// Two imports running at once whose keys share a 32-bit text hash: a takeover of one
    /// neither waits for the other's batch nor ends it. PostgreSQL only (its advisory locks).
    #[tokio::test]
    async fn a_takeover_leaves_another_imports_batch_alone() {
        let t = TestDb::new(Backend::Postgres, "contacts").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let (one, other) = (("acct-181940", "import"), ("acct-226950", "import"));
        let same = "SELECT hashtext($1) = hashtext($2)";
        let keys = Sql::new(same).bind(batch_key(one.0, one.1)).bind(batch_key(other.0, other.1));
        assert!(t.db.scalar::<bool>(keys).await.unwrap(), "the keys' 32-bit hashes collide");

        // The other import's batch, inside its transaction (holding its batch lock, then
        // refused as no such import is recorded: the lock is what matters here).
        let mut batch = t.db.begin_write().await.unwrap();
        let owner = Owner { account: other.0.into(), import: other.1.into(), token: "t".into() };
        assert!(matches!(hold(&t.db, &mut batch, &owner).await, Err(Error::Aborted(_))));

        let mut takeover = t.db.begin_write().await.unwrap();
        // Waiting on the other batch's lock would hang: bounded, so it fails instead.
        let seized = tokio::time::timeout(Duration::from_secs(10), seize(&t.db, &mut takeover, one.0, one.1));
        seized.await.expect("the takeover does not wait for the other import's batch").unwrap();
        takeover.commit().await.unwrap();
        batch.execute(Sql::new("SELECT 1")).await.expect("the other import's batch goes on");
        batch.commit().await.unwrap();
    }
}
