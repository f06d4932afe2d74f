// The harness's own parsers: forms and cookies.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CookieJar, decodeEntities, findConsentForm, findLoginForm, formActionUrl, formFields, pageText, parseForms } from './lib/index.mjs';

test('forms: quoting styles, entities, buttons, comments', () => {
  const html = `<!doctype html><body>
  <!-- <form method="post" action="/commented-out"><button name="decision" value="approve"></button></form> -->
  <FORM Method='POST' action=/consent>
    <input type=hidden name=request_id value=abc123>
    <input value="a&amp;b&quot;c&#39;d&#x3c;" type="hidden" name="csrf">
    <input type="checkbox" name="remember">
    <input type="checkbox" name="ok" checked>
    <input type="text" name="off" disabled value="x">
    <button type="submit" name="decision" value="approve">Allow <b>it</b></button>
    <button name='decision' value='deny'>Deny</button>
    <button type="button" name="decision" value="ignored">JS</button>
  </FORM>
  <form><input type="password" name="pw"><input name="username"></form>`;
  const forms = parseForms(html);
  assert.equal(forms.length, 2);
  const [consent] = findConsentForm(html);
  assert.equal(consent.method, 'post');
  assert.equal(consent.action, '/consent');
  assert.deepEqual(
    consent.buttons.map((b) => [b.name, b.value, b.text]),
    [
      ['decision', 'approve', 'Allow it'],
      ['decision', 'deny', 'Deny'],
    ],
  );
  const approve = consent.buttons[0];
  const fields = formFields(consent, { button: approve });
  assert.equal(fields.toString(), new URLSearchParams({ request_id: 'abc123', csrf: `a&b"c'd<`, ok: 'on', decision: 'approve' }).toString());
  assert.equal(formActionUrl(consent, 'http://localhost:1/authorize?x=1'), 'http://localhost:1/consent');
  const login = findLoginForm(html);
  assert.equal(formActionUrl(login, 'http://localhost:1/interaction/u'), 'http://localhost:1/interaction/u');
  assert.equal(decodeEntities('&lt;&#65;&unknown;'), '<A&unknown;');
  assert.equal(pageText('<p>Hi <script>x()</script><b>there</b></p>'), 'Hi there');
});

test('cookie jar: host-only, paths, deletion, secure origins, prefixes', () => {
  const jar = new CookieJar();
  const proxy = 'http://localhost:8080/authorize';
  jar.store(proxy, [
    '__Host-csrf=1; Path=/; Secure; HttpOnly; SameSite=Lax',
    '__Host-bad=1; Path=/x; Secure',
    '__Host-nosecure=1; Path=/',
    'scoped=2; Path=/interaction/abc',
    'gone=3; Max-Age=0',
    'later=4; Expires=Wed, 01 Jan 2099 00:00:00 GMT',
  ]);
  assert.deepEqual(
    jar.rejected.map((r) => r.reason),
    ['__Host- cookie without Path=/', '__Host- cookie without Secure'],
  );
  assert.equal(jar.header('http://localhost:8080/consent'), '__Host-csrf=1; later=4');
  assert.equal(jar.header('http://localhost:8080/interaction/abc/login'), 'scoped=2; __Host-csrf=1; later=4');
  assert.equal(jar.header('http://localhost:8080/interaction/abcdef'), '__Host-csrf=1; later=4');
  assert.equal(jar.header('http://127.0.0.1:8080/consent'), undefined, 'host-only: localhost cookies do not go to 127.0.0.1');
  jar.store(proxy, ['__Host-csrf=; Path=/; Secure; Max-Age=0']);
  assert.equal(jar.header('http://localhost:8080/'), 'later=4');

  const remote = new CookieJar();
  remote.store('http://example.test/', ['s=1; Secure']);
  assert.equal(remote.rejected.length, 1, 'Secure over plain http to a non-loopback host is refused');
  remote.store('https://example.test/', ['s=1; Secure']);
  assert.equal(remote.header('http://example.test/'), undefined, 'Secure cookies stay off plain http');
  assert.equal(remote.header('https://example.test/'), 's=1');
});
