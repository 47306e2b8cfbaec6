//! The notification service over real gRPC, on SQLite and PostgreSQL: threshold alerts from
//! billing events, the feed and its watch stream, signed webhooks, email, retries and dead
//! letters, bad input and tenant isolation.

use chrono::{TimeZone, Utc};
use contactier_notification::DeliveryArgs;
use contactier_proto::common::v1::{Date, Money};
use contactier_proto::notification::v1::{
    self as pb, AlertKind, DeliveryState, billing_event::Payload,
    notification_internal_service_client::NotificationInternalServiceClient,
    notification_service_client::NotificationServiceClient,
};
use contactier_runtime::auth::Authenticator;
use contactier_runtime::clock::Clock;
use contactier_runtime::db::Backend;
use contactier_runtime::host::ServiceEnv;
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::testing::{BACKENDS, TestDb, authed, channel, manual_platform, no_peers, serve};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const ACCOUNT: &str = "acct-a";

struct Svc {
    channel: Channel,
    auth: Authenticator,
    clock: Clock,
    shutdown: Shutdown,
    db: TestDb,
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn delivery_args(smtp_url: Option<String>) -> DeliveryArgs {
    DeliveryArgs {
        smtp_url,
        smtp_from: "Contactier <alerts@contactier.invalid>".into(),
        max_attempts: 3,
        backoff_ms: 100,
        webhook_timeout_ms: 2_000,
        // The test's receivers listen on loopback over plain http.
        webhook_allow_http: true,
        webhook_allow_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        digest_window_ms: 0,
        watch_streams_per_account: 4,
        watch_streams: 100,
    }
}

async fn start(backend: Backend, args: DeliveryArgs) -> Svc {
    let t = TestDb::new(backend, "notification").await;
    t.db.migrate_service(contactier_notification::SERVICE.migrations).await.unwrap();
    let platform = manual_platform(Utc.with_ymd_and_hms(2026, 5, 10, 12, 0, 0).unwrap());
    let env = ServiceEnv { platform: platform.clone(), db: t.db.clone(), peers: no_peers() };
    let spec = contactier_notification::build_with(env, args).await.unwrap();
    let addr = serve(spec, &platform).await;
    Svc {
        channel: channel(addr),
        auth: platform.authenticator.clone(),
        clock: platform.clock.clone(),
        shutdown: platform.shutdown.clone(),
        db: t,
    }
}

impl Svc {
    fn user(&self, account: &str, scopes: &[&str]) -> String {
        self.auth.user_token(account, "user-1", scopes, chrono::Duration::hours(1))
    }

    fn api(&self) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::new(self.channel.clone())
    }

    fn internal(&self) -> NotificationInternalServiceClient<Channel> {
        NotificationInternalServiceClient::new(self.channel.clone())
    }

    async fn apply(&self, events: Vec<pb::BillingEvent>) -> Result<Vec<String>, tonic::Status> {
        let token = self.auth.service_token("billing", chrono::Duration::hours(1));
        let r = self
            .internal()
            .apply_billing_events(authed(pb::ApplyBillingEventsRequest { events }, &token))
            .await?;
        Ok(r.into_inner().acknowledged_event_ids)
    }

    async fn alerts(&self, account: &str) -> Vec<pb::Alert> {
        let token = self.user(account, &["read"]);
        let req = pb::ListAlertsRequest { page_size: 500, page_token: String::new() };
        self.api().list_alerts(authed(req, &token)).await.unwrap().into_inner().alerts
    }

    /// Returns once the delivery worker has done all it owes at the current time.
    async fn settle(&self) {
        self.clock.advance(chrono::Duration::zero()).await.unwrap();
    }

    async fn deliveries(&self, state: Option<DeliveryState>) -> Vec<pb::Delivery> {
        let token = self.user(ACCOUNT, &["read"]);
        let all = self
            .api()
            .list_deliveries(authed(
                pb::ListDeliveriesRequest {
                    alert_id: String::new(),
                    page_size: 500,
                    page_token: String::new(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        all.into_iter().filter(|d| state.is_none_or(|s| d.state == s as i32)).collect()
    }
}

fn date(y: i32, m: i32, d: i32) -> Option<Date> {
    Some(Date { year: y, month: m, day: d })
}

/// Usage state `version` of the account: `count` of `tier` in the period; with an upgrade,
/// its id and the tier the count exceeded.
fn usage(
    id: &str,
    version: i64,
    count: i64,
    tier: i64,
    period: Option<Date>,
    upgrade: Option<(&str, i64)>,
) -> pb::BillingEvent {
    pb::BillingEvent {
        event_id: id.into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::State(pb::UsageState {
            version,
            period_start: period,
            tier,
            marketing_count: count,
            change: 0,
            upgrade_id: upgrade.map(|u| u.0.to_owned()).unwrap_or_default(),
            from_tier: upgrade.map(|u| u.1).unwrap_or_default(),
        })),
    }
}

fn kinds(alerts: &[pb::Alert]) -> Vec<(AlertKind, i64)> {
    // Oldest first, for reading the tests.
    alerts.iter().rev().map(|a| (a.kind(), a.tier)).collect()
}

async fn each_threshold_fires_once_per_tier_and_period(backend: Backend) {
    use AlertKind::*;
    let s = start(backend, delivery_args(None)).await;
    let may = date(2026, 5, 1);
    assert_eq!(s.apply(vec![usage("e1", 1, 1_500, 2_000, may, None)]).await.unwrap(), ["e1"]);
    assert_eq!(kinds(&s.alerts(ACCOUNT).await), [(Threshold75, 2_000)], "{backend:?}");

    // A redelivered event is acknowledged and changes nothing.
    assert_eq!(s.apply(vec![usage("e1", 1, 1_500, 2_000, may, None)]).await.unwrap(), ["e1"]);
    // A jump past two thresholds sends both; a lower count later sends nothing again.
    s.apply(vec![usage("e2", 2, 1_990, 2_000, may, None), usage("e3", 3, 1_700, 2_000, may, None)])
        .await
        .unwrap();
    s.apply(vec![usage("e4", 4, 1_995, 2_000, may, None)]).await.unwrap();
    assert_eq!(
        kinds(&s.alerts(ACCOUNT).await),
        [(Threshold75, 2_000), (Threshold90, 2_000), (Threshold98, 2_000)],
        "{backend:?}"
    );

    // A new update period re-arms them.
    s.apply(vec![usage("e5", 5, 1_995, 2_000, date(2026, 6, 1), None)]).await.unwrap();
    assert_eq!(s.alerts(ACCOUNT).await.len(), 6, "{backend:?}");

    // Exceeding the tier names the upgrade; the new tier's thresholds are checked at once.
    s.apply(vec![usage("e6", 6, 6_900, 7_000, date(2026, 6, 1), Some(("up-1", 2_000)))]).await.unwrap();
    let all = s.alerts(ACCOUNT).await;
    assert_eq!(
        kinds(&all)[6..],
        [(TierExceeded, 2_000), (Threshold75, 7_000), (Threshold90, 7_000), (Threshold98, 7_000)],
        "{backend:?}"
    );
    let exceeded = all.iter().find(|a| a.kind() == TierExceeded).unwrap();
    assert_eq!(
        (exceeded.upgrade_id.as_str(), exceeded.new_tier, exceeded.marketing_count),
        ("up-1", 7_000, 6_900)
    );
    let seqs: Vec<i64> = all.iter().rev().map(|a| a.sequence).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{backend:?}: gap-free sequence");

    // One delivery is one transaction: an event twice within it is applied once, and both are
    // acknowledged.
    let july = date(2026, 7, 1);
    let twice =
        s.apply(vec![usage("e7", 7, 6_900, 7_000, july, None), usage("e7", 7, 6_900, 7_000, july, None)]);
    assert_eq!(twice.await.unwrap(), ["e7", "e7"], "{backend:?}");
    assert_eq!(s.alerts(ACCOUNT).await.len(), 13, "{backend:?}: the new period's three thresholds once");
}

async fn upgrade_and_invoice_notices_and_paging(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let upgraded = pb::BillingEvent {
        event_id: "u1".into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Upgraded(pb::TierUpgraded {
            upgrade_id: "up-9".into(),
            from_tier: 2_000,
            to_tier: 7_000,
            marketing_count: 2_001,
            period_start: date(2026, 5, 1),
        })),
    };
    let invoice = pb::BillingEvent {
        event_id: "i1".into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Invoice(pb::InvoiceIssued {
            invoice_id: "inv-1".into(),
            number: 1,
            total: Some(Money { amount_minor: 25_005, currency: "EUR".into() }),
        })),
    };
    s.apply(vec![upgraded, invoice]).await.unwrap();
    let token = s.user(ACCOUNT, &["read"]);
    let first = s
        .api()
        .list_alerts(authed(pb::ListAlertsRequest { page_size: 1, page_token: String::new() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.alerts.len(), 1);
    assert_eq!(first.alerts[0].kind(), AlertKind::InvoiceIssued, "{backend:?}: newest first");
    assert_eq!(first.alerts[0].amount, Some(Money { amount_minor: 25_005, currency: "EUR".into() }));
    assert!(first.alerts[0].message.contains("250.05 EUR"));
    let second = s
        .api()
        .list_alerts(authed(
            pb::ListAlertsRequest { page_size: 1, page_token: first.next_page_token },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.alerts[0].kind(), AlertKind::TierUpgraded);
    assert_eq!((second.alerts[0].tier, second.alerts[0].new_tier), (2_000, 7_000));
    let bad = pb::ListAlertsRequest { page_size: 1, page_token: "x'; --".into() };
    let err = s.api().list_alerts(authed(bad, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"));
}

/// An instant renews thousands of accounts at once, an invoice each, and billing sends their
/// notices in one call: each fires its alert once, under its account's next sequence in the
/// order sent, with a delivery where the account has a recipient, and a replay of the call
/// among new notices adds only the new ones.
async fn many_accounts_notices_in_one_call_fire_each_once_in_order(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let hook = receiver().await;
    add_webhook(&s, &hook.url).await;
    let invoice = |id: &str, account: &str, number: i64| pb::BillingEvent {
        event_id: id.into(),
        account_id: account.into(),
        occurred_at: None,
        payload: Some(Payload::Invoice(pb::InvoiceIssued {
            invoice_id: format!("inv-{id}"),
            number,
            total: Some(Money { amount_minor: 1_000 * number, currency: "EUR".into() }),
        })),
    };
    let upgraded = |id: &str, account: &str| pb::BillingEvent {
        event_id: id.into(),
        account_id: account.into(),
        occurred_at: None,
        payload: Some(Payload::Upgraded(pb::TierUpgraded {
            upgrade_id: format!("up-{id}"),
            from_tier: 2_000,
            to_tier: 7_000,
            marketing_count: 2_001,
            period_start: date(2026, 5, 1),
        })),
    };
    let first = vec![
        invoice("a1", ACCOUNT, 1),
        invoice("b1", "acct-b", 1),
        invoice("c1", "acct-c", 1),
        invoice("a2", ACCOUNT, 2),
        upgraded("b2", "acct-b"),
    ];
    let acked = s.apply(first.clone()).await.unwrap();
    assert_eq!(acked, ["a1", "b1", "c1", "a2", "b2"], "{backend:?}");
    let mut again = first;
    again.push(invoice("c2", "acct-c", 2));
    assert_eq!(s.apply(again).await.unwrap().len(), 6, "{backend:?}: a replay is acknowledged");

    let seen = |alerts: Vec<pb::Alert>| -> Vec<(i64, AlertKind, String)> {
        alerts.into_iter().rev().map(|a| (a.sequence, a.kind(), a.invoice_id.clone())).collect()
    };
    let inv = AlertKind::InvoiceIssued;
    assert_eq!(
        seen(s.alerts(ACCOUNT).await),
        [(1, inv, "inv-a1".to_owned()), (2, inv, "inv-a2".to_owned())],
        "{backend:?}"
    );
    assert_eq!(
        seen(s.alerts("acct-b").await),
        [(1, inv, "inv-b1".to_owned()), (2, AlertKind::TierUpgraded, String::new())],
        "{backend:?}"
    );
    assert_eq!(
        seen(s.alerts("acct-c").await),
        [(1, inv, "inv-c1".to_owned()), (2, inv, "inv-c2".to_owned())],
        "{backend:?}"
    );
    // The account with a webhook has a delivery an alert; the others have no recipient.
    s.settle().await;
    let delivered = s.deliveries(Some(DeliveryState::Delivered)).await;
    assert_eq!(delivered.len(), 2, "{backend:?}: {delivered:?}");
    assert_eq!(hook.received.lock().unwrap().len(), 2, "{backend:?}");
}

async fn bad_events_are_refused_whole_and_only_services_may_send_them(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let mut no_date = usage("b2", 2, 1_900, 2_000, None, None);
    let err = s
        .apply(vec![usage("b1", 1, 1_900, 2_000, date(2026, 5, 1), None), no_date.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("period_start"), "{}", err.message());
    // A kind of event no longer sent (no payload this service knows) is acknowledged.
    no_date.payload = None;
    assert_eq!(s.apply(vec![no_date]).await.unwrap(), ["b2"]);
    let err = s.apply(vec![usage("b3", 1, 10, 2_000, date(2026, 2, 30), None)]).await.unwrap_err();
    assert!(err.message().contains("calendar date"), "{}", err.message());
    let err = s.apply(vec![usage("b4", 1, -1, 2_000, date(2026, 5, 1), None)]).await.unwrap_err();
    assert!(err.message().contains("marketing_count"));
    let err =
        s.apply(vec![usage("b5", 1, 2_500, 1_000, date(2026, 5, 1), Some(("up", 2_000)))]).await.unwrap_err();
    assert!(err.message().contains("from_tier"), "{}", err.message());
    assert!(s.alerts(ACCOUNT).await.is_empty(), "{backend:?}: nothing of a refused batch was applied");

    // Even an admin user may not feed events.
    let admin = s.user(ACCOUNT, &["admin"]);
    let req =
        pb::ApplyBillingEventsRequest { events: vec![usage("b6", 1, 1_900, 2_000, date(2026, 5, 1), None)] };
    let err = s.internal().apply_billing_events(authed(req, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(s.alerts(ACCOUNT).await.is_empty());
}

async fn the_watch_stream_resumes_without_missing_an_alert(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let token = s.user(ACCOUNT, &["read"]);
    s.apply(vec![usage("w1", 1, 1_500, 2_000, date(2026, 5, 1), None)]).await.unwrap();

    let mut stream = s
        .api()
        .watch_alerts(authed(pb::WatchAlertsRequest { after_sequence: 0 }, &token))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().alert.unwrap();
    assert_eq!((first.sequence, first.kind()), (1, AlertKind::Threshold75), "{backend:?}: replayed");

    s.apply(vec![usage("w2", 2, 1_850, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    let live =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(live.alert.unwrap().kind(), AlertKind::Threshold90, "{backend:?}: live");
    drop(stream);

    // While disconnected, another alert; reconnecting after the last seen gets it, and only it.
    s.apply(vec![usage("w3", 3, 1_990, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    let mut again = s
        .api()
        .watch_alerts(authed(pb::WatchAlertsRequest { after_sequence: 2 }, &token))
        .await
        .unwrap()
        .into_inner();
    let missed = again.message().await.unwrap().unwrap().alert.unwrap();
    assert_eq!((missed.sequence, missed.kind()), (3, AlertKind::Threshold98), "{backend:?}");

    // Another account's alerts never reach this stream.
    let mut other = usage("w4", 1, 1_990, 2_000, date(2026, 5, 1), None);
    other.account_id = "acct-b".into();
    s.apply(vec![other]).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(1500), again.message()).await;
    assert!(quiet.is_err(), "{backend:?}: nothing from acct-b: {quiet:?}");

    let bad = pb::WatchAlertsRequest { after_sequence: -1 };
    assert_eq!(s.api().watch_alerts(authed(bad, &token)).await.unwrap_err().code(), Code::InvalidArgument);
}

/// A local webhook receiver that records what it gets and answers 204, or 500 while failing.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>,
    status: Arc<AtomicU16>,
}

async fn receiver() -> Receiver {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(204));
    let (rec, st) = (received.clone(), status.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (rec, st) = (rec.clone(), st.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (rec, st) = (rec.clone(), st.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        rec.lock().unwrap().push((parts.headers, body));
                        let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *resp.status_mut() = http::StatusCode::from_u16(st.load(Ordering::SeqCst)).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Receiver { url: format!("http://{addr}/hooks/contactier"), received, status }
}

/// Checks a Standard Webhooks signature the way a receiver would, with its own HMAC.
fn verify(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}

async fn add_webhook(s: &Svc, url: &str) -> String {
    let admin = s.user(ACCOUNT, &["admin"]);
    let req = pb::CreateRecipientRequest {
        target: Some(pb::create_recipient_request::Target::Webhook(pb::WebhookTarget {
            url: url.into(),
            secret: String::new(),
        })),
    };
    let r = s.api().create_recipient(authed(req, &admin)).await.unwrap().into_inner().recipient.unwrap();
    match r.target {
        Some(pb::recipient::Target::Webhook(w)) => w.secret,
        other => panic!("not a webhook: {other:?}"),
    }
}

async fn webhooks_are_signed_and_a_failing_receiver_is_retried_then_dead_lettered(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let hook = receiver().await;
    let secret = add_webhook(&s, &hook.url).await;
    assert!(secret.starts_with("whsec_"));

    s.apply(vec![usage("h1", 1, 1_500, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    s.settle().await;
    {
        let got = hook.received.lock().unwrap();
        assert_eq!(got.len(), 1, "{backend:?}: delivered once");
        let (headers, body) = &got[0];
        assert!(verify(&secret, headers, body), "{backend:?}: signature checks out");
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["type"], "alerts");
        assert_eq!(json["data"]["account_id"], ACCOUNT);
        assert_eq!(json["data"]["alerts"][0]["kind"], "threshold_75");
        assert_eq!(json["data"]["alerts"][0]["marketing_count"], 1_500);
    }
    assert_eq!(s.deliveries(Some(DeliveryState::Delivered)).await.len(), 1);

    // The receiver breaks: three tries with backoff, then the dead letter.
    hook.status.store(500, Ordering::SeqCst);
    s.apply(vec![usage("h2", 2, 1_850, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    s.settle().await;
    assert_eq!(s.deliveries(Some(DeliveryState::Pending)).await.len(), 1, "{backend:?}: waiting for a retry");
    s.clock.advance(chrono::Duration::minutes(5)).await.unwrap();
    let token = s.user(ACCOUNT, &["read"]);
    let dead = s
        .api()
        .list_dead_letters(authed(
            pb::ListDeadLettersRequest { page_size: 10, page_token: String::new() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(dead.len(), 1, "{backend:?}");
    assert_eq!(dead[0].attempts.len(), 3);
    assert!(dead[0].attempts.iter().all(|a| a.status_code == 500 && !a.error.is_empty()));
    assert_eq!(hook.received.lock().unwrap().len(), 4);

    // Fixed: a redrive delivers it, once.
    hook.status.store(200, Ordering::SeqCst);
    let writer = s.user(ACCOUNT, &["write"]);
    let id = dead[0].id.clone();
    let r = s
        .api()
        .redrive_dead_letter(authed(pb::RedriveDeadLetterRequest { delivery_id: id.clone() }, &writer))
        .await
        .unwrap();
    assert_eq!(r.into_inner().delivery.unwrap().state(), DeliveryState::Pending);
    s.settle().await;
    assert_eq!(s.deliveries(Some(DeliveryState::Delivered)).await.len(), 2, "{backend:?}");
    assert_eq!(hook.received.lock().unwrap().len(), 5);
    let again =
        s.api().redrive_dead_letter(authed(pb::RedriveDeadLetterRequest { delivery_id: id }, &writer)).await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);
}

/// An account with many receivers that never answer has at most a few deliveries in flight:
/// another account's webhook goes out at once, not after all of them.
async fn many_silent_receivers_of_one_account_do_not_crowd_out_another(backend: Backend) {
    let mut args = delivery_args(None);
    args.webhook_timeout_ms = 1_000;
    args.max_attempts = 1;
    let s = start(backend, args).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            open.push(c);
        }
    });
    let crowd = "acct-crowd";
    for _ in 0..24 {
        let req = pb::CreateRecipientRequest {
            target: Some(pb::create_recipient_request::Target::Webhook(pb::WebhookTarget {
                url: silent_url.clone(),
                secret: String::new(),
            })),
        };
        s.api().create_recipient(authed(req, &s.user(crowd, &["admin"]))).await.unwrap();
    }
    let hook = receiver().await;
    add_webhook(&s, &hook.url).await;
    // The crowded account's alert first: its 24 deliveries are older than the other's one.
    let mut crowded = usage("c1", 1, 1_500, 2_000, date(2026, 5, 1), None);
    crowded.account_id = crowd.into();
    s.apply(vec![crowded, usage("h1", 1, 1_500, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    let clock = s.clock.clone();
    let settling = tokio::spawn(async move { clock.advance(chrono::Duration::zero()).await });
    let asked = std::time::Instant::now();
    while hook.received.lock().unwrap().is_empty() {
        assert!(
            asked.elapsed() < std::time::Duration::from_millis(800),
            "{backend:?}: another account's silent receivers held up this delivery"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    settling.await.unwrap().unwrap();
    let dead = s
        .api()
        .list_dead_letters(authed(
            pb::ListDeadLettersRequest { page_size: 100, page_token: String::new() },
            &s.user(crowd, &["read"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(dead.len(), 24, "{backend:?}: every silent receiver was tried");
    held.abort();
}

/// A receiver that never answers times out, is retried and dead-lettered, and holds up no one
/// else's deliveries meanwhile.
async fn a_webhook_that_never_answers_times_out_without_holding_up_others(backend: Backend) {
    let mut args = delivery_args(None);
    args.webhook_timeout_ms = 1_500;
    args.max_attempts = 2;
    let s = start(backend, args).await;
    // Accepts connections and never reads or answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            open.push(c);
        }
    });
    let hook = receiver().await;
    add_webhook(&s, &hook.url).await;
    let other = "acct-silent";
    let req = pb::CreateRecipientRequest {
        target: Some(pb::create_recipient_request::Target::Webhook(pb::WebhookTarget {
            url: silent_url,
            secret: String::new(),
        })),
    };
    s.api().create_recipient(authed(req, &s.user(other, &["admin"]))).await.unwrap();

    // The silent account's alert first, so it is first in the batch.
    let mut silent_event = usage("s1", 1, 1_500, 2_000, date(2026, 5, 1), None);
    silent_event.account_id = other.into();
    s.apply(vec![silent_event, usage("h1", 1, 1_500, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    let clock = s.clock.clone();
    let settling = tokio::spawn(async move { clock.advance(chrono::Duration::zero()).await });
    let asked = std::time::Instant::now();
    while hook.received.lock().unwrap().is_empty() {
        assert!(
            asked.elapsed() < std::time::Duration::from_millis(1_200),
            "{backend:?}: a silent receiver held up another account's delivery"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    settling.await.unwrap().unwrap();
    // One timed-out try, a retry after the backoff, then the dead letter.
    s.clock.advance(chrono::Duration::minutes(5)).await.unwrap();
    let dead = s
        .api()
        .list_dead_letters(authed(
            pb::ListDeadLettersRequest { page_size: 10, page_token: String::new() },
            &s.user(other, &["read"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(dead.len(), 1, "{backend:?}");
    assert_eq!(dead[0].attempts.len(), 2, "{backend:?}");
    for a in &dead[0].attempts {
        assert_eq!(a.status_code, 0, "{backend:?}: no answer");
        assert!(a.error.starts_with("no answer from the receiver within"), "{backend:?}: {}", a.error);
    }
    assert_eq!(s.deliveries(Some(DeliveryState::Delivered)).await.len(), 1, "{backend:?}");
    held.abort();
}

fn python() -> String {
    std::env::var("CONTACTIER_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test]
async fn email_goes_to_the_billing_contacts_over_smtp() {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_sink.py");
    let mut sink = std::process::Command::new(python())
        .args([script, &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python for the SMTP sink (make test provides one with aiosmtpd)");
    let mut lines = std::io::BufReader::new(sink.stdout.take().unwrap()).lines();
    let ready =
        lines.next().expect("the SMTP sink starts (aiosmtpd installed? make test installs it)").unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    for backend in BACKENDS {
        let s = start(backend, delivery_args(Some(format!("smtp://127.0.0.1:{port}")))).await;
        let admin = s.user(ACCOUNT, &["admin"]);
        let bad = pb::CreateRecipientRequest {
            target: Some(pb::create_recipient_request::Target::Email(pb::EmailTarget {
                address: "not an address".into(),
            })),
        };
        let err = s.api().create_recipient(authed(bad, &admin)).await.unwrap_err();
        assert!(err.message().contains("email.address"));
        let req = pb::CreateRecipientRequest {
            target: Some(pb::create_recipient_request::Target::Email(pb::EmailTarget {
                address: "billing@example.com".into(),
            })),
        };
        s.api().create_recipient(authed(req, &admin)).await.unwrap();

        s.apply(vec![usage("m1", 1, 1_600, 2_000, date(2026, 5, 1), None)]).await.unwrap();
        s.settle().await;
        let mail = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        let mail: serde_json::Value = serde_json::from_str(&mail).unwrap();
        assert_eq!(mail["to"], serde_json::json!(["billing@example.com"]), "{backend:?}");
        assert!(
            mail["data"].as_str().unwrap().contains("Subject: Contactier: 1600 marketing contacts: 75 %")
        );
        let delivered = s.deliveries(Some(DeliveryState::Delivered)).await;
        assert_eq!(delivered.len(), 1, "{backend:?}");
        assert_eq!(delivered[0].attempts[0].status_code, 250);
    }
    let _ = sink.kill();
    let _ = sink.wait();
}

async fn accounts_never_see_or_touch_each_others_notifications(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let hook = receiver().await;
    hook.status.store(500, Ordering::SeqCst);
    add_webhook(&s, &hook.url).await;
    s.apply(vec![usage("t1", 1, 1_900, 2_000, date(2026, 5, 1), None)]).await.unwrap();
    s.clock.advance(chrono::Duration::minutes(5)).await.unwrap();
    let dead = s.deliveries(Some(DeliveryState::DeadLettered)).await;
    assert_eq!(dead.len(), 2, "{backend:?}: 75 and 90 % to one webhook");

    let b_admin = s.user("acct-b", &["admin"]);
    assert!(s.alerts("acct-b").await.is_empty());
    let list = pb::ListRecipientsRequest::default();
    assert!(
        s.api().list_recipients(authed(list, &b_admin)).await.unwrap().into_inner().recipients.is_empty()
    );
    let a_recipients = s
        .api()
        .list_recipients(authed(pb::ListRecipientsRequest::default(), &s.user(ACCOUNT, &["read"])))
        .await;
    let a_recipient = a_recipients.unwrap().into_inner().recipients.remove(0);
    assert!(
        matches!(&a_recipient.target, Some(pb::recipient::Target::Webhook(w)) if w.secret.is_empty()),
        "secrets are shown only once"
    );
    let del = pb::DeleteRecipientRequest { id: a_recipient.id.clone() };
    assert_eq!(s.api().delete_recipient(authed(del, &b_admin)).await.unwrap_err().code(), Code::NotFound);
    let redrive = pb::RedriveDeadLetterRequest { delivery_id: dead[0].id.clone() };
    assert_eq!(
        s.api().redrive_dead_letter(authed(redrive, &b_admin)).await.unwrap_err().code(),
        Code::NotFound
    );
    let reader = s.user(ACCOUNT, &["read"]);
    let create = pb::CreateRecipientRequest {
        target: Some(pb::create_recipient_request::Target::Webhook(pb::WebhookTarget {
            url: "ftp://x".into(),
            secret: String::new(),
        })),
    };
    assert_eq!(
        s.api().create_recipient(authed(create.clone(), &reader)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let err = s.api().create_recipient(authed(create, &s.user(ACCOUNT, &["admin"]))).await.unwrap_err();
    assert!(err.message().contains("webhook.url"));
    // A's recipient still there and A's deliveries untouched.
    assert_eq!(s.deliveries(Some(DeliveryState::DeadLettered)).await.len(), 2);
    // Once A deletes its recipient, its dead letters have nowhere to go: a redrive is refused.
    let del = pb::DeleteRecipientRequest { id: a_recipient.id.clone() };
    s.api().delete_recipient(authed(del, &s.user(ACCOUNT, &["admin"]))).await.unwrap();
    let redrive = pb::RedriveDeadLetterRequest { delivery_id: dead[0].id.clone() };
    let err = s.api().redrive_dead_letter(authed(redrive, &s.user(ACCOUNT, &["write"]))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
    assert!(err.message().contains("recipient was deleted"), "{backend:?}");
    assert_eq!(s.deliveries(Some(DeliveryState::DeadLettered)).await.len(), 2, "{backend:?}: unchanged");
}

/// The same usage states give the same alerts however they arrive: an update date that lowers
/// the count and the renewal that lowers the tier, delivered in both orders and with replays.
async fn usage_states_in_any_order_fire_the_same_alerts(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let states = |account: &str| {
        let mut v = vec![
            usage("1", 1, 1_900, 2_000, date(2026, 4, 15), None),
            usage("2", 2, 1_600, 2_000, date(2026, 4, 15), None),
            // The update date applies pending contacts and the renewal lowers the tier.
            usage("3", 3, 800, 1_000, date(2026, 5, 15), None),
            usage("4", 4, 990, 1_000, date(2026, 5, 15), None),
        ];
        for e in &mut v {
            e.account_id = account.into();
            e.event_id = format!("{account}-{}", e.event_id);
        }
        v
    };
    let mut in_order = states("acct-in-order");
    for e in in_order.drain(..) {
        s.apply(vec![e]).await.unwrap();
    }
    let mut shuffled = states("acct-shuffled");
    shuffled.reverse();
    shuffled.swap(0, 1);
    let replayed = shuffled[1].clone();
    shuffled.push(replayed);
    for e in shuffled {
        s.apply(vec![e]).await.unwrap();
    }
    let seen = |alerts: Vec<pb::Alert>| -> Vec<(AlertKind, i64, i64, Option<Date>, i64)> {
        alerts
            .iter()
            .rev()
            .map(|a| (a.kind(), a.tier, a.marketing_count, a.period_start, a.state_version))
            .collect()
    };
    let a = seen(s.alerts("acct-in-order").await);
    assert_eq!(
        a,
        [
            (AlertKind::Threshold75, 2_000, 1_900, date(2026, 4, 15), 1),
            (AlertKind::Threshold90, 2_000, 1_900, date(2026, 4, 15), 1),
            (AlertKind::Threshold75, 1_000, 800, date(2026, 5, 15), 3),
            (AlertKind::Threshold90, 1_000, 990, date(2026, 5, 15), 4),
            (AlertKind::Threshold98, 1_000, 990, date(2026, 5, 15), 4),
        ],
        "{backend:?}"
    );
    assert_eq!(seen(s.alerts("acct-shuffled").await), a, "{backend:?}: the same in another order");

    // Two more accounts whose states come interleaved, one of each in a delivery (applied
    // together): in order with a replay for one, shuffled with a replay for the other.
    let mut x = states("acct-x");
    x.push(x[0].clone());
    let mut y = states("acct-y");
    y.reverse();
    y.swap(0, 1);
    y.push(y[1].clone());
    for (ex, ey) in x.into_iter().zip(y) {
        let ids = [ex.event_id.clone(), ey.event_id.clone()];
        assert_eq!(s.apply(vec![ex, ey]).await.unwrap(), ids, "{backend:?}: both acknowledged");
    }
    assert_eq!(seen(s.alerts("acct-x").await), a, "{backend:?}: together, in order");
    assert_eq!(seen(s.alerts("acct-y").await), a, "{backend:?}: together, in another order");
}

/// A call of several accounts' events where one account's fail applies the others and names
/// that account's first event, with why. The call failed whole, and billing sent every other
/// account's events again (in halves, or one call each), each failing account once a retry.
async fn a_failing_accounts_events_are_named_and_the_others_applied(backend: Backend) {
    let s = start(backend, delivery_args(None)).await;
    let invoice = |id: &str, account: &str, number: i64| pb::BillingEvent {
        event_id: id.into(),
        account_id: account.into(),
        occurred_at: None,
        payload: Some(Payload::Invoice(pb::InvoiceIssued {
            invoice_id: format!("inv-{id}"),
            number,
            total: Some(Money { amount_minor: 1_000 * number, currency: "EUR".into() }),
        })),
    };
    let call = || {
        vec![
            invoice("a1", ACCOUNT, 1),
            invoice("b1", "acct-b", 1),
            invoice("c1", "acct-c", 1),
            invoice("b2", "acct-b", 2),
            invoice("a2", ACCOUNT, 2),
        ]
    };
    contactier_runtime::testing::poison(&s.db.db, "inbox", "NEW.account_id = 'acct-b'", "ABORT").await;
    let token = s.auth.service_token("billing", chrono::Duration::hours(1));
    let send = || {
        let (mut c, token) = (s.internal(), token.clone());
        let req = pb::ApplyBillingEventsRequest { events: call() };
        async move { c.apply_billing_events(authed(req, &token)).await.map(tonic::Response::into_inner) }
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
    assert_eq!(refused, [("b1", tonic::Code::Internal as i32)], "{backend:?}: b's first, with why");
    let numbers =
        |alerts: Vec<pb::Alert>| -> Vec<String> { alerts.into_iter().rev().map(|a| a.invoice_id).collect() };
    assert_eq!(numbers(s.alerts(ACCOUNT).await), ["inv-a1", "inv-a2"], "{backend:?}");
    assert_eq!(numbers(s.alerts("acct-c").await), ["inv-c1"], "{backend:?}");
    assert!(s.alerts("acct-b").await.is_empty(), "{backend:?}: none of b's applied");
    // A call of the failing account alone fails whole, with its status.
    let e = s.apply(vec![invoice("b1", "acct-b", 1)]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{backend:?}: {e:?}");

    // Mended, the same call again: b's applied, the others' taken as seen.
    contactier_runtime::testing::cure(&s.db.db, "inbox").await;
    let answer = send().await.unwrap();
    assert_eq!(answer.acknowledged_event_ids.len(), 5, "{backend:?}");
    assert!(answer.refused.is_empty(), "{backend:?}");
    assert_eq!(numbers(s.alerts("acct-b").await), ["inv-b1", "inv-b2"], "{backend:?}");
    assert_eq!(numbers(s.alerts(ACCOUNT).await), ["inv-a1", "inv-a2"], "{backend:?}: a's once");
}

contactier_runtime::backend_tests!(
    a_failing_accounts_events_are_named_and_the_others_applied,
    each_threshold_fires_once_per_tier_and_period,
    upgrade_and_invoice_notices_and_paging,
    many_accounts_notices_in_one_call_fire_each_once_in_order,
    bad_events_are_refused_whole_and_only_services_may_send_them,
    the_watch_stream_resumes_without_missing_an_alert,
    webhooks_are_signed_and_a_failing_receiver_is_retried_then_dead_lettered,
    many_silent_receivers_of_one_account_do_not_crowd_out_another,
    a_webhook_that_never_answers_times_out_without_holding_up_others,
    accounts_never_see_or_touch_each_others_notifications,
    usage_states_in_any_order_fire_the_same_alerts,
);
