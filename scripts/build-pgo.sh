#!/usr/bin/env bash
# A profile-guided release build (PGO): the proxy is built once with
# instrumentation, serves the benchmark's workload (tests/bench/train.mjs:
# a sign-in through the real OpenID provider, MCP POSTs under the default
# and the per-tool policy, event streams), and is built again with what
# that run counted, so the compiler lays out and inlines the request path
# for the way it actually runs. Same source, same checks: only code layout
# and inlining change.
#
#   scripts/build-pgo.sh        # about three release builds' time; prints the binary's path
#
# Needs what scripts/bench.sh needs (it installs nginx, wrk and the e2e
# harness when they are missing), and an llvm-profdata of the LLVM version
# rustc was built with (`rustc -vV`): Debian's llvm-NN package, rustup's
# llvm-tools, or LLVM_PROFDATA=/path. Everything but the binary's path is
# written to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
pgo=$repo/target/pgo

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=${LLVM_PROFDATA:-}
if [ -z "$profdata" ]; then
  for candidate in "llvm-profdata-$llvm_major" \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata" \
    llvm-profdata; do
    if command -v "$candidate" > /dev/null &&
      "$candidate" --version 2> /dev/null | grep -q "LLVM version $llvm_major\."; then
      profdata=$candidate
      break
    fi
  done
fi
if [ -z "$profdata" ]; then
  echo "build-pgo: no llvm-profdata of LLVM $llvm_major (rustc's); install Debian's llvm-$llvm_major," >&2
  echo "build-pgo: or rustup component add llvm-tools, or set LLVM_PROFDATA" >&2
  exit 1
fi

# shellcheck source=scripts/bench-tools.sh
source "$repo/scripts/bench-tools.sh" >&2

echo "build-pgo: 1/3 the instrumented build (target/pgo/instrumented)" >&2
rm -rf "$pgo/profiles"
RUSTFLAGS="-Cprofile-generate=$pgo/profiles" \
  cargo build --release --locked --target-dir "$pgo/instrumented" >&2
# The build scripts and proc macros of that build were instrumented too and
# wrote profiles while it ran: only the proxy's count.
rm -rf "$pgo/profiles"

echo "build-pgo: 2/3 training (tests/bench/train.mjs)" >&2
PROXY_BIN="$pgo/instrumented/release/mcp-oauth-proxy" "$node" tests/bench/train.mjs >&2
"$profdata" merge -o "$pgo/merged.profdata" "$pgo/profiles" >&2

echo "build-pgo: 3/3 the optimised build (target/pgo/release)" >&2
RUSTFLAGS="-Cprofile-use=$pgo/merged.profdata" \
  cargo build --release --locked --target-dir "$pgo" >&2
echo "$pgo/release/mcp-oauth-proxy"
