// The example downstream MCP server (examples/whoami-server) as a child
// process, with its request log: one JSON line per HTTP request that reached
// it (method, path, headers; the Authorization value as a SHA-256).

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnTracked } from './proc.mjs';
import { REPO_ROOT } from './proxy.mjs';

export const WHOAMI_DIR = path.join(REPO_ROOT, 'examples', 'whoami-server');

export const sha256 = (text) => crypto.createHash('sha256').update(String(text), 'utf8').digest('hex');

/** npm ci in examples/whoami-server when its dependencies are missing (run.sh does this up front). */
export function ensureWhoamiDeps() {
  if (fs.existsSync(path.join(WHOAMI_DIR, 'node_modules', '@modelcontextprotocol', 'sdk', 'package.json'))) return;
  console.error(`[whoami] installing dependencies in ${WHOAMI_DIR} (npm ci)`);
  const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: WHOAMI_DIR, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`npm ci in ${WHOAMI_DIR} failed (exit ${r.status})`);
}

/** Parse a JSONL request log written by the whoami server (missing file: no requests). */
export function readRequestLog(file) {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

/** Every value a request carried for a header (case-insensitive; duplicates kept). */
export function rawHeaderValues(entry, name) {
  const n = name.toLowerCase();
  return entry.raw_headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
}

/** A one-line summary of a logged request, for assertion messages. */
export function describeRequest(entry) {
  const h = entry.headers;
  return `${entry.method} ${entry.path} sub=${h['x-user-sub'] ?? '-'} email=${h['x-user-email'] ?? '-'} session=${h['mcp-session-id'] ?? '-'} auth=${h.authorization ? 'yes' : 'no'}`;
}

/**
 * Start examples/whoami-server/server.mjs on a free 127.0.0.1 port.
 * @param {object} o
 * @param {string} o.logFile   where the server appends its request log
 * @returns {Promise<{port, url, mcpUrl, sseUrl, logFile, pid, requests: () => object[], logs: () => string, close: () => Promise<void>}>}
 */
export async function startWhoami({ logFile, port = 0, readyTimeoutMs = 20000, env } = {}) {
  ensureWhoamiDeps();
  let ready;
  const readyLine = new Promise((resolve) => {
    ready = resolve;
  });
  const args = [path.join(WHOAMI_DIR, 'server.mjs'), '--port', String(port)];
  if (logFile) args.push('--log-requests', logFile);
  const proc = spawnTracked(process.execPath, args, {
    name: 'whoami',
    cwd: WHOAMI_DIR,
    env,
    onStdoutLine: (line) => {
      try {
        const msg = JSON.parse(line);
        if (msg.ready) ready(msg);
      } catch {
        /* not the ready line */
      }
    },
  });
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`whoami server not ready after ${readyTimeoutMs} ms\n${proc.logs()}`)), readyTimeoutMs).unref());
  const exited = proc.exited.then((r) => {
    throw new Error(`whoami server exited before it was ready (code ${r.code}, signal ${r.signal})\n${proc.logs()}`);
  });
  const msg = await Promise.race([readyLine, timeout, exited]);
  exited.catch(() => {});
  return {
    port: msg.port,
    url: `http://127.0.0.1:${msg.port}`,
    mcpUrl: msg.mcp_url,
    sseUrl: msg.sse_url,
    logFile,
    pid: proc.pid,
    requests: () => readRequestLog(logFile),
    logs: proc.logs,
    close: () => proc.stop(),
  };
}

export const IDENTITY_HEADERS = ['x-user-email', 'x-user-name', 'x-user-sub', 'x-user-groups'];

/**
 * Problems with the requests that reached the downstream, as readable lines
 * (empty when all is well): each request must carry each identity header
 * exactly once, under its canonical name, and one Authorization header that is
 * not one of the client's own MCP tokens; no value in `markers` (what a client
 * tried to inject) may appear anywhere in it.
 *
 * @param {object[]} entries            whoami request-log entries
 * @param {object} o
 * @param {string[]} [o.markers]        injected values that must not arrive
 * @param {string[]} [o.clientTokenHashes]  SHA-256 of the MCP access tokens the clients hold
 * @param {string[]} [o.forbiddenHeaders]   header names that must not arrive (e.g. ones named in Connection)
 */
export function downstreamRequestProblems(entries, { markers = [], clientTokenHashes = [], forbiddenHeaders = [] } = {}) {
  const problems = [];
  for (const e of entries) {
    const where = describeRequest(e);
    for (const name of IDENTITY_HEADERS) {
      const values = rawHeaderValues(e, name);
      if (values.length !== 1) problems.push(`${where}: ${values.length} ${name} headers ${JSON.stringify(values)}, expected exactly one`);
    }
    for (const [name] of e.raw_headers) {
      const normalised = name.toLowerCase().replaceAll('_', '-');
      if ((IDENTITY_HEADERS.includes(normalised) || normalised === 'authorization') && name.toLowerCase() !== normalised) {
        problems.push(`${where}: the client header "${name}" (normalises to ${normalised}) reached the downstream`);
      }
      if (forbiddenHeaders.includes(name.toLowerCase())) problems.push(`${where}: header "${name}" reached the downstream`);
    }
    const text = JSON.stringify(e.raw_headers);
    for (const m of markers) if (text.includes(m)) problems.push(`${where}: the injected value "${m}" reached the downstream`);
    const auth = rawHeaderValues(e, 'authorization');
    if (auth.length !== 1) problems.push(`${where}: ${auth.length} Authorization headers, expected one`);
    for (const h of clientTokenHashes) if (auth.includes(`Bearer sha256:${h}`)) problems.push(`${where}: the client's own MCP access token reached the downstream`);
  }
  return problems;
}
