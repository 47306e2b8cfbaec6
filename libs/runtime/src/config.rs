//! Configuration shared by every service, from flags or the environment.

use chrono::{DateTime, Utc};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// gRPC listen address; each service has its own default port.
    #[arg(long, env = "CONTACTIER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// `sqlite://path.db` or `postgres://...`. Default: a SQLite file per service in the data dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// PostgreSQL schema of the service. Default: the service's name, after the prefix.
    #[arg(long, env = "DATABASE_SCHEMA")]
    pub database_schema: Option<String>,

    /// Put before each service's default schema name, so several deployments (or test runs)
    /// can share one PostgreSQL database.
    #[arg(long, env = "DATABASE_SCHEMA_PREFIX", default_value = "")]
    pub database_schema_prefix: String,

    #[arg(long, env = "CONTACTIER_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Apply migrations when the server starts (the default). Kubernetes runs them ahead of the
    /// replicas with `contactier-<service> migrate` and sets this to false.
    #[arg(long, env = "CONTACTIER_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Where SQLite files live when no DATABASE_URL is given.
    #[arg(long, env = "CONTACTIER_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// HMAC secret that signs and verifies HS256 tokens, shared by every service of a
    /// deployment: development, tests and setups without an identity provider. At least 32
    /// bytes, not a placeholder.
    #[arg(long, env = "CONTACTIER_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Trusted token issuers, comma-separated: `ISSUER` (keys by OIDC discovery) or
    /// `ISSUER=JWKS_URL`. Their RS256, ES256 and EdDSA tokens are verified against their keys.
    #[arg(long, env = "CONTACTIER_OIDC_ISSUERS", default_value = "")]
    pub oidc_issuers: String,

    /// PEM CA bundle trusted, besides the system's, when fetching issuers' keys.
    #[arg(long, env = "CONTACTIER_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// Bearer token sent when fetching issuers' keys (Kubernetes serves them to callers it
    /// knows), read again at each fetch.
    #[arg(long, env = "CONTACTIER_JWKS_TOKEN_FILE")]
    pub jwks_token_file: Option<PathBuf>,

    /// The issuer whose tokens may be service identities (the cluster's service-account
    /// issuer), and the only one CONTACTIER_JWKS_TOKEN_FILE is sent to. Default: the only
    /// issuer configured.
    #[arg(long, env = "CONTACTIER_SERVICE_ISSUER")]
    pub service_issuer: Option<String>,

    /// Token subjects of trusted issuers that are services, comma-separated
    /// `SUBJECT=SERVICE`, e.g. `system:serviceaccount:contactier:contactier-billing=billing`.
    #[arg(long, env = "CONTACTIER_SERVICE_IDENTITIES", default_value = "")]
    pub service_identities: String,

    /// The token this service sends to the services it calls (a projected service-account
    /// token with audience `contactier`), read again as it is rotated. Without it, calls carry
    /// tokens signed with CONTACTIER_JWT_SECRET.
    #[arg(long, env = "CONTACTIER_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,

    #[arg(long, env = "CONTACTIER_JWT_ISSUER", default_value = "contactier")]
    pub jwt_issuer: String,

    #[arg(long, env = "CONTACTIER_JWT_AUDIENCE", default_value = "contactier")]
    pub jwt_audience: String,

    /// OTLP/gRPC collector; spans are exported only when set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `json` (default) or `text`.
    #[arg(long, env = "CONTACTIER_LOG_FORMAT", default_value = "json")]
    pub log_format: String,

    /// Prometheus `/metrics` listen address; off when unset.
    #[arg(long, env = "CONTACTIER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Manual clock for tests and demos: time stands still until set or advanced over the
    /// ops ClockService. Never set in production.
    #[arg(long, env = "CONTACTIER_MANUAL_CLOCK", default_value_t = false)]
    pub manual_clock: bool,

    /// Start time of the manual clock (RFC 3339). Default: now.
    #[arg(long, env = "CONTACTIER_CLOCK_START")]
    pub clock_start: Option<DateTime<Utc>>,

    /// PEM certificate and key: serve TLS when both are set.
    #[arg(long, env = "CONTACTIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "CONTACTIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Calls a second each account may make to this replica (0: no limit); past it and its
    /// burst, RESOURCE_EXHAUSTED. Calls between services are not limited.
    #[arg(long, env = "CONTACTIER_RATE_LIMIT_PER_ACCOUNT", default_value_t = 100)]
    pub rate_limit_per_account: u32,
    #[arg(long, env = "CONTACTIER_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,

    /// Milliseconds a hot read (an account's usage) may be served from memory (0: never). Writes
    /// forget it at once; this bounds staleness should a replica miss their notification.
    #[arg(long, env = "CONTACTIER_READ_CACHE_TTL_MS", default_value_t = 1_000)]
    pub read_cache_ttl_ms: u64,

    /// Connections one listener holds at once; one past it is closed as it is accepted.
    #[arg(long, env = "CONTACTIER_MAX_CONNECTIONS", default_value_t = 2_048)]
    pub max_connections: usize,
    /// Calls one connection may carry at once.
    #[arg(long, env = "CONTACTIER_MAX_STREAMS_PER_CONNECTION", default_value_t = 100)]
    pub max_streams_per_connection: u32,
    /// Seconds a new connection has to start its first call.
    #[arg(long, env = "CONTACTIER_FIRST_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub first_request_timeout_secs: u64,
    /// Seconds a connection may carry no call before it is closed.
    #[arg(long, env = "CONTACTIER_CONNECTION_IDLE_SECS", default_value_t = 300)]
    pub connection_idle_secs: u64,

    /// Seconds a connection lives before it is asked to go, so clients rebalance.
    #[arg(long, env = "CONTACTIER_MAX_CONNECTION_AGE_SECS", default_value_t = 300)]
    pub max_connection_age_secs: u64,

    /// Seconds calls are still taken after SIGTERM while health says NOT_SERVING, so probes
    /// and peers move away first.
    #[arg(long, env = "CONTACTIER_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,

    /// The account whose tokens with the `ops` scope see every account's failing work; an `ops`
    /// token of any other account sees its own account's only.
    #[arg(long, env = "CONTACTIER_OPS_ACCOUNT", default_value = "ops")]
    pub ops_account: String,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "CONTACTIER_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

impl RuntimeArgs {
    /// The database URL of `service`: the configured one or its SQLite file in the data dir.
    pub fn database_url_for(&self, service: &str) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/{service}.db", self.data_dir.display()))
    }

    /// The PostgreSQL schema of `service`.
    pub fn schema_for(&self, service: &str) -> String {
        self.database_schema
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.database_schema_prefix, service.replace('-', "_")))
    }

    /// The per-account rate limit; `None` when switched off.
    pub fn rate_limit(&self) -> Option<crate::limits::RateLimit> {
        let per_second = std::num::NonZeroU32::new(self.rate_limit_per_account)?;
        let burst = std::num::NonZeroU32::new(self.rate_limit_burst.max(self.rate_limit_per_account))?;
        Some(crate::limits::RateLimit { per_second, burst })
    }

    /// How each listener treats its connections.
    pub fn conn_limits(&self) -> crate::conn::ConnLimits {
        crate::conn::ConnLimits {
            max_connections: self.max_connections.max(1),
            max_streams: self.max_streams_per_connection.max(1),
            first_request: std::time::Duration::from_secs(self.first_request_timeout_secs.max(1)),
            idle: std::time::Duration::from_secs(self.connection_idle_secs.max(1)),
            max_age: std::time::Duration::from_secs(self.max_connection_age_secs.max(1)),
            ..crate::conn::ConnLimits::default()
        }
    }

    pub fn json_logs(&self) -> bool {
        self.log_format != "text"
    }
}
