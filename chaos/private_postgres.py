"""A PostgreSQL cluster of our own: ``initdb`` in a temp folder, ``pg_ctl``, trust auth.

The restart tests of ``make test``, ``make chaos`` and the many-hosts scenarios start
theirs here (``chaos.private`` says why never the shared one)::

    with private_postgres() as pg:      # database "test" on 127.0.0.1:<free port>
        uri = pg.uri(schema="x")         # pgsql://postgres@127.0.0.1:<port>/test?schema=x
        pg.restart(down=1.0)

PostgreSQL refuses to run as root, so as root its commands run as the ``postgres`` OS
user (``runuser``), in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chaos.private import Place, ServerUnavailable, with_query


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServerUnavailable(
            "PostgreSQL's initdb is not installed (looked in /usr/lib/postgresql/*/bin and PATH)"
        )
    return Path(initdb).parent


def _version_key(path: str) -> tuple[int, ...]:
    part = path.split("/")[4]
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class PrivatePostgres:
    """A PostgreSQL cluster of our own at ``place``: trust auth, superuser ``postgres``,
    database ``test``, listening on the place's address and a socket in its folder only."""

    user = "postgres"
    database = "test"

    def __init__(self, place: Place | None = None) -> None:
        self.place = place or Place()
        self.address = self.place.address
        self.bin = _pg_bin()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses root
            if shutil.which("runuser") is None:
                raise ServerUnavailable("running as root, and runuser is not installed")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-pg-"))
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.data = self.folder / "data"
        self.log = self.folder / "postgresql.log"
        self.port = self.place.port(5432)

    @property
    def conninfo(self) -> str:
        """libpq connection string of the database ``test``."""
        return f"host={self.address} port={self.port} user={self.user} dbname={self.database}"

    def uri(self, **options: str) -> str:
        """A pgsql transport URI of the database ``test``, with ``options`` as its query."""
        base = f"pgsql://{self.user}@{self.address}:{self.port}/{self.database}"
        return with_query(base, options)

    def _as_postgres(self, program: str, *args: str, timeout: float = 120) -> str:
        return self.place.run([*self.as_postgres, str(self.bin / program), *args], timeout)

    def _options(self) -> str:
        # fsync off: a machine crash is not among our faults, and the disk is shared
        return (
            f"-p {self.port} -c listen_addresses={self.address} -k {self.folder} -c fsync=off "
            "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=200"
        )

    def create(self) -> None:
        """initdb, start, and create the database ``test``."""
        self._as_postgres(
            "initdb", "-D", str(self.data), "--auth=trust", f"--username={self.user}",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        if self.place.namespace is not None:  # the hosts reach it from their subnet
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        self.start()
        import psycopg  # the chaos suite and the pgsql tests have it

        with psycopg.connect(
            f"host={self.address} port={self.port} user={self.user} dbname=postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
            "-w", "-t", "120", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``fast``: connections cut, a checkpoint; ``immediate``: a crash)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop")

    def restart(self, down: float = 0.0) -> None:
        """Stop it, stay down ``down`` s, start it again on the same port and files."""
        self.stop()
        time.sleep(down)
        self.start()

    def running(self) -> bool:
        """Whether its postmaster runs."""
        try:
            self._as_postgres("pg_ctl", "-D", str(self.data), "status", timeout=30)
        except RuntimeError:
            return False
        return True

    def version(self) -> str:
        """``PostgreSQL <version> (own server)``."""
        words = Place().run([str(self.bin / "postgres"), "--version"], 30).split()
        return f"PostgreSQL {words[2] if len(words) > 2 else '?'} (own server)"

    def remove(self) -> None:
        """Stop it if it runs (at once) and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if self.data.exists() and self.running():
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(place: Place | None = None) -> Iterator[PrivatePostgres]:
    """A started ``PrivatePostgres``; stopped and removed at the end, however it ends."""
    server = PrivatePostgres(place)
    try:
        server.create()
        yield server
    finally:
        server.remove()
