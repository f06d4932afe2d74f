//! Script helpers that make the safe comparison the easy one: URIs compared
//! in their normal form and by whole path segments, and the domain of an
//! email address only when the address has exactly one.
//! (policies/README.md documents them for operators.)

use url::{Host, Url};

/// The longest URI the helpers look at.
const MAX_URI_BYTES: usize = 4096;

/// Why a URI has no normal form the proxy can vouch for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UriRefusal {
    /// Empty, or longer than the proxy reads.
    #[error("is empty or longer than {MAX_URI_BYTES} bytes")]
    Length,
    /// A character no URI may contain as it is.
    #[error("contains a space, a control character or a backslash")]
    Character,
    /// A malformed percent-escape.
    #[error("has a `%` that is not followed by two hex digits")]
    BadEscape,
    /// An escape servers disagree on decoding.
    #[error("encodes `/`, `\\`, `%` or a control character, which servers decode differently")]
    EncodedSeparator,
    /// Not an absolute URI; the parser's reason.
    #[error("is not an absolute URI ({0})")]
    Parse(String),
    /// Dot-segments in a path without hierarchy.
    #[error("has `.` or `..` segments in a path the proxy cannot resolve")]
    OpaqueDotSegment,
}

/// A URI in the form two readers agree on: scheme and host lower-case (a
/// trailing dot dropped from domain names), `localhost` as the empty host of
/// `file:` URIs, default ports dropped, percent-escapes of unreserved
/// characters decoded and the others upper-case, dot-segments resolved
/// (RFC 3986 §6.2.2, WHATWG URL). What could be read two ways is refused.
pub(crate) fn normalise_uri(text: &str) -> Result<String, UriRefusal> {
    if text.is_empty() || text.len() > MAX_URI_BYTES {
        return Err(UriRefusal::Length);
    }
    // The URL parser would silently drop tabs and newlines and turn `\` into
    // `/`; the downstream might not.
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(UriRefusal::Character);
    }
    let decoded = decode_unreserved(text)?;
    let mut url = Url::parse(&decoded).map_err(|e| UriRefusal::Parse(e.to_string()))?;
    if url.cannot_be_a_base() {
        if url.path().split('/').any(|s| s == "." || s == "..") {
            return Err(UriRefusal::OpaqueDotSegment);
        }
        return Ok(url.into());
    }
    let host = match url.host() {
        Some(Host::Domain(domain)) => {
            let lower = domain.to_ascii_lowercase();
            let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
            (trimmed != domain).then(|| trimmed.to_string())
        }
        _ => None,
    };
    if let Some(host) = host {
        url.set_host(Some(&host))
            .map_err(|e| UriRefusal::Parse(e.to_string()))?;
    }
    Ok(url.into())
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3) and
/// upper-cases the hex of the rest; refuses broken escapes and encoded
/// separators.
fn decode_unreserved(text: &str) -> Result<String, UriRefusal> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(offset) = text[i..].find('%') {
        let at = i + offset;
        out.push_str(&text[i..at]);
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(high), Some(low)) = (hex(bytes.get(at + 1)), hex(bytes.get(at + 2))) else {
            return Err(UriRefusal::BadEscape);
        };
        let byte = (high * 16 + low) as u8;
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' | b'\\' | b'%' | 0..=0x1f | 0x7f => return Err(UriRefusal::EncodedSeparator),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
        i = at + 3;
    }
    out.push_str(&text[i..]);
    Ok(out)
}

/// Whether `uri` is `prefix` or lies beneath it, comparing normal forms and
/// whole path segments: `file:///finance` covers `file:///finance/x` but not
/// `file:///finance-public/x`. Either side without a normal form is an
/// error, so a policy using it fails closed whichever way it is written.
pub(crate) fn uri_within(uri: &str, prefix: &str) -> Result<bool, String> {
    let uri = normalise_uri(uri).map_err(|e| format!("uri_within: the URI {e}"))?;
    let prefix = normalise_uri(prefix).map_err(|e| format!("uri_within: the prefix {e}"))?;
    Ok(match uri.strip_prefix(&prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with(['/', '?', '#']),
        None => false,
    })
}

/// The lower-case (IDNA ASCII) domain of an address with exactly one `@`, a
/// non-empty local part and a valid DNS name after it; `""` otherwise.
pub(crate) fn email_domain(email: &str) -> String {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return String::new();
    };
    if local.is_empty() || local.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return String::new();
    }
    // The host parser would also percent-decode; an address never needs it.
    if !domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || !c.is_ascii())
    {
        return String::new();
    }
    match Host::parse(domain) {
        Ok(Host::Domain(ascii)) if is_dns_name(&ascii) => ascii,
        _ => String::new(),
    }
}

/// Letters, digits and hyphens in 2 or more labels of 1–63 characters, no
/// label starting or ending with `-`, 253 characters at most.
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether one of `user.groups` is exactly one of `groups`. Comparing whole
/// strings of two arrays leaves no room for `in` on a string (a substring
/// test) or a comma-joined list.
pub(crate) fn in_any_group(user: &rhai::Map, groups: &rhai::Array) -> bool {
    let Some(mine) = user
        .get("groups")
        .and_then(|g| g.read_lock::<rhai::Array>().map(|a| a.clone()))
    else {
        return false;
    };
    mine.iter().any(|group| {
        group
            .read_lock::<rhai::ImmutableString>()
            .is_some_and(|group| {
                groups.iter().any(|wanted| {
                    wanted
                        .read_lock::<rhai::ImmutableString>()
                        .is_some_and(|wanted| *wanted == *group)
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_normalised_the_way_servers_read_them() {
        for (raw, normal) in [
            ("file:///finance/x", "file:///finance/x"),
            ("FILE:///finance/x", "file:///finance/x"),
            ("file://localhost/finance/x", "file:///finance/x"),
            ("file://LOCALHOST/finance/x", "file:///finance/x"),
            ("file:///tmp/../finance/x", "file:///finance/x"),
            ("file:///tmp/%2e%2E/finance/x", "file:///finance/x"),
            ("file:///./finance/./x", "file:///finance/x"),
            ("file:///%66inance/x", "file:///finance/x"),
            ("file:///finance/a%3ab", "file:///finance/a%3Ab"),
            ("HTTPS://Example.COM:443/a/../b", "https://example.com/b"),
            ("https://example.com./b", "https://example.com/b"),
            ("Secret://DB-Password", "secret://db-password"),
            ("secret://", "secret://"),
            ("secret://db/a/../b", "secret://db/b"),
            ("urn:isbn:123", "urn:isbn:123"),
        ] {
            assert_eq!(normalise_uri(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn what_servers_read_differently_is_refused() {
        for (raw, why) in [
            ("", UriRefusal::Length),
            ("file:///fin\tance/x", UriRefusal::Character),
            ("file:///finance/x\n", UriRefusal::Character),
            ("file:///tmp/..\\finance/x", UriRefusal::Character),
            ("file:///a b", UriRefusal::Character),
            ("file:///tmp/%2", UriRefusal::BadEscape),
            ("file:///tmp/%zz", UriRefusal::BadEscape),
            ("file:///tmp%2F..%2Ffinance/x", UriRefusal::EncodedSeparator),
            ("file:///tmp/..%5Cfinance", UriRefusal::EncodedSeparator),
            ("file:///%252e%252e/finance", UriRefusal::EncodedSeparator),
            ("file:///finance%00.txt", UriRefusal::EncodedSeparator),
            ("urn:a/../b", UriRefusal::OpaqueDotSegment),
        ] {
            assert_eq!(normalise_uri(raw), Err(why), "{raw:?}");
        }
        assert!(matches!(
            normalise_uri("/finance/x"),
            Err(UriRefusal::Parse(_))
        ));
        assert!(normalise_uri(&format!("file:///{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn within_compares_whole_segments_of_normal_forms() {
        let within = |u: &str, p: &str| uri_within(u, p).unwrap();
        assert!(within("file:///finance/x", "file:///finance/"));
        assert!(within("file:///tmp/../finance/x", "file:///finance/"));
        assert!(within("FILE:///finance/x", "file:///finance/"));
        assert!(within("file://localhost/finance/x", "file:///finance/"));
        assert!(within("file:///finance", "file:///finance"));
        assert!(within("file:///finance/x", "file:///finance"));
        assert!(within("file:///finance?q", "file:///finance"));
        assert!(within("secret://db-password", "secret://"));
        assert!(!within("file:///finance-public/x", "file:///finance"));
        assert!(!within("file:///docs/finance/x", "file:///finance/"));
        assert!(!within("file:///finance", "file:///finance/"));
        assert!(!within(
            "https://example.com@evil.com/",
            "https://example.com/"
        ));
        assert!(uri_within("file:///%2e%2e%2Ffinance", "file:///").is_err());
        assert!(uri_within("file:///x", "not a uri").is_err());
    }

    #[test]
    fn group_membership_is_exact() {
        let mut user = rhai::Map::new();
        user.insert(
            "groups".into(),
            rhai::Dynamic::from_array(vec!["eng,admins".into(), "Ops".into()]),
        );
        let groups = |g: &[&str]| {
            g.iter()
                .map(|s| rhai::Dynamic::from(s.to_string()))
                .collect()
        };
        assert!(in_any_group(&user, &groups(&["x", "Ops"])));
        assert!(!in_any_group(
            &user,
            &groups(&["admins", "eng", "ops", "Op"])
        ));
        assert!(!in_any_group(&rhai::Map::new(), &groups(&["Ops"])));
    }

    #[test]
    fn email_domain_needs_exactly_one_at_and_a_valid_domain() {
        for (email, domain) in [
            ("alice@example.com", "example.com"),
            ("Carol@EXAMPLE.ORG", "example.org"),
            ("a.b+tag@mail.example.co.uk", "mail.example.co.uk"),
            ("x@bücher.de", "xn--bcher-kva.de"),
            ("alice@evil.com@example.com", ""),
            ("\"alice@evil.com\"@example.com", ""),
            ("@example.com", ""),
            ("alice@", ""),
            ("alice", ""),
            ("", ""),
            ("alice@example.com.", ""),
            ("alice@localhost", ""),
            ("alice@127.0.0.1", ""),
            ("alice@[127.0.0.1]", ""),
            ("alice@ex%61mple.com", ""),
            ("alice@example.com ", ""),
            ("alice@exa mple.com", ""),
            ("al ice@example.com", ""),
            ("alice@-example.com", ""),
            ("alice@example_corp.com", ""),
            ("alice@example..com", ""),
        ] {
            assert_eq!(email_domain(email), domain, "{email:?}");
        }
    }
}
