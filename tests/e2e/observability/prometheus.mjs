// A throwaway Prometheus for the observability e2e: installed from Debian's
// `prometheus` package when missing, run on 127.0.0.1 with its own config and
// a temporary TSDB (never the system service), stopped by PID.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The absolute path of a command on PATH, or null. */
export function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  const out = r.stdout.trim();
  return r.status === 0 && out ? out : null;
}

/**
 * `prometheus` and `promtool`, installed with apt-get when missing. Debian
 * starts services from maintainer scripts unless /usr/sbin/policy-rc.d says
 * no: when that file is absent, a temporary one that refuses every start is
 * put there for the install and removed after, so no system Prometheus ever
 * runs (this test starts its own).
 */
export function ensurePrometheus({ log = console.error } = {}) {
  let prometheus = which('prometheus');
  let promtool = which('promtool');
  if (prometheus && promtool) return { prometheus, promtool, installed: false };
  log('[prometheus] not installed: apt-get update && apt-get install -y prometheus');
  const policyRcd = '/usr/sbin/policy-rc.d';
  const ownPolicy = !fs.existsSync(policyRcd);
  if (ownPolicy) fs.writeFileSync(policyRcd, '#!/bin/sh\n# temporary (tests/e2e/observability.mjs): no service starts during the install\nexit 101\n', { mode: 0o755 });
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const opts = { stdio: ['ignore', 'inherit', 'inherit'], env };
    let r = spawnSync('apt-get', ['update'], opts);
    if (r.status !== 0) throw new Error(`apt-get update failed (exit ${r.status})`);
    r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'prometheus'], opts);
    if (r.status !== 0) throw new Error(`apt-get install -y prometheus failed (exit ${r.status})`);
  } finally {
    if (ownPolicy) fs.rmSync(policyRcd, { force: true });
  }
  prometheus = which('prometheus');
  promtool = which('promtool');
  if (!prometheus || !promtool) throw new Error(`after apt-get install prometheus: prometheus=${prometheus} promtool=${promtool}`);
  return { prometheus, promtool, installed: true };
}

/**
 * Start Prometheus scraping `targets` (host:port list) as job `job` every
 * `intervalS` seconds.
 * @returns {Promise<{url, port, pid, query, series, labelValues, lastScrape, logs, close}>}
 */
export async function startPrometheus({ bin, dir, port, job, targets, intervalS = 1, readyTimeoutMs = 30000 }) {
  const configFile = path.join(dir, 'prometheus.yml');
  const tsdb = path.join(dir, 'tsdb');
  fs.mkdirSync(tsdb, { recursive: true });
  fs.writeFileSync(
    configFile,
    [
      'global:',
      `  scrape_interval: ${intervalS}s`,
      `  evaluation_interval: ${intervalS}s`,
      'scrape_configs:',
      `  - job_name: ${JSON.stringify(job)}`,
      `    scrape_interval: ${intervalS}s`,
      `    scrape_timeout: ${Math.max(intervalS * 1000 - 100, 500)}ms`,
      '    metrics_path: /metrics',
      '    static_configs:',
      `      - targets: ${JSON.stringify(targets)}`,
      '',
    ].join('\n'),
  );
  const args = [
    `--config.file=${configFile}`,
    `--storage.tsdb.path=${tsdb}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--storage.tsdb.retention.time=1h',
    '--log.level=warn',
  ];
  const logFile = path.join(dir, 'prometheus.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn(bin, args, { cwd: dir, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = { code, signal };
  });
  const kill = () => {
    if (exited === null && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  process.on('exit', kill);
  const logs = () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '');
  const url = `http://127.0.0.1:${port}`;

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited) throw new Error(`prometheus exited (code ${exited.code}, signal ${exited.signal}):\n${logs()}`);
    try {
      const res = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      kill();
      throw new Error(`prometheus not ready after ${readyTimeoutMs} ms:\n${logs()}`);
    }
    await sleep(100);
  }

  async function api(pathAndQuery) {
    const res = await fetch(`${url}${pathAndQuery}`, { signal: AbortSignal.timeout(10000) });
    const body = await res.json().catch(() => ({}));
    if (body.status !== 'success') throw new Error(`prometheus ${pathAndQuery}: HTTP ${res.status} ${body.errorType ?? ''} ${body.error ?? ''}`.trim());
    return body.data;
  }

  /** An instant query: { resultType, result }. */
  const query = (expr, time) => api(`/api/v1/query?${new URLSearchParams({ query: expr, ...(time ? { time: String(time) } : {}) })}`);
  /** Every series matching a selector (over the last hour). */
  const series = (match) => api(`/api/v1/series?${new URLSearchParams({ 'match[]': match, start: String(Date.now() / 1000 - 3600) })}`);
  /** A label's values, optionally among the series matching a selector. */
  const labelValues = (label, match) =>
    api(`/api/v1/label/${encodeURIComponent(label)}/values${match ? `?${new URLSearchParams({ 'match[]': match })}` : ''}`);
  /** The target's last scrape: { time (ms), health, error }. */
  async function lastScrape() {
    const data = await api('/api/v1/targets?state=active');
    const t = data.activeTargets.find((x) => x.labels?.job === job);
    if (!t) return null;
    return { time: Date.parse(t.lastScrape), health: t.health, error: t.lastError };
  }

  async function close() {
    process.off('exit', kill);
    if (exited) return exited;
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      return exited;
    }
    for (let i = 0; i < 100 && exited === null; i++) await sleep(50);
    kill();
    return exited;
  }

  return { url, port, pid: child.pid, configFile, query, series, labelValues, lastScrape, logs, close };
}
