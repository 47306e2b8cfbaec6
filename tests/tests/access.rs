//! Every RPC of every service, called as an attacker would: without a token, with an expired,
//! a forged and a wrong-audience token, and with too little scope (read-only tokens writing,
//! user tokens calling internal RPCs). Each is refused before it runs. And every RPC in the
//! contracts is served: none answers UNIMPLEMENTED to a caller that may call it.

use chrono::{TimeZone, Utc};
use contactier_e2e::System;
use contactier_runtime::auth::{Access, Authenticator};
use contactier_runtime::db::Backend;
use contactier_runtime::testing::TEST_SECRET;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// Calls `path` with an empty message (valid for every request type) and `token`.
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(());
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary(req, path, codec).await.map(|_| ())
}

/// Every method the contracts declare, by service, from the descriptor set.
fn declared() -> Vec<(String, String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(contactier_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for f in set.file {
        let package = f.package.clone().unwrap_or_default();
        if !package.starts_with("contactier.") {
            continue;
        }
        for s in f.service {
            let name = s.name.clone().unwrap_or_default();
            for m in s.method {
                let streaming = m.client_streaming() || m.server_streaming();
                out.push((format!("{package}.{name}"), m.name.clone().unwrap_or_default(), streaming));
            }
        }
    }
    out
}

fn owner(service: &str) -> &'static str {
    match service.split('.').nth(1).unwrap() {
        "contacts" => "contacts",
        "marketing_status" => "marketing-status",
        "billing" => "billing",
        "notification" => "notification",
        // The ops services run in every service (the ClockService with a manual clock).
        _ => "billing",
    }
}

async fn every_rpc_refuses_callers_without_the_right_token(backend: Backend) {
    let policies = [
        contactier_contacts::policy(),
        contactier_marketing_status::policy(),
        contactier_billing::policy(),
        contactier_notification::policy(),
        contactier_runtime::server::ops_policy(true),
    ];
    let access = |path: &str| policies.iter().find_map(|p| p.access(path));
    let callers =
        |path: &str| policies.iter().map(|p| p.callers(path)).find(|c| !c.is_empty()).unwrap_or_default();
    let s = System::start(backend, Utc.with_ymd_and_hms(2026, 4, 30, 15, 0, 0).unwrap()).await;
    let a = &s.platform.authenticator;
    let hour = chrono::Duration::hours(1);
    let expired = a.user_token("acct-a", "u", &["admin", "ops"], chrono::Duration::hours(-2));
    let forged = Authenticator::new(b"another-secret-another-secret-another", "contactier", "contactier")
        .user_token("acct-a", "u", &["admin", "ops"], hour);
    let wrong_audience = Authenticator::new(TEST_SECRET, "contactier", "someone-else").user_token(
        "acct-a",
        "u",
        &["admin", "ops"],
        hour,
    );
    let methods = declared();
    assert!(methods.len() > 80, "{} methods", methods.len());
    let mut checked = 0;
    for (service, method, streaming) in &methods {
        let path = format!("/{service}/{method}");
        let level = access(&path).unwrap_or_else(|| panic!("{path} is declared but no policy serves it"));
        let ch = s.channel(owner(service));
        for (name, token) in [
            ("no", None),
            ("an expired", Some(&expired)),
            ("a forged", Some(&forged)),
            ("a wrong-audience", Some(&wrong_audience)),
        ] {
            let err = call(ch.clone(), &path, token.map(String::as_str)).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{backend:?} {path} with {name} token: {err:?}");
        }
        // One level too little.
        let weak = match level {
            Access::Read => a.user_token("acct-a", "u", &[], hour),
            Access::Write => a.user_token("acct-a", "u", &["read"], hour),
            Access::Admin => a.user_token("acct-a", "u", &["read", "write"], hour),
            Access::Ops => a.user_token("acct-a", "u", &["read", "write", "admin"], hour),
            Access::Internal => a.user_token("acct-a", "u", &["read", "write", "admin", "ops"], hour),
        };
        let err = call(ch.clone(), &path, Some(&weak)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{backend:?} {path} ({level:?}) with too little scope: {err:?}"
        );
        // An internal RPC is open to the services whose work needs it, no other.
        if level == Access::Internal {
            assert!(!callers(&path).is_empty(), "{path}: no service may call it");
            for other in ["contacts", "marketing-status", "billing", "notification", "test"] {
                if callers(&path).iter().any(|c| c == other) {
                    continue;
                }
                let err = call(ch.clone(), &path, Some(&a.service_token(other, hour))).await.unwrap_err();
                assert_eq!(
                    err.code(),
                    Code::PermissionDenied,
                    "{backend:?} {path} called by {other}: {err:?}"
                );
            }
        }
        // Enough scope: served (whatever it then says of an empty request).
        if !streaming {
            let strong = match level {
                Access::Internal => a.service_token(&callers(&path)[0], hour),
                _ => a.user_token("acct-a", "u", &["read", "write", "admin", "ops"], hour),
            };
            if let Err(e) = call(ch.clone(), &path, Some(&strong)).await {
                assert!(
                    !matches!(
                        e.code(),
                        Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied | Code::Internal
                    ),
                    "{backend:?} {path}: {e:?}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, methods.len());
}

contactier_runtime::backend_tests!(every_rpc_refuses_callers_without_the_right_token);
