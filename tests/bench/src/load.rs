//! Unary load: closed loop (as fast as the server answers, for peak throughput) and open loop
//! (a fixed rate, for latency at a given load), with latencies in an HDR histogram.

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One call; an error counts as a failed request.
pub type Call = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<(), tonic::Status>> + Send + Sync>;

#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn result(h: &Histogram<u64>, errors: u64, elapsed: Duration) -> LoadResult {
    LoadResult {
        requests: h.len(),
        errors,
        per_second: h.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// `concurrency` callers, each calling again as soon as it has an answer, for `time`.
pub async fn closed_loop(call: Call, concurrency: usize, time: Duration) -> LoadResult {
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let end = start + time;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (call, hist, errors) = (call.clone(), hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut errs = 0;
            let mut i = w;
            while Instant::now() < end {
                let t = Instant::now();
                match call(i).await {
                    Ok(()) => local.saturating_record(t.elapsed().as_micros() as u64),
                    Err(_) => errs += 1,
                }
                i += concurrency;
            }
            hist.lock().expect("histogram").add(&local).expect("same bounds");
            *errors.lock().expect("errors") += errs;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().expect("histogram");
    let e = *errors.lock().expect("errors");
    result(&h, e, start.elapsed())
}

/// Calls started at `rate` a second for `time`, whatever the answers do (so a slow server
/// shows in the latencies instead of lowering the load).
pub async fn open_loop(call: Call, rate: f64, time: Duration) -> LoadResult {
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (rate * time.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (call, hist, errors) = (call.clone(), hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match call(i).await {
                Ok(()) => hist.lock().expect("histogram").saturating_record(t.elapsed().as_micros() as u64),
                Err(_) => *errors.lock().expect("errors") += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().expect("histogram");
    let e = *errors.lock().expect("errors");
    result(&h, e, start.elapsed())
}

/// p50 and p99 of samples in milliseconds.
pub fn percentiles(samples: &[Duration]) -> (f64, f64) {
    let mut h = histogram();
    for s in samples {
        h.saturating_record(s.as_micros() as u64);
    }
    (h.value_at_quantile(0.50) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0)
}
