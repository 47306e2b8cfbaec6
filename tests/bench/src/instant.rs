//! Many accounts at one processing instant: every account's monthly update date falls on the
//! same instant. The clock is moved across it and the run is timed until every account's period
//! is recorded, its pending contacts rewritten and its usage state delivered to notification
//! (which evaluates the alerts as it takes it). Then a share of the accounts upgrade on one day
//! and the next day's invoice run is timed. On PostgreSQL both are set beside pgbench's built-in
//! simple-update rate, measured in the same run.

use super::{Report, authed, channel};
use crate::procs::{self, Backend, Services};
use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use contactier_proto::billing::v1::{
    self as bpb, billing_internal_service_client::BillingInternalServiceClient,
    billing_service_client::BillingServiceClient,
};
use contactier_proto::common::v1::{Date, Edition, MarketingStatus, Source, SourceType, Term};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_internal_service_client::MarketingStatusInternalServiceClient,
    marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_proto::ops::v1::{self as opb, clock_service_client::ClockServiceClient};
use contactier_runtime::Authenticator;
use contactier_runtime::convert::timestamp;
use futures::{StreamExt, TryStreamExt};
use std::time::{Duration, Instant};

/// Marketing contacts of every account.
const CONTACTS: usize = 10;
/// One account in this many also has [`PENDING`] contacts set non-marketing, waiting for the date.
const PENDING_EVERY: usize = 100;
const PENDING: usize = 1_000;
/// One account in this many upgrades on the day after the instant.
const UPGRADE_EVERY: usize = 5;
/// Requests in flight while the accounts are set up.
const SETUP_PARALLEL: usize = 32;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 20, 12, 0, 0).unwrap()
}
/// 2026-02-01 00:00 in Europe/Dublin (the EU subsidiary's zone and processing time) is 00:00 UTC.
fn instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 1, 0, 1, 0).unwrap()
}
/// The invoice run of the upgrades made on 2026-02-01.
fn invoice_run() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 2, 0, 1, 0).unwrap()
}

struct Ctx {
    services: Services,
    auth: Authenticator,
    prefix: String,
}

impl Ctx {
    fn account(&self, i: usize) -> String {
        format!("{}-{i:06}", self.prefix)
    }
    fn user(&self, account: &str) -> String {
        self.auth.user_token(
            account,
            "bench-user",
            &["read", "write", "admin", "ops"],
            chrono::Duration::hours(6),
        )
    }
    fn service(&self, name: &str) -> String {
        self.auth.service_token(name, chrono::Duration::hours(6))
    }
    async fn count(&self, service: &str, table: &str, sql: &str) -> anyhow::Result<i64> {
        self.services.scalar(service, table, sql).await
    }
    /// Waits until no row of `service`'s `table` matches `filter` (a WHERE clause, or '' for
    /// any row). Asks whether one row is left, not how many (a count over a table of dead
    /// entries takes a core of its own while the services work), ten times a second.
    async fn drained(
        &self,
        service: &str,
        table: &str,
        filter: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let any = format!("SELECT count(*) FROM (SELECT 1 FROM {{t}} {filter} LIMIT 1) x");
        loop {
            if self.count(service, table, &any).await? == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let left =
                    self.count(service, table, &format!("SELECT count(*) FROM {{t}} {filter}")).await?;
                anyhow::bail!("{service}: {left} left in {table} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn set_clock(&self, service: &str, t: DateTime<Utc>) -> anyhow::Result<()> {
        let mut c = ClockServiceClient::new(channel(self.services.addr(service)));
        c.set_time(authed(opb::SetTimeRequest { time: Some(timestamp(t)) }, &self.user(&self.account(0))))
            .await
            .with_context(|| format!("{service}'s clock"))?;
        Ok(())
    }
}

/// A run shorter than this is reported without a verdict: at a tenth of a second the timer's
/// own steps (the bench polls every 20 ms) decide it (40 invoices read "0.0 s" and a miss).
const JUDGED_FROM: Duration = Duration::from_secs(1);

/// A run's result, `rate` of `unit` a second over `took`, and whether a run that short can be judged.
fn timed(rate: f64, unit: &str, took: Duration) -> (String, bool) {
    let secs = took.as_secs_f64();
    match took >= JUDGED_FROM {
        true => (format!("{rate:.0} {unit}/s ({secs:.2} s)"), true),
        false => (format!("{rate:.0} {unit}/s ({secs:.2} s: too short to judge)"), false),
    }
}

/// Times one instant of `accounts` accounts on `backend`, and the invoice run after it;
/// answers the instant's time.
pub async fn run(
    backend: Backend,
    accounts: usize,
    pgbench_tps: Option<f64>,
    warn_dir: &Option<std::path::PathBuf>,
    report: &mut Report,
) -> anyhow::Result<Duration> {
    let b = backend.name();
    let bins = procs::bin_dir()?;
    let options = procs::Options {
        manual_clock: Some(start()),
        env: vec![("CONTACTIER_RATE_LIMIT_PER_ACCOUNT".into(), "0".into())],
        warn_dir: warn_dir.clone(),
        ..Default::default()
    };
    let services = Services::start_with(backend, &bins, options).await?;
    let auth = Authenticator::new(services.secret.as_bytes(), "contactier", "contactier");
    let ctx = Ctx { services, auth, prefix: format!("inst{}", std::process::id()) };
    let outcome = measure(&ctx, backend, accounts, pgbench_tps, report).await;
    let Ctx { services, .. } = ctx;
    services.stop(backend).await;
    outcome.with_context(|| format!("{accounts} accounts at one instant on {b}"))
}

async fn measure(
    ctx: &Ctx,
    backend: Backend,
    accounts: usize,
    pgbench_tps: Option<f64>,
    report: &mut Report,
) -> anyhow::Result<Duration> {
    let b = backend.name();
    let setup = Instant::now();
    set_up(ctx, accounts).await?;
    let pending = accounts.div_ceil(PENDING_EVERY) * PENDING;
    println!("{b:<10} {accounts} accounts set up in {:.1} s", setup.elapsed().as_secs_f64());

    for s in ["contacts", "marketing-status", "notification"] {
        ctx.set_clock(s, instant()).await?;
    }
    let cpu_before = cpu(ctx);
    let t0 = Instant::now();
    // Answers once billing's due work at the instant has run (the manual clock waits for it).
    ctx.set_clock("billing", instant()).await?;
    let timeout = Duration::from_secs(600);
    let due = "WHERE next_update_date = '2026-02-01'";
    ctx.drained("billing", "subscriptions", due, timeout).await?;
    ctx.drained("marketing-status", "update_marks", "", timeout).await?;
    ctx.drained("billing", "outbox", "", timeout).await?;
    let took = t0.elapsed();
    println!("{b:<10} CPU seconds during the instant: {}", cpu_spent(&cpu_before, &cpu(ctx)));
    let periods = "SELECT count(*) FROM {t} WHERE update_date = '2026-02-01'";
    let periods = ctx.count("billing", "update_periods", periods).await?;
    anyhow::ensure!(periods == accounts as i64, "{periods} periods recorded for {accounts} accounts");
    let rewritten = "SELECT count(*) FROM {t} WHERE source_type = 'SYSTEM' AND NOT marketing";
    let rewritten = ctx.count("marketing-status", "contact_status", rewritten).await?;
    anyhow::ensure!(rewritten == pending as i64, "{rewritten} of {pending} pending contacts rewritten");
    let instant_took = took;
    let rate = accounts as f64 / took.as_secs_f64();
    let (limit, met) = against(pgbench_tps, rate);
    let (value, judged) = timed(rate, "accounts", took);
    report.add(
        &format!("one instant, {accounts} accounts ({pending} pending contacts)"),
        b,
        value,
        limit,
        ">= 50 % of pgbench simple-update",
        met.filter(|_| judged),
    );

    // The day after: the invoice run of the day's upgrades.
    let upgraded = upgrade(ctx, accounts).await?;
    let cpu_before = cpu(ctx);
    let t0 = Instant::now();
    ctx.set_clock("billing", invoice_run()).await?;
    let invoiced = "SELECT count(*) FROM {t} WHERE kind = 'upgrade'";
    let deadline = Instant::now() + Duration::from_secs(600);
    while ctx.count("billing", "invoices", invoiced).await? < upgraded as i64 {
        anyhow::ensure!(Instant::now() < deadline, "the invoice run did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    println!("{b:<10} CPU seconds during the invoice run: {}", cpu_spent(&cpu_before, &cpu(ctx)));
    let n = ctx.count("billing", "invoices", invoiced).await?;
    anyhow::ensure!(n == upgraded as i64, "{n} upgrade invoices for {upgraded} upgraded accounts");
    let gaps = "SELECT count(*) FROM (SELECT account_id FROM {t} GROUP BY account_id \
         HAVING max(number) <> count(*)) g";
    anyhow::ensure!(ctx.count("billing", "invoices", gaps).await? == 0, "invoice numbers with gaps");
    let rate = upgraded as f64 / took.as_secs_f64();
    let (limit, met) = against(pgbench_tps, rate);
    let (value, judged) = timed(rate, "invoices", took);
    report.add(
        &format!("invoice run, {upgraded} upgraded accounts"),
        b,
        value,
        limit,
        ">= 50 % of pgbench simple-update",
        met.filter(|_| judged),
    );
    Ok(instant_took)
}

/// CPU seconds used so far by each service and by every PostgreSQL process of the machine.
fn cpu(ctx: &Ctx) -> Vec<(String, f64)> {
    let ticks = |pid: &str| -> Option<(String, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(") ")?;
        let name = name.split_once(" (")?.1.to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((name, t / 100.0))
    };
    let mut out: Vec<(String, f64)> =
        procs::SERVICES.iter().filter_map(|s| ticks(&ctx.services.pid(s).to_string())).collect();
    let pg: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| ticks(&e.file_name().to_string_lossy()))
        .filter(|(n, _)| n == "postgres")
        .map(|(_, t)| t)
        .sum();
    out.push(("postgres".into(), pg));
    out
}

fn cpu_spent(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    after
        .iter()
        .map(|(n, t)| {
            let was = before.iter().find(|(m, _)| m == n).map_or(0.0, |(_, b)| *b);
            format!("{n} {:.1}", t - was)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn against(pgbench_tps: Option<f64>, rate: f64) -> (String, Option<bool>) {
    match pgbench_tps {
        Some(tps) => {
            (format!("pgbench simple-update {tps:.0}/s ({:.2})", rate / tps), Some(rate >= tps / 2.0))
        }
        None => (String::new(), None),
    }
}

/// Subscriptions, then contacts in marketing-status once it knows every account's plan.
async fn set_up(ctx: &Ctx, accounts: usize) -> anyhow::Result<()> {
    let billing = BillingServiceClient::new(channel(ctx.services.addr("billing")));
    futures::stream::iter(0..accounts)
        .map(|i| {
            let mut billing = billing.clone();
            let account = ctx.account(i);
            async move {
                let req = bpb::CreateSubscriptionRequest {
                    edition: Edition::Professional as i32,
                    term: Term::Monthly as i32,
                    start_date: Some(Date { year: 2026, month: 1, day: 1 }),
                    currency: "EUR".into(),
                    subsidiary: "EU".into(),
                    tier: 0,
                    marketing_contacts_enabled: true,
                };
                billing.create_subscription(authed(req, &ctx.user(&account))).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<()>()
        .await?;
    // The plans reach marketing-status through billing's outbox.
    ctx.drained("billing", "outbox", "", Duration::from_secs(600)).await?;

    let created = |account: &str, id: String, at: DateTime<Utc>| mpb::ContactEvent {
        event_id: format!("created-{account}-{id}"),
        account_id: account.to_owned(),
        occurred_at: Some(timestamp(at)),
        payload: Some(mpb::contact_event::Payload::Created(mpb::ContactCreated {
            contact_id: id,
            source: Some(Source { r#type: SourceType::Import as i32, id: "bench".into() }),
            requested_status: MarketingStatus::Marketing as i32,
            user_id: "bench-user".into(),
        })),
    };
    let events: Vec<mpb::ContactEvent> = (0..accounts)
        .flat_map(|i| {
            let account = ctx.account(i);
            let n = if i % PENDING_EVERY == 0 { CONTACTS + PENDING } else { CONTACTS };
            (0..n).map(move |c| created(&account, format!("c{c:05}"), start())).collect::<Vec<_>>()
        })
        .collect();
    let internal = MarketingStatusInternalServiceClient::new(channel(ctx.services.addr("marketing-status")));
    let token = ctx.service("contacts");
    futures::stream::iter(
        events.chunks(10_000).map(<[contactier_proto::marketing_status::v1::ContactEvent]>::to_vec),
    )
    .map(|events| {
        let (mut internal, token) = (internal.clone(), token.clone());
        async move {
            internal
                .apply_contact_events(authed(
                    mpb::ApplyContactEventsRequest { events, batch_sizes: vec![] },
                    &token,
                ))
                .await?;
            anyhow::Ok(())
        }
    })
    .buffer_unordered(2)
    .try_collect::<()>()
    .await?;
    // Some accounts' own contacts set non-marketing: pending until the update date.
    let status = MarketingStatusServiceClient::new(channel(ctx.services.addr("marketing-status")));
    futures::stream::iter((0..accounts).step_by(PENDING_EVERY))
        .map(|i| {
            let mut status = status.clone();
            let account = ctx.account(i);
            async move {
                let ids = (CONTACTS..CONTACTS + PENDING).map(|c| format!("c{c:05}")).collect();
                let req = mpb::SetMarketingStatusRequest {
                    request_id: String::new(),
                    target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds {
                        ids,
                    })),
                    status: MarketingStatus::NonMarketing as i32,
                    source: None,
                };
                let changed = status.set_marketing_status(authed(req, &ctx.user(&account))).await?;
                anyhow::ensure!(changed.into_inner().changed == PENDING as i64, "{account}: pending not set");
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<()>()
        .await?;
    // Every count delivered to billing before the clock moves.
    let timeout = Duration::from_secs(600);
    ctx.drained("marketing-status", "outbox", "", timeout).await?;
    ctx.drained("billing", "outbox", "", timeout).await?;
    Ok(())
}

/// One account in [`UPGRADE_EVERY`] goes past its tier on the instant's day; answers how many.
async fn upgrade(ctx: &Ctx, accounts: usize) -> anyhow::Result<usize> {
    let upgraded: Vec<usize> = (0..accounts).step_by(UPGRADE_EVERY).collect();
    let events: Vec<bpb::CountChanged> = upgraded
        .iter()
        .map(|&i| bpb::CountChanged {
            event_id: format!("bench-upgrade-{}", ctx.account(i)),
            account_id: ctx.account(i),
            // Past every count marketing-status sent.
            version: 1 << 40,
            marketing_count: 2_100,
            pending_non_marketing: 0,
            non_marketing: 0,
            observed_at: Some(timestamp(instant())),
            marketing_contacts_enabled: true,
        })
        .collect();
    let internal = BillingInternalServiceClient::new(channel(ctx.services.addr("billing")));
    let token = ctx.service("marketing-status");
    for events in events.chunks(10_000) {
        let req = bpb::ApplyCountEventsRequest { events: events.to_vec() };
        internal.clone().apply_count_events(authed(req, &token)).await?;
    }
    let ups = ctx.count("billing", "upgrades", "SELECT count(DISTINCT account_id) FROM {t}").await?;
    anyhow::ensure!(ups == upgraded.len() as i64, "{ups} accounts upgraded of {}", upgraded.len());
    ctx.drained("billing", "outbox", "", Duration::from_secs(600)).await?;
    Ok(upgraded.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_under_a_second_is_shown_but_not_judged() {
        let short = timed(1_844.0, "invoices", Duration::from_millis(21));
        assert_eq!(short, ("1844 invoices/s (0.02 s: too short to judge)".to_owned(), false));
        let long = timed(2_703.0, "accounts", Duration::from_millis(3_700));
        assert_eq!(long, ("2703 accounts/s (3.70 s)".to_owned(), true));
    }
}
