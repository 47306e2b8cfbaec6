//! The contacts service over real gRPC for tests, with a real marketing-status beside it as the
//! receiver of its events (and the other half of GDPR exports), on one manual clock.
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use contactier_proto::contacts::v1::{self as pb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_runtime::db::Backend;
use contactier_runtime::host::{PeerArgs, Platform, ServiceEnv};
use contactier_runtime::testing::{TestDb, authed, channel, manual_platform, no_peers, refusing_peer, serve};
use tonic::transport::Channel;

pub const ACCOUNT: &str = "acct-a";

pub struct Contacts {
    pub addr: std::net::SocketAddr,
    pub channel: Channel,
    pub status_channel: Channel,
    pub platform: Platform,
    /// The contacts service's database, then marketing-status's.
    pub dbs: [TestDb; 2],
}

impl Drop for Contacts {
    fn drop(&mut self) {
        self.platform.shutdown.trigger();
    }
}

pub async fn start(backend: Backend) -> Contacts {
    let platform = manual_platform(Utc.with_ymd_and_hms(2026, 4, 30, 15, 0, 0).unwrap());
    let mdb = TestDb::new(backend, "marketing-status").await;
    mdb.db.migrate_service(contactier_marketing_status::SERVICE.migrations).await.unwrap();
    // Its counts go to a billing that refuses them: a day of the manual clock is then a few
    // hundred steps, not one each try of a billing not there (every 10-12 s).
    let peers = PeerArgs { billing_url: refusing_peer().await, ..no_peers() };
    let env = ServiceEnv { platform: platform.clone(), db: mdb.db.clone(), peers };
    let ms = serve((contactier_marketing_status::SERVICE.build)(env).await.unwrap(), &platform).await;

    let cdb = TestDb::new(backend, "contacts").await;
    cdb.db.migrate_service(contactier_contacts::SERVICE.migrations).await.unwrap();
    let mut peers = no_peers();
    peers.marketing_status_url = format!("http://{ms}");
    let env = ServiceEnv { platform: platform.clone(), db: cdb.db.clone(), peers };
    let addr = serve((contactier_contacts::SERVICE.build)(env).await.unwrap(), &platform).await;
    Contacts { addr, channel: channel(addr), status_channel: channel(ms), platform, dbs: [cdb, mdb] }
}

impl Contacts {
    pub fn token(&self, account: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, "user-1", scopes, chrono::Duration::hours(1))
    }

    pub fn writer(&self) -> String {
        self.token(ACCOUNT, &["write"])
    }

    pub fn api(&self) -> ContactsServiceClient<Channel> {
        ContactsServiceClient::new(self.channel.clone())
    }

    /// Creates a contact and answers it.
    pub async fn create(&self, email: &str, props: &[(&str, &str)]) -> Result<pb::Contact, tonic::Status> {
        let input = pb::ContactInput {
            email: email.into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            source: None,
            requested_status: 0,
        };
        let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
        Ok(self.api().create_contact(authed(req, &self.writer())).await?.into_inner().contact.unwrap())
    }

    /// The contact with this email; it must exist.
    pub async fn by_email(&self, email: impl Into<String>) -> pb::Contact {
        let req = pb::GetContactRequest { key: Some(pb::get_contact_request::Key::Email(email.into())) };
        self.api().get_contact(authed(req, &self.writer())).await.unwrap().into_inner().contact.unwrap()
    }

    pub async fn search(
        &self,
        req: pb::SearchContactsRequest,
    ) -> Result<pb::SearchContactsResponse, tonic::Status> {
        Ok(self.api().search_contacts(authed(req, &self.token(ACCOUNT, &["read"]))).await?.into_inner())
    }

    /// Lets the outbox relay deliver what is due.
    pub async fn settle(&self) {
        let now = self.platform.clock.now();
        self.platform.clock.advance_to(now + chrono::Duration::milliseconds(10)).await.unwrap();
    }

    /// marketing-status's view of a contact; None when it does not know it.
    pub async fn status(&self, contact: &str) -> Option<mpb::ContactStatus> {
        let mut c = MarketingStatusServiceClient::new(self.status_channel.clone());
        let req = mpb::GetContactStatusRequest { contact_id: contact.into() };
        c.get_contact_status(authed(req, &self.token(ACCOUNT, &["read"])))
            .await
            .ok()
            .and_then(|r| r.into_inner().status)
    }

    pub async fn marketing_count(&self) -> mpb::MarketingCount {
        let mut c = MarketingStatusServiceClient::new(self.status_channel.clone());
        let req = mpb::GetMarketingCountRequest {};
        c.get_marketing_count(authed(req, &self.token(ACCOUNT, &["read"])))
            .await
            .unwrap()
            .into_inner()
            .count
            .unwrap()
    }
}

/// A custom property of `ptype` named and labelled `name`.
pub fn property(name: &str, ptype: pb::PropertyType) -> pb::CreatePropertyRequest {
    pb::CreatePropertyRequest {
        property: Some(pb::PropertyDefinition {
            name: name.into(),
            label: name.into(),
            r#type: ptype as i32,
            ..Default::default()
        }),
    }
}

pub fn filter(groups: Vec<Vec<pb::Filter>>) -> Option<pb::ContactFilter> {
    Some(pb::ContactFilter {
        groups: groups.into_iter().map(|filters| pb::FilterGroup { filters }).collect(),
    })
}

pub fn f(property: &str, op: pb::FilterOperator, value: &str) -> pb::Filter {
    pb::Filter { property: property.into(), operator: op as i32, value: value.into(), ..Default::default() }
}

/// (property, value, source type, source id, user) of each change, newest first.
pub type Change = (String, String, i32, String, String);

pub async fn history(s: &Contacts, contact: &str, property: &str) -> Result<Vec<Change>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        // Small pages, so the walk crosses page boundaries.
        let req = pb::ListPropertyHistoryRequest {
            contact_id: contact.into(),
            property: property.into(),
            page_size: 2,
            page_token: token,
        };
        let r = s.api().list_property_history(authed(req, &s.token(ACCOUNT, &["read"]))).await?.into_inner();
        out.extend(r.changes.into_iter().map(|c| {
            let source = c.source.unwrap_or_default();
            (c.property, c.value, source.r#type, source.id, c.user_id)
        }));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}
