//! Each name the proxy writes is written once: the policy's, with its
//! value, and the proxy's own, whatever the policy set.

use super::super::VIA;
use super::lines_for;

#[test]
fn invariant_6_a_header_the_policy_sets_is_written_once_with_the_policys_value() {
    // The strip rule does not name `x-tenant` (a policy could set a header
    // the rule does not know of): the client's line of that name still
    // never reaches the downstream beside the policy's, and a name the
    // policy lists twice is written once, its last value, as a map's
    // insert would.
    let lines = lines_for(
        &[
            ("x-tenant", "client-1"),
            ("x-tenant", "client-2"),
            ("via", "1.0 client-proxy"),
            ("content-type", "application/json"),
        ],
        &[
            ("x-tenant", "first"),
            ("x-user-email", "alice@example.com"),
            ("x-tenant", "acme"),
        ],
    );
    let named = |n: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(name, _)| name == n)
            .map(|(_, v)| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(named("x-tenant"), ["acme"], "{lines:?}");
    assert_eq!(named("x-user-email"), ["alice@example.com"]);
    assert_eq!(named("via"), [VIA]);
    assert_eq!(named("content-type"), ["application/json"]);
    let mut names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "a name written twice: {lines:?}");
}

#[test]
fn invariant_6_a_line_the_proxy_writes_itself_is_the_proxys_even_when_a_policy_sets_it() {
    // `header_rules` reserves these names, so no decision holds them: a
    // list made some other way is still written with the proxy's own.
    let lines = lines_for(
        &[("cookie", "a=b")],
        &[
            ("via", "1.1 policy"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("cookie", "session=forged"),
            ("x-user-sub", "alice"),
        ],
    );
    let written: Vec<(&str, &str)> = lines
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        written,
        [
            ("x-user-sub", "alice"),
            ("x-forwarded-for", "127.0.0.1"),
            ("via", VIA),
            ("x-forwarded-host", "mcp.example.com"),
            ("x-forwarded-proto", "https"),
        ]
    );
}
