"""Global rate limits and concurrency caps: one budget for every child on every host.

A queue entry of ``asynctask_workers`` may say ``"rate_scope": "global"`` (its
``rate_max_calls`` per ``rate_period`` hold across every child of every ``asynctask
workers`` sharing the backend, instead of being split between one supervisor's children)
and ``"max_running": N`` (at most N of its tasks run at once, everywhere). Both are kept
in the backend, through one atomic transport primitive:

* ``Transport.limit_take(queue, limit, holder, owner)``: if a start is allowed now under
  both limits, count it (a start in the window; a running slot held by ``holder``) and
  return 0.0; else the seconds to wait before asking again. Taking again with the same
  ``holder`` counts nothing more (a call retried after a lost reply);
* ``Transport.limit_free(queue, holder)``: the task ended; its slot is free.

A slot held by a child that died comes back by itself: it names the child's owner id
(``asynctask.liveness``), and is free as soon as that owner is no longer alive (its
keeper stopped beating, or ended it when the child exited). A slot taken without an
owner (``process_queue``, no supervisor) carries a lease instead (``SLOT_LEASE``).

A start waiting for a slot asks again every ``POLL`` seconds at most: a cap is a brake,
not a queue, and a freed slot is taken within that time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asynctask.errors import TransportUnavailable

if TYPE_CHECKING:
    from asynctask.transport import Delivery, Transport

logger = logging.getLogger("asynctask.limits")

#: the longest pause before a waiting start asks the backend again
POLL = 0.2
#: seconds a slot taken without an owner id lives (a task running longer may be joined
#: by one more than the cap)
SLOT_LEASE = 3600.0


@dataclass(frozen=True)
class LimitSpec:
    """The global limits of one queue: a rate, a cap, or both."""

    rate_max_calls: int | None = None
    rate_period: float | None = None
    max_running: int | None = None

    @property
    def rate(self) -> tuple[int, float] | None:
        """``(calls, period)`` when a global rate is set."""
        if self.rate_max_calls is None or self.rate_period is None:
            return None
        return (self.rate_max_calls, self.rate_period)


def holder_of(delivery: Delivery) -> str:
    """The holder name of a delivery: its task id and attempt (a later attempt of the
    same task is another start)."""
    return f"{delivery.id}:{delivery.attempt}"


class GlobalLimit:
    """The run loop's side: may this delivery start now, and it has ended."""

    def __init__(
        self, transport: Transport, queue: str, spec: LimitSpec, owner: str | None
    ) -> None:
        self.transport, self.queue, self.spec, self.owner = transport, queue, spec, owner
        self._held: set[str] = set()

    def try_start(self, delivery: Delivery) -> float:
        """0.0 once ``delivery`` may start (counted); else the seconds to wait."""
        holder = holder_of(delivery)
        pause = self.transport.limit_take(self.queue, self.spec, holder, self.owner)
        if pause == 0.0:
            if self.spec.max_running is not None:
                self._held.add(holder)
            return 0.0
        return min(max(pause, 0.01), POLL)

    def wait(self, delivery: Delivery, stop: threading.Event) -> bool:
        """Block until ``delivery`` may start; False if ``stop`` was set first."""
        while not stop.is_set():
            pause = self.try_start(delivery)
            if pause == 0.0:
                return True
            stop.wait(pause)
        return False

    def finished(self, delivery: Delivery) -> None:
        """``delivery`` ended (settled, refused or handed back): free its slot."""
        holder = holder_of(delivery)
        if holder not in self._held:
            return
        self._held.discard(holder)
        try:
            self.transport.limit_free(self.queue, holder)
        except TransportUnavailable as exc:
            # the slot comes back when this child's owner dies, or its lease ends
            logger.warning("Could not free the running slot of %s: %s", holder, exc)


@dataclass
class LimitBook:
    """The state of one queue's global limits, for transports that keep it as data (in
    memory, or as a JSON file under a lock): the starts within the window, and the
    running slots as ``holder -> [owner or "", lease expiry]``. Times are the caller's
    clock (one machine)."""

    starts: dict[str, float]
    running: dict[str, list[object]]

    @classmethod
    def empty(cls) -> LimitBook:
        """No start, no slot."""
        return cls({}, {})

    def take(
        self,
        limit: LimitSpec,
        holder: str,
        owner: str | None,
        now: float,
        alive: Callable[[str], bool],
    ) -> float:
        """``Transport.limit_take`` on this book; ``alive(owner)`` tells a live owner."""
        if holder in self.running:
            return 0.0  # taken already (a call retried after a lost reply)
        if limit.max_running is not None:
            for name, (slot_owner, expiry) in list(self.running.items()):
                live = alive(str(slot_owner)) if slot_owner else float(str(expiry)) > now
                if not live:
                    del self.running[name]
            if len(self.running) >= limit.max_running:
                return POLL
        rate = limit.rate
        if rate is not None:
            calls, period = rate
            for name, at in list(self.starts.items()):
                if at <= now - period:
                    del self.starts[name]
            if holder not in self.starts:
                if len(self.starts) >= calls:
                    return max(min(self.starts.values()) + period - now, 0.001)
                self.starts[holder] = now
        if limit.max_running is not None:
            self.running[holder] = [owner or "", now + SLOT_LEASE]
        return 0.0

    def free(self, holder: str) -> None:
        """``Transport.limit_free`` on this book."""
        self.running.pop(holder, None)
