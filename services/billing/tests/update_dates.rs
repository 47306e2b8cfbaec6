//! The update-date run over real gRPC on both backends: at the processing instant billing asks
//! marketing-status to apply the date (retrying while it is unavailable), records the period's
//! count, and at each renewal invoices the new term at its tier.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use contactier_proto::billing::v1 as pb;
use contactier_proto::common::v1::{Date, Edition, Term};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::db::Backend;
use contactier_runtime::sql::Sql;
use contactier_runtime::testing::authed;

fn marketing(count: i64, version: i64) -> mpb::MarketingCount {
    mpb::MarketingCount { marketing: count, pending_non_marketing: 0, non_marketing: 0, version, as_of: None }
}

async fn renewal_applies_the_requested_tier_that_holds_the_count_and_invoices_the_term(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(pb::CreateSubscriptionRequest { tier: 12_000, ..professional_monthly() }).await.unwrap();
    let admin = b.token(ACCOUNT, &["admin"]);
    b.api()
        .request_renewal_tier(authed(pb::RequestRenewalTierRequest { tier: 2_000 }, &admin))
        .await
        .unwrap();
    b.count("c1", 1, 6_000, 0).await.unwrap();
    {
        let mut peer = b.marketing_status.0.lock().unwrap();
        peer.failures_left = 2;
        peer.count = marketing(6_000, 9);
    }
    assert_eq!(b.subscription().await.next_update_date, date(2026, 5, 15));

    // 15 May 00:00 in New York is 04:00 UTC. marketing-status is down for two tries.
    let processing = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
    b.advance_to(processing - chrono::Duration::seconds(1)).await;
    assert!(b.marketing_status.0.lock().unwrap().update_calls.is_empty(), "{backend:?}: not before 00:00");
    b.advance_to(processing + chrono::Duration::seconds(14)).await;
    assert_eq!(
        b.marketing_status.0.lock().unwrap().update_calls.len(),
        2,
        "{backend:?}: 5 s, then 10 s more"
    );
    b.advance_to(processing + chrono::Duration::seconds(15)).await;
    let calls = b.marketing_status.0.lock().unwrap().update_calls.clone();
    assert_eq!(calls.len(), 3, "{backend:?}: {calls:?}");
    assert!(
        calls.iter().all(|c| *c == (ACCOUNT.to_owned(), date(2026, 5, 15).unwrap(), processing.timestamp()))
    );

    // The requested 2,000 does not hold 6,000: the smallest tier that does, 7,000.
    let sub = b.subscription().await;
    assert_eq!(
        (sub.tier, sub.renewal_tier, sub.next_update_date),
        (7_000, 0, date(2026, 6, 15)),
        "{backend:?}"
    );
    let invoices = b.invoices().await;
    assert_eq!(invoices.len(), 1, "{backend:?}");
    let inv = &invoices[0];
    assert_eq!((inv.kind, inv.number, inv.total.clone()), (pb::InvoiceKind::Renewal as i32, 1, eur(102_500)));
    assert_eq!((inv.term_start, inv.term_end), (date(2026, 5, 15), date(2026, 6, 15)));
    let l = &inv.lines[0];
    assert_eq!((l.from_tier, l.to_tier, l.marketing_count, l.term_days), (12_000, 7_000, 6_000, 31));
    let read = b.token(ACCOUNT, &["read"]);
    let usage =
        b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(usage.period_count, 6_000, "{backend:?}: the count that holds for the period");

    // A month on, the next renewal keeps the tier: no downgrade without a request.
    b.marketing_status.0.lock().unwrap().count = marketing(100, 12);
    b.advance_to(Utc.with_ymd_and_hms(2026, 6, 16, 0, 0, 0).unwrap()).await;
    let invoices = b.invoices().await;
    assert_eq!(invoices.len(), 2, "{backend:?}");
    assert_eq!((invoices[0].number, invoices[0].total.clone()), (2, eur(102_500)));
    assert_eq!(invoices[0].term_start, date(2026, 6, 15));
    assert_eq!(b.subscription().await.tier, 7_000);
    assert_eq!(b.marketing_status.0.lock().unwrap().update_calls.len(), 4, "{backend:?}: asked once more");
    let plans = b.marketing_status.0.lock().unwrap().plans.clone();
    assert_eq!(plans.len(), 1, "{backend:?}: the plan went out once");
    assert_eq!((plans[0].edition, plans[0].marketing_contacts_enabled), (Edition::Professional as i32, true));
}

async fn annual_terms_process_every_first_and_renew_once_a_year(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(pb::CreateSubscriptionRequest { term: Term::Annual as i32, ..professional_monthly() })
        .await
        .unwrap();
    b.marketing_status.0.lock().unwrap().count = marketing(1_500, 3);
    b.advance_to(Utc.with_ymd_and_hms(2027, 4, 16, 0, 0, 0).unwrap()).await;
    let dates: Vec<_> = b.marketing_status.0.lock().unwrap().update_calls.iter().map(|c| c.1).collect();
    let mut want: Vec<_> = (5..=12).map(|m| date(2026, m, 1).unwrap()).collect();
    want.extend((1..=4).map(|m| date(2027, m, 1).unwrap()));
    want.push(date(2027, 4, 15).unwrap());
    assert_eq!(dates, want, "{backend:?}: each first, then the renewal");
    let batches = b.marketing_status.0.lock().unwrap().batch_calls;
    assert_eq!(batches as usize, want.len(), "{backend:?}: asked through ApplyUpdateDates");
    let invoices = b.invoices().await;
    assert_eq!(invoices.len(), 1, "{backend:?}: one renewal in a year");
    assert_eq!((invoices[0].term_start, invoices[0].term_end), (date(2027, 4, 15), date(2028, 4, 15)));
    assert_eq!(invoices[0].total, eur(864_000), "{backend:?}: the annual base price");
    assert_eq!(invoices[0].lines[0].term_days, 366, "{backend:?}: 2028 is a leap year");
}

async fn replicas_share_the_run_and_each_date_is_processed_once(backend: Backend) {
    let b = start(backend).await;
    for _ in 0..2 {
        b.another_replica().await;
    }
    b.subscribe(professional_monthly()).await.unwrap();
    b.marketing_status.0.lock().unwrap().count = marketing(1_000, 2);
    b.advance_to(Utc.with_ymd_and_hms(2026, 9, 16, 0, 0, 0).unwrap()).await;
    let dates: Vec<_> = b.marketing_status.0.lock().unwrap().update_calls.iter().map(|c| c.1).collect();
    let want: Vec<_> = (5..=9).map(|m| date(2026, m, 15).unwrap()).collect();
    assert_eq!(dates, want, "{backend:?}: three schedulers, one call per date");
    let numbers: Vec<_> = b.invoices().await.iter().map(|i| (i.number, i.term_start)).collect();
    let want: Vec<_> = (1..=5).rev().map(|n| (n, date(2026, 4 + n as i32, 15))).collect();
    assert_eq!(numbers, want, "{backend:?}: one renewal invoice per month, numbers without gaps");
}

async fn a_marketing_status_without_batches_is_asked_one_date_at_a_time(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    {
        let mut peer = b.marketing_status.0.lock().unwrap();
        peer.one_date_a_call = true;
        peer.count = marketing(1_000, 2);
    }
    b.advance_to(Utc.with_ymd_and_hms(2026, 7, 16, 0, 0, 0).unwrap()).await;
    let (dates, batch_calls) = {
        let peer = b.marketing_status.0.lock().unwrap();
        (peer.update_calls.iter().map(|c| c.1).collect::<Vec<_>>(), peer.batch_calls)
    };
    assert_eq!(dates, [date(2026, 5, 15).unwrap(), date(2026, 6, 15).unwrap(), date(2026, 7, 15).unwrap()]);
    assert_eq!(batch_calls, 0, "{backend:?}");
    assert_eq!(b.invoices().await.len(), 3, "{backend:?}: each renewal invoiced once");
}

/// Threshold alerts of `account`'s usage (kind, count, tier, period start), as notification
/// keeps them once billing's states reach it.
async fn threshold_alerts(b: &Billing, account: &str) -> Vec<(i32, i64, i64, Option<Date>)> {
    use contactier_proto::notification::v1::{
        self as npb, notification_service_client::NotificationServiceClient,
    };
    let mut client = NotificationServiceClient::new(b.notification.clone());
    let req = npb::ListAlertsRequest { page_size: 100, page_token: String::new() };
    let alerts =
        client.list_alerts(authed(req, &b.token(account, &["read"]))).await.unwrap().into_inner().alerts;
    alerts
        .into_iter()
        .filter(|a| a.kind <= npb::AlertKind::TierExceeded as i32)
        .map(|a| (a.kind, a.marketing_count, a.tier, a.period_start))
        .collect()
}

async fn accounts_sharing_an_instant_are_completed_together_each_as_alone(backend: Backend) {
    use contactier_proto::notification::v1::AlertKind;
    let b = start(backend).await;
    // Three accounts whose update date is 1 May: two monthly from 1 April (a renewal each), one
    // annual from 15 April (a period start only). At 1,700 of 2,000 each new period begins
    // past 75 %.
    let accounts = [("acct-m1", Term::Monthly), ("acct-y", Term::Annual), ("acct-m2", Term::Monthly)];
    for (account, term) in accounts {
        let start_date = if term == Term::Monthly { date(2026, 4, 1) } else { date(2026, 4, 15) };
        let req = pb::CreateSubscriptionRequest { term: term as i32, start_date, ..professional_monthly() };
        b.api().create_subscription(authed(req, &b.token(account, &["admin"]))).await.unwrap();
    }
    b.marketing_status.0.lock().unwrap().count = marketing(1_700, 4);
    b.advance_to(Utc.with_ymd_and_hms(2026, 5, 1, 5, 0, 0).unwrap()).await;
    assert_eq!(b.marketing_status.0.lock().unwrap().batch_calls, 1, "{backend:?}: one instant, one call");

    let mut renewals = Vec::new();
    for (account, term) in accounts {
        let read = b.token(account, &["read"]);
        let sub = b
            .api()
            .get_subscription(authed(pb::GetSubscriptionRequest {}, &read))
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        assert_eq!((sub.tier, sub.next_update_date), (2_000, date(2026, 6, 1)), "{backend:?}: {account}");
        let usage = b
            .api()
            .get_usage(authed(pb::GetUsageRequest {}, &read))
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap();
        assert_eq!(usage.period_count, 1_700, "{backend:?}: {account}");
        let req = pb::ListInvoicesRequest { page_size: 10, page_token: String::new() };
        let invoices = b.api().list_invoices(authed(req, &read)).await.unwrap().into_inner().invoices;
        let numbers: Vec<(i32, i64)> = invoices.iter().map(|i| (i.kind, i.number)).collect();
        renewals.push((account, numbers));
        // The period's state reached notification in order: the new period's 75 % alert.
        let want = vec![(AlertKind::Threshold75 as i32, 1_700, 2_000, date(2026, 5, 1))];
        let mut got = threshold_alerts(&b, account).await;
        for _ in 0..50 {
            if got == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            got = threshold_alerts(&b, account).await;
        }
        assert_eq!(got, want, "{backend:?}: {account} ({term:?})");
    }
    let renewal = pb::InvoiceKind::Renewal as i32;
    assert_eq!(
        renewals,
        [("acct-m1", vec![(renewal, 1)]), ("acct-y", vec![]), ("acct-m2", vec![(renewal, 1)])],
        "{backend:?}: a renewal invoice for each monthly account, numbered on its own"
    );
}

/// A count that arrives after an update date's instant but before the date is recorded (the
/// replica holding it died, or marketing-status answered late) belongs to the period the date
/// opens: the renewal is priced on the count the date answered, and the later count is an
/// upgrade within the new term, charged once, not the renewal's tier as well.
async fn a_count_between_the_instant_and_its_record_belongs_to_the_new_period(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    b.count("c1", 1, 1_500, 0).await.unwrap();
    {
        let mut peer = b.marketing_status.0.lock().unwrap();
        peer.failures_left = 1;
        peer.count = marketing(1_500, 2);
    }
    // 15 May 00:00 in New York is 04:00 UTC; the first try fails, the next is 5 s later.
    let processing = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
    b.advance_to(processing + chrono::Duration::seconds(1)).await;
    assert_eq!(b.subscription().await.next_update_date, date(2026, 5, 15), "{backend:?}: not recorded yet");
    assert_eq!(b.count("c2", 3, 2_500, 0).await.unwrap(), ["c2"], "{backend:?}: taken, to be applied later");
    b.advance_to(processing + chrono::Duration::seconds(20)).await;

    let sub = b.subscription().await;
    assert_eq!((sub.tier, sub.next_update_date), (7_000, date(2026, 6, 15)), "{backend:?}");
    let read = b.token(ACCOUNT, &["read"]);
    let usage =
        b.api().get_usage(authed(pb::GetUsageRequest {}, &read)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.period_count, usage.marketing_count), (1_500, 2_500), "{backend:?}");
    // The next day's invoice run charges the upgrade, from the tier the term was renewed at.
    b.advance_to(Utc.with_ymd_and_hms(2026, 5, 16, 5, 0, 0).unwrap()).await;
    let invoices: Vec<_> = b
        .invoices()
        .await
        .iter()
        .rev()
        .map(|i| {
            let l = &i.lines[0];
            (i.kind, l.from_tier, l.to_tier, l.marketing_count, (i.term_start, i.term_end))
        })
        .collect();
    let term = (date(2026, 5, 15), date(2026, 6, 15));
    let (renewal, upgrade) = (pb::InvoiceKind::Renewal as i32, pb::InvoiceKind::Upgrade as i32);
    assert_eq!(
        invoices,
        [(renewal, 2_000, 2_000, 1_500, term), (upgrade, 2_000, 7_000, 2_500, term)],
        "{backend:?}"
    );
}

/// A replica killed while it held dates of an instant leaves them to the others within its
/// lease, and a lease still running is left alone: a killed replica's batch of 256 accounts
/// waited five minutes, seen from outside, while the rest of the instant took two seconds.
async fn dates_claimed_by_a_replica_that_died_are_taken_over_within_a_minute(backend: Backend) {
    let b = start(backend).await;
    b.subscribe(professional_monthly()).await.unwrap();
    b.marketing_status.0.lock().unwrap().count = marketing(1_000, 2);
    // 15 May 00:00 in New York: claimed at its instant by a replica that then died.
    let processing = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
    let until = processing + contactier_billing::UPDATE_DATE_LEASE;
    let claim = "UPDATE subscriptions SET lease_owner = 'a-replica-that-died', lease_until = $1 WHERE account_id = $2";
    b.db().execute(Sql::new(claim).bind(until.timestamp_micros()).bind(ACCOUNT)).await.unwrap();

    b.advance_to(processing + chrono::Duration::seconds(1)).await;
    assert_eq!(b.subscription().await.next_update_date, date(2026, 5, 15), "{backend:?}: its lease is kept");
    assert!(b.marketing_status.0.lock().unwrap().update_calls.is_empty(), "{backend:?}");
    b.advance_to(processing + chrono::Duration::minutes(1)).await;
    let sub = b.subscription().await;
    assert_eq!(sub.next_update_date, date(2026, 6, 15), "{backend:?}: taken over once the lease ran out");
    let calls = b.marketing_status.0.lock().unwrap().update_calls.clone();
    assert_eq!(calls.len(), 1, "{backend:?}: {calls:?}");
    assert_eq!(b.invoices().await.len(), 1, "{backend:?}: the renewal invoiced once");
}

/// Plans go to marketing-status many to a call; to a replica from before SetAccountPlans, one
/// at a time. Either way each account's plan arrives once.
async fn plans_go_out_together_or_one_at_a_time_to_an_older_replica(backend: Backend) {
    for older in [false, true] {
        let b = start(backend).await;
        b.marketing_status.0.lock().unwrap().one_plan_a_call = older;
        let accounts = ["acct-p1", "acct-p2", "acct-p3"];
        for account in accounts {
            let token = b.token(account, &["admin"]);
            b.api().create_subscription(authed(professional_monthly(), &token)).await.unwrap();
        }
        b.advance_to(noon_20_april() + chrono::Duration::seconds(1)).await;
        let peer = b.marketing_status.0.lock().unwrap();
        let mut told: Vec<&str> = peer.plans.iter().map(|p| p.account_id.as_str()).collect();
        told.sort_unstable();
        assert_eq!(told, accounts, "{backend:?}, older replica {older}: each plan once");
        assert!(
            peer.plans
                .iter()
                .all(|p| p.edition == Edition::Professional as i32 && p.marketing_contacts_enabled)
        );
        if older {
            assert_eq!((peer.plan_batches, peer.single_plans), (0, 3), "{backend:?}");
        } else {
            assert_eq!(peer.single_plans, 0, "{backend:?}: together");
            assert!(peer.plan_batches >= 1);
        }
    }
}

contactier_runtime::backend_tests!(
    plans_go_out_together_or_one_at_a_time_to_an_older_replica,
    accounts_sharing_an_instant_are_completed_together_each_as_alone,
    a_marketing_status_without_batches_is_asked_one_date_at_a_time,
    renewal_applies_the_requested_tier_that_holds_the_count_and_invoices_the_term,
    annual_terms_process_every_first_and_renew_once_a_year,
    replicas_share_the_run_and_each_date_is_processed_once,
    a_count_between_the_instant_and_its_record_belongs_to_the_new_period,
    dates_claimed_by_a_replica_that_died_are_taken_over_within_a_minute,
);
