// Helpers of the multi-node suite: start a real redis-server and several
// processes of the server binary sharing it (REDIS_URL), drive them with the
// real socket.io-client 4.8, and assert on what comes back.
//
// The Client class and the assertion helpers follow tests/node/helpers.mjs;
// they are repeated here rather than imported so that this directory only
// needs its own node_modules (ESM resolves `socket.io-client` from the
// importing file's directory).
//
// Every test builds its own cluster (its own redis-server on a free port and
// a random REDIS_PREFIX), so tests of one file can run concurrently. Every
// child process is SIGKILLed when its test ends, passes or fails, and again
// when the test process exits.

import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { test as nodeTest } from 'node:test';
import { AsyncLocalStorage } from 'node:async_hooks';
import { io } from 'socket.io-client';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const SERVER_BIN =
  process.env.E2E_SERVER_BIN || path.join(REPO, 'target', 'debug', 'e2e-chat-server');
export const REDIS_BIN = process.env.REDIS_SERVER_BIN || 'redis-server';

export const ALLOWED_ORIGIN = 'http://localhost:5173';

/** What the stock frontend uses. */
export const WS = ['websocket', 'polling'];
export const POLLING = ['polling'];

/** How long "nothing (more) arrives" is watched for. */
export const QUIET_MS = 400;
/** Default wait for an expected event (generous: three nodes and Redis). */
export const EVENT_TIMEOUT_MS = 15000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/** Every child process still alive, for the exit-time safety net. */
const children = new Set();
/** Per test: the clients and child processes it created. */
const scopeStore = new AsyncLocalStorage();

process.on('exit', () => {
  for (const c of children) {
    try {
      c.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

const MAX_LOG_BYTES = 2 * 1024 * 1024;

/**
 * Spawns a child, records its output, registers it for clean-up (with the
 * running test, which kills it when it ends, and globally for the exit hook).
 */
function spawnChild(label, bin, args, { env, cwd = HERE } = {}) {
  let log = '';
  let stderr = '';
  let dropped = false;
  const proc = spawn(bin, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const append = (isErr) => (chunk) => {
    const s = chunk.toString('utf8');
    if (isErr && stderr.length < MAX_LOG_BYTES) stderr += s;
    if (log.length > MAX_LOG_BYTES) {
      if (!dropped) log += '\n[... further output dropped ...]\n';
      dropped = true;
      return;
    }
    log += s;
  };
  proc.stdout.on('data', append(false));
  proc.stderr.on('data', append(true));
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(child);
      resolve(exited);
    });
    proc.on('error', (err) => {
      exited = { code: null, signal: null, error: String(err) };
      children.delete(child);
      resolve(exited);
    });
  });
  const child = {
    label,
    proc,
    pid: proc.pid,
    output: () => log,
    stderr: () => stderr,
    exited: () => exited,
    exitPromise,
    /** Sends `signal` (default SIGKILL) and waits for the exit. */
    async kill(signal = 'SIGKILL') {
      if (!exited) {
        try {
          proc.kill(signal);
        } catch {
          // already gone
        }
      }
      return exitPromise;
    },
    /** Resolves with the exit, or null if it is still running after `ms`. */
    async waitExit(ms) {
      let timer;
      const r = await Promise.race([exitPromise, new Promise((res) => (timer = setTimeout(() => res(null), ms)))]);
      clearTimeout(timer);
      return r;
    },
  };
  children.add(child);
  scopeStore.getStore()?.procs.add(child);
  return child;
}

/** Picks a free TCP port by binding port 0 and closing again. */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/**
 * A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl),
 * for a redis-server that speaks TLS. Returns the PEM files' paths.
 */
export function makeTlsFiles() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cluster-tls-'));
  const f = (name) => path.join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=cluster test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  openssl('req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('server.crt'), '-days', '2', '-extfile', f('server.ext'));
  return { dir, ca: f('ca.crt'), cert: f('server.crt'), key: f('server.key') };
}

/**
 * Sends one inline command to Redis and resolves with the first reply line;
 * over TLS when `tlsFiles` (from makeTlsFiles) is given.
 */
export function redisCommand(port, command, timeout = 1000, tlsFiles = undefined) {
  return new Promise((resolve, reject) => {
    const sock = tlsFiles
      ? tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(tlsFiles.ca) })
      : net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${command}: no answer within ${timeout} ms`));
    }, timeout);
    sock.on(tlsFiles ? 'secureConnect' : 'connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const i = buf.indexOf('\r\n');
      if (i >= 0) {
        clearTimeout(timer);
        sock.end();
        resolve(buf.slice(0, i));
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Starts `redis-server` (no persistence) on `port` (a free one by default)
 * and waits until it answers PING. With a given port it keeps that port (the
 * restart test), otherwise it retries on another port if the port was taken.
 */
export async function startRedis({ port, tls: tlsFiles } = {}) {
  const fixed = port !== undefined;
  for (let attempt = 0; ; attempt++) {
    const p = fixed ? port : await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cluster-redis-'));
    const listen = tlsFiles
      ? ['--port', '0', '--tls-port', String(p), '--tls-cert-file', tlsFiles.cert, '--tls-key-file', tlsFiles.key,
        '--tls-ca-cert-file', tlsFiles.ca, '--tls-auth-clients', 'no']
      : ['--port', String(p)];
    const child = spawnChild(`redis:${p}`, REDIS_BIN, [
      ...listen,
      '--bind', '127.0.0.1',
      '--save', '',
      '--appendonly', 'no',
      '--protected-mode', 'no',
      '--daemonize', 'no',
      '--dir', dir,
      '--loglevel', 'warning',
    ]);
    const deadline = Date.now() + 10000;
    let ready = false;
    while (!child.exited() && Date.now() < deadline) {
      try {
        if ((await redisCommand(p, 'PING', 500, tlsFiles)) === '+PONG') {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    if (ready) {
      const redis = {
        port: p,
        url: `${tlsFiles ? 'rediss' : 'redis'}://127.0.0.1:${p}`,
        tls: tlsFiles,
        child,
        pid: child.pid,
        output: child.output,
        /** SIGKILL (a crash: no goodbye to the clients). */
        kill: () => child.kill('SIGKILL'),
      };
      return redis;
    }
    await child.kill('SIGKILL');
    const why = child.output();
    if (!fixed && attempt < 3 && /in use/i.test(why)) continue;
    throw new Error(`redis-server did not start on port ${p}: ${JSON.stringify(child.exited())}\n${why}`);
  }
}

/**
 * The environment every server process of the suite gets (as the node suite:
 * abuse limits off, no metrics listener, no drain delay), plus `env`.
 */
export function serverEnv(port, env = {}) {
  const childEnv = { ...process.env };
  // A developer's settings must not leak into the tests.
  for (const k of ['REDIS_URL', 'REDIS_TLS_CA_FILE', 'REDIS_PREFIX', 'NODE_TIMEOUT_SECS', 'STORE_TIMEOUT_MS']) delete childEnv[k];
  Object.assign(childEnv, {
    PORT: String(port),
    HOST: '127.0.0.1',
    CLIENT_URL: ALLOWED_ORIGIN,
    DEBUG: 'false',
    ORIGINAL_CONTENT: 'echo',
    HANDSHAKE_RATE_PER_IP: '0',
    RESERVE_RATE_PER_IP: '0',
    MAX_SESSIONS_PER_IP: '0',
    SEND_RATE_PER_SOCKET: '0',
    JOIN_RATE_PER_MIN: '0',
    TYPING_RATE_PER_MIN: '0',
    KEY_RATE_PER_MIN: '0',
    MAX_SOCKETS_PER_IP: '0',
    METRICS_ADDR: 'off',
    SHUTDOWN_DRAIN_SECS: '0',
    ...env,
  });
  return childEnv;
}

/** Spawns the server binary without waiting for anything. */
export function spawnServer(label, env, port) {
  return spawnChild(label, SERVER_BIN, [], { env: serverEnv(port, env) });
}

/** GET /health → {status, body} (body parsed JSON or undefined); throws if unreachable. */
export async function health(node, timeout = 2000) {
  const res = await fetch(`${node.url}/health`, { signal: AbortSignal.timeout(timeout) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text, contentType: res.headers.get('content-type') };
}

/**
 * Starts one server process and waits until GET /health answers 200 (in
 * cluster mode: the node reached Redis).
 */
export async function startNode(name, env = {}) {
  const port = await freePort();
  const child = spawnServer(name, env, port);
  const node = {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    child,
    pid: child.pid,
    output: child.output,
    exited: child.exited,
    kill: (signal) => child.kill(signal),
    waitExit: (ms) => child.waitExit(ms),
  };
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exited()) {
      throw new Error(`${name} (${SERVER_BIN}) exited before it was ready: ${JSON.stringify(child.exited())}\n${tail(child.output())}`);
    }
    try {
      if ((await health(node, 1000)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await child.kill('SIGKILL');
      throw new Error(`${name} did not answer GET /health with 200 within 20 s\n${tail(child.output())}`);
    }
    await sleep(50);
  }
  return node;
}

/**
 * A redis-server and `size` server processes sharing it (REDIS_URL) under a
 * random REDIS_PREFIX. `env` is added to every node's environment. With
 * `tls`, Redis speaks only TLS (certificate from a throwaway CA) and the
 * nodes reach it with a rediss:// URL and that CA as REDIS_TLS_CA_FILE.
 */
export async function startCluster({ size = 3, env = {}, tls: withTls = false } = {}) {
  const redis = await startRedis({ tls: withTls ? makeTlsFiles() : undefined });
  const prefix = 'ct' + randomBytes(5).toString('hex');
  const common = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, ...env };
  if (withTls) common.REDIS_TLS_CA_FILE = redis.tls.ca;
  const nodes = await Promise.all(Array.from({ length: size }, (_, i) => startNode(`node${i + 1}`, common)));
  return {
    redis,
    nodes,
    prefix,
    env: common,
    /** The node client `i` connects to (client i → node i % size). */
    nodeFor: (i) => nodes[i % nodes.length],
  };
}

function tail(text, lines = 80) {
  const all = text.split('\n');
  const cut = all.length > lines ? all.slice(-lines) : all;
  return cut.join('\n');
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/**
 * `test` from node:test with a default timeout; the clients and processes
 * the test created are closed/killed afterwards (also when it times out), and
 * the processes' output is attached to the error when it fails.
 */
export function test(name, optsOrFn, maybeFn) {
  const fn = typeof optsOrFn === 'function' ? optsOrFn : maybeFn;
  const opts = typeof optsOrFn === 'function' ? {} : { ...optsOrFn };
  if (opts.timeout === undefined) opts.timeout = 60000;
  return nodeTest(name, opts, async (t) => {
    const scope = { clients: new Set(), procs: new Set() };
    const onAbort = () => {
      cleanup(scope);
    };
    t.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await scopeStore.run(scope, () => fn(t));
    } catch (err) {
      attachOutput(err, scope);
      throw err;
    } finally {
      t.signal?.removeEventListener('abort', onAbort);
      await cleanup(scope);
    }
  });
}

async function cleanup(scope) {
  for (const c of scope.clients) c.close();
  await Promise.all([...scope.procs].map((p) => p.kill('SIGKILL')));
}

function attachOutput(err, scope) {
  const parts = [];
  for (const p of scope.procs) {
    const ex = p.exited();
    parts.push(`--- ${p.label} (pid ${p.pid})${ex ? ` exited ${JSON.stringify(ex)}` : ''}: last lines ---\n${tail(p.output())}`);
  }
  if (parts.length === 0) return;
  const extra = '\n' + parts.join('\n') + '\n--- end of process output ---';
  try {
    if (err && typeof err === 'object' && typeof err.message === 'string') {
      const before = err.message;
      err.message = `${before}${extra}`;
      if (typeof err.stack === 'string' && err.stack.includes(before)) {
        err.stack = err.stack.replace(before, err.message);
      }
    } else {
      console.error(extra);
    }
  } catch {
    console.error(extra);
  }
}

/** Polls `fn` (async, returns truthy when done) every `interval` ms until `timeout`. */
export async function waitUntil(fn, { timeout = 15000, interval = 200, what = 'condition' } = {}) {
  const started = Date.now();
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return { value: last, ms: Date.now() - started };
    } catch (err) {
      last = err;
    }
    if (Date.now() - started > timeout) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    }
    await sleep(interval);
  }
}

// ---------------------------------------------------------------------------
// Small utilities and assertions (as tests/node/helpers.mjs)
// ---------------------------------------------------------------------------

export const newSessionId = () => 'c' + randomBytes(8).toString('hex');
export const newKey = () => randomBytes(12).toString('base64url');
export const newUserId = () => crypto.randomUUID();

/** POST /api/reserve-session on `node`. Returns {status, body, text}. */
export async function reserve(node, body) {
  const res = await fetch(`${node.url}/api/reserve-session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: json, text };
}

/** Reserves on `node` and asserts the exact answer; returns {sessionId, key, link, chatMode}. */
export async function reserveOk(node, { chatMode = 'group', sessionId = newSessionId(), key = newKey() } = {}) {
  const res = await reserve(node, { sessionId, authKey: key, chatMode });
  assert.equal(res.status, 200, `reserve on ${node.name} failed: ${res.status} ${res.text}`);
  assert.deepStrictEqual(res.body, { success: true, sessionId, chatMode, message: 'Session reserved successfully' });
  return { sessionId, key, link: `${sessionId}:${key}`, chatMode };
}

export function assertEpochMs(n, what = 'timestamp') {
  assert.equal(typeof n, 'number', `${what} should be a number, got ${JSON.stringify(n)}`);
  assert.ok(Math.abs(Date.now() - n) < 10 * 60 * 1000, `${what} ${n} is not close to now (epoch ms)`);
}

export function assertKeys(obj, keys, what = 'payload') {
  assert.ok(obj && typeof obj === 'object' && !Array.isArray(obj), `${what} should be an object, got ${JSON.stringify(obj)}`);
  assert.deepEqual(Object.keys(obj).sort(), [...keys].sort(), `${what} has the wrong fields: ${JSON.stringify(obj)}`);
}

/**
 * Asserts a chat message exactly: `{id, from, to?, encrypted, timestamp,
 * type, senderDisplayName, originalContent?}`; fields given as undefined must
 * be absent; `id` may be a function to check it.
 */
export function assertMessage(actual, expected, what = 'message') {
  assert.ok(actual && typeof actual === 'object', `${what} should be an object, got ${JSON.stringify(actual)}`);
  assertEpochMs(actual.timestamp, `${what}.timestamp`);
  const want = { timestamp: actual.timestamp };
  for (const [k, v] of Object.entries(expected)) {
    if (v === undefined) continue;
    if (typeof v === 'function') {
      v(actual[k]);
      want[k] = actual[k];
    } else {
      want[k] = v;
    }
  }
  assert.deepStrictEqual(actual, want, `${what} differs`);
}

/** Asserts `{userId, publicKey, displayName, joinedAt}` entries, any order. */
export function assertPublicKeys(actual, expected, what = 'public-keys-updated') {
  assert.ok(Array.isArray(actual), `${what} should be an array, got ${JSON.stringify(actual)}`);
  for (const e of actual) {
    assertKeys(e, ['userId', 'publicKey', 'displayName', 'joinedAt'], `${what} entry`);
    assert.ok(e.joinedAt !== null && e.joinedAt !== undefined, `${what} entry joinedAt is empty`);
  }
  const norm = (list) =>
    list
      .map(({ userId, publicKey, displayName }) => ({ userId, publicKey, displayName }))
      .sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
  assert.deepStrictEqual(norm(actual), norm(expected), `${what} content differs`);
}

export function assertEventError(actual, event, error) {
  assertKeys(actual, ['event', 'error', 'message'], 'event-error');
  assert.equal(actual.event, event, `event-error.event: ${JSON.stringify(actual)}`);
  assert.equal(actual.error, error, `event-error.error: ${JSON.stringify(actual)}`);
  assert.equal(typeof actual.message, 'string');
  assert.ok(actual.message.length > 0, 'event-error.message is empty');
}

export function assertSessionError(actual, error, message) {
  assertKeys(actual, ['error', 'message'], 'session-error');
  assert.equal(actual.error, error, `session-error: ${JSON.stringify(actual)}`);
  if (message !== undefined) assert.equal(actual.message, message, `session-error.message: ${JSON.stringify(actual)}`);
  else assert.ok(typeof actual.message === 'string' && actual.message.length > 0, 'session-error.message is empty');
}

export function assertUserJoined(ev, user) {
  assertKeys(ev, ['userId', 'displayName', 'timestamp'], 'user-joined');
  assert.equal(ev.userId, user.userId);
  assert.equal(ev.displayName, user.displayName);
  assertEpochMs(ev.timestamp, 'user-joined.timestamp');
}

export function assertUserLeft(ev, user) {
  assertKeys(ev, ['userId', 'displayName', 'timestamp'], 'user-left');
  assert.equal(ev.userId, user.userId, `user-left: ${JSON.stringify(ev)}`);
  assert.equal(ev.displayName, user.displayName, `user-left: ${JSON.stringify(ev)}`);
  assertEpochMs(ev.timestamp, 'user-left.timestamp');
}

// ---------------------------------------------------------------------------
// Socket.IO client wrapper
// ---------------------------------------------------------------------------

/**
 * A socket.io-client socket (no automatic reconnection) that records every
 * event it receives, so a test can wait for an event that may already have
 * arrived and can assert that an event did not arrive.
 */
export class Client {
  constructor(node, { transports = WS, name = '' } = {}) {
    this.name = name ? `${name}@${node.name}` : node.name;
    this.node = node;
    this.socket = io(node.url, { transports, forceNew: true, reconnection: false, timeout: 10000 });
    this.queues = new Map();
    this.log = [];
    this.waiters = new Set();
    this.socket.onAny((event, ...args) => {
      this.log.push({ event, args, at: Date.now() });
      if (!this.queues.has(event)) this.queues.set(event, []);
      this.queues.get(event).push(args);
      this.#wake();
    });
    this.connectError = null;
    this.socket.on('connect', () => {
      this.lastId = this.socket.id;
      this.#wake();
    });
    this.socket.on('connect_error', (err) => {
      this.connectError = err;
      this.#wake();
    });
    this.disconnectReason = null;
    this.socket.on('disconnect', (reason) => {
      this.disconnectReason = reason;
      this.log.push({ event: `(disconnected: ${reason})`, args: [], at: Date.now() });
      this.#wake();
    });
    scopeStore.getStore()?.clients.add(this);
  }

  get id() {
    return this.socket.id;
  }

  async connected(timeout = 10000) {
    if (this.socket.connected) return this;
    await this.#waitFor(() => this.socket.connected || this.connectError, timeout, 'connect');
    if (!this.socket.connected) throw new Error(`${this.name} connect_error: ${this.connectError?.message}`);
    return this;
  }

  /** Resolves once the socket is disconnected (by the server or the network). */
  async disconnected(timeout = EVENT_TIMEOUT_MS) {
    await this.#waitFor(() => this.disconnectReason !== null, timeout, 'disconnect');
    return this.disconnectReason;
  }

  emit(event, payload) {
    this.socket.emit(event, payload);
  }

  /** Next unconsumed payload of `event` (first argument). */
  async next(event, timeout = EVENT_TIMEOUT_MS) {
    await this.#waitFor(() => this.count(event) > 0, timeout, `"${event}"`);
    return this.queues.get(event).shift()[0];
  }

  /** The next `n` payloads of `event`, in arrival order. */
  async collect(event, n, timeout = EVENT_TIMEOUT_MS) {
    await this.#waitFor(() => this.count(event) >= n, timeout, `${n} x "${event}" (have ${this.count(event)})`);
    return this.queues.get(event).splice(0, n).map((args) => args[0]);
  }

  /** Waits until `pred(payloads of event)` holds, without consuming. */
  async until(event, pred, timeout = EVENT_TIMEOUT_MS, what = `"${event}"`) {
    await this.#waitFor(() => pred((this.queues.get(event) || []).map((a) => a[0])), timeout, what);
  }

  /** Takes every unconsumed payload of `event`. */
  drain(event) {
    const q = this.queues.get(event) || [];
    return q.splice(0, q.length).map((args) => args[0]);
  }

  drainAll() {
    for (const q of this.queues.values()) q.length = 0;
  }

  count(event) {
    return (this.queues.get(event) || []).length;
  }

  /** Asserts that no (further, unconsumed) `event` arrives within `ms`. */
  async expectNo(event, ms = QUIET_MS) {
    await sleep(ms);
    const q = this.queues.get(event) || [];
    assert.equal(q.length, 0, `${this.name} received unexpected "${event}": ${JSON.stringify(q.map((a) => a[0]))}`);
  }

  /** Asserts that no unconsumed event of any name arrives within `ms`. */
  async expectSilence(ms = QUIET_MS) {
    await sleep(ms);
    const pending = [];
    for (const [event, q] of this.queues) for (const a of q) pending.push({ event, payload: a[0] });
    assert.deepEqual(pending, [], `${this.name} received unexpected events`);
  }

  /**
   * Emits join-session and waits for the three replies of a successful join
   * (messages-history, session-metadata, public-keys-updated); throws on a
   * session-error.
   */
  async join(payload, timeout = EVENT_TIMEOUT_MS) {
    this.emit('join-session', payload);
    const r = await this.joinOutcome(timeout);
    if (!r.ok) throw new Error(`${this.name} join refused: ${JSON.stringify(r.error)}`);
    return r;
  }

  /**
   * Waits for the outcome of a join already emitted: {ok: true, history,
   * metadata, keys} or {ok: false, error: <session-error payload>}.
   */
  async joinOutcome(timeout = EVENT_TIMEOUT_MS) {
    const names = ['messages-history', 'session-metadata', 'public-keys-updated'];
    await this.#waitFor(
      () => names.every((n) => this.count(n) > 0) || this.count('session-error') > 0,
      timeout,
      'the join replies (messages-history, session-metadata, public-keys-updated) or a session-error',
    );
    if (this.count('session-error') > 0) return { ok: false, error: this.queues.get('session-error').shift()[0] };
    const [history, metadata, keys] = names.map((n) => this.queues.get(n).shift()[0]);
    return { ok: true, history, metadata, keys };
  }

  close() {
    this.socket.close();
  }

  #wake() {
    for (const w of [...this.waiters]) w();
  }

  #waitFor(pred, timeout, what) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred()) {
          cleanup();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        const got = this.log.map((e) => e.event).join(', ');
        reject(
          new Error(
            `${this.name} (sid ${this.socket.id ?? this.lastId}): timed out after ${timeout} ms waiting for ${what}; received so far: [${got}]`,
          ),
        );
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }
}

/** Creates a client of `node` and waits until it is connected. */
export async function connect(node, opts = {}) {
  const c = new Client(node, opts);
  await c.connected();
  return c;
}

/** A user of the chat: a stable id, a name and a public key. */
export function newUser(name) {
  return {
    userId: newUserId(),
    displayName: name,
    publicKey: `-----BEGIN PUBLIC KEY-----${randomBytes(24).toString('base64')}-----END PUBLIC KEY-----`,
  };
}

/** The join-session payload the stock client sends. */
export function joinPayload(user, sessionId, { isCreator = false, authKey, publicKey = user.publicKey } = {}) {
  const p = { sessionId, userId: user.userId, displayName: user.displayName, publicKey, isCreator };
  if (authKey !== undefined) p.authKey = authKey;
  return p;
}

export const keyEntry = (user) => ({ userId: user.userId, publicKey: user.publicKey, displayName: user.displayName });

/**
 * Reserves a session on the first node; user i joins from a client of node
 * i % size (user 0 is the creator), one after the other; earlier members see
 * each join. Drains the join traffic. Returns {sessionId, key, link, clients}.
 */
export async function setupRoom(cluster, users, { chatMode = 'group', transports = WS } = {}) {
  const { sessionId, key, link } = await reserveOk(cluster.nodes[0], { chatMode });
  const clients = [];
  for (let i = 0; i < users.length; i++) {
    const c = await connect(cluster.nodeFor(i), { transports, name: users[i].displayName });
    await c.join(joinPayload(users[i], link, { isCreator: i === 0 }));
    clients.push(c);
    for (let j = 0; j < i; j++) {
      assertUserJoined(await clients[j].next('user-joined'), users[i]);
      assertPublicKeys(await clients[j].next('public-keys-updated'), users.slice(0, i + 1).map(keyEntry));
    }
  }
  for (const c of clients) c.drainAll();
  return { sessionId, key, link, clients };
}

/**
 * Waits until `client` has a `user-left` for every one of `users`, then
 * watches `watchMs` more and asserts it got exactly one per user and no
 * other. Consumes them; returns the milliseconds until the last one arrived.
 */
export async function expectUserLeftOnce(client, users, { timeout = EVENT_TIMEOUT_MS, watchMs = 2000, since = Date.now() } = {}) {
  const ids = users.map((u) => u.userId);
  await client.until('user-left', (evs) => ids.every((id) => evs.some((e) => e?.userId === id)), timeout,
    `user-left for ${users.map((u) => u.displayName).join(', ')}`);
  const took = Date.now() - since;
  await sleep(watchMs);
  const got = client.drain('user-left');
  assert.deepStrictEqual(
    got.map((e) => e.userId).sort(),
    [...ids].sort(),
    `${client.name}: user-left must arrive exactly once per departed member; got ${JSON.stringify(got)}`,
  );
  for (const ev of got) assertUserLeft(ev, users.find((u) => u.userId === ev.userId));
  return took;
}
