//! NotificationInternalService: billing's usage, upgrade and invoice events, applied once each.

use crate::convert::date_string;
use crate::error::{Error, Result};
use crate::store::{Event, Store};
use crate::thresholds::{State, Upgrade};
use contactier_proto::notification::v1::{
    self as pb, billing_event::Payload, notification_internal_service_server::NotificationInternalService,
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

fn non_negative(v: i64, field: &'static str) -> Result<i64> {
    if v < 0 { Err(Error::invalid(field, "must not be negative")) } else { Ok(v) }
}

fn required(v: String, field: &'static str) -> Result<String> {
    if v.is_empty() { Err(Error::invalid(field, "required")) } else { Ok(v) }
}

/// Checks one event; a bad one refuses the whole batch before anything is applied. None for an
/// event of a kind this service no longer takes (acknowledged, skipped).
fn validate(e: pb::BillingEvent) -> Result<(String, String, Option<Event>)> {
    let event_id = required(e.event_id, "events.event_id")?;
    let account = required(e.account_id, "events.account_id")?;
    let Some(payload) = e.payload else {
        return Ok((event_id, account, None));
    };
    let event = match payload {
        Payload::State(s) => {
            if s.version <= 0 {
                return Err(Error::invalid("events.state.version", "must be positive"));
            }
            if s.tier <= 0 {
                return Err(Error::invalid("events.state.tier", "must be positive"));
            }
            let upgrade = if s.upgrade_id.is_empty() {
                None
            } else if s.from_tier <= 0 || s.from_tier >= s.tier {
                return Err(Error::invalid("events.state.from_tier", "an upgrade raises the tier"));
            } else {
                Some(Upgrade { id: s.upgrade_id, from_tier: s.from_tier })
            };
            Event::State(State {
                version: s.version,
                period_start: date_string(s.period_start.as_ref(), "events.state.period_start")?,
                tier: s.tier,
                count: non_negative(s.marketing_count, "events.state.marketing_count")?,
                upgrade,
            })
        }
        Payload::Upgraded(u) => {
            if u.to_tier <= u.from_tier {
                return Err(Error::invalid("events.upgraded.to_tier", "an upgrade must raise the tier"));
            }
            Event::Upgraded {
                upgrade_id: required(u.upgrade_id, "events.upgraded.upgrade_id")?,
                from_tier: non_negative(u.from_tier, "events.upgraded.from_tier")?,
                to_tier: u.to_tier,
                marketing_count: non_negative(u.marketing_count, "events.upgraded.marketing_count")?,
                period_start: date_string(u.period_start.as_ref(), "events.upgraded.period_start")?,
            }
        }
        Payload::Invoice(i) => {
            let total = i.total.ok_or_else(|| Error::invalid("events.invoice.total", "required"))?;
            contactier_domain::Currency::parse(&total.currency)
                .map_err(|e| Error::invalid("events.invoice.total.currency", e.to_string()))?;
            Event::Invoice {
                invoice_id: required(i.invoice_id, "events.invoice.invoice_id")?,
                number: i.number,
                amount_minor: total.amount_minor,
                currency: total.currency,
            }
        }
    };
    Ok((event_id, account, Some(event)))
}

#[tonic::async_trait]
impl NotificationInternalService for Internal {
    async fn apply_billing_events(
        &self,
        req: Request<pb::ApplyBillingEventsRequest>,
    ) -> std::result::Result<Response<pb::ApplyBillingEventsResponse>, Status> {
        let principal = Principal::of(&req)?.clone();
        let events = req.into_inner().events.into_iter().map(validate).collect::<Result<Vec<_>>>()?;
        let mut acknowledged = Vec::with_capacity(events.len());
        let mut any_new = false;
        for (event_id, account, event) in events {
            principal.check_account(&account)?;
            let Some(event) = event else {
                // A kind from before usage states (a usage observation): nothing to evaluate.
                tracing::info!(event = %event_id, "skipped a billing event of a kind no longer used");
                acknowledged.push(event_id);
                continue;
            };
            let applied =
                self.store.apply(&event_id, &account, &event, self.clock.now(), self.digest_window).await?;
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
