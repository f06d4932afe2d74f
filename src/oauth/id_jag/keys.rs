//! The trusted issuers' public keys: each issuer's JWK set, fetched over
//! https (http only on loopback), cached for `id_jag.jwks_cache`, fetched
//! again when an assertion names a key the cached set lacks — at most once
//! per `id_jag.jwks_min_refetch` — and bounded in size. The upstream
//! provider's set is found through its discovery document.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use openidconnect::reqwest;
use tokio::sync::Mutex;

use crate::config::TrustedIssuer;
use crate::net::is_loopback_host;

/// The largest JWK set or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys kept from one set.
const MAX_KEYS: usize = 64;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no key could be found for an assertion.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The issuer's key set could not be fetched (the issuer's problem, or
    /// the network's): temporarily unavailable.
    #[error("the issuer's keys could not be fetched: {0}")]
    Unavailable(String),
    /// The set has no key for this assertion.
    #[error("{0}")]
    NoKey(String),
}

struct CachedSet {
    keys: Vec<Jwk>,
    fetched: Instant,
}

/// The key sets of every trusted issuer, shared by all requests.
pub(crate) struct KeySets {
    http: reqwest::Client,
    cache_for: Duration,
    min_refetch: Duration,
    /// By JWK set URL; never held across a fetch.
    sets: Mutex<HashMap<String, CachedSet>>,
    /// The upstream provider's `jwks_uri`, once discovered.
    upstream_jwks: Mutex<Option<String>>,
    /// Last fetch attempt per URL (successful or not), for the bound.
    attempts: Mutex<HashMap<String, Instant>>,
}

impl KeySets {
    /// Key sets cached for `cache_for`, fetched again at most every
    /// `min_refetch`.
    pub(crate) fn new(cache_for: Duration, min_refetch: Duration) -> Result<Self, String> {
        let http = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("mcp-oauth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(KeySets {
            http,
            cache_for,
            min_refetch,
            sets: Mutex::new(HashMap::new()),
            upstream_jwks: Mutex::new(None),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// The key that verifies an assertion of `issuer` with key id `kid`.
    pub(crate) async fn key(
        &self,
        issuer: &TrustedIssuer,
        kid: Option<&str>,
    ) -> Result<Jwk, KeyError> {
        let url = match &issuer.jwks_url {
            Some(url) => url.clone(),
            None => self.upstream_jwks_url(&issuer.issuer).await?,
        };
        let cached = self
            .sets
            .lock()
            .await
            .get(&url)
            .map(|set| (set.fetched.elapsed() < self.cache_for, pick(&set.keys, kid)));
        // A fresh set that has the key answers; one that lacks it is
        // fetched again (the issuer may have rotated), boundedly.
        let cached = match cached {
            Some((true, Ok(key))) => return Ok(key),
            Some((_, found)) => Some(found),
            None => None,
        };
        if !self.may_fetch(&url).await {
            return cached.unwrap_or_else(|| {
                Err(KeyError::Unavailable(
                    "fetched moments ago without success; try again shortly".into(),
                ))
            });
        }
        // Fetched without holding the cache: a slow issuer delays only
        // its own assertions.
        let keys = match self.fetch_set(&url).await {
            Ok(keys) => keys,
            // An issuer that cannot be reached: the keys it published last
            // still verify (its rotation waits until it answers again).
            Err(e) => {
                return match cached {
                    Some(Ok(key)) => {
                        tracing::warn!(jwks_url = %url, error = %e, "using an ID-JAG issuer's cached keys");
                        Ok(key)
                    }
                    _ => Err(e),
                }
            }
        };
        tracing::info!(jwks_url = %url, keys = keys.len(), "fetched an ID-JAG issuer's keys");
        let found = pick(&keys, kid);
        self.sets.lock().await.insert(
            url,
            CachedSet {
                keys,
                fetched: Instant::now(),
            },
        );
        found
    }

    /// Whether `url` may be fetched now (records the attempt if so).
    async fn may_fetch(&self, url: &str) -> bool {
        let mut attempts = self.attempts.lock().await;
        if attempts
            .get(url)
            .is_some_and(|at| at.elapsed() < self.min_refetch)
        {
            return false;
        }
        attempts.insert(url.to_string(), Instant::now());
        true
    }

    async fn upstream_jwks_url(&self, issuer: &str) -> Result<String, KeyError> {
        let mut known = self.upstream_jwks.lock().await;
        if let Some(url) = known.as_ref() {
            return Ok(url.clone());
        }
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        if !self.may_fetch(&discovery).await {
            return Err(KeyError::Unavailable(
                "the provider's discovery failed moments ago".into(),
            ));
        }
        let document: serde_json::Value = serde_json::from_slice(&self.get(&discovery).await?)
            .map_err(|e| KeyError::Unavailable(format!("{discovery}: not JSON ({e})")))?;
        let url = document
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| KeyError::Unavailable(format!("{discovery} names no jwks_uri")))?
            .to_string();
        check_url(&url)?;
        *known = Some(url.clone());
        Ok(url)
    }

    async fn fetch_set(&self, url: &str) -> Result<Vec<Jwk>, KeyError> {
        check_url(url)?;
        let body = self.get(url).await?;
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet = serde_json::from_slice(&body)
            .map_err(|e| KeyError::Unavailable(format!("{url}: not a JWK set ({e})")))?;
        // Keys of kinds this crate does not know are skipped, not fatal;
        // shared secrets (`oct`) are never public keys.
        Ok(set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .take(MAX_KEYS)
            .collect())
    }

    /// GETs `url`, refusing redirects, errors and bodies over the bound.
    async fn get(&self, url: &str) -> Result<Vec<u8>, KeyError> {
        let unavailable = |m: String| KeyError::Unavailable(format!("{url}: {m}"));
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(crate::error::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("answered {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOCUMENT_BYTES)
        {
            return Err(unavailable("larger than 256 KiB".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(unavailable("larger than 256 KiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Keys travel over https, or over http to a loopback host (tests).
fn check_url(url: &str) -> Result<(), KeyError> {
    let parsed = url::Url::parse(url).map_err(|e| KeyError::Unavailable(format!("{url}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(parsed.host_str().unwrap_or_default()) => Ok(()),
        _ => Err(KeyError::Unavailable(format!("{url} is not https"))),
    }
}

/// The key named `kid`; without a `kid`, the set's only signing key.
fn pick(keys: &[Jwk], kid: Option<&str>) -> Result<Jwk, KeyError> {
    let signing = |k: &&Jwk| {
        !matches!(
            k.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        )
    };
    match kid {
        Some(kid) => keys
            .iter()
            .filter(signing)
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .cloned()
            .ok_or_else(|| KeyError::NoKey(format!("the issuer publishes no key `{kid}`"))),
        None => {
            let mut candidates = keys.iter().filter(signing);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Ok(only.clone()),
                (None, _) => Err(KeyError::NoKey(
                    "the issuer publishes no signing key".into(),
                )),
                (Some(_), Some(_)) => Err(KeyError::NoKey(
                    "the assertion names no kid and the issuer publishes several keys".into(),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kid: &str, use_: &str) -> Jwk {
        serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "use": use_, "kid": kid,
            "x": "CkqbRQkkEVcUKbFlaVgYfBw5rA41bPfF89kXluFaj4E",
        }))
        .unwrap()
    }

    #[test]
    fn a_key_is_picked_by_kid_or_as_the_only_signing_key() {
        let keys = [key("a", "sig"), key("b", "sig"), key("e", "enc")];
        assert_eq!(
            pick(&keys, Some("b")).unwrap().common.key_id.as_deref(),
            Some("b")
        );
        assert!(matches!(pick(&keys, Some("e")), Err(KeyError::NoKey(_))));
        assert!(matches!(pick(&keys, Some("z")), Err(KeyError::NoKey(_))));
        assert!(matches!(pick(&keys, None), Err(KeyError::NoKey(_))));
        let one = [key("a", "sig"), key("e", "enc")];
        assert_eq!(
            pick(&one, None).unwrap().common.key_id.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn keys_travel_over_https_or_to_loopback() {
        assert!(check_url("https://idp.example.com/keys").is_ok());
        assert!(check_url("http://127.0.0.1:8080/keys").is_ok());
        assert!(check_url("http://localhost/keys").is_ok());
        assert!(check_url("http://idp.example.com/keys").is_err());
        assert!(check_url("file:///etc/keys").is_err());
    }
}
