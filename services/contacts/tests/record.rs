//! The record beyond a contact's properties, over real gRPC on both backends: the history of
//! every value with where it came from and who made it, through every path that writes values.

mod common;

use common::*;
use contactier_proto::common::v1::SourceType;
use contactier_proto::contacts::v1::{self as pb, import_contacts_request::Part};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use tonic::Code;

/// (property, value, source type, source id, user) of each change, newest first.
type Change = (String, String, i32, String, String);

async fn history(s: &Contacts, contact: &str, property: &str) -> Result<Vec<Change>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        // Small pages, so the walk crosses page boundaries.
        let req = pb::ListPropertyHistoryRequest {
            contact_id: contact.into(),
            property: property.into(),
            page_size: 2,
            page_token: token,
        };
        let r = s.api().list_property_history(authed(req, &s.token(ACCOUNT, &["read"]))).await?.into_inner();
        out.extend(r.changes.into_iter().map(|c| {
            let source = c.source.unwrap_or_default();
            (c.property, c.value, source.r#type, source.id, c.user_id)
        }));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

fn change(property: &str, value: &str, source: SourceType, id: &str, user: &str) -> Change {
    (property.into(), value.into(), source as i32, id.into(), user.into())
}

async fn later(s: &Contacts) {
    let now = s.platform.clock.now();
    s.platform.clock.advance_to(now + chrono::Duration::seconds(1)).await.unwrap();
}

fn update(id: &str, p: &[(&str, &str)], email: &str) -> pb::UpdateContactRequest {
    pb::UpdateContactRequest {
        id: id.into(),
        properties: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        expected_version: 0,
        email: email.into(),
        update_mask: None,
    }
}

async fn every_change_of_a_value_is_kept_with_its_source_and_who_made_it(backend: Backend) {
    use SourceType::*;
    let s = start(backend).await;
    let c = s.create("ada@example.com", &[("first_name", "Ada"), ("lifecycle_stage", "lead")]).await.unwrap();
    later(&s).await;
    // A person in the app changes one value and clears another; the unchanged one is not a change.
    let req = update(&c.id, &[("lifecycle_stage", "customer"), ("first_name", ""), ("last_name", "")], "");
    s.api().update_contact(authed(req, &s.writer())).await.unwrap();
    later(&s).await;
    // The same again changes nothing, so it adds nothing.
    let req = update(&c.id, &[("lifecycle_stage", "customer")], "");
    s.api().update_contact(authed(req, &s.writer())).await.unwrap();
    // A service (an integration) changes the email.
    let service = s.platform.authenticator.service_token("integrations", chrono::Duration::hours(1));
    let mut req = authed(update(&c.id, &[], "ada.lovelace@example.com"), &service);
    req.metadata_mut().insert(contactier_runtime::auth::ACCOUNT_HEADER, ACCOUNT.parse().unwrap());
    s.api().update_contact(req).await.unwrap();

    let all = history(&s, &c.id, "").await.unwrap();
    assert_eq!(
        all,
        [
            change("email", "ada.lovelace@example.com", Integration, "integrations", ""),
            change("first_name", "", User, "", "user-1"),
            change("lifecycle_stage", "customer", User, "", "user-1"),
            change("lifecycle_stage", "lead", User, "user-1", "user-1"),
            change("first_name", "Ada", User, "user-1", "user-1"),
            change("email", "ada@example.com", User, "user-1", "user-1"),
        ][..],
        "{backend:?}: newest first, also within one instant; creation carries the creation source"
    );
    let stage = history(&s, &c.id, "lifecycle_stage").await.unwrap();
    assert_eq!(stage, [all[2].clone(), all[3].clone()], "{backend:?}: one property");

    // Bad asks change nothing and say what is wrong.
    let read = s.token(ACCOUNT, &["read"]);
    let ask = |contact: &str, token: &str| pb::ListPropertyHistoryRequest {
        contact_id: contact.into(),
        property: "lifecycle_stage".into(),
        page_size: 1,
        page_token: token.into(),
    };
    let err = s.api().list_property_history(authed(ask("", ""), &read)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("contact_id"), "{}", err.message());
    let err = s.api().list_property_history(authed(ask("no-such-contact", ""), &read)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    let other = s.token("acct-b", &["read"]);
    let err = s.api().list_property_history(authed(ask(&c.id, ""), &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}: another account's contact is not there");
    let first = s.api().list_property_history(authed(ask(&c.id, ""), &read)).await.unwrap().into_inner();
    assert!(!first.next_page_token.is_empty());
    let mut foreign = ask(&c.id, &first.next_page_token);
    foreign.property = "first_name".into();
    let err = s.api().list_property_history(authed(foreign, &read)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: a token of another property's history");
    assert!(err.message().contains("page_token"), "{}", err.message());
}

async fn imports_and_merges_write_history_and_erasure_removes_it(backend: Backend) {
    use SourceType::*;
    let s = start(backend).await;
    let a = s.create("a@example.com", &[("company", "Old Co")]).await.unwrap();
    let b = s.create("b@example.com", &[("phone", "+41 44 000 00 00"), ("company", "B Co")]).await.unwrap();
    later(&s).await;

    // An import updates one contact and creates another, as the user who runs it.
    let h = pb::ImportHeader {
        name: "fair".into(),
        mode: pb::ImportMode::Upsert as i32,
        column_mapping: [("Email", "email"), ("Company", "company")]
            .iter()
            .map(|(c, p)| (c.to_string(), p.to_string()))
            .collect(),
        ..Default::default()
    };
    let csv = "Email,Company\na@example.com,New Co\nc@example.com,C Co\n";
    let parts = vec![
        pb::ImportContactsRequest { part: Some(Part::Header(h)) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes().to_vec())) },
    ];
    let mut progress = s
        .api()
        .import_contacts(authed(futures::stream::iter(parts), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    let mut import_id = String::new();
    while let Some(m) = progress.message().await.unwrap() {
        import_id = m.progress.unwrap().import_id;
    }
    assert!(!import_id.is_empty());
    assert_eq!(
        history(&s, &a.id, "company").await.unwrap(),
        [
            change("company", "New Co", Import, &import_id, "user-1"),
            change("company", "Old Co", User, "user-1", "user-1")
        ],
        "{backend:?}"
    );
    let c = s.by_email("c@example.com").await;
    assert_eq!(
        history(&s, &c.id, "").await.unwrap(),
        [
            change("company", "C Co", Import, &import_id, "user-1"),
            change("email", "c@example.com", Import, &import_id, "user-1")
        ],
        "{backend:?}: a contact the import created"
    );
    later(&s).await;

    // A merge: the primary's value stays, the secondary fills the gap, both histories go on.
    let req = pb::MergeContactsRequest { primary_id: a.id.clone(), secondary_id: b.id.clone() };
    s.api().merge_contacts(authed(req, &s.writer())).await.unwrap();
    let merged = history(&s, &a.id, "").await.unwrap();
    assert_eq!(
        merged[0],
        change("phone", "+41 44 000 00 00", Merge, &b.id, "user-1"),
        "{backend:?}: {merged:?}"
    );
    for kept in [
        change("company", "B Co", User, "user-1", "user-1"),
        change("email", "b@example.com", User, "user-1", "user-1"),
    ] {
        assert!(merged.contains(&kept), "{backend:?}: the secondary's history is kept: {merged:?}");
    }
    assert!(merged.contains(&change("company", "New Co", Import, &import_id, "user-1")), "{backend:?}");
    assert_eq!(merged.len(), 1 + 3 + 3, "{backend:?}: {merged:?}");

    // A GDPR export shows it; anonymising and erasing leave none of it.
    let admin = s.token(ACCOUNT, &["admin"]);
    let export = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: a.id.clone(), email: String::new() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let own: serde_json::Value = serde_json::from_str(&export.parts[0].json).unwrap();
    assert_eq!(own["property_history"].as_array().unwrap().len(), merged.len(), "{backend:?}: {own}");
    assert_eq!(own["property_history"][0]["source_type"], "MERGE", "{backend:?}");

    let req = pb::AnonymizeContactRequest { contact_id: a.id.clone(), email: String::new() };
    s.api().anonymize_contact(authed(req, &admin)).await.unwrap();
    assert_eq!(history(&s, &a.id, "").await.unwrap(), [], "{backend:?}: anonymised, no old value is kept");

    let req = pb::EraseContactRequest { contact_id: c.id.clone(), email: String::new() };
    s.api().erase_contact(authed(req, &admin)).await.unwrap();
    assert_eq!(history(&s, &c.id, "").await.unwrap_err().code(), Code::NotFound, "{backend:?}");
    let recreated = s.create("c@example.com", &[]).await.unwrap();
    assert_eq!(
        history(&s, &recreated.id, "").await.unwrap(),
        [change("email", "c@example.com", User, "user-1", "user-1")],
        "{backend:?}: nothing of the erased contact comes back"
    );
}

contactier_runtime::backend_tests!(
    every_change_of_a_value_is_kept_with_its_source_and_who_made_it,
    imports_and_merges_write_history_and_erasure_removes_it,
);
