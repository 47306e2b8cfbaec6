//! Billing over real gRPC for tests: a real notification service receives its outbox, and a
//! recording marketing-status answers its update-date calls (with counts the test sets, failing
//! when told to), all on one manual clock.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use contactier_proto::billing::v1::{
    self as pb, billing_internal_service_client::BillingInternalServiceClient,
    billing_service_client::BillingServiceClient,
};
use contactier_proto::common::v1::{Date, Edition, Money, Term};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_internal_service_server::MarketingStatusInternalService,
    marketing_status_internal_service_server::MarketingStatusInternalServiceServer,
};
use contactier_runtime::auth::Policy;
use contactier_runtime::db::Backend;
use contactier_runtime::host::{Platform, ServiceEnv};
use contactier_runtime::server::ServiceSpec;
use contactier_runtime::testing::{TestDb, authed, channel, manual_platform, no_peers, serve};
use std::sync::{Arc, Mutex};
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub const ACCOUNT: &str = "acct-a";

/// What billing asked of marketing-status, and what it answers.
#[derive(Default)]
pub struct Peer {
    /// (account, update date, effective_at seconds) of every date asked for (ApplyUpdateDate or
    /// ApplyUpdateDates).
    pub update_calls: Vec<(String, Date, i64)>,
    pub plans: Vec<mpb::SetAccountPlanRequest>,
    /// Answer SetAccountPlans UNIMPLEMENTED, as a replica from before it would.
    pub one_plan_a_call: bool,
    /// Calls of SetAccountPlans answered, and of SetAccountPlan.
    pub plan_batches: u32,
    pub single_plans: u32,
    /// Calls to refuse with UNAVAILABLE before answering.
    pub failures_left: u32,
    /// The count answered after applying a date.
    pub count: mpb::MarketingCount,
    /// Answer ApplyUpdateDates UNIMPLEMENTED, as a replica from before it would.
    pub one_date_a_call: bool,
    /// Calls of ApplyUpdateDates answered.
    pub batch_calls: u32,
}

#[derive(Clone, Default)]
pub struct RecordingMarketingStatus(pub Arc<Mutex<Peer>>);

#[tonic::async_trait]
impl MarketingStatusInternalService for RecordingMarketingStatus {
    async fn apply_contact_events(
        &self,
        _: Request<mpb::ApplyContactEventsRequest>,
    ) -> Result<Response<mpb::ApplyContactEventsResponse>, Status> {
        Err(Status::unimplemented("billing never sends contact events"))
    }

    async fn apply_update_date(
        &self,
        req: Request<mpb::ApplyUpdateDateRequest>,
    ) -> Result<Response<mpb::ApplyUpdateDateResponse>, Status> {
        let r = req.into_inner();
        let mut p = self.0.lock().unwrap();
        p.update_calls.push((
            r.account_id,
            r.update_date.unwrap_or_default(),
            r.effective_at.unwrap_or_default().seconds,
        ));
        if p.failures_left > 0 {
            p.failures_left -= 1;
            return Err(Status::unavailable("marketing-status is restarting"));
        }
        Ok(Response::new(mpb::ApplyUpdateDateResponse {
            applied: 0,
            already_applied: false,
            count: Some(p.count),
        }))
    }

    async fn apply_update_dates(
        &self,
        req: Request<mpb::ApplyUpdateDatesRequest>,
    ) -> Result<Response<mpb::ApplyUpdateDatesResponse>, Status> {
        let dates = req.into_inner().dates;
        let mut p = self.0.lock().unwrap();
        if p.one_date_a_call {
            return Err(Status::unimplemented("ApplyUpdateDates"));
        }
        p.batch_calls += 1;
        for r in &dates {
            let at = r.effective_at.unwrap_or_default().seconds;
            p.update_calls.push((r.account_id.clone(), r.update_date.unwrap_or_default(), at));
        }
        if p.failures_left > 0 {
            p.failures_left -= 1;
            return Err(Status::unavailable("marketing-status is restarting"));
        }
        let results = dates
            .iter()
            .map(|_| mpb::ApplyUpdateDateResult {
                applied: Some(mpb::ApplyUpdateDateResponse {
                    applied: 0,
                    already_applied: false,
                    count: Some(p.count),
                }),
                error: None,
            })
            .collect();
        Ok(Response::new(mpb::ApplyUpdateDatesResponse { results }))
    }

    async fn set_account_plan(
        &self,
        req: Request<mpb::SetAccountPlanRequest>,
    ) -> Result<Response<mpb::SetAccountPlanResponse>, Status> {
        let mut p = self.0.lock().unwrap();
        p.single_plans += 1;
        p.plans.push(req.into_inner());
        Ok(Response::new(mpb::SetAccountPlanResponse {}))
    }

    async fn set_account_plans(
        &self,
        req: Request<mpb::SetAccountPlansRequest>,
    ) -> Result<Response<mpb::SetAccountPlansResponse>, Status> {
        let mut p = self.0.lock().unwrap();
        if p.one_plan_a_call {
            return Err(Status::unimplemented("SetAccountPlans"));
        }
        p.plan_batches += 1;
        p.plans.extend(req.into_inner().plans);
        Ok(Response::new(mpb::SetAccountPlansResponse {}))
    }

    async fn export_contact_status_data(
        &self,
        _: Request<mpb::ExportContactStatusDataRequest>,
    ) -> Result<Response<mpb::ExportContactStatusDataResponse>, Status> {
        Err(Status::unimplemented("billing never exports statuses"))
    }
}

/// Billing with its peers on one manual clock.
pub struct Billing {
    pub channel: Channel,
    /// The notification service billing publishes its usage states to.
    pub notification: Channel,
    pub platform: Platform,
    pub marketing_status: RecordingMarketingStatus,
    env: ServiceEnv,
    dbs: [TestDb; 2],
}

impl Billing {
    /// Billing's own database.
    pub fn db(&self) -> &contactier_runtime::db::Db {
        &self.dbs[0].db
    }
}

impl Drop for Billing {
    fn drop(&mut self) {
        self.platform.shutdown.trigger();
    }
}

/// 20 April 2026, 12:00 in New York.
pub fn noon_20_april() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

pub async fn start(backend: Backend) -> Billing {
    let platform = manual_platform(noon_20_april());
    let ndb = TestDb::new(backend, "notification").await;
    ndb.db.migrate_service(contactier_notification::SERVICE.migrations).await.unwrap();
    let args = contactier_notification::DeliveryArgs {
        smtp_url: None,
        smtp_from: "Contactier <alerts@contactier.invalid>".into(),
        max_attempts: 3,
        backoff_ms: 100,
        webhook_timeout_ms: 1_000,
        webhook_allow_http: false,
        webhook_allow_ranges: vec![],
        digest_window_ms: 0,
        watch_streams_per_account: 50,
        watch_streams: 5_000,
    };
    let env = ServiceEnv { platform: platform.clone(), db: ndb.db.clone(), peers: no_peers() };
    let notification = serve(contactier_notification::build_with(env, args).await.unwrap(), &platform).await;

    let bdb = TestDb::new(backend, "billing").await;
    bdb.db.migrate_service(contactier_billing::SERVICE.migrations).await.unwrap();
    let book =
        contactier_billing::price_book::PriceBook::parse(contactier_billing::price_book::DEFAULT).unwrap();
    let marketing_status = RecordingMarketingStatus::default();
    let internal = "contactier.marketing_status.v1.MarketingStatusInternalService";
    let spec = ServiceSpec {
        name: "marketing-status",
        routes: Routes::new(MarketingStatusInternalServiceServer::new(marketing_status.clone())),
        policy: Policy::new().internal(
            internal,
            &["ApplyUpdateDate", "ApplyUpdateDates", "SetAccountPlan", "SetAccountPlans"],
            &["billing"],
        ),
        services: vec![internal],
        failing: vec![],
        db: None,
    };
    let ms = serve(spec, &platform).await;

    let mut peers = no_peers();
    peers.notification_url = format!("http://{notification}");
    peers.marketing_status_url = format!("http://{ms}");
    let env = ServiceEnv { platform: platform.clone(), db: bdb.db.clone(), peers };
    let addr = serve(contactier_billing::build_with(env.clone(), book).await.unwrap(), &platform).await;
    Billing {
        channel: channel(addr),
        notification: channel(notification),
        platform,
        marketing_status,
        env,
        dbs: [bdb, ndb],
    }
}

pub fn date(y: i32, m: i32, d: i32) -> Option<Date> {
    Some(Date { year: y, month: m, day: d })
}

impl Billing {
    /// Starts another billing replica on the same database and peers, as a second pod would.
    pub async fn another_replica(&self) -> Channel {
        self.another_replica_caching(self.platform.read_cache_ttl).await
    }

    /// Another replica that may serve usage from memory for `ttl`.
    pub async fn another_replica_caching(&self, ttl: std::time::Duration) -> Channel {
        let book = contactier_billing::price_book::PriceBook::parse(contactier_billing::price_book::DEFAULT)
            .unwrap();
        let env = ServiceEnv {
            platform: Platform { read_cache_ttl: ttl, ..self.platform.clone() },
            ..self.env.clone()
        };
        channel(serve(contactier_billing::build_with(env, book).await.unwrap(), &self.platform).await)
    }

    pub fn token(&self, account: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, "user-1", scopes, chrono::Duration::hours(1))
    }

    pub fn api(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.channel.clone())
    }

    pub async fn subscribe(
        &self,
        req: pb::CreateSubscriptionRequest,
    ) -> Result<pb::Subscription, tonic::Status> {
        let r = self.api().create_subscription(authed(req, &self.token(ACCOUNT, &["admin"]))).await?;
        Ok(r.into_inner().subscription.unwrap())
    }

    pub async fn count(
        &self,
        id: &str,
        version: i64,
        marketing: i64,
        non_marketing: i64,
    ) -> Result<Vec<String>, tonic::Status> {
        self.count_with(id, version, marketing, non_marketing, true).await
    }

    /// A count as marketing-status reports it, with the account's feature switch.
    pub async fn count_with(
        &self,
        id: &str,
        version: i64,
        marketing: i64,
        non_marketing: i64,
        feature: bool,
    ) -> Result<Vec<String>, tonic::Status> {
        let token = self.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
        let ev = pb::CountChanged {
            event_id: id.into(),
            account_id: ACCOUNT.into(),
            version,
            marketing_count: marketing,
            pending_non_marketing: 0,
            non_marketing,
            observed_at: None,
            marketing_contacts_enabled: feature,
        };
        let mut client = BillingInternalServiceClient::new(self.channel.clone());
        let r = client
            .apply_count_events(authed(pb::ApplyCountEventsRequest { events: vec![ev] }, &token))
            .await?;
        Ok(r.into_inner().acknowledged_event_ids)
    }

    /// The account's upgrades, the first page of ten.
    pub async fn upgrades(&self) -> Vec<pb::Upgrade> {
        let req = pb::ListUpgradesRequest { page_size: 10, page_token: String::new() };
        let r = self.api().list_upgrades(authed(req, &self.token(ACCOUNT, &["read"]))).await.unwrap();
        r.into_inner().upgrades
    }

    pub async fn subscription(&self) -> pb::Subscription {
        let r = self
            .api()
            .get_subscription(authed(pb::GetSubscriptionRequest {}, &self.token(ACCOUNT, &["read"])))
            .await;
        r.unwrap().into_inner().subscription.unwrap()
    }

    pub async fn invoices(&self) -> Vec<pb::Invoice> {
        let req = pb::ListInvoicesRequest { page_size: 100, page_token: String::new() };
        self.api()
            .list_invoices(authed(req, &self.token(ACCOUNT, &["read"])))
            .await
            .unwrap()
            .into_inner()
            .invoices
    }

    pub async fn advance_to(&self, t: DateTime<Utc>) {
        self.platform.clock.advance_to(t).await.unwrap();
    }
}

pub fn professional_monthly() -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest {
        edition: Edition::Professional as i32,
        term: Term::Monthly as i32,
        start_date: date(2026, 4, 15),
        currency: "EUR".into(),
        subsidiary: "NA".into(),
        tier: 0,
        marketing_contacts_enabled: true,
    }
}

pub fn eur(minor: i64) -> Option<Money> {
    Some(Money { amount_minor: minor, currency: "EUR".into() })
}

/// An account's marketing count as marketing-status reports it (no pending, no non-marketing,
/// the feature on).
pub fn count_changed(event_id: &str, account: &str, version: i64, marketing: i64) -> pb::CountChanged {
    pb::CountChanged {
        event_id: event_id.into(),
        account_id: account.into(),
        version,
        marketing_count: marketing,
        pending_non_marketing: 0,
        non_marketing: 0,
        observed_at: None,
        marketing_contacts_enabled: true,
    }
}
