//! Test support: a fresh database per test on either backend, removed afterwards.
//! PostgreSQL comes from `CONTACTIER_TEST_DATABASE_URL` (default: the local `test` database);
//! each test gets its own schema, so runs never collide.

use crate::db::{Backend, Db, drop_postgres_schema};

pub const DEFAULT_TEST_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn test_pg_url() -> String {
    std::env::var("CONTACTIER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_PG_URL.to_owned())
}

/// A database for one test. Dropping it deletes the SQLite file or the PostgreSQL schema.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    pub schema: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend, service: &str) -> TestDb {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let schema = format!("t_{}_{}", &tag[..12], service.replace('-', "_"));
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/{service}.db", dir.path().display());
                let db = Db::connect(&url, &schema, 5).await.expect("SQLite test database");
                TestDb { db, url, schema, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let url = test_pg_url();
                let db = Db::connect(&url, &schema, 5)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL test database at {url}: {e:#}"));
                TestDb { db, url, schema, _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.db.backend() != Backend::Postgres {
            return;
        }
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside a runtime or during a panic: clean up on a thread of its own,
        // over a connection of its own (the pool belongs to the test's runtime, blocked here).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if let Err(e) = drop_postgres_schema(&url, &schema).await {
                    eprintln!("could not drop test schema {schema}: {e:#}");
                }
            });
        })
        .join();
    }
}

/// Both backends, for tests that must hold on each.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
