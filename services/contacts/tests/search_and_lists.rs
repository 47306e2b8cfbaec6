//! Search and lists over real gRPC on both backends: OR of AND groups over any property, sorts,
//! cursor paging past any ceiling with exact totals, static and active lists.

mod common;

use common::*;
use contactier_proto::contacts::v1::{self as pb, FilterOperator as Op};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use std::collections::BTreeSet;
use tonic::Code;

async fn seed(s: &Contacts) {
    let admin = s.token(ACCOUNT, &["admin"]);
    let score = pb::PropertyDefinition {
        name: "score".into(),
        label: "Score".into(),
        r#type: pb::PropertyType::Number as i32,
        ..Default::default()
    };
    s.api()
        .create_property(authed(pb::CreatePropertyRequest { property: Some(score) }, &admin))
        .await
        .unwrap();
    // 250 contacts: score i, company Acme for even i, customers for i divisible by 5.
    let contacts = (0..250)
        .map(|i| {
            let mut p = vec![
                ("score".to_owned(), i.to_string()),
                ("first_name".to_owned(), format!("Person {i:03}")),
            ];
            if i % 2 == 0 {
                p.push(("company".into(), "Acme Corp".into()));
            }
            if i % 5 == 0 {
                p.push(("lifecycle_stage".into(), "customer".into()));
            }
            pb::ContactInput {
                email: format!("p{i:03}@example.com"),
                properties: p.into_iter().collect(),
                source: None,
                requested_status: 0,
            }
        })
        .collect();
    let req = pb::BatchCreateContactsRequest { contacts, request_id: String::new() };
    let r = s.api().batch_create_contacts(authed(req, &s.writer())).await.unwrap().into_inner();
    assert!(r.errors.is_empty());
}

fn emails(r: &pb::SearchContactsResponse) -> Vec<String> {
    r.contacts.iter().map(|c| c.email.clone()).collect()
}

async fn filters_sorts_and_pages_find_exactly_the_matches(backend: Backend) {
    let s = start(backend).await;
    seed(&s).await;
    let search = |filter, sorts: Vec<pb::Sort>, page_size, page_token: String| pb::SearchContactsRequest {
        filter,
        sorts,
        page_size,
        page_token,
        properties: vec![],
    };
    // (score >= 100 AND company contains "acme") OR lifecycle_stage = customer
    let fl = filter(vec![
        vec![f("score", Op::Gte, "100"), f("company", Op::Contains, "ACME")],
        vec![f("lifecycle_stage", Op::Eq, "customer")],
    ]);
    let want: BTreeSet<i32> = (0..250).filter(|i| (i >= &100 && i % 2 == 0) || i % 5 == 0).collect();
    // Pages of 7 sorted by score descending cover every match once, in order.
    let sort = vec![pb::Sort { property: "score".into(), direction: pb::SortDirection::Descending as i32 }];
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = s.search(search(fl.clone(), sort.clone(), 7, token)).await.unwrap();
        assert_eq!(r.total, want.len() as i64, "{backend:?}: exact total");
        seen.extend(r.contacts.iter().map(|c| c.properties["score"].parse::<i32>().unwrap()));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let mut expected: Vec<i32> = want.iter().copied().collect();
    expected.reverse();
    assert_eq!(seen, expected, "{backend:?}");
    assert_eq!(pages, expected.len().div_ceil(7));

    let cases: Vec<(pb::Filter, usize)> = vec![
        (f("score", Op::Lt, "10"), 10),
        (pb::Filter { values: vec!["3".into(), "4".into(), "x@y.z".into()], ..f("score", Op::In, "") }, 0),
        (pb::Filter { values: vec!["3".into(), "4".into()], ..f("score", Op::In, "") }, 2),
        (pb::Filter { values: vec!["3".into(), "4".into()], ..f("score", Op::NotIn, "") }, 248),
        (pb::Filter { high_value: "20".into(), ..f("score", Op::Between, "10") }, 11),
        (f("company", Op::HasProperty, ""), 125),
        (f("company", Op::NotHasProperty, ""), 125),
        (f("company", Op::Neq, "Acme Corp"), 125),
        (f("email", Op::Eq, "P007@EXAMPLE.COM"), 1),
        (f("first_name", Op::NotContains, "person 1"), 150),
        (f("created_at", Op::Gte, "2026-04-30"), 250),
        (f("created_at", Op::Lt, "2026-04-30T14:00:00Z"), 0),
    ];
    for (filt, n) in cases {
        let r = s.search(search(filter(vec![vec![filt.clone()]]), vec![], 1_000, String::new())).await;
        match r {
            Ok(r) => assert_eq!((r.total, r.contacts.len()), (n as i64, n), "{backend:?}: {filt:?}"),
            Err(e) => {
                assert_eq!((n, e.code()), (0, Code::InvalidArgument), "{backend:?}: {filt:?}: {e:?}");
            }
        }
    }
    // Sorted by email ascending, limited to some properties.
    let mut req = search(None, vec![pb::Sort { property: "email".into(), direction: 0 }], 3, String::new());
    req.properties = vec!["score".into()];
    let r = s.search(req).await.unwrap();
    assert_eq!(emails(&r), ["p000@example.com", "p001@example.com", "p002@example.com"]);
    assert_eq!(r.contacts[0].properties.keys().collect::<Vec<_>>(), ["score"]);

    for (req, field) in [
        (
            search(filter(vec![vec![f("nope", Op::Eq, "1")]]), vec![], 10, String::new()),
            "filter.groups[0].filters[0].property",
        ),
        (
            search(None, vec![pb::Sort { property: "nope".into(), direction: 0 }], 10, String::new()),
            "sorts[0].property",
        ),
        (search(None, vec![], 1_001, String::new()), "page_size"),
        (search(None, vec![], 10, "garbage".into()), "page_token"),
    ] {
        let err = s.search(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    // Another account finds nothing.
    let other = s.token("acct-b", &["read"]);
    let r = s
        .api()
        .search_contacts(authed(search(None, vec![], 10, String::new()), &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.total, 0);
}

async fn static_lists_hold_members_and_active_lists_follow_their_filter(backend: Backend) {
    let s = start(backend).await;
    seed(&s).await;
    let w = s.writer();
    let create = |name: &str, t: pb::ListType, filter| pb::CreateListRequest {
        name: name.into(),
        r#type: t as i32,
        filter,
    };
    let active = s
        .api()
        .create_list(authed(
            create(
                "Customers",
                pb::ListType::Active,
                filter(vec![vec![f("lifecycle_stage", Op::Eq, "customer")]]),
            ),
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    assert_eq!(active.size, 50, "{backend:?}");
    let fixed = s
        .api()
        .create_list(authed(create("VIP", pb::ListType::Static, None), &w))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();

    let page = s.search(pb::SearchContactsRequest { page_size: 30, ..Default::default() }).await.unwrap();
    // A search's token continues that search only: with another filter it is refused, not read
    // with the first search's total and position.
    let other = pb::SearchContactsRequest {
        page_size: 30,
        page_token: page.next_page_token.clone(),
        filter: filter(vec![vec![f("lifecycle_stage", Op::Eq, "customer")]]),
        ..Default::default()
    };
    let err = s.search(other).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().starts_with("page_token"), "{backend:?}: {}", err.message());
    let mut ids: Vec<String> = page.contacts.iter().map(|c| c.id.clone()).collect();
    ids.push("missing".into());
    let added = s
        .api()
        .add_list_members(authed(
            pb::AddListMembersRequest { list_id: fixed.id.clone(), contact_ids: ids.clone() },
            &w,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.added, added.not_found), (30, vec!["missing".to_owned()]));
    let again = s
        .api()
        .add_list_members(authed(
            pb::AddListMembersRequest { list_id: fixed.id.clone(), contact_ids: ids[..5].to_vec() },
            &w,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.added, 0, "{backend:?}: members once");

    // Members page through in full.
    let mut members = Vec::new();
    let mut token = String::new();
    loop {
        let r = s
            .api()
            .list_list_members(authed(
                pb::ListListMembersRequest { list_id: fixed.id.clone(), page_size: 8, page_token: token },
                &w,
            ))
            .await
            .unwrap()
            .into_inner();
        members.extend(r.contact_ids);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let mut want = ids[..30].to_vec();
    want.sort();
    assert_eq!(members, want, "{backend:?}");

    // An active list changes as contacts do; it takes no explicit members.
    s.create("new-customer@example.com", &[("lifecycle_stage", "customer")]).await.unwrap();
    let got = s
        .api()
        .get_list(authed(pb::GetListRequest { id: active.id.clone() }, &w))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    assert_eq!(got.size, 51, "{backend:?}");
    let err = s
        .api()
        .add_list_members(authed(
            pb::AddListMembersRequest { list_id: active.id.clone(), contact_ids: vec![ids[0].clone()] },
            &w,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Deleting a contact takes it out of the static list.
    s.api().delete_contact(authed(pb::DeleteContactRequest { id: ids[0].clone() }, &w)).await.unwrap();
    let removed = s
        .api()
        .remove_list_members(authed(
            pb::RemoveListMembersRequest { list_id: fixed.id.clone(), contact_ids: ids[1..3].to_vec() },
            &w,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 2);
    let got = s
        .api()
        .get_list(authed(pb::GetListRequest { id: fixed.id.clone() }, &w))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    assert_eq!(got.size, 27, "{backend:?}");

    // A mask names what changes: an active list's filter cleared matches every contact.
    let total =
        s.search(pb::SearchContactsRequest { page_size: 1, ..Default::default() }).await.unwrap().total;
    let mask = |paths: &[&str]| {
        Some(prost_types::FieldMask { paths: paths.iter().map(std::string::ToString::to_string).collect() })
    };
    let everyone = pb::UpdateListRequest {
        id: active.id.clone(),
        name: "ignored".into(),
        filter: None,
        update_mask: mask(&["filter"]),
    };
    let l = s.api().update_list(authed(everyone, &w)).await.unwrap().into_inner().list.unwrap();
    assert_eq!((l.size, l.name.as_str()), (total, "Customers"), "{backend:?}");
    let bogus = pb::UpdateListRequest {
        id: active.id.clone(),
        name: String::new(),
        filter: None,
        update_mask: mask(&["type"]),
    };
    let err = s.api().update_list(authed(bogus, &w)).await.unwrap_err();
    assert!(err.message().starts_with("update_mask.paths[0]"), "{backend:?}: {err:?}");
    let back = pb::UpdateListRequest {
        id: active.id.clone(),
        name: String::new(),
        filter: filter(vec![vec![f("lifecycle_stage", Op::Eq, "customer")]]),
        update_mask: mask(&["filter"]),
    };
    s.api().update_list(authed(back, &w)).await.unwrap();

    // The lists a contact is in, static and active, named by email as a data subject would.
    let newcomer = s
        .api()
        .get_contact(authed(
            pb::GetContactRequest {
                key: Some(pb::get_contact_request::Key::Email("new-customer@example.com".into())),
            },
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    s.api()
        .add_list_members(authed(
            pb::AddListMembersRequest { list_id: fixed.id.clone(), contact_ids: vec![newcomer.id.clone()] },
            &w,
        ))
        .await
        .unwrap();
    let memberships = |contact_id: &str, email: &str| pb::ListContactMembershipsRequest {
        contact_id: contact_id.into(),
        email: email.into(),
        page_size: 0,
        page_token: String::new(),
    };
    let lists = s
        .api()
        .list_contact_memberships(authed(memberships("", "New-Customer@example.com"), &w))
        .await
        .unwrap()
        .into_inner()
        .lists;
    let mut got: Vec<&str> = lists.iter().map(|l| l.id.as_str()).collect();
    got.sort();
    let mut want = vec![active.id.as_str(), fixed.id.as_str()];
    want.sort();
    assert_eq!(got, want, "{backend:?}");
    // One page at a time.
    let first = s
        .api()
        .list_contact_memberships(authed(
            pb::ListContactMembershipsRequest { page_size: 1, ..memberships(&newcomer.id, "") },
            &w,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.lists.len(), 1, "{backend:?}");
    let second = s
        .api()
        .list_contact_memberships(authed(
            pb::ListContactMembershipsRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..memberships(&newcomer.id, "")
            },
            &w,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.lists.len(), second.next_page_token.as_str()), (1, ""), "{backend:?}");
    assert_ne!(first.lists[0].id, second.lists[0].id);
    // A token is opaque and good for its own list only: garbage, a raw list id or a
    // memberships token given to ListLists is refused, not read as "no more lists".
    for token in ["garbage".to_owned(), first.lists[0].id.clone(), first.next_page_token.clone()] {
        let req = pb::ListListsRequest { page_size: 1, page_token: token.clone() };
        let err = s.api().list_lists(authed(req, &w)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {token}");
        assert!(err.message().starts_with("page_token"), "{backend:?}: {}", err.message());
    }
    // An unknown id is not "in no list".
    let err = s.api().list_contact_memberships(authed(memberships("c-nobody", ""), &w)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    let err = s
        .api()
        .list_contact_memberships(authed(memberships(&newcomer.id, "new-customer@example.com"), &w))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("email"), "{backend:?}: {err:?}");
    // Erased by email: nothing of it is left to find.
    let admin = s.token(ACCOUNT, &["admin"]);
    let erase =
        pb::EraseContactRequest { contact_id: String::new(), email: "new-customer@example.com".into() };
    s.api().erase_contact(authed(erase, &admin)).await.unwrap();
    let err = s
        .api()
        .list_contact_memberships(authed(memberships("", "new-customer@example.com"), &w))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    assert!(!err.message().contains("new-customer"), "no email in a refusal: {}", err.message());
    let missing = tonic_types::StatusExt::get_details_resource_info(&err).expect("ResourceInfo");
    assert_eq!(
        (missing.resource_type.as_str(), missing.resource_name.as_str()),
        ("contact", ""),
        "{backend:?}"
    );

    // A name finds one list: another of the same name, in any case, is refused naming it.
    let err = s.api().create_list(authed(create("vip", pb::ListType::Static, None), &w)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");
    let taken = tonic_types::StatusExt::get_details_resource_info(&err).expect("ResourceInfo");
    assert_eq!(
        (taken.resource_type.as_str(), taken.resource_name.as_str()),
        ("list", fixed.id.as_str()),
        "{backend:?}"
    );
    let rename = pb::UpdateListRequest {
        id: active.id.clone(),
        name: "VIP".into(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        ..Default::default()
    };
    let err = s.api().update_list(authed(rename, &w)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");
    // Without regard to case beyond ASCII or the Unicode form a name was typed in.
    for (first, second) in [("Ärzte", "ärzte"), ("Café", "Cafe\u{301}")] {
        s.api().create_list(authed(create(first, pb::ListType::Static, None), &w)).await.unwrap();
        let err =
            s.api().create_list(authed(create(second, pb::ListType::Static, None), &w)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}: {second}");
    }
    // Twenty at once under one name: exactly one is made.
    let racing = (0..20).map(|_| {
        let mut api = s.api();
        let req = authed(create("Race", pb::ListType::Static, None), &w);
        async move { api.create_list(req).await }
    });
    let results = futures::future::join_all(racing).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{backend:?}");
    assert!(
        results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == Code::AlreadyExists),
        "{backend:?}"
    );
    // Keeping its own name is no clash.
    let same = pb::UpdateListRequest { id: fixed.id.clone(), name: "VIP".into(), ..Default::default() };
    s.api().update_list(authed(same, &w)).await.unwrap();

    for (req, field) in [
        (create("", pb::ListType::Static, None), "name"),
        (create("x", pb::ListType::Unspecified, None), "type"),
        (create("x", pb::ListType::Active, None), "filter"),
        (create("x", pb::ListType::Active, filter(vec![vec![f("nope", Op::Eq, "1")]])), "filter.groups[0]"),
    ] {
        let err = s.api().create_list(authed(req, &w)).await.unwrap_err();
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let other = s.token("acct-b", &["read", "write"]);
    let err =
        s.api().get_list(authed(pb::GetListRequest { id: fixed.id.clone() }, &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.api().delete_list(authed(pb::DeleteListRequest { id: fixed.id.clone() }, &w)).await.unwrap();
    let lists =
        s.api().list_lists(authed(pb::ListListsRequest::default(), &w)).await.unwrap().into_inner().lists;
    let names: BTreeSet<&str> = lists.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from([active.name.as_str(), "Ärzte", "Café", "Race"]), "{backend:?}");
}

contactier_runtime::backend_tests!(
    filters_sorts_and_pages_find_exactly_the_matches,
    static_lists_hold_members_and_active_lists_follow_their_filter,
);
