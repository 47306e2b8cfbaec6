//! PostgreSQL restarted under load: every service as its own process on PostgreSQL, a client
//! creating contacts in batches (each under a request id, retried while it fails) and reading
//! counts, and the database server restarted in the middle. The services come back on their
//! own; every contact is stored once and counted once.
//!
//! Its own test binary: restarting the server must not cut other tests' connections (cargo
//! runs test binaries one after another).

use contactier_e2e::procs::{Backend, Options, Services, bin_dir};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_runtime::Authenticator;
use contactier_runtime::testing::{authed, channel};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

const ACCOUNT: &str = "acct-pg-restart";
const BATCHES: usize = 60;
const PER_BATCH: usize = 100;

/// Restarts the tests' PostgreSQL and waits until it answers: the throwaway cluster of
/// `scripts/with-test-postgres` when it made one, else the machine's cluster.
fn restart_postgres() {
    let ok = if let Some(data) = std::env::var_os("CONTACTIER_TEST_PGDATA") {
        let bin =
            std::path::PathBuf::from(std::env::var_os("CONTACTIER_TEST_PG_BIN").expect("its bin folder"));
        Command::new(bin.join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-m", "fast", "-w", "restart"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl runs")
    } else {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("a local PostgreSQL cluster")
            .filter_map(std::result::Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("a cluster version");
        Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "restart"])
            .status()
            .expect("pg_ctlcluster runs")
    };
    assert!(ok.success(), "PostgreSQL restarted");
    let url = contactier_runtime::testing::test_pg_url();
    let deadline = Instant::now() + Duration::from_secs(60);
    let isready = std::env::var_os("CONTACTIER_TEST_PG_BIN")
        .map_or_else(|| "pg_isready".into(), |b| std::path::PathBuf::from(b).join("pg_isready"));
    while !Command::new(&isready).args(["-d", &url, "-q"]).status().is_ok_and(|s| s.success()) {
        assert!(Instant::now() < deadline, "PostgreSQL is back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_and_doubles_nothing() {
    let bins = bin_dir().expect("the service binaries");
    let services =
        Services::start_with(Backend::Postgres, &bins, Options::default()).await.expect("services start");
    let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
    let token = auth.user_token(ACCOUNT, "user-1", &["read", "write"], chrono::Duration::hours(1));
    let contacts = ContactsServiceClient::new(channel(services.addr("contacts")));
    let status = MarketingStatusServiceClient::new(channel(services.addr("marketing-status")));

    // Reads alongside the writes, all through the restart.
    let reading = {
        let (mut status, token) = (status.clone(), token.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                match status.get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &token)).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };

    let mut refused = 0;
    let (mut during, mut slowest) = (0, Duration::ZERO);
    let mut restart: Option<tokio::task::JoinHandle<Duration>> = None;
    // Writes before, during and after the restart: until it is over and BATCHES more.
    let mut b = 0;
    let mut after = 0;
    while after < BATCHES {
        match &restart {
            Some(r) if r.is_finished() => after += 1,
            Some(_) => during += 1,
            None => {}
        }
        let started = Instant::now();
        if b == 5 {
            // A single read before the restart: the reads' connection is open when it happens.
            read_one(&contacts, &token, "load000-000@example.com").await.expect("read before the restart");
        }
        if b == 10 {
            // While the writes go on.
            restart = Some(tokio::task::spawn_blocking(|| {
                let began = Instant::now();
                restart_postgres();
                began.elapsed()
            }));
        }
        let batch = (0..PER_BATCH)
            .map(|i| cpb::ContactInput {
                email: format!("load{b:03}-{i:03}@example.com"),
                properties: Default::default(),
                source: None,
                requested_status: 0,
            })
            .collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req =
                cpb::BatchCreateContactsRequest { contacts: batch.clone(), request_id: format!("load-{b}") };
            match contacts.clone().batch_create_contacts(authed(req, &token)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(
                        (r.results.len(), r.errors.len()),
                        (PER_BATCH, 0),
                        "batch {b}: {:?}",
                        r.errors
                    );
                    b += 1;
                    slowest = slowest.max(started.elapsed());
                    break;
                }
                Err(e) => {
                    assert!(
                        matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
                        "batch {b}: a database outage is UNAVAILABLE, not {e:?}"
                    );
                    refused += 1;
                    assert!(Instant::now() < deadline, "batch {b}: still refused after 60 s: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let (reads_ok, reads_failed) = reading.await.unwrap();
    // The single reads' connection died with the server; the next read takes a new one.
    read_one(&contacts, &token, "load001-001@example.com").await.expect("a read after the restart");
    let restarted = restart.expect("restarted").await.unwrap();
    assert!(during > 0, "writes were made while the database restarted");

    let n = (b * PER_BATCH) as i64;
    let total = contacts.clone().count_contacts(authed(cpb::CountContactsRequest {}, &token)).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, n, "every contact stored once");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = status
            .clone()
            .get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &token))
            .await
            .unwrap();
        let c = c.into_inner().count.unwrap_or_default();
        let known = c.marketing + c.pending_non_marketing + c.non_marketing;
        assert!(known <= n, "counted twice: {c:?}");
        if known == n {
            break;
        }
        assert!(Instant::now() < deadline, "marketing-status knows {known} of {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "restart took {restarted:?}; {b} batches, {during} begun during the restart, slowest {slowest:?}; \
         {refused} refused and retried; reads {reads_ok} answered, {reads_failed} refused"
    );
    services.stop(Backend::Postgres).await;
}

async fn read_one(
    contacts: &ContactsServiceClient<tonic::transport::Channel>,
    token: &str,
    email: &str,
) -> Result<cpb::Contact, tonic::Status> {
    let req = cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Email(email.into())) };
    Ok(contacts.clone().get_contact(authed(req, token)).await?.into_inner().contact.expect("a contact"))
}
