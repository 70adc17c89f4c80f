// A node goes away with members on it. SIGKILL: the survivors notice its
// heartbeat is older than NODE_TIMEOUT_SECS and announce its members'
// departures exactly once; the cut-off clients rejoin on another node and
// find their history. SIGTERM: the stopping node announces its own members'
// departures to the other nodes, once, before the heartbeat could expire.

import assert from 'node:assert/strict';
import { describe } from 'node:test';
import {
  test,
  startCluster,
  newUser,
  joinPayload,
  keyEntry,
  connect,
  setupRoom,
  health,
  expectUserLeftOnce,
  assertPublicKeys,
  assertUserJoined,
  assertMessage,
} from './helpers.mjs';

/** Six members, member i on node i % 3: node 2 holds members 1 and 4. */
async function sixMembers(cluster) {
  const users = ['U0', 'U1', 'U2', 'U3', 'U4', 'U5'].map(newUser);
  const room = await setupRoom(cluster, users, { chatMode: 'group' });
  const onNode2 = [1, 4];
  const survivors = [0, 2, 3, 5];
  assert.deepStrictEqual(onNode2.map((i) => room.clients[i].node.name), ['node2', 'node2']);
  assert.ok(survivors.every((i) => room.clients[i].node.name !== 'node2'));
  return { users, ...room, onNode2, survivors };
}

/** The last public-keys-updated each survivor got lists exactly `expected`. */
function assertLastKeys(client, expected) {
  const all = client.drain('public-keys-updated');
  assert.ok(all.length > 0, `${client.name} got no public-keys-updated after the departures`);
  assertPublicKeys(all[all.length - 1], expected, `${client.name}: last public-keys-updated`);
}

describe('a node goes away', { concurrency: true }, () => {
  const NODE_TIMEOUT = 3;

  test(`SIGKILL: survivors get user-left for each of its members once, within NODE_TIMEOUT_SECS (${NODE_TIMEOUT}) + a few s; they rejoin elsewhere`, { timeout: 90000 }, async () => {
    const cluster = await startCluster({ env: { NODE_TIMEOUT_SECS: String(NODE_TIMEOUT), STORE_TIMEOUT_MS: '1000' } });
    const { users, clients, link, onNode2, survivors } = await sixMembers(cluster);
    const [u0, u1, u2] = users;
    const u4 = users[4];

    // Some history first: to everyone from node 2, to a node-2 member, from a node-2 member.
    const say = async (from, to, id) => {
      clients[users.indexOf(from)].emit('send-message', { sessionId: link, from: from.userId, to, encrypted: `enc-${id}`, type: 'text', clientMessageId: id });
      return clients[users.indexOf(from)].next('message-sent');
    };
    await say(u1, 'all', 'k-1');
    await say(u0, u1.userId, 'k-2');
    await say(u4, u2.userId, 'k-3');
    for (let i = 0; i < 6; i++) if (i !== 1) await clients[i].until('new-message', (m) => m.some((x) => x.id === 'k-1'));
    await clients[1].until('new-message', (m) => m.some((x) => x.id === 'k-2'));
    await clients[2].until('new-message', (m) => m.some((x) => x.id === 'k-3'));
    for (const c of clients) c.drainAll();

    const t0 = Date.now();
    await cluster.nodes[1].kill('SIGKILL');
    await Promise.all(onNode2.map((i) => clients[i].disconnected()));

    const dead = onNode2.map((i) => users[i]);
    const tooks = await Promise.all(
      survivors.map((i) => expectUserLeftOnce(clients[i], dead, { timeout: (NODE_TIMEOUT + 8) * 1000, watchMs: 2500, since: t0 })),
    );
    assert.ok(Math.max(...tooks) <= (NODE_TIMEOUT + 6) * 1000, `user-left took ${tooks} ms after the kill`);
    const remaining = survivors.map((i) => keyEntry(users[i]));
    for (const i of survivors) {
      assertLastKeys(clients[i], remaining);
      await clients[i].expectNo('user-joined', 0);
    }
    for (const n of [cluster.nodes[0], cluster.nodes[2]]) assert.equal((await health(n)).status, 200, `${n.name} /health`);

    // The cut-off members come back on other nodes with the same link.
    const r1 = await connect(cluster.nodes[2], { name: 'U1-back' });
    const j1 = await r1.join(joinPayload(u1, link));
    assert.deepStrictEqual(j1.history.map((m) => m.id), ['k-1', 'k-2']);
    assertMessage(j1.history[1], { id: 'k-2', from: u0.userId, to: u1.userId, encrypted: 'enc-k-2', type: 'text', senderDisplayName: 'U0' });
    assertPublicKeys(j1.keys, [...remaining, keyEntry(u1)]);
    for (const i of survivors) assertUserJoined(await clients[i].next('user-joined'), u1);

    const r4 = await connect(cluster.nodes[0], { name: 'U4-back' });
    const j4 = await r4.join(joinPayload(u4, link));
    assert.deepStrictEqual(j4.history.map((m) => m.id), ['k-1', 'k-3']);
    assertPublicKeys(j4.keys, [...remaining, keyEntry(u1), keyEntry(u4)]);
    for (const c of [...survivors.map((i) => clients[i]), r1]) assertUserJoined(await c.next('user-joined'), u4);

    // And the room works again for everyone.
    r1.emit('send-message', { sessionId: link, from: u1.userId, to: 'all', encrypted: 'back', type: 'text', clientMessageId: 'k-4' });
    for (const c of [...survivors.map((i) => clients[i]), r4]) assert.equal((await c.next('new-message')).id, 'k-4');
    for (const i of survivors) await clients[i].expectNo('user-left', 0);
  });

  test('SIGTERM: the stopping node announces its members\' departures to the other nodes once', { timeout: 90000 }, async () => {
    // A long enough node timeout that the announcement must come from the
    // shutdown itself; the watch below outlasts it to catch a second one from
    // the dead-node sweep.
    const TIMEOUT = 6;
    const cluster = await startCluster({ env: { NODE_TIMEOUT_SECS: String(TIMEOUT) } });
    const { users, clients, link, onNode2, survivors } = await sixMembers(cluster);
    const dead = onNode2.map((i) => users[i]);

    const t0 = Date.now();
    const node2 = cluster.nodes[1];
    node2.child.proc.kill('SIGTERM');
    const tooks = await Promise.all(
      survivors.map((i) =>
        expectUserLeftOnce(clients[i], dead, { timeout: (TIMEOUT - 1) * 1000, since: t0, watchMs: 0 }),
      ),
    );
    // Watch past the node timeout and two sweeps for a duplicate.
    const watchUntil = t0 + (TIMEOUT + 4) * 1000;
    await new Promise((r) => setTimeout(r, Math.max(0, watchUntil - Date.now())));
    for (const i of survivors) await clients[i].expectNo('user-left', 0);
    assert.ok(Math.max(...tooks) < TIMEOUT * 1000, `announced ${tooks} ms after SIGTERM`);

    const exit = await node2.waitExit(10000);
    assert.deepStrictEqual(exit, { code: 0, signal: null }, 'the node exits 0 on SIGTERM');
    for (const i of onNode2) await clients[i].disconnected();
    const remaining = survivors.map((i) => keyEntry(users[i]));
    for (const i of survivors) assertLastKeys(clients[i], remaining);

    // The rest of the room carries on.
    clients[0].emit('send-message', { sessionId: link, from: users[0].userId, to: 'all', encrypted: 'still here', type: 'text', clientMessageId: 't-1' });
    for (const i of survivors.slice(1)) assert.equal((await clients[i].next('new-message')).id, 't-1');
  });
});
