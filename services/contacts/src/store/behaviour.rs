//! Tracked behaviour's storage: each event once under the caller's id, and the contact's
//! visits moved in the same transaction by the page views that make them.

use super::{Store, Subject, VisitColumns, insert_contacts};
use crate::behaviour::{self, Kind, Visits};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use contactier_runtime::convert::micros;
use contactier_runtime::sql::{Sql, Tx};

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

const INSERT: &str = "INSERT INTO contact_events (account_id, id, contact_id, kind, occurred_at, url, \
     form_id, email_id, traffic_source, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (account_id, id) DO NOTHING";

const VISITS: &str = "SELECT visits, first_visit_at, last_visit_at, last_view_at, original_source, \
     latest_source FROM contacts WHERE account_id = $1 AND id = $2";

const KEPT_EVENT: &str =
    "SELECT contact_id, kind, occurred_at FROM contact_events WHERE account_id = $1 AND id = $2";

const VISITS_FOR_UPDATE: &str = "SELECT visits, first_visit_at, last_visit_at, last_view_at, \
     original_source, latest_source FROM contacts WHERE account_id = $1 AND id = $2 FOR UPDATE";

const SET_VISITS: &str = "UPDATE contacts SET visits = $1, first_visit_at = $2, last_visit_at = $3, \
     last_view_at = $4, original_source = $5, latest_source = $6 WHERE account_id = $7 AND id = $8";

const PAGE_VIEWS: &str = "SELECT occurred_at, traffic_source FROM contact_events \
     WHERE account_id = $1 AND contact_id = $2 AND kind = 'page_view' ORDER BY occurred_at, id";

/// Newest first by (occurred_at, id).
const PAGE: &str = "SELECT id, contact_id, kind, occurred_at, url, form_id, email_id, traffic_source \
     FROM contact_events WHERE account_id = $1 AND contact_id = $2 \
     AND (occurred_at < $3 OR (occurred_at = $3 AND id < $4)) ORDER BY occurred_at DESC, id DESC LIMIT $5";

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

async fn contact_of(
    tx: &mut impl Tx,
    db: &contactier_runtime::db::Db,
    account: &str,
    subject: Subject,
    now: DateTime<Utc>,
) -> Result<(String, bool)> {
    match subject {
        Subject::Id(id) => {
            let q = "SELECT id FROM contacts WHERE account_id = $1 AND id = $2";
            let found: Option<String> = tx.scalar_optional(Sql::new(q).bind(account).bind(&id)).await?;
            Ok((found.ok_or_else(|| Error::no_contact(&id))?, false))
        }
        Subject::Email { key, create } => {
            let q = "SELECT id FROM contacts WHERE account_id = $1 AND email_key = $2";
            let found: Option<String> = tx.scalar_optional(Sql::new(q).bind(account).bind(&key)).await?;
            match (found, create) {
                (Some(id), _) => Ok((id, false)),
                (None, Some(new)) => {
                    let mut made = insert_contacts(tx, db, account, &[new], now).await?;
                    Ok((made.pop().expect("one contact, one outcome")?.id, true))
                }
                (None, None) => Err(Error::NoneWith { kind: "contact", key: "email" }),
            }
        }
    }
}

impl Store {
    /// Records events in one transaction, each with its own outcome, in the order they
    /// happened (so visits come out the same whatever order a batch lists them in).
    pub async fn record_events(
        &self,
        account: &str,
        events: Vec<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Recorded>>> {
        let mut order: Vec<(usize, NewEvent)> = events.into_iter().enumerate().collect();
        // Contacts a batch's forms make come first, so the batch's other events for them find
        // them whatever their times.
        let makes_contact = |e: &NewEvent| matches!(&e.subject, Subject::Email { create: Some(_), .. });
        order.sort_by_key(|(i, e)| (!makes_contact(e), e.occurred_at, *i));
        let mut out: Vec<Option<Result<Recorded>>> = (0..order.len()).map(|_| None).collect();
        let visits_query = match self.db {
            contactier_runtime::db::Db::Postgres(_) => VISITS_FOR_UPDATE,
            contactier_runtime::db::Db::Sqlite(_) => VISITS,
        };
        let mut tx = self.begin_values_write(account).await?;
        let mut touched: Vec<String> = Vec::new();
        for (i, e) in order {
            let (contact_id, contact_created) =
                match contact_of(&mut tx, &self.db, account, e.subject, now).await {
                    Ok(found) => found,
                    Err(err @ (Error::NotFound(_) | Error::NoneWith { .. })) => {
                        out[i] = Some(Err(err));
                        continue;
                    }
                    Err(err) => return Err(err),
                };
            let (url, form_id, email_id, source) = match &e.kind {
                Kind::PageView { url, traffic_source } => (url.as_str(), "", "", traffic_source.as_str()),
                Kind::FormSubmission { form_id, page_url } => (page_url.as_str(), form_id.as_str(), "", ""),
                Kind::EmailOpen { email_id } => ("", "", email_id.as_str(), ""),
                Kind::EmailClick { email_id, url } => (url.as_str(), "", email_id.as_str(), ""),
            };
            let insert = Sql::new(INSERT)
                .bind(account)
                .bind(&e.id)
                .bind(&contact_id)
                .bind(e.kind.as_str())
                .bind(e.occurred_at)
                .bind(url)
                .bind(form_id)
                .bind(email_id)
                .bind(source)
                .bind(micros(now));
            let replayed = tx.execute(insert).await? == 0;
            if replayed {
                // The same event again changes nothing; another event under its id is refused.
                let kept: Option<(String, String, i64)> =
                    tx.fetch_optional(Sql::new(KEPT_EVENT).bind(account).bind(&e.id)).await?;
                let same = kept.is_some_and(|(contact, kind, at)| {
                    contact == contact_id && kind == e.kind.as_str() && (at == e.occurred_at || !e.time_given)
                });
                if !same {
                    let message = "id: recorded before for another event".to_owned();
                    out[i] = Some(Err(Error::Exists { kind: "event", id: e.id.clone(), message }));
                    continue;
                }
            }
            if !replayed && let Kind::PageView { traffic_source, .. } = &e.kind {
                // The contact's row is held while its visits move (PostgreSQL), so two calls for
                // one contact take turns.
                let before: VisitColumns =
                    tx.fetch_one(Sql::new(visits_query).bind(account).bind(&contact_id)).await?;
                let before = visits_of(before);
                if before.count > 0 && e.occurred_at < before.last_view_at {
                    // A late view: counted again from all of them, so the order they came in
                    // makes no difference.
                    recount_visits(&mut tx, account, &contact_id).await?;
                } else {
                    let after = behaviour::page_view(&before, e.occurred_at, traffic_source);
                    save_visits(&mut tx, account, &contact_id, &after).await?;
                }
            }
            if !replayed {
                touched.push(contact_id.clone());
            }
            out[i] = Some(Ok(Recorded { contact_id, replayed, contact_created }));
        }
        touched.sort();
        touched.dedup();
        if !touched.is_empty() && super::scoring::scores_anything(&mut tx, account).await? {
            super::scoring::rescore(&mut tx, account, &touched, micros(now)).await?;
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
    ) -> Result<Vec<StoredEvent>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let page = Sql::new(PAGE).bind(account).bind(contact).bind(at).bind(id).bind(limit);
        Ok(self.db.fetch_all(page).await?)
    }
}
