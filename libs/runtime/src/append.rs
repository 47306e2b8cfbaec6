//! Rows appended to a table in bulk: `COPY ... FROM STDIN` on PostgreSQL, multi-row `INSERT`s
//! on SQLite.
//!
//! A multi-row `INSERT` of thousands of rows is a statement of tens of thousands of parameters
//! that PostgreSQL parses, binds and plans before it writes a row; COPY takes the rows as a
//! stream of text and writes them with about half the server's CPU time. Rows go in as they
//! are: a key already present fails the whole append (use an `INSERT ... ON CONFLICT` where
//! rows may be there already).

use crate::sql::{Row, Sql, Tx};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool, Postgres};

/// One value of a row to append.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    Text(&'a str),
    Int(i64),
    Float(Option<f64>),
    Bool(bool),
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(s: &'a str) -> Self {
        Cell::Text(s)
    }
}

impl<'a> From<&'a String> for Cell<'a> {
    fn from(s: &'a String) -> Self {
        Cell::Text(s)
    }
}

impl From<i64> for Cell<'_> {
    fn from(n: i64) -> Self {
        Cell::Int(n)
    }
}

impl From<Option<f64>> for Cell<'_> {
    fn from(n: Option<f64>) -> Self {
        Cell::Float(n)
    }
}

impl From<bool> for Cell<'_> {
    fn from(b: bool) -> Self {
        Cell::Bool(b)
    }
}

/// Rows of one width, each cell borrowed from the caller's data.
#[derive(Debug)]
pub struct Rows<'a> {
    width: usize,
    cells: Vec<Cell<'a>>,
}

impl<'a> Rows<'a> {
    pub fn new(width: usize) -> Rows<'a> {
        Rows { width: width.max(1), cells: Vec::new() }
    }

    pub fn with_capacity(width: usize, rows: usize) -> Rows<'a> {
        let width = width.max(1);
        Rows { width, cells: Vec::with_capacity(width * rows) }
    }

    /// Adds a row; it must have the width the rows were made with.
    pub fn push<const N: usize>(&mut self, row: [Cell<'a>; N]) {
        assert_eq!(N, self.width, "a row of {N} cells among rows of {}", self.width);
        self.cells.extend(row);
    }

    pub fn len(&self) -> usize {
        self.cells.len() / self.width
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, Cell<'a>> {
        self.cells.chunks_exact(self.width)
    }

    /// Column `i` of each row, as text (a key column).
    fn texts(&self, i: usize) -> Vec<String> {
        self.rows()
            .map(|row| match row[i] {
                Cell::Text(s) => s.to_owned(),
                Cell::Int(n) => n.to_string(),
                other => panic!("a key column of {other:?}"),
            })
            .collect()
    }

    /// The cells of up to `rows` rows at a time, for statements of several rows each
    /// ([`Sql::bind_cells`]).
    pub fn chunks(&self, rows: usize) -> std::slice::Chunks<'_, Cell<'a>> {
        self.cells.chunks(self.width * rows.max(1))
    }
}

impl Sql {
    /// Binds each cell in order.
    pub fn bind_cells(self, cells: &[Cell<'_>]) -> Sql {
        cells.iter().fold(self, |q, c| match *c {
            Cell::Text(s) => q.bind(s),
            Cell::Int(n) => q.bind(n),
            Cell::Float(f) => q.bind(f),
            Cell::Bool(b) => q.bind(b),
        })
    }
}

/// COPY's text format: a row a line, cells apart by tabs, `\N` for no value, and a backslash
/// before each of the characters that would end a cell or a line.
fn copy_text(rows: &Rows<'_>) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(rows.cells.len() * 16);
    for row in rows.rows() {
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match *cell {
                Cell::Text(s) => escape_into(&mut out, s),
                Cell::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Cell::Float(None) => out.extend_from_slice(b"\\N"),
                Cell::Float(Some(f)) if f.is_nan() => out.extend_from_slice(b"NaN"),
                Cell::Float(Some(f)) if f.is_infinite() => {
                    out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
                }
                // Rust writes the shortest digits that read back as the same number.
                Cell::Float(Some(f)) => {
                    let _ = write!(out, "{f}");
                }
                Cell::Bool(b) => out.push(if b { b't' } else { b'f' }),
            }
        }
        out.push(b'\n');
    }
    out
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// The statement starting a COPY of `columns` into `table`; both are the caller's constants.
fn copy_statement(table: &str, columns: &[&str]) -> String {
    format!("COPY {table} ({}) FROM STDIN", columns.join(", "))
}

/// A COPY on a transaction's connection. `copying` stays set if the COPY is given up half
/// way (its future dropped): the driver then cannot tell which of the server's answers are
/// still to come, and [`PgTx`] closes the connection rather than let the next user read them.
async fn copy_in(
    conn: &mut PgConnection,
    copying: &mut bool,
    table: &str,
    columns: &[&str],
    rows: &Rows<'_>,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    debug_assert_eq!(columns.len(), rows.width);
    let data = copy_text(rows);
    *copying = true;
    let mut copy = conn.copy_in_raw(&copy_statement(table, columns)).await?;
    let written = match copy.send(data).await {
        Ok(_) => copy.finish().await,
        Err(e) => {
            // Ends the COPY so the connection stays usable; the error is the send's.
            let _ = copy.abort("the rows could not be sent").await;
            Err(e)
        }
    };
    // Finished or failed, the server has said all it will about it.
    *copying = false;
    written
}

/// [`copy_in`] under a savepoint, given up when a key is taken: the rows are then written
/// by an `ON CONFLICT` statement ([`insert_new`]), and the rows that are new cost a COPY.
async fn copy_new(
    conn: &mut PgConnection,
    copying: &mut bool,
    table: &str,
    columns: &[&str],
    rows: &Rows<'_>,
) -> Result<bool, sqlx::Error> {
    if rows.is_empty() {
        return Ok(true);
    }
    conn.execute(Sql::new("SAVEPOINT append_new")).await?;
    match copy_in(conn, copying, table, columns, rows).await {
        Ok(_) => {
            conn.execute(Sql::new("RELEASE SAVEPOINT append_new")).await?;
            Ok(true)
        }
        Err(e) if e.as_database_error().is_some_and(sqlx::error::DatabaseError::is_unique_violation) => {
            conn.execute(Sql::new("ROLLBACK TO SAVEPOINT append_new")).await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Rows from which a COPY beats a statement: a COPY takes two round trips (three more under a
/// savepoint) where a statement takes one, and saves the server a few microseconds a row.
const COPY_FROM_ROWS: usize = 64;

/// A PostgreSQL transaction on a pooled connection, which appends by COPY. Dropped without
/// [`PgTx::commit`] it rolls back, as sqlx's own does, and the connection goes back to the
/// pool; dropped with a COPY given up half way, the connection is closed instead (the
/// server then rolls back). Dropped while one of its statements runs (its caller gone, a
/// deadline passed), the statement is cancelled first: it would otherwise run on, or wait on a
/// lock, holding the connection from the pool until it ended (seen from outside: a sender's
/// calls cut at their deadline while their statements waited on one account's held row, one
/// more pooled connection each retry, until the pool ran dry).
pub struct PgTx {
    conn: Option<PoolConnection<Postgres>>,
    copying: bool,
    /// A statement of this transaction is in flight.
    busy: bool,
    /// The connection's server process, and how to reach the server to cancel its statement.
    pid: i32,
    options: std::sync::Arc<PgConnectOptions>,
    /// A bounded transaction's watch for a lock held (see [`crate::db::bounded`]).
    watch: Option<crate::db::Watch>,
}

impl PgTx {
    pub(crate) async fn begin(pool: &PgPool) -> Result<PgTx, sqlx::Error> {
        Self::begin_with(pool, "BEGIN", None).await
    }

    /// Begins with `begin`: `BEGIN`, and any `SET LOCAL` after it in the same round trip.
    pub(crate) async fn begin_with(
        pool: &PgPool,
        begin: &'static str,
        watch: Option<crate::db::Watch>,
    ) -> Result<PgTx, sqlx::Error> {
        // Made before BEGIN goes out: if this is given up while BEGIN is under way, dropping it
        // rolls back rather than hand the pool a connection in a transaction.
        let options = pool.connect_options();
        let conn = Some(pool.acquire().await?);
        let mut tx = PgTx { conn, copying: false, busy: false, pid: 0, options, watch };
        let begin = sqlx::AssertSqlSafe(format!("{begin}; SELECT pg_backend_pid()"));
        let rows = sqlx::raw_sql(begin).fetch_all(tx.conn()).await?;
        tx.pid = rows.first().map(|r| sqlx::Row::try_get(r, 0)).transpose()?.unwrap_or(0);
        Ok(tx)
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a transaction's connection is there until it ends")
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        // Not marked in flight: a commit given up goes through or not on its own.
        sqlx::raw_sql("COMMIT").execute(self.conn()).await?;
        // Back to the pool.
        self.conn.take();
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(self.conn()).await?;
        self.conn.take();
        Ok(())
    }
}

/// Cancels in flight at once, each on a connection of its own: a burst of calls cut together
/// (a client's deadlines under load) must not become a burst of connections to the server.
/// Past it, a statement given up runs to its end as before.
static CANCELS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Has the server cancel the statement process `pid` runs, on a connection of its own: the
/// pool may have none to spare.
async fn cancel(options: &PgConnectOptions, pid: i32) {
    use sqlx::{ConnectOptions, Connection};
    let Ok(_permit) = CANCELS.try_acquire() else { return };
    let cancelled = async {
        let mut c = options.connect().await?;
        sqlx::query("SELECT pg_cancel_backend($1)").bind(pid).execute(&mut c).await?;
        c.close().await
    };
    if let Err(e) = cancelled.await {
        tracing::warn!(error = %e, "a statement given up could not be cancelled; its connection waits for it");
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let running = self.busy.then(|| (self.options.clone(), self.pid));
        if self.copying && running.is_none() {
            conn.close_on_drop();
            return;
        }
        let copying = self.copying;
        // Rolled back before the connection goes back to the pool (sqlx does the same by
        // queueing the statement; this transaction owns its connection and runs it).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some((options, pid)) = running {
                        cancel(&options, pid).await;
                    }
                    if copying || sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

impl PgTx {
    /// A statement's end: no longer in flight, and a lock it gave up told to its watch.
    fn settled<T>(&mut self, out: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.busy = false;
        if let (Err(e), Some(watch)) = (&out, &self.watch)
            && crate::storage_failure::lock_held(e)
        {
            watch.lock_held();
        }
        out
    }
}

impl Tx for PgTx {
    // Each marks its statement in flight while it runs, for `Drop` to cancel it if given up.
    async fn execute(&mut self, q: Sql) -> Result<u64, sqlx::Error> {
        self.busy = true;
        let out = self.conn().execute(q).await;
        self.settled(out)
    }
    async fn fetch_all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>, sqlx::Error> {
        self.busy = true;
        let out = self.conn().fetch_all(q).await;
        self.settled(out)
    }
    async fn fetch_optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>, sqlx::Error> {
        self.busy = true;
        let out = self.conn().fetch_optional(q).await;
        self.settled(out)
    }
    async fn append(&mut self, table: &str, columns: &[&str], rows: &Rows<'_>) -> Result<u64, sqlx::Error> {
        self.busy = true;
        let PgTx { conn, copying, .. } = self;
        let conn: &mut PgConnection =
            conn.as_mut().expect("a transaction's connection is there until it ends");
        let out = if rows.len() < COPY_FROM_ROWS {
            insert(conn, crate::sql::PG_PARAMETERS, table, columns, rows).await
        } else {
            copy_in(conn, copying, table, columns, rows).await
        };
        self.settled(out)
    }
    async fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        self.busy = true;
        let PgTx { conn, copying, .. } = self;
        let conn: &mut PgConnection =
            conn.as_mut().expect("a transaction's connection is there until it ends");
        let out = if rows.len() >= COPY_FROM_ROWS {
            match copy_new(conn, copying, table, columns, rows).await {
                Ok(true) => Ok(rows.texts(key_column(columns, key))),
                Ok(false) => {
                    insert_new(conn, crate::sql::PG_PARAMETERS, table, columns, rows, conflict, key).await
                }
                Err(e) => Err(e),
            }
        } else {
            insert_new(conn, crate::sql::PG_PARAMETERS, table, columns, rows, conflict, key).await
        };
        self.settled(out)
    }
}

fn key_column(columns: &[&str], key: &str) -> usize {
    columns.iter().position(|c| *c == key).expect("the key is one of the columns appended")
}

/// Multi-row `INSERT`s of at most `parameters` parameters each: appends outside a
/// [`PgTx`], and on SQLite, where they are as fast as anything.
pub(crate) async fn insert(
    conn: &mut impl Tx,
    parameters: usize,
    table: &str,
    columns: &[&str],
    rows: &Rows<'_>,
) -> Result<u64, sqlx::Error> {
    debug_assert_eq!(columns.len(), rows.width);
    let mut written = 0;
    for cells in rows.chunks(parameters / rows.width) {
        written += conn.execute(values_statement(table, columns, rows.width, cells, "")).await?;
    }
    Ok(written)
}

/// `INSERT INTO table (columns) VALUES` with the cells' rows bound, then `tail`; the names are
/// the caller's constants.
fn values_statement(table: &str, columns: &[&str], width: usize, cells: &[Cell<'_>], tail: &str) -> Sql {
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}{tail}",
        columns.join(", "),
        crate::db::placeholders(cells.len() / width, width)
    );
    Sql::new(sqlx::AssertSqlSafe(sql)).bind_cells(cells)
}

/// Multi-row `INSERT ... ON CONFLICT {conflict} DO NOTHING` of at most `parameters` parameters
/// each (`conflict` is the conflict target, or empty for any): answers the `key` column of
/// each row that went in.
pub(crate) async fn insert_new(
    conn: &mut impl Tx,
    parameters: usize,
    table: &str,
    columns: &[&str],
    rows: &Rows<'_>,
    conflict: &str,
    key: &str,
) -> Result<Vec<String>, sqlx::Error> {
    debug_assert_eq!(columns.len(), rows.width);
    debug_assert!(columns.contains(&key), "the key is one of the columns appended");
    let tail = format!(" ON CONFLICT {conflict} DO NOTHING RETURNING {key}");
    let mut new = Vec::with_capacity(rows.len());
    for cells in rows.chunks(parameters / rows.width) {
        let got: Vec<(String,)> =
            conn.fetch_all(values_statement(table, columns, rows.width, cells, &tail)).await?;
        new.extend(got.into_iter().map(|r| r.0));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Backend;

    #[test]
    fn cells_that_would_end_a_cell_or_a_line_are_escaped() {
        let mut rows = Rows::new(5);
        rows.push(["a\tb\nc\\d\re".into(), 42i64.into(), Some(0.1).into(), None.into(), true.into()]);
        rows.push([
            "".into(),
            (-7i64).into(),
            Some(f64::NEG_INFINITY).into(),
            Some(1e-7).into(),
            false.into(),
        ]);
        let text = String::from_utf8(copy_text(&rows)).unwrap();
        assert_eq!(text, "a\\tb\\nc\\\\d\\re\t42\t0.1\t\\N\tt\n\t-7\t-Infinity\t0.0000001\tf\n");
    }

    #[test]
    #[should_panic(expected = "a row of 2 cells among rows of 3")]
    fn a_row_of_another_width_is_refused() {
        let mut rows = Rows::new(3);
        rows.push(["a".into(), "b".into()]);
    }

    /// Every kind of value reads back as it was appended, on both backends, and an append
    /// inside a transaction goes with it.
    async fn appended_rows_read_back_as_they_were(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "append").await;
        let db = &t.db;
        let create = "CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT NOT NULL, f DOUBLE PRECISION, \
                      yes BOOLEAN NOT NULL, note TEXT NOT NULL)";
        db.execute(Sql::new(create)).await.unwrap();
        let awkward = "tab\there\nline\\slash\r\\N é 🦀 'quote\" ,comma";
        let keys: Vec<String> = (0..2_500).map(|i| format!("k{i:05}")).collect();
        let mut rows = Rows::new(5);
        for (i, k) in keys.iter().enumerate() {
            let f = match i % 4 {
                0 => None,
                1 => Some(i as f64 / 7.0),
                2 => Some(-1e300),
                _ => Some(5e-324),
            };
            rows.push([
                k.into(),
                (i as i64 - 1_000_000_000_000).into(),
                f.into(),
                (i % 2 == 0).into(),
                awkward.into(),
            ]);
        }
        let columns = ["k", "n", "f", "yes", "note"];
        let mut tx = db.begin_write().await.unwrap();
        assert_eq!(tx.append("t", &columns, &rows).await.unwrap(), 2_500, "{backend:?}");
        drop(tx);
        let none: i64 = db.scalar(Sql::new("SELECT COUNT(*) FROM t")).await.unwrap();
        assert_eq!(none, 0, "{backend:?}: a transaction rolled back takes its append with it");
        let mut tx = db.begin_write().await.unwrap();
        tx.append("t", &columns, &rows).await.unwrap();
        tx.commit().await.unwrap();
        let back: Vec<(String, i64, Option<f64>, bool, String)> =
            db.fetch_all(Sql::new("SELECT k, n, f, yes, note FROM t ORDER BY k")).await.unwrap();
        assert_eq!(back.len(), 2_500);
        for ((k, n, f, yes, note), sent) in back.iter().zip(rows.rows()) {
            let expected = (sent[0], Cell::Int(*n), Cell::Float(*f), Cell::Bool(*yes), Cell::Text(note));
            assert_eq!((Cell::Text(k), sent[1], sent[2], sent[3], sent[4]), expected, "{backend:?}");
        }
    }

    /// A key already there fails the append and leaves the connection usable, and the
    /// transaction's other rows go nowhere.
    async fn a_taken_key_fails_the_whole_append(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "appendtaken").await;
        let db = &t.db;
        db.execute(Sql::new("CREATE TABLE t (k TEXT PRIMARY KEY)")).await.unwrap();
        db.execute(Sql::new("INSERT INTO t (k) VALUES ('b')")).await.unwrap();
        let mut rows = Rows::new(1);
        for k in ["a", "b", "c"] {
            rows.push([k.into()]);
        }
        let mut tx = db.begin_write().await.unwrap();
        let e = tx.append("t", &["k"], &rows).await.unwrap_err();
        let taken = e.as_database_error().is_some_and(sqlx::error::DatabaseError::is_unique_violation);
        assert!(taken, "{backend:?}: {e}");
        drop(tx);
        let mut conn = db.conn().await.unwrap();
        let left: Vec<(String,)> = conn.fetch_all(Sql::new("SELECT k FROM t ORDER BY k")).await.unwrap();
        assert_eq!(left, [("b".to_owned(),)], "{backend:?}");
    }

    /// An append given up half way (its caller's deadline) leaves every pooled connection
    /// working and nothing written.
    async fn an_append_given_up_half_way_leaves_the_pool_working(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "appendcut").await;
        let db = &t.db;
        db.execute(Sql::new("CREATE TABLE t (k TEXT PRIMARY KEY, note TEXT NOT NULL)")).await.unwrap();
        let keys: Vec<String> = (0..200_000).map(|i| format!("k{i:07}")).collect();
        let note = "x".repeat(200);
        let mut rows = Rows::new(2);
        for k in &keys {
            rows.push([k.into(), (&note).into()]);
        }
        // Cut at points through the whole append's time: while it starts, sends and ends.
        let mut tx = db.begin_write().await.unwrap();
        let started = std::time::Instant::now();
        tx.append("t", &["k", "note"], &rows).await.unwrap();
        let whole = started.elapsed();
        drop(tx);
        for tenth in 0..10 {
            let wait = whole * tenth / 10;
            let mut tx = db.begin_write().await.unwrap();
            let cut = tokio::time::timeout(wait, tx.append("t", &["k", "note"], &rows));
            if cut.await.is_ok() {
                continue;
            }
            drop(tx);
            for _ in 0..20 {
                let n: i64 = db.scalar(Sql::new("SELECT COUNT(*) FROM t")).await.unwrap();
                assert_eq!(n, 0, "{backend:?}: after giving up at {wait:?} of {whole:?}");
            }
        }
        let mut small = Rows::new(2);
        small.push(["after".into(), "x".into()]);
        let mut tx = db.begin_write().await.unwrap();
        tx.append("t", &["k", "note"], &small).await.unwrap();
        tx.commit().await.unwrap();
        let n: i64 = db.scalar(Sql::new("SELECT COUNT(*) FROM t")).await.unwrap();
        assert_eq!(n, 1, "{backend:?}");
    }

    /// New rows go in (by COPY on PostgreSQL); a row whose key is taken is left out and the
    /// row holding it keeps its values, whether the key was taken before or by the same set;
    /// the transaction's earlier writes and later statements carry on.
    async fn new_rows_append_and_a_taken_key_is_left_out(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "appendnew").await;
        let db = &t.db;
        db.execute(Sql::new("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL)")).await.unwrap();
        db.execute(Sql::new("INSERT INTO t (k, v) VALUES ('b', 'before')")).await.unwrap();
        // Enough rows for a COPY; fewer go by a statement at once.
        let keys = |prefix: &str| (0..100).map(|i| format!("{prefix}{i:03}")).collect::<Vec<_>>();
        let fresh = keys("a");
        let taken = [keys("d"), vec!["b".to_owned()]].concat();
        let twice = [keys("e"), keys("e")].concat();
        let few = keys("f")[..3].to_vec();
        fn rows(keys: &[String]) -> Rows<'_> {
            let mut r = Rows::new(2);
            for k in keys {
                r.push([k.into(), "appended".into()]);
            }
            r
        }
        let sorted = |mut keys: Vec<String>| {
            keys.sort_unstable();
            keys
        };
        let mut tx = db.begin_write().await.unwrap();
        tx.execute(Sql::new("INSERT INTO t (k, v) VALUES ('z', 'z')")).await.unwrap();
        let mut went_in = Vec::new();
        for (set, new, what) in [
            (&fresh, fresh.clone(), "new rows"),
            (&taken, keys("d"), "a key taken before"),
            (&twice, keys("e"), "a key twice in the set"),
            (&few, few.clone(), "a few rows"),
        ] {
            let got = tx.append_new("t", &["k", "v"], &rows(set), "(k)", "k").await.unwrap();
            assert_eq!(sorted(got), new, "{backend:?}: {what}");
            went_in.extend(new);
        }
        let q = "INSERT INTO t (k, v) VALUES ('g', 'g'), ('b', 'g') ON CONFLICT DO NOTHING RETURNING k";
        let added: Vec<(String,)> = tx.fetch_all(Sql::new(q)).await.unwrap();
        assert_eq!(added.len(), 1, "{backend:?}: a statement after a set with a taken key");
        tx.commit().await.unwrap();
        let all: Vec<(String, String)> =
            db.fetch_all(Sql::new("SELECT k, v FROM t ORDER BY k")).await.unwrap();
        let mut expected: Vec<(String, String)> =
            went_in.into_iter().map(|k| (k, "appended".to_owned())).collect();
        for k in ["b", "g", "z"] {
            expected.push((k.to_owned(), if k == "b" { "before" } else { k }.to_owned()));
        }
        expected.sort_unstable();
        assert_eq!(all, expected, "{backend:?}");
    }

    /// A write transaction given up while it begins leaves no connection of the pool inside
    /// a transaction: a statement after it commits on its own.
    async fn a_transaction_given_up_as_it_begins_leaves_none_open(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "begincut").await;
        let db = &t.db;
        // Cut at each of its waits in turn: for the pool, for its check, for BEGIN.
        for step in 1..=12 {
            drop(crate::testing::cut_after_waits(db.begin_write(), step).await);
            // Every connection of the pool (five), each once.
            let mut all = Vec::new();
            for _ in 0..5 {
                all.push(db.conn().await.unwrap());
            }
            for conn in &mut all {
                let inside = match backend {
                    // A savepoint is refused outside a transaction block.
                    Backend::Postgres => conn.execute(Sql::new("SAVEPOINT probe")).await.is_ok(),
                    // A transaction cannot begin inside another.
                    Backend::Sqlite => {
                        let began = conn.execute(Sql::new("BEGIN")).await.is_ok();
                        if began {
                            conn.execute(Sql::new("COMMIT")).await.unwrap();
                        }
                        !began
                    }
                };
                assert!(
                    !inside,
                    "{backend:?}: a pooled connection still in a transaction after a cut at {step}"
                );
            }
            drop(all);
            let mut tx = db.begin_write().await.unwrap();
            tx.execute(Sql::new("SELECT 1")).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    crate::backend_tests!(
        a_transaction_given_up_as_it_begins_leaves_none_open,
        appended_rows_read_back_as_they_were,
        a_taken_key_fails_the_whole_append,
        new_rows_append_and_a_taken_key_is_left_out,
        an_append_given_up_half_way_leaves_the_pool_working
    );
}
