#!/usr/bin/env bash
# Every test of the project, in the order a failure is cheapest to find:
# formatting, lints, Rust unit and integration tests, then the end-to-end
# suite against a real OpenID provider and real MCP clients.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "=== cargo fmt --check ==="
cargo fmt --check
echo "=== cargo clippy ==="
cargo clippy --all-targets --quiet -- -D warnings
echo "=== cargo test ==="
cargo test --quiet 2>&1 | tee /tmp/mcp-oauth-proxy-cargo-test.log
echo "=== build the binary for the end-to-end tests ==="
cargo build --quiet
echo "=== mcp-oauth-proxy check on every shipped configuration ==="
for config in config/*.toml; do
  # Example configurations name real providers' placeholders; they must parse
  # and validate with their documented environment.
  MCP_PROXY_SECRETS__ENCRYPTION_KEY=${MCP_PROXY_SECRETS__ENCRYPTION_KEY:-0000000000000000000000000000000000000000000000000000000000000000} \
    ./target/debug/mcp-oauth-proxy check --config "$config" >/dev/null
done
echo "=== policy test (every shipped policy) ==="
./target/debug/mcp-oauth-proxy policy test policies
echo "=== end-to-end ==="
bash tests/e2e/run.sh
echo "=== soak (1,000 aborted event streams and 300 slowloris sockets against the binary) ==="
cargo test --quiet --test soak -- --ignored --nocapture
