//! What a policy decided, and how a script's result becomes a decision the
//! proxy can act on: every header checked by `header_rules`, any doubt
//! denies.

use std::collections::HashSet;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use rhai::{Dynamic, Map};

use super::header_rules::{self, HeaderNameRules, HeaderRefusal, PolicyValue};
use super::script_api::ScriptDecision;
use crate::assertion::IdentityAssertionRef;
use crate::session::PolicyHeaders;
use crate::store::UpstreamTokens;

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward the request, with these headers set on it.
    Allow {
        /// Checked names and encoded values, in the order the script gave.
        headers: PolicyHeaders,
    },
    /// Refuse the request.
    Deny {
        /// A client or server error status.
        status: StatusCode,
        /// Why, in words the client may read.
        reason: String,
    },
}

/// A reference to one of the provider's tokens; the value never enters the
/// script, the proxy substitutes it when it builds the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamSecret {
    /// The provider's access token, bare.
    AccessToken,
    /// `Bearer ` and the provider's access token.
    Bearer,
    /// The provider's id_token (the header is left out when there is none).
    IdToken,
}

/// Turns what a script returned into a checked decision.
pub(crate) fn interpret(
    value: Dynamic,
    tokens: &UpstreamTokens,
    names: &HeaderNameRules<'_>,
    max_header_bytes: usize,
) -> Decision {
    let deny = |reason: String| Decision::Deny {
        status: StatusCode::FORBIDDEN,
        reason,
    };
    let Some(decision) = value.try_cast::<ScriptDecision>() else {
        tracing::warn!(target: "policy", "authorize() must return allow(...) or deny(...); denying");
        return deny("access denied by policy (no decision)".into());
    };
    match decision {
        ScriptDecision::Deny(status, reason) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            Decision::Deny { status, reason }
        }
        ScriptDecision::Allow(map) => match headers_from(map, tokens, names, max_header_bytes) {
            Ok(headers) => Decision::Allow {
                headers: headers.into(),
            },
            Err(problem) => {
                tracing::warn!(target: "policy", %problem, "the policy set a header the proxy refuses; denying");
                // The reason names the header, never its value.
                deny(format!("access denied by policy: {problem}"))
            }
        },
    }
}

/// Every header of an `allow(...)`, checked by the rules in `header_rules`;
/// the first refusal refuses them all.
fn headers_from(
    map: Map,
    tokens: &UpstreamTokens,
    names: &HeaderNameRules<'_>,
    max_header_bytes: usize,
) -> Result<Vec<(HeaderName, HeaderValue)>, HeaderRefusal> {
    let mut headers = Vec::with_capacity(map.len());
    let mut seen = HashSet::with_capacity(map.len());
    for (key, value) in map {
        let name = names.check(&key, &mut seen)?;
        if value.is_unit() {
            continue;
        }
        if value.is::<IdentityAssertionRef>() {
            // Signed per request by the forwarder (`assertion`).
            headers.push((name, crate::assertion::placeholder()));
            continue;
        }
        let value = if let Some(secret) = value.clone().try_cast::<UpstreamSecret>() {
            let Some(token) = secret_text(secret, tokens) else {
                continue;
            };
            header_rules::token_header_value(&key, &token)?
        } else if value.is_array() {
            let items = value
                .into_array()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(index, item)| scalar_text(&key, Some(index), item))
                .collect::<Result<Vec<_>, _>>()?;
            header_rules::identity_header_value(&key, PolicyValue::List(&items), max_header_bytes)?
        } else {
            let text = scalar_text(&key, None, &value)?;
            header_rules::identity_header_value(&key, PolicyValue::One(&text), max_header_bytes)?
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// The token a reference stands for; `None` when the provider gave none
/// (a session signed in with an ID-JAG has no provider token: the header is
/// left out rather than sent empty).
fn secret_text(secret: UpstreamSecret, tokens: &UpstreamTokens) -> Option<String> {
    let access = Some(tokens.access_token.as_str()).filter(|t| !t.is_empty());
    match secret {
        UpstreamSecret::AccessToken => access.map(str::to_string),
        UpstreamSecret::Bearer => access.map(|t| format!("Bearer {t}")),
        UpstreamSecret::IdToken => tokens.id_token.clone().filter(|t| !t.is_empty()),
    }
}

/// A header value's (or list item's) text: only scalars have one.
fn scalar_text(
    header: &str,
    item: Option<usize>,
    value: &Dynamic,
) -> Result<String, HeaderRefusal> {
    if value.is_string() || value.is_int() || value.is_bool() || value.is_char() || value.is_float()
    {
        Ok(value.to_string())
    } else {
        Err(HeaderRefusal::UnsupportedType {
            header: header.to_string(),
            item,
            type_name: value.type_name().to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
