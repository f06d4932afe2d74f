// Drive an OAuth authorization-code flow the way a person in a browser would,
// without a browser: proxy /authorize → (consent page → POST /consent) →
// provider login form → … → proxy /callback → the client's redirect_uri.

import crypto from 'node:crypto';
import { Browser, describeHops, isRedirect } from './http.mjs';
import { PageError, findConsentForm, findLoginForm, formActionUrl, formFields } from './html.mjs';

export function randomToken(bytes = 32) {
  return crypto.randomBytes(bytes).toString('base64url');
}

/** A PKCE pair (RFC 7636, S256). */
export function makePkce() {
  const verifier = randomToken(32);
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge, method: 'S256' };
}

/** An authorization request URL. */
export function buildAuthorizeUrl(authorizationEndpoint, { clientId, redirectUri, state, codeChallenge, codeChallengeMethod = 'S256', scope, resource, extra = {} }) {
  const u = new URL(authorizationEndpoint);
  const p = u.searchParams;
  p.set('response_type', 'code');
  p.set('client_id', clientId);
  p.set('redirect_uri', redirectUri);
  if (state !== undefined) p.set('state', state);
  if (codeChallenge !== undefined) p.set('code_challenge', codeChallenge);
  if (codeChallengeMethod !== undefined && codeChallenge !== undefined) p.set('code_challenge_method', codeChallengeMethod);
  if (scope !== undefined) p.set('scope', scope);
  if (resource !== undefined) p.set('resource', resource);
  for (const [k, v] of Object.entries(extra)) p.set(k, v);
  return u.href;
}

function withoutQuery(u) {
  return String(u).split(/[?#]/)[0];
}

/** Same endpoint as the redirect_uri? (Query and fragment aside; a non-http scheme always ends the chain.) */
function reachesRedirectUri(location, redirectUri) {
  if (!/^https?:/i.test(location)) return true;
  return withoutQuery(location) === withoutQuery(redirectUri);
}

/**
 * Follow the whole hop chain of an authorization request.
 *
 * @param {object} o
 * @param {string} o.authorizeUrl       the proxy's /authorize URL with every parameter
 * @param {string} [o.user]             provider username (needed unless the provider session is live)
 * @param {string} [o.password]
 * @param {'approve'|'deny'} [o.decision='approve']   button pressed on the proxy's consent page
 * @param {string} [o.redirectUri]      where the chain ends; defaults to authorizeUrl's redirect_uri
 * @param {Browser} [o.browser]         reuse a browser (its cookies) across flows
 * @param {boolean} [o.deliverFinal=false]  also GET the final redirect (e.g. a real callback server)
 * @param {number} [o.maxHops=30]
 * @returns {Promise<{hops, final, params, code, state, iss, error, errorDescription, consentHop, loginHop, browser}>}
 *   hops: every request/response pair; final: the URL the proxy sent the browser to;
 *   params: its query as a plain object (first value of each name); query: the URLSearchParams.
 */
export async function loginThroughBrowserless({
  authorizeUrl,
  user,
  password,
  decision = 'approve',
  redirectUri,
  browser = new Browser(),
  deliverFinal = false,
  maxHops = 30,
}) {
  const target = redirectUri ?? new URL(authorizeUrl).searchParams.get('redirect_uri');
  if (!target) throw new Error(`loginThroughBrowserless: no redirect_uri in ${authorizeUrl} and none given`);
  const startIndex = browser.hops.length;
  const hops = () => browser.hops.slice(startIndex);
  const fail = (msg, hop) => {
    const err = new PageError(`${msg}\nhops so far:\n${describeHops(hops())}`, hop);
    err.hops = hops();
    return err;
  };

  let consentHop;
  let loginHop;
  let loginAttempts = 0;
  let final;
  let hop = await browser.get(authorizeUrl);

  for (let n = 0; ; n++) {
    if (n > maxHops) throw fail(`more than ${maxHops} hops without reaching ${target}`, hop);

    if (isRedirect(hop.status)) {
      if (!hop.location) throw fail(`${hop.status} without a Location header`, hop);
      if (reachesRedirectUri(hop.location, target)) {
        final = hop.location;
        break;
      }
      // 307/308 repeat the method and body; 301/302/303 become GET.
      if ((hop.status === 307 || hop.status === 308) && hop.method === 'POST') {
        hop = await browser.request(hop.location, {
          method: 'POST',
          body: hop.requestBody,
          headers: { 'content-type': hop.requestHeaders['content-type'] },
        });
      } else {
        hop = await browser.get(hop.location);
      }
      continue;
    }

    if (hop.status === 200 && /html/i.test(hop.contentType)) {
      const consentForms = findConsentForm(hop.body);
      if (consentForms.length > 1) throw fail(`found ${consentForms.length} consent forms, expected exactly one`, hop);
      if (consentForms.length === 1) {
        if (consentHop) throw fail('the consent page came back after it was submitted', hop);
        consentHop = hop;
        const form = consentForms[0];
        const button = form.buttons.find((b) => b.name === 'decision' && b.value === decision);
        if (!button) throw fail(`consent form has no submit button name="decision" value="${decision}"`, hop);
        if (form.method !== 'post') throw fail(`consent form method is "${form.method}", expected post`, hop);
        hop = await browser.post(formActionUrl(form, hop.url), {
          form: formFields(form, { button }),
          headers: { origin: new URL(hop.url).origin, referer: hop.url },
        });
        continue;
      }
      const login = findLoginForm(hop.body);
      if (login) {
        loginHop = hop;
        if (loginAttempts > 0) throw fail(`provider login was refused for user "${user}"`, hop);
        if (user === undefined || password === undefined) throw fail('the provider asks for a login but no user/password was given', hop);
        loginAttempts++;
        const userField =
          login.inputs.find((i) => ['username', 'login', 'user', 'email'].includes(i.name))?.name ??
          login.inputs.find((i) => ['text', 'email'].includes(i.type))?.name;
        const passField = login.inputs.find((i) => i.type === 'password').name;
        if (!userField) throw fail('login form has no username field', hop);
        const button = login.buttons[0];
        hop = await browser.request(formActionUrl(login, hop.url), {
          method: login.method === 'post' ? 'POST' : 'GET',
          form: formFields(login, { button, overrides: { [userField]: user, [passField]: password } }),
          headers: { origin: new URL(hop.url).origin, referer: hop.url },
        });
        continue;
      }
      throw fail('expected the proxy consent form or the provider login form', hop);
    }

    throw fail(`unexpected response ${hop.status}`, hop);
  }

  if (deliverFinal && /^https?:/i.test(final)) await browser.get(final);

  const query = new URL(final).searchParams;
  const params = {};
  for (const [k, v] of query) if (!(k in params)) params[k] = v;
  return {
    hops: hops(),
    final,
    query,
    params,
    code: query.get('code') ?? undefined,
    state: query.get('state') ?? undefined,
    iss: query.get('iss') ?? undefined,
    error: query.get('error') ?? undefined,
    errorDescription: query.get('error_description') ?? undefined,
    consentHop,
    loginHop,
    browser,
  };
}

/** POST a form to a token-like endpoint; returns the hop (with .json). */
export async function postForm(url, form, { basic, headers = {}, browser } = {}) {
  const b = browser ?? new Browser();
  const h = { accept: 'application/json', ...headers };
  if (basic) {
    const [id, secret] = basic;
    h.authorization = `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  }
  return b.post(url, { form, headers: h });
}

/** Decode a JWT's payload without verifying it (for display and claim checks). */
export function decodeJwt(jwt) {
  const [h, p] = String(jwt).split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

/** Registers a public client (token_endpoint_auth_method none) by DCR. */
export async function registerPublicClient(registrationEndpoint, redirectUri, clientName) {
  const res = await fetch(registrationEndpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({
      client_name: clientName,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }),
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`POST ${registrationEndpoint} answered ${res.status}, expected 201: ${text}`);
  return JSON.parse(text);
}

/**
 * An access token for the proxy's /mcp resource, obtained as a client does:
 * metadata, DCR, consent + provider login (browserless), code exchange.
 * `redirectUri` should be a loopback URI nothing listens on. `resource`
 * asks for another resource instead (e.g. the public URL itself, which
 * every route accepts).
 */
export async function accessTokenFor(publicUrl, { user, password, redirectUri, clientName, browser = new Browser(), resource }) {
  const meta = await (await fetch(`${publicUrl}/.well-known/oauth-authorization-server`)).json();
  const prm = resource === undefined ? await (await fetch(`${publicUrl}/.well-known/oauth-protected-resource/mcp`)).json() : { resource };
  if (!meta.registration_endpoint) throw new Error('the proxy metadata has no registration_endpoint');
  const client = await registerPublicClient(meta.registration_endpoint, redirectUri, clientName);
  const pkce = makePkce();
  const state = randomToken(16);
  const authorizeUrl = buildAuthorizeUrl(meta.authorization_endpoint, {
    clientId: client.client_id,
    redirectUri,
    state,
    codeChallenge: pkce.challenge,
    resource: prm.resource,
  });
  const flow = await loginThroughBrowserless({ authorizeUrl, user, password, browser });
  if (!flow.code || flow.state !== state) {
    throw new Error(`no code from the authorization flow (error ${flow.error}: ${flow.errorDescription})\n${describeHops(flow.hops)}`);
  }
  const hop = await postForm(meta.token_endpoint, {
    grant_type: 'authorization_code',
    code: flow.code,
    redirect_uri: redirectUri,
    client_id: client.client_id,
    code_verifier: pkce.verifier,
    resource: prm.resource,
  });
  if (hop.status !== 200 || typeof hop.json?.access_token !== 'string') throw new Error(`token endpoint answered ${hop.status}: ${hop.body}`);
  return { accessToken: hop.json.access_token, resource: prm.resource, clientId: client.client_id };
}
