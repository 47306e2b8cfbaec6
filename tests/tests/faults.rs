//! Services killed (SIGKILL: no drain, no cleanup) in the middle of their heaviest work, then
//! started again: an import, a bulk status change, an update date, a workflow run and an
//! invoice run. Each
//! service runs as its own process on a manual clock; the test watches the work through the
//! service's database and kills it when the work is part done. Afterwards counts, audit trail,
//! invoices and alerts are exactly what they would be without the fault.

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use contactier_e2e::procs::{Backend, Options, Services, bin_dir};
use contactier_e2e::subscription;
use contactier_proto::billing::v1::{
    self as bpb, billing_internal_service_client::BillingInternalServiceClient,
    billing_service_client::BillingServiceClient,
};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Term};
use contactier_proto::contacts::v1::{
    self as cpb, contacts_service_client::ContactsServiceClient, import_contacts_request::Part,
};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_internal_service_client::MarketingStatusInternalServiceClient,
    marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::notification::v1::{
    self as npb, notification_service_client::NotificationServiceClient,
};
use contactier_proto::ops::v1::{self as opb, clock_service_client::ClockServiceClient};
use contactier_runtime::Authenticator;
use contactier_runtime::convert::timestamp;
use contactier_runtime::testing::{authed, channel};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tonic::Code;

const ACCOUNT: &str = "acct-faults";

fn start_time() -> DateTime<Utc> {
    // 20 April 2026, noon in New York.
    Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()
}

struct Fault {
    services: Services,
    auth: Authenticator,
}

impl Fault {
    async fn start(backend: Backend) -> Fault {
        let bins = bin_dir().expect("the service binaries");
        let options = Options { manual_clock: Some(start_time()), metrics: true, ..Options::default() };
        let services = Services::start_with(backend, &bins, options).await.expect("the services start");
        let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
        Fault { services, auth }
    }

    fn user(&self, account: &str) -> String {
        self.auth.user_token(
            account,
            "user-1",
            &["read", "write", "admin", "ops"],
            chrono::Duration::hours(1),
        )
    }

    fn service(&self, name: &str) -> String {
        self.auth.service_token(name, chrono::Duration::hours(1))
    }

    fn contacts(&self) -> ContactsServiceClient<tonic::transport::Channel> {
        ContactsServiceClient::new(channel(self.services.addr("contacts")))
    }

    fn status(&self) -> MarketingStatusServiceClient<tonic::transport::Channel> {
        MarketingStatusServiceClient::new(channel(self.services.addr("marketing-status")))
    }

    fn billing(&self) -> BillingServiceClient<tonic::transport::Channel> {
        BillingServiceClient::new(channel(self.services.addr("billing")))
    }

    async fn subscribe(&self, account: &str) {
        let req = subscription(Edition::Professional, Term::Monthly, Date { year: 2026, month: 4, day: 15 });
        self.billing().create_subscription(authed(req, &self.user(account))).await.expect("subscribed");
    }

    async fn counts(&self) -> mpb::MarketingCount {
        let mut status = self.status();
        let r =
            status.get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &self.user(ACCOUNT))).await;
        r.expect("counts").into_inner().count.unwrap_or_default()
    }

    /// Waits until `done` holds of marketing-status's counts, then checks they stay put.
    async fn counts_settle(
        &self,
        what: &str,
        done: impl Fn(&mpb::MarketingCount) -> bool,
    ) -> mpb::MarketingCount {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let c = self.counts().await;
            if done(&c) {
                // Nothing more arrives late (an event delivered twice would show here).
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let again = self.counts().await;
                assert_eq!(
                    (again.marketing, again.pending_non_marketing, again.non_marketing),
                    (c.marketing, c.pending_non_marketing, c.non_marketing),
                    "{what}: the counts moved after settling"
                );
                return again;
            }
            assert!(Instant::now() < deadline, "{what}: counts stuck at {c:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `sql` on `service`'s database until `part_done` holds, then SIGKILLs the service.
    /// Fails if the work finished before it could be cut.
    async fn kill_when(
        &mut self,
        service: &str,
        table: &str,
        sql: &str,
        part_done: impl Fn(i64) -> bool,
        finished: impl Fn(i64) -> bool,
    ) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_error = None;
        loop {
            let v = match self.services.scalar(service, table, sql).await {
                Ok(v) => v,
                Err(e) => {
                    last_error = Some(e);
                    0
                }
            };
            if part_done(v) {
                self.services.kill(service);
                return v;
            }
            assert!(!finished(v), "{service} finished ({v}) before it could be cut: make the work bigger");
            // What the reads last failed with, if they did, says more than the count.
            assert!(
                Instant::now() < deadline,
                "{service}: no progress ({v}); last read error: {last_error:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills marketing-status once some but not all of the [`ROWS`] contacts are marketing.
    async fn kill_status_with_marketing_part_set(&mut self) -> i64 {
        let marketing =
            format!("SELECT coalesce(max(marketing), 0) FROM {{t}} WHERE account_id = '{ACCOUNT}'");
        self.kill_when(
            "marketing-status",
            "account_counts",
            &marketing,
            |m| m > 0 && m < ROWS as i64,
            |m| m >= ROWS as i64,
        )
        .await
    }

    /// The account's alerts in notification's feed, newest first.
    async fn alerts(&self, account: &str) -> Result<Vec<npb::Alert>, tonic::Status> {
        let req = npb::ListAlertsRequest { page_size: 500, page_token: String::new() };
        let feed = NotificationServiceClient::new(channel(self.services.addr("notification")))
            .list_alerts(authed(req, &self.user(account)))
            .await?;
        Ok(feed.into_inner().alerts)
    }

    async fn set_clock(&self, service: &str, t: DateTime<Utc>) {
        let mut c = ClockServiceClient::new(channel(self.services.addr(service)));
        c.set_time(authed(opb::SetTimeRequest { time: Some(timestamp(t)) }, &self.user(ACCOUNT)))
            .await
            .expect("the clock moves");
    }
}

fn csv(rows: usize) -> Vec<u8> {
    let mut out = String::from("email,first_name\n");
    for i in 0..rows {
        out.push_str(&format!("person{i:06}@example.com,P{i}\n"));
    }
    out.into_bytes()
}

/// Streams the import; with `cut_after`, returns once that many rows are reported read.
async fn import(
    f: &Fault,
    file: &[u8],
    cut_after: Option<i64>,
) -> Result<Option<cpb::ImportSummary>, tonic::Status> {
    let header = cpb::ImportHeader {
        name: "faults".into(),
        mode: cpb::ImportMode::Create as i32,
        column_mapping: [("email", "email"), ("first_name", "first_name")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
        request_id: "import-under-fire".into(),
        ..Default::default()
    };
    let mut parts = vec![cpb::ImportContactsRequest { part: Some(Part::Header(header)) }];
    parts.extend(
        file.chunks(64 * 1024).map(|c| cpb::ImportContactsRequest { part: Some(Part::Chunk(c.to_vec())) }),
    );
    parts.push(cpb::ImportContactsRequest {
        part: Some(Part::End(cpb::ImportEnd { size: file.len() as i64 })),
    });
    let mut progress = f
        .contacts()
        .import_contacts(authed(futures::stream::iter(parts), &f.user(ACCOUNT)))
        .await?
        .into_inner();
    let mut last = None;
    while let Some(m) = progress.message().await? {
        if cut_after.is_some_and(|n| m.progress.as_ref().is_some_and(|p| p.rows_read >= n)) {
            return Ok(m.progress);
        }
        last = m.progress;
    }
    Ok(last)
}

/// Retries `call` while the service comes back (UNAVAILABLE) or an earlier try still holds the
/// work (ABORTED).
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if matches!(e.code(), Code::Unavailable | Code::Aborted | Code::Unknown) => {
                assert!(Instant::now() < deadline, "{what}: still failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

fn everyone() -> Option<cpb::ContactFilter> {
    Some(cpb::ContactFilter {
        groups: vec![cpb::FilterGroup {
            filters: vec![cpb::Filter {
                property: "email".into(),
                operator: cpb::FilterOperator::Contains as i32,
                value: "@example.com".into(),
                values: vec![],
                high_value: String::new(),
            }],
        }],
    })
}

async fn set_everyone(
    f: &Fault,
    status: MarketingStatus,
    request_id: &str,
) -> mpb::SetMarketingStatusResponse {
    let req = mpb::SetMarketingStatusRequest {
        request_id: request_id.into(),
        target: Some(mpb::set_marketing_status_request::Target::Filter(everyone().unwrap())),
        status: status as i32,
        source: None,
    };
    f.status()
        .set_marketing_status(authed(req, &f.user(ACCOUNT)))
        .await
        .map(tonic::Response::into_inner)
        .unwrap_or_else(|e| {
            panic!("setting {status:?}: {e:?}");
        })
}

const ROWS: usize = 30_000;

async fn contacts_survive_a_kill_in_each_heavy_path(backend: Backend) -> anyhow::Result<()> {
    let mut f = Fault::start(backend).await;
    f.subscribe(ACCOUNT).await;
    let file = csv(ROWS);

    // 1. The contacts service killed during an import; the retry finishes it.
    let cut = import(&f, &file, Some(5_000)).await?.context("progress")?;
    assert_eq!(cut.state(), cpb::ImportState::Running, "{backend:?}");
    let written = f
        .kill_when(
            "contacts",
            "contacts",
            "SELECT count(*) FROM {t}",
            |n| n >= 5_000 && n < ROWS as i64,
            |n| n >= ROWS as i64,
        )
        .await;
    f.services.restart("contacts").await?;
    // Nothing runs the killed import now: once its lease has passed, it reads as failed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = || async {
            let req = cpb::GetImportRequest { import_id: cut.import_id.clone() };
            f.contacts().get_import(authed(req, &f.user(ACCOUNT))).await.map(tonic::Response::into_inner)
        };
        let seen = retrying("the killed import", get).await.summary.context("a summary")?;
        if seen.state() == cpb::ImportState::Failed {
            assert!(seen.finished_at.is_some(), "{backend:?}: {seen:?}");
            break;
        }
        assert_eq!(seen.state(), cpb::ImportState::Running, "{backend:?}");
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: the killed import still runs: {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = retrying("the import's retry", || import(&f, &file, None)).await.context("a summary")?;
    assert_eq!(
        (summary.rows_read, summary.created, summary.skipped, summary.failed),
        (ROWS as i64, ROWS as i64, 0, 0),
        "{backend:?}: the import after a kill at {written} contacts"
    );
    let total = f.contacts().count_contacts(authed(cpb::CountContactsRequest {}, &f.user(ACCOUNT))).await?;
    assert_eq!(total.into_inner().total_contacts, ROWS as i64, "{backend:?}");
    let c = f.counts_settle("after the import", |c| c.marketing + c.non_marketing >= ROWS as i64).await;
    assert_eq!((c.marketing, c.non_marketing), (0, ROWS as i64), "{backend:?}: every contact known once");

    // 2. Marketing-status killed during a bulk change; the retry under its request id ends it.
    let audit = "SELECT count(*) FROM {t}";
    let before = f.services.scalar("marketing-status", "status_changes", audit).await?;
    let bulk = {
        let mut status = f.status();
        let token = f.user(ACCOUNT);
        tokio::spawn(async move {
            let req = mpb::SetMarketingStatusRequest {
                request_id: "bulk-under-fire".into(),
                target: Some(mpb::set_marketing_status_request::Target::Filter(everyone().unwrap())),
                status: MarketingStatus::Marketing as i32,
                source: None,
            };
            status.set_marketing_status(authed(req, &token)).await
        })
    };
    let cut_at = f.kill_status_with_marketing_part_set().await;
    assert!(bulk.await?.is_err(), "{backend:?}: the caller sees the cut");
    f.services.restart("marketing-status").await?;
    let r = retrying("the bulk change's retry", || async {
        let req = mpb::SetMarketingStatusRequest {
            request_id: "bulk-under-fire".into(),
            target: Some(mpb::set_marketing_status_request::Target::Filter(everyone().unwrap())),
            status: MarketingStatus::Marketing as i32,
            source: None,
        };
        f.status().set_marketing_status(authed(req, &f.user(ACCOUNT))).await.map(tonic::Response::into_inner)
    })
    .await;
    assert_eq!(r.count.unwrap_or_default().marketing, ROWS as i64, "{backend:?}: cut at {cut_at}");
    let c = f.counts_settle("after the bulk change", |c| c.marketing == ROWS as i64).await;
    assert_eq!(c.non_marketing, 0, "{backend:?}");
    let after = f.services.scalar("marketing-status", "status_changes", audit).await?;
    assert_eq!(after - before, ROWS as i64, "{backend:?}: one audit entry per contact changed");
    // Billing and notification follow: the final count, each alert once per tier and period.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = f.billing().get_usage(authed(bpb::GetUsageRequest {}, &f.user(ACCOUNT))).await?.into_inner();
        if u.usage.as_ref().is_some_and(|u| u.marketing_count == ROWS as i64) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: billing has {:?}", u.usage);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts = f.alerts(ACCOUNT).await?;
    let mut seen = HashSet::new();
    for a in &alerts {
        assert!(
            seen.insert((a.kind, a.tier, a.period_start, a.upgrade_id.clone(), a.invoice_id.clone())),
            "{backend:?}: an alert twice: {a:?}"
        );
    }
    assert!(alerts.iter().any(|a| a.kind == npb::AlertKind::TierExceeded as i32), "{backend:?}: {alerts:?}");

    // 3. An update date is in effect as soon as it is applied; marketing-status is killed while
    // it rewrites the contacts' rows afterwards, and the restarted service finishes the rewrite.
    let r = set_everyone(&f, MarketingStatus::NonMarketing, "").await;
    assert_eq!(r.count.unwrap_or_default().pending_non_marketing, ROWS as i64, "{backend:?}");
    let (ms, token) = (f.services.addr("marketing-status"), f.service("billing"));
    let apply = || {
        let req = mpb::ApplyUpdateDateRequest {
            account_id: ACCOUNT.into(),
            update_date: Some(Date { year: 2026, month: 5, day: 15 }),
            effective_at: Some(timestamp(Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap())),
        };
        let mut c = MarketingStatusInternalServiceClient::new(channel(ms));
        let token = token.clone();
        async move { c.apply_update_date(authed(req, &token)).await.map(tonic::Response::into_inner) }
    };
    let first = apply().await?;
    let c = first.count.unwrap_or_default();
    assert_eq!(
        (first.applied, c.marketing, c.pending_non_marketing, c.non_marketing),
        (ROWS as i64, 0, 0, ROWS as i64),
        "{backend:?}: in effect when answered"
    );
    let requested = after + ROWS as i64;
    let cut_at = f
        .kill_when(
            "marketing-status",
            "status_changes",
            audit,
            |n| n > requested && n < requested + ROWS as i64,
            |n| n >= requested + ROWS as i64,
        )
        .await;
    f.services.restart("marketing-status").await?;
    let again = retrying("the update date again", apply).await;
    // The first answer again: nothing more changed.
    assert!(again.already_applied && again.applied == first.applied, "{backend:?}: {again:?}");
    let c = again.count.unwrap_or_default();
    assert_eq!(
        (c.marketing, c.pending_non_marketing, c.non_marketing),
        (0, 0, ROWS as i64),
        "{backend:?}: the rewrite cut at {cut_at} audit entries"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while f.services.scalar("marketing-status", "update_marks", audit).await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: the rewrite was not finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changes = f.services.scalar("marketing-status", "status_changes", audit).await?;
    assert_eq!(changes - after, 2 * ROWS as i64, "{backend:?}: a request and an application per contact");
    let pending = "SELECT count(*) FROM {t} WHERE pending OR marketing";
    assert_eq!(f.services.scalar("marketing-status", "contact_status", pending).await?, 0, "{backend:?}");

    // 4. Marketing-status killed while a workflow run sets everyone marketing; the queued run
    // is carried out again after the restart and changes each contact once.
    let w = mpb::Workflow {
        name: "everyone is marketing".into(),
        target: Some(mpb::workflow::Target::Filter(everyone().unwrap())),
        action: mpb::WorkflowAction::SetMarketing as i32,
        ..Default::default()
    };
    let w = authed(mpb::CreateWorkflowRequest { workflow: Some(w) }, &f.user(ACCOUNT));
    let w = f.status().create_workflow(w).await?.into_inner().workflow.context("the workflow")?;
    let run = mpb::RunWorkflowRequest { workflow_id: w.id, request_id: "run-under-fire".into() };
    let run =
        f.status().run_workflow(authed(run, &f.user(ACCOUNT))).await?.into_inner().run.context("the run")?;
    let cut_at = f.kill_status_with_marketing_part_set().await;
    f.services.restart("marketing-status").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = || async {
            let req = mpb::GetWorkflowRunRequest { id: run.id.clone() };
            f.status().get_workflow_run(authed(req, &f.user(ACCOUNT))).await.map(tonic::Response::into_inner)
        };
        let r = retrying("the run's state", get).await.run.context("the run")?;
        if r.state() == mpb::WorkflowRunState::Succeeded {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: the run cut at {cut_at} is {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = f.counts_settle("after the workflow run", |c| c.marketing == ROWS as i64).await;
    assert_eq!((c.pending_non_marketing, c.non_marketing), (0, 0), "{backend:?}: cut at {cut_at}");
    let by_run = f.services.scalar("marketing-status", "status_changes", audit).await? - changes;
    assert_eq!(by_run, ROWS as i64, "{backend:?}: one audit entry per contact the run changed");

    f.services.stop(backend).await;
    Ok(())
}

const ACCOUNTS: usize = 400;

/// Billing killed during the invoice run: every upgraded account gets its invoice once,
/// numbered 1, and one notice of it.
async fn invoices_survive_a_kill_during_the_run(backend: Backend) -> anyhow::Result<()> {
    let mut f = Fault::start(backend).await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-run-{i:03}")).collect();
    for a in &accounts {
        f.subscribe(a).await;
    }
    // Each account passes its 2,000 tier today: an upgrade, invoiced tomorrow at 04:00 UTC.
    let events = accounts
        .iter()
        .map(|a| bpb::CountChanged {
            event_id: format!("count-{a}"),
            account_id: a.clone(),
            version: 1,
            marketing_count: 2_100,
            pending_non_marketing: 0,
            non_marketing: 0,
            observed_at: None,
            marketing_contacts_enabled: true,
        })
        .collect();
    BillingInternalServiceClient::new(channel(f.services.addr("billing")))
        .apply_count_events(authed(bpb::ApplyCountEventsRequest { events }, &f.service("marketing-status")))
        .await?;
    let due = Utc.with_ymd_and_hms(2026, 4, 21, 4, 0, 0).unwrap();
    let run = {
        let mut c = ClockServiceClient::new(channel(f.services.addr("billing")));
        let token = f.user(ACCOUNT);
        tokio::spawn(async move {
            c.set_time(authed(opb::SetTimeRequest { time: Some(timestamp(due)) }, &token)).await
        })
    };
    let n = ACCOUNTS as i64;
    let cut_at =
        f.kill_when("billing", "invoices", "SELECT count(*) FROM {t}", |i| i > 0 && i < n, |i| i >= n).await;
    assert!(run.await?.is_err(), "{backend:?}");
    f.services.restart("billing").await?;
    f.set_clock("billing", due).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.services.scalar("billing", "invoices", "SELECT count(*) FROM {t}").await? < n {
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: the run did not finish after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &accounts {
        let invoices = f
            .billing()
            .list_invoices(authed(
                bpb::ListInvoicesRequest { page_size: 10, page_token: String::new() },
                &f.user(a),
            ))
            .await?
            .into_inner()
            .invoices;
        let got: Vec<_> =
            invoices.iter().map(|i| (i.number, i.kind, i.total.as_ref().map(|m| m.amount_minor))).collect();
        assert_eq!(
            got,
            [(1, bpb::InvoiceKind::Upgrade as i32, Some(18_750))],
            "{backend:?}: {a} after a kill at {cut_at} invoices"
        );
    }
    // Each invoice reaches notification once.
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in &accounts {
        loop {
            let alerts = f.alerts(a).await?;
            let notices = alerts.iter().filter(|x| x.kind == npb::AlertKind::InvoiceIssued as i32).count();
            anyhow::ensure!(notices <= 1, "{backend:?}: {a} has {notices} invoice notices");
            if notices == 1 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{backend:?}: {a} has no invoice notice");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    f.services.stop(backend).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_work_contacts_marketing_status_and_counts_come_out_exact() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        contacts_survive_a_kill_in_each_heavy_path(backend).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_invoice_run_every_invoice_is_issued_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        invoices_survive_a_kill_during_the_run(backend).await.unwrap();
    }
}

/// The `grpc_server_handled_total` calls of `method` in a scrape of a service's metrics.
fn calls_handled(addr: std::net::SocketAddr, method: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let method = format!("grpc_method=\"{method}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&method))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// An account's single changes that waited out an outage of marketing-status go in a few
/// calls once it is back. A call each (an outbox entry each) applied them at a round trip each:
/// 680 took 17 s seen from outside, and every other account's newer changes waited behind them.
async fn a_backlog_of_single_changes_goes_in_a_few_calls(backend: Backend) -> anyhow::Result<()> {
    const CHANGES: usize = 120;
    let mut f = Fault::start(backend).await;
    f.services.kill("marketing-status");
    let token = f.user("acct-backlog");
    for i in 0..CHANGES {
        let contact = cpb::ContactInput {
            email: format!("single{i}@example.com"),
            source: Some(contactier_proto::common::v1::Source {
                r#type: contactier_proto::common::v1::SourceType::Form as i32,
                id: String::new(),
            }),
            ..Default::default()
        };
        let req = cpb::CreateContactRequest { contact: Some(contact), request_id: String::new() };
        f.contacts()
            .create_contact(authed(req, &token))
            .await
            .context("a contact while marketing-status is down")?;
    }
    f.services.restart("marketing-status").await?;
    // Past every retry the outage left (the relay's clock is the manual one).
    f.set_clock("contacts", start_time() + chrono::Duration::minutes(10)).await;
    let count = "SELECT COUNT(*) FROM {t} WHERE account_id = 'acct-backlog'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.services.scalar("marketing-status", "contact_status", count).await? < CHANGES as i64 {
        anyhow::ensure!(Instant::now() < deadline, "{backend:?}: the backlog did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = calls_handled(f.services.metrics_addr("marketing-status"), "ApplyContactEvents")?;
    anyhow::ensure!(
        calls <= 10.0,
        "{backend:?}: {CHANGES} single changes took {calls} calls of ApplyContactEvents"
    );
    f.services.stop(backend).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_single_changes_goes_to_marketing_status_in_a_few_calls() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        a_backlog_of_single_changes_goes_in_a_few_calls(backend).await.unwrap();
    }
}
