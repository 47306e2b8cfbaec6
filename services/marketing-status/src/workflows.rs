//! Workflows (Professional and Enterprise): a saved rule that sets its list's or filter's
//! contacts marketing, or non-marketing at the next update date. A run is queued, carried out by
//! a worker on the injected clock, and retried with backoff until it succeeds.

use crate::api::Api;
use crate::convert;

use crate::rules::Status;
use crate::setting;
use crate::store::{Actor, RunRow, Store, WorkflowRow};
use crate::targets::{Contacts, Target};
use chrono::{DateTime, Utc};
use contactier_proto::contacts::v1 as cpb;
use contactier_proto::marketing_status::v1 as pb;
use contactier_runtime::Principal;
use contactier_runtime::clock::{Worker, WorkerWaker};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::error::Error;
use contactier_runtime::shutdown::Shutdown;
use prost::Message;
use tonic::{Request, Status as GrpcStatus};

/// Delay before retry `attempt` (1-based): 10 s doubling, at most an hour.
pub fn retry_delay(attempt: i64) -> chrono::Duration {
    chrono::Duration::seconds((10i64 << (attempt - 1).clamp(0, 20)).min(3_600))
}

impl Api {
    /// Workflows are for Professional and Enterprise accounts.
    async fn check_edition(&self, account: &str) -> Result<(), GrpcStatus> {
        let s = self.store.settings(account).await.map_err(Error::from)?;
        if s.edition.is_some_and(contactier_domain::Edition::has_workflows) {
            Ok(())
        } else {
            Err(Error::edition_required("workflows are part of Professional and Enterprise").into())
        }
    }

    async fn workflow(&self, account: &str, id: &str) -> Result<WorkflowRow, GrpcStatus> {
        self.store
            .workflows(account, Some(id))
            .await
            .map_err(Error::from)?
            .pop()
            .ok_or_else(|| Error::not_found(format!("workflow {id}")).into())
    }

    pub async fn create_workflow_impl(
        &self,
        req: Request<pb::CreateWorkflowRequest>,
    ) -> Result<pb::CreateWorkflowResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        self.check_edition(&account).await?;
        let w = req.into_inner().workflow.ok_or_else(|| Error::invalid("workflow", "required"))?;
        if w.name.trim().is_empty() {
            return Err(Error::invalid("workflow.name", "required").into());
        }
        let action =
            pb::WorkflowAction::try_from(w.action).ok().and_then(convert::action_name).ok_or_else(|| {
                Error::invalid("workflow.action", "SET_MARKETING or SET_NON_MARKETING_AT_NEXT_UPDATE")
            })?;
        let (list_id, filter) = match w.target {
            Some(pb::workflow::Target::ListId(id)) if !id.is_empty() => {
                self.contacts.check(&account, &Target::List(id.clone()), "workflow.list_id").await?;
                (id, vec![])
            }
            Some(pb::workflow::Target::Filter(f)) if !f.groups.is_empty() => {
                // "workflow" + the contacts service's "filter..." names the field here.
                self.contacts.check(&account, &Target::Filter(f.clone()), "workflow").await?;
                (String::new(), f.encode_to_vec())
            }
            _ => {
                return Err(Error::invalid("workflow.target", "a list_id or a filter with groups").into());
            }
        };
        if self.store.workflow_count(&account).await.map_err(Error::from)? >= MAX_WORKFLOWS {
            return Err(Error::quota_reached("workflows", MAX_WORKFLOWS).into());
        }
        let row = WorkflowRow {
            id: new_id(),
            name: w.name.trim().to_owned(),
            list_id,
            filter,
            action: action.to_owned(),
            created_at: micros(self.clock.now()),
        };
        self.store.create_workflow(&account, &row).await.map_err(Error::from)?;
        Ok(pb::CreateWorkflowResponse { workflow: Some(convert::pb_workflow(row)) })
    }

    pub async fn get_workflow_impl(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<pb::GetWorkflowResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let w = self.workflow(&account, &req.into_inner().id).await?;
        Ok(pb::GetWorkflowResponse { workflow: Some(convert::pb_workflow(w)) })
    }

    pub async fn list_workflows_impl(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<pb::ListWorkflowsResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let r = req.get_ref();
        let rows = self.store.workflows(&account, None).await.map_err(Error::from)?;
        let all: Vec<pb::Workflow> = rows.into_iter().map(convert::pb_workflow).collect();
        let (workflows, next_page_token) = contactier_runtime::paging::page(
            "workflows",
            all,
            |w| w.id.as_str(),
            r.page_size,
            &r.page_token,
        )?;
        Ok(pb::ListWorkflowsResponse { workflows, next_page_token })
    }

    pub async fn delete_workflow_impl(
        &self,
        req: Request<pb::DeleteWorkflowRequest>,
    ) -> Result<pb::DeleteWorkflowResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let id = req.into_inner().id;
        if !self.store.delete_workflow(&account, &id).await.map_err(Error::from)? {
            return Err(Error::not_found(format!("workflow {id}")).into());
        }
        Ok(pb::DeleteWorkflowResponse {})
    }

    pub async fn run_workflow_impl(
        &self,
        req: Request<pb::RunWorkflowRequest>,
    ) -> Result<pb::RunWorkflowResponse, GrpcStatus> {
        let principal = Principal::of(&req)?.clone();
        let account = principal.account_id()?.to_owned();
        self.check_edition(&account).await?;
        let r = req.into_inner();
        let w = self.workflow(&account, &r.workflow_id).await?;
        // A run that makes contacts marketing does so for the user who asks for it.
        let user = principal.user_id().unwrap_or_default().to_owned();
        if w.action == "set_marketing"
            && !user.is_empty()
            && !self.store.may_set_marketing(&account, &user).await.map_err(Error::from)?
        {
            return Err(Error::denied("", "this user may not set contacts as marketing").into());
        }
        let run = RunRow {
            account_id: account,
            id: new_id(),
            workflow_id: w.id.clone(),
            request_id: r.request_id,
            created_at: micros(self.clock.now()),
            requested_by: user,
            ..RunRow::default()
        };
        let run = self.store.queue_run(&run).await.map_err(Error::from)?;
        // The request id was used before to run another workflow.
        if run.workflow_id != w.id {
            return Err(contactier_runtime::idempotency::reused());
        }
        self.workflows.wake();
        Ok(pb::RunWorkflowResponse { run: Some(convert::pb_run(run)) })
    }

    pub async fn get_workflow_run_impl(
        &self,
        req: Request<pb::GetWorkflowRunRequest>,
    ) -> Result<pb::GetWorkflowRunResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let id = req.into_inner().id;
        let run = self
            .store
            .run(&account, &id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found(format!("run {id}")))?;
        Ok(pb::GetWorkflowRunResponse { run: Some(convert::pb_run(run)) })
    }
}

/// Carries out due runs.
pub struct Runner {
    pub store: Store,
    pub contacts: Contacts,
    pub relay: WorkerWaker,
}

/// Why an attempt did not succeed.
enum Failure {
    /// Worth trying again: the contacts service or the database did not answer.
    Retry(String),
    /// Never going to succeed: the list is gone, the filter no longer compiles.
    Final(String),
}

/// Workflows one account may have.
pub const MAX_WORKFLOWS: i64 = 1_000;

/// Runs carried out at once; one slow run does not hold up the others.
const PARALLEL: usize = 4;
/// The longest one attempt may take before it counts as failed and is retried.
const ATTEMPT: std::time::Duration = std::time::Duration::from_secs(300);
pub const WORKER: &str = "marketing-status-workflows";

impl Runner {
    async fn attempt(&self, run: &RunRow, now: DateTime<Utc>) -> Result<i64, Failure> {
        let retry = |e: sqlx::Error| Failure::Retry(e.to_string());
        let Some(w) =
            self.store.workflows(&run.account_id, Some(&run.workflow_id)).await.map_err(retry)?.pop()
        else {
            // Deleted since it was queued: nothing left to do.
            return Ok(0);
        };
        let target = if w.list_id.is_empty() {
            Target::Filter(
                cpb::ContactFilter::decode(w.filter.as_slice()).map_err(|e| Failure::Final(e.to_string()))?,
            )
        } else {
            Target::List(w.list_id.clone())
        };
        let ids = self.contacts.ids(&run.account_id, &target).await.map_err(|e| {
            let reason = format!("{:?}: {}", e.code(), e.message());
            match e.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => Failure::Final(reason),
                _ => Failure::Retry(reason),
            }
        })?;
        let wanted = if w.action == "set_marketing" { Status::Marketing } else { Status::NonMarketing };
        // The requester's permission, again as the run is carried out: it may have been removed.
        if wanted == Status::Marketing
            && !run.requested_by.is_empty()
            && !self.store.may_set_marketing(&run.account_id, &run.requested_by).await.map_err(retry)?
        {
            return Err(Failure::Final(
                "the user who asked for the run may not set contacts as marketing".into(),
            ));
        }
        let actor = Actor {
            source_type: "WORKFLOW".into(),
            source_id: w.id.clone(),
            user_id: run.requested_by.clone(),
            request_id: run.id.clone(),
        };
        let none = contactier_runtime::idempotency::Key::none();
        let answer = setting::apply(&self.store, &run.account_id, &ids, false, wanted, &actor, &none, now)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        Ok(answer.changed)
    }

    /// One run's attempt, its outcome saved on the run.
    async fn carry_out(&self, mut run: RunRow, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        run.attempts += 1;
        let outcome = match tokio::time::timeout(ATTEMPT, self.attempt(&run, now)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Retry(format!("not done within {} s", ATTEMPT.as_secs()))),
        };
        match outcome {
            Ok(changed) => {
                run.state = "succeeded".into();
                run.changed = changed;
                run.finished_at = micros(now);
                tracing::info!(run = %run.id, changed, "workflow run succeeded");
                self.relay.wake();
            }
            Err(Failure::Final(e)) => {
                run.state = "failed".into();
                run.finished_at = micros(now);
                tracing::warn!(run = %run.id, attempt = run.attempts, error = %e, "workflow run failed for good");
                run.last_error = e;
            }
            Err(Failure::Retry(e)) => {
                run.state = "retrying".into();
                run.next_attempt_at = micros(now + retry_delay(run.attempts));
                contactier_runtime::work::record_failure(WORKER, &run.account_id, &run.id, run.attempts, &e);
                run.last_error = e;
            }
        }
        self.store.save_run(&run).await
    }

    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        use futures::StreamExt;
        let results: Vec<Result<(), sqlx::Error>> = futures::stream::iter(self.store.due_runs(now).await?)
            .map(|run| self.carry_out(run, now))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        // A run whose outcome could not be saved stays due; the others are saved.
        results.into_iter().collect::<Result<(), _>>()?;
        self.store.next_run_due().await
    }
}

pub async fn run(runner: Runner, worker: Worker, shutdown: Shutdown) {
    let r = &runner;
    worker.drive(shutdown, chrono::Duration::seconds(5), move |now| r.run_once(now)).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn retries_back_off_to_an_hour() {
        let secs: Vec<i64> = (1..=11).map(|a| super::retry_delay(a).num_seconds()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]);
    }
}
