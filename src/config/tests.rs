//! The configuration's tests: loading from file and environment, and every
//! validation error naming its key.

use std::path::Path;
use std::time::Duration;

use super::env::ENV_PREFIX;
use super::*;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Loads `toml` with exactly `vars` as the environment (figment's Jail
/// serialises tests that change the environment).
#[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
fn load_with(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut result = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("c.toml", toml)?;
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        result = Some(load(Some(Path::new("c.toml"))));
        Ok(())
    });
    result.unwrap()
}

const MINIMAL: &str = r#"
[server]
public_url = "https://mcp.example.com/"
[upstream]
issuer = "https://idp.example.com"
client_id = "proxy"
client_secret = "s3cret"
[downstream]
url = "http://127.0.0.1:3000/mcp"
"#;

#[test]
fn minimal_file_with_key_from_env_validates() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let settings = cfg.validate().unwrap();
    assert_eq!(settings.public_url, "https://mcp.example.com");
    assert_eq!(settings.issuer_url, "https://idp.example.com");
    assert_eq!(settings.config.tokens.access_ttl.secs(), 3600);
    assert_eq!(settings.config.tokens.refresh_ttl.secs(), 30 * 86400);
    assert!(settings.secure_cookies);
}

#[test]
fn an_http_issuer_is_refused_unless_on_loopback() {
    let toml = MINIMAL.replace("https://idp.example.com", "http://idp.example.com");
    let err = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream.issuer"), "{err}");
    assert!(err.contains("https"), "{err}");
    for loopback in ["http://127.0.0.1:9000", "http://localhost:9000/realms/x"] {
        let toml = MINIMAL.replace("https://idp.example.com", loopback);
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        assert!(cfg.validate().is_ok(), "{loopback}");
    }
}

#[test]
fn unknown_key_is_named_with_its_source() {
    let err = load_with(&format!("{MINIMAL}\n[store]\npaht = \"x\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("store"), "{err}");
    assert!(err.contains("paht"), "{err}");
    assert!(err.contains("c.toml"), "{err}");
}

#[test]
fn unknown_env_key_is_an_error() {
    let err = load_with(MINIMAL, &[("MCP_PROXY_SERVER__LISTNE", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listne"), "{err}");
}

#[test]
fn missing_public_url_is_named() {
    let err = load_with("[server]\nlisten = \"127.0.0.1:1\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("public_url"), "{err}");
}

#[test]
fn policy_max_header_bytes_defaults_and_is_bounded_by_name() {
    let with_key = [("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)];
    let cfg = load_with(MINIMAL, &with_key).unwrap();
    assert_eq!(cfg.policy.max_header_bytes, 8192);
    let cfg = load_with(
        &format!("{MINIMAL}[policy]\nmax_header_bytes = 10\n"),
        &with_key,
    )
    .unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("policy.max_header_bytes:"), "{err}");
}

#[test]
fn bad_encryption_key_names_the_key() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", "short")]).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("secrets.encryption_key:"), "{err}");
    assert!(err.contains("openssl rand -hex 32"), "{err}");
}

#[test]
fn original_worker_variables_work_unchanged() {
    let toml = "[server]\npublic_url = \"https://mcp.example.com\"\n";
    let cfg = load_with(
        toml,
        &[
            ("DOWNSTREAM_MCP_URL", "https://sy.example.com/mcp"),
            ("CF_ACCESS_CLIENT_ID", "abc123"),
            ("CF_ACCESS_CLIENT_SECRET", "secret"),
            ("CF_ACCESS_TEAM_DOMAIN", "myteam.cloudflareaccess.com"),
            ("COOKIE_ENCRYPTION_KEY", KEY),
        ],
    )
    .unwrap();
    let s = cfg.validate().unwrap();
    assert_eq!(
        s.issuer_url,
        "https://myteam.cloudflareaccess.com/cdn-cgi/access/sso/oidc/abc123"
    );
    assert_eq!(
        s.routes[0].downstream_url.as_str(),
        "https://sy.example.com/mcp"
    );
    assert_eq!(s.upstream_client_secret.unwrap().expose(), "secret");
}

#[test]
fn our_variables_win_over_the_original_ones() {
    let cfg = load_with(
        MINIMAL,
        &[
            ("DOWNSTREAM_MCP_URL", "http://old/mcp"),
            ("MCP_PROXY_DOWNSTREAM__URL", "http://new/mcp"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.downstream.url.as_deref(), Some("http://new/mcp"));
}

#[test]
fn env_values_are_taken_as_written() {
    let digits = "1".repeat(64);
    let cfg = load_with(
        MINIMAL,
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", &digits),
            ("MCP_PROXY_UPSTREAM__SCOPES", "[openid, email]"),
            ("MCP_PROXY_UPSTREAM__USERINFO", "true"),
            ("MCP_PROXY_DOWNSTREAM__MAX_REQUEST_BYTES", "2048"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.upstream.scopes, vec!["openid", "email"]);
    assert!(cfg.upstream.userinfo);
    assert_eq!(cfg.downstream.max_request_bytes, 2048);
    assert_eq!(cfg.validate().unwrap().encryption_key, [0x11; 32]);
}

#[test]
fn numeric_looking_env_values_stay_text() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_UPSTREAM__CLIENT_ID", "123456")]).unwrap();
    assert_eq!(cfg.upstream.client_id.as_deref(), Some("123456"));
}

#[test]
fn cloudflare_provider_requires_team_domain() {
    let toml = MINIMAL.replace(
        "issuer = \"https://idp.example.com\"",
        "provider = \"cloudflare-access\"",
    );
    let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("upstream.team_domain"), "{err}");
    let cfg = load_with(
        &toml,
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
            ("MCP_PROXY_UPSTREAM__TEAM_DOMAIN", "acme"),
        ],
    )
    .unwrap();
    assert_eq!(
        cfg.validate().unwrap().issuer_url,
        "https://acme.cloudflareaccess.com/cdn-cgi/access/sso/oidc/proxy"
    );
}

#[test]
fn missing_downstream_url_is_named() {
    let toml = MINIMAL.replace("url = \"http://127.0.0.1:3000/mcp\"", "");
    let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("downstream.url: is not set"), "{err}");
}

#[test]
fn public_url_with_path_is_refused() {
    let toml = MINIMAL.replace("https://mcp.example.com/", "https://mcp.example.com/proxy");
    let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("server.public_url"));
}

#[test]
fn invariant_11_access_bounds_default_and_name_their_keys() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let settings = cfg.validate().unwrap();
    assert_eq!(settings.config.tokens.max_grant_age.secs(), 24 * 3600);
    assert_eq!(settings.config.upstream.revalidate_after, None);
    assert_eq!(settings.config.auth.stream_recheck_interval.secs(), 5);
    for (key, env) in [
        ("tokens.max_grant_age", "MCP_PROXY_TOKENS__MAX_GRANT_AGE"),
        (
            "upstream.revalidate_after",
            "MCP_PROXY_UPSTREAM__REVALIDATE_AFTER",
        ),
        (
            "auth.stream_recheck_interval",
            "MCP_PROXY_AUTH__STREAM_RECHECK_INTERVAL",
        ),
    ] {
        let cfg = load_with(
            MINIMAL,
            &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY), (env, "0s")],
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with(key), "{err}");
    }
}

#[test]
fn bad_duration_names_the_key() {
    let err = load_with(
        &format!("{MINIMAL}\n[tokens]\naccess_ttl = \"forever\"\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokens.access_ttl"), "{err}");
    assert!(err.contains("forever"), "{err}");
}

#[test]
fn redacted_rendering_hides_secrets() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let text = render_redacted(&cfg);
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(text.contains("https://idp.example.com"), "{text}");
}

#[test]
fn invariant_9_connection_limits_default_and_bad_values_name_their_key() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let server = &cfg.validate().unwrap().config.server;
    assert_eq!(server.header_timeout.secs(), 10);
    assert_eq!(server.idle_timeout.secs(), 60);
    assert_eq!(server.body_timeout.secs(), 30);
    assert_eq!(server.send_timeout.secs(), 60);
    assert_eq!(server.max_connections, 10_000);
    for (line, key) in [
        ("header_timeout = \"0s\"", "server.header_timeout"),
        ("idle_timeout = \"0s\"", "server.idle_timeout"),
        ("body_timeout = \"0s\"", "server.body_timeout"),
        ("send_timeout = \"0s\"", "server.send_timeout"),
        ("max_connections = 0", "server.max_connections"),
        ("max_header_bytes = 100", "server.max_header_bytes"),
        ("max_headers = 0", "server.max_headers"),
        (
            "max_concurrent_streams = 0",
            "server.max_concurrent_streams",
        ),
    ] {
        let toml = MINIMAL.replace("[upstream]", &format!("{line}\n[upstream]"));
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with(key), "{line}: {err}");
    }
    let cfg = load_with(
        MINIMAL,
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
            ("MCP_PROXY_SERVER__MAX_CONNECTIONS", "250"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.max_connections, 250);
}

#[test]
fn workers_default_to_one_per_cpu_and_a_bad_count_names_its_key() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let server = &cfg.validate().unwrap().config.server;
    assert_eq!(server.workers, 0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(server.workers(), cpus);
    let toml = MINIMAL.replace("[upstream]", "workers = 1025\n[upstream]");
    let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.starts_with("server.workers"), "{err}");
    let cfg = load_with(
        MINIMAL,
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
            ("MCP_PROXY_SERVER__WORKERS", "3"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.validate().unwrap().config.server.workers(), 3);
}

#[test]
fn plain_http_on_a_real_host_disables_secure_cookies() {
    let toml = MINIMAL.replace("https://mcp.example.com/", "http://mcp.internal:8080");
    let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    assert!(!cfg.validate().unwrap().secure_cookies);
}

#[test]
fn rate_limits_are_on_by_default_and_each_can_be_switched_off() {
    let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
    for group in LimitGroup::ALL {
        let rate = cfg.limits.rate(group).unwrap();
        assert!(rate.is_some(), "{} is on by default", group.name());
    }
    let cfg = load_with(
        &format!("{MINIMAL}\n[limits.token]\nenabled = false\n"),
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
            ("MCP_PROXY_LIMITS__MCP_USER__ENABLED", "false"),
            ("MCP_PROXY_LIMITS__REGISTER__REQUESTS", "7"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.limits.rate(LimitGroup::Token).unwrap(), None);
    assert_eq!(cfg.limits.rate(LimitGroup::McpUser).unwrap(), None);
    let register = cfg.limits.rate(LimitGroup::Register).unwrap().unwrap();
    // A burst left out follows a changed rate.
    assert_eq!((register.requests.get(), register.burst.get()), (7, 7));
    assert_eq!(register.period, Duration::from_secs(60));
    let cfg = load_with(
        &format!("{MINIMAL}\n[limits]\nenabled = false\n"),
        &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
    )
    .unwrap();
    for group in LimitGroup::ALL {
        assert_eq!(cfg.limits.rate(group).unwrap(), None);
    }
}

#[test]
fn a_bad_rate_limit_names_its_key() {
    for (table, key) in [
        ("[limits.token]\nrequests = 0\n", "limits.token.requests"),
        (
            "[limits.mcp_client]\nburst = 0\n",
            "limits.mcp_client.burst",
        ),
        (
            "[limits.browser]\nperiod = \"0s\"\n",
            "limits.browser.period",
        ),
    ] {
        let cfg = load_with(
            &format!("{MINIMAL}\n{table}"),
            &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with(key), "{err}");
    }
    let err = load_with(
        &format!("{MINIMAL}\n[limits.token]\nrate = 5\n"),
        &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("limits.token"), "{err}");
}

/// Every number and switch in the configuration, as `MCP_PROXY_*` names
/// with their values written as environment text.
fn scalar_env_vars(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let name = if prefix.is_empty() {
                    format!("{ENV_PREFIX}{}", key.to_uppercase())
                } else {
                    format!("{prefix}__{}", key.to_uppercase())
                };
                scalar_env_vars(&name, value, out);
            }
        }
        serde_json::Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        serde_json::Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
        _ => {}
    }
}

#[test]
fn every_number_and_switch_can_be_set_from_the_environment() {
    let file_only = load_with(MINIMAL, &[]).unwrap();
    let as_written = serde_json::to_value(&file_only).unwrap();
    let mut vars = Vec::new();
    scalar_env_vars("", &as_written, &mut vars);
    assert!(vars.len() > 10, "{vars:?}");
    for (name, text) in &vars {
        let from_env = load_with(MINIMAL, &[(name, text)])
            .unwrap_or_else(|e| panic!("{name}={text} is refused: {e}"));
        assert_eq!(
            serde_json::to_value(&from_env).unwrap(),
            as_written,
            "{name}={text}"
        );
    }
}

#[test]
fn the_identity_assertion_keys_can_be_set_from_the_environment() {
    let config = load_with(
        MINIMAL,
        &[
            ("MCP_PROXY_IDENTITY_ASSERTION__LIFETIME", "30s"),
            ("MCP_PROXY_IDENTITY_ASSERTION__ROTATION_INTERVAL", "1h"),
            (
                "MCP_PROXY_DOWNSTREAM__ASSERTION_AUDIENCE",
                "urn:example:mcp",
            ),
        ],
    )
    .unwrap();
    assert_eq!(config.identity_assertion.lifetime_secs(), 30);
    assert_eq!(config.identity_assertion.rotation_secs(), 3600);
    assert_eq!(
        config.downstream.assertion_audience.as_deref(),
        Some("urn:example:mcp")
    );
    let too_long = load_with(
        MINIMAL,
        &[
            ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
            ("MCP_PROXY_IDENTITY_ASSERTION__LIFETIME", "2d"),
        ],
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(
        too_long
            .to_string()
            .starts_with("identity_assertion.lifetime"),
        "{too_long}"
    );
}
