"""The durable outbox: one row per idempotency key; a key is sent at most once, ever.

States of a row (``status``)::

    claim --+--> pending --request--> sending --provider accepted--------------------------> accepted
            |       |                    |                                                      ^
            |       |                    +--timeout/5xx/dropped--> ambiguous --lookup finds ----+
            |       |                                                 |  |     this attempt's message
            |       |                                                 |  +--lookup: none, resend left--> sending
            |       |                                                 +--caller told "couldn't confirm"--> unconfirmed
            |       +--recovery: older than the window (also sending/ambiguous rows)--> expired
            +--refused before the provider, or permanent error--> failed | skipped

    accepted, unconfirmed and expired are terminal; failed and skipped sent nothing, so a
    re-fire of the same key replaces them.

* ``pending``: claimed, no request written yet. Recovery sends it while it is younger
  than the recovery window; older, it becomes ``expired``.
* ``sending``: a request may be on the wire. After a crash or a cancelled call this is
  *maybe sent*: recovery asks the provider before any resend.
* ``ambiguous``: a request may have created the message and the provider could not
  confirm either way yet; nobody was told an outcome. Recovery keeps asking (within the
  window); it resends only when the provider positively has no such message.
* ``accepted``: the provider accepted the message; ``sid`` holds its id (unique across
  rows: a message found by a lookup is claimed by exactly one row).
* ``unconfirmed``: the caller was told the text could not be confirmed. Terminal: never
  resent, whatever a later lookup would say.
* ``failed``: certainly not sent (permanent error, or retryable errors exhausted);
  ``skipped``: not sent on purpose (missing variable, caps, opt-out). Neither blocks the
  key: a later firing with the same key (same call, action and turn) replaces the row.
* ``expired``: closed by recovery because it was too old to be useful; never sent.

Delivery progress from status callbacks lives in ``delivery`` (``queued``,
``sent``, ``delivered``, ``undelivered``, ``failed``) and only moves forward.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import pathlib
import sqlite3
from typing import Any

from incall_sms.store import SqliteDb, transaction

__all__ = ["ClaimOutcome", "Outbox", "OutboxRecord", "SidTakenError", "idempotency_key"]

_log = logging.getLogger(__name__)

def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an outbox file of an earlier version up to date (run before the schema script)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if not columns:
        return
    if "first_attempt_at" not in columns:
        conn.execute("ALTER TABLE outbox ADD COLUMN first_attempt_at REAL")
    conn.execute("DROP INDEX IF EXISTS outbox_sid")  # replaced by the unique index


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    action TEXT NOT NULL,
    turn INTEGER NOT NULL,
    status TEXT NOT NULL,
    to_number TEXT,
    from_number TEXT,
    messaging_service_sid TEXT,
    body TEXT,
    media_urls TEXT NOT NULL DEFAULT '',
    encoding TEXT,
    segments INTEGER,
    sid TEXT,
    reason TEXT,
    error_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    delivery TEXT,
    delivery_error INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_call ON outbox(call_id, action);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status);
CREATE INDEX IF NOT EXISTS outbox_destination ON outbox(to_number, created_at);
"""

_SID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS outbox_sid_unique ON outbox(sid) WHERE sid IS NOT NULL"


def _ensure_sid_index(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(_SID_INDEX)
    except sqlite3.IntegrityError:  # an old file with one SID on two rows: keep it usable
        _log.warning("outbox has a provider SID on several rows; SID uniqueness is checked per claim only")


#: Statuses that count as "this action has texted (or may have) in this call".
ACTIVE_STATUSES = ("pending", "sending", "accepted", "ambiguous", "unconfirmed")
#: Statuses recovery looks at.
UNFINISHED_STATUSES = ("pending", "sending", "ambiguous")
#: Statuses of rows that certainly sent nothing: a new claim of the same key replaces them.
REPLACEABLE_STATUSES = ("failed", "skipped")

_DELIVERY_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "receiving": 3,
    "received": 4,
    "delivered": 4,
    "read": 5,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
}
_TERMINAL_DELIVERY = frozenset({"delivered", "read", "undelivered", "failed", "canceled"})


class SidTakenError(Exception):
    """The provider SID being recorded already belongs to another outbox row."""


def idempotency_key(call_id: str, action: str, turn: int) -> str:
    """Key of one send: call id + action + the turn that triggered it."""
    return f"{call_id}:{action}:{turn}"


class ClaimOutcome(enum.Enum):
    """Result of :meth:`Outbox.claim`."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    LIMIT_REACHED = "limit_reached"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRecord:
    """One outbox row. Holds the number and body: never log it whole (use ``masked()``)."""

    key: str
    call_id: str
    action: str
    turn: int
    status: str
    to_number: str | None = None
    from_number: str | None = None
    messaging_service_sid: str | None = None
    body: str | None = None
    media_urls: tuple[str, ...] = ()
    encoding: str | None = None
    segments: int | None = None
    sid: str | None = None
    reason: str | None = None
    error_code: int | None = None
    attempts: int = 0
    first_attempt_at: float | None = None
    delivery: str | None = None
    delivery_error: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> OutboxRecord:
        data: dict[str, Any] = dict(row)
        urls = data.pop("media_urls") or ""
        return cls(media_urls=tuple(u for u in urls.split("\n") if u), **data)

    def __repr__(self) -> str:  # never leak number or body through a repr in a log line
        from incall_sms.phone import mask

        return (
            f"OutboxRecord(key={self.key!r}, status={self.status!r}, to={mask(self.to_number)}, "
            f"sid={self.sid!r}, reason={self.reason!r}, delivery={self.delivery!r})"
        )


class Outbox:
    """SQLite-backed outbox.

    Args:
        path: Database file (shared by restarts of the same worker); ``":memory:"`` for tests.
    """

    def __init__(self, path: str | pathlib.Path = ":memory:") -> None:
        self._db = SqliteDb(path, schema=_SCHEMA, migrate=_migrate)
        self._db.run_sync(_ensure_sid_index)

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    async def claim(
        self,
        record: OutboxRecord,
        *,
        once_per_call: bool,
        max_per_call: int,
        max_per_destination: int | None = None,
        window: float = 24 * 3600,
    ) -> tuple[ClaimOutcome, OutboxRecord]:
        """Atomically insert ``record`` unless it would duplicate or exceed a cap.

        A row already standing for the key blocks the claim unless it is ``failed`` or
        ``skipped`` (nothing was sent): then the new record replaces it.

        Args:
            record: The new row (status ``pending`` or ``skipped``/``failed`` for
                sends refused before the provider).
            once_per_call: Refuse when the call already has an active row for the action.
            max_per_call: Refuse when the call already has this many active rows.
            max_per_destination: Refuse when the destination already received this many texts
                (active rows, any call) within ``window`` seconds; ``None``: no cap.
            window: Seconds the destination cap looks back.

        Returns:
            The outcome and the row now standing for the key (the existing row on
            ``DUPLICATE``).
        """

        def _claim(conn: sqlite3.Connection) -> tuple[ClaimOutcome, OutboxRecord]:
            with transaction(conn):
                existing = conn.execute("SELECT * FROM outbox WHERE key = ?", (record.key,)).fetchone()
                if existing is not None and existing["status"] not in REPLACEABLE_STATUSES:
                    return ClaimOutcome.DUPLICATE, OutboxRecord._from_row(existing)
                if record.status == "pending":
                    marks = ",".join("?" * len(ACTIVE_STATUSES))
                    if once_per_call:
                        row = conn.execute(
                            f"SELECT * FROM outbox WHERE call_id = ? AND action = ? AND status IN ({marks}) "
                            "ORDER BY created_at LIMIT 1",
                            (record.call_id, record.action, *ACTIVE_STATUSES),
                        ).fetchone()
                        if row is not None:
                            return ClaimOutcome.DUPLICATE, OutboxRecord._from_row(row)
                    (count,) = conn.execute(
                        f"SELECT COUNT(*) FROM outbox WHERE call_id = ? AND status IN ({marks})",
                        (record.call_id, *ACTIVE_STATUSES),
                    ).fetchone()
                    if count >= max_per_call:
                        return ClaimOutcome.LIMIT_REACHED, record
                    if max_per_destination is not None and record.to_number:
                        (sent_to,) = conn.execute(
                            f"SELECT COUNT(*) FROM outbox WHERE to_number = ? AND created_at >= ? "
                            f"AND status IN ({marks})",
                            (record.to_number, record.created_at - window, *ACTIVE_STATUSES),
                        ).fetchone()
                        if sent_to >= max_per_destination:
                            return ClaimOutcome.LIMIT_REACHED, record
                if existing is not None:  # a refusal or a certain failure sent nothing, so it blocks nothing
                    conn.execute("DELETE FROM outbox WHERE key = ?", (record.key,))
                self._insert(conn, record)
                return ClaimOutcome.CREATED, record

        return await self._db.run(_claim)

    @staticmethod
    def _insert(conn: sqlite3.Connection, record: OutboxRecord) -> None:
        data = dataclasses.asdict(record)
        data["media_urls"] = "\n".join(record.media_urls)
        cols = ", ".join(data)
        marks = ", ".join(f":{c}" for c in data)
        conn.execute(f"INSERT INTO outbox ({cols}) VALUES ({marks})", data)

    async def update(self, key: str, *, now: float, **fields: Any) -> OutboxRecord:
        """Set ``fields`` on the row ``key`` and return the updated row.

        ``attempts="+1"`` increments the attempt count (and sets ``first_attempt_at`` to
        ``now`` on the first attempt).

        Raises:
            KeyError: No row has that key.
            SidTakenError: ``sid`` is already the SID of another row.
        """
        self._check_fields(fields)

        def _update(conn: sqlite3.Connection) -> OutboxRecord:
            values = dict(fields, updated_at=now, key=key)
            if "attempts" in values and values["attempts"] == "+1":
                values.pop("attempts")
                sets = ["attempts = attempts + 1", "first_attempt_at = COALESCE(first_attempt_at, :updated_at)"]
            else:
                sets = []
            sets += [f"{c} = :{c}" for c in values if c != "key"]
            try:
                with transaction(conn):
                    conn.execute(f"UPDATE outbox SET {', '.join(sets)} WHERE key = :key", values)
                    row = conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
            except sqlite3.IntegrityError:
                raise SidTakenError(key) from None
            if row is None:
                raise KeyError(key)
            return OutboxRecord._from_row(row)

        return await self._db.run(_update)

    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        allowed = {f.name for f in dataclasses.fields(OutboxRecord)} - {"key", "created_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown outbox fields: {sorted(unknown)}")

    async def claim_sid(self, key: str, sid: str, *, now: float, **fields: Any) -> OutboxRecord | None:
        """Record ``sid`` as the message of row ``key`` unless another row already has it.

        Used when a lookup after an ambiguous error finds a candidate message: a message is
        claimed by exactly one row, so two identical texts can never share one SID.

        Returns:
            The updated row, or ``None`` when ``sid`` belongs to another row.
        """

        def _claim_sid(conn: sqlite3.Connection) -> OutboxRecord | None:
            values = dict(fields, sid=sid, updated_at=now, key=key)
            sets = ", ".join(f"{c} = :{c}" for c in values if c != "key")
            try:
                with transaction(conn):
                    other = conn.execute("SELECT 1 FROM outbox WHERE sid = ? AND key != ?", (sid, key)).fetchone()
                    if other is not None:
                        return None
                    conn.execute(f"UPDATE outbox SET {sets} WHERE key = :key", values)
                    row = conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
            except sqlite3.IntegrityError:
                return None
            if row is None:
                raise KeyError(key)
            return OutboxRecord._from_row(row)

        self._check_fields(fields)
        return await self._db.run(_claim_sid)

    async def get(self, key: str) -> OutboxRecord | None:
        """The row for ``key``, or ``None``."""

        def _get(conn: sqlite3.Connection) -> OutboxRecord | None:
            row = conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
            return OutboxRecord._from_row(row) if row else None

        return await self._db.run(_get)

    async def by_sid(self, sid: str) -> OutboxRecord | None:
        """The row whose provider SID is ``sid``, or ``None``."""

        def _get(conn: sqlite3.Connection) -> OutboxRecord | None:
            row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
            return OutboxRecord._from_row(row) if row else None

        return await self._db.run(_get)

    async def unfinished(self) -> list[OutboxRecord]:
        """Rows left ``pending``, ``sending`` or ``ambiguous`` (e.g. by a crash), oldest first."""

        def _list(conn: sqlite3.Connection) -> list[OutboxRecord]:
            marks = ",".join("?" * len(UNFINISHED_STATUSES))
            rows = conn.execute(
                f"SELECT * FROM outbox WHERE status IN ({marks}) ORDER BY created_at",
                UNFINISHED_STATUSES,
            ).fetchall()
            return [OutboxRecord._from_row(r) for r in rows]

        return await self._db.run(_list)

    async def for_call(self, call_id: str) -> list[OutboxRecord]:
        """All rows of a call, oldest first."""

        def _list(conn: sqlite3.Connection) -> list[OutboxRecord]:
            rows = conn.execute(
                "SELECT * FROM outbox WHERE call_id = ? ORDER BY created_at, key", (call_id,)
            ).fetchall()
            return [OutboxRecord._from_row(r) for r in rows]

        return await self._db.run(_list)

    async def record_delivery(
        self, sid: str, status: str, error_code: int | None, *, now: float
    ) -> tuple[OutboxRecord | None, bool]:
        """Apply a status callback; delivery state only moves forward.

        Returns:
            ``(row, changed)``: the row (``None`` for an unknown SID) and whether this
            callback changed it (duplicates and out-of-order callbacks do not).
        """
        rank = _DELIVERY_RANK.get(status)

        def _apply(conn: sqlite3.Connection) -> tuple[OutboxRecord | None, bool]:
            with transaction(conn):
                row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
                if row is None:
                    return None, False
                current = row["delivery"]
                if rank is None or current in _TERMINAL_DELIVERY:
                    return OutboxRecord._from_row(row), False
                if current is not None and _DELIVERY_RANK.get(current, -1) >= rank:
                    return OutboxRecord._from_row(row), False
                conn.execute(
                    "UPDATE outbox SET delivery = ?, delivery_error = ?, updated_at = ? WHERE sid = ?",
                    (status, error_code, now, sid),
                )
                row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
                return OutboxRecord._from_row(row), True

        return await self._db.run(_apply)
