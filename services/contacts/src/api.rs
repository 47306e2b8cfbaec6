//! ContactsService: the gRPC layer. It checks input (naming the field), calls the store, and
//! answers; the rules live in `properties`, `email`, `filter` and `import`.

use crate::convert::{self, source_type_name};
use crate::error::{Error, Result};
use crate::filter;
use crate::properties::{Catalog, Value};
use crate::store::{
    Change, ConsentRow, ContactKey, ContactRow, Cursor, KeepAnswer, KeepLogged, ListRow, Logged, NewContact,
    Origin, SortKey, Store, check_rule,
};
use crate::{email, import, record};
use contactier_proto::checks::check_item;
use contactier_proto::common::v1 as common;
use contactier_proto::contacts::v1::{self as pb, contacts_service_server::ContactsService};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::Principal;
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::host::PeerChannel;
use contactier_runtime::idempotency;
use contactier_runtime::paging;
use contactier_runtime::request::Answer;
use futures::stream::BoxStream;
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use tonic::{Request, Response, Status, Streaming};

/// The most records one batch call may carry.
pub const MAX_BATCH: usize = 1_000;
/// Custom properties and lists one account may have.
pub const MAX_PROPERTIES: i64 = 1_000;
pub const MAX_LISTS: i64 = 10_000;

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub clock: Clock,
    /// The relay of contact events to marketing-status.
    pub relay: WorkerWaker,
    /// marketing-status, for its part of a GDPR export.
    pub marketing_status: PeerChannel,
    /// The scoring worker, woken when rules change.
    pub scoring: WorkerWaker,
    /// The imports running on this replica, by account.
    pub imports: crate::import_slots::Slots,
}

/// Most scoring rules an account has.
pub const MAX_SCORING_RULES: i64 = 100;

struct Caller {
    account: String,
    /// Empty for a service.
    user: String,
    /// The token's subject: the user, or the calling service.
    subject: String,
    /// A user with the admin scope, who may act for the account's systems.
    admin: bool,
}

impl Caller {
    /// Where the caller's changes come from, for property history: a person in the app, or
    /// an integration (a service or an API client) named by its token.
    fn origin(&self) -> Origin {
        if self.user.is_empty() {
            Origin {
                source_type: "INTEGRATION".into(),
                source_id: self.subject.clone(),
                user_id: String::new(),
            }
        } else {
            Origin { source_type: "USER".into(), source_id: String::new(), user_id: self.user.clone() }
        }
    }
}

fn caller<T>(req: &Request<T>) -> std::result::Result<Caller, Status> {
    let p = Principal::of(req)?;
    Ok(Caller {
        account: p.account_id()?.to_owned(),
        user: p.user_id().unwrap_or_default().to_owned(),
        subject: p.subject.clone(),
        admin: p.has_scope("admin"),
    })
}

/// Lists read per page of a contact's memberships: each active one is a query.
const MEMBERSHIP_SCAN: i64 = 200;

fn page_size(n: i32) -> Result<i64> {
    paging::limit(n)
}

fn batch_len(field: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(field, "required"));
    }
    if n > MAX_BATCH {
        return Err(Error::invalid(field, format!("at most {MAX_BATCH} per call")));
    }
    Ok(())
}

fn required(field: &str, v: &str) -> Result<()> {
    if v.is_empty() { Err(Error::invalid(field, "required")) } else { Ok(()) }
}

/// Checks one contact to create; `at` prefixes field names ("contact", "contacts[3]").
fn new_contact(input: pb::ContactInput, catalog: &Catalog, c: &Caller, at: &str) -> Result<NewContact> {
    let user = c.user.as_str();
    let email = email::parse(&input.email).map_err(|r| Error::invalid(format!("{at}.email"), r))?;
    let values = catalog
        .check(&input.properties.into_iter().collect())
        .map_err(|(name, r)| Error::invalid(format!("{at}.properties.{name}"), r))?;
    let values: BTreeMap<String, Value> = values.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
    crate::properties::check_values_total(&values)
        .map_err(|r| Error::invalid(format!("{at}.properties"), r))?;
    let requested = common::MarketingStatus::try_from(input.requested_status)
        .map_err(|_| Error::invalid(format!("{at}.requested_status"), "MARKETING, NON_MARKETING or unset"))?;
    let source = input.source.unwrap_or_default();
    let source_type = match common::SourceType::try_from(source.r#type) {
        Err(_) => return Err(Error::invalid(format!("{at}.source.type"), "not a source type")),
        // A person creates by hand; anything else unnamed is an API caller.
        Ok(common::SourceType::Unspecified) if !user.is_empty() => common::SourceType::User,
        Ok(common::SourceType::Unspecified) => common::SourceType::Integration,
        Ok(common::SourceType::System | common::SourceType::Merge) => {
            return Err(Error::invalid(
                format!("{at}.source.type"),
                "SYSTEM and MERGE are not creation sources",
            ));
        }
        // Forms, ads, imports, integrations and the like are set by the system that creates
        // the contact, which calls with a service token; a person may act for them as an admin.
        Ok(t) if t != common::SourceType::User && !user.is_empty() && !c.admin => {
            return Err(Error::denied(
                format!("{at}.source.type"),
                format!(
                    "{} is set by the system that creates the contact; a user needs the admin scope",
                    source_type_name(t)
                ),
            ));
        }
        Ok(t) => t,
    };
    if source_type == common::SourceType::User
        && !user.is_empty()
        && !source.id.is_empty()
        && source.id != user
    {
        return Err(Error::invalid(
            format!("{at}.source.id"),
            "a user creates contacts under the user's own id",
        ));
    }
    Ok(NewContact {
        email,
        values,
        source_type: source_type_name(source_type),
        source_id: if source.id.is_empty() { user.to_owned() } else { source.id },
        source_row: 0,
        requested_status: requested as i32,
        user_id: user.to_owned(),
    })
}

/// Refuses a mask that names no field or one field twice (which would read as set, then clear).
fn check_mask(mask: &prost_types::FieldMask, at: &str) -> Result<()> {
    if mask.paths.is_empty() {
        return Err(Error::invalid(format!("{at}update_mask"), "names no field; leave it out to merge"));
    }
    for (i, path) in mask.paths.iter().enumerate() {
        if mask.paths[..i].contains(path) {
            return Err(Error::invalid(
                format!("{at}update_mask.paths[{i}]"),
                format!("{path:?} is named twice"),
            ));
        }
    }
    Ok(())
}

/// A stored property definition with exactly the fields `mask` names taken from `given`.
fn masked_property(
    stored: pb::PropertyDefinition,
    given: pb::PropertyDefinition,
    mask: &prost_types::FieldMask,
) -> Result<pb::PropertyDefinition> {
    check_mask(mask, "")?;
    let mut d = stored;
    for (i, path) in mask.paths.iter().enumerate() {
        match path.as_str() {
            "label" => d.label = given.label.clone(),
            "description" => d.description = given.description.clone(),
            "options" => d.options = given.options.clone(),
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} is not a field an update changes (label, description, options)"),
                ));
            }
        }
    }
    Ok(d)
}

/// Checks one update; `at` prefixes field names.
/// The properties and email an update names: all it carries, or with a field mask exactly
/// the named fields (a named property it does not carry is cleared).
fn masked(mut u: pb::UpdateContactRequest, at: &str) -> Result<pb::UpdateContactRequest> {
    let Some(mask) = u.update_mask.take() else { return Ok(u) };
    check_mask(&mask, at)?;
    let (mut properties, mut email) = (std::collections::BTreeMap::new(), String::new());
    for (i, path) in mask.paths.iter().enumerate() {
        match path.split_once('.') {
            None if path == "email" => {
                if u.email.trim().is_empty() {
                    return Err(Error::invalid(format!("{at}email"), "a contact's email cannot be cleared"));
                }
                email = std::mem::take(&mut u.email);
            }
            Some(("properties", name)) if !name.is_empty() => {
                properties.insert(name.to_owned(), u.properties.remove(name).unwrap_or_default());
            }
            _ => {
                return Err(Error::invalid(
                    format!("{at}update_mask.paths[{i}]"),
                    format!("{path:?} is not a field an update changes (email, properties.<name>)"),
                ));
            }
        }
    }
    Ok(pb::UpdateContactRequest { properties, email, update_mask: None, ..u })
}

fn change(u: pb::UpdateContactRequest, catalog: &Catalog, at: &str) -> Result<Change> {
    required(&format!("{at}id"), &u.id)?;
    let u = masked(u, at)?;
    let values = catalog
        .check(&u.properties.into_iter().collect())
        .map_err(|(name, r)| Error::invalid(format!("{at}properties.{name}"), r))?;
    let email = if u.email.is_empty() {
        None
    } else {
        Some(email::parse(&u.email).map_err(|r| Error::invalid(format!("{at}email"), r))?)
    };
    if u.expected_version < 0 {
        return Err(Error::invalid(format!("{at}expected_version"), "0 or a version"));
    }
    Ok(Change { id: u.id, values, email, expected_version: u.expected_version })
}

fn batch_error(index: usize, e: &Error) -> pb::BatchItemError {
    // The message answered is the status's: a storage or internal failure's detail is logged,
    // not sent.
    let status = tonic::Status::from(e.clone());
    pb::BatchItemError {
        index: index as i32,
        code: e.code_name().into(),
        message: status.message().to_owned(),
        field: e.field().to_owned(),
        status: Some(contactier_runtime::rich::rpc_status(status)),
    }
}

fn one<T>(mut v: Vec<Result<T>>) -> Result<T> {
    v.pop().expect("one input, one outcome")
}

impl Api {
    /// Whether the calling user may make contacts marketing: marketing-status keeps that.
    pub(crate) async fn may_set_marketing(&self, account: &str, user: &str) -> Result<bool> {
        let mut client = mpb::marketing_status_service_client::MarketingStatusServiceClient::new(
            self.marketing_status.service(),
        );
        let mut req = Request::new(mpb::GetUserPermissionRequest { user_id: user.to_owned() });
        contactier_runtime::auth::name_account(req.metadata_mut(), account);
        let answer = client
            .get_user_permission(req)
            .await
            .map_err(|s| Error::peer(&s, "checking the user's permission to set marketing"))?;
        Ok(answer.into_inner().permission.is_some_and(|p| p.may_set_marketing))
    }

    /// The contact a data-subject request names: by id or by email (one it has, or had),
    /// exactly one of them.
    async fn subject(&self, account: &str, id: String, email: &str) -> Result<String> {
        match (id.trim().is_empty(), email.trim().is_empty()) {
            (true, true) => Err(Error::invalid("contact_id", "contact_id or email is required")),
            (false, false) => Err(Error::invalid("email", "give contact_id or email, not both")),
            (false, true) => Ok(id),
            (true, false) => {
                let key = email.trim().to_lowercase();
                if let Some((row, _)) =
                    self.store.contact_with_catalog(account, ContactKey::Email(&key)).await?
                {
                    return Ok(row.id);
                }
                // An address a contact had before (its own, or a contact's merged into it): the
                // person asking about it is that contact now.
                self.store
                    .contact_that_had_email(account, &key)
                    .await?
                    .ok_or(Error::NoneWith { kind: "contact", key: "email" })
            }
        }
    }

    async fn contact_by_id(&self, account: &str, id: &str) -> Result<ContactRow> {
        self.store.contacts(account, &[id.to_owned()]).await?.pop().ok_or_else(|| Error::no_contact(id))
    }

    fn compile(&self, f: Option<&pb::ContactFilter>, catalog: &Catalog) -> Result<filter::Sql> {
        // $1 is the account.
        filter::compile(f, catalog, self.store.db.backend(), 1).map_err(|e| Error::invalid(e.field, e.reason))
    }

    /// Creates the contacts, each with its own outcome, and answers the call with `answer` of
    /// them. The answer is saved under `request_id` in the transaction that creates them.
    async fn create<A: Message + Default>(
        &self,
        c: &Caller,
        catalog: &Catalog,
        inputs: Vec<pb::ContactInput>,
        field: &str,
        key: &idempotency::Key,
        answer: impl Fn(Vec<Result<ContactRow>>) -> Result<A> + Sync,
    ) -> Result<A> {
        let mut checked = Vec::with_capacity(inputs.len());
        let mut refused = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let at = if field == "contact" { field.to_owned() } else { format!("{field}[{i}]") };
            // A batch's entries are checked here, so one bad entry is refused on its own.
            let limits = if field == "contact" { Ok(()) } else { check_item(&input, "contacts", i) };
            match limits.map_err(Error::from).and_then(|()| new_contact(input, catalog, c, &at)) {
                Ok(n) => checked.push((i, n)),
                Err(e) => refused.push((i, e)),
            }
        }
        // A person without the permission to set marketing cannot ask for it at creation.
        let asks = |n: &NewContact| n.requested_status == common::MarketingStatus::Marketing as i32;
        if !c.user.is_empty()
            && checked.iter().any(|(_, n)| asks(n))
            && !self.may_set_marketing(&c.account, &c.user).await?
        {
            let (denied, allowed): (Vec<_>, Vec<_>) = checked.into_iter().partition(|(_, n)| asks(n));
            checked = allowed;
            let at = |i: usize| if field == "contact" { field.to_owned() } else { format!("{field}[{i}]") };
            refused.extend(denied.into_iter().map(|(i, _)| {
                let reason = "this user may not set contacts as marketing";
                (i, Error::denied(format!("{}.requested_status", at(i)), reason))
            }));
        }
        let (idx, news): (Vec<usize>, Vec<NewContact>) = checked.into_iter().unzip();
        // Each input's outcome, in input order.
        let outcomes = |created: Vec<Result<ContactRow>>| {
            let mut out: Vec<(usize, Result<ContactRow>)> = idx.iter().copied().zip(created).collect();
            out.extend(refused.iter().map(|(i, e)| (*i, Err(e.clone()))));
            out.sort_by_key(|(i, _)| *i);
            out.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
        };
        if news.is_empty() {
            // Nothing is written, so the answer is kept on its own.
            let a = answer(outcomes(vec![]))?;
            self.keep(&c.account, key, &a).await?;
            return Ok(a);
        }
        let encoded = |created: &[Result<ContactRow>]| {
            answer(outcomes(created.to_vec())).ok().map(|a| a.encode_to_vec())
        };
        let keep = KeepAnswer { request_id: &key.id, digest: &key.digest, answer: &encoded };
        let Some(created) =
            self.store.create_contacts(&c.account, news, self.clock.now(), Some(keep)).await?
        else {
            // A twin under the same request id answered first: its answer is this one's.
            let first: Option<A> = self.replay(&c.account, key).await?;
            return first.ok_or_else(|| Error::Internal("a kept answer went missing".into()));
        };
        self.relay.wake();
        match answer(outcomes(created)) {
            // A twin under the same request id created the contact first (this one found its
            // email taken): its kept answer is this one's.
            Err(Error::EmailTaken(e)) => match self.replay(&c.account, key).await? {
                Some(first) => Ok(first),
                None => Err(Error::EmailTaken(e)),
            },
            a => a,
        }
    }

    /// Deletes (or, for GDPR, erases) one contact; NOT_FOUND when it does not exist.
    async fn delete_one(&self, account: &str, id: &str, erase: bool) -> Result<()> {
        let ids = [id.to_owned()];
        let (deleted, _) = self.store.delete_contacts(account, &ids, erase, self.clock.now()).await?;
        if deleted.is_empty() {
            return Err(Error::no_contact(id));
        }
        self.relay.wake();
        Ok(())
    }

    /// The answer saved under a request id, if any; refused when the id was used for a
    /// different request.
    async fn replay<T: Message + Default>(&self, account: &str, key: &idempotency::Key) -> Result<Option<T>> {
        if key.id.is_empty() {
            return Ok(None);
        }
        match self.store.answer(account, &key.id).await? {
            Some((_, digest)) if !idempotency::same(&digest, &key.digest) => Err(Error::RequestReused),
            Some((bytes, _)) => {
                Ok(Some(T::decode(bytes.as_slice()).map_err(|_| Error::Internal("stored answer".into()))?))
            }
            None => Ok(None),
        }
    }

    async fn keep<T: Message>(&self, account: &str, key: &idempotency::Key, answer: &T) -> Result<()> {
        if !key.id.is_empty() {
            self.store.keep_answer(account, &key.id, &key.digest, &answer.encode_to_vec()).await?;
        }
        Ok(())
    }

    async fn list_size(&self, account: &str, row: &ListRow) -> Result<i64> {
        if row.r#type == "active" {
            let catalog = self.store.catalog(account).await?;
            let f = pb::ContactFilter::decode(row.filter.as_slice())
                .map_err(|_| Error::Internal("stored filter".into()))?;
            // A filter on a property deleted since matches nothing.
            match filter::compile(Some(&f), &catalog, self.store.db.backend(), 1) {
                Ok(sql) => self.store.count_matching(account, &sql).await,
                Err(_) => Ok(0),
            }
        } else {
            self.store.member_count(account, &row.id).await
        }
    }
}

#[tonic::async_trait]
impl ContactsService for Api {
    async fn create_contact(
        &self,
        req: Request<pb::CreateContactRequest>,
    ) -> Answer<pb::CreateContactResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let key = idempotency::Key::of(&r.request_id, "CreateContact", &c.user, || {
            pb::CreateContactRequest { request_id: String::new(), ..r.clone() }
        });
        if let Some(first) = self.replay(&c.account, &key).await? {
            return Ok(Response::new(first));
        }
        let input = r.contact.ok_or_else(|| Error::invalid("contact", "required"))?;
        let catalog = self.store.catalog(&c.account).await?;
        let answer = self
            .create(&c, &catalog, vec![input], "contact", &key, |outcomes| {
                let row = one(outcomes)?;
                Ok(pb::CreateContactResponse { contact: Some(convert::contact(row, &catalog, &[])) })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn get_contact(&self, req: Request<pb::GetContactRequest>) -> Answer<pb::GetContactResponse> {
        let c = caller(&req)?;
        let (row, catalog) = match req.into_inner().key {
            Some(pb::get_contact_request::Key::Id(id)) => {
                required("id", &id)?;
                self.store
                    .contact_with_catalog(&c.account, ContactKey::Id(&id))
                    .await?
                    .ok_or_else(|| Error::no_contact(id))?
            }
            Some(pb::get_contact_request::Key::Email(e)) => {
                required("email", &e)?;
                let key = e.trim().to_lowercase();
                self.store
                    .contact_with_catalog(&c.account, ContactKey::Email(&key))
                    .await?
                    .ok_or(Error::NoneWith { kind: "contact", key: "email" })?
            }
            None => return Err(Error::invalid("key", "id or email is required").into()),
        };
        Ok(Response::new(pb::GetContactResponse { contact: Some(convert::contact(row, &catalog, &[])) }))
    }

    async fn update_contact(
        &self,
        req: Request<pb::UpdateContactRequest>,
    ) -> Answer<pb::UpdateContactResponse> {
        let c = caller(&req)?;
        let catalog = self.store.catalog(&c.account).await?;
        let ch = change(req.into_inner(), &catalog, "")?;
        let row =
            one(self.store.update_contacts(&c.account, vec![ch], &c.origin(), || self.clock.now()).await?)?;
        Ok(Response::new(pb::UpdateContactResponse { contact: Some(convert::contact(row, &catalog, &[])) }))
    }

    async fn delete_contact(
        &self,
        req: Request<pb::DeleteContactRequest>,
    ) -> Answer<pb::DeleteContactResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().id;
        required("id", &id)?;
        self.delete_one(&c.account, &id, false).await?;
        Ok(Response::new(pb::DeleteContactResponse {}))
    }

    async fn batch_create_contacts(
        &self,
        req: Request<pb::BatchCreateContactsRequest>,
    ) -> Answer<pb::BatchCreateContactsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        batch_len("contacts", r.contacts.len())?;
        let key = idempotency::Key::of(&r.request_id, "BatchCreateContacts", &c.user, || {
            pb::BatchCreateContactsRequest { request_id: String::new(), ..r.clone() }
        });
        if let Some(first) = self.replay(&c.account, &key).await? {
            return Ok(Response::new(first));
        }
        let catalog = self.store.catalog(&c.account).await?;
        let answer = self
            .create(&c, &catalog, r.contacts, "contacts", &key, |outcomes| {
                let mut answer = pb::BatchCreateContactsResponse::default();
                for (i, o) in outcomes.into_iter().enumerate() {
                    match o {
                        Ok(row) => answer.results.push(pb::BatchContactResult {
                            index: i as i32,
                            contact: Some(convert::contact(row, &catalog, &[])),
                        }),
                        Err(e) => answer.errors.push(batch_error(i, &e)),
                    }
                }
                Ok(answer)
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn batch_get_contacts(
        &self,
        req: Request<pb::BatchGetContactsRequest>,
    ) -> Answer<pb::BatchGetContactsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        batch_len("ids", r.ids.len() + r.emails.len())?;
        let catalog = self.store.catalog(&c.account).await?;
        let mut answer = pb::BatchGetContactsResponse::default();
        let rows = self.store.contacts(&c.account, &r.ids).await?;
        let found: HashSet<&str> = rows.iter().map(|row| row.id.as_str()).collect();
        // Each id or email not found once, however often it was named.
        let mut unknown: HashSet<String> = HashSet::new();
        answer.not_found.extend(
            r.ids.iter().filter(|id| !found.contains(id.as_str()) && unknown.insert((*id).clone())).cloned(),
        );
        let mut bytes: usize = rows.iter().map(|row| row.properties.len()).sum();
        answer.contacts.extend(rows.into_iter().map(|row| convert::contact(row, &catalog, &[])));
        // Each contact once, whether named by id, by email or several times.
        let mut answered: HashSet<String> = answer.contacts.iter().map(|c| c.id.clone()).collect();
        for e in r.emails {
            match self.store.contact_by_email(&c.account, &e.trim().to_lowercase()).await? {
                Some(row) if answered.contains(&row.id) => {}
                Some(row) => {
                    bytes += row.properties.len();
                    answered.insert(row.id.clone());
                    answer.contacts.push(convert::contact(row, &catalog, &[]));
                    crate::store::answer_fits("emails", answer.contacts.len(), bytes)?;
                }
                None if unknown.insert(e.clone()) => answer.not_found.push(e),
                None => {}
            }
        }
        Ok(Response::new(answer))
    }

    async fn batch_update_contacts(
        &self,
        req: Request<pb::BatchUpdateContactsRequest>,
    ) -> Answer<pb::BatchUpdateContactsResponse> {
        let c = caller(&req)?;
        let updates = req.into_inner().updates;
        batch_len("updates", updates.len())?;
        let catalog = self.store.catalog(&c.account).await?;
        let mut answer = pb::BatchUpdateContactsResponse::default();
        let mut checked = Vec::new();
        // One update a contact a batch: with two, one answer could not show both.
        let mut named: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, u) in updates.into_iter().enumerate() {
            if let Some(first) = named.get(u.id.as_str()) {
                let why = format!("names the contact updates[{first}] changes: one update a contact a batch");
                answer.errors.push(batch_error(i, &Error::invalid(format!("updates[{i}].id"), why)));
                continue;
            }
            if !u.id.is_empty() {
                named.insert(u.id.clone(), i);
            }
            let checked_update = check_item(&u, "updates", i).map_err(Error::from);
            match checked_update.and_then(|()| change(u, &catalog, &format!("updates[{i}]."))) {
                Ok(ch) => checked.push((i, ch)),
                Err(e) => answer.errors.push(batch_error(i, &e)),
            }
        }
        let (idx, changes): (Vec<usize>, Vec<Change>) = checked.into_iter().unzip();
        let outcomes = if changes.is_empty() {
            vec![]
        } else {
            self.store.update_contacts(&c.account, changes, &c.origin(), || self.clock.now()).await?
        };
        for (i, o) in idx.into_iter().zip(outcomes) {
            match o {
                Ok(row) => answer.results.push(pb::BatchContactResult {
                    index: i as i32,
                    contact: Some(convert::contact(row, &catalog, &[])),
                }),
                Err(e) => answer.errors.push(batch_error(i, &e)),
            }
        }
        answer.errors.sort_by_key(|e| e.index);
        Ok(Response::new(answer))
    }

    async fn batch_delete_contacts(
        &self,
        req: Request<pb::BatchDeleteContactsRequest>,
    ) -> Answer<pb::BatchDeleteContactsResponse> {
        let c = caller(&req)?;
        let ids = req.into_inner().ids;
        batch_len("ids", ids.len())?;
        let (deleted_ids, not_found) =
            self.store.delete_contacts(&c.account, &ids, false, self.clock.now()).await?;
        self.relay.wake();
        Ok(Response::new(pb::BatchDeleteContactsResponse { deleted_ids, not_found }))
    }

    async fn search_contacts(
        &self,
        req: Request<pb::SearchContactsRequest>,
    ) -> Answer<pb::SearchContactsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let catalog = self.store.catalog(&c.account).await?;
        let sql = self.compile(r.filter.as_ref(), &catalog)?;
        if r.sorts.len() > 1 {
            return Err(Error::invalid("sorts", "at most one sort").into());
        }
        let (key, descending) = match r.sorts.first() {
            None => (SortKey::CreatedAt, false),
            Some(s) => {
                let key = match s.property.as_str() {
                    "created_at" => SortKey::CreatedAt,
                    "updated_at" => SortKey::UpdatedAt,
                    "email" => SortKey::Email,
                    "id" => SortKey::Id,
                    p => match catalog.get(p) {
                        Some(d) => SortKey::Property {
                            name: p.to_owned(),
                            numeric: d.ptype == crate::properties::PropertyType::Number,
                        },
                        None => {
                            return Err(Error::invalid(
                                "sorts[0].property",
                                format!("no such property {p:?}"),
                            )
                            .into());
                        }
                    },
                };
                (key, s.direction == pb::SortDirection::Descending as i32)
            }
        };
        for (i, p) in r.properties.iter().enumerate() {
            if catalog.get(p).is_none() && !crate::properties::RESERVED.contains(&p.as_str()) {
                return Err(
                    Error::invalid(format!("properties[{i}]"), format!("no such property {p:?}")).into()
                );
            }
        }
        let search = contactier_runtime::idempotency::digest(
            "search",
            "",
            &pb::SearchContactsRequest {
                filter: r.filter.clone(),
                sorts: r.sorts.clone(),
                ..Default::default()
            },
        );
        let after = if r.page_token.is_empty() {
            None
        } else {
            let c = Cursor::decode(&r.page_token)
                .ok_or_else(|| Error::invalid("page_token", "not a page token"))?;
            if c.search.as_deref() != Some(search.as_str()) {
                return Err(
                    Error::invalid("page_token", "not from this search (its filter or sort differ)").into()
                );
            }
            Some(c)
        };
        let (rows, next) =
            self.store.search(&c.account, &sql, &key, descending, after.as_ref(), limit).await?;
        // Counted on the first page; later pages carry it in their token.
        let total = match after.as_ref().and_then(|a| a.total) {
            Some(t) => t,
            None => self.store.count_matching(&c.account, &sql).await?,
        };
        Ok(Response::new(pb::SearchContactsResponse {
            contacts: rows.into_iter().map(|row| convert::contact(row, &catalog, &r.properties)).collect(),
            next_page_token: next
                .map(|n| Cursor { total: Some(total), search: Some(search), ..n }.encode())
                .unwrap_or_default(),
            total,
        }))
    }

    async fn count_contacts(
        &self,
        req: Request<pb::CountContactsRequest>,
    ) -> Answer<pb::CountContactsResponse> {
        let c = caller(&req)?;
        Ok(Response::new(pb::CountContactsResponse { total_contacts: self.store.total(&c.account).await? }))
    }

    async fn merge_contacts(
        &self,
        req: Request<pb::MergeContactsRequest>,
    ) -> Answer<pb::MergeContactsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        required("primary_id", &r.primary_id)?;
        required("secondary_id", &r.secondary_id)?;
        if r.primary_id == r.secondary_id {
            return Err(Error::invalid("secondary_id", "must differ from primary_id").into());
        }
        let catalog = self.store.catalog(&c.account).await?;
        let choices = convert::merge_choices(r.property_choices, &catalog)?;
        let pair = (r.primary_id.as_str(), r.secondary_id.as_str());
        let row =
            self.store.merge(&c.account, pair, &choices, &catalog, &c.user, || self.clock.now()).await?;
        self.relay.wake();
        Ok(Response::new(pb::MergeContactsResponse { contact: Some(convert::contact(row, &catalog, &[])) }))
    }

    async fn create_property(
        &self,
        req: Request<pb::CreatePropertyRequest>,
    ) -> Answer<pb::CreatePropertyResponse> {
        let c = caller(&req)?;
        let d = convert::checked_definition(req.into_inner().property)?;
        if crate::properties::is_standard(&d.name) {
            return Err(Error::AlreadyExists(format!("{} is a standard property", d.name)).into());
        }
        self.store.create_property(&c.account, &d, self.clock.now(), MAX_PROPERTIES).await?;
        Ok(Response::new(pb::CreatePropertyResponse { property: Some(convert::definition(&d)) }))
    }

    async fn get_property(&self, req: Request<pb::GetPropertyRequest>) -> Answer<pb::GetPropertyResponse> {
        let c = caller(&req)?;
        let name = req.into_inner().name;
        let catalog = self.store.catalog(&c.account).await?;
        let d = catalog.get(&name).ok_or_else(|| Error::NotFound(format!("property {name:?}")))?;
        Ok(Response::new(pb::GetPropertyResponse { property: Some(convert::definition(d)) }))
    }

    async fn list_properties(
        &self,
        req: Request<pb::ListPropertiesRequest>,
    ) -> Answer<pb::ListPropertiesResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let catalog = self.store.catalog(&c.account).await?;
        let all: Vec<pb::PropertyDefinition> = catalog.by_name.values().map(convert::definition).collect();
        let (properties, next_page_token) = contactier_runtime::paging::page(
            "properties",
            all,
            |p| p.name.as_str(),
            r.page_size,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListPropertiesResponse { properties, next_page_token }))
    }

    async fn update_property(
        &self,
        req: Request<pb::UpdatePropertyRequest>,
    ) -> Answer<pb::UpdatePropertyResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let catalog = self.store.catalog(&c.account).await?;
        let given = match r.update_mask {
            None => r.property,
            Some(mask) => {
                let given = r.property.ok_or_else(|| Error::invalid("property", "required"))?;
                let stored = catalog
                    .get(&given.name)
                    .ok_or_else(|| Error::NotFound(format!("property {}", given.name)))?;
                Some(masked_property(convert::definition(stored), given, &mask)?)
            }
        };
        let d = convert::checked_definition(given)?;
        match catalog.get(&d.name) {
            None => return Err(Error::NotFound(format!("property {}", d.name)).into()),
            Some(s) if s.standard => {
                return Err(Error::FailedPrecondition(format!("{} is a standard property", d.name)).into());
            }
            Some(s) if s.ptype != d.ptype => {
                return Err(Error::invalid("property.type", "cannot change").into());
            }
            Some(_) => {}
        }
        self.store.update_property(&c.account, &d).await?;
        Ok(Response::new(pb::UpdatePropertyResponse { property: Some(convert::definition(&d)) }))
    }

    async fn delete_property(
        &self,
        req: Request<pb::DeletePropertyRequest>,
    ) -> Answer<pb::DeletePropertyResponse> {
        let c = caller(&req)?;
        let name = req.into_inner().name;
        if crate::properties::is_standard(&name) {
            return Err(Error::FailedPrecondition(format!("{name} is a standard property")).into());
        }
        self.store.delete_property(&c.account, &name).await?;
        Ok(Response::new(pb::DeletePropertyResponse {}))
    }

    type ImportContactsStream = BoxStream<'static, std::result::Result<pb::ImportContactsResponse, Status>>;

    async fn import_contacts(
        &self,
        req: Request<Streaming<pb::ImportContactsRequest>>,
    ) -> Answer<Self::ImportContactsStream> {
        let c = caller(&req)?;
        let mut input = req.into_inner();
        let opened = import::open(&self.store, &c.account, &mut input).await?;
        // "Set as marketing" is asked of every row: refused at once for a user without the permission.
        if opened.plan.set_as_marketing
            && !c.user.is_empty()
            && !self.may_set_marketing(&c.account, &c.user).await?
        {
            return Err(Error::denied(
                "header.set_as_marketing",
                "this user may not set contacts as marketing",
            )
            .into());
        }
        let Some(slot) = self.imports.take(&c.account) else {
            return Err(Status::resource_exhausted(format!(
                "this account runs {} imports at once here already; retry once one has finished",
                crate::import_slots::PER_ACCOUNT
            )));
        };
        let ctx = import::Importer {
            store: self.store.clone(),
            clock: self.clock.clone(),
            relay: self.relay.clone(),
            slot: std::sync::Arc::new(slot),
        };
        let stream = import::start(ctx, c.account, c.user, opened, input).await?;
        Ok(Response::new(stream))
    }

    async fn get_import(&self, req: Request<pb::GetImportRequest>) -> Answer<pb::GetImportResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().import_id;
        required("import_id", &id)?;
        let i = self
            .store
            .import_seen(&c.account, &id, import::LEASE, micros(self.clock.now()))
            .await?
            .ok_or_else(|| Error::NotFound(format!("import {id}")))?;
        Ok(Response::new(pb::GetImportResponse { summary: Some(convert::import_summary(&i)) }))
    }

    async fn list_import_errors(
        &self,
        req: Request<pb::ListImportErrorsRequest>,
    ) -> Answer<pb::ListImportErrorsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        required("import_id", &r.import_id)?;
        self.store
            .import(&c.account, &r.import_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("import {}", r.import_id)))?;
        let list = format!("errors of import {}", r.import_id);
        let after = paging::after_at(&list, &r.page_token)?.unwrap_or((0, String::new()));
        let rows = self.store.import_errors(&c.account, &r.import_id, (after.0, &after.1), limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more {
            rows.last().map(|e| paging::token_at(&list, e.row_number, &e.column_name)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListImportErrorsResponse {
            errors: rows
                .into_iter()
                .map(|e| pb::ImportRowError { row: e.row_number, column: e.column_name, reason: e.reason })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn create_list(&self, req: Request<pb::CreateListRequest>) -> Answer<pb::CreateListResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.name.trim().is_empty() {
            return Err(Error::invalid("name", "required").into());
        }
        let kind = match pb::ListType::try_from(r.r#type) {
            Ok(pb::ListType::Static) => "static",
            Ok(pb::ListType::Active) => "active",
            _ => return Err(Error::invalid("type", "STATIC or ACTIVE").into()),
        };
        let filter = match (kind, r.filter) {
            ("active", Some(f)) if !f.groups.is_empty() => {
                self.compile(Some(&f), &self.store.catalog(&c.account).await?)?;
                f.encode_to_vec()
            }
            ("active", _) => return Err(Error::invalid("filter", "an active list needs a filter").into()),
            (_, Some(f)) if !f.groups.is_empty() => {
                return Err(Error::invalid("filter", "a static list has members, not a filter").into());
            }
            _ => vec![],
        };
        let row = ListRow {
            id: new_id(),
            name: r.name.trim().to_owned(),
            r#type: kind.into(),
            filter,
            created_at: micros(self.clock.now()),
        };
        self.store.create_list(&c.account, &row, MAX_LISTS).await?;
        let size = self.list_size(&c.account, &row).await?;
        Ok(Response::new(pb::CreateListResponse { list: Some(convert::list(row, size)) }))
    }

    async fn get_list(&self, req: Request<pb::GetListRequest>) -> Answer<pb::GetListResponse> {
        let c = caller(&req)?;
        let row = self.store.list(&c.account, &req.into_inner().id).await?;
        let size = self.list_size(&c.account, &row).await?;
        Ok(Response::new(pb::GetListResponse { list: Some(convert::list(row, size)) }))
    }

    async fn list_lists(&self, req: Request<pb::ListListsRequest>) -> Answer<pb::ListListsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let after = paging::after("lists", &r.page_token)?.unwrap_or_default();
        let rows = self.store.lists(&c.account, &after, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let mut lists = Vec::new();
        for row in rows.into_iter().take(limit as usize) {
            let size = self.list_size(&c.account, &row).await?;
            lists.push(convert::list(row, size));
        }
        let next_page_token = match lists.last() {
            Some(l) if more => paging::token("lists", &l.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListListsResponse { lists, next_page_token }))
    }

    async fn update_list(&self, req: Request<pb::UpdateListRequest>) -> Answer<pb::UpdateListResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let mut row = self.store.list(&c.account, &r.id).await?;
        // Which fields change: those the mask names, or without one those given.
        let (name, filter) = match &r.update_mask {
            None => (
                (!r.name.trim().is_empty()).then(|| r.name.clone()),
                r.filter.clone().filter(|f| !f.groups.is_empty()),
            ),
            Some(mask) => {
                check_mask(mask, "")?;
                let (mut name, mut filter) = (None, None);
                for (i, path) in mask.paths.iter().enumerate() {
                    match path.as_str() {
                        "name" => name = Some(r.name.clone()),
                        "filter" => filter = Some(r.filter.clone().unwrap_or_default()),
                        other => {
                            return Err(Error::invalid(
                                format!("update_mask.paths[{i}]"),
                                format!("{other:?} is not a field an update changes (name, filter)"),
                            )
                            .into());
                        }
                    }
                }
                (name, filter)
            }
        };
        if let Some(name) = name {
            if name.trim().is_empty() {
                return Err(Error::invalid("name", "required").into());
            }
            row.name = name.trim().to_owned();
        }
        if let Some(f) = filter {
            if row.r#type != "active" {
                return Err(Error::invalid("filter", "a static list has members, not a filter").into());
            }
            self.compile(Some(&f), &self.store.catalog(&c.account).await?)?;
            row.filter = f.encode_to_vec();
        }
        self.store.update_list(&c.account, &row.id, &row.name, &row.filter).await?;
        let size = self.list_size(&c.account, &row).await?;
        Ok(Response::new(pb::UpdateListResponse { list: Some(convert::list(row, size)) }))
    }

    async fn delete_list(&self, req: Request<pb::DeleteListRequest>) -> Answer<pb::DeleteListResponse> {
        let c = caller(&req)?;
        self.store.delete_list(&c.account, &req.into_inner().id).await?;
        Ok(Response::new(pb::DeleteListResponse {}))
    }

    async fn add_list_members(
        &self,
        req: Request<pb::AddListMembersRequest>,
    ) -> Answer<pb::AddListMembersResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        batch_len("contact_ids", r.contact_ids.len())?;
        let list = self.store.list(&c.account, &r.list_id).await?;
        if list.r#type == "active" {
            return Err(Error::FailedPrecondition("an active list's members follow its filter".into()).into());
        }
        let (added, not_found) =
            self.store.add_members(&c.account, &list.id, &r.contact_ids, self.clock.now()).await?;
        Ok(Response::new(pb::AddListMembersResponse { added, not_found }))
    }

    async fn remove_list_members(
        &self,
        req: Request<pb::RemoveListMembersRequest>,
    ) -> Answer<pb::RemoveListMembersResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        batch_len("contact_ids", r.contact_ids.len())?;
        let list = self.store.list(&c.account, &r.list_id).await?;
        if list.r#type == "active" {
            return Err(Error::FailedPrecondition("an active list's members follow its filter".into()).into());
        }
        let removed = self.store.remove_members(&c.account, &list.id, &r.contact_ids).await?;
        Ok(Response::new(pb::RemoveListMembersResponse { removed }))
    }

    async fn list_list_members(
        &self,
        req: Request<pb::ListListMembersRequest>,
    ) -> Answer<pb::ListListMembersResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let list = self.store.list(&c.account, &r.list_id).await?;
        let after = paging::after(&format!("members of {}", list.id), &r.page_token)?.unwrap_or_default();
        let ids = if list.r#type == "active" {
            let catalog = self.store.catalog(&c.account).await?;
            let f = pb::ContactFilter::decode(list.filter.as_slice())
                .map_err(|_| Error::Internal("stored filter".into()))?;
            match filter::compile(Some(&f), &catalog, self.store.db.backend(), 1) {
                Ok(sql) => self.store.matching_ids(&c.account, &sql, &after, limit + 1).await?,
                Err(_) => vec![],
            }
        } else {
            self.store.members(&c.account, &list.id, &after, limit + 1).await?
        };
        let more = ids.len() as i64 > limit;
        let contact_ids: Vec<String> = ids.into_iter().take(limit as usize).collect();
        let next_page_token = match contact_ids.last() {
            Some(id) if more => paging::token(&format!("members of {}", list.id), id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListListMembersResponse { contact_ids, next_page_token }))
    }

    async fn list_contact_memberships(
        &self,
        req: Request<pb::ListContactMembershipsRequest>,
    ) -> Answer<pb::ListContactMembershipsResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let id = self.subject(&c.account, r.contact_id, &r.email).await?;
        // An unknown id is NOT_FOUND, as an unknown email is, not "in no list".
        self.contact_by_id(&c.account, &id).await?;
        let statics: std::collections::HashSet<String> =
            self.store.lists_of(&c.account, &id).await?.into_iter().collect();
        let catalog = self.store.catalog(&c.account).await?;
        let after = paging::after(&format!("memberships of {id}"), &r.page_token)?.unwrap_or_default();
        let (mut lists, mut after, mut more) = (Vec::new(), after, false);
        'scan: loop {
            let rows = self.store.lists(&c.account, &after, MEMBERSHIP_SCAN).await?;
            let last_page = (rows.len() as i64) < MEMBERSHIP_SCAN;
            for row in rows {
                after = row.id.clone();
                let member = if row.r#type == "active" {
                    let f = pb::ContactFilter::decode(row.filter.as_slice())
                        .map_err(|_| Error::Internal("stored filter".into()))?;
                    match filter::compile(Some(&f), &catalog, self.store.db.backend(), 1) {
                        Ok(sql) => self.store.matches(&c.account, &sql, &id).await?,
                        Err(_) => false,
                    }
                } else {
                    statics.contains(&row.id)
                };
                if member {
                    if lists.len() as i64 == limit {
                        more = true;
                        break 'scan;
                    }
                    let size = self.list_size(&c.account, &row).await?;
                    lists.push(convert::list(row, size));
                }
            }
            if last_page {
                break;
            }
        }
        let next_page_token = match lists.last() {
            Some(l) if more => paging::token(&format!("memberships of {id}"), &l.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListContactMembershipsResponse { lists, next_page_token }))
    }

    async fn set_consent(&self, req: Request<pb::SetConsentRequest>) -> Answer<pb::SetConsentResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        required("contact_id", &r.contact_id)?;
        let consent = r.consent.ok_or_else(|| Error::invalid("consent", "required"))?;
        if consent.legal_basis.trim().is_empty() && !consent.unsubscribed_from_all {
            return Err(Error::invalid("consent.legal_basis", "required unless unsubscribed from all").into());
        }
        for (i, t) in consent.subscription_types.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(Error::invalid(format!("consent.subscription_types[{i}]"), "empty").into());
            }
        }
        let now = self.clock.now();
        let opted_in_at = match &consent.opted_in_at {
            // An opt-in is recorded as it happens: not in the future, not before 2000.
            Some(t)
                if t.seconds < 946_684_800 || t.seconds > (now + chrono::Duration::days(1)).timestamp() =>
            {
                return Err(Error::invalid("consent.opted_in_at", "must lie from 2000 to now").into());
            }
            Some(t) => t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000,
            None if consent.unsubscribed_from_all => 0,
            None => micros(now),
        };
        let row = ConsentRow {
            legal_basis: consent.legal_basis.trim().to_owned(),
            opted_in_at,
            // Unsubscribed from all means subscribed to nothing.
            subscription_types: serde_json::to_string(if consent.unsubscribed_from_all {
                &[][..]
            } else {
                &consent.subscription_types[..]
            })
            .expect("JSON of strings"),
            unsubscribed_from_all: consent.unsubscribed_from_all,
        };
        self.store.set_consent(&c.account, &r.contact_id, &row, micros(self.clock.now())).await?;
        Ok(Response::new(pb::SetConsentResponse { consent: Some(convert::consent(row)) }))
    }

    async fn get_consent(&self, req: Request<pb::GetConsentRequest>) -> Answer<pb::GetConsentResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().contact_id;
        self.contact_by_id(&c.account, &id).await?;
        let consent = self.store.consent(&c.account, &id).await?.map(convert::consent).unwrap_or_default();
        Ok(Response::new(pb::GetConsentResponse { consent: Some(consent) }))
    }

    async fn export_contact_data(
        &self,
        req: Request<pb::ExportContactDataRequest>,
    ) -> Answer<pb::ExportContactDataResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let id = self.subject(&c.account, r.contact_id, &r.email).await?;
        let row = self.contact_by_id(&c.account, &id).await?;
        let consent = self.store.consent(&c.account, &id).await?;
        let lists = self.store.lists_of(&c.account, &id).await?;
        let record::Export { history, timeline, behaviour } =
            record::export(&self.store, &c.account, &id).await?;
        let own = serde_json::json!({
            "id": row.id,
            "email": row.email,
            "properties": row.values(),
            "version": row.version,
            "creation_source": { "type": row.source_type, "id": row.source_id },
            "created_at_micros": row.created_at,
            "updated_at_micros": row.updated_at,
            "consent": consent.map(|c| serde_json::json!({
                "legal_basis": c.legal_basis,
                "opted_in_at_micros": c.opted_in_at,
                "subscription_types": serde_json::from_str::<serde_json::Value>(&c.subscription_types).unwrap_or_default(),
                "unsubscribed_from_all": c.unsubscribed_from_all,
            })),
            "static_lists": lists,
            "last_activity_at_micros": row.last_activity_at,
            "visits": {
                "count": row.visits.visits,
                "first_visit_at_micros": row.visits.first_visit_at,
                "last_visit_at_micros": row.visits.last_visit_at,
                "original_source": row.visits.original_source,
                "latest_source": row.visits.latest_source,
            },
            "property_history": history,
            "engagements": timeline,
            "events": behaviour,
        });
        // Whatever marketing-status holds about the person, however long their status history:
        // the export is built whole on both sides, so no message limit short of it applies.
        let mut client =
            mpb::marketing_status_internal_service_client::MarketingStatusInternalServiceClient::new(
                self.marketing_status.service(),
            )
            .max_decoding_message_size(usize::MAX);
        let status = client
            .export_contact_status_data(mpb::ExportContactStatusDataRequest {
                account_id: c.account.clone(),
                contact_id: id,
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!("marketing-status could not export its part: {}", e.message()))
            })?
            .into_inner();
        Ok(Response::new(pb::ExportContactDataResponse {
            parts: vec![
                pb::ServiceExport { service: crate::NAME.into(), json: own.to_string() },
                pb::ServiceExport { service: "marketing-status".into(), json: status.json },
            ],
        }))
    }

    async fn erase_contact(&self, req: Request<pb::EraseContactRequest>) -> Answer<pb::EraseContactResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let id = self.subject(&c.account, r.contact_id, &r.email).await?;
        self.delete_one(&c.account, &id, true).await?;
        Ok(Response::new(pb::EraseContactResponse {}))
    }

    async fn anonymize_contact(
        &self,
        req: Request<pb::AnonymizeContactRequest>,
    ) -> Answer<pb::AnonymizeContactResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let id = self.subject(&c.account, r.contact_id, &r.email).await?;
        let row = self.store.anonymize(&c.account, &id, self.clock.now()).await?;
        let catalog = self.store.catalog(&c.account).await?;
        Ok(Response::new(pb::AnonymizeContactResponse {
            contact: Some(convert::contact(row, &catalog, &[])),
        }))
    }

    async fn list_property_history(
        &self,
        req: Request<pb::ListPropertyHistoryRequest>,
    ) -> Answer<pb::ListPropertyHistoryResponse> {
        let c = caller(&req)?;
        Ok(Response::new(record::property_history(&self.store, &c.account, req.into_inner()).await?))
    }

    async fn create_engagement(
        &self,
        req: Request<pb::CreateEngagementRequest>,
    ) -> Answer<pb::CreateEngagementResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let key = idempotency::Key::of(&r.request_id, "CreateEngagement", &c.subject, || {
            pb::CreateEngagementRequest { request_id: String::new(), ..r.clone() }
        });
        if let Some(first) = self.replay(&c.account, &key).await? {
            return Ok(Response::new(first));
        }
        let now = micros(self.clock.now());
        let by = record::Logger { subject: &c.subject, user: &c.user, now };
        let (subject, e) = record::new_engagement(r, &by)?;
        let answer = |l: &Logged| pb::CreateEngagementResponse {
            engagement: Some(convert::engagement(l.engagement.clone())),
            contact_created: l.contact_created,
        };
        let encoded = |l: &Logged| answer(l).encode_to_vec();
        let keep = KeepLogged { request_id: &key.id, digest: &key.digest, answer: &encoded };
        let Some(logged) = self.store.log_engagement(&c.account, subject, e, Some(keep)).await? else {
            // A twin under the same request id logged first: its answer is this one's.
            let first = self.replay(&c.account, &key).await?;
            return Ok(Response::new(
                first.ok_or_else(|| Error::Internal("a kept answer went missing".into()))?,
            ));
        };
        if logged.contact_created {
            self.relay.wake();
        }
        Ok(Response::new(answer(&logged)))
    }

    async fn get_engagement(
        &self,
        req: Request<pb::GetEngagementRequest>,
    ) -> Answer<pb::GetEngagementResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "required").into());
        }
        let e = self.store.engagement(&c.account, &id).await?;
        let e = e.ok_or_else(|| Error::NotFound(format!("engagement {id}")))?;
        Ok(Response::new(pb::GetEngagementResponse { engagement: Some(convert::engagement(e)) }))
    }

    async fn update_engagement(
        &self,
        req: Request<pb::UpdateEngagementRequest>,
    ) -> Answer<pb::UpdateEngagementResponse> {
        let c = caller(&req)?;
        let now = micros(self.clock.now());
        let e = record::update_engagement(&self.store, &c.account, req.into_inner(), now).await?;
        Ok(Response::new(pb::UpdateEngagementResponse { engagement: Some(e) }))
    }

    async fn delete_engagement(
        &self,
        req: Request<pb::DeleteEngagementRequest>,
    ) -> Answer<pb::DeleteEngagementResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "required").into());
        }
        self.store.delete_engagement(&c.account, &id).await?;
        Ok(Response::new(pb::DeleteEngagementResponse {}))
    }

    async fn list_engagements(
        &self,
        req: Request<pb::ListEngagementsRequest>,
    ) -> Answer<pb::ListEngagementsResponse> {
        let c = caller(&req)?;
        Ok(Response::new(record::engagements(&self.store, &c.account, req.into_inner()).await?))
    }

    async fn record_contact_events(
        &self,
        req: Request<pb::RecordContactEventsRequest>,
    ) -> Answer<pb::RecordContactEventsResponse> {
        let c = caller(&req)?;
        let events = req.into_inner().events;
        batch_len("events", events.len())?;
        // Which field names each event's contact, for the errors that do not name one.
        let by_email: Vec<bool> =
            events.iter().map(|e| matches!(e.contact, Some(pb::contact_event::Contact::Email(_)))).collect();
        let now = self.clock.now();
        // Forms are a source the system that takes them sets, as at creation: a person needs the
        // admin scope for a form to make its contact.
        let make_form_contacts = c.user.is_empty() || c.admin;
        let record::Checked { good, refused, withheld } =
            record::new_events(events, micros(now), make_form_contacts);
        let (idx, news): (Vec<usize>, Vec<_>) = good.into_iter().unzip();
        let recorded =
            if news.is_empty() { vec![] } else { self.store.record_events(&c.account, news, now).await? };
        if recorded.iter().any(|r| r.as_ref().is_ok_and(|r| r.contact_created)) {
            self.relay.wake();
        }
        // A new event may leave a scoring window before anything the worker knew of.
        if recorded.iter().any(|r| r.as_ref().is_ok_and(|r| !r.replayed)) {
            self.scoring.wake();
        }
        let mut outcomes: Vec<(usize, Result<_>)> = idx
            .into_iter()
            .zip(recorded)
            .map(|(i, r)| match r {
                Err(Error::NoneWith { .. }) if withheld.contains(&i) => {
                    let reason = "a form makes its contact from the system that takes it: a user needs the admin scope";
                    (i, Err(Error::denied(format!("events[{i}].email"), reason)))
                }
                Err(Error::Exists { kind: "event", id, .. }) => {
                    let message = format!("events[{i}].id: recorded before for another event");
                    (i, Err(Error::Exists { kind: "event", id, message }))
                }
                other => (i, other),
            })
            .collect();
        outcomes.extend(refused.into_iter().map(|(i, e)| (i, Err(e))));
        let error = |i: usize, e: &Error| {
            let mut out = batch_error(i, e);
            if out.field.is_empty() {
                out.field = match e {
                    Error::Exists { .. } => format!("events[{i}].id"),
                    Error::NotFound(_) | Error::NoneWith { .. } if by_email[i] => {
                        format!("events[{i}].email")
                    }
                    Error::NotFound(_) | Error::NoneWith { .. } => format!("events[{i}].contact_id"),
                    _ => String::new(),
                };
            }
            out
        };
        Ok(Response::new(record::recorded(outcomes, error)))
    }

    async fn list_contact_events(
        &self,
        req: Request<pb::ListContactEventsRequest>,
    ) -> Answer<pb::ListContactEventsResponse> {
        let c = caller(&req)?;
        Ok(Response::new(record::contact_events(&self.store, &c.account, req.into_inner()).await?))
    }

    async fn list_duplicate_candidates(
        &self,
        req: Request<pb::ListDuplicateCandidatesRequest>,
    ) -> Answer<pb::ListDuplicateCandidatesResponse> {
        let c = caller(&req)?;
        Ok(Response::new(record::duplicate_candidates(&self.store, &c.account, req.into_inner()).await?))
    }

    async fn get_lifecycle_report(
        &self,
        req: Request<pb::GetLifecycleReportRequest>,
    ) -> Answer<pb::GetLifecycleReportResponse> {
        let c = caller(&req)?;
        Ok(Response::new(record::lifecycle_report(&self.store, &c.account, req.into_inner()).await?))
    }

    async fn create_scoring_rule(
        &self,
        req: Request<pb::CreateScoringRuleRequest>,
    ) -> Answer<pb::CreateScoringRuleResponse> {
        let c = caller(&req)?;
        let rule = req.into_inner().rule.ok_or_else(|| Error::invalid("rule", "required"))?;
        let catalog = self.store.catalog(&c.account).await?;
        let criterion = convert::criterion(&rule, &catalog)?;
        check_rule(&rule.name, rule.points, &criterion)?;
        let now = micros(self.clock.now());
        let row = self
            .store
            .create_scoring_rule(
                &c.account,
                rule.name.trim(),
                rule.points,
                &criterion,
                now,
                MAX_SCORING_RULES,
            )
            .await?;
        self.scoring.wake();
        Ok(Response::new(pb::CreateScoringRuleResponse { rule: Some(convert::scoring_rule(row)) }))
    }

    async fn list_scoring_rules(
        &self,
        req: Request<pb::ListScoringRulesRequest>,
    ) -> Answer<pb::ListScoringRulesResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let all: Vec<pb::ScoringRule> =
            self.store.scoring_rules(&c.account).await?.into_iter().map(convert::scoring_rule).collect();
        let (rules, next_page_token) =
            paging::page("scoring rules", all, |r| r.id.as_str(), r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListScoringRulesResponse { rules, next_page_token }))
    }

    async fn delete_scoring_rule(
        &self,
        req: Request<pb::DeleteScoringRuleRequest>,
    ) -> Answer<pb::DeleteScoringRuleResponse> {
        let c = caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "required").into());
        }
        self.store.delete_scoring_rule(&c.account, &id).await?;
        self.scoring.wake();
        Ok(Response::new(pb::DeleteScoringRuleResponse {}))
    }

    async fn get_scoring_settings(
        &self,
        req: Request<pb::GetScoringSettingsRequest>,
    ) -> Answer<pb::GetScoringSettingsResponse> {
        let c = caller(&req)?;
        let mql_threshold = self.store.mql_threshold(&c.account).await?;
        Ok(Response::new(pb::GetScoringSettingsResponse {
            settings: Some(pb::ScoringSettings { mql_threshold }),
        }))
    }

    async fn set_scoring_settings(
        &self,
        req: Request<pb::SetScoringSettingsRequest>,
    ) -> Answer<pb::SetScoringSettingsResponse> {
        let c = caller(&req)?;
        let settings = req.into_inner().settings.ok_or_else(|| Error::invalid("settings", "required"))?;
        self.store.set_mql_threshold(&c.account, settings.mql_threshold).await?;
        self.scoring.wake();
        Ok(Response::new(pb::SetScoringSettingsResponse { settings: Some(settings) }))
    }

    async fn dismiss_duplicate(
        &self,
        req: Request<pb::DismissDuplicateRequest>,
    ) -> Answer<pb::DismissDuplicateResponse> {
        let c = caller(&req)?;
        let now = micros(self.clock.now());
        record::dismiss_duplicate(&self.store, &c.account, &c.subject, req.into_inner(), now).await?;
        Ok(Response::new(pb::DismissDuplicateResponse {}))
    }
}
