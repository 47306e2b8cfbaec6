//! Alerts follow the account's usage state at every boundary, over every service on the manual
//! clock, one test per backend: a count that stays put alerts again at each period's processing
//! instant; a renewal to a lower tier alerts at its instant; an import climbing through several
//! tiers reaches each webhook as one digest while the feed keeps every alert.

use chrono::{DateTime, TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::notification::v1::{
    self as npb, AlertKind, notification_service_client::NotificationServiceClient,
};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use std::sync::{Arc, Mutex};

const ACCOUNT: &str = "acct-a";

/// 20 April 2026, 12:00 in New York.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

/// 00:00 in New York (EDT) on a day of 2026: an update date's processing instant.
fn midnight(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 4, 0, 0).unwrap()
}

fn date(month: i32, day: i32) -> Option<Date> {
    Some(Date { year: 2026, month, day })
}

async fn subscribe(s: &System, edition: Edition, tier: i64) {
    subscribe_for(s, edition, Term::Monthly, tier).await;
}

async fn subscribe_for(s: &System, edition: Edition, term: Term, tier: i64) {
    let mut req = subscription(edition, term, Date { year: 2026, month: 4, day: 15 });
    req.tier = tier;
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    billing.create_subscription(authed(req, &s.user_token(ACCOUNT, &["admin"]))).await.unwrap();
}

/// Threshold alerts, oldest first, as (kind, tier, count, period start, created at).
async fn thresholds(s: &System) -> Vec<(AlertKind, i64, i64, Option<Date>, i64)> {
    let mut all = s.alerts(ACCOUNT).await;
    all.reverse();
    all.into_iter()
        .filter(|a| {
            matches!(a.kind(), AlertKind::Threshold75 | AlertKind::Threshold90 | AlertKind::Threshold98)
        })
        .map(|a| (a.kind(), a.tier, a.marketing_count, a.period_start, a.created_at.unwrap().seconds))
        .collect()
}

async fn a_count_that_stays_put_alerts_at_each_period_start(backend: Backend) {
    let s = System::start(backend, start()).await;
    // An annual term: its update dates are the first of each month.
    subscribe_for(&s, Edition::Professional, Term::Annual, 0).await;
    s.sign_ups(ACCOUNT, 0, 1_500).await;
    s.advance_to(start() + chrono::Duration::seconds(1)).await;
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let admin = s.user_token(ACCOUNT, &["admin"]);
    let usage =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(
        usage.period_count, 1_500,
        "{backend:?}: the first period holds every sign-up, not the first batch"
    );
    // The clock set to each processing instant exactly: nothing else happens to wake anyone.
    for month in [5, 6] {
        s.advance_to(midnight(month, 1)).await;
    }
    let got = thresholds(&s).await;
    let want = vec![
        (AlertKind::Threshold75, 2_000, 1_500, date(4, 15), start().timestamp()),
        (AlertKind::Threshold75, 2_000, 1_500, date(5, 1), midnight(5, 1).timestamp()),
        (AlertKind::Threshold75, 2_000, 1_500, date(6, 1), midnight(6, 1).timestamp()),
    ];
    assert_eq!(got, want, "{backend:?}: one 75 % alert per period, at its processing instant");
    let first = s.alerts(ACCOUNT).await.into_iter().find(|a| a.kind() == AlertKind::Threshold75).unwrap();
    assert_eq!(first.used_basis_points, 7_500, "{backend:?}");
    assert!(first.state_version > 0, "{backend:?}");
}

async fn a_renewal_to_a_lower_tier_alerts_at_its_instant(backend: Backend) {
    let s = System::start(backend, start()).await;
    subscribe(&s, Edition::Starter, 2_000).await;
    s.sign_ups(ACCOUNT, 0, 800).await;
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let admin = s.user_token(ACCOUNT, &["admin"]);
    billing
        .request_renewal_tier(authed(bpb::RequestRenewalTierRequest { tier: 1_000 }, &admin))
        .await
        .unwrap();
    s.advance_to(start() + chrono::Duration::seconds(1)).await;
    assert!(thresholds(&s).await.is_empty(), "{backend:?}: 40 % of 2,000");
    s.advance_to(midnight(5, 15) + chrono::Duration::hours(1)).await;
    let usage =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.tier, usage.period_count), (1_000, 800), "{backend:?}");
    assert_eq!(
        thresholds(&s).await,
        [(AlertKind::Threshold75, 1_000, 800, date(5, 15), midnight(5, 15).timestamp())],
        "{backend:?}: 80 % of the new term's tier"
    );
    // The renewal invoice's line is a whole term at its tier.
    let list = bpb::ListInvoicesRequest { page_size: 10, page_token: String::new() };
    let invoices = billing.list_invoices(authed(list, &admin)).await.unwrap().into_inner().invoices;
    let line = &invoices.iter().find(|i| i.kind() == bpb::InvoiceKind::Renewal).unwrap().lines[0];
    assert_eq!(line.kind(), bpb::InvoiceLineKind::Term, "{backend:?}");
    assert_eq!(
        line.price_per_term.as_ref().map(|m| m.amount_minor),
        line.amount.as_ref().map(|m| m.amount_minor)
    );
    assert!(line.price_difference.is_none(), "{backend:?}: a term has no price difference");
    assert_eq!((line.from_tier, line.to_tier), (2_000, 1_000));
    // Usage history shows each day at the tier it was billed at, up to today.
    let req = bpb::GetUsageHistoryRequest { start_date: date(4, 20), end_date: date(5, 16) };
    let points = billing.get_usage_history(authed(req, &admin)).await.unwrap().into_inner().points;
    let tiers: Vec<(i32, i64)> = points.iter().map(|p| (p.date.unwrap().day, p.tier)).collect();
    let expected: Vec<(i32, i64)> =
        (20..=30).chain(1..=15).map(|d| (d, if d == 15 { 1_000 } else { 2_000 })).collect();
    assert_eq!(tiers, expected, "{backend:?}: 2,000 until the renewal on 15 May, 1,000 from it");
}

/// A webhook receiver on loopback that keeps the bodies it gets.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        kept.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *resp.status_mut() = http::StatusCode::NO_CONTENT;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (url, got)
}

async fn an_import_through_several_tiers_is_one_digest_per_recipient(backend: Backend) {
    let delivery = contactier_notification::DeliveryArgs {
        smtp_url: None,
        smtp_from: "Contactier <alerts@contactier.invalid>".into(),
        max_attempts: 3,
        backoff_ms: 100,
        webhook_timeout_ms: 2_000,
        webhook_allow_http: true,
        webhook_allow_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        digest_window_ms: 5_000,
        watch_streams_per_account: 50,
        watch_streams: 5_000,
    };
    let s = System::start_with(backend, start(), Some(delivery)).await;
    subscribe(&s, Edition::Starter, 0).await;
    let admin = s.user_token(ACCOUNT, &["admin"]);
    let mut notification = NotificationServiceClient::new(s.channel("notification"));
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let (url, got) = receiver().await;
        let req = npb::CreateRecipientRequest {
            target: Some(npb::create_recipient_request::Target::Webhook(npb::WebhookTarget {
                url,
                secret: String::new(),
            })),
        };
        notification.create_recipient(authed(req, &admin)).await.unwrap();
        receivers.push(got);
    }
    // 3,500 rows imported as marketing, a batch of 1,000 at a time: the count climbs through
    // 1,000, 2,000, 3,000 and 3,500, past three tiers.
    let mut csv = String::from("Email\n");
    for i in 0..3_500 {
        csv.push_str(&format!("row{i}@example.com\n"));
    }
    let header = cpb::ImportHeader {
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
        set_as_marketing: true,
        ..Default::default()
    };
    let parts = vec![
        cpb::ImportContactsRequest { part: Some(cpb::import_contacts_request::Part::Header(header)) },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Chunk(csv.into_bytes())),
        },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::End(cpb::ImportEnd::default())),
        },
    ];
    let mut contacts = ContactsServiceClient::new(s.channel("contacts"));
    let mut progress =
        contacts.import_contacts(authed(futures::stream::iter(parts), &admin)).await.unwrap().into_inner();
    while progress.message().await.unwrap().is_some() {}
    s.advance_to(start() + chrono::Duration::seconds(1)).await;
    assert!(receivers.iter().all(|r| r.lock().unwrap().is_empty()), "{backend:?}: held for the window");
    s.advance_to(start() + chrono::Duration::seconds(10)).await;

    let mut feed = s.alerts(ACCOUNT).await;
    feed.reverse();
    let kinds: Vec<AlertKind> = feed.iter().map(contactier_proto::notification::v1::Alert::kind).collect();
    assert!(kinds.iter().filter(|k| **k == AlertKind::TierExceeded).count() >= 3, "{backend:?}: {kinds:?}");
    assert!(kinds.iter().filter(|k| **k == AlertKind::TierUpgraded).count() >= 3, "{backend:?}: {kinds:?}");
    let ids: Vec<&str> = feed.iter().map(|a| a.id.as_str()).collect();
    for got in &receivers {
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "{backend:?}: one delivery per recipient");
        assert_eq!(got[0]["type"], "alerts");
        let sent: Vec<&str> =
            got[0]["data"]["alerts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(sent, ids, "{backend:?}: every alert of the feed, in order");
    }
    let req =
        npb::ListDeliveriesRequest { alert_id: String::new(), page_size: 50, page_token: String::new() };
    let deliveries = notification.list_deliveries(authed(req, &admin)).await.unwrap().into_inner().deliveries;
    assert_eq!(deliveries.len(), 2, "{backend:?}");
    assert!(deliveries.iter().all(|d| d.alert_ids.len() == ids.len()), "{backend:?}");
}

/// A batch of deletions moves the count once: billing and notification never see a count from
/// the middle of it.
async fn a_batch_delete_moves_the_count_once(backend: Backend) {
    let s = System::start(backend, start()).await;
    subscribe(&s, Edition::Starter, 0).await;
    s.sign_ups(ACCOUNT, 0, 900).await;
    s.advance_to(start() + chrono::Duration::seconds(1)).await;
    let admin = s.user_token(ACCOUNT, &["admin"]);
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let before =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(before.marketing_count, 900, "{backend:?}");
    let mut contacts = ContactsServiceClient::new(s.channel("contacts"));
    let search = cpb::SearchContactsRequest { page_size: 1_000, ..Default::default() };
    let ids: Vec<String> = contacts
        .search_contacts(authed(search, &admin))
        .await
        .unwrap()
        .into_inner()
        .contacts
        .into_iter()
        .map(|c| c.id)
        .collect();
    let req = cpb::BatchDeleteContactsRequest { ids: ids[..600].to_vec() };
    contacts.batch_delete_contacts(authed(req, &admin)).await.unwrap();
    s.advance_to(start() + chrono::Duration::seconds(2)).await;
    let after =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(after.marketing_count, 300, "{backend:?}");
    assert_eq!(after.count_version, before.count_version + 1, "{backend:?}: one count for the whole batch");
}

/// A status change for more contacts than one part holds (10,000) moves the count once: billing
/// and notification never see the count after its first part.
async fn a_bulk_status_change_moves_the_count_once(backend: Backend) {
    let s = System::start(backend, start()).await;
    subscribe(&s, Edition::Starter, 0).await;
    let admin = s.user_token(ACCOUNT, &["admin"]);
    let mut csv = String::from("Email\n");
    for i in 0..12_000 {
        csv.push_str(&format!("row{i}@example.com\n"));
    }
    let header = cpb::ImportHeader {
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
        set_as_marketing: false,
        ..Default::default()
    };
    let parts = vec![
        cpb::ImportContactsRequest { part: Some(cpb::import_contacts_request::Part::Header(header)) },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Chunk(csv.into_bytes())),
        },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::End(cpb::ImportEnd::default())),
        },
    ];
    let mut contacts = ContactsServiceClient::new(s.channel("contacts"));
    let mut progress =
        contacts.import_contacts(authed(futures::stream::iter(parts), &admin)).await.unwrap().into_inner();
    while progress.message().await.unwrap().is_some() {}
    s.advance_to(start() + chrono::Duration::seconds(1)).await;
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let before =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(before.marketing_count, 0, "{backend:?}");

    let everyone = cpb::ContactFilter {
        groups: vec![cpb::FilterGroup {
            filters: vec![cpb::Filter {
                property: "email".into(),
                operator: cpb::FilterOperator::Contains as i32,
                value: "@example.com".into(),
                values: vec![],
                high_value: String::new(),
            }],
        }],
    };
    let req = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::Filter(everyone)),
        status: MarketingStatus::Marketing as i32,
        source: Some(Source { r#type: SourceType::User as i32, id: String::new() }),
    };
    let mut status = MarketingStatusServiceClient::new(s.channel("marketing-status"));
    let r = status.set_marketing_status(authed(req, &admin)).await.unwrap().into_inner();
    assert_eq!(r.changed, 12_000, "{backend:?}");
    s.advance_to(start() + chrono::Duration::seconds(10)).await;
    let after =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &admin)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(after.marketing_count, 12_000, "{backend:?}");
    assert!(after.count_version > before.count_version, "{backend:?}");
    let counts: Vec<i64> = s.alerts(ACCOUNT).await.iter().map(|a| a.marketing_count).collect();
    assert!(!counts.is_empty(), "{backend:?}: the new count alerts");
    assert!(counts.iter().all(|c| *c == 12_000), "{backend:?}: alerts only of the final count: {counts:?}");
}

contactier_runtime::backend_tests!(
    a_bulk_status_change_moves_the_count_once,
    a_batch_delete_moves_the_count_once,
    a_count_that_stays_put_alerts_at_each_period_start,
    a_renewal_to_a_lower_tier_alerts_at_its_instant,
    an_import_through_several_tiers_is_one_digest_per_recipient,
);
