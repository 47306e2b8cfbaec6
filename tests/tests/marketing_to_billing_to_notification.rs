//! Marketing status, billing and notification as separate servers: status changes become counts
//! in billing (upgrade, next-day invoice, no downgrade) and alerts in notification, on the seeds'
//! dates.

use chrono::{TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::marketing_status::v1::{
    self as mpb, contact_event::Payload,
    marketing_status_internal_service_client::MarketingStatusInternalServiceClient,
    marketing_status_service_client::MarketingStatusServiceClient, set_marketing_status_request::Target,
};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;

const ACCOUNT: &str = "acct-a";

fn event(id: String, payload: Payload) -> mpb::ContactEvent {
    mpb::ContactEvent { event_id: id, account_id: ACCOUNT.into(), occurred_at: None, payload: Some(payload) }
}

async fn contact_events(s: &System, events: Vec<mpb::ContactEvent>) {
    let mut c = MarketingStatusInternalServiceClient::new(s.channel("marketing-status"));
    c.apply_contact_events(authed(
        mpb::ApplyContactEventsRequest { events, batch_sizes: vec![] },
        &s.service_token("contacts"),
    ))
    .await
    .unwrap();
}

async fn set(s: &System, ids: Vec<String>, status: MarketingStatus) {
    let req = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(Target::Contacts(mpb::ContactIds { ids })),
        status: status as i32,
        source: None,
    };
    let mut c = MarketingStatusServiceClient::new(s.channel("marketing-status"));
    c.set_marketing_status(authed(req, &s.user_token(ACCOUNT, &["write"]))).await.unwrap();
}

async fn usage(s: &System) -> bpb::Usage {
    let mut b = BillingServiceClient::new(s.channel("billing"));
    b.get_usage(authed(bpb::GetUsageRequest {}, &s.user_token(ACCOUNT, &["read"])))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap()
}

async fn status_changes_drive_billing_and_alerts_on_the_seeds_dates(backend: Backend) {
    use npb::AlertKind::*;
    // 30 April 2026, 11:00 in New York; the account bought Starter monthly on 1 April.
    let s = System::start(backend, Utc.with_ymd_and_hms(2026, 4, 30, 15, 0, 0).unwrap()).await;
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let sub = subscription(Edition::Starter, Term::Monthly, Date { year: 2026, month: 4, day: 1 });
    billing.create_subscription(authed(sub, &s.user_token(ACCOUNT, &["admin"]))).await.unwrap();

    // 1,001 imported contacts, non-marketing by default.
    let ids: Vec<String> = (0..1_001).map(|i| format!("c{i}")).collect();
    for chunk in ids.chunks(500) {
        let events = chunk
            .iter()
            .map(|id| {
                event(
                    format!("created-{id}"),
                    Payload::Created(mpb::ContactCreated {
                        contact_id: id.clone(),
                        source: Some(Source { r#type: SourceType::Import as i32, id: "import-1".into() }),
                        requested_status: 0,
                        user_id: String::new(),
                    }),
                )
            })
            .collect();
        contact_events(&s, events).await;
    }
    // 30 April: all set marketing at once; the count exceeds the 1,000 tier.
    set(&s, ids.clone(), MarketingStatus::Marketing).await;
    s.advance_to(Utc.with_ymd_and_hms(2026, 4, 30, 15, 0, 1).unwrap()).await;
    let u = usage(&s).await;
    assert_eq!((u.marketing_count, u.tier, u.total_contacts), (1_001, 2_000, 1_001), "{backend:?}");

    // 1 May, 00:00 New York: the upgrade of 30 April is invoiced for its one day of 30, and
    // the monthly term renews at the new tier.
    s.advance_to(Utc.with_ymd_and_hms(2026, 5, 1, 4, 0, 0).unwrap()).await;
    let alerts = s.alerts(ACCOUNT).await;
    let kinds: Vec<npb::AlertKind> =
        alerts.iter().rev().map(contactier_proto::notification::v1::Alert::kind).collect();
    assert_eq!(
        kinds,
        [Threshold75, Threshold90, Threshold98, TierExceeded, TierUpgraded, InvoiceIssued, InvoiceIssued],
        "{backend:?}"
    );
    let mut amounts: Vec<_> = alerts[..2].iter().map(|a| a.amount.clone().unwrap().amount_minor).collect();
    amounts.sort();
    assert_eq!(amounts, [60, 3_600], "{backend:?}: 1,800 x 1/30, and a month at 2,000");
    assert_eq!(usage(&s).await.period_count, 1_001, "{backend:?}: May counts everyone marketing on 1 May");

    // 15 May: one contact set non-marketing still counts until 1 June.
    s.advance_to(Utc.with_ymd_and_hms(2026, 5, 15, 16, 0, 0).unwrap()).await;
    set(&s, vec!["c0".into()], MarketingStatus::NonMarketing).await;
    s.advance_to(Utc.with_ymd_and_hms(2026, 5, 15, 16, 0, 1).unwrap()).await;
    assert_eq!(usage(&s).await.marketing_count, 1_001, "{backend:?}: pending still counts");

    // 1 June: billing has marketing-status apply the update date, which takes c0 out; a
    // delete frees another place. No downgrade.
    s.advance_to(Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap()).await;
    assert_eq!(usage(&s).await.period_count, 1_000, "{backend:?}: June counts 1,000");
    contact_events(
        &s,
        vec![event(
            "deleted-c1".into(),
            Payload::Deleted(mpb::ContactDeleted { contact_id: "c1".into(), erase: false }),
        )],
    )
    .await;
    s.advance_to(Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 1).unwrap()).await;
    let u = usage(&s).await;
    assert_eq!((u.marketing_count, u.tier, u.total_contacts), (999, 2_000, 1_000), "{backend:?}");
}

contactier_runtime::backend_tests!(status_changes_drive_billing_and_alerts_on_the_seeds_dates,);
