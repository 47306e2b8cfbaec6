//! Keys of trusted token issuers (an identity provider, Kubernetes' service-account issuer),
//! fetched from their JWKS and kept by key id.
//!
//! Keys stay until a fetch that succeeds replaces them, so an issuer's outage never fails a
//! token whose key is already known. A token naming an unknown key id fetches again, at most
//! once per [`Issuers::refetch_every`] per issuer, so forged key ids cannot make us hammer it.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The algorithms an issuer's token may use; HMAC never (its key would be public).
pub const ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// One trusted issuer, as configured: `ISSUER` (keys found by OIDC discovery) or
/// `ISSUER=JWKS_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub jwks_url: Option<String>,
}

impl IssuerConfig {
    /// Parses the comma-separated list of `CONTACTIER_OIDC_ISSUERS`.
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<IssuerConfig>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (issuer, jwks_url) = match item.split_once('=') {
                    Some((i, u)) => (i.trim(), Some(u.trim().to_owned())),
                    None => (item, None),
                };
                for url in std::iter::once(issuer).chain(jwks_url.as_deref()) {
                    // Keys fetched in the clear could be swapped on the way: https only, but
                    // for a server on this machine.
                    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                        .iter()
                        .any(|p| url.starts_with(p) && url[p.len()..].starts_with([':', '/']));
                    if !(url.starts_with("https://") || loopback) {
                        anyhow::bail!("CONTACTIER_OIDC_ISSUERS: {url:?} is not an https URL");
                    }
                }
                Ok(IssuerConfig { issuer: issuer.trim_end_matches('/').to_owned(), jwks_url })
            })
            .collect()
    }
}

/// How keys are fetched: extra trusted CA and a bearer token (Kubernetes serves its JWKS only
/// to callers allowed to read it).
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// The one issuer the token goes to (the cluster's): never to another.
    pub token_issuer: Option<String>,
}

struct Issuer {
    config: IssuerConfig,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When keys were last fetched (tried), for the bound on refetching.
    fetched: Mutex<Option<Instant>>,
    /// One fetch at a time per issuer; callers that wait use its result.
    fetching: tokio::sync::Mutex<()>,
}

/// Every trusted issuer and its keys.
#[derive(Clone)]
pub struct Issuers {
    issuers: Arc<Vec<Issuer>>,
    http: reqwest::Client,
    token_file: Option<PathBuf>,
    token_issuer: Option<String>,
    refetch_every: Duration,
}

/// The least time between two fetches of one issuer's keys.
pub const REFETCH_EVERY: Duration = Duration::from_secs(30);

/// How long fetched keys are used before they are fetched again.
pub const KEYS_FOR: Duration = Duration::from_secs(300);

/// What looking up a token's key found.
pub enum Lookup {
    Found(Arc<DecodingKey>),
    /// The issuer is trusted but the key id is not known (yet).
    Unknown,
    /// No configured issuer has this name.
    NotTrusted,
}

impl Issuers {
    pub fn new(configs: Vec<IssuerConfig>, options: &FetchOptions) -> anyhow::Result<Self> {
        // The HTTPS client needs a process-wide crypto provider; ring, as for gRPC TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent("Contactier-JWKS/1")
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("CONTACTIER_JWKS_CA_FILE {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("CONTACTIER_JWKS_CA_FILE {}: {e}", path.display()))?;
            http = http.tls_certs_merge(certs);
        }
        let issuers = configs
            .into_iter()
            .map(|config| Issuer {
                config,
                keys: RwLock::default(),
                fetched: Mutex::default(),
                fetching: tokio::sync::Mutex::default(),
            })
            .collect();
        Ok(Self {
            issuers: Arc::new(issuers),
            http: http.build()?,
            token_file: options.token_file.clone(),
            token_issuer: options.token_issuer.as_deref().map(|i| i.trim_end_matches('/').to_owned()),
            refetch_every: REFETCH_EVERY,
        })
    }

    /// Sets the least time between two fetches of one issuer's keys.
    pub fn refetch_every(mut self, every: Duration) -> Self {
        self.refetch_every = every;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn trusts(&self, issuer: &str) -> bool {
        self.find(issuer).is_some()
    }

    fn find(&self, issuer: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.config.issuer == issuer.trim_end_matches('/'))
    }

    /// The key `kid` of `issuer`, from what is known now. Keys older than [`KEYS_FOR`] are
    /// fetched again in the background, so a key the issuer withdrew stops working soon even
    /// while its id is still presented.
    pub fn key(&self, issuer: &str, kid: &str) -> Lookup {
        let Some(i) = self.find(issuer) else { return Lookup::NotTrusted };
        let stale = i.fetched.lock().expect("fetched").is_some_and(|at| at.elapsed() > KEYS_FOR);
        if stale && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (me, issuer) = (self.clone(), issuer.to_owned());
            rt.spawn(async move { me.refresh(&issuer).await });
        }
        match i.keys.read().expect("keys").get(kid) {
            Some(k) => Lookup::Found(k.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Fetches `issuer`'s keys again unless that was done lately. Errors are logged and the
    /// keys already known kept.
    pub async fn refresh(&self, issuer: &str) {
        let Some(i) = self.find(issuer) else { return };
        let _one = i.fetching.lock().await;
        {
            let mut fetched = i.fetched.lock().expect("fetched");
            if fetched.is_some_and(|at| at.elapsed() < self.refetch_every) {
                return;
            }
            *fetched = Some(Instant::now());
        }
        match self.fetch(&i.config).await {
            Ok(keys) => {
                tracing::info!(issuer = %i.config.issuer, keys = keys.len(), "issuer keys fetched");
                *i.keys.write().expect("keys") = keys;
            }
            Err(e) => {
                tracing::warn!(issuer = %i.config.issuer, error = %format!("{e:#}"), "issuer keys could not be fetched; keeping the known ones");
            }
        }
    }

    async fn fetch(&self, config: &IssuerConfig) -> anyhow::Result<HashMap<String, Arc<DecodingKey>>> {
        let with_token = self.token_issuer.as_deref() == Some(config.issuer.as_str());
        let url = if let Some(u) = &config.jwks_url {
            u.clone()
        } else {
            #[derive(serde::Deserialize)]
            struct Discovery {
                jwks_uri: String,
            }
            let d: Discovery =
                self.get(&format!("{}/.well-known/openid-configuration", config.issuer), with_token).await?;
            d.jwks_uri
        };
        let set: JwkSet = self.get(&url, with_token).await?;
        Ok(keys_of(&set))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str, with_token: bool) -> anyhow::Result<T> {
        let mut request = self.http.get(url);
        if let Some(path) = self.token_file.as_ref().filter(|_| with_token) {
            // Read each time: the token is rotated in place.
            let token = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("CONTACTIER_JWKS_TOKEN_FILE {}: {e}", path.display()))?;
            request = request.bearer_auth(token.trim());
        }
        let response = request.send().await?.error_for_status()?;
        // A key set is small; a huge answer is not one.
        let body = response.bytes().await?;
        anyhow::ensure!(body.len() <= 1 << 20, "{url}: answer over 1 MiB");
        Ok(serde_json::from_slice(&body)?)
    }
}

/// The usable keys of a set, by key id: asymmetric, with an id, meant for signatures.
fn keys_of(set: &JwkSet) -> HashMap<String, Arc<DecodingKey>> {
    set.keys
        .iter()
        .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
        .filter(|k| {
            k.common.public_key_use.as_ref().is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature)
        })
        .filter_map(|k| Some((k.common.key_id.clone()?, Arc::new(DecodingKey::from_jwk(k).ok()?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_listed_with_or_without_their_key_url() {
        let list = IssuerConfig::parse_list(
            " https://idp.example.com/ , https://kubernetes.default.svc.cluster.local=https://kubernetes.default.svc/openid/v1/jwks",
        )
        .unwrap();
        assert_eq!(
            list,
            vec![
                IssuerConfig { issuer: "https://idp.example.com".into(), jwks_url: None },
                IssuerConfig {
                    issuer: "https://kubernetes.default.svc.cluster.local".into(),
                    jwks_url: Some("https://kubernetes.default.svc/openid/v1/jwks".into()),
                },
            ]
        );
        let e = IssuerConfig::parse_list("idp.example.com").unwrap_err();
        assert!(e.to_string().contains("CONTACTIER_OIDC_ISSUERS"), "{e}");
    }

    #[test]
    fn a_key_set_keeps_signing_keys_with_an_id_only() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
    }
}
