//! The administration commands (`grants list|revoke`, `clients list|delete`)
//! run as the real binary against a store filled by the real proxy: a proxy
//! child process registers clients and signs users in, stops, the commands
//! run, and a restarted proxy shows that what they revoked is dead.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::downstream::Downstream;
use common::*;
use mcp_oauth_proxy::crypto::token_hash;
use serde_json::{json, Value};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the binary with `--config config` right after the subcommand (so
/// that `--` may come later: ids are random and may start with "-").
fn cli(config: &Path, args: &[&str]) -> Run {
    let words = if args[0] == "check" { 1 } else { 2 };
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
        .args(&args[..words])
        .arg("--config")
        .arg(config)
        .args(&args[words..])
        .env_remove("MCP_PROXY_CONFIG")
        .env_remove("DOWNSTREAM_MCP_URL")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A table's rows by header, checking the layout on the way: every line
/// starts each column at the header's column, after at least two spaces, and
/// has no trailing space.
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let header = &lines[0];
    let mut starts = vec![0];
    for i in 2..header.len() {
        if header[i] != ' ' && header[i - 1] == ' ' && header[i - 2] == ' ' {
            starts.push(i);
        }
    }
    let cut = |line: &[char], i: usize| -> String {
        let end = starts
            .get(i + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line[starts[i].min(line.len())..end]
            .iter()
            .collect::<String>()
            .trim_end()
            .to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|i| cut(header, i)).collect();
    let mut rows = Vec::new();
    for line in &lines[1..] {
        let shown: String = line.iter().collect();
        assert!(!shown.ends_with(' '), "trailing space: {shown:?}\n{text}");
        for &s in &starts[1..] {
            assert!(
                s < line.len() && line[s - 2] == ' ' && line[s - 1] == ' ' && line[s] != ' ',
                "column at {s} not aligned in {shown:?}\n{text}"
            );
        }
        rows.push(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), cut(line, i)))
                .collect(),
        );
    }
    rows
}

/// No value that looks like a token, hash, key or sealed blob: no run of
/// 40 or more base64 / hex characters.
fn assert_no_secret_looking_values(output: &str, known: &[String]) {
    for secret in known {
        assert!(
            !output.contains(secret.as_str()),
            "a secret leaked: {secret}\n{output}"
        );
    }
    for word in output.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c))) {
        assert!(
            word.len() < 40,
            "secret-looking value {word:?} in\n{output}"
        );
    }
    for field in [
        "client_secret_hash",
        "sealed",
        "wrapped_key",
        "refresh_current",
        "refresh_previous",
    ] {
        assert!(!output.contains(field), "{field} in\n{output}");
    }
}

async fn register(endpoint: &Endpoint, body: Value) -> Client {
    let (status, body) = endpoint.register(body).await;
    assert_eq!(status, 201, "{body}");
    Client {
        client_id: body["client_id"].as_str().unwrap().to_string(),
        client_secret: body["client_secret"].as_str().map(str::to_string),
        redirect_uri: body["redirect_uris"][0].as_str().unwrap().to_string(),
    }
}

struct Signed {
    access: String,
    refresh: String,
}

async fn sign_in(endpoint: &Endpoint, user: Value, client: &Client) -> Signed {
    endpoint.provider.set_user(user);
    let tokens = endpoint.tokens_for(client, &[]).await;
    // One second apart, so that "newest first" is observable.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Signed {
        access: tokens["access_token"].as_str().unwrap().to_string(),
        refresh: tokens["refresh_token"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administration_commands_list_and_revoke_for_real() {
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        ..Default::default()
    };
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_toml(port, &provider.issuer, &dir.path().join("proxy.db"), &opts),
    )
    .unwrap();
    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{port}"),
        provider: provider.clone(),
        http: http_client(),
    };

    // ------------------------------------------------------------ fill the store
    let child = spawn_proxy(&config);
    wait_ready(&endpoint.url).await;
    let alpha = register(
        &endpoint,
        json!({
            "client_name": "Alpha Client",
            "redirect_uris": ["http://127.0.0.1:33418/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    )
    .await;
    let beta = register(
        &endpoint,
        json!({
            "client_name": "Beta",
            "redirect_uris": ["https://app.example.com/oauth/callback"],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    )
    .await;
    // A name meant to take over the operator's terminal: registration
    // refuses it now, but a record stored by an older release may hold one.
    // (A second later, so that it lists first.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hostile_request = json!({
        "client_name": "Evil\u{1b}[2J\u{1b}[31m\nClient\u{202e}",
        "redirect_uris": ["http://127.0.0.1:5555/cb"],
        "token_endpoint_auth_method": "none",
    });
    let (status, refused) = endpoint.register(hostile_request.clone()).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_client_metadata");
    let hostile = {
        let mut request = hostile_request.as_object().unwrap().clone();
        request.insert("client_name".into(), "Evil".into());
        let mut record =
            mcp_oauth_proxy::oauth::register::parse_registration(&request, &[], 10).unwrap();
        record.client_name = hostile_request["client_name"].as_str().map(str::to_string);
        let store = mcp_oauth_proxy::store::sqlite::SqliteStore::open(&dir.path().join("proxy.db"))
            .unwrap();
        let records = mcp_oauth_proxy::store::Records::new(std::sync::Arc::new(store));
        records
            .put(
                mcp_oauth_proxy::store::Namespace::Client,
                &record.client_id.clone(),
                &record,
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        Client {
            client_id: record.client_id,
            client_secret: None,
            redirect_uri: "http://127.0.0.1:5555/cb".into(),
        }
    };
    let carol = json!({"sub": "carol-sub-789", "name": "Carol, no email"});
    let alice_alpha = sign_in(&endpoint, Value::Object(alice()), &alpha).await;
    let bob_alpha = sign_in(&endpoint, bob(), &alpha).await;
    let alice_beta = sign_in(&endpoint, Value::Object(alice()), &beta).await;
    let carol_alpha = sign_in(&endpoint, carol, &alpha).await;
    drop(child);

    let beta_secret = beta.client_secret.clone().unwrap();
    let mut secrets = vec![
        beta_secret.clone(),
        token_hash(&beta_secret),
        ENCRYPTION_KEY.to_string(),
        UPSTREAM_CLIENT_SECRET.to_string(),
    ];
    for s in [&alice_alpha, &bob_alpha, &alice_beta, &carol_alpha] {
        for t in [&s.access, &s.refresh] {
            secrets.push(t.clone());
            secrets.push(token_hash(t));
        }
    }
    secrets.extend(provider.issued_tokens());
    let mut outputs = String::new();
    let mut run = |args: &[&str]| {
        let r = cli(&config, args);
        outputs.push_str(&r.stdout);
        outputs.push_str(&r.stderr);
        r
    };

    // ------------------------------------------------------------ grants list
    let listed = run(&["grants", "list", "--json"]).ok().json();
    let grants = listed.as_array().unwrap();
    assert_eq!(grants.len(), 4, "{listed:#}");
    let users: Vec<&str> = grants.iter().map(|g| g["user"].as_str().unwrap()).collect();
    // Newest first; a user without an email shows as the sub.
    assert_eq!(
        users,
        [
            "carol-sub-789",
            "alice@example.com",
            "bob@example.com",
            "alice@example.com"
        ]
    );
    let created: Vec<&str> = grants
        .iter()
        .map(|g| g["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] > w[1]), "{created:?}");
    assert!(created.iter().all(|c| c.len() == 20 && c.ends_with('Z')));
    let carol_grant = &grants[0];
    assert_eq!(carol_grant["email"], Value::Null);
    assert_eq!(carol_grant["sub"], "carol-sub-789");
    let alice_beta_grant = &grants[1];
    assert_eq!(alice_beta_grant["client_id"], beta.client_id.as_str());
    assert_eq!(alice_beta_grant["client_name"], "Beta");
    let bob_grant = &grants[2];
    assert_eq!(bob_grant["sub"], "bob-sub-456");
    assert_eq!(bob_grant["email"], "bob@example.com");
    let alice_alpha_grant = &grants[3];
    assert_eq!(alice_alpha_grant["client_name"], "Alpha Client");
    let mut keys: Vec<&String> = alice_alpha_grant.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "client_id",
            "client_name",
            "created_at",
            "email",
            "grant_id",
            "refresh_token_live",
            "resource",
            "scope",
            "sub",
            "user"
        ]
    );
    assert!(grants.iter().all(|g| g["refresh_token_live"] == true));
    let id = |g: &Value| g["grant_id"].as_str().unwrap().to_string();
    let (alice_alpha_id, bob_id, alice_beta_id, carol_id) = (
        id(alice_alpha_grant),
        id(bob_grant),
        id(alice_beta_grant),
        id(carol_grant),
    );

    // The table: aligned, the same facts.
    let table = run(&["grants", "list"]).ok().stdout;
    assert!(!table.contains('\x1b'), "{table}");
    let rows = parse_table(&table);
    assert_eq!(
        rows[0].keys().collect::<Vec<_>>(),
        [
            "CLIENT",
            "CLIENT NAME",
            "CREATED",
            "GRANT",
            "REFRESH",
            "RESOURCE",
            "SCOPE",
            "SUB",
            "USER"
        ]
    );
    assert_eq!(rows.len(), 4, "{table}");
    for (row, grant) in rows.iter().zip(grants) {
        assert_eq!(row["GRANT"], grant["grant_id"].as_str().unwrap(), "{table}");
        assert_eq!(row["USER"], grant["user"].as_str().unwrap());
        assert_eq!(row["CLIENT"], grant["client_id"].as_str().unwrap());
        assert_eq!(row["CREATED"], grant["created_at"].as_str().unwrap());
        assert_eq!(row["REFRESH"], "live");
    }
    assert_eq!(rows[1]["CLIENT NAME"], "Beta");
    assert_eq!(rows[3]["CLIENT NAME"], "Alpha Client");

    // Filters: email in any case, sub exactly, client, both.
    let ids_of =
        |r: Run| -> Vec<String> { r.ok().json().as_array().unwrap().iter().map(id).collect() };
    assert_eq!(
        ids_of(run(&[
            "grants",
            "list",
            "--json",
            "--user",
            "ALICE@example.com"
        ])),
        [alice_beta_id.as_str(), alice_alpha_id.as_str()]
    );
    assert_eq!(
        ids_of(run(&["grants", "list", "--json", "--user", "bob-sub-456"])),
        [bob_id.as_str()]
    );
    assert!(ids_of(run(&["grants", "list", "--json", "--user", "BOB-SUB-456"])).is_empty());
    assert_eq!(
        ids_of(run(&[
            "grants",
            "list",
            "--json",
            "--client",
            &alpha.client_id
        ])),
        [carol_id.as_str(), bob_id.as_str(), alice_alpha_id.as_str()]
    );
    assert_eq!(
        ids_of(run(&[
            "grants",
            "list",
            "--json",
            "--user",
            "alice@example.com",
            "--client",
            &beta.client_id
        ])),
        [alice_beta_id.as_str()]
    );
    let filtered = run(&["grants", "list", "--client", &beta.client_id])
        .ok()
        .stdout;
    let rows = parse_table(&filtered);
    assert_eq!(rows.len(), 1, "{filtered}");
    assert_eq!(rows[0]["GRANT"], alice_beta_id);
    let none = run(&["grants", "list", "--user", "nobody@example.com"]).ok();
    assert_eq!(none.stdout, "no grant matches\n");

    // The configuration may also come from MCP_PROXY_CONFIG.
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
        .args(["grants", "list", "--json"])
        .env("MCP_PROXY_CONFIG", &config)
        .env_remove("DOWNSTREAM_MCP_URL")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        listed
    );

    // ------------------------------------------------------------ clients list
    let clients = run(&["clients", "list", "--json"]).ok().json();
    let clients = clients.as_array().unwrap();
    assert_eq!(clients.len(), 3);
    // Newest first.
    let hostile_row = &clients[0];
    assert_eq!(hostile_row["client_id"], hostile.client_id.as_str());
    assert_eq!(
        hostile_row["client_name"],
        "Evil\u{1b}[2J\u{1b}[31m\nClient\u{202e}"
    );
    let beta_row = clients
        .iter()
        .find(|c| c["client_id"] == beta.client_id.as_str())
        .unwrap();
    assert_eq!(beta_row["client_name"], "Beta");
    assert_eq!(
        beta_row["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    assert_eq!(
        beta_row["redirect_uris"],
        json!(["https://app.example.com/oauth/callback"])
    );
    assert_eq!(beta_row["grants"], 1);
    assert!(beta_row["registered_at"].as_str().unwrap().ends_with('Z'));
    assert!(beta_row["last_used_at"].as_str().unwrap().ends_with('Z'));
    let mut keys: Vec<&String> = beta_row.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "client_id",
            "client_name",
            "grant_types",
            "grants",
            "last_used_at",
            "redirect_uris",
            "registered_at",
            "source",
            "token_endpoint_auth_method"
        ]
    );
    let table = run(&["clients", "list"]).ok().stdout;
    // The hostile name is shown escaped: no escape sequence, no extra line,
    // no bidirectional override.
    assert!(
        !table.contains('\x1b') && !table.contains('\u{202e}'),
        "{table:?}"
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    let rows = parse_table(&table);
    assert_eq!(
        rows[0]["NAME"],
        "Evil\\u{1b}[2J\\u{1b}[31m\\u{a}Client\\u{202e}"
    );
    let alpha_row = rows
        .iter()
        .find(|r| r["CLIENT"] == alpha.client_id)
        .unwrap();
    assert_eq!(alpha_row["NAME"], "Alpha Client");
    assert_eq!(alpha_row["AUTH"], "none");
    assert_eq!(alpha_row["GRANTS"], "3");
    assert_eq!(
        alpha_row["REDIRECT URIS"],
        "http://127.0.0.1:33418/callback"
    );

    // ------------------------------------------------------------ grants revoke
    let r = run(&["grants", "revoke"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--user"), "{}", r.stderr);
    let r = run(&["grants", "revoke", &alice_alpha_id, "--user", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    let r = run(&["grants", "revoke", "--", &alice_alpha_id]).ok();
    assert!(r.stdout.starts_with("revoked 1 grant\n"), "{}", r.stdout);
    let rows = parse_table(r.stdout.split_once('\n').unwrap().1);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["GRANT"], alice_alpha_id);
    assert_eq!(rows[0]["USER"], "alice@example.com");

    // Revoked already, and never existing: exit 1, reported by id.
    let r = run(&[
        "grants",
        "revoke",
        "--json",
        "--",
        &alice_alpha_id,
        "-no-such-grant",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.json(),
        json!({"count": 0, "revoked": [], "not_found": [alice_alpha_id, "-no-such-grant"]})
    );
    assert!(
        r.stderr.contains("-no-such-grant: no such grant"),
        "{}",
        r.stderr
    );
    // Option values may start with "-" too (ids are random base64url).
    let r = run(&["grants", "list", "--client", "-no-such-client"]).ok();
    assert_eq!(r.stdout, "no grant matches\n");

    // By user: an email or a sub.
    let r = run(&["grants", "revoke", "--user", "Bob@Example.com", "--json"]).ok();
    assert_eq!(
        r.json(),
        json!({"count": 1, "revoked": [bob_id], "not_found": []})
    );
    let r = run(&["grants", "revoke", "--user", "carol-sub-789"]).ok();
    assert!(r.stdout.starts_with("revoked 1 grant\n"), "{}", r.stdout);
    assert!(r.stdout.contains(&carol_id));
    let r = run(&["grants", "revoke", "--user", "carol-sub-789", "--json"]).ok();
    assert_eq!(
        r.json(),
        json!({"count": 0, "revoked": [], "not_found": []})
    );
    assert_eq!(
        ids_of(run(&["grants", "list", "--json"])),
        [alice_beta_id.as_str()]
    );

    // ------------------------------------------------------------ clients delete
    let r = run(&["clients", "delete", "no-such-client", "--json"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.json(),
        json!({"deleted": [], "not_found": ["no-such-client"], "revoked_grants": [], "removed_consents": 0})
    );
    assert!(
        r.stderr.contains("no-such-client: no such client"),
        "{}",
        r.stderr
    );
    let r = run(&["clients", "delete", "--json", "--", &beta.client_id]).ok();
    let deleted = r.json();
    assert_eq!(deleted["deleted"], json!([beta.client_id]));
    assert_eq!(deleted["not_found"], json!([]));
    assert_eq!(deleted["revoked_grants"], json!([alice_beta_id]));
    assert!(
        deleted["removed_consents"].as_u64().unwrap() >= 1,
        "{deleted}"
    );
    let r = run(&["clients", "delete", "--", &hostile.client_id]).ok();
    assert_eq!(
        r.stdout,
        format!(
            "deleted 1 client, revoked 0 grants, removed 0 consents\n  client {}\n",
            hostile.client_id
        )
    );
    assert!(ids_of(run(&["grants", "list", "--json"])).is_empty());
    assert_eq!(run(&["grants", "list"]).ok().stdout, "no grants\n");
    let clients = run(&["clients", "list", "--json"]).ok().json();
    assert_eq!(
        clients
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [alpha.client_id.as_str()]
    );
    assert_eq!(clients[0]["grants"], 0);

    assert_no_secret_looking_values(&outputs, &secrets);

    // ------------------------------------------------------------ the proxy agrees
    let child = spawn_proxy(&config);
    wait_ready(&endpoint.url).await;
    for (who, signed, client) in [
        ("alice/alpha, by id", &alice_alpha, &alpha),
        ("bob/alpha, by email", &bob_alpha, &alpha),
        ("carol/alpha, by sub", &carol_alpha, &alpha),
    ] {
        let (status, body) = endpoint.refresh(client, &signed.refresh).await;
        assert_eq!(status, 400, "{who}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{who}: {body}");
    }
    // The deleted client cannot even authenticate any more.
    let (status, body) = endpoint.refresh(&beta, &alice_beta.refresh).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    for signed in [&alice_alpha, &bob_alpha, &carol_alpha, &alice_beta] {
        let r = endpoint
            .http
            .post(format!("{}/mcp", endpoint.url))
            .bearer_auth(&signed.access)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let page = Browser::new()
        .get(&endpoint.authorize_url(&beta, &Pkce::new(), "after-delete", &[]))
        .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("Unknown application"), "{}", page.body);
    // The client that was not deleted still signs people in.
    let fresh = sign_in(&endpoint, Value::Object(alice()), &alpha).await;
    let r = endpoint
        .http
        .post(format!("{}/mcp", endpoint.url))
        .bearer_auth(&fresh.access)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(child);
}

#[test]
fn configuration_and_store_errors_exit_1_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let db = dir.path().join("missing").join("proxy.db");
    let good = config_toml(8787, "https://idp.example.com", &db, &Options::default());

    // Unreadable configuration: the same text as `check`.
    let missing = dir.path().join("nope.toml");
    let r = cli(&missing, &["grants", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nope.toml"), "{}", r.stderr);
    let check = cli(&missing, &["check"]);
    assert_eq!(r.stderr, check.stderr);

    std::fs::write(&config, format!("{good}\n[bogus]\nkey = 1\n")).unwrap();
    let r = cli(&config, &["clients", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("bogus"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    // A store file that does not exist is not created empty.
    std::fs::write(&config, &good).unwrap();
    let r = cli(&config, &["grants", "list"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("store.path") && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
    assert!(!db.exists() && !db.parent().unwrap().exists());

    // A store that cannot be opened (a directory).
    std::fs::create_dir_all(&db).unwrap();
    let r = cli(&config, &["clients", "delete", "x"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("store.path"), "{}", r.stderr);
}

/// The same commands on the Redis store, with a replica running: the
/// revocation reaches its token cache at once (a cached access token stops
/// working well within auth.cache_ttl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_revocations_reach_running_replicas() {
    use futures_util::StreamExt;

    let redis = common::redis_server::RedisServer::start();
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        extra: "[auth]\ncache_ttl = \"10m\"\n".into(),
        ..Default::default()
    };
    let config = dir.path().join("proxy.toml");
    // No SQLite file: the store is Redis.
    let toml = config_toml(port, &provider.issuer, &dir.path().join("unused.db"), &opts).replace(
        "[store]\n",
        &format!(
            "[store]\nredis_url = \"{}\"\nredis_prefix = \"cli-test:\"\n",
            redis.url()
        ),
    );
    std::fs::write(&config, toml).unwrap();
    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{port}"),
        provider: provider.clone(),
        http: http_client(),
    };
    let child = spawn_proxy(&config);
    wait_ready(&endpoint.url).await;
    let client = register(
        &endpoint,
        json!({
            "client_name": "Gamma",
            "redirect_uris": ["http://127.0.0.1:33418/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    )
    .await;
    let alice_tokens = sign_in(&endpoint, Value::Object(alice()), &client).await;
    let bob_tokens = sign_in(&endpoint, bob(), &client).await;
    let mcp = |token: String| {
        let endpoint = &endpoint;
        async move {
            endpoint
                .http
                .post(format!("{}/mcp", endpoint.url))
                .bearer_auth(token)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Now cached by the running proxy.
    assert_eq!(mcp(alice_tokens.access.clone()).await, 200);
    assert_eq!(mcp(bob_tokens.access.clone()).await, 200);

    let mut feed = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    feed.subscribe("cli-test:revocations").await.unwrap();
    let mut feed = feed.into_on_message();

    let grants = cli(&config, &["grants", "list", "--json"]).ok().json();
    assert_eq!(grants.as_array().unwrap().len(), 2, "{grants}");
    assert_eq!(grants[0]["user"], "bob@example.com");
    assert_eq!(grants[0]["client_name"], "Gamma");
    let rows = parse_table(&cli(&config, &["clients", "list"]).ok().stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["NAME"], "Gamma");
    assert_eq!(rows[0]["GRANTS"], "2");
    assert!(!dir.path().join("unused.db").exists());

    let r = cli(
        &config,
        &["grants", "revoke", "--user", "alice@example.com", "--json"],
    )
    .ok();
    let alice_id = grants[1]["grant_id"].as_str().unwrap();
    assert_eq!(
        r.json(),
        json!({"count": 1, "revoked": [alice_id], "not_found": []})
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let message = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the revocation is announced")
        .unwrap();
    let payload: String = message.get_payload().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap(),
        json!({"Grant": alice_id})
    );
    // The replica drops its cached session now, not after auth.cache_ttl.
    let mut status = 0;
    for _ in 0..20 {
        status = mcp(alice_tokens.access.clone()).await.as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "the cached access token still works");
    let (status, body) = endpoint.refresh(&client, &alice_tokens.refresh).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(mcp(bob_tokens.access.clone()).await, 200);

    // Deleting the client revokes (and announces) bob's grant too.
    let r = cli(
        &config,
        &["clients", "delete", "--json", "--", &client.client_id],
    )
    .ok();
    let bob_id = grants[0]["grant_id"].as_str().unwrap();
    assert_eq!(r.json()["revoked_grants"], json!([bob_id]));
    let message = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the revocation is announced")
        .unwrap();
    let payload: String = message.get_payload().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap(),
        json!({"Grant": bob_id})
    );
    let mut status = 0;
    for _ in 0..20 {
        status = mcp(bob_tokens.access.clone()).await.as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
    let page = Browser::new()
        .get(&endpoint.authorize_url(&client, &Pkce::new(), "after-delete", &[]))
        .await;
    assert!(page.body.contains("Unknown application"), "{}", page.body);
    assert_eq!(cli(&config, &["grants", "list"]).ok().stdout, "no grants\n");
    drop(child);
}

#[test]
fn an_unreachable_redis_is_named_and_its_password_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let port = free_port();
    let toml = config_toml(
        8787,
        "https://idp.example.com",
        &dir.path().join("unused.db"),
        &Options::default(),
    )
    .replace(
        "[store]\n",
        &format!("[store]\nredis_url = \"redis://:hunter2-password@127.0.0.1:{port}/0\"\n"),
    );
    std::fs::write(&config, toml).unwrap();
    let r = cli(&config, &["grants", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("store.redis_url"), "{}", r.stderr);
    assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
}
