//! Lifecycle reports from the history of the lifecycle stage: how many contacts were in each
//! stage at the end of each day, and how many moved on from each stage of the funnel. Plain
//! functions over the stage changes, in time order.

use chrono::{Days, NaiveDate, TimeZone};
use std::collections::{BTreeMap, HashMap};

/// The funnel whose stage-to-stage conversions are reported.
pub const FUNNEL: [&str; 5] =
    ["lead", "marketing_qualified_lead", "sales_qualified_lead", "opportunity", "customer"];

/// The most days one report covers.
pub const MAX_DAYS: u64 = 366;

/// How far along the lifecycle a stage is, in the order the property lists its stages; None for
/// stages off the path (other, none).
pub fn rank(stage: &str) -> Option<usize> {
    crate::properties::LIFECYCLE_STAGES.iter().position(|s| *s == stage).filter(|_| stage != "other")
}

/// One change of a contact's stage ('' when cleared), at epoch microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub contact: String,
    pub stage: String,
    pub at: i64,
}

/// The end of each day from `first` to `last` in `tz`, in epoch microseconds: the instant the
/// next day begins there.
pub fn day_ends<Tz: TimeZone>(first: NaiveDate, last: NaiveDate, tz: &Tz) -> Vec<(NaiveDate, i64)> {
    let mut out = Vec::new();
    let mut day = first;
    while day <= last {
        let Some(next) = day.checked_add_days(Days::new(1)) else { break };
        let midnight = next.and_hms_opt(0, 0, 0).expect("midnight exists");
        // A day that begins in a gap (a zone moving its clock at midnight) begins when the
        // gap ends; one that begins twice begins the first time.
        let end = tz
            .from_local_datetime(&midnight)
            .earliest()
            .or_else(|| tz.from_local_datetime(&(midnight + chrono::Duration::hours(1))).earliest())
            .map_or(i64::MAX, |t| t.timestamp_micros());
        out.push((day, end));
        day = next;
    }
    out
}

/// Contacts per stage at the end of each day ('' for a contact whose stage was cleared; a
/// contact counts from its first change on).
pub fn daily_counts(
    changes: &[Change],
    days: &[(NaiveDate, i64)],
) -> Vec<(NaiveDate, BTreeMap<String, i64>)> {
    let mut stage: HashMap<&str, &str> = HashMap::new();
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut next = changes.iter().peekable();
    let mut out = Vec::with_capacity(days.len());
    for (day, end) in days {
        while let Some(c) = next.next_if(|c| c.at < *end) {
            if let Some(before) = stage.insert(&c.contact, &c.stage)
                && let Some(n) = counts.get_mut(before)
            {
                *n -= 1;
            }
            *counts.entry(c.stage.clone()).or_default() += 1;
        }
        out.push((*day, counts.iter().filter(|(_, n)| **n > 0).map(|(s, n)| (s.clone(), *n)).collect()));
    }
    out
}

/// How many contacts that entered one stage of the funnel moved on to the next (or beyond).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    pub from: &'static str,
    pub to: &'static str,
    /// Contacts that entered `from` within the period.
    pub entered: i64,
    /// Of those, how many reached `to` or a later stage after it, by the period's end.
    pub converted: i64,
}

impl Conversion {
    /// The rate in basis points (10,000 = all), rounded down; 0 when nobody entered.
    pub fn basis_points(&self) -> i64 {
        if self.entered == 0 { 0 } else { self.converted * 10_000 / self.entered }
    }
}

/// The conversions between consecutive stages of [`FUNNEL`] for the period `[start, end)`.
/// A contact that skips a stage converts through it.
pub fn conversions(changes: &[Change], start: i64, end: i64) -> Vec<Conversion> {
    // Each contact's changes in the period, in time order.
    let mut by_contact: HashMap<&str, Vec<&Change>> = HashMap::new();
    for c in changes.iter().filter(|c| c.at >= start && c.at < end) {
        by_contact.entry(&c.contact).or_default().push(c);
    }
    FUNNEL
        .windows(2)
        .map(|pair| {
            let (from, to) = (pair[0], pair[1]);
            let target = rank(to).expect("funnel stages are ranked");
            let mut conv = Conversion { from, to, entered: 0, converted: 0 };
            for changes in by_contact.values() {
                let Some(entered_at) = changes.iter().position(|c| c.stage == from) else { continue };
                conv.entered += 1;
                if changes[entered_at + 1..].iter().any(|c| rank(&c.stage).is_some_and(|r| r >= target)) {
                    conv.converted += 1;
                }
            }
            conv
        })
        .collect()
}

/// New contacts per source per day: each (source, created at) counted on its day; those after
/// the last day are left out.
pub fn new_per_day(
    created: &[(String, i64)],
    days: &[(NaiveDate, i64)],
) -> Vec<(NaiveDate, BTreeMap<String, i64>)> {
    let mut out: Vec<(NaiveDate, BTreeMap<String, i64>)> =
        days.iter().map(|(d, _)| (*d, BTreeMap::new())).collect();
    for (source, at) in created {
        // The first day whose end is after it (the caller reads from the range's start).
        let i = days.partition_point(|(_, end)| *end <= *at);
        if let Some((_, counts)) = out.get_mut(i) {
            *counts.entry(source.clone()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn c(contact: &str, stage: &str, at: i64) -> Change {
        Change { contact: contact.into(), stage: stage.into(), at }
    }

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 5, day).unwrap()
    }

    #[test]
    fn stages_rank_along_the_lifecycle_and_other_is_off_it() {
        assert!(rank("subscriber") < rank("lead") && rank("opportunity") < rank("customer"));
        assert!(rank("customer") < rank("evangelist"));
        assert_eq!((rank("other"), rank("")), (None, None));
    }

    #[test]
    fn days_end_at_the_next_midnight_of_the_zone() {
        let utc = day_ends(d(1), d(2), &chrono::Utc);
        let may1 = d(1).and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros();
        assert_eq!(utc, [(d(1), may1 + DAY), (d(2), may1 + 2 * DAY)]);
        // Zurich is two hours ahead in May: its day ends at 22:00 UTC.
        let zurich = day_ends(d(1), d(1), &chrono_tz::Europe::Zurich);
        assert_eq!(zurich[0].1, may1 + DAY - 2 * 3_600_000_000);
        assert!(day_ends(d(2), d(1), &chrono::Utc).is_empty());
    }

    #[test]
    fn each_day_counts_every_contact_once_in_its_stage_then() {
        let days: Vec<(NaiveDate, i64)> = (1..=3).map(|i| (d(i), i as i64 * DAY)).collect();
        let changes = [
            c("a", "lead", 10),
            c("b", "lead", 20),
            c("a", "marketing_qualified_lead", DAY + 5),
            c("b", "", DAY + 6),
            c("a", "customer", 3 * DAY + 1),
        ];
        let counts = daily_counts(&changes, &days);
        let day = |i: usize| counts[i].1.iter().map(|(s, n)| (s.as_str(), *n)).collect::<Vec<_>>();
        assert_eq!(day(0), [("lead", 2)]);
        assert_eq!(day(1), [("", 1), ("marketing_qualified_lead", 1)]);
        assert_eq!(day(2), day(1), "nothing changed on the third day; the fourth's change is out of range");
    }

    #[test]
    fn conversions_count_who_entered_a_stage_and_moved_on_in_the_period() {
        let changes = [
            c("a", "lead", 1),
            c("a", "marketing_qualified_lead", 2),
            c("b", "lead", 3),
            // b skips straight to a customer: it converts through every stage after lead.
            c("b", "customer", 4),
            c("c", "lead", 5),
            // d entered before the period: not in this period's cohort.
            c("d", "lead", -1),
            c("d", "marketing_qualified_lead", 6),
        ];
        let conv = conversions(&changes, 0, 100);
        assert_eq!(
            (conv[0].from, conv[0].to, conv[0].entered, conv[0].converted),
            ("lead", "marketing_qualified_lead", 3, 2)
        );
        assert_eq!(conv[0].basis_points(), 6_666);
        assert_eq!((conv[1].entered, conv[1].converted), (2, 0), "a and d entered MQL; neither moved on");
        assert_eq!(conv[3].to, "customer");
        assert_eq!(Conversion { from: "x", to: "y", entered: 0, converted: 0 }.basis_points(), 0);
    }

    #[test]
    fn new_contacts_count_on_the_day_they_were_made() {
        let days: Vec<(NaiveDate, i64)> = (1..=2).map(|i| (d(i), i as i64 * DAY)).collect();
        let created = [
            ("FORM".to_owned(), 5),
            ("FORM".to_owned(), DAY - 1),
            ("IMPORT".to_owned(), DAY),
            ("USER".to_owned(), 2 * DAY),
        ];
        let per_day = new_per_day(&created, &days);
        assert_eq!(per_day[0].1, [("FORM".to_owned(), 2)].into());
        assert_eq!(per_day[1].1, [("IMPORT".to_owned(), 1)].into(), "the range's end is not in it");
    }
}
