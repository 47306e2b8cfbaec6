//! Engagements on a contact's activity timeline: notes, calls, logged emails, meetings and
//! tasks. What each kind holds and the checks on it, without I/O; stored with its kind's
//! details as JSON beside the fields every kind has.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Most characters of an engagement's body (a note, call notes, an email's text).
pub const MAX_BODY: usize = 65_536;
/// Most characters of a subject (logged emails, tasks).
pub const MAX_SUBJECT: usize = 1_000;
/// Most characters of an owner's id.
pub const MAX_OWNER: usize = 128;
/// The longest call: a day.
pub const MAX_CALL_SECONDS: i64 = 86_400;
/// The longest meeting: a week.
pub const MAX_MEETING_MICROS: i64 = 7 * 86_400 * 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Note,
    Call,
    Email,
    Meeting,
    Task,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Note => "note",
            Kind::Call => "call",
            Kind::Email => "email",
            Kind::Meeting => "meeting",
            Kind::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Note, Kind::Call, Kind::Email, Kind::Meeting, Kind::Task].into_iter().find(|k| k.as_str() == s)
    }

    /// The source of a contact that logging this kind for an unknown address creates, if it
    /// creates one: a logged email or a meeting booked through a link makes its contact, a
    /// call does from the sales extension. Notes and tasks need a contact.
    pub fn creates_contact(self, from_sales_extension: bool) -> Option<&'static str> {
        match self {
            Kind::Email => Some("LOGGED_EMAIL"),
            Kind::Meeting => Some("MEETING_LINK"),
            Kind::Call if from_sales_extension => Some("SALES_EXTENSION"),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Connected,
    NoAnswer,
    Busy,
    LeftVoicemail,
    WrongNumber,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingOutcome {
    Scheduled,
    Completed,
    Rescheduled,
    NoShow,
    Canceled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    NotStarted,
    InProgress,
    Waiting,
    Completed,
    Deferred,
}

/// What one kind holds beyond the common fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Details {
    Note,
    Call {
        direction: Direction,
        duration_seconds: i64,
        /// None: no outcome was logged.
        outcome: Option<CallOutcome>,
    },
    Email {
        direction: Direction,
        subject: String,
    },
    /// Start and end in epoch microseconds.
    Meeting {
        start: i64,
        end: i64,
        outcome: MeetingOutcome,
    },
    Task {
        subject: String,
        due_date: Option<NaiveDate>,
        owner_id: String,
        status: TaskStatus,
    },
}

impl Details {
    pub fn kind(&self) -> Kind {
        match self {
            Details::Note => Kind::Note,
            Details::Call { .. } => Kind::Call,
            Details::Email { .. } => Kind::Email,
            Details::Meeting { .. } => Kind::Meeting,
            Details::Task { .. } => Kind::Task,
        }
    }
}

/// An engagement as it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engagement {
    pub id: String,
    pub contact_id: String,
    /// When it happened (a meeting: its start), in epoch microseconds; the timeline's order.
    pub occurred_at: i64,
    pub body: String,
    pub details: Details,
    /// The user or service that logged it.
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A refusal: the field (relative to the engagement) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid { field, reason: reason.into() }
}

fn text(field: &'static str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.chars().count() > max {
        return Err(invalid(field, format!("at most {max} characters")));
    }
    if s.contains('\0') {
        return Err(invalid(field, "must not contain NUL"));
    }
    Ok(())
}

/// Checks what an engagement holds. A meeting happens at its start.
pub fn check(body: &str, details: &Details, occurred_at: i64) -> Result<(), Invalid> {
    text("body", body, MAX_BODY)?;
    if occurred_at <= 0 {
        return Err(invalid("occurred_at", "required"));
    }
    match details {
        Details::Note => {
            if body.trim().is_empty() {
                return Err(invalid("body", "a note needs text"));
            }
        }
        Details::Call { duration_seconds, .. } => {
            if !(0..=MAX_CALL_SECONDS).contains(duration_seconds) {
                return Err(invalid("call.duration_seconds", format!("0 to {MAX_CALL_SECONDS}")));
            }
        }
        Details::Email { subject, .. } => text("email.subject", subject, MAX_SUBJECT)?,
        Details::Meeting { start, end, .. } => {
            if *start <= 0 {
                return Err(invalid("meeting.start_time", "required"));
            }
            if end < start {
                return Err(invalid("meeting.end_time", "must not be before start_time"));
            }
            if end - start > MAX_MEETING_MICROS {
                return Err(invalid("meeting.end_time", "at most a week after start_time"));
            }
        }
        Details::Task { subject, owner_id, .. } => {
            if subject.trim().is_empty() {
                return Err(invalid("task.subject", "required"));
            }
            text("task.subject", subject, MAX_SUBJECT)?;
            text("task.owner_id", owner_id, MAX_OWNER)?;
        }
    }
    Ok(())
}

/// The latest time among a contact's engagements, 0 for none: its `last_activity_at`.
pub fn last_activity(times: impl IntoIterator<Item = i64>) -> i64 {
    times.into_iter().max().unwrap_or(0).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_780_000_000_000_000;

    #[test]
    fn every_kind_round_trips_through_its_stored_form() {
        let all = [
            Details::Note,
            Details::Call {
                direction: Direction::Outbound,
                duration_seconds: 300,
                outcome: Some(CallOutcome::Connected),
            },
            Details::Email { direction: Direction::Inbound, subject: "Re: pricing".into() },
            Details::Meeting { start: T, end: T + 1_800_000_000, outcome: MeetingOutcome::Scheduled },
            Details::Task {
                subject: "Send the quote".into(),
                due_date: NaiveDate::from_ymd_opt(2026, 12, 1),
                owner_id: "user-7".into(),
                status: TaskStatus::NotStarted,
            },
        ];
        for d in all {
            let stored = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Details>(&stored).unwrap(), d, "{stored}");
            assert_eq!(Kind::parse(d.kind().as_str()), Some(d.kind()));
        }
    }

    #[test]
    fn checks_name_the_field_at_fault() {
        let call = |s| Details::Call { direction: Direction::Inbound, duration_seconds: s, outcome: None };
        assert_eq!(check("", &call(-1), T).unwrap_err().field, "call.duration_seconds");
        assert_eq!(check("", &call(MAX_CALL_SECONDS + 1), T).unwrap_err().field, "call.duration_seconds");
        assert!(check("", &call(MAX_CALL_SECONDS), T).is_ok());
        assert_eq!(check("  ", &Details::Note, T).unwrap_err().field, "body");
        assert_eq!(check(&"x".repeat(MAX_BODY + 1), &Details::Note, T).unwrap_err().field, "body");
        assert_eq!(check("a\0b", &Details::Note, T).unwrap_err().field, "body");
        assert_eq!(check("n", &Details::Note, 0).unwrap_err().field, "occurred_at");
        let meeting = |start, end| Details::Meeting { start, end, outcome: MeetingOutcome::Completed };
        assert_eq!(check("", &meeting(T, T - 1), T).unwrap_err().field, "meeting.end_time");
        assert_eq!(
            check("", &meeting(T, T + MAX_MEETING_MICROS + 1), T).unwrap_err().field,
            "meeting.end_time"
        );
        assert!(check("", &meeting(T, T), T).is_ok());
        let task = |subject: &str| Details::Task {
            subject: subject.into(),
            due_date: None,
            owner_id: String::new(),
            status: TaskStatus::Waiting,
        };
        assert_eq!(check("", &task(" "), T).unwrap_err().field, "task.subject");
        assert_eq!(check("", &task(&"s".repeat(MAX_SUBJECT + 1)), T).unwrap_err().field, "task.subject");
        let email = Details::Email { direction: Direction::Outbound, subject: "s".repeat(MAX_SUBJECT + 1) };
        assert_eq!(check("", &email, T).unwrap_err().field, "email.subject");
    }

    #[test]
    fn only_emails_meetings_and_sales_extension_calls_create_their_contact() {
        assert_eq!(Kind::Email.creates_contact(false), Some("LOGGED_EMAIL"));
        assert_eq!(Kind::Meeting.creates_contact(false), Some("MEETING_LINK"));
        assert_eq!(Kind::Call.creates_contact(true), Some("SALES_EXTENSION"));
        assert_eq!(Kind::Call.creates_contact(false), None);
        assert_eq!(Kind::Note.creates_contact(true), None);
        assert_eq!(Kind::Task.creates_contact(true), None);
    }

    #[test]
    fn last_activity_is_the_latest_engagement() {
        assert_eq!(last_activity([]), 0);
        assert_eq!(last_activity([T, T + 5, T - 5]), T + 5);
    }
}
