//! Contact events from the contacts service, applied in order. Runs of new contacts of one
//! account are written together in one transaction; deletes and merges one at a time.

use crate::api::{creation_source, db, requested, source_type_name};
use crate::rules::{self, State, Status};
use crate::store::{Actor, Created, Store};
use chrono::{DateTime, Utc};
use contactier_proto::common::v1::SourceType;
use contactier_proto::marketing_status::v1::{self as pb, contact_event::Payload};
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
            .ok_or_else(|| GrpcStatus::invalid_argument("events.created.source.type: required"))?;
        let asked = requested(c.requested_status);
        // A contact a user without the permission creates is non-marketing, whatever its
        // source's default or what was asked: that user cannot add to the bill.
        let mut may = true;
        if !c.user_id.is_empty() {
            let key = (account.to_owned(), c.user_id.clone());
            may = match self.permitted.get(&key) {
                Some(m) => *m,
                None => {
                    let m = store.may_set_marketing(account, &c.user_id).await.map_err(db)?;
                    self.permitted.insert(key, m);
                    m
                }
            };
        }
        if !self.defaults.contains_key(account) {
            let own = store.source_defaults(account).await.map_err(db)?;
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
    if !store.settings(account).await.map_err(db)?.marketing_contacts_enabled {
        return Ok(());
    }
    if !m.user_id.is_empty() && !store.may_set_marketing(account, &m.user_id).await.map_err(db)? {
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

/// Applies the events (checked by the caller) and answers the ids acknowledged: all of them.
pub async fn apply(
    store: &Store,
    events: Vec<pb::ContactEvent>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, GrpcStatus> {
    // Sources are checked before anything changes, so a bad event refuses the whole batch.
    for e in &events {
        if let Some(Payload::Created(c)) = &e.payload {
            let t = SourceType::try_from(c.source.as_ref().map_or(0, |s| s.r#type)).unwrap_or_default();
            if creation_source(t).is_none() {
                return Err(GrpcStatus::invalid_argument("events.created.source.type: required"));
            }
        }
    }
    let mut lookups = Lookups::default();
    let mut acknowledged = Vec::with_capacity(events.len());
    let mut run: Vec<Created> = Vec::new();
    let mut run_account = String::new();
    for e in events {
        let account = e.account_id.clone();
        if let Some(Payload::Created(c)) = &e.payload {
            if run_account != account && !run.is_empty() {
                store.contacts_created(&run_account, &std::mem::take(&mut run), now).await.map_err(db)?;
            }
            run_account = account.clone();
            let (initial, actor) = lookups.initial(store, &account, c).await?;
            run.push(Created {
                event_id: e.event_id.clone(),
                contact_id: c.contact_id.clone(),
                initial,
                actor,
            });
            acknowledged.push(e.event_id);
            continue;
        }
        if !run.is_empty() {
            store.contacts_created(&run_account, &std::mem::take(&mut run), now).await.map_err(db)?;
        }
        match e.payload.expect("checked by the caller") {
            Payload::Created(_) => unreachable!("handled above"),
            Payload::Deleted(d) => {
                store
                    .contact_deleted(&e.event_id, &account, &d.contact_id, d.erase, now)
                    .await
                    .map_err(db)?;
            }
            Payload::Merged(m) => {
                store
                    .contacts_merged(&e.event_id, &account, &m.primary_id, &m.secondary_id, now)
                    .await
                    .map_err(db)?;
            }
            Payload::MarketingRequested(m) => marketing_requested(store, &account, m, now).await?,
        }
        acknowledged.push(e.event_id);
    }
    if !run.is_empty() {
        store.contacts_created(&run_account, &run, now).await.map_err(db)?;
    }
    Ok(acknowledged)
}
