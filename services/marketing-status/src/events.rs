//! Contact events from the contacts service, applied in order. An account's consecutive
//! creations and deletions in a call are written together in one transaction; merges and
//! status requests one at a time.

use crate::convert::{creation_source, requested, source_type_name};

use crate::rules::{self, State, Status};
use crate::store::{Actor, Created, Deleted, Store};
use chrono::{DateTime, Utc};
use contactier_proto::common::v1::SourceType;
use contactier_proto::marketing_status::v1::{self as pb, contact_event::Payload};
use contactier_runtime::by_account::Refusals;
use contactier_runtime::db::for_account;
use contactier_runtime::error::Error;
use contactier_runtime::sql::Transaction;
use std::collections::HashMap;
use tonic::Status as GrpcStatus;

/// Per-account facts a batch needs again and again.
#[derive(Default)]
struct Lookups {
    defaults: HashMap<String, Vec<(String, bool)>>,
    permitted: HashMap<(String, String), bool>,
}

impl Lookups {
    async fn initial(
        &mut self,
        store: &Store,
        account: &str,
        c: &pb::ContactCreated,
    ) -> Result<(State, Actor), GrpcStatus> {
        let source = c.source.clone().unwrap_or_default();
        let source_type = SourceType::try_from(source.r#type).unwrap_or_default();
        let origin = creation_source(source_type)
            .ok_or_else(|| Error::invalid("events.created.source.type", "required"))?;
        let asked = requested(c.requested_status);
        // A contact a user without the permission creates is non-marketing, whatever its
        // source's default or what was asked: that user cannot add to the bill.
        let mut may = true;
        if !c.user_id.is_empty() {
            let key = (account.to_owned(), c.user_id.clone());
            may = if let Some(m) = self.permitted.get(&key) {
                *m
            } else {
                let m = store.may_set_marketing(account, &c.user_id).await.map_err(Error::from)?;
                self.permitted.insert(key, m);
                m
            };
        }
        if !self.defaults.contains_key(account) {
            let own = store.source_defaults(account).await.map_err(Error::from)?;
            self.defaults.insert(account.to_owned(), own);
        }
        let account_default = self.defaults[account]
            .iter()
            .find(|(name, _)| *name == source_type_name(source_type))
            .map(|(_, m)| if *m { Status::Marketing } else { Status::NonMarketing });
        let status =
            if may { rules::initial_status(origin, asked, account_default) } else { Status::NonMarketing };
        let initial = if status == Status::Marketing { State::MARKETING } else { State::NON_MARKETING };
        let actor = Actor {
            source_type: source_type_name(source_type),
            source_id: source.id,
            user_id: c.user_id.clone(),
            request_id: String::new(),
        };
        Ok((initial, actor))
    }
}

/// Existing contacts made marketing on their importer's behalf: as SetMarketingStatus by that
/// user would, so a user without the permission (or an account without the feature) changes
/// nothing. Applying it twice changes nothing more.
async fn marketing_requested(
    store: &Store,
    account: &str,
    m: pb::MarketingRequested,
    now: DateTime<Utc>,
) -> Result<(), GrpcStatus> {
    if !store.settings(account).await.map_err(Error::from)?.marketing_contacts_enabled {
        return Ok(());
    }
    if !m.user_id.is_empty() && !store.may_set_marketing(account, &m.user_id).await.map_err(Error::from)? {
        return Ok(());
    }
    let source = m.source.unwrap_or_default();
    let actor = Actor {
        source_type: source_type_name(SourceType::try_from(source.r#type).unwrap_or(SourceType::Import)),
        source_id: source.id,
        user_id: m.user_id,
        request_id: String::new(),
    };
    let none = contactier_runtime::idempotency::Key::none();
    crate::setting::apply(store, account, &m.contact_ids, false, Status::Marketing, &actor, &none, now)
        .await?;
    Ok(())
}

/// Events of one account of one kind, to be written together, with where the sender's batches
/// among them end (the count moves once for each).
enum Run {
    None,
    Created(String, Vec<Created>, Vec<usize>),
    Deleted(String, Vec<Deleted>, Vec<usize>),
}

impl Run {
    /// Marks the end of a sender's batch: the next event, if it joins the run, starts another.
    fn end_batch(&mut self) {
        let (len, ends) = match self {
            Run::None => return,
            Run::Created(_, items, ends) => (items.len(), ends),
            Run::Deleted(_, items, ends) => (items.len(), ends),
        };
        if ends.last() != Some(&len) {
            ends.push(len);
        }
    }

    /// The run's account and event ids.
    fn events(&self) -> Option<(&str, Vec<String>)> {
        match self {
            Run::None => None,
            Run::Created(account, items, _) => {
                Some((account, items.iter().map(|i| i.event_id.clone()).collect()))
            }
            Run::Deleted(account, items, _) => {
                Some((account, items.iter().map(|i| i.event_id.clone()).collect()))
            }
        }
    }

    /// Writes the run in its account's open transaction (see [`Open`]); a failure is its
    /// account's, and ends that transaction.
    async fn flush(mut self, store: &Store, open: &mut Open, now: DateTime<Utc>) {
        self.end_batch();
        let Some((account, ids)) = self.events() else { return };
        let account = account.to_owned();
        open.switch_to(store, &account).await;
        if open.failed.has(&account) {
            return;
        }
        open.pending.extend(ids);
        let done = match self {
            Run::None => return,
            Run::Created(account, items, ends) => match open.tx(store, &account).await {
                Ok(tx) => {
                    let done = store.contacts_created_in(tx, &account, &items, &ends, now).await;
                    open.created += items.len();
                    done.map_err(|e| Error::from(e).into())
                }
                Err(e) => Err(e),
            },
            Run::Deleted(account, items, ends) => match open.tx(store, &account).await {
                Ok(tx) => store
                    .contacts_deleted_in(tx, &account, &items, &ends, now)
                    .await
                    .map_err(|e| Error::from(e).into()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = done {
            open.fail(&account, e);
        }
    }
}

/// The transaction of the account whose runs are being written: an account's consecutive runs
/// in a call (its backlog of single changes, creations and deletions mixed) commit once, each
/// still its own count step. One account a transaction, so no two accounts' rows are locked
/// together, and one account's changes failing leaves the others' applied.
#[derive(Default)]
struct Open {
    tx: Option<(String, Transaction)>,
    /// Contacts created in the open transaction.
    created: usize,
    /// Events written in the open transaction, acknowledged once it commits.
    pending: Vec<String>,
    acknowledged: Vec<String>,
    /// Accounts whose changes failed, each named by its first event not applied, with why.
    failed: Refusals,
}

impl Open {
    /// Commits another account's open transaction before `account`'s runs are written.
    async fn switch_to(&mut self, store: &Store, account: &str) {
        if self.tx.as_ref().is_some_and(|(a, _)| a != account) {
            self.commit(store).await;
        }
    }

    async fn tx(&mut self, store: &Store, account: &str) -> Result<&mut Transaction, GrpcStatus> {
        if self.tx.is_none() {
            let tx = for_account(account, store.begin_write()).await.map_err(Error::from)?;
            self.tx = Some((account.to_owned(), tx));
        }
        Ok(&mut self.tx.as_mut().expect("opened above").1)
    }

    /// Commits what is open (before an event written in a transaction of its own, and at the
    /// end); its events are acknowledged, or, failing, its account's.
    async fn commit(&mut self, store: &Store) {
        let Some((account, tx)) = self.tx.take() else { return };
        match tx.commit().await {
            Ok(()) => {
                self.acknowledged.append(&mut self.pending);
                // Statistics only: the commit stands whatever this answers.
                if let Err(e) = store.added(std::mem::take(&mut self.created)).await {
                    tracing::warn!(error = %e, "the statuses' statistics were not taken");
                }
            }
            Err(e) => self.fail(&account, Error::from(e).into()),
        }
    }

    /// `account`'s changes failed: what is open of it is undone, and none of its later events in
    /// the call is applied. Its first event not applied is named with `status`.
    fn fail(&mut self, account: &str, status: GrpcStatus) {
        self.tx = None;
        self.created = 0;
        if let Some(first) = self.pending.drain(..).next() {
            self.failed.add(account, &first, status);
        }
    }

    /// An event applied in a transaction of its own: acknowledged, or its account failed.
    fn own(&mut self, account: &str, event_id: String, done: Result<(), GrpcStatus>) {
        match done {
            Ok(()) => self.acknowledged.push(event_id),
            Err(status) => {
                self.pending = vec![event_id];
                self.fail(account, status);
            }
        }
    }
}

/// Where the sender's batches end, as positions in the events: from `batch_sizes` (empty: one
/// batch of all of them). The count moves once for each batch, as it did when a call carried one
/// batch; consecutive batches of one account are still written in one transaction.
pub fn batch_ends(batch_sizes: &[u32], events: usize) -> Result<Vec<usize>, Error> {
    if batch_sizes.is_empty() {
        return Ok(vec![events]);
    }
    let mut ends = Vec::with_capacity(batch_sizes.len());
    let mut at = 0usize;
    for &size in batch_sizes {
        if size == 0 {
            return Err(Error::invalid("batch_sizes", "each batch has at least one event"));
        }
        at = at.saturating_add(size as usize);
        ends.push(at);
    }
    if at != events {
        return Err(Error::invalid("batch_sizes", format!("add up to {at}, not the {events} events")));
    }
    Ok(ends)
}

/// Applies the events (checked by the caller), a batch after the other (see [`batch_ends`]),
/// and answers the ids acknowledged and, of each account whose changes failed, its first event
/// not applied with why (its later ones in the call are left out).
pub async fn apply(
    store: &Store,
    events: Vec<pb::ContactEvent>,
    batch_ends: &[usize],
    now: DateTime<Utc>,
) -> Result<(Vec<String>, Refusals), GrpcStatus> {
    // Sources are checked before anything changes, so a bad event refuses the whole batch.
    for e in &events {
        if let Some(Payload::Created(c)) = &e.payload {
            let t = SourceType::try_from(c.source.as_ref().map_or(0, |s| s.r#type)).unwrap_or_default();
            if creation_source(t).is_none() {
                return Err(Error::invalid("events.created.source.type", "required").into());
            }
        }
    }
    // What each new contact starts as is read before any transaction opens: the account's
    // transaction then waits on nothing outside it.
    let mut lookups = Lookups::default();
    let mut initials = Vec::with_capacity(events.len());
    for e in &events {
        initials.push(match &e.payload {
            Some(Payload::Created(c)) => Some(lookups.initial(store, &e.account_id, c).await?),
            _ => None,
        });
    }
    // Consecutive creations, or deletions, of one account are written in one transaction (a
    // batch call's or an import batch's contacts, or an account's backlog of single changes);
    // the count moves once for each of the sender's batches among them.
    let mut run = Run::None;
    let mut open = Open::default();
    let mut ends = batch_ends.iter().peekable();
    let mut seen = std::collections::HashSet::new();
    for (i, (e, initial)) in events.into_iter().zip(initials).enumerate() {
        if ends.next_if(|end| **end == i).is_some() {
            run.end_batch();
        }
        // An event id named again in the call is the same event: applied once, as it is when
        // named again in a later call. An account whose changes failed applies nothing more.
        if !seen.insert(e.event_id.clone()) || open.failed.has(&e.account_id) {
            continue;
        }
        let account = e.account_id.clone();
        match e.payload.expect("checked by the caller") {
            Payload::Created(c) => {
                let (initial, actor) = initial.expect("read for every creation");
                let item = Created { event_id: e.event_id.clone(), contact_id: c.contact_id, initial, actor };
                match &mut run {
                    Run::Created(a, items, _) if *a == account => items.push(item),
                    _ => {
                        std::mem::replace(&mut run, Run::Created(account, vec![item], vec![]))
                            .flush(store, &mut open, now)
                            .await;
                    }
                }
            }
            Payload::Deleted(d) => {
                let item = Deleted { event_id: e.event_id.clone(), contact_id: d.contact_id, erase: d.erase };
                match &mut run {
                    Run::Deleted(a, items, _) if *a == account => items.push(item),
                    _ => {
                        std::mem::replace(&mut run, Run::Deleted(account, vec![item], vec![]))
                            .flush(store, &mut open, now)
                            .await;
                    }
                }
            }
            Payload::Merged(m) => {
                std::mem::replace(&mut run, Run::None).flush(store, &mut open, now).await;
                open.commit(store).await;
                if open.failed.has(&account) {
                    continue;
                }
                let merged =
                    store.contacts_merged(&e.event_id, &account, &m.primary_id, &m.secondary_id, now);
                let done = for_account(&account, merged).await.map(|_| ()).map_err(|e| Error::from(e).into());
                open.own(&account, e.event_id, done);
            }
            Payload::MarketingRequested(m) => {
                std::mem::replace(&mut run, Run::None).flush(store, &mut open, now).await;
                open.commit(store).await;
                if open.failed.has(&account) {
                    continue;
                }
                let done = for_account(&account, marketing_requested(store, &account, m, now)).await;
                open.own(&account, e.event_id, done);
            }
        }
    }
    run.flush(store, &mut open, now).await;
    open.commit(store).await;
    let Open { acknowledged, failed, .. } = open;
    Ok((acknowledged, failed))
}

#[cfg(test)]
mod tests {
    use super::batch_ends;

    #[test]
    fn batches_end_where_the_sender_split_them() {
        assert_eq!(batch_ends(&[], 5).unwrap(), [5], "no split: one batch");
        assert_eq!(batch_ends(&[], 0).unwrap(), [0]);
        assert_eq!(batch_ends(&[2, 1, 3], 6).unwrap(), [2, 3, 6]);
        for (sizes, n) in [(vec![2, 2], 3), (vec![2, 0, 1], 3), (vec![1], 0), (vec![u32::MAX, u32::MAX], 4)] {
            let err = batch_ends(&sizes, n).unwrap_err();
            assert!(err.to_string().contains("batch_sizes"), "{sizes:?}: {err}");
        }
    }
}
