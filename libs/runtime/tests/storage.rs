//! Migrations, outbox and inbox on both backends.

use chrono::{TimeZone, Utc};
use contactier_runtime::db::{Backend, Db, Migrations};
use contactier_runtime::outbox::{self, Backoff, Deliver, EventTx, Outbox};
use contactier_runtime::sql::{Sql, Tx};
use contactier_runtime::testing::{TestDb, poison};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NO_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/sqlite");
static NO_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/postgres");
const SERVICE_MIGRATIONS: Migrations = Migrations { sqlite: &NO_SQLITE, postgres: &NO_POSTGRES };

async fn table_names(db: &Db) -> Vec<String> {
    let q = match db.backend() {
        Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        Backend::Postgres => {
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
        }
    };
    let names: Vec<(String,)> = db.fetch_all(Sql::new(q)).await.unwrap();
    names.into_iter().map(|n| n.0).collect()
}

/// A test database with a table of accounts' rows, `a` and `b`, for another session to hold.
async fn held_rows(backend: Backend, name: &str) -> TestDb {
    let t = migrated(backend, name).await;
    t.db.execute(Sql::new("CREATE TABLE held (account_id TEXT PRIMARY KEY, n BIGINT NOT NULL)"))
        .await
        .unwrap();
    t.db.execute(Sql::new("INSERT INTO held (account_id, n) VALUES ('a', 0), ('b', 0)")).await.unwrap();
    t
}

/// A test database with the runtime's and the test service's tables.
async fn migrated(backend: Backend, name: &str) -> TestDb {
    let t = TestDb::new(backend, name).await;
    t.db.migrate_service(Some(&SERVICE_MIGRATIONS)).await.unwrap();
    t
}

async fn enqueue(db: &Db, payload: &[u8], commit: bool) -> String {
    enqueue_as(db, "acct", payload, commit).await
}

/// An event of `account` enqueued at 2026-05-01 00:00 UTC, committed or rolled back.
async fn enqueue_as(db: &Db, account: &str, payload: &[u8], commit: bool) -> String {
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let mut tx = db.begin_write().await.unwrap();
    let id = outbox::new_event_id();
    tx.enqueue(&id, "topic", account, payload, now).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    id
}

async fn receive(db: &Db, event_id: &str) -> bool {
    db.conn().await.unwrap().receive("acct-1", event_id, Utc::now()).await.unwrap()
}

async fn migrations_create_runtime_and_service_tables_and_rerun_as_no_ops(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    t.db.migrate_service(Some(&SERVICE_MIGRATIONS)).await.expect("second run is a no-op");
    let tables = table_names(&t.db).await;
    for want in ["outbox", "inbox", "widgets", "_runtime_migrations", "_sqlx_migrations"] {
        assert!(tables.iter().any(|t| t == want), "{backend:?}: {want} missing from {tables:?}");
    }
    t.db.ping().await.unwrap();
}

#[tokio::test]
async fn postgres_services_keep_to_their_own_schema() {
    let a = migrated(Backend::Postgres, "alpha").await;
    let b = migrated(Backend::Postgres, "beta").await;
    enqueue(&a.db, b"only in a", true).await;
    assert_eq!(Outbox::new(a.db.clone(), "topic").pending().await.unwrap(), 1);
    assert_eq!(Outbox::new(b.db.clone(), "topic").pending().await.unwrap(), 0);
}

/// Services of one database starting together (their indexes built CONCURRENTLY, which waits
/// for every open transaction of the database) all get their tables, while other sessions keep
/// transactions open beside them.
#[tokio::test]
async fn postgres_migrations_of_many_schemas_at_once_all_finish() {
    let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    let dbs: Vec<TestDb> =
        futures::future::join_all(names.iter().map(|n| TestDb::new(Backend::Postgres, n))).await;
    let busy = dbs[0].db.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut tx = busy.begin_write().await.unwrap();
                tx.execute(Sql::new("SELECT 1")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.commit().await.unwrap();
            }
        })
    };
    let runs = dbs.iter().map(|t| t.db.migrate_service(Some(&SERVICE_MIGRATIONS)));
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(runs))
        .await
        .expect("migrations finish");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    for (t, r) in dbs.iter().zip(results) {
        r.unwrap_or_else(|e| panic!("{}: {e:#}", t.schema));
        assert!(table_names(&t.db).await.iter().any(|n| n == "outbox"), "{}", t.schema);
    }
}

/// The test service's migrations up to `version`, as a version before applied them.
fn up_to(version: i64) -> &'static Migrations {
    contactier_runtime::testing::migrations_up_to(&SERVICE_MIGRATIONS, version)
}

/// A connection of its own on the test's schema (another replica, a report, psql).
async fn session(t: &TestDb) -> sqlx::PgConnection {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&t.url).await.unwrap();
    let q = format!("SET search_path TO \"{}\"", t.schema);
    sqlx::query(sqlx::AssertSqlSafe(q)).execute(&mut c).await.unwrap();
    c
}

/// A migration that needs a table's lock while a long transaction reads the table gives way
/// and tries again, rather than queue every writer of the table behind it until the reader
/// ends (replicas of the version before serve through a rollout); it is applied once the
/// reader is done.
#[tokio::test]
async fn postgres_a_migration_gives_way_to_a_long_reader_and_the_writers_go_on() {
    let t = TestDb::new(Backend::Postgres, "give_way").await;
    t.db.migrate_service(Some(up_to(1))).await.unwrap();
    let mut reader = session(&t).await;
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("SELECT count(*) FROM widgets").execute(&mut reader).await.unwrap();
    let db = t.db.clone();
    let migrate = tokio::spawn(async move { db.migrate_service(Some(&SERVICE_MIGRATIONS)).await });
    // Long enough for the migration to be waiting for the lock, and to have given way once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut writer = session(&t).await;
    sqlx::query("SET statement_timeout = '20s'").execute(&mut writer).await.unwrap();
    let wrote =
        sqlx::query("INSERT INTO widgets (name) VALUES ('while migrating')").execute(&mut writer).await;
    assert!(wrote.is_ok(), "a writer waited for the reader behind the migration: {wrote:?}");
    assert!(!migrate.is_finished(), "the migration could not have its lock yet");
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    migrate.await.unwrap().unwrap();
    let q = "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = 'widgets' AND column_name = 'note'";
    let added: i64 = sqlx::query_scalar(q).fetch_one(&mut writer).await.unwrap();
    assert_eq!(added, 1, "applied once the reader was done");
}

/// A replica of the version before starts on a database the newer version migrated further (a
/// pod rescheduled mid-rollout, a rollback): the migrations it does not know are left alone.
async fn a_database_ahead_of_the_binary_is_taken(backend: Backend) {
    let t = migrated(backend, "ahead").await;
    t.db.migrate_service(Some(up_to(1))).await.unwrap();
    assert!(table_names(&t.db).await.contains(&"widgets".to_owned()), "{backend:?}");
}

/// A replica killed while it built an index CONCURRENTLY leaves the index invalid; the next
/// migration builds it again instead of keeping the invalid one.
#[tokio::test]
async fn postgres_an_index_left_invalid_is_built_again() {
    let t = migrated(Backend::Postgres, "invalid").await;
    let Db::Postgres(pool) = &t.db else { unreachable!() };
    let valid = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = 'outbox_account' AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert!(valid().await);
    // What a build cut short leaves: the index marked invalid, its migration not recorded.
    sqlx::query(
        "UPDATE pg_index SET indisvalid = FALSE WHERE indexrelid = \
         (SELECT c.oid FROM pg_class c WHERE c.relname = 'outbox_account' \
          AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()))",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM _runtime_migrations WHERE version = 2").execute(pool).await.unwrap();
    assert!(!valid().await);
    t.db.migrate_service(Some(&SERVICE_MIGRATIONS)).await.unwrap();
    assert!(valid().await, "rebuilt");
}

async fn outbox_keeps_only_committed_events_and_retries_until_acknowledged(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    enqueue(&t.db, b"rolled back", false).await;
    assert_eq!(ob.pending().await.unwrap(), 0, "{backend:?}: a rolled-back change leaves no event");
    let first = enqueue(&t.db, b"one", true).await;
    let second = enqueue(&t.db, b"two", true).await;

    // The receiver is down: nothing is lost, both wait for a retry.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let down: Deliver =
        Box::new(|_| Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) }));
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
    assert_eq!(ob.relay_once(now, &down, backoff, 10, 1 << 20).await.unwrap(), 0);
    assert_eq!(ob.pending().await.unwrap(), 2);
    assert!(
        ob.due(now, 10, 1 << 20).await.unwrap().is_empty(),
        "{backend:?}: retried only after the backoff"
    );
    let retry = ob.next_due().await.unwrap().unwrap();
    assert!(
        retry > now && retry <= now + chrono::Duration::milliseconds(1200),
        "{backend:?}: retry at {retry}"
    );

    // Back up, but it acknowledges only the first: the second stays for the next round.
    let s = seen.clone();
    let partial: Deliver = Box::new(move |events| {
        let s = s.clone();
        Box::pin(async move {
            s.lock().unwrap().extend(events.iter().map(|e| e.payload.clone()));
            Ok(events
                .into_iter()
                .filter(|e| e.payload == b"one")
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
                .into())
        })
    });
    let later = now + chrono::Duration::seconds(5);
    assert_eq!(ob.relay_once(later, &partial, backoff, 10, 1 << 20).await.unwrap(), 1);
    assert_eq!(*seen.lock().unwrap(), vec![b"one".to_vec(), b"two".to_vec()], "{backend:?}: oldest first");
    let left = ob.due(later + chrono::Duration::minutes(5), 10, 1 << 20).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id, second);
    // Counted once, when not acknowledged: while the receiver was down it waited behind the
    // first, its account's, with no failure of its own.
    assert_eq!(left[0].attempts, 1);
    assert_ne!(first, second);
}

async fn a_relay_read_stops_at_its_byte_budget_and_the_rest_follow_in_order(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut ids = Vec::new();
    for fill in [b'a', b'b', b'c'] {
        ids.push(enqueue(&t.db, &[fill; 300], true).await);
    }
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let read = |max_bytes| {
        let ob = ob.clone();
        async move {
            ob.due(now, 10, max_bytes).await.unwrap().into_iter().map(|e| e.event_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(read(500).await, ids[..2], "{backend:?}: the entry that reaches the budget ends the read");
    assert_eq!(read(600).await, ids[..2], "{backend:?}: exactly at the budget");
    assert_eq!(read(601).await, ids, "{backend:?}: under it, all");
    assert_eq!(read(1).await, ids[..1], "{backend:?}: an entry over the budget goes alone");
    assert_eq!(read(0).await, ids[..1], "{backend:?}: never nothing while something is due");
    assert_eq!(ob.due(now, 2, 1 << 20).await.unwrap().len(), 2, "{backend:?}: the count limit holds too");

    // The relay reads on after a read the budget ended, and delivers everything in order; the
    // read the budget ended is one account's, which keeps half of it (one entry).
    let reads = Arc::new(Mutex::new(Vec::new()));
    let r = reads.clone();
    let all: Deliver = Box::new(move |events| {
        let r = r.clone();
        Box::pin(async move {
            let ids: Vec<String> = events.into_iter().map(|e| e.event_id).collect();
            r.lock().unwrap().push(ids.clone());
            Ok(ids.into())
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
    assert_eq!(ob.relay_once(now, &all, backoff, 10, 500).await.unwrap(), 3);
    assert_eq!(
        *reads.lock().unwrap(),
        vec![ids[..1].to_vec(), ids[1..2].to_vec(), ids[2..].to_vec()],
        "{backend:?}"
    );
    assert_eq!(ob.pending().await.unwrap(), 0);
}

async fn a_receiver_down_is_tried_once_a_pause_not_for_every_read_of_the_backlog(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    // 30 accounts with an event each, read 10 at a time: a backlog of three reads.
    let mut tx = t.db.begin_write().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..30 {
        let id = contactier_runtime::outbox::new_event_id();
        tx.enqueue(&id, "topic", &format!("acct-{n:02}"), b"e", at).await.unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    let tries = Arc::new(Mutex::new(0));
    let c = tries.clone();
    let down: Deliver = Box::new(move |_| {
        *c.lock().unwrap() += 1;
        Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) })
    });
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
    let now = at + chrono::Duration::seconds(1);
    let next = ob.step(now, &down, backoff, 10, 1 << 20).await.unwrap().expect("events wait");
    assert_eq!(*tries.lock().unwrap(), 3, "{backend:?}: the read, then two of its events alone");
    assert!(next >= now + chrono::Duration::seconds(1), "{backend:?}: back at {next}, not at once");
    // Woken meanwhile (a new event, say): the receiver is not tried before then.
    let woken =
        ob.step(now + chrono::Duration::milliseconds(500), &down, backoff, 10, 1 << 20).await.unwrap();
    assert_eq!(*tries.lock().unwrap(), 3, "{backend:?}: tried during the pause");
    assert_eq!(woken, Some(next), "{backend:?}");
    let tried =
        Sql::new("/* across accounts: events tried */ SELECT COUNT(*) FROM outbox WHERE attempts > 0");
    let failed: i64 = t.db.scalar(tried).await.unwrap();
    assert_eq!(failed, 10, "{backend:?}: one read's events written over, not the backlog's");
    // A second turn down in a row waits longer.
    let again = ob.step(next, &down, backoff, 10, 1 << 20).await.unwrap().unwrap();
    assert!(again >= next + chrono::Duration::seconds(2), "{backend:?}: {again}");
    // One event tried over a long outage waits minutes for its retry.
    ob.retry_at(("acct-29", &ids[29]), again + chrono::Duration::minutes(5), "unavailable").await.unwrap();
    // Back up: everything goes at once, each event once, that one too.
    let (up, got) = recording();
    let next = ob.step(again, &up, backoff, 10, 1 << 20).await.unwrap();
    if next.is_some_and(|n| n <= again) {
        ob.step(again, &up, backoff, 10, 1 << 20).await.unwrap();
    }
    assert_eq!(ob.pending().await.unwrap(), 0, "{backend:?}: left waiting for a backoff");
    let mut got = got.lock().unwrap().clone();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "{backend:?}");
}

/// A receiver that acknowledges everything, and the ids of what it was sent, in order.
fn recording() -> (Deliver, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let up: Deliver = Box::new(move |events| {
        let g = g.clone();
        Box::pin(async move {
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    (up, got)
}

/// An event for each of `accounts`, tried a dozen times already (their own next retry five
/// minutes out, as after a long outage), then eight turns of the receiver down, each turn's
/// next asserted within `within` seconds; then the receiver back and nothing new enqueued.
/// Answers the events enqueued and what the next turn delivered.
async fn through_an_outage(backend: Backend, accounts: &[&str], within: i64) -> (Vec<String>, Vec<String>) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let mut ids = Vec::new();
    for account in accounts {
        ids.push(enqueue_as(&t.db, account, b"e", true).await);
    }
    let worn =
        "/* across accounts: the test's events as after a long outage */ UPDATE outbox SET attempts = 12";
    t.db.execute(Sql::new(worn)).await.unwrap();
    let down: Deliver =
        Box::new(|_| Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) }));
    let backoff = Backoff::default();
    let mut now = at + chrono::Duration::seconds(1);
    for turn in 0..8 {
        let next = ob.step(now, &down, backoff, 10, 1 << 20).await.unwrap().expect("events wait");
        assert!(next > now, "{backend:?}: turn {turn} back at once");
        assert!(
            next <= now + chrono::Duration::seconds(within),
            "{backend:?}: turn {turn} back {} s after the receiver did not answer",
            (next - now).num_seconds()
        );
        now = next;
    }
    let (up, got) = recording();
    assert_eq!(ob.step(now, &up, backoff, 10, 1 << 20).await.unwrap(), None, "{backend:?}");
    let got = got.lock().unwrap().clone();
    (ids, got)
}

/// Events tried over a long outage had their own backoff grown to minutes: with the receiver
/// back and nothing new sent, nothing moved until the first of those retries (165 s after a
/// ten-minute outage, seen from outside). Tried while the receiver is down, they wait for the
/// pause's end instead, at most 10 s; the backlog goes at the next turn, each event once.
async fn after_a_long_outage_the_backlog_goes_within_a_pause_of_the_receivers_return(backend: Backend) {
    let (mut ids, mut got) = through_an_outage(backend, &["a", "b", "c", "d", "e"], 10).await;
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "{backend:?}");
}

async fn a_receivers_storage_failing_for_one_account_holds_up_that_account_only(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let enqueue_for = |account: &'static str| enqueue_as(&t.db, account, b"e", true);
    // The receiver's storage fails on account q's event, answered as an outage is.
    let q1 = enqueue_for("q").await;
    let a1 = enqueue_for("a").await;
    let b1 = enqueue_for("b").await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let storage_fails_for_q: Deliver = Box::new(move |events| {
        let g = g.clone();
        Box::pin(async move {
            if events.iter().any(|e| e.account_id == "q") {
                return Err(tonic::Status::unavailable("storage unavailable, retry").into());
            }
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(60) };
    let now = at + chrono::Duration::seconds(1);
    ob.step(now, &storage_fails_for_q, backoff, 10, 1 << 20).await.unwrap();
    assert_eq!(*got.lock().unwrap(), [a1.clone(), b1.clone()], "{backend:?}: the other accounts went on");
    // Not taken for an outage: another account's new event goes at once, q's waits for its retry.
    let c1 = enqueue_for("c").await;
    let next = ob.step(now, &storage_fails_for_q, backoff, 10, 1 << 20).await.unwrap();
    assert_eq!(*got.lock().unwrap(), [a1, b1, c1], "{backend:?}");
    assert!(next.is_some_and(|n| n >= now + chrono::Duration::seconds(8)), "{backend:?}: {next:?}");
    let left = ob.due(now + chrono::Duration::minutes(5), 10, 1 << 20).await.unwrap();
    assert_eq!(left.iter().map(|e| (&e.event_id, e.attempts)).collect::<Vec<_>>(), [(&q1, 1)], "{backend:?}");
    // q's retries fail again, alone, turn after turn: still its own trouble, not an outage.
    let retry = next.unwrap();
    let retry = ob.step(retry, &storage_fails_for_q, backoff, 10, 1 << 20).await.unwrap().unwrap();
    ob.step(retry, &storage_fails_for_q, backoff, 10, 1 << 20).await.unwrap();
    let d1 = enqueue_for("d").await;
    ob.step(retry, &storage_fails_for_q, backoff, 10, 1 << 20).await.unwrap();
    assert_eq!(got.lock().unwrap().last(), Some(&d1), "{backend:?}: d waited for a pause");
    assert_eq!(ob.due(retry + chrono::Duration::minutes(5), 10, 1 << 20).await.unwrap()[0].attempts, 3);
}

async fn two_accounts_failing_in_one_turn_are_not_sent_again_at_each_delivery_after(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let enqueue_for = |account: &'static str| enqueue_as(&t.db, account, b"e", true);
    // The receiver's storage fails on p's and q's events, answered as an outage is: two in one
    // turn read as one, and the relay pauses.
    for account in ["p", "q"] {
        // Failed before, so their own retries now lie further off than a first pause.
        let id = enqueue_for(account).await;
        for _ in 0..3 {
            ob.retry_at((account, &id), at, "storage unavailable, retry").await.unwrap();
        }
    }
    let tries = Arc::new(Mutex::new(0));
    let c = tries.clone();
    let fails_for_p_and_q: Deliver = Box::new(move |events| {
        let c = c.clone();
        Box::pin(async move {
            if events.iter().any(|e| e.account_id == "p" || e.account_id == "q") {
                *c.lock().unwrap() += 1;
                return Err(tonic::Status::unavailable("storage unavailable, retry").into());
            }
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
    let now = at + chrono::Duration::seconds(1);
    ob.step(now, &fails_for_p_and_q, backoff, 10, 1 << 20).await.unwrap();
    let sent = *tries.lock().unwrap();
    // The first pause is the backoff's first step (1-1.2 s); p's and q's own, their fourth (8 s on).
    let resumed = now + chrono::Duration::milliseconds(1250);
    // At the pause's end p and q are tried once more, with a's new event: a is answered, so the
    // receiver is up and p's and q's failing is their own. They wait for their own retries then,
    // and b's and c's events go without them.
    enqueue_for("a").await;
    ob.step(resumed, &fails_for_p_and_q, backoff, 10, 1 << 20).await.unwrap();
    // The read, then a alone (answered) and p and q together, then p and q each alone.
    assert_eq!(*tries.lock().unwrap(), sent + 4, "{backend:?}: p and q tried past alone");
    assert_eq!(ob.pending().await.unwrap(), 2, "{backend:?}: a went");
    for account in ["b", "c"] {
        enqueue_for(account).await;
        ob.step(resumed, &fails_for_p_and_q, backoff, 10, 1 << 20).await.unwrap();
    }
    assert_eq!(*tries.lock().unwrap(), sent + 4, "{backend:?}: p and q sent again");
    assert_eq!(ob.pending().await.unwrap(), 2, "{backend:?}");
}

async fn inbox_applies_each_event_once(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    assert!(receive(&t.db, "evt-1").await, "{backend:?}: first delivery applies");
    assert!(!receive(&t.db, "evt-1").await, "{backend:?}: redelivery is recognised");
    assert!(receive(&t.db, "evt-2").await);
}

async fn an_event_the_receiver_refuses_holds_up_its_own_account_only(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let enqueue_for =
        |account: &'static str, payload: &'static [u8]| enqueue_as(&t.db, account, payload, true);
    // Account a's first event is one the receiver refuses; its second must wait behind it.
    let poison = enqueue_for("a", b"poison").await;
    let b1 = enqueue_for("b", b"b1").await;
    let a2 = enqueue_for("a", b"a2").await;
    let c1 = enqueue_for("c", b"c1").await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let picky: Deliver = Box::new(move |events| {
        let g = g.clone();
        Box::pin(async move {
            if events.iter().any(|e| e.payload == b"poison") {
                return Err(tonic::Status::invalid_argument("events.payload: refused").into());
            }
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let backoff = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(60) };
    assert_eq!(ob.relay_once(now, &picky, backoff, 10, 1 << 20).await.unwrap(), 2, "{backend:?}");
    assert_eq!(*got.lock().unwrap(), [b1.clone(), c1.clone()], "{backend:?}: the other accounts went on");
    // What is left is due when the refused event is retried, not now: a relay told "now"
    // would go round without pause while a2 waits behind it.
    let next = ob.next_due().await.unwrap().expect("events wait");
    assert!(next >= now + chrono::Duration::seconds(10), "{backend:?}: next due at {next}");
    // Retried, the refused event still holds back a2, and only a2.
    let soon = now + chrono::Duration::seconds(13);
    assert_eq!(ob.relay_once(soon, &picky, backoff, 10, 1 << 20).await.unwrap(), 0, "{backend:?}");
    assert_eq!(got.lock().unwrap().len(), 2, "{backend:?}: a2 went before the event ahead of it");
    let failing =
        contactier_runtime::work::OutboxFailures::source(t.db.clone()).failing(None, 10).await.unwrap();
    let refused = failing.iter().find(|f| f.item == poison).expect("the refused event is listed");
    assert_eq!((refused.worker.as_str(), refused.account_id.as_str()), ("relay:topic", "a"));
    assert!(refused.last_error.contains("refused"), "{}", refused.last_error);
    // The receiver down: its first event, which failed before, alone in its read (one call);
    // the account's later one waits.
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let down: Deliver = Box::new(move |_| {
        *c.lock().unwrap() += 1;
        Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) })
    });
    let later = now + chrono::Duration::minutes(10);
    assert_eq!(ob.relay_once(later, &down, backoff, 10, 1 << 20).await.unwrap(), 0);
    assert_eq!(*calls.lock().unwrap(), 1, "{backend:?}: its first event alone");
    // Once the receiver takes it, the account's events arrive in their order.
    let g = got.clone();
    let fixed: Deliver = Box::new(move |events| {
        let g = g.clone();
        Box::pin(async move {
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let much_later = later + chrono::Duration::minutes(10);
    assert_eq!(ob.relay_once(much_later, &fixed, backoff, 10, 1 << 20).await.unwrap(), 2);
    assert_eq!(*got.lock().unwrap(), [b1, c1, poison, a2], "{backend:?}");
}

/// A storage error's answer says whether retrying can help: a statement the database refuses
/// for what it writes (a check, a trigger failing on one account's data) fails the same however
/// often it is sent, and answered UNAVAILABLE it read to a relay as its receiver being down.
async fn storage_errors_say_whether_a_retry_can_help(backend: Backend) {
    let t = migrated(backend, "failures").await;
    let db = &t.db;
    let code = |e: sqlx::Error| tonic::Status::from(contactier_runtime::error::Error::from(e)).code();
    db.execute(Sql::new(
        "CREATE TABLE guarded (account_id TEXT NOT NULL, id TEXT NOT NULL, v INTEGER NOT NULL CHECK (v > 0), \
         PRIMARY KEY (account_id, id))",
    ))
    .await
    .unwrap();
    poison(db, "guarded", "NEW.account_id = 'poisoned'", "ABORT").await;
    let insert = |account: &'static str, id: &'static str, v: i32| {
        Sql::new("INSERT INTO guarded (account_id, id, v) VALUES ($1, $2, $3)").bind(account).bind(id).bind(v)
    };
    db.execute(insert("a", "1", 1)).await.unwrap();

    let taken = db.execute(insert("a", "1", 2)).await.unwrap_err();
    assert_eq!(code(taken), tonic::Code::Aborted, "{backend:?}: a key taken meanwhile is a conflict");
    let checked = db.execute(insert("a", "2", -1)).await.unwrap_err();
    assert_eq!(code(checked), tonic::Code::Internal, "{backend:?}: a check refused");
    let poisoned = db.execute(insert("poisoned", "3", 1)).await.unwrap_err();
    assert_eq!(code(poisoned), tonic::Code::Internal, "{backend:?}: one account's trigger refused");

    if backend == Backend::Postgres {
        // The server ends the session, as a restart or a failover does.
        let mut conn = db.conn().await.unwrap();
        let gone = conn.execute(Sql::new("SELECT pg_terminate_backend(pg_backend_pid())")).await.unwrap_err();
        assert_eq!(code(gone), tonic::Code::Unavailable, "{backend:?}: the session ended");
    }
    db.close().await;
    let closed = db.execute(insert("a", "4", 1)).await.unwrap_err();
    assert_eq!(code(closed), tonic::Code::Unavailable, "{backend:?}: no connection to be had");
}

/// A write of `bounded` work (a receiver applying an account's events) gives up a row another
/// session holds, or a statement that runs on, as storage held up (`ABORTED`), where it
/// held its sender's call to the deadline and a pooled connection at each retry; other work
/// still waits for the lock (PostgreSQL; SQLite has one writer and no row locks).
async fn a_bounded_write_gives_up_a_held_row_or_a_slow_statement(backend: Backend) {
    use contactier_runtime::db::{BOUNDED_LOCK_WAIT, HeldAccounts, bounded};
    let held = HeldAccounts::default();
    let t = held_rows(backend, "bounded").await;
    let db = t.db.clone();
    let write = |account: &'static str, db: Db| async move {
        let mut tx = db.begin_write().await?;
        tx.execute(Sql::new("UPDATE held SET n = n + 1 WHERE account_id = $1").bind(account)).await?;
        tx.commit().await
    };
    let status = |e: sqlx::Error| tonic::Status::from(contactier_runtime::error::Error::from(e));
    let reason = |s: &tonic::Status| {
        use tonic_types::StatusExt as _;
        s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
    };
    bounded(&held, write("a", db.clone())).await.unwrap();
    if backend == Backend::Sqlite {
        return;
    }
    let mut holder = db.begin_write().await.unwrap();
    holder.execute(Sql::new("UPDATE held SET n = n + 10 WHERE account_id = 'b'")).await.unwrap();
    let e = status(bounded(&held, write("b", db.clone())).await.unwrap_err());
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(e.message().contains("held up"), "{e:?}");
    assert_eq!(reason(&e), "HELD_UP_BY_LOCK", "what a caller branches on");
    bounded(&held, write("a", db.clone())).await.unwrap();
    // Unbounded, the same write waits for the holder, and then goes in.
    let waiting = tokio::spawn(write("b", db.clone()));
    tokio::time::sleep(BOUNDED_LOCK_WAIT + Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "an unbounded write waits for the lock");
    holder.commit().await.unwrap();
    waiting.await.unwrap().unwrap();
    let n = |account: &'static str| {
        let db = db.clone();
        async move { db.scalar::<i64>(Sql::new("SELECT n FROM held WHERE account_id = $1").bind(account)).await }
    };
    assert_eq!((n("a").await.unwrap(), n("b").await.unwrap()), (2, 11), "the held-up write changed nothing");

    // A statement that runs on (a slow trigger, say) is given up too.
    let slow = bounded(&held, async {
        let mut tx = db.begin_write().await?;
        tx.execute(Sql::new("SELECT pg_sleep(60)")).await?;
        tx.commit().await
    });
    let e = status(slow.await.unwrap_err());
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(e.message().contains("held up"), "{e:?}");
    assert_eq!(reason(&e), "HELD_UP_BY_STATEMENT", "told from a held row without the message");
}

/// An account whose bounded work was held up lately gives up a held lock at once: its sender
/// retries it alone, and each retry's full wait was every other account's wait too (twenty held
/// kept every other account's events about 30 s late). Other accounts, and other receivers,
/// keep the full wait; once the hold ends the account's work goes in (PostgreSQL).
async fn an_account_held_up_lately_gives_up_a_held_lock_at_once(backend: Backend) {
    use contactier_runtime::db::{
        BOUNDED_LOCK_WAIT, BOUNDED_LOCK_WAIT_AGAIN, HeldAccounts, bounded, for_account,
    };
    if backend == Backend::Sqlite {
        return;
    }
    let t = held_rows(backend, "held_again").await;
    let db = t.db.clone();
    // The lock wait the transaction began with, then its write.
    let write = |account: &'static str, db: Db| async move {
        let mut tx = db.begin_write().await?;
        let wait: String = tx.scalar(Sql::new("SHOW lock_timeout")).await?;
        tx.execute(Sql::new("UPDATE held SET n = n + 1 WHERE account_id = $1").bind(account)).await?;
        tx.commit().await.map(|()| wait)
    };
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let (full, again) = (ms(BOUNDED_LOCK_WAIT), ms(BOUNDED_LOCK_WAIT_AGAIN));
    let held_up = |r: Result<String, sqlx::Error>| {
        let e = tonic::Status::from(contactier_runtime::error::Error::from(r.unwrap_err()));
        assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
        assert!(e.message().contains("held up"), "{e:?}");
    };
    let (receiver, other_receiver) = (HeldAccounts::default(), HeldAccounts::default());
    let mut holder = db.begin_write().await.unwrap();
    holder.execute(Sql::new("UPDATE held SET n = n + 10 WHERE account_id IN ('a', 'b')")).await.unwrap();

    let started = std::time::Instant::now();
    held_up(bounded(&receiver, for_account("b", write("b", db.clone()))).await);
    assert!(started.elapsed() >= BOUNDED_LOCK_WAIT, "the first time, the full wait");
    for _ in 0..3 {
        held_up(bounded(&receiver, for_account("b", write("b", db.clone()))).await);
    }
    // What each began with: b's own, again, the short wait; not another account's, nor another
    // receiver's, nor work not begun for one account.
    let waits = || {
        let db = db.clone();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let wait: String = tx.scalar(Sql::new("SHOW lock_timeout")).await.unwrap();
            tx.rollback().await.unwrap();
            wait
        }
    };
    assert_eq!(bounded(&receiver, for_account("b", waits())).await, again);
    assert_eq!(bounded(&receiver, for_account("a", waits())).await, full);
    assert_eq!(bounded(&other_receiver, for_account("b", waits())).await, full);
    assert_eq!(bounded(&receiver, waits()).await, full);

    // Within one bounded work (a call), once one account's lock was given up, the other
    // accounts' are given up at once.
    let (first, next) = bounded(&HeldAccounts::default(), async {
        let first = for_account("a", write("a", db.clone())).await;
        (first, for_account("c", waits()).await)
    })
    .await;
    held_up(first);
    assert_eq!(next, again, "the call's next account gives a held lock up at once");

    // Once let go, b's write goes in (with the short wait: nothing holds it now).
    holder.rollback().await.unwrap();
    assert_eq!(bounded(&receiver, for_account("b", write("b", db.clone()))).await.unwrap(), again);
    let n: i64 = db.scalar(Sql::new("SELECT n FROM held WHERE account_id = 'b'")).await.unwrap();
    assert_eq!(n, 1, "the held-up tries changed nothing, the last went in once");
}

/// A write given up while its statement waits (its caller gone, a deadline passed) has the
/// statement cancelled, and its connection is back for others: it waited on the lock for as
/// long as the lock was held, holding its pooled connection, so that a sender retrying each
/// cut call pinned one more connection each time until the pool ran dry (seen from outside).
async fn a_write_given_up_mid_statement_frees_its_connection(backend: Backend) {
    let t = migrated(backend, "given_up").await;
    let db = t.db.clone();
    if backend == Backend::Sqlite {
        return;
    }
    db.execute(Sql::new("CREATE TABLE held (account_id TEXT PRIMARY KEY, n BIGINT NOT NULL)")).await.unwrap();
    db.execute(Sql::new("INSERT INTO held (account_id, n) VALUES ('b', 0)")).await.unwrap();
    let mut holder = db.begin_write().await.unwrap();
    holder.execute(Sql::new("UPDATE held SET n = n + 10 WHERE account_id = 'b'")).await.unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE held SET n = n + 2 %'";
    for _ in 0..3 {
        let write = {
            let db = db.clone();
            async move {
                let mut tx = db.begin_write().await?;
                tx.execute(Sql::new("UPDATE held SET n = n + 2 WHERE account_id = 'b'")).await?;
                tx.commit().await
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(300), write).await.is_err(),
            "it waits on the lock"
        );
    }
    let mut left = -1;
    for _ in 0..50 {
        left = db.scalar::<i64>(Sql::new(waiting)).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "statements given up still wait on the lock");
    holder.commit().await.unwrap();
    let n = db.scalar::<i64>(Sql::new("SELECT n FROM held WHERE account_id = 'b'")).await.unwrap();
    assert_eq!(n, 10, "no write given up went in");
}

/// A trigger that ends the whole transaction (SQLite's `RAISE(ROLLBACK)`; its disk full or I/O
/// errors do the same) left the connection's transaction counted as open: every later
/// transaction on it failed ("begin_with at non-zero transaction depth"), for every account,
/// until a restart. The failing account's write fails; the connection goes on for the others.
async fn a_transaction_the_database_ended_leaves_no_connection_broken(backend: Backend) {
    let t = migrated(backend, "ended").await;
    let db = &t.db;
    db.execute(Sql::new("CREATE TABLE counted (account_id TEXT NOT NULL, n INTEGER NOT NULL)"))
        .await
        .unwrap();
    poison(db, "counted", "NEW.account_id = 'poisoned'", "ROLLBACK").await;
    let insert =
        |account: &'static str| Sql::new("INSERT INTO counted (account_id, n) VALUES ($1, 1)").bind(account);
    // Failed both ways a caller ends a failed transaction: rolled back, and dropped.
    for explicit in [true, false] {
        let mut tx = db.begin_write().await.unwrap();
        tx.execute(insert("a")).await.unwrap();
        assert!(tx.execute(insert("poisoned")).await.is_err(), "{backend:?}");
        if explicit {
            let _ = tx.rollback().await;
        } else {
            drop(tx);
        }
    }
    // More transactions than the pool has connections: each one is used again.
    for _ in 0..12 {
        let mut tx = db.begin_write().await.unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        tx.execute(insert("b")).await.unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{backend:?}: {e}"));
    }
    let q = Sql::new(
        "SELECT account_id, COUNT(*) FROM counted WHERE account_id IN ('a', 'b') GROUP BY account_id ORDER BY account_id",
    );
    let counts: Vec<(String, i64)> = db.fetch_all(q).await.unwrap();
    assert_eq!(counts, [("b".to_owned(), 12)], "{backend:?}: the failed transactions left nothing");
}

/// A small backlog never has two events fail alone in one turn, so the receiver is never taken
/// to be down: one account's events behind its first, or a few accounts' whose retries do not
/// fall due together. Each waited out its own backoff, grown over the outage to minutes (32 s to
/// 142 s after the receiver's return, seen from outside). Unanswered, an event is tried again
/// within 12 s whatever it tried before.
async fn a_small_backlog_is_tried_within_seconds_while_its_receiver_is_down(backend: Backend) {
    let (ids, got) = through_an_outage(backend, &["a", "a", "a"], 12).await;
    assert_eq!(got, ids, "{backend:?}: each once, in order");
}

/// The relay reads due events in time order, and a retry sets its account's later events to its
/// time. An event enqueued behind a retry after it (racing it) comes out earlier in time than
/// the events before it: it still goes after them, and a read that could keep none of its
/// events reads in `seq` order instead of coming back empty.
async fn an_event_enqueued_behind_a_retry_goes_after_the_events_before_it(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let enqueue_at = |account: &'static str, when: chrono::DateTime<Utc>| {
        let db = t.db.clone();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let id = outbox::new_event_id();
            tx.enqueue(&id, "topic", account, b"e", when).await.unwrap();
            tx.commit().await.unwrap();
            id
        }
    };
    let a1 = enqueue_at("a", at).await;
    let a2 = enqueue_at("a", at).await;
    // a1 failed: retried (with a2 behind it) a minute on.
    let retry = at + chrono::Duration::minutes(1);
    ob.retry_at(("a", &a1), retry, "refused").await.unwrap();
    // Enqueued after the retry was written, as of a moment before it: earlier in time than a1.
    let a3 = enqueue_at("a", at + chrono::Duration::seconds(1)).await;
    let b1 = enqueue_at("b", at + chrono::Duration::seconds(2)).await;
    let b2 = enqueue_at("b", at + chrono::Duration::seconds(3)).await;
    let now = retry + chrono::Duration::seconds(1);
    // c's event waits an hour on: the read goes in time order while any event waits.
    let c1 = enqueue_at("c", at).await;
    ob.retry_at(("c", &c1), now + chrono::Duration::hours(1), "refused").await.unwrap();
    // One at a time: the first in time is a3, which cannot go before a1; a1 is read instead.
    let first: Vec<String> = ob.due(now, 1, 1 << 20).await.unwrap().into_iter().map(|e| e.event_id).collect();
    assert_eq!(first, std::slice::from_ref(&a1), "{backend:?}");
    // Three at a time: a3, b1 and b2 come first in time; a's is left out, b's go.
    let (up, got) = recording();
    ob.relay_once(now, &up, Backoff::default(), 3, 1 << 20).await.unwrap();
    assert_eq!(ob.pending().await.unwrap(), 1, "{backend:?}: c's waits");
    let got = got.lock().unwrap().clone();
    let of_a: Vec<&String> = got.iter().filter(|id| [&a1, &a2, &a3].contains(id)).collect();
    assert_eq!(of_a, [&a1, &a2, &a3], "{backend:?}: a's in order");
    let of_b: Vec<&String> = got.iter().filter(|id| [&b1, &b2].contains(id)).collect();
    assert_eq!(of_b, [&b1, &b2], "{backend:?}: b's in order");
}

/// One account's backlog released at once (its poison mended, an outage over) is the oldest
/// due and filled every read until it drained: another account's new event waited the whole
/// drain (20-26 s behind 3,000-5,000 single changes, seen from outside). Now the backlog keeps
/// half of each read and the other accounts' events due take the rest; each account's events
/// still go in order, each once.
async fn a_released_backlog_shares_each_read_with_other_accounts(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut backlog = Vec::new();
    for _ in 0..300 {
        backlog.push(enqueue_as(&t.db, "p", b"e", true).await);
    }
    let fresh = enqueue_as(&t.db, "h", b"e", true).await;
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    // Two more written while the first call is answered, after the time the turn began.
    let later = outbox::new_event_id();
    let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let (c, db, l) = (calls.clone(), t.db.clone(), later.clone());
    let up: Deliver = Box::new(move |events| {
        let (c, db, l) = (c.clone(), db.clone(), l.clone());
        Box::pin(async move {
            if c.lock().unwrap().is_empty() {
                let mut tx = db.begin_write().await.unwrap();
                tx.enqueue(&l, "topic", "h", b"e", now + chrono::Duration::seconds(1)).await.unwrap();
                tx.enqueue(&format!("{l}-2"), "topic", "h", b"e", now + chrono::Duration::seconds(2))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            c.lock().unwrap().push(events.iter().map(|e| e.event_id.clone()).collect());
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    ob.relay_once(now, &up, Backoff::default(), 100, 1 << 20).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls[0].contains(&fresh),
        "{backend:?}: h's event waited behind p's backlog: first call {} of p's",
        calls[0].len()
    );
    assert_eq!(calls[0].len(), 51, "{backend:?}: half of the read p's");
    let both = [later.clone(), format!("{later}-2")];
    assert!(
        both.iter().all(|id| calls[1].contains(id)),
        "{backend:?}: h's events written during the turn waited: {} calls",
        calls.len()
    );
    let of_p: Vec<String> =
        calls.concat().into_iter().filter(|id| *id != fresh && !both.contains(id)).collect();
    assert_eq!(of_p, backlog, "{backend:?}: p's in order, each once");
    assert_eq!(ob.pending().await.unwrap(), 0, "{backend:?}");
}

/// A drain's reads run at the clock's time as each begins: an event written during a call goes
/// in the next read, shared or not, not after the turn's end; and the backlog keeps half of a
/// read though no other account has events due, so one written meanwhile waits for a call of
/// half a read at most.
async fn what_is_written_during_a_drain_goes_in_the_read_after_it(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut backlog = Vec::new();
    for _ in 0..120 {
        backlog.push(enqueue_as(&t.db, "p", b"e", true).await);
    }
    let start = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let clock = Arc::new(Mutex::new(start));
    let written = outbox::new_event_id();
    let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let (c, db, w, k) = (calls.clone(), t.db.clone(), written.clone(), clock.clone());
    let up: Deliver = Box::new(move |events| {
        let (c, db, w, k) = (c.clone(), db.clone(), w.clone(), k.clone());
        Box::pin(async move {
            // h writes while the first call is answered, a second into the turn.
            if c.lock().unwrap().is_empty() {
                let at = start + chrono::Duration::seconds(1);
                *k.lock().unwrap() = at;
                let mut tx = db.begin_write().await.unwrap();
                tx.enqueue(&w, "topic", "h", b"e", at).await.unwrap();
                tx.commit().await.unwrap();
            }
            c.lock().unwrap().push(events.iter().map(|e| e.event_id.clone()).collect());
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let now = move || *clock.lock().unwrap();
    ob.relay_turn(&now, &up, Backoff::default(), 100, 1 << 20).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls[0].len(), 50, "{backend:?}: the backlog alone keeps half of a read");
    assert!(
        calls.get(1).is_some_and(|c| c.contains(&written)),
        "{backend:?}: written during the first call, it waited for the turn's end: {:?}",
        calls.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let of_p: Vec<String> = calls.concat().into_iter().filter(|id| *id != written).collect();
    assert_eq!(of_p, backlog, "{backend:?}: p's in order, each once");
    assert_eq!(ob.pending().await.unwrap(), 0, "{backend:?}");
}

/// An event refused during a drain is not tried again within it, though its retry falls due as
/// the turn's reads go on at the clock's time: each try of it fails the read it is in, whose
/// events then go one call each.
async fn an_event_refused_in_a_drain_waits_for_the_drains_end(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let refused = enqueue_as(&t.db, "q", b"e", true).await;
    for _ in 0..300 {
        enqueue_as(&t.db, "p", b"e", true).await;
    }
    let start = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let clock = Arc::new(Mutex::new(start));
    let (tries, calls) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let refused_at = Arc::new(Mutex::new(start));
    let (k, r, tr, c, ra) =
        (clock.clone(), refused.clone(), tries.clone(), calls.clone(), refused_at.clone());
    let picky: Deliver = Box::new(move |events| {
        let (k, r, tr, c, ra) = (k.clone(), r.clone(), tr.clone(), c.clone(), ra.clone());
        Box::pin(async move {
            // A second a call: the refused event's retry (200 ms on) is due at the next read.
            *k.lock().unwrap() += chrono::Duration::seconds(1);
            *c.lock().unwrap() += 1;
            if events.iter().any(|e| e.event_id == r) {
                *tr.lock().unwrap() += 1;
                *ra.lock().unwrap() = *k.lock().unwrap();
                return Err(anyhow::Error::new(tonic::Status::invalid_argument("refused")));
            }
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let now = move || *clock.lock().unwrap();
    let delivered = ob.relay_turn(&now, &picky, Backoff::default(), 100, 1 << 20).await.unwrap();
    assert_eq!(delivered, 300, "{backend:?}: p's all delivered");
    assert_eq!(*tries.lock().unwrap(), 2, "{backend:?}: the refused event tried in its read and alone, once");
    assert!(*calls.lock().unwrap() <= 60, "{backend:?}: {} calls", calls.lock().unwrap());
    // Its retry is reckoned from when it was refused, after the calls before it, not from the
    // read's time (then it was due already when written, and refused at the next turn's start
    // it sent that read one call each again).
    let refused_at = *refused_at.lock().unwrap();
    assert!(
        refused_at > start + chrono::Duration::seconds(1),
        "{backend:?}: refused alone, after its read's call"
    );
    let next = ob.next_due().await.unwrap().expect("the refused event waits");
    assert!(next > refused_at, "{backend:?}: its retry at {next}, refused at {refused_at} or later");
}

/// A read the receiver fails on one account's event is sent again in halves, the accounts that
/// have failed before last, down to that account alone: the read's other events went one call
/// each (250 calls, 9-14 s behind one refused event, seen from outside). Refused or unanswered,
/// the failing account waits for its retry, every other event goes once, and the receiver,
/// which answered the others, is not taken to be down.
async fn a_read_failing_on_one_account_goes_again_in_halves_not_one_call_an_event(backend: Backend) {
    for (how, failure) in [
        ("refused", tonic::Status::invalid_argument("events.payload: refused")),
        ("unanswered", tonic::Status::unavailable("storage unavailable, retry")),
    ] {
        let t = migrated(backend, "runtime").await;
        let ob = Outbox::new(t.db.clone(), "topic");
        let mut healthy = Vec::new();
        for n in 0..64 {
            healthy.push(enqueue_as(&t.db, &format!("acct-{n:02}"), b"e", true).await);
            if n == 40 {
                enqueue_as(&t.db, "bad", b"e", true).await;
            }
        }
        healthy.sort();
        let later = enqueue_as(&t.db, "bad", b"e", true).await;
        let calls = Arc::new(Mutex::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (c, g) = (calls.clone(), got.clone());
        let fails_on_bad: Deliver = Box::new(move |events| {
            let (c, g, failure) = (c.clone(), g.clone(), failure.clone());
            Box::pin(async move {
                *c.lock().unwrap() += 1;
                if events.iter().any(|e| e.account_id == "bad") {
                    return Err(failure.into());
                }
                g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
                Ok(events.into_iter().map(|e| e.event_id).collect())
            })
        });
        let backoff = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(60) };
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
        let delivered = ob.relay_once(now, &fails_on_bad, backoff, 100, 1 << 20).await.unwrap();
        let calls_made = *calls.lock().unwrap();
        println!("{backend:?}, {how}: {calls_made} calls for a read of 66 events");
        assert_eq!(delivered, 64, "{backend:?}, {how}");
        let mut sent = got.lock().unwrap().clone();
        sent.sort();
        assert_eq!(sent, healthy, "{backend:?}, {how}: every other event, each once");
        // The read, then two halves a level down to the account alone: 1 + 2 * 7.
        assert!(calls_made <= 15, "{backend:?}, {how}: {calls_made} calls");
        let left = ob.due(now + chrono::Duration::minutes(5), 10, 1 << 20).await.unwrap();
        assert_eq!(left.len(), 2, "{backend:?}, {how}: the failing account's events wait");
        assert_eq!((left[0].attempts, left[1].attempts), (1, 0), "{backend:?}, {how}");
        assert_eq!(left[1].event_id, later, "{backend:?}, {how}");
        // Not an outage: another account's new event goes at once.
        let fresh = enqueue_as(&t.db, "acct-99", b"e", true).await;
        ob.relay_once(now, &fails_on_bad, backoff, 100, 1 << 20).await.unwrap();
        assert_eq!(got.lock().unwrap().last(), Some(&fresh), "{backend:?}, {how}: taken for an outage");
    }
}

/// An account's backlog that fails on one of its later events goes in halves of its events, in
/// order, down to that event: the events before it went one call each (149 calls before the
/// 150th of 200). Those before it arrive once each, in order; it and those after it wait for its
/// retry. Retried, a head that failed before is tried alone first: one call, not a walk down.
async fn an_accounts_backlog_failing_at_one_event_goes_in_halves_to_it(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(enqueue_as(&t.db, "p", if n == 149 { b"poison" } else { b"e" }, true).await);
    }
    let calls = Arc::new(Mutex::new(0));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (c, g) = (calls.clone(), got.clone());
    let picky: Deliver = Box::new(move |events| {
        let (c, g) = (c.clone(), g.clone());
        Box::pin(async move {
            *c.lock().unwrap() += 1;
            if events.iter().any(|e| e.payload == b"poison") {
                return Err(tonic::Status::invalid_argument("events.payload: refused").into());
            }
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(60) };
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let delivered = ob.relay_once(now, &picky, backoff, 500, 1 << 20).await.unwrap();
    let made = *calls.lock().unwrap();
    println!("{backend:?}: {made} calls for 200 events failing at the 150th");
    assert_eq!(delivered, 149, "{backend:?}");
    assert_eq!(*got.lock().unwrap(), ids[..149], "{backend:?}: those before it, in order, once each");
    // The read, then a window halved about eight times down to the event.
    assert!(made <= 20, "{backend:?}: {made} calls");
    let left = ob.due(now + chrono::Duration::minutes(5), 500, 1 << 20).await.unwrap();
    assert_eq!(left.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(), ids[149..], "{backend:?}");
    assert_eq!(left[0].attempts, 1, "{backend:?}");
    // At its retry, in a read with another account's event, it is tried alone first, not with
    // the rest of its account's first, and holds the rest back again.
    let h = enqueue_as(&t.db, "h", b"e", true).await;
    *calls.lock().unwrap() = 0;
    let retry = now + chrono::Duration::minutes(5);
    assert_eq!(ob.relay_once(retry, &picky, backoff, 500, 1 << 20).await.unwrap(), 1, "{backend:?}");
    assert_eq!(*calls.lock().unwrap(), 3, "{backend:?}: the read, h's event, then the head alone");
    assert_eq!(got.lock().unwrap().last(), Some(&h), "{backend:?}");
    assert_eq!(ob.pending().await.unwrap(), 51, "{backend:?}");
    // The receiver not answering, a fresh backlog: the read, then its head alone, not a walk
    // down in halves (each unanswered call can take a whole deadline).
    for _ in 0..100 {
        enqueue_as(&t.db, "r", b"e", true).await;
    }
    let c = calls.clone();
    let down: Deliver = Box::new(move |_| {
        *c.lock().unwrap() += 1;
        Box::pin(async { Err(tonic::Status::deadline_exceeded("deadline passed").into()) })
    });
    *calls.lock().unwrap() = 0;
    assert_eq!(ob.relay_once(retry, &down, backoff, 500, 1 << 20).await.unwrap(), 0, "{backend:?}");
    assert_eq!(*calls.lock().unwrap(), 2, "{backend:?}: the read, then r's head alone");
}

/// A receiver that applies what it can and names the events it refused, each with why, costs
/// one call for a failing account: its event waits for its retry with the receiver's reason
/// (listed for operators), retried within seconds when the reason is its storage not being
/// there, with the backoff when refused; the others are delivered, nothing sent again.
async fn events_a_receiver_names_as_refused_wait_with_its_reason(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut healthy = Vec::new();
    for n in 0..20 {
        healthy.push(enqueue_as(&t.db, &format!("acct-{n:02}"), b"e", true).await);
    }
    let refused = enqueue_as(&t.db, "bad", b"refused", true).await;
    let later = enqueue_as(&t.db, "bad", b"e", true).await;
    let down = enqueue_as(&t.db, "slow", b"down", true).await;
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let partial: Deliver = Box::new(move |events| {
        *c.lock().unwrap() += 1;
        Box::pin(async move {
            let mut answer = outbox::Delivered::default();
            let mut failed = std::collections::HashSet::new();
            for e in events {
                if failed.contains(&e.account_id) {
                    continue;
                }
                match e.payload.as_slice() {
                    b"refused" => {
                        answer.refused.push((e.event_id, tonic::Status::internal("a check refused it")));
                    }
                    b"down" => {
                        answer.refused.push((e.event_id, tonic::Status::unavailable("its shard is down")));
                    }
                    _ => {
                        answer.acked.push(e.event_id);
                        continue;
                    }
                }
                failed.insert(e.account_id);
            }
            Ok(answer)
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(60), max: Duration::from_secs(300) };
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    assert_eq!(ob.relay_once(now, &partial, backoff, 100, 1 << 20).await.unwrap(), 20, "{backend:?}");
    assert_eq!(*calls.lock().unwrap(), 1, "{backend:?}: one call, nothing sent again");
    let failing =
        contactier_runtime::work::OutboxFailures::source(t.db.clone()).failing(None, 10).await.unwrap();
    let why = |id: &str| failing.iter().find(|f| f.item == id).map(|f| f.last_error.clone());
    assert!(why(&refused).is_some_and(|e| e.contains("a check refused it")), "{backend:?}: {failing:?}");
    assert!(why(&down).is_some_and(|e| e.contains("its shard is down")), "{backend:?}: {failing:?}");
    // Bad's later event was not tried on its own: it waits behind the first with no failure of
    // its own (each one given a retry went in parts, each at its own backoff, 9-57 s apart).
    assert_eq!(why(&later), None, "{backend:?}: {failing:?}");
    // The refused event waits for its backoff (60 s on), the one whose storage was down at most
    // the pause's 12 s; bad's later event waits behind its own.
    let soon = ob.due(now + chrono::Duration::seconds(13), 100, 1 << 20).await.unwrap();
    assert_eq!(
        soon.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&down),
        "{backend:?}"
    );
    let all = ob.due(now + chrono::Duration::minutes(5), 100, 1 << 20).await.unwrap();
    let waiting: Vec<String> = all.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(waiting.len(), 3, "{backend:?}: {waiting:?}");
    assert!(waiting.contains(&later) && waiting.contains(&refused), "{backend:?}");
}

/// The receiver back after an outage answers, refusing one account's event: that event keeps
/// its backoff. Waking what waited out the outage woke it too, and it was sent again straight
/// after the call that refused it.
async fn an_event_refused_as_the_receiver_returns_keeps_its_backoff(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    for account in ["a", "b", "c"] {
        enqueue_as(&t.db, account, b"e", true).await;
    }
    let refused = enqueue_as(&t.db, "bad", b"refused", true).await;
    let down: Deliver =
        Box::new(|_| Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) }));
    let backoff = Backoff { initial: Duration::from_secs(60), max: Duration::from_secs(300) };
    let mut now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    // Three turns down: an outage, not one pause.
    for _ in 0..3 {
        now = ob.step(now, &down, backoff, 10, 1 << 20).await.unwrap().expect("events wait");
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let refusing: Deliver = Box::new(move |events| {
        c.lock().unwrap().push(events.len());
        Box::pin(async move {
            let mut answer = outbox::Delivered::default();
            for e in events {
                if e.payload == b"refused" {
                    answer.refused.push((e.event_id, tonic::Status::internal("a check refused it")));
                } else {
                    answer.acked.push(e.event_id);
                }
            }
            Ok(answer)
        })
    });
    ob.step(now, &refusing, backoff, 10, 1 << 20).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), [4], "{backend:?}: one call");
    assert_eq!(ob.pending().await.unwrap(), 1, "{backend:?}");
    let soon = ob.due(now + chrono::Duration::seconds(1), 10, 1 << 20).await.unwrap();
    assert!(soon.is_empty(), "{backend:?}: the refused event is due again at once");
    let later = ob.due(now + chrono::Duration::minutes(10), 10, 1 << 20).await.unwrap();
    assert_eq!(later.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(), [refused], "{backend:?}");
}

/// An event a receiver names as refused in a call that took seconds (a drain's first call,
/// 3.5-8 s, seen from outside) waits for its retry from the answer: reckoned from the read, its
/// retry was due when the answer came and it was sent again at once.
async fn an_event_refused_in_a_slow_call_waits_from_the_answer(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    enqueue_as(&t.db, "a", b"e", true).await;
    let refused = enqueue_as(&t.db, "bad", b"refused", true).await;
    enqueue_as(&t.db, "bad", b"e", true).await;
    let start = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    let clock = Arc::new(Mutex::new(start));
    let k = clock.clone();
    let slow: Deliver = Box::new(move |events| {
        let k = k.clone();
        Box::pin(async move {
            *k.lock().unwrap() += chrono::Duration::seconds(5);
            let mut answer = outbox::Delivered::default();
            for e in events {
                match e.payload.as_slice() {
                    b"refused" => {
                        answer.refused.push((e.event_id, tonic::Status::internal("a check refused it")));
                    }
                    _ if e.account_id == "bad" => {}
                    _ => answer.acked.push(e.event_id),
                }
            }
            Ok(answer)
        })
    });
    let now = move || *clock.lock().unwrap();
    let delivered = ob.relay_turn(&now, &slow, Backoff::default(), 100, 1 << 20).await.unwrap();
    assert_eq!(delivered, 1, "{backend:?}");
    let answered = start + chrono::Duration::seconds(5);
    let next = ob.next_due().await.unwrap().expect("bad's events wait");
    assert!(next > answered, "{backend:?}: its retry at {next}, the answer at {answered}");
    let held = ob.due(next, 10, 1 << 20).await.unwrap();
    assert_eq!(held.len(), 2, "{backend:?}: bad's two, together");
    assert_eq!((held[0].event_id.as_str(), held[1].attempts), (refused.as_str(), 0), "{backend:?}");
}

/// While the receiver is down, each account's first event is tried and counts the failure,
/// with the receiver's error; its later events wait behind it without one of their own. Each was
/// counted as tried, with no error written: after an outage an account's whole backlog was
/// listed as failing work, for as long as its first event was refused.
async fn while_the_receiver_is_down_an_accounts_first_event_alone_counts_as_failing(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut heads = Vec::new();
    for account in ["a", "b", "c", "d"] {
        heads.push(enqueue_as(&t.db, account, b"e", true).await);
        for _ in 0..3 {
            enqueue_as(&t.db, account, b"e", true).await;
        }
    }
    let down: Deliver =
        Box::new(|_| Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) }));
    let mut now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    for _ in 0..3 {
        now = ob.step(now, &down, Backoff::default(), 100, 1 << 20).await.unwrap().expect("events wait");
    }
    let failing =
        contactier_runtime::work::OutboxFailures::source(t.db.clone()).failing(None, 100).await.unwrap();
    let mut listed: Vec<String> = failing.iter().map(|f| f.item.clone()).collect();
    listed.sort();
    heads.sort();
    assert_eq!(listed, heads, "{backend:?}: {failing:?}");
    for f in &failing {
        assert!(f.last_error.contains("connection refused"), "{backend:?}: {f:?}");
    }
    assert_eq!(ob.pending().await.unwrap(), 16, "{backend:?}");
}

/// At its retry, an account's first event that failed before goes alone in its read, its later
/// ones in the read after it: one call a retry while it is still refused (its events together
/// failed, then it alone, two calls and two errors logged by the receiver each time), and the
/// account's backlog in the same turn once it is taken.
async fn a_retried_first_event_goes_alone_in_its_read(backend: Backend) {
    let t = migrated(backend, "runtime").await;
    let ob = Outbox::new(t.db.clone(), "topic");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(enqueue_as(&t.db, "bad", if n == 0 { b"poison" } else { b"e" }, true).await);
    }
    let (calls, got, mended) =
        (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(false)));
    let (c, g, m) = (calls.clone(), got.clone(), mended.clone());
    let picky: Deliver = Box::new(move |events| {
        let (c, g, m) = (c.clone(), g.clone(), m.clone());
        Box::pin(async move {
            c.lock().unwrap().push(events.len());
            if !*m.lock().unwrap() && events.iter().any(|e| e.payload == b"poison") {
                return Err(tonic::Status::internal("storage refused the change").into());
            }
            g.lock().unwrap().extend(events.iter().map(|e| e.event_id.clone()));
            Ok(events.into_iter().map(|e| e.event_id).collect())
        })
    });
    let backoff = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(60) };
    let mut now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
    ob.relay_once(now, &picky, backoff, 500, 1 << 20).await.unwrap();
    assert_eq!(ob.pending().await.unwrap(), 5, "{backend:?}");
    for retry in 0..3 {
        now = ob.next_due().await.unwrap().expect("bad's events wait");
        calls.lock().unwrap().clear();
        assert_eq!(ob.relay_once(now, &picky, backoff, 500, 1 << 20).await.unwrap(), 0, "{backend:?}");
        assert_eq!(*calls.lock().unwrap(), [1], "{backend:?}: retry {retry}, its head alone, one call");
    }
    *mended.lock().unwrap() = true;
    now = ob.next_due().await.unwrap().unwrap();
    calls.lock().unwrap().clear();
    assert_eq!(ob.relay_once(now, &picky, backoff, 500, 1 << 20).await.unwrap(), 5, "{backend:?}");
    assert_eq!(*calls.lock().unwrap(), [1, 4], "{backend:?}: the head, then the rest in the same turn");
    assert_eq!(*got.lock().unwrap(), ids, "{backend:?}: in order, once each");
}

contactier_runtime::backend_tests!(
    events_a_receiver_names_as_refused_wait_with_its_reason,
    an_event_refused_as_the_receiver_returns_keeps_its_backoff,
    an_event_refused_in_a_slow_call_waits_from_the_answer,
    while_the_receiver_is_down_an_accounts_first_event_alone_counts_as_failing,
    a_retried_first_event_goes_alone_in_its_read,
    an_accounts_backlog_failing_at_one_event_goes_in_halves_to_it,
    a_read_failing_on_one_account_goes_again_in_halves_not_one_call_an_event,
    an_event_refused_in_a_drain_waits_for_the_drains_end,
    what_is_written_during_a_drain_goes_in_the_read_after_it,
    a_released_backlog_shares_each_read_with_other_accounts,
    storage_errors_say_whether_a_retry_can_help,
    a_bounded_write_gives_up_a_held_row_or_a_slow_statement,
    an_account_held_up_lately_gives_up_a_held_lock_at_once,
    a_write_given_up_mid_statement_frees_its_connection,
    an_event_enqueued_behind_a_retry_goes_after_the_events_before_it,
    a_small_backlog_is_tried_within_seconds_while_its_receiver_is_down,
    a_transaction_the_database_ended_leaves_no_connection_broken,
    after_a_long_outage_the_backlog_goes_within_a_pause_of_the_receivers_return,
    two_accounts_failing_in_one_turn_are_not_sent_again_at_each_delivery_after,
    a_receivers_storage_failing_for_one_account_holds_up_that_account_only,
    a_receiver_down_is_tried_once_a_pause_not_for_every_read_of_the_backlog,
    a_database_ahead_of_the_binary_is_taken,
    migrations_create_runtime_and_service_tables_and_rerun_as_no_ops,
    outbox_keeps_only_committed_events_and_retries_until_acknowledged,
    a_relay_read_stops_at_its_byte_budget_and_the_rest_follow_in_order,
    inbox_applies_each_event_once,
    an_event_the_receiver_refuses_holds_up_its_own_account_only,
);

/// A statement over a set of keys finds them by the key's index however small its table was
/// when a connection first ran it: a plan kept from a nearly empty table would scan the whole
/// table on every run once it had grown.
#[tokio::test]
async fn postgres_looks_keys_up_by_index_after_a_table_grows() {
    let t = TestDb::new(Backend::Postgres, "plans").await;
    let db = &t.db;
    db.execute(Sql::new("CREATE TABLE keyed (id TEXT PRIMARY KEY, n BIGINT NOT NULL)")).await.unwrap();
    db.execute(Sql::new("INSERT INTO keyed SELECT 'k' || g, g FROM generate_series(1, 50) g")).await.unwrap();
    db.execute(Sql::new("ANALYZE keyed")).await.unwrap();
    let lookup = || {
        let q = format!("SELECT id, n FROM keyed WHERE {}", db.json_in("id", 1));
        Sql::new(sqlx::AssertSqlSafe(q)).bind(r#"["k1", "k2", "k3"]"#)
    };
    let mut conn = db.conn().await.unwrap();
    // More runs than PostgreSQL needs to settle on a plan it keeps.
    for _ in 0..10 {
        let rows: Vec<(String, i64)> = conn.fetch_all(lookup()).await.unwrap();
        assert_eq!(rows.len(), 3);
    }
    db.execute(Sql::new("INSERT INTO keyed SELECT 'x' || g, g FROM generate_series(1, 50000) g"))
        .await
        .unwrap();
    // This connection's scans of the table so far, then after one more lookup.
    let scans = "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'keyed'";
    conn.execute(Sql::new("BEGIN")).await.unwrap();
    let (seq_before, idx_before): (i64, i64) = conn.fetch_one(Sql::new(scans)).await.unwrap();
    let rows: Vec<(String, i64)> = conn.fetch_all(lookup()).await.unwrap();
    assert_eq!(rows.len(), 3);
    let (seq, idx): (i64, i64) = conn.fetch_one(Sql::new(scans)).await.unwrap();
    conn.execute(Sql::new("COMMIT")).await.unwrap();
    assert_eq!(seq, seq_before, "the keys by index, not the table scanned");
    assert!(idx > idx_before, "the keys by index");
}

/// An operator can see a relay taking its receiver for down: its worker's turns still succeed
/// (reading, writing retries) while nothing is delivered, so the worker's metrics say `ok`.
#[test]
fn a_relay_says_while_it_takes_its_receiver_to_be_down() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let down_is = |v: u8| format!("contactier_outbox_receiver_down{{topic=\"topic\"}} {v}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let t = migrated(Backend::Sqlite, "runtime").await;
            let ob = Outbox::new(t.db.clone(), "topic");
            for account in ["a", "b", "c"] {
                enqueue_as(&t.db, account, b"e", true).await;
            }
            let down: Deliver = Box::new(|_| {
                Box::pin(async { Err(tonic::Status::unavailable("connection refused").into()) })
            });
            let up: Deliver = Box::new(|events| {
                Box::pin(async move { Ok(events.into_iter().map(|e| e.event_id).collect()) })
            });
            let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
            let next = ob.step(now, &down, Backoff::default(), 10, 1 << 20).await.unwrap().unwrap();
            assert!(metrics.render().contains(&down_is(1)), "{}", metrics.render());
            // Every send that failed counts: the read, then a's and b's events alone.
            let failures = "contactier_outbox_delivery_failures_total{topic=\"topic\"} 3";
            assert!(metrics.render().contains(failures), "{}", metrics.render());
            assert_eq!(ob.step(next, &up, Backoff::default(), 10, 1 << 20).await.unwrap(), None);
            assert!(metrics.render().contains(&down_is(0)), "{}", metrics.render());
        });
    });
}

/// An event a receiver names as refused in its answer counts as a failing work item, as one
/// refused alone does: operators alerting on `contactier_work_failures_total` missed them.
#[test]
fn refusals_named_in_an_answer_count_as_work_failures() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let t = migrated(Backend::Sqlite, "runtime").await;
            let ob = Outbox::new(t.db.clone(), "topic");
            enqueue_as(&t.db, "a", b"e", true).await;
            enqueue_as(&t.db, "bad", b"refused", true).await;
            enqueue_as(&t.db, "bad", b"e", true).await;
            let partial: Deliver = Box::new(|events| {
                Box::pin(async move {
                    let mut answer = outbox::Delivered::default();
                    for e in events {
                        if e.account_id == "bad" {
                            if e.payload == b"refused" {
                                answer.refused.push((e.event_id, tonic::Status::internal("refused")));
                            }
                        } else {
                            answer.acked.push(e.event_id);
                        }
                    }
                    Ok(answer)
                })
            });
            let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 1).unwrap();
            assert_eq!(ob.relay_once(now, &partial, Backoff::default(), 10, 1 << 20).await.unwrap(), 1);
            let failures = "contactier_work_failures_total{worker=\"relay:topic\"} 1";
            assert!(metrics.render().contains(failures), "{}", metrics.render());
        });
    });
}
