// MCP Inspector's web UI through the proxy, driven in headless Chromium the
// way a person uses it: open the UI, connect to the proxy's /mcp, approve the
// proxy's consent page, sign in at the provider, come back to the Inspector's
// /oauth/callback, list the tools and run `whoami`. The result on screen must
// be the signed-in person's identity, and the requests that reached the
// example server must carry exactly that identity.
//
// - The current Inspector (v2, `npx @modelcontextprotocol/inspector`) sends
//   every MCP and OAuth request from its own Node backend, so it works without
//   `server.allowed_origins`; its UI origin is deliberately not listed here.
// - Inspector v1 (still maintained for security fixes) has a "Direct"
//   connection type in which the page itself calls the proxy: that needs the
//   UI's origin in `server.allowed_origins` (listed for 127.0.0.1, not for
//   localhost, so both sides are shown), and "Via Proxy", its own proxy server.
//
// Run: node --test inspector.test.mjs   (PROXY_BIN=..., E2E_VERBOSE=1)
// Skipped without Chromium unless CI is set, where a missing Chromium fails.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startProvider } from './provider.mjs';
import { findChromium, freePort, launchChromium, removeOnExit, startProxy } from './lib/index.mjs';
import { approveAndSignIn, startInspectorV1, startInspectorV2 } from './lib/inspector.mjs';
import { describeRequest, downstreamRequestProblems, rawHeaderValues, startWhoami } from './lib/whoami.mjs';

const skip = findChromium() || process.env.CI ? false : 'no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)';

const USERS = {
  alice: { name: 'alice', password: 'alice-password', email: 'alice@example.com', fullName: 'Alice Anderson', groups: ['engineering', 'admins'] },
  bob: { name: 'bob', password: 'bob-password', email: 'bob@example.com', fullName: 'Bob Brown', groups: ['sales'] },
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}

/** The page's visible text, whitespace folded, for assertion messages. */
async function pageText(page) {
  try {
    return (await page.innerText('body')).replace(/\s+/g, ' ').slice(0, 2000);
  } catch {
    return '(page gone)';
  }
}

/** `err`, with where the page was and what it showed and logged. */
async function withPage(err, page, consoleLines) {
  return new Error(`${err.message}\n  page: ${page.url()}\n  text: ${await pageText(page)}\n  console:\n    ${consoleLines.slice(-20).join('\n    ')}`, { cause: err });
}

/**
 * The whoami result v2 shows: its Results panel renders the tool's text
 * content (pretty JSON) in read-only Ace editors; the one that parses to an
 * identity is it.
 */
async function v2ToolResult(page) {
  return waitFor(
    'the whoami result in the Results panel',
    async () => {
      const texts = await page.locator('.ace_editor .ace_text-layer').allInnerTexts();
      for (const t of texts) {
        try {
          const v = JSON.parse(t.replaceAll('\u00a0', ' '));
          if (v && typeof v === 'object' && 'email' in v) return v;
        } catch {
          /* another editor, or not rendered yet */
        }
      }
      return undefined;
    },
    20000,
  );
}

/**
 * The whoami result v1 shows: its result panel renders the structured content
 * as a JSON tree (`key:` and the JSON value on the next line).
 */
function v1ToolResult(text) {
  const at = text.indexOf('Tool Result: Success');
  assert.ok(at >= 0, `no successful tool result on the page: ${text.slice(0, 1500)}`);
  const tree = text.slice(at);
  const str = (key) => tree.match(new RegExp(`\\b${key}:\\s*("(?:[^"\\\\]|\\\\.)*"|null)`))?.[1];
  const groups = tree.match(/groups:\s*\[([^\]]*)\]/)?.[1].match(/"(?:[^"\\]|\\.)*"/g) ?? [];
  return {
    email: JSON.parse(str('email') ?? 'null'),
    name: JSON.parse(str('name') ?? 'null'),
    sub: JSON.parse(str('sub') ?? 'null'),
    groups: groups.map((g) => JSON.parse(g)),
    authorization: { sha256: JSON.parse(str('sha256') ?? 'null'), bearer: /bearer:\s*true/.test(tree) },
  };
}

describe('MCP Inspector web UI through the proxy', { skip }, () => {
  let dir;
  let whoami;
  let provider;
  let proxy;
  let chromium;
  let v2;
  let v1;
  let v1AllowedOrigin;
  let v1OtherOrigin;
  let failed = false;
  const contexts = [];

  before(async () => {
    // First, so a missing Chromium (a failure when CI is set) fails at once.
    chromium = await launchChromium();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-inspector-e2e-'));
    removeOnExit(dir);
    whoami = await startWhoami({ logFile: path.join(dir, 'whoami-requests.jsonl') });
    const proxyPort = await freePort();
    const v1UiPort = await freePort();
    v1AllowedOrigin = `http://127.0.0.1:${v1UiPort}`;
    // The same UI server under another name: another origin, one not listed.
    v1OtherOrigin = `http://localhost:${v1UiPort}`;
    provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
      downstreamUrl: whoami.mcpUrl,
      config: { server: { allowed_origins: [v1AllowedOrigin] } },
    });
    const home2 = path.join(dir, 'inspector-v2');
    const home1 = path.join(dir, 'inspector-v1');
    fs.mkdirSync(home2);
    fs.mkdirSync(home1);
    v2 = await startInspectorV2({ serverUrl: `${proxy.url}/mcp`, home: home2, uiPort: await freePort(), sandboxPort: await freePort() });
    v1 = await startInspectorV1({
      serverUrl: `${proxy.url}/mcp`,
      home: home1,
      uiPort: v1UiPort,
      serverPort: await freePort(),
      uiOrigins: [v1AllowedOrigin, v1OtherOrigin],
    });
  });

  after(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await chromium?.close().catch(() => {});
    if ((failed || process.env.E2E_VERBOSE === '1') && proxy) {
      console.error(`--- inspector v2 logs ---\n${v2?.logs()}`);
      console.error(`--- inspector v1 logs ---\n${v1?.logs()}`);
      console.error(`--- proxy logs ---\n${proxy.logs()}`);
      console.error(`--- requests that reached whoami ---\n${whoami?.requests().map(describeRequest).join('\n')}`);
    }
    await v2?.close();
    await v1?.close();
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
      } finally {
        // Each step signs in from a browser of its own; none outlives it.
        for (const c of contexts.splice(0)) await c.close().catch(() => {});
      }
    });

  /**
   * A fresh browser (no cookies: the consent page and the provider's login
   * both show) and a page whose own requests to the proxy's MCP endpoint are
   * recorded: they tell a direct connection from one through a backend.
   */
  async function freshPage() {
    const context = await chromium.newContext();
    contexts.push(context);
    const page = await context.newPage();
    const requests = [];
    const console_ = [];
    page.on('request', (req) => {
      if (req.url().startsWith(`${proxy.url}/mcp`)) requests.push(req);
    });
    page.on('console', (m) => console_.push(`${m.type()}: ${m.text().slice(0, 300)}`));
    // allHeaders(): Origin is added below the page, so headers() lacks it.
    const mcpCalls = async () => Promise.all(requests.map(async (r) => `${r.method()} ${r.url()} Origin: ${(await r.allHeaders()).origin ?? '-'}`));
    return { page, mcpCalls, console: console_ };
  }

  /**
   * What reached whoami during one flow: nothing a client could forge, and
   * every request made with the provider token whose hash the tool showed on
   * screen carries the person's identity headers, once each. (Requests of an
   * earlier flow's session, still open in an Inspector backend, may land in
   * the same stretch of the log; the token tells them apart.)
   */
  const seenBearers = new Set();
  function checkDownstream(entries, user, shownSha256) {
    assert.deepEqual(downstreamRequestProblems(entries), []);
    const bearer = `Bearer sha256:${shownSha256}`;
    const mine = entries.filter((e) => rawHeaderValues(e, 'authorization').includes(bearer));
    assert.ok(mine.length > 0, `no request carried the bearer whose hash the Inspector showed (${shownSha256}):\n${entries.map(describeRequest).join('\n')}`);
    for (const e of mine) {
      const where = describeRequest(e);
      assert.deepEqual(rawHeaderValues(e, 'x-user-email'), [user.email], where);
      assert.deepEqual(rawHeaderValues(e, 'x-user-sub'), [user.name], where);
      assert.deepEqual(rawHeaderValues(e, 'x-user-name'), [user.fullName], where);
      assert.deepEqual(rawHeaderValues(e, 'x-user-groups'), [user.groups.join(',')], where);
    }
    seenBearers.add(bearer);
  }

  /** Requests in `entries` that belong to no earlier flow. */
  const newcomers = (entries) => entries.filter((e) => !rawHeaderValues(e, 'authorization').some((a) => seenBearers.has(a)));

  function checkShownIdentity(result, user) {
    assert.equal(result.email, user.email);
    assert.equal(result.name, user.fullName);
    assert.equal(result.sub, user.name);
    assert.deepEqual(result.groups, user.groups);
    assert.equal(result.authorization.bearer, true);
    assert.match(result.authorization.sha256 ?? '', /^[0-9a-f]{64}$/);
  }

  function checkAuthorizationRequest(signIn, inspectorOrigin) {
    const q = signIn.authorizeUrl.searchParams;
    assert.equal(q.get('redirect_uri'), `${inspectorOrigin}/oauth/callback`);
    assert.equal(q.get('code_challenge_method'), 'S256');
    assert.equal(q.get('resource'), `${proxy.url}/mcp`);
    assert.equal(signIn.callbackUrl.origin, inspectorOrigin);
    assert.equal(signIn.callbackUrl.pathname, '/oauth/callback');
    assert.ok(signIn.callbackUrl.searchParams.get('code'), `no code in ${signIn.callbackUrl}`);
    assert.equal(signIn.callbackUrl.searchParams.get('iss'), proxy.issuer);
  }

  step('Inspector (current release): connect, consent, provider login, list tools, run whoami as alice', async (t) => {
    t.diagnostic(`@modelcontextprotocol/inspector ${v2.version}`);
    const user = USERS.alice;
    assert.ok(!proxy.config.server.allowed_origins.includes(v2.origin), 'the v2 UI origin must not be listed: it should not need it');
    const mark = whoami.requests().length;
    const { page, mcpCalls, console: log } = await freshPage();
    try {
      await page.goto(v2.url);
      // The server card's switch; Mantine keeps the real input under its styled track.
      await page.getByRole('switch', { name: /Connect or disconnect/ }).click({ force: true });
      const signIn = await approveAndSignIn(page, { authorizeUrlPrefix: `${proxy.url}/authorize?`, returnOrigin: v2.origin, user: user.name, password: user.password });
      checkAuthorizationRequest(signIn, v2.origin);
      await page.getByText('Connected', { exact: true }).waitFor({ timeout: 20000 });

      await page.locator('label', { hasText: /^Tools$/ }).click();
      await page.getByRole('button', { name: /whoami/ }).click();
      await page.getByRole('button', { name: 'Execute Tool', exact: true }).click();
      const result = await v2ToolResult(page);
      checkShownIdentity(result, user);
      assert.equal(result.transport, 'streamable-http');

      checkDownstream(whoami.requests().slice(mark), user, result.authorization.sha256);
      // Everything went through the Inspector's backend, never from the page.
      assert.deepEqual(await mcpCalls(), []);

      // Disconnecting brings the server list back.
      await page.getByRole('button', { name: 'Disconnect from server' }).click();
      await page.getByText('Disconnected', { exact: true }).waitFor({ timeout: 20000 });
    } catch (err) {
      throw await withPage(err, page, log);
    }
  });

  /** Open the v1 UI at `origin`, choose the connection type and press Connect. */
  async function v1Connect(page, origin, connectionType) {
    await page.goto(v1.urlFor(origin));
    // The launcher's MCP_PROXY_PORT query parameter is not there any more when
    // the page comes back on /oauth/callback, and v1 then refuses to resume the
    // connection ("Connection settings changed during authorization"); the
    // saved "Inspector Proxy Address" setting is how v1 is told about a
    // non-default port for good.
    await page.getByRole('button', { name: 'Configuration' }).click();
    await page.locator('#MCP_PROXY_FULL_ADDRESS-input').fill(v1.serverAddress);
    await page.getByRole('button', { name: 'Configuration' }).click();
    await page.getByRole('combobox', { name: /connection type/i }).click();
    await page.getByRole('option', { name: connectionType, exact: true }).click();
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
  }

  /**
   * Back from the sign-in, v1 connects by itself, except now and then (three
   * times in fifteen runs here, in both connection types): its callback page
   * has exchanged the code (the proxy logged the tokens issued) but starts no
   * connection and shows no error. A person presses Connect again, which uses
   * the saved tokens without a new sign-in; so does this, and says so in the
   * test output.
   */
  async function v1AwaitConnected(page, t) {
    const connected = page.getByText('Connected', { exact: true });
    try {
      await connected.waitFor({ timeout: 8000 });
      return;
    } catch {
      /* pressed again below */
    }
    const connect = page.getByRole('button', { name: 'Connect', exact: true });
    if (!(await connect.isVisible())) throw new Error('v1 neither connected nor offers Connect after the sign-in');
    t.diagnostic('Inspector v1 did not reconnect after its OAuth callback; pressed Connect again');
    const before = page.url();
    await connect.click();
    await connected.waitFor({ timeout: 20000 });
    assert.equal(new URL(page.url()).origin, new URL(before).origin, 'pressing Connect again must not start a new sign-in');
  }

  async function v1RunWhoami(page, t) {
    await v1AwaitConnected(page, t);
    await page.getByRole('tab', { name: 'Tools' }).click();
    await page.getByRole('button', { name: 'List Tools', exact: true }).click();
    await page.getByText('Who am I?', { exact: true }).first().click();
    await page.getByRole('button', { name: /Run Tool/ }).click();
    await page.getByText('Tool Result: Success').waitFor({ timeout: 20000 });
    return v1ToolResult(await page.innerText('body'));
  }

  async function v1Disconnect(page) {
    await page.getByRole('button', { name: 'Disconnect', exact: true }).click();
    await page.getByText('Disconnected', { exact: true }).first().waitFor({ timeout: 20000 });
  }

  step('Inspector v1, "Direct" from an origin in server.allowed_origins: the page itself signs in and calls /mcp', async (t) => {
    t.diagnostic(`@modelcontextprotocol/inspector ${v1.version} (mcp-inspector-v1)`);
    const user = USERS.alice;
    const mark = whoami.requests().length;
    const { page, mcpCalls, console: log } = await freshPage();
    try {
      await v1Connect(page, v1AllowedOrigin, 'Direct');
      const signIn = await approveAndSignIn(page, { authorizeUrlPrefix: `${proxy.url}/authorize?`, returnOrigin: v1AllowedOrigin, user: user.name, password: user.password });
      checkAuthorizationRequest(signIn, v1AllowedOrigin);
      const result = await v1RunWhoami(page, t);
      checkShownIdentity(result, user);
      checkDownstream(whoami.requests().slice(mark), user, result.authorization.sha256);
      // The browser called the proxy itself, from the Inspector's origin.
      const calls = await mcpCalls();
      assert.ok(
        calls.some((c) => c.startsWith(`POST ${proxy.url}/mcp`) && c.endsWith(`Origin: ${v1AllowedOrigin}`)),
        `the page made no POST to /mcp from ${v1AllowedOrigin}:\n${calls.join('\n')}`,
      );
      await v1Disconnect(page);
    } catch (err) {
      throw await withPage(err, page, log);
    }
  });

  step('Inspector v1, "Direct" from an origin not in server.allowed_origins: refused before anything reaches the server', async () => {
    const mark = whoami.requests().length;
    const { page, console: log } = await freshPage();
    await v1Connect(page, v1OtherOrigin, 'Direct');
    await page.getByText(/Connection Error/).first().waitFor({ timeout: 20000 });
    const text = await pageText(page);
    assert.match(text, /Failed to fetch/, 'the Inspector should report the blocked request');
    assert.equal(new URL(page.url()).origin, v1OtherOrigin, 'the browser must not have been sent to sign in');
    assert.ok(
      log.some((l) => l.includes(`from origin '${v1OtherOrigin}' has been blocked by CORS policy`)),
      `Chromium should have blocked the request by CORS:\n${log.join('\n')}`,
    );
    assert.deepEqual(newcomers(whoami.requests().slice(mark)).map(describeRequest), []);

    // What Chromium was told: no CORS grant for this origin (and a 403 had it
    // sent the request anyway), while the listed origin is granted.
    const preflight = (origin) =>
      fetch(`${proxy.url}/mcp`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,mcp-protocol-version' },
      });
    const refused = await preflight(v1OtherOrigin);
    await refused.arrayBuffer();
    assert.equal(refused.headers.get('access-control-allow-origin'), null);
    const granted = await preflight(v1AllowedOrigin);
    await granted.arrayBuffer();
    assert.equal(granted.headers.get('access-control-allow-origin'), v1AllowedOrigin);
    const post = await fetch(`${proxy.url}/mcp`, {
      method: 'POST',
      headers: { origin: v1OtherOrigin, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    const body = await post.text();
    assert.equal(post.status, 403, body);
    assert.match(body, /origin/i);
  });

  step('Inspector v1, "Via Proxy": its proxy server carries MCP, the page signs in, whoami as bob', async (t) => {
    const user = USERS.bob;
    const mark = whoami.requests().length;
    const { page, mcpCalls, console: log } = await freshPage();
    try {
      await v1Connect(page, v1AllowedOrigin, 'Via Proxy');
      const signIn = await approveAndSignIn(page, { authorizeUrlPrefix: `${proxy.url}/authorize?`, returnOrigin: v1AllowedOrigin, user: user.name, password: user.password });
      checkAuthorizationRequest(signIn, v1AllowedOrigin);
      const result = await v1RunWhoami(page, t);
      checkShownIdentity(result, user);
      checkDownstream(whoami.requests().slice(mark), user, result.authorization.sha256);
      assert.deepEqual(await mcpCalls(), [], 'MCP traffic should go through the Inspector proxy server, not from the page');
      await v1Disconnect(page);
    } catch (err) {
      throw await withPage(err, page, log);
    }
  });
});
