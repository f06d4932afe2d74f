// Syscalls per request, nginx against the proxy: strace -c attached to the
// server process (nginx's worker) for one wrk run each, divided by the
// requests wrk completed. Where kernel time per request differs, the list
// says which calls there are more of.
//
//   PROXY_BIN=/abs/path node tests/bench/syscallprobe.mjs   (SYS_SECONDS, SYS_CONNECTIONS)
//
// SYS_SSE=1: the same per new event stream instead (SYS_STREAMS of them,
// one after another, each closed after its first event, as the benchmark's
// time-to-first-event samples are), in front of the SSE stub.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { signedInSetup, startOurProxy, startNginx, nginxProxy, runWrk, startSseStub, cpuNanos, cpuSplitTicks } from './bench.mjs';
import { firstEvent } from './sse-client.mjs';

const seconds = Number(process.env.SYS_SECONDS ?? 5);
const connections = Number(process.env.SYS_CONNECTIONS ?? 32);
const sse = process.env.SYS_SSE === '1';
const streams = Number(process.env.SYS_STREAMS ?? 2000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-sys-'));
const cleanups = [];

// Minor page faults (process-wide) and context switches (every thread).
function faultsAndSwitches(pid) {
  const minflt = Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[7]);
  let voluntary = 0;
  let involuntary = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    const status = fs.readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8');
    voluntary += Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(status)[1]);
    involuntary += Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(status)[1]);
  }
  return { minflt, voluntary, involuntary };
}

// `streams` event streams opened one after another, each closed after its
// first event; returns how many (as `requests`, like runWrk's result).
async function openStreams(port, token, n) {
  for (let i = 0; i < n; i++) {
    (await firstEvent({ port, path: '/mcp?mode=idle', token })).stream.close();
  }
  return { requests: n };
}

// One load run: wrk's POSTs, or new event streams under SYS_SSE.
function load(url, token, long) {
  if (sse) return openStreams(Number(new URL(url).port), token, long ? streams : 50);
  return runWrk(url, connections, long ? seconds : 2, token);
}

async function counted(name, pid, url, token) {
  await load(url, token, false);
  const plain = faultsAndSwitches(pid);
  const [nanos, ticks] = [cpuNanos([pid]), cpuSplitTicks([pid])];
  const unstraced = await load(url, token, true);
  const after = faultsAndSwitches(pid);
  const [nanosAfter, ticksAfter] = [cpuNanos([pid]), cpuSplitTicks([pid])];
  const per = (k) => ((after[k] - plain[k]) / unstraced.requests).toFixed(4);
  const cpuUs = (nanosAfter - nanos) / 1000 / unstraced.requests;
  const user = ticksAfter.user - ticks.user;
  const kernel = ticksAfter.kernel - ticks.kernel;
  const unit = sse ? 'stream' : 'request';
  console.log(`\n${name} without strace: ${unstraced.requests} requests; per ${unit}: CPU ${cpuUs.toFixed(1)} µs (${((100 * user) / (user + kernel || 1)).toFixed(0)}% user), minor faults ${per('minflt')}, voluntary switches ${per('voluntary')}, involuntary ${per('involuntary')}`);
  const out = path.join(dir, `${name}.strace`);
  const strace = spawn('strace', ['-c', '-f', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  const r = await load(url, token, true);
  strace.kill('SIGINT');
  await new Promise((r) => strace.on('exit', r));
  const rows = fs.readFileSync(out, 'utf8').split('\n').filter((l) => /^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+/.test(l));
  console.log(`${name} under strace: ${r.requests} requests`);
  for (const l of rows) {
    const f = l.trim().split(/\s+/);
    const calls = Number(f[3]);
    const errors = f.length === 6 ? Number(f[4]) : 0;
    console.log(`  ${f[f.length - 1].padEnd(16)} ${(calls / r.requests).toFixed(3)} per ${sse ? 'stream' : 'request'}${errors ? ` (${(errors / r.requests).toFixed(3)} failed)` : ''}`);
  }
}

try {
  const { shared, token, stubPort: postStub } = await signedInSetup(dir, cleanups);
  let stubPort = postStub;
  if (sse) {
    const stub = await startSseStub();
    cleanups.push(() => stub.close());
    stubPort = stub.port;
  }
  const proxy = await startOurProxy({ name: 'proxy', port: shared.proxyPort, shared, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp` });
  cleanups.push(() => proxy.close());
  const nginxPort = shared.proxyPort + 1;
  const nginx = await startNginx('nginx', nginxProxy(nginxPort, stubPort));
  cleanups.push(() => nginx.close());
  await counted('nginx', nginx.workers[0], `http://127.0.0.1:${nginxPort}/mcp`, token);
  await counted('proxy', proxy.pid, `http://127.0.0.1:${shared.proxyPort}/mcp`, token);
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
