// Order (docs/PROTOCOL.md send-message "Order"): messages from one sender reach
// each recipient in the order they were sent, on both transports.

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import { test, startServer, newUser, setupRoom, TRANSPORTS, transportName } from './helpers.mjs';

const COUNT = 500;

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

describe('order', { concurrency: true }, () => {
  for (const transports of TRANSPORTS) {
    test(`${COUNT} back-to-back messages arrive in order (${transportName(transports)})`, { timeout: 60000 }, async () => {
      const alice = newUser('Alice');
      const { link, clients } = await setupRoom(server, transports, [alice, newUser('Bob'), newUser('Carol')]);
      const [a, ...recipients] = clients;
      for (let i = 0; i < COUNT; i++) {
        a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: `seq-${i}`, type: 'text', clientMessageId: `ord-${i}` });
      }
      for (const r of recipients) {
        const got = await r.collect('new-message', COUNT, 40000);
        const ids = got.map((m) => m.id);
        const want = Array.from({ length: COUNT }, (_, i) => `ord-${i}`);
        const firstBad = ids.findIndex((id, i) => id !== want[i]);
        assert.equal(firstBad, -1, `${r.name}: out of order at ${firstBad}: got ${ids.slice(Math.max(0, firstBad - 2), firstBad + 3)}`);
        assert.deepStrictEqual(got.map((m) => m.encrypted), want.map((_, i) => `seq-${i}`));
      }
      const sent = await a.collect('message-sent', COUNT, 40000);
      assert.equal(new Set(sent.map((m) => m.id)).size, COUNT);
      await a.expectNo('event-error');
    });
  }
});
