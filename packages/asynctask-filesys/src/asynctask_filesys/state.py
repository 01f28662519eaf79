"""The task statuses of ``filesys:`` (``asynctask.status``), kept as record files.

``FilesysStateStore`` is both the generic ``StateStore`` (any transport may keep its
state here through ``asynctask_state``, AMQP first) and what the filesys consumer calls
on its hot path: ``begin`` (a mark appended to the record, naming this process's
``Journal``) and ``succeed`` (a plain success: one line appended to that journal; the
record stays in ``live/``). The record files and their moves are described in
``asynctask_filesys.records``; unique keys are exclusive creates (``link(2)``, which
fails when the name exists) in ``.status/unique/<queue>/``. ``wait`` blocks on inotify
(a record leaving ``live/``), with a fallback poll only where inotify is missing, or
every ``fallback_poll`` seconds as a safety net.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from asynctask.errors import TransportError
from asynctask.status import (
    FINAL_STATES,
    STATES,
    StartVerdict,
    State,
    StateStore,
    SubmitOptions,
    TaskStatus,
)
from asynctask_filesys import queued, records
from asynctask_filesys.layout import chmod_needed, make_dirs, write_file
from asynctask_filesys.oserrors import os_errors
from asynctask_filesys.records import Record, RecordPaths, valid_id

logger = logging.getLogger("asynctask.filesys")

#: ``begin``'s ``expires`` when the caller does not know it (the record is read)
UNKNOWN: Any = object()
_WAITING = ("queued", "delayed")
#: the content field of a record whose worker is moving its task into the failed store:
#: the task's name there (``failing``); every later rewrite of the record drops it
FAILING = "failing"
#: what a rewrite of a record's outcome drops from its content
_DROPPED = frozenset({"result", records.CARRIED, FAILING})
#: starts a journal takes before the next one is opened: bounds what a status reads
JOURNAL_STARTS = 1024
#: bytes of a journal a status reads at most (1,024 lines of at most 150 bytes)
_JOURNAL_LIMIT = 1 << 20


class Journal:
    """One consumer process's journal of plain successes (issue 16): ``done/<END>/
    <token>.<seq>``, one line ``<id> <finished, ns>`` a success, appended to a kept
    descriptor (and ``<id> cancelled <ns>`` a cancel that read the task's record
    live: the first of the id's lines decides, see ``cancel``). A start's mark names
    it; it takes starts for half a window (or ``JOURNAL_STARTS`` of them) and
    successes for a whole window, and sits in the ``done/`` folder of the window
    after: forgotten with that folder, after every line in it is ``status_ttl`` old.

    ``close`` only stops new successes (``fd`` reads -1); the descriptor is closed
    when the last reference goes (CPython frees at once: ``_assigned`` and a writer's
    local hold it). So a success that read ``fd`` before another thread's rotation
    closed the journal still writes to this file, never to a closed descriptor
    (``EBADF``) nor to another file that reused its number; and the hot path takes no
    lock."""

    def __init__(self, done: str, token: str, seq: int, width: int, ttl: float, mode: int) -> None:
        now = time.time()
        #: successes are written here until then (a later one takes the rename)
        self.deadline = now + width
        #: starts are given this journal until then
        self.open_until = now + width / 2
        self.ttl = ttl
        self.starts = 0
        end = (int(self.deadline) // width + 1) * width
        self.name = f"{end}/{token}.{seq}"
        #: what a start appends to its record: a newline, then this journal's name
        self.mark = b"\n" + self.name.encode()
        folder = os.path.join(done, str(end))
        make_dirs((folder,), mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(os.path.join(done, self.name), flags, mode)
        #: where a success is written; -1 once closed
        self.fd = self._fd
        os.fchmod(self._fd, mode)  # the umask must not narrow a shared folder's mode

    def close(self) -> None:
        """No more successes here (a task it was given takes the rename)."""
        self.fd = -1

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)


@dataclass(frozen=True)
class Found:
    """Where a record is: its folder's role, its path, its content, stat and marks."""

    where: str  # "live" | "failed" | "done" | "file": not started, read from its file
    path: str  # the record's (for "file": where its ``live/`` record would be)
    record: Record
    info: os.stat_result
    marks: int
    #: when a journal says it succeeded (its record still in ``live/``)
    finished: float | None = None
    #: "file": the task file the status was read from
    file: str | None = None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class FilesysStateStore(StateStore):
    """Task statuses as files under ``<root>/.status/``; see the module docstring."""

    def __init__(
        self, root: str, mode: int, use_inotify: bool, poll: float, max_bytes: int
    ) -> None:
        self.root = root
        self.paths = RecordPaths(root)
        self.mode = mode
        self.use_inotify = use_inotify
        self.poll = poll
        #: a record holds a result as big as a payload, plus its own fields
        self.limit = max_bytes + 65536
        #: seconds between status checks of a ``wait`` that inotify did not wake
        self.fallback_poll = 1.0
        self._made = False
        self._bucket_end = 0
        #: ``live/`` with a trailing separator: the hot path's paths are one concatenation
        self._live = self.paths.live + os.sep
        #: the open ``done/<END>/`` with a trailing separator, and the TTL it was made for
        self._bucket_folder = ""
        self._bucket_ttl = -1.0
        #: this process's journals: the one starts are given, and the one before
        self._journal: Journal | None = None
        self._previous: Journal | None = None
        self._journals = 0
        self._token = uuid.uuid4().hex[:12]
        self._rotating = threading.Lock()
        #: task id -> the journal its start named (until it is settled)
        self._assigned: dict[str, Journal] = {}

    # -- folders and buckets --------------------------------------------------------------

    def _ensure(self, again: bool = False) -> RecordPaths:
        if again or not self._made:
            make_dirs((self.root, *self.paths.all()), self.mode)
            self._made = True
        return self.paths

    def _bucket(self) -> str:
        """The ``done/<END>/`` folder (with its trailing separator) for a record finished
        now, made if missing; opening a new one removes those past the TTL (whole
        folders: no scan of history). Once open, one clock read and two compares: the
        hot path calls it for every task."""
        if time.time() < self._bucket_end and self._bucket_ttl == self.status_ttl:
            return self._bucket_folder
        width = int(min(3600.0, max(1.0, self.status_ttl / 8)))
        end = (int(time.time()) // width + 1) * width
        folder = os.path.join(self.paths.done, str(end))
        self._ensure()
        make_dirs((folder,), self.mode)
        self._bucket_end, self._bucket_ttl = end, self.status_ttl
        self._bucket_folder = folder + os.sep
        self._forget_old()
        return self._bucket_folder

    def _forget_old(self) -> None:
        """Remove the ``done/`` folders past the TTL; first, the ``live/`` records of
        the successes their journals list (work in proportion to the tasks of that
        window, never to history)."""
        limit = time.time() - self.status_ttl
        for end in records.bucket_ends(self.paths.done):
            if end < limit:
                folder = os.path.join(self.paths.done, str(end))
                for name in os.listdir(folder):
                    if "." in name:  # a journal (a record's name, an id, has no dot)
                        self._forget_journaled(os.path.join(folder, name))
                shutil.rmtree(folder, ignore_errors=True)

    def _forget_journaled(self, journal: str) -> None:
        data = records.read_bytes(journal, _JOURNAL_LIMIT) or b""
        seen: set[bytes] = set()
        for line in data.split(b"\n"):
            name, _, stamp = line.partition(b" ")
            if name in seen:
                continue  # the first line of an id decides, as for every reader
            seen.add(name)
            task_id = name.decode("ascii", errors="replace")
            # a success only: a record whose first line is a cancel's or a recovered
            # copy's left live/ (and may be back there: requeued from the failed store)
            if stamp.isdigit() and valid_id(task_id):
                records.remove(self._live + task_id)

    def _start_journal(self) -> Journal:
        """The journal a start is given now: the open one, or a new one (then the
        one before the previous is closed, and the folders past the TTL removed)."""
        j = self._journal
        if (
            j is not None
            and j.starts < JOURNAL_STARTS
            and time.time() < j.open_until
            and j.ttl == self.status_ttl
        ):
            j.starts += 1
            return j
        with self._rotating:
            if self._journal is j:
                self._ensure()
                width = int(min(3600.0, max(1.0, self.status_ttl / 8)))
                self._journals += 1
                new = Journal(
                    self.paths.done, self._token, self._journals, width, self.status_ttl, self.mode
                )
                if self._previous is not None:
                    self._previous.close()
                self._previous, self._journal = j, new
                self._forget_old()
            j = self._journal
            assert j is not None
            j.starts += 1
            return j

    def _journaled(self, name: str, task_id: str) -> tuple[State, float] | None:
        """What the journal ``name`` says of ``task_id``, by its first line for it:
        ``succeeded`` or ``cancelled`` (a cancel's line came first), and when; None if
        it has no line for it, or its first says something else (a recovered copy's
        final outcome came first: its record says which, and later lines are ignored)."""
        data = records.read_bytes(os.path.join(self.paths.done, name), _JOURNAL_LIMIT)
        if not data:
            return None
        key = b"\n" + task_id.encode() + b" "
        data = b"\n" + data
        at = data.find(key)
        if at < 0:
            return None
        line = data[at + len(key) : data.find(b"\n", at + 1)]
        if line.isdigit():
            return "succeeded", int(line) / 1e9
        word, _, stamp = line.partition(b" ")
        if word == b"cancelled" and stamp.isdigit():
            return "cancelled", int(stamp) / 1e9
        return None

    def _to_done(self, source: str, task_id: str) -> str | None:
        """Move a record into the current ``done/`` folder: its new path, or None if it
        was not at ``source``."""
        for again in (False, True):
            target = self._bucket() + task_id
            try:
                return target if records.move(source, target) else None
            except FileNotFoundError:  # the folder was removed under us (a tiny TTL)
                if again:
                    raise
                self._bucket_end = 0
        return None

    # -- finding records ------------------------------------------------------------------

    def _locate(self, task_id: str) -> Found | None:
        """The record of ``task_id`` wherever it is; None when there is none.

        Looked for in the order records move (live, failed, done), so a record moving
        forward while we look is found; one moving back (a requeue) is looked for once
        more."""
        if not valid_id(task_id):
            return None
        p = self.paths
        for _ in range(2):
            for where, folder in (("live", p.live), ("failed", p.failed)):
                path = os.path.join(folder, task_id)
                read = records.read(path, self.limit)
                if read is None:
                    continue
                if read.journal is not None:  # started on the hot path: succeeded yet?
                    said = self._journaled(read.journal, task_id)
                    if said is not None and said[0] == "succeeded":
                        record = read.record
                        if "error" in record:  # a recovered copy's retry, before the line
                            record = {k: v for k, v in record.items() if k != "error"}
                        return Found("done", path, record, read.info, read.marks, said[1])
                    if said is not None:  # a cancel came first (its record write next)
                        record = {**read.record, "state": "cancelled", "finished_at": said[1]}
                        return Found("done", path, record, read.info, read.marks)
                return Found(where, path, read.record, read.info, read.marks)
            for end in records.bucket_ends(p.done):
                if end + self.status_ttl < time.time():
                    break  # older ones are forgotten
                path = os.path.join(p.done, str(end), task_id)
                read = records.read(path, self.limit)
                if read is not None:
                    return Found("done", path, read.record, read.info, read.marks)
            # no record: a task submitted without one and not started is its file
            waiting = queued.find(self.root, task_id, self.limit)
            if waiting is not None:
                record, file, info = waiting
                return Found("file", self._live + task_id, record, info, 0, file=file)
        return None

    def _status(self, task_id: str, found: Found) -> TaskStatus | None:
        record, info, now = found.record, found.info, time.time()
        queue = _text(record.get("queue")) or ""
        raw = record.get("state")
        state: State = raw if raw in STATES else "queued"
        attempts = int(_number(record.get("attempts")) or 0)
        started = _number(record.get("started_at"))
        finished = _number(record.get("finished_at"))
        if found.where == "live" and state in _WAITING and found.marks:
            # started by the hot path: a mark appended, at the file's mtime
            state, attempts, started = "running", attempts + found.marks, info.st_mtime
        elif found.where == "done" and state not in FINAL_STATES and not record.get("untracked"):
            # the hot path's success: the start time kept as mtime, the end the journal's
            # line (or the move to done/, the ctime); a record a recovered copy's start
            # rewrote (running, retrying) counts the starts in its content
            if state in _WAITING:
                attempts += max(1, found.marks)
            state = "succeeded"
            started, finished = info.st_mtime, found.finished or info.st_ctime
        elif found.where in ("live", "file") and state in _WAITING:
            due, expires = _number(record.get("due_at")), _number(record.get("expires"))
            if expires is not None and now >= expires:
                state, finished = "expired", expires
            elif state == "delayed" and (due is None or now >= due):
                state = "queued"
        if found.where == "done" and (finished or info.st_ctime) + self.status_ttl < now:
            return None  # past its TTL, its folder not yet removed
        failing = None
        if found.where == "live" and state not in FINAL_STATES:
            failing = _text(record.get(FAILING))  # the failed window: see ``failing``
        return TaskStatus(
            id=task_id,
            queue=queue,
            state=state,
            attempts=attempts,
            submitted_at=_number(record.get("submitted_at")),
            started_at=started,
            finished_at=finished,
            error=_text(record.get("error")),
            result=record.get("result"),
            failing=failing,
        )

    # -- the generic calls ----------------------------------------------------------------

    @os_errors
    def submitted(
        self, queue: str, ids: Sequence[str], delay: float, options: SubmitOptions
    ) -> list[str]:
        """Write a ``live/`` record per task (before the task files: a consumer always
        finds one); take the unique key after the record, so a holder always has one."""
        p = self._ensure()
        now = time.time()
        record: Record = {"queue": queue, "state": "delayed" if delay > 0 else "queued"}
        record.update(attempts=0, submitted_at=now)
        if delay > 0:
            record["due_at"] = now + delay
        if options.expires is not None:
            record["expires"] = now + options.expires
        if options.unique_key is not None:
            record["unique_key"] = options.unique_key
        body = records.encode(record)
        chmod = chmod_needed(p.live, self.mode)
        for task_id in ids:
            records.create(os.path.join(p.live, task_id), body, self.mode, chmod)
        if options.unique_key is None:
            return list(ids)
        holder = self._take_unique(queue, options.unique_key, ids[0])
        if holder != ids[0]:
            records.remove(os.path.join(p.live, ids[0]))
        return [holder]

    @os_errors
    def unsubmitted(self, queue: str, ids: Sequence[str], options: SubmitOptions) -> None:
        """Undo ``submitted`` for tasks that were never stored (the submit failed after
        it): their records go, and a unique key they took is free again."""
        for task_id in ids:
            if valid_id(task_id):
                records.remove(os.path.join(self.paths.live, task_id))
        if options.unique_key is not None and ids:
            path = self._unique_path(queue, options.unique_key)
            if self._holder(path) == ids[0]:
                records.remove(path)

    def expires_at(self, task_id: str) -> float | None:
        """The absolute expiry a ``live/`` record gives the task (``submitted`` makes it
        from the relative ``expires``); the task file carries the same number."""
        read = records.read(os.path.join(self.paths.live, task_id), self.limit)
        if read is None:  # not started: its file, if it has no record (``queued``)
            found = self._locate(task_id) if "__" in task_id else None
            return None if found is None else _number(found.record.get("expires"))
        return _number(read.record.get("expires"))

    @os_errors
    def started(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        """``running`` unless cancelled or expired (see ``begin``)."""
        return self.begin(task_id, attempt, queue=queue)

    @os_errors
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
        """Record an outcome (see ``finish``)."""
        self.finish(task_id, state, attempts, error=error, result_json=result_json, queue=queue)

    @os_errors
    def statuses(self, ids: Sequence[str]) -> list[TaskStatus | None]:
        """Each id's status; None for one never known or forgotten."""
        found = []
        for task_id in ids:
            where = self._locate(task_id)
            found.append(None if where is None else self._status(task_id, where))
        return found

    @os_errors
    def cancel(self, task_id: str) -> bool:
        """Write ``cancelled`` into a record that is not final, then move it to ``done/``;
        True if it was not final. A consumer's start then finds no ``live/`` record and
        drops the task; a running one is stopped by its supervisor.

        A task started on the hot path may succeed with a line in the journal its mark
        names, which moves nothing, so the rename does not order the two: the journal
        does. Under the record's lock, the cancel appends ``<id> cancelled <ns>`` to
        that journal, then reads it: when the task's first line there is a success,
        the success came first and the cancel answers False, writing nothing; else the
        cancel came first, and a success line after it is ignored by every reader."""
        now = time.time()

        def cancelled(
            old: Record, marked_at: float | None, journal: str | None
        ) -> tuple[Record, str | None] | None:
            state = old.get("state")
            if state in FINAL_STATES and state != "cancelled":
                return None
            first = None if journal is None else self._journal_first(journal, task_id, "cancelled")
            if first == "succeeded":
                return None
            new = {**old, "state": "cancelled", "finished_at": now}
            if marked_at is not None and state in _WAITING:
                # started by the hot path, which wrote no content: its attempt and start
                new["attempts"] = int(_number(old.get("attempts")) or 0) + 1
                new["started_at"] = marked_at
            return new, None

        wrote = False  # a record we wrote "cancelled" into may be moved by somebody else
        found: Found | None = None
        for _ in range(5):  # each turn, somebody else moved the record meanwhile
            found = self._locate(task_id)
            if found is None:
                return False
            if found.where in ("failed", "done"):
                return wrote and found.record.get("state") == "cancelled"
            if found.where == "file":
                if self._cancel_waiting(task_id, found, now):
                    return True
                continue  # its start wrote the record first: cancel that
            if found.record.get("state") == "cancelled" and "__" in task_id and not found.marks:
                return False  # cancelled once taken and not started: its start moves it
            outcome = records.update(found.path, cancelled, self.limit)
            if outcome is None:
                continue
            wrote = wrote or outcome[1]
            record, changed = outcome
            if not changed:
                return False
            if self._to_done(found.path, task_id) is not None:
                self._release_unique(record, task_id)
                return True
        return False

    def _cancel_waiting(self, task_id: str, found: Found, now: float) -> bool:
        """Cancel a task not started, read from its file (``queued``): its record is
        created ``cancelled`` (an exclusive create: False when its start, or another
        cancel, made it first), then its file removed, which a taker's claim (a rename)
        cannot also do. Removed: the record moves to ``done/``. Already taken, its
        start not yet written: the record stays in ``live/``, where that start's
        exclusive create finds it, and drops the task (``begin``)."""
        ref = queued.parse(task_id)
        if ref is None:
            return False
        self._ensure()
        record = {**found.record, "state": "cancelled", "finished_at": now}
        if not records.create(found.path, records.encode(record), self.mode):
            return False
        for path in queued.waiting_paths(self.root, ref, task_id):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            self._to_done(found.path, task_id)
            break
        return True

    def _journal_first(self, journal: str, task_id: str, word: str) -> State | None:
        """Append a final outcome's line for ``task_id`` to ``journal`` (``word``: a
        cancel's ``cancelled``, a recovered copy's state); what the task's first line
        there says (None: another word, or the journal is gone, forgotten with its
        folder)."""
        line = f"{task_id} {word} {time.time_ns()}\n".encode()
        if not records.mark(os.path.join(self.paths.done, journal), line):
            return None
        said = self._journaled(journal, task_id)
        return None if said is None else said[0]

    def wait(self, task_id: str, timeout: float | None) -> TaskStatus | None:
        """Block until the task is final. Woken by inotify when its record leaves
        ``live/``; polled every ``poll`` s only where inotify is missing."""
        from asynctask_filesys.waiting import RecordWatch  # inotify only when waiting

        deadline = None if timeout is None else time.monotonic() + timeout
        with RecordWatch(self._ensure(), task_id, self.use_inotify) as watch:
            while True:
                status = self.statuses([task_id])[0]
                if status is None or status.final:
                    return status
                if status.state not in _WAITING and watch.follow(self._live + task_id):
                    continue  # a record made since (a task submitted without one)
                if status.state == "running":  # its success may be a journal's line
                    read = records.read(self._live + task_id, self.limit)
                    journal = None if read is None else read.journal
                    if journal is not None and watch.follow(os.path.join(self.paths.done, journal)):
                        continue  # a line written before the watch: look again
                pause = self.fallback_poll if watch.active else self.poll
                if status.state in _WAITING:
                    expires = self.expires_at(task_id)
                    if expires is not None:  # expiring needs no event: wake for it
                        pause = min(pause, max(0.001, expires - time.time()))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"task {task_id} is still {status.state}")
                    pause = min(pause, left)
                watch.wait(pause)

    # -- the consumer's side (fused: no content written on the hot path) -------------------

    def begin(
        self,
        task_id: str,
        attempt: int,
        expires: Any = UNKNOWN,
        unique_key: Any = UNKNOWN,
        queue: str | None = None,
        submitted: float | None = None,
    ) -> StartVerdict:
        """A worker is about to run the task: append a mark to its record (the hot path:
        one write, no move), unless it expired (then ``expired`` is written) or was
        cancelled (its record is no longer in ``live/``). A later attempt writes its
        count. A task with no record at all (submitted while its queue was untracked,
        or dropped in by another program) is followed from here on: its record is made
        now, without a submission time (given ``queue``; else it runs untracked).

        A task submitted without a record (``queued``: given ``queue`` and ``submitted``,
        its file's mtime) gets it here, written whole with its mark by one exclusive
        create (open, write, close: the mark's three calls); a record there already was
        written first by a ``cancel`` (then the task is dropped) or a requeue."""
        live = self._live + task_id
        if expires is UNKNOWN:
            read = records.read(live, self.limit)
            expires = None if read is None else _number(read.record.get("expires"))
        by_file = attempt == 1 and submitted is not None and queue is not None
        by_file = by_file and "__" in task_id  # (a core or foreign id: its record or none)
        if by_file and expires is not None and time.time() >= expires:
            assert queue is not None and submitted is not None
            self._ensure()
            body = self._start_body(queue, submitted, expires, unique_key)
            records.create(live, body, self.mode)  # for _finish_at (a cancel's stays)
        if attempt == 1 and expires is not None and time.time() >= expires:
            # never started: it is never run (a retried task was started: not expired)
            self._finish_at(live, task_id, "expired", 0, None, None, None)
            return "expired"
        if attempt == 1:
            journal = self._start_journal()
            if by_file:
                assert queue is not None and submitted is not None
                body = self._start_body(queue, submitted, expires, unique_key) + journal.mark
                if records.create(live, body, self.mode, chmod_needed(self.paths.live, self.mode)):
                    self._assigned[task_id] = journal
                    return "run"
                # written first: by a cancel (the task is dropped), or a requeue
                read = records.read(live, self.limit)
                state = None if read is None else read.record.get("state")
                if state == "cancelled" or state == "expired":
                    self._to_done(live, task_id)
                    return "cancelled" if state == "cancelled" else "expired"
            if records.mark(live, journal.mark):
                self._assigned[task_id] = journal
                return "run"
        else:
            now = time.time()

            def running(
                old: Record, marked_at: float | None, journal: str | None
            ) -> tuple[Record, str | None] | None:
                if old.get("state") in FINAL_STATES:
                    return None
                new = {**old, "state": "running", "attempts": attempt, "started_at": now}
                new.pop(FAILING, None)  # its worker died before the move: run again
                if journal is not None:
                    # started before (a task taken back from a worker taken for dead):
                    # when that worker's journal settled it (succeeded, or a cancel's
                    # line first), the status is final: left as it is; else the content
                    # carries the journal, so a success that worker still writes counts
                    if self._journaled(journal, task_id) is not None:
                        return None
                    new[records.CARRIED] = journal
                return new, None

            outcome = records.update(live, running, self.limit)
            if outcome is not None and outcome[1]:
                return "run"
        found = self._locate(task_id)
        if found is None:
            if queue is not None and valid_id(task_id):
                self._follow(live, queue, attempt)
            return "run"
        state = found.record.get("state")
        if state == "cancelled":
            return "cancelled"
        if state == "expired" and found.where == "done":
            return "expired"
        return "run"

    @staticmethod
    def _start_body(queue: str, submitted: float, expires: Any, unique_key: Any) -> bytes:
        """The content of the record a start writes for a task submitted without one."""
        if expires is None and (unique_key is None or unique_key is UNKNOWN):
            # (a queue name needs no escaping: letters, digits and underscores)
            head = f'{{"queue":"{queue}","state":"queued","attempts":0'
            return f'{head},"submitted_at":{submitted!r}}}'.encode()
        record: Record = {"queue": queue, "state": "queued", "attempts": 0}
        record["submitted_at"] = submitted
        if expires is not None and expires is not UNKNOWN:
            record["expires"] = expires
        if unique_key is not None and unique_key is not UNKNOWN:
            record["unique_key"] = unique_key
        return records.encode(record)

    def _follow(self, live: str, queue: str, attempt: int) -> None:
        """Make the record of a task that started without one: ``running`` (its
        earlier attempts in the content, this start as the mark), no submission time."""
        self._ensure()
        body = records.encode({"queue": queue, "state": "queued", "attempts": attempt - 1})
        if records.create(live, body, self.mode):
            records.mark(live)

    @os_errors
    def failing(
        self, queue: str, task_id: str, attempts: int, where: str, error: str
    ) -> bool | None:
        """The worker is about to move the task into the failed store as ``where``: the
        record is rewritten ``running`` (this attempt, its start time; the journal its
        mark names carried), with ``error`` and the note ``failing``, under its lock;
        ``failed`` after the move drops the note. A status read that finds the note
        and the file (``Transport._failed_holds``) writes ``failed`` itself
        (``confirm_failed``): the worker was killed between the two. True when the task
        was cancelled (nothing noted: the caller deletes it), else None. This is the
        look for a cancel that the failure made before, at the same cost."""
        if not valid_id(task_id):
            return None
        live = self._live + task_id

        def noted(
            old: Record, marked_at: float | None, journal: str | None
        ) -> tuple[Record, str | None] | None:
            if old.get("state") in FINAL_STATES:
                return None  # cancelled meanwhile (or final already)
            if attempts > 1 and journal is not None and self._journaled(journal, task_id):
                return None  # a recovered copy: the first worker's journal settled it
            new = {**old, "state": "running", "attempts": attempts, "error": error}
            if marked_at is not None:  # started by the hot path: the mark's time
                new["started_at"] = marked_at
            if journal is not None:
                new[records.CARRIED] = journal
            new[FAILING] = where
            return new, None

        changed = records.update(live, noted, self.limit)
        if changed is not None and changed[1]:
            return None
        found = self._locate(task_id)  # no live record: cancelled, or never one
        return True if found is not None and found.record.get("state") == "cancelled" else None

    @os_errors
    def confirm_failed(self, queue: str, task_id: str, where: str) -> None:
        """``failed`` for a record still noted ``failing`` as ``where`` (see
        ``failing``): moved to ``failed/``, which wakes its waiters."""
        if not valid_id(task_id):
            return
        live = self._live + task_id
        read = records.read(live, self.limit)
        if read is None or read.record.get(FAILING) != where:
            return
        attempts = int(_number(read.record.get("attempts")) or 0)
        error = _text(read.record.get("error"))
        self._finish_at(live, task_id, "failed", attempts, None, error, None, noted=where)

    def finish(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        started_at: float | None = None,
        error: str | None = None,
        result_json: str | None = None,
        unique_key: Any = UNKNOWN,
        queue: str | None = None,
    ) -> bool | None:
        """Record an outcome of a started task (or ``queued``: requeued, handed back).

        The hot path, a first attempt's success without a result whose file told the
        unique key, is one rename (the mark's mtime, the start time, moves with it).
        Anything else rewrites the record first, then moves it. A record already
        ``cancelled`` stays so: then True (the task was cancelled while it ran), else
        None."""
        if not valid_id(task_id):
            return None
        self._assigned.pop(task_id, None)
        return self._finish(
            task_id,
            state,
            attempts,
            started_at=started_at,
            error=error,
            result_json=result_json,
            unique_key=unique_key,
            queue=queue,
        )

    def unassign(self, task_id: str) -> None:
        """Drop the journal a tracked start assigned to ``task_id``, whose settle will
        not reach this store (tracking switched off while it ran): a journal's file stays
        open while a task holds it."""
        self._assigned.pop(task_id, None)

    def succeed(
        self,
        task_id: str,
        started_at: float | None,
        result_json: str | None,
        unique_key: str | None,
        queue: str,
    ) -> bool | None:
        """The consumer's success of a first attempt (every tracked task comes here):
        ``finish``, without the checks its caller made. ``task_id`` comes from a task
        file's name, which only a valid id can have; the file told the unique key. The
        plain success is a line in the journal its start's mark named, while that is
        open (the caller removed the task file first: it never reads ``succeeded``
        before that); else the record's rename, tried next; anything else (a result, a
        record moved away by a cancel, a bucket removed under us) takes ``finish``'s
        way. A journaled success does not see a cancel that came first (then the
        record is in ``done/``, ``cancelled``, or the cancel's line comes before ours in
        the journal: it stays so): it returns None."""
        journal = self._assigned.pop(task_id, None)
        if result_json is None or result_json == "null":
            # (the descriptor read once: a rotation in another thread may close the
            # journal meanwhile, which leaves this number open while we hold it)
            if journal is not None and (fd := journal.fd) >= 0 and time.time() < journal.deadline:
                # the hot path: one line appended; the record stays in live/, and the
                # journal its mark names says succeeded (until forgotten with it)
                os.write(fd, f"{task_id} {time.time_ns()}\n".encode())
                if unique_key is not None:
                    self._release_unique({"unique_key": unique_key, "queue": queue}, task_id)
                return None
            try:
                os.rename(self._live + task_id, self._bucket() + task_id)
            except FileNotFoundError:
                # not there (cancelled, untracked, or submitted without a record and
                # acked without a start: its record made final, no look around) or no
                # bucket folder: see below
                if started_at is None and self._succeeded_unstarted(task_id, queue):
                    return None
            else:
                if unique_key is not None:
                    self._release_unique({"unique_key": unique_key, "queue": queue}, task_id)
                return None
        return self._finish(
            task_id,
            "succeeded",
            1,
            started_at=started_at,
            result_json=result_json,
            unique_key=unique_key,
            queue=queue,
        )

    def _finish(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        started_at: float | None,
        error: str | None = None,
        result_json: str | None,
        unique_key: Any,
        queue: str | None,
    ) -> bool | None:
        """``finish`` for an id known to be valid."""
        if result_json == "null":
            result_json = None  # stored or not, the status reads the same: result None
        hot = state == "succeeded" and result_json is None and attempts == 1
        if hot and unique_key is not UNKNOWN:
            # the mark's mtime is the start time, which the rename keeps (acked without
            # a start, by a consumer used directly: none, the submit time stands)
            done = self._to_done(self._live + task_id, task_id)
            if done is not None:
                if unique_key is not None:
                    self._release_unique({"unique_key": unique_key, "queue": queue}, task_id)
                return None
        found = self._locate(task_id)
        if found is None and queue is not None and self._settled_unstarted(task_id, queue):
            found = self._locate(task_id)
        if found is None:
            return None  # untracked (no record: dropped in by another program)
        if found.where == "failed" and state != "queued":
            return None
        if found.where == "file":
            return None  # never started: nothing to settle
        if found.where != "done" and self._finish_at(
            found.path, task_id, state, attempts, started_at, error, result_json
        ):
            return None
        final = found if found.where == "done" else self._locate(task_id)
        return True if final is not None and final.record.get("state") == "cancelled" else None

    def _succeeded_unstarted(self, task_id: str, queue: str) -> bool:
        """``succeeded`` for a task submitted without a record (``queued``), acked with
        no start: its record created in ``done/`` whole (one create, no listing)."""
        ref = queued.parse(task_id)
        if ref is None or ref.queue != queue:
            return False
        now = time.time()
        record: Record = {"queue": queue, "state": "succeeded", "attempts": 1}
        if not ref.delayed:  # a ready task's stamp is its submission
            record["submitted_at"] = ref.stamp / 1e9
        record.update(started_at=now, finished_at=now)
        try:
            return records.create(self._bucket() + task_id, records.encode(record), self.mode)
        except FileNotFoundError:  # the bucket folder removed under us: the long way
            self._bucket_end = 0
            return False

    def _settled_unstarted(self, task_id: str, queue: str) -> bool:
        """Make the record of a task submitted without one (``queued``) that is settled
        without a start (a consumer used directly: reserve, then ack, retry or fail),
        so that its outcome is written as a started task's is; False for any other id."""
        ref = queued.parse(task_id)
        if ref is None or ref.queue != queue:
            return False
        self._ensure()
        record: Record = {"queue": queue, "state": "queued", "attempts": 0}
        if not ref.delayed:  # a ready task's stamp is its submission
            record["submitted_at"] = ref.stamp / 1e9
        records.create(self._live + task_id, records.encode(record), self.mode)
        return True

    def retire(self, task_id: str, queue: str, unique_key: str | None) -> None:
        """A task settled for good by a worker that keeps no status (``track_status =
        False``) whose record was written at submit (the queue was tracked then, or the
        submit's options live in the record): the record moves to ``done/``, marked
        ``untracked`` so that it keeps its state (``status`` still says the queue keeps
        none), and is forgotten with its folder after the TTL; the unique key it holds
        is freed. Left in ``live/`` it read ``queued`` for good (issue 16)."""
        if not valid_id(task_id):
            return
        live = self._live + task_id

        def untracked(
            old: Record, _: float | None, __: str | None
        ) -> tuple[Record, str | None] | None:
            if old.get("state") in FINAL_STATES or old.get("untracked"):
                return None  # cancelled or expired meanwhile: final already
            return {**old, "untracked": True}, None

        changed = records.update(live, untracked, self.limit)
        if changed is None and "__" in task_id:  # submitted without a record (queued)
            self._ensure()
            body = {"queue": queue, "state": "queued", "attempts": 0, "untracked": True}
            if records.create(live, records.encode(body), self.mode):
                changed = body, True
        if changed is not None and changed[1]:
            self._to_done(live, task_id)
        if unique_key is not None:
            self._release_unique({"unique_key": unique_key, "queue": queue}, task_id)

    # -- queues whose workers keep no status ----------------------------------------------

    def _untracked_path(self, queue: str) -> str:
        return os.path.join(self.paths.base, "untracked", queue)

    @os_errors
    def set_tracking(self, queue: str, tracked: bool) -> None:
        """A file ``.status/untracked/<queue>`` while its workers keep no status."""
        path = self._untracked_path(queue)
        if tracked:
            records.remove(path)
            return
        self._ensure()
        make_dirs((os.path.dirname(path),), self.mode)
        records.create(path, b"", self.mode)

    @os_errors
    def untracked(self, queues: Collection[str]) -> set[str]:
        """The queues among ``queues`` marked untracked."""
        return {q for q in queues if os.path.lexists(self._untracked_path(q))}

    def _finish_at(
        self,
        path: str,
        task_id: str,
        state: State,
        attempts: int,
        started_at: float | None,
        error: str | None,
        result_json: str | None,
        noted: str | None = None,
    ) -> bool:
        """Rewrite the record at ``path`` with ``state``, then move it where that state
        lives; False if it was final already or moved away meanwhile. ``noted``: only
        while the record carries that ``failing`` note (``confirm_failed``).

        The outcome of a later attempt (a recovered copy: ``attempts`` 2 or more, or
        1 handed back) on a record that names a journal is the copy's, while the
        worker of the first attempt may journal a success there: when the journal
        says the task succeeded (or a cancel came first), the outcome is dropped, as
        one after a success in ``done/`` is. A non-final outcome keeps naming the
        journal (a success written after it still counts); a final one writes its own
        line first, as ``cancel`` does, and the first of the two lines decides. A first
        attempt's own outcome (the usual failure, retry or result) reads no journal."""
        now = time.time()
        copy = (attempts + 1 if state == "queued" else attempts) > 1

        def outcome(
            old: Record, marked_at: float | None, journal: str | None
        ) -> tuple[Record, str | None] | None:
            if old.get("state") in FINAL_STATES and old.get("state") != "failed":
                return None  # cancelled (or expired) stays so: its result is discarded
            if noted is not None and (old.get(FAILING) != noted or old.get("state") != "running"):
                return None  # written since the note: that write stands
            new = {k: v for k, v in old.items() if k not in _DROPPED}
            if copy and journal is not None:
                final = state in FINAL_STATES
                said = self._journal_first(journal, task_id, state) if final else None
                if said is not None or (not final and self._journaled(journal, task_id)):
                    return None  # succeeded (or cancelled) first, by that journal
                if not final:
                    new[records.CARRIED] = journal
            new.update(state=state, attempts=attempts)
            if state == "queued":  # requeued from the failed store, or handed back
                new.pop("started_at", None)
                new.pop("finished_at", None)
                return new, None
            if started_at is not None or marked_at is not None:
                new["started_at"] = started_at if started_at is not None else marked_at
            if error is not None:
                new["error"] = error
            if state in FINAL_STATES:
                new["finished_at"] = now
            return new, result_json if state == "succeeded" else None

        result = records.update(path, outcome, self.limit)
        if result is None or not result[1]:
            return False
        record = result[0]
        p = self.paths
        if state in ("succeeded", "cancelled", "expired"):
            moved = self._to_done(path, task_id) is not None
        else:
            target = {"failed": p.failed}.get(state, p.live)
            moved = path == os.path.join(target, task_id) or records.move(
                path, os.path.join(target, task_id)
            )
        if moved and state in FINAL_STATES:
            self._release_unique(record, task_id)
        return moved

    @os_errors
    def purged(self, queue: str, ids: Sequence[str]) -> None:
        """Forget the statuses of tasks another transport purged: their records go (a
        waiter's inotify sees the record leave ``live/``); a unique key they held is
        free, its holder gone (``_take_unique`` removes it)."""
        self.forget(ids, "live")
        self.forget(ids, "failed")

    def forget(self, task_ids: Sequence[str], where: str) -> None:
        """Remove the records of purged tasks (``live`` or ``failed``)."""
        folder = self.paths.live if where == "live" else self.paths.failed
        for task_id in task_ids:
            if valid_id(task_id):
                path = os.path.join(folder, task_id)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    # submitted without a record (``queued``): its waiters watch live/
                    # for its name; a record made and removed wakes them
                    queued_id = where == "live" and "__" in task_id and os.path.isdir(folder)
                    if queued_id and records.create(path, b"", self.mode):
                        records.remove(path)

    # -- unique keys ----------------------------------------------------------------------

    def _unique_path(self, queue: str, key: str) -> str:
        return os.path.join(self.paths.unique, queue, hashlib.sha256(key.encode()).hexdigest())

    def _take_unique(self, queue: str, key: str, task_id: str) -> str:
        """Take ``key`` for ``task_id`` (an exclusive create); the holder's id if a task
        that is not final holds it. A holder whose task is final or gone (a crash before
        its release) is removed first."""
        path = self._unique_path(queue, key)
        make_dirs((os.path.dirname(path),), self.mode)
        tmp = os.path.join(self.paths.tmp, f"unique-{uuid.uuid4().hex}")
        write_file(tmp, task_id.encode(), self.mode, sync=False)
        try:
            for _ in range(20):
                try:
                    os.link(tmp, path)  # fails when the name exists: like O_EXCL
                    return task_id
                except FileExistsError:
                    pass
                holder = self._holder(path)
                if holder is None:
                    continue  # released meanwhile: try again
                status = self.statuses([holder])[0]
                if status is not None and not status.final:
                    return holder
                if self._holder(path) == holder:  # stale: its task is final or gone
                    records.remove(path)
        finally:
            os.unlink(tmp)
        raise TransportError(f"unique key {key!r} of queue {queue!r} stayed contended")

    def _holder(self, path: str) -> str | None:
        read = records.read_bytes(path, 256)
        if read is None:
            return None
        text = read.decode("ascii", errors="replace")
        return text if valid_id(text) else None

    def _release_unique(self, record: Record, task_id: str) -> None:
        key, queue = _text(record.get("unique_key")), _text(record.get("queue"))
        if key is None:
            return
        if queue is None:
            return
        path = self._unique_path(queue, key)
        if self._holder(path) == task_id:
            records.remove(path)
