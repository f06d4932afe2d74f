//! What the repository ships for installing the proxy: the licence, the
//! systemd unit and the container recipe. Each is read as the tool that
//! consumes it would read it, and, where that tool is on this machine, handed
//! to it: `systemd-analyze` checks the unit, the real binary runs with the
//! unit's and the image's settings, the image's health check runs against a
//! real admin listener, and a container engine, if one answers, builds the
//! image. Nothing here touches the network.

#![forbid(unsafe_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-oauth-proxy");
const UNIT: &str = "packaging/systemd/mcp-oauth-proxy.service";
const UNIT_CONFIG: &str = "packaging/systemd/config.toml";
const CONTAINERFILE: &str = "packaging/container/Dockerfile";
/// A valid `secrets.encryption_key`: 64 hexadecimal characters.
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

// ---------------------------------------------------------------- licence

/// The binary's `malloc` is mimalloc's, linked in (`override`), and Rust
/// allocates through it (src/main.rs): if the linker left mimalloc out, or
/// `malloc` were glibc's, the proxy would silently run on glibc's malloc, on
/// which the request path's allocations took a quarter of its instructions
/// (tests/bench/README.md). mimalloc's statistics at exit count the pages it
/// handed blocks from: none unless the program's allocations reached it.
#[test]
fn the_binary_allocates_with_mimalloc_as_malloc() {
    let output = Command::new(BIN)
        .arg("--version")
        .env("MIMALLOC_SHOW_STATS", "1")
        .output()
        .expect("run the binary");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `  pages     :    20          23           3`: peak, total, current.
    let pages_total = stderr.lines().find_map(|line| {
        let counts = line.trim_start().strip_prefix("pages")?;
        let total = counts
            .trim_start()
            .strip_prefix(':')?
            .split_whitespace()
            .nth(1)?;
        total.parse::<u64>().ok()
    });
    assert!(
        pages_total.is_some_and(|n| n > 0),
        "mimalloc served none of the binary's allocations; stderr: {stderr}"
    );
}

#[test]
fn license_is_mit_as_cargo_toml_says() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    assert_eq!(
        manifest["package"]["license"].as_str(),
        Some("MIT"),
        "Cargo.toml package.license"
    );
    let license = read("LICENSE");
    let mut lines = license.lines();
    assert_eq!(lines.next(), Some("MIT License"), "LICENSE's first line");
    assert!(
        license.contains("Copyright (c) 2026 The mcp-oauth-proxy authors"),
        "LICENSE names the copyright holder"
    );
    // The MIT grant and disclaimer, as opensource.org words them (line breaks
    // aside).
    let words = license.split_whitespace().collect::<Vec<_>>().join(" ");
    for clause in [
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
        "to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software",
        "The above copyright notice and this permission notice shall be included in all copies or substantial portions of the Software.",
        "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND",
    ] {
        assert!(words.contains(clause), "LICENSE lacks: {clause}");
    }
}

// ------------------------------------------------------------ systemd unit

/// A unit file as systemd reads it: `[Section]` headers, `Key=Value`
/// assignments in order, comments and blank lines ignored, a trailing
/// backslash continuing a line.
struct Unit {
    assignments: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut assignments = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for (number, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("unit line {}: not Key=Value: {raw}", number + 1));
            assert!(
                !section.is_empty(),
                "unit line {}: outside a section",
                number + 1
            );
            assignments.push((
                section.clone(),
                key.trim().to_string(),
                value.trim().to_string(),
            ));
        }
        Unit { assignments }
    }

    /// Every value assigned to `section.key`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.assignments
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value that takes effect for a single-valued key: the last one.
    fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    fn service(&self, key: &str) -> &str {
        self.last("Service", key)
            .unwrap_or_else(|| panic!("the unit sets no {key}="))
    }

    /// `Environment=` as the service sees it, `%d` (the credentials
    /// directory) replaced by `credentials`.
    fn environment(&self, credentials: &Path) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for line in self.all("Service", "Environment") {
            for word in line.split_whitespace() {
                assert!(
                    !word.contains(['"', '\'']),
                    "Environment={line}: quoting is beyond this test's reader"
                );
                let word = word.replace("%d", &credentials.display().to_string());
                assert!(
                    !word.contains('%'),
                    "Environment={line}: a specifier this test does not resolve"
                );
                let (name, value) = word
                    .split_once('=')
                    .unwrap_or_else(|| panic!("Environment={line}: not NAME=VALUE"));
                vars.push((name.to_string(), value.to_string()));
            }
        }
        vars
    }
}

fn unit() -> Unit {
    Unit::parse(&read(UNIT))
}

/// A systemd time span: seconds, or a humantime-style span ("45s", "1min").
fn timespan(text: &str) -> Duration {
    match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("not a time span: {text}: {e}")),
    }
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = unit();
    for (key, want) in [
        // The directives the issue names.
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "mcp-oauth-proxy"),
        ("NoNewPrivileges", "yes"),
        // And the usual company.
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit.service(key), want, "{key}=");
    }
    // An empty assignment resets a list; the empty bounding set must be the
    // only (or last) word on capabilities, with no ambient ones added back.
    assert!(unit
        .all("Service", "AmbientCapabilities")
        .iter()
        .all(|v| v.is_empty()));
    assert_eq!(
        unit.all("Service", "SystemCallFilter").first().copied(),
        Some("@system-service"),
        "the system call allow list starts from @system-service"
    );
    assert_eq!(
        unit.service("ExecStart"),
        "/usr/local/bin/mcp-oauth-proxy serve --config /etc/mcp-oauth-proxy/config.toml"
    );
    assert!(
        unit.service("ExecReload").ends_with("kill -HUP $MAINPID"),
        "ExecReload sends SIGHUP (policy reload)"
    );
    assert_eq!(unit.last("Install", "WantedBy"), Some("multi-user.target"));

    // The SQLite file is in the state directory, the one writable place.
    let state = format!("/var/lib/{}/", unit.service("StateDirectory"));
    let env = unit.environment(Path::new("/run/credentials/x"));
    let store = env
        .iter()
        .find(|(name, _)| name == "MCP_PROXY_STORE__PATH")
        .map(|(_, value)| value.as_str())
        .expect("Environment=MCP_PROXY_STORE__PATH");
    assert!(store.starts_with(&state), "store {store} outside {state}");

    // Each secret file the proxy is pointed at is a loaded credential.
    let credentials: Vec<&str> = unit
        .all("Service", "LoadCredential")
        .into_iter()
        .map(|c| c.split_once(':').map_or(c, |(name, _)| name))
        .collect();
    let secret_files: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.ends_with("_FILE"))
        .collect();
    assert_eq!(
        secret_files.len(),
        2,
        "encryption key and client secret files"
    );
    for (name, value) in secret_files {
        let file = value
            .strip_prefix("/run/credentials/x/")
            .unwrap_or_else(|| panic!("{name}={value} is not in the credentials directory"));
        assert!(
            credentials.contains(&file),
            "{name}: no LoadCredential={file}:…"
        );
    }
}

/// A temporary credentials directory holding the two secrets the unit loads.
fn credentials_dir(dir: &Path) -> PathBuf {
    let credentials = dir.join("credentials");
    std::fs::create_dir(&credentials).expect("credentials dir");
    std::fs::write(credentials.join("encryption-key"), format!("{KEY}\n")).expect("key");
    std::fs::write(credentials.join("client-secret"), "provider-secret\n").expect("secret");
    credentials
}

/// The proxy with a clean environment: nothing from the test's own
/// environment (MCP_PROXY_*, the worker's variables) leaks in.
fn proxy(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The example config with exactly the unit's environment is a valid
/// configuration, and stopping waits longer than the grace the proxy takes.
#[test]
fn systemd_unit_and_example_config_make_a_valid_configuration() {
    let unit = unit();
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = credentials_dir(dir.path());
    let env = unit.environment(&credentials);
    let config = repo().join(UNIT_CONFIG);
    let output = proxy(&["check", "--config"])
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The example names /etc/mcp-oauth-proxy/policy.rhai, which this
        // machine does not have; the repository's default policy stands in.
        .env(
            "MCP_PROXY_POLICY__PATH",
            repo().join("policies/default.rhai"),
        )
        .output()
        .expect("run check");
    assert!(output.status.success(), "check failed: {}", text(&output));

    let effective: toml::Value =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("check prints TOML");
    let store = env
        .iter()
        .find(|(name, _)| name == "MCP_PROXY_STORE__PATH")
        .map(|(_, value)| value.as_str());
    assert_eq!(effective["store"]["path"].as_str(), store);
    let grace = timespan(
        effective["server"]["shutdown_grace"]
            .as_str()
            .expect("server.shutdown_grace"),
    );
    let stop = timespan(unit.service("TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed server.shutdown_grace {grace:?}"
    );
    // The secrets came from the credential files and are not printed.
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(!printed.contains(KEY) && !printed.contains("provider-secret"));
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The unit in a directory of its own, named as installed, with ExecStart
/// pointing at the binary just built (`verify` refuses a missing program).
fn unit_copy(dir: &Path, extra: &str) -> PathBuf {
    let text = read(UNIT).replace("/usr/local/bin/mcp-oauth-proxy", BIN);
    let text = text.replacen("[Service]\n", &format!("[Service]\n{extra}"), 1);
    let path = dir.join("mcp-oauth-proxy.service");
    std::fs::write(&path, text).expect("write unit copy");
    path
}

/// `systemd-analyze verify`, warnings included: an unknown directive or an
/// unparsable value is only a warning to systemd (exit status 0), so the
/// caller looks at stderr too. It needs no systemd as PID 1: it loads the
/// unit into a manager of its own. Only our unit is checked, not the targets
/// it names, so the result does not depend on this machine's other units.
fn verify(analyze: &Path, unit: &Path) -> Output {
    Command::new(analyze)
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(unit)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .expect("run systemd-analyze verify")
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = unit_copy(dir.path(), "");
    let output = verify(&analyze, &copy);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&output)
    );

    // The same reader does notice a broken unit: a misspelt directive and a
    // bad value are each reported.
    for (broken, complaint) in [
        ("ProtectSytem=strict\n", "Unknown key"),
        ("ProtectSystem=strictest\n", "Failed to parse"),
    ] {
        let bad = tempfile::tempdir().expect("tempdir");
        let output = verify(&analyze, &unit_copy(bad.path(), broken));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(complaint),
            "verify missed {broken:?}: {}",
            text(&output)
        );
    }

    // systemd's own exposure score (0 = locked down, 10 = exposed), offline:
    // the unit must stay at 2.0 or below (it scores 1.4).
    let output = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("run systemd-analyze security");
    assert!(
        output.status.success(),
        "exposure above 2.0: {}",
        text(&output)
    );
}

// ------------------------------------------------------- container recipe

/// A Containerfile's instructions: continuation lines joined, comments and
/// blank lines dropped; each as (INSTRUCTION, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        let (op, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_string()));
    }
    assert!(
        pending.is_empty(),
        "the Containerfile ends in a continuation"
    );
    out
}

/// The instructions of the last stage: what the image is made of.
fn final_stage(all: &[(String, String)]) -> &[(String, String)] {
    let start = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    &all[start..]
}

/// `ENV` of a stage as name/value pairs (`ENV A=1 B=2` form).
fn env_of(stage: &[(String, String)]) -> Vec<(String, String)> {
    stage
        .iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(|pair| {
                    let (name, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {args}: use NAME=VALUE"));
                    (name.to_string(), value.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the image sets no {name}"))
}

/// The health check's command, from `HEALTHCHECK [options] CMD ["…", …]`.
fn health_check(stage: &[(String, String)]) -> Vec<String> {
    let (_, args) = stage
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .expect("a HEALTHCHECK in the final stage");
    let (_, command) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK {args}: no CMD"));
    serde_json::from_str(command.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not the exec (JSON) form: {e}"))
}

#[test]
fn container_recipe_is_multi_stage_non_root_with_a_health_check() {
    let all = instructions(&read(CONTAINERFILE));
    let froms: Vec<&str> = all
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, args)| args.as_str())
        .collect();
    assert_eq!(
        froms,
        ["rust:1-bookworm AS build", "debian:bookworm-slim"],
        "a builder stage and a runtime stage"
    );
    assert!(
        all.iter()
            .any(|(op, args)| op == "RUN" && args.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );

    let stage = final_stage(&all);
    assert!(stage
        .iter()
        .any(|(op, args)| op == "COPY" && args.starts_with("--from=build ")));
    assert!(
        stage
            .iter()
            .any(|(op, args)| op == "RUN" && args.contains("ca-certificates")),
        "the runtime has CA certificates"
    );
    let users: Vec<&str> = stage
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, args)| args.as_str())
        .collect();
    let user = users.last().expect("a USER in the final stage");
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so runAsNonRoot can check it"));
    assert_ne!(uid, 0, "USER {user} is root");
    assert!(
        gid.is_empty() || gid.parse::<u32>().is_ok_and(|g| g != 0),
        "USER {user}: the group is numeric and not root"
    );
    // The health check runs as that user: nothing after it switches back.
    let healthcheck_at = stage.iter().position(|(op, _)| op == "HEALTHCHECK");
    let user_at = stage.iter().rposition(|(op, _)| op == "USER");
    assert!(user_at < healthcheck_at);

    let env = env_of(stage);
    let listen = env_value(&env, "MCP_PROXY_SERVER__LISTEN");
    let admin = env_value(&env, "MCP_PROXY_SERVER__ADMIN_LISTEN");
    let store = env_value(&env, "MCP_PROXY_STORE__PATH");
    for address in [listen, admin] {
        assert!(
            address.starts_with("0.0.0.0:"),
            "{address}: reachable from outside the container"
        );
    }
    let exposed: Vec<&str> = stage
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, args)| args.split_whitespace())
        .collect();
    for address in [listen, admin] {
        let port = address.rsplit(':').next().unwrap_or_default();
        assert!(exposed.contains(&port), "port {port} is not EXPOSEd");
    }
    let volume = stage
        .iter()
        .find(|(op, _)| op == "VOLUME")
        .map(|(_, args)| args.as_str())
        .expect("a VOLUME for the store");
    assert_eq!(volume, "/var/lib/mcp-oauth-proxy");
    assert!(
        store.starts_with(&format!("{volume}/")),
        "store {store} off the volume"
    );

    let check = health_check(stage).join(" ");
    assert!(
        check.contains("/healthz"),
        "HEALTHCHECK asks /healthz: {check}"
    );
    assert!(
        check.contains("MCP_PROXY_SERVER__ADMIN_LISTEN"),
        "HEALTHCHECK asks the admin listener: {check}"
    );
}

#[test]
fn dockerignore_keeps_the_build_context_small() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    for pattern in ["target", "**/node_modules", ".git"] {
        assert!(patterns.contains(&pattern), ".dockerignore lacks {pattern}");
    }
}

#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

/// How a bounded run of a command ended.
enum Ran {
    /// It could not be started (not installed).
    NotStarted(std::io::Error),
    /// It was still running at the limit and was killed.
    TimedOut,
    /// Its status, and stdout followed by stderr.
    Exited(ExitStatus, String),
}

/// Runs `command` for at most `limit`.
fn run_for(command: &mut Command, limit: Duration) -> Ran {
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Ran::NotStarted(e),
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut out);
                }
                return Ran::Exited(status, out);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Ran::TimedOut;
            }
        }
    }
}

/// The image's health check, run by bash as the engine would run it, with
/// the image's admin address (host aside: these tests listen on loopback).
fn run_health_check(check: &[String], admin_listen: &str) -> ExitStatus {
    let (program, args) = check.split_first().expect("a health check command");
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("MCP_PROXY_SERVER__ADMIN_LISTEN", admin_listen);
    match run_for(&mut command, Duration::from_secs(5)) {
        Ran::Exited(status, _) => status,
        Ran::TimedOut => panic!("the health check outlived its 5 s timeout"),
        Ran::NotStarted(e) => panic!("cannot run {program}: {e}"),
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The image's settings start the real proxy, and its health check passes
/// against it, fails against a port that is not the admin listener (a 404,
/// not a 200) and fails once the proxy is gone.
#[test]
fn container_health_check_passes_against_the_running_proxy() {
    let all = instructions(&read(CONTAINERFILE));
    let stage = final_stage(&all);
    let check = health_check(stage);
    let image_env = env_of(stage);
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, admin) = (free_port(), free_port());
    let listen_on = |name: &str, port: u16| {
        let image = env_value(&image_env, name);
        let host = image.rsplit_once(':').map_or(image, |(host, _)| host);
        assert_eq!(host, "0.0.0.0");
        format!("127.0.0.1:{port}")
    };
    let public_listen = listen_on("MCP_PROXY_SERVER__LISTEN", public);
    let admin_listen = listen_on("MCP_PROXY_SERVER__ADMIN_LISTEN", admin);
    let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log file");
    let mut command = proxy(&["serve"]);
    command
        .envs(image_env.iter().map(|(k, v)| (k, v)))
        .env("MCP_PROXY_SERVER__LISTEN", &public_listen)
        .env("MCP_PROXY_SERVER__ADMIN_LISTEN", &admin_listen)
        .env("MCP_PROXY_STORE__PATH", dir.path().join("proxy.db"))
        .env(
            "MCP_PROXY_SERVER__PUBLIC_URL",
            format!("http://localhost:{public}"),
        )
        // Nothing listens there: discovery fails in the background, which
        // does not concern /healthz.
        .env("MCP_PROXY_UPSTREAM__ISSUER", "http://127.0.0.1:1")
        .env("MCP_PROXY_UPSTREAM__CLIENT_ID", "packaging-test")
        .env("MCP_PROXY_UPSTREAM__CLIENT_SECRET", "packaging-secret")
        .env("MCP_PROXY_DOWNSTREAM__URL", "http://127.0.0.1:1/mcp")
        .env("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut running = Running(command.spawn().expect("start the proxy"));

    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&admin_listen).is_err() {
        let exited = running.0.try_wait().expect("poll the proxy");
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
            panic!("the admin listener never answered ({exited:?}):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    assert!(
        run_health_check(&check, &admin_listen).success(),
        "healthy proxy reported unhealthy"
    );
    assert!(
        !run_health_check(&check, &public_listen).success(),
        "the public listener has no /healthz; the check must want a 200"
    );
    drop(running);
    assert!(
        !run_health_check(&check, &admin_listen).success(),
        "a stopped proxy reported healthy"
    );
}

/// Builds the image when a container engine answers here and already holds
/// both base images (these tests never pull: no network).
#[test]
fn container_image_builds_where_an_engine_runs() {
    let mut reasons = Vec::new();
    // A field each engine's `info` has: the call needs a running engine.
    for (engine, field) in [
        ("docker", "{{.ServerVersion}}"),
        ("podman", "{{.Host.OCIRuntime.Name}}"),
    ] {
        let info = run_for(
            Command::new(engine).args(["info", "--format", field]),
            Duration::from_secs(10),
        );
        match info {
            Ran::NotStarted(e) => reasons.push(format!("{engine}: cannot run it ({e})")),
            Ran::TimedOut => reasons.push(format!("{engine}: `{engine} info` hung")),
            Ran::Exited(status, out) if !status.success() => reasons.push(format!(
                "{engine}: `{engine} info` failed: {}",
                out.lines().last().unwrap_or_default().trim()
            )),
            Ran::Exited(..) => {
                let images = ["rust:1-bookworm", "debian:bookworm-slim"];
                let present = run_for(
                    Command::new(engine).args(["image", "inspect"]).args(images),
                    Duration::from_secs(10),
                );
                if !matches!(present, Ran::Exited(status, _) if status.success()) {
                    reasons.push(format!(
                        "{engine}: runs, but {} are not pulled",
                        images.join(" and ")
                    ));
                    continue;
                }
                build_image(engine);
                return;
            }
        }
    }
    eprintln!("SKIPPED building the image: {}", reasons.join("; "));
}

fn build_image(engine: &str) {
    let tag = format!("mcp-oauth-proxy-packaging-test:{}", std::process::id());
    let mut build = Command::new(engine);
    build.args(["build", "--pull=false"]);
    if engine == "podman" {
        // Its default OCI format would drop the HEALTHCHECK.
        build.args(["--format", "docker"]);
    }
    let status = build
        .args(["-f", CONTAINERFILE, "-t", &tag, "."])
        .current_dir(repo())
        .status()
        .expect("run the build");
    assert!(status.success(), "{engine} build failed");
    let output = Command::new(engine)
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Healthcheck.Test}}",
            &tag,
        ])
        .output()
        .expect("inspect the image");
    let _ = Command::new(engine).args(["image", "rm", &tag]).output();
    let described = String::from_utf8_lossy(&output.stdout);
    assert!(described.starts_with("10001:10001 "), "{}", text(&output));
    assert!(described.contains("/healthz"), "{}", text(&output));
}
