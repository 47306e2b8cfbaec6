//! Tracked behaviour's storage: each event once under the caller's id, and the contact's
//! visits moved in the same transaction by the page views that make them.

use super::{NewContact, Store, Subject, VisitColumns, insert_contacts};
use crate::behaviour::{self, Kind, Visits};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use contactier_runtime::convert::micros;
use contactier_runtime::db::{Db, placeholders};
use contactier_runtime::sql::{Sql, Tx};
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};

/// An event to record.
pub struct NewEvent {
    pub id: String,
    pub subject: Subject,
    pub occurred_at: i64,
    /// False when the caller left the time to the service (then `occurred_at` is when it was
    /// first recorded, and a retry is the same event whenever it comes).
    pub time_given: bool,
    pub kind: Kind,
}

/// What recording one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub contact_id: String,
    /// Recorded before under its id: nothing changed.
    pub replayed: bool,
    pub contact_created: bool,
}

/// A recorded event as kept.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: String,
    pub contact_id: String,
    pub kind: String,
    pub occurred_at: i64,
    pub url: String,
    pub form_id: String,
    pub email_id: String,
    pub traffic_source: String,
}

const SET_VISITS: &str = "UPDATE contacts SET visits = $1, first_visit_at = $2, last_visit_at = $3, \
     last_view_at = $4, original_source = $5, latest_source = $6 WHERE account_id = $7 AND id = $8";

const PAGE_VIEWS: &str = "SELECT occurred_at, traffic_source FROM contact_events \
     WHERE account_id = $1 AND contact_id = $2 AND kind = 'page_view' ORDER BY occurred_at, id";

/// Newest first by (occurred_at, id); events after the one whose URL brings the page past $6
/// bytes are not read out.
const PAGE: &str = "SELECT id, contact_id, kind, occurred_at, url, form_id, email_id, traffic_source FROM \
     (SELECT id, contact_id, kind, occurred_at, url, form_id, email_id, traffic_source, \
     SUM(octet_length(url)) OVER (ORDER BY occurred_at DESC, id DESC) - octet_length(url) AS bytes_before \
     FROM contact_events WHERE account_id = $1 AND contact_id = $2 \
     AND (occurred_at, id) < ($3, $4) ORDER BY occurred_at DESC, id DESC LIMIT $5) p \
     WHERE p.bytes_before <= $6 ORDER BY occurred_at DESC, id DESC";

fn visits_of(c: VisitColumns) -> Visits {
    Visits {
        count: c.visits,
        first_at: c.first_visit_at,
        last_at: c.last_visit_at,
        last_view_at: c.last_view_at,
        original_source: c.original_source,
        latest_source: c.latest_source,
    }
}

async fn save_visits(tx: &mut impl Tx, account: &str, contact: &str, v: &Visits) -> Result<()> {
    let q = Sql::new(SET_VISITS)
        .bind(v.count)
        .bind(v.first_at)
        .bind(v.last_at)
        .bind(v.last_view_at)
        .bind(&v.original_source)
        .bind(&v.latest_source)
        .bind(account)
        .bind(contact);
    tx.execute(q).await?;
    Ok(())
}

/// Counts a contact's visits again from all its page views (after a merge brought another's).
pub(super) async fn recount_visits(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    let views: Vec<(i64, String)> = tx.fetch_all(Sql::new(PAGE_VIEWS).bind(account).bind(contact)).await?;
    let v = views.iter().fold(Visits::default(), |v, (at, source)| behaviour::page_view(&v, *at, source));
    save_visits(tx, account, contact, &v).await
}

/// Moves a contact's events to another (a merge keeps both).
pub(super) async fn move_events(tx: &mut impl Tx, account: &str, from: &str, to: &str) -> Result<()> {
    let q = "UPDATE contact_events SET contact_id = $3 WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(from).bind(to)).await?;
    recount_visits(tx, account, to).await
}

/// Forgets a contact's events and visits (anonymisation).
pub(super) async fn forget_events(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    let q = "DELETE FROM contact_events WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    save_visits(tx, account, contact, &Visits::default()).await
}

/// The URL, form id, email id and traffic source columns of an event.
fn columns(kind: &Kind) -> (&str, &str, &str, &str) {
    match kind {
        Kind::PageView { url, traffic_source } => (url, "", "", traffic_source),
        Kind::FormSubmission { form_id, page_url } => (page_url, form_id, "", ""),
        Kind::EmailOpen { email_id } => ("", "", email_id, ""),
        Kind::EmailClick { email_id, url } => (url, "", email_id, ""),
    }
}

/// A contact's visits with its id, as the batch reads them.
#[derive(sqlx::FromRow)]
struct VisitRow {
    id: String,
    #[sqlx(flatten)]
    visits: VisitColumns,
}

/// Who each event is about: a statement for the ids, one for the emails, and one multi-row
/// insert for the contacts forms make (the first form of an address in `order` makes it).
async fn resolve(
    tx: &mut impl Tx,
    db: &Db,
    account: &str,
    events: &mut [NewEvent],
    order: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<Result<(String, bool)>>> {
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.subject {
            Subject::Id(id) => Some(id.as_str()),
            Subject::Email { .. } => None,
        })
        .collect();
    let keys: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.subject {
            Subject::Email { key, .. } => Some(key.as_str()),
            Subject::Id(_) => None,
        })
        .collect();
    let mut known: HashSet<String> = HashSet::new();
    if !ids.is_empty() {
        let q = format!("SELECT id FROM contacts WHERE account_id = $1 AND {}", db.json_in("id", 2));
        let ids = serde_json::to_string(&ids).expect("JSON of strings");
        let found: Vec<(String,)> = tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(ids)).await?;
        known.extend(found.into_iter().map(|r| r.0));
    }
    let mut by_key: HashMap<String, String> = HashMap::new();
    if !keys.is_empty() {
        let q = format!(
            "SELECT email_key, id FROM contacts WHERE account_id = $1 AND {}",
            db.json_in("email_key", 2)
        );
        let keys = serde_json::to_string(&keys).expect("JSON of strings");
        let found: Vec<(String, String)> =
            tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(keys)).await?;
        by_key.extend(found);
    }
    // The contacts to make, each by the first form of its address.
    let mut makers: Vec<usize> = Vec::new();
    let mut news: Vec<NewContact> = Vec::new();
    let mut making: HashSet<String> = HashSet::new();
    for &i in order {
        if let Subject::Email { key, create } = &mut events[i].subject
            && create.is_some()
            && !by_key.contains_key(key)
            && making.insert(key.clone())
        {
            makers.push(i);
            news.extend(create.take());
        }
    }
    let mut made: HashMap<usize, String> = HashMap::new();
    if !news.is_empty() {
        for (&i, outcome) in makers.iter().zip(insert_contacts(tx, db, account, &news, now).await?) {
            let (id, ours) = match outcome {
                Ok(row) => (row.id, true),
                // Made meanwhile by another call: the events go to it, and that call made it.
                Err(Error::EmailTaken(Some(id))) => (id, false),
                Err(e) => return Err(e),
            };
            if let Subject::Email { key, .. } = &events[i].subject {
                by_key.insert(key.clone(), id.clone());
            }
            if ours {
                made.insert(i, id);
            }
        }
    }
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| match &e.subject {
            _ if made.contains_key(&i) => Ok((made[&i].clone(), true)),
            Subject::Id(id) if known.contains(id) => Ok((id.clone(), false)),
            Subject::Id(id) => Err(Error::no_contact(id)),
            Subject::Email { key, .. } => match by_key.get(key) {
                Some(id) => Ok((id.clone(), false)),
                None => Err(Error::NoneWith { kind: "contact", key: "email" }),
            },
        })
        .collect())
}

impl Store {
    /// Records events in one transaction, each with its own outcome, in the order they
    /// happened (so visits come out the same whatever order a batch lists them in). A few
    /// statements for the whole batch: its contacts found, their visits held and read, its
    /// events inserted, the visits saved.
    pub async fn record_events(
        &self,
        account: &str,
        mut events: Vec<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Recorded>>> {
        let db = &self.db;
        // Contacts a batch's forms make come first, so the batch's other events for them find
        // them whatever their times.
        let makes_contact = |e: &NewEvent| matches!(&e.subject, Subject::Email { create: Some(_), .. });
        // Views at one instant go by id, as a recount takes them, whatever the list's order.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by(|&i, &j| {
            let key =
                |k: usize| (!makes_contact(&events[k]), events[k].occurred_at, events[k].id.as_str(), k);
            key(i).cmp(&key(j))
        });
        let mut tx = self.begin_values_write(account).await?;
        let contacts = resolve(&mut tx, db, account, &mut events, &order, now).await?;

        // The contacts page views move are held (PostgreSQL) in one order, so two calls for the
        // same contacts take turns rather than wait on each other in a circle.
        let mut viewed: Vec<&str> = order
            .iter()
            .filter(|&&i| matches!(events[i].kind, Kind::PageView { .. }))
            .filter_map(|&i| contacts[i].as_ref().ok().map(|c| c.0.as_str()))
            .collect();
        viewed.sort_unstable();
        viewed.dedup();
        let mut visits: HashMap<String, Visits> = HashMap::new();
        if !viewed.is_empty() {
            let lock = if matches!(db, Db::Postgres(_)) { " FOR UPDATE" } else { "" };
            let q = format!(
                "SELECT id, visits, first_visit_at, last_visit_at, last_view_at, original_source, \
                 latest_source FROM contacts WHERE account_id = $1 AND {} ORDER BY id{lock}",
                db.json_in("id", 2)
            );
            let viewed = serde_json::to_string(&viewed).expect("JSON of strings");
            let rows: Vec<VisitRow> =
                tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(viewed)).await?;
            visits.extend(rows.into_iter().map(|r| (r.id, visits_of(r.visits))));
        }

        // Each id once, by the first event under it that found its contact.
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut candidates: Vec<usize> = Vec::new();
        for &i in &order {
            if contacts[i].is_ok() && !first.contains_key(events[i].id.as_str()) {
                first.insert(events[i].id.as_str(), i);
                candidates.push(i);
            }
        }
        let mut inserted: HashSet<String> = HashSet::new();
        for chunk in candidates.chunks(db.rows_per_statement(10)) {
            let q = format!(
                "INSERT INTO contact_events (account_id, id, contact_id, kind, occurred_at, url, form_id, \
                 email_id, traffic_source, recorded_at) VALUES {} ON CONFLICT (account_id, id) DO NOTHING \
                 RETURNING id",
                placeholders(chunk.len(), 10)
            );
            let q = chunk.iter().fold(Sql::new(AssertSqlSafe(q)), |q, &i| {
                let e = &events[i];
                let (url, form_id, email_id, source) = columns(&e.kind);
                let contact = &contacts[i].as_ref().expect("found").0;
                q.bind(account)
                    .bind(&e.id)
                    .bind(contact)
                    .bind(e.kind.as_str())
                    .bind(e.occurred_at)
                    .bind(url)
                    .bind(form_id)
                    .bind(email_id)
                    .bind(source)
                    .bind(micros(now))
            });
            let rows: Vec<(String,)> = tx.fetch_all(q).await?;
            inserted.extend(rows.into_iter().map(|r| r.0));
        }
        // What is kept under each id the batch repeats or that was recorded before.
        let mut kept: HashMap<String, (String, String, i64)> = HashMap::new();
        for &i in &candidates {
            let e = &events[i];
            if inserted.contains(&e.id) {
                let contact = contacts[i].as_ref().expect("found").0.clone();
                kept.insert(e.id.clone(), (contact, e.kind.as_str().to_owned(), e.occurred_at));
            }
        }
        let before: Vec<&str> =
            candidates.iter().map(|&i| events[i].id.as_str()).filter(|id| !inserted.contains(*id)).collect();
        if !before.is_empty() {
            let q = format!(
                "SELECT id, contact_id, kind, occurred_at FROM contact_events WHERE account_id = $1 AND {}",
                db.json_in("id", 2)
            );
            let before = serde_json::to_string(&before).expect("JSON of strings");
            let rows: Vec<(String, String, String, i64)> =
                tx.fetch_all(Sql::new(AssertSqlSafe(q)).bind(account).bind(before)).await?;
            kept.extend(rows.into_iter().map(|(id, contact, kind, at)| (id, (contact, kind, at))));
        }

        let mut out: Vec<Option<Result<Recorded>>> = (0..events.len()).map(|_| None).collect();
        let mut touched: Vec<String> = Vec::new();
        let mut late: Vec<String> = Vec::new();
        for &i in &order {
            let e = &events[i];
            let (contact_id, contact_created) = match &contacts[i] {
                Ok(found) => found.clone(),
                Err(err) => {
                    out[i] = Some(Err(err.clone()));
                    continue;
                }
            };
            let new = first.get(e.id.as_str()) == Some(&i) && inserted.contains(&e.id);
            if !new {
                // The same event again changes nothing; another event under its id is refused.
                let same = kept.get(&e.id).is_some_and(|(contact, kind, at)| {
                    *contact == contact_id
                        && kind == e.kind.as_str()
                        && (*at == e.occurred_at || !e.time_given)
                });
                out[i] = Some(if same {
                    Ok(Recorded { contact_id, replayed: true, contact_created })
                } else {
                    let message = "id: recorded before for another event".to_owned();
                    Err(Error::Exists { kind: "event", id: e.id.clone(), message })
                });
                continue;
            }
            if let Kind::PageView { traffic_source, .. } = &e.kind
                && let Some(v) = visits.get_mut(&contact_id)
            {
                let at = e.occurred_at;
                let tie = at == v.last_view_at && (at == v.last_at || at == v.first_at);
                if v.count > 0 && (at < v.last_view_at || tie) {
                    // A late view, or one at the instant a visit began (whose source the
                    // smaller id gives): counted again from all of them, so the order they
                    // came in makes no difference.
                    late.push(contact_id.clone());
                } else {
                    *v = behaviour::page_view(v, e.occurred_at, traffic_source);
                }
            }
            touched.push(contact_id.clone());
            out[i] = Some(Ok(Recorded { contact_id, replayed: false, contact_created }));
        }
        late.sort_unstable();
        late.dedup();
        for id in &late {
            visits.remove(id);
            recount_visits(&mut tx, account, id).await?;
        }
        touched.sort_unstable();
        touched.dedup();
        let moved: Vec<serde_json::Value> = visits
            .iter()
            .filter(|(id, _)| touched.binary_search(id).is_ok())
            .map(|(id, v)| {
                serde_json::json!({
                    "id": id, "visits": v.count, "first_at": v.first_at, "last_at": v.last_at,
                    "last_view_at": v.last_view_at, "original_source": v.original_source,
                    "latest_source": v.latest_source,
                })
            })
            .collect();
        if !moved.is_empty() {
            let (records, matched) = db.update_records(
                "contacts",
                2,
                &[
                    ("id", "text"),
                    ("visits", "bigint"),
                    ("first_at", "bigint"),
                    ("last_at", "bigint"),
                    ("last_view_at", "bigint"),
                    ("original_source", "text"),
                    ("latest_source", "text"),
                ],
            );
            let q = format!(
                "UPDATE contacts SET visits = x.visits, first_visit_at = x.first_at, last_visit_at = x.last_at, \
                 last_view_at = x.last_view_at, original_source = x.original_source, \
                 latest_source = x.latest_source FROM {records} WHERE {matched}"
            );
            let moved = serde_json::Value::Array(moved).to_string();
            tx.execute(Sql::new(AssertSqlSafe(q)).bind(account).bind(moved)).await?;
        }
        if !touched.is_empty() && super::scoring::scores_anything(&mut tx, account).await? {
            super::scoring::rescore(&mut tx, db, account, &touched, micros(now)).await?;
        }
        tx.commit().await?;
        Ok(out.into_iter().map(|r| r.expect("every event has its outcome")).collect())
    }

    /// A contact's events, newest first, before the (time, id) given.
    pub async fn contact_events(
        &self,
        account: &str,
        contact: &str,
        before: Option<(i64, String)>,
        limit: i64,
        bytes: usize,
    ) -> Result<Vec<StoredEvent>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let page = Sql::new(PAGE).bind(account).bind(contact).bind(at).bind(id).bind(limit).bind(bytes);
        Ok(self.db.fetch_all(page).await?)
    }
}
