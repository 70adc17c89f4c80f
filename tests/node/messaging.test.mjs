// Messages, routing, history, typing, downloads, leaving and the refusals of
// events from sockets that are not entitled to send them (docs/PROTOCOL.md
// sections 5 and 7).

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  newUser,
  joinPayload,
  keyEntry,
  connect,
  setupRoom,
  assertKeys,
  assertEpochMs,
  assertMessage,
  assertPublicKeys,
  assertEventError,
  TRANSPORTS,
  transportName,
  QUIET_MS,
  sleep,
} from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/**
 * The messages-history `user` gets on joining: a member joins again from its
 * own socket (`existing`, as the stock client's double join does; a member's
 * seat is not taken from a live socket), a newcomer from a fresh one.
 */
async function historyOf(transports, user, link, existing) {
  const c = existing ?? await connect(server, { transports, name: `${user.displayName}-history` });
  const j = await c.join(joinPayload(user, link, { publicKey: null }));
  return { history: j.history, client: c };
}

describe('messaging', { concurrency: true }, () => {
  for (const transports of TRANSPORTS) {
    describe(`messaging (${transportName(transports)})`, { concurrency: 1 }, () => {
      test('private mode: the same clientMessageId twice → stored once, new-message each time, message-sent once', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob], { chatMode: 'private' });
        const [a, b] = clients;
        const msg = { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'CIPHER', originalContent: 'plain', type: 'text', clientMessageId: 'priv-1' };
        a.emit('send-message', msg);
        a.emit('send-message', msg);
        const want = { id: 'priv-1', from: alice.userId, to: bob.userId, encrypted: 'CIPHER', type: 'text', senderDisplayName: 'Alice' };
        const got = await b.collect('new-message', 2);
        for (const m of got) assertMessage(m, want);
        assertMessage(await a.next('message-sent'), { ...want, originalContent: 'plain' });
        await a.expectNo('message-sent');
        await b.expectNo('new-message');
        await a.expectNo('new-message');

        const hb = await historyOf(transports, bob, link, b);
        assert.equal(hb.history.length, 1, `stored once: ${JSON.stringify(hb.history)}`);
        assertMessage(hb.history[0], want);
        const ha = await historyOf(transports, alice, link, a);
        assert.equal(ha.history.length, 1);
        assertMessage(ha.history[0], want);
      });

      test('group: one clientMessageId sent once per peer → each peer gets its copy, message-sent once, stored once', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        for (const to of [bob, carol]) {
          a.emit('send-message', { sessionId: link, from: alice.userId, to: to.userId, encrypted: `for-${to.displayName}`, type: 'text', clientMessageId: 'multi-1' });
        }
        const base = { id: 'multi-1', from: alice.userId, type: 'text', senderDisplayName: 'Alice' };
        assertMessage(await b.next('new-message'), { ...base, to: bob.userId, encrypted: 'for-Bob' });
        assertMessage(await c.next('new-message'), { ...base, to: carol.userId, encrypted: 'for-Carol' });
        assertMessage(await a.next('message-sent'), { ...base, to: bob.userId, encrypted: 'for-Bob' });
        await a.expectNo('message-sent');
        await b.expectNo('new-message');
        await c.expectNo('new-message');

        const ha = await historyOf(transports, alice, link, a);
        assert.equal(ha.history.length, 1, `stored once: ${JSON.stringify(ha.history)}`);
        assertMessage(ha.history[0], { ...base, to: bob.userId, encrypted: 'for-Bob' });
        const hc = await historyOf(transports, carol, link, c);
        assert.ok(hc.history.length <= 1, `not duplicated for carol: ${JSON.stringify(hc.history)}`);
      });

      test('routing and history: to all, to absent, to one member; late joiners see only what is theirs', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;

        // m1: to "all"
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'm1', type: 'text', clientMessageId: 'r-m1' });
        const m1 = await a.next('message-sent');
        assertMessage(m1, { id: 'r-m1', from: alice.userId, to: 'all', encrypted: 'm1', type: 'text', senderDisplayName: 'Alice' });
        for (const cl of [b, c]) assert.deepStrictEqual(await cl.next('new-message'), m1);
        await a.expectNo('new-message');

        // m2: alice → bob only
        a.emit('send-message', { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'm2', type: 'text', clientMessageId: 'r-m2' });
        const m2 = await a.next('message-sent');
        assert.deepStrictEqual(await b.next('new-message'), m2);
        await c.expectNo('new-message');

        // m3: bob → alice, type given as "file", encrypted as an object (relayed as is)
        const enc3 = { iv: 'aXY=', data: 'ZGF0YQ==', keys: { [alice.userId]: 'abc' } };
        b.emit('send-message', { sessionId: link, from: bob.userId, to: alice.userId, encrypted: enc3, type: 'file', clientMessageId: 'r-m3' });
        const m3 = await b.next('message-sent');
        assertMessage(m3, { id: 'r-m3', from: bob.userId, to: alice.userId, encrypted: enc3, type: 'file', senderDisplayName: 'Bob' });
        assert.deepStrictEqual(await a.next('new-message'), m3);
        await c.expectNo('new-message');

        // m4: carol, `to` absent and no type, no clientMessageId → a fresh id, type "text", no `to` field
        c.emit('send-message', { sessionId: link, from: carol.userId, encrypted: 'm4' });
        const m4 = await c.next('message-sent');
        assertMessage(m4, {
          id: (id) => assert.ok(typeof id === 'string' && id.length > 0, `fresh id: ${JSON.stringify(id)}`),
          from: carol.userId,
          encrypted: 'm4',
          type: 'text',
          senderDisplayName: 'Carol',
        });
        for (const cl of [a, b]) assert.deepStrictEqual(await cl.next('new-message'), m4);

        // m5: carol again without clientMessageId → a different fresh id
        c.emit('send-message', { sessionId: link, from: carol.userId, to: 'all', encrypted: 'm5' });
        const m5 = await c.next('message-sent');
        assert.notEqual(m5.id, m4.id);
        for (const cl of [a, b]) await cl.next('new-message');

        const hd = await historyOf(transports, newUser('Dave'), link);
        assert.deepStrictEqual(hd.history, [m1, m4, m5], 'a late joiner sees only messages to everyone');
        assert.deepStrictEqual((await historyOf(transports, bob, link, b)).history, [m1, m2, m3, m4, m5]);
        assert.deepStrictEqual((await historyOf(transports, alice, link, a)).history, [m1, m2, m3, m4, m5]);
        assert.deepStrictEqual((await historyOf(transports, carol, link, c)).history, [m1, m4, m5]);
      });

      test('typing / stopped-typing reach the others only', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { sessionId, link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        a.emit('typing', { sessionId: link, userId: alice.userId, displayName: 'Alice' });
        for (const cl of [b, c]) assert.deepStrictEqual(await cl.next('user-typing'), { userId: alice.userId, displayName: 'Alice' });
        await a.expectNo('user-typing');
        a.emit('stopped-typing', { sessionId, userId: alice.userId, displayName: 'Alice' });
        for (const cl of [b, c]) assert.deepStrictEqual(await cl.next('user-stopped-typing'), { userId: alice.userId, displayName: 'Alice' });
        await a.expectNo('user-stopped-typing');

        // From a socket that is not a member: dropped silently.
        const x = await connect(server, { transports, name: 'stranger' });
        const xu = newUser('Stranger');
        x.emit('typing', { sessionId: link, userId: xu.userId, displayName: 'Stranger' });
        x.emit('stopped-typing', { sessionId: link, userId: xu.userId, displayName: 'Stranger' });
        await sleep(QUIET_MS);
        for (const cl of [a, b, c]) await cl.expectSilence(0);
        await x.expectNo('user-typing');
      });

      test('file-downloaded → download-notification to the sender only', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        b.emit('file-downloaded', { sessionId: link, downloadedBy: bob.userId, senderId: alice.userId, fileName: 'photo.png', timestamp: 1712345678901 });
        assert.deepStrictEqual(await a.next('download-notification'), { downloadedBy: bob.userId, fileName: 'photo.png', timestamp: 1712345678901 });
        await b.expectNo('download-notification');
        await c.expectNo('download-notification');

        // A non-number timestamp is replaced by server time.
        c.emit('file-downloaded', { sessionId: link, downloadedBy: carol.userId, senderId: alice.userId, fileName: 'doc.pdf', timestamp: 'yesterday' });
        const n = await a.next('download-notification');
        assertKeys(n, ['downloadedBy', 'fileName', 'timestamp'], 'download-notification');
        assert.equal(n.downloadedBy, carol.userId);
        assert.equal(n.fileName, 'doc.pdf');
        assertEpochMs(n.timestamp, 'download-notification.timestamp');
        await b.expectNo('download-notification');
        await c.expectNo('download-notification');
      });

      test('leave-session then disconnect: user-left once, keys without the leaver', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        c.emit('leave-session', { sessionId: link, userId: carol.userId });
        for (const cl of [a, b]) {
          const ev = await cl.next('user-left');
          assertKeys(ev, ['userId', 'displayName', 'timestamp'], 'user-left');
          assert.equal(ev.userId, carol.userId);
          assert.equal(ev.displayName, 'Carol');
        }
        for (const cl of [a, b, c]) assertPublicKeys(await cl.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);
        await c.expectNo('user-left');
        await c.expectNo('event-error');

        // The leaver no longer receives room traffic.
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'after-leave', clientMessageId: 'lv-1' });
        await b.next('new-message');
        await c.expectNo('new-message');

        c.close();
        await sleep(QUIET_MS);
        for (const cl of [a, b]) {
          await cl.expectNo('user-left');
          await cl.expectNo('public-keys-updated');
        }
      });

      test('disconnect without leave-session: user-left once, keys without the leaver', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        c.close();
        for (const cl of [a, b]) {
          const ev = await cl.next('user-left');
          assertKeys(ev, ['userId', 'displayName', 'timestamp'], 'user-left');
          assert.equal(ev.userId, carol.userId);
          assert.equal(ev.displayName, 'Carol');
          assertPublicKeys(await cl.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);
        }
        await a.expectNo('user-left');
        await b.expectNo('user-left');
      });

      test('events from an unbound socket → event-error NOT_IN_SESSION, nobody else receives anything', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob]);
        const [a, b] = clients;
        const x = await connect(server, { transports, name: 'unbound' });
        const events = [
          ['send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'spoof', clientMessageId: 'x-1' }],
          ['send-message', { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'spoof', clientMessageId: 'x-2' }],
          ['save-public-key', { sessionId: link, userId: alice.userId, publicKey: 'EVIL', displayName: 'Alice' }],
          ['set-session-key', { sessionId: link, encryptedKeys: { [alice.userId]: 'evil', [bob.userId]: 'evil' } }],
          ['file-downloaded', { sessionId: link, downloadedBy: bob.userId, senderId: alice.userId, fileName: 'f', timestamp: 1 }],
          ['leave-session', { sessionId: link, userId: bob.userId }],
        ];
        for (const [event, payload] of events) {
          x.emit(event, payload);
          assertEventError(await x.next('event-error'), event, 'NOT_IN_SESSION');
        }
        await sleep(QUIET_MS);
        await a.expectSilence(0);
        await b.expectSilence(0);
        await x.expectSilence(0);

        // Nothing changed: keys intact, bob still a member, no spoofed history.
        a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(bob)]);
        b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
        assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);
        const h = await historyOf(transports, newUser('Late'), link);
        assert.deepStrictEqual(h.history, []);
      });

      test('events for another session than the bound one → NOT_IN_SESSION', async () => {
        const room1 = await setupRoom(server, transports, [newUser('A1'), newUser('B1')]);
        const alice2 = newUser('A2');
        const room2 = await setupRoom(server, transports, [alice2, newUser('B2')]);
        const [x] = room1.clients; // bound to room1
        x.emit('send-message', { sessionId: room2.link, from: alice2.userId, to: 'all', encrypted: 'cross', clientMessageId: 'cross-1' });
        assertEventError(await x.next('event-error'), 'send-message', 'NOT_IN_SESSION');
        await sleep(QUIET_MS);
        for (const cl of room2.clients) await cl.expectSilence(0);
        await room1.clients[1].expectSilence(0);
      });

      test('`from` / `userId` not equal to the bound user → NOT_ALLOWED', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol]);
        const [a, b, c] = clients;
        b.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'spoof', clientMessageId: 'na-1' });
        assertEventError(await b.next('event-error'), 'send-message', 'NOT_ALLOWED');
        b.emit('save-public-key', { sessionId: link, userId: alice.userId, publicKey: 'EVIL', displayName: 'Alice' });
        assertEventError(await b.next('event-error'), 'save-public-key', 'NOT_ALLOWED');
        await sleep(QUIET_MS);
        for (const cl of [a, b, c]) await cl.expectSilence(0);
        a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
        assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(bob), keyEntry(carol)]);
        c.emit('get-public-keys', { sessionId: link, userId: carol.userId });
        assertPublicKeys(await c.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);
        assert.deepStrictEqual((await historyOf(transports, carol, link, c)).history, []);
      });

      test('save-public-key stores the key and the whole room gets public-keys-updated', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob]);
        const [a, b] = clients;
        b.emit('save-public-key', { sessionId: link, userId: bob.userId, publicKey: 'BOB-KEY-2', displayName: 'Bob' });
        for (const cl of [a, b]) assertPublicKeys(await cl.next('public-keys-updated'), [keyEntry(alice), { ...keyEntry(bob), publicKey: 'BOB-KEY-2' }]);
        await b.expectNo('event-error');
      });

      test('unknown recipient → UNKNOWN_RECIPIENT, nobody receives it', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob]);
        const [a, b] = clients;
        a.emit('send-message', { sessionId: link, from: alice.userId, to: newUser('Ghost').userId, encrypted: 'lost', clientMessageId: 'ur-1' });
        assertEventError(await a.next('event-error'), 'send-message', 'UNKNOWN_RECIPIENT');
        await b.expectNo('new-message');
        await a.expectNo('new-message');
      });

      test('a send-message of the wrong shape is refused without harm', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob]);
        const [a, b] = clients;
        a.emit('send-message', { from: alice.userId, to: 'all', encrypted: 'no session id' });
        const err = await a.next('event-error');
        assertKeys(err, ['event', 'error', 'message'], 'event-error');
        assert.equal(err.event, 'send-message');
        assert.ok(['INVALID_PAYLOAD', 'NOT_IN_SESSION'].includes(err.error), JSON.stringify(err));
        a.emit('send-message', 'just a string');
        const err2 = await a.next('event-error');
        assert.equal(err2.event, 'send-message');
        assert.equal(err2.error, 'INVALID_PAYLOAD', JSON.stringify(err2));
        await b.expectNo('new-message');
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'fine', clientMessageId: 'ok-1' });
        assert.equal((await b.next('new-message')).id, 'ok-1');
      });
    });
  }
});
