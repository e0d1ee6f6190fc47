"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, ``pg_ctl
start`` on a free loopback port (as an unprivileged user when the tests run as root, which
PostgreSQL refuses), one fresh database per catalog, stopped and deleted at the end."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "cdi"
"""The superuser ``initdb`` creates (trust authentication on loopback: a throwaway server)."""


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def find_bin() -> Path:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/N/bin``."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(on_path).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if not versions:
        raise Unavailable("PostgreSQL is not installed (no initdb; `apt-get install postgresql`)")
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server of its own folder; :meth:`database` makes catalogs."""

    def __init__(self) -> None:
        self.bin = find_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="cdi-pg-"))  # not under pytest's 0700 root
        self.port = _free_port()
        self._runas: list[str] = []
        if os.geteuid() == 0:
            owner = "postgres" if _has_user("postgres") else "nobody"
            shutil.chown(self.folder, owner, owner if _has_group(owner) else None)
            self.folder.chmod(0o700)
            self._runas = ["runuser", "-u", owner, "--"]
        self.data = self.folder / "data"
        self._count = 0
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.folder / "log"), "-o", options
        )

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._runas, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120, cwd=self.folder
        )
        if done.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise Unavailable(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}{tail}")

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """URI of a new, empty database (a catalog of its own)."""
        import asyncpg

        self._count += 1
        name = f"catalog_{self._count}"

        async def create() -> None:
            conn = await asyncpg.connect(self.uri())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.uri(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def catalog_of(request) -> str | None:
    """The catalog a server fixture's parameter asks for (``tests/conftest.py``: ``catalogs``):
    a new database of the session's PostgreSQL server, or None (the SQLite default)."""
    if getattr(request, "param", "sqlite") != "postgresql":
        return None
    return request.getfixturevalue("postgres").database()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
