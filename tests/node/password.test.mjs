// Password rooms (docs/PROTOCOL.md section 4 "password", join steps 1 and 4, and
// section 3: the joiner keeps sending "ROOM:password:<base64>" as sessionId).

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  reserve,
  newSessionId,
  newKey,
  newUser,
  joinPayload,
  keyEntry,
  connect,
  assertKeys,
  assertMessage,
  assertPublicKeys,
  TRANSPORTS,
  transportName,
} from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');

/** Reserves a password room as the stock creator does; the creator joins. */
async function passwordRoom(transports, password) {
  const sessionId = newSessionId();
  const key = newKey();
  const authKey = `${key}:${b64(password)}`;
  const res = await reserve(server, { sessionId, authKey, chatMode: 'password' });
  assert.equal(res.status, 200, res.text);
  assert.deepStrictEqual(res.body, { success: true, sessionId, chatMode: 'password', message: 'Session reserved successfully' });
  const alice = newUser('Alice');
  const a = await connect(server, { transports, name: 'alice' });
  const ja = await a.join(joinPayload(alice, sessionId, { isCreator: true, authKey }));
  assert.deepStrictEqual(ja.metadata, { chatMode: 'password' });
  return { sessionId, key, authKey, alice, a };
}

describe('password room', { concurrency: true }, () => {
  for (const transports of TRANSPORTS) {
    describe(`password room (${transportName(transports)})`, { concurrency: 1 }, () => {
      test('wrong password → INVALID_PASSWORD; right one joins; the full string works as sessionId everywhere', async () => {
        // Characters that need base64 '+', '/' and '=' padding.
        const password = 'pä$$ wörd?>~>>>';
        const { sessionId, alice, a } = await passwordRoom(transports, password);
        const bob = newUser('Bob');

        const wrong = await connect(server, { transports, name: 'bob-wrong' });
        wrong.emit('join-session', joinPayload(bob, `${sessionId}:password:${b64('not the password')}`));
        const err = await wrong.next('session-error');
        assertKeys(err, ['error', 'message'], 'session-error');
        assert.deepStrictEqual(err, { error: 'INVALID_PASSWORD', message: 'Incorrect password. Please check and try again.' });
        await wrong.expectNo('messages-history');
        await a.expectNo('user-joined');

        const full = `${sessionId}:password:${b64(password)}`;
        const b = await connect(server, { transports, name: 'bob' });
        b.emit('get-public-keys', { sessionId: full, userId: bob.userId });
        assert.deepStrictEqual(await b.next('public-keys-updated'), []);
        const jb = await b.join(joinPayload(bob, full));
        assert.deepStrictEqual(jb.history, []);
        assert.deepStrictEqual(jb.metadata, { chatMode: 'password' });
        assertPublicKeys(jb.keys, [keyEntry(alice), keyEntry(bob)]);
        const uj = await a.next('user-joined');
        assert.equal(uj.userId, bob.userId);
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);

        // Every later event carries the full "ROOM:password:<base64>" string.
        b.emit('get-public-keys', { sessionId: full, userId: bob.userId });
        assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);

        b.emit('send-message', { sessionId: full, from: bob.userId, to: 'all', encrypted: 'ENC', originalContent: 'hi', type: 'text', clientMessageId: 'pw-1' });
        const want = { id: 'pw-1', from: bob.userId, to: 'all', encrypted: 'ENC', type: 'text', senderDisplayName: 'Bob' };
        assertMessage(await b.next('message-sent'), { ...want, originalContent: 'hi' });
        assertMessage(await a.next('new-message'), want);
        await b.expectNo('event-error');

        b.emit('typing', { sessionId: full, userId: bob.userId, displayName: 'Bob' });
        assert.deepStrictEqual(await a.next('user-typing'), { userId: bob.userId, displayName: 'Bob' });
        b.emit('stopped-typing', { sessionId: full, userId: bob.userId, displayName: 'Bob' });
        assert.deepStrictEqual(await a.next('user-stopped-typing'), { userId: bob.userId, displayName: 'Bob' });

        b.emit('file-downloaded', { sessionId: full, downloadedBy: bob.userId, senderId: alice.userId, fileName: 'a.txt', timestamp: 1700000000000 });
        assert.deepStrictEqual(await a.next('download-notification'), { downloadedBy: bob.userId, fileName: 'a.txt', timestamp: 1700000000000 });

        const newKeyValue = 'NEW-PUBLIC-KEY-OF-BOB';
        b.emit('save-public-key', { sessionId: full, userId: bob.userId, publicKey: newKeyValue, displayName: 'Bob' });
        for (const c of [a, b]) {
          assertPublicKeys(await c.next('public-keys-updated'), [keyEntry(alice), { ...keyEntry(bob), publicKey: newKeyValue }]);
        }

        a.emit('send-message', { sessionId, from: alice.userId, to: bob.userId, encrypted: 'ENC2', clientMessageId: 'pw-2' });
        assert.equal((await b.next('new-message')).id, 'pw-2');

        b.emit('leave-session', { sessionId: full, userId: bob.userId });
        const left = await a.next('user-left');
        assertKeys(left, ['userId', 'displayName', 'timestamp'], 'user-left');
        assert.equal(left.userId, bob.userId);
        assert.equal(left.displayName, 'Bob');
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(alice)]);
        assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);
        await b.expectNo('event-error');
        b.close();
        await a.expectNo('user-left');
      });

      test('password room: a wrong key without a password → INVALID_KEY; a third member → SESSION_FULL', async () => {
        const password = 'hunter2';
        const { sessionId, a } = await passwordRoom(transports, password);
        const x = await connect(server, { transports, name: 'keyonly' });
        x.emit('join-session', joinPayload(newUser('X'), `${sessionId}:not-the-key`));
        const err = await x.next('session-error');
        assert.deepStrictEqual(err, { error: 'INVALID_KEY', message: 'Invalid authentication key. Please check your link and try again.' });

        const full = `${sessionId}:password:${b64(password)}`;
        const b = await connect(server, { transports, name: 'bob' });
        await b.join(joinPayload(newUser('Bob'), full));
        await a.next('user-joined');
        const c = await connect(server, { transports, name: 'carol' });
        c.emit('join-session', joinPayload(newUser('Carol'), full));
        assert.deepStrictEqual(await c.next('session-error'), { error: 'SESSION_FULL', message: 'This room is full. Only 2 members allowed.' });
        await a.expectNo('user-joined');
      });
    });
  }
});
