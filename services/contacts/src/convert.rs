//! Stored records to and from their protobuf form.

use crate::duplicates::{Reason, Side};
use crate::engagements::{
    self, CallOutcome, Details, Direction, Engagement, Kind, MeetingOutcome, TaskStatus,
};
use crate::error::{Error, Result};
use crate::properties::{Catalog, Definition, PropertyOption, PropertyType};
use crate::store::{Candidate, ConsentRow, ContactRow, HistoryRow, ImportRow, ListRow, StoredEvent};
use contactier_proto::common::v1 as common;
use contactier_proto::contacts::v1 as pb;
use contactier_runtime::convert::timestamp_micros;
use prost::Message;
use std::collections::BTreeMap;

/// A contact as answered: properties of definitions that still exist, limited to `only` when
/// given.
pub fn contact(row: ContactRow, catalog: &Catalog, only: &[String]) -> pb::Contact {
    let properties = row
        .values()
        .into_iter()
        .filter(|(k, _)| catalog.get(k).is_some() && (only.is_empty() || only.contains(k)))
        .collect();
    pb::Contact {
        id: row.id,
        email: row.email,
        properties,
        version: row.version,
        creation_source: Some(source(&row.source_type, row.source_id)),
        created_at: timestamp_micros(row.created_at),
        updated_at: timestamp_micros(row.updated_at),
        last_activity_at: (row.last_activity_at > 0)
            .then(|| timestamp_micros(row.last_activity_at))
            .flatten(),
        visits: (row.visits.visits > 0).then(|| pb::WebVisits {
            count: row.visits.visits,
            first_visit_at: timestamp_micros(row.visits.first_visit_at),
            last_visit_at: timestamp_micros(row.visits.last_visit_at),
            original_source: row.visits.original_source,
            latest_source: row.visits.latest_source,
        }),
    }
}

/// A source as stored (`USER`, `IMPORT`, ...) in its contract form.
pub fn source(source_type: &str, id: String) -> common::Source {
    let t = contactier_runtime::convert::source_type(source_type);
    common::Source { r#type: t as i32, id }
}

pub fn property_change(h: HistoryRow) -> pb::PropertyChange {
    pb::PropertyChange {
        id: h.id,
        property: h.name,
        value: h.value,
        source: Some(source(&h.source_type, h.source_id)),
        user_id: h.user_id,
        changed_at: timestamp_micros(h.changed_at),
    }
}

pub use contactier_runtime::convert::source_type_name;

fn pb_type(t: PropertyType) -> pb::PropertyType {
    match t {
        PropertyType::SingleLineText => pb::PropertyType::SingleLineText,
        PropertyType::MultiLineText => pb::PropertyType::MultiLineText,
        PropertyType::Enumeration => pb::PropertyType::Enumeration,
        PropertyType::Number => pb::PropertyType::Number,
        PropertyType::Date => pb::PropertyType::Date,
        PropertyType::Checkbox => pb::PropertyType::Checkbox,
    }
}

pub fn property_type(t: i32) -> Option<PropertyType> {
    Some(match pb::PropertyType::try_from(t).ok()? {
        pb::PropertyType::SingleLineText => PropertyType::SingleLineText,
        pb::PropertyType::MultiLineText => PropertyType::MultiLineText,
        pb::PropertyType::Enumeration => PropertyType::Enumeration,
        pb::PropertyType::Number => PropertyType::Number,
        pb::PropertyType::Date => PropertyType::Date,
        pb::PropertyType::Checkbox => PropertyType::Checkbox,
        pb::PropertyType::Unspecified => return None,
    })
}

pub fn definition(d: &Definition) -> pb::PropertyDefinition {
    pb::PropertyDefinition {
        name: d.name.clone(),
        label: d.label.clone(),
        r#type: pb_type(d.ptype) as i32,
        options: d
            .options
            .iter()
            .map(|o| pb::PropertyOption { value: o.value.clone(), label: o.label.clone() })
            .collect(),
        standard: d.standard,
        description: d.description.clone(),
    }
}

/// Checks a definition from a request; `field` prefixes the field names in errors.
pub fn checked_definition(p: Option<pb::PropertyDefinition>) -> Result<Definition> {
    let p = p.ok_or_else(|| Error::invalid("property", "required"))?;
    crate::properties::check_name(&p.name).map_err(|r| Error::invalid("property.name", r))?;
    let ptype = property_type(p.r#type).ok_or_else(|| {
        Error::invalid(
            "property.type",
            "SINGLE_LINE_TEXT, MULTI_LINE_TEXT, ENUMERATION, NUMBER, DATE or CHECKBOX",
        )
    })?;
    if p.label.trim().is_empty() {
        return Err(Error::invalid("property.label", "required"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, o) in p.options.iter().enumerate() {
        if o.value.trim().is_empty() || o.value.trim() != o.value {
            return Err(Error::invalid(
                format!("property.options[{i}].value"),
                "required, without surrounding spaces",
            ));
        }
        if !seen.insert(o.value.clone()) {
            return Err(Error::invalid(format!("property.options[{i}].value"), "repeated"));
        }
    }
    match (ptype, p.options.is_empty()) {
        (PropertyType::Enumeration, true) => {
            return Err(Error::invalid("property.options", "an enumeration needs options"));
        }
        (t, false) if t != PropertyType::Enumeration => {
            return Err(Error::invalid("property.options", "only enumerations have options"));
        }
        _ => {}
    }
    Ok(Definition {
        name: p.name,
        label: p.label.trim().to_owned(),
        ptype,
        options: p
            .options
            .into_iter()
            .map(|o| PropertyOption {
                label: if o.label.is_empty() { o.value.clone() } else { o.label },
                value: o.value,
            })
            .collect(),
        standard: false,
        description: p.description,
    })
}

pub fn list(row: ListRow, size: i64) -> pb::ContactList {
    let active = row.r#type == "active";
    pb::ContactList {
        id: row.id,
        name: row.name,
        r#type: if active { pb::ListType::Active } else { pb::ListType::Static } as i32,
        filter: if active { pb::ContactFilter::decode(row.filter.as_slice()).ok() } else { None },
        size,
        created_at: timestamp_micros(row.created_at),
    }
}

pub fn consent(c: ConsentRow) -> pb::Consent {
    pb::Consent {
        legal_basis: c.legal_basis,
        opted_in_at: timestamp_micros(c.opted_in_at).filter(|_| c.opted_in_at != 0),
        subscription_types: serde_json::from_str(&c.subscription_types).unwrap_or_default(),
        unsubscribed_from_all: c.unsubscribed_from_all,
    }
}

pub fn import_summary(i: &ImportRow) -> pb::ImportSummary {
    let state = match i.state.as_str() {
        "running" => pb::ImportState::Running,
        "completed" => pb::ImportState::Completed,
        "failed" => pb::ImportState::Failed,
        _ => pb::ImportState::Unspecified,
    };
    pb::ImportSummary {
        import_id: i.id.clone(),
        state: state as i32,
        rows_read: i.rows_read,
        created: i.created,
        updated: i.updated,
        skipped: i.skipped,
        failed: i.failed,
        started_at: timestamp_micros(i.started_at),
        finished_at: timestamp_micros(i.finished_at).filter(|_| i.finished_at != 0),
    }
}

// ---- engagements ----

pub fn engagement_type(t: i32) -> Option<Kind> {
    match pb::EngagementType::try_from(t).ok()? {
        pb::EngagementType::Note => Some(Kind::Note),
        pb::EngagementType::Call => Some(Kind::Call),
        pb::EngagementType::Email => Some(Kind::Email),
        pb::EngagementType::Meeting => Some(Kind::Meeting),
        pb::EngagementType::Task => Some(Kind::Task),
        pb::EngagementType::Unspecified => None,
    }
}

fn pb_engagement_type(k: Kind) -> pb::EngagementType {
    match k {
        Kind::Note => pb::EngagementType::Note,
        Kind::Call => pb::EngagementType::Call,
        Kind::Email => pb::EngagementType::Email,
        Kind::Meeting => pb::EngagementType::Meeting,
        Kind::Task => pb::EngagementType::Task,
    }
}

fn direction(d: i32, field: &str) -> Result<Direction> {
    match pb::Direction::try_from(d) {
        Ok(pb::Direction::Inbound) => Ok(Direction::Inbound),
        Ok(pb::Direction::Outbound) => Ok(Direction::Outbound),
        _ => Err(Error::invalid(field, "INBOUND or OUTBOUND")),
    }
}

fn pb_direction(d: Direction) -> pb::Direction {
    match d {
        Direction::Inbound => pb::Direction::Inbound,
        Direction::Outbound => pb::Direction::Outbound,
    }
}

fn call_outcome(o: i32) -> Result<Option<CallOutcome>> {
    Ok(match pb::CallOutcome::try_from(o) {
        Ok(pb::CallOutcome::Unspecified) => None,
        Ok(pb::CallOutcome::Connected) => Some(CallOutcome::Connected),
        Ok(pb::CallOutcome::NoAnswer) => Some(CallOutcome::NoAnswer),
        Ok(pb::CallOutcome::Busy) => Some(CallOutcome::Busy),
        Ok(pb::CallOutcome::LeftVoicemail) => Some(CallOutcome::LeftVoicemail),
        Ok(pb::CallOutcome::WrongNumber) => Some(CallOutcome::WrongNumber),
        Err(_) => return Err(Error::invalid("engagement.call.outcome", "not a call outcome")),
    })
}

fn pb_call_outcome(o: Option<CallOutcome>) -> pb::CallOutcome {
    match o {
        None => pb::CallOutcome::Unspecified,
        Some(CallOutcome::Connected) => pb::CallOutcome::Connected,
        Some(CallOutcome::NoAnswer) => pb::CallOutcome::NoAnswer,
        Some(CallOutcome::Busy) => pb::CallOutcome::Busy,
        Some(CallOutcome::LeftVoicemail) => pb::CallOutcome::LeftVoicemail,
        Some(CallOutcome::WrongNumber) => pb::CallOutcome::WrongNumber,
    }
}

/// Unset: a meeting logged without one is scheduled.
fn meeting_outcome(o: i32) -> Result<MeetingOutcome> {
    Ok(match pb::MeetingOutcome::try_from(o) {
        Ok(pb::MeetingOutcome::Unspecified | pb::MeetingOutcome::Scheduled) => MeetingOutcome::Scheduled,
        Ok(pb::MeetingOutcome::Completed) => MeetingOutcome::Completed,
        Ok(pb::MeetingOutcome::Rescheduled) => MeetingOutcome::Rescheduled,
        Ok(pb::MeetingOutcome::NoShow) => MeetingOutcome::NoShow,
        Ok(pb::MeetingOutcome::Canceled) => MeetingOutcome::Canceled,
        Err(_) => return Err(Error::invalid("engagement.meeting.outcome", "not a meeting outcome")),
    })
}

fn pb_meeting_outcome(o: MeetingOutcome) -> pb::MeetingOutcome {
    match o {
        MeetingOutcome::Scheduled => pb::MeetingOutcome::Scheduled,
        MeetingOutcome::Completed => pb::MeetingOutcome::Completed,
        MeetingOutcome::Rescheduled => pb::MeetingOutcome::Rescheduled,
        MeetingOutcome::NoShow => pb::MeetingOutcome::NoShow,
        MeetingOutcome::Canceled => pb::MeetingOutcome::Canceled,
    }
}

/// Unset: a new task has not started.
fn task_status(s: i32) -> Result<TaskStatus> {
    Ok(match pb::TaskStatus::try_from(s) {
        Ok(pb::TaskStatus::Unspecified | pb::TaskStatus::NotStarted) => TaskStatus::NotStarted,
        Ok(pb::TaskStatus::InProgress) => TaskStatus::InProgress,
        Ok(pb::TaskStatus::Waiting) => TaskStatus::Waiting,
        Ok(pb::TaskStatus::Completed) => TaskStatus::Completed,
        Ok(pb::TaskStatus::Deferred) => TaskStatus::Deferred,
        Err(_) => return Err(Error::invalid("engagement.task.status", "not a task status")),
    })
}

fn pb_task_status(s: TaskStatus) -> pb::TaskStatus {
    match s {
        TaskStatus::NotStarted => pb::TaskStatus::NotStarted,
        TaskStatus::InProgress => pb::TaskStatus::InProgress,
        TaskStatus::Waiting => pb::TaskStatus::Waiting,
        TaskStatus::Completed => pb::TaskStatus::Completed,
        TaskStatus::Deferred => pb::TaskStatus::Deferred,
    }
}

/// Epoch microseconds of a timestamp; None when unset.
fn micros_of(t: Option<&prost_types::Timestamp>, field: &str) -> Result<Option<i64>> {
    /// 2200-01-01T00:00:00Z: the contract's dates end before it.
    const END: i64 = 7_258_118_400;
    let Some(t) = t else { return Ok(None) };
    if !(1..END).contains(&t.seconds) {
        return Err(Error::invalid(field, "from 1970 to 2199"));
    }
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .filter(|_| (0..1_000_000_000).contains(&t.nanos))
        .map(|d| Some(d.timestamp_micros()))
        .ok_or_else(|| Error::invalid(field, "not a valid time"))
}

fn due_date(d: Option<&common::Date>) -> Result<Option<chrono::NaiveDate>> {
    match d {
        None => Ok(None),
        Some(d) => contactier_runtime::convert::date(Some(d))
            .map(Some)
            .map_err(|r| Error::invalid("engagement.task.due_date", r)),
    }
}

/// The details an engagement of `kind` holds, from its contract form.
pub fn details(kind: Kind, d: Option<pb::engagement::Details>) -> Result<Details> {
    use pb::engagement::Details as D;
    let missing = |what: &str| Error::invalid(format!("engagement.{what}"), format!("required for a {what}"));
    Ok(match (kind, d) {
        (Kind::Note, None) => Details::Note,
        (Kind::Note, Some(_)) => return Err(Error::invalid("engagement.details", "a note has none")),
        (Kind::Call, Some(D::Call(c))) => Details::Call {
            direction: direction(c.direction, "engagement.call.direction")?,
            duration_seconds: c.duration_seconds,
            outcome: call_outcome(c.outcome)?,
        },
        (Kind::Email, Some(D::Email(e))) => Details::Email {
            direction: direction(e.direction, "engagement.email.direction")?,
            subject: e.subject,
        },
        (Kind::Meeting, Some(D::Meeting(m))) => {
            let start = micros_of(m.start_time.as_ref(), "engagement.meeting.start_time")?
                .ok_or_else(|| Error::invalid("engagement.meeting.start_time", "required"))?;
            let end = micros_of(m.end_time.as_ref(), "engagement.meeting.end_time")?.unwrap_or(start);
            Details::Meeting { start, end, outcome: meeting_outcome(m.outcome)? }
        }
        (Kind::Task, Some(D::Task(t))) => Details::Task {
            due_date: due_date(t.due_date.as_ref())?,
            subject: t.subject,
            owner_id: t.owner_id,
            status: task_status(t.status)?,
        },
        (Kind::Call, _) => return Err(missing("call")),
        (Kind::Email, _) => return Err(missing("email")),
        (Kind::Meeting, _) => return Err(missing("meeting")),
        (Kind::Task, _) => return Err(missing("task")),
    })
}

/// When an engagement happened: a meeting at its start, anything else when the caller says or
/// `now`.
pub fn occurred_at(details: &Details, given: Option<&prost_types::Timestamp>, now: i64) -> Result<i64> {
    if let Details::Meeting { start, .. } = details {
        return Ok(*start);
    }
    Ok(micros_of(given, "engagement.occurred_at")?.unwrap_or(now))
}

/// A checked engagement's fields as the rules name them, in the contract's words.
pub fn checked(body: &str, d: &Details, occurred_at: i64) -> Result<()> {
    engagements::check(body, d, occurred_at)
        .map_err(|e| Error::invalid(format!("engagement.{}", e.field), e.reason))
}

pub fn engagement(e: Engagement) -> pb::Engagement {
    use pb::engagement::Details as D;
    let kind = e.details.kind();
    let details = match e.details {
        Details::Note => None,
        Details::Call { direction, duration_seconds, outcome } => Some(D::Call(pb::Call {
            direction: pb_direction(direction) as i32,
            duration_seconds,
            outcome: pb_call_outcome(outcome) as i32,
        })),
        Details::Email { direction, subject } => {
            Some(D::Email(pb::LoggedEmail { direction: pb_direction(direction) as i32, subject }))
        }
        Details::Meeting { start, end, outcome } => Some(D::Meeting(pb::Meeting {
            start_time: timestamp_micros(start),
            end_time: timestamp_micros(end),
            outcome: pb_meeting_outcome(outcome) as i32,
        })),
        Details::Task { subject, due_date, owner_id, status } => Some(D::Task(pb::Task {
            subject,
            due_date: due_date.map(contactier_runtime::convert::pb_date),
            owner_id,
            status: pb_task_status(status) as i32,
        })),
    };
    pb::Engagement {
        id: e.id,
        contact_id: e.contact_id,
        r#type: pb_engagement_type(kind) as i32,
        occurred_at: timestamp_micros(e.occurred_at),
        body: e.body,
        details,
        created_by: e.created_by,
        created_at: timestamp_micros(e.created_at),
        updated_at: timestamp_micros(e.updated_at),
    }
}

/// An engagement changed by the paths of an update mask, from the request's values (a path
/// named and left empty clears, or sets the default). Paths of another type are refused.
pub fn masked_engagement(mut e: Engagement, input: pb::Engagement, paths: &[String]) -> Result<Engagement> {
    use pb::engagement::Details as D;
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "required: name the fields to change"));
    }
    let mut seen = std::collections::HashSet::new();
    let given = input.details;
    for (i, path) in paths.iter().enumerate() {
        let field = format!("update_mask.paths[{i}]");
        if !seen.insert(path.as_str()) {
            return Err(Error::invalid(field, format!("{path} is named twice")));
        }
        let kind = e.details.kind();
        let wrong = || Error::invalid(&field, format!("{path}: not a field of a {}", kind.as_str()));
        match (path.as_str(), &mut e.details, &given) {
            ("body", _, _) => e.body = input.body.clone(),
            ("occurred_at", Details::Meeting { .. }, _) => {
                return Err(Error::invalid(field, "a meeting happens at meeting.start_time"));
            }
            ("occurred_at", _, _) => {
                e.occurred_at = micros_of(input.occurred_at.as_ref(), "engagement.occurred_at")?
                    .ok_or_else(|| Error::invalid("engagement.occurred_at", "required when named"))?;
            }
            ("call.direction", Details::Call { direction: d, .. }, g) => {
                let c = match g {
                    Some(D::Call(c)) => c.direction,
                    _ => 0,
                };
                *d = direction(c, "engagement.call.direction")?;
            }
            ("call.duration_seconds", Details::Call { duration_seconds, .. }, g) => {
                *duration_seconds = match g {
                    Some(D::Call(c)) => c.duration_seconds,
                    _ => 0,
                };
            }
            ("call.outcome", Details::Call { outcome, .. }, g) => {
                *outcome = call_outcome(match g {
                    Some(D::Call(c)) => c.outcome,
                    _ => 0,
                })?;
            }
            ("email.direction", Details::Email { direction: d, .. }, g) => {
                let v = match g {
                    Some(D::Email(m)) => m.direction,
                    _ => 0,
                };
                *d = direction(v, "engagement.email.direction")?;
            }
            ("email.subject", Details::Email { subject, .. }, g) => {
                *subject = match g {
                    Some(D::Email(m)) => m.subject.clone(),
                    _ => String::new(),
                };
            }
            ("meeting.start_time", Details::Meeting { start, .. }, g) => {
                let t = match g {
                    Some(D::Meeting(m)) => m.start_time.as_ref(),
                    _ => None,
                };
                *start = micros_of(t, "engagement.meeting.start_time")?
                    .ok_or_else(|| Error::invalid("engagement.meeting.start_time", "required"))?;
                e.occurred_at = *start;
            }
            ("meeting.end_time", Details::Meeting { start, end, .. }, g) => {
                let t = match g {
                    Some(D::Meeting(m)) => m.end_time.as_ref(),
                    _ => None,
                };
                *end = micros_of(t, "engagement.meeting.end_time")?.unwrap_or(*start);
            }
            ("meeting.outcome", Details::Meeting { outcome, .. }, g) => {
                *outcome = meeting_outcome(match g {
                    Some(D::Meeting(m)) => m.outcome,
                    _ => 0,
                })?;
            }
            ("task.subject", Details::Task { subject, .. }, g) => {
                *subject = match g {
                    Some(D::Task(t)) => t.subject.clone(),
                    _ => String::new(),
                };
            }
            ("task.due_date", Details::Task { due_date: d, .. }, g) => {
                *d = due_date(match g {
                    Some(D::Task(t)) => t.due_date.as_ref(),
                    _ => None,
                })?;
            }
            ("task.owner_id", Details::Task { owner_id, .. }, g) => {
                *owner_id = match g {
                    Some(D::Task(t)) => t.owner_id.clone(),
                    _ => String::new(),
                };
            }
            ("task.status", Details::Task { status, .. }, g) => {
                *status = task_status(match g {
                    Some(D::Task(t)) => t.status,
                    _ => 0,
                })?;
            }
            _ => return Err(wrong()),
        }
    }
    checked(&e.body, &e.details, e.occurred_at)?;
    Ok(e)
}

// ---- behaviour ----

/// A recorded event's kind from its contract form, its field at fault within `at`.
pub fn event_kind(k: Option<pb::contact_event::Kind>, at: &str) -> Result<crate::behaviour::Kind> {
    use crate::behaviour::Kind as B;
    use pb::contact_event::Kind as K;
    let required = |field: &str, v: &str| {
        if v.trim().is_empty() { Err(Error::invalid(format!("{at}.{field}"), "required")) } else { Ok(()) }
    };
    Ok(match k {
        Some(K::PageView(p)) => {
            required("page_view.url", &p.url)?;
            B::PageView { url: p.url, traffic_source: p.traffic_source }
        }
        Some(K::FormSubmission(f)) => {
            required("form_submission.form_id", &f.form_id)?;
            B::FormSubmission { form_id: f.form_id, page_url: f.page_url }
        }
        Some(K::EmailOpen(o)) => {
            required("email_open.email_id", &o.email_id)?;
            B::EmailOpen { email_id: o.email_id }
        }
        Some(K::EmailClick(c)) => {
            required("email_click.email_id", &c.email_id)?;
            B::EmailClick { email_id: c.email_id, url: c.url }
        }
        None => {
            return Err(Error::invalid(
                format!("{at}.kind"),
                "page_view, form_submission, email_open or email_click",
            ));
        }
    })
}

pub fn contact_event(e: StoredEvent) -> pb::ContactEvent {
    use pb::contact_event::Kind as K;
    let kind = match e.kind.as_str() {
        "page_view" => Some(K::PageView(pb::PageView { url: e.url, traffic_source: e.traffic_source })),
        "form_submission" => {
            Some(K::FormSubmission(pb::FormSubmission { form_id: e.form_id, page_url: e.url }))
        }
        "email_open" => Some(K::EmailOpen(pb::EmailOpen { email_id: e.email_id })),
        "email_click" => Some(K::EmailClick(pb::EmailClick { email_id: e.email_id, url: e.url })),
        _ => None,
    };
    pb::ContactEvent {
        id: e.id,
        contact: Some(pb::contact_event::Contact::ContactId(e.contact_id)),
        occurred_at: timestamp_micros(e.occurred_at),
        kind,
    }
}

// ---- duplicates ----

pub fn duplicate_candidate(c: Candidate) -> pb::DuplicateCandidate {
    let reason = |r: Reason| match r {
        Reason::Email => pb::DuplicateReason::Email,
        Reason::Phone => pb::DuplicateReason::Phone,
        Reason::NameAndCompany => pb::DuplicateReason::NameAndCompany,
    } as i32;
    pb::DuplicateCandidate {
        contact_id_a: c.a,
        contact_id_b: c.b,
        reasons: c.reasons.into_iter().map(reason).collect(),
        score: c.score,
    }
}

/// A merge's choices by property, each a property of the account.
pub fn merge_choices(choices: BTreeMap<String, i32>, catalog: &Catalog) -> Result<BTreeMap<String, Side>> {
    let mut out = BTreeMap::new();
    for (name, side) in choices {
        let field = format!("property_choices.{name}");
        if catalog.get(&name).is_none() {
            return Err(Error::invalid(field, "no such property"));
        }
        if crate::properties::CALCULATED.contains(&name.as_str()) {
            return Err(Error::invalid(field, "worked out again for the merged contact; not chosen"));
        }
        let side = match pb::MergeSide::try_from(side) {
            Ok(pb::MergeSide::Primary) => Side::Primary,
            Ok(pb::MergeSide::Secondary) => Side::Secondary,
            _ => return Err(Error::invalid(field, "PRIMARY or SECONDARY")),
        };
        out.insert(name, side);
    }
    Ok(out)
}

// ---- lifecycle reports ----

pub fn stage_count((stage, contacts): (String, i64)) -> pb::StageCount {
    pb::StageCount { stage, contacts }
}

pub fn day_stages((date, stages): (chrono::NaiveDate, BTreeMap<String, i64>)) -> pb::DayStages {
    pb::DayStages {
        date: Some(contactier_runtime::convert::pb_date(date)),
        stages: stages.into_iter().map(stage_count).collect(),
    }
}

pub fn stage_conversion(c: crate::lifecycle::Conversion) -> pb::StageConversion {
    pb::StageConversion {
        rate_basis_points: c.basis_points(),
        from_stage: c.from.into(),
        to_stage: c.to.into(),
        entered: c.entered,
        converted: c.converted,
    }
}

pub fn day_sources((date, sources): (chrono::NaiveDate, BTreeMap<String, i64>)) -> pb::DaySources {
    pb::DaySources {
        date: Some(contactier_runtime::convert::pb_date(date)),
        sources: sources.into_iter().map(|(source, contacts)| pb::SourceCount { source, contacts }).collect(),
    }
}

// ---- lead scoring ----

/// A rule's criterion from its contract form; the property must be one of the account's.
pub fn criterion(r: &pb::ScoringRule, catalog: &Catalog) -> Result<crate::scoring::Criterion> {
    use crate::scoring::{Criterion, Operator};
    use pb::scoring_rule::Criterion as C;
    Ok(match &r.criterion {
        Some(C::Property(p)) => {
            if p.property == crate::scoring::PROPERTY {
                return Err(Error::invalid("rule.property.property", "a score cannot count itself"));
            }
            let Some(def) = catalog.get(&p.property) else {
                return Err(Error::invalid("rule.property.property", "no such property"));
            };
            let operator = match pb::ScoringOperator::try_from(p.operator) {
                Ok(pb::ScoringOperator::Eq) => Operator::Eq,
                Ok(pb::ScoringOperator::Neq) => Operator::Neq,
                Ok(pb::ScoringOperator::Contains) => Operator::Contains,
                Ok(pb::ScoringOperator::HasProperty) => Operator::HasProperty,
                Ok(pb::ScoringOperator::NotHasProperty) => Operator::NotHasProperty,
                Ok(pb::ScoringOperator::Gt) => Operator::Gt,
                Ok(pb::ScoringOperator::Lt) => Operator::Lt,
                _ => {
                    return Err(Error::invalid(
                        "rule.property.operator",
                        "EQ, NEQ, CONTAINS, HAS_PROPERTY, NOT_HAS_PROPERTY, GT or LT",
                    ));
                }
            };
            let value = crate::scoring::rule_value(def, operator, &p.value)
                .map_err(|why| Error::invalid("rule.property.value", why))?;
            Criterion::Property { property: p.property.clone(), operator, value }
        }
        Some(C::Behaviour(b)) => {
            let kind = match pb::BehaviourKind::try_from(b.kind) {
                Ok(pb::BehaviourKind::PageView) => "page_view",
                Ok(pb::BehaviourKind::FormSubmission) => "form_submission",
                Ok(pb::BehaviourKind::EmailOpen) => "email_open",
                Ok(pb::BehaviourKind::EmailClick) => "email_click",
                _ => {
                    return Err(Error::invalid(
                        "rule.behaviour.kind",
                        "PAGE_VIEW, FORM_SUBMISSION, EMAIL_OPEN or EMAIL_CLICK",
                    ));
                }
            };
            Criterion::Behaviour {
                kind: kind.into(),
                matches: b.matches.clone(),
                window_days: i64::from(b.window_days),
            }
        }
        Some(C::Unsubscribed(_)) => Criterion::Unsubscribed,
        None => return Err(Error::invalid("rule.criterion", "property, behaviour or unsubscribed")),
    })
}

pub fn scoring_rule(r: crate::store::RuleRow) -> pb::ScoringRule {
    use crate::scoring::{Criterion, Operator};
    use pb::scoring_rule::Criterion as C;
    let criterion = match r.criterion {
        Criterion::Property { property, operator, value } => {
            let operator = match operator {
                Operator::Eq => pb::ScoringOperator::Eq,
                Operator::Neq => pb::ScoringOperator::Neq,
                Operator::Contains => pb::ScoringOperator::Contains,
                Operator::HasProperty => pb::ScoringOperator::HasProperty,
                Operator::NotHasProperty => pb::ScoringOperator::NotHasProperty,
                Operator::Gt => pb::ScoringOperator::Gt,
                Operator::Lt => pb::ScoringOperator::Lt,
            };
            C::Property(pb::PropertyCriterion { property, operator: operator as i32, value })
        }
        Criterion::Behaviour { kind, matches, window_days } => {
            let kind = match kind.as_str() {
                "page_view" => pb::BehaviourKind::PageView,
                "form_submission" => pb::BehaviourKind::FormSubmission,
                "email_open" => pb::BehaviourKind::EmailOpen,
                "email_click" => pb::BehaviourKind::EmailClick,
                _ => pb::BehaviourKind::Unspecified,
            };
            C::Behaviour(pb::BehaviourCriterion {
                kind: kind as i32,
                matches,
                window_days: window_days as i32,
            })
        }
        Criterion::Unsubscribed => C::Unsubscribed(pb::UnsubscribedCriterion {}),
    };
    pb::ScoringRule {
        id: r.id,
        name: r.name,
        points: r.points,
        criterion: Some(criterion),
        created_at: timestamp_micros(r.created_at),
    }
}
