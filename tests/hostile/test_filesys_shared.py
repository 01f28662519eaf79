"""The filesys transport in a folder shared with other local users (DESIGN.md section 10).

Anybody who can write the folder can drop a FIFO, a symlink or a device where a task file
should be, hold a claim's lock, or plant a symlink where the scheduler writes its claims.
None of it may hang a worker, read another file, or write through a link. The
group-shared mode (``?mode=0660`` in a setgid folder) must work between two users.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from asynctask import get_transport
from asynctask_filesys import claims

PRODUCER, WORKER, GROUP = "asynctask_prod", "asynctask_work", "asynctask_share"


def test_get_task_does_not_hang_on_a_fifo_and_stores_it_as_failed(tmp_path):
    # Given a FIFO dropped into ready/ ahead of a good task
    transport = get_transport(f"filesys:{tmp_path}")
    transport.submit_task("fifo_q", {"n": 1})
    ready = tmp_path / "fifo_q" / "ready"
    os.mkfifo(ready / "0000000000000000001-fifo.json", 0o600)
    # When a script takes the head task (in a thread, so a hang cannot stall the suite)
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(transport.get_task("fifo_q")), daemon=True)
    taker.start()
    taker.join(10)
    # Then it returns the good task at once, and the FIFO is in the failed store, with why
    assert not taker.is_alive(), "get_task hung on a FIFO"
    assert got == [{"n": 1}]
    [failed] = transport.failed_tasks("fifo_q")
    assert "not a regular file" in failed.error and failed.payload is None


def test_a_symlinked_task_never_shows_its_targets_content(tmp_path):
    # Given a symlink in ready/ to a file the worker may read
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2-target"}')
    transport = get_transport(f"filesys:{tmp_path / 'q'}")
    transport.submit_task("link_q", {"n": 1})
    os.symlink(secret, tmp_path / "q" / "link_q" / "ready" / "0000000000000000001-x.json")
    # When it is taken and then listed in the failed store
    assert transport.get_task("link_q") == {"n": 1}
    [failed] = transport.failed_tasks("link_q")
    # Then neither the payload nor the listing holds the target's text
    assert "hunter2-target" not in f"{failed.payload} {failed.raw} {failed.error}"
    assert "symbolic link" in failed.error


def test_a_claim_never_writes_through_a_planted_symlink(tmp_path):
    # Given another user planted a symlink where the claim of a firing will be
    target = tmp_path / "root-only"
    target.write_text("keep me")
    target.chmod(0o600)
    folder = tmp_path / "queues" / claims.FOLDER
    folder.mkdir(parents=True)
    import hashlib

    key = "schedule:backup:2026-01-01T00:00:00+00:00"
    os.symlink(target, folder / hashlib.sha256(key.encode()).hexdigest())
    # When the scheduler claims that firing
    taken = claims.claim(str(tmp_path / "queues"), key, 60, 0o600)
    # Then the target is untouched and the claim went to a file of its own
    assert target.read_text() == "keep me"
    assert taken is True
    assert not (folder / hashlib.sha256(key.encode()).hexdigest()).is_symlink()


def test_a_held_claim_lock_does_not_stall_the_scheduler(tmp_path):
    # Given an expired claim whose lock another process holds and never lets go
    root = tmp_path / "queues"
    assert claims.claim(str(root), "k", 0.01, 0o600) is True
    time.sleep(0.05)
    import hashlib

    path = root / claims.FOLDER / hashlib.sha256(b"k").hexdigest()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # When a scheduler tries to claim it
        began = time.monotonic()
        result: list[bool] = []
        claimer = threading.Thread(
            target=lambda: result.append(claims.claim(str(root), "k", 60, 0o600)), daemon=True
        )
        claimer.start()
        claimer.join(10)
        # Then it gives up within a bounded time, saying nobody got it
        assert not claimer.is_alive(), "claim blocked on a held lock"
        assert result == [False] and time.monotonic() - began < 5
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_group_shared_mode_keeps_the_setgid_bit_on_the_folders_it_makes(tmp_path):
    # Given a setgid folder, as the README's multi-user setup has it
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2770)
    # When a queue is made in it with mode=0660
    get_transport(f"filesys:{shared}?mode=0660").submit_task("shared_q", {"n": 1})
    # Then every folder it made keeps the setgid bit, so new files keep the group
    for folder in [shared / "shared_q", *(shared / "shared_q").iterdir()]:
        assert os.stat(folder).st_mode & stat.S_ISGID, folder


def _ensure_user(name: str) -> None:
    # Each user has a primary group of its own, so only the shared group links them.
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", name], check=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-g", name, "-s", "/bin/false", name], check=True)
    subprocess.run(["usermod", "-g", name, "-a", "-G", GROUP, name], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating two users needs root (CI runs as root)")
def test_a_producer_and_a_worker_as_two_users_share_a_group_folder(shared_python):
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd/runuser are not installed")
    # Given two users of one group and a setgid folder of that group, mode 2770
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    _ensure_user(PRODUCER)
    _ensure_user(WORKER)
    base = Path(tempfile.mkdtemp(prefix="asynctask-shared-"))
    try:
        base.chmod(0o755)
        shared = base / "queues"
        shared.mkdir()
        os.chown(shared, 0, grp.getgrnam(GROUP).gr_gid)
        shared.chmod(0o2770)
        uri = f"filesys:{shared}?mode=0660"
        ledger = shared / "ledger.jsonl"
        env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "ASYNCTASK_TRANSPORT": uri}
        # When one user submits and the other runs the workers until the queue is empty
        submit = subprocess.run(
            ["runuser", "-u", PRODUCER, "--", shared_python, "-m", "asynctask", "submit",
             "two_users", json.dumps({"ledger": str(ledger), "n": 1})],
            capture_output=True, text=True, env=env, cwd="/", timeout=60,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        ledger.touch()
        os.chown(ledger, pwd.getpwnam(WORKER).pw_uid, grp.getgrnam(GROUP).gr_gid)
        work = subprocess.run(
            ["runuser", "-u", WORKER, "--", shared_python, "-m", "asynctask", "workers",
             "--halt-when-empty", "--set", 'asynctask_workers={"two_users": "test_record"}'],
            capture_output=True, text=True, env=env, cwd="/", timeout=45,
        )  # fmt: skip
        # Then the worker ran the producer's task, and left nothing behind
        assert work.returncode == 0, work.stderr
        done = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert [e["payload"]["n"] for e in done if e["event"] == "done"] == [1]
        assert get_transport(uri).queue_stats("two_users").failed == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
