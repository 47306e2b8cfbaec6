//! The update-date calendar, as pure functions of the subscription's start date and term.
//!
//! - Renewals fall on the start date's day of month, clamped to the month's last day
//!   (31 January → 28/29 February → 31 March): always counted from the start date, never from
//!   the previous clamped date.
//! - Monthly term: every renewal is an update date.
//! - Annual term: the 1st of every month and every renewal are update dates.
//! - An update date is processed at the processing time of day (00:00 by default) in the
//!   subsidiary's time zone.

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Billing term of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    Monthly,
    Annual,
}

impl Term {
    pub fn months(self) -> u32 {
        match self {
            Term::Monthly => 1,
            Term::Annual => 12,
        }
    }
}

/// The date `months` after `start`, on start's day of month clamped to the month's end.
pub fn anniversary(start: NaiveDate, months: u32) -> NaiveDate {
    // checked_add_months clamps to the last day of the target month.
    start.checked_add_months(Months::new(months)).expect("date within chrono's range")
}

/// The term containing `date`: `[start, end)`, where `end` is the next renewal date.
/// Dates before the subscription starts belong to the first term.
pub fn term_containing(start: NaiveDate, term: Term, date: NaiveDate) -> (NaiveDate, NaiveDate) {
    let step = term.months();
    let months_since = if date <= start {
        0
    } else {
        (date.year() - start.year()) * 12 + date.month() as i32 - start.month() as i32
    };
    let mut k = (months_since.max(0) as u32) / step;
    // The estimate is off by at most one term either way because of day-of-month clamping.
    k = k.saturating_sub(1);
    loop {
        let (a, b) = (anniversary(start, k * step), anniversary(start, (k + 1) * step));
        if date < b || date < start {
            return (a, b);
        }
        k += 1;
    }
}

/// The first renewal date strictly after `date`.
pub fn next_renewal(start: NaiveDate, term: Term, date: NaiveDate) -> NaiveDate {
    term_containing(start, term, date).1
}

/// Whether `date` starts a new term (the start date itself opens the first one, it renews nothing).
pub fn is_renewal_date(start: NaiveDate, term: Term, date: NaiveDate) -> bool {
    date > start && term_containing(start, term, date).0 == date
}

/// Whether `date` is an update date of the subscription (the start date itself is not: it
/// opens the first period).
pub fn is_update_date(start: NaiveDate, term: Term, date: NaiveDate) -> bool {
    if date <= start {
        return false;
    }
    is_renewal_date(start, term, date) || (term == Term::Annual && date.day() == 1)
}

/// The first update date strictly after `date`.
pub fn next_update_date(start: NaiveDate, term: Term, date: NaiveDate) -> NaiveDate {
    let renewal = next_renewal(start, term, date.max(start));
    match term {
        Term::Monthly => renewal,
        Term::Annual => {
            let first_of_next_month = first_of_month(date.max(start)) + Months::new(1);
            renewal.min(first_of_next_month)
        }
    }
}

/// The update period containing `date`: from the last update date on or before it (or the
/// start date) to the next update date, exclusive.
pub fn period_containing(start: NaiveDate, term: Term, date: NaiveDate) -> (NaiveDate, NaiveDate) {
    let next = next_update_date(start, term, date);
    let mut from = date.max(start);
    while from > start && !is_update_date(start, term, from) {
        from = from.pred_opt().expect("date within range");
    }
    (from, next)
}

/// Update dates in `(after, until]`, in order.
pub fn update_dates_between(
    start: NaiveDate,
    term: Term,
    after: NaiveDate,
    until: NaiveDate,
) -> Vec<NaiveDate> {
    let mut out = Vec::new();
    let mut d = after;
    loop {
        d = next_update_date(start, term, d);
        if d > until {
            return out;
        }
        out.push(d);
    }
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("day 1 exists")
}

/// The instant `date` is processed: `time_of_day` local time in `tz`. When that local time
/// does not exist (a DST gap), the first instant after the gap; when it happens twice (DST
/// ends), the first.
pub fn processing_instant(date: NaiveDate, tz: Tz, time_of_day: NaiveTime) -> DateTime<Utc> {
    let local = date.and_time(time_of_day);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // Gaps are at most a few hours; step forward a minute at a time until local time exists.
            let mut probe = local;
            loop {
                probe += chrono::Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
        }
    }
}

/// The business date at `instant`: the latest date whose processing instant is at or before it.
pub fn business_date(instant: DateTime<Utc>, tz: Tz, time_of_day: NaiveTime) -> NaiveDate {
    let local = instant.with_timezone(&tz).date_naive();
    if processing_instant(local, tz, time_of_day) <= instant {
        local
    } else {
        local.checked_sub_days(Days::new(1)).expect("date within range")
    }
}

/// Days in `[from, to)`.
pub fn days_between(from: NaiveDate, to: NaiveDate) -> i64 {
    (to - from).num_days()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn midnight() -> NaiveTime {
        NaiveTime::MIN
    }

    #[test]
    fn renewals_keep_the_start_day_clamped_to_month_end() {
        let table = [
            ("2026-04-15", 1, "2026-05-15"),
            ("2026-04-15", 2, "2026-06-15"),
            ("2026-01-31", 1, "2026-02-28"),
            ("2026-01-31", 2, "2026-03-31"),
            ("2028-01-31", 1, "2028-02-29"),
            ("2026-03-31", 1, "2026-04-30"),
            ("2026-03-31", 2, "2026-05-31"),
            ("2028-02-29", 12, "2029-02-28"),
            ("2028-02-29", 48, "2032-02-29"),
            ("2026-12-31", 2, "2027-02-28"),
        ];
        for (start, months, want) in table {
            assert_eq!(anniversary(d(start), months), d(want), "{start} + {months} months");
        }
    }

    #[test]
    fn monthly_update_dates_are_the_renewal_dates() {
        let s = d("2026-04-15");
        let got = update_dates_between(s, Term::Monthly, s, d("2026-08-01"));
        assert_eq!(got, [d("2026-05-15"), d("2026-06-15"), d("2026-07-15")]);
        let s = d("2026-01-31");
        let got = update_dates_between(s, Term::Monthly, s, d("2026-05-31"));
        assert_eq!(got, [d("2026-02-28"), d("2026-03-31"), d("2026-04-30"), d("2026-05-31")]);
        let s = d("2027-12-30");
        let got = update_dates_between(s, Term::Monthly, s, d("2028-03-30"));
        assert_eq!(got, [d("2028-01-30"), d("2028-02-29"), d("2028-03-30")]);
    }

    #[test]
    fn annual_update_dates_are_every_first_and_the_renewal() {
        let s = d("2026-04-15");
        let got = update_dates_between(s, Term::Annual, d("2027-02-15"), d("2027-06-10"));
        assert_eq!(
            got,
            [d("2027-03-01"), d("2027-04-01"), d("2027-04-15"), d("2027-05-01"), d("2027-06-01")]
        );
        let first = update_dates_between(s, Term::Annual, s, d("2026-06-30"));
        assert_eq!(first, [d("2026-05-01"), d("2026-06-01")]);
        // Bought on the 1st: the renewal coincides with a 1st and is listed once.
        let s = d("2026-05-01");
        let got = update_dates_between(s, Term::Annual, d("2027-03-15"), d("2027-05-15"));
        assert_eq!(got, [d("2027-04-01"), d("2027-05-01")]);
        assert!(is_update_date(s, Term::Annual, d("2027-05-01")));
        assert!(!is_update_date(s, Term::Annual, s), "the start opens the first period");
    }

    #[test]
    fn renewals_are_the_update_dates_that_start_a_term() {
        let s = d("2026-04-15");
        let renewals: Vec<_> = update_dates_between(s, Term::Annual, s, d("2027-05-31"))
            .into_iter()
            .filter(|u| is_renewal_date(s, Term::Annual, *u))
            .collect();
        assert_eq!(renewals, [d("2027-04-15")]);
        assert!(!is_renewal_date(s, Term::Annual, s), "the start renews nothing");
        assert!(!is_renewal_date(s, Term::Annual, d("2026-04-14")));
        let s = d("2026-01-31");
        let monthly = update_dates_between(s, Term::Monthly, s, d("2026-04-30"));
        assert!(monthly.iter().all(|u| is_renewal_date(s, Term::Monthly, *u)), "{monthly:?}");
        assert!(!is_renewal_date(s, Term::Monthly, d("2026-03-30")));
    }

    #[test]
    fn leap_day_annual_renewal_falls_on_28_february() {
        let s = d("2028-02-29");
        assert_eq!(next_renewal(s, Term::Annual, s), d("2029-02-28"));
        assert_eq!(next_renewal(s, Term::Annual, d("2029-02-28")), d("2030-02-28"));
        assert_eq!(next_renewal(s, Term::Annual, d("2031-03-01")), d("2032-02-29"));
        assert!(is_update_date(s, Term::Annual, d("2029-02-28")));
        assert!(!is_update_date(s, Term::Monthly, d("2029-02-27")));
    }

    #[test]
    fn terms_and_periods_contain_their_dates() {
        let s = d("2026-01-31");
        assert_eq!(term_containing(s, Term::Monthly, d("2026-03-15")), (d("2026-02-28"), d("2026-03-31")));
        assert_eq!(term_containing(s, Term::Monthly, d("2026-03-31")), (d("2026-03-31"), d("2026-04-30")));
        assert_eq!(term_containing(s, Term::Monthly, d("2026-01-31")), (d("2026-01-31"), d("2026-02-28")));
        assert_eq!(term_containing(s, Term::Annual, d("2026-12-31")), (d("2026-01-31"), d("2027-01-31")));
        assert_eq!(term_containing(s, Term::Annual, d("2027-01-31")), (d("2027-01-31"), d("2028-01-31")));
        // The seeds' worked example: update date 1 May.
        let s = d("2026-04-01");
        assert_eq!(period_containing(s, Term::Monthly, d("2026-04-30")), (d("2026-04-01"), d("2026-05-01")));
        assert_eq!(period_containing(s, Term::Monthly, d("2026-05-15")), (d("2026-05-01"), d("2026-06-01")));
        assert_eq!(period_containing(s, Term::Annual, d("2026-07-09")), (d("2026-07-01"), d("2026-08-01")));
    }

    #[test]
    fn every_date_lies_in_exactly_one_period_and_one_term() {
        for (start, term) in
            [("2026-01-31", Term::Monthly), ("2028-02-29", Term::Annual), ("2026-04-15", Term::Annual)]
        {
            let s = d(start);
            let mut day = s;
            for _ in 0..800 {
                let (a, b) = period_containing(s, term, day);
                assert!(a <= day && day < b, "{start} {term:?}: {day} not in [{a}, {b})");
                let (ta, tb) = term_containing(s, term, day);
                assert!(ta <= day && day < tb, "{start} {term:?}: {day} not in term [{ta}, {tb})");
                assert!(a >= ta && b <= tb, "periods nest in terms");
                day = day.succ_opt().unwrap();
            }
        }
    }

    #[test]
    fn processing_is_at_local_midnight_across_dst() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let table = [
            ("2026-01-01", "2026-01-01T05:00:00Z"), // EST
            ("2026-07-01", "2026-07-01T04:00:00Z"), // EDT
            ("2026-03-08", "2026-03-08T05:00:00Z"), // DST starts at 02:00 that day; midnight is EST
            ("2026-03-09", "2026-03-09T04:00:00Z"),
            ("2026-11-01", "2026-11-01T04:00:00Z"), // DST ends at 02:00; midnight still EDT
            ("2026-11-02", "2026-11-02T05:00:00Z"),
        ];
        for (date, want) in table {
            assert_eq!(
                processing_instant(d(date), ny, midnight()).to_rfc3339(),
                DateTime::parse_from_rfc3339(want).unwrap().to_rfc3339(),
                "{date}"
            );
        }
    }

    #[test]
    fn processing_in_a_dst_gap_or_overlap_is_well_defined() {
        // Santiago skips 00:00-01:00 when DST starts (2026-09-06) and repeats 23:00-24:00 when it ends.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let t = processing_instant(d("2026-09-06"), santiago, midnight());
        assert_eq!(t.with_timezone(&santiago).to_string(), "2026-09-06 01:00:00 -03");
        // A processing time inside New York's repeated hour takes the first occurrence (EDT).
        let ny: Tz = "America/New_York".parse().unwrap();
        let t = processing_instant(d("2026-11-01"), ny, NaiveTime::from_hms_opt(1, 30, 0).unwrap());
        assert_eq!(t.to_rfc3339(), "2026-11-01T05:30:00+00:00");
    }

    #[test]
    fn business_date_turns_at_the_processing_instant() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let before = DateTime::parse_from_rfc3339("2026-05-01T03:59:59Z").unwrap().with_timezone(&Utc);
        let at = DateTime::parse_from_rfc3339("2026-05-01T04:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(business_date(before, ny, midnight()), d("2026-04-30"));
        assert_eq!(business_date(at, ny, midnight()), d("2026-05-01"));
        let six = NaiveTime::from_hms_opt(6, 0, 0).unwrap();
        assert_eq!(business_date(at, ny, six), d("2026-04-30"), "processing at 06:00 local");
    }
}
