//! The record beyond a contact's properties: the history of its values and its activity
//! timeline. Handlers over the store, called from the service's gRPC layer.

use crate::convert;
use crate::email;
use crate::engagements::{Engagement, Kind};
use crate::error::{Error, Result};
use crate::store::{NewContact, NewEvent, Recorded, Store, Subject};
use contactier_proto::contacts::v1 as pb;
use contactier_runtime::convert::new_id;
use contactier_runtime::paging;
use std::collections::BTreeMap;

/// Changes a GDPR export reads per statement.
const EXPORT_PAGE: i64 = 1_000;

/// Bytes of URLs a page of a contact's events holds (a URL takes up to 2,048 characters, four
/// bytes each at most); the rest of an event is a few hundred bytes.
const URL_BYTES: usize = 2 << 20;

/// Bytes of bodies a page of a timeline holds; the rest of an engagement (subject, outcome,
/// owner) takes up to a few kilobytes more, a page's worth up to about 2 MB.
const BODY_BYTES: usize = 1 << 20;

/// An unknown contact is NOT_FOUND, not an empty history or timeline.
async fn known(store: &Store, account: &str, id: &str) -> Result<()> {
    match store.contacts(account, &[id.to_owned()]).await?.pop() {
        Some(_) => Ok(()),
        None => Err(Error::no_contact(id)),
    }
}

pub async fn property_history(
    store: &Store,
    account: &str,
    r: pb::ListPropertyHistoryRequest,
) -> Result<pb::ListPropertyHistoryResponse> {
    if r.contact_id.is_empty() {
        return Err(Error::invalid("contact_id", "required"));
    }
    let limit = paging::limit(r.page_size)?;
    // A token pages one contact's history of one property (or of all).
    let list = format!("property history {} {}", r.contact_id, r.property);
    let before = paging::after_at(&list, &r.page_token)?;
    // The same answer for an unknown contact with a token as without one.
    known(store, account, &r.contact_id).await?;
    let rows = store
        .property_history(account, &r.contact_id, &r.property, before, limit + 1, paging::PAGE_BYTES)
        .await?;
    let (rows, next_page_token) = paging::trim_bytes(
        rows,
        limit,
        paging::PAGE_BYTES,
        |h| h.value.len(),
        |h| paging::token_at(&list, h.changed_at, &h.id),
    );
    let changes = rows.into_iter().map(convert::property_change).collect();
    Ok(pb::ListPropertyHistoryResponse { changes, next_page_token })
}

/// Every change of a contact's values, every engagement on its timeline and every event it
/// did, newest first, as a GDPR export shows them.
/// What a GDPR export shows of the record beyond the properties.
pub struct Export {
    pub history: serde_json::Value,
    pub timeline: serde_json::Value,
    pub behaviour: serde_json::Value,
}

/// Every entry of a list paged newest first by (time, id), each as JSON.
async fn read_all<T, F, Fut>(
    mut page: F,
    key: impl Fn(&T) -> (i64, String),
    json: impl Fn(T) -> serde_json::Value,
) -> Result<serde_json::Value>
where
    F: FnMut(Option<(i64, String)>) -> Fut,
    Fut: Future<Output = Result<Vec<T>>>,
{
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let rows = page(before).await?;
        let done = (rows.len() as i64) < EXPORT_PAGE;
        before = rows.last().map(&key);
        out.extend(rows.into_iter().map(&json));
        if done {
            return Ok(serde_json::Value::Array(out));
        }
    }
}

pub async fn export(store: &Store, account: &str, contact: &str) -> Result<Export> {
    let history = read_all(
        |before| store.property_history(account, contact, "", before, EXPORT_PAGE, usize::MAX),
        |h| (h.changed_at, h.id.clone()),
        |h| {
            serde_json::json!({
                "property": h.name,
                "value": h.value,
                "source_type": h.source_type,
                "source_id": h.source_id,
                "user_id": h.user_id,
                "changed_at_micros": h.changed_at,
            })
        },
    )
    .await?;
    let timeline = read_all(
        |before| store.engagements(account, contact, None, before, EXPORT_PAGE, usize::MAX),
        |e| (e.occurred_at, e.id.clone()),
        |e| {
            serde_json::json!({
                "id": e.id,
                "type": e.details.kind().as_str(),
                "occurred_at_micros": e.occurred_at,
                "body": e.body,
                "details": e.details,
                "created_by": e.created_by,
            })
        },
    )
    .await?;
    let behaviour = read_all(
        |before| store.contact_events(account, contact, before, EXPORT_PAGE, usize::MAX),
        |e| (e.occurred_at, e.id.clone()),
        |e| {
            serde_json::json!({
                "id": e.id,
                "kind": e.kind,
                "occurred_at_micros": e.occurred_at,
                "url": e.url,
                "form_id": e.form_id,
                "email_id": e.email_id,
                "traffic_source": e.traffic_source,
            })
        },
    )
    .await?;
    Ok(Export { history, timeline, behaviour })
}

/// Who logs: the user, or the calling service.
pub struct Logger<'a> {
    pub subject: &'a str,
    pub user: &'a str,
    pub now: i64,
}

/// Checks a new engagement and says whose timeline it goes on.
pub fn new_engagement(r: pb::CreateEngagementRequest, by: &Logger<'_>) -> Result<(Subject, Engagement)> {
    let input = r.engagement.ok_or_else(|| Error::invalid("engagement", "required"))?;
    let kind = convert::engagement_type(input.r#type)
        .ok_or_else(|| Error::invalid("engagement.type", "NOTE, CALL, EMAIL, MEETING or TASK"))?;
    if r.from_sales_extension && kind != Kind::Call {
        return Err(Error::invalid("from_sales_extension", "only calls come from the sales extension"));
    }
    let details = convert::details(kind, input.details)?;
    let occurred_at = convert::occurred_at(&details, input.occurred_at.as_ref(), by.now)?;
    convert::checked(&input.body, &details, occurred_at)?;
    let subject = match r.contact {
        Some(pb::create_engagement_request::Contact::ContactId(id)) if !id.is_empty() => Subject::Id(id),
        Some(pb::create_engagement_request::Contact::Email(raw)) => {
            let address = email::parse(&raw).map_err(|reason| Error::invalid("email", reason))?;
            let create = kind.creates_contact(r.from_sales_extension).map(|source| NewContact {
                email: address.clone(),
                values: BTreeMap::new(),
                source_type: source.to_owned(),
                source_id: String::new(),
                source_row: 0,
                requested_status: 0,
                user_id: by.user.to_owned(),
            });
            Subject::Email { key: address.key, create }
        }
        _ => return Err(Error::invalid("contact_id", "contact_id or email is required")),
    };
    let e = Engagement {
        id: new_id(),
        contact_id: String::new(),
        occurred_at,
        body: input.body,
        details,
        created_by: by.subject.to_owned(),
        created_at: by.now,
        updated_at: by.now,
    };
    Ok((subject, e))
}

pub async fn engagements(
    store: &Store,
    account: &str,
    r: pb::ListEngagementsRequest,
) -> Result<pb::ListEngagementsResponse> {
    if r.contact_id.is_empty() {
        return Err(Error::invalid("contact_id", "required"));
    }
    let kind = match pb::EngagementType::try_from(r.r#type) {
        Ok(pb::EngagementType::Unspecified) => None,
        Ok(_) => convert::engagement_type(r.r#type),
        Err(_) => return Err(Error::invalid("type", "NOTE, CALL, EMAIL, MEETING, TASK or unset")),
    };
    let limit = paging::limit(r.page_size)?;
    let list = format!("engagements {} {}", r.contact_id, kind.map_or("", Kind::as_str));
    let before = paging::after_at(&list, &r.page_token)?;
    // The same answer for an unknown contact with a token as without one.
    known(store, account, &r.contact_id).await?;
    let rows = store.engagements(account, &r.contact_id, kind, before, limit + 1, BODY_BYTES).await?;
    let (rows, next_page_token) = paging::trim_bytes(
        rows,
        limit,
        BODY_BYTES,
        |e| e.body.len(),
        |e| paging::token_at(&list, e.occurred_at, &e.id),
    );
    Ok(pb::ListEngagementsResponse {
        engagements: rows.into_iter().map(convert::engagement).collect(),
        next_page_token,
    })
}

pub async fn update_engagement(
    store: &Store,
    account: &str,
    r: pb::UpdateEngagementRequest,
    now: i64,
) -> Result<pb::Engagement> {
    let input = r.engagement.ok_or_else(|| Error::invalid("engagement", "required"))?;
    if input.id.is_empty() {
        return Err(Error::invalid("engagement.id", "required"));
    }
    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
    let id = input.id.clone();
    let e = store
        .update_engagement(account, &id, now, |before| convert::masked_engagement(before, input, &paths))
        .await?;
    Ok(convert::engagement(e))
}

/// A call's events checked one by one, by request index.
#[derive(Default)]
pub struct Checked {
    pub good: Vec<(usize, NewEvent)>,
    pub refused: Vec<(usize, Error)>,
    /// Form submissions that may not make their contact: the caller is a person without the
    /// admin scope, and forms are a source the system that takes them sets.
    pub withheld: Vec<usize>,
}

/// Checks each event on its own: a bad one is refused alone. `make_form_contacts`: whether a
/// form submission for an unknown address may make its contact.
pub fn new_events(events: Vec<pb::ContactEvent>, now: i64, make_form_contacts: bool) -> Checked {
    let mut checked = Checked::default();
    for (i, e) in events.into_iter().enumerate() {
        match new_event(e, i, now, make_form_contacts) {
            Ok((n, withheld)) => {
                if withheld {
                    checked.withheld.push(i);
                }
                checked.good.push((i, n));
            }
            Err(err) => checked.refused.push((i, err)),
        }
    }
    checked
}

/// Most a recorded event may lie in the future (clocks disagree).
const FUTURE_SKEW_MICROS: i64 = 86_400_000_000;

/// The earliest time an event may have: 2000-01-01T00:00:00Z. A time before it is a sender's
/// clock at zero or unset, and would make the contact's first visit decades old.
const EARLIEST_MICROS: i64 = 946_684_800_000_000;

fn new_event(e: pb::ContactEvent, i: usize, now: i64, make_form_contacts: bool) -> Result<(NewEvent, bool)> {
    let at = format!("events[{i}]");
    contactier_proto::checks::check_item(&e, "events", i).map_err(Error::from)?;
    if e.id.trim().is_empty() {
        return Err(Error::invalid(format!("{at}.id"), "required: it makes a replay change nothing"));
    }
    let kind = convert::event_kind(e.kind, &at)?;
    let occurred_at = match e.occurred_at {
        None => now,
        Some(t) => chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .filter(|_| (0..1_000_000_000).contains(&t.nanos) && t.seconds > 0)
            .map(|d| d.timestamp_micros())
            .ok_or_else(|| Error::invalid(format!("{at}.occurred_at"), "not a valid time"))?,
    };
    if occurred_at > now + FUTURE_SKEW_MICROS {
        return Err(Error::invalid(format!("{at}.occurred_at"), "not more than a day in the future"));
    }
    if occurred_at < EARLIEST_MICROS {
        return Err(Error::invalid(format!("{at}.occurred_at"), "not before 2000-01-01T00:00:00Z"));
    }
    let mut withheld = false;
    let subject = match e.contact {
        Some(pb::contact_event::Contact::ContactId(id)) if !id.is_empty() => Subject::Id(id),
        Some(pb::contact_event::Contact::Email(raw)) => {
            let address = email::parse(&raw).map_err(|r| Error::invalid(format!("{at}.email"), r))?;
            // A form submission makes its contact; other behaviour needs one.
            let form = matches!(kind, crate::behaviour::Kind::FormSubmission { .. });
            withheld = form && !make_form_contacts;
            let create = (form && make_form_contacts).then(|| NewContact {
                email: address.clone(),
                values: BTreeMap::new(),
                source_type: "FORM".into(),
                source_id: match &kind {
                    crate::behaviour::Kind::FormSubmission { form_id, .. } => form_id.clone(),
                    _ => String::new(),
                },
                source_row: 0,
                requested_status: 0,
                user_id: String::new(),
            });
            Subject::Email { key: address.key, create }
        }
        _ => return Err(Error::invalid(format!("{at}.contact_id"), "contact_id or email is required")),
    };
    let time_given = e.occurred_at.is_some();
    Ok((NewEvent { id: e.id, subject, occurred_at, time_given, kind }, withheld))
}

/// The answer of a recording: each event's outcome by request index.
pub fn recorded(
    outcomes: Vec<(usize, Result<Recorded>)>,
    error: impl Fn(usize, &Error) -> pb::BatchItemError,
) -> pb::RecordContactEventsResponse {
    let mut answer = pb::RecordContactEventsResponse::default();
    let mut outcomes = outcomes;
    outcomes.sort_by_key(|(i, _)| *i);
    for (i, o) in outcomes {
        match o {
            Ok(r) => answer.results.push(pb::ContactEventResult {
                index: i as i32,
                contact_id: r.contact_id,
                replayed: r.replayed,
                contact_created: r.contact_created,
            }),
            Err(e) => answer.errors.push(error(i, &e)),
        }
    }
    answer
}

pub async fn contact_events(
    store: &Store,
    account: &str,
    r: pb::ListContactEventsRequest,
) -> Result<pb::ListContactEventsResponse> {
    if r.contact_id.is_empty() {
        return Err(Error::invalid("contact_id", "required"));
    }
    let limit = paging::limit(r.page_size)?;
    let list = format!("contact events {}", r.contact_id);
    let before = paging::after_at(&list, &r.page_token)?;
    // The same answer for an unknown contact with a token as without one.
    known(store, account, &r.contact_id).await?;
    let rows = store.contact_events(account, &r.contact_id, before, limit + 1, URL_BYTES).await?;
    let (rows, next_page_token) = paging::trim_bytes(
        rows,
        limit,
        URL_BYTES,
        |e| e.url.len(),
        |e| paging::token_at(&list, e.occurred_at, &e.id),
    );
    Ok(pb::ListContactEventsResponse {
        events: rows.into_iter().map(convert::contact_event).collect(),
        next_page_token,
    })
}

pub async fn duplicate_candidates(
    store: &Store,
    account: &str,
    r: pb::ListDuplicateCandidatesRequest,
) -> Result<pb::ListDuplicateCandidatesResponse> {
    let limit = paging::limit(r.page_size)?;
    let list = format!("duplicate candidates {}", r.min_score);
    let after = paging::after(&list, &r.page_token)?
        .map(|k| k.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .map(|p| p.ok_or_else(|| Error::invalid("page_token", "not a page token of duplicate candidates")))
        .transpose()?;
    let page = store.duplicate_candidates(account, after, limit, r.min_score).await?;
    let next_page_token =
        page.next.map(|(a, b)| paging::token(&list, &format!("{a}/{b}"))).unwrap_or_default();
    Ok(pb::ListDuplicateCandidatesResponse {
        candidates: page.candidates.into_iter().map(convert::duplicate_candidate).collect(),
        next_page_token,
    })
}

pub async fn dismiss_duplicate(
    store: &Store,
    account: &str,
    by: &str,
    r: pb::DismissDuplicateRequest,
    now: i64,
) -> Result<()> {
    for (field, id) in [("contact_id_a", &r.contact_id_a), ("contact_id_b", &r.contact_id_b)] {
        if id.is_empty() {
            return Err(Error::invalid(field, "required"));
        }
    }
    if r.contact_id_a == r.contact_id_b {
        return Err(Error::invalid("contact_id_b", "must differ from contact_id_a"));
    }
    store.dismiss_duplicate(account, (&r.contact_id_a, &r.contact_id_b), by, now).await
}

pub async fn lifecycle_report(
    store: &Store,
    account: &str,
    r: pb::GetLifecycleReportRequest,
) -> Result<pb::GetLifecycleReportResponse> {
    use crate::lifecycle;
    let date = |d: Option<&contactier_proto::common::v1::Date>, field: &str| {
        contactier_runtime::convert::date(d).map_err(|reason| Error::invalid(field, reason))
    };
    let first = date(r.start_date.as_ref(), "start_date")?;
    let last = date(r.end_date.as_ref(), "end_date")?;
    if last < first {
        return Err(Error::invalid("end_date", "must not be before start_date"));
    }
    if (last - first).num_days() as u64 >= lifecycle::MAX_DAYS {
        return Err(Error::invalid(
            "end_date",
            format!("at most {} days from start_date", lifecycle::MAX_DAYS),
        ));
    }
    let tz: chrono_tz::Tz = if r.time_zone.is_empty() {
        chrono_tz::UTC
    } else {
        r.time_zone
            .parse()
            .map_err(|_| Error::invalid("time_zone", "an IANA zone name, e.g. Europe/Zurich"))?
    };
    let days = lifecycle::day_ends(first, last, &tz);
    let start =
        lifecycle::day_ends(first.pred_opt().unwrap_or(first), first.pred_opt().unwrap_or(first), &tz)
            .first()
            .map_or(i64::MIN, |(_, end)| *end);
    let end = days.last().map_or(start, |(_, end)| *end);
    let changes = store.stage_changes(account, end).await?;
    let created = store.created_between(account, start, end).await?;
    Ok(pb::GetLifecycleReportResponse {
        current: store.stages_now(account).await?.into_iter().map(convert::stage_count).collect(),
        daily: lifecycle::daily_counts(&changes, &days).into_iter().map(convert::day_stages).collect(),
        conversions: lifecycle::conversions(&changes, start, end)
            .into_iter()
            .map(convert::stage_conversion)
            .collect(),
        new_contacts: lifecycle::new_per_day(&created, &days).into_iter().map(convert::day_sources).collect(),
    })
}
