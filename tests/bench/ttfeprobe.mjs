// Time to the first event of new event streams through one proxy binary,
// sample after sample, without nginx: quick enough to try a change, and a
// steady load for a profiler.
//
//   PROXY_BIN=... node tests/bench/ttfeprobe.mjs     TTFE_SAMPLES (2000)
//   TTFE_PERF=1: `perf record -g` of the proxy meanwhile (results/perf-ttfe.data)
//   TTFE_CALLGRIND=1: the proxy under callgrind instead, and the instructions
//     per new stream counted (the same number on a busy machine as on an idle
//     one); the dump is results/ttfe-<time>.callgrind
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, withSseProxy, cpuNanos, underCallgrind } from './bench.mjs';
import { firstEvent } from './sse-client.mjs';

const callgrind = process.env.TTFE_CALLGRIND === '1';
const samples = Number(process.env.TTFE_SAMPLES ?? (callgrind ? 1000 : 2000));
const wrapDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-ttfe-wrap-'));
const counter = callgrind && underCallgrind(wrapDir);
const timeoutMs = callgrind ? 60000 : 15000;

try {
  await withSseProxy('mcp-ttfe-', async ({ token, startProxy }) => {
    // Only the measured proxy runs under the tool (not the one that signs in).
    const realBin = cfg.bin;
    if (counter) cfg.bin = counter.wrapper;
    const proxy = await startProxy('proxy-ttfe').finally(() => {
      cfg.bin = realBin;
    });
    const open = () => firstEvent({ port: proxy.port, path: '/mcp?mode=idle', token, timeoutMs });
    for (let i = 0; i < 200; i++) (await open()).stream.close();
    let perf;
    if (counter) {
      await new Promise((r) => setTimeout(r, 500));
      counter.zero();
    } else if (process.env.TTFE_PERF === '1') {
      fs.mkdirSync(cfg.outDir, { recursive: true });
      perf = spawn('perf', ['record', '-g', '-F', '4999', '-p', String(proxy.pid), '-o', path.join(cfg.outDir, 'perf-ttfe.data')], { stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 500));
    }
    const cpu0 = cpuNanos([proxy.pid]);
    const micros = [];
    for (let i = 0; i < samples; i++) {
      const r = await open();
      micros.push(r.micros);
      r.stream.close();
    }
    // Let the last connections close before counting.
    await new Promise((r) => setTimeout(r, callgrind ? 1000 : 100));
    const cpu1 = cpuNanos([proxy.pid]);
    if (perf) {
      perf.kill('SIGINT');
      await new Promise((r) => perf.on('exit', r));
    }
    micros.sort((a, b) => a - b);
    const result = {
      samples,
      p50_ms: micros[Math.floor(samples / 2)] / 1000,
      p99_ms: micros[Math.floor(samples * 0.99)] / 1000,
      proxy_cpu_us_per_stream: (cpu1 - cpu0) / 1000 / samples,
    };
    if (counter) {
      const { dump, total } = counter.dump();
      result.instructions_per_stream = Math.round(total / samples);
      fs.mkdirSync(cfg.outDir, { recursive: true });
      result.callgrind = path.join(cfg.outDir, `ttfe-${new Date().toISOString().replace(/[:.]/g, '-')}.callgrind`);
      fs.copyFileSync(dump, result.callgrind);
      counter.stop();
    }
    console.log(JSON.stringify(result));
  });
} finally {
  fs.rmSync(wrapDir, { recursive: true, force: true });
}
