//! Account administration RPCs: per-source default statuses, permission overrides and the
//! audit trail.

use crate::api::Api;
use crate::convert::{self, creation_source, marketing_status as pb_status, source_type_name};

use crate::rules::{self, Status};
use contactier_proto::common::v1::{MarketingStatus, SourceType};
use contactier_proto::marketing_status::v1 as pb;
use contactier_runtime::Principal;
use contactier_runtime::error::Error;
use tonic::{Request, Status as GrpcStatus};

impl Api {
    pub async fn list_source_defaults_impl(
        &self,
        req: Request<pb::ListSourceDefaultsRequest>,
    ) -> Result<pb::ListSourceDefaultsResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let own = self.store.source_defaults(&account).await.map_err(Error::from)?;
        let mut defaults = Vec::new();
        for n in 1..=13 {
            let Ok(t) = SourceType::try_from(n) else { continue };
            let Some(origin) = creation_source(t) else { continue };
            let (builtin, customizable) = rules::builtin_default(origin);
            let chosen = own.iter().find(|(name, _)| *name == source_type_name(t)).map(|(_, m)| *m);
            let marketing = if customizable {
                chosen.unwrap_or(builtin == Status::Marketing)
            } else {
                builtin == Status::Marketing
            };
            defaults.push(pb::SourceDefault {
                source_type: t as i32,
                default_status: pb_status(marketing) as i32,
                customizable,
            });
        }
        let r = req.get_ref();
        let (defaults, next_page_token) = contactier_runtime::paging::page_in_order(
            "source_defaults",
            defaults,
            r.page_size,
            &r.page_token,
        )?;
        Ok(pb::ListSourceDefaultsResponse { defaults, next_page_token })
    }

    pub async fn update_source_default_impl(
        &self,
        req: Request<pb::UpdateSourceDefaultRequest>,
    ) -> Result<pb::UpdateSourceDefaultResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let r = req.into_inner();
        let t = SourceType::try_from(r.source_type).unwrap_or_default();
        let origin = creation_source(t).ok_or_else(|| Error::invalid("source_type", "required"))?;
        let marketing = match MarketingStatus::try_from(r.default_status) {
            Ok(MarketingStatus::Marketing) => true,
            Ok(MarketingStatus::NonMarketing) => false,
            _ => return Err(Error::invalid("default_status", "MARKETING or NON_MARKETING").into()),
        };
        if !rules::builtin_default(origin).1 {
            return Err(Error::FailedPrecondition(format!(
                "source_type: the default of {} cannot be changed",
                source_type_name(t)
            ))
            .into());
        }
        self.store
            .set_source_default(&account, &source_type_name(t), marketing)
            .await
            .map_err(Error::from)?;
        Ok(pb::UpdateSourceDefaultResponse {
            default: Some(pb::SourceDefault {
                source_type: t as i32,
                default_status: pb_status(marketing) as i32,
                customizable: true,
            }),
        })
    }

    pub async fn list_user_permissions_impl(
        &self,
        req: Request<pb::ListUserPermissionsRequest>,
    ) -> Result<pb::ListUserPermissionsResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let r = req.into_inner();
        let limit = contactier_runtime::paging::limit(r.page_size)?;
        let after = contactier_runtime::paging::after("permissions", &r.page_token)?.unwrap_or_default();
        let mut rows =
            self.store.permission_overrides(&account, &after, limit + 1).await.map_err(Error::from)?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some((user, _)) if more => contactier_runtime::paging::token("permissions", user),
            _ => String::new(),
        };
        Ok(pb::ListUserPermissionsResponse {
            permissions: rows
                .into_iter()
                .map(|(user_id, may)| pb::UserPermission { user_id, may_set_marketing: may })
                .collect(),
            next_page_token,
        })
    }

    pub async fn list_status_changes_impl(
        &self,
        req: Request<pb::ListStatusChangesRequest>,
    ) -> Result<pb::ListStatusChangesResponse, GrpcStatus> {
        let account = Principal::of(&req)?.account_id()?.to_owned();
        let r = req.into_inner();
        let limit = contactier_runtime::paging::limit(r.page_size)?;
        // A token pages the changes it came from: the account's, or one contact's.
        let list = format!("status changes {}", r.contact_id);
        let before =
            contactier_runtime::paging::after_at(&list, &r.page_token)?.unwrap_or((i64::MAX, String::new()));
        let contact = Some(r.contact_id.as_str()).filter(|c| !c.is_empty());
        let mut rows = self
            .store
            .changes(&account, contact, (before.0, &before.1), limit + 1)
            .await
            .map_err(Error::from)?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = if more {
            rows.last()
                .map(|c| contactier_runtime::paging::token_at(&list, c.requested_at, &c.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListStatusChangesResponse {
            changes: rows.into_iter().map(convert::pb_change).collect(),
            next_page_token,
        })
    }
}
