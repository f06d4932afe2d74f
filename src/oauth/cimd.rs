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

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::reqwest;
use serde_json::{Map, Value};
use url::{Host, Url};

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
    /// Deliberately says nothing more: the reason (an address, a refused
    /// connection, a TLS error, a status) is in the log only.
    #[error("the client metadata document could not be fetched from a public https address")]
    Fetch,
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

/// Why a fetch failed, for the log.
#[derive(Debug, thiserror::Error)]
enum FetchFailure {
    #[error("request failed: {0}")]
    Request(String),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Document(String),
}

/// Names to addresses: the system resolver, or a stand-in in tests.
pub trait Lookup: Send + Sync {
    fn lookup(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {address}, which is not a public address")]
struct NotPublic {
    host: String,
    address: IpAddr,
}

/// The HTTP client's resolver: every connection's addresses are checked
/// here, in the answer that is used, so a name cannot be validated on one
/// lookup and connected on another (DNS rebinding). A name with any
/// non-public address is refused outright.
#[derive(Clone)]
pub struct PublicAddressResolver {
    pub lookup: Arc<dyn Lookup>,
    /// `registration.insecure_metadata_documents`: development only.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicAddressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = this.lookup.lookup(&host).await?;
            if addresses.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            if let Some(&address) = addresses
                .iter()
                .find(|ip| !this.allow_private && !is_public(ip))
            {
                return Err(Box::new(NotPublic { host, address }) as _);
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Whether an address may be fetched from: not in the IANA IPv4 or IPv6
/// Special-Purpose Address Registries (even the entries marked globally
/// reachable: anycast relays and AS112 serve no documents), not multicast,
/// and for IPv6 inside global unicast 2000::/3. NAT64 (64:ff9b::/96)
/// addresses are judged by the IPv4 address they carry; other formats that
/// embed IPv4 (mapped, compatible, 6to4, Teredo) are refused.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(*v4),
        IpAddr::V6(v6) => is_public_v6(*v6),
    }
}

/// IPv4 prefixes that are never fetched from.
const NON_PUBLIC_V4: [(Ipv4Addr, u8); 22] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),          // "this network", RFC 791
    (Ipv4Addr::new(10, 0, 0, 0), 8),         // private, RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),      // shared address space, RFC 6598
    (Ipv4Addr::new(127, 0, 0, 0), 8),        // loopback, RFC 1122
    (Ipv4Addr::new(169, 254, 0, 0), 16),     // link local, RFC 3927
    (Ipv4Addr::new(172, 16, 0, 0), 12),      // private, RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),       // IETF protocol assignments, RFC 6890
    (Ipv4Addr::new(192, 0, 2, 0), 24),       // TEST-NET-1, RFC 5737
    (Ipv4Addr::new(192, 31, 196, 0), 24),    // AS112-v4, RFC 7535
    (Ipv4Addr::new(192, 52, 193, 0), 24),    // AMT, RFC 7450
    (Ipv4Addr::new(192, 88, 99, 0), 24),     // 6to4 relay anycast, RFC 7526
    (Ipv4Addr::new(192, 168, 0, 0), 16),     // private, RFC 1918
    (Ipv4Addr::new(192, 175, 48, 0), 24),    // AS112 direct delegation, RFC 7534
    (Ipv4Addr::new(198, 18, 0, 0), 15),      // benchmarking, RFC 2544
    (Ipv4Addr::new(198, 51, 100, 0), 24),    // TEST-NET-2, RFC 5737
    (Ipv4Addr::new(203, 0, 113, 0), 24),     // TEST-NET-3, RFC 5737
    (Ipv4Addr::new(224, 0, 0, 0), 4),        // multicast, RFC 5771
    (Ipv4Addr::new(240, 0, 0, 0), 4),        // reserved, RFC 1112
    (Ipv4Addr::new(255, 255, 255, 255), 32), // limited broadcast, RFC 919
    // Inside the above, listed for the registry's sake.
    (Ipv4Addr::new(192, 0, 0, 0), 29), // IPv4 service continuity, RFC 7335
    (Ipv4Addr::new(192, 0, 0, 170), 31), // NAT64/DNS64 discovery, RFC 7050
    (Ipv4Addr::new(192, 0, 0, 8), 32), // IPv4 dummy address, RFC 7600
];

/// IPv6 prefixes inside 2000::/3 that are never fetched from.
const NON_PUBLIC_V6: [(Ipv6Addr, u8); 5] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (Teredo, ORCHID, benchmarking, AMT, AS112), RFC 2928
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation, RFC 3849
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4, RFC 3056
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // AS112 direct delegation, RFC 7534
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation, RFC 9637
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !NON_PUBLIC_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        bits & mask == u32::from(net) & mask
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let in_prefix = |net: Ipv6Addr, len: u8| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        bits & mask == u128::from(net) & mask
    };
    // NAT64 well-known prefix, RFC 6052: the IPv4 address decides.
    if in_prefix(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    // Global unicast only (RFC 4291 §2.4): this leaves out ::/8 (with the
    // unspecified, loopback, IPv4-compatible and IPv4-mapped addresses),
    // 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8, ...
    in_prefix(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        && !NON_PUBLIC_V6.iter().any(|&(net, len)| in_prefix(net, len))
}

async fn fetch(
    url: &Url,
    resolver: PublicAddressResolver,
    timeout: Duration,
) -> Result<(Map<String, Value>, Option<Duration>), FetchFailure> {
    let request_failed = |e: reqwest::Error| FetchFailure::Request(crate::error::error_chain(&e));
    let http = reqwest::ClientBuilder::new()
        .dns_resolver(Arc::new(resolver))
        // A proxy would resolve the name itself, past the resolver's checks.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("mcp-oauth-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(request_failed)?;
    let mut response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(request_failed)?;
    if !response.status().is_success() {
        return Err(FetchFailure::Status(response.status()));
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
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchFailure::Document(format!(
                "larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let document: Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| FetchFailure::Document(format!("not a JSON object: {e}")))?;
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

    /// The IANA IPv4 Special-Purpose Address Registry (2025), multicast,
    /// and the IPv6 Special-Purpose Address Registry plus the other IPv6
    /// ranges outside global unicast that a name could resolve to.
    const NEVER_FETCHED: [(&str, &str); 49] = [
        ("0.0.0.0/8", "RFC 791 this network"),
        ("10.0.0.0/8", "RFC 1918 private"),
        ("100.64.0.0/10", "RFC 6598 shared address space"),
        ("127.0.0.0/8", "RFC 1122 loopback"),
        ("169.254.0.0/16", "RFC 3927 link local"),
        ("172.16.0.0/12", "RFC 1918 private"),
        ("192.0.0.0/24", "RFC 6890 IETF protocol assignments"),
        ("192.0.0.0/29", "RFC 7335 IPv4 service continuity"),
        ("192.0.0.8/32", "RFC 7600 IPv4 dummy address"),
        ("192.0.0.9/32", "RFC 7723 PCP anycast"),
        ("192.0.0.10/32", "RFC 8155 TURN anycast"),
        ("192.0.0.170/32", "RFC 8880 NAT64/DNS64 discovery"),
        ("192.0.0.171/32", "RFC 8880 NAT64/DNS64 discovery"),
        ("192.0.2.0/24", "RFC 5737 TEST-NET-1"),
        ("192.31.196.0/24", "RFC 7535 AS112-v4"),
        ("192.52.193.0/24", "RFC 7450 AMT"),
        ("192.88.99.0/24", "RFC 7526 deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "RFC 1918 private"),
        ("192.175.48.0/24", "RFC 7534 AS112 direct delegation"),
        ("198.18.0.0/15", "RFC 2544 benchmarking"),
        ("198.51.100.0/24", "RFC 5737 TEST-NET-2"),
        ("203.0.113.0/24", "RFC 5737 TEST-NET-3"),
        ("224.0.0.0/4", "RFC 5771 multicast"),
        ("240.0.0.0/4", "RFC 1112 reserved"),
        ("255.255.255.255/32", "RFC 919 limited broadcast"),
        ("::1/128", "RFC 4291 loopback"),
        ("::/128", "RFC 4291 unspecified"),
        ("::ffff:0:0/96", "RFC 4291 IPv4-mapped"),
        ("::/96", "RFC 4291 IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "RFC 8215 local-use IPv4/IPv6 translation"),
        ("100::/64", "RFC 6666 discard-only"),
        ("100:0:0:1::/64", "RFC 9780 dummy IPv6 prefix"),
        ("2001::/23", "RFC 2928 IETF protocol assignments"),
        ("2001::/32", "RFC 4380 Teredo"),
        ("2001:1::1/128", "RFC 7723 PCP anycast"),
        ("2001:1::2/128", "RFC 8155 TURN anycast"),
        ("2001:2::/48", "RFC 5180 benchmarking"),
        ("2001:3::/32", "RFC 7450 AMT"),
        ("2001:4:112::/48", "RFC 7535 AS112-v6"),
        ("2001:20::/28", "RFC 7343 ORCHIDv2"),
        ("2001:db8::/32", "RFC 3849 documentation"),
        ("2002::/16", "RFC 3056 6to4"),
        ("2620:4f:8000::/48", "RFC 7534 AS112 direct delegation"),
        ("3fff::/20", "RFC 9637 documentation"),
        ("5f00::/16", "RFC 9602 SRv6 SIDs"),
        ("fc00::/7", "RFC 4193 unique local"),
        ("fe80::/10", "RFC 4291 link local"),
        ("fec0::/10", "RFC 3879 site local (deprecated)"),
        ("ff00::/8", "RFC 4291 multicast"),
    ];

    /// The first and last address of a prefix.
    fn bounds(prefix: &str) -> (IpAddr, IpAddr) {
        let (net, len) = prefix.split_once('/').unwrap();
        let len: u32 = len.parse().unwrap();
        match net.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => {
                let host = u32::MAX.checked_shr(len).unwrap_or(0);
                let first = u32::from(v4) & !host;
                (IpAddr::V4(first.into()), IpAddr::V4((first | host).into()))
            }
            IpAddr::V6(v6) => {
                let host = u128::MAX.checked_shr(len).unwrap_or(0);
                let first = u128::from(v6) & !host;
                (IpAddr::V6(first.into()), IpAddr::V6((first | host).into()))
            }
        }
    }

    #[test]
    fn iana_special_purpose_addresses_are_never_fetched() {
        for (prefix, source) in NEVER_FETCHED {
            let (first, last) = bounds(prefix);
            let middle = match (first, last) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    IpAddr::V4((u32::from(a) / 2 + u32::from(b) / 2).into())
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    IpAddr::V6((u128::from(a) / 2 + u128::from(b) / 2).into())
                }
                _ => unreachable!(),
            };
            for ip in [first, middle, last] {
                assert!(!is_public(&ip), "{ip} in {prefix} ({source})");
            }
        }
    }

    #[test]
    fn addresses_that_embed_a_private_ipv4_address_are_never_fetched() {
        for ip in [
            "::ffff:127.0.0.1",     // IPv4-mapped
            "::ffff:93.184.216.34", // mapped, even when public: use the IPv4 address
            "::127.0.0.1",          // IPv4-compatible
            "::169.254.169.254",
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254
            "64:ff9b::a00:1",                       // NAT64 of 10.0.0.1
            "64:ff9b::c0a8:101",                    // NAT64 of 192.168.1.1
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::",                     // 6to4 of 169.254.169.254
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "2001:0:0:0:0:0:f5ff:fffe",             // Teredo, client 10.0.0.1 obfuscated
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn public_addresses_next_to_the_special_ranges_are_fetched() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:2800:220:1:248:1893:25c8:1946",
            "2001:200::1",
            "2003::1",
            "2620:4f:8001::1",
            "3ffe:ffff::1",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
        ] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }

    /// A name server whose every answer is `answer`, counting the questions.
    struct StubLookup {
        answer: Vec<IpAddr>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Lookup for StubLookup {
        fn lookup(
            &self,
            _host: &str,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = self.answer.clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    /// A loopback server answering one JSON document; counts connections.
    async fn loopback_document_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let body = "{\"client_id\":\"x\"}";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn a_name_answered_with_a_private_address_is_never_connected_to() {
        let (port, connections) = loopback_document_server().await;
        for answer in [
            vec!["127.0.0.1".parse().unwrap()],
            // One public answer does not carry a private one through.
            vec![
                "93.184.216.34".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
        ] {
            let lookup = Arc::new(StubLookup {
                answer,
                asked: Default::default(),
            });
            let resolver = PublicAddressResolver {
                lookup: lookup.clone(),
                allow_private: false,
            };
            let url = Url::parse(&format!("http://rebinding.example:{port}/c.json")).unwrap();
            let result = fetch(&url, resolver, Duration::from_secs(2)).await;
            assert!(
                matches!(result, Err(FetchFailure::Request(_))),
                "{result:?}"
            );
            assert_eq!(lookup.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_connection_goes_to_the_address_the_resolver_checked() {
        let (port, connections) = loopback_document_server().await;
        let lookup = Arc::new(StubLookup {
            answer: vec!["127.0.0.1".parse().unwrap()],
            asked: Default::default(),
        });
        // The development switch lets the loopback answer through: the one
        // lookup made is the address connected to.
        let resolver = PublicAddressResolver {
            lookup: lookup.clone(),
            allow_private: true,
        };
        let url = Url::parse(&format!("http://rebinding.example:{port}/c.json")).unwrap();
        let (document, _) = fetch(&url, resolver, Duration::from_secs(2)).await.unwrap();
        assert_eq!(document["client_id"], "x");
        assert_eq!(lookup.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
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
