//! Cross-service events: a transactional outbox on the sending side, an inbox on the receiving
//! side. An event is written in the same transaction as the change it describes, delivered at
//! least once by a relay that retries with backoff until the receiver acknowledges it, and
//! applied once by a receiver that records its id in the same transaction as its effect.

use crate::clock::Worker;
use crate::convert::micros;
use crate::db::Db;
use crate::sql::{Sql, Tx};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rand::Rng;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// An event read as due, with how many events the read in time order took before keeping its
/// own (0 from the read in `seq` order).
#[derive(sqlx::FromRow)]
struct DueRow {
    #[sqlx(flatten)]
    event: OutboxEvent,
    picked: i64,
}

/// An event waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    pub event_id: String,
    pub account_id: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    /// The W3C traceparent of the change the event describes.
    #[sqlx(rename = "trace_context")]
    pub trace: Option<String>,
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A new event id: time-ordered, unique across services.
pub fn new_event_id() -> String {
    crate::convert::new_id()
}

/// Events due, read in time order from the due index: events held behind a retry have their
/// account's retry time (see [`Outbox::retry_at`]), so the read does not visit them (in `seq`
/// order it walked every one: 1 s a read behind 200,000 held). An account's events read are
/// kept only where they are its first ones, all read together: time order is not `seq` order
/// for an event enqueued behind a retry, racing it. The running total of payload lengths is
/// taken over lengths alone, which both backends read without the payload; the payloads are
/// read for the entries kept only.
const DUE_BY_TIME: &str = "/* across accounts: events due */ WITH picks AS (SELECT d.account_id, d.seq, \
     length(d.payload) AS len FROM outbox d WHERE d.topic = $1 AND d.next_attempt_at <= $2 AND NOT EXISTS \
     (SELECT 1 FROM outbox w WHERE w.topic = d.topic AND w.account_id = d.account_id AND w.seq < d.seq \
     AND w.next_attempt_at > $2) ORDER BY d.next_attempt_at, d.seq LIMIT $3), \
     marked AS (SELECT account_id, seq, len, COUNT(*) OVER (PARTITION BY account_id) AS n, \
     MAX(seq) OVER (PARTITION BY account_id) AS last FROM picks), \
     looked AS (SELECT account_id, seq, len, CASE WHEN seq < last THEN 1 \
     WHEN (SELECT COUNT(*) FROM outbox w WHERE w.topic = $1 AND w.account_id = m.account_id \
     AND w.seq <= m.last) = n THEN 1 ELSE 0 END AS first_ones FROM marked m), \
     kept AS (SELECT account_id, seq, len FROM (SELECT account_id, seq, len, \
     MIN(first_ones) OVER (PARTITION BY account_id) AS whole FROM looked) c WHERE whole = 1), \
     budget AS (SELECT account_id, seq, SUM(len) OVER (ORDER BY seq) - len AS before FROM kept) \
     SELECT o.event_id, o.account_id, o.payload, o.attempts, o.trace_context, \
     (SELECT COUNT(*) FROM picks) AS picked FROM budget k JOIN outbox o \
     ON o.account_id = k.account_id AND o.seq = k.seq WHERE k.before < $4 ORDER BY o.seq";

/// Events due in `seq` order, each checked for an earlier one of its account waiting: the read
/// when the one in time order keeps none.
const DUE_BY_SEQ: &str = "/* across accounts: events due */ SELECT o.event_id, o.account_id, o.payload, o.attempts, \
     o.trace_context, CAST(0 AS BIGINT) AS picked FROM outbox o JOIN \
     (SELECT account_id, seq, SUM(length(payload)) OVER (ORDER BY seq) - length(payload) AS before \
     FROM outbox d WHERE topic = $1 AND next_attempt_at <= $2 AND NOT EXISTS \
     (SELECT 1 FROM outbox w WHERE w.topic = d.topic AND w.account_id = d.account_id \
     AND w.seq < d.seq AND w.next_attempt_at > $2) ORDER BY seq LIMIT $3) d \
     ON o.account_id = d.account_id AND o.seq = d.seq WHERE d.before < $4 ORDER BY o.seq";

/// [`DUE_BY_SEQ`] leaving out one account's events (`$5`): the other accounts' share of a read
/// that account's backlog filled. Events never tried go too, though written after `$2`: a
/// turn reads for as long as its reads come back full, all at the time it began, and what was
/// written during a drain would otherwise wait for its end. So only an earlier event tried
/// before and waiting for its retry holds an account's later ones (one never tried goes with
/// them), or an account writing faster than a read went one event a read.
const DUE_BY_SEQ_BUT: &str = "/* across accounts: events due but one account's */ SELECT o.event_id, \
     o.account_id, o.payload, o.attempts, o.trace_context, CAST(0 AS BIGINT) AS picked FROM outbox o JOIN \
     (SELECT account_id, seq, SUM(length(payload)) OVER (ORDER BY seq) - length(payload) AS before \
     FROM outbox d WHERE topic = $1 AND (next_attempt_at <= $2 OR attempts = 0) AND account_id <> $5 AND NOT EXISTS \
     (SELECT 1 FROM outbox w WHERE w.topic = d.topic AND w.account_id = d.account_id \
     AND w.seq < d.seq AND w.next_attempt_at > $2 AND w.attempts > 0) ORDER BY seq LIMIT $3) d \
     ON o.account_id = d.account_id AND o.seq = d.seq WHERE d.before < $4 ORDER BY o.seq";

/// The latest time any event of the topic is due at (`$1`): the last entry of `outbox_due`.
const LATEST_ATTEMPT: &str =
    "/* across accounts: whether events wait */ SELECT MAX(next_attempt_at) FROM outbox WHERE topic = $1";

/// When the next event is due: the earliest time of an account's first event (see
/// [`Outbox::next_due`]).
const NEXT_DUE: &str = "/* across accounts: when an event is next due */ SELECT MIN(next_attempt_at) \
     FROM (SELECT o.next_attempt_at FROM outbox o \
     WHERE o.topic = $1 AND NOT EXISTS (SELECT 1 FROM outbox w WHERE w.topic = o.topic \
     AND w.account_id = o.account_id AND w.seq < o.seq) ORDER BY o.next_attempt_at LIMIT 1) n";

const INSERT_OUTBOX: &str = "INSERT INTO outbox (event_id, topic, account_id, payload, created_at, \
     next_attempt_at, trace_context) VALUES ($1, $2, $3, $4, $5, $5, $6)";
/// Events a statement of [`EventTx::enqueue_many`] writes: seven parameters each, within
/// SQLite's 999.
pub const ENQUEUE_ROWS: usize = 128;
/// No conflict target: a redelivery meets the account's key or, for events received before the
/// inbox kept accounts, the event id's.
const INSERT_INBOX: &str =
    "INSERT INTO inbox (account_id, event_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// Outbox and inbox writes inside a caller's transaction, on anything that runs statements
/// ([`Tx`]).
pub trait EventTx {
    /// Writes an event into the outbox; it is sent only if the transaction commits. The id
    /// (see [`new_event_id`]) is the one the receiver acknowledges, so it belongs in the payload too.
    fn enqueue(
        &mut self,
        event_id: &str,
        topic: &str,
        account_id: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Writes several events of one topic, each (event id, account, payload), in a statement
    /// for up to [`ENQUEUE_ROWS`] of them: as [`EventTx::enqueue`] each, without a round trip
    /// each.
    fn enqueue_many(
        &mut self,
        topic: &str,
        events: &[(String, String, Vec<u8>)],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Records a received event; false if it was seen before (the caller then skips its effect
    /// and acknowledges).
    fn receive(
        &mut self,
        account_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Records many received events at once, each (account, event id); answers the ids not
    /// seen before.
    fn receive_many(
        &mut self,
        events: &[(String, String)],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;
}

impl<T: Tx> EventTx for T {
    async fn enqueue(
        &mut self,
        event_id: &str,
        topic: &str,
        account_id: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let q = Sql::new(INSERT_OUTBOX)
            .bind(event_id)
            .bind(topic)
            .bind(account_id)
            .bind(payload)
            .bind(micros(now))
            .bind(crate::telemetry::current_traceparent());
        self.execute(q).await?;
        Ok(())
    }

    async fn enqueue_many(
        &mut self,
        topic: &str,
        events: &[(String, String, Vec<u8>)],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let trace = crate::telemetry::current_traceparent();
        for chunk in events.chunks(ENQUEUE_ROWS) {
            let q = format!(
                "INSERT INTO outbox (event_id, topic, account_id, payload, created_at, next_attempt_at, \
                 trace_context) VALUES {}",
                crate::db::placeholders(chunk.len(), 7)
            );
            let q = chunk.iter().fold(Sql::new(sqlx::AssertSqlSafe(q)), |q, (id, account, payload)| {
                q.bind(id.as_str())
                    .bind(topic)
                    .bind(account.as_str())
                    .bind(payload.as_slice())
                    .bind(micros(now))
                    .bind(micros(now))
                    .bind(trace.clone())
            });
            self.execute(q).await?;
        }
        Ok(())
    }

    async fn receive(
        &mut self,
        account_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let q = Sql::new(INSERT_INBOX).bind(account_id).bind(event_id).bind(micros(now));
        let inserted = self.execute(q).await?;
        if inserted == 0 {
            metrics::counter!("contactier_inbox_duplicates_total").increment(1);
        }
        Ok(inserted == 1)
    }

    async fn receive_many(
        &mut self,
        events: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, sqlx::Error> {
        let at = micros(now);
        let mut rows = crate::sql::Rows::with_capacity(3, events.len());
        for (account, id) in events {
            rows.push([account.into(), id.into(), at.into()]);
        }
        // Either unique key (the event's id, or its account and id) marks an event seen before.
        let fresh = self
            .append_new("inbox", &["account_id", "event_id", "received_at"], &rows, "", "event_id")
            .await?;
        let skipped = events.len().saturating_sub(fresh.len());
        if skipped > 0 {
            metrics::counter!("contactier_inbox_duplicates_total").increment(skipped as u64);
        }
        Ok(fresh)
    }
}

/// Delivers a batch and answers what the receiver acknowledged. An error leaves the whole
/// batch for a retry.
pub type Deliver =
    Box<dyn Fn(Vec<OutboxEvent>) -> BoxFuture<'static, anyhow::Result<Delivered>> + Send + Sync>;

/// What a receiver answered for a batch: the events it acknowledged (applied now or before),
/// and those it named as not applied, each with why. One in neither is not acknowledged; both
/// wait for a retry, and their account's later events with them.
#[derive(Debug, Default)]
pub struct Delivered {
    pub acked: Vec<String>,
    pub refused: Vec<(String, tonic::Status)>,
}

impl FromIterator<String> for Delivered {
    fn from_iter<I: IntoIterator<Item = String>>(acked: I) -> Self {
        Delivered { acked: acked.into_iter().collect(), refused: Vec::new() }
    }
}

impl From<Vec<String>> for Delivered {
    fn from(acked: Vec<String>) -> Self {
        Delivered { acked, refused: Vec::new() }
    }
}

impl Delivered {
    /// A receiver's answer: the ids it acknowledged, and those it refused with the
    /// `google.rpc.Status` it gave.
    pub fn answered(
        acked: Vec<String>,
        refused: impl IntoIterator<Item = (String, Option<tonic_types::pb::Status>)>,
    ) -> Self {
        let refused = refused.into_iter().map(|(id, s)| (id, crate::rich::from_rpc_status(s))).collect();
        Delivered { acked, refused }
    }

    /// Why `id` was not acknowledged, and how (see [`Failed`]).
    fn why(&self, id: &str) -> (String, Failed) {
        match self.refused.iter().find(|(r, _)| r == id) {
            // Written as a whole call's failure is, so operators read one form.
            Some((_, s)) => (s.to_string(), Failed::of(s)),
            None => ("not acknowledged".to_owned(), Failed::Refused),
        }
    }
}

/// A [`Deliver`] for a topic whose payloads are messages `M`: decodes a batch and hands each
/// message with its entry's event id to `send`, which answers the ids acknowledged (or a
/// [`Delivered`] naming those refused too). A payload that does not decode fails the batch.
pub fn deliver_messages<M, F, Fut, D>(send: F) -> Deliver
where
    M: prost::Message + Default + Send + 'static,
    F: Fn(Vec<(String, M)>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<D>> + Send + 'static,
    D: Into<Delivered>,
{
    Box::new(move |events: Vec<OutboxEvent>| {
        let decoded: Result<Vec<(String, M)>, prost::DecodeError> =
            events.into_iter().map(|e| Ok((e.event_id, M::decode(e.payload.as_slice())?))).collect();
        match decoded {
            Ok(messages) => {
                let sent = send(messages);
                Box::pin(async move { sent.await.map(Into::into) })
            }
            Err(e) => Box::pin(async move { Err(e.into()) }),
        }
    })
}

/// Payload bytes after which one relay read stops (it may end one entry past them). The entries
/// read are held, and decoded by the sender, until the receiver has answered them.
const BATCH_BYTES: i64 = 4 << 20;

/// Retry policy of a relay.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(200), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// Exponential in the attempts so far, with up to 20 % jitter so many senders do not retry
    /// in step; at the cap the jitter is below it, so no retry waits past `max`.
    pub fn delay(&self, attempts: i32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempts.clamp(0, 20) as u32).min(self.max);
        let jitter = rand::rng().random_range(0.0..0.2);
        let delay = exp + exp.mul_f64(jitter);
        if delay > self.max { self.max - self.max.mul_f64(jitter) } else { delay }
    }
}

/// How often at most a relay with a backlog has PostgreSQL look at the outbox again.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Reads and settles the outbox of one topic.
#[derive(Clone, Debug)]
pub struct Outbox {
    db: Db,
    topic: String,
    /// When this relay last had the outbox's statistics taken (see [`Outbox::follow_backlog`]).
    analyzed: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// The receiver found unable to answer, left alone for a while (see [`Outbox::unanswered`]).
    pause: std::sync::Arc<std::sync::Mutex<Pause>>,
}

#[derive(Debug, Default)]
struct Pause {
    until: Option<DateTime<Utc>>,
    /// Pauses since the receiver last answered.
    streak: u32,
    /// Events sent alone this turn that the receiver did not answer.
    unanswered: u32,
    /// Whether the receiver answered anything this turn: then it is up, and what it did not
    /// answer is those accounts' own trouble.
    heard: bool,
}

/// The longest a receiver that could not answer is left alone: once it is back, events of
/// accounts with none waiting go on within this.
const PAUSE_MAX: Duration = Duration::from_secs(10);

impl Outbox {
    pub fn new(db: Db, topic: &str) -> Self {
        Self { db, topic: topic.to_owned(), analyzed: Default::default(), pause: Default::default() }
    }

    /// The outbox swings from empty to a burst of thousands (an instant of many accounts) in
    /// seconds, faster than statistics are kept: planned from those of an empty table, the read
    /// of events due sorted the whole backlog at every read (26 ms a read at 40,000, which
    /// slowed the relay and so grew the backlog) where the index in `seq` order reads a batch
    /// (0.6 ms). While reads come back full, PostgreSQL takes the table's statistics again, at
    /// most every [`STATS_EVERY`]; it skips them when another process holds them.
    async fn follow_backlog(&self) -> Result<(), sqlx::Error> {
        if !matches!(self.db, Db::Postgres(_)) {
            return Ok(());
        }
        {
            let mut last = self.analyzed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < STATS_EVERY) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let q = "/* across accounts: the relay's plans follow a backlog */ ANALYZE (SKIP_LOCKED) outbox";
        self.db.execute(Sql::new(q)).await?;
        Ok(())
    }

    /// Events due for a (re)try at `now`, oldest first: at most `limit`, and none after the one
    /// whose payload brings the total to `max_bytes`. An entry can hold a whole import batch;
    /// while the receiver falls behind, the entries waiting would otherwise all be read at once.
    /// An account's events go in order: one waiting for its retry holds back the account's
    /// later ones, and no other account's.
    pub async fn due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Vec<OutboxEvent>, sqlx::Error> {
        Ok(self.read_due(now, limit, max_bytes).await?.0)
    }

    /// [`Outbox::due`], and whether the read stopped at `limit`: events it left out of what it
    /// read in time order count, as more may be waiting.
    async fn read_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<(Vec<OutboxEvent>, bool), sqlx::Error> {
        // With no event waiting for a retry, none is held and the walk in `seq` order reads
        // only events it keeps; it is the cheaper read then (about half, at 500 a read).
        if self.any_waiting(now).await? {
            let rows: Vec<DueRow> = self.read(DUE_BY_TIME, now, limit, max_bytes).await?;
            if let Some(first) = rows.first() {
                let stopped = first.picked >= limit;
                return Ok((rows.into_iter().map(|r| r.event).collect(), stopped));
            }
            if !self.any_due(now).await? {
                return Ok((Vec::new(), false));
            }
        }
        // None waiting, or every event read in time order was of an account with an earlier one
        // left out of it (an event enqueued behind a retry, racing it, comes out earlier than
        // the retry): the walk in `seq` order reads them in their order.
        let rows: Vec<DueRow> = self.read(DUE_BY_SEQ, now, limit, max_bytes).await?;
        let stopped = rows.len() as i64 >= limit;
        Ok((rows.into_iter().map(|r| r.event).collect(), stopped))
    }

    /// [`Outbox::read_due`], where one account's events fill more than half of a read that
    /// stopped at a limit: that account keeps half of it and the other accounts' events due
    /// take the rest, read without it. Its backlog released (its poison mended, an outage
    /// over), its events are the oldest due and filled every read until it drained, every
    /// other account's new events waiting the whole drain (20-26 s behind 3,000-5,000 single
    /// changes, seen from outside). Answers the events and whether the read was full (stopped
    /// at its count or its bytes): then more may be waiting.
    async fn read_fairly(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<(Vec<OutboxEvent>, bool), sqlx::Error> {
        let (events, stopped) = self.read_due(now, limit, max_bytes).await?;
        let full = stopped || events.iter().map(|e| e.payload.len() as i64).sum::<i64>() >= max_bytes;
        let Some((account, kept)) = crowding(&events).filter(|_| full) else {
            tracing::debug!(topic = %self.topic, events = events.len(), full, "relay read");
            return Ok((events, full));
        };
        let account = account.to_owned();
        let ours: Vec<&OutboxEvent> = events.iter().filter(|e| e.account_id == account).take(kept).collect();
        let bytes: i64 = ours.iter().map(|e| e.payload.len() as i64).sum();
        let q = Sql::new(DUE_BY_SEQ_BUT)
            .bind(&self.topic)
            .bind(micros(now))
            .bind(limit - kept as i64)
            .bind((max_bytes - bytes).max(1))
            .bind(&account);
        let others: Vec<DueRow> = self.db.fetch_all(q).await?;
        tracing::debug!(
            topic = %self.topic, events = events.len(), crowding = %account, kept, others = others.len(),
            "relay read shared"
        );
        // With no other account due it keeps its half all the same: an account writing in the
        // meantime waits for a call of half a read at most, not of a whole one (4-5 s for 500
        // counts in billing, seen from outside).
        let mut fair: Vec<OutboxEvent> = others.into_iter().map(|r| r.event).collect();
        fair.extend(events.into_iter().filter(|e| e.account_id == account).take(kept));
        Ok((fair, true))
    }

    async fn read(
        &self,
        q: &'static str,
        now: DateTime<Utc>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Vec<DueRow>, sqlx::Error> {
        let q = Sql::new(q).bind(&self.topic).bind(micros(now)).bind(limit).bind(max_bytes.max(1));
        self.db.fetch_all(q).await
    }

    /// Whether any event of the topic waits for a later time than `now` (a retry). Asked as
    /// the latest time, the last entry of `outbox_due`: as "any row after `now`, LIMIT 1" the
    /// statement's kept plan was a scan of the whole outbox (expecting a third of it to match,
    /// it meant to stop at once), and during an instant of 50,000 accounts it took 11.6 ms a
    /// call, 8 % of the database's time, growing with the accounts.
    async fn any_waiting(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let latest: Option<i64> = self.db.scalar(Sql::new(LATEST_ATTEMPT).bind(&self.topic)).await?;
        Ok(latest.is_some_and(|t| t > micros(now)))
    }

    /// Whether any event of the topic is due at `now` and not held behind its account's.
    async fn any_due(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let q = "/* across accounts: whether events are due */ SELECT COUNT(*) FROM (SELECT 1 FROM outbox d \
                 WHERE topic = $1 AND next_attempt_at <= $2 AND NOT EXISTS (SELECT 1 FROM outbox w \
                 WHERE w.topic = d.topic AND w.account_id = d.account_id AND w.seq < d.seq \
                 AND w.next_attempt_at > $2) LIMIT 1) x";
        let n: i64 = self.db.scalar(Sql::new(q).bind(&self.topic).bind(micros(now))).await?;
        Ok(n > 0)
    }

    /// Removes acknowledged events: one statement, one commit, for all a delivery acknowledged
    /// (a commit each made every delivered event wait for its own flush of the log).
    /// Each event by (account, event id), its key.
    pub async fn acknowledge(&self, events: &[(String, String)]) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let (x, records) = self.keys(events);
        let q = format!("DELETE FROM outbox WHERE (account_id, event_id) IN (SELECT acct, id FROM {x})");
        self.db.execute(Sql::new(sqlx::AssertSqlSafe(q)).bind(records)).await?;
        Ok(())
    }

    /// Events' keys, each (account, event id), as JSON records bound as `$1`: the FROM item
    /// (columns `acct`, `id`) and the parameter.
    fn keys(&self, events: &[(String, String)]) -> (String, String) {
        let records: Vec<serde_json::Value> =
            events.iter().map(|(account, id)| serde_json::json!({"acct": account, "id": id})).collect();
        let x = self.db.json_records(1, &[("acct", "text"), ("id", "text")]);
        (x, serde_json::Value::Array(records).to_string())
    }

    /// Schedules a retry of an unacknowledged event.
    pub async fn retry_at(
        &self,
        (account_id, event_id): (&str, &str),
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let q = "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 \
                 WHERE account_id = $4 AND event_id = $1";
        self.db.execute(Sql::new(q).bind(event_id).bind(micros(at)).bind(error).bind(account_id)).await?;
        self.count_failures(1);
        // The account's later events wait with it: the read in time order passes them by.
        let q = "UPDATE outbox SET next_attempt_at = $2 WHERE topic = $3 AND account_id = $1 \
                 AND next_attempt_at < $2 AND seq > (SELECT seq FROM outbox WHERE account_id = $1 AND event_id = $4)";
        self.db
            .execute(Sql::new(q).bind(account_id).bind(micros(at)).bind(&self.topic).bind(event_id))
            .await?;
        Ok(())
    }

    /// Each failure written, refused or unanswered, alone or named in a partial answer, counts
    /// once for operators, as other background work's do.
    fn count_failures(&self, n: usize) {
        metrics::counter!("contactier_work_failures_total", "worker" => format!("relay:{}", self.topic))
            .increment(n as u64);
    }

    /// Schedules a retry of several unacknowledged events at one time, in one statement.
    async fn retry_all(
        &self,
        events: &[(String, String)],
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        // An account's first event counts the failure; its later ones wait behind it, with no
        // failure of their own (each counted, an outage left an account's whole backlog listed
        // as failing for as long as its first was refused after). `events` are in their order.
        let mut seen = HashSet::new();
        let heads: Vec<(String, String)> =
            events.iter().filter(|(account, _)| seen.insert(account.as_str())).cloned().collect();
        self.count_failures(heads.len());
        let (x, heads) = self.keys(&heads);
        let q = format!(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 \
             WHERE (account_id, event_id) IN (SELECT acct, id FROM {x})"
        );
        self.db
            .execute(Sql::new(sqlx::AssertSqlSafe(q)).bind(heads.clone()).bind(micros(at)).bind(error))
            .await?;
        // Their accounts' later events wait with them (see [`Outbox::retry_at`]); none is earlier
        // than an event read.
        let q = format!(
            "UPDATE outbox SET next_attempt_at = $2 WHERE topic = $3 AND next_attempt_at < $2 \
             AND account_id IN (SELECT acct FROM {x})"
        );
        self.db
            .execute(Sql::new(sqlx::AssertSqlSafe(q)).bind(heads).bind(micros(at)).bind(&self.topic))
            .await?;
        Ok(())
    }

    /// When the next event of the topic is due, if any is waiting: the earliest time of an
    /// account's first event. An account's later events go after it, so none is due before it.
    /// (Checking each event for an earlier one waiting longer walked, for each event an account
    /// enqueued behind its waiting first, all those after it: quadratic, 4.5-5.9 s at 10,000.)
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let m: Option<i64> = self.db.scalar(Sql::new(NEXT_DUE).bind(&self.topic)).await?;
        Ok(m.map(from_micros))
    }

    /// Events waiting, for metrics and tests.
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        let q = "/* across accounts: events waiting */ SELECT COUNT(*) FROM outbox WHERE topic = $1";
        self.db.scalar(Sql::new(q).bind(&self.topic)).await
    }

    /// Delivers everything due at `now` in reads of at most `batch` entries, each ending at the
    /// entry that brings its payloads to `batch_bytes`; returns how many were acknowledged.
    pub async fn relay_once(
        &self,
        now: DateTime<Utc>,
        deliver: &Deliver,
        backoff: Backoff,
        batch: i64,
        batch_bytes: i64,
    ) -> Result<u64, sqlx::Error> {
        self.relay_turn(&move || now, deliver, backoff, batch, batch_bytes).await
    }

    /// [`Outbox::relay_once`], each read at the time `clock` gives when it begins: a turn reads
    /// for as long as its reads come back full (a drain of seconds), and what was written during
    /// it, not due at the time the turn began, waited for the turn's end (the drain's last,
    /// heaviest calls) where the read after its writing takes it now.
    pub async fn relay_turn(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        backoff: Backoff,
        batch: i64,
        batch_bytes: i64,
    ) -> Result<u64, sqlx::Error> {
        let mut delivered = 0;
        if self.paused_at(clock()).is_some() {
            return Ok(0);
        }
        self.new_turn();
        // Accounts with an event that failed in this turn: left out of its later reads. Their
        // retry falls due as the reads go on at the clock's time, and each try failed the read
        // it was in, whose events then went one call each (12 tries in a drain of 300 in test).
        let mut failed: HashSet<String> = HashSet::new();
        loop {
            let now = clock();
            let (mut events, full) = self.read_fairly(now, batch, batch_bytes).await?;
            events.retain(|e| !failed.contains(&e.account_id));
            if events.is_empty() {
                return Ok(delivered);
            }
            // An account whose first event failed before sends it alone in this read: it is the
            // likely one to fail again, and the account's events together failed with it at each
            // retry, then it alone, two calls. Its later events go in the read after it.
            let read = events.len();
            let (mut first, mut alone) = (HashSet::new(), HashSet::new());
            events.retain(|e| {
                if first.insert(e.account_id.clone()) {
                    if e.attempts > 0 {
                        alone.insert(e.account_id.clone());
                    }
                    true
                } else {
                    !alone.contains(&e.account_id)
                }
            });
            let more = full || events.len() < read;
            // Read again at once when this read stopped at a limit: more may be waiting.
            if full {
                self.follow_backlog().await?;
            }
            // The payloads go to the receiver; what settling each entry needs stays here.
            let sent: Vec<(String, String, i32)> =
                events.iter().map(|e| (e.event_id.clone(), e.account_id.clone(), e.attempts)).collect();
            let outcome = {
                let span = relay_span(&self.topic, &events);
                let outcome = tracing::Instrument::instrument(deliver(events), span.clone()).await;
                if outcome.is_err() {
                    span.record("otel.status_code", "ERROR");
                }
                outcome
            };
            // What the answer leaves waiting waits from the answer: a call can take seconds (a
            // drain's first, 3.5-8 s), and a retry reckoned from the read was due at once.
            let now = clock();
            // The batch failed: again in parts, down to each account alone, so one the receiver
            // cannot take holds up only its own account. Also when it seemed down: a receiver's
            // storage failing on one account's event answers as an outage does (UNAVAILABLE),
            // and the parts tell the two apart.
            if outcome.is_err() && sent.len() > 1 {
                metrics::counter!("contactier_outbox_delivery_failures_total", "topic" => self.topic.clone())
                    .increment(1);
                let unanswered = outcome.as_ref().err().is_some_and(receiver_unavailable);
                delivered +=
                    self.relay_split(clock, deliver, backoff, (sent, unanswered), &mut failed).await?;
                if !more || self.paused_at(now).is_some() {
                    return Ok(delivered);
                }
                continue;
            }
            let acked: HashSet<String> = match &outcome {
                Ok(answer) => answer.acked.iter().cloned().collect(),
                Err(_) => HashSet::new(),
            };
            let error = match &outcome {
                Ok(_) => "not acknowledged".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            let how = outcome.as_ref().err().map_or(Failed::Refused, Failed::of_call);
            let (acked_ids, unacked): (Vec<_>, Vec<_>) =
                sent.into_iter().partition(|(id, _, _)| acked.contains(id));
            let acked_ids: Vec<(String, String)> =
                acked_ids.into_iter().map(|(id, account, _)| (account, id)).collect();
            self.acknowledge(&acked_ids).await?;
            delivered += acked_ids.len() as u64;
            metrics::counter!("contactier_outbox_delivered_total", "topic" => self.topic.clone())
                .increment(acked_ids.len() as u64);
            if outcome.is_err() {
                metrics::counter!("contactier_outbox_delivery_failures_total", "topic" => self.topic.clone())
                    .increment(1);
            }
            // Answered after an outage: what waited it out is due, before this call's refusals
            // are written (woken with the rest, one was sent again straight after).
            if outcome.is_ok() {
                self.heard(now).await?;
            }
            // A call that failed whole was one event's (a read of several goes in parts above).
            let head =
                unacked.first().map(|(id, account, _)| (account.clone(), id.clone())).unwrap_or_default();
            for (id, account, attempts) in unacked {
                // An account's first event not acknowledged waits, and its later ones with it.
                if !failed.insert(account.clone()) {
                    continue;
                }
                match &outcome {
                    Ok(answer) => self.not_applied((&account, &id, attempts), answer, now, backoff).await?,
                    Err(_) => {
                        self.retry_at((&account, &id), now + retry_in(backoff, attempts, how), &error)
                            .await?;
                    }
                }
            }
            if outcome.as_ref().is_err_and(receiver_unavailable) {
                let _ = self.unanswered(now, backoff);
            }
            if outcome.is_err() {
                let (account, event) = head;
                tracing::warn!(topic = %self.topic, account = %account, event = %event, error = %error, "delivery failed; retrying later");
                return Ok(delivered);
            }
            if !more {
                return Ok(delivered);
            }
        }
    }

    /// Sends a read that failed as one call again in parts of whole accounts, halved each time a
    /// part fails, breadth first, the accounts whose first event has failed before last: one
    /// account's failing event costs two calls a level down to that account alone, where the
    /// read's other events went one call each (250 calls, 9-14 s behind one refused event).
    /// Alone, an account's events go one at a time, in order; one refused holds back the
    /// account's later ones until its retry. Two calls unanswered in a turn with nothing
    /// answered, and the receiver is taken to be down: they and the rest of the read are tried
    /// again at the pause's end, not at their own backoff (grown over a long outage to minutes,
    /// it held every account that long after the receiver's return). A part's halves go before
    /// either is halved again, so one account's trouble fails one of the two and the other
    /// answers. Otherwise each event that failed alone waits for its own retry, from the time it
    /// failed: the calls before it can take seconds, and a retry reckoned from the read's time
    /// was due already.
    async fn relay_split(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        backoff: Backoff,
        (sent, unanswered): (Vec<(String, String, i32)>, bool),
        held: &mut HashSet<String>,
    ) -> Result<u64, sqlx::Error> {
        let (events, accounts_held) = (sent.len(), held.len());
        let mut split = Split::default();
        // Each part, and once it failed as one call, whether that call was unanswered.
        let mut parts: VecDeque<(Vec<Run>, Option<bool>)> =
            VecDeque::from([(by_account(sent), Some(unanswered))]);
        while let Some((mut part, failed)) = parts.pop_front() {
            if split.down.is_some() {
                split.untried.extend(part.into_iter().flatten().map(|(id, account, _)| (account, id)));
            } else if part.len() > 1 && failed.is_some() {
                let second = part.split_off(part.len() / 2);
                parts.extend([(part, None), (second, None)]);
            } else if part.len() > 1 || (failed.is_none() && part[0].len() > 1 && part[0][0].2 == 0) {
                if let Some(unanswered) =
                    self.relay_part(clock, deliver, backoff, &part, held, &mut split).await?
                {
                    parts.push_back((part, Some(unanswered)));
                }
            } else if let Some(run) = part.pop() {
                // An account alone, sent as one call that failed, or not sent: its head failed
                // before, and goes alone first.
                self.relay_alone(clock, deliver, backoff, (run, failed), held, &mut split).await?;
            }
        }
        let now = clock();
        match split.down {
            Some(until) => {
                let error = split.error;
                let waiting: Vec<(String, String)> = split
                    .unanswered
                    .into_iter()
                    .map(|(account, id, ..)| (account, id))
                    .chain(split.untried)
                    .collect();
                self.retry_all(&waiting, until, &error).await?;
            }
            None => {
                for (account, id, attempts, error) in split.unanswered {
                    self.retry_at(
                        (&account, &id),
                        now + retry_in(backoff, attempts, Failed::Unanswered),
                        &error,
                    )
                    .await?;
                }
            }
        }
        tracing::info!(
            topic = %self.topic, events, calls = split.calls, delivered = split.delivered,
            accounts_waiting = held.len() - accounts_held, down = split.down.is_some(),
            "a failed read went again in parts"
        );
        Ok(split.delivered)
    }

    /// Sends one account's events of a failed read in order, in windows halved each time one
    /// fails, down to the event that fails alone, which holds back the rest until its retry
    /// (one at a time, the events before it went one call each: 149 calls before the 150th of
    /// 200). A head that failed before is tried alone first: it is the likely one. The account's
    /// calls unanswered count once toward the receiver being down: one account's storage failing
    /// is not an outage.
    async fn relay_alone(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        backoff: Backoff,
        (run, failed): (Run, Option<bool>),
        held: &mut HashSet<String>,
        split: &mut Split,
    ) -> Result<(), sqlx::Error> {
        // `run[start..failing]` failed as one call (when more than one is in it); `failed` says
        // whether the whole run did, and whether it went unanswered.
        let (mut start, mut failing) = (0, if failed.is_some() { run.len() } else { 0 });
        // The head alone first when it failed before, or the run's call went unanswered (see below).
        let mut len = if run.len() == 1 || run[0].2 > 0 || failed == Some(true) { 1 } else { run.len() / 2 };
        // Whether a call of this account was unanswered and counted, and whether one was answered.
        let (mut counted, mut heard) = (false, false);
        while start < run.len() {
            if split.down.is_some() {
                split
                    .untried
                    .extend(run[start..].iter().map(|(id, account, _)| (account.clone(), id.clone())));
                return Ok(());
            }
            let window = &run[start..start + len];
            let (outcome, now) = self.send(clock, deliver, window).await?;
            split.calls += 1;
            let error = match outcome {
                Ok((acked, _)) if window.iter().all(|(id, ..)| acked.contains(id)) => {
                    heard = true;
                    self.heard(now).await?;
                    split.delivered += len as u64;
                    start += len;
                    len = if start < failing {
                        ((failing - start) / 2).max(1)
                    } else {
                        // What failed went whole after all: the rest as one call.
                        failing = run.len();
                        run.len() - start
                    };
                    continue;
                }
                Ok((acked, answer)) => {
                    // Answered, not all acknowledged: the first not acknowledged waits.
                    self.heard(now).await?;
                    split.delivered += window.iter().filter(|(id, ..)| acked.contains(id)).count() as u64;
                    if let Some((id, account, attempts)) = window.iter().find(|(id, ..)| !acked.contains(id))
                    {
                        held.insert(account.clone());
                        self.not_applied((account, id, *attempts), &answer, now, backoff).await?;
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            let not_answered = receiver_unavailable(&error);
            if not_answered {
                split.error = format!("{error:#}");
            }
            if len > 1 {
                if !not_answered {
                    heard = true;
                    self.heard(now).await?;
                } else if !std::mem::replace(&mut counted, true) {
                    split.down = self.unanswered(now, backoff);
                }
                failing = start + len;
                // Unanswered with nothing of the account's answered yet: its head alone says in one
                // call whether the receiver is there at all (each call unanswered can take a whole
                // deadline), where halving walked down to it.
                len = if not_answered && !heard { 1 } else { len / 2 };
                continue;
            }
            let (id, account, attempts) = run[start].clone();
            let failed = Failed::of_call(&error);
            let error = format!("{error:#}");
            if not_answered {
                tracing::warn!(topic = %self.topic, event = %id, error = %error, "an event met its receiver (or the receiver's storage) unavailable; its account waits for its retry");
            } else {
                tracing::warn!(topic = %self.topic, event = %id, error = %error, "an event was refused; its account waits for its retry");
            }
            held.insert(account.clone());
            if not_answered {
                if !counted {
                    split.down = self.unanswered(now, backoff);
                }
                split.unanswered.push((account, id, attempts, error));
            } else {
                self.heard(now).await?;
                self.retry_at((&account, &id), now + retry_in(backoff, attempts, failed), &error).await?;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Sends one part of a failed read as one call. When it failed (the part to be halved),
    /// answers whether it was unanswered. An event answered without being acknowledged waits
    /// for its retry, as one refused alone does.
    async fn relay_part(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        backoff: Backoff,
        part: &[Run],
        held: &mut HashSet<String>,
        split: &mut Split,
    ) -> Result<Option<bool>, sqlx::Error> {
        let events: Vec<(String, String, i32)> = part.iter().flatten().cloned().collect();
        let (outcome, now) = self.send(clock, deliver, &events).await?;
        split.calls += 1;
        let (acked, answer) = match outcome {
            Ok(answered) => answered,
            Err(e) if receiver_unavailable(&e) => {
                split.error = format!("{e:#}");
                split.down = self.unanswered(now, backoff);
                return Ok(Some(true));
            }
            Err(_) => {
                self.heard(now).await?;
                return Ok(Some(false));
            }
        };
        self.heard(now).await?;
        // An account's first event not acknowledged waits for its retry, its later ones with it.
        for run in part {
            if let Some((id, account, attempts)) = run.iter().find(|(id, ..)| !acked.contains(id)) {
                held.insert(account.clone());
                self.not_applied((account, id, *attempts), &answer, now, backoff).await?;
            }
        }
        split.delivered += events.iter().filter(|(id, ..)| acked.contains(id)).count() as u64;
        Ok(None)
    }

    /// An event a receiver answered without acknowledging waits for its retry, with the
    /// receiver's reason when it named one, and its account's later events with it.
    async fn not_applied(
        &self,
        (account, id, attempts): (&str, &str, i32),
        answer: &Delivered,
        now: DateTime<Utc>,
        backoff: Backoff,
    ) -> Result<(), sqlx::Error> {
        let (error, failed) = answer.why(id);
        tracing::warn!(topic = %self.topic, account = %account, event = %id, error = %error, "an event was not applied; its account waits for its retry");
        self.retry_at((account, id), now + retry_in(backoff, attempts, failed), &error).await
    }

    /// Reads `events` (id, account, attempts) and sends them as one call, acknowledging what the
    /// receiver acknowledged. Answers the ids acknowledged (those gone meanwhile with them: sent
    /// by another replica) or the call's error, and the time it was answered.
    async fn send(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        events: &[(String, String, i32)],
    ) -> Result<(Result<(HashSet<String>, Delivered), anyhow::Error>, DateTime<Utc>), sqlx::Error> {
        let keys: Vec<(String, String)> =
            events.iter().map(|(id, account, _)| (account.clone(), id.clone())).collect();
        let read = self.events(&keys).await?;
        let mut gone: HashSet<String> = events.iter().map(|(id, ..)| id.clone()).collect();
        for e in &read {
            gone.remove(&e.event_id);
        }
        if read.is_empty() {
            return Ok((Ok((gone, Delivered::default())), clock()));
        }
        let span = relay_span(&self.topic, &read);
        let outcome = tracing::Instrument::instrument(deliver(read), span.clone()).await;
        let now = clock();
        let answer = match outcome {
            Ok(answer) => answer,
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                metrics::counter!("contactier_outbox_delivery_failures_total", "topic" => self.topic.clone())
                    .increment(1);
                return Ok((Err(e), now));
            }
        };
        let ids: HashSet<&String> = answer.acked.iter().collect();
        let acked: Vec<(String, String)> = keys.into_iter().filter(|(_, id)| ids.contains(id)).collect();
        self.acknowledge(&acked).await?;
        metrics::counter!("contactier_outbox_delivered_total", "topic" => self.topic.clone())
            .increment(acked.len() as u64);
        gone.extend(acked.into_iter().map(|(_, id)| id));
        Ok((Ok((gone, answer)), now))
    }

    /// The end of the pause `now` falls in, if it falls in one.
    fn paused_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.pause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .until
            .filter(|until| now < *until)
    }

    /// Counts an event sent alone that the receiver did not answer. The second in a turn in
    /// which it answered nothing, and the receiver is taken to be down: it is left alone for a
    /// while, longer each time until it answers, up to [`PAUSE_MAX`]; the pause's end is
    /// answered then. Tried again at once, each read of a backlog went to it and wrote a retry
    /// for every event read: an outage had every account's first event tried and written over,
    /// at every turn. One alone, or any once it has answered in the turn, is taken for its own
    /// account's trouble (a deadline passing on one account's large event, say).
    fn unanswered(&self, now: DateTime<Utc>, backoff: Backoff) -> Option<DateTime<Utc>> {
        let mut p = self.pause.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        p.unanswered = p.unanswered.saturating_add(1);
        if p.unanswered < 2 || p.heard {
            return None;
        }
        let wait = backoff.delay(p.streak as i32).min(PAUSE_MAX);
        p.until = Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX));
        p.streak = p.streak.saturating_add(1);
        self.say_down(true);
        p.until
    }

    /// A turn begins: one event unanswered in the last is its own account's trouble, and
    /// counts for nothing now (the same event retried alone, turn after turn, read as an outage).
    fn new_turn(&self) {
        let mut p = self.pause.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (p.unanswered, p.heard) = (0, false);
    }

    /// The receiver answered: no pause. True when that ends an outage, two pauses or more in a
    /// row: one alone can be two accounts' events failing in one turn, and waking everything
    /// then would send those again at each delivery after it.
    fn answered(&self) -> bool {
        let mut p = self.pause.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outage = p.streak > 1;
        if p.streak > 0 {
            self.say_down(false);
        }
        *p = Pause { heard: true, ..Pause::default() };
        outage
    }

    /// The receiver answered (see [`Outbox::answered`]); when that ends an outage, what waited
    /// it out is due. Before any retry of the answer is written: woken with the rest, an event
    /// just refused went again straight after.
    async fn heard(&self, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        if self.answered() {
            self.after_outage(now).await?;
        }
        Ok(())
    }

    /// Whether the relay takes its receiver to be down, for operators: its turns still succeed
    /// (reading, writing retries) while nothing is delivered.
    fn say_down(&self, down: bool) {
        metrics::gauge!("contactier_outbox_receiver_down", "topic" => self.topic.clone())
            .set(f64::from(u8::from(down)));
    }

    /// Events that failed while the receiver was down are due again at once it is back: their
    /// backoff, grown over the outage (up to minutes), would otherwise hold them and their
    /// accounts' later events that long after it. An event its receiver refuses is tried once
    /// more and goes back to its own backoff.
    async fn after_outage(&self, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let q = "/* across accounts: events waiting out an outage are due */ UPDATE outbox \
                 SET next_attempt_at = $2 WHERE topic = $1 AND next_attempt_at > $2";
        self.db.execute(Sql::new(q).bind(&self.topic).bind(micros(now))).await?;
        Ok(())
    }

    /// One turn of the relay: delivers what is due at `now` (unless its receiver is being left
    /// alone) and answers when to come back: when the next event is due, or the pause ends.
    pub async fn step(
        &self,
        now: DateTime<Utc>,
        deliver: &Deliver,
        backoff: Backoff,
        batch: i64,
        batch_bytes: i64,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.step_with(&move || now, deliver, backoff, batch, batch_bytes).await
    }

    /// [`Outbox::step`] with each read at the time `clock` gives (see [`Outbox::relay_turn`]).
    async fn step_with(
        &self,
        clock: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
        deliver: &Deliver,
        backoff: Backoff,
        batch: i64,
        batch_bytes: i64,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.relay_turn(clock, deliver, backoff, batch, batch_bytes).await?;
        let next = self.next_due().await?;
        Ok(match self.paused_at(clock()) {
            Some(until) => next.map(|n| n.max(until)),
            None => next,
        })
    }

    /// Waiting events by key, each account's in their order.
    async fn events(&self, keys: &[(String, String)]) -> Result<Vec<OutboxEvent>, sqlx::Error> {
        let (x, records) = self.keys(keys);
        let q = format!(
            "SELECT event_id, account_id, payload, attempts, trace_context FROM outbox \
             WHERE (account_id, event_id) IN (SELECT acct, id FROM {x}) ORDER BY seq"
        );
        self.db.fetch_all(Sql::new(sqlx::AssertSqlSafe(q)).bind(records)).await
    }

    /// Runs the relay until shutdown: delivers what is due, sleeps until the next retry or
    /// until woken by new events (the worker's waker, called after a commit that enqueued).
    pub async fn run(self, worker: Worker, deliver: Deliver, backoff: Backoff, shutdown: crate::Shutdown) {
        self.say_down(false);
        let clock = worker.clock();
        let (relay, deliver, clock) = (&self, &deliver, &clock);
        worker
            .drive(shutdown, chrono::Duration::seconds(1), move |_| async move {
                relay.step_with(&|| clock.now(), deliver, backoff, 500, BATCH_BYTES).await
            })
            .await;
    }
}

/// How a receiver failed an event, which sets the longest it waits for its next try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failed {
    /// Not answered, or the receiver's storage not there for it: at most [`PAUSE_MAX`].
    Unanswered,
    /// Refused for a conflict or a lock held (`ABORTED`: another session held its account's
    /// rows, say): at most [`CONTENDED_MAX`]. Not a statement past its time (a slow trigger):
    /// that is retried as any refusal, each retry taking that time again.
    Contended,
    /// Refused for what it is: the backoff's own cap.
    Refused,
}

/// The longest an event refused for a conflict or a hold-up waits: such a refusal passes when
/// the other session's work does, and a receiver gives up a lock on an account it found held up
/// lately at once, so a retry costs little; at the backoff's 5 minutes an account released
/// waited minutes more (73 s after a 170 s hold, seen from outside).
const CONTENDED_MAX: Duration = Duration::from_secs(30);

impl Failed {
    fn of(s: &tonic::Status) -> Self {
        if unanswered_status(s) {
            Self::Unanswered
        } else if s.code() == tonic::Code::Aborted
            // A statement that ran past its time takes it again at each retry.
            && !crate::storage_failure::statement_held_up(s)
        {
            Self::Contended
        } else {
            Self::Refused
        }
    }

    /// A call's failure: a status the receiver answered, else one not answered.
    fn of_call(e: &anyhow::Error) -> Self {
        e.downcast_ref::<tonic::Status>().map_or(Self::Refused, Self::of)
    }
}

/// How long an event waits for its next try after `attempts` failed ones. One the receiver did
/// not answer at all waits at most [`PAUSE_MAX`] (and jitter): an answer is what shows the
/// receiver back, and with few events waiting (one account's, or a few accounts' whose retries
/// never fell due together) nothing else tries it, so after an outage they waited out a
/// backoff grown to minutes (up to 142 s seen from outside). One refused for a conflict waits
/// at most [`CONTENDED_MAX`]; one refused for what it is keeps the backoff.
fn retry_in(backoff: Backoff, attempts: i32, failed: Failed) -> chrono::Duration {
    let max = match failed {
        Failed::Unanswered => backoff.max.min(PAUSE_MAX),
        Failed::Contended => backoff.max.min(CONTENDED_MAX),
        Failed::Refused => backoff.max,
    };
    chrono::Duration::from_std(Backoff { max, ..backoff }.delay(attempts)).unwrap_or(chrono::Duration::MAX)
}

/// One account's events in a read, in order: (event id, account, attempts).
type Run = Vec<(String, String, i32)>;

/// What the parts of a failed read came to so far.
#[derive(Default)]
struct Split {
    delivered: u64,
    calls: usize,
    /// Sent alone and unanswered, written once the turn knows whether the receiver is down.
    unanswered: Vec<(String, String, i32, String)>,
    /// The pause's end, once the receiver is taken to be down.
    down: Option<DateTime<Utc>>,
    /// Not sent once the receiver was taken to be down.
    untried: Vec<(String, String)>,
    /// The last call's error that went unanswered, written with the events left waiting.
    error: String,
}

/// A failed read's events by account, each account's in order, the accounts whose first event
/// has failed least first: the fresh accounts' part is answered before those failing turn after
/// turn are tried, so their failing is taken for their own trouble, not an outage.
fn by_account(sent: Vec<(String, String, i32)>) -> Vec<Run> {
    let mut runs: Vec<Run> =
        crate::by_account::by_account(sent, |e| &e.1).into_iter().map(|(_, r)| r).collect();
    runs.sort_by_key(|run| run[0].2);
    runs
}

/// The span of one relay batch: a child of the first event's trace, linked to the others', so
/// the receiver's work continues the trace of the change that caused it.
fn relay_span(topic: &str, events: &[OutboxEvent]) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "outbox relay",
        otel.name = %format!("{topic} publish"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "contactier-outbox",
        messaging.destination.name = %topic,
        messaging.batch.message_count = events.len(),
    );
    let mut contexts = events.iter().filter_map(|e| e.trace.as_deref()).map(crate::telemetry::context_of);
    if let Some(first) = contexts.next() {
        let _ = span.set_parent(first);
    }
    for cx in contexts {
        span.add_link(cx.span().span_context().clone());
    }
    span
}

/// Whether a delivery failed because the receiver could not answer at all, rather than
/// refusing what it was sent (or the sender failing to read one event).
fn receiver_unavailable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>().is_some_and(unanswered_status)
}

/// Whether a status says its sender could not answer (or reach its storage), not that it
/// refused what it was sent.
pub(crate) fn unanswered_status(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// The account whose events are more than half of a read, if one is, and how many of them
/// keep their place in it (half of the read).
fn crowding(events: &[OutboxEvent]) -> Option<(&str, usize)> {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for e in events {
        *counts.entry(e.account_id.as_str()).or_default() += 1;
    }
    let (account, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    (n * 2 > events.len() && events.len() > 1).then_some((account, (events.len() / 2).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Backend;

    #[test]
    fn an_account_crowds_a_read_past_half_of_it() {
        let e = |account: &str| OutboxEvent {
            event_id: String::new(),
            account_id: account.into(),
            payload: vec![],
            attempts: 0,
            trace: None,
        };
        let read = |accounts: &[&str]| accounts.iter().map(|a| e(a)).collect::<Vec<_>>();
        assert_eq!(crowding(&read(&["a", "a", "a", "b"])), Some(("a", 2)));
        assert_eq!(crowding(&read(&["a", "b", "a", "b"])), None, "half is not crowding");
        assert_eq!(crowding(&read(&["a"])), None, "a read of one");
        assert_eq!(crowding(&read(&[])), None);
        assert_eq!(crowding(&read(&["a", "a", "a", "a", "a"])), Some(("a", 2)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) };
        let d0 = b.delay(0);
        assert!(d0 >= Duration::from_millis(100) && d0 <= Duration::from_millis(120));
        let d3 = b.delay(3);
        assert!(d3 >= Duration::from_millis(800) && d3 <= Duration::from_millis(960));
        // At the cap, never past it (documented as the longest wait), still jittered.
        let capped: Vec<Duration> =
            (0..200).map(|_| b.delay(30)).chain((0..200).map(|_| b.delay(7))).collect();
        assert!(
            capped.iter().all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(10)),
            "{capped:?}"
        );
        assert!(capped.iter().any(|d| *d < Duration::from_millis(9_900)), "jittered: {capped:?}");
    }

    /// An event refused for a conflict or a hold-up (another session holding its account's rows)
    /// is tried again within half a minute however often it was refused: at the backoff's cap
    /// an account released waited minutes more. One not answered waits at most 10 s, one
    /// refused for what it is keeps the cap.
    #[test]
    fn refusals_wait_by_how_they_failed() {
        use crate::storage_failure::{
            HELD_BY_LOCK, HELD_BY_STATEMENT, LOCK_HELD_UP, STATEMENT_HELD_UP, held_up,
        };
        use tonic::Status;
        // As a receiver answers an entry of a batch: named, and through its google.rpc.Status.
        let in_batch = |s: Status| {
            let named = crate::by_account::Refusals::named("e1", s);
            crate::rich::from_rpc_status(Some(crate::rich::rpc_status(named)))
        };
        let cases = [
            (held_up(LOCK_HELD_UP, HELD_BY_LOCK), Failed::Contended),
            (in_batch(held_up(LOCK_HELD_UP, HELD_BY_LOCK)), Failed::Contended),
            (held_up(STATEMENT_HELD_UP, HELD_BY_STATEMENT), Failed::Refused),
            (in_batch(held_up(STATEMENT_HELD_UP, HELD_BY_STATEMENT)), Failed::Refused),
            (Status::aborted("conflicted"), Failed::Contended),
            (Status::unavailable("storage unavailable"), Failed::Unanswered),
            (Status::deadline_exceeded("late"), Failed::Unanswered),
            (Status::internal("storage refused the change"), Failed::Refused),
            (Status::failed_precondition("no subscription"), Failed::Refused),
        ];
        for (status, want) in cases {
            assert_eq!(Failed::of(&status), want, "{status:?}");
            assert_eq!(Failed::of_call(&anyhow::Error::new(status.clone())), want, "{status:?}");
        }
        assert_eq!(Failed::of_call(&anyhow::anyhow!("payload did not decode")), Failed::Refused);
        let b = Backoff::default();
        let longest = |how| (0..100).map(|_| retry_in(b, 40, how)).max().unwrap();
        let shortest = |how| (0..100).map(|_| retry_in(b, 40, how)).min().unwrap();
        assert!(longest(Failed::Unanswered) <= chrono::Duration::seconds(10));
        assert!(longest(Failed::Contended) <= chrono::Duration::seconds(30));
        assert!(shortest(Failed::Contended) >= chrono::Duration::seconds(24));
        assert!(shortest(Failed::Refused) >= chrono::Duration::seconds(240));
        // Early on, the same doubling for all.
        assert!(retry_in(b, 0, Failed::Contended) <= chrono::Duration::milliseconds(240));
    }

    /// One account's thousands of events all due at once (its poison mended, its backlog
    /// released): each event's check for an earlier one of its account waiting looks at the
    /// account's waiting events only. It walked every earlier event of the account, quadratic in
    /// the backlog: 4-13 s a read behind 5,000 on SQLite, seen from outside, every account's
    /// events waiting on it. The work is read from the plan (PostgreSQL: the pages the read
    /// touched; SQLite: the index the check searches), not from a clock.
    async fn a_released_backlog_is_read_without_walking_it_for_each_event(backend: Backend) {
        const BACKLOG: usize = 4_000;
        let t = crate::testing::TestDb::new(backend, "released").await;
        t.db.migrate_service(None).await.unwrap();
        let at = Utc::now();
        let mut events: Vec<(String, String, Vec<u8>)> =
            (0..BACKLOG).map(|_| (new_event_id(), "p".to_owned(), vec![7u8; 100])).collect();
        events.push((new_event_id(), "h".to_owned(), vec![7u8; 100]));
        let mut tx = t.db.begin_write().await.unwrap();
        for chunk in events.chunks(ENQUEUE_ROWS) {
            tx.enqueue_many("topic", chunk, at).await.unwrap();
        }
        tx.commit().await.unwrap();
        let ob = Outbox::new(t.db.clone(), "topic");
        let read: Vec<String> =
            ob.due(at, 500, 1 << 30).await.unwrap().into_iter().map(|e| e.event_id).collect();
        let first: Vec<String> = events[..500].iter().map(|e| e.0.clone()).collect();
        assert_eq!(read, first, "{backend:?}: p's first 500, in order");
        // The read in time order counts each account's events once (not each event's).
        for (name, q, counts) in [("in seq order", DUE_BY_SEQ, 0), ("in time order", DUE_BY_TIME, 1)] {
            let explain = |how: &str| format!("EXPLAIN {how} {q}");
            match &t.db {
                Db::Postgres(pool) => {
                    sqlx::query("ANALYZE outbox").execute(pool).await.unwrap();
                    let q = explain("(ANALYZE, BUFFERS, FORMAT JSON)");
                    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                        .bind("topic")
                        .bind(micros(at))
                        .bind(500i64)
                        .bind(1i64 << 30)
                        .fetch_one(pool)
                        .await
                        .unwrap();
                    let top = &plan[0]["Plan"];
                    let pages = top["Shared Hit Blocks"].as_i64().unwrap()
                        + top["Shared Read Blocks"].as_i64().unwrap();
                    // PostgreSQL plans the check as an anti-join: about 130 pages here. A walk
                    // of the earlier events for each event would touch pages by the million.
                    assert!(pages < 20_000, "{backend:?}: the read {name} touched {pages} pages");
                }
                Db::Sqlite(pool) => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(explain("QUERY PLAN")))
                        .bind("topic")
                        .bind(micros(at))
                        .bind(500i64)
                        .bind(1i64 << 30)
                        .fetch_all(pool)
                        .await
                        .unwrap();
                    let plan: Vec<String> =
                        rows.iter().map(|r| sqlx::Row::get::<String, _>(r, "detail")).collect();
                    let waiting = plan
                        .iter()
                        .filter(|d| d.contains("SEARCH w ") && d.contains("outbox_account_waiting"));
                    let walks =
                        plan.iter().filter(|d| d.contains("SEARCH w ") && d.contains("outbox_account ("));
                    assert!(
                        waiting.count() == 1 && walks.count() == counts,
                        "{backend:?}: the check {name} searches {plan:#?}"
                    );
                }
            }
        }
    }

    /// An account's first event waits for its retry while it keeps writing: when anything is
    /// next due is its first event's time, found without walking, for each event behind it, the
    /// ones after it (quadratic: 4.5-5.9 s at 10,000 seen from outside, on every relay turn).
    async fn when_next_due_behind_a_waiting_event_is_its_time_without_a_walk_each(backend: Backend) {
        const BEHIND: usize = 4_000;
        let t = crate::testing::TestDb::new(backend, "nextdue").await;
        t.db.migrate_service(None).await.unwrap();
        let at = Utc::now();
        let first = new_event_id();
        let mut tx = t.db.begin_write().await.unwrap();
        tx.enqueue(&first, "topic", "p", b"e", at).await.unwrap();
        tx.commit().await.unwrap();
        let ob = Outbox::new(t.db.clone(), "topic");
        let retry = at + chrono::Duration::minutes(5);
        ob.retry_at(("p", &first), retry, "refused").await.unwrap();
        // Written after the retry was set, each at its own (earlier) time.
        let events: Vec<(String, String, Vec<u8>)> =
            (0..BEHIND).map(|_| (new_event_id(), "p".to_owned(), b"e".to_vec())).collect();
        let mut tx = t.db.begin_write().await.unwrap();
        for chunk in events.chunks(ENQUEUE_ROWS) {
            tx.enqueue_many("topic", chunk, at + chrono::Duration::seconds(1)).await.unwrap();
        }
        tx.commit().await.unwrap();
        let next = ob.next_due().await.unwrap().unwrap();
        assert_eq!(micros(next), micros(retry), "{backend:?}: nothing goes before the first event's retry");
        let sql = NEXT_DUE;
        match &t.db {
            Db::Postgres(pool) => {
                sqlx::query("ANALYZE outbox").execute(pool).await.unwrap();
                let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"
                )))
                .bind("topic")
                .fetch_one(pool)
                .await
                .unwrap();
                let top = &plan[0]["Plan"];
                let pages =
                    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
                assert!(pages < 40_000, "{backend:?}: when next due touched {pages} pages");
            }
            Db::Sqlite(pool) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind("topic")
                    .fetch_all(pool)
                    .await
                    .unwrap();
                let plan: Vec<String> =
                    rows.iter().map(|r| sqlx::Row::get::<String, _>(r, "detail")).collect();
                assert!(
                    plan.iter().any(|d| d.contains("SEARCH w ") && d.contains("seq<?"))
                        && !plan.iter().any(|d| d.contains("SEARCH w ") && d.contains("next_attempt_at>?")),
                    "{backend:?}: the check searches {plan:#?}"
                );
            }
        }
    }

    /// Whether any event waits for a retry is one index entry read however many are due, in
    /// the plan PostgreSQL keeps for the statement too (a scan of the whole outbox before:
    /// 11.6 ms a call in an instant of 50,000 accounts, seen from outside).
    async fn whether_events_wait_reads_one_entry_however_many_are_due(backend: Backend) {
        const DUE: usize = 4_000;
        let t = crate::testing::TestDb::new(backend, "waiting").await;
        t.db.migrate_service(None).await.unwrap();
        let at = Utc::now();
        let events: Vec<(String, String, Vec<u8>)> =
            (0..DUE).map(|i| (new_event_id(), format!("a{}", i % 500), b"e".to_vec())).collect();
        let mut tx = t.db.begin_write().await.unwrap();
        for chunk in events.chunks(ENQUEUE_ROWS) {
            tx.enqueue_many("topic", chunk, at).await.unwrap();
        }
        tx.commit().await.unwrap();
        let ob = Outbox::new(t.db.clone(), "topic");
        let now = at + chrono::Duration::seconds(1);
        assert!(!ob.any_waiting(now).await.unwrap(), "{backend:?}: every event is due");
        ob.retry_at((&events[7].1, &events[7].0), now + chrono::Duration::minutes(1), "refused")
            .await
            .unwrap();
        assert!(ob.any_waiting(now).await.unwrap(), "{backend:?}: one waits for its retry");
        assert!(!ob.any_waiting(now + chrono::Duration::minutes(2)).await.unwrap(), "{backend:?}: past it");
        if let Db::Postgres(pool) = &t.db {
            sqlx::query("ANALYZE outbox").execute(pool).await.unwrap();
            let mut c = pool.acquire().await.unwrap();
            let prepare = format!("PREPARE latest(text) AS {LATEST_ATTEMPT}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *c).await.unwrap();
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut *c).await.unwrap();
            let explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE latest('topic')";
            let plan: serde_json::Value = sqlx::query_scalar(explain).fetch_one(&mut *c).await.unwrap();
            sqlx::raw_sql("RESET plan_cache_mode; DEALLOCATE latest").execute(&mut *c).await.unwrap();
            let top = &plan[0]["Plan"];
            let pages =
                top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
            assert!(pages < 10, "{backend:?}: the kept plan touched {pages} pages: {plan:#}");
        }
    }

    crate::backend_tests!(
        whether_events_wait_reads_one_entry_however_many_are_due,
        a_released_backlog_is_read_without_walking_it_for_each_event,
        when_next_due_behind_a_waiting_event_is_its_time_without_a_walk_each
    );
}
