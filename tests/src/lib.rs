//! A whole Contactier for tests: each service its own gRPC server on its own port and its own
//! database (SQLite file or PostgreSQL schema), wired to the others as in a deployment, all on
//! one manual clock so advancing it waits for every service's due work.

use chrono::{DateTime, Utc};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::db::Backend;
use contactier_runtime::host::{PeerArgs, Platform, ServiceDef, ServiceEnv};
use contactier_runtime::testing::{TestDb, authed, channel, manual_platform};
use std::net::SocketAddr;
use tonic::transport::Channel;

/// The four services, in port order.
pub const SERVICES: [&ServiceDef; 4] = [
    &contactier_contacts::SERVICE,
    &contactier_marketing_status::SERVICE,
    &contactier_billing::SERVICE,
    &contactier_notification::SERVICE,
];

pub struct System {
    pub platform: Platform,
    addrs: Vec<(&'static str, SocketAddr)>,
    _dbs: Vec<TestDb>,
}

impl Drop for System {
    fn drop(&mut self) {
        self.platform.shutdown.trigger();
    }
}

impl System {
    /// Starts every service on `backend` with the manual clock at `start`.
    pub async fn start(backend: Backend, start: DateTime<Utc>) -> System {
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
        let mut dbs = Vec::new();
        for (def, listener) in listeners {
            let t = TestDb::new(backend, def.name).await;
            t.db.migrate_service(def.migrations).await.expect("migrations");
            let env = ServiceEnv { platform: platform.clone(), db: t.db.clone(), peers: peers.clone() };
            let spec = (def.build)(env).await.expect("service builds");
            tokio::spawn(contactier_runtime::server::serve(spec, listener, platform.serve_options()));
            dbs.push(t);
        }
        System { platform, addrs, _dbs: dbs }
    }

    /// A channel to the named service.
    pub fn channel(&self, service: &str) -> Channel {
        channel(self.addrs.iter().find(|(n, _)| *n == service).expect("a service of this system").1)
    }

    pub fn user_token(&self, account: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, "user-1", scopes, chrono::Duration::hours(1))
    }

    pub fn service_token(&self, service: &str) -> String {
        self.platform.authenticator.service_token(service, chrono::Duration::hours(1))
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
