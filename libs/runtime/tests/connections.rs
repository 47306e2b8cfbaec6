//! Slow and silent clients against a real listener: connections that send nothing are closed
//! at their first-request deadline, idle ones at the idle timeout, ones past the cap as they are
//! accepted; callers that behave are served before, during and after.

use contactier_runtime::auth::Authenticator;
use contactier_runtime::clock::Clock;
use contactier_runtime::conn::ConnLimits;
use contactier_runtime::server::{self, ServeOptions, ServiceSpec};
use contactier_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SECRET: &[u8] = b"connections-test-secret-connections";

fn token() -> String {
    Authenticator::new(SECRET, "contactier", "contactier").user_token(
        "a",
        "u",
        &["read"],
        chrono::Duration::hours(1),
    )
}

async fn start(conn: ConnLimits) -> (SocketAddr, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let opts = ServeOptions {
        authenticator: Authenticator::new(SECRET, "contactier", "contactier"),
        clock: Clock::system(),
        shutdown: shutdown.clone(),
        tls: None,
        grace: Duration::from_secs(1),
        drain: Duration::ZERO,
        rate_limit: None,
        conn,
        ops_account: "ops".to_owned(),
    };
    tokio::spawn(server::serve(ServiceSpec::bare("test"), listener, opts));
    (addr, shutdown)
}

/// Seconds until the server closes `s` (reads end), at most `within`.
async fn closed_after(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn healthy(addr: SocketAddr) -> bool {
    let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await
    else {
        return false;
    };
    HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.is_ok()
}

#[tokio::test]
async fn silent_connections_are_closed_and_a_full_listener_serves_again() {
    let limits = ConnLimits {
        max_connections: 8,
        first_request: Duration::from_secs(1),
        idle: Duration::from_secs(30),
        ..ConnLimits::default()
    };
    let (addr, _shutdown) = start(limits).await;
    assert!(healthy(addr).await, "served at first");

    // Eight connections that never send a byte fill the listener.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One more is closed as soon as it is accepted.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let closed = closed_after(&mut extra, Duration::from_millis(500)).await;
    assert!(closed.is_some(), "a connection past the cap was kept");

    // Each silent one is closed at its first-request deadline, not before.
    for s in &mut silent {
        let after = closed_after(s, Duration::from_secs(5)).await.expect("closed within 5 s");
        assert!(after < Duration::from_secs(3), "closed after {after:?}");
    }
    assert!(healthy(addr).await, "served again once they are gone");

    // The HTTP/2 preface alone is not a request either.
    let mut preface_only = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut preface_only,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await
    .unwrap();
    let t = Instant::now();
    assert!(closed_after(&mut preface_only, Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() >= Duration::from_millis(500), "closed at the deadline, not at once");
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_closed_and_a_busy_one_is_not() {
    let limits = ConnLimits { idle: Duration::from_secs(2), ..ConnLimits::default() };
    let (addr, _shutdown) = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let mut client = client.ready().await.unwrap();
    // Health calls framed by hand, each with an empty message.
    let call = |method: &str| {
        http::Request::post(format!("http://{addr}/grpc.health.v1.Health/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {}", token()))
            .body(())
            .unwrap()
    };
    // A stream open for longer than the idle timeout keeps the connection.
    let (resp, mut watch_body) = client.send_request(call("Watch"), false).unwrap();
    watch_body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let watch = resp.await.unwrap();
    assert_eq!(watch.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ended.is_finished(), "closed while a stream was open");
    // The client goes away from the stream: both halves dropped reset it.
    drop((watch, watch_body));

    let (resp, mut body) = client.send_request(call("Check"), false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    while let Some(chunk) = stream.data().await {
        let _ = chunk.unwrap();
    }
    let answered = Instant::now();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), ended).await.expect("closed when idle").unwrap();
    let idle = ended - answered;
    assert!(
        idle >= Duration::from_millis(1_500) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle"
    );
}

/// A call by hand on an HTTP/2 connection: its answer's gRPC status (headers or trailers), or
/// None while it is still open after `wait`.
async fn status_of(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    path: &str,
    wait: Duration,
) -> (Option<String>, Option<h2::RecvStream>, h2::SendStream<bytes::Bytes>) {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    // Nothing sent after the headers: the call stays open until the server ends it.
    let (resp, body) = client.send_request(req, false).unwrap();
    let Ok(resp) = tokio::time::timeout(wait, resp).await else { return (None, None, body) };
    let resp = resp.unwrap();
    if let Some(s) = resp.headers().get("grpc-status") {
        return (Some(s.to_str().unwrap().to_owned()), None, body);
    }
    let mut stream = resp.into_body();
    let trailers = tokio::time::timeout(wait, async {
        while let Some(Ok(_)) = stream.data().await {}
        stream.trailers().await
    })
    .await;
    match trailers {
        Ok(Ok(Some(t))) => (t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()), None, body),
        _ => (None, Some(stream), body),
    }
}

#[tokio::test]
async fn calls_without_a_token_are_few_and_keep_no_connection() {
    let limits = ConnLimits { first_request: Duration::from_secs(3), ..ConnLimits::default() };
    let (addr, _shutdown) = start(limits).await;
    let (mut client, conn) = h2::client::handshake(TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let opened = Instant::now();
    // Health's Watch stream needs a token.
    let (watch, _, _) =
        status_of(&mut client, addr, "/grpc.health.v1.Health/Watch", Duration::from_secs(2)).await;
    assert_eq!(watch.as_deref(), Some("16"), "UNAUTHENTICATED");
    // Four reflection streams held open; a fifth is refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let (status, stream, body) = status_of(&mut client, addr, path, Duration::from_millis(300)).await;
        assert_eq!(status, None, "a reflection stream stays open");
        held.push((stream, body));
    }
    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let (fifth, _, _) = status_of(&mut client, addr, path, Duration::from_secs(2)).await;
    assert_eq!(fifth.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    // They keep nothing open: the connection goes at its first-request deadline.
    let ended = tokio::time::timeout(Duration::from_secs(8), ended).await.expect("closed").unwrap();
    let lived = ended - opened;
    assert!(lived < Duration::from_secs(5), "lived {lived:?}");
    drop(held);
}

#[tokio::test]
async fn one_address_holds_only_its_share_of_connections() {
    let limits = ConnLimits { per_address: 3, ..ConnLimits::default() };
    let (addr, _shutdown) = start(limits).await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_after(&mut fourth, Duration::from_millis(500)).await.is_some(), "a fourth was kept");
    drop(mine);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthy(addr).await, "served once the others went");
}
