"""Problems an outside review of the WhatsApp channel found, each fixed; these tests failed before."""

import asyncio
import time
import uuid

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import ManualClock
from incall_sms.dispatcher import SendOutcome
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.whatsapp import InProcessWhatsAppSessions
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer
from tests.test_whatsapp import AGENT, CALL, CALLER, TEMPLATE, make


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p



async def test_an_ambiguous_template_send_is_never_matched_to_another_message(peer):
    """Twilio's Message does not say which Content template made it: a lookup cannot tell ours from the
    business bot's answer, so the row stays unconfirmed (the caller is told so), never "sent", never resent."""
    other = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
    foreign = await other.send(OutboundSms(to=CALLER, from_=AGENT, body="Thanks for your message! An agent will "
                                           "reply soon.", key="not-ours", channel="whatsapp"))
    await other.aclose()
    peer.faults.append(Fault(drop=True, commit=False))  # our request: connection dropped, nothing created
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions(), ambiguity_delay=0.01)
    result = await dispatcher.send("reminder", call=CALL, turn=1, variables={"booking_time": "9 am"})
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert [m.sid for m in peer.messages] == [foreign.sid]  # nothing resent blindly either


async def test_a_session_at_the_edge_of_24_hours_counts_as_closed(peer):
    """Our record of the session is the webhook's arrival: its last minutes are not trusted, the approved
    template goes instead of a free-form body Twilio would refuse (63016)."""
    sessions = InProcessWhatsAppSessions()
    clock = ManualClock(start=time.time())
    await sessions.opened(CALLER, AGENT, at=clock.now() - 24 * 3600 + 1)
    dispatcher, provider = make(peer.base_url, sessions=sessions, clock=clock)
    result = await dispatcher.send("booking", call=CALL, turn=1, variables={"booking_time": "Fri 7 pm"})
    await provider.aclose()
    assert result.accepted and peer.requests[0]["ContentSid"] == [TEMPLATE]


async def test_a_session_store_outage_is_not_told_as_a_closed_window(peer):
    class Down:
        async def opened(self, *a, **k):
            raise ConnectionError("redis down")

        async def is_open(self, *a, **k):
            raise ConnectionError("redis down")

    dispatcher, provider = make(peer.base_url, sessions=Down())
    result = await dispatcher.send("menu", call=CALL, turn=1)
    await provider.aclose()
    assert (result.reason, result.retryable) == ("whatsapp_session_unknown", True) and peer.requests == []
    line = dispatcher.actions.get("menu").failure_line(result.reason)
    assert "If you send us a WhatsApp message" not in line and "ask me again" in line.lower()


def test_default_spoken_lines_of_a_whatsapp_action_say_whatsapp():
    action = parse_actions({"actions": [{
        "name": "wa", "condition": "if the caller wants it on WhatsApp", "channel": "whatsapp",
        "content": {"content_sid": TEMPLATE}, "await_reply": {"variable": "email", "kind": "email"},
        "ask_consent": True}]}).get("wa")
    for line in (action.filler, action.confirmation, action.consent_question,
                 action.await_reply.waiting_line(action.channel)):
        assert "WhatsApp" in line and "text" not in line.lower()
    custom = parse_actions({"actions": [{
        "name": "wa", "condition": "if the caller wants it on WhatsApp", "channel": "whatsapp",
        "content": {"content_sid": TEMPLATE}, "filler": "Hang on."}]}).get("wa")
    assert custom.filler == "Hang on."  # a line the file sets is kept


async def test_postgres_start_up_does_not_lock_the_table_when_nothing_is_missing(postgres_server_url):
    """Only a missing column is added: opening an up-to-date table takes no exclusive lock, so a new worker
    starts while any reader's transaction is open, and running workers' claims are never queued behind it."""
    import asyncpg

    from incall_sms.outbox import OutboxRecord
    from incall_sms.outbox_postgres import PostgresOutbox
    from tests.helpers.postgres import fresh_database

    url = await fresh_database(postgres_server_url, f"review_{uuid.uuid4().hex[:10]}")
    w1 = PostgresOutbox(url, worker_id="w1")
    await w1.open()
    reader = await asyncpg.connect(url)
    tx = reader.transaction()
    await tx.start()
    await reader.fetch("SELECT count(*) FROM incall_sms_outbox")  # an ordinary reader holds ACCESS SHARE
    starting = PostgresOutbox(url, worker_id="w2")
    try:
        await asyncio.wait_for(starting.open(), 10)
        now = time.time()
        rec = OutboxRecord(key="CA9:a:1", call_id="CA9", action="a", turn=1, status="pending", to_number=CALLER,
                           from_number=AGENT, body="x", created_at=now, updated_at=now)
        await asyncio.wait_for(w1.claim(rec, once_per_call=True, max_per_call=3), 10)
    finally:
        await tx.rollback()
        await reader.close()
        await w1.aclose()
        await starting.aclose()


async def test_after_a_closed_window_the_action_may_fire_again(peer):
    from incall_sms.engine import ActionEngine
    from incall_sms.judges.base import Match
    from incall_sms.judges.embedded import EmbeddedJudge

    sessions = InProcessWhatsAppSessions()
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    engine = ActionEngine(dispatcher=dispatcher, call=CALL, judge=EmbeddedJudge(), extractor=None)
    action = dispatcher.actions.get("menu")
    [firing] = engine.claim(action, match=Match(id="menu", confidence=1.0, reason="asked"))
    outcome = await engine.execute(firing)
    assert outcome.result.reason == "whatsapp_window_closed" and "ask me again" in outcome.line
    await sessions.opened(CALLER, AGENT, at=time.time())  # the caller WhatsApps us, as told
    engine.user_turns += 1
    [again] = engine.claim(action, match=Match(id="menu", confidence=1.0, reason="asked again"))
    assert (await engine.execute(again)).result.accepted
    await provider.aclose()


@pytest.mark.parametrize(("body", "keyword"), [("Yes", None), ("Cancel", None), ("end", None), ("STOP", "opt_out")])
async def test_on_whatsapp_only_stop_and_start_are_keywords_and_the_call_hears_every_message(tmp_path, body,
                                                                                          keyword):
    from incall_sms.inbound import InboundRouter, InProcessCallRegistry, parse_inbound_form
    from incall_sms.optout import SqliteOptOutStore
    from tests.test_whatsapp import whatsapp_form

    registry = InProcessCallRegistry()
    optouts = SqliteOptOutStore()
    router = InboundRouter(registry=registry, optouts=optouts, store_path=tmp_path / "in.db",
                           whatsapp_sessions=InProcessWhatsAppSessions())
    got = []

    async def handler(message):
        got.append(message.body)

    await registry.register(CALLER, AGENT, handler)
    result = await router.route(parse_inbound_form(whatsapp_form(body=body)))
    router.close()
    assert got == [body]  # the live call gets it (a yes may answer its question; a STOP ends its texting)
    assert (result.value == "opt_out") is (keyword == "opt_out")
    assert await optouts.is_opted_out(CALLER) is (keyword == "opt_out")


async def test_a_reask_goes_back_on_the_channel_the_reply_came_on(peer):
    """The ask went out as the approved WhatsApp template (no session); the caller answered by SMS: the re-ask
    is an SMS, which needs no session."""
    from incall_sms.engine import ActionEngine
    from incall_sms.inbound import InboundMessage
    from incall_sms.judges.base import Match
    from incall_sms.judges.embedded import EmbeddedJudge

    actions = parse_actions({"actions": [{
        "name": "ask_email", "condition": "if the caller cannot spell the email", "channel": "whatsapp",
        "content": {"template": "Reply with your email address", "content_sid": TEMPLATE},
        "await_reply": {"variable": "email", "kind": "email", "timeout": 120}}]})
    sessions = InProcessWhatsAppSessions()
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    dispatcher.actions = actions
    engine = ActionEngine(dispatcher=dispatcher, call=CALL, judge=EmbeddedJudge(), extractor=None)
    replies = []
    engine.reply_listener = lambda reply, firings: replies.append(reply)
    [firing] = engine.claim(actions.get("ask_email"), match=Match(id="ask_email", confidence=1.0, reason="x"))
    first = await engine.execute(firing)
    assert first.result.accepted and peer.requests[-1]["ContentSid"] == [TEMPLATE]
    [wait] = engine.waits
    engine.offer_reply(InboundMessage(sid="SM" + "2" * 32, account_sid=ACCOUNT_SID, from_number=CALLER,
                                      to_number=AGENT, body="maria at gmail", channel="sms"))
    [reply] = replies
    assert reply.channel == "sms" and reply.reasked
    reask = await engine.reask(wait, problem=reply.problem, channel=reply.channel)
    await provider.aclose()
    assert reask.result.accepted
    assert peer.requests[-1]["To"] == [CALLER] and "ContentSid" not in peer.requests[-1]


async def test_a_template_lookup_never_takes_a_sibling_message(peer):
    """Two WhatsApp sends of one call: the free-form one is slow, the template one is lost. The template is
    told unconfirmed (no lookup can tell), the free-form one accepted; nothing raises."""
    sessions = InProcessWhatsAppSessions()
    await sessions.opened(CALLER, AGENT, at=time.time() - 60)
    dispatcher, provider = make(peer.base_url, sessions=sessions, ambiguity_delay=0.05)
    peer.faults.extend([Fault(delay=1.0), Fault(drop=True, commit=False)])  # menu: slow; reminder: lost
    menu = asyncio.create_task(dispatcher.send("menu", call=CALL, turn=1))
    while not peer.requests:
        await asyncio.sleep(0.01)
    reminder = await dispatcher.send("reminder", call=CALL, turn=1, variables={"booking_time": "9 am"})
    assert (reminder.outcome, reminder.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert (await menu).accepted
    await provider.aclose()
