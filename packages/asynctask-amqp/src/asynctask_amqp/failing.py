"""The failed window on AMQP (issue 16, ``asynctask.status``): a failure in four steps.

With statuses in the store of ``asynctask_state``, a failure is writes in two places: a
copy of the task in ``Q.failed``, then ``failed`` in that store. ``Q.failed`` is a queue,
which no read can look up by id, so the read-repair of the other transports (a note,
then a look in the failed store) cannot close the window where a worker killed between
the two leaves the task there reading ``running``. Here the broker keeps the task until
both are done instead:

1. note ``failing`` in the store (``Consumer.note_failing``, waited for);
2. publish the copy to ``Q.failed`` (confirmed), the original still held;
3. write ``failed`` and wait for its reply (a waiter woken by it finds the copy: the
   status contract's promise);
4. acknowledge the original.

A worker killed before 4 has its task redelivered; its consumer's next one sees the
broker's ``redelivered`` flag and publishes a copy marked ``REDELIVERED`` (the attempt
counted, ``asynctask_amqp.consumer``). Only such a copy's start reads its status first
(``start_redelivered``):

* ``failed`` (killed between 3 and 4): acknowledged, not run, nothing stored again;
* ``running`` with the ``failing`` note (killed between 1 and 3): moved to ``Q.failed``
  again and made ``failed`` without running. Killed between 2 and 3, ``Q.failed`` then
  holds two records of the task (the bound: at most one more a kill there, never a lost
  task nor a second run); killed between 1 and 2, one;
* anything else: the usual start (the worker died running it).

Without a store (or ``track_status = False``) a failure stays the copy, then the ack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from asynctask.status import StartVerdict
from asynctask.transport import Consumer, Delivery

#: the note a failing task carries (``StateStore.failing``'s ``where``): AMQP's failed
#: store cannot be looked up by it (``Transport._failed_holds`` says None), the
#: redelivered start reads it instead
NOTE = "amqp:failed-queue"
#: the header of a copy published for a redelivered task (its last consumer died or lost
#: its connection): its start reads its status first. Not a task header (``x-asynctask-``:
#: not signed, not carried by later copies)
REDELIVERED = "x-asynctask-redelivered"
#: the error stored when a redelivered task is moved on after a kill and its status
#: holds none
KILLED = "its worker was killed while moving it to the failed store"


def in_order(consumer: Consumer) -> bool:
    """Whether ``consumer``'s failures go in the four steps: statuses tracked in a store."""
    return consumer.tracking and consumer.transport.external_state() is not None


def fail_in_order(
    consumer: Consumer,
    delivery: Delivery,
    error: str,
    copy: Callable[[Delivery, str], None],
    *,
    note: bool = True,
) -> bool | None:
    """Fail ``delivery`` in the four steps of the module docstring; ``copy`` publishes
    the copy to the failed store (confirmed) and keeps the original held. True when the
    task was cancelled meanwhile (acknowledged, not stored: the caller drops it)."""
    if note and consumer.note_failing(delivery, NOTE, error):
        consumer.ack(delivery)
        return True
    copy(delivery, error)
    write_failed(consumer, delivery, error)
    consumer.ack(delivery)
    return None


def write_failed(consumer: Consumer, delivery: Delivery, error: str) -> None:
    """Write ``failed`` and wait for the store's reply (a feed's flush before an ack
    waits for its replies), before the original is acknowledged."""
    consumer.record_outcome(delivery, "failed", error)
    consumer.flush_status_feed(waiting=False)


def start_redelivered(
    consumer: Consumer, delivery: Delivery, copy: Callable[[Delivery, str], None]
) -> StartVerdict | None:
    """The start of a copy marked ``REDELIVERED``: ``"failed"`` when it was failed
    already or is moved on now (see the module docstring), else None (start it as
    usual). One status read."""
    store = consumer.transport.external_state()
    if store is None or not consumer.tracking:
        return None
    found = consumer.transport._call(store.statuses, [delivery.id])[0]
    if found is None:
        return None
    if found.state == "failed":
        consumer.ack(delivery)
        return "failed"
    if found.state == "running" and found.failing is not None:
        # the attempt that failed, not the one its redelivery counted
        failed = dataclasses.replace(delivery, attempt=max(1, delivery.attempt - 1))
        fail_in_order(consumer, failed, found.error or KILLED, copy, note=False)
        return "failed"
    return None
