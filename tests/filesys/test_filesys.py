"""What is particular to ``filesys:``: paths, the folder format, crash safety, depth."""

from __future__ import annotations

import fcntl
import gc
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asynctask.errors import InvalidURIError
from asynctask.liveness import new_owner
from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask_filesys.owners import recover_dead

ONE_LINER = (
    "from asynctask import get_transport; t = get_transport('filesys:queues'); "
    "t.submit_task('some_queue', {'foo': 'bar', 'baz': 123}); print(t.get_task('some_queue'))"
)


def _names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if folder.is_dir() else []


# -- URIs and options ----------------------------------------------------------------------


def test_the_issue_one_liner_prints_the_payload(tmp_path):
    # Given a fresh working folder, when the one-liner of the issue runs there
    done = subprocess.run(
        [sys.executable, "-c", ONE_LINER], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    # Then it prints the payload back, and the queue lives under ./queues
    assert done.returncode == 0, done.stderr
    assert done.stdout == "{'foo': 'bar', 'baz': 123}\n"
    assert (tmp_path / "queues" / "some_queue" / "ready").is_dir()


def test_a_relative_path_is_taken_from_the_working_folder(tmp_path, monkeypatch):
    # Given a relative URI made in one folder
    monkeypatch.chdir(tmp_path)
    with open_transport("filesys:queues/here") as transport:
        # When the process moves elsewhere, the transport keeps its folder
        monkeypatch.chdir("/")
        transport.submit_task("rel_queue", {"n": 1})
        assert transport.root == str(tmp_path / "queues" / "here")
    assert len(_names(tmp_path / "queues" / "here" / "rel_queue" / "ready")) == 1


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("filesys:/srv/q", "/srv/q"),
        ("filesys:///srv/q", "/srv/q"),
        ("filesys://localhost/srv/q", "/srv/q"),
        ("filesys:/srv/my%20q", "/srv/my q"),
    ],
)
def test_uri_forms_name_the_same_kind_of_folder(uri, expected):
    transport = open_transport(uri)
    assert transport.root == expected
    transport.close()


def test_home_folder_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with open_transport("filesys:~/q") as transport:
        assert transport.root == str(tmp_path / "q")


def test_the_root_is_created_only_when_something_is_written(tmp_path):
    root = tmp_path / "a" / "b" / "queues"
    with open_transport(f"filesys:{root}") as transport:
        # Reading creates nothing
        assert transport.poll_queue("nothing_yet") == 0
        assert transport.get_task("nothing_yet") is None
        assert transport.queues() == []
        assert not root.exists()
        # Writing creates the whole path
        transport.submit_task("first", {})
    assert (root / "first" / "ready").is_dir()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("lease=soon", ["lease", "'soon'"]),
        ("lease=0", ["lease", "must be > 0"]),
        ("mode=0400", ["mode", "owner read and write"]),
        ("mode=rw", ["mode", "'rw'"]),
        ("fsync=maybe", ["fsync", "true or false"]),
        ("notify=fanotify", ["notify", "'inotify' or 'poll'"]),
        ("lease=8&heartbeat=5", ["heartbeat=5", "half of lease=8"]),
        ("leese=8", ["unknown option 'leese'", "lease", "heartbeat", "mode", "poll"]),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(tmp_path, query, words):
    with pytest.raises(InvalidURIError) as info:
        open_transport(f"filesys:{tmp_path}?{query}")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("uri", ["filesys:", "filesys://", "filesys://otherhost/srv/q"])
def test_a_uri_without_a_local_folder_is_refused(uri):
    with pytest.raises(InvalidURIError, match="folder"):
        open_transport(uri)


def test_options_set_lease_and_recovery_bound(tmp_path):
    with open_transport(f"filesys:{tmp_path}") as default:
        assert default.features.recovery_seconds == 9.0  # lease 8 + a look every second
    with open_transport(f"filesys:{tmp_path}?lease=2&heartbeat=0.25") as short:
        assert short.features.recovery_seconds == 3.0
        assert short.heartbeat == 0.25


def test_mode_option_sets_file_and_folder_modes_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with open_transport(f"filesys:{tmp_path / 'q'}?mode=0660") as transport:
            transport.submit_task("shared", {})
    finally:
        os.umask(old)
    ready = tmp_path / "q" / "shared" / "ready"
    [name] = _names(ready)
    assert stat.S_IMODE((ready / name).stat().st_mode) == 0o660
    assert stat.S_IMODE(ready.stat().st_mode) == 0o770


# -- the folder format, crash safety, foreign files ------------------------------------------


def test_a_second_process_sees_what_the_first_submitted(tmp_path):
    # Given a task submitted by another process
    root = tmp_path / "queues"
    code = (
        "from asynctask.testing.contract import open_transport; "
        f"t = open_transport('filesys:{root}'); t.submit_task('shared_q', {{'from': 'child'}})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # Then this process takes it
    with open_transport(f"filesys:{root}") as transport:
        assert transport.get_task("shared_q") == {"from": "child"}


def test_a_half_written_file_is_never_a_task(tmp_path):
    # Given a writer that crashed mid-write, leaving its temporary file behind
    root = tmp_path / "queues"
    with open_transport(f"filesys:{root}") as transport:
        transport.submit_task("crashy", {"n": 1})
        (root / "crashy" / "tmp" / f"{time.time_ns()}-dead.json").write_text('{"n": 2, "hal')
        (root / "crashy" / "ready" / ".editor-swap").write_text("not for us")
        # Then only the complete task counts and comes out, and nothing goes to failed
        assert transport.poll_queue("crashy") == 1
        assert transport.get_task("crashy") == {"n": 1}
        assert transport.get_task("crashy") is None
        assert transport.failed_tasks("crashy") == []


def test_a_queue_folder_removed_by_hand_is_made_again(tmp_path):
    root = tmp_path / "queues"
    with open_transport(f"filesys:{root}") as transport:
        transport.submit_task("wiped", {"n": 1})
        shutil.rmtree(root / "wiped")
        transport.submit_task("wiped", {"n": 2})
        assert transport.get_task("wiped") == {"n": 2}


def test_the_readme_shell_recipe_submits_a_task(tmp_path):
    # Given the README's shell one-liner, run by a program that knows nothing of Python
    root = tmp_path / "queues"
    recipe = (
        f"q={root}/some_queue; n=$(date +%s%N)-$$.json; mkdir -p $q/tmp $q/ready && "
        "printf '%s' '{\"foo\": \"bar\"}' > $q/tmp/$n && mv $q/tmp/$n $q/ready/$n"
    )
    subprocess.run(["sh", "-c", recipe], check=True, timeout=30)
    # Then it is a task like any other
    with open_transport(f"filesys:{root}") as transport:
        assert transport.poll_queue("some_queue") == 1
        assert transport.get_task("some_queue") == {"foo": "bar"}


def test_a_foreign_file_goes_to_the_failed_store_and_the_queue_goes_on(tmp_path, make_probe):
    root = tmp_path / "queues"
    probe = make_probe(root)
    probe.inject("mixed", "{}")  # makes the folders
    (root / "mixed" / "ready" / "0000000000000000000-notes.txt").write_text("hello")
    with open_transport(f"filesys:{root}") as transport:
        transport.submit_task("mixed", {"n": 1})
        with transport.consumer("mixed") as consumer:
            taken = []
            while (delivery := consumer.reserve(timeout=0.2)) is not None:
                taken.append(delivery.payload)
                consumer.ack(delivery)
        assert taken == [{}, {"n": 1}]
        [failed] = transport.failed_tasks("mixed")
        assert failed.raw == "hello" and "not a task file" in failed.error


def test_a_failed_task_keeps_a_meta_sidecar_and_an_orphan_meta_is_ignored(tmp_path):
    root = tmp_path / "queues"
    with open_transport(f"filesys:{root}") as transport:
        transport.submit_task("meta_q", {"n": 1})
        with transport.consumer("meta_q") as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            consumer.fail(delivery, "ValueError: bad")
        names = _names(root / "meta_q" / "failed")
        assert len(names) == 2 and names[1] == names[0] + ".meta"
        # A crash after writing the sidecar but before moving the task leaves an orphan
        (root / "meta_q" / "failed" / "0000000000000000001~x.json.meta").write_text("{}")
        assert [f.error for f in transport.failed_tasks("meta_q")] == ["ValueError: bad"]
        assert transport.queue_stats("meta_q").failed == 1


def test_counts_tell_ready_delayed_retrying_in_flight_and_failed_apart(tmp_path):
    with open_transport(f"filesys:{tmp_path}") as transport:
        transport.submit_tasks("counted", [{"n": n} for n in range(4)])
        transport.submit_task("counted", {"late": 1}, delay=60)
        with transport.consumer("counted") as consumer:
            first, second, third = (consumer.reserve(timeout=5) for _ in range(3))
            assert first and second and third
            consumer.retry(first, delay=60, error="boom")
            consumer.fail(second, "no")
            stats = transport.queue_stats("counted")
            assert (stats.ready, stats.delayed, stats.retrying) == (1, 1, 1)
            assert (stats.in_flight, stats.failed) == (1, 1)
            consumer.ack(third)


# -- recovery, claims, wake-ups ---------------------------------------------------------------


def test_a_frozen_consumer_loses_its_tasks_after_the_lease(tmp_path):
    # Given a consumer folder whose lock is held (the process lives) but whose heartbeat
    # stopped three seconds ago (the process is frozen)
    root = tmp_path / "queues"
    with open_transport(f"filesys:{root}?lease=2") as transport:
        transport.submit_task("frozen", {"n": 1})
        with transport.consumer("frozen") as consumer:
            delivery = consumer.reserve(timeout=5)
            assert delivery is not None
            [owner] = _names(root / "frozen" / "claimed")
            transport.heartbeats.discard(consumer)  # it stops beating
            lock = root / "frozen" / "claimed" / owner / ".lock"
            os.utime(lock, (time.time() - 3, time.time() - 3))
            # When another consumer looks, it takes the task back, one attempt more
            with open_transport(transport.uri) as other, other.consumer("frozen") as rival:
                again = rival.reserve(timeout=5)
                assert again is not None and again.attempt == 2 and again.payload == {"n": 1}
                rival.ack(again)
            # And the frozen consumer's late ack changes nothing
            consumer.ack(delivery)
            assert transport.queue_stats("frozen").ready == 0


def test_a_consumer_dropped_without_close_gives_its_task_back(tmp_path):
    # Given a consumer that reserved a task and was then dropped without close()
    with open_transport(f"filesys:{tmp_path}?lease=2") as transport:
        transport.submit_task("dropped", {"n": 1})
        consumer = transport.consumer("dropped")
        assert consumer.reserve(timeout=5) is not None
        del consumer
        gc.collect()
        # Then its lock went with it, and the next consumer gets the task at once
        with transport.consumer("dropped") as next_one:
            start = time.monotonic()
            again = next_one.reserve(timeout=5)
            assert again is not None and again.attempt == 2
            assert time.monotonic() - start < 1.0
            next_one.ack(again)


def test_a_live_consumer_holds_its_lock_and_leaves_no_folder_behind(tmp_path):
    # Given a consumer holding a task, its lock cannot be taken by anybody else
    root = tmp_path / "queues"
    with open_transport(f"filesys:{root}") as transport:
        transport.submit_task("locked", {})
        with transport.consumer("locked") as consumer:
            assert consumer.reserve(timeout=5) is not None
            [owner] = _names(root / "locked" / "claimed")
            fd = os.open(root / "locked" / "claimed" / owner / ".lock", os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
    # And a closed consumer leaves no folder behind
    assert _names(root / "locked" / "claimed") == []


def _rival_sweeps_at(monkeypatch, call: str, root: Path, queue: str) -> list[str]:
    """Make a rival's recovery sweep run inside the next ``OwnerFolder`` build, at its
    ``os.<call>`` of the ``.new-`` folder (``open``: its lock file, before the lock is
    taken; ``rename``: the move into place, the lock held), after a stall past the
    lease (the folder's mtime set 3 s back). Returns the names swept at (one)."""
    real = getattr(os, call)
    claimed, ready = root / queue / "claimed", root / queue / "ready"
    swept: list[str] = []

    def stalled(path, *args, **kwargs):
        building = os.path.dirname(os.fspath(path)) if call == "open" else os.fspath(path)
        name = os.path.basename(building)
        if not swept and name.startswith(".new-") and os.path.dirname(building) == str(claimed):
            swept.append(name)
            old = time.time() - 3  # the builder stalled past the lease of 2 s here
            os.utime(building, (old, old))
            recover_dead(str(claimed), str(ready), 2.0, None)  # a rival's sweep
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, call, stalled)
    return swept


@pytest.mark.parametrize("call", ["open", "rename"])
def test_a_rivals_sweep_during_a_stalled_folder_build_never_ends_the_consumer(
    tmp_path, monkeypatch, call
):
    """A consumer builds its folder under ``claimed/.new-<name>`` and renames it into
    place; a rival's sweep removes a ``.new-`` folder older than the lease (a builder
    killed half-way). A live builder stalled past the lease (a loaded machine) must not
    die of it: seen once in the chaos kills scenario, a restarted worker child exited
    on ``ENOENT`` at ``claimed/.new-<owner>+<random>`` and its supervisor with 2. Failed
    before the fix at both points (TransportRefused: No such file or directory)."""
    root = tmp_path / "queues"
    queue = unique_queue()
    with open_transport(f"filesys:{root}?lease=2") as transport:
        # Given a task, and a rival that sweeps while a worker child builds its folder
        transport.submit_task(queue, {"n": 1})
        transport.ensure_queue(queue)
        swept = _rival_sweeps_at(monkeypatch, call, root, queue)
        # When that child's consumer reserves (its first reserve builds its folder)
        with transport.consumer(queue, owner=new_owner()) as consumer:
            delivery = consumer.reserve(timeout=5)
            monkeypatch.undo()
            # Then the sweep ran inside the build, and the consumer got its task all the same
            assert swept
            assert delivery is not None and delivery.payload == {"n": 1}
            assert delivery.attempt == 1
            consumer.ack(delivery)
        # And no folder is left behind, half-built or not
        left = os.listdir(root / queue / "claimed")
        assert [name for name in left if not name.startswith(".live-")] == []


def test_a_folder_its_builder_left_half_built_is_swept_after_the_lease(tmp_path):
    """The guard of the fix above: a ``.new-`` folder whose builder died (its lock free)
    still goes once it is older than the lease, with or without its lock file; a young
    one stays."""
    claimed, ready = tmp_path / "claimed", tmp_path / "ready"
    for folder in (claimed, ready):
        folder.mkdir()
    old = time.time() - 3
    for name, lock in ((".new-a", True), (".new-b", False), (".new-young", True)):
        (claimed / name).mkdir()
        if lock:
            (claimed / name / ".lock").touch()
        if name != ".new-young":
            os.utime(claimed / name, (old, old))
    recover_dead(str(claimed), str(ready), 2.0, None)
    assert os.listdir(claimed) == [".new-young"]


def test_an_expired_claim_has_exactly_one_new_winner(tmp_path):
    with open_transport(f"filesys:{tmp_path}") as transport:
        assert transport.claim("firing:1", ttl=0.2)
        time.sleep(0.3)
        results: list[bool] = []
        barrier = threading.Barrier(8)

        def race() -> None:
            with open_transport(transport.uri) as mine:
                barrier.wait()
                results.append(mine.claim("firing:1", ttl=30))

        threads = [threading.Thread(target=race) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False] * 7 + [True]


def test_without_inotify_an_idle_consumer_wakes_within_the_poll(tmp_path):
    uri = f"filesys:{tmp_path}?notify=poll&poll=0.05"
    queue = unique_queue()
    woke: list[float] = []
    with open_transport(uri) as transport, transport.consumer(queue) as consumer:
        consumer.reserve(timeout=0)

        def wait() -> None:
            delivery = consumer.reserve(timeout=10)
            woke.append(time.monotonic())
            assert delivery is not None

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.3)
        with open_transport(uri) as producer:
            sent = time.monotonic()
            producer.submit_task(queue, {})
        thread.join(10)
    assert woke and woke[0] - sent < 0.25


# -- depth ---------------------------------------------------------------------------------


def _per_task_seconds(uri: str, queue: str, depth: int, rounds: int) -> float:
    """CPU seconds of this process per reserve+ack for one consumer draining a queue
    ``depth`` deep: CPU time, not wall time, so that other work on the machine (the suite's
    other groups) does not decide the ratio (it read 0.36 once under load, 1.0 alone)."""
    elapsed = 0.0
    with open_transport(uri) as transport, transport.consumer(queue) as consumer:
        consumer.reserve(timeout=0)
        with open_transport(uri + "?fsync=false") as producer:
            for _ in range(rounds):
                for start in range(0, depth, 5000):
                    producer.submit_tasks(queue, [{}] * min(5000, depth - start))
                begin = time.process_time()
                for _ in range(depth):
                    delivery = consumer.reserve(timeout=5)
                    assert delivery is not None
                    consumer.ack(delivery)
                elapsed += time.process_time() - begin
    return elapsed / (depth * rounds)


@pytest.mark.slow
def test_taking_costs_the_same_at_any_depth(tmp_path):
    # Given the same consumer work at depth 100 (refilled 20 times) and depth 20,000
    uri = f"filesys:{tmp_path}"
    shallow = _per_task_seconds(uri, "shallow", 100, rounds=20)
    deep = _per_task_seconds(uri, "deep", 20_000, rounds=1)
    # Then a task from the deep queue costs at most twice as much
    ratio = shallow / deep
    assert ratio >= 0.5, f"{1 / deep:.0f} tasks/s at 20,000 vs {1 / shallow:.0f} at 100"
