"""No password in any output (DESIGN.md section 3): a matrix of odd and malformed URIs
through every command, the logs, and the command lines that ``ps`` shows.

Each URI hides the marker ``S3cret`` where a password goes (in user info, after an ``@``
inside the password, in ``?password=`` or ``?sslpassword=``, in the libpq keyword form);
whatever a command makes of it (works, refuses it, cannot reach the server), the marker
must appear nowhere in its stdout or stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from asynctask.testing import clean_environment
from asynctask.uri import redact

SECRET = "S3cret"
QUICK = "retry_timeout=0.2"

#: odd and malformed transport URIs; those that reach for a server point at a closed port
URIS = [
    f"amqp://app:{SECRET}@127.0.0.1:1/vh?{QUICK}",
    f"amqp:/app:{SECRET}@host/",
    f"amqp:app:{SECRET}@host",
    f"amqps://app:{SECRET}@127.0.0.1:1/?{QUICK}",
    f"amqp://app:p@ss@{SECRET}@127.0.0.1:1/?{QUICK}",
    f"amqp://app:{SECRET}@[::1]:1/?{QUICK}",
    f"amqp://app:{SECRET}@127.0.0.1:1/?heartbeat=abc",
    f"amqp://app:{SECRET}@127.0.0.1:1/?unknown_option=1",
    f"amqp://app:{SECRET}@127.0.0.1:1/%zz?{QUICK}",
    f"redis://:{SECRET}@127.0.0.1:1/0?{QUICK}",
    f"redis:/:{SECRET}@host/5",
    f"redis://user:{SECRET}@127.0.0.1:1/99999",
    f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=bogus",
    f"redis://127.0.0.1:1/0?password={SECRET}&{QUICK}",
    f"redis://:p@{SECRET}@127.0.0.1:1/0?{QUICK}",
    f"redis://:{SECRET}@127.0.0.1:1/0?socket_timeout=-1",
    f"unix://:{SECRET}@/nonexistent/redis.sock?{QUICK}",
    f"pgsql://app:{SECRET}@127.0.0.1:1/db?{QUICK}",
    f"pgsql:/app:{SECRET}@host/db",
    f"postgresql://app:{SECRET}@127.0.0.1:1/db?sslpassword={SECRET}&{QUICK}",
    f"pgsql://app@127.0.0.1:1/db?password={SECRET}&{QUICK}",
    f"pgsql:host=127.0.0.1 port=1 password={SECRET} dbname=db",
    f"pgsql:host=127.0.0.1 password='{SECRET} x' dbname=db",
    f"pgsql://app:{SECRET}@127.0.0.1:1/db?schema=Bad-Schema",
    f"postgres://app:p@{SECRET}@127.0.0.1:1/db?{QUICK}",
    f"pgsql://app:{SECRET}@127.0.0.1:notaport/db",
    f"pgsql://app:{SECRET}@127.0.0.1:1/db?sslmode=bogus",
    f"filesys://app:{SECRET}@otherhost/path",
    f"nosuchscheme://app:{SECRET}@host/",
    f"localmem://app:{SECRET}@x",
    f"AMQP://APP:{SECRET}@127.0.0.1:1/?{QUICK}",
    f"  redis://:{SECRET}@127.0.0.1:1/0  ",
]
# Every URI gives up at once on an unreachable server: the test is about texts, not waits.
URIS = [uri if QUICK in uri else uri + ("&" if "?" in uri else "?") + QUICK for uri in URIS]
URIS = [uri.replace("@host", "@127.0.0.1:1") for uri in URIS]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "asynctask", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_environment(),
        check=False,
    )
    return done.stdout + done.stderr


def _commands(uri: str) -> list[tuple[str, ...]]:
    transport = f"asynctask_transport={uri}"
    # a command entry whose argument holds the URI too, as a backup job's would
    schedules = json.dumps([{"command": ["pg_dump", f"--uri={uri}"], "name": "backup", "hour": 3}])
    return [
        ("settings", "--set", transport),
        ("settings", "--json", "--set", transport),
        ("queues", "--set", transport),
        ("submit", "some_queue", "{}", "--set", transport),
        ("schedule", "--set", transport, "--set", f"asynctask_scheduled_workers={schedules}"),
        ("failed", "list", "some_queue", "--set", transport),
    ]


def test_no_command_shows_a_password_of_any_uri(caplog):
    # Given every command, run in this process (fast) with every URI
    from typer.testing import CliRunner

    from asynctask.cli import app
    from asynctask.logs import RedactingFormatter

    assert len(URIS) >= 30
    runner = CliRunner()
    leaks = []
    caplog.set_level(logging.INFO)
    for uri in URIS:
        for command in _commands(uri):
            result = runner.invoke(app, list(command))
            out = result.output + str(result.exception or "")
            # Then neither the output nor any log line (WARNING included) shows it
            lines = "\n".join(RedactingFormatter().format(r) for r in caplog.records)
            if SECRET in out or SECRET in lines:
                leaks.append((uri, command[0], out[-300:], lines[-300:]))
            caplog.clear()
    assert not leaks, leaks[:3]


@pytest.mark.slow
def test_no_command_run_as_a_process_shows_a_password():
    # Given a sample of the URIs through the real command (its own logging and errors)
    runs = [(uri, command) for uri in URIS[::4] for command in _commands(uri)]
    # When each runs (four at a time)
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda run: _cli(*run[1]), runs))
    # Then no output holds the password, and each said something
    leaks = [(u, c[0], o) for (u, c), o in zip(runs, outputs, strict=True) if SECRET in o]
    assert not leaks, leaks[:3]
    assert all(out.strip() for out in outputs)


def test_no_environment_variable_shows_a_password_either():
    # Given a malformed URI in the environment, the way services are often configured
    env = clean_environment(ASYNCTASK_TRANSPORT=f"amqp:/app:{SECRET}@host/")
    # When settings and queues read it
    out = _cli("settings", env=env) + _cli("queues", env=env)
    # Then the password shows nowhere
    assert SECRET not in out and "***" in out


@pytest.mark.parametrize("uri", URIS)
def test_redact_hides_the_password_wherever_the_uri_stands(uri):
    for text in (uri, f"error: cannot reach {uri} (refused)", json.dumps({"x": [uri]})):
        assert SECRET not in redact(text)


def test_every_log_line_is_redacted_tracebacks_included():
    # Given a log line and an exception whose texts hold URIs with passwords
    record = logging.LogRecord(
        "asynctask", logging.WARNING, __file__, 1, "lost %s", (URIS[1],), None
    )
    try:
        raise RuntimeError(f"driver said: {URIS[21]}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    # When our formatter writes it
    from asynctask.logs import RedactingFormatter

    line = RedactingFormatter("%(message)s").format(record)
    # Then neither shows the password
    assert SECRET not in line and "driver said" in line


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_ps_never_shows_a_password_of_the_supervisor_or_its_children(tmp_path):
    # Given `asynctask workers` started with a password in --set (PostgreSQL trusts us, so
    # the password is accepted and unused)
    uri = f"pgsql://root:{SECRET}@127.0.0.1:5432/test"
    from asynctask.testing import require_service
    from backends import BACKENDS

    require_service("pgsql", BACKENDS["pgsql"][1])
    process = subprocess.Popen(
        [sys.executable, "-m", "asynctask", "workers", "--set", f"asynctask_transport={uri}",
         "--set", 'asynctask_workers={"ps_check": "test_record"}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_environment(),
    )  # fmt: skip
    try:
        # When it has started its child
        deadline = time.monotonic() + 30
        children: list[int] = []
        while time.monotonic() < deadline and not children:
            path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            children = [int(p) for p in path.read_text().split()]
            time.sleep(0.1)
        assert children, "no child started"
        # Then neither its command line nor its child's shows the password
        assert SECRET not in _cmdline(process.pid)
        assert "***" in _cmdline(process.pid)
        for child in children:
            assert SECRET not in _cmdline(child)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert SECRET not in err
