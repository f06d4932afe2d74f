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
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startProvider } from './provider.mjs';
import { findChromium, freePort, launchChromium, removeOnExit, startProxy } from './lib/index.mjs';
import { driveBrowserLogin } from './lib/mcp-login.mjs';
import { INITIALIZE, McpRemote, browserUrls, storedTokens, waitForBrowserUrl, writeBrowserScript } from './lib/mcp-remote.mjs';
import { describeRequest, downstreamRequestProblems, sha256, startWhoami } from './lib/whoami.mjs';

const skip = findChromium() || process.env.CI ? false : 'no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)';

const USERS = {
  alice: { name: 'alice', password: 'alice-password', email: 'alice@example.com', fullName: 'Alice Anderson', groups: ['engineering', 'admins'] },
  bob: { name: 'bob', password: 'bob-password', email: 'bob@example.com', fullName: 'Bob Brown', groups: ['sales'] },
};
const EVIL_MARKERS = ['evil@example.com', 'root-evil'];

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
    browserScript = writeBrowserScript(dir);
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
    const r = new McpRemote({ serverUrl, callbackPort, configDir, browserScript, browserFile, args });
    remotes.push(r);
    return r;
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
