"""The embedded local provider: no network, messages land in a SQLite "phone inbox".

Used by the local simulation and tests. It behaves like a provider: it assigns
SIDs, refuses opted-out, landline and invalid numbers with Twilio's error codes,
and can be told to fail the next requests (rate limits, timeouts) to exercise the
dispatcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping

from incall_sms.errors import SendError, SendErrorKind
from incall_sms.providers.base import OutboundSms, ProviderReceipt
from incall_sms.segments import count_segments
from incall_sms.store import SqliteDb

__all__ = ["BEHAVIOURS", "InboxMessage", "LocalProvider"]

#: Per-destination behaviours: the error a send there raises, as Twilio answers (``None``: accepted).
BEHAVIOURS: dict[str, Callable[[], SendError] | None] = {
    "accept": None,
    "landline": lambda: SendError("not_mobile", kind=SendErrorKind.PERMANENT, code=21614, status=400),
    "opted_out": lambda: SendError("opted_out", kind=SendErrorKind.PERMANENT, code=21610, status=400),
    "invalid": lambda: SendError("invalid_number", kind=SendErrorKind.PERMANENT, code=21211, status=400),
    # no answer in time: the request may or may not have been performed
    "timeout": lambda: SendError("timeout", kind=SendErrorKind.AMBIGUOUS),
    "server_error": lambda: SendError("server_error", kind=SendErrorKind.AMBIGUOUS, status=500),
    "rate_limited": lambda: SendError("rate_limited", kind=SendErrorKind.RETRYABLE, code=20429, status=429),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    sid TEXT PRIMARY KEY,
    to_number TEXT NOT NULL,
    from_number TEXT,
    body TEXT NOT NULL,
    media_urls TEXT NOT NULL DEFAULT '',
    segments INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboxMessage:
    """A message in the simulated phone's inbox."""

    sid: str
    to_number: str
    from_number: str | None
    body: str
    segments: int
    encoding: str
    created_at: float


class LocalProvider:
    """A provider that stores messages locally.

    Args:
        path: SQLite file of the inbox (``":memory:"`` by default).
        landlines: Numbers that behave like landlines (error 21614).
        opted_out: Numbers that replied STOP at the carrier (error 21610).
        clock: ``time.time``-like callable for timestamps.
        latency: Seconds each send takes (the simulation uses a realistic 0.6 s).
        behaviours: What a send to a given number does, as Twilio would answer it (see
            :data:`BEHAVIOURS`); numbers not listed are accepted.
    """

    name = "local"

    def __init__(
        self,
        path: str | pathlib.Path = ":memory:",
        *,
        landlines: frozenset[str] = frozenset(),
        opted_out: frozenset[str] = frozenset(),
        clock: object = time.time,
        latency: float = 0.0,
        behaviours: Mapping[str, str] | None = None,
    ) -> None:
        self._db = SqliteDb(path, schema=_SCHEMA)
        self._landlines = set(landlines)
        self._opted_out = set(opted_out)
        self._scripted: list[SendError] = []
        self._clock = clock
        self._latency = latency
        self._behaviours = dict(behaviours or {})
        unknown = sorted(set(self._behaviours.values()) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"unknown provider behaviour(s) {', '.join(unknown)}; known: {', '.join(BEHAVIOURS)}")
        self.requests = 0

    def fail_next(self, *errors: SendError) -> None:
        """Make the next ``len(errors)`` send requests raise these errors, in order."""
        self._scripted.extend(errors)

    async def send(self, sms: OutboundSms) -> ProviderReceipt:
        """Store the message in the inbox, or refuse it like Twilio would.

        Raises:
            SendError: Scripted failures first; then the destination's behaviour (``opted_out``
                21610, ``not_mobile`` 21614, ``invalid_number`` 21211, ``timeout``, ...).
        """
        self.requests += 1
        if self._latency:
            await asyncio.sleep(self._latency)
        if self._scripted:
            raise self._scripted.pop(0)
        behaviour = self._behaviours.get(sms.to)
        if sms.to in self._opted_out:
            behaviour = "opted_out"
        elif sms.to in self._landlines:
            behaviour = "landline"
        error = BEHAVIOURS.get(behaviour or "accept")
        if error is not None:
            raise error()
        info = count_segments(sms.body)
        sid = f"SM{secrets.token_hex(16)}"
        now = float(self._clock())  # type: ignore[operator]
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, sms.to, sms.from_, sms.body, "\n".join(sms.media_urls), info.segments, info.encoding, now),
            )
        )
        return ProviderReceipt(sid=sid, status="queued", segments=info.segments)

    async def find_sent(self, sms: OutboundSms, *, since: float) -> list[ProviderReceipt]:
        """Stored messages with the same destination, sender and body created at or after ``since``, oldest first."""

        def _q(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                "SELECT sid, segments, created_at FROM inbox WHERE to_number = ? AND body = ? AND created_at >= ? "
                "AND from_number IS ? ORDER BY created_at, rowid",
                (sms.to, sms.body, since, sms.from_),
            ).fetchall()

        rows = await self._db.run(_q)
        return [ProviderReceipt(sid=r["sid"], status="queued", segments=r["segments"], created_at=r["created_at"])
                for r in rows]

    async def inbox(self, to: str | None = None) -> list[InboxMessage]:
        """Messages stored so far, oldest first (all, or those to ``to``)."""

        def _q(conn: sqlite3.Connection) -> list[InboxMessage]:
            sql = "SELECT sid, to_number, from_number, body, segments, encoding, created_at FROM inbox"
            args: tuple[str, ...] = ()
            if to is not None:
                sql += " WHERE to_number = ?"
                args = (to,)
            rows = conn.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
            return [InboxMessage(**dict(r)) for r in rows]

        return await self._db.run(_q)

    async def warm_up(self) -> None:
        """Nothing to prepare."""

    async def aclose(self) -> None:
        """Close the inbox database."""
        self._db.close()
