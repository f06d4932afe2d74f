// mcp-remote (the stdio bridge Claude Desktop runs for remote servers) as a
// child process, and a JSON-RPC peer over its stdin/stdout.
//
// mcp-remote opens the browser with the `open` package: on Linux xdg-open,
// which without a desktop session runs $BROWSER <url>. `writeBrowserScript`
// makes a $BROWSER that appends the URL to $E2E_BROWSER_FILE, for a test to
// hand to headless Chromium. MCP_REMOTE_CONFIG_DIR (and HOME) point at a
// directory of the test's: nothing touches ~/.mcp-auth.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { E2E_DIR } from './proxy.mjs';

export const MCP_REMOTE = path.join(E2E_DIR, 'node_modules', 'mcp-remote', 'dist', 'proxy.js');

export const INITIALIZE = {
  protocolVersion: LATEST_PROTOCOL_VERSION,
  capabilities: {},
  clientInfo: { name: 'claude-desktop-stand-in', version: '1.0.0' },
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Children still running when the test process exits are killed by PID.
const running = new Set();
process.on('exit', () => {
  for (const c of running) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/** A $BROWSER script in `dir` that writes the URL it is given to $E2E_BROWSER_FILE. */
export function writeBrowserScript(dir) {
  const file = path.join(dir, 'browser.sh');
  fs.writeFileSync(file, '#!/bin/sh\n# $BROWSER for xdg-open: hand the URL to the test.\nprintf \'%s\\n\' "$1" >> "$E2E_BROWSER_FILE"\n', { mode: 0o755 });
  return file;
}

/** The URLs mcp-remote asked the browser to open, in order. */
export const browserUrls = (file) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : []);

/** The first URL mcp-remote opened in the browser (waits for it). */
export async function waitForBrowserUrl(file, remote, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const urls = browserUrls(file);
    if (urls.length) return new URL(urls[0]);
    if (remote.exited) throw new Error(`mcp-remote exited before opening the browser\n${remote.stderr}`);
    if (Date.now() > deadline) throw new Error(`mcp-remote did not open the browser within ${timeoutMs} ms\n${remote.stderr}`);
    await sleep(100);
  }
}

/** The tokens mcp-remote stored under its config directory. */
export function storedTokens(configDir) {
  const files = fs.readdirSync(configDir, { recursive: true }).map(String).filter((f) => /tokens\.json$/.test(f));
  return files.map((f) => JSON.parse(fs.readFileSync(path.join(configDir, f), 'utf8')));
}

export class McpRemote {
  /**
   * @param {object} o
   * @param {string} o.serverUrl       the MCP server URL given to mcp-remote
   * @param {number} o.callbackPort    mcp-remote's loopback OAuth callback port
   * @param {string} o.configDir       MCP_REMOTE_CONFIG_DIR (and HOME)
   * @param {string} o.browserScript   $BROWSER (see writeBrowserScript)
   * @param {string} o.browserFile     where that script writes the URLs
   * @param {string[]} [o.args]        more mcp-remote arguments (e.g. --header)
   */
  constructor({ serverUrl, callbackPort, configDir, browserScript, browserFile, args = [] }) {
    this.stderr = '';
    this.notifications = [];
    this.pending = new Map();
    this.nextId = 1;
    this.exited = false;
    fs.mkdirSync(configDir, { recursive: true });
    const env = { ...process.env, MCP_REMOTE_CONFIG_DIR: configDir, HOME: configDir, BROWSER: browserScript, E2E_BROWSER_FILE: browserFile };
    // No desktop session: xdg-open then uses $BROWSER and nothing else.
    for (const k of ['DISPLAY', 'WAYLAND_DISPLAY', 'XDG_CURRENT_DESKTOP', 'DESKTOP_SESSION', 'KDE_FULL_SESSION', 'GNOME_DESKTOP_SESSION_ID', 'XDG_SESSION_DESKTOP']) delete env[k];
    this.args = [MCP_REMOTE, serverUrl, String(callbackPort), ...args];
    this.child = spawn(process.execPath, this.args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(this.child);
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        running.delete(this.child);
        this.exited = true;
        for (const { reject } of this.pending.values()) reject(new Error(`mcp-remote exited (code ${code}, signal ${signal})\n${this.stderr}`));
        this.pending.clear();
        resolve({ code, signal });
      });
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
      if (process.env.E2E_VERBOSE === '1') process.stderr.write(d.replace(/^(?=.)/gm, '[mcp-remote] '));
    });
    let buf = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) this.#onLine(line);
      }
    });
  }

  #onLine(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      this.stderr += `[non-JSON on stdout] ${line}\n`;
      return;
    }
    if (msg.id !== undefined && (msg.result !== undefined || msg.error !== undefined)) {
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        p.resolve(msg);
      }
    } else if (msg.method && msg.id !== undefined) {
      // A request from the server side: answer ping, refuse the rest.
      this.#write(msg.method === 'ping' ? { jsonrpc: '2.0', id: msg.id, result: {} } : { jsonrpc: '2.0', id: msg.id, error: { code: -32601, message: 'not supported by this test client' } });
    } else if (msg.method) {
      this.notifications.push(msg);
    }
  }

  #write(msg) {
    this.child.stdin.write(`${JSON.stringify(msg)}\n`);
  }

  /** Send a request; resolves with the whole response message. */
  request(method, params, timeoutMs = 30000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer to ${method} within ${timeoutMs} ms\nmcp-remote stderr:\n${this.stderr}`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(t);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.#write({ jsonrpc: '2.0', id, method, params });
    });
  }

  /** A request that must succeed; resolves with its result. */
  async call(method, params, timeoutMs) {
    const m = await this.request(method, params, timeoutMs);
    if (m.error) throw new Error(`${method} failed: ${JSON.stringify(m.error)}\nmcp-remote stderr:\n${this.stderr}`);
    return m.result;
  }

  notify(method, params) {
    this.#write({ jsonrpc: '2.0', method, params });
  }

  async close() {
    if (this.exited) return;
    this.child.stdin.end();
    const t = setTimeout(() => {
      try {
        process.kill(this.child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }, 3000);
    const k = setTimeout(() => {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 8000);
    await this.exit;
    clearTimeout(t);
    clearTimeout(k);
  }
}
