//! Fetching a metadata document without becoming a way into the network:
//! the resolver the HTTP client uses hands it public addresses only, in the
//! very answer it connects to; no proxies, no redirects, bounded time and
//! size.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::reqwest;
use serde_json::{Map, Value};
use url::Url;

use super::public_address::is_public;

const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// Why a fetch failed, for the log.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchFailure {
    #[error("request failed: {0}")]
    Request(String),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Document(String),
}

/// Names to addresses: the system resolver, or a stand-in in tests.
pub(crate) trait Lookup: Send + Sync {
    /// Every address `host` has.
    fn lookup(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

pub(super) struct SystemLookup;

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
pub(crate) struct PublicAddressResolver {
    /// Where names are looked up.
    pub(crate) lookup: Arc<dyn Lookup>,
    /// `registration.insecure_metadata_documents`: development only.
    pub(crate) allow_private: bool,
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

pub(super) async fn fetch(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
