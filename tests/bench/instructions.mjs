// Instructions per request on the request path, counted by callgrind: the
// same number on a busy machine as on an idle one, so a change's effect
// shows without a quiet machine. The proxy runs under
// `valgrind --tool=callgrind` in front of an nginx stub; counters are zeroed
// after a warm-up, then `INSTR_REQUESTS` POSTs (wrk, few connections) are
// counted, and the dump's total divided by the requests wrk completed.
//
//   node tests/bench/instructions.mjs            (PROXY_BIN, BENCH_POLICY, BENCH_PROVIDER_TOKEN_BYTES as for bench.mjs)
//   INSTR_SECONDS=20 INSTR_CONNECTIONS=8 INSTR_TOP=40 node tests/bench/instructions.mjs
//
// Prints instructions per request and the top functions (inclusive), and
// writes tests/bench/results/instructions-<time>.{txt,callgrind}.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startOurProxy, runWrk, underCallgrind } from './bench.mjs';

const seconds = Number(process.env.INSTR_SECONDS ?? 15);
const connections = Number(process.env.INSTR_CONNECTIONS ?? 8);
const top = Number(process.env.INSTR_TOP ?? 30);
const log = (...a) => console.error('[instructions]', ...a);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-instr-'));
const callgrind = underCallgrind(dir);

const cleanups = [];
try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  const proxyPort = shared.proxyPort;
  cfg.bin = callgrind.wrapper;
  const proxy = await startOurProxy({ name: 'proxy', port: proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
  cleanups.push(() => proxy.close());
  const url = `http://127.0.0.1:${proxyPort}/mcp`;
  await runWrk(url, connections, 3, token);
  callgrind.zero();
  const r = await runWrk(url, connections, seconds, token);
  const { dump, annotated, total } = callgrind.dump(['--inclusive=yes', '--threshold=99']);
  const perRequest = total / r.requests;
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const lines = annotated.split('\n');
  const start = lines.findIndex((l) => /file:function/.test(l));
  const topLines = lines.slice(start + 2, start + 2 + top);
  const summary = [
    `instructions per request: ${Math.round(perRequest).toLocaleString('en-US')} (${r.requests} requests, ${connections} connections, ${seconds} s under callgrind)`,
    `policy: ${cfg.policy ?? 'built-in default'}; provider token: ${cfg.providerTokenBytes ? `JWT ${cfg.providerTokenBytes} B` : 'opaque'}`,
    '',
    ...topLines,
  ].join('\n');
  fs.writeFileSync(path.join(outDir, `instructions-${stamp}.txt`), `${summary}\n`);
  fs.copyFileSync(dump, path.join(outDir, `instructions-${stamp}.callgrind`));
  console.log(summary);
} finally {
  for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
