//! Billing and notification as separate servers: counts become upgrades and next-day invoices in
//! billing, and alerts in notification, through billing's outbox.

use chrono::{DateTime, TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{
    self as pb, billing_internal_service_client::BillingInternalServiceClient,
    billing_service_client::BillingServiceClient,
};
use contactier_proto::common::v1::{Date, Edition, Money, Term};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;

const ACCOUNT: &str = "acct-a";

/// 20 April 2026, 12:00 in New York.
fn noon_20_april() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

async fn count(s: &System, id: &str, version: i64, marketing: i64) {
    let ev = pb::CountChanged {
        event_id: id.into(),
        account_id: ACCOUNT.into(),
        version,
        marketing_count: marketing,
        pending_non_marketing: 0,
        non_marketing: 0,
        observed_at: None,
        marketing_contacts_enabled: true,
    };
    let mut client = BillingInternalServiceClient::new(s.channel("billing"));
    let req = authed(pb::ApplyCountEventsRequest { events: vec![ev] }, &s.service_token("marketing-status"));
    client.apply_count_events(req).await.unwrap();
}

async fn usage_upgrades_and_invoices_reach_notification_through_the_outbox(backend: Backend) {
    use npb::AlertKind::*;
    let s = System::start(backend, noon_20_april()).await;
    let sub = subscription(Edition::Professional, Term::Monthly, Date { year: 2026, month: 4, day: 15 });
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    billing.create_subscription(authed(sub, &s.user_token(ACCOUNT, &["admin"]))).await.unwrap();

    count(&s, "c1", 1, 1_600).await;
    count(&s, "c2", 2, 2_100).await;
    s.advance_to(Utc.with_ymd_and_hms(2026, 4, 21, 5, 0, 0).unwrap()).await;

    let alerts = s.alerts(ACCOUNT).await;
    let kinds: Vec<npb::AlertKind> =
        alerts.iter().rev().map(contactier_proto::notification::v1::Alert::kind).collect();
    assert_eq!(
        kinds,
        [Threshold75, Threshold90, Threshold98, TierExceeded, TierUpgraded, InvoiceIssued],
        "{backend:?}"
    );
    let exceeded = alerts.iter().find(|a| a.kind() == TierExceeded).unwrap();
    let upgraded = alerts.iter().find(|a| a.kind() == TierUpgraded).unwrap();
    assert_eq!(exceeded.upgrade_id, upgraded.upgrade_id, "the exceeded alert names the upgrade");
    assert_eq!(exceeded.new_tier, 7_000);
    assert_eq!(alerts[0].amount, Some(Money { amount_minor: 18_750, currency: "EUR".into() }));
}

contactier_runtime::backend_tests!(usage_upgrades_and_invoices_reach_notification_through_the_outbox,);
