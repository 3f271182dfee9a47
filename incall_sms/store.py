"""A small SQLite database owner that keeps blocking I/O off the event loop.

Every statement runs on one dedicated worker thread (SQLite connections are not
shared across threads), so callers on the event loop only await. WAL journaling
keeps commits cheap and lets other processes read while one writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import sqlite3
from collections.abc import Callable
from typing import TypeVar

__all__ = ["SqliteDb"]

T = TypeVar("T")


class SqliteDb:
    """One SQLite file, one worker thread.

    Args:
        path: Database file; ``":memory:"`` for a private in-memory database.
        schema: SQL script run once when opened (``CREATE TABLE IF NOT EXISTS ...``).
        migrate: Run before ``schema`` to bring an existing file up to date (add columns).
    """

    def __init__(
        self,
        path: str | pathlib.Path,
        *,
        schema: str,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._executor.submit(self._open, schema, migrate).result()

    def _open(self, schema: str, migrate: Callable[[sqlite3.Connection], None] | None) -> None:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        if migrate is not None:
            migrate(conn)
        conn.executescript(schema)
        self._conn = conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._conn is not None
        return fn(self._conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` from synchronous code (CLI, tests); never on the loop."""
        return self._executor.submit(self._call, fn).result()

    def close(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if self._conn is None:
            return

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)


def transaction(conn: sqlite3.Connection) -> _Tx:
    """Return a context manager running its block in ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
    return _Tx(conn)


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
