// Helpers of the Docker suite (run by scripts/test-docker.sh against the
// compose cluster it started): the cluster's containers, what they logged,
// their metrics read on the compose network, and a socket.io-client 4.8
// member that reaches the balancer from a client address of its own.
//
// Docker's port publisher connects to the balancer from the network's
// gateway, so each member says its address in X-Forwarded-For and the
// balancer (with the CI realip lines, scripts/test-docker.sh) hashes that.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this suite through scripts/test-docker.sh`);
  return value;
}

/** The balancer's published address, e.g. http://127.0.0.1:41234. */
export const LB_URL = required('E2E_LB_URL');
/** Compose service → container id: chat1, chat2, chat3, lb. */
export const CONTAINERS = Object.fromEntries(required('E2E_CONTAINERS').split(',').map((kv) => kv.split('=')));
/** The compose network the nodes and the balancer share. */
export const NETWORK = required('E2E_NETWORK');
/** An image with bash, for a look from inside the compose network. */
const PROBE_IMAGE = process.env.E2E_PROBE_IMAGE || 'debian:bookworm-slim';
export const NODES = ['chat1', 'chat2', 'chat3'];

/** Wait for an expected event. */
export const EVENT_TIMEOUT_MS = 15000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function docker(...args) {
  return execFileSync('docker', args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** What a container wrote to stdout so far, as lines. */
export function stdoutLines(service) {
  return docker('logs', CONTAINERS[service]).split('\n');
}

/** Compose service of each node, by its address on the compose network. */
export function nodesByAddress() {
  const out = new Map();
  for (const node of NODES) {
    const ip = docker('inspect', '-f', `{{(index .NetworkSettings.Networks "${NETWORK}").IPAddress}}`, CONTAINERS[node]).trim();
    assert.match(ip, /^\d+\.\d+\.\d+\.\d+$/, `address of ${node} on ${NETWORK}`);
    out.set(ip, node);
  }
  return out;
}

/**
 * The balancer's access log (deploy/nginx.conf's `chat` format) as
 * `{client, method, path, status, node}`; `node` is the compose service the
 * request went to (undefined when it reached none).
 */
export function balancerLog() {
  const nodes = nodesByAddress();
  const re = /^(\S+) \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d+) \d+ \S+ upstream=(\S+)$/;
  const entries = [];
  for (const line of stdoutLines('lb')) {
    const m = re.exec(line);
    if (!m) continue;
    const upstream = m[5].split(':')[0];
    entries.push({ client: m[1], method: m[2], path: m[3], status: Number(m[4]), node: nodes.get(upstream), line });
  }
  return entries;
}

/**
 * `GET /metrics` of every node, fetched from a container on the compose
 * network (the nodes publish no port): node → Prometheus text.
 */
export function scrapeNodes() {
  const script = `
    for host in "$@"; do
      echo "### $host"
      exec 3<>"/dev/tcp/$host/9464" || exit 1
      printf 'GET /metrics HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' "$host" >&3
      cat <&3
      exec 3<&-
    done`;
  const out = docker('run', '--rm', '--network', NETWORK, PROBE_IMAGE, 'bash', '-c', script, '_', ...NODES);
  const texts = {};
  for (const part of out.split(/^### /m).slice(1)) {
    const host = part.slice(0, part.indexOf('\n'));
    const response = part.slice(part.indexOf('\n') + 1);
    const [head, ...body] = response.split(/\r\n\r\n/);
    assert.match(head, /^HTTP\/1\.[01] 200/, `GET http://${host}:9464/metrics from the compose network: ${head}`);
    texts[host] = body.join('\r\n\r\n');
  }
  assert.deepEqual(Object.keys(texts).sort(), NODES, 'every node was scraped');
  return texts;
}

/** Prometheus text → {samples: Map('name{a="x"}' → value), help: Set, types: Map}. */
export function parseMetrics(text) {
  const samples = new Map();
  const help = new Set();
  const types = new Map();
  for (const line of text.split('\n')) {
    let m;
    if ((m = /^# HELP (\S+) \S/.exec(line))) help.add(m[1]);
    else if ((m = /^# TYPE (\S+) (\S+)/.exec(line))) types.set(m[1], m[2]);
    else if ((m = /^([A-Za-z_:][\w:]*)(\{[^}]*\})? (\S+)/.exec(line))) samples.set(m[1] + (m[2] || ''), Number(m[3]));
  }
  return { samples, help, types };
}

/** Every `member joined` log line's session tag, per node. */
export function joinTags() {
  const out = {};
  for (const node of NODES) {
    out[node] = stdoutLines(node)
      .filter((l) => l.includes('member joined'))
      .map((l) => /session=([0-9a-f]{8})/.exec(l)?.[1]);
  }
  return out;
}

/** GET `path` through the balancer as a client at `address`. */
export async function get(path, address) {
  const res = await fetch(`${LB_URL}${path}`, {
    headers: { 'X-Forwarded-For': address },
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, text: await res.text() };
}

/** POST /api/reserve-session through the balancer; asserts 200. */
export async function reserve(address, body) {
  const res = await fetch(`${LB_URL}/api/reserve-session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Forwarded-For': address },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200, `reserve: ${res.status} ${await res.text()}`);
}

export const newSessionId = () => 'd' + randomBytes(8).toString('hex');
export const newKey = () => randomBytes(12).toString('base64url');

/**
 * A member of a conversation: a socket.io-client socket to the balancer
 * (no reconnection, so a request that reaches the wrong node fails the
 * test) that records what it receives.
 */
export class Member {
  constructor(name, address, transports) {
    this.name = name;
    this.address = address;
    this.userId = crypto.randomUUID();
    this.publicKey = `pk-${name}-${randomBytes(8).toString('hex')}`;
    this.queues = new Map();
    this.received = [];
    this.disconnectReason = null;
    this.connectError = null;
    this.socket = io(LB_URL, {
      transports,
      forceNew: true,
      reconnection: false,
      timeout: 10000,
      extraHeaders: { 'X-Forwarded-For': address },
    });
    this.socket.onAny((event, payload) => {
      this.received.push(event);
      if (!this.queues.has(event)) this.queues.set(event, []);
      this.queues.get(event).push(payload);
    });
    this.socket.on('connect_error', (err) => (this.connectError = err));
    this.socket.on('disconnect', (reason) => (this.disconnectReason = reason));
  }

  /** The Engine.IO transport in use now: `polling` or `websocket`. */
  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  async until(what, pred, timeout = EVENT_TIMEOUT_MS) {
    const deadline = Date.now() + timeout;
    while (!pred()) {
      if (this.connectError) throw new Error(`${this.name}: connect_error ${this.connectError.message}`);
      if (this.disconnectReason) throw new Error(`${this.name}: disconnected (${this.disconnectReason}) waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${what} within ${timeout} ms; got [${this.received}]`);
      await sleep(20);
    }
  }

  async connected() {
    await this.until('connection', () => this.socket.connected);
  }

  /** The next unconsumed payload of `event`. */
  async next(event) {
    await this.until(`"${event}"`, () => (this.queues.get(event) || []).length > 0);
    return this.queues.get(event).shift();
  }

  /** Joins `sessionId` and waits for the join's three answers. */
  async join(sessionId, authKey, isCreator) {
    this.socket.emit('join-session', {
      sessionId,
      userId: this.userId,
      displayName: this.name,
      publicKey: this.publicKey,
      isCreator,
      authKey,
    });
    await Promise.all(['messages-history', 'session-metadata', 'public-keys-updated'].map((e) => this.next(e)));
  }

  send(sessionId, to, encrypted) {
    const clientMessageId = randomBytes(6).toString('hex');
    this.socket.emit('send-message', { sessionId, from: this.userId, to, encrypted, type: 'text', clientMessageId });
    return clientMessageId;
  }

  close() {
    this.socket.close();
  }
}
