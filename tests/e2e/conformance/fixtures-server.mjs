#!/usr/bin/env node
// An MCP server (Streamable HTTP, @modelcontextprotocol/sdk) that defines
// every fixture `@modelcontextprotocol/conformance@0.1.16 server --suite all`
// calls: its test_* tools, prompts and test:// resources. server-everything
// lacks them, so the suite's progress, logging, sampling, elicitation and
// SSE-polling scenarios only test the proxy's streaming against this server.
//
//   PORT=3001 node conformance/fixtures-server.mjs       → http://127.0.0.1:3001/mcp
//   node conformance/fixtures-server.mjs --port 0        (any free port)
//
// It serves POST/GET/DELETE /mcp on 127.0.0.1 (BIND_HOST or --host) only,
// prints one line on stdout when it listens:
//   {"ready":true,"url":"http://127.0.0.1:3001/mcp","port":3001}
// and one line on stderr per session it opens ("session opened <id>").
//
// What each scenario needs (read from the suite's dist/index.js):
//   - stateful sessions (server-sse-polling and server-sse-multiple-streams
//     want an Mcp-Session-Id);
//   - an event store and a retry interval: POST streams start with a priming
//     event (id, empty data, retry:), and test_reconnection closes its POST
//     stream before answering; the answer is replayed on the GET that carries
//     Last-Event-ID;
//   - server-to-client messages tied to the tool call (extra.sendNotification,
//     extra.sendRequest), so progress, log messages, sampling and elicitation
//     requests travel on the tool call's own POST stream;
//   - DNS rebinding protection: a Host or Origin that is not a loopback name
//     gets 403, as the SDK's localhostHostValidation middleware does (port
//     agnostic, so the proxy's own Origin passes when it forwards a request).
//
// One quirk of the suite: server-sse-polling's raw POST announces
// `mcp-protocol-version: 2025-03-26` on a session that negotiated 2025-11-25,
// and the SDK sends priming events (and offers closeSSEStream) only to
// 2025-11-25 requests. The session's negotiated version is what this server
// honours: a lower header inside a session is raised to it before the SDK
// transport sees the request (the spec lets a server hold the client to the
// negotiated version).

import crypto from 'node:crypto';
import http from 'node:http';
import zlib from 'node:zlib';
import { parseArgs } from 'node:util';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  LATEST_PROTOCOL_VERSION,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const MAX_BODY_BYTES = 1 << 20;
const RETRY_MS = 1000;
const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

// ---------------------------------------------------------------- media

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const typed = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(typed));
  return Buffer.concat([len, typed, crc]);
}

/** A 1x1 red PNG, built here so its bytes are a real image. */
function redPixelPng() {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0); // width
  ihdr.writeUInt32BE(1, 4); // height
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  const scanline = Buffer.from([0, 255, 0, 0]); // filter 0, then R G B
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', zlib.deflateSync(scanline)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** 10 ms of 8 kHz 16-bit mono silence as a RIFF/WAVE file. */
function silentWav() {
  const rate = 8000;
  const samples = rate / 100;
  const data = Buffer.alloc(samples * 2);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'ascii');
  h.writeUInt32LE(36 + data.length, 4);
  h.write('WAVE', 8, 'ascii');
  h.write('fmt ', 12, 'ascii');
  h.writeUInt32LE(16, 16); // fmt chunk size
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // mono
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28); // byte rate
  h.writeUInt16LE(2, 32); // block align
  h.writeUInt16LE(16, 34); // bits per sample
  h.write('data', 36, 'ascii');
  h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]);
}

const PNG_BASE64 = redPixelPng().toString('base64');
const WAV_BASE64 = silentWav().toString('base64');

// ---------------------------------------------------------------- fixtures

const NO_ARGS = { type: 'object', properties: {} };

const TOOLS = [
  { name: 'test_simple_text', description: 'Returns one text item', inputSchema: NO_ARGS },
  { name: 'test_image_content', description: 'Returns a 1x1 PNG image', inputSchema: NO_ARGS },
  { name: 'test_audio_content', description: 'Returns a short WAV clip', inputSchema: NO_ARGS },
  { name: 'test_embedded_resource', description: 'Returns an embedded text resource', inputSchema: NO_ARGS },
  { name: 'test_multiple_content_types', description: 'Returns text, an image and an embedded resource', inputSchema: NO_ARGS },
  { name: 'test_tool_with_logging', description: 'Sends three info log messages while it runs', inputSchema: NO_ARGS },
  { name: 'test_tool_with_progress', description: 'Reports progress 0, 50 and 100 of 100 while it runs', inputSchema: NO_ARGS },
  { name: 'test_error_handling', description: 'Always fails with isError: true', inputSchema: NO_ARGS },
  {
    name: 'test_sampling',
    description: 'Asks the client for an LLM completion (sampling/createMessage)',
    inputSchema: { type: 'object', properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } }, required: ['prompt'] },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the user for input (elicitation/create)',
    inputSchema: { type: 'object', properties: { message: { type: 'string', description: 'The message to show the user' } }, required: ['message'] },
  },
  { name: 'test_elicitation_sep1034_defaults', description: 'Elicitation whose fields carry defaults (SEP-1034)', inputSchema: NO_ARGS },
  { name: 'test_elicitation_sep1330_enums', description: 'Elicitation with the five enum forms (SEP-1330)', inputSchema: NO_ARGS },
  {
    name: 'test_reconnection',
    description: 'Closes its SSE stream before answering; the answer comes on the resumed stream (SEP-1699)',
    inputSchema: NO_ARGS,
  },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features (SEP-1613)',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: { address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
  },
];

const RESOURCES = [
  { uri: 'test://static-text', name: 'static-text', description: 'A static text resource', mimeType: 'text/plain' },
  { uri: 'test://static-binary', name: 'static-binary', description: 'A static binary resource (a PNG)', mimeType: 'image/png' },
  { uri: 'test://watched-resource', name: 'watched-resource', description: 'A resource clients may subscribe to', mimeType: 'text/plain' },
];

const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;
const RESOURCE_TEMPLATES = [
  { uriTemplate: 'test://template/{id}/data', name: 'template', description: 'JSON data for an id', mimeType: 'application/json' },
];

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A prompt without arguments' },
  {
    name: 'test_prompt_with_arguments',
    description: 'A prompt with two required arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'A prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'A prompt with an image' },
];

// Completion candidates per prompt argument; a request gets the ones its prefix matches.
const COMPLETIONS = {
  test_prompt_with_arguments: {
    arg1: ['paris', 'park', 'party', 'test-value', 'testing'],
    arg2: ['alpha', 'beta', 'gamma'],
  },
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function text(t) {
  return { type: 'text', text: t };
}

function requireString(args, name) {
  const v = args?.[name];
  if (typeof v !== 'string') throw new McpError(ErrorCode.InvalidParams, `argument "${name}" (string) is required`);
  return v;
}

function readResource(uri) {
  if (uri === 'test://static-text') {
    return { contents: [{ uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' }] };
  }
  if (uri === 'test://static-binary') return { contents: [{ uri, mimeType: 'image/png', blob: PNG_BASE64 }] };
  if (uri === 'test://watched-resource') return { contents: [{ uri, mimeType: 'text/plain', text: 'Watched resource content' }] };
  const m = TEMPLATE.exec(uri);
  if (m) {
    const id = decodeURIComponent(m[1]);
    return { contents: [{ uri, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) }] };
  }
  throw new McpError(ErrorCode.InvalidParams, `Resource not found: ${uri}`);
}

function getPrompt(name, args) {
  switch (name) {
    case 'test_simple_prompt':
      return { messages: [{ role: 'user', content: text('This is a simple prompt for testing.') }] };
    case 'test_prompt_with_arguments': {
      const arg1 = requireString(args, 'arg1');
      const arg2 = requireString(args, 'arg2');
      return { messages: [{ role: 'user', content: text(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`) }] };
    }
    case 'test_prompt_with_embedded_resource': {
      const uri = requireString(args, 'resourceUri');
      return {
        messages: [
          { role: 'user', content: { type: 'resource', resource: { uri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' } } },
          { role: 'user', content: text('Please process the embedded resource above.') },
        ],
      };
    }
    case 'test_prompt_with_image':
      return {
        messages: [
          { role: 'user', content: { type: 'image', data: PNG_BASE64, mimeType: 'image/png' } },
          { role: 'user', content: text('Please analyze the image above.') },
        ],
      };
    default:
      throw new McpError(ErrorCode.InvalidParams, `Prompt not found: ${name}`);
  }
}

const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'User name', default: 'John Doe' },
    age: { type: 'integer', description: 'User age', default: 30 },
    score: { type: 'number', description: 'User score', default: 95.5 },
    status: { type: 'string', description: 'User status', enum: ['active', 'inactive', 'pending'], default: 'active' },
    verified: { type: 'boolean', description: 'Verification status', default: true },
  },
};

const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: { type: 'string', description: 'Pick one', enum: ['option1', 'option2', 'option3'] },
    titledSingle: {
      type: 'string',
      description: 'Pick one (titled)',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: { type: 'string', description: 'Pick one (legacy titles)', enum: ['opt1', 'opt2', 'opt3'], enumNames: ['Option One', 'Option Two', 'Option Three'] },
    untitledMulti: { type: 'array', description: 'Pick several', minItems: 1, maxItems: 3, items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
    titledMulti: {
      type: 'array',
      description: 'Pick several (titled)',
      minItems: 1,
      maxItems: 3,
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
};

async function elicit(extra, message, requestedSchema) {
  const r = await extra.sendRequest({ method: 'elicitation/create', params: { mode: 'form', message, requestedSchema } }, ElicitResultSchema);
  return { content: [text(`Elicitation completed: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`)] };
}

/** One MCP server per session: its own log level and subscriptions. */
function createServer() {
  const server = new Server(
    { name: 'mcp-oauth-proxy-conformance-fixtures', version: '1.0.0' },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );
  const subscriptions = new Set();

  async function log(extra, level, data) {
    // The SDK keeps the level logging/setLevel chose per session; a tool's
    // messages go on its own stream, so the filter is applied here.
    if (server.isMessageIgnored(level, extra.sessionId)) return;
    await extra.sendNotification({ method: 'notifications/message', params: { level, logger: 'fixtures', data } });
  }

  async function callTool(name, args, extra) {
    switch (name) {
      case 'test_simple_text':
        return { content: [text('This is a simple text response for testing.')] };
      case 'test_image_content':
        return { content: [{ type: 'image', data: PNG_BASE64, mimeType: 'image/png' }] };
      case 'test_audio_content':
        return { content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }] };
      case 'test_embedded_resource':
        return {
          content: [{ type: 'resource', resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' } }],
        };
      case 'test_multiple_content_types':
        return {
          content: [
            text('Multiple content types test:'),
            { type: 'image', data: PNG_BASE64, mimeType: 'image/png' },
            { type: 'resource', resource: { uri: 'test://mixed-content-resource', mimeType: 'application/json', text: JSON.stringify({ test: 'data', value: 123 }) } },
          ],
        };
      case 'test_tool_with_logging':
        await log(extra, 'info', 'Tool execution started');
        await sleep(50);
        await log(extra, 'info', 'Tool processing data');
        await sleep(50);
        await log(extra, 'info', 'Tool execution completed');
        return { content: [text('Tool with logging executed successfully')] };
      case 'test_tool_with_progress': {
        const progressToken = extra._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress) await sleep(50);
          if (progressToken !== undefined) {
            await extra.sendNotification({ method: 'notifications/progress', params: { progressToken, progress, total: 100, message: `${progress}%` } });
          }
        }
        return { content: [text(`Progress tool finished (token ${JSON.stringify(progressToken ?? null)})`)] };
      }
      case 'test_error_handling':
        return { isError: true, content: [text('This tool intentionally returns an error for testing')] };
      case 'test_sampling': {
        const prompt = requireString(args, 'prompt');
        const r = await extra.sendRequest(
          { method: 'sampling/createMessage', params: { messages: [{ role: 'user', content: text(prompt) }], maxTokens: 100 } },
          CreateMessageResultSchema,
        );
        const answer = r.content?.type === 'text' ? r.content.text : JSON.stringify(r.content);
        return { content: [text(`LLM response: ${answer}`)] };
      }
      case 'test_elicitation':
        return elicit(extra, requireString(args, 'message'), {
          type: 'object',
          properties: {
            username: { type: 'string', description: "User's response" },
            email: { type: 'string', description: "User's email address" },
          },
          required: ['username', 'email'],
        });
      case 'test_elicitation_sep1034_defaults':
        return elicit(extra, 'Please review and update the form fields with defaults', SEP1034_SCHEMA);
      case 'test_elicitation_sep1330_enums':
        return elicit(extra, 'Please select options from the enum fields', SEP1330_SCHEMA);
      case 'test_reconnection':
        // Offered by the transport only to a resumable stream (event store and
        // a 2025-11-25 request); without it the client could never get the answer.
        if (!extra.closeSSEStream) {
          return { isError: true, content: [text('test_reconnection needs a resumable SSE stream (protocol 2025-11-25 with an event store)')] };
        }
        extra.closeSSEStream();
        // Answer while the client is away: the event store keeps the
        // answer until the client resumes with Last-Event-ID.
        await sleep(100);
        return { content: [text('Reconnection test completed: this answer was stored while the stream was closed and replayed on resume.')] };
      case 'json_schema_2020_12_tool':
        return { content: [text(`json_schema_2020_12_tool called with ${JSON.stringify(args ?? {})}`)] };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
    }
  }

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => callTool(req.params.name, req.params.arguments ?? {}, extra));
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: RESOURCE_TEMPLATES }));
  server.setRequestHandler(ReadResourceRequestSchema, async (req) => readResource(req.params.uri));
  server.setRequestHandler(SubscribeRequestSchema, async (req) => {
    readResource(req.params.uri); // unknown URIs are refused, as reads are
    subscriptions.add(req.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => {
    subscriptions.delete(req.params.uri);
    return {};
  });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (req) => getPrompt(req.params.name, req.params.arguments));
  server.setRequestHandler(CompleteRequestSchema, async (req) => {
    const { ref, argument } = req.params;
    const candidates = ref.type === 'ref/prompt' ? (COMPLETIONS[ref.name]?.[argument.name] ?? []) : [];
    const values = candidates.filter((v) => v.startsWith(argument.value));
    return { completion: { values, total: values.length, hasMore: false } };
  });
  return server;
}

// ---------------------------------------------------------------- resumability

/** In-memory event store: ids are "<stream id>::<sequence>", so a Last-Event-ID names its stream. */
function createEventStore() {
  const events = []; // { id, streamId, seq, message }
  let seq = 0;
  const parse = (id) => {
    const i = id.lastIndexOf('::');
    return i < 0 ? undefined : { streamId: id.slice(0, i), seq: Number(id.slice(i + 2)) };
  };
  return {
    async storeEvent(streamId, message) {
      seq += 1;
      const id = `${streamId}::${seq}`;
      events.push({ id, streamId, seq, message });
      return id;
    },
    async getStreamIdForEventId(eventId) {
      return events.some((e) => e.id === eventId) ? parse(eventId).streamId : undefined;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const last = parse(lastEventId);
      if (!last || !events.some((e) => e.id === lastEventId)) throw new Error(`unknown Last-Event-ID ${lastEventId}`);
      for (const e of events) {
        // Priming events ({}) carry no message: they only hand out an id.
        if (e.streamId === last.streamId && e.seq > last.seq && Object.keys(e.message).length > 0) await send(e.id, e.message);
      }
      return last.streamId;
    },
  };
}

// ---------------------------------------------------------------- HTTP

function jsonRpcError(res, status, code, message) {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

/** Host (and Origin, when sent) must name a loopback host; the port may be anything. */
function rebindingProblem(req) {
  const host = req.headers.host;
  if (!host) return 'Missing Host header';
  let hostname;
  try {
    hostname = new URL(`http://${host}`).hostname;
  } catch {
    return `Invalid Host header: ${host}`;
  }
  if (!LOOPBACK_NAMES.has(hostname)) return `Invalid Host: ${hostname}`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let o;
    try {
      o = new URL(origin);
    } catch {
      return `Invalid Origin header: ${origin}`;
    }
    if (!['http:', 'https:'].includes(o.protocol) || !LOOPBACK_NAMES.has(o.hostname)) return `Invalid Origin: ${origin}`;
  }
  return undefined;
}

/** Replace a request header where both Node and the SDK's Request conversion (rawHeaders) read it. */
function setRequestHeader(req, name, value) {
  req.headers[name] = value;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === name) req.rawHeaders[i + 1] = value;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error(`request body over ${MAX_BODY_BYTES} bytes`), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const isInitialize = (body) => (Array.isArray(body) ? body : [body]).some((m) => m?.method === 'initialize');

function negotiatedVersion(body) {
  const init = (Array.isArray(body) ? body : [body]).find((m) => m?.method === 'initialize');
  const asked = init?.params?.protocolVersion;
  return SUPPORTED_PROTOCOL_VERSIONS.includes(asked) ? asked : LATEST_PROTOCOL_VERSION;
}

/** Sessions: id → { transport, server, version }. */
const sessions = new Map();

async function startSession(req, res, body) {
  const version = negotiatedVersion(body);
  const server = createServer();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => crypto.randomUUID(),
    eventStore: createEventStore(),
    retryInterval: RETRY_MS,
    onsessioninitialized: (id) => {
      sessions.set(id, { transport, server, version });
      // Harnesses count these lines to see which instance a route reached.
      process.stderr.write(`session opened ${id}\n`);
    },
  });
  transport.onclose = () => {
    if (transport.sessionId) sessions.delete(transport.sessionId);
  };
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/mcp') return jsonRpcError(res, 404, -32000, `Not found: ${url.pathname} (the MCP endpoint is /mcp)`);
  const problem = rebindingProblem(req);
  if (problem) return jsonRpcError(res, 403, -32000, problem);
  if (!['POST', 'GET', 'DELETE'].includes(req.method)) {
    res.setHeader('allow', 'POST, GET, DELETE');
    return jsonRpcError(res, 405, -32000, `Method not allowed: ${req.method}`);
  }

  const sessionId = req.headers['mcp-session-id'];
  const session = typeof sessionId === 'string' ? sessions.get(sessionId) : undefined;
  if (req.method !== 'POST') {
    if (!sessionId) return jsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
    if (!session) return jsonRpcError(res, 404, -32001, 'Session not found');
    return session.transport.handleRequest(req, res);
  }

  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch (err) {
    return err.status === 413 ? jsonRpcError(res, 413, -32000, err.message) : jsonRpcError(res, 400, -32700, `Parse error: ${err.message}`);
  }
  if (!sessionId) {
    if (!isInitialize(body)) return jsonRpcError(res, 400, -32000, 'Bad Request: no Mcp-Session-Id and not an initialize request');
    return startSession(req, res, body);
  }
  if (!session) return jsonRpcError(res, 404, -32001, 'Session not found');
  const announced = req.headers['mcp-protocol-version'];
  if (typeof announced === 'string' && SUPPORTED_PROTOCOL_VERSIONS.includes(announced) && announced < session.version) {
    setRequestHeader(req, 'mcp-protocol-version', session.version);
  }
  return session.transport.handleRequest(req, res, body);
}

const { values: args } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string' } } });
const portText = args.port ?? process.env.PORT ?? '0';
if (!/^\d+$/.test(portText) || Number(portText) > 65535) {
  console.error(`fixtures-server: the port must be a number from 0 to 65535, not ${JSON.stringify(portText)}`);
  process.exit(2);
}
const host = args.host ?? process.env.BIND_HOST ?? '127.0.0.1';

const httpServer = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('fixtures-server: request failed:', err?.stack ?? err);
    jsonRpcError(res, 500, -32603, 'Internal server error');
  });
});
httpServer.listen(Number(portText), host, () => {
  const { port } = httpServer.address();
  const shown = host.includes(':') ? `[${host}]` : host;
  process.stdout.write(`${JSON.stringify({ ready: true, url: `http://${shown}:${port}/mcp`, port })}\n`);
});

async function shutdown() {
  for (const { transport, server } of sessions.values()) {
    await transport.close().catch(() => {});
    await server.close().catch(() => {});
  }
  httpServer.close();
  httpServer.closeAllConnections();
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => shutdown().finally(() => process.exit(0)));
