//! Redirect URI rules (DESIGN.md invariant 3).
//!
//! Registered URIs are https, http on a loopback host, or an operator
//! allow-listed private-use scheme; never script-capable schemes, userinfo or
//! fragments. At /authorize the match is exact, except that a loopback IP
//! literal may use any port (RFC 8252 §7.3).

use url::Url;

pub(crate) use crate::net::{check_host, validate_for_registration};

/// Whether `requested` matches a registered URI: byte for byte, or, for a
/// URI registered with a loopback IP literal (`http://127.0.0.1` or
/// `http://[::1]`), byte for byte except the port (RFC 8252 §7.3).
///
/// The strings are compared, not what a URL parser makes of them: `127.1`,
/// `0x7f000001`, `%2e` or upper case are different URIs here.
pub(crate) fn matches_registered(registered: &[String], requested: &str) -> bool {
    registered
        .iter()
        .any(|r| r == requested || loopback_port_variant(r, requested))
}

/// The loopback IP literals whose port may vary, as the parser writes them.
const LOOPBACK_ORIGINS: [&str; 2] = ["http://127.0.0.1", "http://[::1]"];

fn loopback_port_variant(registered: &str, requested: &str) -> bool {
    LOOPBACK_ORIGINS.iter().any(|origin| {
        let (Some(registered), Some(requested)) = (
            registered.strip_prefix(origin),
            requested.strip_prefix(origin),
        ) else {
            return false;
        };
        match (without_port(registered), without_port(requested)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    })
}

/// What follows the host once an optional `:port` is removed; `None` unless
/// the port is written as the parser writes one (1-65535, no leading zero)
/// and the path follows at once (no userinfo, no longer host name).
fn without_port(after_host: &str) -> Option<&str> {
    let rest = match after_host.strip_prefix(':') {
        None => after_host,
        Some(after_colon) => {
            let digits = after_colon.bytes().take_while(u8::is_ascii_digit).count();
            let (port, rest) = after_colon.split_at(digits);
            let canonical = !port.starts_with('0') && port.parse::<u16>().is_ok_and(|p| p != 0);
            if !canonical {
                return None;
            }
            rest
        }
    };
    rest.starts_with('/').then_some(rest)
}

/// The host a person is told the browser will go to.
pub(crate) fn display_host(uri: &str) -> String {
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
    use crate::net::check_allowed_scheme;

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

    #[test]
    fn invariant_3_redirect_uri_matches_the_registered_string_not_the_parsed_url() {
        let reg = vec![
            "http://127.0.0.1:3000/callback".to_string(),
            "http://[::1]:3000/cb".to_string(),
            "https://app.example.com/cb".to_string(),
        ];
        for same_url_other_string in [
            "http://127.1:3000/callback",
            "http://0x7f000001:3000/callback",
            "http://2130706433:3000/callback",
            "http://0177.0.0.1:3000/callback",
            "http://127.0.0.1:03000/callback",
            "http://127.0.0.1:3000/./callback",
            "http://127.0.0.1:3000/%63allback",
            "HTTP://127.0.0.1:3000/callback",
            "http://[0:0:0:0:0:0:0:1]:3000/cb",
            "http://[::1]:3000/%63b",
            "https://app.example.com:443/cb",
            "https://APP.example.com/cb",
            "https://app.example.com./cb",
            "https://app.example.com/%63b",
            "https://app.example.com/x/../cb",
            "https://@app.example.com/cb",
            "HTTPS://app.example.com/cb",
        ] {
            assert!(
                !matches_registered(&reg, same_url_other_string),
                "{same_url_other_string}"
            );
        }
        // The loopback IP literal's port, and only the port, may vary.
        for port_variant in [
            "http://127.0.0.1/callback",
            "http://127.0.0.1:1/callback",
            "http://127.0.0.1:65535/callback",
            "http://[::1]:49152/cb",
        ] {
            assert!(matches_registered(&reg, port_variant), "{port_variant}");
        }
        for bad_port in [
            "http://127.0.0.1:0/callback",
            "http://127.0.0.1:65536/callback",
            "http://127.0.0.1:/callback",
            "http://127.0.0.1:3000@evil.example/callback",
            "http://127.0.0.1.evil.example:3000/callback",
            "http://127.0.0.1:3000/callback#f",
        ] {
            assert!(!matches_registered(&reg, bad_port), "{bad_port}");
        }
    }

    #[test]
    fn invariant_3_registration_refuses_spellings_the_parser_would_rewrite() {
        for non_canonical in [
            "http://127.1:3000/cb",
            "http://0x7f000001:3000/cb",
            "http://2130706433/cb",
            "http://[0:0:0:0:0:0:0:1]:3000/cb",
            "https://APP.example.com/cb",
            "https://app.example.com",
            "https://app.example.com:443/cb",
            "https://app.example.com/a/../cb",
            "https://app.example.com/c b",
            "https://app.example.com/\u{202e}cb",
            "https://ex%61mple.com/cb",
            "https://\u{430}pple.com/cb",
        ] {
            let err = validate_for_registration(non_canonical, &allowed()).unwrap_err();
            assert!(err.contains("normal form"), "{non_canonical}: {err}");
        }
        // The message names the form to register instead.
        let err = validate_for_registration("https://APP.example.com/cb", &allowed()).unwrap_err();
        assert!(err.contains("`https://app.example.com/cb`"), "{err}");
    }

    #[test]
    fn invariant_3_registration_refuses_hosts_that_are_not_dns_names_or_ip_literals() {
        for bad in [
            "https://*.example.com/cb",
            "https://*/cb",
            "https://a_b.example.com/cb",
            "https://a..example.com/cb",
            "https://-a.example.com/cb",
            "https://a-.example.com/cb",
            "https://example.com./cb",
            "cursor://*/cb",
            "cursor://a%20b/cb",
            "https://@app.example.com/cb",
            "http://@127.0.0.1:3000/cb",
        ] {
            assert!(validate_for_registration(bad, &allowed()).is_err(), "{bad}");
        }
        let long_label = format!("https://{}.example.com/cb", "a".repeat(64));
        assert!(validate_for_registration(&long_label, &allowed()).is_err());
        for ok in [
            "https://xn--pple-43d.com/cb",
            "https://a-b.example.com/cb",
            "https://10.0.0.5/cb",
            "https://[2001:db8::1]/cb",
        ] {
            assert!(validate_for_registration(ok, &allowed()).is_ok(), "{ok}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// A registered URI in normal form, from its parts.
        #[derive(Debug, Clone)]
        struct Registered {
            scheme: &'static str,
            host: &'static str,
            port: Option<u16>,
            path: String,
            query: Option<String>,
        }

        impl Registered {
            fn with_port(&self, port: Option<u16>) -> String {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let query = self
                    .query
                    .as_ref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                format!("{}://{}{port}{}{query}", self.scheme, self.host, self.path)
            }
            fn uri(&self) -> String {
                self.with_port(self.port)
            }
            fn is_loopback_ip_literal(&self) -> bool {
                self.scheme == "http" && (self.host == "127.0.0.1" || self.host == "[::1]")
            }
        }

        fn registered() -> impl Strategy<Value = Registered> {
            (
                prop::sample::select(vec![
                    ("http", "127.0.0.1"),
                    ("http", "[::1]"),
                    ("http", "localhost"),
                    ("https", "app.example.com"),
                    ("https", "10.1.2.3"),
                    ("cursor", "anysphere.cursor-mcp"),
                ]),
                prop::option::of(1024u16..),
                "(/[a-z0-9]{1,8}){1,3}/?",
                prop::option::of("[a-z]{1,4}=[a-z0-9]{0,4}"),
            )
                .prop_map(|((scheme, host), port, path, query)| Registered {
                    scheme,
                    host,
                    port,
                    path,
                    query,
                })
        }

        /// A way to write a URI that a URL parser may read as the same.
        #[derive(Debug, Clone)]
        enum Variant {
            Same,
            UpperCase(usize),
            PercentEncode(usize),
            TrailingSlash,
            TrailingDotOnHost,
            Port(Option<u16>),
            HostSpelling(&'static str),
            Userinfo(&'static str),
            Fragment,
            DefaultPort,
        }

        fn variant() -> impl Strategy<Value = Variant> {
            prop_oneof![
                Just(Variant::Same),
                any::<usize>().prop_map(Variant::UpperCase),
                any::<usize>().prop_map(Variant::PercentEncode),
                Just(Variant::TrailingSlash),
                Just(Variant::TrailingDotOnHost),
                prop::option::of(any::<u16>()).prop_map(Variant::Port),
                prop::sample::select(vec![
                    "127.1",
                    "0x7f000001",
                    "2130706433",
                    "0177.0.0.1",
                    "127.000.000.001",
                    "[0:0:0:0:0:0:0:1]",
                    "[::ffff:127.0.0.1]",
                    "LOCALHOST",
                    "localhost.",
                ])
                .prop_map(Variant::HostSpelling),
                prop::sample::select(vec!["user@", "user:pw@", "@", ":@"])
                    .prop_map(Variant::Userinfo),
                Just(Variant::Fragment),
                Just(Variant::DefaultPort),
            ]
        }

        /// The candidate, and whether it is only a port change.
        fn apply(r: &Registered, v: &Variant) -> (String, bool) {
            let uri = r.uri();
            let authority_start = r.scheme.len() + 3;
            match v {
                Variant::Same => (uri, false),
                Variant::UpperCase(i) => {
                    let i = i % uri.len();
                    let mut chars: Vec<char> = uri.chars().collect();
                    chars[i] = chars[i].to_ascii_uppercase();
                    (chars.into_iter().collect(), false)
                }
                Variant::PercentEncode(i) => {
                    let i = i % uri.len();
                    let c = uri.as_bytes()[i];
                    (format!("{}%{c:02X}{}", &uri[..i], &uri[i + 1..]), false)
                }
                Variant::TrailingSlash => (format!("{uri}/"), false),
                Variant::TrailingDotOnHost => {
                    let (head, tail) = uri.split_at(authority_start + r.host.len());
                    (format!("{head}.{tail}"), false)
                }
                Variant::Port(p) => (r.with_port(*p), true),
                Variant::HostSpelling(h) => {
                    let rest = &uri[authority_start + r.host.len()..];
                    (format!("{}://{h}{rest}", r.scheme), false)
                }
                Variant::Userinfo(u) => {
                    let (head, tail) = uri.split_at(authority_start);
                    (format!("{head}{u}{tail}"), false)
                }
                Variant::Fragment => (format!("{uri}#x"), false),
                Variant::DefaultPort => {
                    let port = if r.scheme == "https" { 443 } else { 80 };
                    (r.with_port(Some(port)), true)
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn invariant_3_matcher_accepts_exactly_the_registered_string_or_a_loopback_port(
                r in registered(),
                v in variant(),
            ) {
                let registered = r.uri();
                let (candidate, port_change) = apply(&r, &v);
                let port_ok = port_change
                    && r.is_loopback_ip_literal()
                    && !candidate.contains(":0/")
                    && !candidate.contains(":0?");
                let expected = candidate == registered || port_ok;
                prop_assert_eq!(
                    matches_registered(std::slice::from_ref(&registered), &candidate),
                    expected,
                    "registered {} candidate {}",
                    registered,
                    candidate
                );
            }

            #[test]
            fn invariant_3_registered_uris_are_what_the_parser_writes(
                r in registered(),
                v in variant(),
            ) {
                let (candidate, _) = apply(&r, &v);
                if validate_for_registration(&candidate, &["cursor".to_string()]).is_ok() {
                    let parsed = Url::parse(&candidate).unwrap();
                    prop_assert_eq!(parsed.as_str(), candidate.as_str());
                    prop_assert!(!candidate.contains('#') && !candidate.contains('@'));
                    prop_assert!(matches!(parsed.scheme(), "https" | "http" | "cursor"));
                    if parsed.scheme() == "http" {
                        prop_assert!(crate::net::is_loopback_host(parsed.host_str().unwrap()));
                    }
                }
            }
        }
    }
}
