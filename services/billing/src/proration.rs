//! The prorated charge of an upgrade: the price difference per term between the new and the
//! old tier, for the days left in the term counting the upgrade day, rounded half-up once.

use crate::calendar::days_between;
use chrono::NaiveDate;
use contactier_domain::{Money, MoneyError};

/// One invoice line and the inputs it was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prorated {
    /// Price difference per full term.
    pub difference: Money,
    /// Days from the upgrade day (included) to the end of the term.
    pub remaining_days: i64,
    pub term_days: i64,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProrationError {
    #[error("the upgrade day {day} is outside the term [{term_start}, {term_end})")]
    OutsideTerm { day: NaiveDate, term_start: NaiveDate, term_end: NaiveDate },
    #[error("a tier upgrade cannot lower the price")]
    NegativeDifference,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// `difference × remaining_days / term_days`, half-up, where `remaining_days` counts
/// `upgrade_day` through the day before `term_end`.
pub fn prorate(
    old_price: Money,
    new_price: Money,
    upgrade_day: NaiveDate,
    term_start: NaiveDate,
    term_end: NaiveDate,
) -> Result<Prorated, ProrationError> {
    if upgrade_day < term_start || upgrade_day >= term_end {
        return Err(ProrationError::OutsideTerm { day: upgrade_day, term_start, term_end });
    }
    let difference = new_price.checked_sub(old_price)?;
    if difference.minor < 0 {
        return Err(ProrationError::NegativeDifference);
    }
    let remaining_days = days_between(upgrade_day, term_end);
    let term_days = days_between(term_start, term_end);
    let amount = difference.mul_ratio_half_up(remaining_days, term_days)?;
    Ok(Prorated { difference, remaining_days, term_days, amount })
}

#[cfg(test)]
mod tests {
    use super::*;
    use contactier_domain::Currency;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap())
    }

    #[test]
    fn prorates_by_days_including_the_upgrade_day() {
        // (old, new, upgrade day, term start, term end, remaining, term days, amount)
        let table = [
            // Monthly, 30-day term (15 April - 15 May), upgrade on the 30 April: 15 of 30 days.
            (80_000, 130_000, "2026-04-30", "2026-04-15", "2026-05-15", 15, 30, 25_000),
            // Upgrade on the first day of the term pays the whole difference.
            (80_000, 130_000, "2026-04-15", "2026-04-15", "2026-05-15", 30, 30, 50_000),
            // Last day of the term pays one day.
            (80_000, 130_000, "2026-05-14", "2026-04-15", "2026-05-15", 1, 30, 1_667),
            // February of a leap year: 29 days; 10 of 29 of 1000.00 = 344.827.. -> 344.83
            (0, 100_000, "2028-02-20", "2028-02-01", "2028-03-01", 10, 29, 34_483),
            // Annual term over a leap day: 366 days; 170 of 366 of 9999.99 = 4644.804.. -> 4644.80
            (0, 999_999, "2027-09-13", "2027-03-01", "2028-03-01", 170, 366, 464_480),
            // Half a cent rounds up: 1 of 2 days of 0.01.
            (0, 1, "2026-01-02", "2026-01-01", "2026-01-03", 1, 2, 1),
            // Month-end clamped term: 31 January - 28 February is 28 days.
            (0, 28_000, "2026-02-01", "2026-01-31", "2026-02-28", 27, 28, 27_000),
        ];
        for (old, new, day, ts, te, remaining, term_days, amount) in table {
            let p = prorate(eur(old), eur(new), d(day), d(ts), d(te)).unwrap();
            assert_eq!(
                (p.remaining_days, p.term_days, p.amount.minor),
                (remaining, term_days, amount),
                "{day} in [{ts}, {te})"
            );
            assert_eq!(p.difference.minor, new - old);
        }
    }

    #[test]
    fn refuses_days_outside_the_term_and_lower_prices() {
        let e = prorate(eur(0), eur(1), d("2026-05-15"), d("2026-04-15"), d("2026-05-15")).unwrap_err();
        assert!(matches!(e, ProrationError::OutsideTerm { .. }));
        let e = prorate(eur(0), eur(1), d("2026-04-14"), d("2026-04-15"), d("2026-05-15")).unwrap_err();
        assert!(matches!(e, ProrationError::OutsideTerm { .. }));
        let e = prorate(eur(2), eur(1), d("2026-04-20"), d("2026-04-15"), d("2026-05-15")).unwrap_err();
        assert_eq!(e, ProrationError::NegativeDifference);
        let usd = Money::new(5, Currency::parse("USD").unwrap());
        assert!(matches!(
            prorate(eur(0), usd, d("2026-04-20"), d("2026-04-15"), d("2026-05-15")),
            Err(ProrationError::Money(MoneyError::CurrencyMismatch(..)))
        ));
    }

    #[test]
    fn upgrades_of_one_term_never_charge_more_than_the_full_difference() {
        // 1000 -> 2000 -> 3000 -> ... on successive days: each line rounds once, yet the sum stays
        // within a cent per line of the exact prorated total and never above the full difference.
        let (ts, te) = (d("2027-03-01"), d("2028-03-01"));
        let step = eur(33_333);
        let mut total = 0;
        let mut day = d("2027-03-01");
        let mut price = eur(0);
        for _ in 0..366 {
            let next = price.checked_add(step).unwrap();
            total += prorate(price, next, day, ts, te).unwrap().amount.minor;
            price = next;
            day = day.succ_opt().unwrap();
            if day >= te {
                break;
            }
        }
        assert!(total <= price.minor, "{total} > {}", price.minor);
    }
}
