"""A text the caller sends before the asking text's acceptance was processed is kept for its wait.

The caller may text before Twilio's answer to our create request is in (a slow answer, a timeout then a
lookup, or a caller who texts the number they called while the agent says it is texting them). Such a text
is held (bounded) until the asking send settles: taken as the reply when the ask was accepted, an ordinary
inbound text when it was not.
"""

import asyncio

import pytest
from pipecat.frames.frames import UserStartedSpeakingFrame, UserStoppedSpeakingFrame

from incall_sms.inbound import InboundMedia, InboundMessage
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
    """The peer has the create request; our side has no answer yet (no wait opened)."""
    return len(peer.requests) == 1 and not engine.waits


async def _deliver_soon(inbound, message):
    """Deliver without awaiting the injection (a held text returns only once injected)."""
    return asyncio.get_running_loop().create_task(inbound.deliver(message))


async def test_a_reply_texted_before_the_ask_was_confirmed_is_taken_as_the_reply(peer):
    peer.faults = [Fault(delay=1.0)]  # Twilio created the message; its answer is slow
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


async def test_an_early_text_is_an_ordinary_message_when_the_ask_is_not_sent(peer):
    peer.faults = [Fault(status=400, code=21211, commit=False, delay=0.5)]  # the ask is refused
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
    peer.faults = [Fault(delay=3.0)]
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    engine.early_reply_hold = 0.3
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, user_quiet_wait=0.5)
    inbound = InboundMessageProcessor(replies=engine)

    async def script(worker):
        await worker.queue_frame(said("Can I text you my email? It's long."))
        await until(lambda: _ask_in_flight(peer, engine))
        await asyncio.wait_for(inbound.deliver(reply("hello, are you there?")), 2.0)
        assert not engine.waits  # still out: the text went in as an ordinary one
        await until(lambda: bool(engine.waits), timeout=6)

    await run_pipeline([sms, inbound], script)
    assert len(inbound.injected) == 1 and "email" not in engine.variables


async def test_engine_level_the_held_text_waits_only_while_an_ask_is_out(peer):
    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    await asyncio.wait_for(engine.ready_for(reply("ana@example.org")), 0.1)  # nothing out: at once
