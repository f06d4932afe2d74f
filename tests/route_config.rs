//! `mcp-oauth-proxy check` on configurations with `[[routes]]`: every
//! route validation message, as the operator sees it (exit 1, the key of
//! the route at fault), environment overrides by route name, and SIGHUP
//! on a proxy without a policy file.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct Checked {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `check` on `toml`, with `env` set (and nothing else of ours).
fn check(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Checked {
    let config = dir.join("c.toml");
    std::fs::write(&config, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"));
    command.args(["check", "--config"]).arg(&config);
    for (name, _) in std::env::vars() {
        if name.starts_with("MCP_PROXY_") || name == "DOWNSTREAM_MCP_URL" {
            command.env_remove(name);
        }
    }
    command.env("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    Checked {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A configuration whose `[downstream]` is the default route, plus `routes`.
fn with_routes(routes: &str) -> String {
    format!(
        r#"
[server]
public_url = "https://mcp.example.com"
[upstream]
issuer = "https://idp.example.com"
client_id = "proxy"
client_secret = "s3cret"
[downstream]
url = "http://127.0.0.1:3000/mcp"
{routes}
"#
    )
}

/// A route named `name` at `path`, with more lines inside its table.
fn route(name: &str, path: &str, more: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath = \"{path}\"\n{more}\n[routes.downstream]\nurl = \"http://127.0.0.1:4000/mcp\"\n"
    )
}

/// Asserts `check` refuses with a message holding every one of `parts`.
fn refused(dir: &Path, toml: &str, env: &[(&str, &str)], parts: &[&str]) {
    let r = check(dir, toml, env);
    assert!(!r.ok, "accepted:\n{toml}\n{}", r.stderr);
    for part in parts {
        assert!(
            r.stderr.contains(part),
            "`{part}` missing from: {}\nconfig:\n{toml}",
            r.stderr
        );
    }
}

#[test]
fn a_valid_configuration_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let r = check(
        dir.path(),
        &with_routes(&format!(
            "{}{}",
            route("github", "/github/mcp", "sse_path = \"/github/sse\""),
            route("wiki", "/wiki/mcp", "")
        )),
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("3 routes"), "{}", r.stderr);
    for line in [
        "route default: /mcp -> http://127.0.0.1:3000/mcp (policy policies/default.rhai (built in))",
        "route github: /github/mcp -> http://127.0.0.1:4000/mcp (policy policies/default.rhai (built in))",
        "route wiki: /wiki/mcp -> http://127.0.0.1:4000/mcp (policy policies/default.rhai (built in))",
    ] {
        assert!(r.stderr.contains(line), "{line} missing: {}", r.stderr);
    }
    // The effective configuration shows the routes with their defaults.
    assert!(r.stdout.contains("[[routes]]"), "{}", r.stdout);
    assert!(r.stdout.contains("response_timeout"), "{}", r.stdout);
}

#[test]
fn routes_alone_need_no_default_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let toml = with_routes(&route("wiki", "/mcp", ""))
        .replace("[downstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n", "");
    let r = check(dir.path(), &toml, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("1 route)"), "{}", r.stderr);
    assert!(r.stderr.contains("route wiki: /mcp"), "{}", r.stderr);

    // What only the default route reads is refused when there is none.
    for (table, key) in [
        (
            "[policy]\npath = \"policies/default.rhai\"\n",
            "policy.path",
        ),
        (
            "[policy]\nidentity_headers = [\"X-Team\"]\n",
            "policy.identity_headers",
        ),
        (
            "[downstream]\nsse_url = \"http://127.0.0.1:3000/sse\"\n",
            "downstream.sse_url",
        ),
        ("[layers]\naudit = false\n", "layers"),
    ] {
        refused(
            dir.path(),
            &format!("{toml}{table}"),
            &[],
            &[key, "default route", "[[routes]]"],
        );
    }

    // Neither a downstream nor a route: the message says both ways.
    let none = with_routes("").replace("[downstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n", "");
    refused(dir.path(), &none, &[], &["downstream.url", "[[routes]]"]);
}

#[test]
fn every_route_key_is_checked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = d.join("p.rhai");
    std::fs::write(&policy, "fn authorize(user, request) { allow() }").unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            route("GitHub", "/github/mcp", ""),
            vec!["routes[0].name", "`GitHub` is not a route name"],
        ),
        (route("a b", "/x/mcp", ""), vec!["routes[0].name"]),
        (
            route("github", "github/mcp", ""),
            vec!["routes[github].path", "must start with `/`"],
        ),
        (
            route("github", "/github/mcp/", ""),
            vec!["routes[github].path", "must not end with `/`"],
        ),
        (
            route("github", "/git%68ub/mcp", ""),
            vec!["routes[github].path", "percent-encoding"],
        ),
        (
            route("github", "/github/../mcp", ""),
            vec!["routes[github].path", "`..` segment"],
        ),
        (
            route("github", "/github//mcp", ""),
            vec!["routes[github].path", "empty"],
        ),
        (
            route("github", "/token", ""),
            vec!["routes[github].path", "`/token`", "the proxy itself serves"],
        ),
        (
            route("github", "/.well-known/mcp", ""),
            vec!["routes[github].path", "/.well-known"],
        ),
        (
            route("github", "/github/mcp", "sse_path = \"sse\""),
            vec!["routes[github].sse_path"],
        ),
        (
            route("github", "/github/mcp", "sse_path = \"/github/mcp/sse\""),
            vec!["routes[github].sse_path", "overlaps the route's own path"],
        ),
        (
            "[[routes]]\nname = \"github\"\npath = \"/github/mcp\"\n".into(),
            vec![
                "routes[github].downstream.url",
                "is not set",
                "route `github`",
            ],
        ),
        (
            route("github", "/github/mcp", "").replace("http://127.0.0.1:4000/mcp", "ftp://x/mcp"),
            vec!["routes[github].downstream.url", "http or https"],
        ),
        (
            format!(
                "{}sse_url = \"not a url\"\n",
                route("github", "/github/mcp", "")
            ),
            vec!["routes[github].downstream.sse_url", "not a URL"],
        ),
        (
            format!(
                "{}pass_cookies = [\"mcp-session\"]\n",
                route("github", "/github/mcp", "")
            ),
            vec!["routes[github].downstream.pass_cookies", "sign-in cookie"],
        ),
        (
            format!(
                "{}max_request_bytes = 10\n",
                route("github", "/github/mcp", "")
            ),
            vec![
                "routes[github].downstream.max_request_bytes",
                "at least 1024",
            ],
        ),
        (
            format!(
                "{}max_batch_size = 5000\n",
                route("github", "/github/mcp", "")
            ),
            vec!["routes[github].downstream.max_batch_size", "at most"],
        ),
        (
            format!(
                "{}response_timeout = \"0s\"\n",
                route("github", "/github/mcp", "")
            ),
            vec![
                "routes[github].downstream.response_timeout",
                "longer than zero",
            ],
        ),
        (
            format!(
                "{}pool_idle_timeout = \"0s\"\n",
                route("github", "/github/mcp", "")
            ),
            vec![
                "routes[github].downstream.pool_idle_timeout",
                "longer than zero",
            ],
        ),
        (
            format!(
                "{}[routes.policy]\nwatch_interval = \"0s\"\n",
                route("github", "/github/mcp", "")
            ),
            vec!["routes[github].policy.watch_interval", "longer than zero"],
        ),
        (
            format!(
                "{}[routes.policy]\nmax_header_bytes = 10\n",
                route("github", "/github/mcp", "")
            ),
            vec![
                "routes[github].policy.max_header_bytes",
                "between 256 and 65536",
            ],
        ),
        (
            format!(
                "{}[routes.policy]\nidentity_headers = [\"bad header\"]\n",
                route("github", "/github/mcp", "")
            ),
            vec![
                "routes[github].policy.identity_headers",
                "not a header name",
            ],
        ),
        (
            format!(
                "{}[routes.policy]\npath = \"{}\"\n",
                route("github", "/github/mcp", ""),
                d.join("missing.rhai").display()
            ),
            vec!["routes[github].policy.path", "cannot read", "missing.rhai"],
        ),
        (
            format!(
                "{}[routes.policy]\npath = \"{}\"\n",
                route("github", "/github/mcp", ""),
                d.display()
            ),
            vec!["routes[github].policy.path", "cannot read"],
        ),
        (
            route(
                "github",
                "/github/mcp",
                "allowed_origins = [\"not an origin\"]",
            ),
            vec!["routes[github].allowed_origins", "not a URL"],
        ),
        (
            route("github", "/github/mcp", "surprise = 1"),
            vec!["routes", "surprise"],
        ),
        (
            format!(
                "{}{}",
                route("github", "/github/mcp", ""),
                route("github", "/other/mcp", "")
            ),
            vec!["routes[github].name", "`github` names two routes"],
        ),
        (
            route("default", "/other/mcp", ""),
            vec!["routes[default].name", "names two routes"],
        ),
        (
            route("github", "/mcp", ""),
            vec![
                "routes[github].path",
                "`/mcp` overlaps `/mcp` of route `default`",
            ],
        ),
        (
            route("github", "/mcp/github", ""),
            vec!["routes[github].path", "overlaps `/mcp` of route `default`"],
        ),
        (
            route("github", "/sse/message", ""),
            vec!["routes[github].path", "overlaps `/sse` of route `default`"],
        ),
        (
            format!(
                "{}{}",
                route("a", "/a/mcp", "sse_path = \"/a/sse\""),
                route("b", "/b/mcp", "sse_path = \"/a/sse/message\"")
            ),
            vec!["routes[b].sse_path", "overlaps `/a/sse` of route `a`"],
        ),
        (
            format!(
                "{}{}",
                route("a", "/tools", ""),
                route("b", "/tools/mcp", "")
            ),
            vec!["routes[b].path", "overlaps `/tools` of route `a`"],
        ),
    ];
    for (routes, parts) in &cases {
        refused(d, &with_routes(routes), &[], parts);
    }
    // Paths sharing a prefix that is not a whole segment do not overlap.
    let r = check(
        d,
        &with_routes(&format!(
            "{}{}",
            route("a", "/tools", ""),
            route("b", "/toolsmith", "")
        )),
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn a_route_policy_that_does_not_compile_is_named_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("wiki.rhai");
    std::fs::write(&policy, "fn authorize(user, request) {\n  allow(\n}\n").unwrap();
    let toml = with_routes(&format!(
        "{}[routes.policy]\npath = \"{}\"\n",
        route("wiki", "/wiki/mcp", ""),
        policy.display()
    ));
    refused(
        dir.path(),
        &toml,
        &[],
        &["policy error: routes[wiki].policy.path", "wiki.rhai:"],
    );
}

#[test]
fn environment_variables_reach_a_route_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let toml = with_routes(&route("team-wiki", "/wiki/mcp", ""));
    let r = check(
        dir.path(),
        &toml,
        &[
            (
                "MCP_PROXY_ROUTES__TEAM_WIKI__DOWNSTREAM__URL",
                "http://127.0.0.1:5000/mcp",
            ),
            (
                "MCP_PROXY_ROUTES__TEAM_WIKI__DOWNSTREAM__MAX_BATCH_SIZE",
                "3",
            ),
            ("MCP_PROXY_ROUTES__TEAM_WIKI__LAYERS__AUDIT", "false"),
            (
                "MCP_PROXY_ROUTES__TEAM_WIKI__ALLOWED_ORIGINS",
                "[http://localhost:6274]",
            ),
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("route team-wiki: /wiki/mcp -> http://127.0.0.1:5000/mcp"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("max_batch_size = 3"), "{}", r.stdout);
    assert!(r.stdout.contains("audit = false"), "{}", r.stdout);
    assert!(r.stdout.contains("http://localhost:6274"), "{}", r.stdout);

    // A bad value names the variable's route key.
    refused(
        dir.path(),
        &toml,
        &[("MCP_PROXY_ROUTES__TEAM_WIKI__DOWNSTREAM__URL", "nope")],
        &["routes[team-wiki].downstream.url", "not a URL"],
    );
    // A route that does not exist is an error, not a new route.
    refused(
        dir.path(),
        &toml,
        &[("MCP_PROXY_ROUTES__GITHUB__DOWNSTREAM__URL", "http://x/mcp")],
        &[
            "MCP_PROXY_ROUTES__GITHUB__DOWNSTREAM__URL",
            "no [[routes]] entry is named `github`",
        ],
    );
    refused(
        dir.path(),
        &toml,
        &[("MCP_PROXY_ROUTES__TEAM_WIKI__NAME", "other")],
        &["MCP_PROXY_ROUTES__TEAM_WIKI__NAME", "cannot be changed"],
    );
    refused(
        dir.path(),
        &toml,
        &[("MCP_PROXY_ROUTES__TEAM_WIKI", "x")],
        &[
            "MCP_PROXY_ROUTES__TEAM_WIKI",
            "MCP_PROXY_ROUTES__<NAME>__<KEY>",
        ],
    );
}

#[tokio::test]
async fn sighup_without_a_policy_file_keeps_the_proxy_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        config_toml(
            port,
            "http://127.0.0.1:9",
            &dir.path().join("proxy.db"),
            &Options::default(),
        ),
    )
    .unwrap();
    let mut proxy = spawn_proxy(&config);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await;
    let status = Command::new("kill")
        .args(["-HUP", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        proxy.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the proxy"
    );
    wait_ready(&url).await;
}
