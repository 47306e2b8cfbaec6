//! Calls between services spread over every replica a name resolves to: three servers on
//! loopback behind one name, one killed mid-run without a failed call, one added and found by
//! resolving again, one gone from the name and dropped.

use chrono::{TimeZone, Utc};
use contactier_proto::ops::v1::{GetTimeRequest, clock_service_client::ClockServiceClient};
use contactier_runtime::auth::Authenticator;
use contactier_runtime::balance::{Balanced, Resolve};
use contactier_runtime::clock::Clock;
use contactier_runtime::server::{self, ServeOptions, ServiceSpec};
use contactier_runtime::shutdown::Shutdown;
use contactier_runtime::testing::authed;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &[u8] = b"balancing-test-secret-balancing-test";

/// A name that resolves to whatever the test says.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<Vec<SocketAddr>>>);

impl Resolve for Names {
    fn resolve(&self, _: &str, _: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let addrs = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

struct Replica {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Replica `n` answers GetTime with 2026-01-01 plus `n` days: that is how a call names it.
async fn replica(n: u32) -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 1, 1 + n, 0, 0, 0).unwrap());
    let opts = ServeOptions {
        authenticator: Authenticator::new(SECRET, "contactier", "contactier"),
        clock,
        shutdown: Shutdown::new(),
        tls: None,
        grace: Duration::from_secs(5),
        drain: Duration::ZERO,
        rate_limit: None,
        conn: contactier_runtime::conn::ConnLimits::default(),
        ops_account: "ops".to_owned(),
    };
    Replica { addr, task: tokio::spawn(server::serve(ServiceSpec::bare("test"), listener, opts)) }
}

/// `n` calls, `parallel` at a time; answers which replica (its day) served each.
async fn calls(
    client: &ClockServiceClient<Balanced>,
    n: usize,
    parallel: usize,
) -> Vec<Result<u32, tonic::Status>> {
    counted_calls(client, n, parallel, Arc::default()).await
}

/// As [`calls`], counting the calls done in `done`.
async fn counted_calls(
    client: &ClockServiceClient<Balanced>,
    n: usize,
    parallel: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Result<u32, tonic::Status>> {
    let token = Authenticator::new(SECRET, "contactier", "contactier").user_token(
        "acct-a",
        "operator",
        &["ops"],
        chrono::Duration::hours(1),
    );
    let one = |mut c: ClockServiceClient<Balanced>, token: String, done: Arc<AtomicUsize>| async move {
        let now = c.get_time(authed(GetTimeRequest {}, &token)).await;
        done.fetch_add(1, Ordering::SeqCst);
        let now = now?.into_inner().now.unwrap();
        Ok(((now.seconds - Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap().timestamp()) / 86_400) as u32)
    };
    use futures::StreamExt;
    futures::stream::iter((0..n).map(|_| one(client.clone(), token.clone(), done.clone())))
        .buffered(parallel)
        .collect()
        .await
}

fn spread(results: &[Result<u32, tonic::Status>]) -> HashMap<u32, usize> {
    let mut by = HashMap::new();
    for r in results {
        *by.entry(*r.as_ref().unwrap()).or_default() += 1;
    }
    by
}

#[tokio::test]
async fn calls_spread_over_every_replica_and_survive_one_killed_mid_run() {
    let replicas = [replica(1).await, replica(2).await, replica(3).await];
    let names = Names::default();
    *names.0.lock().unwrap() = replicas.iter().map(|r| r.addr).collect();
    let channel =
        Balanced::new("http://billing-peers:50053", Arc::new(names.clone()), Duration::from_millis(200))
            .unwrap();
    let client = ClockServiceClient::new(channel.clone());

    let results = calls(&client, 90, 4).await;
    let by = spread(&results);
    for day in 1..=3 {
        assert!(by.get(&day).copied().unwrap_or(0) >= 20, "every replica takes its share: {by:?}");
    }

    // Replica 2 is killed while calls are under way (and still resolves, as a pod does for a
    // moment after it died): no call fails; they go to the other two.
    let done = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn({
        let (client, done) = (client.clone(), done.clone());
        async move { counted_calls(&client, 600, 8, done).await }
    });
    while done.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    replicas[1].task.abort();
    let killed_at = done.load(Ordering::SeqCst);
    let results = running.await.unwrap();
    assert!(killed_at < 300, "the replica died mid-run ({killed_at} calls done)");
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of 600 calls failed: {:?}", failed.len(), failed.first());
    let by = spread(&results);
    assert!(by[&2] > 0 && by[&2] < 200, "replica 2 served until it died: {by:?}");
    let after = spread(&calls(&client, 60, 4).await);
    assert_eq!(after.get(&2), None, "a dead replica is passed over: {after:?}");

    // Scaling up: a fourth replica under the name is found at the next resolution; the dead
    // one, gone from the name, is dropped.
    let fourth = replica(4).await;
    *names.0.lock().unwrap() = vec![replicas[0].addr, replicas[2].addr, fourth.addr];
    let mut want = vec![replicas[0].addr, replicas[2].addr, fourth.addr];
    want.sort();
    // Resolutions come every 200 ms but at most every 500 ms: the change is seen within a second.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut now = channel.replicas();
    now.sort();
    while now != want && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = channel.replicas();
        now.sort();
    }
    assert_eq!(now, want);
    let by = spread(&calls(&client, 60, 4).await);
    assert!(by.get(&4).copied().unwrap_or(0) >= 10, "the new replica takes its share: {by:?}");
}

#[tokio::test]
async fn a_name_that_resolves_to_nothing_answers_unavailable() {
    let channel =
        Balanced::new("http://nobody:50053", Arc::new(Names::default()), Duration::from_secs(1)).unwrap();
    let results = calls(&ClockServiceClient::new(channel), 1, 1).await;
    let e = results[0].as_ref().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no replica"), "{e:?}");
}

#[tokio::test]
async fn a_replica_that_stopped_answering_is_passed_over_in_time() {
    // A replica frozen with its socket open: connections are accepted, nothing is ever said.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let good = [replica(1).await, replica(2).await];
    let names = Names::default();
    *names.0.lock().unwrap() = vec![good[0].addr, hung_addr, good[1].addr];
    let channel = Balanced::with_call_timeout(
        "http://billing-peers:50053",
        Arc::new(names),
        Duration::from_secs(60),
        Duration::from_millis(300),
    )
    .unwrap();
    let client = ClockServiceClient::new(channel);
    let started = std::time::Instant::now();
    let results = calls(&client, 30, 3).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of 30 calls failed: {:?}", failed.len(), failed.first());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the frozen replica held calls for {:?}",
        started.elapsed()
    );
}

/// In front of `behind`: the first connection is closed once a call has come in on it, as a
/// replica ends an aged connection (`max_connection_age` and its grace) under a call; later
/// connections are passed through.
async fn closing_the_first_connection(behind: SocketAddr) -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut socket, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    // The preface, the settings and the call: read until the client goes quiet.
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                    }
                    drop(socket);
                });
            } else {
                tokio::spawn(async move {
                    let mut up = tokio::net::TcpStream::connect(behind).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut up).await;
                });
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_call_whose_connection_closes_under_it_is_sent_again_on_a_new_one() {
    let only = replica(1).await;
    let names = Names::default();
    *names.0.lock().unwrap() = vec![closing_the_first_connection(only.addr).await];
    let channel =
        Balanced::new("http://notification-peers:50054", Arc::new(names), Duration::from_secs(60)).unwrap();
    let client = ClockServiceClient::new(channel);
    // One replica: no other to turn to, and the call (a read, safe to repeat) must not fail.
    let results = calls(&client, 1, 1).await;
    assert_eq!(results.len(), 1);
    assert_eq!(*results[0].as_ref().expect("sent again on a new connection"), 1);
    let more = calls(&client, 20, 4).await;
    assert!(more.iter().all(Result::is_ok), "{:?}", more.iter().find(|r| r.is_err()));
}
