// Heap allocations per request on the request path, and where they are
// made, counted by valgrind's DHAT: like callgrind's instruction count, the
// same on a busy machine as on an idle one. The proxy runs under
// `valgrind --tool=dhat` in front of the nginx stub, wrk sends the
// benchmark's POSTs (few connections) for `ALLOC_SECONDS`, the proxy is
// stopped (DHAT writes its profile at exit) and each allocation site's
// count, less what a run without requests allocated there, is divided by
// the requests wrk completed.
//
//   node tests/bench/allocations.mjs      (PROXY_BIN, BENCH_POLICY, BENCH_PROVIDER_TOKEN_BYTES as for bench.mjs)
//   ALLOC_SECONDS=20 ALLOC_CONNECTIONS=8 ALLOC_FRAMES=3 node tests/bench/allocations.mjs
//
// A site is named by its first frames outside the allocator (`ALLOC_FRAMES`,
// default 3: what is allocated, and by whom); inlined functions count as
// frames, so a `Box::new` shows its type. DHAT counts the whole run, so
// the proxy is first started and stopped with no requests and what that
// allocated is taken off each site; the total printed is that of the sites
// that allocate at least `ALLOC_MIN` times a request (0.9).
//
// Writes tests/bench/results/allocations-<time>.txt.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cfg, signedInSetup, startOurProxy, runWrk } from './bench.mjs';

const seconds = Number(process.env.ALLOC_SECONDS ?? 10);
const connections = Number(process.env.ALLOC_CONNECTIONS ?? 8);
const frames = Number(process.env.ALLOC_FRAMES ?? 3);
const minimum = Number(process.env.ALLOC_MIN ?? 0.9);
const log = (...a) => console.error('[allocations]', ...a);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-alloc-'));
const realBin = cfg.bin;

const cleanups = [];
try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  // Under DHAT, a run of `seconds` (0: started and stopped), its sites.
  const profiled = async (name, seconds) => {
    const profile = path.join(dir, `${name}.json`);
    const wrapper = path.join(dir, `dhat-${name}`);
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec valgrind --tool=dhat --dhat-out-file=${profile} "${realBin}" "$@"\n`, { mode: 0o755 });
    cfg.bin = wrapper;
    const proxy = await startOurProxy({ name: 'proxy', port: shared.proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
    const r = seconds > 0 ? await runWrk(`http://127.0.0.1:${shared.proxyPort}/mcp`, connections, seconds, token) : { requests: 0 };
    // DHAT writes the profile when the process exits: it may take its time.
    await proxy.close(120_000);
    if (!fs.existsSync(profile)) throw new Error('DHAT wrote no profile: did the proxy exit cleanly?');
    return { requests: r.requests, sites: allocationSites(JSON.parse(fs.readFileSync(profile, 'utf8')), frames) };
  };
  // What starting and stopping allocates, taken off the measured run's
  // sites, so that what remains is the requests' own.
  const idle = await profiled('idle', 0);
  const run = await profiled('run', seconds);
  const perRequest = [...run.sites]
    .map(([site, blocks]) => [site, (blocks - (idle.sites.get(site) ?? 0)) / run.requests])
    .filter(([, n]) => n >= minimum)
    .sort((a, b) => b[1] - a[1]);
  const total = perRequest.reduce((sum, [, n]) => sum + n, 0);
  const summary = [
    `proxy: allocations per request: ${total.toFixed(1)} (sites with at least ${minimum} a request, start-up taken off; ${run.requests} requests, ${connections} connections, ${seconds} s under DHAT)`,
    `policy: ${cfg.policy ?? 'built-in default'}; provider token: ${cfg.providerTokenBytes ? `JWT ${cfg.providerTokenBytes} B` : 'opaque'}`,
    '',
    ...perRequest.map(([site, n]) => `${n.toFixed(2).padStart(6)}  ${site}`),
  ].join('\n');
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results');
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, `allocations-${stamp}.txt`), `${summary}\n`);
  console.log(summary);
} finally {
  for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);

/**
 * DHAT's program points (`pps`: each an allocation stack, `tbk` the blocks
 * it allocated, `fs` its frames as indices into `ftbl`), summed by their
 * first `count` frames outside the allocator.
 */
function allocationSites(dhat, count) {
  // The allocator's frames: `System` (std's sys/alloc), std's alloc.rs and
  // raw_vec, mimalloc, and frames valgrind could not name (the global
  // allocator's static in main.rs among them).
  const allocator = /UnknownInlinedFun|box_new_uninit|\[root\]|sys\/alloc\/|alloc\/src\/alloc\.rs|raw_vec|__rust_|mimalloc|\bmalloc\b|\bmi_/;
  const bySite = new Map();
  for (const pp of dhat.pps) {
    const named = pp.fs
      .map((i) => dhat.ftbl[i].replace(/^0x[0-9A-F]+: /, ''))
      .filter((f) => !allocator.test(f))
      .slice(0, count)
      .map((f) => f.replace(/\/rustc\/[0-9a-f]+\/|\/root\/\.cargo\/registry\/src\/[^/]+\//g, '').slice(0, 160));
    const site = named.join(' <- ');
    bySite.set(site, (bySite.get(site) ?? 0) + pp.tbk);
  }
  return bySite;
}
