//! Prometheus metrics in the names dashboards already chart: calls as go-grpc-prometheus names
//! them (`grpc_server_handled_total` with code names), the rest `contactier_*`, process metrics
//! as every Prometheus client library names them. Served at `/metrics`, nothing else.

use anyhow::Context as _;
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets, seconds: fine below 10 ms, where a 5 ms p99 target is judged.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of background runs and database waits, seconds.
const RUN_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether the process's recorder is installed.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the process's recorder (once; later calls reuse it) and describes every metric.
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("grpc_".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Prefix("contactier_".into()), RUN_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        anyhow::bail!("another metrics recorder is installed");
    }
    let _ = HANDLE.set(handle.clone());
    describe();
    Ok(handle)
}

/// Serves `/metrics` on `addr` and keeps process metrics current.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    tokio::spawn(collect_process(handle.clone()));
    tokio::spawn(serve_on(listener, handle));
    Ok(())
}

async fn collect_process(handle: PrometheusHandle) {
    let process = metrics_process::Collector::default();
    process.describe();
    loop {
        process.collect();
        handle.run_upkeep();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn serve_on(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(bytes::Bytes::from(handle.render())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(bytes::Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("a response"))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

pub use contactier_client::wire::{code_name, split_path};

/// One run of a background worker: how long it took, whether it failed, how late it began.
pub fn worker_ran(worker: &str, ok: bool, took: Duration, late: Duration) {
    let worker = worker.to_owned();
    metrics::counter!("contactier_worker_runs_total", "worker" => worker.clone(), "result" => if ok { "ok" } else { "error" })
        .increment(1);
    histogram!("contactier_worker_run_seconds", "worker" => worker.clone()).record(took.as_secs_f64());
    gauge!("contactier_worker_lag_seconds", "worker" => worker.clone()).set(late.as_secs_f64());
    if ok {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        gauge!("contactier_worker_last_success_timestamp_seconds", "worker" => worker).set(now.as_secs_f64());
    }
}

fn describe() {
    describe_counter!("grpc_server_started_total", "RPCs started on the server.");
    describe_counter!("grpc_server_handled_total", "RPCs completed on the server, by status code name.");
    describe_histogram!(
        "grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time from receiving an RPC to its status."
    );
    describe_gauge!("grpc_server_in_flight_requests", "RPCs being handled now.");
    describe_counter!("grpc_client_handled_total", "RPCs made to other services, by status code name.");
    describe_histogram!(
        "grpc_client_handling_seconds",
        metrics::Unit::Seconds,
        "Time of RPCs made to other services."
    );
    describe_counter!(
        "contactier_rate_limited_total",
        "Calls refused with RESOURCE_EXHAUSTED by the per-account rate limit."
    );
    describe_counter!("contactier_handler_panics_total", "Handlers that panicked (answered INTERNAL).");
    describe_counter!("contactier_connections_closed_total", "Connections closed by the server, by reason.");
    describe_gauge!("contactier_outbox_backlog", "Events in a service's outbox not yet delivered, by topic.");
    describe_gauge!(
        "contactier_outbox_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest undelivered event, by topic (0 when none)."
    );
    describe_counter!("contactier_outbox_delivered_total", "Events delivered and acknowledged, by topic.");
    describe_gauge!(
        "contactier_outbox_receiver_down",
        "1 while a relay takes its receiver to be down and leaves it alone, by topic."
    );
    describe_counter!(
        "contactier_outbox_delivery_failures_total",
        "Relay batches or events the receiver did not take, by topic."
    );
    describe_counter!(
        "contactier_inbox_duplicates_total",
        "Events received again and skipped, by receiving service."
    );
    describe_gauge!(
        "contactier_db_pool_connections",
        "Connections of a service's pool, by state (idle, in_use)."
    );
    describe_gauge!("contactier_db_pool_max_connections", "Most connections a service's pool opens.");
    describe_histogram!(
        "contactier_db_begin_seconds",
        metrics::Unit::Seconds,
        "Time to get a connection and begin a write transaction."
    );
    describe_gauge!(
        "contactier_failing_work_items",
        "Background work items that failed and wait for a retry, by service and worker."
    );
    describe_counter!("contactier_work_failures_total", "Failures of background work items, by worker.");
    describe_counter!("contactier_worker_runs_total", "Runs of background workers, by worker and result.");
    describe_histogram!(
        "contactier_worker_run_seconds",
        metrics::Unit::Seconds,
        "Time one run of a background worker took."
    );
    describe_gauge!(
        "contactier_worker_lag_seconds",
        metrics::Unit::Seconds,
        "How late a background worker's last run began after its work fell due."
    );
    describe_gauge!(
        "contactier_worker_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "When a background worker last ran without error (Unix time)."
    );
    describe_counter!("contactier_invoices_issued_total", "Invoices issued, by kind.");
    describe_counter!("contactier_upgrades_total", "Automatic tier upgrades.");
    describe_counter!("contactier_alerts_total", "Alerts fired, by kind.");
    describe_counter!(
        "contactier_deliveries_total",
        "Webhook and email delivery attempts, by channel and result (delivered, failed, dead_letter)."
    );
}

/// Samples what only the database knows, every `every`: each outbox topic's backlog and the age
/// of its oldest event, the pool's connections, and the failing work of `failing`.
pub fn spawn_sampler(
    service: &'static str,
    db: crate::db::Db,
    failing: Vec<std::sync::Arc<dyn crate::work::FailingWork>>,
    every: Duration,
    shutdown: crate::Shutdown,
) {
    tokio::spawn(async move {
        let mut topics: Vec<String> = Vec::new();
        let mut failing_workers: std::collections::BTreeMap<String, usize> = Default::default();
        loop {
            sample_pool(service, &db);
            match outbox_backlog(&db).await {
                Ok(rows) => {
                    let now = chrono::Utc::now().timestamp_micros();
                    // A topic that emptied reads 0 rather than its last value.
                    for t in &topics {
                        if !rows.iter().any(|(topic, _, _)| topic == t) {
                            gauge!("contactier_outbox_backlog", "service" => service, "topic" => t.clone())
                                .set(0.0);
                            gauge!("contactier_outbox_oldest_age_seconds", "service" => service, "topic" => t.clone()).set(0.0);
                        }
                    }
                    for (topic, count, oldest) in &rows {
                        gauge!("contactier_outbox_backlog", "service" => service, "topic" => topic.clone())
                            .set(*count as f64);
                        let age = (now - oldest).max(0) as f64 / 1e6;
                        gauge!("contactier_outbox_oldest_age_seconds", "service" => service, "topic" => topic.clone()).set(age);
                        if !topics.contains(topic) {
                            topics.push(topic.clone());
                        }
                    }
                }
                Err(e) => tracing::debug!(service, error = %e, "outbox backlog not sampled"),
            }
            // A worker whose items all recovered reads 0 rather than its last count.
            for n in failing_workers.values_mut() {
                *n = 0;
            }
            for source in &failing {
                if let Ok(items) = source.failing(None, 10_000).await {
                    for item in items {
                        *failing_workers.entry(item.worker).or_default() += 1;
                    }
                }
            }
            for (worker, n) in &failing_workers {
                gauge!("contactier_failing_work_items", "service" => service, "worker" => worker.clone())
                    .set(*n as f64);
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.wait() => return,
            }
        }
    });
}

fn sample_pool(service: &'static str, db: &crate::db::Db) {
    let (size, idle, max) = match db {
        crate::db::Db::Sqlite(p) => (p.size(), p.num_idle() as u32, p.options().get_max_connections()),
        crate::db::Db::Postgres(p) => (p.size(), p.num_idle() as u32, p.options().get_max_connections()),
    };
    gauge!("contactier_db_pool_connections", "service" => service, "state" => "idle").set(idle as f64);
    gauge!("contactier_db_pool_connections", "service" => service, "state" => "in_use")
        .set(size.saturating_sub(idle) as f64);
    gauge!("contactier_db_pool_max_connections", "service" => service).set(max as f64);
}

/// Each topic's undelivered events: (topic, how many, oldest `created_at` in epoch microseconds).
async fn outbox_backlog(db: &crate::db::Db) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    let q = "/* across accounts: the backlog metric */ SELECT topic, COUNT(*), MIN(created_at) FROM outbox \
             GROUP BY topic";
    db.fetch_all(crate::sql::Sql::new(q)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_read_as_go_grpc_prometheus_writes_them() {
        assert_eq!(super::code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(super::code_name(tonic::Code::FailedPrecondition), "FailedPrecondition");
        assert_eq!(
            super::split_path("/contactier.billing.v1.BillingService/GetUsage"),
            ("contactier.billing.v1.BillingService".into(), "GetUsage".into())
        );
    }
}
