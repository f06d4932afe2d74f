// Preload for `node --import`: adds `Authorization: Bearer <token>` to every
// HTTP request this process sends to one origin (the proxy), and to no other.
//
//   CONFORMANCE_BEARER_TOKEN=<token> CONFORMANCE_BEARER_ORIGIN=http://localhost:8080 \
//     node --import ./conformance/inject-bearer.mjs node_modules/conformance-server/dist/index.js server --url ...
//
// Why a preload: `conformance server` (0.1.16) has no option to add headers.
// It talks HTTP two ways, both through undici's *global dispatcher*:
//   - the MCP SDK's StreamableHTTPClientTransport and a few raw calls use the
//     global `fetch` (Node's bundled undici), and
//   - dns-rebinding-protection uses `request` from the `undici` package (it
//     needs to set the Host header, which fetch forbids).
// Both look the dispatcher up under Symbol.for('undici.globalDispatcher.1'),
// so one dispatcher with an interceptor covers every request, including
// ones whose Host header was forged: the origin compared is the one the
// connection goes to, never the Host header.
//
// A request that already carries an Authorization header keeps it.
// CONFORMANCE_BEARER_ORIGIN may list several origins, comma-separated.
// CONFORMANCE_BEARER_DEBUG=1 logs each injection (method, origin, path) to stderr.

import { Agent, setGlobalDispatcher } from 'undici';

const token = process.env.CONFORMANCE_BEARER_TOKEN;
const originList = process.env.CONFORMANCE_BEARER_ORIGIN;
const debug = process.env.CONFORMANCE_BEARER_DEBUG === '1';

if (!token || !originList) {
  throw new Error('inject-bearer.mjs: set CONFORMANCE_BEARER_TOKEN and CONFORMANCE_BEARER_ORIGIN');
}
const origins = new Set(originList.split(',').map((o) => new URL(o.trim()).origin));
const authorization = `Bearer ${token}`;

function hasAuthorization(headers) {
  if (!headers) return false;
  if (Array.isArray(headers)) {
    // Flat [name, value, name, value, ...] or [[name, value], ...].
    if (headers.length && Array.isArray(headers[0])) return headers.some(([k]) => String(k).toLowerCase() === 'authorization');
    for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === 'authorization') return true;
    return false;
  }
  if (typeof headers[Symbol.iterator] === 'function' && typeof headers !== 'string') {
    for (const [k] of headers) if (String(k).toLowerCase() === 'authorization') return true;
    return false;
  }
  return Object.keys(headers).some((k) => k.toLowerCase() === 'authorization');
}

function withAuthorization(headers) {
  if (hasAuthorization(headers)) return headers;
  if (!headers) return { authorization };
  if (Array.isArray(headers)) {
    if (headers.length && Array.isArray(headers[0])) return [...headers, ['authorization', authorization]];
    return [...headers, 'authorization', authorization];
  }
  if (typeof headers[Symbol.iterator] === 'function' && typeof headers !== 'string') {
    return [...headers, ['authorization', authorization]];
  }
  return { ...headers, authorization };
}

function originOf(o) {
  try {
    return new URL(String(o)).origin;
  } catch {
    return undefined;
  }
}

const injecting = (dispatch) => (opts, handler) => {
  const origin = originOf(opts.origin);
  if (origin && origins.has(origin)) {
    const kept = hasAuthorization(opts.headers);
    if (debug) process.stderr.write(`[inject-bearer] ${opts.method} ${origin}${opts.path}${kept ? ' (own Authorization kept)' : ''}\n`);
    return dispatch(kept ? opts : { ...opts, headers: withAuthorization(opts.headers) }, handler);
  }
  return dispatch(opts, handler);
};

setGlobalDispatcher(new Agent().compose(injecting));
