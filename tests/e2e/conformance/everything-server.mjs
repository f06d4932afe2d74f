#!/usr/bin/env node
// @modelcontextprotocol/server-everything in its Streamable HTTP mode, bound
// to 127.0.0.1 only.
//
//   PORT=3001 node conformance/everything-server.mjs     → http://127.0.0.1:3001/mcp
//
// The package's own entry (`dist/index.js streamableHttp`) reads PORT but calls
// express's `app.listen(PORT)`, which binds every interface. This launcher
// gives a port-only `listen` call the host BIND_HOST (default 127.0.0.1) and
// then loads the same transport module; nothing else changes.

import net from 'node:net';

const host = process.env.BIND_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnHost(...args) {
  const portOnly = typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]));
  if (portOnly && typeof args[1] !== 'string') args.splice(1, 0, host);
  return listen.apply(this, args);
};

await import('@modelcontextprotocol/server-everything/dist/transports/streamableHttp.js');
