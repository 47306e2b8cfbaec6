//! The billing service over real gRPC, on SQLite and PostgreSQL: subscriptions, automatic
//! upgrades, the next-day prorated invoice, usage and the calendar.

mod common;

use chrono::{Datelike, TimeZone, Utc};
use common::*;
use contactier_proto::billing::v1::{
    self as pb, billing_internal_service_client::BillingInternalServiceClient,
};
use contactier_runtime::db::{Backend, Db};
use contactier_runtime::testing::authed;
use std::time::Duration;
use tonic::Code;

async fn subscriptions_are_checked_and_know_their_calendar(backend: Backend) {
    let b = start(backend).await;
    let bad = [
        (pb::CreateSubscriptionRequest { edition: 0, ..professional_monthly() }, "edition"),
        (pb::CreateSubscriptionRequest { term: 0, ..professional_monthly() }, "term"),
        (
            pb::CreateSubscriptionRequest { start_date: date(2026, 2, 30), ..professional_monthly() },
            "start_date",
        ),
        (pb::CreateSubscriptionRequest { currency: "GBP".into(), ..professional_monthly() }, "currency"),
        (pb::CreateSubscriptionRequest { currency: "eur".into(), ..professional_monthly() }, "currency"),
        (pb::CreateSubscriptionRequest { subsidiary: "MARS".into(), ..professional_monthly() }, "subsidiary"),
        (pb::CreateSubscriptionRequest { tier: 3_000, ..professional_monthly() }, "tier"),
    ];
    for (req, field) in bad {
        let err = b.subscribe(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {field}");
        assert!(err.message().starts_with(field), "{backend:?}: {}", err.message());
    }
    let reader = b.token(ACCOUNT, &["read", "write"]);
    let err = b.api().create_subscription(authed(professional_monthly(), &reader)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let missing = b.api().get_subscription(authed(pb::GetSubscriptionRequest {}, &reader)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{backend:?}: nothing was created by the refused calls");

    let s = b.subscribe(professional_monthly()).await.unwrap();
    assert_eq!((s.tier, s.price_per_term.clone()), (2_000, eur(80_000)));
    assert_eq!((s.current_term_start, s.current_term_end), (date(2026, 4, 15), date(2026, 5, 15)));
    assert_eq!(b.subscribe(professional_monthly()).await.unwrap_err().code(), Code::AlreadyExists);

    let cal = b
        .api()
        .get_calendar(authed(pb::GetCalendarRequest { count: 3 }, &reader))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let dates: Vec<_> = cal.iter().map(|e| e.date).collect();
    assert_eq!(dates, [date(2026, 5, 15), date(2026, 6, 15), date(2026, 7, 15)]);
    assert!(cal.iter().all(|e| e.renewal), "monthly update dates are the renewals");
    // 00:00 in New York (EDT) on 15 May.
    assert_eq!(
        cal[0].processing_at.unwrap().seconds,
        Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap().timestamp()
    );

    let other = b.token("acct-b", &["read"]);
    let err = b.api().get_subscription(authed(pb::GetSubscriptionRequest {}, &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}: another account sees nothing");
    let err = b.api().get_usage(authed(pb::GetUsageRequest {}, &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}: no usage without a subscription");
}

async fn exceeding_the_tier_upgrades_at_once_and_is_invoiced_the_next_day(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    let read = b.token(ACCOUNT, &["read"]);
    let before = b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner();
    let before = before.usage.unwrap();
    assert_eq!(
        (before.marketing_count, before.total_contacts, before.count_version, before.period_count),
        (0, 0, 0, 0),
        "{backend:?}: no count yet reads as nothing"
    );

    b.count("c1", 1, 1_500, 300).await.unwrap();
    let usage =
        b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.marketing_count, usage.tier, usage.used_basis_points), (1_500, 2_000, 7_500));
    assert_eq!((usage.total_contacts, usage.next_update_date), (1_800, date(2026, 5, 15)));

    // What 600 more would cost: 2,100 needs the 7,000 tier; 25 of the term's 30 days remain.
    let preview = b
        .api()
        .preview_upgrade(authed(pb::PreviewUpgradeRequest { additional_contacts: 600 }, &read))
        .await
        .unwrap()
        .into_inner();
    assert!(preview.upgrade_needed);
    assert_eq!((preview.new_tier, preview.effective_date), (7_000, date(2026, 4, 20)));
    let line = preview.line.unwrap();
    assert_eq!((line.remaining_days, line.term_days), (25, 30));
    assert_eq!((line.price_difference.clone(), line.amount.clone()), (eur(22_500), eur(18_750)));
    assert_eq!(
        preview.invoice_at.unwrap().seconds,
        Utc.with_ymd_and_hms(2026, 4, 21, 4, 0, 0).unwrap().timestamp()
    );

    b.count("c2", 2, 2_100, 300).await.unwrap();
    assert_eq!(b.subscription().await.tier, 7_000, "{backend:?}: upgraded the moment the count exceeded");
    // A stale count and a replay change nothing.
    assert_eq!(b.count("c0", 1, 40_000, 0).await.unwrap(), ["c0"]);
    assert_eq!(b.count("c2", 2, 2_100, 300).await.unwrap(), ["c2"]);
    assert_eq!(b.subscription().await.tier, 7_000, "{backend:?}");
    let ups = b.upgrades().await;
    assert_eq!(ups.len(), 1, "{backend:?}");
    assert_eq!((ups[0].from_tier, ups[0].to_tier, ups[0].marketing_count), (2_000, 7_000, 2_100));

    // Not before the processing time of the next day...
    b.advance_to(Utc.with_ymd_and_hms(2026, 4, 21, 3, 59, 59).unwrap()).await;
    assert!(b.invoices().await.is_empty(), "{backend:?}");
    // ... then exactly the previewed figures.
    b.advance_to(Utc.with_ymd_and_hms(2026, 4, 21, 4, 0, 0).unwrap()).await;
    let invoices = b.invoices().await;
    assert_eq!(invoices.len(), 1, "{backend:?}");
    assert_eq!((invoices[0].number, invoices[0].total.clone()), (1, eur(18_750)));
    let l = &invoices[0].lines[0];
    assert_eq!(
        (l.from_tier, l.to_tier, l.remaining_days, l.term_days, l.marketing_count),
        (2_000, 7_000, 25, 30, 2_100)
    );
    assert_eq!(l.amount, line.amount);

    // Two upgrades on 25 April make one invoice, from the first tier to the last:
    // 7,000 -> 17,000 is 45,000 a term; 20 of 30 days remain.
    b.advance_to(Utc.with_ymd_and_hms(2026, 4, 25, 15, 0, 0).unwrap()).await;
    b.count("c3", 3, 7_100, 0).await.unwrap();
    b.count("c4", 4, 12_100, 0).await.unwrap();
    assert_eq!(b.subscription().await.tier, 17_000);
    b.advance_to(Utc.with_ymd_and_hms(2026, 4, 27, 0, 0, 0).unwrap()).await;
    let invoices = b.invoices().await;
    assert_eq!(invoices.len(), 2, "{backend:?}");
    assert_eq!(
        (invoices[0].number, invoices[0].total.clone()),
        (2, eur(30_000)),
        "{backend:?}: newest first"
    );
    assert_eq!(invoices[0].lines.len(), 1);
    assert_eq!((invoices[0].lines[0].from_tier, invoices[0].lines[0].to_tier), (7_000, 17_000));

    // The count falls: no downgrade before renewal. Advancing again issues nothing twice.
    b.count("c5", 5, 100, 0).await.unwrap();
    b.advance_to(Utc.with_ymd_and_hms(2026, 4, 29, 0, 0, 0).unwrap()).await;
    assert_eq!(b.subscription().await.tier, 17_000);
    assert_eq!(b.invoices().await.len(), 2, "{backend:?}: issued exactly once");
    let got = b
        .api()
        .get_invoice(authed(pb::GetInvoiceRequest { id: invoices[1].id.clone() }, &read))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(got, invoices[1]);
    let other = b.token("acct-b", &["read"]);
    let err = b
        .api()
        .get_invoice(authed(pb::GetInvoiceRequest { id: invoices[1].id.clone() }, &other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let history = b
        .api()
        .get_usage_history(authed(
            pb::GetUsageHistoryRequest { start_date: date(2026, 4, 1), end_date: date(2026, 4, 30) },
            &read,
        ))
        .await
        .unwrap()
        .into_inner()
        .points;
    let days: Vec<_> =
        history.iter().map(|p| (p.date, p.max_marketing_count, p.marketing_count, p.tier)).collect();
    // One point per day from the subscription's start (15 April) up to today (days still to
    // come have no usage): quiet days repeat the day before; before any usage, none at the
    // first tier.
    let today = b.platform.clock.now().with_timezone(&chrono_tz::America::New_York).date_naive();
    assert_eq!((today.month(), today.day()), (4, 28), "{backend:?}");
    let want: Vec<_> = (15..=today.day() as i32)
        .map(|d| {
            let (max, last, tier) = match d {
                ..=19 => (0, 0, 2_000),
                20..=24 => (2_100, 2_100, 7_000),
                25 => (12_100, 12_100, 17_000),
                26 => (100, 100, 17_000),
                _ => (100, 100, 17_000),
            };
            (date(2026, 4, d), max, last, tier)
        })
        .collect();
    assert_eq!(days, want, "{backend:?}");
    // A range far into the future ends today too.
    let ahead = pb::GetUsageHistoryRequest { start_date: date(2026, 4, 1), end_date: date(2030, 1, 1) };
    let points = b.api().get_usage_history(authed(ahead, &read)).await.unwrap().into_inner().points;
    let last = points.last().and_then(|p| p.date).unwrap();
    assert_eq!(
        (last.year, last.month as u32, last.day as u32),
        (2026, today.month(), today.day()),
        "{backend:?}"
    );
}

#[tokio::test]
async fn a_replica_serves_the_usage_another_replica_changed() {
    let b = start(Backend::Postgres).await;
    b.subscribe(professional_monthly()).await.unwrap();
    // This replica may keep usage for an hour: only the other's change notification can make
    // it read the new count.
    let other = pb::billing_service_client::BillingServiceClient::new(
        b.another_replica_caching(Duration::from_secs(3_600)).await,
    );
    let read = b.token(ACCOUNT, &["read"]);
    let count = |mut api: pb::billing_service_client::BillingServiceClient<_>| {
        let read = read.clone();
        async move {
            let r = api.get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner();
            r.usage.unwrap().marketing_count
        }
    };
    assert_eq!(count(other.clone()).await, 0);
    assert_eq!(count(other.clone()).await, 0, "kept");

    b.count("c1", 1, 1_500, 300).await.unwrap();
    assert_eq!(count(b.api()).await, 1_500, "the writing replica reads its own write");
    let asked = std::time::Instant::now();
    while count(other.clone()).await != 1_500 {
        assert!(asked.elapsed() < Duration::from_secs(10), "the other replica kept the old usage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn renewal_tier_requests_and_bad_counts_are_checked(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(pb::CreateSubscriptionRequest { tier: 12_000, ..professional_monthly() }).await.unwrap();
    let admin = b.token(ACCOUNT, &["admin"]);
    for (tier, why) in [(13_000, "not a professional tier"), (17_000, "only a lower tier")] {
        let err = b
            .api()
            .request_renewal_tier(authed(pb::RequestRenewalTierRequest { tier }, &admin))
            .await
            .unwrap_err();
        assert!(err.message().contains(why), "{backend:?}: {}", err.message());
    }
    let s = b
        .api()
        .request_renewal_tier(authed(pb::RequestRenewalTierRequest { tier: 2_000 }, &admin))
        .await
        .unwrap();
    assert_eq!(s.into_inner().subscription.unwrap().renewal_tier, 2_000);
    assert_eq!(b.subscription().await.tier, 12_000, "the tier itself waits for renewal");
    let s = b.api().cancel_renewal_tier(authed(pb::CancelRenewalTierRequest {}, &admin)).await.unwrap();
    assert_eq!(s.into_inner().subscription.unwrap().renewal_tier, 0);

    assert_eq!(b.count("bad", 0, 10, 0).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(b.count("bad", 1, -1, 0).await.unwrap_err().code(), Code::InvalidArgument);
    let mut client = BillingInternalServiceClient::new(b.channel.clone());
    let req = pb::ApplyCountEventsRequest { events: vec![] };
    assert_eq!(
        client.apply_count_events(authed(req, &admin)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

async fn accounts_without_marketing_contacts_are_billed_for_every_contact(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(pb::CreateSubscriptionRequest {
        marketing_contacts_enabled: false,
        ..professional_monthly()
    })
    .await
    .unwrap();
    b.count_with("c1", 1, 1_000, 1_500, false).await.unwrap();
    assert_eq!(b.subscription().await.tier, 7_000, "{backend:?}: 2,500 contacts billed");
    // Enabled in marketing-status: from then on only marketing contacts are billed.
    b.count_with("c2", 2, 1_000, 1_500, true).await.unwrap();
    assert!(b.subscription().await.marketing_contacts_enabled, "{backend:?}");
    let read = b.token(ACCOUNT, &["read"]);
    let usage = b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner();
    assert_eq!(usage.usage.unwrap().marketing_count, 1_000, "{backend:?}");
}

/// Upgrades of one instant page by one without a gap, and the last page has no token; a token
/// of another list is refused.
async fn upgrades_and_invoices_page_without_a_gap(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    let read = b.token(ACCOUNT, &["read"]);
    // Three upgrades at the same instant: 2,000 -> 7,000 -> 12,000 -> 17,000.
    for (i, count) in [(1, 2_100), (2, 7_100), (3, 12_100)] {
        b.count(&format!("c{i}"), i, count, 0).await.unwrap();
    }
    let api = b.api();
    let page = |token: String, size: i32| {
        let req = pb::ListUpgradesRequest { page_size: size, page_token: token };
        let mut api = api.clone();
        let read = read.clone();
        async move { api.list_upgrades(authed(req, &read)).await }
    };
    let all = page(String::new(), 3).await.unwrap().into_inner();
    assert_eq!(all.upgrades.len(), 3, "{backend:?}");
    assert_eq!(all.next_page_token, "", "{backend:?}: a full last page has no next token");
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let p = page(token, 1).await.unwrap().into_inner();
        seen.extend(p.upgrades.iter().map(|u| u.to_tier));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    let mut want: Vec<i64> = all.upgrades.iter().map(|u| u.to_tier).collect();
    assert_eq!(seen, want, "{backend:?}");
    want.sort();
    assert_eq!(want, [7_000, 12_000, 17_000], "{backend:?}");
    let first = page(String::new(), 1).await.unwrap().into_inner().next_page_token;
    let req = pb::ListInvoicesRequest { page_size: 1, page_token: first };
    let err = b.api().list_invoices(authed(req, &read)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{backend:?}");
    assert!(err.message().starts_with("page_token"), "{backend:?}: {}", err.message());
}

async fn the_price_book_and_subsidiaries_page_in_their_own_order(backend: Backend) {
    let b = start(backend).await;
    let reader = b.token(ACCOUNT, &["read"]);
    let whole = b.api().list_price_book(authed(pb::ListPriceBookRequest::default(), &reader)).await.unwrap();
    let whole: Vec<i32> = whole.into_inner().editions.iter().map(|e| e.edition).collect();
    assert!(whole.len() >= 2, "{backend:?}: {whole:?}");
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListPriceBookRequest { page_size: 1, page_token };
        let page = b.api().list_price_book(authed(req, &reader)).await.unwrap().into_inner();
        assert_eq!(page.editions.len(), 1, "{backend:?}");
        paged.extend(page.editions.iter().map(|e| e.edition));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, whole, "{backend:?}: one edition a page, in the book's order");

    let subs = |page_size, page_token| pb::ListSubsidiariesRequest { page_size, page_token };
    let all = b.api().list_subsidiaries(authed(subs(0, String::new()), &reader)).await.unwrap().into_inner();
    assert!(all.next_page_token.is_empty(), "{backend:?}: every subsidiary fits the default page");
    let first =
        b.api().list_subsidiaries(authed(subs(1, String::new()), &reader)).await.unwrap().into_inner();
    assert_eq!(first.subsidiaries, all.subsidiaries[..1], "{backend:?}");
    assert_eq!(first.next_page_token.is_empty(), all.subsidiaries.len() == 1, "{backend:?}");
    let err = b.api().list_subsidiaries(authed(subs(-1, String::new()), &reader)).await.unwrap_err();
    assert_eq!((err.code(), err.message().starts_with("page_size")), (Code::InvalidArgument, true));
    // A price-book token is not a subsidiaries token.
    let book = pb::ListPriceBookRequest { page_size: 1, page_token: String::new() };
    let t = b.api().list_price_book(authed(book, &reader)).await.unwrap().into_inner().next_page_token;
    let err = b.api().list_subsidiaries(authed(subs(1, t), &reader)).await.unwrap_err();
    assert_eq!((err.code(), err.message().starts_with("page_token")), (Code::InvalidArgument, true));
}

async fn many_accounts_upgraded_on_one_day_are_each_invoiced_once_by_several_replicas(backend: Backend) {
    let b = start(backend).await;
    for _ in 0..2 {
        b.another_replica().await;
    }
    let service = b.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
    let internal = BillingInternalServiceClient::new(b.channel.clone());
    let count = |event_id: &str, account: &str, version: i64, marketing: i64| {
        let ev = count_changed(event_id, account, version, marketing);
        let req = authed(pb::ApplyCountEventsRequest { events: vec![ev] }, &service);
        let mut internal = internal.clone();
        async move { internal.apply_count_events(req).await.unwrap() }
    };
    // More accounts than one transaction issues, some past two tiers in two steps.
    let accounts: Vec<String> = (0..40).map(|i| format!("acct-{i:02}")).collect();
    for (i, account) in accounts.iter().enumerate() {
        let admin = b.token(account, &["admin"]);
        b.api().create_subscription(authed(professional_monthly(), &admin)).await.unwrap();
        let steps: &[i64] = if i % 3 == 0 { &[2_100, 7_500] } else { &[2_100] };
        for (v, marketing) in steps.iter().enumerate() {
            count(&format!("{account}-{v}"), account, v as i64 + 1, *marketing).await;
        }
    }
    b.advance_to(chrono::Utc.with_ymd_and_hms(2026, 4, 21, 5, 0, 0).unwrap()).await;
    for (i, account) in accounts.iter().enumerate() {
        let req = pb::ListInvoicesRequest { page_size: 10, page_token: String::new() };
        let read = b.token(account, &["read"]);
        let invoices = b.api().list_invoices(authed(req, &read)).await.unwrap().into_inner().invoices;
        let got: Vec<_> = invoices.iter().map(|inv| (inv.number, inv.kind)).collect();
        assert_eq!(got, [(1, pb::InvoiceKind::Upgrade as i32)], "{backend:?}: {account}");
        let line = &invoices[0].lines[0];
        let to = if i % 3 == 0 { 12_000 } else { 7_000 };
        assert_eq!(
            (line.from_tier, line.to_tier),
            (2_000, to),
            "{backend:?}: {account}: one line for the day"
        );
    }

    // Every upgrade names its invoice; a later day's upgrade of some accounts is the next
    // number, and the first day is not invoiced again.
    for account in &accounts {
        let req = pb::ListUpgradesRequest { page_size: 10, page_token: String::new() };
        let read = b.token(account, &["read"]);
        let ups = b.api().list_upgrades(authed(req, &read)).await.unwrap().into_inner().upgrades;
        assert!(ups.iter().all(|u| !u.invoice_id.is_empty()), "{backend:?}: {account}: {ups:?}");
    }
    for account in accounts.iter().step_by(4) {
        count(&format!("{account}-later"), account, 10, 12_500).await;
    }
    b.advance_to(chrono::Utc.with_ymd_and_hms(2026, 4, 22, 5, 0, 0).unwrap()).await;
    for (i, account) in accounts.iter().enumerate() {
        let req = pb::ListInvoicesRequest { page_size: 10, page_token: String::new() };
        let read = b.token(account, &["read"]);
        let invoices = b.api().list_invoices(authed(req, &read)).await.unwrap().into_inner().invoices;
        let numbers: Vec<i64> = invoices.iter().map(|inv| inv.number).collect();
        let want: &[i64] = if i % 4 == 0 { &[2, 1] } else { &[1] };
        assert_eq!(numbers, want, "{backend:?}: {account}");
    }
}

/// A call carrying many counts of one account (its backlog, released at once) applies each as
/// its own step, in order: every tier crossed is an upgrade; a count named twice or older than
/// the one held changes nothing; another account's counts in the same call go on their own.
async fn counts_of_one_account_in_one_call_are_each_a_step(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    let token = b.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
    let ev = count_changed;
    let events = vec![
        ev("c1", ACCOUNT, 1, 1_500),
        ev("b1", "acct-b", 1, 10),
        ev("c2", ACCOUNT, 2, 2_100),
        ev("c2", ACCOUNT, 2, 2_100),
        ev("c3", ACCOUNT, 3, 7_500),
        ev("c0", ACCOUNT, 1, 40_000),
        ev("b2", "acct-b", 2, 20),
    ];
    let mut client = BillingInternalServiceClient::new(b.channel.clone());
    let acked = client
        .apply_count_events(authed(pb::ApplyCountEventsRequest { events }, &token))
        .await
        .unwrap()
        .into_inner()
        .acknowledged_event_ids;
    let mut acked_sorted = acked.clone();
    acked_sorted.sort();
    acked_sorted.dedup();
    assert_eq!(acked_sorted, ["b1", "b2", "c0", "c1", "c2", "c3"], "{backend:?}: {acked:?}");
    let read = b.token(ACCOUNT, &["read"]);
    let ups = b.upgrades().await;
    let mut steps: Vec<(i64, i64, i64)> =
        ups.iter().map(|u| (u.from_tier, u.to_tier, u.marketing_count)).collect();
    steps.sort();
    assert_eq!(steps.len(), 2, "{backend:?}: a tier crossed at each of two steps: {steps:?}");
    assert_eq!((steps[0].0, steps[0].1, steps[0].2), (2_000, 7_000, 2_100), "{backend:?}: {steps:?}");
    assert_eq!((steps[1].0, steps[1].2), (7_000, 7_500), "{backend:?}: {steps:?}");
    let usage =
        b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(
        (usage.marketing_count, usage.count_version),
        (7_500, 3),
        "{backend:?}: the stale count kept out"
    );
}

/// A call of several accounts' counts where one account's fail applies the others and names
/// that account's first event, with why. The call failed whole, and marketing-status sent every
/// other account's counts again (in halves, or one call each), each failing account once a retry.
async fn a_failing_accounts_counts_are_named_and_the_others_applied(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    let token = b.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
    let ev = count_changed;
    let call = || {
        vec![
            ev("a1", ACCOUNT, 1, 1_500),
            ev("b1", "acct-b", 1, 10),
            ev("c1", "acct-c", 1, 30),
            ev("b2", "acct-b", 2, 20),
            ev("a2", ACCOUNT, 2, 2_100),
        ]
    };
    contactier_runtime::testing::poison(b.db(), "inbox", "NEW.account_id = 'acct-b'", "ABORT").await;
    let client = BillingInternalServiceClient::new(b.channel.clone());
    let send = || {
        let (mut c, token) = (client.clone(), token.clone());
        let req = pb::ApplyCountEventsRequest { events: call() };
        async move { c.apply_count_events(authed(req, &token)).await.map(tonic::Response::into_inner) }
    };
    let answer = send().await.unwrap_or_else(|e| panic!("{backend:?}: the call failed whole: {e:?}"));
    let mut acked = answer.acknowledged_event_ids.clone();
    acked.sort();
    assert_eq!(acked, ["a1", "a2", "c1"], "{backend:?}");
    let refused: Vec<(&str, i32)> = answer
        .refused
        .iter()
        .map(|r| (r.event_id.as_str(), r.status.as_ref().map_or(0, |s| s.code)))
        .collect();
    assert_eq!(refused, [("b1", Code::Internal as i32)], "{backend:?}: b's first, with why");
    let read = b.token(ACCOUNT, &["read"]);
    let usage = || {
        let (mut api, read) = (b.api(), read.clone());
        async move {
            let u = api.get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner();
            let u = u.usage.unwrap();
            (u.marketing_count, u.count_version, u.tier)
        }
    };
    assert_eq!(usage().await, (2_100, 2, 7_000), "{backend:?}: the account's counts applied, upgraded");
    assert_eq!(b.upgrades().await.len(), 1, "{backend:?}");

    // A call of the failing account alone fails whole, with its status.
    let mut c = client.clone();
    let alone = pb::ApplyCountEventsRequest { events: vec![ev("b1", "acct-b", 1, 10)] };
    let e = c.apply_count_events(authed(alone, &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{backend:?}: {e:?}");

    // Mended, the same call again: b's applied, the others' taken as seen.
    contactier_runtime::testing::cure(b.db(), "inbox").await;
    let answer = send().await.unwrap();
    assert_eq!(answer.acknowledged_event_ids.len(), 5, "{backend:?}");
    assert!(answer.refused.is_empty(), "{backend:?}");
    assert_eq!(usage().await, (2_100, 2, 7_000), "{backend:?}: the account's counts once");
    assert_eq!(b.upgrades().await.len(), 1, "{backend:?}: upgraded once");
}

/// An account whose counts row another session holds (a stuck transaction, a long manual fix)
/// is named in time, held up, and the call's other accounts are applied. The call waited for
/// the lock: every account's counts held to marketing-status's deadline, sent again, each try
/// holding another pooled connection until the pool ran dry and billing stopped serving
/// (PostgreSQL: SQLite's one writer has no row locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_counts_another_session_holds_is_named_in_time() {
    let b = start(Backend::Postgres).await;
    let (mut client, token, holder) = counts_held(&b).await;

    let events = vec![count_changed("a2", ACCOUNT, 2, 1_600), count_changed("b1", "acct-b", 1, 10)];
    let mut call = authed(pb::ApplyCountEventsRequest { events }, &token);
    call.set_timeout(Duration::from_secs(20));
    let answer = client.apply_count_events(call).await.expect("answered while the row is held").into_inner();
    assert_eq!(answer.acknowledged_event_ids, ["b1"]);
    let refused: Vec<_> =
        answer.refused.iter().map(|r| (r.event_id.as_str(), r.status.clone().unwrap())).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].0, refused[0].1.code), ("a2", Code::Aborted as i32), "{refused:?}");
    assert!(refused[0].1.message.contains("held up"), "{refused:?}");

    released_counts_go_in_once(&b, &mut client, &token, holder).await;
}

/// Marketing-status retries a held account's counts alone, one call after another with every
/// other account's: once billing has found the account held up, its retries give the lock up at
/// once rather than each wait the full quarter second (twenty accounts held kept every other
/// account's counts about 30 s late for the first 40 s). Let go, the counts go in once
/// (PostgreSQL: SQLite's one writer has no row locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_accounts_retries_give_up_its_lock_at_once() {
    use contactier_runtime::db::BOUNDED_LOCK_WAIT;
    let b = start(Backend::Postgres).await;
    let (mut client, token, holder) = counts_held(&b).await;

    let retry = || pb::ApplyCountEventsRequest { events: vec![count_changed("a2", ACCOUNT, 2, 1_600)] };
    let mut tries = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let e = client.apply_count_events(authed(retry(), &token)).await.expect_err("held");
        tries.push(started.elapsed());
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        assert!(e.message().contains("held up"), "{e:?}");
    }
    assert!(tries[0] >= BOUNDED_LOCK_WAIT, "the first waited for the lock: {tries:?}");
    let quickest = tries[1..].iter().min().unwrap();
    assert!(*quickest < BOUNDED_LOCK_WAIT, "the retries gave it up at once: {tries:?}");

    released_counts_go_in_once(&b, &mut client, &token, holder).await;
}

/// A call of many accounts held at once (one session holding hundreds, seen from outside: calls
/// of 11-12 s, 250 ms an account met held for the first time, every other account's counts
/// behind them): once one of the call's accounts is found held, the others' locks are given up
/// at once, and the healthy account in the call is applied (PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_meeting_several_held_accounts_waits_for_the_first_only() {
    use contactier_runtime::db::BOUNDED_LOCK_WAIT;
    let b = start(Backend::Postgres).await;
    let held = ["acct-h1", "acct-h2", "acct-h3", "acct-h4"];
    let token = b.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
    let mut client = BillingInternalServiceClient::new(b.channel.clone());
    for account in held {
        let admin = b.token(account, &["admin"]);
        b.api().create_subscription(authed(professional_monthly(), &admin)).await.unwrap();
        let first = pb::ApplyCountEventsRequest {
            events: vec![count_changed(&format!("{account}-1"), account, 1, 10)],
        };
        client.apply_count_events(authed(first, &token)).await.unwrap();
    }
    let Db::Postgres(pool) = b.db() else { unreachable!() };
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM account_counts WHERE account_id = ANY($1) FOR UPDATE")
        .bind(held.to_vec())
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut events: Vec<_> = held.iter().map(|a| count_changed(&format!("{a}-2"), a, 2, 20)).collect();
    events.push(count_changed("b1", "acct-b", 1, 10));
    let started = std::time::Instant::now();
    let answer =
        client.apply_count_events(authed(pb::ApplyCountEventsRequest { events }, &token)).await.unwrap();
    let took = started.elapsed();
    let answer = answer.into_inner();
    assert_eq!(answer.acknowledged_event_ids, ["b1"]);
    assert_eq!(answer.refused.len(), held.len(), "{:?}", answer.refused);
    // Each waiting its quarter second would take four; the first's alone, one.
    assert!(
        took < 2 * BOUNDED_LOCK_WAIT,
        "the call's held accounts after the first gave up at once: {took:?}"
    );

    // A call of held accounts only is answered for each, not failed whole: a call failed whole
    // its sender sent again in halves down to each account (47 events, 92 calls, seen from outside).
    let only = held.iter().map(|a| count_changed(&format!("{a}-2"), a, 2, 20)).collect();
    let answer = client
        .apply_count_events(authed(pb::ApplyCountEventsRequest { events: only }, &token))
        .await
        .expect("answered for each account")
        .into_inner();
    assert!(answer.acknowledged_event_ids.is_empty());
    let refused: Vec<_> = answer.refused.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(refused, ["acct-h1-2", "acct-h2-2", "acct-h3-2", "acct-h4-2"]);
    holder.rollback().await.unwrap();
}

/// Billing on PostgreSQL with `ACCOUNT`'s first count applied and its counts row then held by
/// another session: marketing-status's client and token, and the holding transaction.
async fn counts_held(
    b: &Billing,
) -> (
    BillingInternalServiceClient<tonic::transport::Channel>,
    String,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    b.subscribe(professional_monthly()).await.unwrap();
    let token = b.platform.authenticator.service_token("marketing-status", chrono::Duration::hours(1));
    let mut client = BillingInternalServiceClient::new(b.channel.clone());
    let first = pb::ApplyCountEventsRequest { events: vec![count_changed("a1", ACCOUNT, 1, 1_500)] };
    client.apply_count_events(authed(first, &token)).await.unwrap();
    let Db::Postgres(pool) = b.db() else { unreachable!() };
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM account_counts WHERE account_id = $1 FOR UPDATE")
        .bind(ACCOUNT)
        .execute(&mut *holder)
        .await
        .unwrap();
    (client, token, holder)
}

/// Let go (see [`counts_held`]), `ACCOUNT`'s second count, refused while held, goes in once.
async fn released_counts_go_in_once(
    b: &Billing,
    client: &mut BillingInternalServiceClient<tonic::transport::Channel>,
    token: &str,
    holder: sqlx::Transaction<'static, sqlx::Postgres>,
) {
    holder.rollback().await.unwrap();
    let again = pb::ApplyCountEventsRequest { events: vec![count_changed("a2", ACCOUNT, 2, 1_600)] };
    let answer = client.apply_count_events(authed(again, token)).await.unwrap().into_inner();
    assert_eq!(answer.acknowledged_event_ids, ["a2"]);
    let read = b.token(ACCOUNT, &["read"]);
    let usage =
        b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.marketing_count, usage.count_version), (1_600, 2));
}

contactier_runtime::backend_tests!(
    a_failing_accounts_counts_are_named_and_the_others_applied,
    counts_of_one_account_in_one_call_are_each_a_step,
    many_accounts_upgraded_on_one_day_are_each_invoiced_once_by_several_replicas,
    the_price_book_and_subsidiaries_page_in_their_own_order,
    upgrades_and_invoices_page_without_a_gap,
    subscriptions_are_checked_and_know_their_calendar,
    exceeding_the_tier_upgrades_at_once_and_is_invoiced_the_next_day,
    renewal_tier_requests_and_bad_counts_are_checked,
    accounts_without_marketing_contacts_are_billed_for_every_contact,
);
