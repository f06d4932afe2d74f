//! Addresses, URLs and HTTP tokens shared by configuration and the servers.
//!
//! The same host and scheme rules hold for what the operator writes
//! (`upstream.issuer`, `registration.allowed_schemes`) and for what clients
//! and the provider send (redirect URIs, discovered endpoints), and the same
//! token rule for a configured cookie name as for a header name on the wire,
//! so they live here, below both.

use url::{Host, Url};

/// Schemes that can run code or read local files: refused in redirect URIs
/// and in `registration.allowed_schemes`, even when an operator lists them.
pub(crate) const FORBIDDEN_SCHEMES: [&str; 6] =
    ["javascript", "data", "file", "vbscript", "blob", "about"];

/// Whether `host` (as a URL gives it, IPv6 literals in brackets or not) is
/// `localhost` or a loopback IP address: the one place plain http is
/// acceptable, because nothing leaves the machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Checks a scheme an operator wants to allow (`registration.allowed_schemes`).
pub(crate) fn check_allowed_scheme(scheme: &str) -> Result<(), String> {
    let lower = scheme.to_ascii_lowercase();
    let well_formed = !lower.is_empty()
        && lower.starts_with(|c: char| c.is_ascii_alphabetic())
        && lower
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(format!(
            "`{scheme}` is not a URI scheme (write it without \"://\")"
        ));
    }
    if FORBIDDEN_SCHEMES.contains(&lower.as_str()) || lower == "http" || lower == "https" {
        return Err(format!("`{scheme}` cannot be allow-listed"));
    }
    Ok(())
}

// ---------------------------------------------------------------- redirect URIs
// What a redirect URI may be when a client registers one (RFC 7591), a
// configured client lists one (`[[clients]]`), or a metadata document
// names one: one rule for all three (DESIGN.md invariant 3).

/// The longest redirect URI accepted.
pub(crate) const MAX_REDIRECT_URI_LEN: usize = 2048;

/// Checks a redirect URI a client wants to register. It is stored and later
/// compared exactly as sent, so it must already be in the form the URL parser
/// gives it: a spelling that a parser would rewrite (`127.1`, `0x7f000001`,
/// upper case, `%61`, default ports, dot segments) is refused, never stored.
pub(crate) fn validate_for_registration(
    uri: &str,
    allowed_schemes: &[String],
) -> Result<(), String> {
    if uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!(
            "redirect URI longer than {MAX_REDIRECT_URI_LEN} characters"
        ));
    }
    if uri.contains('#') {
        return Err(format!("redirect URI `{uri}` must not contain a fragment"));
    }
    let url = Url::parse(uri)
        .map_err(|e| format!("redirect URI `{uri}` is not an absolute URI ({e})"))?;
    let scheme = url.scheme();
    if FORBIDDEN_SCHEMES.contains(&scheme) {
        return Err(format!("redirect URI scheme `{scheme}:` is not allowed"));
    }
    if !url.username().is_empty() || url.password().is_some() || has_userinfo(uri) {
        return Err(format!(
            "redirect URI `{uri}` must not contain user information"
        ));
    }
    if url.as_str() != uri {
        return Err(format!(
            "redirect URI `{uri}` is not in normal form; register it as `{}`",
            url.as_str()
        ));
    }
    if let Some(host) = url.host() {
        check_host(&host).map_err(|why| format!("redirect URI `{uri}`: {why}"))?;
    }
    match scheme {
        "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("redirect URI `{uri}` has no host"));
            }
            Ok(())
        }
        "http" => {
            if url.host_str().is_some_and(is_loopback_host) {
                Ok(())
            } else {
                Err(format!(
                    "redirect URI `{uri}` uses http on a non-loopback host; use https, or http://127.0.0.1 for native apps"
                ))
            }
        }
        other => {
            if allowed_schemes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(other))
            {
                Ok(())
            } else {
                Err(format!(
                    "redirect URI scheme `{other}:` is not allowed on this server (an administrator can allow it in registration.allowed_schemes)"
                ))
            }
        }
    }
}

/// Whether the authority part of `uri` carries an `@` (an empty userinfo such
/// as `https://@host/` leaves no trace in the parsed URL).
fn has_userinfo(uri: &str) -> bool {
    uri.split_once("//")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| authority.contains('@'))
}

/// The longest DNS name (RFC 1035 §2.3.4).
const MAX_DNS_NAME_LEN: usize = 253;

/// A host people can read on the consent page: an IP literal, or a DNS
/// host name of letters, digits and inner hyphens (RFC 1123 §2.1) in labels
/// of 1 to 63 characters. This refuses wildcards (`*`), `_`, `%` escapes,
/// spaces, empty labels and a trailing dot. International names are only
/// accepted in their ASCII (`xn--`) form, which is what the page shows, so
/// a look-alike in another script cannot pass for a familiar name.
pub(crate) fn check_host(host: &Host<&str>) -> Result<(), String> {
    let name = match host {
        Host::Ipv4(_) | Host::Ipv6(_) => return Ok(()),
        Host::Domain(name) => *name,
    };
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err(format!(
            "the host must be 1 to {MAX_DNS_NAME_LEN} characters long"
        ));
    }
    for label in name.split('.') {
        let well_formed = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !well_formed {
            return Err(format!(
                "host `{name}` is not a DNS name (letters, digits and inner hyphens in non-empty labels) or an IP address"
            ));
        }
    }
    Ok(())
}

/// Whether `bytes` are all RFC 9110 §5.6.2 `tchar` (the characters of a
/// header name, a method or a cookie name), by a table.
pub(crate) fn is_token(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & IS_TOKEN_CHAR[usize::from(b)])
}

/// RFC 9110 §5.6.2 `tchar`, by byte: one load per byte of a name instead of
/// a search of the punctuation list.
static IS_TOKEN_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_visible_ascii_without_the_delimiters() {
        // RFC 9110 §5.6.2 read the other way round: every visible ASCII
        // character but `"(),/:;<=>?@[\]{}`, for every byte value.
        for b in 0..=255u8 {
            let expected = b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b);
            assert_eq!(is_token(&[b]), expected, "byte {b:#04x}");
        }
        assert!(is_token(b"mcp-session-id"));
        assert!(!is_token(b"mcp session"));
        assert!(is_token(b""), "emptiness is the caller's rule");
    }

    #[test]
    fn loopback_hosts_are_localhost_and_loopback_ips() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn allowed_schemes_are_well_formed_and_never_script_capable() {
        for scheme in ["cursor", "vscode", "com.example.app", "x-my+app"] {
            assert!(check_allowed_scheme(scheme).is_ok(), "{scheme}");
        }
        for scheme in ["", "1app", "cursor://", "my app", "my_app"] {
            let err = check_allowed_scheme(scheme).unwrap_err();
            assert!(err.contains("is not a URI scheme"), "{scheme}: {err}");
        }
        for scheme in FORBIDDEN_SCHEMES
            .into_iter()
            .chain(["http", "HTTPS", "JavaScript"])
        {
            let err = check_allowed_scheme(scheme).unwrap_err();
            assert!(err.contains("cannot be allow-listed"), "{scheme}: {err}");
        }
    }
}
