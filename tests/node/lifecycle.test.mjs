// Session lifetime (docs/PROTOCOL.md section 4 "Cleanup"), with short timeouts:
// SESSION_IDLE_TIMEOUT_SECS=2, SESSION_MEMBER_TIMEOUT_SECS=5,
// CLEANUP_INTERVAL_SECS=1.

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  reserve,
  reserveOk,
  newKey,
  newUser,
  joinPayload,
  connect,
  assertMessage,
  sleep,
} from './helpers.mjs';

const IDLE_S = 2;
const MEMBER_S = 5;
const SWEEP_S = 1;

let server;
before(async () => {
  server = await startServer({
    SESSION_IDLE_TIMEOUT_SECS: String(IDLE_S),
    SESSION_MEMBER_TIMEOUT_SECS: String(MEMBER_S),
    CLEANUP_INTERVAL_SECS: String(SWEEP_S),
  });
});
after(async () => {
  await server?.stop();
});

/**
 * Polls with a wrong key (a refused join is no activity) until a joiner gets
 * SESSION_NOT_FOUND instead of INVALID_KEY; returns the seconds it took.
 */
async function waitUntilGone(sessionId, maxSeconds) {
  const started = Date.now();
  for (;;) {
    const c = await connect(server, { name: 'probe' });
    c.emit('join-session', joinPayload(newUser('Probe'), `${sessionId}:not-the-key`));
    const err = await c.next('session-error');
    c.close();
    if (err.error === 'SESSION_NOT_FOUND') return (Date.now() - started) / 1000;
    assert.equal(err.error, 'INVALID_KEY', JSON.stringify(err));
    assert.ok(Date.now() - started < maxSeconds * 1000, `session still there after ${maxSeconds} s (last: ${JSON.stringify(err)})`);
    await sleep(250);
  }
}

describe('session lifetime', { concurrency: true }, () => {
  test('a session survives its last member leaving (reload), then is evicted once idle', async () => {
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { sessionId, key } = await reserveOk(server);
    const link = `${sessionId}:${key}`;
    const a = await connect(server, { name: 'alice' });
    await a.join(joinPayload(alice, link, { isCreator: true }));
    const b = await connect(server, { name: 'bob' });
    await b.join(joinPayload(bob, link));
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'kept', clientMessageId: 'life-1' });
    const sent = await a.next('message-sent');
    await b.next('new-message');
    a.close();
    b.close();
    await sleep(200);

    // A reload right after: the same link still works, history intact.
    const b2 = await connect(server, { name: 'bob-reload' });
    const jb = await b2.join(joinPayload(bob, link));
    assert.equal(jb.history.length, 1);
    assertMessage(jb.history[0], { id: 'life-1', from: alice.userId, to: 'all', encrypted: 'kept', type: 'text', senderDisplayName: 'Alice' });
    assert.deepStrictEqual(jb.history[0], sent);
    b2.close();

    // Nobody connected: gone after the idle timeout (plus a sweep).
    await sleep(200);
    const took = await waitUntilGone(sessionId, IDLE_S + SWEEP_S + 4);
    assert.ok(took >= IDLE_S - 1, `evicted too early (${took} s after the last member left)`);
    assert.equal((await reserve(server, { sessionId, authKey: newKey() })).status, 200, 'the id is free again');
  });

  test('a reservation nobody joins is evicted after the idle timeout', async () => {
    const { sessionId } = await reserveOk(server);
    assert.equal((await reserve(server, { sessionId, authKey: newKey() })).status, 409);
    const started = Date.now();
    for (;;) {
      await sleep(250);
      const res = await reserve(server, { sessionId, authKey: newKey() });
      if (res.status === 200) break;
      assert.equal(res.status, 409);
      assert.ok(Date.now() - started < (IDLE_S + SWEEP_S + 4) * 1000, 'reservation never evicted');
    }
    assert.ok(Date.now() - started >= (IDLE_S - 1) * 1000, 'evicted too early');
  });

  test('connected but inactive members get SESSION_EXPIRED after the member timeout; activity postpones it', async () => {
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { sessionId, key } = await reserveOk(server);
    const link = `${sessionId}:${key}`;
    const a = await connect(server, { name: 'alice' });
    await a.join(joinPayload(alice, link, { isCreator: true }));
    const b = await connect(server, { name: 'bob' });
    await b.join(joinPayload(bob, link));

    // Activity for longer than the member timeout keeps it alive.
    const activeUntil = Date.now() + (MEMBER_S + 2) * 1000;
    let n = 0;
    while (Date.now() < activeUntil) {
      a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: `ping-${n}`, clientMessageId: `alive-${n}` });
      await b.next('new-message');
      n++;
      await sleep(1000);
    }
    await a.expectNo('session-error', 0);
    await b.expectNo('session-error', 0);

    // Then silence: both are told, and the session is gone.
    const quietSince = Date.now();
    const ea = await a.next('session-error', (MEMBER_S + SWEEP_S + 4) * 1000);
    assert.equal(ea.error, 'SESSION_EXPIRED', JSON.stringify(ea));
    const eb = await b.next('session-error');
    assert.equal(eb.error, 'SESSION_EXPIRED', JSON.stringify(eb));
    assert.ok(Date.now() - quietSince >= (MEMBER_S - 2) * 1000, 'expired too early');
    await waitUntilGone(sessionId, 3);
    // The expired members are no longer bound.
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'late', clientMessageId: 'late-1' });
    const err = await a.next('event-error');
    assert.equal(err.event, 'send-message');
  });
});
