// Reference server for the benchmark: what users run today if they keep the
// original Node.js server. Express + socket.io 4.8 with the original's
// settings (default `ws` engine, maxHttpBufferSize 20 MB, ping 25 s / 60 s,
// CORS), and the original's naive design: sessions in a Map, every message
// kept in an array, `socket.to(room).emit(...)` for broadcasts.
//
// It implements the flows the load generator drives (reserve, join with the
// "id:key" suffix, broadcast and direct send-message, history,
// public-keys-updated, leave/disconnect) and nothing of the Rust server's
// hardening. Not for production.

'use strict';

const express = require('express');
const http = require('http');
const cors = require('cors');
const { Server } = require('socket.io');

const PORT = Number(process.env.PORT || 3001);
const HOST = process.env.HOST || '127.0.0.1';
const CLIENT_URL = process.env.CLIENT_URL || 'http://localhost:5173';
const DEBUG = process.env.DEBUG === 'true';

const app = express();
app.use(cors({ origin: CLIENT_URL, credentials: true }));
app.use(express.json({ limit: '20mb' }));

const server = http.createServer(app);
const io = new Server(server, {
  cors: { origin: CLIENT_URL, methods: ['GET', 'POST'], credentials: true },
  maxHttpBufferSize: 20 * 1024 * 1024,
  pingInterval: 25000,
  pingTimeout: 60000,
});

// sessionId -> { id, authKey, chatMode, reserved, creator, users: Map(userId ->
// {socketId, displayName, joinedAt}), publicKeys: Map(userId -> {...}),
// messages: [], messageIds: Set, encryptedSessionKeys, createdAt, lastActivity }
const sessions = new Map();
// socket.id -> { sessionId, userId }
const socketUsers = new Map();

const INACTIVE_MS = 30 * 60 * 1000;
setInterval(() => {
  const now = Date.now();
  for (const [id, s] of sessions) {
    if (now - s.lastActivity > INACTIVE_MS) sessions.delete(id);
  }
}, 5 * 60 * 1000).unref();

function newSession(id, authKey, chatMode, reserved) {
  const now = Date.now();
  return {
    id,
    authKey,
    chatMode: chatMode || 'group',
    reserved,
    creator: null,
    users: new Map(),
    publicKeys: new Map(),
    messages: [],
    messageIds: new Set(),
    encryptedSessionKeys: null,
    createdAt: now,
    lastActivity: now,
  };
}

app.get('/health', (req, res) => {
  res.json({
    status: 'ok',
    uptime: process.uptime(),
    activeSessions: sessions.size,
    sessions: sessions.size,
    timestamp: Date.now(),
  });
});

app.post('/api/reserve-session', (req, res) => {
  const { sessionId, authKey, chatMode } = req.body || {};
  if (!sessionId || !authKey) {
    return res.status(400).json({ error: 'Missing sessionId or authKey' });
  }
  if (sessions.has(sessionId)) {
    return res.status(409).json({ error: 'Session already exists' });
  }
  sessions.set(sessionId, newSession(sessionId, authKey, chatMode, true));
  res.json({
    success: true,
    sessionId,
    chatMode: chatMode || 'group',
    message: 'Session reserved successfully',
  });
});

function publicKeysOf(session) {
  return Array.from(session.publicKeys.values());
}

function removeUser(socket, sessionId, userId) {
  const session = sessions.get(sessionId);
  if (!session) return;
  const user = session.users.get(userId);
  if (!user || user.socketId !== socket.id) return;
  session.users.delete(userId);
  session.publicKeys.delete(userId);
  socket.to(sessionId).emit('user-left', {
    userId,
    displayName: user.displayName,
    timestamp: Date.now(),
  });
  io.to(sessionId).emit('public-keys-updated', publicKeysOf(session));
  // The original deleted a session as soon as its last member left.
  if (session.users.size === 0) sessions.delete(sessionId);
}

io.on('connection', (socket) => {
  if (DEBUG) console.log('connected', socket.id);

  socket.on('join-session', (data) => {
    const { sessionId, userId, displayName, publicKey, isCreator, authKey } = data || {};
    if (typeof sessionId !== 'string' || typeof userId !== 'string') return;
    const parts = sessionId.split(':');
    const id = parts[0];
    let offered = authKey;
    let password = null;
    if (parts[1] === 'password' && parts.length > 2) password = parts[2];
    else if (!offered) offered = parts[1];

    let session = sessions.get(id);
    if (!session && !isCreator) {
      return socket.emit('session-error', {
        error: 'SESSION_NOT_FOUND',
        message: 'Session not found. Please check the session link.',
      });
    }
    if (isCreator) {
      if (!session) {
        session = newSession(id, offered, 'group', false);
        sessions.set(id, session);
      } else if (session.authKey && session.authKey !== offered) {
        return socket.emit('session-error', {
          error: 'INVALID_KEY',
          message: 'Session key mismatch. This should not happen.',
        });
      }
      session.reserved = false;
      session.creator = userId;
    } else if (session.authKey) {
      if (session.reserved) {
        return socket.emit('session-error', {
          error: 'SESSION_NOT_ACTIVE',
          message: 'Room not active yet. Please wait for the creator to join first.',
        });
      }
      if (session.chatMode === 'password' && password !== null) {
        if (session.authKey.split(':')[1] !== password) {
          return socket.emit('session-error', {
            error: 'INVALID_PASSWORD',
            message: 'Incorrect password. Please check and try again.',
          });
        }
      } else if (session.authKey !== offered) {
        return socket.emit('session-error', {
          error: 'INVALID_KEY',
          message: 'Invalid authentication key. Please check your link and try again.',
        });
      }
    }
    if (session.chatMode !== 'group' && session.users.size >= 2 && !session.users.has(userId)) {
      return socket.emit('session-error', {
        error: 'SESSION_FULL',
        message: 'This room is full. Only 2 members allowed.',
      });
    }

    socket.join(id);
    socketUsers.set(socket.id, { sessionId: id, userId });
    const existing = session.users.get(userId);
    const joinedAt = existing ? existing.joinedAt : Date.now();
    session.users.set(userId, { socketId: socket.id, displayName, joinedAt });
    if (publicKey) {
      session.publicKeys.set(userId, { userId, publicKey, displayName, joinedAt });
    }
    session.lastActivity = Date.now();
    if (!existing) {
      socket.to(id).emit('user-joined', { userId, displayName, timestamp: Date.now() });
    }
    socket.emit(
      'messages-history',
      session.messages.filter(
        (m) => !m.to || m.to === 'all' || m.to === userId || m.from === userId,
      ),
    );
    const metadata = { chatMode: session.chatMode };
    if (session.encryptedSessionKeys && session.encryptedSessionKeys[userId]) {
      metadata.encryptedSessionKey = session.encryptedSessionKeys[userId];
    }
    socket.emit('session-metadata', metadata);
    io.to(id).emit('public-keys-updated', publicKeysOf(session));
  });

  socket.on('send-message', (data) => {
    const { sessionId, from, to, encrypted, originalContent, type, clientMessageId } = data || {};
    if (typeof sessionId !== 'string') return;
    const id = sessionId.split(':')[0];
    const session = sessions.get(id);
    if (!session) return;
    const sender = session.users.get(from);
    const message = {
      id: clientMessageId || `${Date.now()}-${Math.random().toString(36).slice(2, 11)}`,
      from,
      to,
      encrypted,
      timestamp: Date.now(),
      type: type || 'text',
      senderDisplayName: sender ? sender.displayName : undefined,
    };
    const isNew = !session.messageIds.has(message.id);
    if (isNew) {
      session.messageIds.add(message.id);
      session.messages.push(message);
    }
    session.lastActivity = Date.now();
    if (!to || to === 'all') {
      socket.to(id).emit('new-message', message);
    } else {
      const target = session.users.get(to);
      if (target) io.to(target.socketId).emit('new-message', message);
    }
    if (isNew) socket.emit('message-sent', { ...message, originalContent });
  });

  socket.on('get-public-keys', (data) => {
    const { sessionId, userId } = data || {};
    if (typeof sessionId !== 'string') return;
    const session = sessions.get(sessionId.split(':')[0]);
    const keys = session ? publicKeysOf(session).filter((k) => k.userId !== userId) : [];
    socket.emit('public-keys-updated', keys);
  });

  socket.on('save-public-key', (data) => {
    const { sessionId, userId, publicKey, displayName } = data || {};
    if (typeof sessionId !== 'string') return;
    const id = sessionId.split(':')[0];
    const session = sessions.get(id);
    if (!session) return;
    const user = session.users.get(userId);
    session.publicKeys.set(userId, {
      userId,
      publicKey,
      displayName,
      joinedAt: user ? user.joinedAt : Date.now(),
    });
    io.to(id).emit('public-keys-updated', publicKeysOf(session));
  });

  socket.on('leave-session', (data) => {
    const { sessionId, userId } = data || {};
    if (typeof sessionId !== 'string') return;
    const id = sessionId.split(':')[0];
    removeUser(socket, id, userId);
    socket.leave(id);
    socketUsers.delete(socket.id);
  });

  socket.on('disconnect', () => {
    const bound = socketUsers.get(socket.id);
    if (!bound) return;
    socketUsers.delete(socket.id);
    removeUser(socket, bound.sessionId, bound.userId);
  });
});

server.listen(PORT, HOST, () => {
  console.log(`reference server listening on ${HOST}:${PORT} (pid ${process.pid})`);
});

function shutdown() {
  io.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
