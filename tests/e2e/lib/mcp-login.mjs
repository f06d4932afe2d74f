// What a real MCP client needs to log in through the proxy: an in-memory
// OAuthClientProvider for the TypeScript SDK, a loopback redirect URI server
// (RFC 8252) that captures the authorization response, and a headless
// Chromium page that clicks through the proxy's consent page and the
// provider's login form the way a person would.

import crypto from 'node:crypto';
import http from 'node:http';

/**
 * A loopback HTTP server standing in for a native client's redirect URI.
 * @returns {Promise<{redirectUri, port, received: object[], next: (timeoutMs?) => Promise<{code, state, iss, error, errorDescription, url}>, close}>}
 */
export async function startCallbackServer({ host = '127.0.0.1', path = '/callback' } = {}) {
  const received = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, `http://${req.headers.host ?? host}`);
    if (url.pathname !== path) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found');
    }
    const q = url.searchParams;
    const result = {
      url: url.href,
      code: q.get('code') ?? undefined,
      state: q.get('state') ?? undefined,
      iss: q.get('iss') ?? undefined,
      error: q.get('error') ?? undefined,
      errorDescription: q.get('error_description') ?? undefined,
    };
    received.push(result);
    const w = waiters.shift();
    if (w) w(result);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>Signed in</title><p id="result">${result.code ? 'Authorization complete. You can close this window.' : 'Authorization failed.'}</p>`);
  });
  await new Promise((resolve) => server.listen(0, host, resolve));
  const { port } = server.address();
  let consumed = 0;
  return {
    port,
    redirectUri: `http://${host}:${port}${path}`,
    received,
    /** The next authorization response (in arrival order). */
    next(timeoutMs = 30000) {
      if (consumed < received.length) return Promise.resolve(received[consumed++]);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no authorization response at ${host}:${port}${path} within ${timeoutMs} ms`)), timeoutMs);
        waiters.push((r) => {
          clearTimeout(t);
          consumed++;
          resolve(r);
        });
      });
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/**
 * Drive a Chromium page from an authorization URL to the client's redirect
 * URI: approve the proxy's consent page ("Allow"), sign in at the provider,
 * and stop once the page reaches a URL for which `reached(url)` is true.
 * A consent page or login that is skipped (remembered approval, live provider
 * session) is fine. `reached` may also accept a page that ends the flow
 * without a redirect (e.g. the proxy's /callback showing a login() denial):
 * `finalStatus` and `finalText` then say what the person saw.
 *
 * @returns {Promise<{finalUrl, finalStatus, finalText, consentSeen, consentText, loginSeen, navigations: string[]}>}
 */
export async function driveBrowserLogin(context, authorizationUrl, { user, password, reached, timeoutMs = 30000, decision = 'Allow' }) {
  const page = await context.newPage();
  const navigations = [];
  let finalStatus;
  page.on('response', (res) => {
    if (res.request().isNavigationRequest() && res.frame() === page.mainFrame()) {
      finalStatus = res.status();
      navigations.push(`${res.request().method()} ${res.url()} -> ${res.status()}${res.headers().location ? ` Location: ${res.headers().location}` : ''}`);
    }
  });
  const fail = async (msg) => {
    let text = '';
    try {
      text = (await page.innerText('body')).replace(/\s+/g, ' ').slice(0, 1500);
    } catch {
      /* page gone */
    }
    return new Error(`${msg}\n  at ${page.url()}\n  page text: ${text}\n  navigations:\n    ${navigations.join('\n    ')}`);
  };
  const isDone = () => {
    try {
      return reached(new URL(page.url()));
    } catch {
      return false;
    }
  };
  let consentSeen = false;
  let consentText;
  let loginSeen = false;
  try {
    await page.goto(String(authorizationUrl), { timeout: timeoutMs });
    for (let step = 0; !isDone(); step++) {
      if (step > 8) throw await fail('too many pages without reaching the redirect URI');
      const before = page.url();
      const moved = () => page.waitForURL((u) => u.href !== before, { timeout: timeoutMs, waitUntil: 'load' });
      const allow = page.getByRole('button', { name: decision, exact: true });
      if (await allow.count()) {
        if (consentSeen) throw await fail('the consent page came back after it was approved');
        consentSeen = true;
        consentText = (await page.innerText('body')).replace(/\s+/g, ' ');
        const form = page.locator('form', { has: allow });
        if ((await page.locator('form').count()) !== 1) throw await fail('the consent page should hold exactly one form');
        if ((await form.getAttribute('method'))?.toLowerCase() !== 'post') throw await fail('the consent form must use method="post"');
        if ((await allow.getAttribute('name')) !== 'decision' || (await allow.getAttribute('value')) !== 'approve') {
          throw await fail(`the "${decision}" button should be name="decision" value="approve"`);
        }
        await Promise.all([moved(), allow.click()]);
        continue;
      }
      const passwordField = page.locator('input[type="password"]');
      if (await passwordField.count()) {
        if (loginSeen) throw await fail(`the provider refused the login of "${user}"`);
        loginSeen = true;
        if (user === undefined) throw await fail('the provider asks for a login but no user was given');
        const form = page.locator('form', { has: passwordField });
        await form.locator('input[name="username"], input[type="email"], input[type="text"]').first().fill(user);
        await passwordField.fill(password);
        await Promise.all([moved(), form.locator('button[type="submit"], input[type="submit"]').first().click()]);
        continue;
      }
      throw await fail('expected the proxy\'s consent page or the provider\'s login form');
    }
    const finalText = (await page.innerText('body').catch(() => '')).replace(/\s+/g, ' ');
    return { finalUrl: page.url(), finalStatus, finalText, consentSeen, consentText, loginSeen, navigations };
  } finally {
    await page.close().catch(() => {});
  }
}

/**
 * An OAuthClientProvider (MCP TypeScript SDK) that keeps everything in memory
 * and hands the authorization URL to `onRedirect` (e.g. a Chromium page).
 * `authorizationUrls` records every authorization request the SDK started.
 */
export class InMemoryOAuthClientProvider {
  /**
   * @param {object} o
   * @param {string|URL} [o.resource]  ask for this RFC 8707 resource instead of the one the
   *   server's protected-resource metadata names (the SDK's `validateResourceURL` hook), e.g.
   *   the proxy's own URL for a token good on every route
   */
  constructor({ redirectUrl, clientName = 'mcp-oauth-proxy e2e (SDK client)', onRedirect, scope, resource } = {}) {
    if (resource !== undefined) {
      // The SDK sends what this returns as `resource` at /authorize and /token.
      this.validateResourceURL = async () => new URL(resource);
    }
    this._redirectUrl = redirectUrl;
    this._clientName = clientName;
    this._scope = scope;
    this.onRedirect = onRedirect;
    this.authorizationUrls = [];
    this.states = [];
    this._clientInformation = undefined;
    this._tokens = undefined;
    this._codeVerifier = undefined;
    this.savedTokens = [];
  }

  get redirectUrl() {
    return this._redirectUrl;
  }

  get clientMetadata() {
    return {
      client_name: this._clientName,
      redirect_uris: [String(this._redirectUrl)],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      ...(this._scope ? { scope: this._scope } : {}),
    };
  }

  state() {
    const s = crypto.randomBytes(16).toString('base64url');
    this.states.push(s);
    return s;
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(info) {
    this._clientInformation = info;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    this.savedTokens.push(tokens);
  }

  async redirectToAuthorization(url) {
    this.authorizationUrls.push(new URL(url));
    if (!this.onRedirect) throw new Error(`no browser to open ${url}`);
    await this.onRedirect(new URL(url));
  }

  saveCodeVerifier(v) {
    this._codeVerifier = v;
  }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }

  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._clientInformation = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._codeVerifier = undefined;
  }
}
