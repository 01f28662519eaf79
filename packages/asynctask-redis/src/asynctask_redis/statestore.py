"""The redis transport's task statuses as a ``StateStore`` (``asynctask.status``).

The transport's own queue scripts write the same keys as part of their work (a submit
records ``queued`` in the ``PUT`` script, a reserve marks ``running`` in its move, an ack
writes ``succeeded`` with the next move): this class is the generic side, used by
``status``/``wait``/``cancel`` and by any other transport whose ``asynctask_state``
names this Redis (AMQP keeps its state here that way).

With prefix ``P`` and queue ``Q`` a status is the hash ``P:Q:task:<id>`` (state,
attempts, submitted_at, started_at, finished_at, error, result, expires_at in ms,
unique, waiting), found by id through the pointer ``P:@id:<id>`` (the queue's name). A
waiter marks the field ``waiting`` (``MARK_WAITING``); a final state reached once it is
there is pushed on the list ``P:Q:done:<id>``, on which ``wait`` blocks (``BLMOVE`` from
the list to itself, so every waiter wakes and the signal stays). The keys expire
``asynctask_status_ttl`` after the final state (a failed task's when its failed record is
requeued or purged).
A unique key is held by ``P:Q:unique:<key>`` (the task's id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from asynctask.status import (
    FINAL_STATES,
    STATES,
    StartVerdict,
    State,
    StateStore,
    StatusNotTracked,
    SubmitOptions,
    TaskStatus,
)
from asynctask_redis.connection import call, pipeline, run
from asynctask_redis.scripts import Script, script
from asynctask_redis.statusfeed import RedisStatusFeed

if TYPE_CHECKING:
    from asynctask_redis.transport import RedisTransport

#: ARGV: prefix, queue, delayed (1/0), expires_ms or '', unique key or '', id...
#: Records new tasks; returns their ids, or {holder} when the unique key is held.
SUBMITTED = script(
    "submitted",
    r"""
local state, expires, unique = ARGV[3] == '1' and 'delayed' or 'queued', ARGV[4], ARGV[5]
if unique ~= '' then
  local holder = holder_of(unique)
  if holder then return {holder} end
end
local out = {}
for i = 6, #ARGV do out[#out + 1] = ARGV[i] end
record(out, state, now_ms(), expires, unique)
return out
""",
)

#: A consumer's status writes (``STARTED``, ``SETTLED``, a feed's ``WRITES``), ARGV[3] the
#: status ttl in ms. Built with only the prelude definitions it uses (``script``): a status write
#: needs none of the queue's, and every local a script defines is work at each call (the
#: queue's helpers cost these writes about 20k instructions a call, redis-server under
#: callgrind).
_WRITE = r"""
local ttl_ms = ARGV[3]

-- 'run' (now running), 'cancelled' or 'expired' (then the caller drops the task: a
-- cancelled one is met, see ``CANCEL``); ``ago``: ms since it started (a mark sent late).
-- ``late``: a status feed's start, not waited for: the task runs whatever the verdict,
-- so one cancelled before its mark came still gets the attempt it ran and its start
-- time, as a cancel after the mark leaves it; and one that comes after the task's
-- outcome (made by a relay, written after a direct ``settled``) leaves that outcome: a
-- final one, or the ``retrying`` of that same attempt (a later attempt's start writes).
local function start_one(id, attempt, ago, late)
  if late then
    local f = redis.call('HMGET', task_key(id), 'state', 'attempts')
    if f[1] == 'succeeded' or f[1] == 'failed' then return 'run' end
    if f[1] == 'retrying' and tonumber(f[2] or '0') >= tonumber(attempt) then
      return 'run'
    end
  end
  local started = now_ms() - ago
  local verdict = start_task(id, attempt, started, ttl_ms)
  if verdict == 'cancelled' then
    redis.call('ZREM', cancelled_ids, id)
    if late then
      redis.call('HSET', task_key(id), 'attempts', attempt, 'started_at', stamp(started))
    end
  end
  return verdict
end

-- A start not sent yet and its success (a consumer's short task among others): one read
-- and one write for both, never over a cancel (a status feed's tasks have no
-- ``expires``: their starts always wait for ``STARTED``). Returns what ``start_one``
-- would have.
local function start_and_succeed(id, attempt, ago, result)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'state', 'unique', 'waiting')
  local state = f[1]
  local now = now_ms()
  local fields = {'attempts', attempt, 'started_at', stamp(now - ago)}
  if state == 'cancelled' then  -- it ran all the same: see ``start_one``
    redis.call('ZREM', cancelled_ids, id)
    redis.call('HSET', key, unpack(fields))
  end
  if state == 'cancelled' or state == 'expired' then return state end
  if not state then return 'run' end  -- no status kept
  if result ~= '' then fields[5] = 'result'; fields[6] = result end
  finish_held(key, id, f[2], f[3], 'succeeded', now, ttl_ms, unpack(fields))
  return 'run'
end

-- An outcome (``attempts`` 0: unchanged); a cancelled or expired task keeps its state.
-- One read of the fields a final write needs (state, unique key, waiter mark).
local function settle_one(id, state, attempts, err, result)
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'state', 'unique', 'waiting')
  local current = f[1]
  if not current or current == 'cancelled' or current == 'expired' then return 0 end
  local extra = {}
  if attempts > 0 then extra[#extra + 1] = 'attempts'; extra[#extra + 1] = attempts end
  if err ~= '' then extra[#extra + 1] = 'error'; extra[#extra + 1] = err end
  if state == 'succeeded' and result ~= '' then
    extra[#extra + 1] = 'result'; extra[#extra + 1] = result
  end
  if FINAL[state] then
    finish_held(key, id, f[2], f[3], state, now_ms(), ttl_ms, unpack(extra))
  elseif state == 'queued' then  -- handed back, or requeued from the failed store
    redis.call('HSET', key, 'state', 'queued', unpack(extra))
    redis.call('HDEL', key, 'finished_at')
    redis.call('PERSIST', key)
    redis.call('DEL', done_key(id))
  else
    redis.call('HSET', key, 'state', state, unpack(extra))
  end
  return 1
end
"""

#: ARGV: prefix, queue, ttl_ms, id, attempt. Returns 'run', 'cancelled' or 'expired'
#: (then the caller drops the task: a cancelled one is met, see ``CANCEL``).
STARTED = script("started", _WRITE + "return start_one(ARGV[4], ARGV[5], 0)\n")

#: ARGV: prefix, queue, ttl_ms, id, state, attempts (0: unchanged), error or '',
#: result JSON or ''. A cancelled or expired task keeps its state. Returns 1 if written.
SETTLED = script(
    "settled",
    _WRITE + "return settle_one(ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8])\n",
)

#: ARGV: prefix, queue, id, where, error. The failed window (``StateStore.failing``): the
#: running task's worker is about to move it into its transport's failed store at
#: ``where``, noted in the field ``failing`` with the error (a later ``failed`` leaves it:
#: only a ``running`` status with it is looked up). Returns 2 when the task was cancelled
#: (nothing noted), 1 when noted, 0 when no status is kept or it is not running.
FAILING = script(
    "failing",
    r"""
local key = task_key(ARGV[3])
local state = redis.call('HGET', key, 'state')
if state == 'cancelled' then return 2 end
if state ~= 'running' then return 0 end
redis.call('HSET', key, 'failing', ARGV[4], 'error', ARGV[5])
return 1
""",
)

#: ARGV: prefix, queue, ttl_ms, id, where. ``failed`` (as ``SETTLED`` writes it, waking
#: the waiters) for a task still ``running`` with the note ``where``; else nothing (a
#: write since the note stands). Returns 1 if written.
CONFIRM_FAILED = script(
    "confirm_failed",
    _WRITE
    + r"""
local f = redis.call('HMGET', task_key(ARGV[4]), 'state', 'failing', 'error')
if f[1] ~= 'running' or f[2] ~= ARGV[5] then return 0 end
return settle_one(ARGV[4], 'failed', 0, f[3] or '', '')
""",
)

#: ARGV: prefix, queue, ttl_ms, then writes in the order they happened, each a start
#: ('s', id, attempt, ms since it started), an outcome ('o', id, state, attempts, error
#: or '', result JSON or '') as ``STARTED`` and ``SETTLED`` make them, or a start and its
#: success ('b', id, attempt, ms since it started, result JSON or ''): a status feed's
#: writes in one call (``asynctask_redis.statusfeed``). Returns 0 when every start may
#: run (the common reply, which the feed reads without a parser), else the verdicts of
#: the starts ('s' and 'b'), in order.
WRITES = script(
    "writes",
    _WRITE
    + r"""
local verdicts, i, all_run = {}, 4, true
while i <= #ARGV do
  local kind, verdict = ARGV[i], nil
  if kind == 's' then
    verdict = start_one(ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), true)
    i = i + 4
  elseif kind == 'b' then
    verdict = start_and_succeed(ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4])
    i = i + 5
  else
    settle_one(ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5])
    i = i + 6
  end
  if verdict then
    verdicts[#verdicts + 1] = verdict
    if verdict ~= 'run' then all_run = false end
  end
end
if all_run then return 0 end
return verdicts
""",
)

#: ARGV: prefix, queue, ttl_ms, id. Returns 1 if the task was not final and now is
#: cancelled (a waiting one is dropped by the next consumer to meet it: its id waits in
#: ``P:Q:cancelled`` until then, or until its status is forgotten, so that moves check
#: what they take; and it is published on ``P:Q:cancels`` for the consumers holding
#: tasks, see cancelfeed.py).
CANCEL = script(
    "cancel",
    r"""
local ttl_ms, id = ARGV[3], ARGV[4]
local f = redis.call('HMGET', task_key(id), 'state', 'expires_at', 'started_at')
if not f[1] or FINAL[f[1]] then return 0 end
local now = now_ms()
if f[2] and not f[3] and now >= tonumber(f[2]) then
  finish(id, 'expired', now, ttl_ms)
  return 0
end
finish(id, 'cancelled', now, ttl_ms)
redis.call('ZREMRANGEBYSCORE', cancelled_ids, '-inf', now)
redis.call('ZADD', cancelled_ids, now + tonumber(ttl_ms), id)
redis.call('PUBLISH', base .. 'cancels', id)
return 1
""",
)

#: ARGV: prefix, queue, id, ms. A waiter is here: the status's field ``waiting`` (read by
#: the script that makes the task final, which then pushes the signal on ``done:<id>``;
#: never a status made again once forgotten), and, for a worker of an older version that
#: looks for it instead, the key ``P:Q:waiting:<id>`` for ``ms``.
MARK_WAITING = script(
    "mark_waiting",
    r"""
local id, ms = ARGV[3], ARGV[4]
if redis.call('EXISTS', task_key(id)) == 1 then redis.call('HSET', task_key(id), 'waiting', '1') end
local older = base .. 'waiting:' .. id
redis.call('SET', older, '1', 'NX', 'PX', ms)
redis.call('PEXPIRE', older, ms, 'GT')
return 1
""",
)

#: ARGV: prefix, queue, id... Forgets the statuses of tasks another transport purged,
#: as the transport's own ``PURGE`` does: a unique key they hold is freed; a waiter
#: (field ``waiting``) is woken and reads nothing. Returns how many were known.
PURGED = script(
    "purged",
    r"""
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', task_key(id), 'unique', 'waiting')
  if f[1] and redis.call('GET', unique_key(f[1])) == id then redis.call('DEL', unique_key(f[1])) end
  n = n + redis.call('UNLINK', task_key(id), done_key(id), pointer(id))
  redis.call('ZREM', cancelled_ids, id)
  if f[2] then
    redis.call('RPUSH', done_key(id), 'purged')
    redis.call('PEXPIRE', done_key(id), 60000)
  end
end
return n
""",
)

_FLOATS = ("submitted_at", "started_at", "finished_at")


class RedisStateStore(StateStore):
    """Task statuses in the Redis of ``transport``; see the module docstring."""

    def __init__(self, transport: RedisTransport) -> None:
        self.transport = transport
        self.status_ttl = transport.status_ttl
        self.fallback_poll = 5.0

    def __repr__(self) -> str:
        return f"RedisStateStore({self.transport!r})"

    @property
    def ttl_ms(self) -> int:
        """``status_ttl`` in ms, as the scripts take it (at least 1)."""
        return max(1, int(self.status_ttl * 1000))

    def _run(self, script: Script, queue: str, *args: Any) -> Any:
        t = self.transport
        return t.execute(run, script, t.prefix, t.script_queue(queue), *args)

    # -- the generic calls (a transport keeping its state here) -------------------------

    def submitted(
        self, queue: str, ids: Sequence[str], delay: float, options: SubmitOptions
    ) -> list[str]:
        """Record ``queued``/``delayed``; a held unique key returns its task's id."""
        expires = "" if options.expires is None else f"{options.expires * 1000:.0f}"
        unique = options.unique_key or ""
        flag = "1" if delay > 0 else "0"
        reply = self._run(SUBMITTED, queue, flag, expires, unique, *ids)
        return [raw.decode() for raw in reply]

    def started(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        """``running``, unless cancelled or expired (then that, made final)."""
        verdict = self._run(STARTED, queue, self.ttl_ms, task_id, attempt).decode()
        return "run" if verdict == "run" else "cancelled" if verdict == "cancelled" else "expired"

    def settled(
        self,
        queue: str,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> None:
        """Record an outcome; a cancelled task stays cancelled."""
        self._run(
            SETTLED,
            queue,
            self.ttl_ms,
            task_id,
            state,
            attempts,
            error or "",
            result_json or "",
        )

    def failing(
        self, queue: str, task_id: str, attempts: int, where: str, error: str
    ) -> bool | None:
        """Note ``where`` in the status of a running task about to be moved into the
        failed store of its transport (``FAILING``); True if it was cancelled."""
        return True if self._run(FAILING, queue, task_id, where, error) == 2 else None

    def confirm_failed(self, queue: str, task_id: str, where: str) -> None:
        """``failed`` for a task still running with that note (``CONFIRM_FAILED``)."""
        self._run(CONFIRM_FAILED, queue, self.ttl_ms, task_id, where)

    def feed(self, queue: str) -> RedisStatusFeed:
        """A consumer's feed of ``queue``: its starts need not wait (``StatusFeed``;
        how it hears every cancel: ``asynctask_redis.statusfeed``)."""
        return RedisStatusFeed(self, queue, WRITES)

    def set_tracking(self, queue: str, tracked: bool) -> None:
        """``P:Q:untracked`` exists while the queue's workers keep no status; a submit
        then records ``queued`` expiring after the ttl (nothing else would end it) and
        refuses ``expires`` and ``unique_key``, which need a worker that keeps one. The
        records of its tasks written before get that TTL when such a worker settles
        them for good (``retire`` in ``asynctask_redis.scripts``): one command here,
        whatever the queue holds (a walk of it in one script blocked the server, 7.3 s
        for 200,000 tasks, issue 16)."""
        t = self.transport
        key = t.key(queue, "untracked")
        t.execute(call, *(("DEL", key) if tracked else ("SET", key, "1")))

    def untracked(self, queues: Collection[str]) -> set[str]:
        """Which of ``queues`` have workers with ``track_status = False``."""
        names = sorted(queues)
        if not names:
            return set()
        t = self.transport
        found = t.execute(pipeline, [("EXISTS", t.key(q, "untracked")) for q in names])
        return {q for q, there in zip(names, found, strict=True) if there}

    # -- reading, waiting, cancelling ---------------------------------------------------

    def _queues(self, ids: Sequence[str]) -> list[str | None]:
        return self.transport.task_queues(ids)

    def statuses(self, ids: Sequence[str]) -> list[TaskStatus | None]:
        """Each id's status (two round trips for any number of ids)."""
        return [found for found, _ in self._read(ids)]

    def _read(self, ids: Sequence[str]) -> list[tuple[TaskStatus | None, float | None]]:
        """Each id's status and, for one waiting with an ``expires``, when it expires."""
        queues = self._queues(ids)
        t = self.transport
        commands: list[tuple[Any, ...]] = [("TIME",)]
        for task_id, queue in zip(ids, queues, strict=True):
            if queue is not None:
                commands.append(("HGETALL", t.key(queue, f"task:{task_id}")))
                commands.append(("EXISTS", t.key(queue, "untracked")))
        replies = t.execute(pipeline, commands)
        now = int(replies[0][0]) + int(replies[0][1]) / 1e6
        out: list[tuple[TaskStatus | None, float | None]] = []
        at = 1
        for task_id, queue in zip(ids, queues, strict=True):
            if queue is None:
                out.append((None, None))
                continue
            flat, untracked = replies[at], replies[at + 1]
            at += 2
            if not flat:
                if untracked:
                    raise StatusNotTracked(
                        f"queue {queue!r} runs its worker with track_status = False: its "
                        "tasks have no status; set track_status = True on that worker "
                        "to use status, wait and cancel"
                    )
                out.append((None, None))
                continue
            out.append(_status(task_id, queue, flat, now))
        return out

    def wait(self, task_id: str, timeout: float | None) -> TaskStatus | None:
        """Block until final: ``BLMOVE`` on the task's ``done`` list, woken by the
        script that makes it final (at most until it would expire unstarted)."""
        t = self.transport
        deadline = None if timeout is None else time.monotonic() + timeout
        # re-read every fallback_poll (a lost signal); a blocking read must end before
        # the socket's reply timeout
        longest = max(0.05, min(self.fallback_poll, float(t.options["socket_timeout"]) - 1))
        marked_until = 0.0
        while True:
            found, expires_in = t._call(self._read, [task_id])[0]
            if found is None or found.final:
                return found
            block = longest if expires_in is None else min(longest, expires_in + 0.002)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"task {task_id} is still {found.state} after {timeout:g} s")
                block = min(block, remaining)
            if time.monotonic() + block > marked_until:
                # Say a waiter is here (the final write pushes the signal only then),
                # then read again: a state reached before the mark was seen by no one.
                # (``waiting:<id>`` outlives every wait below by a second at least,
                # counted from before the call: a move's successes look for that key)
                ms = int((block + 5) * 1000)
                before = time.monotonic()
                t._call(self._run, MARK_WAITING, found.queue, task_id, ms)
                marked_until = before + block + 4
                continue
            done = t.key(found.queue, f"done:{task_id}")
            t._call(
                t.execute, call, "BLMOVE", done, done, "RIGHT", "LEFT", f"{max(block, 0.001):.3f}"
            )

    def purged(self, queue: str, ids: Sequence[str]) -> None:
        """Forget purged tasks' statuses (``PURGED``), 1,000 ids a script."""
        for at in range(0, len(ids), 1000):
            self._run(PURGED, queue, *ids[at : at + 1000])

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that is not final; see ``StateStore.cancel``."""
        queue = self._queues([task_id])[0]
        if queue is None:
            return False
        done = bool(self._run(CANCEL, queue, self.ttl_ms, task_id))
        if done:
            # One more round trip: Redis answers it only after it wrote the script's
            # PUBLISH to every subscriber, so a consumer on this host that starts the
            # task after this returns has it on its cancel feed (asynctask_redis.cancelfeed).
            self.transport.execute(call, "PING")
        return done


def _status(task_id: str, queue: str, reply: Any, now: float) -> tuple[TaskStatus, float | None]:
    """A status from its hash; a task waiting past its ``expires`` reads ``expired``."""
    # HGETALL: a flat list in RESP2, a map in RESP3
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    fields = {k.decode(): v.decode() for k, v in pairs}
    state: str = fields.get("state", "queued")
    if state not in STATES:
        state = "queued"
    times = {name: float(fields[name]) if name in fields else None for name in _FLOATS}
    expires_in: float | None = None
    if "expires_at" in fields and times["started_at"] is None and state not in FINAL_STATES:
        expires_at = int(fields["expires_at"]) / 1000
        if now >= expires_at:
            state, times["finished_at"] = "expired", expires_at
        else:
            expires_in = expires_at - now
    result: object = None
    if "result" in fields:
        try:
            result = json.loads(fields["result"])
        except ValueError:
            result = None
    status = TaskStatus(
        id=task_id,
        queue=queue,
        state=cast(State, state),
        attempts=int(fields.get("attempts", "0")),
        submitted_at=times["submitted_at"],
        started_at=times["started_at"],
        finished_at=times["finished_at"],
        error=fields.get("error"),
        result=result,
        failing=fields.get("failing") if state == "running" else None,
    )
    return status, expires_in
