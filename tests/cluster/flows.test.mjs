// The chat across nodes: three server processes share one Redis; the
// creator, the joiner and the late joiner sit on different nodes and see the
// same conversation as on one node (docs/PROTOCOL.md section 5), in order.

import assert from 'node:assert/strict';
import { describe } from 'node:test';
import {
  test,
  startCluster,
  reserveOk,
  newUser,
  joinPayload,
  keyEntry,
  connect,
  setupRoom,
  assertMessage,
  assertPublicKeys,
  assertUserJoined,
  assertUserLeft,
  assertEventError,
  assertKeys,
  assertSessionError,
  POLLING,
  QUIET_MS,
  sleep,
} from './helpers.mjs';

describe('flows across nodes', { concurrency: true }, () => {
  test('creator on node 1, joiner on node 2, late joiner on node 3: the full exchange', async () => {
    const cluster = await startCluster();
    const [n1, n2, n3] = cluster.nodes;
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const carol = newUser('Carol');

    // Reserve on node 1; the creator joins there.
    const { link } = await reserveOk(n1, { chatMode: 'group' });
    const a = await connect(n1, { name: 'alice' });
    a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
    assert.deepStrictEqual(await a.next('public-keys-updated'), []);
    const ja = await a.join(joinPayload(alice, link, { isCreator: true }));
    assert.deepStrictEqual(ja.history, []);
    assert.deepStrictEqual(ja.metadata, { chatMode: 'group' });
    assertPublicKeys(ja.keys, [keyEntry(alice)]);

    // The joiner on node 2 finds the session node 1 made.
    const b = await connect(n2, { name: 'bob' });
    b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
    assert.deepStrictEqual(await b.next('public-keys-updated'), [], 'an unbound socket learns nothing');
    const jb = await b.join(joinPayload(bob, link));
    assert.deepStrictEqual(jb.history, []);
    assert.deepStrictEqual(jb.metadata, { chatMode: 'group' });
    assertPublicKeys(jb.keys, [keyEntry(alice), keyEntry(bob)]);
    assertUserJoined(await a.next('user-joined'), bob);
    assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);
    await b.expectNo('user-joined');
    await a.expectNo('user-joined', 0);

    // get-public-keys once bound: every key but the requester's, to that socket only.
    b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
    assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);
    a.emit('get-public-keys', { sessionId: link, userId: alice.userId });
    assertPublicKeys(await a.next('public-keys-updated'), [keyEntry(bob)]);
    await a.expectNo('public-keys-updated');
    await b.expectNo('public-keys-updated', 0);

    // save-public-key on node 2 → the whole room (node 1 too) gets the new keys.
    bob.publicKey = `${bob.publicKey}-rotated`;
    b.emit('save-public-key', { sessionId: link, userId: bob.userId, publicKey: bob.publicKey, displayName: bob.displayName });
    for (const c of [a, b]) assertPublicKeys(await c.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob)]);

    // Broadcast from node 1.
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E1', originalContent: 'hello all', type: 'text', clientMessageId: 'fl-1' });
    const m1 = { id: 'fl-1', from: alice.userId, to: 'all', encrypted: 'E1', type: 'text', senderDisplayName: 'Alice' };
    const sent1 = await a.next('message-sent');
    assertMessage(sent1, { ...m1, originalContent: 'hello all' });
    const got1 = await b.next('new-message');
    assertMessage(got1, m1);
    assert.equal(got1.timestamp, sent1.timestamp, 'one message, one timestamp');
    await a.expectNo('new-message');

    // Direct, node 2 → node 1.
    b.emit('send-message', { sessionId: link, from: bob.userId, to: alice.userId, encrypted: { iv: 'aXY=', data: 'RTI=' }, type: 'file', clientMessageId: 'fl-2' });
    const m2 = { id: 'fl-2', from: bob.userId, to: alice.userId, encrypted: { iv: 'aXY=', data: 'RTI=' }, type: 'file', senderDisplayName: 'Bob' };
    assertMessage(await b.next('message-sent'), m2);
    assertMessage(await a.next('new-message'), m2);

    // Direct, node 1 → node 2.
    a.emit('send-message', { sessionId: link, from: alice.userId, to: bob.userId, encrypted: 'E3', type: 'text', clientMessageId: 'fl-3' });
    const m3 = { id: 'fl-3', from: alice.userId, to: bob.userId, encrypted: 'E3', type: 'text', senderDisplayName: 'Alice' };
    assertMessage(await a.next('message-sent'), m3);
    assertMessage(await b.next('new-message'), m3);

    // Broadcast from node 2 with `to` absent and no type → type "text", no `to` field.
    b.emit('send-message', { sessionId: link, from: bob.userId, encrypted: 'E4', clientMessageId: 'fl-4' });
    const m4 = { id: 'fl-4', from: bob.userId, encrypted: 'E4', type: 'text', senderDisplayName: 'Bob' };
    assertMessage(await b.next('message-sent'), m4);
    const got4 = await a.next('new-message');
    assertMessage(got4, m4);
    await b.expectNo('new-message');

    // A repeat of an id: new-message again, no second message-sent, stored once.
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'E1', type: 'text', clientMessageId: 'fl-1' });
    assertMessage(await b.next('new-message'), m1);
    await a.expectNo('message-sent');

    // Typing across nodes: the others only.
    b.emit('typing', { sessionId: link, userId: bob.userId, displayName: 'Bob' });
    assert.deepStrictEqual(await a.next('user-typing'), { userId: bob.userId, displayName: 'Bob' });
    b.emit('stopped-typing', { sessionId: link, userId: bob.userId, displayName: 'Bob' });
    assert.deepStrictEqual(await a.next('user-stopped-typing'), { userId: bob.userId, displayName: 'Bob' });
    await b.expectNo('user-typing', 0);
    await b.expectNo('user-stopped-typing', 0);

    // The creator on node 1 sets the group key: the whole room gets it.
    const encryptedKeys = { [alice.userId]: 'wrapped-for-alice', [bob.userId]: 'wrapped-for-bob', [carol.userId]: 'wrapped-for-carol' };
    a.emit('set-session-key', { sessionId: link, encryptedKeys });
    for (const c of [a, b]) assert.deepStrictEqual(await c.next('session-key-available'), { encryptedKeys });

    // A non-creator on node 2 may not replace it.
    b.emit('set-session-key', { sessionId: link, encryptedKeys: { [bob.userId]: 'evil' } });
    assertEventError(await b.next('event-error'), 'set-session-key', 'NOT_ALLOWED');

    // file-downloaded on node 2 → the sender on node 1 only.
    b.emit('file-downloaded', { sessionId: link, downloadedBy: 'Bob', senderId: alice.userId, fileName: 'photo.png', timestamp: 1712345678901 });
    assert.deepStrictEqual(await a.next('download-notification'), { downloadedBy: 'Bob', fileName: 'photo.png', timestamp: 1712345678901 });
    await b.expectNo('download-notification');

    // The late joiner on node 3 (long-polling): history without the direct
    // messages between the others, in order; its wrapped key; all keys.
    const c = await connect(n3, { name: 'carol', transports: POLLING });
    const jc = await c.join(joinPayload(carol, link));
    assert.deepStrictEqual(jc.history, [got1, got4], 'history: the messages to everyone, in order, without the others\' direct messages');
    assert.deepStrictEqual(jc.metadata, { chatMode: 'group', encryptedSessionKey: 'wrapped-for-carol' });
    assertPublicKeys(jc.keys, [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
    for (const other of [a, b]) {
      assertUserJoined(await other.next('user-joined'), carol);
      assertPublicKeys(await other.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
    }
    await c.expectNo('user-joined');

    // Node 3 → everyone on nodes 1 and 2; node 2 → node 3 only.
    c.emit('send-message', { sessionId: link, from: carol.userId, to: 'all', encrypted: 'E5', type: 'text', clientMessageId: 'fl-5' });
    const m5 = { id: 'fl-5', from: carol.userId, to: 'all', encrypted: 'E5', type: 'text', senderDisplayName: 'Carol' };
    assertMessage(await c.next('message-sent'), m5);
    for (const other of [a, b]) assertMessage(await other.next('new-message'), m5);
    b.emit('send-message', { sessionId: link, from: bob.userId, to: carol.userId, encrypted: 'E6', type: 'text', clientMessageId: 'fl-6' });
    assertMessage(await c.next('new-message'), { id: 'fl-6', from: bob.userId, to: carol.userId, encrypted: 'E6', type: 'text', senderDisplayName: 'Bob' });
    await b.next('message-sent');
    await a.expectNo('new-message');
    c.emit('file-downloaded', { sessionId: link, downloadedBy: 'Carol', senderId: bob.userId, fileName: 'doc.pdf', timestamp: 1712345678902 });
    assert.deepStrictEqual(await b.next('download-notification'), { downloadedBy: 'Carol', fileName: 'doc.pdf', timestamp: 1712345678902 });
    await a.expectNo('download-notification', 0);

    // Alice's own history view, joining again from her socket (the stock
    // client's double join; a live member's seat is not taken by another).
    const a2 = a;
    const view = await a2.join(joinPayload(alice, link, { publicKey: null }));
    assert.deepStrictEqual(view.history.map((m) => m.id), ['fl-1', 'fl-2', 'fl-3', 'fl-4', 'fl-5']);
    assert.deepStrictEqual(view.metadata, { chatMode: 'group', encryptedSessionKey: 'wrapped-for-alice' });
    assertPublicKeys(view.keys, [keyEntry(alice), keyEntry(bob), keyEntry(carol)], 'the stored key stays on a rejoin with publicKey null');
    // That was a rejoin of a member: no user-joined anywhere.
    await b.expectNo('user-joined');
    await c.expectNo('user-joined', 0);
    // Nobody got anything unexpected along the way.
    for (const cl of [b, c]) await cl.expectNo('event-error', 0);
    await a.expectNo('event-error', 0);
  });

  test('300 back-to-back messages from node 1 arrive in order on nodes 2 and 3', { timeout: 90000 }, async () => {
    const COUNT = 300;
    const cluster = await startCluster();
    const alice = newUser('Alice');
    const { link, clients } = await setupRoom(cluster, [alice, newUser('Bob'), newUser('Carol')]);
    const [a, ...recipients] = clients;
    assert.deepStrictEqual(recipients.map((r) => r.node.name), ['node2', 'node3']);
    for (let i = 0; i < COUNT; i++) {
      a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: `seq-${i}`, type: 'text', clientMessageId: `ord-${i}` });
    }
    const want = Array.from({ length: COUNT }, (_, i) => `ord-${i}`);
    for (const r of recipients) {
      const got = await r.collect('new-message', COUNT, 60000);
      const ids = got.map((m) => m.id);
      const firstBad = ids.findIndex((id, i) => id !== want[i]);
      assert.equal(firstBad, -1, `${r.name}: out of order at ${firstBad}: got ${ids.slice(Math.max(0, firstBad - 2), firstBad + 3)}`);
      assert.deepStrictEqual(got.map((m) => m.encrypted), want.map((_, i) => `seq-${i}`));
      for (const m of got.slice(0, 3)) assertMessage(m, { id: m.id, from: alice.userId, to: 'all', encrypted: m.encrypted, type: 'text', senderDisplayName: 'Alice' });
    }
    const sent = await a.collect('message-sent', COUNT, 60000);
    assert.deepStrictEqual(sent.map((m) => m.id), want, 'message-sent in order');
    await a.expectNo('event-error');
    for (const r of recipients) await r.expectNo('new-message', 0);

    // History holds them in the same order (a late joiner on node 1).
    const d = await connect(cluster.nodes[0], { name: 'dave' });
    const jd = await d.join(joinPayload(newUser('Dave'), link));
    // It comes in pages of HISTORY_PAGE_BYTES, oldest first, the first with the join.
    const ids = jd.history.map((m) => m.id);
    assert.ok(ids.length > 0 && ids.length < COUNT, `the first page holds part of it: ${ids.length}`);
    while (ids.length < COUNT) ids.push(...(await d.next('messages-history')).map((m) => m.id));
    assert.deepStrictEqual(ids, want, 'history holds every message in order, page after page');
  });

  test('a member disconnects from node 1 and reconnects to node 2 with the same link: history and room intact', async () => {
    const cluster = await startCluster();
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const carol = newUser('Carol');
    const { link, clients } = await setupRoom(cluster, [alice, bob, carol]);
    const [a, b, c] = clients; // nodes 1, 2, 3

    const send = async (from, cl, to, id) => {
      cl.emit('send-message', { sessionId: link, from: from.userId, to, encrypted: `enc-${id}`, type: 'text', clientMessageId: id });
      return cl.next('message-sent');
    };
    await send(alice, a, 'all', 'rc-1');
    await send(bob, b, alice.userId, 'rc-2');
    await send(carol, c, bob.userId, 'rc-3'); // not Alice's
    await send(alice, a, carol.userId, 'rc-4');
    await a.next('new-message'); // rc-2
    await b.collect('new-message', 2); // rc-1, rc-3
    await c.collect('new-message', 2); // rc-1, rc-4
    a.drainAll();

    // Alice's socket on node 1 goes away: the others are told once.
    a.close();
    for (const cl of [b, c]) {
      assertUserLeft(await cl.next('user-left'), alice);
      assertPublicKeys(await cl.next('public-keys-updated'), [keyEntry(bob), keyEntry(carol)]);
    }

    // Same link, same user, from node 2.
    const a2 = await connect(cluster.nodes[1], { name: 'alice-again' });
    const ja = await a2.join(joinPayload(alice, link));
    assert.deepStrictEqual(ja.history.map((m) => m.id), ['rc-1', 'rc-2', 'rc-4']);
    assertMessage(ja.history[1], { id: 'rc-2', from: bob.userId, to: alice.userId, encrypted: 'enc-rc-2', type: 'text', senderDisplayName: 'Bob' });
    assert.deepStrictEqual(ja.metadata, { chatMode: 'group' });
    assertPublicKeys(ja.keys, [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
    for (const cl of [b, c]) {
      assertUserJoined(await cl.next('user-joined'), alice);
      assertPublicKeys(await cl.next('public-keys-updated'), [keyEntry(alice), keyEntry(bob), keyEntry(carol)]);
      await cl.expectNo('user-left', 0);
    }
    // And the conversation goes on, both ways.
    await send(carol, c, alice.userId, 'rc-5');
    assertMessage(await a2.next('new-message'), { id: 'rc-5', from: carol.userId, to: alice.userId, encrypted: 'enc-rc-5', type: 'text', senderDisplayName: 'Carol' });
    await send(alice, a2, 'all', 'rc-6');
    for (const cl of [b, c]) assert.equal((await cl.next('new-message')).id, 'rc-6');
    await a2.expectNo('event-error');
  });

  test('a join as a member whose socket on another node still answers is refused; once that socket closed (a reload), it gets in', async () => {
    // A quick heartbeat: the refusal comes once the other node's socket
    // outlived PING_INTERVAL_MS + PING_TIMEOUT_MS + 1 s.
    const cluster = await startCluster({ env: { PING_INTERVAL_MS: '1000', PING_TIMEOUT_MS: '2000' } });
    const alice = newUser('Alice');
    const bob = newUser('Bob');
    const { link, clients } = await setupRoom(cluster, [alice, bob]);
    const [a, b] = clients; // nodes 1, 2
    b.emit('send-message', { sessionId: link, from: bob.userId, to: alice.userId, encrypted: 'before', type: 'text', clientMessageId: 'rl-1' });
    await a.next('new-message');

    // Mallory, on node 3, claims Alice's id with a key of her own.
    const mallory = await connect(cluster.nodes[2], { name: 'mallory' });
    mallory.emit('join-session', { ...joinPayload(alice, link, { isCreator: true }), publicKey: 'MALLORY-KEY' });
    assertSessionError(
      await mallory.next('session-error', 10000),
      'ALREADY_CONNECTED',
      'This user is already connected to this session from another tab or device.',
    );
    await mallory.expectNo('messages-history', 0);
    // Nothing changed for Alice or Bob.
    await b.expectNo('public-keys-updated', 0);
    b.emit('get-public-keys', { sessionId: link, userId: bob.userId });
    assertPublicKeys(await b.next('public-keys-updated'), [keyEntry(alice)]);
    b.emit('send-message', { sessionId: link, from: bob.userId, to: alice.userId, encrypted: 'still-alice', type: 'text', clientMessageId: 'rl-2' });
    assert.equal((await a.next('new-message')).id, 'rl-2');
    await mallory.expectNo('new-message');

    // Alice reloads: her old socket closes, the new page joins on node 3.
    a.close();
    assertUserLeft(await b.next('user-left'), alice);
    const a2 = await connect(cluster.nodes[2], { name: 'alice-reloaded' });
    const ja = await a2.join(joinPayload(alice, link));
    assert.deepStrictEqual(ja.history.map((m) => m.id), ['rl-1', 'rl-2'], 'what was sent to Alice, before and during the attempt');
    assertPublicKeys(ja.keys, [keyEntry(alice), keyEntry(bob)]);
    b.emit('send-message', { sessionId: link, from: bob.userId, to: 'all', encrypted: 'after', type: 'text', clientMessageId: 'rl-3' });
    assert.equal((await a2.next('new-message')).id, 'rl-3');
    await mallory.expectNo('new-message', 0);
  });
  test('two sockets on two nodes race to join as one new user: one is the member, the other is refused and hears nothing, and after the leave neither does', async () => {
    const cluster = await startCluster({ env: { PING_INTERVAL_MS: '1000', PING_TIMEOUT_MS: '2000' } });
    const alice = newUser('Alice');
    const dave = newUser('Dave');
    const { link, clients } = await setupRoom(cluster, [alice]);
    const [a] = clients; // node 1
    const x = await connect(cluster.nodes[1], { name: 'dave-on-2' });
    const y = await connect(cluster.nodes[2], { name: 'dave-on-3' });
    x.emit('join-session', joinPayload(dave, link));
    y.emit('join-session', joinPayload(dave, link));
    // The loser waits out the other node's heartbeat (1 + 2 + 1 s) and is refused.
    await sleep(6000);
    const admitted = [x, y].filter((cl) => cl.count('messages-history') > 0);
    const refused = [x, y].filter((cl) => cl.count('session-error') > 0);
    assert.equal(admitted.length, 1, 'exactly one socket is the member');
    assert.equal(refused.length, 1, 'the other is refused');
    const [winner, loser] = [admitted[0], refused[0]];
    assertSessionError(
      await loser.next('session-error'),
      'ALREADY_CONNECTED',
      'This user is already connected to this session from another tab or device.',
    );
    assertUserJoined(await a.next('user-joined'), dave);

    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'during', type: 'text', clientMessageId: 'race-1' });
    assert.equal((await winner.next('new-message')).id, 'race-1');
    await loser.expectNo('new-message');

    winner.emit('leave-session', { sessionId: link, userId: dave.userId });
    assertUserLeft(await a.next('user-left'), dave);
    await winner.next('public-keys-updated'); // the room's keys after the leave, the leaver included
    await sleep(QUIET_MS);
    for (const cl of [winner, loser]) cl.drainAll();
    a.emit('send-message', { sessionId: link, from: alice.userId, to: 'all', encrypted: 'after', type: 'text', clientMessageId: 'race-2' });
    await a.next('message-sent');
    await sleep(QUIET_MS);
    for (const cl of [winner, loser]) {
      await cl.expectNo('new-message', 0);
      await cl.expectNo('public-keys-updated', 0);
    }
  });
});
