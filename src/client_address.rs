//! The client's address: the TCP peer, unless that peer is a load balancer
//! the operator trusts (`server.trusted_proxies`), in which case the address
//! its `X-Forwarded-For` names. Logs, audit, rate limits and the headers sent
//! downstream all use [`client_address`], so a client cannot choose the
//! address it is counted under by sending a header.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, Request};
use ipnet::IpNet;

/// The client's address as load balancers append it, and as the proxy
/// writes it for the downstream.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Client headers that tell a server where the request came from or what it
/// originally asked for. Frameworks and proxies behind us believe them
/// (client address, scheme, host, path rewrites, method overrides), so a
/// client never chooses them; the proxy writes its own X-Forwarded-For,
/// -Proto, -Host and Via.
pub(crate) const FORWARDING: [&str; 16] = [
    "forwarded",
    "via",
    "x-forwarded",
    "x-rewrite-url",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-proxyuser-ip",
    "x-host",
    "x-http-method-override",
    "x-method-override",
];

/// Prefixes of the same family (`X-Forwarded-Uri`, `X-Original-URL`,
/// `X-Envoy-External-Address`, `X-HTTP-Method`, ...).
const FORWARDING_PREFIXES: [&str; 4] = ["x-forwarded-", "x-original-", "x-envoy-", "x-http-method"];

/// Whether a client header is one the proxy writes itself (or removes)
/// because it speaks about the connection.
pub(crate) fn is_forwarding_header(name: &str) -> bool {
    let lenient = lenient_header_name(name);
    FORWARDING.contains(&lenient.as_ref()) || has_forwarding_prefix(&lenient)
}

/// Whether a name (as a lenient server reads it) starts as one of the
/// family's does.
pub(crate) fn has_forwarding_prefix(lenient: &str) -> bool {
    FORWARDING_PREFIXES.iter().any(|p| lenient.starts_with(p))
}

/// A parsed header name as a lenient server reads it: a `HeaderName` is
/// lowercase already, so only a `_` needs folding (asked for every client
/// header on every request; [`lenient_header_name`] checks each byte for
/// case as well).
pub(crate) fn lenient_name(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let n = name.as_str();
    if has_underscore(n) {
        std::borrow::Cow::Owned(n.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(n)
    }
}

/// Whether a name holds a `_`: a plain loop, since names are short and
/// `str::contains` sets up a search first.
pub(crate) fn has_underscore(name: &str) -> bool {
    name.bytes().any(|b| b == b'_')
}

/// A header name as a lenient server reads it: lowercase, `_` as `-`.
/// Borrowed when it already is (every `HeaderName` without `_`), so the
/// request path does not allocate to ask.
pub(crate) fn lenient_header_name(name: &str) -> std::borrow::Cow<'_, str> {
    // A fold, not `any`: without the early exit the scan is vectorised
    // (names are short, and almost never need folding).
    let needs_folding = name.bytes().fold(false, |found, b| {
        found | b.is_ascii_uppercase() | (b == b'_')
    });
    if needs_folding {
        std::borrow::Cow::Owned(name.to_ascii_lowercase().replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The networks whose `X-Forwarded-For` is believed (default: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs ("10.0.0.0/8", "fd00::/8") or single addresses.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let text = entry.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!("`{entry}` is not a CIDR such as 10.0.0.0/8 or an IP address")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The addresses in the request's `X-Forwarded-For` headers, in order
/// (several headers form one list). `None` for an entry that is not an IP
/// address (ports, `unknown`, obfuscated identifiers).
fn forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("garbage").split(','))
        .map(|entry| entry.trim().parse::<IpAddr>().ok())
        .collect()
}

/// The client's address. Without a trusted peer it is the peer itself; behind
/// trusted proxies it is the rightmost `X-Forwarded-For` entry that is not a
/// trusted proxy: everything left of it was written by the client and may be
/// made up.
pub(crate) fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    for hop in forwarded_for_chain(headers).into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !trusted.contains(client) {
                    break;
                }
            }
            // A trusted proxy would not write this; the client did. The last
            // address a trusted hop vouched for is the best we know.
            None => break,
        }
    }
    client
}

/// The client address of a request behind a trusted proxy, resolved once at
/// the edge of the stack (`server::stack`) so that audit and rate limits
/// agree on it. A request without one comes from its TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The resolved address, else the TCP peer (which is the client when
    /// it is not a trusted proxy, or the request did not pass the resolving
    /// layer, e.g. in unit tests), else `None` (built in-process).
    pub(crate) fn of<B>(request: &Request<B>) -> Option<IpAddr> {
        match request.extensions().get::<ClientAddress>() {
            Some(ClientAddress(ip)) => Some(*ip),
            None => request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip().to_canonical()),
        }
    }
}

/// The client of a request accepted by our listener (which records the
/// peer as `ConnectInfo`) when it is behind a trusted proxy: the
/// [`client_address`] its `X-Forwarded-For` names. `None` when the peer is
/// the client (what [`ClientAddress::of`] falls back to), and for requests
/// built in-process.
pub(crate) fn behind_trusted_proxy<B>(
    request: &Request<B>,
    trusted: &TrustedProxies,
) -> Option<ClientAddress> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()?
        .0
        .ip();
    // The peer itself, canonical, unless it is a trusted proxy.
    let client = client_address(peer, request.headers(), trusted);
    (client != peer.to_canonical()).then_some(ClientAddress(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_names_fold_case_and_underscores_and_borrow_when_they_can() {
        assert_eq!(lenient_header_name("X_Forwarded_For"), "x-forwarded-for");
        assert_eq!(lenient_header_name("X-REAL-IP"), "x-real-ip");
        assert!(matches!(
            lenient_header_name("x-real-ip"),
            std::borrow::Cow::Borrowed("x-real-ip")
        ));
        assert!(is_forwarding_header("X_Real_IP"));
        assert!(is_forwarding_header("x-forwarded-uri"));
        assert!(!is_forwarding_header("mcp-protocol-version"));
    }

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&cidrs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn invariant_6_an_untrusted_peer_cannot_choose_its_address() {
        let none = TrustedProxies::default();
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &h, &none),
            ip("203.0.113.9")
        );
        // A trusted list that does not contain the peer changes nothing.
        let lb = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &h, &lb),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_a_trusted_load_balancer_the_rightmost_untrusted_hop_is_the_client() {
        let lb = trusted(&["10.0.0.0/8", "fd00::/8"]);
        // The client prepended a lie; the balancer appended the truth.
        let h = xff(&["6.6.6.6", "198.51.100.7"]);
        assert_eq!(client_address(ip("10.1.2.3"), &h, &lb), ip("198.51.100.7"));
        // Two trusted hops, and the list split over two headers.
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(client_address(ip("10.1.2.3"), &h, &lb), ip("198.51.100.7"));
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(
            client_address(ip("::ffff:10.1.2.3"), &xff(&["198.51.100.7"]), &lb),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last vouched-for address.
        let h = xff(&["198.51.100.7", "unknown", "10.9.9.9"]);
        assert_eq!(client_address(ip("10.1.2.3"), &h, &lb), ip("10.9.9.9"));
        // No header: the balancer itself.
        assert_eq!(
            client_address(ip("10.1.2.3"), &HeaderMap::new(), &lb),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_address_the_stack_files_or_leaves_to_the_peer_is_the_resolved_one() {
        let lb = trusted(&["10.0.0.0/8"]);
        // As the stack does it: filed when resolved to another address
        // than the peer, else left for `ClientAddress::of` to read.
        let resolved_by_stack = |peer: &str, headers: HeaderMap| {
            let mut request = Request::new(());
            *request.headers_mut() = headers;
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(ip(peer), 40000)));
            if let Some(filed) = behind_trusted_proxy(&request, &lb) {
                assert_ne!(
                    filed.0,
                    ip(peer).to_canonical(),
                    "only another address is filed"
                );
                request.extensions_mut().insert(filed);
            }
            ClientAddress::of(&request)
        };
        for (peer, headers) in [
            // A client straight from the internet, lying or not.
            ("203.0.113.9", xff(&["1.2.3.4"])),
            ("203.0.113.9", HeaderMap::new()),
            ("::ffff:203.0.113.9", xff(&["1.2.3.4"])),
            // Behind the balancer, and the balancer itself.
            ("10.1.2.3", xff(&["6.6.6.6", "198.51.100.7"])),
            ("::ffff:10.1.2.3", xff(&["198.51.100.7"])),
            ("10.1.2.3", HeaderMap::new()),
        ] {
            let expected = client_address(ip(peer), &headers, &lb);
            assert_eq!(resolved_by_stack(peer, headers), Some(expected), "{peer}");
        }
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_addresses_and_name_what_is_wrong() {
        let t = trusted(&["192.168.1.7", "2001:db8::/32", "10.0.0.1/8"]);
        assert!(t.contains(ip("192.168.1.7")) && !t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("2001:db8::1")));
        assert!(t.contains(ip("10.200.0.1")));
        let e = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse(&["lb.internal".into()]).is_err());
    }
}
