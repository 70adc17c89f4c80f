// Session lifetime across nodes (docs/PROTOCOL.md section 4 "Cleanup") with short
// timeouts. Every node sweeps, but a session is evicted once: each member
// socket, whichever node it is on, gets SESSION_EXPIRED exactly once.

import assert from 'node:assert/strict';
import { describe } from 'node:test';
import {
  test,
  startCluster,
  reserve,
  reserveOk,
  newUser,
  newKey,
  joinPayload,
  connect,
  setupRoom,
  assertSessionError,
  assertEventError,
  waitUntil,
  sleep,
} from './helpers.mjs';

const IDLE_S = 2;
const MEMBER_S = 4;
const SWEEP_S = 1;
const ENV = {
  SESSION_IDLE_TIMEOUT_SECS: String(IDLE_S),
  SESSION_MEMBER_TIMEOUT_SECS: String(MEMBER_S),
  CLEANUP_INTERVAL_SECS: String(SWEEP_S),
};

/** Joins with a wrong key on `node` (no activity) until SESSION_NOT_FOUND. */
async function waitUntilGone(node, sessionId, maxSeconds) {
  return waitUntil(
    async () => {
      const c = await connect(node, { name: 'probe' });
      c.emit('join-session', joinPayload(newUser('Probe'), `${sessionId}:not-the-key`));
      const err = await c.next('session-error');
      c.close();
      if (err.error === 'SESSION_NOT_FOUND') return true;
      assert.equal(err.error, 'INVALID_KEY', JSON.stringify(err));
      return false;
    },
    { timeout: maxSeconds * 1000, interval: 250, what: `session ${sessionId} to be gone (seen from ${node.name})` },
  );
}

describe('eviction across nodes', { concurrency: true }, () => {
  test('a session with members on three nodes expires: SESSION_EXPIRED exactly once per member', { timeout: 60000 }, async () => {
    const cluster = await startCluster({ env: ENV });
    const users = [newUser('Alice'), newUser('Bob'), newUser('Carol')];
    const { sessionId, link, clients } = await setupRoom(cluster, users);
    assert.deepStrictEqual(clients.map((c) => c.node.name), ['node1', 'node2', 'node3']);

    // Activity from node 3 keeps it alive past the member timeout.
    const activeUntil = Date.now() + (MEMBER_S + 1) * 1000;
    let n = 0;
    while (Date.now() < activeUntil) {
      clients[2].emit('send-message', { sessionId: link, from: users[2].userId, to: 'all', encrypted: `ping-${n}`, type: 'text', clientMessageId: `alive-${n}` });
      await clients[0].next('new-message');
      await clients[1].next('new-message');
      n++;
      await sleep(1000);
    }
    for (const c of clients) await c.expectNo('session-error', 0);

    // Then silence: each member is told once, whichever node it is on.
    const quietSince = Date.now();
    const errors = await Promise.all(clients.map((c) => c.next('session-error', (MEMBER_S + SWEEP_S + 8) * 1000)));
    for (const e of errors) assertSessionError(e, 'SESSION_EXPIRED', 'This session expired after a long time without activity.');
    assert.ok(Date.now() - quietSince >= (MEMBER_S - 2) * 1000, `expired too early (${Date.now() - quietSince} ms after the last activity)`);
    // Several more sweeps on three nodes: no second SESSION_EXPIRED.
    await Promise.all(clients.map((c) => c.expectNo('session-error', (SWEEP_S * 3 + 0.5) * 1000)));

    // The session is gone for every node, the id is free, the members are unbound.
    await waitUntilGone(cluster.nodes[1], sessionId, 3);
    for (const c of clients) {
      c.emit('send-message', { sessionId: link, from: users[clients.indexOf(c)].userId, to: 'all', encrypted: 'late', type: 'text', clientMessageId: `late-${c.node.name}` });
      assertEventError(await c.next('event-error'), 'send-message', 'NOT_IN_SESSION');
    }
    const res = await reserve(cluster.nodes[2], { sessionId, authKey: newKey() });
    assert.equal(res.status, 200, `the id is free again: ${res.status} ${res.text}`);
    for (const c of clients) await c.expectNo('new-message', 0);
  });

  test('an empty session is evicted after the idle timeout, whichever node it was made on', { timeout: 60000 }, async () => {
    const cluster = await startCluster({ env: ENV });
    const [n1, n2, n3] = cluster.nodes;

    // A reservation nobody joins (node 1), seen as taken from node 2 until evicted.
    const { sessionId: reserved } = await reserveOk(n1);
    const t0 = Date.now();
    assert.equal((await reserve(n2, { sessionId: reserved, authKey: newKey() })).status, 409);

    // A session whose only member left (node 3), still there for a reload from node 2.
    const alice = newUser('Alice');
    const { sessionId, key } = await reserveOk(n3);
    const link = `${sessionId}:${key}`;
    const a = await connect(n3, { name: 'alice' });
    await a.join(joinPayload(alice, link, { isCreator: true }));
    a.close();
    await sleep(300);
    const a2 = await connect(n2, { name: 'alice-reload' });
    await a2.join(joinPayload(alice, link));
    a2.close();

    await waitUntil(async () => (await reserve(n2, { sessionId: reserved, authKey: newKey() })).status === 200, {
      timeout: (IDLE_S + SWEEP_S + 6) * 1000,
      interval: 250,
      what: 'the idle reservation to be evicted',
    });
    assert.ok(Date.now() - t0 >= (IDLE_S - 1) * 1000, `reservation evicted too early (${Date.now() - t0} ms)`);
    await waitUntilGone(n1, sessionId, IDLE_S + SWEEP_S + 6);
  });
});
