"""Every send is exactly-once and honest: ambiguity lookups, recovery, re-fires after non-final failures.

Real twilio client against the loopback behaviour peer unless a test needs the local provider.
"""

import asyncio
import dataclasses
import time

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import SystemClock
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome
from incall_sms.errors import SendError, SendErrorKind
from incall_sms.judges.base import Match
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox, OutboxRecord
from incall_sms.providers.local import LocalProvider
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.retry import RetryPolicy
from tests.helpers.sms import AGENT, CALLER, make_engine
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer

ACTIONS = parse_actions({"actions": [
    {"name": "menu", "condition": "if the caller wants the menu", "content": {"template": "Menu: https://e.com/m"}},
    {"name": "booking", "condition": "if the caller wants the booking confirmation",
     "content": {"template": "Booked for {booking_time}."}, "variables": {"booking_time": {}},
     "on_missing_variable": "skip"},
]})


def dispatcher_for(peer, *, outbox=None, max_resends=1, clock=None, **extra):
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=0.5)
    return Dispatcher(actions=ACTIONS, provider=provider, outbox=outbox or Outbox(), optouts=SqliteOptOutStore(),
                      clock=clock or SystemClock(), retry_policy=RetryPolicy(attempts=2, base_delay=0.01, jitter=0),
                      ambiguity_delay=0.0, max_resends=max_resends, **extra)


def call(n):
    return CallContext(call_id=f"CA{n:032x}", caller_number=CALLER, agent_number=AGENT)


# -- 1. the "did it arrive?" lookup only accepts a message that can be this attempt ----------------------


async def test_old_identical_message_is_not_taken_for_a_failed_resend():
    """A caller calls back and asks again: the second, identical text really failed; it must not be 'sent'."""
    async with TwilioPeer() as peer:
        dispatcher = dispatcher_for(peer, max_resends=0)
        first = await dispatcher.send("menu", call=call(1), turn=1)
        assert first.accepted
        peer.messages[0].created -= 120  # the first call was two minutes ago
        peer.faults = [Fault(status=503, commit=False)]  # the new attempt fails before creating anything
        second = await dispatcher.send("menu", call=call(2), turn=1)
        await dispatcher.provider.aclose()
    assert len(peer.messages) == 1
    assert not second.accepted and second.reason == "unconfirmed"  # honest: nothing new exists
    assert second.sid != first.sid


async def test_old_identical_message_does_not_stop_the_resend():
    async with TwilioPeer() as peer:
        dispatcher = dispatcher_for(peer, max_resends=1)
        first = await dispatcher.send("menu", call=call(1), turn=1)
        peer.messages[0].created -= 120
        peer.faults = [Fault(status=503, commit=False)]
        second = await dispatcher.send("menu", call=call(2), turn=1)
        await dispatcher.provider.aclose()
    assert second.accepted and len(peer.messages) == 2
    assert second.sid == peer.messages[1].sid != first.sid


async def test_message_claimed_by_another_row_is_not_taken():
    """Two identical texts seconds apart (inside the clock-skew allowance): the SID of one is never the other's."""
    async with TwilioPeer() as peer:
        dispatcher = dispatcher_for(peer, max_resends=1)
        first = await dispatcher.send("menu", call=call(1), turn=1)
        peer.faults = [Fault(status=503, commit=False)]
        second = await dispatcher.send("menu", call=call(2), turn=1)
        records = await dispatcher.outbox.for_call(call(2).call_id)
        await dispatcher.provider.aclose()
    assert second.accepted and second.sid != first.sid
    assert len(peer.messages) == 2 and records[0].sid == peer.messages[1].sid


async def test_lookup_still_finds_the_message_this_attempt_created():
    async with TwilioPeer() as peer:
        dispatcher = dispatcher_for(peer, max_resends=1)
        peer.faults = [Fault(status=503, commit=True)]  # created, then a 5xx
        result = await dispatcher.send("menu", call=call(1), turn=1)
        await dispatcher.provider.aclose()
    assert result.accepted and len(peer.messages) == 1 and result.sid == peer.messages[0].sid


# -- 2. recovery: never send what the caller was told failed, nothing stale, also periodically -----------


async def test_recovery_never_sends_a_row_the_caller_heard_was_unconfirmed():
    async with TwilioPeer() as peer:
        outbox = Outbox()
        dispatcher = dispatcher_for(peer, outbox=outbox, max_resends=0)
        peer.faults = [Fault(status=503, commit=False)]
        peer.list_faults = [Fault(status=500)] * 3  # the provider cannot say whether it exists
        result = await dispatcher.send("menu", call=call(1), turn=1)
        assert result.reason == "unconfirmed"  # what the caller hears: "I couldn't confirm the text went out"
        await dispatcher.provider.aclose()
        restarted = dispatcher_for(peer, outbox=outbox)  # a later start-up, provider healthy again
        await restarted.recover()
        [row] = await outbox.for_call(call(1).call_id)
        await restarted.provider.aclose()
    assert peer.messages == []
    assert row.status not in ("pending", "sending", "ambiguous")  # closed, not waiting to be resent
    assert await outbox.unfinished() == []


async def test_recovery_expires_rows_older_than_the_window():
    async with TwilioPeer() as peer:
        outbox = Outbox()
        dispatcher = dispatcher_for(peer, outbox=outbox)
        now = time.time()
        old = OutboxRecord(key="CA-old:menu:1", call_id="CA-old", action="menu", turn=1, status="pending",
                           to_number=CALLER, from_number=AGENT, body="Menu: https://e.com/m", segments=1,
                           encoding="GSM-7", created_at=now - 11 * 60, updated_at=now - 11 * 60)
        fresh = dataclasses.replace(old, key="CA-new:menu:1", call_id="CA-new", created_at=now - 30,
                                    updated_at=now - 30)
        for record in (old, fresh):
            await outbox.claim(record, once_per_call=True, max_per_call=3)
            outbox.forget(record.key)  # rows a crashed run left: no task of this process holds them
        await dispatcher.recover()
        old_row, fresh_row = await outbox.get(old.key), await outbox.get(fresh.key)
        await dispatcher.provider.aclose()
    assert [m.body for m in peer.messages] == ["Menu: https://e.com/m"]  # only the fresh one
    assert old_row.status == "expired" and fresh_row.status == "accepted"


async def test_recovery_runs_periodically_and_skips_sends_in_flight():
    async with TwilioPeer() as peer:
        outbox = Outbox()
        dispatcher = dispatcher_for(peer, outbox=outbox, recovery_interval=0.2, recovery_min_age=0.3)
        # a send cut off by the end of its call: the request reached the provider, the answer never came back
        peer.faults = [Fault(delay=5.0, commit=True)]
        task = asyncio.get_running_loop().create_task(dispatcher.send("menu", call=call(1), turn=1))
        await peer.received.wait()
        task.cancel()
        # a send still in flight in this process must not be touched by recovery
        peer.faults = [Fault(delay=1.5, commit=True)]
        in_flight = asyncio.get_running_loop().create_task(dispatcher.send("menu", call=call(2), turn=1))
        async with dispatcher.recovery():
            for _ in range(100):
                row = await outbox.get(f"{call(1).call_id}:menu:1")
                if row.status == "accepted":
                    break
                await asyncio.sleep(0.05)
            second = await in_flight
        await dispatcher.provider.aclose()
    # found by lookup, never resent; two identical texts to one number cannot be told apart by a lookup, so
    # which row records which SID depends on which settles first (the second's answer comes after its timeout)
    assert row.status == "accepted" and second.accepted
    assert {row.sid, second.sid} == {m.sid for m in peer.messages} and len(peer.messages) == 2


# -- 3. a non-final failure does not burn the action -------------------------------------------------------


async def test_refire_after_missing_variable_sends_once_known():
    engine = make_engine(actions={"actions": [
        {"name": "booking", "condition": "if the caller wants the booking confirmation",
         "content": {"template": "Booked for {booking_time}."}, "variables": {"booking_time": {}},
         "on_missing_variable": "skip"}]}, extractor=False)
    match = Match(id="booking", confidence=1.0, reason="test")
    action = engine.actions.get("booking")
    [firing] = engine.claim(action, match=match)
    first = await engine.execute(firing)
    assert first.result.outcome is SendOutcome.SKIPPED and first.result.reason == "missing_variable"
    engine.variables.set("booking_time", "Friday 7 pm")
    [again] = engine.claim(action, match=match)
    assert again.turn == firing.turn  # same turn, same idempotency key
    second = await engine.execute(again)
    assert second.result.accepted, second.result
    inbox = await engine.dispatcher.provider.inbox()
    assert [m.body for m in inbox] == ["Booked for Friday 7 pm."]


async def test_refire_after_sender_busy_sends():
    engine = make_engine(extractor=False)
    provider = engine.dispatcher.provider
    provider.fail_next(*[SendError("rate_limited", kind=SendErrorKind.RETRYABLE, code=20429)] * 3)
    action = engine.actions.get("website_link")
    match = Match(id="website_link", confidence=1.0, reason="test")
    [firing] = engine.claim(action, match=match)
    first = await engine.execute(firing)
    assert first.result.outcome is SendOutcome.FAILED and first.result.retryable
    [again] = engine.claim(action, match=match)
    second = await engine.execute(again)
    assert second.result.accepted, second.result
    assert len(await provider.inbox()) == 1


async def test_tool_retry_with_the_missing_argument_sends_and_says_so():
    from incall_sms.processors.sms_tools import SmsToolset

    engine = make_engine(actions={"actions": [
        {"name": "booking", "condition": "if the caller wants the booking confirmation",
         "content": {"template": "Booked for {booking_time}."},
         "variables": {"booking_time": {"description": "date and time"}}, "on_missing_variable": "skip"}]},
        extractor=False)
    toolset = SmsToolset(engine=engine, speak_filler=False)
    results = []

    @dataclasses.dataclass
    class Params:  # the two fields of pipecat's FunctionCallParams the handler reads
        function_name: str
        arguments: dict
        result_callback: object

    async def collect(result, **_):
        results.append(result)

    await toolset._handle(Params("send_sms_booking", {}, collect))
    await toolset._handle(Params("send_sms_booking", {"booking_time": "Friday 7 pm"}, collect))
    await toolset._handle(Params("send_sms_booking", {"booking_time": "Friday 7 pm"}, collect))
    inbox = await engine.dispatcher.provider.inbox()
    assert results[0]["status"] != "sent" and "missing" in str(results[0]).lower()
    assert results[1]["status"] == "sent"
    assert results[2]["status"] == "already_sent"  # the truth: it was sent, once
    assert [m.body for m in inbox] == ["Booked for Friday 7 pm."]


async def test_tool_call_while_the_send_is_running_is_not_called_sent():
    from incall_sms.processors.sms_tools import SmsToolset

    engine = make_engine(provider=LocalProvider(latency=0.5), extractor=False)
    toolset = SmsToolset(engine=engine, speak_filler=False)
    results = []

    @dataclasses.dataclass
    class Params:
        function_name: str
        arguments: dict
        result_callback: object

    async def collect(result, **_):
        results.append(result)

    first = asyncio.get_running_loop().create_task(toolset._handle(Params("send_sms_website_link", {}, collect)))
    await asyncio.sleep(0.1)
    await toolset._handle(Params("send_sms_website_link", {}, collect))
    await first
    assert results[0]["status"] == "in_progress" and "already" not in results[0].get("say", "").lower()
    assert results[1]["status"] == "sent"


# -- spoken lines --------------------------------------------------------------------------------------------


async def test_to_last4_gives_four_digits():
    engine = make_engine(actions={"actions": [
        {"name": "link", "condition": "if the caller wants the link", "content": {"template": "https://e.com"},
         "confirmation": "Sent to the number ending in {to_last4}.", "failure": "Not sent to {to_last4}."}]},
        extractor=False)
    [firing] = engine.claim(engine.actions.get("link"), match=Match(id="link", confidence=1.0, reason="t"))
    outcome = await engine.execute(firing)
    assert outcome.line == "Sent to the number ending in 2671."


@pytest.mark.parametrize("segments", [1])
async def test_in_process_rate_limiter_enforces_its_maximum_wait(segments):
    from incall_sms.ratelimit import TokenBucketLimiter
    from tests.helpers.virtual_clock import VirtualClock

    clock = VirtualClock()
    limiter = TokenBucketLimiter(rate=10.0, burst=1.0, max_wait=1.0, clock=clock)
    waits, refused = [], 0

    async def one():
        nonlocal refused
        start = clock.monotonic()
        try:
            await limiter.acquire("+14155550100", segments)
        except TimeoutError:
            refused += 1
            return
        waits.append(clock.monotonic() - start)

    async with clock.running():
        await asyncio.gather(*(one() for _ in range(40)))
    assert max(waits) <= 1.0 + 1e-9, max(waits)  # nobody waited longer than the limit
    assert len(waits) == 11 and refused == 29  # 1 token now + 10 within the second; the rest told at once
