// The workload a profile-guided build learns from (scripts/build-pgo.sh):
// an instrumented proxy (PROXY_BIN, built with `-Cprofile-generate`) signs a
// user in through the real OpenID provider, then serves what the proxy
// serves in production, each part for a few seconds:
//
//   - MCP POSTs with a 1 KB provider token, under the default policy, at 32
//     and 256 connections (wrk), then under the per-tool policy;
//   - event streams: first events on fresh connections, and one stream read
//     as fast as it comes.
//
// Each proxy is stopped with SIGTERM, so that it exits normally and writes
// its profile (a process killed outright writes none). The profile says
// which code is hot, not how fast anything is: what the build does with it
// is measured by scripts/bench.sh and tests/bench/instructions.mjs, never
// by this run.
//
//   PROXY_BIN=/abs/instrumented TRAIN_SECONDS=8 node tests/bench/train.mjs
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../e2e/lib/index.mjs';
import { signedInSetup, startOurProxy, startSseStub, runWrk } from './bench.mjs';
import { firstEvent, readRate } from './sse-client.mjs';

const seconds = Number(process.env.TRAIN_SECONDS ?? 8);
const log = (...a) => console.error('[train]', ...a);
if (!process.env.PROXY_BIN) throw new Error('PROXY_BIN: the instrumented proxy to train');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-train-'));
const cleanups = [];
try {
  const { shared, token, stubPort } = await signedInSetup(dir, cleanups);
  const port = shared.proxyPort;
  const url = `http://127.0.0.1:${port}/mcp`;
  const sse = await startSseStub();
  cleanups.push(() => sse.close());

  // A proxy in front of `downstreamUrl` while `run` loads it, then stopped
  // with SIGTERM; one that had to be killed, or failed, wrote no profile,
  // and a build from the rest would not know that part was ever hot.
  const serving = async ({ name, downstreamUrl, policyKeys }, run) => {
    const proxy = await startOurProxy({ name, port, shared, downstreamUrl, policyKeys });
    try {
      await run();
    } finally {
      const { code, signal } = await proxy.close();
      if (code !== 0) {
        // startOurProxy writes the proxy's log to a file in the run's dir.
        const logged = fs.readFileSync(path.join(dir, `${name}.log`), 'utf8').slice(-4000);
        throw new Error(`${name}: exited with ${signal ?? `status ${code}`} after SIGTERM, so its profile is missing\n${logged}`);
      }
    }
  };

  for (const policy of [undefined, 'policies/per-tool.rhai']) {
    const name = `post-${policy ? 'per-tool' : 'default'}`;
    const policyKeys = policy && { path: path.join(REPO_ROOT, policy) };
    await serving({ name, downstreamUrl: `http://127.0.0.1:${stubPort}/mcp`, policyKeys }, async () => {
      for (const connections of [32, 256]) {
        const r = await runWrk(url, connections, seconds, token);
        log(`POST /mcp, ${policy ?? 'default policy'}, ${connections} connections: ${r.requests} requests`);
      }
    });
  }
  await serving({ name: 'sse', downstreamUrl: `http://127.0.0.1:${sse.port}/mcp` }, async () => {
    for (let i = 0; i < 200; i++) {
      (await firstEvent({ port, path: '/mcp?mode=idle', token })).stream.close();
    }
    const { bytes } = await readRate({ port, path: '/mcp?mode=flood', token, seconds });
    log(`event streams: 200 first events, then ${Math.round(bytes / 1e6)} MB of events on one stream`);
  });
} finally {
  for (const c of cleanups.reverse()) await c().catch((e) => log('cleanup:', e.message));
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
