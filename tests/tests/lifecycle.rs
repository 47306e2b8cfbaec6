//! A service's life as Kubernetes sees it, on PostgreSQL behind a proxy the test cuts and
//! restores: started before its database, it waits and then serves; health turns NOT_SERVING
//! while the database is gone and SERVING once it is back; migrations run alone with
//! `migrate`; on shutdown health turns NOT_SERVING while calls are still taken, and an open
//! watch stream ends at once with UNAVAILABLE.

use chrono::{TimeZone, Utc};
use contactier_e2e::proxy::Proxy;
use contactier_proto::notification::v1::{
    self as npb, notification_service_client::NotificationServiceClient,
};
use contactier_runtime::host::{PeerArgs, ServiceCli};
use contactier_runtime::testing::{authed, manual_platform, no_peers, test_pg_url};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A fresh schema name, and the database URL through `proxy`.
fn behind(proxy: &Proxy) -> (String, String) {
    let url = url::Url::parse(&test_pg_url()).unwrap();
    let through =
        format!("postgres://{}@{}/{}", url.username(), proxy.addr, url.path().trim_start_matches('/'));
    let schema = format!("t_{}_life", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    (through, schema)
}

fn args(url: &str, schema: &str, extra: &[&str]) -> ServiceCli {
    use clap::Parser;
    let mut argv = vec![
        "billing",
        "--database-url",
        url,
        "--database-schema",
        schema,
        "--jwt-secret",
        "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1eF",
    ];
    argv.extend_from_slice(extra);
    ServiceCli::try_parse_from(argv).unwrap()
}

fn pg_addr() -> SocketAddr {
    let url = url::Url::parse(&test_pg_url()).unwrap();
    let host = url.host_str().unwrap();
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    SocketAddr::new(std::net::IpAddr::from_str(host).unwrap(), url.port().unwrap_or(5432))
}

/// The health a server answers within a second; None when it answers nothing (a bound
/// listener that no server takes from yet accepts connections and never answers).
async fn health(addr: SocketAddr) -> Option<ServingStatus> {
    let ask = async {
        let ch =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()?;
        let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.ok()?;
        Some(r.into_inner().status())
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

async fn until(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok().await {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_its_database_and_health_follows_it() {
    let proxy = Proxy::start(pg_addr(), false).await;
    let (url, schema) = behind(&proxy);
    let cli = args(&url, &schema, &[]);
    let platform = manual_platform(Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (p, runtime) = (platform.clone(), cli.runtime.clone());
    let server =
        tokio::spawn(async move { contactier_billing::SERVICE.run(p, &runtime, no_peers(), listener).await });
    // The database is not there: the service waits rather than failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.is_finished(), "the service gave up on its database");
    assert_eq!(health(addr).await, None, "nothing serves before the database is there");

    proxy.up();
    until("serving once the database is there", Duration::from_secs(40), async || {
        health(addr).await == Some(ServingStatus::Serving)
    })
    .await;

    proxy.down();
    until("NOT_SERVING while the database is gone", Duration::from_secs(10), async || {
        health(addr).await == Some(ServingStatus::NotServing)
    })
    .await;
    proxy.up();
    until("SERVING again once it is back", Duration::from_secs(10), async || {
        health(addr).await == Some(ServingStatus::Serving)
    })
    .await;

    platform.shutdown.trigger();
    server.await.unwrap().unwrap();
    contactier_runtime::db::drop_postgres_schema(&test_pg_url(), &schema).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_the_migrations_alone_and_a_server_may_skip_them() {
    let proxy = Proxy::start(pg_addr(), true).await;
    let (url, schema) = behind(&proxy);
    // Told not to migrate, a server on an empty schema has no tables to serve from.
    let shutdown = contactier_runtime::Shutdown::new();
    let cli = args(&url, &schema, &["migrate"]);
    contactier_billing::SERVICE.migrate(&cli.runtime, &shutdown).await.unwrap();
    let db = contactier_runtime::Db::connect(&test_pg_url(), &schema, 1).await.unwrap();
    let q = "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1";
    let tables: Vec<(String,)> =
        db.fetch_all(contactier_runtime::sql::Sql::new(q).bind(&schema)).await.unwrap();
    let tables: Vec<String> = tables.into_iter().map(|t| t.0).collect();
    assert!(
        tables.contains(&"subscriptions".to_owned()) && tables.contains(&"outbox".to_owned()),
        "{tables:?}"
    );
    // Again: nothing to do, nothing fails.
    contactier_billing::SERVICE.migrate(&cli.runtime, &shutdown).await.unwrap();
    db.close().await;
    contactier_runtime::db::drop_postgres_schema(&test_pg_url(), &schema).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_ends_an_open_stream_at_once() {
    let mut platform = manual_platform(Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap());
    platform.drain = Duration::from_secs(2);
    platform.grace = Duration::from_secs(10);
    let db =
        contactier_runtime::testing::TestDb::new(contactier_runtime::db::Backend::Sqlite, "notification")
            .await;
    db.db.migrate_service(contactier_notification::SERVICE.migrations).await.unwrap();
    let env = contactier_runtime::host::ServiceEnv {
        platform: platform.clone(),
        db: db.db.clone(),
        peers: PeerArgs { ..no_peers() },
    };
    let spec = (contactier_notification::SERVICE.build)(env).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(contactier_runtime::server::serve(spec, listener, platform.serve_options()));
    let token = platform.authenticator.user_token("acct-a", "u", &["read"], chrono::Duration::hours(1));
    let ch =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut stream = NotificationServiceClient::new(ch)
        .watch_alerts(authed(npb::WatchAlertsRequest { after_sequence: 0 }, &token))
        .await
        .unwrap()
        .into_inner();

    let asked = Instant::now();
    platform.shutdown.trigger();
    let ended =
        tokio::time::timeout(Duration::from_secs(2), stream.message()).await.expect("the stream ended");
    let err = ended.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(asked.elapsed() < Duration::from_secs(1), "ended after {:?}", asked.elapsed());
    // During the drain the server still answers, and says it is not serving.
    assert_eq!(health(addr).await, Some(ServingStatus::NotServing));
    // Then it stops, well before the grace period.
    tokio::time::timeout(Duration::from_secs(6), server)
        .await
        .expect("stopped after the drain")
        .unwrap()
        .unwrap();
    assert_eq!(health(addr).await, None);
}
