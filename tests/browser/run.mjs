#!/usr/bin/env node
// Real-browser suite: headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) plays whole conversations against the e2e-chat server,
// with the test page served from another origin, as the React frontend is.
//
//   cd tests/browser && npm ci && node run.mjs
//
// Environment:
//   E2E_SERVER_BIN   server binary (default <repo>/target/debug/e2e-chat-server)
//   CHROMIUM_BIN     browser (default /usr/bin/chromium)
//   PAGE_PORT        preferred port of the allowed page origin (default 5173)
//   E2E_ONLY         run only the tests whose name contains this text
//
// Output is TAP-like; the last line is "N passed, N failed"; the exit code is
// non-zero when anything failed. Screenshots go to artifacts/ (not committed).

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const ARTIFACTS = path.join(HERE, 'artifacts');
const SERVER_BIN = process.env.E2E_SERVER_BIN || path.join(REPO, 'target', 'debug', 'e2e-chat-server');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ONLY = process.env.E2E_ONLY || '';
const SUITE_DEADLINE_MS = 170_000; // the whole run stays under ~3 minutes

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// ---------------------------------------------------------------------------
// small utilities

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** JSON with object keys sorted, so that key order does not matter. */
function canonical(value) {
  return JSON.stringify(value, (k, v) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))) : v,
  );
}

function assertEq(actual, expected, message) {
  const a = canonical(actual);
  const e = canonical(expected);
  if (a !== e) throw new Error(`assertion failed: ${message}\n  expected: ${e}\n  actual:   ${a}`);
}

// eslint-disable-next-line no-control-regex
const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, '');

async function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

async function freePort(preferred) {
  if (preferred && (await portIsFree(preferred))) return preferred;
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}

/** Plain HTTP request from Node (no browser, so no CORS enforcement): for header checks. */
function rawRequest(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

/** Sends a WebSocket upgrade request and returns the status line's code (101 = accepted). */
function rawUpgrade(port, pathQuery, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: pathQuery,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
        ...headers,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------
// the static page, served from its own origin(s)

const STATIC_FILES = {
  '/': ['public/index.html', 'text/html; charset=utf-8'],
  '/index.html': ['public/index.html', 'text/html; charset=utf-8'],
  '/client.js': ['public/client.js', 'text/javascript; charset=utf-8'],
  '/vendor/socket.io.min.js': ['node_modules/socket.io-client/dist/socket.io.min.js', 'text/javascript; charset=utf-8'],
};

async function startStaticServer(port) {
  const srv = http.createServer((req, res) => {
    const entry = STATIC_FILES[new URL(req.url, 'http://x').pathname];
    if (!entry) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': entry[1], 'Cache-Control': 'no-store' });
    fs.createReadStream(path.join(HERE, entry[0])).pipe(res);
  });
  srv.listen(port, '127.0.0.1');
  await once(srv, 'listening');
  return srv;
}

/**
 * A reverse proxy in front of the server that passes HTTP (so long-polling
 * works) and refuses every WebSocket upgrade, like a proxy or firewall that
 * does not speak WebSocket.
 */
async function startWsBlockingProxy(port, targetPort) {
  const stats = { http: 0, upgradesRefused: 0 };
  const srv = http.createServer((req, res) => {
    stats.http++;
    const up = http.request(
      { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  });
  srv.on('upgrade', (req, socket) => {
    stats.upgradesRefused++;
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  srv.listen(port, '127.0.0.1');
  await once(srv, 'listening');
  return { srv, stats };
}

// ---------------------------------------------------------------------------
// the server under test

async function startChatServer({ port, clientUrl }) {
  if (!fs.existsSync(SERVER_BIN)) {
    throw new Error(`server binary not found: ${SERVER_BIN} (build it with \`cargo build\`, or set E2E_SERVER_BIN)`);
  }
  // Its own working directory, so that no .env of the repo changes the setup.
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-chat-browser-'));
  const env = {
    ...process.env,
    PORT: String(port),
    HOST: '127.0.0.1',
    CLIENT_URL: clientUrl,
    // no fixed side port, so that this run never collides with another server on the machine
    METRICS_ADDR: 'off',
  };
  delete env.REDIS_URL; // the embedded store, whatever the developer's shell says
  const child = spawn(SERVER_BIN, [], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logFile = fs.createWriteStream(path.join(ARTIFACTS, 'server.log'));
  const log = { text: '' };
  const onData = (chunk) => {
    log.text += chunk.toString();
    logFile.write(chunk);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
  });

  const base = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (exited) throw new Error(`server exited during start-up (${JSON.stringify(exited)}):\n${log.text.slice(-2000)}`);
    if (Date.now() - t0 > 20_000) throw new Error(`server did not answer GET /health within 20 s:\n${log.text.slice(-2000)}`);
    try {
      const r = await rawRequest(`${base}/health`);
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return {
    base,
    log,
    get exited() {
      return exited;
    },
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const done = once(child, 'exit');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await done;
      clearTimeout(t);
      logFile.end();
    },
  };
}

// ---------------------------------------------------------------------------
// TAP-like harness

const results = { passed: 0, failed: 0, n: 0 };
const tests = [];
function test(name, fn, { timeout = 45_000 } = {}) {
  tests.push({ name, fn, timeout });
}

function tapComment(text) {
  for (const line of String(text).split('\n')) console.log(`# ${line}`);
}

// ---------------------------------------------------------------------------
// browser users

let browser;
let env; // {serverUrl, pageOrigin, foreignOrigin, proxyUrl, server, ...}

class User {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.log = [];
  }

  /** Runs `fn(arg)` in the page (fn sees window.chat). */
  eval(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  state() {
    return this.page.evaluate(() => window.chat.state());
  }

  async waitFor(fn, arg, what, timeout = 15_000) {
    try {
      await this.page.waitForFunction(fn, arg, { timeout, polling: 50 });
    } catch (err) {
      let state = '(no state)';
      try {
        const s = await this.state();
        state = JSON.stringify(s, (k, v) => (typeof v === 'string' && v.length > 200 ? v.slice(0, 200) + '…' : v), 1).slice(0, 3000);
      } catch {
        // page gone
      }
      throw new Error(`${this.name}: waiting for ${what} failed: ${err.message.split('\n')[0]}\n${this.name} state: ${state}\n${this.name} console (last 15):\n  ${this.log.slice(-15).join('\n  ')}`);
    }
  }

  /** Waits until a message bubble in the page shows exactly `text` with the given status. */
  seeText(text, status = 'decrypted') {
    return this.waitFor(
      ([t, st]) =>
        [...document.querySelectorAll('#messages .msg')].some(
          (d) => d.querySelector('.text').textContent === t && (!st || d.dataset.status === st),
        ),
      [text, status],
      `message "${text}" (${status})`,
    );
  }

  /** Texts of the message bubbles in the page, in order. */
  texts() {
    return this.page.evaluate(() => [...document.querySelectorAll('#messages .msg .text')].map((e) => e.textContent));
  }

  async ready() {
    await this.page.evaluate(() => window.chat.ready);
  }
}

const openContexts = new Set();
const currentUsers = [];

/** For a failed test: what each page got from the server, in short. */
async function describeUsers() {
  const out = [];
  for (const u of currentUsers) {
    try {
      const [st, events] = await Promise.all([u.state(), u.eval(() => window.chat.events())]);
      out.push(
        `${u.name}: connected=${st.connected} transport=${st.transport} joined=${st.joined} ` +
          `sessionErrors=${JSON.stringify(st.sessionErrors)} eventErrors=${JSON.stringify(st.eventErrors)} connectErrors=${JSON.stringify(st.connectErrors)}`,
        `${u.name} last events: ${events.slice(-12).map(([n, p]) => `${n} ${String(p ?? '').slice(0, 120)}`).join(' | ')}`,
      );
    } catch {
      out.push(`${u.name}: (page gone)`);
    }
  }
  return out.join('\n');
}

async function newUser(name, { origin = env.pageOrigin, server = env.serverUrl, transports, tryAllTransports, withCredentials } = {}) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 600, height: 700 } });
  openContexts.add(context);
  const page = await context.newPage();
  const user = new User(name, context, page);
  currentUsers.push(user);
  page.on('console', (m) => user.log.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => user.log.push(`[pageerror] ${e.message}`));
  const q = new URLSearchParams({ server });
  if (transports) q.set('transports', transports.join(','));
  if (tryAllTransports) q.set('tryAllTransports', '1');
  if (withCredentials) q.set('withCredentials', '1');
  await page.goto(`${origin}/index.html?${q}`);
  await user.ready();
  return user;
}

async function closeAll() {
  for (const c of openContexts) await c.close().catch(() => {});
  openContexts.clear();
  currentUsers.length = 0;
}

/** One picture per conversation: every participant's page side by side. */
async function screenshot(slug, users) {
  const shots = [];
  for (const u of users) {
    try {
      const png = await u.page.screenshot({ fullPage: true });
      shots.push({ name: u.name, data: png.toString('base64') });
    } catch {
      // page already closed
    }
  }
  if (shots.length === 0) return;
  const ctx = await browser.newContext({ viewport: { width: 620 * shots.length, height: 400 } });
  try {
    const page = await ctx.newPage();
    await page.setContent(
      `<body style="margin:0;display:flex;gap:8px;background:#888;font:bold 14px sans-serif">${shots
        .map((s) => `<figure style="margin:0;background:#fff"><figcaption style="padding:4px;background:#335;color:#fff">${s.name}</figcaption><img src="data:image/png;base64,${s.data}"></figure>`)
        .join('')}</body>`,
    );
    await page.screenshot({ path: path.join(ARTIFACTS, `${slug}.png`), fullPage: true });
  } finally {
    await ctx.close();
  }
}

/** Creator makes a session; the others join from the link; waits until everyone has everyone's key. */
async function setupRoom(mode, [creator, ...joiners], { password } = {}) {
  const created = await creator.eval((o) => window.chat.create(o), { mode, password, displayName: creator.name });
  assert(created.ok, `${creator.name} creates a ${mode} session: ${JSON.stringify(created)}`);
  for (const j of joiners) {
    const r =
      mode === 'password'
        ? await j.eval(([room, pw, name]) => window.chat.joinPassword(room, pw, { displayName: name }), [created.roomId, password, j.name])
        : await j.eval(([link, name]) => window.chat.join(link, { displayName: name }), [created.link, j.name]);
    assert(r.ok, `${j.name} joins: ${JSON.stringify(r)}`);
  }
  const all = [creator, ...joiners];
  for (const u of all) {
    const others = all.filter((x) => x !== u).map((x) => x.name);
    await u.waitFor((names) => {
      const peers = window.chat.state().peers.map((p) => p.displayName);
      return names.every((n) => peers.includes(n));
    }, others, `public keys of ${others.join(', ')}`);
  }
  if (mode === 'group') {
    for (const u of all) await u.waitFor(() => window.chat.state().hasGroupKey, null, 'the group key');
  }
  return created;
}

// ---------------------------------------------------------------------------
// the conversations

test('CORS: the allowed origin reserves through a preflight, reads /health with credentials, connects with credentials', async () => {
  const u = await newUser('Alice', { withCredentials: true, transports: ['polling'] });
  const probe = await u.eval(() => window.chat.corsProbe());
  assert(probe.ok, `credentialed fetch of /health from ${env.pageOrigin}: ${JSON.stringify(probe)}`);
  assertEq(probe.body.status, 'ok', '/health status');
  assert(typeof probe.body.activeSessions === 'number' && typeof probe.body.sessions === 'number', '/health carries activeSessions and sessions');
  const id = `cors${Date.now()}`;
  const r = await u.eval(([sid]) => window.chat.reserve(sid, 'k3y', 'private'), [id]);
  assertEq(r.status, 200, 'reserve status');
  assertEq(r.body, { success: true, sessionId: id, chatMode: 'private', message: 'Session reserved successfully' }, 'reserve answer');
  const dup = await u.eval(([sid]) => window.chat.reserve(sid, 'k3y', 'private'), [id]);
  assertEq([dup.status, dup.body], [409, { error: 'Session already exists' }], 'second reservation of the same id');
  const c = await u.eval(() => window.chat.probeConnect({ transports: ['polling'] }));
  assert(c.connected, `polling connection with withCredentials: true: ${JSON.stringify(c)}`);
  // The same from Node, to see the headers themselves.
  const h = await rawRequest(`${env.serverUrl}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: env.pageOrigin } });
  assertEq(h.status, 200, 'polling handshake status for the allowed origin');
  assertEq(h.headers['access-control-allow-origin'], env.pageOrigin, 'Access-Control-Allow-Origin of the handshake');
  assertEq(h.headers['access-control-allow-credentials'], 'true', 'Access-Control-Allow-Credentials of the handshake');
  await screenshot('01-cors-allowed-origin', [u]);
});

test('group chat: three browsers, a late joiner decrypts the history with the wrapped group key, a reload uses session-metadata', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  await setupRoom('group', [alice, bob]);
  for (const u of [alice, bob]) assertEq((await u.state()).transport, 'websocket', `${u.name} is on WebSocket`);

  await alice.eval(() => window.chat.send('Hello from Alice 👋'));
  await bob.seeText('Hello from Alice 👋');
  await bob.eval(() => window.chat.send('Hi Alice, Bob here — ünïcödé ✓'));
  await alice.seeText('Hi Alice, Bob here — ünïcödé ✓');
  // the author's own bubble comes from the message-sent echo
  await alice.seeText('Hello from Alice 👋', 'echo');
  const got = (await bob.state()).messages.find((m) => m.text === 'Hello from Alice 👋');
  assertEq([got.to, got.type, got.senderDisplayName, got.hasOriginalContent], ['all', 'text', 'Alice', false], 'new-message at Bob: to, type, senderDisplayName, no plaintext');

  // order of a burst from one sender (60 messages: with the two above, more
  // than two pages of HISTORY_PAGE_BYTES for the late joiner below, each
  // message weighing its stored JSON plus 512 bytes)
  await alice.eval(() => window.chat.sendMany('burst-', 60));
  await bob.seeText('burst-59');
  const burst = (await bob.texts()).filter((t) => t.startsWith('burst-'));
  assertEq(burst, Array.from({ length: 60 }, (_, i) => `burst-${i}`), 'Bob receives the burst in order');

  // late joiner
  const carol = await newUser('Carol');
  const link = (await alice.state()).session.link;
  const r = await carol.eval((l) => window.chat.join(l, { displayName: 'Carol' }), link);
  assert(r.ok && r.chatMode === 'group', `Carol joins late: ${JSON.stringify(r)}`);
  await alice.waitFor(() => window.chat.state().activity.includes('Carol joined'), null, '"Carol joined"');
  await carol.waitFor(() => window.chat.state().keyEvents.includes('key-available'), null, 'the group key via session-key-available');
  await carol.seeText('Hello from Alice 👋');
  await carol.seeText('Hi Alice, Bob here — ünïcödé ✓');
  // History comes in several messages-history events; the stock client merges them.
  await carol.seeText('burst-59');
  const carolTexts = await carol.texts();
  assertEq(carolTexts.slice(0, 2), ['Hello from Alice 👋', 'Hi Alice, Bob here — ünïcödé ✓'], 'Carol\'s history starts with the first two messages');
  assertEq(carolTexts.filter((t) => t.startsWith('burst-')), Array.from({ length: 60 }, (_, i) => `burst-${i}`), 'Carol\'s history keeps the burst in order');

  await carol.eval(() => window.chat.send('Carol is in'));
  await alice.seeText('Carol is in');
  await bob.seeText('Carol is in');

  // Carol reloads: same userId and key pair from localStorage; the creator does
  // not wrap again (same public key), so the key must come from session-metadata.
  const before = await carol.state();
  const wrapsBefore = (await alice.state()).setSessionKeyCount;
  await carol.page.reload();
  await carol.ready();
  await carol.waitFor(() => window.chat.state().joined, null, 'rejoined after reload');
  const after = await carol.state();
  assertEq(after.userId, before.userId, 'Carol keeps her userId across the reload');
  assertEq(after.keyEvents[0], 'metadata', 'after the reload the group key comes from session-metadata.encryptedSessionKey');
  await carol.seeText('Hello from Alice 👋');
  await carol.seeText('Carol is in'); // her own message, decrypted with the group key
  assertEq((await alice.state()).setSessionKeyCount, wrapsBefore, 'the creator did not need to send set-session-key again');
  await bob.eval(() => window.chat.send('welcome back Carol'));
  await carol.seeText('welcome back Carol');
  await screenshot('02-group-chat-late-joiner', [alice, bob, carol]);
});

test('private chat: hybrid envelopes per peer, plaintext never relayed, a third user is refused (SESSION_FULL)', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  await setupRoom('private', [alice, bob]);
  const sent = await alice.eval(() => window.chat.send('private hello, Bob 🔒'));
  assertEq(sent.copies, 1, 'one copy per peer');
  await bob.seeText('private hello, Bob 🔒');
  await alice.seeText('private hello, Bob 🔒', 'echo');
  await bob.eval(() => window.chat.send('private reply, Alice'));
  await alice.seeText('private reply, Alice');
  const [a, b] = [await alice.state(), await bob.state()];
  const m = b.messages.find((x) => x.text === 'private hello, Bob 🔒');
  assertEq([m.id, m.to, m.hasOriginalContent], [sent.clientMessageId, b.userId, false], 'Bob\'s copy: id = clientMessageId, to = Bob, no plaintext');
  assertEq(a.chatMode, 'private', 'chat mode');

  const carol = await newUser('Carol');
  const r = await carol.eval((l) => window.chat.join(l, { displayName: 'Carol' }), (await alice.state()).session.link);
  assertEq([r.ok, r.error, r.message], [false, 'SESSION_FULL', 'This room is full. Only 2 members allowed.'], 'a third member is refused');
  await carol.waitFor(() => document.querySelector('#errors').textContent.includes('SESSION_FULL'), null, 'SESSION_FULL shown');
  await screenshot('03-private-chat', [alice, bob, carol]);
});

test('join errors as the stock client meets them: stale link (SESSION_NOT_FOUND), wrong key (INVALID_KEY), creator not there yet (SESSION_NOT_ACTIVE)', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  const stale = await bob.eval(() => window.chat.join('tnosuchroom00:deadbeef', { displayName: 'Bob' }));
  assertEq([stale.ok, stale.error, stale.message], [false, 'SESSION_NOT_FOUND', 'Session not found. Please check the session link.'], 'a link to a room that does not exist');
  const again = await bob.eval(() => window.chat.join('tnosuchroom00:deadbeef', { displayName: 'Bob' }));
  assertEq(again.error, 'SESSION_NOT_FOUND', 'the failed join created nothing');

  const created = await alice.eval(() => window.chat.create({ mode: 'group', displayName: 'Alice' }));
  assert(created.ok, `Alice creates a room: ${JSON.stringify(created)}`);
  const wrongKey = await bob.eval((id) => window.chat.join(`${id}:not-the-key`, { displayName: 'Bob' }), created.roomId);
  assertEq([wrongKey.ok, wrongKey.error, wrongKey.message], [false, 'INVALID_KEY', 'Invalid authentication key. Please check your link and try again.'], 'a link with the wrong key');

  const roomId = `tres${Date.now()}`;
  const reserved = await alice.eval((id) => window.chat.reserve(id, 'k3yk3y', 'group'), roomId);
  assertEq(reserved.status, 200, 'reservation');
  const early = await bob.eval((id) => window.chat.join(`${id}:k3yk3y`, { displayName: 'Bob' }), roomId);
  assertEq([early.ok, early.error, early.message], [false, 'SESSION_NOT_ACTIVE', 'Room not active yet. Please wait for the creator to join first.'], 'joining before the creator');
  await bob.waitFor(() => document.querySelector('#errors').textContent.includes('SESSION_NOT_ACTIVE'), null, 'SESSION_NOT_ACTIVE shown');
  await screenshot('04-join-errors', [bob]);
});

test('password room: a wrong password is refused (INVALID_PASSWORD), the right one joins; every event carries "ROOM:password:<base64>"', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  const password = 'correct horse ✓ battery';
  const created = await alice.eval((pw) => window.chat.create({ mode: 'password', password: pw, displayName: 'Alice' }), password);
  assert(created.ok, `Alice creates a password room: ${JSON.stringify(created)}`);
  assertEq(created.reserved.body.chatMode, 'password', 'reserved chatMode');

  const wrong = await bob.eval((room) => window.chat.joinPassword(room, 'wrong password', { displayName: 'Bob' }), created.roomId);
  assertEq([wrong.ok, wrong.error, wrong.message], [false, 'INVALID_PASSWORD', 'Incorrect password. Please check and try again.'], 'wrong password');
  await bob.waitFor(() => document.querySelector('#errors').textContent.includes('INVALID_PASSWORD'), null, 'INVALID_PASSWORD shown');

  const right = await bob.eval(([room, pw]) => window.chat.joinPassword(room, pw, { displayName: 'Bob' }), [created.roomId, password]);
  assert(right.ok && right.chatMode === 'password', `right password joins: ${JSON.stringify(right)}`);
  const bs = await bob.state();
  assert(bs.session.eventSessionId.startsWith(`${created.roomId}:password:`), `Bob's events use the full id: ${bs.session.eventSessionId}`);
  await alice.waitFor(() => window.chat.state().peers.some((p) => p.displayName === 'Bob'), null, 'Bob\'s key');
  await bob.waitFor(() => window.chat.state().peers.some((p) => p.displayName === 'Alice'), null, 'Alice\'s key');

  await bob.eval(() => window.chat.send('Bob in the password room'));
  await alice.seeText('Bob in the password room');
  await alice.eval(() => window.chat.send('Alice answers in the password room'));
  await bob.seeText('Alice answers in the password room');
  await bob.eval(() => window.chat.typing());
  await alice.waitFor(() => document.querySelector('#typing').textContent === 'Bob is typing…', null, '"Bob is typing…"');
  await screenshot('05-password-room', [alice, bob]);
  await bob.eval(() => window.chat.stoppedTyping());
  await alice.waitFor(() => document.querySelector('#typing').textContent === '', null, 'typing indicator cleared');
  const errs = (await bob.state()).eventErrors;
  assertEq(errs, [], 'no event-error for the full "ROOM:password:…" session id');
});

test('typing indicators: shown to the others, not to the typist, cleared on stopped-typing', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  const carol = await newUser('Carol');
  await setupRoom('group', [alice, bob, carol]);
  await bob.eval(() => window.chat.typing());
  await alice.waitFor(() => document.querySelector('#typing').textContent === 'Bob is typing…', null, 'Alice sees "Bob is typing…"');
  await carol.waitFor(() => document.querySelector('#typing').textContent === 'Bob is typing…', null, 'Carol sees "Bob is typing…"');
  await sleep(200);
  assertEq((await bob.state()).typing, [], 'Bob does not see himself typing');
  await carol.eval(() => window.chat.typing());
  await alice.waitFor(() => document.querySelector('#typing').textContent === 'Bob, Carol are typing…', null, 'Alice sees Bob and Carol typing');
  await bob.waitFor(() => document.querySelector('#typing').textContent === 'Carol is typing…', null, 'Bob sees "Carol is typing…"');
  await screenshot('06-typing', [alice, bob, carol]);
  assertEq((await carol.state()).typing, ['Bob'], 'Carol sees Bob typing, not herself');
  await bob.eval(() => window.chat.stoppedTyping());
  await carol.eval(() => window.chat.stoppedTyping());
  await alice.waitFor(() => document.querySelector('#typing').textContent === '', null, 'indicator cleared');
  await carol.waitFor(() => document.querySelector('#typing').textContent === '', null, 'indicator cleared');
});

async function fileConversation(slug, users, sizeBytes) {
  const [alice, bob] = users;
  const file = path.join(ARTIFACTS, `${slug}-payload.bin`);
  const bytes = randomBytes(sizeBytes);
  fs.writeFileSync(file, bytes);
  const expected = sha256(bytes);
  const saved = path.join(ARTIFACTS, `${slug}-downloaded.bin`);
  try {
    await sendAndDownload({ alice, bob, file, saved, sizeBytes, expected });
  } finally {
    fs.rmSync(file, { force: true });
    fs.rmSync(saved, { force: true });
  }
}

async function sendAndDownload({ alice, bob, file, saved, sizeBytes, expected }) {
  await alice.page.setInputFiles('#file', file);
  const sent = await alice.eval(() => window.chat.sendFileFromInput());
  assertEq([sent.size, sent.sha256], [sizeBytes, expected], 'the page read the file');
  assert(sent.dataUrlLength > 1_000_000, `data URL is over 1 MB (${sent.dataUrlLength} chars)`);
  await bob.waitFor((sha) => !!document.querySelector(`#messages a.file-link[data-sha256="${sha}"]`), expected, 'the decrypted file with the right SHA-256', 30_000);
  const [download] = await Promise.all([
    bob.page.waitForEvent('download'),
    bob.page.click(`#messages a.file-link[data-sha256="${expected}"]`),
  ]);
  await download.saveAs(saved);
  assertEq(download.suggestedFilename(), path.basename(file), 'download file name');
  assertEq(sha256(fs.readFileSync(saved)), expected, 'the downloaded file is byte-identical');
  const note = `📥 Bob downloaded your file: ${path.basename(file)}`;
  await alice.waitFor((t) => document.querySelector('#notifications').textContent.includes(t), note, `"${note}"`);
  assertEq((await bob.state()).notifications, [], 'only the sender gets the download notification');
}

test('file transfer: a 1.5 MB file as a data URL arrives decrypted and intact; the download notifies the sender', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  await setupRoom('group', [alice, bob]);
  await fileConversation('07-file', [alice, bob], 1_500_000);
  await screenshot('07-file-and-download-notification', [alice, bob]);
}, { timeout: 60_000 });

test('leave and reload: the others see the leave; a reload rejoins with the same userId and sees the history; the room outlives its last member', async () => {
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  const created = await setupRoom('group', [alice, bob]);
  await alice.eval(() => window.chat.send('message before the leave'));
  await bob.seeText('message before the leave');
  const bobId = (await bob.state()).userId;

  await bob.eval(() => window.chat.leave());
  await alice.waitFor(() => window.chat.state().activity.includes('Bob left'), null, '"Bob left"');
  await alice.waitFor(() => window.chat.state().peers.length === 0, null, 'Bob\'s key gone');

  // Alice reloads (a fresh page: no key, no messages in memory).
  const aliceId = (await alice.state()).userId;
  await alice.page.reload();
  await alice.ready();
  await alice.waitFor(() => window.chat.state().joined, null, 'Alice rejoined');
  assertEq((await alice.state()).userId, aliceId, 'Alice keeps her userId');
  await alice.seeText('message before the leave'); // own message from history, decrypted with the group key

  // The last member goes away; the room stays and the link still works.
  const pageUrl = alice.page.url();
  await alice.page.goto('about:blank');
  await sleep(700);
  await alice.page.goto(pageUrl);
  await alice.ready();
  await alice.waitFor(() => window.chat.state().joined, null, 'Alice rejoined an empty room');
  await alice.seeText('message before the leave');

  // Bob's reload after leaving does not rejoin by itself; he rejoins with the link.
  await bob.page.reload();
  await bob.ready();
  assertEq((await bob.state()).joined, false, 'Bob stays out after leaving and reloading');
  const r = await bob.eval((l) => window.chat.join(l, { displayName: 'Bob' }), created.link);
  assert(r.ok, `Bob rejoins with the link: ${JSON.stringify(r)}`);
  assertEq((await bob.state()).userId, bobId, 'Bob keeps his userId');
  await bob.seeText('message before the leave');
  await alice.eval(() => window.chat.send('welcome back Bob'));
  await bob.seeText('welcome back Bob');
  await screenshot('08-leave-and-reload', [alice, bob]);
});

test('polling only: a whole conversation over long-polling, including a 1.2 MB file', async () => {
  const alice = await newUser('Alice', { transports: ['polling'] });
  const bob = await newUser('Bob', { transports: ['polling'] });
  await setupRoom('group', [alice, bob]);
  await alice.eval(() => window.chat.sendMany('poll-', 20));
  await bob.seeText('poll-19');
  assertEq((await bob.texts()).filter((t) => t.startsWith('poll-')), Array.from({ length: 20 }, (_, i) => `poll-${i}`), 'order over polling');
  await bob.eval(() => window.chat.send('Bob over polling'));
  await alice.seeText('Bob over polling');
  await fileConversation('09-polling-file', [alice, bob], 1_200_000);
  for (const u of [alice, bob]) assertEq((await u.state()).transport, 'polling', `${u.name} stayed on polling`);
  await screenshot('09-polling-only', [alice, bob]);
}, { timeout: 60_000 });

test('upgrade: a client that starts on polling upgrades to WebSocket and chats', async () => {
  const alice = await newUser('Alice', { transports: ['polling', 'websocket'] });
  const bob = await newUser('Bob');
  await setupRoom('private', [alice, bob]);
  await alice.waitFor(() => window.chat.state().transport === 'websocket', null, 'upgrade to websocket');
  await alice.eval(() => window.chat.send('sent after the upgrade'));
  await bob.seeText('sent after the upgrade');
  await bob.eval(() => window.chat.send('answer to the upgraded client'));
  await alice.seeText('answer to the upgraded client');
  await screenshot('10-polling-upgrade', [alice, bob]);
});

test('WebSocket blocked by a proxy: clients fall back to polling and still chat', async () => {
  const stats = env.proxy.stats;
  const upgradesBefore = stats.upgradesRefused;
  // The socket.io-client default order (polling, then upgrade): the upgrade fails, polling stays.
  const alice = await newUser('Alice', { server: env.proxyUrl, transports: ['polling', 'websocket'] });
  // The stock order (websocket first) falls back only with tryAllTransports.
  const bob = await newUser('Bob', { server: env.proxyUrl, tryAllTransports: true });
  const carol = await newUser('Carol'); // direct, on WebSocket
  await setupRoom('group', [alice, bob, carol]);
  await alice.eval(() => window.chat.send('Alice behind the proxy'));
  await bob.seeText('Alice behind the proxy');
  await carol.seeText('Alice behind the proxy');
  await bob.eval(() => window.chat.send('Bob behind the proxy'));
  await alice.seeText('Bob behind the proxy');
  await carol.eval(() => window.chat.send('Carol direct'));
  await alice.seeText('Carol direct');
  await bob.seeText('Carol direct');
  for (const u of [alice, bob]) assertEq((await u.state()).transport, 'polling', `${u.name} is on polling`);
  assertEq((await carol.state()).transport, 'websocket', 'Carol is on WebSocket');
  assert(stats.upgradesRefused > upgradesBefore, `the proxy refused WebSocket upgrades (${stats.upgradesRefused - upgradesBefore})`);
  await screenshot('11-websocket-blocked-fallback', [alice, bob, carol]);

  // Not an assertion on the server: what the stock frontend's options do here.
  const stock = await newUser('Stock', { server: env.proxyUrl });
  const c = await stock.eval(() => window.chat.probeConnect({ timeoutMs: 4000 }));
  tapComment(`note: with the stock options (['websocket','polling'], no tryAllTransports) behind this proxy: ${JSON.stringify(c)}`);
}, { timeout: 60_000 });

test('join storm: twelve tabs join one group room at once; every one gets its history, metadata and keys', async () => {
  const alice = await newUser('Alice');
  const created = await alice.eval(() => window.chat.create({ mode: 'group', displayName: 'Alice' }));
  assert(created.ok, `Alice creates a room: ${JSON.stringify(created)}`);
  await alice.eval(() => window.chat.send('before the storm'));
  const tabs = await Promise.all(Array.from({ length: 12 }, (_, i) => newUser(`Tab${i + 1}`)));
  const joins = await Promise.all(tabs.map((t) => t.eval(([l, n]) => window.chat.join(l, { displayName: n, timeoutMs: 10000 }), [created.link, t.name])));
  const failed = joins.map((r, i) => (r.ok ? null : `${tabs[i].name}: ${JSON.stringify(r)}`)).filter(Boolean);
  assertEq(failed, [], 'every tab got session-metadata after join-session');
  await Promise.all(tabs.map((t) => t.seeText('before the storm')));
  const limited = (await alice.state()).eventErrors.filter((e) => e.error === 'RATE_LIMITED').map((e) => e.event);
  if (limited.length) tapComment(`note: the creator got RATE_LIMITED for ${limited.length} events during the storm (${[...new Set(limited)].join(', ')}); its set-session-key was retried`);
  await screenshot('12-join-storm', [alice, tabs[0], tabs[11]]);
}, { timeout: 60_000 });

test('foreign origin: a page from an origin not in CLIENT_URL cannot reserve (CORS) nor connect (403), and the server log says why', async () => {
  const eve = await newUser('Eve', { origin: env.foreignOrigin });
  const consoleBefore = eve.log.length;
  const r = await eve.eval(() => window.chat.reserve(`eve${Date.now()}`, 'k', 'group'));
  assert(!r.ok && r.status === 0 && /TypeError/.test(r.fetchError), `reserve from ${env.foreignOrigin} is blocked by CORS: ${JSON.stringify(r)}`);
  const health = await eve.eval(() => window.chat.corsProbe());
  assert(!health.ok && health.fetchError, `credentialed /health from the foreign origin is blocked: ${JSON.stringify(health)}`);

  // What the browser's network stack saw, CORS or not (DevTools protocol).
  const cdp = await eve.context.newCDPSession(eve.page);
  await cdp.send('Network.enable');
  // A response that CORS then blocks shows up as responseReceivedExtraInfo
  // (raw status and headers), not as responseReceived.
  // ExtraInfo events may arrive before the request they belong to, so
  // statuses are matched with their URLs only once everything has come in.
  const urls = new Map();
  const seen = [];
  cdp.on('Network.requestWillBeSent', (e) => urls.set(e.requestId, e.request.url));
  cdp.on('Network.webSocketCreated', (e) => urls.set(e.requestId, e.url));
  cdp.on('Network.responseReceivedExtraInfo', (e) => seen.push({ id: e.requestId, status: e.statusCode, fallback: '?' }));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => seen.push({ id: e.requestId, status: e.response.status, fallback: 'ws' }));
  const ws = await eve.eval(() => window.chat.probeConnect({ transports: ['websocket'], timeoutMs: 4000 }));
  const poll = await eve.eval(() => window.chat.probeConnect({ transports: ['polling'], timeoutMs: 4000 }));
  const stockJoin = await eve.eval(() => window.chat.join('nosuchroom:key', { displayName: 'Eve', timeoutMs: 5000 }));
  assert(!ws.connected, `no WebSocket connection from the foreign origin: ${JSON.stringify(ws)}`);
  assert(!poll.connected, `no polling connection from the foreign origin: ${JSON.stringify(poll)}`);
  assert(!stockJoin.ok, `join from the foreign origin fails: ${JSON.stringify(stockJoin)}`);
  assert((await eve.state()).connectErrors.length > 0, 'the page saw connect_error');
  const statuses = seen.map((x) => ({ url: urls.get(x.id) || x.fallback, status: x.status }));
  const pollStatuses = statuses.filter((x) => x.url.includes('transport=polling')).map((x) => x.status);
  assert(pollStatuses.length > 0 && pollStatuses.every((x) => x === 403), `Chromium got 403 for the polling handshake: ${JSON.stringify(statuses)}`);
  tapComment(`Chromium's network log for /socket.io/: ${JSON.stringify(statuses.map((x) => `${x.status} ${x.url.replace(/^.*\/socket\.io\//, '')}`))}`);

  const consoleLines = eve.log.slice(consoleBefore).join('\n');
  assert(/WebSocket connection to .*failed/.test(consoleLines) && /403/.test(consoleLines), `Chromium reports the refused WebSocket handshake with 403:\n${consoleLines}`);
  assert(/blocked by CORS policy/.test(consoleLines), `Chromium reports the CORS block:\n${consoleLines}`);

  // The handshake itself, without a browser: 403 for the foreign origin on both transports.
  const port = new URL(env.serverUrl).port;
  const hs = await rawRequest(`${env.serverUrl}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: env.foreignOrigin } });
  assertEq(hs.status, 403, 'polling handshake from the foreign origin');
  assert(!hs.headers['access-control-allow-origin'], 'no Access-Control-Allow-Origin for the foreign origin');
  assertEq(await rawUpgrade(port, '/socket.io/?EIO=4&transport=websocket', { Origin: env.foreignOrigin }), 403, 'WebSocket upgrade from the foreign origin');
  assertEq(await rawUpgrade(port, '/socket.io/?EIO=4&transport=websocket', { Origin: env.pageOrigin }), 101, 'WebSocket upgrade from the allowed origin');
  assertEq(await rawUpgrade(port, '/socket.io/?EIO=4&transport=websocket'), 101, 'WebSocket upgrade without Origin (native clients)');
  const pre = await rawRequest(`${env.serverUrl}/api/reserve-session`, {
    method: 'OPTIONS',
    headers: { Origin: env.foreignOrigin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
  });
  assert(pre.headers['access-control-allow-origin'] !== env.foreignOrigin && pre.headers['access-control-allow-origin'] !== '*', `the preflight does not allow the foreign origin (${pre.status}, ${JSON.stringify(pre.headers)})`);

  await sleep(200);
  const mentions = stripAnsi(env.server.log.text).split('\n').filter((l) => l.includes(env.foreignOrigin));
  assert(mentions.length > 0, `the server log names the refused origin ${env.foreignOrigin}; log tail:\n${stripAnsi(env.server.log.text).slice(-1500)}`);
  tapComment(`server log: ${mentions[0].trim().slice(0, 300)}`);
  await screenshot('13-foreign-origin-refused', [eve]);
});

// ---------------------------------------------------------------------------

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  console.log('TAP version 13');
  const selected = tests.filter((t) => t.name.includes(ONLY));
  const suiteStart = Date.now();
  let fatal = null;
  try {
    const pagePort = await freePort(Number(process.env.PAGE_PORT || 5173));
    const foreignPort = await freePort(0);
    const serverPort = await freePort(0);
    const proxyPort = await freePort(0);
    const pageOrigin = `http://localhost:${pagePort}`;
    const foreignOrigin = `http://localhost:${foreignPort}`;
    const statics = [await startStaticServer(pagePort), await startStaticServer(foreignPort)];
    const server = await startChatServer({ port: serverPort, clientUrl: pageOrigin });
    const proxy = await startWsBlockingProxy(proxyPort, serverPort);
    env = {
      serverUrl: `http://localhost:${serverPort}`,
      proxyUrl: `http://localhost:${proxyPort}`,
      pageOrigin,
      foreignOrigin,
      server,
      proxy,
      statics,
    };
    tapComment(`server ${SERVER_BIN} on ${env.serverUrl}, CLIENT_URL=${pageOrigin}; foreign page ${foreignOrigin}; WebSocket-blocking proxy ${env.proxyUrl}`);
    browser = await chromium.launch({ executablePath: CHROMIUM_BIN, headless: true, args: CHROMIUM_ARGS });
    tapComment(`chromium ${browser.version()}`);
  } catch (err) {
    fatal = err;
  }

  for (const t of selected) {
    results.n++;
    if (fatal) {
      results.failed++;
      console.log(`not ok ${results.n} - ${t.name}`);
      tapComment(`set-up failed: ${fatal.message}`);
      continue;
    }
    const t0 = Date.now();
    try {
      if (Date.now() - suiteStart > SUITE_DEADLINE_MS) throw new Error('skipped: the suite ran out of time');
      await withTimeout(t.fn(), t.timeout, 'test');
      results.passed++;
      console.log(`ok ${results.n} - ${t.name} (${Date.now() - t0} ms)`);
    } catch (err) {
      results.failed++;
      console.log(`not ok ${results.n} - ${t.name} (${Date.now() - t0} ms)`);
      tapComment(err && err.stack ? err.stack.split('\n').filter((l) => !l.includes('node_modules')).join('\n') : String(err));
      tapComment(await describeUsers());
      if (env.server.exited) tapComment(`the server exited: ${JSON.stringify(env.server.exited)}`);
      try {
        await screenshot(`FAILED-${String(results.n).padStart(2, '0')}`, currentUsers.slice(0, 4));
      } catch {
        // best effort
      }
    } finally {
      await closeAll();
    }
  }

  console.log(`1..${results.n}`);
  if (browser) await browser.close().catch(() => {});
  if (env) {
    await env.server.stop().catch(() => {});
    for (const s of env.statics) s.close();
    env.proxy.srv.close();
  }
  tapComment(`screenshots and server.log in ${path.relative(process.cwd(), ARTIFACTS) || '.'}/`);
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exit(results.failed > 0 || results.n === 0 ? 1 : 0);
}

main().catch((err) => {
  console.log(`Bail out! ${err && err.stack}`);
  console.log(`${results.passed} passed, ${results.failed + 1} failed`);
  process.exit(1);
});
