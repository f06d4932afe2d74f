//! Addresses and URLs shared by configuration and the OAuth server.
//!
//! The same host and scheme rules hold for what the operator writes
//! (`upstream.issuer`, `registration.allowed_schemes`) and for what clients
//! and the provider send (redirect URIs, discovered endpoints), so they live
//! here, below both.

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

#[cfg(test)]
mod tests {
    use super::*;

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
