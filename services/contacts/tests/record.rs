//! The record beyond a contact's properties, over real gRPC on both backends: the history of
//! every value with where it came from and who made it, through every path that writes values.

mod common;

use common::*;
use contactier_proto::common::v1::SourceType;
use contactier_proto::contacts::v1::{self as pb, import_contacts_request::Part};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use tonic::Code;

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

/// Runs an import of `csv` to its end; its summary.
async fn import_csv(s: &Contacts, mode: pb::ImportMode, csv: &str) -> pb::ImportSummary {
    let h = pb::ImportHeader {
        name: "repeats".into(),
        mode: mode as i32,
        column_mapping: [("Email", "email"), ("Company", "company")]
            .iter()
            .map(|(c, p)| (c.to_string(), p.to_string()))
            .collect(),
        ..Default::default()
    };
    let parts = vec![
        pb::ImportContactsRequest { part: Some(Part::Header(h)) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes().to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd { size: csv.len() as i64 })) },
    ];
    let mut progress = s
        .api()
        .import_contacts(authed(futures::stream::iter(parts), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = progress.message().await.unwrap() {
        last = m.progress;
    }
    last.expect("the import's summary")
}

async fn an_import_naming_one_email_again_keeps_each_value_in_order(backend: Backend) {
    use SourceType::*;
    let s = start(backend).await;
    let a = s.create("a@example.com", &[("company", "Old Co")]).await.unwrap();
    later(&s).await;
    // A new address three times and an existing one twice, in one batch of the file.
    let csv = "Email,Company\nd@example.com,First Co\na@example.com,A One\nD@example.com,Second Co\n\
               a@example.com,A Two\nd@example.com,Third Co\n";
    let done = import_csv(&s, pb::ImportMode::Upsert, csv).await;
    assert_eq!(
        (done.rows_read, done.created, done.updated, done.failed, done.skipped),
        (5, 1, 4, 0, 0),
        "{backend:?}: {done:?}"
    );
    let d = s.by_email("d@example.com").await;
    assert_eq!(d.properties["company"], "Third Co", "{backend:?}: the last row's value stands");
    let id = done.import_id.as_str();
    assert_eq!(
        history(&s, &d.id, "company").await.unwrap(),
        [
            change("company", "Third Co", Import, id, "user-1"),
            change("company", "Second Co", Import, id, "user-1"),
            change("company", "First Co", Import, id, "user-1"),
        ],
        "{backend:?}: every value the file gave, newest first"
    );
    assert_eq!(
        history(&s, &a.id, "company").await.unwrap(),
        [
            change("company", "A Two", Import, id, "user-1"),
            change("company", "A One", Import, id, "user-1"),
            change("company", "Old Co", User, "user-1", "user-1"),
        ],
        "{backend:?}"
    );

    // Update only: an address with no contact is skipped each time it comes, not counted as
    // updated the second time.
    let done =
        import_csv(&s, pb::ImportMode::Update, "Email,Company\nz@example.com,Z\nz@example.com,Z2\n").await;
    assert_eq!((done.created, done.updated, done.skipped), (0, 0, 2), "{backend:?}: {done:?}");
    // Create only: every later row of an address is refused as a repeat, in its first row's
    // batch of 1,000 or after it; an address a contact had before is skipped.
    let mut csv = String::from("Email,Company\nn@example.com,N\nn@example.com,N2\na@example.com,A\n");
    for i in 0..1_000 {
        csv.push_str(&format!("fill{i}@example.com,F\n"));
    }
    csv.push_str("N@example.com,N3\n");
    let done = import_csv(&s, pb::ImportMode::Create, &csv).await;
    assert_eq!(
        (done.rows_read, done.created, done.failed, done.skipped),
        (1_004, 1_001, 2, 1),
        "{backend:?}: {done:?}"
    );
    assert_eq!(s.by_email("n@example.com").await.properties["company"], "N", "{backend:?}");
    let req = pb::ListImportErrorsRequest {
        import_id: done.import_id.clone(),
        page_size: 10,
        ..Default::default()
    };
    let errors =
        s.api().list_import_errors(authed(req, &s.token(ACCOUNT, &["read"]))).await.unwrap().into_inner();
    let reasons: Vec<(i64, &str)> = errors.errors.iter().map(|e| (e.row, e.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (2, "the email of row 1 again"),
            (3, "skipped: a contact with this email exists"),
            (1_004, "the email of an earlier row again"),
        ],
        "{backend:?}"
    );
}

async fn imports_and_merges_write_history_and_erasure_removes_it(backend: Backend) {
    use SourceType::*;
    let s = start(backend).await;
    let a = s.create("a@example.com", &[("company", "Old Co")]).await.unwrap();
    let b = s.create("b@example.com", &[("phone", "+41 44 000 00 00"), ("company", "B Co")]).await.unwrap();
    later(&s).await;

    // An import updates one contact and creates another, as the user who runs it.
    let csv = "Email,Company\na@example.com,New Co\nc@example.com,C Co\n";
    let import_id = import_csv(&s, pb::ImportMode::Upsert, csv).await.import_id;
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
    let req = pb::MergeContactsRequest {
        primary_id: a.id.clone(),
        secondary_id: b.id.clone(),
        ..Default::default()
    };
    s.api().merge_contacts(authed(req, &s.writer())).await.unwrap();
    let merged = history(&s, &a.id, "").await.unwrap();
    // The joined history ends in the merged values: the secondary's later email entry is
    // followed by a merge entry for the primary's; its phone, now the primary's, needs none.
    assert_eq!(
        merged[0],
        change("email", "a@example.com", Merge, &b.id, "user-1"),
        "{backend:?}: {merged:?}"
    );
    assert!(merged.contains(&change("phone", "+41 44 000 00 00", User, "user-1", "user-1")), "{backend:?}");
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
    // The merged-away contact's address finds the contact it went into.
    let by_old = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: String::new(), email: "B@example.com".into() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let old: serde_json::Value = serde_json::from_str(&by_old.parts[0].json).unwrap();
    assert_eq!(old["id"], a.id.as_str(), "{backend:?}");
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

fn note(contact: &str, body: &str) -> pb::CreateEngagementRequest {
    engagement(
        Some(pb::create_engagement_request::Contact::ContactId(contact.into())),
        pb::EngagementType::Note,
        body,
        None,
    )
}

fn engagement(
    contact: Option<pb::create_engagement_request::Contact>,
    t: pb::EngagementType,
    body: &str,
    details: Option<pb::engagement::Details>,
) -> pb::CreateEngagementRequest {
    pb::CreateEngagementRequest {
        contact,
        engagement: Some(pb::Engagement {
            r#type: t as i32,
            body: body.into(),
            details,
            ..Default::default()
        }),
        from_sales_extension: false,
        request_id: String::new(),
    }
}

fn by_email(email: &str) -> Option<pb::create_engagement_request::Contact> {
    Some(pb::create_engagement_request::Contact::Email(email.into()))
}

fn call(direction: pb::Direction, seconds: i64) -> Option<pb::engagement::Details> {
    Some(pb::engagement::Details::Call(pb::Call {
        direction: direction as i32,
        duration_seconds: seconds,
        outcome: pb::CallOutcome::Connected as i32,
    }))
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

async fn timeline(s: &Contacts, contact: &str, t: pb::EngagementType) -> Vec<pb::Engagement> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListEngagementsRequest {
            contact_id: contact.into(),
            r#type: t as i32,
            page_size: 2,
            page_token: token,
        };
        let r =
            s.api().list_engagements(authed(req, &s.token(ACCOUNT, &["read"]))).await.unwrap().into_inner();
        out.extend(r.engagements);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

/// A contact's history and timeline of values near their caps: a page ends at a few MiB
/// whatever its page size, so every page reaches a client with the default 4 MiB limit, and
/// the pages together hold every entry once, newest first.
async fn pages_of_large_history_and_timelines_fit_a_clients_message(backend: Backend) {
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    s.api()
        .create_property(authed(property("notes", pb::PropertyType::MultiLineText), &admin))
        .await
        .unwrap();
    let c = s.create("long@example.com", &[]).await.unwrap();
    let filler = "n".repeat(65_532);
    for i in 0..70 {
        let value = format!("{i:04}{filler}");
        s.api().update_contact(authed(update(&c.id, &[("notes", &value)], ""), &admin)).await.unwrap();
        s.api().create_engagement(authed(note(&c.id, &value), &admin)).await.unwrap();
    }

    let (mut changes, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let req = pb::ListPropertyHistoryRequest {
            contact_id: c.id.clone(),
            property: String::new(),
            page_size: 1_000,
            page_token: token,
        };
        let page = s.api().list_property_history(authed(req, &admin)).await.unwrap().into_inner();
        pages += 1;
        changes.extend(page.changes);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(pages >= 2, "{backend:?}: 4.6 MB of values is more than a page");
    let notes: Vec<String> =
        changes.iter().filter(|c| c.property == "notes").map(|c| c.value[..4].to_owned()).collect();
    let newest_first: Vec<String> = (0..70).rev().map(|i| format!("{i:04}")).collect();
    assert_eq!(notes, newest_first, "{backend:?}: every change once, newest first");
    assert_eq!(changes.len(), 71, "{backend:?}: and the email the contact was created with");

    let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let req = pb::ListEngagementsRequest {
            contact_id: c.id.clone(),
            r#type: 0,
            page_size: 1_000,
            page_token: token,
        };
        let page = s.api().list_engagements(authed(req, &admin)).await.unwrap().into_inner();
        pages += 1;
        ids.extend(page.engagements.into_iter().map(|e| e.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((count, ids.len()), (70, 70), "{backend:?}: every engagement once");
    assert!(pages >= 5, "{backend:?}: a MiB of bodies a page, {pages} pages");

    // 600 page views with URLs of 2,048 four-byte characters: 4.9 MB of URLs.
    let t0 = s.platform.clock.now().timestamp() - 86_400;
    let path = "\u{1F600}".repeat(2_048 - "https://example.com/".len());
    for call in 0..2 {
        let events = (0..300)
            .map(|i| {
                let n = call * 300 + i;
                let mut v =
                    view(&format!("u{n}"), pb::contact_event::Contact::ContactId(c.id.clone()), t0 + n, "");
                if let Some(pb::contact_event::Kind::PageView(p)) = &mut v.kind {
                    p.url = format!("https://example.com/{path}");
                }
                v
            })
            .collect();
        let r = record(&s, events).await;
        assert!(r.errors.is_empty(), "{backend:?}: {:?}", r.errors.first());
    }
    let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let req =
            pb::ListContactEventsRequest { contact_id: c.id.clone(), page_size: 1_000, page_token: token };
        let page = s.api().list_contact_events(authed(req, &admin)).await.unwrap().into_inner();
        pages += 1;
        ids.extend(page.events.into_iter().map(|e| e.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let newest_first: Vec<String> = (0..600).rev().map(|n| format!("u{n}")).collect();
    assert_eq!(ids, newest_first, "{backend:?}: every event once, newest first");
    assert!(pages >= 3, "{backend:?}: 2 MiB of URLs a page, {pages} pages");
}

async fn the_timeline_keeps_every_kind_of_engagement_and_the_last_activity(backend: Backend) {
    use pb::EngagementType as T;
    let s = start(backend).await;
    let c = s.create("grace@example.com", &[]).await.unwrap();
    assert_eq!(c.last_activity_at, None, "{backend:?}: no activity yet");
    let w = s.writer();
    let log = |req: pb::CreateEngagementRequest| {
        let api = s.api();
        let w = w.clone();
        async move { api.clone().create_engagement(authed(req, &w)).await.map(tonic::Response::into_inner) }
    };
    let id = || Some(pb::create_engagement_request::Contact::ContactId(c.id.clone()));

    let n = log(note(&c.id, "Asked for a demo")).await.unwrap();
    let noted = n.engagement.unwrap();
    assert!(!n.contact_created);
    assert_eq!(
        noted.occurred_at,
        Some(prost_types::Timestamp { seconds: s.platform.clock.now().timestamp(), nanos: 0 }),
        "{backend:?}: now when not given"
    );
    let mut req = engagement(id(), T::Call, "Walked through pricing", call(pb::Direction::Outbound, 600));
    req.engagement.as_mut().unwrap().occurred_at = Some(at(s.platform.clock.now().timestamp() + 3_600));
    let called = log(req).await.unwrap().engagement.unwrap();
    let start_time = s.platform.clock.now().timestamp() + 86_400;
    let meeting = Some(pb::engagement::Details::Meeting(pb::Meeting {
        start_time: Some(at(start_time)),
        end_time: Some(at(start_time + 1_800)),
        outcome: 0,
    }));
    let met = log(engagement(id(), T::Meeting, "", meeting)).await.unwrap().engagement.unwrap();
    assert_eq!(met.occurred_at, Some(at(start_time)), "{backend:?}: a meeting happens at its start");
    let task = Some(pb::engagement::Details::Task(pb::Task {
        subject: "Send the quote".into(),
        due_date: Some(contactier_proto::common::v1::Date { year: 2026, month: 5, day: 8 }),
        owner_id: "user-7".into(),
        status: 0,
    }));
    let tasked = log(engagement(id(), T::Task, "", task)).await.unwrap().engagement.unwrap();
    match tasked.details {
        Some(pb::engagement::Details::Task(t)) => assert_eq!(t.status, pb::TaskStatus::NotStarted as i32),
        other => panic!("{backend:?}: {other:?}"),
    }

    // Newest first by when it happened; by kind; the contact's last activity is the meeting.
    let all: Vec<String> = timeline(&s, &c.id, T::Unspecified).await.into_iter().map(|e| e.id).collect();
    assert_eq!(all, [met.id.clone(), called.id.clone(), tasked.id.clone(), noted.id.clone()], "{backend:?}");
    let calls = timeline(&s, &c.id, T::Call).await;
    assert_eq!(calls, std::slice::from_ref(&called), "{backend:?}");
    assert_eq!(s.by_email("grace@example.com").await.last_activity_at, Some(at(start_time)), "{backend:?}");

    // Moved earlier, the meeting is no longer the latest; deleted calls leave the note's time.
    let moved = pb::UpdateEngagementRequest {
        engagement: Some(pb::Engagement {
            id: met.id.clone(),
            details: Some(pb::engagement::Details::Meeting(pb::Meeting {
                start_time: Some(at(start_time - 172_800)),
                end_time: Some(at(start_time - 171_000)),
                outcome: pb::MeetingOutcome::Completed as i32,
            })),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["meeting.start_time".into(), "meeting.end_time".into(), "meeting.outcome".into()],
        }),
    };
    let m = s.api().update_engagement(authed(moved, &w)).await.unwrap().into_inner().engagement.unwrap();
    assert_eq!(m.occurred_at, Some(at(start_time - 172_800)), "{backend:?}");
    assert_eq!(s.by_email("grace@example.com").await.last_activity_at, called.occurred_at, "{backend:?}");
    let req = pb::DeleteEngagementRequest { id: called.id.clone() };
    s.api().delete_engagement(authed(req, &w)).await.unwrap();
    let last = s.by_email("grace@example.com").await.last_activity_at;
    assert_eq!(last, tasked.occurred_at, "{backend:?}: the latest left");

    // Bad asks name their field and change nothing.
    let bad = |mut req: pb::CreateEngagementRequest, field: &'static str| {
        let api = s.api();
        let w = w.clone();
        req.contact = req.contact.or_else(id);
        async move {
            let err = api.clone().create_engagement(authed(req, &w)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(err.message().contains(field), "{field}: {}", err.message());
        }
    };
    bad(engagement(None, T::Unspecified, "x", None), "engagement.type").await;
    bad(engagement(None, T::Call, "x", None), "engagement.call").await;
    bad(engagement(None, T::Note, " ", None), "engagement.body").await;
    bad(engagement(None, T::Note, "x", call(pb::Direction::Inbound, 1)), "engagement.details").await;
    bad(engagement(None, T::Call, "", call(pb::Direction::Unspecified, 1)), "engagement.call.direction")
        .await;
    bad(engagement(None, T::Call, "", call(pb::Direction::Inbound, 86_401)), "duration_seconds").await;
    let mut later_end = engagement(None, T::Meeting, "", None);
    later_end.engagement.as_mut().unwrap().details = Some(pb::engagement::Details::Meeting(pb::Meeting {
        start_time: Some(at(start_time)),
        end_time: Some(at(start_time - 1)),
        outcome: 0,
    }));
    bad(later_end, "engagement.meeting.end_time").await;
    for seconds in [-1, 253_402_300_800] {
        let mut odd = note(&c.id, "when?");
        odd.engagement.as_mut().unwrap().occurred_at = Some(at(seconds));
        bad(odd, "engagement.occurred_at").await;
    }
    let err =
        s.api().get_engagement(authed(pb::GetEngagementRequest { id: String::new() }, &w)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    let wrong_path = pb::UpdateEngagementRequest {
        engagement: Some(pb::Engagement { id: noted.id.clone(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["call.outcome".into()] }),
    };
    let err = s.api().update_engagement(authed(wrong_path, &w)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("update_mask"), "{}", err.message());
    assert_eq!(timeline(&s, &c.id, T::Unspecified).await.len(), 3, "{backend:?}: nothing added");

    // Another account's engagements are not there.
    let other = s.token("acct-b", &["read", "write"]);
    let err = s.api().get_engagement(authed(pb::GetEngagementRequest { id: noted.id.clone() }, &other)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "{backend:?}");
    let err =
        s.api().delete_engagement(authed(pb::DeleteEngagementRequest { id: noted.id.clone() }, &other)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "{backend:?}");

    // A retry under one request id logs once; the id reused for another engagement is refused.
    let mut again = note(&c.id, "Follow-up booked");
    again.request_id = "log-1".into();
    let first = log(again.clone()).await.unwrap();
    assert_eq!(log(again.clone()).await.unwrap(), first, "{backend:?}");
    again.engagement.as_mut().unwrap().body = "Something else".into();
    assert!(log(again).await.is_err(), "{backend:?}");
    assert_eq!(timeline(&s, &c.id, T::Note).await.len(), 2, "{backend:?}");
    // A retry storm: the same request at once, many times, logs once and answers alike.
    let mut storm = note(&c.id, "Called back");
    storm.request_id = "storm-1".into();
    let answers = futures::future::join_all((0..8).map(|_| log(storm.clone()))).await;
    let first = answers[0].clone().unwrap();
    assert!(answers.iter().all(|a| a.as_ref().ok() == Some(&first)), "{backend:?}: {answers:?}");
    assert_eq!(timeline(&s, &c.id, T::Note).await.len(), 3, "{backend:?}: one note for eight calls");

    // Erased, the contact's timeline goes with it, and its export held it before.
    let admin = s.token(ACCOUNT, &["admin"]);
    let export = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: c.id.clone(), email: String::new() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let own: serde_json::Value = serde_json::from_str(&export.parts[0].json).unwrap();
    assert_eq!(own["engagements"].as_array().unwrap().len(), 5, "{backend:?}: {own}");
    s.api()
        .erase_contact(authed(
            pb::EraseContactRequest { contact_id: c.id.clone(), email: String::new() },
            &admin,
        ))
        .await
        .unwrap();
    let err = s.api().get_engagement(authed(pb::GetEngagementRequest { id: noted.id.clone() }, &w)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "{backend:?}: erased with its contact");
    // Nor does a retry under an old request id answer what the erased contact was.
    let mut replayed = note(&c.id, "Follow-up booked");
    replayed.request_id = "log-1".into();
    assert_eq!(log(replayed).await.unwrap_err().code(), Code::NotFound, "{backend:?}");
}

async fn logging_an_email_or_meeting_for_a_new_address_creates_a_non_marketing_contact(backend: Backend) {
    use contactier_proto::common::v1::MarketingStatus;
    use pb::EngagementType as T;
    let s = start(backend).await;
    let w = s.writer();
    let email = Some(pb::engagement::Details::Email(pb::LoggedEmail {
        direction: pb::Direction::Inbound as i32,
        subject: "Question about invoices".into(),
    }));
    let r = s
        .api()
        .create_engagement(authed(engagement(by_email("New@Example.com"), T::Email, "Hi", email.clone()), &w))
        .await
        .unwrap()
        .into_inner();
    assert!(r.contact_created, "{backend:?}");
    let made = s.by_email("new@example.com").await;
    assert_eq!(r.engagement.unwrap().contact_id, made.id);
    assert_eq!(made.creation_source.as_ref().unwrap().r#type, SourceType::LoggedEmail as i32, "{backend:?}");
    // The same address again goes on the same contact.
    let r = s
        .api()
        .create_engagement(authed(engagement(by_email("new@example.com"), T::Email, "Again", email), &w))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.contact_created, "{backend:?}");
    assert_eq!(timeline(&s, &made.id, T::Email).await.len(), 2, "{backend:?}");

    let meeting = Some(pb::engagement::Details::Meeting(pb::Meeting {
        start_time: Some(at(1_780_000_000)),
        end_time: None,
        outcome: 0,
    }));
    s.api()
        .create_engagement(authed(engagement(by_email("booked@example.com"), T::Meeting, "", meeting), &w))
        .await
        .unwrap();
    let booked = s.by_email("booked@example.com").await;
    assert_eq!(
        booked.creation_source.as_ref().unwrap().r#type,
        SourceType::MeetingLink as i32,
        "{backend:?}"
    );

    let mut ext = engagement(by_email("caller@example.com"), T::Call, "", call(pb::Direction::Inbound, 60));
    ext.from_sales_extension = true;
    s.api().create_engagement(authed(ext, &w)).await.unwrap();
    let called = s.by_email("caller@example.com").await;
    assert_eq!(
        called.creation_source.as_ref().unwrap().r#type,
        SourceType::SalesExtension as i32,
        "{backend:?}"
    );

    // marketing-status hears of them and keeps them non-marketing, as their sources say.
    s.settle().await;
    for c in [&made, &booked, &called] {
        let status = s.status(&c.id).await.expect("marketing-status knows the contact");
        assert_eq!(status.status, MarketingStatus::NonMarketing as i32, "{backend:?}: {}", c.email);
    }

    // A note or a plain call needs a contact: nothing is created for them.
    for req in [
        engagement(by_email("nobody@example.com"), T::Note, "Who?", None),
        engagement(by_email("nobody@example.com"), T::Call, "", call(pb::Direction::Outbound, 5)),
    ] {
        let err = s.api().create_engagement(authed(req, &w)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    }
    let read = s.token(ACCOUNT, &["read"]);
    let missing =
        pb::GetContactRequest { key: Some(pb::get_contact_request::Key::Email("nobody@example.com".into())) };
    assert_eq!(
        s.api().get_contact(authed(missing, &read)).await.unwrap_err().code(),
        Code::NotFound,
        "{backend:?}"
    );
    let err = s
        .api()
        .create_engagement(authed(engagement(by_email("not an address"), T::Email, "", None), &w))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
}

fn view(id: &str, contact: pb::contact_event::Contact, seconds: i64, source: &str) -> pb::ContactEvent {
    pb::ContactEvent {
        id: id.into(),
        contact: Some(contact),
        occurred_at: Some(at(seconds)),
        kind: Some(pb::contact_event::Kind::PageView(pb::PageView {
            url: format!("https://example.com/{id}"),
            traffic_source: source.into(),
        })),
    }
}

async fn record(s: &Contacts, events: Vec<pb::ContactEvent>) -> pb::RecordContactEventsResponse {
    record_as(s, &s.writer(), events).await
}

async fn record_as(
    s: &Contacts,
    token: &str,
    events: Vec<pb::ContactEvent>,
) -> pb::RecordContactEventsResponse {
    let req = pb::RecordContactEventsRequest { events };
    s.api().record_contact_events(authed(req, token)).await.unwrap().into_inner()
}

async fn behaviour_makes_visits_once_per_event_whatever_the_order(backend: Backend) {
    use pb::contact_event::Contact as C;
    let s = start(backend).await;
    let c = s.create("ada@example.com", &[]).await.unwrap();
    let id = || C::ContactId(c.id.clone());
    let t0 = s.platform.clock.now().timestamp() - 10 * 86_400;
    // Out of order in the batch: three views of one visit, and one more than 30 minutes later.
    let batch = vec![
        view("v4", id(), t0 + 60 * 60, "EMAIL"),
        view("v2", id(), t0 + 10 * 60, "DIRECT"),
        view("v1", id(), t0, "ORGANIC_SEARCH"),
        view("v3", id(), t0 + 25 * 60, "DIRECT"),
    ];
    let r = record(&s, batch.clone()).await;
    assert!(r.errors.is_empty(), "{backend:?}: {:?}", r.errors);
    assert_eq!(r.results.iter().map(|x| x.index).collect::<Vec<_>>(), [0, 1, 2, 3], "{backend:?}");
    assert!(r.results.iter().all(|x| !x.replayed && x.contact_id == c.id), "{backend:?}");
    let visits = s.by_email("ada@example.com").await.visits.expect("visits");
    let expected = pb::WebVisits {
        count: 2,
        first_visit_at: Some(at(t0)),
        last_visit_at: Some(at(t0 + 3_600)),
        original_source: "ORGANIC_SEARCH".into(),
        latest_source: "EMAIL".into(),
    };
    assert_eq!(visits, expected, "{backend:?}");
    // A visit is not an edit: the version people pass back to update the contact still holds.
    let after = s.by_email("ada@example.com").await;
    assert_eq!((after.version, after.updated_at), (c.version, c.updated_at), "{backend:?}");
    // The same batch again: every event a replay, nothing counted twice.
    let again = record(&s, batch).await;
    assert!(again.results.iter().all(|x| x.replayed), "{backend:?}");
    assert_eq!(s.by_email("ada@example.com").await.visits.unwrap(), expected, "{backend:?}");

    // Views that come late, in later calls, count as if they had come in order.
    let d = s.create("dora@example.com", &[]).await.unwrap();
    let did = || C::ContactId(d.id.clone());
    record(&s, vec![view("d1", did(), t0, "DIRECT"), view("d3", did(), t0 + 4 * 3_600, "EMAIL")]).await;
    record(&s, vec![view("d2", did(), t0 + 2 * 3_600, "SOCIAL")]).await;
    record(&s, vec![view("d0", did(), t0 - 3_600, "PAID_SEARCH")]).await;
    let dv = s.by_email("dora@example.com").await.visits.unwrap();
    assert_eq!(
        (dv.count, dv.first_visit_at, dv.original_source.as_str(), dv.latest_source.as_str()),
        (4, Some(at(t0 - 3_600)), "PAID_SEARCH", "EMAIL"),
        "{backend:?}"
    );
    // An id recorded for one event is no replay for another; an event far ahead is refused.
    let r = record(&s, vec![view("d1", did(), t0 + 60, "DIRECT")]).await;
    let e = &r.errors[0];
    assert_eq!(
        (e.code.as_str(), e.index, e.field.as_str()),
        ("ALREADY_EXISTS", 0, "events[0].id"),
        "{backend:?}"
    );
    let r = record(&s, vec![view("d9", C::ContactId("no-such-contact".into()), t0, "DIRECT")]).await;
    let e = &r.errors[0];
    assert_eq!((e.code.as_str(), e.field.as_str()), ("NOT_FOUND", "events[0].contact_id"), "{backend:?}");
    let ahead = s.platform.clock.now().timestamp() + 3 * 86_400;
    let r = record(&s, vec![view("far", did(), ahead, "DIRECT")]).await;
    assert_eq!(r.errors[0].field, "events[0].occurred_at", "{backend:?}");
    // So is one from before the web had such tracking: a clock at zero, not a visit in 1970.
    let r = record(&s, vec![view("epoch", did(), 86_400, "DIRECT")]).await;
    let e = &r.errors[0];
    assert_eq!(
        (e.code.as_str(), e.field.as_str()),
        ("INVALID_ARGUMENT", "events[0].occurred_at"),
        "{backend:?}"
    );
    assert_eq!(s.by_email("dora@example.com").await.visits.unwrap(), dv, "{backend:?}: nothing changed");

    // Opens, clicks and forms are kept too, newest first.
    let other = vec![
        pb::ContactEvent {
            id: "o1".into(),
            contact: Some(id()),
            occurred_at: Some(at(t0 + 7_200)),
            kind: Some(pb::contact_event::Kind::EmailOpen(pb::EmailOpen { email_id: "news-7".into() })),
        },
        pb::ContactEvent {
            id: "k1".into(),
            contact: Some(id()),
            occurred_at: Some(at(t0 + 7_260)),
            kind: Some(pb::contact_event::Kind::EmailClick(pb::EmailClick {
                email_id: "news-7".into(),
                url: "https://example.com/pricing".into(),
            })),
        },
    ];
    assert!(record(&s, other).await.errors.is_empty(), "{backend:?}");
    let req =
        pb::ListContactEventsRequest { contact_id: c.id.clone(), page_size: 4, page_token: String::new() };
    let page =
        s.api().list_contact_events(authed(req, &s.token(ACCOUNT, &["read"]))).await.unwrap().into_inner();
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["k1", "o1", "v4", "v3"], "{backend:?}");
    assert!(!page.next_page_token.is_empty(), "{backend:?}");

    // A merge keeps both contacts' behaviour and counts the visits of all of it.
    let b = s.create("ada.l@example.com", &[]).await.unwrap();
    let r = record(&s, vec![view("w1", C::ContactId(b.id.clone()), t0 + 86_400, "SOCIAL")]).await;
    assert!(r.errors.is_empty());
    let req = pb::MergeContactsRequest {
        primary_id: c.id.clone(),
        secondary_id: b.id.clone(),
        ..Default::default()
    };
    let merged =
        s.api().merge_contacts(authed(req, &s.writer())).await.unwrap().into_inner().contact.unwrap();
    let v = merged.visits.expect("visits");
    assert_eq!((v.count, v.latest_source.as_str()), (3, "SOCIAL"), "{backend:?}");
    assert_eq!(s.by_email("ada@example.com").await.visits.unwrap(), v, "{backend:?}");

    // Erased, the behaviour goes with the contact; the export held it before.
    let admin = s.token(ACCOUNT, &["admin"]);
    let export = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: c.id.clone(), email: String::new() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let own: serde_json::Value = serde_json::from_str(&export.parts[0].json).unwrap();
    assert_eq!(own["events"].as_array().unwrap().len(), 7, "{backend:?}: {own}");
    let req = pb::EraseContactRequest { contact_id: c.id.clone(), email: String::new() };
    s.api().erase_contact(authed(req, &admin)).await.unwrap();
    let recreated = s.create("ada@example.com", &[]).await.unwrap();
    assert_eq!(recreated.visits, None, "{backend:?}: nothing of the erased contact comes back");
    // An id recorded for the erased contact is no replay for anyone else: it is gone with it.
    let r = record(&s, vec![view("v1", C::ContactId(recreated.id.clone()), t0, "DIRECT")]).await;
    assert!(!r.results[0].replayed, "{backend:?}");

    // Two views at one instant give the same sources whichever comes first, in one call or two.
    let source = |x: &str| if x == "a" { "DIRECT" } else { "EMAIL" };
    let mut seen = Vec::new();
    for (n, calls) in
        [vec![vec!["a", "b"]], vec![vec!["b", "a"]], vec![vec!["a"], vec!["b"]], vec![vec!["b"], vec!["a"]]]
            .into_iter()
            .enumerate()
    {
        let email = format!("tie{n}@example.com");
        let t = s.create(&email, &[]).await.unwrap();
        for call in calls {
            let batch = call
                .iter()
                .map(|&x| view(&format!("tie{n}-{x}"), C::ContactId(t.id.clone()), t0, source(x)))
                .collect();
            assert!(record(&s, batch).await.errors.is_empty(), "{backend:?}");
        }
        let v = s.by_email(email).await.visits.expect("visits");
        seen.push((v.count, v.original_source, v.latest_source));
    }
    assert!(
        seen.iter().all(|v| *v == (1, "DIRECT".to_owned(), "DIRECT".to_owned())),
        "{backend:?}: {seen:?}"
    );
}

async fn a_form_makes_its_contact_and_bad_events_are_refused_one_by_one(backend: Backend) {
    use pb::contact_event::Contact as C;
    let s = start(backend).await;
    let form = |id: &str, email: &str| pb::ContactEvent {
        id: id.into(),
        contact: Some(C::Email(email.into())),
        occurred_at: None,
        kind: Some(pb::contact_event::Kind::FormSubmission(pb::FormSubmission {
            form_id: "demo-request".into(),
            page_url: "https://example.com/demo".into(),
        })),
    };
    let batch = vec![
        form("f1", "Lead@Example.com"),
        // The same address again in the batch: the contact the first made.
        form("f2", "lead@example.com"),
        view(
            "v1",
            C::Email("stranger@example.com".into()),
            s.platform.clock.now().timestamp() - 3_600,
            "DIRECT",
        ),
        pb::ContactEvent { id: String::new(), ..form("", "x@example.com") },
        pb::ContactEvent { kind: None, ..form("f3", "x@example.com") },
        pb::ContactEvent {
            kind: Some(pb::contact_event::Kind::PageView(pb::PageView {
                url: String::new(),
                traffic_source: String::new(),
            })),
            ..form("f4", "x@example.com")
        },
    ];
    // The forms' system calls with a service token (or a person with the admin scope).
    let forms = s.platform.authenticator.service_token("forms", chrono::Duration::hours(1));
    let mut forms_req = authed(pb::RecordContactEventsRequest { events: batch }, &forms);
    forms_req.metadata_mut().insert(contactier_runtime::auth::ACCOUNT_HEADER, ACCOUNT.parse().unwrap());
    let r = s.api().record_contact_events(forms_req).await.unwrap().into_inner();
    let lead = s.by_email("lead@example.com").await;
    assert_eq!(lead.creation_source.as_ref().unwrap().r#type, SourceType::Form as i32, "{backend:?}");
    assert_eq!(lead.creation_source.as_ref().unwrap().id, "demo-request", "{backend:?}");
    let results: Vec<(i32, bool, &str)> =
        r.results.iter().map(|x| (x.index, x.contact_created, x.contact_id.as_str())).collect();
    assert_eq!(results, [(0, true, lead.id.as_str()), (1, false, lead.id.as_str())], "{backend:?}");
    let errors: Vec<(i32, &str, &str)> =
        r.errors.iter().map(|e| (e.index, e.code.as_str(), e.field.as_str())).collect();
    assert_eq!(
        errors,
        [
            (2, "NOT_FOUND", "events[2].email"),
            (3, "INVALID_ARGUMENT", "events[3].id"),
            (4, "INVALID_ARGUMENT", "events[4].kind"),
            (5, "INVALID_ARGUMENT", "events[5].page_view.url"),
        ],
        "{backend:?}"
    );
    // A person without the admin scope cannot make a form's contact, as at creation (a form's
    // default may be marketing, which that person may not be allowed to set).
    let by_user = record(&s, vec![form("f9", "someone.new@example.com")]).await;
    let refused: Vec<(&str, &str)> =
        by_user.errors.iter().map(|e| (e.code.as_str(), e.field.as_str())).collect();
    assert_eq!(refused, [("PERMISSION_DENIED", "events[0].email")], "{backend:?}");
    let by_admin =
        record_as(&s, &s.token(ACCOUNT, &["write", "admin"]), vec![form("f9", "someone.new@example.com")])
            .await;
    assert!(by_admin.results[0].contact_created, "{backend:?}");

    // Nothing was made for the refused ones.
    let read = s.token(ACCOUNT, &["read"]);
    for email in ["stranger@example.com", "x@example.com"] {
        let req = pb::GetContactRequest { key: Some(pb::get_contact_request::Key::Email(email.into())) };
        assert_eq!(
            s.api().get_contact(authed(req, &read)).await.unwrap_err().code(),
            Code::NotFound,
            "{email}"
        );
    }
    // A call with no events, or more than a thousand, is refused as a whole.
    let err = s
        .api()
        .record_contact_events(authed(pb::RecordContactEventsRequest { events: vec![] }, &s.writer()))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument, "{backend:?}");
    let many = (0..1_001).map(|i| form(&format!("m{i}"), "lead@example.com")).collect();
    let err = s
        .api()
        .record_contact_events(authed(pb::RecordContactEventsRequest { events: many }, &s.writer()))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument, "{backend:?}");
}

async fn candidates(s: &Contacts, min_score: i32) -> Vec<(String, String, Vec<i32>, i32)> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListDuplicateCandidatesRequest { min_score, page_size: 1, page_token: token };
        let r = s
            .api()
            .list_duplicate_candidates(authed(req, &s.token(ACCOUNT, &["read"])))
            .await
            .unwrap()
            .into_inner();
        out.extend(r.candidates.into_iter().map(|c| (c.contact_id_a, c.contact_id_b, c.reasons, c.score)));
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

fn pair(x: &pb::Contact, y: &pb::Contact) -> (String, String) {
    if x.id < y.id { (x.id.clone(), y.id.clone()) } else { (y.id.clone(), x.id.clone()) }
}

async fn duplicates_are_found_by_mailbox_phone_and_name_then_dismissed_or_merged(backend: Backend) {
    use pb::DuplicateReason as R;
    let s = start(backend).await;
    let gmail_a = s.create("ada.lovelace@gmail.com", &[]).await.unwrap();
    let gmail_b = s.create("AdaLovelace+crm@googlemail.com", &[]).await.unwrap();
    let phone_a = s.create("grace@navy.example", &[("phone", "+1 (555) 010-2030")]).await.unwrap();
    let phone_b = s
        .create(
            "g.hopper@example.com",
            &[
                ("phone", "001 555 010 2030"),
                ("first_name", "Grace"),
                ("last_name", "Hopper"),
                ("company", "Navy"),
            ],
        )
        .await
        .unwrap();
    let named = s
        .create(
            "hopper@example.org",
            &[("first_name", " grace "), ("last_name", "HOPPER"), ("company", "navy")],
        )
        .await
        .unwrap();
    let _alone =
        s.create("someone@example.com", &[("first_name", "Some"), ("last_name", "One")]).await.unwrap();
    let _own_domain = s.create("ada.lovelace+x@example.com", &[]).await.unwrap();

    let found = candidates(&s, 0).await;
    let by_pair: std::collections::HashMap<(String, String), (Vec<i32>, i32)> =
        found.iter().map(|(a, b, r, sc)| ((a.clone(), b.clone()), (r.clone(), *sc))).collect();
    assert_eq!(found.len(), 3, "{backend:?}: {found:?}");
    assert_eq!(by_pair[&pair(&gmail_a, &gmail_b)], (vec![R::Email as i32], 95), "{backend:?}");
    assert_eq!(by_pair[&pair(&phone_a, &phone_b)], (vec![R::Phone as i32], 80), "{backend:?}");
    assert_eq!(by_pair[&pair(&phone_b, &named)], (vec![R::NameAndCompany as i32], 70), "{backend:?}");
    assert!(
        found.windows(2).all(|w| (&w[0].0, &w[0].1) < (&w[1].0, &w[1].1)),
        "{backend:?}: by pair, once each"
    );
    assert_eq!(candidates(&s, 80).await.len(), 2, "{backend:?}: a floor on the score");

    // A phone given to the named contact adds a reason to its pair, and a pair with the first.
    let req = pb::UpdateContactRequest {
        id: named.id.clone(),
        properties: [("phone".to_owned(), "+15550102030".to_owned())].into(),
        expected_version: 0,
        email: String::new(),
        update_mask: None,
    };
    s.api().update_contact(authed(req, &s.writer())).await.unwrap();
    let found = candidates(&s, 0).await;
    let score = |x: &pb::Contact, y: &pb::Contact| {
        found.iter().find(|c| (c.0.clone(), c.1.clone()) == pair(x, y)).map(|c| c.3)
    };
    assert_eq!(score(&phone_b, &named), Some(85), "{backend:?}: phone and name: {found:?}");
    assert_eq!(score(&phone_a, &named), Some(80), "{backend:?}");

    // Dismissed, a pair is not listed again; bad dismissals say why.
    let dismiss =
        |a: &str, b: &str| pb::DismissDuplicateRequest { contact_id_a: a.into(), contact_id_b: b.into() };
    s.api().dismiss_duplicate(authed(dismiss(&phone_a.id, &named.id), &s.writer())).await.unwrap();
    assert_eq!(score(&phone_a, &named), Some(80));
    assert_eq!(
        candidates(&s, 0)
            .await
            .iter()
            .filter(|c| (c.0.clone(), c.1.clone()) == pair(&phone_a, &named))
            .count(),
        0,
        "{backend:?}"
    );
    let err = s.api().dismiss_duplicate(authed(dismiss(&phone_a.id, "nope"), &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    let err =
        s.api().dismiss_duplicate(authed(dismiss(&phone_a.id, &phone_a.id), &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    let other = s.token("acct-b", &["write"]);
    let err = s.api().dismiss_duplicate(authed(dismiss(&gmail_a.id, &gmail_b.id), &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}: another account's contacts");

    // Merged with a choice per property: the secondary's name wins where chosen.
    let mut req = pb::MergeContactsRequest {
        primary_id: named.id.clone(),
        secondary_id: phone_b.id.clone(),
        ..Default::default()
    };
    req.property_choices.insert("nope".into(), pb::MergeSide::Secondary as i32);
    let err = s.api().merge_contacts(authed(req.clone(), &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("property_choices.nope"), "{}", err.message());
    req.property_choices = [
        ("first_name".to_owned(), pb::MergeSide::Secondary as i32),
        ("company".to_owned(), pb::MergeSide::Primary as i32),
    ]
    .into();
    let merged =
        s.api().merge_contacts(authed(req, &s.writer())).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(merged.properties["first_name"], "Grace", "{backend:?}: the secondary's, as chosen");
    assert_eq!(merged.properties["company"], "navy", "{backend:?}");
    let left = candidates(&s, 0).await;
    assert!(
        left.iter().all(|c| c.0 != phone_b.id && c.1 != phone_b.id),
        "{backend:?}: the merged-away contact is gone: {left:?}"
    );
}

async fn advance_to(s: &Contacts, day: u32, hour: u32) {
    use chrono::TimeZone;
    let at = chrono::Utc.with_ymd_and_hms(2026, 5, day, hour, 0, 0).unwrap();
    s.platform.clock.advance_to(at).await.unwrap();
}

async fn set_stage(s: &Contacts, id: &str, stage: &str) {
    let req = update(id, &[("lifecycle_stage", stage)], "");
    s.api().update_contact(authed(req, &s.writer())).await.unwrap();
}

async fn lifecycle_reports_follow_the_stage_history_day_by_day(backend: Backend) {
    let s = start(backend).await;
    advance_to(&s, 1, 9).await;
    let a = s.create("a@example.com", &[("lifecycle_stage", "lead")]).await.unwrap();
    let b = s.create("b@example.com", &[("lifecycle_stage", "lead")]).await.unwrap();
    let _c = s.create("c@example.com", &[]).await.unwrap();
    advance_to(&s, 2, 10).await;
    set_stage(&s, &a.id, "marketing_qualified_lead").await;
    advance_to(&s, 3, 23).await;
    // Late on the 3rd in UTC: already the 4th in Zurich.
    set_stage(&s, &b.id, "customer").await;
    advance_to(&s, 4, 12).await;
    // An import (a source of its own) on the 4th.
    let h = pb::ImportHeader {
        name: "list".into(),
        mode: pb::ImportMode::Create as i32,
        column_mapping: [("Email".to_owned(), "email".to_owned())].into(),
        ..Default::default()
    };
    let parts = vec![
        pb::ImportContactsRequest { part: Some(Part::Header(h)) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(b"Email\nd@example.com\n".to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) },
    ];
    let mut progress = s
        .api()
        .import_contacts(authed(futures::stream::iter(parts), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    while progress.message().await.unwrap().is_some() {}

    let report = |tz: &str| {
        let req = pb::GetLifecycleReportRequest {
            start_date: Some(contactier_proto::common::v1::Date { year: 2026, month: 5, day: 1 }),
            end_date: Some(contactier_proto::common::v1::Date { year: 2026, month: 5, day: 4 }),
            time_zone: tz.into(),
        };
        let api = s.api();
        let read = s.token(ACCOUNT, &["read"]);
        async move { api.clone().get_lifecycle_report(authed(req, &read)).await.map(tonic::Response::into_inner) }
    };
    let r = report("").await.unwrap();
    let stages =
        |d: &pb::DayStages| d.stages.iter().map(|c| (c.stage.clone(), c.contacts)).collect::<Vec<_>>();
    let day = |n: usize| stages(&r.daily[n]);
    let st = |v: &[(&str, i64)]| v.iter().map(|(s, n)| (s.to_string(), *n)).collect::<Vec<_>>();
    assert_eq!(r.daily.len(), 4, "{backend:?}");
    assert_eq!(day(0), st(&[("lead", 2)]), "{backend:?}");
    assert_eq!(day(1), st(&[("lead", 1), ("marketing_qualified_lead", 1)]), "{backend:?}");
    assert_eq!(day(2), st(&[("customer", 1), ("marketing_qualified_lead", 1)]), "{backend:?}");
    assert_eq!(day(3), day(2), "{backend:?}");
    let now: Vec<(String, i64)> = r.current.iter().map(|c| (c.stage.clone(), c.contacts)).collect();
    assert_eq!(now, st(&[("", 2), ("customer", 1), ("marketing_qualified_lead", 1)]), "{backend:?}");
    let conv: Vec<(&str, &str, i64, i64, i64)> = r
        .conversions
        .iter()
        .map(|c| (c.from_stage.as_str(), c.to_stage.as_str(), c.entered, c.converted, c.rate_basis_points))
        .collect();
    assert_eq!(
        conv[0],
        ("lead", "marketing_qualified_lead", 2, 2, 10_000),
        "{backend:?}: b skipped on to customer"
    );
    assert_eq!(conv[1], ("marketing_qualified_lead", "sales_qualified_lead", 1, 0, 0), "{backend:?}");
    assert_eq!(conv.len(), 4);
    let new: Vec<Vec<(String, i64)>> = r
        .new_contacts
        .iter()
        .map(|d| d.sources.iter().map(|c| (c.source.clone(), c.contacts)).collect())
        .collect();
    assert_eq!(new, [st(&[("USER", 3)]), vec![], vec![], st(&[("IMPORT", 1)])], "{backend:?}");

    // In Zurich, b became a customer on the 4th.
    let z = report("Europe/Zurich").await.unwrap();
    assert_eq!(stages(&z.daily[2]), st(&[("lead", 1), ("marketing_qualified_lead", 1)]), "{backend:?}");
    assert_eq!(stages(&z.daily[3]), st(&[("customer", 1), ("marketing_qualified_lead", 1)]), "{backend:?}");

    // Bad ranges and zones are refused by field.
    let err = report("Mars/Olympus").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("time_zone"), "{}", err.message());
    let long = pb::GetLifecycleReportRequest {
        start_date: Some(contactier_proto::common::v1::Date { year: 2025, month: 1, day: 1 }),
        end_date: Some(contactier_proto::common::v1::Date { year: 2026, month: 5, day: 4 }),
        time_zone: String::new(),
    };
    let err = s.api().get_lifecycle_report(authed(long, &s.token(ACCOUNT, &["read"]))).await.unwrap_err();
    assert!(err.message().contains("end_date"), "{}", err.message());
}

fn rule(name: &str, points: i64, criterion: pb::scoring_rule::Criterion) -> pb::CreateScoringRuleRequest {
    pb::CreateScoringRuleRequest {
        rule: Some(pb::ScoringRule {
            name: name.into(),
            points,
            criterion: Some(criterion),
            ..Default::default()
        }),
    }
}

async fn lead_scores_follow_rules_behaviour_windows_and_promote_to_mql(backend: Backend) {
    use pb::scoring_rule::Criterion as C;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    let cto =
        s.create("cto@example.com", &[("job_title", "CTO"), ("lifecycle_stage", "lead")]).await.unwrap();
    let lead = s.create("lead@example.com", &[("lifecycle_stage", "lead")]).await.unwrap();
    let score = |email: &'static str| {
        let s = &s;
        async move { s.by_email(email).await.properties.get("lead_score").cloned() }
    };
    assert_eq!(score("cto@example.com").await, None, "{backend:?}: no rules, no score");

    // Bad rules are refused by field and change nothing.
    let demo = C::Behaviour(pb::BehaviourCriterion {
        kind: pb::BehaviourKind::FormSubmission as i32,
        matches: "demo".into(),
        window_days: 2,
    });
    let title = C::Property(pb::PropertyCriterion {
        property: "job_title".into(),
        operator: pb::ScoringOperator::Eq as i32,
        value: "cto".into(),
    });
    for (bad, field) in [
        (rule("zero", 0, demo.clone()), "rule.points"),
        (rule("", 5, demo.clone()), "rule.name"),
        (
            rule("w", 5, C::Behaviour(pb::BehaviourCriterion { window_days: 1, ..Default::default() })),
            "rule.behaviour.kind",
        ),
        (
            rule(
                "self",
                5,
                C::Property(pb::PropertyCriterion {
                    property: "lead_score".into(),
                    operator: 1,
                    value: "1".into(),
                }),
            ),
            "rule.property.property",
        ),
        (
            rule(
                "nope",
                5,
                C::Property(pb::PropertyCriterion {
                    property: "nope".into(),
                    operator: 1,
                    value: "1".into(),
                }),
            ),
            "rule.property.property",
        ),
        (
            rule(
                "op",
                5,
                C::Property(pb::PropertyCriterion {
                    property: "job_title".into(),
                    operator: 0,
                    value: "x".into(),
                }),
            ),
            "rule.property.operator",
        ),
        (pb::CreateScoringRuleRequest { rule: None }, "rule"),
    ] {
        let err = s.api().create_scoring_rule(authed(bad, &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let w = pb::BehaviourCriterion {
        kind: pb::BehaviourKind::PageView as i32,
        matches: String::new(),
        window_days: 0,
    };
    let err = s.api().create_scoring_rule(authed(rule("w", 5, C::Behaviour(w)), &admin)).await.unwrap_err();
    assert!(err.message().contains("rule.behaviour.window_days"), "{}", err.message());

    // Rules for the account: every contact is worked out again in the background.
    for r in [
        rule("Demo request", 10, demo),
        rule("CTO", 5, title),
        rule("Unsubscribed", -3, C::Unsubscribed(pb::UnsubscribedCriterion {})),
    ] {
        s.api().create_scoring_rule(authed(r, &admin)).await.unwrap();
    }
    let set = pb::SetScoringSettingsRequest { settings: Some(pb::ScoringSettings { mql_threshold: 10 }) };
    s.api().set_scoring_settings(authed(set, &admin)).await.unwrap();
    s.settle().await;
    assert_eq!(score("cto@example.com").await.as_deref(), Some("5"), "{backend:?}");
    assert_eq!(score("lead@example.com").await.as_deref(), Some("0"), "{backend:?}");
    let other = s.token("acct-b", &["read"]);
    let listed =
        s.api().list_scoring_rules(authed(pb::ListScoringRulesRequest::default(), &other)).await.unwrap();
    assert!(listed.into_inner().rules.is_empty(), "{backend:?}: another account's rules are not there");

    // A demo form: the score rises at once, and reaching the threshold makes an MQL.
    let form = pb::ContactEvent {
        id: "demo-1".into(),
        contact: Some(pb::contact_event::Contact::ContactId(lead.id.clone())),
        occurred_at: None,
        kind: Some(pb::contact_event::Kind::FormSubmission(pb::FormSubmission {
            form_id: "demo".into(),
            page_url: String::new(),
        })),
    };
    assert!(record(&s, vec![form]).await.errors.is_empty());
    let now = s.by_email("lead@example.com").await;
    assert_eq!(
        (now.properties["lead_score"].as_str(), now.properties["lifecycle_stage"].as_str()),
        ("10", "marketing_qualified_lead"),
        "{backend:?}"
    );
    let changes = history(&s, &lead.id, "lifecycle_stage").await.unwrap();
    assert_eq!(
        changes[0],
        change("lifecycle_stage", "marketing_qualified_lead", SourceType::System, "lead-scoring", ""),
        "{backend:?}"
    );

    // Nobody sets a score by hand.
    let err = s
        .api()
        .update_contact(authed(update(&cto.id, &[("lead_score", "99")], ""), &s.writer()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("lead_score"), "{}", err.message());

    // An unsubscribe takes points off at once.
    let consent = pb::SetConsentRequest {
        contact_id: cto.id.clone(),
        consent: Some(pb::Consent { unsubscribed_from_all: true, ..Default::default() }),
    };
    s.api().set_consent(authed(consent, &s.writer())).await.unwrap();
    assert_eq!(score("cto@example.com").await.as_deref(), Some("2"), "{backend:?}");

    // Three days on, the form has left its two-day window: the score falls, the stage stays.
    let now = s.platform.clock.now();
    s.platform.clock.advance_to(now + chrono::Duration::days(3)).await.unwrap();
    let later_lead = s.by_email("lead@example.com").await;
    assert_eq!(
        (later_lead.properties["lead_score"].as_str(), later_lead.properties["lifecycle_stage"].as_str()),
        ("0", "marketing_qualified_lead"),
        "{backend:?}: never backwards"
    );

    // Without rules no contact has a score.
    let rules = s
        .api()
        .list_scoring_rules(authed(pb::ListScoringRulesRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 3, "{backend:?}");
    for r in rules {
        s.api().delete_scoring_rule(authed(pb::DeleteScoringRuleRequest { id: r.id }, &admin)).await.unwrap();
    }
    let err = s
        .api()
        .delete_scoring_rule(authed(pb::DeleteScoringRuleRequest { id: "gone".into() }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{backend:?}");
    s.settle().await;
    assert_eq!(score("cto@example.com").await, None, "{backend:?}");
    assert_eq!(score("lead@example.com").await, None, "{backend:?}");
}

// ---- what an outside attack on the record found ----

fn property_rule(property: &str, op: pb::ScoringOperator, value: &str) -> pb::scoring_rule::Criterion {
    pb::scoring_rule::Criterion::Property(pb::PropertyCriterion {
        property: property.into(),
        operator: op as i32,
        value: value.into(),
    })
}

/// The newest change of a contact's property, with its time.
async fn last_change(s: &Contacts, contact: &str, property: &str) -> (String, chrono::DateTime<chrono::Utc>) {
    let req = pb::ListPropertyHistoryRequest {
        contact_id: contact.into(),
        property: property.into(),
        page_size: 1,
        page_token: String::new(),
    };
    let r = s.api().list_property_history(authed(req, &s.token(ACCOUNT, &["read"]))).await.unwrap();
    let c = r.into_inner().changes.remove(0);
    let at = c.changed_at.unwrap();
    (c.value, chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap())
}

async fn a_merge_keeps_either_contacts_unsubscribe_and_scores_the_merged_contact(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    let p = s.create("p@example.com", &[("job_title", "CTO")]).await.unwrap();
    let q = s.create("q@example.com", &[]).await.unwrap();
    for r in [
        rule("CTO", 10, property_rule("job_title", Op::Eq, "cto")),
        rule("Out", -3, pb::scoring_rule::Criterion::Unsubscribed(pb::UnsubscribedCriterion {})),
    ] {
        s.api().create_scoring_rule(authed(r, &admin)).await.unwrap();
    }
    let consent = |id: &str, out: bool, types: &[&str]| pb::SetConsentRequest {
        contact_id: id.into(),
        consent: Some(pb::Consent {
            legal_basis: "consent".into(),
            subscription_types: types.iter().map(std::string::ToString::to_string).collect(),
            unsubscribed_from_all: out,
            ..Default::default()
        }),
    };
    s.api().set_consent(authed(consent(&p.id, false, &["news"]), &s.writer())).await.unwrap();
    s.api().set_consent(authed(consent(&q.id, true, &["offers"]), &s.writer())).await.unwrap();
    s.settle().await;

    // The score is worked out, never chosen.
    let mut merge = pb::MergeContactsRequest {
        primary_id: p.id.clone(),
        secondary_id: q.id.clone(),
        property_choices: [("lead_score".to_owned(), pb::MergeSide::Secondary as i32)].into(),
    };
    let err = s.api().merge_contacts(authed(merge.clone(), &s.writer())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("property_choices.lead_score"), "{}", err.message());

    merge.property_choices.clear();
    let merged =
        s.api().merge_contacts(authed(merge, &s.writer())).await.unwrap().into_inner().contact.unwrap();
    let got = s
        .api()
        .get_consent(authed(pb::GetConsentRequest { contact_id: p.id.clone() }, &s.writer()))
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert!(got.unsubscribed_from_all, "{backend:?}: the secondary's unsubscribe holds for the person");
    assert!(got.subscription_types.is_empty(), "{backend:?}: unsubscribed from all, as when set so");
    assert_eq!(merged.properties["lead_score"], "7", "{backend:?}: scored from the joined consent");
    let scores = history(&s, &p.id, "lead_score").await.unwrap();
    assert!(
        scores.iter().all(|c| c.2 == SourceType::System as i32),
        "{backend:?}: the score's history is the scoring's own: {scores:?}"
    );
}

async fn a_property_a_rule_counts_stays_and_a_deleted_propertys_values_go(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    s.api().create_property(authed(property("employees", pb::PropertyType::Number), &admin)).await.unwrap();
    let c = s.create("big@example.com", &[("employees", "150")]).await.unwrap();
    let big = rule("Big", 40, property_rule("employees", Op::Gt, "100"));
    let big = s.api().create_scoring_rule(authed(big, &admin)).await.unwrap().into_inner().rule.unwrap();
    s.settle().await;
    assert_eq!(s.by_email("big@example.com").await.properties["lead_score"], "40", "{backend:?}");

    let delete = || pb::DeletePropertyRequest { name: "employees".into() };
    let err = s.api().delete_property(authed(delete(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
    assert!(err.message().contains(&big.id), "{backend:?}: names the rule: {}", err.message());
    assert_eq!(s.by_email("big@example.com").await.properties["employees"], "150", "{backend:?}: unchanged");

    // An option a rule counts stays as well; one no rule counts may go.
    let mut tier = property("tier", pb::PropertyType::Enumeration).property.unwrap();
    let options = |values: &[&str]| -> Vec<pb::PropertyOption> {
        values.iter().map(|v| pb::PropertyOption { value: (*v).into(), label: (*v).into() }).collect()
    };
    tier.options = options(&["gold", "silver", "bronze"]);
    let req = pb::CreatePropertyRequest { property: Some(tier.clone()) };
    s.api().create_property(authed(req, &admin)).await.unwrap();
    let gold = rule("Gold", 10, property_rule("tier", Op::Eq, "gold"));
    let gold = s.api().create_scoring_rule(authed(gold, &admin)).await.unwrap().into_inner().rule.unwrap();
    let options_mask = Some(prost_types::FieldMask { paths: vec!["options".into()] });
    tier.options = options(&["silver", "bronze"]);
    let req = pb::UpdatePropertyRequest { property: Some(tier.clone()), update_mask: options_mask.clone() };
    let err = s.api().update_property(authed(req, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
    assert!(err.message().contains(&gold.id), "{backend:?}: names the rule: {}", err.message());
    tier.options = options(&["gold", "silver"]);
    let req = pb::UpdatePropertyRequest { property: Some(tier.clone()), update_mask: options_mask };
    let kept = s.api().update_property(authed(req, &admin)).await.unwrap().into_inner().property.unwrap();
    let values: Vec<&str> = kept.options.iter().map(|o| o.value.as_str()).collect();
    assert_eq!(values, ["gold", "silver"], "{backend:?}: bronze went, gold stayed");

    s.api().delete_scoring_rule(authed(pb::DeleteScoringRuleRequest { id: big.id }, &admin)).await.unwrap();
    s.api().delete_property(authed(delete(), &admin)).await.unwrap();
    // Made again, it starts empty: the deleted values do not come back.
    s.api().create_property(authed(property("employees", pb::PropertyType::Number), &admin)).await.unwrap();
    let again = s.by_email("big@example.com").await;
    assert_eq!(again.properties.get("employees"), None, "{backend:?}");
    assert_eq!(again.id, c.id);
}

async fn bad_rules_are_refused_and_numbers_match_as_stored(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    s.api().create_property(authed(property("amount", pb::PropertyType::Number), &admin)).await.unwrap();
    for (r, field) in [
        (property_rule("amount", Op::Gt, "NaN"), "rule.property.value"),
        (property_rule("amount", Op::Lt, "1e400"), "rule.property.value"),
        (property_rule("amount", Op::Eq, "inf"), "rule.property.value"),
        (property_rule("company", Op::Gt, "5"), "rule.property.value"),
        (property_rule("lifecycle_stage", Op::Eq, "bogus_stage"), "rule.property.value"),
        (property_rule("company", Op::HasProperty, "Acme"), "rule.property.value"),
    ] {
        let err = s.api().create_scoring_rule(authed(rule("bad", 5, r.clone()), &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {r:?}");
        assert!(err.message().contains(field), "{backend:?}: {}", err.message());
    }
    let long = pb::scoring_rule::Criterion::Behaviour(pb::BehaviourCriterion {
        kind: pb::BehaviourKind::PageView as i32,
        matches: String::new(),
        window_days: 3651,
    });
    let err = s.api().create_scoring_rule(authed(rule("w", 5, long), &admin)).await.unwrap_err();
    assert!(err.message().contains("1 to 3650"), "{backend:?}: {}", err.message());
    let err = s
        .api()
        .delete_scoring_rule(authed(pb::DeleteScoringRuleRequest { id: String::new() }, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
    assert!(err.message().contains("id"), "{}", err.message());

    // "10.0" is the number 10, as the value is stored.
    s.create("ten@example.com", &[("amount", "10")]).await.unwrap();
    s.api()
        .create_scoring_rule(authed(rule("Ten", 7, property_rule("amount", Op::Eq, "10.0")), &admin))
        .await
        .unwrap();
    s.settle().await;
    assert_eq!(s.by_email("ten@example.com").await.properties["lead_score"], "7", "{backend:?}");
}

async fn a_promoted_contact_is_scored_as_promoted(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    for r in [
        rule("MQL", 50, property_rule("lifecycle_stage", Op::Eq, "marketing_qualified_lead")),
        rule("CTO", 10, property_rule("job_title", Op::Eq, "cto")),
    ] {
        s.api().create_scoring_rule(authed(r, &admin)).await.unwrap();
    }
    let set = pb::SetScoringSettingsRequest { settings: Some(pb::ScoringSettings { mql_threshold: 10 }) };
    s.api().set_scoring_settings(authed(set, &admin)).await.unwrap();
    let c = s.create("cto@example.com", &[("job_title", "CTO"), ("lifecycle_stage", "lead")]).await.unwrap();
    let now = s.by_email("cto@example.com").await;
    assert_eq!(
        (now.properties["lifecycle_stage"].as_str(), now.properties["lead_score"].as_str()),
        ("marketing_qualified_lead", "60"),
        "{backend:?}: the stage the score brought counts in the score"
    );
    assert_eq!(now, c, "{backend:?}: created, the contact is answered as scored");

    // Changed in a batch, it is answered as scored; named again in it, the later change is
    // refused rather than answered with a state neither asked for.
    let d = s.create("dev@example.com", &[("lifecycle_stage", "subscriber")]).await.unwrap();
    let updates =
        vec![update(&d.id, &[("job_title", "CTO")], ""), update(&d.id, &[("job_title", "CEO")], "")];
    let u = s
        .api()
        .batch_update_contacts(authed(pb::BatchUpdateContactsRequest { updates }, &s.writer()))
        .await
        .unwrap()
        .into_inner();
    let stored = s.by_email("dev@example.com").await;
    assert_eq!(stored.properties["lead_score"], "60", "{backend:?}: promoted by the first change");
    let refused: Vec<_> = u.errors.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(refused, [(1, "updates[1].id")], "{backend:?}");
    assert_eq!(u.results.len(), 1, "{backend:?}");
    assert_eq!(u.results[0].contact.as_ref(), Some(&stored), "{backend:?}: answered as stored");
}

/// A score promotes when it comes to reach the threshold, not whenever it is over it: a person
/// who moves an MQL back to lead is not overruled by the same call's score, nor by any later
/// change that leaves the score over the threshold. A threshold lowered under a score, or a
/// score rising past a threshold raised over it, reaches it again and promotes.
async fn a_person_moving_an_mql_back_is_not_overruled_until_the_score_reaches_again(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    for r in [
        rule("CTO", 60, property_rule("job_title", Op::Eq, "cto")),
        rule("Acme", 40, property_rule("company", Op::Eq, "acme")),
        rule("Ada", 30, property_rule("first_name", Op::Eq, "ada")),
    ] {
        s.api().create_scoring_rule(authed(r, &admin)).await.unwrap();
    }
    let threshold =
        |t: i64| pb::SetScoringSettingsRequest { settings: Some(pb::ScoringSettings { mql_threshold: t }) };
    s.api().set_scoring_settings(authed(threshold(50), &admin)).await.unwrap();
    let stage = |email: &'static str| {
        let s = &s;
        async move {
            let c = s.by_email(email).await;
            (c.properties["lifecycle_stage"].clone(), c.properties["lead_score"].clone())
        }
    };
    let c = s.create("cto@example.com", &[("job_title", "CTO"), ("lifecycle_stage", "lead")]).await.unwrap();
    assert_eq!(
        stage("cto@example.com").await,
        ("marketing_qualified_lead".into(), "60".into()),
        "{backend:?}"
    );

    // A person disqualifies it: the call's own score (still 60) does not promote it again.
    let back =
        s.api().update_contact(authed(update(&c.id, &[("lifecycle_stage", "lead")], ""), &s.writer())).await;
    let back = back.unwrap().into_inner().contact.unwrap();
    assert_eq!(back.properties["lifecycle_stage"], "lead", "{backend:?}: answered as the person set it");
    assert_eq!(stage("cto@example.com").await, ("lead".into(), "60".into()), "{backend:?}: stored so");
    // Nor does a later change that keeps the score over the threshold, nor a rule change that
    // works every score out again.
    set_stage(&s, &c.id, "lead").await;
    let phone = update(&c.id, &[("phone", "+49 30 1234567")], "");
    s.api().update_contact(authed(phone, &s.writer())).await.unwrap();
    s.api()
        .create_scoring_rule(authed(rule("Phone", 1, property_rule("phone", Op::Eq, "x")), &admin))
        .await
        .unwrap();
    s.settle().await;
    assert_eq!(
        stage("cto@example.com").await,
        ("lead".into(), "60".into()),
        "{backend:?}: still the person's"
    );

    // A threshold lowered under a score the old one did not reach: the score reaches it now.
    let b = s.create("acme@example.com", &[("company", "Acme"), ("lifecycle_stage", "lead")]).await.unwrap();
    assert_eq!(stage("acme@example.com").await, ("lead".into(), "40".into()), "{backend:?}");
    s.api().set_scoring_settings(authed(threshold(35), &admin)).await.unwrap();
    s.settle().await;
    assert_eq!(
        stage("acme@example.com").await.0,
        "marketing_qualified_lead",
        "{backend:?}: lowered under it"
    );
    assert_eq!(stage("cto@example.com").await.0, "lead", "{backend:?}: the CTO's score reached 50 already");

    // Raised over the CTO's score, then the score rises past it: that reaches it again.
    s.api().set_scoring_settings(authed(threshold(80), &admin)).await.unwrap();
    s.settle().await;
    set_stage(&s, &b.id, "lead").await;
    let more = update(&c.id, &[("first_name", "Ada")], "");
    let more = s.api().update_contact(authed(more, &s.writer())).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(
        (more.properties["lifecycle_stage"].as_str(), more.properties["lead_score"].as_str()),
        ("marketing_qualified_lead", "90"),
        "{backend:?}: 60 -> 90 crosses 80"
    );
    assert_eq!(stage("acme@example.com").await, ("lead".into(), "40".into()), "{backend:?}");
}

async fn events_keep_their_windows_retries_and_batches(backend: Backend) {
    use pb::contact_event::Contact as C;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    let c = s.create("v@example.com", &[]).await.unwrap();
    let views = pb::scoring_rule::Criterion::Behaviour(pb::BehaviourCriterion {
        kind: pb::BehaviourKind::PageView as i32,
        matches: String::new(),
        window_days: 1,
    });
    s.api().create_scoring_rule(authed(rule("Views", 4, views), &admin)).await.unwrap();
    s.settle().await;

    // Recorded now, with no time given: a day later the view leaves the window, and the score
    // falls at that instant, however far the clock is moved in one go.
    let seen = s.platform.clock.now();
    let mut v = view("v-1", C::ContactId(c.id.clone()), 0, "");
    v.occurred_at = None;
    let first = record(&s, vec![v.clone()]).await;
    assert!(first.errors.is_empty(), "{backend:?}: {:?}", first.errors);
    assert_eq!(s.by_email("v@example.com").await.properties["lead_score"], "4", "{backend:?}");
    s.platform.clock.advance_to(seen + chrono::Duration::days(3)).await.unwrap();
    let (score, fell_at) = last_change(&s, &c.id, "lead_score").await;
    assert_eq!((score.as_str(), fell_at), ("0", seen + chrono::Duration::days(1)), "{backend:?}");

    // The same event sent again later, still without a time, is a replay; another under its id
    // is refused by the event's field.
    let again = record(&s, vec![v.clone()]).await;
    assert!(again.errors.is_empty() && again.results[0].replayed, "{backend:?}: {again:?}");
    let mut other = v;
    other.kind = Some(pb::contact_event::Kind::EmailOpen(pb::EmailOpen { email_id: "e-1".into() }));
    let refused = record(&s, vec![other]).await;
    assert_eq!(refused.errors.len(), 1, "{backend:?}");
    let e = &refused.errors[0];
    assert_eq!(e.code, "ALREADY_EXISTS", "{backend:?}");
    assert!(e.message.contains("events[0].id"), "{backend:?}: {}", e.message);

    // A page view before the form that makes its contact, in one batch: both land on it.
    let t0 = s.platform.clock.now().timestamp() - 3_600;
    let viewed = view("pv-new", C::Email("new@example.com".into()), t0, "");
    let form = pb::ContactEvent {
        id: "form-new".into(),
        contact: Some(C::Email("new@example.com".into())),
        occurred_at: Some(at(t0 + 60)),
        kind: Some(pb::contact_event::Kind::FormSubmission(pb::FormSubmission {
            form_id: "contact-us".into(),
            page_url: String::new(),
        })),
    };
    let both = record_as(&s, &admin, vec![viewed, form]).await;
    assert!(both.errors.is_empty(), "{backend:?}: {:?}", both.errors);
    assert_eq!(both.results.len(), 2, "{backend:?}");
    assert_eq!(both.results[0].contact_id, both.results[1].contact_id, "{backend:?}");

    // One batch naming an id twice and a new address in two forms: the first of each counts,
    // the repeat is a replay, another event under the id is refused, one contact is made.
    let form_of = |id: &str, email: &str, t: i64| pb::ContactEvent {
        id: id.into(),
        contact: Some(C::Email(email.into())),
        occurred_at: Some(at(t)),
        kind: Some(pb::contact_event::Kind::FormSubmission(pb::FormSubmission {
            form_id: "demo".into(),
            page_url: String::new(),
        })),
    };
    let had = s.by_email("v@example.com").await.visits.expect("visits").count;
    let twice = view("pv-twice", C::ContactId(c.id.clone()), t0, "DIRECT");
    let mut clash = twice.clone();
    clash.kind = Some(pb::contact_event::Kind::EmailOpen(pb::EmailOpen { email_id: "e-2".into() }));
    let batch = vec![
        twice.clone(),
        form_of("f-a", "twice@example.com", t0 + 120),
        twice,
        form_of("f-b", "twice@example.com", t0 + 60),
        clash,
    ];
    let r = record_as(&s, &admin, batch).await;
    let by_index = |i: i32| r.results.iter().find(|x| x.index == i);
    assert!(by_index(0).is_some_and(|x| !x.replayed), "{backend:?}: {r:?}");
    assert!(by_index(2).is_some_and(|x| x.replayed), "{backend:?}: {r:?}");
    let codes: Vec<(i32, &str)> = r.errors.iter().map(|e| (e.index, e.code.as_str())).collect();
    assert_eq!(codes, [(4, "ALREADY_EXISTS")], "{backend:?}");
    let (a, b) = (by_index(1).expect("f-a"), by_index(3).expect("f-b"));
    assert_eq!(a.contact_id, b.contact_id, "{backend:?}: one contact for one address");
    assert!(b.contact_created && !a.contact_created, "{backend:?}: the earlier form made it: {r:?}");
    let visits = s.by_email("v@example.com").await.visits.expect("visits");
    assert_eq!(visits.count, had + 1, "{backend:?}: the view counted once");

    // A view an hour ahead of now (the sender's clock runs ahead) counts when its time comes,
    // with no other write to the contact.
    let ahead = s.platform.clock.now().timestamp() + 3_600;
    let f = s.create("ahead@example.com", &[]).await.unwrap();
    let r = record(&s, vec![view("pv-ahead", C::ContactId(f.id.clone()), ahead, "")]).await;
    assert!(r.errors.is_empty(), "{backend:?}: {:?}", r.errors);
    assert_eq!(s.by_email("ahead@example.com").await.properties["lead_score"], "0", "{backend:?}");
    let arrives = chrono::DateTime::from_timestamp(ahead, 0).unwrap();
    s.platform.clock.advance_to(arrives + chrono::Duration::minutes(5)).await.unwrap();
    let (score, rose_at) = last_change(&s, &f.id, "lead_score").await;
    assert_eq!((score.as_str(), rose_at), ("4", arrives), "{backend:?}");

    // Forms of one new address in calls at the same time: one contact, and only the call
    // that made it says so.
    let calls = (0..4).map(|i| {
        let events = vec![form_of(&format!("f-race-{i}"), "race@example.com", t0)];
        let req = authed(pb::RecordContactEventsRequest { events }, &admin);
        let mut api = s.api();
        async move { api.record_contact_events(req).await.unwrap().into_inner() }
    });
    let answers = futures::future::join_all(calls).await;
    let made: Vec<(bool, String)> =
        answers.iter().map(|a| (a.results[0].contact_created, a.results[0].contact_id.clone())).collect();
    assert_eq!(made.iter().filter(|m| m.0).count(), 1, "{backend:?}: {made:?}");
    assert!(made.iter().all(|m| m.1 == made[0].1), "{backend:?}: one contact: {made:?}");
}

async fn writes_beside_a_background_rescore_are_neither_lost_nor_refused(backend: Backend) {
    use pb::ScoringOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    const N: usize = 120;
    let inputs = (0..N)
        .map(|i| pb::ContactInput {
            email: format!("w{i}@example.com"),
            properties: [("job_title".to_owned(), "intern".to_owned())].into(),
            source: None,
            requested_status: 0,
        })
        .collect();
    let req = pb::BatchCreateContactsRequest { contacts: inputs, request_id: String::new() };
    let made = s.api().batch_create_contacts(authed(req, &s.writer())).await.unwrap().into_inner().results;
    let made: Vec<pb::Contact> = made.into_iter().filter_map(|r| r.contact).collect();
    assert_eq!(made.len(), N);
    // A rule for the account: every contact is due, and the worker works them out while users
    // change the same contacts.
    let r = rule("CTO", 9, property_rule("job_title", Op::Eq, "cto"));
    s.api().create_scoring_rule(authed(r, &admin)).await.unwrap();
    let worker = s.settle();
    let writes = futures::future::join_all(made.iter().map(|c| {
        let mut api = s.api();
        let req = update(&c.id, &[("job_title", "CTO")], "");
        let token = s.writer();
        async move { api.update_contact(authed(req, &token)).await }
    }));
    let ((), written) = tokio::join!(worker, writes);
    for w in written {
        w.unwrap_or_else(|e| panic!("{backend:?}: a write refused beside the rescore: {e:?}"));
    }
    s.settle().await;
    for c in &made {
        let now = s.by_email(c.email.clone()).await;
        assert_eq!(
            (now.properties["job_title"].as_str(), now.properties["lead_score"].as_str()),
            ("CTO", "9"),
            "{backend:?}: {} kept what its user wrote, and is scored from it",
            c.email
        );
    }
}

/// Updates of one contact at the same time: with an expected version one wins and the rest are
/// refused; without, each is applied in turn. Either way the history holds exactly the changes
/// the contact went through, the newest the value it holds.
async fn updates_at_the_same_time_are_each_applied_in_turn_or_refused(backend: Backend) {
    const CALLERS: usize = 8;
    const EACH: usize = 5;
    let s = start(backend).await;
    let c = s.create("race@example.com", &[]).await.unwrap();
    let update = |version: i64, value: String| pb::UpdateContactRequest {
        id: c.id.clone(),
        properties: [("company".to_owned(), value)].into_iter().collect(),
        expected_version: version,
        email: String::new(),
        update_mask: None,
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLERS));
    let calls: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (mut api, token, req, barrier) =
                (s.api(), s.writer(), update(1, format!("first-{i}")), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                api.update_contact(authed(req, &token)).await.map(|r| r.into_inner().contact.unwrap())
            })
        })
        .collect();
    let mut won = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(c) => won.push(c),
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{backend:?}: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "{backend:?}: one update of version 1 wins");
    assert_eq!(won[0].version, 2, "{backend:?}");
    let kept = history(&s, &c.id, "company").await.unwrap();
    assert_eq!(kept.len(), 1, "{backend:?}: only the winner's value is in the history: {kept:?}");
    assert_eq!(kept[0].1, won[0].properties["company"], "{backend:?}");

    // Without an expected version every update is applied, one after the other.
    let calls: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (mut api, token, barrier) = (s.api(), s.writer(), barrier.clone());
            let reqs: Vec<_> = (0..EACH).map(|j| update(0, format!("caller-{i}-{j}"))).collect();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut versions = Vec::new();
                for req in reqs {
                    versions.push(
                        api.update_contact(authed(req, &token))
                            .await
                            .unwrap()
                            .into_inner()
                            .contact
                            .unwrap()
                            .version,
                    );
                }
                versions
            })
        })
        .collect();
    let mut versions = Vec::new();
    for call in calls {
        versions.extend(call.await.unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<i64> = (3..3 + (CALLERS * EACH) as i64).collect();
    assert_eq!(versions, expected, "{backend:?}: each update moved the version once");
    let now = s.by_email("race@example.com").await;
    assert_eq!(now.version, 2 + (CALLERS * EACH) as i64, "{backend:?}");
    let mut kept: Vec<String> =
        history(&s, &c.id, "company").await.unwrap().into_iter().map(|c| c.1).collect();
    kept.sort_unstable();
    let mut applied: Vec<String> =
        (0..CALLERS).flat_map(|i| (0..EACH).map(move |j| format!("caller-{i}-{j}"))).collect();
    applied.push(won[0].properties["company"].clone());
    applied.sort_unstable();
    assert_eq!(kept, applied, "{backend:?}: every applied change in the history, once");
    let newest = &history(&s, &c.id, "company").await.unwrap()[0];
    assert_eq!(newest.1, now.properties["company"], "{backend:?}: the newest entry is the value held");
}

// ---- values of every allowed length ----

/// `n` characters of `range` in a seeded pseudo-random order, so they do not compress.
fn noise(n: usize, range: std::ops::RangeInclusive<char>, seed: u64) -> String {
    let chars: Vec<char> = range.collect();
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            chars[(x >> 33) as usize % chars.len()]
        })
        .collect()
}

async fn ids_of(s: &Contacts, filter: Option<pb::ContactFilter>) -> Vec<String> {
    let req = pb::SearchContactsRequest { filter, page_size: 100, ..Default::default() };
    let mut ids: Vec<String> = s.search(req).await.unwrap().contacts.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&pb::Contact]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    ids
}

async fn values_of_every_allowed_length_are_kept_found_and_matched(backend: Backend) {
    use pb::FilterOperator as Op;
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    // About 4,000 bytes in 2,000 characters, that do not compress: past what one index entry
    // holds, within what a filter may name (4,096 characters).
    let long = format!("ÜÜ{}", noise(1_998, 'Ā'..='ž', 1));
    let longest = noise(65_536, 'Ā'..='ž', 2);
    let ada = [("first_name", "Ada"), ("last_name", "Lovelace"), ("company", long.as_str())];
    let a = s.create("ada@example.com", &ada).await.unwrap();
    let phone = noise(3_000, '0'..='9', 3);
    let c = s.create("c@example.com", &[("company", &longest), ("phone", &phone)]).await.unwrap();

    // A batch with such values among short ones: every record is kept.
    let input = |email: &str, p: &[(&str, &str)]| pb::ContactInput {
        email: email.into(),
        properties: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let batch = vec![
        input("b@example.com", &ada),
        input("short@example.com", &[("company", "Short Co")]),
        input("d@example.com", &[("company", &longest), ("phone", &phone)]),
    ];
    let req = pb::BatchCreateContactsRequest { contacts: batch, request_id: String::new() };
    let r = s.api().batch_create_contacts(authed(req, &admin)).await.unwrap().into_inner();
    assert_eq!((r.results.len(), r.errors.len()), (3, 0), "{backend:?}: {:?}", r.errors);
    // And an import with one in its batch.
    let csv = format!("Email,Company\ne@example.com,{long}\nf@example.com,Fine Co\n");
    let done = import_csv(&s, pb::ImportMode::Create, &csv).await;
    assert_eq!((done.created, done.failed), (2, 0), "{backend:?}");

    let (b, short) = (s.by_email("b@example.com").await, s.by_email("short@example.com").await);
    let (d, e) = (s.by_email("d@example.com").await, s.by_email("e@example.com").await);
    assert_eq!(e.properties["company"], long, "{backend:?}: kept whole");
    assert_eq!(d.properties["company"], longest, "{backend:?}: kept whole");

    // Found by the long value as by a short one, under every operator that compares.
    let by = |op, value: &str| filter(vec![vec![f("company", op, value)]]);
    assert_eq!(ids_of(&s, by(Op::Eq, &long)).await, sorted(&[&a, &b, &e]), "{backend:?}: EQ");
    assert_eq!(ids_of(&s, by(Op::Eq, "Short Co")).await, sorted(&[&short]), "{backend:?}");
    let any = pb::Filter { values: vec![long.clone(), "Fine Co".into()], ..f("company", Op::In, "") };
    let fine = s.by_email("f@example.com").await;
    assert_eq!(ids_of(&s, filter(vec![vec![any]])).await, sorted(&[&a, &b, &e, &fine]), "{backend:?}: IN");
    assert_eq!(ids_of(&s, by(Op::Neq, &long)).await, sorted(&[&c, &short, &d, &fine]), "{backend:?}: NEQ");
    let range = pb::Filter { high_value: long.clone(), ..f("company", Op::Between, &long) };
    assert_eq!(ids_of(&s, filter(vec![vec![range]])).await, sorted(&[&a, &b, &e]), "{backend:?}: BETWEEN");
    // Without regard to case beyond ASCII, and what patterns mean taken literally.
    assert_eq!(ids_of(&s, by(Op::Contains, "üü")).await, sorted(&[&a, &b, &e]), "{backend:?}: CONTAINS");
    let odd = s.create("odd@example.com", &[("company", "Ärzte.* [100%_x]")]).await.unwrap();
    assert_eq!(ids_of(&s, by(Op::Contains, "äRZTE.* [100%_")).await, sorted(&[&odd]), "{backend:?}");
    assert!(ids_of(&s, by(Op::Contains, "Ärzte.. [100")).await.is_empty(), "{backend:?}: no wildcards");
    assert_eq!(ids_of(&s, by(Op::HasProperty, "")).await.len(), 8, "{backend:?}: HAS_PROPERTY");

    // Matched as duplicates by name and company, and by phone, however long.
    let found = candidates(&s, 0).await;
    let pairs: Vec<((String, String), Vec<i32>)> =
        found.into_iter().map(|(x, y, reasons, _)| ((x, y), reasons)).collect();
    let name_and_company = pb::DuplicateReason::NameAndCompany as i32;
    assert!(pairs.contains(&(pair(&a, &b), vec![name_and_company])), "{backend:?}: {pairs:?}");
    assert!(
        pairs.iter().any(|(p, r)| *p == pair(&c, &d) && r.contains(&(pb::DuplicateReason::Phone as i32)))
    );

    // Changed to another long value, with its history; a property holding such values is
    // deleted with them.
    let update = pb::UpdateContactRequest {
        id: a.id.clone(),
        properties: [("company".to_owned(), longest.clone())].into(),
        expected_version: a.version,
        ..Default::default()
    };
    s.api().update_contact(authed(update, &s.writer())).await.unwrap();
    let changes = history(&s, &a.id, "company").await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.1.len()).collect::<Vec<_>>(),
        [longest.len(), long.len()],
        "{backend:?}"
    );
    let notes = |name: &str| property(name, pb::PropertyType::MultiLineText);
    s.api().create_property(authed(notes("notes"), &admin)).await.unwrap();
    let update = pb::UpdateContactRequest {
        id: b.id.clone(),
        properties: [("notes".to_owned(), longest.clone())].into(),
        expected_version: b.version,
        ..Default::default()
    };
    s.api().update_contact(authed(update, &s.writer())).await.unwrap();
    assert_eq!(ids_of(&s, filter(vec![vec![f("notes", Op::HasProperty, "")]])).await, sorted(&[&b]));
    s.api()
        .delete_property(authed(pb::DeletePropertyRequest { name: "notes".into() }, &admin))
        .await
        .unwrap();
    s.api().create_property(authed(notes("notes"), &admin)).await.unwrap();
    assert_eq!(s.by_email("b@example.com").await.properties.get("notes"), None, "{backend:?}: gone with it");
    assert!(ids_of(&s, filter(vec![vec![f("notes", Op::HasProperty, "")]])).await.is_empty(), "{backend:?}");
}

async fn a_former_address_names_its_person_whatever_its_case(backend: Backend) {
    let s = start(backend).await;
    let c = s.create("Jürgen.Öz@example.de", &[]).await.unwrap();
    let update = pb::UpdateContactRequest {
        id: c.id.clone(),
        email: "j@example.de".into(),
        expected_version: c.version,
        ..Default::default()
    };
    s.api().update_contact(authed(update, &s.writer())).await.unwrap();
    // The person asks for their data under the address they had, spelled in other case.
    let req = pb::ExportContactDataRequest { email: "JÜRGEN.ÖZ@EXAMPLE.DE".into(), ..Default::default() };
    let export = s.api().export_contact_data(authed(req, &s.token(ACCOUNT, &["admin"]))).await;
    let export = export.unwrap_or_else(|e| panic!("{backend:?}: {e:?}")).into_inner();
    let contacts: serde_json::Value = serde_json::from_str(&export.parts[0].json).unwrap();
    assert_eq!(
        (contacts["id"].as_str(), contacts["email"].as_str()),
        (Some(c.id.as_str()), Some("j@example.de"))
    );
}

async fn a_page_token_the_service_issued_is_taken_back(backend: Backend) {
    use pb::contact_event::Contact as C;
    let s = start(backend).await;
    let c = s.create("ada@example.com", &[]).await.unwrap();
    let t0 = s.platform.clock.now().timestamp() - 3_600;
    // Event ids at their longest (128 characters), four bytes each: the token holds the last one.
    let long_id = |n: char| format!("{n}{}", "𠀀".repeat(127));
    let events = ['a', 'b', 'c'].map(|n| view(&long_id(n), C::ContactId(c.id.clone()), t0, "DIRECT"));
    assert!(record(&s, events.to_vec()).await.errors.is_empty(), "{backend:?}");
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListContactEventsRequest { contact_id: c.id.clone(), page_size: 1, page_token };
        let page = s.api().list_contact_events(authed(req, &s.token(ACCOUNT, &["read"]))).await;
        let page = page.unwrap_or_else(|e| panic!("{backend:?}: {e:?}")).into_inner();
        seen.extend(page.events.into_iter().map(|e| e.id.chars().next().unwrap()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ['a', 'b', 'c'], "{backend:?}");
}

/// A value of several lines is stored as written, and found by exactly that text: a leading
/// tab or a trailing line break is part of it.
async fn a_value_of_several_lines_is_found_by_its_exact_text(backend: Backend) {
    let s = start(backend).await;
    let admin = s.token(ACCOUNT, &["admin", "read", "write"]);
    s.api()
        .create_property(authed(property("notes", pb::PropertyType::MultiLineText), &admin))
        .await
        .unwrap();
    let written = "\tindented\nsecond line\n";
    s.create("tab@example.com", &[("notes", written)]).await.unwrap();
    s.create("bare@example.com", &[("notes", written.trim())]).await.unwrap();
    async fn found(s: &Contacts, value: &str, op: pb::FilterOperator) -> Vec<String> {
        let req = pb::SearchContactsRequest {
            filter: filter(vec![vec![f("notes", op, value)]]),
            ..Default::default()
        };
        s.search(req).await.unwrap().contacts.into_iter().map(|c| c.email).collect()
    }
    assert_eq!(found(&s, written, pb::FilterOperator::Eq).await, ["tab@example.com"], "{backend:?}");
    assert_eq!(found(&s, written.trim(), pb::FilterOperator::Eq).await, ["bare@example.com"], "{backend:?}");
    assert_eq!(found(&s, written, pb::FilterOperator::Neq).await, ["bare@example.com"], "{backend:?}");
}

contactier_runtime::backend_tests!(
    a_value_of_several_lines_is_found_by_its_exact_text,
    pages_of_large_history_and_timelines_fit_a_clients_message,
    a_page_token_the_service_issued_is_taken_back,
    a_former_address_names_its_person_whatever_its_case,
    values_of_every_allowed_length_are_kept_found_and_matched,
    updates_at_the_same_time_are_each_applied_in_turn_or_refused,
    every_change_of_a_value_is_kept_with_its_source_and_who_made_it,
    imports_and_merges_write_history_and_erasure_removes_it,
    an_import_naming_one_email_again_keeps_each_value_in_order,
    the_timeline_keeps_every_kind_of_engagement_and_the_last_activity,
    logging_an_email_or_meeting_for_a_new_address_creates_a_non_marketing_contact,
    behaviour_makes_visits_once_per_event_whatever_the_order,
    a_form_makes_its_contact_and_bad_events_are_refused_one_by_one,
    duplicates_are_found_by_mailbox_phone_and_name_then_dismissed_or_merged,
    lifecycle_reports_follow_the_stage_history_day_by_day,
    lead_scores_follow_rules_behaviour_windows_and_promote_to_mql,
    a_merge_keeps_either_contacts_unsubscribe_and_scores_the_merged_contact,
    a_property_a_rule_counts_stays_and_a_deleted_propertys_values_go,
    bad_rules_are_refused_and_numbers_match_as_stored,
    a_promoted_contact_is_scored_as_promoted,
    a_person_moving_an_mql_back_is_not_overruled_until_the_score_reaches_again,
    events_keep_their_windows_retries_and_batches,
    writes_beside_a_background_rescore_are_neither_lost_nor_refused,
);
