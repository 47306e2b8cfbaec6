//! What billing charges, decided in one place: the line of an upgrade (for the preview and for
//! the next day's invoice alike) and of a renewal. Plain functions over a subscription and the
//! price book; the store calls them inside its transactions with what it has just read.

use crate::calendar;
use crate::error::{Error, Result};
use crate::model::{Line, Subscription};
use crate::price_book::PriceBook;
use crate::proration;
use chrono::NaiveDate;
use contactier_domain::Money;

/// An upgrade a count would bring today.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedUpgrade {
    pub to_tier: i64,
    /// What the next day's invoice would charge for it.
    pub line: Line,
    pub new_price: Money,
}

/// The price per term of `tier` for the subscription.
pub fn price(sub: &Subscription, book: &PriceBook, tier: i64) -> Result<Money> {
    book.price(sub.edition, sub.currency, sub.term, tier).map_err(Error::internal)
}

/// The line charging the rest of the term containing `day` at `to` instead of `from`, prorated
/// by days; `count` is the marketing count that caused it.
pub fn upgrade_line(
    sub: &Subscription,
    book: &PriceBook,
    (from, to): (i64, i64),
    day: NaiveDate,
    count: i64,
) -> Result<Line> {
    let (term_start, term_end) = calendar::term_containing(sub.start_date, sub.term, day);
    let p = proration::prorate(price(sub, book, from)?, price(sub, book, to)?, day, term_start, term_end)
        .map_err(Error::internal)?;
    Ok(Line::prorated_upgrade(from, to, &p, day, term_end, count))
}

/// The tier `count` contacts move the subscription to at once, if any: the smallest that
/// holds them, or the largest when none does (billed there until sales agree a larger one).
/// Never down: a lower count waits for a renewal.
pub fn upgrade_tier(sub: &Subscription, book: &PriceBook, count: i64) -> Result<Option<i64>> {
    let shape = &book.edition(sub.edition).map_err(Error::internal)?.shape;
    Ok(shape.upgrade_to(sub.tier, count))
}

/// The upgrade `count` contacts would bring on `today`, as [`upgrade_tier`] decides it: None
/// when the tier holds them; FAILED_PRECONDITION when no tier does, for a preview asks what
/// the edition cannot give (sales agree a larger one).
pub fn plan_upgrade(
    sub: &Subscription,
    book: &PriceBook,
    count: i64,
    today: NaiveDate,
) -> Result<Option<PlannedUpgrade>> {
    let shape = &book.edition(sub.edition).map_err(Error::internal)?.shape;
    if let Err(e) = shape.smallest_holding(count) {
        return Err(Error::FailedPrecondition(format!("{e}; contact sales for a larger tier")));
    }
    let Some(to_tier) = upgrade_tier(sub, book, count)? else {
        return Ok(None);
    };
    Ok(Some(PlannedUpgrade {
        to_tier,
        line: upgrade_line(sub, book, (sub.tier, to_tier), today, count)?,
        new_price: price(sub, book, to_tier)?,
    }))
}

/// The tier and line of the term a renewal on `date` starts: a requested lower tier if it
/// holds `count`, else the tier held.
pub fn renewal(sub: &Subscription, book: &PriceBook, date: NaiveDate, count: i64) -> Result<(i64, Line)> {
    let shape = &book.edition(sub.edition).map_err(Error::internal)?.shape;
    let tier = shape.renewal_tier(sub.tier, sub.renewal_tier, count);
    let term = calendar::term_containing(sub.start_date, sub.term, date);
    Ok((tier, Line::term(sub.tier, tier, price(sub, book, tier)?.minor, term, count)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Term;
    use crate::model::LineKind;
    use crate::price_book::Edition;
    use contactier_domain::Currency;

    fn book() -> PriceBook {
        PriceBook::parse(crate::price_book::DEFAULT).unwrap()
    }

    fn sub(tier: i64, renewal_tier: Option<i64>) -> Subscription {
        Subscription {
            account_id: "a".into(),
            edition: Edition::Professional,
            term: Term::Annual,
            start_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            subsidiary: book().subsidiaries[0].code.clone(),
            tier,
            renewal_tier,
            marketing_contacts_enabled: true,
            created_at: 0,
            next_update_date: None,
            period_start: None,
        }
    }

    fn day(m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, m, d).unwrap()
    }

    #[test]
    fn a_preview_and_the_invoice_charge_the_same_line() {
        let book = book();
        let s = sub(2_000, None);
        let plan = plan_upgrade(&s, &book, 2_500, day(7, 2)).unwrap().unwrap();
        assert_eq!(plan.to_tier, 7_000);
        assert_eq!(plan.line, upgrade_line(&s, &book, (2_000, 7_000), day(7, 2), 2_500).unwrap());
        assert_eq!(plan.line.kind, Some(LineKind::ProratedUpgrade));
        // 2 July to the end of 2026: 183 of 365 days of the yearly difference.
        assert_eq!((plan.line.remaining_days, plan.line.term_days), (183, 365));
        assert_eq!(plan.new_price, price(&s, &book, 7_000).unwrap());
        assert!(plan.line.amount_minor > 0 && plan.line.amount_minor < plan.line.price_difference_minor);
    }

    #[test]
    fn a_count_past_the_largest_tier_upgrades_to_it_and_a_preview_says_to_ask_sales() {
        let book = book();
        let max = book.edition(Edition::Professional).unwrap().shape.max_tier;
        assert_eq!(upgrade_tier(&sub(2_000, None), &book, max + 1).unwrap(), Some(max));
        assert_eq!(upgrade_tier(&sub(max, None), &book, max + 1).unwrap(), None);
        assert_eq!(upgrade_tier(&sub(7_000, None), &book, 100).unwrap(), None, "never down");
    }

    #[test]
    fn no_upgrade_while_the_tier_holds_the_count_and_none_past_the_largest() {
        let book = book();
        assert_eq!(plan_upgrade(&sub(2_000, None), &book, 2_000, day(3, 1)).unwrap(), None);
        let max = book.edition(Edition::Professional).unwrap().shape.max_tier;
        let e = plan_upgrade(&sub(2_000, None), &book, max + 1, day(3, 1)).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(m) if m.contains("contact sales")));
    }

    #[test]
    fn a_renewal_charges_a_whole_term_at_the_requested_tier_when_it_holds() {
        let book = book();
        let (tier, line) = renewal(&sub(7_000, Some(2_000)), &book, day(1, 1), 1_500).unwrap();
        assert_eq!(tier, 2_000);
        assert_eq!((line.from_tier, line.to_tier, line.kind), (7_000, 2_000, Some(LineKind::Term)));
        assert_eq!(line.amount_minor, price(&sub(7_000, None), &book, 2_000).unwrap().minor);
        let (tier, _) = renewal(&sub(7_000, Some(2_000)), &book, day(1, 1), 2_001).unwrap();
        assert_eq!(tier, 7_000, "the requested tier does not hold the count; nothing smaller does");
    }
}
