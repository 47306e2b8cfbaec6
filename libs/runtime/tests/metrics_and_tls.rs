//! The Prometheus endpoint counts RPCs by method and code; TLS can be switched on.

use contactier_proto::ops::v1::{GetTimeRequest, SetTimeRequest, clock_service_client::ClockServiceClient};
use contactier_runtime::auth::Authenticator;
use contactier_runtime::clock::Clock;
use contactier_runtime::server::{self, ServeOptions, ServiceSpec};
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::testing::authed;
use std::io::{Read, Write};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SECRET: &[u8] = b"metrics-test-secret-metrics-test-secret";

async fn serve(tls: Option<(Vec<u8>, Vec<u8>)>) -> (std::net::SocketAddr, Authenticator) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = Authenticator::new(SECRET, "contactier", "contactier");
    let opts = ServeOptions {
        authenticator: auth.clone(),
        clock: Clock::manual(chrono::Utc::now()),
        shutdown: Shutdown::new(),
        tls,
        grace: Duration::from_secs(1),
        drain: Duration::ZERO,
        rate_limit: None,
        conn: contactier_runtime::conn::ConnLimits::default(),
    };
    tokio::spawn(server::serve(ServiceSpec::bare("test"), listener, opts));
    (addr, auth)
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    contactier_runtime::telemetry::init_metrics(metrics_addr).unwrap();
    let (addr, auth) = serve(None).await;
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut clock = ClockServiceClient::new(ch);
    let token = auth.user_token("acct", "u", &["ops"], chrono::Duration::hours(1));
    clock.get_time(authed(GetTimeRequest {}, &token)).await.unwrap();
    clock.get_time(GetTimeRequest {}).await.unwrap_err();
    let bad = authed(SetTimeRequest { time: None }, &token);
    assert_eq!(clock.set_time(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let mut text = String::new();
    for _ in 0..50 {
        text = tokio::task::spawn_blocking(move || scrape(metrics_addr)).await.unwrap();
        if text.contains("grpc_server_requests_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = |method: &str, code: &str| {
        text.lines().any(|l| {
            l.starts_with("grpc_server_requests_total")
                && l.contains(&format!("method=\"/contactier.ops.v1.ClockService/{method}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
    };
    assert!(line("GetTime", "0"), "successful call counted:\n{text}");
    assert!(line("GetTime", "16"), "unauthenticated call counted:\n{text}");
    assert!(line("SetTime", "3"), "invalid argument counted:\n{text}");
    assert!(text.contains("grpc_server_request_duration_seconds"));
}

#[tokio::test]
async fn tls_serves_trusting_clients_and_refuses_plaintext() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let (addr, _) = serve(Some((cert_pem.clone().into_bytes(), key_pem.into_bytes()))).await;

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cert_pem)).domain_name("localhost");
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING over TLS");

    let plain = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    assert!(HealthClient::new(plain).check(HealthCheckRequest { service: String::new() }).await.is_err());
}
