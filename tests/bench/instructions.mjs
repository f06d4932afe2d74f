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
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startOurProxy, runWrk } from './bench.mjs';

const seconds = Number(process.env.INSTR_SECONDS ?? 15);
const connections = Number(process.env.INSTR_CONNECTIONS ?? 8);
const top = Number(process.env.INSTR_TOP ?? 30);
const log = (...a) => console.error('[instructions]', ...a);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-instr-'));
const realBin = cfg.bin;
const wrapper = path.join(dir, 'valgrind-proxy');
const outPattern = path.join(dir, 'callgrind.out.%p');
fs.writeFileSync(wrapper, `#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=${outPattern} "${realBin}" "$@"\n`, { mode: 0o755 });

const cleanups = [];
try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  const proxyPort = shared.proxyPort;
  cfg.bin = wrapper;
  const proxy = await startOurProxy({ name: 'proxy', port: proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
  cleanups.push(() => proxy.close());
  const url = `http://127.0.0.1:${proxyPort}/mcp`;
  await runWrk(url, connections, 3, token);
  const pid = Number(execFileSync('pgrep', ['-f', `callgrind.*${realBin}`]).toString().trim().split('\n')[0]);
  execFileSync('callgrind_control', ['-z', String(pid)]);
  const r = await runWrk(url, connections, seconds, token);
  execFileSync('callgrind_control', ['-d', String(pid)]);
  const dumps = fs.readdirSync(dir).filter((f) => f.startsWith(`callgrind.out.${pid}.`)).sort();
  const dump = path.join(dir, dumps[dumps.length - 1]);
  const annotated = execFileSync('callgrind_annotate', ['--inclusive=yes', `--threshold=99`, dump], { maxBuffer: 1 << 28 }).toString();
  const total = Number(/([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS/.exec(annotated)?.[1].replace(/,/g, '') ?? NaN);
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
