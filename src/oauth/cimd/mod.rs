//! Client ID Metadata Documents (MCP 2025-11-25): a client may use an https
//! URL as its `client_id`; the document at that URL is its registration.
//!
//! Fetching URLs named by strangers is a server-side request forgery risk,
//! so: https only, a path required, no credentials or fragment; the name is
//! resolved once per connection by a resolver that hands the HTTP client only
//! public addresses (so a second, rebound answer is never used); no proxies,
//! no redirects, 5 s, 16 KiB. Why a fetch failed is logged, never told to the
//! caller: the proxy must not become a port scanner. The document must name
//! itself (`client_id` equal to the URL) and passes the same checks as a
//! dynamic registration; it is cached in the store.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use url::{Host, Url};

use crate::oauth::register::parse_registration;
use crate::oauth::OAuthState;
use crate::store::{ClientRecord, Namespace, StoreError};

mod fetch;
mod public_address;

pub(crate) use fetch::PublicAddressResolver;
pub(crate) use public_address::is_public;

use fetch::{fetch, FetchFailure, SystemLookup};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_CACHE: Duration = Duration::from_secs(300);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CACHE: Duration = Duration::from_secs(3600);
/// Marks a client record that came from a metadata document.
pub(crate) const FROM_DOCUMENT: &str = "client_id_metadata_document";

/// Why a metadata document client was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CimdError {
    /// The client_id is not a URL a document may be fetched from.
    #[error("the client_id URL is not acceptable: {0}")]
    Url(String),
    /// Deliberately says nothing more: the reason (an address, a refused
    /// connection, a TLS error, a status) is in the log only.
    #[error("the client metadata document could not be fetched from a public https address")]
    Fetch,
    /// The document did not pass the registration checks.
    #[error("the client metadata document is not acceptable: {0}")]
    Document(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a client_id is a metadata document URL (rather than an id this
/// server issued).
pub(crate) fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// The client: from `[[clients]]`, from the store, or fetched from its
/// document.
pub(crate) async fn find_client(
    app: &OAuthState,
    client_id: &str,
) -> Result<Option<ClientRecord>, CimdError> {
    if let Some(client) = app.configured_client(client_id) {
        return Ok(Some(client));
    }
    if let Some(client) = app
        .records
        .get::<ClientRecord>(Namespace::Client, client_id)
        .await?
    {
        return Ok(Some(client));
    }
    if !is_document_url(client_id) || !app.settings.registration.client_metadata_documents {
        return Ok(None);
    }
    let insecure = app.settings.registration.insecure_metadata_documents;
    let url = check_url(client_id, insecure)?;
    let resolver = PublicAddressResolver {
        lookup: Arc::new(SystemLookup),
        allow_private: insecure,
    };
    let (document, max_age) = fetch(&url, resolver, FETCH_TIMEOUT)
        .await
        .map_err(|failure| {
            tracing::warn!(client_id, error = %failure, "client metadata document fetch failed");
            match failure {
                FetchFailure::Document(why) => CimdError::Document(why),
                _ => CimdError::Fetch,
            }
        })?;
    let client = from_document(
        client_id,
        &document,
        &app.settings.registration.allowed_schemes,
    )?;
    let ttl = max_age.unwrap_or(DEFAULT_CACHE).clamp(MIN_CACHE, MAX_CACHE);
    app.records
        .put(Namespace::Client, client_id, &client, ttl)
        .await?;
    tracing::info!(
        client_id,
        client_name = client.client_name.as_deref().unwrap_or_default(),
        "client metadata document accepted"
    );
    Ok(Some(client))
}

/// https, a host, a path, no credentials, fragment or dot segments.
pub(crate) fn check_url(client_id: &str, insecure: bool) -> Result<Url, CimdError> {
    let bad = |m: &str| CimdError::Url(m.to_string());
    if client_id.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    let url = Url::parse(client_id).map_err(|e| CimdError::Url(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        _ => return Err(bad("must use https")),
    }
    let host = url.host().ok_or_else(|| bad("has no host"))?;
    crate::oauth::redirect_uri::check_host(&host).map_err(CimdError::Url)?;
    // The HTTP client connects to an IP literal without asking the resolver.
    let literal = match host {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    };
    if literal.is_some_and(|ip| !insecure && !is_public(&ip)) {
        return Err(bad("names a non-public address"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if client_id.contains('#') {
        return Err(bad("must not have a fragment"));
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err(bad("must have a path"));
    }
    // The URL must be written exactly as it normalises (no "/./", "..").
    if url.as_str() != client_id {
        return Err(bad("is not in normal form"));
    }
    Ok(url)
}

/// The client a document describes. It must name itself, be a public client
/// (no secret can be shared through a public document), and pass the
/// registration checks.
pub(crate) fn from_document(
    client_id: &str,
    document: &Map<String, Value>,
    allowed_schemes: &[String],
) -> Result<ClientRecord, CimdError> {
    if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(CimdError::Document(
            "its client_id is not the URL it was fetched from".into(),
        ));
    }
    let method = document
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if method != "none" {
        return Err(CimdError::Document(format!(
            "token_endpoint_auth_method `{method}` is not supported for metadata documents; use none"
        )));
    }
    let mut request = document.clone();
    request.insert("token_endpoint_auth_method".into(), "none".into());
    let mut client = parse_registration(&request, allowed_schemes, 10)
        .map_err(|e| CimdError::Document(e.description))?;
    client.client_id = client_id.to_string();
    client
        .metadata
        .insert(FROM_DOCUMENT.into(), Value::Bool(true));
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_clean_https_urls_with_a_path() {
        assert!(check_url("https://app.example.com/client.json", false).is_ok());
        for bad in [
            "http://app.example.com/client.json",
            "https://app.example.com",
            "https://app.example.com/",
            "https://user:pw@app.example.com/c.json",
            "https://app.example.com/c.json#x",
            "https://app.example.com/a/../c.json",
            "javascript:alert(1)",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/client.json", true).is_ok());
    }

    #[test]
    fn client_id_urls_name_readable_public_hosts() {
        for bad in [
            "https://*.example.com/c.json",
            "https://a_b.example.com/c.json",
            "https://a..example.com/c.json",
            "https://0x7f000001/c.json",
            "https://127.0.0.1/c.json",
            "https://[::1]/c.json",
            "https://[::ffff:a9fe:a9fe]/c.json",
            "https://169.254.169.254/c.json",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("https://93.184.216.34/c.json", false).is_ok());
    }

    #[test]
    fn documents_must_name_themselves_and_be_public_clients() {
        let id = "https://app.example.com/client.json";
        let good = json!({"client_id": id, "client_name": "App", "redirect_uris": ["http://127.0.0.1:33418/callback"]});
        let c = from_document(id, good.as_object().unwrap(), &[]).unwrap();
        assert_eq!(c.client_id, id);
        assert!(c.is_public());
        let other = json!({"client_id": "https://evil.example/c.json", "redirect_uris": ["https://a.example/cb"]});
        assert!(from_document(id, other.as_object().unwrap(), &[]).is_err());
        let secret = json!({"client_id": id, "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "client_secret_basic"});
        assert!(from_document(id, secret.as_object().unwrap(), &[]).is_err());
        let bad_redirect = json!({"client_id": id, "redirect_uris": ["javascript:alert(1)"]});
        assert!(from_document(id, bad_redirect.as_object().unwrap(), &[]).is_err());
    }
}
