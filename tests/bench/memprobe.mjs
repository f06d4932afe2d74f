// Memory per idle event stream, for one proxy binary, without nginx: what
// `BENCH_ONLY=sse scripts/bench.sh` measures in its memory row, quick
// enough to try a change. With MEMPROBE_WRAP (a command prefix, e.g.
// "heaptrack -o /tmp/hp/proxy") the proxy runs under that tool, and the
// streams stay open for MEMPROBE_HOLD_SECONDS so that its peak holds them.
//
//   PROXY_BIN=... node tests/bench/memprobe.mjs
//   MEMPROBE_ROUNDS=3 BENCH_SSE_STREAMS=1000 node tests/bench/memprobe.mjs
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startOurProxy, startSseStub, memoryPerStream, holdStreams, waitStubIdle } from './bench.mjs';

const rounds = Number(process.env.MEMPROBE_ROUNDS ?? 3);
const wrap = process.env.MEMPROBE_WRAP;
const holdSeconds = Number(process.env.MEMPROBE_HOLD_SECONDS ?? 3);
const log = (...a) => console.error('[memprobe]', ...a);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-mem-'));
const cleanups = [];
try {
  const { shared, token } = await signedInSetup(dir, cleanups);
  const stub = await startSseStub();
  cleanups.push(() => stub.close());
  if (wrap) {
    const wrapper = path.join(dir, 'wrapped-proxy');
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${wrap} "${cfg.bin}" "$@"\n`, { mode: 0o755 });
    cfg.bin = wrapper;
  }
  const results = [];
  for (let round = 1; round <= (wrap ? 1 : rounds); round++) {
    const proxy = await startOurProxy({ name: `proxy-mem-${round}`, port: shared.proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stub.port}/mcp` });
    try {
      if (wrap) {
        const held = await holdStreams(proxy.port, '/mcp?mode=idle', token, cfg.sseStreams);
        log(`${held.count} streams open; holding ${holdSeconds} s`);
        await new Promise((r) => setTimeout(r, holdSeconds * 1000));
        held.close();
        await waitStubIdle(stub);
      } else {
        const m = await memoryPerStream(proxy, proxy.port, token, stub);
        log(`round ${round}: ${m.kib_per_stream.toFixed(1)} KiB per idle stream (RSS ${m.rss_before_kib} → ${m.rss_after_kib} KiB)`);
        results.push(m.kib_per_stream);
      }
    } finally {
      await proxy.close();
    }
  }
  if (results.length) {
    results.sort((a, b) => a - b);
    console.log(JSON.stringify({ kib_per_stream_median: results[Math.floor(results.length / 2)], rounds: results }));
  }
} finally {
  for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
  fs.rmSync(dir, { recursive: true, force: true });
}
