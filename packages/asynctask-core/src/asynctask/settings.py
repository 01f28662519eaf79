"""Settings: defaults, a TOML file, environment variables and ``--set``, validated at once.

Later sources win and replace a setting's whole value (no merging)::

    defaults < asynctask.toml (or --config / ASYNCTASK_CONFIG) < ASYNCTASK_<NAME> < --set

Every value is checked when the settings load; an error names the setting, the source,
the bad value and what is allowed. Worker names are checked against the registry by
``Settings.check_workers`` once plugins are loaded.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynctask.errors import ConfigurationError
from asynctask.uri import redact, remember_secret
from asynctask.validation import DEFAULT_MAX_PAYLOAD_BYTES, QUEUE_NAME_RULE, is_valid_queue_name

CONFIG_FILE = "asynctask.toml"
CONFIG_VARIABLE = "ASYNCTASK_CONFIG"


@dataclass(frozen=True)
class WorkerConfig:
    """One queue's worker: its name, how many children, and an optional rate limit."""

    worker: str
    concurrency: int = 1
    rate_max_calls: int | None = None
    rate_period: float | None = None
    #: tasks a child reserves ahead; None means the worker's own ``prefetch``
    prefetch: int | None = None
    #: tasks a child runs at once; None means the worker's own ``child_concurrency``
    child_concurrency: int | None = None
    #: "child": the rate is split between this supervisor's children, each counting its
    #: own; "global": one budget for every child on every host (``asynctask.limits``)
    rate_scope: str = "child"
    #: tasks of the queue running at once across every host; None: no cap
    max_running: int | None = None
    #: keep task statuses (``asynctask.status``); None means the worker's own ``track_status``
    track_status: bool | None = None


def default_transport_uri() -> str:
    """The embedded default: the filesys transport in the per-user data folder."""
    import platformdirs

    return "filesys:" + str(Path(platformdirs.user_data_dir("asynctask")) / "queues")


class _Invalid(ValueError):
    """A value that breaks a setting's rule; the message says what is allowed."""


def _transport(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or ":" not in value:
        raise _Invalid("expected a transport URI such as 'filesys:/path', 'redis://host'")
    redact(value)  # learns its password, to hide it wherever a driver may quote it
    return value


def _status_ttl(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 1 <= value <= 10 * 365 * 86400
    ):
        raise _Invalid("expected a number of seconds from 1 to 315360000 (default 86400, a day)")
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("expected a whole number >= 1")
    return value


def _payload_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 64:
        raise _Invalid("expected a whole number of bytes >= 64 (default 1048576, 1 MiB)")
    return value


def _signing_key(value: Any) -> tuple[str, ...]:
    # Shown only as *** (see SECRET_SETTINGS), so the message never repeats the value.
    if value is None or value == "" or value == []:
        return ()
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) >= 16 for k in keys):
        raise _Invalid(
            "expected a key of at least 16 characters, or a list of them (the first signs, "
            "all verify)"
        )
    for key in keys:
        remember_secret(key)
    return tuple(keys)


def _port(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _Invalid("expected a TCP port number (1-65535) or null")
    return value


def _web_token(value: Any) -> str | None:
    # Shown only as *** (see SECRET_SETTINGS), so the message never repeats the value.
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise _Invalid("expected a token of at least 16 characters, or null")
    remember_secret(value)
    return value


def _imports(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid("expected a list of module names")
    return list(value)


def _worker_config(queue: str, value: Any) -> WorkerConfig | None:
    where = f"queue {queue!r}"
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return WorkerConfig(value)
    if not isinstance(value, Mapping):
        raise _Invalid(
            f"{where}: expected a worker name, an object {{worker, concurrency, "
            f"rate_max_calls, rate_period, rate_scope, max_running}}, or null/false to "
            f"disable, got {value!r}"
        )
    allowed = {
        "worker",
        "concurrency",
        "rate_max_calls",
        "rate_period",
        "prefetch",
        "child_concurrency",
        "rate_scope",
        "max_running",
        "track_status",
    }
    unknown = set(value) - allowed
    if unknown:
        raise _Invalid(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    worker = value.get("worker")
    if not isinstance(worker, str) or not worker:
        raise _Invalid(f"{where}: 'worker' must name a worker, got {worker!r}")
    concurrency = value.get("concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise _Invalid(f"{where}: concurrency must be a whole number >= 1, got {concurrency!r}")
    calls = value.get("rate_max_calls")
    period = value.get("rate_period")
    if (calls is None) != (period is None):
        raise _Invalid(f"{where}: give both rate_max_calls and rate_period, or neither")
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
        raise _Invalid(f"{where}: rate_max_calls must be a whole number >= 1, got {calls!r}")
    if period is not None and (
        isinstance(period, bool) or not isinstance(period, int | float) or not period > 0
    ):
        raise _Invalid(f"{where}: rate_period must be a number of seconds > 0, got {period!r}")
    prefetch = value.get("prefetch")
    if prefetch is not None and (
        isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 1000
    ):
        raise _Invalid(f"{where}: prefetch must be a whole number from 1 to 1000, got {prefetch!r}")
    child_concurrency = value.get("child_concurrency")
    if child_concurrency is not None and (
        isinstance(child_concurrency, bool)
        or not isinstance(child_concurrency, int)
        or not 1 <= child_concurrency <= 10_000
    ):
        raise _Invalid(
            f"{where}: child_concurrency must be a whole number from 1 to 10000, "
            f"got {child_concurrency!r}"
        )
    scope = value.get("rate_scope", "child")
    if scope not in ("child", "global"):
        raise _Invalid(f"{where}: rate_scope must be 'child' or 'global', got {scope!r}")
    if scope == "global" and calls is None:
        raise _Invalid(f"{where}: rate_scope 'global' needs rate_max_calls and rate_period")
    max_running = value.get("max_running")
    if max_running is not None and (
        isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1
    ):
        raise _Invalid(
            f"{where}: max_running must be a whole number >= 1 (tasks running at once on "
            f"every host), got {max_running!r}"
        )
    track_status = value.get("track_status")
    if track_status is not None and not isinstance(track_status, bool):
        raise _Invalid(f"{where}: track_status must be true or false, got {track_status!r}")
    return WorkerConfig(
        worker,
        concurrency,
        calls,
        None if period is None else float(period),
        prefetch,
        child_concurrency,
        scope,
        max_running,
        track_status,
    )


def _workers(value: Any) -> dict[str, WorkerConfig | None]:
    if not isinstance(value, Mapping):
        raise _Invalid("expected an object mapping queue names to workers")
    result: dict[str, WorkerConfig | None] = {}
    for queue, config in value.items():
        if not is_valid_queue_name(queue):
            raise _Invalid(f"{queue!r} is not a valid queue name: use {QUEUE_NAME_RULE}")
        result[queue] = _worker_config(queue, config)
    return result


def _schedules(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _Invalid("expected a list of schedule objects")
    from asynctask.schedules import ScheduleError, check_schedules

    try:
        return check_schedules([dict(v) for v in value])
    except ScheduleError as exc:
        raise _Invalid(str(exc)) from exc


@dataclass(frozen=True)
class Setting:
    """One setting: its default, its check, and a line of help."""

    name: str
    default: Callable[[], Any]
    check: Callable[[Any], Any]
    help: str


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting(
            "asynctask_transport",
            lambda: None,
            _transport,
            "transport URI (default: filesys in the per-user data folder)",
        ),
        Setting(
            "asynctask_workers",
            dict,
            _workers,
            "queue -> worker name, or {worker, concurrency, rate_max_calls, rate_period, "
            "prefetch, child_concurrency, rate_scope, max_running, track_status}, "
            "or null/false",
        ),
        Setting("asynctask_imports", list, _imports, "modules to import for their workers"),
        Setting("asynctask_scheduled_workers", list, _schedules, "cron-like schedules (a list)"),
        Setting(
            "asynctask_workers_poll_interval",
            lambda: 500,
            _positive_int,
            "ms; the fallback poll when a backend cannot wake workers",
        ),
        Setting(
            "asynctask_workers_check_child_interval",
            lambda: 1000,
            _positive_int,
            "ms between supervisor checks of its children",
        ),
        Setting(
            "asynctask_state",
            lambda: None,
            _transport,
            "URI of the transport keeping task statuses, results and cancels (default: the "
            "transport itself; required for AMQP's status calls)",
        ),
        Setting(
            "asynctask_status_ttl",
            lambda: 86400,
            _status_ttl,
            "seconds a final task status (and its result) is kept",
        ),
        Setting(
            "asynctask_max_payload_bytes",
            lambda: DEFAULT_MAX_PAYLOAD_BYTES,
            _payload_limit,
            "largest payload, as JSON text; bigger ones are refused at submit and go to the "
            "failed store when met in a queue",
        ),
        Setting(
            "asynctask_signing_key",
            lambda: None,
            _signing_key,
            "HMAC-SHA256 key, or a list of keys (the first signs, all verify); shown as ***",
        ),
        Setting(
            "asynctask_metrics_port",
            lambda: None,
            _port,
            "Prometheus port of asynctask workers (needs asynctask-prometheus)",
        ),
        Setting(
            "asynctask_web_token",
            lambda: None,
            _web_token,
            "token of asynctask web (needs asynctask-web) when it listens beyond loopback; "
            "shown as ***",
        ),
    ]
}

#: settings whose values are never shown, in any output
SECRET_SETTINGS = frozenset({"asynctask_signing_key", "asynctask_web_token"})


@dataclass
class Settings:
    """The effective settings and where each value came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    #: the raw (unchecked) values, so child processes can be given the same settings
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        """The transport URI to use (the embedded default when none is set)."""
        uri: str | None = self.values["asynctask_transport"]
        return uri or default_transport_uri()

    @property
    def workers(self) -> dict[str, WorkerConfig | None]:
        """Configured queues, ``None`` where disabled."""
        value: dict[str, WorkerConfig | None] = self.values["asynctask_workers"]
        return value

    @property
    def imports(self) -> list[str]:
        """Modules to import for their workers."""
        value: list[str] = self.values["asynctask_imports"]
        return value

    @property
    def schedules(self) -> list[dict[str, Any]]:
        """The checked schedule entries."""
        value: list[dict[str, Any]] = self.values["asynctask_scheduled_workers"]
        return value

    @property
    def poll_interval(self) -> float:
        """Seconds of the fallback poll."""
        return float(self.values["asynctask_workers_poll_interval"]) / 1000

    @property
    def check_child_interval(self) -> float:
        """Seconds between supervisor checks."""
        return float(self.values["asynctask_workers_check_child_interval"]) / 1000

    @property
    def state(self) -> str | None:
        """The URI of the transport keeping task statuses, or None: the transport itself."""
        value: str | None = self.values["asynctask_state"]
        return value

    @property
    def status_ttl(self) -> float:
        """Seconds a final task status is kept."""
        return float(self.values["asynctask_status_ttl"])

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload, as JSON text, in bytes."""
        return int(self.values["asynctask_max_payload_bytes"])

    @property
    def signing_keys(self) -> tuple[str, ...]:
        """The signing keys, the one that signs first; empty when tasks are not signed."""
        keys: tuple[str, ...] = self.values["asynctask_signing_key"]
        return keys

    @property
    def metrics_port(self) -> int | None:
        """The port ``asynctask workers`` serves metrics on, if any."""
        value: int | None = self.values["asynctask_metrics_port"]
        return value

    @property
    def web_token(self) -> str | None:
        """The token ``asynctask web`` asks for, if any."""
        value: str | None = self.values["asynctask_web_token"]
        return value

    def check_workers(
        self, known: Mapping[str, object], explain: Callable[[str], str] | None = None
    ) -> None:
        """Refuse worker names that nobody registered, listing the known ones.

        ``explain(name)`` may add why a name is unknown (a plugin that failed to load).
        """
        names = sorted(known) or ["none"]
        for queue, config in self.workers.items():
            if config is not None and config.worker not in known:
                why = explain(config.worker) if explain else ""
                raise ConfigurationError(
                    f"setting asynctask_workers (from {self.sources['asynctask_workers']}): "
                    f"queue {queue!r} names the worker {config.worker!r}, which does not "
                    f"exist{why}; known workers: {', '.join(names)}"
                )
        for index, entry in enumerate(self.schedules, 1):
            worker = entry.get("worker")
            if worker is not None and worker not in known:
                why = explain(worker) if explain else ""
                raise ConfigurationError(
                    f"setting asynctask_scheduled_workers (from "
                    f"{self.sources['asynctask_scheduled_workers']}): entry #{index} names "
                    f"the worker {worker!r}, which does not exist{why}; known workers: "
                    f"{', '.join(names)}"
                )

    def describe(self, name: str) -> str:
        """A setting's value as text for people, with any password hidden."""
        value = self.raw.get(name, self.values[name])
        if name in SECRET_SETTINGS:
            return "***" if self.values[name] else "null"
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        return redact(text)


def _parse_text(text: str, source: str) -> Any:
    """A value from an environment variable or ``--set``: JSON, or else a plain string.

    A value that starts like a JSON object or list (``{``, ``[``) but is not valid JSON
    is an error that says where the JSON breaks, not a string read as a bad value.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("{", "["):
            raise ConfigurationError(
                f"{source}: the value is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno} (character {exc.pos}): {redact(text)[:120]!r}"
            ) from exc
        return text


def _check(name: str, value: Any, source: str) -> Any:
    try:
        return SETTINGS[name].check(value)
    except _Invalid as exc:
        shown = (
            redact(json.dumps(value, default=str)) if not isinstance(value, str) else redact(value)
        )
        if name in SECRET_SETTINGS:
            shown = "***"
        raise ConfigurationError(
            f"setting {name} (from {source}) has a bad value {shown}: {exc}"
        ) from exc
    except ConfigurationError as exc:
        raise ConfigurationError(f"setting {name} (from {source}): {exc}") from exc


def _unknown(name: str, source: str) -> ConfigurationError:
    return ConfigurationError(
        f"{source} sets {name!r}, which is not a setting; known settings: {', '.join(SETTINGS)}"
    )


def load_settings(
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Read every source and return checked settings; raise ``ConfigurationError``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {
        name: (s.default(), "default") for name, s in SETTINGS.items()
    }

    path: Path | None = None
    if config is not None:
        path = Path(config)
    elif environ.get(CONFIG_VARIABLE):
        path = Path(environ[CONFIG_VARIABLE])
    else:
        candidate = Path(cwd or os.getcwd()) / CONFIG_FILE
        path = candidate if candidate.is_file() else None
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(f"settings file {str(path)!r} does not exist") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read settings file {str(path)!r}: {exc}") from exc
        source = f"file {str(path)!r}"
        for name, value in data.items():
            if name not in SETTINGS:
                raise _unknown(name, source)
            raw[name] = (value, source)

    for name in SETTINGS:
        variable = name.upper()
        if variable in environ:
            where = f"environment variable {variable}"
            raw[name] = (_parse_text(environ[variable], where), where)

    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigurationError(f"--set {item!r}: expected NAME=VALUE")
        if name not in SETTINGS:
            raise _unknown(name, f"--set {name}")
        raw[name] = (_parse_text(text, f"--set {name}"), f"--set {name}")

    settings = Settings()
    for name, (value, source) in raw.items():
        settings.values[name] = _check(name, value, source)
        settings.sources[name] = source
        settings.raw[name] = value
    return settings


def settings_from_raw(raw: Mapping[str, Any], sources: Mapping[str, str]) -> Settings:
    """Rebuild checked settings from ``Settings.raw`` (how a child gets its parent's)."""
    settings = Settings()
    for name in SETTINGS:
        value, source = raw[name], sources.get(name, "parent process")
        settings.values[name] = _check(name, value, source)
        settings.sources[name] = source
        settings.raw[name] = value
    return settings


_active: Settings | None = None
_active_lock = threading.Lock()


def get_settings() -> Settings:
    """The settings of this process: those given to ``configure``, else loaded once."""
    global _active
    with _active_lock:
        if _active is None:
            _active = load_settings()
        return _active


def configure(settings: Settings | None) -> None:
    """Make ``settings`` the settings of this process (``None``: load again when asked)."""
    global _active
    with _active_lock:
        _active = settings
