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
    pub renewal_tier: i64,
    pub marketing_contacts_enabled: bool,
    pub created_at: i64,
    /// The next update date still to be processed.
    pub next_update_date: Option<NaiveDate>,
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

    /// When `date` is processed.
    pub fn processing_at(&self, book: &PriceBook, date: NaiveDate) -> DateTime<Utc> {
        let s = self.subsidiary(book);
        calendar::processing_instant(date, s.time_zone, s.processing_time)
    }
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

/// An invoice line with every input it was computed from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    pub description: String,
    pub from_tier: i64,
    pub to_tier: i64,
    pub price_difference_minor: i64,
    pub remaining_days: i64,
    pub term_days: i64,
    pub amount_minor: i64,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub marketing_count: i64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn accounts_without_the_feature_are_billed_for_every_contact() {
        assert_eq!(super::billed_count(true, 1_200, 800), 1_200);
        assert_eq!(super::billed_count(false, 1_200, 800), 2_000);
    }
}
