"""The opt-out list: numbers that replied STOP get no SMS until they reply START.

Keywords follow Twilio's defaults (case-insensitive, the whole message trimmed).
"""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Literal, Protocol

from incall_sms.store import SqliteDb

__all__ = ["OPT_IN_KEYWORDS", "OPT_OUT_KEYWORDS", "OptOutStore", "SqliteOptOutStore", "classify_keyword"]

OPT_OUT_KEYWORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"})
OPT_IN_KEYWORDS = frozenset({"start", "yes", "unstop", "optin"})
HELP_KEYWORDS = frozenset({"help", "info"})


def classify_keyword(body: str) -> Literal["opt_out", "opt_in", "help"] | None:
    """Return what an inbound message body means as a keyword, or ``None``."""
    word = "".join(ch for ch in body.strip().lower() if ch.isalnum())
    if word in OPT_OUT_KEYWORDS:
        return "opt_out"
    if word in OPT_IN_KEYWORDS:
        return "opt_in"
    if word in HELP_KEYWORDS:
        return "help"
    return None


class OptOutStore(Protocol):
    """Where opt-outs live (SQLite by default; Redis in multi-worker mode)."""

    async def is_opted_out(self, number: str) -> bool:
        """Whether ``number`` (E.164) must not be texted."""
        ...

    async def opt_out(self, number: str, *, now: float) -> None:
        """Record a STOP from ``number``."""
        ...

    async def opt_in(self, number: str) -> None:
        """Record a START from ``number``."""
        ...


class SqliteOptOutStore:
    """Opt-out list in a SQLite file.

    Args:
        path: Database file, ``":memory:"`` for tests.
    """

    def __init__(self, path: str | pathlib.Path = ":memory:") -> None:
        self._db = SqliteDb(
            path, schema="CREATE TABLE IF NOT EXISTS optouts (number TEXT PRIMARY KEY, since REAL NOT NULL);"
        )

    async def is_opted_out(self, number: str) -> bool:
        """Whether ``number`` replied STOP and not START since."""

        def _q(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM optouts WHERE number = ?", (number,)).fetchone() is not None

        return await self._db.run(_q)

    async def opt_out(self, number: str, *, now: float) -> None:
        """Add ``number`` to the list."""
        await self._db.run(
            lambda c: c.execute("INSERT OR IGNORE INTO optouts (number, since) VALUES (?, ?)", (number, now))
        )

    async def opt_in(self, number: str) -> None:
        """Remove ``number`` from the list."""
        await self._db.run(lambda c: c.execute("DELETE FROM optouts WHERE number = ?", (number,)))

    def close(self) -> None:
        """Close the database."""
        self._db.close()
