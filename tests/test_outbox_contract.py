"""The outbox contract, run on both implementations: SQLite (embedded default) and PostgreSQL (fleets).

Every test gets two handles on one store (two workers: ``w1`` and ``w2``), a SQLite file or a fresh
database on a real PostgreSQL server.
"""

import asyncio
import dataclasses
import uuid

import pytest

from incall_sms.errors import OutboxUnavailableError
from incall_sms.outbox import (
    HELD_STATUS_SECONDS,
    TABLE_COLUMNS,
    ClaimOutcome,
    LeaseLostError,
    Outbox,
    OutboxRecord,
    SidTakenError,
)

T0 = 1_800_000_000.0
CALLER = "+14155552671"


@pytest.fixture(params=["sqlite", "postgres"])
async def workers(request, tmp_path):
    """``make(worker_id, lease_seconds=30)`` -> an outbox handle on the test's shared store."""
    opened = []
    if request.param == "postgres":
        from incall_sms.outbox_postgres import PostgresOutbox
        from tests.helpers.postgres import fresh_database

        url = await fresh_database(request.getfixturevalue("postgres_server_url"), f"contract_{uuid.uuid4().hex[:12]}")

        def make(worker_id, lease_seconds=30.0):
            opened.append(PostgresOutbox(url, worker_id=worker_id, lease_seconds=lease_seconds, clock=host_clock))
            return opened[-1]
    else:
        def make(worker_id, lease_seconds=30.0):
            opened.append(Outbox(tmp_path / "outbox.db", worker_id=worker_id, lease_seconds=lease_seconds,
                                 clock=host_clock))
            return opened[-1]
    yield make
    for outbox in opened:
        await outbox.aclose()


def host_clock():
    """The host clock the outboxes see: the tests' time, whatever the real date (leases end at max(now, clock))."""
    return T0


def row(key="CA1:link:1", *, call_id="CA1", action="link", turn=1, status="pending", at=T0, to=CALLER, **extra):
    return OutboxRecord(key=key, call_id=call_id, action=action, turn=turn, status=status, to_number=to,
                        from_number="+14155550100", body="https://example.com", created_at=at, updated_at=at,
                        **extra)


async def claim(outbox, record, *, once=True, per_call=5, per_destination=None, window=24 * 3600):
    return await outbox.claim(record, once_per_call=once, max_per_call=per_call,
                              max_per_destination=per_destination, window=window)


async def test_claim_is_once_per_key_and_a_row_round_trips(workers):
    w1 = workers("w1")
    record = row(media_urls=("https://example.com/a.jpg", "https://example.com/b.png"), segments=2, encoding="GSM-7")
    outcome, stored = await claim(w1, record)
    assert outcome is ClaimOutcome.CREATED
    again, existing = await claim(w1, dataclasses.replace(record, body="other"))
    assert again is ClaimOutcome.DUPLICATE and existing.body == "https://example.com"
    got = await w1.get(record.key)
    assert dataclasses.replace(got, lease_owner=None, lease_until=None, lease_token=0) == record
    assert (got.lease_owner, got.lease_until, got.lease_token) == ("w1", T0 + 30, 1)
    assert w1.held == {record.key}
    assert await w1.get("nope") is None


async def test_refused_rows_are_replaced_active_ones_are_not(workers):
    w1 = workers("w1")
    assert (await claim(w1, row(status="skipped", reason="missing_variable")))[0] is ClaimOutcome.CREATED
    assert (await w1.get("CA1:link:1")).lease_owner is None  # nothing to send: nobody leases it
    outcome, stored = await claim(w1, row())
    assert outcome is ClaimOutcome.CREATED and (await w1.get("CA1:link:1")).status == "pending"
    await w1.update("CA1:link:1", now=T0, release=True, status="failed", reason="not_mobile")
    assert (await claim(w1, row(at=T0 + 1)))[0] is ClaimOutcome.CREATED
    await w1.update("CA1:link:1", now=T0 + 2, status="accepted", sid="SM1")
    assert (await claim(w1, row(at=T0 + 3)))[0] is ClaimOutcome.DUPLICATE


async def test_once_per_call_and_caps(workers):
    w1 = workers("w1")
    assert (await claim(w1, row("CA1:link:1")))[0] is ClaimOutcome.CREATED
    outcome, stored = await claim(w1, row("CA1:link:2", turn=2))
    assert outcome is ClaimOutcome.DUPLICATE and stored.key == "CA1:link:1"
    assert (await claim(w1, row("CA1:link:2", turn=2), once=False))[0] is ClaimOutcome.CREATED
    assert (await claim(w1, row("CA1:menu:3", action="menu", turn=3), per_call=2))[0] is ClaimOutcome.LIMIT_REACHED
    # per destination, across calls, within the window only
    assert (await claim(w1, row("CA2:link:1", call_id="CA2"), per_destination=2))[0] is ClaimOutcome.LIMIT_REACHED
    later = T0 + 7200
    assert (await claim(w1, row("CA2:link:1", call_id="CA2", at=later), per_destination=2,
                        window=3600))[0] is ClaimOutcome.CREATED
    assert [r.key for r in await w1.for_call("CA1")] == ["CA1:link:1", "CA1:link:2"]


async def test_update_counts_attempts_and_checks_fields(workers):
    w1 = workers("w1")
    await claim(w1, row())
    first = await w1.update("CA1:link:1", now=T0 + 1, status="sending", attempts="+1")
    second = await w1.update("CA1:link:1", now=T0 + 5, attempts="+1")
    assert (first.attempts, first.first_attempt_at) == (1, T0 + 1)
    assert (second.attempts, second.first_attempt_at, second.updated_at) == (2, T0 + 1, T0 + 5)
    assert second.lease_until == T0 + 5 + 30  # a write by the holder extends its lease
    with pytest.raises(ValueError, match="lease_owner"):
        await w1.update("CA1:link:1", now=T0, lease_owner="w2")
    with pytest.raises(ValueError, match="lease_token"):
        await w1.update("CA1:link:1", now=T0, lease_token=9)
    with pytest.raises(KeyError):
        await w1.update("missing", now=T0, status="sending")


async def test_a_sid_belongs_to_one_row(workers):
    w1 = workers("w1")
    await claim(w1, row("CA1:link:1"))
    await claim(w1, row("CA2:link:1", call_id="CA2"))
    await w1.update("CA1:link:1", now=T0, release=True, status="accepted", sid="SM1")
    with pytest.raises(SidTakenError):
        await w1.update("CA2:link:1", now=T0, sid="SM1")
    assert await w1.claim_sid("CA2:link:1", "SM1", now=T0) is None
    claimed = await w1.claim_sid("CA2:link:1", "SM2", now=T0, status="accepted")
    assert (claimed.sid, claimed.status) == ("SM2", "accepted")
    assert (await w1.by_sid("SM2")).key == "CA2:link:1" and await w1.by_sid("SM9") is None


async def test_delivery_only_moves_forward(workers):
    w1, w2 = workers("w1"), workers("w2")
    await claim(w1, row())
    await w1.update("CA1:link:1", now=T0, release=True, status="accepted", sid="SM1")
    assert await w2.record_delivery("SM404", "delivered", None, now=T0) == (None, False)
    record, changed = await w2.record_delivery("SM1", "sent", None, now=T0 + 1)  # any worker applies callbacks
    assert changed and record.delivery == "sent"
    assert (await w2.record_delivery("SM1", "queued", None, now=T0 + 2))[1] is False  # out of order
    record, changed = await w1.record_delivery("SM1", "undelivered", 30003, now=T0 + 3)
    assert changed and (record.delivery, record.delivery_error) == ("undelivered", 30003)
    assert (await w1.record_delivery("SM1", "delivered", None, now=T0 + 4))[1] is False  # terminal


async def test_a_status_for_a_sid_not_recorded_yet_is_held_for_the_worker_that_records_it(workers):
    # Twilio may post a status callback before the create's answer reached the sender (a filter fails the
    # message within a second): any worker holds it; the worker that records the SID takes it, once
    w1, w2 = workers("w1"), workers("w2")
    assert await w2.take_held_status("SM1") is None
    await w2.hold_status("SM1", "sent", None, now=T0)
    await w2.hold_status("SM1", "failed", 30007, now=T0 + 1)
    await w2.hold_status("SM1", "sent", None, now=T0 + 2)  # out of order: the failure stands
    assert await w1.take_held_status("SM1") == ("failed", 30007)
    assert await w1.take_held_status("SM1") is None  # taken once
    await w1.hold_status("SM2", "delivered", None, now=T0)
    await w1.hold_status("SM3", "failed", 30034, now=T0 + HELD_STATUS_SECONDS + 1)  # SM2 is too old by now
    assert await w2.take_held_status("SM2") is None
    assert await w2.take_held_status("SM3") == ("failed", 30034)


async def test_held_statuses_are_bounded(workers, monkeypatch):
    import incall_sms.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "HELD_STATUS_MAX", 3)
    w1 = workers("w1")
    for n in range(5):
        await w1.hold_status(f"SM{n}", "failed", 30007, now=T0 + n)
    assert [await w1.take_held_status(f"SM{n}") for n in range(5)] == [None, None, *[("failed", 30007)] * 3]
    for n in range(3):  # held before the host's clock stepped back an hour (NTP)
        await w1.hold_status(f"SMold{n}", "sent", None, now=T0 + 3600)
    await w1.hold_status("SMnew", "failed", 30007, now=T0 + 10)  # the newest callback stays, whatever its time
    assert await w1.take_held_status("SMnew") == ("failed", 30007)


async def test_a_hold_racing_a_take_loses_no_status(workers):
    # the sender takes "sent" while the webhook worker holds "failed" for the same message: the failure is
    # either taken with it or left held, never dropped
    taker, holder = workers("w1"), workers("w2")
    await taker.take_held_status("SMwarm")  # both handles open before the races
    lost = []
    for n in range(40):
        sid = f"SM{n:032d}"
        await holder.hold_status(sid, "sent", None, now=T0 + n)
        took, _ = await asyncio.gather(taker.take_held_status(sid),
                                       holder.hold_status(sid, "failed", 30007, now=T0 + n + 0.5))
        if ("failed", 30007) not in (took, await taker.take_held_status(sid)):
            lost.append(sid)
    assert lost == []


async def test_leases_fence_writes(workers):
    w1, w2 = workers("w1", lease_seconds=10), workers("w2", lease_seconds=10)
    await claim(w1, row())
    with pytest.raises(LeaseLostError) as lost:  # w2 never acquired it
        await w2.update("CA1:link:1", now=T0 + 5, status="sending", attempts="+1")
    assert lost.value.owner == "w1"
    with pytest.raises(LeaseLostError):
        await w2.claim_sid("CA1:link:1", "SM1", now=T0 + 5)
    with pytest.raises(LeaseLostError):  # an expired lease is taken by recovery only, never by a write
        await w2.update("CA1:link:1", now=T0 + 11, status="ambiguous")
    # w1's lease runs out (it died or stalled): w2's recovery takes the row under a new token
    [taken] = await w2.take_unfinished(now=T0 + 11)
    assert (taken.lease_owner, taken.lease_until, taken.lease_token) == ("w2", T0 + 21, 2)
    with pytest.raises(LeaseLostError):
        await w1.update("CA1:link:1", now=T0 + 12, status="sending", attempts="+1")
    assert w1.held == frozenset()  # forgotten: nothing more to write
    released = await w2.update("CA1:link:1", now=T0 + 13, release=True, status="accepted", sid="SM2")
    assert (released.lease_owner, released.lease_until, w2.held) == (None, None, frozenset())
    # the stale worker still cannot touch the finished, released row: no resend, no overwritten SID
    with pytest.raises(LeaseLostError):
        await w1.update("CA1:link:1", now=T0 + 14, status="sending", attempts="+1")
    with pytest.raises(LeaseLostError):
        await w2.update("CA1:link:1", now=T0 + 14, status="sending")  # nor its own finished row
    final = await w1.get("CA1:link:1")
    assert (final.status, final.sid, final.attempts) == ("accepted", "SM2", 0)


async def test_a_stale_holder_of_an_old_token_is_fenced_off_even_as_owner(workers):
    w1 = workers("w1", lease_seconds=10)
    await claim(w1, row())
    w1_again = workers("w1", lease_seconds=10)  # the same worker name, another handle (a restarted process)
    [taken] = await w1_again.take_unfinished(now=T0 + 11)  # its name's row, not held by this handle, lease over
    assert taken.lease_token == 2
    with pytest.raises(LeaseLostError):  # the first handle's token is stale
        await w1.update("CA1:link:1", now=T0 + 12, status="sending", attempts="+1")
    assert (await w1_again.update("CA1:link:1", now=T0 + 12, status="sending", attempts="+1")).attempts == 1


async def test_recovery_takes_only_free_expired_or_unheld_own_rows(workers):
    w1, w2 = workers("w1", lease_seconds=10), workers("w2", lease_seconds=10)
    for i, at in enumerate((T0, T0 + 1, T0 + 2)):
        await claim(w1, row(f"CA{i}:link:1", call_id=f"CA{i}", at=at))
    await w1.update("CA2:link:1", now=T0 + 2, release=True, status="ambiguous")
    await claim(w1, row("CA3:link:1", call_id="CA3", status="skipped"))
    assert [r.key for r in await w2.take_unfinished(now=T0 + 5)] == ["CA2:link:1"]  # released, unfinished
    assert await w2.take_unfinished(now=T0 + 6) == []  # held by w2 now
    assert await w1.take_unfinished(now=T0 + 5) == []  # w1 holds its live rows: never taken from under a send
    w1.forget("CA0:link:1")  # its send ended unfinished (cancelled)
    if isinstance(w1, Outbox):  # its own file: taken back at once
        assert [r.key for r in await w1.take_unfinished(now=T0 + 5)] == ["CA0:link:1"]
    else:  # shared: a live lease of its own is never taken (a claim may have just committed it), it runs out
        assert await w1.take_unfinished(now=T0 + 5) == []
        assert [r.key for r in await w1.take_unfinished(now=T0 + 10.5)] == ["CA0:link:1"]
    taken = await w2.take_unfinished(now=T0 + 40, min_age=0)  # every lease has run out
    assert [(r.key, r.lease_owner, r.lease_until) for r in taken] == [
        ("CA0:link:1", "w2", T0 + 50), ("CA1:link:1", "w2", T0 + 50)]
    # w2 holds CA2 since T0 + 5 but never renewed it: its lease ran out at T0 + 15, so another worker takes it
    assert [r.key for r in await w1.take_unfinished(now=T0 + 41)] == ["CA2:link:1"]
    w3 = workers("w3", lease_seconds=10)
    assert [r.key for r in await w3.take_unfinished(now=T0 + 60, min_age=59.5)] == ["CA0:link:1"]  # min_age
    assert [r.key for r in await w1.unfinished()] == ["CA0:link:1", "CA1:link:1", "CA2:link:1"]


async def test_renewal_keeps_a_lease_and_reports_a_lost_one(workers):
    w1, w2 = workers("w1", lease_seconds=10), workers("w2", lease_seconds=10)
    await claim(w1, row("CA1:link:1"))
    await claim(w1, row("CA2:link:1", call_id="CA2"))
    await claim(w1, row("CA3:link:1", call_id="CA3"))
    await w1.update("CA3:link:1", now=T0, release=True, status="accepted", sid="SM3")
    assert await w1.renew_leases(["CA1:link:1"], now=T0 + 8) == set()
    assert (await w1.get("CA1:link:1")).lease_until == T0 + 18
    assert [r.key for r in await w2.take_unfinished(now=T0 + 12)] == ["CA2:link:1"]  # CA1 was renewed
    lost = await w1.renew_leases(["CA1:link:1", "CA2:link:1", "CA3:link:1", "nope"], now=T0 + 13)
    assert lost == {"CA2:link:1"} and w1.held == {"CA1:link:1"}
    assert (await w1.get("CA3:link:1")).lease_owner is None  # finished rows are not leased again
    assert (await w1.get("CA2:link:1")).lease_owner == "w2"
    assert await w1.renew_leases([], now=T0) == set()


async def test_concurrent_claims_across_workers(workers):
    w1, w2 = workers("w1"), workers("w2")
    same_key = await asyncio.gather(*(claim(w, row()) for w in (w1, w2) * 10))
    assert sum(o is ClaimOutcome.CREATED for o, _ in same_key) == 1
    keys = [f"CA9:link:{t}" for t in range(20)]
    capped = await asyncio.gather(*(claim(w, row(k, call_id="CA9", turn=i), once=False, per_call=3)
                                    for i, (k, w) in enumerate(zip(keys, (w1, w2) * 10, strict=True))))
    assert sum(o is ClaimOutcome.CREATED for o, _ in capped) == 3
    destination = await asyncio.gather(*(claim(w, row(f"CB{i}:link:1", call_id=f"CB{i}", to="+14155550111"),
                                               per_destination=4) for i, w in enumerate((w1, w2) * 10)))
    assert sum(o is ClaimOutcome.CREATED for o, _ in destination) == 4


async def test_concurrent_recovery_never_takes_a_row_twice(workers):
    w1, w2, w3 = workers("w1", lease_seconds=10), workers("w2", lease_seconds=10), workers("w3", lease_seconds=10)
    for i in range(60):
        await claim(w1, row(f"CA{i}:link:1", call_id=f"CA{i}", at=T0 + i / 100))
    first, second = await asyncio.gather(w2.take_unfinished(now=T0 + 31, limit=40),
                                         w3.take_unfinished(now=T0 + 31, limit=40))
    mine, theirs = {r.key for r in first}, {r.key for r in second}
    assert not mine & theirs and len(mine | theirs) == 60
    owners = {r.key: r.lease_owner for r in await w1.unfinished()}
    assert {k for k, o in owners.items() if o == "w2"} == mine


async def test_recovery_skips_the_rows_a_worker_is_working_on(workers):
    w1, w2 = workers("w1", lease_seconds=10), workers("w2", lease_seconds=10)
    for i in range(5):
        await claim(w1, row(f"CA{i}:link:1", call_id=f"CA{i}", at=T0 + i))
    await w2.take_unfinished(now=T0 + 20, limit=3)  # w2 finishes a dead worker's rows...
    # ...and its next pass must reach the others, not fill its batch with the rows it is already sending
    assert [r.key for r in await w2.take_unfinished(now=T0 + 21, limit=1)] == ["CA3:link:1"]
    assert [r.key for r in await w2.take_unfinished(now=T0 + 21, limit=5, exclude={"CA4:link:1"})] == []


async def test_rows_survive_reopening_and_a_closed_handle_refuses_work(workers):
    w1 = workers("w1")
    await claim(w1, row())
    await w1.aclose()
    again = workers("w1")
    assert (await again.get("CA1:link:1")).status == "pending"
    with pytest.raises(OutboxUnavailableError):
        await w1.get("CA1:link:1")


async def test_a_whatsapp_template_row_round_trips_for_recovery(workers):
    w1 = workers("w1")
    variables = '{"1":"Friday 7 pm","2":"Zoë"}'
    record = dataclasses.replace(row(channel="whatsapp", content_sid="HX" + "ab" * 16, content_variables=variables,
                                     segments=1, encoding="WhatsApp"), body="")
    await claim(w1, record)
    await w1.update(record.key, now=T0, status="sending", attempts="+1")
    w2 = workers("w2", lease_seconds=30.0)
    [taken] = await w2.take_unfinished(now=T0 + 31)  # w1 died: w2 takes the row and must resend it exactly
    assert (taken.channel, taken.content_sid, taken.content_variables, taken.body) == (
        "whatsapp", "HX" + "ab" * 16, variables, "")
    assert (await w1.get("CA1:link:1")).channel == "whatsapp"
    outcome, sms_row = await claim(w1, row(key="CA1:other:1", action="other"))
    assert (await w1.get(sms_row.key)).channel == "sms"  # the default for SMS rows


async def test_a_table_of_an_earlier_version_gets_the_whatsapp_columns(workers, request, tmp_path):
    """An outbox created before WhatsApp (no channel/content columns) is migrated when opened."""
    old_columns = ",\n".join(line.strip().rstrip(",") for line in TABLE_COLUMNS.strip().splitlines()
                             if line.split()[0] not in ("channel", "content_sid", "content_variables"))
    if request.node.callspec.params["workers"] == "postgres":
        import asyncpg

        probe = workers("probe")
        url = probe._url
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"CREATE TABLE incall_sms_outbox ({old_columns.format(real='DOUBLE PRECISION')})")
            await conn.execute("INSERT INTO incall_sms_outbox (key, call_id, action, turn, status, created_at, "
                               "updated_at) VALUES ('old:a:1', 'old', 'a', 1, 'accepted', 1, 1)")
        finally:
            await conn.close()
    else:
        import sqlite3

        with sqlite3.connect(tmp_path / "outbox.db") as conn:
            conn.execute(f"CREATE TABLE outbox ({old_columns.format(real='REAL')})")
            conn.execute("INSERT INTO outbox (key, call_id, action, turn, status, created_at, updated_at) "
                         "VALUES ('old:a:1', 'old', 'a', 1, 'accepted', 1, 1)")
        conn.close()
    w1 = workers("w1")
    old = await w1.get("old:a:1")
    assert (old.status, old.channel, old.content_sid, old.content_variables) == ("accepted", "sms", None, None)
    record = row(channel="whatsapp", content_sid="HX" + "cd" * 16, content_variables='{"1":"x"}')
    assert (await claim(w1, record))[0] is ClaimOutcome.CREATED
    assert (await w1.get(record.key)).content_sid == "HX" + "cd" * 16
