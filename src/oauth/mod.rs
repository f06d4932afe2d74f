//! The OAuth 2.1 authorization server MCP clients talk to.

pub(crate) mod authorize;
pub(crate) mod cimd;
pub(crate) mod client_auth;
pub(crate) mod metadata;
pub(crate) mod pages;
pub(crate) mod redirect_uri;
pub mod register;
pub(crate) mod state;
pub(crate) mod token;

pub(crate) use state::{OAuthInner, OAuthSettings, OAuthState};

use std::collections::HashMap;

use axum::http::HeaderMap;

/// The routes whose resource a token may be bound to (RFC 8707).
pub(crate) const RESOURCE_PATHS: [&str; 2] = ["/mcp", "/sse"];

/// Request parameters, each present at most once (RFC 6749 §3.1).
#[derive(Debug, Default)]
pub(crate) struct Params {
    values: HashMap<String, String>,
    /// Names that appeared more than once, in order of first repetition.
    pub(crate) duplicated: Vec<String>,
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` text (a query or a body).
    pub(crate) fn parse(text: &str) -> Params {
        let mut params = Params::default();
        for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
            match params.values.entry(k.into_owned()) {
                std::collections::hash_map::Entry::Occupied(seen) => {
                    if !params.duplicated.contains(seen.key()) {
                        params.duplicated.push(seen.key().clone());
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(v.into_owned());
                }
            }
        }
        params
    }

    /// A parameter; an empty value counts as absent (RFC 6749 §3.1).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether `name` appeared more than once.
    pub(crate) fn is_duplicated(&self, name: &str) -> bool {
        self.duplicated.iter().any(|d| d == name)
    }
}

/// The resources tokens of this server may be bound to.
pub(crate) fn known_resources(public_url: &str) -> Vec<String> {
    let mut all = vec![public_url.to_string(), format!("{public_url}/")];
    all.extend(RESOURCE_PATHS.iter().map(|p| format!("{public_url}{p}")));
    all
}

/// Validates an RFC 8707 `resource`: one of this proxy's protected URLs.
pub(crate) fn validate_resource(public_url: &str, resource: &str) -> Result<String, String> {
    if resource.contains('#') {
        return Err("resource must not contain a fragment".into());
    }
    if known_resources(public_url).iter().any(|r| r == resource) {
        // The root with or without its slash is one resource.
        Ok(resource.trim_end_matches('/').to_string())
    } else {
        Err(format!(
            "resource `{resource}` is not served here; use {public_url}/mcp or {public_url}/sse"
        ))
    }
}

/// The value of one cookie from the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_parameters_are_noticed() {
        let p = Params::parse("a=1&b=2&a=3&c=");
        assert_eq!(p.get("a"), Some("1"));
        assert!(p.is_duplicated("a"));
        assert!(!p.is_duplicated("b"));
        assert_eq!(p.get("c"), None);
    }

    #[test]
    fn resources_are_this_servers_own() {
        let base = "https://mcp.example.com";
        assert_eq!(
            validate_resource(base, "https://mcp.example.com/mcp").unwrap(),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            validate_resource(base, "https://mcp.example.com/").unwrap(),
            "https://mcp.example.com"
        );
        assert!(validate_resource(base, "https://other.example.com/mcp").is_err());
        assert!(validate_resource(base, "https://mcp.example.com/mcp#x").is_err());
        assert!(validate_resource(base, "https://mcp.example.com/admin").is_err());
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; b=2".parse().unwrap());
        h.append("cookie", "c=3".parse().unwrap());
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "d"), None);
    }
}
