"""The Lua scripts of the redis transport: every step that must be atomic.

Each script is one ``EVALSHA`` with no declared keys: ``ARGV[1]`` is the key prefix and
``ARGV[2]`` the queue, and the keys are built here exactly as the module docstring of
``asynctask_redis.transport`` lists them (so the transport needs a single Redis server,
not a cluster). Times are the server's clock (``TIME``), so producers and consumers on
hosts with skewed clocks agree on when a delayed task is due.

The task statuses (``asynctask.status``) are written by the same scripts, with the
helpers of ``_STATUS``; ``asynctask_redis.statestore`` adds the generic calls.

A dead consumer's task comes back through ``bump``: the attempt count of our envelope is
raised by editing its fixed header as text, so the payload is never re-encoded by Lua's
cjson (which would turn ``[]`` into ``{}`` and round large integers).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for ``EVALSHA`` with a ``SCRIPT LOAD`` fallback."""

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


_BASE = r"""
local prefix, queue = ARGV[1], ARGV[2]
-- Every other key of the queue is built from ``base`` (a Redis Cluster variant puts the
-- queue in a hash tag here, so that one script's keys share a slot).
local base = prefix .. ':' .. queue .. ':'
local nudges = base .. 'nudges'
-- Cancelled tasks no move has met yet (sorted set: id -> when it may be forgotten, ms):
-- while it is empty, a move checks only the task it marks running (see ``take``).
local cancelled_ids = base .. 'cancelled'
-- On a Redis Cluster the queue comes as '{name}' (a hash tag: every key above shares
-- one slot), and the two keys outside the queue are kept by the client instead: these
-- stand-ins stay in the slot (a script may touch one slot only).
local clustered = string.sub(queue, 1, 1) == '{'
local function processing(cid) return base .. 'processing:' .. cid end
local function task_key(id) return base .. 'task:' .. id end
local function done_key(id) return base .. 'done:' .. id end
local function unique_key(k) return base .. 'unique:' .. k end
-- The id -> queue pointer lives outside the queue's keys: status(id) does not know the
-- queue. (A cluster variant writes it with a command of its own, not in a script.)
local function pointer(id)
  if clustered then return base .. 'at:' .. id end
  return prefix .. ':@id:' .. id
end

-- A whole number as the text a command takes: a Lua number given to ``redis.call`` is
-- formatted by Redis with '%.17g' (about 2.3k instructions of redis-server, callgrind;
-- seven a task in a drain at prefetch 1); '%d' costs a fraction of that.
local function int(n) return string.format('%d', n) end

local clock
local function now_ms()  -- one TIME per script: time stands still inside one anyway
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
-- Seconds as the status fields keep them, each millisecond formatted once a script: a
-- ``string.format`` costs redis-server about 4.7k instructions, a look-up 0.1k, and a
-- move's acks share a few distinct ms (the script's own time, the starts of a batch).
local stamps = {}
local function stamp(ms)
  local text = stamps[ms]
  if not text then
    text = string.format('%.3f', ms / 1000)
    stamps[ms] = text
  end
  return text
end

-- Pushed to an empty ready list when an urgent task is stored, so that a consumer
-- blocked on that list wakes; every taker drops it (``nudges`` counts those stored).
local NUDGE = '{"__asynctask__":0}'
"""

#: What finishes and starts a task (``asynctask.status``). Every local a script defines
#: is work at each call (about 600 instructions a function or a key name; the whole
#: prelude cost ``START`` 38k instructions a call, redis-server under callgrind, against
#: 16k for the call itself): ``script`` gives each only the definitions it uses.
#:
#: A drain's success costs four commands a task (HMGET of state, unique and waiting,
#: HSET of four fields, PEXPIRE of the status and of its id pointer): 34-38k instructions
#: of redis-server a task in a script of 32 of them (callgrind, 2026-12-07, loops of
#: those calls alone: the pointer's PEXPIRE 5k, the HMGET 10-14k), about half of a
#: tracked move's 84k a task at prefetch 32 (untracked 20k). Fewer a task needs another
#: layout (one key a task: no pointer) or another way to know of a waiter or unique key.
_FINISH = r"""
local FINAL = {succeeded = true, failed = true, cancelled = true, expired = true}

-- The task is final: its fields, the signal for waiters (only when one waits, ``w``:
-- they mark the status's field ``waiting`` first, read with the state, so a final write
-- costs no command of its own to know it), its unique key ``u`` freed. It is forgotten
-- ``ttl_ms`` later; a failed one lives as long as its failed record.
-- ``key`` is ``task_key(id)``, which the caller has made already (a concatenation: 1k
-- instructions).
local function finish_held(key, id, u, w, state, now, ttl_ms, ...)
  redis.call('HSET', key, 'state', state, 'finished_at', stamp(now), ...)
  if u and redis.call('GET', unique_key(u)) == id then redis.call('DEL', unique_key(u)) end
  if w then
    local done = done_key(id)
    redis.call('RPUSH', done, state)
    redis.call('PEXPIRE', done, ttl_ms)
  end
  if state ~= 'failed' then
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('PEXPIRE', pointer(id), ttl_ms)
  end
end

-- ``finish_held`` for a caller that has not read the task's unique key and waiter mark
local function finish(id, state, now, ttl_ms, ...)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'unique', 'waiting')
  finish_held(key, id, f[1], f[2], state, now, ttl_ms, ...)
end

-- Whether a task may start: 'run', or the final state it has ('cancelled', or
-- 'expired', made final here when its time has passed); and whether a status is kept.
local function start_verdict(id, now, ttl_ms)
  local f = redis.call('HMGET', task_key(id), 'state', 'expires_at', 'started_at')
  local state = f[1]
  if not state then return 'run', false end  -- no status kept (another program's task)
  if state == 'cancelled' or state == 'expired' then return state, true end
  if f[2] and not f[3] and now >= tonumber(f[2]) then
    finish(id, 'expired', now, ttl_ms)
    return 'expired', true
  end
  return 'run', true
end

-- A worker is about to run the task (its ``attempts``th attempt, a number or its
-- text): 'run' (now running), or the final state it was given instead ('cancelled',
-- 'expired'), when it must never run.
local function start_task(id, attempts, now, ttl_ms)
  local verdict, kept = start_verdict(id, now, ttl_ms)
  if verdict == 'run' and kept then
    redis.call('HSET', task_key(id), 'state', 'running', 'attempts', attempts,
      'started_at', stamp(now))
  end
  return verdict
end

-- A start marked after the task began (a consumer's held mark): the task runs whatever
-- the verdict, so one cancelled before its mark came still gets the attempt it ran and
-- its start time, as a cancel after the mark leaves it. ``now``: when it started.
local function late_start(id, attempts, now, ttl_ms)
  local verdict = start_task(id, attempts, now, ttl_ms)
  if verdict == 'cancelled' then
    redis.call('HSET', task_key(id), 'attempts', attempts, 'started_at', stamp(now))
  end
  return verdict
end

-- Done: succeeded with its result (JSON text, or '' for none), never over a cancel;
-- ``...``: more fields to write (a start not written yet: its attempts and started_at,
-- written over a cancel too: the task ran, see ``late_start``).
local function succeed(id, now, ttl_ms, result, ...)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'state', 'unique', 'waiting')
  local state = f[1]
  if state == 'cancelled' then
    redis.call('ZREM', cancelled_ids, id)  -- gone for good
    if select('#', ...) > 0 then redis.call('HSET', task_key(id), ...) end
  end
  if not state or state == 'cancelled' or state == 'expired' then return end
  if result ~= '' then
    finish_held(key, id, f[2], f[3], 'succeeded', now, ttl_ms, 'result', result, ...)
  else
    finish_held(key, id, f[2], f[3], 'succeeded', now, ttl_ms, ...)
  end
end

-- Whether a cancelled task may still be met: ``cancelled_ids`` holds one whose status is
-- not forgotten yet. (Entries past that horizon stay until the next cancel trims them;
-- they count for nothing here, or one cancel would make every move check every task it
-- takes for the whole status ttl.) Asked once a script: no script of a move adds one.
local cancels_seen
local function cancel_pending()
  if cancels_seen == nil then
    cancels_seen = redis.call('EXISTS', cancelled_ids) == 1
      and redis.call('ZCOUNT', cancelled_ids, string.format('(%d', now_ms()), '+inf') > 0
  end
  return cancels_seen
end

-- Whether the successes among the acks ARGV[from ... last] may be written without a read
-- of each status first (``succeed_known``): no cancelled task is pending on the queue
-- (so none of them is cancelled; none is expired either: a task with ``expires`` starts
-- through a verdict, and one started never expires), no task of the queue has held a
-- unique key since it was made (``uniques``, which the submit recording one sets), and
-- no waiter is marked on any of them: each waiter keeps ``waiting:<id>`` alive while it
-- waits (``MARK_WAITING``, which marks the status's field too), so one EXISTS for the
-- batch says what a read of each status's field would. (One HMGET a task less: a call
-- inside a script and its reply table.)
local function known_plain(from, last)
  if cancel_pending() or redis.call('EXISTS', base .. 'uniques') == 1 then return false end
  local keys = {}
  for j = from, last, 3 do
    local field = ARGV[j + 1]
    if ARGV[j] ~= '' and field ~= '' then
      keys[#keys + 1] = base .. 'waiting:' .. string.match(field, '^[^:]*')
    end
  end
  for k = 1, #keys, 4000 do  -- unpack() takes a few thousand values at most
    if redis.call('EXISTS', unpack(keys, k, math.min(k + 3999, #keys))) > 0 then
      return false
    end
  end
  return true
end

-- ``succeed`` for a task ``known_plain`` vouches for: written without a read. The
-- PEXPIRE goes first, and says whether a status is kept at all (another program's
-- task, or one recorded nowhere, gets none made here); the fields are written after it
-- (an HSET keeps the expiry).
local function succeed_known(id, now, ttl_ms, result, ...)
  local key = task_key(id)
  if redis.call('PEXPIRE', key, ttl_ms) == 0 then return end
  if result ~= '' then
    redis.call('HSET', key, 'state', 'succeeded', 'finished_at', stamp(now), 'result', result, ...)
  else
    redis.call('HSET', key, 'state', 'succeeded', 'finished_at', stamp(now), ...)
  end
  redis.call('PEXPIRE', pointer(id), ttl_ms)
end

-- A consumer that moves again holding nothing but what it acks (a drain's case: the
-- tasks it took all settled) names the last ack only, ``last``, and ``count`` of them
-- (``n`` acks, the other messages sent as '='): when the list holds that many and
-- ``last`` among them, it is exactly those, and goes whole (one LLEN, one LPOS, one
-- DEL). Redis no longer reads, and makes Lua strings of, every acked message twice (as
-- an argument and in an LRANGE of the head), nor the consumer packs them. Anything
-- else (the list recovered by another consumer meanwhile, another text in it): false,
-- nothing written, and the consumer sends the messages.
local function whole_acked(proc, count, last)
  if redis.call('LLEN', proc) ~= tonumber(count) then return false end
  if not redis.call('LPOS', proc, last) then return false end
  redis.call('DEL', proc)
  return true
end

-- The acknowledgements and late starts ARGV[from ...], in the order they happened: ``n``
-- triples, an ack (message, its task id or '' or '<id>:<attempt>:<ms since it
-- started>' for a start not sent before, result JSON or '') or a start the
-- consumer did not send at once ('', task id, '<attempt>:<ms since it started>', see
-- ``asynctask_redis.startmarks``). Without ``tracking`` nothing is written here (an id
-- there is for ``retire_acked``). The consumer sends the id it read, so that no script
-- parses the message again (a ``string.match`` of the envelope's head: about 8k
-- instructions).
--
-- A consumer that settles in the order it took (one task at a time, a drain) acks the
-- head of its list: one LRANGE and one LTRIM remove them all; any other order goes one
-- LREM an ack (a call inside a script costs Redis about a microsecond: at a prefetch of
-- 32 this spares 31 a move).
--
-- ``trimmed``: ``whole_acked`` has emptied the list already (the acks' messages are '=').
local function ack_all(proc, from, n, tracking, ttl_ms, trimmed)
  local last, i = from + 3 * n - 1, from
  local acked = {}
  if not trimmed then
    for j = from, last, 3 do
      if ARGV[j] ~= '' then acked[#acked + 1] = ARGV[j] end
    end
  end
  if #acked > 0 then
    local head = redis.call('LRANGE', proc, '0', int(#acked - 1))
    trimmed = #head == #acked
    for j = 1, #acked do
      if head[j] ~= acked[j] then trimmed = false; break end
    end
    if trimmed then redis.call('LTRIM', proc, int(#acked), '-1') end
  end
  local function remove(m)
    if trimmed then return 1 end
    return redis.call('LREM', proc, '1', m)
  end
  local succeed = succeed
  if tracking and n > 0 and known_plain(from, last) then succeed = succeed_known end
  while i <= last do
    local m = ARGV[i]
    if m == '' then
      local id = ARGV[i + 1]
      local attempt, ago = string.match(ARGV[i + 2], '^(%d+):(%d+)$')
      local now = now_ms()
      if not (tracking and attempt) then  -- nothing to write
      elseif i + 3 < last and ARGV[i + 4] == id and ARGV[i + 3] ~= '' then
        -- started and acked since the last call (a drain's common case): succeeded
        -- with its start's fields, one read and one write for both (succeed checks
        -- what start_verdict would: never over a cancel; ``expires`` never comes here)
        remove(ARGV[i + 3])
        succeed(id, now, ttl_ms, ARGV[i + 5], 'attempts', attempt,
          'started_at', stamp(now - tonumber(ago)))
        i = i + 3
      else
        late_start(id, attempt, now - tonumber(ago), ttl_ms)
      end
    else
      local removed = remove(m)
      if m == NUDGE then
        if removed == 1 then redis.call('DECR', nudges) end
      elseif tracking and ARGV[i + 1] ~= '' then
        -- '<id>:<attempt>:<ms since it started>': acked right after a start not sent
        -- yet, both in one triple (the case below, in three arguments fewer)
        local id, attempt, ago = string.match(ARGV[i + 1], '^([^:]+):(%d+):(%d+)$')
        if id then
          local now = now_ms()
          succeed(id, now, ttl_ms, ARGV[i + 2], 'attempts', attempt,
            'started_at', stamp(now - tonumber(ago)))
        else
          succeed(ARGV[i + 1], now_ms(), ttl_ms, ARGV[i + 2])
        end
      end
    end
    i = i + 3
  end
end
"""

#: The queue's own keys and moves.
_QUEUE = r"""
local ready = prefix .. '_' .. queue
local delayed, retrying, failed = base .. 'delayed', base .. 'retrying', base .. 'failed'
local consumers, recovery = base .. 'consumers', base .. 'recovery'
local urgent, seq = base .. 'urgent', base .. 'seq'
local untracked = base .. 'untracked'
local known = clustered and base .. 'known' or prefix .. ':queues'
local failed_ids = base .. 'failed:ids'
local function heartbeat(cid) return base .. 'heartbeat:' .. cid end

local HEAD = '{"__asynctask__":1,"id":"'
-- Urgent tasks (priority 1-9) wait in one sorted set: a band of 2^41 scores per level,
-- most urgent lowest; inside a band a counter keeps them FIFO (negative: at the head).
local LEVEL = 2199023255552

-- The id and attempt count of our envelope, or nil for another program's text.
local function envelope_head(m)
  return string.match(m, '^{"__asynctask__":1,"id":"([%w%-]+)","attempts":(%d+)')
end

local function priority_of(m)
  local h = string.match(m,
    '^{"__asynctask__":1,"id":"[%w%-]+","attempts":%d+,"submitted_at":[^,]+,"headers":(%b{})')
  if h then return tonumber(string.match(h, '"asynctask%-priority":"(%d)"') or '0') end
  return 0
end

-- Store a ready task: priority 0 in the ready list (the common path, as before), a
-- higher one in ``urgent``; ``at_head`` puts it first of its priority (a hand-back).
local urgent_empty = false
local function to_ready(m, at_head)
  local p = priority_of(m)
  if p == 0 then
    if at_head then redis.call('LPUSH', ready, m) else redis.call('RPUSH', ready, m) end
    return
  end
  local n = redis.call('INCR', seq)
  redis.call('ZADD', urgent, (10 - p) * LEVEL + (at_head and -n or n), m)
  urgent_empty = false
  if redis.call('LLEN', ready) == 0 then
    redis.call('RPUSH', ready, NUDGE)
    redis.call('INCR', nudges)
  end
end

-- Move the next ready task, the most urgent first, to the tail of ``proc``; nil if none.
-- (Once ``urgent`` is found empty, this script does not look again until it adds to it
-- itself: a move of several tasks saves a command a task.)
local function move_next(proc)
  while true do
    local m
    if not urgent_empty then
      m = redis.call('ZPOPMIN', urgent)[1]
      urgent_empty = not m
    end
    if m then
      redis.call('RPUSH', proc, m)
    else
      m = redis.call('LMOVE', ready, proc, 'LEFT', 'RIGHT')
      if not m then return nil end
    end
    if m ~= NUDGE then return m end
    redis.call('RPOP', proc)
    redis.call('DECR', nudges)
  end
end

-- Up to ``want`` ready tasks, the most urgent first, popped in bulk (a few commands, not
-- one a task: a call inside a script costs Redis about a microsecond), the nudges
-- dropped; ``push_all`` then puts them in a processing list.
local function pop_batch(want)
  local got = {}
  local popped = redis.call('ZPOPMIN', urgent, int(want))
  for i = 1, #popped, 2 do got[#got + 1] = popped[i] end
  local need = want - #got
  while need > 0 do
    local items = redis.call('LPOP', ready, int(need))
    if not items then break end
    for _, m in ipairs(items) do
      if m == NUDGE then redis.call('DECR', nudges) else got[#got + 1] = m end
    end
    if #items < need then break end
    need = want - #got  -- nudges were dropped: take that many more
  end
  return got
end

local function push_all(proc, got)
  for i = 1, #got, 4000 do  -- unpack() takes a few thousand values at most
    redis.call('RPUSH', proc, unpack(got, i, math.min(i + 3999, #got)))
  end
end

-- The messages a move took, at the end of its reply ``out``: a 1 and one bulk string of
-- them joined by newlines (the client's parser reads one item, not one a task), or, when
-- one of them holds a newline (another program's text), a 0 and one item each.
local function add_taken(out, got)
  if #got == 0 then return out end
  for _, m in ipairs(got) do
    if string.find(m, '\n', 1, true) then
      out[#out + 1] = 0
      for _, x in ipairs(got) do out[#out + 1] = x end
      return out
    end
  end
  out[#out + 1] = 1
  out[#out + 1] = table.concat(got, '\n')
  return out
end
"""

#: The rest of the task statuses (``asynctask.status``), fused into the queue's scripts. A
#: status is the hash ``task:<id>`` (state, attempts, submitted_at, started_at,
#: finished_at, error, result, expires_at in ms, unique); a final state pushes it on the
#: list ``done:<id>`` (what ``wait`` blocks on) and sets the expiry of both and of the
#: pointer.
_STATUS = r"""
-- New tasks' statuses (``queued`` or ``delayed``) and their ids' pointers: one HSET a
-- task (every field at once) and one MSET for all the pointers (a call inside a script
-- costs several times the work of a small write: for a batch of 1,000 this halves the
-- calls). ``expires`` (ms after now) and ``unique`` (its key) as the submit gave them,
-- or ''; ``ttl_ms`` (or nil) makes them expire (no worker will end them).
local function record(ids, state, now, expires, unique, ttl_ms)
  local fields = {'state', state, 'attempts', 0, 'submitted_at', stamp(now)}
  if expires ~= '' then
    fields[#fields + 1] = 'expires_at'; fields[#fields + 1] = now + tonumber(expires)
  end
  if unique ~= '' then fields[#fields + 1] = 'unique'; fields[#fields + 1] = unique end
  local pointers = {}
  for _, id in ipairs(ids) do
    local key = task_key(id)
    redis.call('HSET', key, unpack(fields))
    if ttl_ms then
      redis.call('PEXPIRE', key, ttl_ms)
      redis.call('SET', pointer(id), queue, 'PX', ttl_ms)
    else
      pointers[#pointers + 1] = pointer(id); pointers[#pointers + 1] = queue
    end
  end
  for i = 1, #pointers, 4000 do  -- unpack() takes a few thousand values at most
    redis.call('MSET', unpack(pointers, i, math.min(i + 3999, #pointers)))
  end
  -- held until the task is final (``holder_of``: or past its expires unstarted); never
  -- a key expiry, which let a task started in time lose it while it ran or backed off
  if unique ~= '' then
    redis.call('SET', unique_key(unique), ids[1])
    -- the queue's tasks may hold unique keys from now on: every success reads its
    -- task's (``known_plain``)
    redis.call('SET', base .. 'uniques', '1')
  end
end

-- The task holding ``unique`` on this queue while it is not final, or nil. One never
-- started and past its ``expires`` holds it no more: it will never run (the worker that
-- meets it makes it ``expired``, which frees the key only if it still holds it).
local function holder_of(unique)
  local holder = redis.call('GET', unique_key(unique))
  if holder then
    local f = redis.call('HMGET', task_key(holder), 'state', 'expires_at', 'started_at')
    if f[1] and not FINAL[f[1]] then
      if f[2] and not f[3] and now_ms() >= tonumber(f[2]) then return nil end
      return holder
    end
  end
  return nil
end

-- A task settled for good by a worker that keeps no status (issue 16): a record written
-- at its submit, before its queue turned untracked, keeps its state but is forgotten
-- ``ttl_ms`` from now with its id pointer, its unique key freed now (no worker of the
-- queue will write its end). One expiring already (written untracked), or none, stays as
-- it is. This replaces a walk of the whole queue when it turned untracked, which blocked
-- the server (200,000 tasks: 7.3 s in one script).
local function retire(id, ttl_ms)
  local key = task_key(id)
  if redis.call('PTTL', key) ~= -1 then return end
  local u = redis.call('HGET', key, 'unique')
  if u and redis.call('GET', unique_key(u)) == id then redis.call('DEL', unique_key(u)) end
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('PEXPIRE', pointer(id), ttl_ms)
end

-- ``retire`` for the acks ARGV[from ...] (``n`` triples, see ``ack_all``) of a consumer
-- keeping no status: it sends a task's id only when the task may have a record (its id
-- not made by ``unrecorded_task_id``), as an ack (message, id, '') or, for a fail, as
-- ('', id, '').
local function retire_acked(from, n, ttl_ms)
  for i = from + 1, from + 3 * n - 2, 3 do
    if ARGV[i] ~= '' then retire(ARGV[i], ttl_ms) end
  end
end

-- Back in the queue without finishing (a release, a close, a dead consumer's task):
-- a running task is queued again; any other state stays.
local function handed_back(m)
  local id = envelope_head(m)
  if id and redis.call('HGET', task_key(id), 'state') == 'running' then
    redis.call('HSET', task_key(id), 'state', 'queued')
  end
end

-- Whether a cancel has made this held task final: then it is dropped, not settled.
local function cancelled(m)
  local id = envelope_head(m)
  if id ~= nil and redis.call('HGET', task_key(id), 'state') == 'cancelled' then
    redis.call('ZREM', cancelled_ids, id)
    return true
  end
  return false
end

-- Move up to ``want`` tasks into ``proc``, the most urgent first. With tracking, the
-- first, which the consumer hands out now to be started at once, is checked and marked
-- ``running`` here (its start then costs no call); a cancelled or expired one is
-- dropped, never handed out. The others wait in the consumer's buffer for their own
-- start, which knows of a cancel made from now on (the consumer's cancel feed, see
-- cancelfeed.py) and asks Redis about an expiring task: they are checked here only
-- while some cancelled task has not been met (``cancelled_ids``), one made before the
-- feed could hear it. (A check is a parse and an HMGET: 18k instructions a task.)
-- Returns the messages and whether the first was marked.
local function take(proc, want, tracking, ttl_ms)
  local got, started = {}, 0
  local careful = tracking and cancel_pending()
  if not careful then
    -- in bulk; with tracking the first is checked (one cancelled or expired dropped, and
    -- the next checked in its place)
    got = pop_batch(want)
    local first = 1
    while tracking and got[first] do
      local id, n = envelope_head(got[first])
      if not id then break end  -- another program's text: no status
      local verdict = start_task(id, int(tonumber(n) + 1), now_ms(), ttl_ms)
      if verdict == 'run' then
        started = 1
        break
      end
      if verdict == 'cancelled' then redis.call('ZREM', cancelled_ids, id) end
      first = first + 1
    end
    if first > 1 then got = {unpack(got, first)} end
    push_all(proc, got)
    return got, started
  end
  while #got < want do
    local m = move_next(proc)
    if not m then break end
    if tracking and (#got == 0 or careful) then
      local id, n = envelope_head(m)
      if id then
        local verdict
        if #got == 0 then
          verdict = start_task(id, int(tonumber(n) + 1), now_ms(), ttl_ms)
          if verdict == 'run' then started = 1 end
        else
          verdict = start_verdict(id, now_ms(), ttl_ms)
        end
        if verdict ~= 'run' then
          redis.call('RPOP', proc)
          if verdict == 'cancelled' then redis.call('ZREM', cancelled_ids, id) end
          m = nil
        end
      end
    end
    if m then got[#got + 1] = m end
  end
  return got, started
end
"""

_MAINTAIN = r"""
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

-- Give back, at the head of its priority, a message of a consumer that let it go.
local function give_back(m)
  if m == NUDGE then
    redis.call('DECR', nudges)
    return
  end
  handed_back(m)
  to_ready(m, true)
end

-- Move due members of a sorted set to the tail of the ready list (a due delayed task is
-- queued now); return the ms until the next one is due, or nil.
local function promote(zkey, now, is_delayed)
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 500)
  if #due > 0 then
    local plain = {}
    for _, m in ipairs(due) do
      if is_delayed then
        local id = envelope_head(m)
        if id and redis.call('HGET', task_key(id), 'state') == 'delayed' then
          redis.call('HSET', task_key(id), 'state', 'queued')
        end
      end
      if priority_of(m) == 0 then plain[#plain + 1] = m else to_ready(m, false) end
    end
    if #plain > 0 then redis.call('RPUSH', ready, unpack(plain)) end
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
        give_back(bump(items[i], cid .. ':' .. i .. ':' .. now .. ':'))
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
  local wait = promote(delayed, now, true)
  local w = promote(retrying, now, false)
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

_PRELUDE = _BASE + _FINISH + _QUEUE + _STATUS + _MAINTAIN

#: A definition of the prelude: a line at column 0 opening with ``local``
_DEFINES = re.compile(r"local\s+(?:function\s+(\w+)|([\w\s,]+?)\s*(?:=|$))")
_NAME = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--[^\n]*")


@dataclass(frozen=True)
class _Definition:
    """One top-level statement of the prelude: the locals it defines, the names its code
    uses, its text (with the comment lines just above it)."""

    defines: frozenset[str]
    uses: frozenset[str]
    text: str


def _definitions(prelude: str) -> list[_Definition]:
    """The prelude cut into its top-level definitions, in order. A statement starts at a
    line at column 0 opening with ``local``; the comment and blank lines above it are
    its own; every other line belongs to the statement above it."""
    groups: list[list[str]] = []
    above: list[str] = []
    for line in prelude.splitlines(keepends=True):
        if line.startswith("local "):
            groups.append([*above, line])
            above = []
        elif line.startswith("--") or not line.strip():
            above.append(line)
        else:
            groups[-1] += [*above, line]
            above = []
    found = []
    for lines in groups:
        text = "".join(lines)
        code = _COMMENT.sub("", text)
        head = _DEFINES.search(code)
        assert head is not None, f"not a definition: {text!r}"
        names = head[1] or head[2]
        defines = frozenset(n.strip() for n in names.split(","))
        found.append(_Definition(defines, frozenset(_NAME.findall(code)) - defines, text))
    return found


_DEFINITIONS = _definitions(_PRELUDE)


def script(name: str, body: str) -> Script:
    """A script of one queue (``ARGV[1]`` prefix, ``ARGV[2]`` queue): the body after
    the prelude's definitions it uses, directly or through another, and no others.

    Every definition a script holds is work at each of its calls (about 600
    instructions a function or key name: the whole prelude cost a call 63k
    instructions of redis-server, callgrind, against 16k for an empty script), and a
    local refers only to those above it, so one pass from the last up finds them all.
    """
    needed = set(_NAME.findall(_COMMENT.sub("", body)))
    kept: list[str] = []
    for definition in reversed(_DEFINITIONS):
        if definition.defines & needed:
            kept.append(definition.text)
            needed |= definition.uses
    return Script(name, "".join(reversed(kept)) + body)


#: ARGV: prefix, queue, consumer id, want, recheck_ms, heartbeat_ttl_ms, flags
#: (1 register, 2 register and resync), tracking (1/0), status ttl_ms, n_acks, acks
#: (triples: message, task id or '', result JSON or '')..., held... (with resync). Acknowledges,
#: maintains, then moves up to ``want`` ready tasks to the consumer's processing list
#: (see ``take``). Returns {wait_ms or -1, first marked running (1/0), taken...} (taken:
#: see ``add_taken``).
TAKE = script(
    "take",
    r"""
local cid, want, flags = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[7])
local tracking, ttl_ms, nacks = ARGV[8] == '1', ARGV[9], tonumber(ARGV[10])
local proc = processing(cid)
ack_all(proc, 11, nacks, tracking, ttl_ms)
if not tracking then retire_acked(11, nacks, ttl_ms) end
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
  for i = 11 + 3 * nacks, #ARGV do keep[ARGV[i]] = (keep[ARGV[i]] or 0) + 1 end
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
  for i = #back, 1, -1 do give_back(back[i]) end
end
local wait = maintain(cid, ARGV[5])
local got, started = take(proc, want, tracking, ttl_ms)
return add_taken({wait or -1, started}, got)
""",
)

#: ARGV: prefix, queue, consumer id, want, tracking (1/0), status ttl_ms, give back
#: (a message the consumer moved from the ready list while urgent tasks wait, or ''),
#: whole (the last ack's message when the acks are all the consumer holds, their
#: messages then sent as '=', see ``whole_acked``; else ''), n_acks, acks (triples)...
#: The hot path between TAKEs: acks and moves, no maintenance. The SADD keeps a
#: consumer that was wrongly found dead (its heartbeat late) findable from its first new
#: task on. Returns {first marked running (1/0), taken...} (see ``add_taken``), or {-2}
#: with nothing written when ``whole`` did not hold: the consumer sends the messages.
#:
#: A batch costs a few commands, not two a task (``ack_all``'s LTRIM, ``pop_batch``): a
#: call inside a script costs Redis about a microsecond, and a prefetch of 32 made this
#: script 64 of them (with tracking, until 2026-12-07: one LREM and one LMOVE a task).
NEXT = script(
    "next",
    r"""
local cid, tracking, ttl_ms, nacks = ARGV[3], ARGV[5] == '1', ARGV[6], tonumber(ARGV[9])
local proc = processing(cid)
local whole = ARGV[8] ~= ''
if whole and not whole_acked(proc, nacks, ARGV[8]) then return {-2} end
if ARGV[7] ~= '' and redis.call('LREM', proc, '-1', ARGV[7]) == 1 then
  redis.call('LPUSH', ready, ARGV[7])  -- back where it was: the urgent go first
end
ack_all(proc, 10, nacks, tracking, ttl_ms, whole)
if not tracking then retire_acked(10, nacks, ttl_ms) end
local got, started = take(proc, tonumber(ARGV[4]), tracking, ttl_ms)
if #got > 0 then redis.call('SADD', consumers, cid) end
return add_taken({started}, got)
""",
)

#: ARGV: ready, processing, consumers, urgent and nudges keys, consumer id, want,
#: whole ('' or how many acks, when they are all the consumer holds: then the one
#: argument after is the last of them, see ``whole_acked``), acknowledged messages...
#: ``NEXT`` without tracking, for the common case the consumer
#: picks: no status to write or retire (no task id among its acks), no nudge among them,
#: nothing to give back. Returns {-1} and writes nothing when urgent tasks wait (the
#: consumer then sends ``NEXT``, which takes those first); else acks and moves up to
#: ``want`` ready tasks as ``NEXT`` does, and returns {0, taken...} (see ``add_taken``),
#: or {-2} with nothing written when ``whole`` did not hold (the consumer sends the
#: messages).
#: Written whole, its keys given: the prelude's definitions and key names cost ``NEXT``
#: 31k instructions a call (redis-server under callgrind) and its helpers more; in a
#: drain at prefetch 4 without tracking, 2 children, Redis's work a task went from
#: 63.4k to 42.5k instructions (00bd0fa's, whose move was written the same way: 42.0k).
MOVE = Script(
    "move",
    r"""
local ready, proc, urgent = ARGV[1], ARGV[2], ARGV[4]
if redis.call('EXISTS', urgent) == 1 then return {-1} end
local n = #ARGV - 8
if ARGV[8] ~= '' then
  -- all the consumer held, ARGV[8] of them, the last ARGV[9] (``whole_acked``)
  if redis.call('LLEN', proc) ~= tonumber(ARGV[8]) then return {-2} end
  if not redis.call('LPOS', proc, ARGV[9]) then return {-2} end
  redis.call('DEL', proc)
elseif n > 0 then
  -- acked in the order they were taken (a drain's case): the head of the list, one
  -- LTRIM; any other order one LREM each
  local head = redis.call('LRANGE', proc, '0', string.format('%d', n - 1))
  local trimmed = #head == n
  for j = 1, n do
    if head[j] ~= ARGV[8 + j] then trimmed = false; break end
  end
  if trimmed then
    redis.call('LTRIM', proc, string.format('%d', n), '-1')
  else
    for j = 9, #ARGV do redis.call('LREM', proc, '1', ARGV[j]) end
  end
end
local got = {}
local items = redis.call('LPOP', ready, ARGV[7])
if items then
  for _, m in ipairs(items) do
    -- a nudge an urgent task left (taken since by another consumer): dropped
    if m == '{"__asynctask__":0}' then redis.call('DECR', ARGV[5]) else got[#got + 1] = m end
  end
end
if #got == 0 then return {0} end
for i = 1, #got, 4000 do  -- unpack() takes a few thousand values at most
  redis.call('RPUSH', proc, unpack(got, i, math.min(i + 3999, #got)))
end
redis.call('SADD', ARGV[3], ARGV[6])
for _, m in ipairs(got) do
  if string.find(m, '\n', 1, true) then
    local out = {0, 0}
    for _, x in ipairs(got) do out[#out + 1] = x end
    return out
  end
end
return {0, 1, table.concat(got, '\n')}
""",
)

#: ARGV: prefix, queue, consumer id, status ttl_ms, keep (1/0), task id, attempt (its
#: number), message ('' with keep; with no task id, the last ack's message when the acks
#: are the head of the list, sent as '='), n_acks, acks (triples)... The worker is about to run
#: a task it holds: ``running``, or, when it was cancelled or has expired, dropped from
#: its list (with ``keep``: left there, the consumer sent this without waiting for the
#: reply and the task runs already, as a cancelled running task does). Carries the
#: pending acks (and their results) and late starts. Returns 'run', 'cancelled' or
#: 'expired'; with no task id ('') it only sends those (``asynctask_redis.startmarks``).
#: It runs once a task: given the id and attempt the consumer read, so that it parses no
#: message (149k instructions of redis-server a call before, 70-80k now, callgrind).
START = script(
    "start",
    r"""
local proc, ttl_ms, n = processing(ARGV[3]), ARGV[4], tonumber(ARGV[9])
local trimmed = false
if ARGV[6] == '' and ARGV[8] ~= '' then
  -- the acks are the head of the list, their messages sent as '=' and the last one
  -- here (a move's acks sent after it, ``RedisConsumer._next_then_acks``): gone with
  -- one LTRIM if that one is where the consumer left it; if not (the list recovered by
  -- another consumer meanwhile), nothing of theirs is left to remove
  if redis.call('LINDEX', proc, int(n - 1)) == ARGV[8] then
    redis.call('LTRIM', proc, int(n), '-1')
  end
  trimmed = true
end
ack_all(proc, 10, n, true, ttl_ms, trimmed)
if ARGV[6] == '' then return 'run' end
local verdict = start_task(ARGV[6], ARGV[7], now_ms(), ttl_ms)
if verdict ~= 'run' and ARGV[5] ~= '1' then
  redis.call('LREM', proc, '1', ARGV[8])
  if verdict == 'cancelled' then redis.call('ZREM', cancelled_ids, ARGV[6]) end
end
return verdict
""",
)

#: ARGV: prefix, queue, most. The ids of ``P:Q:cancelled`` not past their horizon (the
#: status ttl; the set is trimmed only by the next cancel), oldest first, at most ``most``:
#: what a status feed loads when it opens (``asynctask_redis.statusfeed``).
LIVE_CANCELS = script(
    "live_cancels",
    r"""
return redis.call('ZRANGEBYSCORE', cancelled_ids, string.format('(%d', now_ms()), '+inf',
  'LIMIT', 0, tonumber(ARGV[3]))
""",
)

#: ARGV: prefix, queue, consumer id, op, message, argument, delay_ms, tracking (1/0),
#: status ttl_ms, error, n_acks, acks (triples)... Acknowledges, then settles one message
#: of the consumer's processing list: retry (argument = new envelope), fail (argument =
#: failed record), release, canon (argument = canonical envelope), ack (nothing more)
#: or close (everything back). A task cancelled meanwhile is dropped by retry and fail
#: (never retried, not failed): then it returns 2. Else 1, or 0 when the message was no
#: longer held (recovered by another consumer).
SETTLE = script(
    "settle",
    r"""
local cid, op, m, tracking, ttl_ms = ARGV[3], ARGV[4], ARGV[5], ARGV[8] == '1', ARGV[9]
local proc = processing(cid)
ack_all(proc, 12, tonumber(ARGV[11]), tracking, ttl_ms)
if not tracking then retire_acked(12, tonumber(ARGV[11]), ttl_ms) end
if op == 'close' then
  local items = redis.call('LRANGE', proc, 0, -1)
  for i = #items, 1, -1 do give_back(items[i]) end
  redis.call('DEL', proc, heartbeat(cid))
  redis.call('SADD', known, queue)
  redis.call('SREM', consumers, cid)
  return 1
end
if op == 'ack' then return 1 end
if redis.call('LREM', proc, 1, m) == 0 then return 0 end
if (op == 'retry' or op == 'fail') and tracking and cancelled(m) then return 2 end
local id, n = envelope_head(m)
if op == 'retry' then
  redis.call('ZADD', retrying, now_ms() + tonumber(ARGV[7]), ARGV[6])
  redis.call('SADD', known, queue)
  if tracking and id and redis.call('EXISTS', task_key(id)) == 1 then
    redis.call('HSET', task_key(id), 'state', 'retrying', 'attempts', tonumber(n) + 1,
      'error', ARGV[10])
  end
elseif op == 'fail' then
  keep_failed(ARGV[6])
  if tracking and id and redis.call('EXISTS', task_key(id)) == 1 then
    finish(id, 'failed', now_ms(), ttl_ms, 'attempts', tonumber(n) + 1, 'error', ARGV[10])
  end
elseif op == 'release' then
  give_back(m)
  redis.call('SADD', known, queue)
elseif op == 'canon' then
  redis.call('RPUSH', proc, ARGV[6])
end
return 1
""",
)

#: ARGV: prefix, queue, owner, status ttl_ms, n_finished, finished ids..., started ids... (or ``*``:
#: all). The owner's worker is gone: every message its consumers hold goes back to the
#: head of the queue in order, one attempt more for the started ones only, except the
#: finished ones (an ack the dead consumer had not sent yet: succeeded, its result
#: lost), which are dropped; its liveness key is deleted. Returns how many went back.
END = script(
    "end",
    r"""
local owner, ttl_ms, nfinished = ARGV[3], ARGV[4], tonumber(ARGV[5])
local finished, started = {}, {}
for i = 6, 5 + nfinished do finished[ARGV[i]] = true end
local all = ARGV[6 + nfinished] == '*'
for i = 6 + nfinished, #ARGV do started[ARGV[i]] = true end
local now = now_ms()
local moved = 0
for _, cid in ipairs(redis.call('SMEMBERS', consumers)) do
  if owner_of(cid) == owner then
    local proc = processing(cid)
    local items = redis.call('LRANGE', proc, 0, -1)
    for i = #items, 1, -1 do
      local m = items[i]
      local id = envelope_head(m)
      if id and finished[id] then
        succeed(id, now, ttl_ms, '')
      else
        if all or (id and started[id]) then m = bump(m, cid .. ':' .. i .. ':' .. now .. ':') end
        give_back(m)
        if m ~= NUDGE then moved = moved + 1 end
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

#: ARGV: prefix, queue, recheck_ms, status ttl_ms. Maintains, then takes the next ready
#: task for good (``get_task``: the most urgent first; a cancelled or expired one is
#: dropped; a kept status reads succeeded, the caller having taken it).
GET = script(
    "get",
    r"""
maintain('', ARGV[3])
while true do
  local top = redis.call('ZPOPMIN', urgent)
  local m = top[1] or redis.call('LPOP', ready)
  if not m then return nil end
  if m == NUDGE then
    redis.call('DECR', nudges)
  else
    local id, n = envelope_head(m)
    if not id then return m end
    local now = now_ms()
    local verdict = start_task(id, int(tonumber(n) + 1), now, ARGV[4])
    if verdict == 'run' then
      succeed(id, now, ARGV[4], '')
      return m
    end
    if verdict == 'cancelled' then redis.call('ZREM', cancelled_ids, id) end
  end
end
""",
)

#: ARGV: prefix, queue, recheck_ms. Returns {ready, delayed, retrying, in_flight, failed}.
STATS = script(
    "stats",
    r"""
maintain('', ARGV[3])
local in_flight = 0
for _, cid in ipairs(redis.call('SMEMBERS', consumers)) do
  in_flight = in_flight + redis.call('LLEN', processing(cid))
end
local ready_n = redis.call('LLEN', ready) + redis.call('ZCARD', urgent)
  - tonumber(redis.call('GET', nudges) or '0')
return {ready_n, redis.call('ZCARD', delayed),
        redis.call('ZCARD', retrying), in_flight, redis.call('LLEN', failed)}
""",
)

#: ARGV: prefix, queue, offset, limit. Returns up to ``limit`` ready messages after the
#: first ``offset``, in the order takers take them: the urgent ones (highest priority
#: first, FIFO within), then the ready list, less the nudges it may hold (not tasks).
#: Reads no more than offset + limit entries (plus nudges), returns only the page.
PEEK = script(
    "peek",
    r"""
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local n_urgent = redis.call('ZCARD', urgent)
if offset < n_urgent then
  out = redis.call('ZRANGE', urgent, offset, offset + limit - 1)
  offset = 0
else
  offset = offset - n_urgent
end
local i = 0
if tonumber(redis.call('GET', nudges) or '0') <= 0 then
  i, offset = offset, 0  -- no nudge in the list: its positions are the tasks'
end
while #out < limit do
  local chunk = redis.call('LRANGE', ready, i, i + 999)
  if #chunk == 0 then break end
  for _, m in ipairs(chunk) do
    if m ~= NUDGE then
      if offset > 0 then
        offset = offset - 1
      else
        out[#out + 1] = m
        if #out >= limit then break end
      end
    end
  end
  i = i + 1000
end
return out
""",
)

#: ARGV: prefix, queue, offset, limit. Returns, flat, ``consumer id, message, started
#: at`` (seconds as text, '' unless the task is ``running``) for up to ``limit`` held
#: tasks after the first ``offset``: consumers by id, each one's processing list in
#: order. Reads the lists' lengths and the page only.
IN_FLIGHT = script(
    "in_flight",
    r"""
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local cids = redis.call('SMEMBERS', consumers)
table.sort(cids)
local out, n = {}, 0
for _, cid in ipairs(cids) do
  if n >= limit then break end
  local proc = processing(cid)
  local len = redis.call('LLEN', proc)
  if offset >= len then
    offset = offset - len
  else
    for _, m in ipairs(redis.call('LRANGE', proc, offset, offset + limit - n - 1)) do
      local started = ''
      local id = envelope_head(m)
      if id then
        local f = redis.call('HMGET', task_key(id), 'state', 'started_at')
        if f[1] == 'running' and f[2] then started = f[2] end
      end
      out[#out + 1], out[#out + 2], out[#out + 3] = cid, m, started
      n = n + 1
    end
    offset = 0
  end
end
return out
""",
)

#: ARGV: prefix, queue, first task id, guard_ms, delay_ms, status ttl_ms, status (1:
#: recorded here, 0: kept elsewhere), expires_ms (or ''), unique key (or ''),
#: envelope... Stores tasks in order: ready (by priority, from the envelope's header
#: ``asynctask-priority``) or delayed, each with its status (``queued``/``delayed``)
#: and its id's pointer (on a queue whose workers keep no status, expiring after
#: ttl_ms: nothing else would end it). The key ``P:Q:put:<first id>`` (kept guard_ms,
#: longer than any retry of the submit) makes a submit retried after a lost reply write
#: nothing the second time. Returns {1} stored, {0} such a retry, {2, id} the unique key is held by
#: that task (nothing written), {3} the queue's worker keeps no status and expires or a
#: unique key needs one (nothing written).
PUT = script(
    "put",
    r"""
local ttl_ms, here = ARGV[6], ARGV[7] == '1'
local expires, unique = ARGV[8], ARGV[9]
local tracked = here and redis.call('EXISTS', untracked) == 0
if here and not tracked and (expires ~= '' or unique ~= '') then return {3} end
if tracked and unique ~= '' then
  -- checked before the guard: a retry after a lost reply finds its own task here
  local holder = holder_of(unique)
  if holder then return {2, holder} end
end
if not redis.call('SET', base .. 'put:' .. ARGV[3], '1', 'NX', 'PX', ARGV[4]) then
  -- a write all the same: a WAIT after this retry covers the first try's tasks
  redis.call('PEXPIRE', base .. 'put:' .. ARGV[3], ARGV[4])
  return {0}
end
local delay = tonumber(ARGV[5])
local now = now_ms()
if here then
  local ids = {}
  for i = 10, #ARGV do ids[#ids + 1] = envelope_head(ARGV[i]) end
  -- on an untracked queue its workers will write nothing more: Redis forgets it
  record(ids, delay > 0 and 'delayed' or 'queued', now, expires, unique,
    not tracked and ttl_ms or nil)
end
if delay > 0 then
  local due = now + delay
  for i = 10, #ARGV do
    -- a thousandth of a ms apart, so a batch comes out in submission order
    redis.call('ZADD', delayed, due + (i - 10) * 0.001, ARGV[i])
  end
elseif priority_of(ARGV[10]) > 0 then
  for i = 10, #ARGV do to_ready(ARGV[i], false) end
else
  for i = 10, #ARGV, 4000 do  -- unpack() takes a few thousand values at most
    redis.call('RPUSH', ready, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
end
redis.call('SADD', known, queue)
return {1}
""",
)

#: ARGV: prefix, queue, task id, guard_ms, status ttl_ms, envelope. ``PUT``'s plain
#: tracked case, which the client picks: one task, ready now, priority 0, no expires, no
#: unique key, its status record kept in this Redis. It writes what ``PUT`` writes then:
#: the guard (a retry after a lost reply writes nothing), the ``queued`` record and its
#: pointer (expiring after ttl_ms when the queue's workers keep no status), the push and
#: the queue's name. Written whole with the key names of ``_BASE`` and ``_QUEUE``: the
#: prelude's helpers ``PUT`` defines cost it most of its 175k instructions of
#: redis-server a call (callgrind, 2,000 submits); not on a Redis Cluster (its pointer
#: goes in a command of its own there).
PUT_ONE = Script(
    "put_one",
    r"""
local prefix, queue, id, ttl_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local base = prefix .. ':' .. queue .. ':'
local guard = base .. 'put:' .. id
if not redis.call('SET', guard, '1', 'NX', 'PX', ARGV[4]) then
  redis.call('PEXPIRE', guard, ARGV[4])  -- a write: a WAIT after this retry counts
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, at = base .. 'task:' .. id, prefix .. ':@id:' .. id
redis.call('HSET', key, 'state', 'queued', 'attempts', '0', 'submitted_at',
  string.format('%.3f', now / 1000))
if redis.call('EXISTS', base .. 'untracked') == 1 then
  -- on an untracked queue its workers will write nothing more: Redis forgets it
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('SET', at, queue, 'PX', ttl_ms)
else
  redis.call('SET', at, queue)
end
redis.call('RPUSH', prefix .. '_' .. queue, ARGV[6])
redis.call('SADD', prefix .. ':queues', queue)
return 1
""",
)

#: ARGV: prefix, queue, first task id, guard_ms, envelope... ``PUT``'s plain case, which
#: the client picks: ready now, priority 0, no status record written here (the queue's
#: workers keep none, as the client's ``asynctask.untracked`` cache knows, or another
#: store keeps them). The same guard key ``put:<first id>`` makes a retry after a lost
#: reply write nothing. Returns 1 stored, 0 such a retry.
#: Without the prelude: defining its helpers cost ``PUT`` 41k of its 117k instructions a
#: call (redis-server under callgrind, one task, untracked), this one costs about 40k.
#: The key names are those of ``_BASE`` and ``_QUEUE``.
PUSH = Script(
    "push",
    r"""
local prefix, queue = ARGV[1], ARGV[2]
local base = prefix .. ':' .. queue .. ':'
local guard = base .. 'put:' .. ARGV[3]
if not redis.call('SET', guard, '1', 'NX', 'PX', ARGV[4]) then
  redis.call('PEXPIRE', guard, ARGV[4])  -- a write: a WAIT after this retry counts
  return 0
end
local ready = prefix .. '_' .. queue
for i = 5, #ARGV, 4000 do  -- unpack() takes a few thousand values at most
  redis.call('RPUSH', ready, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
-- (on a Redis Cluster the queue comes as '{name}': its names set is in its slot)
redis.call('SADD', string.sub(queue, 1, 1) == '{' and base .. 'known' or prefix .. ':queues',
  queue)
return 1
""",
)

#: ARGV: prefix, queue, chunk, and '1' to learn the ids. Deletes up to ``chunk`` ready,
#: delayed, retrying and urgent tasks and their statuses; returns {how many tasks, how
#: many are left} (and their ids, with '1': another store keeps their statuses,
#: ``asynctask_state``). The caller calls it again until none are left: one script over
#: a whole queue blocked the server for every client (1,000,000 tracked tasks: past
#: Redis' 5 s busy-script limit, and the bench's other calls answered BUSY); a chunk of
#: 1,000 takes a few milliseconds.
PURGE = script(
    "purge",
    r"""
local chunk, want = tonumber(ARGV[3]), ARGV[4] == '1'
local ids = {}
if not want and redis.call('EXISTS', untracked) == 1 then
  -- no status records to forget: the lists go in one step, freed in the background
  local n = redis.call('LLEN', ready) + redis.call('ZCARD', delayed)
    + redis.call('ZCARD', retrying) + redis.call('ZCARD', urgent)
    - tonumber(redis.call('GET', nudges) or '0')
  redis.call('UNLINK', ready, delayed, retrying, urgent, nudges)
  return {n, 0}
end
local n, left = 0, chunk
local function forget(items, from_ready)
  for _, m in ipairs(items) do
    if m == NUDGE and from_ready then
      redis.call('DECR', nudges)
    else
      n = n + 1
      local id = envelope_head(m)
      if id and want then ids[#ids + 1] = id end
      if id then
        local f = redis.call('HMGET', task_key(id), 'unique', 'waiting')
        local u = f[1]
        if u and redis.call('GET', unique_key(u)) == id then redis.call('DEL', unique_key(u)) end
        redis.call('UNLINK', task_key(id), done_key(id), pointer(id))
        redis.call('ZREM', cancelled_ids, id)
        if f[2] then  -- a waiter: woken, it reads nothing and returns
          redis.call('RPUSH', done_key(id), 'purged')
          redis.call('PEXPIRE', done_key(id), 60000)
        end
      end
    end
  end
  left = left - #items
end
local items = redis.call('LRANGE', ready, 0, left - 1)
if #items > 0 then
  redis.call('LTRIM', ready, #items, -1)
  forget(items, true)
end
for _, z in ipairs({delayed, retrying, urgent}) do
  if left > 0 then
    items = redis.call('ZRANGE', z, 0, left - 1)
    if #items > 0 then
      redis.call('ZREMRANGEBYRANK', z, 0, #items - 1)
      forget(items, false)
    end
  end
end
local more = redis.call('LLEN', ready) + redis.call('ZCARD', delayed)
  + redis.call('ZCARD', retrying) + redis.call('ZCARD', urgent)
if more == 0 then redis.call('UNLINK', nudges) end
if want then return {n, more, ids} end
return {n, more}
""",
)

#: ARGV: prefix, queue, (failed record, replacement or ''), ... Removes each record from
#: the failed store and its index; pushes its replacement (if any) to the ready list,
#: its status ``queued`` again; without one, its status is deleted with it.
#: Returns how many. (LREM finds a record by a scan in C, from the oldest: the newest of
#: 20,000 takes about 7 ms; the Python side fetched only the records it names. With 20,000
#: failed, requeue by one id took 0.35 s reading the whole list, 0.8 ms now; 999 ids
#: 0.29 s, 35 ms now.)
TAKE_FAILED = script(
    "take_failed",
    r"""
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('LREM', failed, 1, ARGV[i]) == 1 then
    n = n + 1
    local id = failed_id(ARGV[i])
    if redis.call('HGET', failed_ids, id) == ARGV[i] then redis.call('HDEL', failed_ids, id) end
    if ARGV[i + 1] ~= '' then
      to_ready(ARGV[i + 1], false)
      if redis.call('EXISTS', task_key(id)) == 1 then  -- queued again, waiters wait on
        redis.call('HSET', task_key(id), 'state', 'queued')
        redis.call('HDEL', task_key(id), 'finished_at')
        redis.call('DEL', done_key(id))
      end
    else
      local waiting = redis.call('HGET', task_key(id), 'waiting')
      redis.call('UNLINK', task_key(id), done_key(id), pointer(id))
      if waiting then  -- a waiter: woken, it reads nothing and returns
        redis.call('RPUSH', done_key(id), 'purged')
        redis.call('PEXPIRE', done_key(id), 60000)
      end
    end
  end
end
if n > 0 then redis.call('SADD', known, queue) end
return n
""",
)

#: ARGV: prefix, queue, id... The failed records of those ids ('' for none), from the
#: index; when the index misses records of the list (written by an older version or
#: another program), it is rebuilt first, once, by a scan of the list.
FIND_FAILED = script(
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

#: ARGV: prefix, queue, chunk, and '1' to learn the ids. Deletes up to ``chunk`` records
#: of the failed store and the statuses of their tasks; returns {how many, how many are
#: left} (and their ids, with '1'): called until none are left, as ``PURGE`` is, so that
#: no call holds the server long.
PURGE_ALL_FAILED = script(
    "purge_all_failed",
    r"""
local chunk, want = tonumber(ARGV[3]), ARGV[4] == '1'
local ids = {}
if not want and redis.call('EXISTS', untracked) == 1 then
  local n = redis.call('LLEN', failed)
  redis.call('UNLINK', failed, failed_ids)
  return {n, 0}
end
local records = redis.call('LRANGE', failed, 0, chunk - 1)
if #records > 0 then redis.call('LTRIM', failed, #records, -1) end
for _, rec in ipairs(records) do
  local id = failed_id(rec)
  if want then ids[#ids + 1] = id end
  redis.call('HDEL', failed_ids, id)
  local waiting = redis.call('HGET', task_key(id), 'waiting')
  redis.call('UNLINK', task_key(id), done_key(id), pointer(id))
  if waiting then
    redis.call('RPUSH', done_key(id), 'purged')
    redis.call('PEXPIRE', done_key(id), 60000)
  end
end
local left = redis.call('LLEN', failed)
if left == 0 then redis.call('UNLINK', failed_ids) end
if want then return {#records, left, ids} end
return {#records, left}
""",
)

#: ARGV: prefix, ''. Returns the known queues with anything stored, and prunes from the
#: set those with nothing: every script that stores into a queue adds its name again in
#: the same atomic step, so a pruned name never hides a task.
QUEUES = script(
    "queues",
    r"""
local names = {}
for _, q in ipairs(redis.call('SMEMBERS', known)) do
  local b = prefix .. ':' .. q .. ':'
  local n = redis.call('LLEN', prefix .. '_' .. q) + redis.call('ZCARD', b .. 'delayed')
    + redis.call('ZCARD', b .. 'retrying') + redis.call('LLEN', b .. 'failed')
    + redis.call('ZCARD', b .. 'urgent') - tonumber(redis.call('GET', b .. 'nudges') or '0')
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
    + redis.call('ZCARD', b .. 'urgent') - tonumber(redis.call('GET', b .. 'nudges') or '0')
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
LIMIT_TAKE = script(
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
LIMIT_FREE = script(
    "limit_free",
    r"""
redis.call('HDEL', base .. 'limit:running', ARGV[3])
return 1
""",
)
