//! Which headers cross the proxy (DESIGN.md invariant 6).
//!
//! Identity headers are set by the policy or stripped, never merged: the
//! client's Authorization header and every client header that normalises
//! (case-folded, `_`→`-`) to a header the policy may set are removed, and so
//! are hop-by-hop headers and those named in `Connection`.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the non-standard ones proxies
/// still meet.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client-supplied forwarding headers: the proxy sets its own.
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Names listed in `Connection` headers (lowercase).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || connection.iter().any(|c| c == name.as_str())
}

/// What the proxy adds about the client connection.
pub struct Forwarding<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    pub public_host: &'a str,
    pub public_proto: &'a str,
}

/// The headers sent downstream: the client's, cleaned, plus the policy's.
pub fn downstream_request_headers(
    incoming: &HeaderMap,
    is_identity_header: impl Fn(&str) -> bool,
    policy_headers: &[(HeaderName, HeaderValue)],
    forwarding: &Forwarding<'_>,
    own_cookie_prefixes: &[&str],
) -> HeaderMap {
    let connection = connection_named(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len() + policy_headers.len() + 3);
    for (name, value) in incoming {
        let n = name.as_str();
        if is_hop_by_hop(name, &connection)
            || name == header::HOST
            || name == header::AUTHORIZATION
            // The downstream answers uncompressed, so events are never held
            // back in a compressor's buffer.
            || name == header::ACCEPT_ENCODING
            || FORWARDING.contains(&n)
            || is_identity_header(n)
        {
            continue;
        }
        if name == header::COOKIE {
            if let Some(kept) = without_own_cookies(value, own_cookie_prefixes) {
                out.append(name.clone(), kept);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    for (name, value) in policy_headers {
        out.insert(name.clone(), value.clone());
    }
    if let Some(ip) = forwarding.client_ip {
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            out.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(forwarding.public_host) {
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    if let Ok(v) = HeaderValue::from_str(forwarding.public_proto) {
        out.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    out
}

/// The proxy's own sign-in cookies are not the downstream's business.
fn without_own_cookies(value: &HeaderValue, prefixes: &[&str]) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let kept: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !prefixes.iter().any(|p| pair.starts_with(p)))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join("; ")).ok()
    }
}

/// The downstream's response headers, minus hop-by-hop ones.
pub fn client_response_headers(incoming: &HeaderMap) -> HeaderMap {
    let connection = connection_named(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        if !is_hop_by_hop(name, &connection) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: &str) -> bool {
        let n = n.replace('_', "-");
        n.starts_with("x-user-") || n == "x-team"
    }

    #[test]
    fn invariant_6_client_identity_and_hop_by_hop_headers_never_reach_the_downstream() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer client-token".parse().unwrap());
        h.insert("x-user-email", "evil@example.com".parse().unwrap());
        h.insert("x_user_email", "evil@example.com".parse().unwrap());
        h.insert("X-USER-SUB", "root".parse().unwrap());
        h.insert("x-team", "admins".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("host", "proxy.example".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("accept-encoding", "gzip".parse().unwrap());
        h.insert("mcp-session-id", "abc".parse().unwrap());
        h.insert("mcp-protocol-version", "2025-06-18".parse().unwrap());
        h.insert("last-event-id", "7".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("cookie", "__Host-mcp-browser=x; theirs=1".parse().unwrap());
        let policy = vec![(
            HeaderName::from_static("x-user-email"),
            HeaderValue::from_static("alice@example.com"),
        )];
        let out = downstream_request_headers(
            &h,
            identity,
            &policy,
            &Forwarding {
                client_ip: Some("127.0.0.1".parse().unwrap()),
                public_host: "mcp.example.com",
                public_proto: "https",
            },
            &["__Host-mcp-", "mcp-browser"],
        );
        assert_eq!(
            out.get_all("x-user-email").iter().collect::<Vec<_>>(),
            vec!["alice@example.com"]
        );
        for gone in [
            "authorization",
            "x_user_email",
            "x-user-sub",
            "x-team",
            "x-secret-hop",
            "keep-alive",
            "te",
            "host",
            "accept-encoding",
            "connection",
        ] {
            assert!(out.get(gone).is_none(), "{gone} leaked");
        }
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "content-type",
        ] {
            assert_eq!(out.get(kept), h.get(kept), "{kept}");
        }
        assert_eq!(out["x-forwarded-for"], "127.0.0.1");
        assert_eq!(out["cookie"], "theirs=1");
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("mcp-session-id", "s".parse().unwrap());
        let out = client_response_headers(&h);
        assert!(out.get("x-hop").is_none() && out.get("transfer-encoding").is_none());
        assert_eq!(out["mcp-session-id"], "s");
    }
}
