//! The runtime over a real socket: health, reflection, auth, the ops clock and graceful shutdown.

use chrono::{TimeZone, Utc};
use contactier_proto::contacts::v1::{CountContactsRequest, contacts_service_client::ContactsServiceClient};
use contactier_proto::ops::v1::{
    AdvanceTimeRequest, GetTimeRequest, SetTimeRequest, clock_service_client::ClockServiceClient,
};
use contactier_runtime::auth::Authenticator;
use contactier_runtime::clock::Clock;
use contactier_runtime::server::{self, ServeOptions, ServiceSpec};
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::testing::authed;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SECRET: &[u8] = b"serving-test-secret-serving-test-secret";

struct Running {
    addr: SocketAddr,
    auth: Authenticator,
    clock: Clock,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(clock: Clock) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = Authenticator::new(SECRET, "contactier", "contactier");
    let shutdown = Shutdown::new();
    let opts = ServeOptions {
        authenticator: auth.clone(),
        clock: clock.clone(),
        shutdown: shutdown.clone(),
        tls: None,
        grace: Duration::from_secs(5),
        drain: Duration::ZERO,
        rate_limit: None,
        conn: contactier_runtime::conn::ConnLimits::default(),
        ops_account: "ops".to_owned(),
    };
    let task = tokio::spawn(server::serve(ServiceSpec::bare("test"), listener, opts));
    Running { addr, auth, clock, shutdown, task }
}

async fn channel(addr: SocketAddr) -> Channel {
    for _ in 0..50 {
        if let Ok(c) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {addr} never answered");
}

fn may() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 4, 0, 0).unwrap()
}

#[tokio::test]
async fn health_answers_without_a_token() {
    let s = start(Clock::manual(may())).await;
    let mut health = HealthClient::new(channel(s.addr).await);
    for service in ["", "contactier.ops.v1.ClockService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_only_the_served_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let s = start(Clock::manual(may())).await;
    let ch = channel(s.addr).await;

    let mut c = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = c.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        ["contactier.ops.v1.ClockService", "contactier.ops.v1.WorkService", "grpc.health.v1.Health"]
    );

    // Old grpcurl speaks v1alpha: it must be able to describe a served service's messages.
    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "contactier.ops.v1.ClockService".into(),
        )),
    };
    let mut stream = c.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(fds)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer");
    };
    assert!(!fds.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn calls_without_a_valid_token_change_nothing() {
    let s = start(Clock::manual(may())).await;
    let ch = channel(s.addr).await;
    let mut clock = ClockServiceClient::new(ch.clone());
    let set = || SetTimeRequest {
        time: Some(prost_types::Timestamp { seconds: may().timestamp() + 86_400, nanos: 0 }),
    };

    let missing = clock.set_time(set()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let hour = chrono::Duration::hours(1);
    let expired = s.auth.user_token("acct-a", "u", &["ops"], chrono::Duration::minutes(-5));
    assert_eq!(clock.set_time(authed(set(), &expired)).await.unwrap_err().code(), Code::Unauthenticated);

    let forged = Authenticator::new(b"someone-elses-secret-someone-elses", "contactier", "contactier")
        .user_token("acct-a", "u", &["ops"], hour);
    assert_eq!(clock.set_time(authed(set(), &forged)).await.unwrap_err().code(), Code::Unauthenticated);

    let wrong_audience =
        Authenticator::new(SECRET, "contactier", "another-product").user_token("acct-a", "u", &["ops"], hour);
    let err = clock.set_time(authed(set(), &wrong_audience)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let reader = s.auth.user_token("acct-a", "u", &["read", "write", "admin"], hour);
    let err = clock.set_time(authed(set(), &reader)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("ops"), "{}", err.message());

    // A user token naming another account is refused whatever its scopes.
    let ops = s.auth.user_token("acct-a", "u", &["ops"], hour);
    let mut cross = authed(GetTimeRequest {}, &ops);
    cross.metadata_mut().insert("x-account-id", "acct-b".parse().unwrap());
    assert_eq!(clock.get_time(cross).await.unwrap_err().code(), Code::PermissionDenied);

    assert_eq!(s.clock.now(), may(), "no refused call moved the clock");

    // A method this server does not serve is refused before anything runs.
    let mut contacts = ContactsServiceClient::new(ch);
    let err = contacts.count_contacts(authed(CountContactsRequest {}, &ops)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    clock.set_time(authed(set(), &ops)).await.unwrap();
    assert_eq!(s.clock.now(), may() + chrono::Duration::days(1));
}

#[tokio::test]
async fn advancing_over_grpc_returns_after_the_due_work_ran() {
    let s = start(Clock::manual(may())).await;
    let ran_at = Arc::new(std::sync::Mutex::new(None));
    let worker = s.clock.register_worker("invoice-run");
    let due = may() + chrono::Duration::hours(20);
    let log = ran_at.clone();
    tokio::spawn(async move {
        let mut pending = Some(due);
        loop {
            let now = worker.now();
            if pending.is_some_and(|d| d <= now) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                *log.lock().unwrap() = Some(now);
                pending = None;
            }
            worker.report(now, pending);
            worker.sleep_until(pending).await;
        }
    });
    let token = s.auth.user_token("acct-a", "operator", &["ops"], chrono::Duration::hours(1));
    let mut clock = ClockServiceClient::new(channel(s.addr).await);
    let by = prost_types::Duration { seconds: 2 * 86_400, nanos: 0 };
    let r =
        clock.advance_time(authed(AdvanceTimeRequest { by: Some(by) }, &token)).await.unwrap().into_inner();
    assert_eq!(*ran_at.lock().unwrap(), Some(due), "ran at its due instant, before the call returned");
    assert_eq!(r.now.unwrap().seconds, (may() + chrono::Duration::days(2)).timestamp());
    assert_eq!(r.steps, 2, "stopped at the due work, then at the target");

    let back = SetTimeRequest { time: Some(prost_types::Timestamp { seconds: may().timestamp(), nanos: 0 }) };
    let err = clock.set_time(authed(back, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let neg = AdvanceTimeRequest { by: Some(prost_types::Duration { seconds: -1, nanos: 0 }) };
    assert_eq!(clock.advance_time(authed(neg, &token)).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish_then_stops() {
    let s = start(Clock::manual(may())).await;
    let worker = s.clock.register_worker("slow");
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    let due = may() + chrono::Duration::minutes(1);
    tokio::spawn(async move {
        let mut pending = Some(due);
        loop {
            let now = worker.now();
            if pending.is_some_and(|d| d <= now) {
                tokio::time::sleep(Duration::from_millis(400)).await;
                done.store(true, Ordering::SeqCst);
                pending = None;
            }
            worker.report(now, pending);
            worker.sleep_until(pending).await;
        }
    });
    let token = s.auth.user_token("acct-a", "operator", &["ops"], chrono::Duration::hours(1));
    let mut clock = ClockServiceClient::new(channel(s.addr).await);
    let call = tokio::spawn(async move {
        let by = prost_types::Duration { seconds: 3600, nanos: 0 };
        clock.advance_time(authed(AdvanceTimeRequest { by: Some(by) }, &token)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown.trigger();
    let answer = call.await.unwrap();
    assert!(answer.is_ok(), "the call in flight was answered: {answer:?}");
    assert!(finished.load(Ordering::SeqCst));
    tokio::time::timeout(Duration::from_secs(5), s.task).await.expect("server stopped").unwrap().unwrap();
    assert!(
        Channel::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.is_err(),
        "no longer listening"
    );
}
