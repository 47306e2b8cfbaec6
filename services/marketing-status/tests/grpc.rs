//! Marketing status over real gRPC, on SQLite and PostgreSQL: defaults for new contacts, the
//! status rules, permissions, idempotent requests, the live count, eligibility, update dates and
//! deletes, the seeds' worked example, bad input and tenant isolation.

use chrono::{TimeZone, Utc};
use contactier_proto::common::v1::{Date, MarketingStatus, MarketingTool, Source, SourceType};
use contactier_proto::marketing_status::v1::{
    self as pb, contact_event::Payload,
    marketing_status_internal_service_client::MarketingStatusInternalServiceClient,
    marketing_status_service_client::MarketingStatusServiceClient, set_marketing_status_request::Target,
};
use contactier_runtime::db::Backend;
use contactier_runtime::host::{PeerArgs, Platform, ServiceEnv};
use contactier_runtime::testing::{
    TestDb, authed, channel, cure, manual_platform, no_peers, poison, refusing_peer, serve,
};
use tonic::Code;
use tonic::transport::Channel;

const ACCOUNT: &str = "acct-a";

struct Svc {
    channel: Channel,
    platform: Platform,
    db: TestDb,
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.platform.shutdown.trigger();
    }
}

async fn start(backend: Backend) -> Svc {
    let t = TestDb::new(backend, "marketing-status").await;
    t.db.migrate_service(contactier_marketing_status::SERVICE.migrations).await.unwrap();
    let platform = manual_platform(Utc.with_ymd_and_hms(2026, 4, 30, 15, 0, 0).unwrap());
    // Its counts go to a billing that refuses them, so the manual clock steps over its retries
    // minutes apart (see `refusing_peer`); the contacts service is not there.
    let peers = PeerArgs { billing_url: refusing_peer().await, ..no_peers() };
    let env = ServiceEnv { platform: platform.clone(), db: t.db.clone(), peers };
    let addr = serve((contactier_marketing_status::SERVICE.build)(env).await.unwrap(), &platform).await;
    Svc { channel: channel(addr), platform, db: t }
}

fn created(
    id: &str,
    contact: &str,
    source: SourceType,
    asked: MarketingStatus,
    user: &str,
) -> pb::ContactEvent {
    pb::ContactEvent {
        event_id: id.into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Created(pb::ContactCreated {
            contact_id: contact.into(),
            source: Some(Source { r#type: source as i32, id: "src-1".into() }),
            requested_status: asked as i32,
            user_id: user.into(),
        })),
    }
}

impl Svc {
    fn user(&self, account: &str, user: &str, scopes: &[&str]) -> String {
        self.platform.authenticator.user_token(account, user, scopes, chrono::Duration::hours(1))
    }

    fn api(&self) -> MarketingStatusServiceClient<Channel> {
        MarketingStatusServiceClient::new(self.channel.clone())
    }

    async fn events(&self, events: Vec<pb::ContactEvent>) -> Result<Vec<String>, tonic::Status> {
        self.batches(events, vec![]).await
    }

    /// Events in one call, split into the sender's batches.
    async fn batches(
        &self,
        events: Vec<pb::ContactEvent>,
        batch_sizes: Vec<u32>,
    ) -> Result<Vec<String>, tonic::Status> {
        let token = self.platform.authenticator.service_token("contacts", chrono::Duration::hours(1));
        let mut c = MarketingStatusInternalServiceClient::new(self.channel.clone());
        Ok(c.apply_contact_events(authed(pb::ApplyContactEventsRequest { events, batch_sizes }, &token))
            .await?
            .into_inner()
            .acknowledged_event_ids)
    }

    async fn set(
        &self,
        user: &str,
        request_id: &str,
        ids: &[&str],
        status: MarketingStatus,
    ) -> Result<pb::SetMarketingStatusResponse, tonic::Status> {
        let req = pb::SetMarketingStatusRequest {
            request_id: request_id.into(),
            target: Some(Target::Contacts(pb::ContactIds {
                ids: ids.iter().map(std::string::ToString::to_string).collect(),
            })),
            status: status as i32,
            source: None,
        };
        Ok(self
            .api()
            .set_marketing_status(authed(req, &self.user(ACCOUNT, user, &["write"])))
            .await?
            .into_inner())
    }

    async fn count(&self) -> pb::MarketingCount {
        let token = self.user(ACCOUNT, "u", &["read"]);
        let r = self.api().get_marketing_count(authed(pb::GetMarketingCountRequest {}, &token)).await;
        r.unwrap().into_inner().count.unwrap()
    }

    async fn status(&self, contact: &str) -> pb::ContactStatus {
        let req = pb::GetContactStatusRequest { contact_id: contact.into() };
        self.api()
            .get_contact_status(authed(req, &self.user(ACCOUNT, "u", &["read"])))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn update_date(&self, y: i32, m: i32, d: i32) -> pb::ApplyUpdateDateResponse {
        let token = self.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
        let req = pb::ApplyUpdateDateRequest {
            account_id: ACCOUNT.into(),
            update_date: Some(Date { year: y, month: m, day: d }),
            effective_at: Some(prost_types::Timestamp {
                seconds: Utc.with_ymd_and_hms(y, m as u32, d as u32, 4, 0, 0).unwrap().timestamp(),
                nanos: 0,
            }),
        };
        let mut c = MarketingStatusInternalServiceClient::new(self.channel.clone());
        c.apply_update_date(authed(req, &token)).await.unwrap().into_inner()
    }
}

fn counts(c: &pb::MarketingCount) -> (i64, i64, i64) {
    (c.marketing, c.pending_non_marketing, c.non_marketing)
}

async fn new_contacts_get_their_sources_defaults(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    let revoke = pb::SetUserPermissionRequest {
        permission: Some(pb::UserPermission { user_id: "intern".into(), may_set_marketing: false }),
    };
    s.api().set_user_permission(authed(revoke, &s.user(ACCOUNT, "admin", &["admin"]))).await.unwrap();
    s.events(vec![
        created("e1", "form-1", SourceType::Form, Unspecified, ""),
        created("e2", "import-1", SourceType::Import, Unspecified, ""),
        created("e3", "import-2", SourceType::Import, Marketing, "owner"),
        created("e4", "manual-1", SourceType::User, Marketing, "intern"),
        created("e5", "ext-1", SourceType::SalesExtension, Marketing, "owner"),
        created("e6", "ads-1", SourceType::Ads, Unspecified, ""),
    ])
    .await
    .unwrap();
    let want = [
        ("form-1", Marketing),
        ("import-1", NonMarketing),
        ("import-2", Marketing),
        ("manual-1", NonMarketing),
        ("ext-1", NonMarketing),
        ("ads-1", Marketing),
    ];
    for (contact, status) in want {
        assert_eq!(s.status(contact).await.status(), status, "{backend:?} {contact}");
    }
    let form = s.status("form-1").await.source.unwrap();
    assert_eq!((form.r#type(), form.id.as_str()), (SourceType::Form, "src-1"));
    let c = s.count().await;
    assert_eq!(counts(&c), (3, 0, 3), "{backend:?}");
    assert_eq!(c.version, 1, "a batch of events is one change of the count");
    // A redelivered event changes nothing.
    assert_eq!(
        s.events(vec![created("e1", "form-1", SourceType::Form, Unspecified, "")]).await.unwrap(),
        ["e1"]
    );
    assert_eq!(s.count().await.version, 1, "{backend:?}");
}

async fn the_seeds_worked_example_and_every_status_rule(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    s.events(vec![
        created("e1", "c1", SourceType::Import, Unspecified, ""),
        created("e2", "c2", SourceType::Import, Unspecified, ""),
    ])
    .await
    .unwrap();
    assert_eq!(counts(&s.count().await), (0, 0, 2));

    // 30 April: set marketing, counted at once.
    let r = s.set("owner", "", &["c1", "nope"], Marketing).await.unwrap();
    assert_eq!((r.changed, r.not_found), (1, 1));
    assert_eq!(counts(&r.count.unwrap()), (1, 0, 1), "{backend:?}");
    // 1 May: the update date leaves it marketing for May.
    assert_eq!(s.update_date(2026, 5, 1).await.applied, 0);
    assert_eq!(s.status("c1").await.status(), Marketing);
    // 15 May: set non-marketing; still counted and still eligible until 1 June.
    let r = s.set("owner", "req-15-may", &["c1"], NonMarketing).await.unwrap();
    assert_eq!(r.results[0].outcome(), pb::SetStatusOutcome::PendingNonMarketing);
    let st = s.status("c1").await;
    assert_eq!((st.status(), st.marketable_until_next_update), (Marketing, true), "{backend:?}");
    assert_eq!(counts(&s.count().await), (1, 1, 1));
    let elig = pb::CheckEligibilityRequest {
        contact_ids: vec!["c1".into(), "c2".into()],
        tool: MarketingTool::MarketingEmail as i32,
    };
    let e =
        s.api().check_eligibility(authed(elig, &s.user(ACCOUNT, "u", &["read"]))).await.unwrap().into_inner();
    assert_eq!((e.eligible, e.ineligible), (vec!["c1".to_owned()], vec!["c2".to_owned()]));
    // A retry of the same request returns the first answer and changes nothing.
    let version = s.count().await.version;
    let again = s.set("owner", "req-15-may", &["c1"], NonMarketing).await.unwrap();
    assert_eq!(again.results[0].outcome(), pb::SetStatusOutcome::PendingNonMarketing);
    assert_eq!(s.count().await.version, version, "{backend:?}");
    // 1 June: non-marketing takes effect; applying the date again does nothing.
    let r = s.update_date(2026, 6, 1).await;
    assert_eq!((r.applied, r.already_applied), (1, false), "{backend:?}");
    assert_eq!(counts(&r.count.unwrap()), (0, 0, 2));
    let again = s.update_date(2026, 6, 1).await;
    assert_eq!((again.applied, again.already_applied), (1, true), "the first answer again");
    let st = s.status("c1").await;
    assert_eq!((st.status(), st.marketable_until_next_update), (NonMarketing, false));
    assert_eq!(st.source.unwrap().r#type(), SourceType::System);

    // Marketing again clears a pending request; a delete frees the place at once.
    s.set("owner", "", &["c2"], Marketing).await.unwrap();
    s.set("owner", "", &["c2"], NonMarketing).await.unwrap();
    let r = s.set("owner", "", &["c2"], Marketing).await.unwrap();
    assert_eq!(r.results[0].outcome(), pb::SetStatusOutcome::Marketing);
    assert_eq!(counts(&s.count().await), (1, 0, 1), "{backend:?}");
    let del = pb::ContactEvent {
        event_id: "d1".into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Deleted(pb::ContactDeleted { contact_id: "c2".into(), erase: false })),
    };
    s.events(vec![del.clone()]).await.unwrap();
    s.events(vec![del]).await.unwrap();
    assert_eq!(counts(&s.count().await), (0, 0, 1), "{backend:?}: freed once");
}

async fn permissions_bad_input_and_other_accounts_change_nothing(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    s.events(vec![created("e1", "c1", SourceType::Import, Unspecified, "")]).await.unwrap();
    let admin = s.user(ACCOUNT, "admin", &["admin"]);
    let revoke = pb::SetUserPermissionRequest {
        permission: Some(pb::UserPermission { user_id: "intern".into(), may_set_marketing: false }),
    };
    s.api().set_user_permission(authed(revoke, &admin)).await.unwrap();
    let before = s.count().await;

    assert_eq!(s.set("intern", "", &["c1"], Marketing).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(
        s.set("intern", "", &["c1"], NonMarketing).await.unwrap().unchanged,
        1,
        "non-marketing needs no permission"
    );
    assert_eq!(s.set("owner", "", &["c1"], Unspecified).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(s.set("owner", "", &[], Marketing).await.unwrap_err().code(), Code::InvalidArgument);
    let too_many: Vec<String> = (0..10_001).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let err = s.set("owner", "", &refs, Marketing).await.unwrap_err();
    assert!(err.message().contains("at most 10000"), "{}", err.message());
    let reader = s.user(ACCOUNT, "owner", &["read"]);
    let req = pb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(Target::Contacts(pb::ContactIds { ids: vec!["c1".into()] })),
        status: Marketing as i32,
        source: None,
    };
    assert_eq!(
        s.api().set_marketing_status(authed(req, &reader)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let forged = pb::ApplyContactEventsRequest {
        events: vec![created("x", "c9", SourceType::Form, Unspecified, "")],
        batch_sizes: vec![],
    };
    assert_eq!(
        internal.apply_contact_events(authed(forged, &admin)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(s.count().await, before, "{backend:?}: nothing changed");

    let other = s.user("acct-b", "owner", &["read"]);
    let req = pb::GetContactStatusRequest { contact_id: "c1".into() };
    assert_eq!(s.api().get_contact_status(authed(req, &other)).await.unwrap_err().code(), Code::NotFound);
    let c = s
        .api()
        .get_marketing_count(authed(pb::GetMarketingCountRequest {}, &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.count.unwrap().version, 0, "{backend:?}: acct-b has nothing");
}

async fn accounts_without_the_feature_refuse_status_changes_until_enabled(backend: Backend) {
    use contactier_proto::common::v1::Edition;
    let s = start(backend).await;
    s.events(vec![created("e1", "c1", SourceType::Import, MarketingStatus::Unspecified, "")]).await.unwrap();
    let version = s.count().await.version;
    // Billing tells the plan of an account that predates marketing contacts.
    let token = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let plan = pb::SetAccountPlanRequest {
        account_id: ACCOUNT.into(),
        edition: Edition::Professional as i32,
        marketing_contacts_enabled: false,
    };
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    internal.set_account_plan(authed(plan.clone(), &token)).await.unwrap();
    assert_eq!(s.count().await.version, version + 1, "{backend:?}: billing learns how to bill");
    let bad = pb::SetAccountPlanRequest { edition: 0, ..plan.clone() };
    let err = internal.set_account_plan(authed(bad, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("edition"), "{}", err.message());
    let user = s.user(ACCOUNT, "u", &["read"]);
    let err = internal.set_account_plan(authed(plan.clone(), &user)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}: service tokens only");

    let err = s.set("u", "r1", &["c1"], MarketingStatus::Marketing).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
    assert_eq!(s.status("c1").await.status, MarketingStatus::NonMarketing as i32, "{backend:?}: unchanged");
    let settings = s
        .api()
        .get_account_settings(authed(pb::GetAccountSettingsRequest {}, &user))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(
        (settings.marketing_contacts_enabled, settings.edition),
        (false, Edition::Professional as i32)
    );

    let err = s
        .api()
        .enable_marketing_contacts(authed(
            pb::EnableMarketingContactsRequest {},
            &s.user(ACCOUNT, "u", &["write"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}: admins only");
    let admin = s.user(ACCOUNT, "u", &["admin"]);
    s.api().enable_marketing_contacts(authed(pb::EnableMarketingContactsRequest {}, &admin)).await.unwrap();
    assert_eq!(s.count().await.version, version + 2, "{backend:?}");
    // A late or repeated plan from billing does not switch it off again.
    internal.set_account_plan(authed(plan, &token)).await.unwrap();
    s.set("u", "r2", &["c1"], MarketingStatus::Marketing).await.unwrap();
    assert_eq!(counts(&s.count().await), (1, 0, 0), "{backend:?}");
}

async fn source_defaults_audit_trail_and_permission_overrides(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    let admin = s.user(ACCOUNT, "boss", &["admin"]);
    let defaults =
        s.api().list_source_defaults(authed(pb::ListSourceDefaultsRequest::default(), &admin)).await.unwrap();
    let d: Vec<_> = defaults
        .into_inner()
        .defaults
        .into_iter()
        .map(|d| (d.source_type(), d.default_status(), d.customizable))
        .collect();
    assert!(d.contains(&(SourceType::Form, Marketing, true)), "{d:?}");
    assert!(d.contains(&(SourceType::Import, NonMarketing, true)));
    assert!(d.contains(&(SourceType::SalesExtension, NonMarketing, false)));
    // Pages of five follow one another to the same set, in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListSourceDefaultsRequest { page_size: 5, page_token: token };
        let page = s.api().list_source_defaults(authed(req, &admin)).await.unwrap().into_inner();
        assert!(page.defaults.len() <= 5, "{backend:?}");
        paged
            .extend(page.defaults.into_iter().map(|d| (d.source_type(), d.default_status(), d.customizable)));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, d, "{backend:?}");
    let too_big = pb::ListSourceDefaultsRequest { page_size: 1_001, page_token: String::new() };
    let e = s.api().list_source_defaults(authed(too_big, &admin)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{backend:?}");
    assert!(e.message().contains("page_size"), "{}", e.message());

    // An account makes imports marketing by default; new imports follow, old contacts stay.
    s.events(vec![created("e1", "old", SourceType::Import, Unspecified, "")]).await.unwrap();
    let up = |t: SourceType, st: MarketingStatus| pb::UpdateSourceDefaultRequest {
        source_type: t as i32,
        default_status: st as i32,
    };
    s.api().update_source_default(authed(up(SourceType::Import, Marketing), &admin)).await.unwrap();
    s.events(vec![created("e2", "new", SourceType::Import, Unspecified, "")]).await.unwrap();
    assert_eq!(
        (s.status("old").await.status(), s.status("new").await.status()),
        (NonMarketing, Marketing),
        "{backend:?}"
    );
    for (req, code) in [
        (up(SourceType::SalesExtension, Marketing), Code::FailedPrecondition),
        (up(SourceType::Unspecified, Marketing), Code::InvalidArgument),
        (up(SourceType::Form, Unspecified), Code::InvalidArgument),
    ] {
        let err = s.api().update_source_default(authed(req, &admin)).await.unwrap_err();
        assert_eq!(err.code(), code, "{backend:?}");
    }
    let err = s
        .api()
        .update_source_default(authed(up(SourceType::Form, NonMarketing), &s.user(ACCOUNT, "w", &["write"])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "admins only");

    // The audit trail, newest first, one page at a time; a non-marketing request only sets
    // the pending flag.
    s.set("owner", "r1", &["old"], Marketing).await.unwrap();
    s.set("owner", "r2", &["old"], NonMarketing).await.unwrap();
    let (mut trail, mut token) = (Vec::new(), String::new());
    loop {
        let req = pb::ListStatusChangesRequest { contact_id: "old".into(), page_size: 1, page_token: token };
        let r = s.api().list_status_changes(authed(req, &admin)).await.unwrap().into_inner();
        trail.extend(r.changes.into_iter().map(|c| (c.to_status(), c.pending, c.request_id)));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(
        trail,
        [
            (Marketing, true, "r2".to_owned()),
            (Marketing, false, "r1".to_owned()),
            (NonMarketing, false, String::new())
        ],
        "{backend:?}"
    );
    let all =
        s.api().list_status_changes(authed(pb::ListStatusChangesRequest::default(), &admin)).await.unwrap();
    assert_eq!(all.into_inner().changes.len(), 4);

    // Overrides of the granted-by-default permission are listed.
    let deny = pb::SetUserPermissionRequest {
        permission: Some(pb::UserPermission { user_id: "intern".into(), may_set_marketing: false }),
    };
    s.api().set_user_permission(authed(deny, &admin)).await.unwrap();
    let list = s
        .api()
        .list_user_permissions(authed(pb::ListUserPermissionsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.permissions, [pb::UserPermission { user_id: "intern".into(), may_set_marketing: false }]);
    assert_eq!(list.next_page_token, "", "{backend:?}");
    // They page like every list.
    for user in ["intern-2", "intern-3"] {
        let deny = pb::SetUserPermissionRequest {
            permission: Some(pb::UserPermission { user_id: user.into(), may_set_marketing: false }),
        };
        s.api().set_user_permission(authed(deny, &admin)).await.unwrap();
    }
    let (mut users, mut token) = (Vec::new(), String::new());
    loop {
        let req = pb::ListUserPermissionsRequest { page_size: 2, page_token: token };
        let page = s.api().list_user_permissions(authed(req, &admin)).await.unwrap().into_inner();
        users.extend(page.permissions.into_iter().map(|p| p.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(users, ["intern", "intern-2", "intern-3"], "{backend:?}");
}

async fn a_pending_request_made_after_the_processing_instant_waits_for_the_next_update_date(
    backend: Backend,
) {
    use MarketingStatus::*;
    let s = start(backend).await;
    s.events(vec![created("e1", "c1", SourceType::Form, Unspecified, "")]).await.unwrap();
    // Billing processes 30 April's date late, after the user (at 15:00) asked for non-marketing.
    s.set("owner", "", &["c1"], NonMarketing).await.unwrap();
    let token = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let req = pb::ApplyUpdateDateRequest {
        account_id: ACCOUNT.into(),
        update_date: Some(Date { year: 2026, month: 4, day: 30 }),
        effective_at: Some(prost_types::Timestamp {
            seconds: Utc.with_ymd_and_hms(2026, 4, 30, 4, 0, 0).unwrap().timestamp(),
            nanos: 0,
        }),
    };
    let mut c = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let r = c.apply_update_date(authed(req, &token)).await.unwrap().into_inner();
    assert_eq!(r.applied, 0, "{backend:?}");
    assert!(s.status("c1").await.marketable_until_next_update, "{backend:?}: still pending");
    assert_eq!(s.update_date(2026, 5, 1).await.applied, 1);
}

/// Runs, their retries and their failures need the contacts service: see
/// `tests/tests/hostile.rs` (`workflows_refuse_missing_lists_and_fail_runs_for_good`).
async fn workflows_belong_to_professional_and_enterprise(backend: Backend) {
    use contactier_proto::common::v1::Edition;
    let s = start(backend).await;
    let admin = s.user(ACCOUNT, "boss", &["admin"]);
    let token = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let plan = |e: Edition| pb::SetAccountPlanRequest {
        account_id: ACCOUNT.into(),
        edition: e as i32,
        marketing_contacts_enabled: true,
    };
    let workflow = pb::Workflow {
        name: "Newsletter list".into(),
        target: Some(pb::workflow::Target::ListId("list-1".into())),
        action: pb::WorkflowAction::SetMarketing as i32,
        ..Default::default()
    };
    internal.set_account_plan(authed(plan(Edition::Starter), &token)).await.unwrap();
    let err = s
        .api()
        .create_workflow(authed(pb::CreateWorkflowRequest { workflow: Some(workflow.clone()) }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: not on Starter");

    internal.set_account_plan(authed(plan(Edition::Professional), &token)).await.unwrap();
    let bad = pb::Workflow { action: 0, ..workflow.clone() };
    let err = s
        .api()
        .create_workflow(authed(pb::CreateWorkflowRequest { workflow: Some(bad) }, &admin))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("workflow.action"), "{}", err.message());
    // The list is checked with the contacts service, unreachable here: try again later.
    let err = s
        .api()
        .create_workflow(authed(pb::CreateWorkflowRequest { workflow: Some(workflow) }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
}

async fn a_contact_named_twice_in_one_request_changes_and_counts_once(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    s.events(vec![created("e1", "c1", SourceType::Import, Unspecified, "")]).await.unwrap();
    let r = s.set("owner", "", &["c1", "c1", "c2"], Marketing).await.unwrap();
    let outcomes: Vec<_> =
        r.results.iter().map(contactier_proto::marketing_status::v1::SetStatusResult::outcome).collect();
    use pb::SetStatusOutcome as O;
    assert_eq!(outcomes, [O::Marketing, O::Unchanged, O::NotFound], "{backend:?}");
    assert_eq!((r.changed, r.unchanged, r.not_found), (1, 1, 1));
    assert_eq!(counts(&s.count().await), (1, 0, 0), "{backend:?}");
}

/// Writers changing the same contacts at the same moment: the counts stay what the statuses
/// say, every change is audited once, and no writer gets anything but an answer.
async fn concurrent_writers_on_the_same_contacts_keep_the_counts_exact(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    let ids: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, c)| created(&format!("ev{i}"), c, SourceType::Import, Unspecified, ""));
    s.events(events.collect()).await.unwrap();
    // Eight writers over overlapping thirds, each flipping its contacts six times.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8usize {
        let mut api = s.api();
        let token = s.user(ACCOUNT, "owner", &["write"]);
        let part: Vec<String> = ids.iter().skip((w % 4) * 50).take(150).cloned().collect();
        writers.spawn(async move {
            for round in 0..6 {
                let status = if (round + w) % 2 == 0 { Marketing } else { NonMarketing };
                let req = pb::SetMarketingStatusRequest {
                    request_id: format!("w{w}-r{round}"),
                    target: Some(Target::Contacts(pb::ContactIds { ids: part.clone() })),
                    status: status as i32,
                    source: None,
                };
                api.set_marketing_status(authed(req, &token)).await.expect("every writer is answered");
            }
        });
    }
    // Meanwhile, update dates are applied, the clock moving on after each.
    let (clock, token) = (
        s.platform.clock.clone(),
        s.platform.authenticator.service_token("billing", chrono::Duration::hours(1)),
    );
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let applier = tokio::spawn(async move {
        let mut applied = 0;
        for month in 5..=12 {
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            let req = pb::ApplyUpdateDateRequest {
                account_id: ACCOUNT.into(),
                update_date: Some(Date { year: 2026, month, day: 1 }),
                effective_at: Some(contactier_runtime::convert::timestamp(
                    Utc.with_ymd_and_hms(2026, month as u32, 1, 4, 0, 0).unwrap(),
                )),
            };
            let r =
                internal.apply_update_date(authed(req, &token)).await.expect("the update date is applied");
            applied += r.into_inner().applied;
            clock.advance(chrono::Duration::minutes(1)).await.unwrap();
        }
        applied
    });
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    assert!(applier.await.unwrap() > 0, "{backend:?}: no update date found a pending contact");
    let statuses = || async {
        let req = pb::BatchGetContactStatusesRequest { contact_ids: ids.clone() };
        s.api()
            .batch_get_contact_statuses(authed(req, &s.user(ACCOUNT, "u", &["read"])))
            .await
            .unwrap()
            .into_inner()
            .statuses
    };
    let shown = statuses().await;
    assert_eq!(shown.len(), 300);
    let marketing = shown.iter().filter(|c| c.status() == Marketing).count() as i64;
    let pending = shown.iter().filter(|c| c.marketable_until_next_update).count() as i64;
    assert_eq!(counts(&s.count().await), (marketing, pending, 300 - marketing), "{backend:?}");
    // Once the update dates' contacts are rewritten, they read the same.
    s.platform.clock.advance(chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(statuses().await, shown, "{backend:?}");
}

async fn a_batch_of_update_dates_applies_each_once_in_the_order_asked(backend: Backend) {
    use MarketingStatus::*;
    let s = start(backend).await;
    let events = vec![
        created("e1", "c1", SourceType::Form, Unspecified, ""),
        created("e2", "c2", SourceType::Form, Unspecified, ""),
        pb::ContactEvent {
            account_id: "acct-b".into(),
            ..created("e3", "b1", SourceType::Form, Unspecified, "")
        },
    ];
    s.events(events).await.unwrap();
    s.set("owner", "", &["c1", "c2"], NonMarketing).await.unwrap();
    assert_eq!(counts(&s.count().await), (2, 2, 0), "{backend:?}: pending until the date");
    let date = |account: &str| pb::ApplyUpdateDateRequest {
        account_id: account.into(),
        update_date: Some(Date { year: 2026, month: 5, day: 1 }),
        effective_at: Some(prost_types::Timestamp {
            seconds: Utc.with_ymd_and_hms(2026, 5, 1, 4, 0, 0).unwrap().timestamp(),
            nanos: 0,
        }),
    };
    let billing = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let mut c = MarketingStatusInternalServiceClient::new(s.channel.clone());

    // One bad date refuses the call, naming it; nothing is applied.
    let bad = pb::ApplyUpdateDatesRequest {
        dates: vec![date(ACCOUNT), pb::ApplyUpdateDateRequest { update_date: None, ..date("acct-b") }],
    };
    let e = c.apply_update_dates(authed(bad, &billing)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{backend:?}");
    assert!(e.message().starts_with("dates[1].update_date"), "{backend:?}: {}", e.message());
    assert_eq!(counts(&s.count().await), (2, 2, 0), "{backend:?}: nothing applied");
    let too_many = pb::ApplyUpdateDatesRequest { dates: vec![date(ACCOUNT); 257] };
    let e = c.apply_update_dates(authed(too_many, &billing)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("dates")),
        (Code::InvalidArgument, true),
        "{}",
        e.message()
    );
    let user = s.user(ACCOUNT, "boss", &["admin"]);
    let one = pb::ApplyUpdateDatesRequest { dates: vec![date(ACCOUNT)] };
    let e = c.apply_update_dates(authed(one, &user)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{backend:?}: billing's call only");

    // acct-b first: answers follow the order asked, not the order applied.
    let both = pb::ApplyUpdateDatesRequest { dates: vec![date("acct-b"), date(ACCOUNT)] };
    // Each date's answer: (applied, already applied, counts).
    let answers = |results: &[pb::ApplyUpdateDateResult]| -> Vec<_> {
        results
            .iter()
            .map(|r| {
                let a = r.applied.as_ref().expect("applied");
                (a.applied, a.already_applied, counts(a.count.as_ref().unwrap()))
            })
            .collect()
    };
    let r = c.apply_update_dates(authed(both.clone(), &billing)).await.unwrap().into_inner().results;
    assert_eq!(answers(&r), [(0, false, (1, 0, 0)), (2, false, (0, 0, 2))], "{backend:?}");
    assert!(r.iter().all(|r| r.error.is_none()));
    assert_eq!(s.status("c1").await.status(), NonMarketing, "{backend:?}");

    // A contact set marketing after the date: the count moves on, the date's answer does not.
    s.set("owner", "", &["c1"], Marketing).await.unwrap();
    assert_eq!(counts(&s.count().await), (1, 0, 1), "{backend:?}");

    // Asked again, in a batch or alone (a billing replica that died before recording the first
    // answer): applied before, nothing changes, and the answer is the first one, the count that
    // held at the date, not the count of the moment asked.
    let again = c.apply_update_dates(authed(both, &billing)).await.unwrap().into_inner().results;
    assert_eq!(answers(&again), [(0, true, (1, 0, 0)), (2, true, (0, 0, 2))], "{backend:?}");
    let alone = c.apply_update_date(authed(date(ACCOUNT), &billing)).await.unwrap().into_inner();
    assert_eq!((alone.applied, alone.already_applied), (2, true), "{backend:?}");
    assert_eq!(counts(alone.count.as_ref().unwrap()), (0, 0, 2), "{backend:?}: the count at the date");
    assert_eq!(counts(&s.count().await), (1, 0, 1), "{backend:?}: counted once");
}

async fn plans_of_many_accounts_apply_in_one_call_in_the_order_given(backend: Backend) {
    use contactier_proto::common::v1::Edition;
    let s = start(backend).await;
    s.events(vec![created("e1", "c1", SourceType::Import, MarketingStatus::Unspecified, "")]).await.unwrap();
    let version = s.count().await.version;
    let token = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let plan = |account: &str, e: Edition, enabled: bool| pb::SetAccountPlanRequest {
        account_id: account.into(),
        edition: e as i32,
        marketing_contacts_enabled: enabled,
    };
    let settings = |account: &'static str| {
        let user = s.user(account, "u", &["read"]);
        let mut api = s.api();
        async move {
            let r = api.get_account_settings(authed(pb::GetAccountSettingsRequest {}, &user)).await.unwrap();
            let s = r.into_inner().settings.unwrap();
            (s.edition, s.marketing_contacts_enabled)
        }
    };
    let plans = |plans: Vec<pb::SetAccountPlanRequest>| pb::SetAccountPlansRequest { plans };

    // One plan that is not valid refuses the call, naming it; nothing is applied.
    let bad = plans(vec![plan(ACCOUNT, Edition::Starter, false), plan("acct-b", Edition::Unspecified, true)]);
    let err = internal.set_account_plans(authed(bad, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().starts_with("plans[1].edition"), "{backend:?}: {}", err.message());
    assert_eq!(settings(ACCOUNT).await, (0, true), "{backend:?}: nothing applied");
    // An account no token could name (a control character), and a call with no plans.
    let unreachable = plans(vec![plan("acct\tb", Edition::Starter, true)]);
    let err = internal.set_account_plans(authed(unreachable, &token)).await.unwrap_err();
    assert!(err.message().starts_with("plans[0].account_id"), "{backend:?}: {}", err.message());
    let err = internal.set_account_plans(authed(plans(vec![]), &token)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "plans: required"), "{backend:?}");
    let user = s.user(ACCOUNT, "u", &["admin"]);
    let one = plans(vec![plan(ACCOUNT, Edition::Starter, false)]);
    let err = internal.set_account_plans(authed(one, &user)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}: service tokens only");

    // An account named twice has its plans applied in turn; each account's own rule holds.
    let batch = plans(vec![
        plan(ACCOUNT, Edition::Starter, false),
        plan("acct-b", Edition::Professional, true),
        plan(ACCOUNT, Edition::Enterprise, false),
    ]);
    internal.set_account_plans(authed(batch.clone(), &token)).await.unwrap();
    assert_eq!(settings(ACCOUNT).await, (Edition::Enterprise as i32, false), "{backend:?}");
    assert_eq!(settings("acct-b").await, (Edition::Professional as i32, true), "{backend:?}");
    assert_eq!(s.count().await.version, version + 1, "{backend:?}: the switch moved once");
    // Told again (a relay's retry): nothing moves.
    internal.set_account_plans(authed(batch, &token)).await.unwrap();
    assert_eq!(s.count().await.version, version + 1, "{backend:?}: a retry changes nothing");

    // Switched on, it stays on within the same call; the edition is the last one told.
    let on_then_off =
        plans(vec![plan(ACCOUNT, Edition::Enterprise, true), plan(ACCOUNT, Edition::Starter, false)]);
    internal.set_account_plans(authed(on_then_off, &token)).await.unwrap();
    assert_eq!(settings(ACCOUNT).await, (Edition::Starter as i32, true), "{backend:?}");
    assert_eq!(s.count().await.version, version + 2, "{backend:?}: billing learns of it once");
}

/// A sender's batches merged into one call each move the count once, as they did a call each:
/// billing and alerts see every step (an import climbing through three tiers raises three tier
/// alerts), and a call's events with no split still move it once.
async fn batches_merged_in_one_call_each_move_the_count(backend: Backend) {
    let s = start(backend).await;
    let new = |i: usize| {
        created(&format!("e{i}"), &format!("c{i}"), SourceType::Import, MarketingStatus::Marketing, "")
    };
    let version = s.count().await.version;

    // Sizes that do not split the events refuse the call; nothing is applied.
    for (sizes, why) in
        [(vec![2, 2], "add up to 4, not the 3 events"), (vec![2, 0, 1], "each batch has at least one event")]
    {
        let err = s.batches((0..3).map(new).collect(), sizes).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert!(
            err.message().starts_with("batch_sizes") && err.message().contains(why),
            "{backend:?}: {}",
            err.message()
        );
    }
    assert_eq!(
        (counts(&s.count().await), s.count().await.version),
        ((0, 0, 0), version),
        "{backend:?}: nothing applied"
    );

    // Three batches (2, 1, 3 contacts) in one call: three steps, as three calls would make.
    let acked = s.batches((0..6).map(new).collect(), vec![2, 1, 3]).await.unwrap();
    assert_eq!(acked.len(), 6, "{backend:?}");
    let after = s.count().await;
    assert_eq!((counts(&after), after.version), ((6, 0, 0), version + 3), "{backend:?}: a step a batch");
    // The same call again (a relay's retry): nothing moves.
    s.batches((0..6).map(new).collect(), vec![2, 1, 3]).await.unwrap();
    assert_eq!(s.count().await.version, version + 3, "{backend:?}: a retry changes nothing");
    // No split: the call is one batch, one step.
    s.events((6..10).map(new).collect()).await.unwrap();
    let after = s.count().await;
    assert_eq!(
        (counts(&after), after.version),
        ((10, 0, 0), version + 4),
        "{backend:?}: one batch, one step"
    );

    // Deletions too: three batches (one contact, two, then one named again), three steps; the
    // contact named twice is removed and counted once.
    let gone = |i: usize, contact: usize| pb::ContactEvent {
        event_id: format!("d{i}"),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Deleted(pb::ContactDeleted {
            contact_id: format!("c{contact}"),
            erase: false,
        })),
    };
    s.batches(vec![gone(0, 0), gone(1, 1), gone(2, 2), gone(3, 1)], vec![1, 2, 1]).await.unwrap();
    let after = s.count().await;
    assert_eq!(
        (counts(&after), after.version),
        ((7, 0, 0), version + 6),
        "{backend:?}: a step a batch that removed one"
    );

    // An event id named twice in one call is one event, applied once (whatever it carries the
    // second time), as across calls; it is acknowledged.
    let twice = vec![
        created("e-twice", "c20", SourceType::Import, MarketingStatus::Marketing, ""),
        created("e-twice", "c21", SourceType::Import, MarketingStatus::Marketing, ""),
    ];
    for sizes in [vec![1, 1], vec![2]] {
        let acked = s.batches(twice.clone(), sizes).await.unwrap();
        assert!(!acked.is_empty() && acked.iter().all(|id| id == "e-twice"), "{backend:?}: {acked:?}");
    }
    let after = s.count().await;
    assert_eq!((counts(&after), after.version), ((8, 0, 0), version + 7), "{backend:?}: the event once");
}

/// An account's backlog of single changes in one call (creations and deletions mixed, as the
/// relay sends it after an outage) is written whole or not at all, each change its own step: a
/// change the database refuses leaves none of the account's changes in the call applied, and
/// the call again applies each once.
async fn an_accounts_changes_in_one_call_apply_whole_each_a_step(backend: Backend) {
    let s = start(backend).await;
    let new = |e: &str, c: &str| created(e, c, SourceType::Import, MarketingStatus::Marketing, "");
    let gone = |e: &str, c: &str| pb::ContactEvent {
        event_id: e.into(),
        account_id: ACCOUNT.into(),
        occurred_at: None,
        payload: Some(Payload::Deleted(pb::ContactDeleted { contact_id: c.into(), erase: false })),
    };
    let version = s.count().await.version;
    // Created, created, deleted, created again, and one the database refuses.
    let backlog =
        || vec![new("e1", "c1"), new("e2", "c2"), gone("e3", "c1"), new("e4", "c1"), new("e5", "c-bad")];
    poison(&s.db.db, "contact_status", "NEW.contact_id = 'c-bad'", "ABORT").await;
    assert!(s.batches(backlog(), vec![1; 5]).await.is_err(), "{backend:?}: refused");
    let after = s.count().await;
    assert_eq!(
        (counts(&after), after.version),
        ((0, 0, 0), version),
        "{backend:?}: none of the account's changes in the call applied"
    );

    cure(&s.db.db, "contact_status").await;
    let acked = s.batches(backlog(), vec![1; 5]).await.unwrap();
    assert_eq!(acked.len(), 5, "{backend:?}");
    let after = s.count().await;
    assert_eq!(
        (counts(&after), after.version),
        ((3, 0, 0), version + 5),
        "{backend:?}: c1 (again), c2 and c-bad; a step each change"
    );
    s.batches(backlog(), vec![1; 5]).await.unwrap();
    assert_eq!(s.count().await.version, version + 5, "{backend:?}: a retry changes nothing");
}

/// A call of several accounts' events where one account's changes fail applies the others and
/// names that account's first event, with why; its later events in the call are neither applied
/// nor acknowledged. The call failed whole, and its sender sent every other account's events
/// again (in halves, or one call each), each failing account once a retry.
async fn a_failing_accounts_events_are_named_and_the_others_applied(backend: Backend) {
    let s = start(backend).await;
    let of = |event: &str, account: &str, contact: &str| pb::ContactEvent {
        account_id: account.into(),
        ..created(event, contact, SourceType::Import, MarketingStatus::Marketing, "")
    };
    let call = || {
        vec![
            of("a1", ACCOUNT, "c1"),
            of("b1", "acct-b", "c2"),
            of("c1", "acct-c", "c3"),
            of("b2", "acct-b", "c4"),
            of("a2", ACCOUNT, "c5"),
        ]
    };
    let count_of = |account: &'static str| {
        let token = s.user(account, "u", &["read"]);
        let mut api = s.api();
        async move {
            let c = api.get_marketing_count(authed(pb::GetMarketingCountRequest {}, &token)).await;
            let c = c.unwrap().into_inner().count.unwrap();
            (c.marketing, c.version)
        }
    };
    let (_, a_version) = count_of(ACCOUNT).await;
    poison(&s.db.db, "contact_status", "NEW.account_id = 'acct-b'", "ABORT").await;
    let token = s.platform.authenticator.service_token("contacts", chrono::Duration::hours(1));
    let mut c = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let send = |c: &mut MarketingStatusInternalServiceClient<tonic::transport::Channel>| {
        let req = pb::ApplyContactEventsRequest { events: call(), batch_sizes: vec![] };
        let mut c = c.clone();
        let token = token.clone();
        async move { c.apply_contact_events(authed(req, &token)).await.map(tonic::Response::into_inner) }
    };
    let answer = send(&mut c).await.unwrap_or_else(|e| panic!("{backend:?}: the call failed whole: {e:?}"));
    let mut acked = answer.acknowledged_event_ids.clone();
    acked.sort();
    assert_eq!(acked, ["a1", "a2", "c1"], "{backend:?}");
    let refused: Vec<(&str, i32)> = answer
        .refused
        .iter()
        .map(|r| (r.event_id.as_str(), r.status.as_ref().map_or(0, |s| s.code)))
        .collect();
    assert_eq!(refused, [("b1", tonic::Code::Internal as i32)], "{backend:?}: b's first, with why");
    let a_count = count_of(ACCOUNT).await;
    assert_eq!(a_count.0, 2, "{backend:?}");
    assert!(a_count.1 > a_version, "{backend:?}");
    assert_eq!(count_of("acct-c").await.0, 1, "{backend:?}");
    assert_eq!(count_of("acct-b").await.0, 0, "{backend:?}: none of b's applied");

    // Mended, the same call again: b's applied, the others' taken as seen.
    cure(&s.db.db, "contact_status").await;
    let answer = send(&mut c).await.unwrap();
    assert_eq!(answer.acknowledged_event_ids.len(), 5, "{backend:?}");
    assert!(answer.refused.is_empty(), "{backend:?}");
    assert_eq!(count_of("acct-b").await.0, 2, "{backend:?}");
    assert_eq!(count_of(ACCOUNT).await, a_count, "{backend:?}: a's once");
}

/// Plans whose account's settings row another session holds give the call up in time, as
/// held up, so billing's relay sends them again in halves down to that account while the
/// others are applied. The call waited for the lock to its sender's deadline, every account's
/// plans behind it, each try pinning another pooled connection (PostgreSQL: SQLite's one writer
/// has no row locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_whose_settings_another_session_holds_are_given_up_in_time() {
    use contactier_proto::common::v1::Edition;
    let s = start(Backend::Postgres).await;
    let token = s.platform.authenticator.service_token("billing", chrono::Duration::hours(1));
    let mut internal = MarketingStatusInternalServiceClient::new(s.channel.clone());
    let plan = |account: &str| pb::SetAccountPlanRequest {
        account_id: account.into(),
        edition: Edition::Starter as i32,
        marketing_contacts_enabled: true,
    };
    let first = pb::SetAccountPlansRequest { plans: vec![plan("acct-b")] };
    internal.set_account_plans(authed(first, &token)).await.unwrap();
    let contactier_runtime::db::Db::Postgres(pool) = &s.db.db else { unreachable!() };
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM account_settings WHERE account_id = 'acct-b' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut both = authed(pb::SetAccountPlansRequest { plans: vec![plan(ACCOUNT), plan("acct-b")] }, &token);
    both.set_timeout(std::time::Duration::from_secs(20));
    let e = internal.set_account_plans(both).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert!(e.message().contains("held up"), "{e:?}");
    // The half without it goes in while the row is still held.
    let alone = pb::SetAccountPlansRequest { plans: vec![plan(ACCOUNT)] };
    internal.set_account_plans(authed(alone, &token)).await.unwrap();
    holder.rollback().await.unwrap();
}

contactier_runtime::backend_tests!(
    a_failing_accounts_events_are_named_and_the_others_applied,
    an_accounts_changes_in_one_call_apply_whole_each_a_step,
    batches_merged_in_one_call_each_move_the_count,
    plans_of_many_accounts_apply_in_one_call_in_the_order_given,
    a_batch_of_update_dates_applies_each_once_in_the_order_asked,
    new_contacts_get_their_sources_defaults,
    the_seeds_worked_example_and_every_status_rule,
    permissions_bad_input_and_other_accounts_change_nothing,
    accounts_without_the_feature_refuse_status_changes_until_enabled,
    source_defaults_audit_trail_and_permission_overrides,
    a_pending_request_made_after_the_processing_instant_waits_for_the_next_update_date,
    workflows_belong_to_professional_and_enterprise,
    a_contact_named_twice_in_one_request_changes_and_counts_once,
    concurrent_writers_on_the_same_contacts_keep_the_counts_exact,
);
