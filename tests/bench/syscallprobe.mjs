// Syscalls per request, nginx against the proxy: strace -c attached to the
// server process (nginx's worker) for one wrk run each, divided by the
// requests wrk completed. Where kernel time per request differs, the list
// says which calls there are more of.
//
//   PROXY_BIN=/abs/path node tests/bench/syscallprobe.mjs   (SYS_SECONDS, SYS_CONNECTIONS)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { signedInSetup, startOurProxy, startNginx, nginxProxy, runWrk } from './bench.mjs';

const seconds = Number(process.env.SYS_SECONDS ?? 5);
const connections = Number(process.env.SYS_CONNECTIONS ?? 32);
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

async function counted(name, pid, url, token) {
  await runWrk(url, connections, 2, token);
  const plain = faultsAndSwitches(pid);
  const unstraced = await runWrk(url, connections, seconds, token);
  const after = faultsAndSwitches(pid);
  const per = (k) => ((after[k] - plain[k]) / unstraced.requests).toFixed(4);
  console.log(`\n${name} without strace: ${unstraced.requests} requests; per request: minor faults ${per('minflt')}, voluntary switches ${per('voluntary')}, involuntary ${per('involuntary')}`);
  const out = path.join(dir, `${name}.strace`);
  const strace = spawn('strace', ['-c', '-f', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  const r = await runWrk(url, connections, seconds, token);
  strace.kill('SIGINT');
  await new Promise((r) => strace.on('exit', r));
  const rows = fs.readFileSync(out, 'utf8').split('\n').filter((l) => /^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+/.test(l));
  console.log(`${name} under strace: ${r.requests} requests`);
  for (const l of rows) {
    const f = l.trim().split(/\s+/);
    const calls = Number(f[3]);
    const errors = f.length === 6 ? Number(f[4]) : 0;
    console.log(`  ${f[f.length - 1].padEnd(16)} ${(calls / r.requests).toFixed(3)} per request${errors ? ` (${(errors / r.requests).toFixed(3)} failed)` : ''}`);
  }
}

try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
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
