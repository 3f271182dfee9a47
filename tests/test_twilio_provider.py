"""The real twilio client against a loopback behaviour peer: wire format, faults, no duplicates."""

import asyncio
import base64
import email.utils
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import ManualClock
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome
from incall_sms.errors import SendError, SendErrorKind
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox, OutboxRecord
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.twilio import TwilioProvider, classify_twilio_error
from incall_sms.retry import RetryPolicy
from tests.conftest import ROOT
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, PeerMessage, TwilioPeer

CALLER = "+14155552671"
AGENT = "+14155550100"
CALL = CallContext(call_id="CA42", caller_number=CALLER, agent_number=AGENT)
ACTIONS = parse_actions(
    {
        "actions": [
            {
                "name": "link",
                "condition": "if the caller wants the link",
                "content": {"template": "Menu: https://example.com/m"},
                "media_urls": ["https://example.com/menu.jpg"],
            },
            {
                "name": "again",
                "condition": "whenever",
                "once_per_call": False,
                "content": {"template": "Ping {call_id}"},
            },
        ]
    }
)


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


def make(peer_url, *, token=AUTH_TOKEN, timeout=2.0, outbox=None, optouts=None, clock=None):
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=token, base_url=peer_url, timeout=timeout)
    dispatcher = Dispatcher(
        actions=ACTIONS,
        provider=provider,
        outbox=outbox or Outbox(),
        optouts=optouts or SqliteOptOutStore(),
        clock=clock or ManualClock(start=time.time()),
        retry_policy=RetryPolicy(attempts=4, base_delay=0.5, jitter=0),
        status_callback_url="https://agent.example.com/sms/status",
        validity_period=600,
    )
    return dispatcher, provider


async def test_form_fields_and_auth(peer):
    dispatcher, provider = make(peer.base_url)
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid.startswith("SM") and result.segments == 1
    [form] = peer.requests
    assert form == {
        "To": [CALLER],
        "From": [AGENT],
        "Body": ["Menu: https://example.com/m"],
        "MediaUrl": ["https://example.com/menu.jpg"],
        "StatusCallback": ["https://agent.example.com/sms/status"],
        "ValidityPeriod": ["600"],
    }
    assert peer.auth_failures == 0


async def test_wrong_credentials_permanent_not_retried(peer):
    dispatcher, provider = make(peer.base_url, token="wrong")
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason, result.error_code) == (SendOutcome.FAILED, "auth_failed", 20003)
    assert len(peer.requests) == 1 and peer.messages == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (21211, "invalid_number"),
        (21610, "opted_out"),
        (21614, "not_mobile"),
        (21408, "region_not_allowed"),
        (21606, "sender_not_capable"),
        (21612, "unreachable"),
    ],
)
async def test_permanent_errors_not_retried(peer, code, reason):
    dispatcher, provider = make(peer.base_url)
    peer.error_numbers[CALLER] = code
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason, result.error_code, result.retryable) == (
        SendOutcome.FAILED,
        reason,
        code,
        False,
    )
    assert len(peer.requests) == 1
    if code == 21610:
        assert await dispatcher.optouts.is_opted_out(CALLER)


async def test_429_retried_then_sent_once(peer):
    clock = ManualClock(start=time.time())
    dispatcher, provider = make(peer.base_url, clock=clock)
    peer.faults = [Fault(status=429, code=20429, commit=False)] * 2
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted
    assert len(peer.requests) == 3 and len(peer.messages) == 1
    assert clock.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("retry_after, waits", [
    ("3", [3.0, 1.0]),  # seconds: the first wait is Twilio's; the second 429 asks for nothing: the back-off's
    ("http-date", [5.0, 1.0]),  # an HTTP date 5 s after the answer's own Date
    ("600", [8.0, 1.0]),  # capped by the policy (max_delay)
    ("soon", [0.5, 1.0]),  # unreadable: the back-off
    ("\u00b2", [0.5, 1.0]),  # a superscript two (str.isdigit says digit): unreadable, never an ambiguous answer
])
async def test_429_waits_as_long_as_retry_after_asks(peer, retry_after, waits):
    clock = ManualClock(start=time.time())
    dispatcher, provider = make(peer.base_url, clock=clock)
    headers = {"Retry-After": retry_after}
    if retry_after == "http-date":
        now = time.time()
        headers = {"Date": email.utils.formatdate(now, usegmt=True),
                   "Retry-After": email.utils.formatdate(now + 5, usegmt=True)}
    peer.faults = [Fault(status=429, code=20429, commit=False, headers=headers),
                   Fault(status=429, code=20429, commit=False)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and len(peer.messages) == 1 and peer.list_requests == 0  # a 429 is no ambiguity
    assert clock.sleeps == pytest.approx(waits)


async def test_the_retry_after_of_one_send_does_not_reach_a_concurrent_one(peer):
    # both sends' requests run on the provider's one HTTP thread; each reads only its own answer's header
    clock = ManualClock(start=time.time())
    dispatcher, provider = make(peer.base_url, clock=clock)

    def fault_for(form):
        if sum(r["Body"] == form["Body"] for r in peer.requests) > 1:
            return None  # the retry goes through
        if "Ping" in form["Body"][0]:
            return Fault(status=429, code=20429, commit=False, delay=0.2, headers={"Retry-After": "5"})
        return Fault(status=429, code=20429, commit=False, delay=0.25)

    peer.fault_for = fault_for
    results = await asyncio.gather(dispatcher.send("again", call=CALL, turn=1),
                                   dispatcher.send("link", call=CALL, turn=1))
    await provider.aclose()
    assert all(r.accepted for r in results) and len(peer.messages) == 2
    assert sorted(clock.sleeps) == [0.5, 5.0]


async def test_timeout_after_commit_no_duplicate(peer):
    dispatcher, provider = make(peer.base_url, timeout=0.3)
    peer.faults = [Fault(delay=3.0, commit=True)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid
    assert len(peer.requests) == 1 and len(peer.messages) == 1
    assert peer.list_requests >= 1


@pytest.mark.parametrize("commit", [True, False])
async def test_500_checks_before_resend(peer, commit):
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=500, code=20500, commit=commit)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted
    assert len(peer.messages) == 1  # never two texts
    assert len(peer.requests) == (1 if commit else 2)


async def test_one_lookup_that_does_not_list_the_message_yet_is_no_proof(peer):
    """Lookups that lag the create (a replica, a cache): every check is used before a resend, never one."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            retry_policy=RetryPolicy(attempts=1), ambiguity_delay=0.3, ambiguity_checks=3)
    peer.list_lag = 0.5  # the first check (at 0.3 s) does not see it yet, the second (0.6 s) does
    peer.faults = [Fault(status=502, commit=True)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid
    assert len(peer.messages) == 1 and len(peer.requests) == 1
    assert peer.list_requests == 2


@pytest.mark.parametrize(("age", "lookups"), [(60.0, 1), (1.0, 3)])
async def test_recovery_asks_once_about_an_attempt_long_over(peer, age, lookups):
    """A send interrupted long ago had all the time to show: one lookup; a recent one gets every check."""
    clock = ManualClock(start=time.time())
    outbox = Outbox(clock=clock.now)
    record = OutboxRecord(key="CA9:link:1", call_id="CA9", action="link", turn=1, status="pending", to_number=CALLER,
                          from_number=AGENT, body="Menu: https://example.com/m", created_at=clock.now() - age,
                          updated_at=clock.now() - age, segments=1, encoding="GSM-7")
    await outbox.claim(record, once_per_call=True, max_per_call=10)
    await outbox.update(record.key, now=clock.now() - age, status="sending", attempts="+1")
    outbox.forget(record.key)  # the worker that held it died
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=10.0)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=outbox, optouts=SqliteOptOutStore(),
                            clock=clock, retry_policy=RetryPolicy(attempts=1), recovery_min_age=0.0)
    [result] = await dispatcher.recover()
    await provider.aclose()
    assert result.accepted and len(peer.messages) == 1  # none found: sent once
    assert peer.list_requests == lookups


@pytest.mark.parametrize("behind", [8.0, 40.0])
async def test_a_host_clock_ahead_of_twilios_does_not_hide_the_message(peer, caplog, behind):
    """Twilio dates its messages by its clock; a host running ahead (no time sync) read them as too old."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            retry_policy=RetryPolicy(attempts=1), ambiguity_delay=0.05)
    peer.clock_behind = behind
    peer.faults = [Fault(status=503, commit=True)]  # the first answer of this worker: nothing measured before
    with caplog.at_level(logging.WARNING):
        result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid
    assert len(peer.messages) == 1 and len(peer.requests) == 1
    assert "clock" in caplog.text and "ahead" in caplog.text


class _OtherClocks(TwilioPeer):
    """A gateway in front answers its errors with its own clock (an hour slow), a cache serves the first lookup
    (the origin's Date of 10 minutes ago, with Age)."""

    lookups = 0

    async def _date_header(self, request, response):
        await super()._date_header(request, response)
        if response.status >= 500:
            response.headers["Date"] = email.utils.formatdate(time.time() - 3600, usegmt=True)
        elif request.method == "GET":
            self.lookups += 1
            if self.lookups == 1:
                response.headers["Date"] = email.utils.formatdate(time.time() - 600, usegmt=True)
                response.headers["Age"] = "600"


async def test_no_other_clock_moves_the_lookup_window_onto_an_older_identical_text():
    """A returning caller's identical text from 5 minutes ago (no row here owns it) is never this attempt's."""
    async with _OtherClocks() as peer:
        old = PeerMessage(sid="SM" + "e" * 32, to=CALLER, from_=AGENT, body="Menu: https://example.com/m",
                          form={}, created=time.time() - 300, status="delivered")
        peer.messages.append(old)
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url,
                                  timeout=2.0)
        dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                                retry_policy=RetryPolicy(attempts=1), ambiguity_delay=0.05)
        peer.faults = [Fault(status=504, commit=False)]  # the gateway gave up; nothing was created
        result = await dispatcher.send("link", call=CALL, turn=1)
        await provider.aclose()
        new = [m for m in peer.messages if m is not old]
    assert result.accepted and len(new) == 1 and result.sid == new[0].sid  # looked up, none, sent for real


async def test_a_looked_up_message_twilio_already_failed_is_a_failure_not_texted(peer):
    """The create's answer was lost; by the lookup Twilio has failed the message (30034): never 'texted'."""
    dispatcher, provider = make(peer.base_url)
    events = []
    dispatcher.subscribe(events.append)
    peer.faults = [Fault(status=500, code=20500, commit=True)]

    def failed_by_then(_query):
        peer.messages[0].status, peer.messages[0].error_code = "failed", 30034
        return None

    peer.list_fault_for = failed_by_then
    result = await dispatcher.send("link", call=CALL, turn=1)
    row = await dispatcher.outbox.get(result.key)
    await provider.aclose()
    assert not result.accepted and (result.reason, result.error_code) == ("sender_unregistered", 30034)
    assert (row.status, row.sid) == ("failed", peer.messages[0].sid)  # its SID kept: never resent, callbacks land
    assert len(peer.requests) == 1 and [e.kind.value for e in events][-1] == "failed"


async def test_a_lookup_never_claims_the_message_of_a_twin_still_in_flight(peer):
    """The same text twice in one call ('send it again' while Twilio is slow): the first, which created nothing,
    must not take the second's message before the second's answer is back."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=5.0)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            retry_policy=RetryPolicy(attempts=1), ambiguity_delay=0.5)
    peer.faults = [Fault(drop=True, commit=False),  # turn 1: the connection drops, nothing created
                   Fault(delay=1.5, commit=True)]  # turn 2: created at once, its answer 1.5 s late
    first = asyncio.create_task(dispatcher.send("again", call=CALL, turn=1))
    await asyncio.sleep(0.2)
    second = await dispatcher.send("again", call=CALL, turn=2)
    first = await first
    await provider.aclose()
    message = peer.messages[0]
    assert second.accepted and second.sid == message.sid  # its own message, told as sent
    assert not (first.accepted and first.sid == message.sid)  # never "texted" on the twin's message
    assert first.reason == "unconfirmed"


async def test_a_resend_needs_the_last_check_to_answer(peer):
    """No answer at the last check leaves the text unconfirmed: an earlier 'none' is not enough to resend."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            retry_policy=RetryPolicy(attempts=1), ambiguity_delay=0.01, ambiguity_checks=3)
    peer.faults = [Fault(status=502, commit=False)]
    peer.list_faults = [None, None, Fault(status=503)]  # two answers of none, then no answer
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert len(peer.requests) == 1 and peer.messages == []


async def test_dropped_connection_after_commit_no_duplicate(peer):
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(drop=True, commit=True)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and len(peer.messages) == 1 and len(peer.requests) == 1


@pytest.mark.parametrize("commit", [True, False])
@pytest.mark.parametrize(("raw", "content_type"), [
    ("<html><body>OK</body></html>", "text/html"),  # a proxy's page
    ('{"status": "queued"}', "application/json"),  # JSON, but no message SID
    ('{"sid": null, "status": "queued"}', "application/json"),
    ('["SM' + "0" * 32 + '"]', "application/json"),  # not an object
    ('{"sid": "SM' + "1" * 32 + '", "num_segments": "many"}', "application/json"),  # a field that cannot be read
])
async def test_a_success_answer_that_is_not_a_message_is_checked_before_any_resend(peer, commit, raw, content_type):
    """A 2xx answer that is no message resource proves nothing: look the text up before any resend.

    Never "accepted" on it (a SID of "None" was taken for the message's once).
    """
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=200, raw=raw, content_type=content_type, commit=commit)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted
    assert len(peer.messages) == 1  # never two texts
    assert len(peer.requests) == (1 if commit else 2)
    assert peer.list_requests >= 1
    assert result.sid == peer.messages[0].sid


async def test_the_twilio_clients_own_request_logs_carry_no_full_number(peer, caplog):
    """A lookup's URL holds both numbers; the twilio library logs it at INFO, as a server may log."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=500, code=20500, commit=True)]  # ambiguous: the lookup runs
    with caplog.at_level(logging.INFO):
        result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and peer.list_requests >= 1
    requests = [r for r in caplog.records if r.name.startswith("twilio.")]
    assert any("Messages.json" in r.getMessage() for r in requests)  # the library did log the lookup
    assert CALLER[2:] not in caplog.text and AGENT[2:] not in caplog.text
    assert "%2B1******2671" in caplog.text  # masked, still readable


@pytest.mark.parametrize("status", [302, 303, 408, 460, 499])
async def test_an_error_answer_that_is_not_twilios_is_looked_up_not_told_as_refused(peer, status):
    """A gateway's 3xx/4xx without a Twilio error body may come after it forwarded the request: ambiguous."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=status, raw="upstream gave up", content_type="text/plain", commit=True)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid  # found by the lookup: no failure told
    assert len(peer.messages) == 1 and peer.list_requests >= 1


@pytest.mark.parametrize("status", ["failed", "undelivered", "canceled"])
async def test_a_create_answer_that_already_failed_is_a_failure_not_an_acceptance(peer, status):
    """A message resource whose status is already final and failed: the caller must not hear 'texted'."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(answer={"status": status, "error_code": 30007, "error_message": "filtered"})]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert not result.accepted and result.outcome is SendOutcome.FAILED
    assert (result.reason, result.error_code, result.retryable) == ("filtered", 30007, False)
    assert len(peer.requests) == 1  # it exists, failed: never sent again


async def test_an_answer_for_another_destination_is_no_acceptance(peer):
    """A 201 whose message goes to another number (a proxy mixing answers up) proves nothing: looked up."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(answer={"to": "+15555559999"}, commit=False)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and [m.to for m in peer.messages] == [CALLER]
    assert len(peer.requests) == 2 and peer.list_requests >= 1  # looked up, none, sent for real


async def test_a_lookup_reads_past_the_first_pages_of_a_busy_number(peer):
    """230 newer texts between the same two numbers: the message is on the lookup's third page, and found."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=500, code=20500, commit=True)]

    def busy(_query):
        if len(peer.messages) == 1:  # at the first lookup, after ours: newer texts to the same caller
            peer.messages += [PeerMessage(sid=f"SM{9000 + i:032x}", to=CALLER, from_=AGENT, body=f"Other {i}",
                                          form={}, created=time.time()) for i in range(230)]
        return None

    peer.list_fault_for = busy
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid
    assert len(peer.requests) == 1 and peer.list_requests == 3  # pages of 100: 100, 100, 31


SMART = parse_actions({"actions": [{"name": "quote", "condition": "if the caller wants the details",
                                    "content": {"template": "Your table \u2014 \u201cthe patio\u201d \u2014 "
                                                            "is held\u2026 See https://example.com/t?id=42"}}]})


async def test_a_lookup_knows_its_text_through_smart_encoding(peer):
    """Twilio may store a body with plain characters for typographic ones: still this text, not sent again."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    dispatcher = Dispatcher(actions=SMART, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            clock=ManualClock(start=time.time()), retry_policy=RetryPolicy(attempts=1))
    peer.rewrite = lambda body: (body.replace("\u2014", "-").replace("\u201c", '"').replace("\u201d", '"')
                                 .replace("\u2026", "..."))
    peer.faults = [Fault(status=500, code=20500, commit=True)]
    result = await dispatcher.send("quote", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid == peer.messages[0].sid
    assert len(peer.messages) == 1 and len(peer.requests) == 1


LOOK_ALIKES = parse_actions({"actions": [
    {"name": "address", "condition": "if the caller wants the address",
     "content": {"template": "We're at 12 Main St."}},
    {"name": "address_hours", "condition": "if the caller wants the address and the hours",
     "content": {"template": "We're at 12 Main St. Open daily 9 to 5."}},
    {"name": "menu", "condition": "if the caller wants the menu", "content": {"template": "Menu: https://example.com/x"}},
]})


@pytest.mark.parametrize(("name", "stored", "other"), [
    ("link", lambda body: body + "\n\nReply STOP to unsubscribe.", None),  # compliance text appended
    ("link", lambda body: body.replace("https://example.com/m", "https://twil.io/x7Kq2"), None),  # Link Shortening
    ("link", None, "Menu: https://example.com/x"),  # another action's text, another link
    ("address", None, "We're at 12 Main St. Open daily 9 to 5."),  # another action's longer text
], ids=["opt-out-line", "link-shortening", "sibling-other-link", "sibling-longer-text"])
async def test_a_look_alike_no_row_owns_is_neither_taken_nor_a_reason_to_resend(peer, name, stored, other):
    """This text as Twilio may have changed it, or another text not recorded here (in flight): unconfirmed."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    actions = ACTIONS if name == "link" else LOOK_ALIKES
    dispatcher = Dispatcher(actions=actions, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            clock=ManualClock(start=time.time()), retry_policy=RetryPolicy(attempts=1))
    peer.rewrite = stored
    if other is not None:
        peer.messages.append(PeerMessage(sid=f"SM{7:032x}", to=CALLER, from_=AGENT, body=other, form={},
                                         created=time.time()))
    peer.faults = [Fault(status=500, code=20500, commit=other is None)]
    result = await dispatcher.send(name, call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")  # never another text's SID
    assert len(peer.requests) == 1 and len(peer.messages) == 1  # never a second text


@pytest.mark.parametrize(("first", "second"), [("address_hours", "address"), ("menu", "link")])
async def test_a_look_alike_another_row_owns_does_not_block_a_resend(peer, first, second):
    """The look-alike is provably another text (its SID is recorded for another row): 'none', so resent."""
    actions = parse_actions({"actions": [
        *[{"name": a.name, "condition": a.condition, "content": {"template": a.content.template}}
          for a in LOOK_ALIKES.actions if a.name != "link"],
        {"name": "link", "condition": "if the caller wants the link", "content": {"template": "Menu: https://example.com/m"}},
    ]})
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    dispatcher = Dispatcher(actions=actions, provider=provider, outbox=Outbox(), optouts=SqliteOptOutStore(),
                            clock=ManualClock(start=time.time()), retry_policy=RetryPolicy(attempts=1))
    assert (await dispatcher.send(first, call=CALL, turn=1)).accepted
    peer.faults = [Fault(status=503, commit=False)]
    result = await dispatcher.send(second, call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and len(peer.messages) == 2 and len(peer.requests) == 3


async def test_another_text_between_the_same_numbers_is_not_taken_for_this_one(peer):
    """A sibling text (another action's, same numbers, same moment) is no proof this one exists."""
    dispatcher, provider = make(peer.base_url)
    peer.messages.append(PeerMessage(sid=f"SM{7:032x}", to=CALLER, from_=AGENT, body="Your booking is confirmed.",
                                     form={}, created=time.time()))
    peer.faults = [Fault(status=500, code=20500, commit=False)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert result.accepted and result.sid != f"SM{7:032x}"
    assert len(peer.requests) == 2  # looked up, not found, sent


async def test_a_lookup_whose_pages_never_end_stops_at_once_and_answers_unknown(peer):
    """Empty pages pointing at themselves: no request storm until the deadline, no 'none' read into it."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=500, code=20500, commit=True)]
    peer.list_loop = True
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")  # never resent
    assert len(peer.requests) == 1
    assert peer.list_requests <= 2 * 3  # each of the 3 checks: the page and its repeat


async def test_a_problem_document_error_is_classified_by_its_code(peer):
    """Twilio's newer APIs answer errors as RFC 9457 problems: 21211 is still an invalid number, not a guess."""
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=400, code=21211, problem=True, commit=False)]
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason, result.error_code) == (SendOutcome.FAILED, "invalid_number", 21211)
    assert len(peer.requests) == 1 and peer.list_requests == 0  # a clear refusal: nothing to look up


async def test_unconfirmable_send_is_reported_not_resent(peer):
    dispatcher, provider = make(peer.base_url)
    peer.faults = [Fault(status=503, commit=False)]
    peer.list_faults = [Fault(status=500)] * 10
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert len(peer.requests) == 1
    record = await dispatcher.outbox.get(result.key)
    assert record.status == "unconfirmed"  # the caller heard "couldn't confirm": closed, never resent later


async def test_connection_refused_is_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=f"http://127.0.0.1:{port}")
    sms = OutboundSms(to=CALLER, from_=AGENT, body="x", key="k")
    with pytest.raises(SendError) as info:
        await provider.send(sms)
    await provider.aclose()
    assert info.value.kind is SendErrorKind.RETRYABLE and info.value.reason == "connection_refused"


def test_classification_table():
    assert classify_twilio_error(429, None).retryable
    assert classify_twilio_error(400, 20429).retryable
    assert classify_twilio_error(502, None).ambiguous
    assert classify_twilio_error(400, 21610).reason == "opted_out"
    assert classify_twilio_error(400, 99999).kind is SendErrorKind.PERMANENT


async def test_restart_mid_send_no_duplicate(peer, tmp_path):
    """A worker killed while its request is in flight: the restarted worker checks, never double-sends."""
    db = str(tmp_path / "outbox.db")
    peer.faults = [Fault(delay=30.0, commit=True)]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.send_once", db, peer.base_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        await asyncio.wait_for(peer.received.wait(), timeout=30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    assert len(peer.requests) == 1
    outbox = Outbox(db)
    [left] = await outbox.unfinished()
    assert left.status == "sending"
    dispatcher, provider = make(peer.base_url, outbox=outbox)
    results = await dispatcher.recover()
    await provider.aclose()
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED]
    assert len(peer.requests) == 1 and len(peer.messages) == 1
    assert (await outbox.get(left.key)).status == "accepted"
    assert await dispatcher.outbox.unfinished() == []


async def test_recovery_resends_when_provider_has_nothing(peer, tmp_path):
    db = str(tmp_path / "outbox.db")
    outbox = Outbox(db)
    now = time.time()
    base = dict(call_id="CA1", action="again", to_number=CALLER, from_number=AGENT, created_at=now, updated_at=now)
    await outbox.claim(
        OutboxRecord(key="CA1:again:1", turn=1, status="pending", body="never sent", **base),
        once_per_call=False,
        max_per_call=9,
    )
    await outbox.claim(
        OutboxRecord(key="CA1:again:2", turn=2, status="pending", body="lost in flight", **base),
        once_per_call=False,
        max_per_call=9,
    )
    await outbox.update("CA1:again:2", now=2.0, status="sending", attempts=1)
    outbox.close()
    dispatcher, provider = make(peer.base_url, outbox=Outbox(db))
    results = await dispatcher.recover()
    again = await dispatcher.recover()
    await provider.aclose()
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED, SendOutcome.ACCEPTED]
    assert again == []
    assert sorted(m.body for m in peer.messages) == ["lost in flight", "never sent"]
    assert len(peer.requests) == 2


async def test_basic_auth_header_is_real(peer):
    # the peer verifies the header; prove a request with it decoded carries sid:token
    dispatcher, provider = make(peer.base_url)
    await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert expected and peer.auth_failures == 0 and len(peer.messages) == 1


async def test_a_callback_between_a_lookup_claiming_the_sid_and_the_accept_is_kept(peer):
    # the create's answer is lost; the lookup claims the message's SID for the row; Twilio's failure callback
    # is applied right then: the accept that follows must not erase it
    dispatcher, provider = make(peer.base_url, timeout=0.3)
    peer.faults = [Fault(delay=1.0, commit=True)]
    outbox = dispatcher.outbox
    claim_sid = outbox.claim_sid

    async def claim_then_callback(key, sid, *, now, **fields):
        claimed = await claim_sid(key, sid, now=now, **fields)
        await dispatcher.handle_status(sid, "failed", 30007)
        return claimed

    outbox.claim_sid = claim_then_callback
    events = []
    dispatcher.subscribe(events.append)
    result = await dispatcher.send("link", call=CALL, turn=1)
    await provider.aclose()
    row = await outbox.get(result.key)
    assert result.accepted and (row.delivery, row.delivery_error) == ("failed", 30007)
    assert [e.kind.value for e in events].count("failed") == 1


async def test_a_message_a_lookup_finds_failed_takes_its_held_callback(peer):
    # Twilio failed it (filtered) and said so before the create's lost answer: the lookup finds it failed; the
    # held callback is used up (its code names the reason when the lookup's message has none)
    dispatcher, provider = make(peer.base_url, timeout=0.3)
    peer.faults = [Fault(delay=1.0, commit=True)]

    async def callback_early():
        while not peer.messages:
            await asyncio.sleep(0.01)
        peer.messages[0].status = "failed"
        await dispatcher.handle_status(peer.messages[0].sid, "failed", 30007)

    early = asyncio.get_running_loop().create_task(callback_early())
    result = await dispatcher.send("link", call=CALL, turn=1)
    await early
    await provider.aclose()
    assert result.outcome is SendOutcome.FAILED and result.reason == "filtered"
    assert await dispatcher.held_statuses.take_held_status(peer.messages[0].sid) is None
