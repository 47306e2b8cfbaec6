//! Serving one service: its routes behind tracing and auth, plus health, reflection and
//! (with a manual clock) the ops ClockService, until shutdown.

use crate::auth::{Access, AuthLayer, Authenticator, Policy};
use crate::clock::Clock;
use crate::ops::ClockOps;
use crate::shutdown::Shutdown;
use crate::telemetry::TraceLayer;
use anyhow::Context;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

/// What a service brings to be served.
pub struct ServiceSpec {
    /// Short name, e.g. `contacts`, for logs.
    pub name: &'static str,
    pub routes: Routes,
    pub policy: Policy,
    /// Full gRPC names of the services in `routes`: reported by health, advertised by reflection.
    pub services: Vec<&'static str>,
    /// Where the service's background work keeps the items that failed, for operators.
    pub failing: Vec<std::sync::Arc<dyn crate::work::FailingWork>>,
    /// The service's database: health reports NOT_SERVING while it cannot be reached.
    pub db: Option<crate::db::Db>,
}

impl ServiceSpec {
    /// A service that serves nothing of its own yet: health, reflection and ops only.
    pub fn bare(name: &'static str) -> Self {
        Self {
            name,
            routes: Routes::default(),
            policy: Policy::new(),
            services: Vec::new(),
            failing: Vec::new(),
            db: None,
        }
    }
}

/// What every served service shares.
#[derive(Clone)]
pub struct ServeOptions {
    pub authenticator: Authenticator,
    pub clock: Clock,
    pub shutdown: Shutdown,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub grace: Duration,
    /// How long calls are still taken after shutdown begins, while health says NOT_SERVING.
    pub drain: Duration,
    pub rate_limit: Option<crate::limits::RateLimit>,
    pub conn: crate::conn::ConnLimits,
    /// The operators' account: its `ops` tokens see every account's failing work.
    pub ops_account: String,
}

/// Reflection advertising only the services this server runs (the descriptor set holds them all).
fn reflection(served: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(contactier_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in served {
        b = b.with_service_name(*name);
    }
    b
}

const CLOCK_OPS: &str = "contactier.ops.v1.ClockService";
const WORK_OPS: &str = "contactier.ops.v1.WorkService";

/// The ops services every service serves: failing work always, the clock when it is manual;
/// and health's Watch stream, for callers with a token.
pub fn ops_policy(manual_clock: bool) -> Policy {
    let p = Policy::new().allow(WORK_OPS, Access::Ops, &["ListFailingWork"]).allow(
        "grpc.health.v1.Health",
        Access::Read,
        &["Watch"],
    );
    if manual_clock { p.allow(CLOCK_OPS, Access::Ops, &["GetTime", "SetTime", "AdvanceTime"]) } else { p }
}

/// The connections `listener` accepts, with TCP_NODELAY set: without it a small answer can
/// wait for the peer's delayed ACK (about 40 ms).
pub fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// How often health looks at the database.
const DATABASE_CHECK: Duration = Duration::from_secs(2);

/// Keeps health NOT_SERVING while the database cannot be reached, so probes take the replica
/// out of rotation, and SERVING again once it answers. Stops at shutdown, which owns health
/// from then on.
async fn watch_database(
    db: crate::db::Db,
    health: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    shutdown: Shutdown,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DATABASE_CHECK) => {}
            () = shutdown.wait() => return,
        }
        let up = matches!(tokio::time::timeout(DATABASE_CHECK, db.ping()).await, Ok(Ok(())));
        if up == serving || shutdown.is_triggered() {
            continue;
        }
        serving = up;
        let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
        if up {
            tracing::info!("the database answers again; serving");
        } else {
            tracing::error!("the database cannot be reached; not serving");
        }
        for name in services.iter().copied().chain([""]) {
            health.set_service_status(name, status).await;
        }
    }
}

/// Serves `spec` on `listener` until shutdown is triggered, then drains in-flight calls for
/// at most the grace period. Health turns NOT_SERVING first so probes stop sending traffic.
pub async fn serve(spec: ServiceSpec, listener: TcpListener, opts: ServeOptions) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut routes = spec.routes;
    let mut policy = spec.policy;
    let mut services = spec.services;
    routes = routes.add_service(crate::work::WorkOps::server(spec.name, spec.failing, &opts.ops_account));
    policy = policy.merge(ops_policy(opts.clock.is_manual()));
    services.push(WORK_OPS);
    if opts.clock.is_manual() {
        routes = routes.add_service(ClockOps::server(opts.clock.clone()));
        services.push(CLOCK_OPS);
    }
    let routes = routes
        .add_service(health_service)
        .add_service(reflection(&services).build_v1()?)
        // v1alpha too: common grpcurl builds speak only that.
        .add_service(reflection(&services).build_v1alpha()?);
    for name in &services {
        health.set_service_status(*name, ServingStatus::Serving).await;
    }
    health.set_service_status("", ServingStatus::Serving).await;
    if let Some(db) = spec.db.clone() {
        tokio::spawn(watch_database(db, health.clone(), services.clone(), opts.shutdown.clone()));
    }

    let mut builder = Server::builder();
    if let Some((cert, key)) = &opts.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("TLS configuration")?;
    }
    let addr = listener.local_addr()?;
    tracing::info!(service = spec.name, %addr, tls = opts.tls.is_some(), "serving");

    // On shutdown: NOT_SERVING at once, then calls are still taken for the drain period while
    // probes and peers move away, then no new ones while those in flight finish.
    let shutdown = opts.shutdown.clone();
    let drain = opts.drain;
    let drained = {
        let health = health.clone();
        let names = services.clone();
        let name = spec.name;
        async move {
            shutdown.wait().await;
            for name in &names {
                health.set_service_status(*name, ServingStatus::NotServing).await;
            }
            health.set_service_status("", ServingStatus::NotServing).await;
            tracing::info!(service = name, drain_ms = drain.as_millis() as u64, "not serving; draining");
            tokio::time::sleep(drain).await;
        }
    };
    let incoming = crate::conn::incoming(listener, opts.conn);
    let server = builder
        .max_concurrent_streams(opts.conn.max_streams)
        // Long-lived clients come back through the balancer now and then, so replicas added
        // later take their share.
        .max_connection_age(opts.conn.max_age)
        .max_connection_age_grace(Duration::from_secs(30))
        .http2_keepalive_interval(Some(opts.conn.keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .layer(TraceLayer)
        // Inside the trace (which reads the bare status), outside auth (whose refusals get details).
        .layer(crate::rich::RichErrorLayer)
        .layer(crate::panics::CatchPanicLayer)
        .layer(
            AuthLayer::new(opts.authenticator.clone(), policy)
                .limited(opts.rate_limit.map(crate::limits::AccountLimiter::new)),
        )
        // Inside auth: only calls it let through keep a connection open.
        .layer(crate::conn::TrackLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, drained);
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res?,
        () = async { opts.shutdown.wait().await; tokio::time::sleep(drain + opts.grace).await } => {
            tracing::warn!(service = spec.name, "grace period over; dropping remaining calls");
        }
    }
    tracing::info!(service = spec.name, "stopped");
    Ok(())
}
