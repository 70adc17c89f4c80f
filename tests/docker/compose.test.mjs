// The compose cluster (docker-compose.yml: Redis, chat1..chat3 from the
// Dockerfile, nginx with deploy/nginx.conf) seen through its balancer:
// three members whose client addresses the balancer sends to three
// different nodes talk to each other, one over WebSocket, one over
// long-polling only, one starting with polling and upgrading. Which node
// holds whom is read from the nodes themselves (their metrics, scraped on
// the compose network, and their logs) and from the balancer's access log,
// which also shows that every request of a polling member reached its node.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  NODES,
  Member,
  balancerLog,
  get,
  joinTags,
  newKey,
  newSessionId,
  parseMetrics,
  reserve,
  scrapeNodes,
  sleep,
} from './helpers.mjs';

/** Client addresses to try: one per /24 (ip_hash keys on the first three bytes), from the benchmarking range 198.18.0.0/15. */
const candidates = Array.from({ length: 96 }, (_, i) => `198.18.${i}.7`);

/**
 * Finds a client address the balancer sends to each node: asks GET /health
 * twice from each candidate and reads where the access log says it went.
 * The two requests of one address must reach the same node.
 */
async function addressPerNode() {
  const found = new Map();
  for (let i = 0; i < candidates.length && found.size < NODES.length; i += 12) {
    const batch = candidates.slice(i, i + 12);
    for (const address of [...batch, ...batch]) {
      const res = await get('/health', address);
      assert.equal(res.status, 200, `/health from ${address}: ${res.status} ${res.text}`);
    }
    const log = balancerLog().filter((e) => e.path === '/health');
    for (const address of batch) {
      const nodes = new Set(log.filter((e) => e.client === address).map((e) => e.node));
      assert.equal(nodes.size, 1, `both requests from ${address} reached one node: ${[...nodes]}`);
      const [node] = nodes;
      assert.ok(NODES.includes(node), `request from ${address} went to a node (${node})`);
      if (![...found.values()].includes(node)) found.set(address, node);
    }
  }
  assert.equal(found.size, NODES.length, `an address for each node: ${JSON.stringify([...found])}`);
  return [...found].map(([address, node]) => ({ address, node }));
}

test('a conversation through nginx with members on three nodes, over WebSocket, polling and an upgrade', { timeout: 120000 }, async () => {
  const [a, b, c] = await addressPerNode();
  console.log(`# client addresses: ${a.address} -> ${a.node}, ${b.address} -> ${b.node}, ${c.address} -> ${c.node}`);

  const sessionId = newSessionId();
  const key = newKey();
  await reserve(a.address, { sessionId, authKey: key, chatMode: 'group' });

  const alice = new Member('alice', a.address, ['websocket']);
  const bob = new Member('bob', b.address, ['polling']);
  // socket.io-client's default: a polling handshake, then the upgrade.
  const carol = new Member('carol', c.address, ['polling', 'websocket']);
  const members = [alice, bob, carol];
  try {
    for (const m of members) await m.connected();
    await alice.join(sessionId, key, true);
    await bob.join(sessionId, key, false);
    assert.equal((await alice.next('user-joined')).userId, bob.userId);
    await carol.join(sessionId, key, false);
    for (const m of [alice, bob]) assert.equal((await m.next('user-joined')).userId, carol.userId);
    await carol.until('the upgrade to WebSocket', () => carol.transport === 'websocket');

    // Rounds of messages in every direction, spread over a few seconds so
    // that the polling member makes many requests.
    for (let round = 1; round <= 4; round++) {
      const fromAlice = `ct-alice-${round}`;
      alice.send(sessionId, 'all', fromAlice);
      for (const m of [bob, carol]) {
        const msg = await m.next('new-message');
        assert.equal(msg.encrypted, fromAlice, `${m.name} got alice's message ${round}`);
        assert.equal(msg.from, alice.userId);
      }
      const fromBob = `ct-bob-${round}`;
      bob.send(sessionId, alice.userId, fromBob);
      const direct = await alice.next('new-message');
      assert.equal(direct.encrypted, fromBob, `alice got bob's direct message ${round}`);
      assert.equal(direct.from, bob.userId);
      const fromCarol = `ct-carol-${round}`;
      carol.send(sessionId, 'all', fromCarol);
      for (const m of [alice, bob]) {
        const msg = await m.next('new-message');
        assert.equal(msg.encrypted, fromCarol, `${m.name} got carol's message ${round}`);
      }
      for (const m of members) await m.next('message-sent');
      await sleep(300);
    }
    assert.equal(bob.transport, 'polling', 'bob stayed on long-polling');
    assert.equal(alice.transport, 'websocket');
    assert.equal(carol.transport, 'websocket');
    for (const m of members) assert.equal(m.disconnectReason, null, `${m.name} was never disconnected`);
    assert.equal(carol.queues.get('new-message')?.length ?? 0, 0, 'carol got nothing more (not her own messages, not the direct ones)');

    // The nodes' own view, from their metrics on the compose network: each
    // holds one member, with the transport that member uses.
    const want = {
      [a.node]: { websocket: 1, polling: 0 },
      [b.node]: { websocket: 0, polling: 1 },
      [c.node]: { websocket: 1, polling: 0 },
    };
    for (const [node, text] of Object.entries(scrapeNodes())) {
      const { samples, help, types } = parseMetrics(text);
      const sockets = {
        websocket: samples.get('chat_sockets{transport="websocket"}'),
        polling: samples.get('chat_sockets{transport="polling"}'),
      };
      assert.deepEqual(sockets, want[node], `${node}: chat_sockets by transport`);
      assert.equal(samples.get('chat_members'), 1, `${node}: chat_members`);
      assert.ok(samples.get('process_resident_memory_bytes') > 0, `${node}: process_resident_memory_bytes`);
      for (const name of types.keys()) assert.ok(help.has(name), `${node}: # HELP of ${name}`);
    }
  } finally {
    for (const m of members) m.close();
  }

  // Each node logged exactly one join, all of one session.
  await sleep(500);
  const tags = joinTags();
  for (const node of NODES) assert.equal(tags[node].length, 1, `${node} logged one 'member joined': ${JSON.stringify(tags)}`);
  assert.equal(new Set(NODES.map((n) => tags[n][0])).size, 1, `one session: ${JSON.stringify(tags)}`);

  // The balancer: every Engine.IO request of a member went to that member's
  // node and succeeded (any other node answers a polling request or an
  // upgrade with 400 "Session ID unknown").
  const log = balancerLog().filter((e) => e.path === '/socket.io/');
  for (const [member, { address, node }] of [[alice, a], [bob, b], [carol, c]]) {
    const mine = log.filter((e) => e.client === address);
    const stray = mine.filter((e) => e.node !== node || (e.status !== 200 && e.status !== 101));
    assert.deepEqual(stray.map((e) => e.line), [], `${member.name}'s requests all reached ${node} and succeeded`);
    const upgrades = mine.filter((e) => e.status === 101).length;
    const polls = mine.filter((e) => e.status === 200).length;
    console.log(`# ${member.name} (${address}) -> ${node}: ${polls} polling requests, ${upgrades} WebSocket`);
    if (member === bob) {
      assert.equal(upgrades, 0, 'bob never opened a WebSocket');
      assert.ok(polls >= 10, `bob's polling requests: ${polls}`);
    } else {
      assert.equal(upgrades, 1, `${member.name} opened one WebSocket`);
    }
    if (member === carol) assert.ok(polls >= 2, `carol polled before she upgraded: ${polls}`);
  }
});
