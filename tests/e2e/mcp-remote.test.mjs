// mcp-remote — the stdio bridge Claude Desktop (and Cursor, Windsurf, ...)
// run for remote servers — through the proxy, end to end.
//
// mcp-remote opens the browser with the `open` package, which on Linux runs
// xdg-open, which (with no desktop session) runs $BROWSER <url>. Here $BROWSER
// is a two-line script that writes the URL to a file; the test hands that URL
// to headless Chromium, which approves the proxy's consent page and signs in
// at the provider, and lands on mcp-remote's own loopback callback. The test
// then speaks JSON-RPC over mcp-remote's stdin/stdout like a desktop app.
// MCP_REMOTE_CONFIG_DIR (and HOME) point at a temp dir: nothing touches ~/.mcp-auth.
//
// Run: node --test mcp-remote.test.mjs   (PROXY_BIN=..., E2E_VERBOSE=1)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { startProvider } from './provider.mjs';
import { E2E_DIR, findChromium, freePort, launchChromium, removeOnExit, startProxy } from './lib/index.mjs';
import { driveBrowserLogin } from './lib/mcp-login.mjs';
import { describeRequest, downstreamRequestProblems, sha256, startWhoami } from './lib/whoami.mjs';

const skip = findChromium() || process.env.CI ? false : 'no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)';

const MCP_REMOTE = path.join(E2E_DIR, 'node_modules', 'mcp-remote', 'dist', 'proxy.js');
const USERS = {
  alice: { name: 'alice', password: 'alice-password', email: 'alice@example.com', fullName: 'Alice Anderson', groups: ['engineering', 'admins'] },
  bob: { name: 'bob', password: 'bob-password', email: 'bob@example.com', fullName: 'Bob Brown', groups: ['sales'] },
};
const EVIL_MARKERS = ['evil@example.com', 'root-evil'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// mcp-remote children, killed (by PID) if the test process exits early.
const running = new Set();
process.on('exit', () => {
  for (const c of running) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/** mcp-remote as a child process, and a JSON-RPC peer over its stdio. */
class McpRemote {
  constructor({ serverUrl, callbackPort, configDir, browserScript, browserFile, args = [] }) {
    this.stderr = '';
    this.notifications = [];
    this.pending = new Map();
    this.nextId = 1;
    this.exited = false;
    const env = { ...process.env, MCP_REMOTE_CONFIG_DIR: configDir, HOME: configDir, BROWSER: browserScript, E2E_BROWSER_FILE: browserFile };
    // No desktop session: xdg-open then uses $BROWSER and nothing else.
    for (const k of ['DISPLAY', 'WAYLAND_DISPLAY', 'XDG_CURRENT_DESKTOP', 'DESKTOP_SESSION', 'KDE_FULL_SESSION', 'GNOME_DESKTOP_SESSION_ID', 'XDG_SESSION_DESKTOP']) delete env[k];
    this.args = [MCP_REMOTE, serverUrl, String(callbackPort), ...args];
    this.child = spawn(process.execPath, this.args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(this.child);
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        running.delete(this.child);
        this.exited = true;
        for (const { reject } of this.pending.values()) reject(new Error(`mcp-remote exited (code ${code}, signal ${signal})\n${this.stderr}`));
        this.pending.clear();
        resolve({ code, signal });
      });
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
      if (process.env.E2E_VERBOSE === '1') process.stderr.write(d.replace(/^(?=.)/gm, '[mcp-remote] '));
    });
    let buf = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) this.#onLine(line);
      }
    });
  }

  #onLine(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      this.stderr += `[non-JSON on stdout] ${line}\n`;
      return;
    }
    if (msg.id !== undefined && (msg.result !== undefined || msg.error !== undefined)) {
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        p.resolve(msg);
      }
    } else if (msg.method && msg.id !== undefined) {
      // A request from the server side: answer ping, refuse the rest.
      this.#write(msg.method === 'ping' ? { jsonrpc: '2.0', id: msg.id, result: {} } : { jsonrpc: '2.0', id: msg.id, error: { code: -32601, message: 'not supported by this test client' } });
    } else if (msg.method) {
      this.notifications.push(msg);
    }
  }

  #write(msg) {
    this.child.stdin.write(`${JSON.stringify(msg)}\n`);
  }

  /** Send a request; resolves with the whole response message. */
  request(method, params, timeoutMs = 30000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer to ${method} within ${timeoutMs} ms\nmcp-remote stderr:\n${this.stderr}`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(t);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.#write({ jsonrpc: '2.0', id, method, params });
    });
  }

  /** A request that must succeed; resolves with its result. */
  async call(method, params, timeoutMs) {
    const m = await this.request(method, params, timeoutMs);
    if (m.error) throw new Error(`${method} failed: ${JSON.stringify(m.error)}\nmcp-remote stderr:\n${this.stderr}`);
    return m.result;
  }

  notify(method, params) {
    this.#write({ jsonrpc: '2.0', method, params });
  }

  async close() {
    if (this.exited) return;
    this.child.stdin.end();
    const t = setTimeout(() => {
      try {
        process.kill(this.child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }, 3000);
    const k = setTimeout(() => {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 8000);
    await this.exit;
    clearTimeout(t);
    clearTimeout(k);
  }
}

const INITIALIZE = {
  protocolVersion: LATEST_PROTOCOL_VERSION,
  capabilities: {},
  clientInfo: { name: 'claude-desktop-stand-in', version: '1.0.0' },
};

describe('mcp-remote (stdio bridge) through the proxy', { skip }, () => {
  let dir;
  let whoami;
  let provider;
  let proxy;
  let chromium;
  let browserScript;
  let failed = false;
  const remotes = [];

  before(async () => {
    // First, so a missing Chromium (a failure when CI is set) fails at once.
    chromium = await launchChromium();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-remote-e2e-'));
    removeOnExit(dir);
    whoami = await startWhoami({ logFile: path.join(dir, 'whoami-requests.jsonl') });
    const proxyPort = await freePort();
    provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
      downstreamUrl: whoami.mcpUrl,
      config: { downstream: { sse_url: whoami.sseUrl } },
    });
    browserScript = path.join(dir, 'browser.sh');
    fs.writeFileSync(browserScript, '#!/bin/sh\n# $BROWSER for xdg-open: hand the URL to the test.\nprintf \'%s\\n\' "$1" >> "$E2E_BROWSER_FILE"\n', { mode: 0o755 });
  });

  after(async () => {
    for (const r of remotes) await r.close().catch(() => {});
    await chromium?.close().catch(() => {});
    if ((failed || process.env.E2E_VERBOSE === '1') && proxy) {
      for (const r of remotes) console.error(`--- mcp-remote ${r.args.slice(1).join(' ')} ---\n${r.stderr}`);
      console.error(`--- proxy logs ---\n${proxy.logs()}`);
      console.error(`--- requests that reached whoami ---\n${whoami?.requests().map(describeRequest).join('\n')}`);
    }
    await proxy?.close();
    await provider?.close();
    await whoami?.close();
  });

  const step = (name, fn) =>
    test(name, { timeout: 120000 }, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        throw err;
      }
    });

  function startRemote({ serverUrl, configDir, callbackPort, browserFile, args }) {
    fs.mkdirSync(configDir, { recursive: true });
    const r = new McpRemote({ serverUrl, callbackPort, configDir, browserScript, browserFile, args });
    remotes.push(r);
    return r;
  }

  const browserUrls = (file) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : []);

  async function waitForBrowserUrl(file, remote, timeoutMs = 30000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const urls = browserUrls(file);
      if (urls.length) return new URL(urls[0]);
      if (remote.exited) throw new Error(`mcp-remote exited before opening the browser\n${remote.stderr}`);
      if (Date.now() > deadline) throw new Error(`mcp-remote did not open the browser within ${timeoutMs} ms\n${remote.stderr}`);
      await sleep(100);
    }
  }

  /** Start mcp-remote, let it open "the browser", sign in there, and finish initialize. */
  async function signInThroughMcpRemote({ user, serverPath, configDir, args = [] }) {
    const callbackPort = await freePort();
    const browserFile = path.join(configDir, 'browser-urls.txt');
    const remote = startRemote({ serverUrl: `${proxy.url}${serverPath}`, configDir, callbackPort, browserFile, args });
    const init = remote.request('initialize', INITIALIZE, 90000);
    init.catch(() => {});
    const url = await waitForBrowserUrl(browserFile, remote);
    assert.equal(`${url.origin}${url.pathname}`, `${proxy.url}/authorize`, 'mcp-remote opened the proxy /authorize');
    assert.equal(url.searchParams.get('resource'), `${proxy.url}${serverPath}`, 'RFC 8707 resource from the PRM');
    assert.equal(url.searchParams.get('code_challenge_method'), 'S256');
    const redirect = new URL(url.searchParams.get('redirect_uri'));
    assert.equal(Number(redirect.port), callbackPort, "the redirect URI is mcp-remote's loopback callback");
    const context = await chromium.newContext();
    try {
      const drive = await driveBrowserLogin(context, url, {
        user: user.name,
        password: user.password,
        reached: (u) => Number(u.port) === callbackPort && u.pathname === redirect.pathname,
      });
      assert.ok(drive.consentSeen, 'the proxy consent page was approved');
      assert.ok(drive.loginSeen, 'the provider login form was filled in');
    } finally {
      await context.close();
    }
    const initResponse = await init;
    assert.ok(initResponse.result, `initialize: ${JSON.stringify(initResponse)}\n${remote.stderr}`);
    remote.notify('notifications/initialized');
    return { remote, init: initResponse.result, browserFile };
  }

  async function whoamiVia(remote) {
    const r = await remote.call('tools/call', { name: 'whoami', arguments: {} });
    assert.ok(!r.isError, `whoami: ${JSON.stringify(r)}`);
    return r.structuredContent ?? JSON.parse(r.content[0].text);
  }

  function assertIdentity(who, user, what) {
    assert.equal(who.email, user.email, `${what}: email`);
    assert.equal(who.sub, user.name, `${what}: sub`);
    assert.equal(who.name, user.fullName, `${what}: name`);
    assert.deepEqual(who.groups, user.groups, `${what}: groups`);
    assert.equal(who.authorization.bearer, true, `${what}: the downstream gets a bearer`);
  }

  function storedTokens(configDir) {
    const files = fs.readdirSync(configDir, { recursive: true }).map(String).filter((f) => /tokens\.json$/.test(f));
    return files.map((f) => JSON.parse(fs.readFileSync(path.join(configDir, f), 'utf8')));
  }

  function assertCleanDownstream(configDirs) {
    const hashes = configDirs.flatMap(storedTokens).map((t) => t.access_token).filter(Boolean).map(sha256);
    assert.ok(hashes.length > 0, 'mcp-remote stored its tokens in MCP_REMOTE_CONFIG_DIR');
    const problems = downstreamRequestProblems(whoami.requests(), { markers: EVIL_MARKERS, clientTokenHashes: hashes });
    assert.deepEqual(problems, [], `requests that reached the downstream:\n${problems.join('\n')}`);
  }

  const aliceDir = () => path.join(dir, 'alice-config');

  step('alice: `mcp-remote <proxy>/mcp` opens the browser, signs in, and relays initialize, tools/list, whoami, count', async () => {
    const { remote, init } = await signInThroughMcpRemote({ user: USERS.alice, serverPath: '/mcp', configDir: aliceDir() });
    assert.equal(init.serverInfo?.name, 'whoami-server');
    const tools = (await remote.call('tools/list', {})).tools.map((t) => t.name).sort();
    assert.deepEqual(tools, ['announce', 'count', 'whoami']);
    const who = await whoamiVia(remote);
    assertIdentity(who, USERS.alice, 'alice via mcp-remote');
    assert.equal(who.transport, 'streamable-http');

    const r = await remote.call('tools/call', { name: 'count', arguments: { n: 3, delay_ms: 100 }, _meta: { progressToken: 'count-1' } });
    assert.equal(r.structuredContent?.counted, 3);
    const progress = remote.notifications.filter((n) => n.method === 'notifications/progress' && n.params.progressToken === 'count-1');
    assert.deepEqual(progress.map((n) => n.params.progress), [1, 2, 3], 'progress notifications relayed to stdout');

    assert.ok(storedTokens(aliceDir()).length, 'tokens stored under MCP_REMOTE_CONFIG_DIR');
    assertCleanDownstream([aliceDir()]);
    await remote.close();
  });

  step('alice: a restarted mcp-remote reuses its stored tokens without opening the browser', async () => {
    const callbackPort = await freePort();
    const browserFile = path.join(aliceDir(), 'browser-urls-restart.txt');
    const remote = startRemote({ serverUrl: `${proxy.url}/mcp`, configDir: aliceDir(), callbackPort, browserFile });
    const init = await remote.call('initialize', INITIALIZE, 30000);
    remote.notify('notifications/initialized');
    assert.equal(init.serverInfo?.name, 'whoami-server');
    assertIdentity(await whoamiVia(remote), USERS.alice, 'alice after restart');
    assert.deepEqual(browserUrls(browserFile), [], 'no browser was opened');
    await remote.close();
  });

  step('bob: the original README\'s config `mcp-remote <proxy>/sse` with --header X-User-Email: evil sees only his own identity', async () => {
    const configDir = path.join(dir, 'bob-config');
    const { remote, init } = await signInThroughMcpRemote({
      user: USERS.bob,
      serverPath: '/sse',
      configDir,
      args: ['--header', 'X-User-Email:evil@example.com', '--header', 'X_User_Sub:root-evil'],
    });
    assert.equal(init.serverInfo?.name, 'whoami-server');
    const who = await whoamiVia(remote);
    assertIdentity(who, USERS.bob, 'bob via mcp-remote /sse');
    assert.equal(who.transport, 'sse', 'mcp-remote fell back to the legacy SSE transport');
    assertCleanDownstream([aliceDir(), configDir]);
    const entries = whoami.requests();
    assert.ok(entries.some((e) => e.method === 'GET' && e.path === '/sse' && e.headers['x-user-sub'] === 'bob'), "bob's GET /sse reached the downstream");
    await remote.close();
  });
});
