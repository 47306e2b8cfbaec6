//! A whole Contactier for tests: each service its own gRPC server on its own port and its own
//! database (SQLite file or PostgreSQL schema), wired to the others as in a deployment, all on
//! one manual clock so advancing it waits for every service's due work.

use chrono::{DateTime, Utc};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::db::Backend;
use contactier_runtime::host::{PeerArgs, Platform, ServiceDef, ServiceEnv};
use contactier_runtime::testing::{TestDb, authed, channel, manual_platform};
pub mod procs;
pub mod proxy;

use std::net::SocketAddr;
use tonic::transport::Channel;

/// A subscription of the NA subsidiary in euros with the marketing contacts feature, as the
/// tests buy it.
pub fn subscription(
    edition: contactier_proto::common::v1::Edition,
    term: contactier_proto::common::v1::Term,
    start: contactier_proto::common::v1::Date,
) -> contactier_proto::billing::v1::CreateSubscriptionRequest {
    contactier_proto::billing::v1::CreateSubscriptionRequest {
        edition: edition as i32,
        term: term as i32,
        start_date: Some(start),
        currency: "EUR".into(),
        subsidiary: "NA".into(),
        tier: 0,
        marketing_contacts_enabled: true,
    }
}

/// Today in the NA subsidiary's zone (New York): a start date the service accepts at any hour,
/// where UTC's date is a day ahead for part of every day.
pub fn na_today() -> chrono::NaiveDate {
    Utc::now().with_timezone(&chrono_tz::America::New_York).date_naive()
}

/// The four services, in port order.
pub const SERVICES: [&ServiceDef; 4] = [
    &contactier_contacts::SERVICE,
    &contactier_marketing_status::SERVICE,
    &contactier_billing::SERVICE,
    &contactier_notification::SERVICE,
];

/// One running service: its own shutdown (so it can be stopped alone), database and address.
struct Running {
    def: &'static ServiceDef,
    platform: Platform,
    db: TestDb,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct System {
    /// Shared by every service: the clock and the signing key.
    pub platform: Platform,
    peers: PeerArgs,
    services: Vec<Running>,
    /// Notification's delivery settings, when a test sets its own.
    delivery: Option<contactier_notification::DeliveryArgs>,
}

impl Drop for System {
    fn drop(&mut self) {
        for s in &self.services {
            s.platform.shutdown.trigger();
        }
    }
}

async fn launch(
    def: &'static ServiceDef,
    platform: &Platform,
    db: &TestDb,
    peers: &PeerArgs,
    listener: tokio::net::TcpListener,
    delivery: Option<&contactier_notification::DeliveryArgs>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let env = ServiceEnv { platform: platform.clone(), db: db.db.clone(), peers: peers.clone() };
    let spec = match delivery {
        Some(args) if def.name == contactier_notification::NAME => {
            contactier_notification::build_with(env, args.clone()).await.expect("service builds")
        }
        _ => (def.build)(env).await.expect("service builds"),
    };
    tokio::spawn(contactier_runtime::server::serve(spec, listener, platform.serve_options()))
}

impl System {
    /// Starts every service on `backend` with the manual clock at `start`.
    pub async fn start(backend: Backend, start: DateTime<Utc>) -> System {
        Self::start_with(backend, start, None).await
    }

    /// As [`System::start`], with notification's delivery settings given.
    pub async fn start_with(
        backend: Backend,
        start: DateTime<Utc>,
        delivery: Option<contactier_notification::DeliveryArgs>,
    ) -> System {
        let platform = manual_platform(start);
        // Listeners first, so every service knows where the others are.
        let mut listeners = Vec::new();
        for def in SERVICES {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
            listeners.push((def, l));
        }
        let addrs: Vec<(&'static str, SocketAddr)> =
            listeners.iter().map(|(d, l)| (d.name, l.local_addr().expect("bound"))).collect();
        let url =
            |name: &str| format!("http://{}", addrs.iter().find(|(n, _)| *n == name).expect("service").1);
        let peers = PeerArgs {
            contacts_url: url("contacts"),
            marketing_status_url: url("marketing-status"),
            billing_url: url("billing"),
            notification_url: url("notification"),
        };
        let mut services = Vec::new();
        for (def, listener) in listeners {
            let db = TestDb::new(backend, def.name).await;
            db.db.migrate_service(def.migrations).await.expect("migrations");
            let own = Platform { shutdown: contactier_runtime::Shutdown::new(), ..platform.clone() };
            let addr = listener.local_addr().expect("bound");
            let server = launch(def, &own, &db, &peers, listener, delivery.as_ref()).await;
            services.push(Running { def, platform: own, db, addr, server });
        }
        System { platform, peers, services, delivery }
    }

    fn running(&mut self, service: &str) -> &mut Running {
        self.services.iter_mut().find(|s| s.def.name == service).expect("a service of this system")
    }

    /// Stops one service (as a rolling restart does): it drains, its workers stop, its
    /// database stays.
    pub async fn stop(&mut self, service: &str) {
        let r = self.running(service);
        r.platform.shutdown.trigger();
        let server = std::mem::replace(&mut r.server, tokio::spawn(async { Ok(()) }));
        server.await.expect("server task").expect("clean shutdown");
    }

    /// Starts a stopped service again on its address and database.
    pub async fn restart(&mut self, service: &str) {
        let peers = self.peers.clone();
        let shared = self.platform.clone();
        let delivery = self.delivery.clone();
        let r = self.running(service);
        r.platform = Platform { shutdown: contactier_runtime::Shutdown::new(), ..shared };
        let listener = bind_again(r.addr).await;
        r.server = launch(r.def, &r.platform, &r.db, &peers, listener, delivery.as_ref()).await;
    }

    /// A channel to the named service.
    pub fn channel(&self, service: &str) -> Channel {
        channel(self.services.iter().find(|s| s.def.name == service).expect("a service of this system").addr)
    }

    /// The database of the named service, for tests that play a fault into it.
    pub fn db(&self, service: &str) -> &contactier_runtime::Db {
        &self.services.iter().find(|s| s.def.name == service).expect("a service of this system").db.db
    }

    /// A token of `user` in `account`.
    pub fn token(&self, account: &str, user: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, user, scopes, chrono::Duration::hours(1))
    }

    pub fn user_token(&self, account: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, "user-1", scopes, chrono::Duration::hours(1))
    }

    pub fn service_token(&self, service: &str) -> String {
        self.platform.authenticator.service_token(service, chrono::Duration::hours(1))
    }

    /// A client of every service acting as `user-1` of `account` with `scopes`.
    pub fn client(&self, account: &str, scopes: &[&str]) -> contactier_client::Client {
        let url = |name: &str| {
            format!("http://{}", self.services.iter().find(|s| s.def.name == name).expect("a service").addr)
        };
        let endpoints = contactier_client::Endpoints {
            contacts: url("contacts"),
            marketing_status: url("marketing-status"),
            billing: url("billing"),
            notification: url("notification"),
        };
        let tokens = contactier_runtime::testing::Minted {
            authenticator: self.platform.authenticator.clone(),
            account: account.to_owned(),
            user: "user-1".to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        contactier_client::Client::builder(endpoints).token(tokens).build().expect("a client")
    }

    /// `n` form sign-ups of `account` (marketing contacts), `lead<from>@example.com` on, a
    /// batch call per 1,000.
    pub async fn sign_ups(&self, account: &str, from: usize, n: usize) {
        use contactier_proto::common::v1::{Source, SourceType};
        use contactier_proto::contacts::v1 as cpb;
        let admin = self.user_token(account, &["admin"]);
        let mut contacts = cpb::contacts_service_client::ContactsServiceClient::new(self.channel("contacts"));
        for first in (from..from + n).step_by(1_000) {
            let batch = (first..(first + 1_000).min(from + n)).map(|i| cpb::ContactInput {
                email: format!("lead{i}@example.com"),
                source: Some(Source { r#type: SourceType::Form as i32, id: "signup".into() }),
                ..Default::default()
            });
            let req =
                cpb::BatchCreateContactsRequest { contacts: batch.collect(), request_id: String::new() };
            let r = contacts.batch_create_contacts(authed(req, &admin)).await.expect("created").into_inner();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
    }

    /// The account's alerts in notification's feed, newest first.
    pub async fn alerts(&self, account: &str) -> Vec<npb::Alert> {
        let mut feed =
            npb::notification_service_client::NotificationServiceClient::new(self.channel("notification"));
        let req = npb::ListAlertsRequest { page_size: 500, page_token: String::new() };
        let token = self.user_token(account, &["read"]);
        feed.list_alerts(authed(req, &token)).await.expect("the feed answers").into_inner().alerts
    }

    /// Moves the clock and returns once every service has done the work due by then.
    pub async fn advance_to(&self, t: DateTime<Utc>) {
        self.platform.clock.advance_to(t).await.expect("time moves forward");
    }
}

/// Binds a stopped service's address again. While it was stopped, an outgoing connection of
/// another test may have been given its port as its own local port (both come from the
/// ephemeral range; seen once in a full run: AddrInUse); such a connection is gone soon.
async fn bind_again(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the service's port {addr} is not free again: {e}"),
        }
    }
}
