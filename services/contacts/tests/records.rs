//! Contact records over real gRPC on both backends: create, get, update with versions, delete,
//! batches with per-record results, custom properties, bad input of every kind, other
//! accounts, and the events that reach marketing-status.

mod common;

use common::*;
use contactier_proto::common::v1::{MarketingStatus, Source, SourceType};
use contactier_proto::contacts::v1::{self as pb, get_contact_request::Key};
use contactier_proto::marketing_status::v1::{
    self as mpb, marketing_status_service_client::MarketingStatusServiceClient,
};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use std::collections::{BTreeMap, HashMap};
use tonic::Code;

fn props(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn contacts_are_created_read_updated_and_deleted_with_their_status_following(backend: Backend) {
    let s = start(backend).await;
    let c =
        s.create(" Ada@Example.com ", &[("first_name", "Ada"), ("lifecycle_stage", "lead")]).await.unwrap();
    assert_eq!((c.email.as_str(), c.version), ("Ada@Example.com", 1), "{backend:?}");
    assert_eq!(c.creation_source.as_ref().unwrap().r#type, SourceType::User as i32, "a person made it");

    // The email is unique without regard to case, and finds the contact.
    let err = s.create("ada@EXAMPLE.com", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");
    let read = s.token(ACCOUNT, &["read"]);
    let got = s
        .api()
        .get_contact(authed(pb::GetContactRequest { key: Some(Key::Email("ADA@example.COM".into())) }, &read))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(got, c);

    // Partial update with optimistic concurrency.
    let update = |version: i64, p: &[(&str, &str)]| pb::UpdateContactRequest {
        id: c.id.clone(),
        properties: props(p),
        expected_version: version,
        email: String::new(),
        update_mask: None,
    };
    let u = s
        .api()
        .update_contact(authed(update(1, &[("last_name", "Lovelace"), ("first_name", "")]), &s.writer()))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.properties, props(&[("last_name", "Lovelace"), ("lifecycle_stage", "lead")]), "{backend:?}");
    let err = s.api().update_contact(authed(update(1, &[("company", "X")]), &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{backend:?}: a stale version");

    // With a field mask exactly the named fields change: a named property left out is
    // cleared, one given but not named is ignored, the email stays unless named.
    let masked = |paths: &[&str], p: &[(&str, &str)], email: &str| pb::UpdateContactRequest {
        id: c.id.clone(),
        properties: props(p),
        expected_version: 0,
        email: email.into(),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(std::string::ToString::to_string).collect(),
        }),
    };
    let req = masked(
        &["properties.last_name", "properties.company"],
        &[("company", "Analytical Engines"), ("lifecycle_stage", "customer")],
        "ignored@example.com",
    );
    let u =
        s.api().update_contact(authed(req.clone(), &s.writer())).await.unwrap().into_inner().contact.unwrap();
    // The same update again changes nothing, so the version stays.
    let again = s.api().update_contact(authed(req, &s.writer())).await.unwrap().into_inner().contact.unwrap();
    assert_eq!((again.version, &again.properties), (u.version, &u.properties), "{backend:?}");
    assert_eq!(
        (u.properties, u.email.as_str()),
        (props(&[("company", "Analytical Engines"), ("lifecycle_stage", "lead")]), c.email.as_str()),
        "{backend:?}"
    );
    for (req, field) in [
        (masked(&["phone_number"], &[], ""), "update_mask.paths[0]"),
        (masked(&["properties"], &[], ""), "update_mask.paths[0]"),
        (masked(&["email"], &[], ""), "email"),
        (masked(&[], &[], ""), "update_mask"),
        // Named twice would read as "set, then clear".
        (
            masked(&["properties.company", "properties.company"], &[("company", "Beta")], ""),
            "update_mask.paths[1]",
        ),
        (masked(&["email", "email"], &[], "new@example.com"), "update_mask.paths[1]"),
    ] {
        let err = s.api().update_contact(authed(req, &s.writer())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {field}");
        assert!(err.message().starts_with(field), "{backend:?}: {} should name {field}", err.message());
    }
    let get = pb::GetContactRequest { key: Some(Key::Id(c.id.clone())) };
    let kept = s.api().get_contact(authed(get, &read)).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(kept.properties.get("company").map(String::as_str), Some("Analytical Engines"), "{backend:?}");

    // marketing-status learnt of the contact with a manual creation's default.
    s.settle().await;
    let status = s.status(&c.id).await.expect("marketing-status knows the contact");
    assert_eq!(status.status, MarketingStatus::NonMarketing as i32, "{backend:?}");

    s.api().delete_contact(authed(pb::DeleteContactRequest { id: c.id.clone() }, &s.writer())).await.unwrap();
    let err = s
        .api()
        .get_contact(authed(pb::GetContactRequest { key: Some(Key::Id(c.id.clone())) }, &read))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.settle().await;
    assert!(s.status(&c.id).await.is_none(), "{backend:?}: deleted in marketing-status too");
    // Its email is free again.
    s.create("ada@example.com", &[]).await.unwrap();
}

async fn bad_input_is_refused_with_the_field_named_and_changes_nothing(backend: Backend) {
    let s = start(backend).await;
    let none: &[(&str, &str)] = &[];
    let cases = [
        ("not-an-email", none, "contact.email"),
        ("", none, "contact.email"),
        ("a@example.com", &[("shoe_size", "44")], "contact.properties.shoe_size"),
        ("a@example.com", &[("lifecycle_stage", "alien")], "contact.properties.lifecycle_stage"),
        ("a@example.com", &[("first_name", "two\nlines")], "contact.properties.first_name"),
    ];
    for (email, p, field) in cases {
        let err = s.create(email, p).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{email} {p:?}");
        assert!(err.message().starts_with(field), "{backend:?}: {:?} should name {field}", err.message());
    }
    let req = pb::CreateContactRequest {
        contact: Some(pb::ContactInput {
            email: "a@example.com".into(),
            source: Some(Source { r#type: SourceType::System as i32, id: String::new() }),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let err = s.api().create_contact(authed(req, &s.writer())).await.unwrap_err();
    assert!(err.message().starts_with("contact.source.type"), "{}", err.message());
    let count =
        s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap().into_inner();
    assert_eq!(count.total_contacts, 0, "{backend:?}: nothing was created");

    // Reading needs read scope at least; writing needs write.
    let err = s
        .api()
        .create_contact(authed(pb::CreateContactRequest::default(), &s.token(ACCOUNT, &["read"])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = s
        .api()
        .batch_delete_contacts(authed(pb::BatchDeleteContactsRequest { ids: vec![] }, &s.writer()))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("ids"), "{}", err.message());
    let too_many = pb::BatchDeleteContactsRequest { ids: vec!["x".into(); 1_001] };
    let err = s.api().batch_delete_contacts(authed(too_many, &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn batches_give_each_record_its_outcome_and_replays_change_nothing(backend: Backend) {
    let s = start(backend).await;
    let mut inputs: Vec<pb::ContactInput> = (0..1_000)
        .map(|i| pb::ContactInput {
            email: format!("person{i}@example.com"),
            properties: props(&[("company", "Acme")]),
            source: Some(Source { r#type: SourceType::Form as i32, id: "form-7".into() }),
            requested_status: 0,
        })
        .collect();
    inputs[10].email = "broken".into();
    inputs[20].email = "PERSON0@example.com".into();
    let req = pb::BatchCreateContactsRequest { contacts: inputs, request_id: "batch-1".into() };
    // A form's contacts come from the system behind the form, here acted for by an admin.
    let admin = s.token(ACCOUNT, &["admin"]);
    let r = s.api().batch_create_contacts(authed(req.clone(), &admin)).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 998, "{backend:?}");
    let errors: Vec<_> = r.errors.iter().map(|e| (e.index, e.code.as_str(), e.field.as_str())).collect();
    assert_eq!(
        errors,
        [(10, "INVALID_ARGUMENT", "contacts[10].email"), (20, "ALREADY_EXISTS", "")],
        "{backend:?}"
    );
    // The same request again: the first answer, nothing created twice.
    let again = s.api().batch_create_contacts(authed(req, &admin)).await.unwrap().into_inner();
    assert_eq!(again, r, "{backend:?}");
    let total =
        s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap().into_inner();
    assert_eq!(total.total_contacts, 998, "{backend:?}");

    // Forms default to marketing: every created contact counts, once.
    s.settle().await;
    assert_eq!(s.marketing_count().await.marketing, 998, "{backend:?}");

    let ids: Vec<String> = r.results.iter().map(|c| c.contact.as_ref().unwrap().id.clone()).collect();
    let updates = vec![
        pb::UpdateContactRequest {
            id: ids[0].clone(),
            properties: props(&[("job_title", "CTO")]),
            expected_version: 1,
            email: String::new(),
            update_mask: None,
        },
        pb::UpdateContactRequest {
            id: "missing".into(),
            properties: props(&[("job_title", "CTO")]),
            expected_version: 0,
            email: String::new(),
            update_mask: None,
        },
        pb::UpdateContactRequest {
            id: ids[1].clone(),
            properties: props(&[("lead_status", "nope")]),
            expected_version: 0,
            email: String::new(),
            update_mask: None,
        },
        pb::UpdateContactRequest {
            id: ids[2].clone(),
            properties: BTreeMap::new(),
            expected_version: 0,
            email: "person3@example.com".into(),
            update_mask: None,
        },
        // The first contact again: which change would its answer show? Refused, not applied.
        pb::UpdateContactRequest {
            id: ids[0].clone(),
            properties: props(&[("job_title", "CFO")]),
            expected_version: 0,
            email: String::new(),
            update_mask: None,
        },
    ];
    let u = s
        .api()
        .batch_update_contacts(authed(pb::BatchUpdateContactsRequest { updates }, &s.writer()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.results.len(), 1);
    let codes: Vec<_> = u.errors.iter().map(|e| (e.index, e.code.as_str())).collect();
    assert_eq!(
        codes,
        [(1, "NOT_FOUND"), (2, "INVALID_ARGUMENT"), (3, "ALREADY_EXISTS"), (4, "INVALID_ARGUMENT")],
        "{backend:?}"
    );
    assert_eq!(u.errors[3].field, "updates[4].id", "{backend:?}");
    let first = u.results[0].contact.as_ref().unwrap();
    assert_eq!(first.properties.get("job_title").map(String::as_str), Some("CTO"), "{backend:?}");

    let get = pb::BatchGetContactsRequest {
        ids: vec![ids[0].clone(), "missing".into()],
        emails: vec!["PERSON5@example.com".into()],
    };
    let g = s.api().batch_get_contacts(authed(get, &s.token(ACCOUNT, &["read"]))).await.unwrap().into_inner();
    assert_eq!(g.contacts.len(), 2);
    assert_eq!(g.contacts[0].properties.get("job_title").map(String::as_str), Some("CTO"));
    assert_eq!(g.not_found, ["missing"]);

    let del = pb::BatchDeleteContactsRequest { ids: vec![ids[0].clone(), ids[1].clone(), "missing".into()] };
    let d = s.api().batch_delete_contacts(authed(del, &s.writer())).await.unwrap().into_inner();
    assert_eq!((d.deleted_ids.len(), d.not_found.clone()), (2, vec!["missing".to_owned()]));
    s.settle().await;
    assert_eq!(s.marketing_count().await.marketing, 996, "{backend:?}: deletes free their places");

    // Another account sees none of it.
    let other = s.token("acct-b", &["read", "write"]);
    let g = s
        .api()
        .batch_get_contacts(authed(
            pb::BatchGetContactsRequest { ids: vec![ids[3].clone()], emails: vec![] },
            &other,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(g.contacts.is_empty(), "{backend:?}");
    let err = s
        .api()
        .delete_contact(authed(pb::DeleteContactRequest { id: ids[3].clone() }, &other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn custom_properties_are_defined_typed_and_validated(backend: Backend) {
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin"]);
    let def = |name: &str, t: pb::PropertyType, options: &[&str]| pb::PropertyDefinition {
        name: name.into(),
        label: name.replace('_', " "),
        r#type: t as i32,
        options: options
            .iter()
            .map(|o| pb::PropertyOption { value: o.to_string(), label: String::new() })
            .collect(),
        standard: false,
        description: String::new(),
    };
    for d in [
        def("score", pb::PropertyType::Number, &[]),
        def("tier", pb::PropertyType::Enumeration, &["gold", "silver"]),
        def("renews_on", pb::PropertyType::Date, &[]),
        def("vip", pb::PropertyType::Checkbox, &[]),
        def("notes", pb::PropertyType::MultiLineText, &[]),
    ] {
        s.api()
            .create_property(authed(pb::CreatePropertyRequest { property: Some(d) }, &admin))
            .await
            .unwrap();
    }
    let bad = [
        (def("score", pb::PropertyType::Number, &[]), Code::AlreadyExists, ""),
        (def("first_name", pb::PropertyType::Number, &[]), Code::AlreadyExists, ""),
        (def("Bad Name", pb::PropertyType::Number, &[]), Code::InvalidArgument, "property.name"),
        (def("email", pb::PropertyType::Number, &[]), Code::InvalidArgument, "property.name"),
        (def("colour", pb::PropertyType::Enumeration, &[]), Code::InvalidArgument, "property.options"),
        (def("size", pb::PropertyType::Number, &["s"]), Code::InvalidArgument, "property.options"),
        (def("kind", pb::PropertyType::Unspecified, &[]), Code::InvalidArgument, "property.type"),
    ];
    for (d, code, field) in bad {
        let err = s
            .api()
            .create_property(authed(pb::CreatePropertyRequest { property: Some(d.clone()) }, &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{backend:?} {d:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = s
        .api()
        .create_property(authed(
            pb::CreatePropertyRequest { property: Some(def("x", pb::PropertyType::Number, &[])) },
            &s.writer(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "admins define properties");

    let c = s
        .create(
            "b@example.com",
            &[
                ("score", "007.50"),
                ("tier", "gold"),
                ("renews_on", "2028-02-29"),
                ("vip", "Yes"),
                ("notes", "a\nb"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        c.properties,
        props(&[
            ("score", "7.5"),
            ("tier", "gold"),
            ("renews_on", "2028-02-29"),
            ("vip", "true"),
            ("notes", "a\nb")
        ]),
        "{backend:?}: normal forms"
    );
    for (p, v) in [("score", "lots"), ("tier", "bronze"), ("renews_on", "2027-02-29"), ("vip", "maybe")] {
        let err = s.create("c@example.com", &[(p, v)]).await.unwrap_err();
        assert!(err.message().starts_with(&format!("contact.properties.{p}")), "{}", err.message());
    }
    let list = s
        .api()
        .list_properties(authed(pb::ListPropertiesRequest::default(), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    // Eight a person sets and the lead score worked out from the scoring rules.
    assert_eq!(list.properties.iter().filter(|p| p.standard).count(), 9);
    assert_eq!(list.properties.len(), 14);
    // Pages of five follow one another to the same fourteen.
    let (mut paged, mut token) = (Vec::new(), String::new());
    loop {
        let req = pb::ListPropertiesRequest { page_size: 5, page_token: token };
        let page = s.api().list_properties(authed(req, &s.writer())).await.unwrap().into_inner();
        assert!(page.properties.len() <= 5, "{backend:?}");
        paged.extend(page.properties.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut all: Vec<String> = list.properties.iter().map(|p| p.name.clone()).collect();
    all.sort();
    assert_eq!(paged, all, "{backend:?}");

    // The type stays; the options may grow. Deleting drops the values.
    let mut tier = def("tier", pb::PropertyType::Enumeration, &["gold", "silver", "bronze"]);
    s.api()
        .update_property(authed(
            pb::UpdatePropertyRequest { property: Some(tier.clone()), update_mask: None },
            &admin,
        ))
        .await
        .unwrap();
    // With a mask only the named fields change; the type may be left out.
    let mask =
        |paths: &[&str]| Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).into()).collect() });
    let relabel =
        pb::PropertyDefinition { name: "tier".into(), label: "Tier (2026)".into(), ..Default::default() };
    let d = s
        .api()
        .update_property(authed(
            pb::UpdatePropertyRequest { property: Some(relabel.clone()), update_mask: mask(&["label"]) },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .property
        .unwrap();
    assert_eq!((d.label.as_str(), d.r#type()), ("Tier (2026)", pb::PropertyType::Enumeration), "{backend:?}");
    assert_eq!(d.options.len(), 3, "{backend:?}: options not named stay");
    for (paths, field) in [
        (&["type"][..], "update_mask.paths[0]"),
        (&["label", "name"][..], "update_mask.paths[1]"),
        (&[][..], "update_mask"),
    ] {
        let req = pb::UpdatePropertyRequest { property: Some(relabel.clone()), update_mask: mask(paths) };
        let err = s.api().update_property(authed(req, &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {paths:?}");
        assert!(err.message().contains(field), "{backend:?}: {}", err.message());
    }
    // Options named and left empty are cleared, which an enumeration refuses.
    let req = pb::UpdatePropertyRequest { property: Some(relabel), update_mask: mask(&["options"]) };
    let err = s.api().update_property(authed(req, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    s.create("c@example.com", &[("tier", "bronze")]).await.unwrap();
    tier.r#type = pb::PropertyType::SingleLineText as i32;
    tier.options.clear();
    let err = s
        .api()
        .update_property(authed(
            pb::UpdatePropertyRequest { property: Some(tier), update_mask: None },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    s.api()
        .delete_property(authed(pb::DeletePropertyRequest { name: "score".into() }, &admin))
        .await
        .unwrap();
    let got = s
        .api()
        .get_contact(authed(pb::GetContactRequest { key: Some(Key::Id(c.id.clone())) }, &s.writer()))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert!(!got.properties.contains_key("score"), "{backend:?}");
    assert_eq!(
        got.properties.get("tier").map(String::as_str),
        Some("gold"),
        "{backend:?}: custom values stay"
    );
    let by_email = s
        .api()
        .get_contact(authed(
            pb::GetContactRequest { key: Some(Key::Email(got.email.to_uppercase())) },
            &s.writer(),
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(by_email, got, "{backend:?}: the same contact by email");
    let err = s
        .api()
        .delete_property(authed(pb::DeletePropertyRequest { name: "company".into() }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "standard properties stay");
}

async fn oversized_messages_and_values_are_refused_and_change_nothing(backend: Backend) {
    let s = start(backend).await;
    // Over the 4 MB a message may carry: refused before any handler runs.
    let huge = "x".repeat(5 * 1024 * 1024);
    let err = s.create("huge@example.com", &[("company", &huge)]).await.unwrap_err();
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{backend:?}: {err:?}");
    if err.code() == Code::OutOfRange {
        assert!(
            err.message().contains("4 MiB"),
            "{backend:?}: says the limit, not the transport's words: {}",
            err.message()
        );
    }
    // Under it but over a text property's 65,536 characters: the property is named.
    let long = "y".repeat(70_000);
    let err = s.create("long@example.com", &[("company", &long)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("company"), "{backend:?}: {}", err.message());
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 0, "{backend:?}: nothing created");
    // The service still answers.
    s.create("fine@example.com", &[]).await.unwrap();
}

async fn accounts_named_beyond_ascii_are_served_across_services(backend: Backend) {
    let s = start(backend).await;
    for account in ["кот-акк", &"𠀀".repeat(256)] {
        let token = s.token(account, &["read", "write", "admin"]);
        // Making a contact marketing asks marketing-status whether the user may: a call on
        // the account's behalf.
        let input = pb::ContactInput {
            email: "ada@example.com".into(),
            requested_status: MarketingStatus::Marketing as i32,
            ..Default::default()
        };
        let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
        let made = s.api().create_contact(authed(req, &token)).await;
        let made = made.unwrap_or_else(|e| panic!("{backend:?}: {e:?}")).into_inner().contact.unwrap();
        s.settle().await;
        let mut ms = MarketingStatusServiceClient::new(s.status_channel.clone());
        let req = mpb::GetContactStatusRequest { contact_id: made.id };
        let status = ms.get_contact_status(authed(req, &token)).await.unwrap().into_inner().status.unwrap();
        assert_eq!(status.status, MarketingStatus::Marketing as i32, "{backend:?}");
    }
}

/// Multi-line text properties `notes_0` to `notes_{n-1}`.
async fn notes_properties(s: &Contacts, admin: &str, n: usize) {
    for i in 0..n {
        let notes = property(&format!("notes_{i}"), pb::PropertyType::MultiLineText);
        s.api().create_property(authed(notes, admin)).await.unwrap();
    }
}

async fn a_contact_holds_at_most_a_mebibyte_of_values(backend: Backend) {
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    notes_properties(&s, &admin, 20).await;
    let full = "n".repeat(65_536);
    let values = |from: usize, to: usize| -> Vec<(String, String)> {
        (from..to).map(|i| (format!("notes_{i}"), full.clone())).collect()
    };

    // Twenty values of 65,536 characters in one create: refused whole, the field named.
    let input = pb::ContactInput {
        email: "big@example.com".into(),
        properties: values(0, 20).into_iter().collect(),
        ..Default::default()
    };
    let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
    let err = s.api().create_contact(authed(req, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().starts_with("contact.properties: the contact would hold"), "{}", err.message());

    // Ten fit; ten more in an update would not: refused, and the contact is as it was.
    let input = pb::ContactInput {
        email: "big@example.com".into(),
        properties: values(0, 10).into_iter().collect(),
        ..Default::default()
    };
    let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
    let c = s.api().create_contact(authed(req, &admin)).await.unwrap().into_inner().contact.unwrap();
    let update = pb::UpdateContactRequest {
        id: c.id.clone(),
        properties: values(10, 20).into_iter().collect(),
        ..Default::default()
    };
    let err = s.api().update_contact(authed(update, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().starts_with("properties: the contact would hold"), "{}", err.message());
    let now = s.by_email("big@example.com").await;
    assert_eq!((now.version, now.properties.len()), (c.version, 10), "{backend:?}: unchanged");
    // A change that shrinks it is taken.
    let update = pb::UpdateContactRequest {
        id: c.id.clone(),
        properties: [("notes_0".to_owned(), String::new()), ("notes_11".to_owned(), "short".to_owned())]
            .into(),
        ..Default::default()
    };
    s.api().update_contact(authed(update, &admin)).await.unwrap();
    assert_eq!(s.by_email("big@example.com").await.properties.len(), 10, "{backend:?}");
}

/// Contacts near their 1 MiB each: a search page ends at 3 MiB of values whatever its page
/// size, so every page reaches a client with the default 4 MiB limit and the pages together
/// hold each contact once; a batch read past it is refused, naming `ids`.
async fn pages_of_large_contacts_fit_a_clients_message(backend: Backend) {
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    notes_properties(&s, &admin, 20).await;
    let full = "n".repeat(65_536);
    let mut ids = Vec::new();
    for c in 0..8 {
        let input = pb::ContactInput {
            email: format!("big{c}@example.com"),
            properties: (0..10).map(|i| (format!("notes_{i}"), full.clone())).collect(),
            ..Default::default()
        };
        let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
        ids.push(s.api().create_contact(authed(req, &admin)).await.unwrap().into_inner().contact.unwrap().id);
    }

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let req = pb::SearchContactsRequest { page_size: 1_000, page_token: token, ..Default::default() };
        let page = s.api().search_contacts(authed(req, &admin)).await.unwrap().into_inner();
        pages += 1;
        assert!(!page.contacts.is_empty(), "{backend:?}: a page holds a contact at least");
        seen.extend(page.contacts.into_iter().map(|c| c.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (8, 8), "{backend:?}: each contact once");
    assert_eq!(pages, 2, "{backend:?}: four contacts of 655,360 bytes of values a page");

    let err = s
        .api()
        .batch_get_contacts(authed(pb::BatchGetContactsRequest { ids: ids.clone(), emails: vec![] }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
    assert!(err.message().starts_with("ids: "), "{backend:?}: {}", err.message());
    let emails: Vec<String> = (0..8).map(|c| format!("big{c}@example.com")).collect();
    let err = s
        .api()
        .batch_get_contacts(authed(pb::BatchGetContactsRequest { ids: vec![], emails }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: by email too: {err:?}");
    assert!(err.message().starts_with("emails: "), "{backend:?}: {}", err.message());
    let four = pb::BatchGetContactsRequest { ids: ids[..4].to_vec(), emails: vec![] };
    let got = s.api().batch_get_contacts(authed(four, &admin)).await.unwrap().into_inner();
    assert_eq!(got.contacts.len(), 4, "{backend:?}: what fits is answered");
    // One contact named a thousand times, by id and by email: answered once.
    let again = pb::BatchGetContactsRequest {
        ids: vec![ids[0].clone(); 500],
        emails: vec!["big0@example.com".into(); 500],
    };
    let got = s.api().batch_get_contacts(authed(again, &admin)).await.unwrap().into_inner();
    assert_eq!(got.contacts.len(), 1, "{backend:?}: each contact once");

    // Two contacts that together pass 1 MiB of values are not merged into one.
    let input = pb::ContactInput {
        email: "other@example.com".into(),
        properties: (10..20).map(|i| (format!("notes_{i}"), full.clone())).collect(),
        ..Default::default()
    };
    let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
    let other = s.api().create_contact(authed(req, &admin)).await.unwrap().into_inner().contact.unwrap();
    let merge = pb::MergeContactsRequest {
        primary_id: ids[0].clone(),
        secondary_id: other.id.clone(),
        ..Default::default()
    };
    let err = s.api().merge_contacts(authed(merge, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
    assert!(err.message().contains("bytes of values"), "{backend:?}: {}", err.message());
    let both = pb::BatchGetContactsRequest { ids: vec![ids[0].clone(), other.id.clone()], emails: vec![] };
    let got = s.api().batch_get_contacts(authed(both, &admin)).await.unwrap().into_inner();
    assert_eq!(
        got.contacts.iter().map(|c| c.properties.len()).collect::<Vec<_>>(),
        [10, 10],
        "{backend:?}: both as they were"
    );
}

async fn reads_at_the_same_time_each_get_their_own_accounts_contact(backend: Backend) {
    const OTHER: &str = "acct-b";
    let s = start(backend).await;
    // The same addresses in both accounts, and a property only one of them has: an answer
    // read with the other account's catalog would lose the value.
    let mut made = HashMap::new();
    for (account, name) in [(ACCOUNT, "score"), (OTHER, "level")] {
        let property = pb::PropertyDefinition {
            name: name.into(),
            label: name.into(),
            r#type: pb::PropertyType::Number as i32,
            ..Default::default()
        };
        s.api()
            .create_property(authed(
                pb::CreatePropertyRequest { property: Some(property) },
                &s.token(account, &["admin"]),
            ))
            .await
            .unwrap();
        for i in 0..20 {
            let input = pb::ContactInput {
                email: format!("person{i}@example.com"),
                properties: props(&[(name, &i.to_string())]),
                ..Default::default()
            };
            let req = pb::CreateContactRequest { contact: Some(input), request_id: String::new() };
            let c = s
                .api()
                .create_contact(authed(req, &s.token(account, &["write"])))
                .await
                .unwrap()
                .into_inner()
                .contact
                .unwrap();
            made.insert((account, i), c);
        }
    }

    // Every read at once, by id and by email, from both accounts, with ids of the other
    // account and unknown ones among them.
    let mut reads = Vec::new();
    for round in 0..5 {
        for ((account, i), c) in &made {
            let other = if *account == ACCOUNT { OTHER } else { ACCOUNT };
            let asks = [
                (*account, Key::Id(c.id.clone()), Some(c.clone())),
                (*account, Key::Email(c.email.to_uppercase()), Some(c.clone())),
                (other, Key::Id(c.id.clone()), None),
                (*account, Key::Id(format!("missing-{round}-{i}")), None),
            ];
            for (asker, key, want) in asks {
                let mut api = s.api();
                let token = s.token(asker, &["read"]);
                reads.push(tokio::spawn(async move {
                    let got = api.get_contact(authed(pb::GetContactRequest { key: Some(key) }, &token)).await;
                    (got.map(|r| r.into_inner().contact.unwrap()).map_err(|e| e.code()), want)
                }));
            }
        }
    }
    assert_eq!(reads.len(), 5 * 40 * 4);
    for read in reads {
        let (got, want) = read.await.unwrap();
        match want {
            Some(c) => assert_eq!(got, Ok(c), "{backend:?}"),
            None => assert_eq!(got, Err(Code::NotFound), "{backend:?}"),
        }
    }
}

/// Creates sent at once under one request id (a client's retries racing its first try): each
/// gets the one contact made, none is told its email is taken.
async fn creates_at_once_under_one_request_id_each_answer_the_one_contact(backend: Backend) {
    const CALLS: usize = 6;
    let s = start(backend).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (mut api, token, barrier) = (s.api(), s.writer(), barrier.clone());
            let input = pb::ContactInput {
                email: "twin@example.com".into(),
                properties: props(&[("company", "Twins")]),
                ..Default::default()
            };
            let req = pb::CreateContactRequest { contact: Some(input), request_id: "create-once".into() };
            tokio::spawn(async move {
                barrier.wait().await;
                api.create_contact(authed(req, &token)).await.map(|r| r.into_inner().contact.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        let c = call.await.unwrap().unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
        ids.insert(c.id);
    }
    assert_eq!(ids.len(), 1, "{backend:?}: one contact, the same answer to every call");
}

contactier_runtime::backend_tests!(
    a_contact_holds_at_most_a_mebibyte_of_values,
    pages_of_large_contacts_fit_a_clients_message,
    accounts_named_beyond_ascii_are_served_across_services,
    creates_at_once_under_one_request_id_each_answer_the_one_contact,
    reads_at_the_same_time_each_get_their_own_accounts_contact,
    contacts_are_created_read_updated_and_deleted_with_their_status_following,
    bad_input_is_refused_with_the_field_named_and_changes_nothing,
    batches_give_each_record_its_outcome_and_replays_change_nothing,
    custom_properties_are_defined_typed_and_validated,
    oversized_messages_and_values_are_refused_and_change_nothing,
);
