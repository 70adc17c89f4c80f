// HTTP API and transport-level checks (docs/PROTOCOL.md sections 1 and 2).

import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  reserve,
  reserveOk,
  newSessionId,
  newKey,
  assertEpochMs,
  assertKeys,
  Client,
  connect,
  newUser,
  joinPayload,
  ALLOWED_ORIGIN,
  ALLOWED_ORIGIN_2,
  DISALLOWED_ORIGIN,
} from './helpers.mjs';

function assertJson(res) {
  const ct = res.headers.get('content-type') || '';
  assert.match(ct, /^application\/json/i, `Content-Type should be application/json, got "${ct}"`);
}

async function get(server, path, headers = {}) {
  const res = await fetch(`${server.url}${path}`, { headers });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, headers: res.headers, body, text };
}

/** A raw WebSocket upgrade request; resolves with the HTTP status (101 on success). */
function wsUpgradeStatus(server, origin) {
  return new Promise((resolve, reject) => {
    const headers = {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
    };
    if (origin) headers.Origin = origin;
    const req = http.request({
      host: '127.0.0.1',
      port: server.port,
      path: '/socket.io/?EIO=4&transport=websocket',
      headers,
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
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}

describe('HTTP API (DEBUG=false)', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
  });

  test('GET /health answers the documented fields', async () => {
    const before = Date.now();
    const res = await get(server, '/health');
    assert.equal(res.status, 200);
    assertJson(res);
    const b = res.body;
    assert.equal(b.status, 'ok');
    assert.equal(typeof b.uptime, 'number', 'uptime is a number of seconds');
    assert.ok(b.uptime >= 0 && b.uptime < 3600, `uptime ${b.uptime} should be seconds since start`);
    assert.equal(typeof b.activeSessions, 'number');
    assert.equal(typeof b.sessions, 'number');
    assert.equal(b.activeSessions, b.sessions, 'activeSessions and sessions carry the same number');
    assertEpochMs(b.timestamp, 'health.timestamp');
    assert.ok(b.timestamp >= before - 5000 && b.timestamp <= Date.now() + 5000);
  });

  test('reserve-session succeeds and the session is counted by /health', async () => {
    const h0 = (await get(server, '/health')).body;
    const sessionId = newSessionId();
    const authKey = newKey();
    const res = await reserve(server, { sessionId, authKey, chatMode: 'private' });
    assert.equal(res.status, 200);
    assertJson(res);
    assert.deepStrictEqual(res.body, {
      success: true,
      sessionId,
      chatMode: 'private',
      message: 'Session reserved successfully',
    });
    const h1 = (await get(server, '/health')).body;
    assert.equal(h1.sessions, h0.sessions + 1);
    assert.equal(h1.activeSessions, h0.activeSessions + 1);
  });

  test('reserve-session without chatMode succeeds and reports a chatMode', async () => {
    const sessionId = newSessionId();
    const res = await reserve(server, { sessionId, authKey: newKey() });
    assert.equal(res.status, 200);
    assertKeys(res.body, ['success', 'sessionId', 'chatMode', 'message'], 'reserve answer');
    assert.equal(res.body.success, true);
    assert.equal(res.body.sessionId, sessionId);
    assert.ok(['group', 'private', 'password'].includes(res.body.chatMode), `chatMode ${res.body.chatMode}`);
    assert.equal(res.body.message, 'Session reserved successfully');
  });

  test('reserve-session with sessionId or authKey missing or empty → 400', async () => {
    const bodies = [
      {},
      { authKey: 'k' },
      { sessionId: newSessionId() },
      { sessionId: '', authKey: 'k' },
      { sessionId: newSessionId(), authKey: '' },
    ];
    for (const body of bodies) {
      const res = await reserve(server, body);
      assert.equal(res.status, 400, `body ${JSON.stringify(body)} → ${res.status} ${res.text}`);
      assertJson(res);
      assert.deepStrictEqual(res.body, { error: 'Missing sessionId or authKey' }, `body ${JSON.stringify(body)}`);
    }
  });

  test('reserve-session with a taken id → 409', async () => {
    const { sessionId } = await reserveOk(server);
    const res = await reserve(server, { sessionId, authKey: newKey() });
    assert.equal(res.status, 409);
    assertJson(res);
    assert.deepStrictEqual(res.body, { error: 'Session already exists' });
  });

  test('reserve-session refuses malformed input with 400 JSON', async () => {
    const cases = [
      { raw: '{"sessionId": "abc", "authKey": ' },
      { raw: 'not json at all' },
      { body: { sessionId: newSessionId(), authKey: 'k', chatMode: 'broadcast' } },
      { body: { sessionId: 'has space', authKey: 'k' } },
      { body: { sessionId: 'has:colon', authKey: 'k' } },
      { body: { sessionId: 'x'.repeat(65), authKey: 'k' } },
      { body: { sessionId: newSessionId(), authKey: 'k'.repeat(513) } },
    ];
    for (const c of cases) {
      const res = await reserve(server, c.body, { raw: c.raw });
      const what = c.raw ?? JSON.stringify(c.body).slice(0, 100);
      assert.equal(res.status, 400, `${what} → ${res.status} ${res.text.slice(0, 200)}`);
      assertJson(res);
      assert.equal(typeof res.body?.error, 'string', `${what} → ${res.text.slice(0, 200)}`);
    }
  });

  test('reserve-session accepts the limits exactly (64-char id, 512-char authKey)', async () => {
    const sessionId = ('Ab_-' + newSessionId() + 'x'.repeat(64)).slice(0, 64);
    const res = await reserve(server, { sessionId, authKey: 'k'.repeat(512) });
    assert.equal(res.status, 200, res.text);
  });

  test('reserve-session with a body over 16 KiB → 413', async () => {
    const raw = JSON.stringify({ sessionId: newSessionId(), authKey: 'k', pad: 'x'.repeat(17 * 1024) });
    const res = await reserve(server, undefined, { raw });
    assert.equal(res.status, 413, `${res.status} ${res.text.slice(0, 200)}`);
  });

  test('GET /sessions is 404 unless DEBUG=true', async () => {
    const res = await get(server, '/sessions');
    assert.equal(res.status, 404);
    assertJson(res);
  });

  test('unknown path → 404 {"error":"Not found"}', async () => {
    for (const p of ['/nope', '/api/nope', '/api/reserve-session/extra']) {
      const res = await get(server, p);
      assert.equal(res.status, 404, p);
      assertJson(res);
      assert.deepStrictEqual(res.body, { error: 'Not found' }, p);
    }
  });

  test('HTTP API answers an allowed Origin with CORS headers (both listed origins)', async () => {
    for (const origin of [ALLOWED_ORIGIN, ALLOWED_ORIGIN_2]) {
      const res = await get(server, '/health', { Origin: origin });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('access-control-allow-origin'), origin);
      assert.equal(res.headers.get('access-control-allow-credentials'), 'true');

      const r2 = await reserve(server, { sessionId: newSessionId(), authKey: 'k' }, { headers: { Origin: origin } });
      assert.equal(r2.status, 200);
      assert.equal(r2.headers.get('access-control-allow-origin'), origin);
      assert.equal(r2.headers.get('access-control-allow-credentials'), 'true');
    }
  });

  test('CORS preflight for reserve-session succeeds for an allowed Origin', async () => {
    const res = await fetch(`${server.url}/api/reserve-session`, {
      method: 'OPTIONS',
      headers: {
        Origin: ALLOWED_ORIGIN,
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'content-type',
      },
    });
    await res.arrayBuffer();
    assert.ok(res.status >= 200 && res.status < 300, `preflight status ${res.status}`);
    assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
    const methods = (res.headers.get('access-control-allow-methods') || '').toUpperCase();
    assert.ok(methods.includes('POST') || methods.includes('*'), `allow-methods "${methods}"`);
    const allowHeaders = (res.headers.get('access-control-allow-headers') || '').toLowerCase();
    assert.ok(allowHeaders.includes('content-type') || allowHeaders.includes('*'), `allow-headers "${allowHeaders}"`);
  });

  test('socket.io polling handshake: allowed Origin gets CORS headers, no Origin is served', async () => {
    const res = await get(server, '/socket.io/?EIO=4&transport=polling', { Origin: ALLOWED_ORIGIN });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
    assert.match(res.text, /^0\{/, 'Engine.IO open packet');
    const open = JSON.parse(res.text.slice(1));
    assert.equal(open.pingInterval, 25000);
    assert.equal(open.pingTimeout, 60000);
    assert.equal(open.maxPayload, 20971520);
    assert.ok(open.upgrades.includes('websocket'));

    const res2 = await get(server, '/socket.io/?EIO=4&transport=polling');
    assert.equal(res2.status, 200, res2.text);

    const pre = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      method: 'OPTIONS',
      headers: { Origin: ALLOWED_ORIGIN, 'Access-Control-Request-Method': 'POST' },
    });
    await pre.arrayBuffer();
    assert.ok(pre.status >= 200 && pre.status < 300, `socket.io preflight status ${pre.status}`);
    assert.equal(pre.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
  });

  test('socket.io polling handshake with a disallowed Origin → 403', async () => {
    const res = await get(server, '/socket.io/?EIO=4&transport=polling', { Origin: DISALLOWED_ORIGIN });
    assert.equal(res.status, 403, `${res.status} ${res.text.slice(0, 200)}`);
  });

  test('WebSocket upgrade: disallowed Origin → 403, allowed or no Origin → 101', async () => {
    assert.equal(await wsUpgradeStatus(server, DISALLOWED_ORIGIN), 403);
    assert.equal(await wsUpgradeStatus(server, ALLOWED_ORIGIN), 101);
    assert.equal(await wsUpgradeStatus(server, undefined), 101);
  });

  test('socket.io-client with a disallowed Origin cannot connect (both transports)', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const c = new Client(server, { transports, extraHeaders: { Origin: DISALLOWED_ORIGIN }, name: 'evil' });
      await c.connectFailure();
      c.close();
      const ok = await connect(server, { transports, extraHeaders: { Origin: ALLOWED_ORIGIN }, name: 'good' });
      ok.close();
    }
  });

  test('polling → WebSocket upgrade (the client default) works and the socket stays usable', async () => {
    const c = await connect(server, { transports: ['polling', 'websocket'], name: 'upgrader' });
    const engine = c.socket.io.engine;
    if (engine.transport.name !== 'websocket') {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no upgrade within 5 s')), 5000);
        engine.once('upgrade', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    assert.equal(engine.transport.name, 'websocket');
    const { sessionId, key } = await reserveOk(server);
    const j = await c.join(joinPayload(newUser('Up'), `${sessionId}:${key}`, { isCreator: true }));
    assert.deepStrictEqual(j.history, []);
  });

  test('Engine.IO v3 clients are refused with 400', async () => {
    const res = await get(server, '/socket.io/?EIO=3&transport=polling');
    assert.equal(res.status, 400, `${res.status} ${res.text.slice(0, 200)}`);
  });
});

describe('HTTP API (DEBUG=true)', () => {
  let server;
  before(async () => {
    server = await startServer({ DEBUG: 'true' });
  });
  after(async () => {
    await server?.stop();
  });

  test('GET /sessions lists sessions in creation order without secrets', async () => {
    const a = await reserveOk(server, { chatMode: 'group' });
    const b = await reserveOk(server, { chatMode: 'private' });
    // Activate a: creator joins with a key; one message.
    const user = newUser('Alice');
    const c = await connect(server, { name: 'Alice' });
    await c.join(joinPayload(user, `${a.sessionId}:${a.key}`, { isCreator: true }));
    c.emit('send-message', { sessionId: a.sessionId, from: user.userId, to: 'all', encrypted: 'CIPHERTEXT', originalContent: 'PLAINTEXT', type: 'text' });
    await c.next('message-sent');

    const res = await get(server, '/sessions');
    assert.equal(res.status, 200);
    assertJson(res);
    assert.ok(Array.isArray(res.body), res.text);
    for (const e of res.body) assertKeys(e, ['sessionId', 'members', 'messages', 'publicKeys'], '/sessions entry');
    const ids = res.body.map((e) => e.sessionId);
    const ia = ids.indexOf(a.sessionId);
    const ib = ids.indexOf(b.sessionId);
    assert.ok(ia >= 0 && ib >= 0 && ia < ib, `creation order: ${JSON.stringify(ids)}`);
    assert.deepStrictEqual(res.body[ia], { sessionId: a.sessionId, members: 1, messages: 1, publicKeys: 1 });
    assert.deepStrictEqual(res.body[ib], { sessionId: b.sessionId, members: 0, messages: 0, publicKeys: 0 });
    for (const secret of [a.key, b.key, user.publicKey, 'CIPHERTEXT', 'PLAINTEXT']) {
      assert.ok(!res.text.includes(secret), `/sessions leaks ${secret}`);
    }
  });
});
