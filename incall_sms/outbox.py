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

Leases (several workers on one outbox): a row being worked on is leased by one worker
(``lease_owner``, ``lease_until``) under a fencing token (``lease_token``, incremented by every
acquisition). A lease is acquired only by :meth:`~OutboxStore.claim` (the new row) or
:meth:`~OutboxStore.take_unfinished` (recovery: unfinished rows whose lease is free or ran out;
``FOR UPDATE SKIP LOCKED`` on PostgreSQL), and this outbox handle remembers the token it holds.
Every write of the row's send state (:meth:`~OutboxStore.update`, :meth:`~OutboxStore.claim_sid`)
is fenced: it succeeds only while the row is unfinished, leased to this worker, under the token
this handle holds; otherwise it raises :class:`LeaseLostError`. So a worker whose lease was taken
over never marks the row ``sending`` again, never re-sends it and never overwrites it, even after
the new holder finished and released it. A fenced write extends the lease;
:meth:`~OutboxStore.renew_leases` extends the leases of sends in flight between writes; the last
write of a send releases the lease. Status callbacks (:meth:`~OutboxStore.record_delivery`)
touch only the delivery columns and are applied by whichever worker receives them.

Two implementations share this contract (``tests/test_outbox_contract.py`` runs the same tests
on both): :class:`Outbox`, SQLite, the embedded default (one worker's file), and
:class:`incall_sms.outbox_postgres.PostgresOutbox` for fleets (:func:`open_outbox` picks one
from a ``DATABASE_URL``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import pathlib
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from incall_sms.errors import OutboxUnavailableError
from incall_sms.store import SqliteDb, transaction

__all__ = [
    "ClaimOutcome",
    "LeaseLostError",
    "Outbox",
    "OutboxRecord",
    "OutboxStore",
    "SidTakenError",
    "default_worker_id",
    "idempotency_key",
    "open_outbox",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Columns added for WhatsApp (what recovery needs to resend a WhatsApp or Content template message
#: exactly), with their types: added to tables of earlier versions by both stores.
WHATSAPP_COLUMNS = (("channel", "TEXT NOT NULL DEFAULT 'sms'"), ("content_sid", "TEXT"),
                    ("content_variables", "TEXT"))


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an outbox file of an earlier version up to date (run before the schema script)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if not columns:
        return
    if "first_attempt_at" not in columns:
        conn.execute("ALTER TABLE outbox ADD COLUMN first_attempt_at REAL")
    leases = (("lease_owner", "TEXT"), ("lease_until", "REAL"), ("lease_token", "INTEGER NOT NULL DEFAULT 0"))
    for column, kind in leases:
        if column not in columns:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
    for column, kind in WHATSAPP_COLUMNS:
        if column not in columns:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
    conn.execute("DROP INDEX IF EXISTS outbox_sid")  # replaced by the unique index



#: The outbox table's columns, one per :class:`OutboxRecord` field, shared by both stores (``{real}``: the
#: floating-point type, REAL in SQLite, DOUBLE PRECISION in PostgreSQL).
TABLE_COLUMNS = """
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
    first_attempt_at {real},
    delivery TEXT,
    delivery_error INTEGER,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    lease_owner TEXT,
    lease_until {real},
    lease_token INTEGER NOT NULL DEFAULT 0,
    channel TEXT NOT NULL DEFAULT 'sms',
    content_sid TEXT,
    content_variables TEXT
"""

#: Status callbacks for SIDs no row has yet (see :meth:`OutboxStore.hold_status`), shared by both stores.
HELD_STATUS_COLUMNS = """
    sid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    error_code INTEGER,
    received_at {real} NOT NULL,
    rank INTEGER NOT NULL DEFAULT 0,
    final INTEGER NOT NULL DEFAULT 0
"""
#: Hold a status callback in one statement (no gap for a concurrent take): insert it, or move a held one forward
#: (``rank``/``final``: :func:`delivery_rank`); parameters ``sid, status, error_code, received_at, rank, final``.
HOLD_STATUS_SQL = """
INSERT INTO {table} (sid, status, error_code, received_at, rank, final) VALUES ({marks})
ON CONFLICT (sid) DO UPDATE SET status = excluded.status, error_code = excluded.error_code,
    received_at = excluded.received_at, rank = excluded.rank, final = excluded.final
WHERE {table}.final = 0 AND {table}.rank < excluded.rank
"""
#: How long a status callback for an unknown SID is held for the send that will record it (seconds).
HELD_STATUS_SECONDS = 600.0
#: Most callbacks held at once (the first held go first): only Twilio can post them (signed), but a store bounds
#: what it keeps.
HELD_STATUS_MAX = 10_000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
{TABLE_COLUMNS.format(real="REAL")});
CREATE INDEX IF NOT EXISTS outbox_call ON outbox(call_id, action);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status);
CREATE INDEX IF NOT EXISTS outbox_destination ON outbox(to_number, created_at);
CREATE TABLE IF NOT EXISTS held_status (
{HELD_STATUS_COLUMNS.format(real="REAL")});
CREATE INDEX IF NOT EXISTS held_status_age ON held_status(received_at);
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


class LeaseLostError(Exception):
    """Another worker holds the lease of the row: this worker must not write its send state.

    Attributes:
        key: The row.
        owner: The worker holding the lease.
    """

    def __init__(self, key: str, owner: str | None) -> None:
        self.key = key
        self.owner = owner
        super().__init__(f"{key} is leased by {owner}")


def idempotency_key(call_id: str, action: str, turn: int) -> str:
    """Key of one send: call id + action + the turn that triggered it."""
    return f"{call_id}:{action}:{turn}"


def default_worker_id() -> str:
    """A worker id unique across hosts and restarts: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ClaimOutcome(enum.Enum):
    """Result of :meth:`OutboxStore.claim`."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    LIMIT_REACHED = "limit_reached"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRecord:
    """One outbox row. Holds the number and body: never log it whole (use ``masked()``).

    Numbers are bare E.164 on every channel. ``channel`` is ``sms`` or ``whatsapp``;
    ``content_sid`` and ``content_variables`` (the JSON object string as sent) hold a WhatsApp
    Content template message, whose ``body`` is empty.
    """

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
    lease_owner: str | None = None
    lease_until: float | None = None
    lease_token: int = 0
    channel: str = "sms"
    content_sid: str | None = None
    content_variables: str | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> OutboxRecord:
        """A record from a database row (``media_urls`` stored newline-joined).

        Columns this version does not know (added by a later version in a rolling upgrade) are ignored.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        data: dict[str, Any] = {k: v for k, v in dict(row).items() if k in known}
        urls = data.pop("media_urls") or ""
        return cls(media_urls=tuple(u for u in urls.split("\n") if u), **data)

    def columns(self) -> dict[str, Any]:
        """The row's column values (``media_urls`` newline-joined)."""
        data = dataclasses.asdict(self)
        data["media_urls"] = "\n".join(self.media_urls)
        return data

    def __repr__(self) -> str:  # never leak number or body through a repr in a log line
        from incall_sms.phone import mask

        return (
            f"OutboxRecord(key={self.key!r}, status={self.status!r}, to={mask(self.to_number)}, "
            f"sid={self.sid!r}, reason={self.reason!r}, delivery={self.delivery!r})"
        )


#: Columns a caller may set through ``update``/``claim_sid`` (the key, the creation time and the
#: lease are the outbox's own).
WRITABLE_FIELDS = frozenset(
    f.name for f in dataclasses.fields(OutboxRecord)) - {"key", "created_at", "lease_owner", "lease_until",
                                                        "lease_token"}


def check_fields(fields: Mapping[str, Any]) -> None:
    """Refuse fields that are not writable outbox columns.

    Raises:
        ValueError: Names the unknown fields.
    """
    unknown = set(fields) - WRITABLE_FIELDS
    if unknown:
        raise ValueError(f"unknown outbox fields: {sorted(unknown)}")


def delivery_rank(status: str) -> tuple[int, bool] | None:
    """Where a delivery ``status`` stands: its order and whether it is final; ``None`` for no delivery status."""
    rank = _DELIVERY_RANK.get(status)
    return None if rank is None else (rank, status in _TERMINAL_DELIVERY)


def delivery_advances(current: str | None, status: str) -> bool:
    """Whether a status callback saying ``status`` moves a row whose delivery is ``current`` forward."""
    rank = _DELIVERY_RANK.get(status)
    if rank is None or current in _TERMINAL_DELIVERY:
        return False
    return current is None or _DELIVERY_RANK.get(current, -1) < rank


class HeldStatusStore(Protocol):
    """Where status callbacks for SIDs no outbox row has yet wait for the send that records them.

    The outbox by default (:class:`OutboxStore` provides both methods: a fleet's PostgreSQL outbox shares
    them); ``RedisHeldStatuses`` for workers with their own SQLite outboxes that share Redis.
    """

    async def hold_status(self, sid: str, status: str, error_code: int | None, *, now: float) -> None:
        """Keep a status callback for a SID no row has yet, for the send that records it (:meth:`take_held_status`).

        Twilio can post a message's status (a filter fails it within a second) before the create's answer
        reaches the sender. Forward only, like ``record_delivery``; statuses that are no delivery status are
        not kept; callbacks older than :data:`HELD_STATUS_SECONDS` are dropped, and at most
        :data:`HELD_STATUS_MAX` are kept (the first held go first).
        """
        ...

    async def take_held_status(self, sid: str) -> tuple[str, int | None] | None:
        """Remove and return the held ``(status, error_code)`` of ``sid``; exactly one caller gets it."""
        ...


class OutboxStore(HeldStatusStore, Protocol):
    """What the dispatcher needs of an outbox; :class:`Outbox` (SQLite) and ``PostgresOutbox`` provide it.

    It holds early status callbacks too (:class:`HeldStatusStore`).

    Every time argument (``now``) is epoch seconds from the caller's clock; leases are compared
    with it, so the workers sharing an outbox need clocks that agree to well within
    :attr:`lease_seconds` (NTP does).
    """

    worker_id: str
    lease_seconds: float

    def lease_end(self, now: float) -> float:
        """When a lease written now ends; see :meth:`Outbox.lease_end`."""
        ...

    async def claim(
        self,
        record: OutboxRecord,
        *,
        once_per_call: bool,
        max_per_call: int,
        max_per_destination: int | None = None,
        window: float = 24 * 3600,
    ) -> tuple[ClaimOutcome, OutboxRecord]:
        """Insert ``record`` (leased to this worker) unless it duplicates or exceeds a cap; see :meth:`Outbox.claim`."""
        ...

    async def update(self, key: str, *, now: float, release: bool = False, **fields: Any) -> OutboxRecord:
        """Fenced write of the row's fields; see :meth:`Outbox.update`."""
        ...

    async def claim_sid(self, key: str, sid: str, *, now: float, **fields: Any) -> OutboxRecord | None:
        """Fenced: record ``sid`` unless another row has it; see :meth:`Outbox.claim_sid`."""
        ...

    async def get(self, key: str) -> OutboxRecord | None:
        """The row for ``key``."""
        ...

    async def by_sid(self, sid: str) -> OutboxRecord | None:
        """The row whose provider SID is ``sid``."""
        ...

    async def unfinished(self) -> list[OutboxRecord]:
        """Unfinished rows, oldest first (whoever leases them)."""
        ...

    async def take_unfinished(
        self, *, now: float, min_age: float = 0.0, limit: int = 100, exclude: Iterable[str] = ()
    ) -> list[OutboxRecord]:
        """Lease unfinished rows whose lease is free or ran out; see :meth:`Outbox.take_unfinished`."""
        ...

    async def renew_leases(self, keys: Iterable[str], *, now: float) -> set[str]:
        """Extend the leases this handle holds on ``keys``; returns the keys it no longer holds."""
        ...

    def forget(self, key: str) -> None:
        """Stop holding ``key`` (its send ended unfinished, e.g. cancelled).

        This worker's recovery may take it again: at once from its own SQLite file, once the
        lease runs out from a shared PostgreSQL outbox (where a live lease of this worker may
        belong to a claim another connection just committed).
        """
        ...

    async def for_call(self, call_id: str) -> list[OutboxRecord]:
        """All rows of a call, oldest first."""
        ...

    async def record_delivery(
        self, sid: str, status: str, error_code: int | None, *, now: float
    ) -> tuple[OutboxRecord | None, bool]:
        """Apply a status callback (forward only); see :meth:`Outbox.record_delivery`."""
        ...

    async def aclose(self) -> None:
        """Release the database."""
        ...


def leased(record: OutboxRecord, outbox: OutboxStore, *, previous: int) -> OutboxRecord:
    """``record`` as a claim stores it.

    A send to make is leased to ``outbox``'s worker under the token after ``previous`` (the
    replaced row's, 0 for a new key); a refusal is lease-free.
    """
    if record.status in UNFINISHED_STATUSES:
        return dataclasses.replace(record, lease_owner=outbox.worker_id, lease_token=previous + 1,
                                   lease_until=outbox.lease_end(record.updated_at))
    return dataclasses.replace(record, lease_owner=None, lease_until=None, lease_token=previous)


#: A SQLite outbox is one worker's file: after a restart the rows are that worker's again.
SQLITE_WORKER_ID = "local"


class Outbox:
    """SQLite-backed outbox, the embedded default (one worker's state directory).

    Args:
        path: Database file (shared by restarts of the same worker); ``":memory:"`` for tests.
        worker_id: Lease owner name of this process. The default, ``"local"``, is right for a
            file one worker owns: a restarted worker recovers its own rows at once. Processes
            sharing one file need distinct ids (:func:`default_worker_id`).
        lease_seconds: How long a lease lasts without renewal.
        clock: This host's wall clock (epoch seconds); see :meth:`lease_end`.
    """

    def __init__(
        self,
        path: str | pathlib.Path = ":memory:",
        *,
        worker_id: str = SQLITE_WORKER_ID,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._held: dict[str, int] = {}  # key -> fencing token of the leases this handle holds
        self._closed = False
        self._db = SqliteDb(path, schema=_SCHEMA, migrate=_migrate)
        self._db.run_sync(_ensure_sid_index)

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    @property
    def held(self) -> frozenset[str]:
        """Keys whose lease this handle holds."""
        return frozenset(self._held)

    def close(self) -> None:
        """Close the database (idempotent); later calls raise ``OutboxUnavailableError``."""
        self._closed = True
        self._db.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise OutboxUnavailableError("the outbox is closed")
        return await self._db.run(fn)

    async def aclose(self) -> None:
        """Close the database (the async spelling shared with ``PostgresOutbox``)."""
        self.close()

    def forget(self, key: str) -> None:
        """Stop holding ``key`` (its send ended unfinished, e.g. cancelled): this worker's recovery may take it."""
        self._held.pop(key, None)

    def lease_end(self, now: float) -> float:
        """When a lease written now ends: ``lease_seconds`` after the later of ``now`` and this host's clock.

        Computed as the statement runs: the caller's ``now`` was read before its write waited in
        line (the database thread, a lock), which under load can be seconds; a lease must still
        last its full length from the write.
        """
        return max(now, self._clock()) + self.lease_seconds

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
        ``skipped`` (nothing was sent): then the new record replaces it. A ``pending`` row is
        leased to this worker until ``record.updated_at + lease_seconds`` under a new fencing
        token, which this handle holds.

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
                    return ClaimOutcome.DUPLICATE, OutboxRecord.from_mapping(existing)
                if record.status == "pending":
                    marks = ",".join("?" * len(ACTIVE_STATUSES))
                    if once_per_call:
                        row = conn.execute(
                            f"SELECT * FROM outbox WHERE call_id = ? AND action = ? AND status IN ({marks}) "
                            "ORDER BY created_at LIMIT 1",
                            (record.call_id, record.action, *ACTIVE_STATUSES),
                        ).fetchone()
                        if row is not None:
                            return ClaimOutcome.DUPLICATE, OutboxRecord.from_mapping(row)
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
                stored = leased(record, self, previous=existing["lease_token"] if existing is not None else 0)
                data = stored.columns()
                cols = ", ".join(data)
                conn.execute(f"INSERT INTO outbox ({cols}) VALUES ({', '.join(f':{c}' for c in data)})", data)
                if stored.lease_owner is not None:  # held from here on (this thread runs every statement in turn)
                    self._held[stored.key] = stored.lease_token
                return ClaimOutcome.CREATED, stored

        before = self._held.get(record.key)
        work = asyncio.get_running_loop().create_task(self._run(_claim))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # the database thread finishes the claim anyway; whatever it created, nobody will send: once it is
            # done, forget the hold, so this worker's recovery takes the row (as it would after a crash)
            def settle(done: asyncio.Task[tuple[ClaimOutcome, OutboxRecord]]) -> None:
                if not done.cancelled() and done.exception() is None and done.result()[0] is ClaimOutcome.CREATED:
                    self._held.pop(record.key, None)

            work.add_done_callback(settle)
            raise
        except BaseException:  # not committed: the hold set for this claim goes
            if before is None:
                self._held.pop(record.key, None)
            else:
                self._held[record.key] = before
            raise

    def _write(self, conn: sqlite3.Connection, key: str, sets: list[str], values: dict[str, Any],
               release: bool) -> sqlite3.Row:
        """Fenced UPDATE of ``key`` (extends the lease, or releases it); returns the new row."""
        token = self._held.get(key)
        if token is None:
            raise self._not_held(conn, key)
        marks = ",".join(f"'{s}'" for s in UNFINISHED_STATUSES)
        values = dict(values, key=key, me=self.worker_id, token=token,
                      lease_until_new=self.lease_end(values["now"]))
        lease = "lease_owner = NULL, lease_until = NULL" if release else "lease_until = :lease_until_new"
        cursor = conn.execute(
            f"UPDATE outbox SET {', '.join([*sets, 'updated_at = :now', lease])} WHERE key = :key "
            f"AND lease_owner = :me AND lease_token = :token AND status IN ({marks})", values)
        if cursor.rowcount == 0:
            self._held.pop(key, None)
            raise self._not_held(conn, key)
        if release:
            self._held.pop(key, None)
        return conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()

    @staticmethod
    def _not_held(conn: sqlite3.Connection, key: str) -> Exception:
        row = conn.execute("SELECT lease_owner FROM outbox WHERE key = ?", (key,)).fetchone()
        return KeyError(key) if row is None else LeaseLostError(key, row["lease_owner"])

    async def update(self, key: str, *, now: float, release: bool = False, **fields: Any) -> OutboxRecord:
        """Set ``fields`` on the row ``key`` and return the updated row.

        Fenced: only while this handle holds the row's lease (claimed or taken by it, not
        taken over since) and the row is unfinished. The write extends the lease to ``now +
        lease_seconds``; ``release=True`` frees it instead (the send's last write).
        ``attempts="+1"`` increments the attempt count (and sets ``first_attempt_at`` to
        ``now`` on the first attempt).

        Raises:
            KeyError: No row has that key.
            LeaseLostError: This handle does not hold the row's lease (any more).
            SidTakenError: ``sid`` is already the SID of another row.
            ValueError: A field is not a writable column.
        """
        check_fields(fields)

        def _update(conn: sqlite3.Connection) -> OutboxRecord:
            values = dict(fields, now=now)
            sets = []
            if values.get("attempts") == "+1":
                values.pop("attempts")
                sets = ["attempts = attempts + 1", "first_attempt_at = COALESCE(first_attempt_at, :now)"]
            sets += [f"{c} = :{c}" for c in fields if c in values]
            try:
                with transaction(conn):
                    row = self._write(conn, key, sets, values, release)
            except sqlite3.IntegrityError:
                raise SidTakenError(key) from None
            return OutboxRecord.from_mapping(row)

        return await self._run(_update)

    async def claim_sid(self, key: str, sid: str, *, now: float, **fields: Any) -> OutboxRecord | None:
        """Record ``sid`` as the message of row ``key`` unless another row already has it.

        Used when a lookup after an ambiguous error finds a candidate message: a message is
        claimed by exactly one row, so two identical texts can never share one SID. Fenced
        like :meth:`update`.

        Returns:
            The updated row, or ``None`` when ``sid`` belongs to another row.

        Raises:
            KeyError: No row has that key.
            LeaseLostError: This handle does not hold the row's lease (any more).
        """
        check_fields(fields)

        def _claim_sid(conn: sqlite3.Connection) -> OutboxRecord | None:
            values = dict(fields, sid=sid, now=now)
            try:
                with transaction(conn):
                    other = conn.execute("SELECT 1 FROM outbox WHERE sid = ? AND key != ?", (sid, key)).fetchone()
                    if other is not None:
                        return None
                    row = self._write(conn, key, [f"{c} = :{c}" for c in (*fields, "sid")], values, False)
            except sqlite3.IntegrityError:
                return None
            return OutboxRecord.from_mapping(row)

        return await self._run(_claim_sid)

    async def get(self, key: str) -> OutboxRecord | None:
        """The row for ``key``, or ``None``."""

        def _get(conn: sqlite3.Connection) -> OutboxRecord | None:
            row = conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
            return OutboxRecord.from_mapping(row) if row else None

        return await self._run(_get)

    async def by_sid(self, sid: str) -> OutboxRecord | None:
        """The row whose provider SID is ``sid``, or ``None``."""

        def _get(conn: sqlite3.Connection) -> OutboxRecord | None:
            row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
            return OutboxRecord.from_mapping(row) if row else None

        return await self._run(_get)

    async def unfinished(self) -> list[OutboxRecord]:
        """Rows left ``pending``, ``sending`` or ``ambiguous`` (e.g. by a crash), oldest first."""

        def _list(conn: sqlite3.Connection) -> list[OutboxRecord]:
            marks = ",".join("?" * len(UNFINISHED_STATUSES))
            rows = conn.execute(
                f"SELECT * FROM outbox WHERE status IN ({marks}) ORDER BY created_at",
                UNFINISHED_STATUSES,
            ).fetchall()
            return [OutboxRecord.from_mapping(r) for r in rows]

        return await self._run(_list)

    async def take_unfinished(
        self, *, now: float, min_age: float = 0.0, limit: int = 100, exclude: Iterable[str] = ()
    ) -> list[OutboxRecord]:
        """Lease unfinished rows to this worker for recovery, oldest first.

        Takes rows whose lease is free, has run out (its worker died or stalled), or is this
        worker's but not held by this handle (an earlier run of the worker, or a send that
        ended unfinished), and that changed at least ``min_age`` seconds ago. Each taken row
        gets a new fencing token: a worker still holding the old one can write it no more.

        Args:
            now: Current time (epoch seconds).
            min_age: Seconds since a row's last change.
            limit: Most rows taken at once.
            exclude: Keys never taken (never counted against ``limit``); the rows this handle
                holds are always excluded.

        Returns:
            The rows, now leased to this worker until ``now + lease_seconds``.
        """
        skip = set(exclude)

        def _take(conn: sqlite3.Connection) -> list[OutboxRecord]:
            marks = ",".join("?" * len(UNFINISHED_STATUSES))
            with transaction(conn):
                candidates = conn.execute(
                    f"SELECT key FROM outbox WHERE status IN ({marks}) AND updated_at <= ? "
                    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?) ORDER BY created_at",
                    (*UNFINISHED_STATUSES, now - min_age, self.worker_id, now))
                keys = [key for (key,) in candidates if key not in skip and key not in self._held][:limit]
                rows = []
                for key in keys:
                    conn.execute("UPDATE outbox SET lease_owner = ?, lease_until = ?, lease_token = lease_token + 1 "
                                 "WHERE key = ?", (self.worker_id, self.lease_end(now), key))
                    rows.append(conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone())
                for row in rows:
                    self._held[row["key"]] = row["lease_token"]
            return [OutboxRecord.from_mapping(r) for r in rows]

        return await self._run(_take)

    async def renew_leases(self, keys: Iterable[str], *, now: float) -> set[str]:
        """Extend the leases this handle holds on ``keys`` to ``now + lease_seconds``.

        Keys it does not hold are ignored.

        Returns:
            The keys it held but no longer does (another worker took them over, or they were
            finished elsewhere): forgotten, so their next write fails fast.
        """
        keys = [k for k in keys if k in self._held]

        def _renew(conn: sqlite3.Connection) -> set[str]:
            lost = set()
            marks = ",".join(f"'{s}'" for s in UNFINISHED_STATUSES)
            with transaction(conn):
                for key in keys:
                    token = self._held.get(key)
                    if token is None:
                        continue
                    cursor = conn.execute(
                        f"UPDATE outbox SET lease_until = ? WHERE key = ? AND lease_owner = ? AND lease_token = ? "
                        f"AND status IN ({marks})", (self.lease_end(now), key, self.worker_id, token))
                    if cursor.rowcount == 0:
                        lost.add(key)
                        self._held.pop(key, None)
            return lost

        return await self._run(_renew) if keys else set()

    async def for_call(self, call_id: str) -> list[OutboxRecord]:
        """All rows of a call, oldest first."""

        def _list(conn: sqlite3.Connection) -> list[OutboxRecord]:
            rows = conn.execute(
                "SELECT * FROM outbox WHERE call_id = ? ORDER BY created_at, key", (call_id,)
            ).fetchall()
            return [OutboxRecord.from_mapping(r) for r in rows]

        return await self._run(_list)

    async def record_delivery(
        self, sid: str, status: str, error_code: int | None, *, now: float
    ) -> tuple[OutboxRecord | None, bool]:
        """Apply a status callback; delivery state only moves forward. Not fenced (any worker may).

        Returns:
            ``(row, changed)``: the row (``None`` for an unknown SID) and whether this
            callback changed it (duplicates and out-of-order callbacks do not).
        """

        def _apply(conn: sqlite3.Connection) -> tuple[OutboxRecord | None, bool]:
            with transaction(conn):
                row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
                if row is None:
                    return None, False
                if not delivery_advances(row["delivery"], status):
                    return OutboxRecord.from_mapping(row), False
                conn.execute(
                    "UPDATE outbox SET delivery = ?, delivery_error = ?, updated_at = ? WHERE sid = ?",
                    (status, error_code, now, sid),
                )
                row = conn.execute("SELECT * FROM outbox WHERE sid = ?", (sid,)).fetchone()
                return OutboxRecord.from_mapping(row), True

        return await self._run(_apply)

    async def hold_status(self, sid: str, status: str, error_code: int | None, *, now: float) -> None:
        """Keep a status callback for a SID no row has yet; see :meth:`HeldStatusStore.hold_status`."""
        ranked = delivery_rank(status)
        if ranked is None:  # no delivery status: nothing a row could take from it
            return
        rank, final = ranked

        def _hold(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM held_status WHERE received_at < ?", (now - HELD_STATUS_SECONDS,))
                conn.execute(HOLD_STATUS_SQL.format(table="held_status", marks="?, ?, ?, ?, ?, ?"),
                             (sid, status, error_code, now, rank, int(final)))
                conn.execute("DELETE FROM held_status WHERE rowid IN (SELECT rowid FROM held_status "
                             "ORDER BY rowid DESC LIMIT -1 OFFSET ?)", (HELD_STATUS_MAX,))

        await self._run(_hold)

    async def take_held_status(self, sid: str) -> tuple[str, int | None] | None:
        """Remove and return the held status of ``sid``; see :meth:`HeldStatusStore.take_held_status`."""

        def _take(conn: sqlite3.Connection) -> tuple[str, int | None] | None:
            with transaction(conn):
                row = conn.execute("SELECT status, error_code FROM held_status WHERE sid = ?", (sid,)).fetchone()
                if row is None:
                    return None
                conn.execute("DELETE FROM held_status WHERE sid = ?", (sid,))
                return row["status"], row["error_code"]

        return await self._run(_take)


def open_outbox(
    database_url: str | None,
    *,
    state_dir: str | pathlib.Path,
    worker_id: str | None = None,
    lease_seconds: float = 30.0,
) -> OutboxStore:
    """The outbox a worker uses: PostgreSQL when ``database_url`` is set, else SQLite in ``state_dir``.

    Args:
        database_url: ``postgresql://user:password@host:port/db`` (the ``DATABASE_URL`` of a
            fleet), or ``None``/empty for the embedded SQLite file ``state_dir/outbox.db``.
        state_dir: The worker's state directory.
        worker_id: Lease owner name (default: :func:`default_worker_id` for PostgreSQL,
            ``"local"`` for the worker's own SQLite file).
        lease_seconds: Lease length.

    Raises:
        ValueError: The URL is not a PostgreSQL URL.
        ImportError: PostgreSQL asked for without the ``[postgres]`` extra (asyncpg).
    """
    if database_url:
        from incall_sms.outbox_postgres import PostgresOutbox

        return PostgresOutbox(database_url, worker_id=worker_id or default_worker_id(), lease_seconds=lease_seconds)
    return Outbox(pathlib.Path(state_dir) / "outbox.db", worker_id=worker_id or SQLITE_WORKER_ID,
                  lease_seconds=lease_seconds)
