#!/usr/bin/env bash
# The request-path benchmark, one command: a fast downstream stub directly,
# nginx as a plain reverse proxy, and mcp-oauth-proxy, rounds interleaved;
# 200-byte JSON-RPC POSTs at 32 and 256 keep-alive connections (wrk), then
# SSE time to first event, events/s and memory per idle stream.
# What it measures and how: tests/bench/README.md.
#
#   scripts/bench.sh                      defaults: 3 rounds × 10 s, about 5 minutes
#   BENCH_ROUNDS=5 BENCH_DURATION=20 scripts/bench.sh
#   BENCH_ONLY=http|sse  BENCH_PROFILE=1 (perf record of the proxy)  PROXY_BIN=...
#   BENCH_PGO=1           the proxy built by scripts/build-pgo.sh (profile-guided)
#   BENCH_WORKERS=2       two workers each (proxy threads, nginx workers) on CPUs 0-1
#   BENCH_PROVIDER_TOKEN_BYTES=1024   size of the provider JWT the policy forwards
#   BENCH_VARIANTS=opaque,audit       extra proxy columns (none: just the proxy)
#   BENCH_ONLY=routes     the proxy with 10 routes against the proxy with 1
#                         (same load, rounds interleaved; target: within 5%)
#
# Installs nginx and wrk (apt-get) when they are missing. Prints the table and
# writes tests/bench/results/bench-<time>.{md,json}. Exits non-zero only when
# the benchmark could not run; a missed target is reported, not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

# --- tools: nginx, wrk, taskset, Node 22 and the e2e harness ----------------
# shellcheck source=scripts/bench-tools.sh
source "$repo/scripts/bench-tools.sh"

# --- the binary under test --------------------------------------------------
if [[ -z "${PROXY_BIN:-}" && "${BENCH_PGO:-}" == 1 ]]; then
  echo "=== bench: scripts/build-pgo.sh ===" >&2
  PROXY_BIN="$("$repo/scripts/build-pgo.sh")"
  export PROXY_BIN
elif [[ -z "${PROXY_BIN:-}" ]]; then
  echo "=== bench: cargo build --release ===" >&2
  cargo build --release --quiet
  export PROXY_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/mcp-oauth-proxy"
fi

# --- CPUs and file descriptors ---------------------------------------------
# One worker each (default): the servers on CPU 0, the load on CPU 1.
# BENCH_WORKERS=N: N workers each, servers and load sharing CPUs 0..N-1.
workers="${BENCH_WORKERS:-1}"
if ((workers > 1)); then
  server_cpu="${BENCH_SERVER_CPU:-0-$((workers - 1))}"
  load_cpu="${BENCH_LOAD_CPU:-0-$((workers - 1))}"
else
  server_cpu="${BENCH_SERVER_CPU:-0}"
  load_cpu="${BENCH_LOAD_CPU:-1}"
fi
export BENCH_SERVER_CPU="$server_cpu" BENCH_LOAD_CPU="$load_cpu"
for cpu in "$server_cpu" "$load_cpu"; do
  taskset -c "$cpu" true 2>/dev/null || { echo "bench: CPU $cpu is not available here (set BENCH_SERVER_CPU / BENCH_LOAD_CPU)" >&2; exit 1; }
done
# 1,000 held streams are 2,000+ sockets in a proxy and 1,000 in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 8192)); then
  echo "bench: only $(ulimit -n) file descriptors; 1,000 SSE streams need more (raise the hard limit)" >&2
  exit 1
fi

# The orchestrator (and everything it starts unpinned: wrk, the clients, the
# OpenID provider) runs on the load CPU; it pins the servers to the server CPU.
exec taskset -c "$load_cpu" "$node" "$repo/tests/bench/bench.mjs"
