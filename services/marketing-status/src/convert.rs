//! Where marketing-status's records meet the generated contract types. Nothing here reads or
//! writes storage.

use crate::rules::{CreationSource, Status};
use crate::store::{ChangeRow, Counts, RunRow, Settings, StatusRow, WorkflowRow};
use contactier_domain::Edition;
use contactier_proto::common::v1::{self as common, MarketingStatus, SourceType};
use contactier_proto::contacts::v1 as cpb;
use contactier_proto::marketing_status::v1 as pb;
use contactier_runtime::convert::timestamp_micros;
use prost::Message;

/// The edition a plan names; None for none.
pub fn edition(e: i32) -> Option<Edition> {
    match common::Edition::try_from(e) {
        Ok(common::Edition::Starter) => Some(Edition::Starter),
        Ok(common::Edition::Professional) => Some(Edition::Professional),
        Ok(common::Edition::Enterprise) => Some(Edition::Enterprise),
        Ok(common::Edition::Unspecified) | Err(_) => None,
    }
}

pub fn pb_settings(s: &Settings) -> pb::AccountSettings {
    let edition = match s.edition {
        Some(Edition::Starter) => common::Edition::Starter,
        Some(Edition::Professional) => common::Edition::Professional,
        Some(Edition::Enterprise) => common::Edition::Enterprise,
        None => common::Edition::Unspecified,
    };
    pb::AccountSettings { marketing_contacts_enabled: s.marketing_contacts_enabled, edition: edition as i32 }
}

pub use contactier_runtime::convert::source_type_name;

pub fn pb_status(r: StatusRow) -> pb::ContactStatus {
    let source_type = contactier_runtime::convert::source_type(&r.source_type);
    pb::ContactStatus {
        contact_id: r.contact_id,
        status: marketing_status(r.marketing) as i32,
        marketable_until_next_update: r.pending,
        source: Some(common::Source { r#type: source_type as i32, id: r.source_id }),
        updated_at: timestamp_micros(r.updated_at),
    }
}

pub fn marketing_status(marketing: bool) -> MarketingStatus {
    if marketing { MarketingStatus::Marketing } else { MarketingStatus::NonMarketing }
}

/// A status as the audit trail stores it (`marketing`, `non_marketing`).
pub fn stored_status(s: &str) -> MarketingStatus {
    marketing_status(s == "marketing")
}

pub fn pb_counts(c: Counts) -> pb::MarketingCount {
    pb::MarketingCount {
        marketing: c.marketing,
        pending_non_marketing: c.pending,
        non_marketing: c.non_marketing,
        version: c.version,
        as_of: timestamp_micros(c.updated_at),
    }
}

pub fn creation_source(t: SourceType) -> Option<CreationSource> {
    use CreationSource as C;
    Some(match t {
        SourceType::Form => C::Form,
        SourceType::Import => C::Import,
        SourceType::Chatflow => C::Chatflow,
        SourceType::Integration => C::Integration,
        SourceType::Ads => C::Ads,
        SourceType::User => C::User,
        SourceType::SalesExtension => C::SalesExtension,
        SourceType::LoggedEmail => C::LoggedEmail,
        SourceType::MeetingLink => C::MeetingLink,
        SourceType::MobileApp => C::MobileApp,
        SourceType::Workflow => C::Workflow,
        SourceType::Merge => C::Merge,
        SourceType::System => C::System,
        SourceType::Unspecified => return None,
    })
}

/// The status a request asks for; None for none.
pub fn requested(s: i32) -> Option<Status> {
    match MarketingStatus::try_from(s) {
        Ok(MarketingStatus::Marketing) => Some(Status::Marketing),
        Ok(MarketingStatus::NonMarketing) => Some(Status::NonMarketing),
        _ => None,
    }
}

pub fn pb_change(c: ChangeRow) -> pb::StatusChange {
    let source_type = contactier_runtime::convert::source_type(&c.source_type);
    pb::StatusChange {
        id: c.id,
        contact_id: c.contact_id,
        from_status: stored_status(&c.from_status) as i32,
        to_status: stored_status(&c.to_status) as i32,
        pending: c.pending,
        source: Some(common::Source { r#type: source_type as i32, id: c.source_id }),
        user_id: c.user_id,
        requested_at: timestamp_micros(c.requested_at),
        effective_at: timestamp_micros(c.effective_at),
        request_id: c.request_id,
    }
}

pub fn action_name(a: pb::WorkflowAction) -> Option<&'static str> {
    match a {
        pb::WorkflowAction::SetMarketing => Some("set_marketing"),
        pb::WorkflowAction::SetNonMarketingAtNextUpdate => Some("set_non_marketing"),
        pb::WorkflowAction::Unspecified => None,
    }
}

pub fn pb_workflow(w: WorkflowRow) -> pb::Workflow {
    let target = if w.list_id.is_empty() {
        cpb::ContactFilter::decode(w.filter.as_slice()).ok().map(pb::workflow::Target::Filter)
    } else {
        Some(pb::workflow::Target::ListId(w.list_id))
    };
    let action = if w.action == "set_marketing" {
        pb::WorkflowAction::SetMarketing
    } else {
        pb::WorkflowAction::SetNonMarketingAtNextUpdate
    };
    pb::Workflow {
        id: w.id,
        name: w.name,
        target,
        action: action as i32,
        created_at: timestamp_micros(w.created_at),
    }
}

pub fn pb_run(r: RunRow) -> pb::WorkflowRun {
    let state = match r.state.as_str() {
        "queued" => pb::WorkflowRunState::Queued,
        "retrying" => pb::WorkflowRunState::Retrying,
        "succeeded" => pb::WorkflowRunState::Succeeded,
        "failed" => pb::WorkflowRunState::Failed,
        _ => pb::WorkflowRunState::Unspecified,
    };
    pb::WorkflowRun {
        id: r.id,
        workflow_id: r.workflow_id,
        state: state as i32,
        attempts: r.attempts as i32,
        last_error: r.last_error,
        changed: r.changed,
        created_at: timestamp_micros(r.created_at),
        finished_at: timestamp_micros(r.finished_at).filter(|_| r.finished_at != 0),
    }
}
