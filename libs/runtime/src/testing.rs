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

/// `all` up to `version`, as a version before applied them (leaked: a test's migrations live
/// as long as the test).
pub fn migrations_up_to(all: &crate::db::Migrations, version: i64) -> &'static crate::db::Migrations {
    let cut = |m: &sqlx::migrate::Migrator| -> &'static sqlx::migrate::Migrator {
        let kept = m.iter().filter(|x| x.version <= version).cloned().collect();
        Box::leak(Box::new(sqlx::migrate::Migrator::with_migrations(kept)))
    };
    Box::leak(Box::new(crate::db::Migrations { sqlite: cut(all.sqlite), postgres: cut(all.postgres) }))
}

/// Both backends, for tests that must hold on each.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// One test per backend from each `async fn name(backend: Backend)`, so each backend's result
/// shows on its own line (`sqlite::name`, `postgres::name`) and one failing hides nothing of
/// the other.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::db::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::db::Backend::Postgres).await
                }
            )+
        }
    };
}

/// The secret of test platforms' tokens.
pub const TEST_SECRET: &[u8] = b"contactier-test-secret-contactier-test";

/// A platform on a manual clock starting at `start`, signing with [`TEST_SECRET`].
pub fn manual_platform(start: chrono::DateTime<chrono::Utc>) -> crate::host::Platform {
    crate::host::Platform {
        clock: crate::clock::Clock::manual(start),
        authenticator: crate::auth::Authenticator::new(TEST_SECRET, "contactier", "contactier"),
        tokens: crate::host::TokenSource::Minted,
        shutdown: crate::shutdown::Shutdown::new(),
        tls: None,
        grace: std::time::Duration::from_secs(1),
        drain: std::time::Duration::ZERO,
        rate_limit: None,
        conn: crate::conn::ConnLimits::default(),
        read_cache_ttl: std::time::Duration::from_secs(1),
        ops_account: "ops".to_owned(),
    }
}

/// Peers that are not there; for services whose test does not need them.
pub fn no_peers() -> crate::host::PeerArgs {
    let nowhere = "http://127.0.0.1:1".to_owned();
    crate::host::PeerArgs {
        contacts_url: nowhere.clone(),
        marketing_status_url: nowhere.clone(),
        billing_url: nowhere.clone(),
        notification_url: nowhere,
    }
}

/// A peer that answers every call `UNIMPLEMENTED` at once, for a receiver a test leaves out: the
/// relay sending to it takes its events as refused and backs off to minutes. Sent nowhere, they
/// went unanswered, were tried every 10-12 s, and a manual clock stepped through each try: about
/// 8,000 steps and 30 s of a test for each simulated day.
pub async fn refusing_peer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("bound address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder().add_routes(tonic::service::Routes::default());
    tokio::spawn(server.serve_with_incoming(incoming));
    format!("http://{addr}")
}

/// Serves `spec` on a free loopback port until the platform shuts down; answers its address.
pub async fn serve(
    spec: crate::server::ServiceSpec,
    platform: &crate::host::Platform,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(crate::server::serve(spec, listener, platform.serve_options()));
    addr
}

/// A lazily connecting channel to `addr`.
pub fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("URL").connect_lazy()
}

/// A request carrying a bearer token.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII token"));
    r
}

/// Tokens signed here for each call, as a user of `account` with `scopes` (tests only).
pub struct Minted {
    pub authenticator: crate::auth::Authenticator,
    pub account: String,
    pub user: String,
    pub scopes: Vec<String>,
}

impl contactier_client::TokenSource for Minted {
    fn token(&self) -> Result<String, String> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        Ok(self.authenticator.user_token(&self.account, &self.user, &scopes, chrono::Duration::hours(1)))
    }
}

/// Runs `f` until it has waited `n` times, and gives it up there (None) unless it ended: a
/// caller's deadline or cancel at each point of a future's work in turn.
pub async fn cut_after_waits<F: std::future::Future>(f: F, n: usize) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut waits = 0;
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => {
            waits += 1;
            if waits >= n { std::task::Poll::Ready(None) } else { std::task::Poll::Pending }
        }
    })
    .await
}

/// A trigger failing every insert into `table` of a row matching `when` (SQL over `NEW`): on
/// SQLite with `RAISE(<raise>)` (ABORT ends the statement, ROLLBACK the whole transaction), on
/// PostgreSQL with an exception (which fails the transaction).
pub async fn poison(db: &Db, table: &str, when: &str, raise: &str) {
    let qs = match db.backend() {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER poison_{table} BEFORE INSERT ON {table} WHEN {when} \
             BEGIN SELECT RAISE({raise}, 'poisoned'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION poison_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$"
            ),
            format!(
                "CREATE TRIGGER poison_{table} BEFORE INSERT ON {table} FOR EACH ROW \
                 WHEN ({when}) EXECUTE FUNCTION poison_{table}()"
            ),
        ],
    };
    for q in qs {
        db.execute(crate::sql::Sql::new(sqlx::AssertSqlSafe(q))).await.expect("the poison trigger");
    }
}

/// Drops what [`poison`] made on `table`.
pub async fn cure(db: &Db, table: &str) {
    let qs = match db.backend() {
        Backend::Sqlite => vec![format!("DROP TRIGGER poison_{table}")],
        Backend::Postgres => {
            vec![format!("DROP TRIGGER poison_{table} ON {table}"), format!("DROP FUNCTION poison_{table}()")]
        }
    };
    for q in qs {
        db.execute(crate::sql::Sql::new(sqlx::AssertSqlSafe(q))).await.expect("the poison trigger dropped");
    }
}
