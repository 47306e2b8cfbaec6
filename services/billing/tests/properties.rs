//! Invariants of the calendar, tiers and proration over generated inputs.

use chrono::{Datelike, Days, NaiveDate, NaiveTime};
use contactier_billing::calendar::{self, Term};
use contactier_billing::proration::prorate;
use contactier_billing::tiers::TierShape;
use contactier_domain::{Currency, Money};
use proptest::prelude::*;

fn date() -> impl Strategy<Value = NaiveDate> {
    (0u64..(200 * 366)).prop_map(|d| NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + Days::new(d))
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![Just(Term::Monthly), Just(Term::Annual)]
}

const ZONES: [&str; 5] =
    ["America/New_York", "Europe/Dublin", "Asia/Singapore", "Australia/Lord_Howe", "America/Santiago"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn update_dates_and_terms_are_consistent(start in date(), ahead in 0u64..5_000, term in term()) {
        let day = start + Days::new(ahead);
        let next = calendar::next_update_date(start, term, day);
        prop_assert!(next > day);
        prop_assert!(calendar::is_update_date(start, term, next));
        // Nothing between the day and the next update date is one.
        let mut d = day + Days::new(1);
        while d < next {
            prop_assert!(!calendar::is_update_date(start, term, d), "{d} before {next}");
            d = d + Days::new(1);
        }
        let (a, b) = calendar::term_containing(start, term, day);
        prop_assert!(a <= day && day < b);
        prop_assert_eq!(calendar::next_renewal(start, term, day), b);
        prop_assert!(calendar::is_update_date(start, term, b));
        // A term is a month or a year long, give or take month ends.
        let days = calendar::days_between(a, b);
        match term {
            Term::Monthly => prop_assert!((28..=31).contains(&days)),
            Term::Annual => prop_assert!((365..=366).contains(&days)),
        }
        // Renewals keep the start's day, clamped to the month's end.
        prop_assert!(b.day() == start.day() || b.day() < start.day() && (b + Days::new(1)).day() == 1);
    }

    #[test]
    fn each_date_is_processed_once_at_its_instant(day in date(), zone in 0usize..ZONES.len(), minutes in 0u32..(24 * 60)) {
        let tz: chrono_tz::Tz = ZONES[zone].parse().unwrap();
        let at = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0).unwrap();
        let instant = calendar::processing_instant(day, tz, at);
        prop_assert_eq!(calendar::business_date(instant, tz, at), day);
        prop_assert_eq!(calendar::business_date(instant - chrono::Duration::seconds(1), tz, at), day - Days::new(1));
        prop_assert!(calendar::processing_instant(day + Days::new(1), tz, at) > instant);
    }

    #[test]
    fn the_smallest_holding_tier_holds_and_the_one_below_does_not(count in 0i64..3_000_000) {
        let shape = TierShape::new(2_000, 5_000, 2_002_000).unwrap();
        match shape.smallest_holding(count) {
            Ok(t) => {
                prop_assert!(shape.is_tier(t) && t >= count);
                prop_assert!(t == shape.included || t - shape.step < count);
            }
            Err(_) => prop_assert!(count > shape.max_tier),
        }
    }

    /// However a term's upgrades fall, their prorated charges never exceed the full price
    /// difference between the first tier and the last.
    #[test]
    fn a_terms_upgrade_charges_never_exceed_the_full_difference(
        start in date(),
        term in term(),
        steps in proptest::collection::vec((1i64..40, 0i64..400), 1..8),
    ) {
        let eur = Currency::parse("EUR").unwrap();
        let (ts, te) = calendar::term_containing(start, term, start);
        let days = calendar::days_between(ts, te);
        let (base, per_step) = (Money::new(80_000, eur), Money::new(22_500, eur));
        let shape = TierShape::new(2_000, 5_000, 2_002_000).unwrap();
        let price = |tier: i64| shape.price(tier, base, per_step).unwrap();
        let (mut tier, mut day, mut total) = (2_000i64, 0i64, 0i64);
        for (up, gap) in steps {
            day = (day + gap).min(days - 1);
            let to = tier + up * 5_000;
            let p = prorate(price(tier), price(to), ts + Days::new(day as u64), ts, te).unwrap();
            prop_assert!(p.amount.minor >= 0 && p.amount.minor <= p.difference.minor);
            total += p.amount.minor;
            tier = to;
        }
        prop_assert!(total <= price(tier).minor - price(2_000).minor, "{total}");
    }
}
