#!/usr/bin/env node
// The request-path benchmark (run it through scripts/bench.sh, which installs
// nginx and wrk, builds the release binary and pins this process to the
// load-generator CPU). README.md in this folder says what is measured and how.
//
// Three targets, the same requests to each, rounds interleaved:
//   direct  the fast downstream stub itself
//   nginx   nginx (one worker, upstream keep-alive) as a plain reverse proxy
//           adding three identity headers
//   proxy   mcp-oauth-proxy: bearer check, default policy, identity headers
// The stub and the server under test share the server CPU; wrk and every
// client here run on the load CPU.
//
// BENCH_ONLY=routes compares instead the proxy with one route and the proxy
// with ten ([[routes]]), same load, rounds interleaved: routing must not cost
// per request. BENCH_ONLY=decisions compares the proxy with and without the
// decision log and a shadow policy (issue 14) the same way.

import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  REPO_ROOT,
  accessTokenFor,
  freePort,
  sleep,
  spawnTracked,
  toToml,
} from '../e2e/lib/index.mjs';
import { startProvider, USERS } from '../e2e/provider.mjs';
import { summarize as summarizeProfile } from './perf-summary.mjs';
import { firstEvent, readRate } from './sse-client.mjs';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;

function intEnv(name, fallback, min = 1) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer ≥ ${min}, not ${JSON.stringify(raw)}`);
  return n;
}

const cfg = {
  rounds: intEnv('BENCH_ROUNDS', 3),
  duration: intEnv('BENCH_DURATION', 10),
  warmup: intEnv('BENCH_WARMUP', 2, 0),
  connections: (env.BENCH_CONNECTIONS || '32,256').split(',').map((c) => {
    const n = Number(c.trim());
    if (!Number.isInteger(n) || n < 1) throw new Error(`BENCH_CONNECTIONS: ${c} is not a connection count`);
    return n;
  }),
  sseStreams: intEnv('BENCH_SSE_STREAMS', 1000),
  ttfeSamples: intEnv('BENCH_TTFE_SAMPLES', 200),
  rateSeconds: intEnv('BENCH_SSE_RATE_SECONDS', 5),
  serverCpu: env.BENCH_SERVER_CPU || '0',
  loadCpu: env.BENCH_LOAD_CPU || '1',
  bin: env.PROXY_BIN || path.join(REPO_ROOT, 'target', 'release', 'mcp-oauth-proxy'),
  nginx: env.NGINX || 'nginx',
  wrk: env.WRK || 'wrk',
  outDir: env.BENCH_OUT || path.join(BENCH_DIR, 'results'),
  profile: env.BENCH_PROFILE === '1',
  only: env.BENCH_ONLY || 'all', // all | http | sse | routes | decisions
  // A policy file (relative to the repository), e.g. policies/per-tool.rhai.
  policy: env.BENCH_POLICY ? path.resolve(REPO_ROOT, env.BENCH_POLICY) : null,
  observe: (env.BENCH_OBSERVE || 'on') !== 'off',
  // The provider's access token the default policy forwards downstream
  // (`upstream_bearer()`): an RS256 JWT of about this many bytes, as Okta,
  // Entra ID and Keycloak issue; 0 = the provider's 43-character opaque token.
  providerTokenBytes: intEnv('BENCH_PROVIDER_TOKEN_BYTES', 1024, 0),
  // Worker threads of the proxy = nginx workers = CPUs the servers share.
  workers: intEnv('BENCH_WORKERS', 1),
  // The proxy's log: shipped defaults write one audit line per MCP request at
  // `info`; the headline runs at `warn` and `proxy-audit` writes them.
  logLevel: 'warn',
  auditLogLevel: 'warn,audit=info',
  // BENCH_ONLY=decisions: what the observed proxy turns on (log | shadow | both).
  decisions: env.BENCH_DECISIONS || 'both',
};
if (!['log', 'shadow', 'both'].includes(cfg.decisions)) throw new Error(`BENCH_DECISIONS must be log, shadow or both, not ${cfg.decisions}`);
if (!['all', 'http', 'sse', 'routes', 'decisions'].includes(cfg.only)) throw new Error(`BENCH_ONLY must be all, http, sse, routes or decisions, not ${cfg.only}`);

// `proxy` forwards the provider's JWT (BENCH_PROVIDER_TOKEN_BYTES) with the
// log at warn; the variants differ from it in one thing each: `proxy-opaque`
// forwards the provider's short opaque token, `proxy-audit` writes the audit
// line of every request. BENCH_VARIANTS=none keeps the three columns only.
// BENCH_BASELINE_BIN=/abs/path adds `proxy-baseline`: another build of the
// proxy, configured as `proxy`, in the same interleaved rounds: a change's
// effect measured against what the machine does meanwhile, not against a
// run minutes earlier.
const VARIANTS = (env.BENCH_VARIANTS ?? 'opaque,audit')
  .split(',')
  .filter((v) => v && v !== 'none')
  .map((v) => {
    if (!['opaque', 'audit'].includes(v)) throw new Error(`BENCH_VARIANTS: ${v} is not opaque or audit`);
    return `proxy-${v}`;
  })
  .filter((v) => v !== 'proxy-opaque' || cfg.providerTokenBytes > 0)
  .concat(env.BENCH_BASELINE_BIN ? ['proxy-baseline'] : []);
const TARGETS = ['direct', 'nginx', 'proxy', ...VARIANTS];
const PROXY_TARGETS = TARGETS.filter((t) => t.startsWith('proxy'));
/** The SSE scenario runs the proxy as shipped only; the variants are about requests. */
const SSE_TARGETS = ['direct', 'nginx', 'proxy'];
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
const USER = 'alice';
const NGINX_HEADERS = {
  'X-User-Email': USERS.alice.email,
  'X-User-Name': USERS.alice.name,
  'X-User-Sub': USERS.alice.sub,
};
const STUB_JSON =
  '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}';

// Settings a caller's environment could slip into the proxy's configuration.
for (const k of Object.keys(env)) {
  if (/^(MCP_PROXY_|CF_ACCESS_)/.test(k) || ['DOWNSTREAM_MCP_URL', 'COOKIE_ENCRYPTION_KEY', 'RUST_LOG'].includes(k)) {
    delete env[k];
  }
}

const log = (...a) => console.error('[bench]', ...a);

/** Setup problems: reported without a stack trace, exit 1. */
class BenchError extends Error {}

// ------------------------------------------------------------------ /proc

/** utime + stime of these processes (all their threads, live or reaped), in ticks. */
function cpuTicks(pids) {
  const { user, kernel } = cpuSplitTicks(pids);
  return user + kernel;
}

/** utime and stime of these processes, apart, in ticks. */
function cpuSplitTicks(pids) {
  let user = 0;
  let kernel = 0;
  for (const pid of pids) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    user += Number(fields[11]); // field 14 of proc(5)
    kernel += Number(fields[12]); // field 15
  }
  return { user, kernel };
}

/**
 * CPU time these processes ran, in nanoseconds, from each thread's
 * schedstat: exact where /proc/<pid>/stat counts 10 ms ticks, so that the
 * CPU of a single new stream (tens of µs) can be summed over a few hundred.
 */
function cpuNanos(pids) {
  let ns = 0;
  for (const pid of pids) {
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // The thread ended between the listing and the read.
      }
    }
  }
  return ns;
}

/**
 * The proxy binary (`cfg.bin`) under callgrind, for the probes that count
 * instructions (instructions.mjs, ttfeprobe.mjs). Start the proxy with
 * `wrapper` as its binary; `zero()` after the warm-up; `dump(annotateArgs)`
 * writes the counts since and returns the dump's path, `callgrind_annotate`'s
 * output and the total; `stop()` ends the proxy (valgrind runs it as its
 * child, so stopping valgrind's pid would leave it running).
 */
function underCallgrind(dir, realBin = cfg.bin, extraArgs = '') {
  const wrapper = path.join(dir, 'callgrind-proxy');
  // CALLGRIND_ARGS: more valgrind options, e.g. `--separate-callers8=<fn>`
  // to see through which calls an allocator's slow path is reached.
  const extra = `${extraArgs} ${process.env.CALLGRIND_ARGS ?? ''}`;
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec valgrind --tool=callgrind ${extra} --callgrind-out-file=${path.join(dir, 'callgrind.out.%p')} "${realBin}" "$@"\n`, { mode: 0o755 });
  let found;
  const valgrindPid = () => (found ??= Number(execFileSync('pgrep', ['-f', `callgrind.*${realBin}`]).toString().trim().split('\n')[0]));
  return {
    wrapper,
    // `pid`: the counted process, when `pgrep` cannot find it by its binary.
    zero: (pid = valgrindPid()) => execFileSync('callgrind_control', ['-z', String(pid)]),
    dump: (annotateArgs = ['--threshold=100', '--auto=no'], pid = valgrindPid()) => {
      execFileSync('callgrind_control', ['-d', String(pid)]);
      const dumps = fs.readdirSync(dir).filter((f) => f.startsWith(`callgrind.out.${pid}.`)).sort();
      const dump = path.join(dir, dumps[dumps.length - 1]);
      const annotated = execFileSync('callgrind_annotate', [...annotateArgs, dump], { maxBuffer: 1 << 28 }).toString();
      const events = dumpedEvents(dump);
      return { dump, annotated, total: events.Ir ?? NaN, events };
    },
    stop: () => execFileSync('pkill', ['-TERM', '-f', realBin]),
  };
}

/** A callgrind dump's totals by event name (`Ir`, and with `--cache-sim=yes` `I1mr`, `D1mr`, `DLmw`, ...). */
function dumpedEvents(dump) {
  const text = fs.readFileSync(dump, 'utf8');
  const names = /^events: (.+)$/m.exec(text)?.[1].trim().split(/\s+/) ?? [];
  const values = (/^summary: (.+)$/m.exec(text) ?? /^totals: (.+)$/m.exec(text))?.[1].trim().split(/\s+/).map(Number) ?? [];
  return Object.fromEntries(names.map((n, i) => [n, values[i] ?? 0]));
}

/** Resident set size of these processes, KiB. */
function rssKiB(pids) {
  let kib = 0;
  for (const pid of pids) {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    kib += m ? Number(m[1]) : 0;
  }
  return kib;
}

function threadCount(pid) {
  return fs.readdirSync(`/proc/${pid}/task`).length;
}

function childrenOf(pid) {
  const file = `/proc/${pid}/task/${pid}/children`;
  if (fs.existsSync(file)) {
    return fs.readFileSync(file, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  }
  const kids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) kids.push(Number(entry));
    } catch {
      /* gone */
    }
  }
  return kids;
}

const cpuSeconds = (ticks) => ticks / CLK_TCK;

// ------------------------------------------------------------------ processes

const orphans = new Set(); // nginx workers: killed by PID if their master dies first
process.on('exit', () => {
  for (const pid of orphans) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

function pinned(cmd, args) {
  return ['taskset', ['-c', cfg.serverCpu, cmd, ...args]];
}

async function waitForPort(port, what, proc, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new BenchError(`${what} exited before it listened\n${proc.logs()}`);
    }
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new BenchError(`${what} did not listen on 127.0.0.1:${port}\n${proc.logs()}`);
    await sleep(50);
  }
}

/**
 * An nginx instance of our own: own prefix, config, pid file and logs; `BENCH_WORKERS` workers on the server CPUs.
 * `single`: one process serving without a master (`master_process off`), for a tool that must start the process it measures (callgrind).
 */
async function startNginx(name, httpBlock, { single = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mcp-bench-${name}-`));
  fs.chmodSync(dir, 0o755); // workers run as nobody when we are root
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(
    conf,
    `# ${name}: written by tests/bench/bench.mjs
daemon off;
master_process ${single ? 'off' : 'on'};
worker_processes ${cfg.workers};
worker_rlimit_nofile 65536;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
${httpBlock}
}
`,
  );
  const [cmd, args] = pinned(cfg.nginx, ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', conf]);
  const proc = spawnTracked(cmd, args, { name });
  const port = Number(/listen 127\.0\.0\.1:(\d+)/.exec(httpBlock)[1]);
  await waitForPort(port, name, proc);
  let workers = single ? [proc.pid] : [];
  for (let i = 0; i < 100 && workers.length === 0; i++) {
    workers = childrenOf(proc.pid);
    if (!workers.length) await sleep(50);
  }
  if (!workers.length) throw new BenchError(`${name}: no worker process\n${fs.readFileSync(path.join(dir, 'error.log'), 'utf8')}`);
  for (const w of workers) orphans.add(w);
  return {
    name,
    port,
    pid: proc.pid,
    workers,
    measured: () => workers,
    async close() {
      await proc.stop(5000);
      for (const w of workers) {
        try {
          process.kill(w, 0);
          process.kill(w, 'SIGKILL');
        } catch {
          /* exited with its master */
        }
        orphans.delete(w);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function nginxStub(port) {
  return `    server {
        listen 127.0.0.1:${port} backlog=4096;
        location = /mcp {
            default_type application/json;
            return 200 '${STUB_JSON}';
        }
    }`;
}

/** nginx as the operator would put it in front of an MCP server: keep-alive upstream, no buffering. */
function nginxProxy(port, upstreamPort) {
  const headers = Object.entries(NGINX_HEADERS)
    .map(([k, v]) => `            proxy_set_header ${k} "${v}";`)
    .join('\n');
  return `    upstream downstream {
        server 127.0.0.1:${upstreamPort};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:${port} backlog=4096;
        location / {
            proxy_pass http://downstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
${headers}
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
    }`;
}

/** The proxy under test, on the server CPUs, with `BENCH_WORKERS` workers (`server.workers`). `extraToml`: e.g. `[[routes]]`; `policyKeys`: more `[policy]` keys. */
async function startOurProxy({ name, port, shared, downstreamUrl, extraToml, policyKeys, provider = shared.provider, logLevel = cfg.logLevel, bin = cfg.bin }) {
  const config = {
    // server.workers = BENCH_WORKERS: as many workers as nginx gets.
    server: { listen: `127.0.0.1:${port}`, public_url: shared.publicUrl, workers: cfg.workers },
    upstream: {
      issuer: provider.issuer,
      client_id: provider.client.clientId,
      client_secret: provider.client.clientSecret,
      scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    },
    // Idle downstream connections kept as long as nginx keeps its upstream
    // ones here (keepalive_timeout 75s), just below the stub's own 75 s.
    // With the default 4 s, every connection went idle between two of the
    // proxy's runs and was closed when the next began; the stub, whose
    // connections serve millions of requests, then spent 40–90 ms freeing
    // their memory pools on the server CPU, and the proxy's first requests
    // waited for it (max latency 60–110 ms; README).
    downstream: { url: downstreamUrl, pool_idle_timeout: '70s' },
    store: { path: path.join(shared.dir, 'proxy.db') },
    secrets: { encryption_key: shared.encryptionKey },
    // Observability as deployed: metrics on, the audit event of each MCP
    // request written when the log level lets it through (BENCH_OBSERVE=off
    // turns both off, for the overhead comparison).
    metrics: { enabled: cfg.observe },
    log: { level: logLevel, format: 'json', audit: cfg.observe },
    // One user on one client from one address, far above any default: the
    // limiters still run on every request (their cost is measured), and
    // never refuse one.
    limits: Object.fromEntries(
      ['mcp_address', 'mcp_user', 'mcp_client'].map((group) => [group, { requests: 10000000, period: '1s', burst: 10000000 }]),
    ),
  };
  if (cfg.policy) config.policy = { path: cfg.policy };
  if (policyKeys) config.policy = { ...config.policy, ...policyKeys };
  const file = path.join(shared.dir, `${name}.toml`);
  fs.writeFileSync(file, extraToml ? `${toToml(config)}\n${extraToml.trim()}\n` : toToml(config), { mode: 0o600 });
  // The log goes to a file, as in production, not into this process's memory.
  const logFile = path.join(shared.dir, `${name}.log`);
  const [cmd, args] = pinned('sh', ['-c', 'exec "$0" serve --config "$1" 2>>"$2"', bin, file, logFile]);
  const proc = spawnTracked(cmd, args, { name, env: { RUST_LOG: logLevel }, cwd: shared.dir });
  const deadline = Date.now() + 30000;
  for (;;) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new BenchError(`${name} exited before it was ready\n${proc.logs()}`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${port}/.well-known/oauth-authorization-server`, {
        signal: AbortSignal.timeout(2000),
      });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new BenchError(`${name} not ready after 30 s\n${proc.logs()}`);
    await sleep(100);
  }
  return {
    name,
    port,
    pid: proc.pid,
    measured: () => [proc.pid],
    logs: proc.logs,
    // `timeoutMs`: how long it may take to exit before it is killed (under
    // valgrind, writing a profile takes a while).
    close: (timeoutMs = 5000) => proc.stop(timeoutMs),
  };
}

async function startSseStub() {
  let resolveReady;
  const ready = new Promise((r) => {
    resolveReady = r;
  });
  const [cmd, args] = pinned(process.execPath, [path.join(BENCH_DIR, 'sse-stub.mjs'), '--port', '0']);
  const proc = spawnTracked(cmd, args, {
    name: 'sse-stub',
    onStdoutLine: (line) => {
      try {
        const msg = JSON.parse(line);
        if (msg.ready) resolveReady(msg.port);
      } catch {
        /* not ours */
      }
    },
  });
  const port = await Promise.race([
    ready,
    proc.exited.then(() => {
      throw new BenchError(`sse-stub exited\n${proc.logs()}`);
    }),
    sleep(15000).then(() => {
      throw new BenchError(`sse-stub not ready\n${proc.logs()}`);
    }),
  ]);
  const stats = async () => (await fetch(`http://127.0.0.1:${port}/__stats`)).json();
  return { name: 'sse-stub', port, pid: proc.pid, measured: () => [proc.pid], stats, close: () => proc.stop(5000) };
}

// ------------------------------------------------------------------ token

/**
 * An access token for the proxy's /mcp (as a client gets one), or for
 * `resource` (e.g. the proxy's root: a token good on every route).
 */
async function getToken(publicUrl, resource) {
  try {
    const redirectUri = `http://127.0.0.1:${await freePort()}/callback`;
    const { accessToken } = await accessTokenFor(publicUrl, {
      user: USER,
      password: USERS[USER].password,
      redirectUri,
      clientName: 'mcp-oauth-proxy benchmark',
      resource,
    });
    return accessToken;
  } catch (e) {
    throw new BenchError(e.message);
  }
}



/**
 * Alice's access token from `provider`, signed in through a proxy that
 * serves nothing else; it stays valid for the proxies started later with
 * the same store, key and public URL (`resource`: e.g. the proxy's root).
 */
async function signIn(shared, provider, resource) {
  const loginProxy = await startOurProxy({
    name: 'proxy-login',
    port: shared.proxyPort,
    shared,
    downstreamUrl: 'http://127.0.0.1:9/mcp',
    provider,
  });
  try {
    return await getToken(shared.publicUrl.replace('localhost', '127.0.0.1'), resource);
  } finally {
    await loginProxy.close();
  }
}

/**
 * What a one-off measurement (instructions.mjs, stubprobe.mjs) starts from:
 * a provider issuing `BENCH_PROVIDER_TOKEN_BYTES` tokens, alice's token in a
 * proxy store under `dir`, and the nginx stub. What it starts is pushed on
 * `cleanups`; start the proxy with `startOurProxy({ port: shared.proxyPort, shared, ... })`.
 */
async function signedInSetup(dir, cleanups) {
  const proxyPort = await freePort();
  const shared = { dir, encryptionKey: crypto.randomBytes(32).toString('hex'), publicUrl: `http://localhost:${proxyPort}`, proxyPort };
  shared.provider = await startProvider({ port: 0, redirectUris: [`${shared.publicUrl}/callback`], jwtAccessTokenBytes: cfg.providerTokenBytes });
  cleanups.push(() => shared.provider.close());
  const token = await signIn(shared, shared.provider);
  const stubPort = await freePort();
  const stub = await startNginx('nginx-stub', nginxStub(stubPort));
  cleanups.push(() => stub.close());
  return { shared, token, stubPort, stub };
}

/**
 * What a one-off event-stream probe (memprobe.mjs, ttfeprobe.mjs,
 * ttfeorder.mjs) runs in: `signedInSetup` and the SSE stub, in a temp dir
 * that is removed after. `run({ token, stub, startProxy, whenDone })`;
 * `startProxy(name, { port, bin })` starts a proxy in front of the stub (on
 * the setup's port unless told another, `cfg.bin` unless told another
 * build), stopped after `run`, as is what `whenDone(close)` is given.
 */
async function withSseProxy(prefix, run) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const cleanups = [];
  try {
    const { shared, token } = await signedInSetup(dir, cleanups);
    const stub = await startSseStub();
    cleanups.push(() => stub.close());
    const startProxy = async (name, { port = shared.proxyPort, bin } = {}) => {
      const proxy = await startOurProxy({ name, port, shared, downstreamUrl: `http://127.0.0.1:${stub.port}/mcp`, bin });
      cleanups.push(() => proxy.close());
      return proxy;
    };
    const whenDone = (close) => cleanups.push(close);
    return await run({ token, stub, startProxy, whenDone });
  } finally {
    for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ HTTP (wrk)

const BODY_200 = (() => {
  const prefix = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"';
  const suffix = '"}}}';
  return prefix + 'x'.repeat(200 - prefix.length - suffix.length) + suffix;
})();

function mcpHeaders(token, accept = 'application/json, text/event-stream') {
  return {
    accept,
    'mcp-protocol-version': '2025-06-18',
    authorization: `Bearer ${token}`,
  };
}

/** One POST like wrk's, answered 200 with the stub's JSON, or the target is not benchmarked. */
async function preflightPost(name, url, token) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { ...mcpHeaders(token), 'content-type': 'application/json' },
    body: BODY_200,
  });
  const text = await res.text();
  if (res.status !== 200 || !text.includes('"jsonrpc"')) {
    throw new BenchError(`${name}: POST ${url} answered ${res.status}: ${text.slice(0, 300)}`);
  }
}

async function runWrk(url, connections, seconds, token) {
  const args = ['-c', cfg.loadCpu, cfg.wrk, `-t${cfg.workers}`, `-c${connections}`, `-d${seconds}s`, '--timeout', '10s', '--latency'];
  args.push('-s', path.join(BENCH_DIR, 'post.lua'), url);
  const proc = spawnTracked('taskset', args, { name: 'wrk', env: { BENCH_TOKEN: token } });
  const { code, signal } = await proc.exited;
  const out = proc.logs();
  const m = /^BENCH_JSON (.*)$/m.exec(out);
  if (code !== 0 || !m) throw new BenchError(`wrk ${url} failed (exit ${code ?? signal})\n${out}`);
  const r = JSON.parse(m[1]);
  const errors = Object.entries(r.errors).filter(([, n]) => n > 0);
  if (errors.length) {
    throw new BenchError(`wrk ${url} at ${connections} connections: ${errors.map(([k, n]) => `${n} ${k} errors`).join(', ')}\n${out}`);
  }
  return r;
}

async function httpRun(target, url, connections, token, servers) {
  const measured = servers[target].measured();
  const stubPids = servers.direct.measured();
  const before = cpuSplitTicks(measured);
  const stubBefore = cpuTicks(stubPids);
  const r = await runWrk(url, connections, cfg.duration, token);
  const after = cpuSplitTicks(measured);
  const user = cpuSeconds(after.user - before.user);
  const kernel = cpuSeconds(after.kernel - before.kernel);
  const cpu = user + kernel;
  const stubCpu = cpuSeconds(cpuTicks(stubPids) - stubBefore);
  return {
    rps: r.requests / (r.duration_us / 1e6),
    p50_ms: r.latency_us.p50 / 1000,
    p99_ms: r.latency_us.p99 / 1000,
    cpu_us_per_req: (cpu * 1e6) / r.requests,
    // Where the server's CPU goes: its own code, or the kernel (sockets,
    // wake-ups) on its behalf.
    user_us_per_req: (user * 1e6) / r.requests,
    kernel_us_per_req: (kernel * 1e6) / r.requests,
    stub_cpu_us_per_req: target === 'direct' ? undefined : (stubCpu * 1e6) / r.requests,
    requests: r.requests,
    latency_us: r.latency_us,
  };
}

// ------------------------------------------------------------------ SSE clients

/** Opens n streams (at most `parallel` connecting at once); resolves when every one has its first event. */
async function holdStreams(port, pathq, token, n, parallel = 64) {
  const held = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next += 1;
      const { stream } = await firstEvent({ port, path: pathq, token });
      held.push(stream);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(parallel, n) }, worker));
  } catch (e) {
    for (const s of held) s.close();
    throw e;
  }
  return {
    count: held.length,
    close() {
      for (const s of held) s.close();
    },
  };
}

async function waitStubIdle(stub, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await stub.stats();
    if (s.open === 0) return;
    if (Date.now() > deadline) throw new BenchError(`${s.open} streams still open at the stub ${timeoutMs / 1000} s after the clients closed them`);
    await sleep(50);
  }
}

/** RSS growth of the server's processes per idle stream, on a freshly started server. */
async function memoryPerStream(server, port, token, stub) {
  const warm = await holdStreams(port, '/mcp?mode=idle', token, 16);
  warm.close();
  await waitStubIdle(stub);
  await sleep(500);
  const before = rssKiB(server.measured());
  const held = await holdStreams(port, '/mcp?mode=idle', token, cfg.sseStreams);
  await sleep(1000);
  const open = (await stub.stats()).open;
  const after = rssKiB(server.measured());
  held.close();
  await waitStubIdle(stub);
  if (open !== cfg.sseStreams) throw new BenchError(`${server.name}: the stub had ${open} open streams, expected ${cfg.sseStreams}`);
  return { rss_before_kib: before, rss_after_kib: after, kib_per_stream: (after - before) / cfg.sseStreams };
}

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
};

// ------------------------------------------------------------------ phases

async function httpPhase(shared, token) {
  const stubPort = await freePort();
  const stub = await startNginx('nginx-stub', nginxStub(stubPort));
  shared.cleanups.push(() => stub.close());
  const nginxPort = await freePort();
  const nginx = await startNginx('nginx-proxy', nginxProxy(nginxPort, stubPort));
  shared.cleanups.push(() => nginx.close());
  const servers = { direct: stub, nginx };
  const urls = {
    direct: `http://127.0.0.1:${stubPort}/mcp`,
    nginx: `http://127.0.0.1:${nginxPort}/mcp`,
  };
  const tokens = { direct: token, nginx: token, ...shared.tokens };
  for (const name of PROXY_TARGETS) {
    const proxy = await startOurProxy({
      name,
      port: name === 'proxy' ? shared.proxyPort : await freePort(),
      shared,
      downstreamUrl: `http://127.0.0.1:${stubPort}/mcp`,
      provider: name === 'proxy-opaque' ? shared.opaqueProvider : shared.provider,
      logLevel: name === 'proxy-audit' ? cfg.auditLogLevel : cfg.logLevel,
      bin: name === 'proxy-baseline' ? env.BENCH_BASELINE_BIN : cfg.bin,
    });
    shared.cleanups.push(() => proxy.close());
    servers[name] = proxy;
    urls[name] = `http://127.0.0.1:${proxy.port}/mcp`;
  }
  const proxy = servers.proxy;
  shared.info.proxy_threads = threadCount(proxy.pid);
  shared.info.provider_token_bytes = cfg.providerTokenBytes || 43;
  for (const t of TARGETS) await preflightPost(t, urls[t], tokens[t]);
  log(`HTTP: stub :${stubPort} (pid ${stub.pid}), nginx :${nginxPort} (workers ${nginx.workers}), ${PROXY_TARGETS.map((t) => `${t} :${servers[t].port} (pid ${servers[t].pid})`).join(', ')}; proxy has ${shared.info.proxy_threads} threads`);

  if (cfg.warmup > 0) {
    for (const c of cfg.connections) for (const t of TARGETS) await runWrk(urls[t], c, cfg.warmup, tokens[t]);
  }
  const runs = []; // { round, connections, target, ...result }
  for (let round = 1; round <= cfg.rounds; round++) {
    // Rotate the order each round: in a fixed order the target run right
    // after nginx got ~3% fewer requests/s than the one after it, whichever
    // build it was (two runs with PROXY_BIN and BENCH_BASELINE_BIN
    // swapped, tests/bench/README.md), larger than the change measured.
    const order = TARGETS.map((_, i) => TARGETS[(i + round - 1) % TARGETS.length]);
    for (const c of cfg.connections) {
      for (const t of order) {
        const r = await httpRun(t, urls[t], c, tokens[t], servers);
        runs.push({ round, connections: c, target: t, ...r });
        log(`round ${round}/${cfg.rounds} ${String(c).padStart(3)} conns ${t.padEnd(12)} ${fmt(r.rps, 0).padStart(7)} req/s  p50 ${fmt(r.p50_ms, 2)} ms  p99 ${fmt(r.p99_ms, 2)} ms  ${fmt(r.cpu_us_per_req, 1)} µs CPU/req`);
        await sleep(500);
      }
    }
  }

  if (cfg.profile) {
    const c = cfg.connections[0];
    const us = median(runs.filter((r) => r.connections === c && r.target === 'proxy').map((r) => r.cpu_us_per_req));
    await profileProxy(shared, proxy, urls.proxy, token, us);
  }

  for (const t of [...PROXY_TARGETS, 'nginx', 'direct']) await servers[t].close();
  return runs;
}

// ------------------------------------------------------------------ routes

// BENCH_ONLY=routes: one proxy with the default route only, one with the
// default route and ROUTE_COUNT - 1 [[routes]] (each with an SSE path too, so
// the router holds every endpoint a real configuration would), the same stub
// behind every route. The ten-route proxy is measured on its last-declared
// route and on the default one; a second one-route proxy, identical to the
// first, is the control: its ratio to the first is this machine's noise.
const ROUTE_COUNT = 10;
const ROUTE_TARGETS = ['one', 'ten_last', 'ten_default', 'one_again'];
const ROUTE_LABELS = {
  one: '1 route, /mcp',
  ten_last: `${ROUTE_COUNT} routes, last declared`,
  ten_default: `${ROUTE_COUNT} routes, default /mcp`,
  one_again: '1 route, second instance',
};
// The targets the 5% verdict is about (the control only calibrates it).
const ROUTED = ['ten_last', 'ten_default'];
const COMPARED = ROUTE_TARGETS.filter((t) => t !== 'one');
/** What summarizeRoutes and routesTable compare: targets against a base, with a control. */
const ROUTES_SCENARIO = {
  targets: ROUTE_TARGETS,
  labels: ROUTE_LABELS,
  base: 'one',
  baseShort: '1 route',
  compared: COMPARED,
  judged: ROUTED,
  judgedName: `${ROUTE_COUNT} routes`,
  short: { ten_last: 'last', ten_default: 'default', one_again: 'control' },
};

function manyRoutesToml(count, downstreamUrl) {
  let toml = '';
  for (let i = 1; i <= count; i++) {
    toml += `
[[routes]]
name = "route-${i}"
path = "/route-${i}/mcp"
sse_path = "/route-${i}/sse"
[routes.downstream]
url = ${JSON.stringify(downstreamUrl)}
`;
  }
  return toml;
}

async function routesPhase(shared, token) {
  const stubPort = await freePort();
  const stub = await startNginx('nginx-stub', nginxStub(stubPort));
  shared.cleanups.push(() => stub.close());
  const downstreamUrl = `http://127.0.0.1:${stubPort}/mcp`;
  // Both proxies run throughout (same store, key and public URL as the one
  // that issued the token); the one not being measured is idle.
  const one = await startOurProxy({ name: 'proxy-1-route', port: shared.proxyPort, shared, downstreamUrl });
  shared.cleanups.push(() => one.close());
  const oneAgain = await startOurProxy({ name: 'proxy-1-route-again', port: await freePort(), shared, downstreamUrl });
  shared.cleanups.push(() => oneAgain.close());
  const ten = await startOurProxy({
    name: `proxy-${ROUTE_COUNT}-routes`,
    port: await freePort(),
    shared,
    downstreamUrl,
    extraToml: manyRoutesToml(ROUTE_COUNT - 1, downstreamUrl),
  });
  shared.cleanups.push(() => ten.close());
  const servers = { direct: stub, one, ten_last: ten, ten_default: ten, one_again: oneAgain };
  const urls = {
    one: `http://127.0.0.1:${one.port}/mcp`,
    one_again: `http://127.0.0.1:${oneAgain.port}/mcp`,
    ten_last: `http://127.0.0.1:${ten.port}/route-${ROUTE_COUNT - 1}/mcp`,
    ten_default: `http://127.0.0.1:${ten.port}/mcp`,
  };
  for (const t of ROUTE_TARGETS) await preflightPost(t, urls[t], token);
  // The ten-route proxy really has them: each route publishes its metadata.
  for (let i = 1; i < ROUTE_COUNT; i++) {
    const res = await fetch(`http://127.0.0.1:${ten.port}/.well-known/oauth-protected-resource/route-${i}/mcp`);
    await res.arrayBuffer();
    if (res.status !== 200) throw new BenchError(`${ten.name}: no metadata for /route-${i}/mcp (${res.status})`);
  }
  log(`routes: stub :${stubPort}, ${one.name} :${one.port} (pid ${one.pid}), ${ten.name} :${ten.port} (pid ${ten.pid}), ${oneAgain.name} :${oneAgain.port} (pid ${oneAgain.pid})`);

  if (cfg.warmup > 0) {
    for (const c of cfg.connections) for (const t of ROUTE_TARGETS) await runWrk(urls[t], c, cfg.warmup, token);
  }
  const runs = [];
  for (let round = 1; round <= cfg.rounds; round++) {
    for (const c of cfg.connections) {
      // Rotate the order each round, so no target always runs first or last.
      const order = ROUTE_TARGETS.map((_, i) => ROUTE_TARGETS[(i + round - 1) % ROUTE_TARGETS.length]);
      for (const t of order) {
        const r = await httpRun(t, urls[t], c, token, servers);
        runs.push({ round, connections: c, target: t, ...r });
        log(`round ${round}/${cfg.rounds} ${String(c).padStart(3)} conns ${ROUTE_LABELS[t].padEnd(28)} ${fmt(r.rps, 0).padStart(7)} req/s  p50 ${fmt(r.p50_ms, 2)} ms  p99 ${fmt(r.p99_ms, 2)} ms  ${fmt(r.cpu_us_per_req, 1)} µs CPU/req`);
        await sleep(500);
      }
    }
  }
  for (const s of [ten, oneAgain, one, stub]) await s.close();
  return runs;
}

// ------------------------------------------------------------------ decisions

// BENCH_ONLY=decisions (issue 14): the proxy as configured, the same proxy
// with policy.decision_log (a file) and policy.shadow_path (the enforced
// policy again: every request evaluated twice, no disagreement), and a
// second plain proxy as the control. Same stub, same token, rounds
// interleaved, ratios paired per round as for routes.
const DECISION_TARGETS = ['plain', 'observed', 'plain_again'];
const DECISIONS_SCENARIO = {
  targets: DECISION_TARGETS,
  labels: { plain: 'proxy', observed: { log: 'decision log', shadow: 'shadow policy', both: 'decision log + shadow' }[cfg.decisions], plain_again: 'proxy, second instance' },
  base: 'plain',
  baseShort: 'proxy',
  compared: ['observed', 'plain_again'],
  judged: ['observed'],
  judgedName: { log: 'log', shadow: 'shadow', both: 'log + shadow' }[cfg.decisions],
  short: { observed: { log: 'log', shadow: 'shadow', both: 'log + shadow' }[cfg.decisions], plain_again: 'control' },
};

async function decisionsPhase(shared, token) {
  const stubPort = await freePort();
  const stub = await startNginx('nginx-stub', nginxStub(stubPort));
  shared.cleanups.push(() => stub.close());
  const downstreamUrl = `http://127.0.0.1:${stubPort}/mcp`;
  const plain = await startOurProxy({ name: 'proxy-plain', port: shared.proxyPort, shared, downstreamUrl });
  shared.cleanups.push(() => plain.close());
  const plainAgain = await startOurProxy({ name: 'proxy-plain-again', port: await freePort(), shared, downstreamUrl });
  shared.cleanups.push(() => plainAgain.close());
  const decisionLog = path.join(shared.dir, 'decisions.jsonl');
  const observed = await startOurProxy({
    name: 'proxy-decisions',
    port: await freePort(),
    shared,
    downstreamUrl,
    policyKeys: {
      ...(cfg.decisions !== 'shadow' && { decision_log: decisionLog }),
      ...(cfg.decisions !== 'log' && { shadow_path: cfg.policy ?? path.join(REPO_ROOT, 'policies', 'default.rhai') }),
    },
  });
  shared.cleanups.push(() => observed.close());
  const servers = { direct: stub, plain, observed, plain_again: plainAgain };
  const urls = Object.fromEntries(Object.entries({ plain, observed, plain_again: plainAgain }).map(([t, p]) => [t, `http://127.0.0.1:${p.port}/mcp`]));
  for (const t of DECISION_TARGETS) await preflightPost(t, urls[t], token);
  log(`decisions: stub :${stubPort}, ${plain.name} :${plain.port}, ${observed.name} :${observed.port} (log ${decisionLog}), ${plainAgain.name} :${plainAgain.port}`);
  if (cfg.warmup > 0) {
    for (const c of cfg.connections) for (const t of DECISION_TARGETS) await runWrk(urls[t], c, cfg.warmup, token);
  }
  const runs = [];
  for (let round = 1; round <= cfg.rounds; round++) {
    for (const c of cfg.connections) {
      const order = DECISION_TARGETS.map((_, i) => DECISION_TARGETS[(i + round - 1) % DECISION_TARGETS.length]);
      for (const t of order) {
        const r = await httpRun(t, urls[t], c, token, servers);
        runs.push({ round, connections: c, target: t, ...r });
        log(`round ${round}/${cfg.rounds} ${String(c).padStart(3)} conns ${DECISIONS_SCENARIO.labels[t].padEnd(24)} ${fmt(r.rps, 0).padStart(7)} req/s  p50 ${fmt(r.p50_ms, 2)} ms  p99 ${fmt(r.p99_ms, 2)} ms  ${fmt(r.cpu_us_per_req, 1)} µs CPU/req`);
        await sleep(500);
      }
    }
  }
  const logged = fs.existsSync(decisionLog) ? fs.readFileSync(decisionLog, 'utf8').split('\n').filter(Boolean).length : 0;
  if (cfg.decisions !== 'shadow') log(`decisions: ${logged} decisions logged (any others were dropped: the queue was full)`);
  for (const s of [observed, plainAgain, plain, stub]) await s.close();
  return runs;
}

/**
 * Medians per target and connection count, and each ten-route target ÷ the
 * one-route proxy: the median of the per-round ratios (runs of one round are
 * seconds apart, so a neighbour's load on a shared machine hits both sides
 * of a ratio alike, and drift between rounds cancels).
 */
function summarizeRoutes(runs, spec = ROUTES_SCENARIO) {
  const { targets, base, compared, judged } = spec;
  const rows = [];
  for (const c of cfg.connections) {
    const at = (t) => runs.filter((r) => r.connections === c && r.target === t);
    const pick = (key) => Object.fromEntries(targets.map((t) => [t, median(at(t).map((r) => r[key]))]));
    const pairedRatio = (t, key) =>
      median(at(t).map((r) => r[key] / (at(base).find((o) => o.round === r.round)?.[key] ?? NaN)));
    const metrics = [
      ['req/s', 'rps', 0, (r) => r >= 0.95, '≥ 0.95×'],
      ['p50 latency, ms', 'p50_ms', 2],
      ['p99 latency, ms', 'p99_ms', 2, (r) => r <= 1.05, '≤ 1.05×'],
      ['CPU µs/request', 'cpu_us_per_req', 1],
    ];
    for (const [metric, key, digits, ok, target] of metrics) {
      const v = pick(key);
      const ratios = Object.fromEntries(compared.map((t) => [t, pairedRatio(t, key)]));
      const verdict = ok ? (judged.every((t) => Number.isFinite(ratios[t]) && ok(ratios[t])) ? 'PASS' : 'MISS') : '';
      rows.push({ scenario: `POST 200 B, ${c} conns`, metric, ...v, ratios, digits, target: target ?? '', verdict });
    }
  }
  return rows;
}

function routesTable(rows, spec = ROUTES_SCENARIO) {
  const { targets, labels, compared, short, baseShort, judgedName } = spec;
  const head = ['scenario', 'metric', ...targets.map((t) => labels[t]), ...compared.map((t) => `${short[t]} ÷ ${baseShort}`), `target (${judgedName})`, 'result'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((h, i) => (i < 2 ? '---' : '---:')).join('|')}|`];
  let last = '';
  for (const r of rows) {
    const scenario = r.scenario === last ? '' : r.scenario;
    last = r.scenario;
    const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(3)}×` : '—');
    lines.push(`| ${[scenario, r.metric, ...targets.map((t) => fmt(r[t], r.digits)), ...compared.map((t) => ratio(r.ratios[t])), r.target, r.verdict].join(' | ')} |`);
  }
  return lines.join('\n');
}

/**
 * BENCH_PROFILE=1: perf record (cpu-clock, DWARF call graphs; the release
 * profile keeps debug line tables) of the proxy during one more run at the
 * first connection count, then where its CPU goes (perf-summary.mjs), scaled
 * by the median CPU µs/request of the rounds.
 */
async function profileProxy(shared, proxy, url, token, usPerRequest) {
  const base = path.join(cfg.outDir, `perf-${shared.stamp}`);
  const seconds = Math.min(cfg.duration, 10);
  const perf = spawnTracked(
    'taskset',
    ['-c', cfg.loadCpu, 'perf', 'record', '-e', 'cpu-clock', '-F', '999', '--call-graph', 'dwarf,8192', '-p', String(proxy.pid), '-o', `${base}.data`, '--', 'sleep', String(seconds + 1)],
    { name: 'perf' },
  );
  await sleep(300);
  await runWrk(url, cfg.connections[0], seconds, token);
  const { code } = await perf.exited;
  if (code !== 0 || !fs.existsSync(`${base}.data`)) {
    log(`perf record failed (exit ${code}); no profile\n${perf.logs()}`);
    return;
  }
  try {
    const script = execFileSync('perf', ['script', '-i', `${base}.data`, '-F', 'ip,sym,dso'], {
      maxBuffer: 1 << 30,
      stdio: ['ignore', 'pipe', 'ignore'],
    }).toString();
    const summary = summarizeProfile(script, usPerRequest);
    fs.writeFileSync(`${base}-summary.txt`, `${summary}\n`);
    console.error(`\n[bench] where the proxy's CPU goes at ${cfg.connections[0]} connections:\n${summary}\n`);
    const flat = execFileSync('perf', ['report', '-i', `${base}.data`, '--stdio', '--no-children', '--sort', 'dso,symbol', '--percent-limit', '0.3', '-g', 'none'], {
      maxBuffer: 256 << 20,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    fs.writeFileSync(`${base}-flat.txt`, flat.toString().replace(/ {3,}/g, '  '));
    log(`profile: ${path.relative(REPO_ROOT, base)}-{summary,flat}.txt (perf data: ${path.relative(REPO_ROOT, base)}.data)`);
  } catch (e) {
    log(`perf script/report failed: ${e.message}`);
  }
}

async function ssePhase(shared, token) {
  const stub = await startSseStub();
  shared.cleanups.push(() => stub.close());
  const eventBytes = (await stub.stats()).eventBytes;
  const rounds = [];
  for (let round = 1; round <= cfg.rounds; round++) {
    // Fresh servers each round: the memory baseline is a process that has
    // served nothing but a few warm-up streams.
    const nginxPort = await freePort();
    const nginx = await startNginx('nginx-sse', nginxProxy(nginxPort, stub.port));
    const proxy = await startOurProxy({
      name: 'proxy-sse',
      port: await freePort(),
      shared,
      downstreamUrl: `http://127.0.0.1:${stub.port}/mcp`,
    });
    const servers = { direct: stub, nginx, proxy };
    const ports = { direct: stub.port, nginx: nginxPort, proxy: proxy.port };
    try {
      if (round === 1) {
        for (const t of ['nginx', 'proxy']) {
          (await firstEvent({ port: ports[t], path: '/mcp?mode=idle', token })).stream.close();
          const seen = (await stub.stats()).lastHeaders;
          if (seen['x-user-email'] !== USERS.alice.email) {
            throw new BenchError(`${t}: the stub did not get X-User-Email: ${USERS.alice.email} (headers: ${JSON.stringify(seen)})`);
          }
        }
        await waitStubIdle(stub);
      }
      const r = { round, memory: {}, ttfe: {}, rate: {} };
      const memOrder = round % 2 ? ['nginx', 'proxy'] : ['proxy', 'nginx'];
      for (const t of memOrder) r.memory[t] = await memoryPerStream(servers[t], ports[t], token, stub);

      // Sample by sample, the three targets in turn: drift hits all alike.
      // nginx and the proxy swap places every other turn, so that each
      // follows the other as often as it follows the stub alone: a server's
      // stream, closed, leaves the stub work (closing its end, on the server
      // CPU) that lands in the next sample. In a fixed order the proxy
      // always came right after nginx and took that work in its own
      // samples: swapping the two moved the proxy's ratio from 1.19× to
      // 1.08× with the same builds (README, seventeenth session).
      // A server's CPU over the whole loop is its CPU for its own streams
      // (the stub serves all three, so it has no such number).
      const samples = { direct: [], nginx: [], proxy: [] };
      const cpuBefore = { nginx: cpuNanos(servers.nginx.measured()), proxy: cpuNanos(servers.proxy.measured()) };
      const swapped = ['direct', 'proxy', 'nginx'];
      for (let i = 0; i < cfg.ttfeSamples; i++) {
        for (const t of i % 2 ? swapped : SSE_TARGETS) {
          const { stream, micros } = await firstEvent({ port: ports[t], path: '/mcp?mode=idle', token });
          stream.close();
          samples[t].push(micros);
        }
      }
      await waitStubIdle(stub);
      for (const t of SSE_TARGETS) {
        const s = samples[t].sort((a, b) => a - b);
        r.ttfe[t] = {
          p50_ms: percentile(s, 50) / 1000,
          p99_ms: percentile(s, 99) / 1000,
          samples: s.length,
          cpu_us_per_stream: t in cpuBefore ? (cpuNanos(servers[t].measured()) - cpuBefore[t]) / 1000 / s.length : NaN,
        };
      }

      for (const t of SSE_TARGETS) {
        const measured = servers[t].measured();
        const x = await readRate({ port: ports[t], path: '/mcp?mode=flood', token, seconds: cfg.rateSeconds, sample: () => cpuTicks(measured) });
        const events = x.bytes / eventBytes;
        r.rate[t] = {
          events_per_s: events / x.seconds,
          mb_per_s: x.bytes / x.seconds / 1e6,
          cpu_us_per_event: (cpuSeconds(x.after - x.before) * 1e6) / events,
        };
        await waitStubIdle(stub);
      }
      rounds.push(r);
      log(
        `SSE round ${round}/${cfg.rounds}: first event p50 ${SSE_TARGETS.map((t) => `${t} ${fmt(r.ttfe[t].p50_ms, 3)}`).join(', ')} ms; ` +
          `events/s ${SSE_TARGETS.map((t) => `${t} ${fmt(r.rate[t].events_per_s, 0)}`).join(', ')}; ` +
          `KiB/idle stream nginx ${fmt(r.memory.nginx.kib_per_stream, 1)}, proxy ${fmt(r.memory.proxy.kib_per_stream, 1)}`,
      );
    } finally {
      await proxy.close();
      await nginx.close();
    }
  }
  return { eventBytes, rounds };
}

// ------------------------------------------------------------------ report

function fmt(x, digits = 1) {
  if (!Number.isFinite(x)) return '—';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function summarize(httpRuns, sse) {
  const rows = [];
  const row = (scenario, metric, values, digits, target) => {
    const ratio = values.proxy / values.nginx;
    let verdict = '';
    if (target) verdict = Number.isFinite(ratio) && target.ok(ratio) ? 'PASS' : 'MISS';
    rows.push({ scenario, metric, ...values, ratio, digits, target: target?.text ?? '', verdict });
  };
  const higher = (limit) => ({ text: `≥ ${limit.toFixed(1)}×`, ok: (r) => r >= limit });
  const lower = (limit) => ({ text: `≤ ${limit.toFixed(1)}×`, ok: (r) => r <= limit });

  for (const c of httpRuns.length ? cfg.connections : []) {
    const pick = (key) =>
      Object.fromEntries(TARGETS.map((t) => [t, median(httpRuns.filter((r) => r.connections === c && r.target === t).map((r) => r[key]))]));
    const scenario = `POST 200 B, ${c} conns`;
    row(scenario, 'req/s', pick('rps'), 0, higher(1.0));
    row(scenario, 'p50 latency, ms', pick('p50_ms'), 2);
    row(scenario, 'p99 latency, ms', pick('p99_ms'), 2, lower(1.2));
    row(scenario, 'CPU µs/request', pick('cpu_us_per_req'), 1);
    row(scenario, '… of it in user space', pick('user_us_per_req'), 1);
    row(scenario, '… of it in the kernel', pick('kernel_us_per_req'), 1);
  }
  if (sse) {
    const pick = (part, key, targets = SSE_TARGETS) =>
      Object.fromEntries(TARGETS.map((t) => [t, targets.includes(t) ? median(sse.rounds.map((r) => r[part][t][key])) : NaN]));
    row('SSE', 'time to first event p50, ms', pick('ttfe', 'p50_ms'), 3, lower(1.2));
    row('SSE', 'time to first event p99, ms', pick('ttfe', 'p99_ms'), 3);
    row('SSE', 'CPU µs per new stream (connect to close)', pick('ttfe', 'cpu_us_per_stream', ['nginx', 'proxy']), 1);
    row('SSE', 'events/s (one stream)', pick('rate', 'events_per_s'), 0, higher(1.0));
    row('SSE', 'CPU µs/event', pick('rate', 'cpu_us_per_event'), 2, lower(1.5));
    row(`SSE, ${cfg.sseStreams} idle streams`, 'memory per stream, KiB', pick('memory', 'kib_per_stream', ['nginx', 'proxy']), 1, lower(1.5));
  }
  return rows;
}

const VARIANT_HEADS = { 'proxy-opaque': 'proxy, opaque provider token', 'proxy-audit': 'proxy, audit lines written', 'proxy-baseline': 'baseline build' };

function markdownTable(rows) {
  const variants = VARIANTS.filter((v) => rows.some((r) => Number.isFinite(r[v])));
  const head = ['scenario', 'metric', 'direct', 'nginx', 'proxy', 'proxy/nginx', 'target', 'result', ...variants.map((v) => `${VARIANT_HEADS[v]} (÷ nginx)`)];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((h, i) => (i < 2 ? '---' : '---:')).join('|')}|`];
  let last = '';
  for (const r of rows) {
    const scenario = r.scenario === last ? '' : r.scenario;
    last = r.scenario;
    lines.push(
      `| ${[
        scenario,
        r.metric,
        fmt(r.direct, r.digits),
        fmt(r.nginx, r.digits),
        fmt(r.proxy, r.digits),
        Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}×` : '—',
        r.target,
        r.verdict,
        ...variants.map((v) => (Number.isFinite(r[v]) ? `${fmt(r[v], r.digits)} (${(r[v] / r.nginx).toFixed(2)}×)` : '—')),
      ].join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

function environment() {
  // stdout and stderr together, whatever the exit status (nginx -v and wrk -v
  // print to stderr, and wrk -v exits 1).
  const run = (cmd, args) => {
    try {
      const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10000 });
      return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
    } catch (e) {
      return e.message;
    }
  };
  const dirty = run('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no']) !== '';
  return {
    commit: run('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD']) + (dirty ? ' (with uncommitted changes)' : ''),
    proxy_bin: cfg.bin,
    ...(env.BENCH_BASELINE_BIN ? { baseline_bin: env.BENCH_BASELINE_BIN } : {}),
    cpu: os.cpus()[0]?.model,
    cpus: os.cpus().length,
    kernel: os.release(),
    nginx: run(cfg.nginx, ['-v']).split('\n')[0].replace(/^nginx version: /, ''),
    wrk: run(cfg.wrk, ['-v']).split('\n')[0].split(' [')[0],
    node: process.version,
    loadavg_at_start: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}

// ------------------------------------------------------------------ main

async function main() {
  for (const [what, file] of [['proxy binary', cfg.bin], ...(env.BENCH_BASELINE_BIN ? [['BENCH_BASELINE_BIN', env.BENCH_BASELINE_BIN]] : [])]) {
    if (!fs.existsSync(file)) throw new BenchError(`${what} not found at ${file}: cargo build --release, or set PROXY_BIN`);
  }
  const started = Date.now();
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  fs.mkdirSync(cfg.outDir, { recursive: true });
  const shared = {
    stamp,
    cleanups: [],
    dir: fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-bench-proxy-')),
    encryptionKey: crypto.randomBytes(32).toString('hex'),
    info: environment(),
  };
  log(`settings: ${JSON.stringify({ ...cfg, bin: undefined, outDir: undefined })}`);
  log(`server CPU ${cfg.serverCpu} (stub + server under test), load CPU ${cfg.loadCpu} (wrk + clients + this script)`);
  let httpRuns = [];
  let sse;
  let routeRuns = [];
  let decisionRuns = [];
  try {
    shared.proxyPort = await freePort();
    shared.publicUrl = `http://localhost:${shared.proxyPort}`;
    const redirectUris = [`${shared.publicUrl}/callback`];
    shared.provider = await startProvider({ port: 0, redirectUris, jwtAccessTokenBytes: cfg.providerTokenBytes });
    shared.cleanups.push(() => shared.provider.close());
    if (TARGETS.includes('proxy-opaque')) {
      shared.opaqueProvider = await startProvider({ port: 0, redirectUris });
      shared.cleanups.push(() => shared.opaqueProvider.close());
    }

    // A token from a proxy that serves nothing else; it stays valid for the
    // proxies started later (same store, key and public URL). For the routes
    // comparison a root token (resource = the proxy itself), good on every
    // route of both proxies.
    const login = (provider) => signIn(shared, provider, cfg.only === 'routes' ? shared.publicUrl : undefined);
    const token = await login(shared.provider);
    shared.tokens = { proxy: token, 'proxy-audit': token, 'proxy-baseline': token };
    if (shared.opaqueProvider) shared.tokens['proxy-opaque'] = await login(shared.opaqueProvider);
    log(`got an access token for ${USER}`);

    if (cfg.only === 'routes') routeRuns = await routesPhase(shared, token);
    else if (cfg.only === 'decisions') decisionRuns = await decisionsPhase(shared, token);
    else {
      if (cfg.only !== 'sse') httpRuns = await httpPhase(shared, token);
      if (cfg.only !== 'http') sse = await ssePhase(shared, token);
    }
  } finally {
    for (const c of shared.cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
    if (process.env.BENCH_KEEP === '1') log(`kept the run's configs and logs in ${shared.dir}`);
    else fs.rmSync(shared.dir, { recursive: true, force: true });
  }

  const rows = summarize(httpRuns, sse);
  const routeRows = routeRuns.length ? summarizeRoutes(routeRuns) : [];
  const decisionRows = decisionRuns.length ? summarizeRoutes(decisionRuns, DECISIONS_SCENARIO) : [];
  const table = routeRuns.length
    ? `${rows.length ? `${markdownTable(rows)}\n\n` : ''}The proxy with ${ROUTE_COUNT} routes against the proxy with 1 (same stub, same root token, same load). Ratios are medians of per-round ratios; the control is a second, identical one-route proxy, so its ratio is the noise of this machine:\n\n${routesTable(routeRows)}`
    : decisionRuns.length
      ? `The proxy with ${DECISIONS_SCENARIO.labels.observed} on against the proxy without (same stub, same token, same load). Ratios are medians of per-round ratios; the control is a second plain proxy:\n\n${routesTable(decisionRows, DECISIONS_SCENARIO)}`
      : markdownTable(rows);
  const seconds = (Date.now() - started) / 1000;
  const settings = `${cfg.rounds} rounds × ${cfg.duration} s per run, wrk -t${cfg.workers}, connections ${cfg.connections.join(' and ')}, ${cfg.workers} worker(s) per server, provider access token ${cfg.providerTokenBytes ? `an RS256 JWT of ${cfg.providerTokenBytes} bytes` : 'opaque (43 bytes)'}` +
    (sse ? `; SSE: ${cfg.ttfeSamples} first-event samples per target per round, ${cfg.rateSeconds} s event-rate runs, ${cfg.sseStreams} idle streams` : '');
  const md = [
    `# mcp-oauth-proxy request-path benchmark, ${new Date(started).toISOString()}`,
    '',
    `Medians of ${cfg.rounds} interleaved rounds. Server CPU ${cfg.serverCpu} (stub + server under test), load CPU ${cfg.loadCpu} (wrk, clients).`,
    `${settings}.`,
    '',
    table,
    '',
    `Environment: ${Object.entries(shared.info).map(([k, v]) => `${k}: ${v}`).join('; ')}.`,
    `Took ${seconds.toFixed(0)} s.`,
    '',
  ].join('\n');
  const base = path.join(cfg.outDir, `bench-${stamp}`);
  fs.writeFileSync(`${base}.md`, md);
  fs.writeFileSync(
    `${base}.json`,
    `${JSON.stringify({ started: new Date(started).toISOString(), seconds, settings: { ...cfg }, environment: shared.info, summary: rows, http_runs: httpRuns, sse, routes_summary: routeRows.length ? routeRows : undefined, route_runs: routeRuns.length ? routeRuns : undefined, decisions_summary: decisionRows.length ? decisionRows : undefined, decision_runs: decisionRuns.length ? decisionRuns : undefined }, null, 2)}\n`,
  );
  console.log(`\n${md}`);
  log(`results: ${path.relative(REPO_ROOT, base)}.{md,json}`);
  const missed = [...rows, ...routeRows, ...decisionRows].filter((r) => r.verdict === 'MISS');
  log(missed.length ? `${missed.length} target(s) missed: ${missed.map((r) => `${r.scenario} ${r.metric}`).join('; ')}` : 'every target met');
}

// The pieces, for a session that wants to poke at one target by hand (perf,
// strace): `import { startNginx, ... } from './bench.mjs'` runs nothing.
export { cfg, BODY_200, mcpHeaders, signedInSetup, withSseProxy, cpuNanos, cpuSplitTicks, underCallgrind, startNginx, nginxStub, nginxProxy, startOurProxy, startSseStub, getToken, cpuTicks, rssKiB, runWrk, summarizeRoutes, routesTable, memoryPerStream, holdStreams, waitStubIdle };

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(`[bench] could not run: ${err instanceof BenchError ? err.message : (err?.stack ?? err)}`);
      process.exit(1);
    },
  );
}
