#!/usr/bin/env node
// whoami: a small MCP server that tells each caller who the proxy says they are.
//
// It sits behind mcp-oauth-proxy, which authenticates the user and adds
// X-User-Email, X-User-Name, X-User-Sub, X-User-Groups and
// Authorization: Bearer <identity provider access token> to every request.
// The `whoami` tool returns what arrived (the bearer token only as a SHA-256).
//
// Transports:
//   Streamable HTTP   POST | GET | DELETE  /mcp   (stateful, Mcp-Session-Id)
//   legacy HTTP+SSE   GET /sse  +  POST /messages?sessionId=...
//   health            GET /healthz
//
// Usage:
//   node server.mjs [--port 9300] [--host 127.0.0.1] [--log-requests FILE]
//   PORT=9300 WHOAMI_LOG_REQUESTS=requests.jsonl node server.mjs
// Port 0 picks a free port. Once listening it prints one JSON line to stdout:
//   {"ready":true,"port":9300,"mcp_url":"http://127.0.0.1:9300/mcp","sse_url":"http://127.0.0.1:9300/sse"}
// --log-requests appends one JSON line per HTTP request (method, path, every
// header; the Authorization value replaced by its SHA-256) so that tests can
// prove what reached the server.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import * as z from 'zod';

const SERVER_INFO = { name: 'whoami-server', version: '1.0.0' };
const MAX_BODY_BYTES = 1024 * 1024;

export const sha256 = (text) => crypto.createHash('sha256').update(text, 'utf8').digest('hex');

/** A header's value from Node's or the SDK's header object (lowercase names). */
function headerValue(headers, name) {
  const v = headers?.[name];
  if (v === undefined || v === null) return null;
  return Array.isArray(v) ? v.join(', ') : String(v);
}

/**
 * An identity header's text. The proxy percent-encodes `%`, non-ASCII
 * characters, spaces at either end and, inside list items, `,` and `"`
 * (UTF-8, RFC 3986), so decoding gives back exactly what the provider sent.
 */
export function decodeIdentityValue(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // not from the proxy: shown as it arrived
  }
}

/** A list header (X-User-Groups): split on `,` first, then decode each item. */
export function decodeIdentityList(text) {
  if (!text) return [];
  return text.split(',').map((item) => item.trim()).filter(Boolean).map(decodeIdentityValue);
}

/**
 * Who the proxy says the caller is, from one request's headers.
 * The bearer token is never returned, only whether one came and its SHA-256.
 */
export function identityFromHeaders(headers) {
  const groups = headerValue(headers, 'x-user-groups');
  const authorization = headerValue(headers, 'authorization');
  const bearer = authorization?.match(/^Bearer\s+(.+)$/i)?.[1];
  const otherUserHeaders = {};
  for (const name of Object.keys(headers ?? {}).sort()) {
    if (name.startsWith('x-user-') && !['x-user-email', 'x-user-name', 'x-user-sub', 'x-user-groups'].includes(name)) {
      const value = headerValue(headers, name);
      otherUserHeaders[name] = value === null ? null : decodeIdentityValue(value);
    }
  }
  const decoded = (name) => {
    const value = headerValue(headers, name);
    return value === null ? null : decodeIdentityValue(value);
  };
  return {
    email: decoded('x-user-email'),
    name: decoded('x-user-name'),
    sub: decoded('x-user-sub'),
    groups: decodeIdentityList(groups),
    authorization: {
      present: authorization !== null,
      bearer: bearer !== undefined,
      sha256: bearer !== undefined ? sha256(bearer) : null,
    },
    other_user_headers: otherUserHeaders,
  };
}

/**
 * A verifier of the proxy's signed identity assertion (`identity_assertion()`
 * in its policy), against the proxy's JWKS with `jose`: signature by a
 * published key, `iss` (when given), `aud`, `exp`. Resolves to the verified
 * claims; rejects (with jose's `code`) when the assertion is missing or
 * does not verify.
 *
 * @param {{jwksUrl: string, audience: string, issuer?: string, header?: string, cacheMaxAgeMs?: number}} o
 */
export async function assertionVerifier({ jwksUrl, audience, issuer, header = 'x-identity-assertion', cacheMaxAgeMs }) {
  const { createRemoteJWKSet, jwtVerify } = await import('jose');
  // The proxy publishes the next key a whole rotation interval ahead: a
  // cache younger than that interval always knows the signing key.
  const jwks = createRemoteJWKSet(new URL(jwksUrl), cacheMaxAgeMs ? { cacheMaxAge: cacheMaxAgeMs, cooldownDuration: Math.min(cacheMaxAgeMs, 30000) } : {});
  return async (headers) => {
    const token = headerValue(headers, header);
    if (!token) throw Object.assign(new Error(`no ${header} header`), { code: 'ERR_NO_ASSERTION' });
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { audience, issuer, algorithms: ['EdDSA'] });
    return { kid: protectedHeader.kid ?? null, claims: payload };
  };
}

const identitySchema = {
  email: z.string().nullable(),
  name: z.string().nullable(),
  sub: z.string().nullable(),
  groups: z.array(z.string()),
  authorization: z.object({ present: z.boolean(), bearer: z.boolean(), sha256: z.string().nullable() }),
  other_user_headers: z.record(z.string(), z.string().nullable()),
  transport: z.string(),
  session_id: z.string().nullable(),
  assertion: z.object({ verified: z.boolean(), kid: z.string().nullable(), claims: z.record(z.string(), z.any()) }).optional(),
};

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });

/** One McpServer per session: the SDK binds a server to one transport. */
function createMcpServer(transportName, verify) {
  const server = new McpServer(SERVER_INFO, {
    capabilities: { logging: {} },
    instructions: 'Call `whoami` to see the identity the proxy attached to your request.',
  });

  const identityOf = (extra) => ({
    ...identityFromHeaders(extra.requestInfo?.headers ?? {}),
    transport: transportName,
    session_id: extra.sessionId ?? null,
  });

  server.registerTool(
    'whoami',
    {
      title: 'Who am I?',
      description:
        'Returns the identity headers (X-User-Email, X-User-Name, X-User-Sub, X-User-Groups) that arrived with this request, and whether an Authorization bearer came with it (as a SHA-256, never the token).',
      inputSchema: {},
      outputSchema: identitySchema,
      annotations: { readOnlyHint: true, idempotentHint: true, openWorldHint: false },
    },
    async (_args, extra) => {
      const identity = identityOf(extra);
      if (verify) {
        // Every request was verified on arrival (see the HTTP handler); what
        // the verification found travels with the request as its auth info.
        const found = extra.authInfo?.extra?.assertion;
        identity.assertion = { verified: Boolean(found), kid: found?.kid ?? null, claims: found?.claims ?? {} };
      }
      return { content: [{ type: 'text', text: JSON.stringify(identity, null, 2) }], structuredContent: identity };
    },
  );

  server.registerTool(
    'count',
    {
      title: 'Count with progress',
      description: 'Counts from 1 to n, sending a progress notification for each step (when the request carries a progressToken), waiting delay_ms after each step.',
      inputSchema: {
        n: z.number().int().min(0).max(1000).default(3).describe('how far to count'),
        delay_ms: z.number().int().min(0).max(10000).default(100).describe('pause after each step, in milliseconds'),
      },
      outputSchema: { counted: z.number(), progress_notifications: z.number() },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    async ({ n, delay_ms }, extra) => {
      const progressToken = extra._meta?.progressToken;
      let sent = 0;
      for (let i = 1; i <= n; i++) {
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress: i, total: n, message: `${i} of ${n}` },
          });
          sent++;
        }
        // Also after the last step, so the final notification travels before the result.
        if (delay_ms > 0) await sleep(delay_ms, extra.signal);
      }
      const result = { counted: n, progress_notifications: sent };
      return { content: [{ type: 'text', text: `Counted to ${n} (${sent} progress notifications).` }], structuredContent: result };
    },
  );

  server.registerTool(
    'announce',
    {
      title: 'Announce on the session stream',
      description:
        'Sends a log message that belongs to no request, so it travels on the session stream (the GET /mcp SSE stream, or the legacy /sse stream) rather than with this call\'s response.',
      inputSchema: {
        message: z.string().max(1000).default('hello from whoami'),
        delay_ms: z.number().int().min(0).max(10000).default(0).describe('wait this long before sending'),
      },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    async ({ message, delay_ms }, extra) => {
      if (delay_ms > 0) await sleep(delay_ms, extra.signal);
      await server.sendLoggingMessage({ level: 'info', logger: 'whoami', data: { announce: message } }, extra.sessionId);
      return { content: [{ type: 'text', text: 'announced' }] };
    },
  );

  server.registerResource(
    'identity',
    'whoami://identity',
    {
      title: 'Your identity',
      description: 'The identity headers that arrived with the resources/read request, as JSON.',
      mimeType: 'application/json',
    },
    async (uri, extra) => ({
      contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(identityOf(extra), null, 2) }],
    }),
  );

  server.registerPrompt(
    'greeting',
    {
      title: 'Greet me',
      description: 'A prompt that greets the signed-in user by name, built from the identity headers.',
      argsSchema: { tone: z.string().max(100).optional().describe('e.g. "formal" or "cheerful"') },
    },
    async ({ tone }, extra) => {
      const id = identityOf(extra);
      const who = id.name ?? id.email ?? 'an unknown user';
      const groups = id.groups.length ? ` They belong to: ${id.groups.join(', ')}.` : '';
      return {
        description: `Greeting for ${who}`,
        messages: [
          {
            role: 'user',
            content: { type: 'text', text: `Write a ${tone ?? 'friendly'} one-line greeting for ${who} <${id.email ?? 'no email'}>.${groups}` },
          },
        ],
      };
    },
  );

  return server;
}

function redactHeaderValue(name, value) {
  if (name.toLowerCase() !== 'authorization') return value;
  const m = String(value).match(/^(\S+)\s+(.+)$/);
  return m ? `${m[1]} sha256:${sha256(m[2])}` : `sha256:${sha256(String(value))}`;
}

/** One JSON line per request: what arrived, with the Authorization value hashed. */
function requestLogLine(req) {
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) {
    headers[name] = Array.isArray(value) ? value.map((v) => redactHeaderValue(name, v)) : redactHeaderValue(name, value);
  }
  const raw = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) raw.push([req.rawHeaders[i], redactHeaderValue(req.rawHeaders[i], req.rawHeaders[i + 1])]);
  return `${JSON.stringify({ time: new Date().toISOString(), method: req.method, path: req.url, headers, raw_headers: raw })}\n`;
}

async function readJsonBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      const err = new Error('request body too large');
      err.status = 413;
      throw err;
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    const err = new Error('request body is not JSON');
    err.status = 400;
    throw err;
  }
}

function sendJsonRpcError(res, status, code, message) {
  if (res.headersSent) return res.end();
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

/**
 * Start the server.
 * @param {object} [opts]
 * @param {number} [opts.port=0]
 * @param {string} [opts.host='127.0.0.1']
 * @param {string} [opts.logRequests]   file to append one JSON line per request to
 * @param {(msg: string) => void} [opts.log]
 * @returns {Promise<{port, url, mcpUrl, sseUrl, close: () => Promise<void>}>}
 */
export async function startWhoamiServer({ port = 0, host = '127.0.0.1', logRequests, assertion, log = (m) => console.error(`[whoami] ${m}`) } = {}) {
  const verify = assertion?.jwksUrl ? await assertionVerifier(assertion) : null;
  const streamable = new Map(); // Mcp-Session-Id -> { transport, server }
  const legacy = new Map(); // sessionId -> { transport, server }

  async function handleMcp(req, res) {
    const sessionId = req.headers['mcp-session-id'];
    if (req.method === 'POST') {
      const body = await readJsonBody(req);
      if (sessionId) {
        const s = streamable.get(sessionId);
        if (!s) return sendJsonRpcError(res, 404, -32001, 'Session not found');
        return s.transport.handleRequest(req, res, body);
      }
      const isInit = Array.isArray(body) ? body.some(isInitializeRequest) : isInitializeRequest(body);
      if (!isInit) return sendJsonRpcError(res, 400, -32000, 'Bad Request: no Mcp-Session-Id header and not an initialize request');
      const server = createMcpServer('streamable-http', verify);
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => crypto.randomUUID(),
        onsessioninitialized: (id) => {
          streamable.set(id, { transport, server });
          log(`session ${id} opened (streamable-http, ${req.headers['x-user-email'] ?? 'no X-User-Email'})`);
        },
      });
      transport.onclose = () => {
        if (transport.sessionId && streamable.delete(transport.sessionId)) log(`session ${transport.sessionId} closed`);
      };
      await server.connect(transport);
      return transport.handleRequest(req, res, body);
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (!sessionId) return sendJsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
      const s = streamable.get(sessionId);
      if (!s) return sendJsonRpcError(res, 404, -32001, 'Session not found');
      return s.transport.handleRequest(req, res);
    }
    res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
  }

  async function handleSse(req, res) {
    if (req.method !== 'GET') return res.writeHead(405, { allow: 'GET' }).end();
    const server = createMcpServer('sse', verify);
    // A relative endpoint: the client resolves it against the URL it connected
    // to, so behind a proxy it points at the proxy.
    const transport = new SSEServerTransport('/messages', res);
    legacy.set(transport.sessionId, { transport, server });
    log(`session ${transport.sessionId} opened (sse, ${req.headers['x-user-email'] ?? 'no X-User-Email'})`);
    res.on('close', () => {
      if (legacy.delete(transport.sessionId)) log(`session ${transport.sessionId} closed`);
      server.close().catch(() => {});
    });
    await server.connect(transport);
  }

  async function handleMessages(req, res, url) {
    if (req.method !== 'POST') return res.writeHead(405, { allow: 'POST' }).end();
    const s = legacy.get(url.searchParams.get('sessionId') ?? '');
    if (!s) return sendJsonRpcError(res, 404, -32001, 'Session not found');
    return s.transport.handlePostMessage(req, res);
  }

  const httpServer = http.createServer((req, res) => {
    if (logRequests) {
      try {
        fs.appendFileSync(logRequests, requestLogLine(req));
      } catch (err) {
        log(`cannot write the request log ${logRequests}: ${err.message}`);
      }
    }
    const url = new URL(req.url, 'http://whoami.invalid');
    let handler;
    if (url.pathname === '/mcp') handler = handleMcp;
    else if (url.pathname === '/sse') handler = handleSse;
    else if (url.pathname === '/messages') handler = handleMessages;
    else if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ ok: true, ...SERVER_INFO, sessions: { streamable_http: streamable.size, sse: legacy.size } }));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found: this server serves /mcp (Streamable HTTP), /sse + /messages (legacy SSE) and /healthz\n');
    }
    const verified = verify ? verify(req.headers) : Promise.resolve(null);
    verified.then(
      (assertion) => {
        // The SDK hands `req.auth` to tools as `extra.authInfo`.
        if (assertion) req.auth = { token: '', clientId: assertion.claims.client_id ?? '', scopes: [], extra: { assertion } };
        return handler(req, res, url);
      },
      (err) => {
        // No identity the proxy signed for this server: the call is refused.
        log(`identity assertion refused on ${req.method} ${url.pathname}: ${err.code ?? ''} ${err.message}`);
        throw Object.assign(new Error(`identity assertion refused: ${err.code ?? 'ERR_INVALID'}: ${err.message}`), { status: 401 });
      },
    ).catch((err) => {
      if (!err.status) log(`error on ${req.method} ${url.pathname}: ${err.stack ?? err}`);
      sendJsonRpcError(res, err.status ?? 500, err.status === 401 ? -32001 : err.status ? -32700 : -32603, err.status ? err.message : 'Internal error');
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(Number(port), host, () => {
      httpServer.off('error', reject);
      resolve();
    });
  });
  const actualPort = httpServer.address().port;
  const base = `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;

  async function close() {
    for (const { transport } of [...streamable.values(), ...legacy.values()]) await transport.close().catch(() => {});
    httpServer.closeAllConnections?.();
    await new Promise((resolve) => httpServer.close(() => resolve()));
  }

  return { port: actualPort, url: base, mcpUrl: `${base}/mcp`, sseUrl: `${base}/sse`, close };
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      port: { type: 'string', short: 'p' },
      host: { type: 'string' },
      'log-requests': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write('usage: node server.mjs [--port N | N] [--host 127.0.0.1] [--log-requests FILE]\n(env: PORT, HOST, WHOAMI_LOG_REQUESTS)\n');
    return;
  }
  const port = values.port ?? positionals[0] ?? process.env.PORT ?? '9300';
  if (!/^\d+$/.test(String(port)) || Number(port) > 65535) throw new Error(`not a port number: ${port}`);
  const s = await startWhoamiServer({
    port: Number(port),
    host: values.host ?? process.env.HOST ?? '127.0.0.1',
    logRequests: values['log-requests'] ?? process.env.WHOAMI_LOG_REQUESTS,
    assertion: process.env.WHOAMI_JWKS_URL
      ? { jwksUrl: process.env.WHOAMI_JWKS_URL, audience: process.env.WHOAMI_AUDIENCE, issuer: process.env.WHOAMI_ISSUER || undefined, cacheMaxAgeMs: Number(process.env.WHOAMI_JWKS_MAX_AGE_MS) || undefined }
      : undefined,
  });
  const stop = async () => {
    await s.close();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.stdout.write(`${JSON.stringify({ ready: true, port: s.port, mcp_url: s.mcpUrl, sse_url: s.sseUrl })}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err) => {
    console.error(`[whoami] failed to start: ${err.message}`);
    process.exit(1);
  });
}
