// Time to the first event of new event streams through one proxy binary,
// sample after sample, without nginx: quick enough to try a change, and a
// steady load for a profiler.
//
//   PROXY_BIN=... node tests/bench/ttfeprobe.mjs     TTFE_SAMPLES (2000)
//   TTFE_PERF=1: `perf record -g` of the proxy meanwhile (results/perf-ttfe.data)
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { cfg, withSseProxy } from './bench.mjs';
import { firstEvent } from './sse-client.mjs';

const samples = Number(process.env.TTFE_SAMPLES ?? 2000);

await withSseProxy('mcp-ttfe-', async ({ token, startProxy }) => {
  const proxy = await startProxy('proxy-ttfe');
  for (let i = 0; i < 200; i++) (await firstEvent({ port: proxy.port, path: '/mcp?mode=idle', token })).stream.close();
  let perf;
  if (process.env.TTFE_PERF === '1') {
    fs.mkdirSync(cfg.outDir, { recursive: true });
    perf = spawn('perf', ['record', '-g', '-F', '4999', '-p', String(proxy.pid), '-o', path.join(cfg.outDir, 'perf-ttfe.data')], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
  }
  const ticks0 = fs.readFileSync(`/proc/${proxy.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const micros = [];
  for (let i = 0; i < samples; i++) {
    const r = await firstEvent({ port: proxy.port, path: '/mcp?mode=idle', token });
    micros.push(r.micros);
    r.stream.close();
  }
  const ticks1 = fs.readFileSync(`/proc/${proxy.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((r) => perf.on('exit', r));
  }
  const cpu = (t) => Number(t[11]) + Number(t[12]);
  const hz = Number(execFileSync('getconf', ['CLK_TCK']).toString());
  micros.sort((a, b) => a - b);
  console.log(JSON.stringify({
    samples,
    p50_ms: micros[Math.floor(samples / 2)] / 1000,
    p99_ms: micros[Math.floor(samples * 0.99)] / 1000,
    proxy_cpu_us_per_stream: ((cpu(ticks1) - cpu(ticks0)) / hz) * 1e6 / samples,
  }));
});
