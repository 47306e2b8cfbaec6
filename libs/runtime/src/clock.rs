//! The injected clock.
//!
//! Production reads the system time. The manual clock, switched on by a flag production never
//! sets, holds time still until an operator or a test sets or advances it; advancing returns
//! only once every registered worker has done all work due up to the new time.
//!
//! Workers tell the clock when their next work is due, so an advance steps through each due
//! instant in order: work due at 00:00 on the 1st runs with the clock reading exactly that.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often a worker looks again on the system clock when nothing wakes it earlier,
/// so a worker never oversleeps a due time after the host's clock was adjusted.
const SYSTEM_POLL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
    workers: Arc<Mutex<Vec<Arc<WorkerShared>>>>,
}

struct Manual {
    now: watch::Sender<DateTime<Utc>>,
    // One advance at a time: two interleaved advances would each see the other's steps.
    advancing: tokio::sync::Mutex<()>,
}

/// What a worker last reported.
#[derive(Clone, Copy, Debug)]
struct WorkerState {
    /// All work due at or before this instant is done.
    done_through: DateTime<Utc>,
    /// When its next work is due, if it knows of any.
    next_due: Option<DateTime<Utc>>,
    /// How many times it has been handed new work; a step compares it before and after.
    wakes: u64,
}

struct WorkerShared {
    name: String,
    state: watch::Sender<WorkerState>,
    wake: Notify,
}

/// Errors of the manual clock.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the clock is not manual")]
    NotManual,
    #[error("time cannot move backwards (now {now}, asked {asked})")]
    Backwards { now: DateTime<Utc>, asked: DateTime<Utc> },
}

impl Clock {
    pub fn system() -> Self {
        Self { manual: None, workers: Arc::default() }
    }

    pub fn manual(start: DateTime<Utc>) -> Self {
        let (now, _) = watch::channel(start);
        Self {
            manual: Some(Arc::new(Manual { now, advancing: tokio::sync::Mutex::new(()) })),
            workers: Arc::default(),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            Some(m) => *m.now.borrow(),
            None => Utc::now(),
        }
    }

    /// Registers a worker whose due work an advance waits for.
    pub fn register_worker(&self, name: &str) -> Worker {
        let shared = Arc::new(WorkerShared {
            name: name.to_owned(),
            // A new worker has not run yet: it owes the work due now.
            state: watch::Sender::new(WorkerState {
                done_through: DateTime::<Utc>::MIN_UTC,
                next_due: Some(self.now()),
                wakes: 0,
            }),
            wake: Notify::new(),
        });
        self.workers.lock().expect("worker registry").push(shared.clone());
        Worker { clock: self.clone(), shared }
    }

    /// Moves a manual clock forward by `by`; see [`Clock::advance_to`].
    pub async fn advance(&self, by: chrono::Duration) -> Result<u64, ClockError> {
        let target = self.now() + by;
        self.advance_to(target).await
    }

    /// Moves a manual clock to `target`, stopping at each instant a worker has work due, and
    /// returns once all work due up to `target` is done. Returns the number of steps taken.
    pub async fn advance_to(&self, target: DateTime<Utc>) -> Result<u64, ClockError> {
        let manual = self.manual.as_ref().ok_or(ClockError::NotManual)?;
        let _one_at_a_time = manual.advancing.lock().await;
        let now = *manual.now.borrow();
        if target < now {
            return Err(ClockError::Backwards { now, asked: target });
        }
        let mut steps = 0;
        loop {
            // Work due now (or overdue) runs before time moves on.
            let now = *manual.now.borrow();
            self.settle(now).await;
            let step = self.earliest_due_after(now).filter(|d| *d < target).unwrap_or(target);
            if step == now {
                return Ok(steps);
            }
            manual.now.send_replace(step);
            steps += 1;
            for w in self.workers() {
                w.wake.notify_one();
            }
        }
    }

    fn workers(&self) -> Vec<Arc<WorkerShared>> {
        self.workers.lock().expect("worker registry").clone()
    }

    fn earliest_due_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.workers().iter().filter_map(|w| w.state.borrow().next_due).filter(|d| *d > now).min()
    }

    /// Waits until no worker owes work due at or before `at`. Repeats the pass until it finds
    /// every worker settled, because one worker's work may hand new work to another.
    async fn settle(&self, at: DateTime<Utc>) {
        loop {
            let mut waited = false;
            for w in self.workers() {
                let mut rx = w.state.subscribe();
                let settled = |s: &WorkerState| s.done_through >= at && s.next_due.is_none_or(|d| d > at);
                if !settled(&rx.borrow()) {
                    waited = true;
                    tracing::debug!(worker = %w.name, %at, "waiting for due work");
                    // The sender lives in the registry, so the channel never closes.
                    let _ = rx.wait_for(settled).await;
                }
            }
            if !waited {
                return;
            }
        }
    }
}

/// A worker's handle on the clock: it sleeps until work is due and reports what it has done.
pub struct Worker {
    clock: Clock,
    shared: Arc<WorkerShared>,
}

impl Worker {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The clock the worker runs on, for work that reads it again within a step.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Reports that all work due up to `done_through` is done and when the next is due.
    pub fn report(&self, done_through: DateTime<Utc>, next_due: Option<DateTime<Utc>>) {
        self.shared.state.send_modify(|s| {
            s.done_through = done_through;
            s.next_due = next_due;
        });
    }

    /// Reports a finished step begun when the worker had been woken `wakes_before` times. Work
    /// handed over during the step may have come after the step looked, so it stays owed.
    fn report_step(&self, done_through: DateTime<Utc>, next_due: Option<DateTime<Utc>>, wakes_before: u64) {
        self.shared.state.send_modify(|s| {
            s.done_through = done_through;
            s.next_due = if s.wakes == wakes_before {
                next_due
            } else {
                Some(next_due.map_or(done_through, |d| d.min(done_through)))
            };
        });
    }

    /// Runs `step` until shutdown: at once, then whenever its next work falls due or the worker
    /// is woken. A step answers when its next work is due; a failed one is logged and tried
    /// again after `retry`.
    pub async fn drive<F, Fut, E>(self, shutdown: crate::Shutdown, retry: chrono::Duration, mut step: F)
    where
        F: FnMut(DateTime<Utc>) -> Fut,
        Fut: Future<Output = Result<Option<DateTime<Utc>>, E>>,
        E: std::fmt::Display,
    {
        let mut due: Option<DateTime<Utc>> = None;
        loop {
            let now = self.now();
            let wakes_before = self.shared.state.borrow().wakes;
            let late = due.map_or(Duration::ZERO, |d| (now - d).to_std().unwrap_or_default());
            let started = std::time::Instant::now();
            let span = tracing::info_span!("background run", worker = %self.shared.name);
            let result = tracing::Instrument::instrument(step(now), span).await;
            crate::prom::worker_ran(&self.shared.name, result.is_ok(), started.elapsed(), late);
            let next = match result {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(worker = %self.shared.name, error = %e, "background work failed; retrying");
                    Some(now + retry)
                }
            };
            due = next;
            self.report_step(now, next, wakes_before);
            tokio::select! {
                () = self.sleep_until(next) => {}
                () = shutdown.wait() => return,
            }
        }
    }

    /// A handle others use to hand this worker new work.
    pub fn waker(&self) -> WorkerWaker {
        WorkerWaker { clock: self.clock.clone(), shared: self.shared.clone() }
    }

    /// Sleeps until `next_due`, until poked, or (system clock) at most [`SYSTEM_POLL`].
    pub async fn sleep_until(&self, next_due: Option<DateTime<Utc>>) {
        if let Some(m) = &self.clock.manual {
            let mut rx = m.now.subscribe();
            let reached = |now: &DateTime<Utc>| next_due.is_some_and(|d| *now >= d);
            tokio::select! {
                _ = rx.wait_for(reached) => {}
                () = self.shared.wake.notified() => {}
            }
        } else {
            let wait = next_due
                .map(|d| (d - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(SYSTEM_POLL)
                .min(SYSTEM_POLL);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shared.wake.notified() => {}
            }
        }
    }
}

/// A worker that stops (its service shut down) owes nothing: an advance no longer waits for it.
impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.state.send_modify(|s| {
            s.done_through = DateTime::<Utc>::MAX_UTC;
            s.next_due = None;
        });
        self.clock.workers.lock().expect("worker registry").retain(|w| !Arc::ptr_eq(w, &self.shared));
    }
}

/// Hands a worker new work: marks it owing work due now, so an advance waits for it, and wakes it.
#[derive(Clone)]
pub struct WorkerWaker {
    clock: Clock,
    shared: Arc<WorkerShared>,
}

impl WorkerWaker {
    pub fn wake(&self) {
        let now = self.clock.now();
        self.shared.state.send_modify(|s| {
            s.wakes += 1;
            s.next_due = Some(s.next_due.map_or(now, |d| d.min(now)));
        });
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn t(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, d, h, 0, 0).unwrap()
    }

    /// A worker with work due at fixed instants; records the clock reading of each run.
    fn spawn_scheduled(clock: &Clock, due: Vec<DateTime<Utc>>) -> Arc<Mutex<Vec<DateTime<Utc>>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let worker = clock.register_worker("scheduled");
        let log = seen.clone();
        tokio::spawn(async move {
            let mut pending = due;
            loop {
                let now = worker.now();
                while pending.first().is_some_and(|d| *d <= now) {
                    pending.remove(0);
                    log.lock().unwrap().push(now);
                }
                worker.report(now, pending.first().copied());
                worker.sleep_until(pending.first().copied()).await;
            }
        });
        seen
    }

    #[test]
    fn system_clock_reads_real_time() {
        let c = Clock::system();
        let before = Utc::now();
        let now = c.now();
        assert!(now >= before && now <= Utc::now());
        assert!(!c.is_manual());
    }

    #[tokio::test]
    async fn manual_clock_stands_still_until_moved() {
        let c = Clock::manual(t(1, 0));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.now(), t(1, 0));
        c.advance(chrono::Duration::hours(5)).await.unwrap();
        assert_eq!(c.now(), t(1, 5));
    }

    #[tokio::test]
    async fn manual_clock_never_goes_backwards() {
        let c = Clock::manual(t(2, 0));
        assert_eq!(c.advance_to(t(1, 0)).await, Err(ClockError::Backwards { now: t(2, 0), asked: t(1, 0) }));
        assert_eq!(Clock::system().advance_to(t(1, 0)).await, Err(ClockError::NotManual));
    }

    #[tokio::test]
    async fn advance_runs_each_due_work_at_its_own_instant_before_returning() {
        let c = Clock::manual(t(1, 0));
        let seen = spawn_scheduled(&c, vec![t(2, 0), t(3, 12), t(9, 0)]);
        c.advance_to(t(5, 0)).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![t(2, 0), t(3, 12)],
            "work due by the target ran at its due time"
        );
        assert_eq!(c.now(), t(5, 0));
        c.advance_to(t(9, 0)).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3, "work due exactly at the target runs too");
    }

    #[tokio::test]
    async fn advance_waits_for_work_handed_from_one_worker_to_another() {
        let c = Clock::manual(t(1, 0));
        let ran = Arc::new(AtomicU64::new(0));
        // The consumer runs whenever it is woken, with a slow step so a race would show.
        let consumer = c.register_worker("consumer");
        let waker = consumer.waker();
        let queued = Arc::new(AtomicU64::new(0));
        let (q, r) = (queued.clone(), ran.clone());
        tokio::spawn(async move {
            loop {
                let now = consumer.now();
                while q.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    q.fetch_sub(1, Ordering::SeqCst);
                    r.fetch_add(1, Ordering::SeqCst);
                }
                consumer.report(now, None);
                consumer.sleep_until(None).await;
            }
        });
        // The producer has work due on the 2nd that queues work for the consumer.
        let producer = c.register_worker("producer");
        let q = queued.clone();
        tokio::spawn(async move {
            let mut due = Some(t(2, 0));
            loop {
                let now = producer.now();
                if due.is_some_and(|d| d <= now) {
                    due = None;
                    q.fetch_add(3, Ordering::SeqCst);
                    waker.wake();
                }
                producer.report(now, due);
                producer.sleep_until(due).await;
            }
        });
        c.advance_to(t(3, 0)).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 3, "the handed-on work was done before advance returned");
    }

    #[tokio::test]
    async fn work_handed_over_while_a_step_runs_is_still_owed_when_the_step_ends() {
        let c = Clock::manual(t(1, 0));
        let worker = c.register_worker("consumer");
        let waker = worker.waker();
        let (queued, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (looked, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let (q, d, l, r) = (queued.clone(), done.clone(), looked.clone(), release.clone());
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        tokio::spawn(worker.drive(crate::Shutdown::new(), chrono::Duration::seconds(1), move |_| {
            let (q, d, l, r, first) = (q.clone(), d.clone(), l.clone(), r.clone(), first.clone());
            async move {
                // Slow steps, so an advance that stopped waiting too early would show.
                tokio::time::sleep(Duration::from_millis(10)).await;
                d.fetch_add(q.swap(0, Ordering::SeqCst), Ordering::SeqCst);
                // The first step has looked at an empty queue and is still busy when work comes.
                if first.swap(false, Ordering::SeqCst) {
                    l.notify_one();
                    r.notified().await;
                }
                Ok::<_, ClockError>(None)
            }
        }));
        looked.notified().await;
        queued.fetch_add(1, Ordering::SeqCst);
        waker.wake();
        release.notify_one();
        c.advance(chrono::Duration::zero()).await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1, "the advance returned before the handed-over work ran");
    }
}

#[cfg(test)]
mod stopping {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn a_stopped_worker_no_longer_holds_the_clock() {
        let c = Clock::manual(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap());
        // Registered and owing work, then gone without reporting (its service stopped).
        let worker = c.register_worker("stopped");
        worker.waker().wake();
        drop(worker);
        let advanced =
            tokio::time::timeout(Duration::from_secs(5), c.advance(chrono::Duration::hours(1))).await;
        assert!(advanced.is_ok(), "the advance waited for a worker that is gone");
    }
}
