// The signed identity assertion end to end (issue 13, items 4–5): the real
// proxy, the real provider and the example server (examples/whoami-server)
// verifying `X-Identity-Assertion` against the proxy's JWKS with `jose` on
// every request. An assertion from another key, an expired one and one for
// another audience are refused by it; after a key rotation the new key's
// assertions verify and the old key stays published until its last
// assertion has expired.
// Run: node --test identity-assertion.test.mjs (a proxy binary with identity_assertion()).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SignJWT, decodeJwt, decodeProtectedHeader, generateKeyPair } from 'jose';
import { startProvider } from './provider.mjs';
import { accessTokenFor, freePort, removeOnExit, sleep, startProxy } from './lib/index.mjs';
import { startWhoami } from './lib/whoami.mjs';

const AUDIENCE = 'urn:example:whoami';
const LIFETIME_S = 2;
const ROTATION_S = 5;
const POLICY = `
fn authorize(user, request) {
    allow(#{ "X-User-Email": user.email, "X-Identity-Assertion": identity_assertion() })
}
`;
const INITIALIZE = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'direct', version: '1' } },
};

/** A downstream that records the assertion it receives and answers an empty result. */
async function startCapture() {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers['x-identity-assertion']);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id: 1, result: {} }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, last: () => seen.at(-1), close: () => new Promise((r) => server.close(r)) };
}

describe('signed identity assertion (proxy + provider + whoami with jose)', () => {
  let provider;
  let proxy;
  let whoami;
  let capture;
  let token;
  let client;

  before(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'assertion-e2e-'));
    removeOnExit(dir);
    const proxyPort = await freePort();
    const publicUrl = `http://localhost:${proxyPort}`;
    provider = await startProvider({ port: 0, redirectUris: [`${publicUrl}/callback`] });
    whoami = await startWhoami({
      logFile: path.join(dir, 'whoami.jsonl'),
      env: {
        WHOAMI_JWKS_URL: `${publicUrl}/.well-known/jwks.json`,
        WHOAMI_AUDIENCE: AUDIENCE,
        WHOAMI_ISSUER: publicUrl,
        WHOAMI_JWKS_MAX_AGE_MS: '1000',
      },
    });
    capture = await startCapture();
    const policy = path.join(dir, 'assert.rhai');
    fs.writeFileSync(policy, POLICY);
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
      downstreamUrl: whoami.mcpUrl,
      config: {
        downstream: { assertion_audience: AUDIENCE },
        policy: { path: policy },
        identity_assertion: { lifetime: `${LIFETIME_S}s`, rotation_interval: `${ROTATION_S}s` },
      },
      // `tap`: whoami's audience, read by the test; `other`: its own audience.
      extraToml: `
[[routes]]
name = "tap"
path = "/tap/mcp"
[routes.downstream]
url = "${capture.url}/tap"
assertion_audience = "${AUDIENCE}"
[routes.policy]
path = "${policy}"

[[routes]]
name = "other"
path = "/other/mcp"
[routes.downstream]
url = "${capture.url}/other"
[routes.policy]
path = "${policy}"
`,
    });
    const root = await (await fetch(`${publicUrl}/.well-known/oauth-protected-resource`)).json();
    ({ accessToken: token } = await accessTokenFor(publicUrl, {
      user: 'alice',
      password: 'alice-password',
      redirectUri: `http://127.0.0.1:${await freePort()}/cb`,
      clientName: 'assertion-e2e',
      resource: root.resource,
    }));
    client = new Client({ name: 'assertion-e2e', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${publicUrl}/mcp`), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }),
    );
  });

  after(async () => {
    await client?.close().catch(() => {});
    await proxy?.close();
    await whoami?.close();
    await capture?.close();
    await provider?.close();
  });

  async function whoamiCall() {
    const r = await client.callTool({ name: 'whoami', arguments: {} });
    assert.ok(!r.isError, JSON.stringify(r));
    return r.structuredContent.assertion;
  }

  /** A request straight to whoami, bypassing the proxy, with this assertion. */
  async function direct(assertion) {
    const r = await fetch(whoami.mcpUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'x-identity-assertion': assertion },
      body: JSON.stringify(INITIALIZE),
    });
    return { status: r.status, body: await r.text() };
  }

  async function through(route) {
    const r = await fetch(`${proxy.url}/${route}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    assert.equal(r.status, 200);
    return capture.last();
  }

  test('whoami verifies the assertion on every request and shows the verified claims', async () => {
    const assertion = await whoamiCall();
    assert.equal(assertion.verified, true);
    assert.ok(typeof assertion.claims.sub === 'string' && assertion.claims.sub.length > 0);
    assert.equal(assertion.claims.name, 'Alice Anderson');
    assert.equal(assertion.claims.email, 'alice@example.com');
    assert.equal(assertion.claims.aud, AUDIENCE);
    assert.equal(assertion.claims.iss, proxy.url);
    assert.equal(assertion.claims.exp - assertion.claims.iat, LIFETIME_S);
    const requests = whoami.requests();
    assert.ok(requests.length >= 3, 'initialize, initialized, tools/call');
    for (const entry of requests) assert.ok(entry.headers['x-identity-assertion'], `${entry.method} ${entry.path} without an assertion`);
  });

  test('an assertion from another key is refused', async () => {
    const real = await through('tap');
    assert.equal((await direct(real)).status, 200, 'the real one verifies');
    const { privateKey } = await generateKeyPair('EdDSA');
    const forged = await new SignJWT(decodeJwt(real))
      .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT', kid: decodeProtectedHeader(real).kid })
      .sign(privateKey);
    const r = await direct(forged);
    assert.equal(r.status, 401, r.body);
    assert.match(r.body, /signature/i);
  });

  test('an assertion for another audience is refused', async () => {
    const other = await through('other');
    assert.equal(decodeJwt(other).aud, `${capture.url}/other`);
    const r = await direct(other);
    assert.equal(r.status, 401, r.body);
    assert.match(r.body, /aud/);
  });

  test('an expired assertion is refused', async () => {
    // Signed early in a key period, so that its key is still the current
    // one once it has expired (otherwise the verifier may no longer find
    // the key, which is a different refusal).
    const period = ROTATION_S * 1000;
    const left = period - (Date.now() % period);
    if (left < (LIFETIME_S + 2) * 1000) await sleep(left + 100);
    const real = await through('tap');
    const { exp } = decodeJwt(real);
    await sleep(exp * 1000 - Date.now() + 1100);
    const r = await direct(real);
    assert.equal(r.status, 401, r.body);
    assert.match(r.body, /ERR_JWT_EXPIRED/);
  });

  test('after a rotation the new key verifies and the old one stays published until its assertions expire', async () => {
    const jwksKids = async () => (await (await fetch(`${proxy.url}/.well-known/jwks.json`)).json()).keys.map((k) => k.kid);
    const first = await whoamiCall();
    const started = Date.now();
    let last = first;
    let rotated;
    for (;;) {
      const current = await whoamiCall(); // verified by whoami, or the call fails
      if (current.kid !== first.kid) {
        rotated = current;
        break;
      }
      last = current;
      assert.ok(Date.now() - started < (ROTATION_S + 2) * 1000, 'no rotation');
      await sleep(200);
    }
    const kids = await jwksKids();
    assert.ok(kids.includes(rotated.kid));
    if (Date.now() / 1000 < last.claims.exp) assert.ok(kids.includes(first.kid), 'the old key left while its assertions live');
    for (;;) {
      const now = await jwksKids();
      if (!now.includes(first.kid)) {
        assert.ok(Date.now() / 1000 >= last.claims.exp - 1, 'the old key left too early');
        break;
      }
      assert.ok(Date.now() - started < (ROTATION_S + LIFETIME_S + 4) * 1000, 'the old key is never retired');
      await sleep(200);
    }
    assert.equal((await whoamiCall()).verified, true);
  });
});
