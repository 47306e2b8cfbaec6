//! CSV imports streamed over gRPC, merges and GDPR on both backends, with marketing-status
//! following every change.

mod common;

use common::*;
use contactier_proto::common::v1::{MarketingStatus, Source, SourceType};
use contactier_proto::contacts::v1::{
    self as pb, contacts_service_client::ContactsServiceClient, import_contacts_request::Part,
};
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::db::Backend;
use contactier_runtime::sql::{Sql, Tx};
use contactier_runtime::testing::authed;
use futures::StreamExt;
use tonic::Code;

fn header(mode: pb::ImportMode, mapping: &[(&str, &str)]) -> pb::ImportHeader {
    pb::ImportHeader {
        name: "spring fair".into(),
        mode: mode as i32,
        column_mapping: mapping.iter().map(|(c, p)| (c.to_string(), p.to_string())).collect(),
        ..Default::default()
    }
}

/// Streams the header and the file in chunks of `chunk` bytes; answers every progress message.
async fn import(
    s: &Contacts,
    h: pb::ImportHeader,
    csv: &str,
    chunk: usize,
) -> Result<Vec<pb::ImportContactsResponse>, tonic::Status> {
    import_with(s.api(), &s.writer(), h, csv, chunk).await
}

/// [`import`] through a client of its own, with `token`.
async fn import_with(
    mut api: pb::contacts_service_client::ContactsServiceClient<tonic::transport::Channel>,
    token: &str,
    h: pb::ImportHeader,
    csv: &str,
    chunk: usize,
) -> Result<Vec<pb::ImportContactsResponse>, tonic::Status> {
    let mut parts = vec![pb::ImportContactsRequest { part: Some(Part::Header(h)) }];
    parts.extend(
        csv.as_bytes()
            .chunks(chunk)
            .map(|c| pb::ImportContactsRequest { part: Some(Part::Chunk(c.to_vec())) }),
    );
    parts.push(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd { size: csv.len() as i64 })) });
    let stream = futures::stream::iter(parts);
    let mut out = api.import_contacts(authed(stream, token)).await?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = out.message().await? {
        got.push(m);
    }
    Ok(got)
}

async fn errors(s: &Contacts, id: &str) -> Vec<(i64, String, String)> {
    let req =
        pb::ListImportErrorsRequest { import_id: id.into(), page_size: 1_000, page_token: String::new() };
    let r = s.api().list_import_errors(authed(req, &s.writer())).await.unwrap().into_inner();
    r.errors.into_iter().map(|e| (e.row, e.column, e.reason)).collect()
}

async fn imports_stream_rows_report_bad_ones_and_keep_the_good(backend: Backend) {
    let s = start(backend).await;
    // 2,500 good rows, a few bad ones, a repeated email, quoted fields with commas and line
    // breaks, split into 37-byte chunks that cut rows and quotes anywhere.
    let mut csv = String::from("E-mail,First,Stage,Note,Opt in\n");
    for i in 0..2_500 {
        csv.push_str(&format!(
            "user{i}@example.com,\"Name, {i}\",lead,\"line one\nline two\",{}\n",
            i % 2 == 0
        ));
    }
    csv.push_str("broken-address,X,lead,,\n"); // row 2501
    csv.push_str("ok1@example.com,Y,alien,,maybe\n"); // row 2502: two bad columns
    csv.push_str("USER7@example.com,Again,customer,,\n"); // row 2503: repeats row 8
    let mut h = header(
        pb::ImportMode::Upsert,
        &[("E-mail", "email"), ("First", "first_name"), ("Stage", "lifecycle_stage")],
    );
    h.set_as_marketing = true;
    h.gdpr_opt_in_column = "Opt in".into();
    h.gdpr_legal_basis = "consent".into();
    h.request_id = "import-1".into();
    let msgs = import(&s, h.clone(), &csv, 37).await.unwrap();
    let last = msgs.last().unwrap();
    assert!(last.done, "{backend:?}");
    assert!(msgs.len() >= 3, "{backend:?}: progress while it runs, {} messages", msgs.len());
    let sum = last.progress.clone().unwrap();
    assert_eq!(
        (sum.rows_read, sum.created, sum.updated, sum.failed, sum.state),
        (2_503, 2_500, 1, 2, pb::ImportState::Completed as i32),
        "{backend:?}"
    );
    let errs = errors(&s, &sum.import_id).await;
    let cells: Vec<_> = errs.iter().map(|(r, c, _)| (*r, c.as_str())).collect();
    assert_eq!(cells, [(2_501, "E-mail"), (2_502, "Opt in"), (2_502, "Stage")], "{backend:?}: {errs:?}");
    // Pages of one follow on; a made-up token is refused rather than read from the top.
    let page = |token: String| pb::ListImportErrorsRequest {
        import_id: sum.import_id.clone(),
        page_size: 1,
        page_token: token,
    };
    let first =
        s.api().list_import_errors(authed(page(String::new()), &s.writer())).await.unwrap().into_inner();
    let second = s
        .api()
        .list_import_errors(authed(page(first.next_page_token), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.errors[0].row, second.errors[0].column.as_str()), (2_502, "Opt in"), "{backend:?}");
    for made_up in ["-5:x", "2501:E-mail", "0:'); DROP TABLE x;--"] {
        let err = s.api().list_import_errors(authed(page(made_up.into()), &s.writer())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{backend:?}: {made_up}");
    }

    let total =
        s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap().into_inner();
    assert_eq!(total.total_contacts, 2_500, "{backend:?}");
    let c = s.by_email("user7@example.com").await;
    assert_eq!(
        (c.properties["first_name"].as_str(), c.properties["lifecycle_stage"].as_str()),
        ("Again", "customer")
    );
    assert_eq!(
        c.creation_source.unwrap(),
        Source { r#type: SourceType::Import as i32, id: sum.import_id.clone() }
    );
    let consent = s
        .api()
        .get_consent(authed(pb::GetConsentRequest { contact_id: c.id.clone() }, &s.writer()))
        .await
        .unwrap();
    assert_eq!(consent.into_inner().consent.unwrap().legal_basis, "", "odd rows did not opt in");

    // "Set as marketing": every imported contact counts, once.
    s.settle().await;
    assert_eq!(s.marketing_count().await.marketing, 2_500, "{backend:?}");

    // The same request id again: the first import, nothing twice.
    let again = import(&s, h, &csv, 4_096).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].progress.as_ref().unwrap().import_id, sum.import_id);

    // Create-only: existing emails are skipped; update-only: unknown ones are.
    let csv = "email\nuser1@example.com\nfresh@example.com\n";
    let r = import(&s, header(pb::ImportMode::Create, &[("email", "email")]), csv, 1_000).await.unwrap();
    let sum = r.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.created, sum.skipped), (1, 1), "{backend:?}");
    // "Set as marketing" in an upsert reaches a contact that existed, non-marketing.
    s.settle().await;
    let fresh = s.by_email("fresh@example.com").await;
    assert_eq!(s.status(&fresh.id).await.unwrap().status, MarketingStatus::NonMarketing as i32);
    let mut h = header(pb::ImportMode::Upsert, &[("email", "email")]);
    h.set_as_marketing = true;
    let r = import(&s, h, "email\nfresh@example.com\n", 1_000).await.unwrap();
    assert_eq!(r.last().unwrap().progress.as_ref().unwrap().updated, 1);
    s.settle().await;
    assert_eq!(s.status(&fresh.id).await.unwrap().status, MarketingStatus::Marketing as i32, "{backend:?}");
    let csv = "email,company\nuser2@example.com,Acme\nnobody@example.com,Acme\n";
    let r =
        import(&s, header(pb::ImportMode::Update, &[("email", "email"), ("company", "company")]), csv, 1_000)
            .await
            .unwrap();
    let sum = r.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.updated, sum.skipped, sum.created), (1, 1, 0), "{backend:?}");

    // A header that cannot work is refused before anything is read.
    let err = import(&s, header(pb::ImportMode::Upsert, &[("First", "first_name")]), "First\nA\n", 100)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("header.column_mapping"), "{}", err.message());
    let err = import(&s, header(pb::ImportMode::Upsert, &[("Mail", "email")]), "email\na@b.co\n", 100)
        .await
        .unwrap_err();
    assert!(err.message().contains("no column \"Mail\""), "{}", err.message());
}

async fn merging_keeps_the_primary_fills_its_gaps_and_is_marketing_if_either_was(backend: Backend) {
    let s = start(backend).await;
    // Form and import sources are set by the systems that create contacts: an admin acts for them.
    let w = s.token(ACCOUNT, &["admin"]);
    let form = |email: &str, p: &[(&str, &str)], t: SourceType| pb::CreateContactRequest {
        contact: Some(pb::ContactInput {
            email: email.into(),
            properties: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            source: Some(Source { r#type: t as i32, id: "src".into() }),
            requested_status: 0,
        }),
        request_id: String::new(),
    };
    let primary = s
        .api()
        .create_contact(authed(
            form("ada@example.com", &[("first_name", "Ada"), ("company", "")], SourceType::Import),
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    let secondary = s
        .api()
        .create_contact(authed(
            form(
                "lovelace@example.com",
                &[("first_name", "A."), ("company", "Analytical")],
                SourceType::Form,
            ),
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    s.settle().await;
    // An import is non-marketing, a form marketing.
    assert_eq!(s.marketing_count().await.marketing, 1, "{backend:?}");
    let merged = s
        .api()
        .merge_contacts(authed(
            pb::MergeContactsRequest {
                primary_id: primary.id.clone(),
                secondary_id: secondary.id.clone(),
                ..Default::default()
            },
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!((merged.id.as_str(), merged.email.as_str()), (primary.id.as_str(), "ada@example.com"));
    assert_eq!(
        (merged.properties["first_name"].as_str(), merged.properties["company"].as_str()),
        ("Ada", "Analytical")
    );
    s.settle().await;
    let st = s.status(&primary.id).await.unwrap();
    assert_eq!(
        st.status,
        MarketingStatus::Marketing as i32,
        "{backend:?}: marketing because the secondary was"
    );
    assert!(s.status(&secondary.id).await.is_none());
    let count = s.marketing_count().await;
    assert_eq!((count.marketing, count.non_marketing), (1, 0), "{backend:?}: one contact, counted once");
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &w)).await.unwrap().into_inner();
    assert_eq!(total.total_contacts, 1);

    for (p, sec, code) in [
        (primary.id.clone(), primary.id.clone(), Code::InvalidArgument),
        (primary.id.clone(), secondary.id.clone(), Code::NotFound),
        (String::new(), primary.id.clone(), Code::InvalidArgument),
    ] {
        let err = s
            .api()
            .merge_contacts(authed(
                pb::MergeContactsRequest { primary_id: p, secondary_id: sec, ..Default::default() },
                &w,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{backend:?}");
    }
}

async fn gdpr_consent_export_anonymise_and_erase_reach_every_service(backend: Backend) {
    let s = start(backend).await;
    let w = s.writer();
    let admin = s.token(ACCOUNT, &["admin"]);
    let c = s.create("grace@example.com", &[("first_name", "Grace")]).await.unwrap();
    let consent = pb::Consent {
        legal_basis: "consent".into(),
        opted_in_at: None,
        subscription_types: vec!["newsletter".into(), "product".into()],
        unsubscribed_from_all: false,
    };
    let set = s
        .api()
        .set_consent(authed(
            pb::SetConsentRequest { contact_id: c.id.clone(), consent: Some(consent.clone()) },
            &w,
        ))
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert!(set.opted_in_at.is_some(), "{backend:?}: stamped now");
    let bad = pb::Consent { legal_basis: String::new(), ..consent.clone() };
    let err = s
        .api()
        .set_consent(authed(pb::SetConsentRequest { contact_id: c.id.clone(), consent: Some(bad) }, &w))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("consent.legal_basis"), "{}", err.message());
    let err = s
        .api()
        .set_consent(authed(
            pb::SetConsentRequest { contact_id: "nobody".into(), consent: Some(consent) },
            &w,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Set marketing in marketing-status, so its part of the export has a history.
    s.settle().await;
    let mut ms =
        mpb::marketing_status_service_client::MarketingStatusServiceClient::new(s.status_channel.clone());
    let req = mpb::SetMarketingStatusRequest {
        request_id: String::new(),
        target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds {
            ids: vec![c.id.clone()],
        })),
        status: MarketingStatus::Marketing as i32,
        source: None,
    };
    ms.set_marketing_status(authed(req, &w)).await.unwrap();

    let err = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: c.id.clone(), ..Default::default() },
            &w,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "exports are for admins");
    let export = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: c.id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let parts: Vec<(String, serde_json::Value)> =
        export.parts.iter().map(|p| (p.service.clone(), serde_json::from_str(&p.json).unwrap())).collect();
    assert_eq!(parts[0].0, "contacts");
    assert_eq!(parts[0].1["email"], "grace@example.com");
    assert_eq!(parts[0].1["consent"]["subscription_types"], serde_json::json!(["newsletter", "product"]));
    assert_eq!(parts[1].0, "marketing-status");
    assert_eq!(parts[1].1["status"]["marketing"], true, "{backend:?}");
    assert_eq!(parts[1].1["status_changes"].as_array().unwrap().len(), 2, "created, then set marketing");

    // Anonymise keeps the contact (it still counts) without its personal data.
    let a = s
        .api()
        .anonymize_contact(authed(
            pb::AnonymizeContactRequest { contact_id: c.id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert!(a.properties.is_empty() && !a.email.contains("grace"), "{backend:?}: {a:?}");
    let found = s.search(pb::SearchContactsRequest {
        filter: filter(vec![vec![f("first_name", pb::FilterOperator::Eq, "Grace")]]),
        ..Default::default()
    });
    assert_eq!(found.await.unwrap().total, 0, "{backend:?}: not findable by its old values");

    // Erase removes it everywhere, history included.
    s.api()
        .erase_contact(authed(
            pb::EraseContactRequest { contact_id: c.id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap();
    s.settle().await;
    assert!(s.status(&c.id).await.is_none(), "{backend:?}");
    assert_eq!(s.marketing_count().await.marketing, 0);
    let err = s
        .api()
        .export_contact_data(authed(
            pb::ExportContactDataRequest { contact_id: c.id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut internal =
        mpb::marketing_status_internal_service_client::MarketingStatusInternalServiceClient::new(
            s.status_channel.clone(),
        );
    let token = s.platform.authenticator.service_token("contacts", chrono::Duration::hours(1));
    let left = internal
        .export_contact_status_data(authed(
            mpb::ExportContactStatusDataRequest { account_id: ACCOUNT.into(), contact_id: c.id.clone() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .json;
    let left: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert!(
        left["status"].is_null() && left["status_changes"].as_array().unwrap().is_empty(),
        "{backend:?}: {left}"
    );
}

/// A TCP relay to `to`: the address to dial, and the task to abort to cut every connection.
async fn cuttable(to: std::net::SocketAddr) -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = listener.local_addr().unwrap();
    let relay = tokio::spawn(async move {
        let mut links = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            links.spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (relay, via)
}

/// An import whose client goes away half way is taken up again by a retry under its request id:
/// every row once, the summary exact, marketing-status told of each contact once.
async fn an_import_cut_off_is_taken_up_again_by_its_retry(backend: Backend) {
    let s = start(backend).await;
    let mut csv = String::from("email,Opt in\n");
    for i in 0..5_000 {
        csv.push_str(&format!("cut{i}@example.com,{}\n", i % 3 == 0));
    }
    let mut h = header(pb::ImportMode::Create, &[("email", "email")]);
    h.request_id = "cut-1".into();
    h.set_as_marketing = true;
    h.gdpr_opt_in_column = "Opt in".into();
    h.gdpr_legal_basis = "consent".into();

    // The first try sends 3,500 rows on its own connection, then stops sending and holds
    // the stream open.
    let head_end = csv.match_indices('\n').nth(3_500).unwrap().0 + 1;
    let parts = [
        pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[..head_end].to_vec())) },
    ];
    let stream = futures::stream::iter(parts).chain(futures::stream::pending());
    let (cut, via) = cuttable(s.addr).await;
    let mut own = ContactsServiceClient::new(contactier_runtime::testing::channel(via));
    let mut first = own.import_contacts(authed(stream, &s.writer())).await.unwrap().into_inner();
    let (mut seen, mut running) = (0, String::new());
    while seen < 3_000 {
        let progress = first.message().await.unwrap().unwrap().progress.unwrap();
        (seen, running) = (progress.rows_read, progress.import_id);
    }
    // While it runs, the same request id waits, told which import runs.
    let busy = import(&s, h.clone(), &csv, 8_192).await.unwrap_err();
    assert_eq!(busy.code(), Code::Aborted, "{backend:?}: {busy:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&busy).expect("ErrorInfo");
    assert_eq!(info.metadata.get("import_id"), Some(&running), "{backend:?}: {info:?}");
    // The request id with another header is refused, naming the import it was used for.
    let other = pb::ImportHeader { mode: pb::ImportMode::Upsert as i32, ..h.clone() };
    let reused = import(&s, other, &csv, 8_192).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{backend:?}: {reused:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&reused).expect("ErrorInfo");
    assert_eq!(info.metadata.get("import_id"), Some(&running), "{backend:?}: {info:?}");
    // The client goes away, connection and all.
    cut.abort();
    drop((first, own));

    // The retry sends the whole file and finishes it.
    let done = loop {
        match import(&s, h.clone(), &csv, 8_192).await {
            Ok(msgs) => break msgs,
            Err(e) if e.code() == Code::Aborted => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{backend:?}: {e:?}"),
        }
    };
    let sum = done.last().unwrap().progress.clone().unwrap();
    assert_eq!(
        (sum.rows_read, sum.created, sum.skipped, sum.failed, sum.state),
        (5_000, 5_000, 0, 0, pb::ImportState::Completed as i32),
        "{backend:?}"
    );
    assert!(errors(&s, &sum.import_id).await.is_empty(), "{backend:?}");
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 5_000, "{backend:?}");
    s.settle().await;
    let count = s.marketing_count().await;
    assert_eq!((count.marketing, count.non_marketing), (5_000, 0), "{backend:?}");
    // Opt-ins of rows on both sides of the cut were recorded.
    for i in [0, 3_300, 4_998] {
        let c = s.by_email(format!("cut{i}@example.com")).await;
        let consent = s
            .api()
            .get_consent(authed(pb::GetConsentRequest { contact_id: c.id }, &s.writer()))
            .await
            .unwrap();
        assert_eq!(consent.into_inner().consent.unwrap().legal_basis, "consent", "{backend:?}: row {i}");
    }
}

/// Drains an import's answers: its summaries, or the error it ended with.
async fn answers(
    out: Result<tonic::Response<tonic::Streaming<pb::ImportContactsResponse>>, tonic::Status>,
) -> Result<Vec<pb::ImportContactsResponse>, tonic::Status> {
    let mut out = out?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = out.message().await? {
        got.push(m);
    }
    Ok(got)
}

/// Retries an import while its first try is still winding down (ABORTED), then answers its
/// summary.
async fn retried(s: &Contacts, h: &pb::ImportHeader, csv: &str, backend: Backend) -> pb::ImportSummary {
    loop {
        match import(s, h.clone(), csv, 8_192).await {
            Ok(msgs) => return msgs.last().unwrap().progress.clone().unwrap(),
            Err(e) if e.code() == Code::Aborted => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{backend:?}: {e:?}"),
        }
    }
}

/// An import taken up again after a cut writes the rows after its saved progress as the
/// uncut import would: a row naming a contact the import made before the cut (another case of
/// the address) updates it (upsert), or is refused as a repeat (create), rather than being
/// counted as made again with its values dropped.
async fn a_resumed_import_treats_contacts_it_made_before_the_cut_as_made(backend: Backend) {
    let s = start(backend).await;
    for (mode, want) in [(pb::ImportMode::Upsert, (1_999, 1, 0)), (pb::ImportMode::Create, (1_999, 0, 1))] {
        let prefix = format!("{mode:?}").to_lowercase();
        let mut csv = String::from("email,First name\n");
        for i in 1..=2_000 {
            match i {
                1_001 => csv.push_str(&format!("{}5@EXAMPLE.COM,Changed\n", prefix.to_uppercase())),
                i => csv.push_str(&format!("{prefix}{i}@example.com,First{i}\n")),
            }
        }
        let h = pb::ImportHeader {
            request_id: format!("resumed-{prefix}"),
            ..header(mode, &[("email", "email"), ("First name", "first_name")])
        };
        // The first 1,000 rows, then the stream closes without its end: cut off after its
        // first batch was written and saved.
        let head_end = csv.match_indices('\n').nth(1_000).unwrap().0 + 1;
        let parts = [
            pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) },
            pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[..head_end].to_vec())) },
        ];
        let cut = answers(s.api().import_contacts(authed(futures::stream::iter(parts), &s.writer())).await)
            .await
            .unwrap_err();
        assert_eq!(cut.code(), Code::Aborted, "{backend:?} {mode:?}: {cut:?}");
        let sum = retried(&s, &h, &csv, backend).await;
        assert_eq!(
            (sum.rows_read, sum.created, sum.updated, sum.failed),
            (2_000, want.0, want.1, want.2),
            "{backend:?} {mode:?}"
        );
        let fifth = s.by_email(format!("{prefix}5@example.com")).await;
        let first = if mode == pb::ImportMode::Upsert { "Changed" } else { "First5" };
        assert_eq!(fifth.properties["first_name"], first, "{backend:?} {mode:?}");
        let refused = errors(&s, &sum.import_id).await;
        let want_refused: Vec<(i64, String, String)> = match mode {
            pb::ImportMode::Create => {
                vec![(1_001, "email".into(), "the email of an earlier row again".into())]
            }
            _ => Vec::new(),
        };
        assert_eq!(refused, want_refused, "{backend:?} {mode:?}");
    }
}

/// A stream that closes before the end part (as a client's deadline or cancel can close it)
/// is a file cut off, not a whole one: the import fails, no row cut in two becomes a contact,
/// and the retry of the whole file under the same request id finishes it, each row once.
async fn an_import_stream_closed_before_its_end_is_cut_off_not_complete(backend: Backend) {
    let s = start(backend).await;
    let mut csv = String::from("email\n");
    for i in 0..5_000 {
        csv.push_str(&format!("half{i}@example.com\n"));
    }
    let h = pb::ImportHeader {
        request_id: "half-1".into(),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    // The stream closes in the middle of row 2,501's address.
    let cut_at = csv.find("half2500@example.com").unwrap() + "half2500@exa".len();
    let parts = [
        pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[..cut_at].to_vec())) },
    ];
    let first =
        answers(s.api().import_contacts(authed(futures::stream::iter(parts), &s.writer())).await).await;
    let err = first.expect_err("a file without its end is not a whole file");
    assert_eq!(err.code(), Code::Aborted, "{backend:?}: {err:?}");
    assert!(err.message().contains("end part"), "{backend:?}: {err:?}");
    // Said after the answer began, it still carries its details and the import's id.
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("ErrorInfo");
    assert_eq!(info.reason, "CONFLICT", "{backend:?}");
    assert!(
        err.message().contains("(import ") && err.message().contains("takes it up"),
        "{backend:?}: {err:?}"
    );
    let import_id = info.metadata.get("import_id").expect("the import's id in ErrorInfo");
    let req = authed(pb::GetImportRequest { import_id: import_id.clone() }, &s.writer());
    let left = s.api().get_import(req).await.unwrap().into_inner().summary.unwrap();
    assert_eq!(left.state, pb::ImportState::Failed as i32, "{backend:?}: {left:?}");
    for empty in [
        s.api().get_import(authed(pb::GetImportRequest::default(), &s.writer())).await.map(|_| ()),
        s.api()
            .list_import_errors(authed(pb::ListImportErrorsRequest::default(), &s.writer()))
            .await
            .map(|_| ()),
    ] {
        let e = empty.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "import_id: required"), "{backend:?}");
    }
    let req = pb::GetContactRequest { key: Some(pb::get_contact_request::Key::Email("half2500@exa".into())) };
    let half = s.api().get_contact(authed(req, &s.writer())).await.unwrap_err();
    assert_eq!(half.code(), Code::NotFound, "{backend:?}: the row cut in two");
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert!(total.into_inner().total_contacts <= 2_500, "{backend:?}");

    let sum = retried(&s, &h, &csv, backend).await;
    assert_eq!(
        (sum.rows_read, sum.created, sum.skipped, sum.failed, sum.state),
        (5_000, 5_000, 0, 0, pb::ImportState::Completed as i32),
        "{backend:?}"
    );
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 5_000, "{backend:?}");
    // A whole file's end with a size that is not the file's is refused, naming the field.
    let wrong = [
        pb::ImportContactsRequest {
            part: Some(Part::Header(header(pb::ImportMode::Upsert, &[("email", "email")]))),
        },
        pb::ImportContactsRequest { part: Some(Part::Chunk(b"email\nsized@example.com\n".to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd { size: 99 })) },
    ];
    let err = answers(s.api().import_contacts(authed(futures::stream::iter(wrong), &s.writer())).await)
        .await
        .expect_err("a wrong size");
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
    assert!(err.message().starts_with("end.size"), "{backend:?}: {err:?}");
    let bad = tonic_types::StatusExt::get_details_bad_request(&err).expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "end.size", "{backend:?}");
    // A size no file has is refused the same way.
    let negative = [
        pb::ImportContactsRequest {
            part: Some(Part::Header(header(pb::ImportMode::Upsert, &[("email", "email")]))),
        },
        pb::ImportContactsRequest { part: Some(Part::Chunk(b"email\nsized@example.com\n".to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd { size: -1 })) },
    ];
    let err = answers(s.api().import_contacts(authed(futures::stream::iter(negative), &s.writer())).await)
        .await
        .expect_err("a negative size");
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
    assert!(err.message().starts_with("end.size"), "{backend:?}: {err:?}");
}

/// The import sent slowly under a client deadline that passes half way, then sent again whole
/// under the same request id: every row once, the import complete.
async fn an_import_cut_by_its_deadline_is_finished_by_its_resend(backend: Backend) {
    let s = start(backend).await;
    let mut csv = String::from("email\n");
    for i in 0..6_000 {
        csv.push_str(&format!("slow{i}@example.com\n"));
    }
    let h = pb::ImportHeader {
        request_id: "cut1".into(),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    let chunks: Vec<Vec<u8>> = csv.as_bytes().chunks(4_096).map(<[u8]>::to_vec).collect();
    let paced = futures::stream::iter(chunks)
        .then(|c| async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            pb::ImportContactsRequest { part: Some(Part::Chunk(c)) }
        })
        .chain(futures::stream::iter([pb::ImportContactsRequest {
            part: Some(Part::End(pb::ImportEnd::default())),
        }]));
    let parts = futures::stream::iter([pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) }])
        .chain(paced);
    let mut req = authed(parts, &s.writer());
    let deadline = std::time::Duration::from_millis(400);
    req.set_timeout(deadline);
    let first = tokio::time::timeout(deadline, answers(s.api().import_contacts(req).await)).await;
    assert!(!matches!(first, Ok(Ok(_))), "{backend:?}: the deadline passes before the file is sent");
    drop(first);

    let sum = retried(&s, &h, &csv, backend).await;
    assert_eq!(
        (sum.rows_read, sum.created, sum.skipped, sum.failed, sum.state),
        (6_000, 6_000, 0, 0, pb::ImportState::Completed as i32),
        "{backend:?}"
    );
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 6_000, "{backend:?}");
}

/// A call given up by its deadline while its import is being recorded (the database slow to
/// take the record) leaves no import "running" for its resend to wait on: the resend under the
/// same request id is taken at once, not after the import's lease (10 s), and each row is
/// written once.
async fn an_import_given_up_while_it_is_recorded_leaves_nothing_running(backend: Backend) {
    let s = start(backend).await;
    let mut csv = String::from("email\n");
    for i in 0..50 {
        csv.push_str(&format!("held{i}@example.com\n"));
    }
    let h = pb::ImportHeader {
        request_id: "held-1".into(),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    // Writes to the imports table wait until this transaction ends.
    let mut hold = s.dbs[0].db.begin_write().await.unwrap();
    if backend == Backend::Postgres {
        hold.execute(Sql::new("LOCK TABLE imports IN EXCLUSIVE MODE")).await.unwrap();
    }
    let parts = [
        pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(csv.clone().into_bytes())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) },
    ];
    let mut req = authed(futures::stream::iter(parts), &s.writer());
    req.set_timeout(std::time::Duration::from_millis(300));
    let first = answers(s.api().import_contacts(req).await).await.map(|_| ()).unwrap_err();
    // Answered by the server's deadline, or cut by the client's own timer a moment before it.
    assert!(matches!(first.code(), Code::DeadlineExceeded | Code::Cancelled), "{backend:?}: {first:?}");
    // The record goes in now, after its call was answered (on SQLite; PostgreSQL drops the
    // statement with the connection given up under it).
    hold.rollback().await.unwrap();
    for _ in 0..50 {
        let recorded: Vec<(String,)> = s.dbs[0]
            .db
            .fetch_all(Sql::new("SELECT state FROM imports WHERE account_id = $1").bind(ACCOUNT))
            .await
            .unwrap();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let waited = std::time::Instant::now();
    let sum = loop {
        match import(&s, h.clone(), &csv, 8_192).await {
            Ok(msgs) => break msgs.last().unwrap().progress.clone().unwrap(),
            Err(e) if e.code() == Code::Aborted && waited.elapsed() < std::time::Duration::from_secs(5) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{backend:?}: the resend, {:?} after the hold: {e:?}", waited.elapsed()),
        }
    };
    assert_eq!(
        (sum.rows_read, sum.created, sum.failed, sum.state),
        (50, 50, 0, pb::ImportState::Completed as i32),
        "{backend:?}"
    );
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 50, "{backend:?}");
}

/// A first part over the 4 MiB a message may be is refused as every such part is: OUT_OF_RANGE
/// saying the limit, and nothing is imported.
async fn an_import_whose_header_is_too_large_is_out_of_range(backend: Backend) {
    let s = start(backend).await;
    let h = pb::ImportHeader {
        name: "x".repeat(5 * 1024 * 1024),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    let parts = [
        pb::ImportContactsRequest { part: Some(Part::Header(h)) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(b"email\nbig@example.com\n".to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) },
    ];
    let err = answers(s.api().import_contacts(authed(futures::stream::iter(parts), &s.writer())).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{backend:?}: {err:?}");
    assert!(err.message().contains("4 MiB"), "{backend:?}: {}", err.message());
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 0, "{backend:?}: nothing imported");
    // A name past its limit is refused naming the header's field, as any part's field is.
    let h =
        pb::ImportHeader { name: "n".repeat(300), ..header(pb::ImportMode::Create, &[("email", "email")]) };
    let parts = [
        pb::ImportContactsRequest { part: Some(Part::Header(h)) },
        pb::ImportContactsRequest { part: Some(Part::Chunk(b"email\nlong@example.com\n".to_vec())) },
        pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) },
    ];
    let err = answers(s.api().import_contacts(authed(futures::stream::iter(parts), &s.writer())).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
    assert!(err.message().starts_with("header.name: "), "{backend:?}: {}", err.message());
    let bad = tonic_types::StatusExt::get_details_bad_request(&err).expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "header.name", "{backend:?}");
}

/// A file naming a mapped column twice is refused, naming the column: which of its cells a
/// contact would get is not for the import to guess. An unmapped column named twice is no
/// matter. Nothing is imported from the refused file.
async fn an_import_whose_file_names_a_mapped_column_twice_is_refused(backend: Backend) {
    let s = start(backend).await;
    let h = header(pb::ImportMode::Create, &[("email", "email"), ("Company", "company")]);
    let csv = "email,Company,notes, Company\nsame@example.com,Acme,a,Other\n";
    let err = import(&s, h.clone(), csv, 1024).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
    assert!(err.message().contains("\"Company\" twice"), "{backend:?}: {}", err.message());
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 0, "{backend:?}: nothing imported");
    let csv = "email,Company,notes,notes\nsame@example.com,Acme,a,b\n";
    let sum = import(&s, h, csv, 1024).await.unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
    assert_eq!(sum.last().unwrap().progress.as_ref().unwrap().created, 1, "{backend:?}");
}

/// Calls starting the same import at once (one request id): one import runs, the others are
/// told it is running or get its summary, and each row is written once.
async fn imports_started_at_once_under_one_request_id_run_once(backend: Backend) {
    // As many as an account may run at once (more are refused RESOURCE_EXHAUSTED before any
    // look at the request id).
    const CALLS: usize = 4;
    let s = std::sync::Arc::new(start(backend).await);
    let mut csv = String::from("email,company\n");
    for row in 0..150 {
        csv.push_str(&format!("twin{}@example.com,Company {row}\n", row % 50));
    }
    let h = pb::ImportHeader {
        request_id: "import-once".into(),
        ..header(pb::ImportMode::Upsert, &[("email", "email"), ("company", "company")])
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (s, h, csv, barrier) = (s.clone(), h.clone(), csv.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                import(&s, h, &csv, 1_000).await
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(got) => {
                let last = got.last().unwrap().progress.clone().unwrap();
                ids.insert(last.import_id);
            }
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{backend:?}: {e:?}"),
        }
    }
    // A retry once they are done answers the one import.
    let retry = import(&s, h, &csv, 1_000).await.unwrap();
    let summary = retry.last().unwrap().progress.clone().unwrap();
    ids.insert(summary.import_id.clone());
    assert_eq!(ids.len(), 1, "{backend:?}: one import for the request id, not {ids:?}");
    assert_eq!((summary.created, summary.updated), (50, 100), "{backend:?}");
    let c = s.by_email("twin7@example.com").await;
    let kept = history(&s, &c.id, "company").await.unwrap();
    let kept: Vec<&str> = kept.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(kept, ["Company 107", "Company 57", "Company 7"], "{backend:?}: each row once, newest first");
}

/// Rows near the caps are written a few megabytes at a time, not a thousand rows at a time (a
/// gigabyte a batch): the import goes through and says how far it got along the way.
async fn an_import_of_large_rows_is_written_a_few_megabytes_at_a_time(backend: Backend) {
    const ROWS: usize = 150;
    let s = start(backend).await;
    let long = |row: usize, what: &str| format!("{what} {row} {}", "a".repeat(60_000));
    let mut csv = String::from("email,company,first_name,last_name\n");
    for row in 0..ROWS {
        let cells = [long(row, "Company"), long(row, "First"), long(row, "Last")];
        csv.push_str(&format!("large{row}@example.com,{}\n", cells.join(",")));
    }
    let mapping = [
        ("email", "email"),
        ("company", "company"),
        ("first_name", "first_name"),
        ("last_name", "last_name"),
    ];
    let got = import(&s, header(pb::ImportMode::Create, &mapping), &csv, 1 << 20).await.unwrap();
    let (done, along): (Vec<_>, Vec<_>) = got.iter().partition(|m| m.done);
    let summary = done[0].progress.clone().unwrap();
    assert_eq!((summary.created, summary.failed), (ROWS as i64, 0), "{backend:?}");
    // 27 MB of values: three batches of 8 MiB or so before the last.
    assert!(along.len() >= 3, "{backend:?}: progress after each batch, {} before the end", along.len());
    let c = s.by_email("large149@example.com").await;
    assert_eq!(c.properties["company"], long(149, "Company"), "{backend:?}");
}

async fn an_export_holds_a_status_history_past_a_message_of_4_mib(backend: Backend) {
    let s = start(backend).await;
    let c = s.create("ada@example.com", &[]).await.unwrap();
    s.settle().await;
    let wide = "𠀀".repeat(250);
    let w = s.token(ACCOUNT, &["write", "admin"]);
    let mut ms =
        mpb::marketing_status_service_client::MarketingStatusServiceClient::new(s.status_channel.clone());
    // Each change holds a source id at its longest, four bytes a character: about 1.2 kB of
    // history each, past 4 MiB in all.
    for i in 0..3_700 {
        let status = if i % 2 == 0 { MarketingStatus::Marketing } else { MarketingStatus::NonMarketing };
        let req = mpb::SetMarketingStatusRequest {
            request_id: String::new(),
            target: Some(mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds {
                ids: vec![c.id.clone()],
            })),
            status: status as i32,
            source: Some(Source { r#type: SourceType::Integration as i32, id: format!("{i:06}{wide}") }),
        };
        ms.set_marketing_status(authed(req, &w)).await.unwrap();
    }
    let req = pb::ExportContactDataRequest { contact_id: c.id.clone(), ..Default::default() };
    let mut api = s.api().max_decoding_message_size(64 << 20);
    let export = api.export_contact_data(authed(req, &s.token(ACCOUNT, &["admin"]))).await;
    let export = export.unwrap_or_else(|e| panic!("{backend:?}: {e:?}")).into_inner();
    let status = &export.parts[1];
    assert!(status.json.len() > 4 << 20, "{backend:?}: {} bytes", status.json.len());
    let held: serde_json::Value = serde_json::from_str(&status.json).unwrap();
    let changes = held["status_changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3_701, "{backend:?}: its creation and every change");
}

/// Two UPSERT imports of the same addresses at once, in opposite orders: whichever creates a
/// contact, the other updates it. No row fails, neither waits on the other for ever (a
/// deadlock), and no address is made twice.
async fn upsert_imports_of_the_same_emails_at_once_update_what_the_other_made(backend: Backend) {
    let s = start(backend).await;
    // In opposite orders: each would otherwise wait on a key the other holds.
    let file = |name: &str, reversed: bool| {
        let mut rows: Vec<String> = (0..200).map(|i| format!("both{i:03}@example.com,{name}\n")).collect();
        if reversed {
            rows.reverse();
        }
        format!("email,first\n{}", rows.concat())
    };
    let h = header(pb::ImportMode::Upsert, &[("email", "email"), ("first", "first_name")]);
    // On PostgreSQL both imports look the addresses up, finding none, before either may
    // create one: inserts into contacts wait until this transaction ends.
    let mut hold = None;
    if backend == Backend::Postgres {
        let mut tx = s.dbs[0].db.begin_write().await.unwrap();
        tx.execute(Sql::new("LOCK TABLE contacts IN EXCLUSIVE MODE")).await.unwrap();
        hold = Some(tx);
    }
    let release = async {
        let Some(tx) = hold else { return };
        for _ in 0..500 {
            let waiting: Vec<(i64,)> = s.dbs[0]
                .db
                .fetch_all(Sql::new(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'contacts'::regclass",
                ))
                .await
                .unwrap();
            if waiting[0].0 >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tx.rollback().await.unwrap();
    };
    let (ann, bo) = (file("Ann", false), file("Bo", true));
    let (a, b, ()) = tokio::join!(import(&s, h.clone(), &ann, 4_096), import(&s, h, &bo, 4_096), release);
    let (a, b) = (a.unwrap(), b.unwrap());
    let (a, b) = (a.last().unwrap().progress.clone().unwrap(), b.last().unwrap().progress.clone().unwrap());
    assert_eq!((a.failed, b.failed), (0, 0), "{backend:?}: {a:?} {b:?}");
    assert_eq!((a.created + b.created, a.updated + b.updated), (200, 200), "{backend:?}: {a:?} {b:?}");
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 200, "{backend:?}");
}

/// A call cut while its import writes a batch ends the import at that batch, whatever of the
/// file had arrived: a resend is not kept waiting while the rest is written, nor until the
/// file's end would have been overdue. The resend finishes the file.
async fn an_import_whose_call_is_cut_stops_at_the_batch_it_was_writing(backend: Backend) {
    let s = start(backend).await;
    let rows = 20_000;
    let mut csv = String::from("email\n");
    for i in 0..rows {
        csv.push_str(&format!("cut{i}@example.com\n"));
    }
    let h = pb::ImportHeader {
        request_id: "cut-1".into(),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    let mut parts = vec![pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) }];
    parts.extend(
        csv.as_bytes()
            .chunks(16 * 1024)
            .map(|c| pb::ImportContactsRequest { part: Some(Part::Chunk(c.to_vec())) }),
    );
    // The whole file sent, the call held open, as by a client about to send its end.
    let stream = futures::stream::iter(parts).chain(futures::stream::pending());
    // Through a relay the test cuts, as a client's process killed or its network gone.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = relay.local_addr().unwrap();
    let server = s.addr;
    let relay = tokio::spawn(async move {
        let (mut client, _) = relay.accept().await.unwrap();
        let mut up = tokio::net::TcpStream::connect(server).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
    });
    let api =
        pb::contacts_service_client::ContactsServiceClient::new(contactier_runtime::testing::channel(via));
    let mut call = api.clone().import_contacts(authed(stream, &s.writer())).await.unwrap().into_inner();
    let first = call.message().await.unwrap().unwrap();
    assert!(!first.done, "{backend:?}");
    // Writes of contacts wait until this transaction ends; the import is held at its batch.
    let mut hold = s.dbs[0].db.begin_write().await.unwrap();
    if backend == Backend::Postgres {
        hold.execute(Sql::new("LOCK TABLE contacts IN EXCLUSIVE MODE")).await.unwrap();
    }
    relay.abort();
    drop(call);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    hold.rollback().await.unwrap();
    let mut state = (String::new(), 0);
    for _ in 0..250 {
        let got: Vec<(String, i64)> = s.dbs[0]
            .db
            .fetch_all(Sql::new("SELECT state, rows_read FROM imports WHERE account_id = $1").bind(ACCOUNT))
            .await
            .unwrap();
        state = got[0].clone();
        if state.0 != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state.0, "failed", "{backend:?}: the import after its call was cut");
    assert!(state.1 < rows, "{backend:?}: {} rows read after the call was cut", state.1);

    let sum =
        import(&s, h, &csv, 16 * 1024).await.unwrap_or_else(|e| panic!("{backend:?}: the resend: {e:?}"));
    let sum = sum.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.rows_read, sum.created, sum.failed), (rows, rows, 0), "{backend:?}");
}

/// An account runs a few imports at once on a replica; one more is refused RESOURCE_EXHAUSTED
/// (each holds a batch of rows in memory while its client sends: hundreds held open grew a
/// replica by gigabytes). Another account is not held by it, and a place given back is taken.
async fn an_account_holding_imports_open_is_refused_more_and_others_are_not(backend: Backend) {
    let s = start(backend).await;
    let h = header(pb::ImportMode::Upsert, &[("email", "email")]);
    let open = |token: String| {
        let (send, parts) = tokio::sync::mpsc::unbounded_channel();
        send.send(pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) }).unwrap();
        send.send(pb::ImportContactsRequest {
            part: Some(Part::Chunk(b"email\nopen@example.com\n".to_vec())),
        })
        .unwrap();
        let call = s.api();
        async move {
            let mut call = call;
            let answer = call
                .import_contacts(authed(tokio_stream::wrappers::UnboundedReceiverStream::new(parts), &token))
                .await;
            (send, answer)
        }
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let (send, answer) = open(s.writer()).await;
        held.push((send, answer.unwrap_or_else(|e| panic!("{backend:?}: {e:?}")).into_inner()));
    }
    let (_, refused) = open(s.writer()).await;
    let refused = refused.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{backend:?}: {refused:?}");
    assert!(refused.message().contains("4 imports at once"), "{backend:?}: {}", refused.message());
    let (send, other) = open(s.token("acct-b", &["write"])).await;
    let mut other = other.unwrap_or_else(|e| panic!("{backend:?}: another account: {e:?}")).into_inner();
    send.send(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) }).unwrap();
    while let Some(m) = other.message().await.unwrap() {
        if m.done {
            assert_eq!(m.progress.unwrap().created, 1, "{backend:?}");
        }
    }
    // One of the account's imports ends; its place is taken again.
    let (send, mut first) = held.remove(0);
    send.send(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) }).unwrap();
    while first.message().await.unwrap().is_some() {}
    let mut again = None;
    for _ in 0..100 {
        match open(s.writer()).await {
            (send, Ok(answer)) => {
                again = Some((send, answer));
                break;
            }
            (_, Err(e)) if e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (_, Err(e)) => panic!("{backend:?}: {e:?}"),
        }
    }
    assert!(again.is_some(), "{backend:?}: the place given back was not taken");
}

/// A file of refused rows is counted whole, and its first 10,000 refused rows are listed: a
/// file of empty records stored a hundred times its size in errors.
async fn an_import_lists_its_first_ten_thousand_refused_rows(backend: Backend) {
    let s = start(backend).await;
    let csv = format!("email,first\n{}", ",\n".repeat(12_000));
    let got = import(
        &s,
        header(pb::ImportMode::Create, &[("email", "email"), ("first", "first_name")]),
        &csv,
        64 * 1024,
    )
    .await
    .unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
    let sum = got.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.rows_read, sum.failed, sum.created), (12_000, 12_000, 0), "{backend:?}");
    // Refused rows are cut into batches as any are (their errors held a batch at a time), and
    // progress comes back after each.
    let reads: Vec<i64> = got.iter().map(|m| m.progress.as_ref().unwrap().rows_read).collect();
    assert_eq!(reads, (1..=12).map(|b| b * 1_000).chain([12_000]).collect::<Vec<_>>(), "{backend:?}");
    let (mut rows, mut token) = (std::collections::BTreeSet::new(), String::new());
    loop {
        let req = pb::ListImportErrorsRequest {
            import_id: sum.import_id.clone(),
            page_size: 1_000,
            page_token: token,
        };
        let page = s.api().list_import_errors(authed(req, &s.writer())).await.unwrap().into_inner();
        rows.extend(page.errors.iter().map(|e| e.row));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(rows.len(), 10_000, "{backend:?}");
    assert_eq!((rows.first(), rows.last()), (Some(&1), Some(&10_000)), "{backend:?}: the first ones");
}

/// An import of 3,000 new addresses named `prefix`NNNN under request id `prefix`, whose owner's
/// call has sent the first half of the file and written its first batch: the header, the file,
/// where the part not sent begins, the owner's sender of further parts and its answers.
async fn half_sent(
    s: &Contacts,
    prefix: &str,
) -> (
    pb::ImportHeader,
    String,
    usize,
    tokio::sync::mpsc::UnboundedSender<pb::ImportContactsRequest>,
    tonic::Streaming<pb::ImportContactsResponse>,
) {
    let mut csv = String::from("email\n");
    for i in 0..3_000 {
        csv.push_str(&format!("{prefix}{i:04}@example.com\n"));
    }
    let h = pb::ImportHeader {
        request_id: prefix.into(),
        ..header(pb::ImportMode::Create, &[("email", "email")])
    };
    let half = csv.find(&format!("{prefix}1500")).unwrap();
    let (send, parts) = tokio::sync::mpsc::unbounded_channel();
    send.send(pb::ImportContactsRequest { part: Some(Part::Header(h.clone())) }).unwrap();
    send.send(pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[..half].to_vec())) })
        .unwrap();
    let mut owner = s
        .api()
        .import_contacts(authed(tokio_stream::wrappers::UnboundedReceiverStream::new(parts), &s.writer()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owner.message().await.unwrap().unwrap().progress.unwrap().rows_read, 1_000);
    (h, csv, half, send, owner)
}

/// Drains an owner's answers to their end, which must say ABORTED that its import was taken
/// over (`what` names the run in a failure).
async fn told_taken_over(owner: &mut tonic::Streaming<pb::ImportContactsResponse>, what: &str) {
    let end = loop {
        match owner.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("{what}: the owner was not told"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::Aborted, "{what}: {end:?}");
    assert!(end.message().contains("took this import over"), "{what}: {end:?}");
}

/// An import taken over by its resend (its owner stopped beating for a lease, as a paused
/// process does) is the resend's alone: the owner, going on, writes nothing more and is told.
async fn an_import_taken_over_by_its_resend_is_left_to_it(backend: Backend) {
    let s = start(backend).await;
    let (h, csv, half, send, mut owner) = half_sent(&s, "paused").await;
    // Its beats stop, as when its process is paused past its lease.
    let stale = Sql::new("UPDATE imports SET heartbeat_at = heartbeat_at - 60000000 WHERE account_id = $1");
    s.dbs[0].db.execute(stale.bind(ACCOUNT)).await.unwrap();
    let sum =
        import(&s, h, &csv, 16 * 1024).await.unwrap_or_else(|e| panic!("{backend:?}: the resend: {e:?}"));
    let sum = sum.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.rows_read, sum.created, sum.failed), (3_000, 3_000, 0), "{backend:?}");
    // The owner goes on: the rest of its file arrives.
    send.send(pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[half..].to_vec())) })
        .unwrap();
    send.send(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) }).unwrap();
    told_taken_over(&mut owner, &format!("{backend:?}")).await;
    let req = authed(pb::GetImportRequest { import_id: sum.import_id.clone() }, &s.writer());
    let seen = s.api().get_import(req).await.unwrap().into_inner().summary.unwrap();
    assert_eq!(
        (seen.state, seen.rows_read, seen.created, seen.failed, seen.skipped),
        (pb::ImportState::Completed as i32, 3_000, 3_000, 0, 0),
        "{backend:?}: the resend's record"
    );
    let req =
        pb::ListImportErrorsRequest { import_id: sum.import_id, page_size: 10, page_token: String::new() };
    let errors = s.api().list_import_errors(authed(req, &s.writer())).await.unwrap().into_inner();
    assert!(errors.errors.is_empty(), "{backend:?}: {:?}", errors.errors);
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 3_000, "{backend:?}");
}

/// A replica stalled inside a batch's write (its process paused with the batch's transaction
/// open, the batch's contacts held in it) neither holds up the resend that takes its import
/// over nor writes that batch after it. PostgreSQL only: there replicas share the database;
/// SQLite's one process cannot stall apart from its resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_stalled_inside_a_batch_neither_holds_its_resend_nor_writes_after_it() {
    let s = start(Backend::Postgres).await;
    let db = &s.dbs[0].db;
    let (h, csv, half, send, mut owner) = half_sent(&s, "stalled").await;
    // The owner's next batch is held inside its transaction, as by its process paused there.
    let mut hold = db.begin_write().await.unwrap();
    hold.execute(Sql::new("LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE")).await.unwrap();
    let holder: i32 = hold.scalar(Sql::new("SELECT pg_backend_pid()")).await.unwrap();
    send.send(pb::ImportContactsRequest { part: Some(Part::Chunk(csv.as_bytes()[half..].to_vec())) })
        .unwrap();
    send.send(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd::default())) }).unwrap();
    let waiting = || Sql::new("SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))");
    let mut held = 0;
    for _ in 0..500 {
        held = db.scalar::<i64>(waiting().bind(holder)).await.unwrap();
        if held > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(held, 1, "the owner's second batch waits inside its transaction");
    // Its beats stop, as a paused process's do, for longer than its lease.
    let stale = Sql::new("UPDATE imports SET heartbeat_at = heartbeat_at - 60000000 WHERE account_id = $1");
    db.execute(stale.bind(ACCOUNT)).await.unwrap();
    // Its next beat (one each 2 s) finds the record no longer its own before its batch ends.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let beat = || Sql::new("SELECT heartbeat_at FROM imports WHERE account_id = $1").bind(ACCOUNT);
    let stale_beat: i64 = db.scalar(beat()).await.unwrap();
    let resend = {
        let (api, token, h, csv) = (s.api(), s.writer(), h.clone(), csv.clone());
        tokio::spawn(async move { import_with(api, &token, h, &csv, 16 * 1024).await })
    };
    // The resend takes the import over while the owner's batch is still held.
    let mut taken = false;
    for _ in 0..500 {
        if db.scalar::<i64>(beat()).await.unwrap() > stale_beat + 30_000_000 {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(taken, "the resend took the import over within 5 s");
    hold.rollback().await.unwrap();
    let sum = resend.await.unwrap().unwrap_or_else(|e| panic!("the resend: {e:?}"));
    let sum = sum.last().unwrap().progress.clone().unwrap();
    assert_eq!((sum.rows_read, sum.created, sum.failed, sum.skipped), (3_000, 3_000, 0, 0), "the resend");
    told_taken_over(&mut owner, "Postgres").await;
    let total = s.api().count_contacts(authed(pb::CountContactsRequest {}, &s.writer())).await.unwrap();
    assert_eq!(total.into_inner().total_contacts, 3_000);
    let req =
        pb::ListImportErrorsRequest { import_id: sum.import_id, page_size: 10, page_token: String::new() };
    let errors = s.api().list_import_errors(authed(req, &s.writer())).await.unwrap().into_inner();
    assert!(errors.errors.is_empty(), "{:?}", errors.errors);
}

contactier_runtime::backend_tests!(
    an_export_holds_a_status_history_past_a_message_of_4_mib,
    an_import_of_large_rows_is_written_a_few_megabytes_at_a_time,
    imports_started_at_once_under_one_request_id_run_once,
    imports_stream_rows_report_bad_ones_and_keep_the_good,
    merging_keeps_the_primary_fills_its_gaps_and_is_marketing_if_either_was,
    gdpr_consent_export_anonymise_and_erase_reach_every_service,
    an_import_cut_off_is_taken_up_again_by_its_retry,
    a_resumed_import_treats_contacts_it_made_before_the_cut_as_made,
    an_import_stream_closed_before_its_end_is_cut_off_not_complete,
    an_import_cut_by_its_deadline_is_finished_by_its_resend,
    an_import_given_up_while_it_is_recorded_leaves_nothing_running,
    an_import_whose_header_is_too_large_is_out_of_range,
    an_import_whose_file_names_a_mapped_column_twice_is_refused,
    upsert_imports_of_the_same_emails_at_once_update_what_the_other_made,
    an_import_whose_call_is_cut_stops_at_the_batch_it_was_writing,
    an_account_holding_imports_open_is_refused_more_and_others_are_not,
    an_import_lists_its_first_ten_thousand_refused_rows,
    an_import_taken_over_by_its_resend_is_left_to_it,
);
