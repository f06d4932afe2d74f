//! The OAuth 2.1 authorization server MCP clients talk to.

pub(crate) mod authorize;
pub(crate) mod cimd;
pub(crate) mod client_auth;
pub(crate) mod id_jag;
pub(crate) mod metadata;
pub(crate) mod pages;
pub(crate) mod redirect_uri;
pub mod register;
pub(crate) mod resources;
pub(crate) mod state;
pub(crate) mod token;

pub(crate) use resources::{validate_resource, ProtectedRoute};
pub(crate) use state::{OAuthInner, OAuthSettings, OAuthState};

use std::collections::HashMap;

use axum::http::HeaderMap;

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
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; b=2".parse().unwrap());
        h.append("cookie", "c=3".parse().unwrap());
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "d"), None);
    }
}
