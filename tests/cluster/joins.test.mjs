// Join checks across nodes: joiners racing on different nodes for the last
// seats of a session (exactly as many win as there are seats), and the
// refusals decided on another node than the one that holds the creator.

import assert from 'node:assert/strict';
import { describe } from 'node:test';
import {
  test,
  startCluster,
  reserve,
  reserveOk,
  newUser,
  newKey,
  newSessionId,
  joinPayload,
  keyEntry,
  connect,
  assertPublicKeys,
  assertSessionError,
  assertUserJoined,
  QUIET_MS,
} from './helpers.mjs';

const MAX_GROUP = 4;
const RACERS = 10;

/**
 * Creator on node 1; then RACERS joiners, joiner i on node i % 3 (i from 1),
 * all connected first and then sending join-session at the same moment.
 * Returns the outcomes, the users and clients.
 */
async function race(cluster, chatMode) {
  const [n1] = cluster.nodes;
  const creator = newUser('Creator');
  const { link } = await reserveOk(n1, { chatMode });
  const cc = await connect(n1, { name: 'creator' });
  await cc.join(joinPayload(creator, link, { isCreator: true }));

  const users = Array.from({ length: RACERS }, (_, i) => newUser(`Racer${i + 1}`));
  const clients = await Promise.all(users.map((u, i) => connect(cluster.nodeFor(i + 1), { name: u.displayName })));
  for (let i = 0; i < RACERS; i++) clients[i].emit('join-session', joinPayload(users[i], link));
  const outcomes = await Promise.all(clients.map((c) => c.joinOutcome()));
  return { link, creator, cc, users, clients, outcomes };
}

/** Checks the race result: `seats` winners, every other got exactly `full`. */
async function checkRace({ creator, cc, users, clients, outcomes }, seats, fullMessage) {
  const winners = [];
  for (let i = 0; i < RACERS; i++) {
    if (outcomes[i].ok) winners.push(i);
    else assertSessionError(outcomes[i].error, 'SESSION_FULL', fullMessage);
  }
  assert.equal(
    winners.length,
    seats,
    `exactly ${seats} of ${RACERS} racing joiners may get in; got ${winners.length}: ` +
      JSON.stringify(outcomes.map((o, i) => `${users[i].displayName}@${clients[i].node.name}: ${o.ok ? 'joined' : o.error.error}`)),
  );
  // The creator hears of each winner once, and of nobody else.
  const joinedIds = (await cc.collect('user-joined', seats)).map((e) => e.userId).sort();
  assert.deepStrictEqual(joinedIds, winners.map((i) => users[i].userId).sort());
  // ... and gets the room's public-keys-updated of each of those joins.
  await cc.collect('public-keys-updated', seats);
  await cc.expectNo('user-joined', QUIET_MS * 2);
  // A refused joiner got exactly one session-error and nothing of the room.
  for (let i = 0; i < RACERS; i++) {
    if (winners.includes(i)) continue;
    for (const ev of ['messages-history', 'session-metadata', 'public-keys-updated', 'session-error', 'user-joined']) {
      assert.equal(clients[i].count(ev), 0, `${clients[i].name} (refused) got "${ev}": ${JSON.stringify(clients[i].log.map((e) => e.event))}`);
    }
  }
  return winners;
}

describe('joins across nodes', { concurrency: true }, () => {
  test(`private session: ${RACERS} joiners on three nodes race for the last seat → exactly one gets in`, async () => {
    const cluster = await startCluster({ env: { MAX_GROUP_MEMBERS: String(MAX_GROUP) } });
    const r = await race(cluster, 'private');
    const winners = await checkRace(r, 1, 'This room is full. Only 2 members allowed.');
    const w = winners[0];
    assertPublicKeys(r.outcomes[w].keys, [keyEntry(r.creator), keyEntry(r.users[w])]);
    // Creator and winner talk across nodes; the losers hear nothing.
    r.cc.emit('send-message', { sessionId: r.link, from: r.creator.userId, to: r.users[w].userId, encrypted: 'just us', type: 'text', clientMessageId: 'race-1' });
    assert.equal((await r.clients[w].next('new-message')).id, 'race-1');
    for (let i = 0; i < RACERS; i++) if (i !== w) await r.clients[i].expectNo('new-message', 0);
    // A latecomer on any node is refused too.
    for (const node of cluster.nodes) {
      const late = await connect(node, { name: 'late' });
      late.emit('join-session', joinPayload(newUser('Late'), r.link));
      assertSessionError(await late.next('session-error'), 'SESSION_FULL', 'This room is full. Only 2 members allowed.');
    }
  });

  test(`group session with MAX_GROUP_MEMBERS=${MAX_GROUP}: ${RACERS} racing joiners → exactly ${MAX_GROUP - 1} get in`, async () => {
    const cluster = await startCluster({ env: { MAX_GROUP_MEMBERS: String(MAX_GROUP) } });
    const r = await race(cluster, 'group');
    const winners = await checkRace(r, MAX_GROUP - 1, `This room is full. Only ${MAX_GROUP} members allowed.`);
    // A fresh get-public-keys from the creator lists exactly the winners.
    r.cc.emit('get-public-keys', { sessionId: r.link, userId: r.creator.userId });
    assertPublicKeys(await r.cc.next('public-keys-updated'), winners.map((i) => keyEntry(r.users[i])));
    // A member leaving frees a seat, whichever node asks next.
    const leaver = winners[0];
    r.clients[leaver].emit('leave-session', { sessionId: r.link, userId: r.users[leaver].userId });
    const left = await r.cc.next('user-left');
    assert.equal(left.userId, r.users[leaver].userId);
    const loser = [...Array(RACERS).keys()].find((i) => !winners.includes(i));
    r.clients[loser].emit('join-session', joinPayload(r.users[loser], r.link));
    const again = await r.clients[loser].joinOutcome();
    assert.ok(again.ok, `the freed seat should be taken: ${JSON.stringify(again.error)}`);
    assertUserJoined(await r.cc.next('user-joined'), r.users[loser]);
  });

  test('refusals decided on other nodes: wrong key, not active yet, not found, id taken', async () => {
    const cluster = await startCluster();
    const [n1, n2, n3] = cluster.nodes;
    const alice = newUser('Alice');

    // Reserved on node 1; a joiner on node 3 before the creator came.
    const { sessionId, key, link } = await reserveOk(n1, { chatMode: 'group' });
    const early = await connect(n3, { name: 'early' });
    early.emit('join-session', joinPayload(newUser('Early'), link));
    assertSessionError(await early.next('session-error'), 'SESSION_NOT_ACTIVE', 'Room not active yet. Please wait for the creator to join first.');

    // The id is taken on every node.
    for (const node of [n2, n3]) {
      const res = await reserve(node, { sessionId, authKey: newKey(), chatMode: 'group' });
      assert.equal(res.status, 409, `reserve of a taken id on ${node.name}: ${res.status} ${res.text}`);
      assert.deepStrictEqual(res.body, { error: 'Session already exists' });
    }

    const a = await connect(n1, { name: 'alice' });
    await a.join(joinPayload(alice, link, { isCreator: true }));

    // Wrong key on node 2: refused there, nothing reaches the creator on node 1.
    const b = await connect(n2, { name: 'mallory' });
    b.emit('join-session', joinPayload(newUser('Mallory'), `${sessionId}:${newKey()}`));
    assertSessionError(await b.next('session-error'), 'INVALID_KEY', 'Invalid authentication key. Please check your link and try again.');
    // An explicit wrong authKey wins over a right suffix.
    b.emit('join-session', joinPayload(newUser('Mallory'), link, { authKey: 'wrong' }));
    assertSessionError(await b.next('session-error'), 'INVALID_KEY', 'Invalid authentication key. Please check your link and try again.');
    // A creator claim with another key on node 3.
    const c = await connect(n3, { name: 'fake-creator' });
    c.emit('join-session', joinPayload(newUser('Fake'), `${sessionId}:${newKey()}`, { isCreator: true }));
    assertSessionError(await c.next('session-error'), 'INVALID_KEY', 'Session key mismatch. This should not happen.');
    // Unknown id on node 3.
    c.emit('join-session', joinPayload(newUser('Lost'), `${newSessionId()}:${key}`));
    assertSessionError(await c.next('session-error'), 'SESSION_NOT_FOUND', 'Session not found. Please check the session link.');
    await a.expectNo('user-joined');
    await a.expectNo('public-keys-updated', 0);

    // The right key on node 2 still works.
    const bob = newUser('Bob');
    const jb = await b.join(joinPayload(bob, link));
    assertPublicKeys(jb.keys, [keyEntry(alice), keyEntry(bob)]);
    assertUserJoined(await a.next('user-joined'), bob);

    // A session a creator made by joining an unreserved id on node 2 is known on node 3.
    const s2 = newSessionId();
    const k2 = newKey();
    const d = await connect(n2, { name: 'dora' });
    await d.join(joinPayload(newUser('Dora'), `${s2}:${k2}`, { isCreator: true }));
    const e = await connect(n3, { name: 'eve' });
    e.emit('join-session', joinPayload(newUser('Eve'), `${s2}:wrong`));
    assertSessionError(await e.next('session-error'), 'INVALID_KEY', 'Invalid authentication key. Please check your link and try again.');
    await e.join(joinPayload(newUser('Eve'), `${s2}:${k2}`));
    const res = await reserve(n1, { sessionId: s2, authKey: k2 });
    assert.equal(res.status, 409, `reserve of an id made by a creator's join on another node: ${res.status} ${res.text}`);
  });
});
