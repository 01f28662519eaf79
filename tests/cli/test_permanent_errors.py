"""Permanent errors are not outages (issue 14, section 1).

A backend that answers and refuses us (a wrong password, an unknown role, database or
vhost, a TLS set-up the server refuses) ends every command at once with exit 2 and one
line naming the server, never the password. A backend that is away is waited out.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import redis

from asynctask.testing import (
    FAST_CHECKS,
    clean_environment,
    require_service,
    unique_queue,
    workers_command,
)
from backends import BACKENDS
from clitools import PASSWORD, OwnRedis, run_asynctask

PG = "pgsql://{}127.0.0.1:5432/{}"
REFUSED = {
    "pgsql-unknown-role": ("pgsql", PG.format("nosuchrole:pw-9f3@", "test"), "role"),
    "pgsql-unknown-database": ("pgsql", PG.format("", "nosuchdb_x14"), "nosuchdb_x14"),
    "pgsql-refused-tls": ("pgsql", PG.format("", "test") + "?sslmode=require", "SSL"),
    "amqp-wrong-password": ("amqp", "amqp://guest:pw-9f3@127.0.0.1:5672//", "refused"),
    "amqp-unknown-vhost": ("amqp", "amqp://guest:guest@127.0.0.1:5672/nosuch_vhost14", "vhost"),
}


def _refused_uri(case: str) -> tuple[str, str]:
    backend, uri, cause = REFUSED[case]
    check = BACKENDS[backend][1]
    assert check is not None
    require_service(backend, check)
    return uri, cause


def _assert_one_line_refusal(result, where: str, cause: str) -> None:
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert "Traceback" not in result.err, result.err
    assert len(errors) == 1, result.err
    assert where in errors[0] and cause in errors[0], errors[0]
    assert "pw-9f3" not in result.err and PASSWORD not in result.err
    assert result.seconds < 10, f"took {result.seconds:.1f} s: it was retried as an outage"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_queues_ends_at_once_with_exit_2_on_a_refusal(case):
    # Given a URI the server refuses for good
    uri, cause = _refused_uri(case)
    # When `queues` runs Then it ends at once with exit 2 and one line naming server and cause
    result = run_asynctask("queues", uri=uri)
    _assert_one_line_refusal(result, "127.0.0.1:5", cause)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_workers_end_at_once_with_exit_2_on_a_refusal(case, tmp_path):
    uri, cause = _refused_uri(case)
    # When `asynctask workers` starts on it (no --halt-when-empty: it would run forever)
    command = workers_command(uri, {unique_queue(): "test_record"}, settings=FAST_CHECKS)
    result = run_asynctask(*command[3:], cwd=tmp_path, timeout=30)
    # Then it stops at once: exit 2, one line, no restart loop
    _assert_one_line_refusal(result, "127.0.0.1:5", cause)


def test_redis_wrong_password_ends_queues_and_workers_with_exit_2(own_redis: OwnRedis, tmp_path):
    uri = own_redis.uri(password="pw-9f3")
    where = f"127.0.0.1:{own_redis.port}"
    _assert_one_line_refusal(run_asynctask("queues", uri=uri), where, "credentials")
    command = workers_command(uri, {unique_queue(): "test_record"}, settings=FAST_CHECKS)
    result = run_asynctask(*command[3:], cwd=tmp_path, timeout=30)
    _assert_one_line_refusal(result, where, "credentials")


def test_a_child_refused_mid_run_stops_every_worker_with_exit_2(own_redis: OwnRedis, tmp_path):
    # Given workers running on our own Redis
    queue = unique_queue()
    command = workers_command(own_redis.uri(), {queue: "test_record"}, settings=FAST_CHECKS)
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=clean_environment()
    )
    try:
        client = redis.Redis(port=own_redis.port, password=PASSWORD)
        deadline_clients = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [c for c in client.client_list() if c["cmd"] != "client|list"]
            if names:
                deadline_clients = len(names)
                break
            time.sleep(0.1)
        assert deadline_clients, "the worker never connected"
        # When the password changes and the workers' connections are dropped
        client.config_set("requirepass", "another-pw")
        client.client_kill_filter(_type="normal", skipme=True)
        # Then the child's reconnect is refused and the supervisor stops all with exit 2
        code = process.wait(30)
        err = process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert code == 2, err
    assert "credentials" in err and "Traceback" not in err, err
    assert "restarting" not in err, err


def test_a_bad_option_ends_every_command_with_exit_2(tmp_path):
    uri = f"filesys:{tmp_path / 'q'}?no_such_option=1"
    for args in (["queues"], ["submit", "abc", "{}"], ["failed", "list", "abc"]):
        result = run_asynctask(*args, uri=uri)
        assert result.code == 2, (args, result.err)
        assert "no_such_option" in result.err
    command = workers_command(uri, {"abc": "test_record"})
    assert run_asynctask(*command[3:], cwd=tmp_path).code == 2


def test_a_pgsql_role_refused_mid_run_stops_every_worker_with_exit_2(tmp_path):
    import psycopg

    check = BACKENDS["pgsql"][1]
    assert check is not None
    require_service("pgsql", check)
    # Given a login role of our own, and workers running as it in a schema of its own
    role = f"op_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect("host=127.0.0.1 port=5432 dbname=test", autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute(f"GRANT CREATE ON DATABASE test TO {role}")
    uri = f"pgsql://{role}@127.0.0.1:5432/test?schema={role}&application_name={role}"
    command = workers_command(uri, {unique_queue(): "test_record"}, settings=FAST_CHECKS)
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=clean_environment()
    )
    try:
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        deadline = time.monotonic() + 30
        while admin.execute(count, (role,)).fetchone()[0] == 0:  # type: ignore[index]
            assert time.monotonic() < deadline, "the worker never connected"
            time.sleep(0.1)
        # When the role may no longer log in and its connections are ended
        admin.execute(f"ALTER ROLE {role} NOLOGIN")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (role,),
        )
        # Then the child's reconnect is refused and the supervisor stops all with exit 2
        code = process.wait(30)
        err = process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        admin.execute(f"DROP SCHEMA IF EXISTS {role} CASCADE")
        admin.execute(f"REVOKE CREATE ON DATABASE test FROM {role}")
        admin.execute(f"DROP ROLE {role}")
        admin.close()
    assert code == 2, err
    assert "not permitted to log in" in err and "Traceback" not in err, err
    assert "restarting" not in err, err
