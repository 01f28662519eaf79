"""The Lua scripts of the redis transport: every step that must be atomic.

Each script is one ``EVALSHA`` with no declared keys: ``ARGV[1]`` is the key prefix and
``ARGV[2]`` the queue, and the keys are built here exactly as the module docstring of
``asynctask_redis.transport`` lists them (so the transport needs a single Redis server,
not a cluster). Times are the server's clock (``TIME``), so producers and consumers on
hosts with skewed clocks agree on when a delayed task is due.

A dead consumer's task comes back through ``bump``: the attempt count of our envelope is
raised by editing its fixed header as text, so the payload is never re-encoded by Lua's
cjson (which would turn ``[]`` into ``{}`` and round large integers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for ``EVALSHA`` with a ``SCRIPT LOAD`` fallback."""

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


_PRELUDE = r"""
local prefix, queue = ARGV[1], ARGV[2]
local ready = prefix .. '_' .. queue
local base = prefix .. ':' .. queue .. ':'
local delayed, retrying, failed = base .. 'delayed', base .. 'retrying', base .. 'failed'
local consumers, recovery = base .. 'consumers', base .. 'recovery'
local known = prefix .. ':queues'
local function processing(cid) return base .. 'processing:' .. cid end
local function heartbeat(cid) return base .. 'heartbeat:' .. cid end
-- A consumer id ``<owner>/<random>`` is kept alive by its owner's key (asynctask.liveness:
-- the supervisor refreshes it); any other id by its own heartbeat key.
local function owner_of(cid) return string.match(cid, '^(.+)/') end
local function owner_key(owner) return base .. 'owner:' .. owner end
-- A server that restarted less than ``grace_ms`` ago gives owners that long to beat
-- again: their keys may have expired while it was down, their workers still live.
local uptime_ms
local function restarted_within(grace_ms)
  if not uptime_ms then
    local info = redis.call('INFO', 'server')
    uptime_ms = tonumber(string.match(info, 'uptime_in_seconds:(%d+)') or '0') * 1000
  end
  return uptime_ms < grace_ms
end
local function alive(cid, grace_ms)
  local owner = owner_of(cid)
  if owner then
    return redis.call('EXISTS', owner_key(owner)) == 1 or restarted_within(grace_ms)
  end
  return redis.call('EXISTS', heartbeat(cid)) == 1
end
local failed_ids = base .. 'failed:ids'

-- The id of a failed record: ours start with it; any other entry is known by the first
-- 32 hex digits of its SHA1 (as messages.read_failed names it).
local function failed_id(rec)
  local id = string.match(rec, '^{"id":"([%w%-]+)"')
  if id then return id end
  return string.sub(redis.sha1hex(rec), 1, 32)
end

-- Into the failed store: the list (oldest first) and its index by id (requeue and purge
-- by id cost O(ids), not a read of the whole list).
local function keep_failed(rec)
  redis.call('RPUSH', failed, rec)
  redis.call('HSET', failed_ids, failed_id(rec), rec)
  redis.call('SADD', known, queue)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local HEAD = '{"__asynctask__":1,"id":"'

-- One more attempt on a message whose consumer died: our envelope gets its count
-- raised in place; a foreign JSON object is wrapped in an envelope with attempts 1.
local function bump(m, seed)
  if string.sub(m, 1, #HEAD) == HEAD then
    local id, n, rest = string.match(m, '^{"__asynctask__":1,"id":"([%w%-]+)","attempts":(%d+)()')
    if id then
      return HEAD .. id .. '","attempts":' .. string.format('%d', tonumber(n) + 1)
        .. string.sub(m, rest)
    end
    return m
  end
  local ok, value = pcall(cjson.decode, m)
  if ok and type(value) == 'table' and value['__asynctask__'] == nil
      and string.match(m, '^%s*{') then
    local id = string.sub(redis.sha1hex(seed .. m), 1, 32)
    return HEAD .. id .. '","attempts":1,"submitted_at":null,"payload":' .. m .. '}'
  end
  return m
end

-- Move due members of a sorted set to the tail of the ready list; return the ms until
-- the next one is due, or nil.
local function promote(zkey, now)
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 500)
  if #due > 0 then
    redis.call('RPUSH', ready, unpack(due))
    redis.call('ZREM', zkey, unpack(due))
  end
  local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(0, tonumber(first[2]) - now) end
  return nil
end

-- Hand back, at the head of the queue, what consumers without a heartbeat held.
local function recover(self_cid, now, grace_ms)
  for _, cid in ipairs(redis.call('SMEMBERS', consumers)) do
    if cid ~= self_cid and not alive(cid, grace_ms) then
      local proc = processing(cid)
      local items = redis.call('LRANGE', proc, 0, -1)
      for i = #items, 1, -1 do
        redis.call('LPUSH', ready, bump(items[i], cid .. ':' .. i .. ':' .. now .. ':'))
      end
      redis.call('DEL', proc)
      redis.call('SREM', consumers, cid)
    end
  end
end

-- Promote due tasks; at most once per recheck_ms (for all callers together) look for
-- dead consumers. Returns the ms to wait before the next call is useful, or nil.
local function maintain(self_cid, recheck_ms)
  local now = now_ms()
  local wait = promote(delayed, now)
  local w = promote(retrying, now)
  if w and (not wait or w < wait) then wait = w end
  local others = redis.call('SCARD', consumers)
  if others > 0 and self_cid ~= '' and redis.call('SISMEMBER', consumers, self_cid) == 1 then
    others = others - 1
  end
  if others > 0 then
    if redis.call('SET', recovery, '1', 'NX', 'PX', recheck_ms) then
      recover(self_cid, now, 2 * tonumber(recheck_ms))  -- the keys' expiry
    end
    local left = math.max(0, redis.call('PTTL', recovery))
    if not wait or left < wait then wait = left end
  end
  return wait
end
"""


def _script(name: str, body: str) -> Script:
    return Script(name, _PRELUDE + body)


#: ARGV: prefix, queue, consumer id, want, recheck_ms, heartbeat_ttl_ms, flags
#: (1 register, 2 register and resync), n_acks, acks..., held... (with resync).
#: Acknowledges, maintains, then moves up to ``want`` ready tasks to the consumer's
#: processing list. Returns {wait_ms or -1, message...}.
TAKE = _script(
    "take",
    r"""
local cid, want, flags, nacks = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[7]), tonumber(ARGV[8])
local proc = processing(cid)
for i = 9, 8 + nacks do redis.call('LREM', proc, 1, ARGV[i]) end
-- always a member: a consumer wrongly found dead (heartbeat late) stays findable
redis.call('SADD', consumers, cid)
if flags >= 1 then
  local owner = owner_of(cid)
  if owner then  -- alive from the first take on, even before its keeper's first beat
    redis.call('SET', owner_key(owner), '1', 'PX', ARGV[6], 'NX')
  else
    redis.call('SET', heartbeat(cid), '1', 'PX', ARGV[6])
  end
  redis.call('SADD', known, queue)
end
if flags >= 2 then
  -- after a lost reply: keep what the consumer handed out, give back the rest
  local keep = {}
  for i = 9 + nacks, #ARGV do keep[ARGV[i]] = (keep[ARGV[i]] or 0) + 1 end
  local items = redis.call('LRANGE', proc, 0, -1)
  local kept, back = {}, {}
  for _, m in ipairs(items) do
    if (keep[m] or 0) > 0 then
      keep[m] = keep[m] - 1
      kept[#kept + 1] = m
    else
      back[#back + 1] = m
    end
  end
  redis.call('DEL', proc)
  for _, m in ipairs(kept) do redis.call('RPUSH', proc, m) end
  for i = #back, 1, -1 do redis.call('LPUSH', ready, back[i]) end
end
local wait = maintain(cid, ARGV[5])
local out = {wait or -1}
for _ = 1, want do
  local m = redis.call('LMOVE', ready, proc, 'LEFT', 'RIGHT')
  if not m then break end
  out[#out + 1] = m
end
return out
""",
)

#: ARGV: ready key, processing key, consumers key, consumer id, want, acks... The hot
#: path between TAKEs: no maintenance, so no prelude. The SADD keeps a consumer that was
#: wrongly found dead (its heartbeat late) findable from its first new task on.
#: Returns the messages moved.
MOVE = Script(
    "move",
    r"""
for i = 6, #ARGV do redis.call('LREM', ARGV[2], 1, ARGV[i]) end
local out = {}
for _ = 1, tonumber(ARGV[5]) do
  local m = redis.call('LMOVE', ARGV[1], ARGV[2], 'LEFT', 'RIGHT')
  if not m then break end
  out[#out + 1] = m
end
if #out > 0 then redis.call('SADD', ARGV[3], ARGV[4]) end
return out
""",
)

#: ARGV: prefix, queue, consumer id, op, message, argument, delay_ms, n_acks, acks...
#: Acknowledges, then settles one message of the consumer's processing list:
#: retry (argument = new envelope), fail (argument = failed record), release,
#: canon (argument = canonical envelope), ack (nothing more) or close (everything back).
#: Returns 1, or 0 when the message was no longer held (recovered by another consumer).
SETTLE = _script(
    "settle",
    r"""
local cid, op, m, nacks = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[8])
local proc = processing(cid)
for i = 9, 8 + nacks do redis.call('LREM', proc, 1, ARGV[i]) end
if op == 'close' then
  while redis.call('LMOVE', proc, ready, 'RIGHT', 'LEFT') do end
  redis.call('SADD', known, queue)
  redis.call('DEL', heartbeat(cid))
  redis.call('SREM', consumers, cid)
  return 1
end
if op == 'ack' then return 1 end
if redis.call('LREM', proc, 1, m) == 0 then return 0 end
if op == 'retry' then
  redis.call('ZADD', retrying, now_ms() + tonumber(ARGV[7]), ARGV[6])
  redis.call('SADD', known, queue)
elseif op == 'fail' then
  keep_failed(ARGV[6])
elseif op == 'release' then
  redis.call('LPUSH', ready, m)
  redis.call('SADD', known, queue)
elseif op == 'canon' then
  redis.call('RPUSH', proc, ARGV[6])
end
return 1
""",
)

#: ARGV: prefix, queue, owner, n_finished, finished ids..., started ids... (or ``*``:
#: all). The owner's worker is gone: every message its consumers hold goes back to the
#: head of the queue in order, one attempt more for the started ones only, except the
#: finished ones (an ack the dead consumer had not sent yet), which are dropped; its
#: liveness key is deleted. Returns how many went back.
END = _script(
    "end",
    r"""
local owner, nfinished = ARGV[3], tonumber(ARGV[4])
local finished, started = {}, {}
for i = 5, 4 + nfinished do finished[ARGV[i]] = true end
local all = ARGV[5 + nfinished] == '*'
for i = 5 + nfinished, #ARGV do started[ARGV[i]] = true end
local now = now_ms()
local moved = 0
for _, cid in ipairs(redis.call('SMEMBERS', consumers)) do
  if owner_of(cid) == owner then
    local proc = processing(cid)
    local items = redis.call('LRANGE', proc, 0, -1)
    for i = #items, 1, -1 do
      local m = items[i]
      local id = string.match(m, '^{"__asynctask__":1,"id":"([%w%-]+)"')
      if not (id and finished[id]) then
        if all or (id and started[id]) then m = bump(m, cid .. ':' .. i .. ':' .. now .. ':') end
        redis.call('LPUSH', ready, m)
        moved = moved + 1
      end
    end
    redis.call('DEL', proc, heartbeat(cid))
    redis.call('SREM', consumers, cid)
  end
end
redis.call('DEL', owner_key(owner))
if moved > 0 then redis.call('SADD', known, queue) end
return moved
""",
)

#: ARGV: prefix, queue, recheck_ms. Maintains, then pops the head ready message.
GET = _script(
    "get",
    r"""
maintain('', ARGV[3])
return redis.call('LPOP', ready)
""",
)

#: ARGV: prefix, queue, recheck_ms. Returns {ready, delayed, retrying, in_flight, failed}.
STATS = _script(
    "stats",
    r"""
maintain('', ARGV[3])
local in_flight = 0
for _, cid in ipairs(redis.call('SMEMBERS', consumers)) do
  in_flight = in_flight + redis.call('LLEN', processing(cid))
end
return {redis.call('LLEN', ready), redis.call('ZCARD', delayed),
        redis.call('ZCARD', retrying), in_flight, redis.call('LLEN', failed)}
""",
)

#: ARGV: prefix, queue, first task id, guard_ms, delay_ms, envelope... Stores tasks in
#: order: ready (delay_ms 0) or delayed. The key ``P:Q:put:<first id>`` (kept guard_ms,
#: longer than any retry of the submit) makes a submit retried after a lost reply write
#: nothing the second time. Returns how many were stored (0 for such a retry).
PUT = _script(
    "put",
    r"""
if not redis.call('SET', base .. 'put:' .. ARGV[3], '1', 'NX', 'PX', ARGV[4]) then
  return 0
end
local delay = tonumber(ARGV[5])
if delay > 0 then
  local due = now_ms() + delay
  for i = 6, #ARGV do
    -- a thousandth of a ms apart, so a batch comes out in submission order
    redis.call('ZADD', delayed, due + (i - 6) * 0.001, ARGV[i])
  end
else
  for i = 6, #ARGV, 4000 do  -- unpack() takes a few thousand values at most
    redis.call('RPUSH', ready, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
end
redis.call('SADD', known, queue)
return #ARGV - 5
""",
)

#: ARGV: prefix, queue. Deletes ready, delayed and retrying tasks; returns how many.
PURGE = _script(
    "purge",
    r"""
local n = redis.call('LLEN', ready) + redis.call('ZCARD', delayed) + redis.call('ZCARD', retrying)
redis.call('UNLINK', ready, delayed, retrying)  -- freed in the background: no stall
return n
""",
)

#: ARGV: prefix, queue, (failed record, replacement or ''), ... Removes each record from
#: the failed store and its index; pushes its replacement (if any) to the ready list.
#: Returns how many. (LREM finds a record by a scan in C, from the oldest: the newest of
#: 20,000 takes about 7 ms; the Python side fetched only the records it names. With 20,000
#: failed, requeue by one id took 0.35 s reading the whole list, 0.8 ms now; 999 ids
#: 0.29 s, 35 ms now.)
TAKE_FAILED = _script(
    "take_failed",
    r"""
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('LREM', failed, 1, ARGV[i]) == 1 then
    n = n + 1
    local id = failed_id(ARGV[i])
    if redis.call('HGET', failed_ids, id) == ARGV[i] then redis.call('HDEL', failed_ids, id) end
    if ARGV[i + 1] ~= '' then redis.call('RPUSH', ready, ARGV[i + 1]) end
  end
end
if n > 0 then redis.call('SADD', known, queue) end
return n
""",
)

#: ARGV: prefix, queue, id... The failed records of those ids ('' for none), from the
#: index; when the index misses records of the list (written by an older version or
#: another program), it is rebuilt first, once, by a scan of the list.
FIND_FAILED = _script(
    "find_failed",
    r"""
if redis.call('HLEN', failed_ids) ~= redis.call('LLEN', failed) then
  redis.call('UNLINK', failed_ids)
  local n = redis.call('LLEN', failed)
  for start = 0, n - 1, 1000 do
    for _, rec in ipairs(redis.call('LRANGE', failed, start, start + 999)) do
      redis.call('HSET', failed_ids, failed_id(rec), rec)
    end
  end
end
local out = {}
for i = 3, #ARGV do out[#out + 1] = redis.call('HGET', failed_ids, ARGV[i]) or '' end
return out
""",
)

#: ARGV: prefix, queue. Empties the failed store; returns how many it held.
PURGE_ALL_FAILED = _script(
    "purge_all_failed",
    r"""
local n = redis.call('LLEN', failed)
redis.call('UNLINK', failed, failed_ids)
return n
""",
)

#: ARGV: prefix, ''. Returns the known queues with anything stored, and prunes from the
#: set those with nothing: every script that stores into a queue adds its name again in
#: the same atomic step, so a pruned name never hides a task.
QUEUES = _script(
    "queues",
    r"""
local names = {}
for _, q in ipairs(redis.call('SMEMBERS', known)) do
  local b = prefix .. ':' .. q .. ':'
  local n = redis.call('LLEN', prefix .. '_' .. q) + redis.call('ZCARD', b .. 'delayed')
    + redis.call('ZCARD', b .. 'retrying') + redis.call('LLEN', b .. 'failed')
  local members = redis.call('SMEMBERS', b .. 'consumers')
  for _, cid in ipairs(members) do n = n + redis.call('LLEN', b .. 'processing:' .. cid) end
  if n > 0 then names[#names + 1] = q else redis.call('SREM', known, q) end
end
return names
""",
)

#: ARGV: prefix, ''. Every known queue with anything stored, with its counts: a flat
#: list of name, ready, delayed, retrying, in_flight, failed, ... (one round trip for
#: any number of queues). Tasks already due in the sorted sets count as ready, as STATS
#: (which promotes them first) would say. Prunes empty names as QUEUES does.
ALL_STATS = Script(
    "all_stats",
    r"""
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = prefix .. ':queues'
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', known)) do
  local b = prefix .. ':' .. q .. ':'
  local due_d = redis.call('ZCOUNT', b .. 'delayed', '-inf', now)
  local due_r = redis.call('ZCOUNT', b .. 'retrying', '-inf', now)
  local ready = redis.call('LLEN', prefix .. '_' .. q) + due_d + due_r
  local delayed = redis.call('ZCARD', b .. 'delayed') - due_d
  local retrying = redis.call('ZCARD', b .. 'retrying') - due_r
  local in_flight = 0
  for _, cid in ipairs(redis.call('SMEMBERS', b .. 'consumers')) do
    in_flight = in_flight + redis.call('LLEN', b .. 'processing:' .. cid)
  end
  local failed = redis.call('LLEN', b .. 'failed')
  if ready + delayed + retrying + in_flight + failed > 0 then
    for _, v in ipairs({q, ready, delayed, retrying, in_flight, failed}) do out[#out + 1] = v end
  else
    redis.call('SREM', known, q)
  end
end
return out
""",
)

#: ARGV: prefix, queue, holder, owner ('' for none), calls (0: no rate), period_ms,
#: max_running (0: no cap), lease_ms. The queue's global limits (asynctask.limits):
#: ``P:Q:limit:starts`` (sorted set, holder -> start time in ms) and
#: ``P:Q:limit:running`` (hash, holder -> ``<owner>|<lease expiry ms>``). A slot whose
#: owner's key is gone (asynctask.liveness), or without owner past its lease, is freed.
#: Returns 0 when the start is counted, else the ms to wait before asking again.
LIMIT_TAKE = _script(
    "limit_take",
    r"""
local holder, owner = ARGV[3], ARGV[4]
local calls, period, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local starts, running = base .. 'limit:starts', base .. 'limit:running'
local now = now_ms()
if redis.call('HEXISTS', running, holder) == 1 then return 0 end
if cap > 0 then
  local slots = redis.call('HGETALL', running)
  local held = 0
  for i = 1, #slots, 2 do
    local o, expiry = string.match(slots[i + 1], '^(.*)|(%d+)$')
    local live
    if o and o ~= '' then
      live = redis.call('EXISTS', owner_key(o)) == 1
    else
      live = tonumber(expiry or '0') > now
    end
    if live then held = held + 1 else redis.call('HDEL', running, slots[i]) end
  end
  if held >= cap then return 200 end
end
if calls > 0 then
  redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - period)
  if redis.call('ZSCORE', starts, holder) == false then
    if redis.call('ZCARD', starts) >= calls then
      local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
      return math.max(1, tonumber(first[2]) + period - now)
    end
    redis.call('ZADD', starts, now, holder)
    redis.call('PEXPIRE', starts, period)
  end
end
if cap > 0 then
  redis.call('HSET', running, holder, owner .. '|' .. string.format('%d', now + tonumber(ARGV[8])))
end
return 0
""",
)

#: ARGV: prefix, queue, holder. Frees the holder's running slot.
LIMIT_FREE = _script(
    "limit_free",
    r"""
redis.call('HDEL', base .. 'limit:running', ARGV[3])
return 1
""",
)
