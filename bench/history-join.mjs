// The cost of a join to a session with a large history in cluster mode: one
// node over a fresh redis-server, 63 messages of 1 MiB (~64 MiB, the default
// MAX_HISTORY_BYTES), then a second member joins. Prints the history it got,
// the join's wall time, the longest single Redis command meanwhile (SLOWLOG,
// µs: how long Redis was unavailable to every other node) and the number of
// script calls.
//
//   (cd tests/cluster && npm ci) && cargo build --release
//   node bench/history-join.mjs          # E2E_SERVER_BIN picks another binary
import { startCluster, redisCommand, newUser, connect, joinPayload, reserveOk } from '../tests/cluster/helpers.mjs';
import net from 'node:net';
const cluster = await startCluster({ size: 1, env: { MAX_PAYLOAD_BYTES: String(2 << 20) } });
const [node] = cluster.nodes;
const { link } = await reserveOk(node, { chatMode: 'group' });
const alice = newUser('Alice');
const a = await connect(node, { name: 'Alice' });
await a.join(joinPayload(alice, link, { isCreator: true }));
const blob = 'x'.repeat(1 << 20);
for (let i = 0; i < 63; i++) {
  a.emit('send-message', { sessionId: link, from: alice.userId, encrypted: blob + i, clientMessageId: 'b' + i });
  await a.next('message-sent', 20000);
}
function slowlog(cmd) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port: cluster.redis.port });
    let buf = '';
    s.on('connect', () => s.write(cmd + '\r\n'));
    s.on('data', (d) => { buf += d; });
    setTimeout(() => { s.end(); resolve(buf); }, 500);
  });
}
await redisCommand(cluster.redis.port, 'CONFIG SET slowlog-log-slower-than 0');
await redisCommand(cluster.redis.port, 'CONFIG SET slowlog-max-len 1000');
await redisCommand(cluster.redis.port, 'SLOWLOG RESET');
const bob = newUser('Bob');
const b = await connect(node, { name: 'Bob' });
const t0 = Date.now();
const r = await b.join(joinPayload(bob, link), 60000);
const took = Date.now() - t0;
const log = await slowlog('SLOWLOG GET 1000');
// RESP: each entry is an array of 6: id, timestamp, duration (µs), args, client, name.
const lines = log.split('\r\n');
let max = 0, evals = 0;
for (let i = 0; i + 3 < lines.length; i++) {
  if (lines[i] === '*6' && lines[i + 1].startsWith(':') && lines[i + 2].startsWith(':') && lines[i + 3].startsWith(':')) {
    const d = Number(lines[i + 3].slice(1));
    const name = lines[i + 5] ?? '';
    if (/evalsha/i.test(lines[i + 6] ?? '') || /evalsha/i.test(name)) evals++;
    if (d > max) max = d;
  }
}
console.log(JSON.stringify({ historyMessages: r.history.length, joinMs: took, longestRedisCommandUs: max, evalsha: evals }));
for (const n of cluster.nodes) n.kill('SIGKILL');
cluster.redis.kill();
process.exit(0);
