//! The pure billing functions on their own: the calendar, proration and tier arithmetic run on
//! every count and every invoice, so they must stay far below a database round trip.

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use contactier_billing::calendar::{self, Term};
use contactier_billing::proration::prorate;
use contactier_billing::tiers::TierShape;
use contactier_domain::{Currency, Money};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn domain(c: &mut Criterion) {
    let start = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
    let day = NaiveDate::from_ymd_opt(2027, 2, 14).unwrap();
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    c.bench_function("calendar: next update date (annual)", |b| {
        b.iter(|| calendar::next_update_date(black_box(start), Term::Annual, black_box(day)));
    });
    c.bench_function("calendar: term containing a day (monthly)", |b| {
        b.iter(|| calendar::term_containing(black_box(start), Term::Monthly, black_box(day)));
    });
    c.bench_function("calendar: processing instant (DST zone)", |b| {
        b.iter(|| calendar::processing_instant(black_box(day), ny, NaiveTime::MIN));
    });
    let now = Utc.with_ymd_and_hms(2026, 11, 1, 5, 30, 0).unwrap();
    c.bench_function("calendar: business date (DST zone)", |b| {
        b.iter(|| calendar::business_date(black_box(now), ny, NaiveTime::MIN));
    });
    let eur = Currency::parse("EUR").unwrap();
    let (old, new) = (Money::new(80_000, eur), Money::new(125_000, eur));
    let (ts, te) =
        (NaiveDate::from_ymd_opt(2027, 1, 31).unwrap(), NaiveDate::from_ymd_opt(2027, 2, 28).unwrap());
    c.bench_function("proration: one invoice line", |b| {
        b.iter(|| prorate(black_box(old), black_box(new), day, ts, te));
    });
    let shape = TierShape::new(2_000, 5_000, 2_002_000).unwrap();
    c.bench_function("tiers: smallest tier holding a count", |b| {
        b.iter(|| shape.smallest_holding(black_box(1_234_567)));
    });
}

criterion_group!(benches, domain);
criterion_main!(benches);
