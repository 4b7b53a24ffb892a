"""The Redis backplane's scripts: each directory change is one Lua script, so it is atomic.

Keys (``P`` is ``{prefix}:``, one hash tag, so a Redis Cluster keeps them in one slot and the
scripts stay valid there; see docs/cluster.md):

=====================  ======  ===============================================================
``P r:ROOM``           hash    peer id -> node of the peers in the room
``P s:PEER``           hash    room, node, rk (the resume secret's SHA-256), epoch, seq, sent,
                               away (ms since the epoch the session went away, 0 if attached),
                               bytes (its mailbox), born (ms since the epoch it joined)
``P b:PEER``           list    the mailbox: ``SEQ:DELIVERED_MS:JSON`` (0: not delivered yet)
``P k:SHA``            string  resume secret's SHA-256 -> peer id
``P away``             zset    peer id -> ms it went away (the grace period runs from there)
``P nodes``            zset    node -> ms of its last heartbeat
``P info``             hash    node -> its load report (JSON)
``P n:NODE``           set     the peers attached on the node
``P total``            string  bytes in every mailbox (``max_buffered_bytes`` holds cluster-wide)
``P x:PEER``           string  the operator killed the away session PEER (a day): not restored
``P c:NODE``           pubsub  what the node must hand to its connections
=====================  ======  ===============================================================

Messages on ``P c:NODE`` are JSON: ``{"d": PEER, "m": MESSAGE}`` (deliver),
``{"n": ROOM, "p": PEER, "m": MESSAGE}`` (peer-joined/peer-left to the room's sessions there),
``{"x": PEER, "e": EPOCH}`` (the session moved to a newer connection: close the old one).

Time is Redis's own (``TIME``), so nodes with skewed clocks agree on grace periods.
"""

from __future__ import annotations

from typing import Final

#: Shared by every script: the clock, mailbox upkeep, removal and fan-out to the room's nodes.
PRELUDE: Final = r"""
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function entry_seq(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end
local function pop_oldest(peer)
  local entry = redis.call('LPOP', P .. 'b:' .. peer)
  if not entry then return nil end
  local size = #entry
  redis.call('HINCRBY', P .. 's:' .. peer, 'bytes', -size)
  redis.call('DECRBY', P .. 'total', size)
  return entry
end
local function tell_room(room, peer, message)
  local members = redis.call('HGETALL', P .. 'r:' .. room)
  local nodes = {}
  for i = 2, #members, 2 do nodes[members[i]] = true end
  local payload = '{"n":' .. cjson.encode(room) .. ',"p":' .. cjson.encode(peer) ..
    ',"m":' .. message .. '}'
  for node, _ in pairs(nodes) do redis.call('PUBLISH', P .. 'c:' .. node, payload) end
end
-- -> false if there was no such session, else its age in ms (-1 if it has no 'born')
local function remove(peer)
  local s = P .. 's:' .. peer
  local fields = redis.call('HMGET', s, 'room', 'node', 'rk', 'bytes', 'born')
  if not fields[1] then return false end
  redis.call('DECRBY', P .. 'total', tonumber(fields[4]) or 0)
  redis.call('DEL', s, P .. 'b:' .. peer, P .. 'k:' .. fields[3])
  redis.call('ZREM', P .. 'away', peer)
  redis.call('SREM', P .. 'n:' .. fields[2], peer)
  local room = P .. 'r:' .. fields[1]
  if redis.call('HDEL', room, peer) == 1 and redis.call('EXISTS', room) == 1 then
    tell_room(fields[1], peer, '{"type":"peer-left","peer":' .. cjson.encode(peer) .. '}')
  end
  local born = tonumber(fields[5])
  if not born then return -1 end
  return math.max(0, now_ms() - born)
end
local function others(room, peer)
  local out = {}
  for _, p in ipairs(redis.call('HKEYS', P .. 'r:' .. room)) do
    if p ~= peer then out[#out + 1] = p end
  end
  return out
end
"""

#: ARGV: P, node, room, capacity, new peer, new resume SHA, resume SHA or "", last or -1,
#: history ms. -> {"full"} | {"retry"} | {"new", peer, epoch, peers...} |
#: {"resumed", peer, epoch, {replayed...}, peers...}
JOIN: Final = r"""
local node, room, capacity = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
if ARGV[7] ~= '' then
  local peer = redis.call('GET', P .. 'k:' .. ARGV[7])
  local s = peer and (P .. 's:' .. peer)
  if peer and redis.call('HGET', s, 'room') == room then
    local f = redis.call('HMGET', s, 'node', 'away', 'epoch', 'seq', 'sent')
    local epoch = tonumber(f[3]) + 1
    if tonumber(f[2]) == 0 then  -- still attached somewhere: that connection is replaced
      redis.call('PUBLISH', P .. 'c:' .. f[1],
        '{"x":' .. cjson.encode(peer) .. ',"e":' .. f[3] .. '}')
    end
    redis.call('HSET', s, 'node', node, 'away', 0, 'epoch', epoch)
    redis.call('ZREM', P .. 'away', peer)
    redis.call('SREM', P .. 'n:' .. f[1], peer)
    redis.call('SADD', P .. 'n:' .. node, peer)
    redis.call('HSET', P .. 'r:' .. room, peer, node)
    local seq, last = tonumber(f[4]), tonumber(ARGV[8])
    local after = tonumber(f[5])
    if last >= 0 then after = math.min(last, seq) end
    local box = P .. 'b:' .. peer
    while true do
      local head = redis.call('LINDEX', box, 0)
      if not head or entry_seq(head) > after then break end
      pop_oldest(peer)
    end
    local replay = {}
    for _, entry in ipairs(redis.call('LRANGE', box, 0, -1)) do
      replay[#replay + 1] = string.match(entry, '^%d+:%d+:(.*)$')
    end
    redis.call('HSET', s, 'sent', seq)
    return {'resumed', peer, epoch, replay, unpack(others(room, peer))}
  end
end
local r = P .. 'r:' .. room
if redis.call('HLEN', r) >= capacity then return {'full'} end
local peer = ARGV[5]
if redis.call('EXISTS', P .. 's:' .. peer) == 1 then return {'retry'} end
redis.call('HSET', r, peer, node)
redis.call('HSET', P .. 's:' .. peer, 'room', room, 'node', node, 'rk', ARGV[6], 'epoch', 1,
  'seq', 0, 'sent', 0, 'away', 0, 'bytes', 0, 'born', now)
redis.call('SET', P .. 'k:' .. ARGV[6], peer)
redis.call('SADD', P .. 'n:' .. node, peer)
tell_room(room, peer, '{"type":"peer-joined","peer":' .. cjson.encode(peer) .. '}')
return {'new', peer, 1, unpack(others(room, peer))}
"""

#: ARGV: P, room, sender, target, message JSON (an object, without ``seq``), count cap, bytes
#: cap, total cap, history ms. -> {status, dropped} with status routed|buffered|dropped|unknown
ROUTE: Final = r"""
local room, sender, target = ARGV[2], ARGV[3], ARGV[4]
local count_cap, byte_cap, total_cap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if target == sender or not redis.call('HGET', P .. 'r:' .. room, target) then
  return {'unknown', 0}
end
local now = now_ms()
local s, box = P .. 's:' .. target, P .. 'b:' .. target
local seq = redis.call('HINCRBY', s, 'seq', 1)
local text = '{"seq":' .. seq .. ',' .. string.sub(ARGV[5], 2)
local f = redis.call('HMGET', s, 'node', 'away', 'bytes')
local attached, bytes = tonumber(f[2]) == 0, tonumber(f[3])
local dropped = 0
local size = #text + 24  -- the entry's header
while true do  -- the oldest go first: past the caps, or delivered longer ago than the history
  local head = redis.call('LINDEX', box, 0)
  if not head then break end
  local stamp = tonumber(string.match(head, '^%d+:(%d+):'))
  local full = redis.call('LLEN', box) >= count_cap or bytes + size > byte_cap
  if not full and (stamp == 0 or now - stamp < tonumber(ARGV[9])) then break end
  if stamp == 0 then dropped = dropped + 1 end
  bytes = bytes - #head
  pop_oldest(target)
end
local total = tonumber(redis.call('GET', P .. 'total')) or 0
local fits = size <= byte_cap and total + size <= total_cap
if attached then
  if fits then
    local entry = seq .. ':' .. now .. ':' .. text
    redis.call('RPUSH', box, entry)
    redis.call('HINCRBY', s, 'bytes', #entry)
    redis.call('INCRBY', P .. 'total', #entry)
  end
  redis.call('HSET', s, 'sent', seq)
  redis.call('PUBLISH', P .. 'c:' .. f[1],
    '{"d":' .. cjson.encode(target) .. ',"m":' .. text .. '}')
  return {'routed', dropped}
end
if not fits then return {'dropped', dropped + 1} end
local entry = seq .. ':0:' .. text
redis.call('RPUSH', box, entry)
redis.call('HINCRBY', s, 'bytes', #entry)
redis.call('INCRBY', P .. 'total', #entry)
return {'buffered', dropped}
"""

#: ARGV: P, peer, epoch. -> the session's age in ms if removed, else -1
LEAVE: Final = r"""
local epoch = redis.call('HGET', P .. 's:' .. ARGV[2], 'epoch')
if epoch ~= ARGV[3] then return -1 end
return remove(ARGV[2]) or -1
"""

#: ARGV: P, peer, epoch, node. -> 1 if the session went away
DETACH: Final = r"""
local s = P .. 's:' .. ARGV[2]
local f = redis.call('HMGET', s, 'epoch', 'node', 'away')
if f[1] ~= ARGV[3] or f[2] ~= ARGV[4] or tonumber(f[3]) ~= 0 then return 0 end
local now = now_ms()
redis.call('HSET', s, 'away', now)
redis.call('ZADD', P .. 'away', now, ARGV[2])
redis.call('SREM', P .. 'n:' .. ARGV[4], ARGV[2])
return 1
"""

#: ARGV: P, peer, ms to remember the kill. Ends the session only if it is away (the operator's
#: kill; an attached one is ended by its node), and marks the peer killed, so that the node it
#: was attached to, if that node was only cut off from Redis, cannot restore it when it is back.
#: -> its age in ms (-1 without 'born'), -2 if it was not away
END_AWAY: Final = r"""
local away = redis.call('HGET', P .. 's:' .. ARGV[2], 'away')
if not away or tonumber(away) == 0 then return -2 end
local age = remove(ARGV[2])
if not age then return -2 end
redis.call('SET', P .. 'x:' .. ARGV[2], 1, 'PX', tonumber(ARGV[3]))
return age
"""

#: ARGV: P, grace ms, at most this many. -> the ages in ms of the sessions that ended
EXPIRE: Final = r"""
local ages = {}
local due = redis.call('ZRANGEBYSCORE', P .. 'away', '-inf', now_ms() - tonumber(ARGV[2]),
  'LIMIT', 0, tonumber(ARGV[3]))
for _, peer in ipairs(due) do
  redis.call('ZREM', P .. 'away', peer)
  local age = remove(peer)
  if age then ages[#ages + 1] = age end
end
return ages
"""

#: ARGV: P, node, ttl ms, load report JSON. Marks the sessions of nodes whose heartbeat is
#: older than the ttl as away since that heartbeat. -> {node, report, node, report, ...} (live)
HEARTBEAT: Final = r"""
local node, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
redis.call('ZADD', P .. 'nodes', now, node)
redis.call('HSET', P .. 'info', node, ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now - ttl, 'WITHSCORES')
for i = 1, #dead, 2 do
  local gone, seen = dead[i], dead[i + 1]
  for _, peer in ipairs(redis.call('SMEMBERS', P .. 'n:' .. gone)) do
    local s = P .. 's:' .. peer
    local f = redis.call('HMGET', s, 'node', 'away')
    if f[1] == gone and tonumber(f[2]) == 0 then
      redis.call('HSET', s, 'away', seen)
      redis.call('ZADD', P .. 'away', seen, peer)
    end
  end
  redis.call('DEL', P .. 'n:' .. gone)
  redis.call('ZREM', P .. 'nodes', gone)
  redis.call('HDEL', P .. 'info', gone)
end
return redis.call('HGETALL', P .. 'info')
"""

#: ARGV: P, node, peer, room, epoch, resume SHA, seq. After Redis came back (or restarted
#: empty): the session is attached here again. -> "kept" | "restored" (it was lost: the room
#: is told it joined) | "moved" (another node holds it now, or the operator killed it while this
#: node was cut off: drop it here)
RESTORE: Final = r"""
local node, peer, room = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', P .. 'x:' .. peer) == 1 then return 'moved' end
local s = P .. 's:' .. peer
local f = redis.call('HMGET', s, 'node', 'epoch', 'room')
if f[1] then
  if f[1] ~= node or f[2] ~= ARGV[5] or f[3] ~= room then return 'moved' end
  redis.call('HSET', s, 'away', 0)
  redis.call('ZREM', P .. 'away', peer)
  redis.call('SADD', P .. 'n:' .. node, peer)
  redis.call('HSET', P .. 'r:' .. room, peer, node)
  return 'kept'
end
redis.call('HSET', P .. 's:' .. peer, 'room', room, 'node', node, 'rk', ARGV[6],
  'epoch', ARGV[5], 'seq', ARGV[7], 'sent', ARGV[7], 'away', 0, 'bytes', 0, 'born', now_ms())
redis.call('SET', P .. 'k:' .. ARGV[6], peer)
redis.call('SADD', P .. 'n:' .. node, peer)
redis.call('HSET', P .. 'r:' .. room, peer, node)
tell_room(room, peer, '{"type":"peer-joined","peer":' .. cjson.encode(peer) .. '}')
return 'restored'
"""

SCRIPTS: Final = {
    "join": JOIN,
    "route": ROUTE,
    "leave": LEAVE,
    "detach": DETACH,
    "end_away": END_AWAY,
    "expire": EXPIRE,
    "heartbeat": HEARTBEAT,
    "restore": RESTORE,
}


def source(name: str) -> str:
    """The full text of script ``name``: the prelude and its body."""
    return PRELUDE + SCRIPTS[name]
