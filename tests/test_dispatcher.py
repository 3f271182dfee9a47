"""Dispatcher rules with the embedded local provider and a manual clock."""

import asyncio
import logging
import time

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import ManualClock
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome
from incall_sms.errors import SendError, SendErrorKind
from incall_sms.events import SmsEventKind
from incall_sms.optout import SqliteOptOutStore, classify_keyword
from incall_sms.outbox import Outbox
from incall_sms.providers.local import LocalProvider
from incall_sms.retry import RetryPolicy

CALLER = "+14155552671"
AGENT = "+14155550100"
POOL = ("+14155550111", "+14155550112")

ACTIONS = {
    "presets": {"confirm": "Booking {booking_time} confirmed."},
    "max_sends_per_call": 3,
    "actions": [
        {
            "name": "confirmation",
            "condition": "if the caller asks for the confirmation",
            "content": {"template": "Hi {caller_name}, booked for {{booking_time}}."},
            "variables": {"caller_name": {"default": "there"}, "booking_time": {}},
        },
        {"name": "link", "condition": "if the caller wants the link", "content": {"template": "https://example.com"}},
        {
            "name": "strict",
            "condition": "if the caller asks",
            "content": {"template": "Hi {caller_name}"},
            "variables": {"caller_name": {"default": "there"}},
            "on_missing_variable": "skip",
        },
        {
            "name": "pool",
            "condition": "at the end",
            "sender": "pool",
            "content": {"preset": "confirm"},
            "variables": {"booking_time": {}},
        },
        {
            "name": "to_other",
            "condition": "if the caller wants it sent to their colleague",
            "to": "{{colleague_phone}}",
            "allow_dynamic_destination": True,
            "variables": {"colleague_phone": {}},
            "content": {"template": "Hello from the clinic."},
        },
        {
            "name": "repeatable",
            "condition": "whenever asked",
            "once_per_call": False,
            "content": {"template": "Ping."},
        },
        {
            "name": "long_one",
            "condition": "x x x",
            "max_segments": 1,
            "content": {"template": "Your summary: {summary}"},
            "variables": {"summary": {}},
        },
    ],
}


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
async def parts(clock):
    provider = LocalProvider(clock=clock.now)
    outbox = Outbox()
    optouts = SqliteOptOutStore()
    dispatcher = Dispatcher(
        actions=parse_actions(ACTIONS),
        provider=provider,
        outbox=outbox,
        optouts=optouts,
        clock=clock,
        retry_policy=RetryPolicy(attempts=3, base_delay=1.0, jitter=0),
        pool_numbers=POOL,
    )
    events = []
    dispatcher.subscribe(events.append)
    yield dispatcher, provider, events
    await provider.aclose()
    outbox.close()
    optouts.close()


CALL = CallContext(call_id="CA1", caller_number=CALLER, agent_number=AGENT)


async def test_sends_to_caller_from_agent_number(parts):
    dispatcher, provider, events = parts
    result = await dispatcher.send("confirmation", call=CALL, turn=2, variables={"booking_time": "Fri 7pm"})
    assert result.outcome is SendOutcome.ACCEPTED and result.accepted
    assert result.to_masked == "+1******2671" and result.to_last2 == "71"
    [msg] = await provider.inbox()
    assert (msg.to_number, msg.from_number, msg.body) == (CALLER, AGENT, "Hi there, booked for Fri 7pm.")
    assert [e.kind for e in events] == [SmsEventKind.QUEUED, SmsEventKind.SENT]
    assert all(CALLER not in repr(e) for e in events)


async def test_same_key_sends_once_and_once_per_call(parts):
    dispatcher, provider, _ = parts
    first = await dispatcher.send("link", call=CALL, turn=1)
    again = await dispatcher.send("link", call=CALL, turn=1)
    later = await dispatcher.send("link", call=CALL, turn=4)
    assert first.accepted
    assert again.outcome is SendOutcome.DUPLICATE and later.outcome is SendOutcome.DUPLICATE
    assert provider.requests == 1


async def test_concurrent_same_key_sends_once(parts):
    import asyncio

    dispatcher, provider, _ = parts
    results = await asyncio.gather(*(dispatcher.send("repeatable", call=CALL, turn=7) for _ in range(10)))
    assert sum(r.accepted for r in results) == 1
    assert provider.requests == 1


async def test_per_call_cap(parts):
    dispatcher, provider, _events = parts
    outcomes = [(await dispatcher.send("repeatable", call=CALL, turn=t)).outcome for t in range(5)]
    assert outcomes[:3] == [SendOutcome.ACCEPTED] * 3
    assert outcomes[3:] == [SendOutcome.SKIPPED] * 2
    assert provider.requests == 3
    other_call = CallContext(call_id="CA2", caller_number=CALLER, agent_number=AGENT)
    assert (await dispatcher.send("repeatable", call=other_call, turn=0)).accepted


async def test_missing_variable_policy(parts):
    dispatcher, provider, _ = parts
    skipped = await dispatcher.send("confirmation", call=CALL, turn=1)  # booking_time has no default
    assert skipped.outcome is SendOutcome.SKIPPED and skipped.reason == "missing_variable"
    assert skipped.missing == ("booking_time",)
    strict = await dispatcher.send("strict", call=CALL, turn=1)  # default exists but policy is skip
    assert strict.reason == "missing_variable"
    assert provider.requests == 0
    # a later turn with the value sends
    assert (await dispatcher.send("confirmation", call=CALL, turn=2, variables={"booking_time": "noon"})).accepted


async def test_opt_out_honoured_and_start_lifts_it(parts, clock):
    dispatcher, provider, events = parts
    await dispatcher.optouts.opt_out(CALLER, now=clock.now())
    refused = await dispatcher.send("link", call=CALL, turn=1)
    assert refused.outcome is SendOutcome.FAILED and refused.reason == "opted_out"
    assert provider.requests == 0
    assert events[-1].kind is SmsEventKind.FAILED and events[-1].reason == "opted_out"
    await dispatcher.optouts.opt_in(CALLER)
    assert (await dispatcher.send("link", call=CALL, turn=2)).accepted


def test_keywords():
    assert classify_keyword(" Stop ") == "opt_out"
    assert classify_keyword("UNSUBSCRIBE.") == "opt_out"
    assert classify_keyword("start") == "opt_in"
    assert classify_keyword("help") == "help"
    assert classify_keyword("please stop calling me") is None


async def test_provider_opt_out_error_records_opt_out(clock):
    provider = LocalProvider(opted_out=frozenset({CALLER}), clock=clock.now)
    optouts = SqliteOptOutStore()
    dispatcher = Dispatcher(
        actions=parse_actions(ACTIONS), provider=provider, outbox=Outbox(), optouts=optouts, clock=clock
    )
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert (result.outcome, result.reason, result.error_code) == (SendOutcome.FAILED, "opted_out", 21610)
    assert await optouts.is_opted_out(CALLER)
    assert provider.requests == 1
    await dispatcher.send("repeatable", call=CALL, turn=2)
    assert provider.requests == 1  # not even tried again


async def test_permanent_error_not_retried(parts):
    dispatcher, provider, _ = parts
    provider.fail_next(SendError("not_mobile", kind=SendErrorKind.PERMANENT, code=21614))
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert result.reason == "not_mobile" and not result.retryable
    assert provider.requests == 1


async def test_retryable_error_retried_with_backoff(parts, clock):
    dispatcher, provider, _ = parts
    provider.fail_next(*[SendError("rate_limited", kind=SendErrorKind.RETRYABLE, status=429)] * 2)
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert result.accepted
    assert provider.requests == 3
    assert clock.sleeps == [1.0, 2.0]


async def test_retryable_exhausted_fails_honestly(parts):
    dispatcher, provider, _ = parts
    provider.fail_next(*[SendError("rate_limited", kind=SendErrorKind.RETRYABLE, status=429)] * 3)
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert result.outcome is SendOutcome.FAILED and result.retryable
    assert provider.requests == 3


async def test_pool_sender_sticky_and_preset(parts):
    dispatcher, provider, _ = parts
    result = await dispatcher.send("pool", call=CALL, turn=9, variables={"booking_time": "Mon 10am"})
    assert result.accepted
    [msg] = await provider.inbox()
    assert msg.from_number in POOL and msg.body == "Booking Mon 10am confirmed."


async def test_dynamic_destination_validated(parts):
    dispatcher, _provider, _ = parts
    bad = await dispatcher.send("to_other", call=CALL, turn=1, variables={"colleague_phone": "+1 900"})
    assert bad.reason == "invalid_number"
    ok = await dispatcher.send("to_other", call=CALL, turn=2, variables={"colleague_phone": "(650) 253-0000"})
    assert ok.accepted and ok.to_masked == "+1******0000"


async def test_unknown_caller_number(parts):
    dispatcher, _provider, _ = parts
    result = await dispatcher.send("link", call=CallContext(call_id="CA9", agent_number=AGENT), turn=1)
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "invalid_number")


async def test_segment_cap(parts):
    dispatcher, provider, _ = parts
    result = await dispatcher.send("long_one", call=CALL, turn=1, variables={"summary": "word " * 40})
    assert (result.outcome, result.reason, result.segments) == (SendOutcome.FAILED, "too_long", 2)
    assert provider.requests == 0


async def test_prompt_body_cleaned_and_smart_encoded(clock):
    actions = parse_actions(
        {"actions": [{"name": "p", "condition": "x x x", "content": {"prompt": "write it", "template": "fallback"}}]}
    )
    provider = LocalProvider(clock=clock.now)
    dispatcher = Dispatcher(
        actions=actions, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(), clock=clock
    )
    result = await dispatcher.send("p", call=CALL, turn=1, body="It’s  booked —\x07 see you\n")
    assert result.accepted and result.encoding == "GSM-7"
    [msg] = await provider.inbox()
    assert msg.body == "It's booked - see you"
    too_long = await dispatcher.send("p", call=CALL, turn=2, body="🙂" * 150)
    assert too_long.reason == "too_long"  # LLM text over 3 segments


async def test_status_callbacks_forward_only(parts):
    dispatcher, _provider, events = parts
    result = await dispatcher.send("link", call=CALL, turn=1)
    events.clear()
    assert await dispatcher.handle_status(result.sid, "sent") is None  # progress, no event
    delivered = await dispatcher.handle_status(result.sid, "delivered")
    assert delivered is not None and delivered.kind is SmsEventKind.DELIVERED
    assert await dispatcher.handle_status(result.sid, "delivered") is None  # duplicate
    assert await dispatcher.handle_status(result.sid, "sent") is None  # out of order
    assert await dispatcher.handle_status(result.sid, "failed", 30003) is None  # terminal already
    assert await dispatcher.handle_status("SMunknown", "delivered") is None
    assert [e.kind for e in events] == [SmsEventKind.DELIVERED]


async def test_undelivered_callback_raises_failed_with_reason(parts):
    dispatcher, _provider, _events = parts
    result = await dispatcher.send("link", call=CALL, turn=1)
    event = await dispatcher.handle_status(result.sid, "undelivered", 30006)
    assert event.kind is SmsEventKind.FAILED and event.reason == "not_mobile" and event.error_code == 30006


async def test_logs_carry_no_numbers_or_bodies(parts, caplog):
    caplog.set_level(logging.DEBUG)
    dispatcher, provider, _ = parts
    provider.fail_next(SendError("rate_limited", kind=SendErrorKind.RETRYABLE))
    await dispatcher.send("confirmation", call=CALL, turn=1, variables={"booking_time": "Fri 7pm"})
    text = caplog.text
    assert caplog.records
    assert "4155552671" not in text and "5552671" not in text and "Fri 7pm" not in text


async def test_broken_subscriber_does_not_break_send(parts):
    dispatcher, _provider, _ = parts

    def boom(event):
        raise RuntimeError("subscriber bug")

    dispatcher.subscribe(boom)
    assert (await dispatcher.send("link", call=CALL, turn=1)).accepted


async def test_sender_rate_limit_spreads_sends(clock):
    from incall_sms.ratelimit import TokenBucketLimiter

    provider = LocalProvider(clock=clock.now)
    dispatcher = Dispatcher(actions=parse_actions(ACTIONS), provider=provider, outbox=Outbox(),
                            optouts=SqliteOptOutStore(), clock=clock,
                            rate_limiter=TokenBucketLimiter(rate=1.0, burst=2, clock=clock))
    for index in range(5):  # five calls, one text each, all from the agent's long code
        call = CallContext(call_id=f"CA{index}", caller_number=CALLER, agent_number=AGENT)
        assert (await dispatcher.send("link", call=call, turn=1)).accepted
    assert clock.sleeps == [1.0, 1.0, 1.0]  # burst of 2, then one segment per second


async def test_sender_rate_limit_gives_up_honestly(clock):
    from incall_sms.ratelimit import TokenBucketLimiter

    dispatcher = Dispatcher(actions=parse_actions(ACTIONS), provider=LocalProvider(clock=clock.now), outbox=Outbox(),
                            optouts=SqliteOptOutStore(), clock=clock,
                            retry_policy=RetryPolicy(attempts=1),
                            rate_limiter=TokenBucketLimiter(rate=0.01, burst=1, max_wait=5, clock=clock))
    first = await dispatcher.send("link", call=CALL, turn=1)
    other = CallContext(call_id="CA2", caller_number=CALLER, agent_number=AGENT)
    second = await dispatcher.send("link", call=other, turn=1)
    assert first.accepted and (second.outcome, second.reason, second.retryable) == (
        SendOutcome.FAILED, "sender_busy", True)


async def test_per_destination_cap_across_calls(clock):
    actions = parse_actions({**ACTIONS, "max_sends_per_destination": 2})
    provider = LocalProvider(clock=clock.now)
    dispatcher = Dispatcher(actions=actions, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            clock=clock)
    results = []
    for index in range(4):  # four different calls, same caller number
        call = CallContext(call_id=f"CA{index}", caller_number=CALLER, agent_number=AGENT)
        results.append(await dispatcher.send("link", call=call, turn=1))
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 2 + [SendOutcome.SKIPPED] * 2
    assert results[-1].reason == "limit_reached"
    clock.advance(25 * 3600)  # a day later the window has moved on
    later = await dispatcher.send("link", call=CallContext(call_id="CA9", caller_number=CALLER,
                                                           agent_number=AGENT), turn=1)
    assert later.accepted and provider.requests == 3


class CrashingProvider(LocalProvider):
    """A provider with a bug: its send raises something that is no SendError, ``crashes`` times."""

    def __init__(self, *, crashes: int, lookup_crashes: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.crashes = crashes
        self.lookup_crashes = lookup_crashes
        self.calls = 0

    async def send(self, sms):
        self.calls += 1
        if self.calls <= self.crashes:
            raise KeyError("sid")  # e.g. an answer without the field the provider expected
        return await super().send(sms)

    async def find_sent(self, sms, *, since):
        if self.lookup_crashes:
            raise ValueError("unparseable page")
        return await super().find_sent(sms, since=since)


@pytest.mark.parametrize("lookup_crashes", [False, True])
async def test_a_provider_that_raises_an_unclassified_error_never_crashes_the_send(clock, caplog, lookup_crashes):
    """An error the provider did not classify is ambiguous (the request may be out): looked up, never raised."""
    provider = CrashingProvider(crashes=1, lookup_crashes=lookup_crashes, clock=clock.now)
    outbox = Outbox()
    dispatcher = Dispatcher(actions=parse_actions(ACTIONS), provider=provider, outbox=outbox,
                            optouts=SqliteOptOutStore(), clock=clock,
                            retry_policy=RetryPolicy(attempts=3, base_delay=1.0, jitter=0))
    with caplog.at_level(logging.WARNING):
        result = await dispatcher.send("link", call=CALL, turn=1)
    record = await outbox.get(result.key)
    if lookup_crashes:  # the answer stays unknown: the caller is told it could not be confirmed, never resent
        assert (result.outcome, result.reason, record.status) == (SendOutcome.FAILED, "unconfirmed", "unconfirmed")
        assert provider.calls == 1
    else:  # the provider positively has no such message: one resend, which goes through
        assert result.accepted and record.status == "accepted"
        assert provider.calls == 2 and len(await provider.inbox()) == 1
    assert "provider_error" in caplog.text and "KeyError" in caplog.text
    assert CALLER not in caplog.text
    await provider.aclose()
    outbox.close()


class EarlyCallbackProvider(LocalProvider):
    """Twilio's status callback for the new message reaches the webhook before the create's answer reaches us."""

    def __init__(self, *, statuses, **kwargs):
        super().__init__(**kwargs)
        self.statuses = statuses
        self.dispatcher = None
        self.early = []

    async def send(self, sms):
        receipt = await super().send(sms)
        for status, code in self.statuses:
            self.early.append(await self.dispatcher.handle_status(receipt.sid, status, code))
        return receipt


def early_callbacks(clock, statuses):
    """A dispatcher whose provider's callbacks (``statuses``) come before its answers; its events are collected."""
    provider = EarlyCallbackProvider(statuses=statuses, clock=clock.now)
    outbox = Outbox()
    dispatcher = Dispatcher(actions=parse_actions(ACTIONS), provider=provider, outbox=outbox,
                            optouts=SqliteOptOutStore(), clock=clock)
    provider.dispatcher = dispatcher
    events = []
    dispatcher.subscribe(events.append)
    return dispatcher, provider, outbox, events


@pytest.mark.parametrize("statuses, kind, delivery", [
    ([("sent", None), ("failed", 30007)], SmsEventKind.FAILED, "failed"),
    ([("delivered", None)], SmsEventKind.DELIVERED, "delivered"),
])
async def test_a_status_callback_before_the_create_answer_is_applied_once_the_sid_is_recorded(
        clock, statuses, kind, delivery):
    dispatcher, provider, outbox, events = early_callbacks(clock, statuses)
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert provider.early == [None] * len(statuses)  # no row had the SID yet: held, no event
    assert result.accepted  # Twilio did accept it; the callback says what became of it
    assert [e.kind for e in events] == [SmsEventKind.QUEUED, SmsEventKind.SENT, kind]
    assert events[-1].delivery_report and events[-1].sid == result.sid
    if kind is SmsEventKind.FAILED:
        assert (events[-1].reason, events[-1].error_code) == ("filtered", 30007)
    assert (await outbox.get(result.key)).delivery == delivery
    assert await outbox.take_held_status(result.sid) is None  # applied once, not left behind
    await provider.aclose()
    outbox.close()


async def test_a_held_status_whose_sid_is_recorded_meanwhile_is_applied_by_the_callback(parts):
    # the callback looks for the SID just before the sender records it (and the sender looks for held
    # statuses just before the callback holds its own): the callback, seeing the SID recorded after it
    # held the status, applies it itself
    dispatcher, _provider, events = parts
    result = await dispatcher.send("link", call=CALL, turn=1)
    outbox = dispatcher.outbox
    record_delivery = outbox.record_delivery
    looks = []

    async def not_recorded_at_first(sid, status, code, *, now):
        looks.append(sid)
        return (None, False) if len(looks) == 1 else await record_delivery(sid, status, code, now=now)

    outbox.record_delivery = not_recorded_at_first
    events.clear()
    event = await dispatcher.handle_status(result.sid, "undelivered", 30003)
    assert event is not None and event.kind is SmsEventKind.FAILED and event.reason == "unreachable"
    assert [e.kind for e in events] == [SmsEventKind.FAILED] and len(looks) == 2
    assert (await outbox.get(result.key)).delivery == "undelivered"
    assert await outbox.take_held_status(result.sid) is None


async def test_a_canceled_status_is_a_delivery_failure_like_failed_and_undelivered(parts):
    dispatcher, _provider, _events = parts
    result = await dispatcher.send("link", call=CALL, turn=1)
    event = await dispatcher.handle_status(result.sid, "canceled", None)
    assert event is not None and event.kind is SmsEventKind.FAILED and event.reason == "undelivered"


async def test_a_status_held_by_another_worker_reaches_the_sender_through_redis(clock, redis_url):
    # workers with their own SQLite outboxes share Redis: the early callback lands on worker B, which has
    # no such message; worker A, which sent it, applies it once it records the SID
    import uuid

    from incall_sms.redis_store import RedisHeldStatuses, connect

    client = connect(redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    workers = []
    for _ in range(2):
        outbox = Outbox()
        dispatcher = Dispatcher(actions=parse_actions(ACTIONS), provider=LocalProvider(clock=clock.now), outbox=outbox,
                                optouts=SqliteOptOutStore(), clock=clock,
                                held_statuses=RedisHeldStatuses(client, prefix=prefix))
        workers.append(dispatcher)
    a, b = workers
    a.provider = EarlyCallbackProvider(statuses=[("failed", 30007)], clock=clock.now)
    a.provider.dispatcher = b  # Twilio posted the callback to the other worker
    events = []
    a.subscribe(events.append)
    result = await a.send("link", call=CALL, turn=1)
    assert a.provider.early == [None]
    assert [e.kind for e in events] == [SmsEventKind.QUEUED, SmsEventKind.SENT, SmsEventKind.FAILED]
    assert events[-1].reason == "filtered" and (await a.outbox.get(result.key)).delivery == "failed"
    await client.aclose()
    for dispatcher in workers:
        await dispatcher.provider.aclose()
        dispatcher.outbox.close()


@pytest.mark.parametrize("where", ["take", "apply"])
@pytest.mark.parametrize("blips", [1, 2])
async def test_a_held_failure_survives_outbox_blips(clock, where, blips):
    # the store fails while the sender takes or applies the held callback: one blip is retried at once, a
    # longer outage leaves the callback held for recovery's next pass (the call hears of it then)
    from incall_sms.errors import OutboxUnavailableError

    dispatcher, provider, outbox, events = early_callbacks(clock, [("failed", 30007)])
    take, record = outbox.take_held_status, outbox.record_delivery
    failures = []

    async def broken_take(sid):
        if where == "take" and len(failures) < blips:
            failures.append(sid)
            raise OutboxUnavailableError("blip")
        return await take(sid)

    async def broken_record(sid, status, code, *, now):
        if where == "apply" and len(failures) < blips and await outbox.by_sid(sid) is not None:
            failures.append(sid)
            raise OutboxUnavailableError("blip")
        return await record(sid, status, code, now=now)

    outbox.take_held_status, outbox.record_delivery = broken_take, broken_record
    result = await dispatcher.send("link", call=CALL, turn=1)
    assert result.accepted
    if blips == 2:  # both tries failed: still held, applied by the next recovery pass
        assert SmsEventKind.FAILED not in [e.kind for e in events]
        await dispatcher.recover()
    assert [e.kind for e in events][-1] is SmsEventKind.FAILED and events[-1].reason == "filtered"
    assert (await outbox.get(result.key)).delivery == "failed"
    assert [e.kind for e in events].count(SmsEventKind.FAILED) == 1
    await provider.aclose()
    outbox.close()


class TogetherProvider(LocalProvider):
    """A provider whose answers all come back at once: each send waits until ``together`` sends are in."""

    def __init__(self, *, together: int, **kwargs):
        super().__init__(**kwargs)
        self.together = together
        self.waiting = 0
        self.all_in = asyncio.Event()

    async def send(self, sms):
        self.waiting += 1
        if self.waiting >= self.together:
            self.all_in.set()
        await self.all_in.wait()
        return await super().send(sms)


@pytest.mark.parametrize("outcome", ["accepted", "refused"])
async def test_answers_that_come_back_together_are_handled_one_turn_apart(clock, outcome):
    """A burst of answers (50 sends' 201s in one read) must not hold the event loop in one stretch: each send
    handles its answer (outbox writes, events, the call's line) in its own turn, ``start_spacing`` apart."""
    provider = TogetherProvider(together=4, clock=clock.now)
    if outcome == "refused":  # permanent: each answer is a failure to record and tell
        provider.fail_next(*(SendError("rejected", kind=SendErrorKind.PERMANENT) for _ in range(4)))
    outbox = Outbox()
    dispatcher = Dispatcher(actions=parse_actions({"max_sends_per_call": 10, "actions": [
        {"name": f"a{i}", "condition": f"if the caller asks for text {i}", "content": {"template": f"Text {i}"}}
        for i in range(4)]}),
        provider=provider, outbox=outbox, optouts=SqliteOptOutStore(), clock=clock,
        retry_policy=RetryPolicy(attempts=1), start_spacing=0.2)
    handled: list[float] = []
    dispatcher.subscribe(lambda event: handled.append(time.monotonic()) if event.kind in (
        SmsEventKind.SENT, SmsEventKind.FAILED) else None)
    results = await asyncio.gather(*(dispatcher.send(f"a{i}", call=CALL, turn=1) for i in range(4)))
    assert [r.accepted for r in results] == [outcome == "accepted"] * 4
    assert len(handled) == 4
    # the answers were released together; their handling is spread over four turns, 0.6 s from the first to the
    # last (at once before: within milliseconds); a slow machine only shortens it by the first handler's lateness
    assert handled[-1] - handled[0] >= 0.3
    await provider.aclose()
    outbox.close()
