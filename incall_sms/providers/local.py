"""The embedded local provider: no network, messages land in a SQLite "phone inbox".

Used by the local simulation and tests. It behaves like a provider: it assigns
SIDs, refuses opted-out, landline and invalid numbers with Twilio's error codes,
and can be told to fail the next requests (rate limits, timeouts) to exercise the
dispatcher.

WhatsApp messages land in the same inbox (``channel`` says which); a Content template message
is stored with its SID and variables, its ``body`` the template's text when the provider was
given it (``content_templates``), else a short description.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping

from incall_sms.errors import SendError, SendErrorKind
from incall_sms.providers.base import OutboundSms, ProviderReceipt
from incall_sms.segments import count_segments
from incall_sms.store import SqliteDb

__all__ = ["BEHAVIOURS", "InboxMessage", "LocalProvider", "render_content"]

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
    created_at REAL NOT NULL,
    channel TEXT NOT NULL DEFAULT 'sms',
    content_sid TEXT,
    content_variables TEXT
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the WhatsApp columns to an inbox file of an earlier version."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(inbox)")}
    if not columns:
        return
    for column, kind in (("channel", "TEXT NOT NULL DEFAULT 'sms'"), ("content_sid", "TEXT"),
                         ("content_variables", "TEXT")):
        if column not in columns:
            conn.execute(f"ALTER TABLE inbox ADD COLUMN {column} {kind}")


def render_content(template: str, variables: str | None) -> str:
    """A Content template's text with its ``{{1}}``-style placeholders replaced from ``variables`` (JSON)."""
    values = json.loads(variables) if variables else {}
    for name, value in values.items():
        template = template.replace("{{" + str(name) + "}}", str(value))
    return template


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
    channel: str = "sms"
    content_sid: str | None = None


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
        content_templates: Texts of Content templates by SID (``{{1}}`` placeholders), used as
            the stored body of template messages.
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
        content_templates: Mapping[str, str] | None = None,
    ) -> None:
        self._db = SqliteDb(path, schema=_SCHEMA, migrate=_migrate)
        self._content_templates = dict(content_templates or {})
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
        body = sms.body
        if sms.content_sid:
            template = self._content_templates.get(sms.content_sid)
            body = (render_content(template, sms.content_variables) if template is not None
                    else f"[template {sms.content_sid}] {sms.content_variables or '{}'}")
        if sms.channel == "whatsapp":
            segments, encoding = 1, "WhatsApp"
        else:
            info = count_segments(body)
            segments, encoding = info.segments, info.encoding
        sid = f"SM{secrets.token_hex(16)}"
        now = float(self._clock())  # type: ignore[operator]
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, sms.to, sms.from_, body, "\n".join(sms.media_urls), segments, encoding, now, sms.channel,
                 sms.content_sid, sms.content_variables),
            )
        )
        return ProviderReceipt(sid=sid, status="queued", segments=segments)

    async def find_sent(self, sms: OutboundSms, *, since: float) -> list[ProviderReceipt]:
        """Messages like ``sms`` (destination, sender, channel, body or template) since ``since``, oldest first."""

        def _q(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            if sms.content_sid:
                same, args = "content_sid = ? AND content_variables IS ?", (sms.content_sid, sms.content_variables)
            else:
                same, args = "body = ? AND content_sid IS NULL", (sms.body,)
            return conn.execute(
                f"SELECT sid, segments, created_at FROM inbox WHERE to_number = ? AND {same} AND created_at >= ? "
                "AND from_number IS ? AND channel = ? ORDER BY created_at, rowid",
                (sms.to, *args, since, sms.from_, sms.channel),
            ).fetchall()

        rows = await self._db.run(_q)
        return [ProviderReceipt(sid=r["sid"], status="queued", segments=r["segments"], created_at=r["created_at"])
                for r in rows]

    async def inbox(self, to: str | None = None) -> list[InboxMessage]:
        """Messages stored so far, oldest first (all, or those to ``to``)."""

        def _q(conn: sqlite3.Connection) -> list[InboxMessage]:
            sql = ("SELECT sid, to_number, from_number, body, segments, encoding, created_at, channel, content_sid "
                   "FROM inbox")
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
