"""WhatsApp: the real twilio client against the loopback peer, the 24-hour session, Content templates,
inbound WhatsApp through the signed webhook, recovery of template rows, the session stores, the linter."""

import asyncio
import json
import sqlite3
import time
import uuid

import pytest

from incall_sms.actions import DEFAULT_FAILURE_LINES, parse_actions
from incall_sms.clock import ManualClock
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome
from incall_sms.errors import ActionConfigError
from incall_sms.inbound import InboundError, InboundRouter, InProcessCallRegistry, RouteOutcome, parse_inbound_form
from incall_sms.lint import lint_data
from incall_sms.media.content import build_user_message
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox, OutboxRecord
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.local import LocalProvider
from incall_sms.providers.twilio import TwilioProvider, classify_twilio_error
from incall_sms.retry import RetryPolicy
from incall_sms.whatsapp import InProcessWhatsAppSessions
from tests.helpers.webhooks import App, sms_form
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer

CALLER = "+14155552671"
AGENT = "+14155550100"
CALL = CallContext(call_id="CA77", caller_number=CALLER, agent_number=AGENT)
TEMPLATE = "HX" + "ab12" * 8
ACTIONS = parse_actions({
    "actions": [
        {   # free-form only: inside the session
            "name": "menu",
            "condition": "if the caller wants the menu on WhatsApp",
            "channel": "whatsapp",
            "content": {"template": "Hi {caller_name}, here is our menu: https://example.com/m"},
            "variables": {"caller_name": {"default": "there"}},
        },
        {   # free-form inside the session, the approved template outside it
            "name": "booking",
            "condition": "if the caller wants the booking on WhatsApp",
            "channel": "whatsapp",
            "content": {"template": "You're booked for {booking_time}. See you then!",
                        "content_sid": TEMPLATE,
                        "content_variables": {"1": "{booking_time}", "2": "{caller_name}"}},
            "variables": {"booking_time": {}, "caller_name": {"default": "there"}},
        },
        {   # the template only
            "name": "reminder",
            "condition": "if the caller wants a reminder",
            "channel": "whatsapp",
            "content": {"content_sid": TEMPLATE, "content_variables": {"1": "{booking_time}"}},
            "variables": {"booking_time": {}},
        },
        {
            "name": "long",
            "condition": "if the caller wants everything",
            "channel": "whatsapp",
            "content": {"prompt": "Write every detail of the booking", "template": "Your booking details."},
        },
    ]
})


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


def make(peer_url, *, sessions=None, outbox=None, clock=None, **options):
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer_url, timeout=2.0)
    dispatcher = Dispatcher(
        actions=ACTIONS, provider=provider, outbox=outbox or Outbox(), optouts=SqliteOptOutStore(),
        clock=clock or ManualClock(start=time.time()), retry_policy=RetryPolicy(attempts=3, base_delay=0.1, jitter=0),
        status_callback_url="https://agent.example.com/sms/status", validity_period=600,
        whatsapp_sessions=sessions, **options,
    )
    return dispatcher, provider


async def open_session(sessions, clock=None):
    await sessions.opened(CALLER, AGENT, at=(clock.now() if clock else time.time()) - 3600)
    return sessions


# -- sending -------------------------------------------------------------------------------------------------


async def test_free_form_inside_the_session_goes_to_whatsapp_addresses(peer):
    sessions = await open_session(InProcessWhatsAppSessions())
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    result = await dispatcher.send("menu", call=CALL, turn=1, variables={"caller_name": "Maria"})
    await provider.aclose()
    assert result.accepted and (result.encoding, result.segments) == ("WhatsApp", 1)
    [form] = peer.requests
    assert form["To"] == [f"whatsapp:{CALLER}"] and form["From"] == [f"whatsapp:{AGENT}"]
    assert form["Body"] == ["Hi Maria, here is our menu: https://example.com/m"]
    assert "ContentSid" not in form and "ContentVariables" not in form
    row = await dispatcher.outbox.get(result.key)
    assert (row.channel, row.to_number, row.from_number, row.content_sid) == ("whatsapp", CALLER, AGENT, None)


async def test_free_form_outside_the_session_is_refused_and_nothing_is_sent(peer):
    for sessions in (InProcessWhatsAppSessions(), None):  # no session recorded; no session store at all
        dispatcher, provider = make(peer.base_url, sessions=sessions)
        result = await dispatcher.send("menu", call=CALL, turn=1)
        await provider.aclose()
        assert result.outcome is SendOutcome.FAILED and result.reason == "whatsapp_window_closed"
        assert not result.retryable
        assert peer.requests == []
        row = await dispatcher.outbox.get(result.key)
        assert (row.status, row.reason, row.channel) == ("failed", "whatsapp_window_closed", "whatsapp")
    line = ACTIONS.get("menu").failure_line("whatsapp_window_closed")
    assert line == DEFAULT_FAILURE_LINES["whatsapp_window_closed"] and "WhatsApp" in line


async def test_an_expired_session_counts_as_closed(peer):
    clock = ManualClock(start=time.time())
    sessions = InProcessWhatsAppSessions()
    await sessions.opened(CALLER, AGENT, at=clock.now() - 24 * 3600 - 1)
    dispatcher, provider = make(peer.base_url, sessions=sessions, clock=clock)
    result = await dispatcher.send("menu", call=CALL, turn=1)
    await provider.aclose()
    assert result.reason == "whatsapp_window_closed" and peer.requests == []


async def test_content_template_outside_the_session_free_form_inside(peer):
    variables = {"booking_time": "Friday 7 pm", "caller_name": "Zoë"}
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions())
    outside = await dispatcher.send("booking", call=CALL, turn=1, variables=variables)
    assert outside.accepted
    form = peer.requests[-1]
    assert form["ContentSid"] == [TEMPLATE]
    assert json.loads(form["ContentVariables"][0]) == {"1": "Friday 7 pm", "2": "Zoë"}
    assert "Body" not in form and "MediaUrl" not in form
    assert form["To"] == [f"whatsapp:{CALLER}"] and form["From"] == [f"whatsapp:{AGENT}"]
    row = await dispatcher.outbox.get(outside.key)
    assert (row.content_sid, json.loads(row.content_variables), row.body) == (TEMPLATE, {"1": "Friday 7 pm",
                                                                                         "2": "Zoë"}, "")
    await open_session(dispatcher.whatsapp_sessions)
    other_call = CallContext(call_id="CA78", caller_number=CALLER, agent_number=AGENT)  # once per call
    inside = await dispatcher.send("booking", call=other_call, turn=1, variables=variables)
    await provider.aclose()
    assert inside.accepted
    form = peer.requests[-1]
    assert form["Body"] == ["You're booked for Friday 7 pm. See you then!"] and "ContentSid" not in form


async def test_template_only_action_and_a_missing_content_variable(peer):
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions())
    skipped = await dispatcher.send("reminder", call=CALL, turn=1)
    assert skipped.outcome is SendOutcome.SKIPPED and skipped.reason == "missing_variable"
    assert skipped.missing == ("booking_time",) and peer.requests == []
    sent = await dispatcher.send("reminder", call=CALL, turn=2, variables={"booking_time": "9 am"})
    await provider.aclose()
    assert sent.accepted and json.loads(peer.requests[-1]["ContentVariables"][0]) == {"1": "9 am"}


async def test_no_segment_cap_but_1600_characters(peer):
    sessions = await open_session(InProcessWhatsAppSessions())
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    emoji_text = "Caf\u00e9 \U0001F600 " * 150  # UCS-2 with emoji: 20+ SMS segments, one WhatsApp message
    ok = await dispatcher.send("long", call=CALL, turn=1, body=emoji_text)  # an LLM-written body
    assert ok.accepted and ok.segments == 1
    assert peer.requests[-1]["Body"] == [emoji_text.strip()]
    other_call = CallContext(call_id="CA78", caller_number=CALLER, agent_number=AGENT)
    too_long = await dispatcher.send("long", call=other_call, turn=2, body="x" * 1601)
    await provider.aclose()
    assert too_long.outcome is SendOutcome.FAILED and too_long.reason == "too_long"
    assert len(peer.requests) == 1


async def test_twilio_63016_is_an_honest_permanent_failure(peer):
    # our record says the session is open, Twilio knows better: its answer is what the caller hears
    sessions = await open_session(InProcessWhatsAppSessions())
    peer.whatsapp_window_closed.add(f"whatsapp:{CALLER}")
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    result = await dispatcher.send("menu", call=CALL, turn=1)
    await provider.aclose()
    assert (result.outcome, result.reason, result.error_code) == (SendOutcome.FAILED, "whatsapp_window_closed", 63016)
    assert not result.retryable and len(peer.requests) == 1 and peer.messages == []


def test_whatsapp_error_codes_are_classified():
    assert classify_twilio_error(400, 63016).reason == "whatsapp_window_closed"
    assert classify_twilio_error(400, 63007).reason == "sender_not_capable"
    assert classify_twilio_error(400, 63003).reason == "not_on_whatsapp"
    assert classify_twilio_error(429, 63018).retryable
    assert not classify_twilio_error(400, 63016).retryable


async def test_opt_outs_are_checked_on_the_bare_number(peer):
    sessions = await open_session(InProcessWhatsAppSessions())
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    await dispatcher.optouts.opt_out(CALLER, now=time.time())
    result = await dispatcher.send("menu", call=CALL, turn=1)
    await provider.aclose()
    assert result.reason == "opted_out" and peer.requests == []


async def test_status_callback_63016_raises_a_failed_event(peer):
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions())
    result = await dispatcher.send("reminder", call=CALL, turn=1, variables={"booking_time": "9 am"})
    await provider.aclose()
    event = await dispatcher.handle_status(result.sid, "failed", 63016)
    assert event is not None and event.reason == "whatsapp_window_closed"


# -- ambiguity and recovery ------------------------------------------------------------------------------------


async def test_an_ambiguous_template_send_is_unconfirmed_never_resent(peer):
    # created, then the connection dropped: no lookup can tell a template message from another one between
    # the same two addresses, so it is told unconfirmed ("check your phone"), and never sent twice
    peer.faults.append(Fault(drop=True, commit=True))
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions(), ambiguity_delay=0.01)
    result = await dispatcher.send("reminder", call=CALL, turn=1, variables={"booking_time": "9 am"})
    await provider.aclose()
    assert (result.outcome, result.reason) == (SendOutcome.FAILED, "unconfirmed")
    assert len(peer.messages) == 1 and peer.list_requests == 0


async def test_recovery_resends_a_content_template_row_exactly(peer, tmp_path):
    clock = ManualClock(start=time.time())
    path = tmp_path / "outbox.db"
    crashed = Outbox(path, worker_id="local")
    variables = json.dumps({"1": "Friday 7 pm", "2": "Zo\u00eb"}, ensure_ascii=False, separators=(",", ":"))
    record = OutboxRecord(key="CA77:booking:1", call_id="CA77", action="booking", turn=1, status="pending",
                          to_number=CALLER, from_number=AGENT, body="", segments=1, encoding="WhatsApp",
                          channel="whatsapp", content_sid=TEMPLATE, content_variables=variables,
                          created_at=clock.now(), updated_at=clock.now())
    await crashed.claim(record, once_per_call=True, max_per_call=3)
    crashed.close()  # the worker died before sending

    dispatcher, provider = make(peer.base_url, outbox=Outbox(path, worker_id="local"), clock=clock)
    [result] = await dispatcher.recover()
    await provider.aclose()
    assert result.accepted
    [form] = peer.requests
    assert form == {"To": [f"whatsapp:{CALLER}"], "From": [f"whatsapp:{AGENT}"], "ContentSid": [TEMPLATE],
                    "ContentVariables": [variables], "StatusCallback": ["https://agent.example.com/sms/status"],
                    "ValidityPeriod": ["600"]}


async def test_local_provider_keeps_whatsapp_and_template_messages():
    provider = LocalProvider(content_templates={TEMPLATE: "Booked for {{1}}"})
    sms = OutboundSms(to=CALLER, from_=AGENT, body="", key="k", channel="whatsapp", content_sid=TEMPLATE,
                      content_variables='{"1":"9 am"}')
    receipt = await provider.send(sms)
    [message] = await provider.inbox(CALLER)
    assert (message.channel, message.body, message.content_sid, message.encoding) == (
        "whatsapp", "Booked for 9 am", TEMPLATE, "WhatsApp")
    assert [r.sid for r in await provider.find_sent(sms, since=0)] == [receipt.sid]
    as_sms = OutboundSms(to=CALLER, from_=AGENT, body="Booked for 9 am", key="k")
    assert await provider.find_sent(as_sms, since=0) == []  # another channel: not a candidate
    await provider.aclose()


# -- inbound -----------------------------------------------------------------------------------------------------


def whatsapp_form(body="Here you go", **extra):
    form = sms_form(body=body, from_=f"whatsapp:{CALLER}", to=f"whatsapp:{AGENT}", **extra)
    form.update({"ProfileName": "Maria", "WaId": CALLER.lstrip("+"), "NumSegments": "1"})
    return form


def test_parse_whatsapp_form_strips_the_prefix():
    message = parse_inbound_form(whatsapp_form(sid="SM" + "1" * 32))
    assert (message.from_number, message.to_number, message.channel) == (CALLER, AGENT, "whatsapp")
    assert parse_inbound_form(sms_form()).channel == "sms"
    assert "WhatsApp" in repr(message) and CALLER not in repr(message)


@pytest.mark.parametrize(("from_", "to", "field"), [
    (f"messenger:{CALLER}", f"messenger:{AGENT}", "From"),
    (f"whatsapp:{CALLER}", AGENT, "To"),
    (CALLER, f"rcs:{AGENT}", "To"),
    ("whatsapp:not-a-number", f"whatsapp:{AGENT}", "From"),
])
def test_other_channels_and_mixed_pairs_are_refused(from_, to, field):
    with pytest.raises(InboundError) as info:
        parse_inbound_form(sms_form(from_=from_, to=to))
    assert info.value.field == field


async def test_inbound_whatsapp_reaches_the_call_and_opens_the_session(peer, tmp_path):
    sessions = InProcessWhatsAppSessions()
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=SqliteOptOutStore(), store_path=tmp_path / "inbound.db",
                           whatsapp_sessions=sessions)
    got = []

    async def handler(message):
        got.append(message)

    unregister = await registry.register(CALLER, AGENT, handler)
    dispatcher, provider = make(peer.base_url, sessions=sessions)
    before = await dispatcher.send("menu", call=CALL, turn=1)
    assert before.reason == "whatsapp_window_closed"
    async with App(router) as app:
        status, text, _ = await app.post("/sms/inbound", whatsapp_form())
        assert status == 200 and text.endswith("<Response/>")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
    await unregister()
    [message] = got
    assert (message.channel, message.from_number, message.body) == ("whatsapp", CALLER, "Here you go")
    context = await build_user_message(message, fetcher=None)
    assert context["content"].startswith('The caller sent a WhatsApp message to this number during the call')
    after = await dispatcher.send("menu", call=CALL, turn=2)
    await provider.aclose()
    router.close()
    assert after.accepted and peer.requests[-1]["To"] == [f"whatsapp:{CALLER}"]


async def test_unrouted_whatsapp_is_stored_with_its_channel(tmp_path):
    router = InboundRouter(registry=InProcessCallRegistry(), optouts=SqliteOptOutStore(),
                           store_path=tmp_path / "inbound.db", whatsapp_sessions=InProcessWhatsAppSessions())
    outcome = await router.route(parse_inbound_form(whatsapp_form()))
    [stored] = await router.stored()
    router.close()
    assert outcome is RouteOutcome.STORED and stored["channel"] == "whatsapp"


def test_an_old_inbound_store_gets_the_channel_column(tmp_path):
    path = tmp_path / "inbound.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE inbound (sid TEXT PRIMARY KEY, from_number TEXT NOT NULL, to_number TEXT NOT "
                     "NULL, body TEXT NOT NULL, media TEXT NOT NULL, outcome TEXT NOT NULL, received_at REAL NOT NULL)")
    conn.close()
    router = InboundRouter(registry=InProcessCallRegistry(), optouts=SqliteOptOutStore(), store_path=path)
    router.close()
    with sqlite3.connect(path) as conn:
        assert "channel" in {row[1] for row in conn.execute("PRAGMA table_info(inbound)")}
    conn.close()


# -- the session stores --------------------------------------------------------------------------------------------


@pytest.fixture(params=["in_process", "redis"])
async def sessions_pair(request):
    """Two handles on one session store (two workers)."""
    if request.param == "in_process":
        store = InProcessWhatsAppSessions(window=100)
        yield store, store
        return
    from incall_sms.redis_store import RedisWhatsAppSessions, connect

    url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    clients = [connect(url), connect(url)]
    yield tuple(RedisWhatsAppSessions(c, window=100, prefix=prefix) for c in clients)
    for client in clients:
        await client.aclose()


async def test_session_store_contract(sessions_pair):
    a, b = sessions_pair
    t0 = 1_800_000_000.0
    assert not await b.is_open(CALLER, AGENT, now=t0)
    await a.opened(CALLER, AGENT, at=t0)
    assert await b.is_open(CALLER, AGENT, now=t0 + 99)
    assert not await b.is_open(CALLER, AGENT, now=t0 + 100)
    assert not await b.is_open(CALLER, "+14155550101", now=t0 + 1)  # another business number: its own session
    assert not await b.is_open("+14155550199", AGENT, now=t0 + 1)
    await b.opened(CALLER, AGENT, at=t0 + 50)
    await a.opened(CALLER, AGENT, at=t0 + 10)  # a late webhook never moves the session back
    assert await a.is_open(CALLER, AGENT, now=t0 + 149)
    assert not await a.is_open(CALLER, AGENT, now=t0 + 150)


# -- config and linter ----------------------------------------------------------------------------------------------


def _one(**action):
    base = {"name": "wa", "condition": "if the caller wants it on WhatsApp", "channel": "whatsapp"}
    return {"actions": [{**base, **action}]}


def test_config_rules():
    with pytest.raises(ActionConfigError, match="content_sid"):
        parse_actions(_one(channel="sms", content={"template": "x", "content_sid": TEMPLATE}))
    with pytest.raises(ActionConfigError, match="pool"):
        parse_actions({"presets": {"p": "hi"}, **_one(sender="pool", content={"preset": "p"})})
    with pytest.raises(ActionConfigError, match="unknown template variable"):
        parse_actions(_one(content={"content_sid": TEMPLATE, "content_variables": {"1": "{nope}"}}))


def test_lint_rows_for_whatsapp_actions():
    rows = {row.action: row for row in lint_data({"actions": [
        {"name": "free", "condition": "if the caller wants the menu", "channel": "whatsapp",
         "content": {"template": "Caf\u00e9 menu \U0001F600 " * 20}, "filler": "One moment."},
        {"name": "both", "condition": "if the caller wants the booking", "channel": "whatsapp",
         "content": {"template": "Booked for {t}", "content_sid": TEMPLATE, "content_variables": {"1": "{t}"}},
         "variables": {"t": {"example": "Friday 7 pm"}}, "filler": "One moment."},
        {"name": "tpl", "condition": "if the caller wants a reminder", "channel": "whatsapp",
         "content": {"content_sid": TEMPLATE, "content_variables": {"1": "{t}", "2": "{unknown}"}},
         "variables": {"t": {}}, "filler": "One moment."},
        {"name": "huge", "condition": "if the caller wants all of it", "channel": "whatsapp",
         "content": {"template": "y" * 1700}, "filler": "One moment."},
    ]})}
    free = rows["free"]
    assert (free.channel, free.encoding, free.segments) == ("whatsapp", "WhatsApp", 1)
    assert not any("segment" in w or "UCS-2" in w for w in free.warnings)
    assert any("24 hours" in w for w in free.warnings) and not free.errors
    both = rows["both"]
    assert both.content_sid == TEMPLATE and not both.errors
    assert not any("24 hours" in w for w in both.warnings)
    assert any("Content template" in n for n in both.notes)
    tpl = rows["tpl"]
    assert tpl.mode == "content" and tpl.chars == 0
    assert any("content variable '2'" in e and "unknown" in e for e in tpl.errors)
    assert any("1600" in e or "1,600" in e for e in rows["huge"].errors)


async def test_a_whatsapp_message_forwarded_to_the_owning_worker_keeps_its_channel(redis_url):
    from incall_sms.redis_store import RedisCallRegistry, connect

    prefix = f"t{uuid.uuid4().hex[:8]}"
    clients = [connect(redis_url), connect(redis_url)]
    owner = RedisCallRegistry(clients[0], worker_id="A", prefix=prefix)
    other = RedisCallRegistry(clients[1], worker_id="B", prefix=prefix)
    await owner.start()
    got = asyncio.Queue()

    async def handler(message):
        await got.put(message)

    unregister = await owner.register(CALLER, AGENT, handler)
    try:
        forward = await other.lookup(CALLER, AGENT)
        assert forward is not None
        await forward(parse_inbound_form(whatsapp_form()))
        message = await asyncio.wait_for(got.get(), 5)
    finally:
        await unregister()
        await owner.aclose()
        for client in clients:
            await client.aclose()
    assert (message.channel, message.from_number, message.to_number) == ("whatsapp", CALLER, AGENT)
