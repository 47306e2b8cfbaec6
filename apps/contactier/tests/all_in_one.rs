//! The all-in-one binary as a person runs it: start, read the banner, call it, stop it.

use contactier_proto::ops::v1::{GetTimeRequest, clock_service_client::ClockServiceClient};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const TEST_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct Started {
    child: Child,
    addrs: Vec<(String, String)>,
    token: String,
}

/// Starts `contactier` and reads its banner up to the token line.
fn start(data_dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Started {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contactier"));
    // A short drain: calls are still taken for it after SIGTERM, then the process ends.
    cmd.args(["--base-port", "0", "--manual-clock", "--drain-secs", "1"])
        .env("CONTACTIER_DATA_DIR", data_dir)
        .env_remove("CONTACTIER_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("contactier starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addrs, mut token) = (Vec::new(), None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((name, url)) = line.trim().split_once(" grpc://") {
            addrs.push((name.trim().to_owned(), url.trim().to_owned()));
        }
        if let Some(t) = line.strip_prefix("TOKEN=") {
            token = Some(t.to_owned());
            break;
        }
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Started { child, addrs, token: token.expect("the banner prints a token") }
}

async fn stop(mut s: Started) -> std::process::ExitStatus {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The drain, then up to the grace period for calls in flight (none here).
    for _ in 0..400 {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status;
        }
        // Async, so this test's own client connections can close when the server says goodbye.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.child.kill().ok();
    panic!("contactier did not stop on SIGTERM");
}

async fn check_serving(s: &Started) {
    let names: Vec<&str> = s.addrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["contacts", "marketing-status", "billing", "notification"]);
    for (name, addr) in &s.addrs {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(ch);
        let r = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{name}");
    }
}

async fn price_book(addr: &str, token: &str) -> Result<usize, tonic::Status> {
    use contactier_proto::billing::v1::{ListPriceBookRequest, billing_service_client::BillingServiceClient};
    let mut billing = BillingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut req = tonic::Request::new(ListPriceBookRequest::default());
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    Ok(billing.list_price_book(req).await?.into_inner().editions.len())
}

async fn clock_time(addr: &str, token: &str) -> Result<i64, tonic::Status> {
    let mut clock = ClockServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut req = tonic::Request::new(GetTimeRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    Ok(clock.get_time(req).await?.into_inner().now.unwrap().seconds)
}

#[tokio::test]
async fn runs_on_sqlite_files_and_its_token_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]);
    check_serving(&first).await;
    let token = first.token.clone();
    clock_time(&first.addrs[2].1, &token).await.expect("the printed token works");
    assert_eq!(price_book(&first.addrs[2].1, &token).await.expect("billing answers"), 3, "three editions");
    assert!(stop(first).await.success(), "a clean exit on SIGTERM");
    for db in ["contacts", "marketing-status", "billing", "notification"] {
        assert!(dir.path().join(format!("{db}.db")).exists(), "{db}.db in the data dir");
    }

    let second = start(dir.path(), &[]);
    clock_time(&second.addrs[0].1, &token).await.expect("a token from the first run still works");
    assert!(stop(second).await.success());
}

#[tokio::test]
async fn runs_on_postgresql_with_a_schema_per_service() {
    let url = std::env::var("CONTACTIER_TEST_DATABASE_URL").unwrap_or_else(|_| TEST_PG_URL.to_owned());
    let prefix = format!("t_{}_", &uuid_like());
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[("DATABASE_URL", &url), ("DATABASE_SCHEMA_PREFIX", &prefix)]);
    check_serving(&s).await;
    assert!(stop(s).await.success());
    assert!(!dir.path().join("contacts.db").exists(), "no SQLite file when PostgreSQL is configured");
    for service in ["contacts", "marketing_status", "billing", "notification"] {
        contactier_runtime::db::drop_postgres_schema(&url, &format!("{prefix}{service}")).await.unwrap();
    }
}

fn uuid_like() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}
