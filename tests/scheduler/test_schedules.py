"""Schedules in one process: checking entries, naming firings, claiming them once."""

from __future__ import annotations

import datetime as dt

import pytest

from asynctask import ConfigurationError, get_transport
from asynctask.command import CommandWorker
from asynctask.plugins import load_plugins
from asynctask.scheduler import ScheduleRunner, firing_key, latest_fire_time
from asynctask.schedules import build_trigger
from asynctask.settings import configure, load_settings
from asynctask.testing import unique_queue


def settings_with(tmp_path, entries, transport="localmem:"):
    import json

    return load_settings(
        overrides=[
            f"asynctask_transport={transport}",
            "asynctask_scheduled_workers=" + json.dumps(entries),
        ],
        environ={},
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"second": 1}], "entry #1: give exactly one of 'worker' or 'command'"),
        (
            [{"worker": "w", "command": ["x"], "name": "n", "second": 1}],
            "entry #1: give exactly one",
        ),
        ([{"worker": "w"}], "entry #1: give at least one time field"),
        (
            [{"worker": "w", "second": 1}, {"worker": "v", "minute": "*/x"}],
            "entry #2: field 'minute' = '*/x' is not valid",
        ),
        ([{"worker": "w", "hour": 25}], "entry #1: field 'hour' = 25 is not valid"),
        (
            [{"worker": "w", "second": 1, "timezone": "Mars/Olympus"}],
            "entry #1: field 'timezone' = 'Mars/Olympus' is not valid",
        ),
        (
            [{"worker": "w", "second": 1, "start_date": "not a date"}],
            "entry #1: field 'start_date' = 'not a date'",
        ),
        ([{"command": ["echo"], "second": 1}], "entry #1: a 'command' entry needs a 'name'"),
        (
            [{"command": "echo hi", "name": "hi", "second": 1}],
            "'command' must be a list of arguments",
        ),
        (
            [{"worker": "w", "second": 1}, {"worker": "w", "hour": 3}],
            "entries #1 and #2 are both named 'w'",
        ),
        (
            [{"worker": "w", "name": "Bad Name", "second": 1}],
            "name 'Bad Name' does not make a valid queue name",
        ),
        ([{"worker": "w", "second": 1, "payload": [1]}], "field 'payload'"),
        ([{"worker": "w", "second": 1, "colour": "red"}], "unknown fields ['colour']"),
    ],
)
def test_bad_entries_stop_start_up_naming_position_field_and_value(tmp_path, entries, message):
    with pytest.raises(ConfigurationError) as info:
        settings_with(tmp_path, entries)
    assert "setting asynctask_scheduled_workers" in str(info.value)
    assert message in str(info.value)


def test_unknown_scheduled_worker_is_refused_with_the_known_ones(tmp_path):
    settings = settings_with(tmp_path, [{"worker": "nobody", "second": 1}])
    with pytest.raises(
        ConfigurationError, match="entry #1 names the worker 'nobody'.*known workers:"
    ):
        settings.check_workers(load_plugins().workers)


def test_entries_are_normalised_with_their_queue(tmp_path):
    settings = settings_with(
        tmp_path,
        [
            {"worker": "test_record", "second": "*/5"},
            {"worker": "test_record", "name": "other", "minute": 0},
        ],
    )
    assert [e["queue"] for e in settings.schedules] == ["scheduled_test_record", "scheduled_other"]
    assert settings.schedules[0]["payload"] == {}


def test_latest_fire_time_names_the_firing_the_same_way_everywhere():
    trigger = build_trigger({"second": "*/5", "timezone": "UTC"})
    now = dt.datetime(2026, 1, 1, 12, 0, 7, 300000, tzinfo=dt.UTC)
    assert latest_fire_time(trigger, now) == dt.datetime(2026, 1, 1, 12, 0, 5, tzinfo=dt.UTC)
    assert latest_fire_time(trigger, now.replace(second=5, microsecond=0)).second == 5
    entry = {"name": "w"}
    assert (
        firing_key(entry, latest_fire_time(trigger, now)) == "schedule:w:2026-01-01T12:00:05+00:00"
    )


def test_three_runners_submit_a_firing_once(tmp_path):
    # Given three schedulers over one transport, all firing the same second
    queue_name = unique_queue("s")
    settings = settings_with(
        tmp_path, [{"worker": "test_record", "name": queue_name[2:], "second": "*"}]
    )
    runners = [ScheduleRunner(settings, load_plugins()) for _ in range(3)]
    entry = settings.schedules[0]
    trigger = build_trigger(entry)
    now = dt.datetime.now(trigger.timezone)
    # When each one fires for the same moment
    won = [runner.fire(entry, trigger, now) for runner in runners]
    # Then exactly one submitted the task
    assert won.count(True) == 1
    assert get_transport("localmem:").poll_queue(entry["queue"]) == 1
    # And the next second's firing is a new one, again won once
    later = now + dt.timedelta(seconds=1)
    assert [runner.fire(entry, trigger, later) for runner in runners].count(True) == 1
    assert get_transport("localmem:").poll_queue(entry["queue"]) == 2


def test_skip_if_pending_skips_while_the_previous_task_waits(tmp_path):
    name = unique_queue("p")[2:]
    settings = settings_with(
        tmp_path, [{"worker": "test_record", "name": name, "second": "*", "skip_if_pending": True}]
    )
    entry = settings.schedules[0]
    transport = get_transport("localmem:")
    transport.submit_task(entry["queue"], {})
    runner = ScheduleRunner(settings, load_plugins())
    assert runner.fire(entry, build_trigger(entry)) is False
    assert transport.poll_queue(entry["queue"]) == 1


def test_a_future_start_fires_nothing_before_it(tmp_path):
    # (An entry whose end_date is past can never fire: it is refused at start-up, see
    # tests/cli/test_one_cli.py.)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    settings = settings_with(
        tmp_path,
        [{"worker": "test_record", "name": "later", "second": "*", "start_date": future}],
    )
    runner = ScheduleRunner(settings, load_plugins())
    [later] = settings.schedules
    now = dt.datetime.now(dt.UTC)
    assert runner.fire(later, build_trigger(later)) is False
    assert get_transport("localmem:").poll_queue(later["queue"]) == 0
    # It first fires at its start date
    first = build_trigger(later).get_next_fire_time(None, now)
    assert first >= dt.datetime.fromisoformat(future)


def test_command_worker_runs_only_commands_from_its_own_settings(tmp_path, caplog):
    configure(
        settings_with(
            tmp_path, [{"command": ["echo", "hello from cron"], "name": "hello", "second": 1}]
        )
    )
    worker = CommandWorker()
    with caplog.at_level("INFO"):
        worker.process({"schedule": "hello"})
    assert "hello from cron" in caplog.text
    # A task written by hand with a command text in it runs nothing
    with pytest.raises(ConfigurationError, match="no command schedule entry is named 'rm'"):
        worker.process({"schedule": "rm", "command": ["touch", str(tmp_path / "pwned")]})
    with pytest.raises(ConfigurationError):
        worker.process({"command": ["touch", str(tmp_path / "pwned")]})
    assert not (tmp_path / "pwned").exists()


def test_failing_command_is_an_error_with_exit_code_and_output(tmp_path):
    configure(
        settings_with(
            tmp_path, [{"command": ["sh", "-c", "echo oops; exit 3"], "name": "bad", "second": 1}]
        )
    )
    with pytest.raises(RuntimeError, match=r"exited with code 3; output ends: oops"):
        CommandWorker().process({"schedule": "bad"})
