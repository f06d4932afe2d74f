// What reaches the downstream stub per request, through nginx and through
// the proxy: connections held open to it, and its system calls per request
// (strace -c on its worker during a wrk run). Answers "why does the stub
// spend more CPU behind the proxy": more connections, more reads, or
// bigger requests.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { signedInSetup, startNginx, nginxProxy, startOurProxy, runWrk } from './bench.mjs';
import { freePort } from '../e2e/lib/index.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-stubprobe-'));
const cleanups = [];
const seconds = Number(process.env.PROBE_SECONDS ?? 5);
const connections = Number(process.env.PROBE_CONNECTIONS ?? 32);
try {
  const { shared, token, stubPort, stub } = await signedInSetup(dir, cleanups);
  const proxyPort = shared.proxyPort;
  const nginxPort = await freePort();
  const nginx = await startNginx('nginx-proxy', nginxProxy(nginxPort, stubPort));
  cleanups.push(() => nginx.close());
  const proxy = await startOurProxy({ name: 'proxy', port: proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
  cleanups.push(() => proxy.close());
  for (const [name, url] of [['nginx', `http://127.0.0.1:${nginxPort}/mcp`], ['proxy', `http://127.0.0.1:${proxyPort}/mcp`]]) {
    await runWrk(url, connections, 2, token);
    const out = path.join(dir, `${name}.strace`);
    // PROBE_TRACE=proxy: the proxy's own system calls instead of the stub's.
    const traced = process.env.PROBE_TRACE === 'proxy' ? (name === 'proxy' ? proxy.pid : nginx.workers[0]) : stub.workers[0];
    const tracer = spawn('strace', ['-c', '-f', '-o', out, '-p', String(traced)], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    let held = 0;
    const sampler = setInterval(() => {
      const ss = execFileSync('ss', ['-tnH', 'state', 'established', `( sport = :${stubPort} )`]).toString();
      held = Math.max(held, ss.split('\n').filter(Boolean).length);
    }, 500);
    const r = await runWrk(url, connections, seconds, token);
    clearInterval(sampler);
    tracer.kill('SIGINT');
    await new Promise((res) => tracer.on('exit', res));
    const table = fs.readFileSync(out, 'utf8');
    const calls = Object.fromEntries(
      table.split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => f.length >= 5 && /^\d/.test(f[3] ?? '')).map((f) => [f[f.length - 1], Number(f[3])]),
    );
    const per = (k) => ((calls[k] ?? 0) / r.requests).toFixed(2);
    console.log(`${name}: ${r.requests} requests; connections to the stub (max) ${held}; ${process.env.PROBE_TRACE === 'proxy' ? 'its own' : 'stub'} syscalls per request: sendto ${per('sendto')}, read ${per('read')}, recvfrom ${per('recvfrom')}, readv ${per('readv')}, writev ${per('writev')}, write ${per('write')}, accept4 ${per('accept4')}, epoll_wait ${per('epoll_wait')}, close ${per('close')}`);
  }
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
