// First-event samples against the SSE stub directly, nginx and the proxy,
// in a fixed order given by TARGETS, laid out as the bench lays them out
// (servers and stub on the server CPU): what one target's place after
// another does to its time. Run it under the load CPU, as bench.sh runs
// the bench:
//
//   TARGETS=direct,nginx,proxy taskset -c 1 node tests/bench/ttfeorder.mjs
//   TARGETS=direct,proxy,nginx taskset -c 1 node tests/bench/ttfeorder.mjs
//   TTFE_ORDER_SAMPLES (400) samples per target; TTFE_ORDER_PERF=1 records the
//   scheduler and every system call meanwhile (results/ttfe-order.data,
//   `perf script` to read), as in "Measured (2026-12-07, seventeenth session)".
//   BASE_BIN=...: a second proxy build as the target `base`.
//
// Prints each target's p50 and p90 in µs and the servers' pids as JSON.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startSseStub, startNginx, nginxProxy, startOurProxy } from './bench.mjs';
import { firstEvent } from './sse-client.mjs';

const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
const targets = (process.env.TARGETS ?? 'direct,nginx,proxy').split(',');
const samplesPerTarget = Number(process.env.TTFE_ORDER_SAMPLES ?? 400);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-ttfe-order-'));
const cleanups = [];
try {
  const { shared, token } = await signedInSetup(dir, cleanups);
  const stub = await startSseStub();
  cleanups.push(() => stub.close());
  const nginxPort = await freePort();
  const nginx = await startNginx('nginx-sse', nginxProxy(nginxPort, stub.port));
  cleanups.push(() => nginx.close());
  const downstreamUrl = `http://127.0.0.1:${stub.port}/mcp`;
  const proxy = await startOurProxy({ name: 'proxy-sse', port: await freePort(), shared, downstreamUrl });
  cleanups.push(() => proxy.close());
  const ports = { direct: stub.port, nginx: nginxPort, proxy: proxy.port };
  const pids = { stub: stub.pid, nginx: nginx.measured(), proxy: proxy.measured(), client: process.pid };
  if (process.env.BASE_BIN) {
    const base = await startOurProxy({ name: 'proxy-base', port: await freePort(), shared, downstreamUrl, bin: process.env.BASE_BIN });
    cleanups.push(() => base.close());
    ports.base = base.port;
    pids.base = base.measured();
  }
  for (const t of targets) if (!(t in ports)) throw new Error(`TARGETS: unknown target ${t} (direct, nginx, proxy, base with BASE_BIN)`);
  const open = async (t) => (await firstEvent({ port: ports[t], path: '/mcp?mode=idle', token })).stream.close();
  for (let i = 0; i < 200; i++) for (const t of targets) await open(t);
  let perf;
  if (process.env.TTFE_ORDER_PERF === '1') {
    fs.mkdirSync(cfg.outDir, { recursive: true });
    const events = ['sched:sched_switch', 'sched:sched_wakeup', 'raw_syscalls:sys_enter', 'raw_syscalls:sys_exit'];
    perf = spawn('perf', ['record', '-a', ...events.flatMap((e) => ['-e', e]), '-o', path.join(cfg.outDir, 'ttfe-order.data')], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 1000));
  }
  const samples = Object.fromEntries(targets.map((t) => [t, []]));
  for (let i = 0; i < samplesPerTarget; i++) {
    for (const t of targets) {
      const { stream, micros } = await firstEvent({ port: ports[t], path: '/mcp?mode=idle', token });
      stream.close();
      samples[t].push(micros);
    }
  }
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((r) => perf.on('exit', r));
  }
  const result = { order: targets, pids };
  for (const t of targets) {
    const s = samples[t].sort((a, b) => a - b);
    result[t] = { p50_us: s[Math.floor(s.length / 2)], p90_us: s[Math.floor(s.length * 0.9)] };
  }
  console.log(JSON.stringify(result));
} finally {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      /* already gone */
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
