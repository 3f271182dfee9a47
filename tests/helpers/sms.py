"""Builders shared by processor and pipeline tests."""

from __future__ import annotations

import asyncio
import time

from incall_sms.actions import parse_actions
from incall_sms.clock import ManualClock
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine
from incall_sms.events import SmsEventKind
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.providers.local import LocalProvider
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.retry import RetryPolicy
from incall_sms.variables import PatternExtractor
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

#: Providers made by make_engine; the autouse fixture in conftest closes them after each test.
OPEN_PROVIDERS: list = []

CALLER = "+14155552671"
AGENT = "+14155550100"

ACTIONS = {
    "actions": [
        {
            "name": "booking_confirmation",
            "condition": "if the caller asks to receive the booking confirmation",
            "content": {"template": "Your booking for {booking_time} is confirmed."},
            "variables": {"booking_time": {"description": "date and time of the booking", "default": "your visit"}},
            "filler": "One moment, I'm texting that to you.",
            "confirmation": "Done, I've texted it to your number ending in {to_last2}.",
        },
        {
            "name": "website_link",
            "condition": "if the caller requests a link to the website",
            "content": {"template": "Menu: https://example.com/menu"},
            "filler": "Sure, sending the link now.",
        },
        {
            "name": "meeting_followup",
            "condition": "when the call ends and a meeting was booked",
            "content": {"template": "Thanks for calling! See you {booking_time}."},
            "variables": {"booking_time": {"description": "date and time of the booking"}},
            "on_missing_variable": "skip",
        },
    ]
}


def make_engine(*, provider=None, peer=None, timeout=5.0, outbox=None, call_id="CA1", judge=None, extractor=True,
                actions=None, http_thread=True):
    if provider is None and peer is not None:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url,
                                  timeout=timeout, http_thread=http_thread)
    provider = provider or LocalProvider()
    OPEN_PROVIDERS.append(provider)
    dispatcher = Dispatcher(
        actions=parse_actions(actions or ACTIONS),
        provider=provider,
        outbox=outbox or Outbox(),
        optouts=SqliteOptOutStore(),
        clock=ManualClock(start=time.time()),
        retry_policy=RetryPolicy(attempts=3, base_delay=0.1, jitter=0),
        ambiguity_delay=0.0,
    )
    call = CallContext(call_id=call_id, caller_number=CALLER, agent_number=AGENT)
    return ActionEngine(dispatcher=dispatcher, call=call, judge=judge or EmbeddedJudge(),
                        extractor=PatternExtractor() if extractor else None)


def undeliver(engine, *, after=None):
    """Report every text of the call undelivered (Twilio 30003) as soon as it is sent, or once ``after()`` holds.

    Subscribe after the call's processor (its own subscription comes first, so it has seen the send). Returns
    the list of report tasks started when ``after`` is given (await them before asserting).
    """
    async def report(sid):
        while after is not None and not after():
            await asyncio.sleep(0.01)
        await engine.dispatcher.handle_status(sid, "undelivered", 30003)

    async def on_event(event):
        if event.kind is SmsEventKind.SENT:
            if after is None:
                await report(event.sid)  # before the send's outcome reaches the processor
            else:
                reports.append(asyncio.get_running_loop().create_task(report(event.sid)))

    reports = []
    engine.dispatcher.subscribe(on_event, call_id=engine.call.call_id)
    return reports
