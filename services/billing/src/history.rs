//! Daily usage for charts: one point per day of a range. Days without a change repeat the
//! count and tier the day before ended with; days before any usage show no contacts at the
//! subscription's first tier.

use chrono::{Days, NaiveDate};

/// One day's usage as recorded: the highest count seen, the count at its end, the tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub max_count: i64,
    pub last_count: i64,
    pub tier: i64,
}

/// Every day from `first` to `last` (both included): the day's record, or the last state known
/// before it. `before` is the last record before `first`; `recorded` the records in the range,
/// in date order; `first_tier` the tier before any record.
pub fn daily(
    first: NaiveDate,
    last: NaiveDate,
    before: Option<&Day>,
    recorded: &[Day],
    first_tier: i64,
) -> Vec<Day> {
    let mut out = Vec::new();
    let (mut count, mut tier) = before.map_or((0, first_tier), |d| (d.last_count, d.tier));
    let mut records = recorded.iter().peekable();
    let mut day = first;
    while day <= last {
        match records.peek() {
            Some(r) if r.date == day => {
                out.push((*r).clone());
                count = r.last_count;
                tier = r.tier;
                records.next();
            }
            _ => out.push(Day { date: day, max_count: count, last_count: count, tier }),
        }
        let Some(next) = day.checked_add_days(Days::new(1)) else { break };
        day = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 5, day).unwrap()
    }

    fn rec(day: u32, max: i64, last: i64, tier: i64) -> Day {
        Day { date: d(day), max_count: max, last_count: last, tier }
    }

    #[test]
    fn every_day_has_a_point_and_quiet_days_repeat_the_day_before() {
        let recorded = [rec(3, 900, 850, 1_000), rec(6, 1_200, 1_200, 2_000)];
        let got = daily(d(1), d(7), None, &recorded, 1_000);
        let counts: Vec<(u32, i64, i64, i64)> =
            got.iter().map(|p| (chrono::Datelike::day(&p.date), p.max_count, p.last_count, p.tier)).collect();
        assert_eq!(
            counts,
            [
                (1, 0, 0, 1_000),
                (2, 0, 0, 1_000),
                (3, 900, 850, 1_000),
                (4, 850, 850, 1_000),
                (5, 850, 850, 1_000),
                (6, 1_200, 1_200, 2_000),
                (7, 1_200, 1_200, 2_000)
            ]
        );
    }

    #[test]
    fn a_range_that_starts_after_a_record_carries_it_in() {
        let got = daily(d(10), d(11), Some(&rec(2, 500, 400, 2_000)), &[], 1_000);
        assert_eq!(got, [rec(10, 400, 400, 2_000), rec(11, 400, 400, 2_000)]);
        assert_eq!(daily(d(5), d(5), None, &[], 7_000), [rec(5, 0, 0, 7_000)]);
    }
}
