#!/usr/bin/env node
// The downstream for the benchmark's SSE scenarios: a minimal Streamable HTTP
// endpoint, as fast as Node's http module lets it be.
//
//   node sse-stub.mjs [--port N]     prints {"ready":true,"port":N} on stdout
//
//   GET  /mcp?mode=idle    200 text/event-stream: one JSON-RPC event at once
//                          (in the same write as the headers), then nothing
//                          until the client goes away (an idle stream)
//   GET  /mcp?mode=flood   200 text/event-stream: the same event again and
//                          again, one write per event, as fast as the reader
//                          takes them (backpressure respected)
//   POST /mcp              200 application/json: a small JSON-RPC result
//   GET  /__stats          (direct only) open streams, streams served, and the
//                          headers of the last GET /mcp, so the benchmark can
//                          check that the proxies added the identity headers

import http from 'node:http';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({ options: { port: { type: 'string', default: '0' } } });

const payload = JSON.stringify({
  jsonrpc: '2.0',
  method: 'notifications/progress',
  params: { progressToken: 'bench', progress: 1, total: 100, message: 'x'.repeat(40) },
});
const EVENT = Buffer.from(`event: message\ndata: ${payload}\n\n`);
const RESULT = Buffer.from(
  JSON.stringify({ jsonrpc: '2.0', id: 1, result: { content: [{ type: 'text', text: 'ok' }], isError: false } }),
);

let open = 0;
let served = 0;
let lastHeaders = {};

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://stub');
  if (url.pathname === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ open, served, eventBytes: EVENT.length, lastHeaders }));
    return;
  }
  if (url.pathname !== '/mcp') {
    res.writeHead(404).end();
    return;
  }
  if (req.method === 'POST') {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': RESULT.length });
      res.end(RESULT);
    });
    return;
  }
  if (req.method !== 'GET') {
    res.writeHead(405).end();
    return;
  }
  lastHeaders = req.headers;
  served += 1;
  open += 1;
  let closed = false;
  res.on('close', () => {
    closed = true;
    open -= 1;
  });
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  if (url.searchParams.get('mode') === 'flood') {
    // Up to 256 writes per turn of the event loop, then yield (or wait for
    // 'drain'), so closes and new streams are still served.
    const pump = () => {
      for (let n = 0; n < 256 && !closed; n += 1) {
        if (!res.write(EVENT)) {
          res.once('drain', pump);
          return;
        }
      }
      if (!closed) setImmediate(pump);
    };
    pump();
  } else {
    res.write(EVENT); // goes out with the headers; then the stream idles
  }
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 60_000;
server.requestTimeout = 0;
server.timeout = 0;
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
