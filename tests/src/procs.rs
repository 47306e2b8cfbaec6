//! The services as child processes: started from the binaries beside this one, wired to each
//! other, each on its own port and database; memory read from /proc.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const SERVICES: [&str; 4] = ["contacts", "marketing-status", "billing", "notification"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        }
    }
}

pub struct Services {
    pub children: Vec<(&'static str, Child, SocketAddr)>,
    /// Each service's metrics address, with [`Options::metrics`].
    metrics: Vec<SocketAddr>,
    pub secret: String,
    /// PostgreSQL schema prefix of this run, dropped at the end.
    pub schema_prefix: String,
    backend: Backend,
    bins: PathBuf,
    options: Options,
    dir: tempdir::Dir,
}

/// How the services are started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run every service on a manual clock starting here (each process has its own, moved
    /// through its ClockService).
    pub manual_clock: Option<chrono::DateTime<chrono::Utc>>,
    /// Extra environment of every service.
    pub env: Vec<(String, String)>,
    /// Keep each service's log (`<service>.log`, JSON, RUST_LOG info) in this directory.
    pub log_dir: Option<PathBuf>,
    /// Keep each service's warnings and errors (`<service>-<port>.log`) in this directory: a
    /// long run's one slow answer can then be told from a retry the service logged.
    pub warn_dir: Option<PathBuf>,
    /// Serve each service's Prometheus metrics on a port of its own (see [`Services::metrics_addr`]).
    pub metrics: bool,
    /// Start the services without RUST_LOG: their own default log filter.
    pub default_log_filter: bool,
}

/// A directory removed when dropped (no extra dependency for one use).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The directory holding the service binaries: this binary's own, or its parent when this is
/// a test executable under deps/.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        if d.join("contactier-contacts").exists() {
            return Ok(d.to_path_buf());
        }
    }
    anyhow::bail!("the service binaries are not built beside {}; build them first", exe.display())
}

/// `n` distinct free ports. The listeners are all held until every port is chosen: dropped
/// one by one, the system may hand the same port out twice, and two services would then race
/// for one address (a caller of one reaching the other).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// The PostgreSQL of this run (`CONTACTIER_TEST_DATABASE_URL`, else the local `test` database).
pub fn pg_url() -> String {
    contactier_runtime::testing::test_pg_url()
}

impl Services {
    pub async fn start(backend: Backend, bins: &Path) -> anyhow::Result<Services> {
        Self::start_with(backend, bins, Options::default()).await
    }

    pub async fn start_with(backend: Backend, bins: &Path, options: Options) -> anyhow::Result<Services> {
        let ports = free_ports(SERVICES.len() * 2)?;
        let secret: String =
            format!("bench-secret-{:032x}", std::process::id() as u128 * 7919 + ports[0] as u128);
        let schema_prefix = format!("bench_{}_{}_", std::process::id(), ports[0]);
        let dir = std::env::temp_dir().join(format!("contactier-bench-{}-{}", std::process::id(), ports[0]));
        std::fs::create_dir_all(&dir)?;
        let mut services = Services {
            children: Vec::new(),
            metrics: ports[SERVICES.len()..].iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect(),
            secret,
            schema_prefix,
            backend,
            bins: bins.to_path_buf(),
            options,
            dir: tempdir::Dir(dir),
        };
        for (i, name) in SERVICES.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 1], ports[i]));
            let child = services.spawn(name, addr, &ports)?;
            services.children.push((*name, child, addr));
        }
        for (name, _, a) in &services.children {
            wait_serving(*a).await.with_context(|| format!("{name} did not become ready"))?;
        }
        Ok(services)
    }

    fn spawn(&self, name: &str, addr: SocketAddr, ports: &[u16]) -> anyhow::Result<Child> {
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
        let mut cmd = Command::new(self.bins.join(format!("contactier-{name}")));
        cmd.env("CONTACTIER_LISTEN", addr.to_string())
            .env("CONTACTIER_JWT_SECRET", &self.secret)
            .env("CONTACTIER_DATA_DIR", &self.dir.0)
            .env("CONTACTIER_CONTACTS_URL", peer(0))
            .env("CONTACTIER_MARKETING_STATUS_URL", peer(1))
            .env("CONTACTIER_BILLING_URL", peer(2))
            .env("CONTACTIER_NOTIFICATION_URL", peer(3))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &self.options.warn_dir {
            cmd.stderr(std::fs::File::create(dir.join(format!("{name}-{}.log", addr.port())))?);
        }
        // CONTACTIER_PROCS_LOG_DIR keeps each service's log there (RUST_LOG from the caller).
        if let Some(dir) = std::env::var_os("CONTACTIER_PROCS_LOG_DIR") {
            let file = std::fs::File::create(Path::new(&dir).join(format!("{name}-{}.log", addr.port())))?;
            cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).stderr(file);
        }
        if let Some(dir) = &self.options.log_dir {
            let file = std::fs::File::create(dir.join(format!("{name}.log")))?;
            cmd.env("RUST_LOG", "info").env("CONTACTIER_LOG_FORMAT", "json").stderr(file);
        }
        if self.options.metrics {
            let i = SERVICES.iter().position(|s| *s == name).expect("a service");
            cmd.env("CONTACTIER_METRICS_LISTEN", self.metrics[i].to_string());
        }
        if self.backend == Backend::Postgres {
            cmd.env("DATABASE_URL", pg_url()).env("DATABASE_SCHEMA_PREFIX", &self.schema_prefix);
        }
        if let Some(start) = self.options.manual_clock {
            cmd.env("CONTACTIER_MANUAL_CLOCK", "true").env("CONTACTIER_CLOCK_START", start.to_rfc3339());
        }
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        if self.options.default_log_filter {
            cmd.env_remove("RUST_LOG");
        }
        cmd.spawn().with_context(|| format!("starting contactier-{name}"))
    }

    fn index(&self, service: &str) -> usize {
        self.children.iter().position(|(n, _, _)| *n == service).expect("a service")
    }

    /// Where `service` serves its metrics, with [`Options::metrics`].
    pub fn metrics_addr(&self, service: &str) -> SocketAddr {
        self.metrics[SERVICES.iter().position(|s| *s == service).expect("a service")]
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.children[self.index(service)].2
    }

    pub fn pid(&self, service: &str) -> u32 {
        self.children[self.index(service)].1.id()
    }

    /// `sql` (with `{t}` for the service's table `table`) answered by the service's database:
    /// how a test watches work in flight without asking the service.
    pub async fn scalar(&self, service: &str, table: &str, sql: &str) -> anyhow::Result<i64> {
        self.value(service, table, sql).await
    }

    /// As [`Services::scalar`], for a text answer.
    pub async fn text(&self, service: &str, table: &str, sql: &str) -> anyhow::Result<String> {
        self.value(service, table, sql).await
    }

    async fn value<T>(&self, service: &str, table: &str, sql: &str) -> anyhow::Result<T>
    where
        T: Send + Unpin + sqlx::Type<sqlx::Postgres> + sqlx::Type<sqlx::Sqlite>,
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + for<'r> sqlx::Decode<'r, sqlx::Sqlite>,
    {
        let schema = format!("{}{}", self.schema_prefix, service.replace('-', "_"));
        Ok(match self.backend {
            Backend::Postgres => {
                let sql = sql.replace("{t}", &format!("\"{schema}\".{table}"));
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_url()).await?;
                sqlx::query_scalar::<_, T>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await?
            }
            Backend::Sqlite => {
                let sql = sql.replace("{t}", table);
                let file = self.dir.0.join(format!("{service}.db"));
                let url = format!("sqlite://{}?mode=ro", file.display());
                let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await?;
                sqlx::query_scalar::<_, T>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await?
            }
        })
    }

    /// SIGKILL: no drain, no cleanup, whatever it was doing cut off.
    pub fn kill(&mut self, service: &str) {
        let i = self.index(service);
        let child = &mut self.children[i].1;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a killed service again on its address and database, and waits until it serves.
    /// A manual clock starts again at its configured start; move it with the ClockService.
    pub async fn restart(&mut self, service: &str) -> anyhow::Result<()> {
        let ports: Vec<u16> = self.children.iter().map(|(_, _, a)| a.port()).collect();
        let i = self.index(service);
        let addr = self.children[i].2;
        let child = self.spawn(service, addr, &ports)?;
        self.children[i].1 = child;
        wait_serving(addr).await.with_context(|| format!("{service} did not come back"))
    }

    pub async fn stop(mut self, backend: Backend) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // CONTACTIER_PROCS_KEEP_SCHEMAS leaves the run's schemas in place, to look into after.
        if std::env::var_os("CONTACTIER_PROCS_KEEP_SCHEMAS").is_some() {
            eprintln!("kept the schemas {}*", self.schema_prefix);
            return;
        }
        if backend == Backend::Postgres
            && let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await
        {
            for s in SERVICES {
                let schema = format!("{}{}", self.schema_prefix, s.replace('-', "_"));
                let _ =
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
                        .execute(&pool)
                        .await;
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
        }
    }
}

pub async fn wait_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
        let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await;
        if r.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{addr} is not serving after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (resident now, peak resident) in bytes, from /proc.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
