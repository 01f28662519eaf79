"""Settings: every source, later ones winning, and errors that name setting, source, value."""

from __future__ import annotations

import pytest

from asynctask import ConfigurationError
from asynctask.settings import WorkerConfig, load_settings


def load(tmp_path, overrides=(), environ=None, toml=None):
    if toml is not None:
        (tmp_path / "asynctask.toml").write_text(toml)
    return load_settings(overrides=list(overrides), environ=environ or {}, cwd=tmp_path)


def test_defaults(tmp_path):
    settings = load(tmp_path)
    assert settings.workers == {}
    assert settings.poll_interval == 0.5
    assert settings.check_child_interval == 1.0
    assert settings.transport.startswith("filesys:")
    assert str(tmp_path) not in settings.transport  # not the working folder
    assert settings.sources["asynctask_workers"] == "default"


def test_later_sources_win_and_replace_whole_values(tmp_path):
    toml = 'asynctask_transport = "localmem:"\n[asynctask_workers]\nfoo = "a"\nbar = "b"\n'
    environ = {"ASYNCTASK_WORKERS": '{"baz": {"worker": "c", "concurrency": 2}}'}
    settings = load(tmp_path, ["asynctask_workers_poll_interval=250"], environ, toml)
    assert settings.transport == "localmem:"
    assert settings.sources["asynctask_transport"].startswith("file ")
    assert settings.workers == {"baz": WorkerConfig("c", 2)}  # no merging with the file
    assert settings.sources["asynctask_workers"] == "environment variable ASYNCTASK_WORKERS"
    assert settings.poll_interval == 0.25
    assert (
        settings.sources["asynctask_workers_poll_interval"]
        == "--set asynctask_workers_poll_interval"
    )


def test_prefetch_per_queue(tmp_path):
    settings = load(tmp_path, ['asynctask_workers={"foo": {"worker": "w", "prefetch": 8}}'])
    assert settings.workers["foo"] == WorkerConfig("w", prefetch=8)


def test_child_concurrency_per_queue(tmp_path):
    entry = '{"foo": {"worker": "w", "concurrency": 2, "child_concurrency": 100}}'
    settings = load(tmp_path, [f"asynctask_workers={entry}"])
    assert settings.workers["foo"] == WorkerConfig("w", concurrency=2, child_concurrency=100)


def test_global_limits_per_queue(tmp_path):
    entry = (
        '{"foo": {"worker": "w", "rate_max_calls": 50, "rate_period": 5, '
        '"rate_scope": "global", "max_running": 3}}'
    )
    settings = load(tmp_path, [f"asynctask_workers={entry}"])
    assert settings.workers["foo"] == WorkerConfig(
        "w", rate_max_calls=50, rate_period=5.0, rate_scope="global", max_running=3
    )


def test_set_takes_a_plain_string_when_not_json(tmp_path):
    settings = load(tmp_path, ["asynctask_transport=redis://127.0.0.1:6379"])
    assert settings.transport == "redis://127.0.0.1:6379"


def test_disabled_queues_stay_disabled(tmp_path):
    settings = load(tmp_path, ['asynctask_workers={"foo": null, "bar": false, "baz": "w"}'])
    assert settings.workers == {"foo": None, "bar": None, "baz": WorkerConfig("w")}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"Bad-Queue": "w"}', "'Bad-Queue' is not a valid queue name"),
        (
            '{"foo": {"worker": "w", "rate_max_calls": 5, "rate_period": 0}}',
            "rate_period must be a number of seconds > 0, got 0",
        ),
        (
            '{"foo": {"worker": "w", "rate_max_calls": 5}}',
            "give both rate_max_calls and rate_period",
        ),
        ('{"foo": {"worker": "w", "concurrency": 0}}', "concurrency must be a whole number >= 1"),
        ('{"foo": {"worker": "w", "colour": 1}}', "unknown keys ['colour']"),
        ('{"foo": 3}', "expected a worker name"),
        (
            '{"foo": {"worker": "w", "prefetch": 0}}',
            "prefetch must be a whole number from 1 to 1000, got 0",
        ),
        ('["foo"]', "expected an object mapping queue names"),
        (
            '{"foo": {"worker": "w", "child_concurrency": true}}',
            "child_concurrency must be a whole number from 1 to 10000, got True",
        ),
        (
            '{"foo": {"worker": "w", "rate_max_calls": 5, "rate_period": 1, "rate_scope": "all"}}',
            "rate_scope must be 'child' or 'global', got 'all'",
        ),
        (
            '{"foo": {"worker": "w", "rate_scope": "global"}}',
            "rate_scope 'global' needs rate_max_calls and rate_period",
        ),
        (
            '{"foo": {"worker": "w", "max_running": 0}}',
            "max_running must be a whole number >= 1 (tasks running at once on every host), got 0",
        ),
    ],
)
def test_bad_workers_name_setting_source_value_and_rule(tmp_path, value, message):
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, [f"asynctask_workers={value}"])
    text = str(info.value)
    assert "setting asynctask_workers (from --set asynctask_workers)" in text
    assert message in text


def test_bad_poll_interval_from_the_environment(tmp_path):
    with pytest.raises(
        ConfigurationError,
        match=r"asynctask_workers_poll_interval \(from environment variable ASYNCTASK_WORKERS_POLL_INTERVAL\) has a bad value 0: expected a whole number >= 1",
    ):
        load(tmp_path, environ={"ASYNCTASK_WORKERS_POLL_INTERVAL": "0"})


def test_unknown_setting_is_refused_listing_the_known(tmp_path):
    with pytest.raises(
        ConfigurationError,
        match="'asynctask_wrokers', which is not a setting; known settings: asynctask_transport",
    ):
        load(tmp_path, ["asynctask_wrokers={}"])
    with pytest.raises(ConfigurationError, match="file .* sets 'colour'"):
        load(tmp_path, toml='colour = "red"\n')


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read settings file"):
        load(tmp_path, toml="this is = = not toml")
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(config=tmp_path / "nope.toml", environ={})


def test_config_variable_names_the_file(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('asynctask_imports = ["json"]\n')
    settings = load_settings(environ={"ASYNCTASK_CONFIG": str(path)}, cwd=tmp_path / "none")
    assert settings.imports == ["json"]


def test_unknown_worker_lists_the_known_ones(tmp_path):
    settings = load(tmp_path, ['asynctask_workers={"some_queue": "doesntexist"}'])
    with pytest.raises(ConfigurationError) as info:
        settings.check_workers({"alpha": object(), "beta": object()})
    text = str(info.value)
    assert "'doesntexist', which does not exist; known workers: alpha, beta" in text
    assert "queue 'some_queue'" in text


def test_password_never_shown(tmp_path):
    settings = load(tmp_path, ["asynctask_transport=redis://:hunter2@127.0.0.1:6379"])
    assert "hunter2" not in settings.describe("asynctask_transport")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, ["asynctask_transport=3"])
    assert "3" in str(info.value)


def test_status_settings_and_their_defaults(tmp_path):
    settings = load(tmp_path)
    assert settings.state is None and settings.status_ttl == 86400.0
    entry = '{"foo": {"worker": "w", "track_status": false}}'
    settings = load(
        tmp_path,
        [f"asynctask_workers={entry}", "asynctask_status_ttl=60"],
        {"ASYNCTASK_STATE": "redis://127.0.0.1:6379/3"},
    )
    assert settings.workers["foo"] == WorkerConfig("w", track_status=False)
    assert settings.status_ttl == 60.0
    assert settings.state == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("asynctask_status_ttl=0", "expected a number of seconds from 1 to 315360000"),
        ('asynctask_status_ttl="day"', "expected a number of seconds"),
        ("asynctask_state=3", "expected a transport URI"),
        (
            'asynctask_workers={"foo": {"worker": "w", "track_status": "no"}}',
            "track_status must be true or false, got 'no'",
        ),
    ],
)
def test_bad_status_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigurationError, match=message):
        load(tmp_path, [override])


def test_the_state_store_password_is_never_shown(tmp_path):
    # Given asynctask_state naming a store with a password
    settings = load(tmp_path, ["asynctask_state=redis://:hunter2@127.0.0.1:6379/1"])
    # Then neither the settings nor a transport made from them show it
    assert "hunter2" not in settings.describe("asynctask_state")
    assert "***" in settings.describe("asynctask_state")
    from asynctask.api import get_transport
    from asynctask.settings import configure

    configure(settings)
    transport = get_transport("localmem:")
    assert transport.state_uri == "redis://:hunter2@127.0.0.1:6379/1"
    assert "hunter2" not in repr(transport)
