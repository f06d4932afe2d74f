//! Client ID Metadata Documents (MCP 2025-11-25): a client may use an https
//! URL as its `client_id`; the document at that URL is its registration.
//!
//! Fetching URLs named by strangers is a server-side request forgery risk,
//! so: https only, a path required, no credentials or fragment, every address
//! the host resolves to must be public, no redirects, 5 s, 16 KiB. The
//! document must name itself (`client_id` equal to the URL) and passes the
//! same checks as a dynamic registration; it is cached in the store.

use std::net::IpAddr;
use std::time::Duration;

use openidconnect::reqwest;
use serde_json::{Map, Value};
use url::Url;

use crate::oauth::register::parse_registration;
use crate::server::AppState;
use crate::store::{ClientRecord, Namespace, StoreError};

const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_CACHE: Duration = Duration::from_secs(300);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CACHE: Duration = Duration::from_secs(3600);
/// Marks a client record that came from a metadata document.
pub const FROM_DOCUMENT: &str = "client_id_metadata_document";

#[derive(Debug, thiserror::Error)]
pub enum CimdError {
    #[error("the client_id URL is not acceptable: {0}")]
    Url(String),
    #[error("the client metadata document could not be fetched: {0}")]
    Fetch(String),
    #[error("the client metadata document is not acceptable: {0}")]
    Document(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a client_id is a metadata document URL (rather than an id this
/// server issued).
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// The client: from the store, or fetched from its document.
pub async fn find_client(
    app: &AppState,
    client_id: &str,
) -> Result<Option<ClientRecord>, CimdError> {
    if let Some(client) = app
        .records
        .get::<ClientRecord>(Namespace::Client, client_id)
        .await?
    {
        return Ok(Some(client));
    }
    if !is_document_url(client_id) || !app.settings.config.registration.client_metadata_documents {
        return Ok(None);
    }
    let insecure = app.settings.config.registration.insecure_metadata_documents;
    let url = check_url(client_id, insecure)?;
    if !insecure {
        check_host_is_public(&url).await?;
    }
    let (document, max_age) = fetch(&url).await?;
    let client = from_document(
        client_id,
        &document,
        &app.settings.config.registration.allowed_schemes,
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
pub fn check_url(client_id: &str, insecure: bool) -> Result<Url, CimdError> {
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
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
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

/// Refuses hosts that resolve to loopback, private, link-local or other
/// non-public addresses.
async fn check_host_is_public(url: &Url) -> Result<(), CimdError> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| CimdError::Fetch(format!("cannot resolve {host}: {e}")))?
        .map(|a| a.ip())
        .collect();
    if addresses.is_empty() {
        return Err(CimdError::Fetch(format!("{host} has no address")));
    }
    if let Some(private) = addresses.iter().find(|ip| !is_public(ip)) {
        return Err(CimdError::Url(format!(
            "{host} resolves to a non-public address ({private})"
        )));
    }
    Ok(())
}

pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

async fn fetch(url: &Url) -> Result<(Map<String, Value>, Option<Duration>), CimdError> {
    let http = reqwest::ClientBuilder::new()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("mcp-oauth-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CimdError::Fetch(e.to_string()))?;
    let response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| CimdError::Fetch(crate::error::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(CimdError::Fetch(format!("status {}", response.status())));
    }
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
        })
        .map(Duration::from_secs);
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CimdError::Fetch(e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(CimdError::Document(format!(
                "larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let document: Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| CimdError::Document(format!("not a JSON object: {e}")))?;
    Ok((document, max_age))
}

/// The client a document describes. It must name itself, be a public client
/// (no secret can be shared through a public document), and pass the
/// registration checks.
pub fn from_document(
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
    fn private_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
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
