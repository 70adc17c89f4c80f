//! The Lua scripts that make every store operation one atomic step in Redis.
//!
//! Each script is [`PRELUDE`] followed by its body. Redis runs a script with
//! no other command in between, so every check and the write it guards (a
//! seat taken, a key compared, a member removed) happen together: two nodes
//! racing for the last seat of a session cannot both get it.
//!
//! Key layout, under the prefix `P` (`REDIS_PREFIX`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:sessions` | zset | every session id, scored by creation time (ms) |
//! | `P:idle` | zset | every session id, scored by its eviction deadline (ms) |
//! | `P:hbytes` | zset | session id → its history bytes (`hb`), for `MAX_TOTAL_HISTORY_BYTES` |
//! | `P:hbtotal` | string | bytes in the history budget of all sessions: the sum of `P:hbytes` and of every session's `wb` |
//! | `P:wbtotal` | string | the sum of every session's `wb` (wrapped keys cannot be evicted to make room) |
//! | `P:s:{id}` | hash | `mode`, `key` digest (SHA-256 hex), `pw` (room password: `<salt hex>:<Argon2id hex>`), `fw`/`fc` (start of the current minute of wrong keys and passwords, and their count), `reserved`, `creator`, `ks` (key order counter), `hb` (history bytes), `wb` (wrapped keys' bytes), `wk` (wrapped keys of an older version, JSON; read once, never written) |
//! | `P:s:{id}:m` | hash | user id → member `{c: socket id, n: node id, j: joined at, d: display name}` |
//! | `P:s:{id}:k` | hash | user id → `<order>|<public key entry JSON>` |
//! | `P:s:{id}:h` | list | history, oldest first (message JSON) |
//! | `P:s:{id}:hw` | list | `<weight>|<user>\n<message id>` beside each history entry |
//! | `P:s:{id}:hi` | set | sender and id (`<user>\n<id>`) of each message in history |
//! | `P:s:{id}:w` | hash | user id → the group key wrapped for that user (a JSON string, as the creator sent it) |
//! | `P:node:<node>` | string | the node's heartbeat; expires after `NODE_TIMEOUT_SECS` |
//! | `P:nodes` | set | node ids that may hold members |
//! | `P:node:<node>:m` | set | `<session id>\n<user id>` of the node's members |
//! | `P:left:<socket>` | string | tombstone of the socket's last leave, for retries (see [`LEAVE`]) |
//!
//! Every session key carries a TTL a margin past the session's eviction
//! deadline: a backstop that frees the memory even when no node is left to
//! sweep. Scripts build key names from the prefix, so they need a standalone
//! Redis (or a primary with replicas), not Redis Cluster.
//!
//! Arguments common to all scripts: `ARGV[1]` prefix, `ARGV[2]` now (epoch
//! ms), `ARGV[3]` idle timeout (ms), `ARGV[4]` member timeout (ms),
//! `ARGV[5]` TTL margin (ms); each script's own arguments follow. Optional
//! strings travel as `''` (absent) or `'='` followed by the value. A script
//! answers `{'ok', ...}` or `{<refusal code>, ...}`.

pub const PRELUDE: &str = r#"
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local IDLE_MS = tonumber(ARGV[3])
local MEMBER_MS = tonumber(ARGV[4])
local MARGIN_MS = tonumber(ARGV[5])
local SESSIONS = P .. ':sessions'
local IDLE = P .. ':idle'
local HBYTES = P .. ':hbytes'
local HBTOTAL = P .. ':hbtotal'
local WBTOTAL = P .. ':wbtotal'

local function skeys(sid)
  local b = P .. ':s:{' .. sid .. '}'
  return { meta = b, mem = b .. ':m', pk = b .. ':k', h = b .. ':h', hw = b .. ':hw', hi = b .. ':hi',
    w = b .. ':w' }
end

local function entry_weight(e)
  return tonumber(string.sub(e, 1, string.find(e, '|', 1, true) - 1))
end

-- Drops the session's oldest message; answers its weight.
local function pop_oldest(k)
  redis.call('LPOP', k.h)
  local old = redis.call('LPOP', k.hw)
  local bar = string.find(old, '|', 1, true)
  local w = tonumber(string.sub(old, 1, bar - 1))
  redis.call('HINCRBY', k.meta, 'hb', -w)
  redis.call('SREM', k.hi, string.sub(old, bar + 1))
  return w
end

-- Past the budget, the oldest messages of the largest sessions go first
-- (ties: the greatest id), as in the embedded store; wrapped keys stay.
local function enforce_budget(total, budget)
  while total > budget do
    local largest = redis.call('ZREVRANGE', HBYTES, 0, 0)[1]
    if not largest then break end
    local lk = skeys(largest)
    if redis.call('LLEN', lk.h) == 0 then break end
    while total > budget and redis.call('LLEN', lk.h) > 0 do
      local freed = pop_oldest(lk)
      redis.call('ZINCRBY', HBYTES, -freed, largest)
      total = redis.call('INCRBY', HBTOTAL, -freed)
    end
  end
end

-- The page of history from index `first` (0-based): messages up to
-- `max_bytes` of weight, at least one. Answers them, the index entry of the
-- last one ('' when none) and whether more follow.
local function page(k, first, max_bytes)
  local bytes, last, last_entry = 0, first - 1, ''
  local batch = 32
  local pos = first
  local full = false
  while not full do
    local entries = redis.call('LRANGE', k.hw, pos, pos + batch - 1)
    if #entries == 0 then break end
    for _, e in ipairs(entries) do
      local w = entry_weight(e)
      if last >= first and bytes + w > max_bytes then
        full = true
        break
      end
      bytes, last, last_entry = bytes + w, last + 1, e
    end
    pos = pos + #entries
    if #entries < batch then break end
  end
  if last < first then return {}, '', false end
  local more = redis.call('LLEN', k.hw) > last + 1
  return redis.call('LRANGE', k.h, first, last), last_entry, more
end

local function node_members(node)
  return P .. ':node:' .. node .. ':m'
end

local function arg_opt(s)
  if s == '' then return nil end
  return string.sub(s, 2)
end

local function ret_opt(v)
  if not v then return '' end
  return '=' .. v
end

-- Moves the session's eviction deadline (and its keys' backstop TTL) forward.
local function touch(sid, k)
  local timeout = IDLE_MS
  if redis.call('HLEN', k.mem) > 0 then timeout = MEMBER_MS end
  redis.call('ZADD', IDLE, NOW + timeout, sid)
  local px = timeout + MARGIN_MS
  for _, key in ipairs({ k.meta, k.mem, k.pk, k.h, k.hw, k.hi, k.w }) do
    redis.call('PEXPIRE', key, px)
  end
end

-- Compares two digests without stopping at the first difference.
local function ct_eq(a, b)
  if type(a) ~= 'string' or type(b) ~= 'string' or #a ~= #b then return false end
  local d = 0
  for i = 1, #a do
    d = bit.bor(d, bit.bxor(string.byte(a, i), string.byte(b, i)))
  end
  return d == 0
end

local function get_member(k, user)
  local raw = redis.call('HGET', k.mem, user)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- The member `user`, when `conn` is its current socket.
local function current_member(k, user, conn)
  local m = get_member(k, user)
  if m and m.c == conn then return m end
  return nil
end

-- Stores a public key entry, keeping the order in which keys were first stored.
local function store_key(k, user, pk, name, joined_at)
  local prev = redis.call('HGET', k.pk, user)
  local order
  if prev then
    order = string.sub(prev, 1, string.find(prev, '|', 1, true) - 1)
  else
    order = tostring(redis.call('HINCRBY', k.meta, 'ks', 1))
  end
  local entry = '{"userId":' .. cjson.encode(user) .. ',"publicKey":' .. pk
  if name then entry = entry .. ',"displayName":' .. cjson.encode(name) end
  entry = entry .. ',"joinedAt":' .. string.format('%d', joined_at) .. '}'
  redis.call('HSET', k.pk, user, order .. '|' .. entry)
end

local function create(sid, k, mode, key, pw)
  redis.call('HSET', k.meta, 'mode', mode, 'key', key, 'pw', pw, 'reserved', '1',
    'creator', '', 'ks', 0, 'hb', 0, 'wb', 0)
  redis.call('ZADD', SESSIONS, NOW, sid)
end
"#;

/// `ARGV[6]` session, `[7]` mode, `[8]` key digest, `[9]` password digest
/// (`<salt hex>:<Argon2id hex>`) or `''`, `[10]` MAX_SESSIONS.
pub const RESERVE: &str = r#"
local sid = ARGV[6]
local k = skeys(sid)
if redis.call('EXISTS', k.meta) == 1 then return { 'EXISTS' } end
if redis.call('ZCARD', SESSIONS) >= tonumber(ARGV[10]) then return { 'LIMIT' } end
create(sid, k, ARGV[7], ARGV[8], ARGV[9])
touch(sid, k)
return { 'ok' }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` node, `[10]` creator
/// join `'1'`/`'0'`, `[11]` offered key digest, `[12]` offered key non-empty
/// `'1'`/`'0'`, `[13]` offered password (Argon2id hex with the room's salt)
/// or `''`, `[14]` mode of a session the creator creates, `[15]` its
/// password digest or `''`, `[16]` MAX_SESSIONS, `[17]` MAX_GROUP_MEMBERS,
/// `[18]` display name (optional), `[19]` public key JSON or `''`, `[20]` the
/// most history bytes of a page, `[21]` `'1'` when a creator's join may
/// create an unknown session, `[22]` AUTH_FAILURES_PER_SESSION_PER_MIN (0 =
/// no limit), `[23]` the length of its window (ms), `[24]` the member's
/// previous socket that the caller found gone, or `''`. Past the session's
/// budget of wrong keys and passwords: `{'RATE_LIMITED', ms to wait}`; a
/// member connected from another socket (not `[24]`): `{'MEMBER_CONNECTED',
/// its socket}`, nothing changed.
///
/// Answers `{'ok', kind, previous socket, mode, display name, wrapped key
/// (optional), public keys (flat hash), first page of history, index entry
/// of its last message or '', '1' when more pages follow, '1' when this join
/// created the session}`; the other pages come from [`HISTORY_PAGE`], so
/// that no single call keeps Redis busy for long.
pub const JOIN: &str = r#"
local sid, user, conn, node = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local creator_join = ARGV[10] == '1'
local k = skeys(sid)
local created = '0'
if redis.call('EXISTS', k.meta) == 0 then
  if not creator_join or ARGV[21] ~= '1' then return { 'SESSION_NOT_FOUND' } end
  if ARGV[12] ~= '1' then return { 'INVALID_KEY' } end
  if redis.call('ZCARD', SESSIONS) >= tonumber(ARGV[16]) then return { 'SESSION_LIMIT' } end
  create(sid, k, ARGV[14], ARGV[11], ARGV[15])
  created = '1'
end
local meta = redis.call('HMGET', k.meta, 'mode', 'key', 'pw', 'reserved', 'creator', 'wk', 'fw', 'fc')
local mode, key, pw, reserved, creator, wk = meta[1], meta[2], meta[3], meta[4], meta[5], meta[6]
local fw, fc = tonumber(meta[7] or '0'), tonumber(meta[8] or '0')
local max_fail, window = tonumber(ARGV[22]), tonumber(ARGV[23])
if NOW - fw >= window then
  fw, fc = NOW, 0
  redis.call('HSET', k.meta, 'fw', fw, 'fc', fc)
end
if max_fail > 0 and fc >= max_fail then
  return { 'RATE_LIMITED', string.format('%d', math.max(fw + window - NOW, 1)) }
end
local function refuse(code)
  redis.call('HINCRBY', k.meta, 'fc', 1)
  return { code }
end
if creator_join then
  if not ct_eq(key, ARGV[11]) then return refuse('CREATOR_KEY_MISMATCH') end
else
  if pw ~= '' and ARGV[13] ~= '' then
    if not ct_eq(string.sub(pw, 34), ARGV[13]) then return refuse('INVALID_PASSWORD') end
  elseif not ct_eq(key, ARGV[11]) then
    return refuse('INVALID_KEY')
  end
  if reserved == '1' then return { 'SESSION_NOT_ACTIVE' } end
end
local m = get_member(k, user)
if m and m.c ~= conn and m.c ~= ARGV[24] then return { 'MEMBER_CONNECTED', m.c } end
if creator_join and (creator == '' or creator == user) then
  redis.call('HSET', k.meta, 'reserved', '0', 'creator', user)
end
local capacity = 2
if mode == 'group' then capacity = tonumber(ARGV[17]) end
local entry = sid .. '\n' .. user
local kind, previous = 'new', ''
if m then
  if m.c == conn then
    kind = 'repeat'
  else
    kind, previous = 'rejoined', m.c
    redis.call('SREM', node_members(m.n), entry)
    m.c, m.n = conn, node
    redis.call('SADD', node_members(node), entry)
  end
else
  if redis.call('HLEN', k.mem) >= capacity then return { 'SESSION_FULL', mode, tostring(capacity) } end
  m = { c = conn, n = node, j = NOW }
  redis.call('SADD', node_members(node), entry)
end
local name = arg_opt(ARGV[18])
if name then m.d = name end
redis.call('HSET', k.mem, user, cjson.encode(m))
if ARGV[19] ~= '' then store_key(k, user, ARGV[19], m.d, m.j) end
touch(sid, k)
local wrapped = redis.call('HGET', k.w, user)
if not wrapped and wk and wk ~= '' and wk ~= '{}' then
  local old = cjson.decode(wk)[user]
  if type(old) == 'string' then wrapped = cjson.encode(old) end
end
local msgs, last, more = page(k, 0, tonumber(ARGV[20]))
local more_flag = '0'
if more then more_flag = '1' end
return { 'ok', kind, previous, mode, ret_opt(m.d), ret_opt(wrapped), redis.call('HGETALL', k.pk),
  msgs, last, more_flag, created }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` index entry of the
/// last message sent, `[10]` the most history bytes of a page. Answers
/// `{'ok', messages, index entry of the last one or '', '1' when more
/// follow}`, or `{'NOT_IN_SESSION'}` once the socket is no longer the
/// member's. History is only ever trimmed at its head, so when the entry is
/// gone the page starts at the head.
pub const HISTORY_PAGE: &str = r#"
local k = skeys(ARGV[6])
if not current_member(k, ARGV[7], ARGV[8]) then return { 'NOT_IN_SESSION' } end
local pos = redis.call('LPOS', k.hw, ARGV[9])
local first = 0
if pos then first = pos + 1 end
local msgs, last, more = page(k, first, tonumber(ARGV[10]))
local more_flag = '0'
if more then more_flag = '1' end
return { 'ok', msgs, last, more_flag }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket. Answers `{'ok', public keys}`.
pub const PUBLIC_KEYS: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
if not current_member(k, user, conn) then return { 'NOT_IN_SESSION' } end
touch(sid, k)
return { 'ok', redis.call('HGETALL', k.pk) }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` display name
/// (optional), `[10]` public key JSON. Answers `{'ok', public keys}`.
pub const SAVE_KEY: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
local m = current_member(k, user, conn)
if not m then return { 'NOT_IN_SESSION' } end
local name = arg_opt(ARGV[9])
if name then
  m.d = name
  redis.call('HSET', k.mem, user, cjson.encode(m))
end
store_key(k, user, ARGV[10], m.d, m.j)
touch(sid, k)
return { 'ok', redis.call('HGETALL', k.pk) }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` the wrapped keys'
/// weight, `[10]` MAX_TOTAL_HISTORY_BYTES, then user id and wrapped key
/// (JSON string) pairs. The keys count in the history budget: refused
/// `STORE_FULL` when even evicting every message could not make room, and
/// otherwise history is evicted as by [`SEND_MESSAGE`].
pub const SET_SESSION_KEY: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
if not current_member(k, user, conn) then return { 'NOT_IN_SESSION' } end
local meta = redis.call('HMGET', k.meta, 'mode', 'creator', 'wb')
if meta[1] ~= 'group' then return { 'NOT_GROUP' } end
if meta[2] ~= user then return { 'NOT_CREATOR' } end
local old, w, budget = tonumber(meta[3] or '0'), tonumber(ARGV[9]), tonumber(ARGV[10])
if tonumber(redis.call('GET', WBTOTAL) or '0') - old + w > budget then return { 'STORE_FULL' } end
redis.call('DEL', k.w)
local batch = {}
for i = 11, #ARGV do
  table.insert(batch, ARGV[i])
  if #batch == 512 then
    redis.call('HSET', k.w, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', k.w, unpack(batch)) end
redis.call('HSET', k.meta, 'wb', w, 'wk', '')
redis.call('INCRBY', WBTOTAL, w - old)
enforce_budget(redis.call('INCRBY', HBTOTAL, w - old), budget)
touch(sid, k)
return { 'ok' }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` recipient (optional;
/// absent = every other member), `[10]` message id, `[11]` message JSON
/// without `senderDisplayName`, `[12]` its weight, `[13]`
/// MAX_HISTORY_MESSAGES, `[14]` MAX_HISTORY_BYTES, `[15]`
/// MAX_TOTAL_HISTORY_BYTES: past it, the oldest messages of the largest
/// sessions (ties: the greatest id) go first, as in the embedded store.
///
/// Answers `{'ok', '1' when new, recipient socket or '', display name}`.
pub const SEND_MESSAGE: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
local m = current_member(k, user, conn)
if not m then return { 'NOT_IN_SESSION' } end
local route = ''
local to = arg_opt(ARGV[9])
if to then
  local r = get_member(k, to)
  if not r then return { 'UNKNOWN_RECIPIENT' } end
  route = r.c
end
-- Each sender's ids are its own: the set holds "<user>\n<id>".
local id = user .. '\n' .. ARGV[10]
local is_new = '0'
if redis.call('SISMEMBER', k.hi, id) == 0 then
  is_new = '1'
  local msg = ARGV[11]
  if m.d then
    msg = string.sub(msg, 1, -2) .. ',"senderDisplayName":' .. cjson.encode(m.d) .. '}'
  end
  local w = tonumber(ARGV[12])
  redis.call('RPUSH', k.h, msg)
  redis.call('RPUSH', k.hw, ARGV[12] .. '|' .. id)
  redis.call('SADD', k.hi, id)
  local hb = redis.call('HINCRBY', k.meta, 'hb', w)
  local len = redis.call('LLEN', k.h)
  local max_n, max_b = tonumber(ARGV[13]), tonumber(ARGV[14])
  while len > 0 and (len > max_n or hb > max_b) do
    hb = hb - pop_oldest(k)
    len = len - 1
  end
  -- The session's share of the global budget (a session from before the
  -- budget was kept in Redis enters it whole).
  local counted = tonumber(redis.call('ZSCORE', HBYTES, sid) or '0')
  redis.call('ZADD', HBYTES, hb, sid)
  enforce_budget(redis.call('INCRBY', HBTOTAL, hb - counted), tonumber(ARGV[15]))
end
touch(sid, k)
return { 'ok', is_new, route, ret_opt(m.d) }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` the file's sender.
/// Answers `{'ok', sender's socket}`.
pub const DOWNLOAD_TARGET: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
if not current_member(k, user, conn) then return { 'NOT_IN_SESSION' } end
local r = get_member(k, ARGV[9])
if not r then return { 'UNKNOWN_RECIPIENT' } end
touch(sid, k)
return { 'ok', r.c }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket. Answers `{'ok', display name}`.
pub const TYPING: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
local m = current_member(k, user, conn)
if not m then return { 'NOT_IN_SESSION' } end
touch(sid, k)
return { 'ok', ret_opt(m.d) }
"#;

/// `ARGV[6]` session, `[7]` user, `[8]` socket, `[9]` `'1'` when this is a
/// retry of a leave whose answer was lost (Redis too slow), `'2'` for a
/// removal by the node's reconciliation (no tombstone), else `'0'`;
/// `[10]` the departure's id, the same for every attempt. Answers
/// `{'ok', display name, remaining public keys}`.
///
/// A leave leaves a tombstone under the socket's id, naming the departure:
/// a retry of that same departure that finds the member gone (and not back
/// under another socket) learns from it that its own earlier attempt removed
/// the member, and answers `ok` once, so the departure is announced exactly
/// once, not never.
pub const LEAVE: &str = r#"
local sid, user, conn = ARGV[6], ARGV[7], ARGV[8]
local k = skeys(sid)
local tomb_key = P .. ':left:' .. conn
local tomb_of = ARGV[10] .. '\n' .. sid .. '\n' .. user .. '\n'
local m = current_member(k, user, conn)
if not m then
  if ARGV[9] == '1' and not redis.call('HGET', k.mem, user) then
    local tomb = redis.call('GET', tomb_key)
    if tomb and string.sub(tomb, 1, #tomb_of) == tomb_of then
      redis.call('DEL', tomb_key)
      return { 'ok', string.sub(tomb, #tomb_of + 1), redis.call('HGETALL', k.pk) }
    end
  end
  return { 'NOT_IN_SESSION' }
end
redis.call('HDEL', k.mem, user)
redis.call('HDEL', k.pk, user)
redis.call('SREM', node_members(m.n), sid .. '\n' .. user)
if ARGV[9] ~= '2' then redis.call('SET', tomb_key, tomb_of .. ret_opt(m.d), 'PX', MEMBER_MS) end
touch(sid, k)
return { 'ok', ret_opt(m.d), redis.call('HGETALL', k.pk) }
"#;

/// `ARGV[6]` session. Evicts it when its deadline has passed; only the
/// node whose call evicts it gets `{'ok', sockets of its members}` (so
/// exactly one node announces `SESSION_EXPIRED`), the others `{'NOT_DUE'}`.
pub const EVICT: &str = r#"
local sid = ARGV[6]
local due = redis.call('ZSCORE', IDLE, sid)
if not due or tonumber(due) > NOW then return { 'NOT_DUE' } end
local k = skeys(sid)
local conns = {}
local all = redis.call('HGETALL', k.mem)
for i = 1, #all, 2 do
  local m = cjson.decode(all[i + 1])
  table.insert(conns, m.c)
  redis.call('SREM', node_members(m.n), sid .. '\n' .. all[i])
end
local wb = tonumber(redis.call('HGET', k.meta, 'wb') or '0')
redis.call('DEL', k.meta, k.mem, k.pk, k.h, k.hw, k.hi, k.w)
redis.call('ZREM', IDLE, sid)
redis.call('ZREM', SESSIONS, sid)
local counted = tonumber(redis.call('ZSCORE', HBYTES, sid) or '0')
redis.call('ZREM', HBYTES, sid)
if counted + wb > 0 then redis.call('INCRBY', HBTOTAL, -(counted + wb)) end
if wb > 0 then redis.call('INCRBY', WBTOTAL, -wb) end
return { 'ok', conns }
"#;

/// `ARGV[6]` node. Answers `{'ok', session, user, socket, session, ...}`:
/// the members this node holds.
pub const NODE_MEMBERS: &str = r#"
local node = ARGV[6]
local out = { 'ok' }
for _, e in ipairs(redis.call('SMEMBERS', node_members(node))) do
  local nl = string.find(e, '\n', 1, true)
  local sid, user = string.sub(e, 1, nl - 1), string.sub(e, nl + 1)
  local m = get_member(skeys(sid), user)
  if m and m.n == node then
    table.insert(out, sid)
    table.insert(out, user)
    table.insert(out, m.c)
  end
end
return out
"#;

/// `ARGV[6]` node, `[7]` `'1'` to remove it whatever its heartbeat says (a
/// node shutting down, or starting again under the same id). Removes every
/// member the node holds; only the call that removes them gets them back,
/// so each departure is announced once. Answers `{'ok', {session, public
/// keys left, {{user, display name, socket}, ...}}, ...}` or `{'ALIVE'}`.
pub const REMOVE_NODE: &str = r#"
local node = ARGV[6]
local force = ARGV[7] == '1'
local beat = P .. ':node:' .. node
if not force and redis.call('EXISTS', beat) == 1 then return { 'ALIVE' } end
local set = node_members(node)
local by_session, order = {}, {}
for _, e in ipairs(redis.call('SMEMBERS', set)) do
  local nl = string.find(e, '\n', 1, true)
  local sid, user = string.sub(e, 1, nl - 1), string.sub(e, nl + 1)
  local k = skeys(sid)
  local m = get_member(k, user)
  if m and m.n == node then
    redis.call('HDEL', k.mem, user)
    redis.call('HDEL', k.pk, user)
    if not by_session[sid] then
      by_session[sid] = {}
      table.insert(order, sid)
    end
    table.insert(by_session[sid], { user, ret_opt(m.d), m.c })
  end
end
redis.call('DEL', set)
redis.call('SREM', P .. ':nodes', node)
if force then redis.call('DEL', beat) end
local out = { 'ok' }
for _, sid in ipairs(order) do
  local k = skeys(sid)
  touch(sid, k)
  table.insert(out, { sid, redis.call('HGETALL', k.pk), by_session[sid] })
end
return out
"#;
