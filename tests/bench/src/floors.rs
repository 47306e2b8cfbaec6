//! Limits measured with PostgreSQL alone, beside the service paths they bound.

use crate::procs;
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection};
use std::time::Instant;

/// The services whose tables an import writes.
const IMPORT_SERVICES: [&str; 2] = ["contacts", "marketing_status"];

/// The import's own floor: every row one account's import left in the tables of both services it
/// writes, copied out and then COPYed back, timed, into empty tables like them (same columns, keys
/// and indexes; no triggers). Each service's tables go in on their own connection, side by side,
/// as the two services write them. Events the import sent are left out: one per batch of rows,
/// deleted once delivered. Returns the rows copied and the account's contacts a second.
pub async fn import_floor(prefix: &str, account: &str, contacts: usize) -> anyhow::Result<(u64, f64)> {
    anyhow::ensure!(!account.contains('\''), "account id {account:?} would need quoting");
    let mut copies = Vec::new();
    for service in IMPORT_SERVICES {
        copies.push(tables_of(prefix, service, account).await?);
    }
    let start = Instant::now();
    let written = futures::future::try_join_all(copies.iter().map(|t| copy_in(t))).await?;
    let took = start.elapsed();
    let mut c = PgConnection::connect(&procs::pg_url()).await?;
    for service in IMPORT_SERVICES {
        let floor = format!("{prefix}{service}_floor");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA \"{floor}\" CASCADE"))).execute(&mut c).await?;
    }
    let expected: u64 = copies.iter().flatten().map(|t| t.rows).sum();
    let rows: u64 = written.iter().sum();
    anyhow::ensure!(rows == expected, "the floor wrote {rows} of {expected} rows");
    Ok((rows, contacts as f64 / took.as_secs_f64()))
}

/// One table's rows of the account, as COPY's binary format, and the empty table they go into.
struct TableCopy {
    into: String,
    rows: u64,
    data: Vec<Vec<u8>>,
}

/// Creates `{service}_floor` with an empty table like each of the service's tables (not its
/// views) that holds rows of the account, and reads those rows out.
async fn tables_of(prefix: &str, service: &str, account: &str) -> anyhow::Result<Vec<TableCopy>> {
    let schema = format!("{prefix}{service}");
    let floor = format!("{schema}_floor");
    let mut c = PgConnection::connect(&procs::pg_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{floor}\""))).execute(&mut c).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::TEXT FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = $1 AND c.column_name = 'account_id' AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await?;
    let mut out = Vec::new();
    for table in tables {
        let from = format!("\"{schema}\".{table}");
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {from} WHERE account_id = $1"
        )))
        .bind(account)
        .fetch_one(&mut c)
        .await?;
        if rows == 0 {
            continue;
        }
        let into = format!("\"{floor}\".{table}");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {into} (LIKE {from} INCLUDING ALL)")))
            .execute(&mut c)
            .await?;
        let data: Vec<Vec<u8>> = c
            .copy_out_raw(&format!(
                "COPY (SELECT * FROM {from} WHERE account_id = '{account}') TO STDOUT (FORMAT binary)"
            ))
            .await?
            .map_ok(|b| b.to_vec())
            .try_collect()
            .await?;
        out.push(TableCopy { into, rows: rows as u64, data });
    }
    Ok(out)
}

/// COPYs each table's rows in, one table after another on one connection; the rows written.
async fn copy_in(tables: &[TableCopy]) -> anyhow::Result<u64> {
    let mut c = PgConnection::connect(&procs::pg_url()).await?;
    let mut rows = 0;
    for t in tables {
        let mut copy = c.copy_in_raw(&format!("COPY {} FROM STDIN (FORMAT binary)", t.into)).await?;
        for chunk in &t.data {
            copy.send(chunk.as_slice()).await?;
        }
        rows += copy.finish().await?;
    }
    Ok(rows)
}
