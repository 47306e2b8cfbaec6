//! What a client developer branches on: every refusal carries google.rpc details (the field of a
//! bad argument, the resource missing or already there with its id, a stable reason in the
//! domain contactier.io), the same from every service.

use chrono::{TimeZone, Utc};
use contactier_e2e::System;
use contactier_proto::common::v1::{MarketingStatus, Source, SourceType};
use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use tonic::Code;
use tonic_types::StatusExt;

const ACCOUNT: &str = "acct-details";

fn contact(email: &str) -> cpb::CreateContactRequest {
    cpb::CreateContactRequest {
        contact: Some(cpb::ContactInput {
            email: email.into(),
            source: Some(Source { r#type: SourceType::User as i32, id: String::new() }),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// (reason, domain) of a status's ErrorInfo.
fn info(s: &tonic::Status) -> (String, String) {
    let i = s.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo on {s:?}"));
    (i.reason, i.domain)
}

async fn refusals_carry_details_a_client_can_branch_on(backend: Backend) {
    let s = System::start(backend, Utc.with_ymd_and_hms(2026, 4, 20, 12, 0, 0).unwrap()).await;
    let writer = s.user_token(ACCOUNT, &["write"]);
    let reader = s.user_token(ACCOUNT, &["read"]);
    let mut contacts = ContactsServiceClient::new(s.channel("contacts"));

    // A bad argument names its field.
    let e = contacts.create_contact(authed(contact("not an address"), &writer)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{backend:?}");
    let bad = e.get_details_bad_request().unwrap();
    assert_eq!(bad.field_violations[0].field, "contact.email", "{backend:?}");
    assert_eq!(info(&e), ("INVALID_ARGUMENT".into(), "contactier.io".into()), "{backend:?}");

    // The email is taken: the refusal names the contact that has it.
    let first =
        contacts.create_contact(authed(contact("ada@example.com"), &writer)).await.unwrap().into_inner();
    let id = first.contact.unwrap().id;
    let e = contacts.create_contact(authed(contact("ADA@example.com"), &writer)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{backend:?}");
    let r = e.get_details_resource_info().unwrap();
    assert_eq!((r.resource_type.as_str(), r.resource_name.as_str()), ("contact", id.as_str()), "{backend:?}");
    assert_eq!(info(&e).0, "ALREADY_EXISTS", "{backend:?}");

    // In a batch, each failed record carries the same status as a google.rpc.Status.
    let batch = cpb::BatchCreateContactsRequest {
        contacts: vec![
            contact("ada@example.com").contact.unwrap(),
            contact("grace@example.com").contact.unwrap(),
        ],
        request_id: String::new(),
    };
    let r = contacts.batch_create_contacts(authed(batch, &writer)).await.unwrap().into_inner();
    assert_eq!(r.errors.len(), 1, "{backend:?}");
    let status = r.errors[0].status.clone().expect("a google.rpc.Status");
    assert_eq!(status.code, Code::AlreadyExists as i32, "{backend:?}");
    let as_status = tonic::Status::with_details(
        Code::from_i32(status.code),
        status.message.clone(),
        prost::Message::encode_to_vec(&status).into(),
    );
    let r = as_status.get_details_resource_info().unwrap();
    assert_eq!((r.resource_type.as_str(), r.resource_name.as_str()), ("contact", id.as_str()), "{backend:?}");

    // A missing contact says what is missing.
    let get = cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Id("c-missing".into())) };
    let e = contacts.get_contact(authed(get, &reader)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{backend:?}");
    assert_eq!(e.get_details_resource_info().unwrap().resource_type, "contact", "{backend:?}");

    // Too little scope, refused before any handler: a reason, not text to parse.
    let e = contacts.create_contact(authed(contact("bob@example.com"), &reader)).await.unwrap_err();
    assert_eq!((e.code(), info(&e).0.as_str()), (Code::PermissionDenied, "SCOPE_MISSING"), "{backend:?}");

    // Another service, the same shape.
    let mut status = MarketingStatusServiceClient::new(s.channel("marketing-status"));
    let req = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds { ids: vec![id] })),
        status: MarketingStatus::Unspecified as i32,
        source: None,
    };
    let e = status.set_marketing_status(authed(req, &writer)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{backend:?}");
    assert_eq!(e.get_details_bad_request().unwrap().field_violations[0].field, "status", "{backend:?}");
}

contactier_runtime::backend_tests!(refusals_carry_details_a_client_can_branch_on);
