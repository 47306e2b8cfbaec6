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
        ops_account: "ops".to_owned(),
    };
    tokio::spawn(server::serve(ServiceSpec::bare("test"), listener, opts));
    (addr, auth)
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_name_in_the_usual_names() {
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    contactier_runtime::telemetry::init_metrics(metrics_addr).await.unwrap();
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
        text = tokio::task::spawn_blocking(move || get(metrics_addr, "/metrics")).await.unwrap();
        if text.contains("grpc_server_handled_total") && text.contains("process_resident_memory_bytes") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let line = |method: &str, code: &str| {
        text.lines().any(|l| {
            l.starts_with("grpc_server_handled_total")
                && l.contains("grpc_service=\"contactier.ops.v1.ClockService\"")
                && l.contains(&format!("grpc_method=\"{method}\""))
                && l.contains("grpc_type=\"unary\"")
                && l.contains(&format!("grpc_code=\"{code}\""))
        })
    };
    assert!(line("GetTime", "OK"), "successful call counted:\n{text}");
    assert!(line("GetTime", "Unauthenticated"), "unauthenticated call counted:\n{text}");
    assert!(line("SetTime", "InvalidArgument"), "invalid argument counted:\n{text}");
    // A histogram with buckets fine enough to judge a 5 ms p99, summable across replicas.
    assert!(text.contains("grpc_server_handling_seconds_bucket{"), "{text}");
    assert!(text.contains("le=\"0.005\""), "{text}");
    for family in [
        "grpc_server_started_total",
        "grpc_server_in_flight_requests",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // Paths nobody declared share one label, however many are tried.
    for i in 0..20 {
        let mut grpc =
            tonic::client::Grpc::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!("/made.Up{i}/Method{i}")).unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let _ = grpc.unary(tonic::Request::new(()), path, codec).await;
    }
    // A call whose caller goes away is counted and leaves nothing in flight.
    {
        use tower::{Layer, ServiceExt};
        let never = tower::service_fn(|_req: http::Request<()>| async {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>().await
        });
        let svc = contactier_runtime::telemetry::TraceLayer.layer(never);
        let req =
            http::Request::builder().uri("/contactier.ops.v1.ClockService/AdvanceTime").body(()).unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(20), svc.oneshot(req)).await;
    }
    let text = tokio::task::spawn_blocking(move || get(metrics_addr, "/metrics")).await.unwrap();
    assert!(!text.contains("made.Up"), "undeclared paths made series:\n{text}");
    assert!(text.contains("grpc_service=\"unknown\""), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("grpc_server_handled_total")
            && l.contains("grpc_method=\"AdvanceTime\"")
            && l.contains("grpc_code=\"Canceled\"")),
        "the abandoned call is counted:\n{text}"
    );
    let in_flight = text
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_in_flight_requests{grpc_service=\"contactier.ops.v1.ClockService\"}")
        })
        .unwrap_or_else(|| panic!("no in-flight gauge:\n{text}"));
    assert!(in_flight.ends_with(" 0"), "{in_flight}");

    // The exposition passes Prometheus' own checker.
    let body = text.split("\r\n\r\n").nth(1).unwrap().to_owned();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed for this test");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Only /metrics answers.
    let other = tokio::task::spawn_blocking(move || get(metrics_addr, "/anything")).await.unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
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
