"""A text the caller sends before the asking text's acceptance was processed is kept for its wait.

The caller may text before Twilio's answer to our create request is in (a slow answer, a timeout then a
lookup, or a caller who texts the number they called while the agent says it is texting them). Such a text
is held (bounded) until the asking send settles: taken as the reply when the ask was accepted, an ordinary
inbound text when it was not.
"""

import asyncio
import json

import pytest
from pipecat.frames.frames import UserStartedSpeakingFrame, UserStoppedSpeakingFrame

from incall_sms.engine import Firing
from incall_sms.inbound import InboundMedia, InboundMessage
from incall_sms.judges.base import Match
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import SmsActionProcessor
from tests.helpers.pipeline import run_pipeline
from tests.helpers.sms import AGENT, CALLER, make_engine
from tests.peers.twilio_peer import ACCOUNT_SID, Fault, TwilioPeer
from tests.test_await_reply import EMAIL_FLOW, Notes, lines, reply, said, until


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


def _ask_in_flight(peer, engine) -> bool:
    """The peer has the create request; our side has no answer yet (the send runs, no wait opened)."""
    return len(peer.requests) == 1 and not engine.waits and engine.action_state("ask_email") == "in_progress"


async def _deliver_soon(inbound, message):
    """Deliver without awaiting the injection (a held text returns only once injected)."""
    return asyncio.get_running_loop().create_task(inbound.deliver(message))


async def test_a_reply_texted_before_the_ask_was_confirmed_is_taken_as_the_reply(peer):
    peer.faults = [Fault(delay=2.0)]  # Twilio created the message; its answer is slow
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.5)
    notes = Notes()
    inbound = InboundMessageProcessor(replies=engine)
    timeouts = []
    sms.add_event_handler("on_sms_reply_timeout", lambda proc, name: timeouts.append(name))

    async def script(worker):
        await worker.queue_frame(UserStartedSpeakingFrame())
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await worker.queue_frame(UserStoppedSpeakingFrame())
        await until(lambda: _ask_in_flight(peer, engine))
        delivery = await _deliver_soon(inbound, reply("ana@example.org"))
        await asyncio.sleep(0.3)
        assert not delivery.done()  # held while the ask's answer is out
        await until(lambda: ("confirmation", "email_received") in lines(sms))
        await delivery
        await asyncio.sleep(0.2)

    await run_pipeline([sms, notes, inbound], script)
    assert engine.variables["email"] == "ana@example.org"
    assert any("reply with their email" in n for n in notes.notes)
    assert [m.body for m in peer.messages][-1].startswith("Thanks! Your receipt will go to ana@example.org")
    assert timeouts == []
    assert not any(w.open for w in engine.waits)
    assert ("waiting", "ask_email") not in lines(sms)  # no "reply when you can": the reply is in


async def test_an_early_text_is_an_ordinary_message_when_the_ask_is_not_sent(peer):
    peer.faults = [Fault(status=400, code=21211, commit=False, delay=1.5)]  # the ask is refused
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.5)
    notes = Notes()
    inbound = InboundMessageProcessor(replies=engine)

    async def script(worker):
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await until(lambda: _ask_in_flight(peer, engine))
        await inbound.deliver(reply("ana@example.org"))  # returns once it is in the conversation
        assert engine.last_result("ask_email") is not None  # ...which was after the ask settled
        await asyncio.sleep(0.2)

    await run_pipeline([sms, notes, inbound], script)
    assert "email" not in engine.variables
    assert [sid for _t, sid, _m in inbound.injected] and not any("reply with their email" in n for n in notes.notes)
    assert not engine.last_result("ask_email").accepted


async def test_a_picture_without_text_is_not_held(peer):
    peer.faults = [Fault(delay=2.0)]
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.5)
    inbound = InboundMessageProcessor(replies=engine)
    photo = InboundMessage(sid="MM" + "1" * 32, account_sid=ACCOUNT_SID, from_number=CALLER, to_number=AGENT,
                           body="", media=(InboundMedia(url="https://api.twilio.com/x.jpg",
                                                        content_type="image/jpeg"),))

    async def script(worker):
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await until(lambda: _ask_in_flight(peer, engine))
        await asyncio.wait_for(inbound.deliver(photo), 1.0)  # answers nothing: not held
        assert not engine.waits
        await until(lambda: bool(engine.waits), timeout=5)

    await run_pipeline([sms, inbound], script)
    assert len(inbound.injected) == 1


async def test_the_hold_is_bounded(peer):
    peer.faults = [Fault(delay=4.0)]
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    engine.early_reply_hold = 0.5
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.5)
    inbound = InboundMessageProcessor(replies=engine)

    async def script(worker):
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await until(lambda: _ask_in_flight(peer, engine))
        delivery = await _deliver_soon(inbound, reply("hello, are you there?"))
        await asyncio.sleep(0.1)
        assert not delivery.done()  # held...
        await asyncio.wait_for(delivery, 2.0)  # ...not for long
        assert not engine.waits  # the ask is still out: the text went in as an ordinary one
        await until(lambda: bool(engine.waits), timeout=8)

    await run_pipeline([sms, inbound], script)
    assert len(inbound.injected) == 1 and "email" not in engine.variables


# -- the engine alone ---------------------------------------------------------------


def _firing(engine, name="ask_email"):
    action = engine.actions.get(name)
    return Firing(action=action, turn=1, at="turn", match=Match(id=name, confidence=1.0, reason="test"))


async def _held(engine, message, *, within=0.2) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(engine.ready_for(message))
    await asyncio.sleep(within)
    assert not task.done(), "expected the text to be held"
    return task


async def test_nothing_is_held_while_no_ask_is_out(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    await asyncio.wait_for(engine.ready_for(reply("ana@example.org")), 0.1)
    one_way = make_engine(peer=peer)  # actions without await_reply never hold anything
    peer.faults = [Fault(delay=1.0)]
    send = asyncio.get_running_loop().create_task(one_way.execute(_firing(one_way, one_way.actions.actions[0].name)))
    await until(lambda: len(peer.requests) == 1)
    await asyncio.wait_for(one_way.ready_for(reply("ana@example.org")), 0.1)
    await send


async def _ask_out_with_a_held_text(peer, *, answer_after: float):
    """An asking text sent (its answer late by ``answer_after``) and a caller's text held meanwhile."""
    peer.faults = [Fault(delay=answer_after)]
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    send = asyncio.get_running_loop().create_task(engine.execute(_firing(engine)))
    await until(lambda: len(peer.requests) == 1)
    return engine, send, await _held(engine, reply("ana@example.org"))


async def test_a_cancelled_ask_releases_the_held_text(peer):
    engine, send, held = await _ask_out_with_a_held_text(peer, answer_after=5.0)
    send.cancel()
    await asyncio.wait_for(held, 1.0)
    assert engine.offer_reply(reply("ana@example.org")) is None  # no wait: an ordinary text


async def test_the_call_end_releases_the_held_text(peer):
    engine, send, held = await _ask_out_with_a_held_text(peer, answer_after=3.0)
    engine.close_all_waits()
    await asyncio.wait_for(held, 0.5)
    outcome = await send
    assert outcome.result.accepted and not any(w.open for w in engine.waits)  # born closed
    await asyncio.wait_for(engine.ready_for(reply("x@example.org")), 0.1)  # the call is ending: no hold


async def test_two_asks_out_hold_until_both_settled_and_order_is_kept(peer):
    flow = {"actions": [EMAIL_FLOW["actions"][0], {**EMAIL_FLOW["actions"][0], "name": "ask_phone",
                                                   "await_reply": {"variable": "phone", "kind": "phone",
                                                                   "timeout": 30}}]}
    peer.faults = [Fault(delay=0.5), Fault(delay=1.5)]
    engine = make_engine(peer=peer, actions=flow)
    loop = asyncio.get_running_loop()
    sends = [loop.create_task(engine.execute(_firing(engine, n))) for n in ("ask_email", "ask_phone")]
    await until(lambda: len(peer.requests) == 2)
    order = []
    text = await _held(engine, reply("ana@example.org"))
    text.add_done_callback(lambda _t: order.append("text"))
    photo = InboundMessage(sid="MM" + "2" * 32, account_sid=ACCOUNT_SID, from_number=CALLER, to_number=AGENT,
                           body="", media=(InboundMedia(url="https://api.twilio.com/y.jpg",
                                                        content_type="image/jpeg"),))
    picture = await _held(engine, photo, within=0.05)  # behind a held text: held too, to keep the order
    picture.add_done_callback(lambda _t: order.append("picture"))
    await until(lambda: len(engine.waits) == 1, timeout=3)  # the first ask settled: the second is still out
    await asyncio.sleep(0.1)
    assert not text.done()
    await asyncio.wait_for(asyncio.gather(text, picture), 3.0)
    assert order == ["text", "picture"]
    await asyncio.gather(*sends)


async def test_a_reply_to_an_open_wait_passes_while_another_ask_is_out(peer):
    flow = {"actions": [EMAIL_FLOW["actions"][0], {**EMAIL_FLOW["actions"][0], "name": "ask_phone",
                                                   "await_reply": {"variable": "phone", "kind": "phone",
                                                                   "timeout": 30}}]}
    engine = make_engine(peer=peer, actions=flow)
    await engine.execute(_firing(engine, "ask_email"))
    peer.faults = [Fault(delay=2.0)]
    send = asyncio.get_running_loop().create_task(engine.execute(_firing(engine, "ask_phone")))
    await until(lambda: len(peer.requests) == 2)
    await asyncio.wait_for(engine.ready_for(reply("ana@example.org")), 0.1)  # the open email wait takes it
    await _held(engine, reply("hello?"))  # not a reply of the open wait: may be the phone ask's
    await send


async def test_a_reply_sink_without_ready_for_still_gets_every_text():
    class OldSink:
        def offer_reply(self, message):
            return None

    inbound = InboundMessageProcessor(replies=OldSink())

    async def script(worker):
        await asyncio.wait_for(inbound.deliver(reply("hello")), 2.0)

    await run_pipeline([inbound], script)
    assert len(inbound.injected) == 1


async def test_an_invalid_reply_near_the_timeout_is_not_cut_off_by_its_reask(peer):
    flow = json.loads(json.dumps(EMAIL_FLOW))
    flow["actions"][0]["await_reply"]["timeout"] = 1.0
    engine = make_engine(peer=peer, actions=flow)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.2)
    inbound = InboundMessageProcessor(replies=engine)
    timeouts = []
    sms.add_event_handler("on_sms_reply_timeout", lambda proc, name: timeouts.append(name))

    async def script(worker):
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await until(lambda: any(w.open for w in engine.waits))
        await asyncio.sleep(0.7)  # near the end of the wait...
        peer.faults = [Fault(delay=0.8)]  # ...the re-ask's answer is slow: it outlives the first deadline
        await inbound.deliver(reply("i don't have one handy"))
        await until(lambda: engine.accepted_count == 2, timeout=3)  # the re-ask's answer is in
        await asyncio.sleep(0.1)
        assert timeouts == []
        await inbound.deliver(reply("ana@example.org"))
        await until(lambda: engine.variables.get("email") == "ana@example.org", timeout=3)

    await run_pipeline([sms, inbound], script)
    assert timeouts == []
