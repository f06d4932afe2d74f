// fetch with a cookie jar and manual redirects, recording every hop.
//
// The jar follows RFC 6265 closely enough for the flows we drive: host-only vs
// Domain cookies, Path matching, Max-Age / Expires (deletion included), and
// Secure. Like browsers, it treats http://localhost and 127.0.0.1 as secure
// origins, so the proxy's `__Host-` Secure cookies travel over plain http in
// the tests exactly as they do in Chromium. It also enforces the `__Host-` and
// `__Secure-` prefix rules, so a malformed prefixed cookie is dropped (and
// noted) instead of silently working here and failing in a real browser.

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

function isSecureOrigin(url) {
  return url.protocol === 'https:' || LOOPBACK_HOSTS.has(url.hostname) || url.hostname.endsWith('.localhost');
}

function defaultPath(url) {
  const p = url.pathname;
  if (!p.startsWith('/') || p.lastIndexOf('/') === 0) return '/';
  return p.slice(0, p.lastIndexOf('/'));
}

function pathMatches(requestPath, cookiePath) {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || requestPath[cookiePath.length] === '/';
}

function domainMatches(host, domain) {
  return host === domain || (host.endsWith(`.${domain}`) && !/^[\d.]+$/.test(host));
}

/** Parse one Set-Cookie header value into a cookie record (or null). */
export function parseSetCookie(header, url) {
  const parts = header.split(';');
  const first = parts.shift();
  const eq = first.indexOf('=');
  if (eq <= 0) return null;
  const cookie = {
    name: first.slice(0, eq).trim(),
    value: first.slice(eq + 1).trim(),
    domain: url.hostname,
    hostOnly: true,
    path: defaultPath(url),
    secure: false,
    httpOnly: false,
    sameSite: undefined,
    expires: undefined, // ms since epoch; undefined = session cookie
    raw: header,
    attributes: {},
  };
  for (const part of parts) {
    const i = part.indexOf('=');
    const key = (i < 0 ? part : part.slice(0, i)).trim().toLowerCase();
    const val = i < 0 ? '' : part.slice(i + 1).trim();
    cookie.attributes[key] = val;
    switch (key) {
      case 'domain': {
        const d = val.replace(/^\./, '').toLowerCase();
        if (d) {
          cookie.domain = d;
          cookie.hostOnly = false;
        }
        break;
      }
      case 'path':
        cookie.path = val.startsWith('/') ? val : defaultPath(url);
        break;
      case 'secure':
        cookie.secure = true;
        break;
      case 'httponly':
        cookie.httpOnly = true;
        break;
      case 'samesite':
        cookie.sameSite = val.toLowerCase();
        break;
      case 'max-age': {
        const n = Number(val);
        if (Number.isFinite(n)) cookie.expires = Date.now() + n * 1000;
        break;
      }
      case 'expires': {
        if (!('max-age' in cookie.attributes)) {
          const t = Date.parse(val);
          if (!Number.isNaN(t)) cookie.expires = t;
        }
        break;
      }
      default:
        break;
    }
  }
  if ('max-age' in cookie.attributes) {
    const n = Number(cookie.attributes['max-age']);
    if (Number.isFinite(n)) cookie.expires = Date.now() + n * 1000;
  }
  return cookie;
}

export class CookieJar {
  constructor() {
    /** @type {Map<string, object>} key: domain|path|name */
    this.cookies = new Map();
    /** cookies refused, with the reason */
    this.rejected = [];
  }

  /** Store the Set-Cookie headers of a response received from `url`. */
  store(url, setCookieHeaders) {
    const u = new URL(url);
    for (const header of setCookieHeaders) {
      const c = parseSetCookie(header, u);
      if (!c) continue;
      const reason = this.#refuse(c, u);
      if (reason) {
        this.rejected.push({ url: u.href, header, reason });
        continue;
      }
      const key = `${c.domain}|${c.path}|${c.name}`;
      if (c.expires !== undefined && c.expires <= Date.now()) this.cookies.delete(key);
      else this.cookies.set(key, c);
    }
  }

  #refuse(c, u) {
    if (!c.hostOnly && !domainMatches(u.hostname, c.domain)) return `Domain=${c.domain} does not match ${u.hostname}`;
    if (c.secure && !isSecureOrigin(u)) return 'Secure cookie set over an insecure origin';
    if (c.sameSite === 'none' && !c.secure) return 'SameSite=None without Secure';
    if (c.name.startsWith('__Secure-') && !(c.secure && isSecureOrigin(u))) return '__Secure- cookie without Secure';
    if (c.name.startsWith('__Host-')) {
      if (!c.secure || !isSecureOrigin(u)) return '__Host- cookie without Secure';
      if (!c.hostOnly) return '__Host- cookie with a Domain attribute';
      if (c.attributes.path !== '/') return '__Host- cookie without Path=/';
    }
    return null;
  }

  /** Cookies that a request to `url` carries. */
  cookiesFor(url) {
    const u = new URL(url);
    const now = Date.now();
    const out = [];
    for (const [key, c] of this.cookies) {
      if (c.expires !== undefined && c.expires <= now) {
        this.cookies.delete(key);
        continue;
      }
      if (c.hostOnly ? u.hostname !== c.domain : !domainMatches(u.hostname, c.domain)) continue;
      if (!pathMatches(u.pathname || '/', c.path)) continue;
      if (c.secure && !isSecureOrigin(u)) continue;
      out.push(c);
    }
    // Longer paths first, as RFC 6265 §5.4 asks.
    out.sort((a, b) => b.path.length - a.path.length);
    return out;
  }

  header(url) {
    const list = this.cookiesFor(url);
    return list.length ? list.map((c) => `${c.name}=${c.value}`).join('; ') : undefined;
  }

  /** Find a stored cookie by name (first match). */
  get(name) {
    for (const c of this.cookies.values()) if (c.name === name) return c;
    return undefined;
  }

  all() {
    return [...this.cookies.values()];
  }

  clear() {
    this.cookies.clear();
  }
}

const TEXT_TYPES = /^(text\/|application\/(json|xml|xhtml|javascript|x-www-form-urlencoded)|[^;]*\+json)/i;

/**
 * A browser-ish HTTP client: a cookie jar, manual redirects, and a record of
 * every request/response pair ("hop").
 */
export class Browser {
  constructor({ jar = new CookieJar(), userAgent = 'mcp-oauth-proxy-e2e/1.0', log = false } = {}) {
    this.jar = jar;
    this.userAgent = userAgent;
    this.hops = [];
    this.log = log;
  }

  /**
   * One request, no redirect following. Returns a hop:
   * { method, url, requestHeaders, requestBody, status, headers, location, setCookies, contentType, body, json }
   */
  async request(url, { method = 'GET', headers = {}, body, form, json } = {}) {
    const u = new URL(url);
    const h = new Headers({ 'user-agent': this.userAgent, accept: 'text/html,application/json;q=0.9,*/*;q=0.8' });
    for (const [k, v] of Object.entries(headers)) if (v !== undefined) h.set(k, v);
    let payload = body;
    if (form !== undefined) {
      payload = (form instanceof URLSearchParams ? form : new URLSearchParams(form)).toString();
      h.set('content-type', 'application/x-www-form-urlencoded');
    } else if (json !== undefined) {
      payload = JSON.stringify(json);
      h.set('content-type', 'application/json');
    }
    const cookie = this.jar.header(u);
    if (cookie && !h.has('cookie')) h.set('cookie', cookie);

    const res = await fetch(u, { method, headers: h, body: payload, redirect: 'manual' });
    const setCookies = res.headers.getSetCookie();
    this.jar.store(u, setCookies);
    const contentType = res.headers.get('content-type') ?? '';
    const buf = Buffer.from(await res.arrayBuffer());
    const text = TEXT_TYPES.test(contentType) || contentType === '' ? buf.toString('utf8') : undefined;
    let parsed;
    if (text !== undefined && /json/i.test(contentType)) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    const location = res.headers.get('location');
    const hop = {
      method,
      url: u.href,
      requestHeaders: Object.fromEntries(h),
      requestBody: typeof payload === 'string' ? payload : undefined,
      status: res.status,
      headers: res.headers,
      location: location ? new URL(location, u).href : undefined,
      rawLocation: location ?? undefined,
      setCookies,
      contentType,
      body: text,
      json: parsed,
    };
    this.hops.push(hop);
    if (this.log) console.error(`[browser] ${method} ${u.href} -> ${res.status}${hop.location ? ` ${hop.location}` : ''}`);
    return hop;
  }

  get(url, opts = {}) {
    return this.request(url, { ...opts, method: 'GET' });
  }

  post(url, opts = {}) {
    return this.request(url, { ...opts, method: 'POST' });
  }
}

export function isRedirect(status) {
  return [301, 302, 303, 307, 308].includes(status);
}

/** A one-line description of a hop, for assertion messages. */
export function describeHop(h) {
  return `${h.method} ${h.url} -> ${h.status}${h.location ? ` Location: ${h.location}` : ''}`;
}

export function describeHops(hops) {
  return hops.map((h, i) => `  ${i + 1}. ${describeHop(h)}`).join('\n');
}
