"""The SMS action processor under pipecat's own run_test harness, against real loopback peers."""

import asyncio
import dataclasses
import json

import pytest
from pipecat.frames.frames import (
    CancelFrame,
    InterruptionFrame,
    LLMMessagesAppendFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from incall_sms.dispatcher import SendOutcome
from incall_sms.events import SmsEventKind
from incall_sms.judges.llm import LLMJudge
from incall_sms.outbox import Outbox
from incall_sms.processors.sms_actions import STILL_SENDING_LINE, SmsActionProcessor
from tests.helpers.sms import CALLER, make_engine, undeliver
from tests.peers.llm_peer import LLMPeer
from tests.peers.twilio_peer import Fault, TwilioPeer


def said(text):
    return TranscriptionFrame(text=text, user_id="", timestamp="")


def kinds(processor):
    return [(line.kind, line.action) for line in processor.spoken]


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


async def test_filler_then_confirmation_after_acceptance(peer):
    peer.faults = [Fault(delay=0.8)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("Your table for four is booked for Friday at 7 pm.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.1)
    events = []
    for name in ("on_condition_matched", "on_sms_queued", "on_sms_sent"):
        sms.add_event_handler(name, lambda proc, item, name=name: events.append(name))
    down, _ = await run_test(
        sms,
        frames_to_send=[said("Great, can you text me the confirmation?"), SleepFrame(1.5)],
        expected_down_frames=[LLMMessagesAppendFrame, TranscriptionFrame, TTSSpeakFrame, TTSSpeakFrame],
    )
    note, _, filler, confirmation = down
    assert "Do not say that you sent a text" in note.messages[0]["content"]
    assert filler.text == "One moment, I'm texting that to you." and filler.append_to_context is False
    assert confirmation.text == "Done, I've texted it to your number ending in 71."
    assert kinds(sms) == [("filler", "booking_confirmation"), ("confirmation", "booking_confirmation")]
    # the booking also makes the call-end follow-up fire when run_test ends the call
    assert [(m.to, m.body) for m in peer.messages] == [
        (CALLER, "Your booking for Friday at 7 pm is confirmed."),
        (CALLER, "Thanks for calling! See you Friday at 7 pm."),
    ]
    assert events[:3] == ["on_condition_matched", "on_sms_queued", "on_sms_sent"]


async def test_fast_send_skips_filler(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=1.0)
    _down, _ = await run_test(
        sms,
        frames_to_send=[said("Can you text me the link?"), SleepFrame(0.5)],
        expected_down_frames=[LLMMessagesAppendFrame, TranscriptionFrame, TTSSpeakFrame],
    )
    assert kinds(sms) == [("confirmation", "website_link")]


async def test_provider_failure_speaks_honest_line_never_sent(peer):
    peer.faults = [Fault(status=400, code=21610, delay=0.4, commit=False)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)
    failed = []
    sms.add_event_handler("on_sms_failed", lambda proc, event: failed.append(event))
    down, _ = await run_test(sms, frames_to_send=[said("Send me the link please."), SleepFrame(1.0)])
    texts = [f.text for f in down if isinstance(f, TTSSpeakFrame)]
    assert len(texts) == 2
    assert "opted out" in texts[1] and "texted" not in texts[1]
    assert ("confirmation", "website_link") not in kinds(sms)
    assert failed and failed[0].reason == "opted_out" and failed[0].to_masked == "+1******2671"
    assert peer.messages == []


async def test_a_send_that_crashes_is_spoken_as_a_failure_not_silence(peer, caplog):
    """An exception escaping the send (a bug, a broken store) still ends in an honest line to the caller.

    pipecat's task helper logs an exception raised in a task and returns None: the processor must not
    rely on the exception reaching it.
    """
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")

    async def crash(firing):
        await asyncio.sleep(0.2)
        raise RuntimeError("the outbox went away")

    engine.execute = crash
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)
    with caplog.at_level("ERROR"):
        down, _ = await run_test(sms, frames_to_send=[said("Send me the link please."), SleepFrame(0.8)])
    texts = [f.text for f in down if isinstance(f, TTSSpeakFrame)]
    assert kinds(sms) == [("filler", "website_link"), ("failure", "website_link")]
    assert "went wrong" in texts[-1] and "texted" not in texts[-1]
    assert "crashed" in caplog.text and "RuntimeError" in caplog.text
    assert sms.outcomes == []


async def test_a_send_still_unsettled_long_after_the_filler_is_not_left_in_silence(peer):
    peer.faults = [Fault(delay=1.2)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, still_sending_after=0.4)
    down, _ = await run_test(sms, frames_to_send=[said("Send me the link please."), SleepFrame(1.8)])
    assert kinds(sms) == [("filler", "website_link"), ("still_sending", "website_link"),
                          ("confirmation", "website_link")]
    texts = [f.text for f in down if isinstance(f, TTSSpeakFrame)]
    assert texts[1] == STILL_SENDING_LINE and len(peer.messages) == 1


async def test_no_still_sending_line_once_the_call_is_ending(peer):
    """The line promises an outcome: not said when the call closes before it (EndFrame, end grace)."""
    peer.faults = [Fault(delay=2.5)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, still_sending_after=0.6, end_grace=1.2)
    await run_test(sms, frames_to_send=[said("Text me the link, thanks, bye!"), SleepFrame(0.3)])
    assert ("filler", "website_link") in kinds(sms)
    assert ("still_sending", "website_link") not in kinds(sms)


async def test_the_still_sending_line_is_said_once_for_sends_slow_together(peer):
    peer.fault_for = lambda form: Fault(delay=1.5)
    engine = make_engine(peer=peer)
    engine.add_agent_text("Your table for four is booked for Friday at 7 pm. It's all on our website too.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, still_sending_after=0.5)
    await run_test(sms, frames_to_send=[
        said("Great, can you text me the booking confirmation and the link to the website?"), SleepFrame(2.5)])
    assert len(peer.messages) == 3  # and the call-end follow-up: a meeting was booked
    assert sorted(a for k, a in kinds(sms) if k == "filler") == ["booking_confirmation", "website_link"]
    assert [k for k, _ in kinds(sms)].count("still_sending") == 1


async def test_the_still_sending_line_is_not_said_over_the_caller(peer):
    """No news in it: when the caller is still talking after user_quiet_wait, it is dropped, not said over them."""
    peer.faults = [Fault(delay=3.0)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, still_sending_after=0.5, user_quiet_wait=1.0)
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(0.3), UserStartedSpeakingFrame(),
                                        SleepFrame(2.5), UserStoppedSpeakingFrame(), SleepFrame(1.2)])
    assert ("still_sending", "website_link") not in kinds(sms)
    assert ("confirmation", "website_link") in kinds(sms)


async def test_interruption_cuts_filler_not_the_send(peer):
    peer.faults = [Fault(delay=1.0)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("You're booked for Tuesday at 3.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)
    _down, _ = await run_test(
        sms,
        frames_to_send=[said("Could you send that to my phone?"), SleepFrame(0.3), InterruptionFrame(),
                        said("Actually also, what time is it?"), SleepFrame(1.5)],
    )
    bodies = [m.body for m in peer.messages]
    assert bodies.count("Your booking for Tuesday at 3 is confirmed.") == 1
    assert kinds(sms)[-1] == ("confirmation", "booking_confirmation")
    assert sms.outcomes[0].result.accepted


async def test_confirmation_waits_for_the_end_of_the_callers_turn_not_a_pause_in_it(peer):
    """The VAD stops at every pause; the caller's turn ends when the aggregator says so. The confirmation is not
    pushed into a pause mid-turn (where the rest of the turn would cut it)."""
    peer.faults = [Fault(delay=0.3)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, filler_threshold=5.0, user_quiet_wait=5.0)
    sent = []
    sms.add_event_handler("on_sms_sent", lambda proc, event: sent.append(event))
    down, _ = await run_test(sms, frames_to_send=[
        UserStartedSpeakingFrame(), VADUserStartedSpeakingFrame(), said("Can you text me the link?"),
        VADUserStoppedSpeakingFrame(), SleepFrame(0.8),  # a pause: the send finishes meanwhile
        VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(), SleepFrame(0.3),
        UserStoppedSpeakingFrame(), SleepFrame(0.3),  # the turn's end
    ])
    assert sent
    order = [type(f).__name__ for f in down if not isinstance(f, (LLMMessagesAppendFrame, TranscriptionFrame))]
    assert order == ["UserStartedSpeakingFrame", "VADUserStartedSpeakingFrame", "VADUserStoppedSpeakingFrame",
                     "VADUserStartedSpeakingFrame", "VADUserStoppedSpeakingFrame", "UserStoppedSpeakingFrame",
                     "TTSSpeakFrame"]


async def test_repeated_request_fires_once(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine)
    await run_test(sms, frames_to_send=[
        said("Text me the link."), SleepFrame(0.3), said("Yes, please text me the link."), SleepFrame(0.3),
    ])
    assert len(peer.messages) == 1
    assert [o.firing.action.name for o in sms.outcomes] == ["website_link"]


async def test_call_end_condition_fires_on_end_frame(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("Your meeting with Dana is booked for Monday at 10 am.")
    sms = SmsActionProcessor(engine=engine)
    down, _ = await run_test(sms, frames_to_send=[said("Perfect, bye.")])
    # run_test sends EndFrame last: the follow-up is sent before the EndFrame leaves, nothing is spoken
    assert [m.body for m in peer.messages] == ["Thanks for calling! See you Monday at 10 am."]
    assert not any(isinstance(f, TTSSpeakFrame) for f in down)


async def test_call_end_waits_for_in_flight_send(peer):
    peer.faults = [Fault(delay=1.0)]
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, end_grace=5.0)
    await run_test(sms, frames_to_send=[said("Text me the link, bye!")])  # EndFrame right behind
    assert len(peer.messages) == 1
    assert sms.outcomes and sms.outcomes[0].result.accepted


async def test_cancel_mid_send_leaves_row_for_recovery_no_duplicate(peer, tmp_path):
    peer.faults = [Fault(delay=5.0, commit=True)]
    db = tmp_path / "outbox.db"
    engine = make_engine(peer=peer, outbox=Outbox(db), timeout=20)
    engine.add_agent_text("It's all on our website.")
    sms = SmsActionProcessor(engine=engine, cancel_grace=0.3)
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(0.3), CancelFrame()],
                   send_end_frame=False)
    [row] = await engine.dispatcher.outbox.unfinished()
    assert row.status == "sending"
    # a restarted worker resolves it with the provider: found, not resent
    fresh = make_engine(peer=peer, outbox=Outbox(db))
    results = await fresh.dispatcher.recover()
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED]
    assert len(peer.messages) == 1 and len(peer.requests) == 1


async def test_negative_turns_send_nothing(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("Would you like me to text you the link?")
    sms = SmsActionProcessor(engine=engine)
    _down, _ = await run_test(sms, frames_to_send=[said("No thanks, I'll google it."), SleepFrame(0.2)],
                             expected_down_frames=[TranscriptionFrame])
    assert peer.requests == []


def test_unknown_event_name_fails():
    sms = SmsActionProcessor(engine=make_engine())
    with pytest.raises(ValueError, match="unknown event 'on_sms_snet'"):
        sms.add_event_handler("on_sms_snet", lambda *a: None)


async def test_llm_judge_path_runs_in_background(peer):
    def responder(body):
        return json.dumps({"matches": [{"id": "website_link", "confidence": 0.95, "reason": "asked for the link"}]})

    async with LLMPeer(responder, latency=0.3) as llm:
        judge = LLMJudge(base_url=llm.base_url, model="judge", timeout=5)
        engine = make_engine(peer=peer, judge=judge)
        sms = SmsActionProcessor(engine=engine)
        matched = []
        sms.add_event_handler("on_condition_matched", lambda proc, firing: matched.append(firing.match.reason))
        down, _ = await run_test(sms, frames_to_send=[said("could you shoot the site over"), SleepFrame(1.0)])
        await judge.aclose()
    # the transcript is forwarded at once; the note and lines follow when the judge answers
    assert isinstance(down[0], TranscriptionFrame)
    assert any(isinstance(f, LLMMessagesAppendFrame) for f in down[1:])
    assert matched == ["asked for the link"]
    assert len(peer.messages) == 1


async def test_delivery_failure_callback_is_spoken(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine)

    async def callback_later():
        while not peer.messages:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await engine.dispatcher.handle_status(peer.messages[0].sid, "undelivered", 30003)

    task = asyncio.get_running_loop().create_task(callback_later())
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(1.0)])
    await task
    assert kinds(sms)[-1] == ("delivery_failure", "website_link")
    assert "didn't go through" in sms.spoken[-1].text


@pytest.mark.parametrize("when", ["before the outcome", "while the confirmation waits"])
async def test_no_confirmation_after_the_caller_was_told_the_text_did_not_arrive(peer, when):
    # the confirmation waits for the caller to finish speaking; a delivery failure may come before or during
    # that wait: the caller then hears the failure once, after they finish, and never "I've texted it"
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine, user_quiet_wait=5.0)
    reports = undeliver(engine, after=None if when == "before the outcome" else lambda: bool(sms.outcomes))
    await run_test(sms, frames_to_send=[said("Text me the link."), UserStartedSpeakingFrame(), SleepFrame(2.0),
                                        UserStoppedSpeakingFrame(), SleepFrame(0.5)])
    await asyncio.gather(*reports)
    assert [k for k in kinds(sms) if k[0] != "filler"] == [("delivery_failure", "website_link")]
    assert "didn't go through" in sms.spoken[-1].text and len(peer.messages) == 1


async def test_a_text_reported_undelivered_is_never_confirmed_even_when_failures_are_not_spoken(peer):
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine, speak_delivery_failures=False)
    undeliver(engine)
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(0.5)])
    assert [k for k in kinds(sms) if k[0] != "filler"] == []


async def test_many_actions_firing_on_one_turn_all_start_in_order_and_send_once(peer):
    # the first firing starts with the transcript, the others one per turn of the event loop (so a burst of
    # firings never holds the audio): none may be lost, doubled or reordered
    actions = {
        "max_sends_per_call": 20, "max_sends_per_destination": 100,
        "actions": [{"name": f"a{i}", "condition": "whenever the caller says to send a text",
                     "content": {"template": f"Text number {i}"}} for i in range(12)],
    }
    engine = make_engine(peer=peer, extractor=False, actions=actions)
    sms = SmsActionProcessor(engine=engine)
    matched = []
    sms.add_event_handler("on_condition_matched", lambda proc, firing: matched.append(firing.action.name))
    await run_test(sms, frames_to_send=[said("Please send me a text with all of it."), SleepFrame(1.0)])
    assert matched == [f"a{i}" for i in range(12)]
    assert sorted(m.body for m in peer.messages) == sorted(f"Text number {i}" for i in range(12))
    assert sorted(o.firing.action.name for o in sms.outcomes) == sorted(matched)


async def test_a_failed_event_that_is_no_status_callback_does_not_unsay_a_confirmation(peer):
    """Only a carrier's report makes an accepted text undelivered (not a later FAILED for its key, e.g. recovery)."""
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine)

    async def on_event(event):
        if event.kind is SmsEventKind.SENT:
            await engine.dispatcher.publish(dataclasses.replace(event, kind=SmsEventKind.FAILED,
                                                                reason="outbox_unavailable"))
    engine.dispatcher.subscribe(on_event, call_id=engine.call.call_id)
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(0.5)])
    assert [k for k in kinds(sms) if k[0] != "filler"] == [("confirmation", "website_link")]


async def test_a_failure_reported_before_the_create_answer_is_spoken_not_a_confirmation(peer):
    # Twilio accepts the text, fails it within a second (30007: filtered) and posts the status callback,
    # while its 201 for the create is still on its way to us: the caller must not hear "texted"
    engine = make_engine(peer=peer)
    engine.add_agent_text("It's on our website.")
    sms = SmsActionProcessor(engine=engine)
    peer.faults.append(Fault(delay=0.8))  # the message exists at once; its 201 comes later
    reported = []

    async def callback_first():
        while not peer.messages:
            await asyncio.sleep(0.01)
        reported.append(await engine.dispatcher.handle_status(peer.messages[0].sid, "failed", 30007))

    task = asyncio.get_running_loop().create_task(callback_first())
    await run_test(sms, frames_to_send=[said("Text me the link."), SleepFrame(2.0)])
    await task
    assert reported == [None]  # held: no row had the SID yet
    assert [k for k in kinds(sms) if k[0] != "filler"] == [("delivery_failure", "website_link")]
    assert "didn't go through" in sms.spoken[-1].text and len(peer.messages) == 1
    record = (await engine.dispatcher.outbox.for_call(engine.call.call_id))[0]
    assert (record.sid, record.delivery, record.delivery_error) == (peer.messages[0].sid, "failed", 30007)
