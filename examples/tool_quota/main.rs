//! mcp-oauth-proxy embedded in a program of its own, with two layers of
//! its own: a per-user, per-tool call quota after the policy, and an
//! `X-Tenant` header computed from the session (see `quota.rs`).
//!
//! ```sh
//! cargo run --example tool_quota -- config/demo.toml        # 100 calls per tool per hour
//! cargo run --example tool_quota -- config/demo.toml 5 10m  # 5 per 10 minutes
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod quota;

const USAGE: &str = "usage: tool_quota CONFIG.toml [CALLS_PER_TOOL [PERIOD]]  (default: 100 1h)";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (config, calls, period) = match arguments() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let proxy = match quota::proxy(&config, calls, period) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match proxy.start().await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "listening on {} with a quota of {calls} calls per tool per {}",
        running.addr,
        humantime::format_duration(period)
    );
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("the proxy failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arguments() -> Result<(PathBuf, u32, Duration), String> {
    let mut args = std::env::args_os().skip(1);
    let config = args.next().ok_or("no configuration file given")?;
    let calls = match args.next() {
        Some(n) => n
            .to_str()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("CALLS_PER_TOOL: {n:?} is not a positive number"))?,
        None => 100,
    };
    let period = match args.next() {
        Some(p) => p
            .to_str()
            .and_then(|p| humantime::parse_duration(p).ok())
            .filter(|p| !p.is_zero())
            .ok_or_else(|| format!("PERIOD: {p:?} is not a duration such as 10m or 1h"))?,
        None => Duration::from_secs(3600),
    };
    if let Some(extra) = args.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    Ok((PathBuf::from(config), calls, period))
}
