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
import { freePort } from '../e2e/lib/index.mjs';
import { BODY_200, mcpHeaders, signedInSetup, startOurProxy, startNginx, nginxProxy, rssKiB } from './bench.mjs';

const connections = Number(process.env.KEEPALIVE_CONNECTIONS ?? 1000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-keepalive-'));
const cleanups = [];
const log = (...a) => console.error('[keepaliveprobe]', ...a);

/** The benchmark's POST (`BODY_200` with an MCP client's headers) as raw HTTP/1.1. */
function post(port, token) {
  const headers = { host: `127.0.0.1:${port}`, 'content-type': 'application/json', ...mcpHeaders(token), 'content-length': BODY_200.length };
  return `POST /mcp HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${BODY_200}`;
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
