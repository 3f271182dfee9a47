"""Leases in the dispatcher: two workers on one outbox file (the contract tests show PostgreSQL keeps the
same rules; tests/test_fleet.py runs real worker processes on PostgreSQL)."""

import asyncio
import time

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import ManualClock, SystemClock
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome
from incall_sms.errors import SendError, SendErrorKind
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox, OutboxRecord
from incall_sms.providers.local import LocalProvider
from tests.helpers.sms import AGENT, CALLER

ACTIONS = parse_actions({"actions": [
    {"name": "menu", "condition": "if the caller wants the menu", "content": {"template": "Menu: https://e.com/m"}}]})
CALL = CallContext(call_id="CA" + "1" * 32, caller_number=CALLER, agent_number=AGENT)
KEY = f"{CALL.call_id}:menu:1"


def worker(outbox, clock, provider=None):
    return Dispatcher(actions=ACTIONS, provider=provider or LocalProvider(clock=clock.now), outbox=outbox,
                      optouts=SqliteOptOutStore(), clock=clock, ambiguity_delay=0.0, recovery_min_age=0.0)


class TakenOverMidSend(LocalProvider):
    """The request times out; meanwhile the worker's lease ran out and another worker took the row."""

    def __init__(self, other, at, **kwargs):
        super().__init__(**kwargs)
        self.other, self.at = other, at

    async def send(self, sms):
        assert [r.key for r in await self.other.take_unfinished(now=self.at)] == [sms.key]
        raise SendError("timeout", kind=SendErrorKind.AMBIGUOUS)


async def test_a_worker_that_lost_its_lease_writes_nothing_more_and_says_unconfirmed(tmp_path):
    clock = ManualClock()
    a = Outbox(tmp_path / "outbox.db", worker_id="A", lease_seconds=10, clock=clock.now)
    b = Outbox(tmp_path / "outbox.db", worker_id="B", lease_seconds=10, clock=clock.now)
    dispatcher = worker(a, clock, TakenOverMidSend(b, clock.now() + 11, clock=clock.now))
    events = []
    dispatcher.subscribe(events.append)
    result = await dispatcher.send("menu", call=CALL, turn=1)
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")  # honest: B decides now
    assert [(e.kind.value, e.reason) for e in events] == [("queued", None), ("failed", "unconfirmed")]
    row = await b.get(KEY)
    assert (row.status, row.lease_owner, row.attempts) == ("sending", "B", 1)  # A wrote nothing after losing it
    assert dispatcher.leases_lost == 1
    a.close()
    b.close()


class StallThenRetry(LocalProvider):
    """First request: refused with 429 (certainly not sent); while worker A backs off (stalled past its lease),
    worker B's recovery takes the row over and sends it. A's retry must not send it again."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.takeover = None

    async def send(self, sms):
        if self.takeover is not None:
            takeover, self.takeover = self.takeover, None
            await takeover()
            raise SendError("rate_limited", kind=SendErrorKind.RETRYABLE, code=20429)
        return await super().send(sms)


async def test_a_worker_whose_row_was_taken_over_and_finished_never_sends_it_again(tmp_path):
    a_clock, b_clock = ManualClock(), ManualClock()
    a = Outbox(tmp_path / "outbox.db", worker_id="A", lease_seconds=30, clock=a_clock.now)
    b = Outbox(tmp_path / "outbox.db", worker_id="B", lease_seconds=30, clock=b_clock.now)
    provider = StallThenRetry(clock=a_clock.now)
    worker_a, worker_b = worker(a, a_clock, provider), worker(b, b_clock, provider)
    recovered = []

    async def b_recovers():
        b_clock.advance(31)  # A's lease ran out
        recovered.extend(await worker_b.recover())

    provider.takeover = b_recovers
    result = await worker_a.send("menu", call=CALL, turn=1)
    assert [r.outcome for r in recovered] == [SendOutcome.ACCEPTED]  # B looked up (none) and sent it
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert len(await provider.inbox()) == 1  # once, whatever A's retry thought
    row = await b.get(KEY)
    assert (row.status, row.sid, row.lease_owner) == ("accepted", recovered[0].sid, None)
    a.close()
    b.close()


class SlowToAnswer(LocalProvider):
    """The first request times out (maybe sent); the lookup then takes 3 s (two leases) to answer "none"."""

    timed_out = False

    async def send(self, sms):
        if not self.timed_out:
            self.timed_out = True
            raise SendError("timeout", kind=SendErrorKind.AMBIGUOUS)
        return await super().send(sms)

    async def find_sent(self, sms, *, since):
        await asyncio.sleep(3.0)
        return await super().find_sent(sms, since=since)


async def test_leases_are_renewed_while_a_send_is_in_flight(tmp_path):
    a = Outbox(tmp_path / "outbox.db", worker_id="A", lease_seconds=1.5)
    b = Outbox(tmp_path / "outbox.db", worker_id="B", lease_seconds=1.5)
    clock = SystemClock()
    provider = SlowToAnswer(clock=clock.now)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=a, optouts=SqliteOptOutStore(), clock=clock,
                            ambiguity_delay=0.0)
    send = asyncio.get_running_loop().create_task(dispatcher.send("menu", call=CALL, turn=1))
    taken, leases = [], set()
    while not send.done():
        await asyncio.sleep(0.05)
        taken += await b.take_unfinished(now=clock.now())
        row = await b.get(KEY)
        if row is not None and row.lease_until is not None:
            leases.add(row.lease_until)
    result = await send
    assert taken == []  # the send outlived two leases, and B never got the row
    assert len(leases) >= 5  # renewed every half second
    assert result.accepted and len(await provider.inbox()) == 1  # the lookup said "none": sent once
    assert (await a.get(KEY)).lease_owner is None  # the last write released it
    a.close()
    b.close()


async def test_recovery_takes_a_dead_worker_s_row_only_when_its_lease_ran_out(tmp_path):
    clock = ManualClock()
    dead = Outbox(tmp_path / "outbox.db", worker_id="A", lease_seconds=30, clock=clock.now)
    now = clock.now()
    record = OutboxRecord(key=KEY, call_id=CALL.call_id, action="menu", turn=1, status="pending", to_number=CALLER,
                          from_number=AGENT, body="Menu: https://e.com/m", created_at=now, updated_at=now)
    await dead.claim(record, once_per_call=True, max_per_call=3)
    await dead.update(KEY, now=now, status="sending", attempts="+1")  # A died with the request on the wire
    dead.close()
    b = Outbox(tmp_path / "outbox.db", worker_id="B", lease_seconds=30, clock=clock.now)
    provider = LocalProvider(clock=clock.now)
    dispatcher = worker(b, clock, provider)
    clock.advance(20)
    assert await dispatcher.recover() == []  # A's lease still runs: maybe A is only slow
    clock.advance(11)
    [result] = await dispatcher.recover()
    assert result.outcome is SendOutcome.ACCEPTED  # looked up (none), then sent once
    assert [m.body for m in await provider.inbox()] == ["Menu: https://e.com/m"]
    assert await dispatcher.recover() == []
    b.close()


class OutageAfterAccept(LocalProvider):
    """The provider accepts the text; then the outbox's database goes down (fast shutdown)."""

    def __init__(self, server, **kwargs):
        super().__init__(**kwargs)
        self.server = server

    async def send(self, sms):
        receipt = await super().send(sms)
        await asyncio.to_thread(self.server.stop)
        return receipt


async def test_an_outbox_outage_is_told_honestly_and_loses_nothing():
    from incall_sms.outbox_postgres import PostgresOutbox
    from tests.helpers.postgres import fresh_database, postgres_server

    clock = ManualClock(start=time.time())
    with postgres_server() as server:
        url = await fresh_database(server.url, "outage")
        await asyncio.to_thread(server.stop)
        # unreachable before the claim: nothing recorded, nothing sent, a retryable failure
        outbox = PostgresOutbox(url, worker_id="A", lease_seconds=30, connect_timeout=2, clock=clock.now)
        provider = OutageAfterAccept(server, clock=clock.now)
        events = []
        dispatcher = worker(outbox, clock, provider)
        dispatcher.subscribe(events.append)
        result = await dispatcher.send("menu", call=CALL, turn=1)
        assert (result.outcome, result.reason, result.retryable) == (SendOutcome.FAILED, "outbox_unavailable", True)
        assert [(e.kind.value, e.reason) for e in events] == [("failed", "outbox_unavailable")]
        assert await provider.inbox() == []
        other = CallContext(call_id="CA" + "2" * 32, caller_number="+14155550199", agent_number=AGENT)
        await dispatcher.optouts.opt_out(other.caller_number, now=clock.now())
        refused = await dispatcher.send("menu", call=other, turn=1)  # a refusal stands without its record
        assert (refused.outcome, refused.reason) == (SendOutcome.FAILED, "opted_out")
        del events[:]

        # back up; then gone right after the provider accepted: the caller hears the truth (sent)
        await asyncio.to_thread(server.start)
        result = await dispatcher.send("menu", call=CALL, turn=1)
        assert result.accepted and [e.kind.value for e in events] == ["queued", "sent"]
        await asyncio.to_thread(server.start)
        row = await outbox.get(KEY)
        assert (row.status, row.sid) == ("sending", None)  # not recorded: the outbox was down
        assert await dispatcher.recover() == []  # its lease still runs (a shared outbox never takes a live one)
        clock.advance(60)  # well past the lease (set on this host's clock when the claim ran)
        [recovered] = await dispatcher.recover()  # the lease ran out: taken; the lookup finds the message
        assert recovered.accepted and recovered.sid == result.sid
        assert len(await provider.inbox()) == 1 and (await outbox.get(KEY)).status == "accepted"
        await outbox.aclose()


class StallsAfterMarkingSending(Outbox):
    """The write that marks the row sending returns late (a paused VM, a slow database reply), once."""

    stalled = False

    async def update(self, key, *, now, release=False, **fields):
        row = await super().update(key, now=now, release=release, **fields)
        if fields.get("status") == "sending" and not self.stalled:
            self.stalled = True
            await asyncio.sleep(2.2)  # most of the 3 s lease is gone by the time the request could start
        return row


async def test_a_request_never_starts_on_a_lease_that_could_run_out_under_it(tmp_path):
    outbox = StallsAfterMarkingSending(tmp_path / "outbox.db", lease_seconds=3)
    clock = SystemClock()
    provider = LocalProvider(clock=clock.now)
    dispatcher = worker(outbox, clock, provider)
    result = await dispatcher.send("menu", call=CALL, turn=1)
    assert outbox.stalled and result.accepted
    assert provider.requests == 1  # the stalled attempt sent nothing; the retry, on a fresh lease, sent it once
    assert (await outbox.get(KEY)).attempts == 2
    outbox.close()


async def test_a_send_cancelled_during_its_claim_is_recovered(tmp_path):
    import sqlite3

    outbox = Outbox(tmp_path / "outbox.db")
    clock = SystemClock()
    provider = LocalProvider(clock=clock.now)
    dispatcher = worker(outbox, clock, provider)
    blocker = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the claim waits for the write lock on the database thread
    send = asyncio.get_running_loop().create_task(dispatcher.send("menu", call=CALL, turn=1))
    await asyncio.sleep(0.3)
    send.cancel()  # e.g. the call was cancelled; the claim still commits on the database thread
    blocker.execute("COMMIT")
    for _ in range(100):
        if await outbox.get(KEY) is not None:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    [recovered] = await dispatcher.recover()  # not stuck "held" by nobody: recovered (sent once)
    assert recovered.accepted and provider.requests == 1
    blocker.close()
    outbox.close()


async def test_a_statement_that_hangs_counts_as_an_outage(postgres_url):
    import asyncpg

    from incall_sms.errors import OutboxUnavailableError
    from incall_sms.outbox_postgres import PostgresOutbox

    outbox = PostgresOutbox(postgres_url, worker_id="A", command_timeout=0.5)
    now = time.time()
    record = OutboxRecord(key=KEY, call_id=CALL.call_id, action="menu", turn=1, status="pending", to_number=CALLER,
                          from_number=AGENT, body="Menu: https://e.com/m", created_at=now, updated_at=now)
    await outbox.claim(record, once_per_call=True, max_per_call=3)
    locker = await asyncpg.connect(postgres_url)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM incall_sms_outbox WHERE key = $1 FOR UPDATE", KEY)
            started = time.monotonic()
            with pytest.raises(OutboxUnavailableError):  # not a raw asyncpg error escaping send()
                await outbox.update(KEY, now=now, status="sending", attempts="+1")
            assert time.monotonic() - started < 5
    finally:
        await locker.close()
    assert (await outbox.get(KEY)).status == "pending"
    await outbox.aclose()


async def test_start_up_recovery_takes_every_row_not_only_the_first_batch(tmp_path):
    clock = ManualClock()
    crashed = Outbox(tmp_path / "outbox.db", clock=clock.now)
    now = clock.now()
    for i in range(130):  # more than one take's batch of 100
        call_id = f"CA{i:032d}"
        await crashed.claim(OutboxRecord(key=f"{call_id}:menu:1", call_id=call_id, action="menu", turn=1,
                                         status="pending", to_number=CALLER, from_number=AGENT,
                                         body="Menu: https://e.com/m", created_at=now, updated_at=now),
                            once_per_call=True, max_per_call=3)
    crashed.close()
    restarted = Outbox(tmp_path / "outbox.db", clock=clock.now)
    provider = LocalProvider(clock=clock.now)
    results = await worker(restarted, clock, provider).recover()
    assert len(results) == 130 and all(r.accepted for r in results)
    assert len(await provider.inbox()) == 130 and await restarted.unfinished() == []
    restarted.close()
