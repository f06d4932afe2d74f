// The example downstream server (examples/whoami-server) on its own, with the
// MCP TypeScript SDK client and no proxy: both transports, the tools, the
// resource, the prompt, and the request log the proxy tests rely on.
// Run: node --test whoami-server.test.mjs

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { removeOnExit } from './lib/proc.mjs';
import { rawHeaderValues, sha256, startWhoami } from './lib/whoami.mjs';

const IDENTITY = {
  'X-User-Email': 'dana@example.com',
  'X-User-Name': 'Dana Doe',
  'X-User-Sub': 'dana-123',
  'X-User-Groups': 'ops, admins',
  'X-User-Department': 'Platform',
  Authorization: 'Bearer upstream-token-for-dana',
};

describe('examples/whoami-server (direct, no proxy)', () => {
  let dir;
  let whoami;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'whoami-e2e-'));
    removeOnExit(dir);
    whoami = await startWhoami({ logFile: path.join(dir, 'requests.jsonl') });
  });

  after(async () => {
    await whoami?.close();
  });

  for (const kind of ['streamable-http', 'sse']) {
    test(`${kind}: whoami, count with progress, announce, resource, prompt`, async () => {
      const transport =
        kind === 'sse'
          ? new SSEClientTransport(new URL(whoami.sseUrl), { requestInit: { headers: IDENTITY } })
          : new StreamableHTTPClientTransport(new URL(whoami.mcpUrl), { requestInit: { headers: IDENTITY } });
      const client = new Client({ name: 'whoami-direct-test', version: '1.0.0' });
      const logs = [];
      client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => logs.push(n.params));
      await client.connect(transport);
      try {
        assert.equal(client.getServerVersion()?.name, 'whoami-server');
        const tools = (await client.listTools()).tools.map((t) => t.name).sort();
        assert.deepEqual(tools, ['announce', 'count', 'whoami']);

        const who = (await client.callTool({ name: 'whoami', arguments: {} })).structuredContent;
        assert.equal(who.email, 'dana@example.com');
        assert.equal(who.name, 'Dana Doe');
        assert.equal(who.sub, 'dana-123');
        assert.deepEqual(who.groups, ['ops', 'admins']);
        assert.deepEqual(who.authorization, { present: true, bearer: true, sha256: sha256('upstream-token-for-dana') });
        assert.deepEqual(who.other_user_headers, { 'x-user-department': 'Platform' });
        assert.equal(who.transport, kind);
        assert.ok(who.session_id, 'session id');
        if (kind === 'streamable-http') assert.equal(who.session_id, transport.sessionId);
        assert.ok(!JSON.stringify(who).includes('upstream-token-for-dana'), 'the token itself is never echoed');

        const progress = [];
        const r = await client.callTool({ name: 'count', arguments: { n: 4, delay_ms: 20 } }, undefined, { onprogress: (p) => progress.push(p) });
        assert.deepEqual(r.structuredContent, { counted: 4, progress_notifications: 4 });
        assert.deepEqual(progress.map((p) => [p.progress, p.total]), [[1, 4], [2, 4], [3, 4], [4, 4]]);

        // announce travels on the session stream (GET /mcp for Streamable HTTP).
        if (kind === 'streamable-http') {
          for (let i = 0; i < 50 && !whoami.requests().some((e) => e.method === 'GET' && e.headers['mcp-session-id'] === transport.sessionId); i++) {
            await new Promise((res) => setTimeout(res, 50));
          }
        }
        await client.callTool({ name: 'announce', arguments: { message: `hello ${kind}` } });
        for (let i = 0; i < 50 && !logs.length; i++) await new Promise((res) => setTimeout(res, 50));
        assert.deepEqual(logs.map((l) => l.data), [{ announce: `hello ${kind}` }]);

        const res = await client.readResource({ uri: 'whoami://identity' });
        assert.equal(JSON.parse(res.contents[0].text).email, 'dana@example.com');
        assert.deepEqual((await client.listPrompts()).prompts.map((p) => p.name), ['greeting']);
        const prompt = await client.getPrompt({ name: 'greeting', arguments: { tone: 'formal' } });
        assert.match(prompt.messages[0].content.text, /formal .*Dana Doe <dana@example\.com>/);
      } finally {
        if (kind === 'streamable-http') await transport.terminateSession();
        await client.close();
      }
    });
  }

  test('request log: method, path, every header; Authorization only as a hash', () => {
    const entries = whoami.requests();
    assert.ok(entries.length >= 10, `entries: ${entries.length}`);
    const methods = new Set(entries.map((e) => `${e.method} ${e.path.split('?')[0]}`));
    for (const m of ['POST /mcp', 'GET /mcp', 'DELETE /mcp', 'GET /sse', 'POST /messages']) assert.ok(methods.has(m), `${m} logged (${[...methods]})`);
    const text = fs.readFileSync(whoami.logFile, 'utf8');
    assert.ok(!text.includes('upstream-token-for-dana'), 'the bearer token is not in the log');
    for (const e of entries) {
      assert.deepEqual(rawHeaderValues(e, 'x-user-email'), ['dana@example.com']);
      assert.equal(e.headers.authorization, `Bearer sha256:${sha256('upstream-token-for-dana')}`);
    }
  });

  test('refuses what it should', async () => {
    // Not initialize and no session.
    let res = await fetch(whoami.mcpUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    assert.equal(res.status, 400);
    // Unknown session.
    res = await fetch(whoami.mcpUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': 'nope' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    assert.equal(res.status, 404);
    res = await fetch(`${whoami.url}/messages?sessionId=nope`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(res.status, 404);
    res = await fetch(`${whoami.url}/healthz`);
    assert.equal(res.status, 200);
    assert.equal((await res.json()).ok, true);
  });
});
