// Start the mcp-oauth-proxy binary with a generated config file.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, removeOnExit, sleep, spawnTracked } from './proc.mjs';

export const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(E2E_DIR, '..', '..');

export function proxyBin() {
  return process.env.PROXY_BIN || path.join(REPO_ROOT, 'target', 'debug', 'mcp-oauth-proxy');
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // TOML basic strings share JSON's escapes
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  throw new Error(`cannot write ${typeof v} as a TOML value`);
}

/** A two-level TOML document from { section: { key: value } } (nested tables as dotted sections). */
export function toToml(doc, prefix = '') {
  let out = '';
  const tables = [];
  for (const [k, v] of Object.entries(doc)) {
    if (v === undefined || v === null) continue;
    if (typeof v === 'object' && !Array.isArray(v)) tables.push([k, v]);
    else out += `${k} = ${tomlValue(v)}\n`;
  }
  for (const [k, v] of tables) {
    const name = prefix ? `${prefix}.${k}` : k;
    const inner = toToml(v, name);
    const hasScalars = Object.values(v).some((x) => x !== undefined && x !== null && (typeof x !== 'object' || Array.isArray(x)));
    out += `${out ? '\n' : ''}${hasScalars ? `[${name}]\n` : ''}${inner}`;
  }
  return out;
}

function redact(toml) {
  return toml.replace(/^((?:client_secret|encryption_key)\s*=\s*).*$/gm, '$1"***"');
}

function deepMerge(a, b) {
  const out = { ...a };
  for (const [k, v] of Object.entries(b ?? {})) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && a?.[k] && typeof a[k] === 'object' ? deepMerge(a[k], v) : v;
  }
  return out;
}

/**
 * Start the proxy.
 * @param {object} opts
 * @param {string} opts.issuer            upstream OpenID provider issuer
 * @param {string} [opts.clientId]        upstream client id
 * @param {string} [opts.clientSecret]    upstream client secret
 * @param {string[]} [opts.scopes]
 * @param {string} [opts.downstreamUrl]   defaults to a closed port on 127.0.0.1
 * @param {number} [opts.port]            0/undefined picks a free port
 * @param {string} [opts.publicUrl]       defaults to http://localhost:<port>
 * @param {object} [opts.config]          extra config, deep-merged (e.g. { policy: { path } })
 * @param {string} [opts.extraToml]       TOML appended to the generated file, for what toToml cannot
 *                                        write (arrays of tables such as `[[routes]]`)
 * @param {object} [opts.env]             extra environment for the binary
 * @param {string} [opts.bin]             defaults to $PROXY_BIN or target/debug/mcp-oauth-proxy
 * @param {number} [opts.readyTimeoutMs=30000]
 * @returns {Promise<{url, port, issuer, dir, configPath, config, encryptionKey, pid, logs: () => string, close: () => Promise<void>}>}
 */
export async function startProxy(opts) {
  const bin = opts.bin ?? proxyBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`proxy binary not found at ${bin}: build it (cargo build) or set PROXY_BIN`);
  }
  const port = opts.port || (await freePort());
  const publicUrl = opts.publicUrl ?? `http://localhost:${port}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-proxy-e2e-'));
  removeOnExit(dir);
  const encryptionKey = opts.encryptionKey ?? crypto.randomBytes(32).toString('hex');
  const downstreamUrl = opts.downstreamUrl ?? `http://127.0.0.1:${await freePort()}/mcp`;

  const config = deepMerge(
    {
      server: { listen: `127.0.0.1:${port}`, public_url: publicUrl },
      upstream: {
        issuer: opts.issuer,
        client_id: opts.clientId ?? 'mcp-oauth-proxy',
        client_secret: opts.clientSecret ?? 'e2e-upstream-client-secret',
        scopes: opts.scopes ?? ['openid', 'email', 'profile', 'groups', 'offline_access'],
      },
      downstream: { url: downstreamUrl },
      store: { path: path.join(dir, 'proxy.db') },
      secrets: { encryption_key: encryptionKey },
    },
    opts.config,
  );
  const configPath = path.join(dir, 'proxy.toml');
  const toml = opts.extraToml ? `${toToml(config)}\n${opts.extraToml.trim()}\n` : toToml(config);
  fs.writeFileSync(configPath, toml, { mode: 0o600 });

  const proc = spawnTracked(bin, ['serve', '--config', configPath], {
    env: { RUST_BACKTRACE: '1', ...opts.env },
    name: 'proxy',
    cwd: dir,
  });

  const closeAll = async () => {
    await proc.stop();
    if (process.env.E2E_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
  };

  const metadataUrl = `${publicUrl}/.well-known/oauth-authorization-server`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 30000);
  let lastError = 'no attempt yet';
  let exited = null;
  proc.exited.then((r) => {
    exited = r;
  });
  for (;;) {
    if (exited) {
      await closeAll();
      throw new Error(
        `proxy exited before it was ready (code ${exited.code}, signal ${exited.signal})\nconfig ${configPath}:\n${redact(toml)}\nlogs:\n${proc.logs()}`,
      );
    }
    try {
      const res = await fetch(metadataUrl, { redirect: 'manual', signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
      lastError = `HTTP ${res.status}`;
    } catch (err) {
      lastError = err?.cause?.code ?? err?.message ?? String(err);
    }
    if (Date.now() > deadline) {
      await closeAll();
      throw new Error(`proxy not ready after ${opts.readyTimeoutMs ?? 30000} ms (${metadataUrl}: ${lastError})\nlogs:\n${proc.logs()}`);
    }
    await sleep(100);
  }

  return {
    url: publicUrl,
    port,
    issuer: publicUrl,
    dir,
    configPath,
    config,
    encryptionKey,
    pid: proc.pid,
    logs: proc.logs,
    close: closeAll,
  };
}
