//! BillingInternalService: marketing counts from marketing-status, and the GDPR export.

use crate::price_book::PriceBook;
use crate::store::{CountOutcome, Store};
use contactier_proto::billing::v1::{self as pb, billing_internal_service_server::BillingInternalService};
use contactier_runtime::Principal;
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::db::{HeldAccounts, bounded, for_account};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Internal {
    pub store: Store,
    pub clock: Clock,
    pub book: Arc<PriceBook>,
    /// The relay to notification and the invoice run, woken when there is work for them.
    pub relay: WorkerWaker,
    pub invoicer: WorkerWaker,
    /// Accounts whose counts another session held up lately.
    pub held: HeldAccounts,
}

#[tonic::async_trait]
impl BillingInternalService for Internal {
    async fn apply_count_events(
        &self,
        req: Request<pb::ApplyCountEventsRequest>,
    ) -> Result<Response<pb::ApplyCountEventsResponse>, Status> {
        let principal = Principal::of(&req)?.clone();
        let events = req
            .into_inner()
            .events
            .into_iter()
            .map(crate::convert::count_event)
            .collect::<Result<Vec<_>, _>>()?;
        for e in &events {
            principal.check_account_at("events", &e.account_id)?;
        }
        let mut acknowledged = Vec::with_capacity(events.len());
        let (mut applied, mut upgraded) = (false, false);
        // An account whose counts fail is named by its first event, with why; the others go on
        // (failing the call failed every account in it, and its sender sent them all again).
        let mut refusals = contactier_runtime::by_account::Refusals::default();
        let accounts = contactier_runtime::by_account::by_account(events, |e| &e.account_id);
        // Each account's counts in their order, in one transaction per account, the call's
        // work bounded as one (see `bounded`).
        bounded(&self.held, async {
            for (account, events) in accounts {
                let apply = self.store.apply_counts(&account, &events, self.clock.now(), &self.book);
                let outcomes = match for_account(&account, apply).await {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        refusals.add(&account, &events[0].event_id, e.into());
                        continue;
                    }
                };
                for outcome in outcomes {
                    match outcome {
                        CountOutcome::Applied { upgrade } => {
                            applied = true;
                            if upgrade.is_some() {
                                metrics::counter!("contactier_upgrades_total").increment(1);
                                upgraded = true;
                            }
                        }
                        CountOutcome::Seen
                        | CountOutcome::Stale
                        | CountOutcome::NoSubscription
                        | CountOutcome::AfterUpdateDate => {}
                    }
                }
                acknowledged.extend(events.into_iter().map(|e| e.event_id));
            }
        })
        .await;
        if applied {
            self.relay.wake();
        }
        if upgraded {
            self.invoicer.wake();
        }
        let refused = refusals.answer(acknowledged.len())?;
        let refused = refused
            .into_iter()
            .map(|(event_id, s)| pb::RefusedCountEvent { event_id, status: Some(s) })
            .collect();
        Ok(Response::new(pb::ApplyCountEventsResponse { acknowledged_event_ids: acknowledged, refused }))
    }

    async fn export_account_billing_data(
        &self,
        req: Request<pb::ExportAccountBillingDataRequest>,
    ) -> Result<Response<pb::ExportAccountBillingDataResponse>, Status> {
        let account = req.get_ref().account_id.clone();
        Principal::of(&req)?.check_account_at("account_id", &account)?;
        let sub = self.store.subscription(&account).await?;
        let counts = self.store.counts(&account).await?;
        let invoices = self.store.invoices(&account, None, i64::MAX).await?;
        let upgrades = self.store.upgrades(&account, None, i64::MAX).await?;
        // Billing holds no personal data of contacts: the account's plan, counts and invoices.
        let json = serde_json::json!({
            "subscription": sub.map(|s| serde_json::json!({
                "edition": s.edition.as_str(),
                "start_date": s.start_date.to_string(),
                "currency": s.currency.as_str(),
                "subsidiary": s.subsidiary,
                "tier": s.tier,
            })),
            "counts": { "version": counts.version, "marketing": counts.marketing, "non_marketing": counts.non_marketing },
            "upgrades": upgrades.iter().map(|u| serde_json::json!({
                "id": u.id, "from_tier": u.from_tier, "to_tier": u.to_tier, "effective_date": u.effective_date,
            })).collect::<Vec<_>>(),
            "invoices": invoices.iter().map(|i| serde_json::json!({
                "id": i.id, "number": i.number, "total_minor": i.total_minor, "currency": i.currency,
            })).collect::<Vec<_>>(),
        });
        Ok(Response::new(pb::ExportAccountBillingDataResponse { json: json.to_string() }))
    }
}
