// Memory per idle event stream, for one proxy binary, without nginx: what
// `BENCH_ONLY=sse scripts/bench.sh` measures in its memory row, quick
// enough to try a change. With MEMPROBE_WRAP (a command prefix, e.g.
// "heaptrack -o /tmp/hp/proxy") the proxy runs under that tool, and the
// streams stay open for MEMPROBE_HOLD_SECONDS so that its peak holds them.
//
//   PROXY_BIN=... node tests/bench/memprobe.mjs
//   MEMPROBE_ROUNDS=3 BENCH_SSE_STREAMS=1000 node tests/bench/memprobe.mjs
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, withSseProxy, memoryPerStream, holdStreams, waitStubIdle } from './bench.mjs';

const rounds = Number(process.env.MEMPROBE_ROUNDS ?? 3);
const wrap = process.env.MEMPROBE_WRAP;
const holdSeconds = Number(process.env.MEMPROBE_HOLD_SECONDS ?? 3);
const log = (...a) => console.error('[memprobe]', ...a);

const realBin = cfg.bin;
const wrapDir = wrap && fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-mem-wrap-'));
const wrapper = wrap && path.join(wrapDir, 'wrapped-proxy');
if (wrap) fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${wrap} "${realBin}" "$@"\n`, { mode: 0o755 });

const results = await withSseProxy('mcp-mem-', async ({ token, stub, startProxy }) => {
  // Only the measured proxy runs under the tool (not the one that signs in).
  const start = async (name) => {
    if (!wrap) return startProxy(name);
    cfg.bin = wrapper;
    try {
      return await startProxy(name);
    } finally {
      cfg.bin = realBin;
    }
  };
  const perStream = [];
  for (let round = 1; round <= (wrap ? 1 : rounds); round++) {
    const proxy = await start(`proxy-mem-${round}`);
    try {
      if (wrap) {
        const held = await holdStreams(proxy.port, '/mcp?mode=idle', token, cfg.sseStreams);
        log(`${held.count} streams open; holding ${holdSeconds} s`);
        await new Promise((r) => setTimeout(r, holdSeconds * 1000));
        held.close();
        await waitStubIdle(stub);
        // The tool runs the proxy as its child: stopping the tool's pid
        // would leave the proxy running, and the tool waiting for it.
        execFileSync('pkill', ['-TERM', '-f', realBin]);
      } else {
        const m = await memoryPerStream(proxy, proxy.port, token, stub);
        log(`round ${round}: ${m.kib_per_stream.toFixed(1)} KiB per idle stream (RSS ${m.rss_before_kib} → ${m.rss_after_kib} KiB)`);
        perStream.push(m.kib_per_stream);
      }
    } finally {
      await proxy.close();
    }
  }
  return perStream;
});
if (wrap) fs.rmSync(wrapDir, { recursive: true, force: true });
if (results.length) {
  results.sort((a, b) => a - b);
  console.log(JSON.stringify({ kib_per_stream_median: results[Math.floor(results.length / 2)], rounds: results }));
}
