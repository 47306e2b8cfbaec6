//! The whole product on both backends, every service its own server: contacts from forms, an
//! import and the API; defaults, bulk status changes by filter and by a workflow over a list;
//! counts reaching billing, alerts, an automatic upgrade and its next-day invoice, renewals, the
//! seeds' update-date rule, a delete that frees capacity without a downgrade, a GDPR erasure
//! across services, and marketing-status stopped and restarted mid-flow.

use chrono::{DateTime, TimeZone, Utc};
use contactier_client::Calls;
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::contacts::v1::{
    self as cpb, FilterOperator as Op, contacts_service_client::ContactsServiceClient,
};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::db::Backend;

const ACCOUNT: &str = "acct-a";

fn at(m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, m, d, h, 0, 0).unwrap()
}

struct Clients {
    contacts: ContactsServiceClient<Calls>,
    status: MarketingStatusServiceClient<Calls>,
    billing: BillingServiceClient<Calls>,
}

impl Clients {
    fn new(s: &System) -> Self {
        let client = s.client(ACCOUNT, &["admin"]);
        Clients { contacts: client.contacts(), status: client.marketing_status(), billing: client.billing() }
    }

    async fn usage(&mut self) -> bpb::Usage {
        let r = self.billing.get_usage(bpb::GetUsageRequest {}).await.unwrap();
        r.into_inner().usage.unwrap()
    }

    async fn invoices(&mut self) -> Vec<bpb::Invoice> {
        let req = bpb::ListInvoicesRequest { page_size: 100, page_token: String::new() };
        let mut v = self.billing.list_invoices(req).await.unwrap().into_inner().invoices;
        v.reverse();
        v
    }

    /// Sign-ups through a form, a batch call per 1,000.
    async fn form_contacts(&mut self, from: usize, n: usize, company: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for start in (from..from + n).step_by(1_000) {
            let contacts = (start..(start + 1_000).min(from + n))
                .map(|i| cpb::ContactInput {
                    email: format!("lead{i}@example.com"),
                    properties: [("company".to_owned(), company.to_owned())].into(),
                    source: Some(Source { r#type: SourceType::Form as i32, id: "signup-form".into() }),
                    requested_status: 0,
                })
                .collect();
            let req = cpb::BatchCreateContactsRequest { contacts, request_id: format!("form-{start}") };
            let r = self.contacts.batch_create_contacts(req).await.unwrap().into_inner();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            ids.extend(r.results.into_iter().map(|c| c.contact.unwrap().id));
        }
        ids
    }

    async fn set_by_filter(
        &mut self,
        filter: cpb::ContactFilter,
        status: MarketingStatus,
        request_id: &str,
    ) -> mpb::SetMarketingStatusResponse {
        let req = mpb::SetMarketingStatusRequest {
            request_id: request_id.into(),
            target: Some(mpb::set_marketing_status_request::Target::Filter(filter)),
            status: status as i32,
            source: None,
        };
        self.status.set_marketing_status(req).await.unwrap().into_inner()
    }
}

fn company(name: &str) -> cpb::ContactFilter {
    let f = cpb::Filter {
        property: "company".into(),
        operator: Op::Eq as i32,
        value: name.into(),
        ..Default::default()
    };
    cpb::ContactFilter { groups: vec![cpb::FilterGroup { filters: vec![f] }] }
}

async fn the_product_end_to_end(backend: Backend) {
    use npb::AlertKind::*;
    // 29 April 2026, 12:00 in New York. The account bought Professional monthly on 1 April.
    let mut s = System::start(backend, at(4, 29, 16)).await;
    let mut c = Clients::new(&s);
    let sub = subscription(Edition::Professional, Term::Monthly, Date { year: 2026, month: 4, day: 1 });
    c.billing.create_subscription(sub).await.unwrap();

    // 1,400 sign-ups through forms: marketing by default.
    c.form_contacts(0, 1_400, "Signups").await;
    // 600 imported: non-marketing by default, 300 of them at Acme.
    let mut csv = String::from("Email,Company\n");
    for i in 0..600 {
        csv.push_str(&format!("imported{i}@example.com,{}\n", if i < 300 { "Acme" } else { "Globex" }));
    }
    let header = cpb::ImportHeader {
        name: "trade fair".into(),
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [
            ("Email".to_owned(), "email".to_owned()),
            ("Company".to_owned(), "company".to_owned()),
        ]
        .into(),
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
    let mut progress = c.contacts.import_contacts(futures::stream::iter(parts)).await.unwrap().into_inner();
    let mut last = None;
    while let Some(m) = progress.message().await.unwrap() {
        last = m.progress;
    }
    assert_eq!(last.unwrap().created, 600, "{backend:?}");
    s.advance_to(at(4, 29, 17)).await;
    let u = c.usage().await;
    assert_eq!(
        (u.marketing_count, u.total_contacts, u.tier),
        (1_400, 2_000, 2_000),
        "{backend:?}: defaults applied"
    );

    // Acme's 300 set marketing by filter: 1,700 of 2,000 (85 %).
    let r = c.set_by_filter(company("Acme"), MarketingStatus::Marketing, "acme-1").await;
    assert_eq!(r.changed, 300, "{backend:?}");
    s.advance_to(at(4, 29, 18)).await;
    assert_eq!(c.usage().await.marketing_count, 1_700);

    // marketing-status restarts while 200 more sign up; nothing is lost or counted twice.
    s.stop("marketing-status").await;
    c.form_contacts(1_400, 200, "Signups").await;
    s.advance_to(at(4, 29, 19)).await;
    s.restart("marketing-status").await;
    let mut c = Clients::new(&s);
    s.advance_to(at(4, 29, 20)).await;
    let u = c.usage().await;
    assert_eq!((u.marketing_count, u.total_contacts), (1_900, 2_200), "{backend:?}: after the restart");

    // 30 April: a workflow sets a static list of 200 Globex contacts marketing: 2,100
    // exceeds the 2,000 tier and upgrades to 7,000 at once.
    s.advance_to(at(4, 30, 15)).await;
    let globex = c
        .contacts
        .search_contacts(cpb::SearchContactsRequest {
            filter: Some(company("Globex")),
            page_size: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let list = c
        .contacts
        .create_list(cpb::CreateListRequest {
            name: "Globex VIPs".into(),
            r#type: cpb::ListType::Static as i32,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    let ids: Vec<String> = globex.contacts.iter().map(|x| x.id.clone()).collect();
    c.contacts
        .add_list_members(cpb::AddListMembersRequest { list_id: list.id.clone(), contact_ids: ids })
        .await
        .unwrap();
    let w = mpb::Workflow {
        name: "VIPs are marketing".into(),
        target: Some(mpb::workflow::Target::ListId(list.id.clone())),
        action: mpb::WorkflowAction::SetMarketing as i32,
        ..Default::default()
    };
    let w = c
        .status
        .create_workflow(mpb::CreateWorkflowRequest { workflow: Some(w) })
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    let run = mpb::RunWorkflowRequest { workflow_id: w.id, request_id: "vip-run".into() };
    let run = c.status.run_workflow(run).await.unwrap().into_inner().run.unwrap();
    s.advance_to(at(4, 30, 16)).await;
    let run = c
        .status
        .get_workflow_run(mpb::GetWorkflowRunRequest { id: run.id })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!((run.state(), run.changed), (mpb::WorkflowRunState::Succeeded, 200), "{backend:?}");
    let u = c.usage().await;
    assert_eq!((u.marketing_count, u.tier), (2_100, 7_000), "{backend:?}: upgraded the moment it exceeded");

    // 1 May, 00:00 New York: the upgrade is invoiced for its one day of 30, and the term
    // renews at 7,000. The alerts came as they happened.
    s.advance_to(at(5, 1, 4)).await;
    let inv = c.invoices().await;
    let kinds: Vec<_> = inv.iter().map(|i| (i.kind(), i.total.as_ref().unwrap().amount_minor)).collect();
    assert!(kinds.contains(&(bpb::InvoiceKind::Upgrade, 750)), "{backend:?}: 22,500 x 1/30: {kinds:?}");
    assert!(kinds.contains(&(bpb::InvoiceKind::Renewal, 102_500)), "{backend:?}: {kinds:?}");
    let alerts: Vec<npb::AlertKind> =
        s.alerts(ACCOUNT).await.iter().rev().map(contactier_proto::notification::v1::Alert::kind).collect();
    assert_eq!(
        &alerts[..5],
        [Threshold75, Threshold90, Threshold98, TierExceeded, TierUpgraded],
        "{backend:?}"
    );

    // 15 May: Acme set non-marketing still counts until the next update date (1 June).
    s.advance_to(at(5, 15, 16)).await;
    let r = c.set_by_filter(company("Acme"), MarketingStatus::NonMarketing, "acme-2").await;
    assert_eq!(r.changed, 300);
    s.advance_to(at(5, 15, 17)).await;
    assert_eq!(c.usage().await.marketing_count, 2_100, "{backend:?}: pending still counts");
    // Deleting 100 sign-ups frees their places at once; the tier stays.
    let some = c
        .contacts
        .search_contacts(cpb::SearchContactsRequest {
            filter: Some(company("Signups")),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = some.contacts.iter().map(|x| x.id.clone()).collect();
    c.contacts.batch_delete_contacts(cpb::BatchDeleteContactsRequest { ids: ids.clone() }).await.unwrap();
    s.advance_to(at(5, 15, 18)).await;
    let u = c.usage().await;
    assert_eq!(
        (u.marketing_count, u.total_contacts, u.tier),
        (2_000, 2_100, 7_000),
        "{backend:?}: no downgrade"
    );

    // 1 June: billing has the update date applied; Acme leaves the count; June renews.
    s.advance_to(at(6, 1, 5)).await;
    let u = c.usage().await;
    assert_eq!((u.marketing_count, u.period_count, u.tier), (1_700, 1_700, 7_000), "{backend:?}");
    let renewals = c.invoices().await.into_iter().filter(|i| i.kind() == bpb::InvoiceKind::Renewal).count();
    assert_eq!(renewals, 2, "{backend:?}");

    // GDPR erasure of one sign-up: gone from contacts and marketing-status, count and all.
    let keep = some.contacts.len();
    assert_eq!(keep, 100);
    let victim = c.form_contacts(5_000, 1, "Signups").await.remove(0);
    s.advance_to(at(6, 1, 6)).await;
    assert_eq!(c.usage().await.marketing_count, 1_701);
    c.contacts
        .erase_contact(cpb::EraseContactRequest { contact_id: victim.clone(), ..Default::default() })
        .await
        .unwrap();
    s.advance_to(at(6, 1, 7)).await;
    assert_eq!(c.usage().await.marketing_count, 1_700, "{backend:?}");
    let st = c.status.get_contact_status(mpb::GetContactStatusRequest { contact_id: victim.clone() }).await;
    assert_eq!(st.unwrap_err().code(), tonic::Code::NotFound, "{backend:?}");
    let trail = c
        .status
        .list_status_changes(mpb::ListStatusChangesRequest { contact_id: victim, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(trail.changes.is_empty(), "{backend:?}: no history left");
}

async fn an_annual_account_applies_requests_on_each_first_and_renews_once_a_year(backend: Backend) {
    // 10 May 2026, 12:00 in New York; Starter, annual, bought 15 April.
    let s = System::start(backend, at(5, 10, 16)).await;
    let mut c = Clients::new(&s);
    let sub = bpb::CreateSubscriptionRequest {
        edition: Edition::Starter as i32,
        term: Term::Annual as i32,
        start_date: Some(Date { year: 2026, month: 4, day: 15 }),
        currency: "USD".into(),
        subsidiary: "NA".into(),
        tier: 0,
        marketing_contacts_enabled: true,
    };
    c.billing.create_subscription(sub).await.unwrap();
    c.form_contacts(0, 400, "Signups").await;
    c.form_contacts(400, 100, "Leavers").await;
    s.advance_to(at(5, 10, 17)).await;
    // Starter's first tier holds them.
    assert_eq!((c.usage().await.marketing_count, c.usage().await.tier), (500, 1_000), "{backend:?}");

    c.set_by_filter(company("Leavers"), MarketingStatus::NonMarketing, "leave").await;
    s.advance_to(at(5, 31, 12)).await;
    assert_eq!(c.usage().await.marketing_count, 500, "{backend:?}: pending until the 1st");
    // 1 June 00:00 New York is 04:00 UTC: an annual term's update date.
    s.advance_to(at(6, 1, 4)).await;
    let u = c.usage().await;
    assert_eq!((u.marketing_count, u.period_count), (400, 400), "{backend:?}");
    assert!(c.invoices().await.is_empty(), "{backend:?}: no renewal before April");

    // A year on: eleven more firsts and one renewal invoice at the same tier.
    s.advance_to(Utc.with_ymd_and_hms(2027, 4, 16, 0, 0, 0).unwrap()).await;
    let inv = c.invoices().await;
    assert_eq!(inv.len(), 1, "{backend:?}");
    assert_eq!(
        (inv[0].kind(), inv[0].term_start),
        (bpb::InvoiceKind::Renewal, Some(Date { year: 2027, month: 4, day: 15 }))
    );
    assert_eq!(
        inv[0].total.as_ref().unwrap().amount_minor,
        21_600,
        "{backend:?}: Starter 1,000, a year in USD"
    );
    assert_eq!(c.usage().await.period_count, 400);
}

contactier_runtime::backend_tests!(
    the_product_end_to_end,
    an_annual_account_applies_requests_on_each_first_and_renews_once_a_year,
);
