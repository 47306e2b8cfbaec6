//! Background work that fails. Every worker keeps its items in its own tables (outbox events,
//! update dates, invoices, workflow runs, deliveries) and records a failure on the item itself:
//! its error, its attempts and its next try. A failing item is retried on its own with backoff
//! and never holds up another account's. Failures are counted in
//! `contactier_work_failures_total{worker}`, and `contactier.ops.v1.WorkService` lists the items
//! still failing.

use crate::convert::timestamp_micros;
use crate::db::Db;
use contactier_proto::ops::v1::{self as pb, work_service_server::WorkService};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Items one source answers at most; a listing beyond that is cut short.
pub const MAX_PER_SOURCE: i64 = 10_000;

/// One item of background work that failed and is not done.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct FailingItem {
    pub worker: String,
    pub account_id: String,
    pub item: String,
    pub attempts: i64,
    pub last_error: String,
    /// Epoch microseconds.
    pub next_attempt_at: i64,
}

impl FailingItem {
    fn key(&self) -> (&str, &str, &str) {
        (&self.worker, &self.account_id, &self.item)
    }
}

/// Where a service's failing items of one kind are kept.
pub trait FailingWork: Send + Sync {
    /// At most `limit` of them: of `account` only, or of every account.
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailingItem>, sqlx::Error>>;
}

/// Counts one failure of `worker`'s and logs it without personal data.
pub fn record_failure(worker: &'static str, account: &str, item: &str, attempts: i64, error: &str) {
    metrics::counter!("contactier_work_failures_total", "worker" => worker).increment(1);
    tracing::warn!(
        worker,
        account,
        item,
        attempts,
        error,
        "background work failed; it is retried later on its own"
    );
}

/// The delay before the retry after `attempts` failures: `first`, doubling, at most `max`.
pub fn backoff(attempts: i64, first: Duration, max: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).clamp(0, 30) as u32;
    first.saturating_mul(1u32 << shift.min(31)).min(max)
}

/// The outbox events of a service that were tried and not acknowledged.
pub struct OutboxFailures {
    db: Db,
}

impl OutboxFailures {
    pub fn source(db: Db) -> Arc<dyn FailingWork> {
        Arc::new(Self { db })
    }
}

impl FailingWork for OutboxFailures {
    fn failing<'a>(
        &'a self,
        account: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailingItem>, sqlx::Error>> {
        Box::pin(async move {
            let q = "/* across accounts: failing work for operators */ SELECT 'relay:' || topic AS worker, account_id, event_id AS item, \
                     CAST(attempts AS BIGINT) AS attempts, COALESCE(last_error, '') AS last_error, \
                     next_attempt_at \
                     FROM outbox WHERE attempts > 0 AND ($2 = '' OR account_id = $2) ORDER BY seq LIMIT $1";
            self.db.fetch_all(crate::sql::Sql::new(q).bind(limit).bind(account.unwrap_or_default())).await
        })
    }
}

/// `contactier.ops.v1.WorkService` over a service's sources of failing items.
pub struct WorkOps {
    service: String,
    sources: Vec<Arc<dyn FailingWork>>,
    /// The operators' account: its callers see every account's items, any other caller its own
    /// account's only (the `ops` scope alone says nothing of whose work one may read).
    operators: String,
}

impl WorkOps {
    pub fn server(
        service: &str,
        sources: Vec<Arc<dyn FailingWork>>,
        operators: &str,
    ) -> pb::work_service_server::WorkServiceServer<Self> {
        pb::work_service_server::WorkServiceServer::new(Self {
            service: service.to_owned(),
            sources,
            operators: operators.to_owned(),
        })
    }
}

/// Failing work of this service only: another service's token is refused.
fn token_list(service: &str) -> String {
    format!("failing work of {service}")
}

fn encode_token(service: &str, item: &FailingItem) -> String {
    crate::paging::token(&token_list(service), &serde_json::to_string(&item.key()).expect("JSON of strings"))
}

fn decode_token(service: &str, token: &str) -> Result<Option<(String, String, String)>, Status> {
    let list = token_list(service);
    match crate::paging::after(&list, token)? {
        None => Ok(None),
        Some(key) => serde_json::from_str(&key)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("page_token: not a page token of {list}"))),
    }
}

/// One page of `items` ordered by worker, account and item, after `after`.
pub fn page(
    service: &str,
    mut items: Vec<FailingItem>,
    after: Option<&(String, String, String)>,
    size: usize,
) -> (Vec<FailingItem>, Option<String>) {
    items.sort_by(|a, b| a.key().cmp(&b.key()));
    if let Some((w, a, i)) = after {
        let after = (w.as_str(), a.as_str(), i.as_str());
        items.retain(|x| x.key() > after);
    }
    let more = items.len() > size;
    items.truncate(size);
    let next = if more { items.last().map(|i| encode_token(service, i)) } else { None };
    (items, next)
}

#[tonic::async_trait]
impl WorkService for WorkOps {
    async fn list_failing_work(
        &self,
        req: Request<pb::ListFailingWorkRequest>,
    ) -> Result<Response<pb::ListFailingWorkResponse>, Status> {
        let own = match req.extensions().get::<crate::auth::Principal>() {
            Some(p) if p.account_id()? == self.operators => None,
            Some(p) => Some(p.account_id()?.to_owned()),
            None => return Err(Status::unauthenticated("a token is required")),
        };
        let r = req.into_inner();
        let size = crate::paging::limit(r.page_size)? as usize;
        let after = decode_token(&self.service, &r.page_token)?;
        let mut items = Vec::new();
        for s in &self.sources {
            let theirs = s.failing(own.as_deref(), MAX_PER_SOURCE).await;
            items.extend(theirs.map_err(|e| crate::db::storage_status(&e))?);
        }
        let (items, next) = page(&self.service, items, after.as_ref(), size);
        Ok(Response::new(pb::ListFailingWorkResponse {
            items: items
                .into_iter()
                .map(|i| pb::FailingWork {
                    next_attempt_at: timestamp_micros(i.next_attempt_at),
                    worker: i.worker,
                    account_id: i.account_id,
                    item: i.item,
                    attempts: i.attempts,
                    last_error: i.last_error,
                })
                .collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(worker: &str, account: &str, item: &str) -> FailingItem {
        FailingItem {
            worker: worker.into(),
            account_id: account.into(),
            item: item.into(),
            attempts: 1,
            last_error: "x".into(),
            next_attempt_at: 0,
        }
    }

    #[test]
    fn pages_follow_worker_account_and_item() {
        let all =
            vec![item("b", "a1", "1"), item("a", "a2", "1"), item("a", "a1", "2"), item("a", "a1", "1")];
        let (first, next) = page("billing", all.clone(), None, 3);
        let keys: Vec<_> =
            first.iter().map(|i| (i.worker.as_str(), i.account_id.as_str(), i.item.as_str())).collect();
        assert_eq!(keys, [("a", "a1", "1"), ("a", "a1", "2"), ("a", "a2", "1")]);
        let after = decode_token("billing", &next.unwrap()).unwrap();
        let (second, next) = page("billing", all, after.as_ref(), 3);
        assert_eq!(second, [item("b", "a1", "1")]);
        assert!(next.is_none());
        assert!(decode_token("billing", "###").is_err());
        let theirs = encode_token("notification", &item("b", "a1", "1"));
        assert!(decode_token("billing", &theirs).is_err(), "another service's token");
        let forged =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r#"["a","b","c"]"#);
        assert!(decode_token("billing", &forged).is_err(), "a key without its list");
    }

    #[test]
    fn backoff_doubles_to_its_ceiling() {
        let d: Vec<u64> =
            (1..=8).map(|a| backoff(a, Duration::from_secs(5), Duration::from_secs(300)).as_secs()).collect();
        assert_eq!(d, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(i64::MAX, Duration::from_secs(5), Duration::from_secs(300)).as_secs(), 300);
    }
}
