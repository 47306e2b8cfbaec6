//! NotificationInternalService: billing's usage, upgrade and invoice events, applied once each.

use crate::error::Result;
use crate::store::{AlertRow, Event, Store};
use contactier_proto::notification::v1::{
    self as pb, notification_internal_service_server::NotificationInternalService,
};
use contactier_runtime::Principal;
use contactier_runtime::by_account::Refusals;
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::db::{HeldAccounts, bounded, for_account};
use tonic::{Request, Response, Status};

pub struct Internal {
    pub store: Store,
    pub clock: Clock,
    pub watchers: crate::watch::Watchers,
    pub delivery: WorkerWaker,
    /// How long alerts gather into one delivery per recipient.
    pub digest_window: std::time::Duration,
    /// Accounts whose rows another session held up lately.
    pub held: HeldAccounts,
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
        let (applied, refusals) = bounded(&self.held, self.apply(usable)).await?;
        let mut any_new = false;
        for (event_id, applied) in applied {
            if let Some(alerts) = applied.filter(|a| !a.is_empty()) {
                any_new = true;
                self.watchers.publish(&alerts);
            }
            acknowledged.push(event_id);
        }
        if any_new {
            self.delivery.wake();
        }
        let refused = refusals
            .answer(acknowledged.len())?
            .into_iter()
            .map(|(event_id, s)| pb::RefusedBillingEvent { event_id, status: Some(s) })
            .collect();
        Ok(Response::new(pb::ApplyBillingEventsResponse { acknowledged_event_ids: acknowledged, refused }))
    }
}

/// Events applied, each with the alerts it raised (None when seen before).
type Applied = Vec<(String, Option<Vec<AlertRow>>)>;

impl Internal {
    /// Applies the events in one transaction; when that fails and more than one account is in
    /// it, each account's in a transaction of its own, so one account's failing names its first
    /// event, with why, and the others are applied (failing the call failed every account in
    /// it, and billing sent them all again).
    async fn apply(
        &self,
        events: Vec<(String, String, Event)>,
    ) -> std::result::Result<(Applied, Refusals), Status> {
        let (now, window) = (self.clock.now(), self.digest_window);
        // A call of one account's events (a retry, alone) begins as that account's.
        let all = self.store.apply_all(&events, now, window);
        let one = events.first().map(|e| &e.1).filter(|a| events.iter().all(|e| &e.1 == *a));
        let all = match one {
            Some(account) => for_account(account, all).await,
            None => all.await,
        };
        let err = match all {
            Ok(applied) => {
                return Ok((
                    events.into_iter().map(|(id, ..)| id).zip(applied).collect(),
                    Refusals::default(),
                ));
            }
            Err(e) => e,
        };
        let accounts = contactier_runtime::by_account::by_account(events, |e| &e.1);
        let (mut applied, mut refusals) = (Vec::new(), Refusals::default());
        match accounts.as_slice() {
            [] => return Err(err.into()),
            // The one transaction was the account's own: named and logged as any account's is.
            [(account, events)] => refusals.add(account, &events[0].0, err.into()),
            _ => {
                for (account, events) in accounts {
                    match for_account(&account, self.store.apply_all(&events, now, window)).await {
                        Ok(outcomes) => applied.extend(events.into_iter().map(|(id, ..)| id).zip(outcomes)),
                        Err(e) => refusals.add(&account, &events[0].0, e.into()),
                    }
                }
            }
        }
        Ok((applied, refusals))
    }
}
