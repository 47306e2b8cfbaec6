//! What an on-call engineer sees of the services run as processes: a log line per completed
//! call carrying the caller's trace id, with the call's method, status name, duration and
//! account, and no personal data; a `/metrics` of every service that Prometheus' own checker
//! accepts, in the usual names.

use chrono::Datelike;
use contactier_e2e::procs::{Backend, Options, Services, bin_dir};
use contactier_e2e::subscription;
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, Source, SourceType, Term};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_runtime::auth::Authenticator;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

const ACCOUNT: &str = "acct-observed";
const EMAIL: &str = "zebediah.quill@example.com";
const NAME: &str = "Zebediah";

fn traced<T>(msg: T, token: &str, trace: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r.metadata_mut().insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap());
    r
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

fn promtool(exposition: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed for this test");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The JSON lines of a service's log.
fn lines(dir: &std::path::Path, service: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("{service}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A fresh directory for the services' logs of one test.
fn log_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("contactier-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lines of a service's log that `wanted` picks, waiting up to five seconds for the first:
/// a line is written a moment after what it tells of.
async fn logged(
    dir: &std::path::Path,
    service: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for _ in 0..50 {
        found = lines(dir, service).into_iter().filter(&wanted).collect();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found
}

#[tokio::test]
async fn every_service_on_postgresql_says_it_serves_with_the_default_log_filter() {
    let logs = log_dir("serving");
    // No RUST_LOG: the services' own default filter, which quiets sqlx.
    let options = Options { log_dir: Some(logs.clone()), default_log_filter: true, ..Options::default() };
    let services = Services::start_with(Backend::Postgres, &bin_dir().unwrap(), options).await.unwrap();
    for service in ["contacts", "marketing-status", "billing", "notification"] {
        let said = logged(&logs, service, |l| l["message"] == "serving" && l["service"] == service).await;
        assert!(!said.is_empty(), "{service} never logged that it serves: {:?}", lines(&logs, service));
        let chatty = lines(&logs, service)
            .into_iter()
            .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("sqlx")) && l["level"] == "INFO")
            .count();
        assert_eq!(chatty, 0, "{service} logged sqlx's statements at INFO");
    }
    services.stop(Backend::Postgres).await;
    let _ = std::fs::remove_dir_all(&logs);
}

#[tokio::test]
async fn calls_are_logged_with_their_trace_and_every_service_exposes_checked_metrics() {
    let logs = log_dir("observed");
    let options = Options { log_dir: Some(logs.clone()), metrics: true, ..Options::default() };
    let services = Services::start_with(Backend::Sqlite, &bin_dir().unwrap(), options).await.unwrap();
    let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
    let token = auth.user_token(ACCOUNT, "oncall-user", &["read", "write"], chrono::Duration::hours(1));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", services.addr("contacts")))
        .unwrap()
        .connect_lazy();
    let mut contacts = ContactsServiceClient::new(channel);
    let call = |msg, trace| traced(msg, &token, trace);

    // A contact with personal data, then a lookup that fails, each in a trace of the caller's.
    let created_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut input = cpb::ContactInput {
        email: EMAIL.into(),
        source: Some(Source { r#type: SourceType::User as i32, id: String::new() }),
        ..Default::default()
    };
    input.properties.insert("first_name".into(), NAME.into());
    let create = cpb::CreateContactRequest { contact: Some(input), request_id: String::new() };
    contacts.create_contact(call(create, created_trace)).await.unwrap();
    // A refusal whose reason would quote the value: the log names the field only.
    let mut bad = cpb::ContactInput {
        email: "someone@example.com".into(),
        source: Some(Source { r#type: SourceType::User as i32, id: String::new() }),
        ..Default::default()
    };
    bad.properties.insert("lifecycle_stage".into(), EMAIL.into());
    let create = cpb::CreateContactRequest { contact: Some(bad), request_id: String::new() };
    let e = contacts.create_contact(call(create, "7a3f0c1e2d4b5a69788796a5b4c3d2e1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let missing_trace = "0af7651916cd43dd8448eb211c80319c";
    // A caller's text in the refusal (an email given as an id) stays out of the log.
    let get = cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Id(EMAIL.into())) };
    let e = contacts.get_contact(traced(get, &token, missing_trace)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // An import whose stream closes before its end fails after its answer began: it is logged
    // and counted with the code it ended with, not as OK.
    let import_trace = "6c2f0e7d1b3a49588a7c6d5e4f3a2b1c";
    let header = cpb::ImportHeader {
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
        ..Default::default()
    };
    let cut = vec![
        cpb::ImportContactsRequest { part: Some(cpb::import_contacts_request::Part::Header(header)) },
        cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Chunk(b"Email\ncut@example.org\n".to_vec())),
        },
    ];
    let answers = contacts.import_contacts(traced(futures::stream::iter(cut), &token, import_trace)).await;
    let ended = match answers {
        Ok(stream) => stream.into_inner().message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(ended.unwrap_err().code(), Code::Aborted);
    let import_lines =
        logged(&logs, "contacts", |l| l["trace_id"] == import_trace && l["message"] == "call refused").await;
    assert_eq!(import_lines.len(), 1, "one line for the cut import: {import_lines:?}");
    assert_eq!(import_lines[0]["code"], "Aborted", "{}", import_lines[0]);

    // Each call is one line, in its caller's trace, with what an engineer filters by.
    let found =
        logged(&logs, "contacts", |l| l["trace_id"] == missing_trace && l["message"] == "call refused").await;
    assert_eq!(found.len(), 1, "one line for the failed call: {found:?}");
    let line = &found[0];
    assert_eq!(line["method"], "/contactier.contacts.v1.ContactsService/GetContact", "{line}");
    assert_eq!(line["code"], "NotFound", "{line}");
    assert_eq!(line["account_id"], ACCOUNT, "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    let created: Vec<_> = lines(&logs, "contacts")
        .into_iter()
        .filter(|l| l["trace_id"] == created_trace && l["message"] == "call")
        .collect();
    assert_eq!(created.len(), 1, "one line for the successful call: {created:?}");
    assert_eq!(created[0]["code"], "OK");

    // Sign-ups that take the account past 75 % of its tier: one trace runs from the caller
    // through contacts, marketing-status and billing to notification's alert.
    let admin = auth.user_token(ACCOUNT, "oncall-admin", &["admin"], chrono::Duration::hours(1));
    let billing_channel =
        tonic::transport::Channel::from_shared(format!("http://{}", services.addr("billing"))).unwrap();
    let mut billing = BillingServiceClient::new(billing_channel.connect_lazy());
    let today = contactier_e2e::na_today();
    let start = Date { year: today.year(), month: today.month() as i32, day: 1 };
    let subscribe = subscription(Edition::Starter, Term::Monthly, start);
    billing.create_subscription(traced(subscribe, &admin, "11111111111111111111111111111111")).await.unwrap();
    let usage = traced(bpb::GetUsageRequest {}, &admin, "22222222222222222222222222222222");
    let tier = billing.get_usage(usage).await.unwrap().into_inner().usage.unwrap().tier;
    let signups = (0..tier * 8 / 10).map(|i| cpb::ContactInput {
        email: format!("lead{i}@example.com"),
        source: Some(Source { r#type: SourceType::Form as i32, id: "signup".into() }),
        ..Default::default()
    });
    let batch = cpb::BatchCreateContactsRequest { contacts: signups.collect(), request_id: String::new() };
    let signup_trace = "5b8efff798038103d269b633813fc60c";
    let r = contacts.batch_create_contacts(traced(batch, &admin, signup_trace)).await.unwrap().into_inner();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let hops = [
        ("contacts", "/contactier.contacts.v1.ContactsService/BatchCreateContacts"),
        (
            "marketing-status",
            "/contactier.marketing_status.v1.MarketingStatusInternalService/ApplyContactEvents",
        ),
        ("billing", "/contactier.billing.v1.BillingInternalService/ApplyCountEvents"),
        ("notification", "/contactier.notification.v1.NotificationInternalService/ApplyBillingEvents"),
    ];
    let in_trace = |service: &str, method: &str| {
        lines(&logs, service).iter().any(|l| l["trace_id"] == signup_trace && l["method"] == method)
    };
    for _ in 0..100 {
        if hops.iter().all(|(s, m)| in_trace(s, m)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (service, method) in hops {
        assert!(in_trace(service, method), "{service} did not log {method} in the sign-ups' trace");
    }

    // Every service: a scrape Prometheus accepts, in the usual names, with what the service does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (service, own) in [
        ("contacts", "contactier_worker_last_success_timestamp_seconds{worker=\"contacts-relay\"}"),
        ("marketing-status", "contactier_worker_runs_total{worker=\"marketing-status-relay\",result=\"ok\"}"),
        ("billing", "contactier_db_pool_max_connections{service=\"billing\"}"),
        ("notification", "contactier_db_pool_connections{service=\"notification\",state=\"in_use\"}"),
    ] {
        let text = scrape(services.metrics_addr(service));
        if service == "notification" {
            assert!(text.contains("contactier_alerts_total{kind="), "the 75 % alert is counted\n{text}");
        }
        if service == "contacts" {
            let cut = text.lines().any(|l| {
                l.starts_with("grpc_server_handled_total{")
                    && l.contains("grpc_method=\"ImportContacts\"")
                    && l.contains("grpc_code=\"Aborted\"")
            });
            assert!(cut, "the cut import is counted as Aborted\n{text}");
        }
        if let Err(e) = promtool(&text) {
            panic!("{service}: promtool check metrics failed: {e}\n{text}");
        }
        for family in [
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket",
            "process_resident_memory_bytes",
            own,
        ] {
            assert!(text.contains(family), "{service}: {family} missing\n{text}");
        }
    }

    // No personal data in any service's log.
    for service in ["contacts", "marketing-status", "billing", "notification"] {
        let log = std::fs::read_to_string(logs.join(format!("{service}.log"))).unwrap_or_default();
        assert!(!log.contains(EMAIL) && !log.contains(NAME), "{service} logged personal data");
        assert!(!log.contains(&token), "{service} logged a token");
    }
    services.stop(Backend::Sqlite).await;
    let _ = std::fs::remove_dir_all(&logs);
}

/// Spans an OTLP collector on loopback receives: (service name, trace id, span name, kind).
type Received = Arc<Mutex<Vec<(String, String, String, i32)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    got.push((service.clone(), trace, span.name, span.kind));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn one_trace_reaches_a_collector_from_all_four_services() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(received.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let options = Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{collector}")),
            // Export within a fraction of a second rather than the default five.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        ..Options::default()
    };
    let services = Services::start_with(Backend::Sqlite, &bin_dir().unwrap(), options).await.unwrap();
    let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
    let admin = auth.user_token(ACCOUNT, "oncall-admin", &["admin"], chrono::Duration::hours(1));
    let channel = |service: &str| {
        tonic::transport::Channel::from_shared(format!("http://{}", services.addr(service)))
            .unwrap()
            .connect_lazy()
    };
    let today = contactier_e2e::na_today();
    let start = Date { year: today.year(), month: today.month() as i32, day: 1 };
    let subscribe = subscription(Edition::Starter, Term::Monthly, start);
    let mut billing = BillingServiceClient::new(channel("billing"));
    billing.create_subscription(traced(subscribe, &admin, "33333333333333333333333333333333")).await.unwrap();
    let signup_trace = "6e0c63257de34c926f9efcd03899b5e0";
    let input = cpb::ContactInput {
        email: "lead@example.com".into(),
        source: Some(Source { r#type: SourceType::Form as i32, id: "signup".into() }),
        ..Default::default()
    };
    let batch = cpb::BatchCreateContactsRequest { contacts: vec![input], request_id: String::new() };
    ContactsServiceClient::new(channel("contacts"))
        .batch_create_contacts(traced(batch, &admin, signup_trace))
        .await
        .unwrap();

    let want = ["billing", "contacts", "marketing-status", "notification"];
    // The work inside: the relay batches and the calls between services, server and client.
    let calls = [
        ("contacts", "contactier.contacts.v1.ContactsService/BatchCreateContacts"),
        (
            "marketing-status",
            "contactier.marketing_status.v1.MarketingStatusInternalService/ApplyContactEvents",
        ),
        ("billing", "contactier.billing.v1.BillingInternalService/ApplyCountEvents"),
        ("notification", "contactier.notification.v1.NotificationInternalService/ApplyBillingEvents"),
    ];
    let spans_in_trace = || -> Vec<(String, String)> {
        let got = received.lock().unwrap();
        got.iter()
            .filter(|(_, t, _, _)| t == signup_trace)
            .map(|(s, _, n, _)| (s.clone(), n.clone()))
            .collect()
    };
    let services_in_trace = || {
        let mut names: Vec<String> = spans_in_trace().into_iter().map(|(s, _)| s).collect();
        names.sort();
        names.dedup();
        names
    };
    let has = |spans: &[(String, String)], (service, name): (&str, &str)| {
        spans.iter().any(|(s, n)| s == service && n == name)
    };
    // A server's span of a call is exported when the call ends, after the spans inside it:
    // wait for the calls' spans themselves, not only for a span of each service.
    for _ in 0..100 {
        let spans = spans_in_trace();
        if services_in_trace() == want && calls.iter().all(|c| has(&spans, *c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(services_in_trace(), want, "every service exported spans of the one trace");
    let got = spans_in_trace();
    let spans: Vec<(&str, &str)> = got.iter().map(|(s, n)| (s.as_str(), n.as_str())).collect();
    for (service, name) in calls {
        assert!(spans.contains(&(service, name)), "{service} {name} in {spans:#?}");
    }
    assert!(spans.iter().any(|(_, n)| n.ends_with(" publish")), "relay batches: {spans:#?}");
    assert!(spans.iter().any(|(_, n)| *n == "BEGIN"), "write transactions: {spans:#?}");
    services.stop(Backend::Sqlite).await;
}
