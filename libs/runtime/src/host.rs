//! Starting a service: the pieces a process builds once (clock, authenticator, shutdown) and
//! the run loop every service binary shares.

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::RuntimeArgs;
use crate::db::{Db, Migrations};
use crate::server::{ServeOptions, ServiceSpec};
use crate::shutdown::Shutdown;
use crate::telemetry::ClientInterceptor;
use anyhow::Context;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Addresses of the other services, for the calls and events between them.
#[derive(clap::Args, Clone, Debug)]
pub struct PeerArgs {
    #[arg(long, env = "CONTACTIER_CONTACTS_URL", default_value = "http://127.0.0.1:50051")]
    pub contacts_url: String,
    #[arg(long, env = "CONTACTIER_MARKETING_STATUS_URL", default_value = "http://127.0.0.1:50052")]
    pub marketing_status_url: String,
    #[arg(long, env = "CONTACTIER_BILLING_URL", default_value = "http://127.0.0.1:50053")]
    pub billing_url: String,
    #[arg(long, env = "CONTACTIER_NOTIFICATION_URL", default_value = "http://127.0.0.1:50054")]
    pub notification_url: String,
}

/// What one process shares among the services it runs.
#[derive(Clone)]
pub struct Platform {
    pub clock: Clock,
    pub authenticator: Authenticator,
    pub shutdown: Shutdown,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub grace: Duration,
    pub drain: Duration,
    pub rate_limit: Option<crate::limits::RateLimit>,
    pub conn: crate::conn::ConnLimits,
    /// How long a hot read may be served from memory; see [`crate::read_cache`].
    pub read_cache_ttl: Duration,
}

impl Platform {
    /// Builds the platform from configuration. `secret` overrides the configured JWT secret
    /// (the all-in-one binary supplies a development one).
    pub fn new(args: &RuntimeArgs, secret: Option<&str>) -> anyhow::Result<Self> {
        let secret = secret
            .or(args.jwt_secret.as_deref())
            .context("CONTACTIER_JWT_SECRET is required: the secret that signs tokens")?;
        if secret.len() < 32 {
            anyhow::bail!("CONTACTIER_JWT_SECRET must be at least 32 bytes");
        }
        let clock = if args.manual_clock {
            Clock::manual(args.clock_start.unwrap_or_else(chrono::Utc::now))
        } else {
            Clock::system()
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
                std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
            )),
            (None, None) => None,
            _ => anyhow::bail!("set both CONTACTIER_TLS_CERT and CONTACTIER_TLS_KEY, or neither"),
        };
        Ok(Self {
            clock,
            authenticator: Authenticator::new(secret.as_bytes(), &args.jwt_issuer, &args.jwt_audience),
            shutdown: Shutdown::new(),
            tls,
            grace: Duration::from_secs(args.shutdown_grace_secs),
            drain: Duration::from_secs(args.drain_secs),
            rate_limit: args.rate_limit(),
            conn: args.conn_limits(),
            read_cache_ttl: Duration::from_millis(args.read_cache_ttl_ms),
        })
    }

    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            authenticator: self.authenticator.clone(),
            clock: self.clock.clone(),
            shutdown: self.shutdown.clone(),
            tls: self.tls.clone(),
            grace: self.grace,
            drain: self.drain,
            rate_limit: self.rate_limit,
            conn: self.conn,
        }
    }

    /// A lazily connecting channel to a peer, carrying this service's token and trace context.
    pub fn peer(&self, service: &str, url: &str) -> anyhow::Result<PeerChannel> {
        let channel = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid peer URL {url}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(PeerChannel { channel, tokens: ServiceTokens::new(self.authenticator.clone(), service) })
    }
}

/// Short-lived service tokens, renewed before they expire.
#[derive(Clone)]
pub struct ServiceTokens {
    authenticator: Authenticator,
    service: String,
    cached: Arc<Mutex<Option<(String, std::time::Instant)>>>,
}

impl ServiceTokens {
    const TTL: Duration = Duration::from_secs(3600);

    pub fn new(authenticator: Authenticator, service: &str) -> Self {
        Self { authenticator, service: service.to_owned(), cached: Arc::default() }
    }

    pub fn token(&self) -> String {
        let mut cached = self.cached.lock().expect("token cache");
        match &*cached {
            // Renew at half-life so a token never expires in flight.
            Some((t, at)) if at.elapsed() < Self::TTL / 2 => t.clone(),
            _ => {
                let t = self
                    .authenticator
                    .service_token(&self.service, chrono::Duration::from_std(Self::TTL).expect("ttl"));
                *cached = Some((t.clone(), std::time::Instant::now()));
                t
            }
        }
    }
}

/// A channel to another service; wrap it in a generated client with [`PeerChannel::interceptor`].
#[derive(Clone)]
pub struct PeerChannel {
    pub channel: Channel,
    tokens: ServiceTokens,
}

impl PeerChannel {
    pub fn interceptor(&self) -> ClientInterceptor {
        ClientInterceptor::new(Some(&self.tokens.token()))
    }
}

/// Everything a service needs to build its gRPC routes and background workers.
#[derive(Clone)]
pub struct ServiceEnv {
    pub platform: Platform,
    pub db: Db,
    pub peers: PeerArgs,
}

/// One service: its name, default port, migrations and how it builds itself.
pub struct ServiceDef {
    pub name: &'static str,
    pub default_port: u16,
    /// None until the service owns tables beyond the runtime's.
    pub migrations: Option<&'static Migrations>,
    pub build: fn(ServiceEnv) -> BoxFuture<'static, anyhow::Result<ServiceSpec>>,
}

impl ServiceDef {
    /// Opens the service's database, waiting with backoff while it cannot be reached (a pod
    /// may start before its database); None when the platform shuts down meanwhile.
    pub async fn open_db(&self, args: &RuntimeArgs, shutdown: &Shutdown) -> anyhow::Result<Option<Db>> {
        let (url, schema) = (args.database_url_for(self.name), args.schema_for(self.name));
        let mut attempt = 0;
        loop {
            match Db::connect(&url, &schema, args.db_max_connections).await {
                Ok(db) => return Ok(Some(db)),
                // A URL that cannot work is not worth waiting for.
                Err(e) if !crate::db::is_transient(&e) => {
                    return Err(e.context(format!("{}: opening the database", self.name)));
                }
                Err(e) => {
                    attempt += 1;
                    let wait =
                        crate::work::backoff(attempt, Duration::from_millis(500), Duration::from_secs(30));
                    tracing::warn!(service = self.name, attempt, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "the database cannot be reached yet");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait() => return Ok(None),
                    }
                }
            }
        }
    }

    /// Applies the service's migrations alone: `contactier-<service> migrate`, a Job or an init
    /// container ahead of the replicas that serve.
    pub async fn migrate(&self, args: &RuntimeArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
        let Some(db) = self.open_db(args, shutdown).await? else { return Ok(()) };
        db.migrate_service(self.migrations).await.with_context(|| format!("{}: migrations", self.name))?;
        tracing::info!(service = self.name, "migrations applied");
        db.close().await;
        Ok(())
    }

    /// Opens the service's database, migrates it unless told not to, builds it and serves it
    /// on `listener` until the platform shuts down.
    pub async fn run(
        &self,
        platform: Platform,
        args: &RuntimeArgs,
        peers: PeerArgs,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<()> {
        let Some(db) = self.open_db(args, &platform.shutdown).await? else { return Ok(()) };
        if args.migrate_on_start {
            db.migrate_service(self.migrations)
                .await
                .with_context(|| format!("{}: migrations", self.name))?;
        }
        let spec = (self.build)(ServiceEnv { platform: platform.clone(), db: db.clone(), peers }).await?;
        let result = crate::server::serve(spec, listener, platform.serve_options()).await;
        db.close().await;
        result
    }

    pub fn listen_addr(&self, args: &RuntimeArgs) -> SocketAddr {
        args.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.default_port)))
    }
}

/// Command line of a service binary.
#[derive(clap::Parser, Debug)]
#[command(version)]
pub struct ServiceCli {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Apply the service's database migrations and exit (waits for the database to be reachable).
    Migrate,
}

/// The whole `main` of a service binary.
pub async fn main(def: &ServiceDef) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = ServiceCli::parse();
    let _telemetry =
        crate::telemetry::init(def.name, cli.runtime.json_logs(), cli.runtime.otlp_endpoint.as_deref())?;
    if let Some(addr) = cli.runtime.metrics_listen {
        crate::telemetry::init_metrics(addr)?;
    }
    let platform = Platform::new(&cli.runtime, None)?;
    platform.shutdown.trigger_on_signals();
    if let Some(ServiceCommand::Migrate) = cli.command {
        return def.migrate(&cli.runtime, &platform.shutdown).await;
    }
    let addr = def.listen_addr(&cli.runtime);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    def.run(platform, &cli.runtime, cli.peers, listener).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RuntimeArgs {
        let mut argv = vec!["service"];
        argv.extend_from_slice(extra);
        ServiceCli::try_parse_from(argv).unwrap().runtime
    }

    #[test]
    fn a_service_needs_a_long_enough_secret() {
        let mut a = args(&[]);
        a.jwt_secret = None;
        let e = Platform::new(&a, None).err().unwrap();
        assert!(e.to_string().contains("CONTACTIER_JWT_SECRET"), "{e}");
        a.jwt_secret = Some("short".into());
        assert!(Platform::new(&a, None).err().unwrap().to_string().contains("32 bytes"));
        a.jwt_secret = Some("x".repeat(32));
        assert!(Platform::new(&a, None).is_ok());
    }

    #[test]
    fn tls_needs_both_files() {
        let mut a = args(&["--tls-cert", "/nonexistent/cert.pem"]);
        a.jwt_secret = Some("x".repeat(32));
        assert!(Platform::new(&a, None).err().unwrap().to_string().contains("or neither"));
    }

    #[test]
    fn the_manual_clock_starts_where_told_and_the_system_clock_is_the_default() {
        let mut a = args(&["--manual-clock", "--clock-start", "2026-04-30T12:00:00Z"]);
        a.jwt_secret = Some("x".repeat(32));
        let p = Platform::new(&a, None).unwrap();
        assert!(p.clock.is_manual());
        assert_eq!(p.clock.now().to_rfc3339(), "2026-04-30T12:00:00+00:00");
        let mut a = args(&[]);
        a.jwt_secret = Some("x".repeat(32));
        assert!(!Platform::new(&a, None).unwrap().clock.is_manual());
    }

    #[test]
    fn service_tokens_are_reused_until_half_their_life() {
        let auth = Authenticator::new(&[7; 32], "contactier", "contactier");
        let tokens = ServiceTokens::new(auth.clone(), "billing");
        let t = tokens.token();
        assert_eq!(tokens.token(), t);
        let p = auth.authenticate(&t, Some("acct-1")).unwrap();
        assert_eq!(p.subject, "billing");
        assert_eq!(p.kind, crate::auth::TokenKind::Service);
    }
}
