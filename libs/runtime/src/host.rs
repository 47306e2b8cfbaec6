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
    /// Where the tokens this process sends to other services come from.
    pub tokens: TokenSource,
    pub shutdown: Shutdown,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub grace: Duration,
    pub drain: Duration,
    pub rate_limit: Option<crate::limits::RateLimit>,
    pub conn: crate::conn::ConnLimits,
    /// How long a hot read may be served from memory; see [`crate::read_cache`].
    pub read_cache_ttl: Duration,
    /// The operators' account: its `ops` tokens see every account's failing work.
    pub ops_account: String,
}

impl Platform {
    /// Builds the platform from configuration. `secret` overrides the configured JWT secret
    /// (the all-in-one binary supplies a development one).
    pub fn new(args: &RuntimeArgs, secret: Option<&str>) -> anyhow::Result<Self> {
        let secret = match secret {
            Some(s) => Some(s),
            None => match args.jwt_secret.as_deref() {
                Some(s) => match weak_secret(s) {
                    Some(why) => anyhow::bail!("CONTACTIER_JWT_SECRET {why}: use at least 32 random bytes"),
                    None => Some(s),
                },
                None => None,
            },
        };
        let issuers = crate::jwks::IssuerConfig::parse_list(&args.oidc_issuers)?;
        let identities = parse_identities(&args.service_identities)?;
        if secret.is_none() && issuers.is_empty() {
            anyhow::bail!(
                "CONTACTIER_JWT_SECRET or CONTACTIER_OIDC_ISSUERS is required: nothing could verify tokens"
            );
        }
        let tokens = match (&args.service_token_file, secret) {
            (Some(path), _) => {
                // Caught at start rather than as every call failing later.
                let token = std::fs::read_to_string(path).with_context(|| {
                    format!("CONTACTIER_SERVICE_TOKEN_FILE {}: cannot be read", path.display())
                })?;
                if token.trim().split('.').count() != 3 {
                    anyhow::bail!(
                        "CONTACTIER_SERVICE_TOKEN_FILE {}: does not hold a token (a JWT)",
                        path.display()
                    );
                }
                TokenSource::File(path.clone())
            }
            (None, Some(_)) => TokenSource::Minted,
            (None, None) => anyhow::bail!(
                "CONTACTIER_SERVICE_TOKEN_FILE is required without CONTACTIER_JWT_SECRET: the token this service sends to the others"
            ),
        };
        let mut authenticator = match secret {
            Some(s) => Authenticator::new(s.as_bytes(), &args.jwt_issuer, &args.jwt_audience),
            None => Authenticator::without_secret(&args.jwt_issuer, &args.jwt_audience),
        };
        if !issuers.is_empty() {
            // Service identities, and the API token that fetches keys, belong to one issuer.
            let service_issuer = match (&args.service_issuer, issuers.as_slice()) {
                (Some(i), _) => {
                    let i = i.trim_end_matches('/').to_owned();
                    if !issuers.iter().any(|c| c.issuer == i) {
                        anyhow::bail!("CONTACTIER_SERVICE_ISSUER {i:?} is not among CONTACTIER_OIDC_ISSUERS");
                    }
                    Some(i)
                }
                (None, [only]) => Some(only.issuer.clone()),
                (None, _) if identities.is_empty() && args.jwks_token_file.is_none() => None,
                (None, _) => anyhow::bail!(
                    "CONTACTIER_SERVICE_ISSUER is required with several issuers: the one whose tokens are services (and gets CONTACTIER_JWKS_TOKEN_FILE)"
                ),
            };
            let options = crate::jwks::FetchOptions {
                ca_file: args.jwks_ca_file.clone(),
                token_file: args.jwks_token_file.clone(),
                token_issuer: service_issuer.clone(),
            };
            authenticator = authenticator.with_issuers(
                crate::jwks::Issuers::new(issuers, &options)?,
                identities,
                service_issuer,
            );
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
            authenticator,
            tokens,
            shutdown: Shutdown::new(),
            tls,
            grace: Duration::from_secs(args.shutdown_grace_secs),
            drain: Duration::from_secs(args.drain_secs),
            rate_limit: args.rate_limit(),
            conn: args.conn_limits(),
            read_cache_ttl: Duration::from_millis(args.read_cache_ttl_ms),
            ops_account: args.ops_account.clone(),
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
            ops_account: self.ops_account.clone(),
        }
    }

    /// A channel to every replica of a peer, carrying this service's token and trace context.
    pub fn peer(&self, service: &str, url: &str) -> anyhow::Result<PeerChannel> {
        let channel =
            crate::balance::Balanced::new(url, Arc::new(crate::balance::Dns), crate::balance::RESOLVE_EVERY)?;
        let tokens = match &self.tokens {
            TokenSource::Minted => ServiceTokens::new(self.authenticator.clone(), service),
            TokenSource::File(path) => ServiceTokens::from_file(path.clone()),
        };
        Ok(PeerChannel { channel, tokens })
    }
}

/// Where a process's tokens for other services come from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Signed here with CONTACTIER_JWT_SECRET.
    Minted,
    /// A file kept fresh by someone else (a projected service-account token).
    File(std::path::PathBuf),
}

/// Why a configured HMAC secret cannot be trusted, if it cannot: too short, a placeholder
/// copied from an example, or too few distinct characters to have been random.
pub fn weak_secret(secret: &str) -> Option<&'static str> {
    const PLACEHOLDERS: &[&str] = &[
        "change-me",
        "changeme",
        "change_me",
        "replace-with",
        "replace-me",
        "replaceme",
        "placeholder",
        "example",
        "at-least-32",
        "your-secret",
        "insert-",
    ];
    let lower = secret.to_ascii_lowercase();
    if secret.len() < 32 {
        Some("is shorter than 32 bytes")
    } else if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        Some("is a placeholder")
    } else if secret.bytes().collect::<std::collections::HashSet<_>>().len() < 8 {
        Some("has too few distinct characters to be random")
    } else if repeats(secret.as_bytes()) {
        Some("repeats a shorter string")
    } else if longest_run(secret.as_bytes()) >= 8 {
        Some("holds a run of consecutive characters (abcdefgh, 12345678)")
    } else if ["password", "passwort", "qwerty", "letmein"].iter().any(|w| lower.contains(w)) {
        Some("holds a dictionary word")
    } else {
        None
    }
}

/// Whether `s` is a shorter string repeated (with a partial copy at the end).
fn repeats(s: &[u8]) -> bool {
    (1..=s.len() / 2).any(|unit| s.iter().enumerate().all(|(i, b)| *b == s[i % unit]))
}

/// The longest run of characters each one above (or below) the one before.
fn longest_run(s: &[u8]) -> usize {
    let (mut best, mut up, mut down) = (1, 1, 1);
    for w in s.windows(2) {
        up = if w[1] == w[0].wrapping_add(1) { up + 1 } else { 1 };
        down = if w[1] == w[0].wrapping_sub(1) { down + 1 } else { 1 };
        best = best.max(up).max(down);
    }
    best
}

/// `SUBJECT=SERVICE,...` of CONTACTIER_SERVICE_IDENTITIES.
fn parse_identities(list: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.rsplit_once('=') {
            Some((subject, service)) if !subject.trim().is_empty() && !service.trim().is_empty() => {
                Ok((subject.trim().to_owned(), service.trim().to_owned()))
            }
            _ => anyhow::bail!("CONTACTIER_SERVICE_IDENTITIES: {item:?} is not SUBJECT=SERVICE"),
        })
        .collect()
}

/// The tokens a service sends to others: short-lived ones signed here and renewed before
/// they expire, or the contents of a token file, read again as it is rotated.
#[derive(Clone)]
pub struct ServiceTokens {
    source: Arc<TokenFrom>,
    cached: Arc<Mutex<Option<(String, std::time::Instant)>>>,
}

enum TokenFrom {
    Signed { authenticator: Box<Authenticator>, service: String },
    File(std::path::PathBuf),
}

impl ServiceTokens {
    const TTL: Duration = Duration::from_secs(3600);
    /// A rotated token file is noticed within this time (kubelet rotates at 80 % of a life of
    /// at least ten minutes).
    const REREAD: Duration = Duration::from_secs(30);

    pub fn new(authenticator: Authenticator, service: &str) -> Self {
        let source =
            TokenFrom::Signed { authenticator: Box::new(authenticator), service: service.to_owned() };
        Self { source: Arc::new(source), cached: Arc::default() }
    }

    pub fn from_file(path: std::path::PathBuf) -> Self {
        Self { source: Arc::new(TokenFrom::File(path)), cached: Arc::default() }
    }

    pub fn token(&self) -> String {
        let mut cached = self.cached.lock().expect("token cache");
        let fresh_for = match &*self.source {
            // Renew at half-life so a token never expires in flight.
            TokenFrom::Signed { .. } => Self::TTL / 2,
            TokenFrom::File(_) => Self::REREAD,
        };
        if let Some((t, at)) = &*cached
            && at.elapsed() < fresh_for
        {
            return t.clone();
        }
        let t = match &*self.source {
            TokenFrom::Signed { authenticator, service } => {
                authenticator.service_token(service, chrono::Duration::from_std(Self::TTL).expect("ttl"))
            }
            TokenFrom::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => t.trim().to_owned(),
                Err(e) => {
                    // The last token read may still be valid; peers refuse it once it is not.
                    tracing::error!(path = %path.display(), error = %e, "the service token file cannot be read");
                    return cached.as_ref().map(|(t, _)| t.clone()).unwrap_or_default();
                }
            },
        };
        *cached = Some((t.clone(), std::time::Instant::now()));
        t
    }
}

impl contactier_client::TokenSource for ServiceTokens {
    fn token(&self) -> Result<String, String> {
        Ok(ServiceTokens::token(self))
    }
}

/// A channel to another service; wrap it in a generated client with [`PeerChannel::interceptor`].
#[derive(Clone)]
pub struct PeerChannel {
    pub channel: crate::balance::Balanced,
    tokens: ServiceTokens,
}

/// What a generated client of a peer runs over: every replica, this service's token and the
/// trace context and deadline of the call being served.
pub type PeerService =
    tonic::service::interceptor::InterceptedService<crate::balance::Balanced, ClientInterceptor>;

impl PeerChannel {
    pub fn interceptor(&self) -> ClientInterceptor {
        ClientInterceptor::new(Some(&self.tokens.token()))
    }

    /// The channel for a generated client: `XClient::new(peer.service())`.
    pub fn service(&self) -> PeerService {
        tonic::service::interceptor::InterceptedService::new(self.channel.clone(), self.interceptor())
    }
}

/// Everything a service needs to build its gRPC routes and background workers.
#[derive(Clone)]
pub struct ServiceEnv {
    pub platform: Platform,
    pub db: Db,
    pub peers: PeerArgs,
}

/// The longest one try to open the database may take.
const CONNECT_TRY: Duration = Duration::from_secs(15);

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
            // A database that takes the connection and never answers must not hold start-up
            // (or shutdown) forever: each try has a time limit, and a signal ends the wait.
            let connect =
                tokio::time::timeout(CONNECT_TRY, Db::connect(&url, &schema, args.db_max_connections));
            let tried = tokio::select! {
                r = connect => r.unwrap_or_else(|_| Err(anyhow::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from the database within {} s", CONNECT_TRY.as_secs()),
                )))),
                () = shutdown.wait() => return Ok(None),
            };
            match tried {
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
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.wait() => return Ok(None),
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
        if args.metrics_listen.is_some() {
            let every = Duration::from_secs(15);
            crate::prom::spawn_sampler(
                self.name,
                db.clone(),
                spec.failing.clone(),
                every,
                platform.shutdown.clone(),
            );
        }
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

/// The whole `main` of a service binary: its command line read, the allocator's arenas capped
/// on SQLite before any thread starts (see [`crate::malloc`]), the service run.
pub fn main(def: &ServiceDef) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = ServiceCli::parse();
    let capped = crate::malloc::cap_for(&cli.runtime.database_url_for(def.name));
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(def, cli, capped))
}

async fn serve(def: &ServiceDef, cli: ServiceCli, capped: bool) -> anyhow::Result<()> {
    let _telemetry =
        crate::telemetry::init(def.name, cli.runtime.json_logs(), cli.runtime.otlp_endpoint.as_deref())?;
    if let Some(addr) = cli.runtime.metrics_listen {
        crate::telemetry::init_metrics(addr).await?;
    }
    crate::malloc::announce(capped);
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

    const SECRET: &str = "5f0c9a71d2e84b36a1c7e09b4d2f8a63";

    fn args(extra: &[&str]) -> RuntimeArgs {
        let mut argv = vec!["service"];
        argv.extend_from_slice(extra);
        ServiceCli::try_parse_from(argv).unwrap().runtime
    }

    #[test]
    fn a_service_needs_a_strong_secret_or_an_issuer() {
        let mut a = args(&[]);
        a.jwt_secret = None;
        let e = Platform::new(&a, None).err().unwrap();
        assert!(e.to_string().contains("CONTACTIER_JWT_SECRET or CONTACTIER_OIDC_ISSUERS"), "{e}");
        for (weak, why) in [
            ("short", "shorter than 32 bytes"),
            ("change-me-change-me-change-me-change-me", "placeholder"),
            ("replace-with-a-secret-of-at-least-32-bytes", "placeholder"),
            (&"x".repeat(40), "too few distinct characters"),
            (&"abcdefghij".repeat(4), "repeats a shorter string"),
            ("Tr0ub4dor&3Tr0ub4dor&3Tr0ub4dor&3", "repeats a shorter string"),
            ("abcdefghijklmnopqrstuvwxyz012345", "consecutive characters"),
            ("passwordpasswordpassword12345678", "consecutive characters"),
            ("my-Passw0rd-is-password-and-long-enough", "dictionary word"),
        ] {
            a.jwt_secret = Some(weak.into());
            let e = Platform::new(&a, None).err().unwrap().to_string();
            assert!(e.contains("CONTACTIER_JWT_SECRET") && e.contains(why), "{weak}: {e}");
        }
        a.jwt_secret = Some(SECRET.into());
        assert!(Platform::new(&a, None).is_ok());
    }

    #[tokio::test]
    async fn without_a_secret_a_service_needs_a_token_file_for_its_calls() {
        let issuer = ["--oidc-issuers", "https://issuer.example.net=https://issuer.example.net/jwks"];
        let e = Platform::new(&args(&issuer), None).err().unwrap().to_string();
        assert!(e.contains("CONTACTIER_SERVICE_TOKEN_FILE"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "").unwrap();
        let mut argv = issuer.to_vec();
        argv.extend(["--service-token-file", file.to_str().unwrap()]);
        let e = Platform::new(&args(&argv), None).err().unwrap().to_string();
        assert!(e.contains("CONTACTIER_SERVICE_TOKEN_FILE") && e.contains("JWT"), "{e}");
        std::fs::write(&file, "a.b.c\n").unwrap();
        let p = Platform::new(&args(&argv), None).unwrap();
        assert!(!p.authenticator.can_sign());
        let peer = p.peer("billing", "http://127.0.0.1:1").unwrap();
        assert_eq!(peer.tokens.token(), "a.b.c");
        let e = Platform::new(&args(&[&argv[..], &["--service-identities", "nobody"]].concat()), None);
        assert!(e.err().unwrap().to_string().contains("SUBJECT=SERVICE"));
    }

    #[test]
    fn tls_needs_both_files() {
        let mut a = args(&["--tls-cert", "/nonexistent/cert.pem"]);
        a.jwt_secret = Some(SECRET.into());
        assert!(Platform::new(&a, None).err().unwrap().to_string().contains("or neither"));
    }

    #[test]
    fn the_manual_clock_starts_where_told_and_the_system_clock_is_the_default() {
        let mut a = args(&["--manual-clock", "--clock-start", "2026-04-30T12:00:00Z"]);
        a.jwt_secret = Some(SECRET.into());
        let p = Platform::new(&a, None).unwrap();
        assert!(p.clock.is_manual());
        assert_eq!(p.clock.now().to_rfc3339(), "2026-04-30T12:00:00+00:00");
        let mut a = args(&[]);
        a.jwt_secret = Some(SECRET.into());
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
