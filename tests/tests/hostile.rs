//! What a hostile tenant tried, and must not get away with, over gRPC on both backends: each
//! numbered case of the report it came from is a test here. Every service runs as its own
//! server with its own database, on one manual clock. (Connection floods are in
//! `libs/runtime/tests/connections.rs`; JWT `nbf` in the runtime's auth tests.)

use chrono::{DateTime, TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::notification::v1::{
    self as npb, notification_service_client::NotificationServiceClient,
};
use contactier_proto::ops::v1::{self as opb, work_service_client::WorkServiceClient};
use contactier_runtime::db::Backend;
use contactier_runtime::sql::Sql;
use contactier_runtime::testing::authed;
use tonic::Code;
use tonic::transport::Channel;

const A: &str = "acct-a";
const B: &str = "acct-b";

/// 20 April 2026, 12:00 in New York.
fn noon_20_april() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

fn april(day: i32) -> Date {
    Date { year: 2026, month: 4, day }
}

fn contacts(s: &System) -> ContactsServiceClient<Channel> {
    ContactsServiceClient::new(s.channel("contacts"))
}

fn status(s: &System) -> MarketingStatusServiceClient<Channel> {
    MarketingStatusServiceClient::new(s.channel("marketing-status"))
}

fn billing(s: &System) -> BillingServiceClient<Channel> {
    BillingServiceClient::new(s.channel("billing"))
}

fn notification(s: &System) -> NotificationServiceClient<Channel> {
    NotificationServiceClient::new(s.channel("notification"))
}

fn input(email: &str, source: SourceType) -> cpb::ContactInput {
    cpb::ContactInput {
        email: email.into(),
        source: Some(Source { r#type: source as i32, id: String::new() }),
        ..Default::default()
    }
}

/// `n` form sign-ups of `account` (marketing by default), a batch per 1,000.
async fn form_signups(s: &System, account: &str, n: usize) {
    let admin = s.user_token(account, &["admin"]);
    for start in (0..n).step_by(1_000) {
        let batch =
            (start..(start + 1_000).min(n)).map(|i| input(&format!("lead{i}@example.com"), SourceType::Form));
        let req = cpb::BatchCreateContactsRequest { contacts: batch.collect(), request_id: String::new() };
        let r = contacts(s).batch_create_contacts(authed(req, &admin)).await.unwrap().into_inner();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
}

async fn subscribe(s: &System, account: &str, edition: Edition) {
    let req = subscription(edition, Term::Monthly, april(15));
    billing(s).create_subscription(authed(req, &s.user_token(account, &["admin"]))).await.unwrap();
}

async fn failing_work(s: &System, service: &str) -> Vec<opb::FailingWork> {
    failing_work_as(s, service, "ops").await
}

/// The failing work of `service` as a token of `account` with the `ops` scope sees it.
async fn failing_work_as(s: &System, service: &str, account: &str) -> Vec<opb::FailingWork> {
    let req = opb::ListFailingWorkRequest { page_size: 100, page_token: String::new() };
    let token = s.token(account, "operator", &["ops"]);
    WorkServiceClient::new(s.channel(service))
        .list_failing_work(authed(req, &token))
        .await
        .unwrap()
        .into_inner()
        .items
}

fn invalid(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with(field), "expected {field}: {}", err.message());
}

/// Case 1: A subscription cannot start after today; an account whose invoice fails is recorded and
/// retried on its own while every other account is invoiced.
async fn a_failing_invoice_holds_up_no_other_account(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let future = subscription(Edition::Starter, Term::Monthly, april(21));
    let err =
        billing(&s).create_subscription(authed(future, &s.user_token(A, &["admin"]))).await.unwrap_err();
    invalid(&err, "start_date");
    assert!(err.message().contains("2026-04-20"), "{}", err.message());

    for account in [A, B] {
        subscribe(&s, account, Edition::Starter).await;
        form_signups(&s, account, 1_001).await;
    }
    s.advance_to(noon_20_april() + chrono::Duration::minutes(1)).await;
    // Account A's data goes bad: its subscription names a currency the price book lacks.
    let spoil = "UPDATE subscriptions SET currency = 'XXX' WHERE account_id = $1";
    s.db("billing").execute(Sql::new(spoil).bind(A)).await.unwrap();

    // The next day's processing time: B's invoice is issued all the same.
    let next_day = Utc.with_ymd_and_hms(2026, 4, 21, 4, 0, 0).unwrap();
    s.advance_to(next_day + chrono::Duration::minutes(1)).await;
    let list = bpb::ListInvoicesRequest { page_size: 10, page_token: String::new() };
    let b_invoices =
        billing(&s).list_invoices(authed(list.clone(), &s.user_token(B, &["read"]))).await.unwrap();
    assert_eq!(b_invoices.into_inner().invoices.len(), 1, "{backend:?}: B was invoiced");

    let failing = failing_work(&s, "billing").await;
    let a =
        failing.iter().find(|f| f.worker == "billing-invoices").expect("A's invoice is listed as failing");
    assert_eq!((a.account_id.as_str(), a.item.as_str()), (A, "upgrade:2026-04-20"), "{backend:?}");
    // Backed off (5 s, 10 s, 20 s ...): a handful of tries in a minute, not a loop.
    assert!((1..=5).contains(&a.attempts), "{backend:?}: {} attempts in a minute", a.attempts);
    assert!(!a.last_error.is_empty());
    // The operators' account sees every account's; another account's token with the `ops`
    // scope sees its own account's only, not A's id and error.
    let as_b = failing_work_as(&s, "billing", B).await;
    assert!(as_b.iter().all(|f| f.account_id == B), "{backend:?}: B's ops token saw {as_b:?}");
    let as_a = failing_work_as(&s, "billing", A).await;
    assert!(as_a.iter().any(|f| f.worker == "billing-invoices"), "{backend:?}: A sees its own");
    assert!(as_a.iter().all(|f| f.account_id == A), "{backend:?}: {as_a:?}");

    // Mended, A is invoiced at its next try and nothing is failing any more.
    let mend = "UPDATE subscriptions SET currency = 'EUR' WHERE account_id = $1";
    s.db("billing").execute(Sql::new(mend).bind(A)).await.unwrap();
    s.advance_to(next_day + chrono::Duration::minutes(30)).await;
    let a_invoices = billing(&s).list_invoices(authed(list, &s.user_token(A, &["read"]))).await.unwrap();
    assert_eq!(a_invoices.into_inner().invoices.len(), 1, "{backend:?}: A invoiced once mended");
    assert!(failing_work(&s, "billing").await.iter().all(|f| f.worker != "billing-invoices"));
}

/// Case 2: A NUL character is refused naming its field, on both backends alike; a batch or an
/// import with one such cell writes its good records.
async fn nul_characters_are_refused_and_good_records_written(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let writer = s.user_token(A, &["write"]);
    let mut bad = input("nul@example.com", SourceType::User);
    bad.properties.insert("first_name".into(), "A\0da".into());
    let req = cpb::CreateContactRequest { contact: Some(bad.clone()), request_id: String::new() };
    invalid(
        &contacts(&s).create_contact(authed(req, &writer)).await.unwrap_err(),
        "contact.properties.first_name",
    );
    let req =
        cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Email("x\0@example.com".into())) };
    invalid(&contacts(&s).get_contact(authed(req, &writer)).await.unwrap_err(), "email");

    let batch =
        vec![input("good1@example.com", SourceType::User), bad, input("good2@example.com", SourceType::User)];
    let req = cpb::BatchCreateContactsRequest { contacts: batch, request_id: String::new() };
    let r = contacts(&s).batch_create_contacts(authed(req, &writer)).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 2, "{backend:?}");
    assert_eq!((r.errors[0].index, r.errors[0].field.as_str()), (1, "contacts[1].properties.first_name"));

    let file = "Email,First\nrow1@example.com,One\nrow2@example.com,T\0wo\nrow3@example.com,Three\n";
    let summary = import(&s, &writer, file, cpb::ImportHeader::default()).await;
    assert_eq!((summary.rows_read, summary.created, summary.failed), (3, 2, 1), "{backend:?}");
}

async fn import(s: &System, token: &str, file: &str, header: cpb::ImportHeader) -> cpb::ImportSummary {
    let header = cpb::ImportHeader {
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [
            ("Email".to_owned(), "email".to_owned()),
            ("First".to_owned(), "first_name".to_owned()),
        ]
        .into(),
        ..header
    };
    let mut parts =
        vec![cpb::ImportContactsRequest { part: Some(cpb::import_contacts_request::Part::Header(header)) }];
    for chunk in file.as_bytes().chunks(64 * 1024) {
        parts.push(cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Chunk(chunk.to_vec())),
        });
    }
    let size = file.len() as i64;
    parts.push(cpb::ImportContactsRequest {
        part: Some(cpb::import_contacts_request::Part::End(cpb::ImportEnd { size })),
    });
    let mut progress =
        contacts(s).import_contacts(authed(futures::stream::iter(parts), token)).await.unwrap().into_inner();
    let mut last = None;
    while let Some(p) = progress.message().await.unwrap() {
        last = p.progress;
    }
    last.expect("a summary")
}

/// Case 3: Webhooks reach public https addresses only, however the address is spelled; a delivery
/// to a recipient that no longer passes is not sent.
async fn webhooks_cannot_reach_the_cluster(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    let webhook = |url: &str| npb::CreateRecipientRequest {
        target: Some(npb::create_recipient_request::Target::Webhook(npb::WebhookTarget {
            url: url.into(),
            secret: String::new(),
        })),
    };
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1:5432/",
        "https://localhost/hook",
        "https://[::1]/",
        "https://0.0.0.0/",
        "https://2130706433/",
        "http://hooks.example.com/",
    ] {
        let err = notification(&s).create_recipient(authed(webhook(url), &admin)).await.unwrap_err();
        invalid(&err, "webhook.url");
    }
    // A recipient stored before these rules, pointing at a port on this host that listens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let old = Sql::new(
        "INSERT INTO recipients (account_id, id, kind, address, secret, created_at) \
         VALUES ($1, 'r-old', 'webhook', $2, $3, 0)",
    )
    .bind(A)
    .bind(format!("http://127.0.0.1:{port}/"))
    .bind("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    s.db("notification").execute(old).await.unwrap();
    subscribe(&s, A, Edition::Starter).await;
    form_signups(&s, A, 760).await;
    s.advance_to(noon_20_april() + chrono::Duration::minutes(1)).await;
    let req =
        npb::ListDeliveriesRequest { alert_id: String::new(), page_size: 50, page_token: String::new() };
    let deliveries =
        notification(&s).list_deliveries(authed(req, &admin)).await.unwrap().into_inner().deliveries;
    assert!(!deliveries.is_empty(), "{backend:?}: the 75 % alert was to be delivered");
    for d in &deliveries {
        for a in &d.attempts {
            assert_eq!(a.status_code, 0);
            assert!(a.error.starts_with("webhook URL refused"), "{backend:?}: {}", a.error);
        }
    }
    assert!(listener.accept().is_err(), "{backend:?}: nothing connected to the internal port");
}

/// Case 5: One record far over the cap (an unclosed quote) is one refused row; the rows before it
/// are written.
async fn an_unclosed_quote_is_one_refused_row(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let writer = s.user_token(A, &["write"]);
    let mut file = String::from("Email,First\nfirst@example.com,One\nsecond@example.com,\"");
    file.push_str(&"x".repeat(3 << 20));
    let summary = import(&s, &writer, &file, cpb::ImportHeader::default()).await;
    assert_eq!(summary.state(), cpb::ImportState::Completed, "{backend:?}");
    assert_eq!((summary.rows_read, summary.created, summary.failed), (2, 1, 1), "{backend:?}");
    let req = cpb::ListImportErrorsRequest {
        import_id: summary.import_id,
        page_size: 10,
        page_token: String::new(),
    };
    let errors = contacts(&s).list_import_errors(authed(req, &writer)).await.unwrap().into_inner().errors;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].reason.contains("bytes"), "{}", errors[0].reason);
}

/// Case 6: WatchAlerts streams are capped per account; one alert reaches every open stream of the
/// account, and another account still watches its own.
async fn watch_streams_are_capped_and_share_their_alerts(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let reader = s.user_token(A, &["read"]);
    let watch = |token: String| {
        let mut client = notification(&s);
        async move { client.watch_alerts(authed(npb::WatchAlertsRequest { after_sequence: 0 }, &token)).await }
    };
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(watch(reader.clone()).await.unwrap().into_inner());
    }
    let err = watch(reader.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{backend:?}: {err:?}");
    let mut other =
        watch(s.user_token(B, &["read"])).await.expect("another account watches its own").into_inner();

    subscribe(&s, A, Edition::Starter).await;
    form_signups(&s, A, 760).await;
    s.advance_to(noon_20_april() + chrono::Duration::minutes(1)).await;
    for stream in &mut streams {
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await;
        let alert = first.expect("the alert arrives").unwrap().unwrap().alert.unwrap();
        assert_eq!(alert.kind(), npb::AlertKind::Threshold75, "{backend:?}");
    }
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(300), other.message()).await;
    assert!(nothing.is_err(), "{backend:?}: B saw nothing of A's");
    // A stream closed frees its place.
    streams.pop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(watch(reader).await.is_ok(), "{backend:?}");
}

/// Case 7 and 8: Numbers and dates outside their ranges are refused naming the field; nothing
/// panics and nothing answers INTERNAL.
async fn numbers_and_dates_out_of_range_are_refused(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    for year in [0, -5, 9999, 1999, 2200] {
        let req = subscription(Edition::Starter, Term::Monthly, Date { year, month: 1, day: 1 });
        invalid(&billing(&s).create_subscription(authed(req, &admin)).await.unwrap_err(), "start_date");
    }
    subscribe(&s, A, Edition::Starter).await;
    for n in [i64::MAX, -1, 1_000_000_001] {
        let req = bpb::PreviewUpgradeRequest { additional_contacts: n };
        invalid(&billing(&s).preview_upgrade(authed(req, &admin)).await.unwrap_err(), "additional_contacts");
    }
    let req = bpb::PreviewUpgradeRequest { additional_contacts: 1_000_000_000 };
    let err = billing(&s).preview_upgrade(authed(req, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
    let req = bpb::PreviewUpgradeRequest { additional_contacts: 2_500 };
    let ok = billing(&s).preview_upgrade(authed(req, &admin)).await.unwrap().into_inner();
    assert_eq!(ok.new_tier, 3_000, "{backend:?}");
}

/// Case 9 and 13: Text past its cap is refused naming the field: filter values, list names, labels,
/// legal bases, user ids, request ids, webhook URLs, enumeration options.
async fn text_past_its_cap_is_refused(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    let megabyte = "x".repeat(1 << 20);
    let contains = |value: String| cpb::SearchContactsRequest {
        filter: Some(cpb::ContactFilter {
            groups: vec![cpb::FilterGroup {
                filters: vec![cpb::Filter {
                    property: "email".into(),
                    operator: cpb::FilterOperator::Contains as i32,
                    value,
                    ..Default::default()
                }],
            }],
        }),
        ..Default::default()
    };
    let err = contacts(&s).search_contacts(authed(contains(megabyte.clone()), &admin)).await.unwrap_err();
    invalid(&err, "filter.groups[0].filters[0].value");
    // At the cap the search runs on either backend.
    contacts(&s).search_contacts(authed(contains("%_\\".repeat(1_365)), &admin)).await.unwrap();

    let list =
        cpb::CreateListRequest { name: megabyte.clone(), r#type: cpb::ListType::Static as i32, filter: None };
    invalid(&contacts(&s).create_list(authed(list, &admin)).await.unwrap_err(), "name");
    let options =
        (0..100_000).map(|i| cpb::PropertyOption { value: format!("o{i}"), label: format!("O{i}") });
    let property = cpb::PropertyDefinition {
        name: "size".into(),
        label: "Size".into(),
        r#type: cpb::PropertyType::Enumeration as i32,
        options: options.collect(),
        ..Default::default()
    };
    let req = cpb::CreatePropertyRequest { property: Some(property) };
    invalid(&contacts(&s).create_property(authed(req, &admin)).await.unwrap_err(), "property.options");
    let property = cpb::PropertyDefinition {
        name: "size".into(),
        label: megabyte.clone(),
        r#type: cpb::PropertyType::SingleLineText as i32,
        ..Default::default()
    };
    let req = cpb::CreatePropertyRequest { property: Some(property) };
    invalid(&contacts(&s).create_property(authed(req, &admin)).await.unwrap_err(), "property.label");
    let consent = cpb::SetConsentRequest {
        contact_id: "c".into(),
        consent: Some(cpb::Consent { legal_basis: megabyte.clone(), ..Default::default() }),
    };
    invalid(&contacts(&s).set_consent(authed(consent, &admin)).await.unwrap_err(), "consent.legal_basis");
    let permission = mpb::SetUserPermissionRequest {
        permission: Some(mpb::UserPermission { user_id: megabyte.clone(), may_set_marketing: false }),
    };
    invalid(
        &status(&s).set_user_permission(authed(permission, &admin)).await.unwrap_err(),
        "permission.user_id",
    );
    let create = cpb::CreateContactRequest {
        contact: Some(input("a@example.com", SourceType::User)),
        request_id: megabyte.clone(),
    };
    invalid(&contacts(&s).create_contact(authed(create, &admin)).await.unwrap_err(), "request_id");
    let hook = npb::CreateRecipientRequest {
        target: Some(npb::create_recipient_request::Target::Webhook(npb::WebhookTarget {
            url: format!("https://hooks.example.com/{megabyte}"),
            secret: String::new(),
        })),
    };
    invalid(&notification(&s).create_recipient(authed(hook, &admin)).await.unwrap_err(), "webhook.url");
    // Nothing of it was kept.
    let lists = cpb::ListListsRequest { page_size: 10, page_token: String::new() };
    assert!(contacts(&s).list_lists(authed(lists, &admin)).await.unwrap().into_inner().lists.is_empty());
}

/// Case 10: Without the permission to set marketing, a user creates no marketing contact under any
/// source; sources that systems set need a service token or the admin scope; unknown source
/// numbers are refused.
async fn no_marketing_contacts_without_the_permission(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    for user in ["mallory", "boss"] {
        let req = mpb::SetUserPermissionRequest {
            permission: Some(mpb::UserPermission { user_id: user.into(), may_set_marketing: false }),
        };
        status(&s).set_user_permission(authed(req, &admin)).await.unwrap();
    }
    let mallory = s.token(A, "mallory", &["write"]);
    let create =
        |i: cpb::ContactInput| cpb::CreateContactRequest { contact: Some(i), request_id: String::new() };
    for source in [SourceType::Form, SourceType::Ads, SourceType::Integration, SourceType::Chatflow] {
        let err = contacts(&s)
            .create_contact(authed(create(input("m@example.com", source)), &mallory))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{backend:?} {source:?}: {err:?}");
    }
    let err = contacts(&s)
        .create_contact(authed(create(input("m@example.com", SourceType::System)), &mallory))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
    let mut asks = input("m@example.com", SourceType::User);
    asks.requested_status = MarketingStatus::Marketing as i32;
    let err = contacts(&s).create_contact(authed(create(asks), &mallory)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}");
    let mut unknown = input("m@example.com", SourceType::User);
    unknown.source.as_mut().unwrap().r#type = 99;
    invalid(
        &contacts(&s).create_contact(authed(create(unknown), &mallory)).await.unwrap_err(),
        "contact.source.type",
    );
    let mut other_user = input("m@example.com", SourceType::User);
    other_user.source.as_mut().unwrap().id = "someone-else".into();
    invalid(
        &contacts(&s).create_contact(authed(create(other_user), &mallory)).await.unwrap_err(),
        "contact.source.id",
    );
    let header = cpb::ImportHeader { set_as_marketing: true, ..Default::default() };
    let parts = vec![cpb::ImportContactsRequest {
        part: Some(cpb::import_contacts_request::Part::Header(cpb::ImportHeader {
            mode: cpb::ImportMode::Create as i32,
            column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
            ..header
        })),
    }];
    let err = contacts(&s).import_contacts(authed(futures::stream::iter(parts), &mallory)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}");

    // An admin without the permission may act for a form: the contact is created, not marketing.
    let boss = s.token(A, "boss", &["admin"]);
    let made =
        contacts(&s).create_contact(authed(create(input("f@example.com", SourceType::Form)), &boss)).await;
    let id = made.unwrap().into_inner().contact.unwrap().id;
    s.advance_to(noon_20_april() + chrono::Duration::seconds(1)).await;
    let st = status(&s)
        .get_contact_status(authed(mpb::GetContactStatusRequest { contact_id: id.clone() }, &admin))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.status(), MarketingStatus::NonMarketing, "{backend:?}");

    // Status changes: a user claims no system's source and no other user's id.
    let set = |source: SourceType, source_id: &str| mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds {
            ids: vec![id.clone()],
        })),
        status: MarketingStatus::NonMarketing as i32,
        source: Some(Source { r#type: source as i32, id: source_id.into() }),
    };
    for source in [SourceType::System, SourceType::Workflow, SourceType::Form] {
        let err = status(&s).set_marketing_status(authed(set(source, ""), &mallory)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{backend:?} {source:?}");
    }
    let err =
        status(&s).set_marketing_status(authed(set(SourceType::User, "boss"), &mallory)).await.unwrap_err();
    invalid(&err, "source.id");
    let count =
        status(&s).get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &admin)).await.unwrap();
    assert_eq!(count.into_inner().count.unwrap().marketing, 0, "{backend:?}: nothing billed");
}

/// Case 11: A request id reused for a different request is refused; the same request again gets
/// its first answer.
async fn a_request_id_reused_for_another_request_is_refused(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    let create = |email: &str| cpb::CreateContactRequest {
        contact: Some(input(email, SourceType::User)),
        request_id: "req-1".into(),
    };
    let first =
        contacts(&s).create_contact(authed(create("one@example.com"), &admin)).await.unwrap().into_inner();
    let again =
        contacts(&s).create_contact(authed(create("one@example.com"), &admin)).await.unwrap().into_inner();
    assert_eq!(first, again, "{backend:?}");
    let err = contacts(&s).create_contact(authed(create("two@example.com"), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");
    assert!(err.message().starts_with("request_id"), "{}", err.message());

    let batch = |email: &str| cpb::BatchCreateContactsRequest {
        contacts: vec![input(email, SourceType::User)],
        request_id: "req-2".into(),
    };
    contacts(&s).batch_create_contacts(authed(batch("three@example.com"), &admin)).await.unwrap();
    let err =
        contacts(&s).batch_create_contacts(authed(batch("four@example.com"), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");

    let set = |ids: Vec<String>| mpb::SetMarketingStatusRequest {
        request_id: "req-3".into(),
        target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds { ids })),
        status: MarketingStatus::Marketing as i32,
        source: None,
    };
    let id = first.contact.unwrap().id;
    s.advance_to(noon_20_april() + chrono::Duration::seconds(1)).await;
    status(&s).set_marketing_status(authed(set(vec![id.clone()]), &admin)).await.unwrap();
    let err = status(&s).set_marketing_status(authed(set(vec!["other".into()]), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");

    let header = |name: &str| cpb::ImportHeader {
        name: name.into(),
        request_id: "req-4".into(),
        ..Default::default()
    };
    import(&s, &admin, "Email,First\nfive@example.com,Five\n", header("first file")).await;
    let parts = vec![cpb::ImportContactsRequest {
        part: Some(cpb::import_contacts_request::Part::Header(cpb::ImportHeader {
            mode: cpb::ImportMode::Upsert as i32,
            column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
            ..header("another file")
        })),
    }];
    let err = contacts(&s).import_contacts(authed(futures::stream::iter(parts), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");
    // The same header with another file: refused; with the same file: its summary.
    let again = import(&s, &admin, "Email,First\nfive@example.com,Five\n", header("first file")).await;
    assert_eq!(again.created, 1, "{backend:?}: the first import's summary");
    let header_part = |h: cpb::ImportHeader| cpb::ImportContactsRequest {
        part: Some(cpb::import_contacts_request::Part::Header(cpb::ImportHeader {
            mode: cpb::ImportMode::Create as i32,
            column_mapping: [
                ("Email".to_owned(), "email".to_owned()),
                ("First".to_owned(), "first_name".to_owned()),
            ]
            .into(),
            ..h
        })),
    };
    let other_file = vec![
        header_part(header("first file")),
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Chunk(
                b"Email,First\nsix@example.com,Six\n".to_vec(),
            )),
        },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::End(cpb::ImportEnd::default())),
        },
    ];
    let err = contacts(&s).import_contacts(authed(futures::stream::iter(other_file), &admin)).await;
    let err = match err {
        Err(e) => e,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Err(e) => break e,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("{backend:?}: another file under a used request id was answered"),
                }
            }
        }
    };
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}: {err:?}");

    // Another call under the same request id: refused, not answered with the first's answer.
    let batch_first = cpb::BatchCreateContactsRequest {
        contacts: vec![input("seven@example.com", SourceType::User)],
        request_id: "req-5".into(),
    };
    contacts(&s).batch_create_contacts(authed(batch_first, &admin)).await.unwrap();
    let single = cpb::CreateContactRequest {
        contact: Some(input("seven@example.com", SourceType::User)),
        request_id: "req-5".into(),
    };
    assert_eq!(
        contacts(&s).create_contact(authed(single, &admin)).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // Nor by another user of the account.
    let other_user = s.token(A, "someone-else", &["admin"]);
    let replay = cpb::CreateContactRequest {
        contact: Some(input("one@example.com", SourceType::User)),
        request_id: "req-1".into(),
    };
    assert_eq!(
        contacts(&s).create_contact(authed(replay, &other_user)).await.unwrap_err().code(),
        Code::AlreadyExists
    );
}

/// Case 12: A workflow's list or filter is checked at creation; a run that can never succeed fails
/// for good with its reason; one that meets an outage retries until it succeeds.
async fn workflows_refuse_missing_lists_and_fail_runs_for_good(backend: Backend) {
    let mut s = System::start(backend, noon_20_april()).await;
    subscribe(&s, A, Edition::Professional).await;
    subscribe(&s, B, Edition::Professional).await;
    s.advance_to(noon_20_april() + chrono::Duration::seconds(1)).await;
    let admin = s.user_token(A, &["admin"]);
    let workflow = |target: mpb::workflow::Target| mpb::CreateWorkflowRequest {
        workflow: Some(mpb::Workflow {
            name: "Newsletter".into(),
            target: Some(target),
            action: mpb::WorkflowAction::SetMarketing as i32,
            ..Default::default()
        }),
    };
    let err = status(&s)
        .create_workflow(authed(workflow(mpb::workflow::Target::ListId("no-such-list".into())), &admin))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "{backend:?}");
    let theirs =
        cpb::CreateListRequest { name: "B's".into(), r#type: cpb::ListType::Static as i32, filter: None };
    let theirs = contacts(&s).create_list(authed(theirs, &s.user_token(B, &["admin"]))).await.unwrap();
    let theirs = theirs.into_inner().list.unwrap().id;
    let err =
        status(&s).create_workflow(authed(workflow(mpb::workflow::Target::ListId(theirs)), &admin)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "{backend:?}: another account's list");
    let bad_filter = cpb::ContactFilter {
        groups: vec![cpb::FilterGroup {
            filters: vec![cpb::Filter {
                property: "shoe_size".into(),
                operator: cpb::FilterOperator::Eq as i32,
                value: "9".into(),
                ..Default::default()
            }],
        }],
    };
    let err =
        status(&s).create_workflow(authed(workflow(mpb::workflow::Target::Filter(bad_filter)), &admin)).await;
    invalid(&err.unwrap_err(), "workflow.filter.groups[0].filters[0].property");

    let ours =
        cpb::CreateListRequest { name: "Ours".into(), r#type: cpb::ListType::Static as i32, filter: None };
    let list = contacts(&s).create_list(authed(ours, &admin)).await.unwrap().into_inner().list.unwrap().id;
    let w = status(&s)
        .create_workflow(authed(workflow(mpb::workflow::Target::ListId(list.clone())), &admin))
        .await;
    let w = w.unwrap().into_inner().workflow.unwrap();
    let run = |rid: &str| mpb::RunWorkflowRequest { workflow_id: w.id.clone(), request_id: rid.into() };
    let get = |id: String| mpb::GetWorkflowRunRequest { id };

    // The contacts service is down: the run retries with backoff, then succeeds.
    s.stop("contacts").await;
    let first = status(&s).run_workflow(authed(run("go-1"), &admin)).await.unwrap().into_inner().run.unwrap();
    s.advance_to(noon_20_april() + chrono::Duration::seconds(40)).await;
    let r = status(&s)
        .get_workflow_run(authed(get(first.id.clone()), &admin))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(r.state(), mpb::WorkflowRunState::Retrying, "{backend:?}");
    assert!(r.attempts >= 2, "{backend:?}: {} attempts", r.attempts);
    assert!(failing_work(&s, "marketing-status").await.iter().any(|f| f.item == first.id));
    s.restart("contacts").await;
    s.advance_to(noon_20_april() + chrono::Duration::minutes(10)).await;
    let r =
        status(&s).get_workflow_run(authed(get(first.id), &admin)).await.unwrap().into_inner().run.unwrap();
    assert_eq!(r.state(), mpb::WorkflowRunState::Succeeded, "{backend:?}");

    // The list is deleted: the next run fails for good, once.
    contacts(&s).delete_list(authed(cpb::DeleteListRequest { id: list }, &admin)).await.unwrap();
    let second =
        status(&s).run_workflow(authed(run("go-2"), &admin)).await.unwrap().into_inner().run.unwrap();
    s.advance_to(noon_20_april() + chrono::Duration::hours(2)).await;
    let r =
        status(&s).get_workflow_run(authed(get(second.id), &admin)).await.unwrap().into_inner().run.unwrap();
    assert_eq!((r.state(), r.attempts), (mpb::WorkflowRunState::Failed, 1), "{backend:?}");
    assert!(r.last_error.contains("NotFound"), "{}", r.last_error);
    // And its request id stands for that workflow only.
    let other = status(&s)
        .create_workflow(authed(
            workflow(mpb::workflow::Target::Filter(cpb::ContactFilter {
                groups: vec![cpb::FilterGroup {
                    filters: vec![cpb::Filter {
                        property: "company".into(),
                        operator: cpb::FilterOperator::HasProperty as i32,
                        ..Default::default()
                    }],
                }],
            })),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    let reuse = mpb::RunWorkflowRequest { workflow_id: other.id.clone(), request_id: "go-2".into() };
    assert_eq!(status(&s).run_workflow(authed(reuse, &admin)).await.unwrap_err().code(), Code::AlreadyExists);
    // A user without the permission to set marketing cannot have a workflow do it for them.
    let revoke = mpb::SetUserPermissionRequest {
        permission: Some(mpb::UserPermission { user_id: "mallory".into(), may_set_marketing: false }),
    };
    status(&s).set_user_permission(authed(revoke, &admin)).await.unwrap();
    let mallory = s.token(A, "mallory", &["write"]);
    let run = mpb::RunWorkflowRequest { workflow_id: other.id, request_id: "go-3".into() };
    let err = status(&s).run_workflow(authed(run, &mallory)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}");
}

/// Case 14: Email recipients need a dotted, public domain.
async fn email_recipients_need_a_public_domain(backend: Backend) {
    let s = System::start(backend, noon_20_april()).await;
    let admin = s.user_token(A, &["admin"]);
    let email = |address: &str| npb::CreateRecipientRequest {
        target: Some(npb::create_recipient_request::Target::Email(npb::EmailTarget {
            address: address.into(),
        })),
    };
    for address in ["root@localhost", "ops@[127.0.0.1]", "ops@mail.internal", "ops@host"] {
        let err = notification(&s).create_recipient(authed(email(address), &admin)).await.unwrap_err();
        invalid(&err, "email.address");
    }
    notification(&s).create_recipient(authed(email("billing@example.com"), &admin)).await.unwrap();
    // An account has at most 50 recipients.
    for i in 1..50 {
        notification(&s)
            .create_recipient(authed(email(&format!("ops{i}@example.com")), &admin))
            .await
            .unwrap();
    }
    let err =
        notification(&s).create_recipient(authed(email("one-more@example.com"), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
}

contactier_runtime::backend_tests!(
    a_failing_invoice_holds_up_no_other_account,
    nul_characters_are_refused_and_good_records_written,
    webhooks_cannot_reach_the_cluster,
    an_unclosed_quote_is_one_refused_row,
    watch_streams_are_capped_and_share_their_alerts,
    numbers_and_dates_out_of_range_are_refused,
    text_past_its_cap_is_refused,
    no_marketing_contacts_without_the_permission,
    a_request_id_reused_for_another_request_is_refused,
    workflows_refuse_missing_lists_and_fail_runs_for_good,
    email_recipients_need_a_public_domain,
);
