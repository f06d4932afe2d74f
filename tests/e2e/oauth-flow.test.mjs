// The proxy's OAuth 2.1 authorization server, end to end: the proxy binary in
// front of a real OpenID provider, driven hop by hop like a browser.
// Run: node --test oauth-flow.test.mjs   (PROXY_BIN=... to pick the binary,
// E2E_VERBOSE=1 to echo logs and hops)

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startProvider } from './provider.mjs';
import { Browser, buildAuthorizeUrl, describeHops, freePort, isRedirect, loginThroughBrowserless, makePkce, parseForms, parseSetCookie, postForm, randomToken, startProxy } from './lib/index.mjs';

const USER = { name: 'alice', password: 'alice-password' };
const CLIENT_NAME = 'E2E Flow Client';

describe('OAuth 2.1 authorization server', () => {
  let provider;
  let proxy;
  let meta; // proxy AS metadata
  let prm; // proxy protected-resource metadata for /mcp
  let providerMeta;
  let client; // DCR response
  let redirectUri;
  let failed = false;

  before(async () => {
    const proxyPort = await freePort();
    provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
    proxy = await startProxy({
      port: proxyPort,
      issuer: provider.issuer,
      clientId: provider.client.clientId,
      clientSecret: provider.client.clientSecret,
    });
    providerMeta = await (await fetch(`${provider.issuer}/.well-known/openid-configuration`)).json();
    // A loopback redirect URI that nothing listens on: every chain stops there.
    redirectUri = `http://127.0.0.1:${await freePort()}/oauth/callback`;
  });

  after(async () => {
    if ((failed || process.env.E2E_VERBOSE === '1') && proxy) console.error(`--- proxy logs ---\n${proxy.logs()}`);
    await proxy?.close();
    await provider?.close();
  });

  // Mark the suite failed for log printing, then rethrow.
  const step = (name, fn) =>
    test(name, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        throw err;
      }
    });

  function authorizeUrl({ state, pkce, resource = prm?.resource, scope, clientId = client.client_id } = {}) {
    return buildAuthorizeUrl(meta.authorization_endpoint, {
      clientId,
      redirectUri,
      state,
      codeChallenge: pkce.challenge,
      resource,
      scope,
    });
  }

  function assertNoStore(hop, what) {
    assert.match(hop.headers.get('cache-control') ?? '', /no-store/i, `${what}: Cache-Control no-store`);
  }

  function assertOAuthError(hop, status, error, what) {
    assert.equal(hop.status, status, `${what}: status (body ${hop.body})`);
    assert.match(hop.contentType, /application\/json/i, `${what}: JSON error`);
    assert.equal(hop.json?.error, error, `${what}: error code (body ${hop.body})`);
    assertNoStore(hop, what);
  }

  async function token(form) {
    return postForm(meta.token_endpoint, form);
  }

  /** A fresh code and its token response (the consent page may be skipped for a browser that approved before). */
  async function newGrant(browser = flow.browser ?? new Browser()) {
    const pkce = makePkce();
    const state = randomToken(16);
    const r = await loginThroughBrowserless({ authorizeUrl: authorizeUrl({ state, pkce }), user: USER.name, password: USER.password, browser });
    assert.equal(r.state, state);
    assert.ok(r.code, `code (${r.error})\n${describeHops(r.hops)}`);
    const form = { grant_type: 'authorization_code', code: r.code, redirect_uri: redirectUri, client_id: client.client_id, code_verifier: pkce.verifier, resource: prm.resource };
    const hop = await token(form);
    assert.equal(hop.status, 200, `token: ${hop.body}`);
    assert.ok(hop.json.refresh_token, 'refresh token');
    return { form, tokens: hop.json };
  }

  step('metadata: RFC 8414 and RFC 9728 agree on the issuer', async () => {
    const res = await fetch(`${proxy.url}/.well-known/oauth-authorization-server`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/i);
    meta = await res.json();
    assert.equal(meta.issuer, proxy.url, 'issuer is server.public_url, byte for byte');
    assert.equal(meta.authorization_endpoint, `${proxy.url}/authorize`);
    assert.equal(meta.token_endpoint, `${proxy.url}/token`);
    assert.equal(meta.registration_endpoint, `${proxy.url}/register`);
    assert.equal(meta.revocation_endpoint, `${proxy.url}/revoke`);
    assert.deepEqual(meta.code_challenge_methods_supported, ['S256'], 'S256 only');
    assert.ok(meta.response_types_supported?.includes('code'));
    for (const g of ['authorization_code', 'refresh_token']) assert.ok(meta.grant_types_supported?.includes(g), `grant_types_supported has ${g}`);

    const r2 = await fetch(`${proxy.url}/.well-known/oauth-protected-resource/mcp`);
    assert.equal(r2.status, 200);
    assert.match(r2.headers.get('content-type') ?? '', /application\/json/i);
    prm = await r2.json();
    assert.equal(prm.resource, `${proxy.url}/mcp`);
    assert.equal(prm.authorization_servers?.[0], meta.issuer, 'PRM authorization_servers[0] === metadata issuer');

    const r3 = await fetch(`${proxy.url}/.well-known/oauth-protected-resource`);
    assert.equal(r3.status, 200);
    const root = await r3.json();
    assert.equal(root.authorization_servers?.[0], meta.issuer);
  });

  step('register: RFC 7591 dynamic client registration', async () => {
    const res = await fetch(meta.registration_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({
        client_name: CLIENT_NAME,
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      }),
    });
    const text = await res.text();
    assert.equal(res.status, 201, `register: ${text}`);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/i);
    client = JSON.parse(text);
    assert.equal(typeof client.client_id, 'string');
    assert.ok(client.client_id.length > 0);
    assert.deepEqual(client.redirect_uris, [redirectUri], 'redirect_uris echoed');
    assert.equal(client.client_name, CLIENT_NAME, 'client_name echoed');
    assert.equal(client.token_endpoint_auth_method, 'none');
  });

  const flow = {}; // shared by the steps below

  step('authorize → consent page → provider login → callback → code', async () => {
    assert.ok(client, 'needs the registration step');
    const pkce = makePkce();
    const state = randomToken(16);
    const browser = new Browser();
    const url = authorizeUrl({ state, pkce });
    const r = await loginThroughBrowserless({ authorizeUrl: url, user: USER.name, password: USER.password, browser });
    const hops = r.hops;
    const trail = `\n${describeHops(hops)}`;
    flow.browser = browser;

    // 1. /authorize shows the consent page (a fresh browser has approved nothing).
    assert.equal(hops[0].url, url);
    assert.equal(hops[0].status, 200, `/authorize shows the consent page${trail}`);
    assert.match(hops[0].contentType, /text\/html/i);
    assert.equal(r.consentHop, hops[0]);
    const page = hops[0].body;
    assert.ok(page.includes(CLIENT_NAME), 'consent page names the client');
    assert.ok(page.includes(new URL(redirectUri).host) || page.includes(new URL(redirectUri).hostname), 'consent page names the redirect host');
    const postForms = parseForms(page).filter((f) => f.method === 'post');
    assert.equal(postForms.length, 1, `exactly one POST form on the consent page${trail}`);
    const form = postForms[0];
    assert.equal(form.action, '/consent', 'the form posts to /consent');
    assert.ok(form.inputs.some((i) => i.type === 'hidden' && i.name), 'hidden inputs (CSRF token, request id)');
    const decisions = form.buttons.filter((b) => b.name === 'decision').map((b) => b.value);
    assert.ok(decisions.includes('approve'), `a submit button name="decision" value="approve" (found ${JSON.stringify(decisions)})`);
    assert.ok(decisions.includes('deny'), `a submit button name="decision" value="deny" (found ${JSON.stringify(decisions)})`);
    const xfo = hops[0].headers.get('x-frame-options') ?? '';
    const csp = hops[0].headers.get('content-security-policy') ?? '';
    assert.ok(/deny/i.test(xfo) || /frame-ancestors\s+'none'/i.test(csp), `consent page forbids framing (X-Frame-Options: ${xfo}; CSP: ${csp})`);
    assert.ok(hops[0].setCookies.length > 0, 'consent page sets a cookie');
    for (const raw of hops[0].setCookies) {
      const c = parseSetCookie(raw, new URL(hops[0].url));
      assert.ok(c.name.startsWith('__Host-'), `cookie ${c.name} has the __Host- prefix`);
      assert.ok(c.secure, `cookie ${c.name} is Secure`);
      assert.ok(c.httpOnly, `cookie ${c.name} is HttpOnly`);
      assert.equal(c.sameSite, 'lax', `cookie ${c.name} is SameSite=Lax`);
      assert.equal(c.attributes.path, '/', `cookie ${c.name} has Path=/`);
      assert.ok(!('domain' in c.attributes), `cookie ${c.name} has no Domain`);
    }
    assert.deepEqual(browser.jar.rejected, [], 'no cookie was refused by the jar');

    // 2. POST /consent sends the browser to the provider, with the proxy's own PKCE.
    const consentPost = hops[1];
    assert.equal(consentPost.method, 'POST');
    assert.equal(consentPost.url, `${proxy.url}/consent`);
    assert.match(consentPost.requestHeaders.cookie ?? '', /__Host-/, 'the consent POST carried the cookies');
    assert.ok([302, 303].includes(consentPost.status), `consent POST redirects${trail}`);
    assert.ok(consentPost.location.startsWith(`${providerMeta.authorization_endpoint}?`), `to the provider's authorization endpoint${trail}`);
    const upstream = new URL(consentPost.location).searchParams;
    assert.equal(upstream.get('client_id'), provider.client.clientId);
    assert.equal(upstream.get('redirect_uri'), `${proxy.url}/callback`);
    assert.equal(upstream.get('response_type'), 'code');
    assert.equal(upstream.get('code_challenge_method'), 'S256');
    assert.ok(upstream.get('state') && upstream.get('state') !== state, 'upstream state is the proxy’s own');
    assert.ok(upstream.get('scope')?.split(' ').includes('openid'));

    // 3. The provider logs alice in and returns to the proxy's /callback.
    assert.ok(r.loginHop, `the provider showed its login form${trail}`);
    const toCallback = hops.find((h) => h.location?.startsWith(`${proxy.url}/callback?`));
    assert.ok(toCallback, `the provider redirected to ${proxy.url}/callback${trail}`);
    assert.equal(new URL(toCallback.url).origin, new URL(provider.issuer).origin);
    const callbackHop = hops.at(-1);
    assert.ok(callbackHop.url.startsWith(`${proxy.url}/callback?`), `last hop is the proxy callback${trail}`);
    assert.ok([302, 303].includes(callbackHop.status), `/callback redirects${trail}`);
    assert.ok(callbackHop.location.startsWith(`${redirectUri}?`), `to the client's redirect_uri${trail}`);

    // 4. The client gets code, state and iss (RFC 9207), each once.
    assert.equal(r.error, undefined, `no error (${r.error}: ${r.errorDescription})`);
    assert.equal(r.query.getAll('code').length, 1);
    assert.ok(r.code);
    assert.deepEqual(r.query.getAll('state'), [state]);
    assert.deepEqual(r.query.getAll('iss'), [meta.issuer]);
    Object.assign(flow, { code: r.code, pkce, state });
  });

  step('token: code → Bearer access token and refresh token', async () => {
    assert.ok(flow.code, 'needs the authorize step');
    const hop = await token({
      grant_type: 'authorization_code',
      code: flow.code,
      redirect_uri: redirectUri,
      client_id: client.client_id,
      code_verifier: flow.pkce.verifier,
      resource: prm.resource,
    });
    assert.equal(hop.status, 200, `token: ${hop.body}`);
    assert.match(hop.contentType, /application\/json/i);
    assertNoStore(hop, 'token response');
    const t = hop.json;
    assert.equal(t.token_type, 'Bearer');
    assert.equal(typeof t.access_token, 'string');
    assert.ok(t.access_token.length >= 32, 'access token has ≥ 256 bits');
    assert.ok(Number.isInteger(t.expires_in) && t.expires_in > 0, `expires_in ${t.expires_in}`);
    assert.equal(typeof t.refresh_token, 'string');
    assert.notEqual(t.refresh_token, t.access_token);
    flow.tokens = t;
  });

  step('refresh: new tokens, and the refresh token rotates', async () => {
    assert.ok(flow.tokens, 'needs the token step');
    const hop = await token({ grant_type: 'refresh_token', refresh_token: flow.tokens.refresh_token, client_id: client.client_id });
    assert.equal(hop.status, 200, `refresh: ${hop.body}`);
    assertNoStore(hop, 'refresh response');
    const t = hop.json;
    assert.equal(t.token_type, 'Bearer');
    assert.ok(t.access_token && t.access_token !== flow.tokens.access_token, 'a new access token');
    assert.ok(t.refresh_token && t.refresh_token !== flow.tokens.refresh_token, 'a new (rotated) refresh token');
    flow.refreshed = t;
  });

  step('revoke: RFC 7009 revocation of the refresh token', async () => {
    assert.ok(flow.refreshed, 'needs the refresh step');
    const hop = await postForm(meta.revocation_endpoint, {
      token: flow.refreshed.refresh_token,
      token_type_hint: 'refresh_token',
      client_id: client.client_id,
    });
    assert.equal(hop.status, 200, `revoke: ${hop.body}`);
  });

  step('refresh with the revoked token gives invalid_grant', async () => {
    assert.ok(flow.refreshed, 'needs the refresh step');
    const hop = await token({ grant_type: 'refresh_token', refresh_token: flow.refreshed.refresh_token, client_id: client.client_id });
    assertOAuthError(hop, 400, 'invalid_grant', 'refresh after revoke');
  });

  step('replaying a code gives invalid_grant and revokes what it issued', async () => {
    assert.ok(client, 'needs the registration step');
    const { form, tokens } = await newGrant();
    const replay = await token(form);
    assertOAuthError(replay, 400, 'invalid_grant', 'code replay');
    // RFC 6749 §4.1.2 / DESIGN invariant 4: the replay revokes the grant.
    const hop = await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: client.client_id });
    assertOAuthError(hop, 400, 'invalid_grant', 'refresh after code replay');
  });

  step('the previous refresh token works until the new one is used; after that, reuse revokes the grant', async () => {
    assert.ok(client, 'needs the registration step');
    const { tokens: t1 } = await newGrant();
    const refresh = (rt) => token({ grant_type: 'refresh_token', refresh_token: rt, client_id: client.client_id });
    const h2 = await refresh(t1.refresh_token);
    assert.equal(h2.status, 200, h2.body);
    // An immediate duplicate (a parallel retry) is refused without harm...
    const dup = await refresh(t1.refresh_token);
    assert.equal(dup.status, 503, `an immediate duplicate: ${dup.body}`);
    // ...and after the 2 s cool-down a lost response is recovered from:
    // t1 still works while t2 is unused.
    await new Promise((r) => setTimeout(r, 2200));
    const h2b = await refresh(t1.refresh_token);
    assert.equal(h2b.status, 200, `previous token before the new one is used: ${h2b.body}`);
    // Using the newest retires the one before it.
    const h3 = await refresh(h2b.json.refresh_token);
    assert.equal(h3.status, 200, h3.body);
    const replay = await refresh(t1.refresh_token);
    assertOAuthError(replay, 400, 'invalid_grant', 'rotated refresh token reuse');
    const after = await refresh(h3.json.refresh_token);
    assertOAuthError(after, 400, 'invalid_grant', 'refresh after the grant was revoked by reuse');
  });

  step('consent "deny": a page, never a redirect to the unapproved redirect_uri (invariant 12); the provider is never asked', async () => {
    assert.ok(client, 'needs the registration step');
    const pkce = makePkce();
    const state = randomToken(16);
    const browser = new Browser(); // fresh: no remembered approval
    let err;
    try {
      await loginThroughBrowserless({ authorizeUrl: authorizeUrl({ state, pkce }), decision: 'deny', browser });
    } catch (e) {
      err = e;
    }
    assert.ok(err?.hops, `the flow stops on a page (${err?.message ?? 'it reached the redirect_uri'})`);
    const trail = `\n${describeHops(err.hops)}`;
    assert.equal(err.hops[0].status, 200, `consent page${trail}`);
    assert.equal(err.hops.length, 2, `authorize, then the consent POST answered with a page${trail}`);
    const post = err.hops[1];
    assert.equal(post.method, 'POST');
    assert.equal(post.status, 403, `deny is a page${trail}`);
    assert.ok(!isRedirect(post.status) && !post.location, `no redirect${trail}`);
    assert.match(post.contentType ?? '', /html/i);
    assert.ok(!err.hops.some((h) => h.url.startsWith(provider.issuer)), 'the provider was not involved');
  });

  step('authorize without PKCE is refused, with an error page or a redirect carrying an error', async () => {
    assert.ok(client, 'needs the registration step');
    const state = randomToken(16);
    const url = buildAuthorizeUrl(meta.authorization_endpoint, { clientId: client.client_id, redirectUri, state, resource: prm.resource });
    const hop = await new Browser().get(url);
    if (isRedirect(hop.status)) {
      const q = new URL(hop.location).searchParams;
      assert.ok(hop.location.startsWith(`${redirectUri}?`), `redirects only to the registered redirect_uri, got ${hop.location}`);
      assert.equal(q.get('error'), 'invalid_request');
      assert.equal(q.get('state'), state);
      assert.equal(q.get('iss'), meta.issuer);
    } else {
      assert.ok(hop.status >= 400, `refused (${hop.status})`);
      assert.ok(!/name\s*=\s*["']?decision/i.test(hop.body ?? ''), 'no consent form for a request without PKCE');
    }
  });

  step('an unregistered redirect_uri gets an error page, never a redirect', async () => {
    assert.ok(client, 'needs the registration step');
    const pkce = makePkce();
    const url = buildAuthorizeUrl(meta.authorization_endpoint, {
      clientId: client.client_id,
      redirectUri: 'https://attacker.example/cb',
      state: 'x',
      codeChallenge: pkce.challenge,
      resource: prm.resource,
    });
    const hop = await new Browser().get(url);
    assert.ok(!isRedirect(hop.status), `no redirect (got ${hop.status} ${hop.location ?? ''})`);
    assert.ok(hop.status >= 400, `an error status (got ${hop.status})`);
  });
});
