//! BillingService: subscriptions, the price book, usage, upgrades, invoices and the calendar.

use crate::calendar;
use crate::charges;
use crate::convert::{self, date, pb_date, pb_money};
use crate::error::{Error, Result};
use crate::history;
use crate::model::{self, Subscription};
use crate::price_book::PriceBook;
use crate::store::Store;
use chrono::Days;
use contactier_domain::Currency;
use contactier_proto::billing::v1::{self as pb, billing_service_server::BillingService};
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::convert::timestamp;
use contactier_runtime::paging;
use contactier_runtime::request::{Answer, account};
use std::sync::Arc;
use tonic::{Request, Response};

pub struct Api {
    pub store: Store,
    pub clock: Clock,
    pub book: Arc<PriceBook>,
    /// Workers with work once a subscription is made.
    pub on_subscribe: Vec<WorkerWaker>,
}

impl Api {
    async fn subscription(&self, account: &str) -> Result<Subscription> {
        self.store.subscription(account).await?.ok_or_else(|| Error::not_found("subscription"))
    }

    fn pb_subscription(&self, s: &Subscription) -> Result<pb::Subscription> {
        let today = s.today(&self.book, self.clock.now());
        Ok(convert::pb_subscription(s, today, charges::price(s, &self.book, s.tier)?))
    }
}

#[tonic::async_trait]
impl BillingService for Api {
    async fn create_subscription(
        &self,
        req: Request<pb::CreateSubscriptionRequest>,
    ) -> Answer<pb::CreateSubscriptionResponse> {
        let account = account(&req)?;
        let r = req.into_inner();
        let edition = convert::edition(r.edition)?;
        let term = convert::term(r.term)?;
        let start_date = date(r.start_date.as_ref(), "start_date")?;
        let currency = Currency::parse(&r.currency).map_err(|e| Error::invalid("currency", e.to_string()))?;
        let tiers = self.book.edition(edition).map_err(|e| Error::invalid("edition", e.to_string()))?;
        if !tiers.prices.contains_key(&currency) {
            return Err(
                Error::invalid("currency", format!("no {} prices in {currency}", edition.as_str())).into()
            );
        }
        if self.book.subsidiary(&r.subsidiary).is_none() {
            let known: Vec<&str> = self.book.subsidiaries.iter().map(|s| s.code.as_str()).collect();
            return Err(Error::invalid("subsidiary", format!("one of {}", known.join(", "))).into());
        }
        let tier = match r.tier {
            0 => tiers.shape.included,
            t if tiers.shape.is_tier(t) => t,
            t => return Err(Error::invalid("tier", format!("{t} is not a {} tier", edition.as_str())).into()),
        };
        let now = self.clock.now();
        let mut sub = Subscription {
            account_id: account,
            edition,
            term,
            start_date,
            currency,
            subsidiary: r.subsidiary,
            tier,
            renewal_tier: None,
            marketing_contacts_enabled: r.marketing_contacts_enabled,
            created_at: now.timestamp_micros(),
            next_update_date: None,
            period_start: None,
        };
        // A term that has not begun has no update period to count in nor a day to charge from.
        let today = sub.today(&self.book, now);
        if sub.start_date > today {
            return Err(Error::invalid(
                "start_date",
                format!("must not be after today ({today} in the subsidiary's time zone)"),
            )
            .into());
        }
        let first = sub.first_update_date(&self.book, now);
        sub.next_update_date = Some(first);
        self.store
            .create_subscription(&sub, (first, sub.processing_at(&self.book, first)), now, &self.book)
            .await?;
        self.on_subscribe.iter().for_each(WorkerWaker::wake);
        Ok(Response::new(pb::CreateSubscriptionResponse { subscription: Some(self.pb_subscription(&sub)?) }))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Answer<pb::GetSubscriptionResponse> {
        let sub = self.subscription(&account(&req)?).await?;
        Ok(Response::new(pb::GetSubscriptionResponse { subscription: Some(self.pb_subscription(&sub)?) }))
    }

    async fn list_price_book(
        &self,
        req: Request<pb::ListPriceBookRequest>,
    ) -> Answer<pb::ListPriceBookResponse> {
        let r = req.get_ref();
        let all = self.book.editions.iter().map(|(e, t)| convert::pb_edition_tiers(*e, t)).collect();
        let (editions, next_page_token) = paging::page_in_order("editions", all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListPriceBookResponse { editions, next_page_token }))
    }

    async fn list_subsidiaries(
        &self,
        req: Request<pb::ListSubsidiariesRequest>,
    ) -> Answer<pb::ListSubsidiariesResponse> {
        let r = req.get_ref();
        let all = self.book.subsidiaries.iter().map(convert::pb_subsidiary).collect();
        let (subsidiaries, next_page_token) =
            paging::page_in_order("subsidiaries", all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListSubsidiariesResponse { subsidiaries, next_page_token }))
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Answer<pb::GetUsageResponse> {
        let account = account(&req)?;
        let usage = self.store.usage(&account).await?.ok_or_else(|| Error::not_found("subscription"))?;
        let today = usage.subscription.today(&self.book, self.clock.now());
        Ok(Response::new(pb::GetUsageResponse { usage: Some(convert::pb_usage(&usage, today)) }))
    }

    async fn get_usage_history(
        &self,
        req: Request<pb::GetUsageHistoryRequest>,
    ) -> Answer<pb::GetUsageHistoryResponse> {
        let account = account(&req)?;
        let r = req.into_inner();
        let (first, last) =
            (date(r.start_date.as_ref(), "start_date")?, date(r.end_date.as_ref(), "end_date")?);
        if last < first {
            return Err(Error::invalid("end_date", "must not be before start_date").into());
        }
        if calendar::days_between(first, last) > 3_660 {
            return Err(Error::invalid("end_date", "at most ten years at a time").into());
        }
        let first_tier =
            self.store.first_tier(&account).await?.ok_or_else(|| Error::not_found("subscription"))?;
        let sub = self.subscription(&account).await?;
        let today = sub.today(&self.book, self.clock.now());
        let last = last.min(today);
        // No points before the subscription began: there was no tier then.
        let first = first.max(sub.start_date);
        if last < first {
            return Ok(Response::new(pb::GetUsageHistoryResponse { points: vec![] }));
        }
        let before = self.store.usage_day_before(&account, first).await?;
        let recorded = self.store.usage_days(&account, first, last).await?;
        let points = history::daily(first, last, before.as_ref(), &recorded, first_tier)
            .into_iter()
            .map(convert::pb_usage_point)
            .collect();
        Ok(Response::new(pb::GetUsageHistoryResponse { points }))
    }

    async fn preview_upgrade(
        &self,
        req: Request<pb::PreviewUpgradeRequest>,
    ) -> Answer<pb::PreviewUpgradeResponse> {
        let account = account(&req)?;
        let additional = req.get_ref().additional_contacts;
        if additional < 0 {
            return Err(Error::invalid("additional_contacts", "must not be negative").into());
        }
        let sub = self.subscription(&account).await?;
        let counts = self.store.counts(&account).await?;
        let count =
            model::billed_count(sub.marketing_contacts_enabled, counts.marketing, counts.non_marketing)
                .saturating_add(additional);
        // The figures the next-day invoice would use for an upgrade today.
        let today = sub.today(&self.book, self.clock.now());
        let Some(plan) = charges::plan_upgrade(&sub, &self.book, count, today)? else {
            return Ok(Response::new(pb::PreviewUpgradeResponse {
                current_tier: sub.tier,
                ..Default::default()
            }));
        };
        let line = convert::pb_line(&plan.line, model::LineKind::ProratedUpgrade, sub.currency.as_str());
        let tomorrow =
            today.checked_add_days(Days::new(1)).ok_or_else(|| Error::Internal("date range".into()))?;
        Ok(Response::new(pb::PreviewUpgradeResponse {
            upgrade_needed: true,
            current_tier: sub.tier,
            new_tier: plan.to_tier,
            effective_date: Some(pb_date(today)),
            invoice_at: Some(timestamp(sub.processing_at(&self.book, tomorrow))),
            line: Some(line),
            new_price_per_term: Some(pb_money(plan.new_price)),
        }))
    }

    async fn list_upgrades(&self, req: Request<pb::ListUpgradesRequest>) -> Answer<pb::ListUpgradesResponse> {
        let account = account(&req)?;
        let r = req.into_inner();
        let limit = paging::limit(r.page_size)?;
        let before = paging::after_at("upgrades", &r.page_token)?;
        let mut rows = self.store.upgrades(&account, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(u) if more => paging::token_at("upgrades", u.upgraded_at, &u.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUpgradesResponse {
            upgrades: rows.into_iter().map(convert::pb_upgrade).collect(),
            next_page_token,
        }))
    }

    async fn list_invoices(&self, req: Request<pb::ListInvoicesRequest>) -> Answer<pb::ListInvoicesResponse> {
        let account = account(&req)?;
        let r = req.into_inner();
        let limit = paging::limit(r.page_size)?;
        let before = paging::after_number("invoices", &r.page_token)?;
        let mut rows = self.store.invoices(&account, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(i) if more => paging::token("invoices", &i.number.to_string()),
            _ => String::new(),
        };
        let invoices = rows.into_iter().map(convert::pb_invoice).collect();
        Ok(Response::new(pb::ListInvoicesResponse { invoices, next_page_token }))
    }

    async fn get_invoice(&self, req: Request<pb::GetInvoiceRequest>) -> Answer<pb::GetInvoiceResponse> {
        let account = account(&req)?;
        let row = self
            .store
            .invoice(&account, &req.get_ref().id)
            .await?
            .ok_or_else(|| Error::not_found("invoice"))?;
        Ok(Response::new(pb::GetInvoiceResponse { invoice: Some(convert::pb_invoice(row)) }))
    }

    async fn request_renewal_tier(
        &self,
        req: Request<pb::RequestRenewalTierRequest>,
    ) -> Answer<pb::RequestRenewalTierResponse> {
        let account = account(&req)?;
        let tier = req.get_ref().tier;
        let mut sub = self.subscription(&account).await?;
        let shape = &self.book.edition(sub.edition).map_err(Error::internal)?.shape;
        if !shape.is_tier(tier) {
            return Err(
                Error::invalid("tier", format!("{tier} is not a {} tier", sub.edition.as_str())).into()
            );
        }
        if tier > sub.tier {
            return Err(Error::invalid(
                "tier",
                "only a lower tier waits for renewal; higher tiers come with the count",
            )
            .into());
        }
        self.store.set_renewal_tier(&account, Some(tier)).await?;
        sub.renewal_tier = Some(tier);
        Ok(Response::new(pb::RequestRenewalTierResponse { subscription: Some(self.pb_subscription(&sub)?) }))
    }

    async fn cancel_renewal_tier(
        &self,
        req: Request<pb::CancelRenewalTierRequest>,
    ) -> Answer<pb::CancelRenewalTierResponse> {
        let account = account(&req)?;
        let mut sub = self.subscription(&account).await?;
        self.store.set_renewal_tier(&account, None).await?;
        sub.renewal_tier = None;
        Ok(Response::new(pb::CancelRenewalTierResponse { subscription: Some(self.pb_subscription(&sub)?) }))
    }

    async fn get_calendar(&self, req: Request<pb::GetCalendarRequest>) -> Answer<pb::GetCalendarResponse> {
        let account = account(&req)?;
        let count = match req.get_ref().count {
            n if n < 0 => return Err(Error::invalid("count", "must not be negative").into()),
            0 => 12,
            n => n.min(120),
        };
        let sub = self.subscription(&account).await?;
        let mut date = sub.today(&self.book, self.clock.now());
        let mut entries = Vec::new();
        for _ in 0..count {
            date = calendar::next_update_date(sub.start_date, sub.term, date);
            let renewal = calendar::is_renewal_date(sub.start_date, sub.term, date);
            entries.push(convert::pb_calendar_entry(date, sub.processing_at(&self.book, date), renewal));
        }
        Ok(Response::new(pb::GetCalendarResponse { entries }))
    }
}
