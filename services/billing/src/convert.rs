//! Where billing's records meet the generated contract types: requests read into domain
//! values, answers and events built from them. Nothing here reads or writes storage.

use crate::calendar::{self, Term};
use crate::error::{Error, Result};
use crate::history;
use crate::model::{self, Counts, Invoice, InvoiceKind, Line, LineKind, Subscription, Upgrade, Usage};
use crate::price_book::Edition;
use crate::price_book::{EditionTiers, Subsidiary};
use crate::store::{Applied, CountEvent};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_domain::Money;
use contactier_proto::billing::v1 as pb;
use contactier_proto::common::v1 as common;
use contactier_proto::marketing_status::v1 as mpb;
use contactier_proto::notification::v1 as npb;
pub use contactier_runtime::convert::pb_date;
use contactier_runtime::convert::{new_id, timestamp_micros};

pub fn date(d: Option<&common::Date>, field: &'static str) -> Result<NaiveDate> {
    contactier_runtime::convert::date(d).map_err(|r| Error::invalid(field, r))
}

pub fn edition(e: i32) -> Result<Edition> {
    match common::Edition::try_from(e) {
        Ok(common::Edition::Starter) => Ok(Edition::Starter),
        Ok(common::Edition::Professional) => Ok(Edition::Professional),
        Ok(common::Edition::Enterprise) => Ok(Edition::Enterprise),
        _ => Err(Error::invalid("edition", "STARTER, PROFESSIONAL or ENTERPRISE")),
    }
}

pub fn term(t: i32) -> Result<Term> {
    match common::Term::try_from(t) {
        Ok(common::Term::Monthly) => Ok(Term::Monthly),
        Ok(common::Term::Annual) => Ok(Term::Annual),
        _ => Err(Error::invalid("term", "MONTHLY or ANNUAL")),
    }
}

pub fn pb_edition(e: Edition) -> common::Edition {
    match e {
        Edition::Starter => common::Edition::Starter,
        Edition::Professional => common::Edition::Professional,
        Edition::Enterprise => common::Edition::Enterprise,
    }
}

fn pb_term(t: Term) -> common::Term {
    match t {
        Term::Monthly => common::Term::Monthly,
        Term::Annual => common::Term::Annual,
    }
}

pub fn money(minor: i64, currency: &str) -> common::Money {
    common::Money { amount_minor: minor, currency: currency.to_owned() }
}

pub fn pb_money(m: Money) -> common::Money {
    money(m.minor, m.currency.as_str())
}

/// An invoice line as the contract shows it, its fields as its kind has them.
pub fn pb_line(l: &Line, kind: LineKind, currency: &str) -> pb::InvoiceLine {
    let (kind, price_difference, price_per_term) = match kind {
        LineKind::ProratedUpgrade => {
            (pb::InvoiceLineKind::ProratedUpgrade, Some(money(l.price_difference_minor, currency)), None)
        }
        LineKind::Term => (pb::InvoiceLineKind::Term, None, Some(money(l.term_price_minor(), currency))),
    };
    pb::InvoiceLine {
        description: l.description.clone(),
        from_tier: l.from_tier,
        to_tier: l.to_tier,
        price_difference,
        remaining_days: l.remaining_days as i32,
        term_days: l.term_days as i32,
        amount: Some(money(l.amount_minor, currency)),
        period_start: Some(pb_date(l.period_start)),
        period_end: Some(pb_date(l.period_end)),
        marketing_count: l.marketing_count,
        kind: kind as i32,
        price_per_term,
    }
}

/// A subscription as answered on `today` (its business day), at `price` per term.
pub fn pb_subscription(s: &Subscription, today: NaiveDate, price: Money) -> pb::Subscription {
    let (term_start, term_end) = calendar::term_containing(s.start_date, s.term, today);
    pb::Subscription {
        account_id: s.account_id.clone(),
        edition: pb_edition(s.edition) as i32,
        term: pb_term(s.term) as i32,
        start_date: Some(pb_date(s.start_date)),
        currency: s.currency.as_str().to_owned(),
        subsidiary: s.subsidiary.clone(),
        tier: s.tier,
        renewal_tier: s.renewal_tier.unwrap_or(0),
        current_term_start: Some(pb_date(term_start)),
        current_term_end: Some(pb_date(term_end)),
        price_per_term: Some(pb_money(price)),
        created_at: timestamp_micros(s.created_at),
        marketing_contacts_enabled: s.marketing_contacts_enabled,
        next_update_date: s.next_update_date.map(pb_date),
    }
}

/// Usage as answered on `today`.
pub fn pb_usage(u: &Usage, today: NaiveDate) -> pb::Usage {
    let (s, c) = (&u.subscription, &u.counts);
    let count = model::billed_count(s.marketing_contacts_enabled, c.marketing, c.non_marketing);
    pb::Usage {
        marketing_count: count,
        tier: s.tier,
        used_basis_points: count.saturating_mul(10_000) / s.tier.max(1),
        total_contacts: c.marketing + c.non_marketing,
        next_update_date: Some(pb_date(calendar::next_update_date(s.start_date, s.term, today))),
        renewal_date: Some(pb_date(calendar::next_renewal(s.start_date, s.term, today))),
        // Known once the period's update date has been processed; 0 in the first period.
        period_count: u.period_count,
        count_version: c.version,
    }
}

pub fn pb_upgrade(u: Upgrade) -> pb::Upgrade {
    pb::Upgrade {
        effective_date: Some(pb_date(u.effective_date)),
        upgraded_at: timestamp_micros(u.upgraded_at),
        id: u.id,
        from_tier: u.from_tier,
        to_tier: u.to_tier,
        marketing_count: u.marketing_count,
        count_version: u.count_version,
        invoice_id: u.invoice_id.unwrap_or_default(),
    }
}

pub fn pb_invoice(i: Invoice) -> pb::Invoice {
    let kind = match i.kind {
        InvoiceKind::Upgrade => pb::InvoiceKind::Upgrade,
        InvoiceKind::Renewal => pb::InvoiceKind::Renewal,
    };
    pb::Invoice {
        lines: i.lines.iter().map(|l| pb_line(l, l.kind_in(i.kind), &i.currency)).collect(),
        total: Some(money(i.total_minor, &i.currency)),
        issued_at: timestamp_micros(i.issued_at),
        term_start: Some(pb_date(i.term_start)),
        term_end: Some(pb_date(i.term_end)),
        kind: kind as i32,
        number: i.number,
        id: i.id,
    }
}

/// The plan marketing-status keeps for the account: its edition and the feature switch.
pub fn account_plan(s: &Subscription) -> mpb::SetAccountPlanRequest {
    mpb::SetAccountPlanRequest {
        account_id: s.account_id.clone(),
        edition: pb_edition(s.edition) as i32,
        marketing_contacts_enabled: s.marketing_contacts_enabled,
    }
}

/// An event for notification, with a new id.
pub fn billing_event(
    account: &str,
    now: DateTime<Utc>,
    payload: npb::billing_event::Payload,
) -> npb::BillingEvent {
    npb::BillingEvent {
        event_id: new_id(),
        account_id: account.to_owned(),
        occurred_at: Some(contactier_runtime::convert::timestamp(now)),
        payload: Some(payload),
    }
}

pub fn upgraded(u: &Upgrade, period_start: NaiveDate) -> npb::billing_event::Payload {
    npb::billing_event::Payload::Upgraded(npb::TierUpgraded {
        upgrade_id: u.id.clone(),
        from_tier: u.from_tier,
        to_tier: u.to_tier,
        marketing_count: u.marketing_count,
        period_start: Some(pb_date(period_start)),
    })
}

pub fn invoice_issued(i: &Invoice) -> npb::billing_event::Payload {
    npb::billing_event::Payload::Invoice(npb::InvoiceIssued {
        invoice_id: i.id.clone(),
        number: i.number,
        total: Some(money(i.total_minor, &i.currency)),
    })
}

pub fn pb_edition_tiers(e: Edition, t: &EditionTiers) -> pb::EditionTiers {
    let prices = |base: bool| {
        t.prices
            .iter()
            .map(|(c, p)| {
                let (m, a) =
                    if base { (p.base_monthly, p.base_annual) } else { (p.step_monthly, p.step_annual) };
                let step = pb::StepPrice {
                    per_term_monthly: Some(money(m, c.as_str())),
                    per_term_annual: Some(money(a, c.as_str())),
                };
                (c.as_str().to_owned(), step)
            })
            .collect()
    };
    pb::EditionTiers {
        edition: pb_edition(e) as i32,
        included: t.shape.included,
        step: t.shape.step,
        max_tier: t.shape.max_tier,
        base_price: prices(true),
        step_price: prices(false),
    }
}

pub fn pb_subsidiary(s: &Subsidiary) -> pb::Subsidiary {
    use chrono::Timelike;
    pb::Subsidiary {
        code: s.code.clone(),
        time_zone: s.time_zone.name().to_owned(),
        processing_offset_seconds: s.processing_time.num_seconds_from_midnight() as i32,
    }
}

pub fn pb_usage_point(d: history::Day) -> pb::UsagePoint {
    pb::UsagePoint {
        date: Some(pb_date(d.date)),
        max_marketing_count: d.max_count,
        marketing_count: d.last_count,
        tier: d.tier,
    }
}

pub fn pb_calendar_entry(date: NaiveDate, processing_at: DateTime<Utc>, renewal: bool) -> pb::CalendarEntry {
    pb::CalendarEntry {
        date: Some(pb_date(date)),
        processing_at: Some(contactier_runtime::convert::timestamp(processing_at)),
        renewal,
    }
}

/// A count event from marketing-status, checked: a bad one refuses its whole batch, naming
/// the field within `events`.
pub fn count_event(e: contactier_proto::billing::v1::CountChanged) -> Result<CountEvent> {
    let bad = |field: &str, why: &str| Error::invalid(format!("events.{field}"), why);
    if e.event_id.is_empty() {
        return Err(bad("event_id", "required"));
    }
    if e.account_id.is_empty() {
        return Err(bad("account_id", "required"));
    }
    if e.version <= 0 {
        return Err(bad("version", "must be positive"));
    }
    for (field, v) in [
        ("marketing_count", e.marketing_count),
        ("pending_non_marketing", e.pending_non_marketing),
        ("non_marketing", e.non_marketing),
    ] {
        if v < 0 {
            return Err(bad(field, "must not be negative"));
        }
    }
    if e.pending_non_marketing > e.marketing_count {
        return Err(bad(
            "pending_non_marketing",
            "pending contacts are marketing contacts: at most marketing_count",
        ));
    }
    Ok(CountEvent {
        event_id: e.event_id,
        account_id: e.account_id,
        marketing_contacts_enabled: e.marketing_contacts_enabled,
        counts: Counts {
            version: e.version,
            marketing: e.marketing_count,
            pending_non_marketing: e.pending_non_marketing,
            non_marketing: e.non_marketing,
        },
    })
}

/// What marketing-status answered when it applied an update date.
/// One date's answer of ApplyUpdateDates: applied, or the status it was refused with.
pub fn applied_result(r: mpb::ApplyUpdateDateResult) -> anyhow::Result<Applied> {
    match (r.applied, r.error) {
        (Some(a), _) => Ok(applied(a)),
        (None, Some(e)) => {
            let code = tonic::Code::from_i32(e.code);
            Err(anyhow::anyhow!("marketing-status could not apply the date: {code:?}: {}", e.message))
        }
        (None, None) => Err(anyhow::anyhow!("marketing-status answered neither an outcome nor an error")),
    }
}

pub fn applied(r: mpb::ApplyUpdateDateResponse) -> Applied {
    let c = r.count.unwrap_or_default();
    Applied {
        contacts: r.applied,
        marketing: c.marketing,
        non_marketing: c.non_marketing,
        version: c.version,
    }
}
