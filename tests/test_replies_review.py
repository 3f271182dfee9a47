"""Problems an outside review of await_reply / ask_consent found, each fixed; these tests failed before."""

import asyncio
import json

import pytest
from pipecat.frames.frames import UserStartedSpeakingFrame, UserStoppedSpeakingFrame

from incall_sms.actions import parse_actions
from incall_sms.errors import ActionConfigError
from incall_sms.inbound import InboundMedia, InboundMessage, InboundRouter, InProcessCallRegistry, RouteOutcome
from incall_sms.judges.base import Match
from incall_sms.optout import SqliteOptOutStore
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import SmsActionProcessor
from tests.helpers.pipeline import run_pipeline
from tests.helpers.sms import AGENT, CALLER, make_engine
from tests.peers.twilio_peer import ACCOUNT_SID, Fault, TwilioPeer
from tests.test_await_reply import CONSENT, EMAIL_FLOW, Notes, lines, reply, said, until


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


YES_NO_FLOW = {"actions": [{
    "name": "ask_confirm",
    "condition": "if the caller wants to confirm the appointment by text",
    "content": {"template": "Reply YES to confirm your appointment, NO to cancel."},
    "await_reply": {"variable": "confirmed", "kind": "yes_no", "timeout": 30},
    "filler": None,
}]}



async def test_a_texted_yes_is_recorded_as_opt_in_and_still_reaches_the_call(tmp_path):
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=SqliteOptOutStore(), store_path=tmp_path / "in.db")
    delivered = []

    async def handler(message):
        delivered.append(message.body)

    unregister = await registry.register(CALLER, AGENT, handler)
    outcomes = []
    for i, body in enumerate(["YES", "Yes!", "yes.", "No"]):
        msg = InboundMessage(sid=f"SM{i + 1:032x}", account_sid=ACCOUNT_SID, from_number=CALLER,
                             to_number=AGENT, body=body)
        outcomes.append(await router.route(msg))
    await unregister()
    router.close()
    assert outcomes[:3] == [RouteOutcome.OPT_IN] * 3  # the keyword is applied ...
    assert delivered == ["YES", "Yes!", "yes.", "No"]  # ... and the live call gets every message


async def test_yes_no_wait_takes_a_texted_yes(peer):
    engine = make_engine(peer=peer, actions=YES_NO_FLOW)
    [f] = engine.claim(engine.actions.get("ask_confirm"), match=Match(id="ask_confirm", confidence=1.0, reason="t"))
    await engine.execute(f)
    assert "valid yes/no" in engine.offer_reply(reply("YES"))
    assert engine.variables["confirmed"] == "yes"


async def test_consent_is_read_from_the_whole_turn_not_its_first_fragment(peer):
    engine = make_engine(peer=peer, actions=CONSENT)
    engine.add_user_text("Could you send me a link to the menu?")
    [ask] = engine.evaluate_now()
    assert ask.stage == "ask"
    engine.add_agent_text(engine.consent_question(ask.action))
    engine.question_heard("menu_link")
    engine.add_user_text("Yes.")
    assert engine.evaluate_now() == []  # fragments are not consent
    engine.add_user_text("But to my other number instead.")
    assert await engine.answer_consents() == []  # the whole answer points elsewhere: no clear yes
    assert engine.consent_state("menu_link") == "asking"


async def test_a_yes_after_the_agent_asked_something_else_is_not_consent(peer):
    engine = make_engine(peer=peer, actions=CONSENT)
    engine.add_user_text("Could you send me a link to the menu? And I want to book a table.")
    [ask] = engine.evaluate_now()
    engine.add_agent_text(engine.consent_question(ask.action) + " Sure, shall I book you a table for four?")
    engine.question_heard("menu_link")
    engine.add_user_text("Yes.")
    assert await engine.answer_consents() == []  # for the judge, which (embedded) cannot tell: nothing sent
    engine.add_agent_text(engine.consent_question(ask.action))
    engine.question_heard("menu_link")
    engine.add_user_text("Yes please.")
    [send] = await engine.answer_consents()
    assert send.stage == "send"


async def test_with_two_waits_a_reply_goes_to_the_one_it_answers(peer):
    flow = json.loads(json.dumps(EMAIL_FLOW))
    flow["actions"].append({
        "name": "ask_phone", "condition": "if the caller wants to text a callback number",
        "content": {"template": "Reply with the best callback number."},
        "await_reply": {"variable": "callback", "kind": "phone", "timeout": 60}, "filler": None})
    engine = make_engine(peer=peer, actions=flow)
    for name in ("ask_email", "ask_phone"):
        [f] = engine.claim(engine.actions.get(name), match=Match(id=name, confidence=1.0, reason="t"))
        await engine.execute(f)
    got = []
    engine.reply_listener = lambda r, fs: got.append(r)
    engine.offer_reply(reply("ana@example.org"))
    assert got[0].action == "ask_email" and got[0].valid
    assert engine.variables["email"] == "ana@example.org"
    assert [w.firing.action.name for w in engine.waits if w.open] == ["ask_phone"]


async def test_a_picture_or_a_reaction_is_not_a_reply(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    [f] = engine.claim(engine.actions.get("ask_email"), match=Match(id="ask_email", confidence=1.0, reason="t"))
    await engine.execute(f)
    got = []
    engine.reply_listener = lambda r, fs: got.append(r)
    mms = InboundMessage(sid="SM" + "a" * 32, account_sid=ACCOUNT_SID, from_number=CALLER, to_number=AGENT,
                         body="", media=(InboundMedia(url="https://api.twilio.com/x.jpg", content_type="image/jpeg"),))
    assert engine.offer_reply(mms) is None
    assert engine.offer_reply(reply("Liked \u201cHi, it's Acme. Just reply to this text\u201d")) is None
    assert got == [] and engine.waits[0].open and not engine.waits[0].reasked


async def test_a_stop_closes_the_wait(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    [f] = engine.claim(engine.actions.get("ask_email"), match=Match(id="ask_email", confidence=1.0, reason="t"))
    await engine.execute(f)
    assert "opted out" in engine.offer_reply(reply("STOP"))
    assert not engine.waits[0].open


async def test_a_hang_up_while_the_asking_text_is_on_its_way_does_not_hold_the_end(peer):
    flow = json.loads(json.dumps(EMAIL_FLOW))
    flow["actions"][0]["await_reply"]["timeout"] = 600
    engine = make_engine(peer=peer, actions=flow)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, end_grace=3.0)
    peer.faults.append(Fault(delay=0.5))

    async def script(worker):
        await worker.queue_frame(said("Could you text me so I can reply with my email?"))
        await until(lambda: len(peer.requests) == 1)  # the send is in flight; the caller hangs up

    await run_pipeline([sms], script)
    assert ("waiting", "ask_email") not in lines(sms)  # no "I'll wait" to a caller who is gone
    # the wait the late acceptance opened was born closed (the old code left it open, holding the end)
    assert len(peer.messages) == 1 and len(engine.waits) == 1 and not engine.waits[0].open


async def test_a_failed_reask_is_corrected_for_the_llm(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)
    inbound = InboundMessageProcessor(replies=engine)
    notes = Notes()
    peer.fault_for = lambda form: (Fault(status=400, code=21610, commit=False)
                                   if "doesn't look like" in form.get("Body", [""])[0] else None)

    async def script(worker):
        await worker.queue_frame(said("Could you text me so I can reply with my email?"))
        await until(lambda: ("waiting", "ask_email") in lines(sms))
        await inbound.deliver(reply("john at example dot com"))
        await until(lambda: any("could not be sent" in n for n in notes.notes))

    await run_pipeline([sms, notes, inbound], script)
    reask = next(o for o in sms.outcomes if o.firing.action.name == "ask_email-reask")
    assert not reask.result.accepted
    assert not any(w.open for w in engine.waits)  # nothing left to wait for: by voice now


async def test_no_waiting_line_once_the_reply_is_in(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=2.0)
    inbound = InboundMessageProcessor(replies=engine)

    async def script(worker):
        await worker.queue_frame(UserStartedSpeakingFrame())
        await worker.queue_frame(said("Can I text you my email? It's long."))
        # Twilio accepted the ask (its answer processed: the wait is open); the reply comes at once
        await until(lambda: len(peer.messages) == 1 and any(w.open for w in engine.waits))
        await inbound.deliver(reply("ana@example.org"))  # fast typist, the caller is still talking
        await worker.queue_frame(UserStoppedSpeakingFrame())
        await until(lambda: ("confirmation", "email_received") in lines(sms))
        await asyncio.sleep(0.2)

    await run_pipeline([sms, inbound], script)
    assert engine.variables["email"] == "ana@example.org"
    assert ("waiting", "ask_email") not in lines(sms)


def test_await_reply_only_to_the_caller():
    flow = json.loads(json.dumps(EMAIL_FLOW))
    flow["actions"][0]["to"] = "+14155550199"
    with pytest.raises(ActionConfigError, match="to: caller"):
        parse_actions(flow)


async def test_consent_judge_conditions_name_each_text(peer):
    flow = {"actions": [CONSENT["actions"][0], {**CONSENT["actions"][0], "name": "hours",
                                                  "condition": "if the caller asks for the opening hours"}]}
    engine = make_engine(peer=peer, actions=flow)
    request = engine._consent_request(["menu_link", "hours"])
    assert len({c.condition for c in request.conditions}) == 4


async def test_the_wait_times_out_from_the_acceptance_with_the_fallback_even_after_a_long_turn(peer):
    flow = json.loads(json.dumps(EMAIL_FLOW))
    flow["actions"][0]["await_reply"]["timeout"] = 0.5
    engine = make_engine(peer=peer, actions=flow)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=1.0)
    notes = Notes()
    timeouts = []
    sms.add_event_handler("on_sms_reply_timeout", lambda proc, name: timeouts.append(name))

    async def slow_handler(proc, outcome):
        await asyncio.sleep(0.3)  # an app's on_action_completed handler (a DB write)

    sms.add_event_handler("on_action_completed", slow_handler)

    async def script(worker):
        await worker.queue_frame(UserStartedSpeakingFrame())  # the caller keeps talking for a while
        await worker.queue_frame(said("Could you text me so I can reply with my email?"))
        await until(lambda: ("reply_timeout", "ask_email") in lines(sms), timeout=10)

    await run_pipeline([sms, notes], script)
    assert timeouts == ["ask_email"]
    assert any("No valid text reply" in n for n in notes.notes)
    assert all(w.safety is None for w in engine.waits)  # no engine timer where a processor times the wait
