// Enterprise-Managed Authorization (SEP-990, ID-JAG) end to end: the e2e
// OpenID provider signs a person in to an agent application and trades the
// id_token for an ID-JAG (RFC 8693); the official Python MCP SDK
// (IdentityAssertionOAuthProvider, PyPI `mcp` 2.3) presents it to the
// proxy's token endpoint (RFC 7523 jwt-bearer, pre-registered client, no
// browser, no consent page) and calls `whoami` through the proxy. Then the
// refusals, each an OAuth error and no token: a person the provider
// refuses, one the proxy's login() refuses, expired, replayed, wrong
// audience, wrong client, unsigned, foreign key, wrong typ.
//
// Run: node --test id-jag.test.mjs (needs tests/e2e/.venv with `mcp==2.3.*`,
// which run.sh installs; skipped without it unless CI is set).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startProvider, TOKEN_EXCHANGE, ID_JAG_TOKEN_TYPE } from './provider.mjs';
import { E2E_DIR, Browser, buildAuthorizeUrl, loginThroughBrowserless, makePkce, postForm, removeOnExit, startProxy } from './lib/index.mjs';
import { sha256, startWhoami } from './lib/whoami.mjs';

const PYTHON = path.join(E2E_DIR, '.venv', 'bin', 'python');
const skip = fs.existsSync(PYTHON) || process.env.CI ? false : 'no tests/e2e/.venv (python3 -m venv tests/e2e/.venv && tests/e2e/.venv/bin/pip install "mcp==2.3.*")';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const AGENT = { clientId: 'e2e-agent', clientSecret: 'e2e-agent-secret-0123456789abcdef', redirectUri: 'http://127.0.0.1:9/agent-callback' };
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');

describe('ID-JAG: the Python MCP SDK through the proxy, no browser', { skip }, () => {
  let provider;
  let whoami;
  let proxy;
  let dir;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'id-jag-e2e-'));
    removeOnExit(dir);
    provider = await startProvider({ idJagClients: [{ ...AGENT, redirectUris: [AGENT.redirectUri] }] });
    whoami = await startWhoami({ logFile: path.join(dir, 'whoami.log') });
    // The default policy's authorize(), and a login() that keeps bob out.
    const policy = path.join(dir, 'policy.rhai');
    fs.writeFileSync(
      policy,
      `fn login(user) { if user.email == "bob@example.com" { return deny(403, "bob is not allowed here"); } allow() }
${fs.readFileSync(path.join(E2E_DIR, '..', '..', 'policies', 'default.rhai'), 'utf8')}`,
    );
    proxy = await startProxy({
      issuer: provider.issuer,
      downstreamUrl: whoami.mcpUrl,
      config: { policy: { path: policy } },
      extraToml: `
[[clients]]
id = "${AGENT.clientId}"
name = "E2E agent"
secret_hash = "${sha256(AGENT.clientSecret)}"
grant_types = ["${JWT_BEARER}"]
`,
    });
  });

  after(async () => {
    await proxy?.close();
    await whoami?.close();
    await provider?.close();
  });

  /** Signs `user` in to the agent application at the provider; its id_token. */
  async function idToken(user) {
    const pkce = makePkce();
    const authorizeUrl = buildAuthorizeUrl(`${provider.issuer}/auth`, {
      clientId: AGENT.clientId,
      redirectUri: AGENT.redirectUri,
      state: crypto.randomBytes(8).toString('hex'),
      codeChallenge: pkce.challenge,
      scope: 'openid email profile groups',
    });
    const login = await loginThroughBrowserless({ authorizeUrl, user, password: `${user}-password`, redirectUri: AGENT.redirectUri, browser: new Browser() });
    assert.ok(login.code, `no code for ${user}: ${login.error} ${login.errorDescription}`);
    const r = await postForm(
      `${provider.issuer}/token`,
      { grant_type: 'authorization_code', code: login.code, redirect_uri: AGENT.redirectUri, code_verifier: pkce.verifier },
      { basic: [AGENT.clientId, AGENT.clientSecret] },
    );
    assert.equal(r.status, 200, r.body);
    return JSON.parse(r.body).id_token;
  }

  /** RFC 8693 at the provider: the id_token for an ID-JAG. */
  async function exchange(subjectToken, { audience = proxy.issuer, resource = `${proxy.url}/mcp` } = {}) {
    const r = await postForm(
      `${provider.issuer}/token`,
      { grant_type: TOKEN_EXCHANGE, requested_token_type: ID_JAG_TOKEN_TYPE, subject_token: subjectToken, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token', audience, resource },
      { basic: [AGENT.clientId, AGENT.clientSecret] },
    );
    return { status: r.status, body: JSON.parse(r.body) };
  }

  /** RFC 7523 at the proxy. */
  async function present(assertion) {
    const r = await postForm(`${proxy.url}/token`, { grant_type: JWT_BEARER, assertion, resource: `${proxy.url}/mcp` }, { basic: [AGENT.clientId, AGENT.clientSecret] });
    return { status: r.status, body: JSON.parse(r.body) };
  }

  function refused(result, error, why) {
    assert.equal(result.status, 400, JSON.stringify(result.body));
    assert.equal(result.body.error, error, JSON.stringify(result.body));
    assert.equal(result.body.access_token, undefined);
    assert.match(result.body.error_description, why);
  }

  function runPython(input) {
    return new Promise((resolve, reject) => {
      const child = spawn(PYTHON, [path.join(E2E_DIR, 'id_jag_client.py')], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      child.on('error', reject);
      child.on('close', (code) => {
        const line = out.trim().split('\n').pop() ?? '';
        try {
          resolve({ code, ...JSON.parse(line), stderr: err });
        } catch {
          reject(new Error(`python exited ${code}: ${out}\n${err}`));
        }
      });
      child.stdin.end(JSON.stringify(input));
    });
  }

  test('the SDK trades alice\'s ID-JAG for a token and calls whoami', async () => {
    const metadata = await (await fetch(`${proxy.url}/.well-known/oauth-authorization-server`)).json();
    assert.ok(metadata.grant_types_supported.includes(JWT_BEARER));
    assert.deepEqual(metadata.authorization_grant_profiles_supported, ['urn:ietf:params:oauth:grant-profile:id-jag']);

    const result = await runPython({
      mcp_url: `${proxy.url}/mcp`,
      issuer: proxy.issuer,
      client_id: AGENT.clientId,
      client_secret: AGENT.clientSecret,
      idp_token_endpoint: `${provider.issuer}/token`,
      idp_client_id: AGENT.clientId,
      idp_client_secret: AGENT.clientSecret,
      id_token: await idToken('alice'),
    });
    if (process.env.E2E_VERBOSE === '1' || process.env.ID_JAG_FLOW) {
      const out = process.env.ID_JAG_FLOW;
      if (out) fs.writeFileSync(out, JSON.stringify({ hops: result.hops, whoami: result.whoami }, null, 2));
      else console.error(JSON.stringify(result.hops, null, 2));
    }
    assert.equal(result.code, 0, `${result.error}\n${result.stderr}\n${JSON.stringify(result.hops, null, 2)}`);
    assert.match(result.whoami, /alice@example\.com/);
    // What went over the wire: 401, metadata from the configured issuer,
    // token exchange at the provider, jwt-bearer at the proxy, the retry.
    const hop = (pred) => result.hops.find(pred);
    assert.equal(hop((h) => h.url === `${proxy.url}/mcp`)?.status, 401);
    assert.equal(hop((h) => h.url === `${proxy.url}/.well-known/oauth-authorization-server`)?.status, 200);
    const leg1 = hop((h) => h.form?.grant_type === TOKEN_EXCHANGE);
    assert.equal(leg1.status, 200);
    assert.equal(leg1.form.audience, proxy.issuer);
    assert.equal(leg1.response.issued_token_type, ID_JAG_TOKEN_TYPE);
    const leg2 = hop((h) => h.form?.grant_type === JWT_BEARER);
    assert.equal(leg2.url, `${proxy.url}/token`);
    assert.equal(leg2.status, 200);
    assert.equal(leg2.form.resource, `${proxy.url}/mcp`);
    assert.equal(leg2.response.refresh_token, undefined, 'no refresh token for an ID-JAG');
    assert.ok(result.hops.filter((h) => h.url === `${proxy.url}/mcp` && h.status === 200).length >= 2);
    // The downstream saw alice, as after a browser sign-in.
    const seen = whoami.requests().filter((e) => e.headers?.['x-user-email']);
    assert.ok(seen.some((e) => e.headers['x-user-email'] === 'alice@example.com'), JSON.stringify(seen.slice(-1)));
  });

  test('refusals: each an OAuth error and no token', async () => {
    // A person the provider refuses gets no ID-JAG at all.
    const carolToken = await idToken('carol');
    await provider.admin.disable('carol');
    const carol = await exchange(carolToken);
    assert.equal(carol.status, 400);
    assert.equal(carol.body.error, 'invalid_grant');
    await provider.admin.enable('carol');

    // A person the proxy's login() refuses.
    const bob = await exchange(await idToken('bob'));
    assert.equal(bob.status, 200, JSON.stringify(bob.body));
    refused(await present(bob.body.access_token), 'invalid_grant', /bob is not allowed here/);

    // Replayed.
    const alice = await idToken('alice');
    const once = (await exchange(alice)).body.access_token;
    assert.equal((await present(once)).status, 200);
    refused(await present(once), 'invalid_grant', /already used/);

    // Wrong audience (minted by the provider for another authorization server).
    const other = await exchange(alice, { audience: 'https://other-as.example.com' });
    refused(await present(other.body.access_token), 'invalid_grant', /aud/);

    // Hand-made: expired, wrong client, wrong typ, unsigned, foreign key.
    const now = Math.floor(Date.now() / 1000);
    const claims = (extra = {}) => ({
      iss: provider.issuer, sub: 'alice', email: 'alice@example.com', aud: proxy.issuer, client_id: AGENT.clientId,
      jti: crypto.randomUUID(), iat: now, exp: now + 300, resource: `${proxy.url}/mcp`, ...extra,
    });
    refused(await present(provider.mintIdJag(claims({ iat: now - 900, exp: now - 600 }))), 'invalid_grant', /expired/);
    refused(await present(provider.mintIdJag(claims({ client_id: 'someone-else' }))), 'invalid_grant', /another client/);
    refused(await present(provider.mintIdJag(claims(), { header: { typ: 'JWT' } })), 'invalid_grant', /typ/);
    refused(await present(`${b64({ alg: 'none', typ: 'oauth-id-jag+jwt' })}.${b64(claims())}.`), 'invalid_grant', /unsigned/);
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const input = `${b64({ alg: 'RS256', typ: 'oauth-id-jag+jwt', kid: provider.signingKid })}.${b64(claims())}`;
    const forged = `${input}.${crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
    refused(await present(forged), 'invalid_grant', /signature/);
    // And the good one still works after all that.
    assert.equal((await present(provider.mintIdJag(claims()))).status, 200);
  });
});
