//! NotificationInternalService: billing's usage, upgrade and invoice events, applied once each.

use crate::error::Result;
use crate::store::Store;
use contactier_proto::notification::v1::{
    self as pb, notification_internal_service_server::NotificationInternalService,
};
use contactier_runtime::Principal;
use contactier_runtime::clock::{Clock, WorkerWaker};
use tonic::{Request, Response, Status};

pub struct Internal {
    pub store: Store,
    pub clock: Clock,
    pub watchers: crate::watch::Watchers,
    pub delivery: WorkerWaker,
    /// How long alerts gather into one delivery per recipient.
    pub digest_window: std::time::Duration,
}

#[tonic::async_trait]
impl NotificationInternalService for Internal {
    async fn apply_billing_events(
        &self,
        req: Request<pb::ApplyBillingEventsRequest>,
    ) -> std::result::Result<Response<pb::ApplyBillingEventsResponse>, Status> {
        let principal = Principal::of(&req)?.clone();
        let events = req
            .into_inner()
            .events
            .into_iter()
            .map(crate::convert::billing_event)
            .collect::<Result<Vec<_>>>()?;
        let mut acknowledged = Vec::with_capacity(events.len());
        let mut usable = Vec::with_capacity(events.len());
        for (event_id, account, event) in events {
            principal.check_account_at("events", &account)?;
            if let Some(event) = event {
                usable.push((event_id, account, event));
            } else {
                // A kind from before usage states (a usage observation): nothing to evaluate.
                tracing::info!(event = %event_id, "skipped a billing event of a kind no longer used");
                acknowledged.push(event_id);
            }
        }
        let applied = self.store.apply_all(&usable, self.clock.now(), self.digest_window).await?;
        let mut any_new = false;
        for ((event_id, _, _), applied) in usable.into_iter().zip(applied) {
            if let Some(alerts) = applied.filter(|a| !a.is_empty()) {
                any_new = true;
                self.watchers.publish(&alerts);
            }
            acknowledged.push(event_id);
        }
        if any_new {
            self.delivery.wake();
        }
        Ok(Response::new(pb::ApplyBillingEventsResponse { acknowledged_event_ids: acknowledged }))
    }
}
