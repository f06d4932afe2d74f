#!/usr/bin/env node
// A real OpenID Connect provider for the end-to-end tests, built on the
// `oidc-provider` package (the certified Node.js implementation).
//
// It plays the organisation's identity provider that mcp-oauth-proxy sits in
// front of: one confidential client (the proxy), a handful of users with
// `email`, `name` and `groups` claims, a plain HTML login form (no consent
// screen: this client's grants are approved automatically), refresh tokens,
// and a small admin API so tests can expire, revoke and refuse things.
//
// Run as a child process:
//   node provider.mjs [--port 0] [--client-id ID] [--client-secret S]
//                     [--redirect-uri URI]... [--access-ttl SECONDS]
// or configure it with the environment (PROVIDER_PORT, PROVIDER_CLIENT_ID,
// PROVIDER_CLIENT_SECRET, PROVIDER_REDIRECT_URIS (comma separated),
// PROVIDER_ACCESS_TTL, PROVIDER_ID_TOKEN_TTL, PROVIDER_REFRESH_TTL,
// PROVIDER_AUTH_METHOD, PROVIDER_ROTATE_REFRESH=0|1,
// PROVIDER_STRICT_OFFLINE_ACCESS=1, PROVIDER_DEFAULT_SCOPE, PROVIDER_DEBUG=1).
// When it listens it prints one JSON line to stdout:
//   {"ready":true,"issuer":"http://localhost:1234","port":1234}
// and it stops on SIGTERM / SIGINT.
//
// Or import it:  const p = await startProvider({ port: 0, redirectUris: [...] })
//   -> { issuer, port, client, users, admin, close() }
//
// Admin API (JSON, loopback only, no auth — this is a test fixture):
//   GET  /__admin/state                   users, disabled users, ttl, token events
//   POST /__admin/users/NAME/disable      login and refresh for NAME now fail
//   POST /__admin/users/NAME/enable
//   POST /__admin/users/NAME/revoke       destroys NAME's grants and tokens
//                                         (a later refresh gets invalid_grant)
//   POST /__admin/ttl?access=S&id_token=S&refresh=S   change lifetimes for new tokens
//   POST /__admin/events/clear
//
// ID-JAGs (Enterprise-Managed Authorization, SEP-990): with `idJagClients`
// (`startProvider({ idJagClients: [{ clientId, clientSecret, redirectUris }] })`)
// those clients may sign people in and then trade the id_token for an
// Identity Assertion JWT Authorization Grant by RFC 8693 token exchange:
//   POST /token grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//     requested_token_type=urn:ietf:params:oauth:token-type:id-jag
//     subject_token=<id_token> subject_token_type=urn:ietf:params:oauth:token-type:id_token
//     audience=<the MCP authorization server's issuer> resource=<the MCP server> [scope]
//   -> { access_token: <ID-JAG>, issued_token_type: ...:id-jag, token_type: "N_A", expires_in }
// The ID-JAG (typ oauth-id-jag+jwt, RS256 with the provider's key) carries
// iss, sub, aud, client_id (the same id at the MCP server), jti, iat, exp,
// resource, scope and the person's email, name and groups. A disabled
// person gets invalid_grant. `p.mintIdJag(claims, { header })` signs
// arbitrary ones (tests' negative cases).

import http from 'node:http';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import Provider, { errors } from 'oidc-provider';

/** The people who can log in. Passwords are `<name>-password`. */
export const USERS = {
  alice: {
    sub: 'alice',
    password: 'alice-password',
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Anderson',
    given_name: 'Alice',
    family_name: 'Anderson',
    groups: ['engineering', 'admins'],
  },
  bob: {
    sub: 'bob',
    password: 'bob-password',
    email: 'bob@example.com',
    email_verified: true,
    name: 'Bob Brown',
    given_name: 'Bob',
    family_name: 'Brown',
    groups: ['sales'],
  },
  carol: {
    // No groups and an unverified address: the cases policies must handle.
    sub: 'carol',
    password: 'carol-password',
    email: 'carol@example.net',
    email_verified: false,
    name: 'Carol Clark',
    given_name: 'Carol',
    family_name: 'Clark',
    groups: [],
  },
};

// The one API resource JWT access tokens are for (`jwtAccessTokenBytes`).
export const UPSTREAM_API = 'urn:mcp-oauth-proxy:e2e-api';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ID_JAG_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';
const ID_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id_token';

export const DEFAULT_CLIENT = {
  clientId: 'mcp-oauth-proxy',
  clientSecret: 'e2e-upstream-client-secret',
};

function intOr(value, fallback) {
  if (value === undefined || value === null || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`expected a whole number of seconds, got ${JSON.stringify(value)}`);
  return n;
}

function listOr(value, fallback) {
  if (Array.isArray(value)) return value;
  if (typeof value === 'string' && value.trim() !== '') return value.split(/[,\s]+/).filter(Boolean);
  return fallback;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

async function readForm(req, limit = 16 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function sendJson(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.end(JSON.stringify(body));
}

function loginPage({ uid, clientId, error, username = '' }) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in - E2E Identity Provider</title></head>
<body>
<main>
<h1>E2E Identity Provider</h1>
<p>Sign in to continue to <strong>${escapeHtml(clientId)}</strong>.</p>
${error ? `<p role="alert" class="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Username <input type="text" name="username" id="username" value="${escapeHtml(username)}" required autofocus></label>
  <label>Password <input type="password" name="password" id="password" required></label>
  <button type="submit" id="sign-in">Sign in</button>
</form>
<form method="post" action="/interaction/${escapeHtml(uid)}/abort">
  <button type="submit" id="cancel">Cancel</button>
</form>
</main>
</body>
</html>`;
}

/**
 * Start the provider.
 * @param {object} [opts]
 * @param {number} [opts.port=0]            0 picks a free port
 * @param {string} [opts.host='127.0.0.1']  interface to listen on
 * @param {string} [opts.clientId]
 * @param {string} [opts.clientSecret]
 * @param {string[]} [opts.redirectUris]    the proxy's `<public_url>/callback`
 * @param {string} [opts.tokenEndpointAuthMethod='client_secret_basic']
 * @param {number} [opts.accessTtl=3600]    access token lifetime, seconds
 * @param {number} [opts.idTokenTtl=3600]
 * @param {number} [opts.refreshTtl=86400]
 * @param {boolean} [opts.rotateRefresh=true] every refresh returns a new refresh token
 * @param {boolean} [opts.strictOfflineAccess=false] honour offline_access only with the
 *                                          client's own prompt=consent (OIDC Core §11)
 * @param {string} [opts.defaultScope]     scope for authorization requests that carry none
 * @param {boolean} [opts.debug=false]      log every request to stderr
 * @param {number} [opts.jwtAccessTokenBytes=0] 0: opaque access tokens (43 characters);
 *                                          otherwise RS256 JWT access tokens, as Okta, Entra ID
 *                                          and Keycloak issue, padded to about this many bytes
 */
export async function startProvider(opts = {}) {
  const env = process.env;
  const host = opts.host ?? '127.0.0.1';
  const requestedPort = intOr(opts.port ?? env.PROVIDER_PORT, 0);
  const clientId = opts.clientId ?? env.PROVIDER_CLIENT_ID ?? DEFAULT_CLIENT.clientId;
  const clientSecret = opts.clientSecret ?? env.PROVIDER_CLIENT_SECRET ?? DEFAULT_CLIENT.clientSecret;
  const authMethod = opts.tokenEndpointAuthMethod ?? env.PROVIDER_AUTH_METHOD ?? 'client_secret_basic';
  const rotateRefresh = opts.rotateRefresh ?? (env.PROVIDER_ROTATE_REFRESH ? env.PROVIDER_ROTATE_REFRESH !== '0' : true);
  const debug = opts.debug ?? env.PROVIDER_DEBUG === '1';
  // true: refresh tokens only when the client itself sends prompt=consent.
  const defaultScope = opts.defaultScope ?? env.PROVIDER_DEFAULT_SCOPE;
  const strictOfflineAccess = opts.strictOfflineAccess ?? env.PROVIDER_STRICT_OFFLINE_ACCESS === '1';
  const jwtAccessTokenBytes = intOr(opts.jwtAccessTokenBytes ?? env.PROVIDER_JWT_ACCESS_TOKEN_BYTES, 0);
  const log = (...args) => console.error('[provider]', ...args);

  // Lifetimes are read on every issue, so /__admin/ttl takes effect at once.
  const ttl = {
    access: intOr(opts.accessTtl ?? env.PROVIDER_ACCESS_TTL, 3600),
    idToken: intOr(opts.idTokenTtl ?? env.PROVIDER_ID_TOKEN_TTL, 3600),
    refresh: intOr(opts.refreshTtl ?? env.PROVIDER_REFRESH_TTL, 86400),
  };
  const disabled = new Set();
  const grantsByAccount = new Map(); // accountId -> Set(grantId)
  const events = []; // what happened at the token endpoint, for assertions
  const rememberGrant = (accountId, grantId) => {
    if (!grantsByAccount.has(accountId)) grantsByAccount.set(accountId, new Set());
    grantsByAccount.get(accountId).add(grantId);
  };

  // The issuer needs the port, so bind first, then build the provider.
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(requestedPort, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = server.address().port;
  const issuer = `http://localhost:${port}`;
  const redirectUris = listOr(opts.redirectUris ?? env.PROVIDER_REDIRECT_URIS, [`http://localhost:${port}/unused-callback`]);

  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'e2e-rs256', alg: 'RS256', use: 'sig' };

  const idJagClients = opts.idJagClients ?? [];
  const idJagTtl = intOr(opts.idJagTtl, 300);
  /** Signs `claims` as an ID-JAG with the provider's key (header overridable). */
  const mintIdJag = (claims, { header = {} } = {}) => {
    const h = { alg: 'RS256', typ: 'oauth-id-jag+jwt', kid: signingKey.kid, ...header };
    const input = `${Buffer.from(JSON.stringify(h)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
    const signature = crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url');
    return `${input}.${signature}`;
  };

  const configuration = {
    clients: [
      ...idJagClients.map((c) => ({
        client_id: c.clientId,
        client_secret: c.clientSecret,
        client_name: `${c.clientId} (ID-JAG agent)`,
        redirect_uris: c.redirectUris,
        response_types: ['code'],
        grant_types: ['authorization_code', TOKEN_EXCHANGE],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'RS256',
      })),
      {
        client_id: clientId,
        client_secret: clientSecret,
        client_name: 'mcp-oauth-proxy (e2e)',
        redirect_uris: redirectUris,
        response_types: ['code'],
        grant_types: ['authorization_code', 'refresh_token'],
        token_endpoint_auth_method: authMethod,
        id_token_signed_response_alg: 'RS256',
      },
    ],
    jwks: { keys: [signingKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name'],
      groups: ['groups'],
    },
    // Put the scope-granted claims in the id_token itself, as Okta, Entra and
    // Cloudflare Access do, so the proxy needs no userinfo call.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      // The proxy asks upstream for the user's identity, not for an audience.
      // With `jwtAccessTokenBytes`, every token is for one API resource (the
      // only way oidc-provider issues JWT access tokens), whatever the proxy asks.
      resourceIndicators: jwtAccessTokenBytes
        ? {
            enabled: true,
            defaultResource: () => UPSTREAM_API,
            useGrantedResource: () => true,
            getResourceServerInfo: () => ({
              scope: 'api',
              audience: UPSTREAM_API,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'RS256' } },
            }),
          }
        : { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    ttl: {
      AccessToken: () => ttl.access,
      IdToken: () => ttl.idToken,
      RefreshToken: () => ttl.refresh,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 3600,
      Grant: () => ttl.refresh,
    },
    // Pads a JWT access token to the configured size: real providers put
    // groups, roles and tenant claims there.
    extraTokenClaims: async (_ctx, token) => {
      if (!jwtAccessTokenBytes || token.kind !== 'AccessToken') return undefined;
      // Header, signature and the standard claims take about 684 bytes;
      // base64url turns 3 bytes of padding into 4.
      return { ext: 'x'.repeat(Math.max(0, Math.floor(((jwtAccessTokenBytes - 684) * 3) / 4))) };
    },
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    rotateRefreshToken: () => rotateRefresh,
    async findAccount(_ctx, id) {
      const user = USERS[id];
      if (!user || disabled.has(id)) return undefined;
      return {
        accountId: id,
        async claims() {
          const { password: _password, ...claims } = user;
          return { ...claims, groups: [...user.groups] };
        },
      };
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    // Only login is interactive: this client's grants are approved automatically,
    // extended with whatever scopes the current request asks for.
    async loadExistingGrant(ctx) {
      const { client, session, params } = ctx.oidc;
      if (!session?.accountId) return undefined;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!grant) {
        grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      }
      if (params.scope) grant.addOIDCScope(String(params.scope));
      if (params.claims) {
        try {
          const requested = JSON.parse(params.claims);
          const names = new Set([...Object.keys(requested.id_token ?? {}), ...Object.keys(requested.userinfo ?? {})]);
          if (names.size) grant.addOIDCClaims([...names]);
        } catch {
          /* the provider itself rejects malformed claims */
        }
      }
      rememberGrant(session.accountId, await grant.save());
      return grant;
    },
    renderError(ctx, out, error) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><html><head><meta charset="utf-8"><title>Provider error</title></head><body><h1>Provider error</h1><pre>${escapeHtml(
        JSON.stringify(out, null, 2),
      )}</pre></body></html>`;
      if (debug) log('renderError', error?.message);
    },
  };

  const provider = new Provider(issuer, configuration);
  // RFC 8693 token exchange: an id_token of this provider for an ID-JAG
  // (draft-ietf-oauth-identity-assertion-authz-grant §4.3).
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    async (ctx) => {
      const { params, client } = ctx.oidc;
      if (params.requested_token_type !== ID_JAG_TOKEN_TYPE) {
        throw new errors.InvalidRequest(`requested_token_type must be ${ID_JAG_TOKEN_TYPE}`);
      }
      if (params.subject_token_type !== ID_TOKEN_TYPE) {
        throw new errors.InvalidRequest(`subject_token_type must be ${ID_TOKEN_TYPE}`);
      }
      if (!params.audience) throw new errors.InvalidRequest('audience (the authorization server) is required');
      let payload;
      try {
        ({ payload } = await provider.IdToken.validate(params.subject_token, client));
      } catch (e) {
        throw new errors.InvalidGrant(`subject_token is not this client's id_token: ${e.message}`);
      }
      if (payload.exp * 1000 < Date.now()) throw new errors.InvalidGrant('subject_token has expired');
      const user = Object.hasOwn(USERS, payload.sub) ? USERS[payload.sub] : undefined;
      if (!user || disabled.has(payload.sub)) throw new errors.InvalidGrant('this person may not use that application');
      const now = Math.floor(Date.now() / 1000);
      const claims = {
        iss: issuer,
        sub: user.sub,
        aud: params.audience,
        client_id: client.clientId,
        jti: crypto.randomUUID(),
        iat: now,
        exp: now + idJagTtl,
        ...(params.resource ? { resource: params.resource } : {}),
        ...(params.scope ? { scope: params.scope } : {}),
        auth_time: payload.auth_time,
        email: user.email,
        email_verified: user.email_verified,
        name: user.name,
        groups: [...user.groups],
      };
      events.push({ at: new Date().toISOString(), grant_type: TOKEN_EXCHANGE, client_id: client.clientId, account: user.sub, audience: params.audience, resource: params.resource });
      ctx.body = {
        access_token: mintIdJag(claims),
        issued_token_type: ID_JAG_TOKEN_TYPE,
        token_type: 'N_A',
        expires_in: idJagTtl,
        ...(params.scope ? { scope: params.scope } : {}),
      };
    },
    ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope'],
  );
  provider.on('server_error', (_ctx, err) => log('server_error', err));
  provider.on('grant.success', (ctx) => {
    events.push({
      at: new Date().toISOString(),
      grant_type: ctx.oidc.params?.grant_type,
      client_id: ctx.oidc.client?.clientId,
      account: ctx.oidc.entities?.Account?.accountId ?? ctx.oidc.account?.accountId,
    });
  });
  provider.on('grant.error', (ctx, err) => {
    events.push({ at: new Date().toISOString(), grant_type: ctx.oidc.params?.grant_type, error: err.error, error_description: err.error_description });
    if (debug) log('grant.error', err.error, err.error_description);
  });
  if (debug) provider.on('authorization.error', (_ctx, err) => log('authorization.error', err.error, err.error_description));

  async function revokeUser(name) {
    const ids = [...(grantsByAccount.get(name) ?? [])];
    for (const id of ids) {
      await Promise.all([
        provider.AccessToken.revokeByGrantId(id),
        provider.RefreshToken.revokeByGrantId(id),
        provider.AuthorizationCode.revokeByGrantId(id),
        provider.Grant.adapter.destroy(id),
      ]);
    }
    grantsByAccount.delete(name);
    return ids.length;
  }

  async function handleInteraction(req, res, url) {
    const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?$/);
    if (!match) return sendJson(res, 404, { error: 'not_found' });
    const [, uid, action] = match;
    res.setHeader('Cache-Control', 'no-store');
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error('interaction uid does not match its cookie');
    const { prompt, params } = details;

    // Should a consent prompt ever come up (it should not), approve it: this
    // provider has no consent screen for its one client.
    if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      if (prompt.details.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
      }
      const grantId = await grant.save();
      rememberGrant(details.session.accountId, grantId);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    if (prompt.name !== 'login') throw new Error(`unexpected interaction prompt ${prompt.name}`);

    if (req.method === 'GET' && !action) {
      res.statusCode = 200;
      res.setHeader('Content-Type', 'text/html; charset=utf-8');
      res.setHeader('X-Frame-Options', 'DENY');
      return res.end(loginPage({ uid, clientId: params.client_id }));
    }
    if (req.method === 'POST' && action === 'abort') {
      return provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: 'End-User aborted interaction' },
        { mergeWithLastSubmission: false },
      );
    }
    if (req.method === 'POST' && action === 'login') {
      const form = await readForm(req);
      const username = form.get('username') ?? '';
      const password = form.get('password') ?? '';
      const user = Object.hasOwn(USERS, username) ? USERS[username] : undefined;
      const ok =
        user &&
        !disabled.has(username) &&
        password.length === user.password.length &&
        crypto.timingSafeEqual(Buffer.from(password), Buffer.from(user.password));
      if (!ok) {
        res.statusCode = 200;
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        return res.end(loginPage({ uid, clientId: params.client_id, username, error: 'Invalid username or password.' }));
      }
      // Approve this client's request in the same step, so a prompt=consent
      // does not cost a second interaction round trip.
      const grant = new provider.Grant({ accountId: username, clientId: params.client_id });
      if (params.scope) grant.addOIDCScope(String(params.scope));
      const grantId = await grant.save();
      rememberGrant(username, grantId);
      return provider.interactionFinished(
        req,
        res,
        { login: { accountId: username }, consent: { grantId } },
        { mergeWithLastSubmission: false },
      );
    }
    return sendJson(res, 405, { error: 'method_not_allowed' });
  }

  async function handleAdmin(req, res, url) {
    if (req.method === 'GET' && url.pathname === '/__admin/state') {
      return sendJson(res, 200, {
        issuer,
        client_id: clientId,
        redirect_uris: redirectUris,
        users: Object.keys(USERS),
        disabled: [...disabled],
        ttl,
        rotate_refresh: rotateRefresh,
        events,
      });
    }
    if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });
    if (url.pathname === '/__admin/events/clear') {
      events.length = 0;
      return sendJson(res, 200, { ok: true });
    }
    if (url.pathname === '/__admin/ttl') {
      for (const [param, key] of [['access', 'access'], ['id_token', 'idToken'], ['refresh', 'refresh']]) {
        if (url.searchParams.has(param)) ttl[key] = intOr(url.searchParams.get(param), ttl[key]);
      }
      return sendJson(res, 200, { ttl });
    }
    const m = url.pathname.match(/^\/__admin\/users\/([^/]+)\/(disable|enable|revoke)$/);
    if (m) {
      const [, name, verb] = m;
      if (!Object.hasOwn(USERS, name)) return sendJson(res, 404, { error: 'unknown_user' });
      if (verb === 'disable') {
        disabled.add(name);
        return sendJson(res, 200, { ok: true, revoked_grants: await revokeUser(name) });
      }
      if (verb === 'enable') {
        disabled.delete(name);
        return sendJson(res, 200, { ok: true });
      }
      return sendJson(res, 200, { ok: true, revoked_grants: await revokeUser(name) });
    }
    return sendJson(res, 404, { error: 'not_found' });
  }

  const oidcCallback = provider.callback();
  server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (debug) log(req.method, req.url);
    // A plain OAuth client (the conformance suite) may ask for no scope at
    // all, which oidc-provider refuses; give such requests a default.
    if (req.method === 'GET' && url.pathname === '/auth' && defaultScope && !url.searchParams.get('scope')) {
      url.searchParams.set('scope', defaultScope);
      req.url = `${url.pathname}${url.search}`;
    }
    // OpenID Connect Core §11 (and oidc-provider) honour offline_access only
    // with prompt=consent. Okta, Entra and Keycloak issue refresh tokens for
    // offline_access alone, which is what the proxy's upstream client does:
    // ask for consent on its behalf (the interaction approves it at once).
    if (
      req.method === 'GET' &&
      url.pathname === '/auth' &&
      !strictOfflineAccess &&
      !url.searchParams.has('prompt') &&
      (url.searchParams.get('scope') ?? '').split(' ').includes('offline_access')
    ) {
      url.searchParams.set('prompt', 'consent');
      req.url = `${url.pathname}${url.search}`;
    }
    let handler;
    if (url.pathname.startsWith('/interaction/')) handler = handleInteraction;
    else if (url.pathname.startsWith('/__admin/')) handler = handleAdmin;
    if (!handler) return oidcCallback(req, res);
    handler(req, res, url).catch((err) => {
      log('error handling', req.method, req.url, err?.message ?? err);
      if (!res.headersSent) {
        res.statusCode = 400;
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        res.end(`<!doctype html><html><body><h1>Interaction error</h1><pre>${escapeHtml(err?.message ?? String(err))}</pre></body></html>`);
      } else {
        res.destroy();
      }
    });
  });

  let closed = false;
  async function close() {
    if (closed) return;
    closed = true;
    server.closeAllConnections?.();
    await new Promise((resolve) => server.close(() => resolve()));
  }

  const adminFetch = async (path, method = 'POST') => {
    const res = await fetch(`${issuer}${path}`, { method });
    const body = await res.json();
    if (!res.ok) throw new Error(`provider admin ${path}: ${res.status} ${JSON.stringify(body)}`);
    return body;
  };

  return {
    issuer,
    port,
    provider,
    client: { clientId, clientSecret, redirectUris, tokenEndpointAuthMethod: authMethod },
    users: USERS,
    ttl,
    events,
    mintIdJag,
    signingKid: signingKey.kid,
    admin: {
      disable: (name) => adminFetch(`/__admin/users/${encodeURIComponent(name)}/disable`),
      enable: (name) => adminFetch(`/__admin/users/${encodeURIComponent(name)}/enable`),
      revoke: (name) => adminFetch(`/__admin/users/${encodeURIComponent(name)}/revoke`),
      setTtl: ({ access, idToken, refresh } = {}) => {
        const q = new URLSearchParams();
        if (access !== undefined) q.set('access', String(access));
        if (idToken !== undefined) q.set('id_token', String(idToken));
        if (refresh !== undefined) q.set('refresh', String(refresh));
        return adminFetch(`/__admin/ttl?${q}`);
      },
      state: () => adminFetch('/__admin/state', 'GET'),
      clearEvents: () => adminFetch('/__admin/events/clear'),
    },
    close,
  };
}

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      'redirect-uri': { type: 'string', multiple: true },
      'auth-method': { type: 'string' },
      'access-ttl': { type: 'string' },
      'id-token-ttl': { type: 'string' },
      'refresh-ttl': { type: 'string' },
      'no-rotate-refresh': { type: 'boolean' },
      debug: { type: 'boolean' },
    },
  });
  const p = await startProvider({
    port: values.port,
    host: values.host,
    clientId: values['client-id'],
    clientSecret: values['client-secret'],
    redirectUris: values['redirect-uri'],
    tokenEndpointAuthMethod: values['auth-method'],
    accessTtl: values['access-ttl'],
    idTokenTtl: values['id-token-ttl'],
    refreshTtl: values['refresh-ttl'],
    rotateRefresh: values['no-rotate-refresh'] ? false : undefined,
    debug: values.debug,
  });
  const stop = async () => {
    await p.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write(
    `${JSON.stringify({ ready: true, issuer: p.issuer, port: p.port, client_id: p.client.clientId, redirect_uris: p.client.redirectUris })}\n`,
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err) => {
    console.error('[provider] failed to start:', err);
    process.exit(1);
  });
}
