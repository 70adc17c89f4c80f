// Test client for the e2e-chat server, driven by run.mjs through `window.chat`.
//
// It talks to the server the way the stock React frontend does (socket.io-client
// 4.8 with the same options and the same event payloads, WebCrypto for the
// keys) so that a real browser proves the server works with that frontend:
// CORS on fetch and on the Socket.IO transports, the polling→WebSocket upgrade,
// the "id:key" / "ROOM:password:<base64>" session ids, and end-to-end
// encryption the server never sees through.
//
// Crypto, as in the stock frontend:
// - every user has an RSA-OAEP 2048 / SHA-256 key pair and publishes the
//   public key as base64 SPKI; the pair is kept in localStorage (with the
//   userId) so that a reload is the same user with the same key;
// - group mode: the creator makes one AES-GCM-256 key, wraps it for every
//   member with RSA-OAEP and sends `set-session-key`; messages are
//   base64(iv ‖ ciphertext) sent once to "all";
// - private and password mode: every message is sealed per peer in a hybrid
//   envelope (fresh AES-GCM key wrapped with the peer's RSA key) and sent once
//   per peer, all copies with one clientMessageId.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const SERVER = params.get('server') || 'http://localhost:3001';
  const TRANSPORTS = (params.get('transports') || 'websocket,polling').split(',').filter(Boolean);
  const TRY_ALL_TRANSPORTS = params.get('tryAllTransports') === '1';
  const WITH_CREDENTIALS = params.get('withCredentials') === '1';
  const LS = {
    userId: 'e2etest.userId',
    keyPair: 'e2etest.keyPair',
    name: 'e2etest.displayName',
    session: 'e2etest.session',
  };

  // ---------- encoding helpers ----------
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  function bytesToB64(bytes) {
    const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    let s = '';
    for (let i = 0; i < u8.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  function b64ToBytes(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function utf8ToB64(text) {
    return bytesToB64(enc.encode(text));
  }

  function randomHex(nBytes) {
    return Array.from(crypto.getRandomValues(new Uint8Array(nBytes)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function sha256Hex(bytes) {
    const digest = await crypto.subtle.digest('SHA-256', bytes);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------- crypto ----------
  const RSA = { name: 'RSA-OAEP', hash: 'SHA-256' };

  async function generateRsaKeyPair() {
    return crypto.subtle.generateKey(
      { ...RSA, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) },
      true,
      ['encrypt', 'decrypt'],
    );
  }

  async function importPeerKey(spkiB64) {
    return crypto.subtle.importKey('spki', b64ToBytes(spkiB64), RSA, false, ['encrypt']);
  }

  async function newAesKey() {
    return crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
  }

  async function wrapAesKey(aesKey, rsaPublicKey) {
    const raw = await crypto.subtle.exportKey('raw', aesKey);
    return bytesToB64(await crypto.subtle.encrypt(RSA, rsaPublicKey, raw));
  }

  async function unwrapAesKey(wrappedB64, rsaPrivateKey) {
    const raw = await crypto.subtle.decrypt(RSA, rsaPrivateKey, b64ToBytes(wrappedB64));
    return crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, true, ['encrypt', 'decrypt']);
  }

  // group format: base64(iv ‖ ciphertext)
  async function aesSeal(aesKey, text) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, aesKey, enc.encode(text)));
    const out = new Uint8Array(iv.length + ct.length);
    out.set(iv, 0);
    out.set(ct, iv.length);
    return bytesToB64(out);
  }

  async function aesOpen(aesKey, b64) {
    const all = b64ToBytes(b64);
    const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: all.subarray(0, 12) }, aesKey, all.subarray(12));
    return dec.decode(pt);
  }

  // private format: base64(JSON {v, key: RSA-wrapped fresh AES key, data: base64(iv ‖ ciphertext)})
  async function hybridSeal(peerRsaKey, text) {
    const k = await newAesKey();
    const envelope = { v: 1, key: await wrapAesKey(k, peerRsaKey), data: await aesSeal(k, text) };
    return utf8ToB64(JSON.stringify(envelope));
  }

  async function hybridOpen(rsaPrivateKey, b64) {
    const envelope = JSON.parse(dec.decode(b64ToBytes(b64)));
    const k = await unwrapAesKey(envelope.key, rsaPrivateKey);
    return aesOpen(k, envelope.data);
  }

  // ---------- state ----------
  const S = {
    userId: null,
    displayName: null,
    publicKeyB64: null,
    privateKey: null,
    socket: null,
    hasJoinedSession: false,
    session: null, // {link, eventSessionId, authKey, isCreator, roomId}
    joined: false,
    chatMode: null,
    groupKey: null,
    keyEvents: [], // where the group key came from, in order: 'created' | 'metadata' | 'key-available'
    peers: new Map(), // userId -> {publicKey, displayName, key: CryptoKey}
    wrappedFor: new Map(), // creator only: userId -> publicKey the group key was wrapped for
    encryptedKeys: {}, // creator only: everything sent with set-session-key
    setSessionKeyCount: 0,
    messages: new Map(), // id -> record
    order: [], // ids in arrival order
    typing: new Map(),
    activity: [],
    notifications: [],
    sessionErrors: [],
    eventErrors: [],
    connectErrors: [],
    httpErrors: [],
    events: [], // [name, summary] of every server event, for debugging
    sentFiles: [], // {name, size, sha256}
  };

  let chain = Promise.resolve();
  // Server events are handled strictly one after another (handlers await
  // WebCrypto, and order matters: session-metadata before public-keys-updated).
  function queued(name, fn) {
    return (payload) => {
      S.events.push([name, summarize(payload)]);
      chain = chain.then(() => fn(payload)).catch((err) => {
        console.error('handler', name, err);
        S.events.push(['handler-error', `${name}: ${err && err.message}`]);
      });
    };
  }

  function summarize(p) {
    try {
      const s = JSON.stringify(p);
      return s && s.length > 300 ? s.slice(0, 300) + '…' : s;
    } catch {
      return String(p);
    }
  }

  // ---------- identity ----------
  async function loadIdentity() {
    S.userId = localStorage.getItem(LS.userId);
    if (!S.userId) {
      S.userId = crypto.randomUUID();
      localStorage.setItem(LS.userId, S.userId);
    }
    S.displayName = localStorage.getItem(LS.name) || null;
    const stored = localStorage.getItem(LS.keyPair);
    if (stored) {
      const { spki, pkcs8 } = JSON.parse(stored);
      S.publicKeyB64 = spki;
      S.privateKey = await crypto.subtle.importKey('pkcs8', b64ToBytes(pkcs8), RSA, false, ['decrypt']);
    } else {
      const kp = await generateRsaKeyPair();
      const spki = bytesToB64(await crypto.subtle.exportKey('spki', kp.publicKey));
      const pkcs8 = bytesToB64(await crypto.subtle.exportKey('pkcs8', kp.privateKey));
      localStorage.setItem(LS.keyPair, JSON.stringify({ spki, pkcs8 }));
      S.publicKeyB64 = spki;
      S.privateKey = kp.privateKey;
    }
  }

  // ---------- link parsing, as the stock WebSocketService constructor ----------
  function parseLink(link) {
    if (!link.includes(':')) return { eventSessionId: link, authKey: undefined, roomId: link };
    const parts = link.split(':');
    const roomId = parts[0];
    if (parts[1] === 'password' && parts[2]) {
      // password-room joiner: the full string is the sessionId of every event
      return { eventSessionId: link, authKey: undefined, roomId };
    }
    if (parts.length === 3 && parts[2] && parts[2].length > 0) {
      // password-room creator: authKey is "<key>:<base64 password>"
      return { eventSessionId: roomId, authKey: `${parts[1]}:${parts[2]}`, roomId };
    }
    return { eventSessionId: roomId, authKey: parts[1], roomId };
  }

  // ---------- socket ----------
  function openSocket() {
    const opts = {
      transports: TRANSPORTS,
      reconnection: true,
      reconnectionDelay: 1000,
      reconnectionAttempts: 5,
      autoConnect: true,
    };
    if (TRY_ALL_TRANSPORTS) opts.tryAllTransports = true;
    if (WITH_CREDENTIALS) opts.withCredentials = true;
    const socket = io(SERVER, opts);
    S.socket = socket;

    socket.on('connect', () => {
      S.events.push(['connect', socket.io.engine.transport.name]);
      render();
      if (S.hasJoinedSession) rejoin();
    });
    socket.on('disconnect', (reason) => {
      S.events.push(['disconnect', reason]);
      if (reason === 'io client disconnect') S.hasJoinedSession = false;
      render();
    });
    socket.on('connect_error', (err) => {
      S.connectErrors.push(String((err && err.message) || err));
      S.events.push(['connect_error', String((err && err.message) || err)]);
      render();
    });
    socket.io.on('open', () => {
      socket.io.engine.on('upgrade', (t) => {
        S.events.push(['upgrade', t.name]);
        render();
      });
    });

    socket.on('public-keys-updated', queued('public-keys-updated', onPublicKeys));
    socket.on('messages-history', queued('messages-history', onHistory));
    socket.on('new-message', queued('new-message', (m) => addMessage(m, 'new-message')));
    socket.on('message-sent', queued('message-sent', (m) => addMessage(m, 'message-sent')));
    socket.on('user-joined', queued('user-joined', onUserJoined));
    socket.on('user-left', queued('user-left', onUserLeft));
    socket.on('session-error', queued('session-error', onSessionError));
    socket.on('event-error', queued('event-error', onEventError));
    socket.on('download-notification', queued('download-notification', onDownloadNotification));
    socket.on('session-metadata', queued('session-metadata', onSessionMetadata));
    socket.on('session-key-available', queued('session-key-available', onSessionKeyAvailable));
    socket.on('user-typing', queued('user-typing', ({ userId, displayName }) => {
      S.typing.set(userId, displayName || userId);
      render();
    }));
    socket.on('user-stopped-typing', queued('user-stopped-typing', ({ userId }) => {
      S.typing.delete(userId);
      render();
    }));
    return socket;
  }

  function rejoin() {
    // The stock client rejoins on every `connect` with publicKey: null.
    const s = S.session;
    S.socket.emit('join-session', {
      sessionId: s.eventSessionId,
      userId: S.userId,
      displayName: S.displayName,
      publicKey: null,
      isCreator: s.isCreator,
      authKey: s.authKey,
    });
  }

  let joinWaiter = null;

  function join(link, { isCreator = false, displayName, timeoutMs = 15000 } = {}) {
    if (displayName) {
      S.displayName = displayName;
      localStorage.setItem(LS.name, displayName);
    }
    closeSocket();
    resetSessionState();
    if (!isCreator) S.groupKey = null;
    const parsed = parseLink(link);
    S.session = { link, isCreator, ...parsed };
    const result = new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, error: 'TIMEOUT', message: `no session-metadata within ${timeoutMs} ms` }), timeoutMs);
      joinWaiter = (r) => {
        clearTimeout(timer);
        joinWaiter = null;
        resolve(r);
      };
    });
    const socket = openSocket();
    // As the stock client: ask for keys before joining (answered with []),
    // then join; both are buffered until the connection is up.
    socket.emit('get-public-keys', { sessionId: S.session.eventSessionId, userId: S.userId });
    socket.emit('join-session', {
      sessionId: S.session.eventSessionId,
      userId: S.userId,
      displayName: S.displayName,
      publicKey: S.publicKeyB64,
      isCreator,
      authKey: S.session.authKey,
    });
    S.hasJoinedSession = true;
    render();
    return result;
  }

  function resetSessionState() {
    S.joined = false;
    S.chatMode = null;
    S.peers.clear();
    S.messages.clear();
    S.order.length = 0;
    S.typing.clear();
  }

  function closeSocket() {
    if (S.socket) {
      S.socket.removeAllListeners();
      S.socket.io.removeAllListeners && S.socket.io.removeAllListeners();
      S.socket.disconnect();
      S.socket = null;
    }
    S.hasJoinedSession = false;
  }

  // ---------- handlers ----------
  async function onSessionMetadata({ chatMode, encryptedSessionKey }) {
    S.chatMode = chatMode;
    if (encryptedSessionKey) {
      S.groupKey = await unwrapAesKey(encryptedSessionKey, S.privateKey);
      S.keyEvents.push('metadata');
    } else if (chatMode === 'group' && S.session.isCreator && !S.groupKey) {
      S.groupKey = await newAesKey();
      S.keyEvents.push('created');
    }
    if (!S.joined) {
      S.joined = true;
      localStorage.setItem(LS.session, JSON.stringify({ link: S.session.link, isCreator: S.session.isCreator }));
    }
    await redecryptAll();
    if (joinWaiter) joinWaiter({ ok: true, chatMode });
    render();
  }

  async function onSessionKeyAvailable({ encryptedKeys }) {
    const mine = encryptedKeys && encryptedKeys[S.userId];
    if (!mine) return;
    S.groupKey = await unwrapAesKey(mine, S.privateKey);
    S.keyEvents.push('key-available');
    await redecryptAll();
    render();
  }

  async function onPublicKeys(keys) {
    const list = Array.isArray(keys) ? keys : [];
    S.peers.clear();
    for (const k of list) {
      if (k.userId === S.userId) continue;
      S.peers.set(k.userId, { publicKey: k.publicKey, displayName: k.displayName, key: await importPeerKey(k.publicKey) });
    }
    if (S.session && S.session.isCreator && S.chatMode === 'group' && S.groupKey) {
      // Wrap the group key for every member it was not yet wrapped for.
      const all = list.filter((k) => k.publicKey);
      const fresh = all.filter((k) => S.wrappedFor.get(k.userId) !== k.publicKey);
      for (const k of fresh) {
        const rsa = k.userId === S.userId ? await importPeerKey(S.publicKeyB64) : S.peers.get(k.userId).key;
        S.encryptedKeys[k.userId] = await wrapAesKey(S.groupKey, rsa);
        S.wrappedFor.set(k.userId, k.publicKey);
      }
      if (fresh.length > 0) scheduleSetSessionKey(KEY_DEBOUNCE_MS);
    }
    render();
  }

  // Several members joining at once give a burst of key updates: the creator
  // sends one set-session-key for the lot, and again after RATE_LIMITED.
  const KEY_DEBOUNCE_MS = 100;
  let setKeyTimer = null;
  function scheduleSetSessionKey(delayMs) {
    if (setKeyTimer) return;
    setKeyTimer = setTimeout(() => {
      setKeyTimer = null;
      if (!S.socket || !S.session) return;
      S.socket.emit('set-session-key', { sessionId: S.session.eventSessionId, encryptedKeys: { ...S.encryptedKeys } });
      S.setSessionKeyCount++;
      render();
    }, delayMs);
  }

  function onEventError(e) {
    S.eventErrors.push(e);
    if (e && e.event === 'set-session-key' && e.error === 'RATE_LIMITED') {
      scheduleSetSessionKey((Number(e.retryAfterMs) || 500) + 50);
    }
    render();
  }

  async function onHistory(messages) {
    for (const m of Array.isArray(messages) ? messages : []) await addMessage(m, 'history');
  }

  async function onUserJoined({ userId, displayName }) {
    S.activity.push(`${displayName || userId} joined`);
    // as the stock client: fetch the keys again when someone joins
    S.socket.emit('get-public-keys', { sessionId: S.session.eventSessionId, userId: S.userId });
    render();
  }

  async function onUserLeft({ userId, displayName }) {
    S.activity.push(`${displayName || userId} left`);
    S.typing.delete(userId);
    render();
  }

  async function onSessionError({ error, message }) {
    S.sessionErrors.push({ error, message });
    // The stock client shows an alert and leaves the session.
    localStorage.removeItem(LS.session);
    closeSocket();
    S.session = null;
    if (joinWaiter) joinWaiter({ ok: false, error, message });
    render();
  }

  async function onDownloadNotification({ downloadedBy, fileName }) {
    S.notifications.push(`📥 ${downloadedBy} downloaded your file: ${fileName}`);
    render();
  }

  // ---------- messages ----------
  async function addMessage(m, via) {
    if (!m || typeof m.id !== 'string') return;
    let rec = S.messages.get(m.id);
    if (rec) {
      rec.seen[via] = (rec.seen[via] || 0) + 1;
      // the sender's message-sent carries the plaintext echo
      if (via === 'message-sent' && typeof m.originalContent === 'string') rec.raw.originalContent = m.originalContent;
    } else {
      rec = {
        id: m.id,
        raw: m,
        via,
        seen: { [via]: 1 },
        hasOriginalContent: Object.prototype.hasOwnProperty.call(m, 'originalContent'),
        text: null,
        status: 'pending',
      };
      S.messages.set(m.id, rec);
      S.order.push(m.id);
    }
    await decryptRecord(rec);
    render();
  }

  async function decryptRecord(rec) {
    const m = rec.raw;
    try {
      if (m.from === S.userId) {
        if (typeof m.originalContent === 'string') {
          rec.text = m.originalContent;
          rec.status = 'echo';
        } else if (S.chatMode === 'group' && S.groupKey) {
          rec.text = await aesOpen(S.groupKey, m.encrypted);
          rec.status = 'decrypted';
        } else {
          // the stock client cannot decrypt its own private messages
          rec.text = 'Sending...';
          rec.status = 'own-unreadable';
        }
      } else if (S.chatMode === 'group') {
        if (!S.groupKey) {
          rec.text = '[waiting for the group key]';
          rec.status = 'pending';
          return;
        }
        rec.text = await aesOpen(S.groupKey, m.encrypted);
        rec.status = 'decrypted';
      } else if (S.chatMode) {
        rec.text = await hybridOpen(S.privateKey, m.encrypted);
        rec.status = 'decrypted';
      } else {
        rec.text = '[no session metadata yet]';
        rec.status = 'pending';
      }
    } catch (err) {
      rec.text = `[cannot decrypt: ${err && err.name}]`;
      rec.status = 'error';
    }
    if (rec.text && rec.text.startsWith('[FILE]') && rec.status !== 'pending' && rec.status !== 'error') {
      await prepareFile(rec);
    }
  }

  async function redecryptAll() {
    for (const id of S.order) {
      const rec = S.messages.get(id);
      if (rec.status === 'pending' || rec.status === 'error') await decryptRecord(rec);
    }
  }

  async function prepareFile(rec) {
    if (rec.file) return;
    const meta = JSON.parse(rec.text.slice('[FILE]'.length));
    const blob = await (await fetch(meta.dataUrl)).blob();
    const bytes = new Uint8Array(await blob.arrayBuffer());
    rec.file = {
      name: meta.name,
      size: bytes.length,
      declaredSize: meta.size,
      sha256: await sha256Hex(bytes),
      url: URL.createObjectURL(blob),
    };
  }

  function messageType(content) {
    if (content.startsWith('[IMAGE]')) return 'image';
    if (content.startsWith('[FILE]')) return 'file';
    return 'text';
  }

  async function waitConnected(timeoutMs = 10000) {
    const t0 = Date.now();
    while (!(S.socket && S.socket.connected)) {
      if (Date.now() - t0 > timeoutMs) throw new Error('Socket not connected');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async function send(content) {
    if (!S.session || !S.joined) throw new Error('not in a session');
    await waitConnected();
    await chain; // everything received so far (keys!) is processed
    const type = messageType(content);
    const clientMessageId = `msg-${Date.now()}-${randomHex(6)}`;
    const base = { sessionId: S.session.eventSessionId, from: S.userId, originalContent: content, type, clientMessageId };
    if (S.chatMode === 'group') {
      if (!S.groupKey) throw new Error('no group key yet');
      S.socket.emit('send-message', { ...base, to: 'all', encrypted: await aesSeal(S.groupKey, content) });
      return { clientMessageId, copies: 1 };
    }
    if (S.peers.size === 0) throw new Error('no peer keys yet');
    let copies = 0;
    for (const [peerId, peer] of S.peers) {
      S.socket.emit('send-message', { ...base, to: peerId, encrypted: await hybridSeal(peer.key, content) });
      copies++;
    }
    return { clientMessageId, copies };
  }

  async function sendMany(prefix, n) {
    for (let i = 0; i < n; i++) await send(`${prefix}${i}`);
  }

  async function sendFileFromInput() {
    const input = document.getElementById('file');
    const file = input.files && input.files[0];
    if (!file) throw new Error('no file selected');
    const dataUrl = await new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
    const sha256 = await sha256Hex(await file.arrayBuffer());
    S.sentFiles.push({ name: file.name, size: file.size, sha256 });
    const content = '[FILE]' + JSON.stringify({ name: file.name, type: file.type, size: file.size, dataUrl });
    const r = await send(content);
    return { ...r, name: file.name, size: file.size, sha256, dataUrlLength: dataUrl.length };
  }

  function notifyDownload(rec) {
    S.socket.emit('file-downloaded', {
      sessionId: S.session.eventSessionId,
      downloadedBy: S.displayName || S.userId,
      senderId: rec.raw.from,
      fileName: rec.file.name,
      timestamp: Date.now(),
    });
  }

  function typing() {
    if (!S.socket || !S.socket.connected) return;
    S.socket.emit('typing', { sessionId: S.session.eventSessionId, userId: S.userId, displayName: S.displayName });
  }

  function stoppedTyping() {
    if (!S.socket || !S.socket.connected) return;
    S.socket.emit('stopped-typing', { sessionId: S.session.eventSessionId, userId: S.userId, displayName: S.displayName });
  }

  function leave() {
    // as the stock clearSession()
    if (S.socket && S.socket.connected && S.session) {
      S.socket.emit('leave-session', { sessionId: S.session.eventSessionId, userId: S.userId });
    }
    localStorage.removeItem(LS.session);
    closeSocket();
    S.session = null;
    S.joined = false;
    render();
  }

  // ---------- HTTP ----------
  async function reserve(sessionId, authKey, chatMode) {
    try {
      const res = await fetch(`${SERVER}/api/reserve-session`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ sessionId, authKey, chatMode }),
      });
      let body = null;
      try {
        body = await res.json();
      } catch {
        body = null;
      }
      if (!res.ok) S.httpErrors.push(`reserve-session: HTTP ${res.status} ${JSON.stringify(body)}`);
      render();
      return { ok: res.ok, status: res.status, body };
    } catch (err) {
      S.httpErrors.push(`reserve-session: ${err.name}: ${err.message}`);
      render();
      return { ok: false, status: 0, fetchError: `${err.name}: ${err.message}` };
    }
  }

  async function create({ mode = 'group', password, displayName } = {}) {
    const roomId = `t${randomHex(8)}`;
    const key = randomHex(16);
    const pw = password === undefined ? undefined : utf8ToB64(password);
    const authKey = mode === 'password' ? `${key}:${pw}` : key;
    const reserved = await reserve(roomId, authKey, mode);
    if (!reserved.ok) return { ok: false, reserved };
    S.groupKey = null;
    S.wrappedFor.clear();
    S.encryptedKeys = {};
    if (mode === 'group') {
      S.groupKey = await newAesKey();
      S.keyEvents.push('created');
    }
    const creatorLink = mode === 'password' ? `${roomId}:${key}:${pw}` : `${roomId}:${key}`;
    const joined = await join(creatorLink, { isCreator: true, displayName });
    return { ok: joined.ok, reserved, joined, roomId, link: `${roomId}:${key}` };
  }

  function joinPassword(roomId, password, opts) {
    return join(`${roomId}:password:${utf8ToB64(password)}`, opts);
  }

  async function corsProbe() {
    // A credentialed cross-origin fetch only succeeds with an exact
    // Access-Control-Allow-Origin and Access-Control-Allow-Credentials: true.
    try {
      const res = await fetch(`${SERVER}/health`, { credentials: 'include' });
      return { ok: res.ok, status: res.status, body: await res.json() };
    } catch (err) {
      S.httpErrors.push(`GET /health (credentials): ${err.name}: ${err.message}`);
      render();
      return { ok: false, fetchError: `${err.name}: ${err.message}` };
    }
  }

  // Opens a bare Socket.IO connection (no session) and reports whether it connected.
  function probeConnect({ transports, timeoutMs = 5000 } = {}) {
    return new Promise((resolve) => {
      const s = io(SERVER, { transports: transports || TRANSPORTS, reconnection: false, forceNew: true, withCredentials: WITH_CREDENTIALS });
      const done = (r) => {
        clearTimeout(timer);
        s.removeAllListeners();
        s.disconnect();
        resolve(r);
      };
      const timer = setTimeout(() => done({ connected: false, error: 'timeout' }), timeoutMs);
      s.on('connect', () => done({ connected: true, transport: s.io.engine.transport.name }));
      s.on('connect_error', (err) => done({ connected: false, error: String((err && err.message) || err), description: String((err && err.description && (err.description.message || err.description)) || '') }));
    });
  }

  // ---------- view ----------
  let renderScheduled = false;
  function render() {
    if (renderScheduled) return;
    renderScheduled = true;
    queueMicrotask(() => {
      renderScheduled = false;
      renderNow();
    });
  }

  function nameOf(userId, fallback) {
    if (userId === S.userId) return S.displayName || 'me';
    const p = S.peers.get(userId);
    return (p && p.displayName) || fallback || userId.slice(0, 8);
  }

  function li(text) {
    const e = document.createElement('li');
    e.textContent = text;
    return e;
  }

  function renderNow() {
    document.getElementById('me').textContent = `— ${S.displayName || '?'} (${(S.userId || '').slice(0, 8)})`;
    const sock = S.socket;
    const transport = sock && sock.io.engine && sock.io.engine.transport ? sock.io.engine.transport.name : '-';
    document.getElementById('status').textContent =
      `origin ${location.origin} → ${SERVER} | ${sock && sock.connected ? 'connected' : 'disconnected'} via ${transport} | transports [${TRANSPORTS}]`;
    document.getElementById('session').textContent = S.session
      ? `session ${S.session.roomId} | mode ${S.chatMode || '?'} | ${S.session.isCreator ? 'creator' : 'joiner'} | ${S.joined ? 'joined' : 'joining'} | group key: ${S.groupKey ? 'yes' : 'no'} | peers: ${[...S.peers.values()].map((p) => p.displayName).join(', ') || '-'}`
      : 'no session';

    const box = document.getElementById('messages');
    box.textContent = '';
    for (const id of S.order) {
      const rec = S.messages.get(id);
      const div = document.createElement('div');
      const own = rec.raw.from === S.userId;
      div.className = `msg${own ? ' own' : ''}${rec.status === 'pending' ? ' pending' : ''}`;
      div.dataset.id = id;
      div.dataset.from = rec.raw.from;
      div.dataset.status = rec.status;
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = `${nameOf(rec.raw.from, rec.raw.senderDisplayName)}:`;
      div.appendChild(who);
      const text = document.createElement('span');
      text.className = 'text';
      if (rec.file) {
        const a = document.createElement('a');
        a.className = 'file-link';
        a.href = rec.file.url;
        a.download = rec.file.name;
        a.dataset.sha256 = rec.file.sha256;
        a.dataset.size = String(rec.file.size);
        a.textContent = `📎 ${rec.file.name} (${rec.file.size} bytes, sha256 ${rec.file.sha256.slice(0, 12)}…)`;
        if (!own) a.addEventListener('click', () => notifyDownload(rec));
        text.appendChild(a);
      } else {
        text.textContent = rec.text;
      }
      div.appendChild(text);
      box.appendChild(div);
    }

    const typers = [...S.typing.values()];
    document.getElementById('typing').textContent = typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : '';

    const n = document.getElementById('notifications');
    n.replaceChildren(...S.notifications.map(li));
    const a = document.getElementById('activity');
    a.replaceChildren(...S.activity.map(li));
    const e = document.getElementById('errors');
    e.replaceChildren(
      ...S.sessionErrors.map((x) => li(`session-error ${x.error}: ${x.message}`)),
      ...S.eventErrors.map((x) => li(`event-error ${x.event} ${x.error}: ${x.message}`)),
      ...S.connectErrors.map((x) => li(`connect_error: ${x}`)),
      ...S.httpErrors.map((x) => li(x)),
    );
  }

  // ---------- API for the runner ----------
  function state() {
    const sock = S.socket;
    return {
      userId: S.userId,
      displayName: S.displayName,
      connected: !!(sock && sock.connected),
      transport: sock && sock.io.engine && sock.io.engine.transport ? sock.io.engine.transport.name : null,
      joined: S.joined,
      session: S.session && { ...S.session },
      chatMode: S.chatMode,
      hasGroupKey: !!S.groupKey,
      keyEvents: [...S.keyEvents],
      setSessionKeyCount: S.setSessionKeyCount,
      peers: [...S.peers.entries()].map(([userId, p]) => ({ userId, displayName: p.displayName })),
      messages: S.order.map((id) => {
        const r = S.messages.get(id);
        return {
          id,
          from: r.raw.from,
          to: r.raw.to,
          type: r.raw.type,
          senderDisplayName: r.raw.senderDisplayName,
          timestamp: r.raw.timestamp,
          via: r.via,
          seen: { ...r.seen },
          hasOriginalContent: r.hasOriginalContent,
          status: r.status,
          text: r.file ? null : r.text,
          file: r.file ? { name: r.file.name, size: r.file.size, sha256: r.file.sha256 } : null,
        };
      }),
      typing: [...S.typing.values()],
      activity: [...S.activity],
      notifications: [...S.notifications],
      sessionErrors: [...S.sessionErrors],
      eventErrors: [...S.eventErrors],
      connectErrors: [...S.connectErrors],
      httpErrors: [...S.httpErrors],
      sentFiles: [...S.sentFiles],
    };
  }

  const ready = (async () => {
    await loadIdentity();
    render();
    // A reload rejoins the stored session with the same userId and key pair.
    const stored = localStorage.getItem(LS.session);
    if (stored) {
      const { link, isCreator } = JSON.parse(stored);
      await join(link, { isCreator });
    }
  })();

  window.chat = {
    ready,
    create,
    join,
    joinPassword,
    send,
    sendMany,
    sendFileFromInput,
    typing,
    stoppedTyping,
    leave,
    reserve,
    corsProbe,
    probeConnect,
    state,
    events: () => S.events.slice(),
    idle: () => chain,
  };
})();
