//! Conversions every service needs between stored values, chrono and the proto types.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use contactier_proto::common::v1 as common;

/// Stored instants are epoch microseconds on both backends.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A new id: time-ordered (UUID v7), unique across services.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// The proto timestamp of stored microseconds.
pub fn timestamp_micros(micros: i64) -> Option<prost_types::Timestamp> {
    DateTime::from_timestamp_micros(micros).map(timestamp)
}

pub fn pb_date(d: NaiveDate) -> common::Date {
    common::Date { year: d.year(), month: d.month() as i32, day: d.day() as i32 }
}

/// A required calendar date from a request; the error is the reason, for the caller to put
/// after the field's name.
pub fn date(d: Option<&common::Date>) -> Result<NaiveDate, &'static str> {
    let d = d.ok_or("required")?;
    u32::try_from(d.month)
        .ok()
        .zip(u32::try_from(d.day).ok())
        .and_then(|(m, day)| NaiveDate::from_ymd_opt(d.year, m, day))
        .ok_or("not a calendar date")
}

/// The name a source type is stored and logged under (`FORM`, `IMPORT`, ...).
pub fn source_type_name(t: contactier_proto::common::v1::SourceType) -> String {
    t.as_str_name().trim_start_matches("SOURCE_TYPE_").to_owned()
}

/// A stored source type name in its contract form; unspecified for a name it does not know.
pub fn source_type(name: &str) -> contactier_proto::common::v1::SourceType {
    contactier_proto::common::v1::SourceType::from_str_name(&format!("SOURCE_TYPE_{name}"))
        .unwrap_or_default()
}

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_type_names_go_both_ways() {
        use contactier_proto::common::v1::SourceType;
        for t in [SourceType::LoggedEmail, SourceType::Form, SourceType::SalesExtension] {
            assert_eq!(source_type(&source_type_name(t)), t);
        }
        assert_eq!(source_type_name(SourceType::MeetingLink), "MEETING_LINK");
        assert_eq!(source_type("NO_SUCH"), SourceType::Unspecified);
    }

    #[test]
    fn dates_are_checked_and_round_trip() {
        let d = |y, m, day| Some(common::Date { year: y, month: m, day });
        assert_eq!(date(d(2028, 2, 29).as_ref()), Ok(NaiveDate::from_ymd_opt(2028, 2, 29).unwrap()));
        assert_eq!(date(d(2026, 2, 29).as_ref()), Err("not a calendar date"));
        assert_eq!(date(d(2026, -1, 1).as_ref()), Err("not a calendar date"));
        assert_eq!(date(None), Err("required"));
        let day = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        assert_eq!(date(Some(&pb_date(day))), Ok(day));
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_000));
    }
}
