//! Past one database server: the schema distributes by account (Citus, or a PostgreSQL-compatible
//! distributed engine) without changes. Every table's primary key and unique index begins with
//! the account id, so each is enforced inside one shard; every index begins with it except the
//! few that find due work across accounts; and every statement the services ran during the
//! whole test run filters by account id, or says in a leading comment that it looks across
//! accounts (a poll for due work, run on every shard at once, whose work then runs per account).
//!
//! The statements are the ones PostgreSQL saw (`pg_stat_statements`) in this run's database, so
//! it runs after the whole suite: `make test` runs it last (`--ignored`). A test's own statements
//! say so in a leading comment (`/* test: why */`).

use contactier_e2e::SERVICES;
use contactier_runtime::db::Backend;
use contactier_runtime::testing::{TestDb, test_pg_url};
use regex::Regex;
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// Indexes that find due work across accounts: each is read by a statement marked
/// `across accounts`, and on a distributed engine each shard keeps its own.
const ACROSS_ACCOUNTS_INDEXES: [(&str, &str); 9] = [
    ("outbox_due", "the relay's poll for events due, per topic"),
    ("outbox_topic_seq", "the relay's read of events due, in order"),
    ("outbox_account", "the relay's check for an earlier event of the same account still waiting"),
    ("subscriptions_due", "the update-date run's poll for dates due"),
    ("subscriptions_leased", "the update-date run's look for the earliest lease running"),
    ("upgrades_uninvoiced", "the invoice run's poll for upgrades with no invoice"),
    ("contacts_score_due", "the scoring worker's poll for scores due"),
    ("workflow_runs_due", "the workflow worker's poll for runs due"),
    ("deliveries_due", "the delivery worker's poll for deliveries due"),
];

/// Keys not yet led by the account, until no replica of the version before runs: the inbox's
/// by event id, which those replicas ask for a conflict on (`inbox_account_event` takes its
/// place), and a delivery's by id, which the trigger filling their rows' account looks
/// deliveries up by. Listed here so that no other joins them, and a key that moves must leave
/// the list.
const NOT_YET_INDEXES: [&str; 2] = ["inbox_pkey", "deliveries_id_key"];

/// The marker of a test's own statement (setting up rows as a version from before wrote them,
/// reading every row to count them): not the services'.
const TEST: &str = "/* test:";

/// The marker a statement that looks across accounts carries.
const ACROSS: &str = "/* across accounts:";

struct Index {
    table: String,
    name: String,
    primary: bool,
    unique: bool,
    first: String,
}

async fn indexes(db: &TestDb) -> Vec<Index> {
    let q = "SELECT c.relname::text, i.relname::text, x.indisprimary, x.indisunique, \
             COALESCE(a.attname::text, '') \
             FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] \
             WHERE n.nspname = $1 AND c.relname NOT LIKE '\\_%' ORDER BY 1, 2";
    let rows: Vec<(String, String, bool, bool, String)> =
        db.db.fetch_all(contactier_runtime::sql::Sql::new(q).bind(&db.schema)).await.unwrap();
    rows.into_iter()
        .map(|(table, name, primary, unique, first)| Index { table, name, primary, unique, first })
        .collect()
}

async fn tables(db: &TestDb) -> Vec<String> {
    let q = "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname NOT LIKE '\\_%' ORDER BY 1";
    let rows: Vec<(String,)> =
        db.db.fetch_all(contactier_runtime::sql::Sql::new(q).bind(&db.schema)).await.unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

/// Every service's schema, migrated as a deployment migrates it: (service, tables, indexes).
async fn schemas() -> Vec<(&'static str, TestDb)> {
    let mut out = Vec::new();
    for def in SERVICES {
        let db = TestDb::new(Backend::Postgres, def.name).await;
        db.db.migrate_service(def.migrations).await.expect("migrations");
        out.push((def.name, db));
    }
    out
}

/// What is wrong with one index, if anything.
fn index_fault(i: &Index) -> Option<String> {
    if i.first == "account_id" {
        return None;
    }
    let kind = if i.primary {
        "primary key"
    } else if i.unique {
        "unique index"
    } else if ACROSS_ACCOUNTS_INDEXES.iter().any(|(n, _)| *n == i.name) {
        return None;
    } else {
        "index"
    };
    Some(format!("{}: {kind} {} begins with {}", i.table, i.name, i.first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_and_index_begins_with_the_account() {
    let mut faults = Vec::new();
    let (mut seen, mut not_yet) = (BTreeSet::new(), BTreeSet::new());
    for (service, db) in schemas().await {
        let all = indexes(&db).await;
        let keyed: BTreeSet<&str> = all.iter().filter(|i| i.primary).map(|i| i.table.as_str()).collect();
        for t in tables(&db).await {
            if !keyed.contains(t.as_str()) {
                faults.push(format!("{service}: table {t} has no primary key"));
            }
        }
        for i in &all {
            seen.insert(i.name.clone());
            match (index_fault(i), NOT_YET_INDEXES.contains(&i.name.as_str())) {
                (Some(f), false) => faults.push(format!("{service}: {f}")),
                (Some(f), true) => {
                    not_yet.insert(i.name.clone());
                    println!("not yet: {service}: {f}");
                }
                (None, true) => {
                    faults.push(format!("{service}: {} is led by the account now: unlist it", i.name));
                }
                (None, false) => {}
            }
        }
    }
    // The exceptions name indexes that exist: one dropped or renamed leaves no stale excuse.
    for (name, why) in ACROSS_ACCOUNTS_INDEXES {
        assert!(seen.contains(name), "{name} ({why}) is listed as an exception but no schema has it");
    }
    for name in NOT_YET_INDEXES {
        assert!(
            not_yet.contains(name),
            "{name} is listed as not yet led by the account but no schema has it"
        );
    }
    assert!(
        faults.is_empty(),
        "keys and indexes that do not begin with the account id:\n{}",
        faults.join("\n")
    );
}

/// The tables a statement names after FROM, JOIN, INTO or UPDATE (unqualified: the services
/// reach their tables through the search path; a test's own schema-qualified reads are not theirs).
fn named_tables(sql: &str, ours: &BTreeSet<String>) -> BTreeSet<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"(?i)\b(?:FROM|JOIN|INTO|UPDATE)\s+([a-z_][a-z0-9_]*)\b"#).unwrap());
    RE.captures_iter(sql).map(|c| c[1].to_lowercase()).filter(|t| ours.contains(t)).collect()
}

/// Whether a statement is limited to the accounts it names: it compares the account id with a
/// parameter (=, IN, ANY, a row of it), or inserts rows that carry it.
fn filters_by_account(sql: &str) -> bool {
    static RULES: LazyLock<[Regex; 5]> = LazyLock::new(|| {
        [
            // Compared with a parameter: =, IN, ANY.
            r#"(?i)\baccount_id\s*(=|IN\b|<>)\s*(\(|\$\d|ANY\b)"#,
            // A row of it compared or looked up.
            r#"(?i)\(\s*(?:[a-z_]+\.)?account_id\s*,[^)]*\)\s*(=|IN\b)"#,
            // Rows inserted carry it.
            r#"(?is)^\s*INSERT\s+INTO\s+[a-z_]+\s*\([^)]*\baccount_id\b"#,
            // Several accounts at once: a parameter's records name them ...
            r#"(?i)jsonb_to_recordset\(\$\d+::jsonb\)\s+AS\s+[a-z_]+\s*\(\s*(account_id|acct)\b"#,
            // ... joined on the account id.
            r#"(?i)\baccount_id\s*=\s*[a-z_]+\.(account_id|acct)\b"#,
        ]
        .map(|r| Regex::new(r).unwrap())
    });
    let [compare, row, insert, records, joined] = &*RULES;
    compare.is_match(sql)
        || row.is_match(sql)
        || insert.is_match(sql)
        || (records.is_match(sql) && joined.is_match(sql))
}

/// Whether a statement is one of the migrations': PostgreSQL shows their constants as
/// parameters, so each parameter stands for any text.
fn from_migration(sql: &str, migrations: &[String]) -> bool {
    let param = Regex::new(r"\$\d+").unwrap();
    let pattern: Vec<String> = param.split(sql).map(regex::escape).collect();
    // Migrations' statements are short; the services' many-row statements are not theirs.
    if pattern.len() > 9 {
        return false;
    }
    let re = Regex::new(&pattern.join(".+?")).unwrap();
    migrations.iter().any(|m| re.is_match(m))
}

/// A statement without comments, on one line.
fn bare(sql: &str) -> String {
    static BLOCK: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)/\*.*?\*/").unwrap());
    static LINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"--[^\n]*").unwrap());
    let text = LINE.replace_all(&BLOCK.replace_all(sql, " "), " ").into_owned();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reads the statements of the whole run: `make test` runs it after the suite"]
async fn every_statement_of_the_run_filters_by_account() {
    let schemas = schemas().await;
    let mut ours = BTreeSet::new();
    for (_, db) in &schemas {
        ours.extend(tables(db).await);
    }
    // A migration's own statements run once, from the migrate Job, before any replica.
    let migrations: Vec<String> = SERVICES
        .iter()
        .filter_map(|d| d.migrations)
        .flat_map(|m| m.postgres.iter())
        .map(|m| bare(m.sql.as_str()))
        .collect();
    let pool = sqlx::PgPool::connect(&test_pg_url()).await.unwrap();
    let loaded: (String,) = sqlx::query_as("SHOW shared_preload_libraries").fetch_one(&pool).await.unwrap();
    assert!(
        loaded.0.contains("pg_stat_statements"),
        "PostgreSQL at {} does not load pg_stat_statements: ALTER SYSTEM SET shared_preload_libraries = \
         'pg_stat_statements' and restart it (.ci/run does)",
        test_pg_url()
    );
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&pool).await.unwrap();
    let statements: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND toplevel",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let utility = Regex::new(
        r"(?i)^(CREATE|ALTER|DROP|COMMENT|BEGIN|COMMIT|ROLLBACK|START|SET|RESET|SAVEPOINT|RELEASE|LOCK|ANALYZE|SHOW|VACUUM|LISTEN|UNLISTEN|TRUNCATE|EXPLAIN|COPY|DO|PREPARE|DEALLOCATE|DISCARD)\b",
    )
    .unwrap();
    let (mut checked, mut across, mut faults) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (query, _) in &statements {
        let sql = bare(query);
        if utility.is_match(&sql) || query.trim_start().starts_with(TEST) {
            continue;
        }
        let named = named_tables(&sql, &ours);
        if named.is_empty() {
            continue;
        }
        if query.contains(ACROSS) {
            across.insert(sql.clone());
        } else if !filters_by_account(&sql) {
            // Checked last: matching a migration's text is the slow test.
            if from_migration(&sql, &migrations) {
                continue;
            }
            let tables: Vec<_> = named.into_iter().collect();
            faults.insert(format!("[{}] {}", tables.join(", "), sql.chars().take(240).collect::<String>()));
        }
        checked.insert(sql);
    }
    let evicted: Option<(i64,)> =
        sqlx::query_as("SELECT dealloc FROM pg_stat_statements_info").fetch_optional(&pool).await.unwrap();
    println!(
        "{} statements of the services' tables seen ({} distinct); {} look across accounts; \
         {} evictions from pg_stat_statements since its reset",
        statements.len(),
        checked.len(),
        across.len(),
        evicted.map(|e| e.0).unwrap_or(0)
    );
    for s in &across {
        println!("  across accounts: {}", s.chars().take(160).collect::<String>());
    }
    // A run that saw none of them checked nothing.
    assert!(
        checked.len() > 100,
        "only {} statements of the services were seen: was the suite run first?",
        checked.len()
    );
    assert!(
        faults.is_empty(),
        "{} statements do not filter by account id:\n{}",
        faults.len(),
        faults.into_iter().collect::<Vec<_>>().join("\n")
    );
    drop(schemas);
}

#[test]
fn the_statement_rules_tell_filtered_from_unfiltered() {
    assert!(filters_by_account("SELECT a FROM t WHERE account_id = $1 AND id = $2"));
    assert!(filters_by_account("UPDATE t SET a = 1 WHERE account_id IN (SELECT value FROM json_each($1))"));
    assert!(filters_by_account("DELETE FROM t WHERE (account_id, id) IN (SELECT a, b FROM x)"));
    assert!(filters_by_account("INSERT INTO t (account_id, id) VALUES ($1, $2)"));
    assert!(!filters_by_account(
        "SELECT o.account_id FROM outbox o JOIN outbox w ON w.account_id = o.account_id"
    ));
    assert!(!filters_by_account("INSERT INTO inbox (event_id, received_at) VALUES ($1, $2)"));
    assert!(!filters_by_account("SELECT * FROM recipients WHERE id = $1"));
    let batch =
        "UPDATE s SET n = 1 FROM jsonb_to_recordset($1::jsonb) AS x(acct text) WHERE s.account_id = x.acct";
    assert!(filters_by_account(batch));
    assert!(!filters_by_account(
        "UPDATE s SET n = 1 FROM jsonb_to_recordset($1::jsonb) AS x(id text) WHERE s.id = x.id"
    ));
    let ours: BTreeSet<String> = ["contacts".to_owned(), "outbox".to_owned()].into();
    assert_eq!(named_tables("SELECT 1 FROM \"s\".contacts JOIN outbox o ON true", &ours).len(), 1);
    assert_eq!(bare("-- why\nSELECT /* c */ 1\n  FROM t"), "SELECT 1 FROM t");
}
