//! Tokens of trusted issuers: verified against their published keys (RS256, ES256, EdDSA),
//! keys rotated by id and fetched again at a bounded rate, an issuer's outage survived, and
//! service identities from projected service-account tokens allowed or refused per RPC.

use contactier_runtime::auth::{Access, AuthLayer, Authenticator, Policy, TokenKind};
use contactier_runtime::jwks::{FetchOptions, IssuerConfig, Issuers};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

const AUDIENCE: &str = "contactier";
const BILLING_SA: &str = "system:serviceaccount:contactier:contactier-billing";

fn public(name: &str) -> Value {
    let all: Value = serde_json::from_str(include_str!("keys/public.json")).unwrap();
    all[name].clone()
}

fn private(name: &str) -> (EncodingKey, Algorithm, String) {
    let pem = std::fs::read(format!("{}/tests/keys/{name}.pem", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let kid = public(name)["kid"].as_str().unwrap().to_owned();
    match name {
        "rsa" => (EncodingKey::from_rsa_pem(&pem).unwrap(), Algorithm::RS256, kid),
        "ed" => (EncodingKey::from_ed_pem(&pem).unwrap(), Algorithm::EdDSA, kid),
        _ => (EncodingKey::from_ec_pem(&pem).unwrap(), Algorithm::ES256, kid),
    }
}

/// An identity provider on loopback: OIDC discovery and a JWKS that can change or go down.
struct Provider {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    /// The Authorization header of each request, "" when none.
    authorizations: Arc<Mutex<Vec<String>>>,
}

impl Provider {
    async fn start(keys: &[&str]) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let p = Provider {
            issuer: issuer.clone(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| public(k)).collect())),
            fetches: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
            authorizations: Arc::default(),
        };
        let (keys, fetches, up, seen) =
            (p.keys.clone(), p.fetches.clone(), p.up.clone(), p.authorizations.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (keys, fetches, up, issuer, seen) =
                    (keys.clone(), fetches.clone(), up.clone(), issuer.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let authorization = request
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("authorization:").map(|v| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    seen.lock().unwrap().push(authorization);
                    let (status, body) = if !up.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "{}".to_owned())
                    } else if path == "/.well-known/openid-configuration" {
                        (
                            "200 OK",
                            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}).to_string(),
                        )
                    } else if path == "/keys" {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", json!({"keys": *keys.lock().unwrap()}).to_string())
                    } else {
                        ("404 Not Found", "{}".to_owned())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        p
    }

    fn serve(&self, keys: &[&str]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| public(k)).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// A token signed with the key `name`, with these claims over the usual ones.
    fn token(&self, name: &str, claims: Value) -> String {
        let (key, alg, kid) = private(name);
        let now = chrono::Utc::now().timestamp();
        let mut all = json!({"iss": self.issuer, "aud": [AUDIENCE], "iat": now, "exp": now + 600});
        all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        let mut header = Header::new(alg);
        header.kid = Some(kid);
        jsonwebtoken::encode(&header, &all, &key).unwrap()
    }

    fn authenticator(&self, refetch: Duration) -> Authenticator {
        let issuers = Issuers::new(
            vec![IssuerConfig { issuer: self.issuer.clone(), jwks_url: None }],
            &FetchOptions::default(),
        )
        .unwrap()
        .refetch_every(refetch);
        let identities = HashMap::from([(BILLING_SA.to_owned(), "billing".to_owned())]);
        Authenticator::without_secret("contactier", AUDIENCE).with_issuers(
            issuers,
            identities,
            Some(self.issuer.clone()),
        )
    }
}

fn user(sub: &str) -> Value {
    json!({"sub": sub, "acct": "acct-1", "scope": "read write"})
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_of_a_trusted_issuer_are_verified_by_key_id() {
    let idp = Provider::start(&["rsa", "ec-1", "ed"]).await;
    let auth = idp.authenticator(Duration::from_secs(30));
    for key in ["rsa", "ec-1", "ed"] {
        let p = auth.verify(&idp.token(key, user(&format!("user-{key}"))), None).await.unwrap();
        assert_eq!(
            (p.subject.as_str(), p.kind, p.account_id().unwrap()),
            (&*format!("user-{key}"), TokenKind::User, "acct-1")
        );
        assert!(p.has_scope("write") && !p.has_scope("admin"), "{key}");
    }
    assert_eq!(idp.fetches(), 1, "the keys are fetched once and kept");

    let refused = |t: String| {
        let auth = auth.clone();
        async move { auth.verify(&t, None).await.unwrap_err() }
    };
    // A user token must name its account; a forged issuer, a foreign audience, an expired
    // token and an HS256 token (no secret here) are all refused.
    let e = refused(idp.token("ec-1", json!({"sub": "no-account"}))).await;
    assert!(e.message().contains("acct"), "{e:?}");
    let e = refused(idp.token("ec-1", json!({"sub": "u", "acct": "a", "iss": "http://elsewhere"}))).await;
    assert!(e.message().contains("wrong issuer"), "{e:?}");
    let e = refused(idp.token("ec-1", json!({"sub": "u", "acct": "a", "aud": ["another-product"]}))).await;
    assert!(e.message().contains("wrong audience"), "{e:?}");
    let e = refused(
        idp.token("ec-1", json!({"sub": "u", "acct": "a", "exp": chrono::Utc::now().timestamp() - 120})),
    )
    .await;
    assert!(e.message().contains("expired"), "{e:?}");
    let hs = Authenticator::new(b"an-hmac-secret-an-hmac-secret-an-hmac", &idp.issuer, AUDIENCE).user_token(
        "acct-1",
        "u",
        &["admin"],
        chrono::Duration::minutes(5),
    );
    assert!(refused(hs).await.message().contains("HS256"));
    // A key of another family under a known id is no signature.
    let (ec, _, _) = private("ec-2");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ed-1".into());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": "u", "acct": "a", "exp": now + 60});
    assert_eq!(
        refused(jsonwebtoken::encode(&header, &claims, &ec).unwrap()).await.code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_unknown_key_ids_refetch_at_a_bounded_rate() {
    let idp = Provider::start(&["ec-1"]).await;
    let auth = idp.authenticator(Duration::from_millis(300));
    auth.verify(&idp.token("ec-1", user("before")), None).await.unwrap();
    assert_eq!(idp.fetches(), 1);

    // The issuer rotates: ec-2 signs from now on and ec-1 is withdrawn.
    idp.serve(&["ec-2"]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let p = auth.verify(&idp.token("ec-2", user("after")), None).await.unwrap();
    assert_eq!(p.subject, "after");
    assert_eq!(idp.fetches(), 2, "an unknown key id fetched the keys again");
    let e = auth.verify(&idp.token("ec-1", user("withdrawn")), None).await.unwrap_err();
    assert!(e.message().contains("unknown signing key"), "{e:?}");

    // A flood of forged key ids costs the issuer at most one fetch per interval.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = idp.fetches();
    let forged: Vec<_> = (0..50)
        .map(|i| {
            let (key, _, _) = private("ec-2");
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(format!("forged-{i}"));
            let now = chrono::Utc::now().timestamp();
            let claims =
                json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": "x", "acct": "a", "exp": now + 60});
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        })
        .collect();
    let results = futures::future::join_all(forged.iter().map(|t| auth.verify(t, None))).await;
    assert!(results.iter().all(std::result::Result::is_err));
    assert_eq!(idp.fetches() - before, 1, "fifty unknown key ids, one fetch");
}

#[tokio::test]
async fn an_issuer_outage_does_not_fail_tokens_whose_key_is_known() {
    let idp = Provider::start(&["rsa", "ed"]).await;
    let auth = idp.authenticator(Duration::ZERO);
    auth.verify(&idp.token("rsa", user("first")), None).await.unwrap();
    idp.up.store(false, Ordering::SeqCst);
    // New tokens (not seen before) with a known key verify; an unknown key is refused cleanly.
    for i in 0..3 {
        let p = auth.verify(&idp.token("ed", user(&format!("during-{i}"))), None).await.unwrap();
        assert_eq!(p.account_id().unwrap(), "acct-1");
    }
    let e = auth.verify(&idp.token("ec-1", user("new-key")), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // The failed fetch kept the known keys.
    auth.verify(&idp.token("rsa", user("still")), None).await.unwrap();
}

/// What the auth layer answers for `path` called with `token`: the grpc-status, 0 for OK.
async fn call(layer: &AuthLayer, path: &str, token: &str, account: Option<&str>) -> (i32, String) {
    let inner = tower::service_fn(|req: http::Request<()>| async move {
        let who = req.extensions().get::<contactier_runtime::auth::Principal>().map(|p| p.subject.clone());
        Ok::<_, std::convert::Infallible>(http::Response::new(who.unwrap_or_default()))
    });
    let mut req = http::Request::builder().uri(path).header("authorization", format!("Bearer {token}"));
    if let Some(a) = account {
        req = req.header("x-account-id", a);
    }
    let response = layer.layer(inner).oneshot(req.body(()).unwrap()).await.unwrap();
    let code =
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap().parse().unwrap()).unwrap_or(0);
    // grpc-message is percent-encoded; its spaces are enough to read it here.
    let message = response.headers().get("grpc-message").map(|v| v.to_str().unwrap().replace("%20", " "));
    (code, message.unwrap_or_else(|| response.into_body()))
}

#[tokio::test]
async fn projected_service_account_tokens_are_service_identities_allowed_per_rpc() {
    let idp = Provider::start(&["ec-1"]).await;
    let policy = Policy::new()
        .allow("contactier.billing.v1.BillingService", Access::Read, &["GetUsage"])
        .internal(
            "contactier.marketing_status.v1.MarketingStatusInternalService",
            &["ApplyUpdateDate"],
            &["billing"],
        )
        .internal(
            "contactier.billing.v1.BillingInternalService",
            &["ApplyCountEvents"],
            &["marketing-status"],
        );
    let layer = AuthLayer::new(idp.authenticator(Duration::from_secs(30)), policy);
    let projected =
        |sub: &str| idp.token("ec-1", json!({"sub": sub, "kubernetes.io": {"namespace": "contactier"}}));

    // Billing's service account is billing: it may run update dates on marketing-status ...
    let billing = projected(BILLING_SA);
    let update_date = "/contactier.marketing_status.v1.MarketingStatusInternalService/ApplyUpdateDate";
    assert_eq!(call(&layer, update_date, &billing, Some("acct-1")).await, (0, "billing".into()));
    // ... and read an account's public data, but not report marketing counts to billing.
    assert_eq!(
        call(&layer, "/contactier.billing.v1.BillingService/GetUsage", &billing, Some("acct-1")).await.0,
        0
    );
    let (code, message) =
        call(&layer, "/contactier.billing.v1.BillingInternalService/ApplyCountEvents", &billing, None).await;
    assert_eq!(code, tonic::Code::PermissionDenied as i32);
    assert!(message.contains("billing may not call"), "{message}");

    // Another workload's service account is no service at all, whatever it claims.
    let stranger =
        idp.token("ec-1", json!({"sub": "system:serviceaccount:contactier:default", "kind": "service"}));
    let (code, message) = call(&layer, update_date, &stranger, Some("acct-1")).await;
    assert_eq!(code, tonic::Code::Unauthenticated as i32, "{message}");
    // A user of an account may not call internal RPCs either.
    let person = idp.token("ec-1", json!({"sub": "u", "acct": "acct-1", "scope": "admin"}));
    assert_eq!(call(&layer, update_date, &person, None).await.0, tonic::Code::PermissionDenied as i32);
}

#[tokio::test]
async fn only_the_service_issuer_makes_services_and_gets_the_api_token() {
    let cluster = Provider::start(&["ec-1"]).await;
    let people = Provider::start(&["ed"]).await;
    let dir = tempfile::tempdir().unwrap();
    let api_token = dir.path().join("api-token");
    std::fs::write(&api_token, "cluster-api-token\n").unwrap();
    let configs =
        [&cluster, &people].map(|p| IssuerConfig { issuer: p.issuer.clone(), jwks_url: None }).to_vec();
    let options = FetchOptions {
        ca_file: None,
        token_file: Some(api_token),
        token_issuer: Some(cluster.issuer.clone()),
    };
    let identities = HashMap::from([(BILLING_SA.to_owned(), "billing".to_owned())]);
    let auth = Authenticator::without_secret("contactier", AUDIENCE).with_issuers(
        Issuers::new(configs, &options).unwrap(),
        identities,
        Some(cluster.issuer.clone()),
    );
    let p = auth.verify(&cluster.token("ec-1", json!({"sub": BILLING_SA})), None).await.unwrap();
    assert_eq!((p.subject.as_str(), p.kind), ("billing", TokenKind::Service));
    // The people's identity provider cannot mint a service, whatever subject it names.
    let e = auth.verify(&people.token("ed", json!({"sub": BILLING_SA})), None).await.unwrap_err();
    assert!(e.message().contains("acct"), "{e:?}");
    let p =
        auth.verify(&people.token("ed", json!({"sub": BILLING_SA, "acct": "acct-1"})), None).await.unwrap();
    assert_eq!(p.kind, TokenKind::User);
    // The cluster's API token went to the cluster's issuer only.
    let to_cluster = cluster.authorizations.lock().unwrap().clone();
    assert!(
        !to_cluster.is_empty() && to_cluster.iter().all(|a| a == "bearer cluster-api-token"),
        "{to_cluster:?}"
    );
    let to_people = people.authorizations.lock().unwrap().clone();
    assert!(!to_people.is_empty() && to_people.iter().all(std::string::String::is_empty), "{to_people:?}");
}
