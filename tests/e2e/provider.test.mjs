// The test OpenID provider on its own: its authorization-code flow with PKCE,
// driven by the browserless helper, and the claims its id_token carries.
// Run: node --test provider.test.mjs   (E2E_VERBOSE=1 for every hop)

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startProvider } from './provider.mjs';
import { Browser, E2E_DIR, buildAuthorizeUrl, decodeJwt, describeHops, loginThroughBrowserless, makePkce, postForm, randomToken, spawnTracked } from './lib/index.mjs';

// A throwaway redirect_uri: the chain stops at it, nothing listens there.
const REDIRECT_URI = 'http://127.0.0.1:9/provider-test/callback';
const SCOPE = 'openid email profile groups offline_access';

describe('test OpenID provider', () => {
  let p;
  let meta;

  before(async () => {
    p = await startProvider({ port: 0, redirectUris: [REDIRECT_URI] });
    const res = await fetch(`${p.issuer}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    meta = await res.json();
  });
  after(async () => {
    await p?.close();
  });

  async function login(user, password, { browser, scope = SCOPE } = {}) {
    const pkce = makePkce();
    const state = randomToken(16);
    const nonce = randomToken(16);
    const authorizeUrl = buildAuthorizeUrl(meta.authorization_endpoint, {
      clientId: p.client.clientId,
      redirectUri: REDIRECT_URI,
      state,
      codeChallenge: pkce.challenge,
      scope,
      extra: { nonce },
    });
    const r = await loginThroughBrowserless({ authorizeUrl, user, password, browser });
    if (process.env.E2E_VERBOSE === '1') console.error(describeHops(r.hops));
    assert.equal(r.error, undefined, `provider returned error ${r.error}: ${r.errorDescription}`);
    assert.equal(r.state, state);
    assert.equal(r.iss, p.issuer, 'RFC 9207 iss from the provider');
    assert.ok(r.code, 'authorization code');
    return { ...r, pkce, nonce };
  }

  async function redeem(code, verifier) {
    const hop = await postForm(
      meta.token_endpoint,
      { grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier },
      { basic: [p.client.clientId, p.client.clientSecret] },
    );
    assert.equal(hop.status, 200, `token endpoint: ${hop.body}`);
    return hop.json;
  }

  test('discovery advertises what the proxy needs', () => {
    assert.equal(meta.issuer, p.issuer);
    assert.match(p.issuer, /^http:\/\/localhost:\d+$/);
    assert.deepEqual(meta.code_challenge_methods_supported, ['S256']);
    assert.ok(meta.scopes_supported.includes('groups'));
    assert.ok(meta.scopes_supported.includes('offline_access'));
    assert.ok(meta.claims_supported.includes('groups'));
    assert.ok(meta.token_endpoint_auth_methods_supported.includes('client_secret_basic'));
    assert.ok(meta.grant_types_supported.includes('refresh_token'));
    assert.ok(meta.jwks_uri);
  });

  test('alice: code flow with PKCE, id_token carries email, name and groups', async () => {
    const r = await login('alice', 'alice-password');
    // authorize → login page → POST login → resume → redirect with the code
    assert.ok(r.loginHop, 'a login form was shown');
    assert.equal(r.consentHop, undefined, 'no consent page at the provider');
    const tokens = await redeem(r.code, r.pkce.verifier);
    assert.equal(tokens.token_type, 'Bearer');
    assert.ok(tokens.access_token);
    assert.ok(tokens.refresh_token, 'offline_access gives a refresh token');
    const { header, payload } = decodeJwt(tokens.id_token);
    console.log('id_token header:', JSON.stringify(header));
    console.log('id_token claims:', JSON.stringify(payload, null, 2));
    assert.equal(header.alg, 'RS256');
    assert.equal(payload.iss, p.issuer);
    assert.equal(payload.aud, p.client.clientId);
    assert.equal(payload.nonce, r.nonce);
    assert.equal(payload.sub, 'alice');
    assert.equal(payload.email, 'alice@example.com');
    assert.equal(payload.email_verified, true);
    assert.equal(payload.name, 'Alice Anderson');
    assert.deepEqual(payload.groups, ['engineering', 'admins']);

    const ui = await fetch(meta.userinfo_endpoint, { headers: { authorization: `Bearer ${tokens.access_token}` } });
    assert.equal(ui.status, 200);
    const info = await ui.json();
    assert.deepEqual(info.groups, ['engineering', 'admins']);
    assert.equal(info.email, 'alice@example.com');
  });

  test('bob: groups ["sales"]', async () => {
    const r = await login('bob', 'bob-password');
    const { payload } = decodeJwt((await redeem(r.code, r.pkce.verifier)).id_token);
    assert.equal(payload.sub, 'bob');
    assert.equal(payload.email, 'bob@example.com');
    assert.deepEqual(payload.groups, ['sales']);
  });

  test('a live provider session skips the login form', async () => {
    const browser = new Browser();
    await login('alice', 'alice-password', { browser });
    const again = await login(undefined, undefined, { browser });
    assert.equal(again.loginHop, undefined);
  });

  test('a wrong password is refused loudly', async () => {
    const pkce = makePkce();
    const authorizeUrl = buildAuthorizeUrl(meta.authorization_endpoint, {
      clientId: p.client.clientId,
      redirectUri: REDIRECT_URI,
      state: 's',
      codeChallenge: pkce.challenge,
      scope: SCOPE,
    });
    await assert.rejects(loginThroughBrowserless({ authorizeUrl, user: 'alice', password: 'nope' }), /login was refused[\s\S]*Invalid username or password/);
  });

  test('PKCE is enforced: a wrong verifier gets invalid_grant', async () => {
    const r = await login('alice', 'alice-password');
    const hop = await postForm(
      meta.token_endpoint,
      { grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: makePkce().verifier },
      { basic: [p.client.clientId, p.client.clientSecret] },
    );
    assert.equal(hop.status, 400);
    assert.equal(hop.json.error, 'invalid_grant');
  });

  test('refresh rotates; a revoked user cannot refresh; TTL is adjustable', async () => {
    await p.admin.setTtl({ access: 2 });
    try {
      const r = await login('bob', 'bob-password');
      const t1 = await redeem(r.code, r.pkce.verifier);
      assert.ok(t1.expires_in <= 2, `expires_in ${t1.expires_in}`);
      const basic = [p.client.clientId, p.client.clientSecret];
      const h2 = await postForm(meta.token_endpoint, { grant_type: 'refresh_token', refresh_token: t1.refresh_token }, { basic });
      assert.equal(h2.status, 200, h2.body);
      assert.ok(h2.json.access_token);
      assert.notEqual(h2.json.refresh_token, t1.refresh_token, 'refresh token rotated');
      assert.deepEqual(decodeJwt(h2.json.id_token).payload.groups, ['sales']);

      const state = await p.admin.state();
      assert.ok(state.events.some((e) => e.grant_type === 'refresh_token' && e.account === 'bob'));

      await p.admin.revoke('bob');
      const h3 = await postForm(meta.token_endpoint, { grant_type: 'refresh_token', refresh_token: h2.json.refresh_token }, { basic });
      assert.equal(h3.status, 400);
      assert.equal(h3.json.error, 'invalid_grant');
    } finally {
      await p.admin.setTtl({ access: 3600 });
    }
  });

  test('a disabled user cannot log in or refresh', async () => {
    const r = await login('carol', 'carol-password');
    const t = await redeem(r.code, r.pkce.verifier);
    assert.deepEqual(decodeJwt(t.id_token).payload.groups, []);
    await p.admin.disable('carol');
    try {
      const basic = [p.client.clientId, p.client.clientSecret];
      const h = await postForm(meta.token_endpoint, { grant_type: 'refresh_token', refresh_token: t.refresh_token }, { basic });
      assert.equal(h.json.error, 'invalid_grant');
      await assert.rejects(login('carol', 'carol-password'), /login was refused/);
    } finally {
      await p.admin.enable('carol');
    }
  });
});

test('provider.mjs as a child process prints its ready line', async () => {
  let ready;
  const gotReady = new Promise((resolve) => {
    ready = resolve;
  });
  const proc = spawnTracked(process.execPath, [path.join(E2E_DIR, 'provider.mjs'), '--port', '0', '--redirect-uri', REDIRECT_URI], {
    name: 'provider',
    onStdoutLine: (line) => ready(JSON.parse(line)),
  });
  try {
    const line = await Promise.race([gotReady, proc.exited.then((r) => Promise.reject(new Error(`provider exited ${JSON.stringify(r)}\n${proc.logs()}`)))]);
    assert.equal(line.ready, true);
    assert.match(line.issuer, /^http:\/\/localhost:\d+$/);
    const res = await fetch(`${line.issuer}/.well-known/openid-configuration`);
    assert.equal((await res.json()).issuer, line.issuer);
  } finally {
    const { signal, code } = await proc.stop();
    assert.ok(code === 0 || signal === 'SIGTERM', `provider stopped cleanly (code ${code}, signal ${signal})`);
  }
});
