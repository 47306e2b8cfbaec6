//! Bearer JWT authentication and per-method authorization.
//!
//! Every RPC but health and reflection needs a token. A user token names its account; it can
//! never act on another. A service token names no account: it acts on the account named by the
//! `x-account-id` header, and only service tokens may call the internal RPCs.

use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// Header a service token uses to name the account it acts on.
pub const ACCOUNT_HEADER: &str = "x-account-id";
/// The same for an account id a header cannot carry as text (beyond printable ASCII): its
/// UTF-8 in a binary header, which gRPC sends base64-encoded.
pub const ACCOUNT_HEADER_BIN: &str = "x-account-id-bin";

/// Names `account` in a service's request on its behalf: as text when it can be, else in
/// binary, so that every account id a token may carry reaches the other service whole.
pub fn name_account(metadata: &mut tonic::metadata::MetadataMap, account: &str) {
    let printable = account.bytes().all(|b| (0x20..0x7f).contains(&b)) && account.trim() == account;
    match tonic::metadata::MetadataValue::try_from(account) {
        Ok(text) if printable => {
            metadata.insert(ACCOUNT_HEADER, text);
        }
        _ => {
            metadata.insert_bin(
                ACCOUNT_HEADER_BIN,
                tonic::metadata::MetadataValue::from_bytes(account.as_bytes()),
            );
        }
    }
}

/// The account a request names in either header; None when neither holds one (or the binary
/// one is not base64 of UTF-8).
fn named_account(headers: &http::HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine;
    if let Some(text) = headers.get(ACCOUNT_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(text.into());
    }
    let encoded = headers.get(ACCOUNT_HEADER_BIN)?.as_bytes();
    // gRPC sends binary headers unpadded and accepts them padded.
    let encoded = encoded.strip_suffix(b"==").or_else(|| encoded.strip_suffix(b"=")).unwrap_or(encoded);
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok().map(Into::into)
}

/// Paths served without a token: probes and discovery. Health's Watch stream is not among
/// them: a stream held open without a token would cost the server for nothing.
const EXEMPT_PREFIXES: &[&str] = &["/grpc.health.v1.Health/Check", "/grpc.reflection."];

/// Whether `path` is served without a token.
pub fn is_exempt(path: &str) -> bool {
    EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// What a method needs. Each level includes the ones before it: admin may write, write may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
    Admin,
    /// Operating the deployment (the manual clock).
    Ops,
    /// Service-to-service RPCs: service tokens only.
    Internal,
}

impl Access {
    fn scope(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
            Access::Ops => "ops",
            Access::Internal => "internal",
        }
    }
}

/// Whether a token is a person's or a service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    User,
    Service,
}

/// JWT claims of a Contactier token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id, or the calling service's name.
    pub sub: String,
    /// The account of a user token; absent on service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acct: Option<String>,
    /// Space-separated scopes: read, write, admin, ops.
    #[serde(default)]
    pub scope: String,
    pub kind: TokenKind,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    /// When the token was issued; optional.
    #[serde(default)]
    pub iat: i64,
}

/// The most characters of a token's subject or account: they name users and accounts in every
/// service's records.
const MAX_CLAIM: usize = 256;

/// A subject or account claim fit to be kept: not empty, not too long, no control characters.
fn plain_claim(v: &str) -> bool {
    !v.is_empty() && v.chars().count() <= MAX_CLAIM && !v.chars().any(char::is_control)
}

/// The authenticated caller of one request, resolved to the account it acts on.
#[derive(Clone, Debug)]
pub struct Principal {
    pub subject: String,
    pub kind: TokenKind,
    account: Option<String>,
    scopes: Vec<String>,
}

impl Principal {
    /// The account this request acts on.
    pub fn account_id(&self) -> Result<&str, Status> {
        self.account.as_deref().ok_or_else(|| {
            Status::invalid_argument(format!("{ACCOUNT_HEADER}: the header is required with a service token"))
        })
    }

    /// The user behind the request; `None` for service tokens.
    pub fn user_id(&self) -> Option<&str> {
        (self.kind == TokenKind::User).then_some(self.subject.as_str())
    }

    /// Whether the caller may act on `account_id` named in a request body (internal RPCs).
    pub fn check_account(&self, account_id: &str) -> Result<(), Status> {
        match (self.kind, self.account.as_deref()) {
            (TokenKind::Service, _) => Ok(()),
            (TokenKind::User, Some(own)) if own == account_id => Ok(()),
            _ => Err(Status::permission_denied("token is not valid for this account")),
        }
    }

    /// [`Principal::check_account`] for an account id a call names in `field`, which must be
    /// one a token could name: a service cannot make records no user could reach.
    pub fn check_account_at(&self, field: &str, account_id: &str) -> Result<(), Status> {
        if account_id.is_empty() {
            return Err(crate::error::Error::invalid(field, "required").into());
        }
        if !plain_claim(account_id) {
            let reason = format!("1 to {MAX_CLAIM} characters without control characters");
            return Err(crate::error::Error::invalid(field, reason).into());
        }
        self.check_account(account_id)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    fn allows(&self, access: Access) -> bool {
        match access {
            Access::Internal => self.kind == TokenKind::Service,
            Access::Ops => self.has_scope("ops"),
            Access::Read => ["read", "write", "admin"].iter().any(|s| self.has_scope(s)),
            Access::Write => ["write", "admin"].iter().any(|s| self.has_scope(s)),
            Access::Admin => self.has_scope("admin"),
        }
    }

    /// The principal of a request that passed the auth layer.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::unauthenticated("no authenticated principal"))
    }
}

/// Which access each method needs, keyed by gRPC path (`/package.Service/Method`).
/// Methods not listed are refused (UNIMPLEMENTED) before they run, so a new RPC stays closed
/// until someone decides its access.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    methods: HashMap<String, Access>,
    /// The services that may call each internal method.
    callers: HashMap<String, Vec<String>>,
}

impl Policy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the access of `methods` of `service` (its full name, e.g. `contactier.ops.v1.ClockService`).
    pub fn allow(mut self, service: &str, access: Access, methods: &[&str]) -> Self {
        assert!(access != Access::Internal, "internal methods name their callers: use Policy::internal");
        for m in methods {
            self.methods.insert(format!("/{service}/{m}"), access);
        }
        self
    }

    /// Opens internal `methods` of `service` to the services named in `callers` only: a
    /// service's identity reaches only the RPCs its work needs.
    pub fn internal(mut self, service: &str, methods: &[&str], callers: &[&str]) -> Self {
        for m in methods {
            let path = format!("/{service}/{m}");
            self.callers.insert(path.clone(), callers.iter().map(|c| (*c).to_owned()).collect());
            self.methods.insert(path, Access::Internal);
        }
        self
    }

    pub fn merge(mut self, other: Policy) -> Self {
        self.methods.extend(other.methods);
        self.callers.extend(other.callers);
        self
    }

    /// The services that may call the internal method `path`.
    pub fn callers(&self, path: &str) -> &[String] {
        self.callers.get(path).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether `principal` may call `path`, which needs `access`.
    fn permits(&self, path: &str, access: Access, principal: &Principal) -> bool {
        principal.allows(access)
            && (access != Access::Internal
                || self.callers.get(path).is_some_and(|c| c.contains(&principal.subject)))
    }

    pub fn access(&self, path: &str) -> Option<Access> {
        self.methods.get(path).copied()
    }

    /// Every method path the policy opens, with its access.
    pub fn methods(&self) -> impl Iterator<Item = (&str, Access)> {
        self.methods.iter().map(|(p, a)| (p.as_str(), *a))
    }
}

/// Tokens verified lately, at most.
const VERIFIED_TOKENS: u64 = 10_000;
/// How long a verified token is trusted without checking its signature again (its expiry is
/// checked on every call).
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The deployment's own HMAC key: development, tests and setups without an identity provider.
#[derive(Clone)]
struct Hmac {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Verifies tokens: HS256 ones signed with the deployment's secret (when it has one) and
/// RS256, ES256 and EdDSA ones of trusted issuers (an identity provider, Kubernetes'
/// service-account issuer) against their published keys.
#[derive(Clone)]
pub struct Authenticator {
    hmac: Option<Hmac>,
    validation: Validation,
    issuer: String,
    audience: String,
    issuers: Option<crate::jwks::Issuers>,
    /// Token subjects of trusted issuers that are services, with the service each one is:
    /// `system:serviceaccount:contactier:contactier-billing` is billing.
    identities: Arc<HashMap<String, String>>,
    /// The issuer whose tokens may be service identities.
    service_issuer: Option<String>,
    /// Claims of tokens that passed verification, by the token's whole text. A caller sends
    /// the same token on every call; checking its signature and claims each time cost more
    /// than the rest of a small read. A changed token is a different key.
    verified: moka::sync::Cache<String, Arc<Claims>>,
}

impl std::fmt::Debug for Authenticator {
    // The keys stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// What checking a token found.
pub enum Verdict {
    Valid(Principal),
    Refused(Status),
    /// Signed by a trusted issuer with a key not known yet: fetch its keys and check again.
    FetchKeys(String),
}

/// Claims of a trusted issuer's token: no `kind` (only configuration makes a service), and
/// `aud` may be a list (checked by the validation).
#[derive(Deserialize)]
struct IssuedClaims {
    sub: String,
    #[serde(default)]
    acct: Option<String>,
    #[serde(default)]
    scope: String,
    exp: i64,
    #[serde(default)]
    iat: i64,
}

impl Authenticator {
    /// Verifies and signs with one HMAC secret shared by the deployment.
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let hmac =
            Hmac { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) };
        Self::build(Some(hmac), issuer, audience)
    }

    /// Verifies trusted issuers' tokens only; signs nothing.
    pub fn without_secret(issuer: &str, audience: &str) -> Self {
        Self::build(None, issuer, audience)
    }

    fn build(hmac: Option<Hmac>, issuer: &str, audience: &str) -> Self {
        Self {
            hmac,
            validation: validation(Algorithm::HS256, issuer, audience),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            issuers: None,
            identities: Arc::default(),
            service_issuer: None,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }
    }

    /// Also accepts tokens of `issuers`; a subject listed in `identities` is the service named
    /// there, any other subject a user of the account its `acct` claim names. Only tokens of
    /// `service_issuer` may be services: another trusted issuer (a user identity provider)
    /// naming a service account's subject is a user like any other.
    pub fn with_issuers(
        mut self,
        issuers: crate::jwks::Issuers,
        identities: HashMap<String, String>,
        service_issuer: Option<String>,
    ) -> Self {
        self.issuers = (!issuers.is_empty()).then_some(issuers);
        self.identities = Arc::new(identities);
        self.service_issuer = service_issuer;
        self
    }

    /// Whether this authenticator can sign tokens (it holds the HMAC secret).
    pub fn can_sign(&self) -> bool {
        self.hmac.is_some()
    }

    /// A token for a user of `account` with `scopes`, valid for `ttl`.
    pub fn user_token(&self, account: &str, user: &str, scopes: &[&str], ttl: chrono::Duration) -> String {
        self.sign(user, Some(account), TokenKind::User, scopes, ttl)
    }

    /// A token for a service calling other services.
    pub fn service_token(&self, service: &str, ttl: chrono::Duration) -> String {
        self.sign(service, None, TokenKind::Service, &["read", "write", "admin"], ttl)
    }

    fn sign(
        &self,
        sub: &str,
        acct: Option<&str>,
        kind: TokenKind,
        scopes: &[&str],
        ttl: chrono::Duration,
    ) -> String {
        let hmac = self.hmac.as_ref().expect("signing tokens needs CONTACTIER_JWT_SECRET");
        // Token lifetimes are wall-clock: the manual clock moves business time, not expiry.
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            acct: acct.map(str::to_owned),
            scope: scopes.join(" "),
            kind,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.num_seconds(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hmac.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies a bearer token with the keys known now and resolves the account the request
    /// acts on. A trusted issuer's key not known yet refuses; [`Authenticator::verify`] fetches it.
    pub fn authenticate(&self, token: &str, account_header: Option<&str>) -> Result<Principal, Status> {
        match self.verdict(token, account_header) {
            Verdict::Valid(p) => Ok(p),
            Verdict::Refused(s) => Err(s),
            Verdict::FetchKeys(_) => Err(Status::unauthenticated("invalid token: unknown signing key")),
        }
    }

    /// As [`Authenticator::authenticate`], fetching a trusted issuer's keys when the token's key
    /// is not known (at most as often as the issuer's refetch bound allows).
    pub async fn verify(&self, token: &str, account_header: Option<&str>) -> Result<Principal, Status> {
        if let Verdict::FetchKeys(issuer) = self.verdict(token, account_header) {
            self.fetch_keys(&issuer).await;
        }
        self.authenticate(token, account_header)
    }

    /// Fetches a trusted issuer's keys again (bounded in rate).
    pub async fn fetch_keys(&self, issuer: &str) {
        if let Some(issuers) = &self.issuers {
            issuers.refresh(issuer).await;
        }
    }

    /// Checks a token with the keys known now.
    pub fn verdict(&self, token: &str, account_header: Option<&str>) -> Verdict {
        self.verdict_at(token, account_header, chrono::Utc::now().timestamp())
    }

    fn verdict_at(&self, token: &str, account_header: Option<&str>, now: i64) -> Verdict {
        let claims = match self.verified.get(token) {
            // The same rule as the first verification: expired once `exp` is a leeway past.
            Some(c) if c.exp < now - self.validation.leeway as i64 => {
                return Verdict::Refused(Status::unauthenticated("invalid token: expired"));
            }
            Some(c) => c,
            None => match self.verify_new(token) {
                Ok(claims) => {
                    let claims = Arc::new(claims);
                    self.verified.insert(token.to_owned(), claims.clone());
                    claims
                }
                Err(v) => return v,
            },
        };
        match principal(&claims, account_header) {
            Ok(p) => Verdict::Valid(p),
            Err(s) => Verdict::Refused(s),
        }
    }

    /// Verifies a token not seen lately: its signature, then its claims.
    fn verify_new(&self, token: &str) -> Result<Claims, Verdict> {
        let refused = |why: &str| Verdict::Refused(Status::unauthenticated(format!("invalid token: {why}")));
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed"))?;
        let claims = if header.alg == Algorithm::HS256 {
            let hmac = self.hmac.as_ref().ok_or_else(|| refused("HS256 tokens are not accepted here"))?;
            jsonwebtoken::decode::<Claims>(token, &hmac.decoding, &self.validation)
                .map_err(|e| refused(reason(&e)))?
                .claims
        } else if crate::jwks::ALGORITHMS.contains(&header.alg) {
            let issuers = self.issuers.as_ref().ok_or_else(|| refused("wrong issuer"))?;
            // The issuer picks the keys; the signature then proves it.
            let issuer = unverified_issuer(token).ok_or_else(|| refused("malformed"))?;
            let kid = header.kid.as_deref().ok_or_else(|| refused("no key id"))?;
            let key = match issuers.key(&issuer, kid) {
                crate::jwks::Lookup::Found(key) => key,
                crate::jwks::Lookup::Unknown => return Err(Verdict::FetchKeys(issuer)),
                crate::jwks::Lookup::NotTrusted => return Err(refused("wrong issuer")),
            };
            let v = validation(header.alg, &issuer, &self.audience);
            let c = jsonwebtoken::decode::<IssuedClaims>(token, &key, &v)
                .map_err(|e| refused(reason(&e)))?
                .claims;
            self.issued(c, issuer)
        } else {
            return Err(refused("unsupported algorithm"));
        };
        if !plain_claim(&claims.sub) || claims.acct.as_deref().is_some_and(|a| !plain_claim(a)) {
            return Err(refused(&format!(
                "sub and acct must be 1 to {MAX_CLAIM} characters without control characters"
            )));
        }
        Ok(claims)
    }

    /// A trusted issuer's claims as ours: a configured service identity is that service with
    /// full scopes; anyone else is a user of the account the token names.
    #[cfg(test)]
    fn authenticate_at(
        &self,
        token: &str,
        account_header: Option<&str>,
        now: i64,
    ) -> Result<Principal, Status> {
        match self.verdict_at(token, account_header, now) {
            Verdict::Valid(p) => Ok(p),
            Verdict::Refused(s) => Err(s),
            Verdict::FetchKeys(_) => Err(Status::unauthenticated("unknown signing key")),
        }
    }

    fn issued(&self, c: IssuedClaims, iss: String) -> Claims {
        let aud = self.audience.clone();
        let from_services = self.service_issuer.as_deref() == Some(iss.trim_end_matches('/'));
        match self.identities.get(&c.sub).filter(|_| from_services) {
            Some(service) => Claims {
                sub: service.clone(),
                acct: None,
                scope: "read write admin".into(),
                kind: TokenKind::Service,
                iss,
                aud,
                exp: c.exp,
                iat: c.iat,
            },
            None => Claims {
                sub: c.sub,
                acct: c.acct,
                scope: c.scope,
                kind: TokenKind::User,
                iss,
                aud,
                exp: c.exp,
                iat: c.iat,
            },
        }
    }
}

fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // A token is refused before its `nbf` as after its `exp`, with the same leeway.
    v.validate_nbf = true;
    v.leeway = 30;
    v
}

/// The `iss` claim of a token, before its signature is checked.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// The principal of verified claims, acting on the account the request names.
fn principal(claims: &Claims, account_header: Option<&str>) -> Result<Principal, Status> {
    let account = match claims.kind {
        TokenKind::User => {
            let own = claims.acct.clone().filter(|a| !a.is_empty()).ok_or_else(|| {
                Status::unauthenticated("invalid token: a user token must name its account (acct)")
            })?;
            if account_header.is_some_and(|h| h != own) {
                return Err(Status::permission_denied("token is not valid for this account"));
            }
            Some(own)
        }
        TokenKind::Service => account_header.map(str::to_owned),
    };
    Ok(Principal {
        subject: claims.sub.clone(),
        kind: claims.kind,
        account,
        scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
    })
}

fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::ImmatureSignature => "not yet valid",
        _ => "malformed",
    }
}

/// Tower layer that authenticates and authorizes every request against a [`Policy`].
#[derive(Clone)]
pub struct AuthLayer {
    inner: Arc<(Authenticator, Policy)>,
    limiter: Option<crate::limits::AccountLimiter>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator, policy: Policy) -> Self {
        Self { inner: Arc::new((authenticator, policy)), limiter: None }
    }

    /// Holds each account's calls to `limiter`'s rate (users only; services are not limited).
    pub fn limited(self, limiter: Option<crate::limits::AccountLimiter>) -> Self {
        Self { limiter, ..self }
    }

    fn check<B>(&self, req: &Request<B>) -> Verdict {
        let path = req.uri().path();
        let authenticator = &self.inner.0;
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let Some(token) = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        else {
            return Verdict::Refused(Status::unauthenticated("missing bearer token"));
        };
        let account = named_account(req.headers());
        let principal = match authenticator.verdict(token.trim(), account.as_deref()) {
            Verdict::Valid(p) => p,
            other => return other,
        };
        // Known from here on, refused or not: the call's log line names the account.
        note_account(req, &principal);
        match self.admit(path, principal) {
            Ok(p) => Verdict::Valid(p),
            Err(s) => Verdict::Refused(s),
        }
    }

    fn admit(&self, path: &str, principal: Principal) -> Result<Principal, Status> {
        let policy = &self.inner.1;
        let access =
            policy.access(path).ok_or_else(|| Status::unimplemented(format!("{path} is not served here")))?;
        if !policy.permits(path, access, &principal) {
            return Err(match access {
                Access::Internal if principal.kind == TokenKind::Service => {
                    Status::permission_denied(format!("{} may not call {path}", principal.subject))
                }
                _ => Status::permission_denied(format!("requires {} access", access.scope())),
            });
        }
        if let (Some(limiter), TokenKind::User, Some(account)) =
            (&self.limiter, principal.kind, principal.account.as_deref())
        {
            limiter.check(account)?;
        }
        Ok(principal)
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { layer: self.clone(), inner }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    layer: AuthLayer,
    inner: S,
}

/// Tells the call's log line which account it acts on.
fn note_account<B>(req: &Request<B>, principal: &Principal) {
    if let (Some(info), Some(account)) =
        (req.extensions().get::<crate::telemetry::CallInfo>(), principal.account.as_deref())
    {
        info.set_account(account);
    }
}

/// The refusal as a response; the call's one log line (see [`crate::telemetry`]) tells of it.
fn refused<RB: Default, E>(status: Status) -> Result<Response<RB>, E> {
    Ok(status.into_http())
}

impl<S, B, RB> tower_service::Service<Request<B>> for AuthService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::BoxFuture<'static, Result<Response<RB>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures::future::{Either, FutureExt};
        if is_exempt(req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        match self.layer.check(&req) {
            Verdict::Valid(p) => {
                req.extensions_mut().insert(p);
                Either::Left(self.inner.call(req))
            }
            Verdict::Refused(status) => Either::Right(futures::future::ready(refused(status)).boxed()),
            Verdict::FetchKeys(issuer) => {
                // The ready service goes with the request; this one waits for readiness again.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let layer = self.layer.clone();
                Either::Right(
                    async move {
                        layer.inner.0.fetch_keys(&issuer).await;
                        match layer.check(&req) {
                            Verdict::Valid(p) => {
                                req.extensions_mut().insert(p);
                                inner.call(req).await
                            }
                            Verdict::Refused(status) => refused(status),
                            Verdict::FetchKeys(_) => {
                                refused(Status::unauthenticated("invalid token: unknown signing key"))
                            }
                        }
                    }
                    .boxed(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(b"test-secret-test-secret-test-secret", "contactier", "contactier")
    }

    #[test]
    fn user_token_resolves_its_own_account() {
        let a = auth();
        let t = a.user_token("acct-a", "u1", &["read"], chrono::Duration::minutes(5));
        let p = a.authenticate(&t, None).unwrap();
        assert_eq!(p.account_id().unwrap(), "acct-a");
        assert_eq!(p.user_id(), Some("u1"));
        assert!(p.check_account("acct-a").is_ok());
        assert_eq!(p.check_account("acct-b").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(p.check_account_at("account_id", "acct-a").is_ok());
        let tab = p.check_account_at("plans[2].account_id", "acct\ta").unwrap_err();
        assert_eq!(tab.code(), tonic::Code::InvalidArgument);
        assert!(tab.message().starts_with("plans[2].account_id"), "{}", tab.message());
        let empty = p.check_account_at("account_id", "").unwrap_err();
        assert_eq!((empty.code(), empty.message()), (tonic::Code::InvalidArgument, "account_id: required"));
    }

    #[test]
    fn user_token_cannot_name_another_account() {
        let a = auth();
        let t = a.user_token("acct-a", "u1", &["read"], chrono::Duration::minutes(5));
        let err = a.authenticate(&t, Some("acct-b")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn service_token_acts_on_the_named_account() {
        let a = auth();
        let t = a.service_token("billing", chrono::Duration::minutes(5));
        let p = a.authenticate(&t, Some("acct-b")).unwrap();
        assert_eq!(p.account_id().unwrap(), "acct-b");
        assert_eq!(p.user_id(), None);
        assert!(p.allows(Access::Internal));
        let none = a.authenticate(&t, None).unwrap();
        assert_eq!(none.account_id().unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn every_account_a_token_may_carry_is_named_whole_between_services() {
        let a = auth();
        let t = a.service_token("contacts", chrono::Duration::minutes(5));
        for account in ["acct-a", "кот-акк", "𠀀𠀁𠀂", " padded ", "a=b==", &"語".repeat(256)] {
            let mut metadata = tonic::metadata::MetadataMap::new();
            name_account(&mut metadata, account);
            let headers = metadata.into_headers();
            let named = named_account(&headers);
            assert_eq!(named.as_deref(), Some(account));
            let p = a.authenticate(&t, named.as_deref()).unwrap();
            assert_eq!(p.account_id().unwrap(), account);
        }
        // Padded base64, as other gRPC clients may send it, is read as well.
        let mut headers = http::HeaderMap::new();
        headers.insert(ACCOUNT_HEADER_BIN, http::HeaderValue::from_static("0LrQvtGC"));
        assert_eq!(named_account(&headers).as_deref(), Some("кот"));
        headers.insert(ACCOUNT_HEADER_BIN, http::HeaderValue::from_static("0LrQvg=="));
        assert_eq!(named_account(&headers).as_deref(), Some("ко"));
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let a = auth();
        let expired = a.user_token("acct", "u", &["read"], chrono::Duration::minutes(-10));
        assert!(a.authenticate(&expired, None).unwrap_err().message().contains("expired"));

        let other = Authenticator::new(b"another-secret-another-secret-xx", "contactier", "contactier");
        let forged = other.user_token("acct", "u", &["admin"], chrono::Duration::minutes(5));
        assert!(a.authenticate(&forged, None).unwrap_err().message().contains("signature"));

        let wrong_aud = Authenticator::new(b"test-secret-test-secret-test-secret", "contactier", "elsewhere")
            .user_token("acct", "u", &["read"], chrono::Duration::minutes(5));
        assert!(a.authenticate(&wrong_aud, None).unwrap_err().message().contains("audience"));

        assert_eq!(a.authenticate("not.a.jwt", None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn subjects_and_accounts_are_plain_text_of_a_bounded_length() {
        let a = auth();
        let hour = chrono::Duration::hours(1);
        for (acct, user) in
            [("acct\0x", "u"), ("acct", "u\0"), ("acct", &"u".repeat(257)), (&"a".repeat(300), "u")]
        {
            let t = a.user_token(acct, user, &["read"], hour);
            let err = a.authenticate(&t, None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{acct:?} {user:?}");
        }
        assert!(a.authenticate(&a.user_token(&"a".repeat(256), "u", &["read"], hour), None).is_ok());
    }

    #[test]
    fn a_token_is_refused_before_its_not_before_time() {
        #[derive(Serialize)]
        struct WithNbf<'a> {
            #[serde(flatten)]
            claims: &'a Claims,
            nbf: i64,
        }
        let a = auth();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "u1".into(),
            acct: Some("acct-a".into()),
            scope: "read".into(),
            kind: TokenKind::User,
            iss: "contactier".into(),
            aud: "contactier".into(),
            exp: now + 3600,
            iat: now,
        };
        let sign = |nbf: i64| {
            let key = EncodingKey::from_secret(b"test-secret-test-secret-test-secret");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &WithNbf { claims: &claims, nbf }, &key)
                .unwrap()
        };
        let early = a.authenticate(&sign(now + 600), None).unwrap_err();
        assert_eq!(
            (early.code(), early.message()),
            (tonic::Code::Unauthenticated, "invalid token: not yet valid")
        );
        assert!(a.authenticate(&sign(now + 10), None).is_ok(), "within the leeway");
        assert!(a.authenticate(&sign(now - 10), None).is_ok());
    }

    #[test]
    fn a_token_verified_before_still_expires_and_a_changed_one_is_verified_again() {
        let a = auth();
        let t = a.user_token("acct-a", "u1", &["read"], chrono::Duration::minutes(5));
        let now = chrono::Utc::now().timestamp();
        assert_eq!(a.authenticate_at(&t, None, now).unwrap().account_id().unwrap(), "acct-a");
        // Within the leeway after its expiry, then past it.
        assert!(a.authenticate_at(&t, None, now + 5 * 60 + 20).is_ok());
        let late = a.authenticate_at(&t, None, now + 5 * 60 + 40).unwrap_err();
        assert_eq!((late.code(), late.message()), (tonic::Code::Unauthenticated, "invalid token: expired"));
        // The same claims under another signature are not the verified token.
        let (body, _) = t.rsplit_once('.').unwrap();
        let tampered = format!("{body}.{}", "A".repeat(43));
        assert!(a.authenticate_at(&tampered, None, now).unwrap_err().message().contains("signature"));
        // Nor is a user token's account header checked only once.
        let err = a.authenticate_at(&t, Some("acct-b"), now).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn access_levels_nest_and_internal_is_for_services() {
        let a = auth();
        let p = |scopes: &[&str]| {
            a.authenticate(&a.user_token("x", "u", scopes, chrono::Duration::minutes(1)), None).unwrap()
        };
        let reader = p(&["read"]);
        assert!(reader.allows(Access::Read) && !reader.allows(Access::Write));
        let writer = p(&["write"]);
        assert!(writer.allows(Access::Read) && writer.allows(Access::Write) && !writer.allows(Access::Admin));
        let admin = p(&["admin"]);
        assert!(admin.allows(Access::Write) && !admin.allows(Access::Ops));
        assert!(!admin.allows(Access::Internal), "a user token never calls internal RPCs");
        assert!(p(&["ops"]).allows(Access::Ops));
    }

    #[tokio::test]
    async fn each_account_is_held_to_its_rate_and_services_are_not() {
        use tower::{Layer, Service, ServiceExt};
        let one = std::num::NonZeroU32::new(1).unwrap();
        let limiter = crate::limits::AccountLimiter::new(crate::limits::RateLimit {
            per_second: one,
            burst: std::num::NonZeroU32::new(3).unwrap(),
        });
        let policy = Policy::new().allow("contactier.x.v1.X", Access::Read, &["Get"]);
        let handler = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::empty()))
        });
        let mut svc = AuthLayer::new(auth(), policy).limited(Some(limiter)).layer(handler);
        let a = auth();
        let mut call = async |token: &str, account: Option<&str>| {
            let mut req = Request::builder()
                .uri("/contactier.x.v1.X/Get")
                .header("authorization", format!("Bearer {token}"));
            if let Some(acct) = account {
                req = req.header(ACCOUNT_HEADER, acct);
            }
            let resp = svc.ready().await.unwrap().call(req.body(()).unwrap()).await.unwrap();
            resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned())
        };
        let user_a = a.user_token("acct-a", "u1", &["read"], chrono::Duration::minutes(5));
        for _ in 0..3 {
            assert_eq!(call(&user_a, None).await, None, "within the burst");
        }
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        assert_eq!(call(&user_a, None).await, Some(exhausted), "past it");
        let user_b = a.user_token("acct-b", "u2", &["read"], chrono::Duration::minutes(5));
        assert_eq!(call(&user_b, None).await, None, "another account has its own");
        let service = a.service_token("billing", chrono::Duration::minutes(5));
        for _ in 0..10 {
            assert_eq!(call(&service, Some("acct-a")).await, None, "services are not limited");
        }
    }
}
