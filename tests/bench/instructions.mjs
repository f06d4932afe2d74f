// Instructions per request on the request path, counted by callgrind: the
// same number on a busy machine as on an idle one, so a change's effect
// shows without a quiet machine. The server runs under
// `valgrind --tool=callgrind` in front of an nginx stub; counters are zeroed
// after a warm-up, then POSTs (wrk, few connections) are counted for
// `INSTR_SECONDS`, and the dump's total divided by the requests wrk completed.
//
//   node tests/bench/instructions.mjs            (PROXY_BIN, BENCH_POLICY, BENCH_PROVIDER_TOKEN_BYTES as for bench.mjs)
//   INSTR_SECONDS=20 INSTR_CONNECTIONS=8 INSTR_TOP=40 node tests/bench/instructions.mjs
//   INSTR_SERVER=nginx node tests/bench/instructions.mjs    (nginx's worker instead, configured as in bench.mjs)
//   INSTR_CACHE=1 ...                            (with callgrind's cache simulation: misses per request)
//   INSTR_ATOMICS=1 ...                          (locked instructions per request, and where)
//
// Prints instructions per request and the top functions (inclusive), and
// writes tests/bench/results/instructions-<time>.{txt,callgrind}.
//
// INSTR_CACHE=1 simulates the first-level caches as this CPU's and the
// last level as `INSTR_LL` (default 2 MiB, 16-way: about one core's share
// of a second-level cache; the simulation has two levels only), and
// reports misses per request: instruction fetches that miss the first
// level (I1), data reads and writes that miss it (D1), and either that
// miss the last level (LL). Run it at 8 and at 256 connections to see
// what the in-flight requests' memory does to the caches.
//
// INSTR_ATOMICS=1 counts the locked instructions executed per request
// (atomic read-modify-writes: reference counts, locks, the runtime's task
// states): callgrind counts every instruction by address
// (`--dump-instr=yes`), objdump finds each object's `lock`-prefixed
// instructions and `xchg` with memory (locked without the prefix), and
// their counts are summed, with the functions that execute most of them.
// One costs several plain instructions' time (an `Arc` clone and drop
// against an `Rc`'s: `cargo bench --bench request_path -- refcount`),
// which callgrind's instruction count does not show.
import { execSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startOurProxy, startNginx, nginxProxy, runWrk, underCallgrind } from './bench.mjs';

const seconds = Number(process.env.INSTR_SECONDS ?? 15);
const connections = Number(process.env.INSTR_CONNECTIONS ?? 8);
const top = Number(process.env.INSTR_TOP ?? 30);
const server = process.env.INSTR_SERVER ?? 'proxy';
const cacheSim = process.env.INSTR_CACHE === '1';
const lastLevel = process.env.INSTR_LL ?? '2097152,16,64';
const atomics = process.env.INSTR_ATOMICS === '1';
const log = (...a) => console.error('[instructions]', ...a);
if (!['proxy', 'nginx'].includes(server)) throw new Error(`INSTR_SERVER: ${server} is neither proxy nor nginx`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-instr-'));
const valgrindArgs = [cacheSim ? `--cache-sim=yes --LL=${lastLevel}` : '', atomics ? '--dump-instr=yes --compress-pos=no' : ''];
const callgrind = underCallgrind(dir, server === 'nginx' ? cfg.nginx : cfg.bin, valgrindArgs.join(' '));

const cleanups = [];
try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  const port = shared.proxyPort;
  let countedPid;
  if (server === 'nginx') {
    // The stub above runs nginx itself; this instance runs under callgrind,
    // as one process (no master): the one counted.
    cfg.nginx = callgrind.wrapper;
    const nginx = await startNginx('nginx', nginxProxy(port, stubPort), { single: true });
    cleanups.push(() => nginx.close());
    countedPid = nginx.pid;
  } else {
    cfg.bin = callgrind.wrapper;
    const proxy = await startOurProxy({ name: 'proxy', port, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
    cleanups.push(() => proxy.close());
  }
  const url = `http://127.0.0.1:${port}/mcp`;
  await runWrk(url, connections, 3, token);
  callgrind.zero(countedPid);
  const r = await runWrk(url, connections, seconds, token);
  const { dump, annotated, total, events } = callgrind.dump(['--inclusive=yes', '--threshold=99'], countedPid);
  const perRequest = (n) => Math.round(n / r.requests).toLocaleString('en-US');
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const lines = annotated.split('\n');
  const start = lines.findIndex((l) => /file:function/.test(l));
  const topLines = lines.slice(start + 2, start + 2 + top);
  const misses = cacheSim
    ? [
        `cache misses per request (I1/D1 as this CPU's, LL ${lastLevel}): I1 ${perRequest(events.I1mr)}, D1 ${perRequest(events.D1mr + events.D1mw)} (reads ${perRequest(events.D1mr)}), LL ${perRequest(events.ILmr + events.DLmr + events.DLmw)} (data ${perRequest(events.DLmr + events.DLmw)})`,
      ]
    : [];
  const locked = atomics ? lockedInstructions(dump) : null;
  const lockedLines = locked
    ? [
        `locked instructions per request: ${(locked.total / r.requests).toFixed(1)}, most in:`,
        ...locked.byFunction.slice(0, top).map(([fn, n]) => `${(n / r.requests).toFixed(2).padStart(8)}  ${fn}`),
      ]
    : [];
  const summary = [
    `${server}: instructions per request: ${perRequest(total)} (${r.requests} requests, ${connections} connections, ${seconds} s under callgrind)`,
    `clock reads per request: ${(clockReads(dump) / r.requests).toFixed(1)}`,
    ...misses,
    ...lockedLines,
    server === 'proxy' ? `policy: ${cfg.policy ?? 'built-in default'}; provider token: ${cfg.providerTokenBytes ? `JWT ${cfg.providerTokenBytes} B` : 'opaque'}` : 'nginx: as bench.mjs configures it (keep-alive upstream, three headers added)',
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

/**
 * A reader of a callgrind dump's `kind=` and `ckind=` lines (`ob`: objects,
 * `fn`: functions), which name something in full the first time, as
 * `(id) name`, and by `(id)` alone after; both share the ids. For such a
 * line it returns the name and whether it is a callee's (`ckind=`), for any
 * other `null`.
 */
function namesIn(kind) {
  const names = new Map();
  const pattern = new RegExp(`^(c?)${kind}=(?:\\((\\d+)\\))?\\s*(.*)$`);
  return (line) => {
    const named = pattern.exec(line);
    if (!named) return null;
    const [, callee, id, name] = named;
    if (id && name) names.set(id, name);
    return { called: callee === 'c', name: name || names.get(id) };
  };
}

/**
 * How many times the counted process asked for the time (`clock_gettime`:
 * about 24 ns each on a virtual machine, which its instruction count does
 * not show): the calls the dump records to it, from every caller.
 */
function clockReads(dumpPath) {
  const functionName = namesIn('fn');
  let callee = null;
  let total = 0;
  for (const line of fs.readFileSync(dumpPath, 'utf8').split('\n')) {
    const named = functionName(line);
    if (named) {
      if (named.called) callee = named.name;
      continue;
    }
    if (line.startsWith('calls=') && callee && /^(__)?clock_gettime\b/.test(callee)) {
      total += Number(line.slice('calls='.length).split(' ')[0]);
    }
  }
  return total;
}

/**
 * The locked instructions a callgrind dump (`--dump-instr=yes
 * --compress-pos=no`) counts: `total`, and `byFunction` (function, count),
 * most first. Addresses in the dump are relative to their object, as
 * objdump prints them.
 */
function lockedInstructions(dumpPath) {
  const byObject = new Map(); // object -> Map(address -> count)
  const objectName = namesIn('ob');
  let object = null;
  let callCost = false;
  for (const line of fs.readFileSync(dumpPath, 'utf8').split('\n')) {
    const named = objectName(line);
    if (named) {
      if (!named.called) object = named.name;
      continue;
    }
    if (line.startsWith('calls=')) {
      callCost = true; // the next line is the call's inclusive cost, not its own
      continue;
    }
    if (!line.startsWith('0x')) continue;
    if (callCost) {
      callCost = false;
      continue;
    }
    const [address, , count] = line.split(' ');
    let counts = byObject.get(object);
    if (!counts) byObject.set(object, (counts = new Map()));
    const at = parseInt(address, 16);
    counts.set(at, (counts.get(at) ?? 0) + Number(count));
  }
  let total = 0;
  const byFunction = new Map();
  for (const [object, counts] of byObject) {
    if (!object || !fs.existsSync(object)) continue;
    const listing = execSync(`objdump -d -C --no-show-raw-insn '${object}' | grep -E '^[0-9a-f]+ <|\\slock |\\sxchg.*\\('`, { maxBuffer: 1 << 28 }).toString();
    let fn = '?';
    for (const line of listing.split('\n')) {
      const start = /^[0-9a-f]+ <(.*)>:$/.exec(line);
      if (start) {
        fn = start[1];
        continue;
      }
      const instruction = /^\s*([0-9a-f]+):/.exec(line);
      const n = instruction ? counts.get(parseInt(instruction[1], 16)) : undefined;
      if (!n) continue;
      total += n;
      const key = `${fn.slice(0, 140)} (${path.basename(object)})`;
      byFunction.set(key, (byFunction.get(key) ?? 0) + n);
    }
  }
  return { total, byFunction: [...byFunction].sort((a, b) => b[1] - a[1]) };
}
