//! The limits of `proto/contactier/common/v1/limits.proto`, checked on every request before a
//! handler runs. `build.rs` writes a [`Check`] for every message from the limits the protos
//! declare; the codec [`Checked`] calls it as it decodes a request, so every service refuses
//! the same input in the same words, on either storage backend.

use chrono::NaiveDate;
use prost::Message;
use std::fmt::Write as _;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

/// Characters of a string field that names no limit.
pub const DEFAULT_MAX_LEN: usize = 256;
/// Entries of a repeated field or map that names no limit.
pub const DEFAULT_MAX_ITEMS: usize = 1_000;
/// The first and last dates a request may carry.
pub const FIRST_DATE: (i32, u32, u32) = (2000, 1, 1);
pub const LAST_DATE: (i32, u32, u32) = (2199, 12, 31);

/// The first field of a request found past its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `contacts[3].email` or `contact.properties.score`.
    pub field: String,
    pub description: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl From<Violation> for Status {
    fn from(v: Violation) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_bad_request_violation(v.field.clone(), v.description.clone());
        Status::with_error_details(tonic::Code::InvalidArgument, v.to_string(), details)
    }
}

/// Where a field lies in a request; its text is built only when a check fails.
#[derive(Clone, Copy)]
pub struct At<'a> {
    parent: Option<&'a At<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Field(&'static str),
    Index(usize),
    Key(&'a str),
}

impl<'a> At<'a> {
    pub const ROOT: At<'static> = At { parent: None, seg: Seg::Root };

    pub fn field(&'a self, name: &'static str) -> At<'a> {
        At { parent: Some(self), seg: Seg::Field(name) }
    }

    pub fn index(&'a self, i: usize) -> At<'a> {
        At { parent: Some(self), seg: Seg::Index(i) }
    }

    pub fn key(&'a self, k: &'a str) -> At<'a> {
        At { parent: Some(self), seg: Seg::Key(k) }
    }

    fn path(&self) -> String {
        let mut segs = Vec::new();
        let mut at = Some(self);
        while let Some(a) = at {
            segs.push(a.seg);
            at = a.parent;
        }
        let mut out = String::new();
        for seg in segs.into_iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Field(f) | Seg::Key(f) if out.is_empty() => out.push_str(f),
                Seg::Field(f) => {
                    out.push('.');
                    out.push_str(f);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                // A key is named as a field is, shortened: it may be the long text refused.
                Seg::Key(k) => {
                    out.push('.');
                    out.extend(k.chars().take(64));
                }
            }
        }
        if out.is_empty() { "request".into() } else { out }
    }

    pub fn violation(&self, description: impl Into<String>) -> Violation {
        Violation { field: self.path(), description: description.into() }
    }
}

/// A message that can be checked against its declared limits.
pub trait Check {
    /// Whether this is the request of an RPC: requests are checked as they are decoded;
    /// answers decoded by a client are not.
    const REQUEST: bool;

    fn check(&self, at: &At<'_>) -> Result<(), Violation>;
}

/// Checks one entry of a `per_item` repeated field, named as the request names it.
pub fn check_item<T: Check>(item: &T, field: &'static str, index: usize) -> Result<(), Violation> {
    let f = At::ROOT.field(field);
    item.check(&f.index(index))
}

pub fn string(v: &str, max_chars: usize, at: &At<'_>) -> Result<(), Violation> {
    // Bytes bound characters from above, so most values need no count.
    if v.len() > max_chars && v.chars().count() > max_chars {
        return Err(at.violation(format!("at most {max_chars} characters")));
    }
    if v.as_bytes().contains(&0) {
        return Err(at.violation("must not contain a NUL character"));
    }
    Ok(())
}

pub fn items(n: usize, max: usize, at: &At<'_>) -> Result<(), Violation> {
    if n > max {
        return Err(at.violation(format!("at most {max} entries")));
    }
    Ok(())
}

pub fn integer(v: i64, min: i64, max: i64, at: &At<'_>) -> Result<(), Violation> {
    if v < min || v > max {
        return Err(at.violation(format!("must be from {min} to {max}")));
    }
    Ok(())
}

pub fn unsigned(v: u64, max: u64, at: &At<'_>) -> Result<(), Violation> {
    if v > max {
        return Err(at.violation(format!("must be at most {max}")));
    }
    Ok(())
}

pub fn enumeration<E: TryFrom<i32>>(v: i32, at: &At<'_>) -> Result<(), Violation> {
    match E::try_from(v) {
        Ok(_) => Ok(()),
        Err(_) => Err(at.violation(format!("{v} is not one of its values"))),
    }
}

fn date_bound((y, m, d): (i32, u32, u32)) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a calendar date")
}

impl Check for crate::common::v1::Date {
    const REQUEST: bool = false;

    fn check(&self, at: &At<'_>) -> Result<(), Violation> {
        let day = u32::try_from(self.month)
            .ok()
            .zip(u32::try_from(self.day).ok())
            .and_then(|(m, d)| NaiveDate::from_ymd_opt(self.year, m, d))
            .ok_or_else(|| at.violation("not a calendar date"))?;
        let (first, last) = (date_bound(FIRST_DATE), date_bound(LAST_DATE));
        if day < first || day > last {
            return Err(at.violation(format!("must lie from {first} to {last}")));
        }
        Ok(())
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range protobuf gives a timestamp.
const TIMESTAMP_SECONDS: (i64, i64) = (-62_135_596_800, 253_402_300_799);
/// About 10,000 years, the range protobuf gives a duration.
const DURATION_SECONDS: i64 = 315_576_000_000;

impl Check for prost_types::Timestamp {
    const REQUEST: bool = false;

    fn check(&self, at: &At<'_>) -> Result<(), Violation> {
        if self.seconds < TIMESTAMP_SECONDS.0 || self.seconds > TIMESTAMP_SECONDS.1 {
            return Err(at.violation("must lie in the years 1 to 9999"));
        }
        if !(0..1_000_000_000).contains(&self.nanos) {
            return Err(at.violation("nanos must be from 0 to 999999999"));
        }
        Ok(())
    }
}

/// A status in an answer; nothing a caller sends.
impl Check for tonic_types::pb::Status {
    const REQUEST: bool = false;

    fn check(&self, _at: &At<'_>) -> Result<(), Violation> {
        Ok(())
    }
}

/// The most paths a field mask may name, and the longest path.
const MASK_PATHS: usize = 1_000;
const MASK_PATH_LEN: usize = 256;

impl Check for prost_types::FieldMask {
    const REQUEST: bool = false;

    fn check(&self, at: &At<'_>) -> Result<(), Violation> {
        if self.paths.len() > MASK_PATHS {
            return Err(at.violation(format!("at most {MASK_PATHS} paths")));
        }
        if self.paths.iter().any(|p| p.len() > MASK_PATH_LEN || p.chars().any(char::is_control)) {
            return Err(
                at.violation(format!("paths are at most {MASK_PATH_LEN} characters, no control characters"))
            );
        }
        Ok(())
    }
}

impl Check for prost_types::Duration {
    const REQUEST: bool = false;

    fn check(&self, at: &At<'_>) -> Result<(), Violation> {
        if self.seconds.abs() > DURATION_SECONDS || self.nanos.abs() >= 1_000_000_000 {
            return Err(at.violation("out of range"));
        }
        if (self.seconds > 0 && self.nanos < 0) || (self.seconds < 0 && self.nanos > 0) {
            return Err(at.violation("seconds and nanos must have the same sign"));
        }
        Ok(())
    }
}

/// Each call's encode and decode buffers start at 512 bytes and grow as a message needs. At
/// the transport's default, 8 KiB, each was a large allocation a call, and glibc first merges
/// its freed small blocks for one (a GetContact answer is a few hundred bytes).
fn buffers() -> BufferSettings {
    BufferSettings::new(512, 32 * 1024)
}

/// The gRPC codec of every Contactier service and client: prost, with each request checked
/// against its limits as it is decoded. A request past them never reaches a handler.
#[derive(Debug, Clone)]
pub struct Checked<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Checked<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for Checked<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Check + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

#[derive(Debug, Clone)]
pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Check> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = match U::decode(buf) {
            Ok(item) => item,
            // Text that is not UTF-8, a truncated field: the sender's message is malformed.
            Err(e) if U::REQUEST => return Err(Status::invalid_argument(format!("request: {e}"))),
            Err(e) => return Err(Status::internal(format!("answer: {e}"))),
        };
        if U::REQUEST {
            item.check(&At::ROOT)?;
        }
        Ok(Some(item))
    }
}

/// Forwards to the generated checks of `T`; for the tests of the generator.
#[doc(hidden)]
pub fn check_request<T: Check>(m: &T) -> Result<(), Violation> {
    m.check(&At::ROOT)
}

include!(concat!(env!("OUT_DIR"), "/checks.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::v1 as common;
    use crate::contacts::v1 as contacts;

    #[test]
    fn paths_name_the_field_the_way_the_request_spells_it() {
        let root = At::ROOT;
        let contacts = root.field("contacts");
        let third = contacts.index(3);
        let props = third.field("properties");
        assert_eq!(props.key("score").violation("x").field, "contacts[3].properties.score");
        assert_eq!(root.violation("x").field, "request");
    }

    #[test]
    fn strings_are_capped_in_characters_and_never_hold_nul() {
        let at = At::ROOT.field("name");
        assert!(string(&"é".repeat(256), 256, &at).is_ok(), "512 bytes, 256 characters");
        assert_eq!(string(&"a".repeat(257), 256, &at).unwrap_err().description, "at most 256 characters");
        assert!(string("a\0b", 256, &at).unwrap_err().description.contains("NUL"));
    }

    #[test]
    fn dates_lie_in_the_documented_range() {
        let d = |year, month, day| common::Date { year, month, day };
        let at = At::ROOT.field("start_date");
        assert!(d(2026, 2, 28).check(&at).is_ok());
        for bad in [
            d(0, 1, 1),
            d(-5, 1, 1),
            d(9999, 1, 1),
            d(1999, 12, 31),
            d(2200, 1, 1),
            d(2026, 2, 29),
            d(0, 0, 0),
        ] {
            let v = bad.check(&at).unwrap_err();
            assert_eq!(v.field, "start_date", "{bad:?}");
        }
    }

    #[test]
    fn generated_checks_follow_the_declared_limits() {
        let mut input = contacts::ContactInput { email: "a@example.com".into(), ..Default::default() };
        input.properties.insert("score".into(), "x".repeat(65_536));
        let req = contacts::CreateContactRequest { contact: Some(input.clone()), request_id: String::new() };
        assert!(check_request(&req).is_ok());

        input.properties.insert("score".into(), "x".repeat(65_537));
        let req = contacts::CreateContactRequest { contact: Some(input.clone()), request_id: String::new() };
        assert_eq!(check_request(&req).unwrap_err().field, "contact.properties.score");

        input.properties.clear();
        input.requested_status = 42;
        let req = contacts::CreateContactRequest { contact: Some(input), request_id: String::new() };
        let v = check_request(&req).unwrap_err();
        assert_eq!(
            (v.field.as_str(), v.description.as_str()),
            ("contact.requested_status", "42 is not one of its values")
        );

        let req = contacts::CreateContactRequest { contact: None, request_id: "r\0".into() };
        assert_eq!(check_request(&req).unwrap_err().field, "request_id");

        // A oneof's text is checked as its own field.
        let get = contacts::GetContactRequest {
            key: Some(contacts::get_contact_request::Key::Email("x".repeat(300))),
        };
        assert_eq!(check_request(&get).unwrap_err().field, "email");
    }

    #[test]
    fn per_item_entries_are_left_to_the_handler_but_counted() {
        let bad = contacts::ContactInput { email: "\0".into(), ..Default::default() };
        let batch =
            contacts::BatchCreateContactsRequest { contacts: vec![bad.clone()], request_id: String::new() };
        assert!(check_request(&batch).is_ok());
        assert_eq!(check_item(&bad, "contacts", 0).unwrap_err().field, "contacts[0].email");
        let many =
            contacts::BatchCreateContactsRequest { contacts: vec![bad; 1_001], request_id: String::new() };
        assert_eq!(check_request(&many).unwrap_err().field, "contacts");
    }

    #[test]
    fn only_requests_are_checked_as_they_are_decoded() {
        assert!(<contacts::CreateContactRequest as Check>::REQUEST);
        assert!(!<contacts::CreateContactResponse as Check>::REQUEST);
        assert!(!<contacts::ContactInput as Check>::REQUEST);
    }
}
