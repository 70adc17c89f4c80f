// Shared helpers for the wire-compatibility suite: spawn the real server
// binary, drive it with the real socket.io-client 4.8, and assert on what
// comes back. Every test file runs in its own Node process (node --test), so
// module-level state here is per file.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
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

/** The origin the server is configured to allow in every test. */
export const ALLOWED_ORIGIN = 'http://localhost:5173';
/** A second allowed origin, to check the comma-separated list. */
export const ALLOWED_ORIGIN_2 = 'https://chat.example.test';
export const DISALLOWED_ORIGIN = 'http://evil.example.test';

/** Both transport settings the main flows are run over. */
export const TRANSPORTS = [
  ['websocket', 'polling'], // what the stock frontend uses
  ['polling'], // long-polling only
];
export const transportName = (t) => t.join('+');

/** How long "nothing arrives" is watched for. */
export const QUIET_MS = 300;
/** Default wait for an expected event. */
export const EVENT_TIMEOUT_MS = 10000;

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

const servers = new Set();
// The clients of the test that is running (tests of one file may run
// concurrently, so each test closes only its own clients).
const testClients = new AsyncLocalStorage();

/** Picks a free TCP port by binding port 0 and closing again. */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

const MAX_LOG_BYTES = 4 * 1024 * 1024;

/**
 * Starts the server binary on a free port and waits until GET /health answers
 * 200. `env` overrides the defaults below (values are strings).
 */
export async function startServer(env = {}) {
  const port = await freePort();
  const childEnv = { ...process.env };
  // A developer's REDIS_URL must not leak into the tests. E2E_REDIS_URL runs
  // the whole suite against the Redis backend instead (scripts/test.sh does
  // both), each server under a prefix of its own.
  delete childEnv.REDIS_URL;
  if (process.env.E2E_REDIS_URL) {
    childEnv.REDIS_URL = process.env.E2E_REDIS_URL;
    childEnv.REDIS_PREFIX = `t${randomBytes(6).toString('hex')}`;
  }
  Object.assign(childEnv, {
    PORT: String(port),
    HOST: '127.0.0.1',
    CLIENT_URL: `${ALLOWED_ORIGIN},${ALLOWED_ORIGIN_2}`,
    DEBUG: 'false',
    ORIGINAL_CONTENT: 'echo',
    // Abuse limits the project adds beyond the contract's list (0 = off). The
    // suite opens many sockets and reservations from one IP and sends 500
    // messages back to back; tests of the limits set them explicitly.
    HANDSHAKE_RATE_PER_IP: '0',
    RESERVE_RATE_PER_IP: '0',
    MAX_SESSIONS_PER_IP: '0',
    AUTH_FAILURES_PER_IP_PER_MIN: '0',
    AUTH_FAILURES_PER_SESSION_PER_MIN: '0',
    SEND_RATE_PER_SOCKET: '0',
    JOIN_RATE_PER_MIN: '0',
    TYPING_RATE_PER_MIN: '0',
    KEY_RATE_PER_MIN: '0',
    MAX_SOCKETS_PER_IP: '0',
    // Several servers run at once: no shared metrics port, no drain delay.
    METRICS_ADDR: 'off',
    SHUTDOWN_DRAIN_SECS: '0',
    ...env,
  });
  let log = '';
  let logDropped = false;
  const append = (stream) => (chunk) => {
    if (log.length > MAX_LOG_BYTES) {
      if (!logDropped) log += '\n[... further server output dropped ...]\n';
      logDropped = true;
      return;
    }
    log += chunk.toString('utf8');
  };
  // cwd is this directory so that a .env in the repository root is not read.
  const proc = spawn(SERVER_BIN, [], { env: childEnv, cwd: HERE, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout.on('data', append('stdout'));
  proc.stderr.on('data', append('stderr'));
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    proc.on('error', (err) => {
      exited = { code: null, signal: null, error: err };
      resolve(exited);
    });
  });

  const url = `http://127.0.0.1:${port}`;
  const server = {
    url,
    port,
    env: childEnv,
    proc,
    output: () => log,
    exited: () => exited,
    async stop() {
      servers.delete(server);
      if (exited) return exited;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (!exited) proc.kill('SIGKILL');
      }, 5000);
      const res = await exitPromise;
      clearTimeout(timer);
      return res;
    },
  };
  servers.add(server);

  const deadline = Date.now() + 20000;
  for (;;) {
    if (exited) {
      servers.delete(server);
      throw new Error(
        `server ${SERVER_BIN} exited before it was ready: ${JSON.stringify(exited)}\n` + tail(log),
      );
    }
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`server did not answer GET /health with 200 within 20 s\n` + tail(log));
    }
    await sleep(50);
  }
  return server;
}

function tail(text, lines = 300) {
  const all = text.split('\n');
  const cut = all.length > lines ? all.slice(-lines) : all;
  return `--- server output (last ${cut.length} lines) ---\n${cut.join('\n')}\n--- end of server output ---`;
}

// Safety net: never leave a server behind, whatever happens.
process.on('exit', () => {
  for (const s of servers) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * `test` from node:test, with a default timeout, all clients created during
 * the test closed afterwards, and the server output attached to the error
 * when the test fails.
 */
export function test(name, optsOrFn, maybeFn) {
  const fn = typeof optsOrFn === 'function' ? optsOrFn : maybeFn;
  const opts = typeof optsOrFn === 'function' ? {} : { ...optsOrFn };
  if (opts.timeout === undefined) opts.timeout = 30000;
  return nodeTest(name, opts, async (t) => {
    const owned = new Set();
    try {
      await testClients.run(owned, () => fn(t));
    } catch (err) {
      attachServerOutput(err);
      throw err;
    } finally {
      for (const c of owned) c.close();
    }
  });
}

function attachServerOutput(err) {
  const parts = [];
  for (const s of servers) {
    const ex = s.exited();
    parts.push(
      `server ${s.url}${ex ? ` EXITED ${JSON.stringify(ex)}` : ''}\n${tail(s.output())}`,
    );
  }
  if (parts.length === 0) return;
  const extra = '\n' + parts.join('\n');
  try {
    if (err && typeof err === 'object' && typeof err.message === 'string') {
      // Reporters print either the message or the stack (which starts with
      // the message); put the output in both without printing it twice.
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

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh session id: 1–64 chars of [A-Za-z0-9_-]. */
export const newSessionId = () => 's' + randomBytes(8).toString('hex');
/** A fresh session key, like the stock client's (URL-safe). */
export const newKey = () => randomBytes(12).toString('base64url');
/** A fresh user id (the stock client keeps a UUID). */
export const newUserId = () => crypto.randomUUID();

/** POST /api/reserve-session. Returns {status, body, headers}. */
export async function reserve(server, body, { headers = {}, raw } = {}) {
  const res = await fetch(`${server.url}/api/reserve-session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: raw !== undefined ? raw : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: json, text, headers: res.headers };
}

/** Reserves and asserts success; returns {sessionId, key, authKey, chatMode}. */
export async function reserveOk(server, { chatMode = 'group', sessionId = newSessionId(), key = newKey(), authKey } = {}) {
  const auth = authKey ?? key;
  const body = { sessionId, authKey: auth };
  if (chatMode !== undefined) body.chatMode = chatMode;
  const res = await reserve(server, body);
  assert.equal(res.status, 200, `reserve failed: ${res.status} ${res.text}`);
  return { sessionId, key, authKey: auth, chatMode };
}

/** Asserts `n` is an epoch-ms number close to now. */
export function assertEpochMs(n, what = 'timestamp') {
  assert.equal(typeof n, 'number', `${what} should be a number, got ${JSON.stringify(n)}`);
  assert.ok(Math.abs(Date.now() - n) < 10 * 60 * 1000, `${what} ${n} is not close to now (epoch ms)`);
}

/** Asserts the object has exactly these keys (order ignored). */
export function assertKeys(obj, keys, what = 'payload') {
  assert.ok(obj && typeof obj === 'object' && !Array.isArray(obj), `${what} should be an object, got ${JSON.stringify(obj)}`);
  assert.deepEqual(Object.keys(obj).sort(), [...keys].sort(), `${what} has the wrong fields: ${JSON.stringify(obj)}`);
}

/**
 * Asserts a chat message exactly: `{id, from, to?, encrypted, timestamp,
 * type, senderDisplayName, originalContent?}`. Fields given as undefined in
 * `expected` must be absent. `id` may be a function to check it.
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

/** Asserts a non-fatal `event-error {event, error, message}`. */
export function assertEventError(actual, event, error) {
  assertKeys(actual, ['event', 'error', 'message'], 'event-error');
  assert.equal(actual.event, event, `event-error.event: ${JSON.stringify(actual)}`);
  assert.equal(actual.error, error, `event-error.error: ${JSON.stringify(actual)}`);
  assert.equal(typeof actual.message, 'string');
  assert.ok(actual.message.length > 0, 'event-error.message is empty');
}

// ---------------------------------------------------------------------------
// Socket.IO client wrapper
// ---------------------------------------------------------------------------

/**
 * A socket.io-client socket that records every event it receives, so that a
 * test can wait for an event that may already have arrived, and can assert
 * that an event did not arrive.
 */
export class Client {
  constructor(server, { transports = TRANSPORTS[0], extraHeaders, name = '' } = {}) {
    this.name = name;
    this.socket = io(server.url, {
      transports,
      forceNew: true,
      reconnection: false,
      timeout: 10000,
      ...(extraHeaders ? { extraHeaders } : {}),
    });
    this.queues = new Map(); // event name -> unconsumed payload lists (args arrays)
    this.log = []; // everything received, in order
    this.waiters = new Set();
    this.socket.onAny((event, ...args) => {
      this.log.push({ event, args });
      if (!this.queues.has(event)) this.queues.set(event, []);
      this.queues.get(event).push(args);
      for (const w of [...this.waiters]) w();
    });
    this.connectError = null;
    this.socket.on('connect', () => {
      this.lastId = this.socket.id;
      for (const w of [...this.waiters]) w();
    });
    this.socket.on('connect_error', (err) => {
      this.connectError = err;
      for (const w of [...this.waiters]) w();
    });
    this.disconnectReason = null;
    this.socket.on('disconnect', (reason) => {
      this.disconnectReason = reason;
      this.log.push({ event: `(disconnected: ${reason})`, args: [] });
      for (const w of [...this.waiters]) w();
    });
    testClients.getStore()?.add(this);
  }

  get id() {
    return this.socket.id;
  }

  /** Resolves once connected; rejects on connect_error or timeout. */
  async connected(timeout = 10000) {
    if (this.socket.connected) return this;
    await this.#waitFor(() => this.socket.connected || this.connectError, timeout, 'connect');
    if (!this.socket.connected) throw new Error(`${this.name} connect_error: ${this.connectError?.message}`);
    return this;
  }

  /** Resolves with the connect_error (asserting the connection failed). */
  async connectFailure(timeout = 10000) {
    await this.#waitFor(() => this.socket.connected || this.connectError, timeout, 'connect_error');
    assert.ok(!this.socket.connected, `${this.name} connected although it should have been refused`);
    return this.connectError;
  }

  emit(event, payload) {
    this.socket.emit(event, payload);
  }

  /** Next unconsumed payload of `event` (first argument). */
  async next(event, timeout = EVENT_TIMEOUT_MS) {
    await this.#waitFor(() => this.#count(event) > 0, timeout, `"${event}"`);
    return this.queues.get(event).shift()[0];
  }

  /** The next `n` payloads of `event`, in arrival order. */
  async collect(event, n, timeout = EVENT_TIMEOUT_MS) {
    await this.#waitFor(() => this.#count(event) >= n, timeout, `${n} x "${event}" (have ${this.#count(event)})`);
    return this.queues.get(event).splice(0, n).map((args) => args[0]);
  }

  /** Takes every unconsumed payload of `event`. */
  drain(event) {
    const q = this.queues.get(event) || [];
    return q.splice(0, q.length).map((args) => args[0]);
  }

  /** Forgets every unconsumed event. */
  drainAll() {
    for (const q of this.queues.values()) q.length = 0;
  }

  /** Asserts that no (further, unconsumed) `event` arrives within `ms`. */
  async expectNo(event, ms = QUIET_MS) {
    await sleep(ms);
    const q = this.queues.get(event) || [];
    assert.equal(
      q.length,
      0,
      `${this.name || 'client'} received unexpected "${event}": ${JSON.stringify(q.map((a) => a[0]))}`,
    );
  }

  /** Asserts that no unconsumed event of any name arrives within `ms`. */
  async expectSilence(ms = QUIET_MS) {
    await sleep(ms);
    const pending = [];
    for (const [event, q] of this.queues) for (const a of q) pending.push({ event, payload: a[0] });
    assert.deepEqual(pending, [], `${this.name || 'client'} received unexpected events`);
  }

  /**
   * Emits join-session and waits for the three replies every successful join
   * gets: messages-history, session-metadata, public-keys-updated.
   */
  async join(payload, timeout = EVENT_TIMEOUT_MS) {
    this.emit('join-session', payload);
    return this.joinReplies(timeout);
  }

  async joinReplies(timeout = EVENT_TIMEOUT_MS) {
    const names = ['messages-history', 'session-metadata', 'public-keys-updated'];
    await this.#waitFor(
      () => names.every((n) => this.#count(n) > 0) || this.#count('session-error') > 0,
      timeout,
      'the join replies (messages-history, session-metadata, public-keys-updated)',
    );
    if (this.#count('session-error') > 0) {
      throw new Error(`${this.name} join refused: ${JSON.stringify(this.queues.get('session-error')[0][0])}`);
    }
    const [history, metadata, keys] = names.map((n) => this.queues.get(n).shift()[0]);
    return { history, metadata, keys };
  }

  close() {
    this.socket.close();
  }

  /**
   * From now on this client sends nothing, pongs included, while it still
   * reads what comes: its connection died without the server knowing. The
   * server gives the seat of a member whose socket went silent to a new
   * socket once a ping interval (and a 2 s grace) passed unanswered.
   */
  goSilent() {
    this.socket.io.engine._sendPacket = () => {};
  }

  #count(event) {
    return (this.queues.get(event) || []).length;
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
            `${this.name || 'client'} (sid ${this.socket.id ?? this.lastId}, ${this.socket.io.engine?.transport?.name ?? 'no transport'}): ` +
              `timed out after ${timeout} ms waiting for ${what}; received so far: [${got}]`,
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

/** Creates a client and waits until it is connected. */
export async function connect(server, opts = {}) {
  const c = new Client(server, opts);
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
  const p = {
    sessionId,
    userId: user.userId,
    displayName: user.displayName,
    publicKey,
    isCreator,
  };
  if (authKey !== undefined) p.authKey = authKey;
  return p;
}

/** A public-keys-updated entry expected for `user`. */
export const keyEntry = (user) => ({
  userId: user.userId,
  publicKey: user.publicKey,
  displayName: user.displayName,
});

/**
 * Reserves a session, lets the creator join, then each joiner; drains the
 * join traffic. Returns {sessionId, key, link, clients: [creator, ...joiners]}.
 */
export async function setupRoom(server, transports, users, { chatMode = 'group' } = {}) {
  const { sessionId, key } = await reserveOk(server, { chatMode });
  const link = `${sessionId}:${key}`;
  const out = [];
  for (let i = 0; i < users.length; i++) {
    const c = await connect(server, { transports, name: users[i].displayName });
    await c.join(joinPayload(users[i], link, { isCreator: i === 0 }));
    out.push(c);
    // Earlier members see user-joined and public-keys-updated; wait for them.
    for (let j = 0; j < i; j++) {
      await out[j].next('user-joined');
      await out[j].next('public-keys-updated');
    }
  }
  for (const c of out) c.drainAll();
  return { sessionId, key, link, clients: out };
}
