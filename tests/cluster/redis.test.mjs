// Redis going away: at start-up the process refuses to run without it; while
// running, every node reports "degraded", events fail fast with
// STORE_UNAVAILABLE instead of hanging, and once Redis is back on the same
// address the nodes recover by themselves.

import assert from 'node:assert/strict';
import { describe } from 'node:test';
import {
  test,
  startCluster,
  startRedis,
  spawnServer,
  freePort,
  health,
  waitUntil,
  reserve,
  reserveOk,
  newUser,
  newSessionId,
  newKey,
  joinPayload,
  keyEntry,
  connect,
  setupRoom,
  assertEventError,
  assertSessionError,
  assertMessage,
  assertPublicKeys,
  assertUserJoined,
  expectUserLeftOnce,
  sleep,
  redisCommand,
  makeTlsFiles,
} from './helpers.mjs';

const STORE_TIMEOUT_MS = 1000;

/**
 * Joins from `client`, or, if the node has closed it (allowed after a Redis
 * outage: "a client may need to rejoin"), from a new socket to the same node,
 * as the stock client does on reconnect. Returns the socket that joined.
 */
async function rejoin(client, payload) {
  client.drainAll();
  let c = client;
  for (let attempt = 0; ; attempt++) {
    if (!c.socket.connected) c = await connect(client.node, { name: `${client.name.split('@')[0]}-reconnected` });
    try {
      await c.join(payload, 5000);
      return c;
    } catch (err) {
      if (c.socket.connected || attempt >= 2) throw err;
    }
  }
}

describe('redis', { concurrency: true }, () => {
  test('a join whose answer timed out but that Redis applied: the member leaves with its socket', { timeout: 60000 }, async () => {
    const cluster = await startCluster({ size: 1, env: { STORE_TIMEOUT_MS: String(STORE_TIMEOUT_MS) } });
    const [node] = cluster.nodes;
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const carol = newUser('Carol');
    const { link, clients } = await setupRoom(cluster, [alice]);
    const [a] = clients;
    const b = await connect(node, { name: 'Bob' });
    // A script that keeps Redis busy for 2.5 s: bob's join waits behind it,
    // the node gives up after STORE_TIMEOUT_MS, and Redis applies it after.
    const spin = "local s=redis.call('TIME') while true do local n=redis.call('TIME') "
      + "if (n[1]-s[1])*1000000+(n[2]-s[2])>2500000 then return 1 end end";
    const busy = redisCommand(cluster.redis.port, `EVAL "${spin}" 0`, 10000);
    await sleep(200);
    b.emit('join-session', joinPayload(bob, link));
    const outcome = await b.joinOutcome(STORE_TIMEOUT_MS + 5000);
    assert.equal(outcome.ok, false, 'the join must time out');
    assertSessionError(outcome.error, 'STORE_UNAVAILABLE');
    assert.equal(await busy, ':1');
    await waitUntil(async () => (await health(node)).status === 200, { timeout: 15000, what: '/health → 200' });
    // Bob goes away without joining again: the member Redis made for him
    // leaves too, announced once.
    a.drainAll();
    const since = Date.now();
    b.close();
    await expectUserLeftOnce(a, [bob], { since });
    const c = await connect(node, { name: 'Carol' });
    const { keys } = await c.join(joinPayload(carol, link));
    assertPublicKeys(keys, [keyEntry(alice), keyEntry(carol)]);
  });

  test('a message stored but not published to the other nodes still reaches the sender\'s node, and the others get it on rejoin', { timeout: 60000 }, async () => {
    const cluster = await startCluster({ size: 2 });
    const alice = newUser('Alice');
    const carol = newUser('Carol');
    const bob = newUser('Bob');
    // alice and bob on node 1, carol on node 2.
    const { link, clients } = await setupRoom(cluster, [alice, carol, bob]);
    const [a, c, b] = clients;
    // Redis refuses PUBLISH from now on: the send script succeeds and the
    // cross-node emit after it fails, as when Redis goes away in between.
    assert.equal(await redisCommand(cluster.redis.port, 'ACL SETUSER default -publish'), '+OK');
    try {
      a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: 'unpublished' });
      await a.next('message-sent');
      assertMessage(await b.next('new-message', 5000), {
        id: (v) => assert.equal(typeof v, 'string'),
        from: alice.userId,
        encrypted: 'unpublished',
        type: 'text',
        senderDisplayName: alice.displayName,
      }, 'bob, on the sender\'s node');
    } finally {
      assert.equal(await redisCommand(cluster.redis.port, 'ACL SETUSER default +publish'), '+OK');
    }
    // Carol's node never heard of it; it is stored, so her next join (the
    // stock client joins again on every reconnect) has it.
    c.drainAll();
    const { history } = await c.join(joinPayload(carol, link));
    assert.deepEqual(history.map((m) => m.encrypted), ['unpublished']);
    // Publishing works again.
    a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: 'published' });
    for (const who of [b, c]) {
      await who.until('new-message', (evs) => evs.some((m) => m.encrypted === 'published'), 5000, `${who.name}: "published"`);
    }
  });

  test('Redis frozen while a member disconnects: STORE_UNAVAILABLE meanwhile; once it answers, the departure is announced once', { timeout: 90000 }, async () => {
    const cluster = await startCluster({ env: { STORE_TIMEOUT_MS: String(STORE_TIMEOUT_MS) } });
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { link, clients } = await setupRoom(cluster, [alice, bob]);
    const [a, b] = clients; // nodes 1, 2
    a.drainAll();

    // A frozen Redis neither answers nor closes connections: every call
    // runs into STORE_TIMEOUT_MS.
    process.kill(cluster.redis.pid, 'SIGSTOP');
    try {
      const started = Date.now();
      a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: 'x', to: 'all' });
      const err = await a.next('event-error', STORE_TIMEOUT_MS + 5000);
      assertEventError(err, 'send-message', 'STORE_UNAVAILABLE');
      assert.ok(Date.now() - started < STORE_TIMEOUT_MS + 4000, 'refused without hanging');
      // Bob's socket closes while his departure cannot be recorded.
      b.close();
      await sleep(1000);
    } finally {
      process.kill(cluster.redis.pid, 'SIGCONT');
    }
    // Once the node is back, it removes the member whose socket is gone.
    const since = Date.now();
    await expectUserLeftOnce(a, [bob], { timeout: 25000, since });
    await a.until('public-keys-updated', (evs) => evs.some((k) => Array.isArray(k) && k.length === 1), 5000);
    assertPublicKeys(a.drain('public-keys-updated').at(-1), [keyEntry(alice)]);
    // And the session works again for those who stayed, once every node
    // has recovered (/health 200 again).
    for (const n of cluster.nodes) {
      await waitUntil(async () => (await health(n)).status === 200, { timeout: 15000, what: `${n.name} /health → 200` });
    }
    a.drainAll();
    a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: 'y', to: 'all' });
    await a.next('message-sent', 5000);
  });

  test('Redis lost mid-run: /health 503 degraded everywhere, STORE_UNAVAILABLE fast; back on the same port: recovered', { timeout: 90000 }, async () => {
    // NODE_TIMEOUT_SECS stays at its default (15): what production runs.
    const cluster = await startCluster({ env: { STORE_TIMEOUT_MS: String(STORE_TIMEOUT_MS) } });
    const [n1, n2, n3] = cluster.nodes;
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { link, clients } = await setupRoom(cluster, [alice, bob]);
    const [a, b] = clients; // nodes 1, 2
    for (const n of cluster.nodes) {
      const h = await health(n);
      assert.equal(h.status, 200);
      assert.equal(h.body?.status, 'ok');
    }

    await cluster.redis.kill();

    // Every node reports it within a few seconds.
    for (const n of cluster.nodes) {
      const { value: h } = await waitUntil(
        async () => {
          const r = await health(n);
          return r.status === 503 ? r : null;
        },
        { timeout: 10000, what: `${n.name} /health → 503` },
      );
      assert.equal(h.body?.status, 'degraded', `${n.name} /health body: ${h.text}`);
      assert.match(h.contentType ?? '', /application\/json/);
    }

    // An event fails with STORE_UNAVAILABLE within the store timeout (+ slack), no hang.
    let t = Date.now();
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'lost', type: 'text', clientMessageId: 'down-1' });
    assertEventError(await a.next('event-error', STORE_TIMEOUT_MS + 5000), 'send-message', 'STORE_UNAVAILABLE');
    const took = Date.now() - t;
    assert.ok(took <= STORE_TIMEOUT_MS + 1500, `event-error took ${took} ms (STORE_TIMEOUT_MS=${STORE_TIMEOUT_MS})`);
    await a.expectNo('message-sent', 0);
    await b.expectNo('new-message', 0);

    // A join on another node gets a session-error, also fast.
    const c = await connect(n3, { name: 'carol' });
    t = Date.now();
    c.emit('join-session', joinPayload(newUser('Carol'), link));
    assertSessionError(await c.next('session-error', STORE_TIMEOUT_MS + 5000), 'STORE_UNAVAILABLE');
    assert.ok(Date.now() - t <= STORE_TIMEOUT_MS + 1500, `session-error took ${Date.now() - t} ms`);
    for (const cl of [a, b, c]) assert.ok(cl.socket.connected, `${cl.name}: the socket stays connected while Redis is away`);

    // Redis comes back (empty: no persistence) on the same port.
    const redis2 = await startRedis({ port: cluster.redis.port });
    for (const n of cluster.nodes) {
      await waitUntil(
        async () => {
          const r = await health(n);
          return r.status === 200 && r.body?.status === 'ok';
        },
        { timeout: 20000, what: `${n.name} /health → 200 "ok" after Redis came back` },
      );
    }
    assert.equal(redis2.port, cluster.redis.port);
    const recoveredAt = Date.now();

    // Once /health says ok, the node is back for good: a fresh flow across
    // two nodes works at once (cross-node emits included) and its clients
    // are not cut off later. Reserve on node 2, creator on node 2, joiner on node 3.
    const dora = newUser('Dora');
    const erin = newUser('Erin');
    const { link: link2 } = await reserveOk(n2, { chatMode: 'private' });
    const d = await connect(n2, { name: 'dora' });
    await d.join(joinPayload(dora, link2, { isCreator: true }));
    const e = await connect(n3, { name: 'erin' });
    const je = await e.join(joinPayload(erin, link2));
    assertPublicKeys(je.keys, [keyEntry(dora), keyEntry(erin)]);
    assertUserJoined(await d.next('user-joined'), erin);
    d.emit('send-message', { sessionId: link2, from: dora.userId, to: erin.userId, encrypted: 'back', type: 'text', clientMessageId: 'up-1' });
    const want = { id: 'up-1', from: dora.userId, to: erin.userId, encrypted: 'back', type: 'text', senderDisplayName: 'Dora' };
    assertMessage(await d.next('message-sent'), want);
    assertMessage(await e.next('new-message'), want);
    e.emit('send-message', { sessionId: link2, from: erin.userId, to: 'all', encrypted: 'and forth', type: 'text', clientMessageId: 'up-2' });
    assert.equal((await d.next('new-message')).id, 'up-2');

    // The old clients join again (their session went with Redis's memory)
    // and work again; a node may have cut them off once to make them rejoin.
    const res = await reserve(n1, { sessionId: newSessionId(), authKey: newKey() });
    assert.equal(res.status, 200, `reserve on node 1 after recovery: ${res.status} ${res.text}`);
    const s3 = `${newSessionId()}:${newKey()}`;
    const a2 = await rejoin(a, joinPayload(alice, s3, { isCreator: true }));
    const b2 = await rejoin(b, joinPayload(bob, s3));
    a2.emit('send-message', { sessionId: s3, from: alice.userId, to: 'all', encrypted: 'again', type: 'text', clientMessageId: 'up-3' });
    assert.equal((await b2.next('new-message')).id, 'up-3');

    // Past the nodes' next heartbeat (every NODE_TIMEOUT_SECS / 3 = 5 s):
    // whoever joined after /health said ok is still there and still served.
    await sleep(Math.max(0, recoveredAt + 6500 - Date.now()));
    for (const cl of [d, e, a2, b2]) {
      assert.ok(cl.socket.connected, `${cl.name}: joined after /health said ok, then cut off: ${JSON.stringify(cl.log.map((x) => x.event))}`);
    }
    e.emit('send-message', { sessionId: link2, from: erin.userId, to: dora.userId, encrypted: 'later', type: 'text', clientMessageId: 'up-4' });
    assert.equal((await d.next('new-message')).id, 'up-4');
  });

  test('start-up with an unreachable REDIS_URL: exits non-zero within a few seconds, naming REDIS_URL', async () => {
    const deadPort = await freePort(); // nobody listens there
    const started = Date.now();
    const child = spawnServer('unreachable', { REDIS_URL: `redis://127.0.0.1:${deadPort}`, REDIS_PREFIX: 'ctdead' }, await freePort());
    const exit = await child.waitExit(15000);
    assert.ok(exit, `still running ${Date.now() - started} ms after start with REDIS_URL pointing nowhere:\n${child.output()}`);
    assert.ok(Date.now() - started < 10000, `took ${Date.now() - started} ms to give up`);
    assert.notEqual(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.equal(exit.signal, null, `exit ${JSON.stringify(exit)}`);
    assert.match(child.stderr(), /REDIS_URL/, `stderr should name REDIS_URL:\n${child.stderr()}`);
  });

  test('Redis over TLS (rediss:// and REDIS_TLS_CA_FILE): two nodes share sessions and emits', { timeout: 60000 }, async () => {
    const cluster = await startCluster({ size: 2, tls: true });
    assert.match(cluster.redis.url, /^rediss:\/\//);
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { link, clients } = await setupRoom(cluster, [alice, bob]);
    const [a, b] = clients; // nodes 1, 2
    a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: 'over-tls', clientMessageId: 'tls-1' });
    const m = { id: 'tls-1', from: alice.userId, encrypted: 'over-tls', type: 'text', senderDisplayName: 'Alice' };
    assertMessage(await a.next('message-sent'), m);
    assertMessage(await b.next('new-message'), m);
  });

  test('start-up against a TLS Redis whose certificate is not trusted: exits non-zero, naming REDIS_URL', async () => {
    const redis = await startRedis({ tls: makeTlsFiles() });
    try {
      // The system's roots do not know the test CA.
      const child = spawnServer('untrusted', { REDIS_URL: redis.url, REDIS_PREFIX: 'cttls' }, await freePort());
      const exit = await child.waitExit(15000);
      assert.ok(exit, `still running against an untrusted certificate:\n${child.output()}`);
      assert.notEqual(exit.code, 0, `exit ${JSON.stringify(exit)}`);
      assert.match(child.stderr(), /REDIS_URL/, `stderr should name REDIS_URL:\n${child.stderr()}`);
      // A CA file with a redis:// URL is a mistake, said at start.
      const plain = spawnServer('ca-without-tls', {
        REDIS_URL: redis.url.replace('rediss://', 'redis://'),
        REDIS_TLS_CA_FILE: redis.tls.ca,
        REDIS_PREFIX: 'cttls',
      }, await freePort());
      const plainExit = await plain.waitExit(15000);
      assert.ok(plainExit && plainExit.code !== 0, `exit ${JSON.stringify(plainExit)}`);
      assert.match(plain.stderr(), /REDIS_TLS_CA_FILE/, `stderr should name REDIS_TLS_CA_FILE:\n${plain.stderr()}`);
    } finally {
      await redis.kill();
    }
  });

  test('start-up with a REDIS_URL that is no Redis URL: exits non-zero, naming REDIS_URL', async () => {
    const child = spawnServer('bad-url', { REDIS_URL: 'http://127.0.0.1:1/', REDIS_PREFIX: 'ctbad' }, await freePort());
    const exit = await child.waitExit(15000);
    assert.ok(exit, `still running with REDIS_URL=http://…:\n${child.output()}`);
    assert.notEqual(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    assert.match(child.stderr(), /REDIS_URL/, `stderr should name REDIS_URL:\n${child.stderr()}`);
  });
});
