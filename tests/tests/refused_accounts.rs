//! One account that a receiver along the chain cannot write (contacts -> marketing-status ->
//! billing -> notification), as an operator meets it, over every service on the manual clock,
//! both backends: every other account's changes arrive, the sender lists the account's event as
//! failing with the receiver's reason, named as the receiver's log names it; mended, the account's
//! changes arrive once.

use chrono::{DateTime, TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, Term};
use contactier_proto::notification::v1::AlertKind;
use contactier_proto::ops::v1::{self as opb, work_service_client::WorkServiceClient};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::{authed, cure, poison};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

const A: &str = "acct-a";
const B: &str = "acct-b";

/// 20 April 2026, 12:00 in New York.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

/// Every warning the services log in this process, as JSON lines.
fn logged() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The event the receiver last logged as not applied for the failing item's account, checked
/// to be the one the item's reason names.
fn named_as_logged(item: &opb::FailingWork, backend: Backend) -> String {
    let log = logged().lock().unwrap();
    let logged: Vec<String> = String::from_utf8_lossy(&log)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"] == "an account's events were not applied"
                && l["fields"]["account"] == item.account_id.as_str()
        })
        .map(|l| l["fields"]["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    let last = logged.last().cloned().unwrap_or_default();
    assert!(
        !last.is_empty() && item.last_error.contains(&format!("event {last}: ")),
        "{backend:?}: {item:?} against the log's {logged:?}"
    );
    last
}

async fn usage(s: &System, account: &str) -> bpb::Usage {
    let mut billing = BillingServiceClient::new(s.channel("billing"));
    let r = billing.get_usage(authed(bpb::GetUsageRequest {}, &s.user_token(account, &["read"]))).await;
    r.unwrap().into_inner().usage.unwrap()
}

/// `account`'s failing work in `service`, as the operators' account lists it.
async fn failing(s: &System, service: &str, account: &str) -> Vec<opb::FailingWork> {
    let req = opb::ListFailingWorkRequest { page_size: 100, page_token: String::new() };
    let token = s.token("ops", "operator", &["ops"]);
    let mut work = WorkServiceClient::new(s.channel(service));
    let items = work.list_failing_work(authed(req, &token)).await.unwrap().into_inner().items;
    items.into_iter().filter(|f| f.account_id == account).collect()
}

async fn seventy_five(s: &System, account: &str) -> usize {
    s.alerts(account).await.iter().filter(|a| a.kind() == AlertKind::Threshold75).count()
}

async fn a_refused_account_holds_up_no_other(backend: Backend) {
    let s = System::start(backend, start()).await;
    let mut now = start();
    let mut later = |minutes| {
        now += chrono::Duration::minutes(minutes);
        now
    };
    for account in [A, B] {
        let req = subscription(Edition::Starter, Term::Monthly, Date { year: 2026, month: 4, day: 15 });
        let mut billing = BillingServiceClient::new(s.channel("billing"));
        billing.create_subscription(authed(req, &s.user_token(account, &["admin"]))).await.unwrap();
    }
    let mut signed = 0;

    // 1. marketing-status cannot write A's statuses, then 2. billing A's counts.
    let when = format!("NEW.account_id = '{A}'");
    for (receiver, table, sender) in
        [("marketing-status", "contact_status", "contacts"), ("billing", "inbox", "marketing-status")]
    {
        poison(s.db(receiver), table, &when, "ABORT").await;
        for account in [A, B] {
            s.sign_ups(account, signed, 5).await;
        }
        signed += 5;
        s.advance_to(later(1)).await;
        let counts = (usage(&s, A).await.marketing_count, usage(&s, B).await.marketing_count);
        assert_eq!(counts, (signed as i64 - 5, signed as i64), "{backend:?}: {receiver}");
        let listed = failing(&s, sender, A).await;
        assert_eq!(listed.len(), 1, "{backend:?}: {listed:?}");
        let logged = named_as_logged(&listed[0], backend);
        // The contacts relay lists a batch of contact events under its own id; the reason names
        // the one marketing-status logged. The others list the event itself.
        if sender != "contacts" {
            assert_eq!(logged, listed[0].item, "{backend:?}");
        }
        assert!(failing(&s, sender, B).await.is_empty(), "{backend:?}");
        cure(s.db(receiver), table).await;
        s.advance_to(later(10)).await;
        assert_eq!(usage(&s, A).await.marketing_count, signed as i64, "{backend:?}: A's arrived once mended");
        assert!(failing(&s, sender, A).await.is_empty(), "{backend:?}");
    }

    // 3. notification cannot write A's events: both accounts cross 75 % of their tier.
    let tier = usage(&s, B).await.tier as usize;
    let past = tier * 3 / 4 + 1 - signed;
    poison(s.db("notification"), "inbox", &when, "ABORT").await;
    for account in [A, B] {
        s.sign_ups(account, signed, past).await;
    }
    s.advance_to(later(1)).await;
    assert_eq!((seventy_five(&s, A).await, seventy_five(&s, B).await), (0, 1), "{backend:?}");
    let listed = failing(&s, "billing", A).await;
    assert_eq!(listed.len(), 1, "{backend:?}: {listed:?}");
    assert_eq!(named_as_logged(&listed[0], backend), listed[0].item, "{backend:?}");
    cure(s.db("notification"), "inbox").await;
    s.advance_to(later(10)).await;
    assert_eq!((seventy_five(&s, A).await, seventy_five(&s, B).await), (1, 1), "{backend:?}: once each");
    assert!(failing(&s, "billing", A).await.is_empty(), "{backend:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_a_receiver_cannot_write_holds_up_no_other_along_the_chain() {
    logged();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        a_refused_account_holds_up_no_other(backend).await;
        println!("{backend:?}: passed");
    }
}
