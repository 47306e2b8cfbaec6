//! What a client developer branches on: every refusal carries google.rpc details (the field of a
//! bad argument, the resource missing or already there with its id, a stable reason in the
//! domain contactier.io), the same from every service, read as values through the client crate.

use chrono::{TimeZone, Utc};
use contactier_client::{Error, FieldViolation};
use contactier_e2e::System;
use contactier_proto::common::v1::{MarketingStatus, Source, SourceType};
use contactier_proto::contacts::v1 as cpb;
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::db::Backend;
use tonic::Code;

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
    use tonic_types::StatusExt;
    let i = s.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo on {s:?}"));
    (i.reason, i.domain)
}

async fn refusals_carry_details_a_client_can_branch_on(backend: Backend) {
    let mut s = System::start(backend, Utc.with_ymd_and_hms(2026, 4, 20, 12, 0, 0).unwrap()).await;
    let writer = s.client(ACCOUNT, &["write"]);
    let reader = s.client(ACCOUNT, &["read"]);
    let mut contacts = writer.contacts();

    // A bad argument names its field.
    let e = contacts.create_contact(contact("not an address")).await.unwrap_err();
    assert_eq!(info(&e), ("INVALID_ARGUMENT".into(), "contactier.io".into()), "{backend:?}");
    let e = Error::from(e);
    assert_eq!((e.code(), e.reason()), (Code::InvalidArgument, Some("INVALID_ARGUMENT")), "{backend:?}");
    let bad = e.field_violations();
    assert_eq!(bad.len(), 1, "{backend:?}");
    assert!(
        matches!(&bad[0], FieldViolation { field, .. } if field == "contact.email"),
        "{backend:?}: {bad:?}"
    );

    // A limit of the contracts, checked as the request is read, carries the reason too.
    let long = format!("{}@example.com", "a".repeat(300));
    let e = Error::from(contacts.create_contact(contact(&long)).await.unwrap_err());
    assert_eq!((e.code(), e.reason()), (Code::InvalidArgument, Some("INVALID_ARGUMENT")), "{backend:?}");
    assert_eq!(e.field_violations()[0].field, "contact.email", "{backend:?}");

    // The email is taken: the refusal names the contact that has it.
    let first = contacts.create_contact(contact("ada@example.com")).await.unwrap().into_inner();
    let id = first.contact.unwrap().id;
    let e = Error::from(contacts.create_contact(contact("ADA@example.com")).await.unwrap_err());
    assert_eq!(e.code(), Code::AlreadyExists, "{backend:?}");
    assert_eq!(e.resource(), Some(("contact", id.as_str())), "{backend:?}");
    assert_eq!(e.reason(), Some("ALREADY_EXISTS"), "{backend:?}");

    // In a batch, each failed record carries the same status as a google.rpc.Status.
    let batch = cpb::BatchCreateContactsRequest {
        contacts: vec![
            contact("ada@example.com").contact.unwrap(),
            contact("grace@example.com").contact.unwrap(),
        ],
        request_id: String::new(),
    };
    let r = contacts.batch_create_contacts(batch).await.unwrap().into_inner();
    assert_eq!(r.errors.len(), 1, "{backend:?}");
    let status = r.errors[0].status.clone().expect("a google.rpc.Status");
    assert_eq!(status.code, Code::AlreadyExists as i32, "{backend:?}");
    let as_error = Error::from(tonic::Status::with_details(
        Code::from_i32(status.code),
        status.message.clone(),
        prost::Message::encode_to_vec(&status).into(),
    ));
    assert_eq!(as_error.resource(), Some(("contact", id.as_str())), "{backend:?}");

    // A missing contact says what is missing.
    let get = cpb::GetContactRequest { key: Some(cpb::get_contact_request::Key::Id("c-missing".into())) };
    let e = Error::from(reader.contacts().get_contact(get).await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{backend:?}");
    assert_eq!(e.resource().map(|r| r.0), Some("contact"), "{backend:?}");

    // Too little scope, refused before any handler: a reason, not text to parse.
    let e = Error::from(reader.contacts().create_contact(contact("bob@example.com")).await.unwrap_err());
    assert_eq!((e.code(), e.reason()), (Code::PermissionDenied, Some("SCOPE_MISSING")), "{backend:?}");

    // Another service, the same shape.
    let mut status = writer.marketing_status();
    let req = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds { ids: vec![id] })),
        status: MarketingStatus::Unspecified as i32,
        source: None,
    };
    let e = Error::from(status.set_marketing_status(req).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{backend:?}");
    assert_eq!(e.field_violations()[0].field, "status", "{backend:?}");

    // A precondition says which one, so a client knows what to do about it.
    // (An account that bought no edition has no workflows.)
    let workflow = mpb::CreateWorkflowRequest::default();
    let admin = s.client(ACCOUNT, &["admin"]);
    let e = Error::from(admin.marketing_status().create_workflow(workflow).await.unwrap_err());
    assert_eq!((e.code(), e.reason()), (Code::FailedPrecondition, Some("EDITION_REQUIRED")), "{backend:?}");
    assert_eq!(e.preconditions()[0].0, "EDITION_REQUIRED", "{backend:?}");
    assert_eq!(e.preconditions()[0].1, "edition", "{backend:?}");

    // A dependency that is down is named, and the refusal says when to try again.
    s.stop("contacts").await;
    let by_list = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::ListId("l-1".into())),
        status: MarketingStatus::NonMarketing as i32,
        source: None,
    };
    let e = Error::from(writer.marketing_status().set_marketing_status(by_list).await.unwrap_err());
    assert_eq!(e.code(), Code::Unavailable, "{backend:?}: {e}");
    assert!(e.message().contains("contacts service"), "{backend:?}: {e}");
    assert!(e.retry_after().is_some(), "{backend:?}");
}

contactier_runtime::backend_tests!(refusals_carry_details_a_client_can_branch_on);
