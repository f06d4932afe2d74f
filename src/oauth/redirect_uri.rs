//! Redirect URI rules (DESIGN.md invariant 3).
//!
//! Registered URIs are https, http on a loopback host, or an operator
//! allow-listed private-use scheme; never script-capable schemes, userinfo or
//! fragments. At /authorize the match is exact, except that a loopback IP
//! literal may use any port (RFC 8252 §7.3).

use std::net::IpAddr;

use url::Url;

/// Schemes that can run code or read local files: refused even when an
/// operator lists them.
const FORBIDDEN_SCHEMES: [&str; 6] = ["javascript", "data", "file", "vbscript", "blob", "about"];

/// The longest redirect URI accepted.
pub const MAX_REDIRECT_URI_LEN: usize = 2048;

/// Checks a scheme an operator wants to allow (`registration.allowed_schemes`).
pub fn check_allowed_scheme(scheme: &str) -> Result<(), String> {
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

/// Checks a redirect URI a client wants to register.
pub fn validate_for_registration(uri: &str, allowed_schemes: &[String]) -> Result<(), String> {
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
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "redirect URI `{uri}` must not contain user information"
        ));
    }
    match scheme {
        "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("redirect URI `{uri}` has no host"));
            }
            Ok(())
        }
        "http" => {
            if url.host_str().is_some_and(crate::config::is_loopback_host) {
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

/// Whether `requested` matches a registered URI: exactly, or a loopback IP
/// literal differing only in port.
pub fn matches_registered(registered: &[String], requested: &str) -> bool {
    registered
        .iter()
        .any(|r| r == requested || loopback_port_variant(r, requested))
}

fn loopback_port_variant(registered: &str, requested: &str) -> bool {
    let (Ok(a), Ok(b)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    let is_loopback_ip = |u: &Url| {
        u.scheme() == "http"
            && u.host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback())
    };
    is_loopback_ip(&a)
        && is_loopback_ip(&b)
        && a.host_str() == b.host_str()
        && a.path() == b.path()
        && a.query() == b.query()
        && b.fragment().is_none()
        && b.username().is_empty()
        && b.password().is_none()
}

/// The host a person is told the browser will go to.
pub fn display_host(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(url) => match url.host_str() {
            Some(host) => match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            },
            None => format!("the application ({}:)", url.scheme()),
        },
        Err(_) => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["cursor".into()]
    }

    #[test]
    fn registration_accepts_https_loopback_and_allowed_schemes() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:3334/callback",
            "http://localhost:6274/oauth/callback",
            "http://[::1]:8080/cb",
            "cursor://anysphere.cursor-mcp/oauth/callback",
        ] {
            assert!(validate_for_registration(ok, &allowed()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn registration_refuses_dangerous_uris() {
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "http://evil.example/cb",
            "https://user:pw@app.example/cb",
            "https://app.example/cb#frag",
            "vscode://x/cb",
            "/relative/cb",
            "https://",
        ] {
            assert!(validate_for_registration(bad, &allowed()).is_err(), "{bad}");
        }
        let huge = format!("https://a.example/{}", "x".repeat(3000));
        assert!(validate_for_registration(&huge, &allowed()).is_err());
    }

    #[test]
    fn forbidden_schemes_cannot_be_allow_listed() {
        assert!(check_allowed_scheme("javascript").is_err());
        assert!(check_allowed_scheme("https").is_err());
        assert!(check_allowed_scheme("cursor://").is_err());
        assert!(check_allowed_scheme("cursor").is_ok());
        assert!(validate_for_registration("javascript:alert(1)", &["javascript".into()]).is_err());
    }

    #[test]
    fn matching_is_exact_except_loopback_ip_port() {
        let reg = vec![
            "https://app.example.com/cb".to_string(),
            "http://127.0.0.1:3000/callback".to_string(),
            "http://localhost:3000/callback".to_string(),
        ];
        assert!(matches_registered(&reg, "https://app.example.com/cb"));
        assert!(!matches_registered(&reg, "https://app.example.com/cb/"));
        assert!(!matches_registered(&reg, "https://app.example.com/cb?x=1"));
        assert!(!matches_registered(&reg, "https://APP.example.com/cb"));
        assert!(matches_registered(&reg, "http://127.0.0.1:49152/callback"));
        assert!(!matches_registered(&reg, "http://127.0.0.1:49152/other"));
        // localhost is a name, not an IP literal: exact match only.
        assert!(matches_registered(&reg, "http://localhost:3000/callback"));
        assert!(!matches_registered(&reg, "http://localhost:4000/callback"));
    }
}
