// join-session as the stock frontend does it (docs/PROTOCOL.md sections 3–5):
// creator and joiner, the pre-join get-public-keys, the double join, the
// reconnect with publicKey null, and the join refusals.

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  reserve,
  reserveOk,
  newSessionId,
  newKey,
  newUser,
  joinPayload,
  keyEntry,
  connect,
  Client,
  assertKeys,
  assertEpochMs,
  assertPublicKeys,
  assertMessage,
  TRANSPORTS,
  transportName,
  QUIET_MS,
  sleep,
} from './helpers.mjs';

let server;
before(async () => {
  // A quick heartbeat: the reconnect cases wait for a silent old socket to
  // miss a ping interval (docs/PROTOCOL.md, "One member, one socket").
  server = await startServer({ PING_INTERVAL_MS: '500' });
});
after(async () => {
  await server?.stop();
});

function assertUserJoined(ev, user) {
  assertKeys(ev, ['userId', 'displayName', 'timestamp'], 'user-joined');
  assert.equal(ev.userId, user.userId);
  assert.equal(ev.displayName, user.displayName);
  assert.ok(ev.timestamp !== null && ev.timestamp !== undefined, 'user-joined.timestamp');
}

function assertSessionError(ev, error, message) {
  assertKeys(ev, ['error', 'message'], 'session-error');
  assert.deepStrictEqual(ev, { error, message });
}

describe('join', { concurrency: true }, () => {
  for (const transports of TRANSPORTS) {
    describe(`join (${transportName(transports)})`, { concurrency: 1 }, () => {
      test('get-public-keys before join-session → public-keys-updated [], nothing created', async () => {
        const sessionId = newSessionId();
        const user = newUser('Early');
        const c = await connect(server, { transports, name: 'early' });
        c.emit('get-public-keys', { sessionId: `${sessionId}:${newKey()}`, userId: user.userId });
        assert.deepStrictEqual(await c.next('public-keys-updated'), []);
        await c.expectSilence(); // in particular no event-error
        // The session still does not exist for a joiner.
        const j = await connect(server, { transports, name: 'joiner' });
        j.emit('join-session', joinPayload(newUser('J'), `${sessionId}:whatever`));
        assertSessionError(
          await j.next('session-error'),
          'SESSION_NOT_FOUND',
          'Session not found. Please check the session link.',
        );
        // ... and the id is still free.
        assert.equal((await reserve(server, { sessionId, authKey: newKey() })).status, 200, 'get-public-keys must not create a session');
      });

      test('get-public-keys from an unbound socket reveals nothing about an existing session', async () => {
        const alice = newUser('Alice');
        const { sessionId, key } = await reserveOk(server);
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, `${sessionId}:${key}`, { isCreator: true }));
        const c = await connect(server, { transports, name: 'stranger' });
        c.emit('get-public-keys', { sessionId: `${sessionId}:${key}`, userId: newUser('x').userId });
        assert.deepStrictEqual(await c.next('public-keys-updated'), []);
        await c.expectSilence();
        await a.expectSilence();
      });

      test('creator reserves and joins, joiner joins: the full exchange', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { sessionId, key } = await reserveOk(server, { chatMode: 'group' });
        const link = `${sessionId}:${key}`;

        const a = await connect(server, { transports, name: 'alice' });
        // The stock client asks for keys once before joining.
        a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
        assert.deepStrictEqual(await a.next('public-keys-updated'), []);
        const ja = await a.join(joinPayload(alice, link, { isCreator: true }));
        assert.deepStrictEqual(ja.history, []);
        assert.deepStrictEqual(ja.metadata, { chatMode: 'group' });
        assertPublicKeys(ja.keys, [keyEntry(alice)]);

        const b = await connect(server, { transports, name: 'bob' });
        b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
        assert.deepStrictEqual(await b.next('public-keys-updated'), []);
        const jb = await b.join(joinPayload(bob, link));
        assert.deepStrictEqual(jb.history, []);
        assert.deepStrictEqual(jb.metadata, { chatMode: 'group' }, 'no encryptedSessionKey before a key is set');
        assertPublicKeys(jb.keys, [keyEntry(alice), keyEntry(bob)]);

        assertUserJoined(await a.next('user-joined'), bob);
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);
        await b.expectNo('user-joined');
        await a.expectNo('user-joined');

        // get-public-keys once bound: every key except the requester's.
        b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
        assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);
        a.emit('get-public-keys', { sessionId, userId: alice.userId });
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(bob)]);

        // A message, then a late joiner gets it in history.
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E1', type: 'text', clientMessageId: 'cm-1' });
        const sent = await a.next('message-sent');
        assertMessage(sent, { id: 'cm-1', from: alice.userId, to: 'all', encrypted: 'E1', type: 'text', senderDisplayName: 'Alice' });
        assertMessage(await b.next('new-message'), { id: 'cm-1', from: alice.userId, to: 'all', encrypted: 'E1', type: 'text', senderDisplayName: 'Alice' });

        const carol = newUser('Carol');
        const c = await connect(server, { transports, name: 'carol' });
        const jc = await c.join(joinPayload(carol, link));
        assert.equal(jc.history.length, 1);
        assert.deepStrictEqual(jc.history[0], sent);
        assertPublicKeys(jc.keys, [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
        for (const other of [a, b]) {
          assertUserJoined(await other.next('user-joined'), carol);
          assertPublicKeys(await other.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
        }
        await c.expectNo('user-joined');
      });

      test('a creator may join an unreserved id: the session is created with the offered key', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const sessionId = newSessionId();
        const key = newKey();
        const a = await connect(server, { transports, name: 'alice' });
        const ja = await a.join(joinPayload(alice, `${sessionId}:${key}`, { isCreator: true }));
        assert.deepStrictEqual(ja.history, []);
        assert.ok(!('encryptedSessionKey' in ja.metadata));
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('join-session', joinPayload(bob, `${sessionId}:wrong${key}`));
        assertSessionError(
          await b.next('session-error'),
          'INVALID_KEY',
          'Invalid authentication key. Please check your link and try again.',
        );
        await b.join(joinPayload(bob, `${sessionId}:${key}`));
        assertUserJoined(await a.next('user-joined'), bob);
      });

      test('explicit authKey wins over the sessionId suffix', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { sessionId, key } = await reserveOk(server);
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, sessionId, { isCreator: true, authKey: key }));
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('join-session', joinPayload(bob, `${sessionId}:${key}`, { authKey: 'wrong' }));
        assertSessionError(
          await b.next('session-error'),
          'INVALID_KEY',
          'Invalid authentication key. Please check your link and try again.',
        );
        await b.join(joinPayload(bob, `${sessionId}:wrong`, { authKey: key }));
      });

      test('the stock double join on one socket: one user-joined, replies re-sent', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { sessionId, key } = await reserveOk(server);
        const link = `${sessionId}:${key}`;
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, link, { isCreator: true }));
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E1', clientMessageId: 'dj-1' });
        const sent = await a.next('message-sent');

        // Exactly as the stock client: emit right after io(), and again on connect.
        const b = new Client(server, { transports, name: 'bob' });
        const payload = joinPayload(bob, link);
        b.emit('join-session', payload);
        b.socket.on('connect', () => b.emit('join-session', payload));
        await b.connected();
        const hist = await b.collect('messages-history', 2);
        const meta = await b.collect('session-metadata', 2);
        const keys = await b.collect('public-keys-updated', 2);
        for (const h of hist) assert.deepStrictEqual(h, [sent]);
        for (const m of meta) assert.deepStrictEqual(m, { chatMode: 'group' });
        for (const k of keys) assertPublicKeys(k, [keyEntry(alice), keyEntry(bob)]);

        assertUserJoined(await a.next('user-joined'), bob);
        await sleep(QUIET_MS);
        await a.expectNo('user-joined');
        const aKeys = a.drain('public-keys-updated');
        assert.ok(aKeys.length >= 1, 'alice gets public-keys-updated');
        for (const k of aKeys) assertPublicKeys(k, [keyEntry(alice), keyEntry(bob)]);
        await b.expectNo('messages-history');
        await b.expectNo('user-joined');

        // Still one member: a message reaches bob once.
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E2', clientMessageId: 'dj-2' });
        assert.equal((await b.next('new-message')).id, 'dj-2');
        await b.expectNo('new-message');
      });

      test('the double join also works for the creator (no self user-joined, session stays)', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { sessionId, key } = await reserveOk(server);
        const link = `${sessionId}:${key}`;
        const a = new Client(server, { transports, name: 'alice' });
        const payload = joinPayload(alice, link, { isCreator: true });
        a.emit('join-session', payload);
        a.socket.on('connect', () => a.emit('join-session', payload));
        await a.connected();
        await a.collect('messages-history', 2);
        await a.collect('session-metadata', 2);
        const ks = await a.collect('public-keys-updated', 2);
        for (const k of ks) assertPublicKeys(k, [keyEntry(alice)]);
        await a.expectNo('session-error');
        await a.expectNo('user-joined');
        const b = await connect(server, { transports, name: 'bob' });
        await b.join(joinPayload(bob, link));
        assertUserJoined(await a.next('user-joined'), bob);
      });

      test('reconnect with publicKey null keeps the key, no user-joined, old socket leaves silently', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { sessionId, key } = await reserveOk(server);
        const link = `${sessionId}:${key}`;
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, link, { isCreator: true }));
        const b1 = await connect(server, { transports, name: 'bob-old' });
        await b1.join(joinPayload(bob, link));
        await a.next('user-joined');
        const firstKeys = await a.next('public-keys-updated');
        const bobJoinedAt = firstKeys.find((e) => e.userId === bob.userId).joinedAt;

        a.emit('send-message', { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'to-bob', clientMessageId: 'rc-1' });
        const sent = await a.next('message-sent');
        await b1.next('new-message');

        // Bob's connection dies unnoticed; he reconnects from a new socket.
        b1.goSilent();
        const b2 = await connect(server, { transports, name: 'bob-new' });
        const jb = await b2.join(joinPayload(bob, link, { publicKey: null }));
        assert.deepStrictEqual(jb.history, [sent], 'history includes messages addressed to bob');
        assertPublicKeys(jb.keys, [keyEntry(alice), keyEntry(bob)]);
        const bEntry = jb.keys.find((e) => e.userId === bob.userId);
        assert.deepStrictEqual(bEntry.joinedAt, bobJoinedAt, 'joinedAt is kept on rejoin');
        await a.expectNo('user-joined');
        a.drain('public-keys-updated');

        // Direct messages now go to the new socket only.
        a.emit('send-message', { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'to-bob-2', clientMessageId: 'rc-2' });
        assert.equal((await b2.next('new-message')).id, 'rc-2');
        await b1.expectNo('new-message');

        // The old socket goes away: nothing is announced, the key stays.
        b1.close();
        await sleep(QUIET_MS);
        await a.expectNo('user-left');
        await a.expectNo('public-keys-updated');
        await b2.expectNo('user-left');
        a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(bob)]);

        // Bob is still a member on the new socket.
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E3', clientMessageId: 'rc-3' });
        assert.equal((await b2.next('new-message')).id, 'rc-3');
        b2.emit('send-message', { sessionId: link, from: bob.userId, to: 'all', encrypted: 'E4', clientMessageId: 'rc-4' });
        assert.equal((await a.next('new-message')).id, 'rc-4');
      });

      test('SESSION_NOT_FOUND for a joiner of an unknown id', async () => {
        const c = await connect(server, { transports, name: 'joiner' });
        c.emit('join-session', joinPayload(newUser('J'), `${newSessionId()}:${newKey()}`));
        assertSessionError(await c.next('session-error'), 'SESSION_NOT_FOUND', 'Session not found. Please check the session link.');
        await c.expectNo('messages-history');
        await c.expectNo('public-keys-updated');
      });

      test('INVALID_KEY: creator with a different key, joiner with a wrong key', async () => {
        const alice = newUser('Alice');
        const { sessionId, key } = await reserveOk(server);
        const c0 = await connect(server, { transports, name: 'creator-wrong' });
        c0.emit('join-session', joinPayload(alice, `${sessionId}:not-${key}`, { isCreator: true }));
        assertSessionError(await c0.next('session-error'), 'INVALID_KEY', 'Session key mismatch. This should not happen.');
        await c0.expectNo('messages-history');

        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, `${sessionId}:${key}`, { isCreator: true }));
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('join-session', joinPayload(newUser('Bob'), `${sessionId}:not-${key}`));
        assertSessionError(
          await b.next('session-error'),
          'INVALID_KEY',
          'Invalid authentication key. Please check your link and try again.',
        );
        await b.expectNo('messages-history');
        await a.expectNo('user-joined');
        await a.expectNo('public-keys-updated');
      });

      test('INVALID_KEY: a joiner with no key at all', async () => {
        const alice = newUser('Alice');
        const { sessionId, key } = await reserveOk(server);
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, `${sessionId}:${key}`, { isCreator: true }));
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('join-session', joinPayload(newUser('Bob'), sessionId));
        const err = await b.next('session-error');
        assert.equal(err.error, 'INVALID_KEY', JSON.stringify(err));
        await a.expectNo('user-joined');
      });

      test('INVALID_KEY: a creator with no key for an unknown id, and nothing is created', async () => {
        const sessionId = newSessionId();
        const c = await connect(server, { transports, name: 'creator' });
        c.emit('join-session', joinPayload(newUser('A'), sessionId, { isCreator: true }));
        const err = await c.next('session-error');
        assertKeys(err, ['error', 'message'], 'session-error');
        assert.equal(err.error, 'INVALID_KEY');
        await c.expectNo('messages-history');
        assert.equal((await reserve(server, { sessionId, authKey: newKey() })).status, 200, 'the id is still free');
      });

      test('SESSION_NOT_ACTIVE while reserved and the creator has not joined', async () => {
        const { sessionId, key } = await reserveOk(server);
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('join-session', joinPayload(newUser('Bob'), `${sessionId}:${key}`));
        assertSessionError(
          await b.next('session-error'),
          'SESSION_NOT_ACTIVE',
          'Room not active yet. Please wait for the creator to join first.',
        );
        await b.expectNo('messages-history');
        // Once the creator joins, the same joiner gets in.
        const alice = newUser('Alice');
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(alice, `${sessionId}:${key}`, { isCreator: true }));
        const b2 = await connect(server, { transports, name: 'bob-again' });
        await b2.join(joinPayload(newUser('Bob'), `${sessionId}:${key}`));
      });

      test('SESSION_FULL for a third member of a private session', async () => {
        const { sessionId, key } = await reserveOk(server, { chatMode: 'private' });
        const link = `${sessionId}:${key}`;
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const a = await connect(server, { transports, name: 'alice' });
        const ja = await a.join(joinPayload(alice, link, { isCreator: true }));
        assert.deepStrictEqual(ja.metadata, { chatMode: 'private' });
        const b = await connect(server, { transports, name: 'bob' });
        const jb = await b.join(joinPayload(bob, link));
        assert.deepStrictEqual(jb.metadata, { chatMode: 'private' });
        await a.next('user-joined');
        a.drainAll();
        const c = await connect(server, { transports, name: 'carol' });
        c.emit('join-session', joinPayload(newUser('Carol'), link));
        assertSessionError(await c.next('session-error'), 'SESSION_FULL', 'This room is full. Only 2 members allowed.');
        await c.expectNo('messages-history');
        await a.expectNo('user-joined');
        await b.expectNo('user-joined');
        // A member reconnecting from a new socket (the old one's connection
        // died unnoticed) is not refused as a third member.
        b.goSilent();
        const b2 = await connect(server, { transports, name: 'bob-new' });
        await b2.join(joinPayload(bob, link, { publicKey: null }));
      });

      test('invalid join-session payloads → session-error INVALID_PAYLOAD, nothing breaks', async () => {
        const c = await connect(server, { transports, name: 'bad' });
        for (const payload of [{}, { userId: 'u' }, { sessionId: 'abc' }, { sessionId: 42, userId: 'u' }, { sessionId: 'abc', userId: 7 }]) {
          c.emit('join-session', payload);
          const err = await c.next('session-error');
          assert.equal(err.error, 'INVALID_PAYLOAD', `${JSON.stringify(payload)} → ${JSON.stringify(err)}`);
        }
        // The server is still fine for everybody.
        const { sessionId, key } = await reserveOk(server);
        const a = await connect(server, { transports, name: 'alice' });
        await a.join(joinPayload(newUser('Alice'), `${sessionId}:${key}`, { isCreator: true }));
      });
    });
  }
});

describe('join with user-joined timestamps', () => {
  test('user-joined and user-left carry a timestamp', async () => {
    const { sessionId, key } = await reserveOk(server);
    const link = `${sessionId}:${key}`;
    const a = await connect(server, { name: 'alice' });
    await a.join(joinPayload(newUser('Alice'), link, { isCreator: true }));
    const bob = newUser('Bob');
    const b = await connect(server, { name: 'bob' });
    await b.join(joinPayload(bob, link));
    const uj = await a.next('user-joined');
    assert.ok(typeof uj.timestamp === 'number' || typeof uj.timestamp === 'string', JSON.stringify(uj));
    if (typeof uj.timestamp === 'number') assertEpochMs(uj.timestamp);
    b.close();
    const ul = await a.next('user-left');
    assertKeys(ul, ['userId', 'displayName', 'timestamp'], 'user-left');
    assert.equal(ul.userId, bob.userId);
    assert.equal(ul.displayName, 'Bob');
  });
});
