use std::collections::BTreeSet;

use super::*;

/// Every value the `route` label takes in an exposition.
fn route_values(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("route=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(value, _)| value.to_string()))
        .collect()
}

/// Exposition lines of the MCP metrics that carry a `route` label.
fn routed_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("mcp_oauth_proxy_") && l.contains("route=\""))
        .filter(|l| !l.starts_with("mcp_oauth_proxy_http_"))
        .collect()
}

/// Records one of every MCP-path event on `route`, on every endpoint.
fn record_everything(route: &RouteMetrics) {
    route.mcp_request(
        route.mcp_labels(Some("tools/call"), Some("whoami")),
        "allow",
    );
    route.mcp_request(
        route.mcp_labels(Some("x/unknown"), Some("secret-tool")),
        "deny",
    );
    route.policy_decision(PolicyVerdict::Allow, Duration::from_micros(5));
    route.policy_decision(PolicyVerdict::Deny, Duration::from_micros(5));
    route.policy_reload(ReloadResult::Success);
    route.policy_reload(ReloadResult::Failure);
    for endpoint in McpEndpoint::ALL {
        let e = route.endpoint(*endpoint);
        e.downstream_response(200, Duration::from_millis(3));
        e.downstream_response(502, Duration::from_millis(3));
        e.downstream_connect_error();
        e.downstream_timeout();
        e.sse_stream(1);
        e.sse_events(4);
        e.sse_stream(-1);
    }
}

#[test]
fn each_configured_route_has_its_series_at_zero_and_no_other_route_value_exists() {
    let metrics = Metrics::with_routes(&[], &["wiki", "github"]);
    let text = metrics.render();
    for route in ["wiki", "github"] {
        for expected in [
            format!(
                "mcp_oauth_proxy_policy_decisions_total{{decision=\"allow\",route=\"{route}\"}} 0"
            ),
            format!(
                "mcp_oauth_proxy_policy_decisions_total{{decision=\"deny\",route=\"{route}\"}} 0"
            ),
            format!(
                "mcp_oauth_proxy_policy_reloads_total{{result=\"failure\",route=\"{route}\"}} 0"
            ),
            format!("mcp_oauth_proxy_policy_evaluation_seconds_count{{route=\"{route}\"}} 0"),
            format!("mcp_oauth_proxy_downstream_connect_errors_total{{route=\"{route}\"}} 0"),
            format!("mcp_oauth_proxy_downstream_timeouts_total{{route=\"{route}\"}} 0"),
            format!(
                "mcp_oauth_proxy_sse_streams_open{{endpoint=\"/sse/message\",route=\"{route}\"}} 0"
            ),
            format!(
                "mcp_oauth_proxy_mcp_requests_total{{decision=\"unauthenticated\",method=\"none\",route=\"{route}\",tool=\"\"}} 0"
            ),
        ] {
            assert!(text.contains(&expected), "missing {expected}\n{text}");
        }
    }
    assert_eq!(
        route_values(&text),
        BTreeSet::from(["wiki".to_string(), "github".to_string()])
    );
}

#[test]
fn recording_on_every_route_adds_no_route_value_and_each_event_lands_on_its_route() {
    let metrics = Metrics::with_routes(&["whoami".into()], &["wiki", "github"]);
    let wiki = metrics.route("wiki");
    let github = metrics.route("github");
    record_everything(&wiki);
    record_everything(&wiki);
    record_everything(&github);
    let text = metrics.render();
    assert_eq!(
        route_values(&text),
        BTreeSet::from(["wiki".to_string(), "github".to_string()])
    );
    for (route, n) in [("wiki", 2), ("github", 1)] {
        for expected in [
            format!("mcp_oauth_proxy_mcp_requests_total{{decision=\"allow\",method=\"tools/call\",route=\"{route}\",tool=\"whoami\"}} {n}"),
            format!("mcp_oauth_proxy_mcp_requests_total{{decision=\"deny\",method=\"other\",route=\"{route}\",tool=\"other\"}} {n}"),
            format!("mcp_oauth_proxy_policy_decisions_total{{decision=\"deny\",route=\"{route}\"}} {n}"),
            format!("mcp_oauth_proxy_policy_evaluation_seconds_count{{route=\"{route}\"}} {}", 2 * n),
            format!("mcp_oauth_proxy_policy_reloads_total{{result=\"success\",route=\"{route}\"}} {n}"),
            format!("mcp_oauth_proxy_downstream_requests_total{{endpoint=\"/sse\",route=\"{route}\",status_class=\"5xx\"}} {n}"),
            format!("mcp_oauth_proxy_downstream_request_duration_seconds_count{{endpoint=\"/mcp\",route=\"{route}\"}} {}", 2 * n),
            format!("mcp_oauth_proxy_downstream_connect_errors_total{{route=\"{route}\"}} {}", 3 * n),
            format!("mcp_oauth_proxy_downstream_timeouts_total{{route=\"{route}\"}} {}", 3 * n),
            format!("mcp_oauth_proxy_sse_events_total{{endpoint=\"/sse/message\",route=\"{route}\"}} {}", 4 * n),
            format!("mcp_oauth_proxy_sse_streams_open{{endpoint=\"/mcp\",route=\"{route}\"}} 0"),
        ] {
            assert!(text.contains(&expected), "missing {expected}\n{text}");
        }
    }
}

#[test]
fn an_unknown_route_records_nothing_and_creates_no_series() {
    let metrics = Metrics::with_routes(&[], &["wiki"]);
    let before = metrics.render();
    let unknown = metrics.route("not-configured");
    assert!(!unknown.records());
    assert!(!unknown.endpoint(McpEndpoint::Mcp).records());
    record_everything(&unknown);
    let after = metrics.render();
    assert_eq!(routed_lines(&before), routed_lines(&after));
    assert!(!after.contains("not-configured"));
    // A request value used as a route name is no different.
    record_everything(&metrics.route("alice@example.com"));
    assert_eq!(routed_lines(&before), routed_lines(&metrics.render()));
}

#[test]
fn with_metrics_off_no_route_records() {
    let metrics = Metrics::disabled();
    let route = metrics.route("default");
    assert!(!route.records());
    record_everything(&route);
    assert!(routed_lines(&metrics.render()).is_empty());
}

#[test]
fn a_route_named_twice_has_one_set_of_series() {
    let once = Metrics::with_routes(&[], &["wiki"]).render();
    let twice = Metrics::with_routes(&[], &["wiki", "wiki"]).render();
    assert_eq!(routed_lines(&once), routed_lines(&twice));
}

#[test]
fn mcp_requests_found_again_count_in_their_own_series() {
    let metrics = Metrics::with_routes(&["whoami".into()], &["wiki"]);
    let route = metrics.route("wiki");
    for _ in 0..3 {
        route.mcp_request(
            route.mcp_labels(Some("tools/call"), Some("whoami")),
            "allow",
        );
    }
    route.mcp_request(route.mcp_labels(Some("tools/call"), Some("whoami")), "deny");
    for tool in ["secret-a", "secret-b"] {
        route.mcp_request(route.mcp_labels(Some("tools/call"), Some(tool)), "allow");
    }
    route.mcp_request(route.mcp_labels(Some("tools/list"), None), "allow");
    route.mcp_request(route.mcp_labels(Some("tools/list"), None), "allow");
    let text = metrics.render();
    let count = |method: &str, tool: &str, decision: &str| {
        let series = format!(
            "mcp_oauth_proxy_mcp_requests_total{{decision=\"{decision}\",method=\"{method}\",route=\"wiki\",tool=\"{tool}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .to_string()
    };
    assert_eq!(count("tools/call", "whoami", "allow"), "3");
    assert_eq!(count("tools/call", "whoami", "deny"), "1");
    assert_eq!(count("tools/call", "other", "allow"), "2");
    assert_eq!(count("tools/list", "", "allow"), "2");
}
