// Renewal of the provider's tokens when an MCP client refreshes its proxy
// token, end to end: the real OpenID provider (provider.mjs, in-process so
// the test can see the access tokens it issues and take it off the network
// without losing its state), the proxy binary, and the example whoami server
// downstream, whose `whoami` tool reports the SHA-256 of the bearer the proxy
// sent it.
//
// The provider's access tokens live 30 s, always inside the proxy's 60 s
// `upstream.refresh_before` window, so every client refresh renews them.
//
//   1. sign in (DCR, consent, provider login; the proxy asks for offline_access)
//   2. whoami: the downstream sees the provider's first access token
//   3. refresh → the proxy used the provider's refresh token; whoami with the
//      new proxy token shows the provider's new access token
//   4. provider off the network → 503 temporarily_unavailable, the grant kept
//      (the current proxy token still works); back on → the same refresh token
//      renews again
//   5. the provider revokes alice's grants → 400 invalid_grant, the proxy
//      revokes its grant (401 on /mcp), and a second refresh is refused
//      without asking the provider again
//
// Run: node --test upstream-refresh.test.mjs   (PROXY_BIN=... to pick the
// binary, E2E_VERBOSE=1 to echo every child's logs)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { startProvider } from './provider.mjs';
import { buildAuthorizeUrl, describeHops, freePort, loginThroughBrowserless, makePkce, postForm, randomToken, removeOnExit, startProxy } from './lib/index.mjs';
import { describeRequest, sha256, startWhoami } from './lib/whoami.mjs';

const USER = { name: 'alice', password: 'alice-password', email: 'alice@example.com' };
const PROVIDER_ACCESS_TTL = 30; // seconds; inside refresh_before (60 s)

/**
 * startProvider, keeping hold of its http.Server (startProvider does not
 * return it) so the test can stop listening and listen again on the same
 * port: an unreachable provider whose in-memory grants survive the outage.
 */
async function startProviderKeepingServer(opts) {
  const original = http.createServer;
  let server;
  http.createServer = function createServer(...args) {
    server = original.apply(this, args);
    return server;
  };
  try {
    const provider = await startProvider(opts);
    assert.ok(server, 'captured the provider http.Server');
    return { provider, server };
  } finally {
    http.createServer = original;
  }
}

/** 'connected' or the error code of a fresh TCP connection to 127.0.0.1:port. */
function tcpProbe(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (e) => resolve(e.code ?? e.message));
  });
}

/** The JSON-RPC messages of a Streamable HTTP response body (JSON or SSE). */
function jsonRpcMessages(contentType, body) {
  if (/application\/json/i.test(contentType)) return [JSON.parse(body)].flat();
  return body
    .split(/\r?\n\r?\n/)
    .map((ev) =>
      ev
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n'),
    )
    .filter(Boolean)
    .map((d) => JSON.parse(d));
}

describe('upstream token renewal on refresh', () => {
  let dir;
  let provider; // startProvider's handle
  let providerServer; // its http.Server
  let whoami;
  let proxy;
  let meta; // proxy AS metadata
  let resource;
  let client; // DCR response
  let redirectUri;
  let failed = false;
  const issued = []; // provider access tokens, in issue order: { value, grantId, accountId }
  const s = {}; // state shared by the steps

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'upstream-refresh-e2e-'));
    removeOnExit(dir);
    const proxyPort = await freePort();
    ({ provider, server: providerServer } = await startProviderKeepingServer({
      port: 0,
      redirectUris: [`http://localhost:${proxyPort}/callback`],
      accessTtl: PROVIDER_ACCESS_TTL,
    }));
    // Opaque access tokens: the value is the jti.
    provider.provider.on('access_token.saved', (t) => issued.push({ value: t.jti, grantId: t.grantId, accountId: t.accountId }));
    whoami = await startWhoami({ logFile: path.join(dir, 'whoami-requests.jsonl') });
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
      scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
      downstreamUrl: whoami.mcpUrl,
      config: { upstream: { refresh_before: '60s', timeout: '5s' } },
    });
    redirectUri = `http://127.0.0.1:${await freePort()}/oauth/callback`;
  });

  after(async () => {
    if ((failed || process.env.E2E_VERBOSE === '1') && proxy) {
      console.error(`--- proxy logs ---\n${proxy.logs()}`);
      console.error(`--- provider token-endpoint events ---\n${JSON.stringify(provider?.events, null, 2)}`);
      console.error(`--- requests that reached whoami ---\n${whoami?.requests().map(describeRequest).join('\n')}`);
    }
    await proxy?.close();
    if (providerServer && !providerServer.listening) await new Promise((r) => providerServer.listen(provider.port, '127.0.0.1', r));
    await provider?.close();
    await whoami?.close();
  });

  const step = (name, fn) =>
    test(name, { timeout: 20000 }, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        throw err;
      }
    });

  const refreshEvents = () => provider.events.filter((e) => e.grant_type === 'refresh_token');

  async function refresh(refreshToken) {
    return postForm(meta.token_endpoint, { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: client.client_id, resource });
  }

  async function mcpPost(accessToken, message, sessionId) {
    const headers = {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${accessToken}`,
    };
    if (sessionId) {
      headers['mcp-session-id'] = sessionId;
      headers['mcp-protocol-version'] = LATEST_PROTOCOL_VERSION;
    }
    const res = await fetch(`${proxy.url}/mcp`, { method: 'POST', headers, body: JSON.stringify(message), signal: AbortSignal.timeout(15000) });
    const body = await res.text();
    const contentType = res.headers.get('content-type') ?? '';
    return {
      status: res.status,
      headers: res.headers,
      body,
      messages: res.status === 200 ? jsonRpcMessages(contentType, body) : [],
    };
  }

  /**
   * A fresh MCP session through the proxy with this access token, then
   * tools/call whoami. { status } of the first refused request, or
   * { status: 200, identity, sessionId }.
   */
  async function whoamiWith(accessToken) {
    const init = await mcpPost(accessToken, {
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: LATEST_PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'upstream-refresh-e2e', version: '1.0.0' } },
    });
    if (init.status !== 200) return { status: init.status, response: init };
    const sessionId = init.headers.get('mcp-session-id');
    assert.ok(sessionId, 'initialize returned an Mcp-Session-Id');
    assert.equal(init.messages.find((m) => m.id === 1)?.result?.serverInfo?.name, 'whoami-server', `initialize result: ${init.body}`);
    const note = await mcpPost(accessToken, { jsonrpc: '2.0', method: 'notifications/initialized' }, sessionId);
    assert.equal(note.status, 202, `notifications/initialized: ${note.status} ${note.body}`);
    const call = await mcpPost(accessToken, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'whoami', arguments: {} } }, sessionId);
    assert.equal(call.status, 200, `tools/call whoami: ${call.status} ${call.body}`);
    const result = call.messages.find((m) => m.id === 2)?.result;
    assert.ok(result && !result.isError, `whoami result: ${call.body}`);
    await fetch(`${proxy.url}/mcp`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${accessToken}`, 'mcp-session-id': sessionId, 'mcp-protocol-version': LATEST_PROTOCOL_VERSION },
    }).then((r) => r.arrayBuffer());
    return { status: 200, identity: result.structuredContent, sessionId };
  }

  /** whoami must succeed as alice; returns the bearer hash the downstream saw (and checks its request log agrees). */
  async function bearerHashWith(accessToken, what) {
    const r = await whoamiWith(accessToken);
    assert.equal(r.status, 200, `${what}: /mcp answered ${r.status} ${r.response?.body}`);
    const id = r.identity;
    assert.equal(id.sub, USER.name, `${what}: X-User-Sub`);
    assert.equal(id.email, USER.email, `${what}: X-User-Email`);
    assert.equal(id.authorization.bearer, true, `${what}: a bearer reached the downstream`);
    assert.match(id.authorization.sha256 ?? '', /^[0-9a-f]{64}$/, `${what}: bearer hash`);
    assert.notEqual(id.authorization.sha256, sha256(accessToken), `${what}: the client's own proxy token must not reach the downstream`);
    const logged = whoami.requests().filter((e) => e.headers['mcp-session-id'] === r.sessionId);
    assert.ok(logged.length >= 2, `${what}: the session's requests are in the whoami log`);
    for (const e of logged) assert.equal(e.headers.authorization, `Bearer sha256:${id.authorization.sha256}`, `${what}: ${describeRequest(e)}`);
    return id.authorization.sha256;
  }

  step('sign in: DCR, consent, provider login (offline_access), code exchange', async () => {
    meta = await (await fetch(`${proxy.url}/.well-known/oauth-authorization-server`)).json();
    resource = (await (await fetch(`${proxy.url}/.well-known/oauth-protected-resource/mcp`)).json()).resource;
    const reg = await fetch(meta.registration_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({
        client_name: 'E2E upstream refresh',
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      }),
    });
    assert.equal(reg.status, 201);
    client = await reg.json();

    const pkce = makePkce();
    const state = randomToken(16);
    const authorizeUrl = buildAuthorizeUrl(meta.authorization_endpoint, { clientId: client.client_id, redirectUri, state, codeChallenge: pkce.challenge, resource });
    const r = await loginThroughBrowserless({ authorizeUrl, user: USER.name, password: USER.password });
    assert.equal(r.state, state);
    assert.ok(r.code, `code (${r.error}: ${r.errorDescription})\n${describeHops(r.hops)}`);
    const toProvider = r.hops.find((h) => h.location?.startsWith(`${provider.issuer}/auth?`));
    assert.ok(toProvider, `the proxy sent the browser to the provider\n${describeHops(r.hops)}`);
    const upstreamScope = new URL(toProvider.location).searchParams.get('scope')?.split(' ') ?? [];
    assert.ok(upstreamScope.includes('offline_access'), `the proxy asks the provider for offline_access (scope=${upstreamScope.join(' ')})`);

    const hop = await postForm(meta.token_endpoint, {
      grant_type: 'authorization_code',
      code: r.code,
      redirect_uri: redirectUri,
      client_id: client.client_id,
      code_verifier: pkce.verifier,
      resource,
    });
    assert.equal(hop.status, 200, `token: ${hop.body}`);
    assert.ok(hop.json.access_token && hop.json.refresh_token, 'proxy access and refresh tokens');
    s.tokens = [hop.json];

    const codeGrants = provider.events.filter((e) => e.grant_type === 'authorization_code' && !e.error);
    assert.equal(codeGrants.length, 1, 'the proxy redeemed one provider code');
    assert.equal(refreshEvents().length, 0, 'no provider refresh yet');
    assert.equal(issued.length, 1, 'the provider issued one access token');
    assert.equal(issued[0].accountId, USER.name);
    s.providerGrantId = issued[0].grantId;
  });

  step('whoami: the downstream sees the provider access token from the sign-in', async () => {
    assert.ok(s.tokens, 'needs the sign-in step');
    s.hash1 = await bearerHashWith(s.tokens[0].access_token, 'first whoami');
    assert.equal(s.hash1, sha256(issued[0].value), "the downstream got the provider's access token");
  });

  step('refresh: the proxy renews the provider tokens; the new proxy token carries the new provider token', async () => {
    assert.ok(s.hash1, 'needs the first whoami');
    const hop = await refresh(s.tokens[0].refresh_token);
    assert.equal(hop.status, 200, `refresh: ${hop.body}`);
    assert.ok(hop.json.access_token && hop.json.refresh_token);
    assert.notEqual(hop.json.access_token, s.tokens[0].access_token);
    assert.notEqual(hop.json.refresh_token, s.tokens[0].refresh_token, 'the proxy rotates its refresh token');
    s.tokens.push(hop.json);

    const state = await provider.admin.state();
    const refreshes = state.events.filter((e) => e.grant_type === 'refresh_token');
    assert.equal(refreshes.length, 1, `the provider saw one refresh_token grant: ${JSON.stringify(state.events)}`);
    assert.equal(refreshes[0].error, undefined, `the provider refresh succeeded: ${JSON.stringify(refreshes[0])}`);
    assert.equal(refreshes[0].account, USER.name);
    assert.equal(issued.length, 2, 'the provider issued a second access token');
    assert.equal(issued[1].grantId, s.providerGrantId, 'for the same provider grant');

    s.hash2 = await bearerHashWith(hop.json.access_token, 'whoami after the refresh');
    assert.notEqual(s.hash2, s.hash1, 'the downstream now gets a different provider token');
    assert.equal(s.hash2, sha256(issued[1].value), "it is the provider's newest access token");
  });

  step('provider unreachable: 503 temporarily_unavailable, the grant kept; back again: the same refresh token renews', async () => {
    assert.ok(s.hash2, 'needs the refresh step');
    const before = refreshEvents().length;
    const current = s.tokens.at(-1);
    await new Promise((resolve, reject) => {
      providerServer.close((err) => (err ? reject(err) : resolve()));
      providerServer.closeAllConnections();
    });
    try {
      assert.equal(await tcpProbe(provider.port), 'ECONNREFUSED', 'the provider port refuses connections');

      const hop = await refresh(current.refresh_token);
      assert.equal(hop.status, 503, `refresh while the provider is down: ${hop.status} ${hop.body}`);
      assert.equal(hop.json?.error, 'temporarily_unavailable', hop.body);
      assert.match(hop.headers.get('cache-control') ?? '', /no-store/i);

      // The grant is kept: the current proxy token still works (the proxy
      // does not ask the provider on /mcp requests) and still carries the
      // provider token from the last renewal.
      assert.equal(await bearerHashWith(current.access_token, 'whoami while the provider is down'), s.hash2);
    } finally {
      await new Promise((resolve, reject) => {
        providerServer.once('error', reject);
        providerServer.listen(provider.port, '127.0.0.1', () => {
          providerServer.off('error', reject);
          resolve();
        });
      });
    }
    assert.equal(refreshEvents().length, before, 'nothing reached the provider while it was down');

    // The refresh token the 503 left unrotated renews now.
    const hop = await refresh(current.refresh_token);
    assert.equal(hop.status, 200, `refresh once the provider is back: ${hop.body}`);
    s.tokens.push(hop.json);
    const after = refreshEvents();
    assert.equal(after.length, before + 1, 'one more provider refresh');
    assert.equal(after.at(-1).error, undefined, JSON.stringify(after.at(-1)));
    s.hash3 = await bearerHashWith(hop.json.access_token, 'whoami after the outage');
    assert.notEqual(s.hash3, s.hash2);
    assert.equal(s.hash3, sha256(issued.at(-1).value), "the provider's newest access token");
  });

  step('provider revokes the sign-in: 400 invalid_grant, the proxy grant revoked, no second attempt upstream', async () => {
    assert.ok(s.hash3, 'needs the outage step');
    const revoked = await provider.admin.revoke(USER.name);
    assert.ok(revoked.revoked_grants >= 1, `the provider revoked alice's grants: ${JSON.stringify(revoked)}`);
    const before = refreshEvents().length;
    const current = s.tokens.at(-1);

    const hop = await refresh(current.refresh_token);
    assert.equal(hop.status, 400, `refresh after the provider revoked: ${hop.status} ${hop.body}`);
    assert.equal(hop.json?.error, 'invalid_grant', hop.body);
    assert.match(hop.headers.get('cache-control') ?? '', /no-store/i);
    const seen = refreshEvents();
    assert.equal(seen.length, before + 1, 'the proxy asked the provider once');
    assert.equal(seen.at(-1).error, 'invalid_grant', `the provider refused: ${JSON.stringify(seen.at(-1))}`);

    // The proxy revoked its grant: every access token of it is dead.
    for (const [i, t] of s.tokens.entries()) {
      const r = await whoamiWith(t.access_token);
      assert.equal(r.status, 401, `proxy access token #${i + 1} after the grant was revoked: ${r.status} ${r.response?.body ?? ''}`);
      assert.match(r.response.headers.get('www-authenticate') ?? '', /^Bearer\b/i, 'a Bearer challenge');
    }

    // No loop: refused again, and the provider is not asked again.
    const again = await refresh(current.refresh_token);
    assert.equal(again.status, 400, `second refresh: ${again.status} ${again.body}`);
    assert.equal(again.json?.error, 'invalid_grant', again.body);
    const older = await refresh(s.tokens[0].refresh_token);
    assert.equal(older.status, 400, `an older refresh token: ${older.status} ${older.body}`);
    assert.equal(older.json?.error, 'invalid_grant', older.body);
    assert.equal(refreshEvents().length, before + 1, 'no further refresh attempt reached the provider');
  });
});
