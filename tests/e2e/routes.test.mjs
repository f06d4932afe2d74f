// Two MCP servers behind one proxy ([[routes]]), end to end with real
// clients: the real OpenID provider (provider.mjs), the proxy binary, two
// instances of examples/whoami-server (one per route), the MCP TypeScript
// SDK client and mcp-remote, with headless Chromium doing what a person does
// in the browser.
//
//   /tickets/mcp  → whoami #1, the built-in default policy
//   /wiki/mcp     → whoami #2, policies/wiki.rhai: login() lets in only the
//                   `engineering` group (alice; not bob, who is in `sales`)
//                   and the route's identity header X-User-Route = request.route
//
// What a standard client really does, found out here and pinned below:
// - The SDK asks for the `resource` the route's protected-resource metadata
//   names, i.e. the URL it connects to: its token is bound to that route and
//   refused (401 invalid_token) on the other.
// - Pointed at the other route with the same token store, the SDK (1.32.2)
//   tries a refresh for the other route's resource; the proxy refuses it with
//   `invalid_target` (RFC 8707: not the granted resource) and the SDK gives
//   up with that error, without opening the browser. The grant is untouched.
// - Apps keep tokens per server: a second connection with its own token
//   store (and the client registration the app already has) goes through
//   /authorize again: the approval of this client covered the first server
//   only, so the consent page asks again, naming the new one; the provider
//   remembers the person: no login form. "Sign in once" is one provider
//   login, two tokens, one per route.
// - A client that asks for the proxy itself (the SDK's validateResourceURL
//   hook returning the public URL) gets one root token for both routes: the
//   consent page names both servers, and the wiki's login() is asked on the
//   first use there.
//
// Run: node --test routes.test.mjs   (PROXY_BIN=... a binary with [[routes]],
// E2E_VERBOSE=1 to echo every child's logs). Skipped without Chromium unless
// CI is set, where a missing Chromium fails.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { startProvider } from './provider.mjs';
import { REPO_ROOT, findChromium, freePort, launchChromium, removeOnExit, startProxy } from './lib/index.mjs';
import { InMemoryOAuthClientProvider, driveBrowserLogin, startCallbackServer } from './lib/mcp-login.mjs';
import { INITIALIZE, McpRemote, browserUrls, storedTokens, waitForBrowserUrl, writeBrowserScript } from './lib/mcp-remote.mjs';
import { describeRequest, downstreamRequestProblems, rawHeaderValues, sha256, startWhoami } from './lib/whoami.mjs';

const skip = findChromium() || process.env.CI ? false : 'no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)';

// The shipped example policy of config/routes.toml's wiki route.
const WIKI_POLICY = path.join(REPO_ROOT, 'policies', 'wiki.rhai');
const WIKI_DENIAL = (email) => `the wiki is for engineering; ${email} is not a member`;

const USERS = {
  alice: { name: 'alice', password: 'alice-password', email: 'alice@example.com', fullName: 'Alice Anderson', groups: ['engineering', 'admins'] },
  bob: { name: 'bob', password: 'bob-password', email: 'bob@example.com', fullName: 'Bob Brown', groups: ['sales'] },
};
// What a malicious or confused client might send; none of it may reach either server.
const INJECTED = {
  'X-User-Email': 'evil@example.com',
  'X-User-Name': 'Mallory Evil',
  'X-User-Groups': 'admins,root-evil',
  'X-User-Route': 'forged-route',
  X_User_Sub: 'root-evil',
};
const EVIL_MARKERS = ['evil@example.com', 'Mallory Evil', 'root-evil', 'forged-route'];

const jsonHeaders = (token) => ({
  ...(token ? { authorization: `Bearer ${token}` } : {}),
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
});
const initializeBody = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: LATEST_PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
});

describe('two MCP servers behind one proxy ([[routes]]) with real clients', { skip }, () => {
  let dir;
  let provider;
  let proxy;
  let chromium;
  let callback;
  let browserScript;
  const servers = {}; // route name -> whoami instance
  const contexts = {};
  const clients = []; // SDK clients to close
  const remotes = [];
  const oauths = {}; // name -> InMemoryOAuthClientProvider
  let failed = false;

  const url = (route) => `${proxy.url}/${route}/mcp`;

  before(async () => {
    // First, so a missing Chromium (a failure when CI is set) fails at once.
    chromium = await launchChromium();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'routes-e2e-'));
    removeOnExit(dir);
    servers.tickets = await startWhoami({ logFile: path.join(dir, 'tickets-requests.jsonl') });
    servers.wiki = await startWhoami({ logFile: path.join(dir, 'wiki-requests.jsonl') });
    const proxyPort = await freePort();
    provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
      // No default route at /mcp: only the two [[routes]] below.
      config: { downstream: { url: '' } },
      extraToml: `
[[routes]]
name = "tickets"
path = "/tickets/mcp"
[routes.downstream]
url = ${JSON.stringify(servers.tickets.mcpUrl)}

[[routes]]
name = "wiki"
path = "/wiki/mcp"
[routes.downstream]
url = ${JSON.stringify(servers.wiki.mcpUrl)}
[routes.policy]
path = ${JSON.stringify(WIKI_POLICY)}
identity_headers = ["X-User-Route"]
`,
    });
    callback = await startCallbackServer();
    browserScript = writeBrowserScript(dir);
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    for (const r of remotes) await r.close().catch(() => {});
    await chromium?.close().catch(() => {});
    await callback?.close();
    if ((failed || process.env.E2E_VERBOSE === '1') && proxy) {
      for (const r of remotes) console.error(`--- mcp-remote ${r.args.slice(1).join(' ')} ---\n${r.stderr}`);
      console.error(`--- proxy logs ---\n${proxy.logs()}`);
      for (const [name, s] of Object.entries(servers)) {
        console.error(`--- requests that reached ${name} ---\n${s.requests().map(describeRequest).join('\n')}`);
      }
    }
    await proxy?.close();
    await provider?.close();
    for (const s of Object.values(servers)) await s.close();
  });

  const step = (name, fn) =>
    test(name, { timeout: 90000 }, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        throw err;
      }
    });

  async function browserContext(name) {
    contexts[name] ??= await chromium.newContext();
    return contexts[name];
  }

  /**
   * An SDK OAuth client provider whose browser step runs in `context` as
   * `user`. The drive stops at the client's loopback redirect URI, or at the
   * proxy's /callback when that page is the end (a login() denial).
   */
  function oauthFor(name, { user, context, resource, clientName }) {
    const cb = new URL(callback.redirectUri);
    const drives = [];
    const oauth = new InMemoryOAuthClientProvider({
      redirectUrl: callback.redirectUri,
      clientName: clientName ?? `routes e2e (${name})`,
      resource,
      onRedirect: async (authorizationUrl) => {
        drives.push(
          await driveBrowserLogin(context, authorizationUrl, {
            user: user.name,
            password: user.password,
            reached: (u) => (u.origin === cb.origin && u.pathname === cb.pathname) || (u.origin === proxy.url && u.pathname === '/callback'),
          }),
        );
      },
    });
    oauth.drives = drives;
    oauths[name] = oauth;
    return oauth;
  }

  const transportFor = (route, oauth, headers) =>
    new StreamableHTTPClientTransport(new URL(url(route)), { authProvider: oauth, requestInit: headers ? { headers } : undefined });

  async function connect(route, oauth, headers) {
    const client = new Client({ name: 'mcp-oauth-proxy-routes-e2e', version: '1.0.0' });
    const transport = transportFor(route, oauth, headers);
    await client.connect(transport);
    clients.push(client);
    return { client, transport };
  }

  /**
   * The SDK's own flow: connect → 401 → discovery, (DCR,) authorization URL →
   * the browser → code at the loopback redirect URI → finishAuth → connect.
   */
  async function signInAndConnect(route, oauth) {
    const browserRuns = oauth.drives.length;
    const first = new Client({ name: 'mcp-oauth-proxy-routes-e2e', version: '1.0.0' });
    const t1 = transportFor(route, oauth);
    const err = await first.connect(t1).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(err instanceof UnauthorizedError, `the first connect to ${route} should need authorization, got: ${err?.stack ?? 'success'}`);
    assert.equal(oauth.drives.length, browserRuns + 1, 'the browser ran once');
    const response = await callback.next(5000);
    assert.ok(response.code, `authorization response has a code: ${response.url}`);
    assert.equal(response.state, oauth.states.at(-1), 'state comes back unchanged');
    assert.equal(response.iss, proxy.url, 'RFC 9207 iss is the proxy');
    await t1.finishAuth(response.code);
    await first.close().catch(() => {});
    assert.ok(oauth.tokens()?.access_token, 'the SDK holds an access token');
    return { ...(await connect(route, oauth)), drive: oauth.drives.at(-1), authorizationUrl: oauth.authorizationUrls.at(-1) };
  }

  async function whoamiOf(client) {
    const r = await client.callTool({ name: 'whoami', arguments: {} });
    assert.ok(!r.isError, `whoami failed: ${JSON.stringify(r)}`);
    return r.structuredContent ?? JSON.parse(r.content[0].text);
  }

  /** The identity the proxy sent, and the route header only the wiki's policy sets. */
  function assertIdentity(who, user, route, what) {
    assert.equal(who.email, user.email, `${what}: email`);
    assert.equal(who.sub, user.name, `${what}: sub`);
    assert.equal(who.name, user.fullName, `${what}: name`);
    assert.deepEqual(who.groups, user.groups, `${what}: groups`);
    assert.equal(who.authorization.bearer, true, `${what}: the downstream gets a bearer (the provider's)`);
    assert.deepEqual(who.other_user_headers, route === 'wiki' ? { 'x-user-route': 'wiki' } : {}, `${what}: other X-User-* headers`);
  }

  const post = (route, token, body = initializeBody) => fetch(url(route), { method: 'POST', headers: jsonHeaders(token), body });

  const requestsBy = (route, sub) => servers[route].requests().filter((e) => e.headers['x-user-sub'] === sub);

  /** Every token a client here holds (SDK and mcp-remote), hashed: none may reach a server. */
  function clientTokenHashes() {
    const tokens = Object.values(oauths).flatMap((o) => o.savedTokens.map((t) => t.access_token));
    for (const r of remotes) tokens.push(...storedTokens(r.configDir).map((t) => t.access_token));
    return tokens.filter(Boolean).map(sha256);
  }

  function assertClean(route) {
    const entries = servers[route].requests();
    const problems = downstreamRequestProblems(entries, { markers: EVIL_MARKERS, clientTokenHashes: clientTokenHashes() });
    assert.deepEqual(problems, [], `requests that reached ${route}:\n${problems.join('\n')}`);
    for (const e of entries) {
      assert.deepEqual(rawHeaderValues(e, 'x-user-route'), route === 'wiki' ? ['wiki'] : [], `${describeRequest(e)}: X-User-Route comes from the wiki's policy only`);
    }
    return entries;
  }

  step('each route has its own protected-resource metadata; without a token both answer 401 naming it', async () => {
    for (const route of ['tickets', 'wiki']) {
      const prm = await fetch(`${proxy.url}/.well-known/oauth-protected-resource/${route}/mcp`);
      assert.equal(prm.status, 200, `${route}: metadata`);
      const doc = await prm.json();
      assert.equal(doc.resource, url(route), `${route}: resource`);
      assert.deepEqual(doc.authorization_servers, [proxy.url], `${route}: one authorization server, the proxy`);
      const res = await post(route);
      await res.arrayBuffer();
      assert.equal(res.status, 401, `${route}: no token`);
      const www = res.headers.get('www-authenticate') ?? '';
      assert.equal(www.match(/resource_metadata="([^"]*)"/)?.[1], `${proxy.url}/.well-known/oauth-protected-resource/${route}/mcp`, `${route}: challenge ${www}`);
    }
    // No [downstream]: no default route, and no metadata for one.
    const none = await fetch(`${proxy.url}/.well-known/oauth-protected-resource/mcp`);
    await none.arrayBuffer();
    assert.equal(none.status, 404, 'no /mcp route');
    for (const route of ['tickets', 'wiki']) assert.deepEqual(servers[route].requests().map(describeRequest), [], `nothing reached ${route}`);
  });

  step('alice, SDK client on the tickets route: one sign-in, a token bound to that route, her identity from the proxy', async () => {
    const oauth = oauthFor('alice-tickets', { user: USERS.alice, context: await browserContext('alice') });
    const s = await signInAndConnect('tickets', oauth);
    const a = s.authorizationUrl;
    assert.equal(`${a.origin}${a.pathname}`, `${proxy.url}/authorize`, 'the SDK found /authorize by discovery');
    assert.equal(a.searchParams.get('resource'), url('tickets'), 'RFC 8707 resource: the route the SDK connects to');
    assert.ok(s.drive.consentSeen, 'the consent page was shown');
    assert.match(s.drive.consentText, /MCP server: tickets\b/, 'the consent page names the one server the token is for');
    assert.doesNotMatch(s.drive.consentText, /wiki/);
    assert.ok(s.drive.loginSeen, 'alice signed in at the provider');
    assert.equal(s.client.getServerVersion()?.name, 'whoami-server');

    const who = await whoamiOf(s.client);
    assertIdentity(who, USERS.alice, 'tickets', 'alice on tickets');
    assert.notEqual(who.authorization.sha256, sha256(oauth.tokens().access_token), "the client's MCP token is not forwarded");
    oauths['alice-tickets'].session = s;
    assertClean('tickets');
  });

  step('a token bound to the tickets route is refused on the wiki route (401 invalid_token), and nothing reaches the wiki', async () => {
    const token = oauths['alice-tickets'].tokens().access_token;
    for (const body of [initializeBody, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'whoami', arguments: {} } })]) {
      const res = await post('wiki', token, body);
      const text = await res.text();
      assert.equal(res.status, 401, `wiki with a tickets token: ${text.slice(0, 300)}`);
      const www = res.headers.get('www-authenticate') ?? '';
      assert.match(www, /error="invalid_token"/, `challenge: ${www}`);
      assert.match(www, new RegExp(`resource_metadata="${proxy.url}/.well-known/oauth-protected-resource/wiki/mcp"`), `challenge: ${www}`);
    }
    const home = await post('tickets', token);
    await home.arrayBuffer();
    assert.equal(home.status, 200, 'the token still works where it is bound');
    assert.deepEqual(servers.wiki.requests().map(describeRequest), [], 'nothing reached the wiki');
  });

  step('the SDK pointed at the wiki with the tickets token store: its refresh for the wiki resource gets invalid_target; no browser, the grant survives', async () => {
    const oauth = oauths['alice-tickets'];
    const before = { tokens: oauth.tokens(), browserRuns: oauth.drives.length, saved: oauth.savedTokens.length };
    const client = new Client({ name: 'mcp-oauth-proxy-routes-e2e', version: '1.0.0' });
    const err = await client.connect(transportFor('wiki', oauth)).then(
      () => undefined,
      (e) => e,
    );
    await client.close().catch(() => {});
    assert.ok(err, 'connecting to the wiki with a token bound to tickets fails');
    assert.match(`${err.errorCode ?? ''} ${err.message}`, /invalid_target/, `the refresh was refused as a foreign resource: ${err.stack}`);
    assert.equal(oauth.drives.length, before.browserRuns, 'the SDK did not open the browser');
    assert.equal(oauth.savedTokens.length, before.saved, 'no token was issued');
    assert.deepEqual(servers.wiki.requests().map(describeRequest), [], 'nothing reached the wiki');
    // The refused refresh neither rotated nor revoked the tickets grant.
    assert.equal(oauth.tokens(), before.tokens);
    assertIdentity(await whoamiOf(oauth.session.client), USERS.alice, 'tickets', 'alice on tickets, still');
  });

  step('alice on the wiki with a second token store: consent for the new server, and no second provider login', async () => {
    const first = oauths['alice-tickets'];
    const oauth = oauthFor('alice-wiki', { user: USERS.alice, context: await browserContext('alice') });
    // The app's registration with this authorization server, as apps keep it.
    oauth.saveClientInformation(first.clientInformation());
    const s = await signInAndConnect('wiki', oauth);
    assert.equal(s.authorizationUrl.searchParams.get('resource'), url('wiki'), 'RFC 8707 resource: the wiki route');
    assert.equal(s.authorizationUrl.searchParams.get('client_id'), first.clientInformation().client_id, 'the same client');
    // An approval covers the servers it named (tickets): the wiki is asked
    // for; the provider's session is live: no login form.
    assert.ok(s.drive.consentSeen, 'a consent page for the server not approved yet');
    assert.match(s.drive.consentText, /MCP server: wiki\b/, 'it names the wiki, and only the wiki');
    assert.equal(s.drive.loginSeen, false, 'no provider login the second time');
    assert.notEqual(oauth.tokens().access_token, first.tokens().access_token, 'a second token');

    const who = await whoamiOf(s.client);
    assertIdentity(who, USERS.alice, 'wiki', 'alice on the wiki');
    assert.notEqual(who.authorization.sha256, sha256(oauth.tokens().access_token), "the client's MCP token is not forwarded");
    const back = await post('tickets', oauth.tokens().access_token);
    await back.arrayBuffer();
    assert.equal(back.status, 401, 'the wiki token is refused on tickets');
    assertClean('wiki');
    assertClean('tickets');
  });

  step('root resource: an SDK client asking for the proxy itself signs in once and uses both routes with one token', async () => {
    const oauth = oauthFor('alice-root', { user: USERS.alice, context: await browserContext('alice-root'), resource: proxy.url });
    const s = await signInAndConnect('tickets', oauth);
    const resource = s.authorizationUrl.searchParams.get('resource');
    assert.ok([proxy.url, `${proxy.url}/`].includes(resource), `RFC 8707 resource: the proxy's root (${resource})`);
    assert.ok(s.drive.consentSeen && s.drive.loginSeen, 'a fresh browser: consent and provider login');
    assert.match(s.drive.consentText, /MCP servers: tickets, wiki\b/, 'the consent page names both servers');

    const onTickets = await whoamiOf(s.client);
    assertIdentity(onTickets, USERS.alice, 'tickets', 'alice (root token) on tickets');
    const wiki = await connect('wiki', oauth);
    const onWiki = await whoamiOf(wiki.client);
    assertIdentity(onWiki, USERS.alice, 'wiki', 'alice (root token) on the wiki');
    assert.equal(oauth.authorizationUrls.length, 1, 'one authorization for both routes');
    assert.equal(oauth.savedTokens.length, 1, 'one token for both routes');
    assert.equal(onWiki.authorization.sha256, onTickets.authorization.sha256, "both servers get the same sign-in's provider token");
    assert.notEqual(wiki.transport.sessionId, s.transport.sessionId, 'each route has its own MCP session');
    // A session belongs to its route: the tickets session is unknown on the
    // wiki, and the wiki server never hears of it.
    const crossed = await fetch(url('wiki'), {
      method: 'POST',
      headers: { ...jsonHeaders(oauth.tokens().access_token), 'mcp-session-id': s.transport.sessionId, 'mcp-protocol-version': LATEST_PROTOCOL_VERSION },
      body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/list' }),
    });
    await crossed.arrayBuffer();
    assert.equal(crossed.status, 404, "the tickets session on the wiki route");
    assert.ok(!servers.wiki.requests().some((e) => e.headers['mcp-session-id'] === s.transport.sessionId), 'the tickets session id never reached the wiki');
  });

  step('bob (sales) asking for the wiki: its login() refuses him at the callback — a page with the reason, no code, no token', async () => {
    const context = await browserContext('bob');
    const oauth = oauthFor('bob-wiki', { user: USERS.bob, context });
    const answered = callback.received.length;
    const client = new Client({ name: 'mcp-oauth-proxy-routes-e2e', version: '1.0.0' });
    const err = await client.connect(transportFor('wiki', oauth)).then(
      () => undefined,
      (e) => e,
    );
    await client.close().catch(() => {});
    assert.ok(err instanceof UnauthorizedError, `the SDK waits for an authorization that never comes: ${err?.stack ?? 'success'}`);
    const drive = oauth.drives[0];
    assert.equal(oauth.authorizationUrls[0].searchParams.get('resource'), url('wiki'));
    assert.ok(drive.consentSeen, 'the consent page was approved');
    assert.match(drive.consentText, /MCP server: wiki\b/);
    assert.ok(drive.loginSeen, 'bob signed in at the provider');
    const end = new URL(drive.finalUrl);
    assert.equal(`${end.origin}${end.pathname}`, `${proxy.url}/callback`, `the flow ended at the proxy:\n${drive.navigations.join('\n')}`);
    assert.equal(drive.finalStatus, 403, 'the login() denial page');
    assert.ok(drive.finalText.includes(WIKI_DENIAL(USERS.bob.email)), `the page gives the policy's reason: ${drive.finalText}`);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(callback.received.length, answered, 'nothing came back to the client: no code');
    assert.equal(oauth.tokens(), undefined, 'no token');
    assert.deepEqual(requestsBy('wiki', 'bob').map(describeRequest), [], 'nothing of bob reached the wiki');
  });

  step('bob on the tickets route: the same browser, no second provider login, his own identity', async () => {
    const oauth = oauthFor('bob-tickets', { user: USERS.bob, context: await browserContext('bob') });
    const s = await signInAndConnect('tickets', oauth);
    assert.equal(s.drive.loginSeen, false, 'the provider remembered bob');
    assertIdentity(await whoamiOf(s.client), USERS.bob, 'tickets', 'bob on tickets');
    assertClean('tickets');
  });

  step('bob with a root token: issued (tickets lets him in), works on tickets, refused 403 on the wiki at first use with the login() reason', async () => {
    const oauth = oauthFor('bob-root', { user: USERS.bob, context: await browserContext('bob'), resource: proxy.url, clientName: 'routes e2e (bob, root)' });
    const s = await signInAndConnect('tickets', oauth);
    assert.match(s.drive.consentText, /MCP servers: tickets, wiki\b/, 'the consent page names both servers');
    assert.equal(s.drive.loginSeen, false, 'the provider remembered bob');
    assertIdentity(await whoamiOf(s.client), USERS.bob, 'tickets', 'bob (root token) on tickets');

    const token = oauth.tokens().access_token;
    for (const body of [initializeBody, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' })]) {
      const res = await post('wiki', token, body);
      const text = await res.text();
      assert.equal(res.status, 403, `bob's root token on the wiki: ${text.slice(0, 300)}`);
      assert.equal(JSON.parse(text).error?.message, WIKI_DENIAL(USERS.bob.email), 'the JSON-RPC error carries the reason');
    }
    const client = new Client({ name: 'mcp-oauth-proxy-routes-e2e', version: '1.0.0' });
    const err = await client.connect(transportFor('wiki', oauth)).then(
      () => undefined,
      (e) => e,
    );
    await client.close().catch(() => {});
    assert.ok(err instanceof StreamableHTTPError, `the SDK cannot connect bob to the wiki: ${err?.stack ?? 'success'}`);
    assert.equal(err.code, 403, `the SDK reports the refusal: ${err.message}`);
    assert.ok(err.message.includes(WIKI_DENIAL(USERS.bob.email)), `with the policy's reason: ${err.message}`);
    assert.equal(oauth.authorizationUrls.length, 1, 'no second authorization');
    assert.deepEqual(requestsBy('wiki', 'bob').map(describeRequest), [], 'nothing of bob reached the wiki');
    assertIdentity(await whoamiOf(s.client), USERS.bob, 'tickets', 'bob on tickets, still');
  });

  step('identity headers a client forges never arrive at either server', async () => {
    const oauth = oauths['alice-root'];
    for (const route of ['tickets', 'wiki']) {
      const { client, transport } = await connect(route, oauth, INJECTED);
      const who = await whoamiOf(client);
      assertIdentity(who, USERS.alice, route, `alice on ${route} with forged headers`);
      const seen = servers[route].requests().filter((e) => e.headers['mcp-session-id'] === transport.sessionId);
      assert.ok(seen.length >= 2, `the forging requests reached ${route}`);
      await transport.terminateSession().catch(() => {});
    }
    // Raw requests too: odd case, duplicates and `_` for `-`.
    const token = oauth.tokens().access_token;
    for (const route of ['tickets', 'wiki']) {
      const res = await fetch(url(route), {
        method: 'POST',
        headers: [
          ...Object.entries(jsonHeaders(token)),
          ['x-user-email', 'evil@example.com'],
          ['X-USER-SUB', 'root-evil'],
          ['x_user_route', 'forged-route'],
        ],
        body: initializeBody,
      });
      await res.arrayBuffer();
      assert.equal(res.status, 200, `${route}: initialize`);
    }
    for (const route of ['tickets', 'wiki']) {
      assert.ok(servers[route].requests().length > 0);
      assertClean(route);
    }
  });

  async function signInThroughMcpRemote({ user, route, configDir, context }) {
    const callbackPort = await freePort();
    const browserFile = path.join(configDir, 'browser-urls.txt');
    const remote = new McpRemote({ serverUrl: url(route), callbackPort, configDir, browserScript, browserFile });
    remote.configDir = configDir;
    remotes.push(remote);
    const init = remote.request('initialize', INITIALIZE, 90000);
    init.catch(() => {});
    const authorizationUrl = await waitForBrowserUrl(browserFile, remote);
    assert.equal(`${authorizationUrl.origin}${authorizationUrl.pathname}`, `${proxy.url}/authorize`, 'mcp-remote opened the proxy /authorize');
    assert.equal(authorizationUrl.searchParams.get('resource'), url(route), "RFC 8707 resource: the route's URL");
    const redirect = new URL(authorizationUrl.searchParams.get('redirect_uri'));
    assert.equal(Number(redirect.port), callbackPort, "the redirect URI is mcp-remote's loopback callback");
    const drive = await driveBrowserLogin(context, authorizationUrl, {
      user: user.name,
      password: user.password,
      reached: (u) => Number(u.port) === callbackPort && u.pathname === redirect.pathname,
    });
    const initResponse = await init;
    assert.ok(initResponse.result, `initialize: ${JSON.stringify(initResponse)}\n${remote.stderr}`);
    assert.equal(initResponse.result.serverInfo?.name, 'whoami-server');
    remote.notify('notifications/initialized');
    assert.equal(browserUrls(browserFile).length, 1, 'one browser step');
    return { remote, drive };
  }

  async function whoamiVia(remote) {
    const r = await remote.call('tools/call', { name: 'whoami', arguments: {} });
    assert.ok(!r.isError, `whoami: ${JSON.stringify(r)}`);
    return r.structuredContent ?? JSON.parse(r.content[0].text);
  }

  step('mcp-remote on the wiki URL: the browser step signs alice in, whoami shows her identity and the route', async () => {
    const context = await browserContext('alice-remote');
    const configDir = path.join(dir, 'mcp-remote-wiki');
    const { remote, drive } = await signInThroughMcpRemote({ user: USERS.alice, route: 'wiki', configDir, context });
    assert.ok(drive.consentSeen, 'the consent page was approved');
    assert.match(drive.consentText, /MCP server: wiki\b/);
    assert.ok(drive.loginSeen, 'alice signed in at the provider');
    const tools = (await remote.call('tools/list', {})).tools.map((t) => t.name).sort();
    assert.deepEqual(tools, ['announce', 'count', 'whoami']);
    const who = await whoamiVia(remote);
    assertIdentity(who, USERS.alice, 'wiki', 'alice via mcp-remote on the wiki');
    assert.equal(who.transport, 'streamable-http');

    const stored = storedTokens(configDir);
    assert.equal(stored.length, 1, 'mcp-remote stored one token set');
    const res = await post('tickets', stored[0].access_token);
    await res.arrayBuffer();
    assert.equal(res.status, 401, "mcp-remote's wiki token is refused on tickets");
    assertClean('wiki');
  });

  step('mcp-remote on the tickets URL in the same browser: its own client and consent, no second provider login', async () => {
    const context = await browserContext('alice-remote');
    const configDir = path.join(dir, 'mcp-remote-tickets');
    const { remote, drive } = await signInThroughMcpRemote({ user: USERS.alice, route: 'tickets', configDir, context });
    assert.ok(drive.consentSeen, 'a new client registration: its consent page');
    assert.match(drive.consentText, /MCP server: tickets\b/);
    assert.equal(drive.loginSeen, false, 'the provider remembered alice');
    assertIdentity(await whoamiVia(remote), USERS.alice, 'tickets', 'alice via mcp-remote on tickets');
    await remote.close();
    await remotes[0].close();
  });

  step('everything that reached either server: the proxy identity headers of people the route lets in, nothing forged', async () => {
    const tickets = assertClean('tickets');
    const wiki = assertClean('wiki');
    const subs = (entries) => [...new Set(entries.map((e) => e.headers['x-user-sub']))].sort();
    assert.deepEqual(subs(tickets), ['alice', 'bob'], 'tickets served alice and bob');
    assert.deepEqual(subs(wiki), ['alice'], 'the wiki served alice only');
  });
});
