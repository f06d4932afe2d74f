//! What a policy may put in the downstream request's headers.
//!
//! A header must mean the same to the policy that set it and to every
//! server that reads it. So:
//!
//! - **Names**: a valid token without `_` (servers that fold `_` into `-`
//!   would read `X_User_Email` as `X-User-Email`), set once ignoring case,
//!   never a framing, hop-by-hop, routing, forwarding or MCP transport
//!   header, and declared (see [`HeaderNameRules`]).
//! - **Values** are percent-encoded where a reader could otherwise see
//!   something else: `%` itself, every non-ASCII character (as UTF-8 bytes,
//!   RFC 3986), a space at either end (receivers trim them), and in the items
//!   of an array also `,` and `"` (list separators and quotes to a downstream
//!   that splits the joined value). A value containing a control character
//!   (CR, LF, NUL, TAB, DEL, …) is refused, and so is a value longer than the
//!   configured bound after encoding.
//!
//! A refusal denies the request: the proxy never forwards a half-set identity.

use std::collections::HashSet;

use axum::http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

// The default bound lives with `policy.max_header_bytes` in config; kept
// reachable here for the policy code that names it through this module.
pub(crate) use crate::config::DEFAULT_MAX_HEADER_BYTES;

/// Headers a policy may never set: framing, hop-by-hop, routing, what the
/// proxy itself sets about the client, and MCP's own transport headers.
pub(crate) const RESERVED_HEADERS: [&str; 31] = [
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "accept",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "host",
    "origin",
    "cookie",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "http2-settings",
];

/// The conventional header of the signed identity assertion: always
/// removed from client requests, like `Authorization` and `X-User-*`, so a
/// downstream never receives one the proxy did not sign for this request.
pub(crate) const IDENTITY_ASSERTION_HEADER: &str = "x-identity-assertion";

/// Whether a (lower-case) header name is one a policy may never set.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name) || name.starts_with("proxy-") || name.starts_with("sec-")
}

/// Normalises a header name the way invariant 6 compares them.
pub(crate) fn normalise_header(name: &str) -> String {
    crate::client_address::lenient_header_name(name.trim()).into_owned()
}

/// Why the proxy refused a header a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderRefusal {
    /// Not a valid header name.
    #[error("`{0}` is not a header name")]
    NotAName(String),
    /// A header only the proxy or the transport may set.
    #[error(
        "`{0}` may not be set by a policy (framing, hop-by-hop, routing or MCP transport header)"
    )]
    Reserved(String),
    /// A name with `_`, which some servers read as `-`.
    #[error("`{0}` contains `_`; write `-` (servers fold `_` into `-`, so the name could pass for another header)")]
    Underscore(String),
    /// The same name twice in one decision.
    #[error("`{0}` is set twice (header names ignore case)")]
    Duplicate(String),
    /// A name the proxy does not strip from clients, so it could arrive twice.
    #[error("`{0}` is not an identity header: a name the script builds at run time must start with `X-User-` or be listed in policy.identity_headers")]
    Undeclared(String),
    /// A value with a control character.
    #[error("the value of `{header}`{} contains a control character (CR, LF, NUL, TAB, …)", item_suffix(*.item))]
    ControlCharacter {
        /// The header, as the script named it.
        header: String,
        /// The list item, when the value is an array.
        item: Option<usize>,
    },
    /// A value longer than `policy.max_header_bytes` once encoded.
    #[error("the value of `{header}` is {length} bytes once encoded; the limit is {limit} (policy.max_header_bytes)")]
    TooLong {
        /// The header, as the script named it.
        header: String,
        /// Its encoded length in bytes.
        length: usize,
        /// `policy.max_header_bytes`.
        limit: usize,
    },
    /// A value (or list item) that is not a scalar.
    #[error("the value of `{header}`{} has type {type_name}; use a string, number, boolean, array of those, () or an upstream_*() token", item_suffix(*.item))]
    UnsupportedType {
        /// The header, as the script named it.
        header: String,
        /// The list item, when the value is an array.
        item: Option<usize>,
        /// Rhai's name for the value's type.
        type_name: String,
    },
    /// A provider token that is not a valid header value.
    #[error("the provider's token for `{0}` has characters a header cannot carry")]
    BadToken(String),
}

fn item_suffix(item: Option<usize>) -> String {
    item.map(|i| format!(" (item {i})")).unwrap_or_default()
}

/// The rules a name can be checked against without running the policy: a
/// valid name, no `_`, not reserved. `compile` applies them to the keys of
/// `allow(#{ ... })` literals; every decision applies them again.
pub(crate) fn check_fixed_name(key: &str) -> Result<HeaderName, HeaderRefusal> {
    let name = HeaderName::from_bytes(key.as_bytes())
        .map_err(|_| HeaderRefusal::NotAName(key.to_string()))?;
    if name.as_str().contains('_') {
        return Err(HeaderRefusal::Underscore(key.to_string()));
    }
    if is_reserved(name.as_str()) {
        return Err(HeaderRefusal::Reserved(key.to_string()));
    }
    Ok(name)
}

/// Which names a policy may set.
pub(crate) struct HeaderNameRules<'a> {
    /// Names quoted in the policy's source (normalised).
    pub(crate) declared: &'a HashSet<String>,
    /// `policy.identity_headers` (normalised).
    pub(crate) configured: &'a [String],
}

impl HeaderNameRules<'_> {
    /// The header name for a policy's map key, or why it may not be set.
    /// `seen` holds the names already set by this decision.
    pub(crate) fn check(
        &self,
        key: &str,
        seen: &mut HashSet<HeaderName>,
    ) -> Result<HeaderName, HeaderRefusal> {
        let name = check_fixed_name(key)?;
        let lower = name.as_str();
        // Client headers are stripped for exactly these names (invariant 6);
        // any other name could arrive twice, once from the client.
        let declared = lower == "authorization"
            || lower == IDENTITY_ASSERTION_HEADER
            || lower.starts_with("x-user-")
            || self.declared.contains(lower)
            || self.configured.iter().any(|c| c == lower);
        if !declared {
            return Err(HeaderRefusal::Undeclared(key.to_string()));
        }
        if !seen.insert(name.clone()) {
            return Err(HeaderRefusal::Duplicate(key.to_string()));
        }
        Ok(name)
    }
}

/// Characters encoded in every value: controls never get here (refused),
/// `%` so decoding is unambiguous; non-ASCII is always encoded by
/// `utf8_percent_encode`.
const VALUE_SET: &AsciiSet = &CONTROLS.add(b'%');
/// In list items also the separator and quotes (RFC 9110 list syntax).
const ITEM_SET: &AsciiSet = &VALUE_SET.add(b',').add(b'"');

/// A policy's value before encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PolicyValue<'a> {
    /// A scalar, sent as it is (encoded).
    One(&'a str),
    /// An array, sent as a comma-separated list of encoded items.
    List(&'a [String]),
}

/// The one rule for identity header values: encode what a reader could
/// take for something else, refuse what no identity contains, bound it.
pub(crate) fn identity_header_value(
    header: &str,
    value: PolicyValue<'_>,
    limit: usize,
) -> Result<HeaderValue, HeaderRefusal> {
    let text = match value {
        PolicyValue::One(text) => encode_text(header, None, text, VALUE_SET)?,
        PolicyValue::List(items) => {
            let mut joined = String::new();
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    joined.push(',');
                }
                joined.push_str(&encode_text(header, Some(index), item, ITEM_SET)?);
                if joined.len() > limit {
                    break;
                }
            }
            joined
        }
    };
    if text.len() > limit {
        return Err(HeaderRefusal::TooLong {
            header: header.to_string(),
            length: text.len(),
            limit,
        });
    }
    // Only visible ASCII and inner spaces remain, so this cannot fail; the
    // check stays as the last word on what a header may carry.
    HeaderValue::from_str(&text).map_err(|_| HeaderRefusal::ControlCharacter {
        header: header.to_string(),
        item: None,
    })
}

fn encode_text(
    header: &str,
    item: Option<usize>,
    text: &str,
    set: &'static AsciiSet,
) -> Result<String, HeaderRefusal> {
    if text.chars().any(char::is_control) {
        return Err(HeaderRefusal::ControlCharacter {
            header: header.to_string(),
            item,
        });
    }
    let inner = text.trim_matches(' ');
    let leading = text.len() - text.trim_start_matches(' ').len();
    let trailing = if inner.is_empty() {
        0
    } else {
        text.len() - text.trim_end_matches(' ').len()
    };
    let mut out = String::with_capacity(text.len() + 6 * (leading + trailing));
    for _ in 0..leading {
        out.push_str("%20");
    }
    out.extend(utf8_percent_encode(inner, set));
    for _ in 0..trailing {
        out.push_str("%20");
    }
    Ok(out)
}

/// A provider token as a header value: sent as the provider issued it.
pub(crate) fn token_header_value(header: &str, token: &str) -> Result<HeaderValue, HeaderRefusal> {
    HeaderValue::from_str(token).map_err(|_| HeaderRefusal::BadToken(header.to_string()))
}

/// A set of header names asked about once per client header on every
/// request (the strip rule): grouped by length, so a name is compared only
/// with those of its own length, most often none. A sorted list searched
/// by halves compared four names a header (1,000 instructions a request,
/// callgrind: a policy's header-like literals are a dozen or more).
#[derive(Debug, Default)]
pub(crate) struct NamesByLength(Vec<Vec<String>>);

impl NamesByLength {
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> Self {
        let mut by_length: Vec<Vec<String>> = Vec::new();
        for name in names {
            let length = name.len();
            if by_length.len() <= length {
                by_length.resize_with(length + 1, Vec::new);
            }
            if !by_length[length].contains(&name) {
                by_length[length].push(name);
            }
        }
        NamesByLength(by_length)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        // The last bytes compared first, inline: names of one length
        // mostly differ there (`x-` names share their start), and a call
        // to compare the whole name is made only when they are the same.
        let last = name.as_bytes().last();
        self.0.get(name.len()).is_some_and(|same_length| {
            same_length
                .iter()
                .any(|n| n.as_bytes().last() == last && n == name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_length_hold_exactly_their_names() {
        let names = NamesByLength::new(
            ["x-team", "x-role", "x-tenant", "x-team", "x-user-id", "a"]
                .into_iter()
                .map(String::from),
        );
        for name in ["x-team", "x-role", "x-tenant", "x-user-id", "a"] {
            assert!(names.contains(name), "{name}");
        }
        for name in [
            "x-tea",
            "x-teams",
            "x-rolf",
            "X-TEAM",
            "",
            "b",
            "x-tenant-id",
            "accept",
        ] {
            assert!(!names.contains(name), "{name}");
        }
        assert!(!NamesByLength::new(Vec::new()).contains("x-team"));
    }

    fn one(text: &str) -> Result<String, HeaderRefusal> {
        identity_header_value(
            "X-User-Name",
            PolicyValue::One(text),
            DEFAULT_MAX_HEADER_BYTES,
        )
        .map(|v| v.to_str().unwrap().to_string())
    }

    fn list(items: &[&str]) -> Result<String, HeaderRefusal> {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        identity_header_value(
            "X-User-Groups",
            PolicyValue::List(&items),
            DEFAULT_MAX_HEADER_BYTES,
        )
        .map(|v| v.to_str().unwrap().to_string())
    }

    /// What a downstream that splits on `,`, trims and percent-decodes sees.
    fn downstream_items(header: &str) -> Vec<String> {
        header
            .split(',')
            .map(|item| {
                percent_encoding::percent_decode_str(item.trim())
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn ordinary_values_are_unchanged() {
        assert_eq!(one("Alice Example").unwrap(), "Alice Example");
        assert_eq!(one("alice@example.com").unwrap(), "alice@example.com");
        assert_eq!(one("Doe, John").unwrap(), "Doe, John");
        assert_eq!(
            list(&["engineering", "admins"]).unwrap(),
            "engineering,admins"
        );
        assert_eq!(list(&[]).unwrap(), "");
    }

    #[test]
    fn a_group_containing_the_separator_stays_one_group() {
        let header = list(&["eng,admins", "users"]).unwrap();
        assert_eq!(header, "eng%2Cadmins,users");
        assert_eq!(downstream_items(&header), vec!["eng,admins", "users"]);
        let header = list(&["\"a", "b\""]).unwrap();
        assert_eq!(header, "%22a,b%22");
    }

    #[test]
    fn control_characters_are_refused_naming_the_header_and_item() {
        for bad in [
            "a\r\nX-Injected: 1",
            "a\nb",
            "nul\0",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            assert!(
                matches!(
                    one(bad),
                    Err(HeaderRefusal::ControlCharacter { item: None, .. })
                ),
                "{bad:?}"
            );
        }
        let err = list(&["fine", "bad\r\n"]).unwrap_err();
        assert_eq!(
            err,
            HeaderRefusal::ControlCharacter {
                header: "X-User-Groups".into(),
                item: Some(1)
            }
        );
        assert!(err.to_string().contains("X-User-Groups` (item 1)"), "{err}");
    }

    #[test]
    fn edge_spaces_survive_trimming_receivers() {
        assert_eq!(one(" admin ").unwrap(), "%20admin%20");
        assert_eq!(list(&[" admins", "admins"]).unwrap(), "%20admins,admins");
        assert_eq!(
            downstream_items("%20admins,admins"),
            vec![" admins", "admins"]
        );
        assert_eq!(one("   ").unwrap(), "%20%20%20");
        assert_eq!(one("a b").unwrap(), "a b");
    }

    #[test]
    fn non_ascii_is_percent_encoded_utf8_and_percent_is_escaped() {
        assert_eq!(one("José Müller").unwrap(), "Jos%C3%A9 M%C3%BCller");
        assert_eq!(one("100%").unwrap(), "100%25");
        // A literal `%2C` cannot pass for an encoded comma.
        assert_eq!(
            downstream_items(&list(&["eng%2Cadmins"]).unwrap()),
            vec!["eng%2Cadmins"]
        );
        assert_eq!(one("\u{2028}").unwrap(), "%E2%80%A8");
    }

    #[test]
    fn long_values_are_refused() {
        let long = "a".repeat(DEFAULT_MAX_HEADER_BYTES + 1);
        assert!(matches!(one(&long), Err(HeaderRefusal::TooLong { .. })));
        // The bound applies after encoding.
        let wide = "é".repeat(DEFAULT_MAX_HEADER_BYTES / 6 + 1);
        assert!(matches!(one(&wide), Err(HeaderRefusal::TooLong { .. })));
        let many: Vec<String> = (0..10_000).map(|i| format!("group-{i}")).collect();
        assert!(matches!(
            identity_header_value("X-User-Groups", PolicyValue::List(&many), 1024),
            Err(HeaderRefusal::TooLong { limit: 1024, .. })
        ));
    }

    fn names(declared: &[&str]) -> HashSet<String> {
        declared.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_a_policy_may_not_set_are_refused() {
        let declared = names(&["x-team", "host", "content-length"]);
        let rules = HeaderNameRules {
            declared: &declared,
            configured: &["x-tenant".to_string()],
        };
        let check = |key: &str| rules.check(key, &mut HashSet::new());
        for reserved in [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "Mcp-Session-Id",
            "MCP-Protocol-Version",
            "Proxy-Anything",
            "X-Forwarded-For",
            "Forwarded",
            "Via",
            "Origin",
            "Sec-Fetch-Site",
            "Accept-Encoding",
        ] {
            assert_eq!(
                check(reserved),
                Err(HeaderRefusal::Reserved(reserved.into())),
                "{reserved}"
            );
        }
        assert!(matches!(
            check("Transfer_Encoding"),
            Err(HeaderRefusal::Underscore(_))
        ));
        assert!(matches!(
            check("x_user_email"),
            Err(HeaderRefusal::Underscore(_))
        ));
        assert!(matches!(
            check("bad header"),
            Err(HeaderRefusal::NotAName(_))
        ));
        assert!(matches!(
            check("X-Built-At-Run-Time"),
            Err(HeaderRefusal::Undeclared(_))
        ));
        for fine in ["X-User-Email", "Authorization", "X-Team", "x-tenant"] {
            assert!(check(fine).is_ok(), "{fine}");
        }
        let mut seen = HashSet::new();
        assert!(rules.check("X-User-Email", &mut seen).is_ok());
        assert_eq!(
            rules.check("x-user-email", &mut seen),
            Err(HeaderRefusal::Duplicate("x-user-email".into()))
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the items, a downstream that splits, trims and
            /// decodes gets exactly the items back: never more, never fewer.
            #[test]
            fn list_values_round_trip_through_a_splitting_downstream(
                items in proptest::collection::vec("[^\\p{Cc}]{1,12}", 1..6)
            ) {
                let header = identity_header_value(
                    "X-User-Groups",
                    PolicyValue::List(&items),
                    DEFAULT_MAX_HEADER_BYTES,
                ).unwrap();
                let text = header.to_str().unwrap();
                prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
                prop_assert_eq!(downstream_items(text), items);
            }

            #[test]
            fn values_are_visible_ascii_or_refused(text in "\\PC*|.*") {
                match identity_header_value("X-User-Name", PolicyValue::One(&text), DEFAULT_MAX_HEADER_BYTES) {
                    Ok(v) => {
                        let out = v.to_str().unwrap();
                        prop_assert!(!out.starts_with(' ') && !out.ends_with(' '));
                        let decoded = percent_encoding::percent_decode_str(out).decode_utf8().unwrap();
                        prop_assert_eq!(decoded.as_ref(), text.as_str());
                    }
                    Err(HeaderRefusal::ControlCharacter { .. }) => prop_assert!(text.chars().any(char::is_control)),
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
        }
    }
}
