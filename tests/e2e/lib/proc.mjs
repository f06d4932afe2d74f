// Child processes that never outlive the test process: each one is tracked
// by PID and killed (that PID only) when this process exits.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

const children = new Set();
const tempDirs = new Set();

/** Remove this directory when the process exits, however it exits (unless E2E_KEEP=1). */
export function removeOnExit(dir) {
  tempDirs.add(dir);
  return () => tempDirs.delete(dir);
}

function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  if (process.env.E2E_KEEP !== '1') {
    for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]);
  });
}

/**
 * Spawn a tracked child. Its stdout and stderr are collected in `logs` (and
 * echoed with a prefix to our stderr when `echo` is set or E2E_VERBOSE=1).
 * Returns { child, pid, logs(), exited (promise of {code, signal}), stop(timeoutMs) }.
 */
export function spawnTracked(cmd, args, { env, cwd, name = cmd, echo = process.env.E2E_VERBOSE === '1', onStdoutLine } = {}) {
  const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const chunks = [];
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      children.delete(child);
      chunks.push(`[spawn error] ${err.message}\n`);
      resolve({ code: null, signal: null, error: err });
    });
  });
  let stdoutBuf = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    chunks.push(d);
    if (echo) process.stderr.write(prefixLines(`[${name}] `, d));
    if (onStdoutLine) {
      stdoutBuf += d;
      let i;
      while ((i = stdoutBuf.indexOf('\n')) >= 0) {
        const line = stdoutBuf.slice(0, i).replace(/\r$/, '');
        stdoutBuf = stdoutBuf.slice(i + 1);
        onStdoutLine(line);
      }
    }
  });
  child.stderr.on('data', (d) => {
    chunks.push(d);
    if (echo) process.stderr.write(prefixLines(`[${name}] `, d));
  });

  async function stop(timeoutMs = 5000) {
    if (child.exitCode !== null || child.signalCode !== null) return exited;
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      return exited;
    }
    const timer = setTimeout(() => {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, timeoutMs);
    const r = await exited;
    clearTimeout(timer);
    return r;
  }

  return { child, pid: child.pid, logs: () => chunks.join(''), exited, stop };
}

function prefixLines(prefix, text) {
  return text.replace(/^(?=.)/gm, prefix);
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
/**
 * A port for a server started later. One found by listening on port 0 is
 * in the range the kernel hands out for port 0, so a socket bound
 * meanwhile (a stub, a client's connection) may get it first: `EADDRINUSE`
 * now and then. These come from just below that range, where the kernel
 * hands none out by itself, walked from a start of this process's own (the
 * Rust tests' `tests/common/ports.rs` does the same), each checked free.
 */
export async function freePort() {
  const low = Math.max(ephemeralLow(), PORT_SPAN + 1024);
  const first = low - PORT_SPAN;
  nextPort ??= (Math.imul(process.pid, 0x9e3779b1) >>> 0) % PORT_SPAN;
  for (let i = 0; i < PORT_SPAN; i++) {
    const port = first + (nextPort++ % PORT_SPAN);
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${first}..${low}`);
}

const PORT_SPAN = 10000;
let nextPort;

function ephemeralLow() {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

function canListen(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
