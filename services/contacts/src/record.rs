//! The record beyond a contact's properties: the history of its values and its activity
//! timeline. Handlers over the store, called from the service's gRPC layer.

use crate::convert;
use crate::email;
use crate::engagements::{Engagement, Kind};
use crate::error::{Error, Result};
use crate::store::{NewContact, Store, Subject};
use contactier_proto::contacts::v1 as pb;
use contactier_runtime::convert::new_id;
use contactier_runtime::paging;
use std::collections::BTreeMap;

/// Changes a GDPR export reads per statement.
const EXPORT_PAGE: i64 = 1_000;

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
    if before.is_none() {
        known(store, account, &r.contact_id).await?;
    }
    let rows = store.property_history(account, &r.contact_id, &r.property, before, limit + 1).await?;
    let (rows, next_page_token) = paging::trim(rows, limit, |h| paging::token_at(&list, h.changed_at, &h.id));
    let changes = rows.into_iter().map(convert::property_change).collect();
    Ok(pb::ListPropertyHistoryResponse { changes, next_page_token })
}

/// Every change of a contact's values and every engagement on its timeline, newest first, as a
/// GDPR export shows them.
pub async fn export(
    store: &Store,
    account: &str,
    contact: &str,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let mut history = Vec::new();
    let mut before = None;
    loop {
        let rows = store.property_history(account, contact, "", before, EXPORT_PAGE).await?;
        let done = (rows.len() as i64) < EXPORT_PAGE;
        before = rows.last().map(|h| (h.changed_at, h.id.clone()));
        history.extend(rows.into_iter().map(|h| {
            serde_json::json!({
                "property": h.name,
                "value": h.value,
                "source_type": h.source_type,
                "source_id": h.source_id,
                "user_id": h.user_id,
                "changed_at_micros": h.changed_at,
            })
        }));
        if done {
            break;
        }
    }
    let mut timeline = Vec::new();
    let mut before = None;
    loop {
        let rows = store.engagements(account, contact, None, before, EXPORT_PAGE).await?;
        let done = (rows.len() as i64) < EXPORT_PAGE;
        before = rows.last().map(|e| (e.occurred_at, e.id.clone()));
        timeline.extend(rows.into_iter().map(|e| {
            serde_json::json!({
                "id": e.id,
                "type": e.details.kind().as_str(),
                "occurred_at_micros": e.occurred_at,
                "body": e.body,
                "details": e.details,
                "created_by": e.created_by,
            })
        }));
        if done {
            break;
        }
    }
    Ok((serde_json::Value::Array(history), serde_json::Value::Array(timeline)))
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
    if before.is_none() {
        known(store, account, &r.contact_id).await?;
    }
    let rows = store.engagements(account, &r.contact_id, kind, before, limit + 1).await?;
    let (rows, next_page_token) =
        paging::trim(rows, limit, |e| paging::token_at(&list, e.occurred_at, &e.id));
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
