// Size and rate limits on the wire (docs/PROTOCOL.md section 1 "maxPayload ...
// must hold on both transports" and section 2 "429").

import assert from 'node:assert/strict';
import { before, after, describe } from 'node:test';
import {
  test,
  startServer,
  reserve,
  newSessionId,
  newUser,
  setupRoom,
  TRANSPORTS,
  transportName,
  sleep,
} from './helpers.mjs';

describe('MAX_PAYLOAD_BYTES=65536', () => {
  let server;
  before(async () => {
    server = await startServer({ MAX_PAYLOAD_BYTES: '65536' });
  });
  after(async () => {
    await server?.stop();
  });

  for (const transports of TRANSPORTS) {
    test(`a message over the limit is refused and relayed to nobody (${transportName(transports)})`, async () => {
      const alice = newUser('Alice');
      const bob = newUser('Bob');
      const { link, clients } = await setupRoom(server, transports, [alice, bob]);
      const [a, b] = clients;
      const small = 'x'.repeat(40 * 1024);
      a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: small, clientMessageId: 'small-1' });
      assert.equal((await b.next('new-message', 10000)).encrypted.length, small.length);
      assert.equal((await a.next('message-sent', 10000)).id, 'small-1');

      const big = 'y'.repeat(100 * 1024);
      a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: big, clientMessageId: 'big-1' });
      await sleep(1500);
      await b.expectNo('new-message', 0);
      const refusedByError = a.drain('event-error').some((e) => e.error === 'PAYLOAD_TOO_LARGE');
      assert.ok(
        refusedByError || !a.socket.connected,
        'the sender is either disconnected or told PAYLOAD_TOO_LARGE',
      );
      await a.expectNo('message-sent', 0);
      assert.equal((await fetch(`${server.url}/health`)).status, 200);
    });
  }
});

describe('default MAX_PAYLOAD_BYTES (20 MiB)', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
  });

  for (const transports of TRANSPORTS) {
    test(`a ~14 MB send-message (a 5 MB file as base64 plus its plaintext) is relayed (${transportName(transports)})`, { timeout: 90000 }, async () => {
      const alice = newUser('Alice');
      const bob = newUser('Bob');
      const { link, clients } = await setupRoom(server, transports, [alice, bob]);
      const [a, b] = clients;
      const encrypted = 'E'.repeat(7 * 1024 * 1024);
      const originalContent = 'P'.repeat(6 * 1024 * 1024);
      a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted, originalContent, type: 'file', clientMessageId: 'huge-1' });
      const got = await b.next('new-message', 60000);
      assert.equal(got.id, 'huge-1');
      assert.equal(got.encrypted.length, encrypted.length);
      assert.ok(!('originalContent' in got));
      const sent = await a.next('message-sent', 60000);
      assert.equal(sent.originalContent.length, originalContent.length);
    });
  }
});

describe('RESERVE_RATE_PER_IP=3', () => {
  let server;
  before(async () => {
    server = await startServer({ RESERVE_RATE_PER_IP: '3' });
  });
  after(async () => {
    await server?.stop();
  });

  test('reservations beyond the rate limit → 429 JSON', async () => {
    // The server may allow a small burst; within 20 quick requests the
    // 3-per-minute budget is spent.
    let res;
    let ok = 0;
    for (let i = 0; i < 20; i++) {
      res = await reserve(server, { sessionId: newSessionId(), authKey: 'k' });
      if (res.status !== 200) break;
      ok++;
    }
    assert.ok(ok >= 1, 'the first reservation is served');
    assert.equal(res.status, 429, res.text);
    assert.match(res.headers.get('content-type') || '', /^application\/json/i);
    assert.equal(typeof res.body?.error, 'string', res.text);
  });
});
