"""The outbox on PostgreSQL, shared by a fleet of workers (``DATABASE_URL``).

Same contract as the SQLite :class:`~incall_sms.outbox.Outbox` (``tests/test_outbox_contract.py``
runs the same tests on both); what differs is how it stays correct with many writers:

* A claim serializes the rows of one call (and, with a destination cap, of one destination)
  with transaction-scoped advisory locks, so the "once per call" rule and the caps hold
  across workers. Locks are always taken call first, then destination: no lock cycle.
* Recovery takes rows with ``FOR UPDATE SKIP LOCKED``: two workers recovering at once never
  take the same row, and neither waits for the other.
* Every transaction runs at READ COMMITTED whatever the server's default: the claim's checks
  must see rows committed while it waited for its advisory locks.
* Leases and fencing as described in :mod:`incall_sms.outbox`.

The driver is asyncpg (the ``[postgres]`` extra): native asyncio with no libpq to install,
prepared statements cached per connection, and the fastest of the Python drivers; nothing
here blocks the event loop. Connection failures surface as
:class:`~incall_sms.errors.OutboxUnavailableError` (the row is left as it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from incall_sms import outbox as _outbox
from incall_sms.errors import OutboxUnavailableError
from incall_sms.outbox import (
    ACTIVE_STATUSES,
    HELD_STATUS_COLUMNS,
    HOLD_STATUS_SQL,
    REPLACEABLE_STATUSES,
    TABLE_COLUMNS,
    UNFINISHED_STATUSES,
    WHATSAPP_COLUMNS,
    ClaimOutcome,
    LeaseLostError,
    OutboxRecord,
    SidTakenError,
    check_fields,
    delivery_advances,
    delivery_rank,
    leased,
)

__all__ = ["PostgresOutbox"]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS incall_sms_outbox (
{TABLE_COLUMNS.format(real="DOUBLE PRECISION")});
CREATE INDEX IF NOT EXISTS incall_sms_outbox_call ON incall_sms_outbox(call_id, action);
CREATE INDEX IF NOT EXISTS incall_sms_outbox_unfinished ON incall_sms_outbox(created_at)
    WHERE status IN ('pending', 'sending', 'ambiguous');
CREATE INDEX IF NOT EXISTS incall_sms_outbox_destination ON incall_sms_outbox(to_number, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS incall_sms_outbox_sid ON incall_sms_outbox(sid) WHERE sid IS NOT NULL;
CREATE TABLE IF NOT EXISTS incall_sms_held_status (
{HELD_STATUS_COLUMNS.format(real="DOUBLE PRECISION")}, seq BIGSERIAL);
CREATE INDEX IF NOT EXISTS incall_sms_held_status_age ON incall_sms_held_status(received_at);
"""

_TABLE = "incall_sms_outbox"
_HELD = "incall_sms_held_status"
# advisory lock classes (first key of pg_advisory_xact_lock(int, int))
_LOCK_SCHEMA, _LOCK_CALL, _LOCK_DESTINATION = 0x534D5300, 0x534D5301, 0x534D5302


class PostgresOutbox:
    """Outbox in a PostgreSQL table (``incall_sms_outbox``), created on first use.

    Args:
        url: ``postgresql://user:password@host:port/database`` (asyncpg's DSN; ``?sslmode=``
            and the other libpq URL options work).
        worker_id: This worker's lease owner name, unique in the fleet
            (:func:`~incall_sms.outbox.default_worker_id`).
        lease_seconds: How long a lease lasts without renewal.
        pool_size: Most connections this worker opens.
        connect_timeout: Seconds to wait for a connection.
        command_timeout: Seconds one statement may take (a half-open connection must not hold a
            claim, and the caller's answer, for minutes); beyond it the outbox counts as unreachable.
        clock: This host's wall clock (epoch seconds); see :meth:`lease_end`.

    Raises:
        ValueError: ``url`` is not a ``postgres://`` or ``postgresql://`` URL, or an option is
            out of range.
        ImportError: asyncpg is not installed (``pip install 'pipecat-incall-sms[postgres]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        worker_id: str,
        lease_seconds: float = 30.0,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("postgres://", "postgresql://")):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        if lease_seconds <= 0 or pool_size < 1 or connect_timeout <= 0:
            raise ValueError("lease_seconds and connect_timeout must be > 0, pool_size >= 1")
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ImportError(
                "the PostgreSQL outbox needs asyncpg: pip install 'pipecat-incall-sms[postgres]'") from None
        self._url = url
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._pool_size = pool_size
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._held: dict[str, int] = {}  # key -> fencing token of the leases this handle holds

    @property
    def held(self) -> frozenset[str]:
        """Keys whose lease this handle holds."""
        return frozenset(self._held)

    def forget(self, key: str) -> None:
        """Stop holding ``key`` (its send ended unfinished, e.g. cancelled): this worker's recovery may take it."""
        self._held.pop(key, None)

    def lease_end(self, now: float) -> float:
        """When a lease written now ends (see :meth:`Outbox.lease_end`), computed once connection and locks are had."""
        return max(now, self._clock()) + self.lease_seconds

    # -- connection ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create the table if needed (idempotent; every method opens on first use).

        Raises:
            OutboxUnavailableError: The database cannot be reached, or the outbox was closed.
        """
        if self._pool is not None:
            return
        async with self._opening:
            if self._closed:
                raise OutboxUnavailableError("the outbox is closed")
            if self._pool is not None:
                return
            import asyncpg

            try:
                pool = await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size,
                                                 timeout=self._connect_timeout,
                                                 command_timeout=self._command_timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise OutboxUnavailableError(f"outbox database unreachable ({exc.__class__.__name__})") from None
            try:
                async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                    # workers starting together: one creates the table, the others wait and find it
                    await conn.execute("SET LOCAL lock_timeout = '3s'")
                    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK_SCHEMA}, 0)")
                    await conn.execute(_SCHEMA)
                    # columns of later versions, added to tables of earlier ones; only when missing: ALTER
                    # TABLE takes an exclusive lock even when there is nothing to add
                    present = {r["column_name"] for r in await conn.fetch(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                        "AND table_schema = current_schema()", _TABLE)}
                    for column, kind in WHATSAPP_COLUMNS:
                        if column not in present:
                            await conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS {column} {kind}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                await pool.close()
                raise OutboxUnavailableError(f"outbox table not ready ({exc.__class__.__name__})") from None
            except BaseException:
                await pool.close()
                raise
            self._pool = pool

    async def aclose(self) -> None:
        """Close the connections (idempotent); later calls raise ``OutboxUnavailableError``."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        import asyncpg

        await self.open()
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                if transaction:
                    async with conn.transaction(isolation="read_committed"):
                        yield conn
                else:
                    yield conn
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.InterfaceError, asyncpg.OperatorInterventionError,
                asyncpg.ReadOnlySQLTransactionError) as exc:
            # connection lost or refused, server shutting down or restarting, a failover's read-only standby,
            # a statement cut off by command_timeout: the database cannot answer now
            raise OutboxUnavailableError(f"outbox database unreachable ({exc.__class__.__name__})") from None

    @staticmethod
    def _record(row: Any) -> OutboxRecord:
        return OutboxRecord.from_mapping(dict(row.items()))

    # -- the contract -------------------------------------------------------------------

    async def claim(
        self,
        record: OutboxRecord,
        *,
        once_per_call: bool,
        max_per_call: int,
        max_per_destination: int | None = None,
        window: float = 24 * 3600,
    ) -> tuple[ClaimOutcome, OutboxRecord]:
        """Atomically insert ``record`` unless it would duplicate or exceed a cap (see :meth:`Outbox.claim`)."""
        active = list(ACTIVE_STATUSES)
        before = self._held.get(record.key)
        try:
            return await self._claim(record, active, once_per_call, max_per_call, max_per_destination, window)
        except BaseException:  # not committed: the hold set for this claim goes
            if before is None:
                self._held.pop(record.key, None)
            else:
                self._held[record.key] = before
            raise

    async def _claim(self, record: OutboxRecord, active: list[str], once_per_call: bool, max_per_call: int,
                     max_per_destination: int | None, window: float) -> tuple[ClaimOutcome, OutboxRecord]:
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CALL, record.call_id)
            capped = record.status == "pending" and max_per_destination is not None and record.to_number
            if capped:
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_DESTINATION,
                                   record.to_number)
            existing = await conn.fetchrow(f"SELECT * FROM {_TABLE} WHERE key = $1", record.key)
            if existing is not None and existing["status"] not in REPLACEABLE_STATUSES:
                return ClaimOutcome.DUPLICATE, self._record(existing)
            if record.status == "pending":
                if once_per_call:
                    row = await conn.fetchrow(
                        f"SELECT * FROM {_TABLE} WHERE call_id = $1 AND action = $2 AND status = ANY($3) "
                        "ORDER BY created_at LIMIT 1", record.call_id, record.action, active)
                    if row is not None:
                        return ClaimOutcome.DUPLICATE, self._record(row)
                count = await conn.fetchval(
                    f"SELECT COUNT(*) FROM {_TABLE} WHERE call_id = $1 AND status = ANY($2)", record.call_id, active)
                if count >= max_per_call:
                    return ClaimOutcome.LIMIT_REACHED, record
                if capped:
                    sent_to = await conn.fetchval(
                        f"SELECT COUNT(*) FROM {_TABLE} WHERE to_number = $1 AND created_at >= $2 "
                        "AND status = ANY($3)", record.to_number, record.created_at - window, active)
                    if sent_to >= max_per_destination:  # type: ignore[operator]
                        return ClaimOutcome.LIMIT_REACHED, record
            if existing is not None:  # a refusal or a certain failure sent nothing, so it blocks nothing
                await conn.execute(f"DELETE FROM {_TABLE} WHERE key = $1", record.key)
            stored = leased(record, self, previous=existing["lease_token"] if existing is not None else 0)
            if stored.lease_owner is not None:  # held before the commit makes the row visible to recovery
                self._held[stored.key] = stored.lease_token
            data = stored.columns()
            marks = ", ".join(f"${i}" for i in range(1, len(data) + 1))
            await conn.execute(f"INSERT INTO {_TABLE} ({', '.join(data)}) VALUES ({marks})", *data.values())
        return ClaimOutcome.CREATED, stored

    async def _write(self, conn: Any, key: str, fields: dict[str, Any], *, now: float, release: bool,
                     increment: bool = False) -> OutboxRecord:
        """Fenced UPDATE of ``key`` (extends the lease, or releases it); returns the new row."""
        token = self._held.get(key)
        if token is None:
            raise await self._not_held(conn, key)
        values: list[Any] = [key, self.worker_id, now, token, list(UNFINISHED_STATUSES)]
        sets = []
        for column, value in fields.items():
            values.append(value)
            sets.append(f"{column} = ${len(values)}")
        if increment:
            sets += ["attempts = attempts + 1", "first_attempt_at = COALESCE(first_attempt_at, $3)"]
        sets.append("updated_at = $3")
        if release:
            sets.append("lease_owner = NULL, lease_until = NULL")
        else:
            values.append(self.lease_end(now))
            sets.append(f"lease_until = ${len(values)}")
        row = await conn.fetchrow(
            f"UPDATE {_TABLE} SET {', '.join(sets)} WHERE key = $1 AND lease_owner = $2 AND lease_token = $4 "
            "AND status = ANY($5) RETURNING *", *values)
        if row is None:
            self._held.pop(key, None)
            raise await self._not_held(conn, key)
        if release:
            self._held.pop(key, None)
        return self._record(row)

    @staticmethod
    async def _not_held(conn: Any, key: str) -> Exception:
        owner = await conn.fetchrow(f"SELECT lease_owner FROM {_TABLE} WHERE key = $1", key)
        return KeyError(key) if owner is None else LeaseLostError(key, owner["lease_owner"])

    async def update(self, key: str, *, now: float, release: bool = False, **fields: Any) -> OutboxRecord:
        """Fenced write of ``fields`` on row ``key`` (see :meth:`Outbox.update`).

        Raises:
            KeyError: No row has that key.
            LeaseLostError: Another worker holds the row's lease.
            SidTakenError: ``sid`` is already the SID of another row.
            ValueError: A field is not a writable column.
            OutboxUnavailableError: The database cannot be reached.
        """
        import asyncpg

        check_fields(fields)
        increment = fields.get("attempts") == "+1"
        if increment:
            fields = {k: v for k, v in fields.items() if k != "attempts"}
        try:
            async with self._connection() as conn:
                return await self._write(conn, key, fields, now=now, release=release, increment=increment)
        except asyncpg.UniqueViolationError:
            raise SidTakenError(key) from None

    async def claim_sid(self, key: str, sid: str, *, now: float, **fields: Any) -> OutboxRecord | None:
        """Record ``sid`` on row ``key`` unless another row has it (see :meth:`Outbox.claim_sid`)."""
        import asyncpg

        check_fields(fields)
        try:
            async with self._connection() as conn:
                return await self._write(conn, key, {**fields, "sid": sid}, now=now, release=False)
        except asyncpg.UniqueViolationError:  # the partial unique index decides, atomically
            return None

    async def get(self, key: str) -> OutboxRecord | None:
        """The row for ``key``, or ``None``."""
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT * FROM {_TABLE} WHERE key = $1", key)
        return self._record(row) if row is not None else None

    async def by_sid(self, sid: str) -> OutboxRecord | None:
        """The row whose provider SID is ``sid``, or ``None``."""
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT * FROM {_TABLE} WHERE sid = $1", sid)
        return self._record(row) if row is not None else None

    async def unfinished(self) -> list[OutboxRecord]:
        """Rows left ``pending``, ``sending`` or ``ambiguous``, oldest first (whoever leases them)."""
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT * FROM {_TABLE} WHERE status = ANY($1) ORDER BY created_at",
                                    list(UNFINISHED_STATUSES))
        return [self._record(r) for r in rows]

    async def take_unfinished(
        self, *, now: float, min_age: float = 0.0, limit: int = 100, exclude: Iterable[str] = ()
    ) -> list[OutboxRecord]:
        """Lease unfinished rows for recovery (see :meth:`Outbox.take_unfinished`); ``SKIP LOCKED``.

        Unlike the SQLite outbox, a row this worker still leases is never taken, not even one
        this handle forgot: a claim on another connection may have just committed a row whose
        hold this query cannot see yet. A forgotten row (a cancelled send) is taken once its
        lease runs out, by this worker or another.
        """
        skip = list(set(exclude) | set(self._held))
        async with self._connection(transaction=True) as conn:
            rows = await conn.fetch(
                f"""UPDATE {_TABLE} SET lease_owner = $1, lease_until = $2, lease_token = lease_token + 1
                    WHERE key IN (
                        SELECT key FROM {_TABLE}
                        WHERE status = ANY($3) AND updated_at <= $4
                          AND (lease_owner IS NULL OR lease_until < $5)
                          AND key <> ALL($7)
                        ORDER BY created_at LIMIT $6
                        FOR UPDATE SKIP LOCKED)
                    RETURNING *""",
                self.worker_id, self.lease_end(now), list(UNFINISHED_STATUSES), now - min_age, now, limit,
                skip)
        for row in rows:  # held once committed (a failed commit leaves them to expire, not held forever)
            self._held[row["key"]] = row["lease_token"]
        return sorted((self._record(r) for r in rows), key=lambda r: (r.created_at, r.key))

    async def renew_leases(self, keys: Iterable[str], *, now: float) -> set[str]:
        """Extend the leases this handle holds on ``keys`` (see :meth:`Outbox.renew_leases`)."""
        held = {k: self._held[k] for k in keys if k in self._held}
        if not held:
            return set()
        async with self._connection() as conn:
            renewed = await conn.fetch(
                f"""UPDATE {_TABLE} AS t SET lease_until = $1
                    FROM unnest($2::text[], $3::int[]) AS h(key, token)
                    WHERE t.key = h.key AND t.lease_token = h.token AND t.lease_owner = $4 AND t.status = ANY($5)
                    RETURNING t.key""",
                self.lease_end(now), list(held), list(held.values()), self.worker_id,
                list(UNFINISHED_STATUSES))
        lost = set(held) - {r["key"] for r in renewed}
        for key in lost:
            if self._held.get(key) == held[key]:
                del self._held[key]
        return lost

    async def for_call(self, call_id: str) -> list[OutboxRecord]:
        """All rows of a call, oldest first."""
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT * FROM {_TABLE} WHERE call_id = $1 ORDER BY created_at, key", call_id)
        return [self._record(r) for r in rows]

    async def record_delivery(
        self, sid: str, status: str, error_code: int | None, *, now: float
    ) -> tuple[OutboxRecord | None, bool]:
        """Apply a status callback; delivery only moves forward (see :meth:`Outbox.record_delivery`)."""
        async with self._connection(transaction=True) as conn:
            row = await conn.fetchrow(f"SELECT * FROM {_TABLE} WHERE sid = $1 FOR UPDATE", sid)
            if row is None:
                return None, False
            if not delivery_advances(row["delivery"], status):
                return self._record(row), False
            row = await conn.fetchrow(
                f"UPDATE {_TABLE} SET delivery = $2, delivery_error = $3, updated_at = $4 WHERE sid = $1 RETURNING *",
                sid, status, error_code, now)
            return self._record(row), True

    async def hold_status(self, sid: str, status: str, error_code: int | None, *, now: float) -> None:
        """Keep a status callback for a SID no row has yet; see :meth:`HeldStatusStore.hold_status`."""
        ranked = delivery_rank(status)
        if ranked is None:  # no delivery status: nothing a row could take from it
            return
        rank, final = ranked
        async with self._connection(transaction=True) as conn:
            await conn.execute(f"DELETE FROM {_HELD} WHERE received_at < $1", now - _outbox.HELD_STATUS_SECONDS)
            await conn.execute(HOLD_STATUS_SQL.format(table=_HELD, marks="$1, $2, $3, $4, $5, $6"),
                               sid, status, error_code, now, rank, int(final))
            await conn.execute(f"DELETE FROM {_HELD} WHERE seq IN (SELECT seq FROM {_HELD} "
                               "ORDER BY seq DESC OFFSET $1)", _outbox.HELD_STATUS_MAX)

    async def take_held_status(self, sid: str) -> tuple[str, int | None] | None:
        """Remove and return the held status of ``sid``; see :meth:`HeldStatusStore.take_held_status`."""
        async with self._connection() as conn:
            row = await conn.fetchrow(f"DELETE FROM {_HELD} WHERE sid = $1 RETURNING status, error_code", sid)
        return None if row is None else (row["status"], row["error_code"])
