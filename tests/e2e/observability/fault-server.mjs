// A downstream that can misbehave on demand: in "pass" mode it relays every
// request to a real MCP server (streaming both ways), in "hang" mode it
// accepts requests and never answers (the proxy's response timeout fires),
// and once closed its port refuses connections (the proxy's connect error).

import http from 'node:http';

export async function startFaultServer({ target, host = '127.0.0.1' }) {
  const upstream = new URL(target);
  let mode = 'pass';
  const hanging = new Set();
  const counts = { pass: 0, hang: 0 };

  const server = http.createServer((req, res) => {
    if (mode === 'hang') {
      counts.hang++;
      hanging.add(res);
      res.on('close', () => hanging.delete(res));
      req.resume();
      return;
    }
    counts.pass++;
    const out = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        res.flushHeaders();
        up.pipe(res);
      },
    );
    out.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    res.on('close', () => out.destroy());
    req.pipe(out);
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = server.address().port;
  return {
    port,
    url: `http://${host}:${port}`,
    counts,
    setMode(m) {
      mode = m;
    },
    /** Stop listening: from now on the port refuses connections. */
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
