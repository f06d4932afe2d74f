// A lean event-stream client for the benchmark: raw TCP, a hand-written
// HTTP/1.1 response-head parser and chunked decoder, no per-chunk objects.
// Node's http client costs more per chunk than the servers under test do per
// event, which would make the client, not the server, the thing measured.

import net from 'node:net';

export class StreamError extends Error {}

/** Decodes a response body (chunked or not) and hands data byte ranges to `onData(buf, start, end)`. */
class BodyDecoder {
  constructor(chunked, onData) {
    this.chunked = chunked;
    this.onData = onData;
    this.state = 'size'; // size | data | crlf
    this.remaining = 0;
    this.sizeLine = '';
  }

  feed(buf, i = 0) {
    if (!this.chunked) {
      if (i < buf.length) this.onData(buf, i, buf.length);
      return;
    }
    while (i < buf.length) {
      if (this.state === 'data') {
        const end = Math.min(buf.length, i + this.remaining);
        this.onData(buf, i, end);
        this.remaining -= end - i;
        i = end;
        if (this.remaining === 0) {
          this.state = 'crlf';
          this.remaining = 2;
        }
      } else if (this.state === 'crlf') {
        const skip = Math.min(this.remaining, buf.length - i);
        i += skip;
        this.remaining -= skip;
        if (this.remaining === 0) this.state = 'size';
      } else {
        const nl = buf.indexOf(10, i);
        if (nl < 0) {
          this.sizeLine += buf.toString('latin1', i);
          return;
        }
        this.sizeLine += buf.toString('latin1', i, nl);
        i = nl + 1;
        const size = parseInt(this.sizeLine, 16);
        this.sizeLine = '';
        if (!Number.isFinite(size)) throw new StreamError('bad chunk size line');
        if (size === 0) {
          this.state = 'end';
          return;
        }
        this.state = 'data';
        this.remaining = size;
      }
    }
  }
}

/**
 * Opens GET <path> as an event stream on a new connection.
 * Resolves with { socket, close() } once the response head says 200
 * text/event-stream; body bytes go to onData(buf, start, end).
 */
export function openEventStream({ port, path, token, onData, timeoutMs = 15000 }) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    let head = Buffer.alloc(0);
    let decoder;
    let settled = false;
    const fail = (err) => {
      socket.destroy();
      if (!settled) {
        settled = true;
        reject(err);
      }
    };
    const timer = setTimeout(() => fail(new StreamError(`GET ${path} on :${port}: no response head in ${timeoutMs} ms`)), timeoutMs);
    socket.once('connect', () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAccept: text/event-stream\r\n` +
          `MCP-Protocol-Version: 2025-06-18\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      );
    });
    socket.on('error', (e) => fail(e));
    socket.on('close', () => {
      clearTimeout(timer);
      if (!settled) fail(new StreamError(`GET ${path} on :${port}: closed before the response head`));
    });
    socket.on('data', (buf) => {
      if (decoder) {
        decoder.feed(buf);
        return;
      }
      head = Buffer.concat([head, buf]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 65536) fail(new StreamError('response head too large'));
        return;
      }
      const lines = head.toString('latin1', 0, end).split('\r\n');
      const status = Number(lines[0].split(' ')[1]);
      const headers = {};
      for (const l of lines.slice(1)) {
        const c = l.indexOf(':');
        if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
      }
      if (status !== 200 || !String(headers['content-type']).startsWith('text/event-stream')) {
        fail(new StreamError(`GET ${path} on :${port} answered ${status} ${headers['content-type'] ?? ''}: ${head.toString('utf8', end + 4, end + 300)}`));
        return;
      }
      clearTimeout(timer);
      settled = true;
      decoder = new BodyDecoder(/chunked/i.test(headers['transfer-encoding'] ?? ''), onData);
      resolve({ socket, headers, close: () => socket.destroy() });
      decoder.feed(head, end + 4);
    });
  });
}

/** Opens a stream and resolves when its first complete event has arrived: { stream, micros }. */
export async function firstEvent({ port, path, token, timeoutMs = 15000 }) {
  const t0 = process.hrtime.bigint();
  let text = '';
  let done;
  const arrived = new Promise((resolve, reject) => {
    done = { resolve, reject };
  });
  const onData = (buf, start, end) => {
    if (text === null) return;
    text += buf.toString('utf8', start, end);
    if (text.includes('\n\n')) {
      text = null;
      done.resolve(Number(process.hrtime.bigint() - t0) / 1000);
    }
  };
  const stream = await openEventStream({ port, path, token, onData, timeoutMs });
  const timer = setTimeout(() => done.reject(new StreamError(`GET ${path} on :${port}: no event in ${timeoutMs} ms`)), timeoutMs);
  stream.socket.once('close', () => done.reject(new StreamError(`GET ${path} on :${port}: closed before the first event`)));
  try {
    const micros = await arrived;
    return { stream, micros };
  } catch (e) {
    stream.close();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads a stream of back-to-back events for `seconds` (from its first byte)
 * and reports body bytes per second. `sample()` is called at the start and the
 * end of the window (for CPU counters); its two results come back as before/after.
 */
export async function readRate({ port, path, token, seconds, sample = () => null }) {
  let bytes = 0;
  let t0;
  let before;
  let finish;
  const result = new Promise((resolve, reject) => {
    finish = { resolve, reject };
  });
  const onData = (buf, start, end) => {
    if (t0 === undefined) {
      t0 = process.hrtime.bigint();
      before = sample();
      setTimeout(() => {
        const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
        const after = sample();
        stream.close();
        finish.resolve({ bytes, seconds: elapsed, before, after });
      }, seconds * 1000);
      return; // the window starts after the first read
    }
    bytes += end - start;
  };
  const stream = await openEventStream({ port, path, token, onData });
  stream.socket.once('close', () => finish.reject(new StreamError(`GET ${path} on :${port}: closed during the rate run`)));
  return result;
}
