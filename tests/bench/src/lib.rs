//! Benchmarks of Contactier's hot paths with every service running for real as its own process,
//! on PostgreSQL and SQLite, driven by this process over gRPC: CSV import (beside a raw COPY),
//! bulk status changes, an update date, unary reads under load (beside an empty RPC), status
//! change to alert latency, and idle memory.

pub mod floors;
pub mod instant;
pub mod load;
pub mod pgbench;
pub use contactier_e2e::procs;

use anyhow::Context;
use contactier_proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_internal_service_client::MarketingStatusInternalServiceClient,
    marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::notification::v1::{
    self as npb, notification_service_client::NotificationServiceClient,
};
use contactier_runtime::Authenticator;
use futures::{StreamExt, TryStreamExt};
use load::{Call, LoadResult};
pub use procs::Backend;
use procs::Services;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How big a run is.
#[derive(Clone, Debug)]
pub struct Config {
    pub rows: usize,
    pub load_time: Duration,
    pub concurrency: usize,
    /// Contacts of the alert-latency account (each tier of 1,000 gives four samples).
    pub alert_contacts: usize,
    pub backends: Vec<Backend>,
    /// Where the empty-RPC server runs: a child process started from this binary, or here.
    pub empty_server: EmptyServer,
    /// Sizes of the many-accounts instant (see [`instant`]), each run on fresh services.
    pub instant_accounts: Vec<usize>,
    /// Seconds of the pgbench run the instant is set beside.
    pub pgbench_seconds: u64,
    /// Where each service's warnings are kept (see [`procs::Options::warn_dir`]).
    pub warn_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub enum EmptyServer {
    Child(PathBuf),
    InProcess,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub backend: &'static str,
    pub value: String,
    pub limit: String,
    pub target: String,
    /// None when the row has no target.
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        what: &str,
        backend: &'static str,
        value: String,
        limit: String,
        target: &str,
        met: Option<bool>,
    ) {
        println!("{backend:<10} {what:<48} {value:<28} {limit}");
        self.rows.push(Row { what: what.into(), backend, value, limit, target: target.into(), met });
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| measurement | backend | result | limit (same run) | target | met |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.what, r.backend, r.value, r.limit, r.target, met
            );
        }
        s
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("an address").connect_lazy()
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    r
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// The CSV of rows `from..to` (header first when `from` is 0).
fn csv(from: usize, to: usize) -> Vec<u8> {
    let mut s = String::with_capacity((to - from) * 48);
    if from == 0 {
        s.push_str("email,first_name,company\n");
    }
    for r in from..to {
        let _ = writeln!(s, "user{r}@bench.example,Name {r},Company {}", r % 100);
    }
    s.into_bytes()
}

/// The server settings the write figures depend on: a write that fills `max_wal_size` forces a
/// checkpoint, and after each the first change of a page logs the whole page.
pub async fn postgres_settings() -> anyhow::Result<String> {
    let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
    let mut shown = Vec::new();
    for name in ["server_version", "shared_buffers", "max_wal_size", "checkpoint_timeout"] {
        let value: String =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}"))).fetch_one(&pool).await?;
        shown.push(format!("{name} {value}"));
    }
    pool.close().await;
    Ok(format!("PostgreSQL: {}.", shown.join(", ")))
}

/// Serves gRPC health and nothing else: the cheapest RPC tonic can answer, the limit for reads.
/// Its connections set TCP_NODELAY, as the services' do: without it, answers waited on Nagle's
/// algorithm in some runs and not others, and the limit moved between about 40,000 and 58,000
/// calls/s from run to run, below `GetUsage` through the whole service stack in some.
pub async fn serve_empty(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(contactier_runtime::server::nodelay_incoming(listener))
        .await?;
    Ok(())
}

/// A lead scoring rule the bench creates.
struct ScoringRuleInput {
    name: &'static str,
    points: i64,
    criterion: cpb::scoring_rule::Criterion,
}

struct Ctx {
    services: Services,
    auth: Authenticator,
    account: String,
    token: String,
}

impl Ctx {
    fn contacts(&self) -> ContactsServiceClient<Channel> {
        ContactsServiceClient::new(channel(self.services.addr("contacts")))
    }
    fn status(&self) -> MarketingStatusServiceClient<Channel> {
        MarketingStatusServiceClient::new(channel(self.services.addr("marketing-status")))
    }
    fn billing(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(channel(self.services.addr("billing")))
    }

    fn user_token(&self, account: &str) -> String {
        self.auth.user_token(account, "bench-user", &["read", "write", "admin"], chrono::Duration::hours(6))
    }

    async fn subscribe(&self, account: &str, edition: Edition) -> anyhow::Result<()> {
        let req = bpb::CreateSubscriptionRequest {
            edition: edition as i32,
            term: Term::Monthly as i32,
            start_date: Some(Date { year: 2026, month: 1, day: 1 }),
            currency: "EUR".into(),
            subsidiary: "EU".into(),
            tier: 0,
            marketing_contacts_enabled: true,
        };
        self.billing().create_subscription(authed(req, &self.user_token(account))).await?;
        Ok(())
    }

    /// Imports `rows` generated contacts into the account over the gRPC stream, 5,000 rows a
    /// message; answers rows per second and the time taken.
    async fn import(&self, account: &str, rows: usize) -> anyhow::Result<(f64, Duration)> {
        let header = cpb::ImportHeader {
            name: "bench".into(),
            mode: cpb::ImportMode::Create as i32,
            column_mapping: [("email", "email"), ("first_name", "first_name"), ("company", "company")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            ..Default::default()
        };
        let first = futures::stream::iter([cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::Header(header)),
        }]);
        let chunks = futures::stream::unfold(0usize, move |i| async move {
            (i < rows).then(|| {
                let end = (i + 5_000).min(rows);
                let part = Some(cpb::import_contacts_request::Part::Chunk(csv(i, end)));
                (cpb::ImportContactsRequest { part }, end)
            })
        })
        .chain(futures::stream::iter([cpb::ImportContactsRequest {
            part: Some(cpb::import_contacts_request::Part::End(cpb::ImportEnd::default())),
        }]));
        let token = self.user_token(account);
        let start = Instant::now();
        let mut progress =
            self.contacts().import_contacts(authed(first.chain(chunks), &token)).await?.into_inner();
        let mut last = None;
        while let Some(m) = progress.next().await {
            last = m?.progress;
        }
        let took = start.elapsed();
        let summary = last.context("no import summary")?;
        anyhow::ensure!(summary.created == rows as i64, "the import created {} of {rows}", summary.created);
        Ok((rows as f64 / took.as_secs_f64(), took))
    }

    /// Lead scoring rules: points for a property every generated row has, and for a page view.
    async fn scoring_rules(&self, account: &str) -> anyhow::Result<()> {
        use cpb::scoring_rule::Criterion;
        let token = self.user_token(account);
        let rules = [
            ScoringRuleInput {
                name: "has a company",
                points: 5,
                criterion: Criterion::Property(cpb::PropertyCriterion {
                    property: "company".into(),
                    operator: cpb::ScoringOperator::HasProperty as i32,
                    value: String::new(),
                }),
            },
            ScoringRuleInput {
                name: "read the pricing page",
                points: 10,
                criterion: Criterion::Behaviour(cpb::BehaviourCriterion {
                    kind: cpb::BehaviourKind::PageView as i32,
                    matches: "/pricing".into(),
                    window_days: 30,
                }),
            },
        ];
        for r in rules {
            let rule = cpb::ScoringRule {
                name: r.name.into(),
                points: r.points,
                criterion: Some(r.criterion),
                ..Default::default()
            };
            let req = cpb::CreateScoringRuleRequest { rule: Some(rule) };
            self.contacts().create_scoring_rule(authed(req, &token)).await?;
        }
        Ok(())
    }

    /// Records `n` page views spread over the contacts, 1,000 a call and eight calls in flight;
    /// answers events per second and the time taken.
    async fn record_page_views(
        &self,
        account: &str,
        ids: &[String],
        n: usize,
    ) -> anyhow::Result<(f64, Duration)> {
        anyhow::ensure!(!ids.is_empty(), "no contacts to record events for");
        let token = self.user_token(account);
        let calls: Vec<Vec<cpb::ContactEvent>> = (0..n)
            .step_by(1_000)
            .map(|from| {
                (from..(from + 1_000).min(n))
                    .map(|i| cpb::ContactEvent {
                        id: format!("pv-{i}"),
                        contact: Some(cpb::contact_event::Contact::ContactId(ids[i % ids.len()].clone())),
                        occurred_at: None,
                        kind: Some(cpb::contact_event::Kind::PageView(cpb::PageView {
                            url: format!("https://example.com/pricing/{}", i % 7),
                            traffic_source: "ORGANIC_SEARCH".into(),
                        })),
                    })
                    .collect()
            })
            .collect();
        let start = Instant::now();
        let recorded: usize = futures::stream::iter(calls)
            .map(|events| {
                let (mut client, token) = (self.contacts(), token.clone());
                async move {
                    let req = cpb::RecordContactEventsRequest { events };
                    let r = client.record_contact_events(authed(req, &token)).await?.into_inner();
                    anyhow::ensure!(r.errors.is_empty(), "events refused: {:?}", r.errors.first());
                    Ok(r.results.len())
                }
            })
            .buffer_unordered(8)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await?;
        let took = start.elapsed();
        anyhow::ensure!(recorded == n, "recorded {recorded} of {n} events");
        Ok((n as f64 / took.as_secs_f64(), took))
    }

    /// Waits until marketing-status knows `n` contacts of the account.
    async fn wait_known(&self, account: &str, n: i64, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let token = self.user_token(account);
        loop {
            let c =
                self.status().get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &token)).await?;
            let c = c.into_inner().count.unwrap_or_default();
            if c.marketing + c.non_marketing >= n {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "marketing-status knows {} of {n} contacts after {timeout:?}",
                    c.marketing + c.non_marketing
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every contact id of the account, in id order.
    async fn all_ids(&self, account: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.paged_ids(account, "id").await?.0)
    }

    /// Every contact id of the account in the order of `sort`, a search page of 1,000 at a
    /// time, and how long each page took.
    async fn paged_ids(&self, account: &str, sort: &str) -> anyhow::Result<(Vec<String>, Vec<Duration>)> {
        let token = self.user_token(account);
        let mut ids = Vec::new();
        let mut took = Vec::new();
        let mut page_token = String::new();
        loop {
            let start = Instant::now();
            let req = cpb::SearchContactsRequest {
                filter: None,
                sorts: vec![cpb::Sort { property: sort.into(), direction: 0 }],
                page_size: 1_000,
                page_token,
                properties: vec!["email".into()],
            };
            let r = self.contacts().search_contacts(authed(req, &token)).await?.into_inner();
            took.push(start.elapsed());
            ids.extend(r.contacts.into_iter().map(|c| c.id));
            if r.next_page_token.is_empty() {
                return Ok((ids, took));
            }
            page_token = r.next_page_token;
        }
    }

    async fn set_status(
        &self,
        account: &str,
        ids: &[String],
        status: MarketingStatus,
    ) -> anyhow::Result<i64> {
        let token = self.user_token(account);
        // Calls of 10,000 (the most one takes), two in flight: what a client changing a million
        // contacts sends. The sets are disjoint, so the calls do not wait for each other's rows.
        let calls =
            ids.chunks(10_000).map(|chunk| {
                let req = mpb::SetMarketingStatusRequest {
                    request_id: String::new(),
                    target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds {
                        ids: chunk.to_vec(),
                    })),
                    status: status as i32,
                    source: None,
                };
                let (mut client, token) = (self.status(), token.clone());
                async move {
                    anyhow::Ok(client.set_marketing_status(authed(req, &token)).await?.into_inner().changed)
                }
            });
        futures::stream::iter(calls)
            .buffer_unordered(2)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await
    }
}

/// Runs every benchmark on every configured backend.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    let bins = procs::bin_dir()?;
    let mut report = Report::default();
    // `rows` 0: only the many-accounts instants.
    for &backend in cfg.backends.iter().filter(|_| cfg.rows > 0) {
        // Throughput is the point here: no per-account limit.
        let options = procs::Options {
            env: vec![("CONTACTIER_RATE_LIMIT_PER_ACCOUNT".into(), "0".into())],
            warn_dir: cfg.warn_dir.clone(),
            ..Default::default()
        };
        let services = Services::start_with(backend, &bins, options).await?;
        let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
        let account = format!("bench-{}", std::process::id());
        let token =
            auth.user_token(&account, "bench-user", &["read", "write", "admin"], chrono::Duration::hours(6));
        let ctx = Ctx { services, auth, account, token };
        let outcome = run_backend(cfg, backend, &ctx, &mut report).await;
        let Ctx { services, .. } = ctx;
        services.stop(backend).await;
        outcome?;
    }
    instants(cfg, &mut report).await?;
    Ok(report)
}

async fn run_backend(cfg: &Config, backend: Backend, ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let b = backend.name();
    // 6. Idle memory, once every service is up and settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in procs::SERVICES {
        let (rss, _) = procs::memory(ctx.services.pid(s));
        report.add(
            &format!("idle memory, {s}"),
            b,
            mb(rss),
            String::new(),
            "< 50 MB",
            Some(rss < 50 * 1_048_576),
        );
    }

    ctx.subscribe(&ctx.account, Edition::Enterprise).await?;

    // 1. CSV import over the gRPC stream, beside a raw COPY of the same rows.
    let rows = cfg.rows;
    checkpoint(backend).await?;
    let (import_rate, took) = ctx.import(&ctx.account, rows).await?;
    let (_, peak) = procs::memory(ctx.services.pid("contacts"));
    let copy_rate = if backend == Backend::Postgres {
        Some(raw_copy(&ctx.services.schema_prefix, rows).await?)
    } else {
        None
    };
    let (limit, met) = match copy_rate {
        Some(c) => (format!("raw COPY {c:.0} rows/s ({:.2})", import_rate / c), Some(import_rate >= 0.3 * c)),
        None => (String::new(), None),
    };
    report.add(
        &format!("CSV import of {rows} rows"),
        b,
        format!("{import_rate:.0} rows/s ({:.1} s)", took.as_secs_f64()),
        limit,
        ">= 30 % of raw COPY (PostgreSQL)",
        met,
    );
    report.add("contacts service peak memory (import)", b, mb(peak), String::new(), "bounded", None);
    let caught_up =
        ctx.wait_known(&ctx.account, rows as i64, Duration::from_secs(60 + rows as u64 / 500)).await?;
    report.add(
        "import: marketing-status caught up after",
        b,
        format!("{:.1} s more", caught_up.as_secs_f64()),
        String::new(),
        "",
        None,
    );
    if backend == Backend::Postgres {
        let (copied, floor) = floors::import_floor(&ctx.services.schema_prefix, &ctx.account, rows).await?;
        report.add(
            &format!("CSV import of {rows} rows, against its own rows COPYed"),
            b,
            format!("{import_rate:.0} rows/s"),
            format!(
                "COPY of its {copied} rows in both services {floor:.0} contacts/s ({:.2})",
                import_rate / floor
            ),
            ">= 70 % of a COPY of the same final rows",
            Some(import_rate >= 0.7 * floor),
        );
    }

    // 1b. The same import into an account with lead scoring (a property rule every row meets
    // and a behaviour rule), beside the import without: history is written in both.
    let scored = format!("{}-scored", ctx.account);
    ctx.subscribe(&scored, Edition::Enterprise).await?;
    ctx.scoring_rules(&scored).await?;
    // The floor's copies just wrote as much log as the import: flushed first, as the first
    // import began with none to flush, so that neither import pays for the steps before it.
    checkpoint(backend).await?;
    let (scored_rate, scored_took) = ctx.import(&scored, rows).await?;
    report.add(
        &format!("CSV import of {rows} rows, lead scoring on"),
        b,
        format!("{scored_rate:.0} rows/s ({:.1} s)", scored_took.as_secs_f64()),
        format!("without scoring {import_rate:.0} rows/s ({:.2})", scored_rate / import_rate),
        ">= 85 % of the import without",
        Some(scored_rate >= 0.85 * import_rate),
    );
    ctx.wait_known(&scored, rows as i64, Duration::from_secs(60 + rows as u64 / 500)).await?;
    if backend == Backend::Postgres {
        // Scoring adds rows (a score and its history entry per contact): its own floor says
        // what the rows alone cost, beside what the import without scoring is measured against.
        checkpoint(backend).await?;
        let (copied, floor) = floors::import_floor(&ctx.services.schema_prefix, &scored, rows).await?;
        checkpoint(backend).await?;
        let (_, unscored_floor) =
            floors::import_floor(&ctx.services.schema_prefix, &ctx.account, rows).await?;
        report.add(
            &format!("CSV import of {rows} rows, lead scoring on, against its own rows COPYed"),
            b,
            format!("{scored_rate:.0} rows/s"),
            format!(
                "COPY of its {copied} rows {floor:.0} contacts/s ({:.2}); the import without scoring's rows, \
                 COPYed again: {unscored_floor:.0} contacts/s, so its rows alone allow {:.2} of it",
                scored_rate / floor,
                floor / unscored_floor
            ),
            ">= 70 % of a COPY of the same final rows",
            Some(scored_rate >= 0.7 * floor),
        );
    }

    // 1c. Tracked behaviour: page views of the imported contacts, 1,000 a call, 8 calls in flight.
    let ids = ctx.all_ids(&ctx.account).await?;
    // Every contact in the order a search gives by default. The first page also counts the
    // matches; the second is the early page deep ones are compared with.
    let (_, pages) = ctx.paged_ids(&ctx.account, "created_at").await?;
    if pages.len() >= 3 {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (early, deepest) = (pages[1], pages[pages.len() - 1]);
        report.add(
            &format!("SearchContacts, {} pages of 1,000 in the default order", pages.len()),
            b,
            format!("deepest page {:.1} ms", ms(deepest)),
            format!("second page {:.1} ms ({:.1}x)", ms(early), ms(deepest) / ms(early)),
            "a deep page within 2x of an early one",
            Some(deepest <= early * 2 + Duration::from_millis(1)),
        );
    }
    let events = (rows / 5).clamp(1_000, 200_000);
    let (event_rate, events_took) = ctx.record_page_views(&ctx.account, &ids, events).await?;
    let (limit, met) = match backend {
        Backend::Postgres => (String::new(), Some(event_rate >= 20_000.0)),
        Backend::Sqlite => (String::new(), None),
    };
    report.add(
        &format!("RecordContactEvents, {events} page views"),
        b,
        format!("{event_rate:.0} events/s ({:.1} s)", events_took.as_secs_f64()),
        limit,
        ">= 20,000/s (PostgreSQL)",
        met,
    );

    // 2. Bulk status change of every contact.
    let start = Instant::now();
    let changed = ctx.set_status(&ctx.account, &ids, MarketingStatus::Marketing).await?;
    let took = start.elapsed();
    anyhow::ensure!(changed == rows as i64, "changed {changed} of {rows}");
    let rate = rows as f64 / took.as_secs_f64();
    let (limit, met) = match backend {
        Backend::Postgres => {
            let floor = set_based_change(ctx, rows).await?;
            (
                format!("one UPDATE and its audit INSERT {floor:.0}/s ({:.2})", rate / floor),
                Some(rate >= 0.6 * floor),
            )
        }
        Backend::Sqlite => (String::new(), None),
    };
    report.add(
        &format!("bulk status change of {rows} contacts"),
        b,
        format!("{rate:.0} contacts/s"),
        limit,
        ">= 60 % of one set-based UPDATE with its audit (PostgreSQL)",
        met,
    );

    // 3. An update date with every contact pending.
    ctx.set_status(&ctx.account, &ids, MarketingStatus::NonMarketing).await?;
    let service = ctx.auth.service_token("billing", chrono::Duration::hours(1));
    let req = mpb::ApplyUpdateDateRequest {
        account_id: ctx.account.clone(),
        update_date: Some(Date { year: 2026, month: 12, day: 1 }),
        effective_at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 1, nanos: 0 }),
    };
    let start = Instant::now();
    let r = MarketingStatusInternalServiceClient::new(channel(ctx.services.addr("marketing-status")))
        .apply_update_date(authed(req, &service))
        .await?
        .into_inner();
    let took = start.elapsed();
    anyhow::ensure!(r.applied == rows as i64, "the update date changed {} of {rows}", r.applied);
    report.add(
        &format!("update date with {rows} pending"),
        b,
        format!("{:.2} s", took.as_secs_f64()),
        String::new(),
        "< 5 s",
        Some(took < Duration::from_secs(5)),
    );
    // In effect once answered; the contacts' rows are rewritten after, in the background. The
    // reads below wait for that, so they are not measured beside it.
    let marks = "SELECT count(*) FROM {t}";
    // Polled ten times a second: each poll opens a database connection, which costs CPU too.
    while ctx.services.scalar("marketing-status", "update_marks", marks).await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.add(
        "update date: rows rewritten after",
        b,
        format!("{:.2} s more", (start.elapsed() - took).as_secs_f64()),
        String::new(),
        "",
        None,
    );

    // 3b. The audit trail, now some millions of entries: its first page and one halfway down.
    let trail = trail_pages(ctx).await?;
    report.add(
        &format!("ListStatusChanges over {} audit entries", trail.entries),
        b,
        format!(
            "first page p50 {:.2} ms, p99 {:.2} ms; halfway p50 {:.2} ms, p99 {:.2} ms",
            trail.first.0, trail.first.1, trail.deep.0, trail.deep.1
        ),
        String::new(),
        "p99 < 10 ms",
        Some(trail.first.1 < 10.0 && trail.deep.1 < 10.0),
    );

    // 3c. What a contact costs on disk, for the capacity model: every service's tables and
    // indexes over the contacts of both imports, with their values, history, events, statuses,
    // audit (imported, changed twice, a date) and the rest.
    if backend == Backend::Postgres {
        let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
        let q = "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE $1 AND c.relkind = 'r'";
        let prefix = format!("{}%", ctx.services.schema_prefix.replace('_', "\\_"));
        let bytes: i64 = sqlx::query_scalar(q).bind(prefix).fetch_one(&pool).await?;
        pool.close().await;
        report.add(
            &format!("database size per contact ({} contacts)", 2 * rows),
            b,
            format!("{} bytes ({})", bytes / (2 * rows as i64).max(1), mb(bytes as u64)),
            String::new(),
            "",
            None,
        );
    }

    // 4. Unary reads under load, beside an empty RPC. The earlier steps' million-row writes are
    // flushed first, so the reads are not measured against their checkpoint, and the contacts
    // are read in the state pgbench's table is read in (vacuumed here, in memory below).
    if backend == Backend::Postgres {
        vacuum_contacts(&ctx.services).await?;
    }
    checkpoint(backend).await?;
    let empty = start_empty(&cfg.empty_server).await?;
    let empty_peak = load::closed_loop(health_call(empty.addr), cfg.concurrency, cfg.load_time).await;
    let calls: [(&str, Call); 2] = [
        ("GetUsage", usage_call(ctx.services.addr("billing"), ctx.token.clone())),
        ("GetContact", contact_call(ctx.services.addr("contacts"), ctx.token.clone(), Arc::new(ids))),
    ];
    // A contact read is an RPC and a primary-key select: its limit is both, one after the other,
    // the select at the service's pool of database connections, over a table as large as the
    // contacts' (at a million contacts it outgrows the server's buffers; pgbench's default
    // table does not).
    let select = match backend {
        Backend::Postgres => {
            let scale = pgbench::scale_for(contacts_bytes(&ctx.services).await?);
            let tps = pgbench::rate("select-only", DB_POOL, cfg.pgbench_seconds, true, scale).await?;
            Some((tps, scale))
        }
        Backend::Sqlite => None,
    };
    for (name, call) in calls {
        if name == "GetContact" && backend == Backend::Postgres {
            warm_contacts(&ctx.services).await?;
        }
        let peak = load::closed_loop(call.clone(), cfg.concurrency, cfg.load_time).await;
        let half = load::open_loop(call, peak.per_second / 2.0, cfg.load_time).await;
        // The same rate of empty calls: what the machine's scheduling alone adds to p99.
        let floor = load::open_loop(health_call(empty.addr), peak.per_second / 2.0, cfg.load_time).await;
        let (limit, target, share) = match select.filter(|_| name == "GetContact") {
            Some((select, scale)) => {
                let both = combined(empty_peak.per_second, select);
                (
                    format!(
                        "empty RPC {:.0}/s with pgbench's prepared key select {select:.0}/s (scale {scale}): \
                         {both:.0}/s",
                        empty_peak.per_second
                    ),
                    (">= 85 % of the RPC and select together", 0.85),
                    peak.per_second / both.max(1.0),
                )
            }
            None => (
                format!("empty RPC {:.0}/s", empty_peak.per_second),
                (">= 70 % of the empty RPC", 0.7),
                peak.per_second / empty_peak.per_second.max(1.0),
            ),
        };
        report.add(
            &format!("{name}: peak throughput"),
            b,
            format!(
                "{:.0}/s ({:.0} %; p50 {:.2} ms, p99 {:.2} ms, {} errors)",
                peak.per_second,
                share * 100.0,
                peak.p50_ms,
                peak.p99_ms,
                peak.errors
            ),
            limit,
            target.0,
            Some(share >= target.1),
        );
        report.add(
            &format!("{name}: at half of peak"),
            b,
            half_text(&half),
            format!("empty RPC at that rate: p99 {:.2} ms", floor.p99_ms),
            "p99 < 5 ms",
            Some(half.p99_ms < 5.0 && half.errors == 0),
        );
    }
    drop(empty);

    // 5. Status change -> alert on the watch stream.
    let samples = alert_latency(ctx, cfg.alert_contacts).await?;
    let (p50, p99) = load::percentiles(&samples);
    report.add(
        &format!("status change -> alert ({} alerts)", samples.len()),
        b,
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        String::new(),
        "p99 < 500 ms",
        Some(p99 < 500.0),
    );

    for s in procs::SERVICES {
        let (rss, peak) = procs::memory(ctx.services.pid(s));
        // marketing-status on SQLite holds its peak under 60 MB, the rest are reported.
        let (target, met) = match (s, backend) {
            ("marketing-status", Backend::Sqlite) => ("peak < 60 MB", Some(peak < 60 * 1_048_576)),
            _ => ("", None),
        };
        report.add(
            &format!("memory after the run, {s}"),
            b,
            format!("{} (peak {})", mb(rss), mb(peak)),
            String::new(),
            target,
            met,
        );
    }
    Ok(())
}

/// The many-accounts instants, PostgreSQL beside pgbench measured just before, SQLite beside it.
async fn instants(cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    if cfg.instant_accounts.is_empty() {
        return Ok(());
    }
    for &backend in &cfg.backends {
        let tps = match backend {
            Backend::Postgres => {
                let tps =
                    pgbench::rate("simple-update", 10, cfg.pgbench_seconds, false, pgbench::SCALE).await?;
                report.add(
                    "pgbench simple-update, 10 clients",
                    backend.name(),
                    format!("{tps:.0} transactions/s"),
                    String::new(),
                    "",
                    None,
                );
                Some(tps)
            }
            Backend::Sqlite => None,
        };
        // Every size on PostgreSQL, where the scale is shown; SQLite, beside it, the first.
        let sizes = match backend {
            Backend::Postgres => &cfg.instant_accounts[..],
            Backend::Sqlite => &cfg.instant_accounts[..1],
        };
        let mut per_account = Vec::new();
        for &accounts in sizes {
            let took = instant::run(backend, accounts, tps, &cfg.warn_dir, report).await?;
            per_account.push((accounts, took.as_secs_f64() / accounts as f64));
        }
        if let Some(growth) = growth(&per_account) {
            report.add(
                &growth.what,
                backend.name(),
                growth.value,
                growth.limit,
                GROWTH_TARGET,
                Some(growth.met),
            );
        }
    }
    Ok(())
}

/// The instant's time an account may grow by from the smallest size run to the largest, and be
/// called linear in the accounts (runs of the same size vary by about a tenth).
const LINEAR_WITHIN: f64 = 1.25;
const GROWTH_TARGET: &str = "linear in the accounts (an account's time within 1.25x)";

struct Growth {
    what: String,
    value: String,
    limit: String,
    met: bool,
}

/// How an account's share of the instant grew from the smallest size to the largest.
fn growth(per_account: &[(usize, f64)]) -> Option<Growth> {
    let (&(small, a), &(large, b)) =
        (per_account.iter().min_by_key(|p| p.0)?, per_account.iter().max_by_key(|p| p.0)?);
    if small == large {
        return None;
    }
    Some(Growth {
        what: format!("one instant: an account's time from {small} to {large} accounts"),
        value: format!("{:.3} ms to {:.3} ms ({:.2}x)", a * 1e3, b * 1e3, b / a),
        limit: format!("{small} accounts: {:.3} ms", a * 1e3),
        met: b / a <= LINEAR_WITHIN,
    })
}

struct TrailPages {
    entries: i64,
    /// p50 and p99 in milliseconds.
    first: (f64, f64),
    deep: (f64, f64),
}

/// Pages of 100 of the account's audit trail, one call at a time: the newest, and one from the
/// middle of the trail (its token made as the service makes it, from that entry's time and id).
async fn trail_pages(ctx: &Ctx) -> anyhow::Result<TrailPages> {
    let (svc, table) = ("marketing-status", "status_changes");
    let of = format!("FROM {{t}} WHERE account_id = '{}'", ctx.account);
    let entries = ctx.services.scalar(svc, table, &format!("SELECT count(*) {of}")).await?;
    let middle = format!("{of} ORDER BY requested_at DESC, id DESC LIMIT 1 OFFSET {}", entries / 2);
    let at = ctx.services.scalar(svc, table, &format!("SELECT requested_at {middle}")).await?;
    let id = ctx.services.text(svc, table, &format!("SELECT id {middle}")).await?;
    let times = |token: String| {
        let mut client = ctx.status();
        async move {
            let mut ms = Vec::new();
            for _ in 0..200 {
                let req = mpb::ListStatusChangesRequest {
                    page_size: 100,
                    page_token: token.clone(),
                    ..Default::default()
                };
                let start = Instant::now();
                let page = client.list_status_changes(authed(req, &ctx.token)).await?.into_inner();
                ms.push(start.elapsed());
                anyhow::ensure!(page.changes.len() == 100, "a page of {}", page.changes.len());
            }
            anyhow::Ok(load::percentiles(&ms))
        }
    };
    let first = times(String::new()).await?;
    let deep = times(contactier_runtime::paging::token_at("status changes ", at, &id)).await?;
    Ok(TrailPages { entries, first, deep })
}

/// The floor of a bulk status change: the account's rows changed back by one set-based UPDATE
/// and their audit rows written by one INSERT, in psql's way (one transaction, no calls),
/// then rolled back; answers rows per second.
async fn set_based_change(ctx: &Ctx, rows: usize) -> anyhow::Result<f64> {
    let schema = format!("{}marketing_status", ctx.services.schema_prefix);
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&procs::pg_url()).await?;
    let mut tx = sqlx::Connection::begin(&mut c).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL search_path TO \"{schema}\"")))
        .execute(&mut *tx)
        .await?;
    let start = Instant::now();
    let update = "UPDATE contact_status SET marketing = FALSE, pending = FALSE, source_type = 'USER', \
                  source_id = '', updated_at = updated_at + 1 WHERE account_id = $1";
    let n = sqlx::query(update).bind(&ctx.account).execute(&mut *tx).await?.rows_affected();
    let audit = "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, pending, \
                 source_type, source_id, user_id, requested_at, effective_at, request_id) \
                 SELECT account_id, 'floor:' || contact_id, contact_id, 'marketing', 'non_marketing', FALSE, \
                 'USER', '', 'bench-user', updated_at, updated_at, '' FROM contact_status WHERE account_id = $1";
    sqlx::query(audit).bind(&ctx.account).execute(&mut *tx).await?;
    let took = start.elapsed();
    tx.rollback().await?;
    // The floor's rolled-back rows are its own: vacuumed away so that they do not weigh on the
    // steps after it (a million dead audit entries and status rows until autovacuum came).
    for table in ["contact_status", "status_changes"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM \"{schema}\".{table}"))).execute(&mut c).await?;
    }
    anyhow::ensure!(n == rows as u64, "the floor changed {n} of {rows}");
    Ok(rows as f64 / took.as_secs_f64())
}

/// Database connections a service keeps (`CONTACTIER_DB_MAX_CONNECTIONS`'s default).
const DB_POOL: usize = 10;

/// The rate of work that takes one of each of two steps in turn, each step at its own rate.
fn combined(a: f64, b: f64) -> f64 {
    if a <= 0.0 || b <= 0.0 {
        return 0.0;
    }
    1.0 / (1.0 / a + 1.0 / b)
}

fn half_text(r: &LoadResult) -> String {
    format!("{:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors", r.per_second, r.p50_ms, r.p99_ms, r.errors)
}

/// Raw COPY of the same rows into a table like contacts' (same keys), in rows a second.
async fn raw_copy(prefix: &str, rows: usize) -> anyhow::Result<f64> {
    let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
    let schema = format!("{prefix}copy");
    for stmt in [
        format!("CREATE SCHEMA \"{schema}\""),
        format!(
            "CREATE TABLE \"{schema}\".contacts (account_id TEXT NOT NULL, id TEXT NOT NULL, email TEXT NOT NULL, \
             email_key TEXT NOT NULL, properties TEXT NOT NULL, version BIGINT NOT NULL, source_type TEXT NOT NULL, \
             source_id TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             PRIMARY KEY (account_id, id), UNIQUE (account_id, email_key))"
        ),
        format!("CREATE INDEX ON \"{schema}\".contacts (account_id, created_at, id)"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&pool).await?;
    }
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let mut copy = conn.copy_in_raw(&format!("COPY \"{schema}\".contacts FROM STDIN (FORMAT csv)")).await?;
    let now = chrono::Utc::now().timestamp_micros();
    for from in (0..rows).step_by(5_000) {
        let mut s = String::new();
        for r in from..(from + 5_000).min(rows) {
            let _ = writeln!(
                s,
                "acct,{:032x},user{r}@bench.example,user{r}@bench.example,\"{{\"\"company\"\":\"\"Company {}\"\",\"\"first_name\"\":\"\"Name {r}\"\"}}\",1,IMPORT,bench,{now},{now}",
                r,
                r % 100
            );
        }
        copy.send(s.into_bytes()).await?;
    }
    copy.finish().await?;
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE"))).execute(&pool).await?;
    Ok(rate)
}

/// The empty-RPC server, stopped when dropped.
struct Empty {
    addr: SocketAddr,
    child: Option<std::process::Child>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Empty {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn start_empty(how: &EmptyServer) -> anyhow::Result<Empty> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let e = match how {
        EmptyServer::InProcess => {
            Empty { addr, child: None, task: Some(tokio::spawn(serve_empty(listener))) }
        }
        EmptyServer::Child(exe) => {
            drop(listener);
            let child = std::process::Command::new(exe)
                .args(["empty-server", "--listen", &addr.to_string()])
                .spawn()?;
            Empty { addr, child: Some(child), task: None }
        }
    };
    procs::wait_serving(addr).await?;
    Ok(e)
}

/// Calls spread over four connections (HTTP/2 multiplexes the rest).
fn spread(addr: SocketAddr) -> Arc<Vec<Channel>> {
    Arc::new((0..4).map(|_| channel(addr)).collect())
}

fn health_call(addr: SocketAddr) -> Call {
    let chans = spread(addr);
    Arc::new(move |i| {
        let ch = chans[i % chans.len()].clone();
        Box::pin(async move {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map(|_| ())
        })
    })
}

fn usage_call(addr: SocketAddr, token: String) -> Call {
    let chans = spread(addr);
    Arc::new(move |i| {
        let (ch, token) = (chans[i % chans.len()].clone(), token.clone());
        Box::pin(async move {
            BillingServiceClient::new(ch).get_usage(authed(bpb::GetUsageRequest {}, &token)).await.map(|_| ())
        })
    })
}

/// Flushes what earlier steps wrote (PostgreSQL), so that a measured step does not pay for
/// their checkpoint.
/// Bytes of the contacts table (heap and key) of a run on PostgreSQL.
async fn contacts_bytes(services: &Services) -> anyhow::Result<u64> {
    let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
    let table = contacts_table(services);
    let q = "SELECT pg_relation_size($1::regclass) + COALESCE((SELECT SUM(pg_relation_size(i.indexrelid)) \
             FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisprimary), 0)::BIGINT";
    let bytes: i64 = sqlx::query_scalar(q).bind(&table).fetch_one(&pool).await?;
    pool.close().await;
    Ok(bytes.max(0) as u64)
}

/// The contacts service's contacts table, schema-qualified.
fn contacts_table(services: &Services) -> String {
    format!("\"{}contacts\".contacts", services.schema_prefix)
}

/// Vacuums and analyzes the contacts table, as `pgbench -i` does its own (a server with
/// autovacuum, the default, would have too; this one runs without it).
async fn vacuum_contacts(services: &Services) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
    let table = contacts_table(services);
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}"))).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Reads the contacts table and its key into the operating system's cache, where pgbench's
/// table is when its select is measured (written just before). This machine pages out memory
/// untouched for a minute (its kernel's DAMON `pageout` scheme), so the contacts written at
/// the run's start are on disk by now, and a read waits on it: about 130 µs a contact here,
/// several times the select's whole cost.
async fn warm_contacts(services: &Services) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
    let table = contacts_table(services);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA \"{}contacts\"",
        services.schema_prefix
    )))
    .execute(&pool)
    .await?;
    let prewarm: String = sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) || '.pg_prewarm' FROM pg_extension e \
         JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_prewarm'",
    )
    .fetch_one(&pool)
    .await?;
    let q = format!(
        "SELECT SUM({prewarm}(c.oid, 'read'))::BIGINT FROM pg_class c WHERE c.oid = $1::regclass \
         OR c.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisprimary)"
    );
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(q)).bind(&table).fetch_one(&pool).await?;
    pool.close().await;
    Ok(())
}

async fn checkpoint(backend: Backend) -> anyhow::Result<()> {
    if backend == Backend::Postgres {
        let pool = sqlx::PgPool::connect(&procs::pg_url()).await?;
        sqlx::query("CHECKPOINT").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

fn contact_call(addr: SocketAddr, token: String, ids: Arc<Vec<String>>) -> Call {
    let chans = spread(addr);
    Arc::new(move |i| {
        let (ch, token) = (chans[i % chans.len()].clone(), token.clone());
        let id = ids[(i * 7_919) % ids.len()].clone();
        Box::pin(async move {
            let req = cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Id(id)) };
            ContactsServiceClient::new(ch).get_contact(authed(req, &token)).await.map(|_| ())
        })
    })
}

/// Steps an account's count across each threshold of tier after tier and times each alert from
/// the status change to its arrival on the watch stream.
async fn alert_latency(ctx: &Ctx, contacts: usize) -> anyhow::Result<Vec<Duration>> {
    use npb::AlertKind;
    let account = format!("{}-alerts", ctx.account);
    let token = ctx.user_token(&account);
    ctx.subscribe(&account, Edition::Starter).await?;
    for from in (0..contacts).step_by(1_000) {
        let batch = (from..(from + 1_000).min(contacts))
            .map(|i| cpb::ContactInput {
                email: format!("alert{i}@bench.example"),
                properties: Default::default(),
                source: Some(Source { r#type: SourceType::Import as i32, id: "bench".into() }),
                requested_status: 0,
            })
            .collect();
        let req = cpb::BatchCreateContactsRequest { contacts: batch, request_id: String::new() };
        ctx.contacts().batch_create_contacts(authed(req, &token)).await?;
    }
    ctx.wait_known(&account, contacts as i64, Duration::from_secs(120)).await?;
    let ids = ctx.all_ids(&account).await?;
    let mut stream = NotificationServiceClient::new(channel(ctx.services.addr("notification")))
        .watch_alerts(authed(npb::WatchAlertsRequest { after_sequence: 0 }, &token))
        .await?
        .into_inner();
    let mut samples = Vec::new();
    let mut count = 0usize;
    let mut tier = 1_000usize;
    'tiers: loop {
        let steps =
            [(tier * 75).div_ceil(100), (tier * 90).div_ceil(100), (tier * 98).div_ceil(100), tier + 1];
        let kinds =
            [AlertKind::Threshold75, AlertKind::Threshold90, AlertKind::Threshold98, AlertKind::TierExceeded];
        for (target, kind) in steps.into_iter().zip(kinds) {
            if target > ids.len() {
                break 'tiers;
            }
            // An upgrade checks the new tier against the same count: its lower thresholds may
            // already have fired.
            if target <= count {
                continue;
            }
            let start = Instant::now();
            ctx.set_status(&account, &ids[count..target], MarketingStatus::Marketing).await?;
            count = target;
            loop {
                let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .context("no alert within 10 s")??
                    .context("the watch stream ended")?;
                if m.alert.as_ref().is_some_and(|a| a.kind() == kind) {
                    samples.push(start.elapsed());
                    break;
                }
            }
        }
        tier += 1_000;
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_steps_in_turn_go_at_the_rate_of_both() {
        // The figures of the run that first set a contact read beside both: 93 % of 21,775/s.
        let both = super::combined(48_020.0, 39_842.0);
        assert_eq!(both.round(), 21_775.0);
        assert!((20_341.0 / both - 0.934).abs() < 0.001);
        assert_eq!(super::combined(0.0, 5.0), 0.0);
    }

    #[test]
    fn an_instant_is_linear_while_an_accounts_time_grows_by_a_quarter_at_most() {
        // 2026-12-01: 4.2 s at 10,000 accounts, 45.9 s at 100,000 (a tenth more an account).
        let g = super::growth(&[
            (10_000, 4.2 / 10_000.0),
            (50_000, 23.6 / 50_000.0),
            (100_000, 45.9 / 100_000.0),
        ])
        .unwrap();
        assert_eq!(g.what, "one instant: an account's time from 10000 to 100000 accounts");
        assert_eq!(g.value, "0.420 ms to 0.459 ms (1.09x)");
        assert!(g.met);
        // 2026-11-30, before batching across accounts: 3.0 s at 1,000, 33.8 s at 5,000.
        let g = super::growth(&[(1_000, 3.0 / 1_000.0), (5_000, 33.8 / 5_000.0)]).unwrap();
        assert!(!g.met, "{}", g.value);
        assert!(super::growth(&[(10_000, 0.0004)]).is_none(), "one size shows no growth");
    }
}

/// The new `table` followed by the notes of the file it replaces (everything from its first
/// second-level heading): a run regenerates the table, and what earlier rounds found stays.
pub fn with_notes(table: &str, old: &str) -> String {
    let notes = old.find("\n## ").map_or("", |at| &old[at + 1..]);
    match notes {
        "" => table.to_owned(),
        notes => format!("{}\n\n{notes}", table.trim_end()),
    }
}

#[cfg(test)]
mod notes_tests {
    use super::with_notes;

    #[test]
    fn a_new_table_keeps_the_notes_after_it_and_drops_the_old_table() {
        let old = "# Benchmarks\n\n| old | 1 |\n\n## Round one\n\nfound X\n\n## Round two\n\nfound Y\n";
        let new = with_notes("# Benchmarks\n\n| new | 2 |\n", old);
        assert_eq!(
            new,
            "# Benchmarks\n\n| new | 2 |\n\n## Round one\n\nfound X\n\n## Round two\n\nfound Y\n"
        );
        assert_eq!(with_notes("# Benchmarks\n\n| new |\n", ""), "# Benchmarks\n\n| new |\n");
    }
}
