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
import path from 'node:path';
import { freePort } from '../e2e/lib/index.mjs';
import { cfg, withSseProxy, startNginx, nginxProxy } from './bench.mjs';
import { firstEvent } from './sse-client.mjs';

const targets = (process.env.TARGETS ?? 'direct,nginx,proxy').split(',');
const samplesPerTarget = Number(process.env.TTFE_ORDER_SAMPLES ?? 400);

await withSseProxy('mcp-ttfe-order-', async ({ token, stub, startProxy, whenDone }) => {
  const nginxPort = await freePort();
  const nginx = await startNginx('nginx-sse', nginxProxy(nginxPort, stub.port));
  whenDone(() => nginx.close());
  const proxy = await startProxy('proxy-sse');
  const ports = { direct: stub.port, nginx: nginxPort, proxy: proxy.port };
  const pids = { stub: stub.pid, nginx: nginx.measured(), proxy: proxy.measured(), client: process.pid };
  if (process.env.BASE_BIN) {
    const base = await startProxy('proxy-base', { port: await freePort(), bin: process.env.BASE_BIN });
    ports.base = base.port;
    pids.base = base.measured();
  }
  for (const t of targets) if (!(t in ports)) throw new Error(`TARGETS: unknown target ${t} (direct, nginx, proxy, base with BASE_BIN)`);
  const sample = async (t) => {
    const { stream, micros } = await firstEvent({ port: ports[t], path: '/mcp?mode=idle', token });
    stream.close();
    return micros;
  };
  for (let i = 0; i < 200; i++) for (const t of targets) await sample(t);
  let perf;
  if (process.env.TTFE_ORDER_PERF === '1') {
    fs.mkdirSync(cfg.outDir, { recursive: true });
    const events = ['sched:sched_switch', 'sched:sched_wakeup', 'raw_syscalls:sys_enter', 'raw_syscalls:sys_exit'];
    perf = spawn('perf', ['record', '-a', ...events.flatMap((e) => ['-e', e]), '-o', path.join(cfg.outDir, 'ttfe-order.data')], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 1000));
  }
  const samples = Object.fromEntries(targets.map((t) => [t, []]));
  for (let i = 0; i < samplesPerTarget; i++) for (const t of targets) samples[t].push(await sample(t));
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
});
