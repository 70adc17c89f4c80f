// Group sessions and the wrapped group key (docs/PROTOCOL.md, set-session-key and
// join step 9).

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  newUser,
  joinPayload,
  connect,
  setupRoom,
  assertKeys,
  assertEventError,
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

describe('group key', { concurrency: true }, () => {
  for (const transports of TRANSPORTS) {
    describe(`group key (${transportName(transports)})`, { concurrency: 1 }, () => {
      test('creator sets the key: room gets session-key-available, late joiners get their wrapped key', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const dave = newUser('Dave');
        const { link, clients } = await setupRoom(server, transports, [alice, bob], { chatMode: 'group' });
        const [a, b] = clients;

        const encryptedKeys = { [alice.userId]: 'wrapped-for-alice', [bob.userId]: 'wrapped-for-bob', [carol.userId]: 'wrapped-for-carol' };
        a.emit('set-session-key', { sessionId: link, encryptedKeys });
        for (const c of [a, b]) {
          const ev = await c.next('session-key-available');
          assert.deepStrictEqual(ev, { encryptedKeys });
        }
        await a.expectNo('event-error');

        const c = await connect(server, { transports, name: 'carol' });
        const jc = await c.join(joinPayload(carol, link));
        assert.deepStrictEqual(jc.metadata, { chatMode: 'group', encryptedSessionKey: 'wrapped-for-carol' });

        // Dave has no entry: the field is left out.
        const d = await connect(server, { transports, name: 'dave' });
        const jd = await d.join(joinPayload(dave, link));
        assertKeys(jd.metadata, ['chatMode'], 'session-metadata');
        assert.deepStrictEqual(jd.metadata, { chatMode: 'group' });

        // Bob joins again (as the stock client does on every connect): his
        // entry comes back in session-metadata.
        const b2 = b;
        const jb = await b2.join(joinPayload(bob, link, { publicKey: null }));
        assert.deepStrictEqual(jb.metadata, { chatMode: 'group', encryptedSessionKey: 'wrapped-for-bob' });

        // A new set-session-key replaces the stored wrapped keys.
        const next = { [alice.userId]: 'v2-alice', [bob.userId]: 'v2-bob', [dave.userId]: 'v2-dave' };
        a.emit('set-session-key', { sessionId: link, encryptedKeys: next });
        for (const cl of [a, b2, c, d]) assert.deepStrictEqual(await cl.next('session-key-available'), { encryptedKeys: next });
        const jc2 = await c.join(joinPayload(carol, link, { publicKey: null }));
        assert.deepStrictEqual(jc2.metadata, { chatMode: 'group' }, 'carol has no entry after the replacement');
        const jd2 = await d.join(joinPayload(dave, link, { publicKey: null }));
        assert.deepStrictEqual(jd2.metadata, { chatMode: 'group', encryptedSessionKey: 'v2-dave' });
      });

      test('set-session-key from a non-creator → event-error NOT_ALLOWED, nobody gets session-key-available', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const carol = newUser('Carol');
        const { link, clients } = await setupRoom(server, transports, [alice, bob, carol], { chatMode: 'group' });
        const [a, b, c] = clients;

        const good = { [alice.userId]: 'k-a', [bob.userId]: 'k-b', [carol.userId]: 'k-c' };
        a.emit('set-session-key', { sessionId: link, encryptedKeys: good });
        for (const cl of clients) await cl.next('session-key-available');

        const evil = { [alice.userId]: 'evil-a', [bob.userId]: 'evil-b', [carol.userId]: 'evil-c' };
        b.emit('set-session-key', { sessionId: link, encryptedKeys: evil });
        assertEventError(await b.next('event-error'), 'set-session-key', 'NOT_ALLOWED');
        for (const cl of [a, b, c]) await cl.expectNo('session-key-available');
        await a.expectNo('event-error');
        await c.expectNo('event-error');

        // The stored key is unchanged.
        const jc = await c.join(joinPayload(carol, link, { publicKey: null }));
        assert.deepStrictEqual(jc.metadata, { chatMode: 'group', encryptedSessionKey: 'k-c' });
      });

      test('set-session-key in a private session is refused with event-error', async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob], { chatMode: 'private' });
        const [a, b] = clients;
        a.emit('set-session-key', { sessionId: link, encryptedKeys: { [alice.userId]: 'x', [bob.userId]: 'y' } });
        const err = await a.next('event-error');
        assertKeys(err, ['event', 'error', 'message'], 'event-error');
        assert.equal(err.event, 'set-session-key');
        await a.expectNo('session-key-available');
        await b.expectNo('session-key-available');
        const jb = await b.join(joinPayload(bob, link, { publicKey: null }));
        assert.deepStrictEqual(jb.metadata, { chatMode: 'private' });
      });
    });
  }
});
