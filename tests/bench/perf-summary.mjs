#!/usr/bin/env node
// Where the proxy's CPU goes, from a `perf script -F ip,sym,dso` dump of a
// `perf record --call-graph dwarf` profile (scripts/bench.sh with
// BENCH_PROFILE=1 writes both).
//
//   node perf-summary.mjs perf.script [µs-per-request]
//
// Each user-space sample belongs to the innermost frame that names a known
// component (generic frames, such as the http crate, bytes, alloc, libc malloc
// and memcpy, belong to whoever called them); each kernel sample to the
// syscall (or softirq, page fault) it is in. With the measured CPU time per
// request, shares become microseconds per request.

import fs from 'node:fs';
import { pathToFileURL } from 'node:url';

export const COMPONENTS = [
  ['policy: rhai engine (script call, Dynamic maps)', /rhai::|smartstring/],
  ['policy: user/request views, body parse, decision', /mcp_oauth_proxy::policy/],
  ['serde_json', /serde_json/],
  ['auth: token hash + cache lookup', /mcp_oauth_proxy::auth|moka::|sha2::/],
  ['forwarder: downstream headers, URI, request', /mcp_oauth_proxy::proxy/],
  ['hyper_util client (pool checkout, conn task)', /hyper_util::client::legacy/],
  ['hyper http/1 (parse, encode, dispatch)', /hyper::/],
  ['rescue layer', /mcp_oauth_proxy::server::rescue/],
  ['metrics', /mcp_oauth_proxy::metrics|prometheus/],
  ['axum (serve, routing, body)', /axum::|axum_core::/],
  ['tower_http cors', /tower_http::cors/],
  ['tower_http trace + tracing', /tower_http::trace|tracing::|tracing_core|tracing_subscriber/],
  ['tower_http request id (uuid)', /tower_http::request_id|uuid::/],
  ['tokio (scheduler, io driver, timers)', /tokio::|mio::/],
];

function parse(text) {
  return text
    .split(/\n\s*\n/)
    .map((block) =>
      block
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean)
        .map((l) => {
          const m = /^[0-9a-f]+ (.*) \((.*)\)$/.exec(l);
          return m ? { sym: m[1], dso: m[2] } : { sym: l, dso: '?' };
        }),
    )
    .filter((s) => s.length);
}

export function summarize(text, usPerRequest) {
  const samples = parse(text);
  const n = samples.length;
  const user = new Map();
  const kernel = new Map();
  let kernelCount = 0;
  for (const s of samples) {
    if (s[0].dso.includes('kernel')) {
      kernelCount += 1;
      // The syscall the sample is in: the frame just below do_syscall_64 (a
      // write on loopback includes delivering the segment to the peer's
      // socket); else the interrupt or fault.
      const at = s.findIndex((x) => x.sym === 'do_syscall_64');
      let key;
      if (at > 0) {
        const handler = s[at - 1].sym;
        key = /exit_to_user_mode|syscall_exit/.test(handler)
          ? 'scheduling on syscall exit (context switches)'
          : `syscall ${handler.replace(/^(__x64_sys_|__do_sys_|__sys_|ksys_|do_)/, '')}`;
      } else if (s.some((x) => x.sym === 'asm_exc_page_fault')) key = 'page faults';
      else if (s.some((x) => x.sym === 'handle_softirqs')) key = 'softirq outside syscalls';
      else key = `other (${s[0].sym})`;
      kernel.set(key, (kernel.get(key) ?? 0) + 1);
      continue;
    }
    let owner;
    for (const f of s) {
      owner = COMPONENTS.find(([, re]) => re.test(f.sym))?.[0];
      if (owner) break;
    }
    owner ??= `other (${s[0].sym.slice(0, 60)})`;
    user.set(owner, (user.get(owner) ?? 0) + 1);
  }
  const digits = usPerRequest && usPerRequest < 5 ? 2 : 1;
  const line = (count, name) => {
    const share = (100 * count) / n;
    const us = usPerRequest ? `${((share / 100) * usPerRequest).toFixed(digits).padStart(6)} µs` : '';
    return `${share.toFixed(1).padStart(6)}% ${us}  ${name}`;
  };
  const out = [`${n} samples; user space ${((100 * (n - kernelCount)) / n).toFixed(1)}%, kernel ${((100 * kernelCount) / n).toFixed(1)}%${usPerRequest ? `; ${usPerRequest.toFixed(1)} µs CPU per request (or event)` : ''}`, '', 'user space, by innermost known component:'];
  const shown = ([, c]) => c / n >= 0.001;
  for (const [k, c] of [...user].filter(shown).sort((a, b) => b[1] - a[1]).slice(0, 20)) out.push(line(c, k));
  out.push('', 'kernel, by syscall:');
  const other = [...kernel].filter(([k]) => k.startsWith('other')).reduce((a, [, c]) => a + c, 0);
  for (const [k, c] of [...kernel].filter(([k2]) => !k2.startsWith('other')).filter(shown).sort((a, b) => b[1] - a[1]).slice(0, 12)) out.push(line(c, k));
  if (other) out.push(line(other, 'other kernel'));
  return out.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [file, us] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node perf-summary.mjs perf.script [µs-per-request]');
    process.exit(2);
  }
  console.log(summarize(fs.readFileSync(file, 'utf8'), us ? Number(us) : undefined));
}
