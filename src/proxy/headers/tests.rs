use super::*;
use proptest::prelude::*;

fn identity(n: &HeaderName) -> bool {
    let n = lenient_name(n);
    n == "authorization" || n.starts_with("x-user-") || n == "x-team"
}

static PUBLIC_HOST: HeaderValue = HeaderValue::from_static("mcp.example.com");
static PUBLIC_PROTO: HeaderValue = HeaderValue::from_static("https");

fn no_trust() -> &'static TrustedProxies {
    static NONE: std::sync::OnceLock<TrustedProxies> = std::sync::OnceLock::new();
    NONE.get_or_init(TrustedProxies::default)
}

fn forwarding<'a>(peer: &str, trusted: &'a TrustedProxies) -> Forwarding<'a> {
    Forwarding {
        peer: Some(peer.parse().unwrap()),
        trusted_proxies: trusted,
        public_host: &PUBLIC_HOST,
        public_proto: &PUBLIC_PROTO,
    }
}

fn downstream(h: &HeaderMap, pass: &[&str], fw: &Forwarding<'_>) -> HeaderMap {
    let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
    let policy = vec![(
        HeaderName::from_static("x-user-email"),
        HeaderValue::from_static("alice@example.com"),
    )];
    as_map(downstream_request_headers(
        h.clone(),
        identity,
        &policy,
        fw,
        &pass,
    ))
}

/// The lines as a map, every line a value of its own: a name written twice
/// shows as two values.
fn as_map(lines: HeaderLines) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        map.append(name, value);
    }
    map
}

/// The lines the downstream receives for these client lines (appended in
/// order) and these policy headers, from an untrusted 127.0.0.1.
fn lines_for(sent: &[(&str, &str)], policy: &[(&'static str, &'static str)]) -> HeaderLines {
    let sent: Vec<(String, String)> = sent
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let policy: Vec<(HeaderName, HeaderValue)> = policy
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
    downstream_request_headers(
        header_map(&sent),
        identity,
        &policy,
        &forwarding("127.0.0.1", no_trust()),
        &[],
    )
}

#[test]
fn a_repeated_client_header_crosses_as_all_its_lines_in_order() {
    let sent = [
        ("accept", "application/json"),
        ("x-trace", "a"),
        ("accept", "text/event-stream"),
        ("x-trace", "b"),
    ];
    let lines = lines_for(&sent, &[]);
    let crossed: Vec<(&str, &str)> = lines
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .filter(|(n, _)| ["accept", "x-trace"].contains(n))
        .collect();
    assert_eq!(
        crossed,
        [
            ("accept", "application/json"),
            ("accept", "text/event-stream"),
            ("x-trace", "a"),
            ("x-trace", "b"),
        ]
    );
    let h = header_map(&sent.map(|(n, v)| (n.to_string(), v.to_string())));
    assert_eq!(lines_of(h).len(), 4);
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
    let out = downstream(&h, &[], &forwarding("127.0.0.1", no_trust()));
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
}

#[test]
fn invariant_6_client_forwarding_headers_are_replaced_by_the_proxys_own() {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=http"),
        ("x-forwarded-for", "6.6.6.6"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-uri", "/admin"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-server", "evil"),
        ("x-forwarded", "for=6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x-original-uri", "/admin"),
        ("x-original-host", "evil.example"),
        ("x-rewrite-url", "/admin"),
        ("x-real-ip", "6.6.6.6"),
        ("x_real_ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("client-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("fastly-client-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("x-envoy-external-address", "6.6.6.6"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-host", "evil.example"),
        ("via", "1.1 evil"),
    ] {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let out = downstream(&h, &[], &forwarding("203.0.113.9", no_trust()));
    let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        vec![
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-user-email"
        ]
    );
    assert_eq!(out["x-forwarded-for"], "203.0.113.9");
    assert_eq!(out["x-forwarded-host"], "mcp.example.com");
    assert_eq!(out["x-forwarded-proto"], "https");
    assert_eq!(out["via"], "1.1 mcp-oauth-proxy");
}

#[test]
fn invariant_6_a_trusted_load_balancers_forwarded_for_is_appended_to() {
    let lb = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
    let mut h = HeaderMap::new();
    h.append("x-forwarded-for", "198.51.100.7".parse().unwrap());
    h.append("x-forwarded-for", "10.9.9.9".parse().unwrap());
    h.append("via", "1.1 lb".parse().unwrap());
    h.append("x-real-ip", "198.51.100.7".parse().unwrap());
    let out = downstream(&h, &[], &forwarding("10.1.2.3", &lb));
    assert_eq!(out["x-forwarded-for"], "198.51.100.7, 10.9.9.9, 10.1.2.3");
    assert_eq!(out["via"], "1.1 lb, 1.1 mcp-oauth-proxy");
    assert!(out.get("x-real-ip").is_none());
    // The same headers from a peer outside the trusted list are dropped.
    let out = downstream(&h, &[], &forwarding("203.0.113.9", &lb));
    assert_eq!(out["x-forwarded-for"], "203.0.113.9");
    assert_eq!(out["via"], "1.1 mcp-oauth-proxy");
}

#[test]
fn client_cookies_reach_the_downstream_only_by_name_and_never_the_proxys_own() {
    let mut h = HeaderMap::new();
    h.append(
        "cookie",
        "__Host-mcp-browser=x; theirs=1; other=2".parse().unwrap(),
    );
    h.append(
        "cookie",
        "mcp-browser=y; __host-MCP-csrf=z; app=3".parse().unwrap(),
    );
    let out = downstream(&h, &[], &forwarding("127.0.0.1", no_trust()));
    assert!(out.get("cookie").is_none(), "no cookie passes by default");
    let out = downstream(
        &h,
        &["theirs", "app", "mcp-browser", "__Host-mcp-browser"],
        &forwarding("127.0.0.1", no_trust()),
    );
    assert_eq!(
        out.get_all("cookie").iter().collect::<Vec<_>>(),
        vec!["theirs=1; app=3"]
    );
}

#[test]
fn a_downstream_cannot_set_the_proxys_cookies_or_speak_for_its_origin() {
    let mut h = HeaderMap::new();
    h.insert("connection", "close, x-hop".parse().unwrap());
    h.insert("x-hop", "1".parse().unwrap());
    h.insert("transfer-encoding", "chunked".parse().unwrap());
    h.insert("mcp-session-id", "s".parse().unwrap());
    for cookie in [
        "__Host-mcp-browser=evil; Path=/; Secure",
        "__host-mcp-browser=evil; Path=/; Secure",
        "mcp-browser=evil",
        "unlisted=1",
        "app=1; Path=/",
    ] {
        h.append("set-cookie", cookie.parse().unwrap());
    }
    h.insert("clear-site-data", "\"cookies\"".parse().unwrap());
    h.insert("access-control-allow-origin", "*".parse().unwrap());
    h.insert("access-control-allow-credentials", "true".parse().unwrap());
    let pass = vec!["app".to_string(), "mcp-browser".to_string()];
    let out = client_response_headers(h.clone(), &pass);
    assert!(out.get("x-hop").is_none() && out.get("transfer-encoding").is_none());
    assert_eq!(out["mcp-session-id"], "s");
    assert_eq!(
        out.get_all("set-cookie").iter().collect::<Vec<_>>(),
        vec!["app=1; Path=/"]
    );
    assert!(out.get("clear-site-data").is_none());
    assert!(out
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
    assert!(client_response_headers(h, &[]).get("set-cookie").is_none());
}

// ---- property test ----

/// Header names the policy in these tests may set.
const POLICY_MAY_SET: [&str; 4] = ["authorization", "x-user-email", "x-user-sub", "x-team"];
/// Headers a client may send that must pass unchanged.
const PASSING: [&str; 9] = [
    "content-type",
    "accept",
    "user-agent",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "x-request-id",
    "x-custom",
];
const CONNECTION_LISTABLE: [&str; 4] = ["x-hop-a", "x-hop-b", "x-custom", "accept"];
const FORBIDDEN_EXAMPLES: [&str; 22] = [
    "host",
    "accept-encoding",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-uri",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "x-http-method-override",
    "x-user-role",
    "keep-alive",
    "te",
    "proxy-authorization",
];
const COOKIE_NAMES: [&str; 6] = [
    "__Host-mcp-browser",
    "mcp-browser",
    "__host-MCP-csrf",
    "theirs",
    "app",
    "other",
];

/// A name as a client may spell it: any case, `-` or `_`.
fn spelling(base: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<bool>(), any::<bool>()), base.len()).prop_map(move |flips| {
        base.chars()
            .zip(flips)
            .map(|(c, (upper, underscore))| match c {
                '-' if underscore => '_',
                c if upper => c.to_ascii_uppercase(),
                c => c,
            })
            .collect()
    })
}

fn one_of(names: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(names)
}

fn client_header() -> impl Strategy<Value = (String, String)> {
    let value = "[a-zA-Z0-9 =/.,-]{0,12}";
    prop_oneof![
        (one_of(&POLICY_MAY_SET).prop_flat_map(spelling), value).boxed(),
        (one_of(&PASSING).prop_flat_map(spelling), value).boxed(),
        (one_of(&PASSING).prop_map(String::from), value).boxed(),
        (one_of(&FORBIDDEN_EXAMPLES).prop_flat_map(spelling), value).boxed(),
        (one_of(&CONNECTION_LISTABLE).prop_flat_map(spelling), value).boxed(),
        (
            Just("connection".to_string()),
            proptest::sample::subsequence(CONNECTION_LISTABLE.to_vec(), 0..=4)
                .prop_map(|names| names.join(", "))
        )
            .boxed(),
        (
            Just("cookie".to_string()),
            proptest::sample::subsequence(COOKIE_NAMES.to_vec(), 1..=6).prop_map(|names| {
                names
                    .iter()
                    .map(|n| format!("{n}=v"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        )
            .boxed(),
        (
            Just("authorization".to_string()),
            prop_oneof![
                Just("Bearer junk".to_string()),
                Just("Basic Zm9v".to_string())
            ]
        )
            .boxed(),
    ]
}

/// The client's headers, in the order sent.
fn header_map(sent: &[(String, String)]) -> HeaderMap {
    let mut incoming = HeaderMap::new();
    for (name, value) in sent {
        incoming.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    incoming
}

/// No header the proxy forbids reaches the downstream, except the proxy's
/// own forwarding headers.
fn nothing_forbidden_passes(out: &HeaderMap, listed: &[String]) -> Result<(), TestCaseError> {
    let proxys_own = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "via",
    ];
    for name in out.keys() {
        let n = name.as_str();
        prop_assert!(!n.contains('_'), "{n} reached the downstream");
        prop_assert!(
            !HOP_BY_HOP.contains(&n) && !listed.contains(&n.to_string()),
            "{n} is hop-by-hop"
        );
        prop_assert!(n != "host" && n != "accept-encoding", "{n}");
        prop_assert!(
            !FORBIDDEN_EXAMPLES.contains(&n) || proxys_own.contains(&n),
            "{n} reached the downstream"
        );
    }
    Ok(())
}

/// Identity headers: exactly what the policy set, once. Forwarding
/// headers: the proxy's.
fn identity_and_forwarding_are_the_proxys(
    out: &HeaderMap,
    policy_names: &[&str],
) -> Result<(), TestCaseError> {
    for n in POLICY_MAY_SET {
        let values: Vec<_> = out.get_all(n).iter().collect();
        if policy_names.contains(&n) {
            prop_assert_eq!(values, vec!["from-policy"]);
        } else {
            prop_assert!(values.is_empty(), "client's {} reached the downstream", n);
        }
    }
    for n in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "via",
        "cookie",
    ] {
        prop_assert!(out.get_all(n).iter().count() <= 1, "{} written twice", n);
    }
    prop_assert_eq!(&out["x-forwarded-for"], "192.0.2.1");
    prop_assert_eq!(&out["x-forwarded-host"], "mcp.example.com");
    prop_assert_eq!(&out["x-forwarded-proto"], "https");
    prop_assert_eq!(&out["via"], VIA);
    Ok(())
}

/// Cookies: only the passed names, never the proxy's.
fn only_passed_cookies_cross(
    out: &HeaderMap,
    sent: &[(String, String)],
    pass: &[String],
) -> Result<(), TestCaseError> {
    for cookie in out.get_all("cookie") {
        for pair in cookie.to_str().unwrap().split("; ") {
            let name = pair.split('=').next().unwrap();
            prop_assert!(pass.iter().any(|p| p == name), "cookie {} passed", name);
        }
    }
    let expected_cookies: Vec<&str> = sent
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split("; "))
        .filter(|pair| {
            pass.iter()
                .any(|p| pair.split('=').next() == Some(p.as_str()))
        })
        .collect();
    let got_cookies: Vec<String> = out
        .get_all("cookie")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split("; ")
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    prop_assert_eq!(got_cookies, expected_cookies);
    Ok(())
}

/// Everything else the client sent under its proper name arrives, values
/// and order unchanged.
fn the_rest_passes_unchanged(
    out: &HeaderMap,
    sent: &[(String, String)],
    listed: &[String],
) -> Result<(), TestCaseError> {
    for n in PASSING {
        if listed.contains(&n.to_string()) {
            prop_assert!(out.get(n).is_none(), "{n} was named in Connection");
            continue;
        }
        let expected: Vec<&str> = sent
            .iter()
            .filter(|(name, _)| name.to_ascii_lowercase() == n)
            .map(|(_, v)| v.as_str())
            .collect();
        let got: Vec<&str> = out.get_all(n).iter().map(|v| v.to_str().unwrap()).collect();
        prop_assert_eq!(got, expected, "{}", n);
    }
    Ok(())
}

proptest! {
    #[test]
    fn invariant_6_the_downstream_gets_no_forbidden_header_exactly_the_policys_and_every_passing_one_unchanged(
        sent in proptest::collection::vec(client_header(), 0..24),
        policy_names in proptest::sample::subsequence(POLICY_MAY_SET.to_vec(), 0..=4),
        pass in proptest::sample::subsequence(vec!["theirs", "app"], 0..=2),
    ) {
        let incoming = header_map(&sent);
        let policy: Vec<(HeaderName, HeaderValue)> = policy_names
            .iter()
            .map(|n| (HeaderName::from_static(n), HeaderValue::from_static("from-policy")))
            .collect();
        let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
        let out = as_map(downstream_request_headers(
            incoming.clone(),
            identity,
            &policy,
            &forwarding("192.0.2.1", no_trust()),
            &pass,
        ));
        let listed = connection_named(&incoming);
        nothing_forbidden_passes(&out, &listed)?;
        identity_and_forwarding_are_the_proxys(&out, &policy_names)?;
        only_passed_cookies_cross(&out, &sent, &pass)?;
        the_rest_passes_unchanged(&out, &sent, &listed)?;
    }
}

proptest::proptest! {
    /// Written digit by digit, an address reads as `to_string` writes it;
    /// asked again (the thread's last address), the same; and another
    /// address after it is its own, not the last one's.
    #[test]
    fn an_address_value_is_the_address_as_text(bits in proptest::prelude::any::<u32>(), v6 in proptest::prelude::any::<u128>()) {
        let v4 = IpAddr::from(std::net::Ipv4Addr::from(bits));
        let v6 = IpAddr::from(std::net::Ipv6Addr::from(v6));
        let next_v4 = IpAddr::from(std::net::Ipv4Addr::from(bits.wrapping_add(1)));
        for address in [v4, v4, v6, v6, v4, next_v4, next_v4] {
            let value = address_value(address).expect("an address is a valid value");
            proptest::prop_assert_eq!(value.to_str().unwrap(), address.to_string());
        }
    }
}

mod lines;
mod written_once;
