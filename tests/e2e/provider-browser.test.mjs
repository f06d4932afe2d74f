// The provider's login form in a real headless Chromium (skipped when no
// Chromium is installed): the form a person fills in, and the __Host- Secure
// cookie behaviour on http://localhost that the proxy's consent page relies on.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { startProvider } from './provider.mjs';
import { buildAuthorizeUrl, findChromium, launchChromium, makePkce } from './lib/index.mjs';

// In CI a missing browser is a failure, not a skip.
if (!findChromium() && process.env.CI) {
  throw new Error('CI is set but no Chromium is installed (.ci/run installs the Debian package)');
}
const skip = findChromium() ? false : 'no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)';
let site;
let sitePort;
let provider;
let browser;

before(async () => {
  if (skip) return;
  // A stand-in client: sets a __Host- cookie, then shows what comes back.
  site = http.createServer((req, res) => {
    if (req.url === '/set') {
      res.writeHead(200, { 'set-cookie': '__Host-probe=1; Path=/; Secure; HttpOnly; SameSite=Lax', 'content-type': 'text/html' });
      return res.end('<p>set</p>');
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`cookie=${req.headers.cookie ?? ''}`);
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  sitePort = site.address().port;
  provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${sitePort}/cb`] });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await provider?.close();
  site?.close();
});

test('Chromium keeps __Host- Secure cookies on http://localhost', { skip }, async () => {
  const page = await browser.newPage();
  await page.goto(`http://localhost:${sitePort}/set`);
  await page.goto(`http://localhost:${sitePort}/check`);
  assert.equal(await page.textContent('body'), 'cookie=__Host-probe=1');
  await page.close();
});

test('Chromium: provider login form → redirect with code, state and iss', { skip }, async () => {
  const page = await browser.newPage();
  const redirectUri = `http://localhost:${sitePort}/cb`;
  const meta = await (await fetch(`${provider.issuer}/.well-known/openid-configuration`)).json();
  await page.goto(
    buildAuthorizeUrl(meta.authorization_endpoint, {
      clientId: provider.client.clientId,
      redirectUri,
      state: 'chromium-state',
      codeChallenge: makePkce().challenge,
      scope: 'openid email profile groups offline_access',
    }),
  );
  await page.fill('input[name="username"]', 'bob');
  await page.fill('input[name="password"]', 'bob-password');
  await Promise.all([page.waitForURL((u) => u.href.startsWith(redirectUri)), page.click('button[type="submit"]')]);
  const landed = new URL(page.url());
  assert.ok(landed.searchParams.get('code'));
  assert.equal(landed.searchParams.get('state'), 'chromium-state');
  assert.equal(landed.searchParams.get('iss'), provider.issuer);
  await page.close();
});
