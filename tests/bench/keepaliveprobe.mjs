// Memory per idle keep-alive connection, nginx against the proxy: each of
// KEEPALIVE_CONNECTIONS (1,000) connections sends the benchmark's POST once
// and is then held open, idle; the server's RSS growth divided by the
// connections. Where a server's per-request CPU rises with the number of
// connections while its instructions per request do not (instructions.mjs
// with INSTR_CONNECTIONS=256), this is the state it keeps per connection.
//
//   PROXY_BIN=/abs/path node tests/bench/keepaliveprobe.mjs   (KEEPALIVE_CONNECTIONS)
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { signedInSetup, startOurProxy, startNginx, nginxProxy, rssKiB } from './bench.mjs';

const connections = Number(process.env.KEEPALIVE_CONNECTIONS ?? 1000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-keepalive-'));
const cleanups = [];
const log = (...a) => console.error('[keepaliveprobe]', ...a);

/** The request post.lua sends: a 200-byte tools/call with an MCP client's headers. */
function post(port, token) {
  const prefix = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"';
  const suffix = '"}}}';
  const body = prefix + 'x'.repeat(200 - prefix.length - suffix.length) + suffix;
  return [
    'POST /mcp HTTP/1.1',
    `Host: 127.0.0.1:${port}`,
    'Content-Type: application/json',
    'Accept: application/json, text/event-stream',
    'MCP-Protocol-Version: 2025-06-18',
    `Authorization: Bearer ${token}`,
    `Content-Length: ${body.length}`,
    '',
    body,
  ].join('\r\n');
}

/** Opens `n` connections one after another, each answered once (200) and kept open. */
async function openAnswered(port, token, n) {
  const sockets = [];
  const request = post(port, token);
  for (let i = 0; i < n; i++) {
    await new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write(request));
      let head = '';
      const onData = (chunk) => {
        head += chunk;
        if (!head.includes('\r\n\r\n')) return;
        socket.off('data', onData);
        if (!head.startsWith('HTTP/1.1 200')) reject(new Error(`connection ${i}: ${head.split('\r\n')[0]}`));
        else resolve();
      };
      socket.on('data', onData);
      socket.on('error', reject);
      sockets.push(socket);
    });
  }
  return sockets;
}

/** A port nothing listens on now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

async function perConnection(name, port, pids, token) {
  // Warm-up: the first connections' one-time allocations are not counted.
  for (const s of await openAnswered(port, token, 16)) s.destroy();
  await new Promise((r) => setTimeout(r, 300));
  const before = rssKiB(pids);
  const sockets = await openAnswered(port, token, connections);
  await new Promise((r) => setTimeout(r, 300));
  const after = rssKiB(pids);
  for (const s of sockets) s.destroy();
  const kib = (after - before) / connections;
  log(`${name}: RSS ${before} -> ${after} KiB with ${connections} idle connections`);
  return kib;
}

try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  const proxy = await startOurProxy({ name: 'proxy', port: shared.proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
  cleanups.push(() => proxy.close());
  const nginxPort = await freePort();
  const nginx = await startNginx('nginx', nginxProxy(nginxPort, stubPort));
  cleanups.push(() => nginx.close());
  const result = {
    connections,
    nginx_kib_per_connection: await perConnection('nginx', nginxPort, nginx.workers, token),
    proxy_kib_per_connection: await perConnection('proxy', shared.proxyPort, [proxy.pid], token),
  };
  result.ratio = result.proxy_kib_per_connection / result.nginx_kib_per_connection;
  console.log(JSON.stringify(result));
} finally {
  for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
