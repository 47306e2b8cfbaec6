//! MarketingStatusService and MarketingStatusInternalService: the gRPC layer over the rules and the store.

use crate::convert::{self, pb_counts, pb_settings, pb_status, requested, source_type_name};
use crate::rules::Status;
use crate::store::{Actor, AppliedDate, DateToApply, Plan, Store};
use crate::targets::{self, Contacts};
use chrono::{DateTime, Utc};
use contactier_proto::common::v1::{self as common, SourceType};
use contactier_proto::marketing_status::v1::{
    self as pb, marketing_status_internal_service_server::MarketingStatusInternalService,
    marketing_status_service_server::MarketingStatusService, set_marketing_status_request::Target,
};
use contactier_runtime::Principal;
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::convert::date;
use contactier_runtime::db::bounded;

use contactier_runtime::error::Error;
use contactier_runtime::idempotency::{self, Key};
use contactier_runtime::request::{Answer, account};
use prost::Message;
use tonic::{Request, Response};

pub use crate::setting::MAX_CONTACTS_PER_CALL;

pub struct Api {
    pub store: Store,
    pub clock: Clock,
    /// The relay of count events to billing.
    pub relay: WorkerWaker,
    /// The contacts service, for list and filter targets.
    pub contacts: Contacts,
    /// The workflow runner.
    pub workflows: WorkerWaker,
}

#[tonic::async_trait]
impl MarketingStatusService for Api {
    async fn get_contact_status(
        &self,
        req: Request<pb::GetContactStatusRequest>,
    ) -> Answer<pb::GetContactStatusResponse> {
        let account = account(&req)?;
        let id = req.into_inner().contact_id;
        let row = self.store.statuses(&account, std::slice::from_ref(&id)).await.map_err(Error::from)?.pop();
        let row = row.ok_or_else(|| Error::not_found("contact"))?;
        Ok(Response::new(pb::GetContactStatusResponse { status: Some(pb_status(row)) }))
    }

    async fn batch_get_contact_statuses(
        &self,
        req: Request<pb::BatchGetContactStatusesRequest>,
    ) -> Answer<pb::BatchGetContactStatusesResponse> {
        let account = account(&req)?;
        let ids = req.into_inner().contact_ids;
        if ids.len() > MAX_CONTACTS_PER_CALL {
            return Err(Error::invalid("contact_ids", format!("at most {MAX_CONTACTS_PER_CALL}")).into());
        }
        let rows = self.store.statuses(&account, &ids).await.map_err(Error::from)?;
        let not_found = ids.iter().filter(|id| !rows.iter().any(|r| &r.contact_id == *id)).cloned().collect();
        Ok(Response::new(pb::BatchGetContactStatusesResponse {
            statuses: rows.into_iter().map(pb_status).collect(),
            not_found,
        }))
    }

    async fn set_marketing_status(
        &self,
        req: Request<pb::SetMarketingStatusRequest>,
    ) -> Answer<pb::SetMarketingStatusResponse> {
        let principal = Principal::of(&req)?.clone();
        let account = principal.account_id()?.to_owned();
        let r = req.into_inner();
        let key = Key::of(&r.request_id, "SetMarketingStatus", &principal.subject, || {
            pb::SetMarketingStatusRequest { request_id: String::new(), ..r.clone() }
        });
        let wanted =
            requested(r.status).ok_or_else(|| Error::invalid("status", "MARKETING or NON_MARKETING"))?;
        let (target, per_contact) = match r.target {
            Some(Target::Contacts(c)) if c.ids.is_empty() => {
                return Err(Error::invalid("contacts.ids", "required").into());
            }
            Some(Target::Contacts(c)) if c.ids.len() > MAX_CONTACTS_PER_CALL => {
                return Err(Error::invalid("contacts.ids", format!("at most {MAX_CONTACTS_PER_CALL}")).into());
            }
            Some(Target::Contacts(c)) => (Err(c.ids), true),
            Some(Target::ListId(id)) if id.is_empty() => {
                return Err(Error::invalid("list_id", "required").into());
            }
            Some(Target::ListId(id)) => (Ok(targets::Target::List(id)), false),
            Some(Target::Filter(f)) => (Ok(targets::Target::Filter(f)), false),
            None => {
                return Err(Error::invalid("target", "contacts, list_id or filter is required").into());
            }
        };
        // A retry of a request id returns the first answer and changes nothing; another
        // request under the same id is refused.
        if !key.is_none()
            && let Some((saved, digest)) =
                self.store.saved_response(&account, &key.id).await.map_err(Error::from)?
        {
            if !idempotency::same(&digest, &key.digest) {
                return Err(idempotency::reused());
            }
            let first = pb::SetMarketingStatusResponse::decode(saved.as_slice())
                .map_err(|_| Error::internal("stored answer unreadable"))?;
            return Ok(Response::new(first));
        }
        if !self.store.settings(&account).await.map_err(Error::from)?.marketing_contacts_enabled {
            return Err(Error::feature_disabled(
                "marketing_contacts",
                "the account does not have the marketing contacts feature: every contact is billed; enable it first",
            )
            .into());
        }
        let user = principal.user_id().unwrap_or_default().to_owned();
        if wanted == Status::Marketing
            && !user.is_empty()
            && !self.store.may_set_marketing(&account, &user).await.map_err(Error::from)?
        {
            return Err(Error::denied("", "this user may not set contacts as marketing").into());
        }
        let source = r.source.unwrap_or_default();
        let source_type = match SourceType::try_from(source.r#type) {
            Ok(SourceType::Unspecified) | Err(_) => SourceType::User,
            Ok(t) => t,
        };
        // Forms, workflows, integrations and the system set a status through a service token;
        // a person may act for them only as an admin, and acts as a user under the own id.
        if !user.is_empty() && source_type != SourceType::User && !principal.has_scope("admin") {
            return Err(Error::denied(
                "source.type",
                format!("{} is set by a system; a user needs the admin scope", source_type_name(source_type)),
            )
            .into());
        }
        if !user.is_empty() && source_type == SourceType::User && !source.id.is_empty() && source.id != user {
            return Err(Error::invalid("source.id", "a user sets a status under the user's own id").into());
        }
        let ids = match target {
            Err(ids) => ids,
            Ok(t) => self.contacts.ids(&account, &t).await?,
        };
        let actor = Actor {
            source_type: source_type_name(source_type),
            source_id: if source.id.is_empty() { user.clone() } else { source.id },
            user_id: user,
            request_id: r.request_id.clone(),
        };
        let answer = crate::setting::apply(
            &self.store,
            &account,
            &ids,
            per_contact,
            wanted,
            &actor,
            &key,
            self.clock.now(),
        )
        .await?;
        self.relay.wake();
        Ok(Response::new(answer))
    }

    async fn get_marketing_count(
        &self,
        req: Request<pb::GetMarketingCountRequest>,
    ) -> Answer<pb::GetMarketingCountResponse> {
        let counts = self.store.counts(&account(&req)?).await.map_err(Error::from)?;
        Ok(Response::new(pb::GetMarketingCountResponse { count: Some(pb_counts(counts)) }))
    }

    async fn check_eligibility(
        &self,
        req: Request<pb::CheckEligibilityRequest>,
    ) -> Answer<pb::CheckEligibilityResponse> {
        let account = account(&req)?;
        let r = req.into_inner();
        if common::MarketingTool::try_from(r.tool).unwrap_or_default() == common::MarketingTool::Unspecified {
            return Err(Error::invalid("tool", "MARKETING_EMAIL or ADS_AUDIENCE").into());
        }
        if r.contact_ids.len() > MAX_CONTACTS_PER_CALL {
            return Err(Error::invalid("contact_ids", format!("at most {MAX_CONTACTS_PER_CALL}")).into());
        }
        let rows = self.store.statuses(&account, &r.contact_ids).await.map_err(Error::from)?;
        let ok =
            |id: &String| rows.iter().any(|row| &row.contact_id == id && row.state().may_receive_marketing());
        let (eligible, ineligible) = r.contact_ids.into_iter().partition(ok);
        Ok(Response::new(pb::CheckEligibilityResponse { eligible, ineligible }))
    }

    async fn get_user_permission(
        &self,
        req: Request<pb::GetUserPermissionRequest>,
    ) -> Answer<pb::GetUserPermissionResponse> {
        let account = account(&req)?;
        let user = req.into_inner().user_id;
        let may = self.store.may_set_marketing(&account, &user).await.map_err(Error::from)?;
        Ok(Response::new(pb::GetUserPermissionResponse {
            permission: Some(pb::UserPermission { user_id: user, may_set_marketing: may }),
        }))
    }

    async fn set_user_permission(
        &self,
        req: Request<pb::SetUserPermissionRequest>,
    ) -> Answer<pb::SetUserPermissionResponse> {
        let account = account(&req)?;
        let p = req.into_inner().permission.ok_or_else(|| Error::invalid("permission", "required"))?;
        if p.user_id.is_empty() {
            return Err(Error::invalid("permission.user_id", "required").into());
        }
        self.store.set_permission(&account, &p.user_id, p.may_set_marketing).await.map_err(Error::from)?;
        Ok(Response::new(pb::SetUserPermissionResponse { permission: Some(p) }))
    }

    async fn list_status_changes(
        &self,
        req: Request<pb::ListStatusChangesRequest>,
    ) -> Answer<pb::ListStatusChangesResponse> {
        Ok(Response::new(self.list_status_changes_impl(req).await?))
    }
    async fn list_source_defaults(
        &self,
        req: Request<pb::ListSourceDefaultsRequest>,
    ) -> Answer<pb::ListSourceDefaultsResponse> {
        Ok(Response::new(self.list_source_defaults_impl(req).await?))
    }
    async fn update_source_default(
        &self,
        req: Request<pb::UpdateSourceDefaultRequest>,
    ) -> Answer<pb::UpdateSourceDefaultResponse> {
        Ok(Response::new(self.update_source_default_impl(req).await?))
    }
    async fn list_user_permissions(
        &self,
        req: Request<pb::ListUserPermissionsRequest>,
    ) -> Answer<pb::ListUserPermissionsResponse> {
        Ok(Response::new(self.list_user_permissions_impl(req).await?))
    }
    async fn get_account_settings(
        &self,
        req: Request<pb::GetAccountSettingsRequest>,
    ) -> Answer<pb::GetAccountSettingsResponse> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let s = self.store.settings(&account).await.map_err(Error::from)?;
        Ok(Response::new(pb::GetAccountSettingsResponse { settings: Some(pb_settings(&s)) }))
    }
    async fn enable_marketing_contacts(
        &self,
        req: Request<pb::EnableMarketingContactsRequest>,
    ) -> Answer<pb::EnableMarketingContactsResponse> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let s = self.store.set_settings(&account, None, true, self.clock.now()).await.map_err(Error::from)?;
        self.relay.wake();
        Ok(Response::new(pb::EnableMarketingContactsResponse { settings: Some(pb_settings(&s)) }))
    }
    async fn create_workflow(
        &self,
        req: Request<pb::CreateWorkflowRequest>,
    ) -> Answer<pb::CreateWorkflowResponse> {
        Ok(Response::new(self.create_workflow_impl(req).await?))
    }
    async fn get_workflow(&self, req: Request<pb::GetWorkflowRequest>) -> Answer<pb::GetWorkflowResponse> {
        Ok(Response::new(self.get_workflow_impl(req).await?))
    }
    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Answer<pb::ListWorkflowsResponse> {
        Ok(Response::new(self.list_workflows_impl(req).await?))
    }
    async fn delete_workflow(
        &self,
        req: Request<pb::DeleteWorkflowRequest>,
    ) -> Answer<pb::DeleteWorkflowResponse> {
        Ok(Response::new(self.delete_workflow_impl(req).await?))
    }
    async fn run_workflow(&self, req: Request<pb::RunWorkflowRequest>) -> Answer<pb::RunWorkflowResponse> {
        Ok(Response::new(self.run_workflow_impl(req).await?))
    }
    async fn get_workflow_run(
        &self,
        req: Request<pb::GetWorkflowRunRequest>,
    ) -> Answer<pb::GetWorkflowRunResponse> {
        Ok(Response::new(self.get_workflow_run_impl(req).await?))
    }
}

pub struct Internal {
    pub store: Store,
    pub clock: Clock,
    pub relay: WorkerWaker,
    /// Rewrites the contacts of applied update dates.
    pub update_dates: WorkerWaker,
    /// Accounts whose rows another session held up lately.
    pub held: contactier_runtime::db::HeldAccounts,
}

/// An update date as asked for, checked: `at` names where it stands in the request.
fn date_to_apply(
    principal: &Principal,
    r: pb::ApplyUpdateDateRequest,
    at: &str,
) -> Result<DateToApply, tonic::Status> {
    principal.check_account_at(&format!("{at}account_id"), &r.account_id)?;
    let d = r.update_date.ok_or_else(|| Error::invalid(format!("{at}update_date"), "required"))?;
    let date = date(Some(&d)).map_err(|r| Error::invalid(format!("{at}update_date"), r.to_string()))?;
    let effective_at = r
        .effective_at
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .ok_or_else(|| Error::invalid(format!("{at}effective_at"), "required"))?;
    Ok(DateToApply { account: r.account_id, date, effective_at })
}

/// Checks each item of a batch `field`, all or none: `check` names the fields of item i
/// under `{field}[i].`.
fn each_at<T, U>(
    field: &str,
    items: Vec<T>,
    check: impl Fn(T, &str) -> Result<U, tonic::Status>,
) -> Result<Vec<U>, tonic::Status> {
    items.into_iter().enumerate().map(|(i, item)| check(item, &format!("{field}[{i}]."))).collect()
}

/// A plan from billing, checked; `at` prefixes the field names (`plans[3].`).
fn plan_to_set(principal: &Principal, r: pb::SetAccountPlanRequest, at: &str) -> Result<Plan, tonic::Status> {
    principal.check_account_at(&format!("{at}account_id"), &r.account_id)?;
    let edition = convert::edition(r.edition)
        .ok_or_else(|| Error::invalid(format!("{at}edition"), "STARTER, PROFESSIONAL or ENTERPRISE"))?;
    Ok(Plan { account: r.account_id, edition: Some(edition), enabled: r.marketing_contacts_enabled })
}

impl Internal {
    /// The answer to an applied date: what it changed and the account's count after it.
    async fn applied(&self, account: &str, a: AppliedDate) -> Result<pb::ApplyUpdateDateResponse, Error> {
        let counts = match a.counts {
            Some(c) => c,
            // Applied by a release that did not keep the count: the count of the moment.
            None => self.store.counts(account).await.map_err(Error::from)?,
        };
        Ok(pb::ApplyUpdateDateResponse {
            applied: a.applied,
            already_applied: a.already_applied,
            count: Some(pb_counts(counts)),
        })
    }
}

#[tonic::async_trait]
impl MarketingStatusInternalService for Internal {
    async fn apply_contact_events(
        &self,
        req: Request<pb::ApplyContactEventsRequest>,
    ) -> Answer<pb::ApplyContactEventsResponse> {
        let principal = Principal::of(&req)?.clone();
        let pb::ApplyContactEventsRequest { events, batch_sizes } = req.into_inner();
        let ends = crate::events::batch_ends(&batch_sizes, events.len())?;
        for e in &events {
            if e.event_id.is_empty() || e.account_id.is_empty() || e.payload.is_none() {
                return Err(Error::invalid("events", "event_id, account_id and payload are required").into());
            }
            principal.check_account_at("events", &e.account_id)?;
        }
        let (acknowledged, refused) =
            bounded(&self.held, crate::events::apply(&self.store, events, &ends, self.clock.now())).await?;
        self.relay.wake();
        let refused = refused
            .answer(acknowledged.len())?
            .into_iter()
            .map(|(event_id, status)| pb::RefusedContactEvent { event_id, status: Some(status) })
            .collect();
        Ok(Response::new(pb::ApplyContactEventsResponse { acknowledged_event_ids: acknowledged, refused }))
    }

    async fn apply_update_date(
        &self,
        req: Request<pb::ApplyUpdateDateRequest>,
    ) -> Answer<pb::ApplyUpdateDateResponse> {
        let principal = Principal::of(&req)?.clone();
        let d = date_to_apply(&principal, req.into_inner(), "")?;
        let applied = self
            .store
            .apply_update_date(&d.account, d.date, d.effective_at, self.clock.now())
            .await
            .map_err(Error::from)?;
        self.relay.wake();
        self.update_dates.wake();
        Ok(Response::new(self.applied(&d.account, applied).await?))
    }

    async fn apply_update_dates(
        &self,
        req: Request<pb::ApplyUpdateDatesRequest>,
    ) -> Answer<pb::ApplyUpdateDatesResponse> {
        let principal = Principal::of(&req)?.clone();
        let dates = each_at("dates", req.into_inner().dates, |d, at| date_to_apply(&principal, d, at))?;
        let applied = self.store.apply_update_dates(&dates, self.clock.now()).await;
        self.relay.wake();
        self.update_dates.wake();
        let mut results = Vec::with_capacity(dates.len());
        for (d, a) in dates.iter().zip(applied) {
            let answer = match a.map_err(Error::from) {
                Ok(a) => self.applied(&d.account, a).await,
                Err(e) => Err(e),
            };
            results.push(match answer {
                Ok(applied) => pb::ApplyUpdateDateResult { applied: Some(applied), error: None },
                Err(e) => pb::ApplyUpdateDateResult {
                    applied: None,
                    error: Some(contactier_runtime::rich::rpc_status(e.into())),
                },
            });
        }
        Ok(Response::new(pb::ApplyUpdateDatesResponse { results }))
    }

    async fn set_account_plan(
        &self,
        req: Request<pb::SetAccountPlanRequest>,
    ) -> Answer<pb::SetAccountPlanResponse> {
        let principal = Principal::of(&req)?.clone();
        let plan = plan_to_set(&principal, req.into_inner(), "")?;
        self.store.set_plans(&[plan], self.clock.now()).await.map_err(Error::from)?;
        self.relay.wake();
        Ok(Response::new(pb::SetAccountPlanResponse {}))
    }

    async fn set_account_plans(
        &self,
        req: Request<pb::SetAccountPlansRequest>,
    ) -> Answer<pb::SetAccountPlansResponse> {
        let principal = Principal::of(&req)?.clone();
        let plans = req.into_inner().plans;
        if plans.is_empty() {
            return Err(Error::invalid("plans", "required").into());
        }
        let plans = each_at("plans", plans, |p, at| plan_to_set(&principal, p, at))?;
        bounded(&self.held, self.store.set_plans(&plans, self.clock.now())).await.map_err(Error::from)?;
        self.relay.wake();
        Ok(Response::new(pb::SetAccountPlansResponse {}))
    }

    async fn export_contact_status_data(
        &self,
        req: Request<pb::ExportContactStatusDataRequest>,
    ) -> Answer<pb::ExportContactStatusDataResponse> {
        let principal = Principal::of(&req)?.clone();
        let r = req.into_inner();
        for (field, value) in [("account_id", &r.account_id), ("contact_id", &r.contact_id)] {
            if value.is_empty() {
                return Err(Error::invalid(field, "required").into());
            }
        }
        principal.check_account_at("account_id", &r.account_id)?;
        let json = self.store.export(&r.account_id, &r.contact_id).await.map_err(Error::from)?;
        Ok(Response::new(pb::ExportContactStatusDataResponse { json: json.to_string() }))
    }
}
