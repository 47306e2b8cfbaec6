//! Billing's records as the service works with them.

use crate::calendar::{self, Term};
use crate::price_book::{Edition, PriceBook, Subsidiary};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_domain::Currency;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub account_id: String,
    pub edition: Edition,
    pub term: Term,
    pub start_date: NaiveDate,
    pub currency: Currency,
    pub subsidiary: String,
    pub tier: i64,
    /// The lower tier asked for the next renewal, if any.
    pub renewal_tier: Option<i64>,
    pub marketing_contacts_enabled: bool,
    pub created_at: i64,
    /// The next update date still to be processed.
    pub next_update_date: Option<NaiveDate>,
    /// The update period billing has opened: the last update date processed, or the period the
    /// subscription began in. None for subscriptions made before it was kept.
    pub period_start: Option<NaiveDate>,
}

impl Subscription {
    /// The subsidiary's zone and processing time; the price book was checked when the
    /// subscription was made, and subsidiaries are never removed from a running price book.
    pub fn subsidiary<'a>(&self, book: &'a PriceBook) -> &'a Subsidiary {
        book.subsidiary(&self.subsidiary).unwrap_or(&book.subsidiaries[0])
    }

    /// The business day at `now` in the subsidiary's zone.
    pub fn today(&self, book: &PriceBook, now: DateTime<Utc>) -> NaiveDate {
        let s = self.subsidiary(book);
        calendar::business_date(now, s.time_zone, s.processing_time)
    }

    /// The first update date still to process for a subscription made at `now`: update dates
    /// before it are past (a subscription recorded late does not replay them).
    pub fn first_update_date(&self, book: &PriceBook, now: DateTime<Utc>) -> NaiveDate {
        calendar::next_update_date(self.start_date, self.term, self.today(book, now).max(self.start_date))
    }

    /// The update period a usage state at `now` belongs to: the one billing opened, which a
    /// count arriving between an update date's instant and its processing still belongs to.
    pub fn current_period(&self, book: &PriceBook, now: DateTime<Utc>) -> NaiveDate {
        self.period_start.unwrap_or_else(|| {
            calendar::period_containing(self.start_date, self.term, self.today(book, now)).0
        })
    }

    /// When `date` is processed.
    pub fn processing_at(&self, book: &PriceBook, date: NaiveDate) -> DateTime<Utc> {
        let s = self.subsidiary(book);
        calendar::processing_instant(date, s.time_zone, s.processing_time)
    }

    /// Its next update date's instant has passed and the date is not recorded yet: a count
    /// now belongs to the period that date opens, which has not begun in billing's records.
    pub fn awaits_update(&self, book: &PriceBook, now: DateTime<Utc>) -> bool {
        self.next_update_date.is_some_and(|d| self.processing_at(book, d) <= now)
    }
}

/// The latest count of an account, as marketing-status reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    pub version: i64,
    pub marketing: i64,
    pub pending_non_marketing: i64,
    pub non_marketing: i64,
}

/// What a usage answer is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub subscription: Subscription,
    pub counts: Counts,
    /// The count the last processed update date fixed; 0 before the first.
    pub period_count: i64,
}

/// A tier upgrade, made the moment a count exceeded the tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub id: String,
    pub from_tier: i64,
    pub to_tier: i64,
    pub marketing_count: i64,
    pub count_version: i64,
    pub upgraded_at: i64,
    /// The business day it happened; its invoice is issued the day after.
    pub effective_date: NaiveDate,
    /// The invoice that charged it, once issued.
    pub invoice_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvoiceKind {
    Upgrade,
    Renewal,
}

impl InvoiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceKind::Upgrade => "upgrade",
            InvoiceKind::Renewal => "renewal",
        }
    }

    pub fn parse(s: &str) -> Option<InvoiceKind> {
        match s {
            "upgrade" => Some(InvoiceKind::Upgrade),
            "renewal" => Some(InvoiceKind::Renewal),
            _ => None,
        }
    }
}

/// An issued invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoice {
    pub id: String,
    /// Gap-free per account, from 1.
    pub number: i64,
    pub kind: InvoiceKind,
    pub total_minor: i64,
    pub currency: String,
    pub term_start: NaiveDate,
    pub term_end: NaiveDate,
    pub lines: Vec<Line>,
    pub issued_at: i64,
}

/// What counts toward the tier: marketing contacts, or every contact for accounts that predate
/// marketing contacts.
pub fn billed_count(marketing_contacts_enabled: bool, marketing: i64, non_marketing: i64) -> i64 {
    if marketing_contacts_enabled { marketing } else { marketing + non_marketing }
}

pub fn term_str(t: Term) -> &'static str {
    match t {
        Term::Monthly => "monthly",
        Term::Annual => "annual",
    }
}

pub fn parse_term(s: &str) -> Option<Term> {
    match s {
        "monthly" => Some(Term::Monthly),
        "annual" => Some(Term::Annual),
        _ => None,
    }
}

/// What an invoice line charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The rest of a term at a higher tier, by days.
    ProratedUpgrade,
    /// A whole term at a tier.
    Term,
}

/// An invoice line with every input it was computed from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    pub description: String,
    pub from_tier: i64,
    pub to_tier: i64,
    /// Prorated upgrades: the price difference per full term.
    pub price_difference_minor: i64,
    pub remaining_days: i64,
    pub term_days: i64,
    pub amount_minor: i64,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub marketing_count: i64,
    /// Absent on lines kept before kinds were: those of renewal invoices are terms, whose
    /// price was kept in `price_difference_minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LineKind>,
    /// Terms: the price of the whole term.
    #[serde(default)]
    pub price_per_term_minor: i64,
}

impl Line {
    /// The rest of the term from `upgrade_day` at `to` instead of `from`, as `p` prorates it.
    pub fn prorated_upgrade(
        from: i64,
        to: i64,
        p: &crate::proration::Prorated,
        upgrade_day: NaiveDate,
        term_end: NaiveDate,
        marketing_count: i64,
    ) -> Line {
        Line {
            description: format!(
                "Tier upgrade {from} to {to} marketing contacts, {} of {} days",
                p.remaining_days, p.term_days
            ),
            from_tier: from,
            to_tier: to,
            price_difference_minor: p.difference.minor,
            remaining_days: p.remaining_days,
            term_days: p.term_days,
            amount_minor: p.amount.minor,
            period_start: upgrade_day,
            period_end: term_end,
            marketing_count,
            kind: Some(LineKind::ProratedUpgrade),
            price_per_term_minor: 0,
        }
    }

    /// A whole term from `start` to `end` at `tier` (after `from_tier`) for `price`.
    pub fn term(
        from_tier: i64,
        tier: i64,
        price_minor: i64,
        (start, end): (NaiveDate, NaiveDate),
        count: i64,
    ) -> Line {
        let days = calendar::days_between(start, end);
        Line {
            description: format!("Renewal, {tier} marketing contacts, {start} to {end}"),
            from_tier,
            to_tier: tier,
            price_difference_minor: 0,
            remaining_days: days,
            term_days: days,
            amount_minor: price_minor,
            period_start: start,
            period_end: end,
            marketing_count: count,
            kind: Some(LineKind::Term),
            price_per_term_minor: price_minor,
        }
    }

    /// The kind of a line of an invoice of `invoice_kind`.
    pub fn kind_in(&self, invoice_kind: InvoiceKind) -> LineKind {
        self.kind.unwrap_or(match invoice_kind {
            InvoiceKind::Renewal => LineKind::Term,
            InvoiceKind::Upgrade => LineKind::ProratedUpgrade,
        })
    }

    /// A term's price; lines kept before kinds were held it as the difference.
    pub fn term_price_minor(&self) -> i64 {
        if self.kind.is_some() { self.price_per_term_minor } else { self.price_difference_minor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn accounts_without_the_feature_are_billed_for_every_contact() {
        assert_eq!(super::billed_count(true, 1_200, 800), 1_200);
        assert_eq!(super::billed_count(false, 1_200, 800), 2_000);
    }

    #[test]
    fn a_date_past_its_instant_and_not_recorded_holds_the_counts_after_it() {
        let book = PriceBook::parse(crate::price_book::DEFAULT).unwrap();
        let na = book.subsidiary("NA").unwrap().code.clone();
        let sub = Subscription {
            account_id: "a".into(),
            edition: Edition::Professional,
            term: Term::Monthly,
            start_date: NaiveDate::from_ymd_opt(2026, 4, 15).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            subsidiary: na,
            tier: 2_000,
            renewal_tier: None,
            marketing_contacts_enabled: true,
            created_at: 0,
            next_update_date: NaiveDate::from_ymd_opt(2026, 5, 15),
            period_start: None,
        };
        // 15 May 00:00 in New York is 04:00 UTC.
        let instant = Utc.with_ymd_and_hms(2026, 5, 15, 4, 0, 0).unwrap();
        assert!(!sub.awaits_update(&book, instant - chrono::Duration::seconds(1)));
        assert!(sub.awaits_update(&book, instant));
        assert!(sub.awaits_update(&book, instant + chrono::Duration::days(3)), "until it is recorded");
        let recorded = Subscription { next_update_date: NaiveDate::from_ymd_opt(2026, 6, 15), ..sub };
        assert!(!recorded.awaits_update(&book, instant + chrono::Duration::days(3)));
    }
}
