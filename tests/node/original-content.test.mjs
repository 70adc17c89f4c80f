// ORIGINAL_CONTENT=echo|author|drop (docs/PROTOCOL.md send-message "[fix]
// Plaintext"): who ever sees the plaintext the stock client sends beside the
// ciphertext.

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  newUser,
  joinPayload,
  connect,
  setupRoom,
  assertMessage,
  TRANSPORTS,
  transportName,
} from './helpers.mjs';

const MODES = ['echo', 'author', 'drop'];

for (const mode of MODES) {
  describe(`ORIGINAL_CONTENT=${mode}`, () => {
    let server;
    before(async () => {
      // echo runs with DEBUG=true: even verbose logs must not hold the plaintext.
      const env = mode === 'echo' ? { DEBUG: 'true' } : { ORIGINAL_CONTENT: mode };
      server = await startServer(env);
    });
    after(async () => {
      await server?.stop();
    });

    for (const transports of TRANSPORTS) {
      test(`plaintext reaches only whom it should (${transportName(transports)})`, async () => {
        const alice = newUser('Alice');
        const bob = newUser('Bob');
        const { link, clients } = await setupRoom(server, transports, [alice, bob]);
        const [a, b] = clients;
        const tag = Math.random().toString(36).slice(2);
        const plainA1 = `alice-plain-1-${tag}`;
        const plainA2 = `alice-plain-2-${tag}`;
        const plainB1 = `bob-plain-1-${tag}`;

        const echoes = mode !== 'drop';
        const sendAndCheck = async (from, fromClient, toClient, to, plain, id) => {
          fromClient.emit('send-message', { sessionId: link, from: from.userId, to, encrypted: `enc-${id}`, originalContent: plain, type: 'text', clientMessageId: id });
          const base = { id, from: from.userId, to, encrypted: `enc-${id}`, type: 'text', senderDisplayName: from.displayName };
          assertMessage(await fromClient.next('message-sent'), echoes ? { ...base, originalContent: plain } : base, 'message-sent');
          assertMessage(await toClient.next('new-message'), base, 'new-message');
          return base;
        };
        const m1 = await sendAndCheck(alice, a, b, 'all', plainA1, `oc-a1-${tag}`);
        const m2 = await sendAndCheck(alice, a, b, bob.userId, plainA2, `oc-a2-${tag}`);
        const m3 = await sendAndCheck(bob, b, a, 'all', plainB1, `oc-b1-${tag}`);

        // Each joins again from its own socket (the stock client's double join).
        const historyFor = async (user, client) => {
          const c = client ?? await connect(server, { transports, name: `${user.displayName}-late` });
          return (await c.join(joinPayload(user, link, { publicKey: null }))).history;
        };
        const authorKeeps = mode === 'author';
        const ha = await historyFor(alice, a);
        assert.equal(ha.length, 3);
        assertMessage(ha[0], authorKeeps ? { ...m1, originalContent: plainA1 } : m1, 'alice history[0]');
        assertMessage(ha[1], authorKeeps ? { ...m2, originalContent: plainA2 } : m2, 'alice history[1]');
        assertMessage(ha[2], m3, 'alice history[2] (bob’s message, never with plaintext)');
        const hb = await historyFor(bob, b);
        assert.equal(hb.length, 3);
        assertMessage(hb[0], m1, 'bob history[0]');
        assertMessage(hb[1], m2, 'bob history[1]');
        assertMessage(hb[2], authorKeeps ? { ...m3, originalContent: plainB1 } : m3, 'bob history[2]');
        const hc = await historyFor(newUser('Carol'));
        assert.equal(hc.length, 2);
        assertMessage(hc[0], m1, 'carol history[0]');
        assertMessage(hc[1], m3, 'carol history[1]');

        if (mode === 'echo') {
          const out = server.output();
          for (const p of [plainA1, plainA2, plainB1]) assert.ok(!out.includes(p), `server output contains the plaintext ${p}`);
          const res = await fetch(`${server.url}/sessions`);
          const text = await res.text();
          for (const p of [plainA1, plainA2, plainB1]) assert.ok(!text.includes(p), '/sessions contains plaintext');
        }
      });
    }
  });
}
