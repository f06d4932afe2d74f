// Observability end to end: the proxy's admin listener (/metrics, /healthz,
// /readyz), the Grafana dashboard in dashboards/, label cardinality, and
// what reaches the proxy's log.
//
// It starts the test OpenID provider, the example whoami MCP server (twice:
// one behind the default route /mcp, one behind a second `[[routes]]` route
// "wiki" at /wiki/mcp), a downstream that can hang or vanish (for 504/502),
// the proxy (JSON logs, stderr captured to a file, admin listener on), and its own Prometheus
// (Debian's package, installed with apt-get when missing; never the system
// service) scraping the admin port every second. Then it drives traffic that
// lights up every panel and checks:
//   (a) every PromQL target in dashboards/mcp-oauth-proxy.json returns data
//       through Prometheus' HTTP API (Grafana's macros and variables filled in),
//       with $route = All and with each route alone (then only that route's series)
//   (b) `promtool check metrics` accepts a raw /metrics scrape
//   (c) /healthz and /readyz answer 200 on the admin listener; /metrics is
//       not served on the public listener
//   (d) 1,000 requests with random paths, bearer tokens, client_ids and tool
//       names add at most a few label sets, and no label value carries any
//       of the random values
//   (e) every log line is JSON, MCP requests have audit lines, and no token,
//       code, secret, cookie value or key seen during the run is in the log
//
// Run (from tests/e2e, Node 22 first on PATH as run.sh sets it):
//   node observability.mjs                 everything (PROXY_BIN picks the binary)
//   node observability.mjs --dashboard-only  lint the dashboard and its README, parse every query with promtool
//   E2E_VERBOSE=1 node observability.mjs   also echo the children's logs
//   E2E_KEEP=1 node observability.mjs      keep the temp dir (config, logs, scrapes)
// Exits non-zero on any failure, listing what failed.

import crypto from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { startProvider } from './provider.mjs';
import { Browser, buildAuthorizeUrl, describeHops, freePort, loginThroughBrowserless, makePkce, parseForms, postForm, proxyBin, randomToken, removeOnExit, REPO_ROOT, toToml } from './lib/index.mjs';
import { rawHeaderValues, sha256, startWhoami } from './lib/whoami.mjs';
import { ensurePrometheus, startPrometheus } from './observability/prometheus.mjs';
import { allPanels, concreteExpr, dashboardTargets, loadDashboard, metricNames, ROUTED_METRICS } from './observability/dashboard.mjs';
import { countLabelSets, labelSets, labelValues, newLabelSets, seriesCount } from './observability/exposition.mjs';
import { startFaultServer } from './observability/fault-server.mjs';
import { duplicateKeys } from './observability/strict-json.mjs';

const { values: opts } = parseArgs({ options: { 'dashboard-only': { type: 'boolean' }, verbose: { type: 'boolean' } } });
const VERBOSE = opts.verbose || process.env.E2E_VERBOSE === '1';
const KEEP = process.env.E2E_KEEP === '1';

const DASHBOARD_FILE = path.join(REPO_ROOT, 'dashboards', 'mcp-oauth-proxy.json');
const DASHBOARD_README = path.join(REPO_ROOT, 'dashboards', 'README.md');
const JOB = 'mcp-oauth-proxy';
const PREFIX = 'mcp_oauth_proxy_';
/** The configured routes: `default` ([downstream], /mcp) and a `[[routes]]` one. */
const ROUTES = ['default', 'wiki'];
const WIKI_PATH = '/wiki/mcp';
/** How many new label sets (histogram `le` aside) 1,000 random requests may add. */
const CARDINALITY_BOUND = 10;
const RANDOM_REQUESTS = 1000;
/** Metric families this run cannot make appear (no event of the kind can be provoked from outside). */
const MAY_BE_ABSENT = {
  mcp_oauth_proxy_store_errors_total: 'no store failure can be provoked from outside the process',
};

const T0 = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const since = () => `${((Date.now() - T0) / 1000).toFixed(1)}s`;
const failures = [];
const warnings = [];
function heading(title) {
  console.log(`\n=== ${title} (${since()})`);
}
function check(label, ok, detail = '') {
  if (ok) console.log(`  ok    ${label}${detail && VERBOSE ? ` — ${detail}` : ''}`);
  else {
    console.log(`  FAIL  ${label}${detail ? ` — ${detail}` : ''}`);
    failures.push(`${label}${detail ? ` — ${detail}` : ''}`);
  }
  return ok;
}
function warn(msg) {
  console.log(`  warn  ${msg}`);
  warnings.push(msg);
}
function info(msg) {
  console.log(`        ${msg}`);
}
const short = (s, n = 160) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

// ---------------------------------------------------------------------------
// Dashboard lint (no proxy needed)

function lintDashboard(promtool, dir) {
  heading('dashboard: structure, README, PromQL syntax');
  let dashboard;
  try {
    dashboard = loadDashboard(DASHBOARD_FILE);
  } catch (err) {
    check(`${path.relative(REPO_ROOT, DASHBOARD_FILE)} is JSON`, false, err.message);
    return null;
  }
  check('dashboard is JSON', true);
  check('schemaVersion ≥ 36', dashboard.schemaVersion >= 36, `schemaVersion ${dashboard.schemaVersion}`);
  check('uid and title set', !!dashboard.uid && !!dashboard.title);
  const vars = dashboard.templating?.list ?? [];
  const ds = vars.find((v) => v.name === 'datasource');
  check('a datasource variable of type prometheus', ds?.type === 'datasource' && ds?.query === 'prometheus');
  const rv = vars.find((v) => v.name === 'route');
  const rvQuery = typeof rv?.query === 'string' ? rv.query : (rv?.query?.query ?? '');
  check(
    'a route variable: label_values(mcp_oauth_proxy_mcp_requests_total…, route), multi, with All',
    rv?.type === 'query' && /^label_values\(mcp_oauth_proxy_mcp_requests_total(\{[^}]*\})?, route\)$/.test(rvQuery) && rv.multi === true && rv.includeAll === true,
    JSON.stringify(rv),
  );
  const panels = allPanels(dashboard);
  const ids = panels.map((p) => p.id);
  check('panel ids are unique', new Set(ids).size === ids.length);
  const varNames = new Set(vars.map((v) => v.name));
  const boxes = [];
  for (const p of panels) {
    const g = p.gridPos;
    const where = `panel "${p.title}"`;
    if (!g || g.w < 1 || g.x < 0 || g.x + g.w > 24 || g.h < 1) check(`${where} gridPos within 24 columns`, false, JSON.stringify(g));
    if (g) {
      for (const b of boxes) {
        if (g.x < b.g.x + b.g.w && b.g.x < g.x + g.w && g.y < b.g.y + b.g.h && b.g.y < g.y + g.h) check(`${where} does not overlap "${b.title}"`, false, `${JSON.stringify(g)} vs ${JSON.stringify(b.g)}`);
      }
      boxes.push({ g, title: p.title });
    }
    if (p.type === 'row') continue;
    if (p.datasource?.uid !== '${datasource}') check(`${where} uses \${datasource}`, false, JSON.stringify(p.datasource));
    const refIds = (p.targets ?? []).map((t) => t.refId);
    if (new Set(refIds).size !== refIds.length) check(`${where} refIds unique`, false, refIds.join(','));
    if (!(p.targets ?? []).length) check(`${where} has targets`, false);
    for (const t of p.targets ?? []) {
      if (t.datasource?.uid !== '${datasource}') check(`${where} target ${t.refId} uses \${datasource}`, false);
      for (const m of t.expr.matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) {
        if (!m[1].startsWith('__') && !varNames.has(m[1])) check(`${where} ${t.refId}: variable $${m[1]} is defined`, false);
      }
      if (/\[\d+[smhd]\]/.test(t.expr)) check(`${where} ${t.refId}: range windows use $__rate_interval or $__range`, false, t.expr);
      // Every selector is scoped to the chosen job and instance.
      for (const m of t.expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?/g)) {
        if (!/^(mcp_oauth_proxy_|process_|up$)/.test(m[1])) continue;
        if (!m[2]?.includes('job=~"$job"') || !m[2]?.includes('instance=~"$instance"')) check(`${where} ${t.refId}: ${m[1]} selects job=~"$job" and instance=~"$instance"`, false, t.expr);
        // The MCP metrics follow the route variable.
        if (ROUTED_METRICS.test(m[1]) && !m[2]?.includes('route=~"$route"')) check(`${where} ${t.refId}: ${m[1]} selects route=~"$route"`, false, t.expr);
      }
    }
  }
  check('panels are laid out without overlaps and inside the grid', !failures.some((f) => f.includes('overlap') || f.includes('gridPos')));
  const targets = dashboardTargets(dashboard);
  info(`${panels.filter((p) => p.type !== 'row').length} panels, ${targets.length} queries`);

  // The README's table must show the dashboard as it is.
  const readme = fs.existsSync(DASHBOARD_README) ? fs.readFileSync(DASHBOARD_README, 'utf8') : '';
  check('dashboards/README.md exists', readme.length > 0);
  const missing = [];
  for (const t of targets) {
    const cell = `\`${t.expr.replaceAll('|', '\\|')}\``;
    if (!readme.includes(cell)) missing.push(`${t.panel} ${t.refId}`);
  }
  for (const p of panels) if (p.type !== 'row' && !readme.includes(`| ${p.title} |`)) missing.push(`panel "${p.title}"`);
  check('README table lists every panel with its exact PromQL', missing.length === 0, missing.join('; '));

  // Every query parses (promtool check rules on them as recording rules).
  if (promtool) {
    const rules = ['groups:', '  - name: dashboard', '    rules:'];
    targets.forEach((t, i) => {
      rules.push(`      - record: dashboard:query_${i}`);
      rules.push(`        expr: ${JSON.stringify(concreteExpr(t.expr, { rateInterval: '1m', vars: { job: [JOB], instance: ['127.0.0.1:1'], route: ROUTES } }))}`);
    });
    const file = path.join(dir, 'dashboard-rules.yml');
    fs.writeFileSync(file, `${rules.join('\n')}\n`);
    const r = spawnSync(promtool, ['check', 'rules', file], { encoding: 'utf8' });
    check('every query parses (promtool check rules)', r.status === 0, (r.stdout + r.stderr).trim().split('\n').slice(0, 8).join('\n          '));
  }
  return dashboard;
}

// ---------------------------------------------------------------------------
// The proxy, with stderr in a file

async function startProxyLogged({ bin, dir, config, extraToml = '', publicUrl, adminUrl }) {
  const configPath = path.join(dir, 'proxy.toml');
  // toToml writes tables, not arrays of tables: `[[routes]]` comes as text.
  fs.writeFileSync(configPath, `${toToml(config)}\n${extraToml.trim()}\n`, { mode: 0o600 });
  const stderrFile = path.join(dir, 'proxy.stderr.log');
  const stdoutFile = path.join(dir, 'proxy.stdout.log');
  const checked = spawnSync(bin, ['check', '--config', configPath], { encoding: 'utf8' });
  if (checked.status !== 0) throw new Error(`${bin} check --config rejects the test's configuration:\n${checked.stdout}${checked.stderr}`);
  const errFd = fs.openSync(stderrFile, 'w');
  const outFd = fs.openSync(stdoutFile, 'w');
  const child = spawn(bin, ['serve', '--config', configPath], { cwd: dir, stdio: ['ignore', outFd, errFd], env: { ...process.env, RUST_BACKTRACE: '1', NO_COLOR: '1' } });
  fs.closeSync(errFd);
  fs.closeSync(outFd);
  let exited = null;
  const exitedP = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exited = { code, signal }))));
  const kill = () => {
    if (exited === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  process.on('exit', kill);
  const stderr = () => fs.readFileSync(stderrFile, 'utf8');
  const stdout = () => fs.readFileSync(stdoutFile, 'utf8');
  let tail = null;
  if (VERBOSE) {
    let offset = 0;
    tail = setInterval(() => {
      const text = stderr();
      if (text.length > offset) process.stderr.write(text.slice(offset).replace(/^(?=.)/gm, '[proxy] '));
      offset = text.length;
    }, 200);
  }
  const deadline = Date.now() + 30000;
  let last = '';
  for (;;) {
    if (exited) throw new Error(`proxy exited before it was ready (code ${exited.code}, signal ${exited.signal}):\n${stderr()}`);
    try {
      const a = await fetch(`${publicUrl}/.well-known/oauth-authorization-server`, { signal: AbortSignal.timeout(1000) });
      await a.arrayBuffer();
      const b = await fetch(`${adminUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
      await b.arrayBuffer();
      if (a.status === 200 && b.status === 200) break;
      last = `metadata ${a.status}, admin /healthz ${b.status}`;
    } catch (err) {
      last = err?.cause?.code ?? err.message;
    }
    if (Date.now() > deadline) {
      kill();
      throw new Error(`proxy not ready after 30 s (${last}):\n${stderr()}`);
    }
    await sleep(100);
  }
  async function stop() {
    process.off('exit', kill);
    if (tail) clearInterval(tail);
    if (exited) return exited;
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      return exited;
    }
    const timer = setTimeout(kill, 10000);
    const r = await exitedP;
    clearTimeout(timer);
    return r;
  }
  return { pid: child.pid, configPath, stderrFile, stdoutFile, stderr, stdout, stop, exited: () => exited };
}

// ---------------------------------------------------------------------------
// Secrets: everything that must never reach a log

const secrets = new Map(); // value -> what it is
function secret(value, what) {
  if (typeof value !== 'string' || value.length < 8) return;
  if (!secrets.has(value)) secrets.set(value, what);
}
const notSecret = new Set(); // client ids and the like, which logs may name
function collectHops(hops) {
  for (const hop of hops) {
    for (const raw of hop.setCookies ?? []) {
      const first = raw.split(';')[0];
      const eq = first.indexOf('=');
      if (eq <= 0) continue;
      const value = first.slice(eq + 1).trim();
      const what = `cookie ${first.slice(0, eq)} (${new URL(hop.url).host})`;
      secret(value, what);
      try {
        secret(decodeURIComponent(value), what);
      } catch {
        /* not percent-encoded */
      }
    }
    for (const u of [hop.url, hop.location]) {
      if (!u) continue;
      const url = new URL(u);
      for (const name of ['code', 'state', 'nonce', 'code_verifier']) {
        const v = url.searchParams.get(name);
        if (v && !notSecret.has(v)) secret(v, `${name} in ${url.origin}${url.pathname}`);
      }
    }
    if (hop.body && /html/i.test(hop.contentType ?? '')) {
      for (const form of parseForms(hop.body)) {
        for (const input of form.inputs) {
          if (input.type === 'hidden' && input.value && !notSecret.has(input.value)) secret(input.value, `hidden form field "${input.name}" at ${new URL(hop.url).pathname}`);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Small HTTP helpers

async function http(url, { method = 'GET', headers = {}, body, json, form } = {}) {
  const h = { ...headers };
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    h['content-type'] = 'application/json';
  } else if (form !== undefined) {
    payload = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
  }
  const res = await fetch(url, { method, headers: h, body: payload, redirect: 'manual', signal: AbortSignal.timeout(15000) });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, text, json: parsed };
}

async function scrape(adminUrl) {
  const res = await fetch(`${adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', text: await res.text() };
}

/** The summed value of a metric's samples with these labels in a scrape (0 when absent). */
function sampleSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([^{\s]+)(\{[^}]*\})?\s+(\S+)/);
    if (!m || m[1] !== name) continue;
    const ls = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => ls.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

async function waitFor(what, fn, timeoutMs = 5000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function pool(items, concurrency, fn) {
  let i = 0;
  const workers = Array.from({ length: concurrency }, async () => {
    while (i < items.length) {
      const item = items[i++];
      await fn(item);
    }
  });
  await Promise.all(workers);
}

// ---------------------------------------------------------------------------
// Main

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-proxy-observability-'));
  if (!KEEP) removeOnExit(dir);
  else console.log(`keeping ${dir}`);

  heading('prometheus');
  const prom = ensurePrometheus({ log: (m) => console.log(`  ${m}`) });
  info(`${prom.prometheus} / ${prom.promtool}${prom.installed ? ' (just installed)' : ''}`);

  const dashboard = lintDashboard(prom.promtool, dir);
  if (opts['dashboard-only']) return;
  if (!dashboard) throw new Error('the dashboard does not load; nothing to check against');

  const stops = [];
  try {
    await run({ dir, prom, dashboard, stops });
  } finally {
    for (const stop of stops.reverse()) await stop().catch((err) => console.error(`stop: ${err.message}`));
  }
}

async function run({ dir, prom, dashboard, stops }) {
  heading('start: provider, whoami, faulty downstream, proxy, prometheus');
  const proxyPort = await freePort();
  const adminPort = await freePort();
  const publicUrl = `http://localhost:${proxyPort}`;
  const adminUrl = `http://127.0.0.1:${adminPort}`;

  // Prometheus first: its service discovery hands targets to the scraper in
  // batches every 5 s, so the first scrape comes a few seconds after start.
  const prometheus = await startPrometheus({ bin: prom.prometheus, dir, port: await freePort(), job: JOB, targets: [`127.0.0.1:${adminPort}`], intervalS: 1 });
  stops.push(() => prometheus.close());
  info(`prometheus ${prometheus.url}, pid ${prometheus.pid}`);

  const provider = await startProvider({ port: 0, redirectUris: [`${publicUrl}/callback`] });
  stops.push(() => provider.close());
  // The provider's own tokens (what the proxy holds upstream) must not be logged either.
  provider.provider.on('grant.success', (ctx) => {
    const b = ctx.body ?? {};
    secret(b.access_token, 'upstream access token');
    secret(b.refresh_token, 'upstream refresh token');
    secret(b.id_token, 'upstream id_token');
  });
  secret(provider.client.clientSecret, 'upstream client secret');

  const whoami = await startWhoami({ logFile: path.join(dir, 'whoami-requests.jsonl') });
  stops.push(() => whoami.close());
  // The wiki route's own MCP server.
  const whoamiWiki = await startWhoami({ logFile: path.join(dir, 'whoami-wiki-requests.jsonl') });
  stops.push(() => whoamiWiki.close());
  const faulty = await startFaultServer({ target: whoami.url });
  let faultyOpen = true;
  stops.push(async () => faultyOpen && faulty.close());

  // bob may not call `count`; everything else as the default policy.
  const policyFile = path.join(dir, 'policy.rhai');
  const policy = (extra = '') => `// observability e2e policy${extra}
fn authorize(user, request) {
    if request.mcp.tool == "count" && user.sub == "bob" {
        return deny(403, "count is not for bob");
    }
    allow(#{
        "X-User-Email": user.email,
        "X-User-Name": user.name,
        "X-User-Sub": user.sub,
        "X-User-Groups": user.groups,
        "Authorization": upstream_bearer(),
    })
}
`;
  fs.writeFileSync(policyFile, policy());

  const encryptionKey = crypto.randomBytes(32).toString('hex');
  secret(encryptionKey, 'secrets.encryption_key');
  secret(encryptionKey.toUpperCase(), 'secrets.encryption_key (upper case)');
  const config = {
    server: { listen: `127.0.0.1:${proxyPort}`, public_url: publicUrl, admin_listen: `127.0.0.1:${adminPort}` },
    upstream: {
      issuer: provider.issuer,
      client_id: provider.client.clientId,
      client_secret: provider.client.clientSecret,
      scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    },
    downstream: { url: whoami.mcpUrl, sse_url: `${faulty.url}/sse`, response_timeout: '2s' },
    store: { path: path.join(dir, 'proxy.db') },
    policy: { path: policyFile, watch_interval: '200ms' },
    secrets: { encryption_key: encryptionKey },
    metrics: { tools: ['whoami'] },
    log: { format: 'json', level: 'info' },
  };
  // The second route: its own downstream, the same policy file (watched and reloaded per route).
  const extraToml = `
[[routes]]
name = "wiki"
path = "${WIKI_PATH}"
[routes.downstream]
url = "${whoamiWiki.mcpUrl}"
response_timeout = "2s"
[routes.policy]
path = ${JSON.stringify(policyFile)}
watch_interval = "200ms"
`;
  const proxy = await startProxyLogged({ bin: proxyBin(), dir, config, extraToml, publicUrl, adminUrl });
  let proxyStopped = false;
  stops.push(async () => !proxyStopped && proxy.stop());
  info(`proxy ${publicUrl} (admin ${adminUrl}), pid ${proxy.pid}; provider ${provider.issuer}; whoami ${whoami.url}; wiki's whoami ${whoamiWiki.url}; faulty downstream ${faulty.url}`);

  const firstScrape = await waitFor('the first successful scrape of the admin listener', async () => {
    const t = await prometheus.lastScrape();
    return t?.health === 'up' ? t : null;
  }, 20000, 200).catch((err) => err);
  check('Prometheus scrapes the admin listener', !(firstScrape instanceof Error), firstScrape?.message ?? '');

  // ------------------------------------------------------------------ (c)
  heading('(c) admin listener');
  {
    const h = await http(`${adminUrl}/healthz`);
    check('/healthz answers 200', h.status === 200, `${h.status} ${short(h.text)}`);
    const r = await waitFor('/readyz 200', async () => {
      const x = await http(`${adminUrl}/readyz`);
      return x.status === 200 ? x : null;
    }, 10000).catch(async () => http(`${adminUrl}/readyz`));
    check('/readyz answers 200 with JSON', r.status === 200 && r.json !== undefined, `${r.status} ${short(r.text)}`);
    info(`/readyz: ${short(r.text, 300)}`);
    const m = await scrape(adminUrl);
    check('admin /metrics answers 200 in the text format', m.status === 200 && /text\/plain|openmetrics/.test(m.contentType), `${m.status} ${m.contentType}`);
    const pub = await http(`${publicUrl}/metrics`);
    check('/metrics is not served on the public listener (404)', pub.status === 404, `${pub.status}`);
    for (const p of ['/healthz', '/readyz']) {
      const x = await http(`${publicUrl}${p}`);
      if (x.status === 200 && /mcp_oauth_proxy_|"store"/.test(x.text)) warn(`public ${p} answers 200 with admin content`);
    }
  }

  // ------------------------------------------------------------------ traffic
  const tTraffic = Date.now();
  const meta = (await http(`${publicUrl}/.well-known/oauth-authorization-server`)).json;
  const prm = (await http(`${publicUrl}/.well-known/oauth-protected-resource/mcp`)).json;
  const prmSse = (await http(`${publicUrl}/.well-known/oauth-protected-resource/sse`)).json;
  const prmWiki = (await http(`${publicUrl}/.well-known/oauth-protected-resource${WIKI_PATH}`)).json;
  check(`the wiki route has its protected-resource metadata (${WIKI_PATH})`, prmWiki?.resource === `${publicUrl}${WIKI_PATH}`, JSON.stringify(prmWiki));
  const redirectUri = `http://127.0.0.1:${await freePort()}/oauth/callback`;
  const issued = { access: [], refresh: [] };
  const tokenBrowser = new Browser();

  async function register(body) {
    const r = await http(meta.registration_endpoint, { method: 'POST', json: body, headers: { accept: 'application/json' } });
    if (r.json?.client_id) notSecret.add(r.json.client_id);
    secret(r.json?.client_secret, 'DCR client_secret');
    secret(r.json?.registration_access_token, 'DCR registration_access_token');
    return r;
  }

  async function tokenRequest(form, basic) {
    const hop = await postForm(meta.token_endpoint, form, { basic, browser: tokenBrowser });
    if (hop.json?.access_token) {
      secret(hop.json.access_token, 'proxy access token');
      issued.access.push(hop.json.access_token);
    }
    if (hop.json?.refresh_token) {
      secret(hop.json.refresh_token, 'proxy refresh token');
      issued.refresh.push(hop.json.refresh_token);
    }
    return hop;
  }

  /** authorize → (consent) → provider login → code; optionally stop at the proxy's /callback. */
  async function login({ browser, user, client, decision = 'approve', stopAtCallback = false, resource = prm.resource }) {
    const pkce = makePkce();
    const state = randomToken(16);
    secret(pkce.verifier, 'PKCE code_verifier');
    secret(state, 'client state');
    const url = buildAuthorizeUrl(meta.authorization_endpoint, { clientId: client.client_id, redirectUri, state, codeChallenge: pkce.challenge, resource, scope: 'openid email profile' });
    const r = await loginThroughBrowserless({
      authorizeUrl: url,
      user: user.name,
      password: user.password,
      browser,
      decision,
      redirectUri: stopAtCallback ? `${publicUrl}/callback` : undefined,
    });
    collectHops(r.hops);
    return { ...r, pkce, state };
  }

  async function exchange(r, client, basic, resource = prm.resource) {
    const form = { grant_type: 'authorization_code', code: r.code, redirect_uri: redirectUri, client_id: client.client_id, code_verifier: r.pkce.verifier, resource };
    return tokenRequest(form, basic);
  }

  const alice = { name: 'alice', password: 'alice-password' };
  const bob = { name: 'bob', password: 'bob-password' };
  const browserA = new Browser();
  const browserB = new Browser();
  const browsers = [browserA, browserB, tokenBrowser];
  let publicClient;
  let confidential;
  const sseEventsSeen = { progress: 0, logs: 0, legacy: 0 };
  let aliceToken;
  let aliceSseToken; // tokens are bound to one resource: /mcp or /sse
  let bobToken;

  async function mcpConnect(token, { legacy = false, onLog, path: mcpPath = '/mcp' } = {}) {
    const url = new URL(legacy ? `${publicUrl}/sse` : `${publicUrl}${mcpPath}`);
    const requestInit = { headers: { authorization: `Bearer ${token}` } };
    const transport = legacy ? new SSEClientTransport(url, { requestInit }) : new StreamableHTTPClientTransport(url, { requestInit });
    const client = new Client({ name: 'observability-e2e', version: '1.0.0' }, { capabilities: {} });
    if (onLog) client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => onLog(n.params));
    await client.connect(transport);
    return { client, transport };
  }

  async function round(n) {
    heading(`traffic round ${n}`);
    // Discovery documents.
    for (const p of ['/.well-known/oauth-authorization-server', '/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource/sse', `/.well-known/oauth-protected-resource${WIKI_PATH}`]) {
      const r = await http(`${publicUrl}${p}`);
      if (r.status !== 200) check(`GET ${p}`, false, `${r.status}`);
    }
    // Unknown paths: the `unmatched` route.
    await http(`${publicUrl}/no-such-page-${n}`);
    await http(`${publicUrl}/no-such-page-${n}`, { method: 'POST', body: 'x' });

    // Dynamic client registration: a public client, a confidential one, a refused one.
    if (n === 1) {
      const r1 = await register({ client_name: 'Observability public client', redirect_uris: [redirectUri], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' });
      check('DCR: public client registered (201)', r1.status === 201, `${r1.status} ${short(r1.text)}`);
      publicClient = r1.json;
      const r2 = await register({ client_name: 'Observability confidential client', redirect_uris: [redirectUri], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'client_secret_basic' });
      check('DCR: confidential client registered with a secret', r2.status === 201 && !!r2.json?.client_secret, `${r2.status} ${short(r2.text)}`);
      confidential = r2.json;
    }
    const bad = await register({ client_name: 'bad', redirect_uris: ['javascript:alert(1)'] });
    if (bad.status < 400) check('DCR: javascript: redirect URI refused', false, `${bad.status}`);

    // alice: authorize → consent (round 1) or remembered (round 2) → provider → code → tokens → refresh.
    const a = await login({ browser: browserA, user: alice, client: publicClient });
    check(`alice login round ${n} returns a code`, !!a.code, a.error ? `${a.error}: ${a.errorDescription}` : describeHops(a.hops));
    info(`alice round ${n}: consent page ${a.consentHop ? 'shown' : 'skipped (remembered)'}, provider login ${a.loginHop ? 'shown' : 'skipped (session)'}`);
    const t1 = await exchange(a, publicClient);
    check(`alice code exchanged (round ${n})`, t1.status === 200 && !!t1.json?.access_token, `${t1.status} ${short(t1.body ?? '')}`);
    const t2 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: t1.json?.refresh_token ?? '', client_id: publicClient.client_id, resource: prm.resource });
    check(`alice refresh (round ${n})`, t2.status === 200 && !!t2.json?.access_token, `${t2.status} ${short(t2.body ?? '')}`);
    aliceToken = t2.json?.access_token;
    const s = await login({ browser: browserA, user: alice, client: publicClient, resource: prmSse.resource });
    const ts = await exchange(s, publicClient, undefined, prmSse.resource);
    check(`alice token for the /sse resource (round ${n})`, ts.status === 200, `${ts.status} ${short(ts.body ?? '')}`);
    aliceSseToken = ts.json?.access_token;
    // Token endpoint errors: unknown client, unsupported grant type.
    await tokenRequest({ grant_type: 'authorization_code', code: 'bogus-code-000000', redirect_uri: redirectUri, client_id: `unknown-client-${n}`, code_verifier: randomToken() });
    await tokenRequest({ grant_type: 'password', username: 'alice', password: 'x', client_id: publicClient.client_id });

    // bob, through the confidential client (client_secret_basic).
    const b = await login({ browser: browserB, user: bob, client: confidential });
    check(`bob login round ${n} returns a code`, !!b.code, b.error ?? '');
    const tb = await exchange(b, confidential, [confidential.client_id, confidential.client_secret]);
    check(`bob code exchanged with client_secret_basic (round ${n})`, tb.status === 200, `${tb.status} ${short(tb.body ?? '')}`);
    bobToken = tb.json?.access_token;

    // Consent denied, and a forged consent form.
    // Before approval a denial is a page, never a redirect (invariant 12).
    const denied = await login({ browser: new Browser(), user: alice, client: publicClient, decision: 'deny' }).then(
      (r) => ({ redirected: r.final }),
      (e) => { collectHops(e.hops ?? []); return { page: e.hop?.status }; },
    );
    if (denied.page !== 403) check('consent deny → a 403 page', false, JSON.stringify(denied));
    const forged = await http(`${publicUrl}/consent`, { method: 'POST', form: { request: 'forged', csrf: 'forged', decision: 'approve' }, headers: { origin: publicUrl } });
    if (forged.status < 400) check('forged consent refused', false, `${forged.status}`);

    // /authorize refusals: unknown client (error page), missing PKCE (error redirect).
    await http(buildAuthorizeUrl(meta.authorization_endpoint, { clientId: `unknown-${n}`, redirectUri, state: 's', codeChallenge: makePkce().challenge }));
    const noPkce = await browserA.get(buildAuthorizeUrl(meta.authorization_endpoint, { clientId: publicClient.client_id, redirectUri, state: 'no-pkce-state' }));
    if (!noPkce.location?.includes('error=')) check('/authorize without PKCE redirects with an error', false, `${noPkce.status} ${noPkce.location}`);

    // /callback failures: unknown state; the provider's error; a code the provider refuses.
    await browserA.get(`${publicUrl}/callback?code=bogus&state=bogus-state-${n}`);
    const pe = await login({ browser: browserA, user: alice, client: publicClient, stopAtCallback: true });
    const peUrl = new URL(pe.final);
    const providerError = await browserA.get(`${publicUrl}/callback?${new URLSearchParams({ error: 'access_denied', error_description: 'user cancelled', state: peUrl.searchParams.get('state') ?? '' })}`);
    collectHops([providerError]);
    const te = await login({ browser: browserA, user: alice, client: publicClient, stopAtCallback: true });
    const teUrl = new URL(te.final);
    teUrl.searchParams.set('code', 'not-a-code-the-provider-issued');
    const badCode = await browserA.get(teUrl.href);
    check(`callback with a code the provider refuses fails (round ${n})`, badCode.status >= 400, `${badCode.status}`);

    // MCP, Streamable HTTP: initialize, lists, tools (whoami, count with progress, announce on the GET stream), a resource, a prompt.
    const logs = [];
    const mcp = await mcpConnect(aliceToken, { onLog: (p) => logs.push(p) });
    await waitFor('the GET /mcp stream to open', async () => sampleSum((await scrape(adminUrl)).text, `${PREFIX}sse_streams_open`, { route: 'default', endpoint: '/mcp' }) >= 1, 5000).then(
      () => check(`GET /mcp stream open (round ${n})`, true),
      (err) => check(`GET /mcp stream open (round ${n})`, false, err.message),
    );
    await mcp.client.listTools();
    const who = await mcp.client.callTool({ name: 'whoami', arguments: {} });
    check(`tools/call whoami as alice (round ${n})`, who.structuredContent?.email === 'alice@example.com', short(JSON.stringify(who.structuredContent ?? who)));
    let progress = 0;
    await mcp.client.callTool({ name: 'count', arguments: { n: 5, delay_ms: 20 } }, undefined, { onprogress: () => progress++ });
    sseEventsSeen.progress += progress;
    for (let i = 0; i < 3; i++) await mcp.client.callTool({ name: 'announce', arguments: { message: `round ${n} #${i}` } });
    await waitFor('announcements on the GET /mcp stream', () => logs.length >= 3, 5000).catch(() => {});
    sseEventsSeen.logs += logs.length;
    check(`progress and session-stream events arrived (round ${n})`, progress >= 5 && logs.length >= 3, `progress ${progress}, announcements ${logs.length}`);
    await mcp.client.callTool({ name: `no-such-tool-${n}`, arguments: {} }).catch(() => {});
    await mcp.client.readResource({ uri: 'whoami://identity' });
    await mcp.client.getPrompt({ name: 'greeting', arguments: {} });
    await mcp.client.ping();

    // bob may not count: a policy denial.
    const bm = await mcpConnect(bobToken);
    const bw = await bm.client.callTool({ name: 'whoami', arguments: {} });
    if (bw.structuredContent?.email !== 'bob@example.com') check('bob whoami', false, short(JSON.stringify(bw)));
    let denial = null;
    await bm.client.callTool({ name: 'count', arguments: { n: 1, delay_ms: 0 } }).catch((err) => {
      denial = err;
    });
    check(`bob's tools/call count is denied by the policy (round ${n})`, denial !== null && /403|count is not for bob|deny/i.test(String(denial?.message ?? denial)), String(denial?.message ?? 'no error'));
    await bm.transport.terminateSession().catch(() => {});
    await bm.client.close();

    // No token, a bad token (twice: the second is a negative cache hit).
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' });
    const mcpHeaders = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    const noTok = await http(`${publicUrl}/mcp`, { method: 'POST', body, headers: mcpHeaders });
    if (noTok.status !== 401) check('POST /mcp without a token → 401', false, `${noTok.status}`);
    const badTok = randomToken(32);
    secret(badTok, 'invalid bearer token');
    for (let i = 0; i < 2; i++) await http(`${publicUrl}/mcp`, { method: 'POST', body, headers: { ...mcpHeaders, authorization: `Bearer ${badTok}` } });

    // Legacy HTTP+SSE through the relaying downstream.
    try {
      const legacy = await mcpConnect(aliceSseToken, { legacy: true });
      const lw = await legacy.client.callTool({ name: 'whoami', arguments: {} });
      check(`legacy /sse: whoami as alice (round ${n})`, lw.structuredContent?.email === 'alice@example.com', short(JSON.stringify(lw.structuredContent ?? lw)));
      sseEventsSeen.legacy++;
      await legacy.client.close();
    } catch (err) {
      check(`legacy /sse session (round ${n})`, false, err.message);
    }

    // The wiki route: alice with a token bound to it (RFC 8707) over Streamable HTTP (its GET
    // stream, SSE answers with progress), an unknown tool, bob denied by the same policy, no token.
    const aw = await login({ browser: browserA, user: alice, client: publicClient, resource: prmWiki.resource });
    const twk = await exchange(aw, publicClient, undefined, prmWiki.resource);
    check(`alice token for the wiki route (round ${n})`, twk.status === 200 && !!twk.json?.access_token, `${twk.status} ${short(twk.body ?? '')}`);
    const wk = await mcpConnect(twk.json?.access_token, { path: WIKI_PATH });
    await waitFor(`the GET ${WIKI_PATH} stream to open`, async () => sampleSum((await scrape(adminUrl)).text, `${PREFIX}sse_streams_open`, { route: 'wiki', endpoint: '/mcp' }) >= 1, 5000).then(
      () => check(`GET ${WIKI_PATH} stream open, counted under route "wiki" (round ${n})`, true),
      (err) => check(`GET ${WIKI_PATH} stream open, counted under route "wiki" (round ${n})`, false, err.message),
    );
    await wk.client.listTools();
    const ww = await wk.client.callTool({ name: 'whoami', arguments: {} });
    check(`tools/call whoami on the wiki route (round ${n})`, ww.structuredContent?.email === 'alice@example.com', short(JSON.stringify(ww.structuredContent ?? ww)));
    let wikiProgress = 0;
    await wk.client.callTool({ name: 'count', arguments: { n: 3, delay_ms: 20 } }, undefined, { onprogress: () => wikiProgress++ });
    check(`progress events on the wiki route (round ${n})`, wikiProgress >= 3, `progress ${wikiProgress}`);
    await wk.client.callTool({ name: `no-such-tool-${n}`, arguments: {} }).catch(() => {});
    const bwl = await login({ browser: browserB, user: bob, client: confidential, resource: prmWiki.resource });
    const tbw = await exchange(bwl, confidential, [confidential.client_id, confidential.client_secret], prmWiki.resource);
    const bwk = await mcpConnect(tbw.json?.access_token, { path: WIKI_PATH });
    let wikiDenial = null;
    await bwk.client.callTool({ name: 'count', arguments: { n: 1, delay_ms: 0 } }).catch((err) => {
      wikiDenial = err;
    });
    check(`bob's tools/call count is denied on the wiki route too (round ${n})`, wikiDenial !== null && /403|count is not for bob|deny/i.test(String(wikiDenial?.message ?? wikiDenial)), String(wikiDenial?.message ?? 'no error'));
    await bwk.transport.terminateSession().catch(() => {});
    await bwk.client.close();
    const noTokWiki = await http(`${publicUrl}${WIKI_PATH}`, { method: 'POST', body, headers: mcpHeaders });
    if (noTokWiki.status !== 401) check(`POST ${WIKI_PATH} without a token → 401`, false, `${noTokWiki.status}`);

    // Hold the GET streams a little longer (a scrape sees them open), then close them.
    await sleep(1200);
    await mcp.transport.terminateSession().catch(() => {});
    await mcp.client.close();
    await wk.transport.terminateSession().catch(() => {});
    await wk.client.close();

    // Revocation: the refreshed access token, then using it (401, evicted from the cache).
    const rv = await postForm(meta.revocation_endpoint, { token: aliceToken, token_type_hint: 'access_token', client_id: publicClient.client_id });
    check(`revocation answers 200 (round ${n})`, rv.status === 200, `${rv.status} ${short(rv.body ?? '')}`);
    await postForm(meta.revocation_endpoint, { token: t2.json?.refresh_token ?? 'x', token_type_hint: 'refresh_token', client_id: publicClient.client_id });
    await postForm(meta.revocation_endpoint, { token: 'x', token_type_hint: 'bogus', client_id: publicClient.client_id });
    const after = await http(`${publicUrl}/mcp`, { method: 'POST', body, headers: { ...mcpHeaders, authorization: `Bearer ${aliceToken}` } });
    check(`a revoked token is refused (round ${n})`, after.status === 401, `${after.status}`);
    // A code replayed (invalid_grant; the replay revokes that grant), then a fresh token for what follows.
    const rp = await login({ browser: browserA, user: alice, client: publicClient });
    await exchange(rp, publicClient);
    const replay = await exchange(rp, publicClient);
    if (replay.status !== 400) check('code replay refused', false, `${replay.status}`);
    const fresh = await login({ browser: browserA, user: alice, client: publicClient });
    aliceToken = (await exchange(fresh, publicClient)).json?.access_token;
    for (const br of browsers) collectHops(br.hops.splice(0));
  }

  await round(1);

  heading('policy reloads (good, broken, good)');
  {
    const before = (await scrape(adminUrl)).text;
    fs.writeFileSync(policyFile, policy(' (edited)'));
    // Both routes read the file: each engine reloads it and counts under its route.
    const reloaded = (text, result) => ROUTES.every((route) => sampleSum(text, `${PREFIX}policy_reloads_total`, { route, result }) > sampleSum(before, `${PREFIX}policy_reloads_total`, { route, result }));
    await waitFor('a successful policy reload on every route', async () => reloaded((await scrape(adminUrl)).text, 'success'), 5000).then(
      () => check('policy edit → reload success counted on every route', true),
      (err) => check('policy edit → reload success counted on every route', false, err.message),
    );
    await sleep(1200); // each reload in its own scrape interval
    fs.writeFileSync(policyFile, `${policy(' (broken)')}\nfn authorize(user, request {\n`);
    await waitFor('a failed policy reload on every route', async () => reloaded((await scrape(adminUrl)).text, 'failure'), 5000).then(
      () => check('broken policy → reload failure counted on every route', true),
      (err) => check('broken policy → reload failure counted on every route', false, err.message),
    );
    await sleep(1200);
    fs.writeFileSync(policyFile, policy());
  }

  await sleep(2000); // two scrapes between the rounds: every counter moves between samples
  await round(2);

  heading('downstream faults: timeout (504), connection refused (502)');
  {
    const before = (await scrape(adminUrl)).text;
    faulty.setMode('hang');
    const hung = await Promise.all([0, 1].map(() => http(`${publicUrl}/sse`, { headers: { authorization: `Bearer ${aliceSseToken}`, accept: 'text/event-stream' } })));
    check('a downstream that never answers → 504', hung.every((h) => h.status === 504), hung.map((h) => h.status).join(','));
    await faulty.close();
    faultyOpen = false;
    const refused = await Promise.all([0, 1].map(() => http(`${publicUrl}/sse`, { headers: { authorization: `Bearer ${aliceSseToken}`, accept: 'text/event-stream' } })));
    check('a downstream that refuses connections → 502', refused.every((h) => h.status === 502), refused.map((h) => h.status).join(','));
    const afterText = (await scrape(adminUrl)).text;
    // The faulty downstream is the default route's legacy SSE endpoint.
    const dflt = { route: 'default' };
    check('downstream_timeouts_total{route="default"} counted the timeouts', sampleSum(afterText, `${PREFIX}downstream_timeouts_total`, dflt) >= sampleSum(before, `${PREFIX}downstream_timeouts_total`, dflt) + 2);
    check('downstream_connect_errors_total{route="default"} counted the refusals', sampleSum(afterText, `${PREFIX}downstream_connect_errors_total`, dflt) >= sampleSum(before, `${PREFIX}downstream_connect_errors_total`, dflt) + 2);
    const wiki = { route: 'wiki' };
    check('the wiki route counted none of them', sampleSum(afterText, `${PREFIX}downstream_timeouts_total`, wiki) === sampleSum(before, `${PREFIX}downstream_timeouts_total`, wiki) && sampleSum(afterText, `${PREFIX}downstream_connect_errors_total`, wiki) === sampleSum(before, `${PREFIX}downstream_connect_errors_total`, wiki));
  }
  for (const br of browsers) collectHops(br.hops.splice(0));
  const tTrafficEnd = Date.now();
  info(`traffic took ${((tTrafficEnd - tTraffic) / 1000).toFixed(1)} s; SSE seen by clients: ${JSON.stringify(sseEventsSeen)}`);

  // ------------------------------------------------------------------ (d)
  heading(`(d) label cardinality: ${RANDOM_REQUESTS} requests with random values`);
  const randoms = new Set();
  const rnd = () => {
    const v = `zq${crypto.randomBytes(10).toString('hex')}`;
    randoms.add(v);
    return v;
  };
  {
    const beforeText = (await scrape(adminUrl)).text;
    const before = labelSets(beforeText, PREFIX);
    const cardClient = await mcpConnect(aliceToken);
    const kinds = ['path', 'bearer', 'client_id', 'tool'];
    const jobs = Array.from({ length: RANDOM_REQUESTS }, (_, i) => kinds[i % kinds.length]);
    const statuses = {};
    const mcpHeaders = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    const t = Date.now();
    await pool(jobs, 16, async (kind) => {
      let status;
      try {
        if (kind === 'path') {
          status = (await http(`${publicUrl}/${rnd()}/${rnd()}?${rnd()}=${rnd()}`, { method: Math.random() < 0.5 ? 'GET' : 'POST' })).status;
        } else if (kind === 'bearer') {
          const tok = rnd();
          secret(tok, 'random bearer token');
          const mcpPath = Math.random() < 0.5 ? '/mcp' : WIKI_PATH;
          status = (await http(`${publicUrl}${mcpPath}`, { method: 'POST', body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }), headers: { ...mcpHeaders, authorization: `Bearer ${tok}` } })).status;
        } else if (kind === 'client_id') {
          status = (await http(meta.token_endpoint, { method: 'POST', form: { grant_type: 'authorization_code', code: rnd(), client_id: rnd(), redirect_uri: redirectUri, code_verifier: randomToken() } })).status;
        } else {
          const r = await cardClient.client.callTool({ name: rnd(), arguments: {} }).then(
            (x) => (x.isError ? 'tool error' : 'ok'),
            (err) => `error ${err.code ?? ''}`.trim(),
          );
          status = `tools/call ${r}`;
        }
      } catch (err) {
        status = `failed: ${err.message}`;
      }
      const key = `${kind} ${status}`;
      statuses[key] = (statuses[key] ?? 0) + 1;
    });
    await cardClient.transport.terminateSession().catch(() => {});
    await cardClient.client.close();
    info(`${RANDOM_REQUESTS} requests in ${((Date.now() - t) / 1000).toFixed(1)} s: ${JSON.stringify(statuses)}`);
    const afterText = (await scrape(adminUrl)).text;
    const after = labelSets(afterText, PREFIX);
    const added = newLabelSets(before, after);
    info(`label sets (histogram le aside): ${countLabelSets(before)} → ${countLabelSets(after)}; raw ${PREFIX}* series ${seriesCount(beforeText, PREFIX)} → ${seriesCount(afterText, PREFIX)}`);
    for (const line of added) info(`new: ${line}`);
    check(`at most ${CARDINALITY_BOUND} new label sets`, added.length <= CARDINALITY_BOUND, `${added.length} new`);
    const leaked = [];
    for (const { name, label, value } of labelValues(afterText)) {
      for (const r of randoms) if (value.includes(r)) leaked.push(`${name}{${label}="${short(value, 60)}"}`);
    }
    check('no label value carries a random path, token, client_id or tool name', leaked.length === 0, leaked.slice(0, 10).join('; '));
    fs.writeFileSync(path.join(dir, 'metrics-after-cardinality.txt'), afterText);
  }

  // ------------------------------------------------------------------ scrapes
  heading('waiting for Prometheus to scrape the end of the traffic');
  {
    const target = Date.now() + 1100;
    const last = await waitFor('a scrape after the traffic', async () => {
      const s = await prometheus.lastScrape();
      return s && s.time > target ? s : null;
    }, 15000, 200).catch(async () => prometheus.lastScrape());
    check('the proxy target is up in Prometheus', last?.health === 'up', JSON.stringify(last));
    const n = await prometheus.query(`count_over_time(up{job="${JOB}"}[10m])`);
    const scrapes = Number(n.result?.[0]?.value?.[1] ?? 0);
    check('at least 3 scrapes', scrapes >= 3, `${scrapes} scrapes`);
  }

  // ------------------------------------------------------------------ (a)
  heading('(a) every dashboard query returns data');
  {
    const windowS = Math.ceil((Date.now() - tTraffic) / 1000) + 10;
    const rateInterval = `${windowS}s`;
    const instances = await prometheus.labelValues('instance', `${PREFIX}build_info{job="${JOB}"}`).catch(() => []);
    const jobs = await prometheus.labelValues('job', `${PREFIX}build_info`).catch(() => []);
    check('variable $job: label_values(mcp_oauth_proxy_build_info, job) lists the job', jobs.includes(JOB), JSON.stringify(jobs));
    check('variable $instance lists the proxy', instances.includes(`127.0.0.1:${adminPort}`), JSON.stringify(instances));
    info(`$__rate_interval = $__range = ${rateInterval} (the whole traffic window); $job = ${JOB}; $instance = 127.0.0.1:${adminPort}`);
    // $route: the variable's query lists every configured route.
    const routeValues = await prometheus.labelValues('route', `${PREFIX}mcp_requests_total{job="${JOB}"}`).catch(() => []);
    check(`variable $route: label_values(mcp_oauth_proxy_mcp_requests_total, route) lists ${ROUTES.join(' and ')} and nothing else`, JSON.stringify([...routeValues].sort()) === JSON.stringify([...ROUTES].sort()), JSON.stringify(routeValues));
    const chosen = { job: [JOB], instance: [`127.0.0.1:${adminPort}`] };
    const empty = [];
    const zero = [];
    /** Evaluates every target (or those `only` keeps) with `vars`; `route` set: only that route's series may come back. */
    async function evaluate(vars, { only = () => true, route = null, tag = '' } = {}) {
      const seen = new Map(); // target label -> the route values its result carried
      for (const t of dashboardTargets(dashboard).filter(only)) {
        const expr = concreteExpr(t.expr, { rateInterval, vars });
        const label = `${t.panel} [${t.refId}${t.legend && !t.legend.includes('{{') && t.legend !== '__auto' ? ` ${t.legend}` : ''}]${tag}`;
        let data;
        try {
          data = await prometheus.query(expr);
        } catch (err) {
          check(`${label} evaluates`, false, `${err.message}\n          ${expr}`);
          continue;
        }
        const result = data.result ?? [];
        const values = result.map((r) => ({ route: r.metric?.route, labels: Object.entries(r.metric ?? {}).filter(([k]) => !['job', 'instance'].includes(k)).map(([k, v]) => `${k}=${v}`).join(','), v: Number(r.value?.[1]) }));
        const real = values.filter((x) => !Number.isNaN(x.v));
        seen.set(t, new Set(real.map((x) => x.route).filter(Boolean)));
        const shown = values
          .slice(0, 6)
          .map((x) => `${x.labels ? `{${x.labels}} ` : ''}${Number.isInteger(x.v) ? x.v : x.v.toPrecision(3)}`)
          .join('  ');
        const foreign = route ? values.filter((x) => x.route !== undefined && x.route !== route) : [];
        if (result.length === 0) {
          empty.push(label);
          check(label, false, `EMPTY\n          ${expr}`);
        } else if (real.length === 0) {
          empty.push(label);
          check(label, false, `only NaN (${shown})\n          ${expr}`);
        } else if (foreign.length) {
          check(label, false, `series of another route: ${foreign.map((x) => x.labels).join('; ')}\n          ${expr}`);
        } else {
          // A rate that stays 0 although its events happened: say why (gauges are read at one instant; their peak is checked below).
          if (!route && real.every((x) => x.v === 0) && /\b(rate|increase)\(/.test(t.expr)) {
            if (/process_cpu_seconds_total/.test(t.expr)) warn(`${label} is 0: process_cpu_seconds_total counts whole CPU seconds (the prometheus crate's process collector), so a lightly loaded proxy reads 0 and then jumps`);
            else if (!metricNames(t.expr).some((m) => MAY_BE_ABSENT[m])) zero.push(label);
          }
          console.log(`  ok    ${label}: ${shown}${values.length > 6 ? ` … (${values.length} series)` : ''}`);
        }
      }
      return seen;
    }
    // $route = All (Grafana puts the variable's allValue in as it is).
    const all = await evaluate({ ...chosen, route: '.+' });
    // Panels broken down by route show every route when all are selected.
    for (const [t, routes] of all) {
      if (!t.expr.includes('$route') || !/by \([^)]*\broute\b/.test(t.expr)) continue;
      const missing = ROUTES.filter((r) => !routes.has(r));
      if (missing.length) check(`${t.panel} [${t.refId}] shows every route with $route = All`, false, `missing ${missing.join(', ')}`);
    }
    // Each route alone: every query on the MCP metrics returns that route's data, and only its.
    for (const route of ROUTES) {
      heading(`(a) with $route = ${route}`);
      await evaluate({ ...chosen, route: [route] }, { only: (t) => t.expr.includes('$route'), route, tag: ` {route=${route}}` });
    }
    if (empty.length) info(`${empty.length} queries returned no data: ${empty.join('; ')}`);
    if (zero.length) warn(`${zero.length} rate queries returned only zeros although their events happened (a counter that appears with its first event has no earlier sample to rise from): ${zero.join('; ')}`);

    // Every metric a panel reads exists in Prometheus (a fallback such as `or vector(0)` must not hide a wrong name).
    const names = new Set(dashboardTargets(dashboard).flatMap((t) => metricNames(t.expr)));
    for (const name of [...names].sort()) {
      if (name === 'up' || name === 'vector' || name === 'time') continue;
      const r = await prometheus.query(`count({__name__="${name}",job="${JOB}"})`);
      const n = Number(r.result?.[0]?.value?.[1] ?? 0);
      if (n > 0) {
        if (VERBOSE) console.log(`  ok    metric ${name} (${n} series)`);
      } else if (MAY_BE_ABSENT[name]) warn(`metric ${name} never appeared (${MAY_BE_ABSENT[name]}); its panel falls back to 0 per operation`);
      else check(`metric ${name} exists`, false, 'no series in Prometheus');
    }
    check('every metric the dashboard reads was exported (or is a known exception)', !failures.some((f) => f.startsWith('metric ')));
    // Gauges are read at one instant (0 once the streams closed): Prometheus must have seen the streams open.
    const peak = await prometheus.query(`max_over_time(sum by (route, endpoint) (${PREFIX}sse_streams_open{job="${JOB}"})[${rateInterval}:1s])`);
    const peaks = Object.fromEntries((peak.result ?? []).map((r) => [`${r.metric.route} ${r.metric.endpoint}`, Number(r.value[1])]));
    check('Prometheus saw the GET /mcp stream open (sse_streams_open{route="default",endpoint="/mcp"} peaked ≥ 1)', (peaks['default /mcp'] ?? 0) >= 1, JSON.stringify(peaks));
    check(`Prometheus saw the GET ${WIKI_PATH} stream open (sse_streams_open{route="wiki",endpoint="/mcp"} peaked ≥ 1)`, (peaks['wiki /mcp'] ?? 0) >= 1, JSON.stringify(peaks));
    info(`sse_streams_open peaks: ${JSON.stringify(peaks)}`);
    for (const v of dashboard.templating?.list ?? []) for (const m of metricNames(typeof v.query === 'string' ? v.query : (v.query?.query ?? ''))) names.add(m);
    // Families exported but shown nowhere.
    const exported = await prometheus.labelValues('__name__', `{job="${JOB}"}`);
    const base = (n) => n.replace(/_(bucket|sum|count)$/, '');
    const unused = exported.filter((n) => n.startsWith(PREFIX) && ![...names].some((m) => base(m) === base(n)));
    if (unused.length) warn(`exported but on no panel: ${unused.join(', ')}`);
  }

  // ------------------------------------------------------------------ (b)
  heading('(b) promtool check metrics');
  {
    const m = await scrape(adminUrl);
    fs.writeFileSync(path.join(dir, 'metrics.txt'), m.text);
    const r = spawnSync(prom.promtool, ['check', 'metrics'], { input: m.text, encoding: 'utf8' });
    const out = `${r.stdout}${r.stderr}`.trim();
    console.log(out ? out.replace(/^/gm, '        ') : '        (no output)');
    check('promtool check metrics exits 0', r.status === 0, `exit ${r.status}`);
  }

  // ------------------------------------------------------------------ (e)
  heading('(e) the proxy log: JSON lines, audit events, no secrets');
  proxyStopped = true;
  const exit = await proxy.stop();
  info(`proxy stopped (${JSON.stringify(exit)})`);
  {
    const stderr = proxy.stderr();
    const stdout = proxy.stdout();
    const lines = stderr.split('\n').filter((l) => l.trim());
    const bad = [];
    const dup = new Map(); // "message: key" -> example line
    const records = [];
    for (const [i, line] of lines.entries()) {
      try {
        const rec = JSON.parse(line);
        if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) throw new Error('not an object');
        records.push(rec);
        for (const key of duplicateKeys(line)) {
          const k = `"${rec.fields?.message ?? rec.message}": key "${key}"`;
          if (!dup.has(k)) dup.set(k, `line ${i + 1}: ${short(line, 300)}`);
        }
      } catch {
        bad.push(`line ${i + 1}: ${short(line, 120)}`);
      }
    }
    info(`${lines.length} stderr lines, ${stdout.split('\n').filter(Boolean).length} stdout lines`);
    check('every stderr line is a JSON object', lines.length > 0 && bad.length === 0, bad.slice(0, 5).join('\n          '));
    check(
      'no log line has the same key twice (log pipelines drop or merge one of them)',
      dup.size === 0,
      [...dup].map(([k, ex]) => `${k}\n            e.g. ${ex}`).join('\n          '),
    );

    const field = (rec, k) => rec?.fields?.[k] ?? rec?.[k] ?? rec?.span?.[k];
    const isAudit = (rec) => field(rec, 'message') === 'audit' || field(rec, 'audit') === true || field(rec, 'audit') === 'true' || rec.target === 'audit';
    const audits = records.filter(isAudit);
    info(`${audits.length} audit lines`);
    check('MCP requests have audit lines', audits.length > 0);
    const wanted = ['request_id', 'route', 'sub', 'email', 'client_id', 'mcp_method', 'tool', 'decision', 'status', 'duration_ms'];
    const whoamiAudit = audits.find((r) => field(r, 'mcp_method') === 'tools/call' && field(r, 'tool') === 'whoami' && field(r, 'sub') === 'alice' && field(r, 'route') === 'default');
    check('an audit line for alice\'s tools/call whoami', !!whoamiAudit, audits.slice(0, 3).map((r) => short(JSON.stringify(r), 200)).join('\n          '));
    if (whoamiAudit) {
      const missingFields = wanted.filter((k) => field(whoamiAudit, k) === undefined);
      check('it has request_id, route, sub, email, client_id, mcp_method, tool, decision, status, duration_ms', missingFields.length === 0, `missing ${missingFields.join(', ')}: ${JSON.stringify(whoamiAudit)}`);
      check('its values: alice, her email, the client, allow, 200', field(whoamiAudit, 'email') === 'alice@example.com' && field(whoamiAudit, 'client_id') === publicClient.client_id && field(whoamiAudit, 'decision') === 'allow' && Number(field(whoamiAudit, 'status')) === 200 && !!field(whoamiAudit, 'request_id') && Number.isFinite(Number(field(whoamiAudit, 'duration_ms'))), JSON.stringify(whoamiAudit));
      info(`e.g. ${short(JSON.stringify(whoamiAudit), 400)}`);
    }
    for (const route of ROUTES) {
      const denyAudit = audits.find((r) => field(r, 'tool') === 'count' && field(r, 'sub') === 'bob' && field(r, 'route') === route);
      check(`an audit line for bob's denied tools/call count on route "${route}" (decision deny, 403)`, !!denyAudit && field(denyAudit, 'decision') === 'deny' && Number(field(denyAudit, 'status')) === 403, denyAudit ? JSON.stringify(denyAudit) : 'none');
    }
    const wikiAudit = audits.find((r) => field(r, 'mcp_method') === 'tools/call' && field(r, 'tool') === 'whoami' && field(r, 'sub') === 'alice' && field(r, 'route') === 'wiki');
    check('an audit line for alice\'s tools/call whoami on route "wiki" (allow, 200)', !!wikiAudit && field(wikiAudit, 'decision') === 'allow' && Number(field(wikiAudit, 'status')) === 200, wikiAudit ? JSON.stringify(wikiAudit) : 'none');
    const routesAudited = new Set(audits.map((r) => field(r, 'route')));
    check(`every audit line names a configured route (${ROUTES.join(', ')})`, [...routesAudited].every((r) => ROUTES.includes(r)) && ROUTES.every((r) => routesAudited.has(r)), JSON.stringify([...routesAudited]));

    // No secret anywhere in the log (stdout included).
    const all = `${stderr}\n${stdout}`;
    const byKind = {};
    for (const what of secrets.values()) {
      const k = what.replace(/ \(.*\)$| in .*$| at .*$/g, '');
      byKind[k] = (byKind[k] ?? 0) + 1;
    }
    info(`looking for ${secrets.size} secret values: ${Object.entries(byKind).map(([k, v]) => `${v} ${k}`).join(', ')}`);
    const found = [];
    for (const [value, what] of secrets) {
      if (!all.includes(value)) continue;
      const lineNo = all.split('\n').findIndex((l) => l.includes(value)) + 1;
      found.push(`${what} (${short(value, 24)}) on log line ${lineNo}: ${short(all.split('\n')[lineNo - 1] ?? '', 240)}`);
    }
    check('no token, code, secret, cookie value or key in the log', found.length === 0, found.slice(0, 10).join('\n          '));
    // The upstream tokens collected are the ones the proxy really holds: the downstream got them (as SHA-256 in its log).
    const upstreamHashes = new Set([...secrets].filter(([, w]) => w === 'upstream access token').map(([v]) => sha256(v)));
    check("the wiki route's requests reached the wiki's own MCP server", whoamiWiki.requests().length > 0, `${whoamiWiki.requests().length} requests`);
    const forwarded = [...whoami.requests(), ...whoamiWiki.requests()].flatMap((e) => rawHeaderValues(e, 'authorization')).map((v) => v.replace(/^Bearer sha256:/, ''));
    check('the upstream tokens looked for are the ones the downstream received', forwarded.length > 0 && forwarded.every((h) => upstreamHashes.has(h)), `${forwarded.filter((h) => !upstreamHashes.has(h)).length} of ${forwarded.length} forwarded tokens unknown`);
    const kinds = ['proxy access token', 'proxy refresh token', 'upstream access token', 'upstream refresh token', 'upstream id_token', 'DCR client_secret', 'secrets.encryption_key', 'code in ', 'cookie '];
    for (const k of kinds) if (![...secrets.values()].some((w) => w.startsWith(k))) warn(`no "${k.trim()}" was collected: the leak check could not look for it`);
  }
}

main().then(
  () => {
    console.log('');
    if (warnings.length) console.log(`${warnings.length} warning(s):\n${warnings.map((w) => `  - ${w}`).join('\n')}`);
    if (failures.length) {
      console.log(`observability e2e FAILED (${failures.length}) after ${since()}:\n${failures.map((f) => `  - ${short(f.split('\n')[0], 300)}`).join('\n')}`);
      process.exit(1);
    }
    console.log(`observability e2e passed (${since()})`);
    process.exit(0);
  },
  (err) => {
    console.error(`\nobservability e2e FAILED after ${since()}: ${err.stack ?? err}`);
    process.exit(1);
  },
);
